/* test_synth.c — synthetic checkpoints (synth.h), `tiny` size, every format:
 *   - the checkpoint reader classifies every Linear as the format's realistic
 *     mix says (ckpt.h), and the tokenizer loads with the chat tokens;
 *   - dequantized weights (dequant.c, the formats' reference formulas) are
 *     finite with an RMS near 0.02 — the scales are sane;
 *   - the CPU engine's logits over a short prompt are finite and not constant;
 *   - bytes do not depend on sharding or write-buffer size (a split write
 *     through odd-sized buffers equals a single file),
 *     and the index lists every tensor in the shard that holds it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"
#include "harness.h"
#include "qchat.h"
#include "synth.h"
#include "tokenizer.h"

static char root[256];

static void rm_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

/* Expected format of a module, by kind, in each synthetic format. */
static const char *want_format(qc_synth_format f, const qc_module *m)
{
    if (m->kind == QC_MOD_GDN_GATE || m->kind == QC_MOD_LM_HEAD)
        return "bf16";
    if (m->mtp) {
        if (f == QC_SYNTH_FP8 && strcmp(m->lin.name, "mtp.fc") != 0)
            return "fp8-block";
        return "bf16";
    }
    switch (f) {
    case QC_SYNTH_BF16: return "bf16";
    case QC_SYNTH_FP8: return "fp8-block";
    case QC_SYNTH_INT4_GPTQ: return "gptq";
    case QC_SYNTH_INT4_CT: return "ct-int";
    case QC_SYNTH_NVFP4: return "nvfp4-ct";
    case QC_SYNTH_NVFP4_MODELOPT: return m->kind == QC_MOD_MLP ? "nvfp4-modelopt" : "fp8-tensor";
    default: return "?";
    }
}

static void check_format(qc_synth_format f, bool asym)
{
    char dir[400], name[200];
    const char *fn = qc_synth_format_name(f);
    snprintf(dir, sizeof dir, "%s/%s%s", root, fn, asym ? "-asym" : "");
    qc_synth_opts o = {.shape = qc_synth_size_find("tiny"), .format = f, .asym = asym};
    qc_synth_report rep;
    qc_err err = {0};
    int rc = qc_synth_write(dir, &o, &rep, &err);
    snprintf(name, sizeof name, "synth_write_%s%s", fn, asym ? "_asym" : "");
    CHECK(name, rc == 0 && rep.shards == 1 && rep.file_bytes > 0, "rc %d: %s", rc, err.msg);
    if (rc)
        return;

    qc_ckpt *ck = NULL;
    rc = qc_ckpt_open(dir, &ck, &err);
    snprintf(name, sizeof name, "synth_classify_%s%s", fn, asym ? "_asym" : "");
    if (rc) {
        CHECK(name, 0, "open: %s", err.msg);
        return;
    }
    size_t nm = qc_ckpt_module_count(ck), bad = 0, nq = 0;
    char first_bad[300] = "";
    double rms_lo = INFINITY, rms_hi = 0;
    bool all_finite = true;
    for (size_t i = 0; i < nm; i++) {
        const qc_module *m = qc_ckpt_module_at(ck, i);
        const char *want = want_format(f, m), *got = qc_format_name(m->lin.format);
        if (strcmp(want, got)) {
            if (!bad++)
                snprintf(first_bad, sizeof first_bad, "%s is %s, want %s", m->lin.name, got, want);
        }
        if (m->lin.format == QC_FMT_CT_INT && m->lin.symmetric == asym && !bad++)
            snprintf(first_bad, sizeof first_bad, "%s symmetric=%d", m->lin.name,
                     m->lin.symmetric);
        /* dequantize up to 64 rows of every Linear: finite, RMS ~0.02 */
        int64_t rows = m->lin.n < 64 ? m->lin.n : 64;
        float *w = malloc((size_t)(rows * m->lin.k) * sizeof *w);
        if (!w)
            continue;
        qc_linear_dequant_rows(&m->lin, 0, rows, w);
        double ss = 0;
        for (int64_t j = 0; j < rows * m->lin.k; j++) {
            if (!isfinite(w[j]))
                all_finite = false;
            ss += (double)w[j] * w[j];
        }
        free(w);
        double rms = sqrt(ss / (double)(rows * m->lin.k));
        rms_lo = fmin(rms_lo, rms);
        rms_hi = fmax(rms_hi, rms);
        if (m->lin.format != QC_FMT_BF16)
            nq++;
    }
    CHECK(name, bad == 0 && (f == QC_SYNTH_BF16 || nq > 0), "%zu of %zu modules wrong: %s", bad,
          nm, first_bad);
    snprintf(name, sizeof name, "synth_weight_scale_%s%s", fn, asym ? "_asym" : "");
    CHECK(name, all_finite && rms_lo > 0.005 && rms_hi < 0.08,
          "dequantized weights: finite %d, RMS %g..%g per Linear (want within 0.005..0.08)",
          all_finite, rms_lo, rms_hi);
    qc_ckpt_free(ck);

    /* the CPU engine: a short prompt, every logit finite, not all equal */
    qc_load_opts lo = {.device = QC_DEVICE_CPU, .threads = 2};
    qc_model *model = NULL;
    snprintf(name, sizeof name, "synth_cpu_forward_%s%s", fn, asym ? "_asym" : "");
    rc = qc_model_load(dir, &lo, &model, &err);
    if (rc) {
        CHECK(name, 0, "load: %s", err.msg);
        return;
    }
    qc_model_info info;
    qc_model_get_info(model, &info);
    const qc_tokenizer *tok = qc_model_tokenizer(model);
    int32_t *ids = NULL;
    size_t n = 0;
    const char *text = "<|im_start|>user\nHello, world!<|im_end|>\n";
    rc = qc_tokenizer_encode(tok, text, strlen(text), &ids, &n, &err);
    qc_session *s = NULL;
    float *logits = NULL;
    if (!rc)
        rc = qc_session_new(model, 64, &s, &err);
    if (!rc) {
        logits = malloc(n * (size_t)info.vocab_size * sizeof *logits);
        rc = logits ? qc_session_prefill(s, ids, (int)n, 0, logits, &err) : 1;
    }
    if (!rc) {
        size_t cnt = n * (size_t)info.vocab_size, nonfinite = 0;
        double mn = INFINITY, mx = -INFINITY;
        for (size_t j = 0; j < cnt; j++) {
            if (!isfinite(logits[j])) {
                nonfinite++;
                continue;
            }
            mn = fmin(mn, logits[j]);
            mx = fmax(mx, logits[j]);
        }
        CHECK(name, n >= 10 && ids[0] == 1001 && nonfinite == 0 && mx > mn && mx - mn < 1e4,
              "%zu tokens (first %d), %zu non-finite logits, range %g..%g", n, n ? ids[0] : -1,
              nonfinite, mn, mx);
    } else {
        CHECK(name, 0, "rc %d: %s", rc, err.msg);
    }
    free(logits);
    free(ids);
    qc_session_free(s);
    qc_model_free(model);
}

