/* cuda_backend.c — the CUDA backend: the forward pass of qwen35-model.md §3
 * on one GPU with the kernels of kernels/ (host code only; CUDA C++ stays in
 * kernels/).
 *
 * Weights stay resident in the format they were published in. BF16 Linears
 * are BF16 [N, K] matrices; quantized ones (FP8, INT4, NVFP4, MXFP4) are
 * repacked at load into the kernel-native layouts of kernels/quant.h
 * (engine/cuda_repack.c) and read by the quantized GEMVs, which dequantize in
 * registers (decode reads only the packed bytes). The small projections that
 * read the same input are one launch: GDN [qkv; z; b; a], attention
 * [q(+gate); k; v], MLP [gate; up] — stacked into one BF16 matrix when all
 * parts are BF16, else one qk_gemv_multi over the parts, whatever mix of
 * formats they have (cu_mat). Prefill dequantizes each quantized projection
 * into one reusable BF16 scratch (sized for the largest fused group, so no
 * BF16 copy of the model ever exists) and runs the cuBLAS GEMM on it.
 * Residual adds are fused into the output projections (GEMV accumulate /
 * GEMM beta = 1). Loading runs on every core: see "loading" below.
 *
 * Session: K/V caches (bf16 [KV][cap][hd]) for the full-attention layers only,
 * conv state and fp32 recurrent state per linear-attention layer, one scratch
 * arena sized for the largest chunk seen. A single-token step runs as one
 * CUDA graph (captured on the second decode call, after an eager warm-up, and
 * replayed with the token id and position in device memory); it is captured
 * again only when the arena or the caches move.
 *
 * Memory: every cudaMalloc goes through cu_alloc with a tag (weights by the
 * source family, KV, GDN state, scratch, library workspace); the report adds
 * cudaMemGetInfo's used bytes minus the tagged ones as runtime/other. */
#ifdef QC_HAVE_CUDA

#include "cuda_backend.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "cuda_load.h"
#include "cuda_nvml.h"
#include "cuda_repack.h"
#include "dequant.h"
#include "quant.h"
#include "quantize.h"
#include "shared_tensors.h"

#define CU_BLAS_WS (32u << 20)
/* Prefill of FP8 weights on the FP8 tensor cores (qk_gemm_q_lt: activations
 * quantized to e4m3 per token and 128 inputs) for chunks this long; shorter
 * chunks and decode stay exact. Off unless QCHAT_FP8_PREFILL asks for it
 * (CU_LT_DEFAULT 0): on the FP8 fixtures it moves the logits 7.6e-2 / 8.9e-2
 * rel L2 from the goldens (exact path 8e-3 / 1e-2; limit 3e-2), measured H100
 * 2026-11-22; 27B prefill of 8192 tokens 0.57-0.59 s instead of 0.79 s. */
#define CU_LT_MIN_T 64
#define CU_LT_DEFAULT 0
#define CU_DEFAULT_CTX 4096
#define CU_GEMM_ATTN_MIN 64 /* chunks this long use tensor-core attention (flash, else cuBLAS) */
/* MoE prefill chunks up to this many tokens run the experts as (token,
 * expert) pair GEMVs (moe_forward, measured there); longer ones as grouped
 * GEMMs (moe_grouped), in passes whose per-pair outputs take at most
 * CU_MOE_PASS_BYTES; experts of mixed layouts are dequantized
 * CU_MOE_DQ_BYTES at a time. */
#define CU_MOE_PAIR_TOKENS 64
/* ... and where some layer cannot run them (g_idx experts), up to this
 * many, which the per-expert GEMMs only beat beyond (0.19 against 0.39 s
 * at 512 tokens, equal near 1000; 35B-A3B FP8, H100) */
#define CU_MOE_PAIR_TOKENS_UNGROUPED 1024
#define CU_MOE_PASS_BYTES ((size_t)256 << 20)
#define CU_MOE_DQ_BYTES ((size_t)512 << 20)

/* ---- allocations with tags ---- */

typedef struct cu_pool {
    void **p;
    int n, cap;
    uint64_t bytes[QC_MEM_COUNT];
} cu_pool;

static int cu_alloc(cu_pool *pl, size_t bytes, int tag, void **out, qc_err *err, const char *what)
{
    *out = NULL;
    if (pl->n == pl->cap) {
        int nc = pl->cap ? pl->cap * 2 : 64;
        void **np = realloc(pl->p, (size_t)nc * sizeof *np);
        if (!np) return qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory tracking GPU allocations");
        pl->p = np;
        pl->cap = nc;
    }
    cudaError_t e = cudaMalloc(out, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: cannot allocate %.1f MiB for %s (%s; %.1f MiB free)",
                          bytes / 1048576.0, what, cudaGetErrorString(e), fr / 1048576.0);
    }
    pl->p[pl->n++] = *out;
    pl->bytes[tag] += bytes;
    return QC_OK;
}

/* Takes p (of bytes, under tag) out of the pool: its owner is now the shared
 * tensor registry, which frees it and counts it (once, shared_tensors.h). */
static void cu_pool_detach(cu_pool *pl, void *p, size_t bytes, int tag)
{
    for (int i = pl->n - 1; i >= 0; i--)
        if (pl->p[i] == p) {
            pl->p[i] = pl->p[--pl->n];
            pl->bytes[tag] -= bytes;
            return;
        }
}

static void cu_pool_free(cu_pool *pl)
{
    for (int i = 0; i < pl->n; i++) cudaFree(pl->p[i]);
    free(pl->p);
    memset(pl, 0, sizeof *pl);
}

#define CK(call)                                                                                   \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_)                                                                                   \
            return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: %s in %s (%s:%d)", qk_error_string(rc_), \
                              #call, __FILE__, __LINE__);                                          \
    } while (0)

/* ---- model ---- */

#define CU_PROF_EV 4096 /* events of one profiled chunk (~15 per layer) */

typedef struct cu_prof {
    bool ok, on;
    cudaEvent_t *ev; /* [CU_PROF_EV], made on first use */
    int cat[CU_PROF_EV];
    int n;
    bool over; /* the chunk had more launches than events: the profile covers its start only */
    double ms[16];
} cu_prof;

/* One projection, or several fused ones that read the same input, stacked
 * row-wise: part i's outputs are rows off[i].. of the stacked output. When
 * every part is BF16 the group is one stacked bf16 matrix `bf` [n][k] (the
 * BF16 GEMV / cuBLAS path); otherwise np parts in their kernel-native layouts
 * (BF16 parts of a mixed group as QK_QW_BF16) decode in one qk_gemv_multi
 * launch and prefill through the dequantization scratch. */
typedef struct cu_mat {
    uint16_t *bf;
    int np;
    qk_qweight q[QK_GEMV_MAX_PARTS];
    int off[QK_GEMV_MAX_PARTS];
    int n, k;
} cu_mat;

struct cu_loader;

/* A mixture-of-experts MLP (qwen35-model.md §3.4). The router and the
 * shared expert's sigmoid gate read the same normed input, so they are one
 * fp32 matrix (router rows first, the gate's row last) applied to the fp32
 * normed input: the top-k is discontinuous, and a bf16 rounding of the
 * router's input moved the tiny MoE fixture's logits 0.053 rel L2 from the
 * float32 CPU engine (dense fixtures: 0.006; H100). Each expert is two
 * cu_mats like a dense MLP; their descriptors are also in device tables
 * (qk_moe_table), from which the decode GEMV takes the experts the router
 * chose on the device, inside the step graph. */
typedef struct cu_moe {
    int E, K, Im, Is; /* experts, chosen per token, expert width, shared expert width (0: none) */
    bool sh_gated;    /* shared_expert_gate present: its logit is router row E */
    int ld;           /* router rows: E + sh_gated */
    float *router;    /* [ld][D], the exact values of the published weights */
    cu_mat *gu, *down; /* [E] */
    cu_mat sh_gu, sh_down;
    /* Entry E of both tables is the shared expert when it has the experts'
     * width (every published MoE model): the decode step then runs it in
     * the same launches as the chosen experts, as the router's (K + 1)-th
     * choice at weight sigmoid(gate) (3 launches fewer per layer: 35B-A3B
     * FP8 306 -> 326 tok/s on the H100). Prefill keeps it one GEMM over
     * the chunk, which costs less than a pair per token (512 tokens, FP8:
     * 0.19 s against 0.21 s). */
    bool sh_table;
    qk_moe_table t_gu, t_down;
    /* Long prefill chunks as grouped GEMMs (moe_grouped): the tables allow
     * it (qk_moe_grouped_ok); grouped_dq: the experts are dequantized into
     * the scratch first (experts of mixed layouts; the GEMM decodes one
     * layout family while loading). */
    bool grouped, grouped_dq;
} cu_moe;

typedef struct cu_layer {
    bool full;
    float *in_norm, *post_norm;
    cu_mat in, out, gu, down;
    cu_moe *moe; /* NULL: the dense MLP gu / down */
    int n_in, k_out;
    float *conv_w, *dt_bias, *nexpa, *gdn_norm; /* GDN */
    float *q_norm, *k_norm;                     /* attention */
} cu_layer;

struct qc_cuda_model {
    qc_cuda_shape sh;
    int conv_dim, n_max; /* widest fused projection */
    cudaStream_t st;
    qk_blas *blas;
    qk_lt *lt;    /* prefill in the weights' precision (gemm_lt.cu), or NULL */
    int lt_min_t; /* ... for chunks of at least this many tokens */
    uint16_t *embed;
    cu_mat head; /* lm_head (head.bf == embed when tied) */
    float *final_norm;
    cu_layer *L;
    cu_pool pool;
    int64_t weight_bytes; /* bytes of the matrices one decode step reads */
    uint64_t scale_bytes; /* scales + g_idx permutations of the quantized weights */
    uint16_t *dq;         /* prefill dequantization scratch (bf16), allocated on the first prefill */
    size_t dq_bytes, dq_need;
    size_t dq_moe;        /* ... and what a grouped MoE chunk needs of it (moe_dq_experts experts) */
    struct cu_loader *ld; /* during cuda_model_init only */
    /* Device buffers held through the shared tensor registry (released on
     * free), and those made by this load, published once uploaded. */
    void **shared;
    int n_shared, cap_shared;
    struct cu_pend { qc_shared_key key; const void *src; void *buf; size_t bytes; } *pend;
    int n_pend;
    double load_s;        /* seconds the weight upload took (bench: load GB/s) */
    double load_plan_s;   /* of which planning and device allocation */
    qc_load_stats load_st;
    int n_sm;
    char name[256];
    char bus_id[32]; /* PCI bus id, for NVML's per-process memory (cuda_nvml.h) */
    cu_prof prof;
    bool fuse_norm; /* decode: RMSNorm folded into the quantized GEMVs after it (mat_gemv_norm) */
    bool down_xperm; /* decode: act-order down-projections read h permuted by the SwiGLU (swiglu_dec) */
    bool int4_tile;  /* dense INT4 weights in the tiled layout where they can take it (qc_qweight_tile) */
    bool int4_s16;   /* ... and symmetric ones with 16-bit scales alone (quant.h s16) */
    int swiglu_pdl;  /* A/B (QCHAT_SWIGLU_PDL): -1 by the down-projection's format (swiglu_pdl), 0 never, 1 always */
    int moe_E, moe_K, moe_Im, moe_ld; /* MoE layers (0: dense): experts, chosen, width, router rows */
    int moe_Kt;        /* entries per token of the choices: moe_K, + 1 where the shared expert is in the tables */
    int moe_pair_max;  /* prefill chunks of at most this many tokens run as (token, expert) pair GEMVs */
    int moe_pass;      /* longer ones: tokens per grouped pass (moe_grouped) */
    int moe_dq_experts; /* experts dequantized at a time for a grouped pass */
    bool moe_lists;     /* some MoE layer runs long chunks as per-expert GEMMs (moe_lists; no grouped GEMMs) */
    bool moe_router1;   /* decode: the MoE block's norm and router in one launch (qk_moe_router) */
    bool moe_route1;    /* decode: the routing inside the experts' gate|up launch (qk_gemv_moe_routed) */
};

/* Whether environment variable name is set to exactly v (the A/B
 * switches: "0" turns a default path off, "1" an alternative on). */
static bool env_is(const char *name, const char *v)
{
    const char *e = getenv(name);
    return e && strcmp(e, v) == 0;
}

static int cu_model_new(const qc_cuda_shape *sh, qc_cuda_model **out, qc_err *err)
{
    *out = NULL;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        cudaGetLastError();
        return qc_err_set(err, QC_EXIT_RUNTIME, "--device cuda: no CUDA device found");
    }
    if (sh->dk != sh->dv || (sh->dk != 32 && sh->dk != 64 && sh->dk != 128))
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA backend: GDN head dims %d/%d unsupported (need dk == dv in 32/64/128)",
                          sh->dk, sh->dv);
    if (sh->hd % 32 || sh->hd > 256 || sh->KV <= 0 || sh->H % sh->KV || sh->H / sh->KV > 16)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA backend: attention shape H=%d KV=%d hd=%d unsupported", sh->H,
                          sh->KV, sh->hd);
    if (sh->D % 8 || sh->I % 8 || (sh->Hv * sh->dv) % 8 || (sh->H * sh->hd) % 8)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA backend: matrix widths must be multiples of 8");
    qc_cuda_model *cm = calloc(1, sizeof *cm);
    if (!cm) return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for the CUDA backend");
    cm->sh = *sh;
    cm->conv_dim = 2 * sh->Hk * sh->dk + sh->Hv * sh->dv;
    int n_gdn = cm->conv_dim + sh->Hv * sh->dv + 2 * sh->Hv, n_att = 2 * sh->H * sh->hd + 2 * sh->KV * sh->hd;
    cm->n_max = n_gdn > n_att ? n_gdn : n_att;
    if (2 * sh->I > cm->n_max) cm->n_max = 2 * sh->I;
    if (sh->D > cm->n_max) cm->n_max = sh->D;
    cm->L = calloc((size_t)sh->n_layers, sizeof *cm->L);
    struct cudaDeviceProp prop;
    cudaError_t e = cudaGetDeviceProperties(&prop, 0);
    if (!cm->L || e != cudaSuccess) {
        free(cm->L);
        free(cm);
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA backend: %s", e ? cudaGetErrorString(e) : "out of memory");
    }
    cm->n_sm = prop.multiProcessorCount;
    snprintf(cm->name, sizeof cm->name, "%s", prop.name);
    if (cudaDeviceGetPCIBusId(cm->bus_id, (int)sizeof cm->bus_id, 0) != cudaSuccess) {
        cudaGetLastError();
        cm->bus_id[0] = 0;
    }
    e = cudaStreamCreateWithFlags(&cm->st, cudaStreamNonBlocking);
    int rc = e ? (int)e : qk_blas_create(&cm->blas, cm->st, CU_BLAS_WS);
    if (rc) {
        if (cm->st) cudaStreamDestroy(cm->st);
        free(cm->L);
        free(cm);
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA backend: stream/cuBLAS setup failed: %s", qk_error_string(rc));
    }
    cm->pool.bytes[QC_MEM_SCRATCH] += CU_BLAS_WS; /* the cuBLAS workspace */
    /* Prefill in the weights' precision through cuBLASLt (kernels/gemm_lt.cu):
     * FP8 on sm_90 (block scaling), NVFP4 on Blackwell (untested there), for
     * chunks of at least CU_LT_MIN_T tokens. QCHAT_FP8_PREFILL=1 turns it on,
     * =N (N >= 2) on for chunks of N tokens or more, =0 off (the exact
     * dequantizing path, as on other GPUs); unset: CU_LT_DEFAULT. */
    const char *fe = getenv("QCHAT_FP8_PREFILL");
    const int lt_on = fe && *fe ? atoi(fe) != 0 : CU_LT_DEFAULT;
    cm->lt_min_t = fe && atoi(fe) >= 2 ? atoi(fe) : CU_LT_MIN_T;
    if ((prop.major == 9 || prop.major == 10 || prop.major == 12) && lt_on &&
        qk_lt_create(&cm->lt, cm->blas, prop.major * 10 + prop.minor))
        cm->lt = NULL;
    /* A/B of the quantized GEMV launches (benchmarks; the man page lists the
     * values): only the variants that compute the same result, never the
     * loads-only diagnostic of the kernel tests (9). */
    const char *ge = getenv("QCHAT_GEMV_MODE");
    const int gm = ge && *ge ? atoi(ge) : 0;
    if (gm == 1 || gm == 2 || gm == 5 || gm == 6 || gm == 7 || gm == 8 || gm == 10 || gm == 11) qk_gemv_q_mode = gm;
    if (env_is("QCHAT_ATTN_MODE", "1")) qk_attn_dec_mode = 1; /* A/B of the split-KV decode kernel (kernels.h) */
    if (env_is("QCHAT_ATTN_MODE", "2")) qk_attn_dec_mode = 2;
    if (env_is("QCHAT_ATTN_MODE", "3")) qk_attn_dec_mode = 3;
    const char *pe_small = getenv("QCHAT_PDL_SMALL"); /* A/B: a bit mask 0..7 (kernels.h); others ignored */
    if (pe_small && pe_small[0] >= '0' && pe_small[0] <= '7' && !pe_small[1]) qk_pdl_small = pe_small[0] - '0';
    if (env_is("QCHAT_MOE_GEMV_GROUPS", "1")) qk_moe_gemv_groups = 1; /* A/B: one row group per warp (quant.h) */
    cm->fuse_norm = !env_is("QCHAT_FUSE_NORM", "0"); /* A/B of mat_gemv_norm: 0 = separate norm launches */
    cm->down_xperm = !env_is("QCHAT_DOWN_XPERM", "0"); /* A/B of swiglu_dec: 0 = the GEMV gathers x */
    cm->int4_tile = !env_is("QCHAT_INT4_TILE", "0");    /* A/B of the tiled INT4 layout: 0 = row-major */
    cm->int4_s16 = !env_is("QCHAT_INT4_S16", "0");      /* A/B of its 16-bit scales: 0 = scale|zero words */
    cm->swiglu_pdl = env_is("QCHAT_SWIGLU_PDL", "0") ? 0 : env_is("QCHAT_SWIGLU_PDL", "1") ? 1 : -1;
    cm->prof.ok = true;
    const char *pe = getenv("QCHAT_CUDA_PROFILE");
    cm->prof.on = pe && *pe && strcmp(pe, "0");
    *out = cm;
    return QC_OK;
}

void qc_cuda_model_free(qc_cuda_model *cm)
{
    if (!cm) return;
    cudaStreamSynchronize(cm->st);
    qk_lt_free(cm->lt);
    qk_blas_free(cm->blas);
    cu_pool_free(&cm->pool);
    for (int i = 0; i < cm->n_shared; i++) qc_shared_release(cm->shared[i], cm);
    free(cm->shared);
    free(cm->pend);
    if (cm->prof.ev) {
        for (int i = 0; i < CU_PROF_EV; i++) cudaEventDestroy(cm->prof.ev[i]);
        free(cm->prof.ev);
    }
    cudaStreamDestroy(cm->st);
    for (int li = 0; cm->L && li < cm->sh.n_layers; li++)
        if (cm->L[li].moe) {
            free(cm->L[li].moe->gu);
            free(cm->L[li].moe->down);
            free(cm->L[li].moe);
        }
    free(cm->L);
    free(cm);
}

