/* gemv_fp8.cu — BF16 dequantization of the FP8 layout of quant.h (fp8-block,
 * fp8-tensor, fp8-channel after repacking), for prefill through a cuBLAS BF16
 * GEMM. The decode GEMV body is qg_fp8_step in gemv_q.cuh (launched by
 * gemv_multi.cu). */
#include "gemv_q.cuh"

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

/* K % 8 == 0, blk_k % 8 == 0 and 16-byte aligned output rows: grid (8-code
 * groups / 256, rows), two words -> one 16-byte store, no 64-bit division
 * (see gemv_int4.cu). Same values as the scalar kernel above. */
__global__ void k_dequant_fp8_bf16_v(const uint2 *__restrict__ W, const float *__restrict__ S, int K, int kw2,
                                     int blk_n, int blk_k, int nkb, uint16_t *__restrict__ out, int ld)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x, n = blockIdx.y;
    if (c * 8 >= K) return;
    uint32_t o[4];
    qg_dq8_fp8(W[(size_t)n * kw2 + c], S[(size_t)(n / blk_n) * nkb + c * 8 / blk_k], o);
    *(uint4 *)(out + (size_t)n * ld + c * 8) = make_uint4(o[0], o[1], o[2], o[3]);
}

extern "C" int qk_dequant_fp8_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st)
{
    if (!w || w->kind != QK_QW_FP8 || !out || ld < w->k || w->blk_n <= 0 || w->blk_k <= 0 ||
        w->nkb * w->blk_k < w->k_pad)
        return (int)cudaErrorInvalidValue;
    if (w->k % 8 == 0 && w->k_pad % 8 == 0 && w->blk_k % 8 == 0 && ld % 8 == 0 && ((uintptr_t)out & 15) == 0 &&
        ((uintptr_t)w->w & 7) == 0 && w->n <= 65535) {
        k_dequant_fp8_bf16_v<<<dim3(qk_cdiv(w->k / 8, 256), w->n), 256, 0, st>>>(
            (const uint2 *)w->w, (const float *)w->s, w->k, w->k_pad / 8, w->blk_n, w->blk_k, w->nkb, out, ld);
        return qk_launch_status();
    }
    const int kw = w->k_pad / 4;
    const int64_t total = (int64_t)w->n * kw;
    k_dequant_fp8_bf16<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(
        (const uint32_t *)w->w, (const float *)w->s, w->n, w->k, kw, w->blk_n, w->blk_k, w->nkb, out, ld);
    return qk_launch_status();
}
