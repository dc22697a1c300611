/* test_kernels_quant.c — the quantized weight path: load-time repacking
 * (engine/cuda_repack.c) and the quantized GEMV / dequantize kernels
 * (kernels/gemv_{fp8,int4,nvfp4}.cu), against the exact CPU dequantization.
 *
 * Every case builds random weights in the *published* layout of its format
 * (tensors as the producers write them: gptq's [K/8,N] with v1/v2 zeros and
 * g_idx, awq's interleaved [K,N/8], ct-int's [N,K/8] with packed zero points,
 * fp8 block/tensor/channel scales, both NVFP4 global-scale conventions,
 * MXFP4), then:
 *   repack_NAME   pack, unpack on the CPU == qc_linear_dequant_rows (exact,
 *                 except nvfp4-ct's 1/global folded to a multiplier: 1e-6);
 *   qgemv_NAME    GPU y = W x (bf16 x) vs a double-precision dot of the CPU
 *                 dequantized rows (rel L2 < 1e-5), plain and accumulating;
 *   qdequant_NAME GPU W -> bf16 vs the CPU dequantization rounded to bf16
 *                 (padding columns untouched).
 * Shapes are awkward on purpose: partial FP8 blocks, N not a multiple of 64,
 * K not a multiple of 128, groups 32/64/128, g_idx act-order and uneven.
 * qbench_* times each format's GEMV at the 27B shapes (weights rotated over
 * > 2x the L2 so they come from HBM) and prints GB/s with bytes = packed
 * weight + scales + x + y, next to a device-to-device copy. Without CUDA or a
 * GPU every GPU check prints a skip line. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_repack.h"
#include "dequant.h"
#include "format.h"
#include "harness.h"
#include "linear_util.h"
#include "quant.h"
#include "util.h"

#ifdef QC_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "kernels.h"
#endif

/* ---- random ---------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t urand(void) { return th_xorshift(&rng); }
static uint32_t rnd(uint32_t n) { return (uint32_t)((urand() >> 20) % n); }

/* ---- published-layout builders ---------------------------------------------- */

typedef struct pub {
    qc_linear l;
    qc_tensor t[6];
    int nt;
} pub;

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

static qc_tensor *mk(pub *p, const char *name, qc_dtype dt, int ndim, int64_t d0, int64_t d1)
{
    qc_tensor *t = &p->t[p->nt++];
    *t = th_tensor(name, dt, ndim, d0, d1, NULL);
    t->data = calloc(1, t->nbytes + 16);
    return t;
}

static void pub_free(pub *p)
{
    for (int i = 0; i < p->nt; i++) free((void *)p->t[i].data);
    p->nt = 0;
}

static void set_nib(const qc_tensor *t, int64_t word, int j, uint32_t v)
{
    uint32_t *w = (uint32_t *)t->data;
    w[word] = (w[word] & ~(15u << (4 * j))) | (v & 15u) << (4 * j);
}

/* A random positive scale exactly representable in bf16 and f16. */
static float rscale(int e0)
{
    return ldexpf(1.0f + (float)rnd(128) / 128.0f, -(e0 + (int)rnd(4)));
}

static uint16_t f16_bits(float f) /* f is an exact normal f16 value */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t e = ((u >> 23) & 255u) - 127u + 15u;
    return (uint16_t)(((u >> 16) & 0x8000u) | (e << 10) | ((u >> 13) & 0x3ffu));
}

static void put_f(const qc_tensor *t, int64_t i, float v)
{
    switch (t->dtype) {
    case QC_DT_F32: memcpy((char *)t->data + 4 * i, &v, 4); break;
    case QC_DT_BF16: ((uint16_t *)t->data)[i] = qc_f32_to_bf16(v); break;
    case QC_DT_F16: ((uint16_t *)t->data)[i] = f16_bits(v); break;
    default: break;
    }
}

static void lin_init(pub *p, const char *name, qc_format f, int64_t n, int64_t k)
{
    memset(p, 0, sizeof *p);
    p->l = th_linear(name, f, n, k);
}

static void build_fp8(pub *p, const char *name, qc_format f, int64_t N, int64_t K, int bn, int bk,
                      qc_dtype sdt)
{
    lin_init(p, name, f, N, K);
    p->l.bits = 8;
    p->l.symmetric = true;
    qc_tensor *w = mk(p, "weight", QC_DT_F8_E4M3, 2, N, K);
    uint8_t *wb = (uint8_t *)w->data;
    for (int64_t i = 0; i < N * K; i++) {
        uint8_t b = (uint8_t)urand();
        wb[i] = (b & 0x7f) == 0x7f ? (uint8_t)(b ^ 1) : b; /* no NaN codes */
    }
    qc_tensor *s;
    if (f == QC_FMT_FP8_BLOCK) {
        p->l.block_n = bn;
        p->l.block_k = bk;
        s = mk(p, "weight_scale_inv", sdt, 2, cdiv(N, bn), cdiv(K, bk));
    } else if (f == QC_FMT_FP8_TENSOR) {
        s = mk(p, "weight_scale", sdt, 1, 1, 0);
    } else {
        s = mk(p, "weight_scale", sdt, 2, N, 1);
    }
    for (int64_t i = 0; i < s->numel; i++) put_f(s, i, rscale(6));
    p->l.weight = w;
    p->l.scale = s;
}

/* dst's g_idx := src's (act-order parts of one input share it, as GPTQ's
 * Hessian order is the same for Linears that read the same x). */
static void copy_gidx(pub *dst, const pub *src)
{
    memcpy((void *)dst->l.g_idx->data, src->l.g_idx->data, (size_t)src->l.g_idx->numel * 4);
}

/* gidx: 0 none, 1 act-order (a permutation, G per group), 2 uneven random groups. */
static void build_gptq(pub *p, const char *name, int64_t N, int64_t K, int G, int v1, int sym, int gidx)
{
    lin_init(p, name, QC_FMT_GPTQ, N, K);
    p->l.bits = 4;
    p->l.group_size = G;
    p->l.symmetric = sym;
    p->l.zero_bias = v1;
    const int64_t ng = cdiv(K, G);
    qc_tensor *qw = mk(p, "qweight", QC_DT_I32, 2, K / 8, N);
    qc_tensor *qz = mk(p, "qzeros", QC_DT_I32, 2, ng, cdiv(N, 8));
    qc_tensor *sc = mk(p, "scales", QC_DT_F16, 2, ng, N);
    for (int64_t k = 0; k < K; k++)
        for (int64_t n = 0; n < N; n++) set_nib(qw, (k / 8) * N + n, (int)(k % 8), rnd(16));
    for (int64_t g = 0; g < ng; g++)
        for (int64_t n = 0; n < N; n++) {
            set_nib(qz, g * cdiv(N, 8) + n / 8, (int)(n % 8), sym ? (uint32_t)(8 - v1) : rnd(16));
            put_f(sc, g * N + n, rscale(8));
        }
    if (gidx) {
        qc_tensor *gi = mk(p, "g_idx", QC_DT_I32, 1, K, 0);
        int32_t *gv = (int32_t *)gi->data;
        int64_t *perm = malloc((size_t)K * sizeof *perm);
        for (int64_t k = 0; k < K; k++) perm[k] = k;
        for (int64_t k = K - 1; k > 0; k--) {
            int64_t j = rnd((uint32_t)k + 1), t = perm[k];
            perm[k] = perm[j];
            perm[j] = t;
        }
        for (int64_t k = 0; k < K; k++) gv[k] = gidx == 1 ? (int32_t)(perm[k] / G) : (int32_t)rnd((uint32_t)ng);
        free(perm);
        p->l.g_idx = gi;
    }
    p->l.weight = qw;
    p->l.zeros = qz;
    p->l.scale = sc;
}

static void build_awq(pub *p, const char *name, int64_t N, int64_t K, int G)
{
    static const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    lin_init(p, name, QC_FMT_AWQ, N, K);
    p->l.bits = 4;
    p->l.group_size = G;
    const int64_t ng = cdiv(K, G);
    qc_tensor *qw = mk(p, "qweight", QC_DT_I32, 2, K, N / 8);
    qc_tensor *qz = mk(p, "qzeros", QC_DT_I32, 2, ng, N / 8);
    qc_tensor *sc = mk(p, "scales", QC_DT_F16, 2, ng, N);
    for (int64_t k = 0; k < K; k++)
        for (int64_t c = 0; c < N / 8; c++)
            for (int s = 0; s < 8; s++) set_nib(qw, k * (N / 8) + c, s, rnd(16));
    for (int64_t g = 0; g < ng; g++)
        for (int64_t c = 0; c < N / 8; c++)
            for (int s = 0; s < 8; s++) {
                set_nib(qz, g * (N / 8) + c, s, rnd(16));
                put_f(sc, g * N + 8 * c + order[s], rscale(8));
            }
    p->l.weight = qw;
    p->l.zeros = qz;
    p->l.scale = sc;
}

static void build_ct(pub *p, const char *name, int64_t N, int64_t K, int G, int asym, int gidx)
{
    lin_init(p, name, QC_FMT_CT_INT, N, K);
    p->l.bits = 4;
    p->l.group_size = G;
    p->l.symmetric = !asym;
    const int64_t ng = cdiv(K, G), kw = cdiv(K, 8);
    qc_tensor *wp = mk(p, "weight_packed", QC_DT_I32, 2, N, kw);
    qc_tensor *sc = mk(p, "weight_scale", QC_DT_BF16, 2, N, ng);
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++) set_nib(wp, n * kw + k / 8, (int)(k % 8), rnd(16));
        for (int64_t g = 0; g < ng; g++) put_f(sc, n * ng + g, rscale(7));
    }
    if (asym) {
        qc_tensor *zp = mk(p, "weight_zero_point", QC_DT_I32, 2, cdiv(N, 8), ng);
        for (int64_t n = 0; n < N; n++)
            for (int64_t g = 0; g < ng; g++) set_nib(zp, (n / 8) * ng + g, (int)(n % 8), rnd(16));
        p->l.zeros = zp;
    }
    if (gidx) {
        qc_tensor *gi = mk(p, "weight_g_idx", QC_DT_I32, 1, K, 0);
        for (int64_t k = 0; k < K; k++) ((int32_t *)gi->data)[k] = (int32_t)rnd((uint32_t)ng);
        p->l.g_idx = gi;
    }
    p->l.weight = wp;
    p->l.scale = sc;
}

static void build_fp4(pub *p, const char *name, qc_format f, int64_t N, int64_t K, float global)
{
    const bool mx = f == QC_FMT_MXFP4_CT;
    lin_init(p, name, f, N, K);
    p->l.bits = 4;
    p->l.group_size = mx ? 32 : 16;
    p->l.symmetric = true;
    const int64_t nb = cdiv(K, mx ? 32 : 16);
    qc_tensor *w = mk(p, mx || f == QC_FMT_NVFP4_CT ? "weight_packed" : "weight", QC_DT_U8, 2, N, K / 2);
    qc_tensor *s = mk(p, "weight_scale", mx ? QC_DT_U8 : QC_DT_F8_E4M3, 2, N, nb);
    for (int64_t i = 0; i < N * K / 2; i++) ((uint8_t *)w->data)[i] = (uint8_t)urand();
    for (int64_t i = 0; i < N * nb; i++)
        ((uint8_t *)s->data)[i] = (uint8_t)(mx ? 118 + rnd(12) : 0x20 + rnd(0x40));
    p->l.weight = w;
    p->l.scale = s;
    if (!mx) {
        qc_tensor *g = mk(p, f == QC_FMT_NVFP4_CT ? "weight_global_scale" : "weight_scale_2", QC_DT_F32, 1, 1, 0);
        put_f(g, 0, global);
        p->l.global_scale = g;
    }
}

static void build_bf16(pub *p, const char *name, int64_t N, int64_t K)
{
    lin_init(p, name, QC_FMT_BF16, N, K);
    p->l.bits = 16;
    p->l.symmetric = true;
    qc_tensor *w = mk(p, "weight", QC_DT_BF16, 2, N, K);
    for (int64_t i = 0; i < N * K; i++) put_f(w, i, (float)((double)(urand() >> 11) / 4503599627370496.0 - 1.0));
    p->l.weight = w;
}

/* ---- GPU plumbing ----------------------------------------------------------- */

static int gpu_ok = -1; /* 1 usable, 0 not */
static const char *gpu_why = "no CUDA device";

#ifdef QC_HAVE_CUDA
static bool gpu_init(void)
{
    if (gpu_ok >= 0)
        return gpu_ok;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        gpu_ok = 0;
        gpu_why = "no CUDA device";
        return false;
    }
    gpu_ok = 1;
    return true;
}
#else
static bool gpu_init(void)
{
    gpu_ok = 0;
    return false;
}
#endif

/* ---- one case ---------------------------------------------------------------- */

#ifdef QC_HAVE_CUDA
static double rel_l2(const float *a, const double *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* yr = ref x in double: the N x K dequantized weights times the bf16 x (as floats). */
static void ref_gemv(const float *ref, const float *xf, int64_t N, int64_t K, double *yr)
{
    for (int64_t n = 0; n < N; n++) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) s += (double)ref[n * K + k] * xf[k];
        yr[n] = s;
    }
}
#endif

static int64_t emulate_decode(const qk_qweight *q, const float *ref);

/* INT4 weights packed in the tiled layout (quant.h) where they can take it:
 * main runs the INT4 cases whose K is a multiple of 1024 both ways. */
static bool g_tile;

/* The row packer writes every byte of its rows (the loader's staging buffers
 * are reused, never zeroed): h's weight packed again in two row ranges, the
 * second starting at a multiple of 8 that is not one of 64, into a buffer of
 * junk, must equal the whole-tensor pack. */
static void rows_junk_check(const char *name, const qc_linear *l, const qk_qweight *h)
{
    char cname[160];
    snprintf(cname, sizeof cname, "repack_rows_junk_%s", name);
    const size_t rb = qc_qweight_row_bytes(h);
    int64_t split = (int64_t)h->n_pad / 2 / 8 * 8;
    if (split % 64 == 0 && split >= 8)
        split -= 8;
    unsigned char *buf = malloc(h->w_bytes ? h->w_bytes : 1);
    if (!buf) {
        CHECK(cname, 0, "no memory for %zu bytes", h->w_bytes);
        return;
    }
    memset(buf, 0xa5, h->w_bytes);
    qc_err err = {0};
    int rc = qc_qweight_pack_rows(l, h, QC_QW_WEIGHT, 0, split, buf, &err);
    if (!rc)
        rc = qc_qweight_pack_rows(l, h, QC_QW_WEIGHT, split, h->n_pad - split, buf + (size_t)split * rb, &err);
    CHECK(cname, !rc && !memcmp(buf, h->w, h->w_bytes), "%s", rc ? err.msg : "bytes differ from the whole pack");
    free(buf);
}

static void case_checks(const char *name, pub *p)
{
    char cname[128];
    qc_err err = {0};
    const qc_linear *l = &p->l;
    const int64_t N = l->n, K = l->k;
    snprintf(cname, sizeof cname, "repack_%s", name);
    int rc = qc_linear_validate(l, &err);
    if (rc) {
        CHECK(cname, 0, "test weight does not validate: %s", err.msg);
        return;
    }
    float *ref = malloc((size_t)(N * K) * sizeof *ref), *unp = malloc((size_t)(N * K) * sizeof *unp);
    qc_linear_dequant_rows(l, 0, N, ref);
    qk_qweight h;
    double t0 = qc_now();
    rc = qc_qweight_pack_tiled(l, &h, g_tile, &err);
    double pack_s = qc_now() - t0;
    if (rc) {
        CHECK(cname, 0, "pack failed: %s", err.msg);
        free(ref);
        free(unp);
        return;
    }
    rows_junk_check(name, l, &h);
    if (g_tile && h.kind == QK_QW_INT4 && strstr(name, "tiled_")) { /* the cases named so are tileable */
        char tname[160];
        snprintf(tname, sizeof tname, "repack_is_tiled_%s", name);
        CHECK(tname, h.tiled, "packed untiled (n_pad %d, k_pad %d, group %d)", h.n_pad, h.k_pad, (int)l->group_size);
    }
    if (h.kind == QK_QW_INT4) { /* 16-bit scales alone exactly where tiled and every zero is 8 */
        char sname[160];
        snprintf(sname, sizeof sname, "repack_s16_%s", name);
        const bool want = g_tile && h.tiled && l->symmetric;
        CHECK(sname, h.s16 == want && h.s_bytes == (size_t)h.n_pad * (size_t)h.ngroups * (h.s16 ? 2 : 4),
              "s16 %d (expected %d: tiled %d, symmetric %d), %zu scale bytes", h.s16, want, h.tiled, l->symmetric,
              h.s_bytes);
    }
    qc_qweight_unpack_rows(&h, 0, N, unp);
    double maxrel = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < N * K; i++) {
        double d = fabs((double)unp[i] - ref[i]), m = fabs((double)ref[i]);
        double r = m > 0 ? d / m : d;
        if (!(r <= 1e-6))
            bad++;
        if (r > maxrel || r != r)
            maxrel = r;
    }
    printf("# %s: %s N=%lld K=%lld n_pad=%d k_pad=%d packed %zu+%zu+%zu bytes in %.1f ms (%.0f MB/s), "
           "max rel diff %.3g\n",
           cname, qc_format_name(l->format), (long long)N, (long long)K, h.n_pad, h.k_pad, h.w_bytes,
           h.s_bytes, h.perm_bytes, pack_s * 1e3, (double)qk_qweight_bytes(&h) / (pack_s > 0 ? pack_s : 1e-9) / 1e6,
           maxrel);
    CHECK(cname, bad == 0, "%lld of %lld weights differ after repacking (max rel %.3g)", (long long)bad,
          (long long)(N * K), maxrel);

    int64_t ebad = emulate_decode(&h, ref);
    if (ebad >= 0) {
        snprintf(cname, sizeof cname, "qdecode_emul_%s", name);
        CHECK(cname, ebad == 0, "%lld weights decode wrongly through the kernel's bit tricks", (long long)ebad);
    }

    char gname[128], dname[128];
    snprintf(gname, sizeof gname, "qgemv_%s", name);
    snprintf(dname, sizeof dname, "qdequant_%s", name);
    if (!gpu_init()) {
        th_skip(gname, gpu_why);
        th_skip(dname, gpu_why);
        qc_qweight_free_host(&h);
        free(ref);
        free(unp);
        return;
    }
