/* session.c — qc_session: one conversation's token history on a model, fed
 * to the backend in chunks, with the statistics events the TUI draws from.
 * The backend owns the caches (KV of the full-attention layers, GDN conv and
 * recurrent state); the session owns the history and the last logits. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#ifdef QC_HAVE_CUDA
#include "cuda_backend.h"
#endif

#define QC_DEFAULT_CHUNK 256

static void emit(qc_session *s, qc_phase ph, int done, int total)
{
    if (!s->ev_fn)
        return;
    qc_event ev = {ph, done, total, qc_now()};
    s->ev_fn(s->ev_user, &ev);
}

int qc_session_new(qc_model *m, int max_ctx, qc_session **out, qc_err *err)
{
    *out = NULL;
    if (max_ctx < 0)
        return qc_err_set(err, QC_EXIT_USAGE, "context length %d is negative", max_ctx);
    qc_session *s = calloc(1, sizeof *s);
    if (!s)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for a session");
    s->m = m;
    s->max_ctx = max_ctx;
    s->logits = calloc((size_t)m->cfg->vocab_size, sizeof(float));
    s->final_norm = calloc((size_t)m->cfg->hidden_size, sizeof(float));
    if (!s->logits || !s->final_norm) {
        qc_session_free(s);
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for a session");
    }
    int rc = m->be->session_init(s, err);
    if (rc) {
        qc_session_free(s);
        return rc;
    }
    *out = s;
    return QC_OK;
}

void qc_session_free(qc_session *s)
{
    if (!s)
        return;
    if (s->be_sess)
        s->m->be->session_free(s);
    free(s->tokens);
    free(s->logits);
    free(s->final_norm);
    free(s);
}

void qc_session_set_events(qc_session *s, qc_event_fn fn, void *user)
{
    s->ev_fn = fn;
    s->ev_user = user;
}

static int check_ids(const qc_session *s, const int32_t *ids, int n, qc_err *err)
{
    const int V = s->m->cfg->vocab_size;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return qc_err_set(err, QC_EXIT_USAGE, "token id %d at position %d is outside the vocabulary [0, %d)",
                              (int)ids[i], s->n + i, V);
    if (s->max_ctx > 0 && s->n + n > s->max_ctx)
        return qc_err_set(err, QC_EXIT_USAGE, "%d tokens exceed the session's context of %d",
                          s->n + n, s->max_ctx);
    return QC_OK;
}

static int reserve_tokens(qc_session *s, int n, qc_err *err)
{
    if (s->n + n <= s->cap)
        return QC_OK;
    int cap = s->cap ? s->cap : 256;
    while (cap < s->n + n)
        cap *= 2;
    int32_t *t = realloc(s->tokens, sizeof *t * (size_t)cap);
    if (!t)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory for %d tokens of history", cap);
    s->tokens = t;
    s->cap = cap;
    return QC_OK;
}

int qc_session_prefill_full(qc_session *s, const int32_t *ids, int n, int chunk, float *all_logits,
                            float *all_norm, qc_err *err)
{
    if (n < 0)
        return qc_err_set(err, QC_EXIT_USAGE, "negative token count");
    if (n == 0)
        return QC_OK;
    int rc = check_ids(s, ids, n, err);
    if (rc)
        return rc;
    if ((rc = reserve_tokens(s, n, err)))
        return rc;
    if (chunk <= 0)
        chunk = QC_DEFAULT_CHUNK;
    const size_t V = (size_t)s->m->cfg->vocab_size, D = (size_t)s->m->cfg->hidden_size;
    emit(s, QC_PHASE_PREFILL, 0, n);
    for (int i = 0; i < n; i += chunk) {
        int c = n - i < chunk ? n - i : chunk;
        rc = s->m->be->forward(s, ids + i, c, s->n, all_logits ? all_logits + i * V : NULL,
                               all_norm ? all_norm + i * D : NULL, err);
        if (rc) {
            /* The state now holds part of this chunk: drop back to a
             * consistent, empty sequence rather than keep a half-fed one. */
            qc_session_reset(s);
            return rc;
        }
        memcpy(s->tokens + s->n, ids + i, sizeof *ids * (size_t)c);
        s->n += c;
        s->have_logits = true;
        emit(s, QC_PHASE_PREFILL, i + c, n);
    }
    return QC_OK;
}

