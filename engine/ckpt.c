/* ckpt.c — see ckpt.h.
 *
 * Opening walks the architecture the config describes, layer by layer, and
 * for every Linear it expects finds the tensors under that prefix, decides
 * the format from which tensors exist and their dtypes (never from the
 * config's exclude lists, which are unreliable), and checks every shape
 * against the config. Nothing reads tensor data: only headers. */
#include "ckpt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN ((int)sizeof(((qc_linear *)0)->name))

/* The 3*E per-expert views of one fused MoE block. */
typedef struct ck_fused {
    char prefix[NAME_MAX_LEN]; /* "<P>layers.L.mlp" */
    qc_tensor *views;          /* 3*E: gate, up, down per expert */
    struct ck_fused *next;
} ck_fused;

struct qc_ckpt {
    qc_config cfg;
    qc_st *st;
    qc_module *mods;
    size_t nmods, cap;
    size_t *by_name;       /* module indices sorted by name */
    ck_fused *fused;
    qc_tensor tied_view;   /* the embedding seen as lm_head when tied */
    const qc_tensor *embed;
    const qc_linear *lm_head;
    bool tied, has_mtp;
    int mtp_layers;
    signed char *tensor_family; /* per tensor of st: qc_family, -1 = not loaded */
    int64_t weights_bytes[QC_FAM_COUNT];
    int64_t mtp_family_bytes[QC_FAM_COUNT]; /* of which the MTP head's */
    int64_t linear_bytes, mtp_bytes, skipped_bytes;
    qc_err *err;
};

static const char *const kind_names[QC_MOD_COUNT] = {
    "attention", "linear-attn", "linear-attn-gates", "mlp",    "experts",
    "shared-expert", "router",  "lm_head",           "mtp",
};

const char *qc_module_kind_name(qc_module_kind k)
{
    return (unsigned)k < QC_MOD_COUNT ? kind_names[k] : "?";
}

static const char *const family_names[QC_FAM_COUNT] = {"BF16", "FP8", "INT4", "NVFP4", "MXFP4"};

const char *qc_family_name(qc_family f)
{
    return (unsigned)f < QC_FAM_COUNT ? family_names[f] : "?";
}

qc_family qc_format_to_family(qc_format f)
{
    switch (f) {
    case QC_FMT_FP8_BLOCK:
    case QC_FMT_FP8_TENSOR:
    case QC_FMT_FP8_CHANNEL:
        return QC_FAM_FP8;
    case QC_FMT_GPTQ:
    case QC_FMT_AWQ:
    case QC_FMT_CT_INT:
        return QC_FAM_INT4;
    case QC_FMT_NVFP4_CT:
    case QC_FMT_NVFP4_MODELOPT:
        return QC_FAM_NVFP4;
    case QC_FMT_MXFP4_CT:
        return QC_FAM_MXFP4;
    default:
        return QC_FAM_BF16;
    }
}

qc_family qc_dtype_family(qc_dtype dt)
{
    switch (dt) {
    case QC_DT_F8_E4M3:
    case QC_DT_F8_E5M2:
        return QC_FAM_FP8;
    default:
        return QC_FAM_BF16;
    }
}

static bool is_float_dt(qc_dtype dt)
{
    return dt == QC_DT_BF16 || dt == QC_DT_F16 || dt == QC_DT_F32;
}

/* ---- small helpers ---------------------------------------------------- */

static const char *ck_file(const qc_ckpt *ck, const qc_tensor *t)
{
    return qc_st_file_path(ck->st, t->shard);
}

/* snprintf through a va_list: names are bounded by the callers, and a name
 * that does not fit is truncated (then simply not found). */
static int ck_name(char *dst, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int ck_name(char *dst, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(dst, n, fmt, ap);
    va_end(ap);
    return r;
}

static const qc_tensor *ck_find(const qc_ckpt *ck, const char *x, const char *suffix)
{
    char name[512];
    ck_name(name, sizeof name, "%s%s%s", x, suffix ? "." : "", suffix ? suffix : "");
    return qc_st_find(ck->st, name);
}

/* Checks t's shape against dims (ndim of them); error names file, tensor,
 * both shapes. */
static int ck_shape(const qc_ckpt *ck, const qc_tensor *t, int ndim, const int64_t *dims)
{
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == dims[i];
    if (ok)
        return QC_OK;
    char got[128], want[128] = "[";
    qc_tensor_shape_str(t, got, sizeof got);
    size_t o = 1;
    for (int i = 0; i < ndim; i++)
        o += (size_t)snprintf(want + o, sizeof want - o, "%s%lld", i ? ", " : "", (long long)dims[i]);
    snprintf(want + o, sizeof want - o, "]");
    return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                      "%s: tensor %s has shape %s but config.json implies %s", ck_file(ck, t),
                      t->name, got, want);
}

static int ck_shape2(const qc_ckpt *ck, const qc_tensor *t, int64_t a, int64_t b)
{
    int64_t d[2] = {a, b};
    return ck_shape(ck, t, 2, d);
}

static int ck_dtype(const qc_ckpt *ck, const qc_tensor *t, bool ok, const char *want)
{
    if (ok)
        return QC_OK;
    return qc_err_set(ck->err, QC_EXIT_CHECKPOINT, "%s: tensor %s has dtype %s, expected %s",
                      ck_file(ck, t), t->name, qc_dtype_name(t->dtype), want);
}

/* A non-Linear tensor that must exist with this shape and a float dtype. */
static int ck_need(const qc_ckpt *ck, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    const qc_tensor *t = qc_st_find(ck->st, name);
    if (!t)
        return qc_err_set(ck->err, QC_EXIT_CHECKPOINT, "%s: tensor %s is missing",
                          qc_ckpt_dir(ck), name);
    int64_t d[3] = {d0, d1, d2};
    int rc = ck_shape(ck, t, ndim, d);
    if (!rc)
        rc = ck_dtype(ck, t, is_float_dt(t->dtype), "BF16, F16 or F32");
    return rc;
}