#ifdef QC_HAVE_CUDA
    qk_qweight d;
    rc = qc_qweight_upload(&h, &d, &err);
    if (rc) {
        CHECK(gname, 0, "upload: %s", err.msg);
        qc_qweight_free_host(&h);
        free(ref);
        free(unp);
        return;
    }
    /* x: bf16 in [-1, 1]; the reference uses the same rounded values. */
    uint16_t *xb = malloc((size_t)K * 2);
    float *xf = malloc((size_t)K * sizeof *xf);
    for (int64_t k = 0; k < K; k++) {
        xb[k] = qc_f32_to_bf16((float)((double)(urand() >> 11) / 4503599627370496.0 - 1.0));
        xf[k] = qc_bf16_to_f32(xb[k]);
    }
    double *yr = malloc((size_t)N * sizeof *yr), *yr0 = malloc((size_t)N * sizeof *yr0);
    ref_gemv(ref, xf, N, K, yr0);
    uint16_t *dx;
    float *dy, *y = malloc((size_t)N * sizeof *y);
    uint16_t *dq, *hq;
    const int64_t ld = K + 8;
    cudaMalloc((void **)&dx, (size_t)K * 2);
    cudaMalloc((void **)&dy, (size_t)N * 4);
    cudaMalloc((void **)&dq, (size_t)(N * ld) * 2);
    hq = malloc((size_t)(N * ld) * 2);
    cudaMemcpy(dx, xb, (size_t)K * 2, cudaMemcpyHostToDevice);
    /* Each launch path of gemv_multi.cu (qk_gemv_q_mode): the default
     * (PDL with the L2 prime, x staged in shared memory for FP4), its
     * kernels as plain launches, x through L1, PDL with FP4 on 2 blocks
     * per SM, PDL with x staged for every body that can, x staged on 3
     * blocks per SM, the default without the streamed kernel (INT4 g128
     * walks). */
    static const struct {
        int mode;
        const char *tag;
    } paths[] = {{0, ""}, {7, "nopdl_"}, {1, "plain_"}, {2, "pdl_"}, {5, "xs_"}, {6, "xs3_"}, {10, "walk_"}};
    int krc = 0, src = 0;
    cudaStream_t qs; /* not the legacy stream: PDL launches need a real one */
    cudaStreamCreateWithFlags(&qs, cudaStreamNonBlocking);
    for (size_t m = 0; m < sizeof paths / sizeof paths[0]; m++) {
        char mname[160];
        snprintf(mname, sizeof mname, "qgemv_%s%s", paths[m].tag, name);
        qk_gemv_q_mode = paths[m].mode;
        for (int64_t n = 0; n < N; n++) yr[n] = yr0[n];
        cudaMemset(dy, 0xff, (size_t)N * 4); /* NaN: an unwritten row fails */
        cudaDeviceSynchronize();             /* qs does not wait for the legacy stream */
        krc = qk_gemv_q(&d, dx, dy, 0, qs);
        src = (int)cudaStreamSynchronize(qs);
        cudaMemcpy(y, dy, (size_t)N * 4, cudaMemcpyDeviceToHost);
        double e1 = rel_l2(y, yr, N);
        /* Accumulating form: y = 1 + W x. */
        for (int64_t n = 0; n < N; n++) y[n] = 1.0f;
        cudaMemcpy(dy, y, (size_t)N * 4, cudaMemcpyHostToDevice);
        cudaDeviceSynchronize();
        int krc2 = qk_gemv_q(&d, dx, dy, 1, qs);
        cudaStreamSynchronize(qs);
        cudaMemcpy(y, dy, (size_t)N * 4, cudaMemcpyDeviceToHost);
        for (int64_t n = 0; n < N; n++) yr[n] += 1.0;
        double e2 = rel_l2(y, yr, N);
        printf("# %s: rel_l2 %.3g (accumulate %.3g)\n", mname, e1, e2);
        CHECK(mname, krc == 0 && krc2 == 0 && src == 0 && e1 < 1e-5 && e2 < 1e-5,
              "launch %d/%d sync %d, rel_l2 %.3g, accumulate rel_l2 %.3g", krc, krc2, src, e1, e2);
    }
    qk_gemv_q_mode = 0;
    cudaStreamDestroy(qs);

    cudaMemset(dq, 0xff, (size_t)(N * ld) * 2);
    krc = qk_dequant_q_bf16(&d, dq, (int)ld, NULL);
    src = (int)cudaDeviceSynchronize();
    cudaMemcpy(hq, dq, (size_t)(N * ld) * 2, cudaMemcpyDeviceToHost);
    int64_t dbad = 0, inexact = 0, padbad = 0;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < K; k++) {
            uint16_t want = qc_f32_to_bf16(ref[n * K + k]), got = hq[n * ld + k];
            if (got == want)
                continue;
            inexact++;
            double a = qc_bf16_to_f32(got), b = qc_bf16_to_f32(want);
            if (!(fabs(a - b) <= fabs(b) * (1.0 / 128))) /* one bf16 step */
                dbad++;
        }
        for (int64_t k = K; k < ld; k++) padbad += hq[n * ld + k] != 0xffff;
    }
    printf("# %s: %lld of %lld differ from round(dequant) by one bf16 step\n", dname, (long long)inexact,
           (long long)(N * K));
    CHECK(dname, krc == 0 && src == 0 && dbad == 0 && padbad == 0,
          "launch %d sync %d, %lld values off by more than one bf16 step, %lld padding writes", krc, src,
          (long long)dbad, (long long)padbad);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dq);
    free(hq);
    free(xb);
    free(xf);
    free(yr);
    free(yr0);
    free(y);
    qc_qweight_free_dev(&d);
#endif
    qc_qweight_free_host(&h);
    free(ref);
    free(unp);
}

/* One weight through every check above, then freed. */
static void run_case(const char *name, pub *p)
{
    case_checks(name, p);
    pub_free(p);
}

/* The GPU kernels' per-code decoding, transcribed to C, applied to the packed
 * host layout: checks the bit tricks themselves (the INT4 2^23 magic with
 * its in-place nibbles scaled by 16^e, the FP4 f16x2 masks) without a GPU. Returns the
 * number of weights whose emulated value differs from ref by more than
 * 1e-6 relative; -1 when the kind has no emulation (FP8 uses a hardware cvt). */
static float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static int64_t emulate_decode(const qk_qweight *q, const float *ref)
{
    const int64_t N = q->n, K = q->k, kw = q->k_pad / 8;
    int64_t bad = 0;
    if (q->kind != QK_QW_INT4 && q->kind != QK_QW_NVFP4 && q->kind != QK_QW_MXFP4)
        return -1;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t p = 0; p < q->k_pad; p++) {
            int64_t k = q->perm ? q->perm[p] : p;
            if (k < 0 || k >= K)
                continue;
            const uint32_t word = ((const uint32_t *)q->w)[qk_int4_tile_index(q->tiled, (size_t)n, (size_t)(p / 8), (size_t)kw, 128)];
            const int j = (int)(p % 8);
            float v;
            if (q->kind == QK_QW_INT4) {
                int64_t g = q->perm ? q->perm[q->k_pad + p / 32] : p / q->group;
                uint32_t m = qk_int4_sword_at(q->s, qk_int4_tile_index(q->tiled, (size_t)n, (size_t)g, (size_t)q->ngroups,
                                                                    q->tiled ? (size_t)(1024 / q->group) : 1), q->s16);
                float s = q->scale_f16 ? qc_f16_to_f32((uint16_t)m) : qc_bf16_to_f32((uint16_t)m);
                /* nibbles 0-4 in place, 5-7 from word >> 12: (q - z) * 16^e exactly */
                uint32_t z = (m >> 16) & 0xffu, b = j < 5 ? word : word >> 12;
                int e = j < 5 ? j : j - 3;
                v = f32_of((b & (0xfu << (4 * e))) | 0x4b000000u) - f32_of(0x4b000000u | (z << (4 * e)));
                v = ldexpf(v, -4 * e) * s;
            } else {
                uint32_t h[4] = {word & 0x8e008e00u, (word << 3) & 0x8e008e00u,
                                 ((word << 9) & 0x0e000e00u) | ((word << 2) & 0x80008000u),
                                 ((word << 6) & 0x0e000e00u) | ((word << 1) & 0x80008000u)};
                uint32_t hp = h[j / 2];
                float e = qc_f16_to_f32((uint16_t)(j % 2 ? hp >> 16 : hp & 0xffffu)) * 16384.0f;
                const uint8_t *sb = (const uint8_t *)q->s;
                float s;
                if (q->kind == QK_QW_MXFP4)
                    s = ldexpf(1.0f, (int)sb[n * (q->k_pad / 32) + k / 32] - 127);
                else
                    s = qc_e4m3_to_f32(sb[n * (q->k_pad / 16) + k / 16]);
                v = e * (s * q->gmul);
            }
            double r = ref[n * K + k], d = fabs((double)v - r);
            if (!(d <= 1e-6 * fabs(r)))
                bad++;
        }
    }
    return bad;
}

/* A check over np parts starts here: false (the parts freed, a skip
 * printed) when there is no GPU. */
static bool parts_gpu_or_skip(const char *name, pub *p, int np)
{
    if (gpu_init()) return true;
    th_skip(name, gpu_why);
    for (int i = 0; i < np; i++) pub_free(&p[i]);
    return false;
}

#ifdef QC_HAVE_CUDA
/* Packs and uploads part i; false with the reason in why on failure. */
static bool part_upload(const pub *p, int i, qk_qweight *d, char *why, size_t wn)
{
    qc_err err = {0};
    qk_qweight h;
    bool ok = true;
    if (qc_qweight_pack_tiled(&p->l, &h, g_tile, &err) || qc_qweight_upload(&h, d, &err)) {
        ok = false;
        snprintf(why, wn, "part %d: %.200s", i, err.msg);
        memset(d, 0, sizeof *d);
    }
    qc_qweight_free_host(&h);
    return ok;
}

/* Uploaded parts whose act-order permutations are equal share the first
 * one's device copy, as the loader makes them (cuda_backend.c load_part):
 * such a launch stages x once in that order (gemv_multi.cu). */
static void perms_share(qk_qweight *d, int np, bool *shared)
{
    for (int i = 0; i < np; i++) {
        shared[i] = false;
        for (int j = 0; j < i && d[i].perm && !shared[i]; j++) {
            if (!d[j].perm || shared[j] || d[j].perm_bytes != d[i].perm_bytes) continue;
            char *a = malloc(d[i].perm_bytes), *b = malloc(d[i].perm_bytes);
            cudaMemcpy(a, d[i].perm, d[i].perm_bytes, cudaMemcpyDeviceToHost);
            cudaMemcpy(b, d[j].perm, d[i].perm_bytes, cudaMemcpyDeviceToHost);
            if (!memcmp(a, b, d[i].perm_bytes)) {
                cudaFree(d[i].perm);
                d[i].perm = d[j].perm;
                shared[i] = true;
            }
            free(a);
            free(b);
        }
    }
}

/* The end of such a check: default launch path, parts freed (a shared
 * permutation with its owner). */
static void parts_release(pub *p, qk_qweight *d, const bool *shared, int np)
{
    qk_gemv_q_mode = 0;
    for (int i = 0; i < np; i++) {
        if (shared[i]) d[i].perm = NULL;
        qc_qweight_free_dev(&d[i]);
        pub_free(&p[i]);
    }
}
#endif

#ifdef QC_HAVE_CUDA
/* The late writer of buf (kernels.h qk_test_late_copy): once the launches
 * before it are done, its contents saved in *good (allocated on first use;
 * the caller frees it) and buf poisoned with NaN bytes; the device
 * synchronised again (the caller's own poisoning, issued before, is in
 * place too); then the writer launched on qs, which puts *good back 200 us
 * after the launches behind it may have started. */
static int late_write(void *buf, size_t bytes, void **good, cudaStream_t qs)
{
    if (!*good && cudaMalloc(good, bytes) != cudaSuccess) return (int)cudaErrorMemoryAllocation;
    cudaDeviceSynchronize();
    cudaMemcpy(*good, buf, bytes, cudaMemcpyDeviceToDevice);
    cudaMemset(buf, 0xff, bytes);
    int rc = (int)cudaDeviceSynchronize();
    void *const d[1] = {buf};
    const void *const g[1] = {*good};
    return rc ? rc : qk_test_late_copy(d, g, &bytes, 1, 200000, qs);
}
#endif

/* One launch over np weights sharing x (K inputs): each part's output
 * against its own reference, on every launch path (see run_case). Frees
 * the parts. */
static void fused_check(const char *name, pub *p, int np, int64_t K)
{
    if (!parts_gpu_or_skip(name, p, np)) return;
#ifdef QC_HAVE_CUDA
    qk_qweight d[QK_GEMV_MAX_PARTS];
    const qk_qweight *dp[QK_GEMV_MAX_PARTS];
    float *dy[QK_GEMV_MAX_PARTS];
    double *yr[QK_GEMV_MAX_PARTS];
    uint16_t *xb = malloc((size_t)K * 2), *dx;
    float *xf = malloc((size_t)K * sizeof *xf);
    for (int64_t k = 0; k < K; k++) {
        xb[k] = qc_f32_to_bf16((float)((double)(urand() >> 11) / 4503599627370496.0 - 1.0));
        xf[k] = qc_bf16_to_f32(xb[k]);
    }
    cudaMalloc((void **)&dx, (size_t)K * 2);
    cudaMemcpy(dx, xb, (size_t)K * 2, cudaMemcpyHostToDevice);
    int ok = 1;
    char why[256] = "";
    for (int i = 0; i < np; i++) {
        const int64_t N = p[i].l.n;
        float *ref = malloc((size_t)(N * K) * sizeof *ref);
        qc_linear_dequant_rows(&p[i].l, 0, N, ref);
        yr[i] = malloc((size_t)N * sizeof *yr[i]);
        ref_gemv(ref, xf, N, K, yr[i]);
        free(ref);
        if (!part_upload(&p[i], i, &d[i], why, sizeof why)) ok = 0;
        dp[i] = &d[i];
        cudaMalloc((void **)&dy[i], (size_t)N * 4);
    }
    bool shared[QK_GEMV_MAX_PARTS];
    perms_share(d, np, shared);
    /* 11 (phase 2's plain numbering) must give path 0's very bits: it moves
     * groups between warps, not the order of any sum. 100 + P is path P (0,
     * 10: the PDL launches) with x poisoned and written by qk_test_late_copy,
     * which lets the GEMV start at once and writes 200 us later: a GEMV that
     * read x before its PDL wait would not give path P's bits (K % 8 == 0:
     * 16-byte copies). */
    static const int modes[] = {0, 7, 1, 5, 6, 10, 11, 100, 110};
    void *dgood = NULL;
    float *y0[QK_GEMV_MAX_PARTS] = {NULL}, *y10[QK_GEMV_MAX_PARTS] = {NULL};
    cudaStream_t qs;
    cudaStreamCreateWithFlags(&qs, cudaStreamNonBlocking);
    for (size_t m = 0; ok && m < sizeof modes / sizeof modes[0]; m++) {
        const bool late = modes[m] >= 100;
        const int path = late ? modes[m] - 100 : modes[m];
        if (late && K % 8) {
            printf("# %s: no late-writer run (K %% 8 != 0)\n", name);
            break;
        }
        qk_gemv_q_mode = path;
        for (int i = 0; i < np; i++) cudaMemset(dy[i], 0xff, (size_t)p[i].l.n * 4);
        int krc = late ? late_write(dx, (size_t)K * 2, &dgood, qs) : (int)cudaDeviceSynchronize();
        if (!krc) krc = qk_gemv_multi(dp, dy, np, dx, 0, qs);
        int src = (int)cudaStreamSynchronize(qs);
        double worst = 0;
        int64_t moved = 0;
        for (int i = 0; i < np; i++) {
            const int64_t N = p[i].l.n;
            float *y = malloc((size_t)N * sizeof *y);
            cudaMemcpy(y, dy[i], (size_t)N * 4, cudaMemcpyDeviceToHost);
            double e = rel_l2(y, yr[i], N);
            printf("# %s (path %d): part %d (%s, N=%lld) rel_l2 %.3g\n", name, modes[m], i,
                   qc_format_name(p[i].l.format), (long long)N, e);
            if (!(e <= worst))
                worst = e;
            const float *want = path == 10 ? y10[i] : y0[i];
            if ((path == 11 || late) && want) moved += memcmp(y, want, (size_t)N * 4) != 0;
            if (modes[m] == 0) y0[i] = y;
            else if (modes[m] == 10) y10[i] = y;
            else free(y);
        }
        ok = krc == 0 && src == 0 && worst < 1e-5 && moved == 0;
        snprintf(why, sizeof why, "path %d%s: launch %d sync %d worst rel_l2 %.3g%s", path,
                 late ? " behind a late writer of x" : "", krc, src, worst,
                 moved ? late ? ", not bit-identical to the same path without it" : ", not bit-identical to path 0" : "");
    }
    for (int i = 0; i < np; i++) {
        free(y0[i]);
        free(y10[i]);
    }
    cudaFree(dgood);
    cudaStreamDestroy(qs);
    CHECK(name, ok, "%s", why);
    for (int i = 0; i < np; i++) {
        cudaFree(dy[i]);
        free(yr[i]);
    }
    parts_release(p, d, shared, np);
    cudaFree(dx);
    free(xb);
    free(xf);
#else
    (void)K;
#endif
}

