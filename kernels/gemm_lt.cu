/* gemm_lt.cu — prefill GEMMs for FP8 weights on the tensor cores in FP8,
 * through cuBLASLt block scaling (Hopper, sm_90).
 *
 * The exact path (gemm.cu) dequantizes each FP8 weight to BF16 and runs a
 * BF16 GEMM: 1 byte read + 2 written + 2 read per weight per chunk, and BF16
 * tensor-core throughput. Here the weight stays e4m3 with its own 128x128
 * block scales (CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F) and the
 * activations are quantized on the fly to e4m3 per token and 128 inputs,
 * scale = amax / 448 (VEC128_32F) — the "dynamic" activation scheme Qwen's
 * FP8 checkpoints declare (DeepSeek-V3 / vLLM fp8 block path). cuBLAS 12.9+
 * offers these modes on sm_90 only (NVIDIA/CUDALibrarySamples#270, #310);
 * other GPUs keep the dequantizing path.
 *
 * Operand layout (cuBLASLt is column-major), m = N rows of W, n = T tokens:
 *   A = W e4m3 row-major [n_pad][k_pad] = col-major K x N, ld k_pad, op T
 *       ("TN" is the only FP8 layout Hopper runs);
 *   B = Xq e4m3 row-major [T][K]        = col-major K x T, ld K, op N;
 *   C = D = Y row-major [T][ldy]        = col-major N x T, ld ldy (fp32, or
 *       bf16 for the gate|up projection), beta 0 or 1 (fused residual).
 * Scale tensors (pytorch/pytorch#166752 documents what cuBLASLt enforces):
 *   A (128x128): [ceil(N/128)][L4] fp32, L4 = ceil(K/128) rounded up to a
 *       multiple of 4 — quant.h's QK_QW_FP8 grid s[n/128][nkb] as is when
 *       nkb % 4 == 0 (every 27B shape), else copied with padded rows;
 *   B (1x128):   [ceil(K/128)][T] fp32, the token index fastest ("outer-dim
 *       major").
 * Weights that do not fit (fp8-tensor / fp8-channel scale grids, blocks other
 * than 128x128, K not a multiple of 128) are left to the caller's exact path.
 * Activation quantization changes the numerics (~1e-2 relative per GEMM
 * output); QCHAT_FP8_PREFILL=0 in the engine keeps the exact path. */
#include <cublasLt.h>
#include <cuda_fp8.h>
#include <stdlib.h>
#include <string.h>

#include "blas.cuh"
#include "quant.h"

#define LT_CACHE 64

typedef struct lt_key {
    int fp4, m, n, k, lda, ldb, ldd, out16, beta1;
    int al[3]; /* alignment (bytes, <= 256) of A, B, C/D */
} lt_key;

typedef struct lt_algo {
    lt_key key;
    int ok;
    cublasLtMatmulAlgo_t algo;
} lt_algo;

struct qk_lt {
    cublasLtHandle_t h;
    cudaStream_t st;
    void *ws; /* shared with the qk_blas it was made from (same stream) */
    size_t ws_bytes;
    int cc;
    uint8_t *q; /* quantized activations */
    size_t q_bytes;
    float *xs; /* activation scales */
    size_t xs_bytes;
    float *sp; /* weight scales with rows padded to L4 */
    size_t sp_bytes;
    /* NVFP4 (Blackwell): activation scale tiles, one weight's raw e2m1 bytes
     * and scale tiles, amax + global scale + alpha/beta (device pointer mode) */
    uint8_t *xsf, *wq, *wsf;
    size_t xsf_bytes, wq_bytes, wsf_bytes;
    float *f4; /* [0] amax bits, [1] activation global multiplier, [2] alpha, [3] beta */
    void *yt; /* the last T % 4 tokens' output rows (see qk_gemm_q_lt) */
    size_t yt_bytes;
    lt_algo cache[LT_CACHE];
    int ncache, next;
};

/* ---- activation quantizer -------------------------------------------------- */