static int ck_missing(const qc_ckpt *ck, const qc_tensor *main, const char *x, const char *fmt,
                      const char *suffix)
{
    return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                      "%s: quantized module %s (%s) lacks its tensor %s.%s", ck_file(ck, main), x,
                      fmt, x, suffix);
}

static bool is_scalar(const qc_tensor *t)
{
    return t->numel == 1 && t->ndim <= 1;
}

/* Sum of the bytes of every tensor named "x.*" (tensors are sorted by name,
 * so they are contiguous). Also marks their family. */
static int64_t ck_claim(qc_ckpt *ck, const char *x, qc_family fam)
{
    size_t n = qc_st_count(ck->st), lo = 0, hi = n;
    char pre[NAME_MAX_LEN + 2];
    snprintf(pre, sizeof pre, "%s.", x);
    size_t pl = strlen(pre);
    while (lo < hi) { /* first name >= pre */
        size_t mid = (lo + hi) / 2;
        if (strcmp(qc_st_at(ck->st, mid)->name, pre) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    int64_t bytes = 0;
    for (size_t i = lo; i < n; i++) {
        const qc_tensor *t = qc_st_at(ck->st, i);
        if (strncmp(t->name, pre, pl))
            break;
        bytes += (int64_t)t->nbytes;
        if (ck->tensor_family[i] >= 0)
            ck->tensor_family[i] = (signed char)fam;
    }
    return bytes;
}

/* ---- classification of one Linear --------------------------------------- */

/* The group size along K of a module whose scales hold ng groups: the
 * config's, or where modules may differ from it (q->per_module) and it does
 * not fit, the one the scales imply, K / ng when exact. The caller checks
 * that ceil(K / G) == ng. */
static int64_t ck_group_size(const qc_quant_config *q, int64_t K, int64_t ng)
{
    int64_t G = q->group_size > 0 ? q->group_size : q->group_size < 0 ? K : (ng ? K / ng : 0);
    if (q->per_module && ng > 0 && (G <= 0 || (K + G - 1) / G != ng) && K % ng == 0)
        G = K / ng;
    return G;
}

static int ck_classify_int(qc_ckpt *ck, const char *x, int64_t N, int64_t K, qc_linear *l)
{
    const qc_quant_config *q = &ck->cfg.quant;
    const qc_tensor *qw = ck_find(ck, x, "qweight");
    const qc_tensor *wp = ck_find(ck, x, "weight_packed");
    int rc;
    if (qw) { /* gptq or awq */
        rc = ck_dtype(ck, qw, qw->dtype == QC_DT_I32 || qw->dtype == QC_DT_U32, "I32");
        if (rc)
            return rc;
        bool gptq_shape = qw->ndim == 2 && qw->shape[1] == N && qw->shape[0] > 0 &&
                          (qw->shape[0] * 32) % K == 0;
        bool awq_shape = qw->ndim == 2 && qw->shape[0] == K && qw->shape[1] > 0 &&
                         (qw->shape[1] * 32) % N == 0;
        bool awq = !strcmp(q->quant_method, "awq") ? awq_shape : awq_shape && !gptq_shape;
        if (!awq && !gptq_shape) {
            char got[128];
            qc_tensor_shape_str(qw, got, sizeof got);
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                              "%s: tensor %s has shape %s, neither GPTQ [K*bits/32, N] nor AWQ "
                              "[K, N*bits/32] for N=%lld, K=%lld from config.json",
                              ck_file(ck, qw), qw->name, got, (long long)N, (long long)K);
        }
        l->format = awq ? QC_FMT_AWQ : QC_FMT_GPTQ;
        l->bits = awq ? (int)(qw->shape[1] * 32 / N) : (int)(qw->shape[0] * 32 / K);
        const char *fn = qc_format_name(l->format);
        if (l->bits != 4 && l->bits != 8)
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                              "%s: tensor %s implies %d-bit weights; only 4 and 8 are supported",
                              ck_file(ck, qw), qw->name, l->bits);
        /* The shape gives the bits; a config that states other bits for
         * every module (no per-module overrides) contradicts the file. */
        if (q->bits && q->bits != l->bits && !q->per_module)
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                              "%s: tensor %s has shape of %d-bit weights, but config.json says bits %d",
                              ck_file(ck, qw), qw->name, l->bits, q->bits);
        const qc_tensor *qz = ck_find(ck, x, "qzeros"), *sc = ck_find(ck, x, "scales");
        if (!qz)
            return ck_missing(ck, qw, x, fn, "qzeros");
        if (!sc)
            return ck_missing(ck, qw, x, fn, "scales");
        rc = ck_dtype(ck, sc, is_float_dt(sc->dtype), "F16, BF16 or F32");
        if (!rc)
            rc = ck_dtype(ck, qz, qz->dtype == QC_DT_I32 || qz->dtype == QC_DT_U32, "I32");
        if (rc)
            return rc;
        int64_t ng = sc->ndim == 2 ? sc->shape[0] : 0;
        int64_t G = ck_group_size(q, K, ng);
        if (ng <= 0 || G <= 0 || (K + G - 1) / G != ng)
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                              "%s: tensor %s has %lld groups, not ceil(K / group size) for K=%lld",
                              ck_file(ck, sc), sc->name, (long long)ng, (long long)K);
        int64_t pn = (N * l->bits + 31) / 32; /* qzeros words per group: N rounded up to whole words */
        if ((rc = ck_shape2(ck, sc, ng, N)) || (rc = ck_shape2(ck, qz, ng, pn)))
            return rc;
        l->weight = qw;
        l->zeros = qz;
        l->scale = sc;
        l->group_size = (int)G;
        l->symmetric = q->present ? q->sym : true;
        if (!awq) {
            l->g_idx = ck_find(ck, x, "g_idx");
            if (l->g_idx) {
                int64_t d[1] = {K};
                if ((rc = ck_shape(ck, l->g_idx, 1, d)))
                    return rc;
            }
            /* v1 (z-1) unless a GPTQ / AutoRound config names the v2 or
             * native convention */
            bool named = !strcmp(q->quant_method, "gptq") || !strcmp(q->quant_method, "auto-round") ||
                         !strcmp(q->quant_method, "auto_round");
            l->zero_bias = named && !q->zeros_plus_one ? 0 : 1;
        }
        return QC_OK;
    }
    /* compressed-tensors: int (I32 words), nvfp4 or mxfp4 (U8 bytes) */
    if (wp->dtype == QC_DT_I32 || wp->dtype == QC_DT_U32) {
        l->format = QC_FMT_CT_INT;
        const char *fn = "ct-int";
        if (wp->ndim != 2 || wp->shape[0] != N || wp->shape[1] <= 0 || (wp->shape[1] * 32) % K)
            return ck_shape2(ck, wp, N, K * (q->bits ? q->bits : 4) / 32);
        l->bits = (int)(wp->shape[1] * 32 / K);
        if (q->bits && q->bits != l->bits && !q->per_module)
            return ck_shape2(ck, wp, N, K * q->bits / 32);
        if (l->bits != 4 && l->bits != 8)
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                              "%s: tensor %s implies %d-bit weights; only 4 and 8 are supported",
                              ck_file(ck, wp), wp->name, l->bits);
        const qc_tensor *sc = ck_find(ck, x, "weight_scale"), *ws = ck_find(ck, x, "weight_shape");
        if (!sc)
            return ck_missing(ck, wp, x, fn, "weight_scale");
        if (!ws)
            return ck_missing(ck, wp, x, fn, "weight_shape");
        rc = ck_dtype(ck, sc, is_float_dt(sc->dtype), "F16, BF16 or F32");
        if (rc)
            return rc;
        int64_t ng = sc->ndim == 2 ? sc->shape[1] : 0;
        int64_t G = ck_group_size(q, K, ng);
        if (ng <= 0 || G <= 0 || (K + G - 1) / G != ng)
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                              "%s: tensor %s has %lld groups, not ceil(K / group size) for K=%lld",
                              ck_file(ck, sc), sc->name, (long long)ng, (long long)K);
        if ((rc = ck_shape2(ck, sc, N, ng)))
            return rc;
        l->weight = wp;
        l->scale = sc;
        l->weight_shape = ws;
        l->group_size = (int)G;
        l->zeros = ck_find(ck, x, "weight_zero_point");
        l->symmetric = l->zeros == NULL;
        if (!l->zeros && q->all_asym)
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                              "%s: quantized module %s (ct-int) lacks its tensor %s.weight_zero_point, "
                              "which config.json's symmetric: false requires",
                              ck_file(ck, wp), x, x);
        if (l->zeros && (rc = ck_shape2(ck, l->zeros, (N * l->bits + 31) / 32, ng)))
            return rc;
        l->g_idx = ck_find(ck, x, "weight_g_idx");
        if (l->g_idx) {
            int64_t d[1] = {K};
            if ((rc = ck_shape(ck, l->g_idx, 1, d)))
                return rc;
        }
        return QC_OK;
    }
    if (wp->dtype != QC_DT_U8)
        return ck_dtype(ck, wp, false, "I32 (int) or U8 (fp4)");
    const qc_tensor *sc = ck_find(ck, x, "weight_scale");
    if (!sc)
        return ck_missing(ck, wp, x, "fp4 compressed-tensors", "weight_scale");
    bool mx = sc->dtype == QC_DT_U8 || sc->dtype == QC_DT_F8_E8M0;
    /* The scale dtype tells NVFP4 (E4M3 scales, a global scale) from MXFP4
     * (E8M0, none); a global scale or a config naming nvfp4 next to E8M0
     * scales is a damaged NVFP4 module, not an MXFP4 one. */
    const qc_tensor *gs = ck_find(ck, x, "weight_global_scale");
    if (mx && (gs || strstr(q->format, "nvfp4")))
        return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                          "%s: tensor %s has dtype %s (MXFP4 scales), but %s: NVFP4 scales are F8_E4M3",
                          ck_file(ck, sc), sc->name, qc_dtype_name(sc->dtype),
                          gs ? "the module has a weight_global_scale" : "config.json says nvfp4");
    if (!mx && strstr(q->format, "mxfp4"))
        return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                          "%s: tensor %s has dtype %s, but config.json says mxfp4: MXFP4 scales are U8 (E8M0)",
                          ck_file(ck, sc), sc->name, qc_dtype_name(sc->dtype));
    l->format = mx ? QC_FMT_MXFP4_CT : QC_FMT_NVFP4_CT;
    l->bits = 4;
    l->group_size = mx ? 32 : 16;
    l->symmetric = true;
    if (!mx && (rc = ck_dtype(ck, sc, sc->dtype == QC_DT_F8_E4M3, "F8_E4M3 (nvfp4) or U8 (mxfp4)")))
        return rc;
    if (K % l->group_size)
        return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                          "%s: module %s: K=%lld is not a multiple of the %s group of %d",
                          ck_file(ck, wp), x, (long long)K, qc_format_name(l->format),
                          l->group_size);
    if ((rc = ck_shape2(ck, wp, N, K / 2)) || (rc = ck_shape2(ck, sc, N, K / l->group_size)))
        return rc;
    l->weight = wp;
    l->scale = sc;
    if (!mx) {
        l->global_scale = ck_find(ck, x, "weight_global_scale");
        if (!l->global_scale)
            return ck_missing(ck, wp, x, "nvfp4-ct", "weight_global_scale");
        if (!is_scalar(l->global_scale) || l->global_scale->dtype != QC_DT_F32)
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                              "%s: tensor %s must be one F32 value", ck_file(ck, l->global_scale),
                              l->global_scale->name);
        l->input_scale = ck_find(ck, x, "input_global_scale");
    }
    return QC_OK;
}

