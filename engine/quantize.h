/* quantize.h — round-to-nearest quantization of a 16/32-bit checkpoint into
 * one of three published layouts (checkpoint-formats.md):
 *
 *   fp8    fp8-block as Qwen's official *-FP8 releases: X.weight F8_E4M3 [N,K] +
 *          X.weight_scale_inv BF16 [ceil(N/128), ceil(K/128)] (a multiplier,
 *          amax/448 per block); quantization_config {quant_method fp8, fmt e4m3,
 *          activation_scheme dynamic, weight_block_size [128,128],
 *          modules_to_not_convert}.
 *   int4   gptq v1 as AutoRound's auto_round:auto_gptq export: X.qweight I32 [K/8,N],
 *          X.qzeros I32 [K/G,N/8] (stored z-1: 0x77777777), X.scales F16 [K/G,N];
 *          symmetric, group G = 128 (or 64 / 32 when some K is not a multiple);
 *          quantization_config {quant_method auto-round, packing_format
 *          auto_round:auto_gptq, bits 4, group_size G, sym true, extra_config for
 *          the modules kept 16-bit}.
 *   nvfp4  compressed-tensors nvfp4-pack-quantized as llm-compressor's NVFP4A16:
 *          X.weight_packed U8 [N,K/2] (low nibble = even k), X.weight_scale
 *          F8_E4M3 [N,K/16], X.weight_global_scale F32 [1] (a divisor, 2688/amax);
 *          quantization_config {quant_method compressed-tensors, format
 *          nvfp4-pack-quantized, config_groups (weights only), ignore}.
 *
 * Quantized: every Linear of the decoder layers and the MTP decoder layer —
 * attention q/k/v/o, GDN in_proj_qkv / in_proj_z / out_proj, MLP and expert
 * gate/up/down (fused 3-D experts are split per expert, as every quantized
 * release stores them). Kept as stored: embeddings, lm_head, norms, conv1d,
 * A_log, dt_bias, GDN in_proj_a/b, routers, mtp.fc, the vision tower, and any
 * Linear whose shape the format cannot hold (listed as not converted).
 *
 * The output directory gets model.safetensors (written to a temporary name,
 * synced and renamed), config.json with the quantization_config, and copies of
 * the other small files (tokenizer, template, generation config). */
#ifndef QC_QUANTIZE_H
#define QC_QUANTIZE_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

typedef enum qc_quant_to { QC_QUANT_FP8 = 0, QC_QUANT_INT4, QC_QUANT_NVFP4 } qc_quant_to;

/* "fp8" / "int4" / "nvfp4" -> target; -1 if unknown. */
int qc_quant_to_parse(const char *s);

typedef struct qc_quant_opts {
    qc_quant_to to;
    int group_size; /* int4 only: 0 = auto (128, else 64, else 32) */
    bool force;     /* overwrite an existing model in dst */
    bool act_order; /* int4 only: groups in a permuted order of K, written as g_idx (GPTQ desc_act) */
} qc_quant_opts;

typedef struct qc_quant_report {
    int group_size;            /* int4: the group used; fp8: 128; nvfp4: 16 */
    int n_quantized;           /* Linears converted */
    int n_kept;                /* Linears left 16-bit (by rule or by shape) */
    int64_t bytes_in, bytes_out; /* tensor bytes of the two model files */
    double rel_err_rms;        /* sqrt(sum |W-Wq|^2 / sum |W|^2) over converted Linears */
    double rel_err_max;        /* worst per-Linear relative Frobenius error */
    char worst[200];           /* that Linear's name */
} qc_quant_report;

/* Quantizes checkpoint src into directory dst. Returns QC_OK or a QC_EXIT_*
 * code with a message: QC_EXIT_CHECKPOINT when src is unusable or already
 * quantized, QC_EXIT_USAGE when dst holds a model and !force,
 * QC_EXIT_RUNTIME for I/O failures. */
int qc_quantize_checkpoint(const char *src, const char *dst, const qc_quant_opts *opts,
                           qc_quant_report *rep, qc_err *err);

/* ---- scalar and per-matrix kernels (exposed for the tests) ---- */

/* Round to nearest even, saturating at +-448; NaN -> 0x7F. */
uint8_t qc_f32_to_e4m3(float x);
/* Nearest E2M1 code (ties to even code), saturating at +-6; bit 3 sign. */
uint8_t qc_f32_to_e2m1(float x);
/* IEEE half, round to nearest even (overflow -> inf). */
uint16_t qc_f32_to_f16(float x);

/* w is [n,k] row-major float. Outputs as laid out in the files. */
void qc_quant_fp8_block(const float *w, int64_t n, int64_t k, uint8_t *q, uint16_t *scale_inv_bf16);
/* Both return 0, or -1 when out of memory (nothing written then).
 * k % group == 0 and n % 8 == 0 required. qweight [k/8][n], qzeros [k/group][n/8],
 * scales (f16 bits) [k/group][n]. g_idx: NULL (group of input kk = kk / group), or
 * each input's group in [0, k/group), every group `group` inputs (act-order). */
int qc_quant_gptq_sym(const float *w, int64_t n, int64_t k, int group, const int32_t *g_idx,
                      int32_t *qweight, int32_t *qzeros, uint16_t *scales_f16);
/* An act-order g_idx for a [.., k] Linear: input kk's group is its rank / group
 * in a random permutation of K seeded by seed (Linears that read the same input
 * get the same seed, as GPTQ's Hessian order is the same for them). */
int qc_quant_act_order(int64_t k, int group, uint64_t seed, int32_t *g_idx);
/* k % 16 == 0 required. packed [n][k/2], scale (e4m3) [n][k/16], *global_scale. */
void qc_quant_nvfp4(const float *w, int64_t n, int64_t k, uint8_t *packed, uint8_t *scale,
                    float *global_scale);

#endif
