/* gemv_q.cuh — the quantized decode GEMV bodies, one per layout of quant.h
 * (FP8, INT4, NVFP4/MXFP4, BF16), shared by the fused launcher (gemv_multi.cu)
 * and the BF16-dequantize kernels (gemv_fp8.cu, gemv_int4.cu, gemv_nvfp4.cu).
 *
 * Shape of every body: a block owns QK_QROWS output rows of one weight; its
 * threads walk the rows together, thread t taking chunks t, t + blockDim.x,
 * ... (a chunk = one 16-byte load per row). A warp thus reads 512 contiguous
 * bytes of each row per step, and the x chunk a thread loads (through L1: x
 * is re-read by every block) serves all QK_QROWS rows. Per chunk a thread
 * issues QK_QROWS independent 16-byte weight loads (streaming hint, so weights
 * do not evict x) before any arithmetic. The block size is picked per K
 * (qg_threads) so every thread does the same number of steps. Partial sums
 * are reduced with warp shuffles, then across warps in shared memory.
 * Dequantization happens in registers, fp32 accumulate, x bf16, y fp32. */
#ifndef QC_GEMV_Q_CUH
#define QC_GEMV_Q_CUH

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "common.cuh"
#include "quant.h"

#define QG_THREADS 256 /* most threads per block */
#define QG_WARPS (QG_THREADS / 32)

/* Host: threads per block for kc chunks per row: the fewest steps per thread
 * (at most QG_THREADS threads), then the fewest warps that cover kc in that
 * many steps. E.g. kc 160 -> 160 threads x 1 step, 544 -> 192 x 3. */
static inline int qg_threads(int kc)
{
    int steps = (kc + QG_THREADS - 1) / QG_THREADS;
    int warps = (kc + 32 * steps - 1) / (32 * steps);
    return 32 * (warps > 0 ? warps : 1);
}

/* One weight of a (possibly fused) launch, flattened for the device. */
struct qg_part {
    const void *w;
    const void *s;
    const int32_t *perm;
    float *y;
    int kind, n, k, kc; /* kc: 16-byte chunks per row */
    int ng, cpg;        /* int4: groups per row, chunks per group */
    int f16;            /* int4: f16 scales */
    int blk_n, cpb, nkb; /* fp8: block rows, chunks per block, blocks per block-row */
    float post;         /* applied to each finished dot (fp4: gmul * 2^14) */
    int first_block;    /* first blockIdx.x of this part */
};

struct qg_parts {
    qg_part p[QK_GEMV_MAX_PARTS];
    int count;
};

/* x[k0 .. k0+NV) (bf16, NV = 8, 16 or 32) as floats; zeros at k >= K. */
template <int NV>
__device__ __forceinline__ void qg_load_x(const uint16_t *__restrict__ x, int k0, int K, float *xf)
{
    if (k0 + NV <= K) {
        const uint4 *xv = (const uint4 *)(x + k0);
#pragma unroll
        for (int v = 0; v < NV / 8; v++) {
            uint4 u = __ldg(xv + v);
            const uint32_t a[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                xf[8 * v + 2 * i] = __uint_as_float(a[i] << 16);
                xf[8 * v + 2 * i + 1] = __uint_as_float(a[i] & 0xffff0000u);
            }
        }
    } else {
#pragma unroll
        for (int i = 0; i < NV; i++) xf[i] = k0 + i < K ? qk_bf(__ldg(x + k0 + i)) : 0.0f;
    }
}

/* An f16x2 held in a 32-bit word as two exact floats. Written as PTX cvt
 * without .ftz so f16 subnormals (the E2M1 value 0.5 maps to one) survive
 * --use_fast_math: the flush applies to f32 operands only. */
__device__ __forceinline__ float2 qg_h2f2(uint32_t h)
{
    float a, b;
    asm("{\n\t.reg .b16 lo, hi;\n\tmov.b32 {lo, hi}, %2;\n\tcvt.f32.f16 %0, lo;\n\tcvt.f32.f16 %1, hi;\n\t}"
        : "=f"(a), "=f"(b)
        : "r"(h));
    return make_float2(a, b);
}

/* Two E4M3 bytes (low 16 bits of v; the low byte is the lower element) as
 * an f16x2 word (lower element in the low half), exact: one cvt on sm_89+. */