static int ck_classify(qc_ckpt *ck, const char *x, int64_t N, int64_t K, qc_linear *l)
{
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "%s", x);
    l->n = N;
    l->k = K;
    const qc_tensor *w = ck_find(ck, x, "weight");
    int rc;
    if (ck_find(ck, x, "qweight") || ck_find(ck, x, "weight_packed")) {
        rc = ck_classify_int(ck, x, N, K, l);
    } else if (!w) {
        return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                          "%s: tensor %s.weight is missing (no weight, qweight or weight_packed "
                          "for this Linear)",
                          qc_ckpt_dir(ck), x);
    } else if (is_float_dt(w->dtype)) {
        l->format = w->dtype == QC_DT_BF16 ? QC_FMT_BF16 : w->dtype == QC_DT_F16 ? QC_FMT_F16 : QC_FMT_F32;
        l->bits = w->dtype == QC_DT_F32 ? 32 : 16;
        l->symmetric = true;
        l->weight = w;
        rc = ck_shape2(ck, w, N, K);
    } else if (w->dtype == QC_DT_F8_E4M3) {
        l->bits = 8;
        l->symmetric = true;
        l->weight = w;
        if ((rc = ck_shape2(ck, w, N, K)))
            return rc;
        const qc_tensor *si = ck_find(ck, x, "weight_scale_inv"), *s = ck_find(ck, x, "weight_scale");
        if (si) {
            l->format = QC_FMT_FP8_BLOCK;
            l->block_n = ck->cfg.quant.block_n ? ck->cfg.quant.block_n : 128;
            l->block_k = ck->cfg.quant.block_k ? ck->cfg.quant.block_k : 128;
            l->scale = si;
            if ((rc = ck_dtype(ck, si, is_float_dt(si->dtype), "BF16 or F32")))
                return rc;
            rc = ck_shape2(ck, si, (N + l->block_n - 1) / l->block_n,
                           (K + l->block_k - 1) / l->block_k);
        } else if (s) {
            l->scale = s;
            if ((rc = ck_dtype(ck, s, is_float_dt(s->dtype), "BF16 or F32")))
                return rc;
            if (is_scalar(s)) {
                l->format = QC_FMT_FP8_TENSOR;
            } else {
                l->format = QC_FMT_FP8_CHANNEL;
                int64_t d[1] = {N};
                rc = s->ndim == 1 ? ck_shape(ck, s, 1, d) : ck_shape2(ck, s, N, 1);
            }
            l->input_scale = ck_find(ck, x, "input_scale");
        } else {
            return ck_missing(ck, w, x, "fp8", "weight_scale_inv (fp8-block) or weight_scale");
        }
    } else if (w->dtype == QC_DT_U8) { /* ModelOpt NVFP4 */
        l->format = QC_FMT_NVFP4_MODELOPT;
        l->bits = 4;
        l->group_size = 16;
        l->symmetric = true;
        l->weight = w;
        const qc_tensor *sc = ck_find(ck, x, "weight_scale"), *s2 = ck_find(ck, x, "weight_scale_2");
        if (!sc)
            return ck_missing(ck, w, x, "nvfp4-modelopt", "weight_scale");
        if (!s2)
            return ck_missing(ck, w, x, "nvfp4-modelopt", "weight_scale_2");
        if (K % 16)
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                              "%s: module %s: K=%lld is not a multiple of 16", ck_file(ck, w), x,
                              (long long)K);
        if ((rc = ck_shape2(ck, w, N, K / 2)) || (rc = ck_shape2(ck, sc, N, K / 16)) ||
            (rc = ck_dtype(ck, sc, sc->dtype == QC_DT_F8_E4M3, "F8_E4M3")))
            return rc;
        if (!is_scalar(s2) || s2->dtype != QC_DT_F32)
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT, "%s: tensor %s must be one F32 value",
                              ck_file(ck, s2), s2->name);
        l->scale = sc;
        l->global_scale = s2;
        l->input_scale = ck_find(ck, x, "input_scale");
        rc = QC_OK;
    } else {
        return ck_dtype(ck, w, false, "BF16, F16, F32, F8_E4M3 or U8");
    }
    return rc;
}

