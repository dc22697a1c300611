/* model.c — qc_model: opens a checkpoint (ckpt.h), loads its tokenizer and
 * chat-template facts, resolves every weight the forward pass needs into
 * qc_model_weights with its shape checked against the config, and hands the
 * model to a backend. Anything missing or mis-shaped fails the load with
 * QC_EXIT_CHECKPOINT and a message naming the directory and the tensor. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda_backend.h"
#include "chat.h"
#include "cpu_ops.h"
#include "dequant.h"

/* ---- weight resolution ------------------------------------------------------ */

typedef struct loader {
    qc_model *m;
    qc_err *err;
    int rc;
    bool scan_scales; /* CPU backend: check every scale at load (qc_linear_check_scales) */
} loader;

/* qc_linear_validate, and for the CPU backend, which reads the scales in
 * place at every matmul, the finiteness of all of them (the GPU repacking
 * checks them as it packs). */
static int check_linear(const loader *ld, const qc_linear *l)
{
    int rc = qc_linear_validate(l, ld->err);
    return rc || !ld->scan_scales ? rc : qc_linear_check_scales(l, 0, l->n, ld->err);
}

/* A Linear by prefix, checked to be N x K. Returns NULL (and records the
 * error once) when absent or mis-shaped. */
static const qc_linear *need_linear(loader *ld, int64_t n, int64_t k, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const qc_linear *need_linear(loader *ld, int64_t n, int64_t k, const char *fmt, ...)
{
    if (ld->rc)
        return NULL;
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const qc_linear *l = qc_ckpt_linear(ld->m->ck, name);
    if (!l) {
        ld->rc = qc_err_set(ld->err, QC_EXIT_CHECKPOINT, "%s: missing tensor %s.weight (or its quantized parts)",
                            ld->m->dir, name);
        return NULL;
    }
    if (l->n != n || l->k != k) {
        ld->rc = qc_err_set(ld->err, QC_EXIT_CHECKPOINT,
                            "%s: %s has shape [%lld, %lld], the config implies [%lld, %lld]", ld->m->dir,
                            name, (long long)l->n, (long long)l->k, (long long)n, (long long)k);
        return NULL;
    }
    int rc = check_linear(ld, l);
    if (rc) {
        ld->rc = rc;
        return NULL;
    }
    return l;
}

/* A small float vector/tensor by full name with numel elements, copied to f32. */
static float *need_vec(loader *ld, int64_t numel, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static float *need_vec(loader *ld, int64_t numel, const char *fmt, ...)
{
    if (ld->rc)
        return NULL;
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const qc_tensor *t = qc_ckpt_tensor(ld->m->ck, name);
    if (!t) {
        ld->rc = qc_err_set(ld->err, QC_EXIT_CHECKPOINT, "%s: missing tensor %s", ld->m->dir, name);
        return NULL;
    }
    if (t->numel != numel) {
        ld->rc = qc_err_set(ld->err, QC_EXIT_CHECKPOINT,
                            "%s: %s has %lld elements, the config implies %lld", ld->m->dir, name,
                            (long long)t->numel, (long long)numel);
        return NULL;
    }
    float *v = malloc(sizeof(float) * (size_t)(numel ? numel : 1));
    if (!v) {
        ld->rc = qc_err_set(ld->err, QC_EXIT_RUNTIME, "out of memory for %s", name);
        return NULL;
    }
    if (!cpu_tensor_to_f32(t, v)) {
        free(v);
        ld->rc = qc_err_set(ld->err, QC_EXIT_CHECKPOINT, "%s: %s has dtype %s, expected a float type",
                            ld->m->dir, name, qc_dtype_name(t->dtype));
        return NULL;
    }
    ld->m->host_bytes += numel * (int64_t)sizeof(float);
    return v;
}

static void layer_free(qc_layer_weights *L)
{
    free(L->in_norm);
    free(L->post_norm);
    free(L->conv_w);
    free(L->dt_bias);
    free(L->neg_exp_a);
    free(L->gdn_norm);
    free(L->q_norm);
    free(L->k_norm);
    free(L->exp_gate);
    free(L->exp_up);
    free(L->exp_down);
}

static void resolve_layer(loader *ld, int i)
{
    qc_model *m = ld->m;
    const qc_config *c = m->cfg;
    qc_layer_weights *L = &m->w.layers[i];
    const char *P = c->prefix;
    const int64_t D = c->hidden_size;
    L->full = c->layer_full[i];
    L->in_norm = need_vec(ld, D, "%slayers.%d.input_layernorm.weight", P, i);
    L->post_norm = need_vec(ld, D, "%slayers.%d.post_attention_layernorm.weight", P, i);
    if (L->full) {
        const int64_t H = c->num_attention_heads, KV = c->num_key_value_heads, hd = c->head_dim;
        L->q = need_linear(ld, 2 * H * hd, D, "%slayers.%d.self_attn.q_proj", P, i);
        L->k = need_linear(ld, KV * hd, D, "%slayers.%d.self_attn.k_proj", P, i);
        L->v = need_linear(ld, KV * hd, D, "%slayers.%d.self_attn.v_proj", P, i);
        L->o = need_linear(ld, D, H * hd, "%slayers.%d.self_attn.o_proj", P, i);
        L->q_norm = need_vec(ld, hd, "%slayers.%d.self_attn.q_norm.weight", P, i);
        L->k_norm = need_vec(ld, hd, "%slayers.%d.self_attn.k_norm.weight", P, i);
    } else {
        const int64_t Hk = c->linear_num_key_heads, Hv = c->linear_num_value_heads;
        const int64_t dk = c->linear_key_head_dim, dv = c->linear_value_head_dim;
        const int64_t conv = 2 * Hk * dk + Hv * dv;
        L->qkv = need_linear(ld, conv, D, "%slayers.%d.linear_attn.in_proj_qkv", P, i);
        L->z = need_linear(ld, Hv * dv, D, "%slayers.%d.linear_attn.in_proj_z", P, i);
        L->b = need_linear(ld, Hv, D, "%slayers.%d.linear_attn.in_proj_b", P, i);
        L->a = need_linear(ld, Hv, D, "%slayers.%d.linear_attn.in_proj_a", P, i);
        L->out = need_linear(ld, D, Hv * dv, "%slayers.%d.linear_attn.out_proj", P, i);
        L->conv_w = need_vec(ld, conv * c->linear_conv_kernel_dim, "%slayers.%d.linear_attn.conv1d.weight",
                             P, i);
        L->dt_bias = need_vec(ld, Hv, "%slayers.%d.linear_attn.dt_bias", P, i);
        L->neg_exp_a = need_vec(ld, Hv, "%slayers.%d.linear_attn.A_log", P, i);
        for (int h = 0; L->neg_exp_a && h < Hv; h++)
            L->neg_exp_a[h] = -expf(L->neg_exp_a[h]);
        L->gdn_norm = need_vec(ld, dv, "%slayers.%d.linear_attn.norm.weight", P, i);
    }
    if (c->is_moe) {
        const int E = c->num_experts;
        const int64_t Im = c->moe_intermediate_size, Is = c->shared_expert_intermediate_size;
        char mlp[200];
        snprintf(mlp, sizeof mlp, "%slayers.%d.mlp", P, i);
        L->router = need_linear(ld, E, D, "%s.gate", mlp);
        L->exp_gate = calloc((size_t)E, sizeof *L->exp_gate);
        L->exp_up = calloc((size_t)E, sizeof *L->exp_up);
        L->exp_down = calloc((size_t)E, sizeof *L->exp_down);
        if (!L->exp_gate || !L->exp_up || !L->exp_down) {
            if (!ld->rc)
                ld->rc = qc_err_set(ld->err, QC_EXIT_RUNTIME, "out of memory for experts");
            return;
        }
        for (int e = 0; e < E && !ld->rc; e++) {
            const qc_linear *g = qc_ckpt_expert(m->ck, mlp, e, QC_EXPERT_GATE);
            const qc_linear *u = qc_ckpt_expert(m->ck, mlp, e, QC_EXPERT_UP);
            const qc_linear *d = qc_ckpt_expert(m->ck, mlp, e, QC_EXPERT_DOWN);
            if (!g || !u || !d) {
                ld->rc = qc_err_set(ld->err, QC_EXIT_CHECKPOINT, "%s: missing tensors of %s.experts.%d",
                                    m->dir, mlp, e);
                return;
            }
            if (g->n != Im || g->k != D || u->n != Im || u->k != D || d->n != D || d->k != Im) {
                ld->rc = qc_err_set(ld->err, QC_EXIT_CHECKPOINT,
                                    "%s: %s.experts.%d has shapes gate [%lld,%lld] up [%lld,%lld] down "
                                    "[%lld,%lld], the config implies [%lld,%lld] and [%lld,%lld]",
                                    m->dir, mlp, e, (long long)g->n, (long long)g->k, (long long)u->n,
                                    (long long)u->k, (long long)d->n, (long long)d->k, (long long)Im,
                                    (long long)D, (long long)D, (long long)Im);
                return;
            }
            int rc = check_linear(ld, g);
            rc = rc ? rc : check_linear(ld, u);
            rc = rc ? rc : check_linear(ld, d);
            if (rc) {
                ld->rc = rc;
                return;
            }
            L->exp_gate[e] = g;
            L->exp_up[e] = u;
            L->exp_down[e] = d;
        }
        if (Is > 0) {
            L->sh_gate = need_linear(ld, Is, D, "%s.shared_expert.gate_proj", mlp);
            L->sh_up = need_linear(ld, Is, D, "%s.shared_expert.up_proj", mlp);
            L->sh_down = need_linear(ld, D, Is, "%s.shared_expert.down_proj", mlp);
            L->sh_router = need_linear(ld, 1, D, "%s.shared_expert_gate", mlp);
        }
    } else {
        const int64_t I = c->intermediate_size;
        L->gate = need_linear(ld, I, D, "%slayers.%d.mlp.gate_proj", P, i);
        L->up = need_linear(ld, I, D, "%slayers.%d.mlp.up_proj", P, i);
        L->down = need_linear(ld, D, I, "%slayers.%d.mlp.down_proj", P, i);
    }
}

static int resolve_weights(qc_model *m, bool scan_scales, qc_err *err)
{
    const qc_config *c = m->cfg;
    loader ld = {m, err, 0, scan_scales};
    const int64_t D = c->hidden_size, V = c->vocab_size;
    /* Head groupings the forward pass divides by. */
    if (c->n_full_layers > 0 &&
        (c->num_attention_heads <= 0 || c->num_key_value_heads <= 0 || c->head_dim <= 0 ||
         c->num_attention_heads % c->num_key_value_heads || c->rotary_dim < 0 ||
         c->rotary_dim > c->head_dim || c->rotary_dim % 2))
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s/config.json: attention heads %d / kv heads %d / head_dim %d / rotary dim %d "
                          "are not usable (heads must be a multiple of kv heads, rotary dim even and <= head_dim)",
                          m->dir, c->num_attention_heads, c->num_key_value_heads, c->head_dim, c->rotary_dim);
    if (c->n_linear_layers > 0 &&
        (c->linear_num_key_heads <= 0 || c->linear_num_value_heads <= 0 || c->linear_key_head_dim <= 0 ||
         c->linear_value_head_dim <= 0 || c->linear_num_value_heads % c->linear_num_key_heads ||
         c->linear_conv_kernel_dim < 1))
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s/config.json: linear attention key heads %d / value heads %d / dims %d, %d / conv "
                          "kernel %d are not usable (value heads must be a multiple of key heads)",
                          m->dir, c->linear_num_key_heads, c->linear_num_value_heads, c->linear_key_head_dim,
                          c->linear_value_head_dim, c->linear_conv_kernel_dim);
    if (c->is_moe && (c->num_experts_per_tok < 1 || c->num_experts_per_tok > c->num_experts ||
                      c->moe_intermediate_size <= 0))
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s/config.json: %d experts per token of %d (expert width %d) is not usable", m->dir,
                          c->num_experts_per_tok, c->num_experts, c->moe_intermediate_size);
    if (!c->is_moe && c->intermediate_size <= 0)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s/config.json: intermediate_size %d is not usable",
                          m->dir, c->intermediate_size);
    m->w.embed = qc_ckpt_embed(m->ck);
    if (!m->w.embed)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: missing tensor %sembed_tokens.weight", m->dir,
                          c->prefix);
    const qc_tensor *e = m->w.embed;
    if (e->ndim != 2 || e->shape[0] != V || e->shape[1] != D)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: %s has shape [%lld, %lld], the config implies [%lld, %lld]", m->dir,
                          e->name, (long long)e->shape[0], (long long)(e->ndim > 1 ? e->shape[1] : 0),
                          (long long)V, (long long)D);
    if (e->dtype != QC_DT_BF16 && e->dtype != QC_DT_F16 && e->dtype != QC_DT_F32)
        return qc_err_set(err, QC_EXIT_CHECKPOINT, "%s: %s has dtype %s, expected BF16, F16 or F32",
                          m->dir, e->name, qc_dtype_name(e->dtype));
    m->w.lm_head = qc_ckpt_lm_head(m->ck);
    if (!m->w.lm_head)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: missing tensor lm_head.weight (and tie_word_embeddings is false)", m->dir);
    if (m->w.lm_head->n != V || m->w.lm_head->k != D)
        return qc_err_set(err, QC_EXIT_CHECKPOINT,
                          "%s: lm_head has shape [%lld, %lld], the config implies [%lld, %lld]", m->dir,
                          (long long)m->w.lm_head->n, (long long)m->w.lm_head->k, (long long)V,
                          (long long)D);
    int rc = check_linear(&ld, m->w.lm_head);
    if (rc)
        return rc;
    m->w.final_norm = need_vec(&ld, D, "%snorm.weight", c->prefix);
    m->w.layers = calloc((size_t)c->num_hidden_layers, sizeof *m->w.layers);
    if (!m->w.layers)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for layer table");
    for (int i = 0; i < c->num_hidden_layers && !ld.rc; i++)
        resolve_layer(&ld, i);
    return ld.rc;
}

