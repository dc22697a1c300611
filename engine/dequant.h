/* dequant.h — exact dequantization of every weight format of
 * checkpoint-formats.md, shape/dtype validation of a qc_linear descriptor, and
 * the CPU engine's fused "dequantize a tile of rows, then dot" matmul kernel.
 *
 * qc_linear_dequant_rows itself is declared in format.h (the checkpoint reader,
 * the CPU engine and the tests all need it); this header adds the rest.
 *
 * Exactness: every element is computed in float32 exactly as the format's
 * formula reads, with the scale products formed in this order:
 *   fp8-*            e4m3(w) * scale
 *   gptq/awq/ct-int  scale * (float)(q - z)            (q - z is a small integer)
 *   nvfp4-ct         e2m1(w) * (e4m3(s) / global)      (compressed-tensors order)
 *   nvfp4-modelopt   e2m1(w) * (e4m3(s) * scale_2)
 *   mxfp4-ct         e2m1(w) * 2^(s-127)
 * All of these are exact products except the nvfp4 block scale, which is
 * rounded once to float32 as the producers' own dequantizers do. */
#ifndef QC_DEQUANT_H
#define QC_DEQUANT_H

#include <stdint.h>

#include "format.h"
#include "util.h"

/* Scalar decoders (exact). */
float qc_e2m1_to_f32(uint8_t code); /* low 4 bits: bit 3 sign, magnitudes {0,.5,1,1.5,2,3,4,6} */
float qc_e8m0_to_f32(uint8_t code); /* 2^(code-127); 0xFF is NaN */

/* Element i of a tensor of any float or integer dtype (BF16, F16, F32, F64,
 * F8_E4M3, F8_E5M2, F8_E8M0, integers) as float. i must be < t->numel. */
float qc_tensor_get_f32(const qc_tensor *t, int64_t i);

/* Checks that every tensor the descriptor's format needs is present, has a
 * usable dtype and exactly the shape the format implies (n, k, group size,
 * block size, bits), and that data covers nbytes. Returns QC_OK or
 * QC_EXIT_CHECKPOINT with a message naming l->name and the tensor at fault.
 * qc_linear_dequant_rows and qc_linear_matmul assume a descriptor that passed.
 * Fields read besides the tensors: bits (gptq, awq: 4; ct-int: 2/4/8),
 * group_size (int formats; <= 0 = one group per row), block_n/block_k
 * (fp8-block), zero_bias (gptq v1: 1), symmetric (int formats without zeros).
 * The ct-int zero point may be packed along N (I32 [ceil(N/pf), G], stored
 * + 2^(bits-1)) or, in older files, one signed value per [N, G]. */
int qc_linear_validate(const qc_linear *l, qc_err *err);

/* After qc_linear_validate: every scale that rows [r0, r0 + nr) use is
 * finite (a NaN or infinite scale would make its whole block NaN), judged on
 * the stored bits; QC_EXIT_CHECKPOINT naming the module and element if not.
 * Reads the scale data, so loaders check where they read the scales anyway:
 * the CPU backend calls this over all rows at load; the GPU repacking checks
 * each scale as it packs it (engine/cuda_repack.c, with the two functions
 * below). Weights themselves are not scanned (an FP8 NaN code shows as
 * non-finite logits, which sampling and scoring refuse). */
int qc_linear_check_scales(const qc_linear *l, int64_t r0, int64_t nr, qc_err *err);
/* For packers that check the scales as they read them: the first of scale
 * elements [off, off + n) of t that is NaN or infinite (E4M3 has no infinity
 * and NaN at S.1111.111; E8M0, U8 in MXFP4 files, NaN at 0xFF), -1 if none;
 * and the error qc_linear_check_scales gives for it. */
int64_t qc_scale_first_nonfinite(const qc_tensor *t, int64_t off, int64_t n);
int qc_linear_scale_error(const qc_linear *l, int64_t element, qc_err *err);

/* Floats of scratch that qc_linear_matmul_rows needs for a tile of
 * nrows rows: nrows * k, or 0 for F32 weights (read in place). */
int64_t qc_linear_tile_floats(const qc_linear *l, int64_t nrows);

/* One tile of a matmul, on the calling thread (the CPU backend's pool splits N
 * into tiles and calls this per task):
 *   y[i*ldy + j] = sum_k W[j][k] * x[i*ldx + k]   for i < m, row0 <= j < row0+nrows
 * scratch holds qc_linear_tile_floats(l, nrows) floats. Each y element is one
 * dot product in a fixed order (8 lanes of k, then a fixed lane sum, then the
 * k tail), so results do not depend on how N or M is split into tiles. */
void qc_linear_matmul_rows(const qc_linear *l, const float *x, int64_t m, int64_t ldx,
                           int64_t row0, int64_t nrows, float *y, int64_t ldy, float *scratch);

/* Whole matmul y[m][n] = x[m][k] . W^T on the calling thread (tests, tools). */
void qc_linear_matmul(const qc_linear *l, const float *x, int64_t m, float *y);

/* Dequantizes the whole matrix into out (n x k floats). */
void qc_linear_dequant(const qc_linear *l, float *out);

#endif
