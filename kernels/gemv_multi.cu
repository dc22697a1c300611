/* gemv_multi.cu — the one launcher of the quantized decode GEMVs: a single
 * kernel whose blocks are split among up to QK_GEMV_MAX_PARTS weights (any
 * mix of FP8, INT4, NVFP4, MXFP4 and BF16 layouts) reading the same x. Each
 * block holds row groups (QK_QROWS rows) of one part only and runs that
 * part's body from gemv_q.cuh, so the branch on the format is uniform per
 * block. A lone weight is a launch of one part. When every part runs the
 * same body, a persistent grid (k_gemv_qp, below) replaces it. */
#include "gemv_q.cuh"
#include "probe.cuh"

/* Block of QG_WARPS warps. Each row group (QK_QROWS rows of one part) is
 * owned by S consecutive warps that split its chunks (S = 1: a warp walks
 * whole rows; S > 1 when the launch has too few row groups to fill the
 * GPU, e.g. attention k/v, and the S partial sums meet in shared memory).
 * A block holds QG_WARPS / S row groups of one part. */
__global__ void __launch_bounds__(QG_THREADS, QG_MINB)
    k_gemv_q(const __grid_constant__ qg_parts ps, const uint16_t *__restrict__ x, int accumulate, int S)
{
    qk_pdl_trigger();
    qk_pdl_wait();
    int i = 0;
#pragma unroll
    for (int j = 1; j < QK_GEMV_MAX_PARTS; j++)
        if (j < ps.count && (int)blockIdx.x >= ps.p[j].first_block) i = j;
    const qg_part &p = ps.p[i];
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int ks = warp % S;
    const int row0 = (((int)blockIdx.x - p.first_block) * (QG_WARPS / S) + warp / S) * QK_QROWS;
    float t = qg_rowgroup_dot(p, row0, x, ks, S);
    __shared__ float red[QG_WARPS * QK_QROWS];
    if (!qg_rowgroup_sum(t, S, ks, red)) return;
    t *= p.post;
    const int row = row0 + lane;
    if (lane < QK_QROWS && row < p.n) p.y[row] = accumulate ? p.y[row] + t : t;
}

/* ---- persistent launch (every part with the same body) ----
 *
 * The one-block-per-row-groups launch above leaves a partial last wave:
 * mlp.gate/up at 27B has 544 blocks for 264 resident slots, so its third
 * "wave" is 16 blocks of whole row groups, each walking all of K while the
 * rest of the GPU idles. Here the grid is exactly what the GPU holds at once
 * (SMs x resident blocks) and V = blocks x QG_WARPS / S virtual warps (S
 * warps sharing a row group, as above) loop over the row groups: phase 1 is
 * R = G / V whole rounds; phase 2 spreads the L = G % V leftover groups over
 * all blocks, each over S2 >= S warps (shared-memory sum), so the tail is
 * ~1/S2 of a row walk instead of a whole one. Measured on the H100
 * (BENCHMARKS.md): +2-7 % on the 27B decode totals. A variant that also
 * software-pipelined the walk across groups (next step's loads before this
 * step's math) spilled at 128 registers and was slower (-2 to -17 %), and a
 * cp.async shared-memory pipeline of the same (no spills) was slower still.
 *
 * The kernels are launched with the PDL attribute where the GPU and stream
 * allow (sm_90+, a real stream): they trigger their dependents at entry and
 * wait for their predecessor before touching x or y, so a GEMV's blocks are
 * placed, and its first weights asked of L2 (qg_prime_l2), while the kernel
 * before it drains. That paid in the decode graph only once the small
 * kernels between the GEMVs triggered at entry too (qk_pdl_trigger). */
#define QG_PRMAX 4 /* phase-1 rounds whose partial sums fit in shared memory (S > 1) */
/* K is split (S > 1) while groups x S < QG_SPLIT_WARPS x SMs: 16, the warps
 * of two resident blocks. The 27B decode on the H100 (fifth session, two
 * A/B rounds): 16 against the 32 before gave int4 114.8 -> 117.2, nvfp4
 * 113.9 -> 118.2, fp8 86.3 -> 87.3 tok/s (GDN and attention in-projections
 * now walk whole rows, S 2 -> 1, and mlp.down S 4 -> 2); 24 (down S = 4)
 * and 8 (down and GDN out S = 1) were slower than 16. */
#define QG_SPLIT_WARPS 16

/* The part holding global row group g. */
__device__ __forceinline__ int qg_part_of(const qg_parts &ps, int g)
{
    int i = 0;
#pragma unroll
    for (int j = 1; j < QK_GEMV_MAX_PARTS; j++)
        if (j < ps.count && g >= ps.p[j].first_group) i = j;
    return i;
}

/* Global row group g: its part and first row. */
__device__ __forceinline__ const qg_part &qg_locate(const qg_parts &ps, int g, int &row0)
{
    const qg_part &p = ps.p[qg_part_of(ps, g)];
    row0 = (g - p.first_group) * QK_QROWS;
    return p;
}

/* Stores a finished row (t already scaled by post) and runs the part's conv
 * epilogue on it: the same products in the same order as gdn.cu's
 * k_conv_silu_step, so out and state are those bits. */
__device__ __forceinline__ void qg_store_row(const qg_part &p, int row, float t, int accumulate)
{
    const float v = accumulate ? p.y[row] + t : t;
    p.y[row] = v;
    if (row < p.cC) {
        float *s = p.cst + row * 3;
        const float s0 = s[0], s1 = s[1], s2 = s[2];
        const float *wc = p.cw + row * 4;
        p.cout[row] = qk_silu(fmaf(wc[3], v, fmaf(wc[2], s2, fmaf(wc[1], s1, fmaf(wc[0], s0, 0.0f)))));
        s[0] = s1;
        s[1] = s2;
        s[2] = v;
    }
}

/* The warp's row totals: lane r gets row r's; acc is zeroed for the next group. */
__device__ __forceinline__ float qg_rows_total(float *acc)
{
    const int lane = (int)threadIdx.x & 31;
    float t = 0.0f;
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) {
        const float v = qk_warp_sum(acc[r]);
        if (lane == r) t = v;
        acc[r] = 0.0f;
    }
    return t;
}

/* Row sums of one group: to y when S = 1, else to red[slot][warp][row]. */
__device__ __forceinline__ void qg_pfinish(const qg_part &p, int row0, float *acc, int S, int accumulate,
                                           float *red, int slot)
{
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    float t = qg_rows_total(acc);
    if (S == 1) {
        const int row = row0 + lane;
        t *= p.post;
        if (lane < QK_QROWS && row < p.n) qg_store_row(p, row, t, accumulate);
    } else if (lane < QK_QROWS) {
        red[(slot * QG_WARPS + warp) * QK_QROWS + lane] = t;
    }
}

/* Groups g0, g0 + gstep, ... (count of them) of one virtual warp, split
 * over S warps (this one is ks). */
