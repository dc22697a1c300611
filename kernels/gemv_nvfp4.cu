/* gemv_nvfp4.cu — BF16 dequantization of the FP4 layouts of quant.h (NVFP4:
 * nvfp4-ct and nvfp4-modelopt after repacking; MXFP4), for prefill through a
 * cuBLAS BF16 GEMM. The decode GEMV body is qg_fp4_step in gemv_q.cuh
 * (launched by gemv_multi.cu). */
#include "gemv_q.cuh"

/* One thread per repacked word (8 codes): out[n][k] = bf16(e2m1 * (scale * gmul)). */
__global__ void k_dequant_fp4_bf16(const uint32_t *__restrict__ W, const uint8_t *__restrict__ S, int N,
                                   int K, int kw, int nb, int mx, float gmul, uint16_t *__restrict__ out,
                                   int ld)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)N * kw) return;
    const int n = (int)(i / kw), k0 = (int)(i % kw) * 8;
    const uint8_t sb = S[(size_t)n * nb + (mx ? k0 / 32 : k0 / 16)];
    const float s = qg_fp4_bscale(sb, mx, gmul);
    uint32_t h[4];
    qg_fp4_pairs(W[i], h);
#pragma unroll
    for (int p = 0; p < 4; p++) {
        const float2 f = qg_h2f2(h[p]);
        if (k0 + 2 * p < K) out[(size_t)n * ld + k0 + 2 * p] = qk_to_bf((f.x * 16384.0f) * s);
        if (k0 + 2 * p + 1 < K) out[(size_t)n * ld + k0 + 2 * p + 1] = qk_to_bf((f.y * 16384.0f) * s);
    }
}

/* K % 8 == 0 and 16-byte aligned output rows: grid (words / 256, rows), one
 * word -> one 16-byte store, no 64-bit division (see gemv_int4.cu). Same
 * values as the scalar kernel above. */
__global__ void k_dequant_fp4_bf16_v(const uint32_t *__restrict__ W, const uint8_t *__restrict__ S, int K, int kw,
                                     int nb, int mx, float gmul, uint16_t *__restrict__ out, int ld)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x, n = blockIdx.y;
    if (c * 8 >= K) return;
    const int k0 = c * 8;
    const uint8_t sb = S[(size_t)n * nb + (mx ? k0 / 32 : k0 / 16)];
    const float s = qg_fp4_bscale(sb, mx, gmul);
    uint32_t o[4];
    qg_dq8_fp4(W[(size_t)n * kw + c], s, o);
    *(uint4 *)(out + (size_t)n * ld + k0) = make_uint4(o[0], o[1], o[2], o[3]);
}

extern "C" int qk_dequant_fp4_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st)
{
    if (!w || (w->kind != QK_QW_NVFP4 && w->kind != QK_QW_MXFP4) || !out || ld < w->k)
        return (int)cudaErrorInvalidValue;
    const int mx = w->kind == QK_QW_MXFP4, kw = w->k_pad / 8, nb = w->k_pad / (mx ? 32 : 16);
    if (w->k % 8 == 0 && ld % 8 == 0 && ((uintptr_t)out & 15) == 0 && w->n <= 65535) {
        k_dequant_fp4_bf16_v<<<dim3(qk_cdiv(w->k / 8, 256), w->n), 256, 0, st>>>(
            (const uint32_t *)w->w, (const uint8_t *)w->s, w->k, kw, nb, mx, w->gmul, out, ld);
        return qk_launch_status();
    }
    const int64_t total = (int64_t)w->n * kw;
    k_dequant_fp4_bf16<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(
        (const uint32_t *)w->w, (const uint8_t *)w->s, w->n, w->k, kw, nb, mx, w->gmul, out, ld);
    return qk_launch_status();
}
