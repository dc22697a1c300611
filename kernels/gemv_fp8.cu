/* gemv_fp8.cu — decode GEMV and BF16 dequantization for the FP8 layout of
 * quant.h (fp8-block, fp8-tensor, fp8-channel after repacking: E4M3 bytes
 * [n_pad][k_pad] and one fp32 scale grid).
 *
 * Per 16-byte chunk (16 codes of one row, inside one scale block since blk_k
 * is a multiple of 16) a thread converts pairs of E4M3 bytes to f16x2 with one
 * cvt (sm_89+; exact), widens them to fp32, accumulates against x, and
 * multiplies by the block's scale once per chunk. fp32 throughout; x bf16. */
#include "gemv_q.cuh"

__global__ void __launch_bounds__(QG_THREADS)
    k_gemv_fp8(const uint4 *__restrict__ W, const float *__restrict__ S, const uint16_t *__restrict__ x,
               float *__restrict__ y, int N, int K, int kc, int blk_n, int cpb, int nkb, int accumulate)
{
    const int row0 = blockIdx.x * QK_QROWS;
    const uint4 *wr = W + (size_t)row0 * kc;
    const float *sr[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) sr[r] = S + (size_t)((row0 + r) / blk_n) * nkb;
    float acc[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;

    for (int c = threadIdx.x; c < kc; c += blockDim.x) {
        uint4 wv[QK_QROWS];
        float s[QK_QROWS];
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) wv[r] = __ldcs(wr + (size_t)r * kc + c);
        const int b = c / cpb;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) s[r] = __ldg(sr[r] + b);
        float xf[16];
        qg_load_x<16>(x, c * 16, K, xf);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const uint32_t wa[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
            float a0 = 0.0f, a1 = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 lo = qg_h2f2(qg_e4m3x2_h2(wa[j]));
                const float2 hi = qg_h2f2(qg_e4m3x2_h2(wa[j] >> 16));
                a0 = fmaf(lo.x, xf[4 * j + 0], a0);
                a1 = fmaf(lo.y, xf[4 * j + 1], a1);
                a0 = fmaf(hi.x, xf[4 * j + 2], a0);
                a1 = fmaf(hi.y, xf[4 * j + 3], a1);
            }
            acc[r] = fmaf(s[r], a0 + a1, acc[r]);
        }
    }
    __shared__ float red[QG_WARPS * QK_QROWS];
    const float t = qg_block_reduce(acc, red);
    if (threadIdx.x < QK_QROWS) {
        const int row = row0 + threadIdx.x;
        if (row < N) y[row] = accumulate ? y[row] + t : t;
    }
}

static int fp8_check_grid(const qk_qweight *w)
{
    if (w->blk_n <= 0 || w->blk_k <= 0 || w->blk_k % 16 || w->nkb * w->blk_k < w->k_pad)
        return (int)cudaErrorInvalidValue;
    return 0;
}

extern "C" int qk_gemv_fp8(const qk_qweight *w, const uint16_t *x, float *y, int accumulate,
                           struct CUstream_st *st)
{
    int rc = qg_check(w, x, y, QK_QW_FP8);
    if (rc || (rc = fp8_check_grid(w))) return rc;
    const int kc = w->k_pad / 16, grid = w->n_pad / QK_QROWS;
    k_gemv_fp8<<<grid, qg_threads(kc), 0, st>>>((const uint4 *)w->w, (const float *)w->s, x, y, w->n, w->k, kc,
                                            w->blk_n, w->blk_k / 16, w->nkb, accumulate);
    return qk_launch_status();
}

/* One thread per 4 bytes: out[n][k] = bf16(e4m3 * scale). */
__global__ void k_dequant_fp8_bf16(const uint32_t *__restrict__ W, const float *__restrict__ S, int N,
                                   int K, int kw, int blk_n, int blk_k, int nkb, uint16_t *__restrict__ out,
                                   int ld)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)N * kw) return;
    const int n = (int)(i / kw), k0 = (int)(i % kw) * 4;
    const uint32_t w = W[i];
    const float s = S[(size_t)(n / blk_n) * nkb + k0 / blk_k];
    const float2 lo = qg_h2f2(qg_e4m3x2_h2(w)), hi = qg_h2f2(qg_e4m3x2_h2(w >> 16));
    const float v[4] = {lo.x, lo.y, hi.x, hi.y};
#pragma unroll
    for (int j = 0; j < 4; j++)
        if (k0 + j < K) out[(size_t)n * ld + k0 + j] = qk_to_bf(v[j] * s);
}

extern "C" int qk_dequant_fp8_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st)
{
    if (!w || w->kind != QK_QW_FP8 || !out || ld < w->k || fp8_check_grid(w)) return (int)cudaErrorInvalidValue;
    const int kw = w->k_pad / 4;
    const int64_t total = (int64_t)w->n * kw;
    k_dequant_fp8_bf16<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(
        (const uint32_t *)w->w, (const float *)w->s, w->n, w->k, kw, w->blk_n, w->blk_k, w->nkb, out, ld);
    return qk_launch_status();
}