template <class STEP, bool MMA>
__device__ __forceinline__ void qg_pwalk(const qg_parts &ps, const uint16_t *__restrict__ x, int g0, int gstep,
                                         int count, int ks, int S, int accumulate, float *red)
{
    const int lane = (int)threadIdx.x & 31;
    float acc[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    for (int i = 0; i < count; i++) {
        int row0;
        const qg_part &p = qg_locate(ps, g0 + i * gstep, row0);
        if (p.kind == QK_QW_BF16) qg_walk<qg_bf16_step>(p, row0, x, acc, ks * 32 + lane, 32 * S); /* e.g. GDN a|b */
        else if (MMA) qg_walk_mma<STEP>(p, row0, x, acc, ks * 32 + lane, 32 * S);
        else qg_walk<STEP>(p, row0, x, acc, ks * 32 + lane, 32 * S);
        qg_pfinish(p, row0, acc, S, accumulate, red, i);
    }
}

/* S > 1: the first warp of each virtual warp adds the S partial sums of
 * each of its count groups. Every thread of the block calls this. */
__device__ __forceinline__ void qg_pmeet(const qg_parts &ps, const float *red, int g0, int gstep, int count, int S,
                                         int accumulate)
{
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    __syncthreads();
    if (warp % S == 0 && lane < QK_QROWS) {
        for (int i = 0; i < count; i++) {
            int row0;
            const qg_part &p = qg_locate(ps, g0 + i * gstep, row0);
            float t = 0.0f;
            for (int j = 0; j < S; j++) t += red[(i * QG_WARPS + warp + j) * QK_QROWS + lane];
            const int row = row0 + lane;
            t *= p.post;
            if (row < p.n) qg_store_row(p, row, t, accumulate);
        }
    }
    __syncthreads(); /* red is reused by phase 2 */
}

/* Phase 2 of qg_persist: the L leftover groups over all B blocks, gpb2
 * per block (the fewest that cover L), each split over S2 warps; this warp
 * takes leftover slot (s, b) = (warp / S2, block), numbered slot-major.
 * The blocks that walked a BF16 group in phase 0 (the last nbf, qg_persist)
 * sit out their first k slots, k up to bfw, the quantized groups a BF16
 * group's bytes would fill, as far as the other blocks' spare slots allow,
 * so that their phase 0 does not make the launch's tail (27B GDN in
 * in_proj_a|b: 24 BF16 groups of 40 KB). S2 and so every group's sum order
 * are those of the plain numbering. Returns the leftover index (>= L:
 * none). */
__device__ __forceinline__ int qg_phase2_slot(int B, int L, int nbf, int bfw, int &S2)
{
    int gpb2 = 1;
    while (B * gpb2 < L) gpb2 *= 2;
    S2 = QG_WARPS / gpb2;
    const int s = ((int)threadIdx.x >> 5) / S2, b = (int)blockIdx.x;
    const int nb = nbf <= B ? nbf : 0; /* more BF16 groups than blocks: every block has some */
    int k = bfw < gpb2 ? bfw : gpb2;
    if (nb > 0 && k * nb > B * gpb2 - L) k = (B * gpb2 - L) / nb;
    if (nb == 0 || k <= 0) return s * B + b; /* (bfw < 0: the plain numbering) */
    const int B0 = B - nb; /* blocks without a BF16 group: 0 .. B0 - 1 */
    if (s < k) return b < B0 ? s * B0 + b : L;
    return k * B0 + (s - k) * B + b;
}

/* Global row group g of a BF16 part, walked by all the block's warps
 * (each a share of K, summed in warp order in red). Every thread of the
 * block calls this. */
__device__ __forceinline__ void qg_bf16_group(const qg_parts &ps, const uint16_t *__restrict__ x, int g, int accumulate,
                                              float *red)
{
    qg_pwalk<qg_bf16_step, false>(ps, x, g, 0, 1, (int)threadIdx.x >> 5, QG_WARPS, accumulate, red);
    qg_pmeet(ps, red, g, 0, 1, QG_WARPS, accumulate);
}

template <class STEP, bool MMA>
__device__ __forceinline__ void qg_persist(const qg_parts &ps, const uint16_t *__restrict__ x, int accumulate, int S,
                                           int G, float *red)
{
    const int warp = (int)threadIdx.x >> 5;
    /* phase 0: the BF16 parts' groups, placed last (gemv_launch), one per
     * block with all its warps: their rows are 2-4x longer than the
     * quantized ones', so walked by one warp (or S) each they made the
     * launch's tail (GDN in_proj_a|b next to the quantized qkv|z). They go
     * to the last blocks, which phase 2 then spares (qg_phase2_slot; bfw < 0,
     * mode 11: the first blocks, unspared, as before the tenth session). */
    const int b0 = ps.bfw >= 0 ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    for (int j = b0; j < ps.nbf; j += (int)gridDim.x) qg_bf16_group(ps, x, G - ps.nbf + j, accumulate, red);
    G -= ps.nbf;
    const int B = (int)gridDim.x, gpb = QG_WARPS / S, V = B * gpb, R = G / V, L = G - R * V;
    /* phase 1: virtual warp v takes groups v, v + V, ... (R of them) */
    const int v = (int)blockIdx.x * gpb + warp / S;
    qg_pwalk<STEP, MMA>(ps, x, v, V, R, warp % S, S, accumulate, red);
    if (S > 1) qg_pmeet(ps, red, v, V, R, S, accumulate);
    if (L == 0) return;
    /* phase 2: every block gets some of the leftovers */
    int S2;
    const int j = qg_phase2_slot(B, L, ps.nbf, ps.bfw, S2), n2 = j < L ? 1 : 0;
    qg_pwalk<STEP, MMA>(ps, x, R * V + j, 0, n2, warp % S2, S2, accumulate, red);
    if (S2 > 1) qg_pmeet(ps, red, R * V + j, 0, n2, S2, accumulate);
}

/* qg_persist for the step type qg_body_visit picks. */
struct qg_persist_f {
    const qg_parts &ps;
    const uint16_t *__restrict__ x;
    int accumulate, S, G;
    float *red;
    template <class STEP, bool MMA>
    __device__ __forceinline__ void run()
    {
        qg_persist<STEP, MMA>(ps, x, accumulate, S, G, red);
    }
};

/* Diagnostic body (qk_gemv_q_mode 9, benchmarks only; y is garbage):
 * the loads of STEP and a 3-input XOR per loaded word instead of its
 * arithmetic, to time the memory side of a body on its own. */
__device__ __forceinline__ uint32_t qg_x3(uint32_t a, uint32_t b, uint32_t c)
{
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0x96;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
template <class STEP>
struct qg_loads_only : STEP {
    __device__ __forceinline__ void dot(const qg_part &, float *acc) const
    {
        uint32_t h = 0;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) h = qg_x3(qg_x3(h, this->w[r].x, this->w[r].y), this->w[r].z, this->w[r].w);
#pragma unroll
        for (int i = 0; i + 1 < (int)(sizeof this->xr / 4); i += 2) h = qg_x3(h, this->xr[i], this->xr[i + 1]);
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) h ^= this->scale_word(r);
        acc[0] += __uint_as_float(h & 0x3f7fffffu);
    }
};
struct qg_int4_mma_lo : qg_int4_mma_step<true> {
    __device__ __forceinline__ uint32_t scale_word(int r) const { return m[r]; }
};
struct qg_fp4_lo : qg_fp4_step<false> {
    __device__ __forceinline__ uint32_t scale_word(int r) const { return sb[r]; }
};

/* The input RMSNorm folded into the x staging (qk_gemv_multi_norm): every
 * block computes x = bf16(h * rsqrt(mean(h^2) + eps) * (1 + w)) from the
 * fp32 residual h, with the same partition, order and operations as
 * norm.cu's vector kernel (256 threads, qk_sumsq4, qk_block_sum,
 * qk_rms1p_bf4), so the staged x is bit-identical to what that kernel
 * writes; zeros past K. K % 4 == 0, K <= 8192 (the launcher checks). */
struct qg_norm {
    const float *h, *w;
    float eps;
};

/* WE: the norm weights are loaded with h, before the block sum, so their
 * round trip (from DRAM: a 27B step streams ~15 GB through L2, so they are
 * never still there from the step before) overlaps h's instead of following
 * the sum (27B decode int4 133.4 -> 137.0 tok/s, fp8 89.5 -> 90.5, H100,
 * BENCHMARKS.md twenty-third session). It holds 32 more registers through
 * the sum: the kernels where that spills (3 blocks per SM, the act-order
 * and INT4 g128 mma walks) load them after it, as before. */
template <bool WE>
__device__ __forceinline__ void qg_stage_norm(const qg_norm &nm, int K, int P, int kc, float *red33, uint4 *dst)
{
    const int D4 = K / 4;
    const float4 *h4 = (const float4 *)nm.h, *w4 = (const float4 *)nm.w;
    float4 v[8], wv[8];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int i = (int)threadIdx.x + QG_THREADS * j;
        v[j] = i < D4 ? h4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (WE) wv[j] = i < D4 ? __ldg(w4 + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (QG_THREADS * j < D4) ss = qk_sumsq4(ss, v[j]);
    }
    ss = qk_block_sum(ss, red33);
    const float r = rsqrtf(ss / (float)(4 * D4) + nm.eps);
    uint2 *xs2 = (uint2 *)dst; /* element e: chunk e / 8P, piece (e / 8) % P, half (e / 4) % 2 */
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int i = (int)threadIdx.x + QG_THREADS * j, e = 4 * i;
        if (i < D4)
            xs2[2 * (((e >> 3) % P) * kc + e / (8 * P)) + ((e >> 2) & 1)] = qk_rms1p_bf4(v[j], r, WE ? wv[j] : w4[i]);
    }
    for (int i = D4 + (int)threadIdx.x; i < 2 * P * kc; i += QG_THREADS) {
        const int e = 4 * i;
        xs2[2 * (((e >> 3) % P) * kc + e / (8 * P)) + ((e >> 2) & 1)] = make_uint2(0u, 0u);
    }
}

/* Before the PDL wait of a launch with the norm fold whose staging loads
 * the norm weights after the block sum (qg_stage_norm without WE): the
 * weights (no kernel writes them) asked of L2, one 128-byte line per
 * thread, so that those loads find them there rather than in DRAM. */
__device__ __forceinline__ void qg_norm_prefetch(const qg_norm &nm, int K)
{
    if (!nm.h) return;
    for (int l = (int)threadIdx.x; l < (K * 4 + 127) / 128; l += QG_THREADS)
        qk_prefetch_l2((const char *)nm.w + 128 * l);
}

