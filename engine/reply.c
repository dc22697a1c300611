/* reply.c — reasoning / answer splitter; see reply.h. */
#include "reply.h"

#include <stdlib.h>
#include <string.h>

int qc_reply_init(qc_reply *r, const qc_tokenizer *tok, const int32_t *eos, int n_eos,
                  bool in_reasoning, qc_err *err)
{
    memset(r, 0, sizeof *r);
    if (n_eos < 0 || n_eos > QC_REPLY_MAX_EOS)
        return qc_err_set(err, QC_EXIT_USAGE, "%d eos ids given; at most %d are supported", n_eos,
                          QC_REPLY_MAX_EOS);
    r->tok = tok;
    for (int i = 0; i < n_eos; i++)
        r->eos[i] = eos[i];
    r->n_eos = n_eos;
    r->think_open = qc_tokenizer_find(tok, "<think>");
    r->think_close = qc_tokenizer_find(tok, "</think>");
    r->in_reasoning = in_reasoning;
    qc_detok_init(&r->dt, tok);
    return QC_OK;
}

void qc_reply_free(qc_reply *r)
{
    qc_detok_free(&r->dt);
    free(r->held);
    free(r->out);
    free(r->reasoning);
    free(r->answer);
    memset(r, 0, sizeof *r);
}

/* Appends s[0..n) to a NUL-terminated growing buffer. */
static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n, qc_err *err)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 128;
        while (nc < *len + n + 1)
            nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb)
            return qc_err_set(err, QC_EXIT_RUNTIME, "out of memory in the reply splitter");
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return QC_OK;
}

/* Text that reaches the visible output of the current side. */
static int show(qc_reply *r, const char *s, size_t n, qc_err *err)
{
    if (!n)
        return QC_OK;
    r->seen_text = true;
    if (append(&r->out, &r->nout, &r->capout, s, n, err))
        return QC_EXIT_RUNTIME;
    if (r->in_reasoning)
        return append(&r->reasoning, &r->nreasoning, &r->capreasoning, s, n, err);
    return append(&r->answer, &r->nanswer, &r->capanswer, s, n, err);
}

/* Routes decoded text to the current side, hiding the newlines next to the
 * tags: leading ones of either side, trailing ones of the reasoning (held
 * until later text shows they were inside it). */
static int route(qc_reply *r, const char *s, size_t n, qc_err *err)
{
    if (!r->seen_text)
        while (n && *s == '\n')
            s++, n--;
    if (!n)
        return QC_OK;
    if (!r->in_reasoning)
        return show(r, s, n, err);
    size_t body = n;
    while (body && s[body - 1] == '\n')
        body--;
    if (!body) /* only newlines: hold them */
        return append(&r->held, &r->nheld, &r->capheld, s, n, err);
    if (r->nheld) {
        if (show(r, r->held, r->nheld, err))
            return QC_EXIT_RUNTIME;
        r->nheld = 0;
    }
    if (show(r, s, body, err))
        return QC_EXIT_RUNTIME;
    return append(&r->held, &r->nheld, &r->capheld, s + body, n - body, err);
}

/* Ends the current side: an unfinished character becomes U+FFFD, held
 * newlines are dropped. */
static int close_side(qc_reply *r, qc_err *err)
{
    const char *t;
    size_t n;
    if (qc_detok_flush(&r->dt, &t, &n, err) || route(r, t, n, err))
        return QC_EXIT_RUNTIME;
    r->nheld = 0;
    return QC_OK;
}

static void finish_piece(qc_reply *r, qc_reply_piece *p, bool in_reasoning_before)
{
    p->text = r->out ? r->out : "";
    p->len = r->nout;
    p->kind = !r->nout ? QC_REPLY_NONE
              : in_reasoning_before ? QC_REPLY_REASONING
                                    : QC_REPLY_ANSWER;
    p->end = r->ended;
}

int qc_reply_feed(qc_reply *r, int32_t id, qc_reply_piece *piece, qc_err *err)
{
    r->nout = 0;
    bool side = r->in_reasoning;
    int rc = QC_OK;
    bool is_eos = false;
    for (int i = 0; i < r->n_eos; i++)
        is_eos |= id == r->eos[i];
    if (r->ended) {
        /* nothing more belongs to this reply */
    } else if (is_eos) {
        r->n_other++;
        rc = close_side(r, err);
        r->ended = true;
    } else if (id >= 0 && (id == r->think_close || id == r->think_open)) {
        r->n_other++;
        rc = close_side(r, err);
        r->in_reasoning = id == r->think_open;
        r->seen_text = false;
    } else {
        if (r->in_reasoning)
            r->n_reasoning++;
        else
            r->n_answer++;
        const char *t;
        size_t n;
        rc = qc_detok_push(&r->dt, id, &t, &n, err);
        if (!rc)
            rc = route(r, t, n, err);
    }
    finish_piece(r, piece, side);
    return rc;
}

int qc_reply_finish(qc_reply *r, qc_reply_piece *piece, qc_err *err)
{
    r->nout = 0;
    bool side = r->in_reasoning;
    int rc = QC_OK;
    if (!r->ended) {
        rc = close_side(r, err);
        r->ended = true;
    }
    finish_piece(r, piece, side);
    return rc;
}

const char *qc_reply_reasoning(const qc_reply *r, size_t *len)
{
    if (len)
        *len = r->nreasoning;
    return r->reasoning ? r->reasoning : "";
}

const char *qc_reply_answer(const qc_reply *r, size_t *len)
{
    if (len)
        *len = r->nanswer;
    return r->answer ? r->answer : "";
}
