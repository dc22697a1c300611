/* cuda_repack.c — load-time repacking of every published quantized format into
 * the kernel-native layouts of kernels/quant.h, the CPU reading of those
 * layouts (for tests), and the upload to the device.
 *
 * Why these layouts (the decode GEMV is memory-bound; see kernels/gemv_*.cu):
 *  - Row-major [N][K] everywhere (gptq's [K/8,N] and awq's [K,N/8] are
 *    transposed once here): a thread block owns QK_QROWS output rows and its
 *    threads walk K together, so each warp issues coalesced 16-byte loads of
 *    512 contiguous bytes per row, and one x chunk loaded into registers serves
 *    all rows of the block.
 *  - Rows padded to a multiple of 32 elements (16-byte aligned uint4 loads with
 *    no per-element bounds checks) and N padded to QK_QROWS (no row checks in
 *    the inner loop); padding is zero so it adds nothing.
 *  - INT4: one layout for gptq/awq/ct-int. Nibbles in natural k order: even
 *    nibbles pair with the low bf16 half of an x word and odd ones with the
 *    high half, so no shuffle is needed to line values up with x. Scale and
 *    zero of a group share one 32-bit word (one load per 32 values; the
 *    published 16-bit scale is kept bit-exact, 3 % of the weight bytes at
 *    g128 like the published files). The kernel turns a nibble into
 *    (2^23 + q) with one AND/OR and subtracts (2^23 + z): exact (q - z).
 *    g_idx is handled by permuting K here (each group's inputs contiguous, a
 *    segment per group padded to a multiple of 32) and gathering x through a
 *    perm table in the kernel, plus one group index per 32-position chunk,
 *    instead of a group index per k: the common no-g_idx case pays nothing,
 *    act-order files (exactly G inputs per group) need no padding, and the
 *    scale is still loaded once per 32 values.
 *  - NVFP4/MXFP4: the 8 codes of a 32-bit word are re-laid bit by bit so that
 *    each pair of elements becomes an f16x2 (sign at bit 15, magnitude at bits
 *    9-11, i.e. the value * 2^-14 with E2M1's subnormal mapping onto f16's)
 *    with one AND (pairs 0, 1: a shift too) or two shifts, two ANDs and an OR
 *    (pairs 2, 3) — see fp4_shuffle. The per-tensor global scale is folded to
 *    one fp32 multiplier (1/global for compressed-tensors, weight_scale_2 for
 *    ModelOpt), block scales stay as the published bytes.
 *  - FP8: the published bytes as they are (padded), scales as one fp32 grid
 *    covering per-block, per-channel (1 x K blocks) and per-tensor (one block).
 *  - BF16: rows padded, so 16-bit projections join fused launches.
 *
 * The host-side packing is plain C and is compiled in every build, so the
 * CPU-only test suite checks it (pack, then unpack == qc_linear_dequant_rows);
 * only the upload needs QC_HAVE_CUDA. */
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_repack.h"
#include "dequant.h"
#include "format.h"
#include "quant.h"
#include "util.h"

#ifdef QC_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }


static int64_t tensor_i64(const qc_tensor *t, int64_t i)
{
    const unsigned char *d = t->data;
    switch (t->dtype) {
    case QC_DT_U8: return d[i];
    case QC_DT_I8: return (int8_t)d[i];
    case QC_DT_U16: return qc_ld_u16(d, i);
    case QC_DT_I16: return (int16_t)qc_ld_u16(d, i);
    case QC_DT_U32: return qc_ld_u32(d, i);
    case QC_DT_I32: return (int32_t)qc_ld_u32(d, i);
    case QC_DT_U64:
    case QC_DT_I64: {
        int64_t v;
        memcpy(&v, d + 8 * i, 8);
        return v;
    }
    default: return -1;
    }
}

/* Exact float -> f16 bits, or false when f is not an f16 value. */
static bool f32_to_f16_exact(float f, uint16_t *out)
{
    uint16_t sign = signbit(f) ? 0x8000u : 0;
    if (f == 0.0f) {
        *out = sign;
        return true;
    }
    if (!isfinite(f))
        return false;
    int e;
    float m = frexpf(fabsf(f), &e); /* |f| = m * 2^e, m in [0.5, 1) */
    int E = e - 1 + 15;              /* f16 biased exponent of the 1.x form */
    if (E >= 31)
        return false;
    if (E <= 0) { /* subnormal: |f| = q * 2^-24 */
        float q = fabsf(f) * 16777216.0f;
        if (q != floorf(q) || q >= 1024.0f)
            return false;
        *out = (uint16_t)(sign | (uint16_t)q);
        return true;
    }
    float frac = (m * 2.0f - 1.0f) * 1024.0f; /* 10 mantissa bits */
    if (frac != floorf(frac))
        return false;
    *out = (uint16_t)(sign | (uint16_t)(E << 10) | (uint16_t)frac);
    return true;
}

int qc_qweight_supported(int f)
{
    switch (f) {
    case QC_FMT_FP8_BLOCK:
    case QC_FMT_FP8_TENSOR:
    case QC_FMT_FP8_CHANNEL:
    case QC_FMT_GPTQ:
    case QC_FMT_AWQ:
    case QC_FMT_CT_INT:
    case QC_FMT_NVFP4_CT:
    case QC_FMT_NVFP4_MODELOPT:
    case QC_FMT_MXFP4_CT:
    case QC_FMT_BF16: return 1;
    default: return 0;
    }
}

void qc_qweight_free_host(qk_qweight *w)
{
    free(w->w);
    free(w->s);
    free(w->perm);
    w->w = w->s = NULL;
    w->perm = NULL;
}

static int pack_fail(const qc_linear *l, qc_err *err, const char *what)
{
    return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s (%s): cannot repack for the GPU: %s",
                      l->name[0] ? l->name : "linear", qc_format_name(l->format), what);
}