#ifdef QC_HAVE_CUDA
/* How many of the n 32-bit words at device pointers a and b differ. */
static int64_t words_differ(const void *a, const void *b, int64_t n)
{
    uint32_t *ha = malloc((size_t)n * 4), *hb = malloc((size_t)n * 4);
    cudaMemcpy(ha, a, (size_t)n * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(hb, b, (size_t)n * 4, cudaMemcpyDeviceToHost);
    int64_t d = 0;
    for (int64_t i = 0; i < n; i++) d += ha[i] != hb[i];
    free(ha);
    free(hb);
    return d;
}
#endif

/* qk_gemv_multi_norm against qk_rmsnorm1p + qk_gemv_multi: the folded norm
 * must stage the very bf16 x the norm kernel writes, so y is bit-identical
 * (on the default path and with every body on 3 blocks per SM); or, where
 * expect_fused is 0, it must refuse (QK_GEMV_UNFUSED) and launch nothing.
 * conv_c > 0: with the GDN conv epilogue on part 0's first conv_c rows,
 * against qk_conv_silu (T = 1) after the separate GEMV: out and the
 * shifted state bit-identical too. */
static void norm_check(const char *name, pub *p, int np, int64_t K, int expect_fused, int conv_c)
{
    if (!parts_gpu_or_skip(name, p, np)) return;
#ifdef QC_HAVE_CUDA
    qk_qweight d[QK_GEMV_MAX_PARTS];
    const qk_qweight *dp[QK_GEMV_MAX_PARTS];
    float *dyr[QK_GEMV_MAX_PARTS], *dyf[QK_GEMV_MAX_PARTS];
    float *h = malloc((size_t)K * sizeof *h), *nw = malloc((size_t)K * sizeof *nw), *dh, *dw;
    uint16_t *dxb;
    /* conv: weights [C][4], two copies of one random state [C][3], outputs */
    const int C = conv_c > 0 ? conv_c : 1;
    float *cw = malloc((size_t)C * 4 * sizeof *cw), *cs0 = malloc((size_t)C * 3 * sizeof *cs0), *dcw, *dcs[2], *dco[2];
    for (int i = 0; i < 4 * C; i++) cw[i] = (float)((double)(urand() >> 11) / 9007199254740992.0 - 0.5);
    for (int i = 0; i < 3 * C; i++) cs0[i] = (float)((double)(urand() >> 11) / 4503599627370496.0 - 1.0);
    cudaMalloc((void **)&dcw, (size_t)C * 16);
    cudaMemcpy(dcw, cw, (size_t)C * 16, cudaMemcpyHostToDevice);
    for (int j = 0; j < 2; j++) {
        cudaMalloc((void **)&dcs[j], (size_t)C * 12);
        cudaMalloc((void **)&dco[j], (size_t)C * 4);
    }
    for (int64_t k = 0; k < K; k++) {
        h[k] = (float)((double)(urand() >> 11) / 2251799813685248.0 - 2.0) * (k % 7 == 0 ? 8.0f : 1.0f);
        nw[k] = (float)((double)(urand() >> 11) / 9007199254740992.0 - 0.5);
    }
    cudaMalloc((void **)&dh, (size_t)K * 4);
    cudaMalloc((void **)&dw, (size_t)K * 4);
    cudaMalloc((void **)&dxb, (size_t)K * 2 + 16);
    cudaMemcpy(dh, h, (size_t)K * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dw, nw, (size_t)K * 4, cudaMemcpyHostToDevice);
    int ok = 1;
    char why[256] = "";
    for (int i = 0; i < np; i++) {
        if (!part_upload(&p[i], i, &d[i], why, sizeof why)) ok = 0;
        dp[i] = &d[i];
        cudaMalloc((void **)&dyr[i], (size_t)p[i].l.n * 4);
        cudaMalloc((void **)&dyf[i], (size_t)p[i].l.n * 4);
    }
    bool shared[QK_GEMV_MAX_PARTS];
    perms_share(d, np, shared);
    /* 100 + P: path P with the fused launch's h poisoned and written by
     * qk_test_late_copy 200 us after the launch may start (fused_check) */
    static const int modes[] = {0, 6, 10, 100, 110};
    void *dgood = NULL;
    cudaStream_t qs;
    cudaStreamCreateWithFlags(&qs, cudaStreamNonBlocking);
    for (size_t m = 0; ok && m < sizeof modes / sizeof modes[0]; m++) {
        const bool late = modes[m] >= 100;
        if (late && !expect_fused) break; /* nothing launched to test */
        qk_gemv_q_mode = late ? modes[m] - 100 : modes[m];
        for (int i = 0; i < np; i++) cudaMemset(dyf[i], 0xff, (size_t)p[i].l.n * 4);
        for (int j = 0; j < 2; j++) cudaMemcpy(dcs[j], cs0, (size_t)C * 12, cudaMemcpyHostToDevice);
        int rc = qk_rmsnorm1p(dh, dw, 1e-6f, 1, (int)K, dxb, NULL, qs);
        rc |= qk_gemv_multi(dp, dyr, np, dxb, 0, qs);
        if (conv_c > 0) rc |= qk_conv_silu(dyr[0], (int)p[0].l.n, dcw, dcs[0], 1, C, dco[0], qs);
        const qk_conv_epi ce = {dcw, dcs[1], dco[1], C};
        if (late) rc |= late_write(dh, (size_t)K * 4, &dgood, qs); /* after the reference launches (they read h) */
        const int frc = qk_gemv_multi_norm(dp, dyf, np, dh, dw, 1e-6f, 0, conv_c > 0 ? &ce : NULL, qs);
        rc |= (int)cudaStreamSynchronize(qs);
        int bad_rc = 0; /* a conv on more rows than part 0 has, or with accumulate: refused */
        if (conv_c > 0 && expect_fused && !late) {
            const qk_conv_epi too_many = {dcw, dcs[1], dco[1], (int)p[0].l.n + 1};
            bad_rc = qk_gemv_multi_norm(dp, dyf, np, dh, dw, 1e-6f, 0, &too_many, qs) != 1 ||
                     qk_gemv_multi_norm(dp, dyf, np, dh, dw, 1e-6f, 1, &ce, qs) != 1;
        }
        if (!expect_fused) {
            ok = rc == 0 && frc == QK_GEMV_UNFUSED;
            snprintf(why, sizeof why, "returned %d (want QK_GEMV_UNFUSED), other launches %d", frc, rc);
            for (int i = 0; ok && i < np; i++) { /* nothing launched: y untouched (0xff bytes) */
                uint32_t w0 = 0;
                cudaMemcpy(&w0, dyf[i], 4, cudaMemcpyDeviceToHost);
                ok = w0 == 0xffffffffu;
            }
            continue;
        }
        int64_t diff = 0, tot = 0;
        for (int i = 0; i < np; i++) {
            diff += words_differ(dyr[i], dyf[i], p[i].l.n);
            tot += p[i].l.n;
        }
        if (conv_c > 0) { /* conv outputs and states: C + 3C words */
            diff += words_differ(dco[0], dco[1], C) + words_differ(dcs[0], dcs[1], 3 * (int64_t)C);
            tot += 4 * C;
        }
        printf("# %s (path %d%s): %lld of %lld outputs differ from norm + GEMV\n", name, qk_gemv_q_mode,
               late ? ", h written late" : "", (long long)diff, (long long)tot);
        ok = rc == 0 && frc == 0 && diff == 0 && !bad_rc;
        snprintf(why, sizeof why, "path %d: launches %d / %d, %lld of %lld outputs not bit-identical%s", modes[m], rc,
                 frc, (long long)diff, (long long)tot, bad_rc ? ", a bad conv epilogue was not refused" : "");
    }
    cudaFree(dgood);
    cudaStreamDestroy(qs);
    CHECK(name, ok, "%s", why);
    for (int i = 0; i < np; i++) {
        cudaFree(dyr[i]);
        cudaFree(dyf[i]);
    }
    parts_release(p, d, shared, np);
    cudaFree(dh);
    cudaFree(dw);
    cudaFree(dxb);
    cudaFree(dcw);
    for (int j = 0; j < 2; j++) {
        cudaFree(dcs[j]);
        cudaFree(dco[j]);
    }
    free(h);
    free(nw);
    free(cw);
    free(cs0);
#else
    (void)K;
    (void)expect_fused;
    (void)conv_c;
#endif
}

static void test_norm_fused(void)
{
    pub p[4];
    build_ct(&p[0], "norm.i4a", 600, 5120, 128, 0, 0);
    build_ct(&p[1], "norm.i4b", 200, 5120, 128, 1, 0);
    norm_check("qgemv_norm_int4_g128_2parts", p, 2, 5120, 1, 0);
    build_fp8(&p[0], "norm.fp8", QC_FMT_FP8_BLOCK, 500, 5120, 128, 128, QC_DT_BF16);
    norm_check("qgemv_norm_fp8_block", p, 1, 5120, 1, 0);
    build_fp4(&p[0], "norm.nvqkv", QC_FMT_NVFP4_CT, 700, 5120, 321.0f);
    build_fp4(&p[1], "norm.nvz", QC_FMT_NVFP4_CT, 300, 5120, 99.0f);
    build_bf16(&p[2], "norm.a", 48, 5120);
    build_bf16(&p[3], "norm.b", 48, 5120);
    norm_check("qgemv_norm_nvfp4_bf16_ab", p, 4, 5120, 1, 0);
    /* the GDN in-projection with its conv epilogue (q|k|v rows of part 0) */
    build_fp4(&p[0], "conv.nvqkv", QC_FMT_NVFP4_CT, 640, 2048, 321.0f);
    build_fp4(&p[1], "conv.nvz", QC_FMT_NVFP4_CT, 256, 2048, 99.0f);
    build_bf16(&p[2], "conv.a", 16, 2048);
    build_bf16(&p[3], "conv.b", 16, 2048);
    norm_check("qgemv_norm_conv_nvfp4_gdn_in", p, 4, 2048, 1, 640);
    /* the INT4 GDN in-projection (streamed kernel with BF16 a|b walked first) */
    build_ct(&p[0], "conv.i4gqkv", 640, 2048, 128, 0, 0);
    build_ct(&p[1], "conv.i4gz", 256, 2048, 128, 1, 0);
    build_bf16(&p[2], "conv.i4ga", 16, 2048);
    build_bf16(&p[3], "conv.i4gb", 16, 2048);
    norm_check("qgemv_norm_conv_int4_gdn_in", p, 4, 2048, 1, 640);
    build_ct(&p[0], "conv.i4qkv", 1000, 5120, 128, 0, 0);
    build_ct(&p[1], "conv.i4z", 300, 5120, 128, 0, 0);
    norm_check("qgemv_norm_conv_int4_first_600_rows", p, 2, 5120, 1, 600);
    build_fp8(&p[0], "conv.f8qkv", QC_FMT_FP8_BLOCK, 520, 1024, 128, 128, QC_DT_BF16);
    norm_check("qgemv_norm_conv_fp8", p, 1, 1024, 1, 520); /* the three above: split K (S > 1) */
    build_ct(&p[0], "conv.i4s1", 2000, 1024, 128, 1, 0);
    norm_check("qgemv_norm_conv_int4_whole_rows", p, 1, 1024, 1, 2000); /* one warp per row group */
    build_fp4(&p[0], "norm.mx", QC_FMT_MXFP4_CT, 300, 2048, 0);
    norm_check("qgemv_norm_mxfp4", p, 1, 2048, 1, 0);
    /* the INT4 g32 GDN in-projection and a g64 gate|up, streamed */
    build_gptq(&p[0], "conv.g32qkv", 640, 2048, 32, 0, 0, 0);
    build_gptq(&p[1], "conv.g32z", 256, 2048, 32, 0, 0, 0);
    build_bf16(&p[2], "conv.g32a", 16, 2048);
    build_bf16(&p[3], "conv.g32b", 16, 2048);
    norm_check("qgemv_norm_conv_int4_g32_gdn_in", p, 4, 2048, 1, 640);
    build_awq(&p[0], "norm.g64gate", 600, 5120, 64);
    build_awq(&p[1], "norm.g64up", 600, 5120, 64);
    norm_check("qgemv_norm_int4_g64_gate_up", p, 2, 5120, 1, 0);
    build_gptq(&p[0], "norm.g64", 136, 1000, 64, 1, 0, 0); /* K not a multiple of 32 * P: zeros past K */
    norm_check("qgemv_norm_gptq_g64_k1000", p, 1, 1000, 1, 0);
    build_gptq(&p[0], "norm.gidx", 72, 320, 64, 0, 0, 2); /* uneven groups: the gather body */
    norm_check("qgemv_norm_refuses_gidx_uneven", p, 1, 320, 0, 0);
    /* act-order (regular groups) GDN in-projection: one permutation for
     * qkv|z, x staged in its order, BF16 a|b on a natural-order copy */
    build_gptq(&p[0], "conv.aoqkv", 640, 2048, 128, 1, 1, 1);
    build_gptq(&p[1], "conv.aoz", 256, 2048, 128, 1, 0, 1);
    copy_gidx(&p[1], &p[0]);
    build_bf16(&p[2], "conv.aoa", 16, 2048);
    build_bf16(&p[3], "conv.aob", 16, 2048);
    norm_check("qgemv_norm_conv_int4_actorder_gdn_in", p, 4, 2048, 1, 640);
    build_gptq(&p[0], "norm.aogate", 600, 5120, 128, 1, 1, 1);
    build_gptq(&p[1], "norm.aoup", 600, 5120, 128, 0, 0, 1);
    copy_gidx(&p[1], &p[0]);
    norm_check("qgemv_norm_int4_actorder_gate_up", p, 2, 5120, 1, 0);
    build_gptq(&p[0], "norm.aog32", 200, 1024, 32, 1, 1, 1);
    norm_check("qgemv_norm_int4_actorder_g32", p, 1, 1024, 1, 0);
    build_gptq(&p[0], "norm.ao2a", 100, 1024, 128, 1, 1, 1);
    build_gptq(&p[1], "norm.ao2b", 100, 1024, 128, 1, 1, 1); /* its own permutation */
    norm_check("qgemv_norm_refuses_two_permutations", p, 2, 1024, 0, 0);
    build_ct(&p[0], "norm.longk", 40, 9216, 128, 0, 0);
    norm_check("qgemv_norm_refuses_k_over_8192", p, 1, 9216, 0, 0);
    build_bf16(&p[0], "norm.bf", 64, 1024);
    norm_check("qgemv_norm_refuses_bf16_only", p, 1, 1024, 0, 0);
}

/* Fused launches: four weights of different layouts (the GDN
 * in_proj_qkv/z/a/b pattern, plus an act-order INT4 part: the plain grid),
 * and parts of one layout with different N (attention q/k/v, MLP gate/up:
 * the persistent grid and its cp.async pipeline). */
static void test_fused(void)
{
    pub p[4];
    int64_t K = 1040;
    build_fp4(&p[0], "fused.nvfp4", QC_FMT_NVFP4_CT, 300, K, 987.25f);
    build_fp8(&p[1], "fused.fp8", QC_FMT_FP8_BLOCK, 130, K, 128, 128, QC_DT_BF16);
    build_bf16(&p[2], "fused.wf16", 48, K);
    build_gptq(&p[3], "fused.gptq", 72, K, 32, 1, 0, 1);
    fused_check("qgemv_fused_nvfp4_fp8_bf16_gptq", p, 4, K);
    K = 1000;
    build_ct(&p[0], "fused.q", 300, K, 128, 0, 0);
    build_ct(&p[1], "fused.k", 72, K, 128, 0, 0);
    build_ct(&p[2], "fused.v", 72, K, 128, 0, 0);
    fused_check("qgemv_fused_ct_int_g128_qkv", p, 3, K);
    K = 1000; /* one body, different scale rows (g128: 32 bytes, g256: 16) */
    build_ct(&p[0], "fused.g128", 100, K, 128, 1, 0);
    build_ct(&p[1], "fused.g256", 60, K, 256, 1, 0);
    fused_check("qgemv_fused_ct_int_g128_g256", p, 2, K);
    K = 2000;
    build_fp8(&p[0], "fused.gate", QC_FMT_FP8_BLOCK, 1100, K, 128, 128, QC_DT_BF16);
    build_fp8(&p[1], "fused.up", QC_FMT_FP8_BLOCK, 1100, K, 128, 128, QC_DT_BF16);
    fused_check("qgemv_fused_fp8_gate_up", p, 2, K);
    /* gate/up-like pairs: INT4 g128 with few rows (split K, S > 1), NVFP4
     * with many (persistent rounds + leftovers) and two different global
     * scales, a mixed pair (FP8 + INT4: the plain grid) */
    K = 4200;
    build_ct(&p[0], "fused.i4gate", 40, K, 128, 0, 0);
    build_ct(&p[1], "fused.i4up", 40, K, 128, 1, 0);
    fused_check("qgemv_fused_int4_pair_splitk", p, 2, K);
    K = 512;
    build_fp4(&p[0], "fused.nvgate", QC_FMT_NVFP4_CT, 4356, K, 987.25f);
    build_fp4(&p[1], "fused.nvup", QC_FMT_NVFP4_CT, 4356, K, 1500.0f);
    fused_check("qgemv_fused_nvfp4_pair", p, 2, K);
    K = 1024;
    build_fp8(&p[0], "fused.mixgate", QC_FMT_FP8_BLOCK, 300, K, 128, 128, QC_DT_BF16);
    build_gptq(&p[1], "fused.mixup", 300, K, 128, 1, 1, 0);
    fused_check("qgemv_fused_fp8_int4_pair", p, 2, K);
    K = 520;
    build_fp4(&p[0], "fused.mx0", QC_FMT_MXFP4_CT, 96, K, 0);
    build_fp4(&p[1], "fused.mx1", QC_FMT_MXFP4_CT, 44, K, 0);
    fused_check("qgemv_fused_mxfp4_2parts", p, 2, K);
    /* Parts of different N and scales in one launch, 27B-like K */
    K = 2048;
    build_ct(&p[0], "fused.wq", 1200, K, 128, 0, 0);
    build_ct(&p[1], "fused.wk", 136, K, 128, 0, 0);
    build_ct(&p[2], "fused.wv", 136, K, 128, 0, 0);
    fused_check("qgemv_fused_ct_int_g128_qkv_k2048", p, 3, K);
    K = 1024;
    build_fp4(&p[0], "fused.wnvgate", QC_FMT_NVFP4_CT, 4356, K, 987.25f);
    build_fp4(&p[1], "fused.wnvup", QC_FMT_NVFP4_CT, 4356, K, 1500.0f);
    fused_check("qgemv_fused_nvfp4_pair_k1024", p, 2, K);
    K = 1536;
    build_fp8(&p[0], "fused.wgate", QC_FMT_FP8_BLOCK, 1100, K, 128, 128, QC_DT_BF16);
    build_fp8(&p[1], "fused.wup", QC_FMT_FP8_BLOCK, 900, K, 128, 128, QC_DT_BF16);
    fused_check("qgemv_fused_fp8_gate_up_k1536", p, 2, K);
    /* The GDN in-projection pattern: quantized qkv|z with BF16 a|b, one
     * persistent launch (x staged for the quantized parts) */
    K = 2048;
    build_ct(&p[0], "fused.gqkv", 640, K, 128, 0, 0);
    build_ct(&p[1], "fused.gz", 384, K, 128, 1, 0);
    build_bf16(&p[2], "fused.ga", 48, K);
    build_bf16(&p[3], "fused.gb", 48, K);
    fused_check("qgemv_fused_int4_bf16_ab", p, 4, K);
    /* more BF16 bytes than INT4 ones: blocks with BF16 groups only */
    build_ct(&p[0], "fused.hq", 64, K, 128, 0, 0);
    build_bf16(&p[1], "fused.ha", 200, K);
    build_bf16(&p[2], "fused.hb", 200, K);
    fused_check("qgemv_fused_int4_bf16_heavy", p, 3, K);
    K = 1536;
    build_fp8(&p[0], "fused.fqkv", QC_FMT_FP8_BLOCK, 700, K, 128, 128, QC_DT_BF16);
    build_bf16(&p[1], "fused.fa", 12, K);
    build_bf16(&p[2], "fused.fb", 12, K);
    fused_check("qgemv_fused_fp8_bf16_ab", p, 3, K);
    K = 1024;
    build_fp4(&p[0], "fused.nqkv", QC_FMT_NVFP4_CT, 520, K, 321.0f);
    build_fp4(&p[1], "fused.nz", QC_FMT_NVFP4_CT, 260, K, 77.0f);
    build_bf16(&p[2], "fused.na", 16, K);
    fused_check("qgemv_fused_nvfp4_bf16_a", p, 3, K);
    /* GDN-in-like launches whose phase 2 has several slots per block: the
     * blocks with a BF16 group sit out their first two (fp8), or the one
     * the other blocks' spare slots allow (nvfp4, 3 blocks per SM) */
    K = 512;
    build_fp8(&p[0], "fused.sqkv", QC_FMT_FP8_BLOCK, 2048, K, 128, 128, QC_DT_BF16);
    build_fp8(&p[1], "fused.sz", QC_FMT_FP8_BLOCK, 1024, K, 128, 128, QC_DT_BF16);
    build_bf16(&p[2], "fused.sa", 48, K);
    build_bf16(&p[3], "fused.sb", 48, K);
    fused_check("qgemv_fused_fp8_bf16_phase2_spared", p, 4, K);
    K = 1024;
    build_fp4(&p[0], "fused.tqkv", QC_FMT_NVFP4_CT, 2048, K, 321.0f);
    build_fp4(&p[1], "fused.tz", QC_FMT_NVFP4_CT, 1024, K, 77.0f);
    build_bf16(&p[2], "fused.ta", 48, K);
    build_bf16(&p[3], "fused.tb", 48, K);
    fused_check("qgemv_fused_nvfp4_bf16_phase2_spared", p, 4, K);
    /* A BF16 part between quantized ones (the launcher moves it last, for
     * the persistent kernel's phase 0) and one in front (left in place: its
     * groups are walked with the quantized ones) */
    K = 2048;
    build_ct(&p[0], "fused.mqkv", 640, K, 128, 0, 0);
    build_bf16(&p[1], "fused.ma", 48, K);
    build_ct(&p[2], "fused.mz", 384, K, 128, 1, 0);
    fused_check("qgemv_fused_int4_bf16_middle", p, 3, K);
    build_bf16(&p[0], "fused.fa0", 48, K);
    build_ct(&p[1], "fused.fqkv0", 640, K, 128, 0, 0);
    build_ct(&p[2], "fused.fz0", 384, K, 128, 1, 0);
    fused_check("qgemv_fused_bf16_first_int4", p, 3, K);
    /* The GDN in-projection pattern with INT4 groups of 32 and of 64 (the
     * streamed kernel's other group sizes, BF16 a|b walked first) */
    K = 5120;
    build_gptq(&p[0], "fused.g32qkv", 640, K, 32, 0, 0, 0);
    build_gptq(&p[1], "fused.g32z", 384, K, 32, 1, 1, 0);
    build_bf16(&p[2], "fused.g32a", 48, K);
    build_bf16(&p[3], "fused.g32b", 48, K);
    fused_check("qgemv_fused_int4_g32_bf16_ab", p, 4, K);
    K = 3072;
    build_ct(&p[0], "fused.g64gate", 1100, K, 64, 1, 0);
    build_ct(&p[1], "fused.g64up", 1100, K, 64, 0, 0);
    fused_check("qgemv_fused_int4_g64_gate_up", p, 2, K);
    /* act-order INT4 parts of one permutation: x staged once in its order
     * (streamed at K = 5120, the walks at K = 1000 with a short last group);
     * two permutations in one launch: the gather bodies */
    K = 5120;
    build_gptq(&p[0], "fused.aoq", 300, K, 128, 1, 1, 1);
    build_gptq(&p[1], "fused.aok", 72, K, 128, 0, 0, 1);
    copy_gidx(&p[1], &p[0]);
    build_bf16(&p[2], "fused.aoa", 48, K);
    fused_check("qgemv_fused_int4_actorder_bf16", p, 3, K);
    K = 1000;
    build_gptq(&p[0], "fused.aos1", 136, K, 128, 1, 1, 1);
    build_gptq(&p[1], "fused.aos2", 64, K, 128, 1, 0, 1);
    copy_gidx(&p[1], &p[0]);
    fused_check("qgemv_fused_int4_actorder_k1000", p, 2, K);
    build_gptq(&p[0], "fused.aod1", 136, K, 128, 1, 1, 1);
    build_gptq(&p[1], "fused.aod2", 64, K, 128, 1, 0, 1);
    fused_check("qgemv_fused_int4_two_permutations", p, 2, K);
}

/* Which kernel a launch gets (gemv_multi.cu): on a Hopper GPU (the
 * streamed kernel's bulk copies, two blocks per SM in 228 KB) every INT4
 * launch of groups of 32, 64 or 128 whose rows are whole 32-chunk steps
 * streams on a PDL stream, BF16 parts and act-order with regular groups
 * included (K = 1000 streams too: its rows are padded to 1024); mode 10
 * takes the walks; groups of 256 and rows of partial steps walk. The sums are right either way (the other checks), so a
 * launcher change that dropped a shape from the streamed kernel shows only
 * here. want: 1 streamed, 0 walks. */
static void streamed_path_check(const char *name, pub *p, int np, int want)
{
    (void)want; /* (a build without CUDA skips) */
    if (!parts_gpu_or_skip(name, p, np)) return;
#ifdef QC_HAVE_CUDA
    int dev = 0, major = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (major != 9) {
        th_skip(name, "the streamed kernel's choice is checked on Hopper (sm_90) only");
        for (int i = 0; i < np; i++) pub_free(&p[i]);
        return;
    }
    const int64_t K = p[0].l.k;
    qk_qweight d[QK_GEMV_MAX_PARTS];
    const qk_qweight *dp[QK_GEMV_MAX_PARTS];
    float *dy[QK_GEMV_MAX_PARTS];
    bool shared[QK_GEMV_MAX_PARTS];
    uint16_t *xb = calloc((size_t)K, 2), *dx;
    cudaMalloc((void **)&dx, (size_t)K * 2);
    cudaMemcpy(dx, xb, (size_t)K * 2, cudaMemcpyHostToDevice);
    char why[256] = "";
    int ok = 1;
    for (int i = 0; i < np; i++) {
        if (!part_upload(&p[i], i, &d[i], why, sizeof why)) ok = 0;
        dp[i] = &d[i];
        cudaMalloc((void **)&dy[i], (size_t)p[i].l.n * 4);
    }
    perms_share(d, np, shared);
    cudaStream_t qs; /* PDL launches need a stream of their own */
    cudaStreamCreateWithFlags(&qs, cudaStreamNonBlocking);
    int got[2] = {-1, -1}, rc[2] = {-1, -1};
    static const int modes[2] = {0, 10};
    for (int m = 0; ok && m < 2; m++) {
        qk_gemv_q_mode = modes[m];
        rc[m] = qk_gemv_multi(dp, dy, np, dx, 0, qs);
        got[m] = qk_gemv_q_last_streamed();
        if (!rc[m]) rc[m] = (int)cudaStreamSynchronize(qs);
    }
    cudaStreamDestroy(qs);
    if (ok)
        snprintf(why, sizeof why, "launch %d / %d, streamed %d / %d with modes 0 / 10, want %d / 0", rc[0], rc[1],
                 got[0], got[1], want);
    CHECK(name, ok && rc[0] == 0 && rc[1] == 0 && got[0] == want && got[1] == 0, "%s", why);
    for (int i = 0; i < np; i++) cudaFree(dy[i]);
    parts_release(p, d, shared, np);
    cudaFree(dx);
    free(xb);
#endif
}

static void test_streamed_paths(void)
{
    pub p[2];
    build_ct(&p[0], "path.g128", 300, 5120, 128, 0, 0);
    streamed_path_check("gemv_path_streamed_g128_k5120", p, 1, 1);
    build_gptq(&p[0], "path.g64", 136, 17408, 64, 1, 0, 0);
    streamed_path_check("gemv_path_streamed_g64_k17408", p, 1, 1);
    build_awq(&p[0], "path.g32", 64, 17408, 32);
    streamed_path_check("gemv_path_streamed_g32_k17408", p, 1, 1);
    /* symmetric: tiled, these keep 16-bit scales only (quant.h s16) */
    build_gptq(&p[0], "path.g64s", 136, 17408, 64, 0, 1, 0);
    streamed_path_check("gemv_path_streamed_g64_sym_k17408", p, 1, 1);
    build_gptq(&p[0], "path.g128s", 1000, 5120, 128, 1, 1, 0);
    streamed_path_check("gemv_path_streamed_g128_sym_k5120", p, 1, 1);
    build_gptq(&p[0], "path.g32sqkv", 640, 5120, 32, 0, 1, 0);
    build_bf16(&p[1], "path.g32sa", 48, 5120);
    streamed_path_check("gemv_path_streamed_g32_sym_bf16_part", p, 2, 1);
    build_gptq(&p[0], "path.g32qkv", 640, 5120, 32, 0, 0, 0);
    build_bf16(&p[1], "path.g32a", 48, 5120);
    streamed_path_check("gemv_path_streamed_g32_bf16_part", p, 2, 1);
    build_gptq(&p[0], "path.ao", 64, 5120, 128, 1, 1, 1);
    streamed_path_check("gemv_path_streamed_actorder_g128", p, 1, 1);
    build_gptq(&p[0], "path.g256", 300, 2048, 256, 0, 0, 0);
    streamed_path_check("gemv_path_walks_g256", p, 1, 0);
    build_ct(&p[0], "path.k1100", 300, 1100, 128, 0, 0); /* k_pad 1120: 35 chunks, not whole steps */
    streamed_path_check("gemv_path_walks_k1100", p, 1, 0);
}

/* The decode of an act-order down-projection (cuda_backend.c swiglu_dec):
 * the SwiGLU written in the packed order of K (qk_swiglu_perm, PDL launch
 * on a stream that allows it) and the weight run without its permutation
 * must give the very bits of the plain SwiGLU followed by the GEMV that
 * gathers x, on every launch path; h itself must be the plain h gathered. */
static void swiglu_perm_check(const char *name, int64_t N, int64_t I)
{
    pub p;
    build_gptq(&p, "swiglu_perm.down", N, I, 128, 1, 1, 1);
    if (!parts_gpu_or_skip(name, &p, 1)) return;
#ifdef QC_HAVE_CUDA
    char why[256] = "";
    qk_qweight d, v;
    int ok = part_upload(&p, 0, &d, why, sizeof why) && d.perm && d.perm_regular;
    if (!ok && !why[0]) snprintf(why, sizeof why, "the weight is not act-order with regular groups");
    float *gu = malloc((size_t)I * 2 * sizeof *gu), *dgu, *dy1, *dy2;
    for (int64_t i = 0; i < 2 * I; i++) gu[i] = (float)((double)(urand() >> 11) / 1125899906842624.0 - 4.0);
    uint16_t *dh1, *dh2, *h1 = malloc((size_t)I * 2), *h2 = malloc((size_t)I * 2);
    int32_t *perm = malloc((size_t)I * sizeof *perm);
    float *y1 = malloc((size_t)N * 4), *y2 = malloc((size_t)N * 4), *y0 = malloc((size_t)N * 4);
    cudaMalloc((void **)&dgu, (size_t)I * 8);
    cudaMalloc((void **)&dh1, (size_t)I * 2);
    cudaMalloc((void **)&dh2, (size_t)I * 2);
    cudaMalloc((void **)&dy1, (size_t)N * 4);
    cudaMalloc((void **)&dy2, (size_t)N * 4);
    cudaMemcpy(dgu, gu, (size_t)I * 8, cudaMemcpyHostToDevice);
    cudaStream_t qs;
    cudaStreamCreateWithFlags(&qs, cudaStreamNonBlocking);
    if (ok) {
        cudaMemcpy(perm, d.perm, (size_t)I * sizeof *perm, cudaMemcpyDeviceToHost);
        cudaMemset(dh2, 0xff, (size_t)I * 2);
        int krc = qk_swiglu(dgu, (int)(2 * I), 1, (int)I, dh1, 0, qs);
        int krc2 = qk_swiglu_perm(dgu, (int)I, d.perm, dh2, 1, qs);
        int src = (int)cudaStreamSynchronize(qs);
        cudaMemcpy(h1, dh1, (size_t)I * 2, cudaMemcpyDeviceToHost);
        cudaMemcpy(h2, dh2, (size_t)I * 2, cudaMemcpyDeviceToHost);
        int64_t bad = 0;
        for (int64_t i = 0; i < I; i++)
            bad += perm[i] < 0 || perm[i] >= I || h2[i] != h1[perm[i]];
        ok = krc == 0 && krc2 == 0 && src == 0 && bad == 0;
        snprintf(why, sizeof why, "launch %d / %d sync %d, %lld of %lld values of h not the gathered plain h", krc, krc2,
                 src, (long long)bad, (long long)I);
    }
    v = d;
    v.perm = NULL;
    v.perm_regular = 0;
    v.perm_bytes = 0;
    static const int modes[] = {0, 7, 10};
    for (size_t m = 0; ok && m < sizeof modes / sizeof modes[0]; m++) {
        qk_gemv_q_mode = modes[m];
        const qk_qweight *w1 = &d, *w2 = &v;
        cudaMemset(dy1, 0xff, (size_t)N * 4);
        cudaMemset(dy2, 0, (size_t)N * 4);
        int krc = qk_gemv_multi(&w1, &dy1, 1, dh1, 0, qs);
        int krc2 = qk_gemv_multi(&w2, &dy2, 1, dh2, 0, qs);
        int src = (int)cudaStreamSynchronize(qs);
        cudaMemcpy(y1, dy1, (size_t)N * 4, cudaMemcpyDeviceToHost);
        cudaMemcpy(y2, dy2, (size_t)N * 4, cudaMemcpyDeviceToHost);
        int64_t differ = 0, nonfinite = 0;
        for (int64_t n = 0; n < N; n++) {
            differ += memcmp(&y1[n], &y2[n], 4) != 0;
            nonfinite += !isfinite(y1[n]);
        }
        printf("# %s (path %d): %lld of %lld outputs differ\n", name, modes[m], (long long)differ, (long long)N);
        ok = krc == 0 && krc2 == 0 && src == 0 && differ == 0 && nonfinite == 0;
        snprintf(why, sizeof why, "path %d: launch %d / %d sync %d, %lld outputs differ, %lld not finite", modes[m], krc,
                 krc2, src, (long long)differ, (long long)nonfinite);
        if (modes[m] == 0) memcpy(y0, y1, (size_t)N * 4);
    }
    qk_gemv_q_mode = 0;
    /* gu written by a kernel that lets its dependents start at once and
     * writes 200 us later (qk_test_late_copy), h and y poisoned: the SwiGLU
     * and the GEMV after it, both PDL launches, must each read their input
     * only after their wait */
    void *dgood = NULL;
    if (ok) {
        const qk_qweight *w2 = &v;
        cudaMemset(dh2, 0xff, (size_t)I * 2);
        cudaMemset(dy2, 0xff, (size_t)N * 4);
        int krc = late_write(dgu, (size_t)I * 8, &dgood, qs);
        if (!krc) krc = qk_swiglu_perm(dgu, (int)I, d.perm, dh2, 1, qs);
        if (!krc) krc = qk_gemv_multi(&w2, &dy2, 1, dh2, 0, qs);
        int src = (int)cudaStreamSynchronize(qs);
        cudaMemcpy(y2, dy2, (size_t)N * 4, cudaMemcpyDeviceToHost);
        int64_t differ = 0;
        for (int64_t n = 0; n < N; n++) differ += memcmp(&y0[n], &y2[n], 4) != 0;
        printf("# %s (late writer of gu): %lld of %lld outputs differ\n", name, (long long)differ, (long long)N);
        ok = krc == 0 && src == 0 && differ == 0;
        snprintf(why, sizeof why, "after a late writer: launch %d sync %d, %lld outputs differ", krc, src,
                 (long long)differ);
    }
    cudaFree(dgood);
    CHECK(name, ok, "%s", why);
    cudaStreamDestroy(qs);
    cudaFree(dgu);
    cudaFree(dh1);
    cudaFree(dh2);
    cudaFree(dy1);
    cudaFree(dy2);
    free(gu);
    free(h1);
    free(h2);
    free(perm);
    free(y0);
    free(y1);
    free(y2);
    qc_qweight_free_dev(&d);
#else
    (void)N;
    (void)I;
#endif
    pub_free(&p);
}

/* x far from [-1, 1] (every other GEMV check draws it from [-1, 1)), on
 * the launch paths that read x differently (through L1, staged on 2 or 3
 * blocks per SM, INT4's streamed kernel or walks): every group of 128
 * inputs at its own scale 2^-60 .. 2^60 with values spread over 2^-8 .. 1
 * of it (and some at 2^17, past f16's range); the whole of x at 2^-80; at
 * 2^60. Against the double reference. */
static void xrange_check(const char *name, pub *p)
{
    if (!parts_gpu_or_skip(name, p, 1)) return;
#ifdef QC_HAVE_CUDA
    const qc_linear *l = &p->l;
    const int64_t N = l->n, K = l->k;
    qk_qweight d;
    char why[256] = "";
    if (!part_upload(p, 0, &d, why, sizeof why)) {
        CHECK(name, 0, "%s", why);
        pub_free(p);
        return;
    }
    int ok = 1;
    float *ref = malloc((size_t)(N * K) * sizeof *ref), *xf = malloc((size_t)K * sizeof *xf);
    float *y = malloc((size_t)N * sizeof *y);
    double *yr = malloc((size_t)N * sizeof *yr);
    uint16_t *xb = malloc((size_t)K * 2), *dx;
    float *dy;
    qc_linear_dequant_rows(l, 0, N, ref);
    cudaMalloc((void **)&dx, (size_t)K * 2);
    cudaMalloc((void **)&dy, (size_t)N * 4);
    cudaStream_t qs;
    cudaStreamCreateWithFlags(&qs, cudaStreamNonBlocking);
    static const int modes[] = {0, 5, 6, 10, 1};
    for (int pat = 0; ok && pat < 3; pat++) {
        int ge = 0;
        for (int64_t k = 0; k < K; k++) {
            if (k % 128 == 0) ge = pat == 1 ? -80 : pat == 2 ? 60 : (int)rnd(121) - 60;
            double u = (double)(urand() >> 11) / 4503599627370496.0 - 1.0; /* [-1, 1) */
            int e = ge - (int)rnd(9);
            if (pat == 0 && k % 97 == 0) e = 17; /* beyond f16's 65504 */
            xb[k] = qc_f32_to_bf16((float)ldexp(u, e));
            xf[k] = qc_bf16_to_f32(xb[k]);
        }
        ref_gemv(ref, xf, N, K, yr);
        cudaMemcpy(dx, xb, (size_t)K * 2, cudaMemcpyHostToDevice);
        for (size_t m = 0; ok && m < sizeof modes / sizeof modes[0]; m++) {
            qk_gemv_q_mode = modes[m];
            cudaMemset(dy, 0xff, (size_t)N * 4);
            cudaDeviceSynchronize();
            int krc = qk_gemv_q(&d, dx, dy, 0, qs), src = (int)cudaStreamSynchronize(qs);
            cudaMemcpy(y, dy, (size_t)N * 4, cudaMemcpyDeviceToHost);
            double e = rel_l2(y, yr, N);
            printf("# %s: x pattern %d, path %d: rel_l2 %.3g\n", name, pat, modes[m], e);
            ok = krc == 0 && src == 0 && e < 1e-5;
            snprintf(why, sizeof why, "x pattern %d, path %d: launch %d sync %d rel_l2 %.3g", pat, modes[m], krc, src,
                     e);
        }
    }
    qk_gemv_q_mode = 0;
    CHECK(name, ok, "%s", why);
    cudaStreamDestroy(qs);
    cudaFree(dx);
    cudaFree(dy);
    qc_qweight_free_dev(&d);
    free(ref);
    free(xf);
    free(y);
    free(yr);
    free(xb);
#endif
    pub_free(p);
}

/* A format that has no GPU layout must be refused with a message. */
static void test_refusals(void)
{
    pub p;
    qc_err err = {0};
    qk_qweight h;
    build_ct(&p, "ct_g16", 64, 256, 16, 0, 0);
    int rc = qc_qweight_pack(&p.l, &h, &err);
    CHECK("repack_refuse_group16", rc == QC_EXIT_CHECKPOINT && strstr(err.msg, "multiple of 32"),
          "rc %d msg '%s'", rc, err.msg);
    pub_free(&p);
    build_fp8(&p, "fp8_bad", QC_FMT_FP8_BLOCK, 64, 256, 128, 128, QC_DT_BF16);
    qc_tensor *w = &p.t[0];
    w->dtype = QC_DT_U8; /* not a float8 weight: validation must refuse it */
    rc = qc_qweight_pack(&p.l, &h, &err);
    CHECK("repack_refuse_invalid", rc == QC_EXIT_CHECKPOINT, "rc %d", rc);
    pub_free(&p);
}

/* ---- bandwidth at the 27B shapes -------------------------------------------- */

#ifdef QC_HAVE_CUDA
typedef struct shape {
    const char *what;
    int n, k;
    int per_token; /* how many such matmuls one 27B decode step runs */
} shape;

/* The 27B's quantizable decode matmuls (qwen35-model.md: D 5120, MLP 17408,
 * 24 q heads / 4 kv heads of 256, GDN 16 k heads / 48 v heads of 128; 48 GDN
 * + 16 attention layers). q_proj holds query and gate (2 * 24 * 256 rows). */
static const shape shapes27[] = {
    {"mlp.gate/up", 17408, 5120, 128}, {"mlp.down", 5120, 17408, 64}, {"attn.q+gate", 12288, 5120, 16},
    {"attn.k/v", 1024, 5120, 32},      {"attn.o", 5120, 6144, 16},    {"gdn.in_qkv", 10240, 5120, 48},
    {"gdn.in_z", 6144, 5120, 48},      {"gdn.out", 5120, 6144, 48},
};

static double copy_gbs(void *pool, size_t bytes)
{
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    size_t half = bytes / 2;
    cudaMemcpy((char *)pool + half, pool, half, cudaMemcpyDeviceToDevice);
    cudaEventRecord(a, NULL);
    for (int i = 0; i < 10; i++) cudaMemcpyAsync((char *)pool + half, pool, half, cudaMemcpyDeviceToDevice, NULL);
    cudaEventRecord(b, NULL);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return 2.0 * (double)half * 10 / (ms * 1e-3) / 1e9;
}

/* Descriptor of one random weight of kind at (n, k) with its buffers at base. */
static size_t bench_desc(int kind, int n, int k, char *base, qk_qweight *q)
{
    qc_qweight_plan_random(q, kind, n, k);
    q->kind = kind;
    if (kind == QK_QW_INT4) q->scale_f16 = 1;
    if (kind == QK_QW_NVFP4 || kind == QK_QW_MXFP4) q->gmul = 1e-3f;
    if (kind == QK_QW_NONE) q->w_bytes = (size_t)n * k * 2; /* bf16 baseline (qk_gemv_bf16): w only, unpadded */
    size_t wb = (q->w_bytes + 255) & ~(size_t)255, sb = (q->s_bytes + 255) & ~(size_t)255;
    q->w = base;
    q->s = q->s_bytes ? base + wb : NULL;
    return wb + sb;
}

/* Microseconds per launch of nc rotating copies of one launch of np parts
 * (copy i uses q[i*np .. i*np+np-1]); 60 launches captured in one CUDA graph
 * (as decode runs them), so small shapes are not timed as launch overhead.
 * bf16ref: the parts are plain BF16 [n,k] run through qk_gemv_bf16. */
static double bench_time(const qk_qweight *q, int nc, int np, int bf16ref, const uint16_t *dx, float *dy, int *bad)
{
    const int iters = 60;
    cudaStream_t st;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaEvent_t a, b;
    cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    *bad |= (int)cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
    for (int i = 0; i < iters; i++) {
        const qk_qweight *set = q + (size_t)(i % nc) * np;
        if (bf16ref) {
            *bad |= qk_gemv_bf16((const uint16_t *)set[0].w, dx, dy, set[0].n, set[0].k, 0, st);
        } else {
            const qk_qweight *pp[QK_GEMV_MAX_PARTS];
            float *yy[QK_GEMV_MAX_PARTS];
            for (int j = 0; j < np; j++) {
                pp[j] = &set[j];
                yy[j] = dy + 17408 * j;
            }
            *bad |= qk_gemv_multi(pp, yy, np, dx, 0, st);
        }
    }
    *bad |= (int)cudaStreamEndCapture(st, &graph);
    if (!*bad)
        *bad |= (int)cudaGraphInstantiate(&exec, graph, 0);
    float ms = 0;
    if (!*bad) {
        *bad |= (int)cudaGraphLaunch(exec, st); /* warm-up */
        cudaEventRecord(a, st);
        *bad |= (int)cudaGraphLaunch(exec, st);
        cudaEventRecord(b, st);
        *bad |= (int)cudaEventSynchronize(b);
        cudaEventElapsedTime(&ms, a, b);
    }
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaStreamDestroy(st);
    return ms * 1e3 / iters;
}

/* Lays out copies of a launch of np parts (kinds[j], shapes n[j] x k) in the
 * pool until they cover > 300 MB, so every launch streams from HBM. Returns
 * the number of copies; *bytes = what one launch reads (weights, scales, x, y). */
static int bench_layout(char *pool, size_t pool_bytes, int np, const int *kinds, const int *n, int k,
                        qk_qweight *q, double *bytes)
{
    int nc = 0;
    size_t off = 0;
    while (nc < 64 && off < ((size_t)300 << 20)) {
        size_t need = 0;
        for (int j = 0; j < np; j++) need += bench_desc(kinds[j], n[j], k, pool + off + need, &q[nc * np + j]);
        if (off + need > pool_bytes)
            break;
        off += need;
        nc++;
    }
    *bytes = 2.0 * k;
    for (int j = 0; j < np; j++) *bytes += (double)qk_qweight_bytes(&q[j]) + 4.0 * n[j];
    return nc;
}

static void bench_all(void)
{
    const size_t pool_bytes = (size_t)768 << 20; /* ~15x the H100's 50 MB L2 */
    char *pool = NULL;
    uint16_t *dx = NULL;
    float *dy = NULL;
    if (cudaMalloc((void **)&pool, pool_bytes) != cudaSuccess || cudaMalloc((void **)&dx, 17408 * 2) ||
        cudaMalloc((void **)&dy, 4 * 17408 * 4)) {
        CHECK("qbench_alloc", 0, "cannot allocate %zu bytes on the device", pool_bytes);
        return;
    }
    int frc = qk_fill_random_bf16((uint16_t *)pool, (int64_t)(pool_bytes / 2), 7, 1.0f, NULL);
    frc |= qk_fill_random_bf16(dx, 17408, 9, 1.0f, NULL);
    cudaDeviceSynchronize();
    const double copy = copy_gbs(pool, pool_bytes);
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("# qbench device: %s, %d SMs, L2 %d MB; device-to-device copy %.0f GB/s (read+write)\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize >> 20, copy);
    static const struct {
        int kind;
        const char *name;
    } kinds[] = {{QK_QW_FP8, "fp8-block"}, {QK_QW_INT4, "int4-g128"}, {QK_QW_NVFP4, "nvfp4"},
                 {QK_QW_MXFP4, "mxfp4"},   {0, "bf16(ref)"}};
    static qk_qweight q[64 * QK_GEMV_MAX_PARTS];
    printf("# qbench %-10s %-22s %6s %6s %9s %8s %7s\n", "format", "shape", "N", "K", "MB", "us", "GB/s");
    /* A/B in one run (gemv_multi.cu's qk_gemv_q_mode): plain launches
     * ("/old", the code before), x staged in shared memory for every body
     * ("/xs"), x staged on 3 blocks per SM ("/xs3"), the walks without the
     * streamed INT4 kernel ("/walk"), the default (plain name: x staged for
     * FP4, INT4 g128 streamed). */
    static const struct {
        int mode;
        const char *tag;
    } paths[] = {{1, "/old"}, {5, "/xs"}, {6, "/xs3"}, {10, "/walk"}, {0, ""}};
    const size_t nkinds = sizeof kinds / sizeof kinds[0];
    for (size_t mf = 0; mf < nkinds * (sizeof paths / sizeof paths[0]); mf++) {
        const size_t m = mf / nkinds, f = mf % nkinds;
        const int kind = kinds[f].kind;
        if ((kind == 0 && paths[m].mode != 0) ||
            (paths[m].mode == 9 && kind != QK_QW_INT4 && kind != QK_QW_NVFP4))
            continue;
        char label[40];
        snprintf(label, sizeof label, "%s%s", kinds[f].name, paths[m].tag);
        qk_gemv_q_mode = paths[m].mode;
        double tot_bytes = 0, tot_us = 0, bytes;
        int bad = frc;
        for (size_t si = 0; si < sizeof shapes27 / sizeof shapes27[0]; si++) {
            const shape *sh = &shapes27[si];
            int nc = bench_layout(pool, pool_bytes, 1, &kind, &sh->n, sh->k, q, &bytes);
            if (nc == 0) {
                bad = 1;
                continue;
            }
            double us = bench_time(q, nc, 1, kind == 0, dx, dy, &bad);
            printf("# qbench %-10s %-22s %6d %6d %9.2f %8.2f %7.0f  (%.0f%% of copy)\n", label, sh->what,
                   sh->n, sh->k, bytes / 1e6, us, bytes / (us * 1e-6) / 1e9, 100.0 * bytes / (us * 1e-6) / 1e9 / copy);
            tot_bytes += bytes * sh->per_token;
            tot_us += us * sh->per_token;
        }
        printf("# qbench %-10s 27B decode matmuls (no lm_head/embeddings/in_proj_a,b): %.2f GB in %.3f ms = "
               "%.0f GB/s (%.0f%% of copy)\n",
               label, tot_bytes / 1e9, tot_us / 1e3, tot_bytes / (tot_us * 1e-6) / 1e9,
               100.0 * tot_bytes / (tot_us * 1e-6) / 1e9 / copy);
        if (kind) { /* fused launches: GDN qkv|z|a|b (a, b BF16), attention q|k|v, MLP gate|up */
            static const struct {
                const char *what;
                int np, n[4], k, bf16_tail;
            } fused[] = {{"fused gdn qkv+z+a+b", 4, {10240, 6144, 48, 48}, 5120, 2},
                         {"fused attn q+k+v", 3, {12288, 1024, 1024, 0}, 5120, 0},
                         {"fused mlp gate+up", 2, {17408, 17408, 0, 0}, 5120, 0}};
            for (size_t u = 0; u < sizeof fused / sizeof fused[0]; u++) {
                int fk[4];
                for (int j = 0; j < fused[u].np; j++) fk[j] = j >= fused[u].np - fused[u].bf16_tail ? QK_QW_BF16 : kind;
                int nc = bench_layout(pool, pool_bytes, fused[u].np, fk, fused[u].n, fused[u].k, q, &bytes);
                if (nc == 0) {
                    bad = 1;
                    continue;
                }
                double us = bench_time(q, nc, fused[u].np, 0, dx, dy, &bad);
                printf("# qbench %-10s %-22s %6d %6d %9.2f %8.2f %7.0f  (%.0f%% of copy)\n", label,
                       fused[u].what, fused[u].n[0] + fused[u].n[1] + fused[u].n[2] + fused[u].n[3], fused[u].k,
                       bytes / 1e6, us, bytes / (us * 1e-6) / 1e9, 100.0 * bytes / (us * 1e-6) / 1e9 / copy);
            }
        }
        char nm[64];
        snprintf(nm, sizeof nm, "qbench_%s", label);
        CHECK(nm, bad == 0 && tot_us > 0, "a launch failed (%d)", bad);
    }
    qk_gemv_q_mode = 0;
    cudaFree(pool);
    cudaFree(dx);
    cudaFree(dy);
}
#endif

/* ---- mixture of experts (kernels/moe.cu) ------------------------------------ */

#ifdef QC_HAVE_CUDA
static float frand_q(void) { return (float)((double)(urand() >> 11) / 4503599627370496.0 * 2 - 1); }

/* A device copy of n bytes of h, or with h NULL n bytes of 0xff (NaN floats). */
static void *dput(const void *h, size_t n)
{
    void *d = NULL;
    if (cudaMalloc(&d, n) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc %zu failed\n", n);
        exit(1);
    }
    if (h) cudaMemcpy(d, h, n, cudaMemcpyHostToDevice);
    else cudaMemset(d, 0xff, n);
    return d;
}
#endif

/* moe_build's layout for every expert, or -1 for one per expert */
static int moe_one_layout = -1;

#ifdef QC_HAVE_CUDA
/* Expert e's part i in one of five layouts (e % 5), all [N, K]: the table
 * holds a different body per expert, as a checkpoint with mixed experts
 * would. moe_one_layout >= 0: that layout for every expert (the GEMV then
 * runs its single-layout kernel). */
static void moe_build(pub *p, int e, int i, int64_t N, int64_t K)
{
    char nm[48];
    snprintf(nm, sizeof nm, "expert%d.part%d", e, i);
    switch (moe_one_layout >= 0 ? moe_one_layout : e % 5) {
    case 0: build_fp8(p, nm, QC_FMT_FP8_BLOCK, N, K, 128, 128, QC_DT_BF16); break;
    case 1: build_ct(p, nm, N, K, 128, 0, 0); break;
    case 2: build_fp4(p, nm, QC_FMT_NVFP4_CT, N, K, 1234.567f); break;
    case 3: build_bf16(p, nm, N, K); break;
    default: build_gptq(p, nm, N, K, 32, 0, 0, 0); break;
    }
}

/* n expert matrices of N x K (entry j: expert j / P, part j % P, layouts as
 * moe_build picks them), built and uploaded; dp[j] points at d[j], as
 * qk_moe_table_fill takes them. */
typedef struct {
    int n;
    pub *pb;
    qk_qweight *d;
    const qk_qweight **dp;
} moe_parts;

/* False, with why set, if a matrix did not upload (or no memory); free with
 * moe_parts_free either way. */
static bool moe_parts_make(moe_parts *m, int n, int P, int64_t N, int64_t K, char *why, size_t nwhy)
{
    m->n = n;
    m->pb = calloc((size_t)n, sizeof *m->pb);
    m->d = calloc((size_t)n, sizeof *m->d);
    m->dp = calloc((size_t)n, sizeof *m->dp);
    if (!m->pb || !m->d || !m->dp) {
        snprintf(why, nwhy, "out of host memory");
        return false;
    }
    bool ok = true;
    for (int j = 0; j < n; j++) {
        moe_build(&m->pb[j], j / P, j % P, N, K);
        if (!part_upload(&m->pb[j], j, &m->d[j], why, nwhy)) ok = false;
        m->dp[j] = &m->d[j];
    }
    return ok;
}

/* moe_parts_make with every expert in moe_build's layout `layout` (-1: one
 * per expert, as moe_build picks them). */
static bool moe_parts_make_layout(moe_parts *m, int layout, int n, int P, int64_t N, int64_t K, char *why, size_t nwhy)
{
    moe_one_layout = layout;
    const bool ok = moe_parts_make(m, n, P, N, K, why, nwhy);
    moe_one_layout = -1;
    return ok;
}

static void moe_parts_free(moe_parts *m)
{
    for (int j = 0; m->pb && m->d && j < m->n; j++) {
        qc_qweight_free_dev(&m->d[j]);
        pub_free(&m->pb[j]);
    }
    free(m->pb), free(m->d), free(m->dp);
}
#endif

/* qk_gemv_moe: E experts of P parts [N, K]; pair j runs expert sel[j] on
 * x row j / xdiv (xdiv 0: one x for all). With ordered, the pairs run in
 * the order qk_moe_order gives, which is also checked (a permutation with
 * each expert's pairs together, experts ascending). Every output against a
 * double dot of the CPU dequantization, nothing written outside the rows. */
static void moe_gemv_check(const char *name, int E, int P, int64_t N, int64_t K, const int32_t *sel, int nsel,
                           int xdiv, bool ordered)
{
    if (!gpu_init()) {
        th_skip(name, gpu_why);
        return;
    }
#ifdef QC_HAVE_CUDA
    const int n = E * P;
    char why[256] = "";
    moe_parts mp;
    int ok = moe_parts_make(&mp, n, P, N, K, why, sizeof why);
    pub *pb = mp.pb;
    const int64_t xs = xdiv ? (K + 7) / 8 * 8 : 0, nx = xdiv ? xs * ((nsel + xdiv - 1) / xdiv) : K;
    uint16_t *xb = calloc((size_t)nx, 2);
    for (int64_t k = 0; k < nx; k++) xb[k] = qc_f32_to_bf16((float)((double)(urand() >> 11) / 4503599627370496.0 - 1.0));
    const int64_t ys = P * N + 3, ny = ys * nsel; /* 3 rows of slack per slot: must stay untouched */
    double *yr = calloc((size_t)ny, sizeof *yr);
    float *ref = malloc((size_t)(N * K) * sizeof *ref);
    for (int j = 0; ok && j < nsel; j++)
        for (int i = 0; i < P; i++) {
            qc_linear_dequant_rows(&pb[sel[j] * P + i].l, 0, N, ref);
            const uint16_t *x = xb + (xdiv ? j / xdiv : 0) * xs;
            for (int64_t r = 0; r < N; r++) {
                double acc = 0;
                for (int64_t k = 0; k < K; k++) acc += (double)ref[r * K + k] * qc_bf16_to_f32(x[k]);
                yr[j * ys + i * N + r] = acc;
            }
        }
    free(ref);
    void *table = NULL;
    uint16_t *dx = NULL;
    int32_t *dsel = NULL, *dord = NULL;
    float *dy = NULL;
    cudaMalloc(&table, qk_moe_table_bytes(n));
    cudaMalloc((void **)&dord, (size_t)nsel * 4);
    cudaMalloc((void **)&dx, (size_t)nx * 2);
    cudaMalloc((void **)&dsel, (size_t)nsel * 4);
    cudaMalloc((void **)&dy, (size_t)ny * 4);
    cudaMemcpy(dx, xb, (size_t)nx * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dsel, sel, (size_t)nsel * 4, cudaMemcpyHostToDevice);
    cudaMemset(dy, 0x7f, (size_t)ny * 4); /* 0x7f7f7f7f: a large finite marker */
    qk_moe_table t;
    cudaStream_t qs;
    cudaStreamCreateWithFlags(&qs, cudaStreamNonBlocking);
    if (ok) {
        int trc = qk_moe_table_fill(mp.dp, E, P, table, &t);
        int orc = ordered ? qk_moe_order(dsel, nsel, E, dord, qs) : 0;
        int krc = trc || orc ? -1
                             : qk_gemv_moe(&t, dsel, nsel, ordered ? dord : NULL, dx, xdiv ? xdiv : nsel, xs, dy, ys, qs);
        int src = (int)cudaStreamSynchronize(qs);
        int bad_order = 0;
        if (ordered) { /* a permutation, experts ascending */
            int32_t *ord = malloc((size_t)nsel * 4);
            char *seen = calloc((size_t)nsel, 1);
            cudaMemcpy(ord, dord, (size_t)nsel * 4, cudaMemcpyDeviceToHost);
            for (int j = 0; j < nsel; j++) {
                if (ord[j] < 0 || ord[j] >= nsel || seen[ord[j]]++) {
                    bad_order++;
                    continue;
                }
                if (j && ord[j - 1] >= 0 && ord[j - 1] < nsel && sel[ord[j - 1]] > sel[ord[j]]) bad_order++;
            }
            free(ord);
            free(seen);
        }
        float *y = malloc((size_t)ny * sizeof *y);
        cudaMemcpy(y, dy, (size_t)ny * 4, cudaMemcpyDeviceToHost);
        double worst = 0;
        int64_t stray = 0;
        for (int j = 0; j < nsel; j++) {
            double e = rel_l2(y + j * ys, yr + j * ys, P * N);
            if (!(e <= worst)) worst = e;
            for (int64_t r = P * N; r < ys; r++) {
                uint32_t u;
                memcpy(&u, &y[j * ys + r], 4);
                stray += u != 0x7f7f7f7fu;
            }
        }
        free(y);
        ok = trc == 0 && krc == 0 && src == 0 && worst < 1e-5 && stray == 0 && bad_order == 0;
        snprintf(why, sizeof why, "table %d launch %d sync %d worst rel_l2 %.3g, %lld stray writes, %d misordered",
                 trc, krc, src, worst, (long long)stray, bad_order);
        printf("# %s: %d of %d experts, P=%d, %lldx%lld: worst rel_l2 %.3g\n", name, nsel, E, P, (long long)N,
               (long long)K, worst);
    }
    CHECK(name, ok, "%s", why);
    cudaStreamDestroy(qs);
    cudaFree(table);
    cudaFree(dx);
    cudaFree(dsel);
    cudaFree(dord);
    cudaFree(dy);
    free(xb);
    free(yr);
    moe_parts_free(&mp);
#else
    (void)E, (void)P, (void)N, (void)K, (void)sel, (void)nsel, (void)xdiv, (void)ordered;
#endif
}

#ifdef QC_HAVE_CUDA
/* The CPU engine's choice (cpu_moe.c: softmax, top-k by probability, ties
 * to the lower index, renormalised) for one token's E logits; a NaN logit
 * counts as probability 0 (the GPU rule: it never wins). */
#define MR_TEST_KMAX 32
static void moe_route_ref(const float *lg, int E, int K, int32_t *sel, float *w)
{
    double mx = -INFINITY, tot = 0, *pr = malloc(sizeof(double) * (size_t)E);
    for (int e = 0; e < E; e++)
        if (lg[e] > mx) mx = lg[e];
    for (int e = 0; e < E; e++) pr[e] = isnan(lg[e]) ? 0 : exp(lg[e] - mx);
    for (int j = 0; j < K; j++) {
        int b = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int i = 0; i < j; i++) taken |= sel[i] == e;
            if (!taken && (b < 0 || pr[e] > pr[b])) b = e;
        }
        sel[j] = b;
        tot += pr[b];
    }
    for (int j = 0; j < K; j++) w[j] = (float)(pr[sel[j]] / tot);
    free(pr);
}
/* How far the GPU's choices gsel and weights gw (T tokens x K) are from
 * the CPU engine's rule on logits lg (row stride LD): choices that differ
 * (and NaN weights of a token that chose no NaN logit), the largest weight
 * difference. A token that chose a NaN logit has NaN weights on the GPU
 * (the softmax over its choices), which are not compared. */
