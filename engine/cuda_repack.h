/* cuda_repack.h — the row-range interface of the load-time repacking
 * (engine/cuda_repack.c), for loaders that pack on many threads straight
 * into staging buffers (engine/cuda_load.c). The whole-tensor entry points
 * (qc_qweight_pack, qc_linear_to_qweight) are declared in kernels/quant.h
 * and are built on these.
 *
 * Every function here is plain C and compiled in every build. */
#ifndef QC_CUDA_REPACK_H
#define QC_CUDA_REPACK_H

#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "quant.h"
#include "util.h"

enum { QC_QW_WEIGHT = 0, QC_QW_SCALES = 1 };

/* Fills *q (w and s NULL) with the layout of l: kind, padding, groups, byte
 * sizes. For int4 with g_idx it also builds the permutation in q->perm
 * (malloc'ed: free(q->perm), or qc_qweight_free_host). Everything that can
 * refuse a file (QC_EXIT_CHECKPOINT: a layout the kernels cannot hold) is
 * checked here, before any row is packed. */
int qc_qweight_plan(const qc_linear *l, qk_qweight *q, qc_err *err);

/* The packed K of an INT4 weight with g_idx, g[k] in [0, ng) the group of
 * input k, G the file's group size: each group's inputs one contiguous
 * segment (group order, k order within), padded to a multiple of 32 so no
 * 32-position chunk spans two groups. Sets k_pad, group, ngroups,
 * perm_regular (every group G long: quant.h), perm_bytes and q->perm
 * (malloc'ed: packed position -> k, -1 for padding, then each chunk's group). */
int qc_qweight_plan_gidx(qk_qweight *q, const int32_t *g, int64_t K, int64_t ng, int64_t G, qc_err *err,
                         const char *name);

/* The layout of a random weight of `kind` (QK_QW_*) at [n, k] as the
 * synthetic models and the GEMV benchmarks make them: padding, FP8 blocks
 * of 128 x 128, INT4 groups of 128, NVFP4 / MXFP4 scales per 16 / 32, byte
 * sizes; any other kind is BF16. w, s and the format-specific scalars (fmt,
 * scale_f16, gmul) are left for the caller. */
void qc_qweight_plan_random(qk_qweight *q, int kind, int n, int k);

/* After a plan, before packing: the tiled INT4 layout (quant.h) where the
 * weight can take it; other weights are left as they are. For the dense
 * decode GEMVs (the MoE expert kernels read row-major weights only). */
void qc_qweight_tile(qk_qweight *q);

/* qc_qweight_pack, with the tiled INT4 layout where it applies when tile. */
int qc_qweight_pack_tiled(const qc_linear *l, qk_qweight *q, int tile, qc_err *err);

/* Bytes of one packed weight row (w_bytes / n_pad), and of one row of scales,
 * or 0 where the scales are one grid packed whole (FP8) or absent (BF16). */
size_t qc_qweight_row_bytes(const qk_qweight *q);
size_t qc_qweight_srow_bytes(const qk_qweight *q);

/* Packs rows [r0, r0 + nr) of the weight (what = QC_QW_WEIGHT: nr x
 * row_bytes) or of the scales (QC_QW_SCALES: nr x srow_bytes; FP8 only whole,
 * r0 = 0 and nr = n_pad, s_bytes) into dst, every byte written (padding
 * zero). Thread-safe; any split of the rows gives the same bytes as one call
 * over all of them. */
int qc_qweight_pack_rows(const qc_linear *l, const qk_qweight *q, int what, int64_t r0, int64_t nr, void *dst,
                         qc_err *err);

#endif
