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
#include "sampler.h"
#include "st_write.h"

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

typedef struct score_body {
    const out_tensor *t;
    int n;
} score_body;

static int write_score_body(qc_stw_sink *s, void *ctx, qc_err *err)
{
    const score_body *b = ctx;
    int rc = QC_OK;
    for (int i = 0; !rc && i < b->n; i++) /* x86-64/arm64: little-endian floats */
        rc = qc_stw_put_bytes(s, b->t[i].data, (size_t)(b->t[i].rows * b->t[i].cols) * 4, err);
    return rc;
}

/* The tensors as F32 [rows, cols], written atomically through st_write. */
static int write_safetensors(const char *path, const out_tensor *t, int n, qc_err *err)
{
    qc_stw_entry e[2];
    int64_t shapes[2][2];
    if (n > 2)
        return qc_err_set(err, QC_EXIT_RUNTIME, "%s: too many tensors", path);
    for (int i = 0; i < n; i++) {
        shapes[i][0] = t[i].rows;
        shapes[i][1] = t[i].cols;
        e[i] = (qc_stw_entry){t[i].name, "F32", 2, shapes[i], t[i].rows * t[i].cols * 4};
    }
    static const char *const meta[] = {"format", "pt", NULL};
    size_t hl;
    char *hdr = qc_stw_build_header(e, (size_t)n, meta, &hl, err);
    if (!hdr)
        return QC_EXIT_RUNTIME;
    score_body b = {t, n};
    int rc = qc_stw_write_file(path, hdr, hl, write_score_body, &b, err);
    free(hdr);
    return rc;
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
    /* a row with a NaN or infinite logit is refused, not written (sampler.h) */
    for (int t = 0; t < n; t++) {
        const int64_t bad = qc_logits_count_nonfinite(logits + (size_t)t * info.vocab_size, info.vocab_size);
        if (bad) {
            rc = qc_logits_nonfinite_error(&err, bad, info.vocab_size, t);
            goto done;
        }
    }
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
