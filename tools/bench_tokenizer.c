/* bench_tokenizer.c — encode speed of qchat's tokenizer (a benchmark, not a test).
 *
 *   tools/bench_tokenizer.sh [TOKENIZER] [FILES...]
 *
 * Reads the files, repeats their concatenation up to at least 8 MB, encodes it
 * in 64 KB chunks on one thread (cut at line ends, so no character is split)
 * and prints MB/s. A second pass encodes pseudo-random words, which the
 * tokenizer's piece cache cannot help with. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "util.h"

static double encode_all(const qc_tokenizer *tok, const char *buf, size_t len, size_t *ntok)
{
    qc_err err = {0};
    double t0 = qc_now();
    size_t off = 0;
    *ntok = 0;
    while (off < len) {
        size_t n = len - off < 65536 ? len - off : 65536;
        while (off + n < len && buf[off + n - 1] != '\n' && n > 1)
            n--; /* end the chunk after a newline */
        int32_t *ids;
        size_t k;
        if (qc_tokenizer_encode(tok, buf + off, n, &ids, &k, &err)) {
            fprintf(stderr, "encode: %s\n", err.msg);
            exit(1);
        }
        free(ids);
        *ntok += k;
        off += n;
    }
    return qc_now() - t0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER_JSON_OR_DIR FILE...\n");
        return 2;
    }
    qc_err err = {0};
    qc_tokenizer *tok;
    double t0 = qc_now();
    if (qc_tokenizer_load(argv[1], &tok, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("load: %.3f s (%d tokens)\n", qc_now() - t0, qc_tokenizer_n_tokens(tok));
    size_t cap = 1 << 20, len = 0;
    char *src = malloc(cap);
    for (int i = 2; i < argc; i++) {
        char *data;
        size_t n;
        if (qc_read_file(argv[i], &data, &n, QC_EXIT_RUNTIME, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        if (!qc_utf8_valid(data, n, NULL)) {
            free(data);
            continue;
        }
        while (len + n + 1 > cap)
            src = realloc(src, cap *= 2);
        memcpy(src + len, data, n);
        len += n;
        src[len++] = '\n';
        free(data);
    }
    if (!len) {
        fprintf(stderr, "no valid UTF-8 input\n");
        return 1;
    }
    size_t total = len;
    while (total < (8u << 20))
        total += len;
    char *buf = malloc(total);
    for (size_t off = 0; off < total; off += len)
        memcpy(buf + off, src, len);
    size_t ntok;
    encode_all(tok, buf, len < total ? len : total, &ntok); /* warm-up */
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t = encode_all(tok, buf, total, &ntok);
        if (t < best)
            best = t;
    }
    printf("mixed text: %.1f MB in %.3f s = %.1f MB/s, %.2f M tokens/s, %.2f bytes/token (%zu KB source)\n",
           total / 1e6, best, total / 1e6 / best, ntok / 1e6 / best, (double)total / ntok,
           len / 1024);
    /* Pseudo-random words: mostly cache misses. */
    uint32_t s = 1;
    for (size_t i = 0; i < total; i++) {
        s = s * 1664525u + 1013904223u;
        unsigned r = (s >> 24) % 40;
        buf[i] = r < 6 ? ' ' : r == 6 ? '\n' : r == 7 ? '.' : (char)('a' + (s >> 16) % 26);
    }
    double t = encode_all(tok, buf, total, &ntok);
    printf("random words: %.1f MB in %.3f s = %.1f MB/s\n", total / 1e6, t, total / 1e6 / t);
    free(buf);
    free(src);
    qc_tokenizer_free(tok);
    return 0;
}
