/* synth.h — full-size random checkpoints in published layouts, so that load
 * speed and kernels can be measured from real files without downloading
 * anything (`qchat synth`).
 *
 * A synthetic checkpoint has the real tensor names, shapes, dtypes and
 * per-module format mix of the release it imitates, a VL-wrapper config.json
 * (text_config nesting, prefix model.language_model.), generation_config.json,
 * shards of at most --shard-size bytes with model.safetensors.index.json (one
 * model.safetensors when everything fits), and a minimal byte-level tokenizer
 * (256 byte tokens, merge-less filler tokens up to <|endoftext|>, then the
 * Qwen chat tokens at their real ids, contiguous as Hugging Face requires;
 * vocab_size stays the model's, ids past </think> are embedding padding): good
 * for load, inspect, bench and test runs, not for chatting. It has no vision
 * tower. Formats and their mixes:
 *
 *   bf16            everything BF16 (A_log, linear_attn.norm F32 as Qwen3.5); MTP BF16
 *   fp8             Qwen official *-FP8: fp8-block [128,128], BF16 weight_scale_inv; MTP FP8
 *   int4-gptq       AutoRound auto_round:auto_gptq: gptq v1 sym g128, F16 scales,
 *                   in_proj_a/b listed 16-bit in extra_config; MTP BF16
 *   int4-ct         compressed-tensors pack-quantized W4A16 g128, sym (or --asym with
 *                   weight_zero_point); MTP dropped (llm-compressor default)
 *   nvfp4           compressed-tensors nvfp4-pack-quantized (llm-compressor NVFP4, with
 *                   input_global_scale); MTP dropped
 *   nvfp4-modelopt  ModelOpt MIXED_PRECISION: NVFP4 MLP + FP8 per-tensor attention and
 *                   GDN projections (weight_scale, input_scale), hf_quant_config.json; MTP BF16
 * In every format embed_tokens, lm_head, norms, conv1d, A_log, dt_bias and
 * linear_attn.in_proj_a/b stay 16-bit (32-bit where Qwen3.5 stores F32).
 *
 * Values are random but sane (xorshift bits placed directly in packed form):
 * dequantized weights have an RMS of about 0.02, every scale is finite and
 * positive, zero-centred norms are 0 (scale 1), so a forward pass gives finite
 * logits. Deterministic for a given seed. */
#ifndef QC_SYNTH_H
#define QC_SYNTH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "util.h"

typedef enum qc_synth_format {
    QC_SYNTH_BF16 = 0,
    QC_SYNTH_FP8,
    QC_SYNTH_INT4_GPTQ,
    QC_SYNTH_INT4_CT,
    QC_SYNTH_NVFP4,
    QC_SYNTH_NVFP4_MODELOPT,
    QC_SYNTH_FORMAT_COUNT
} qc_synth_format;

/* "bf16", "fp8", "int4-gptq", "int4-ct", "nvfp4", "nvfp4-modelopt" -> format; -1 if unknown. */
int qc_synth_format_parse(const char *s);
const char *qc_synth_format_name(qc_synth_format f);

/* Text-model shape of one real size (qwen35-model.md's table). */
typedef struct qc_synth_shape {
    const char *name; /* "tiny", "0.8b", "9b", "27b" */
    int hidden, layers, intermediate;
    int heads, kv_heads, head_dim;
    int lin_k_heads, lin_v_heads, lin_k_dim, lin_v_dim;
    int vocab;
    bool tied;
    int eos_id, im_start_id, im_end_id, think_id, end_think_id;
} qc_synth_shape;

/* The shape called name, or NULL. qc_synth_size_names(): "tiny, 0.8b, 9b, 27b". */
const qc_synth_shape *qc_synth_size_find(const char *name);
const char *qc_synth_size_names(void);

typedef struct qc_synth_opts {
    const qc_synth_shape *shape;
    qc_synth_format format;
    bool asym;           /* int4-ct only: asymmetric, with weight_zero_point */
    bool force;          /* replace an existing checkpoint directory */
    int64_t shard_bytes; /* largest shard's tensor bytes; 0 = 5e9 (as save_pretrained's "5GB") */
    uint64_t seed;       /* 0 = a fixed default */
    FILE *progress;      /* progress lines (NULL: silent) */
    size_t buffer_bytes; /* each of the two write buffers; 0 = 64 MiB (tests use odd sizes) */
} qc_synth_opts;

/* The file plan: what would be written, without writing it. */
typedef struct qc_synth_plan qc_synth_plan;

int qc_synth_plan_build(const qc_synth_opts *o, qc_synth_plan **out, qc_err *err);
void qc_synth_plan_free(qc_synth_plan *p);
size_t qc_synth_plan_tensor_count(const qc_synth_plan *p);
int64_t qc_synth_plan_tensor_bytes(const qc_synth_plan *p); /* sum of tensor data = index total_size */
int64_t qc_synth_plan_file_bytes(const qc_synth_plan *p);   /* all shard files, headers included */
size_t qc_synth_plan_shard_count(const qc_synth_plan *p);
/* Shard i: file name, file size (header included) and tensor count. */
const char *qc_synth_plan_shard_name(const qc_synth_plan *p, size_t i);
int64_t qc_synth_plan_shard_file_bytes(const qc_synth_plan *p, size_t i);
size_t qc_synth_plan_shard_tensors(const qc_synth_plan *p, size_t i);

typedef struct qc_synth_report {
    int64_t file_bytes; /* shard files written */
    size_t shards, tensors;
    double seconds;     /* writing the shards */
} qc_synth_report;

/* Writes the checkpoint into outdir: built in a temporary sibling directory,
 * files synced, then renamed into place. Returns QC_EXIT_USAGE when outdir
 * exists and is not empty and !force (or, with force, when it does not look
 * like a checkpoint: no config.json), QC_EXIT_RUNTIME for I/O failures and too
 * little free disk space (checked before writing anything). */
int qc_synth_write(const char *outdir, const qc_synth_opts *o, qc_synth_report *rep, qc_err *err);

#endif