/* One warp per token and two 128-column groups (a half-warp per group, 8
 * columns = one 16-byte load per lane: the first version, a warp per group
 * with 8-byte loads, took 0.31 ms for the 27B down-projection input at
 * T = 8192, 1.4 TB/s). Columns k < K come from X, K <= k < ldq are written
 * as 0. s = amax / 448 (1 for an all-zero group), q = e4m3_rn_satfinite(x /
 * s), with IEEE division so the CPU reference in tests/test_gemm_lt.c
 * reproduces every byte. */
__global__ void k_quant_act_fp8(const uint16_t *__restrict__ X, int T, int K, int ngrp, uint8_t *__restrict__ Q,
                                int ldq, float *__restrict__ S, int s_t, int s_g)
{
    const int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31, npair = (ngrp + 1) / 2;
    if (wid >= (int64_t)T * npair) return; /* uniform per warp */
    const int t = (int)(wid / npair), g = (int)(wid % npair) * 2 + (lane >> 4);
    const bool live = g < ngrp;
    const int k0 = g * 128 + (lane & 15) * 8;
    const uint16_t *x = X + (size_t)t * K;
    float v[8];
    if (live && (K & 7) == 0 && k0 + 8 <= K) {
        const uint4 u = *(const uint4 *)(x + k0);
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[2 * j] = qk_bf((uint16_t)(w[j] & 0xffff));
            v[2 * j + 1] = qk_bf((uint16_t)(w[j] >> 16));
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = live && k0 + j < K ? qk_bf(x[k0 + j]) : 0.0f;
    }
    float a = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) a = fmaxf(a, fabsf(v[j]));
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o)); /* within the half-warp */
    if (!live) return;
    float s = __fdiv_rn(a, 448.0f);
    if (!(s > 0.0f)) s = 1.0f;
    if ((lane & 15) == 0) S[(size_t)t * s_t + (size_t)g * s_g] = s;
    uint32_t p[2] = {0, 0};
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const __nv_fp8_storage_t b = __nv_cvt_float_to_fp8(__fdiv_rn(v[j], s), __NV_SATFINITE, __NV_E4M3);
        p[j >> 2] |= (uint32_t)b << (8 * (j & 3));
    }
    uint8_t *q = Q + (size_t)t * ldq;
    if ((ldq & 7) == 0 && k0 + 8 <= ldq) {
        *(uint2 *)(q + k0) = make_uint2(p[0], p[1]);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (k0 + j < ldq) q[k0 + j] = (uint8_t)(p[j >> 2] >> (8 * (j & 3)));
    }
}

extern "C" int qk_quant_act_fp8(const uint16_t *X, int T, int K, int ldq, uint8_t *Q, float *S, int s_t, int s_g,
                                qk_stream st)
{
    if (T <= 0) return 0;
    if (!X || !Q || !S || K <= 0 || ldq < K) return (int)cudaErrorInvalidValue;
    const int ngrp = (ldq + 127) / 128;
    const int64_t threads = (int64_t)T * ((ngrp + 1) / 2) * 32;
    k_quant_act_fp8<<<(unsigned)((threads + 255) / 256), 256, 0, st>>>(X, T, K, ngrp, Q, ldq, S, s_t, s_g);
    return qk_launch_status();
}

/* dst[r][c] = src[r][c] for c < nkb, 0 beyond (rows of ld4). */
__global__ void k_pad_scales(const float *__restrict__ src, int rows, int nkb, int ld4, float *__restrict__ dst)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * ld4) return;
    const int r = i / ld4, c = i % ld4;
    dst[i] = c < nkb ? src[(size_t)r * nkb + c] : 0.0f;
}

/* ---- handle ----------------------------------------------------------------- */

extern "C" int qk_lt_create(qk_lt **out, qk_blas *b, int cc)
{
    *out = NULL;
    if (!b) return (int)cudaErrorInvalidValue;
    qk_lt *lt = (qk_lt *)calloc(1, sizeof *lt);
    if (!lt) return (int)cudaErrorMemoryAllocation;
    if (cublasLtCreate(&lt->h) != CUBLAS_STATUS_SUCCESS || cublasGetStream(b->h, &lt->st) != CUBLAS_STATUS_SUCCESS) {
        if (lt->h) cublasLtDestroy(lt->h);
        free(lt);
        return (int)cudaErrorInitializationError;
    }
    lt->ws = b->ws;
    lt->ws_bytes = b->ws_bytes;
    lt->cc = cc;
    *out = lt;
    return 0;
}