static void moe_route_compare(const float *lg, int T, int LD, int E, int K, const int32_t *gsel, const float *gw,
                              int *sel_diff, double *wmax)
{
    int32_t rsel[MR_TEST_KMAX];
    float rw[MR_TEST_KMAX];
    *sel_diff = 0;
    *wmax = 0;
    for (int t = 0; t < T; t++) {
        moe_route_ref(lg + (size_t)t * LD, E, K, rsel, rw);
        bool nan_choice = false;
        for (int j = 0; j < K; j++) nan_choice |= isnan(lg[(size_t)t * LD + rsel[j]]);
        for (int j = 0; j < K; j++) {
            *sel_diff += gsel[t * K + j] != rsel[j];
            if (isnan(gw[t * K + j])) *sel_diff += !nan_choice;
            else if (fabs(gw[t * K + j] - rw[j]) > *wmax) *wmax = fabs(gw[t * K + j] - rw[j]);
        }
    }
}
#endif

/* qk_moe_route against the CPU engine's rule (cpu_moe.c: softmax, top-k by
 * probability, ties to the lower index, renormalised), including exact
 * ties; then qk_moe_combine, gather and scatter-add against plain loops. */
static void moe_route_check(void)
{
    static const char *const names[] = {"moe_route", "moe_combine", "moe_gather_scatter", "moe_route_shared"};
    if (!gpu_init()) {
        for (int i = 0; i < 4; i++) th_skip(names[i], gpu_why);
        return;
    }
#ifdef QC_HAVE_CUDA
    enum { T = 9, E = 300, LD = E + 1, K = 8, D = 200 };
    float *lg = malloc(sizeof(float) * T * LD);
    for (int t = 0; t < T; t++)
        for (int e = 0; e < LD; e++) lg[t * LD + e] = (float)((double)(urand() >> 11) / 4503599627370496.0 * 8 - 4);
    for (int e = 0; e < E; e++) lg[1 * LD + e] = 0.5f;                           /* all tied */
    for (int e = 0; e < E; e += 7) lg[2 * LD + e] = 9.0f;                        /* ties among the best */
    lg[3 * LD + 5] = NAN;                                                         /* a NaN never wins */
    for (int e = 0; e < E; e++)                     /* 3 finite logits: then the lowest free indices */
        if (e != 17 && e != 100 && e != 250) lg[4 * LD + e] = NAN;
    float *dl = dput(lg, sizeof(float) * T * LD), *dw = dput(NULL, sizeof(float) * T * K);
    int32_t *ds = dput(NULL, sizeof(int32_t) * T * K);
    int rc = qk_moe_route(dl, LD, T, E, K, 0, ds, dw, NULL), src = (int)cudaDeviceSynchronize();
    int32_t gsel[T * K];
    float gw[T * K];
    cudaMemcpy(gsel, ds, sizeof gsel, cudaMemcpyDeviceToHost);
    cudaMemcpy(gw, dw, sizeof gw, cudaMemcpyDeviceToHost);
    int sel_diff;
    double wmax;
    moe_route_compare(lg, T, LD, E, K, gsel, gw, &sel_diff, &wmax);
    CHECK(names[0], !rc && !src && !sel_diff && wmax < 1e-6, "launch %d sync %d, %d choices differ, weights off by %.3g",
          rc, src, sel_diff, wmax);

    /* with the shared expert as entry K: expert E at weight 1 or sigmoid(logit E) */
    int32_t *ds2 = dput(NULL, sizeof(int32_t) * T * (K + 1));
    float *dw2 = dput(NULL, sizeof(float) * T * (K + 1));
    int sh_bad = 0;
    double shmax = 0;
    for (int shared = 1; shared <= 2; shared++) {
        rc |= qk_moe_route(dl, LD, T, E, K, shared, ds2, dw2, NULL);
        src |= (int)cudaDeviceSynchronize();
        int32_t s2[T * (K + 1)];
        float w2[T * (K + 1)];
        cudaMemcpy(s2, ds2, sizeof s2, cudaMemcpyDeviceToHost);
        cudaMemcpy(w2, dw2, sizeof w2, cudaMemcpyDeviceToHost);
        for (int t = 0; t < T; t++) {
            for (int j = 0; j < K; j++) /* bits: a token with NaN logits has NaN weights */
                sh_bad += s2[t * (K + 1) + j] != gsel[t * K + j] || memcmp(&w2[t * (K + 1) + j], &gw[t * K + j], 4);
            const double g = shared == 2 ? 1.0 / (1.0 + exp(-(double)lg[t * LD + E])) : 1.0;
            sh_bad += s2[t * (K + 1) + K] != E;
            if (fabs(w2[t * (K + 1) + K] - g) > shmax) shmax = fabs(w2[t * (K + 1) + K] - g);
        }
    }
    CHECK(names[3], !rc && !src && !sh_bad && shmax < 1e-6, "launch %d sync %d, %d entries differ, gate off by %.3g", rc,
          src, sh_bad, shmax);
    cudaFree(ds2);
    cudaFree(dw2);

    /* combine: h += sum_j w ye + sigmoid(router row E) ysh */
    float *h = malloc(sizeof(float) * T * D), *ye = malloc(sizeof(float) * T * K * D), *ysh = malloc(sizeof(float) * T * D);
    for (int i = 0; i < T * D; i++) h[i] = frand_q(), ysh[i] = frand_q();
    for (int i = 0; i < T * K * D; i++) ye[i] = frand_q();
    float *dh = dput(h, sizeof(float) * T * D), *dye = dput(ye, sizeof(float) * T * K * D),
          *dysh = dput(ysh, sizeof(float) * T * D);
    rc = qk_moe_combine(dh, dye, dw, K, dysh, dl + E, LD, T, D, NULL);
    src = (int)cudaDeviceSynchronize();
    float *gh = malloc(sizeof(float) * T * D);
    cudaMemcpy(gh, dh, sizeof(float) * T * D, cudaMemcpyDeviceToHost);
    double cmax = 0;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < D; c++) {
            double acc = 0;
            for (int j = 0; j < K; j++) acc += (double)gw[t * K + j] * ye[(t * K + j) * D + c];
            acc += 1.0 / (1.0 + exp(-(double)lg[t * LD + E])) * ysh[t * D + c];
            double e = fabs(gh[t * D + c] - (h[t * D + c] + acc));
            if (e > cmax) cmax = e;
        }
    CHECK(names[1], !rc && !src && cmax < 1e-5, "launch %d sync %d, off by %.3g", rc, src, cmax);

    /* gather bf16 rows of tokens, scatter-add weighted rows back */
    enum { N = 5, DB = 64 };
    const int32_t rows[N] = {7, 0, 3, 8, 1};
    const float w5[N] = {0.5f, -1.0f, 2.0f, 0.25f, 1.0f};
    uint16_t xb[T * DB], gx[N * DB];
    for (int i = 0; i < T * DB; i++) xb[i] = qc_f32_to_bf16(frand_q());
    uint16_t *dxb = dput(xb, sizeof xb), *dgx = dput(NULL, sizeof gx);
    int32_t *drows = dput(rows, sizeof rows);
    float *dw5 = dput(w5, sizeof w5), *dacc = dput(NULL, sizeof(float) * T * DB);
    float *src5 = malloc(sizeof(float) * N * DB), acc[T * DB];
    for (int i = 0; i < N * DB; i++) src5[i] = frand_q();
    for (int i = 0; i < T * DB; i++) acc[i] = frand_q();
    float *dsrc5 = dput(src5, sizeof(float) * N * DB);
    cudaMemcpy(dacc, acc, sizeof acc, cudaMemcpyHostToDevice);
    int grc = qk_moe_gather(dxb, drows, N, DB, dgx, NULL);
    int arc = qk_moe_scatter_add(dacc, dsrc5, drows, dw5, N, DB, NULL);
    src = (int)cudaDeviceSynchronize();
    float gacc[T * DB];
    cudaMemcpy(gx, dgx, sizeof gx, cudaMemcpyDeviceToHost);
    cudaMemcpy(gacc, dacc, sizeof gacc, cudaMemcpyDeviceToHost);
    int gbad = 0;
    double amax = 0;
    for (int i = 0; i < N; i++) {
        gbad += memcmp(gx + i * DB, xb + rows[i] * DB, DB * 2) != 0;
        for (int c = 0; c < DB; c++) acc[rows[i] * DB + c] += w5[i] * src5[i * DB + c];
    }
    for (int i = 0; i < T * DB; i++)
        if (fabs(gacc[i] - acc[i]) > amax) amax = fabs(gacc[i] - acc[i]);
    CHECK(names[2], !grc && !arc && !src && !gbad && amax == 0, "launches %d %d sync %d, %d rows differ, sums off by %.3g",
          grc, arc, src, gbad, amax);
    void *bufs[] = {dl, dw, ds, dh, dye, dysh, dxb, dgx, drows, dw5, dacc, dsrc5};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
    free(lg);
    free(h);
    free(ye);
    free(ysh);
    free(gh);
    free(src5);