/* A split write (several shards + index, written through small odd-sized
 * buffers) holds exactly the bytes of the single-file write of the same seed. */
static void check_sharding(void)
{
    char one[400], many[400];
    snprintf(one, sizeof one, "%s/one", root);
    snprintf(many, sizeof many, "%s/many", root);
    qc_synth_opts o = {.shape = qc_synth_size_find("tiny"), .format = QC_SYNTH_NVFP4_MODELOPT,
                       .seed = 7};
    qc_synth_report r1, r2;
    qc_err err = {0};
    int rc = qc_synth_write(one, &o, &r1, &err);
    o.shard_bytes = 700000; /* cuts through the middle of the tiny model */
    o.buffer_bytes = 4093;  /* odd pieces: headers and tensors cut mid-word */
    if (!rc)
        rc = qc_synth_write(many, &o, &r2, &err);
    if (rc) {
        CHECK("synth_sharding", 0, "rc %d: %s", rc, err.msg);
        return;
    }
    qc_st *a = NULL, *b = NULL;
    rc = qc_st_open_dir(one, &a, &err);
    if (!rc)
        rc = qc_st_open_dir(many, &b, &err);
    size_t diff = 0, missing = 0;
    if (!rc) {
        for (size_t i = 0; i < qc_st_count(a); i++) {
            const qc_tensor *x = qc_st_at(a, i), *y = qc_st_find(b, x->name);
            if (!y)
                missing++;
            else if (x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes))
                diff++;
        }
    }
    CHECK("synth_sharding", !rc && r1.shards == 1 && r2.shards >= 3 && qc_st_nfiles(b) == (int)r2.shards &&
                                qc_st_count(a) == qc_st_count(b) && !missing && !diff,
          "rc %d (%s), shards %zu/%zu, tensors %zu/%zu, missing %zu, differing %zu", rc, err.msg,
          r1.shards, r2.shards, a ? qc_st_count(a) : 0, b ? qc_st_count(b) : 0, missing, diff);
    qc_st_free(a);
    qc_st_free(b);

    /* same directory again: refused without force, replaced with it */
    o.shard_bytes = 0;
    o.buffer_bytes = 0;
    rc = qc_synth_write(many, &o, &r2, &err);
    CHECK("synth_refuses_existing", rc == QC_EXIT_USAGE, "rc %d", rc);
    o.force = true;
    rc = qc_synth_write(many, &o, &r2, &err);
    char idx[500];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", many);
    CHECK("synth_force_replaces", rc == 0 && r2.shards == 1 && access(idx, F_OK) != 0,
          "rc %d (%s), shards %zu, stale index %d", rc, err.msg, r2.shards, access(idx, F_OK) == 0);
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/qchat-synth.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(root)) {
        CHECK("synth_tmpdir", 0, "mkdtemp failed");
        return th_exit();
    }
    for (int f = 0; f < QC_SYNTH_FORMAT_COUNT; f++)
        check_format((qc_synth_format)f, false);
    check_format(QC_SYNTH_INT4_CT, true);
    check_sharding();
    rm_dir(root);
    return th_exit();
}
