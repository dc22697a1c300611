/* quantize.c — see quantize.h. Round-to-nearest only: every scale is computed
 * from the block's own range, no calibration data. The source is read through
 * the memory-mapped safetensors set; the output is streamed one tensor at a
 * time (header first, sizes known from the shapes), so memory stays at one
 * Linear's worth however large the checkpoint is. */
#define _POSIX_C_SOURCE 200809L
#include "quantize.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "safetensors.h"
#include "st_write.h"

/* ------------------------------------------------------------------------ */
/* scalar conversions                                                        */

uint8_t qc_f32_to_e4m3(float x)
{
    if (isnan(x))
        return 0x7F;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a >= 448.0f)
        return sign | 0x7E;
    if (a < 0.015625f) { /* below 2^-6: subnormal, step 2^-9 */
        int m = (int)nearbyintf(a * 512.0f); /* 0..8; 8 is the smallest normal, code 0x08 */
        return sign | (uint8_t)m;
    }
    int e;
    float f = frexpf(a, &e);            /* a = f * 2^e, f in [0.5, 1) */
    int m = (int)nearbyintf(f * 16.0f); /* 8..16: 1.mmm scaled by 8 */
    int E = e - 1;
    if (m == 16) {
        m = 8;
        E++;
    }
    int code = ((E + 7) << 3) | (m - 8);
    if (code > 0x7E)
        code = 0x7E;
    return sign | (uint8_t)code;
}

uint8_t qc_f32_to_e2m1(float x)
{
    if (isnan(x))
        return 0;
    uint8_t sign = signbit(x) ? 0x8 : 0;
    float a = fabsf(x);
    uint8_t c;
    /* midpoints between {0,.5,1,1.5,2,3,4,6}; ties go to the even code */
    if (a <= 0.25f) c = 0;
    else if (a < 0.75f) c = 1;
    else if (a <= 1.25f) c = 2;
    else if (a < 1.75f) c = 3;
    else if (a <= 2.5f) c = 4;
    else if (a < 3.5f) c = 5;
    else if (a <= 5.0f) c = 6;
    else c = 7;
    return c ? (uint8_t)(sign | c) : 0;
}

uint16_t qc_f32_to_f16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7FFFFFFF;
    if (a > 0x7F800000)
        return sign | 0x7E00; /* NaN */
    if (a >= 0x477FF000)      /* rounds to >= 65520: overflow */
        return sign | 0x7C00;
    if (a < 0x38800000) {     /* below 2^-14: subnormal half, step 2^-24 */
        float f;
        memcpy(&f, &a, 4);
        return sign | (uint16_t)nearbyintf(f * 16777216.0f);
    }
    /* normal: drop 13 mantissa bits with round to nearest even */
    uint32_t r = a + 0xFFF + ((a >> 13) & 1);
    return sign | (uint16_t)((r - 0x38000000) >> 13);
}

/* ------------------------------------------------------------------------ */
/* per-matrix kernels                                                        */

void qc_quant_fp8_block(const float *w, int64_t n, int64_t k, uint8_t *q, uint16_t *scale_inv)
{
    int64_t nb = (n + 127) / 128, kb = (k + 127) / 128;
    for (int64_t bi = 0; bi < nb; bi++)
        for (int64_t bj = 0; bj < kb; bj++) {
            int64_t r1 = bi * 128 + 128 < n ? bi * 128 + 128 : n;
            int64_t c1 = bj * 128 + 128 < k ? bj * 128 + 128 : k;
            float amax = 0;
            for (int64_t r = bi * 128; r < r1; r++)
                for (int64_t c = bj * 128; c < c1; c++)
                    amax = fmaxf(amax, fabsf(w[r * k + c]));
            /* the stored (BF16-rounded) scale is what dequantization uses, so
             * quantize against it; e4m3 saturates if rounding made it smaller */
            uint16_t sb = qc_f32_to_bf16(amax > 0 ? amax / 448.0f : 1.0f);
            float s = qc_bf16_to_f32(sb);
            if (s == 0) { /* amax so small its scale underflows BF16 */
                sb = qc_f32_to_bf16(1.0f);
                s = 1.0f;
            }
            scale_inv[bi * kb + bj] = sb;
            for (int64_t r = bi * 128; r < r1; r++)
                for (int64_t c = bj * 128; c < c1; c++)
                    q[r * k + c] = qc_f32_to_e4m3(w[r * k + c] / s);
        }
}