extern "C" void qk_lt_free(qk_lt *lt)
{
    if (!lt) return;
    cublasLtDestroy(lt->h);
    if (lt->q) cudaFree(lt->q);
    if (lt->xs) cudaFree(lt->xs);
    if (lt->sp) cudaFree(lt->sp);
    if (lt->xsf) cudaFree(lt->xsf);
    if (lt->wq) cudaFree(lt->wq);
    if (lt->wsf) cudaFree(lt->wsf);
    if (lt->f4) cudaFree(lt->f4);
    if (lt->yt) cudaFree(lt->yt);
    free(lt);
}

extern "C" size_t qk_lt_device_bytes(const qk_lt *lt)
{
    return lt ? lt->q_bytes + lt->xs_bytes + lt->sp_bytes + lt->xsf_bytes + lt->wq_bytes + lt->wsf_bytes : 0;
}

/* Grows *p to at least bytes (contents dropped). Only called between
 * launches of an eager prefill (never inside a graph capture). */
static int lt_grow(void **p, size_t *have, size_t bytes)
{
    if (*have >= bytes) return 0;
    if (*p) cudaFree(*p);
    *p = NULL;
    *have = 0;
    bytes = (bytes + 4095) & ~(size_t)4095;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        return (int)e;
    }
    *have = bytes;
    return 0;
}

static int lt_align(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 1 && (a % (uintptr_t)al)) al >>= 1;
    return al;
}

/* The heuristic's first algorithm for this problem, cached (the heuristic
 * costs host time on every one of a prefill's ~250 GEMMs otherwise). */
static const lt_algo *lt_find(qk_lt *lt, const lt_key *k, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c)
{
    for (int i = 0; i < lt->ncache; i++)
        if (!memcmp(&lt->cache[i].key, k, sizeof *k)) return &lt->cache[i];
    lt_algo *e;
    if (lt->ncache < LT_CACHE)
        e = &lt->cache[lt->ncache++];
    else {
        e = &lt->cache[lt->next];
        lt->next = (lt->next + 1) % LT_CACHE;
    }
    memset(e, 0, sizeof *e);
    e->key = *k;
    cublasLtMatmulPreference_t pref = NULL;
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return e;
    uint32_t al[4] = {(uint32_t)k->al[0], (uint32_t)k->al[1], (uint32_t)k->al[2], (uint32_t)k->al[2]};
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &lt->ws_bytes,
                                         sizeof lt->ws_bytes);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], 4);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], 4);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], 4);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[3], 4);
    cublasLtMatmulHeuristicResult_t res;
    memset(&res, 0, sizeof res);
    int n = 0;
    if (cublasLtMatmulAlgoGetHeuristic(lt->h, op, a, b, c, c, pref, 1, &res, &n) == CUBLAS_STATUS_SUCCESS && n > 0 &&
        res.state == CUBLAS_STATUS_SUCCESS) {
        e->algo = res.algo;
        e->ok = 1;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    return e;
}

/* One block-scaled GEMM Y = alpha * op(W) Xq + beta * Y through cuBLASLt,
 * FP8 or FP4 (ty), with scale modes ma / mb and scale pointers sa / sb;
 * alpha and beta are host floats, or device floats when dev (the FP4 path
 * computes its alpha on the GPU; beta1 then says whether beta is non-zero,
 * for the algorithm cache). dry: only whether cuBLASLt has an algorithm. */
typedef struct lt_scaled {
    cudaDataType_t ty;
    int32_t ma, mb;
    const void *sa, *sb;
    const float *alpha, *beta;
    bool dev;
    int beta1;
} lt_scaled;