/* Packing is split in two so that a loader can run it on many threads, one
 * range of output rows at a time (cuda_repack.h): qc_qweight_plan fixes the
 * descriptor, the byte sizes and the small g_idx permutation on one thread;
 * pack_*_rows then produce any row range of the weight and scale arrays
 * independently, writing every byte of it (padding zeros included), so the
 * result does not depend on how the rows were split or in which order. */

/* ---- FP8 ------------------------------------------------------------------ */

static int plan_fp8(const qc_linear *l, qk_qweight *q, qc_err *err)
{
    const int64_t K = l->k;
    if (l->weight->dtype != QC_DT_F8_E4M3)
        return pack_fail(l, err, "only E4M3 weights have a GPU kernel");
    q->kind = QK_QW_FP8;
    if (l->format == QC_FMT_FP8_BLOCK) {
        if (l->block_k % 16 && l->block_k < K)
            return pack_fail(l, err, "block_k is not a multiple of 16");
        q->blk_n = l->block_n;
        q->blk_k = l->block_k >= K ? (int)q->k_pad : l->block_k;
    } else if (l->format == QC_FMT_FP8_TENSOR) {
        q->blk_n = q->n_pad;
        q->blk_k = q->k_pad;
    } else {
        q->blk_n = 1;
        q->blk_k = q->k_pad;
    }
    q->nkb = (int)ceil_div(q->k_pad, q->blk_k);
    int64_t nbn = ceil_div(q->n_pad, q->blk_n);
    q->w_bytes = (size_t)q->n_pad * (size_t)q->k_pad;
    q->s_bytes = (size_t)(nbn * q->nkb) * sizeof(float);
    return QC_OK;
}

static void fp8_w_rows(const qc_linear *l, const qk_qweight *q, int64_t r0, int64_t nr, uint8_t *w)
{
    const int64_t N = l->n, K = l->k;
    const uint8_t *src = l->weight->data;
    for (int64_t r = 0; r < nr; r++) {
        uint8_t *row = w + r * q->k_pad;
        const int64_t n = r0 + r;
        int64_t have = n < N ? K : 0;
        if (have)
            memcpy(row, src + n * K, (size_t)K);
        memset(row + have, 0, (size_t)(q->k_pad - have));
    }
}

/* The whole scale grid (small: one float per block). */
static void fp8_scales(const qc_linear *l, const qk_qweight *q, float *s)
{
    const int64_t N = l->n, K = l->k;
    memset(s, 0, q->s_bytes);
    if (l->format == QC_FMT_FP8_BLOCK) {
        int64_t sbn = ceil_div(N, l->block_n), sbk = ceil_div(K, l->block_k);
        for (int64_t bn = 0; bn < sbn; bn++)
            for (int64_t bk = 0; bk < sbk; bk++)
                s[bn * q->nkb + bk] = qc_tensor_get_f32(l->scale, bn * sbk + bk);
    } else if (l->format == QC_FMT_FP8_TENSOR) {
        s[0] = qc_tensor_get_f32(l->scale, 0);
    } else {
        for (int64_t n = 0; n < N; n++) s[n] = qc_tensor_get_f32(l->scale, n);
    }
}

/* ---- INT4 ----------------------------------------------------------------- */

static const int awq_slot[8] = {0, 4, 1, 5, 2, 6, 3, 7};

/* Code q(n, k) of the published tensor. */
static inline uint32_t int4_code(const qc_linear *l, int64_t n, int64_t k)
{
    const void *d = l->weight->data;
    switch (l->format) {
    case QC_FMT_GPTQ: return (qc_ld_u32(d, (k / 8) * l->n + n) >> (4 * (k % 8))) & 15u;
    case QC_FMT_AWQ: return (qc_ld_u32(d, k * (l->n / 8) + n / 8) >> (4 * awq_slot[n % 8])) & 15u;
    default: return (qc_ld_u32(d, n * ceil_div(l->k, 8) + k / 8) >> (4 * (k % 8))) & 15u;
    }
}

/* Number of published groups. */
static int64_t int4_ngroups(const qc_linear *l)
{
    return l->format == QC_FMT_CT_INT ? l->scale->shape[1] : l->scale->shape[0];
}

/* Zero z (W = s * (q - z)) of row n, group g. */
static int64_t int4_zero(const qc_linear *l, int64_t n, int64_t g, int64_t ng)
{
    const qc_tensor *z = l->zeros;
    switch (l->format) {
    case QC_FMT_GPTQ:
        if (!z)
            return 8;
        return (int64_t)((qc_ld_u32(z->data, g * z->shape[1] + n / 8) >> (4 * (n % 8))) & 15u) +
               l->zero_bias;
    case QC_FMT_AWQ: return (qc_ld_u32(z->data, g * (l->n / 8) + n / 8) >> (4 * awq_slot[n % 8])) & 15u;
    default:
        if (!z)
            return 8;
        /* Packed along N ([ceil(N/8), G] words, stored + 8) or, in older files,
         * one signed value per [n, g] (dequant.c's ct_zeros_packed rule). */
        if ((z->dtype == QC_DT_I32 || z->dtype == QC_DT_U32) && z->ndim == 2 &&
            z->shape[0] == ceil_div(l->n, 8) && (z->shape[0] != l->n || l->n == 1))
            return (qc_ld_u32(z->data, (n / 8) * ng + g) >> (4 * (n % 8))) & 15u;
        return tensor_i64(z, n * ng + g) + 8;
    }
}

/* False when some zero point may fall outside 0..255 (then the plan checks
 * them all, so that a file the layout cannot hold is refused before any row
 * is packed): only unpacked compressed-tensors zeros and an unusual GPTQ
 * zero bias can. */