/* x staged in qg_load_xsm's layout at dst: x itself, zeros past K. */
__device__ __forceinline__ void qg_stage_plain(const uint16_t *__restrict__ x, int K, int P, int kc, uint4 *dst)
{
    for (int i = (int)threadIdx.x; i < P * kc; i += QG_THREADS) {
        const int c = i / P, v = i % P, e0 = c * 8 * P + 8 * v;
        uint4 u;
        if (e0 + 8 <= K) {
            u = __ldg((const uint4 *)(x + e0));
        } else {
            uint32_t h[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const uint32_t lo = e0 + 2 * e < K ? __ldg(x + e0 + 2 * e) : 0u;
                const uint32_t hi = e0 + 2 * e + 1 < K ? __ldg(x + e0 + 2 * e + 1) : 0u;
                h[e] = lo | (hi << 16);
            }
            u = make_uint4(h[0], h[1], h[2], h[3]);
        }
        dst[v * kc + c] = u;
    }
}

/* Act-order launches (ps.xperm): packed position e of the staged x holds
 * element perm[e] of the natural-order copy (0 for padding), the same bits
 * in another order. Piece i (positions 8i .. 8i + 7) is thread i % 256's
 * m-th, m = i / 256, so a thread's pieces fit QG_XP_PT registers: their
 * 16-bit indices (the slots of their inputs in the natural copy,
 * qk_perm16_slot) are loaded first (qg_xperm_load, before the PDL wait: like
 * the weights they never change, and in the staging's L2 traffic they would
 * double x's), then each thread gathers its pieces' values from the natural
 * copy in shared memory, one load each, and after a barrier writes them to
 * their own slots — in place when nat is the staged region itself.
 * Gathering from global memory instead (each block reading x element by
 * element through L1) left a 27B act-order decode at 98 tok/s against 132
 * without g_idx (H100). */
#define QG_XP_PT 9 /* pieces per thread: k_pad <= 9 * 256 * 8 = 18432 (the launcher checks) */
__device__ __forceinline__ void qg_xperm_load(const uint16_t *__restrict__ xp, int n, uint4 *r)
{
#pragma unroll
    for (int m = 0; m < QG_XP_PT; m++) {
        const int i = (int)threadIdx.x + m * QG_THREADS;
        r[m] = i < n ? __ldg((const uint4 *)xp + i) : make_uint4(0u, 0u, 0u, 0u);
    }
}

__device__ __forceinline__ void qg_xperm_apply(const uint4 *nat, int P, int kc, uint4 *r)
{
    const int n = P * kc;
    const uint16_t *e = (const uint16_t *)nat; /* indexed by slot (qk_perm16_slot) */
#pragma unroll
    for (int m = 0; m < QG_XP_PT; m++) {
        if ((int)threadIdx.x + m * QG_THREADS >= n) continue; /* warp-uniform but for one warp */
        const uint32_t id[4] = {r[m].x, r[m].y, r[m].z, r[m].w};
        uint32_t h[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t lo = id[j] & 0xffffu, hi = id[j] >> 16;
            h[j] = (lo == 0xffffu ? 0u : (uint32_t)e[lo]) | ((hi == 0xffffu ? 0u : (uint32_t)e[hi]) << 16);
        }
        r[m] = make_uint4(h[0], h[1], h[2], h[3]);
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < QG_XP_PT; m++) {
        const int i = (int)threadIdx.x + m * QG_THREADS;
        if (i < n) qg_xsm[(i % P) * kc + i / P] = r[m];
    }
}

/* The block's copy of x in shared memory (qg_load_xsm's layout, P 16-byte
 * pieces per chunk of part 0's layout; the launcher checks that every
 * quantized part has its kc): x itself, or with nrm.h the RMSNorm of nrm.h
 * (qg_stage_norm). With ps.xperm it is in that permutation's order, and
 * with ps.xs_nat the natural-order copy stays after it (at P * kc) for the
 * BF16 parts (XP: compiled only into the INT4 kernels, the one layout with
 * g_idx; its registers made the FP4 kernels on 3 blocks per SM spill; r:
 * the indices from qg_xperm_load; WE: qg_stage_norm's). Ends with a block
 * barrier. */
template <bool XP, bool WE>
__device__ __forceinline__ void qg_stage_x(const qg_parts &ps, const uint16_t *__restrict__ x, const qg_norm &nrm,
                                           int P, float *red33, uint4 *r)
{
    const int kc = ps.p[0].kc, K = ps.p[0].k;
    if (XP && ps.xperm) {
        uint4 *nat = ps.xs_nat ? qg_xsm + P * kc : qg_xsm;
        if (nrm.h) qg_stage_norm<WE>(nrm, K, P, kc, red33, nat);
        else qg_stage_plain(x, K, P, kc, nat);
        __syncthreads();
        qg_xperm_apply(nat, P, kc, r);
    } else if (nrm.h) {
        qg_stage_norm<WE>(nrm, K, P, kc, red33, qg_xsm);
    } else {
        qg_stage_plain(x, K, P, kc, qg_xsm);
    }
    __syncthreads();
}

/* With PDL (the default launch), each warp asks L2 for the first walk step
 * of its first row group (4 KB: lane (r, h, l) the 128-byte line l of step
 * h of row r) before the PDL wait, so the weights start to come while the
 * kernel before still runs: a small decode kernel (GDN step, SwiGLU,
 * attention combine) that triggers at entry and leaves most SMs idle, or
 * the tail of the previous GEMV. 27B decode on the H100 (fifth session,
 * BENCHMARKS.md): PDL with the small kernels triggering +1.2-1.5 %, the
 * prime on top +0.5-1 % more; asking for 2, 4 or 8 steps instead of 1 did
 * not gain. Without PDL the same prefetch before the x staging measured
 * -0.2 to -1.7 % (fourth session). */
__device__ __forceinline__ void qg_prime_l2(const qg_parts &ps, int S, int G)
{
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int B = (int)gridDim.x, gpb = QG_WARPS / S, V = B * gpb;
    G -= ps.nbf; /* qg_persist's phases 1 and 2 walk the quantized groups */
    int g, ks, st;
    if (G >= V) { /* phase 1 */
        g = (int)blockIdx.x * gpb + warp / S;
        ks = warp % S;
        st = 32 * S;
    } else { /* phase 2 only */
        int S2;
        g = qg_phase2_slot(B, G, ps.nbf, ps.bfw, S2);
        ks = warp % S2;
        st = 32 * S2;
        if (g >= G) return;
    }
    int row0;
    const qg_part &p = qg_locate(ps, g, row0);
    const int c = ks * 32 + ((lane >> 2) & 1) * st + 8 * (lane & 3);
    if (c < p.kc && row0 + (lane >> 3) < p.n) {
        qk_prefetch_l2((const uint4 *)p.w + (size_t)(row0 + (lane >> 3)) * p.kc + c);
    }
}

/* One kernel per body, so each gets its own register allocation. VAR 0:
 * x through L1 as loaded by the walk; VAR 2 (XS), and VAR 4 for act-order
 * INT4 launches (x staged in the permutation's order, qg_stage_x; a kernel
 * of its own so that VAR 2 keeps its registers): the block first copies x
 * to shared memory (qg_load_xsm's layout, dynamic shared memory of
 * 16 * P * kc bytes, P = x vectors per chunk); VAR 1: the loads-only
 * diagnostic of the INT4 g128 f16 and NVFP4 bodies. */
template <int BODY, int VAR>
__global__ void __launch_bounds__(QG_THREADS, VAR == 3 ? 3 : QG_MINB)
    k_gemv_qp(const __grid_constant__ qg_parts ps, const uint16_t *__restrict__ x, int accumulate, int S, int G,
              const qg_norm nrm)
{
    __shared__ float red[QG_PRMAX * QG_WARPS * QK_QROWS];
    QG_PROBE_ENTRY
    qk_pdl_trigger();
    if (VAR != 1 && ps.prime) qg_prime_l2(ps, S, G); /* before the wait: see qg_prime_l2 */
    uint4 xr[QG_XP_PT];
    if (VAR == 4) qg_xperm_load(ps.xperm, 4 * ps.p[0].kc, xr);
    /* (the norm weights with h where that does not spill: qg_stage_norm;
     * elsewhere asked of L2 now) */
    constexpr bool WE = VAR == 2 && BODY != QG_B_I4MH && BODY != QG_B_I4M;
    if (VAR >= 2 && !WE) qg_norm_prefetch(nrm, ps.p[0].k);
    qk_pdl_wait();
    QG_PROBE_WAITED
    if (VAR == 1) {
        if (BODY == QG_B_I4MH) qg_persist<qg_loads_only<qg_int4_mma_lo>, false>(ps, x, accumulate, S, G, red);
        else qg_persist<qg_loads_only<qg_fp4_lo>, false>(ps, x, accumulate, S, G, red);
        return;
    }
    const bool XS = VAR >= 2;
    if (XS) qg_stage_x<VAR == 4, WE>(ps, x, nrm, BODY == QG_B_FP8 ? 2 : 4, red, xr);
    qg_persist_f f = {ps, x, accumulate, S, G, red};
    qg_body_visit<XS>(BODY, f);
    QG_PROBE_END(BODY, G);
}

