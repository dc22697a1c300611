/* gemv_multi.cu — the one launcher of the quantized decode GEMVs: a single
 * kernel whose blocks are split among up to QK_GEMV_MAX_PARTS weights (any
 * mix of FP8, INT4, NVFP4, MXFP4 and BF16 layouts) reading the same x. Each
 * block holds row groups (QK_QROWS rows) of one part only and runs that
 * part's body from gemv_q.cuh, so the branch on the format is uniform per
 * block. A lone weight is a launch of one part. */
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

/* ---- persistent launch (one body for every part) ----
 *
 * The grid holds exactly what the GPU runs at once (SMs x resident blocks),
 * and each virtual warp (S warps sharing a row group) walks its row groups
 * as one flat sequence of steps (group, chunk block), loading step t + 1
 * before the arithmetic of step t, across group boundaries: a warp always
 * has weight loads in flight. Phase 1: R whole rounds of V virtual warps.
 * Phase 2: the L < V leftover groups are spread over all blocks, each split
 * over more warps (S2 >= S), so the tail is short instead of a partial
 * wave of whole groups. */
#define QG_PRMAX 4 /* phase-1 rounds that can meet in shared memory (S > 1) */

struct qg_cursor {
    int g, s, nst, row0;
    const qg_part *p;
};

__device__ __forceinline__ void qg_locate(const qg_parts &ps, int g, int ks, int S, bool mma, qg_cursor &c)
{
    int i = 0;
#pragma unroll
    for (int j = 1; j < QK_GEMV_MAX_PARTS; j++)
        if (j < ps.count && g >= ps.p[j].first_group) i = j;
    c.p = &ps.p[i];
    c.g = g;
    c.s = 0;
    c.row0 = (g - c.p->first_group) * QK_QROWS;
    const int rest = c.p->kc - ks * 32;
    c.nst = rest > 0 ? (rest + 32 * S - 1) / (32 * S) : 0;
    if (c.nst == 0) c.nst = 1; /* one empty step still finishes the group */
    (void)mma;
}

template <class STEP, bool MMA>
__device__ __forceinline__ void qg_pissue(STEP &st, const qg_cursor &c, const uint16_t *__restrict__ x, int ks, int S,
                                          int lane)
{
    const int ch = c.s * 32 * S + ks * 32 + lane;
    if (MMA || ch < c.p->kc) st.load(*c.p, c.row0, x, ch);
}

struct qg_pctx {
    const qg_parts *ps;
    const uint16_t *x;
    int ks, S, lane, warp, accumulate, gstep, gend, r;
    float *red; /* S > 1: partial sums [round][warp][row] */
};

/* End of a group: row sums to y (S = 1) or to shared memory (S > 1). */
template <bool MMA>
__device__ __forceinline__ void qg_pfinish(qg_pctx &k, const qg_cursor &cur, float *acc)
{
    if (MMA && (k.lane & 3) != (k.lane >> 3)) {
#pragma unroll
        for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    }
    float t = 0.0f;
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) {
        const float v = qk_warp_sum(acc[r]);
        if (k.lane == r) t = v;
        acc[r] = 0.0f;
    }
    if (k.S == 1) {
        const qg_part &p = *cur.p;
        const int row = cur.row0 + k.lane;
        t *= p.post;
        if (k.lane < QK_QROWS && row < p.n) p.y[row] = k.accumulate ? p.y[row] + t : t;
    } else if (k.lane < QK_QROWS) {
        k.red[(k.r * QG_WARPS + k.warp) * QK_QROWS + k.lane] = t;
    }
    k.r++;
}

/* Step of cur with `use` (loaded earlier) after issuing the next step's
 * loads into `fill`; finishes the group on its last step. */
template <class STEP, bool MMA>
__device__ __forceinline__ bool qg_pstep(STEP &use, STEP &fill, qg_cursor &cur, qg_pctx &k, float *acc)
{
    qg_cursor nx = cur;
    bool more = true;
    if (++nx.s == nx.nst) {
        const int g = cur.g + k.gstep;
        more = g < k.gend;
        if (more) qg_locate(*k.ps, g, k.ks, k.S, MMA, nx);
    }
    if (more) qg_pissue<STEP, MMA>(fill, nx, k.x, k.ks, k.S, k.lane);
    const int ch = cur.s * 32 * k.S + k.ks * 32 + k.lane;
    if (MMA || ch < cur.p->kc) use.dot(*cur.p, acc);
    if (cur.s + 1 == cur.nst) qg_pfinish<MMA>(k, cur, acc);
    cur = nx;
    return more;
}

