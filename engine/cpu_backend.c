/* cpu_backend.c — the CPU backend: the whole forward pass of
 * qwen35-model.md §3 in float32, straight from the mapped checkpoint (every
 * Linear dequantized exactly, tile by tile, inside the threaded matmul).
 *
 * Session state: per linear-attention layer a conv state [conv_dim][kernel-1]
 * (the last raw qkv inputs) and the recurrent state S [Hv][dk][dv]; per
 * full-attention layer a float32 K and V cache [pos][kv][hd] grown on demand.
 * Prefill chunks of more than one token use the chunked delta rule, single
 * tokens the recurrence; both continue from the same state. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cpu_ops.h"
#include "dequant.h"
#include "shared_tensors.h"

/* A Linear dequantized once to float32 at load (owned by the backend). */
typedef struct f32_linear {
    qc_linear lin;
    qc_tensor t;
    float *data;
    const qc_linear *src;
    /* data is a registry buffer (shared_tensors.h): released, never freed
     * here. acquired: another model made it (nothing to dequantize). */
    bool registered, acquired;
    qc_shared_key key;
} f32_linear;

typedef struct cpu_model {
    cpu_pool *pool;
    f32_linear *cache; /* [ncache] */
    int ncache;
    int64_t cache_bytes; /* private copies only; registry buffers are counted by the registry */
} cpu_model;

typedef struct cpu_layer_state {
    float *conv;   /* linear: [conv_dim][kernel-1] */
    float *S;      /* linear: [Hv][dk][dv] */
    float *k, *v;  /* full: [cap][kv][hd] */
} cpu_layer_state;

typedef struct cpu_session {
    cpu_layer_state *ls;
    int kv_cap;    /* positions the K/V caches hold room for */
    float *arena;  /* activations of one chunk */
    size_t arena_n;
} cpu_session;

/* ---- model ------------------------------------------------------------------- */

static int64_t max_k_of(const qc_linear *l, int64_t k) { return l && l->k > k ? l->k : k; }

/* Every Linear slot of the model's weights, so the cache can repoint them. */
static int weight_slots(qc_model *m, const qc_linear ***slots)
{
    const qc_config *c = m->cfg;
    int n = 0;
#define SLOT(p)                 \
    do {                        \
        if (p) {                \
            if (slots)          \
                slots[n] = &(p); \
            n++;                \
        }                       \
    } while (0)
    for (int i = 0; i < c->num_hidden_layers; i++) {
        qc_layer_weights *L = &m->w.layers[i];
        SLOT(L->qkv); SLOT(L->z); SLOT(L->b); SLOT(L->a); SLOT(L->out);
        SLOT(L->q); SLOT(L->k); SLOT(L->v); SLOT(L->o);
        SLOT(L->gate); SLOT(L->up); SLOT(L->down);
        SLOT(L->router); SLOT(L->sh_gate); SLOT(L->sh_up); SLOT(L->sh_down); SLOT(L->sh_router);
        for (int e = 0; L->exp_gate && e < c->num_experts; e++) {
            SLOT(L->exp_gate[e]); SLOT(L->exp_up[e]); SLOT(L->exp_down[e]);
        }
    }
    SLOT(m->w.lm_head);
#undef SLOT
    return n;
}

static void dequant_task(void *ctx, int i, int worker)
{
    (void)worker;
    f32_linear *f = (f32_linear *)ctx + i;
    if (!f->acquired)
        qc_linear_dequant(f->src, f->data);
}

static int64_t default_budget(void)
{
    long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (int64_t)pages * psz / 2 : 0;
}

/* A Linear whose float32 copy depends only on its weight bytes (BF16/F16,
 * no scales), so identical bytes in another checkpoint give the same copy. */
static bool shareable(const qc_linear *l)
{
    const qc_tensor *w = l->weight;
    return (l->format == QC_FMT_BF16 || l->format == QC_FMT_F16) && w && !l->scale && !l->zeros &&
           !l->g_idx && (w->dtype == QC_DT_BF16 || w->dtype == QC_DT_F16) &&
           w->nbytes == (size_t)(l->n * l->k) * 2;
}

