/* cmd_score.c — `qchat score DIR --ids FILE --out FILE.safetensors
 * [--chunk N] [--device auto|cpu|cuda] [--threads N] [--final-norm]`:
 * teacher-forced logits of the whitespace-separated token ids in FILE (`-` =
 * stdin) as one F32 tensor `logits` [T, V], written atomically (temp file in
 * the same directory, then rename). --final-norm (a test hook) adds the
 * final-normed hidden states as `final_norm` [T, D]. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "qchat.h"

static int usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "qchat score: %s\n", msg);
    fprintf(stderr, "usage: qchat score CHECKPOINT_DIR --ids FILE --out FILE.safetensors [--chunk N] "
                    "[--device auto|cpu|cuda] [--threads N] [--final-norm]\n");
    return QC_EXIT_USAGE;
}

/* Whitespace-separated decimal ids; anything else is a usage error naming
 * the file and the offending word. */
static int read_ids(const char *path, int32_t **out, int *n, qc_err *err)
{
    char *text = NULL;
    size_t len = 0;
    int rc;
    if (!strcmp(path, "-")) {
        size_t cap = 0;
        for (;;) {
            if (len + 4096 + 1 > cap) {
                cap = (cap + 4096) * 2;
                char *t = realloc(text, cap);
                if (!t) {
                    free(text);
                    return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory reading stdin");
                }
                text = t;
            }
            size_t r = fread(text + len, 1, 4096, stdin);
            len += r;
            if (r == 0)
                break;
        }
        text[len] = 0;
    } else if ((rc = qc_read_file(path, &text, &len, QC_EXIT_USAGE, err))) {
        return rc;
    }
    int cap = 256, cnt = 0;
    int32_t *ids = malloc(sizeof *ids * (size_t)cap);
    rc = ids ? QC_OK : qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for ids");
    const char *p = text;
    while (!rc) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')) {
            int wl = 0;
            while (p[wl] && p[wl] != ' ' && p[wl] != '\n' && p[wl] != '\t' && wl < 20)
                wl++;
            rc = qc_err_set(err, QC_EXIT_USAGE, "%s: id %d is not a non-negative integer: \"%.*s\"",
                            path, cnt + 1, wl, p);
            break;
        }
        if (cnt == cap) {
            cap *= 2;
            int32_t *t = realloc(ids, sizeof *ids * (size_t)cap);
            if (!t) {
                rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for ids");
                break;
            }
            ids = t;
        }
        ids[cnt++] = (int32_t)v;
        p = end;
    }
    free(text);
    if (!rc && cnt == 0)
        rc = qc_err_set(err, QC_EXIT_USAGE, "%s: no token ids", path);
    if (rc) {
        free(ids);
        return rc;
    }
    *out = ids;
    *n = cnt;
    return QC_OK;
}

typedef struct out_tensor {
    const char *name;
    const float *data;
    int64_t rows, cols;
} out_tensor;

/* A safetensors file: u64 little-endian header length, JSON header padded
 * with spaces to a multiple of 8, then the raw little-endian data. */