int qc_quant_gptq_sym(const float *w, int64_t n, int64_t k, int group, const int32_t *g_idx,
                      int32_t *qweight, int32_t *qzeros, uint16_t *scales)
{
    int64_t ng = k / group;
    float *lo = malloc((size_t)ng * 2 * sizeof *lo), *sf = malloc((size_t)ng * sizeof *sf);
    if (!lo || !sf) {
        free(lo);
        free(sf);
        return -1;
    }
    float *hi = lo + ng;
    memset(qweight, 0, (size_t)(k / 8 * n) * sizeof *qweight);
    for (int64_t i = 0; i < ng * (n / 8); i++)
        qzeros[i] = (int32_t)0x77777777u; /* z = 8, stored z - 1 */
    for (int64_t col = 0; col < n; col++) {
        /* per group, the smallest scale that holds its range in q - 8 = -8..7 */
        for (int64_t g = 0; g < ng; g++) lo[g] = hi[g] = 0;
        for (int64_t kk = 0; kk < k; kk++) {
            const int64_t g = g_idx ? g_idx[kk] : kk / group;
            lo[g] = fminf(lo[g], w[col * k + kk]);
            hi[g] = fmaxf(hi[g], w[col * k + kk]);
        }
        for (int64_t g = 0; g < ng; g++) {
            float s = fmaxf(-lo[g] / 8.0f, hi[g] / 7.0f);
            uint16_t sh = qc_f32_to_f16(s > 0 ? s : 1.0f);
            sf[g] = qc_f16_to_f32(sh);
            if (sf[g] == 0 || isinf(sf[g])) {
                sh = qc_f32_to_f16(1.0f);
                sf[g] = 1.0f;
            }
            scales[g * n + col] = sh;
        }
        for (int64_t kk = 0; kk < k; kk++) {
            float t = nearbyintf(w[col * k + kk] / sf[g_idx ? g_idx[kk] : kk / group]) + 8.0f;
            int q = t < 0 ? 0 : t > 15 ? 15 : (int)t;
            uint32_t *word = (uint32_t *)&qweight[(kk / 8) * n + col];
            *word |= (uint32_t)q << (4 * (kk % 8));
        }
    }
    free(lo);
    free(sf);
    return 0;
}

int qc_quant_act_order(int64_t k, int group, uint64_t seed, int32_t *g_idx)
{
    int64_t *pi = malloc((size_t)k * sizeof *pi);
    if (!pi)
        return -1;
    for (int64_t i = 0; i < k; i++) pi[i] = i;
    uint64_t z = seed;
    for (int64_t i = k - 1; i > 0; i--) { /* Fisher-Yates, splitmix64 */
        z += 0x9e3779b97f4a7c15ull;
        uint64_t t = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        t = (t ^ (t >> 27)) * 0x94d049bb133111ebull;
        int64_t j = (int64_t)((t ^ (t >> 31)) % (uint64_t)(i + 1)), v = pi[i];
        pi[i] = pi[j];
        pi[j] = v;
    }
    for (int64_t r = 0; r < k; r++) g_idx[pi[r]] = (int32_t)(r / group); /* pi[r]: the r-th input in activation order */
    free(pi);
    return 0;
}

void qc_quant_nvfp4(const float *w, int64_t n, int64_t k, uint8_t *packed, uint8_t *scale,
                    float *global_scale)
{
    float amax = 0;
    for (int64_t i = 0; i < n * k; i++)
        amax = fmaxf(amax, fabsf(w[i]));
    /* llm-compressor: global = FP8_MAX * FP4_MAX / amax, so the largest block
     * scale lands at 448 in e4m3 */
    float gs = amax > 0 ? 2688.0f / amax : 1.0f;
    if (!isfinite(gs))
        gs = 1.0f;
    *global_scale = gs;
    int64_t nb = k / 16;
    for (int64_t r = 0; r < n; r++)
        for (int64_t b = 0; b < nb; b++) {
            const float *x = w + r * k + b * 16;
            float bmax = 0;
            for (int j = 0; j < 16; j++)
                bmax = fmaxf(bmax, fabsf(x[j]));
            uint8_t sc = qc_f32_to_e4m3(bmax / 6.0f * gs);
            scale[r * nb + b] = sc;
            float eff = qc_e4m3_to_f32(sc) / gs; /* the dequantizer's block scale */
            uint8_t *out = packed + r * (k / 2) + b * 8;
            for (int j = 0; j < 16; j += 2) {
                uint8_t lo = eff > 0 ? qc_f32_to_e2m1(x[j] / eff) : 0;
                uint8_t hi = eff > 0 ? qc_f32_to_e2m1(x[j + 1] / eff) : 0;
                out[j / 2] = (uint8_t)(lo | (hi << 4));
            }
        }
}

/* Reference dequantization of what the kernels above wrote, used for the
 * error report (independent of dequant.c, which the tests compare against). */
static float e2m1_value(uint8_t c)
{
    static const float mag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    return (c & 8) ? -mag[c & 7] : mag[c & 7];
}

/* ------------------------------------------------------------------------ */
/* planning                                                                  */