/* ---- public API ---------------------------------------------------------------- */

void qc_model_free(qc_model *m)
{
    if (!m)
        return;
    if (m->be && m->be_model)
        m->be->model_free(m);
    if (m->w.layers && m->cfg)
        for (int i = 0; i < m->cfg->num_hidden_layers; i++)
            layer_free(&m->w.layers[i]);
    free(m->w.layers);
    free(m->w.final_norm);
    qc_tokenizer_free(m->tok);
    qc_ckpt_free(m->ck);
    free(m);
}

/* The tokenizer loads on its own thread while the weights are resolved and
 * uploaded: it needs nothing from them, and on the loading thread it took
 * 0.15-0.25 s of a ~1.2 s 27B load on the H100 host (0.3 s with the real
 * Qwen3 tokenizer.json and its merges; 2026-11-23, BENCHMARKS.md). */
typedef struct tok_job {
    const char *dir;
    qc_tokenizer *tok;
    qc_err err;
    int rc;
    atomic_bool failed; /* rc != 0 and final: set after rc, so the loading thread may stop early */
} tok_job;

static void *tok_job_run(void *arg)
{
    tok_job *j = arg;
    j->rc = qc_tokenizer_load(j->dir, &j->tok, &j->err);
    if (j->rc)
        atomic_store(&j->failed, true);
    return NULL;
}