static int lt_scaled_call(qk_lt *lt, const lt_scaled *sc, const void *W, int ldw, const void *Xq, int ldx, void *Y,
                          int ldy, int N, int T, int K, int out16, int dry)
{
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    int rc = (int)cudaErrorNotSupported;
    const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    const int32_t pm = sc->dev ? CUBLASLT_POINTER_MODE_DEVICE : CUBLASLT_POINTER_MODE_HOST;
    const cudaDataType_t dt = out16 ? CUDA_R_16BF : CUDA_R_32F;
    if (cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA) ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB) ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof pm) ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &sc->ma, sizeof sc->ma) ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &sc->mb, sizeof sc->mb) ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sc->sa, sizeof sc->sa) ||
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sc->sb, sizeof sc->sb) ||
        cublasLtMatrixLayoutCreate(&la, sc->ty, (uint64_t)K, (uint64_t)N, ldw) ||
        cublasLtMatrixLayoutCreate(&lb, sc->ty, (uint64_t)K, (uint64_t)T, ldx) ||
        cublasLtMatrixLayoutCreate(&lc, dt, (uint64_t)N, (uint64_t)T, ldy))
        goto done;
    {
        lt_key key;
        memset(&key, 0, sizeof key);
        key.fp4 = sc->ty == CUDA_R_4F_E2M1;
        key.m = N;
        key.n = T;
        key.k = K;
        key.lda = ldw;
        key.ldb = ldx;
        key.ldd = ldy;
        key.out16 = out16 != 0;
        key.beta1 = sc->beta1;
        key.al[0] = lt_align(W);
        key.al[1] = lt_align(Xq);
        key.al[2] = lt_align(Y);
        const lt_algo *e = lt_find(lt, &key, op, la, lb, lc);
        if (!e->ok) goto done;
        if (dry) {
            rc = 0;
            goto done;
        }
        cublasStatus_t s = cublasLtMatmul(lt->h, op, sc->alpha, W, la, Xq, lb, sc->beta, Y, lc, Y, lc, &e->algo, lt->ws,
                                          lt->ws_bytes, lt->st);
        rc = s == CUBLAS_STATUS_SUCCESS ? qk_launch_status() : (int)cudaErrorLaunchFailure;
    }
done:
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    return rc;
}

/* One block-scaled FP8 GEMM; dry: only whether cuBLASLt has an algorithm. */
static int lt_fp8_call(qk_lt *lt, const uint8_t *W, int ldw, const float *ws, const uint8_t *Xq, int ldx,
                       const float *xs, void *Y, int ldy, int N, int T, int K, float beta, int out16, int dry)
{
    if (N <= 0 || T <= 0) return 0;
    if (!lt) return (int)cudaErrorInvalidValue;
    if (lt->cc / 10 != 9) return (int)cudaErrorNotSupported;
    const float alpha = 1.0f;
    const lt_scaled sc = {CUDA_R_8F_E4M3,
                          CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F,
                          CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
                          ws,
                          xs,
                          &alpha,
                          &beta,
                          false,
                          beta != 0.0f};
    return lt_scaled_call(lt, &sc, W, ldw, Xq, ldx, Y, ldy, N, T, K, out16, dry);
}

extern "C" int qk_lt_fp8_raw(qk_lt *lt, const uint8_t *W, int ldw, const float *ws, const uint8_t *Xq, int ldx,
                             const float *xs, void *Y, int ldy, int N, int T, int K, float beta, int out16)
{
    return lt_fp8_call(lt, W, ldw, ws, Xq, ldx, xs, Y, ldy, N, T, K, beta, out16, 0);
}

/* ---- NVFP4 on Blackwell (sm_100 / sm_120) — UNTESTED on such a card ------
 *
 * cuBLASLt block-scaled FP4: A = W e2m1 (2 per byte, lower k in the low
 * nibble — the published byte order) K x N, op T; B = Xq e2m1 K x T; both
 * with CUBLASLT_MATMUL_MATRIX_SCALE_VEC16_UE4M3 scales (one e4m3 per 16
 * inputs) in cuBLAS's tiled layout: the [rows][K/16] scale matrix padded to
 * 128-row x 4-column tiles of 512 bytes, tiles row-block-major, and inside a
 * tile (r, c) at (r % 32) * 16 + (r % 128) / 32 * 4 + c % 4. The per-tensor
 * multipliers (the weight's gmul, the activations' amax / (448 * 6)) go into
 * alpha, read from device memory. The weight's repacked words (quant.h) are
 * turned back into the published bytes per prefill chunk, in a scratch (one
 * weight at a time: 0.5 byte read + written per weight, no second copy of
 * the model). The quantizer and both rearrangements are checked against CPU
 * references on any GPU (tests/test_gemm_lt.c); the GEMM itself only runs
 * on Blackwell and has not been run. */