int qc_quant_to_parse(const char *s)
{
    if (!strcmp(s, "fp8")) return QC_QUANT_FP8;
    if (!strcmp(s, "int4")) return QC_QUANT_INT4;
    if (!strcmp(s, "nvfp4")) return QC_QUANT_NVFP4;
    return -1;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Linears that every published quantized Qwen3.5 release converts. */
static bool is_quantizable_linear(const char *prefix)
{
    static const char *const leaf[] = {"in_proj_qkv", "in_proj_z", "out_proj", "q_proj", "k_proj",
                                       "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    if (strstr(prefix, "visual.") || strncmp(prefix, "lm_head", 7) == 0)
        return false;
    if (!strstr(prefix, "layers."))
        return false; /* embed, mtp.fc, anything outside decoder layers */
    const char *dot = strrchr(prefix, '.');
    const char *name = dot ? dot + 1 : prefix;
    for (size_t i = 0; i < sizeof leaf / sizeof leaf[0]; i++)
        if (!strcmp(name, leaf[i]))
            return true;
    return false;
}

/* One output job: a source tensor copied as is, or one Linear (a slice of a
 * source tensor for fused experts) quantized or kept at its dtype. */
typedef enum { JOB_COPY, JOB_QUANT, JOB_KEEP } job_kind;

typedef struct job {
    job_kind kind;
    const qc_tensor *src;
    int64_t offset;   /* elements into src (fused expert slices) */
    int64_t n, k;
    char prefix[200]; /* output module prefix (tensor name without suffix) */
} job;

/* One output tensor, in file order. */
typedef struct out_tensor {
    char name[232];
    const char *dtype;
    int ndim;
    int64_t shape[QC_MAX_DIMS];
    int64_t nbytes;
} out_tensor;

typedef struct plan {
    job *jobs;
    size_t njobs, capjobs;
    out_tensor *outs;
    size_t nouts, capouts;
    bool act_order; /* int4: write g_idx (qc_quant_opts) */
} plan;

static int plan_add_job(plan *p, job j, qc_err *err)
{
    job *nj = qc_grow(p->jobs, &p->capjobs, p->njobs, sizeof *nj, 256);
    if (!nj)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory planning the quantization");
    p->jobs = nj;
    p->jobs[p->njobs++] = j;
    return QC_OK;
}

static int plan_add_out(plan *p, const char *prefix, const char *suffix, const char *dtype,
                        int ndim, const int64_t *shape, size_t elsize, qc_err *err)
{
    out_tensor *no = qc_grow(p->outs, &p->capouts, p->nouts, sizeof *no, 512);
    if (!no)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory planning the quantization");
    p->outs = no;
    out_tensor *o = &p->outs[p->nouts++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s%s", prefix, suffix);
    o->dtype = dtype;
    o->ndim = ndim;
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        o->shape[i] = shape[i];
        numel *= shape[i];
    }
    o->nbytes = numel * (int64_t)elsize;
    return QC_OK;
}

static bool shape_fits(qc_quant_to to, int64_t n, int64_t k, int group)
{
    switch (to) {
    case QC_QUANT_FP8: return n > 0 && k > 0;
    case QC_QUANT_INT4: return n % 8 == 0 && k % group == 0 && k >= group;
    case QC_QUANT_NVFP4: return k % 16 == 0 && k > 0;
    }
    return false;
}

/* The output tensors of one Linear job (file order = this order). */
static int plan_job_outputs(plan *p, const job *j, qc_quant_to to, int group, qc_err *err)
{
    int64_t n = j->n, k = j->k;
    int rc;
    if (j->kind == JOB_KEEP) {
        int64_t s[2] = {n, k};
        return plan_add_out(p, j->prefix, ".weight", qc_dtype_name(j->src->dtype), 2, s,
                            qc_dtype_size(j->src->dtype), err);
    }
    if (to == QC_QUANT_FP8) {
        int64_t s[2] = {n, k}, ss[2] = {(n + 127) / 128, (k + 127) / 128};
        if ((rc = plan_add_out(p, j->prefix, ".weight", "F8_E4M3", 2, s, 1, err)))
            return rc;
        return plan_add_out(p, j->prefix, ".weight_scale_inv", "BF16", 2, ss, 2, err);
    }
    if (to == QC_QUANT_INT4) {
        int64_t qw[2] = {k / 8, n}, qz[2] = {k / group, n / 8}, sc[2] = {k / group, n};
        if ((rc = plan_add_out(p, j->prefix, ".qweight", "I32", 2, qw, 4, err)) ||
            (rc = plan_add_out(p, j->prefix, ".qzeros", "I32", 2, qz, 4, err)) ||
            (rc = plan_add_out(p, j->prefix, ".scales", "F16", 2, sc, 2, err)))
            return rc;
        int64_t gi[1] = {k};
        return p->act_order ? plan_add_out(p, j->prefix, ".g_idx", "I32", 1, gi, 4, err) : QC_OK;
    }
    int64_t gs[1] = {1}, pk[2] = {n, k / 2}, sc[2] = {n, k / 16};
    if ((rc = plan_add_out(p, j->prefix, ".weight_global_scale", "F32", 1, gs, 4, err)) ||
        (rc = plan_add_out(p, j->prefix, ".weight_packed", "U8", 2, pk, 1, err)))
        return rc;
    return plan_add_out(p, j->prefix, ".weight_scale", "F8_E4M3", 2, sc, 1, err);
}

static bool is_float_dtype(qc_dtype dt)
{
    return dt == QC_DT_BF16 || dt == QC_DT_F16 || dt == QC_DT_F32;
}

static float src_get(const qc_tensor *t, int64_t i)
{
    const uint8_t *d = t->data;
    switch (t->dtype) {
    case QC_DT_BF16: {
        uint16_t v;
        memcpy(&v, d + 2 * i, 2);
        return qc_bf16_to_f32(v);
    }
    case QC_DT_F16: {
        uint16_t v;
        memcpy(&v, d + 2 * i, 2);
        return qc_f16_to_f32(v);
    }
    default: {
        float v;
        memcpy(&v, d + 4 * i, 4);
        return v;
    }
    }
}

/* Builds the job list from the source tensors (sorted by name). Fused 3-D
 * experts become one job per expert and projection. */
static int plan_build(plan *p, const qc_st *st, qc_quant_to to, int group, qc_err *err)
{
    size_t nt = qc_st_count(st);
    for (size_t i = 0; i < nt; i++) {
        const qc_tensor *t = qc_st_at(st, i);
        const char *name = t->name;
        static const char *const qsuffix[] = {".weight_scale_inv", ".qweight", ".qzeros",
                                              ".weight_packed", ".weight_scale",
                                              ".weight_global_scale", ".weight_scale_2"};
        for (size_t s = 0; s < sizeof qsuffix / sizeof qsuffix[0]; s++)
            if (ends_with(name, qsuffix[s]))
                return qc_err_set(err, QC_EXIT_CHECKPOINT,
                                  "tensor %s: the source is already quantized (qchat quantize "
                                  "reads BF16/F16/F32 checkpoints)", name);
        job j;
        memset(&j, 0, sizeof j);
        j.src = t;
        bool fused_gu = ends_with(name, "mlp.experts.gate_up_proj") && t->ndim == 3;
        bool fused_dn = ends_with(name, "mlp.experts.down_proj") && t->ndim == 3;
        if ((fused_gu || fused_dn) && is_float_dtype(t->dtype)) {
            int64_t E = t->shape[0], rows = t->shape[1], cols = t->shape[2];
            if (fused_gu && rows % 2)
                return qc_err_set(err, QC_EXIT_CHECKPOINT,
                                  "tensor %s: gate_up_proj rows %lld are not even", name,
                                  (long long)rows);
            size_t base = strlen(name) - strlen(fused_gu ? "gate_up_proj" : "down_proj");
            for (int64_t e = 0; e < E; e++)
                for (int part = 0; part < (fused_gu ? 2 : 1); part++) {
                    job x = j;
                    x.n = fused_gu ? rows / 2 : rows;
                    x.k = cols;
                    x.offset = e * rows * cols + (int64_t)part * x.n * cols;
                    snprintf(x.prefix, sizeof x.prefix, "%.*s%lld.%s", (int)base, name,
                             (long long)e,
                             fused_dn ? "down_proj" : part == 0 ? "gate_proj" : "up_proj");
                    x.kind = shape_fits(to, x.n, x.k, group) ? JOB_QUANT : JOB_KEEP;
                    int rc = plan_add_job(p, x, err);
                    if (rc)
                        return rc;
                }
            continue;
        }
        if (ends_with(name, ".weight") && t->ndim == 2 && is_float_dtype(t->dtype)) {
            snprintf(j.prefix, sizeof j.prefix, "%.*s", (int)(strlen(name) - 7), name);
            if (is_quantizable_linear(j.prefix)) {
                j.n = t->shape[0];
                j.k = t->shape[1];
                j.kind = shape_fits(to, j.n, j.k, group) ? JOB_QUANT : JOB_KEEP;
                int rc = plan_add_job(p, j, err);
                if (rc)
                    return rc;
                continue;
            }
        }
        j.kind = JOB_COPY;
        int rc = plan_add_job(p, j, err);
        if (rc)
            return rc;
    }
    return QC_OK;
}

/* int4 group: 128 when every quantized K allows it, else 64, else 32. */
static int pick_group(const qc_st *st)
{
    static const int cand[] = {128, 64, 32};
    for (size_t c = 0; c < 3; c++) {
        bool ok = true;
        for (size_t i = 0; i < qc_st_count(st) && ok; i++) {
            const qc_tensor *t = qc_st_at(st, i);
            int64_t k = -1;
            if (t->ndim == 3 && (ends_with(t->name, "experts.gate_up_proj") ||
                                 ends_with(t->name, "experts.down_proj")))
                k = t->shape[2];
            else if (t->ndim == 2 && ends_with(t->name, ".weight")) {
                char pre[200];
                snprintf(pre, sizeof pre, "%.*s", (int)(strlen(t->name) - 7), t->name);
                if (is_quantizable_linear(pre))
                    k = t->shape[1];
            }
            if (k > 0 && k % cand[c])
                ok = false;
        }
        if (ok)
            return cand[c];
    }
    return 32;
}

/* ------------------------------------------------------------------------ */
/* writing                                                                   */

typedef struct err_acc {
    double num, den, worst;
    char worst_name[200];
} err_acc;

/* The act-order seed of a Linear: its module's parent and K, so the
 * projections that read one input (q|k|v, gate|up, the GDN in-projections)
 * share a permutation. */
static uint64_t act_order_seed(const char *prefix, int64_t k)
{
    const char *dot = strrchr(prefix, '.');
    size_t len = dot ? (size_t)(dot - prefix) : strlen(prefix);
    uint64_t h = 1469598103934665603ull ^ (uint64_t)k;
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)prefix[i]) * 1099511628211ull;
    return h;
}