const qc_cuda_shape *qc_cuda_model_shape(const qc_cuda_model *cm) { return &cm->sh; }
void qc_cuda_set_profile(qc_cuda_model *cm, bool on) { cm->prof.on = on && cm->prof.ok; }
const char *qc_cuda_device_name(const qc_cuda_model *cm) { return cm->name; }
void qc_cuda_model_set_tokens(qc_cuda_model *cm, int n_tokens)
{
    if (cm && n_tokens > 0 && n_tokens <= cm->sh.vocab) cm->sh.n_tokens = n_tokens;
}

bool qc_cuda_available(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return n > 0;
}

/* ---- sharing identical tensors between resident models (shared_tensors.h) ----
 * The embedding, a BF16 lm_head and the small f32 vectors (norms, ...) are
 * looked up by their source bytes before allocating; a hit reuses another
 * model's device buffer. What this load makes is published only after the
 * whole upload finished (cu_shared_publish_all), so no other model can see a
 * half-copied buffer. Tagged accounting: a published buffer leaves this
 * model's pool and is counted by the registry for one holder only. */

static void cu_shared_free(void *p) { cudaFree(p); }

static bool cu_shared_room(qc_cuda_model *cm)
{
    if (cm->n_shared < cm->cap_shared) return true;
    int nc = cm->cap_shared ? 2 * cm->cap_shared : 16;
    void **np = realloc(cm->shared, (size_t)nc * sizeof *np);
    if (!np) return false;
    cm->shared = np;
    cm->cap_shared = nc;
    return true;
}

/* A device buffer with the same source bytes held by another model, or NULL
 * (then k is the key to offer this load's copy under). */
static void *cu_shared_find(qc_cuda_model *cm, qc_shared_key *k, int dtype, int ndim, const int64_t *shape,
                            const void *src, size_t n)
{
    qc_shared_key_make(k, QC_SHARED_CUDA, dtype, ndim, shape, src, n);
    if (!cu_shared_room(cm)) return NULL;
    void *p = qc_shared_acquire(k, src, cm);
    if (p) cm->shared[cm->n_shared++] = p;
    return p;
}

/* Remembers buf (in the pool, bytes under W_BF16) for publishing after the upload. */
static void cu_shared_offer(qc_cuda_model *cm, const qc_shared_key *k, const void *src, void *buf, size_t bytes)
{
    struct cu_pend *np = realloc(cm->pend, (size_t)(cm->n_pend + 1) * sizeof *np);
    if (!np) return; /* stays private to this model: correct, only not shared */
    cm->pend = np;
    cm->pend[cm->n_pend++] = (struct cu_pend){*k, src, buf, bytes};
}

static void cu_shared_publish_all(qc_cuda_model *cm)
{
    /* The f32 vectors went up with cudaMemcpy from pageable memory, which may
     * return before the device has the bytes: wait for everything. */
    if (cm->n_pend && cudaDeviceSynchronize() != cudaSuccess) {
        cudaGetLastError();
        cm->n_pend = 0;
    }
    for (int i = 0; i < cm->n_pend; i++) {
        struct cu_pend *p = &cm->pend[i];
        if (!cu_shared_room(cm) ||
            qc_shared_publish(&p->key, p->src, cm, p->buf, p->bytes, QC_MEM_W_BF16, cu_shared_free, NULL))
            continue;
        cu_pool_detach(&cm->pool, p->buf, p->bytes, QC_MEM_W_BF16);
        cm->shared[cm->n_shared++] = p->buf;
    }
    free(cm->pend);
    cm->pend = NULL;
    cm->n_pend = 0;
}

static int upload_f32(qc_cuda_model *cm, const float *h, size_t n, float **out, qc_err *err, const char *what)
{
    qc_shared_key k;
    int64_t shp[1] = {(int64_t)n};
    if ((*out = cu_shared_find(cm, &k, QC_DT_F32, 1, shp, h, n * sizeof(float)))) return QC_OK;
    int rc = cu_alloc(&cm->pool, n * sizeof(float), QC_MEM_W_BF16, (void **)out, err, what);
    if (rc) return rc;
    if (cudaMemcpy(*out, h, n * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: upload of %s failed", what);
    cu_shared_offer(cm, &k, h, *out, n * sizeof(float));
    return QC_OK;
}

/* ---- loading ---- */

/* The weights go up in two steps (engine/cuda_load.c): first, on this thread,
 * every destination is allocated (so running out of device memory is found
 * before any work, with the tensor named) and the copies and repacks become a
 * list of jobs of at most QC_LOAD_CHUNK (4 MiB); then a pool of CPU threads (one per core)
 * pre-faults the mapped checkpoint, repacks/copies each job into a ring of
 * pinned staging buffers (two per thread) and queues cudaMemcpyAsync on two
 * streams, so page-cache reads, repacking and the DMA all overlap. */
typedef struct cu_loader {
    qc_load_plan plan;
    qk_qweight **hq; /* host descriptors of the planned qweights (the jobs read them) */
    int nhq, caphq;
} cu_loader;

static void loader_free(cu_loader *ld)
{
    for (int i = 0; i < ld->nhq; i++) {
        free(ld->hq[i]->perm);
        free(ld->hq[i]);
    }
    free(ld->hq);
    qc_load_plan_free(&ld->plan);
}

#define CU_RING_MAX 32
typedef struct cu_ring {
    cudaStream_t st[2];
    cudaEvent_t ev[CU_RING_MAX];
} cu_ring;

static void *ring_host_alloc(void *ctx, size_t n)
{
    (void)ctx;
    void *p = NULL;
    if (cudaHostAlloc(&p, n, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    return p;
}
static void ring_host_free(void *ctx, void *p)
{
    (void)ctx;
    cudaFreeHost(p);
}
static int ring_copy(void *ctx, int slot, void *dst, const void *src, size_t n)
{
    cu_ring *r = ctx;
    cudaStream_t st = r->st[slot & 1];
    return cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, st) != cudaSuccess ||
           cudaEventRecord(r->ev[slot], st) != cudaSuccess;
}
static int ring_wait(void *ctx, int slot)
{
    cu_ring *r = ctx;
    return cudaEventSynchronize(r->ev[slot]) != cudaSuccess;
}
static int ring_copy_sync(void *ctx, void *dst, const void *src, size_t n)
{
    (void)ctx;
    return cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice) != cudaSuccess;
}

/* Runs the planned jobs; the ring's events block (no spinning) so waiting
 * threads leave the cores to the ones packing. */
static int loader_run(cu_loader *ld, qc_load_stats *st, qc_err *err)
{
    cu_ring r;
    memset(&r, 0, sizeof r);
    int threads = qc_load_default_threads(), nbuf = 2 * threads > CU_RING_MAX ? CU_RING_MAX : 2 * threads;
    bool ok = cudaStreamCreateWithFlags(&r.st[0], cudaStreamNonBlocking) == cudaSuccess &&
              cudaStreamCreateWithFlags(&r.st[1], cudaStreamNonBlocking) == cudaSuccess;
    for (int i = 0; ok && i < nbuf; i++)
        ok = cudaEventCreateWithFlags(&r.ev[i], cudaEventDisableTiming | cudaEventBlockingSync) == cudaSuccess;
    int rc = QC_OK;
    if (!ok) {
        cudaGetLastError();
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: cannot create the loader's streams and events");
    }
    if (!rc) {
        qc_load_ops ops = {&r, ring_host_alloc, ring_host_free, ring_copy, ring_wait, ring_copy_sync};
        rc = qc_load_run(&ld->plan, threads, nbuf, &ops, st, err);
    }
    for (int i = 0; i < 2; i++)
        if (r.st[i]) {
            if (cudaStreamSynchronize(r.st[i]) != cudaSuccess && !rc)
                rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: uploading the weights failed");
            cudaStreamDestroy(r.st[i]);
        }
    for (int i = 0; i < CU_RING_MAX; i++)
        if (r.ev[i]) cudaEventDestroy(r.ev[i]);
    return rc;
}

/* Rows of l into dst (bf16 [l->n, l->k] at device address dst): straight copy
 * of BF16 weights, else exact dequantization rounded to BF16. */
static int upload_linear(qc_cuda_model *cm, const qc_linear *l, uint16_t *dst, qc_err *err)
{
    if (l->format == QC_FMT_BF16 && l->weight && l->weight->dtype == QC_DT_BF16)
        return qc_load_add_bytes(&cm->ld->plan, dst, l->weight->data, (size_t)l->n * l->k * 2, l->name, err);
    return qc_load_add_bf16_rows(&cm->ld->plan, l, l->n, l->k, dst, err);
}

static int tag_of_kind(int kind)
{
    switch (kind) {
    case QK_QW_FP8: return QC_MEM_W_FP8;
    case QK_QW_INT4: return QC_MEM_W_INT4;
    case QK_QW_NVFP4: return QC_MEM_W_NVFP4;
    case QK_QW_MXFP4: return QC_MEM_W_OTHER; /* the report's "other" family is MXFP4 */
    default: return QC_MEM_W_BF16;
    }
}

static int64_t mat_bytes(const cu_mat *M)
{
    if (!M->np) return (int64_t)M->n * M->k * 2;
    int64_t b = 0;
    for (int i = 0; i < M->np; i++) {
        b += (int64_t)qk_qweight_bytes(&M->q[i]);
        for (int j = 0; j < i; j++) /* a shared act-order permutation once (load_part) */
            if (M->q[i].perm && M->q[j].perm == M->q[i].perm) {
                b -= (int64_t)M->q[i].perm_bytes;
                break;
            }
    }
    return b;
}

/* A part the quantized kernels have no layout for (8-bit or 2-bit integers,
 * F16/F32 Linears in a mixed group, ...): dequantized exactly on the host,
 * rounded to BF16 and kept as a QK_QW_BF16 part, so the group still fuses.
 * The jobs write the padding zeros too. */
static int load_part_bf16(qc_cuda_model *cm, const qc_linear *l, qk_qweight *q, qc_err *err)
{
    memset(q, 0, sizeof *q);
    q->kind = QK_QW_BF16;
    q->fmt = QC_FMT_BF16;
    q->n = (int)l->n;
    q->k = (int)l->k;
    q->n_pad = (q->n + QK_QROWS - 1) / QK_QROWS * QK_QROWS;
    q->k_pad = (q->k + 31) / 32 * 32;
    q->w_bytes = (size_t)q->n_pad * q->k_pad * 2;
    int rc = cu_alloc(&cm->pool, q->w_bytes, QC_MEM_W_BF16, &q->w, err, l->name);
    if (rc) return rc;
    return qc_load_add_bf16_rows(&cm->ld->plan, l, q->n_pad, q->k_pad, q->w, err);
}

/* One part of a mixed group in its kernel-native layout: planned here
 * (cuda_repack.h), device memory allocated, repacked by the loader's jobs.
 * The group's earlier parts (q_prev, their host plans h_prev, NULL for BF16
 * ones; nprev of them): an act-order permutation equal to one of theirs is
 * shared, not uploaded again, so the GEMV sees one permutation for the
 * launch and stages x in its order once (gemv_multi.cu). *h_out: this
 * part's host plan, or NULL. */
static int load_part(qc_cuda_model *cm, const qc_linear *l, qk_qweight *q, const qk_qweight *const *h_prev,
                     const qk_qweight *q_prev, int nprev, bool tile, const qk_qweight **h_out, qc_err *err)
{
    *h_out = NULL;
    if (!qc_qweight_supported(l->format) || (l->format == QC_FMT_BF16 && (!l->weight || l->weight->dtype != QC_DT_BF16)))
        return load_part_bf16(cm, l, q, err);
    cu_loader *ld = cm->ld;
    if (ld->nhq == ld->caphq) {
        int nc = ld->caphq ? 2 * ld->caphq : 256;
        qk_qweight **np = realloc(ld->hq, (size_t)nc * sizeof *np);
        if (!np) return qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory loading %s", l->name);
        ld->hq = np;
        ld->caphq = nc;
    }
    qk_qweight *h = calloc(1, sizeof *h);
    if (!h) return qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory loading %s", l->name);
    int rc = qc_qweight_plan(l, h, err);
    if (rc) {
        free(h);
        if (rc == QC_EXIT_CHECKPOINT) return load_part_bf16(cm, l, q, err); /* a layout the kernels cannot run */
        return rc;
    }
    if (!cm->int4_s16) h->zero8 = 0;
    if (tile && cm->int4_tile) qc_qweight_tile(h);
    ld->hq[ld->nhq++] = h; /* owned by the loader from here */
    *h_out = h;
    *q = *h;
    q->w = q->s = NULL;
    q->perm = NULL;
    int tag = tag_of_kind(h->kind);
    void *perm = NULL;
    for (int j = 0; j < nprev && h->perm && !perm; j++)
        if (h_prev[j] && h_prev[j]->perm && h_prev[j]->perm_bytes == h->perm_bytes &&
            !memcmp(h_prev[j]->perm, h->perm, h->perm_bytes))
            perm = q_prev[j].perm;
    const bool shared = perm != NULL;
    rc = cu_alloc(&cm->pool, h->w_bytes, tag, &q->w, err, l->name);
    if (!rc && h->s_bytes) rc = cu_alloc(&cm->pool, h->s_bytes, tag, &q->s, err, l->name);
    if (!rc && h->perm_bytes && !shared) rc = cu_alloc(&cm->pool, h->perm_bytes, tag, &perm, err, l->name);
    q->perm = perm;
    if (!rc) rc = qc_load_add_qweight(&ld->plan, l, h, q->w, q->s, shared ? NULL : q->perm, err);
    if (rc) return rc;
    cm->scale_bytes += h->s_bytes + (shared ? 0 : h->perm_bytes);
    return QC_OK;
}

/* Several Linears with the same K as one cu_mat (see there). */
static int upload_fused(qc_cuda_model *cm, const qc_linear *const *ls, int n, bool tile, cu_mat *M, qc_err *err)
{
    int64_t N = 0, K = ls[0]->k;
    bool all_bf16 = true;
    for (int i = 0; i < n; i++) {
        if (ls[i]->k != K)
            return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: K %lld differs from %s", ls[i]->name, (long long)ls[i]->k,
                              ls[0]->name);
        if (qc_format_to_family(ls[i]->format) != QC_FAM_BF16) all_bf16 = false;
        N += ls[i]->n;
    }
    if (K % 8) return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: K %lld not a multiple of 8 (CUDA GEMV)", ls[0]->name, (long long)K);
    memset(M, 0, sizeof *M);
    M->n = (int)N;
    M->k = (int)K;
    int rc = QC_OK;
    if (all_bf16) {
        rc = cu_alloc(&cm->pool, (size_t)(N * K) * 2, QC_MEM_W_BF16, (void **)&M->bf, err, ls[0]->name);
        int64_t r = 0;
        for (int i = 0; i < n && !rc; i++) {
            rc = upload_linear(cm, ls[i], M->bf + r * K, err);
            r += ls[i]->n;
        }
    } else {
        int r = 0;
        const qk_qweight *hp[QK_GEMV_MAX_PARTS] = {NULL};
        for (int i = 0; i < n && !rc; i++) {
            M->off[i] = r;
            rc = load_part(cm, ls[i], &M->q[i], hp, M->q, i, tile, &hp[i], err);
            M->np = i + 1;
            r += (int)ls[i]->n;
        }
    }
    if (!rc) cm->weight_bytes += mat_bytes(M);
    return rc;
}

/* Rows [r0, r0 + n) of a stacked BF16 cu_mat as a BF16 descriptor (for the
 * experts' device tables): n a multiple of QK_QROWS, k of 32 (the GEMV's
 * unpadded BF16 layout); false otherwise. */
static bool mat_bf16_rows(const cu_mat *M, int r0, int n, qk_qweight *v)
{
    memset(v, 0, sizeof *v);
    if (!M->bf || n % QK_QROWS || M->k % 32) return false;
    v->kind = QK_QW_BF16;
    v->fmt = QC_FMT_BF16;
    v->n = v->n_pad = n;
    v->k = v->k_pad = M->k;
    v->w = M->bf + (size_t)r0 * M->k;
    v->w_bytes = (size_t)n * M->k * 2;
    return true;
}

/* The device table of one kind of expert matrix (gate|up: P = 2, down: 1),
 * the E experts ms and, when extra is not NULL, it as entry E. */
static int moe_table(qc_cuda_model *cm, const cu_moe *mo, const cu_mat *ms, const cu_mat *extra, int P, int n,
                     qk_moe_table *t, qc_err *err)
{
    const int E = mo->E + (extra != NULL);
    qk_qweight *views = calloc((size_t)E * P, sizeof *views);
    const qk_qweight **w = calloc((size_t)E * P, sizeof *w);
    int rc = views && w ? QC_OK : qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory for the expert tables");
    for (int e = 0; e < E && !rc; e++) {
        const cu_mat *M = e < mo->E ? &ms[e] : extra;
        for (int i = 0; i < P && !rc; i++) {
            if (M->np == P) {
                w[e * P + i] = &M->q[i];
            } else if (!M->np && mat_bf16_rows(M, i * n, n, &views[e * P + i])) {
                w[e * P + i] = &views[e * P + i];
            } else {
                rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA backend: expert %d: a layout the MoE GEMV cannot run "
                                "(BF16 experts need widths that are multiples of 32)", e);
            }
        }
    }
    void *dev = NULL;
    int tag = w && w[0] ? tag_of_kind(w[0]->kind) : QC_MEM_W_BF16;
    if (!rc) rc = cu_alloc(&cm->pool, qk_moe_table_bytes(E * P), tag, &dev, err, "expert table");
    if (!rc && qk_moe_table_fill(w, E, P, dev, t))
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA backend: the experts' layouts cannot run in one MoE GEMV");
    free(views);
    free(w);
    return rc;
}

