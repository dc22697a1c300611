/* dequant.c — exact dequantization of every weight format of
 * checkpoint-formats.md (see dequant.h for the order of the scale products)
 * and the tile kernel of the CPU matmul.
 *
 * Multi-byte values are read with memcpy: safetensors data regions start at
 * any byte offset, so a mapped I32/BF16/F32 tensor need not be aligned. */
#include "dequant.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- scalar decoders ------------------------------------------------------ */

static const float e2m1_mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

float qc_e2m1_to_f32(uint8_t code)
{
    float v = e2m1_mag[code & 7u];
    return (code & 8u) ? -v : v;
}

float qc_e8m0_to_f32(uint8_t code)
{
    /* E8M0: exponent only, bias 127, no sign; 0xFF is NaN. 2^-127 is a
     * float32 subnormal and still exact. */
    return code == 0xFFu ? NAN : ldexpf(1.0f, (int)code - 127);
}

static float e5m2_to_f32(uint8_t b) { return qc_f16_to_f32((uint16_t)(b << 8)); }

/* 256-entry tables for the 8-bit float codes, built once. */
static float lut_e4m3[256], lut_e5m2[256];
static pthread_once_t lut_once = PTHREAD_ONCE_INIT;
static void lut_build(void)
{
    for (int i = 0; i < 256; i++) {
        lut_e4m3[i] = qc_e4m3_to_f32((uint8_t)i);
        lut_e5m2[i] = e5m2_to_f32((uint8_t)i);
    }
}
static void lut_init(void) { pthread_once(&lut_once, lut_build); }

static inline uint8_t ld_u8(const void *base, int64_t i) { return ((const uint8_t *)base)[i]; }

