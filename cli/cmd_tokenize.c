/* cmd_tokenize.c — `qchat tokenize DIR [--json] [--decode] TEXT|-`.
 *
 * Encodes TEXT (or stdin, byte for byte, with "-") with the checkpoint's
 * tokenizer.json and prints the ids on one line, or {"ids": [...]} with
 * --json. With --decode, TEXT is ids (separated by whitespace or commas,
 * brackets ignored) and the decoded text is printed exactly, without an
 * added newline ({"text": "..."} with --json). Only tokenizer.json is needed:
 * DIR may hold nothing else, or be the JSON file itself. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "tokenizer.h"
#include "util.h"

static int tokenize_usage(const char *why)
{
    fprintf(stderr,
            "qchat tokenize: %s\nusage: qchat tokenize CHECKPOINT_DIR [--json] [--decode] TEXT|-\n",
            why);
    return QC_EXIT_USAGE;
}

static int read_stdin(char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -1;
    for (;;) {
        if (cap - n < 4096) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return -1;
            }
            buf = nb;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, stdin);
        n += k;
        if (k == 0)
            break;
    }
    if (ferror(stdin)) {
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* "1 2, 3" / "[1, 2, 3]" -> ids. */
static int parse_ids(const char *s, int32_t **ids, size_t *n, qc_err *err)
{
    size_t cap = 64;
    *n = 0;
    *ids = malloc(cap * sizeof **ids);
    if (!*ids)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    while (*s) {
        if (strchr(" \t\r\n,[]", *s)) {
            s++;
            continue;
        }
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX || (*end && !strchr(" \t\r\n,[]", *end))) {
            free(*ids);
            *ids = NULL;
            return qc_err_set(err, QC_EXIT_USAGE, "not a token id: \"%.20s\"", s);
        }
        if (*n == cap) {
            int32_t *ni = realloc(*ids, (cap *= 2) * sizeof *ni);
            if (!ni) {
                free(*ids);
                *ids = NULL;
                return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
            }
            *ids = ni;
        }
        (*ids)[(*n)++] = (int32_t)v;
        s = end;
    }
    return QC_OK;
}

static int print_ids(const int32_t *ids, size_t n, bool json)
{
    fputs(json ? "{\"ids\": [" : "", stdout);
    for (size_t i = 0; i < n; i++)
        printf(json ? (i ? ", %d" : "%d") : (i ? " %d" : "%d"), ids[i]);
    fputs(json ? "]}\n" : "\n", stdout);
    return QC_OK;
}

static int print_text(const char *text, size_t len, bool json)
{
    if (!json) {
        fwrite(text, 1, len, stdout);
        return QC_OK;
    }
    /* cJSON strings end at NUL; a decoded NUL is rare but must not truncate. */
    if (memchr(text, '\0', len)) {
        fputs("{\"text\": \"", stdout);
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)text[i];
            if (c == '"' || c == '\\')
                printf("\\%c", c);
            else if (c < 0x20)
                printf("\\u%04x", c);
            else
                putchar(c);
        }
        fputs("\"}\n", stdout);
        return QC_OK;
    }
    cJSON *o = cJSON_CreateString(text);
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) {
        fprintf(stderr, "qchat tokenize: out of memory\n");
        return QC_EXIT_RUNTIME;
    }
    printf("{\"text\": %s}\n", s);
    cJSON_free(s);
    return QC_OK;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *dir = NULL, *arg = NULL;
    bool json = false, decode = false, rest = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!rest && !strcmp(a, "--json"))
            json = true;
        else if (!rest && !strcmp(a, "--decode"))
            decode = true;
        else if (!rest && !strcmp(a, "--"))
            rest = true;
        else if (!rest && a[0] == '-' && a[1] == '-')
            return tokenize_usage("unknown option");
        else if (!dir)
            dir = a;
        else if (!arg)
            arg = a;
        else
            return tokenize_usage("too many arguments (quote the text)");
    }
    if (!dir || !arg)
        return tokenize_usage("missing CHECKPOINT_DIR or TEXT");
    char *input = NULL;
    size_t len;
    if (!strcmp(arg, "-")) {
        if (read_stdin(&input, &len)) {
            fprintf(stderr, "qchat tokenize: cannot read stdin\n");
            return QC_EXIT_RUNTIME;
        }
    } else {
        input = strdup(arg);
        len = strlen(arg);
        if (!input)
            return QC_EXIT_RUNTIME;
    }
    qc_err err = {0};
    qc_tokenizer *tok = NULL;
    int rc = qc_tokenizer_load(dir, &tok, &err);
    int32_t *ids = NULL;
    size_t n = 0;
    char *text = NULL;
    if (!rc && !decode) {
        rc = qc_tokenizer_encode(tok, input, len, &ids, &n, &err);
        if (!rc)
            rc = print_ids(ids, n, json);
    } else if (!rc) {
        size_t tlen;
        rc = parse_ids(input, &ids, &n, &err);
        if (!rc)
            rc = qc_tokenizer_decode(tok, ids, n, &text, &tlen, &err);
        if (!rc)
            rc = print_text(text, tlen, json);
    }
    if (rc && err.msg[0])
        fprintf(stderr, "qchat tokenize: %s\n", err.msg);
    if (!rc && fflush(stdout) != 0) {
        fprintf(stderr, "qchat tokenize: write failed: %s\n", strerror(errno));
        rc = QC_EXIT_RUNTIME;
    }
    free(text);
    free(ids);
    free(input);
    qc_tokenizer_free(tok);
    return rc;
}