/* Quantizes one Linear job and writes its tensors in plan order. */
static int write_linear(qc_stw_sink *w, const job *j, qc_quant_to to, int group, bool act, err_acc *acc,
                        qc_err *err)
{
    int64_t n = j->n, k = j->k;
    float *x = qc_malloc((size_t)(n * k) * sizeof *x, err, j->prefix);
    float *dq = qc_malloc((size_t)(n * k) * sizeof *dq, err, j->prefix);
    void *a = NULL, *b = NULL, *c = NULL;
    int32_t *gi = NULL;
    int rc = QC_EXIT_RUNTIME;
    if (!x || !dq)
        goto done;
    for (int64_t i = 0; i < n * k; i++)
        x[i] = src_get(j->src, j->offset + i);
    if (to == QC_QUANT_FP8) {
        int64_t nb = (n + 127) / 128, kb = (k + 127) / 128;
        a = qc_malloc((size_t)(n * k), err, j->prefix);
        b = qc_malloc((size_t)(nb * kb) * 2, err, j->prefix);
        if (!a || !b)
            goto done;
        qc_quant_fp8_block(x, n, k, a, b);
        const uint8_t *q = a;
        const uint16_t *s = b;
        for (int64_t r = 0; r < n; r++)
            for (int64_t cc = 0; cc < k; cc++)
                dq[r * k + cc] = qc_e4m3_to_f32(q[r * k + cc]) *
                                 qc_bf16_to_f32(s[(r / 128) * kb + cc / 128]);
        if ((rc = qc_stw_put_bytes(w, a, (size_t)(n * k), err)) ||
            (rc = qc_stw_put_bytes(w, b, (size_t)(nb * kb) * 2, err)))
            goto done;
    } else if (to == QC_QUANT_INT4) {
        int64_t ng = k / group;
        a = qc_malloc((size_t)(k / 8 * n) * 4, err, j->prefix);
        b = qc_malloc((size_t)(ng * (n / 8)) * 4, err, j->prefix);
        c = qc_malloc((size_t)(ng * n) * 2, err, j->prefix);
        gi = act ? qc_malloc((size_t)k * 4, err, j->prefix) : NULL;
        if (!a || !b || !c || (act && !gi))
            goto done;
        if ((gi && qc_quant_act_order(k, group, act_order_seed(j->prefix, k), gi)) ||
            qc_quant_gptq_sym(x, n, k, group, gi, a, b, c)) {
            rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of memory quantizing %s", j->prefix);
            goto done;
        }
        const uint32_t *qw = a;
        const uint16_t *s = c;
        for (int64_t r = 0; r < n; r++)
            for (int64_t kk = 0; kk < k; kk++) {
                int q = (int)((qw[(kk / 8) * n + r] >> (4 * (kk % 8))) & 15);
                dq[r * k + kk] = qc_f16_to_f32(s[(gi ? gi[kk] : kk / group) * n + r]) * (float)(q - 8);
            }
        if ((rc = qc_stw_put_bytes(w, a, (size_t)(k / 8 * n) * 4, err)) ||
            (rc = qc_stw_put_bytes(w, b, (size_t)(ng * (n / 8)) * 4, err)) ||
            (rc = qc_stw_put_bytes(w, c, (size_t)(ng * n) * 2, err)) ||
            (gi && (rc = qc_stw_put_bytes(w, gi, (size_t)k * 4, err))))
            goto done;
    } else {
        float gs;
        a = qc_malloc((size_t)(n * k / 2), err, j->prefix);
        b = qc_malloc((size_t)(n * k / 16), err, j->prefix);
        if (!a || !b)
            goto done;
        qc_quant_nvfp4(x, n, k, a, b, &gs);
        const uint8_t *pk = a, *sc = b;
        for (int64_t r = 0; r < n; r++)
            for (int64_t kk = 0; kk < k; kk++) {
                uint8_t byte = pk[r * (k / 2) + kk / 2];
                uint8_t code = (kk & 1) ? (byte >> 4) : (byte & 15);
                dq[r * k + kk] =
                    e2m1_value(code) * (qc_e4m3_to_f32(sc[r * (k / 16) + kk / 16]) / gs);
            }
        if ((rc = qc_stw_put_bytes(w, &gs, 4, err)) ||
            (rc = qc_stw_put_bytes(w, a, (size_t)(n * k / 2), err)) ||
            (rc = qc_stw_put_bytes(w, b, (size_t)(n * k / 16), err)))
            goto done;
    }
    double num = 0, den = 0;
    for (int64_t i = 0; i < n * k; i++) {
        double d = (double)x[i] - dq[i];
        num += d * d;
        den += (double)x[i] * x[i];
    }
    acc->num += num;
    acc->den += den;
    double rel = den > 0 ? sqrt(num / den) : 0;
    if (rel >= acc->worst) {
        acc->worst = rel;
        snprintf(acc->worst_name, sizeof acc->worst_name, "%s", j->prefix);
    }
    rc = QC_OK;
done:
    free(x);
    free(dq);
    free(a);
    free(b);
    free(c);
    free(gi);
    return rc;
}