__host__ __device__ static inline size_t lt_sf_off(int r, int c, int ncb)
{
    return ((size_t)(r / 128) * ncb + c / 4) * 512 + (size_t)(r % 32) * 16 + (size_t)((r % 128) / 32) * 4 + c % 4;
}

extern "C" size_t qk_fp4_sf_bytes(int rows, int K)
{
    const size_t ncol = (size_t)(K + 15) / 16;
    return ((size_t)rows + 127) / 128 * 128 * ((ncol + 3) / 4 * 4);
}

__device__ __forceinline__ float lt_e4m3_dec(uint32_t b)
{
    const int e = (b >> 3) & 15, m = b & 7;
    const float v = e ? ldexpf(1.0f + m * 0.125f, e - 7) : ldexpf((float)m, -9);
    return (b & 0x80) ? -v : v;
}

/* e2m1 code of x, round to nearest even, saturating at 6. */
__device__ __forceinline__ uint32_t lt_e2m1(float x)
{
    const float a = fabsf(x);
    const uint32_t c = a <= 0.25f ? 0 : a < 0.75f ? 1 : a <= 1.25f ? 2 : a < 1.75f ? 3 : a <= 2.5f ? 4 : a < 3.5f ? 5
                     : a <= 5.0f ? 6 : 7;
    return c | (signbit(x) ? 8u : 0u);
}

/* Repacked words (cuda_repack.c's bit order) -> published e2m1 bytes. */
__global__ void k_fp4_unpack_w(const uint32_t *__restrict__ W, int64_t nw, uint32_t *__restrict__ out)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nw) return;
    const int mag[8] = {9, 25, 6, 22, 0, 16, 3, 19}, sgn[8] = {15, 31, 12, 28, 13, 29, 14, 30};
    const uint32_t w = W[i];
    uint32_t r = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) r |= (((w >> mag[j]) & 7u) | ((w >> sgn[j]) & 1u) << 3) << (4 * j);
    out[i] = r;
}

/* [n][nb] scale bytes (row stride nb) -> tiles for `rows` rows, K/16 = ncol columns. */
__global__ void k_fp4_swizzle(const uint8_t *__restrict__ S, int n, int nb, int rows_pad, int ncol_pad,
                              uint8_t *__restrict__ out)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)rows_pad * ncol_pad) return;
    const int r = (int)(i / ncol_pad), c = (int)(i % ncol_pad);
    out[lt_sf_off(r, c, ncol_pad / 4)] = r < n && c < nb ? S[(size_t)r * nb + c] : 0;
}

extern "C" int qk_fp4_weight_unpack(const qk_qweight *w, uint8_t *wq, uint8_t *sf, qk_stream st)
{
    if (!w || w->kind != QK_QW_NVFP4 || !wq || !sf) return (int)cudaErrorInvalidValue;
    const int64_t nw = (int64_t)w->n_pad * (w->k_pad / 8);
    k_fp4_unpack_w<<<(unsigned)((nw + 255) / 256), 256, 0, st>>>((const uint32_t *)w->w, nw, (uint32_t *)wq);
    const int nb = w->k_pad / 16, rows_pad = (w->n + 127) / 128 * 128, ncol_pad = (nb + 3) / 4 * 4;
    const int64_t ns = (int64_t)rows_pad * ncol_pad;
    k_fp4_swizzle<<<(unsigned)((ns + 255) / 256), 256, 0, st>>>((const uint8_t *)w->s, w->n, nb, rows_pad, ncol_pad,
                                                                 sf);
    return qk_launch_status();
}

__global__ void k_amax_bf16(const uint16_t *__restrict__ X, int64_t n, unsigned *__restrict__ amax)
{
    float m = 0.0f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        m = fmaxf(m, fabsf(qk_bf(X[i])));
    m = qk_warp_max(m);
    if ((threadIdx.x & 31) == 0) atomicMax(amax, __float_as_uint(m)); /* non-negative: bits order as values */
}

