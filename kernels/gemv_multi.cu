/* gemv_multi.cu — the one launcher of the quantized decode GEMVs: a single
 * kernel whose blocks are split among up to QK_GEMV_MAX_PARTS weights (any
 * mix of FP8, INT4, NVFP4, MXFP4 and BF16 layouts) reading the same x. Each
 * block holds row groups (QK_QROWS rows) of one part only and runs that
 * part's body from gemv_q.cuh, so the branch on the format is uniform per
 * block. A lone weight is a launch of one part. When every part runs the
 * same body, a persistent grid (k_gemv_qp, below) replaces it. */
#include "gemv_q.cuh"

/* Block of QG_WARPS warps. Each row group (QK_QROWS rows of one part) is
 * owned by S consecutive warps that split its chunks (S = 1: a warp walks
 * whole rows; S > 1 when the launch has too few row groups to fill the
 * GPU, e.g. attention k/v, and the S partial sums meet in shared memory).
 * A block holds QG_WARPS / S row groups of one part. */
__global__ void __launch_bounds__(QG_THREADS, QG_MINB)
    k_gemv_q(const __grid_constant__ qg_parts ps, const uint16_t *__restrict__ x, int accumulate, int S)
{
    int i = 0;
#pragma unroll
    for (int j = 1; j < QK_GEMV_MAX_PARTS; j++)
        if (j < ps.count && (int)blockIdx.x >= ps.p[j].first_block) i = j;
    const qg_part &p = ps.p[i];
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int ks = warp % S;
    const int row0 = (((int)blockIdx.x - p.first_block) * (QG_WARPS / S) + warp / S) * QK_QROWS;
    float acc[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    if (row0 < p.n) {
        const int c0 = ks * 32 + lane, stride = 32 * S;
        switch (p.kind) {
        case QK_QW_FP8: qg_walk<qg_fp8_step>(p, row0, x, acc, c0, stride); break;
        case QK_QW_INT4:
            if (p.perm) {
                if (p.f16) qg_walk<qg_int4_step<true, true>>(p, row0, x, acc, c0, stride);
                else qg_walk<qg_int4_step<false, true>>(p, row0, x, acc, c0, stride);
            } else if (p.cpg % 4 == 0) { /* groups of 128, 256, ...: tensor cores */
                if (p.f16) qg_walk_mma<qg_int4_mma_step<true>>(p, row0, x, acc, c0, stride);
                else qg_walk_mma<qg_int4_mma_step<false>>(p, row0, x, acc, c0, stride);
            } else {
                if (p.f16) qg_walk<qg_int4_step<true, false>>(p, row0, x, acc, c0, stride);
                else qg_walk<qg_int4_step<false, false>>(p, row0, x, acc, c0, stride);
            }
            break;
        case QK_QW_NVFP4: qg_walk<qg_fp4_step<false>>(p, row0, x, acc, c0, stride); break;
        case QK_QW_MXFP4: qg_walk<qg_fp4_step<true>>(p, row0, x, acc, c0, stride); break;
        default: qg_walk<qg_bf16_step>(p, row0, x, acc, c0, stride); break;
        }
    }
    /* Lane r ends with row r's warp total. */
    float t = 0.0f;
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) {
        const float v = qk_warp_sum(acc[r]);
        if (lane == r) t = v;
    }
    if (S > 1) {
        __shared__ float red[QG_WARPS * QK_QROWS];
        if (lane < QK_QROWS) red[warp * QK_QROWS + lane] = t;
        __syncthreads();
        if (ks != 0) return;
        if (lane < QK_QROWS) {
            t = 0.0f;
            for (int j = 0; j < S; j++) t += red[(warp + j) * QK_QROWS + lane];
        }
    }
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
 * step's math) spilled at 128 registers and was slower (-2 to -17 %). */
#define QG_PRMAX 4 /* phase-1 rounds whose partial sums fit in shared memory (S > 1) */

/* Global row group g: its part and first row. */
__device__ __forceinline__ const qg_part &qg_locate(const qg_parts &ps, int g, int &row0)
{
    int i = 0;
#pragma unroll
    for (int j = 1; j < QK_GEMV_MAX_PARTS; j++)
        if (j < ps.count && g >= ps.p[j].first_group) i = j;
    row0 = (g - ps.p[i].first_group) * QK_QROWS;
    return ps.p[i];
}

/* Row sums of one group: to y when S = 1, else to red[slot][warp][row]. */
__device__ __forceinline__ void qg_pfinish(const qg_part &p, int row0, float *acc, int S, int accumulate,
                                           float *red, int slot)
{
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    float t = 0.0f;
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) {
        const float v = qk_warp_sum(acc[r]);
        if (lane == r) t = v;
        acc[r] = 0.0f;
    }
    if (S == 1) {
        const int row = row0 + lane;
        t *= p.post;
        if (lane < QK_QROWS && row < p.n) p.y[row] = accumulate ? p.y[row] + t : t;
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
        if (MMA) qg_walk_mma<STEP>(p, row0, x, acc, ks * 32 + lane, 32 * S);
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
            if (row < p.n) p.y[row] = accumulate ? p.y[row] + t : t;
        }
    }
    __syncthreads(); /* red is reused by phase 2 */
}

