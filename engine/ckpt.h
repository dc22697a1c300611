/* ckpt.h — an opened checkpoint directory: its config, its memory-mapped
 * tensors, and one qc_linear descriptor (format.h) for every Linear of the
 * language model, the lm_head and the MTP head, classified from the tensors
 * present (checkpoint-formats.md) and checked against the config's shapes.
 *
 * Names: every Linear is looked up by its full tensor prefix, e.g.
 *   "model.language_model.layers.0.linear_attn.in_proj_qkv"  (VL wrapper)
 *   "model.layers.3.self_attn.q_proj"                         (text-only)
 *   "lm_head", "mtp.fc", "mtp.layers.0.mlp.down_proj"
 * Routed MoE experts always have per-expert names,
 *   "<P>layers.L.mlp.experts.E.gate_proj" / up_proj / down_proj,
 * whichever layout the file uses. For the fused BF16 layout
 * (experts.gate_up_proj [E,2I,D], experts.down_proj [E,D,I]) the descriptors
 * are [N,K] views into the fused tensor: gate = rows 0..I-1 of expert E's
 * [2I,D] slice, up = rows I..2I-1, down = expert E's [D,I] slice. A view's
 * qc_tensor is owned by the checkpoint; its name is the fused tensor's.
 *
 * lm_head absent and tie_word_embeddings set: qc_ckpt_lm_head() is a bf16
 * view of the embedding (bytes 0: nothing extra is stored).
 *
 * The checkpoint owns the mapping, the config and every descriptor; pointers
 * returned stay valid until qc_ckpt_free. Opening reads headers only. */
#ifndef QC_CKPT_H
#define QC_CKPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "format.h"
#include "safetensors.h"
#include "util.h"

typedef struct qc_ckpt qc_ckpt;

/* What a Linear is for; inspect groups its precision map by this. */
typedef enum qc_module_kind {
    QC_MOD_ATTN = 0,      /* self_attn q/k/v/o_proj */
    QC_MOD_GDN,           /* linear_attn in_proj_qkv, in_proj_z, out_proj */
    QC_MOD_GDN_GATE,      /* linear_attn in_proj_a, in_proj_b */
    QC_MOD_MLP,           /* dense mlp gate/up/down_proj */
    QC_MOD_EXPERT,        /* routed MoE experts */
    QC_MOD_SHARED_EXPERT, /* mlp.shared_expert.* */
    QC_MOD_ROUTER,        /* mlp.gate, mlp.shared_expert_gate */
    QC_MOD_LM_HEAD,
    QC_MOD_MTP,           /* every Linear under mtp. (fc and its decoder layer) */
    QC_MOD_COUNT
} qc_module_kind;

/* "attention", "linear-attn", "linear-attn-gates", "mlp", "experts",
 * "shared-expert", "router", "lm_head", "mtp". */
const char *qc_module_kind_name(qc_module_kind k);

typedef enum qc_expert_proj { QC_EXPERT_GATE = 0, QC_EXPERT_UP, QC_EXPERT_DOWN } qc_expert_proj;

/* One Linear of the checkpoint with where it sits. */
typedef struct qc_module {
    qc_linear lin;
    qc_module_kind kind;
    int layer;   /* decoder layer (MTP: index within mtp.layers), -1 for lm_head / mtp.fc */
    int expert;  /* routed expert index, -1 otherwise */
    bool mtp;    /* under mtp. */
    bool tied;   /* lm_head that reuses the embedding */
} qc_module;

/* Weight families of the memory estimate. Unquantized tensors (bf16, f16,
 * f32: embeddings, norms, conv, A_log, 16-bit Linears) count as BF16. */
typedef enum qc_family {
    QC_FAM_BF16 = 0,
    QC_FAM_FP8,
    QC_FAM_INT4,
    QC_FAM_NVFP4,
    QC_FAM_MXFP4,
    QC_FAM_COUNT
} qc_family;
const char *qc_family_name(qc_family f); /* same spelling as qc_format_family */
qc_family qc_format_to_family(qc_format f);
/* The family holding most Linear bytes of the decoder layers ("BF16" when
 * nothing is quantized): how the format bar and reply tags name a checkpoint. */