#endif
}

/* qk_moe_route at the widest shape it takes (E 1024, K 32: every lane holds
 * 32 logits) against the CPU engine's rule, logits on a coarse grid so
 * that ties are common, an odd number of tokens (a partial block of
 * warps). */
static void moe_route_wide_check(void)
{
    if (!gpu_init()) {
        th_skip("moe_route_wide", gpu_why);
        return;
    }
#ifdef QC_HAVE_CUDA
    enum { T = 7, E = 1024, K = 32 };
    float *lg = malloc(sizeof(float) * T * E);
    for (int i = 0; i < T * E; i++) lg[i] = (float)rnd(64) * 0.125f - 4.0f;
    /* token 0: the best logits are +0 and -0, equal, so the lowest indices first */
    for (int e = 0; e < E; e++) lg[e] = -1.0f - (float)rnd(8);
    lg[3] = -0.0f, lg[7] = 0.0f, lg[900] = 0.0f, lg[901] = -0.0f;
    int32_t gsel[T * K];
    float gw[T * K];
    float *dl = dput(lg, sizeof(float) * T * E), *dw = dput(NULL, sizeof gw);
    int32_t *ds = dput(NULL, sizeof gsel);
    const int rc = qk_moe_route(dl, E, T, E, K, 0, ds, dw, NULL), src = (int)cudaDeviceSynchronize();
    cudaMemcpy(gsel, ds, sizeof gsel, cudaMemcpyDeviceToHost);
    cudaMemcpy(gw, dw, sizeof gw, cudaMemcpyDeviceToHost);
    int sel_diff;
    double wmax;
    moe_route_compare(lg, T, E, E, K, gsel, gw, &sel_diff, &wmax);
    CHECK("moe_route_wide", !rc && !src && !sel_diff && wmax < 1e-6, "launch %d sync %d, %d choices differ, weights off by %.3g",
          rc, src, sel_diff, wmax);
    cudaFree(dl);
    cudaFree(dw);
    cudaFree(ds);
    free(lg);
#endif
}