/* Inline twins of util.c's converters (same results) for the inner loops. */
static inline float bf16_f32(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline float f16_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        float v = (float)m * 0x1.0p-24f; /* subnormal or zero: exact */
        return sign ? -v : v;
    }
    if (e == 31)
        u = sign | 0x7f800000u | (m << 13);
    else
        u = sign | ((e + 112u) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float qc_tensor_get_f32(const qc_tensor *t, int64_t i)
{
    const void *d = t->data;
    switch (t->dtype) {
    case QC_DT_BF16: return qc_bf16_to_f32(qc_ld_u16(d, i));
    case QC_DT_F16: return qc_f16_to_f32(qc_ld_u16(d, i));
    case QC_DT_F32: {
        uint32_t u = qc_ld_u32(d, i);
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case QC_DT_F64: {
        uint64_t u = qc_ld_u64(d, i);
        double f;
        memcpy(&f, &u, 8);
        return (float)f;
    }
    case QC_DT_F8_E4M3: return qc_e4m3_to_f32(ld_u8(d, i));
    case QC_DT_F8_E5M2: return e5m2_to_f32(ld_u8(d, i));
    case QC_DT_F8_E8M0: return qc_e8m0_to_f32(ld_u8(d, i));
    case QC_DT_BOOL:
    case QC_DT_U8: return (float)ld_u8(d, i);
    case QC_DT_I8: return (float)(int8_t)ld_u8(d, i);
    case QC_DT_U16: return (float)qc_ld_u16(d, i);
    case QC_DT_I16: return (float)(int16_t)qc_ld_u16(d, i);
    case QC_DT_U32: return (float)qc_ld_u32(d, i);
    case QC_DT_I32: return (float)(int32_t)qc_ld_u32(d, i);
    case QC_DT_U64: return (float)qc_ld_u64(d, i);
    case QC_DT_I64: return (float)(int64_t)qc_ld_u64(d, i);
    default: return NAN;
    }
}

/* Element i of an integer tensor (g_idx, unpacked zero points). */
static int64_t tensor_get_i64(const qc_tensor *t, int64_t i)
{
    const void *d = t->data;
    switch (t->dtype) {
    case QC_DT_U8: return ld_u8(d, i);
    case QC_DT_I8: return (int8_t)ld_u8(d, i);
    case QC_DT_U16: return qc_ld_u16(d, i);
    case QC_DT_I16: return (int16_t)qc_ld_u16(d, i);
    case QC_DT_U32: return qc_ld_u32(d, i);
    case QC_DT_I32: return (int32_t)qc_ld_u32(d, i);
    case QC_DT_U64: return (int64_t)qc_ld_u64(d, i);
    case QC_DT_I64: return (int64_t)qc_ld_u64(d, i);
    default: return -1;
    }
}

/* dst[j] = t[off + j] for j < n, with the dtype switch hoisted out of the loop. */
static void load_f32_run(const qc_tensor *t, int64_t off, int64_t n, float *dst)
{
    const unsigned char *d = t->data;
    switch (t->dtype) {
    case QC_DT_F32: memcpy(dst, d + 4 * off, (size_t)n * 4); return;
    case QC_DT_BF16:
        for (int64_t j = 0; j < n; j++) dst[j] = bf16_f32(qc_ld_u16(d, off + j));
        return;
    case QC_DT_F16:
        for (int64_t j = 0; j < n; j++) dst[j] = f16_f32(qc_ld_u16(d, off + j));
        return;
    case QC_DT_F8_E4M3:
        for (int64_t j = 0; j < n; j++) dst[j] = lut_e4m3[d[off + j]];
        return;
    case QC_DT_F8_E5M2:
        for (int64_t j = 0; j < n; j++) dst[j] = lut_e5m2[d[off + j]];
        return;
    default:
        for (int64_t j = 0; j < n; j++) dst[j] = qc_tensor_get_f32(t, off + j);
        return;
    }
}

/* Element i of a scale tensor, fast for the usual dtypes (tables ready). */
static inline float scale_at(const qc_tensor *t, int64_t i)
{
    switch (t->dtype) {
    case QC_DT_BF16: return bf16_f32(qc_ld_u16(t->data, i));
    case QC_DT_F16: return f16_f32(qc_ld_u16(t->data, i));
    case QC_DT_F8_E4M3: return lut_e4m3[ld_u8(t->data, i)];
    default: return qc_tensor_get_f32(t, i);
    }
}

static void fill_nan(float *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Group size along K of the int formats; <= 0 means one group per row. */
static int64_t int_group(const qc_linear *l) { return l->group_size > 0 ? l->group_size : l->k; }

/* Group of input k: g_idx[k] when present, else k / G. */
static inline int64_t group_of(const qc_tensor *g_idx, int64_t k, int64_t G)
{
    return g_idx ? tensor_get_i64(g_idx, k) : k / G;
}

/* ---- per-format row dequantizers (out: nr x K) ----------------------------- */

static void dq_float(const qc_linear *l, int64_t row0, int64_t nr, float *out)
{
    for (int64_t r = 0; r < nr; r++)
        load_f32_run(l->weight, (row0 + r) * l->k, l->k, out + r * l->k);
}

/* fp8-block / -tensor / -channel: e4m3(w) * scale, scale chosen per element. */
static void dq_fp8(const qc_linear *l, int64_t row0, int64_t nr, float *out)
{
    const int64_t K = l->k;
    const float *lut = l->weight->dtype == QC_DT_F8_E5M2 ? lut_e5m2 : lut_e4m3;
    const uint8_t *w = l->weight->data;
    for (int64_t r = 0; r < nr; r++) {
        int64_t n = row0 + r;
        const uint8_t *wr = w + n * K;
        float *o = out + r * K;
        if (l->format == QC_FMT_FP8_BLOCK) {
            int64_t bk = l->block_k, kb_count = ceil_div(K, bk);
            int64_t srow = (n / l->block_n) * kb_count;
            for (int64_t kb = 0; kb < kb_count; kb++) {
                float s = scale_at(l->scale, srow + kb);
                int64_t k1 = (kb + 1) * bk < K ? (kb + 1) * bk : K;
                for (int64_t k = kb * bk; k < k1; k++) o[k] = lut[wr[k]] * s;
            }
        } else {
            float s = scale_at(l->scale, l->format == QC_FMT_FP8_CHANNEL ? n : 0);
            for (int64_t k = 0; k < K; k++) o[k] = lut[wr[k]] * s;
        }
    }
}

/* Per-row scale and zero of every group, so g_idx lookups cost one load. */
typedef struct grp_row {
    float *s;
    int32_t *z;
    int64_t ng;
} grp_row;

static bool grp_alloc(grp_row *gr, int64_t ng)
{
    gr->ng = ng;
    gr->s = malloc((size_t)ng * sizeof *gr->s);
    gr->z = malloc((size_t)ng * sizeof *gr->z);
    return gr->s && gr->z;
}
static void grp_free(grp_row *gr)
{
    free(gr->s);
    free(gr->z);
}

/* val[q] = s * (float)(q - z) for every code q of `bits` bits: the same single
 * rounding as the formula, looked up instead of recomputed per element. */
static void int_lut(float s, int32_t z, int bits, float *val)
{
    for (int32_t q = 0; q < (1 << bits); q++) val[q] = s * (float)(q - z);
}

/* Row n of a format whose codes are read by code_at(k) and whose groups are
 * described by gr: the general path (g_idx, or groups not on word bounds). */
#define DQ_ROW_GENERIC(code_at)                                                                    \
    do {                                                                                           \
        for (int64_t k = 0; k < K; k++) {                                                          \
            int64_t g = group_of(l->g_idx, k, G);                                                  \
            if (g < 0 || g >= gr.ng) {                                                             \
                o[k] = NAN;                                                                        \
                continue;                                                                          \
            }                                                                                      \
            int32_t q = (int32_t)(code_at);                                                        \
            o[k] = gr.s[g] * (float)(q - gr.z[g]);                                                 \
        }                                                                                          \
    } while (0)

/* gptq: qweight [K/pf, N], field j of word (i, n) is q(k = pf*i + j, n);
 * qzeros [G, N/pf] packed along N; z = field + zero_bias (v1 stores z - 1). */
static void dq_gptq(const qc_linear *l, int64_t row0, int64_t nr, float *out)
{
    const int64_t N = l->n, K = l->k, G = int_group(l);
    const int bits = l->bits, pf = 32 / bits;
    const uint32_t mask = (1u << bits) - 1u;
    const int64_t zw = l->zeros ? l->zeros->shape[1] : 0;
    const void *qw = l->weight->data;
    grp_row gr;
    if (!grp_alloc(&gr, l->scale->shape[0])) {
        grp_free(&gr);
        fill_nan(out, nr * K);
        return;
    }
    const bool fast = !l->g_idx && G % pf == 0 && K % pf == 0 && bits <= 4;
    float val[16];
    for (int64_t r = 0; r < nr; r++) {
        const int64_t n = row0 + r;
        float *o = out + r * K;
        for (int64_t g = 0; g < gr.ng; g++) {
            gr.s[g] = scale_at(l->scale, g * N + n);
            gr.z[g] = l->zeros ? (int32_t)((qc_ld_u32(l->zeros->data, g * zw + n / pf) >>
                                            (bits * (n % pf))) & mask) + l->zero_bias
                               : 1 << (bits - 1); /* symmetric without stored zeros */
        }
        if (fast) {
            for (int64_t g = 0; g * G < K; g++) {
                int_lut(gr.s[g], gr.z[g], bits, val);
                int64_t i1 = ((g + 1) * G < K ? (g + 1) * G : K) / pf;
                for (int64_t i = g * G / pf; i < i1; i++) {
                    uint32_t w = qc_ld_u32(qw, i * N + n);
                    for (int j = 0; j < pf; j++) o[i * pf + j] = val[(w >> (bits * j)) & mask];
                }
            }
        } else {
            DQ_ROW_GENERIC((qc_ld_u32(qw, (k / pf) * N + n) >> (bits * (k % pf))) & mask);
        }
    }
    grp_free(&gr);
}

/* AutoAWQ gemm: nibble slot s of a word holds column 8c + order[s],
 * order = [0,2,4,6,1,3,5,7]; awq_slot is its inverse. */
static const int awq_slot[8] = {0, 4, 1, 5, 2, 6, 3, 7};

/* awq: qweight [K, N/8], qzeros [G, N/8] (raw zeros), scales [G, N]. The
 * rows of one word column are done together so each word is loaded once. */
static void dq_awq(const qc_linear *l, int64_t row0, int64_t nr, float *out)
{
    const int64_t N = l->n, K = l->k, G = int_group(l), nw = N / 8;
    const void *qw = l->weight->data;
    float val[8][16];
    for (int64_t c = row0 / 8; c * 8 < row0 + nr; c++) {
        int64_t n0 = c * 8 > row0 ? c * 8 : row0;
        int64_t n1 = c * 8 + 8 < row0 + nr ? c * 8 + 8 : row0 + nr;
        int cnt = (int)(n1 - n0), sh[8];
        float *o[8];
        for (int t = 0; t < cnt; t++) {
            sh[t] = 4 * awq_slot[(n0 + t) % 8];
            o[t] = out + (n0 + t - row0) * K;
        }
        for (int64_t g = 0; g * G < K; g++) {
            uint32_t zword = qc_ld_u32(l->zeros->data, g * nw + c);
            for (int t = 0; t < cnt; t++)
                int_lut(scale_at(l->scale, g * N + n0 + t), (int32_t)((zword >> sh[t]) & 15u), 4, val[t]);
            int64_t k1 = (g + 1) * G < K ? (g + 1) * G : K;
            for (int64_t k = g * G; k < k1; k++) {
                uint32_t w = qc_ld_u32(qw, k * nw + c);
                for (int t = 0; t < cnt; t++) o[t][k] = val[t][(w >> sh[t]) & 15u];
            }
        }
    }
}

/* True when a ct-int weight_zero_point is packed along N ([ceil(N/pf), G]
 * int32 words, stored + 2^(bits-1)); otherwise it holds one signed zero point
 * per [n, g] (older compressed-tensors files). */
static bool ct_zeros_packed(const qc_linear *l)
{
    const qc_tensor *z = l->zeros;
    int pf = 32 / l->bits;
    return (z->dtype == QC_DT_I32 || z->dtype == QC_DT_U32) && z->ndim == 2 &&
           z->shape[0] == ceil_div(l->n, pf) && (z->shape[0] != l->n || l->n == 1);
}

/* ct-int (pack-quantized): weight_packed [N, K/pf], element k = word k/pf,
 * field k%pf, stored q + 2^(bits-1); W = s * (q - zp). The offsets cancel:
 * q - zp = stored_q - stored_zp. */
static void dq_ct_int(const qc_linear *l, int64_t row0, int64_t nr, float *out)
{
    const int64_t K = l->k, G = int_group(l);
    const int bits = l->bits, pf = 32 / bits;
    const uint32_t mask = (1u << bits) - 1u;
    const int32_t off = 1 << (bits - 1);
    const int64_t kw = ceil_div(K, pf);
    const bool packed = l->zeros && ct_zeros_packed(l);
    grp_row gr;
    if (!grp_alloc(&gr, l->scale->shape[1])) {
        grp_free(&gr);
        fill_nan(out, nr * K);
        return;
    }
    const bool fast = !l->g_idx && G % pf == 0 && K % pf == 0 && bits <= 4;
    float val[16];
    for (int64_t r = 0; r < nr; r++) {
        const int64_t n = row0 + r;
        const unsigned char *wr = (const unsigned char *)l->weight->data + 4 * n * kw;
        float *o = out + r * K;
        for (int64_t g = 0; g < gr.ng; g++) {
            gr.s[g] = scale_at(l->scale, n * gr.ng + g);
            if (!l->zeros)
                gr.z[g] = off;
            else if (packed)
                gr.z[g] = (int32_t)((qc_ld_u32(l->zeros->data, (n / pf) * gr.ng + g) >> (bits * (n % pf))) &
                                    mask);
            else
                gr.z[g] = (int32_t)tensor_get_i64(l->zeros, n * gr.ng + g) + off;
        }
        if (fast) {
            for (int64_t g = 0; g * G < K; g++) {
                int_lut(gr.s[g], gr.z[g], bits, val);
                int64_t i1 = ((g + 1) * G < K ? (g + 1) * G : K) / pf;
                for (int64_t i = g * G / pf; i < i1; i++) {
                    uint32_t w = qc_ld_u32(wr, i);
                    for (int j = 0; j < pf; j++) o[i * pf + j] = val[(w >> (bits * j)) & mask];
                }
            }
        } else {
            DQ_ROW_GENERIC((qc_ld_u32(wr, k / pf) >> (bits * (k % pf))) & mask);
        }
    }
    grp_free(&gr);
}

/* nvfp4-ct, nvfp4-modelopt, mxfp4-ct: byte b of a row holds elements 2b (low
 * nibble) and 2b+1 (high nibble), E2M1 codes, one scale per block of 16 / 32.
 * K is even (validated) and blocks are even, so bytes never straddle blocks. */
static void dq_fp4(const qc_linear *l, int64_t row0, int64_t nr, float *out)
{
    const int64_t K = l->k, kb2 = K / 2;
    const bool mx = l->format == QC_FMT_MXFP4_CT;
    const int64_t bs = mx ? 32 : 16, nb = ceil_div(K, bs);
    const float gs = mx ? 1.0f : qc_tensor_get_f32(l->global_scale, 0);
    const bool scale_is_code = l->scale->dtype == QC_DT_U8 || l->scale->dtype == QC_DT_F8_E8M0;
    float val[16];
    for (int64_t r = 0; r < nr; r++) {
        const int64_t n = row0 + r;
        const uint8_t *wr = (const uint8_t *)l->weight->data + n * kb2;
        float *o = out + r * K;
        for (int64_t b = 0; b < nb; b++) {
            float s;
            if (mx)
                s = scale_is_code ? qc_e8m0_to_f32(ld_u8(l->scale->data, n * nb + b))
                                  : scale_at(l->scale, n * nb + b);
            else if (l->format == QC_FMT_NVFP4_CT)
                s = scale_at(l->scale, n * nb + b) / gs; /* global is a divisor */
            else
                s = scale_at(l->scale, n * nb + b) * gs; /* weight_scale_2 multiplies */
            for (int c = 0; c < 16; c++) val[c] = qc_e2m1_to_f32((uint8_t)c) * s;
            int64_t j1 = ((b + 1) * bs < K ? (b + 1) * bs : K) / 2;
            for (int64_t j = b * bs / 2; j < j1; j++) {
                uint8_t byte = wr[j];
                o[2 * j] = val[byte & 15u];
                o[2 * j + 1] = val[byte >> 4];
            }
        }
    }
}

void qc_linear_dequant_rows(const qc_linear *l, int64_t row0, int64_t nrows, float *out)
{
    lut_init();
    switch (l->format) {
    case QC_FMT_BF16:
    case QC_FMT_F16:
    case QC_FMT_F32: dq_float(l, row0, nrows, out); return;
    case QC_FMT_FP8_BLOCK:
    case QC_FMT_FP8_TENSOR:
    case QC_FMT_FP8_CHANNEL: dq_fp8(l, row0, nrows, out); return;
    case QC_FMT_GPTQ: dq_gptq(l, row0, nrows, out); return;
    case QC_FMT_AWQ: dq_awq(l, row0, nrows, out); return;
    case QC_FMT_CT_INT: dq_ct_int(l, row0, nrows, out); return;
    case QC_FMT_NVFP4_CT:
    case QC_FMT_NVFP4_MODELOPT:
    case QC_FMT_MXFP4_CT: dq_fp4(l, row0, nrows, out); return;
    default: fill_nan(out, nrows * l->k); return;
    }
}

void qc_linear_dequant(const qc_linear *l, float *out) { qc_linear_dequant_rows(l, 0, l->n, out); }

/* ---- validation ----------------------------------------------------------- */

static int vfail(const qc_linear *l, qc_err *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int vfail(const qc_linear *l, qc_err *err, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s (%s): %s", l->name[0] ? l->name : "linear",
                      qc_format_name(l->format), msg);
}

static const char *tname(const qc_tensor *t) { return t && t->name ? t->name : "?"; }

static bool dt_float(qc_dtype d)
{
    return d == QC_DT_BF16 || d == QC_DT_F16 || d == QC_DT_F32 || d == QC_DT_F64;
}
static bool dt_int32(qc_dtype d) { return d == QC_DT_I32 || d == QC_DT_U32; }
static bool dt_int(qc_dtype d)
{
    return d == QC_DT_I8 || d == QC_DT_U8 || d == QC_DT_I16 || d == QC_DT_U16 || d == QC_DT_I32 ||
           d == QC_DT_U32 || d == QC_DT_I64 || d == QC_DT_U64;
}

/* Present, data covering numel elements of its dtype. */
static int vpresent(const qc_linear *l, const qc_tensor *t, const char *role, qc_err *err)
{
    if (!t)
        return vfail(l, err, "missing %s tensor", role);
    size_t es = qc_dtype_size(t->dtype);
    if (!es)
        return vfail(l, err, "%s %s has unusable dtype %s", role, tname(t), qc_dtype_name(t->dtype));
    int64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0)
            return vfail(l, err, "%s %s has a negative dimension", role, tname(t));
        numel *= t->shape[i];
    }
    if (numel != t->numel || !t->data || t->nbytes < (size_t)numel * es)
        return vfail(l, err, "%s %s: data does not cover its shape", role, tname(t));
    return QC_OK;
}

/* t is exactly [rows, cols]. */
static int vshape2(const qc_linear *l, const qc_tensor *t, const char *role, int64_t rows,
                   int64_t cols, qc_err *err)
{
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        char got[96];
        qc_tensor_shape_str(t, got, sizeof got);
        return vfail(l, err, "%s %s has shape %s, expected [%lld, %lld]", role, tname(t), got,
                     (long long)rows, (long long)cols);
    }
    return QC_OK;
}