/* ---- the module table --------------------------------------------------- */

static qc_module *ck_new_module(qc_ckpt *ck)
{
    qc_module *mods = qc_grow(ck->mods, &ck->cap, ck->nmods, sizeof *mods, 256);
    if (!mods) {
        qc_err_set(ck->err, QC_EXIT_RUNTIME, "out of memory for the module table");
        return NULL;
    }
    ck->mods = mods;
    qc_module *m = &ck->mods[ck->nmods++];
    memset(m, 0, sizeof *m);
    return m;
}

static int ck_add_linear(qc_ckpt *ck, const char *x, int64_t N, int64_t K, qc_module_kind kind,
                         int layer, int expert, bool mtp)
{
    if ((int)strlen(x) >= NAME_MAX_LEN)
        return qc_err_set(ck->err, QC_EXIT_CHECKPOINT, "%s: module name %s is too long",
                          qc_ckpt_dir(ck), x);
    qc_module *m = ck_new_module(ck);
    if (!m)
        return QC_EXIT_RUNTIME;
    m->kind = kind;
    m->layer = layer;
    m->expert = expert;
    m->mtp = mtp;
    int rc = ck_classify(ck, x, N, K, &m->lin);
    if (rc)
        return rc;
    m->lin.bytes = ck_claim(ck, x, qc_format_to_family(m->lin.format));
    return QC_OK;
}

