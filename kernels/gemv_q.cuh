/* gemv_q.cuh — the quantized decode GEMV bodies, one per layout of quant.h
 * (FP8, INT4, NVFP4/MXFP4, BF16), shared by the fused launcher (gemv_multi.cu)
 * and the BF16-dequantize kernels (gemv_fp8.cu, gemv_int4.cu, gemv_nvfp4.cu).
 *
 * Shape of every body: a warp owns a row group (QK_QROWS rows of one weight)
 * and its lanes walk the rows together, lane l taking chunks l, l + 32, ...
 * (a chunk = one 16-byte load per row; a warp reads 512 contiguous bytes of
 * each row per step). When a launch has too few row groups to fill the GPU,
 * S warps share a row group (lane chunks strided by 32 * S) and meet in
 * shared memory (gemv_multi.cu picks S). The x slice a lane loads (through
 * L1: every warp re-reads x) serves all QK_QROWS rows. Each lane issues the
 * loads of two chunks (2 x QK_QROWS independent 16-byte weight loads,
 * streaming hint so weights do not evict x) before the arithmetic of either.
 * No block-wide barrier when S = 1: warp shuffles reduce the rows.
 * Dequantization happens in registers, fp32 accumulate, x bf16, y fp32.
 *
 * Measured on the H100 (BENCHMARKS.md "Quantized GEMV (H100)"): INT4 went
 * from 47 to 54 % of copy bandwidth when its FFMA body fell from 4.4 to 3.1
 * instructions per code; the tensor-core body (qg_int4_mma_step) first ran
 * at the same 54 %, then at 62 % once its word decoding fell from 15 to 11
 * instructions (fourth session: the cuts in instructions paid, every change
 * to the bytes in flight per warp lost). Fifth session, sampled inside the
 * launches (ncu PmSampling): between ramp and tail these GEMVs stream at
 * 85-95 % of DRAM peak; what they lose is per launch (the ramp, all warps
 * crossing a group or phase boundary together, the tail of the last
 * warps), so the schedule in gemv_multi.cu (PDL, the K split, BF16 parts
 * first) is where the time went, and shorter arithmetic paid by shortening
 * those phases. The grid's wave tail was one cause (the persistent launch
 * in gemv_multi.cu: +2-7 %); prefetching the next step across iterations
 * into a second register set spilled at 128 registers and lost 2-17 %.
 * Keeping the next 2-3 steps in flight in shared memory instead (cp.async,
 * per lane, no spills) lost 5-25 %, and so did staging each row group's
 * scales there; the loads alone without the arithmetic reach 81 % (INT4,
 * NVFP4) of copy bandwidth on the 27B total. What paid: for FP4, x staged
 * once per block in shared memory (qg_load_xsm); PDL launches, once the
 * small kernels between the GEMVs trigger at entry (they are the default
 * since the fifth session). Third session (BENCHMARKS.md, "CUDA engine: quantized formats"):
 * weights through 1-D bulk copies (cp.async.bulk + mbarrier, 3 steps in
 * flight per warp, no registers) lost 15-18 points (in the sixth session
 * the same idea, k_gemv_qt in gemv_multi.cu, gained ~1 % for INT4 once its
 * first copies were issued before the PDL wait); 3 blocks per SM paid
 * for FP4 only; ncu: ~9 cycles per issued instruction, long-scoreboard and
 * barrier stalls first. See BENCHMARKS.md "Quantized GEMV (H100)". */
#ifndef QC_GEMV_Q_CUH
#define QC_GEMV_Q_CUH

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "common.cuh"
#include "quant.h"

#define QG_THREADS 256 /* threads per block */
#define QG_WARPS (QG_THREADS / 32)
#ifndef QG_MINB
#define QG_MINB 2 /* blocks per SM the register budget must allow */
#endif

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
    int cpg_sh;         /* int4: log2 cpg when a power of two, else -1 (qg_div) */
    int tiled;          /* int4: the step-major layout (quant.h; cpg 1, 2 or 4, no perm) */
    int s16;            /* int4: tiled with 16-bit scales only, every zero 8 (quant.h) */
    float post;         /* applied to each finished dot (fp4: gmul * 2^14) */
    int xs_p;           /* bf16 part: x is the block's staged copy, P pieces per chunk (0: global x) */
    int xs_off;         /* ... at this uint4 of it (a natural-order copy after a permuted one, qg_stage_x) */
    const float *cw;    /* conv epilogue (qk_conv_epi) on rows < cC, part 0 only */
    float *cst, *cout;
    int cC;
    int first_block;    /* first blockIdx.x of this part */
    int first_group;    /* persistent launch: first global row group of this part */
};

struct qg_parts {
    qg_part p[QK_GEMV_MAX_PARTS];
    int count;
    int prime; /* persistent PDL launch: ask L2 for the first step before the wait (qg_prime_l2) */
    int nbf;   /* persistent launch: row groups of the BF16 parts, the last ones (qg_persist's phase 0) */
    int bfw;   /* ... and a BF16 group's bytes in quantized groups of part 0 (qg_phase2_slot) */
    const uint16_t *xperm; /* staged x in this act-order permutation's packed order (its 16-bit copy, qg_stage_x) */
    int xs_nat;            /* ... and the natural-order copy kept after it, for BF16 parts */
    int xs_u4;            /* uint4s of staged x in shared memory (k_gemv_qt's rings follow) */
};

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