/* Dequantizes Linears to float32 copies, in model order, while they fit in
 * the budget; the weight slots then point at the copies. Exactly the same
 * numbers as dequantizing tile by tile, without redoing it every token. */
static int build_cache(qc_model *m, cpu_model *cm, int64_t budget, qc_err *err)
{
    if (budget < 0)
        return QC_OK;
    if (budget == 0)
        budget = default_budget();
    int n = weight_slots(m, NULL);
    const qc_linear ***slots = calloc((size_t)n + 1, sizeof *slots);
    cm->cache = calloc((size_t)n + 1, sizeof *cm->cache);
    if (!slots || !cm->cache) {
        free(slots);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for the weight cache table");
    }
    weight_slots(m, slots);
    for (int i = 0; i < n; i++) {
        const qc_linear *l = *slots[i];
        int64_t bytes = l->n * l->k * (int64_t)sizeof(float);
        if (l->format == QC_FMT_F32)
            continue;
        f32_linear *f = &cm->cache[cm->ncache];
        if (shareable(l)) {
            /* The same bytes already resident for another model (e.g. the
             * BF16 lm_head of the FP8 and INT4 checkpoints of one model):
             * take that copy; it costs no memory, so no budget either. */
            int64_t shp[2] = {l->n, l->k};
            qc_shared_key_make(&f->key, QC_SHARED_CPU, l->weight->dtype, 2, shp, l->weight->data,
                               l->weight->nbytes);
            f->data = qc_shared_acquire(&f->key, l->weight->data, cm);
            f->registered = f->acquired = f->data != NULL;
        }
        if (!f->data) {
            if (cm->cache_bytes + bytes > budget)
                continue;
            f->data = malloc((size_t)bytes);
            if (!f->data)
                break; /* keep what fits; the rest dequantizes on the fly */
            cm->cache_bytes += bytes;
        }
        f->src = l;
        f->lin = *l;
        f->lin.format = QC_FMT_F32;
        f->lin.bits = 32;
        f->lin.group_size = 0;
        f->lin.block_n = f->lin.block_k = 0;
        f->lin.zero_bias = 0;
        f->lin.scale = f->lin.zeros = f->lin.g_idx = f->lin.global_scale = f->lin.input_scale = NULL;
        f->lin.bytes = bytes;
        f->t = (qc_tensor){.name = l->weight->name, .dtype = QC_DT_F32, .ndim = 2,
                           .shape = {l->n, l->k}, .numel = l->n * l->k, .data = f->data,
                           .nbytes = (size_t)bytes, .shard = -1};
        f->lin.weight = &f->t;
        cm->ncache++;
    }
    cpu_pool_run(cm->pool, cm->ncache, dequant_task, cm->cache);
    /* Offer the new copies of shareable Linears to later models (only once
     * filled, so no other loader can see a half-made buffer). From here the
     * registry owns them and their bytes. */
    for (int j = 0; j < cm->ncache; j++) {
        f32_linear *f = &cm->cache[j];
        if (f->acquired || !shareable(f->src))
            continue;
        if (qc_shared_publish(&f->key, f->src->weight->data, cm, f->data, f->t.nbytes, QC_MEM_W_OTHER, free,
                              NULL) == QC_OK) {
            f->registered = true;
            cm->cache_bytes -= (int64_t)f->t.nbytes;
        }
    }
    /* Repoint the slots (a Linear may sit in more than one slot). */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < cm->ncache; j++)
            if (*slots[i] == cm->cache[j].src) {
                *slots[i] = &cm->cache[j].lin;
                break;
            }
    free(slots);
    return QC_OK;
}