static int ck_addf(qc_ckpt *ck, int64_t N, int64_t K, qc_module_kind kind, int layer, bool mtp,
                   const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static int ck_addf(qc_ckpt *ck, int64_t N, int64_t K, qc_module_kind kind, int layer, bool mtp,
                   const char *fmt, ...)
{
    char x[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x, sizeof x, fmt, ap);
    va_end(ap);
    return ck_add_linear(ck, x, N, K, kind, layer, -1, mtp);
}

/* Fused BF16 experts: [N,K] views into gate_up_proj [E,2I,D] / down_proj [E,D,I]. */
static int ck_add_fused_experts(qc_ckpt *ck, const char *mlp, const qc_tensor *gu, int layer,
                                bool mtp)
{
    const qc_config *c = &ck->cfg;
    int64_t E = c->num_experts, I = c->moe_intermediate_size, D = c->hidden_size;
    const qc_tensor *dn = ck_find(ck, mlp, "experts.down_proj");
    if (!dn)
        return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                          "%s: tensor %s.experts.down_proj is missing (gate_up_proj is fused)",
                          ck_file(ck, gu), mlp);
    int64_t dgu[3] = {E, 2 * I, D}, ddn[3] = {E, D, I};
    int rc = ck_shape(ck, gu, 3, dgu);
    if (!rc)
        rc = ck_shape(ck, dn, 3, ddn);
    if (!rc)
        rc = ck_dtype(ck, gu, is_float_dt(gu->dtype), "BF16, F16 or F32 (fused experts)");
    if (!rc)
        rc = ck_dtype(ck, dn, is_float_dt(dn->dtype), "BF16, F16 or F32 (fused experts)");
    if (rc)
        return rc;
    ck_fused *f = qc_calloc(1, sizeof *f, ck->err, "fused experts");
    if (!f)
        return QC_EXIT_RUNTIME;
    f->views = qc_calloc((size_t)(3 * E), sizeof *f->views, ck->err, "fused expert views");
    if (!f->views) {
        free(f);
        return QC_EXIT_RUNTIME;
    }
    ck_name(f->prefix, sizeof f->prefix, "%s", mlp);
    f->next = ck->fused;
    ck->fused = f;
    size_t es_gu = qc_dtype_size(gu->dtype), es_dn = qc_dtype_size(dn->dtype);
    static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
    for (int64_t e = 0; e < E; e++) {
        for (int p = 0; p < 3; p++) {
            qc_tensor *v = &f->views[e * 3 + p];
            const qc_tensor *src = p < 2 ? gu : dn;
            int64_t n = p < 2 ? I : D, k = p < 2 ? D : I;
            size_t es = p < 2 ? es_gu : es_dn;
            size_t off = p < 2 ? (size_t)((e * 2 * I + p * I) * D) * es : (size_t)(e * D * I) * es;
            *v = *src;
            v->ndim = 2;
            v->shape[0] = n;
            v->shape[1] = k;
            v->numel = n * k;
            v->nbytes = (size_t)(n * k) * es;
            v->data = (const uint8_t *)src->data + off;
            qc_module *m = ck_new_module(ck);
            if (!m)
                return QC_EXIT_RUNTIME;
            m->kind = mtp ? QC_MOD_MTP : QC_MOD_EXPERT;
            m->layer = layer;
            m->expert = (int)e;
            m->mtp = mtp;
            qc_linear *l = &m->lin;
            ck_name(l->name, sizeof l->name, "%s.experts.%lld.%s", mlp, (long long)e, proj[p]);
            l->format = v->dtype == QC_DT_BF16 ? QC_FMT_BF16 : v->dtype == QC_DT_F16 ? QC_FMT_F16 : QC_FMT_F32;
            l->bits = v->dtype == QC_DT_F32 ? 32 : 16;
            l->symmetric = true;
            l->n = n;
            l->k = k;
            l->weight = v;
            l->bytes = (int64_t)v->nbytes;
        }
    }
    return QC_OK;
}

static int ck_add_moe(qc_ckpt *ck, const char *mlp, int layer, bool mtp)
{
    const qc_config *c = &ck->cfg;
    int64_t D = c->hidden_size, E = c->num_experts, I = c->moe_intermediate_size;
    qc_module_kind kr = mtp ? QC_MOD_MTP : QC_MOD_ROUTER;
    int rc = ck_addf(ck, E, D, kr, layer, mtp, "%s.gate", mlp);
    if (rc)
        return rc;
    const qc_tensor *gu = ck_find(ck, mlp, "experts.gate_up_proj");
    if (gu) {
        rc = ck_add_fused_experts(ck, mlp, gu, layer, mtp);
    } else {
        for (int64_t e = 0; e < E && !rc; e++) {
            static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
            for (int p = 0; p < 3 && !rc; p++) {
                char x[512];
                ck_name(x, sizeof x, "%s.experts.%lld.%s", mlp, (long long)e, proj[p]);
                rc = ck_add_linear(ck, x, p < 2 ? I : D, p < 2 ? D : I,
                                   mtp ? QC_MOD_MTP : QC_MOD_EXPERT, layer, (int)e, mtp);
            }
        }
    }
    int64_t Is = c->shared_expert_intermediate_size;
    if (!rc && Is > 0) {
        qc_module_kind ks = mtp ? QC_MOD_MTP : QC_MOD_SHARED_EXPERT;
        rc = ck_addf(ck, Is, D, ks, layer, mtp, "%s.shared_expert.gate_proj", mlp);
        if (!rc)
            rc = ck_addf(ck, Is, D, ks, layer, mtp, "%s.shared_expert.up_proj", mlp);
        if (!rc)
            rc = ck_addf(ck, D, Is, ks, layer, mtp, "%s.shared_expert.down_proj", mlp);
        if (!rc)
            rc = ck_addf(ck, 1, D, kr, layer, mtp, "%s.shared_expert_gate", mlp);
    }
    return rc;
}