/* a / d for the INT4 group: a shift when d is a power of two (sh = log2 d:
 * every published group size), else a division. The division was ~25
 * instructions per chunk and row group in the INT4 walk (SASS); the shift
 * measured +2 % on the 27B INT4 decode (102.0 -> 104.1 tok/s, H100, two
 * A/B runs). The same change to FP8's block divisions measured -0.6 %, so
 * FP8 keeps them. */
__device__ __forceinline__ int qg_div(int a, int d, int sh)
{
    return sh >= 0 ? a >> sh : a / d;
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

/* Eight consecutive weights of a row as bf16 (o[j] holds elements 2j, 2j+1,
 * the lower in the low half), rounded to nearest even from the exact fp32
 * dequantized value: the prefill dequantization kernels (gemv_fp8.cu,
 * gemv_int4.cu, gemv_nvfp4.cu) and the MoE experts' (moe_gemm.cu).
 * FP8: two words of e4m3 codes and their block scale s. */
__device__ __forceinline__ void qg_dq8_fp8(uint2 w, float s, uint32_t o[4])
{
    const uint32_t wa[2] = {w.x, w.y};
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const float2 lo = qg_h2f2(qg_e4m3x2_h2(wa[j])), hi = qg_h2f2(qg_e4m3x2_h2(wa[j] >> 16));
        o[2 * j] = (uint32_t)qk_to_bf(lo.x * s) | ((uint32_t)qk_to_bf(lo.y * s) << 16);
        o[2 * j + 1] = (uint32_t)qk_to_bf(hi.x * s) | ((uint32_t)qk_to_bf(hi.y * s) << 16);
    }
}

/* INT4: one word of codes (natural order) and its group's scale|zero word m. */
__device__ __forceinline__ void qg_dq8_int4(uint32_t w, uint32_t m, bool f16, uint32_t o[4])
{
    const float s = qg_int4_scale(m, f16);
    const int z = (int)((m >> 16) & 0xffu);
#pragma unroll
    for (int j = 0; j < 4; j++)
        o[j] = (uint32_t)qk_to_bf(s * (float)((int)((w >> (8 * j)) & 15u) - z)) |
               ((uint32_t)qk_to_bf(s * (float)((int)((w >> (8 * j + 4)) & 15u) - z)) << 16);
}

/* An NVFP4 (e4m3) or MXFP4 (e8m0) block scale byte times the per-tensor
 * multiplier gmul: the s of qg_dq8_fp4. */
__device__ __forceinline__ float qg_fp4_bscale(uint32_t b, bool mx, float gmul)
{
    return (mx ? qg_e8m0(b) : qg_h2f2(qg_e4m3x2_h2(b)).x) * gmul;
}

/* NVFP4 / MXFP4: one repacked word and s = block scale * per-tensor multiplier. */
__device__ __forceinline__ void qg_dq8_fp4(uint32_t w, float s, uint32_t o[4])
{
    uint32_t h[4];
    qg_fp4_pairs(w, h);
#pragma unroll
    for (int p = 0; p < 4; p++) {
        const float2 f = qg_h2f2(h[p]);
        o[p] = (uint32_t)qk_to_bf((f.x * 16384.0f) * s) | ((uint32_t)qk_to_bf((f.y * 16384.0f) * s) << 16);
    }
}

/* x[k0 .. k0+NV) as NV/2 raw bf16x2 words (lower k in the low half); zeros
 * at k >= K. Kept packed until the arithmetic so two steps in flight cost
 * half the registers. */
template <int NV>
__device__ __forceinline__ void qg_load_xraw(const uint16_t *__restrict__ x, int k0, int K, uint32_t *xr)
{
    if (k0 + NV <= K) {
        const uint4 *xv = (const uint4 *)(x + k0);
#pragma unroll
        for (int v = 0; v < NV / 8; v++) {
            const uint4 u = __ldg(xv + v);
            xr[4 * v + 0] = u.x;
            xr[4 * v + 1] = u.y;
            xr[4 * v + 2] = u.z;
            xr[4 * v + 3] = u.w;
        }
    } else {
#pragma unroll
        for (int i = 0; i < NV / 2; i++) {
            const uint32_t lo = k0 + 2 * i < K ? __ldg(x + k0 + 2 * i) : 0u;
            const uint32_t hi = k0 + 2 * i + 1 < K ? __ldg(x + k0 + 2 * i + 1) : 0u;
            xr[i] = lo | (hi << 16);
        }
    }
}

/* The same NV/2 words from the block's staged copy of x (XS launches of
 * gemv_multi.cu): 16-byte piece v of chunk c at qg_xsm[v * kc + c], so a
 * warp's lanes (consecutive chunks) read consecutive vectors, one shared-
 * memory wavefront per 8 lanes, where their global loads of x, 32-64 bytes
 * apart, touch a separate L1 line every 2-4 lanes. Zeros past K. */