static int cpu_model_init(qc_model *m, const qc_load_opts *opts, qc_err *err)
{
    cpu_model *cm = calloc(1, sizeof *cm);
    if (!cm)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for the CPU backend");
    cm->pool = cpu_pool_new(opts ? opts->threads : 0);
    if (!cm->pool) {
        free(cm);
        return qc_err_set(err, QC_EXIT_RUNTIME, "cannot start CPU worker threads");
    }
    /* Reserve the largest matmul tile for every worker now, so the parallel
     * loops never allocate. */
    int64_t kmax = max_k_of(m->w.lm_head, 0);
    const qc_config *c = m->cfg;
    for (int i = 0; i < c->num_hidden_layers; i++) {
        const qc_layer_weights *L = &m->w.layers[i];
        const qc_linear *ls[] = {L->qkv, L->z, L->b, L->a, L->out, L->q, L->k, L->v, L->o, L->gate,
                                 L->up, L->down, L->router, L->sh_gate, L->sh_up, L->sh_down, L->sh_router};
        for (size_t j = 0; j < sizeof ls / sizeof ls[0]; j++)
            kmax = max_k_of(ls[j], kmax);
        for (int e = 0; L->exp_down && e < c->num_experts; e++)
            kmax = max_k_of(L->exp_down[e], max_k_of(L->exp_gate[e], kmax));
    }
    if (!cpu_pool_reserve(cm->pool, cpu_matmul_scratch(kmax))) {
        cpu_pool_free(cm->pool);
        free(cm);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for CPU matmul scratch");
    }
    m->be_model = cm;
    int rc = build_cache(m, cm, opts ? opts->cpu_dequant_budget : 0, err);
    if (rc)
        return rc; /* qc_model_free calls cpu_model_free */
    snprintf(m->device, sizeof m->device, "cpu (%d threads)", cpu_pool_threads(cm->pool));
    return QC_OK;
}

static void cpu_model_free(qc_model *m)
{
    cpu_model *cm = m->be_model;
    if (cm) {
        cpu_pool_free(cm->pool);
        for (int i = 0; i < cm->ncache; i++) {
            if (cm->cache[i].registered)
                qc_shared_release(cm->cache[i].data, cm);
            else
                free(cm->cache[i].data);
        }
        free(cm->cache);
    }
    free(cm);
    m->be_model = NULL;
}

/* ---- session ------------------------------------------------------------------- */

static size_t conv_state_floats(const qc_config *c)
{
    return (size_t)qc_config_conv_dim(c) * (size_t)(c->linear_conv_kernel_dim - 1);
}
static size_t gdn_state_floats(const qc_config *c)
{
    return (size_t)c->linear_num_value_heads * c->linear_key_head_dim * c->linear_value_head_dim;
}

static void cpu_session_free(qc_session *s)
{
    cpu_session *cs = s->be_sess;
    if (!cs)
        return;
    for (int i = 0; cs->ls && i < s->m->cfg->num_hidden_layers; i++) {
        free(cs->ls[i].conv);
        free(cs->ls[i].S);
        free(cs->ls[i].k);
        free(cs->ls[i].v);
    }
    free(cs->ls);
    free(cs->arena);
    free(cs);
    s->be_sess = NULL;
}

static int cpu_session_init(qc_session *s, qc_err *err)
{
    const qc_config *c = s->m->cfg;
    cpu_session *cs = calloc(1, sizeof *cs);
    if (!cs)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for session state");
    s->be_sess = cs;
    cs->ls = calloc((size_t)c->num_hidden_layers, sizeof *cs->ls);
    if (!cs->ls)
        goto oom;
    for (int i = 0; i < c->num_hidden_layers; i++) {
        if (c->layer_full[i])
            continue;
        cs->ls[i].conv = calloc(conv_state_floats(c) ? conv_state_floats(c) : 1, sizeof(float));
        cs->ls[i].S = calloc(gdn_state_floats(c), sizeof(float));
        if (!cs->ls[i].conv || !cs->ls[i].S)
            goto oom;
    }
    return QC_OK;
oom:
    cpu_session_free(s);
    return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for session state");
}

static void cpu_session_reset(qc_session *s)
{
    cpu_session *cs = s->be_sess;
    const qc_config *c = s->m->cfg;
    for (int i = 0; i < c->num_hidden_layers; i++) {
        if (cs->ls[i].conv)
            memset(cs->ls[i].conv, 0, conv_state_floats(c) * sizeof(float));
        if (cs->ls[i].S)
            memset(cs->ls[i].S, 0, gdn_state_floats(c) * sizeof(float));
        /* KV caches keep their room; positions past the length are rewritten. */
    }
}