/* One decoder layer under prefix lp ("<P>layers.i" or "mtp.layers.j"). */
static int ck_add_layer(qc_ckpt *ck, const char *lp, int layer, bool full, bool mtp)
{
    const qc_config *c = &ck->cfg;
    int64_t D = c->hidden_size;
    char n[512];
    int rc = QC_OK;
#define NEED1(suffix, d0)                                  \
    if (!rc) {                                             \
        snprintf(n, sizeof n, "%s.%s", lp, suffix);        \
        rc = ck_need(ck, n, 1, d0, 0, 0);                  \
    }
    NEED1("input_layernorm.weight", D);
    NEED1("post_attention_layernorm.weight", D);
    if (rc)
        return rc;
    if (full) {
        int64_t H = c->num_attention_heads, KV = c->num_key_value_heads, hd = c->head_dim;
        qc_module_kind k = mtp ? QC_MOD_MTP : QC_MOD_ATTN;
        rc = ck_addf(ck, 2 * H * hd, D, k, layer, mtp, "%s.self_attn.q_proj", lp);
        if (!rc)
            rc = ck_addf(ck, KV * hd, D, k, layer, mtp, "%s.self_attn.k_proj", lp);
        if (!rc)
            rc = ck_addf(ck, KV * hd, D, k, layer, mtp, "%s.self_attn.v_proj", lp);
        if (!rc)
            rc = ck_addf(ck, D, H * hd, k, layer, mtp, "%s.self_attn.o_proj", lp);
        NEED1("self_attn.q_norm.weight", hd);
        NEED1("self_attn.k_norm.weight", hd);
    } else {
        int64_t Hv = c->linear_num_value_heads, dv = c->linear_value_head_dim;
        int64_t cd = qc_config_conv_dim(c);
        qc_module_kind k = mtp ? QC_MOD_MTP : QC_MOD_GDN, kg = mtp ? QC_MOD_MTP : QC_MOD_GDN_GATE;
        rc = ck_addf(ck, cd, D, k, layer, mtp, "%s.linear_attn.in_proj_qkv", lp);
        if (!rc)
            rc = ck_addf(ck, Hv * dv, D, k, layer, mtp, "%s.linear_attn.in_proj_z", lp);
        if (!rc)
            rc = ck_addf(ck, Hv, D, kg, layer, mtp, "%s.linear_attn.in_proj_b", lp);
        if (!rc)
            rc = ck_addf(ck, Hv, D, kg, layer, mtp, "%s.linear_attn.in_proj_a", lp);
        if (!rc)
            rc = ck_addf(ck, D, Hv * dv, k, layer, mtp, "%s.linear_attn.out_proj", lp);
        if (!rc) {
            snprintf(n, sizeof n, "%s.linear_attn.conv1d.weight", lp);
            rc = ck_need(ck, n, 3, cd, 1, c->linear_conv_kernel_dim);
        }
        NEED1("linear_attn.dt_bias", Hv);
        NEED1("linear_attn.A_log", Hv);
        NEED1("linear_attn.norm.weight", dv);
    }
#undef NEED1
    if (rc)
        return rc;
    char mlp[512];
    snprintf(mlp, sizeof mlp, "%s.mlp", lp);
    if (c->is_moe)
        return ck_add_moe(ck, mlp, layer, mtp);
    int64_t I = c->intermediate_size;
    qc_module_kind k = mtp ? QC_MOD_MTP : QC_MOD_MLP;
    rc = ck_addf(ck, I, D, k, layer, mtp, "%s.gate_proj", mlp);
    if (!rc)
        rc = ck_addf(ck, I, D, k, layer, mtp, "%s.up_proj", mlp);
    if (!rc)
        rc = ck_addf(ck, D, I, k, layer, mtp, "%s.down_proj", mlp);
    return rc;
}

/* Number of MTP decoder layers the files hold: highest mtp.layers.N + 1. */
static int ck_count_mtp_layers(const qc_ckpt *ck, bool *any)
{
    int maxl = -1;
    *any = false;
    for (size_t i = 0; i < qc_st_count(ck->st); i++) {
        const char *nm = qc_st_at(ck->st, i)->name;
        if (strncmp(nm, "mtp.", 4))
            continue;
        *any = true;
        int l;
        if (sscanf(nm, "mtp.layers.%d.", &l) == 1 && l > maxl && l < 64)
            maxl = l;
    }
    return maxl + 1;
}

static int ck_add_mtp(qc_ckpt *ck)
{
    const qc_config *c = &ck->cfg;
    bool any;
    int nl = ck_count_mtp_layers(ck, &any);
    if (!any)
        return QC_OK; /* dropped by the producer: fine, no speculative decoding */
    if (c->mtp_num_hidden_layers > nl)
        nl = c->mtp_num_hidden_layers;
    if (nl < 1)
        nl = 1;
    int64_t D = c->hidden_size;
    int rc = ck_addf(ck, D, 2 * D, QC_MOD_MTP, -1, true, "mtp.fc");
    if (!rc)
        rc = ck_need(ck, "mtp.pre_fc_norm_embedding.weight", 1, D, 0, 0);
    if (!rc)
        rc = ck_need(ck, "mtp.pre_fc_norm_hidden.weight", 1, D, 0, 0);
    if (!rc)
        rc = ck_need(ck, "mtp.norm.weight", 1, D, 0, 0);
    for (int j = 0; j < nl && !rc; j++) {
        char lp[64];
        snprintf(lp, sizeof lp, "mtp.layers.%d", j);
        rc = ck_add_layer(ck, lp, j, true, true);
    }
    if (!rc) {
        ck->has_mtp = true;
        ck->mtp_layers = nl;
    }
    return rc;
}

static int cmp_mod_name(const void *a, const void *b, void *ctx)
{
    const qc_module *m = ctx;
    return strcmp(m[*(const size_t *)a].lin.name, m[*(const size_t *)b].lin.name);
}

/* Decides the weight prefix from the tensors: the config's guess first. */
static int ck_prefix(qc_ckpt *ck)
{
    qc_config *c = &ck->cfg;
    static const char *const cands[2] = {"model.language_model.", "model."};
    char name[128];
    snprintf(name, sizeof name, "%sembed_tokens.weight", c->prefix);
    if ((ck->embed = qc_st_find(ck->st, name)))
        return QC_OK;
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "%sembed_tokens.weight", cands[i]);
        if ((ck->embed = qc_st_find(ck->st, name))) {
            snprintf(c->prefix, sizeof c->prefix, "%s", cands[i]);
            return QC_OK;
        }
    }
    return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                      "%s: tensor %sembed_tokens.weight is missing (no embedding in the "
                      "safetensors files)",
                      qc_ckpt_dir(ck), c->prefix);
}