extern __shared__ uint4 qg_xsm[];
template <int NV>
__device__ __forceinline__ void qg_load_xsm(int kc, int c, uint32_t *xr)
{
#pragma unroll
    for (int v = 0; v < NV / 8; v++) {
        const uint4 u = qg_xsm[v * kc + c];
        xr[4 * v + 0] = u.x;
        xr[4 * v + 1] = u.y;
        xr[4 * v + 2] = u.z;
        xr[4 * v + 3] = u.w;
    }
}

/* The x words a step's dot() uses: with XS read from the staged copy only
 * now, so they do not hold registers while the step's weight loads are in
 * flight (that is what lets the XS kernels run 3 blocks per SM, see
 * gemv_multi.cu); zeros for a chunk past the row end (mma walks). */
template <int NV>
struct qg_xw {
    uint32_t v[NV / 2];
};
template <int NV, bool XS>
__device__ __forceinline__ qg_xw<NV> qg_x_late(const qg_part &p, int c, const uint32_t *xr)
{
    qg_xw<NV> r;
    if (!XS) {
#pragma unroll
        for (int i = 0; i < NV / 2; i++) r.v[i] = xr[i];
    } else if (c < p.kc) {
        qg_load_xsm<NV>(p.kc, c, r.v);
    } else {
#pragma unroll
        for (int i = 0; i < NV / 2; i++) r.v[i] = 0u;
    }
    return r;
}

template <int NV>
__device__ __forceinline__ void qg_unpack_x(const uint32_t *xr, float *xf)
{
#pragma unroll
    for (int i = 0; i < NV / 2; i++) {
        xf[2 * i] = __uint_as_float(xr[i] << 16);
        xf[2 * i + 1] = __uint_as_float(xr[i] & 0xffff0000u);
    }
}

/* Chunk c of the QK_QROWS rows from row0 (16 bytes each, streaming: the
 * weights are read once, so they should not evict x from L1). */
__device__ __forceinline__ void qg_load_w(const qg_part &p, int row0, int c, uint4 *w)
{
    const uint4 *wr = (const uint4 *)p.w + (size_t)row0 * p.kc + c;
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) w[r] = __ldcs(wr + (size_t)r * p.kc);
}

/* INT4: chunk c of the QK_QROWS rows from row0 in either layout (quant.h:
 * row-major, or tiled: rows r of a step 32 uint4 apart). */
__device__ __forceinline__ void qg_load_w_i4(const qg_part &p, int row0, int c, uint4 *w)
{
    if (!p.tiled) {
        qg_load_w(p, row0, c, w);
        return;
    }
    const uint4 *wr = (const uint4 *)p.w + ((size_t)(row0 >> 2) * (p.kc >> 5) + (c >> 5)) * 128 + (c & 31);
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) w[r] = __ldcs(wr + r * 32);
}

/* INT4 without g_idx: the scale|zero words of chunk c's group for the
 * QK_QROWS rows from row0 (a multiple of QK_QROWS), from either layout and
 * either width of s (quant.h: 32-bit words, or tiled 16-bit scales). */
__device__ __forceinline__ void qg_i4_load_m(const qg_part &p, int row0, int c, uint32_t *m)
{
    if (!p.tiled) {
        const uint32_t *sr = (const uint32_t *)p.s + (size_t)row0 * p.ng + qg_div(c, p.cpg, p.cpg_sh);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) m[r] = __ldg(sr + (size_t)r * p.ng);
        return;
    }
    const int sw = 32 >> p.cpg_sh; /* groups per step */
    const size_t i = ((size_t)(row0 >> 2) * (p.kc >> 5) + (c >> 5)) * (QK_QROWS * sw) + ((c & 31) >> p.cpg_sh);
    if (p.s16) {
        const uint16_t *sr = (const uint16_t *)p.s + i;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) m[r] = qk_int4_sword(__ldg(sr + r * sw));
    } else {
        const uint32_t *sr = (const uint32_t *)p.s + i;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) m[r] = __ldg(sr + r * sw);
    }
}

/* ---- bodies: acc[r] += this thread's share of row row0 + r ----
 *
 * Each layout is a step type with load() (every global load of one chunk:
 * QK_QROWS 16-byte weight vectors, their scales, the x slice) and dot()
 * (the arithmetic). qg_walk issues the loads of two chunks before the
 * arithmetic of either, so each thread keeps 2 x QK_QROWS 16-byte weight
 * loads in flight and its own math overlaps its next loads. */

/* FP8: 16 E4M3 codes per chunk, one cvt per pair to f16x2 (exact), one scale
 * per chunk (blk_k is a multiple of 16). */