static bool int4_zeros_in_range(const qc_linear *l)
{
    if (!l->zeros || l->format == QC_FMT_AWQ)
        return true;
    if (l->format == QC_FMT_GPTQ)
        return l->zero_bias >= 0 && l->zero_bias <= 240;
    const qc_tensor *z = l->zeros;
    return (z->dtype == QC_DT_I32 || z->dtype == QC_DT_U32) && z->ndim == 2 && z->shape[0] == ceil_div(l->n, 8) &&
           (z->shape[0] != l->n || l->n == 1);
}

/* Whether every group's zero point is 8, as in the symmetric files (GPTQ and
 * AutoRound with sym, ct-int without zero_point): then the tiled layout keeps
 * only the 16-bit scales (quant.h s16). A scan of the packed zero words
 * first; if one differs (padding nibbles past N may), the zeros one by one,
 * stopping at the first that is not 8 (an asymmetric file stops at once). */
static bool int4_zeros_all8(const qc_linear *l, int64_t ngroups)
{
    const qc_tensor *z = l->zeros;
    if (!z)
        return l->format != QC_FMT_AWQ;
    const int64_t stored8 = l->format == QC_FMT_GPTQ ? 8 - l->zero_bias : 8; /* the nibble that means 8 */
    if ((z->dtype == QC_DT_I32 || z->dtype == QC_DT_U32) && int4_zeros_in_range(l) && stored8 >= 0 && stored8 < 16) {
        const uint32_t pat = (uint32_t)stored8 * 0x11111111u;
        int64_t i = 0;
        while (i < z->numel && qc_ld_u32(z->data, i) == pat) i++;
        if (i == z->numel)
            return true;
    }
    const int64_t ng = int4_ngroups(l);
    for (int64_t n = 0; n < l->n; n++)
        for (int64_t g = 0; g < ngroups && g < ng; g++)
            if (int4_zero(l, n, g, ng) != 8)
                return false;
    return true;
}

static int64_t int4_scale_index(const qc_linear *l, int64_t n, int64_t g, int64_t ng)
{
    return l->format == QC_FMT_CT_INT ? n * ng + g : g * l->n + n;
}

/* (cuda_repack.h) */
int qc_qweight_plan_gidx(qk_qweight *q, const int32_t *g, int64_t K, int64_t ng, int64_t G, qc_err *err,
                         const char *name)
{
    int64_t *cnt = qc_calloc((size_t)ng, sizeof *cnt, err, name);
    if (!cnt)
        return err ? err->code : QC_EXIT_RUNTIME;
    for (int64_t k = 0; k < K; k++) cnt[g[k]]++;
    /* Act-order files: every group G long (the last no longer), G a
     * multiple of 32, so the segments fall on the plain layout's groups. */
    bool regular = G > 0 && G % 32 == 0 && G < K && ng * G < 65535;
    for (int64_t j = 0; j < ng && regular; j++) regular = j + 1 < ng ? cnt[j] == G : cnt[j] <= G;
    /* Group g's inputs become the segment [start_g, start_g + cnt_g) of
     * packed K; each segment is padded to a multiple of 32 so a chunk
     * never spans two groups. */
    int64_t kp = 0;
    for (int64_t j = 0; j < ng; j++) {
        int64_t c = cnt[j];
        cnt[j] = kp; /* now: next free position of group j */
        kp += round_up(c, 32);
    }
    q->k_pad = (int)kp;
    q->group = regular ? (int)G : 32;
    q->perm_regular = regular;
    q->ngroups = (int)ng;
    q->perm_bytes = regular ? qk_perm16_offset(q->k_pad) + (size_t)q->k_pad * 2
                            : (size_t)(q->k_pad + q->k_pad / 32) * sizeof(int32_t);
    q->perm = qc_calloc(1, q->perm_bytes, err, name);
    if (!q->perm) {
        free(cnt);
        return err ? err->code : QC_EXIT_RUNTIME;
    }
    /* perm[p]: the original k at packed position p (-1: padding);
     * perm[k_pad + c]: the group of 32-position chunk c. */
    int32_t *cg = q->perm + q->k_pad;
    for (int64_t p = 0; p < q->k_pad; p++) q->perm[p] = -1;
    for (int64_t c = 0; c < q->k_pad / 32; c++) cg[c] = 0;
    for (int64_t k = 0; k < K; k++) {
        int64_t p = cnt[g[k]]++;
        q->perm[p] = (int32_t)k;
        cg[p / 32] = g[k];
    }
    if (regular) { /* the uint16 copy the decode GEMV stages x with */
        uint16_t *p16 = (uint16_t *)((char *)q->perm + qk_perm16_offset(q->k_pad));
        for (int64_t p = 0; p < q->k_pad; p++)
            p16[p] = q->perm[p] < 0 ? 0xffffu : (uint16_t)qk_perm16_slot(q->perm[p], q->k_pad);
    }
    free(cnt);
    return QC_OK;
}