/* Groups g0, g0 + gstep, ... < gend of one virtual warp, pipelined. */
template <class STEP, bool MMA, bool PIPE>
__device__ __forceinline__ void qg_pwalk(qg_pctx &k, int g0)
{
    if (g0 >= k.gend) return;
    float acc[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    if (!PIPE) { /* experiment: the plain two-chunk walk per group */
        for (int g = g0; g < k.gend; g += k.gstep) {
            qg_cursor c;
            qg_locate(*k.ps, g, k.ks, k.S, MMA, c);
            if (MMA) qg_walk_mma<STEP>(*c.p, c.row0, k.x, acc, k.ks * 32 + k.lane, 32 * k.S);
            else qg_walk<STEP>(*c.p, c.row0, k.x, acc, k.ks * 32 + k.lane, 32 * k.S);
            qg_pfinish<MMA>(k, c, acc);
        }
        return;
    }
    qg_cursor cur;
    qg_locate(*k.ps, g0, k.ks, k.S, MMA, cur);
    STEP a, b;
    qg_pissue<STEP, MMA>(a, cur, k.x, k.ks, k.S, k.lane);
    while (qg_pstep<STEP, MMA>(a, b, cur, k, acc) && qg_pstep<STEP, MMA>(b, a, cur, k, acc)) {
    }
}

/* S > 1: warps ks == 0 add the S partial sums of each of their rounds. */
__device__ __forceinline__ void qg_pmeet(const qg_parts &ps, const float *red, int rounds, int g0, int gstep, int S,
                                         int warp, int lane, int accumulate)
{
    __syncthreads();
    if (warp % S == 0 && lane < QK_QROWS) {
        for (int r = 0; r < rounds; r++) {
            qg_cursor c;
            qg_locate(ps, g0 + r * gstep, 0, S, false, c);
            float t = 0.0f;
            for (int j = 0; j < S; j++) t += red[(r * QG_WARPS + warp + j) * QK_QROWS + lane];
            const qg_part &p = *c.p;
            const int row = c.row0 + lane;
            t *= p.post;
            if (row < p.n) p.y[row] = accumulate ? p.y[row] + t : t;
        }
    }
    __syncthreads();
}

template <class STEP, bool MMA, bool PIPE>
__device__ __forceinline__ void qg_persist(const qg_parts &ps, const uint16_t *__restrict__ x, int accumulate, int S,
                                           int G, float *red)
{
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const int B = (int)gridDim.x, gpb = QG_WARPS / S, V = B * gpb, R = G / V, L = G - R * V;
    qg_pctx k;
    k.ps = &ps;
    k.x = x;
    k.lane = lane;
    k.warp = warp;
    k.accumulate = accumulate;
    k.red = red;
    /* phase 1 */
    k.S = S;
    k.ks = warp % S;
    k.gstep = V;
    k.gend = R * V;
    k.r = 0;
    const int v = (int)blockIdx.x * gpb + warp / S;
    qg_pwalk<STEP, MMA, PIPE>(k, v);
    if (S > 1) qg_pmeet(ps, red, R, v, V, S, warp, lane, accumulate);
    if (L == 0) return;
    /* phase 2: leftover j = (warp / S2) * B + block, S2 warps per group */
    int gpb2 = 1;
    while (B * gpb2 < L) gpb2 *= 2;
    const int S2 = QG_WARPS / gpb2;
    const int j = (warp / S2) * B + (int)blockIdx.x;
    k.S = S2;
    k.ks = warp % S2;
    k.gstep = G; /* one group */
    k.gend = G;
    k.r = 0;
    if (j < L) qg_pwalk<STEP, MMA, PIPE>(k, R * V + j);
    if (S2 > 1) qg_pmeet(ps, red, j < L ? 1 : 0, R * V + j, G, S2, warp, lane, accumulate);
}

enum { QG_B_FP8, QG_B_I4PH, QG_B_I4P, QG_B_I4MH, QG_B_I4M, QG_B_I4H, QG_B_I4, QG_B_NV, QG_B_MX, QG_B_BF16 };

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

template <int BODY, int MINB, bool PIPE>
__global__ void __launch_bounds__(QG_THREADS, MINB)
    k_gemv_qp(const __grid_constant__ qg_parts ps, const uint16_t *__restrict__ x, int accumulate, int S, int G)
{
    __shared__ float red[QG_PRMAX * QG_WARPS * QK_QROWS];
    switch (BODY) {
    case QG_B_FP8: qg_persist<qg_fp8_step, false, PIPE>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4PH: qg_persist<qg_int4_step<true, true>, false, PIPE>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4P: qg_persist<qg_int4_step<false, true>, false, PIPE>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4MH: qg_persist<qg_int4_mma_step<true>, true, PIPE>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4M: qg_persist<qg_int4_mma_step<false>, true, PIPE>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4H: qg_persist<qg_int4_step<true, false>, false, PIPE>(ps, x, accumulate, S, G, red); break;
    case QG_B_I4: qg_persist<qg_int4_step<false, false>, false, PIPE>(ps, x, accumulate, S, G, red); break;
    case QG_B_NV: qg_persist<qg_fp4_step<false>, false, PIPE>(ps, x, accumulate, S, G, red); break;
    case QG_B_MX: qg_persist<qg_fp4_step<true>, false, PIPE>(ps, x, accumulate, S, G, red); break;
    default: qg_persist<qg_bf16_step, false, PIPE>(ps, x, accumulate, S, G, red); break;
    }
}

typedef void (*qg_pkernel)(qg_parts, const uint16_t *, int, int, int);
static const qg_pkernel qg_pkernels[3][10] = {
    {k_gemv_qp<0, 2, true>, k_gemv_qp<1, 2, true>, k_gemv_qp<2, 2, true>, k_gemv_qp<3, 2, true>, k_gemv_qp<4, 2, true>, k_gemv_qp<5, 2, true>, k_gemv_qp<6, 2, true>, k_gemv_qp<7, 2, true>, k_gemv_qp<8, 2, true>, k_gemv_qp<9, 2, true>},
    {k_gemv_qp<0, 1, true>, k_gemv_qp<1, 1, true>, k_gemv_qp<2, 1, true>, k_gemv_qp<3, 1, true>, k_gemv_qp<4, 1, true>, k_gemv_qp<5, 1, true>, k_gemv_qp<6, 1, true>, k_gemv_qp<7, 1, true>, k_gemv_qp<8, 1, true>, k_gemv_qp<9, 1, true>},
    {k_gemv_qp<0, 2, false>, k_gemv_qp<1, 2, false>, k_gemv_qp<2, 2, false>, k_gemv_qp<3, 2, false>, k_gemv_qp<4, 2, false>, k_gemv_qp<5, 2, false>, k_gemv_qp<6, 2, false>, k_gemv_qp<7, 2, false>, k_gemv_qp<8, 2, false>, k_gemv_qp<9, 2, false>}};

/* Experiment switch for the A/B benchmark (tests/test_kernels_quant.c). */
extern "C" int qk_gemv_persist_mode;
int qk_gemv_persist_mode = 1;

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
    if (qk_gemv_persist_mode) {
        static int occs[3][10];
        const int body = part_body(&ps.p[0]), mv = qk_gemv_persist_mode - 1;
        int &occ = occs[mv][body];
        if (!occ && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, qg_pkernels[mv][body], QG_THREADS, 0) !=
                         cudaSuccess ||
                     occ <= 0))
            occ = 1;
        int same = 1, g = 0;
        for (int i = 0; i < nparts; i++) {
            same &= part_body(&ps.p[i]) == body;
            ps.p[i].first_group = g;
            g += w[i]->n_pad / QK_QROWS;
        }
        const int pb = (int)((groups + gpb - 1) / gpb), B = pb < nsm * occ ? pb : nsm * occ;
        if (same && (S == 1 || groups / (B * gpb) <= QG_PRMAX)) {
            qg_pkernels[mv][body]<<<B, QG_THREADS, 0, st>>>(ps, x, accumulate, S, groups);
            return qk_launch_status();
        }
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