template <bool XS = false>
struct qg_fp8_step_t {
    uint4 w[QK_QROWS];
    float s[QK_QROWS];
    uint32_t xr[8];
    int cx; /* XS: the chunk, whose x is read from shared memory in dot() */
    __device__ __forceinline__ void load(const qg_part &p, int row0, const uint16_t *__restrict__ x, int c)
    {
        qg_load_w(p, row0, c, w);
        const int b = c / p.cpb;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++)
            s[r] = __ldg((const float *)p.s + (size_t)((row0 + r) / p.blk_n) * p.nkb + b);
        if (XS) cx = c;
        else qg_load_xraw<16>(x, c * 16, p.k, xr);
    }
    __device__ __forceinline__ void dot(const qg_part &p, float *acc) const
    {
        float xf[16];
        qg_unpack_x<16>(qg_x_late<16, XS>(p, cx, xr).v, xf);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const uint32_t wa[4] = {w[r].x, w[r].y, w[r].z, w[r].w};
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
};
typedef qg_fp8_step_t<false> qg_fp8_step;

/* INT4: 32 codes per chunk, one group per chunk (scale|zero word loaded
 * once). Nibble j of a word is decoded where it lies, without a shift: one
 * LOP3 ((w & 0xf<<4j) | 0x4b000000) builds the float 2^23 + q*16^j, one FADD
 * subtracts 2^23 + z*16^j giving the exact (q - z)*16^j, one FFMA accumulates
 * into the accumulator of that power of 16. Nibbles 5-7 would reach the
 * exponent, so they come from w >> 12 (the only shift per word). The five
 * accumulators are brought to scale 1 once per chunk (exact powers of two).
 * 3.1 instructions per code (was 4.4: separate AND/OR, three shifts). With
 * PERM, x is gathered through perm and the group comes from the chunk table. */
__device__ __forceinline__ float qg_magic(uint32_t w, uint32_t mask)
{
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(w), "r"(mask), "r"(0x4b000000u));
    return __uint_as_float(d);
}

template <bool F16, bool PERM, bool XS = false>
struct qg_int4_step {
    uint4 w[QK_QROWS];
    uint32_t m[QK_QROWS];
    uint32_t xr[16];
    int cx;
    __device__ __forceinline__ void load(const qg_part &p, int row0, const uint16_t *__restrict__ x, int c)
    {
        if (PERM) {
            qg_load_w(p, row0, c, w);
            const uint32_t *sr = (const uint32_t *)p.s + (size_t)row0 * p.ng + __ldg(p.perm + (size_t)p.kc * 32 + c);
#pragma unroll
            for (int r = 0; r < QK_QROWS; r++) m[r] = __ldg(sr + (size_t)r * p.ng);
        } else {
            qg_load_w_i4(p, row0, c, w);
            qg_i4_load_m(p, row0, c, m);
        }
        if (PERM) {
            const int4 *pp = (const int4 *)(p.perm + (size_t)c * 32);
#pragma unroll
            for (int v = 0; v < 8; v++) {
                const int4 id = __ldg(pp + v);
                const uint32_t e0 = id.x >= 0 ? __ldg(x + id.x) : 0u, e1 = id.y >= 0 ? __ldg(x + id.y) : 0u;
                const uint32_t e2 = id.z >= 0 ? __ldg(x + id.z) : 0u, e3 = id.w >= 0 ? __ldg(x + id.w) : 0u;
                xr[2 * v] = e0 | (e1 << 16);
                xr[2 * v + 1] = e2 | (e3 << 16);
            }
        } else if (XS) {
            cx = c;
        } else {
            qg_load_xraw<32>(x, c * 32, p.k, xr);
        }
    }
    __device__ __forceinline__ void dot(const qg_part &p, float *acc) const
    {
        float xf[32];
        qg_unpack_x<32>(qg_x_late<32, XS && !PERM>(p, cx, xr).v, xf);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const float s = qg_int4_scale(m[r], F16);
            const uint32_t z = (m[r] >> 16) & 0xffu; /* <= 16: z << 16 stays below the exponent */
            float c[5], a[5];
#pragma unroll
            for (int e = 0; e < 5; e++) {
                c[e] = __uint_as_float(0x4b000000u | (z << (4 * e)));
                a[e] = 0.0f;
            }
            const uint32_t wa[4] = {w[r].x, w[r].y, w[r].z, w[r].w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const uint32_t u = wa[j] >> 12;
                const float *xj = xf + 8 * j;
#pragma unroll
                for (int e = 0; e < 5; e++) a[e] = fmaf(qg_magic(wa[j], 0xfu << (4 * e)) - c[e], xj[e], a[e]);
#pragma unroll
                for (int e = 2; e < 5; e++) a[e] = fmaf(qg_magic(u, 0xfu << (4 * e)) - c[e], xj[e + 3], a[e]);
            }
            const float t = fmaf(a[4], 1.0f / 65536.0f,
                                 fmaf(a[3], 1.0f / 4096.0f, fmaf(a[2], 1.0f / 256.0f, fmaf(a[1], 0.0625f, a[0]))));
            acc[r] = fmaf(s, t, acc[r]);
        }
    }
};

