/* worker.c — see worker.h. */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ckpt.h"
#include "config.h"
#include "reply.h"
#include "tokenizer.h"

#define PREFILL_CHUNK 128 /* tokens between stop checks and progress updates */

static void wake(worker *w)
{
    /* One pending byte is enough: the UI reads everything new when it wakes. */
    if (!atomic_exchange(&w->wake_pending, true)) {
        char b = 1;
        ssize_t r = write(w->wake_fd[1], &b, 1);
        (void)r;
    }
}

void worker_drain_wake(worker *w)
{
    char buf[64];
    atomic_store(&w->wake_pending, false);
    while (read(w->wake_fd[0], buf, sizeof buf) > 0) {
    }
}

void worker_job_free(worker_job *job)
{
    if (job->kind == WJOB_GENERATE)
        qc_chat_free(&job->chat);
    free(job->ids);
    memset(job, 0, sizeof *job);
}

/* Dominant weight family of a checkpoint, the way the engine names it: the
 * family holding most Linear bytes of the decoder layers. */
static const char *ckpt_family(const qc_ckpt *ck)
{
    int64_t bytes[QC_FAM_COUNT] = {0};
    for (size_t i = 0; i < qc_ckpt_module_count(ck); i++) {
        const qc_module *mod = qc_ckpt_module_at(ck, i);
        if (mod->kind == QC_MOD_LM_HEAD || mod->mtp)
            continue;
        bytes[qc_format_to_family(mod->lin.format)] += mod->lin.bytes;
    }
    int best = QC_FAM_BF16;
    for (int f = 1; f < QC_FAM_COUNT; f++)
        if (bytes[f] > 0 && (best == QC_FAM_BF16 || bytes[f] > bytes[best]))
            best = f;
    return qc_family_name((qc_family)best);
}

int worker_add_ckpt(worker *w, const char *dir, qc_err *err)
{
    if (w->n_ck >= WORKER_MAX_CKPT)
        return qc_err_set(err, QC_EXIT_USAGE, "%s: at most %d checkpoints", dir, WORKER_MAX_CKPT);
    qc_ckpt *ck = NULL;
    int rc = qc_ckpt_open(dir, &ck, err);
    if (rc)
        return rc;
    worker_ckpt *c = &w->ck[w->n_ck];
    memset(c, 0, sizeof *c);
    c->dir = strdup(dir);
    if (!c->dir) {
        qc_ckpt_free(ck);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    }
    char fam[16];
    snprintf(fam, sizeof fam, "%s", ckpt_family(ck));
    memcpy(c->family, fam, sizeof fam);
    qc_ckpt_mem mem;
    qc_ckpt_memory(ck, 0, &mem);
    for (int f = 0; f < QC_FAM_COUNT; f++)
        c->weight_bytes += (uint64_t)mem.weights_bytes[f];
    qc_ckpt_free(ck);
    int same = 0;
    for (int i = 0; i < w->n_ck; i++)
        same += !strcmp(w->ck[i].family, c->family);
    char label[24];
    if (same)
        snprintf(label, sizeof label, "%.12s#%d", fam, (same + 1) % 100);
    else
        snprintf(label, sizeof label, "%s", fam);
    memcpy(c->label, label, sizeof label);
    size_t l = strlen(dir);
    while (l > 1 && dir[l - 1] == '/')
        l--;
    size_t b = l;
    while (b > 0 && dir[b - 1] != '/')
        b--;
    snprintf(c->name, sizeof c->name, "%.*s", (int)(l - b), dir + b);
    w->n_ck++;
    return 0;
}

int worker_find_ckpt(const worker *w, const char *spec)
{
    if (!spec || !*spec)
        return -1;
    char *end;
    long n = strtol(spec, &end, 10);
    if (!*end && n >= 1 && n <= w->n_ck)
        return (int)n - 1;
    for (int i = 0; i < w->n_ck; i++)
        if (!strcasecmp(w->ck[i].label, spec))
            return i;
    for (int i = 0; i < w->n_ck; i++)
        if (!strcasecmp(w->ck[i].family, spec))
            return i;
    char a[4096], b[4096];
    if (realpath(spec, a))
        for (int i = 0; i < w->n_ck; i++)
            if (realpath(w->ck[i].dir, b) && !strcmp(a, b))
                return i;
    return -1;
}

/* ---- memory ------------------------------------------------------------------- */