/* One thread per (token, 16-input group): block scale = e4m3((bmax / 6) / g)
 * with g = amax / 2688 the tensor multiplier, codes e2m1(x / (scale * g)). */
__global__ void k_quant_act_fp4(const uint16_t *__restrict__ X, int T, int K, int Kq, const float *__restrict__ f4,
                                uint8_t *__restrict__ Q, uint8_t *__restrict__ sf, float *__restrict__ gout)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int ng = Kq / 16;
    if (i >= (int64_t)T * ng) return;
    const int t = (int)(i / ng), g = (int)(i % ng);
    const float amax = f4[0];
    const float gs = amax > 0.0f ? __fdiv_rn(amax, 2688.0f) : 1.0f;
    if (i == 0) *gout = gs;
    float v[16], bmax = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int k = g * 16 + j;
        v[j] = k < K ? qk_bf(X[(size_t)t * K + k]) : 0.0f;
        bmax = fmaxf(bmax, fabsf(v[j]));
    }
    const uint32_t sb = __nv_cvt_float_to_fp8(__fdiv_rn(__fdiv_rn(bmax, 6.0f), gs), __NV_SATFINITE, __NV_E4M3);
    const float sd = lt_e4m3_dec(sb) * gs;
    uint32_t lo = 0, hi = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        lo |= (sd > 0.0f ? lt_e2m1(__fdiv_rn(v[j], sd)) : 0u) << (4 * j);
        hi |= (sd > 0.0f ? lt_e2m1(__fdiv_rn(v[8 + j], sd)) : 0u) << (4 * j);
    }
    uint32_t *q = (uint32_t *)(Q + (size_t)t * (Kq / 2) + g * 8);
    q[0] = lo;
    q[1] = hi;
    sf[lt_sf_off(t, g, (ng + 3) / 4)] = (uint8_t)sb;
}

extern "C" int qk_quant_act_nvfp4(const uint16_t *X, int T, int K, int Kq, uint8_t *Q, uint8_t *sf, float *f4,
                                  qk_stream st)
{
    if (T <= 0) return 0;
    if (!X || !Q || !sf || !f4 || K <= 0 || Kq < K || Kq % 32) return (int)cudaErrorInvalidValue;
    cudaError_t e = cudaMemsetAsync(f4, 0, sizeof(float), st);
    if (!e) e = cudaMemsetAsync(sf, 0, qk_fp4_sf_bytes(T, Kq), st);
    if (e) return (int)e;
    k_amax_bf16<<<264, 256, 0, st>>>(X, (int64_t)T * K, (unsigned *)f4);
    const int64_t n = (int64_t)T * (Kq / 16);
    k_quant_act_fp4<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(X, T, K, Kq, f4, Q, sf, f4 + 1);
    return qk_launch_status();
}

__global__ void k_fp4_alpha(float *f4, float gmul, float beta)
{
    f4[2] = gmul * f4[1];
    f4[3] = beta;
}

static int lt_fp4_raw(qk_lt *lt, const uint8_t *W, int ldw, const uint8_t *wsf, const uint8_t *Xq, int ldx,
                      const uint8_t *xsf, const float *ab, void *Y, int ldy, int N, int T, int K, int beta1, int out16)
{
    const lt_scaled sc = {CUDA_R_4F_E2M1,
                          CUBLASLT_MATMUL_MATRIX_SCALE_VEC16_UE4M3,
                          CUBLASLT_MATMUL_MATRIX_SCALE_VEC16_UE4M3,
                          wsf,
                          xsf,
                          ab,
                          ab + 1,
                          true,
                          beta1};
    return lt_scaled_call(lt, &sc, W, ldw, Xq, ldx, Y, ldy, N, T, K, out16, 0);
}

static int lt_blackwell(const qk_lt *lt) { return lt && (lt->cc / 10 == 10 || lt->cc / 10 == 12); }

extern "C" int qk_lt_fp4_eligible(const qk_lt *lt, const qk_qweight *w)
{
    return lt_blackwell(lt) && w && w->kind == QK_QW_NVFP4 && w->n > 0 && w->k_pad % 32 == 0;
}

