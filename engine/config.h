/* config.h — what config.json, generation_config.json, hf_quant_config.json
 * and tokenizer_config.json say about a Qwen3.5 / Qwen3.6 checkpoint.
 *
 * Language-model fields are read from `text_config` when present (the
 * vision-language wrapper), else from the top level (text-only files). Both
 * rope layouts are accepted (`rope_parameters` object or top-level
 * rope_theta / partial_rotary_factor), and `layer_types` is derived from
 * `full_attention_interval` (default 4) when absent.
 *
 * qc_config is a plain value (fixed-size arrays, no heap): copy it freely. */
#ifndef QC_CONFIG_H
#define QC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define QC_MAX_LAYERS 512
#define QC_MAX_EOS 16
#define QC_PATH_MAX 4096

/* quantization_config (config.json) or hf_quant_config.json: parameters only.
 * The format of each Linear is decided from its tensors (ckpt.h); these
 * values supply what the tensors cannot say (bits of ct-int, symmetry, the
 * GPTQ zero convention) and are cross-checked against shapes. */
typedef struct qc_quant_config {
    bool present;
    char quant_method[32];  /* "fp8", "gptq", "awq", "auto-round", "compressed-tensors", "modelopt" */
    char format[48];        /* compressed-tensors "format" / auto-round "packing_format" /
                               gptq "checkpoint_format" / modelopt "quant_algo" */
    int bits;               /* 0 when not stated */
    int group_size;         /* 0 when not stated; -1 = per channel */
    bool sym;               /* symmetric (true when not stated) */
    bool all_asym;          /* compressed-tensors: every group with weights says symmetric: false */
    bool per_module;        /* some modules may have other quantized bits or group size than
                               `bits` / `group_size`: per-module overrides (AutoRound
                               extra_config, GPTQ dynamic) or several compressed-tensors
                               config groups; their tensors then decide */
    bool desc_act;          /* gptq act-order (g_idx meaningful) */
    int block_n, block_k;   /* fp8 weight_block_size; 0 when absent */
    bool zeros_plus_one;    /* gptq v1 convention: stored zero = z - 1 (so zero_bias = 1) */
    char activation_scheme[16]; /* fp8: "dynamic" / "static" */
} qc_quant_config;

/* generation_config.json: has_* says whether the file set the field. */
typedef struct qc_gen_config {
    bool present;
    int eos_ids[QC_MAX_EOS];
    int n_eos;
    bool has_temperature, has_top_k, has_top_p, has_min_p;
    bool has_presence_penalty, has_repetition_penalty;
    bool do_sample;
    float temperature, top_p, min_p, presence_penalty, repetition_penalty;
    int top_k;
} qc_gen_config;

typedef enum qc_template_src {
    QC_TEMPLATE_NONE = 0,
    QC_TEMPLATE_JINJA_FILE,       /* chat_template.jinja: path is the template itself */
    QC_TEMPLATE_TOKENIZER_CONFIG, /* tokenizer_config.json's "chat_template" string */
} qc_template_src;

typedef struct qc_config {
    char dir[QC_PATH_MAX];
    char architecture[96];   /* architectures[0], "" when absent */
    char model_type[64];     /* of the text config, e.g. "qwen3_5_text", "qwen3_5_moe_text" */
    bool has_text_config;    /* VL wrapper */
    bool has_vision;         /* vision_config present (tower bytes are skipped) */
    bool is_moe;             /* num_experts > 0 */

    /* Weight-name prefix of the language model: "model.language_model." in the
     * VL wrapper, "model." in text-only files (decided by ckpt from the tensors
     * present when the config is ambiguous). */
    char prefix[32];

    int vocab_size;
    int hidden_size;
    int intermediate_size;   /* dense MLP; 0 in MoE configs */
    int num_hidden_layers;
    bool layer_full[QC_MAX_LAYERS]; /* true: full_attention, false: linear_attention */
    int n_full_layers, n_linear_layers;
    int full_attention_interval; /* as read or default 4 (only used when layer_types absent) */

    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;
    int linear_num_key_heads;    /* Hk */
    int linear_num_value_heads;  /* Hv */
    int linear_key_head_dim;     /* dk */
    int linear_value_head_dim;   /* dv */
    int linear_conv_kernel_dim;  /* 4 */

    double rms_norm_eps;
    double rope_theta;
    double partial_rotary_factor;
    int rotary_dim;              /* head_dim * partial_rotary_factor (even) */
    int mrope_section[3];
    bool mrope_interleaved;

    bool tie_word_embeddings;    /* text config value, else top level; default false */
    int eos_ids[QC_MAX_EOS];     /* config.json eos_token_id (int or list) */
    int n_eos;
    int mtp_num_hidden_layers;
    char mamba_ssm_dtype[16];

    /* MoE (0 when dense) */
    int num_experts;
    int num_experts_per_tok;
    int moe_intermediate_size;
    int shared_expert_intermediate_size;

    qc_quant_config quant;
    qc_gen_config gen;

    qc_template_src template_src;
    char template_path[QC_PATH_MAX]; /* chat_template.jinja or tokenizer_config.json */
} qc_config;

/* Reads dir/config.json (required), dir/generation_config.json and
 * dir/hf_quant_config.json (optional), and locates the chat template.
 * QC_EXIT_CHECKPOINT when config.json is missing, unparsable, lacks a required
 * field or holds an impossible value (message names file and field). */
int qc_config_load(const char *dir, qc_config *cfg, qc_err *err);

/* Parses config.json text only (no other files); label names it in errors.
 * The fuzz target uses this. */
int qc_config_parse(const char *json, size_t len, const char *label, qc_config *cfg, qc_err *err);

/* Parses generation_config.json text into cfg->gen. */
int qc_config_parse_generation(const char *json, size_t len, const char *label, qc_config *cfg,
                               qc_err *err);

/* Channels of the linear-attention conv (and of in_proj_qkv): 2*Hk*dk + Hv*dv. */
int qc_config_conv_dim(const qc_config *cfg);

/* True when generation stops on id (generation_config.json eos list when
 * present, else config.json's). */
bool qc_config_is_eos(const qc_config *cfg, int id);

#endif