static void update_mem(worker *w)
{
    int a = w->live.active;
    if (!w->ck[a].model)
        return;
    qc_mem_report rep;
    qc_model_mem(w->ck[a].model, w->sess, &rep);
    /* Weights of the other resident checkpoints count too (their families). */
    for (int i = 0; i < w->n_ck; i++) {
        if (i == a || !w->ck[i].model)
            continue;
        qc_mem_report o;
        qc_model_mem(w->ck[i].model, NULL, &o);
        for (int k = QC_MEM_W_BF16; k <= QC_MEM_W_OTHER; k++)
            rep.bytes[k] += o.bytes[k];
    }
    pthread_mutex_lock(&w->mu);
    w->live.mem = rep;
    w->live.mem_valid = true;
    for (int i = 0; i < w->n_ck; i++)
        w->live.resident[i] = w->ck[i].model != NULL;
    w->live.ctx_len = w->sess ? qc_session_len(w->sess) : 0;
    pthread_mutex_unlock(&w->mu);
}

/* Evicts least-recently-used resident checkpoints other than `keep` and the
 * active one until the resident weights fit the budget (or, with force, one
 * at least). Returns how many were evicted. */
static int evict(worker *w, int keep, bool force)
{
    int evicted = 0;
    for (;;) {
        uint64_t total = 0;
        int lru = -1;
        for (int i = 0; i < w->n_ck; i++) {
            if (!w->ck[i].model)
                continue;
            total += w->ck[i].weight_bytes;
            if (i != keep && i != w->live.active && (lru < 0 || w->ck[i].last_used < w->ck[lru].last_used))
                lru = i;
        }
        if (lru < 0 || (!(force && evicted == 0) && total <= w->budget))
            return evicted;
        qc_model_free(w->ck[lru].model);
        w->ck[lru].model = NULL;
        evicted++;
    }
}

/* ---- engine events ----------------------------------------------------------- */

typedef struct prefill_ctx {
    worker *w;
    int base, total; /* tokens done before this call, tokens in the whole prefill */
} prefill_ctx;

static void on_event(void *user, const qc_event *ev)
{
    prefill_ctx *pc = user;
    if (!pc || ev->phase != QC_PHASE_PREFILL)
        return;
    worker *w = pc->w;
    pthread_mutex_lock(&w->mu);
    w->live.prefill_done = pc->base + ev->done;
    w->live.prefill_total = pc->total;
    pthread_mutex_unlock(&w->mu);
    wake(w);
}

static void set_phase(worker *w, worker_phase ph)
{
    pthread_mutex_lock(&w->mu);
    w->live.phase = ph;
    w->live.t_phase = qc_now();
    if (ph == WPH_PREFILL)
        w->live.prefill_done = 0;
    pthread_mutex_unlock(&w->mu);
    wake(w);
}

/* Prefills ids in chunks, reporting progress and honouring stop. Returns 0,
 * an error code, or -1 when stopped. */
static int prefill(worker *w, qc_session *s, const int32_t *ids, int n, qc_err *err)
{
    prefill_ctx pc = {w, 0, n};
    qc_session_set_events(s, on_event, &pc);
    pthread_mutex_lock(&w->mu);
    w->live.prefill_total = n;
    w->live.prefill_done = 0;
    pthread_mutex_unlock(&w->mu);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i += PREFILL_CHUNK) {
        if (atomic_load(&w->stop)) {
            rc = -1;
            break;
        }
        int k = n - i < PREFILL_CHUNK ? n - i : PREFILL_CHUNK;
        pc.base = i;
        rc = qc_session_prefill(s, ids + i, k, 0, NULL, err);
        pthread_mutex_lock(&w->mu);
        w->live.prefill_done = i + k;
        pthread_mutex_unlock(&w->mu);
        wake(w);
    }
    qc_session_set_events(s, NULL, NULL);
    return rc;
}

/* ---- jobs ---------------------------------------------------------------------- */

static int append(char **buf, size_t *n, size_t *cap, const char *s, size_t len)
{
    if (*n + len + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (*n + len + 1 > c)
            c *= 2;
        char *p = realloc(*buf, c);
        if (!p)
            return -1;
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *n, s, len);
    *n += len;
    (*buf)[*n] = 0;
    return 0;
}