static bool ck_resident_name(const qc_ckpt *ck, const char *nm)
{
    if (!strncmp(nm, "model.visual.", 13))
        return false;
    return !strncmp(nm, ck->cfg.prefix, strlen(ck->cfg.prefix)) || !strncmp(nm, "lm_head.", 8) ||
           !strncmp(nm, "mtp.", 4);
}

static int ck_build(qc_ckpt *ck)
{
    const qc_config *c = &ck->cfg;
    size_t nt = qc_st_count(ck->st);
    ck->tensor_family = qc_malloc(nt ? nt : 1, ck->err, "tensor families");
    if (!ck->tensor_family)
        return QC_EXIT_RUNTIME;
    for (size_t i = 0; i < nt; i++) {
        const qc_tensor *t = qc_st_at(ck->st, i);
        ck->tensor_family[i] = ck_resident_name(ck, t->name) ? (signed char)qc_dtype_family(t->dtype) : -1;
    }
    int rc = ck_prefix(ck);
    if (rc)
        return rc;
    int64_t D = c->hidden_size, V = c->vocab_size;
    int64_t dims[2] = {V, D};
    if ((rc = ck_shape(ck, ck->embed, 2, dims)) ||
        (rc = ck_dtype(ck, ck->embed, is_float_dt(ck->embed->dtype), "BF16, F16 or F32")))
        return rc;
    char n[256];
    snprintf(n, sizeof n, "%snorm.weight", c->prefix);
    if ((rc = ck_need(ck, n, 1, D, 0, 0)))
        return rc;
    for (int i = 0; i < c->num_hidden_layers && !rc; i++) {
        char lp[128];
        snprintf(lp, sizeof lp, "%slayers.%d", c->prefix, i);
        rc = ck_add_layer(ck, lp, i, c->layer_full[i], false);
    }
    if (rc)
        return rc;
    /* lm_head: stored, or the embedding when tied */
    bool has_head = ck_find(ck, "lm_head", "weight") || ck_find(ck, "lm_head", "qweight") ||
                    ck_find(ck, "lm_head", "weight_packed");
    if (has_head) {
        rc = ck_addf(ck, V, D, QC_MOD_LM_HEAD, -1, false, "lm_head");
    } else if (c->tie_word_embeddings) {
        ck->tied = true;
        ck->tied_view = *ck->embed;
        qc_module *m = ck_new_module(ck);
        if (!m)
            return QC_EXIT_RUNTIME;
        m->kind = QC_MOD_LM_HEAD;
        m->layer = m->expert = -1;
        m->tied = true;
        snprintf(m->lin.name, sizeof m->lin.name, "lm_head");
        m->lin.format = ck->embed->dtype == QC_DT_BF16 ? QC_FMT_BF16
                        : ck->embed->dtype == QC_DT_F16 ? QC_FMT_F16 : QC_FMT_F32;
        m->lin.bits = ck->embed->dtype == QC_DT_F32 ? 32 : 16;
        m->lin.symmetric = true;
        m->lin.n = V;
        m->lin.k = D;
        m->lin.weight = &ck->tied_view;
        m->lin.bytes = 0;
    } else {
        return qc_err_set(ck->err, QC_EXIT_CHECKPOINT,
                          "%s: tensor lm_head.weight is missing and tie_word_embeddings is false",
                          qc_ckpt_dir(ck));
    }
    if (rc || (rc = ck_add_mtp(ck)))
        return rc;

    /* lookup index and byte totals */
    ck->by_name = qc_malloc(ck->nmods * sizeof *ck->by_name + 1, ck->err, "module index");
    if (!ck->by_name)
        return QC_EXIT_RUNTIME;
    for (size_t i = 0; i < ck->nmods; i++)
        ck->by_name[i] = i;
    qsort_r(ck->by_name, ck->nmods, sizeof *ck->by_name, cmp_mod_name, ck->mods);
    for (size_t i = 0; i < ck->nmods; i++) {
        ck->linear_bytes += ck->mods[i].lin.bytes;
        if (i && !strcmp(ck->mods[ck->by_name[i]].lin.name, ck->mods[ck->by_name[i - 1]].lin.name))
            return qc_err_set(ck->err, QC_EXIT_CHECKPOINT, "%s: module %s found twice",
                              qc_ckpt_dir(ck), ck->mods[ck->by_name[i]].lin.name);
    }
    for (size_t i = 0; i < nt; i++) {
        const qc_tensor *t = qc_st_at(ck->st, i);
        if (ck->tensor_family[i] < 0) {
            ck->skipped_bytes += (int64_t)t->nbytes;
            continue;
        }
        ck->weights_bytes[ck->tensor_family[i]] += (int64_t)t->nbytes;
        if (!strncmp(t->name, "mtp.", 4)) {
            ck->mtp_bytes += (int64_t)t->nbytes;
            ck->mtp_family_bytes[ck->tensor_family[i]] += (int64_t)t->nbytes;
        }
    }
    ck->lm_head = qc_ckpt_linear(ck, "lm_head");
    return QC_OK;
}