__device__ __forceinline__ uint32_t qg_e4m3x2_h2(uint32_t v)
{
    const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v & 0xffffu), __NV_E4M3);
    return (uint32_t)r.x | ((uint32_t)r.y << 16);
}

/* The four f16x2 pairs of a repacked FP4 word (elements 2p, 2p+1 in pair p,
 * each the E2M1 value * 2^-14); see fp4_shuffle in cuda_repack.c. */
__device__ __forceinline__ void qg_fp4_pairs(uint32_t w, uint32_t h[4])
{
    h[0] = w & 0x8e008e00u;
    h[1] = (w << 3) & 0x8e008e00u;
    h[2] = ((w << 9) & 0x0e000e00u) | ((w << 2) & 0x80008000u);
    h[3] = ((w << 6) & 0x0e000e00u) | ((w << 1) & 0x80008000u);
}

/* E8M0 scale 2^(b-127); 0xFF is NaN. b = 0 (2^-127) reads as 0. */
__device__ __forceinline__ float qg_e8m0(uint32_t b)
{
    return b == 0xffu ? __uint_as_float(0x7fc00000u) : __uint_as_float(b << 23);
}

__device__ __forceinline__ float qg_int4_scale(uint32_t m, bool f16)
{
    return f16 ? __half2float(__ushort_as_half((unsigned short)(m & 0xffffu))) : __uint_as_float(m << 16);
}

/* ---- bodies: acc[r] += this thread's share of row row0 + r ---- */

/* FP8: 16 E4M3 codes per chunk, one cvt per pair to f16x2 (exact), one scale
 * per chunk (blk_k is a multiple of 16). */
__device__ __forceinline__ void qg_rows_fp8(const qg_part &p, int row0, const uint16_t *__restrict__ x,
                                            float *acc)
{
    const uint4 *wr = (const uint4 *)p.w + (size_t)row0 * p.kc;
    const float *sr[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) sr[r] = (const float *)p.s + (size_t)((row0 + r) / p.blk_n) * p.nkb;
    for (int c = threadIdx.x; c < p.kc; c += blockDim.x) {
        uint4 wv[QK_QROWS];
        float s[QK_QROWS];
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) wv[r] = __ldcs(wr + (size_t)r * p.kc + c);
        const int b = c / p.cpb;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) s[r] = __ldg(sr[r] + b);
        float xf[16];
        qg_load_x<16>(x, c * 16, p.k, xf);
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
}

/* INT4: 32 codes per chunk, one group per chunk (scale|zero word loaded
 * once). Per code one AND+OR builds the float 2^23 + q (even nibbles) or
 * 2^23 + 16q (odd nibbles, no shift needed), one FADD subtracts 2^23 + z
 * (or 2^23 + 16z) giving the exact q - z (times 16), one FFMA accumulates.
 * Odd nibbles have their own accumulator, scaled by 1/16 once per chunk. With
 * PERM, x is gathered through perm and the group comes from the chunk table. */
template <bool F16, bool PERM>
__device__ __forceinline__ void qg_rows_int4(const qg_part &p, int row0, const uint16_t *__restrict__ x,
                                             float *acc)
{
    const uint4 *wr = (const uint4 *)p.w + (size_t)row0 * p.kc;
    const uint32_t *sr = (const uint32_t *)p.s + (size_t)row0 * p.ng;
    for (int c = threadIdx.x; c < p.kc; c += blockDim.x) {
        uint4 wv[QK_QROWS];
        uint32_t m[QK_QROWS];
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) wv[r] = __ldcs(wr + (size_t)r * p.kc + c);
        const int g = PERM ? __ldg(p.perm + (size_t)p.kc * 32 + c) : c / p.cpg;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) m[r] = __ldg(sr + (size_t)r * p.ng + g);
        float xf[32];
        if (PERM) {
            const int4 *pp = (const int4 *)(p.perm + (size_t)c * 32);
#pragma unroll
            for (int v = 0; v < 8; v++) {
                int4 id = __ldg(pp + v);
                xf[4 * v + 0] = id.x >= 0 ? qk_bf(__ldg(x + id.x)) : 0.0f;
                xf[4 * v + 1] = id.y >= 0 ? qk_bf(__ldg(x + id.y)) : 0.0f;
                xf[4 * v + 2] = id.z >= 0 ? qk_bf(__ldg(x + id.z)) : 0.0f;
                xf[4 * v + 3] = id.w >= 0 ? qk_bf(__ldg(x + id.w)) : 0.0f;
            }
        } else {
            qg_load_x<32>(x, c * 32, p.k, xf);
        }
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const float s = qg_int4_scale(m[r], F16);
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
}

