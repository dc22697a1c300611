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