typedef struct model_body {
    const plan *p;
    qc_quant_to to;
    int group;
    err_acc *acc;
    int64_t *bytes_out;
} model_body;

/* Streams the tensor data in plan order, quantizing one Linear at a time. */
static int write_model_body(qc_stw_sink *w, void *ctx, qc_err *err)
{
    const model_body *m = ctx;
    int64_t data0 = w->written;
    int rc = QC_OK;
    for (size_t i = 0; i < m->p->njobs && !rc; i++) {
        const job *j = &m->p->jobs[i];
        if (j->kind == JOB_COPY)
            rc = qc_stw_put_bytes(w, j->src->data, j->src->nbytes, err);
        else if (j->kind == JOB_KEEP)
            rc = qc_stw_put_bytes(w, (const uint8_t *)j->src->data +
                                         j->offset * qc_dtype_size(j->src->dtype),
                                  (size_t)(j->n * j->k) * qc_dtype_size(j->src->dtype), err);
        else
            rc = write_linear(w, j, m->to, m->group, m->p->act_order, m->acc, err);
    }
    *m->bytes_out = w->written - data0;
    return rc;
}

/* Writes path atomically: header from the plan's outputs, then the data. */
static int write_model(const char *path, const plan *p, qc_quant_to to, int group, err_acc *acc,
                       int64_t *bytes_out, qc_err *err)
{
    qc_stw_entry *ents = qc_calloc(p->nouts ? p->nouts : 1, sizeof *ents, err, "header");
    if (!ents)
        return QC_EXIT_RUNTIME;
    for (size_t i = 0; i < p->nouts; i++) {
        const out_tensor *o = &p->outs[i];
        ents[i] = (qc_stw_entry){o->name, o->dtype, o->ndim, o->shape, o->nbytes};
    }
    static const char *const meta[] = {"format", "pt", NULL};
    size_t hlen;
    char *hdr = qc_stw_build_header(ents, p->nouts, meta, &hlen, err);
    free(ents);
    if (!hdr)
        return QC_EXIT_RUNTIME;
    model_body m = {p, to, group, acc, bytes_out};
    int rc = qc_stw_write_file(path, hdr, hlen, write_model_body, &m, err);
    free(hdr);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* config and side files                                                     */

static int write_text_atomic(const char *dir, const char *name, const char *text, qc_err *err)
{
    char *path = qc_path_join(dir, name);
    if (!path)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    int rc = qc_stw_write_file(path, text, strlen(text), NULL, NULL, err);
    free(path);
    return rc;
}

static int copy_file(const char *src_dir, const char *dst_dir, const char *name, qc_err *err)
{
    char *sp = qc_path_join(src_dir, name);
    char *buf = NULL;
    size_t len = 0;
    int rc = sp ? qc_read_file(sp, &buf, &len, QC_EXIT_RUNTIME, err)
                : qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    free(sp);
    if (rc)
        return rc;
    if (strlen(buf) != len) { /* binary side file: not ours to carry */
        free(buf);
        return QC_OK;
    }
    rc = write_text_atomic(dst_dir, name, buf, err);
    free(buf);
    return rc;
}

/* Module prefixes kept 16-bit in a quantized release's config lists. */
static void add_kept_names(cJSON *arr, const qc_st *st, const plan *p, bool with_embed)
{
    for (size_t i = 0; i < p->njobs; i++) {
        const job *j = &p->jobs[i];
        if (j->kind == JOB_KEEP) {
            cJSON_AddItemToArray(arr, cJSON_CreateString(j->prefix));
            continue;
        }
        if (j->kind != JOB_COPY || !ends_with(j->src->name, ".weight") || j->src->ndim != 2)
            continue;
        const char *nm = j->src->name;
        char pre[200];
        snprintf(pre, sizeof pre, "%.*s", (int)(strlen(nm) - 7), nm);
        bool linear16 = ends_with(pre, "in_proj_a") || ends_with(pre, "in_proj_b") ||
                        ends_with(pre, "mlp.gate") || ends_with(pre, "shared_expert_gate") ||
                        !strcmp(pre, "lm_head") || !strcmp(pre, "mtp.fc");
        bool embed = ends_with(pre, "embed_tokens");
        if (linear16 || (with_embed && embed))
            cJSON_AddItemToArray(arr, cJSON_CreateString(pre));
    }
    /* a tied lm_head has no tensor of its own, but loaders that walk the
     * modules (compressed-tensors, transformers) would otherwise convert it */
    bool has_head = false;
    cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        if (cJSON_IsString(it) && !strcmp(it->valuestring, "lm_head"))
            has_head = true;
    }
    if (!has_head && qc_st_find(st, "lm_head.weight") == NULL)
        cJSON_AddItemToArray(arr, cJSON_CreateString("lm_head"));
}