static int plan_int4(const qc_linear *l, qk_qweight *q, qc_err *err)
{
    const int64_t N = l->n, K = l->k, ng = int4_ngroups(l);
    const int64_t G = l->group_size > 0 ? l->group_size : K;
    if (l->bits != 4)
        return pack_fail(l, err, "only 4-bit integer weights have a GPU kernel");
    q->kind = QK_QW_INT4;
    const qc_dtype sdt = l->scale->dtype;
    if (sdt == QC_DT_F16)
        q->scale_f16 = 1;
    else if (sdt == QC_DT_BF16)
        q->scale_f16 = 0;
    else if (sdt != QC_DT_F32)
        return pack_fail(l, err, "scales are not F16, BF16 or F32");

    /* Packed K: identity with group length G, or grouped segments for g_idx. */
    if (l->g_idx) {
        int32_t *g = qc_malloc((size_t)K * sizeof *g, err, l->name);
        if (!g)
            return err ? err->code : QC_EXIT_RUNTIME;
        for (int64_t k = 0; k < K; k++) {
            int64_t v = tensor_i64(l->g_idx, k);
            g[k] = v < 0 || v >= ng ? -1 : (int32_t)v;
            if (g[k] < 0) {
                free(g);
                return pack_fail(l, err, "g_idx value outside the groups");
            }
        }
        int rc = qc_qweight_plan_gidx(q, g, K, ng, G, err, l->name);
        free(g);
        if (rc)
            return rc;
    } else {
        if (G < K && G % 32)
            return pack_fail(l, err, "int4 group size is not a multiple of 32");
        q->group = (int)(G >= K ? q->k_pad : G);
        q->ngroups = (int)ceil_div(q->k_pad, q->group);
        if (q->ngroups > ng && G < K)
            return pack_fail(l, err, "fewer scale groups than K / group size");
    }
    q->w_bytes = (size_t)q->n_pad * (size_t)(q->k_pad / 8) * 4;
    q->s_bytes = (size_t)q->n_pad * (size_t)q->ngroups * 4;
    /* F32 scales must be exactly 16-bit values (bf16 preferred). */
    if (sdt == QC_DT_F32) {
        bool bf_ok = true, f16_ok = true;
        for (int64_t i = 0; i < l->scale->numel && (bf_ok || f16_ok); i++) {
            float v = qc_tensor_get_f32(l->scale, i);
            uint16_t h;
            if (bf_ok && qc_bf16_to_f32(qc_f32_to_bf16(v)) != v)
                bf_ok = false;
            if (f16_ok && !f32_to_f16_exact(v, &h))
                f16_ok = false;
        }
        if (!bf_ok && !f16_ok)
            return pack_fail(l, err, "F32 scales that are not exact 16-bit values");
        q->scale_f16 = !bf_ok;
    }
    if (!int4_zeros_in_range(l))
        for (int64_t n = 0; n < N; n++)
            for (int64_t g = 0; g < q->ngroups && g < ng; g++) {
                int64_t z = int4_zero(l, n, g, ng);
                if (z < 0 || z > 255)
                    return pack_fail(l, err, "zero point outside 0..255");
            }
    q->zero8 = !l->g_idx && int4_zeros_all8(l, q->ngroups);
    return QC_OK;
}

/* Scale/zero words of rows [r0, r0 + nr): s16 | zero << 16, or (q->s16)
 * the 16-bit scales alone, every zero having been found to be 8. */
static int int4_s_rows(const qc_linear *l, const qk_qweight *q, int64_t r0, int64_t nr, void *dst, qc_err *err)
{
    const int64_t N = l->n, ng = int4_ngroups(l);
    const qc_dtype sdt = l->scale->dtype;
    const uint16_t e16 = sdt == QC_DT_BF16 ? 0x7f80u : 0x7c00u; /* exponent bits: all set = NaN or inf */
    uint32_t *sw = dst;
    uint16_t *sh = dst;
    memset(dst, 0, (size_t)(nr * q->ngroups) * (q->s16 ? 2 : 4));
    for (int64_t n = r0; n < r0 + nr && n < N; n++) {
        for (int64_t g = 0; g < q->ngroups && g < ng; g++) {
            int64_t si = int4_scale_index(l, n, g, ng);
            uint32_t s16;
            if (sdt == QC_DT_F32) {
                float v = qc_tensor_get_f32(l->scale, si);
                if (!isfinite(v))
                    return qc_linear_scale_error(l, si, err);
                uint16_t h = 0;
                if (q->scale_f16)
                    f32_to_f16_exact(v, &h);
                else
                    h = qc_f32_to_bf16(v);
                s16 = h;
            } else {
                s16 = qc_ld_u16(l->scale->data, si);
                if ((s16 & e16) == e16)
                    return qc_linear_scale_error(l, si, err);
            }
            int64_t z = int4_zero(l, n, g, ng);
            if (z < 0 || z > 255) /* refused by the plan already; kept as a guard */
                return pack_fail(l, err, "zero point outside 0..255");
            if (q->s16 && z != 8) /* the plan found only 8s; kept as a guard */
                return pack_fail(l, err, "zero point not 8 in a symmetric layout");
            if (q->s16)
                sh[(n - r0) * q->ngroups + g] = (uint16_t)s16;
            else
                sw[(n - r0) * q->ngroups + g] = s16 | (uint32_t)z << 16;
        }
    }
    return QC_OK;
}

/* Weight words of rows [r0, r0 + nr), natural nibble order along packed K,
 * each written straight to its place in the weight's layout (tiled: row r
 * of the slab is r - r0, r0 a multiple of QK_QROWS; a separate tiling pass
 * over the slab, which computed every word's index with runtime divisions,
 * made the 27B INT4 load 2.3x slower). */