static int job_generate(worker *w, worker_job *job, qc_err *err)
{
    qc_model *m = w->ck[w->live.active].model;
    const qc_tokenizer *tok = qc_model_tokenizer(m);
    const qc_config *cfg = qc_model_config(m);
    qc_chat_template tpl;
    int rc = qc_chat_template_detect(w->ck[w->live.active].dir, NULL, &tpl, err);
    if (rc)
        return rc;
    char *prompt = NULL;
    size_t plen = 0;
    rc = qc_chat_render(&tpl, &job->chat, true, job->think, &prompt, &plen, err);
    if (rc)
        return rc;
    bool in_reasoning = qc_chat_prompt_in_reasoning(prompt, plen);
    int32_t *ids = NULL;
    size_t nids = 0;
    rc = qc_tokenizer_encode(tok, prompt, plen, &ids, &nids, err);
    free(prompt);
    if (rc)
        return rc;
    /* Reuse the longest common prefix with what the session has seen. */
    int have = qc_session_len(w->sess);
    const int32_t *cur = qc_session_tokens(w->sess);
    int common = 0;
    while (common < have && common < (int)nids && cur[common] == ids[common])
        common++;
    if (common == (int)nids && common > 0)
        common--; /* at least one token must be fed to get fresh logits */
    set_phase(w, WPH_PREFILL);
    if (common < have) {
        if (common == 0)
            qc_session_reset(w->sess);
        else if ((rc = qc_session_rewind(w->sess, common, err)) != 0)
            goto out;
    }
    pthread_mutex_lock(&w->mu);
    w->live.n_prompt = (int)nids - common;
    pthread_mutex_unlock(&w->mu);
    rc = prefill(w, w->sess, ids + common, (int)nids - common, err);
    if (rc) {
        if (rc < 0) {
            pthread_mutex_lock(&w->mu);
            w->live.stopped = w->live.user_stopped = true;
            pthread_mutex_unlock(&w->mu);
            rc = 0;
        }
        goto out;
    }
    /* eos: generation_config.json's list, else config.json's. */
    int32_t eos[QC_REPLY_MAX_EOS];
    int n_eos = 0;
    const int *src = cfg->gen.n_eos ? cfg->gen.eos_ids : cfg->eos_ids;
    int nsrc = cfg->gen.n_eos ? cfg->gen.n_eos : cfg->n_eos;
    for (int i = 0; i < nsrc && n_eos < QC_REPLY_MAX_EOS; i++)
        eos[n_eos++] = src[i];
    qc_reply reply;
    rc = qc_reply_init(&reply, tok, eos, n_eos, in_reasoning, err);
    if (rc)
        goto out;
    qc_sampler *smp = NULL;
    rc = qc_sampler_new(&job->sp, qc_tokenizer_n_tokens(tok), &smp, err);
    if (rc) {
        qc_reply_free(&reply);
        goto out;
    }
    qc_model_info info;
    qc_model_get_info(m, &info);
    set_phase(w, WPH_DECODE);
    int n_gen = 0;
    double t_prev = qc_now(), t_mem = t_prev;
    for (;;) {
        int32_t id = qc_sampler_next(smp, qc_session_logits(w->sess), info.vocab_size);
        double t = qc_now();
        if (id < 0) {
            rc = qc_err_set(err, QC_EXIT_RUNTIME, "the model produced no finite logit");
            break;
        }
        qc_reply_piece piece;
        rc = qc_reply_feed(&reply, id, &piece, err);
        if (rc)
            break;
        n_gen++;
        bool limit = job->max_tokens > 0 && n_gen >= job->max_tokens;
        bool stop = atomic_load(&w->stop);
        qc_reply_piece tail = {0};
        if (!piece.end && (limit || stop))
            qc_reply_finish(&reply, &tail, err);
        pthread_mutex_lock(&w->mu);
        worker_live *L = &w->live;
        if (L->n_gen == 0 && L->t_first == 0)
            L->t_first = t;
        else if (L->n_itl < WORKER_MAX_ITL)
            L->itl_ms[L->n_itl++] = (t - t_prev) * 1e3;
        L->t_last = t;
        L->gen_ids[L->n_gen % 256] = id;
        L->n_gen++;
        for (int pi = 0; pi < 2; pi++) {
            const qc_reply_piece *p = pi ? &tail : &piece;
            if (p->kind == QC_REPLY_REASONING && p->len)
                append(&L->reasoning, &L->n_reasoning_b, &L->cap_reasoning, p->text, p->len);
            else if (p->kind == QC_REPLY_ANSWER && p->len)
                append(&L->answer, &L->n_answer_b, &L->cap_answer, p->text, p->len);
        }
        L->n_reasoning = reply.n_reasoning;
        L->n_answer = reply.n_answer;
        if (piece.end)
            L->ended_eos = true;
        else if (limit || stop) {
            L->stopped = true;
            L->user_stopped = stop;
        }
        pthread_mutex_unlock(&w->mu);
        wake(w);
        t_prev = t;
        if (piece.end || limit || stop)
            break;
        /* The eos is not fed: the next turn's prompt closes the reply. */
        rc = qc_session_step(w->sess, id, err);
        if (rc)
            break;
        if (qc_now() - t_mem > 0.5) {
            update_mem(w);
            t_mem = qc_now();
        }
    }
    qc_sampler_free(smp);
    qc_reply_free(&reply);
out:
    free(ids);
    return rc;
}