/* The FP4 half of qk_gemm_q_lt (Blackwell). */
static int lt_gemm_fp4(qk_lt *lt, const qk_qweight *const *w, const int *off, int np, unsigned want,
                       const uint16_t *X, void *Y, int ldy, int T, float beta, int out16, unsigned *done)
{
    const int K = w[0]->k, Kq = w[0]->k_pad;
    size_t wqn = 0, wsn = 0;
    for (int i = 0; i < np; i++) {
        if (!(want >> i & 1)) continue;
        if (w[i]->k != K || w[i]->k_pad != Kq) return (int)cudaErrorInvalidValue;
        size_t a = (size_t)w[i]->n_pad * Kq / 2, b = qk_fp4_sf_bytes(w[i]->n, Kq);
        if (a > wqn) wqn = a;
        if (b > wsn) wsn = b;
    }
    int rc = lt_grow((void **)&lt->q, &lt->q_bytes, (size_t)T * Kq / 2);
    if (!rc) rc = lt_grow((void **)&lt->xsf, &lt->xsf_bytes, qk_fp4_sf_bytes(T, Kq));
    if (!rc) rc = lt_grow((void **)&lt->wq, &lt->wq_bytes, wqn);
    if (!rc) rc = lt_grow((void **)&lt->wsf, &lt->wsf_bytes, wsn);
    if (!rc && !lt->f4) rc = (int)cudaMalloc((void **)&lt->f4, 4 * sizeof(float));
    if (!rc) rc = qk_quant_act_nvfp4(X, T, K, Kq, lt->q, lt->xsf, lt->f4, lt->st);
    if (rc) return rc;
    for (int i = 0; i < np; i++) {
        if (!(want >> i & 1)) continue;
        if ((rc = qk_fp4_weight_unpack(w[i], lt->wq, lt->wsf, lt->st))) return rc;
        k_fp4_alpha<<<1, 1, 0, lt->st>>>(lt->f4, w[i]->gmul, beta);
        if ((rc = qk_launch_status())) return rc;
        void *y = out16 ? (void *)((uint16_t *)Y + off[i]) : (void *)((float *)Y + off[i]);
        rc = lt_fp4_raw(lt, lt->wq, Kq, lt->wsf, lt->q, Kq, lt->xsf, lt->f4 + 2, y, ldy, w[i]->n, T, Kq, beta != 0.0f,
                        out16);
        if (rc == (int)cudaErrorNotSupported) continue;
        if (rc) return rc;
        *done |= 1u << i;
    }
    return 0;
}

/* ---- the engine's entry -------------------------------------------------- */

extern "C" int qk_lt_fp8_eligible(const qk_lt *lt, const qk_qweight *w)
{
    return lt && lt->cc / 10 == 9 && w && w->kind == QK_QW_FP8 && w->blk_n == 128 && w->blk_k == 128 &&
           w->k % 128 == 0 && w->k_pad == w->k && w->nkb == w->k / 128 && w->n > 0;
}

