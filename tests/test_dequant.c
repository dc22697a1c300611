/* test_dequant.c — exact dequantization of every weight format.
 *
 * Each format is checked against an independent "quantize, then pack" written
 * here straight from the formulas of checkpoint-formats.md (and against
 * hand-computed words), on awkward shapes: partial fp8 blocks, N not a
 * multiple of 64, K not a multiple of 128, groups 32/64/128, g_idx
 * permutations. The fixture checkpoints then check that the dequantized
 * weights of each quantized model lie within quantization error of the BF16
 * model's weights (they were made from the same random weights), while a
 * wrong convention (scale divisor vs multiplier, GPTQ zero +-1) lands orders
 * of magnitude or several times further. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dequant.h"
#include "format.h"
#include "ckpt.h"
#include "harness.h"
#include "linear_util.h"
#include "safetensors.h"
#include "util.h"

/* ---- helpers -------------------------------------------------------------- */

static uint64_t rng_state = 0x1234567887654321ull;
static uint32_t rnd(void)
{
    return (uint32_t)(th_xorshift(&rng_state) >> 16);
}
static uint32_t rnd_below(uint32_t n) { return rnd() % n; }

/* Independent decoders, straight from the format definitions. */
static float ref_e4m3(uint8_t b)
{
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7)
        return NAN;
    double v = e == 0 ? m / 8.0 * pow(2.0, -6) : (1.0 + m / 8.0) * pow(2.0, e - 7);
    return (float)(s ? -v : v);
}
static float ref_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static float ref_f16(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? m / 1024.0 * pow(2.0, -14) : (1.0 + m / 1024.0) * pow(2.0, e - 15);
    return (float)(s ? -v : v);
}
static const float ref_e2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* A random positive 16-bit scale of dtype dt (bits into *bits, value returned). */
static float rnd_scale16(qc_dtype dt, uint16_t *bits)
{
    if (dt == QC_DT_BF16) {
        *bits = (uint16_t)(0x3A00 + rnd_below(0x0600)); /* ~5e-4 .. 0.06 */
        return ref_bf16(*bits);
    }
    *bits = (uint16_t)(0x1000 + rnd_below(0x1800)); /* f16 ~6e-5 .. 0.06 */
    return ref_f16(*bits);
}

static bool same_float(float a, float b)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    return x == y;
}

/* Validates l, dequantizes it whole and in odd row ranges, and compares every
 * element bit for bit with expect (n x k). */
static void check_exact(const char *name, const qc_linear *l, const float *expect)
{
    char nm[256];
    qc_err err = {0};
    int rc = qc_linear_validate(l, &err);
    snprintf(nm, sizeof nm, "%s/validate", name);
    CHECK(nm, rc == QC_OK, "rc %d: %s", rc, err.msg);
    if (rc)
        return;
    int64_t n = l->n, k = l->k;
    float *out = malloc((size_t)(n * k) * sizeof *out);
    qc_linear_dequant(l, out);
    int64_t bad = -1, nbad = 0;
    for (int64_t i = 0; i < n * k; i++)
        if (!same_float(out[i], expect[i])) {
            if (bad < 0)
                bad = i;
            nbad++;
        }
    snprintf(nm, sizeof nm, "%s/exact", name);
    CHECK(nm, nbad == 0, "%lld mismatches, first W[%lld][%lld] = %.9g, expected %.9g",
          (long long)nbad, bad < 0 ? 0LL : (long long)(bad / k), bad < 0 ? 0LL : (long long)(bad % k),
          bad < 0 ? 0.0 : (double)out[bad], bad < 0 ? 0.0 : (double)expect[bad]);
    /* Row ranges that start and end off any block, group or word boundary. */
    int64_t r0s[3] = {n > 3 ? 3 : 0, n / 2, n - 1};
    int64_t nrs[3] = {n > 3 ? (n - 3 < 5 ? n - 3 : 5) : n, n - n / 2, 1};
    int64_t sub_bad = 0;
    for (int t = 0; t < 3; t++) {
        float *part = malloc((size_t)(nrs[t] * k) * sizeof *part);
        qc_linear_dequant_rows(l, r0s[t], nrs[t], part);
        for (int64_t i = 0; i < nrs[t] * k; i++)
            if (!same_float(part[i], expect[r0s[t] * k + i]))
                sub_bad++;
        free(part);
    }
    snprintf(nm, sizeof nm, "%s/row-ranges", name);
    CHECK(nm, sub_bad == 0, "%lld mismatches when dequantizing row ranges", (long long)sub_bad);
    free(out);
}

/* ---- scalar tables -------------------------------------------------------- */

static void test_tables(void)
{
    int bad = 0;
    for (int b = 0; b < 256; b++)
        if (!same_float(qc_e4m3_to_f32((uint8_t)b), ref_e4m3((uint8_t)b)))
            bad++;
    CHECK("e4m3/all-256-codes", bad == 0, "%d codes differ from the E4M3 definition", bad);
    CHECK("e4m3/landmarks",
          qc_e4m3_to_f32(0x7E) == 448.0f && qc_e4m3_to_f32(0xFE) == -448.0f &&
              qc_e4m3_to_f32(0x01) == ldexpf(1.0f, -9) && qc_e4m3_to_f32(0x07) == 7 * ldexpf(1.0f, -9) &&
              qc_e4m3_to_f32(0x08) == ldexpf(1.0f, -6) && qc_e4m3_to_f32(0x38) == 1.0f &&
              isnan(qc_e4m3_to_f32(0x7F)) && isnan(qc_e4m3_to_f32(0xFF)) &&
              qc_e4m3_to_f32(0x78) == 256.0f && signbit(qc_e4m3_to_f32(0x80)),
          "max 448, subnormal 2^-9 steps, 0x7F/0xFF NaN, 0x80 = -0");
    bad = 0;
    for (int c = 0; c < 16; c++)
        if (!same_float(qc_e2m1_to_f32((uint8_t)c), ref_e2m1[c]))
            bad++;
    CHECK("e2m1/all-16-codes", bad == 0, "%d codes differ from {0,.5,1,1.5,2,3,4,6} with sign bit 3", bad);
    CHECK("e2m1/high-bits-ignored", qc_e2m1_to_f32(0xF7) == 6.0f && qc_e2m1_to_f32(0x3F) == -6.0f,
          "got %g and %g", (double)qc_e2m1_to_f32(0xF7), (double)qc_e2m1_to_f32(0x3F));
    bad = 0;
    for (int s = 0; s < 255; s++)
        if (qc_e8m0_to_f32((uint8_t)s) != (float)ldexp(1.0, s - 127))
            bad++;
    CHECK("e8m0/all-codes", bad == 0 && isnan(qc_e8m0_to_f32(0xFF)) && qc_e8m0_to_f32(127) == 1.0f &&
                                qc_e8m0_to_f32(0) > 0.0f && qc_e8m0_to_f32(0) == ldexpf(1.0f, -127),
          "%d codes differ from 2^(s-127); 0xFF must be NaN, 0 the subnormal 2^-127", bad);
    /* Scales of any dtype read through the dtype. */
    uint16_t bf = 0x3F80, hf = 0x3C00;
    float f32 = 0.25f;
    qc_tensor tb = th_tensor("b", QC_DT_BF16, 0, 0, 0, &bf), th = th_tensor("h", QC_DT_F16, 0, 0, 0, &hf),
              tf = th_tensor("f", QC_DT_F32, 0, 0, 0, &f32);
    CHECK("tensor-get/dtypes",
          qc_tensor_get_f32(&tb, 0) == 1.0f && qc_tensor_get_f32(&th, 0) == 1.0f &&
              qc_tensor_get_f32(&tf, 0) == 0.25f,
          "bf16 0x3F80, f16 0x3C00 must read 1.0, f32 0.25");
}