/* NVFP4 / MXFP4: 32 codes per chunk; 11 integer ops turn a word into four
 * f16x2 (value * 2^-14), then one cvt and one FFMA per code. Block scales
 * per 16 (E4M3, two per chunk) or 32 (E8M0); 2^14 * gmul is part.post. */
template <bool MX, bool XS = false>
struct qg_fp4_step {
    uint4 w[QK_QROWS];
    uint32_t sb[QK_QROWS];
    uint32_t xr[16];
    int cx;
    __device__ __forceinline__ void load(const qg_part &p, int row0, const uint16_t *__restrict__ x, int c)
    {
        qg_load_w(p, row0, c, w);
        const int nb = MX ? p.kc : 2 * p.kc; /* scale bytes per row */
        const uint8_t *sr = (const uint8_t *)p.s + (size_t)row0 * nb;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++)
            sb[r] = MX ? (uint32_t)__ldg(sr + (size_t)r * nb + c)
                       : (uint32_t)__ldg((const uint16_t *)(sr + (size_t)r * nb) + c);
        if (XS) cx = c;
        else qg_load_xraw<32>(x, c * 32, p.k, xr);
    }
    __device__ __forceinline__ void dot(const qg_part &p, float *acc) const
    {
        float xf[32];
        qg_unpack_x<32>(qg_x_late<32, XS>(p, cx, xr).v, xf);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const uint32_t wa[4] = {w[r].x, w[r].y, w[r].z, w[r].w};
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
};

/* BF16 (for fusing 16-bit projections such as GDN in_proj_a/b with quantized
 * ones): 8 values per chunk. */
struct qg_bf16_step {
    uint4 w[QK_QROWS];
    uint32_t xr[4];
    __device__ __forceinline__ void load(const qg_part &p, int row0, const uint16_t *__restrict__ x, int c)
    {
        qg_load_w(p, row0, c, w);
        if (p.xs_p) { /* 8 values = piece c % P of staged chunk c / P */
            const uint4 u = qg_xsm[p.xs_off + (c % p.xs_p) * (p.kc / p.xs_p) + c / p.xs_p];
            xr[0] = u.x;
            xr[1] = u.y;
            xr[2] = u.z;
            xr[3] = u.w;
        } else {
            qg_load_xraw<8>(x, c * 8, p.k, xr);
        }
    }
    __device__ __forceinline__ void dot(const qg_part &, float *acc) const
    {
        float xf[8];
        qg_unpack_x<8>(xr, xf);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const uint32_t wa[4] = {w[r].x, w[r].y, w[r].z, w[r].w};
            float a = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                a = fmaf(__uint_as_float(wa[j] << 16), xf[2 * j], a);
                a = fmaf(__uint_as_float(wa[j] & 0xffff0000u), xf[2 * j + 1], a);
            }
            acc[r] += a;
        }
    }
};

/* ---- tensor-core bodies (mma.sync m16n8k16, fp32 accumulate) ----
 *
 * The FFMA bodies above are bound by instruction issue; these hand the
 * multiply-adds to the tensor cores and keep only the bit decoding on the
 * ALUs. No layout change: lane (g, t) = (lane / 4, lane % 4) still holds its
 * own 16-byte chunk of each of the QK_QROWS rows and puts rows (0, 1) or
 * (2, 3) in A rows g and g + 8, its x values (the same k, in the same pair
 * order) in column g of B. Only the diagonal D[g][g], D[g + 8][g] is used:
 * it sums the four lanes of quad g (four consecutive chunks of the same two
 * rows, since every chunk base is a multiple of 4), in any k order — the
 * reduction does not care. The other 7/8 of each mma is wasted, which the
 * tensor cores can afford. Lane (g, t) holds the diagonal when t == g / 2
 * (register d[g & 1] / d[2 + (g & 1)]). All lanes run every mma (warp-wide
 * instruction), so the walk is warp-uniform and lanes past the row end feed
 * zeros. FP8 and NVFP4 in the same form (f16 operands: x staged in f16 per
 * group of 128 times a power of two, NVFP4 codes times their scale by
 * HMUL2, all exact) measured 4-8 % slower on the 27B decode than their FFMA
 * bodies (BENCHMARKS.md, twenty-ninth session), so only INT4 has one. */
__device__ __forceinline__ void qg_mma_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t qg_prmt(uint32_t a, uint32_t b, uint32_t sel)
{
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

/* (a - b) on bf16x2 words as b * -1 + a: exact here (small integers). */
__device__ __forceinline__ uint32_t qg_bsub2(uint32_t a, uint32_t b)
{
    uint32_t d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(b), "r"(0xbf80bf80u), "r"(a));
    return d;
}

/* bf16x2 (128 + nibble 0, 128 + nibble 4) of w: (w & 0x000f000f) | 0x43004300
 * as ONE LOP3 with the constant in a register. Written in C, the compiler
 * made it two LOP3s with immediates (SASS): 8 of the 15 instructions that
 * decoded a word, now 4 of 11; +5.4 % on the 27B INT4 decode (104.7 ->
 * 110.4 tok/s, H100, two same-session A/B runs). */