static void int4_w_rows(const qc_linear *l, const qk_qweight *q, int64_t r0, int64_t nr, uint32_t *w)
{
    const int64_t N = l->n, K = l->k, kw = q->k_pad / 8;
    const int tl = q->tiled;
    const int64_t r1 = r0 + nr < N ? r0 + nr : N; /* rows past N stay zero */
    /* GPTQ's and compressed-tensors' copies below write every word of rows
     * [r0, r1); only padding (rows past N, words past K / 8) needs zeros. */
    const bool every_word = !q->perm && K % 8 == 0 && kw == K / 8 && r1 == r0 + nr &&
                            (l->format == QC_FMT_GPTQ || l->format == QC_FMT_CT_INT);
    if (!every_word)
        memset(w, 0, (size_t)(nr * kw) * 4);
    if (q->perm) {
        for (int64_t n = r0; n < r1; n++) {
            uint32_t *row = w + (n - r0) * kw;
            for (int64_t p = 0; p < q->k_pad; p++) {
                int64_t k = q->perm[p];
                if (k >= 0)
                    row[p / 8] |= int4_code(l, n, k) << (4 * (p % 8));
            }
        }
    } else if (l->format == QC_FMT_GPTQ && K % 8 == 0) {
        /* [K/8, N]: a transpose of words, 8 x 8 words at a time through
         * registers (8 reads and 8 writes of 32 contiguous bytes: 8 words of
         * a row lie together in both layouts, i0 being a multiple of 8);
         * edges word by word. Against one word per step in 64 x 64 tiles:
         * 1.3 -> 2.0-3.0 GB/s on one thread of the 2-core CI VM, 27B int4
         * loads 1.62-1.74 -> 1.36-1.64 s on the 16-thread H100 host (where
         * the tiles plus this block order gave 1.48-1.77 s). */
        const void *d = l->weight->data;
        const int64_t i8 = K / 8 / 8 * 8, n8 = r0 + (r1 - r0) / 8 * 8;
        for (int64_t i0 = 0; i0 < i8; i0 += 8)
            for (int64_t n0 = r0; n0 < n8; n0 += 8) {
                uint32_t b[8][8];
                for (int a = 0; a < 8; a++)
                    memcpy(b[a], (const unsigned char *)d + 4 * ((i0 + a) * N + n0), 32);
                for (int c = 0; c < 8; c++) {
                    uint32_t *o = w + qk_int4_tile_index(tl, (size_t)(n0 + c - r0), (size_t)i0, (size_t)kw, 128);
                    for (int a = 0; a < 8; a++) o[a] = b[a][c];
                }
            }
        for (int64_t n = r0; n < r1; n++) /* the edges: rows from n8, words from i8 */
            for (int64_t i = n < n8 ? i8 : 0; i < K / 8; i++)
                w[qk_int4_tile_index(tl, (size_t)(n - r0), (size_t)i, (size_t)kw, 128)] = qc_ld_u32(d, i * N + n);
    } else if (l->format == QC_FMT_AWQ && K % 8 == 0) {
        /* [K, N/8] interleaved: an 8 (k) x 8 (n) nibble transpose per word column. */
        const void *d = l->weight->data;
        const int64_t nw = N / 8, c0 = r0 / 8, c1 = ceil_div(r1, 8) < nw ? ceil_div(r1, 8) : nw;
        for (int64_t i = 0; i < K / 8; i++)
            for (int64_t c = c0; c < c1; c++) {
                uint32_t in[8];
                for (int j = 0; j < 8; j++) in[j] = qc_ld_u32(d, (8 * i + j) * nw + c);
                for (int t = 0; t < 8; t++) { /* column 8c + t sits in slot awq_slot[t] */
                    const int64_t n = 8 * c + t;
                    if (n < r0 || n >= r1)
                        continue;
                    const int sh = 4 * awq_slot[t];
                    uint32_t o = 0;
                    for (int j = 0; j < 8; j++) o |= ((in[j] >> sh) & 15u) << (4 * j);
                    w[qk_int4_tile_index(tl, (size_t)(n - r0), (size_t)i, (size_t)kw, 128)] = o;
                }
            }
    } else if (l->format == QC_FMT_CT_INT && K % 8 == 0) {
        const unsigned char *d = l->weight->data;
        for (int64_t n = r0; n < r1; n++)
            for (int64_t i = 0; i < K / 8; i += 128) /* the row's steps, 512 bytes each (tiled: apart) */
                memcpy(w + qk_int4_tile_index(tl, (size_t)(n - r0), (size_t)i, (size_t)kw, 128),
                       d + 4 * (n * (K / 8) + i), (size_t)(K / 8 - i < 128 ? K / 8 - i : 128) * 4);
    } else {
        for (int64_t n = r0; n < r1; n++)
            for (int64_t k = 0; k < K; k++)
                w[qk_int4_tile_index(tl, (size_t)(n - r0), (size_t)(k / 8), (size_t)kw, 128)] |= int4_code(l, n, k)
                                                                                                << (4 * (k % 8));
    }
}

/* ---- NVFP4 / MXFP4 -------------------------------------------------------- */

/* Bit positions of the 3 magnitude bits and the sign of element j (0..7) of a
 * word, chosen so the kernel's four f16x2 pairs come out as
 *   h0 = w & 0x8E008E00                                  (elements 0, 1)
 *   h1 = (w << 3) & 0x8E008E00                           (elements 2, 3)
 *   h2 = ((w << 9) & 0x0E000E00) | ((w << 2) & 0x80008000)  (elements 4, 5)
 *   h3 = ((w << 6) & 0x0E000E00) | ((w << 1) & 0x80008000)  (elements 6, 7)
 * with element 2p in the low half (bits 9-11 magnitude, 15 sign) and 2p+1 in
 * the high half (25-27, 31). Every bit of the word is used exactly once. */
static const int fp4_mag_bit[8] = {9, 25, 6, 22, 0, 16, 3, 19};
static const int fp4_sign_bit[8] = {15, 31, 12, 28, 13, 29, 14, 30};

static uint32_t fp4_shuffle(const uint8_t code[8])
{
    uint32_t w = 0;
    for (int j = 0; j < 8; j++)
        w |= (uint32_t)(code[j] & 7u) << fp4_mag_bit[j] | (uint32_t)(code[j] >> 3 & 1u) << fp4_sign_bit[j];
    return w;
}

static uint8_t fp4_unshuffle(uint32_t w, int j)
{
    return (uint8_t)(((w >> fp4_mag_bit[j]) & 7u) | ((w >> fp4_sign_bit[j]) & 1u) << 3);
}

/* fp4_lut[b][v]: the bits byte v (elements 2b, 2b+1) contributes to a
 * repacked word, so a word is four lookups ORed (load-time speed). */
static uint32_t fp4_lut[4][256];
static pthread_once_t fp4_lut_once = PTHREAD_ONCE_INIT;
static void fp4_lut_build(void)
{
    for (int b = 0; b < 4; b++)
        for (int v = 0; v < 256; v++) {
            uint8_t c[8] = {0};
            c[2 * b] = (uint8_t)(v & 15);
            c[2 * b + 1] = (uint8_t)(v >> 4);
            fp4_lut[b][v] = fp4_shuffle(c);
        }
}