/* ---- 16/32-bit ------------------------------------------------------------ */

static void test_float(void)
{
    const int64_t N = 13, K = 37;
    uint16_t *b = malloc(N * K * 2), *h = malloc(N * K * 2);
    float *f = malloc(N * K * 4), *eb = malloc(N * K * 4), *eh = malloc(N * K * 4);
    for (int64_t i = 0; i < N * K; i++) {
        b[i] = (uint16_t)rnd();
        if ((b[i] & 0x7F80) == 0x7F80)
            b[i] &= 0xBFFF; /* keep it finite */
        h[i] = (uint16_t)(rnd() & 0xFBFF);
        f[i] = (float)((int)rnd_below(20001) - 10000) * 1e-3f;
        eb[i] = ref_bf16(b[i]);
        eh[i] = ref_f16(h[i]);
    }
    qc_tensor tb = th_tensor("x.weight", QC_DT_BF16, 2, N, K, b), th = th_tensor("x.weight", QC_DT_F16, 2, N, K, h),
              tf = th_tensor("x.weight", QC_DT_F32, 2, N, K, f);
    qc_linear l = th_linear("bf16", QC_FMT_BF16, N, K);
    l.weight = &tb;
    check_exact("bf16", &l, eb);
    l = th_linear("f16", QC_FMT_F16, N, K);
    l.weight = &th;
    check_exact("f16", &l, eh);
    l = th_linear("f32", QC_FMT_F32, N, K);
    l.weight = &tf;
    check_exact("f32", &l, f);
    free(b), free(h), free(f), free(eb), free(eh);
}

/* ---- FP8 ------------------------------------------------------------------ */

static void test_fp8_block(int64_t N, int64_t K, int bn, int bk, qc_dtype sdt)
{
    int64_t nbn = (N + bn - 1) / bn, nbk = (K + bk - 1) / bk;
    uint8_t *w = malloc(N * K);
    void *s = malloc(nbn * nbk * 4);
    float *sv = malloc(nbn * nbk * 4), *e = malloc(N * K * 4);
    for (int64_t i = 0; i < nbn * nbk; i++) {
        if (sdt == QC_DT_BF16) {
            uint16_t bits;
            sv[i] = rnd_scale16(QC_DT_BF16, &bits);
            ((uint16_t *)s)[i] = bits;
        } else {
            sv[i] = (float)(1 + rnd_below(1000)) * 1.37e-5f;
            ((float *)s)[i] = sv[i];
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            uint8_t c = (uint8_t)rnd(); /* every code, NaNs included */
            w[n * K + k] = c;
            e[n * K + k] = ref_e4m3(c) * sv[(n / bn) * nbk + k / bk];
        }
    qc_tensor tw = th_tensor("x.weight", QC_DT_F8_E4M3, 2, N, K, w),
              ts = th_tensor("x.weight_scale_inv", sdt, 2, nbn, nbk, s);
    qc_linear l = th_linear("x", QC_FMT_FP8_BLOCK, N, K);
    l.bits = 8;
    l.block_n = bn;
    l.block_k = bk;
    l.weight = &tw;
    l.scale = &ts;
    char name[128];
    snprintf(name, sizeof name, "fp8-block/%lldx%lld-blk%dx%d-%s", (long long)N, (long long)K, bn, bk,
             qc_dtype_name(sdt));
    check_exact(name, &l, e);
    free(w), free(s), free(sv), free(e);
}

static void test_fp8_tensor_channel(void)
{
    const int64_t N = 70, K = 33;
    uint8_t *w = malloc(N * K);
    float *e = malloc(N * K * 4), *ec = malloc(N * K * 4), st = 0.0123f;
    uint16_t *sc = malloc(N * 2);
    for (int64_t n = 0; n < N; n++) {
        uint16_t bits;
        float sv = rnd_scale16(QC_DT_BF16, &bits);
        sc[n] = bits;
        for (int64_t k = 0; k < K; k++) {
            uint8_t c = (uint8_t)rnd();
            w[n * K + k] = c;
            e[n * K + k] = ref_e4m3(c) * st;
            ec[n * K + k] = ref_e4m3(c) * sv;
        }
    }
    qc_tensor tw = th_tensor("x.weight", QC_DT_F8_E4M3, 2, N, K, w), ts = th_tensor("x.weight_scale", QC_DT_F32, 0, 0, 0, &st),
              ts1 = th_tensor("x.weight_scale", QC_DT_F32, 1, 1, 0, &st),
              tc = th_tensor("x.weight_scale", QC_DT_BF16, 2, N, 1, sc);
    qc_linear l = th_linear("x", QC_FMT_FP8_TENSOR, N, K);
    l.weight = &tw;
    l.scale = &ts;
    check_exact("fp8-tensor/scalar-scale", &l, e);
    l.scale = &ts1;
    check_exact("fp8-tensor/[1]-scale", &l, e);
    l = th_linear("x", QC_FMT_FP8_CHANNEL, N, K);
    l.weight = &tw;
    l.scale = &tc;
    check_exact("fp8-channel/bf16-[N,1]", &l, ec);
    free(w), free(e), free(ec), free(sc);
}

/* ---- INT4: GPTQ, AWQ, compressed-tensors ----------------------------------- */

/* Group of each k: k / G, or a random permutation of those labels (act-order
 * files store such g_idx). */
static void make_groups(int64_t K, int64_t G, bool permute, int32_t *g)
{
    for (int64_t k = 0; k < K; k++) g[k] = (int32_t)(k / G);
    if (permute)
        for (int64_t k = K - 1; k > 0; k--) {
            int64_t j = rnd_below((uint32_t)(k + 1));
            int32_t t = g[k];
            g[k] = g[j];
            g[j] = t;
        }
}

static void test_gptq(int64_t N, int64_t K, int64_t G, bool v1, bool gidx, qc_dtype sdt)
{
    int64_t ng = (K + G - 1) / G, zw = (N + 7) / 8;
    uint8_t *q = malloc(N * K), *z = malloc(ng * N);
    int32_t *g = malloc(K * 4);
    uint32_t *qw = calloc((K / 8) * N, 4), *qz = calloc(ng * zw, 4);
    uint16_t *sc = malloc(ng * N * 2);
    float *sv = malloc(ng * N * 4), *e = malloc(N * K * 4);
    make_groups(K, G, gidx, g);
    for (int64_t i = 0; i < ng * N; i++) {
        sv[i] = rnd_scale16(sdt, &sc[i]);
        /* v1 stores z - 1 in a nibble, so z = 0 is not representable there. */
        z[i] = (uint8_t)(v1 ? 1 + rnd_below(15) : rnd_below(16));
    }
    for (int64_t k = 0; k < K; k++)
        for (int64_t n = 0; n < N; n++) {
            uint8_t qq = (uint8_t)rnd_below(16);
            q[n * K + k] = qq;
            /* nibble j of qweight[i][n] is q(k = 8i + j, n) */
            qw[(k / 8) * N + n] |= (uint32_t)qq << (4 * (k % 8));
            e[n * K + k] = sv[g[k] * N + n] * (float)((int)qq - (int)z[g[k] * N + n]);
        }
    for (int64_t gg = 0; gg < ng; gg++)
        for (int64_t n = 0; n < N; n++) /* nibble j of qzeros[g][c] is the zero of column 8c+j */
            qz[gg * zw + n / 8] |= (uint32_t)(z[gg * N + n] - (v1 ? 1 : 0)) << (4 * (n % 8));
    qc_tensor tw = th_tensor("x.qweight", QC_DT_I32, 2, K / 8, N, qw), tz = th_tensor("x.qzeros", QC_DT_I32, 2, ng, zw, qz),
              ts = th_tensor("x.scales", sdt, 2, ng, N, sc), tg = th_tensor("x.g_idx", QC_DT_I32, 1, K, 0, g);
    qc_linear l = th_linear("x", QC_FMT_GPTQ, N, K);
    l.bits = 4;
    l.group_size = (int)G;
    l.zero_bias = v1 ? 1 : 0;
    l.weight = &tw;
    l.zeros = &tz;
    l.scale = &ts;
    l.g_idx = gidx ? &tg : NULL;
    char name[128];
    snprintf(name, sizeof name, "gptq/%s-%lldx%lld-g%lld%s-%s", v1 ? "v1" : "v2", (long long)N,
             (long long)K, (long long)G, gidx ? "-gidx" : "", qc_dtype_name(sdt));
    check_exact(name, &l, e);
    free(q), free(z), free(g), free(qw), free(qz), free(sc), free(sv), free(e);
}

/* Hand words: qweight 0x76543210 puts q = k % 8; v1 symmetric qzeros
 * 0x77777777 mean z = 8; scale 1 => W[n][k] = k % 8 - 8. */
static void test_gptq_hand(void)
{
    const int64_t N = 8, K = 16;
    uint32_t qw[2 * 8], qz[1] = {0x77777777u};
    uint16_t sc[8];
    float e[8 * 16];
    for (int i = 0; i < 16; i++) qw[i] = 0x76543210u;
    for (int i = 0; i < 8; i++) sc[i] = 0x3C00; /* f16 1.0 */
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) e[n * K + k] = (float)(k % 8) - 8.0f;
    qc_tensor tw = th_tensor("h.qweight", QC_DT_I32, 2, 2, 8, qw), tz = th_tensor("h.qzeros", QC_DT_I32, 2, 1, 1, qz),
              ts = th_tensor("h.scales", QC_DT_F16, 2, 1, 8, sc);
    qc_linear l = th_linear("h", QC_FMT_GPTQ, N, K);
    l.bits = 4;
    l.group_size = 16;
    l.symmetric = true;
    l.zero_bias = 1;
    l.weight = &tw;
    l.zeros = &tz;
    l.scale = &ts;
    check_exact("gptq/hand-0x76543210-v1-sym-0x77777777", &l, e);
    /* Words with the top bit set are unsigned: 0xFEDCBA98 holds 8..15. */
    for (int i = 0; i < 16; i++) qw[i] = 0xFEDCBA98u;
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) e[n * K + k] = (float)(k % 8);
    check_exact("gptq/hand-0xFEDCBA98-unsigned", &l, e);
}