/* Every g_idx value lies in [0, ng). */
static int vgidx(const qc_linear *l, int64_t ng, qc_err *err)
{
    const qc_tensor *g = l->g_idx;
    int rc = vpresent(l, g, "g_idx", err);
    if (rc)
        return rc;
    if (!dt_int(g->dtype) || g->numel != l->k)
        return vfail(l, err, "g_idx %s must be an integer vector of K = %lld entries", tname(g),
                     (long long)l->k);
    for (int64_t k = 0; k < l->k; k++) {
        int64_t v = tensor_get_i64(g, k);
        if (v < 0 || v >= ng)
            return vfail(l, err, "g_idx %s[%lld] = %lld is outside the %lld groups", tname(g),
                         (long long)k, (long long)v, (long long)ng);
    }
    return QC_OK;
}

/* The INT4 group count ng of scale tensor s: every g_idx entry inside it
 * (act order) or, without g_idx, exactly ceil(K / group). */
static int vgroups(const qc_linear *l, const qc_tensor *s, int64_t ng, qc_err *err)
{
    if (l->g_idx)
        return vgidx(l, ng, err);
    if (ng != ceil_div(l->k, int_group(l)))
        return vfail(l, err, "%s has %lld groups, group size %lld implies %lld", tname(s), (long long)ng,
                     (long long)int_group(l), (long long)ceil_div(l->k, int_group(l)));
    return QC_OK;
}

