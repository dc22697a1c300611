/* drift.c — see drift.h. */
#include "drift.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

void drift_stats_init(drift_stats *s)
{
    memset(s, 0, sizeof *s);
    s->kl_max_pos = -1;
    s->first_div = -1;
    s->first_ref = s->first_act = -1;
}

/* log(sum exp(x)) over the finite entries, shifted by the max for stability;
 * -inf when none is finite. *arg gets the argmax (lowest id on ties). */
static double row_lse(const float *x, int n, int32_t *arg)
{
    double m = -INFINITY;
    int32_t best = -1;
    for (int i = 0; i < n; i++)
        if (isfinite(x[i]) && x[i] > m) {
            m = x[i];
            best = i;
        }
    *arg = best;
    if (best < 0)
        return -INFINITY;
    double sum = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(x[i]))
            sum += exp((double)x[i] - m);
    return m + log(sum);
}

double drift_kl_row(const float *ref, const float *act, int n_tokens, int32_t *top_ref, int32_t *top_act)
{
    double lse_r = row_lse(ref, n_tokens, top_ref);
    double lse_a = row_lse(act, n_tokens, top_act);
    if (*top_ref < 0 || *top_act < 0)
        return NAN;
    double kl = 0;
    for (int i = 0; i < n_tokens; i++) {
        /* +inf logits are treated like NaN: not a distribution value. */
        if (!isfinite(ref[i]))
            continue; /* P_i = 0 contributes nothing */
        double lp = (double)ref[i] - lse_r;
        double p = exp(lp);
        if (p == 0)
            continue;
        if (!isfinite(act[i]))
            return INFINITY;
        double lq = (double)act[i] - lse_a;
        kl += p * (lp - lq);
    }
    /* Mathematically >= 0; rounding may leave a hair below. */
    return kl > 0 ? kl : 0;
}

void drift_stats_add(drift_stats *s, const float *ref, const float *act, int n_tokens, int pos)
{
    int32_t tr, ta;
    double kl = drift_kl_row(ref, act, n_tokens, &tr, &ta);
    if (isnan(kl)) {
        s->n_bad++;
        return;
    }
    s->n++;
    s->kl_sum += kl;
    if (s->kl_max_pos < 0 || kl > s->kl_max) {
        s->kl_max = kl;
        s->kl_max_pos = pos;
    }
    if (tr == ta)
        s->agree++;
    else if (s->first_div < 0) {
        s->first_div = pos;
        s->first_ref = tr;
        s->first_act = ta;
    }
}

double drift_stats_kl_mean(const drift_stats *s) { return s->n ? s->kl_sum / s->n : 0; }

double drift_stats_agree_pct(const drift_stats *s) { return s->n ? 100.0 * s->agree / s->n : 0; }

/* Feeds ids to a session, `chunk` at a time when rows is not NULL. */
static int feed(qc_session *s, const int32_t *ids, int n, float *rows, qc_err *err)
{
    if (n <= 0)
        return 0;
    return qc_session_prefill(s, ids, n, 0, rows, err);
}