static const int awq_order[8] = {0, 2, 4, 6, 1, 3, 5, 7};

static void test_awq(int64_t N, int64_t K, int64_t G, qc_dtype sdt)
{
    int64_t ng = K / G, nw = N / 8;
    uint8_t *q = malloc(N * K), *z = malloc(ng * N);
    uint32_t *qw = calloc(K * nw, 4), *qz = calloc(ng * nw, 4);
    uint16_t *sc = malloc(ng * N * 2);
    float *sv = malloc(ng * N * 4), *e = malloc(N * K * 4);
    for (int64_t i = 0; i < ng * N; i++) {
        sv[i] = rnd_scale16(sdt, &sc[i]);
        z[i] = (uint8_t)rnd_below(16);
    }
    for (int64_t i = 0; i < N * K; i++) q[i] = (uint8_t)rnd_below(16);
    /* slot s of the word for columns 8c..8c+7 holds column 8c + order[s] */
    for (int64_t k = 0; k < K; k++)
        for (int64_t c = 0; c < nw; c++)
            for (int s = 0; s < 8; s++)
                qw[k * nw + c] |= (uint32_t)q[(8 * c + awq_order[s]) * K + k] << (4 * s);
    for (int64_t gg = 0; gg < ng; gg++)
        for (int64_t c = 0; c < nw; c++)
            for (int s = 0; s < 8; s++)
                qz[gg * nw + c] |= (uint32_t)z[gg * N + 8 * c + awq_order[s]] << (4 * s);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++)
            e[n * K + k] = sv[(k / G) * N + n] * (float)((int)q[n * K + k] - (int)z[(k / G) * N + n]);
    qc_tensor tw = th_tensor("x.qweight", QC_DT_I32, 2, K, nw, qw), tz = th_tensor("x.qzeros", QC_DT_I32, 2, ng, nw, qz),
              ts = th_tensor("x.scales", sdt, 2, ng, N, sc);
    qc_linear l = th_linear("x", QC_FMT_AWQ, N, K);
    l.bits = 4;
    l.group_size = (int)G;
    l.weight = &tw;
    l.zeros = &tz;
    l.scale = &ts;
    char name[128];
    snprintf(name, sizeof name, "awq/%lldx%lld-g%lld-%s", (long long)N, (long long)K, (long long)G,
             qc_dtype_name(sdt));
    check_exact(name, &l, e);
    free(q), free(z), free(qw), free(qz), free(sc), free(sv), free(e);
}

/* Hand word: columns 0..7 holding 0..7 pack to 0x75316420; zeros 0, scale 1
 * => W[n][k] = n % 8. */
static void test_awq_hand(void)
{
    const int64_t N = 16, K = 4;
    uint32_t qw[4 * 2], qz[2] = {0, 0};
    uint16_t sc[16];
    float e[16 * 4];
    for (int i = 0; i < 8; i++) qw[i] = 0x75316420u;
    for (int i = 0; i < 16; i++) sc[i] = 0x3F80; /* bf16 1.0 */
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) e[n * K + k] = (float)(n % 8);
    qc_tensor tw = th_tensor("a.qweight", QC_DT_I32, 2, K, 2, qw), tz = th_tensor("a.qzeros", QC_DT_I32, 2, 1, 2, qz),
              ts = th_tensor("a.scales", QC_DT_BF16, 2, 1, N, sc);
    qc_linear l = th_linear("a", QC_FMT_AWQ, N, K);
    l.bits = 4;
    l.group_size = 4;
    l.weight = &tw;
    l.zeros = &tz;
    l.scale = &ts;
    check_exact("awq/hand-0x75316420", &l, e);
}

/* compressed-tensors pack-quantized: weight_packed [N, ceil(K/pf)], stored
 * q + 2^(bits-1); weight_zero_point packed along N, stored the same way. */