static cJSON *make_quant_config(qc_quant_to to, int group, const qc_st *st, const plan *p)
{
    cJSON *q = cJSON_CreateObject();
    if (to == QC_QUANT_FP8) {
        cJSON_AddStringToObject(q, "quant_method", "fp8");
        cJSON_AddStringToObject(q, "fmt", "e4m3");
        cJSON_AddStringToObject(q, "activation_scheme", "dynamic");
        cJSON *bs = cJSON_AddArrayToObject(q, "weight_block_size");
        cJSON_AddItemToArray(bs, cJSON_CreateNumber(128));
        cJSON_AddItemToArray(bs, cJSON_CreateNumber(128));
        add_kept_names(cJSON_AddArrayToObject(q, "modules_to_not_convert"), st, p, true);
    } else if (to == QC_QUANT_INT4) {
        cJSON_AddStringToObject(q, "quant_method", "auto-round");
        cJSON_AddStringToObject(q, "packing_format", "auto_round:auto_gptq");
        cJSON_AddNumberToObject(q, "bits", 4);
        cJSON_AddNumberToObject(q, "group_size", group);
        cJSON_AddBoolToObject(q, "sym", 1);
        if (p->act_order) cJSON_AddBoolToObject(q, "desc_act", 1);
        cJSON_AddStringToObject(q, "data_type", "int");
        cJSON_AddNumberToObject(q, "act_bits", 16);
        cJSON_AddNumberToObject(q, "iters", 0); /* round-to-nearest, no tuning */
        cJSON_AddStringToObject(q, "quantized_by", "qchat quantize (RTN)");
        /* block_name_to_quantize: the decoder-layer list the tensors live in */
        const char *blk = "model.layers";
        for (size_t i = 0; i < qc_st_count(st); i++)
            if (strncmp(qc_st_at(st, i)->name, "model.language_model.layers.", 28) == 0) {
                blk = "model.language_model.layers";
                break;
            }
        cJSON_AddStringToObject(q, "block_name_to_quantize", blk);
        cJSON *kept = cJSON_CreateArray();
        add_kept_names(kept, st, p, false);
        cJSON *extra = cJSON_AddObjectToObject(q, "extra_config");
        cJSON *it;
        cJSON_ArrayForEach(it, kept)
        {
            if (!strstr(it->valuestring, "layers."))
                continue; /* only decoder-layer modules are candidates */
            cJSON *e = cJSON_AddObjectToObject(extra, it->valuestring);
            cJSON_AddNumberToObject(e, "bits", 16);
            cJSON_AddStringToObject(e, "data_type", "fp");
        }
        cJSON_Delete(kept);
    } else {
        cJSON_AddStringToObject(q, "quant_method", "compressed-tensors");
        cJSON_AddStringToObject(q, "format", "nvfp4-pack-quantized");
        cJSON_AddStringToObject(q, "quantization_status", "compressed");
        cJSON *g = cJSON_AddObjectToObject(cJSON_AddObjectToObject(q, "config_groups"), "group_0");
        cJSON_AddItemToArray(cJSON_AddArrayToObject(g, "targets"), cJSON_CreateString("Linear"));
        cJSON_AddStringToObject(g, "format", "nvfp4-pack-quantized");
        cJSON *wq = cJSON_AddObjectToObject(g, "weights");
        cJSON_AddNumberToObject(wq, "num_bits", 4);
        cJSON_AddStringToObject(wq, "type", "float");
        cJSON_AddStringToObject(wq, "strategy", "tensor_group");
        cJSON_AddNumberToObject(wq, "group_size", 16);
        cJSON_AddBoolToObject(wq, "symmetric", 1);
        cJSON_AddBoolToObject(wq, "dynamic", 0);
        cJSON_AddStringToObject(wq, "observer", "minmax");
        cJSON_AddStringToObject(wq, "scale_dtype", "torch.float8_e4m3fn");
        cJSON_AddNullToObject(g, "input_activations"); /* NVFP4A16: weight-only */
        cJSON_AddNullToObject(g, "output_activations");
        cJSON *ign = cJSON_AddArrayToObject(q, "ignore");
        add_kept_names(ign, st, p, false);
        cJSON_AddItemToArray(ign, cJSON_CreateString("re:.*visual.*"));
        cJSON_AddNullToObject(q, "kv_cache_scheme");
        cJSON_AddItemToObject(q, "sparsity_config", cJSON_CreateObject());
    }
    return q;
}