/* The session buffers' MoE sizes: the largest over the layers. */
static void moe_dims(qc_cuda_model *cm)
{
    for (int li = 0; li < cm->sh.n_layers; li++) {
        const cu_moe *mo = cm->L[li].moe;
        if (!mo) continue;
        if (mo->E > cm->moe_E) cm->moe_E = mo->E;
        if (mo->K > cm->moe_K) cm->moe_K = mo->K;
        if (mo->Im > cm->moe_Im) cm->moe_Im = mo->Im;
        if (mo->ld > cm->moe_ld) cm->moe_ld = mo->ld;
        if (mo->K + mo->sh_table > cm->moe_Kt) cm->moe_Kt = mo->K + mo->sh_table;
    }
    if (!cm->moe_K) return;
    /* QCHAT_MOE_ROUTER=0: the norm and cuBLAS's router GEMV as two launches
     * (A/B); the one launch within qk_moe_router's limits */
    cm->moe_router1 = !env_is("QCHAT_MOE_ROUTER", "0") && cm->sh.D % 4 == 0 && cm->sh.D <= 8192;
    /* QCHAT_MOE_ROUTE=0: the routing as its own launch (A/B) */
    cm->moe_route1 = !env_is("QCHAT_MOE_ROUTE", "0");
    bool dq = false;
    for (int li = 0; li < cm->sh.n_layers; li++) {
        const cu_moe *mo = cm->L[li].moe;
        cm->moe_lists |= mo && !mo->grouped;
        dq |= mo && mo->grouped_dq;
    }
    /* One pair launch holds at most 65535 / 2 pairs (qk_gemv_moe's grid) */
    const char *env = getenv("QCHAT_MOE_PAIR_TOKENS");
    int pm = env && *env ? atoi(env) : cm->moe_lists ? CU_MOE_PAIR_TOKENS_UNGROUPED : CU_MOE_PAIR_TOKENS;
    const int cap = 65535 / (2 * cm->moe_Kt);
    cm->moe_pair_max = pm < 1 ? 1 : pm > cap ? cap : pm;
    /* grouped passes: the per-pair outputs (fp32 [pairs][D]) bounded; the
     * experts dequantized in equal batches that fit CU_MOE_DQ_BYTES */
    const size_t D = (size_t)cm->sh.D, per = (size_t)3 * cm->moe_Im * D * 2;
    const size_t pt = CU_MOE_PASS_BYTES / ((size_t)cm->moe_K * D * 4);
    cm->moe_pass = pt < 1 ? 1 : pt > 32768 ? 32768 : (int)pt; /* qk_moe_combine: at most 65535 tokens */
    int nb = (int)(CU_MOE_DQ_BYTES / per);
    nb = nb < 1 ? 1 : nb > cm->moe_E ? cm->moe_E : nb;
    const int nbatch = (cm->moe_E + nb - 1) / nb;
    cm->moe_dq_experts = (cm->moe_E + nbatch - 1) / nbatch;
    cm->dq_moe = dq ? (size_t)cm->moe_dq_experts * per : 0;
}

/* A cu_moe with its expert arrays, hung on G. */
static int moe_new(cu_layer *G, int E, int K, int Im, int Is, bool sh_gated, qc_err *err)
{
    cu_moe *mo = calloc(1, sizeof *mo);
    if (!mo) return qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory for the experts");
    G->moe = mo;
    mo->E = E;
    mo->K = K;
    mo->Im = Im;
    mo->Is = Is;
    mo->sh_gated = Is && sh_gated;
    mo->ld = E + mo->sh_gated;
    mo->gu = calloc((size_t)E, sizeof *mo->gu);
    mo->down = calloc((size_t)E, sizeof *mo->down);
    if (!mo->gu || !mo->down) return qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory for the experts");
    return QC_OK;
}

/* After a layer's experts were made (weight_bytes was wb0 before them): a
 * decode step reads K of the E experts, so they count K / E of their bytes;
 * then the device tables of their descriptors. */
static int moe_finish(qc_cuda_model *cm, cu_moe *mo, int64_t wb0, qc_err *err)
{
    cm->weight_bytes = wb0 + (cm->weight_bytes - wb0) * mo->K / mo->E;
    /* QCHAT_MOE_SHARED=0 keeps the shared expert in its own launches (A/B) */
    mo->sh_table = mo->Is && mo->Is == mo->Im && !env_is("QCHAT_MOE_SHARED", "0");
    int rc = moe_table(cm, mo, mo->gu, mo->sh_table ? &mo->sh_gu : NULL, 2, mo->Im, &mo->t_gu, err);
    if (!rc) rc = moe_table(cm, mo, mo->down, mo->sh_table ? &mo->sh_down : NULL, 1, cm->sh.D, &mo->t_down, err);
    /* QCHAT_MOE_GROUPED=0 keeps the per-expert GEMMs for long chunks (A/B) */
    mo->grouped = !rc && qk_moe_grouped_ok(&mo->t_gu) && qk_moe_grouped_ok(&mo->t_down) && !env_is("QCHAT_MOE_GROUPED", "0");
    /* the GEMM decodes one layout family while loading; experts of mixed
     * layouts (or QCHAT_MOE_DEQUANT=1, for A/B) go through the scratch */
    mo->grouped_dq = mo->grouped && (!qk_moe_gemm_in_place_ok(&mo->t_gu) || !qk_moe_gemm_in_place_ok(&mo->t_down) ||
                                     (env_is("QCHAT_MOE_DEQUANT", "1") && (mo->t_gu.kinds | mo->t_down.kinds) != 1 << QK_QW_BF16));
    return rc;
}

/* One layer's MoE MLP (cu_moe). A decode step reads K of the E experts, so
 * they count K / E of their bytes in weight_bytes. */
static int upload_moe(qc_cuda_model *cm, const qc_config *c, const qc_layer_weights *L, cu_layer *G, qc_err *err)
{
    const int E = c->num_experts;
    int rc = moe_new(G, E, c->num_experts_per_tok, c->moe_intermediate_size,
                     L->sh_gate ? c->shared_expert_intermediate_size : 0, L->sh_router != NULL, err);
    if (rc) return rc;
    cu_moe *mo = G->moe;
    const size_t D = (size_t)cm->sh.D;
    /* (routers are 16-bit in every published layout; a quantized one has its scales checked) */
    if ((rc = qc_linear_check_scales(L->router, 0, E, err)) ||
        (mo->sh_gated && (rc = qc_linear_check_scales(L->sh_router, 0, 1, err))))
        return rc;
    float *rw = malloc((size_t)mo->ld * D * sizeof *rw);
    if (!rw) return qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory for the router");
    qc_linear_dequant_rows(L->router, 0, E, rw);
    if (mo->sh_gated) qc_linear_dequant_rows(L->sh_router, 0, 1, rw + (size_t)E * D);
    /* not through upload_f32: the shared-tensor registry keeps the source
     * pointer, and rw is this function's */
    const size_t rb = (size_t)mo->ld * D * sizeof *rw;
    rc = cu_alloc(&cm->pool, rb, QC_MEM_W_BF16, (void **)&mo->router, err, "router");
    if (!rc && cudaMemcpy(mo->router, rw, rb, cudaMemcpyHostToDevice) != cudaSuccess)
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: upload of the router failed");
    free(rw);
    if (!rc) cm->weight_bytes += (int64_t)mo->ld * D * 4;
    if (!rc && mo->Is) {
        const qc_linear *sgu[] = {L->sh_gate, L->sh_up}, *sdn[] = {L->sh_down};
        rc = upload_fused(cm, sgu, 2, false, &mo->sh_gu, err);
        if (!rc) rc = upload_fused(cm, sdn, 1, false, &mo->sh_down, err);
    }
    const int64_t wb0 = cm->weight_bytes;
    for (int e = 0; e < E && !rc; e++) {
        const qc_linear *gu[] = {L->exp_gate[e], L->exp_up[e]}, *dn[] = {L->exp_down[e]};
        rc = upload_fused(cm, gu, 2, false, &mo->gu[e], err);
        if (!rc) rc = upload_fused(cm, dn, 1, false, &mo->down[e], err);
    }
    return rc ? rc : moe_finish(cm, mo, wb0, err);
}

static int upload_embed(qc_cuda_model *cm, const qc_tensor *t, uint16_t **out, qc_err *err)
{
    size_t n = (size_t)t->numel;
    qc_shared_key k;
    bool share = t->dtype == QC_DT_BF16 && t->nbytes == n * 2; /* the device copy is the source bytes */
    if (share && (*out = cu_shared_find(cm, &k, t->dtype, t->ndim, t->shape, t->data, t->nbytes))) return QC_OK;
    int rc = cu_alloc(&cm->pool, n * 2, QC_MEM_W_BF16, (void **)out, err, t->name);
    if (rc) return rc;
    rc = qc_load_add_to_bf16(&cm->ld->plan, t, *out, err);
    if (!rc && share) cu_shared_offer(cm, &k, t->data, *out, n * 2);
    return rc;
}

/* The bf16 dequantization scratch a quantized matrix needs (0: BF16 or none). */
static size_t mat_dq_bytes(const cu_mat *M) { return M && M->np ? (size_t)M->n * M->k * 2 : 0; }
static size_t size_max(size_t a, size_t b) { return a > b ? a : b; }

/* Bytes of the prefill dequantization scratch: the largest quantized group
 * of a layer (gate|up: 2 I x D), and room for row tiles of a quantized
 * lm_head (which is never dequantized whole). */
static void plan_dq(qc_cuda_model *cm)
{
    size_t need = 0;
    for (int li = 0; li < cm->sh.n_layers; li++) {
        const cu_layer *L = &cm->L[li];
        const cu_moe *mo = L->moe;
        const cu_mat *ms[] = {&L->in, &L->out, &L->gu, &L->down, mo ? &mo->sh_gu : NULL, mo ? &mo->sh_down : NULL};
        for (int j = 0; j < 6; j++) need = size_max(need, mat_dq_bytes(ms[j]));
        for (int e = 0; mo && e < mo->E; e++)
            need = size_max(need, size_max(mat_dq_bytes(&mo->gu[e]), mat_dq_bytes(&mo->down[e])));
    }
    if (cm->head.np) {
        size_t tile = (size_t)4096 * cm->head.k * 2;
        if (tile > need) need = tile;
    }
    cm->dq_need = need;
}

static int cuda_model_init(qc_model *m, const qc_load_opts *opts, qc_err *err)
{
    (void)opts;
    const qc_config *c = m->cfg;
    qc_cuda_shape sh = {0};
    sh.vocab = c->vocab_size;
    sh.n_tokens = m->n_tokens;
    sh.D = c->hidden_size;
    sh.n_layers = c->num_hidden_layers;
    /* MoE: the widest MLP (the experts' or the shared expert's) sizes the
     * activation buffers the dense MLP uses */
    sh.I = c->is_moe ? (c->moe_intermediate_size > c->shared_expert_intermediate_size
                            ? c->moe_intermediate_size
                            : c->shared_expert_intermediate_size)
                     : c->intermediate_size;
    sh.H = c->num_attention_heads;
    sh.KV = c->num_key_value_heads;
    sh.hd = c->head_dim;
    sh.rot = c->rotary_dim;
    sh.theta = (float)c->rope_theta;
    sh.eps = (float)c->rms_norm_eps;
    sh.Hk = c->linear_num_key_heads;
    sh.Hv = c->linear_num_value_heads;
    sh.dk = c->linear_key_head_dim;
    sh.dv = c->linear_value_head_dim;
    memcpy(sh.full, c->layer_full, sizeof sh.full);
    if (c->linear_conv_kernel_dim != 4 && c->n_linear_layers > 0)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA backend: conv kernel %d unsupported (4 only)",
                          c->linear_conv_kernel_dim);
    qc_cuda_model *cm;
    int rc = cu_model_new(&sh, &cm, err);
    if (rc) return rc;
    const qc_model_weights *w = &m->w;
    const int D = sh.D;
    double t_load = qc_now();
    cu_loader ld;
    memset(&ld, 0, sizeof ld);
    qc_load_plan_init(&ld.plan, QC_LOAD_CHUNK);
    cm->ld = &ld;
    rc = upload_embed(cm, w->embed, &cm->embed, err);
    sh.tied = w->lm_head->weight == w->embed || (w->lm_head->weight && w->lm_head->weight->data == w->embed->data &&
                                                  w->embed->dtype == QC_DT_BF16);
    cm->sh.tied = sh.tied;
    if (!rc && sh.tied) {
        cm->head.bf = cm->embed;
        cm->head.n = sh.vocab;
        cm->head.k = D;
        cm->weight_bytes += (int64_t)sh.vocab * D * 2;
    } else if (!rc && w->lm_head->format == QC_FMT_BF16 && w->lm_head->weight &&
               w->lm_head->weight->dtype == QC_DT_BF16 && w->lm_head->k % 8 == 0) {
        /* A BF16 head goes up as its bytes, like the embedding, so it can be shared too. */
        rc = upload_embed(cm, w->lm_head->weight, &cm->head.bf, err);
        cm->head.n = (int)w->lm_head->n;
        cm->head.k = (int)w->lm_head->k;
        if (!rc) cm->weight_bytes += (int64_t)cm->head.n * cm->head.k * 2;
    } else if (!rc) {
        const qc_linear *lh[] = {w->lm_head};
        rc = upload_fused(cm, lh, 1, true, &cm->head, err);
    }
    if (!rc) rc = upload_f32(cm, w->final_norm, D, &cm->final_norm, err, "final norm");
    for (int li = 0; li < sh.n_layers && !rc; li++) {
        const qc_layer_weights *L = &w->layers[li];
        cu_layer *G = &cm->L[li];
        G->full = L->full;
        rc = upload_f32(cm, L->in_norm, D, &G->in_norm, err, "input_layernorm");
        if (!rc) rc = upload_f32(cm, L->post_norm, D, &G->post_norm, err, "post_attention_layernorm");
        if (!rc && !L->full) {
            const qc_linear *in[] = {L->qkv, L->z, L->b, L->a};
            rc = upload_fused(cm, in, 4, true, &G->in, err);
            G->n_in = G->in.n;
            const qc_linear *o[] = {L->out};
            if (!rc) rc = upload_fused(cm, o, 1, true, &G->out, err);
            G->k_out = sh.Hv * sh.dv;
            if (!rc) rc = upload_f32(cm, L->conv_w, (size_t)cm->conv_dim * 4, &G->conv_w, err, "conv1d");
            if (!rc) rc = upload_f32(cm, L->dt_bias, sh.Hv, &G->dt_bias, err, "dt_bias");
            if (!rc) rc = upload_f32(cm, L->neg_exp_a, sh.Hv, &G->nexpa, err, "A_log");
            if (!rc) rc = upload_f32(cm, L->gdn_norm, sh.dv, &G->gdn_norm, err, "linear_attn.norm");
        } else if (!rc) {
            const qc_linear *in[] = {L->q, L->k, L->v};
            rc = upload_fused(cm, in, 3, true, &G->in, err);
            G->n_in = G->in.n;
            const qc_linear *o[] = {L->o};
            if (!rc) rc = upload_fused(cm, o, 1, true, &G->out, err);
            G->k_out = sh.H * sh.hd;
            if (!rc) rc = upload_f32(cm, L->q_norm, sh.hd, &G->q_norm, err, "q_norm");
            if (!rc) rc = upload_f32(cm, L->k_norm, sh.hd, &G->k_norm, err, "k_norm");
        }
        if (!rc && L->router) {
            rc = upload_moe(cm, c, L, G, err);
        } else if (!rc) {
            const qc_linear *gu[] = {L->gate, L->up};
            rc = upload_fused(cm, gu, 2, true, &G->gu, err);
            const qc_linear *dn[] = {L->down};
            if (!rc) rc = upload_fused(cm, dn, 1, true, &G->down, err);
        }
    }
    if (!rc) moe_dims(cm);
    cm->load_plan_s = qc_now() - t_load;
    if (!rc) rc = loader_run(&ld, &cm->load_st, err);
    if (!rc && cudaStreamSynchronize(cm->st) != cudaSuccess)
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: uploading the weights failed");
    cm->ld = NULL;
    loader_free(&ld);
    if (rc) {
        qc_cuda_model_free(cm);
        return rc;
    }
    cu_shared_publish_all(cm);
    plan_dq(cm);
    cm->load_s = qc_now() - t_load;
    m->be_model = cm;
    snprintf(m->device, sizeof m->device, "cuda:%.80s", cm->name);
    return QC_OK;
}

static void cuda_model_free(qc_model *m)
{
    qc_cuda_model_free(m->be_model);
    m->be_model = NULL;
}

qc_cuda_model *qc_cuda_model_of(qc_model *m)
{
    return m && m->be == &qc_cuda_backend ? m->be_model : NULL;
}

/* ---- synthetic models (bench) ---- */

int qc_cuda_shape_by_name(const char *name, qc_cuda_shape *sh, qc_err *err)
{
    memset(sh, 0, sizeof *sh);
    struct {
        const char *n;
        int D, L, I, H, KV, Hk, Hv;
        bool tied;
    } t[] = {{"0.8b", 1024, 24, 3584, 8, 2, 16, 16, true},
             {"2b", 2048, 24, 6144, 8, 2, 16, 16, true},
             {"4b", 2560, 32, 9216, 16, 4, 16, 32, true},
             {"9b", 4096, 32, 12288, 16, 4, 16, 32, false},
             {"27b", 5120, 64, 17408, 24, 4, 16, 48, false},
             {"35b-a3b", 2048, 40, 512, 16, 2, 16, 32, false}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (strcmp(name, t[i].n)) continue;
        sh->vocab = 248320;
        sh->n_tokens = 248077;
        sh->D = t[i].D;
        sh->n_layers = t[i].L;
        sh->I = t[i].I;
        sh->H = t[i].H;
        sh->KV = t[i].KV;
        sh->hd = 256;
        sh->rot = 64;
        sh->theta = 1e7f;
        sh->eps = 1e-6f;
        sh->Hk = t[i].Hk;
        sh->Hv = t[i].Hv;
        sh->dk = sh->dv = 128;
        sh->tied = t[i].tied;
        for (int l = 0; l < sh->n_layers; l++) sh->full[l] = (l + 1) % 4 == 0;
        if (!strcmp(name, "35b-a3b")) { /* 256 experts, 8 per token, of 512, and a shared one of 512 */
            sh->E = 256;
            sh->K = 8;
            sh->Im = sh->Is = 512;
        }
        return QC_OK;
    }
    return qc_err_set(err, QC_EXIT_USAGE, "unknown model size '%s' (0.8b, 2b, 4b, 9b, 27b, 35b-a3b)", name);
}

/* The format mixes of `qchat bench --synthetic SIZE:FMT`, as published
 * checkpoints use them (lm_head and the embedding stay BF16 in all; "a|b" is
 * the GDN in_proj_a|b, which quantized checkpoints leave BF16 except where
 * said):
 *   bf16         everything BF16;
 *   fp8          Qwen FP8: fp8-block 128x128 Linears;
 *   fp8-channel  compressed-tensors FP8 with one scale per output channel;
 *   int4         INT4 g128 symmetric, bf16 scales (compressed-tensors style);
 *   int4-gptq    GPTQ / AutoRound g128 symmetric, f16 scales;
 *   int4-g32     GPTQ g32, f16 scales;
 *   int4-g64     GPTQ g64, f16 scales;
 *   int4-gidx    GPTQ g128 with act-order (g_idx: one random permutation of
 *                K per fused group, shared by its parts as GPTQ's Hessian
 *                order is for Linears that read the same input), f16 scales;
 *   nvfp4        compressed-tensors NVFP4 everywhere, a|b included;
 *   mxfp4        MXFP4 everywhere, a|b included;
 *   nvfp4-mixed  NVIDIA style: NVFP4 MLP, FP8 attention and GDN. */