__device__ __forceinline__ uint32_t qg_bf16_nib2(uint32_t w)
{
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(w), "n"(0x000f000fu), "r"(0x43004300u));
    return d;
}

/* The INT4 tensor-core dot of one lane's 32 codes per row (groups of 32 *
 * CPG codes). Word s of row r, wd[r][s], gives the bf16 pairs (q_p,
 * q_{p+4}) - z for p = 0..3: (w >> 4p) & 0x000f000f | 0x43004300 is 128 + q
 * in each half (one LOP3, qg_bf16_nib2, + one shift), minus 128 + z (one
 * bf16x2 FMA, exact); xv[4s .. 4s+3] are the raw bf16 words of the x piece
 * that word s multiplies, paired in the same order by one PRMT each. The
 * mma sums the four lanes of a quad (qg_mma_bf16), so for every s the
 * quad's four words s must lie in one group: steps i*CPG .. i*CPG+CPG-1
 * belong to the quad's group i, whose scale|zero word is m[r][i]. Per row
 * pair and group the mmas go into a fresh D, then the group scale on the
 * fp32 accumulator. CPG 4 (groups of 128) is the walks' case: a lane's
 * own chunk, one group per quad (qg_int4_mma_step); the streamed kernel
 * also runs 1 and 2 (gemv_multi.cu qt_dot). */
template <bool F16, int CPG>
__device__ __forceinline__ void qg_int4_mma_dot(const uint32_t (&wd)[QK_QROWS][4], const uint32_t (&m)[QK_QROWS][4 / CPG],
                                                const uint32_t *xv, float *acc)
{
    uint32_t b[16]; /* b[4j + p]: x pair (8j + p, 8j + p + 4) */
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int q = 0; q < 4; q++)
            b[4 * j + q] = qg_prmt(xv[4 * j + (q >> 1)], xv[4 * j + 2 + (q >> 1)], (q & 1) ? 0x7632u : 0x5410u);
    const bool hi = ((int)threadIdx.x >> 2) & 1;
#pragma unroll
    for (int rp = 0; rp < QK_QROWS; rp += 2) {
#pragma unroll
        for (int i = 0; i < 4 / CPG; i++) {
            /* bf16x2 (128 + z, 128 + z) = bytes (z, 0x43, z, 0x43) of the
             * scale|zero word (z, byte 2, <= 16: mantissa): one PRMT */
            const uint32_t zz[2] = {qg_prmt(m[rp][i], 0x43434343u, 0x4242u),
                                    qg_prmt(m[rp + 1][i], 0x43434343u, 0x4242u)};
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int j = i * CPG; j < (i + 1) * CPG; j++) {
#pragma unroll
                for (int q = 0; q < 4; q += 2) {
                    uint32_t a[4];
                    a[0] = qg_bsub2(qg_bf16_nib2(wd[rp][j] >> (4 * q)), zz[0]);
                    a[1] = qg_bsub2(qg_bf16_nib2(wd[rp + 1][j] >> (4 * q)), zz[1]);
                    a[2] = qg_bsub2(qg_bf16_nib2(wd[rp][j] >> (4 * q + 4)), zz[0]);
                    a[3] = qg_bsub2(qg_bf16_nib2(wd[rp + 1][j] >> (4 * q + 4)), zz[1]);
                    qg_mma_bf16(d, a, b[4 * j + q], b[4 * j + q + 1]);
                }
            }
            const float d0 = hi ? d[1] : d[0], d1 = hi ? d[3] : d[2];
            acc[rp] = fmaf(qg_int4_scale(m[rp][i], F16), d0, acc[rp]);
            acc[rp + 1] = fmaf(qg_int4_scale(m[rp + 1][i], F16), d1, acc[rp + 1]);
        }
    }
}

/* INT4 (groups a multiple of 128, no g_idx: a quad's four chunks share one
 * group), the walks' step: qg_int4_mma_dot on the lane's own chunk. */
template <bool F16, bool XS = false>
struct qg_int4_mma_step {
    uint4 w[QK_QROWS];
    uint32_t m[QK_QROWS];
    uint32_t xr[16];
    int cx;
    __device__ __forceinline__ void load(const qg_part &p, int row0, const uint16_t *__restrict__ x, int c)
    {
        cx = c;
        if (c < p.kc) {
            qg_load_w_i4(p, row0, c, w);
            qg_i4_load_m(p, row0, c, m);
            if (!XS) qg_load_xraw<32>(x, c * 32, p.k, xr);
        } else {
            /* Past the row end: zero weights, but the quad's group scale,
             * since this lane may be the one that holds the quad's sum. */
            const int cq = c & ~3;
#pragma unroll
            for (int r = 0; r < QK_QROWS; r++) {
                w[r] = make_uint4(0u, 0u, 0u, 0u);
                m[r] = 0u;
            }
            if (cq < p.kc) qg_i4_load_m(p, row0, cq, m);
#pragma unroll
            for (int i = 0; i < 16; i++) xr[i] = 0u;
        }
    }
    __device__ __forceinline__ void dot(const qg_part &p, float *acc) const
    {
        const qg_xw<32> xw = qg_x_late<32, XS>(p, cx, xr);
        uint32_t wd[QK_QROWS][4], mm[QK_QROWS][1];
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            wd[r][0] = w[r].x;
            wd[r][1] = w[r].y;
            wd[r][2] = w[r].z;
            wd[r][3] = w[r].w;
            mm[r][0] = m[r];
        }
        qg_int4_mma_dot<F16, 4>(wd, mm, xw.v, acc);
    }
};

