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

void worker_wake(worker *w)
{
    /* One pending byte is enough: the UI reads everything new when it wakes.
     * wake_pending true means "a byte is in the pipe or about to be". */
    if (!atomic_exchange(&w->wake_pending, true)) {
        char b = 1;
        ssize_t r = write(w->wake_fd[1], &b, 1);
        (void)r;
    }
}

void worker_drain_wake(worker *w)
{
    /* Empty the pipe first, clear the flag second. The other order loses
     * wakeups for good: a worker_wake() between the clear and the read sets
     * the flag and writes a byte, the read swallows that byte, and the flag
     * stays set over an empty pipe, so every later wake skips its write and
     * the UI never polls awake again (a reply frozen after its first token).
     * In this order a wake that finds the flag still set has published its
     * data before the caller takes the mutex, so nothing is missed. */
    char buf[64];
    while (read(w->wake_fd[0], buf, sizeof buf) > 0) {
    }
    atomic_store(&w->wake_pending, false);
}

void worker_job_free(worker_job *job)
{
    if (job->kind == WJOB_GENERATE || job->kind == WJOB_COMPARE)
        qc_chat_free(&job->chat);
    free(job->ids);
    memset(job, 0, sizeof *job);
}

void worker_init_sync(worker *w)
{
    if (w->started_sync)
        return;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->started_sync = true;
}