int qc_session_prefill(qc_session *s, const int32_t *ids, int n, int chunk, float *all_logits,
                       qc_err *err)
{
    return qc_session_prefill_full(s, ids, n, chunk, all_logits, NULL, err);
}

int qc_session_step(qc_session *s, int32_t id, qc_err *err)
{
    int rc = check_ids(s, &id, 1, err);
    if (rc)
        return rc;
    if ((rc = reserve_tokens(s, 1, err)))
        return rc;
    rc = s->m->be->forward(s, &id, 1, s->n, NULL, NULL, err);
    if (rc) {
        qc_session_reset(s);
        return rc;
    }
    s->tokens[s->n++] = id;
    s->have_logits = true;
    emit(s, QC_PHASE_DECODE, s->n, s->n);
    return QC_OK;
}

const qc_backend_sampling *qc_backend_sampling_of(const qc_backend *be)
{
#ifdef QC_HAVE_CUDA
    if (be == &qc_cuda_backend)
        return &qc_cuda_backend_sampling;
#else
    (void)be;
#endif
    return NULL;
}

const float *qc_session_logits(const qc_session *s)
{
    if (!s->have_logits)
        return NULL;
    if (s->logits_on_device) {
        /* Fetched on demand: decode that only samples never copies the row.
         * The session is not const-defined; only the cache state changes. */
        qc_session *ms = (qc_session *)s;
        const qc_backend_sampling *bs = qc_backend_sampling_of(s->m->be);
        qc_err err;
        if (!bs || bs->fetch_logits(ms, &err))
            return NULL;
        ms->logits_on_device = false;
    }
    return s->logits;
}

int qc_session_sample(qc_session *s, qc_sampler *smp, int32_t *next, qc_err *err)
{
    *next = -1;
    if (!s->have_logits)
        return qc_err_set(err, QC_EXIT_USAGE, "nothing to sample from: the session has no logits yet");
    const qc_backend_sampling *bs = qc_backend_sampling_of(s->m->be);
    const int n = qc_sampler_n_tokens(smp) < s->m->cfg->vocab_size ? qc_sampler_n_tokens(smp) : s->m->cfg->vocab_size;
    int64_t bad = 0;
    if (s->logits_on_device && bs) {
        bool copied = false;
        int rc = bs->sample_next(s, smp, next, &copied, &bad, err);
        if (rc)
            return rc;
        if (copied)
            s->logits_on_device = false;
    } else {
        const float *lg = qc_session_logits(s);
        if (!lg)
            return qc_err_set(err, QC_EXIT_RUNTIME, "the session's logits could not be read");
        /* (the ids that can be drawn: rows past the tokenizer are padding) */
        if (!(bad = qc_logits_count_nonfinite(lg, n)))
            *next = qc_sampler_sample(smp, lg, s->m->cfg->vocab_size);
    }
    if (bad) {
        *next = -1;
        return qc_logits_nonfinite_error(err, bad, n, s->n - 1);
    }
    if (*next >= 0)
        qc_sampler_accept(smp, *next);
    return QC_OK;
}
const float *qc_session_final_norm(const qc_session *s) { return s->have_logits ? s->final_norm : NULL; }
int qc_session_len(const qc_session *s) { return s->n; }
const int32_t *qc_session_tokens(const qc_session *s) { return s->tokens; }

void qc_session_reset(qc_session *s)
{
    s->n = 0;
    s->have_logits = false;
    s->logits_on_device = false;
    s->m->be->session_reset(s);
}

int qc_session_rewind(qc_session *s, int n, qc_err *err)
{
    if (n < 0 || n > s->n)
        return qc_err_set(err, QC_EXIT_USAGE, "cannot rewind to %d tokens: the session has %d", n, s->n);
    if (n == s->n)
        return QC_OK;
    /* The GDN recurrence cannot be run backwards: replay the kept prefix. */
    int32_t *keep = malloc(sizeof *keep * (size_t)(n ? n : 1));
    if (!keep)
        return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory rewinding the session");
    memcpy(keep, s->tokens, sizeof *keep * (size_t)n);
    qc_session_reset(s);
    int rc = qc_session_prefill(s, keep, n, 0, NULL, err);
    free(keep);
    return rc;
}