/* Room for `need` positions in every full-attention layer's cache. */
static int kv_reserve(qc_session *s, int need, qc_err *err)
{
    cpu_session *cs = s->be_sess;
    const qc_config *c = s->m->cfg;
    if (need <= cs->kv_cap)
        return QC_OK;
    int cap = cs->kv_cap ? cs->kv_cap : 256;
    while (cap < need)
        cap *= 2;
    if (s->max_ctx > 0 && cap > s->max_ctx)
        cap = s->max_ctx > need ? s->max_ctx : need;
    size_t row = (size_t)c->num_key_value_heads * c->head_dim;
    for (int i = 0; i < c->num_hidden_layers; i++) {
        if (!c->layer_full[i])
            continue;
        float *k = realloc(cs->ls[i].k, sizeof(float) * row * cap);
        if (k)
            cs->ls[i].k = k;
        float *v = k ? realloc(cs->ls[i].v, sizeof(float) * row * cap) : NULL;
        if (v)
            cs->ls[i].v = v;
        if (!k || !v)
            return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory growing the KV cache to %d positions",
                              cap);
    }
    cs->kv_cap = cap;
    return QC_OK;
}

/* ---- layers ------------------------------------------------------------------------ */

/* Activation buffers of one chunk of T tokens, carved from the session arena. */
typedef struct bufs {
    float *h, *x, *y, *fn;                        /* [T][D] */
    float *qkv, *cv, *z, *bb, *aa, *q, *k, *v, *o; /* GDN */
    float *mlp;                                   /* [2][T][I] */
} bufs;

static int bufs_get(qc_session *s, int T, bufs *b, qc_err *err)
{
    const qc_config *c = s->m->cfg;
    cpu_session *cs = s->be_sess;
    const size_t D = c->hidden_size, conv = qc_config_conv_dim(c);
    const size_t Hv = c->linear_num_value_heads, Hk = c->linear_num_key_heads;
    const size_t dk = c->linear_key_head_dim, dv = c->linear_value_head_dim;
    size_t I = c->intermediate_size > 0 ? (size_t)c->intermediate_size : 0;
    size_t sizes[] = {D, D, D, D, conv, conv, Hv * dv, Hv, Hv, Hk * dk, Hk * dk, Hv * dv, Hv * dv, 2 * I};
    float **ptrs[] = {&b->h, &b->x, &b->y, &b->fn, &b->qkv, &b->cv, &b->z, &b->bb,
                      &b->aa, &b->q, &b->k, &b->v, &b->o, &b->mlp};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        total += sizes[i] * (size_t)T;
    if (total > cs->arena_n) {
        float *a = realloc(cs->arena, total * sizeof(float));
        if (!a)
            return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for activations of %d tokens", T);
        cs->arena = a;
        cs->arena_n = total;
    }
    float *p = cs->arena;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *ptrs[i] = p;
        p += sizes[i] * (size_t)T;
    }
    return QC_OK;
}

static void l2norm_heads(float *x, int rows, int n, float scale)
{
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * n;
        float ss = 0;
        for (int i = 0; i < n; i++)
            ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss + 1e-6f) * scale;
        for (int i = 0; i < n; i++)
            xr[i] *= inv;
    }
}