/* Waits for the tokenizer (once), takes it into m and returns its status. */
static int tok_job_join(tok_job *j, pthread_t *th, bool *running, qc_model *m)
{
    if (*running) {
        pthread_join(*th, NULL);
        *running = false;
    }
    if (!j->rc && j->tok) {
        m->tok = j->tok;
        j->tok = NULL;
        m->n_tokens = qc_tokenizer_n_tokens(m->tok);
        if (m->n_tokens > m->cfg->vocab_size)
            m->n_tokens = m->cfg->vocab_size;
    }
    return j->rc;
}

int qc_model_load(const char *dir, const qc_load_opts *opts, qc_model **out, qc_err *err)
{
    *out = NULL;
    qc_load_opts def = {QC_DEVICE_AUTO, 0, 0};
    if (!opts)
        opts = &def;
    const qc_backend *be = &qc_cpu_backend;
#ifdef QC_HAVE_CUDA
    /* AUTO picks the GPU when one is present (dense models only, for now). */
    bool want_cuda = opts->device == QC_DEVICE_CUDA || (opts->device == QC_DEVICE_AUTO && qc_cuda_available());
#else
    if (opts->device == QC_DEVICE_CUDA)
        return qc_err_set(err, QC_EXIT_RUNTIME, "--device cuda: this qchat was built without CUDA");
#endif
    qc_model *m = calloc(1, sizeof *m);
    if (!m)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory loading %s", dir);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    tok_job tj = {.dir = m->dir};
    atomic_init(&tj.failed, false);
    pthread_t tth;
    bool tok_running = false;
    int rc = qc_ckpt_open(dir, &m->ck, err);
    if (rc)
        goto fail;
    m->cfg = qc_ckpt_config(m->ck);
    tok_running = pthread_create(&tth, NULL, tok_job_run, &tj) == 0;
    if (!tok_running)
        tok_job_run(&tj); /* no thread: here, as before */
    /* Until the tokenizer is in, every row of the head may be sampled. */
    m->n_tokens = (int)m->cfg->vocab_size;
    qc_chat_template tpl;
    qc_err terr;
    /* A missing or unknown template is not fatal (chat.h); a bad override is. */
    rc = qc_chat_template_detect(dir, NULL, &tpl, &terr);
    if (rc)
        *err = terr;
    else
        m->thinking_default = tpl.thinking_default;
    m->family = qc_ckpt_dominant_family(m->ck);
#ifdef QC_HAVE_CUDA
    if (want_cuda)
        be = &qc_cuda_backend;
#endif
    if (!rc)
        rc = resolve_weights(m, be == &qc_cpu_backend, err);
    m->be = be;
    /* (no upload for a tokenizer already known to be broken) */
    if (!rc && !atomic_load(&tj.failed))
        rc = be->model_init(m, opts, err); /* on failure qc_model_free hands be_model back to the backend */
    /* A broken tokenizer is reported first, as when it loaded before the weights. */
    if (tok_job_join(&tj, &tth, &tok_running, m)) {
        *err = tj.err;
        rc = tj.rc;
    }
    if (rc)
        goto fail;
#ifdef QC_HAVE_CUDA
    if (be == &qc_cuda_backend)
        qc_cuda_model_set_tokens(qc_cuda_model_of(m), m->n_tokens);
#endif
    *out = m;
    return QC_OK;
fail:
    tok_job_join(&tj, &tth, &tok_running, m);
    qc_tokenizer_free(tj.tok);
    qc_model_free(m);
    return rc;
}