static int write_config(const char *src, const char *dst, qc_quant_to to, int group,
                        const qc_st *st, const plan *p, qc_err *err)
{
    char *path = qc_path_join(src, "config.json");
    char *buf = NULL;
    int rc = path ? qc_read_file(path, &buf, NULL, QC_EXIT_CHECKPOINT, err)
                  : qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    if (rc) {
        free(path);
        return rc;
    }
    cJSON *root = cJSON_Parse(buf);
    free(buf);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        rc = qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: not a JSON object", path);
        free(path);
        return rc;
    }
    free(path);
    cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    if (cJSON_IsObject(tc))
        cJSON_DeleteItemFromObjectCaseSensitive(tc, "quantization_config");
    cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
    /* the producers put it at the top level, also in the VL wrapper */
    cJSON_AddItemToObject(root, "quantization_config", make_quant_config(to, group, st, p));
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory writing config.json");
    size_t n = strlen(text);
    char *t2 = realloc(text, n + 2);
    if (!t2) {
        free(text);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory writing config.json");
    }
    t2[n] = '\n';
    t2[n + 1] = 0;
    rc = write_text_atomic(dst, "config.json", t2, err);
    free(t2);
    return rc;
}

/* Small files a checkpoint directory carries besides weights and config. */
static int copy_side_files(const char *src, const char *dst, qc_err *err)
{
    DIR *d = opendir(src);
    if (!d)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: %s", src, strerror(errno));
    int rc = QC_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        const char *nm = e->d_name;
        if (nm[0] == '.' || !strcmp(nm, "config.json") || !strcmp(nm, "hf_quant_config.json") ||
            ends_with(nm, ".safetensors") || ends_with(nm, ".safetensors.index.json") ||
            ends_with(nm, ".tmp"))
            continue;
        if (!(ends_with(nm, ".json") || ends_with(nm, ".jinja") || ends_with(nm, ".txt") ||
              ends_with(nm, ".md") || !strcmp(nm, "merges.txt")))
            continue;
        char *p = qc_path_join(src, nm);
        struct stat sb;
        bool reg = p && stat(p, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size < (64 << 20);
        free(p);
        if (reg)
            rc = copy_file(src, dst, nm, err);
    }
    closedir(d);
    return rc;
}

