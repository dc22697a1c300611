/* cuda_backend.h — the CUDA backend (internal to the engine; front ends use
 * qchat.h). Besides the qc_backend table it exposes a small direct API used
 * by `qchat bench`: a model with random weights of a real shape created
 * directly on the GPU, prefill and graph-replayed decode with on-device
 * sampling (no logits copy), and the numbers the benchmark reports.
 *
 * Everything here exists only in builds with QC_HAVE_CUDA. */
#ifndef QC_CUDA_BACKEND_H
#define QC_CUDA_BACKEND_H

#ifdef QC_HAVE_CUDA

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "cuda_load.h"
#include "kernels.h"

extern const qc_backend qc_cuda_backend;

/* True when a CUDA device is usable (cudaGetDeviceCount > 0). */
bool qc_cuda_available(void);

/* The dense shapes the CUDA engine runs (MoE is not supported yet). */
typedef struct qc_cuda_shape {
    int vocab, n_tokens, D, n_layers, I, H, KV, hd, rot;
    float theta, eps;
    int Hk, Hv, dk, dv;
    int E, K, Im, Is; /* MoE synthetic shapes: experts, chosen per token, widths (E = 0: dense) */
    bool tied;
    bool full[QC_MAX_LAYERS];
} qc_cuda_shape;

/* Shape of a real size by name: "0.8b", "9b", "27b", "35b-a3b" (qwen35-model.md). */
int qc_cuda_shape_by_name(const char *name, qc_cuda_shape *sh, qc_err *err);

typedef struct qc_cuda_model qc_cuda_model;
typedef struct qc_cuda_sess qc_cuda_sess;

/* Random BF16 weights of shape sh, generated on the GPU. */
int qc_cuda_model_synthetic(const qc_cuda_shape *sh, uint64_t seed, qc_cuda_model **out, qc_err *err);
/* The same in a published format mix, the quantized weights made directly in
 * the kernels' layouts: fmt "bf16", "fp8" (Qwen FP8: fp8-block, in_proj_a/b
 * BF16), "int4" (GPTQ g128 sym, same mix), "nvfp4" (compressed-tensors NVFP4
 * everywhere), "nvfp4-mixed" (NVFP4 MLP, FP8 attention/GDN); lm_head and the
 * embedding BF16 in all. */
int qc_cuda_model_synthetic_fmt(const qc_cuda_shape *sh, const char *fmt, uint64_t seed, qc_cuda_model **out,
                                qc_err *err);
/* Seconds the weight upload of a checkpoint load took (0 for synthetic). */
double qc_cuda_load_seconds(const qc_cuda_model *cm);
/* Where the load's time went: planning and device allocation (one thread),
 * then the loader pool's run (cuda_load.h: threads, buffers, summed per-thread
 * seconds of pre-faulting, repacking, waiting for the ring and queueing). */
void qc_cuda_load_report(const qc_cuda_model *cm, double *plan_s, qc_load_stats *st);
/* Pinned host -> device copy bandwidth (256 MiB, one stream). */
int qc_cuda_h2d_bandwidth(double *bytes_per_s, qc_err *err);
/* Device bytes of quantization scales (and g_idx permutations); the memory
 * report counts them inside their weight family. */
uint64_t qc_cuda_scale_bytes(const qc_cuda_model *cm);
void qc_cuda_model_free(qc_cuda_model *cm);
/* The CUDA model behind a loaded qc_model (NULL when it runs on the CPU). */
qc_cuda_model *qc_cuda_model_of(qc_model *m);
const qc_cuda_shape *qc_cuda_model_shape(const qc_cuda_model *cm);
/* The tokenizer's id count (<= vocab), known after the weights went up (the
 * tokenizer loads beside them, model.c); before any session is made. */
void qc_cuda_model_set_tokens(qc_cuda_model *cm, int n_tokens);
const char *qc_cuda_device_name(const qc_cuda_model *cm);

/* Prints per-category prefill times to stderr after every multi-token chunk
 * (each launch synchronised: slow; also QCHAT_CUDA_PROFILE=1). */
void qc_cuda_set_profile(qc_cuda_model *cm, bool on);