static int plan_fp4(const qc_linear *l, qk_qweight *q, qc_err *err)
{
    const bool mx = l->format == QC_FMT_MXFP4_CT;
    const int64_t bs = mx ? 32 : 16, nb = q->k_pad / bs;
    q->kind = mx ? QK_QW_MXFP4 : QK_QW_NVFP4;
    qc_dtype sdt = l->scale->dtype;
    if (mx ? (sdt != QC_DT_U8 && sdt != QC_DT_F8_E8M0) : sdt != QC_DT_F8_E4M3)
        return pack_fail(l, err, mx ? "MXFP4 scales are not E8M0 bytes" : "NVFP4 scales are not E4M3");
    if (mx)
        q->gmul = 1.0f;
    else {
        float g = qc_tensor_get_f32(l->global_scale, 0);
        q->gmul = l->format == QC_FMT_NVFP4_CT ? 1.0f / g : g;
    }
    q->w_bytes = (size_t)q->n_pad * (size_t)(q->k_pad / 8) * 4;
    q->s_bytes = (size_t)q->n_pad * (size_t)nb;
    return QC_OK;
}

static void fp4_w_rows(const qc_linear *l, const qk_qweight *q, int64_t r0, int64_t nr, uint32_t *w)
{
    const int64_t N = l->n, K = l->k, kw = q->k_pad / 8, full = K / 8; /* words with 8 real elements */
    const uint8_t *src = l->weight->data;
    pthread_once(&fp4_lut_once, fp4_lut_build);
    for (int64_t r = 0; r < nr; r++) {
        const int64_t n = r0 + r;
        uint32_t *out = w + r * kw;
        if (n >= N) {
            memset(out, 0, (size_t)kw * 4);
            continue;
        }
        const uint8_t *row = src + n * (K / 2);
        for (int64_t i = 0; i < full; i++) {
            const uint8_t *b = row + 4 * i;
            out[i] = fp4_lut[0][b[0]] | fp4_lut[1][b[1]] | fp4_lut[2][b[2]] | fp4_lut[3][b[3]];
        }
        for (int64_t i = full; i < kw; i++) {
            uint8_t c[8] = {0};
            for (int j = 0; j < 8 && 8 * i + j < K; j++) {
                int64_t k = 8 * i + j;
                c[j] = (uint8_t)((row[k / 2] >> (4 * (k & 1))) & 15u);
            }
            out[i] = fp4_shuffle(c);
        }
    }
}

/* Each row's scale bytes checked as they are copied, while in L1 (a
 * separate pass over a 27B NVFP4 file's 1.5 GB of scales cost its load
 * ~7 %, BENCHMARKS.md thirtieth session). */
static int fp4_s_rows(const qc_linear *l, const qk_qweight *q, int64_t r0, int64_t nr, uint8_t *s, qc_err *err)
{
    const bool mx = l->format == QC_FMT_MXFP4_CT;
    const int64_t bs = mx ? 32 : 16, nb_src = ceil_div(l->k, bs), nb = q->k_pad / bs;
    const uint8_t *ss = l->scale->data;
    for (int64_t r = 0; r < nr; r++) {
        const int64_t n = r0 + r;
        int64_t have = n < l->n ? nb_src : 0;
        if (have) {
            memcpy(s + r * nb, ss + n * nb_src, (size_t)nb_src);
            const int64_t bad = qc_scale_first_nonfinite(l->scale, n * nb_src, nb_src);
            if (bad >= 0)
                return qc_linear_scale_error(l, bad, err);
        }
        memset(s + r * nb + have, 0, (size_t)(nb - have));
    }
    return QC_OK;
}

/* ---- BF16 ----------------------------------------------------------------- */

/* BF16 rows padded like the others, so a 16-bit projection can join a fused
 * launch with quantized ones (GDN in_proj_a/b next to in_proj_qkv/z). */
static int plan_bf16(const qc_linear *l, qk_qweight *q, qc_err *err)
{
    if (l->weight->dtype != QC_DT_BF16)
        return pack_fail(l, err, "only BF16 weights (not F16/F32) have this layout");
    q->kind = QK_QW_BF16;
    q->w_bytes = (size_t)q->n_pad * (size_t)q->k_pad * 2;
    return QC_OK;
}

static void bf16_w_rows(const qc_linear *l, const qk_qweight *q, int64_t r0, int64_t nr, uint16_t *w)
{
    const unsigned char *src = l->weight->data;
    for (int64_t r = 0; r < nr; r++) {
        const int64_t n = r0 + r;
        int64_t have = n < l->n ? l->k : 0;
        if (have)
            memcpy(w + r * q->k_pad, src + 2 * n * l->k, (size_t)l->k * 2);
        memset(w + r * q->k_pad + have, 0, (size_t)(q->k_pad - have) * 2);
    }
}

/* ---- entry points --------------------------------------------------------- */

int qc_qweight_plan(const qc_linear *l, qk_qweight *q, qc_err *err)
{
    memset(q, 0, sizeof *q);
    if (!qc_qweight_supported(l->format))
        return pack_fail(l, err, "no GPU kernel for this format");
    int rc = qc_linear_validate(l, err);
    if (rc)
        return rc;
    if (l->n > (1 << 30) || l->k > (1 << 30))
        return pack_fail(l, err, "dimension too large");
    q->fmt = l->format;
    q->n = (int)l->n;
    q->k = (int)l->k;
    q->n_pad = (int)round_up(l->n, QK_QROWS);
    q->k_pad = (int)round_up(l->k, 32);
    switch (l->format) {
    case QC_FMT_FP8_BLOCK:
    case QC_FMT_FP8_TENSOR:
    case QC_FMT_FP8_CHANNEL: rc = plan_fp8(l, q, err); break;
    case QC_FMT_GPTQ:
    case QC_FMT_AWQ:
    case QC_FMT_CT_INT: rc = plan_int4(l, q, err); break;
    case QC_FMT_BF16: rc = plan_bf16(l, q, err); break;
    default: rc = plan_fp4(l, q, err); break;
    }
    if (rc) {
        free(q->perm);
        q->perm = NULL;
    }
    return rc;
}