int drift_score_ids(qc_session *ref, const qc_model *ref_model, qc_session *act, const qc_model *act_model,
                    const int32_t *ids, int n, int from, int chunk, atomic_bool *stop, drift_progress_fn progress,
                    void *user, drift_stats *s, qc_err *err)
{
    qc_model_info ri, ai;
    qc_model_get_info(ref_model, &ri);
    qc_model_get_info(act_model, &ai);
    if (ri.n_tokens != ai.n_tokens)
        return qc_err_set(err, QC_EXIT_USAGE, "%s has %d token ids, %s has %d: drift needs one tokenizer", ri.dir,
                          ri.n_tokens, ai.dir, ai.n_tokens);
    if (from < 1 || from > n)
        return qc_err_set(err, QC_EXIT_USAGE, "drift: nothing to score (%d ids, first scored %d)", n, from);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= ri.n_tokens)
            return qc_err_set(err, QC_EXIT_USAGE, "drift: id %d at position %d is outside the %d token ids", ids[i],
                              i, ri.n_tokens);
    if (qc_session_len(ref) != 0 || qc_session_len(act) != 0)
        return qc_err_set(err, QC_EXIT_RUNTIME, "drift: the sessions must start empty");
    if (chunk <= 0)
        chunk = 64;
    int rc = 0;
    /* The history before the first scored row, without logits. */
    if ((rc = feed(ref, ids, from - 1, NULL, err)) != 0 || (rc = feed(act, ids, from - 1, NULL, err)) != 0)
        return rc;
    if (progress)
        progress(user, from - 1, n);
    float *rr = malloc((size_t)chunk * (size_t)ri.vocab_size * sizeof *rr);
    float *ra = malloc((size_t)chunk * (size_t)ai.vocab_size * sizeof *ra);
    if (!rr || !ra) {
        free(rr);
        free(ra);
        return qc_err_set(err, QC_EXIT_RUNTIME, "drift: out of memory for %d logit rows", chunk);
    }
    /* Row k of a chunk starting at token p holds the logits after ids[0..p+k],
     * which predict ids[p+k+1]: position p+k+1. The last token is never fed. */
    for (int p = from - 1; p < n - 1; p += chunk) {
        if (stop && atomic_load(stop)) {
            rc = -1;
            break;
        }
        int k = n - 1 - p < chunk ? n - 1 - p : chunk;
        if ((rc = feed(ref, ids + p, k, rr, err)) != 0 || (rc = feed(act, ids + p, k, ra, err)) != 0)
            break;
        for (int j = 0; j < k; j++)
            drift_stats_add(s, rr + (size_t)j * (size_t)ri.vocab_size, ra + (size_t)j * (size_t)ai.vocab_size,
                            ri.n_tokens, p + j + 1);
        if (progress)
            progress(user, p + k + 1, n);
    }
    free(rr);
    free(ra);
    return rc;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when invalid. */
static int utf8_seq(const unsigned char *s, size_t n)
{
    int len = s[0] < 0x80 ? 1 : (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (len == 0 || (size_t)len > n || (len == 2 && s[0] < 0xc2))
        return 0;
    for (int i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

void drift_token_text(const struct qc_tokenizer *tok, int32_t id, char *out, size_t n)
{
    if (n < 8) { /* room for "<id N>" or a quoted byte at least */
        if (n)
            out[0] = 0;
        return;
    }
    size_t len = 0;
    const char *b = tok ? qc_tokenizer_token_bytes(tok, id, &len) : NULL;
    if (!b) {
        snprintf(out, n, "<id %d>", (int)id);
        return;
    }
    size_t o = 0;
    /* Keeps room for the closing quote and the NUL; a long token is cut. */
#define PUT(str, k)                                                                                                    \
    do {                                                                                                               \
        if (o + (k) + 2 > n)                                                                                           \
            goto done;                                                                                                 \
        memcpy(out + o, (str), (k));                                                                                   \
        o += (k);                                                                                                      \
    } while (0)
    PUT("\"", 1);
    const unsigned char *u = (const unsigned char *)b;
    for (size_t i = 0; i < len;) {
        int q = utf8_seq(u + i, len - i);
        char esc[8];
        if (q == 1 && u[i] >= 0x20 && u[i] != 0x7f && u[i] != '"' && u[i] != '\\') {
            PUT(b + i, 1);
        } else if (q > 1) {
            PUT(b + i, (size_t)q);
        } else {
            int k = u[i] == '\n' ? snprintf(esc, sizeof esc, "\\n") : u[i] == '\t' ? snprintf(esc, sizeof esc, "\\t")
                    : u[i] == '"' ? snprintf(esc, sizeof esc, "\\\"") : u[i] == '\\' ? snprintf(esc, sizeof esc, "\\\\")
                    : snprintf(esc, sizeof esc, "\\x%02x", u[i]);
            PUT(esc, (size_t)k);
            q = 1;
        }
        i += (size_t)q;
    }
done:
#undef PUT
    out[o++] = '"';
    out[o] = 0;
}