const char *qc_ckpt_dominant_family(const qc_ckpt *ck);

typedef struct qc_ckpt_mem {
    int64_t weights_bytes[QC_FAM_COUNT]; /* resident: language model + lm_head + MTP */
    int64_t weights_total;
    int64_t linear_bytes;      /* of which Linears (all modules) */
    int64_t mtp_bytes;         /* of which the MTP head (all its tensors) */
    int64_t mtp_weights_bytes[QC_FAM_COUNT]; /* ... by family (neither engine loads them: no speculative decoding) */
    int64_t skipped_bytes;     /* in the files but not loaded (vision tower, unknown) */
    int64_t kv_bytes_per_token;     /* K+V of the full-attention layers, BF16 */
    int64_t mtp_kv_bytes_per_token; /* the MTP layer's own cache, BF16 (0 without MTP) */
    int64_t gdn_state_bytes;   /* fp32 recurrent state of one sequence: Lin * Hv * dk * dv * 4 */
    int64_t gdn_conv_bytes;    /* conv state of one sequence: Lin * conv_dim * (kernel-1) * 4 (fp32) */
    int64_t ctx;               /* context the total is for */
    int64_t total_bytes;       /* weights_total + ctx * (kv + mtp_kv) + gdn_state + gdn_conv */
} qc_ckpt_mem;

/* Opens dir: config, tensors, classification and shape checks. On failure
 * returns QC_EXIT_CHECKPOINT (or QC_EXIT_RUNTIME for I/O / memory) with a
 * one-line message naming the file and the fault. */
int qc_ckpt_open(const char *dir, qc_ckpt **out, qc_err *err);
void qc_ckpt_free(qc_ckpt *ck);

const qc_config *qc_ckpt_config(const qc_ckpt *ck);
const qc_st *qc_ckpt_st(const qc_ckpt *ck);
const char *qc_ckpt_dir(const qc_ckpt *ck);

/* Any tensor by full name (NULL when absent). */
const qc_tensor *qc_ckpt_tensor(const qc_ckpt *ck, const char *full_name);
const qc_tensor *qc_ckpt_tensorf(const qc_ckpt *ck, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A Linear by full prefix (NULL when the checkpoint has no such Linear). */
const qc_linear *qc_ckpt_linear(const qc_ckpt *ck, const char *prefix);
const qc_linear *qc_ckpt_linearf(const qc_ckpt *ck, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Routed expert e of the MoE block whose prefix is mlp_prefix (e.g.
 * "model.language_model.layers.2.mlp" or "mtp.layers.0.mlp"). */
const qc_linear *qc_ckpt_expert(const qc_ckpt *ck, const char *mlp_prefix, int e, qc_expert_proj p);
/* True when that block's experts come from the fused 3-D tensors. */
bool qc_ckpt_experts_fused(const qc_ckpt *ck, const char *mlp_prefix);

const qc_tensor *qc_ckpt_embed(const qc_ckpt *ck);
const qc_linear *qc_ckpt_lm_head(const qc_ckpt *ck);
bool qc_ckpt_lm_head_tied(const qc_ckpt *ck);
/* MTP head present (mtp.fc and its layers found and loadable). */
bool qc_ckpt_has_mtp(const qc_ckpt *ck);

/* All Linears in a stable order (layer by layer, then lm_head, then MTP). */
size_t qc_ckpt_module_count(const qc_ckpt *ck);
const qc_module *qc_ckpt_module_at(const qc_ckpt *ck, size_t i);

/* True when t is loaded (language model, lm_head, MTP); false for the
 * vision tower and any other tensor the engine does not use. */
bool qc_ckpt_tensor_resident(const qc_ckpt *ck, const qc_tensor *t);

/* Memory estimate for one sequence of ctx tokens. */
void qc_ckpt_memory(const qc_ckpt *ck, int64_t ctx, qc_ckpt_mem *mem);

/* Family a non-Linear tensor would count in (by dtype). */
qc_family qc_dtype_family(qc_dtype dt);

#endif