/* Gated DeltaNet layer (§3.2): y[T][D] from the normed input x. */
static int gdn_layer(qc_session *s, int li, int T, bufs *b, qc_err *err)
{
    const qc_config *c = s->m->cfg;
    const qc_layer_weights *L = &s->m->w.layers[li];
    cpu_session *cs = s->be_sess;
    cpu_pool *pool = ((cpu_model *)s->m->be_model)->pool;
    const int Hk = c->linear_num_key_heads, Hv = c->linear_num_value_heads;
    const int dk = c->linear_key_head_dim, dv = c->linear_value_head_dim;
    const int conv = qc_config_conv_dim(c), K = c->linear_conv_kernel_dim, hist = K - 1;
    const float eps = (float)c->rms_norm_eps;

    cpu_matmul(pool, L->qkv, b->x, T, b->qkv, conv);
    cpu_matmul(pool, L->z, b->x, T, b->z, Hv * dv);
    cpu_matmul(pool, L->b, b->x, T, b->bb, Hv);
    cpu_matmul(pool, L->a, b->x, T, b->aa, Hv);

    /* Causal depthwise conv over the raw qkv stream, then SiLU; the state
     * holds the previous `hist` raw inputs of each channel, oldest first. */
    float *st = cs->ls[li].conv;
    for (int ch = 0; ch < conv; ch++) {
        const float *w = L->conv_w + (size_t)ch * K;
        float *sc = st + (size_t)ch * hist;
        for (int t = 0; t < T; t++) {
            float acc = 0;
            for (int j = 0; j < K; j++) {
                int src = t - hist + j; /* input index relative to this chunk */
                float xin = src >= 0 ? b->qkv[(size_t)src * conv + ch] : sc[hist + src];
                acc += w[j] * xin;
            }
            b->cv[(size_t)t * conv + ch] = cpu_silu(acc);
        }
        /* New state: the last `hist` raw inputs of (old state ++ chunk). */
        float tmp[hist > 0 ? hist : 1];
        for (int j = 0; j < hist; j++) {
            int src = T - hist + j;
            tmp[j] = src >= 0 ? b->qkv[(size_t)src * conv + ch] : sc[hist + src];
        }
        memcpy(sc, tmp, sizeof(float) * hist);
    }

    /* Split into head-major q, k, v; gates in fp32. */
    const int nq = Hk * dk;
    for (int t = 0; t < T; t++) {
        const float *r = b->cv + (size_t)t * conv;
        memcpy(b->q + (size_t)t * nq, r, sizeof(float) * nq);
        memcpy(b->k + (size_t)t * nq, r + nq, sizeof(float) * nq);
        memcpy(b->v + (size_t)t * Hv * dv, r + 2 * nq, sizeof(float) * Hv * dv);
        for (int h = 0; h < Hv; h++) {
            float *bb = b->bb + (size_t)t * Hv + h, *aa = b->aa + (size_t)t * Hv + h;
            *bb = cpu_sigmoid(*bb);
            *aa = L->neg_exp_a[h] * cpu_softplus(*aa + L->dt_bias[h]);
        }
    }
    l2norm_heads(b->q, T * Hk, dk, 1.0f / sqrtf((float)dk));
    l2norm_heads(b->k, T * Hk, dk, 1.0f);

    cpu_gdn_dims d = {Hk, Hv, dk, dv};
    if (T == 1)
        cpu_gdn_recurrent(&d, T, b->q, b->k, b->v, b->aa, b->bb, cs->ls[li].S, b->o);
    else if (!cpu_gdn_chunked(pool, &d, T, b->q, b->k, b->v, b->aa, b->bb, cs->ls[li].S, b->o))
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory in the Gated DeltaNet prefill");

    /* Per-head output norm (plain multiplier) and SiLU gate. */
    cpu_norm_mul(b->o, L->gdn_norm, T * Hv, dv, eps, b->o);
    for (size_t i = 0; i < (size_t)T * Hv * dv; i++)
        b->o[i] *= cpu_silu(b->z[i]);
    cpu_matmul(pool, L->out, b->o, T, b->y, c->hidden_size);
    return QC_OK;
}

static void embed_rows(const qc_tensor *e, const int32_t *ids, int T, int D, float *out)
{
    for (int t = 0; t < T; t++) {
        float *o = out + (size_t)t * D;
        size_t base = (size_t)ids[t] * D;
        if (e->dtype == QC_DT_F32) {
            memcpy(o, (const float *)e->data + base, sizeof(float) * D);
        } else {
            const uint16_t *s = (const uint16_t *)e->data + base;
            for (int i = 0; i < D; i++)
                o[i] = e->dtype == QC_DT_BF16 ? qc_bf16_to_f32(s[i]) : qc_f16_to_f32(s[i]);
        }
    }
}

