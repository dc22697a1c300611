/* cpu_ops.h — the float32 building blocks of the CPU backend (internal).
 *
 * Everything here is plain C on row-major float arrays; the layer functions
 * (GDN, attention, MLP/MoE) take their weights as qc_linear descriptors and
 * dequantize them exactly through qc_linear_dequant_rows (dequant.c). The big
 * matmuls are split over a small persistent thread pool. */
#ifndef QC_CPU_OPS_H
#define QC_CPU_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"

/* ---- thread pool -------------------------------------------------------- */

typedef struct cpu_pool cpu_pool;
/* One task of a parallel loop: task index in [0, ntasks), worker in [0, nthreads). */
typedef void (*cpu_task_fn)(void *ctx, int task, int worker);

/* nthreads <= 0: one per online core. Returns NULL when out of memory or when
 * threads cannot be started. */
cpu_pool *cpu_pool_new(int nthreads);
void cpu_pool_free(cpu_pool *p);
int cpu_pool_threads(const cpu_pool *p);
/* Runs fn for every task and returns when all are done. p may be NULL
 * (runs inline on the caller's thread). */
void cpu_pool_run(cpu_pool *p, int ntasks, cpu_task_fn fn, void *ctx);
/* Per-worker scratch owned by the pool (worker < nthreads), grown on demand;
 * NULL when out of memory or p is NULL. cpu_pool_reserve grows every worker's
 * buffer up front (the backend reserves the largest matmul tile at load, so
 * parallel loops never allocate). */
float *cpu_pool_scratch(cpu_pool *p, int worker, size_t nfloats);
bool cpu_pool_reserve(cpu_pool *p, size_t nfloats);
/* Floats of scratch a matmul over K inputs needs per worker. */
size_t cpu_matmul_scratch(int64_t k);
/* Bytes held as per-worker scratch (for the memory report). */
size_t cpu_pool_scratch_bytes(const cpu_pool *p);

/* ---- elementwise and norms ---------------------------------------------- */

static inline float cpu_sigmoid(float x) { return 1.0f / (1.0f + __builtin_expf(-x)); }
static inline float cpu_silu(float x) { return x / (1.0f + __builtin_expf(-x)); }
/* softplus with torch's threshold: linear above 20. */
static inline float cpu_softplus(float x) { return x > 20.0f ? x : __builtin_log1pf(__builtin_expf(x)); }

/* Zero-centred RMSNorm over rows of n: y = x / sqrt(mean(x^2)+eps) * (1 + w).
 * y may alias x. */
void cpu_norm1p(const float *x, const float *w, int rows, int n, float eps, float *y);
/* Plain RMSNorm with a multiplier (the GDN output norm): y = w * x / rms. */
void cpu_norm_mul(const float *x, const float *w, int rows, int n, float eps, float *y);
float cpu_dot(const float *a, const float *b, int n);

/* Any float-like tensor (F32/BF16/F16) to float32; returns false for other dtypes. */
bool cpu_tensor_to_f32(const qc_tensor *t, float *out);

/* ---- matmul -------------------------------------------------------------- */

/* y[T, N] = x[T, K] · W^T for W = l (N x K), any weight format. ldy is the row
 * stride of y (>= N) so results can land in a wider buffer. p must not be NULL
 * and must have cpu_matmul_scratch(K) floats reserved. */
void cpu_matmul(cpu_pool *p, const qc_linear *l, const float *x, int T, float *y, int ldy);

/* ---- Gated DeltaNet core ------------------------------------------------- */

typedef struct cpu_gdn_dims {
    int hk, hv, dk, dv;
} cpu_gdn_dims;

/* The delta rule over T tokens for every V head. q, k: [T, hk, dk] (already
 * L2-normalised, q scaled by 1/sqrt(dk)); v: [T, hv, dv]; g (log-decay <= 0)
 * and beta: [T, hv]; S: [hv, dk, dv] in/out; o: [T, hv, dv]. V head h reads
 * q/k head h / (hv/hk). The recurrent form goes token by token; the chunked
 * form (chunk 64, §3.2 of qwen35-model.md) computes the same thing for
 * prefill (heads in parallel on p; false when out of memory). */
void cpu_gdn_recurrent(const cpu_gdn_dims *d, int T, const float *q, const float *k,
                       const float *v, const float *g, const float *beta, float *S, float *o);
bool cpu_gdn_chunked(cpu_pool *p, const cpu_gdn_dims *d, int T, const float *q, const float *k,
                     const float *v, const float *g, const float *beta, float *S, float *o);
#define CPU_GDN_CHUNK 64

/* ---- gated full attention ------------------------------------------------- */

typedef struct cpu_attn_weights {
    int n_heads, n_kv, head_dim, rot_dim;
    float rope_theta, eps;
    const qc_linear *q, *k, *v, *o; /* q: [2*H*hd, D] per head [q | gate] */
    const float *q_norm, *k_norm;   /* [hd], zero-centred */
} cpu_attn_weights;

/* y[T, D] = ATTN(x[T, D]) at positions pos0 .. pos0+T-1 (§3.3). The caches
 * hold [pos][n_kv][hd] floats for positions 0 .. pos0-1 on entry and get this
 * chunk's keys and values appended (room for pos0+T positions needed).
 * false when out of memory. */
bool cpu_attn_forward(cpu_pool *p, const cpu_attn_weights *w, const float *x, int T, int pos0,
                      float *kcache, float *vcache, float *y);

/* Rotate-half RoPE on the first rot dims of one head vector at position pos. */
void cpu_rope(float *v, int rot, int pos, float theta);

/* ---- Mixture of experts --------------------------------------------------- */

typedef struct cpu_moe_weights {
    int n_experts, top_k, d_model, d_expert, d_shared;
    const qc_linear *router;                   /* [E, D] */
    const qc_linear *const *gate, *const *up;  /* per expert [Im, D] */
    const qc_linear *const *down;              /* per expert [D, Im] */
    const qc_linear *sh_gate, *sh_up, *sh_down; /* shared expert; NULL when absent */
    const qc_linear *sh_router;                /* shared_expert_gate [1, D]; NULL when absent */
} cpu_moe_weights;

/* y[T, D] = MoE(x[T, D]) (§3.4). Allocates its own temporaries; returns
 * false when out of memory. */
bool cpu_moe_forward(cpu_pool *p, const cpu_moe_weights *w, const float *x, int T, float *y);

/* Dense SwiGLU MLP: y = down(silu(gate x) * up x). tmp: 2*T*I floats. */
void cpu_mlp_forward(cpu_pool *p, const qc_linear *gate, const qc_linear *up,
                     const qc_linear *down, const float *x, int T, float *tmp, float *y);

#endif