static int prepare_dst(const char *dst, bool force, qc_err *err)
{
    struct stat sb;
    if (stat(dst, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode))
            return qc_err_set(err, QC_EXIT_USAGE, "%s exists and is not a directory", dst);
        char *m = qc_path_join(dst, "model.safetensors");
        char *ix = qc_path_join(dst, "model.safetensors.index.json");
        bool has = (m && stat(m, &sb) == 0) || (ix && stat(ix, &sb) == 0);
        free(m);
        free(ix);
        if (has && !force)
            return qc_err_set(err, QC_EXIT_USAGE,
                              "%s already holds a model (use --force to overwrite)", dst);
        /* a stale index would make readers ignore the new model.safetensors */
        char *stale = qc_path_join(dst, "model.safetensors.index.json");
        if (stale)
            unlink(stale);
        free(stale);
        return QC_OK;
    }
    if (mkdir(dst, 0777) != 0)
        return qc_err_set(err, QC_EXIT_RUNTIME, "%s: cannot create: %s", dst, strerror(errno));
    return QC_OK;
}

int qc_quantize_checkpoint(const char *src, const char *dst, const qc_quant_opts *opts,
                           qc_quant_report *rep, qc_err *err)
{
    memset(rep, 0, sizeof *rep);
    if (!strcmp(src, dst))
        return qc_err_set(err, QC_EXIT_USAGE, "source and destination are the same directory");
    qc_st *st = NULL;
    int rc = qc_st_open_dir(src, &st, err);
    if (rc)
        return rc;
    int group = opts->to == QC_QUANT_FP8 ? 128 : opts->to == QC_QUANT_NVFP4 ? 16
              : opts->group_size > 0 ? opts->group_size : pick_group(st);
    if (opts->to == QC_QUANT_INT4 && (group % 8 || group < 8)) {
        qc_st_free(st);
        return qc_err_set(err, QC_EXIT_USAGE, "--group %d: must be a positive multiple of 8",
                          group);
    }
    plan p = {0};
    p.act_order = opts->act_order && opts->to == QC_QUANT_INT4;
    err_acc acc = {0};
    char *mpath = NULL;
    if ((rc = plan_build(&p, st, opts->to, group, err)))
        goto done;
    for (size_t i = 0; i < p.njobs && !rc; i++) {
        const job *j = &p.jobs[i];
        if (j->kind == JOB_COPY) {
            const qc_tensor *t = j->src;
            rc = plan_add_out(&p, t->name, "", qc_dtype_name(t->dtype), t->ndim, t->shape,
                              qc_dtype_size(t->dtype), err);
        } else {
            rc = plan_job_outputs(&p, j, opts->to, group, err);
            if (j->kind == JOB_QUANT)
                rep->n_quantized++;
            else
                rep->n_kept++;
        }
    }
    if (rc)
        goto done;
    if (rep->n_quantized == 0) {
        rc = qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: no Linear of the decoder layers found to "
                        "quantize", src);
        goto done;
    }
    if ((rc = prepare_dst(dst, opts->force, err)))
        goto done;
    mpath = qc_path_join(dst, "model.safetensors");
    if (!mpath) {
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
        goto done;
    }
    if ((rc = write_model(mpath, &p, opts->to, group, &acc, &rep->bytes_out, err)))
        goto done;
    if ((rc = write_config(src, dst, opts->to, group, st, &p, err)) ||
        (rc = copy_side_files(src, dst, err)))
        goto done;
    for (size_t i = 0; i < qc_st_count(st); i++)
        rep->bytes_in += (int64_t)qc_st_at(st, i)->nbytes;
    rep->group_size = group;
    rep->rel_err_rms = acc.den > 0 ? sqrt(acc.num / acc.den) : 0;
    rep->rel_err_max = acc.worst;
    snprintf(rep->worst, sizeof rep->worst, "%s", acc.worst_name);
done:
    free(mpath);
    free(p.jobs);
    free(p.outs);
    qc_st_free(st);
    return rc;
}