size_t qc_qweight_row_bytes(const qk_qweight *q) { return q->n_pad ? q->w_bytes / (size_t)q->n_pad : 0; }

size_t qc_qweight_srow_bytes(const qk_qweight *q)
{
    if (q->kind == QK_QW_FP8 || !q->n_pad)
        return 0; /* one grid of blocks: packed whole */
    return q->s_bytes / (size_t)q->n_pad;
}

void qc_qweight_tile(qk_qweight *q)
{
    q->tiled = qk_int4_tileable(q);
    q->s16 = q->tiled && q->zero8;
    if (q->s16)
        q->s_bytes = (size_t)q->n_pad * (size_t)q->ngroups * 2;
}

/* Rows [0, nr) of a row-major slab of scales, row_words elements of es
 * bytes (4: words, 2: s16) per row, nr a multiple of QK_QROWS, into the
 * tiled order of quant.h (unit elements per row and step): per row group,
 * its rows' pieces of unit elements interleaved step by step
 * (qk_int4_tile_index), moved as whole pieces. The codes are written in
 * place by int4_w_rows. */
static int int4_tile_slab(void *w, int64_t nr, int64_t row_words, int64_t unit, size_t es)
{
    const size_t rowb = (size_t)row_words * es, ub = (size_t)unit * es;
    uint8_t *grp = malloc(QK_QROWS * rowb);
    if (!grp)
        return -1;
    for (int64_t g = 0; g < nr / QK_QROWS; g++) {
        uint8_t *src = (uint8_t *)w + (size_t)g * QK_QROWS * rowb;
        memcpy(grp, src, QK_QROWS * rowb);
        for (int64_t u = 0; u < row_words / unit; u++)
            for (int r = 0; r < QK_QROWS; r++)
                memcpy(src + ((size_t)u * QK_QROWS + (size_t)r) * ub, grp + (size_t)r * rowb + (size_t)u * ub, ub);
    }
    free(grp);
    return 0;
}

int qc_qweight_pack_rows(const qc_linear *l, const qk_qweight *q, int what, int64_t r0, int64_t nr, void *dst,
                         qc_err *err)
{
    if (r0 < 0 || nr < 0 || r0 + nr > q->n_pad)
        return pack_fail(l, err, "row range outside the packed weight");
    if (q->tiled) {
        if (!qk_int4_tileable(q) || r0 % QK_QROWS || nr % QK_QROWS)
            return pack_fail(l, err, "tiled INT4 layout: rows not in whole groups of 4, or not tileable");
        const int64_t row_words = what == QC_QW_WEIGHT ? q->k_pad / 8 : q->ngroups;
        const int64_t unit = what == QC_QW_WEIGHT ? 128 : 1024 / q->group;
        int rc = QC_OK;
        if (what == QC_QW_WEIGHT)
            int4_w_rows(l, q, r0, nr, dst);
        else
            rc = int4_s_rows(l, q, r0, nr, dst, err);
        if (!rc && what != QC_QW_WEIGHT && int4_tile_slab(dst, nr, row_words, unit, q->s16 ? 2 : 4)) /* (codes: in place) */
            rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory packing %s", l->name);
        return rc;
    }
    if (what == QC_QW_WEIGHT) {
        switch (q->kind) {
        case QK_QW_FP8: fp8_w_rows(l, q, r0, nr, dst); break;
        case QK_QW_INT4: int4_w_rows(l, q, r0, nr, dst); break;
        case QK_QW_BF16: bf16_w_rows(l, q, r0, nr, dst); break;
        default: fp4_w_rows(l, q, r0, nr, dst); break;
        }
        return QC_OK;
    }
    switch (q->kind) {
    case QK_QW_FP8: /* (small: one scale per block, row or tensor) */
        if (r0 != 0 || nr != q->n_pad)
            return pack_fail(l, err, "FP8 scales are packed whole");
        fp8_scales(l, q, dst);
        return qc_linear_check_scales(l, 0, l->n, err);
    case QK_QW_INT4: return int4_s_rows(l, q, r0, nr, dst, err);
    case QK_QW_BF16: return QC_OK;
    default: return fp4_s_rows(l, q, r0, nr, dst, err);
    }
}

int qc_qweight_pack(const qc_linear *l, qk_qweight *q, qc_err *err) { return qc_qweight_pack_tiled(l, q, 0, err); }

int qc_qweight_pack_tiled(const qc_linear *l, qk_qweight *q, int tile, qc_err *err)
{
    int rc = qc_qweight_plan(l, q, err);
    if (rc)
        return rc;
    if (tile)
        qc_qweight_tile(q);
    q->w = q->w_bytes ? qc_malloc(q->w_bytes, err, l->name) : NULL;
    q->s = q->s_bytes ? qc_malloc(q->s_bytes, err, l->name) : NULL;
    if ((q->w_bytes && !q->w) || (q->s_bytes && !q->s))
        rc = err ? err->code : QC_EXIT_RUNTIME;
    if (!rc)
        rc = qc_qweight_pack_rows(l, q, QC_QW_WEIGHT, 0, q->n_pad, q->w, err);
    if (!rc && q->s_bytes)
        rc = qc_qweight_pack_rows(l, q, QC_QW_SCALES, 0, q->n_pad, q->s, err);
    if (rc)
        qc_qweight_free_host(q);
    return rc;
}

static float e2m1_f32(uint8_t c)
{
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    return (c & 8u) ? -mag[c & 7u] : mag[c & 7u];
}