static void test_ct_int(int64_t N, int64_t K, int64_t G, int bits, bool asym, bool gidx, qc_dtype sdt)
{
    int pf = 32 / bits, off = 1 << (bits - 1);
    int64_t kw = (K + pf - 1) / pf, ng = (K + G - 1) / G, zr = (N + pf - 1) / pf;
    int *q = malloc(N * K * sizeof(int)), *zp = malloc(N * ng * sizeof(int));
    int32_t *g = malloc(K * 4);
    uint32_t *wp = calloc(N * kw, 4), *zpp = calloc(zr * ng, 4);
    uint16_t *sc = malloc(N * ng * 2);
    float *sv = malloc(N * ng * 4), *e = malloc(N * K * 4);
    make_groups(K, G, gidx, g);
    for (int64_t i = 0; i < N * ng; i++) {
        sv[i] = rnd_scale16(sdt, &sc[i]);
        zp[i] = asym ? (int)rnd_below(2u * off) - off : 0;
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            int qq = (int)rnd_below(2u * off) - off;
            q[n * K + k] = qq;
            wp[n * kw + k / pf] |= (uint32_t)(qq + off) << (bits * (k % pf));
            e[n * K + k] = sv[n * ng + g[k]] * (float)(qq - zp[n * ng + g[k]]);
        }
    for (int64_t n = 0; n < N; n++)
        for (int64_t gg = 0; gg < ng; gg++) /* nibble j of word r = row pf*r + j */
            zpp[(n / pf) * ng + gg] |= (uint32_t)(zp[n * ng + gg] + off) << (bits * (n % pf));
    qc_tensor tw = th_tensor("x.weight_packed", QC_DT_I32, 2, N, kw, wp),
              ts = th_tensor("x.weight_scale", sdt, 2, N, ng, sc),
              tz = th_tensor("x.weight_zero_point", QC_DT_I32, 2, zr, ng, zpp),
              tg = th_tensor("x.weight_g_idx", QC_DT_I32, 1, K, 0, g);
    qc_linear l = th_linear("x", QC_FMT_CT_INT, N, K);
    l.bits = bits;
    l.group_size = (int)G;
    l.symmetric = !asym;
    l.weight = &tw;
    l.scale = &ts;
    l.zeros = asym ? &tz : NULL;
    l.g_idx = gidx ? &tg : NULL;
    char name[128];
    snprintf(name, sizeof name, "ct-int/w%d-%s-%lldx%lld-g%lld%s-%s", bits, asym ? "asym" : "sym",
             (long long)N, (long long)K, (long long)G, gidx ? "-gidx" : "", qc_dtype_name(sdt));
    check_exact(name, &l, e);
    /* Unpacked signed zero points ([N, G], older files) mean the same thing. */
    if (asym && bits == 4) {
        int8_t *zu = malloc(N * ng);
        for (int64_t i = 0; i < N * ng; i++) zu[i] = (int8_t)zp[i];
        qc_tensor tzu = th_tensor("x.weight_zero_point", QC_DT_I8, 2, N, ng, zu);
        l.zeros = &tzu;
        snprintf(name, sizeof name, "ct-int/unpacked-zero-point-%lldx%lld", (long long)N, (long long)K);
        check_exact(name, &l, e);
        free(zu);
    }
    free(q), free(zp), free(g), free(wp), free(zpp), free(sc), free(sv), free(e);
}

/* ---- FP4: NVFP4 (both producers) and MXFP4 ---------------------------------- */

static void test_fp4(qc_format f, int64_t N, int64_t K)
{
    bool mx = f == QC_FMT_MXFP4_CT;
    int64_t bs = mx ? 32 : 16, nb = (K + bs - 1) / bs;
    uint8_t *c = malloc(N * K), *wp = calloc(N * (K / 2), 1), *sc = malloc(N * nb);
    float *e = malloc(N * K * 4);
    /* 2688 / amax as a compressed-tensors global scale; its inverse for ModelOpt. */
    float gs = mx ? 1.0f : (f == QC_FMT_NVFP4_CT ? 2688.0f / 3.71f : 3.71f / 2688.0f);
    for (int64_t i = 0; i < N * nb; i++) {
        if (mx)
            sc[i] = (uint8_t)(i == 0 ? 0 : i == 1 ? 0xFF : 110 + rnd_below(30)); /* 2^-127, NaN */
        else
            sc[i] = (uint8_t)(i < 8 ? 1 + i : 0x20 + rnd_below(0x50)); /* subnormal E4M3 too */
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            uint8_t cc = (uint8_t)rnd_below(16);
            c[n * K + k] = cc;
            /* byte b of row n: element 2b in the low nibble, 2b+1 in the high */
            wp[n * (K / 2) + k / 2] |= (uint8_t)(cc << ((k & 1) ? 4 : 0));
            uint8_t s = sc[n * nb + k / bs];
            float scale;
            if (mx)
                scale = s == 0xFF ? NAN : (float)ldexp(1.0, s - 127);
            else if (f == QC_FMT_NVFP4_CT)
                scale = ref_e4m3(s) / gs;
            else
                scale = ref_e4m3(s) * gs;
            e[n * K + k] = ref_e2m1[cc] * scale;
        }
    qc_tensor tw = th_tensor("x.weight_packed", QC_DT_U8, 2, N, K / 2, wp),
              ts = th_tensor("x.weight_scale", mx ? QC_DT_U8 : QC_DT_F8_E4M3, 2, N, nb, sc),
              tg = th_tensor("x.weight_global_scale", QC_DT_F32, 1, 1, 0, &gs),
              tg0 = th_tensor("x.weight_scale_2", QC_DT_F32, 0, 0, 0, &gs);
    qc_linear l = th_linear("x", f, N, K);
    l.bits = 4;
    l.group_size = (int)bs;
    l.weight = &tw;
    l.scale = &ts;
    l.global_scale = mx ? NULL : f == QC_FMT_NVFP4_CT ? &tg : &tg0;
    char name[128];
    snprintf(name, sizeof name, "%s/%lldx%lld", qc_format_name(f), (long long)N, (long long)K);
    check_exact(name, &l, e);
    free(c), free(wp), free(sc), free(e);
}

