/* gemv_multi.cu — the one launcher of the quantized decode GEMVs: a single
 * kernel whose blocks are split among up to QK_GEMV_MAX_PARTS weights (any
 * mix of FP8, INT4, NVFP4, MXFP4 and BF16 layouts) reading the same x. Each
 * block owns QK_QROWS rows of one part and runs that part's body from
 * gemv_q.cuh, so the branch on the format is uniform per block. A lone
 * weight is a launch of one part. */
#include "gemv_q.cuh"

__global__ void __launch_bounds__(QG_THREADS)
    k_gemv_q(const __grid_constant__ qg_parts ps, const uint16_t *__restrict__ x, int accumulate)
{
    int i = 0;
#pragma unroll
    for (int j = 1; j < QK_GEMV_MAX_PARTS; j++)
        if (j < ps.count && (int)blockIdx.x >= ps.p[j].first_block) i = j;
    const qg_part &p = ps.p[i];
    const int row0 = ((int)blockIdx.x - p.first_block) * QK_QROWS;
    float acc[QK_QROWS];
#pragma unroll
    for (int r = 0; r < QK_QROWS; r++) acc[r] = 0.0f;
    switch (p.kind) {
    case QK_QW_FP8: qg_rows_fp8(p, row0, x, acc); break;
    case QK_QW_INT4:
        if (p.perm) {
            if (p.f16) qg_rows_int4<true, true>(p, row0, x, acc);
            else qg_rows_int4<false, true>(p, row0, x, acc);
        } else {
            if (p.f16) qg_rows_int4<true, false>(p, row0, x, acc);
            else qg_rows_int4<false, false>(p, row0, x, acc);
        }
        break;
    case QK_QW_NVFP4: qg_rows_fp4<false>(p, row0, x, acc); break;
    case QK_QW_MXFP4: qg_rows_fp4<true>(p, row0, x, acc); break;
    default: qg_rows_bf16(p, row0, x, acc); break;
    }
    __shared__ float red[QG_WARPS * QK_QROWS];
    const float t = qg_block_reduce(acc, red) * p.post;
    if (threadIdx.x < QK_QROWS) {
        const int row = row0 + threadIdx.x;
        if (row < p.n) p.y[row] = accumulate ? p.y[row] + t : t;
    }
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
    /* Block size from the part with the most weight bytes: the others are
     * correct with any block size, the big one sets the speed. */
    int blocks = 0, kc_big = 1;
    size_t big = 0;
    for (int i = 0; i < nparts; i++) {
        int rc = part_fill(w[i], y[i], &ps.p[i]);
        if (rc) return rc;
        if (w[i]->k != w[0]->k) return (int)cudaErrorInvalidValue;
        ps.p[i].first_block = blocks;
        blocks += w[i]->n_pad / QK_QROWS;
        if (w[i]->w_bytes > big) {
            big = w[i]->w_bytes;
            kc_big = ps.p[i].kc;
        }
    }
    k_gemv_q<<<blocks, qg_threads(kc_big), 0, st>>>(ps, x, accumulate);
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
