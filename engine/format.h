/* format.h — the vocabulary shared by the checkpoint reader, the CPU engine and
 * the CUDA kernels: tensor dtypes, weight formats (the canonical names of
 * checkpoint-formats.md) and the descriptor of one Linear as published.
 *
 * A qc_linear only *points into* the memory-mapped checkpoint; it owns nothing.
 * The checkpoint (ckpt.h) owns the mapping and every descriptor. */
#ifndef QC_FORMAT_H
#define QC_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum qc_dtype {
    QC_DT_INVALID = 0,
    QC_DT_BF16,
    QC_DT_F16,
    QC_DT_F32,
    QC_DT_F64,
    QC_DT_F8_E4M3,
    QC_DT_F8_E5M2,
    QC_DT_F8_E8M0,
    QC_DT_BOOL,
    QC_DT_U8,
    QC_DT_I8,
    QC_DT_U16,
    QC_DT_I16,
    QC_DT_U32,
    QC_DT_I32,
    QC_DT_U64,
    QC_DT_I64,
    QC_DT_COUNT
} qc_dtype;

const char *qc_dtype_name(qc_dtype dt);   /* safetensors spelling, e.g. "F8_E4M3" */
qc_dtype qc_dtype_from_name(const char *s); /* QC_DT_INVALID if unknown */
size_t qc_dtype_size(qc_dtype dt);         /* bytes per element */

#define QC_MAX_DIMS 8

/* One tensor of a (possibly sharded) safetensors checkpoint. data points into
 * a read-only mapping owned by the qc_st set that produced it. */
typedef struct qc_tensor {
    const char *name;
    qc_dtype dtype;
    int ndim;
    int64_t shape[QC_MAX_DIMS];
    int64_t numel;
    const void *data;
    size_t nbytes;
    int shard; /* index into the set's file list, for error messages */
} qc_tensor;

/* t's shape as "[a, b, ...]" into buf (n bytes), for messages. */
void qc_tensor_shape_str(const qc_tensor *t, char *buf, size_t n);

typedef enum qc_format {
    QC_FMT_NONE = 0,
    QC_FMT_BF16,
    QC_FMT_F16,
    QC_FMT_F32,
    QC_FMT_FP8_BLOCK,
    QC_FMT_FP8_TENSOR,
    QC_FMT_FP8_CHANNEL,
    QC_FMT_GPTQ,
    QC_FMT_AWQ,
    QC_FMT_CT_INT,
    QC_FMT_NVFP4_CT,
    QC_FMT_NVFP4_MODELOPT,
    QC_FMT_MXFP4_CT,
    QC_FMT_COUNT
} qc_format;

const char *qc_format_name(qc_format f);   /* "bf16", "fp8-block", "gptq", "nvfp4-ct", ... */
const char *qc_format_family(qc_format f); /* "BF16", "FP8", "INT4", "NVFP4", "MXFP4" */

/* One Linear (y = W x, W is N x K) exactly as stored. Which tensor pointers are
 * set depends on the format (see checkpoint-formats.md):
 *   bf16/f16/f32   weight
 *   fp8-block      weight, scale (= weight_scale_inv, a multiplier), block_n x block_k
 *   fp8-tensor     weight, scale (scalar), input_scale (optional)
 *   fp8-channel    weight, scale [N,1]
 *   gptq           weight (= qweight [K/8,N]), zeros (= qzeros), scale (= scales), g_idx (optional)
 *   awq            weight (= qweight [K,N/8]), zeros, scale
 *   ct-int         weight (= weight_packed [N,K/8]), scale, zeros (optional), g_idx (optional)
 *   nvfp4-ct       weight (= weight_packed), scale (e4m3 [N,K/16]), global_scale (divisor)
 *   nvfp4-modelopt weight (U8), scale (e4m3), global_scale (= weight_scale_2, multiplier)
 *   mxfp4-ct       weight (= weight_packed), scale (e8m0 [N,K/32])
 * For a fused 3-D MoE tensor, `expert` selects the [N,K] slice (data already offset). */
typedef struct qc_linear {
    char name[160]; /* tensor prefix, e.g. model.language_model.layers.0.mlp.gate_proj */
    qc_format format;
    int64_t n, k;
    int bits;       /* 16, 8, 4 (ct-int may carry 8) */
    int group_size; /* along K: int4 groups, 16 nvfp4, 32 mxfp4; 0 if none */
    int block_n, block_k; /* fp8-block */
    bool symmetric;
    int zero_bias;  /* gptq v1 stores z-1: add 1 when reading; 0 otherwise */
    const qc_tensor *weight, *scale, *zeros, *g_idx, *global_scale, *input_scale;
    const qc_tensor *weight_shape; /* ct-int: the [N, K] the file states (checked against n, k) */
    int64_t bytes;  /* bytes of every tensor of this module in the files */
} qc_linear;

/* Dequantizes rows [row0, row0+nrows) of W into out (nrows x k floats), exactly
 * by the format's rule. Implemented in dequant.c. */
void qc_linear_dequant_rows(const qc_linear *l, int64_t row0, int64_t nrows, float *out);

#endif