/* ct-int's weight_shape, when there, states [N, K] (integers). */
static int vweight_shape(const qc_linear *l, qc_err *err)
{
    const qc_tensor *t = l->weight_shape;
    if (!t)
        return QC_OK;
    int rc = vpresent(l, t, "weight_shape", err);
    if (rc)
        return rc;
    if (!dt_int(t->dtype) || t->numel != 2)
        return vfail(l, err, "weight_shape %s must be two integers [N, K]", tname(t));
    const int64_t n = tensor_get_i64(t, 0), k = tensor_get_i64(t, 1);
    if (n != l->n || k != l->k)
        return vfail(l, err, "weight_shape %s says [%lld, %lld], but the module is [%lld, %lld]", tname(t),
                     (long long)n, (long long)k, (long long)l->n, (long long)l->k);
    return QC_OK;
}

#define VTRY(x)                                                                                    \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
    } while (0)

static int v_int_bits(const qc_linear *l, qc_err *err)
{
    if (l->bits != 2 && l->bits != 4 && l->bits != 8)
        return vfail(l, err, "unsupported bit width %d", l->bits);
    return QC_OK;
}

int qc_linear_validate(const qc_linear *l, qc_err *err)
{
    const int64_t N = l->n, K = l->k;
    if (N <= 0 || K <= 0)
        return vfail(l, err, "bad dimensions N=%lld K=%lld", (long long)N, (long long)K);
    VTRY(vpresent(l, l->weight, "weight", err));
    const qc_tensor *w = l->weight, *s = l->scale;
    switch (l->format) {
    case QC_FMT_BF16:
    case QC_FMT_F16:
    case QC_FMT_F32:
        if (!dt_float(w->dtype))
            return vfail(l, err, "weight %s has dtype %s", tname(w), qc_dtype_name(w->dtype));
        return vshape2(l, w, "weight", N, K, err);
    case QC_FMT_FP8_BLOCK:
    case QC_FMT_FP8_TENSOR:
    case QC_FMT_FP8_CHANNEL:
        if (w->dtype != QC_DT_F8_E4M3 && w->dtype != QC_DT_F8_E5M2)
            return vfail(l, err, "weight %s has dtype %s, expected F8_E4M3", tname(w),
                         qc_dtype_name(w->dtype));
        VTRY(vshape2(l, w, "weight", N, K, err));
        VTRY(vpresent(l, s, "weight scale", err));
        if (!dt_float(s->dtype))
            return vfail(l, err, "scale %s has dtype %s", tname(s), qc_dtype_name(s->dtype));
        if (l->format == QC_FMT_FP8_BLOCK) {
            if (l->block_n <= 0 || l->block_k <= 0)
                return vfail(l, err, "block size %dx%d", l->block_n, l->block_k);
            return vshape2(l, s, "weight_scale_inv", ceil_div(N, l->block_n),
                           ceil_div(K, l->block_k), err);
        }
        if (l->format == QC_FMT_FP8_TENSOR) {
            if (s->numel != 1)
                return vfail(l, err, "per-tensor scale %s has %lld elements", tname(s),
                             (long long)s->numel);
            return QC_OK;
        }
        if (s->numel != N || (s->ndim == 2 && s->shape[1] != 1) || s->ndim > 2)
            return vfail(l, err, "per-channel scale %s must be [%lld, 1]", tname(s), (long long)N);
        return QC_OK;
    case QC_FMT_GPTQ: {
        VTRY(v_int_bits(l, err));
        int pf = 32 / l->bits;
        if (!dt_int32(w->dtype))
            return vfail(l, err, "qweight %s has dtype %s, expected I32", tname(w),
                         qc_dtype_name(w->dtype));
        VTRY(vshape2(l, w, "qweight", ceil_div(K, pf), N, err));
        VTRY(vpresent(l, s, "scales", err));
        if (!dt_float(s->dtype) || s->ndim != 2)
            return vfail(l, err, "scales %s must be a 2-D float tensor", tname(s));
        int64_t ng = s->shape[0];
        VTRY(vgroups(l, s, ng, err));
        VTRY(vshape2(l, s, "scales", ng, N, err));
        if (l->zeros) {
            VTRY(vpresent(l, l->zeros, "qzeros", err));
            if (!dt_int32(l->zeros->dtype))
                return vfail(l, err, "qzeros %s must be I32", tname(l->zeros));
            VTRY(vshape2(l, l->zeros, "qzeros", ng, ceil_div(N, pf), err));
        } else if (!l->symmetric) {
            return vfail(l, err, "asymmetric without qzeros");
        }
        return QC_OK;
    }
    case QC_FMT_AWQ: {
        if (l->bits != 4)
            return vfail(l, err, "AWQ needs 4 bits, got %d", l->bits);
        if (N % 8)
            return vfail(l, err, "N = %lld is not a multiple of 8", (long long)N);
        if (!dt_int32(w->dtype))
            return vfail(l, err, "qweight %s must be I32", tname(w));
        VTRY(vshape2(l, w, "qweight", K, N / 8, err));
        VTRY(vpresent(l, s, "scales", err));
        if (!dt_float(s->dtype))
            return vfail(l, err, "scales %s has dtype %s", tname(s), qc_dtype_name(s->dtype));
        int64_t ng = ceil_div(K, int_group(l));
        VTRY(vshape2(l, s, "scales", ng, N, err));
        VTRY(vpresent(l, l->zeros, "qzeros", err));
        if (!dt_int32(l->zeros->dtype))
            return vfail(l, err, "qzeros %s must be I32", tname(l->zeros));
        return vshape2(l, l->zeros, "qzeros", ng, N / 8, err);
    }
    case QC_FMT_CT_INT: {
        VTRY(v_int_bits(l, err));
        int pf = 32 / l->bits;
        if (!dt_int32(w->dtype))
            return vfail(l, err, "weight_packed %s must be I32", tname(w));
        VTRY(vshape2(l, w, "weight_packed", N, ceil_div(K, pf), err));
        VTRY(vpresent(l, s, "weight_scale", err));
        if (!dt_float(s->dtype) || s->ndim != 2)
            return vfail(l, err, "weight_scale %s must be a 2-D float tensor", tname(s));
        int64_t ng = s->shape[1];
        VTRY(vgroups(l, s, ng, err));
        VTRY(vshape2(l, s, "weight_scale", N, ng, err));
        if (l->zeros) {
            VTRY(vpresent(l, l->zeros, "weight_zero_point", err));
            if (!dt_int(l->zeros->dtype))
                return vfail(l, err, "weight_zero_point %s must be integer", tname(l->zeros));
            const qc_tensor *z = l->zeros;
            if (!ct_zeros_packed(l)) {
                if (z->ndim == 2 && z->shape[0] == ceil_div(N, pf) && z->shape[0] != N)
                    return vfail(l, err,
                                 "weight_zero_point %s has the packed shape but dtype %s: packed zero points are I32",
                                 tname(z), qc_dtype_name(z->dtype));
                VTRY(vshape2(l, z, "weight_zero_point", N, ng, err));
            }
        } else if (!l->symmetric) {
            return vfail(l, err, "asymmetric without weight_zero_point");
        }
        return vweight_shape(l, err);
    }
    case QC_FMT_NVFP4_CT:
    case QC_FMT_NVFP4_MODELOPT:
    case QC_FMT_MXFP4_CT: {
        bool mx = l->format == QC_FMT_MXFP4_CT;
        if (w->dtype != QC_DT_U8 && w->dtype != QC_DT_I8)
            return vfail(l, err, "packed weight %s must be U8", tname(w));
        if (K % 2)
            return vfail(l, err, "K = %lld is odd", (long long)K);
        VTRY(vshape2(l, w, "packed weight", N, K / 2, err));
        VTRY(vpresent(l, s, "weight_scale", err));
        VTRY(vshape2(l, s, "weight_scale", N, ceil_div(K, mx ? 32 : 16), err));
        if (mx) {
            if (s->dtype != QC_DT_U8 && s->dtype != QC_DT_F8_E8M0 && !dt_float(s->dtype))
                return vfail(l, err, "weight_scale %s has dtype %s, expected U8 (E8M0)",
                             tname(s), qc_dtype_name(s->dtype));
            return QC_OK;
        }
        if (s->dtype != QC_DT_F8_E4M3 && !dt_float(s->dtype))
            return vfail(l, err, "weight_scale %s has dtype %s, expected F8_E4M3", tname(s),
                         qc_dtype_name(s->dtype));
        const char *gname = l->format == QC_FMT_NVFP4_CT ? "weight_global_scale" : "weight_scale_2";
        VTRY(vpresent(l, l->global_scale, gname, err));
        if (l->global_scale->numel != 1 || !dt_float(l->global_scale->dtype))
            return vfail(l, err, "%s %s must be one float", gname, tname(l->global_scale));
        float g = qc_tensor_get_f32(l->global_scale, 0);
        if (!(g > 0.0f) || isinf(g))
            return vfail(l, err, "%s %s = %g is not a positive finite number", gname,
                         tname(l->global_scale), (double)g);
        if (l->format == QC_FMT_NVFP4_CT && isinf(1.0f / g)) /* a divisor: its reciprocal multiplies */
            return vfail(l, err, "%s %s = %g is too small: its reciprocal overflows", gname,
                         tname(l->global_scale), (double)g);
        return QC_OK;
    }
    default:
        return vfail(l, err, "unknown weight format %d", (int)l->format);
    }
}