/* ---- streamed launch (the default for INT4 groups of 32-128 on sm_90+) ----
 *
 * The walks above hold a step's weights in registers, two steps deep, so a
 * warp has nothing in flight while it finishes a row group (warp sums,
 * stores), and a launch has nothing in flight until its x is staged. Here
 * each warp streams its weights and scales into its own ring of QT_D
 * shared-memory stages with bulk asynchronous copies (cp.async.bulk,
 * completion counted by an mbarrier per stage), one stage being one walk
 * step (32 chunks of QK_QROWS rows, 2 KB, and their 32 / cpg scale words
 * per row);
 * lane 0 refills a stage for the step QT_D ahead as soon as the warp has
 * read it, across row-group boundaries. The first QT_D steps are asked for
 * before the PDL wait: the weights do not depend on the kernel before.
 *
 * Work: block b owns global row groups [b G / B, (b + 1) G / B) (all parts
 * share kc, so a group is nu = kc / 32 steps); its warps split the block's
 * steps evenly, and a group cut between warps is summed in shared memory
 * at the end, in warp order. The step body is gemv_q.cuh's
 * qg_int4_mma_step, fed from the ring (x is the block's staged copy).
 * BF16 parts (GDN in_proj_a|b next to the INT4 qkv|z; the launcher puts
 * their nbf groups last) are walked first from global memory, one group per
 * block with all its warps as in qg_persist's phase 0, and count in the
 * split between blocks as the steps their bytes would fill (qt_block_work),
 * so the blocks that walk them stream fewer INT4 groups (27B INT4 decode
 * +2.0 %, GDN in 25 -> 21 us, H100, eighth session). The split is static:
 * handing the last groups out at run time from a counter, so that faster
 * SMs take more, lost 4.6 % for the per-step bookkeeping alone and 15-18 %
 * with a pool (one warp alone streams a whole group far slower than its
 * share of the SM, so the tail grew; BENCHMARKS.md).
 *
 * Measured on the H100 (sixth session, BENCHMARKS.md): the 27B INT4 decode
 * +1.2 to +1.5 % (three A/B rounds, 116.2 -> 117.8 tok/s in the last), with
 * every INT4 launch streamed. Alone the kernel gains on long launches (the
 * fused gate|up, 10 steps per warp: 81 -> 84 % of copy bandwidth) and
 * loses on short ones (mlp.down, 5 steps per warp: 73 -> 68 %; attn.o 55
 * -> 53 %: lane 0's 8 copies and the barrier wait are ~25 % more
 * instructions than the walk, ncu), yet in the decode streaming only the
 * long launches measured -3 % and only the short ones -1 % against the
 * walks: what the engine gains is the prefetch before the PDL wait, on
 * every launch. With one block per SM (8 warps, to leave room for the next
 * kernel's blocks) the decode lost 30 %: the decoding cannot keep up. For
 * NVFP4/MXFP4 (the same kernel with their bodies) -6 % against their
 * 3-blocks-per-SM walk, so they keep the walk. The ring's depth, 27B INT4
 * g128 decode (twenty-first session, two or three A/B rounds each): 5
 * stages 121 tok/s, 4 131, 3 126.5, 2 133 (g64: 114 / 125 / 121 / 126;
 * with 4 stages a launch asks for twice the weights before its wait, yet
 * 2 is the fastest; why 3 loses was not established). With 2, two blocks
 * fit an SM at every 27B shape and group size. */
#define QT_D 2 /* stages per warp */

/* Bytes per stage for groups of 32 * cpg codes: the QK_QROWS rows' 512
 * bytes of codes, then their 32 / cpg scale words each (16-bit scales
 * with s16, quant.h). */
__host__ __device__ constexpr int qt_stage_bytes(int cpg, bool s16)
{
    return QK_QROWS * (512 + (s16 ? 64 : 128) / cpg);
}

/* Lane 0's issue cursor: the next step to ask for and its first row's
 * weight and scale addresses, advanced by pointer steps within a row group
 * and looked up again (qt_seek) only at the next group. */
struct qt_cursor {
    int u, ge, tiled;
    const uint8_t *w, *s;
};

template <int CPG, bool S16>
__device__ __forceinline__ void qt_seek(const qg_parts &ps, int nu, int u, qt_cursor &q)
{
    const int g = u / nu, c0 = (u - g * nu) * 32;
    const qg_part &p = ps.p[qg_part_of(ps, g)];
    const size_t row0 = (size_t)(g - p.first_group) * QK_QROWS;
    q.u = u;
    q.ge = (g + 1) * nu;
    q.tiled = p.tiled;
    /* row-major or tiled (quant.h), the step's first byte is the same:
     * (row0 * kc + c0) chunks of codes, and ng = kc / CPG scale words per
     * row, c0 / CPG of them before chunk c0 */
    q.w = (const uint8_t *)p.w + (row0 * p.kc + (p.tiled ? QK_QROWS : 1) * c0) * 16;
    q.s = (const uint8_t *)p.s + (row0 * p.kc + (p.tiled ? QK_QROWS : 1) * c0) * (S16 ? 2 : 4) / CPG;
}

/* Lane 0: the cursor's step into stage buffer st, then the cursor on. */
template <int CPG, bool S16>
__device__ __forceinline__ void qt_issue(const qg_parts &ps, int nu, qt_cursor &q, uint8_t *st, uint64_t *bar)
{
    constexpr int SB = (S16 ? 64 : 128) / CPG; /* scale bytes per row and step */
    const size_t wrow = (size_t)ps.p[0].kc * 16, srow = (size_t)ps.p[0].kc * 4 / CPG; /* (row-major: never S16) */
    qk_mbar_expect(bar, qt_stage_bytes(CPG, S16));
    if (q.tiled) { /* the stage's codes and scales, each one contiguous piece */
        qk_bulk_copy(st, q.w, QK_QROWS * 512, bar);
        qk_bulk_copy(st + QK_QROWS * 512, q.s, QK_QROWS * SB, bar);
    } else {
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            qk_bulk_copy(st + r * 512, q.w + r * wrow, 512, bar);
            qk_bulk_copy(st + QK_QROWS * 512 + r * SB, q.s + r * srow, SB, bar);
        }
    }
    if (++q.u < q.ge) {
        q.w += q.tiled ? QK_QROWS * 512 : 512;
        q.s += q.tiled ? QK_QROWS * SB : SB;
    } else {
        qt_seek<CPG, S16>(ps, nu, q.u, q);
    }
}

/* Block b's share of a launch of G groups, nbf of them BF16 (the last):
 * its INT4 steps [*A, *A + *n) and its BF16 groups [*j0, *j1) (0-based
 * among the BF16 ones). Without BF16 parts, the groups [b G / B, (b + 1) G
 * / B). With them the blocks split W = nbf * wb + (G - nbf) * nu units
 * evenly, a BF16 group weighing wb units (its bytes in INT4 steps), the
 * BF16 units first; a block's INT4 share is rounded to whole groups. */
__device__ __forceinline__ int qt_block_cut(int b, int B, long long W, int nbf, int wb, int Gq, int nu, int *j)
{
    const long long u = (long long)b * W / B, bw = (long long)nbf * wb;
    *j = u >= bw ? nbf : (int)((u + wb - 1) / wb);
    const long long q = u <= bw ? 0 : (u - bw + nu / 2) / nu;
    return q < Gq ? (int)q : Gq;
}

__device__ __forceinline__ void qt_block_work(const qg_parts &ps, int G, int nu, int *A, int *n, int *j0, int *j1)
{
    const int b = (int)blockIdx.x, B = (int)gridDim.x;
    if (ps.nbf == 0) {
        *A = (int)((long long)b * G / B) * nu;
        *n = (int)((long long)(b + 1) * G / B) * nu - *A;
        *j0 = *j1 = 0;
        return;
    }
    const int Gq = G - ps.nbf, wb = (ps.p[ps.count - 1].kc + 31) / 32;
    const long long W = (long long)ps.nbf * wb + (long long)Gq * nu;
    const int q0 = qt_block_cut(b, B, W, ps.nbf, wb, Gq, nu, j0), q1 = qt_block_cut(b + 1, B, W, ps.nbf, wb, Gq, nu, j1);
    *A = q0 * nu;
    *n = (q1 - q0) * nu;
}

/* The first step of warp v of a block whose steps are [A, A + n). */
__device__ __forceinline__ int qt_warp_start(int A, int n, int v)
{
    return A + (int)((long long)v * n / QG_WARPS);
}