template <class STEP, bool MMA>
__device__ __forceinline__ void qg_persist(const qg_parts &ps, const uint16_t *__restrict__ x, int accumulate, int S,
                                           int G, float *red)
{
    const int warp = (int)threadIdx.x >> 5;
    const int B = (int)gridDim.x, gpb = QG_WARPS / S, V = B * gpb, R = G / V, L = G - R * V;
    /* phase 1: virtual warp v takes groups v, v + V, ... (R of them) */
    const int v = (int)blockIdx.x * gpb + warp / S;
    qg_pwalk<STEP, MMA>(ps, x, v, V, R, warp % S, S, accumulate, red);
    if (S > 1) qg_pmeet(ps, red, v, V, R, S, accumulate);
    if (L == 0) return;
    /* phase 2: leftover j = (warp / S2) * B + block, so every block gets
     * some; gpb2 groups per block, the fewest that cover L */
    int gpb2 = 1;
    while (B * gpb2 < L) gpb2 *= 2;
    const int S2 = QG_WARPS / gpb2;
    const int j = (warp / S2) * B + (int)blockIdx.x, n2 = j < L ? 1 : 0;
    qg_pwalk<STEP, MMA>(ps, x, R * V + j, 0, n2, warp % S2, S2, accumulate, red);
    if (S2 > 1) qg_pmeet(ps, red, R * V + j, 0, n2, S2, accumulate);
}

enum { QG_B_FP8, QG_B_I4PH, QG_B_I4P, QG_B_I4MH, QG_B_I4M, QG_B_I4H, QG_B_I4, QG_B_NV, QG_B_MX, QG_B_BF16, QG_NBODY };

/* Which body of gemv_q.cuh a part runs (the same choice as k_gemv_q). */
static int part_body(const qg_part *p)
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

/* One kernel per body, so each gets its own register allocation. */
template <int BODY>
__global__ void __launch_bounds__(QG_THREADS, QG_MINB)
    k_gemv_qp(const __grid_constant__ qg_parts ps, const uint16_t *__restrict__ x, int accumulate, int S, int G)
{
    __shared__ float red[QG_PRMAX * QG_WARPS * QK_QROWS];
    switch (BODY) {
    case QG_B_FP8: qg_persist<qg_fp8_step, false>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4PH: qg_persist<qg_int4_step<true, true>, false>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4P: qg_persist<qg_int4_step<false, true>, false>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4MH: qg_persist<qg_int4_mma_step<true>, true>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4M: qg_persist<qg_int4_mma_step<false>, true>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4H: qg_persist<qg_int4_step<true, false>, false>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4: qg_persist<qg_int4_step<false, false>, false>(ps, x, accumulate, S, G, red); break;
    case QG_B_NV: qg_persist<qg_fp4_step<false>, false>(ps, x, accumulate, S, G, red); break;
    case QG_B_MX: qg_persist<qg_fp4_step<true>, false>(ps, x, accumulate, S, G, red); break;
    default: qg_persist<qg_bf16_step, false>(ps, x, accumulate, S, G, red); break;
    }
}