/* qk_moe_router (the MoE block's norm and router in one launch) against
 * qk_rmsnorm1p (xb and xf: the same bits) and a double sum of the router
 * rows with that xf. N 257 rows (a partial block), D 2048 (35B-A3B), 200
 * (rows shorter than the loads made before the PDL wait) and 3072 (longer). */
static void moe_router_check(const char *name, int T, int D, int N)
{
    if (!gpu_init()) {
        th_skip(name, gpu_why);
        return;
    }
#ifdef QC_HAVE_CUDA
    const int ldy = N + 3;
    float *h = malloc(sizeof(float) * T * D), *w = malloc(sizeof(float) * D), *W = malloc(sizeof(float) * N * D);
    for (int i = 0; i < T * D; i++) h[i] = frand_q() * 3.0f;
    for (int i = 0; i < D; i++) w[i] = frand_q() * 0.5f;
    for (int i = 0; i < N * D; i++) W[i] = frand_q();
    float *dh = dput(h, sizeof(float) * T * D), *dwn = dput(w, sizeof(float) * D), *dW = dput(W, sizeof(float) * N * D);
    float *dxf = dput(NULL, sizeof(float) * T * D), *dxf2 = dput(NULL, sizeof(float) * T * D);
    float *dy = dput(NULL, sizeof(float) * T * ldy);
    uint16_t *dxb = dput(NULL, (size_t)T * D * 2), *dxb2 = dput(NULL, (size_t)T * D * 2);
    const int rc = qk_moe_router(dh, dwn, 1e-6f, T, D, dW, N, dxb, dxf, dy, ldy, NULL);
    const int nrc = qk_rmsnorm1p(dh, dwn, 1e-6f, T, D, dxb2, dxf2, NULL);
    const int src = (int)cudaDeviceSynchronize();
    float *xf = malloc(sizeof(float) * T * D), *xf2 = malloc(sizeof(float) * T * D), *y = malloc(sizeof(float) * T * ldy);
    uint16_t *xb = malloc((size_t)T * D * 2), *xb2 = malloc((size_t)T * D * 2);
    cudaMemcpy(xf, dxf, sizeof(float) * T * D, cudaMemcpyDeviceToHost);
    cudaMemcpy(xf2, dxf2, sizeof(float) * T * D, cudaMemcpyDeviceToHost);
    cudaMemcpy(xb, dxb, (size_t)T * D * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(xb2, dxb2, (size_t)T * D * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(y, dy, sizeof(float) * T * ldy, cudaMemcpyDeviceToHost);
    const int xdiff = memcmp(xf, xf2, sizeof(float) * T * D) != 0, bdiff = memcmp(xb, xb2, (size_t)T * D * 2) != 0;
    double ymax = 0;
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double a = 0, m = 0;
            for (int k = 0; k < D; k++) {
                a += (double)W[(size_t)n * D + k] * xf2[(size_t)t * D + k];
                m += fabs((double)W[(size_t)n * D + k] * xf2[(size_t)t * D + k]);
            }
            const double e = fabs(y[t * ldy + n] - a) / (m > 0 ? m : 1);
            if (e > ymax) ymax = e;
        }
    CHECK(name, !rc && !nrc && !src && !xdiff && !bdiff && ymax < 1e-6,
          "launch %d / %d sync %d, xf %s, xb %s, logits off by %.3g of the sum of |terms|", rc, nrc, src,
          xdiff ? "DIFFERS" : "same", bdiff ? "DIFFERS" : "same", ymax);
    void *dev[] = {dh, dwn, dW, dxf, dxf2, dy, dxb, dxb2};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    free(h), free(w), free(W), free(xf), free(xf2), free(y), free(xb), free(xb2);
#else
    (void)T, (void)D, (void)N;
#endif
}

/* qk_gemv_moe_routed (the decode step's routing inside the gate|up launch)
 * against qk_moe_route + qk_gemv_moe: the same choices, weights and outputs,
 * bit for bit. E routed experts and, with shared, a shared one (entry E of
 * the table); logits with ties among the best and a NaN. layout: -1 mixed
 * (the generic kernel), else one layout of moe_build (a one-body kernel). */
static void moe_gemv_routed_check(const char *name, int E, int K, int shared, int layout)
{
    if (!gpu_init()) {
        th_skip(name, gpu_why);
        return;
    }
#ifdef QC_HAVE_CUDA
    enum { P = 2, N = 72, KD = 256 };
    const int nt = E + (shared != 0), n = K + (shared != 0), ld = E + 1;
    char why[256] = "";
    moe_parts mp;
    const bool ok = moe_parts_make_layout(&mp, layout, nt * P, P, N, KD, why, sizeof why);
    float *lg = malloc(sizeof(float) * ld);
    for (int e = 0; e < ld; e++) lg[e] = (float)rnd(16) * 0.25f - 2.0f; /* ties */
    lg[E / 2] = NAN;
    uint16_t xb[KD];
    for (int k = 0; k < KD; k++) xb[k] = qc_f32_to_bf16(frand_q());
    const int64_t ys = P * N + 1;
    float *dl = dput(lg, sizeof(float) * ld), *dw1 = dput(NULL, sizeof(float) * n), *dw2 = dput(NULL, sizeof(float) * n);
    float *dy1 = dput(NULL, sizeof(float) * n * ys), *dy2 = dput(NULL, sizeof(float) * n * ys);
    int32_t *ds1 = dput(NULL, sizeof(int32_t) * n), *ds2 = dput(NULL, sizeof(int32_t) * n);
    uint16_t *dx = dput(xb, sizeof xb);
    void *table = NULL;
    cudaMalloc(&table, qk_moe_table_bytes(nt * P));
    cudaMemset(dy1, 0x7f, sizeof(float) * n * ys);
    cudaMemset(dy2, 0x7f, sizeof(float) * n * ys);
    qk_moe_table t;
    int trc = ok ? qk_moe_table_fill(mp.dp, nt, P, table, &t) : -1, krc = -1;
    if (!trc)
        krc = qk_moe_route(dl, ld, 1, E, K, shared, ds1, dw1, NULL) | qk_gemv_moe(&t, ds1, n, NULL, dx, n, 0, dy1, ys, NULL) |
              qk_gemv_moe_routed(&t, dl, E, K, shared, ds2, dw2, dx, dy2, ys, NULL);
    const int src = (int)cudaDeviceSynchronize();
    float *y1 = malloc(sizeof(float) * n * ys), *y2 = malloc(sizeof(float) * n * ys), w1[33], w2[33];
    int32_t s1[33], s2[33];
    cudaMemcpy(y1, dy1, sizeof(float) * n * ys, cudaMemcpyDeviceToHost);
    cudaMemcpy(y2, dy2, sizeof(float) * n * ys, cudaMemcpyDeviceToHost);
    cudaMemcpy(s1, ds1, sizeof(int32_t) * n, cudaMemcpyDeviceToHost);
    cudaMemcpy(s2, ds2, sizeof(int32_t) * n, cudaMemcpyDeviceToHost);
    cudaMemcpy(w1, dw1, sizeof(float) * n, cudaMemcpyDeviceToHost);
    cudaMemcpy(w2, dw2, sizeof(float) * n, cudaMemcpyDeviceToHost);
    const int ydiff = memcmp(y1, y2, sizeof(float) * n * ys) != 0;
    const int sdiff = memcmp(s1, s2, sizeof(int32_t) * n) != 0, wdiff = memcmp(w1, w2, sizeof(float) * n) != 0;
    CHECK(name, ok && !trc && !krc && !src && !ydiff && !sdiff && !wdiff,
          "%s table %d launches %d sync %d: y %s, choices %s, weights %s", why, trc, krc, src, ydiff ? "DIFFER" : "same",
          sdiff ? "DIFFER" : "same", wdiff ? "DIFFER" : "same");
    void *dev[] = {dl, dw1, dw2, dy1, dy2, ds1, ds2, dx, table};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    moe_parts_free(&mp);
    free(lg), free(y1), free(y2);
#else
    (void)E, (void)K, (void)shared, (void)layout;
#endif
}

/* qk_gemv_moe on rows of at most 32 chunks (three row groups per warp)
 * against one row group per warp (qk_moe_gemv_groups 1): the same bits.
 * A down-like table (P 1, one x row per pair), npairs pairs of E experts,
 * N rows not a multiple of the 96 a block covers. layout: -1 mixed. */
static void moe_gemv_groups_check(const char *name, int layout, int64_t N, int64_t K, int npairs)
{
    if (!gpu_init()) {
        th_skip(name, gpu_why);
        return;
    }
#ifdef QC_HAVE_CUDA
    enum { E = 5 };
    char why[256] = "";
    moe_parts mp;
    const bool ok = moe_parts_make_layout(&mp, layout, E, 1, N, K, why, sizeof why);
    int32_t *sel = malloc(sizeof(int32_t) * npairs);
    for (int j = 0; j < npairs; j++) sel[j] = (int32_t)rnd(E);
    uint16_t *xb = malloc((size_t)(npairs * K) * 2);
    for (int64_t k = 0; k < npairs * K; k++) xb[k] = qc_f32_to_bf16(frand_q());
    const int64_t ys = N + 5;
    int32_t *ds = dput(sel, sizeof(int32_t) * npairs);
    uint16_t *dx = dput(xb, (size_t)(npairs * K) * 2);
    float *dy1 = dput(NULL, sizeof(float) * npairs * ys), *dy3 = dput(NULL, sizeof(float) * npairs * ys);
    void *table = NULL;
    cudaMalloc(&table, qk_moe_table_bytes(E));
    cudaMemset(dy1, 0x7f, sizeof(float) * npairs * ys);
    cudaMemset(dy3, 0x7f, sizeof(float) * npairs * ys);
    qk_moe_table t;
    const int trc = ok ? qk_moe_table_fill(mp.dp, E, 1, table, &t) : -1;
    int krc = -1;
    if (!trc) {
        qk_moe_gemv_groups = 1;
        krc = qk_gemv_moe(&t, ds, npairs, NULL, dx, 1, K, dy1, ys, NULL);
        qk_moe_gemv_groups = 3;
        krc |= qk_gemv_moe(&t, ds, npairs, NULL, dx, 1, K, dy3, ys, NULL);
    }
    const int src = (int)cudaDeviceSynchronize();
    float *y1 = malloc(sizeof(float) * npairs * ys), *y3 = malloc(sizeof(float) * npairs * ys);
    cudaMemcpy(y1, dy1, sizeof(float) * npairs * ys, cudaMemcpyDeviceToHost);
    cudaMemcpy(y3, dy3, sizeof(float) * npairs * ys, cudaMemcpyDeviceToHost);
    const int diff = memcmp(y1, y3, sizeof(float) * npairs * ys) != 0;
    CHECK(name, ok && !trc && !krc && !src && !diff && t.kc_max <= 32, "%s table %d launches %d sync %d, kc_max %d: %s",
          why, trc, krc, src, trc ? -1 : t.kc_max, diff ? "outputs DIFFER" : "same");
    void *dev[] = {ds, dx, dy1, dy3, table};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    moe_parts_free(&mp);
    free(sel), free(xb), free(y1), free(y3);
#else
    (void)layout, (void)N, (void)K, (void)npairs;
#endif
}

/* The grouped expert GEMMs of a long prefill chunk (kernels/moe_gemm.cu),
 * as the engine runs them: qk_moe_plan over T tokens x Kc choices, then
 * gate|up with the SwiGLU and down, per batch of `batch` experts through
 * qk_moe_dequant (batch 0: the weights read in place, decoded while
 * loading). E experts of gate|up [I, D] and down [D, I] in layout lay: 0
 * BF16, 1 per expert from moe_build, 2 fp8-block, 3 ct-int4 g128, 4
 * nvfp4-ct, 5 gptq g32 asymmetric, 6 mxfp4. Checked: the plan (a permutation in expert
 * order; offsets and tiles that cover each expert's run in pieces of at
 * most bm), h = bf16(silu(g) u) against a double reference on the
 * bf16-rounded weights (within bf16 rounding), and y against a double sum
 * of the GPU's own h (fp32 accumulation only), in pair order. */
static void moe_grouped_check(const char *name, int E, int lay, int64_t D, int64_t I, int T, int Kc, int batch,
                              int bm, const int32_t *sel)
{
    if (!gpu_init()) {
        th_skip(name, gpu_why);
        return;
    }
#ifdef QC_HAVE_CUDA
    const int n = T * Kc, maxt = n / bm + E;
    pub *pb = calloc((size_t)E * 3, sizeof *pb);
    qk_qweight *d = calloc((size_t)E * 3, sizeof *d);
    const qk_qweight **gu = calloc((size_t)E * 2, sizeof *gu), **dn = calloc((size_t)E, sizeof *dn);
    float **wr = calloc((size_t)E * 3, sizeof *wr); /* bf16-rounded dequantized weights */
    char why[320] = "";
    int ok = 1;
    for (int e = 0; e < E; e++)
        for (int i = 0; i < 3; i++) {
            const int j = e * 3 + i;
            const int64_t N = i < 2 ? I : D, K = i < 2 ? D : I;
            char nm[32];
            snprintf(nm, sizeof nm, "expert%d.%d", e, i);
            switch (lay) {
            case 0: build_bf16(&pb[j], nm, N, K); break;
            case 1: moe_build(&pb[j], e, i, N, K); break;
            case 2: build_fp8(&pb[j], nm, QC_FMT_FP8_BLOCK, N, K, 128, 128, QC_DT_BF16); break;
            case 3: build_ct(&pb[j], nm, N, K, 128, 0, 0); break;
            case 4: build_fp4(&pb[j], nm, QC_FMT_NVFP4_CT, N, K, 1234.567f); break;
            case 5: build_gptq(&pb[j], nm, N, K, 32, 0, 0, 0); break;
            default: build_fp4(&pb[j], nm, QC_FMT_MXFP4_CT, N, K, 1.0f); break;
            }
            if (!part_upload(&pb[j], j, &d[j], why, sizeof why)) ok = 0;
            wr[j] = malloc((size_t)(N * K) * sizeof(float));
            qc_linear_dequant_rows(&pb[j].l, 0, N, wr[j]);
            for (int64_t q = 0; q < N * K; q++) wr[j][q] = qc_bf16_to_f32(qc_f32_to_bf16(wr[j][q]));
            if (i < 2) gu[e * 2 + i] = &d[j];
            else dn[e] = &d[j];
        }
    uint16_t *xb = malloc((size_t)(T * D) * 2);
    for (int64_t k = 0; k < T * D; k++) xb[k] = qc_f32_to_bf16(frand_q());
    void *tg = NULL, *td = NULL;
    cudaMalloc(&tg, qk_moe_table_bytes(E * 2));
    cudaMalloc(&td, qk_moe_table_bytes(E));
    int32_t *dsel = dput(sel, (size_t)n * 4), *dord = dput(NULL, (size_t)n * 4), *doff = dput(NULL, (size_t)(E + 1) * 4),
            *dts = dput(NULL, (size_t)(E + 1) * 4), *dtl = dput(NULL, (size_t)maxt * 16);
    uint16_t *dx = dput(xb, (size_t)(T * D) * 2), *dh = dput(NULL, (size_t)(n * I) * 2), *dq = NULL;
    float *dy = dput(NULL, (size_t)(n * D) * 4);
    const int nb = batch ? batch : E;
    if (batch) dq = dput(NULL, (size_t)(nb * 3 * I * D) * 2);
    qk_moe_table t_gu, t_dn;
    cudaStream_t qs;
    cudaStreamCreateWithFlags(&qs, cudaStreamNonBlocking);
    int trc = ok ? qk_moe_table_fill(gu, E, 2, tg, &t_gu) | qk_moe_table_fill(dn, E, 1, td, &t_dn) : -1;
    int krc = trc ? -1 : qk_moe_plan(dsel, n, E, bm, dord, doff, dts, dtl, qs);
    for (int e0 = 0; e0 < E && !krc; e0 += nb) {
        const int e1 = e0 + nb < E ? e0 + nb : E;
        uint16_t *qg = dq, *qd = dq ? dq + (size_t)nb * 2 * I * D : NULL;
        if (dq) krc |= qk_moe_dequant(&t_gu, e0, e1, doff, qg, qs) | qk_moe_dequant(&t_dn, e0, e1, doff, qd, qs);
        krc |= qk_moe_gemm(&t_gu, qg, e0, e1, bm, dts, dtl, maxt, dx, D, dord, Kc, dh, I, NULL, qs);
        krc |= qk_moe_gemm(&t_dn, qd, e0, e1, bm, dts, dtl, maxt, dh, I, NULL, 1, dy, D, dord, qs);
    }
    const int src = (int)cudaStreamSynchronize(qs);
    int32_t *ord = malloc((size_t)n * 4), *off = malloc((size_t)(E + 1) * 4), *ts = malloc((size_t)(E + 1) * 4),
            *tl = malloc((size_t)maxt * 16);
    uint16_t *h = malloc((size_t)(n * I) * 2);
    float *y = malloc((size_t)(n * D) * 4);
    cudaMemcpy(ord, dord, (size_t)n * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(off, doff, (size_t)(E + 1) * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(ts, dts, (size_t)(E + 1) * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(tl, dtl, (size_t)maxt * 16, cudaMemcpyDeviceToHost);
    cudaMemcpy(h, dh, (size_t)(n * I) * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(y, dy, (size_t)(n * D) * 4, cudaMemcpyDeviceToHost);
    /* the plan */
    int bad = off[0] != 0 || off[E] != n || ts[0] != 0 || ts[E] > maxt;
    char *seen = calloc((size_t)n, 1);
    for (int i = 0; i < n && !bad; i++) {
        bad |= ord[i] < 0 || ord[i] >= n || seen[ord[i]]++;
        if (!bad) bad |= i < off[sel[ord[i]]] || i >= off[sel[ord[i]] + 1];
    }
    for (int e = 0; e < E && !bad; e++) {
        int at = off[e];
        for (int j = ts[e]; j < ts[e + 1]; j++) {
            bad |= tl[4 * j] != e || tl[4 * j + 1] != at || tl[4 * j + 2] != off[e + 1] || at >= off[e + 1];
            at += bm;
        }
        bad |= at < off[e + 1];
    }
    /* h (sorted order) and y (pair order) */
    double he = 0, ye = 0;
    double *hr = malloc((size_t)I * sizeof *hr), *yr = malloc((size_t)D * sizeof *yr);
    float *hg = malloc((size_t)I * sizeof *hg);
    for (int i = 0; i < n && !bad; i++) {
        const int q = ord[i], e = sel[q];
        const uint16_t *x = xb + (size_t)(q / Kc) * D;
        for (int64_t c = 0; c < I; c++) {
            double g = 0, u = 0;
            for (int64_t k = 0; k < D; k++) {
                g += (double)wr[e * 3][c * D + k] * qc_bf16_to_f32(x[k]);
                u += (double)wr[e * 3 + 1][c * D + k] * qc_bf16_to_f32(x[k]);
            }
            hr[c] = g / (1.0 + exp(-g)) * u;
            hg[c] = qc_bf16_to_f32(h[(size_t)i * I + c]);
        }
        const double eh = rel_l2(hg, hr, I);
        if (!(eh <= he)) he = eh;
        for (int64_t r = 0; r < D; r++) {
            double a = 0;
            for (int64_t k = 0; k < I; k++) a += (double)wr[e * 3 + 2][r * I + k] * hg[k];
            yr[r] = a;
        }
        const double ey = rel_l2(y + (size_t)q * D, yr, D);
        if (!(ey <= ye)) ye = ey;
    }
    ok = ok && trc == 0 && krc == 0 && src == 0 && !bad && he < 4e-3 && ye < 1e-5;
    snprintf(why, sizeof why, "table %d launches %d sync %d plan %s, worst rel_l2 h %.3g y %.3g", trc, krc, src,
             bad ? "WRONG" : "ok", he, ye);
    printf("# %s: %d pairs on %d experts, D %lld, I %lld, batch %d, tiles of %d: worst rel_l2 h %.3g, y %.3g\n",
           name, n, E, (long long)D, (long long)I, batch, bm, he, ye);
    CHECK(name, ok, "%s", why);
    cudaStreamDestroy(qs);
    void *dev[] = {tg, td, dsel, dord, doff, dts, dtl, dx, dh, dq, dy};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    for (int j = 0; j < E * 3; j++) {
        qc_qweight_free_dev(&d[j]);
        pub_free(&pb[j]);
        free(wr[j]);
    }
    free(pb), free(d), free(gu), free(dn), free(wr), free(xb), free(ord), free(off), free(ts), free(tl), free(h);
    free(y), free(seen), free(hr), free(yr), free(hg);
#else
    (void)E, (void)lay, (void)D, (void)I, (void)T, (void)Kc, (void)batch, (void)bm, (void)sel;
#endif
}

/* Choices for moe_grouped_check: T tokens x Kc distinct experts of E,
 * skewed so expert 1 gets more than one tile of pairs and expert E - 2
 * none. */
static void moe_grouped_sel(int32_t *sel, int T, int Kc, int E)
{
    for (int t = 0; t < T; t++)
        for (int j = 0; j < Kc; j++) {
            int e;
            bool dup;
            do {
                e = j == 0 && t % 5 ? 1 : (int)(urand() % (uint64_t)E);
                dup = e == E - 2;
                for (int i = 0; i < j; i++) dup |= sel[t * Kc + i] == e;
            } while (dup);
            sel[t * Kc + j] = e;
        }
}

static void test_moe(void)
{
    /* gate|up-like (P = 2, one x) and down-like (P = 1, one x per chosen
     * expert); K = 256 keeps every layout's whole groups, N = 72 is not a
     * multiple of 64, 2 * 5 * 72 rows split K across warps on a large GPU */
    static const int32_t sel3[] = {3, 0, 4}, sel5[] = {4, 2, 1, 3, 0}, sel1[] = {2};
    moe_gemv_check("moe_gemv_gate_up_3of5", 5, 2, 72, 256, sel3, 3, 0, false);
    moe_gemv_check("moe_gemv_down_5of5", 5, 1, 72, 256, sel5, 5, 1, false);
    moe_gemv_check("moe_gemv_one_expert_tall", 5, 1, 3000, 512, sel1, 1, 1, false);
    /* a prefill chunk's pairs: 7 tokens x 3 choices, the last choice of each
     * token the shared entry 4, gate|up reading x row j / 3 and down its own
     * row, in expert order (experts repeat across tokens) */
    static const int32_t pairs[] = {0, 3, 4, 2, 0, 4, 3, 1, 4, 0, 2, 4, 1, 3, 4, 3, 0, 4, 2, 1, 4};
    moe_gemv_check("moe_gemv_pairs_gate_up", 5, 2, 72, 256, pairs, 21, 3, true);
    moe_gemv_check("moe_gemv_pairs_down", 5, 1, 72, 256, pairs, 21, 1, true);
    /* tables of one layout run kernels with that body only */
    static const char *const one[] = {"moe_gemv_pairs_fp8_only", "moe_gemv_pairs_ct_int4_only",
                                      "moe_gemv_pairs_nvfp4_only", "moe_gemv_pairs_bf16_only", "moe_gemv_pairs_gptq_only"};
    for (moe_one_layout = 0; moe_one_layout < 5; moe_one_layout++)
        moe_gemv_check(one[moe_one_layout], 5, 2, 72, 256, pairs, 21, 3, true);
    moe_one_layout = -1;
    moe_route_check();
    /* grouped GEMMs: five layouts dequantized in batches of 2 experts (the
     * last batch of one), 200 tokens x 2; all-BF16 experts in place with a
     * partial input tile (D 264) and a partial output tile (I 72) */
    int32_t *gs = malloc(200 * 3 * sizeof *gs);
    moe_grouped_sel(gs, 200, 2, 5);
    moe_grouped_check("moe_grouped_mixed_batched", 5, 1, 256, 96, 200, 2, 2, 128, gs);
    moe_grouped_check("moe_grouped_mixed_batched_t32", 5, 1, 256, 96, 200, 2, 2, 32, gs);
    moe_grouped_sel(gs, 100, 3, 6);
    moe_grouped_check("moe_grouped_bf16_in_place", 6, 0, 264, 72, 100, 3, 0, 128, gs);
    moe_grouped_check("moe_grouped_bf16_in_place_t64", 6, 0, 264, 72, 100, 3, 0, 64, gs);
    /* each layout family decoded while loading: partial FP8 blocks and a
     * partial input tile (D 264, I 72 with 128 x 128 blocks), INT4 and FP4
     * with whole groups and a partial last input tile of down (I 96) */
    moe_grouped_check("moe_grouped_fp8_in_place", 6, 2, 264, 72, 100, 3, 0, 128, gs);
    moe_grouped_check("moe_grouped_fp8_in_place_t32", 6, 2, 264, 72, 100, 3, 0, 32, gs);
    moe_grouped_check("moe_grouped_ct_int4_in_place", 6, 3, 256, 96, 100, 3, 0, 64, gs);
    moe_grouped_check("moe_grouped_gptq_asym_in_place", 6, 5, 256, 96, 100, 3, 0, 32, gs);
    moe_grouped_check("moe_grouped_nvfp4_in_place", 6, 4, 256, 96, 100, 3, 0, 128, gs);
    moe_grouped_check("moe_grouped_mxfp4_in_place", 6, 6, 256, 96, 100, 3, 0, 64, gs);
    free(gs);
    moe_route_wide_check();
    moe_router_check("moe_router_norm_d2048", 1, 2048, 257);
    moe_router_check("moe_router_norm_d200_t3", 3, 200, 257);
    moe_router_check("moe_router_norm_d3072", 2, 3072, 257); /* rows longer than the loads before the PDL wait */
    moe_gemv_routed_check("moe_gemv_routed_mixed_shared_gate", 5, 3, 2, -1);
    moe_gemv_routed_check("moe_gemv_routed_fp8_e40_k8_shared", 40, 8, 1, 0);
    moe_gemv_routed_check("moe_gemv_routed_nvfp4_e40_k8", 40, 8, 0, 2);
    moe_gemv_routed_check("moe_gemv_routed_fp8_e1024_k32_shared", 1024, 32, 2, 0);
    /* rows of 512 inputs (FP8 32 chunks, INT4 / FP4 16), N 200; mixed with
     * BF16 (8 inputs a chunk) at 256 */
    moe_gemv_groups_check("moe_gemv_groups_mixed", -1, 200, 256, 9);
    moe_gemv_groups_check("moe_gemv_groups_fp8", 0, 200, 512, 9);
    moe_gemv_groups_check("moe_gemv_groups_ct_int4", 1, 200, 512, 9);
    moe_gemv_groups_check("moe_gemv_groups_nvfp4", 2, 200, 512, 9);
    moe_gemv_groups_check("moe_gemv_groups_gptq_g32", 4, 200, 256, 5);
}

/* The MoE decode entry points refuse what they cannot run before touching
 * the device (so this needs no GPU): D not a multiple of 4 or over 8192,
 * more than 1024 experts or 32 choices, K > E, a table without the shared
 * entry, missing pointers. */
static void moe_args_check(void)
{
#ifdef QC_HAVE_CUDA
    static float f[16];
    static uint16_t b[16];
    static int32_t i32[40];
    const qk_moe_table t = {.d = f, .E = 9, .P = 2, .n = 4, .k = 32, .groups = 1, .kc_min = 4, .kc_max = 4, .body = -1};
    const int inv = (int)cudaErrorInvalidValue;
    int bad = 0;
    bad += qk_moe_router(f, f, 1e-6f, 1, 6, f, 4, b, NULL, f, 4, NULL) != inv;      /* D % 4 */
    bad += qk_moe_router(f, f, 1e-6f, 1, 8196, f, 4, b, NULL, f, 4, NULL) != inv;   /* D > 8192 */
    bad += qk_moe_router(f, f, 1e-6f, 1, 8, f, 4, b, NULL, f, 3, NULL) != inv;      /* ldy < N */
    bad += qk_moe_router(NULL, f, 1e-6f, 1, 8, f, 4, b, NULL, f, 4, NULL) != inv;   /* no h */
    bad += qk_gemv_moe_routed(&t, f, 8, 9, 0, i32, f, b, f, 8, NULL) != inv;        /* K > E */
    bad += qk_gemv_moe_routed(&t, f, 8, 33, 0, i32, f, b, f, 8, NULL) != inv;       /* K > 32 */
    bad += qk_gemv_moe_routed(&t, f, 1025, 8, 0, i32, f, b, f, 8, NULL) != inv;     /* E > 1024 */
    bad += qk_gemv_moe_routed(&t, f, 9, 8, 1, i32, f, b, f, 8, NULL) != inv;        /* no shared entry */
    bad += qk_gemv_moe_routed(&t, NULL, 8, 4, 1, i32, f, b, f, 8, NULL) != inv;     /* no logits */
    bad += qk_gemv_moe_routed(&t, f, 8, 4, 1, i32, f, b, f, 7, NULL) != inv;        /* ys < P n */
    bad += qk_moe_route(f, 8, 1, 1025, 8, 0, i32, f, NULL) != inv;                   /* E > 1024 */
    CHECK("moe_decode_bad_args", !bad, "%d of 11 bad calls accepted", bad);
#else
    th_skip("moe_decode_bad_args", "built without CUDA");
#endif
}

int main(void)
{
    moe_args_check();
    pub p;
    /* FP8 */
    build_fp8(&p, "fp8_block_partial", QC_FMT_FP8_BLOCK, 300, 400, 128, 128, QC_DT_BF16);
    run_case("fp8_block_300x400", &p);
    build_fp8(&p, "fp8_block_f32", QC_FMT_FP8_BLOCK, 1000, 5120, 128, 128, QC_DT_F32);
    run_case("fp8_block_1000x5120_f32scale", &p);
    build_fp8(&p, "fp8_tensor", QC_FMT_FP8_TENSOR, 130, 272, 0, 0, QC_DT_F32);
    run_case("fp8_tensor_130x272", &p);
    build_fp8(&p, "fp8_channel", QC_FMT_FP8_CHANNEL, 200, 200, 0, 0, QC_DT_BF16);
    run_case("fp8_channel_200x200", &p);
    /* INT4: gptq */
    build_gptq(&p, "gptq_v1_sym", 200, 1000, 128, 1, 1, 0);
    run_case("gptq_v1_sym_g128_200x1000", &p);
    build_gptq(&p, "gptq_v2_asym", 136, 200, 32, 0, 0, 0);
    run_case("gptq_v2_asym_g32_136x200", &p);
    build_gptq(&p, "gptq_v1_asym", 1000, 5120, 64, 1, 0, 0);
    run_case("gptq_v1_asym_g64_1000x5120", &p);
    /* N not a multiple of 8: the repack's 8 x 8 word transpose leaves edge rows (and, K / 8 not a
     * multiple of 8, edge words) to its word-by-word loop; with padding rows, and (2080) without any
     * padding, where the packer skips zeroing its rows */
    build_gptq(&p, "gptq_v2_asym_edge", 131, 1000, 64, 0, 0, 0);
    run_case("gptq_v2_asym_g64_131x1000", &p);
    build_gptq(&p, "gptq_v2_asym_edgek", 300, 2080, 32, 0, 0, 0);
    run_case("gptq_v2_asym_g32_300x2080", &p);
    build_gptq(&p, "gptq_actorder", 96, 512, 128, 1, 1, 1);
    run_case("gptq_gidx_actorder_g128_96x512", &p);
    build_gptq(&p, "gptq_uneven", 72, 320, 64, 0, 0, 2);
    run_case("gptq_gidx_uneven_g64_72x320", &p);
    /* act-order on the staged-x paths: streamed (K = 5120), the down
     * projection's K (34 KB of x per block), g32, a short last group */
    build_gptq(&p, "gptq_ao5120", 64, 5120, 128, 1, 1, 1);
    run_case("gptq_gidx_actorder_g128_64x5120", &p);
    build_gptq(&p, "gptq_ao17408", 24, 17408, 128, 1, 1, 1);
    run_case("gptq_gidx_actorder_g128_24x17408", &p);
    build_gptq(&p, "gptq_ao_g32", 40, 1024, 32, 0, 0, 1);
    run_case("gptq_gidx_actorder_g32_40x1024", &p);
    build_gptq(&p, "gptq_ao_short", 72, 1000, 128, 1, 0, 1);
    run_case("gptq_gidx_actorder_g128_72x1000", &p);
    /* INT4: awq */
    build_awq(&p, "awq_g128", 200, 520, 128);
    run_case("awq_g128_200x520", &p);
    build_awq(&p, "awq_g64", 64, 256, 64);
    run_case("awq_g64_64x256", &p);
    /* INT4: compressed-tensors */
    build_ct(&p, "ct_sym", 300, 1000, 128, 0, 0);
    run_case("ct_int_sym_g128_300x1000", &p);
    build_ct(&p, "ct_asym", 100, 200, 32, 1, 0);
    run_case("ct_int_asym_g32_100x200", &p);
    build_ct(&p, "ct_asym_gidx", 50, 256, 32, 1, 1);
    run_case("ct_int_asym_gidx_g32_50x256", &p);
    build_ct(&p, "ct_gidx_odd8", 30, 300, 32, 0, 1); /* K % 8 != 0: the row dequantization's 2-byte stores */
    run_case("ct_int_sym_gidx_g32_30x300", &p);
    build_ct(&p, "ct_k_odd8", 40, 100, 32, 0, 0);
    run_case("ct_int_sym_g32_40x100", &p);
    /* INT4 g128 runs on the tensor cores: long K with few rows takes the
     * split-K launch (several warps per row group) with a partial last step. */
    build_ct(&p, "ct_sym_splitk", 40, 8200, 128, 0, 0);
    run_case("ct_int_sym_g128_splitk_40x8200", &p);
    build_gptq(&p, "gptq_asym_splitk", 72, 4200, 128, 0, 0, 0);
    run_case("gptq_v2_asym_g128_splitk_72x4200", &p);
    /* NVFP4 (both global conventions) and MXFP4 */
    build_fp4(&p, "nvfp4_ct", QC_FMT_NVFP4_CT, 300, 200, 1234.567f);
    run_case("nvfp4_ct_300x200", &p);
    build_fp4(&p, "nvfp4_ct_big", QC_FMT_NVFP4_CT, 1000, 5120, 2688.0f / 3.7f);
    run_case("nvfp4_ct_1000x5120", &p);
    build_fp4(&p, "nvfp4_modelopt", QC_FMT_NVFP4_MODELOPT, 130, 512, 1.0f / 1234.567f);
    run_case("nvfp4_modelopt_130x512", &p);
    build_fp4(&p, "mxfp4", QC_FMT_MXFP4_CT, 200, 200, 0);
    run_case("mxfp4_200x200", &p);

    build_bf16(&p, "bf16", 48, 5120);
    run_case("bf16_48x5120", &p);

    /* Tall shapes: several rounds of the persistent launch (gemv_multi.cu)
     * plus its leftover phase, with one (INT4, FP8) and two (NVFP4) warps
     * per row group in the rounds and eight in the leftovers. */
    build_ct(&p, "ct_sym_tall", 17000, 512, 128, 0, 0);
    run_case("ct_int_sym_g128_tall_17000x512", &p);
    build_fp8(&p, "fp8_tall", QC_FMT_FP8_BLOCK, 17000, 256, 128, 128, QC_DT_BF16);
    run_case("fp8_block_tall_17000x256", &p);
    build_fp4(&p, "nvfp4_tall", QC_FMT_NVFP4_CT, 9000, 2048, 1234.567f);
    run_case("nvfp4_ct_tall_9000x2048", &p);

    /* Short K (one step per row group, a partial chunk of x). */
    build_fp8(&p, "fp8_shortk", QC_FMT_FP8_BLOCK, 72, 32, 128, 128, QC_DT_BF16);
    run_case("fp8_block_shortk_72x32", &p);
    build_ct(&p, "ct_shortk", 40, 32, 32, 1, 0);
    run_case("ct_int_asym_g32_shortk_40x32", &p);
    build_ct(&p, "ct_shortk_g128", 24, 96, 128, 0, 0);
    run_case("ct_int_sym_g128_shortk_24x96", &p);
    build_fp4(&p, "nvfp4_shortk", QC_FMT_NVFP4_CT, 36, 48, 321.5f);
    run_case("nvfp4_ct_shortk_36x48", &p);
    build_fp4(&p, "mxfp4_shortk", QC_FMT_MXFP4_CT, 20, 64, 0);
    run_case("mxfp4_shortk_20x64", &p);
    build_bf16(&p, "bf16_shortk", 12, 24);
    run_case("bf16_shortk_12x24", &p);
    /* Long K (mlp.down's 17408: 34 KB of staged x) with a split-K grid
     * (few rows). */
    build_fp4(&p, "nvfp4_longk", QC_FMT_NVFP4_CT, 64, 17408, 77.0f);
    run_case("nvfp4_ct_longk_64x17408", &p);
    build_gptq(&p, "gptq_longk", 40, 17408, 128, 0, 0, 0);
    run_case("gptq_v2_asym_g128_longk_40x17408", &p);

    /* K a multiple of 1024 like every 27B shape (whole 512-byte steps per
     * lane group): rounds plus leftovers, split K, every body. */
    build_ct(&p, "ct", 9000, 2048, 128, 0, 0);
    run_case("ct_int_sym_g128_9000x2048", &p);
    build_gptq(&p, "gptq", 300, 2048, 256, 0, 0, 0);
    run_case("gptq_v2_asym_g256_300x2048", &p);
    build_awq(&p, "awq", 200, 1024, 64);
    run_case("awq_g64_200x1024", &p);
    /* groups of 32 and 64 on the streamed kernel (a quad's words of one
     * group per mma step: gemv_multi.cu qt_dot): both scale types, rounds
     * plus leftovers, split K, and the down projection's K (34 KB of x: the
     * walks where two blocks with their rings do not fit an SM) */
    build_ct(&p, "ct_g32", 300, 5120, 32, 1, 0);
    run_case("ct_int_asym_g32_300x5120", &p);
    build_gptq(&p, "gptq_g32", 9000, 2048, 32, 0, 0, 0);
    run_case("gptq_v2_asym_g32_9000x2048", &p);
    build_awq(&p, "awq_g32", 40, 6144, 32);
    run_case("awq_g32_splitk_40x6144", &p);
    build_gptq(&p, "gptq_g32_longk", 200, 17408, 32, 1, 1, 0);
    run_case("gptq_v1_sym_g32_200x17408", &p);
    build_ct(&p, "ct_g64", 5000, 3072, 64, 0, 0);
    run_case("ct_int_sym_g64_5000x3072", &p);
    build_gptq(&p, "gptq_g64_longk", 136, 17408, 64, 0, 0, 0);
    run_case("gptq_v2_asym_g64_136x17408", &p);
    build_ct(&p, "ct_w_splitk", 24, 16384, 128, 1, 0);
    run_case("ct_int_asym_g128_splitk_24x16384", &p);
    build_fp8(&p, "fp8", QC_FMT_FP8_BLOCK, 5000, 1536, 128, 128, QC_DT_BF16);
    run_case("fp8_block_5000x1536", &p);
    build_fp8(&p, "fp8_w_splitk", QC_FMT_FP8_BLOCK, 100, 8192, 128, 128, QC_DT_F32);
    run_case("fp8_block_splitk_100x8192", &p);
    build_fp4(&p, "nvfp4", QC_FMT_NVFP4_MODELOPT, 4100, 1024, 1.0f / 97.0f);
    run_case("nvfp4_modelopt_4100x1024", &p);
    build_fp4(&p, "mxfp4", QC_FMT_MXFP4_CT, 300, 3072, 0);
    run_case("mxfp4_300x3072", &p);

    test_fused();
    test_streamed_paths();
    /* the same INT4 shapes in the tiled layout (every case above whose K is
     * a multiple of 1024 and whose groups are 32, 64 or 128: walks,
     * streamed kernel, dequantization, the host unpacking) */
    g_tile = true;
    build_gptq(&p, "gptq_v1_sym_edge", 133, 2048, 128, 1, 1, 0); /* edge rows, padding rows */
    run_case("tiled_gptq_v1_sym_g128_133x2048", &p);
    build_gptq(&p, "gptq_v1_sym_edge8", 300, 2048, 128, 1, 1, 0); /* edge rows, no padding: nothing zeroed */
    run_case("tiled_gptq_v1_sym_g128_300x2048", &p);
    build_gptq(&p, "gptq_v1_asym", 1000, 5120, 64, 1, 0, 0);
    run_case("tiled_gptq_v1_asym_g64_1000x5120", &p);
    build_gptq(&p, "gptq_longk", 40, 17408, 128, 0, 0, 0);
    run_case("tiled_gptq_v2_asym_g128_longk_40x17408", &p);
    build_ct(&p, "ct", 9000, 2048, 128, 0, 0);
    run_case("tiled_ct_int_sym_g128_9000x2048", &p);
    build_awq(&p, "awq", 200, 1024, 64);
    run_case("tiled_awq_g64_200x1024", &p);
    build_ct(&p, "ct_g32", 300, 5120, 32, 1, 0);
    run_case("tiled_ct_int_asym_g32_300x5120", &p);
    build_gptq(&p, "gptq_g32", 9000, 2048, 32, 0, 0, 0);
    run_case("tiled_gptq_v2_asym_g32_9000x2048", &p);
    build_awq(&p, "awq_g32", 40, 6144, 32);
    run_case("tiled_awq_g32_splitk_40x6144", &p);
    build_gptq(&p, "gptq_g32_longk", 200, 17408, 32, 1, 1, 0);
    run_case("tiled_gptq_v1_sym_g32_200x17408", &p);
    build_ct(&p, "ct_g64", 5000, 3072, 64, 0, 0);
    run_case("tiled_ct_int_sym_g64_5000x3072", &p);
    build_gptq(&p, "gptq_g64_longk", 136, 17408, 64, 0, 0, 0);
    run_case("tiled_gptq_v2_asym_g64_136x17408", &p);
    build_gptq(&p, "gptq_v2_sym", 1000, 5120, 128, 0, 1, 0);
    run_case("tiled_gptq_v2_sym_g128_1000x5120", &p);
    build_gptq(&p, "gptq_v1_sym_g64", 300, 6144, 64, 1, 1, 0);
    run_case("tiled_gptq_v1_sym_g64_300x6144", &p);
    /* K short of k_pad (1000 -> 1024, 2040 -> 2048): tiled, the last step part padding */
    build_ct(&p, "ct_k1000", 300, 1000, 128, 0, 0);
    run_case("tiled_ct_int_sym_g128_k1000_300x1000", &p);
    build_gptq(&p, "gptq_k2040", 136, 2040, 32, 0, 1, 0);
    run_case("tiled_gptq_v2_sym_g32_k2040_136x2040", &p);
    build_ct(&p, "ct_w_splitk", 24, 16384, 128, 1, 0);
    run_case("tiled_ct_int_asym_g128_splitk_24x16384", &p);
    test_fused();
    test_streamed_paths();
    g_tile = false;
    /* the act-order down-projection's decode (swiglu_dec) */
    swiglu_perm_check("swiglu_perm_down_actorder_96x17408", 96, 17408);
    swiglu_perm_check("swiglu_perm_down_actorder_40x1000", 40, 1000); /* K % 32 != 0: a short last group */
    test_norm_fused();
    build_fp8(&p, "fp8_xrange", QC_FMT_FP8_BLOCK, 260, 1000, 128, 128, QC_DT_BF16);
    xrange_check("xrange_fp8_block_260x1000", &p);
    build_fp4(&p, "nvfp4_xrange", QC_FMT_NVFP4_CT, 300, 2080, 1234.567f);
    xrange_check("xrange_nvfp4_ct_300x2080", &p);
    build_fp4(&p, "mxfp4_xrange", QC_FMT_MXFP4_CT, 200, 640, 0);
    xrange_check("xrange_mxfp4_200x640", &p);
    g_tile = true; /* tiled: INT4's streamed kernel */
    build_gptq(&p, "gptq_xrange", 136, 2048, 128, 0, 1, 0);
    xrange_check("xrange_tiled_gptq_v2_sym_g128_136x2048", &p);
    g_tile = false;
    test_refusals();
    test_moe();

    if (!gpu_init()) {
        th_skip("qbench", gpu_why);
        return th_exit();
    }
#ifdef QC_HAVE_CUDA
    bench_all();
#endif
    return th_exit();
}