/* This lane's share of a stage whose first chunk is c0 of the row (groups
 * of 32 * CPG codes), dotted. The mma sums the lanes of a quad, so for each
 * of its four steps s the quad's lanes must hold four words of one group
 * (gemv_q.cuh qg_int4_mma_dot): with groups of 128 lane (g, t) takes its
 * own chunk 4g + t, word s, as the walks do; with groups of 64 chunk 4g +
 * 2a + t/2, word 2b + t%2; with groups of 32 chunk 4g + a', word t. Only
 * the order of the stage's reads changes, not the layout. Which (a, b) or a'
 * comes at step s rotates with g / 2, so that the four quads reading at
 * once (g and g + 2 are 16 words apart, one bank) hit four different banks:
 * the 32-bit reads are free of conflicts. */
template <bool F16, int CPG, bool S16>
__device__ __forceinline__ void qt_dot(int kc, const uint8_t *st, int c0, float *acc)
{
    constexpr int NG = 4 / CPG, SW = 32 / CPG; /* groups per quad and step, scale words per row */
    const int lane = (int)threadIdx.x & 31, g = lane >> 2, t = lane & 3, rot = g >> 1;
    const void *sw = st + QK_QROWS * 512;
    uint32_t wd[QK_QROWS][4], m[QK_QROWS][NG], xv[16];
    if constexpr (CPG == 4) {
        const uint4 *w = (const uint4 *)st;
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) {
            const uint4 u = w[r * 32 + lane];
            wd[r][0] = u.x;
            wd[r][1] = u.y;
            wd[r][2] = u.z;
            wd[r][3] = u.w;
            m[r][0] = qk_int4_sword_at(sw, r * SW + g, S16);
        }
        qg_load_xsm<32>(kc, c0 + lane, xv);
    } else {
        const uint32_t *w = (const uint32_t *)st;
#pragma unroll
        for (int s = 0; s < 4; s++) {
            const int i = s / CPG, e = s % CPG;
            const int a = CPG == 1 ? (s + rot) & 3 : (i + (rot >> 1)) & 1, b = (e + rot) & 1;
            const int ch = CPG == 1 ? 4 * g + a : 4 * g + 2 * a + (t >> 1); /* chunk in the stage */
            const int wo = CPG == 1 ? t : 2 * b + (t & 1);                  /* word in the chunk */
#pragma unroll
            for (int r = 0; r < QK_QROWS; r++) wd[r][s] = w[r * 128 + ch * 4 + wo];
            const uint4 u = qg_xsm[wo * kc + c0 + ch]; /* x piece wo of the chunk (qg_load_xsm) */
            xv[4 * s + 0] = u.x;
            xv[4 * s + 1] = u.y;
            xv[4 * s + 2] = u.z;
            xv[4 * s + 3] = u.w;
            if (e == 0) {
#pragma unroll
                for (int r = 0; r < QK_QROWS; r++) m[r][i] = qk_int4_sword_at(sw, r * SW + NG * g + a, S16);
            }
        }
    }
    qg_int4_mma_dot<F16, CPG>(wd, m, xv, acc);
}

template <bool F16, int CPG, bool S16>
__global__ void __launch_bounds__(QG_THREADS, 2)
    k_gemv_qt(const __grid_constant__ qg_parts ps, const uint16_t *__restrict__ x, int accumulate, int G,
              const qg_norm nrm)
{
    __shared__ float red[33];
    __shared__ float cut[QG_WARPS * 2 * QK_QROWS]; /* partial sums of the groups cut between warps */
    __shared__ __align__(8) uint64_t bars[QG_WARPS * QT_D];
    QG_PROBE_ENTRY
    qk_pdl_trigger();
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int nu = ps.p[0].kc / 32;
    int A, n, j0, j1;
    qt_block_work(ps, G, nu, &A, &n, &j0, &j1);
    const int a = qt_warp_start(A, n, warp), b = qt_warp_start(A, n, warp + 1);
    constexpr int STB = qt_stage_bytes(CPG, S16);
    uint8_t *ring = (uint8_t *)(qg_xsm + ps.xs_u4) + warp * QT_D * STB; /* after x */
    uint64_t *bar = bars + warp * QT_D;
    qt_cursor q;
    if (lane == 0) {
        for (int s = 0; s < QT_D; s++) qk_mbar_init(bar + s);
        qk_mbar_init_fence();
        /* Before the PDL wait: the kernel before may still run, but no
         * kernel writes weights or scales (they change only at load), so
         * they may be read now. */
        if (a < b) qt_seek<CPG, S16>(ps, nu, a, q);
        for (int k = 0; k < QT_D && a + k < b; k++) qt_issue<CPG, S16>(ps, nu, q, ring + k * STB, bar + k);
    }
    __syncwarp();
    uint4 xr[QG_XP_PT];
    if (ps.xperm) qg_xperm_load(ps.xperm, 4 * ps.p[0].kc, xr);
    qk_pdl_wait();
    QG_PROBE_WAITED
    qg_stage_x<true, true>(ps, x, nrm, 4, red, xr);
    for (int j = j0; j < j1; j++) /* this block's BF16 groups, while its ring fills */
        qg_bf16_group(ps, x, G - ps.nbf + j, accumulate, cut);
    float acc[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    int cg0 = -1, cg1 = -1; /* the groups of this warp's cut pieces (slot 0: its first piece, 1: its last) */
    int g = a / nu, gs = g * nu, pi = qg_part_of(ps, g);
    for (int u = a, k = 0; u < b; u++, k++) {
        if (u == gs + nu) {
            g++;
            gs += nu;
            pi = qg_part_of(ps, g);
        }
        const qg_part &p = ps.p[pi];
        const int s = k % QT_D; /* the stage's use count k / QT_D gives the phase */
        qk_mbar_wait(bar + s, (uint32_t)(k / QT_D) & 1u);
        qt_dot<F16, CPG, S16>(p.kc, ring + s * STB, (u - gs) * 32, acc);
        /* Every lane has used its values from stage s (the mma took them
         * as operands), so lane 0 may have it overwritten; no proxy fence is
         * needed for this read-before-write (as in CUTLASS's TMA loads). */
        __syncwarp();
        if (lane == 0 && u + QT_D < b) qt_issue<CPG, S16>(ps, nu, q, ring + s * STB, bar + s);
        if (u + 1 < b && u + 1 < gs + nu) continue;
        /* the end of a piece: this warp's units [max(a, gs), u] of group g */
        if ((lane & 3) != (lane >> 3)) { /* only the mma diagonal holds sums (qg_walk_mma) */
#pragma unroll
            for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
        }
        const float t = qg_rows_total(acc);
        const int row = (g - p.first_group) * QK_QROWS + lane;
        if (gs >= a && u + 1 == gs + nu) {
            if (lane < QK_QROWS && row < p.n) qg_store_row(p, row, t * p.post, accumulate);
        } else {
            const int slot = gs < a ? 0 : 1; /* cut at this warp's start: its first piece */
            if (slot) cg1 = g;
            else cg0 = g;
            if (lane < QK_QROWS) cut[(warp * 2 + slot) * QK_QROWS + lane] = t;
        }
    }
    __syncthreads();
    /* Each cut group is summed by the warp whose piece starts it (slot 1:
     * a warp's piece goes to slot 0 only when the warp starts inside the
     * group), then by the warps after it, whose pieces of it are their
     * first (slot 0), in warp order. */
    for (int slot = 0; slot < 2; slot++) {
        const int g = slot ? cg1 : cg0;
        if (g < 0 || g * nu < a) continue;
        const qg_part &p = ps.p[qg_part_of(ps, g)];
        if (lane < QK_QROWS) {
            float t = cut[(warp * 2 + slot) * QK_QROWS + lane];
            for (int v = warp + 1; v < QG_WARPS; v++) {
                const int av = qt_warp_start(A, n, v), bv = qt_warp_start(A, n, v + 1);
                if (av >= (g + 1) * nu) break;
                if (av < bv) t += cut[(v * 2) * QK_QROWS + lane]; /* (a warp may have no steps: n < QG_WARPS) */
            }
            const int row = (g - p.first_group) * QK_QROWS + lane;
            if (row < p.n) qg_store_row(p, row, t * p.post, accumulate);
        }
    }
    QG_PROBE_END(100 + F16, G); /* kinds: the body index (k_gemv_qp), 100 + F16 (streamed) */
}

typedef void (*qg_tkernel)(qg_parts, const uint16_t *, int, int, qg_norm);
/* The streamed kernels: f16 scales for entries 0-2, bf16 for 3-5, each for
 * groups of 32, 64 and 128 codes; then the same six for 16-bit scales
 * alone (s16). */
#define QG_NTK 12
static const qg_tkernel qg_tkernels[QG_NTK] = {
    k_gemv_qt<true, 1, false>, k_gemv_qt<true, 2, false>, k_gemv_qt<true, 4, false>,
    k_gemv_qt<false, 1, false>, k_gemv_qt<false, 2, false>, k_gemv_qt<false, 4, false>,
    k_gemv_qt<true, 1, true>, k_gemv_qt<true, 2, true>, k_gemv_qt<true, 4, true>,
    k_gemv_qt<false, 1, true>, k_gemv_qt<false, 2, true>, k_gemv_qt<false, 4, true>};

/* The index in qg_tkernels for a launch of INT4 body `body` (no g_idx
 * gather) with cpg chunks per group and s16 scales, or -1: no streamed kernel. */
static int qg_tkernel_index(int body, int cpg, int s16)
{
    const bool g128 = body == QG_B_I4MH || body == QG_B_I4M;  /* groups a multiple of 128 */
    const bool below = body == QG_B_I4H || body == QG_B_I4;   /* the other plain INT4 groups */
    const int gi = below && cpg == 1 ? 0 : below && cpg == 2 ? 1 : g128 && cpg == 4 ? 2 : -1;
    return gi < 0 ? -1 : (s16 ? 6 : 0) + (body == QG_B_I4MH || body == QG_B_I4H ? 0 : 3) + gi;
}

typedef void (*qg_pkernel)(qg_parts, const uint16_t *, int, int, int, qg_norm);
static const qg_pkernel qg_pkernels[QG_NBODY] = {k_gemv_qp<0, 0>, k_gemv_qp<1, 0>, k_gemv_qp<2, 0>, k_gemv_qp<3, 0>,
                                                 k_gemv_qp<4, 0>, k_gemv_qp<5, 0>, k_gemv_qp<6, 0>, k_gemv_qp<7, 0>,
                                                 k_gemv_qp<8, 0>, k_gemv_qp<9, 0>};
/* The XS variants (NULL: g_idx bodies gather x, BF16 reads it once per row). */
static const qg_pkernel qg_pkernels_xs[QG_NBODY] = {k_gemv_qp<0, 2>, NULL, NULL, k_gemv_qp<3, 2>, k_gemv_qp<4, 2>,
                                                    k_gemv_qp<5, 2>, k_gemv_qp<6, 2>, k_gemv_qp<7, 2>,
                                                    k_gemv_qp<8, 2>, NULL};
/* The same with 3 blocks per SM (VAR 3: at most 85 registers; the x words
 * are read from the staged copy only when a step is decoded, gemv_q.cuh
 * qg_x_late, so they hold no registers while the weight loads are out). */
static const qg_pkernel qg_pkernels_xs3[QG_NBODY] = {k_gemv_qp<0, 3>, NULL, NULL, k_gemv_qp<3, 3>, k_gemv_qp<4, 3>,
                                                     k_gemv_qp<5, 3>, k_gemv_qp<6, 3>, k_gemv_qp<7, 3>,
                                                     k_gemv_qp<8, 3>, NULL};
/* The act-order variants of the INT4 XS kernels (ps.xperm). */
static const qg_pkernel qg_pkernels_xp[QG_NBODY] = {NULL, NULL, NULL, k_gemv_qp<3, 4>, k_gemv_qp<4, 4>,
                                                    k_gemv_qp<5, 4>, k_gemv_qp<6, 4>, NULL, NULL, NULL};
#define QG_XSMAX (48 << 10) /* staged x per block (K up to 24576), no opt-in needed */

/* Launch variants (quant.h; tests and QCHAT_GEMV_MODE for A/B runs):
 * 0 = default (PDL launches where the GPU and stream allow, with the L2
 * prime of qg_prime_l2; NVFP4/MXFP4 stage x in shared memory and run 3
 * blocks per SM); 7 = the same kernels as plain launches (the default
 * before the fifth session); 8 = PDL without the prime; 1 = plain
 * launches, x through L1 (the code before the staging and 3 blocks); 2 =
 * PDL, x staged for FP4 (2 blocks per SM); 5 = PDL and x staged for every
 * body that has the variant (FP8, INT4 without g_idx, FP4); 6 = x staged
 * and 3 blocks per SM for every such body; 9 = the loads-only diagnostic for INT4 g128 (f16
 * scales) and NVFP4 launches (wrong y: timing only); 10 = the default
 * without the streamed kernel (INT4 g128 walks as before the sixth
 * session); 11 = the default with phase 2's plain numbering (qg_phase2_slot). */
extern "C" {
int qk_gemv_q_mode = 0;
}

/* Which kernel the calling thread's last launch ran (qk_gemv_q_last_streamed). */
static thread_local int qg_last_streamed;
extern "C" int qk_gemv_q_last_streamed(void)
{
    return qg_last_streamed;
}

/* Resident blocks per SM of a kernel with smem (> 0) bytes of dynamic
 * shared memory, cached per kernel for the last QG_OCC_SIZES sizes (a
 * model's launches alternate between a few K: 5120, 6144 and 17408 at 27B). */
#define QG_OCC_SIZES 4
struct qg_occ_cache {
    bool set; /* staged-x kernels: the carveout preference is set */
    struct {
        size_t smem; /* 0: free */
        int occ;
    } e[QG_OCC_SIZES];
};

static int qg_occupancy(qg_occ_cache *c, const void *k, size_t smem)
{
    int i = 0;
    while (i < QG_OCC_SIZES && c->e[i].smem && c->e[i].smem != smem) i++;
    if (i == QG_OCC_SIZES || !c->e[i].smem) { /* not cached: ask, into a free entry or over the last */
        i = i < QG_OCC_SIZES ? i : QG_OCC_SIZES - 1;
        c->e[i].smem = smem;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&c->e[i].occ, k, QG_THREADS, smem) != cudaSuccess) {
            cudaGetLastError();
            c->e[i].occ = 0;
        }
    }
    return c->e[i].occ;
}