static int cpu_forward(qc_session *s, const int32_t *ids, int T, int pos0, float *logits,
                       float *norm, qc_err *err)
{
    qc_model *m = s->m;
    const qc_config *c = m->cfg;
    cpu_session *cs = s->be_sess;
    cpu_pool *pool = ((cpu_model *)m->be_model)->pool;
    const int D = c->hidden_size, V = c->vocab_size;
    const float eps = (float)c->rms_norm_eps;
    bufs b;
    int rc = bufs_get(s, T, &b, err);
    if (!rc && c->n_full_layers > 0)
        rc = kv_reserve(s, pos0 + T, err);
    if (rc)
        return rc;

    embed_rows(m->w.embed, ids, T, D, b.h);
    const size_t TD = (size_t)T * D;
    for (int li = 0; li < c->num_hidden_layers; li++) {
        const qc_layer_weights *L = &m->w.layers[li];
        cpu_norm1p(b.h, L->in_norm, T, D, eps, b.x);
        if (L->full) {
            cpu_attn_weights aw = {c->num_attention_heads, c->num_key_value_heads, c->head_dim,
                                   c->rotary_dim, (float)c->rope_theta, eps, L->q, L->k, L->v, L->o,
                                   L->q_norm, L->k_norm};
            if (!cpu_attn_forward(pool, &aw, b.x, T, pos0, cs->ls[li].k, cs->ls[li].v, b.y))
                return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory in attention (layer %d)", li);
        } else if ((rc = gdn_layer(s, li, T, &b, err))) {
            return rc;
        }
        for (size_t i = 0; i < TD; i++)
            b.h[i] += b.y[i];
        cpu_norm1p(b.h, L->post_norm, T, D, eps, b.x);
        if (L->router) {
            cpu_moe_weights mw = {c->num_experts, c->num_experts_per_tok, D, c->moe_intermediate_size,
                                  c->shared_expert_intermediate_size, L->router,
                                  L->exp_gate, L->exp_up, L->exp_down,
                                  L->sh_gate, L->sh_up, L->sh_down, L->sh_router};
            if (!cpu_moe_forward(pool, &mw, b.x, T, b.y))
                return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory in the MoE block (layer %d)", li);
        } else {
            cpu_mlp_forward(pool, L->gate, L->up, L->down, b.x, T, b.mlp, b.y);
        }
        for (size_t i = 0; i < TD; i++)
            b.h[i] += b.y[i];
    }
    cpu_norm1p(b.h, m->w.final_norm, T, D, eps, b.fn);
    if (norm)
        memcpy(norm, b.fn, sizeof(float) * TD);
    memcpy(s->final_norm, b.fn + (size_t)(T - 1) * D, sizeof(float) * D);
    if (logits) {
        cpu_matmul(pool, m->w.lm_head, b.fn, T, logits, V);
        memcpy(s->logits, logits + (size_t)(T - 1) * V, sizeof(float) * V);
    } else {
        cpu_matmul(pool, m->w.lm_head, s->final_norm, 1, s->logits, V);
    }
    return QC_OK;
}

static void cpu_mem(const qc_model *m, const qc_session *s, qc_mem_report *rep)
{
    const cpu_model *cm = m->be_model;
    rep->bytes[QC_MEM_SCRATCH] += cpu_pool_scratch_bytes(cm->pool);
    /* Private float32 copies, plus the shared ones attributed to this model:
     * a copy held by several resident models counts for exactly one of them
     * (its first holder while that one lives), so the TUI's sum over the
     * resident models counts it once. */
    rep->bytes[QC_MEM_W_OTHER] += (uint64_t)cm->cache_bytes + qc_shared_owned_bytes(cm, QC_MEM_W_OTHER);
    rep->borrowed = qc_shared_borrowed_bytes(cm);
    if (!s)
        return;
    const qc_config *c = m->cfg;
    const cpu_session *cs = s->be_sess;
    rep->bytes[QC_MEM_KV] += (uint64_t)c->n_full_layers * 2 * (uint64_t)cs->kv_cap *
                             c->num_key_value_heads * c->head_dim * sizeof(float);
    rep->bytes[QC_MEM_GDN_STATE] += (uint64_t)c->n_linear_layers *
                                    (gdn_state_floats(c) + conv_state_floats(c)) * sizeof(float);
    rep->bytes[QC_MEM_SCRATCH] += cs->arena_n * sizeof(float) +
                                  ((uint64_t)c->vocab_size + c->hidden_size) * sizeof(float);
}

const qc_backend qc_cpu_backend = {
    "cpu", cpu_model_init, cpu_model_free, cpu_session_init, cpu_session_free,
    cpu_session_reset, cpu_forward, cpu_mem,
};