/* Warp-uniform walk for the mma steps: chunks (c0 - lane) + lane, + stride,
 * ...; a lane past the row end loads zeros but still runs the mmas. At the
 * end only the diagonal lanes keep their sums (the others hold products of
 * rows with another quad's x). */
template <class STEP>
__device__ __forceinline__ void qg_walk_mma(const qg_part &pp, int row0, const uint16_t *__restrict__ x, float *acc,
                                            int c0, int stride)
{
    const qg_part p = pp; /* registers: the part's fields are not re-read from the parameter bank per step */
    const int lane = (int)threadIdx.x & 31;
    for (int cb = c0 - lane; cb < p.kc; cb += 2 * stride) {
        STEP a, b;
        a.load(p, row0, x, cb + lane);
        b.load(p, row0, x, cb + stride + lane);
        a.dot(p, acc);
        if (cb + stride < p.kc) b.dot(p, acc);
    }
    if ((lane & 3) != (lane >> 3)) {
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    }
}

/* Chunks c0, c0 + stride, ... of rows row0 .. row0 + QK_QROWS - 1, two
 * chunks' loads issued before either's arithmetic. */
template <class STEP>
__device__ __forceinline__ void qg_walk(const qg_part &pp, int row0, const uint16_t *__restrict__ x, float *acc,
                                        int c0, int stride)
{
    const qg_part p = pp; /* registers: the part's fields are not re-read from the parameter bank per step */
    int c = c0;
    for (; c + stride < p.kc; c += 2 * stride) {
        STEP a, b;
        a.load(p, row0, x, c);
        b.load(p, row0, x, c + stride);
        a.dot(p, acc);
        b.dot(p, acc);
    }
    if (c < p.kc) {
        STEP a;
        a.load(p, row0, x, c);
        a.dot(p, acc);
    }
}

/* The decode bodies of gemv_q.cuh: one per layout, INT4 split by g_idx
 * (P), f16 scales (H) and tensor-core groups of 128 or more (M). */
enum { QG_B_FP8, QG_B_I4PH, QG_B_I4P, QG_B_I4MH, QG_B_I4M, QG_B_I4H, QG_B_I4, QG_B_NV, QG_B_MX, QG_B_BF16, QG_NBODY };

/* Which body a part runs (host and device). */
__host__ __device__ static inline int qg_part_body(const qg_part *p)
{
    switch (p->kind) {
    case QK_QW_FP8: return QG_B_FP8;
    case QK_QW_INT4:
        if (p->perm) return p->f16 ? QG_B_I4PH : QG_B_I4P;
        if (p->cpg % 4 == 0) return p->f16 ? QG_B_I4MH : QG_B_I4M;
        return p->f16 ? QG_B_I4H : QG_B_I4;
    case QK_QW_NVFP4: return QG_B_NV;
    case QK_QW_MXFP4: return QG_B_MX;
    default: return QG_B_BF16;
    }
}

/* Calls f.template run<STEP, MMA>() with the step type of body b and
 * whether it is a tensor-core step (qg_walk_mma's warp-uniform walk): the
 * one map from a body to its code, for the plain, persistent and MoE walks.
 * XS: x from the block's staged copy, where the layout has such a step
 * (g_idx INT4 and BF16 read x as they do without). */
template <bool XS = false, class F>
__device__ __forceinline__ void qg_body_visit(int b, F &f)
{
    switch (b) {
    case QG_B_FP8: f.template run<qg_fp8_step_t<XS>, false>(); break;
    case QG_B_I4PH: f.template run<qg_int4_step<true, true>, false>(); break;
    case QG_B_I4P: f.template run<qg_int4_step<false, true>, false>(); break;
    case QG_B_I4MH: f.template run<qg_int4_mma_step<true, XS>, true>(); break;
    case QG_B_I4M: f.template run<qg_int4_mma_step<false, XS>, true>(); break;
    case QG_B_I4H: f.template run<qg_int4_step<true, false, XS>, false>(); break;
    case QG_B_I4: f.template run<qg_int4_step<false, false, XS>, false>(); break;
    case QG_B_NV: f.template run<qg_fp4_step<false, XS>, false>(); break;
    case QG_B_MX: f.template run<qg_fp4_step<true, XS>, false>(); break;
    default: f.template run<qg_bf16_step, false>(); break;
    }
}

/* qg_rowgroup_dot's walk of one row group. */
struct qg_walk_rowgroup {
    const qg_part &p;
    int row0;
    const uint16_t *__restrict__ x;
    float *acc;
    int c0, stride;
    template <class STEP, bool MMA>
    __device__ __forceinline__ void run()
    {
        if constexpr (MMA) qg_walk_mma<STEP>(p, row0, x, acc, c0, stride);
        else qg_walk<STEP>(p, row0, x, acc, c0, stride);
    }
};