/* NVFP4 / MXFP4: 32 codes per chunk; 11 integer ops turn a word into four
 * f16x2 (value * 2^-14), then one cvt and one FFMA per code. Block scales
 * per 16 (E4M3, two per chunk) or 32 (E8M0); 2^14 * gmul is part.post. */
template <bool MX>
__device__ __forceinline__ void qg_rows_fp4(const qg_part &p, int row0, const uint16_t *__restrict__ x,
                                            float *acc)
{
    const uint4 *wr = (const uint4 *)p.w + (size_t)row0 * p.kc;
    const int nb = MX ? p.kc : 2 * p.kc; /* scale bytes per row */
    const uint8_t *sr = (const uint8_t *)p.s + (size_t)row0 * nb;
    for (int c = threadIdx.x; c < p.kc; c += blockDim.x) {
        uint4 wv[QK_QROWS];
        uint32_t sb[QK_QROWS];
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) wv[r] = __ldcs(wr + (size_t)r * p.kc + c);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++)
            sb[r] = MX ? (uint32_t)__ldg(sr + (size_t)r * nb + c)
                       : (uint32_t)__ldg((const uint16_t *)(sr + (size_t)r * nb) + c);
        float xf[32];
        qg_load_x<32>(x, c * 32, p.k, xf);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const uint32_t wa[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
            float a[2] = {0.0f, 0.0f};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t h[4];
                qg_fp4_pairs(wa[j], h);
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const float2 f = qg_h2f2(h[q]);
                    a[j >> 1] = fmaf(f.x, xf[8 * j + 2 * q], a[j >> 1]);
                    a[j >> 1] = fmaf(f.y, xf[8 * j + 2 * q + 1], a[j >> 1]);
                }
            }
            if (MX) {
                acc[r] = fmaf(qg_e8m0(sb[r]), a[0] + a[1], acc[r]);
            } else {
                const float2 s = qg_h2f2(qg_e4m3x2_h2(sb[r]));
                acc[r] = fmaf(s.x, a[0], fmaf(s.y, a[1], acc[r]));
            }
        }
    }
}

/* BF16 (for fusing 16-bit projections such as GDN in_proj_a/b with quantized
 * ones): 8 values per chunk. */
__device__ __forceinline__ void qg_rows_bf16(const qg_part &p, int row0, const uint16_t *__restrict__ x,
                                             float *acc)
{
    const uint4 *wr = (const uint4 *)p.w + (size_t)row0 * p.kc;
    for (int c = threadIdx.x; c < p.kc; c += blockDim.x) {
        uint4 wv[QK_QROWS];
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) wv[r] = __ldcs(wr + (size_t)r * p.kc + c);
        float xf[8];
        qg_load_x<8>(x, c * 8, p.k, xf);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const uint32_t wa[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
            float a = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                a = fmaf(__uint_as_float(wa[j] << 16), xf[2 * j], a);
                a = fmaf(__uint_as_float(wa[j] & 0xffff0000u), xf[2 * j + 1], a);
            }
            acc[r] += a;
        }
    }
}

/* Block reduction of QK_QROWS partial sums; thread r < QK_QROWS gets row r's
 * total in the return value (others: unspecified). red: QG_WARPS*QK_QROWS floats. */
__device__ __forceinline__ float qg_block_reduce(float *s, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) s[r] = qk_warp_sum(s[r]);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) red[warp * QK_QROWS + r] = s[r];
    }
    __syncthreads();
    float t = 0.0f;
    if (threadIdx.x < QK_QROWS) {
#pragma unroll 1
        for (int w = 0; w < nw; w++) t += red[w * QK_QROWS + threadIdx.x];
    }
    return t;
}

#endif