extern "C" int qk_gemm_q_lt(qk_lt *lt, const qk_qweight *const *w, const int *off, int np, const uint16_t *X,
                            void *Y, int ldy, int T, float beta, int out16, unsigned *done)
{
    *done = 0;
    if (!lt || np <= 0 || T <= 0) return 0;
    unsigned want = 0;
    const int fp4 = lt_blackwell(lt);
    for (int i = 0; i < np; i++)
        if (fp4 ? qk_lt_fp4_eligible(lt, w[i]) : qk_lt_fp8_eligible(lt, w[i])) want |= 1u << i;
    if (!want) return 0;
    if (fp4) return lt_gemm_fp4(lt, w, off, np, want, X, Y, ldy, T, beta, out16, done);
    /* cuBLASLt's block-scaled FP8 GEMM wants the token count a multiple of 4
     * (measured on H100, cuBLAS 13.1: T = 37, 65, 70, 129 get no algorithm;
     * the activation scale columns are T floats, unpadded). The first T0 =
     * T & ~3 tokens run in place; the last T % 4 run as 4 tokens (zero rows
     * added) into a small buffer and are copied back. */
    const int K = w[0]->k, nkb = K / 128, T0 = T & ~3, tail = T - T0;
    size_t spn = 0, ytn = 0;
    for (int i = 0; i < np; i++) {
        if (!(want >> i & 1)) continue;
        if (w[i]->k != K) return (int)cudaErrorInvalidValue;
        size_t r = (size_t)((w[i]->n_pad + 127) / 128) * (size_t)((nkb + 3) / 4 * 4);
        if (nkb % 4 && r > spn) spn = r;
        size_t y = (size_t)4 * ((w[i]->n + 7) / 8 * 8) * sizeof(float);
        if (tail && y > ytn) ytn = y;
    }
    int rc = lt_grow((void **)&lt->q, &lt->q_bytes, (size_t)(T0 + 4) * K);
    if (!rc) rc = lt_grow((void **)&lt->xs, &lt->xs_bytes, (size_t)(T0 + 4) * nkb * sizeof(float));
    if (!rc && spn) rc = lt_grow((void **)&lt->sp, &lt->sp_bytes, spn * sizeof(float));
    if (!rc && ytn) rc = lt_grow(&lt->yt, &lt->yt_bytes, ytn);
    if (rc) return rc;
    uint8_t *q2 = lt->q + (size_t)T0 * K;
    float *xs2 = lt->xs + (size_t)T0 * nkb;
    if (T0) rc = qk_quant_act_fp8(X, T0, K, K, lt->q, lt->xs, 1, T0, lt->st);
    if (!rc && tail) {
        cudaError_t e = cudaMemsetAsync(q2, 0, (size_t)4 * K, lt->st);
        if (!e) e = cudaMemsetAsync(xs2, 0, (size_t)4 * nkb * sizeof(float), lt->st);
        rc = e ? (int)e : qk_quant_act_fp8(X + (size_t)T0 * K, tail, K, K, q2, xs2, 1, 4, lt->st);
    }
    if (rc) return rc;
    const size_t es = out16 ? 2 : 4;
    for (int i = 0; i < np; i++) {
        if (!(want >> i & 1)) continue;
        const qk_qweight *q = w[i];
        const uint8_t *W = (const uint8_t *)q->w;
        const float *ws = (const float *)q->s;
        const int n = q->n, ldt = (n + 7) / 8 * 8;
        char *y = (char *)Y + (size_t)off[i] * es;
        /* both GEMMs must have an algorithm before either writes */
        if ((T0 && lt_fp8_call(lt, W, q->k_pad, ws, lt->q, K, lt->xs, y, ldy, n, T0, K, beta, out16, 1)) ||
            (tail && lt_fp8_call(lt, W, q->k_pad, ws, q2, K, xs2, lt->yt, ldt, n, 4, K, beta, out16, 1)))
            continue; /* the caller's path */
        if (nkb % 4) {
            const int rows = (q->n_pad + 127) / 128, ld4 = (nkb + 3) / 4 * 4;
            k_pad_scales<<<(rows * ld4 + 255) / 256, 256, 0, lt->st>>>(ws, rows, nkb, ld4, lt->sp);
            if ((rc = qk_launch_status())) return rc;
            ws = lt->sp;
        }
        if (T0 && (rc = lt_fp8_call(lt, W, q->k_pad, ws, lt->q, K, lt->xs, y, ldy, n, T0, K, beta, out16, 0)))
            return rc;
        if (tail) {
            char *yr = y + (size_t)T0 * ldy * es;
            cudaError_t e = cudaSuccess;
            if (beta != 0.0f)
                e = cudaMemcpy2DAsync(lt->yt, ldt * es, yr, ldy * es, n * es, tail, cudaMemcpyDeviceToDevice, lt->st);
            if (e) return (int)e;
            if ((rc = lt_fp8_call(lt, W, q->k_pad, ws, q2, K, xs2, lt->yt, ldt, n, 4, K, beta, out16, 0))) return rc;
            e = cudaMemcpy2DAsync(yr, ldy * es, lt->yt, ldt * es, n * es, tail, cudaMemcpyDeviceToDevice, lt->st);
            if (e) return (int)e;
        }
        *done |= 1u << i;
    }
    return 0;
}