/* Whether any of the n elements of w bytes at p has its exponent bits all
 * set (NaN or infinity, judged on the stored bits), 8 bytes at a time: lane
 * by lane, (x & E) + L carries into the lane's top bit H only when every bit
 * of E is set (E's top bit clear, L its lowest bit, so no carry leaves the
 * lane). E8M0 (exp8 true) has no sign bit: its NaN is the byte 0xFF, found
 * as a zero byte of ~x. A 27B NVFP4 file has 1.5 GB of E4M3 scales; a byte
 * loop that stopped at the first bad one cost its load ~0.28 s of 1 s on the
 * H100 host (BENCHMARKS.md, thirtieth session). */
static bool swar_any_nonfinite(const unsigned char *p, int64_t n, int w, uint64_t E, uint64_t L, uint64_t H,
                               bool exp8)
{
    const int64_t nb = n * w;
    uint64_t acc = 0;
    for (int64_t i = 0; i < nb; i += 8) {
        uint64_t x = 0;
        /* whole elements (w divides 8); zero padding passes both tests */
        memcpy(&x, p + i, (size_t)(nb - i < 8 ? nb - i : 8));
        if (exp8) {
            const uint64_t y = ~x;
            acc |= (y - 0x0101010101010101ull) & ~y & 0x8080808080808080ull;
        } else {
            acc |= ((x & E) + L) & H;
        }
    }
    return acc != 0;
}