/* The same for a staged-x kernel with xs bytes of x, its carveout
 * preference set to the most shared memory on first use. */
static int qg_xs_occupancy(qg_occ_cache *c, qg_pkernel k, size_t xs)
{
    if (!c->set) {
        c->set = true;
        if (cudaFuncSetAttribute((const void *)k, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 (int)cudaSharedmemCarveoutMaxShared) != cudaSuccess)
            cudaGetLastError();
    }
    return qg_occupancy(c, (const void *)k, xs);
}

/* Resident blocks per SM of streamed kernel i with xs bytes of staged x
 * (groups of 32 * cpg codes), its dynamic shared memory (x, then the
 * rings) in *smem and set as the kernel's limit on first need; 0 when it
 * cannot be set. */
static int qg_tkernel_occupancy(int i, size_t xs, int cpg, size_t *smem)
{
    static size_t smem_set[QG_NTK];
    static qg_occ_cache ct[QG_NTK];
    *smem = xs + (size_t)QG_WARPS * QT_D * (size_t)qt_stage_bytes(cpg, i >= 6);
    if (*smem > smem_set[i]) {
        if (cudaFuncSetAttribute((const void *)qg_tkernels[i], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)*smem) != cudaSuccess) {
            cudaGetLastError();
            return 0;
        }
        smem_set[i] = *smem;
    }
    return qg_occupancy(&ct[i], (const void *)qg_tkernels[i], *smem);
}

/* log2 d for a power of two d > 0, else -1 (qg_div). */
static int qg_log2(int d)
{
    if (d <= 0 || (d & (d - 1))) return -1;
    int s = 0;
    while ((1 << s) < d) s++;
    return s;
}

/* (gemv_q.cuh) */
int qg_part_fill(const qk_qweight *w, float *y, qg_part *p)
{
    if (!w || !w->w || w->n <= 0 || w->k <= 0 || w->n_pad % QK_QROWS || w->k_pad % 32 ||
        w->k_pad < w->k || w->n_pad < w->n || ((uintptr_t)w->w & 15) || (w->kind != QK_QW_BF16 && !w->s))
        return (int)cudaErrorInvalidValue;
    *p = qg_part{};
    p->w = w->w;
    p->s = w->s;
    p->y = y;
    p->kind = w->kind;
    p->n = w->n;
    p->k = w->k;
    p->post = 1.0f;
    switch (w->kind) {
    case QK_QW_FP8:
        if (w->blk_n <= 0 || w->blk_k <= 0 || w->blk_k % 16 || w->nkb * w->blk_k < w->k_pad)
            return (int)cudaErrorInvalidValue;
        p->kc = w->k_pad / 16;
        p->blk_n = w->blk_n;
        p->cpb = w->blk_k / 16;
        p->nkb = w->nkb;
        return 0;
    case QK_QW_INT4:
        if (w->group <= 0 || w->group % 32 || (!w->perm && w->ngroups * w->group < w->k_pad) ||
            ((uintptr_t)w->perm & 15))
            return (int)cudaErrorInvalidValue;
        p->kc = w->k_pad / 32;
        p->ng = w->ngroups;
        p->cpg = w->group / 32;
        p->cpg_sh = qg_log2(p->cpg);
        p->f16 = w->scale_f16;
        p->perm = w->perm;
        if (w->tiled && (w->perm || p->cpg_sh < 0 || p->cpg > 4 || p->kc % 32)) return (int)cudaErrorInvalidValue;
        if (w->s16 && !w->tiled) return (int)cudaErrorInvalidValue;
        p->tiled = w->tiled;
        p->s16 = w->s16;
        return 0;
    case QK_QW_NVFP4:
    case QK_QW_MXFP4:
        p->kc = w->k_pad / 32;
        p->post = w->gmul * 16384.0f; /* the f16 decoding yields value * 2^-14 */
        return 0;
    case QK_QW_BF16: p->kc = w->k_pad / 8; return 0;
    default: return (int)cudaErrorInvalidValue;
    }
}