static void test_fp4_hand(void)
{
    /* 0x21: element 0 = code 1 (0.5), element 1 = code 2 (1.0); 0xF8: -0, -6. */
    uint8_t wp[8] = {0x21, 0xF8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    uint8_t sc[1] = {0x38}; /* e4m3 1.0 */
    float gs = 2.0f, e[16] = {0.25f, 0.5f, -0.0f, -3.0f};
    qc_tensor tw = th_tensor("n.weight_packed", QC_DT_U8, 2, 1, 8, wp), ts = th_tensor("n.weight_scale", QC_DT_F8_E4M3, 2, 1, 1, sc),
              tg = th_tensor("n.weight_global_scale", QC_DT_F32, 1, 1, 0, &gs);
    qc_linear l = th_linear("n", QC_FMT_NVFP4_CT, 1, 16);
    l.weight = &tw;
    l.scale = &ts;
    l.global_scale = &tg;
    check_exact("nvfp4-ct/hand-0x21-0xF8-global-divides", &l, e);
    l.format = QC_FMT_NVFP4_MODELOPT;
    float e2[16] = {1.0f, 2.0f, -0.0f, -12.0f};
    check_exact("nvfp4-modelopt/hand-0x21-0xF8-scale2-multiplies", &l, e2);
}

/* ---- validation rejects what dequantization cannot read ------------------- */

static void expect_reject(const char *name, const qc_linear *l, const char *needle)
{
    qc_err err = {0};
    int rc = qc_linear_validate(l, &err);
    CHECK(name, rc == QC_EXIT_CHECKPOINT && strstr(err.msg, l->name) && strstr(err.msg, needle),
          "rc %d, message \"%s\" (want exit 3 naming %s and %s)", rc, err.msg, l->name, needle);
}

/* qc_linear_check_scales: every non-finite bit pattern of each scale dtype
 * at every element of an [N, C] scale tensor is found, and reported with
 * its element, exactly when its row is in the checked range; the largest
 * finite values are never flagged (the checks read 8 bytes at a time, so the
 * positions cover every lane and a partial last word). */
static void test_check_scales(void)
{
    enum { N = 5, C = 7 };
    static const struct {
        qc_dtype dt;
        qc_format fmt;
        int w;
        uint32_t finite, near, bad[2];
    } cs[] = {
        {QC_DT_F8_E4M3, QC_FMT_NVFP4_CT, 1, 0x38, 0xfe, {0x7f, 0xff}},
        {QC_DT_U8, QC_FMT_MXFP4_CT, 1, 0x7f, 0xfe, {0xff, 0xff}},
        {QC_DT_F8_E8M0, QC_FMT_MXFP4_CT, 1, 0x7f, 0xfe, {0xff, 0xff}},
        {QC_DT_BF16, QC_FMT_CT_INT, 2, 0x3f80, 0xff7f, {0x7fc0, 0xff80}},
        {QC_DT_F16, QC_FMT_CT_INT, 2, 0x3c00, 0x7bff, {0x7c00, 0xfe01}},
        {QC_DT_F32, QC_FMT_CT_INT, 4, 0x3f800000u, 0x7f7fffffu, {0x7f800000u, 0xffc00001u}},
    };
    static const int64_t win[][2] = {{0, N}, {1, 2}, {3, 9}, {4, 1}};
    long wrong = 0;
    char first[300] = "";
    unsigned char buf[N * C * 4];
    for (size_t c = 0; c < sizeof cs / sizeof *cs; c++) {
        qc_tensor ts = th_tensor("x.weight_scale", cs[c].dt, 2, N, C, buf);
        qc_linear l = th_linear("x", cs[c].fmt, N, 16 * C);
        l.scale = &ts;
        for (int pos = -1; pos < N * C; pos++)
            for (int b = 0; b < 2; b++)
                for (size_t v = 0; v < sizeof win / sizeof *win; v++) {
                    for (int i = 0; i < N * C; i++) { /* background: finite, some the largest finite */
                        uint32_t x = i % 3 ? cs[c].finite : cs[c].near;
                        if (i == pos)
                            x = cs[c].bad[b];
                        memcpy(buf + (size_t)i * cs[c].w, &x, (size_t)cs[c].w); /* (little-endian) */
                    }
                    qc_err err;
                    err.msg[0] = 0;
                    const int64_t r0 = win[v][0], nr = win[v][1];
                    const bool want = pos >= 0 && pos / C >= r0 && pos / C < r0 + nr;
                    const int rc = qc_linear_check_scales(&l, r0, nr, &err);
                    char at[48];
                    snprintf(at, sizeof at, "at element %d:", pos);
                    if ((rc != 0) != want || (want && (rc != QC_EXIT_CHECKPOINT || !strstr(err.msg, at)))) {
                        if (!wrong++)
                            snprintf(first, sizeof first, "%s: bad %d at %d, rows [%lld, +%lld): rc %d '%s'",
                                     qc_dtype_name(cs[c].dt), b, pos, (long long)r0, (long long)nr, rc, err.msg);
                    }
                }
    }
    CHECK("check-scales/every-pattern-every-element", wrong == 0, "%ld wrong; first: %s", wrong, first);
}

static void test_validate(void)
{
    uint32_t qw[32 * 64] = {0}, qz[2 * 8] = {0};
    uint16_t sc[2 * 64] = {0};
    int32_t g[256];
    for (int k = 0; k < 256; k++) g[k] = k / 128;
    qc_tensor tw = th_tensor("m.qweight", QC_DT_I32, 2, 32, 64, qw), tz = th_tensor("m.qzeros", QC_DT_I32, 2, 2, 8, qz),
              ts = th_tensor("m.scales", QC_DT_F16, 2, 2, 64, sc), tg = th_tensor("m.g_idx", QC_DT_I32, 1, 256, 0, g);
    qc_linear l = th_linear("layers.0.mlp.up_proj", QC_FMT_GPTQ, 64, 256);
    l.bits = 4;
    l.group_size = 128;
    l.zero_bias = 1;
    l.weight = &tw;
    l.zeros = &tz;
    l.scale = &ts;
    qc_err err = {0};
    CHECK("validate/gptq-good", qc_linear_validate(&l, &err) == QC_OK, "%s", err.msg);
    l.group_size = 64;
    expect_reject("validate/gptq-group-count", &l, "groups");
    l.group_size = 128;
    l.g_idx = &tg;
    CHECK("validate/gptq-gidx-good", qc_linear_validate(&l, &err) == QC_OK, "%s", err.msg);
    g[77] = 2;
    expect_reject("validate/gptq-gidx-out-of-range", &l, "m.g_idx");
    g[77] = 0;
    l.g_idx = NULL;
    qc_tensor tzbad = th_tensor("m.qzeros", QC_DT_I32, 2, 2, 7, qz);
    l.zeros = &tzbad;
    expect_reject("validate/gptq-qzeros-shape", &l, "m.qzeros");
    l.zeros = &tz;
    qc_tensor twf = th_tensor("m.qweight", QC_DT_F32, 2, 32, 64, qw);
    l.weight = &twf;
    expect_reject("validate/gptq-qweight-dtype", &l, "m.qweight");
    qc_tensor twn = th_tensor("m.qweight", QC_DT_I32, 2, 32, 64, NULL);
    l.weight = &twn;
    expect_reject("validate/no-data", &l, "m.qweight");
    l.weight = NULL;
    expect_reject("validate/missing-weight", &l, "missing");

    static uint8_t fw[200 * 300];
    uint16_t s1[1] = {0x3F80};
    qc_tensor tfw = th_tensor("f.weight", QC_DT_F8_E4M3, 2, 200, 300, fw), tfs = th_tensor("f.weight_scale_inv", QC_DT_BF16, 2, 1, 1, s1);
    qc_linear lf = th_linear("layers.3.self_attn.q_proj", QC_FMT_FP8_BLOCK, 200, 300);
    lf.block_n = lf.block_k = 128;
    lf.weight = &tfw;
    lf.scale = &tfs;
    expect_reject("validate/fp8-block-scale-shape", &lf, "f.weight_scale_inv");
    lf.scale = NULL;
    expect_reject("validate/fp8-block-missing-scale", &lf, "missing");

    static uint8_t nw[64 * 32], ns[64 * 4];
    float zero = 0.0f;
    qc_tensor tnw = th_tensor("v.weight_packed", QC_DT_U8, 2, 64, 32, nw), tns = th_tensor("v.weight_scale", QC_DT_F8_E4M3, 2, 64, 4, ns),
              tng = th_tensor("v.weight_global_scale", QC_DT_F32, 1, 1, 0, &zero);
    qc_linear ln = th_linear("layers.1.mlp.down_proj", QC_FMT_NVFP4_CT, 64, 64);
    ln.weight = &tnw;
    ln.scale = &tns;
    ln.global_scale = &tng;
    expect_reject("validate/nvfp4-zero-global-scale", &ln, "v.weight_global_scale");
    ln.global_scale = NULL;
    expect_reject("validate/nvfp4-missing-global", &ln, "missing");

    qc_tensor taw = th_tensor("a.qweight", QC_DT_I32, 2, 256, 8, qw), tas = th_tensor("a.scales", QC_DT_F16, 2, 2, 64, sc);
    qc_linear la = th_linear("layers.2.mlp.gate_proj", QC_FMT_AWQ, 64, 256);
    la.bits = 4;
    la.group_size = 128;
    la.weight = &taw;
    la.scale = &tas;
    expect_reject("validate/awq-missing-qzeros", &la, "missing");
}

/* ---- matmul ---------------------------------------------------------------- */

static void check_matmul(const char *name, const qc_linear *l, int64_t m)
{
    int64_t n = l->n, k = l->k;
    float *w = malloc(n * k * 4), *x = malloc(m * k * 4), *y = malloc(m * n * 4), *y2 = malloc(m * n * 4);
    float *scratch = malloc(n * k * 4);
    qc_linear_dequant(l, w);
    for (int64_t i = 0; i < m * k; i++) x[i] = (float)((int)rnd_below(2001) - 1000) * 1e-3f;
    qc_linear_matmul(l, x, m, y);
    double worst = 0.0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double ref = 0.0, mag = 0.0;
            for (int64_t kk = 0; kk < k; kk++) {
                ref += (double)w[j * k + kk] * x[i * k + kk];
                mag += fabs((double)w[j * k + kk] * x[i * k + kk]);
            }
            double e = fabs(y[i * n + j] - ref) / (mag > 0 ? mag : 1.0);
            if (!(e <= worst))
                worst = e;
        }
    char nm[160];
    snprintf(nm, sizeof nm, "matmul/%s/vs-double", name);
    CHECK(nm, worst < 1e-6, "worst |y - ref| / sum|w x| = %.3g", worst);
    /* Any split into row tiles and single input rows gives identical bits. */
    int64_t tiles[3] = {1, 3, 5};
    int64_t diff = 0;
    for (int t = 0; t < 3; t++) {
        memset(y2, 0, m * n * 4);
        for (int64_t i = 0; i < m; i += (t == 1 ? 1 : m))
            for (int64_t r0 = 0; r0 < n; r0 += tiles[t]) {
                int64_t nr = n - r0 < tiles[t] ? n - r0 : tiles[t];
                qc_linear_matmul_rows(l, x + i * k, t == 1 ? 1 : m, k, r0, nr, y2 + i * n, n, scratch);
            }
        for (int64_t i = 0; i < m * n; i++) diff += !same_float(y[i], y2[i]);
    }
    snprintf(nm, sizeof nm, "matmul/%s/split-invariant", name);
    CHECK(nm, diff == 0, "%lld outputs change with the tile split", (long long)diff);
    free(w), free(x), free(y), free(y2), free(scratch);
}