int64_t qc_scale_first_nonfinite(const qc_tensor *t, int64_t off, int64_t n)
{
    const unsigned char *d = t->data;
    bool any;
    switch (t->dtype) {
    case QC_DT_F8_E4M3: any = swar_any_nonfinite(d + off, n, 1, 0x7f7f7f7f7f7f7f7full, 0x0101010101010101ull,
                                                 0x8080808080808080ull, false); break;
    case QC_DT_F8_E8M0:
    case QC_DT_U8: any = swar_any_nonfinite(d + off, n, 1, 0, 0, 0, true); break;
    case QC_DT_BF16: any = swar_any_nonfinite(d + 2 * off, n, 2, 0x7f807f807f807f80ull, 0x0080008000800080ull,
                                              0x8000800080008000ull, false); break;
    case QC_DT_F16: any = swar_any_nonfinite(d + 2 * off, n, 2, 0x7c007c007c007c00ull, 0x0400040004000400ull,
                                             0x8000800080008000ull, false); break;
    case QC_DT_F32: any = swar_any_nonfinite(d + 4 * off, n, 4, 0x7f8000007f800000ull, 0x0080000000800000ull,
                                             0x8000000080000000ull, false); break;
    default: any = true; /* F64: element by element below */
    }
    if (any) /* which one (rare: the file is refused) */
        for (int64_t i = off; i < off + n; i++)
            if (!isfinite(qc_tensor_get_f32(t, i)) || ((t->dtype == QC_DT_U8 || t->dtype == QC_DT_F8_E8M0) && d[i] == 0xffu))
                return i;
    return -1;
}