#define QG_NO_XPERM (-2) /* gemv_launch: the staged act-order launch cannot run; again with the gather bodies */

/* qk_gemv_multi, and with nm qk_gemv_multi_norm (x unused: the staged x is
 * the RMSNorm of nm->h). xperm_ok: act-order parts may run on x staged in
 * their order (else they gather x through perm at every chunk). */
static int gemv_launch(const qk_qweight *const *w_in, float *const *y_in, int nparts, const uint16_t *x,
                       const qg_norm *nm, const qk_conv_epi *conv, int accumulate, cudaStream_t st, bool xperm_ok)
{
    qg_last_streamed = 0;
    if (nparts < 1 || nparts > QK_GEMV_MAX_PARTS || (!nm && (!x || ((uintptr_t)x & 15))))
        return (int)cudaErrorInvalidValue;
    qg_probe_arm();
    /* BF16 parts after the quantized ones when part 0 is quantized (its
     * conv epilogue stays on part 0): the persistent kernel walks their
     * groups first, each with a whole block (qg_persist's phase 0). The
     * 27B GDN in-projection launch (int4 qkv|z, bf16 a|b) went from 67 to
     * 78 % of copy bandwidth (fp8 92 -> 96, nvfp4 72 -> 71), the INT4
     * decode +1.0 % (H100, fifth session, two A/B rounds). */
    qg_parts ps;
    ps = qg_parts{};
    ps.count = nparts;
    const qk_qweight *w[QK_GEMV_MAX_PARTS];
    float *y[QK_GEMV_MAX_PARTS];
    const bool lift = w_in[0] && w_in[0]->kind != QK_QW_BF16;
    for (int pass = 0, j = 0; pass < 2; pass++)
        for (int i = 0; i < nparts; i++) {
            const bool bf = lift && w_in[i] && w_in[i]->kind == QK_QW_BF16;
            if (bf != (pass == 1)) continue;
            w[j] = w_in[i];
            y[j++] = y_in[i];
            if (bf) ps.nbf += w_in[i]->n_pad / QK_QROWS;
        }
    /* Warps per row group: split K only while the launch has fewer warps
     * than the persistent grid holds (QG_SPLIT_WARPS per SM: short N, e.g.
     * attention k/v, or the 27B down and GDN out projections) and each warp
     * keeps at least one chunk per lane. */
    const int nsm = qk_sm_count() > 0 ? qk_sm_count() : 132;
    int groups = 0, kc_min = 1 << 30;
    for (int i = 0; i < nparts; i++) {
        int rc = y[i] ? qg_part_fill(w[i], y[i], &ps.p[i]) : (int)cudaErrorInvalidValue;
        if (rc) return rc;
        if (w[i]->k != w[0]->k) return (int)cudaErrorInvalidValue;
        groups += w[i]->n_pad / QK_QROWS;
        if (ps.p[i].kc < kc_min) kc_min = ps.p[i].kc;
    }
    /* Act-order INT4 (perm_regular) parts of one permutation, BF16 parts
     * beside them or not: the block stages x once in the packed order
     * (qg_stage_x) and the parts run the plain layout's bodies, streamed
     * included; the gather bodies (x through perm at every chunk, 27B decode
     * 63 tok/s against 132 for the plain g128 layout, H100) stay for uneven
     * groups, parts of different permutations and the plain grid. */
    if (xperm_ok) {
        const int32_t *pm = NULL;
        bool all = true, bf = false;
        int kp = 0;
        for (int i = 0; i < nparts; i++) {
            if (w[i]->kind == QK_QW_BF16) {
                bf = true;
                continue;
            }
            all &= w[i]->kind == QK_QW_INT4 && w[i]->perm && w[i]->perm_regular && (!pm || w[i]->perm == pm) &&
                   w[i]->k_pad <= QG_XP_PT * QG_THREADS * 8;
            pm = w[i]->perm;
            kp = w[i]->k_pad;
        }
        if (all && pm) {
            ps.xperm = (const uint16_t *)((const char *)pm + qk_perm16_offset(kp));
            ps.xs_nat = nm && bf;
            for (int i = 0; i < nparts; i++) ps.p[i].perm = NULL;
        }
    }
    /* A BF16 group's bytes in part 0's groups, for qg_phase2_slot (fp8 2,
     * int4 / fp4 4 at any K). */
    if (ps.nbf) ps.bfw = qk_gemv_q_mode == 11 ? -1 : (ps.p[nparts - 1].kc + ps.p[0].kc / 2) / ps.p[0].kc;
    int S = 1;
    while (S < QG_WARPS && groups * S < nsm * QG_SPLIT_WARPS && kc_min >= 64 * S) S *= 2;
    const int gpb = QG_WARPS / S;
    /* Persistent launch when every quantized part runs the same body (the
     * usual case; BF16 parts ride along, below; parts of two quantized
     * layouts take the plain one) and, for S > 1, its rounds fit QG_PRMAX. */
    static int occ[QG_NBODY];
    /* BF16 parts ride along in any body's launch (GDN in_proj_a|b next to
     * the quantized qkv|z, 2 x 48 rows: on the plain grid that launch ran at
     * 56 % of copy bandwidth for INT4, 62 % for NVFP4; persistent 59 / 69 %,
     * H100, BENCHMARKS.md). */
    int body = QG_B_BF16;
    for (int i = nparts - 1; i >= 0; i--)
        if (qg_part_body(&ps.p[i]) != QG_B_BF16) body = qg_part_body(&ps.p[i]);
    int same = 1, g = 0;
    for (int i = 0; i < nparts; i++) {
        same &= qg_part_body(&ps.p[i]) == body || qg_part_body(&ps.p[i]) == QG_B_BF16;
        ps.p[i].first_group = g;
        g += w[i]->n_pad / QK_QROWS;
    }
    if (!occ[body] &&
        (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ[body], qg_pkernels[body], QG_THREADS, 0) !=
             cudaSuccess ||
         occ[body] <= 0))
        occ[body] = 1;
    const int pb = (groups + gpb - 1) / gpb, B = pb < nsm * occ[body] ? pb : nsm * occ[body];
    const int mode = qk_gemv_q_mode == 11 ? 0 : qk_gemv_q_mode; /* 11: 0 with qg_phase2_slot's plain numbering */
    /* PDL by default (and in modes 2, 5, 8). Measured in the engine's decode
     * graph (27B, H100, BENCHMARKS.md): slower (-1 %) while the small
     * kernels between the GEMVs did not trigger their dependents (third
     * session); with them triggering at entry +1.2-1.5 % (fifth). */
    const bool pdl = (mode == 0 || mode == 2 || mode == 5 || mode == 8 || mode == 10) && qk_pdl_ok(st);
    const bool m0 = mode == 0 || mode == 7 || mode == 8 || mode == 10; /* the default's kernels */
    ps.prime = (mode == 0 || mode == 10) && pdl;
    cudaLaunchConfig_t cfg;
    cudaLaunchAttribute at[1];
    const qg_norm nrm = nm ? *nm : qg_norm{};
    /* Staged x: one copy, or with xperm and the norm two (the permuted one
     * for the quantized parts, the natural one after it for BF16 parts). */
    const int copies = ps.xs_nat ? 2 : 1;
    if (nm) { /* the norm needs the staged-x kernels, K = the norm's length */
        const int P = body == QG_B_FP8 ? 2 : 4, K = ps.p[0].k;
        bool ok = same && (S == 1 || groups / (B * gpb) <= QG_PRMAX) && qg_pkernels_xs[body] &&
                  ps.p[0].kind != QK_QW_BF16 && K % 4 == 0 && K <= 8192 &&
                  (size_t)16 * P * ps.p[0].kc * copies <= QG_XSMAX && nm->h && nm->w && !((uintptr_t)nm->h & 15) &&
                  !((uintptr_t)nm->w & 15);
        for (int i = 0; ok && i < nparts; i++) {
            if (ps.p[i].kind == QK_QW_BF16) {
                ok = ps.p[i].kc == P * ps.p[0].kc;
                ps.p[i].xs_p = P;
                ps.p[i].xs_off = ps.xs_nat ? P * ps.p[0].kc : 0;
            } else {
                ok = ps.p[i].kc == ps.p[0].kc;
            }
        }
        if (!ok) return ps.xperm ? QG_NO_XPERM : QK_GEMV_UNFUSED;
        if (conv) { /* part 0 holds the conv channels */
            if (!conv->w || !conv->state || !conv->out || conv->C <= 0 || conv->C > ps.p[0].n || accumulate)
                return (int)cudaErrorInvalidValue;
            ps.p[0].cw = conv->w;
            ps.p[0].cst = conv->state;
            ps.p[0].cout = conv->out;
            ps.p[0].cC = conv->C;
        }
    }
    /* The streamed kernel (k_gemv_qt) by default for launches of INT4 parts
     * of one group size of 32, 64 or 128 codes (no g_idx gather: act-order
     * with regular groups stages x permuted), with whole 32-chunk steps and
     * 16-byte aligned scale rows (the bulk copies), and BF16 parts of one K
     * placed last (lift), on every block it can hold resident (10: the
     * walks instead, for A/B). */
    const int tk = qg_tkernel_index(body, ps.p[0].kind == QK_QW_INT4 ? ps.p[0].cpg : 0, ps.p[0].s16);
    if (mode == 0 && pdl && tk >= 0) {
        const int kc = ps.p[0].kc, cpg = ps.p[0].cpg;
        bool ok = kc % 32 == 0;
        for (int i = 0; ok && i < nparts; i++) {
            const qg_part &p = ps.p[i];
            if (p.kind == QK_QW_BF16)
                ok = lift && p.kc == ps.p[nparts - 1].kc && (!nm || p.xs_p == 4);
            else
                ok = qg_part_body(&p) == body && p.kc == kc && p.cpg == cpg && p.ng * cpg == kc &&
                     p.s16 == ps.p[0].s16 && !((uintptr_t)p.s & 15);
        }
        ps.xs_u4 = 4 * kc * copies;
        size_t smem = 0;
        const int occ_t = ok ? qg_tkernel_occupancy(tk, (size_t)16 * ps.xs_u4, cpg, &smem) : 0;
        /* Two blocks per SM at least: with one (8 warps) the decode lost 30 %
         * (header comment). On GPUs with less shared memory per SM than the
         * H100 (sm_120: ~100 KB) launches whose x and rings do not fit twice
         * (the down projection's 34 KB of x) take the walks (never run on
         * such a GPU: untested there). */
        const int grid = occ_t >= 2 ? (groups < nsm * occ_t ? groups : nsm * occ_t) : 0;
        if (grid > 0) {
            qk_launch_cfg(&cfg, at, dim3((unsigned)(grid)), dim3(QG_THREADS), st, pdl);
            cfg.dynamicSmemBytes = smem;
            const int rc = (int)cudaLaunchKernelEx(&cfg, qg_tkernels[tk], ps, x, accumulate, groups, nrm);
            qg_last_streamed = rc == 0;
            return rc ? rc : qk_launch_status();
        }
    }
    if (same && (S == 1 || groups / (B * gpb) <= QG_PRMAX)) {
        qg_pkernel k = qg_pkernels[body];
        int grid = B;
        size_t smem = 0;
        if (mode == 9 && body == QG_B_I4MH) k = k_gemv_qp<QG_B_I4MH, 1>;
        if (mode == 9 && body == QG_B_NV) k = k_gemv_qp<QG_B_NV, 1>;
        int same_kc = ps.p[0].kind != QK_QW_BF16; /* staged for p[0]'s layout; BF16 parts read x directly */
        for (int i = 0; i < nparts; i++) same_kc &= ps.p[i].kc == ps.p[0].kc || ps.p[i].kind == QK_QW_BF16;
        const size_t xs = (size_t)16 * (body == QG_B_FP8 ? 2 : 4) * ps.p[0].kc * copies;
        /* x staged in shared memory: by default for the FP4 bodies, where
         * it measured +4 points of copy bandwidth on the 27B decode total
         * (FP8 +-0, INT4 g128 walks -1: BENCHMARKS.md "Quantized GEMV
         * (H100)"), and for the INT4 bodies of groups below 128 (27B GPTQ
         * g32 decode 95.2 -> 100.7 tok/s, eighteenth session) */
        const bool xs_default = body == QG_B_NV || body == QG_B_MX || body == QG_B_I4H || body == QG_B_I4;
        const bool use_xs = (nm || mode == 5 || (m0 && xs_default) || ps.xperm) && same_kc && qg_pkernels_xs[body] &&
                            xs <= QG_XSMAX;
        if (ps.xperm && !use_xs) return nm ? QK_GEMV_UNFUSED : QG_NO_XPERM;
        /* 3 blocks per SM (24 warps): by default for the FP4 bodies, where
         * the 27B decode gained 3-4 % in two A/B runs (nvfp4 105.4 -> 108.3,
         * 101.3 -> 105.8 tok/s); INT4 lost 3-4 % (its mma body spills at 85
         * registers) and FP8 did not move, so they keep 2. */
        bool xs3 = false;
        const bool xs3_default = body == QG_B_NV || body == QG_B_MX;
        if ((mode == 6 || (m0 && xs3_default)) && same_kc && qg_pkernels_xs3[body] && xs <= QG_XSMAX && !ps.xperm) {
            static qg_occ_cache c3[QG_NBODY];
            const int o3 = qg_xs_occupancy(&c3[body], qg_pkernels_xs3[body], xs);
            if (o3 >= 3) {
                xs3 = true;
                k = qg_pkernels_xs3[body];
                grid = pb < nsm * o3 ? pb : nsm * o3;
                smem = xs;
            }
        }
        if (!xs3 && use_xs) { /* only with the same resident blocks as the plain kernel (B above) */
            static qg_occ_cache c2[QG_NBODY], cp[QG_NBODY];
            const qg_pkernel kx = ps.xperm ? qg_pkernels_xp[body] : qg_pkernels_xs[body];
            if (kx && qg_xs_occupancy(ps.xperm ? &cp[body] : &c2[body], kx, xs) >= occ[body]) {
                k = kx;
                smem = xs;
            } else if (nm || ps.xperm) {
                return nm ? QK_GEMV_UNFUSED : QG_NO_XPERM;
            }
        }
        qk_launch_cfg(&cfg, at, dim3((unsigned)(grid)), dim3(QG_THREADS), st, pdl);
        cfg.dynamicSmemBytes = smem;
        const int rc = (int)cudaLaunchKernelEx(&cfg, k, ps, x, accumulate, S, groups, nrm);
        return rc ? rc : qk_launch_status();
    }
    if (ps.xperm) return QG_NO_XPERM;
    int blocks = 0;
    for (int i = 0; i < nparts; i++) {
        ps.p[i].first_block = blocks;
        blocks += (w[i]->n_pad / QK_QROWS + gpb - 1) / gpb;
    }
    qk_launch_cfg(&cfg, at, dim3((unsigned)(blocks)), dim3(QG_THREADS), st, pdl);
    const int rc = (int)cudaLaunchKernelEx(&cfg, k_gemv_q, ps, x, accumulate, S);
    return rc ? rc : qk_launch_status();
}