static void test_matmul(void)
{
    const int64_t N = 37, K = 301;
    uint16_t *b = malloc(N * K * 2);
    unsigned char *fbuf = malloc(N * K * 4 + 8);
    for (int64_t i = 0; i < N * K; i++) {
        b[i] = (uint16_t)(0x3800 + rnd_below(0x0A00)) | (uint16_t)(rnd() & 0x8000u);
        float f = ref_bf16(b[i]);
        memcpy(fbuf + 4 * i, &f, 4);
    }
    qc_tensor tb = th_tensor("m.weight", QC_DT_BF16, 2, N, K, b);
    qc_linear l = th_linear("m", QC_FMT_BF16, N, K);
    l.weight = &tb;
    check_matmul("bf16-37x301-m5", &l, 5);
    check_matmul("bf16-37x301-m1", &l, 1);
    /* F32 read in place (aligned) and through the copy (misaligned). */
    float *fa = malloc(N * K * 4);
    memcpy(fa, fbuf, N * K * 4);
    memmove(fbuf + 1, fbuf, N * K * 4);
    qc_tensor tfa = th_tensor("m.weight", QC_DT_F32, 2, N, K, fa), tfm = th_tensor("m.weight", QC_DT_F32, 2, N, K, fbuf + 1);
    qc_linear la = th_linear("m", QC_FMT_F32, N, K), lm = la;
    la.weight = &tfa;
    lm.weight = &tfm;
    check_matmul("f32-aligned", &la, 3);
    float *ya = malloc(4 * N * 4), *ym = malloc(4 * N * 4), *x = malloc(4 * K * 4);
    for (int64_t i = 0; i < 4 * K; i++) x[i] = (float)rnd_below(100) * 0.01f;
    qc_linear_matmul(&la, x, 4, ya);
    qc_linear_matmul(&lm, x, 4, ym);
    CHECK("matmul/f32-misaligned-same-bits", memcmp(ya, ym, 4 * N * 4) == 0, "unaligned F32 data differs");
    /* A quantized one: GPTQ with random words and a permuted g_idx. */
    const int64_t gn = 24, gk = 256;
    uint32_t *qw = malloc(gk / 8 * gn * 4), *qz = malloc(2 * 3 * 4);
    uint16_t *sc = malloc(2 * gn * 2);
    int32_t *g = malloc(gk * 4);
    for (int64_t i = 0; i < gk / 8 * gn; i++) qw[i] = rnd() ^ (rnd() << 16);
    for (int i = 0; i < 6; i++) qz[i] = rnd() ^ (rnd() << 16);
    for (int64_t i = 0; i < 2 * gn; i++) rnd_scale16(QC_DT_F16, &sc[i]);
    make_groups(gk, 128, true, g);
    qc_tensor tw = th_tensor("q.qweight", QC_DT_I32, 2, gk / 8, gn, qw), tz = th_tensor("q.qzeros", QC_DT_I32, 2, 2, 3, qz),
              ts = th_tensor("q.scales", QC_DT_F16, 2, 2, gn, sc), tg = th_tensor("q.g_idx", QC_DT_I32, 1, gk, 0, g);
    qc_linear lq = th_linear("q", QC_FMT_GPTQ, gn, gk);
    lq.bits = 4;
    lq.group_size = 128;
    lq.weight = &tw;
    lq.zeros = &tz;
    lq.scale = &ts;
    lq.g_idx = &tg;
    check_matmul("gptq-gidx-24x256-m7", &lq, 7);
    free(b), free(fbuf), free(fa), free(ya), free(ym), free(x), free(qw), free(qz), free(sc), free(g);
}

/* ---- fixtures: quantized weights within quantization error of BF16 -------- */