int qc_linear_check_scales(const qc_linear *l, int64_t r0, int64_t nr, qc_err *err)
{
    const qc_tensor *s = l->scale;
    if (r0 + nr > l->n) /* packed row ranges run into the padding rows */
        nr = l->n - r0;
    if (!s || nr <= 0)
        return QC_OK;
    int64_t bad = -1;
    switch (l->format) {
    case QC_FMT_FP8_BLOCK: { /* [ceil(N / bn), ceil(K / bk)]: the block rows of rows r0 .. */
        const int64_t sbk = ceil_div(l->k, l->block_k), b0 = r0 / l->block_n;
        bad = qc_scale_first_nonfinite(s, b0 * sbk, (ceil_div(r0 + nr, l->block_n) - b0) * sbk);
        break;
    }
    case QC_FMT_FP8_TENSOR: bad = qc_scale_first_nonfinite(s, 0, 1); break;
    case QC_FMT_FP8_CHANNEL: bad = qc_scale_first_nonfinite(s, r0, nr); break;
    case QC_FMT_GPTQ:
    case QC_FMT_AWQ: /* [groups, N]: columns r0 .. of every group */
        for (int64_t g = 0; g < s->shape[0] && bad < 0; g++) bad = qc_scale_first_nonfinite(s, g * l->n + r0, nr);
        break;
    case QC_FMT_CT_INT:
    case QC_FMT_NVFP4_CT:
    case QC_FMT_NVFP4_MODELOPT:
    case QC_FMT_MXFP4_CT: /* [N, groups] */
        bad = qc_scale_first_nonfinite(s, r0 * s->shape[1], nr * s->shape[1]);
        break;
    default: return QC_OK;
    }
    return bad < 0 ? QC_OK : qc_linear_scale_error(l, bad, err);
}