/* Messages quote names from the files; keep them one printable line. */
static int ck_clean(int rc, qc_err *err)
{
    if (rc && err)
        for (char *p = err->msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
    return rc;
}

int qc_ckpt_open(const char *dir, qc_ckpt **out, qc_err *err)
{
    *out = NULL;
    qc_ckpt *ck = qc_calloc(1, sizeof *ck, err, "checkpoint");
    if (!ck)
        return QC_EXIT_RUNTIME;
    ck->err = err;
    int rc = qc_config_load(dir, &ck->cfg, err);
    if (!rc)
        rc = qc_st_open_dir(dir, &ck->st, err);
    if (!rc)
        rc = ck_build(ck);
    ck->err = NULL;
    if (rc) {
        qc_ckpt_free(ck);
        return ck_clean(rc, err);
    }
    *out = ck;
    return QC_OK;
}

void qc_ckpt_free(qc_ckpt *ck)
{
    if (!ck)
        return;
    while (ck->fused) {
        ck_fused *f = ck->fused;
        ck->fused = f->next;
        free(f->views);
        free(f);
    }
    free(ck->mods);
    free(ck->by_name);
    free(ck->tensor_family);
    qc_st_free(ck->st);
    free(ck);
}

const qc_config *qc_ckpt_config(const qc_ckpt *ck) { return &ck->cfg; }
const qc_st *qc_ckpt_st(const qc_ckpt *ck) { return ck->st; }
const char *qc_ckpt_dir(const qc_ckpt *ck) { return ck->cfg.dir[0] ? ck->cfg.dir : "."; }

const qc_tensor *qc_ckpt_tensor(const qc_ckpt *ck, const char *full_name)
{
    return qc_st_find(ck->st, full_name);
}

const qc_tensor *qc_ckpt_tensorf(const qc_ckpt *ck, const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return qc_st_find(ck->st, name);
}

const qc_linear *qc_ckpt_linear(const qc_ckpt *ck, const char *prefix)
{
    if (!ck->by_name)
        return NULL;
    size_t lo = 0, hi = ck->nmods;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(ck->mods[ck->by_name[mid]].lin.name, prefix);
        if (!c)
            return &ck->mods[ck->by_name[mid]].lin;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const qc_linear *qc_ckpt_linearf(const qc_ckpt *ck, const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return qc_ckpt_linear(ck, name);
}

const qc_linear *qc_ckpt_expert(const qc_ckpt *ck, const char *mlp_prefix, int e, qc_expert_proj p)
{
    static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
    if ((unsigned)p > QC_EXPERT_DOWN)
        return NULL;
    return qc_ckpt_linearf(ck, "%s.experts.%d.%s", mlp_prefix, e, proj[p]);
}

bool qc_ckpt_experts_fused(const qc_ckpt *ck, const char *mlp_prefix)
{
    for (const ck_fused *f = ck->fused; f; f = f->next)
        if (!strcmp(f->prefix, mlp_prefix))
            return true;
    return false;
}

const qc_tensor *qc_ckpt_embed(const qc_ckpt *ck) { return ck->embed; }
const qc_linear *qc_ckpt_lm_head(const qc_ckpt *ck) { return ck->lm_head; }
bool qc_ckpt_lm_head_tied(const qc_ckpt *ck) { return ck->tied; }
bool qc_ckpt_has_mtp(const qc_ckpt *ck) { return ck->has_mtp; }
size_t qc_ckpt_module_count(const qc_ckpt *ck) { return ck->nmods; }

const qc_module *qc_ckpt_module_at(const qc_ckpt *ck, size_t i)
{
    return i < ck->nmods ? &ck->mods[i] : NULL;
}

bool qc_ckpt_tensor_resident(const qc_ckpt *ck, const qc_tensor *t)
{
    return ck_resident_name(ck, t->name);
}

void qc_ckpt_memory(const qc_ckpt *ck, int64_t ctx, qc_ckpt_mem *mem)
{
    const qc_config *c = &ck->cfg;
    memset(mem, 0, sizeof *mem);
    for (int f = 0; f < QC_FAM_COUNT; f++) {
        mem->weights_bytes[f] = ck->weights_bytes[f];
        mem->mtp_weights_bytes[f] = ck->mtp_family_bytes[f];
        mem->weights_total += ck->weights_bytes[f];
    }
    mem->linear_bytes = ck->linear_bytes;
    mem->mtp_bytes = ck->mtp_bytes;
    mem->skipped_bytes = ck->skipped_bytes;
    int64_t kv_layer = 2 * (int64_t)c->num_key_value_heads * c->head_dim * 2; /* K+V, BF16 */
    mem->kv_bytes_per_token = c->n_full_layers * kv_layer;
    mem->mtp_kv_bytes_per_token = ck->has_mtp ? ck->mtp_layers * kv_layer : 0;
    mem->gdn_state_bytes = (int64_t)c->n_linear_layers * c->linear_num_value_heads *
                           c->linear_key_head_dim * c->linear_value_head_dim * 4;
    /* fp32, as both engines keep it (qwen35-model.md's 2.8 MiB for the 27B is a
     * BF16 conv state; qchat's is 5.6 MiB) */
    mem->gdn_conv_bytes = (int64_t)c->n_linear_layers * qc_config_conv_dim(c) *
                          (c->linear_conv_kernel_dim - 1) * 4;
    if (!c->n_linear_layers)
        mem->gdn_conv_bytes = 0;
    mem->ctx = ctx;
    mem->total_bytes = mem->weights_total + ctx * (mem->kv_bytes_per_token + mem->mtp_kv_bytes_per_token) +
                       mem->gdn_state_bytes + mem->gdn_conv_bytes;
}

/* The family holding most Linear bytes in the decoder layers ("BF16" when
 * nothing is quantized); the embedding and lm_head stay 16-bit everywhere. */
const char *qc_ckpt_dominant_family(const qc_ckpt *ck)
{
    int64_t bytes[QC_FAM_COUNT] = {0};
    for (size_t i = 0; i < qc_ckpt_module_count(ck); i++) {
        const qc_module *mod = qc_ckpt_module_at(ck, i);
        if (mod->kind == QC_MOD_LM_HEAD || mod->mtp)
            continue;
        bytes[qc_format_to_family(mod->lin.format)] += mod->lin.bytes;
    }
    int best = QC_FAM_BF16;
    for (int f = 1; f < QC_FAM_COUNT; f++)
        if (bytes[f] > 0 && (best == QC_FAM_BF16 || bytes[f] > bytes[best]))
            best = f;
    return qc_family_name((qc_family)best);
}