static bool ends_with(const char *s, const char *suf, size_t *plen)
{
    size_t a = strlen(s), b = strlen(suf);
    if (a < b || strcmp(s + a - b, suf) != 0)
        return false;
    *plen = a - b;
    return true;
}

static const qc_tensor *find2(const qc_st *st, const char *prefix, size_t plen, const char *suffix)
{
    char name[512];
    snprintf(name, sizeof name, "%.*s%s", (int)plen, prefix, suffix);
    return qc_st_find(st, name);
}

/* Builds the descriptor for the module whose marker tensor is t, the way
 * checkpoint-formats.md classifies it; false if t is not a module marker. */
static bool fixture_linear(const qc_st *st, const qc_tensor *t, qc_linear *l, size_t *plen)
{
    const char *nm = t->name;
    memset(l, 0, sizeof *l);
    if (ends_with(nm, ".weight_scale_inv", plen)) { /* fp8-block, [128,128] in the configs */
        l->format = QC_FMT_FP8_BLOCK;
        l->weight = find2(st, nm, *plen, ".weight");
        l->scale = t;
        l->block_n = l->block_k = 128;
    } else if (ends_with(nm, ".qweight", plen)) { /* gptq v1 (auto_round:auto_gptq) */
        l->format = QC_FMT_GPTQ;
        l->weight = t;
        l->zeros = find2(st, nm, *plen, ".qzeros");
        l->scale = find2(st, nm, *plen, ".scales");
        l->bits = 4;
        l->zero_bias = 1;
        l->symmetric = true;
    } else if (ends_with(nm, ".weight_packed", plen) && t->dtype == QC_DT_I32) {
        l->format = QC_FMT_CT_INT;
        l->weight = t;
        l->scale = find2(st, nm, *plen, ".weight_scale");
        l->zeros = find2(st, nm, *plen, ".weight_zero_point");
        l->bits = 4;
        l->symmetric = l->zeros == NULL;
    } else if (ends_with(nm, ".weight_packed", plen)) {
        l->format = QC_FMT_NVFP4_CT;
        l->weight = t;
        l->scale = find2(st, nm, *plen, ".weight_scale");
        l->global_scale = find2(st, nm, *plen, ".weight_global_scale");
        l->group_size = 16;
    } else if (ends_with(nm, ".weight_scale_2", plen)) {
        l->format = QC_FMT_NVFP4_MODELOPT;
        l->weight = find2(st, nm, *plen, ".weight");
        l->scale = find2(st, nm, *plen, ".weight_scale");
        l->global_scale = t;
        l->group_size = 16;
    } else if (ends_with(nm, ".weight_scale", plen) && t->numel == 1) {
        l->format = QC_FMT_FP8_TENSOR;
        l->weight = find2(st, nm, *plen, ".weight");
        l->scale = t;
        l->input_scale = find2(st, nm, *plen, ".input_scale");
    } else {
        return false;
    }
    snprintf(l->name, sizeof l->name, "%.*s", (int)*plen, nm);
    if (!l->weight || !l->scale)
        return true; /* validate reports it */
    const qc_tensor *w = l->weight;
    switch (l->format) {
    case QC_FMT_GPTQ:
        l->n = w->shape[1];
        l->k = w->shape[0] * 8;
        l->group_size = (int)(l->k / l->scale->shape[0]);
        break;
    case QC_FMT_CT_INT: {
        const qc_tensor *shape = find2(st, nm, *plen, ".weight_shape");
        l->n = w->shape[0];
        l->k = shape && shape->numel == 2 ? (int64_t)qc_tensor_get_f32(shape, 1) : w->shape[1] * 8;
        l->group_size = (int)(l->k / l->scale->shape[1]);
        break;
    }
    case QC_FMT_NVFP4_CT:
    case QC_FMT_NVFP4_MODELOPT:
        l->n = w->shape[0];
        l->k = w->shape[1] * 2;
        break;
    default:
        l->n = w->shape[0];
        l->k = w->ndim == 2 ? w->shape[1] : 0;
        break;
    }
    return true;
}

/* Largest relative error ||W - W_bf16|| / ||W_bf16|| that each format's own
 * rounding produces on these fixtures is about 2.7% (FP8), 12% (GPTQ group
 * 128), 8% (asymmetric group 32), 10% (NVFP4); the bounds leave some room.
 * A multiplier read as divisor is off by 1e6 or more, the GPTQ zero off by
 * one by 40% or more. */
static double format_bound(qc_format f)
{
    switch (f) {
    case QC_FMT_FP8_BLOCK:
    case QC_FMT_FP8_TENSOR: return 0.035;
    case QC_FMT_GPTQ: return 0.15;
    case QC_FMT_CT_INT: return 0.10;
    default: return 0.12;
    }
}

/* The BF16 MoE fixture fuses its experts: "<P>experts.E.gate_proj" is rows
 * 0..I-1 of expert E's [2I, D] slice of experts.gate_up_proj, up_proj rows
 * I..2I-1, down_proj expert E's [D, I] slice of experts.down_proj. */
static const qc_tensor *fused_expert_ref(const qc_st *rs, const char *name, int64_t *off)
{
    const char *p = strstr(name, ".mlp.experts.");
    if (!p)
        return NULL;
    char proj[32];
    int e;
    if (sscanf(p, ".mlp.experts.%d.%31s", &e, proj) != 2)
        return NULL;
    bool down = strcmp(proj, "down_proj") == 0, up = strcmp(proj, "up_proj") == 0;
    char rn[256];
    snprintf(rn, sizeof rn, "%.*s.mlp.experts.%s", (int)(p - name), name, down ? "down_proj" : "gate_up_proj");
    const qc_tensor *r = qc_st_find(rs, rn);
    if (!r || r->ndim != 3 || e >= r->shape[0])
        return NULL;
    int64_t slice = r->shape[1] * r->shape[2];
    *off = e * slice + (up ? slice / 2 : 0);
    return r;
}

static void test_fixture(const char *qdir, const char *refdir)
{
    char qpath[1024], rpath[1024], nm[256];
    th_model_dir(qpath, sizeof qpath, qdir);
    th_model_dir(rpath, sizeof rpath, refdir);
    snprintf(nm, sizeof nm, "fixture/%s", qdir);
    qc_st *qs = NULL, *rs = NULL;
    qc_err err = {0};
    if (qc_st_open_dir(qpath, &qs, &err) || qc_st_open_dir(rpath, &rs, &err)) {
        th_skip(nm, err.msg);
        qc_st_free(qs);
        return;
    }
    int modules = 0, invalid = 0, over = 0, noref = 0;
    double worst = 0.0;
    char worst_name[200] = "", first_bad[1200] = "";
    for (size_t i = 0; i < qc_st_count(qs); i++) {
        qc_linear l;
        size_t plen;
        if (!fixture_linear(qs, qc_st_at(qs, i), &l, &plen))
            continue;
        modules++;
        if (qc_linear_validate(&l, &err)) {
            if (!invalid++)
                snprintf(first_bad, sizeof first_bad, "%s", err.msg);
            continue;
        }
        char rn[200];
        snprintf(rn, sizeof rn, "%s.weight", l.name);
        const qc_tensor *r = qc_st_find(rs, rn);
        int64_t roff = 0;
        if (!r)
            r = fused_expert_ref(rs, l.name, &roff);
        if (!r || roff + l.n * l.k > r->numel) {
            noref++;
            continue;
        }
        float *w = malloc((size_t)(l.n * l.k) * 4);
        qc_linear_dequant(&l, w);
        double num = 0.0, den = 0.0;
        for (int64_t j = 0; j < l.n * l.k; j++) {
            double rv = qc_tensor_get_f32(r, roff + j), d = w[j] - rv;
            num += d * d;
            den += rv * rv;
        }
        double rel = sqrt(num / (den > 0 ? den : 1.0));
        if (!(rel <= format_bound(l.format)))
            over++;
        if (!(rel <= worst)) {
            worst = rel;
            snprintf(worst_name, sizeof worst_name, "%s (%s)", l.name, qc_format_name(l.format));
        }
        free(w);
    }
    CHECK(nm, modules > 0 && invalid == 0 && over == 0 && noref == 0,
          "%d modules, %d invalid (%s), %d without a BF16 twin, %d over bound; worst %.4f at %s", modules,
          invalid, first_bad, noref, over, worst, worst_name);
    printf("# %s: %d quantized modules, worst relative error vs BF16 %.4f (%s)\n", qdir, modules, worst,
           worst_name);
    qc_st_free(qs);
    qc_st_free(rs);
}

