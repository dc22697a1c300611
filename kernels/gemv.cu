/* gemv.cu — BF16 decode GEMV: y = W x for one token.
 *
 * Decode is memory-bound: every weight byte is read once per token. One warp
 * owns one output row; each lane streams 16-byte vectors (8 bf16) of the row
 * with four independent loads in flight before the first use, and the x
 * vector comes through L1 (it is re-read by every row of the block). Loads of
 * W use the streaming (evict-first) hint so the weights do not push x and the
 * other small operands out of the caches. fp32 accumulate, warp reduction. */
#include "common.cuh"

#define GEMV_WARPS 8
#define GEMV_UNROLL 4

__device__ __forceinline__ float dot8(uint4 w, uint4 x)
{
    const uint32_t *wa = (const uint32_t *)&w, *xa = (const uint32_t *)&x;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float w0 = __uint_as_float(wa[i] << 16), w1 = __uint_as_float(wa[i] & 0xffff0000u);
        float x0 = __uint_as_float(xa[i] << 16), x1 = __uint_as_float(xa[i] & 0xffff0000u);
        s = fmaf(w0, x0, s);
        s = fmaf(w1, x1, s);
    }
    return s;
}

__global__ void __launch_bounds__(GEMV_WARPS * 32) k_gemv_bf16(const uint16_t *__restrict__ W,
                                                              const uint16_t *__restrict__ x,
                                                              float *__restrict__ y, int N, int K, int acc)
{
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    const uint4 *wr = (const uint4 *)(W + (int64_t)row * K);
    const uint4 *xv = (const uint4 *)x;
    int nv = K >> 3;
    float s = 0.0f;
    int i = lane;
    for (; i + 32 * (GEMV_UNROLL - 1) < nv; i += 32 * GEMV_UNROLL) {
        uint4 w[GEMV_UNROLL], xx[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) w[u] = __ldcs(wr + i + 32 * u);
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) xx[u] = __ldg(xv + i + 32 * u);
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) s += dot8(w[u], xx[u]);
    }
    for (; i < nv; i += 32) s += dot8(__ldcs(wr + i), __ldg(xv + i));
    s = qk_warp_sum(s);
    if (lane == 0) y[row] = acc ? y[row] + s : s;
}

extern "C" int qk_gemv_bf16(const uint16_t *W, const uint16_t *x, float *y, int N, int K, int accumulate,
                            qk_stream st)
{
    if (N <= 0) return 0;
    if (K % 8 != 0 || ((uintptr_t)W & 15) || ((uintptr_t)x & 15)) return (int)cudaErrorInvalidValue;
    k_gemv_bf16<<<qk_cdiv(N, GEMV_WARPS), GEMV_WARPS * 32, 0, st>>>(W, x, y, N, K, accumulate);
    return qk_launch_status();
}

/* Gate/up GEMV with the SwiGLU fused in: warp i streams rows i (gate) and
 * I + i (up) of W_gu [2I, K] and writes bf16(silu(gate) * up) — the same
 * value qk_swiglu computes, without the fp32 round trip and extra launch. */
__global__ void __launch_bounds__(GEMV_WARPS * 32) k_gemv_swiglu(const uint16_t *__restrict__ W,
                                                                const uint16_t *__restrict__ x,
                                                                uint16_t *__restrict__ out, int I, int K)
{
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= I) return;
    const uint4 *wg = (const uint4 *)(W + (int64_t)row * K), *wu = (const uint4 *)(W + (int64_t)(I + row) * K);
    const uint4 *xv = (const uint4 *)x;
    int nv = K >> 3;
    float g = 0.0f, u = 0.0f;
    int i = lane;
    for (; i + 32 < nv; i += 64) {
        uint4 a0 = __ldcs(wg + i), a1 = __ldcs(wg + i + 32), b0 = __ldcs(wu + i), b1 = __ldcs(wu + i + 32);
        uint4 x0 = __ldg(xv + i), x1 = __ldg(xv + i + 32);
        g += dot8(a0, x0) + dot8(a1, x1);
        u += dot8(b0, x0) + dot8(b1, x1);
    }
    for (; i < nv; i += 32) {
        uint4 xx = __ldg(xv + i);
        g += dot8(__ldcs(wg + i), xx);
        u += dot8(__ldcs(wu + i), xx);
    }
    g = qk_warp_sum(g);
    u = qk_warp_sum(u);
    if (lane == 0) out[row] = qk_to_bf(qk_silu(g) * u);
}

extern "C" int qk_gemv_swiglu_bf16(const uint16_t *W, const uint16_t *x, uint16_t *out, int I, int K, qk_stream st)
{
    if (I <= 0) return 0;
    if (K % 8 != 0 || ((uintptr_t)W & 15) || ((uintptr_t)x & 15)) return (int)cudaErrorInvalidValue;
    k_gemv_swiglu<<<qk_cdiv(I, GEMV_WARPS), GEMV_WARPS * 32, 0, st>>>(W, x, out, I, K);
    return qk_launch_status();
}
