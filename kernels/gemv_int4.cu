/* gemv_int4.cu — decode GEMV and BF16 dequantization for the INT4 layout of
 * quant.h (gptq, awq, ct-int after repacking).
 *
 * Per 16-byte chunk (32 codes of one row, one group since groups are a
 * multiple of 32) a thread loads the row's scale|zero word once, then per
 * code: one AND+OR builds the float 2^23 + q (even nibbles) or 2^23 + 16q (odd
 * nibbles, no shift needed), one FADD subtracts 2^23 + z (or 2^23 + 16z),
 * giving the exact integer q - z (times 16), and one FFMA accumulates it
 * against x. Odd nibbles go to their own accumulator, scaled by 1/16 once per
 * chunk; the group scale multiplies once per chunk. fp32 throughout; x bf16. */
#include "gemv_q.cuh"

template <bool F16, bool PERM>
__global__ void __launch_bounds__(QG_THREADS)
    k_gemv_int4(const uint4 *__restrict__ W, const uint32_t *__restrict__ S,
                const int32_t *__restrict__ perm, const uint16_t *__restrict__ x,
                float *__restrict__ y, int N, int K, int kc, int ng, int cpg, int accumulate)
{
    const int row0 = blockIdx.x * QK_QROWS;
    const uint4 *wr = W + (size_t)row0 * kc;
    const uint32_t *sr = S + (size_t)row0 * ng;
    float acc[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;

    for (int c = threadIdx.x; c < kc; c += blockDim.x) {
        uint4 wv[QK_QROWS];
        uint32_t m[QK_QROWS];
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) wv[r] = __ldcs(wr + (size_t)r * kc + c);
        const int g = PERM ? __ldg(perm + (size_t)kc * 32 + c) : c / cpg;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) m[r] = __ldg(sr + (size_t)r * ng + g);
        float xf[32];
        if (PERM) {
            const int4 *pp = (const int4 *)(perm + (size_t)c * 32);
#pragma unroll
            for (int v = 0; v < 8; v++) {
                int4 id = __ldg(pp + v);
                xf[4 * v + 0] = id.x >= 0 ? qk_bf(__ldg(x + id.x)) : 0.0f;
                xf[4 * v + 1] = id.y >= 0 ? qk_bf(__ldg(x + id.y)) : 0.0f;
                xf[4 * v + 2] = id.z >= 0 ? qk_bf(__ldg(x + id.z)) : 0.0f;
                xf[4 * v + 3] = id.w >= 0 ? qk_bf(__ldg(x + id.w)) : 0.0f;
            }
        } else {
            qg_load_x<32>(x, c * 32, K, xf);
        }
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const float s = F16 ? __half2float(__ushort_as_half((unsigned short)(m[r] & 0xffffu)))
                                : __uint_as_float(m[r] << 16);
            const uint32_t z = (m[r] >> 16) & 0xffu;
            const float clo = __uint_as_float(0x4b000000u | z);
            const float chi = __uint_as_float(0x4b000000u | (z << 4));
            const uint32_t wa[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
            float alo = 0.0f, ahi = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const uint32_t b = wa[j] >> (8 * i);
                    alo = fmaf(__uint_as_float((b & 0x0fu) | 0x4b000000u) - clo, xf[8 * j + 2 * i], alo);
                    ahi = fmaf(__uint_as_float((b & 0xf0u) | 0x4b000000u) - chi, xf[8 * j + 2 * i + 1], ahi);
                }
            }
            acc[r] = fmaf(s, fmaf(ahi, 0.0625f, alo), acc[r]);
        }
    }
    __shared__ float red[QG_WARPS * QK_QROWS];
    const float t = qg_block_reduce(acc, red);
    if (threadIdx.x < QK_QROWS) {
        const int row = row0 + threadIdx.x;
        if (row < N) y[row] = accumulate ? y[row] + t : t;
    }
}

extern "C" int qk_gemv_int4(const qk_qweight *w, const uint16_t *x, float *y, int accumulate,
                            struct CUstream_st *st)
{
    int rc = qg_check(w, x, y, QK_QW_INT4);
    if (rc) return rc;
    if (w->group <= 0 || w->group % 32 || (!w->perm && w->ngroups * w->group < w->k_pad) ||
        (w->perm && ((uintptr_t)w->perm & 15)))
        return (int)cudaErrorInvalidValue;
    const int kc = w->k_pad / 32, cpg = w->group / 32, grid = w->n_pad / QK_QROWS;
    const uint4 *W = (const uint4 *)w->w;
    const uint32_t *S = (const uint32_t *)w->s;
    if (w->perm) {
        if (w->scale_f16)
            k_gemv_int4<true, true><<<grid, qg_threads(kc), 0, st>>>(W, S, w->perm, x, y, w->n, w->k, kc,
                                                               w->ngroups, cpg, accumulate);
        else
            k_gemv_int4<false, true><<<grid, qg_threads(kc), 0, st>>>(W, S, w->perm, x, y, w->n, w->k, kc,
                                                                w->ngroups, cpg, accumulate);
    } else {
        if (w->scale_f16)
            k_gemv_int4<true, false><<<grid, qg_threads(kc), 0, st>>>(W, S, NULL, x, y, w->n, w->k, kc,
                                                                w->ngroups, cpg, accumulate);
        else
            k_gemv_int4<false, false><<<grid, qg_threads(kc), 0, st>>>(W, S, NULL, x, y, w->n, w->k, kc,
                                                                 w->ngroups, cpg, accumulate);
    }
    return qk_launch_status();
}

/* One thread per packed word (8 codes): out[n][perm(p)] = bf16(s * (q - z)). */
__global__ void k_dequant_int4_bf16(const uint32_t *__restrict__ W, const uint32_t *__restrict__ S,
                                    const int32_t *__restrict__ perm, int N, int K, int kw, int ng,
                                    int group, int f16, uint16_t *__restrict__ out, int ld)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)N * kw) return;
    const int n = (int)(i / kw), p0 = (int)(i % kw) * 8;
    const int g = perm ? perm[(size_t)kw * 8 + p0 / 32] : p0 / group;
    const uint32_t w = W[i], m = S[(size_t)n * ng + g];
    const float s = f16 ? __half2float(__ushort_as_half((unsigned short)(m & 0xffffu)))
                        : __uint_as_float(m << 16);
    const int z = (int)((m >> 16) & 0xffu);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int k = perm ? perm[p0 + j] : p0 + j;
        if (k < 0 || k >= K) continue;
        out[(size_t)n * ld + k] = qk_to_bf(s * (float)((int)((w >> (4 * j)) & 15u) - z));
    }
}

extern "C" int qk_dequant_int4_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st)
{
    if (!w || w->kind != QK_QW_INT4 || !out || ld < w->k || w->group <= 0) return (int)cudaErrorInvalidValue;
    const int kw = w->k_pad / 8;
    const int64_t total = (int64_t)w->n * kw;
    k_dequant_int4_bf16<<<(unsigned)((total + 255) / 256), 256, 0, st>>>(
        (const uint32_t *)w->w, (const uint32_t *)w->s, w->perm, w->n, w->k, kw, w->ngroups, w->group,
        w->scale_f16, out, ld);
    return qk_launch_status();
}