enum { SY_QKV, SY_Z, SY_B, SY_A, SY_GOUT, SY_Q, SY_K, SY_V, SY_O, SY_GATE, SY_UP, SY_DOWN };
typedef struct synth_mix {
    const char *name;
    int kind, mlp_kind; /* QK_QW_* of the Linears and of the MLP */
    bool ab_q;          /* in_proj_a|b in `kind` too (else BF16) */
    int group;          /* int4 group */
    bool f16, gidx;     /* int4: f16 scales; act-order permutation */
    bool channel;       /* fp8: per-channel scales */
} synth_mix;
static const synth_mix synth_mixes[] = {
    {"bf16", QK_QW_BF16, QK_QW_BF16, false, 0, false, false, false},
    {"fp8", QK_QW_FP8, QK_QW_FP8, false, 0, false, false, false},
    {"fp8-channel", QK_QW_FP8, QK_QW_FP8, false, 0, false, false, true},
    {"int4", QK_QW_INT4, QK_QW_INT4, false, 128, false, false, false},
    {"int4-gptq", QK_QW_INT4, QK_QW_INT4, false, 128, true, false, false},
    {"int4-g32", QK_QW_INT4, QK_QW_INT4, false, 32, true, false, false},
    {"int4-g64", QK_QW_INT4, QK_QW_INT4, false, 64, true, false, false},
    {"int4-gidx", QK_QW_INT4, QK_QW_INT4, false, 128, true, true, false},
    {"nvfp4", QK_QW_NVFP4, QK_QW_NVFP4, true, 0, false, false, false},
    {"mxfp4", QK_QW_MXFP4, QK_QW_MXFP4, true, 0, false, false, false},
    {"nvfp4-mixed", QK_QW_FP8, QK_QW_NVFP4, false, 0, false, false, false},
};
#define SYNTH_MIX_NAMES "bf16, fp8, fp8-channel, int4, int4-gptq, int4-g32, int4-g64, int4-gidx, nvfp4, mxfp4, nvfp4-mixed"

static int synth_kind(const synth_mix *mx, int role)
{
    bool ab = role == SY_B || role == SY_A, mlp = role == SY_GATE || role == SY_UP || role == SY_DOWN;
    if (role < 0 || (ab && !mx->ab_q)) return QK_QW_BF16;
    return mlp ? mx->mlp_kind : mx->kind;
}

/* A random act-order permutation of K (uniform groups of G inputs, the
 * layout qc_qweight_plan_gidx gives a GPTQ file with desc_act), on the
 * device in cm's pool: *dev and its byte size. */
static int synth_perm(qc_cuda_model *cm, int K, int G, uint64_t seed, qk_qweight *lay, int32_t **dev, qc_err *err)
{
    memset(lay, 0, sizeof *lay);
    int32_t *g = malloc((size_t)K * sizeof *g);
    int rc = !g || qc_quant_act_order(K, G, seed * 0x9e3779b97f4a7c15ull + 1, g)
                 ? qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory (synthetic g_idx)")
                 : QC_OK;
    if (!rc) rc = qc_qweight_plan_gidx(lay, g, K, (K + G - 1) / G, G, err, "synthetic g_idx");
    free(g);
    if (!rc) rc = cu_alloc(&cm->pool, lay->perm_bytes, QC_MEM_W_INT4, (void **)dev, err, "synthetic g_idx");
    if (!rc && cudaMemcpy(*dev, lay->perm, lay->perm_bytes, cudaMemcpyHostToDevice) != cudaSuccess)
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: uploading a synthetic g_idx failed");
    if (!rc) cm->scale_bytes += lay->perm_bytes;
    free(lay->perm);
    lay->perm = NULL;
    return rc;
}

/* A random weight of `kind` in its kernel-native layout, made on the GPU;
 * INT4 and FP8 in mx's variant (gl: the group's act-order layout, or NULL). */
static int synth_qw(qc_cuda_model *cm, const synth_mix *mx, int kind, int n, int k, uint64_t seed,
                    const qk_qweight *gl, bool tile, qk_qweight *q, qc_err *err)
{
    qc_qweight_plan_random(q, kind, n, k);
    const size_t np = (size_t)q->n_pad;
    if (q->kind == QK_QW_INT4 && gl) { /* act-order: the permuted K and its groups */
        q->k_pad = gl->k_pad;
        q->group = gl->group;
        q->ngroups = gl->ngroups;
        q->perm = gl->perm;
        q->perm_bytes = gl->perm_bytes;
        q->perm_regular = gl->perm_regular;
    } else if (q->kind == QK_QW_INT4 && mx->group != 128) {
        q->group = mx->group;
        q->ngroups = (q->k_pad + mx->group - 1) / mx->group;
    }
    if (q->kind == QK_QW_INT4) {
        q->scale_f16 = mx->f16;
        q->w_bytes = np * (size_t)q->k_pad / 2;
        q->s_bytes = np * (size_t)q->ngroups * 4;
    }
    if (q->kind == QK_QW_INT4 && !q->perm) q->zero8 = cm->int4_s16; /* k_fq_int4s: symmetric, every zero 8 */
    if (tile && cm->int4_tile) qc_qweight_tile(q); /* random codes and scale words: the same fill either way */
    if (q->kind == QK_QW_FP8 && mx->channel) { /* blocks of 1 x k_pad */
        q->blk_n = 1;
        q->blk_k = q->k_pad;
        q->nkb = 1;
        q->s_bytes = np * 4;
    }
    q->fmt = q->kind == QK_QW_FP8     ? (mx->channel ? QC_FMT_FP8_CHANNEL : QC_FMT_FP8_BLOCK)
             : q->kind == QK_QW_INT4  ? (mx->f16 ? QC_FMT_GPTQ : QC_FMT_CT_INT)
             : q->kind == QK_QW_NVFP4 ? QC_FMT_NVFP4_CT
             : q->kind == QK_QW_MXFP4 ? QC_FMT_MXFP4_CT
                                      : QC_FMT_BF16;
    int tag = tag_of_kind(q->kind);
    int rc = cu_alloc(&cm->pool, q->w_bytes, tag, &q->w, err, "synthetic weight");
    if (!rc && q->s_bytes) {
        rc = cu_alloc(&cm->pool, q->s_bytes, tag, &q->s, err, "synthetic scales");
        cm->scale_bytes += q->s_bytes;
    }
    if (rc) return rc;
    CK(qk_fill_random_qweight(q, seed, sqrtf(3.0f / (float)k), cm->st));
    return QC_OK;
}

/* A fused group of random weights: one stacked BF16 matrix when every part
 * is BF16 in this mix, else its parts in their layouts (act-order INT4 parts
 * of a group share one permutation). */
static int synth_group(qc_cuda_model *cm, const synth_mix *mx, const int *roles, const int *ns, int np, int K,
                       uint64_t seed, cu_mat *M, bool tile, qc_err *err)
{
    memset(M, 0, sizeof *M);
    M->k = K;
    bool all_bf16 = true;
    for (int i = 0; i < np; i++) {
        M->n += ns[i];
        if (synth_kind(mx, roles[i]) != QK_QW_BF16) all_bf16 = false;
    }
    if (all_bf16) {
        int rc = cu_alloc(&cm->pool, (size_t)M->n * K * 2, QC_MEM_W_BF16, (void **)&M->bf, err, "synthetic weight");
        if (rc) return rc;
        CK(qk_fill_random_bf16(M->bf, (int64_t)M->n * K, seed, sqrtf(3.0f / (float)K), cm->st));
    } else {
        qk_qweight gl, *glp = NULL;
        if (mx->gidx && mx->kind == QK_QW_INT4) {
            int32_t *dev = NULL;
            int rc = synth_perm(cm, K, mx->group, seed, &gl, &dev, err);
            if (rc) return rc;
            gl.perm = dev;
            glp = &gl;
        }
        int r = 0;
        for (int i = 0; i < np; i++) {
            M->off[i] = r;
            r += ns[i];
            int rc = synth_qw(cm, mx, synth_kind(mx, roles[i]), ns[i], K, seed * 16 + (uint64_t)i, glp, tile, &M->q[i],
                              err);
            M->np = i + 1;
            if (rc) return rc;
        }
    }
    cm->weight_bytes += mat_bytes(M);
    return QC_OK;
}

static int synth_vec(qc_cuda_model *cm, int64_t n, uint64_t seed, float lo, float hi, float **out, qc_err *err)
{
    int rc = cu_alloc(&cm->pool, (size_t)n * 4, QC_MEM_W_BF16, (void **)out, err, "synthetic vector");
    if (rc) return rc;
    CK(qk_fill_random_f32(*out, n, seed, lo, hi, cm->st));
    return QC_OK;
}

/* A random MoE MLP of sh's E experts (the experts and the shared expert in
 * the mix's MLP formats, the router fp32 as the engine holds it). */
static int synth_moe(qc_cuda_model *cm, const synth_mix *mix, cu_layer *G, uint64_t *s, qc_err *err)
{
    const qc_cuda_shape *sh = &cm->sh;
    const int D = sh->D;
    int rc = moe_new(G, sh->E, sh->K, sh->Im, sh->Is, true, err);
    if (rc) return rc;
    cu_moe *mo = G->moe;
    const float a = sqrtf(3.0f / (float)D);
    rc = synth_vec(cm, (int64_t)mo->ld * D, (*s)++, -a, a, &mo->router, err);
    if (!rc) cm->weight_bytes += (int64_t)mo->ld * D * 4;
    int rgu[] = {SY_GATE, SY_UP}, rd = SY_DOWN, nsh[] = {mo->Is, mo->Is}, nex[] = {mo->Im, mo->Im};
    if (!rc && mo->Is) rc = synth_group(cm, mix, rgu, nsh, 2, D, (*s)++, &mo->sh_gu, false, err);
    if (!rc && mo->Is) rc = synth_group(cm, mix, &rd, &D, 1, mo->Is, (*s)++, &mo->sh_down, false, err);
    const int64_t wb0 = cm->weight_bytes;
    for (int e = 0; e < mo->E && !rc; e++) {
        rc = synth_group(cm, mix, rgu, nex, 2, D, (*s)++, &mo->gu[e], false, err);
        if (!rc) rc = synth_group(cm, mix, &rd, &D, 1, mo->Im, (*s)++, &mo->down[e], false, err);
    }
    return rc ? rc : moe_finish(cm, mo, wb0, err);
}

int qc_cuda_model_synthetic_fmt(const qc_cuda_shape *sh, const char *fmt, uint64_t seed, qc_cuda_model **out,
                                qc_err *err)
{
    const synth_mix *mix = NULL;
    for (size_t i = 0; i < sizeof synth_mixes / sizeof synth_mixes[0]; i++)
        if (!strcmp(fmt, synth_mixes[i].name)) mix = &synth_mixes[i];
    if (!mix) return qc_err_set(err, QC_EXIT_USAGE, "unknown synthetic format '%s' (" SYNTH_MIX_NAMES ")", fmt);
    qc_cuda_model *cm;
    int rc = cu_model_new(sh, &cm, err);
    if (rc) return rc;
    uint64_t s = seed * 1000;
    const int D = sh->D;
    rc = cu_alloc(&cm->pool, (size_t)sh->vocab * D * 2, QC_MEM_W_BF16, (void **)&cm->embed, err, "embedding");
    if (!rc) rc = qk_fill_random_bf16(cm->embed, (int64_t)sh->vocab * D, s++, 1.0f, cm->st) ? QC_EXIT_RUNTIME : 0;
    if (!rc && sh->tied) {
        cm->head.bf = cm->embed;
        cm->head.n = sh->vocab;
        cm->head.k = D;
        cm->weight_bytes += (int64_t)sh->vocab * D * 2;
    } else if (!rc) {
        int role = -1, n = sh->vocab; /* role -1: BF16 in every mix */
        rc = synth_group(cm, &synth_mixes[0], &role, &n, 1, D, s++, &cm->head, true, err);
    }
    if (!rc) rc = synth_vec(cm, D, s++, -0.1f, 0.1f, &cm->final_norm, err);
    for (int li = 0; li < sh->n_layers && !rc; li++) {
        cu_layer *G = &cm->L[li];
        G->full = sh->full[li];
        rc = synth_vec(cm, D, s++, -0.1f, 0.1f, &G->in_norm, err);
        if (!rc) rc = synth_vec(cm, D, s++, -0.1f, 0.1f, &G->post_norm, err);
        if (!rc && !G->full) {
            int roles[] = {SY_QKV, SY_Z, SY_B, SY_A}, ns[] = {cm->conv_dim, sh->Hv * sh->dv, sh->Hv, sh->Hv};
            int ro = SY_GOUT;
            G->n_in = cm->conv_dim + sh->Hv * sh->dv + 2 * sh->Hv;
            G->k_out = sh->Hv * sh->dv;
            rc = synth_group(cm, mix, roles, ns, 4, D, s++, &G->in, true, err);
            if (!rc) rc = synth_group(cm, mix, &ro, &D, 1, G->k_out, s++, &G->out, true, err);
            if (!rc) rc = synth_vec(cm, (int64_t)cm->conv_dim * 4, s++, -0.5f, 0.5f, &G->conv_w, err);
            if (!rc) rc = synth_vec(cm, sh->Hv, s++, -1.0f, 1.0f, &G->dt_bias, err);
            if (!rc) rc = synth_vec(cm, sh->Hv, s++, -2.0f, -0.05f, &G->nexpa, err);
            if (!rc) rc = synth_vec(cm, sh->dv, s++, 0.5f, 1.5f, &G->gdn_norm, err);
        } else if (!rc) {
            int roles[] = {SY_Q, SY_K, SY_V}, ns[] = {2 * sh->H * sh->hd, sh->KV * sh->hd, sh->KV * sh->hd};
            int ro = SY_O;
            G->n_in = 2 * sh->H * sh->hd + 2 * sh->KV * sh->hd;
            G->k_out = sh->H * sh->hd;
            rc = synth_group(cm, mix, roles, ns, 3, D, s++, &G->in, true, err);
            if (!rc) rc = synth_group(cm, mix, &ro, &D, 1, G->k_out, s++, &G->out, true, err);
            if (!rc) rc = synth_vec(cm, sh->hd, s++, -0.1f, 0.1f, &G->q_norm, err);
            if (!rc) rc = synth_vec(cm, sh->hd, s++, -0.1f, 0.1f, &G->k_norm, err);
        }
        int rgu[] = {SY_GATE, SY_UP}, ngu[] = {sh->I, sh->I}, rd = SY_DOWN;
        if (!rc && sh->E) {
            rc = synth_moe(cm, mix, G, &s, err);
        } else if (!rc) {
            rc = synth_group(cm, mix, rgu, ngu, 2, D, s++, &G->gu, true, err);
            if (!rc) rc = synth_group(cm, mix, &rd, &D, 1, sh->I, s++, &G->down, true, err);
        }
    }
    if (!rc) moe_dims(cm);
    if (!rc && cudaStreamSynchronize(cm->st) != cudaSuccess)
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: filling synthetic weights failed");
    if (rc) {
        qc_cuda_model_free(cm);
        return rc;
    }
    plan_dq(cm);
    *out = cm;
    return QC_OK;
}

int qc_cuda_model_synthetic(const qc_cuda_shape *sh, uint64_t seed, qc_cuda_model **out, qc_err *err)
{
    return qc_cuda_model_synthetic_fmt(sh, "bf16", seed, out, err);
}

double qc_cuda_load_seconds(const qc_cuda_model *cm) { return cm->load_s; }

void qc_cuda_load_report(const qc_cuda_model *cm, double *plan_s, qc_load_stats *st)
{
    *plan_s = cm->load_plan_s;
    *st = cm->load_st;
}

int qc_cuda_h2d_bandwidth(double *bytes_per_s, qc_err *err)
{
    const size_t n = (size_t)256 << 20;
    void *h = NULL, *d = NULL;
    cudaEvent_t a = NULL, b = NULL;
    *bytes_per_s = 0;
    int rc = QC_OK;
    if (cudaHostAlloc(&h, n, cudaHostAllocDefault) != cudaSuccess || cudaMalloc(&d, n) != cudaSuccess ||
        cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess) {
        cudaGetLastError();
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: cannot set up the host-to-device bandwidth test");
    }
    if (!rc) {
        memset(h, 1, n);
        float ms = 0;
        for (int rep = 0; rep < 2 && !rc; rep++) /* the first warms up */
            if (cudaEventRecord(a, 0) != cudaSuccess || cudaMemcpyAsync(d, h, n, cudaMemcpyHostToDevice, 0) != cudaSuccess ||
                cudaEventRecord(b, 0) != cudaSuccess || cudaEventSynchronize(b) != cudaSuccess ||
                cudaEventElapsedTime(&ms, a, b) != cudaSuccess)
                rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: host-to-device bandwidth test failed");
        if (!rc && ms > 0) *bytes_per_s = (double)n / (ms * 1e-3);
    }
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    if (d) cudaFree(d);
    if (h) cudaFreeHost(h);
    return rc;
}
uint64_t qc_cuda_scale_bytes(const qc_cuda_model *cm) { return cm->scale_bytes; }

/* ---- session ---- */

struct qc_cuda_sess {
    qc_cuda_model *cm;
    cu_pool state;   /* KV caches and GDN state */
    cu_pool scratch; /* the arena */
    int cap;         /* KV positions */
    int max_ctx;     /* 0 = unbounded; the KV caches never grow past it */
    uint16_t **kc, **vc;
    float **conv, **S;
    int tmax, lrows; /* arena sized for tmax tokens and lrows logits rows */
    float *h, *proj, *cbuf, *beta, *g, *o, *q, *gate, *fn, *logits;
    uint16_t *xb, *yb;
    void *gdn_scr, *attn_scr, *attn_gemm;
    size_t attn_gemm_bytes;
    int32_t *d_io;   /* [0] id of a decode step, [1] position, [2] sampled id, then ids */
    int32_t *h_io;   /* pinned host mirror of d_io[0..3) */
    int nsplit;
    cudaGraphExec_t graph;
    bool have_graph;
    int eager_steps;
    qc_cuda_sampling *smp; /* device sampling buffers, made on first use */
    /* MoE models (moe_forward): router logits [T][moe_ld], choices and
     * weights [T][Kt], the shared expert's output, the experts' gate|up
     * (fp32 [P][2 Im] for P pairs, bf16 [T][2 Im] for per-expert GEMMs),
     * SwiGLU outputs, outputs (fp32 [max(P, T)][D]), the pairs' order, the
     * GEMMs' gathered inputs, per-expert token lists and their sum; host
     * copies of the lists. */
    float *m_xf, *m_log, *m_wts, *m_ysh, *m_ye, *m_acc, *m_rw;
    void *m_gu;
    int32_t *m_sel, *m_rows, *m_order;
    int32_t *m_off, *m_ts, *m_tiles; /* a grouped pass's plan (qk_moe_plan) */
    uint16_t *m_he, *m_xe;
    int32_t *hm_sel, *hm_rows;
    float *hm_wts, *hm_rw;
    int *hm_cnt;
};

static int sess_alloc_state(qc_cuda_sess *cs, int cap, qc_err *err)
{
    qc_cuda_model *cm = cs->cm;
    const qc_cuda_shape *sh = &cm->sh;
    int rc = QC_OK;
    for (int li = 0; li < sh->n_layers && !rc; li++) {
        if (cm->L[li].full) {
            size_t n = (size_t)sh->KV * cap * sh->hd * 2;
            rc = cu_alloc(&cs->state, n, QC_MEM_KV, (void **)&cs->kc[li], err, "K cache");
            if (!rc) rc = cu_alloc(&cs->state, n, QC_MEM_KV, (void **)&cs->vc[li], err, "V cache");
        } else if (!cs->S[li]) {
            rc = cu_alloc(&cs->state, (size_t)cm->conv_dim * 3 * 4, QC_MEM_GDN_STATE, (void **)&cs->conv[li], err,
                          "conv state");
            if (!rc)
                rc = cu_alloc(&cs->state, (size_t)sh->Hv * sh->dk * sh->dv * 4, QC_MEM_GDN_STATE, (void **)&cs->S[li],
                              err, "GDN state");
        }
    }
    cs->cap = cap;
    return rc;
}