static int write_safetensors(const char *path, const out_tensor *t, int n, qc_err *err)
{
    char hdr[2048];
    size_t hl = 0;
    uint64_t off = 0;
    hl += (size_t)snprintf(hdr + hl, sizeof hdr - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        uint64_t bytes = (uint64_t)t[i].rows * (uint64_t)t[i].cols * 4;
        hl += (size_t)snprintf(hdr + hl, sizeof hdr - hl,
                               ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                               t[i].name, (long long)t[i].rows, (long long)t[i].cols,
                               (unsigned long long)off, (unsigned long long)(off + bytes));
        off += bytes;
    }
    hl += (size_t)snprintf(hdr + hl, sizeof hdr - hl, "}");
    while (hl % 8)
        hdr[hl++] = ' ';

    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    if (!tmp)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    snprintf(tmp, pl + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int rc = qc_err_set(err, QC_EXIT_RUNTIME, "%s: cannot create: %s", path, strerror(errno));
        free(tmp);
        return rc;
    }
    FILE *f = fdopen(fd, "wb");
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    bool ok = f && fwrite(lenb, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    for (int i = 0; ok && i < n; i++) {
        size_t cnt = (size_t)(t[i].rows * t[i].cols);
        ok = fwrite(t[i].data, sizeof(float), cnt, f) == cnt; /* x86-64/arm64: little-endian floats */
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (f)
        ok = (fclose(f) == 0) && ok;
    else
        close(fd);
    if (!ok || rename(tmp, path) != 0) {
        int rc = qc_err_set(err, QC_EXIT_RUNTIME, "%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return rc;
    }
    free(tmp);
    return QC_OK;
}

int cmd_score(int argc, char **argv)
{
    const char *dir = NULL, *ids_path = NULL, *out_path = NULL;
    int chunk = 0, threads = 0;
    bool want_norm = false;
    qc_device dev = QC_DEVICE_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--ids") || !strcmp(a, "--out") || !strcmp(a, "--chunk") ||
            !strcmp(a, "--device") || !strcmp(a, "--threads")) {
            if (!v) {
                char m[80];
                snprintf(m, sizeof m, "%s needs a value", a);
                return usage(m);
            }
            i++;
            if (!strcmp(a, "--ids"))
                ids_path = v;
            else if (!strcmp(a, "--out"))
                out_path = v;
            else if (!strcmp(a, "--device")) {
                if (!strcmp(v, "auto"))
                    dev = QC_DEVICE_AUTO;
                else if (!strcmp(v, "cpu"))
                    dev = QC_DEVICE_CPU;
                else if (!strcmp(v, "cuda"))
                    dev = QC_DEVICE_CUDA;
                else
                    return usage("--device must be auto, cpu or cuda");
            } else {
                char *end;
                long n = strtol(v, &end, 10);
                if (*end || end == v || n < (strcmp(a, "--chunk") ? 0 : 1) || n > 1 << 20) {
                    char m[120];
                    snprintf(m, sizeof m, "%s: bad value \"%s\"", a, v);
                    return usage(m);
                }
                if (!strcmp(a, "--chunk"))
                    chunk = (int)n;
                else
                    threads = (int)n;
            }
        } else if (!strcmp(a, "--final-norm")) {
            want_norm = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(NULL);
            return 0;
        } else if (a[0] == '-' && a[1]) {
            char m[120];
            snprintf(m, sizeof m, "unknown option %s", a);
            return usage(m);
        } else if (!dir) {
            dir = a;
        } else {
            return usage("more than one checkpoint directory");
        }
    }
    if (!dir || !ids_path || !out_path)
        return usage("CHECKPOINT_DIR, --ids and --out are required");

    qc_err err = {0};
    int32_t *ids = NULL;
    int n = 0;
    int rc = read_ids(ids_path, &ids, &n, &err);
    if (rc) {
        fprintf(stderr, "qchat score: %s\n", err.msg);
        return rc;
    }
    qc_load_opts lo = {dev, threads, 0};
    qc_model *m = NULL;
    qc_session *s = NULL;
    float *logits = NULL, *norm = NULL;
    if ((rc = qc_model_load(dir, &lo, &m, &err)))
        goto done;
    qc_model_info info;
    qc_model_get_info(m, &info);
    for (int i = 0; i < n; i++)
        if (ids[i] >= info.vocab_size) {
            rc = qc_err_set(&err, QC_EXIT_USAGE, "%s: id %d (%d) is outside the vocabulary [0, %d)",
                            ids_path, i + 1, (int)ids[i], info.vocab_size);
            goto done;
        }
    logits = malloc(sizeof(float) * (size_t)n * info.vocab_size);
    norm = want_norm ? malloc(sizeof(float) * (size_t)n * info.hidden_size) : NULL;
    if (!logits || (want_norm && !norm)) {
        rc = qc_err_set(&err, QC_EXIT_RUNTIME, "out of memory for %d x %d logits", n, info.vocab_size);
        goto done;
    }
    if ((rc = qc_session_new(m, n, &s, &err)))
        goto done;
    if ((rc = qc_session_prefill_full(s, ids, n, chunk, logits, norm, &err)))
        goto done;
    out_tensor ts[2] = {{"logits", logits, n, info.vocab_size}, {"final_norm", norm, n, info.hidden_size}};
    rc = write_safetensors(out_path, ts, want_norm ? 2 : 1, &err);
done:
    if (rc)
        fprintf(stderr, "qchat score: %s\n", err.msg);
    qc_session_free(s);
    qc_model_free(m);
    free(logits);
    free(norm);
    free(ids);
    return rc;
}