/* The checkpoint reader's descriptors (ckpt.h) for the same fixtures: every
 * Linear validates, and dequantizes to its BF16 twin within the bound (16-bit
 * modules to exactly the same weights). */
static void test_ckpt_fixture(const char *qdir, const char *refdir)
{
    char qpath[1024], rpath[1024], nm[256], first_bad[1200] = "";
    th_model_dir(qpath, sizeof qpath, qdir);
    th_model_dir(rpath, sizeof rpath, refdir);
    snprintf(nm, sizeof nm, "ckpt-descriptors/%s", qdir);
    qc_ckpt *qc = NULL, *rc = NULL;
    qc_err err = {0};
    if (qc_ckpt_open(qpath, &qc, &err) || qc_ckpt_open(rpath, &rc, &err)) {
        CHECK(nm, 0, "cannot open: %s", err.msg);
        qc_ckpt_free(qc);
        return;
    }
    int modules = 0, quant = 0, bad = 0;
    for (size_t i = 0; i < qc_ckpt_module_count(qc); i++) {
        const qc_linear *l = &qc_ckpt_module_at(qc, i)->lin;
        const qc_linear *r = qc_ckpt_linear(rc, l->name);
        modules++;
        if (qc_linear_validate(l, &err) || !r || r->n != l->n || r->k != l->k) {
            if (!bad++)
                snprintf(first_bad, sizeof first_bad, "%s: %s", l->name, r ? err.msg : "no BF16 twin");
            continue;
        }
        bool q = l->format != QC_FMT_BF16 && l->format != QC_FMT_F16 && l->format != QC_FMT_F32;
        quant += q;
        float *w = malloc((size_t)(l->n * l->k) * 4), *rw = malloc((size_t)(l->n * l->k) * 4);
        qc_linear_dequant(l, w);
        qc_linear_dequant(r, rw);
        double num = 0, den = 0;
        for (int64_t j = 0; j < l->n * l->k; j++) {
            double d = (double)w[j] - rw[j];
            num += d * d;
            den += (double)rw[j] * rw[j];
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        if (!(q ? rel <= format_bound(l->format) : num == 0)) {
            if (!bad++)
                snprintf(first_bad, sizeof first_bad, "%s (%s): relative error %.4g", l->name,
                         qc_format_name(l->format), rel);
        }
        free(w), free(rw);
    }
    CHECK(nm, modules > 0 && quant > 0 && bad == 0, "%d modules (%d quantized), %d bad, first: %s", modules,
          quant, bad, first_bad);
    qc_ckpt_free(qc);
    qc_ckpt_free(rc);
}

int main(void)
{
    test_tables();
    test_float();
    test_fp8_block(200, 300, 128, 128, QC_DT_BF16); /* partial blocks both ways */
    test_fp8_block(192, 128, 128, 128, QC_DT_F32);   /* the qwen36 fp8 in_proj_qkv shape */
    test_fp8_block(70, 45, 64, 32, QC_DT_BF16);
    test_fp8_block(1, 7, 128, 128, QC_DT_F32);
    test_fp8_tensor_channel();
    test_gptq_hand();
    test_gptq(72, 256, 128, true, false, QC_DT_F16);
    test_gptq(72, 256, 64, false, false, QC_DT_F16);
    test_gptq(40, 192, 32, true, true, QC_DT_F16);
    test_gptq(24, 384, 128, false, true, QC_DT_BF16);
    test_gptq(20, 96, 32, false, false, QC_DT_F16); /* N not a multiple of 8: last qzeros word partial */
    test_awq_hand();
    test_awq(72, 256, 128, QC_DT_F16);
    test_awq(16, 96, 32, QC_DT_BF16);
    test_ct_int(20, 96, 32, 4, true, false, QC_DT_BF16); /* N=20: a partial zero-point word */
    test_ct_int(72, 256, 128, 4, false, false, QC_DT_BF16);
    test_ct_int(33, 192, 64, 4, true, true, QC_DT_F16);
    test_ct_int(17, 100, 32, 4, true, false, QC_DT_BF16); /* K=100: a partial last word and group */
    test_ct_int(9, 64, 32, 8, true, false, QC_DT_BF16);
    test_ct_int(9, 64, 16, 8, false, true, QC_DT_F16);
    test_fp4_hand();
    test_fp4(QC_FMT_NVFP4_CT, 70, 48);
    test_fp4(QC_FMT_NVFP4_CT, 6, 40); /* partial last block */
    test_fp4(QC_FMT_NVFP4_MODELOPT, 33, 64);
    test_fp4(QC_FMT_MXFP4_CT, 21, 96);
    test_fp4(QC_FMT_MXFP4_CT, 5, 40);
    test_validate();
    test_check_scales();
    test_matmul();
    test_fixture("tiny-qwen35-fp8", "tiny-qwen35");
    test_fixture("tiny-qwen36-text-fp8", "tiny-qwen36-text");
    test_fixture("tiny-qwen35-int4-autoround", "tiny-qwen35");
    test_fixture("tiny-qwen35-int4-awq", "tiny-qwen35");
    test_fixture("tiny-qwen35-nvfp4", "tiny-qwen35");
    test_fixture("tiny-qwen35-nvfp4-modelopt", "tiny-qwen35");
    test_fixture("tiny-qwen35-moe-fp8", "tiny-qwen35-moe");
    test_ckpt_fixture("tiny-qwen35-fp8", "tiny-qwen35");
    test_ckpt_fixture("tiny-qwen36-text-fp8", "tiny-qwen36-text");
    test_ckpt_fixture("tiny-qwen35-int4-autoround", "tiny-qwen35");
    test_ckpt_fixture("tiny-qwen35-int4-awq", "tiny-qwen35");
    test_ckpt_fixture("tiny-qwen35-nvfp4", "tiny-qwen35");
    test_ckpt_fixture("tiny-qwen35-nvfp4-modelopt", "tiny-qwen35");
    test_ckpt_fixture("tiny-qwen35-moe-fp8", "tiny-qwen35-moe");
    return th_exit();
}
