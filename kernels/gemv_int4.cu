/* gemv_int4.cu — BF16 dequantization of the INT4 layout of quant.h (gptq,
 * awq, ct-int after repacking), for prefill through a cuBLAS BF16 GEMM. The
 * decode GEMV body is qg_int4_step in gemv_q.cuh (launched by gemv_multi.cu). */
#include "gemv_q.cuh"

/* One thread per packed word (8 codes): out[n][perm(p)] = bf16(s * (q - z)). */
__global__ void k_dequant_int4_bf16(const uint32_t *__restrict__ W, const void *__restrict__ S,
                                    const int32_t *__restrict__ perm, int N, int K, int kw, int ng,
                                    int group, int f16, int tiled, int s16, uint16_t *__restrict__ out, int ld)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)N * kw) return;
    const int n = (int)(i / kw), p0 = (int)(i % kw) * 8;
    const int g = perm ? perm[(size_t)kw * 8 + p0 / 32] : p0 / group;
    const uint32_t w = W[qk_int4_tile_index(tiled, n, i % kw, kw, 128)];
    const uint32_t m = qk_int4_sword_at(S, qk_int4_tile_index(tiled, n, g, ng, tiled ? 1024 / group : 1), s16);
    const float s = qg_int4_scale(m, f16 != 0);
    const int z = (int)((m >> 16) & 0xffu);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int k = perm ? perm[p0 + j] : p0 + j;
        if (k < 0 || k >= K) continue;
        out[(size_t)n * ld + k] = qk_to_bf(s * (float)((int)((w >> (4 * j)) & 15u) - z));
    }
}

/* Without g_idx, K % 8 == 0 and 16-byte aligned output rows: grid (words /
 * 256, rows), one word -> one 16-byte store of 8 bf16, no 64-bit division
 * (the scalar kernel above ran at ~0.6 TB/s, which made a 27B INT4 prefill
 * chunk ~100 ms slower than BF16). Same values as the scalar kernel. */
__global__ void k_dequant_int4_bf16_v(const uint32_t *__restrict__ W, const void *__restrict__ S, int K, int kw,
                                      int ng, int group, int f16, int tiled, int s16, uint16_t *__restrict__ out,
                                      int ld)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x, n = blockIdx.y;
    if (c * 8 >= K) return;
    uint32_t o[4];
    qg_dq8_int4(W[qk_int4_tile_index(tiled, n, c, kw, 128)],
                qk_int4_sword_at(S, qk_int4_tile_index(tiled, n, c * 8 / group, ng, tiled ? 1024 / group : 1), s16),
                f16 != 0, o);
    *(uint4 *)(out + (size_t)n * ld + c * 8) = make_uint4(o[0], o[1], o[2], o[3]);
}

/* With g_idx: one block per row, decoded in packed order and scattered to
 * the natural order in shared memory (K bf16), then written out with
 * 16-byte stores when aligned. The scalar kernel's scattered 2-byte global
 * stores made an act-order 27B INT4 prefill of 8192 tokens 1.03 s against
 * 0.72 s without g_idx (H100). Same values as the scalar kernel. */
__global__ void k_dequant_int4_bf16_perm(const uint32_t *__restrict__ W, const uint32_t *__restrict__ S,
                                         const int32_t *__restrict__ perm, int K, int kw, int ng, int f16,
                                         uint16_t *__restrict__ out, int ld, int vec)
{
    extern __shared__ uint4 dq_row4[];
    uint16_t *row = (uint16_t *)dq_row4;
    const int n = blockIdx.x;
    for (int c = threadIdx.x; c < kw; c += blockDim.x) {
        uint32_t o[4];
        qg_dq8_int4(W[(size_t)n * kw + c], S[(size_t)n * ng + perm[(size_t)kw * 8 + c / 4]], f16 != 0, o);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int k = perm[8 * c + j];
            if (k >= 0) row[k] = (uint16_t)(o[j / 2] >> (16 * (j & 1)));
        }
    }
    __syncthreads();
    uint16_t *dst = out + (size_t)n * ld;
    if (vec) {
        for (int i = threadIdx.x; i < K / 8; i += blockDim.x) ((uint4 *)dst)[i] = dq_row4[i];
    } else {
        for (int k = threadIdx.x; k < K; k += blockDim.x) dst[k] = row[k];
    }
}

extern "C" int qk_dequant_int4_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st)
{
    if (!w || w->kind != QK_QW_INT4 || !out || ld < w->k || w->group <= 0 || (w->tiled && !qk_int4_tileable(w)) ||
        (w->s16 && !w->tiled))
        return (int)cudaErrorInvalidValue;
    if (!w->perm && w->k % 8 == 0 && ld % 8 == 0 && ((uintptr_t)out & 15) == 0 && w->n <= 65535) {
        k_dequant_int4_bf16_v<<<dim3(qk_cdiv(w->k / 8, 256), w->n), 256, 0, st>>>(
            (const uint32_t *)w->w, w->s, w->k, w->k_pad / 8, w->ngroups, w->group, w->scale_f16, w->tiled, w->s16,
            out, ld);
        return qk_launch_status();
    }
    const int kw = w->k_pad / 8;
    if (w->perm && (size_t)w->k * 2 <= (48u << 10)) { /* (k_pad % 32 == 0 by the layout) */
        const int vec = w->k % 8 == 0 && ld % 8 == 0 && ((uintptr_t)out & 15) == 0;
        k_dequant_int4_bf16_perm<<<w->n, 256, (size_t)(w->k + 7) / 8 * 16, st>>>(
            (const uint32_t *)w->w, (const uint32_t *)w->s, w->perm, w->k, kw, w->ngroups, w->scale_f16, out, ld,
            vec);
        return qk_launch_status();
    }
    const int64_t total = (int64_t)w->n * kw;
    k_dequant_int4_bf16<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(
        (const uint32_t *)w->w, w->s, w->perm, w->n, w->k, kw, w->ngroups, w->group, w->scale_f16, w->tiled, w->s16,
        out, ld);
    return qk_launch_status();
}
