/* gemv_nvfp4.cu — decode GEMV and BF16 dequantization for the FP4 layouts of
 * quant.h: NVFP4 (E2M1, E4M3 scale per 16, fp32 global multiplier; both
 * nvfp4-ct and modelopt after repacking) and MXFP4 (E8M0 scale per 32).
 *
 * The repacked word puts each pair of E2M1 codes where an f16x2 wants them
 * (cuda_repack.c, fp4_shuffle): sign at bit 15, magnitude at bits 9-11 of each
 * half, so the f16 value is exactly e2m1 * 2^-14 (E2M1's subnormal 0.5 lands
 * on an f16 subnormal). Decoding 8 codes costs 11 integer ops, then one cvt
 * and one FFMA per code. The 2^14, the block scales and the global
 * multiplier are applied per block / per row, not per code. fp32
 * accumulation; x bf16. */
#include "gemv_q.cuh"

/* The four f16x2 pairs of a repacked word (elements 2p, 2p+1 in pair p). */
__device__ __forceinline__ void fp4_pairs(uint32_t w, uint32_t h[4])
{
    h[0] = w & 0x8e008e00u;
    h[1] = (w << 3) & 0x8e008e00u;
    h[2] = ((w << 9) & 0x0e000e00u) | ((w << 2) & 0x80008000u);
    h[3] = ((w << 6) & 0x0e000e00u) | ((w << 1) & 0x80008000u);
}

/* E8M0 scale 2^(b-127); 0xFF is NaN. b = 0 (2^-127) reads as 0. */
__device__ __forceinline__ float fp4_e8m0(uint32_t b)
{
    return b == 0xffu ? __uint_as_float(0x7fc00000u) : __uint_as_float(b << 23);
}

template <bool MX>
__global__ void __launch_bounds__(QG_THREADS)
    k_gemv_fp4(const uint4 *__restrict__ W, const uint8_t *__restrict__ S, const uint16_t *__restrict__ x,
               float *__restrict__ y, int N, int K, int kc, int nb, float gmul, int accumulate)
{
    const int row0 = blockIdx.x * QK_QROWS;
    const uint4 *wr = W + (size_t)row0 * kc;
    const uint8_t *sr = S + (size_t)row0 * nb;
    float acc[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;

    for (int c = threadIdx.x; c < kc; c += blockDim.x) {
        uint4 wv[QK_QROWS];
        uint32_t sb[QK_QROWS];
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) wv[r] = __ldcs(wr + (size_t)r * kc + c);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++)
            sb[r] = MX ? (uint32_t)__ldg(sr + (size_t)r * nb + c)
                       : (uint32_t)__ldg((const uint16_t *)(sr + (size_t)r * nb) + c);
        float xf[32];
        qg_load_x<32>(x, c * 32, K, xf);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const uint32_t wa[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
            float a[2] = {0.0f, 0.0f};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t h[4];
                fp4_pairs(wa[j], h);
#pragma unroll
                for (int p = 0; p < 4; p++) {
                    const float2 f = qg_h2f2(h[p]);
                    a[j >> 1] = fmaf(f.x, xf[8 * j + 2 * p], a[j >> 1]);
                    a[j >> 1] = fmaf(f.y, xf[8 * j + 2 * p + 1], a[j >> 1]);
                }
            }
            if (MX) {
                acc[r] = fmaf(fp4_e8m0(sb[r]), a[0] + a[1], acc[r]);
            } else {
                const float2 s = qg_h2f2(qg_e4m3x2_h2(sb[r]));
                acc[r] = fmaf(s.x, a[0], fmaf(s.y, a[1], acc[r]));
            }
        }
    }
    __shared__ float red[QG_WARPS * QK_QROWS];
    const float t = qg_block_reduce(acc, red) * (gmul * 16384.0f);
    if (threadIdx.x < QK_QROWS) {
        const int row = row0 + threadIdx.x;
        if (row < N) y[row] = accumulate ? y[row] + t : t;
    }
}

extern "C" int qk_gemv_fp4(const qk_qweight *w, const uint16_t *x, float *y, int accumulate,
                           struct CUstream_st *st)
{
    const int mx = w && w->kind == QK_QW_MXFP4;
    int rc = qg_check(w, x, y, mx ? QK_QW_MXFP4 : QK_QW_NVFP4);
    if (rc) return rc;
    const int kc = w->k_pad / 32, nb = w->k_pad / (mx ? 32 : 16), grid = w->n_pad / QK_QROWS;
    if (mx)
        k_gemv_fp4<true><<<grid, qg_threads(kc), 0, st>>>((const uint4 *)w->w, (const uint8_t *)w->s, x, y, w->n,
                                                     w->k, kc, nb, w->gmul, accumulate);
    else
        k_gemv_fp4<false><<<grid, qg_threads(kc), 0, st>>>((const uint4 *)w->w, (const uint8_t *)w->s, x, y, w->n,
                                                      w->k, kc, nb, w->gmul, accumulate);
    return qk_launch_status();
}

/* One thread per repacked word (8 codes): out[n][k] = bf16(e2m1 * (scale * gmul)). */
__global__ void k_dequant_fp4_bf16(const uint32_t *__restrict__ W, const uint8_t *__restrict__ S, int N,
                                   int K, int kw, int nb, int mx, float gmul, uint16_t *__restrict__ out,
                                   int ld)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)N * kw) return;
    const int n = (int)(i / kw), k0 = (int)(i % kw) * 8;
    const uint8_t sb = S[(size_t)n * nb + (mx ? k0 / 32 : k0 / 16)];
    const float s = (mx ? fp4_e8m0(sb) : qg_h2f2(qg_e4m3x2_h2(sb)).x) * gmul;
    uint32_t h[4];
    fp4_pairs(W[i], h);
#pragma unroll
    for (int p = 0; p < 4; p++) {
        const float2 f = qg_h2f2(h[p]);
        if (k0 + 2 * p < K) out[(size_t)n * ld + k0 + 2 * p] = qk_to_bf((f.x * 16384.0f) * s);
        if (k0 + 2 * p + 1 < K) out[(size_t)n * ld + k0 + 2 * p + 1] = qk_to_bf((f.y * 16384.0f) * s);
    }
}

extern "C" int qk_dequant_fp4_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st)
{
    if (!w || (w->kind != QK_QW_NVFP4 && w->kind != QK_QW_MXFP4) || !out || ld < w->k)
        return (int)cudaErrorInvalidValue;
    const int mx = w->kind == QK_QW_MXFP4, kw = w->k_pad / 8, nb = w->k_pad / (mx ? 32 : 16);
    const int64_t total = (int64_t)w->n * kw;
    k_dequant_fp4_bf16<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(
        (const uint32_t *)w->w, (const uint8_t *)w->s, w->n, w->k, kw, nb, mx, w->gmul, out, ld);
    return qk_launch_status();
}