void qc_cuda_sess_reset(qc_cuda_sess *cs)
{
    const qc_cuda_shape *sh = &cs->cm->sh;
    for (int li = 0; li < sh->n_layers; li++) {
        if (cs->conv[li]) cudaMemsetAsync(cs->conv[li], 0, (size_t)cs->cm->conv_dim * 3 * 4, cs->cm->st);
        if (cs->S[li]) cudaMemsetAsync(cs->S[li], 0, (size_t)sh->Hv * sh->dk * sh->dv * 4, cs->cm->st);
    }
    cudaStreamSynchronize(cs->cm->st);
}

/* Grows the K/V caches to hold n positions (old contents kept). */
static int sess_grow_kv(qc_cuda_sess *cs, int n, qc_err *err)
{
    if (n <= cs->cap) return QC_OK;
    qc_cuda_model *cm = cs->cm;
    const qc_cuda_shape *sh = &cm->sh;
    int ncap = cs->cap * 2 > n ? cs->cap * 2 : n;
    if (cs->max_ctx > 0 && ncap > cs->max_ctx) ncap = n > cs->max_ctx ? n : cs->max_ctx;
    for (int li = 0; li < sh->n_layers; li++) {
        if (!cm->L[li].full) continue;
        uint16_t *nk, *nv;
        size_t bytes = (size_t)sh->KV * ncap * sh->hd * 2;
        int rc = cu_alloc(&cs->state, bytes, QC_MEM_KV, (void **)&nk, err, "K cache");
        if (!rc) rc = cu_alloc(&cs->state, bytes, QC_MEM_KV, (void **)&nv, err, "V cache");
        if (rc) return rc;
        size_t row = (size_t)cs->cap * sh->hd * 2, nrow = (size_t)ncap * sh->hd * 2;
        if (cudaMemcpy2D(nk, nrow, cs->kc[li], row, row, sh->KV, cudaMemcpyDeviceToDevice) != cudaSuccess ||
            cudaMemcpy2D(nv, nrow, cs->vc[li], row, row, sh->KV, cudaMemcpyDeviceToDevice) != cudaSuccess)
            return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: growing the KV cache failed");
        /* release the old caches and their accounting */
        for (int i = 0; i < cs->state.n; i++)
            if (cs->state.p[i] == cs->kc[li] || cs->state.p[i] == cs->vc[li]) {
                cudaFree(cs->state.p[i]);
                cs->state.p[i] = cs->state.p[--cs->state.n];
                i--;
            }
        cs->state.bytes[QC_MEM_KV] -= 2 * (size_t)sh->KV * cs->cap * sh->hd * 2;
        cs->kc[li] = nk;
        cs->vc[li] = nv;
    }
    cs->cap = ncap;
    cs->have_graph = false; /* the graph holds the old cache addresses */
    return QC_OK;
}

static size_t al256(size_t n) { return (n + 255) & ~(size_t)255; }

/* (Re)builds the scratch arena for T tokens and lrows logits rows. */
static int sess_arena(qc_cuda_sess *cs, int T, int lrows, qc_err *err)
{
    qc_cuda_model *cm0 = cs->cm;
    /* the model's prefill dequantization scratch, made on the first prefill;
     * a long MoE chunk's expert batches need more (moe_grouped), so only
     * those grow it */
    const size_t dq_need = T > cm0->moe_pair_max && cm0->dq_moe > cm0->dq_need ? cm0->dq_moe : cm0->dq_need;
    if (T > 1 && dq_need > cm0->dq_bytes) {
        if (cm0->dq) {
            cudaStreamSynchronize(cm0->st);
            cu_pool_detach(&cm0->pool, cm0->dq, cm0->dq_bytes, QC_MEM_SCRATCH);
            cudaFree(cm0->dq);
            cm0->dq = NULL;
            cm0->dq_bytes = 0;
        }
        int rc = cu_alloc(&cm0->pool, dq_need, QC_MEM_SCRATCH, (void **)&cm0->dq, err, "dequantization scratch");
        if (rc) return rc;
        cm0->dq_bytes = dq_need;
    }
    if (T <= cs->tmax && lrows <= cs->lrows) return QC_OK;
    if (T < cs->tmax) T = cs->tmax;
    if (lrows < cs->lrows) lrows = cs->lrows;
    qc_cuda_model *cm = cs->cm;
    const qc_cuda_shape *sh = &cm->sh;
    cudaStreamSynchronize(cm->st);
    cu_pool_free(&cs->scratch);
    cs->have_graph = false;
    size_t t = (size_t)T;
    size_t wide = (size_t)(sh->Hv * sh->dv > sh->H * sh->hd ? sh->Hv * sh->dv : sh->H * sh->hd);
    if ((size_t)sh->I > wide) wide = sh->I;
    /* MoE: the most (token, expert) pairs one pair launch runs, or one
     * grouped pass (moe_grouped) */
    const size_t np = cm->moe_K ? (size_t)(T < cm->moe_pair_max ? T : cm->moe_pair_max) * cm->moe_Kt : 0;
    const size_t ngp = cm->moe_K && T > cm->moe_pair_max ? (size_t)(T < cm->moe_pass ? T : cm->moe_pass) * cm->moe_K : 0;
    const size_t npg = np > ngp ? np : ngp, nyt = npg > t ? npg : t;
    const size_t ntile = ngp ? ngp / QK_MOE_BM_MIN + (size_t)cm->moe_E + 1 : 0;
    const size_t tl = cm->moe_lists ? t : 0; /* tokens of the per-expert GEMM path (moe_lists) */
    size_t sz[] = {
        t * sh->D * 4,                                        /* h */
        t * cm->n_max * 4,                                    /* proj */
        t * cm->conv_dim * 4,                                 /* cbuf */
        t * sh->Hv * 4, t * sh->Hv * 4,                       /* beta, g */
        t * sh->Hv * sh->dv * 4,                              /* o */
        t * sh->H * sh->hd * 4, t * sh->H * sh->hd * 4,       /* q, gate */
        t * sh->D * 4,                                        /* fn */
        (size_t)lrows * sh->vocab * 4,                        /* logits */
        t * sh->D * 2,                                        /* xb */
        t * wide * 2,                                         /* yb */
        qk_gdn_prefill_scratch(T, sh->Hv, sh->dk, sh->dv),    /* gdn */
        qk_attn_scratch(1, sh->H, sh->hd, cs->nsplit),        /* split-KV partials */
        cm->moe_K ? t * sh->D * 4 : 0,                        /* m_xf */
        t * cm->moe_ld * 4,                                   /* m_log */
        t * cm->moe_Kt * 4, t * cm->moe_Kt * 4,               /* m_sel, m_wts */
        cm->moe_K ? t * sh->D * 4 : 0,                        /* m_ysh */
        cm->moe_K ? nyt * sh->D * 4 : 0,                      /* m_ye */
        tl * sh->D * 4,                                       /* m_acc */
        tl * cm->moe_K * 4, tl * cm->moe_K * 4,               /* m_rows, m_rw */
        (np * 4 > tl * 2 ? np * 4 : tl * 2) * 2 * cm->moe_Im, /* m_gu */
        nyt * cm->moe_Im * 2,                                 /* m_he */
        npg * 4,                                              /* m_order */
        tl * sh->D * 2,                                       /* m_xe */
        ngp ? (size_t)(cm->moe_E + 1) * 4 : 0,                /* m_off */
        ngp ? (size_t)(cm->moe_E + 1) * 4 : 0,                /* m_ts */
        ntile * 16,                                           /* m_tiles */
        (t + 4) * 4,                                          /* io + ids */
        cs->attn_gemm_bytes,                                  /* cuBLAS attention blocks */
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof sz / sizeof sz[0] - 1; i++) total += al256(sz[i]);
    /* Long chunks run attention through cuBLAS in blocks of query rows (when
     * the flash kernel does not serve the shape): room for all T rows over the
     * current cache, at most 1 GiB. */
    size_t ag = T >= CU_GEMM_ATTN_MIN && !qk_attn_flash_ok(sh->H, sh->KV, sh->hd)
                    ? t * sh->H * (((size_t)cs->cap + 8) * 6 + (size_t)sh->hd * 6) + (1u << 20)
                    : 0;
    cs->attn_gemm_bytes = sz[sizeof sz / sizeof sz[0] - 1] = ag < ((size_t)1 << 30) ? ag : ((size_t)1 << 30);
    total += al256(cs->attn_gemm_bytes);
    char *base;
    int rc = cu_alloc(&cs->scratch, total, QC_MEM_SCRATCH, (void **)&base, err, "activation scratch");
    if (rc) {
        cs->tmax = cs->lrows = 0;
        return rc;
    }
    void **ptrs[] = {(void **)&cs->h,    (void **)&cs->proj, (void **)&cs->cbuf, (void **)&cs->beta,
                     (void **)&cs->g,    (void **)&cs->o,    (void **)&cs->q,    (void **)&cs->gate,
                     (void **)&cs->fn,   (void **)&cs->logits, (void **)&cs->xb, (void **)&cs->yb,
                     &cs->gdn_scr,       &cs->attn_scr,
                     (void **)&cs->m_xf, (void **)&cs->m_log, (void **)&cs->m_sel, (void **)&cs->m_wts, (void **)&cs->m_ysh,
                     (void **)&cs->m_ye, (void **)&cs->m_acc, (void **)&cs->m_rows, (void **)&cs->m_rw, &cs->m_gu,
                     (void **)&cs->m_he, (void **)&cs->m_order, (void **)&cs->m_xe,
                     (void **)&cs->m_off, (void **)&cs->m_ts, (void **)&cs->m_tiles,
                     (void **)&cs->d_io, &cs->attn_gemm};
    for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++) {
        *ptrs[i] = base;
        base += al256(sz[i]);
    }
    if (cm->moe_lists) { /* the prefill's host copies of the expert lists */
        const size_t n = t * cm->moe_K;
        free(cs->hm_sel);
        free(cs->hm_rows);
        free(cs->hm_wts);
        free(cs->hm_rw);
        free(cs->hm_cnt);
        cs->hm_sel = malloc(n * 4);
        cs->hm_rows = malloc(n * 4);
        cs->hm_wts = malloc(n * 4);
        cs->hm_rw = malloc(n * 4);
        cs->hm_cnt = malloc((size_t)(cm->moe_E + 1) * sizeof *cs->hm_cnt);
        if (!cs->hm_sel || !cs->hm_rows || !cs->hm_wts || !cs->hm_rw || !cs->hm_cnt) {
            cs->tmax = cs->lrows = 0;
            return qc_err_set(err, QC_EXIT_RUNTIME, "out of host memory for the expert lists");
        }
    }
    cs->tmax = T;
    cs->lrows = lrows;
    return QC_OK;
}

/* One-time work of the driver and the libraries — loading each kernel on
 * its first launch, cuBLAS's first GEMM, capturing the decode graph — done
 * when the session is made instead of inside the first prompt's TTFT: a
 * 2-token prefill of token 0 and two decode steps (the caller then clears
 * the state; the KV rows written here are overwritten before being read).
 * Without it the demo's first prompt on the H100 reported a TTFT of
 * 121-164 ms, most of it this one-time work. */
static int sess_warm(qc_cuda_sess *cs, qc_err *err)
{
    const int32_t ids[2] = {0, 0};
    const bool prof = cs->cm->prof.on;
    cs->cm->prof.on = false;
    int rc = qc_cuda_prefill(cs, ids, 2, 0, err);
    const qk_sample_params greedy = {0, 0, 1.0f, 0, 0};
    int32_t next;
    for (int i = 0; !rc && i < 2; i++) rc = qc_cuda_decode(cs, 0, 2 + i, &greedy, &next, err);
    cs->cm->prof.on = prof;
    return rc;
}

int qc_cuda_sess_new(qc_cuda_model *cm, int max_ctx, qc_cuda_sess **out, qc_err *err)
{
    *out = NULL;
    qc_cuda_sess *cs = calloc(1, sizeof *cs);
    if (!cs) return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for a CUDA session");
    cs->cm = cm;
    int n = cm->sh.n_layers;
    cs->kc = calloc((size_t)n, sizeof *cs->kc);
    cs->vc = calloc((size_t)n, sizeof *cs->vc);
    cs->conv = calloc((size_t)n, sizeof *cs->conv);
    cs->S = calloc((size_t)n, sizeof *cs->S);
    int rc = QC_OK;
    if (!cs->kc || !cs->vc || !cs->conv || !cs->S ||
        cudaMallocHost((void **)&cs->h_io, 4 * sizeof(int32_t)) != cudaSuccess)
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for a CUDA session");
    /* KV for the first CU_DEFAULT_CTX positions (or the whole context when
     * smaller), grown as the session fills: a long --ctx reserves nothing
     * it does not use (qc_cuda_sess_reserve takes it all at once). */
    cs->max_ctx = max_ctx;
    int cap0 = max_ctx > 0 && max_ctx < CU_DEFAULT_CTX ? max_ctx : CU_DEFAULT_CTX;
    /* Key splits of the split-KV decode attention, fixed per session (the
     * decode graph bakes in the grid): about 4 blocks per SM at long
     * contexts; the kernel uses only the splits it needs at short ones
     * (H100, 27B, 132 splits: 38.6 us per layer at 4096 keys, and the step
     * at 32K context 20.3 ms, against 41.2 us and 21.9 ms for the previous
     * kernel with 64). */
    cs->nsplit = 4 * cm->n_sm / cm->sh.KV;
    if (cs->nsplit > 256) cs->nsplit = 256;
    if (cs->nsplit < 1) cs->nsplit = 1;
    if (!rc) rc = sess_alloc_state(cs, cap0, err);
    if (!rc) rc = sess_arena(cs, 1, 1, err);
    if (!rc) rc = sess_warm(cs, err);
    if (rc) {
        qc_cuda_sess_free(cs);
        return rc;
    }
    qc_cuda_sess_reset(cs);
    *out = cs;
    return QC_OK;
}

int qc_cuda_sess_reserve(qc_cuda_sess *cs, int n, qc_err *err)
{
    return sess_grow_kv(cs, n, err);
}

void qc_cuda_sess_free(qc_cuda_sess *cs)
{
    if (!cs) return;
    cudaStreamSynchronize(cs->cm->st);
    if (cs->graph) cudaGraphExecDestroy(cs->graph);
    qc_cuda_sampling_free(cs->smp);
    cu_pool_free(&cs->scratch);
    cu_pool_free(&cs->state);
    if (cs->h_io) cudaFreeHost(cs->h_io);
    free(cs->hm_sel);
    free(cs->hm_rows);
    free(cs->hm_wts);
    free(cs->hm_rw);
    free(cs->hm_cnt);
    free(cs->kc);
    free(cs->vc);
    free(cs->conv);
    free(cs->S);
    free(cs);
}

/* ---- the forward pass ---- */

/* Decode: y (+)= M x, one launch for all of M's parts. */
/* The parts of a quantized M as qk_gemv_multi's arrays, part i writing y + off[i]. */
static void mat_parts(const cu_mat *M, float *y, const qk_qweight **w, float **ys)
{
    for (int i = 0; i < M->np; i++) {
        w[i] = &M->q[i];
        ys[i] = y + M->off[i];
    }
}

static int mat_gemv(qc_cuda_model *cm, const cu_mat *M, const uint16_t *x, float *y, int acc)
{
    if (!M->np) return qk_gemv_bf16(M->bf, x, y, M->n, M->k, acc, cm->st);
    const qk_qweight *w[QK_GEMV_MAX_PARTS];
    float *ys[QK_GEMV_MAX_PARTS];
    mat_parts(M, y, w, ys);
    return qk_gemv_multi(w, ys, M->np, x, acc, cm->st);
}

/* Decode: y = M RMSNorm(h) in one launch where M is quantized and its
 * layout allows (qk_gemv_multi_norm: the same bf16 x the separate norm
 * writes); returns QK_GEMV_UNFUSED otherwise, having launched nothing. */
static int mat_gemv_norm(qc_cuda_model *cm, const cu_mat *M, const float *h, const float *norm_w, float eps, float *y,
                         const qk_conv_epi *conv)
{
    if (!cm->fuse_norm || !M->np) return QK_GEMV_UNFUSED;
    const qk_qweight *w[QK_GEMV_MAX_PARTS];
    float *ys[QK_GEMV_MAX_PARTS];
    mat_parts(M, y, w, ys);
    return qk_gemv_multi_norm(w, ys, M->np, h, norm_w, eps, 0, conv, cm->st);
}

/* Rows [r0, r0 + nr) of a packed weight as a descriptor of their own, for
 * dequantizing a weight larger than the scratch in row tiles (r0 a multiple
 * of 512, so of every FP8 scale block height except a per-tensor one, which
 * stays one block). Follows the layouts of quant.h. */
static bool qw_rows(const qk_qweight *w, int r0, int nr, qk_qweight *v)
{
    *v = *w;
    v->n = nr;
    v->n_pad = (nr + QK_QROWS - 1) / QK_QROWS * QK_QROWS;
    if (r0 + v->n_pad > w->n_pad) return false;
    size_t r = (size_t)r0, kp = (size_t)w->k_pad;
    switch (w->kind) {
    case QK_QW_FP8:
        v->w = (uint8_t *)w->w + r * kp;
        if (w->blk_n < w->n_pad) {
            if (r0 % w->blk_n) return false;
            v->s = (float *)w->s + (r / (size_t)w->blk_n) * (size_t)w->nkb;
        }
        return true;
    case QK_QW_INT4: /* (tiled: the same offsets for whole row groups) */
        if (w->tiled && r0 % QK_QROWS) return false;
        v->w = (uint8_t *)w->w + r * kp / 2;
        v->s = (uint8_t *)w->s + r * (size_t)w->ngroups * (w->s16 ? 2 : 4);
        return true;
    case QK_QW_NVFP4:
    case QK_QW_MXFP4:
        v->w = (uint8_t *)w->w + r * kp / 2;
        v->s = (uint8_t *)w->s + r * kp / (w->kind == QK_QW_MXFP4 ? 32 : 16);
        return true;
    case QK_QW_BF16: v->w = (uint16_t *)w->w + r * kp; return true;
    default: return false;
    }
}

/* The parts of M the FP8 path left (bit i of done clear), one exact GEMM
 * each: BF16 parts read in place when unpadded, others dequantized. */
static int mat_gemm_rest(qc_cuda_model *cm, const cu_mat *M, const uint16_t *X, void *Y, int ldy, int T, float beta,
                         bool out16, unsigned done)
{
    const int K = M->k;
    for (int i = 0; i < M->np; i++) {
        if (done >> i & 1) continue;
        const qk_qweight *q = &M->q[i];
        const uint16_t *W = q->w;
        int rc = 0;
        if (q->kind != QK_QW_BF16 || q->k_pad != K) {
            if ((size_t)q->n * K * 2 > cm->dq_bytes) return (int)cudaErrorInvalidValue;
            rc = qk_dequant_q_bf16(q, cm->dq, K, cm->st);
            W = cm->dq;
        }
        if (!rc)
            rc = out16 ? qk_gemm_bf16_out16(cm->blas, W, X, (uint16_t *)Y + M->off[i], ldy, T, q->n, K)
                       : qk_gemm_bf16(cm->blas, W, X, (float *)Y + M->off[i], ldy, T, q->n, K, beta);
        if (rc) return rc;
    }
    return 0;
}