static int job_swap(worker *w, int target, qc_err *err)
{
    worker_ckpt *c = &w->ck[target];
    if (target == w->live.active)
        return 0;
    if (!c->model) {
        pthread_mutex_lock(&w->mu);
        snprintf(w->live.loading_label, sizeof w->live.loading_label, "%s", c->label);
        pthread_mutex_unlock(&w->mu);
        set_phase(w, WPH_LOADING);
        /* Make room first when the budget is already exceeded with it. */
        uint64_t total = c->weight_bytes;
        for (int i = 0; i < w->n_ck; i++)
            if (w->ck[i].model)
                total += w->ck[i].weight_bytes;
        if (total > w->budget)
            evict(w, -1, false);
        int rc = qc_model_load(c->dir, &w->lopts, &c->model, err);
        /* Out of memory with others resident: evict the LRU one and retry once. */
        if (rc == QC_EXIT_RUNTIME && evict(w, -1, true) > 0)
            rc = qc_model_load(c->dir, &w->lopts, &c->model, err);
        if (rc) {
            c->model = NULL;
            return rc;
        }
    }
    qc_session *ns = NULL;
    int rc = qc_session_new(c->model, w->max_ctx, &ns, err);
    if (rc)
        return rc;
    /* The token history moves as is when the tokenizers agree in size;
     * ids outside the new vocabulary make the swap fail cleanly. */
    int n = qc_session_len(w->sess);
    const int32_t *ids = qc_session_tokens(w->sess);
    int ntok = qc_tokenizer_n_tokens(qc_model_tokenizer(c->model));
    for (int i = 0; i < n; i++)
        if (ids[i] >= ntok) {
            qc_session_free(ns);
            return qc_err_set(err, QC_EXIT_USAGE, "%s: its tokenizer has %d ids, the conversation uses id %d",
                              c->dir, ntok, ids[i]);
        }
    set_phase(w, WPH_PREFILL);
    rc = prefill(w, ns, ids, n, err);
    if (rc) {
        qc_session_free(ns);
        if (rc < 0)
            return qc_err_set(err, QC_EXIT_RUNTIME, "swap to %s stopped; still on %s", c->label,
                              w->ck[w->live.active].label);
        return rc;
    }
    qc_session_free(w->sess);
    w->sess = ns;
    pthread_mutex_lock(&w->mu);
    w->live.active = target;
    pthread_mutex_unlock(&w->mu);
    c->last_used = qc_now();
    evict(w, target, false);
    return 0;
}