extern "C" int qk_gemv_multi(const qk_qweight *const *w, float *const *y, int nparts, const uint16_t *x,
                             int accumulate, struct CUstream_st *st)
{
    const int rc = gemv_launch(w, y, nparts, x, NULL, NULL, accumulate, st, true);
    return rc == QG_NO_XPERM ? gemv_launch(w, y, nparts, x, NULL, NULL, accumulate, st, false) : rc;
}

extern "C" int qk_gemv_multi_norm(const qk_qweight *const *w, float *const *y, int nparts, const float *h,
                                  const float *norm_w, float eps, int accumulate, const qk_conv_epi *conv,
                                  struct CUstream_st *st)
{
    const qg_norm nm = {h, norm_w, eps};
    const int rc = gemv_launch(w, y, nparts, NULL, &nm, conv, accumulate, st, true);
    return rc == QG_NO_XPERM ? QK_GEMV_UNFUSED : rc;
}

extern "C" int qk_gemv_q(const qk_qweight *w, const uint16_t *x, float *y, int accumulate, struct CUstream_st *st)
{
    return qk_gemv_multi(&w, &y, 1, x, accumulate, st);
}

extern "C" int qk_dequant_q_bf16(const qk_qweight *w, uint16_t *out, int ld, struct CUstream_st *st)
{
    if (!w) return (int)cudaErrorInvalidValue;
    switch (w->kind) {
    case QK_QW_FP8: return qk_dequant_fp8_bf16(w, out, ld, st);
    case QK_QW_INT4: return qk_dequant_int4_bf16(w, out, ld, st);
    case QK_QW_NVFP4:
    case QK_QW_MXFP4: return qk_dequant_fp4_bf16(w, out, ld, st);
    case QK_QW_BF16:
        if (!out || ld < w->k) return (int)cudaErrorInvalidValue;
        return (int)cudaMemcpy2DAsync(out, (size_t)ld * 2, w->w, (size_t)w->k_pad * 2, (size_t)w->k * 2,
                                      (size_t)w->n, cudaMemcpyDeviceToDevice, st);
    default: return (int)cudaErrorInvalidValue;
    }
}