typedef void (*qg_pkernel)(qg_parts, const uint16_t *, int, int, int);
static const qg_pkernel qg_pkernels[QG_NBODY] = {k_gemv_qp<0>, k_gemv_qp<1>, k_gemv_qp<2>, k_gemv_qp<3>,
                                                 k_gemv_qp<4>, k_gemv_qp<5>, k_gemv_qp<6>, k_gemv_qp<7>,
                                                 k_gemv_qp<8>, k_gemv_qp<9>};

/* Flattens one descriptor; 0 or cudaErrorInvalidValue. */
static int part_fill(const qk_qweight *w, float *y, qg_part *p)
{
    if (!w || !w->w || !y || w->n <= 0 || w->k <= 0 || w->n_pad % QK_QROWS || w->k_pad % 32 ||
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
        p->f16 = w->scale_f16;
        p->perm = w->perm;
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

extern "C" int qk_gemv_multi(const qk_qweight *const *w, float *const *y, int nparts, const uint16_t *x,
                             int accumulate, struct CUstream_st *st)
{
    if (nparts < 1 || nparts > QK_GEMV_MAX_PARTS || !x || ((uintptr_t)x & 15)) return (int)cudaErrorInvalidValue;
    qg_parts ps;
    ps = qg_parts{};
    ps.count = nparts;
    /* Warps per row group: split K only while the launch has fewer warps
     * than the GPU holds (short N, e.g. attention k/v) and each warp keeps
     * at least one chunk per lane. */
    static int nsm = 0;
    if (!nsm) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || nsm <= 0)
            nsm = 132;
    }
    int groups = 0, kc_min = 1 << 30;
    for (int i = 0; i < nparts; i++) {
        int rc = part_fill(w[i], y[i], &ps.p[i]);
        if (rc) return rc;
        if (w[i]->k != w[0]->k) return (int)cudaErrorInvalidValue;
        groups += w[i]->n_pad / QK_QROWS;
        if (ps.p[i].kc < kc_min) kc_min = ps.p[i].kc;
    }
    int S = 1;
    while (S < QG_WARPS && groups * S < nsm * 32 && kc_min >= 64 * S) S *= 2;
    const int gpb = QG_WARPS / S;
    /* Persistent launch when every part runs the same body (the usual
     * case; mixed launches, e.g. GDN with BF16 in_proj_a/b, take the plain
     * one) and, for S > 1, its rounds fit QG_PRMAX. */
    static int occ[QG_NBODY];
    const int body = part_body(&ps.p[0]);
    int same = 1, g = 0;
    for (int i = 0; i < nparts; i++) {
        same &= part_body(&ps.p[i]) == body;
        ps.p[i].first_group = g;
        g += w[i]->n_pad / QK_QROWS;
    }
    if (!occ[body] &&
        (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ[body], qg_pkernels[body], QG_THREADS, 0) !=
             cudaSuccess ||
         occ[body] <= 0))
        occ[body] = 1;
    const int pb = (groups + gpb - 1) / gpb, B = pb < nsm * occ[body] ? pb : nsm * occ[body];
    if (same && (S == 1 || groups / (B * gpb) <= QG_PRMAX)) {
        qg_pkernels[body]<<<B, QG_THREADS, 0, st>>>(ps, x, accumulate, S, groups);
        return qk_launch_status();
    }
    int blocks = 0;
    for (int i = 0; i < nparts; i++) {
        ps.p[i].first_block = blocks;
        blocks += (w[i]->n_pad / QK_QROWS + gpb - 1) / gpb;
    }
    k_gemv_q<<<blocks, QG_THREADS, 0, st>>>(ps, x, accumulate, S);
    return qk_launch_status();
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