void qc_model_get_info(const qc_model *m, qc_model_info *info)
{
    memset(info, 0, sizeof *info);
    info->dir = m->dir;
    info->family = m->family;
    info->device = m->device;
    info->vocab_size = m->cfg->vocab_size;
    info->n_tokens = m->n_tokens;
    info->hidden_size = m->cfg->hidden_size;
    info->n_layers = m->cfg->num_hidden_layers;
    info->thinking_default = m->thinking_default;
}

const qc_config *qc_model_config(const qc_model *m) { return m->cfg; }
const qc_tokenizer *qc_model_tokenizer(const qc_model *m) { return m->tok; }

/* /proc/self/status VmRSS and /proc/meminfo fields, in bytes (0 when unknown). */
static uint64_t proc_kb(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[256];
    uint64_t v = 0;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            v = strtoull(line + kl + 1, NULL, 10) * 1024;
            break;
        }
    fclose(f);
    return v;
}

void qc_model_mem(const qc_model *m, const qc_session *s, qc_mem_report *rep)
{
    memset(rep, 0, sizeof *rep);
    qc_ckpt_mem cm;
    qc_ckpt_memory(m->ck, 0, &cm);
    /* The checkpoint's weights as mapped, less the MTP head's, which no
     * engine reads (no speculative decoding): never paged in. */
#define W(f) ((uint64_t)(cm.weights_bytes[f] - cm.mtp_weights_bytes[f]))
    rep->bytes[QC_MEM_W_BF16] = W(QC_FAM_BF16);
    rep->bytes[QC_MEM_W_FP8] = W(QC_FAM_FP8);
    rep->bytes[QC_MEM_W_INT4] = W(QC_FAM_INT4);
    rep->bytes[QC_MEM_W_NVFP4] = W(QC_FAM_NVFP4);
    rep->bytes[QC_MEM_W_OTHER] = W(QC_FAM_MXFP4);
#undef W
    if (m->be && m->be->mem)
        m->be->mem(m, s, rep);
#ifdef QC_HAVE_CUDA
    if (m->be == &qc_cuda_backend)
        return; /* device memory: the backend filled every category */
#endif
    /* Runtime: whatever else the process holds (tokenizer, f32 copies of the
     * small vectors, libraries), from its resident set less what is counted
     * above; the mapped weights count in full even where not yet paged in. */
    uint64_t rss = proc_kb("/proc/self/status", "VmRSS"), counted = 0;
    for (int i = 0; i < QC_MEM_RUNTIME; i++)
        counted += rep->bytes[i];
    uint64_t runtime = rss > counted ? rss - counted : 0;
    if (runtime < (uint64_t)m->host_bytes)
        runtime = (uint64_t)m->host_bytes;
    rep->bytes[QC_MEM_RUNTIME] = runtime;
    rep->total = proc_kb("/proc/meminfo", "MemTotal");
    rep->bytes[QC_MEM_FREE] = proc_kb("/proc/meminfo", "MemAvailable");
}