/* Prefill: Y[t, :] (= or +=) M X[t, :] for T tokens (Y fp32 [T][ldy], or
 * bf16 when out16). FP8 parts go through cuBLASLt in FP8 when the GPU has
 * block scaling and the chunk is long (above). Quantized groups are dequantized into the scratch
 * (stacked like the BF16 ones) and go through the same cuBLAS GEMM; a group
 * too large for the scratch (only a quantized lm_head) goes in row tiles. */
static int mat_gemm(qc_cuda_model *cm, const cu_mat *M, const uint16_t *X, void *Y, int ldy, int T, float beta,
                    bool out16)
{
    const int K = M->k;
    const uint16_t *W = M->bf;
    if (M->np && cm->lt && T >= cm->lt_min_t) {
        const qk_qweight *w[QK_GEMV_MAX_PARTS];
        for (int i = 0; i < M->np; i++) w[i] = &M->q[i];
        unsigned done = 0;
        int rc = qk_gemm_q_lt(cm->lt, w, M->off, M->np, X, Y, ldy, T, beta, out16, &done);
        if (rc || done) return rc ? rc : mat_gemm_rest(cm, M, X, Y, ldy, T, beta, out16, done);
    }
    if (M->np) {
        if ((size_t)M->n * K * 2 > cm->dq_bytes) {
            int tr = (int)(cm->dq_bytes / ((size_t)K * 2)) / 512 * 512;
            if (out16 || tr < 512) return (int)cudaErrorInvalidValue;
            for (int i = 0; i < M->np; i++)
                for (int r0 = 0; r0 < M->q[i].n; r0 += tr) {
                    int nr = M->q[i].n - r0 < tr ? M->q[i].n - r0 : tr;
                    qk_qweight v;
                    if (!qw_rows(&M->q[i], r0, nr, &v)) return (int)cudaErrorInvalidValue;
                    int rc = qk_dequant_q_bf16(&v, cm->dq, K, cm->st);
                    if (!rc)
                        rc = qk_gemm_bf16(cm->blas, cm->dq, X, (float *)Y + M->off[i] + r0, ldy, T, nr, K, beta);
                    if (rc) return rc;
                }
            return 0;
        }
        for (int i = 0; i < M->np; i++) {
            int rc = qk_dequant_q_bf16(&M->q[i], cm->dq + (size_t)M->off[i] * K, K, cm->st);
            if (rc) return rc;
        }
        W = cm->dq;
    }
    if (out16) return qk_gemm_bf16_out16(cm->blas, W, X, (uint16_t *)Y, ldy, T, M->n, K);
    return qk_gemm_bf16(cm->blas, W, X, (float *)Y, ldy, T, M->n, K, beta);
}

static int mm(qc_cuda_model *cm, const cu_mat *M, const uint16_t *X, float *Y, int T, int acc)
{
    if (T == 1) return mat_gemv(cm, M, X, Y, acc);
    return mat_gemm(cm, M, X, Y, M->n, T, acc ? 1.0f : 0.0f, false);
}

/* Optional prefill profile (QCHAT_CUDA_PROFILE=1 or qc_cuda_set_profile): an
 * event is recorded before every launch of a multi-token forward (and one
 * after the last); after the chunk the time between consecutive events is
 * summed per category and printed to stderr. No synchronisation between
 * launches, so the GPU runs back to back as without the profile (the first
 * version synchronised each launch, which added ~20 % to a 1000-token
 * chunk). Never on by default. */
enum { P_EMBED, P_NORM, P_GEMM_IN, P_CONV, P_GATES, P_GDNPREP, P_GDN, P_GNORM, P_APREP, P_ATTN, P_GEMM_OUT, P_GEMM_GU,
       P_SWIGLU, P_GEMM_DOWN, P_MOE, P_HEAD, P_COUNT };
static const char *const prof_names[P_COUNT] = {
    "embed", "rmsnorm", "gemm in-proj", "conv+silu", "gdn gates+l2", "gdn chunk prep", "gdn chunk scan", "gdn out-norm",
    "attn prep", "attention", "gemm out-proj", "gemm gate|up", "swiglu", "gemm down", "moe route+experts",
    "final norm+lm_head"};

#define OP(cat, call)                                                                              \
    do {                                                                                           \
        if (P) prof_mark(P, cat, st);                                                              \
        CK(call);                                                                                  \
    } while (0)

/* Whether the decode SwiGLU before the down-projection M is a PDL launch:
 * measured faster before INT4 (+3.7 %, the streamed GEMV fetches its first
 * weights into shared memory early) and FP4 (+-0 at ctx 0, +1.9 % at 4096),
 * slower before FP8 (-0.8 %; 27B, H100, BENCHMARKS.md seventh session;
 * again with QCHAT_SWIGLU_PDL in the twenty-sixth: INT4 -3.3 % plain, FP8
 * -0.8 % as PDL). */
static int swiglu_pdl(const qc_cuda_model *cm, const cu_mat *M)
{
    if (cm->swiglu_pdl >= 0) return cm->swiglu_pdl;
    return M->np > 0 && M->q[0].kind != QK_QW_FP8;
}

/* Records the start of a launch of category cat (-1: the end of the chunk).
 * Turns the profile off if the events cannot be made. */
static void prof_mark(cu_prof *P, int cat, cudaStream_t st)
{
    if (!P->ev) {
        P->ev = calloc(CU_PROF_EV, sizeof *P->ev);
        for (int i = 0; P->ev && i < CU_PROF_EV; i++)
            if (cudaEventCreate(&P->ev[i]) != cudaSuccess) {
                while (i--) cudaEventDestroy(P->ev[i]);
                free(P->ev);
                P->ev = NULL;
            }
        if (!P->ev) {
            P->ok = P->on = false;
            return;
        }
    }
    if (P->n >= CU_PROF_EV) {
        P->over = true;
        return;
    }
    P->cat[P->n] = cat;
    cudaEventRecord(P->ev[P->n++], st);
}

static void prof_print(cu_prof *P, int T, int pos0)
{
    if (!P->ev || P->n < 2) return;
    cudaEventSynchronize(P->ev[P->n - 1]);
    for (int i = 0; i + 1 < P->n; i++) {
        float ms = 0;
        if (P->cat[i] >= 0 && cudaEventElapsedTime(&ms, P->ev[i], P->ev[i + 1]) == cudaSuccess) P->ms[P->cat[i]] += ms;
    }
    P->n = 0;
    double tot = 0;
    for (int i = 0; i < P_COUNT; i++) tot += P->ms[i];
    char cut[64] = "";
    if (P->over) snprintf(cut, sizeof cut, " (the first %d launches only)", CU_PROF_EV);
    fprintf(stderr, "prefill profile T=%d pos0=%d: %.1f ms%s |", T, pos0, tot, cut);
    P->over = false;
    for (int i = 0; i < P_COUNT; i++)
        if (P->ms[i] > 0) fprintf(stderr, " %s %.2f", prof_names[i], P->ms[i]);
    fprintf(stderr, "\n");
    memset(P->ms, 0, sizeof P->ms);
}

/* The decode SwiGLU h = silu(g) * u (gu: the gate|up sums, I wide) before
 * the down-projection *down; *dv: the matrix the down GEMV then runs. An
 * act-order INT4 down-projection whose groups are all G long (perm_regular)
 * would have every block of its GEMV gather x into the packed order of K
 * (~3 us of a 27B launch, BENCHMARKS.md); here the SwiGLU writes h in that
 * order instead, gathering from the gate|up sums in L2, and the GEMV runs a
 * view of the weight without the permutation: the same products summed in
 * the same order (test_kernels_quant: swiglu_perm). */
static int swiglu_dec(qc_cuda_model *cm, const cu_mat *down, const float *gu, int I, uint16_t *h, cu_mat *dv)
{
    *dv = *down;
    const qk_qweight *q = &down->q[0];
    if (cm->down_xperm && down->np == 1 && q->kind == QK_QW_INT4 && q->perm && q->perm_regular && q->k == I) {
        dv->q[0].perm = NULL;
        dv->q[0].perm_regular = 0;
        dv->q[0].perm_bytes = 0;
        return qk_swiglu_perm(gu, I, q->perm, h, swiglu_pdl(cm, down), cm->st);
    }
    return qk_swiglu(gu, 2 * I, 1, I, h, swiglu_pdl(cm, down), cm->st);
}

/* yb = SwiGLU(gu xb) for T tokens (I wide): the first half of an MLP whose
 * input xb is already normed; *dv: the down-projection *down as its GEMV or
 * GEMM is to run it (swiglu_dec). */
static int mlp_swiglu(qc_cuda_sess *cs, const cu_mat *gu, const cu_mat *down, int I, int T, cu_prof *P, cu_mat *dv,
                      qc_err *err)
{
    *dv = *down;
    qc_cuda_model *cm = cs->cm;
    cudaStream_t st = cm->st;
    if (T == 1 && !gu->np) {
        OP(P_GEMM_GU, qk_gemv_swiglu_bf16(gu->bf, cs->xb, cs->yb, I, gu->k, st));
    } else if (T == 1) {
        OP(P_GEMM_GU, mat_gemv(cm, gu, cs->xb, cs->proj, 0));
        OP(P_SWIGLU, swiglu_dec(cm, down, cs->proj, I, cs->yb, dv));
    } else {
        /* bf16 gate|up: its only reader is the SwiGLU (half the traffic of fp32) */
        OP(P_GEMM_GU, mat_gemm(cm, gu, cs->xb, cs->proj, 2 * I, T, 0.0f, true));
        OP(P_SWIGLU, qk_swiglu_b16((const uint16_t *)cs->proj, 2 * I, T, I, cs->yb, st));
    }
    return QC_OK;
}

/* The prefill's expert lists: the T * K choices copied to the host (the one
 * synchronisation of a MoE layer's prefill), grouped by expert in index
 * order with their tokens ascending, and uploaded: rows (token index) and
 * weight of each entry, hm_cnt[e] .. hm_cnt[e + 1] being expert e's. */
