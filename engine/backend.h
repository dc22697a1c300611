/* backend.h — what a compute backend (CPU now, CUDA later) sees of a model
 * and a session, and the small function table it implements (internal to the
 * engine; front ends use qchat.h only).
 *
 * model.c opens the checkpoint and resolves every weight a forward pass needs
 * into qc_model_weights (qc_linear descriptors into the mapped files plus f32
 * copies of the small vectors), checking each against the config; the
 * backend then prepares what it needs from that (the CPU backend computes
 * straight from the mapped files; a GPU backend uploads). session.c keeps
 * the token history and calls forward() on chunks of new tokens. */
#ifndef QC_BACKEND_H
#define QC_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "ckpt.h"
#include "config.h"
#include "format.h"
#include "qchat.h"
#include "sampler.h"
#include "tokenizer.h"

/* One decoder layer's weights. Unused groups are NULL. */
typedef struct qc_layer_weights {
    bool full;                 /* full attention, else Gated DeltaNet */
    float *in_norm, *post_norm; /* [D] raw weights (the 1+w is applied in the norm) */
    /* Gated DeltaNet */
    const qc_linear *qkv, *z, *b, *a, *out;
    float *conv_w;             /* [conv_dim][kernel] */
    float *dt_bias;            /* [Hv] */
    float *neg_exp_a;          /* [Hv] = -exp(A_log), formed once in fp32 */
    float *gdn_norm;           /* [dv] plain multiplier */
    /* full attention */
    const qc_linear *q, *k, *v, *o;
    float *q_norm, *k_norm;    /* [hd] */
    /* dense MLP */
    const qc_linear *gate, *up, *down;
    /* MoE (n_experts > 0) */
    const qc_linear *router;
    const qc_linear **exp_gate, **exp_up, **exp_down; /* [E] */
    const qc_linear *sh_gate, *sh_up, *sh_down, *sh_router;
} qc_layer_weights;

typedef struct qc_model_weights {
    const qc_tensor *embed;    /* [V, D] */
    const qc_linear *lm_head;  /* [V, D] (the embedding's view when tied) */
    float *final_norm;         /* [D] */
    qc_layer_weights *layers;  /* [n_layers] */
} qc_model_weights;

typedef struct qc_backend qc_backend;

struct qc_model {
    char dir[QC_PATH_MAX];
    qc_ckpt *ck;
    const qc_config *cfg;      /* owned by ck */
    qc_tokenizer *tok;
    int n_tokens;              /* tokenizer ids; logits rows are vocab_size wide */
    bool thinking_default;
    const char *family;        /* dominant weight family of the Linears */
    qc_model_weights w;
    int64_t host_bytes;        /* f32 copies of small vectors held by the model */
    const qc_backend *be;
    void *be_model;            /* backend's own state */
    char device[96];
};

struct qc_session {
    qc_model *m;
    int max_ctx;               /* 0 = unbounded (grows on demand) */
    int32_t *tokens;
    int n, cap;
    float *logits;             /* [V] of the last fed position */
    float *final_norm;         /* [D] of the last fed position */
    bool have_logits;
    bool logits_on_device;     /* s->logits is stale: the backend holds the row (qc_backend_sampling) */
    qc_event_fn ev_fn;
    void *ev_user;
    void *be_sess;
};

struct qc_backend {
    const char *name;
    /* Prepares the backend for m (its weights resolved); sets m->be_model and m->device. */
    int (*model_init)(qc_model *m, const qc_load_opts *opts, qc_err *err);
    void (*model_free)(qc_model *m);
    /* Allocates s->be_sess (states zeroed). */
    int (*session_init)(qc_session *s, qc_err *err);
    void (*session_free)(qc_session *s);
    /* Back to an empty sequence: KV length 0, GDN conv and recurrent state 0. */
    void (*session_reset)(qc_session *s);
    /* Runs ids[0..n) at positions pos0 .. pos0+n-1 (pos0 = tokens already in
     * the state). Writes the last row's final-normed state into
     * s->final_norm and its logits into s->logits — or, for a backend with
     * qc_backend_sampling, may keep that row on its device and set
     * s->logits_on_device instead; logits (n x V) and norm (n x D) receive
     * every row when not NULL. */
    int (*forward)(qc_session *s, const int32_t *ids, int n, int pos0, float *logits,
                   float *norm, qc_err *err);
    /* Fills the categories this backend holds (KV, GDN state, scratch, ...). */
    void (*mem)(const qc_model *m, const qc_session *s, qc_mem_report *rep);
};

extern const qc_backend qc_cpu_backend;

/* Optional operations of a backend that keeps the last logits row on its
 * device after forward() (session.c uses them; NULL table: none).
 *   fetch_logits  copies that row into s->logits;
 *   sample_next   draws the next id from it as qc_sampler_sample(smp, row,
 *                 vocab_size) would (not recording it), copying back only
 *                 what the draw needs; *copied_row set when the whole row
 *                 came back into s->logits on the way; *nonfinite the
 *                 number of NaN or infinite logits among the ids smp can
 *                 draw (the session refuses the row when it is not 0). */
typedef struct qc_backend_sampling {
    int (*fetch_logits)(qc_session *s, qc_err *err);
    int (*sample_next)(qc_session *s, qc_sampler *smp, int32_t *next, bool *copied_row, int64_t *nonfinite,
                       qc_err *err);
} qc_backend_sampling;
const qc_backend_sampling *qc_backend_sampling_of(const qc_backend *be);

#endif