static int job_rebuild(worker *w, const int32_t *ids, int n, qc_err *err)
{
    qc_model *m = w->ck[w->live.active].model;
    int ntok = qc_tokenizer_n_tokens(qc_model_tokenizer(m));
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= ntok)
            return qc_err_set(err, QC_EXIT_USAGE, "token %d at position %d is outside this model's %d ids",
                              ids[i], i, ntok);
    qc_session *ns = NULL;
    int rc = qc_session_new(m, w->max_ctx, &ns, err);
    if (rc)
        return rc;
    set_phase(w, WPH_PREFILL);
    rc = prefill(w, ns, ids, n, err);
    if (rc) {
        qc_session_free(ns);
        return rc < 0 ? qc_err_set(err, QC_EXIT_RUNTIME, "load stopped; conversation unchanged") : rc;
    }
    qc_session_free(w->sess);
    w->sess = ns;
    return 0;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->quit && w->job.kind == WJOB_NONE)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->quit) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        worker_job job = w->job;
        memset(&w->job, 0, sizeof w->job);
        worker_live *L = &w->live;
        L->job = job.kind;
        if (job.kind == WJOB_GENERATE) {
            L->n_reasoning_b = L->n_answer_b = 0;
            if (L->reasoning)
                L->reasoning[0] = 0;
            if (L->answer)
                L->answer[0] = 0;
            L->n_reasoning = L->n_answer = L->n_itl = L->n_gen = L->n_prompt = 0;
            L->t_submit = qc_now();
            L->t_first = L->t_last = 0;
            L->stopped = L->user_stopped = L->ended_eos = false;
            snprintf(L->reply_format, sizeof L->reply_format, "%s", w->ck[L->active].label);
        }
        pthread_mutex_unlock(&w->mu);

        qc_err err = {0};
        int rc = 0;
        switch (job.kind) {
        case WJOB_GENERATE:
            rc = job_generate(w, &job, &err);
            break;
        case WJOB_SWAP:
            rc = job_swap(w, job.target, &err);
            break;
        case WJOB_REBUILD:
            rc = job_rebuild(w, job.ids, job.n_ids, &err);
            break;
        case WJOB_RESET:
            qc_session_reset(w->sess);
            break;
        default:
            break;
        }
        worker_job_free(&job);
        update_mem(w);
        int n = qc_session_len(w->sess);
        int32_t *hist = malloc((size_t)(n ? n : 1) * sizeof *hist);
        if (hist && n)
            memcpy(hist, qc_session_tokens(w->sess), (size_t)n * sizeof *hist);
        pthread_mutex_lock(&w->mu);
        L->phase = WPH_IDLE;
        L->done_kind = L->job;
        L->done_rc = rc;
        snprintf(L->done_msg, sizeof L->done_msg, "%s", rc ? err.msg : "");
        free(L->history);
        L->history = hist;
        L->n_history = hist ? n : 0;
        L->busy = false;
        L->done_seq++;
        atomic_store(&w->stop, false);
        pthread_mutex_unlock(&w->mu);
        wake(w);
    }
    return NULL;
}

int worker_start(worker *w, int first, const qc_load_opts *lo, int max_ctx, uint64_t budget,
                 qc_err *err)
{
    w->lopts = *lo;
    w->max_ctx = max_ctx;
    w->budget = budget;
    if (pipe(w->wake_fd) != 0)
        return qc_err_set(err, QC_EXIT_RUNTIME, "pipe: %s", strerror(errno));
    for (int i = 0; i < 2; i++)
        fcntl(w->wake_fd[i], F_SETFL, fcntl(w->wake_fd[i], F_GETFL) | O_NONBLOCK);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->started_sync = true;
    int rc = qc_model_load(w->ck[first].dir, &w->lopts, &w->ck[first].model, err);
    if (rc)
        return rc;
    w->ck[first].last_used = qc_now();
    rc = qc_session_new(w->ck[first].model, max_ctx, &w->sess, err);
    if (rc)
        return rc;
    w->live.active = first;
    update_mem(w);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return qc_err_set(err, QC_EXIT_RUNTIME, "cannot start the engine thread");
    w->started = true;
    return 0;
}

bool worker_submit(worker *w, worker_job *job)
{
    pthread_mutex_lock(&w->mu);
    if (w->live.busy || w->job.kind != WJOB_NONE) {
        pthread_mutex_unlock(&w->mu);
        worker_job_free(job);
        return false;
    }
    atomic_store(&w->stop, false);
    w->job = *job;
    memset(job, 0, sizeof *job);
    w->live.busy = true;
    w->live.job = w->job.kind;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return true;
}

void worker_request_stop(worker *w) { atomic_store(&w->stop, true); }

void worker_shutdown(worker *w)
{
    if (w->started) {
        atomic_store(&w->stop, true);
        pthread_mutex_lock(&w->mu);
        w->quit = true;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
        w->started = false;
    }
    if (w->started_sync) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        w->started_sync = false;
    }
    worker_job_free(&w->job);
    if (w->sess)
        qc_session_free(w->sess);
    w->sess = NULL;
    for (int i = 0; i < w->n_ck; i++) {
        if (w->ck[i].model)
            qc_model_free(w->ck[i].model);
        free(w->ck[i].dir);
    }
    w->n_ck = 0;
    free(w->live.reasoning);
    free(w->live.answer);
    free(w->live.history);
    if (w->wake_fd[0] > 0 || w->wake_fd[1] > 0) {
        close(w->wake_fd[0]);
        close(w->wake_fd[1]);
    }
}