static int moe_lists(qc_cuda_sess *cs, const cu_moe *mo, int T, qc_err *err)
{
    cudaStream_t st = cs->cm->st;
    const int K = mo->K, E = mo->E, n = T * K;
    cudaError_t e = cudaMemcpyAsync(cs->hm_sel, cs->m_sel, (size_t)n * 4, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaMemcpyAsync(cs->hm_wts, cs->m_wts, (size_t)n * 4, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: MoE routing failed: %s", cudaGetErrorString(e));
    int *cnt = cs->hm_cnt;
    memset(cnt, 0, (size_t)(E + 1) * sizeof *cnt);
    for (int i = 0; i < n; i++) {
        if (cs->hm_sel[i] < 0 || cs->hm_sel[i] >= E)
            return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: MoE routing chose expert %d of %d", cs->hm_sel[i], E);
        cnt[cs->hm_sel[i] + 1]++;
    }
    for (int x = 0; x < E; x++) cnt[x + 1] += cnt[x];
    /* counting sort by expert, cnt[x] as expert x's cursor (i ascending
     * keeps the tokens ascending); the cursors end at the next expert's
     * start, so one shift gives the starts back */
    for (int i = 0; i < n; i++) {
        const int j = cnt[cs->hm_sel[i]]++;
        cs->hm_rows[j] = i / K;
        cs->hm_rw[j] = cs->hm_wts[i];
    }
    memmove(cnt + 1, cnt, (size_t)E * sizeof *cnt);
    cnt[0] = 0;
    e = cudaMemcpyAsync(cs->m_rows, cs->hm_rows, (size_t)n * 4, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess) e = cudaMemcpyAsync(cs->m_rw, cs->hm_rw, (size_t)n * 4, cudaMemcpyHostToDevice, st);
    if (e != cudaSuccess) return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copying the expert lists failed");
    return QC_OK;
}

/* The experts of T tokens as (token, expert) pair GEMVs from the device
 * tables, the choices in m_sel / m_wts (Kt per token): the decode step
 * (T = 1, in the graph: no host round trip) and short prefill chunks, which
 * read each chosen expert's weights once per token (pairs that share an
 * expert run side by side, so most come from L2) instead of paying one
 * launch sequence per expert. routed >= 0 (a decode step): the choices are
 * made inside the gate|up launch (qk_gemv_moe_routed, shared expert mode
 * `routed`), which also writes m_sel / m_wts for the launches after it. */
static int moe_pairs(qc_cuda_sess *cs, const cu_moe *mo, int T, int Kt, int routed, const float *ysh, const float *sg,
                     cu_prof *P, qc_err *err)
{
    qc_cuda_model *cm = cs->cm;
    cudaStream_t st = cm->st;
    const int D = cm->sh.D, Im = mo->Im, n = T * Kt, ld = mo->ld;
    const int32_t *order = NULL;
    if (T > 1) {
        OP(P_MOE, qk_moe_order(cs->m_sel, n, mo->t_gu.E, cs->m_order, st));
        order = cs->m_order;
    }
    float *gu = cs->m_gu;
    if (routed >= 0)
        OP(P_MOE, qk_gemv_moe_routed(&mo->t_gu, cs->m_log, mo->E, mo->K, routed, cs->m_sel, cs->m_wts, cs->xb, gu, 2 * Im,
                                     st));
    else
        OP(P_MOE, qk_gemv_moe(&mo->t_gu, cs->m_sel, n, order, cs->xb, Kt, D, gu, 2 * Im, st));
    OP(P_SWIGLU, qk_swiglu(gu, 2 * Im, n, Im, cs->m_he, 1, st));
    OP(P_MOE, qk_gemv_moe(&mo->t_down, cs->m_sel, n, order, cs->m_he, 1, Im, cs->m_ye, D, st));
    OP(P_MOE, qk_moe_combine(cs->h, cs->m_ye, cs->m_wts, Kt, ysh, sg, ld, T, D, st));
    return QC_OK;
}

/* Pairs per tile of the grouped GEMM for n pairs over E experts: tiles
 * never straddle experts, so with few pairs per expert a tall tile is
 * mostly rows of nothing. 35B-A3B FP8 on the H100, prompt seconds with
 * tiles of 128 / 64 / 32 pairs: 128 tokens (4 pairs per expert) 0.043 /
 * 0.038 / 0.031, 512 (16) 0.049 / 0.044 / 0.037, 1000 (31) 0.058 / 0.052 /
 * 0.053, 2048 (64) 0.073 / 0.080 / 0.090, 8192 0.250 / 0.285 / 0.335.
 * QCHAT_MOE_TILE (32, 64, 128) fixes it, for A/B. */
static int moe_tile_pairs(int n, int E)
{
    static int fixed = -1;
    if (fixed < 0) {
        const char *env = getenv("QCHAT_MOE_TILE");
        const int v = env && *env ? atoi(env) : 0;
        fixed = v == 32 || v == 64 || v == 128 ? v : 0;
    }
    if (fixed) return fixed;
    const int per = n / E;
    return per <= 24 ? 32 : per <= 40 ? 64 : 128;
}

/* Chunks longer than moe_pair_max tokens (when the tables allow,
 * cu_moe.grouped): the pairs sorted by expert on the device and every
 * expert's tiles in one grouped GEMM launch (kernels/moe_gemm.cu), gate|up
 * with the SwiGLU, then down into per-pair rows, then the weighted sum.
 * The GEMM decodes FP8, INT4 and FP4 experts while loading them; experts
 * of mixed layouts (cu_moe.grouped_dq) are first dequantized to bf16,
 * moe_dq_experts at a time, into the dequantization scratch. Passes of at
 * most moe_pass tokens bound the per-pair rows. No host round trip: 4
 * launches per pass (and 2 more per batch of dequantized experts) instead
 * of ~7 per expert with tokens. */
static int moe_grouped(qc_cuda_sess *cs, const cu_moe *mo, int T, const float *ysh, const float *sg, cu_prof *P,
                       qc_err *err)
{
    qc_cuda_model *cm = cs->cm;
    cudaStream_t st = cm->st;
    const int D = cm->sh.D, E = mo->E, K = mo->K, Im = mo->Im, ld = mo->ld;
    const int nb = mo->grouped_dq ? cm->moe_dq_experts : E;
    uint16_t *wg = mo->grouped_dq ? cm->dq : NULL, *wd = wg ? wg + (size_t)nb * 2 * Im * D : NULL;
    if (wg && (size_t)nb * 3 * Im * D * 2 > cm->dq_bytes)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: the expert dequantization scratch is too small");
    for (int t0 = 0; t0 < T; t0 += cm->moe_pass) {
        const int nt = T - t0 < cm->moe_pass ? T - t0 : cm->moe_pass, n = nt * K;
        const int bm = moe_tile_pairs(n, E), maxt = n / bm + nb;
        OP(P_MOE, qk_moe_plan(cs->m_sel + (size_t)t0 * K, n, E, bm, cs->m_order, cs->m_off, cs->m_ts, cs->m_tiles, st));
        for (int e0 = 0; e0 < E; e0 += nb) {
            const int e1 = e0 + nb < E ? e0 + nb : E;
            if (wg) {
                OP(P_MOE, qk_moe_dequant(&mo->t_gu, e0, e1, cs->m_off, wg, st));
                OP(P_MOE, qk_moe_dequant(&mo->t_down, e0, e1, cs->m_off, wd, st));
            }
            OP(P_GEMM_GU, qk_moe_gemm(&mo->t_gu, wg, e0, e1, bm, cs->m_ts, cs->m_tiles, maxt, cs->xb + (size_t)t0 * D, D,
                                      cs->m_order, K, cs->m_he, Im, NULL, st));
            OP(P_GEMM_DOWN, qk_moe_gemm(&mo->t_down, wd, e0, e1, bm, cs->m_ts, cs->m_tiles, maxt, cs->m_he, Im, NULL, 1,
                                        cs->m_ye, D, cs->m_order, st));
        }
        OP(P_MOE, qk_moe_combine(cs->h + (size_t)t0 * D, cs->m_ye, cs->m_wts + (size_t)t0 * K, K,
                                 ysh ? ysh + (size_t)t0 * D : NULL, sg ? sg + (size_t)t0 * ld : NULL, ld, nt, D, st));
    }
    return QC_OK;
}

/* A MoE MLP (qwen35-model.md §3.4) on the residual stream h, T tokens: the
 * router and the shared expert's gate from one matrix, top-k on the device.
 * Up to moe_pair_max tokens run as pair GEMVs (moe_pairs; a decode step
 * with the shared expert among them when it is in the tables, else it runs
 * as a dense MLP); longer chunks as grouped GEMMs (moe_grouped). 35B-A3B
 * FP8 on the H100, prompt seconds, pairs / grouped: 32 tokens 0.021 /
 * 0.030, 128 0.055 / 0.043, 512 0.189 / 0.049, 1000 0.362 / 0.057 (the
 * pairs read every chosen expert once per token). Where the tables allow
 * neither (g_idx experts), the choices are sorted on the host and each
 * expert's tokens run as one GEMM, summing into m_acc in expert order
 * (~7 launches per expert: 2048 tokens 0.42 s against 0.073 s grouped). */
static int moe_forward(qc_cuda_sess *cs, const cu_layer *L, int T, cu_prof *P, qc_err *err)
{
    qc_cuda_model *cm = cs->cm;
    cudaStream_t st = cm->st;
    const cu_moe *mo = L->moe;
    const int D = cm->sh.D, E = mo->E, K = mo->K, Im = mo->Im, ld = mo->ld;
    const bool pairs = T <= cm->moe_pair_max, sh_pairs = T == 1 && mo->sh_table;
    const int shared = sh_pairs ? 1 + mo->sh_gated : 0;
    if (T == 1 && cm->moe_router1) {
        OP(P_MOE, qk_moe_router(cs->h, L->post_norm, cm->sh.eps, T, D, mo->router, ld, cs->xb, NULL, cs->m_log, ld, st));
    } else {
        OP(P_NORM, qk_rmsnorm1p(cs->h, L->post_norm, cm->sh.eps, T, D, cs->xb, cs->m_xf, st));
        OP(P_MOE, qk_gemm_f32(cm->blas, mo->router, cs->m_xf, cs->m_log, ld, T, ld, D));
    }
    /* a decode step chooses its experts inside the gate|up launch (moe_pairs) */
    const bool routed = T == 1 && pairs && cm->moe_route1;
    if (!routed) OP(P_MOE, qk_moe_route(cs->m_log, ld, T, E, K, shared, cs->m_sel, cs->m_wts, st));
    if (mo->Is && !sh_pairs) {
        cu_mat down_run;
        const int rc = mlp_swiglu(cs, &mo->sh_gu, &mo->sh_down, mo->Is, T, P, &down_run, err);
        if (rc) return rc;
        OP(P_GEMM_DOWN, mm(cm, &down_run, cs->yb, cs->m_ysh, T, 0));
    }
    const float *ysh = mo->Is && !sh_pairs ? cs->m_ysh : NULL, *sg = mo->sh_gated && !sh_pairs ? cs->m_log + E : NULL;
    if (pairs) return moe_pairs(cs, mo, T, K + (shared != 0), routed ? shared : -1, ysh, sg, P, err);
    if (mo->grouped) return moe_grouped(cs, mo, T, ysh, sg, P, err);
    int rc = moe_lists(cs, mo, T, err);
    if (rc) return rc;
    if (cudaMemsetAsync(cs->m_acc, 0, (size_t)T * D * 4, st) != cudaSuccess)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: clearing the MoE sum failed");
    uint16_t *gu = cs->m_gu;
    for (int e = 0; e < E; e++) {
        const int a = cs->hm_cnt[e], n = cs->hm_cnt[e + 1] - a;
        if (!n) continue;
        OP(P_MOE, qk_moe_gather(cs->xb, cs->m_rows + a, n, D, cs->m_xe, st));
        OP(P_GEMM_GU, mat_gemm(cm, &mo->gu[e], cs->m_xe, gu, 2 * Im, n, 0.0f, true));
        OP(P_SWIGLU, qk_swiglu_b16(gu, 2 * Im, n, Im, cs->m_he, st));
        OP(P_GEMM_DOWN, mat_gemm(cm, &mo->down[e], cs->m_he, cs->m_ye, D, n, 0.0f, false));
        OP(P_MOE, qk_moe_scatter_add(cs->m_acc, cs->m_ye, cs->m_rows + a, cs->m_rw + a, n, D, st));
    }
    OP(P_MOE, qk_moe_combine(cs->h, cs->m_acc, NULL, 1, ysh, sg, ld, T, D, st));
    return QC_OK;
}

/* T tokens whose ids are at d_io + 4 and whose first position is d_io[1].
 * all_rows: final norm and logits for every row (else the last row only). */
static int run_layers(qc_cuda_sess *cs, int T, int pos0, bool all_rows, qc_err *err)
{
    qc_cuda_model *cm = cs->cm;
    const qc_cuda_shape *sh = &cm->sh;
    cudaStream_t st = cm->st;
    const int D = sh->D, Hv = sh->Hv, dv = sh->dv;
    const int32_t *ids = cs->d_io + 4, *pos = cs->d_io + 1;
    cu_prof *P = T > 1 && cm->prof.on ? &cm->prof : NULL;
    if (P) P->n = 0;
    OP(P_EMBED, qk_embed(cm->embed, ids, T, D, sh->vocab, cs->h, st));
    for (int li = 0; li < sh->n_layers; li++) {
        const cu_layer *L = &cm->L[li];
        /* Decode: the RMSNorm inside the quantized GEMV after it where it can
         * (mat_gemv_norm), and for GDN the one-token conv in its epilogue;
         * else each its own launch. */
        const qk_conv_epi ce = {L->conv_w, L->full ? NULL : cs->conv[li], cs->cbuf, cm->conv_dim};
        int frc = T == 1 ? mat_gemv_norm(cm, &L->in, cs->h, L->in_norm, sh->eps, cs->proj, L->full ? NULL : &ce)
                         : QK_GEMV_UNFUSED;
        const bool conv_done = frc != QK_GEMV_UNFUSED && !L->full;
        if (frc != QK_GEMV_UNFUSED) {
            CK(frc);
        } else {
            OP(P_NORM, qk_rmsnorm1p(cs->h, L->in_norm, sh->eps, T, D, cs->xb, NULL, st));
            OP(P_GEMM_IN, mm(cm, &L->in, cs->xb, cs->proj, T, 0));
        }
        if (!L->full) {
            const int ld = L->n_in, C = cm->conv_dim;
            float *z = cs->proj + C, *b = z + Hv * dv, *a = b + Hv;
            if (!conv_done) OP(P_CONV, qk_conv_silu(cs->proj, ld, L->conv_w, cs->conv[li], T, C, cs->cbuf, st));
            if (T == 1) {
                OP(P_GDN, qk_gdn_step(cs->cbuf, b, a, L->nexpa, L->dt_bias, z, L->gdn_norm, sh->eps, cs->S[li], sh->Hk, Hv,
                               sh->dk, dv, cs->yb, st));
            } else {
                OP(P_GATES, qk_gdn_gates(b, a, ld, L->nexpa, L->dt_bias, T, Hv, cs->beta, cs->g, st));
                OP(P_GATES, qk_l2norm_qk(cs->cbuf, C, T, sh->Hk, sh->dk, st));
                OP(P_GDNPREP, qk_gdn_prefill_prep(cs->cbuf, C, cs->beta, cs->g, T, sh->Hk, Hv, sh->dk, dv, cs->gdn_scr,
                                                  st));
                OP(P_GDN, qk_gdn_prefill_scan(cs->S[li], T, sh->Hk, Hv, sh->dk, dv, cs->gdn_scr, cs->o, st));
                OP(P_GNORM, qk_gated_norm(cs->o, z, ld, L->gdn_norm, sh->eps, T, Hv, dv, cs->yb, st));
            }
        } else {
            OP(P_APREP, qk_attn_prep(cs->proj, L->n_in, T, sh->H, sh->KV, sh->hd, sh->rot, sh->theta, L->q_norm, L->k_norm,
                            sh->eps, pos, cs->kc[li], cs->vc[li], cs->cap, cs->q, cs->gate, st));
            if (T >= CU_GEMM_ATTN_MIN && qk_attn_flash_ok(sh->H, sh->KV, sh->hd))
                OP(P_ATTN, qk_attn_flash(cs->q, cs->gate, cs->kc[li], cs->vc[li], cs->cap, T, sh->H, sh->KV, sh->hd,
                                         pos0, cs->yb, st));
            else if (T >= CU_GEMM_ATTN_MIN && cs->attn_gemm_bytes)
                OP(P_ATTN, qk_attn_prefill_gemm(cm->blas, cs->q, cs->gate, cs->kc[li], cs->vc[li], cs->cap, T, sh->H, sh->KV,
                                        sh->hd, pos0, cs->attn_gemm, cs->attn_gemm_bytes, cs->yb));
            else
                OP(P_ATTN, qk_attn(cs->q, cs->gate, cs->kc[li], cs->vc[li], cs->cap, T, sh->H, sh->KV, sh->hd, pos,
                           T == 1 ? cs->nsplit : 1, cs->attn_scr, cs->yb, st));
        }
        OP(P_GEMM_OUT, mm(cm, &L->out, cs->yb, cs->h, T, 1));
        if (L->moe) {
            const int rc = moe_forward(cs, L, T, P, err);
            if (rc) return rc;
            continue;
        }
        frc = T == 1 ? mat_gemv_norm(cm, &L->gu, cs->h, L->post_norm, sh->eps, cs->proj, NULL) : QK_GEMV_UNFUSED;
        cu_mat down_run;
        if (frc != QK_GEMV_UNFUSED) {
            CK(frc);
            OP(P_SWIGLU, swiglu_dec(cm, &L->down, cs->proj, sh->I, cs->yb, &down_run));
        } else {
            OP(P_NORM, qk_rmsnorm1p(cs->h, L->post_norm, sh->eps, T, D, cs->xb, NULL, st));
            const int rc = mlp_swiglu(cs, &L->gu, &L->down, sh->I, T, P, &down_run, err);
            if (rc) return rc;
        }
        OP(P_GEMM_DOWN, mm(cm, &down_run, cs->yb, cs->h, T, 1));
    }
    if (all_rows) {
        OP(P_HEAD, qk_rmsnorm1p(cs->h, cm->final_norm, sh->eps, T, D, cs->xb, cs->fn, st));
        OP(P_HEAD, mm(cm, &cm->head, cs->xb, cs->logits, T, 0));
    } else {
        size_t last = (size_t)(T - 1) * D;
        OP(P_HEAD, qk_rmsnorm1p(cs->h + last, cm->final_norm, sh->eps, 1, D, cs->xb, cs->fn + last, st));
        OP(P_HEAD, mat_gemv(cm, &cm->head, cs->xb, cs->logits, 0));
    }
    if (P) prof_mark(P, -1, st);
    return QC_OK;
}

static int sync_check(qc_cuda_sess *cs, qc_err *err, const char *what)
{
    cudaError_t e = cudaStreamSynchronize(cs->cm->st);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess) return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: %s failed: %s", what, cudaGetErrorString(e));
    return QC_OK;
}

/* Uploads ids and pos0 (ids at d_io + 4). */
static int put_ids(qc_cuda_sess *cs, const int32_t *ids, int n, int pos0, qc_err *err)
{
    cudaStream_t st = cs->cm->st;
    cs->h_io[0] = ids[0];
    cs->h_io[1] = pos0;
    if (cudaMemcpyAsync(cs->d_io, cs->h_io, 2 * sizeof(int32_t), cudaMemcpyHostToDevice, st) != cudaSuccess ||
        cudaMemcpyAsync(cs->d_io + 4, ids, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, st) != cudaSuccess)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copying token ids failed");
    return QC_OK;
}

/* One token through the captured graph: ids at d_io+4 (= the id), pos at d_io[1]. */
static int step_graph(qc_cuda_sess *cs, qc_err *err)
{
    qc_cuda_model *cm = cs->cm;
    if (!cs->have_graph && cs->eager_steps < 1) {
        /* The first step runs eagerly: kernels set their attributes outside capture. */
        cs->eager_steps++;
        return run_layers(cs, 1, -1, false, err);
    }
    if (!cs->have_graph) {
        if (cs->graph) cudaGraphExecDestroy(cs->graph);
        cs->graph = NULL;
        cudaGraph_t g = NULL;
        cudaError_t e = cudaStreamBeginCapture(cm->st, cudaStreamCaptureModeRelaxed);
        if (e != cudaSuccess) return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: graph capture: %s", cudaGetErrorString(e));
        int rc = run_layers(cs, 1, -1, false, err);
        e = cudaStreamEndCapture(cm->st, &g);
        if (rc) {
            if (g) cudaGraphDestroy(g);
            return rc;
        }
        if (e == cudaSuccess) e = cudaGraphInstantiate(&cs->graph, g, 0);
        if (g) cudaGraphDestroy(g);
        if (e != cudaSuccess) return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: graph capture: %s", cudaGetErrorString(e));
        cs->have_graph = true;
    }
    cudaError_t e = cudaGraphLaunch(cs->graph, cm->st);
    if (e != cudaSuccess) return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: graph launch: %s", cudaGetErrorString(e));
    return QC_OK;
}

int qc_cuda_prefill(qc_cuda_sess *cs, const int32_t *ids, int n, int pos0, qc_err *err)
{
    if (n <= 0) return QC_OK;
    int rc = sess_grow_kv(cs, pos0 + n, err);
    if (!rc) rc = sess_arena(cs, n, 1, err);
    if (!rc) rc = put_ids(cs, ids, n, pos0, err);
    double t0 = qc_now();
    if (!rc) rc = n == 1 ? step_graph(cs, err) : run_layers(cs, n, pos0, false, err);
    double t_enq = qc_now() - t0;
    if (!rc) rc = sync_check(cs, err, "prefill");
    if (!rc && n > 1 && cs->cm->prof.on) {
        /* host time to enqueue the chunk vs its wall time: equal means the
         * host, not the GPU, sets the pace */
        fprintf(stderr, "prefill T=%d: enqueue %.1f ms, wall %.1f ms\n", n, t_enq * 1e3, (qc_now() - t0) * 1e3);
        prof_print(&cs->cm->prof, n, pos0);
    }
    return rc;
}

int qc_cuda_decode(qc_cuda_sess *cs, int32_t id, int pos, const qk_sample_params *sp, int32_t *next, qc_err *err)
{
    int rc = sess_grow_kv(cs, pos + 1, err);
    if (!rc) rc = put_ids(cs, &id, 1, pos, err);
    if (!rc) rc = step_graph(cs, err);
    if (rc) return rc;
    CK(qk_sample(cs->logits, cs->cm->sh.n_tokens, *sp, cs->d_io + 2, cs->cm->st));
    if (cudaMemcpyAsync(cs->h_io + 2, cs->d_io + 2, sizeof(int32_t), cudaMemcpyDeviceToHost, cs->cm->st) != cudaSuccess)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copying the sampled id failed");
    rc = sync_check(cs, err, "decode step");
    if (!rc) *next = cs->h_io[2];
    return rc;
}

int qc_cuda_sample(qc_cuda_sess *cs, const qk_sample_params *sp, int32_t *next, qc_err *err)
{
    CK(qk_sample(cs->logits, cs->cm->sh.n_tokens, *sp, cs->d_io + 2, cs->cm->st));
    if (cudaMemcpyAsync(cs->h_io + 2, cs->d_io + 2, sizeof(int32_t), cudaMemcpyDeviceToHost, cs->cm->st) != cudaSuccess)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copying the sampled id failed");
    int rc = sync_check(cs, err, "sampling");
    if (!rc) *next = cs->h_io[2];
    return rc;
}

/* ---- per-kernel decode profile ---- */

enum { PROF_REPS = 25 };

static int prof_cmp(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

typedef struct prof_ctx {
    qc_cuda_sess *cs;
    cudaEvent_t ev[PROF_REPS + 1];
    qc_cuda_prof_row *rows;
    int n, max;
} prof_ctx;

#define PROF(pc, nm, cnt, byt, call)                                                               \
    do {                                                                                           \
        for (int r_ = 0; r_ < 3; r_++) CK(call);                                                   \
        for (int r_ = 0; r_ <= PROF_REPS; r_++) {                                                  \
            if (r_) CK(call);                                                                      \
            cudaEventRecord((pc)->ev[r_], st);                                                     \
        }                                                                                          \
        cudaEventSynchronize((pc)->ev[PROF_REPS]);                                                 \
        float t_[PROF_REPS];                                                                       \
        for (int r_ = 0; r_ < PROF_REPS; r_++) cudaEventElapsedTime(&t_[r_], (pc)->ev[r_], (pc)->ev[r_ + 1]); \
        qsort(t_, PROF_REPS, sizeof t_[0], prof_cmp);                                              \
        if ((pc)->n < (pc)->max) {                                                                 \
            qc_cuda_prof_row *w_ = &(pc)->rows[(pc)->n++];                                         \
            snprintf(w_->name, sizeof w_->name, "%s", nm);                                         \
            w_->per_token = (cnt);                                                                 \
            w_->us = t_[PROF_REPS / 2] * 1e3;                                                      \
            w_->bytes = (double)(byt);                                                             \
        }                                                                                          \
    } while (0)

static int profile_run(prof_ctx *pc, int ctx, qc_err *err)
{
    qc_cuda_sess *cs = pc->cs;
    qc_cuda_model *cm = cs->cm;
    const qc_cuda_shape *sh = &cm->sh;
    cudaStream_t st = cm->st;
    int lin = -1, full = -1, n_lin = 0, n_full = 0;
    for (int li = 0; li < sh->n_layers; li++) {
        if (cm->L[li].full) {
            n_full++;
            if (full < 0) full = li;
        } else {
            n_lin++;
            if (lin < 0) lin = li;
        }
    }
    const int D = sh->D, Hv = sh->Hv, dv = sh->dv;
    cs->h_io[0] = 0;
    cs->h_io[1] = ctx;
    cudaMemcpyAsync(cs->d_io, cs->h_io, 8, cudaMemcpyHostToDevice, st);
    cudaMemcpyAsync(cs->d_io + 4, cs->h_io, 4, cudaMemcpyHostToDevice, st);
    const int32_t *pos = cs->d_io + 1;
    PROF(pc, "embed", 1, D * 2, qk_embed(cm->embed, cs->d_io + 4, 1, D, sh->vocab, cs->h, st));
    /* What run_layers launches: where the norm (and for GDN the conv) fold
     * into the quantized GEMV (mat_gemv_norm; a probe call tells), that
     * launch is timed instead of the separate ones. */
    const qk_conv_epi ce = {lin >= 0 ? cm->L[lin].conv_w : NULL, lin >= 0 ? cs->conv[lin] : NULL, cs->cbuf,
                            cm->conv_dim};
    const bool fold_lin =
        lin >= 0 && mat_gemv_norm(cm, &cm->L[lin].in, cs->h, cm->L[lin].in_norm, sh->eps, cs->proj, &ce) != QK_GEMV_UNFUSED;
    const bool fold_full = full >= 0 && mat_gemv_norm(cm, &cm->L[full].in, cs->h, cm->L[full].in_norm, sh->eps,
                                                      cs->proj, NULL) != QK_GEMV_UNFUSED;
    const bool fold_gu =
        mat_gemv_norm(cm, &cm->L[0].gu, cs->h, cm->L[0].post_norm, sh->eps, cs->proj, NULL) != QK_GEMV_UNFUSED;
    const int n_norm = 1 + (fold_lin ? 0 : n_lin) + (fold_full ? 0 : n_full) + (fold_gu ? 0 : sh->n_layers);
    PROF(pc, "rmsnorm1p", n_norm, D * 4, qk_rmsnorm1p(cs->h, cm->final_norm, sh->eps, 1, D, cs->xb, NULL, st));
    if (lin >= 0) {
        const cu_layer *L = &cm->L[lin];
        const int ld = L->n_in, C = cm->conv_dim;
        float *z = cs->proj + C, *b = z + Hv * dv, *a = b + Hv;
        if (fold_lin) {
            PROF(pc, "gemv gdn in + norm + conv", n_lin, (double)mat_bytes(&L->in),
                 mat_gemv_norm(cm, &L->in, cs->h, L->in_norm, sh->eps, cs->proj, &ce));
        } else {
            PROF(pc, "gemv gdn in (qkv|z|b|a)", n_lin, (double)mat_bytes(&L->in),
                 mat_gemv(cm, &L->in, cs->xb, cs->proj, 0));
            PROF(pc, "conv+silu (1 token)", n_lin, (double)C * 12 * 2,
                 qk_conv_silu(cs->proj, ld, L->conv_w, cs->conv[lin], 1, C, cs->cbuf, st));
        }
        PROF(pc, "gdn step (fused)", n_lin, (double)Hv * sh->dk * dv * 4 * 2,
             qk_gdn_step(cs->cbuf, b, a, L->nexpa, L->dt_bias, z, L->gdn_norm, sh->eps, cs->S[lin], sh->Hk, Hv,
                         sh->dk, dv, cs->yb, st));
        PROF(pc, "gemv gdn out", n_lin, (double)mat_bytes(&L->out), mat_gemv(cm, &L->out, cs->yb, cs->h, 1));
    }
    if (full >= 0) {
        const cu_layer *L = &cm->L[full];
        if (fold_full)
            PROF(pc, "gemv attn in + norm", n_full, (double)mat_bytes(&L->in),
                 mat_gemv_norm(cm, &L->in, cs->h, L->in_norm, sh->eps, cs->proj, NULL));
        else
            PROF(pc, "gemv attn in (q|gate|k|v)", n_full, (double)mat_bytes(&L->in),
                 mat_gemv(cm, &L->in, cs->xb, cs->proj, 0));
        PROF(pc, "attn prep (norm+rope+cache)", n_full, 0,
             qk_attn_prep(cs->proj, L->n_in, 1, sh->H, sh->KV, sh->hd, sh->rot, sh->theta, L->q_norm, L->k_norm,
                          sh->eps, pos, cs->kc[full], cs->vc[full], cs->cap, cs->q, cs->gate, st));
        PROF(pc, "attn decode (split-KV)", n_full, 2.0 * sh->KV * sh->hd * 2 * (ctx + 1),
             qk_attn(cs->q, cs->gate, cs->kc[full], cs->vc[full], cs->cap, 1, sh->H, sh->KV, sh->hd, pos, cs->nsplit,
                     cs->attn_scr, cs->yb, st));
        PROF(pc, "gemv attn out", n_full, (double)mat_bytes(&L->out), mat_gemv(cm, &L->out, cs->yb, cs->h, 1));
    }
    const cu_layer *L0 = &cm->L[0];
    cu_mat down_run = L0->down; /* the down GEMV as the step runs it (swiglu_dec) */
    if (!L0->gu.np) {
        PROF(pc, "gemv mlp gate|up + swiglu", sh->n_layers, (double)mat_bytes(&L0->gu),
             qk_gemv_swiglu_bf16(L0->gu.bf, cs->xb, cs->yb, sh->I, D, st));
    } else {
        if (fold_gu)
            PROF(pc, "gemv mlp gate|up + norm", sh->n_layers, (double)mat_bytes(&L0->gu),
                 mat_gemv_norm(cm, &L0->gu, cs->h, L0->post_norm, sh->eps, cs->proj, NULL));
        else
            PROF(pc, "gemv mlp gate|up", sh->n_layers, (double)mat_bytes(&L0->gu),
                 mat_gemv(cm, &L0->gu, cs->xb, cs->proj, 0));
        PROF(pc, "swiglu (1 token)", sh->n_layers, 2.0 * sh->I * 4 + sh->I * 2,
             swiglu_dec(cm, &L0->down, cs->proj, sh->I, cs->yb, &down_run));
    }
    PROF(pc, "gemv mlp down", sh->n_layers, (double)mat_bytes(&down_run), mat_gemv(cm, &down_run, cs->yb, cs->h, 1));
    PROF(pc, "gemv lm_head", 1, (double)mat_bytes(&cm->head), mat_gemv(cm, &cm->head, cs->xb, cs->logits, 0));
    qk_sample_params sp = {0, 0, 1, 0, 0};
    PROF(pc, "sample (greedy)", 1, (double)sh->n_tokens * 4, qk_sample(cs->logits, sh->n_tokens, sp, cs->d_io + 2, st));
    return sync_check(cs, err, "decode profile");
}

int qc_cuda_profile_decode(qc_cuda_sess *cs, int ctx, qc_cuda_prof_row *rows, int max, int *nrows, qc_err *err)
{
    *nrows = 0;
    if (ctx + 1 > cs->cap) return qc_err_set(err, QC_EXIT_USAGE, "profile context %d beyond the KV cache", ctx);
    if (cs->cm->moe_K) return QC_OK; /* the per-launch table covers dense MLPs only: no rows */
    prof_ctx pc = {.cs = cs, .rows = rows, .max = max};
    for (int i = 0; i <= PROF_REPS; i++)
        if (cudaEventCreate(&pc.ev[i]) != cudaSuccess) {
            for (int j = 0; j < i; j++) cudaEventDestroy(pc.ev[j]);
            return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: cannot create events");
        }
    int rc = profile_run(&pc, ctx, err);
    for (int i = 0; i <= PROF_REPS; i++) cudaEventDestroy(pc.ev[i]);
    *nrows = pc.n;
    return rc;
}

/* ---- the qc_backend table ---- */

static int cuda_session_init(qc_session *s, qc_err *err)
{
    qc_cuda_sess *cs;
    int rc = qc_cuda_sess_new(s->m->be_model, s->max_ctx, &cs, err);
    if (rc) return rc;
    s->be_sess = cs;
    return QC_OK;
}

static void cuda_session_free(qc_session *s)
{
    qc_cuda_sess_free(s->be_sess);
    s->be_sess = NULL;
}

static void cuda_session_reset(qc_session *s) { qc_cuda_sess_reset(s->be_sess); }

static int cuda_forward(qc_session *s, const int32_t *ids, int n, int pos0, float *logits, float *norm, qc_err *err)
{
    qc_cuda_sess *cs = s->be_sess;
    const qc_cuda_shape *sh = &cs->cm->sh;
    bool all = logits || norm;
    int rc = sess_grow_kv(cs, pos0 + n, err);
    if (!rc) rc = sess_arena(cs, n, all ? n : 1, err);
    if (!rc) rc = put_ids(cs, ids, n, pos0, err);
    if (rc) return rc;
    /* One token goes through the decode graph also when every row is wanted:
     * its last row is its only row. */
    if (n == 1) rc = step_graph(cs, err);
    else rc = run_layers(cs, n, pos0, all, err);
    if (rc) return rc;
    cudaStream_t st = cs->cm->st;
    size_t V = (size_t)sh->vocab, D = (size_t)sh->D;
    size_t lrow = all ? (size_t)(n - 1) : 0;
    /* The last row stays on the device (fetched on demand: qc_backend_sampling)
     * unless every row is copied anyway. */
    s->logits_on_device = !all;
    cudaError_t e = all ? cudaMemcpyAsync(s->logits, cs->logits + lrow * V, V * 4, cudaMemcpyDeviceToHost, st)
                        : cudaSuccess;
    if (!e) e = cudaMemcpyAsync(s->final_norm, cs->fn + (size_t)(n - 1) * D, D * 4, cudaMemcpyDeviceToHost, st);
    if (!e && logits) e = cudaMemcpyAsync(logits, cs->logits, (size_t)n * V * 4, cudaMemcpyDeviceToHost, st);
    if (!e && norm) e = cudaMemcpyAsync(norm, cs->fn, (size_t)n * D * 4, cudaMemcpyDeviceToHost, st);
    if (e) return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copying logits failed: %s", cudaGetErrorString(e));
    return sync_check(cs, err, "forward");
}

/* ==== device sampling for qc_session_sample (engine/sampler.c on a
 * candidate set; owner: sampling) ========================================
 * The logits row stays on the device after a decode step. The sampler's
 * penalties are applied to a device copy, the largest entries selected there
 * (kernels/sample.cu) and only they come back (12 bytes when greedy, 8 per
 * candidate otherwise); sampler.c draws from them exactly the token it would
 * draw from the full row. Top-k off (or wider than QC_SAMPLER_MAX_TOPK), or a
 * candidate set that cannot prove the answer (ties at its edge), falls back
 * to copying the whole row. */

#define CU_SMP_CMAX (2 * QC_SAMPLER_MAX_TOPK)

struct qc_cuda_sampling {
    cu_pool pool;   /* tagged scratch */
    int vocab, n_tokens;
    qk_stream st;
    float *work;    /* [vocab] penalised copy of the row */
    int32_t *hist;  /* [2 * n_tokens]: history ids, then their counts */
    int32_t *out;   /* [2 + 2 * CU_SMP_CMAX] (qk_sample_topc) */
    int32_t *h_hist, *h_out; /* pinned host mirrors */
};

int qc_cuda_sampling_new(int vocab, int n_tokens, qk_stream st, qc_cuda_sampling **out, qc_err *err)
{
    *out = NULL;
    qc_cuda_sampling *ds = calloc(1, sizeof *ds);
    if (!ds) return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for device sampling");
    ds->vocab = vocab;
    ds->n_tokens = n_tokens;
    ds->st = st;
    size_t nh = 2 * (size_t)n_tokens * sizeof(int32_t), no = (2 + 2 * (size_t)CU_SMP_CMAX) * sizeof(int32_t);
    int rc = cu_alloc(&ds->pool, (size_t)vocab * sizeof(float), QC_MEM_SCRATCH, (void **)&ds->work, err,
                      "sampling row");
    if (!rc) rc = cu_alloc(&ds->pool, nh, QC_MEM_SCRATCH, (void **)&ds->hist, err, "sampling history");
    if (!rc) rc = cu_alloc(&ds->pool, no, QC_MEM_SCRATCH, (void **)&ds->out, err, "sampling candidates");
    if (!rc && (cudaMallocHost((void **)&ds->h_hist, nh) != cudaSuccess ||
                cudaMallocHost((void **)&ds->h_out, no) != cudaSuccess))
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: cannot allocate pinned memory for sampling");
    if (rc) {
        qc_cuda_sampling_free(ds);
        return rc;
    }
    *out = ds;
    return QC_OK;
}

void qc_cuda_sampling_free(qc_cuda_sampling *ds)
{
    if (!ds) return;
    cudaStreamSynchronize((cudaStream_t)ds->st);
    cu_pool_free(&ds->pool);
    if (ds->h_hist) cudaFreeHost(ds->h_hist);
    if (ds->h_out) cudaFreeHost(ds->h_out);
    free(ds);
}

uint64_t qc_cuda_sampling_bytes(const qc_cuda_sampling *ds) { return ds ? ds->pool.bytes[QC_MEM_SCRATCH] : 0; }

int qc_cuda_sampling_draw(qc_cuda_sampling *ds, const float *d_logits, int vocab, qc_sampler *smp, float *host_row,
                          int32_t *next, bool *copied_row, int64_t *nonfinite, qc_err *err)
{
    cudaStream_t st = (cudaStream_t)ds->st;
    *next = -1;
    *copied_row = false;
    *nonfinite = 0;
    int nv = vocab < qc_sampler_n_tokens(smp) ? vocab : qc_sampler_n_tokens(smp);
    if (nv > ds->vocab || nv > ds->n_tokens)
        return qc_err_set(err, QC_EXIT_RUNTIME, "device sampling: row of %d ids exceeds its buffers", nv);
    int C = qc_sampler_candidates_wanted(smp);
    if (C > 0 && nv > 0) {
        const float *row = d_logits;
        if (qc_sampler_has_penalties(smp)) {
            const qc_sample_params *p = qc_sampler_params(smp);
            const int32_t *seen, *count;
            int ns = qc_sampler_history(smp, &seen, &count);
            for (int j = 0; j < ns; j++) {
                ds->h_hist[j] = seen[j];
                ds->h_hist[ns + j] = count[seen[j]];
            }
            if (cudaMemcpyAsync(ds->work, d_logits, (size_t)nv * sizeof(float), cudaMemcpyDeviceToDevice, st) ||
                cudaMemcpyAsync(ds->hist, ds->h_hist, 2 * (size_t)ns * sizeof(int32_t), cudaMemcpyHostToDevice, st))
                return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copying the sampling history failed");
            CK(qk_sample_penalise(ds->work, nv, ds->hist, ds->hist + ns, ns, p->repetition_penalty,
                                  p->presence_penalty, p->frequency_penalty, ds->st));
            row = ds->work;
        }
        if (C > nv) C = nv;
        CK(qk_sample_topc(row, nv, C, ds->out, ds->st));
        size_t nb = (2 + 2 * (size_t)C) * sizeof(int32_t);
        if (cudaMemcpyAsync(ds->h_out, ds->out, nb, cudaMemcpyDeviceToHost, st) != cudaSuccess)
            return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copying the sampling candidates failed");
        cudaError_t e = cudaStreamSynchronize(st);
        if (e == cudaSuccess) e = cudaGetLastError();
        if (e != cudaSuccess) return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: sampling failed: %s", cudaGetErrorString(e));
        int m = ds->h_out[0];
        if (m < 0 || m > C) return qc_err_set(err, QC_EXIT_RUNTIME, "device sampling: bad candidate count %d", m);
        /* (the penalised copy has NaN as -inf for the penalised ids: as many non-finite) */
        *nonfinite = ds->h_out[1 + 2 * C];
        /* m == C < nv: the largest C of the row; fewer: all its finite entries. */
        bool partial = m == C && C < nv;
        int rc = qc_sampler_sample_candidates(smp, (const float *)(ds->h_out + 1 + C), ds->h_out + 1, m, partial, next);
        if (rc != QC_SAMPLER_UNDECIDED) return rc;
    }
    /* Top-k off: any id may be drawn, so the whole row is needed. */
    if (cudaMemcpyAsync(host_row, d_logits, (size_t)vocab * sizeof(float), cudaMemcpyDeviceToHost, st) != cudaSuccess ||
        cudaStreamSynchronize(st) != cudaSuccess)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copying logits failed");
    *copied_row = true;
    *nonfinite = qc_logits_count_nonfinite(host_row, nv);
    *next = qc_sampler_sample(smp, host_row, vocab);
    return QC_OK;
}

/* qc_backend_sampling for sessions: the last row is row 0 of cs->logits
 * whenever cuda_forward left it on the device. */
static int cuda_fetch_logits(qc_session *s, qc_err *err)
{
    qc_cuda_sess *cs = s->be_sess;
    cudaStream_t st = cs->cm->st;
    if (cudaMemcpyAsync(s->logits, cs->logits, (size_t)cs->cm->sh.vocab * sizeof(float), cudaMemcpyDeviceToHost, st) !=
        cudaSuccess)
        return qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copying logits failed");
    return sync_check(cs, err, "copying logits");
}

static int cuda_sample_next(qc_session *s, qc_sampler *smp, int32_t *next, bool *copied_row, int64_t *nonfinite,
                            qc_err *err)
{
    qc_cuda_sess *cs = s->be_sess;
    if (!cs->smp) {
        int rc = qc_cuda_sampling_new(cs->cm->sh.vocab, cs->cm->sh.n_tokens, cs->cm->st, &cs->smp, err);
        if (rc) return rc;
    }
    return qc_cuda_sampling_draw(cs->smp, cs->logits, cs->cm->sh.vocab, smp, s->logits, next, copied_row, nonfinite,
                                 err);
}

const qc_backend_sampling qc_cuda_backend_sampling = {cuda_fetch_logits, cuda_sample_next};

/* ==== end of device sampling ============================================ */

int64_t qc_cuda_decode_bytes(const qc_cuda_model *cm, int ctx)
{
    const qc_cuda_shape *sh = &cm->sh;
    int64_t b = cm->weight_bytes + (int64_t)sh->D * 2; /* + the embedding row */
    for (int li = 0; li < sh->n_layers; li++) {
        if (cm->L[li].full) b += 2 * (int64_t)sh->KV * sh->hd * 2 * (ctx + 1);
        else b += 2 * ((int64_t)sh->Hv * sh->dk * sh->dv * 4 + (int64_t)cm->conv_dim * 3 * 4);
    }
    return b;
}

void qc_cuda_mem(const qc_cuda_model *cm, const qc_cuda_sess *cs, qc_mem_report *rep)
{
    memset(rep, 0, sizeof *rep);
    for (int i = 0; i < QC_MEM_COUNT; i++) {
        /* Shared buffers (embedding, BF16 head, norms identical to another
         * resident model's) count for one holder only: the first, or when it
         * is gone the oldest left (shared_tensors.h). */
        rep->bytes[i] += cm->pool.bytes[i] + qc_shared_owned_bytes(cm, i);
        if (cs) rep->bytes[i] += cs->state.bytes[i] + cs->scratch.bytes[i];
    }
    if (cs) rep->bytes[QC_MEM_SCRATCH] += qc_cuda_sampling_bytes(cs->smp);
    rep->borrowed = qc_shared_borrowed_bytes(cm);
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        cudaGetLastError();
        return;
    }
    uint64_t counted = 0;
    for (int i = 0; i < QC_MEM_RUNTIME; i++) counted += rep->bytes[i];
    /* What is used and not counted is this process's runtime (context,
     * kernels, libraries; and the driver's own reserve, which no process is
     * listed for) unless another process holds it: NVML lists the other
     * processes where it can; else it all reads as runtime. */
    uint64_t used = tot - fr, others = 0;
    if (qc_nvml_others_bytes(cm->bus_id, (int)getpid(), &others) != 0 || others > used) others = 0;
    uint64_t mine = used - others;
    rep->bytes[QC_MEM_RUNTIME] = mine > counted ? mine - counted : 0;
    rep->bytes[QC_MEM_OTHER_PROCS] = others;
    rep->bytes[QC_MEM_FREE] = fr;
    rep->total = tot;
}

static void cuda_mem(const qc_model *m, const qc_session *s, qc_mem_report *rep)
{
    qc_cuda_mem(m->be_model, s ? s->be_sess : NULL, rep);
}

int qc_cuda_copy_bandwidth(double *bytes_per_s, qc_err *err)
{
    size_t n = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    int rc = QC_OK;
    if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess || cudaEventCreate(&e0) != cudaSuccess ||
        cudaEventCreate(&e1) != cudaSuccess) {
        rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: cannot allocate 2 GiB for the copy-bandwidth probe");
        goto done;
    }
    cudaMemset(a, 1, n);
    cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice); /* warm-up */
    float best = 1e30f;
    for (int r = 0; r < 5; r++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        if (ms < best) best = ms;
    }
    if (cudaGetLastError() != cudaSuccess) rc = qc_err_set(err, QC_EXIT_RUNTIME, "CUDA: copy-bandwidth probe failed");
    *bytes_per_s = 2.0 * (double)n / (best / 1e3);
done:
    cudaGetLastError();
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return rc;
}

const qc_backend qc_cuda_backend = {
    "cuda", cuda_model_init, cuda_model_free, cuda_session_init, cuda_session_free,
    cuda_session_reset, cuda_forward, cuda_mem,
};

#else
/* CPU-only build: this file compiles to nothing (ISO C wants one declaration). */
typedef int qc_cuda_backend_unused;
#endif