/* max_ctx: the session's context (0 = unbounded). KV for min(max_ctx, 4096)
 * positions is allocated at once, then grown as the session fills, never
 * past max_ctx. */
int qc_cuda_sess_new(qc_cuda_model *cm, int max_ctx, qc_cuda_sess **out, qc_err *err);
/* Makes the KV caches hold n positions now, not as the session fills (bench:
 * no allocation inside a timed run). */
int qc_cuda_sess_reserve(qc_cuda_sess *cs, int n, qc_err *err);
void qc_cuda_sess_free(qc_cuda_sess *cs);
void qc_cuda_sess_reset(qc_cuda_sess *cs);
/* Runs ids[0..n) at positions pos0.. ; the last row's logits stay on the
 * device. Synchronous. */
int qc_cuda_prefill(qc_cuda_sess *cs, const int32_t *ids, int n, int pos0, qc_err *err);
/* One decode step (the captured CUDA graph) at position pos, then sampling on
 * the device; *next receives the sampled id (4 bytes copied back). */
int qc_cuda_decode(qc_cuda_sess *cs, int32_t id, int pos, const qk_sample_params *sp, int32_t *next,
                   qc_err *err);

/* Samples from the last logits row of the latest prefill/decode (device). */
int qc_cuda_sample(qc_cuda_sess *cs, const qk_sample_params *sp, int32_t *next, qc_err *err);

/* Device sampling (the qc_sampler of sampler.h on a device row of logits):
 * buffers for rows of up to vocab floats and histories of n_tokens ids, used
 * on stream st. qc_cuda_sampling_draw returns in *next the id
 * qc_sampler_sample(smp, row, vocab) would return (without recording it),
 * copying back only the top candidates when top-k allows, else the row into
 * host_row ([vocab] floats; *copied_row tells). *nonfinite: how many of the
 * ids smp can draw have a NaN or infinite logit (the draw treats NaN as -inf,
 * as qc_sampler_sample does; sessions refuse such a row, sampler.h). */
typedef struct qc_cuda_sampling qc_cuda_sampling;
int qc_cuda_sampling_new(int vocab, int n_tokens, qk_stream st, qc_cuda_sampling **out, qc_err *err);
void qc_cuda_sampling_free(qc_cuda_sampling *ds);
int qc_cuda_sampling_draw(qc_cuda_sampling *ds, const float *d_logits, int vocab, qc_sampler *smp, float *host_row,
                          int32_t *next, bool *copied_row, int64_t *nonfinite, qc_err *err);
uint64_t qc_cuda_sampling_bytes(const qc_cuda_sampling *ds);
/* The session hooks (backend.h) of the CUDA backend. */
extern const qc_backend_sampling qc_cuda_backend_sampling;

/* Per-kernel timing of one decode step at context ctx: each launch of the
 * step timed alone (events, median of reps) on the model's real matrices and
 * the session's state. Fills up to max rows. Leaves
 * the session's state changed: reset it afterwards. *nrows gets the count. */
typedef struct qc_cuda_prof_row {
    char name[48];
    int per_token; /* launches per decode step */
    double us;     /* median time of one launch */
    double bytes;  /* bytes one launch must read (0 when not counted) */
} qc_cuda_prof_row;
int qc_cuda_profile_decode(qc_cuda_sess *cs, int ctx, qc_cuda_prof_row *rows, int max, int *nrows,
                           qc_err *err);

/* Bytes one decode step must read at context length ctx: weights, GDN and
 * conv state (read and written), and the K/V cache. */
int64_t qc_cuda_decode_bytes(const qc_cuda_model *cm, int ctx);
/* Device memory by category (the qc_mem_report of qchat.h), reconciled with
 * cudaMemGetInfo: what the engine did not allocate shows as runtime. */
void qc_cuda_mem(const qc_cuda_model *cm, const qc_cuda_sess *cs, qc_mem_report *rep);
/* Achievable bandwidth: a large device-to-device copy, bytes read + written
 * per second. */
int qc_cuda_copy_bandwidth(double *bytes_per_s, qc_err *err);

#endif
#endif
