/* qchat.h — the engine's one public header. The CLI front ends and the TUI
 * talk to the model only through this.
 *
 *   qc_model    a loaded checkpoint: config, tokenizer, weights on a backend.
 *               Immutable after load; may be shared by several sessions.
 *   qc_session  one conversation on one model: its token history, the KV cache
 *               of the full-attention layers and the linear-attention conv and
 *               recurrent state. Mutable; one thread at a time.
 *
 * Every fallible call returns 0 or a QC_EXIT_* code (util.h) and fills qc_err. */
#ifndef QCHAT_H
#define QCHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct qc_model qc_model;
typedef struct qc_session qc_session;

typedef enum qc_device { QC_DEVICE_AUTO = 0, QC_DEVICE_CPU, QC_DEVICE_CUDA } qc_device;

typedef struct qc_load_opts {
    qc_device device;
    int threads; /* CPU threads; 0 = all cores */
    /* CPU backend: bytes of float32 copies of dequantized weights made at load
     * (decode then streams plain floats instead of re-dequantizing every
     * token). 0 = default (up to half the available memory), -1 = none
     * (every matmul dequantizes its tiles on the fly). Results are identical. */
    int64_t cpu_dequant_budget;
} qc_load_opts;

int qc_model_load(const char *dir, const qc_load_opts *opts, qc_model **out, qc_err *err);
void qc_model_free(qc_model *m);

/* Facts about a loaded model the front ends need. */
typedef struct qc_model_info {
    const char *dir;
    const char *family;  /* dominant weight family: "BF16", "FP8", "INT4", "NVFP4", ... */
    const char *device;  /* "cpu" or "cuda:<name>" */
    int vocab_size;      /* logits row length (padded embedding rows) */
    int n_tokens;        /* tokenizer ids: ids >= this are never sampled */
    int hidden_size;
    int n_layers;
    bool thinking_default;
} qc_model_info;
void qc_model_get_info(const qc_model *m, qc_model_info *info);

/* The model's tokenizer (tokenizer.h) and parsed config (config.h: eos ids,
 * generation defaults), owned by the model, for front ends that encode
 * prompts, decode replies and set up sampling. */
struct qc_tokenizer;
struct qc_config;
const struct qc_tokenizer *qc_model_tokenizer(const qc_model *m);
const struct qc_config *qc_model_config(const qc_model *m);

/* Memory held by the engine, by what holds it (bytes). On CUDA the numbers
 * come from the engine's own tagged allocations reconciled with cudaMemGetInfo;
 * on the CPU from the process's allocations by the same categories: W_* are
 * the checkpoint's (memory-mapped) weight bytes by family, the CPU backend's
 * float32 copies of dequantized weights count in W_OTHER, RUNTIME is the rest
 * of the resident set, total and FREE are the host's MemTotal/MemAvailable.
 * OTHER_PROCS: device memory of other processes (CUDA, where NVML lists this
 * process; else 0 and it reads as RUNTIME). RUNTIME and OTHER_PROCS describe
 * the device (or process), not one model: a caller adding up several models'
 * reports takes them once (and takes the models' counted bytes out of
 * RUNTIME, which holds everything this report's model does not count). */
enum {
    QC_MEM_W_BF16, QC_MEM_W_FP8, QC_MEM_W_INT4, QC_MEM_W_NVFP4, QC_MEM_W_OTHER,
    QC_MEM_KV, QC_MEM_GDN_STATE, QC_MEM_SCRATCH, QC_MEM_RUNTIME, QC_MEM_OTHER_PROCS, QC_MEM_FREE,
    QC_MEM_COUNT
};
typedef struct qc_mem_report {
    uint64_t bytes[QC_MEM_COUNT];
    /* Shared tensors this model uses while another resident model is charged
     * for them (counted once, in bytes[] of that one): not in bytes[]; its
     * own footprint alone is bytes[0, RUNTIME) + borrowed. */
    uint64_t borrowed;
    uint64_t total; /* device (or host) total */
} qc_mem_report;
void qc_model_mem(const qc_model *m, const qc_session *s, qc_mem_report *rep);

/* Statistics callback: the session reports its phases and every token. */
typedef enum qc_phase { QC_PHASE_PREFILL, QC_PHASE_DECODE } qc_phase;
typedef struct qc_event {
    qc_phase phase;
    int done, total; /* PREFILL: tokens of this prefill done (0 at the start, then after
                        each chunk); DECODE: both = session length after the token */
    double t;        /* qc_now() when the event happened */
} qc_event;
typedef void (*qc_event_fn)(void *user, const qc_event *ev);

int qc_session_new(qc_model *m, int max_ctx, qc_session **out, qc_err *err);
void qc_session_free(qc_session *s);
void qc_session_set_events(qc_session *s, qc_event_fn fn, void *user);

/* Feeds n tokens (prefill in chunks of `chunk`, 0 = default). When all_logits
 * is not NULL it receives n x vocab_size floats, else only the last row is kept
 * (qc_session_logits). */
int qc_session_prefill(qc_session *s, const int32_t *ids, int n, int chunk, float *all_logits,
                       qc_err *err);
/* The same, also returning every position's final-normed hidden state
 * (n x hidden_size floats) when all_norm is not NULL (score's test hook). */
int qc_session_prefill_full(qc_session *s, const int32_t *ids, int n, int chunk, float *all_logits,
                            float *all_norm, qc_err *err);
/* One token; logits of the next position available from qc_session_logits. */
int qc_session_step(qc_session *s, int32_t id, qc_err *err);
/* The last fed position's logits row (vocab_size floats), NULL before any
 * token or when it cannot be read. On a GPU the row stays on the device after
 * a step or prefill and is copied here only when this is called. */
const float *qc_session_logits(const qc_session *s);
/* Draws the next token from the last fed position with the sampler
 * (sampler.h) and records it there, exactly as
 * qc_sampler_next(smp, qc_session_logits(s), vocab_size); on a GPU the
 * penalties and the candidate selection run on the device and only the
 * candidates come back (the whole row only when top-k is off). *next is -1
 * when no id has a finite logit. */
struct qc_sampler;
int qc_session_sample(qc_session *s, struct qc_sampler *smp, int32_t *next, qc_err *err);
/* The final-normed hidden state of the last fed position (D floats). */
const float *qc_session_final_norm(const qc_session *s);
int qc_session_len(const qc_session *s);
const int32_t *qc_session_tokens(const qc_session *s);
void qc_session_reset(qc_session *s);
/* Keeps only the first n tokens (recomputes the linear-attention state, whose
 * recurrence cannot be undone, by prefilling those n tokens again). */
int qc_session_rewind(qc_session *s, int n, qc_err *err);

#endif