void qc_qweight_unpack_rows(const qk_qweight *q, int64_t row0, int64_t nrows, float *out)
{
    const int64_t K = q->k, kw = q->k_pad / 8;
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t n = row0 + r;
        float *o = out + r * K;
        switch (q->kind) {
        case QK_QW_FP8: {
            const uint8_t *w = (const uint8_t *)q->w + n * q->k_pad;
            const float *s = (const float *)q->s + (n / q->blk_n) * q->nkb;
            for (int64_t k = 0; k < K; k++) o[k] = qc_e4m3_to_f32(w[k]) * s[k / q->blk_k];
            break;
        }
        case QK_QW_INT4: {
            const uint32_t *w = (const uint32_t *)q->w;
            const size_t su = q->tiled ? (size_t)(1024 / q->group) : 1;
            for (int64_t p = 0; p < q->k_pad; p++) {
                int64_t k = q->perm ? q->perm[p] : p;
                if (k < 0 || k >= K)
                    continue;
                const size_t g = (size_t)(q->perm ? q->perm[q->k_pad + p / 32] : p / q->group);
                uint32_t m = qk_int4_sword_at(q->s, qk_int4_tile_index(q->tiled, (size_t)n, g, (size_t)q->ngroups, su), q->s16);
                float s = q->scale_f16 ? qc_f16_to_f32((uint16_t)m) : qc_bf16_to_f32((uint16_t)m);
                uint32_t word = w[qk_int4_tile_index(q->tiled, (size_t)n, (size_t)(p / 8), (size_t)kw, 128)];
                int32_t qv = (int32_t)((word >> (4 * (p % 8))) & 15u);
                o[k] = s * (float)(qv - (int32_t)(m >> 16 & 255u));
            }
            break;
        }
        case QK_QW_BF16: {
            const uint16_t *w = (const uint16_t *)q->w + n * q->k_pad;
            for (int64_t k = 0; k < K; k++) o[k] = qc_bf16_to_f32(w[k]);
            break;
        }
        default: {
            const bool mx = q->kind == QK_QW_MXFP4;
            const int64_t bs = mx ? 32 : 16, nb = q->k_pad / bs;
            const uint32_t *w = (const uint32_t *)q->w + n * kw;
            const uint8_t *s = (const uint8_t *)q->s + n * nb;
            for (int64_t k = 0; k < K; k++) {
                uint8_t sc = s[k / bs];
                float bsv = mx ? (sc == 0xFF ? NAN : ldexpf(1.0f, (int)sc - 127)) : qc_e4m3_to_f32(sc);
                o[k] = e2m1_f32(fp4_unshuffle(w[k / 8], (int)(k % 8))) * (bsv * q->gmul);
            }
            break;
        }
        }
    }
}

#ifdef QC_HAVE_CUDA

void qc_qweight_free_dev(qk_qweight *d)
{
    if (d->w)
        cudaFree(d->w);
    if (d->s)
        cudaFree(d->s);
    if (d->perm)
        cudaFree(d->perm);
    d->w = d->s = NULL;
    d->perm = NULL;
}

static int up1(void **dst, const void *src, size_t n, const char *name, qc_err *err)
{
    *dst = NULL;
    if (!n)
        return QC_OK;
    cudaError_t e = cudaMalloc(dst, n);
    if (e == cudaSuccess)
        e = cudaMemcpy(*dst, src, n, cudaMemcpyHostToDevice);
    if (e != cudaSuccess)
        return qc_err_set(err, QC_EXIT_RUNTIME, "%s: uploading %zu bytes: %s", name, n,
                          cudaGetErrorString(e));
    return QC_OK;
}

int qc_qweight_upload(const qk_qweight *h, qk_qweight *d, qc_err *err)
{
    *d = *h;
    d->w = d->s = NULL;
    d->perm = NULL;
    void *p = NULL;
    int rc = up1(&d->w, h->w, h->w_bytes, "quantized weight", err);
    if (!rc)
        rc = up1(&d->s, h->s, h->s_bytes, "quantized weight scales", err);
    if (!rc) {
        rc = up1(&p, h->perm, h->perm_bytes, "quantized weight g_idx permutation", err);
        d->perm = p;
    }
    if (rc)
        qc_qweight_free_dev(d);
    return rc;
}

int qc_linear_to_qweight(const qc_linear *l, qk_qweight *dev, qc_err *err)
{
    qk_qweight h;
    int rc = qc_qweight_pack(l, &h, err);
    if (rc)
        return rc;
    rc = qc_qweight_upload(&h, dev, err);
    qc_qweight_free_host(&h);
    return rc;
}

#endif

void qc_qweight_plan_random(qk_qweight *q, int kind, int n, int k)
{
    memset(q, 0, sizeof *q);
    q->kind = kind;
    q->n = n;
    q->k = k;
    q->n_pad = (n + QK_QROWS - 1) / QK_QROWS * QK_QROWS;
    q->k_pad = (k + 31) / 32 * 32;
    const size_t np = (size_t)q->n_pad, kp = (size_t)q->k_pad;
    switch (kind) {
    case QK_QW_FP8:
        q->blk_n = q->blk_k = 128;
        q->nkb = (q->k_pad + 127) / 128;
        q->w_bytes = np * kp;
        q->s_bytes = (np + 127) / 128 * (size_t)q->nkb * 4;
        break;
    case QK_QW_INT4:
        q->group = 128;
        q->ngroups = (q->k_pad + 127) / 128;
        q->w_bytes = np * kp / 2;
        q->s_bytes = np * (size_t)q->ngroups * 4;
        break;
    case QK_QW_NVFP4:
    case QK_QW_MXFP4:
        q->w_bytes = np * kp / 2;
        q->s_bytes = np * kp / (kind == QK_QW_MXFP4 ? 32 : 16);
        break;
    default:
        q->kind = QK_QW_BF16;
        q->w_bytes = np * kp * 2;
        break;
    }
}