int worker_ckpt_count(worker *w)
{
    /* Before worker_init_sync there is no other thread to race with. */
    if (!w->started_sync)
        return w->n_ck;
    pthread_mutex_lock(&w->mu);
    int n = w->n_ck;
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* The slow half of worker_add_ckpt: reads the checkpoint's config and
 * tensor headers into *c (label left empty). Touches nothing shared, so it
 * runs without the mutex. */
static int describe_ckpt(const char *dir, worker_ckpt *c, qc_err *err)
{
    qc_ckpt *ck = NULL;
    int rc = qc_ckpt_open(dir, &ck, err);
    if (rc)
        return rc;
    memset(c, 0, sizeof *c);
    c->dir = strdup(dir);
    if (!c->dir) {
        qc_ckpt_free(ck);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory");
    }
    snprintf(c->family, sizeof c->family, "%s", qc_ckpt_dominant_family(ck));
    qc_ckpt_mem mem;
    qc_ckpt_memory(ck, 0, &mem);
    for (int f = 0; f < QC_FAM_COUNT; f++) /* (the MTP head is not loaded) */
        c->weight_bytes += (uint64_t)(mem.weights_bytes[f] - mem.mtp_weights_bytes[f]);
    qc_ckpt_free(ck);
    size_t l = strlen(dir);
    while (l > 1 && dir[l - 1] == '/')
        l--;
    size_t b = l;
    while (b > 0 && dir[b - 1] != '/')
        b--;
    snprintf(c->name, sizeof c->name, "%.*s", (int)(l - b), dir + b);
    return 0;
}

int worker_add_ckpt(worker *w, const char *dir, qc_err *err)
{
    /* Only the adding (UI) thread writes n_ck, so this early read needs no
     * lock; it spares a disk read when the list is already full. */
    if (w->n_ck >= WORKER_MAX_CKPT)
        return qc_err_set(err, QC_EXIT_USAGE, "%s: at most %d checkpoints", dir, WORKER_MAX_CKPT);
    worker_ckpt c;
    int rc = describe_ckpt(dir, &c, err);
    if (rc)
        return rc;
    /* Publish: fill the slot past n_ck, then count it, both under the mutex,
     * so a worker that reads n_ck under the mutex sees a complete entry. The
     * array never moves, and entries below n_ck are never rewritten here. */
    bool locked = w->started_sync;
    if (locked)
        pthread_mutex_lock(&w->mu);
    if (w->n_ck >= WORKER_MAX_CKPT) {
        if (locked)
            pthread_mutex_unlock(&w->mu);
        free(c.dir);
        return qc_err_set(err, QC_EXIT_USAGE, "%s: at most %d checkpoints", dir, WORKER_MAX_CKPT);
    }
    int same = 0;
    for (int i = 0; i < w->n_ck; i++)
        same += !strcmp(w->ck[i].family, c.family);
    if (same)
        snprintf(c.label, sizeof c.label, "%.12s#%d", c.family, (same + 1) % 100);
    else
        snprintf(c.label, sizeof c.label, "%s", c.family);
    w->ck[w->n_ck] = c;
    w->n_ck++;
    if (locked)
        pthread_mutex_unlock(&w->mu);
    return 0;
}

bool worker_drop_last_ckpt(worker *w, int idx)
{
    if (idx != w->n_ck - 1 || idx <= 0 || w->ck[idx].model)
        return false;
    bool locked = w->started_sync;
    if (locked)
        pthread_mutex_lock(&w->mu);
    w->n_ck--;
    free(w->ck[idx].dir);
    memset(&w->ck[idx], 0, sizeof w->ck[idx]);
    if (locked)
        pthread_mutex_unlock(&w->mu);
    return true;
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

void worker_mem_add_model(qc_mem_report *rep, const qc_mem_report *other)
{
    uint64_t theirs = 0;
    for (int k = 0; k < QC_MEM_RUNTIME; k++) {
        rep->bytes[k] += other->bytes[k];
        theirs += other->bytes[k];
    }
    rep->bytes[QC_MEM_RUNTIME] = rep->bytes[QC_MEM_RUNTIME] > theirs ? rep->bytes[QC_MEM_RUNTIME] - theirs : 0;
}

static void update_mem(worker *w)
{
    int a = w->live.active;
    if (!w->ck[a].model)
        return;
    qc_mem_report rep;
    qc_model_mem(w->ck[a].model, w->sess, &rep);
    /* The other resident checkpoints count too: their weights by family, and
     * the live-drift session with its model. The active model's RUNTIME is
     * all it does not count itself (qchat.h), so what they count comes out
     * of it. The UI thread may append checkpoints meanwhile: count them
     * under mu. */
    int n_ck = worker_ckpt_count(w);
    for (int i = 0; i < n_ck; i++) {
        if (i == a || !w->ck[i].model)
            continue;
        qc_mem_report o;
        qc_model_mem(w->ck[i].model, w->ref_sess && w->ref_sess_ck == i ? w->ref_sess : NULL, &o);
        worker_mem_add_model(&rep, &o);
    }
    if (w->ref_sess && w->ref_sess_ck == a) {
        /* A drift session left on what is now the active model (after a
         * swap): its own bytes, the model's report with it less without. */
        qc_mem_report with, without, sess;
        qc_model_mem(w->ck[a].model, w->ref_sess, &with);
        qc_model_mem(w->ck[a].model, NULL, &without);
        memset(&sess, 0, sizeof sess);
        for (int k = QC_MEM_KV; k < QC_MEM_RUNTIME; k++)
            sess.bytes[k] = with.bytes[k] > without.bytes[k] ? with.bytes[k] - without.bytes[k] : 0;
        worker_mem_add_model(&rep, &sess);
    }
    pthread_mutex_lock(&w->mu);
    w->live.mem = rep;
    w->live.mem_valid = true;
    for (int i = 0; i < n_ck; i++)
        w->live.resident[i] = w->ck[i].model != NULL;
    w->live.ctx_len = w->sess ? qc_session_len(w->sess) : 0;
    pthread_mutex_unlock(&w->mu);
}

/* Evicts least-recently-used resident checkpoints other than `keep`, `keep2`
 * and the active one until the resident weights fit the budget (or, with
 * force, one at least). Returns how many were evicted. */
static int evict(worker *w, int keep, int keep2, bool force)
{
    int evicted = 0;
    int n_ck = worker_ckpt_count(w); /* ones added meanwhile are not resident */
    for (;;) {
        uint64_t total = 0;
        int lru = -1;
        for (int i = 0; i < n_ck; i++) {
            if (!w->ck[i].model)
                continue;
            total += w->ck[i].weight_bytes;
            if (i != keep && i != keep2 && i != w->live.active &&
                (lru < 0 || w->ck[i].last_used < w->ck[lru].last_used))
                lru = i;
        }
        if (lru < 0 || (!(force && evicted == 0) && total <= w->budget))
            return evicted;
        if (w->ref_sess && w->ref_sess_ck == lru) {
            /* The live-drift session lives on that model: it goes first. */
            qc_session_free(w->ref_sess);
            w->ref_sess = NULL;
            w->ref_sess_ck = -1;
        }
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
    worker_wake(w);
}

static void set_phase(worker *w, worker_phase ph)
{
    pthread_mutex_lock(&w->mu);
    w->live.phase = ph;
    w->live.t_phase = qc_now();
    if (ph == WPH_PREFILL)
        w->live.prefill_done = 0;
    pthread_mutex_unlock(&w->mu);
    worker_wake(w);
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
        worker_wake(w);
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

static int ensure_resident(worker *w, int idx, int keep2, qc_err *err);

/* The eos ids: generation_config.json's list, else config.json's. */
static int eos_ids(const qc_config *cfg, int32_t *eos)
{
    int n_eos = 0;
    const int *src = cfg->gen.n_eos ? cfg->gen.eos_ids : cfg->eos_ids;
    int nsrc = cfg->gen.n_eos ? cfg->gen.n_eos : cfg->n_eos;
    for (int i = 0; i < nsrc && n_eos < QC_REPLY_MAX_EOS; i++)
        eos[n_eos++] = src[i];
    return n_eos;
}

/* Renders the chat with a generation prompt for checkpoint ck and encodes it. */
static int encode_prompt(worker *w, int ck, const worker_job *job, int32_t **ids, size_t *nids, bool *in_reasoning,
                         qc_err *err)
{
    qc_chat_template tpl;
    int rc = qc_chat_template_detect(w->ck[ck].dir, NULL, &tpl, err);
    if (rc)
        return rc;
    char *prompt = NULL;
    size_t plen = 0;
    rc = qc_chat_render(&tpl, &job->chat, true, job->think, &prompt, &plen, err);
    if (rc)
        return rc;
    *in_reasoning = qc_chat_prompt_in_reasoning(prompt, plen);
    rc = qc_tokenizer_encode(qc_model_tokenizer(w->ck[ck].model), prompt, plen, ids, nids, err);
    free(prompt);
    return rc;
}

/* Brings session s to exactly ids[0..n), feeding only what follows when it
 * holds a prefix of ids, else starting over. Leaves at least one token to
 * feed when fresh logits are wanted (keep_one), as a prompt needs. *fed:
 * the tokens prefilled. Returns like prefill(). */
static int sync_session(worker *w, qc_session *s, const int32_t *ids, int n, bool keep_one, int *fed, qc_err *err)
{
    int have = qc_session_len(s);
    const int32_t *cur = qc_session_tokens(s);
    int common = 0;
    while (common < have && common < n && cur[common] == ids[common])
        common++;
    if (keep_one && common == n && common > 0)
        common--;
    if (common < have) {
        /* Going back means starting over: the GDN recurrence cannot run
         * backwards, so a rewind would replay the kept prefix anyway; here
         * the replay shows its progress and counts as prefilled. */
        qc_session_reset(s);
        common = 0;
    }
    if (fed)
        *fed = n - common;
    return prefill(w, s, ids + common, n - common, err);
}

/* Live drift: makes the reference resident and its session hold the same
 * prompt. On failure turns live drift off with the reason in live.drift.msg
 * (the reply itself goes on). Returns whether live drift runs. */
static bool live_drift_begin(worker *w, int ref, const int32_t *ids, int n)
{
    qc_err e = {0};
    int act = w->live.active;
    int rc = ensure_resident(w, ref, act, &e);
    if (!rc && w->ref_sess && w->ref_sess_ck != ref) {
        qc_session_free(w->ref_sess);
        w->ref_sess = NULL;
    }
    if (!rc && !w->ref_sess) {
        rc = qc_session_new(w->ck[ref].model, w->max_ctx, &w->ref_sess, &e);
        w->ref_sess_ck = rc ? -1 : ref;
    }
    int nt_ref = rc ? 0 : qc_tokenizer_n_tokens(qc_model_tokenizer(w->ck[ref].model));
    int nt_act = qc_tokenizer_n_tokens(qc_model_tokenizer(w->ck[act].model));
    if (!rc && nt_ref != nt_act)
        rc = qc_err_set(&e, QC_EXIT_USAGE, "%s has %d token ids, %s has %d", w->ck[ref].label, nt_ref,
                        w->ck[act].label, nt_act);
    if (!rc)
        rc = sync_session(w, w->ref_sess, ids, n, true, NULL, &e);
    pthread_mutex_lock(&w->mu);
    worker_drift *d = &w->live.drift;
    memset(d, 0, sizeof *d);
    drift_stats_init(&d->st);
    if (rc) {
        snprintf(d->msg, sizeof d->msg, "live drift off: %.200s", rc < 0 ? "stopped" : e.msg);
        w->drift_live_ref = -1;
    } else {
        d->valid = d->live = true;
        snprintf(d->ref_label, sizeof d->ref_label, "%s", w->ck[ref].label);
        snprintf(d->act_label, sizeof d->act_label, "%s", w->ck[act].label);
        d->from = n;
    }
    pthread_mutex_unlock(&w->mu);
    if (rc && w->ref_sess) {
        qc_session_free(w->ref_sess);
        w->ref_sess = NULL;
        w->ref_sess_ck = -1;
    }
    return rc == 0;
}

/* Appends one id to the record of the last reply. */
static void record_id(worker *w, int *cap, int32_t id)
{
    if (!w->last_ids)
        return;
    if (w->n_last_ids == *cap) {
        int32_t *p = realloc(w->last_ids, (size_t)*cap * 2 * sizeof *p);
        if (!p) {
            free(w->last_ids);
            w->last_ids = NULL;
            w->n_last_ids = 0;
            return;
        }
        w->last_ids = p;
        *cap *= 2;
    }
    w->last_ids[w->n_last_ids++] = id;
}

static void forget_last_reply(worker *w)
{
    free(w->last_ids);
    w->last_ids = NULL;
    w->n_last_ids = w->last_from = 0;
    w->last_ck = -1;
}

/* A prompt of n tokens leaves the reply room in the context (a prompt that
 * fills it could give one token and no more): else a usage error with both
 * sizes and the way out. The same for a reply and a /compare column. */
static int prompt_fits(const worker *w, size_t n, qc_err *err)
{
    if (w->max_ctx <= 0 || (int64_t)n < w->max_ctx)
        return 0;
    return qc_err_set(err, QC_EXIT_USAGE,
                      "the conversation with this prompt is %zu tokens, the context %d: /clear starts over, --ctx N "
                      "sets a larger context",
                      n, w->max_ctx);
}

static int job_generate(worker *w, worker_job *job, qc_err *err)
{
    int act = w->live.active;
    qc_model *m = w->ck[act].model;
    const qc_tokenizer *tok = qc_model_tokenizer(m);
    const qc_config *cfg = qc_model_config(m);
    int32_t *ids = NULL;
    size_t nids = 0;
    bool in_reasoning = false;
    int rc = encode_prompt(w, act, job, &ids, &nids, &in_reasoning, err);
    if (rc)
        return rc;
    if ((rc = prompt_fits(w, nids, err)) != 0) {
        free(ids);
        pthread_mutex_lock(&w->mu);
        w->live.refused = true; /* (the UI takes the prompt back: no reply turn) */
        pthread_mutex_unlock(&w->mu);
        return rc;
    }
    forget_last_reply(w);
    set_phase(w, WPH_PREFILL);
    int fed = 0;
    rc = sync_session(w, w->sess, ids, (int)nids, true, &fed, err);
    pthread_mutex_lock(&w->mu);
    w->live.n_prompt = fed;
    int dref = w->drift_live_ref;
    pthread_mutex_unlock(&w->mu);
    if (rc) {
        if (rc < 0) {
            pthread_mutex_lock(&w->mu);
            w->live.stopped = w->live.user_stopped = true;
            pthread_mutex_unlock(&w->mu);
            rc = 0;
        }
        goto out;
    }
    /* Live drift's work on the reference (its prefill, its steps, the KL
     * of each row) is not the active format's: its time comes off every
     * timestamp of the reply, so TTFT, tok/s and ITL stay the format's. */
    double drift_s = 0;
    bool drift = false;
    if (dref >= 0 && dref != act && dref < worker_ckpt_count(w)) {
        double t0 = qc_now(); /* (a start that fails has loaded or evicted too) */
        drift = live_drift_begin(w, dref, ids, (int)nids);
        drift_s = qc_now() - t0;
    }
    drift_stats ds;
    drift_stats_init(&ds);
    int32_t eos[QC_REPLY_MAX_EOS];
    int n_eos = eos_ids(cfg, eos);
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
    /* The record for /drift: the prompt, then every sampled id. */
    int cap = (int)nids + 256;
    w->last_ids = malloc((size_t)cap * sizeof *w->last_ids);
    if (w->last_ids) {
        memcpy(w->last_ids, ids, nids * sizeof *ids);
        w->n_last_ids = (int)nids;
        w->last_from = (int)nids;
        w->last_ck = act;
    }
    qc_model_info info;
    qc_model_get_info(m, &info);
    set_phase(w, WPH_DECODE);
    int n_gen = 0;
    double t_prev = qc_now() - drift_s, t_mem = qc_now();
    for (;;) {
        /* Only drift needs the row itself; sampling alone stays on the device. */
        const double td = drift ? qc_now() : 0;
        const float *lg = drift ? qc_session_logits(w->sess) : NULL;
        if (drift) {
            /* The reference's view of this very position, before sampling. */
            int had = ds.first_div;
            drift_stats_add(&ds, qc_session_logits(w->ref_sess), lg, info.n_tokens, (int)nids + n_gen);
            char tr[48] = "", ta[48] = "";
            if (had < 0 && ds.first_div >= 0) {
                drift_token_text(tok, ds.first_ref, tr, sizeof tr);
                drift_token_text(tok, ds.first_act, ta, sizeof ta);
            }
            pthread_mutex_lock(&w->mu);
            w->live.drift.st = ds;
            w->live.drift.n_reply = n_gen + 1;
            if (tr[0]) {
                memcpy(w->live.drift.first_ref_text, tr, sizeof tr);
                memcpy(w->live.drift.first_act_text, ta, sizeof ta);
            }
            pthread_mutex_unlock(&w->mu);
            drift_s += qc_now() - td;
        }
        int32_t id = -1; /* (with drift the row is on the host by now: sampled there, refused if not finite) */
        if ((rc = qc_session_sample(w->sess, smp, &id, err)) != 0)
            break;
        double t = qc_now() - drift_s;
        if (id < 0) {
            rc = qc_err_set(err, QC_EXIT_RUNTIME, "the model produced no finite logit");
            break;
        }
        record_id(w, &cap, id);
        qc_reply_piece piece;
        rc = qc_reply_feed(&reply, id, &piece, err);
        if (rc)
            break;
        n_gen++;
        bool limit = job->max_tokens > 0 && n_gen >= job->max_tokens;
        bool stop = atomic_load(&w->stop);
        /* A context with no room for this token ends the reply like the
         * token limit, kept, instead of failing the step. */
        bool full = !limit && !stop && w->max_ctx > 0 && qc_session_len(w->sess) >= w->max_ctx;
        qc_reply_piece tail = {0};
        if (!piece.end && (limit || stop || full))
            qc_reply_finish(&reply, &tail, err);
        pthread_mutex_lock(&w->mu);
        worker_live *L = &w->live;
        if (L->n_gen == 0 && L->t_first == 0)
            L->t_first = t;
        else if (L->n_itl < WORKER_MAX_ITL)
            L->itl_ms[L->n_itl++] = (t - t_prev) * 1e3;
        L->t_last = t;
        L->t_shift = drift_s;
        L->gen_ids[L->n_gen % 256] = id;
        L->n_gen++;
        for (int pi = 0; pi < 2; pi++) {
            const qc_reply_piece *p = pi ? &tail : &piece;
            if (p->kind == QC_REPLY_REASONING && p->len)
                append(&L->reasoning, &L->n_reasoning_b, &L->cap_reasoning, p->text, p->len);
            else if (p->kind == QC_REPLY_ANSWER && p->len)
                append(&L->answer, &L->n_answer_b, &L->cap_answer, p->text, p->len);
        }
        if (reply.n_reasoning > L->n_reasoning)
            L->t_reason_end = t;
        L->n_reasoning = reply.n_reasoning;
        L->n_answer = reply.n_answer;
        if (piece.end)
            L->ended_eos = true;
        else if (limit || stop || full) {
            L->stopped = true;
            L->user_stopped = stop;
            L->ctx_full = full;
        }
        pthread_mutex_unlock(&w->mu);
        worker_wake(w);
        t_prev = t;
        if (piece.end || limit || stop || full)
            break;
        /* The eos is not fed: the next turn's prompt closes the reply. */
        rc = qc_session_step(w->sess, id, err);
        if (rc)
            break;
        if (drift) {
            qc_err e2 = {0};
            double ts = qc_now();
            int rs = qc_session_step(w->ref_sess, id, &e2);
            drift_s += qc_now() - ts;
            if (rs != 0) {
                drift = false;
                pthread_mutex_lock(&w->mu);
                snprintf(w->live.drift.msg, sizeof w->live.drift.msg, "live drift stopped: %.200s", e2.msg);
                pthread_mutex_unlock(&w->mu);
            }
        }
        if (qc_now() - t_mem > 0.5) {
            update_mem(w);
            t_mem = qc_now();
        }
    }
    qc_sampler_free(smp);
    qc_reply_free(&reply);
    if (rc || n_gen == 0)
        forget_last_reply(w);
out:
    free(ids);
    return rc;
}

/* Loads checkpoint idx unless it is resident, evicting least recently used
 * others (never the active one, nor keep2) to stay within the budget. */
static int ensure_resident(worker *w, int idx, int keep2, qc_err *err)
{
    worker_ckpt *c = &w->ck[idx];
    if (c->model)
        return 0;
    pthread_mutex_lock(&w->mu);
    snprintf(w->live.loading_label, sizeof w->live.loading_label, "%s", c->label);
    pthread_mutex_unlock(&w->mu);
    set_phase(w, WPH_LOADING);
    /* Make room first when the budget is already exceeded with it. */
    uint64_t total = c->weight_bytes;
    int n_ck = worker_ckpt_count(w);
    for (int i = 0; i < n_ck; i++)
        if (w->ck[i].model)
            total += w->ck[i].weight_bytes;
    if (total > w->budget)
        evict(w, -1, keep2, false);
    int rc = qc_model_load(c->dir, &w->lopts, &c->model, err);
    /* Out of memory with others resident: evict the LRU one and retry once. */
    if (rc == QC_EXIT_RUNTIME && evict(w, -1, keep2, true) > 0)
        rc = qc_model_load(c->dir, &w->lopts, &c->model, err);
    if (rc) {
        c->model = NULL;
        return rc;
    }
    c->last_used = qc_now();
    return 0;
}

static int job_swap(worker *w, int target, qc_err *err)
{
    worker_ckpt *c = &w->ck[target];
    if (target == w->live.active)
        return 0;
    int rc = ensure_resident(w, target, -1, err);
    if (rc)
        return rc;
    qc_session *ns = NULL;
    rc = qc_session_new(c->model, w->max_ctx, &ns, err);
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
    evict(w, target, -1, false);
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

/* Bytes of one model and its session as if it were alone: weights (shared
 * tensors included, whoever is charged for them), KV, state, scratch; not
 * the process's runtime, other processes' or free memory, which are the
 * device's (they made every /compare column read as the whole GPU). */
static uint64_t mem_in_use(const qc_model *m, const qc_session *s)
{
    qc_mem_report rep;
    qc_model_mem(m, s, &rep);
    uint64_t b = rep.borrowed;
    for (int k = 0; k < QC_MEM_RUNTIME; k++)
        b += rep.bytes[k];
    return b;
}

/* One /compare column: the prompt on checkpoint ck in a scratch session,
 * streaming into live.cmp[c]. Returns 0, an error, or -1 when stopped. */
static int compare_column(worker *w, const worker_job *job, int c, qc_err *err)
{
    int ck = job->targets[c];
    worker_cmp_col *col = &w->live.cmp[c];
    pthread_mutex_lock(&w->mu);
    col->state = WCMP_RUNNING;
    pthread_mutex_unlock(&w->mu);
    worker_wake(w);
    int rc = ensure_resident(w, ck, -1, err);
    if (rc)
        return rc;
    qc_model *m = w->ck[ck].model;
    w->ck[ck].last_used = qc_now();
    const qc_tokenizer *tok = qc_model_tokenizer(m);
    qc_session *s = NULL;
    int32_t *ids = NULL;
    size_t nids = 0;
    bool in_reasoning = false;
    qc_sampler *smp = NULL;
    qc_reply reply;
    bool have_reply = false;
    double t0 = qc_now();
    pthread_mutex_lock(&w->mu);
    col->t_start = t0;
    pthread_mutex_unlock(&w->mu);
    if ((rc = encode_prompt(w, ck, job, &ids, &nids, &in_reasoning, err)) != 0 ||
        (rc = prompt_fits(w, nids, err)) != 0 || (rc = qc_session_new(m, w->max_ctx, &s, err)) != 0)
        goto out;
    pthread_mutex_lock(&w->mu);
    col->n_prompt = (int)nids;
    pthread_mutex_unlock(&w->mu);
    set_phase(w, WPH_PREFILL);
    if ((rc = prefill(w, s, ids, (int)nids, err)) != 0)
        goto out;
    int32_t eos[QC_REPLY_MAX_EOS];
    int n_eos = eos_ids(qc_model_config(m), eos);
    if ((rc = qc_reply_init(&reply, tok, eos, n_eos, in_reasoning, err)) != 0)
        goto out;
    have_reply = true;
    if ((rc = qc_sampler_new(&job->sp, qc_tokenizer_n_tokens(tok), &smp, err)) != 0)
        goto out;
    qc_model_info info;
    qc_model_get_info(m, &info);
    set_phase(w, WPH_DECODE);
    uint64_t peak = mem_in_use(m, s);
    double t_mem = qc_now();
    for (int n_gen = 1;; n_gen++) {
        int32_t id = -1;
        if ((rc = qc_session_sample(s, smp, &id, err)) != 0)
            break;
        double t = qc_now();
        if (id < 0) {
            rc = qc_err_set(err, QC_EXIT_RUNTIME, "%s produced no finite logit", w->ck[ck].label);
            break;
        }
        qc_reply_piece piece, tail = {0};
        if ((rc = qc_reply_feed(&reply, id, &piece, err)) != 0)
            break;
        bool limit = job->max_tokens > 0 && n_gen >= job->max_tokens;
        bool stop = atomic_load(&w->stop);
        /* a full context ends the run like the token limit (as a reply) */
        bool full = !limit && !stop && w->max_ctx > 0 && qc_session_len(s) >= w->max_ctx;
        if (!piece.end && (limit || stop || full))
            qc_reply_finish(&reply, &tail, err);
        pthread_mutex_lock(&w->mu);
        if (col->t_first == 0)
            col->t_first = t;
        col->t_last = t;
        col->n_gen = n_gen;
        for (int pi = 0; pi < 2; pi++) {
            const qc_reply_piece *p = pi ? &tail : &piece;
            if (p->kind == QC_REPLY_REASONING && p->len)
                append(&col->reasoning, &col->n_reasoning_b, &col->cap_reasoning, p->text, p->len);
            else if (p->kind == QC_REPLY_ANSWER && p->len)
                append(&col->answer, &col->n_answer_b, &col->cap_answer, p->text, p->len);
        }
        col->n_reasoning = reply.n_reasoning;
        col->n_answer = reply.n_answer;
        col->peak_mem = peak;
        pthread_mutex_unlock(&w->mu);
        worker_wake(w);
        if (stop) {
            rc = -1;
            break;
        }
        if (piece.end || limit || full)
            break;
        if ((rc = qc_session_step(s, id, err)) != 0)
            break;
        if (qc_now() - t_mem > 0.25) {
            uint64_t b = mem_in_use(m, s);
            peak = b > peak ? b : peak;
            t_mem = qc_now();
        }
    }
    uint64_t b = mem_in_use(m, s);
    pthread_mutex_lock(&w->mu);
    col->peak_mem = b > peak ? b : peak;
    pthread_mutex_unlock(&w->mu);
out:
    qc_sampler_free(smp);
    if (have_reply)
        qc_reply_free(&reply);
    if (s)
        qc_session_free(s);
    free(ids);
    return rc;
}

static int job_compare(worker *w, const worker_job *job, qc_err *err)
{
    int rc = 0;
    for (int c = 0; c < 2; c++) {
        if (rc == 0)
            rc = compare_column(w, job, c, err);
        worker_cmp_col *col = &w->live.cmp[c];
        pthread_mutex_lock(&w->mu);
        if (rc == 0)
            col->state = WCMP_DONE;
        else if (rc < 0)
            col->state = col->state == WCMP_RUNNING ? WCMP_STOPPED : WCMP_WAITING;
        else if (col->state == WCMP_RUNNING) {
            col->state = WCMP_FAILED;
            snprintf(col->msg, sizeof col->msg, "%.250s", err->msg);
        }
        pthread_mutex_unlock(&w->mu);
    }
    update_mem(w);
    if (rc < 0)
        return qc_err_set(err, QC_EXIT_RUNTIME, "compare stopped");
    return rc;
}

static void on_drift_progress(void *user, int done, int n)
{
    worker *w = user;
    pthread_mutex_lock(&w->mu);
    w->live.prefill_done = done;
    w->live.prefill_total = n;
    pthread_mutex_unlock(&w->mu);
    worker_wake(w);
}

/* Teacher-forced drift of the last reply: the reference and the checkpoint
 * that produced the reply each prefill the same history with all logits. */
static int job_drift(worker *w, int ref, qc_err *err)
{
    if (!w->last_ids || w->n_last_ids <= w->last_from || w->last_ck < 0)
        return qc_err_set(err, QC_EXIT_USAGE, "no reply to score yet: send a prompt first");
    int act = w->last_ck;
    if (ref == act)
        return qc_err_set(err, QC_EXIT_USAGE, "the last reply came from %s itself: swap to another format, reply, "
                          "then /drift", w->ck[ref].label);
    int rc = ensure_resident(w, ref, act, err);
    if (!rc)
        rc = ensure_resident(w, act, ref, err);
    if (rc)
        return rc;
    w->ck[ref].last_used = w->ck[act].last_used = qc_now();
    qc_session *sr = NULL, *sa = NULL;
    drift_stats st;
    drift_stats_init(&st);
    if ((rc = qc_session_new(w->ck[ref].model, w->max_ctx, &sr, err)) == 0 &&
        (rc = qc_session_new(w->ck[act].model, w->max_ctx, &sa, err)) == 0) {
        set_phase(w, WPH_PREFILL);
        rc = drift_score_ids(sr, w->ck[ref].model, sa, w->ck[act].model, w->last_ids, w->n_last_ids, w->last_from,
                             64, &w->stop, on_drift_progress, w, &st, err);
    }
    if (sr)
        qc_session_free(sr);
    if (sa)
        qc_session_free(sa);
    if (rc < 0)
        return qc_err_set(err, QC_EXIT_RUNTIME, "drift stopped");
    if (rc)
        return rc;
    worker_drift d;
    memset(&d, 0, sizeof d);
    d.valid = true;
    d.st = st;
    snprintf(d.ref_label, sizeof d.ref_label, "%s", w->ck[ref].label);
    snprintf(d.act_label, sizeof d.act_label, "%s", w->ck[act].label);
    d.from = w->last_from;
    d.n_reply = w->n_last_ids - w->last_from;
    if (st.first_div >= 0) {
        const qc_tokenizer *tok = qc_model_tokenizer(w->ck[act].model);
        drift_token_text(tok, st.first_ref, d.first_ref_text, sizeof d.first_ref_text);
        drift_token_text(tok, st.first_act, d.first_act_text, sizeof d.first_act_text);
    }
    pthread_mutex_lock(&w->mu);
    w->live.drift = d;
    pthread_mutex_unlock(&w->mu);
    update_mem(w);
    return 0;
}

void worker_set_live_drift(worker *w, int ref)
{
    pthread_mutex_lock(&w->mu);
    w->drift_live_ref = ref;
    pthread_mutex_unlock(&w->mu);
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
        if (job.kind == WJOB_GENERATE || job.kind == WJOB_RESET) {
            /* (a new conversation also empties the last reply's panes) */
            L->n_reasoning_b = L->n_answer_b = 0;
            if (L->reasoning)
                L->reasoning[0] = 0;
            if (L->answer)
                L->answer[0] = 0;
            L->n_reasoning = L->n_answer = L->n_itl = L->n_gen = L->n_prompt = 0;
            L->t_submit = qc_now();
            L->t_first = L->t_last = L->t_reason_end = L->t_shift = 0;
            L->stopped = L->user_stopped = L->ended_eos = L->ctx_full = L->refused = false;
            snprintf(L->reply_format, sizeof L->reply_format, "%s", w->ck[L->active].label);
            memset(&L->drift, 0, sizeof L->drift);
        } else if (job.kind == WJOB_COMPARE) {
            for (int c = 0; c < 2; c++) {
                worker_cmp_col *col = &L->cmp[c];
                col->n_reasoning_b = col->n_answer_b = 0;
                if (col->reasoning)
                    col->reasoning[0] = 0;
                if (col->answer)
                    col->answer[0] = 0;
                col->n_reasoning = col->n_answer = col->n_gen = col->n_prompt = 0;
                col->t_start = col->t_first = col->t_last = 0;
                col->peak_mem = 0;
                col->msg[0] = 0;
                col->state = WCMP_WAITING;
                col->ck = job.targets[c];
                snprintf(col->label, sizeof col->label, "%s", w->ck[job.targets[c]].label);
            }
        } else if (job.kind == WJOB_DRIFT) {
            memset(&L->drift, 0, sizeof L->drift);
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
            if (rc == 0)
                forget_last_reply(w);
            break;
        case WJOB_RESET:
            qc_session_reset(w->sess);
            forget_last_reply(w);
            break;
        case WJOB_COMPARE:
            rc = job_compare(w, &job, &err);
            break;
        case WJOB_DRIFT:
            rc = job_drift(w, job.target, &err);
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
        worker_wake(w);
    }
    return NULL;
}

int worker_start(worker *w, int first, const qc_load_opts *lo, int max_ctx, uint64_t budget,
                 qc_err *err)
{
    w->lopts = *lo;
    w->max_ctx = max_ctx;
    w->drift_live_ref = w->ref_sess_ck = w->last_ck = -1;
    w->budget = budget;
    if (pipe(w->wake_fd) != 0)
        return qc_err_set(err, QC_EXIT_RUNTIME, "pipe: %s", strerror(errno));
    for (int i = 0; i < 2; i++)
        fcntl(w->wake_fd[i], F_SETFL, fcntl(w->wake_fd[i], F_GETFL) | O_NONBLOCK);
    worker_init_sync(w);
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
    if (w->ref_sess)
        qc_session_free(w->ref_sess);
    w->ref_sess = NULL;
    forget_last_reply(w);
    for (int c = 0; c < 2; c++) {
        free(w->live.cmp[c].reasoning);
        free(w->live.cmp[c].answer);
    }
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