int qc_linear_scale_error(const qc_linear *l, int64_t element, qc_err *err)
{
    return vfail(l, err, "scale %s holds a non-finite value (NaN or infinity) at element %lld: the file is damaged",
                 tname(l->scale), (long long)element);
}

/* ---- matmul tile kernel --------------------------------------------------- */

/* Eight float lanes; on a CPU without AVX the compiler splits each operation
 * into two SSE halves with the same per-lane results. */
typedef float v8f __attribute__((vector_size(32)));

/* Up to 4 weight rows x 2 input rows per step. For each (w row, x row) pair:
 * lane j accumulates w[k]*x[k] for k = j mod 8 in increasing k, the lanes are
 * summed as ((0+1)+(2+3))+((4+5)+(6+7)), then the k tail is added in order.
 * Missing rows repeat the last real one and their results are dropped, so
 * every element goes through exactly the same operations wherever it falls. */
__attribute__((target_clones("avx2", "default"))) static void
dot_tile(const float *w, int64_t nr, int64_t ldw, const float *x, int64_t m, int64_t ldx,
         int64_t K, float *y, int64_t ldy)
{
    const int64_t k8 = K & ~(int64_t)7;
    for (int64_t i = 0; i < m; i += 2) {
        const float *xa = x + i * ldx;
        const float *xb = i + 1 < m ? xa + ldx : xa;
        for (int64_t r = 0; r < nr; r += 4) {
            const float *wr[4];
            for (int j = 0; j < 4; j++) wr[j] = w + (r + j < nr ? r + j : nr - 1) * ldw;
            v8f acc[4][2];
            memset(acc, 0, sizeof acc);
            for (int64_t k = 0; k < k8; k += 8) {
                v8f va, vb;
                memcpy(&va, xa + k, sizeof va);
                memcpy(&vb, xb + k, sizeof vb);
                for (int j = 0; j < 4; j++) {
                    v8f vw;
                    memcpy(&vw, wr[j] + k, sizeof vw);
                    acc[j][0] += vw * va;
                    acc[j][1] += vw * vb;
                }
            }
            for (int j = 0; j < 4 && r + j < nr; j++) {
                for (int b = 0; b < 2 && i + b < m; b++) {
                    v8f a = acc[j][b];
                    float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
                    const float *xv = b ? xb : xa;
                    for (int64_t k = k8; k < K; k++) s += wr[j][k] * xv[k];
                    y[(i + b) * ldy + r + j] = s;
                }
            }
        }
    }
}

int64_t qc_linear_tile_floats(const qc_linear *l, int64_t nrows) { return nrows * l->k; }

void qc_linear_matmul_rows(const qc_linear *l, const float *x, int64_t m, int64_t ldx,
                           int64_t row0, int64_t nrows, float *y, int64_t ldy, float *scratch)
{
    const float *w = scratch;
    const qc_tensor *wt = l->weight;
    /* F32 weights that happen to be aligned are read in place. */
    if (l->format == QC_FMT_F32 && wt->dtype == QC_DT_F32 && ((uintptr_t)wt->data & 3u) == 0)
        w = (const float *)wt->data + row0 * l->k;
    else
        qc_linear_dequant_rows(l, row0, nrows, scratch);
    dot_tile(w, nrows, l->k, x, m, ldx, l->k, y + row0, ldy);
}

void qc_linear_matmul(const qc_linear *l, const float *x, int64_t m, float *y)
{
    /* Tiles of about 64 KiB of dequantized weight stay in L2 while every input
     * row passes over them. */
    int64_t tn = (16384 / (l->k > 0 ? l->k : 1)) & ~(int64_t)3;
    if (tn < 4)
        tn = 4;
    if (tn > l->n)
        tn = l->n;
    float *scratch = malloc((size_t)(tn * l->k) * sizeof(float));
    if (!scratch) {
        fill_nan(y, m * l->n);
        return;
    }
    for (int64_t r0 = 0; r0 < l->n; r0 += tn) {
        int64_t nr = l->n - r0 < tn ? l->n - r0 : tn;
        qc_linear_matmul_rows(l, x, m, l->k, r0, nr, y, l->n, scratch);
    }
    free(scratch);
}