/* The plain launch's share of one row group (row0) of part p: S warps (ks
 * = this warp's index among them) walk its chunks. Returns, in lane r <
 * QK_QROWS, row r's sum over this warp's chunks (the S partial sums are
 * added by qg_rowgroup_sum). Shared by k_gemv_q (gemv_multi.cu) and the
 * MoE experts' GEMV (moe.cu). BODY: the body when every part of the launch
 * runs it (a kernel with only that body: fewer registers; the MoE GEMV with
 * all of them spilled), or -1 for any (qg_part_body decides). */
template <int BODY = -1>
__device__ __forceinline__ float qg_rowgroup_dot(const qg_part &p, int row0, const uint16_t *__restrict__ x, int ks,
                                                 int S)
{
    const int lane = (int)threadIdx.x & 31;
    float acc[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    if (row0 < p.n) {
        qg_walk_rowgroup f = {p, row0, x, acc, ks * 32 + lane, 32 * S};
        qg_body_visit(BODY >= 0 ? BODY : qg_part_body(&p), f);
    }
    /* Lane r ends with row r's warp total. */
    float t = 0.0f;
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) {
        const float v = qk_warp_sum(acc[r]);
        if (lane == r) t = v;
    }
    return t;
}

/* G row groups (row0[g]) of a part whose rows are one 16-byte chunk per
 * lane at most (p.kc <= 32), walked together: every group's loads are
 * issued before any group's arithmetic, so a warp has G chunks per lane in
 * flight where qg_rowgroup_dot (one group) has one. Each group's sums are
 * those of qg_rowgroup_dot with S = 1, bit for bit (the same single step per
 * lane into zeroed accumulators, the same warp sum). Returns, in lane r <
 * QK_QROWS, row r of group g in t[g]; groups at or past p.n give 0. */
template <class STEP, bool MMA, int G>
__device__ __forceinline__ void qg_rowgroups_short(const qg_part &pp, const int *row0, const uint16_t *__restrict__ x,
                                                   float *t)
{
    const qg_part p = pp;
    const int lane = (int)threadIdx.x & 31;
    STEP st[G];
    float acc[G][QK_QROWS];
#pragma unroll
    for (int g = 0; g < G; g++) {
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) acc[g][r] = 0.0f;
        /* mma steps: every lane runs (zeros past the row end), as qg_walk_mma */
        if (row0[g] < p.n && (MMA || lane < p.kc)) st[g].load(p, row0[g], x, lane);
    }
#pragma unroll
    for (int g = 0; g < G; g++)
        if (row0[g] < p.n && (MMA || lane < p.kc)) st[g].dot(p, acc[g]);
#pragma unroll
    for (int g = 0; g < G; g++) {
        if (MMA && (lane & 3) != (lane >> 3)) {
#pragma unroll
            for (int r = 0; r < QK_QROWS; r++) acc[g][r] = 0.0f;
        }
        t[g] = 0.0f;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const float v = qk_warp_sum(acc[g][r]);
            if (lane == r) t[g] = v;
        }
    }
}

/* qg_rowgroups_short for the body BODY (or, -1, the part's own). */
template <int G>
struct qg_walk_short {
    const qg_part &p;
    const int *row0;
    const uint16_t *__restrict__ x;
    float *t;
    template <class STEP, bool MMA>
    __device__ __forceinline__ void run()
    {
        qg_rowgroups_short<STEP, MMA, G>(p, row0, x, t);
    }
};
template <int BODY, int G>
__device__ __forceinline__ void qg_rowgroups_short_body(const qg_part &p, const int *row0, const uint16_t *__restrict__ x,
                                                        float *t)
{
    qg_walk_short<G> f = {p, row0, x, t};
    qg_body_visit(BODY >= 0 ? BODY : qg_part_body(&p), f);
}

/* Adds the S warps' partial row sums of a row group (S > 1: through red,
 * QG_WARPS * QK_QROWS floats of shared memory, after a block barrier, so
 * every thread of the block must call it). True for the warp that then
 * holds the row totals in lanes < QK_QROWS (ks == 0). */
__device__ __forceinline__ bool qg_rowgroup_sum(float &t, int S, int ks, float *red)
{
    if (S == 1) return true;
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    if (lane < QK_QROWS) red[warp * QK_QROWS + lane] = t;
    __syncthreads();
    if (ks != 0) return false;
    if (lane < QK_QROWS) {
        t = 0.0f;
        for (int j = 0; j < S; j++) t += red[(warp + j) * QK_QROWS + lane];
    }
    return true;
}

/* Host: one descriptor flattened for the device (gemv_multi.cu); y may be
 * NULL where the kernel computes its output address (moe.cu). 0 or
 * cudaErrorInvalidValue. */
int qg_part_fill(const qk_qweight *w, float *y, qg_part *p);

#endif
