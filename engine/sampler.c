/* sampler.c — see sampler.h. */
#include "sampler.h"

#include "config.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct cand {
    float p; /* unnormalised probability exp((l - max) / T), in (0, 1] */
    int32_t id;
} cand;

struct qc_sampler {
    qc_sample_params p;
    int n_tokens;
    uint64_t rng[4];
    int32_t *count; /* [n_tokens] times each id was accepted */
    int32_t *seen;  /* distinct accepted ids, in first-seen order */
    int nseen;
    float *work;    /* [n_tokens] penalised logits */
    int32_t *cid;   /* [n_tokens] ids of a candidate row */
    cand *cands;    /* [n_tokens] */
};

void qc_sample_params_init(qc_sample_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

void qc_sample_params_apply_gen(qc_sample_params *p, const qc_gen_config *g)
{
    if (!g || !g->present)
        return;
    if (g->has_temperature)
        p->temperature = g->temperature;
    if (g->has_top_k)
        p->top_k = g->top_k;
    if (g->has_top_p)
        p->top_p = g->top_p;
    if (g->has_min_p)
        p->min_p = g->min_p;
    if (g->has_presence_penalty)
        p->presence_penalty = g->presence_penalty;
    if (g->has_repetition_penalty)
        p->repetition_penalty = g->repetition_penalty;
    if (!g->do_sample)
        p->temperature = 0;
}

int qc_sample_params_check(const qc_sample_params *p, qc_err *err)
{
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return qc_err_set(err, QC_EXIT_USAGE, "--temperature must be a finite number >= 0, got %g",
                          (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return qc_err_set(err, QC_EXIT_USAGE, "--top-p must be in (0, 1], got %g",
                          (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return qc_err_set(err, QC_EXIT_USAGE, "--min-p must be in [0, 1], got %g",
                          (double)p->min_p);
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0.0f))
        return qc_err_set(err, QC_EXIT_USAGE, "--repetition-penalty must be > 0, got %g",
                          (double)p->repetition_penalty);
    if (!isfinite(p->presence_penalty))
        return qc_err_set(err, QC_EXIT_USAGE, "--presence-penalty must be finite");
    if (!isfinite(p->frequency_penalty))
        return qc_err_set(err, QC_EXIT_USAGE, "--frequency-penalty must be finite");
    return QC_OK;
}

/* ---- random numbers: splitmix64 seeding xoshiro256** ---------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(qc_sampler *s) { return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53; }

void qc_sampler_reset(qc_sampler *s, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    for (int i = 0; i < s->nseen; i++) s->count[s->seen[i]] = 0;
    s->nseen = 0;
}

int qc_sampler_new(const qc_sample_params *p, int n_tokens, qc_sampler **out, qc_err *err)
{
    *out = NULL;
    int rc = qc_sample_params_check(p, err);
    if (rc)
        return rc;
    if (n_tokens <= 0)
        return qc_err_set(err, QC_EXIT_USAGE, "sampler: no tokens to sample (n_tokens %d)", n_tokens);
    qc_sampler *s = qc_calloc(1, sizeof *s, err, "sampler");
    if (!s)
        return QC_EXIT_RUNTIME;
    s->p = *p;
    s->n_tokens = n_tokens;
    s->count = qc_calloc((size_t)n_tokens, sizeof *s->count, err, "sampler counts");
    s->seen = s->count ? qc_malloc((size_t)n_tokens * sizeof *s->seen, err, "sampler history") : NULL;
    s->work = s->seen ? qc_malloc((size_t)n_tokens * sizeof *s->work, err, "sampler logits") : NULL;
    s->cands = s->work ? qc_malloc((size_t)n_tokens * sizeof *s->cands, err, "sampler candidates")
                       : NULL;
    s->cid = s->cands ? qc_malloc((size_t)n_tokens * sizeof *s->cid, err, "sampler candidate ids")
                      : NULL;
    if (!s->cid) {
        qc_sampler_free(s);
        return QC_EXIT_RUNTIME;
    }
    qc_sampler_reset(s, p->seed);
    *out = s;
    return QC_OK;
}

void qc_sampler_free(qc_sampler *s)
{
    if (!s)
        return;
    free(s->count);
    free(s->seen);
    free(s->work);
    free(s->cands);
    free(s->cid);
    free(s);
}

void qc_sampler_accept(qc_sampler *s, int32_t id)
{
    if (id < 0 || id >= s->n_tokens)
        return;
    if (s->count[id]++ == 0)
        s->seen[s->nseen++] = id;
}

/* ---- candidate ordering: probability descending, id ascending on ties ---- */

static inline bool cand_before(const cand *a, const cand *b)
{
    return a->p > b->p || (a->p == b->p && a->id < b->id);
}

static int cand_cmp(const void *x, const void *y)
{
    const cand *a = x, *b = y;
    return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

static void cand_swap(cand *a, cand *b)
{
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Reorders c[0..n) so its first k entries are the k first in cand order
 * (in no particular order among themselves). Quickselect, median of three. */
static void cand_select(cand *c, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (hi > lo) {
        int mid = lo + (hi - lo) / 2;
        if (cand_before(&c[mid], &c[lo])) cand_swap(&c[mid], &c[lo]);
        if (cand_before(&c[hi], &c[lo])) cand_swap(&c[hi], &c[lo]);
        if (cand_before(&c[hi], &c[mid])) cand_swap(&c[hi], &c[mid]);
        cand pivot = c[mid];
        int i = lo, j = hi;
        while (i <= j) {
            while (cand_before(&c[i], &pivot)) i++;
            while (cand_before(&pivot, &c[j])) j--;
            if (i <= j) {
                cand_swap(&c[i], &c[j]);
                i++;
                j--;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            return;
    }
}

/* ---- the pipeline --------------------------------------------------------- */

/* Penalised logits of ids [0, V) into s->work (NaN becomes -inf). Returns the
 * index of the largest finite logit (lowest id on ties), -1 if none. */
static int32_t penalise(qc_sampler *s, const float *logits, int V)
{
    float *l = s->work;
    for (int i = 0; i < V; i++) l[i] = isnan(logits[i]) ? -INFINITY : logits[i];
    const float rep = s->p.repetition_penalty, pres = s->p.presence_penalty,
                freq = s->p.frequency_penalty;
    for (int j = 0; j < s->nseen; j++) {
        int32_t id = s->seen[j];
        if (id >= V)
            continue;
        float v = l[id];
        if (rep != 1.0f)
            v = v > 0.0f ? v / rep : v * rep;
        v -= pres;
        v -= freq * (float)s->count[id];
        l[id] = v;
    }
    int32_t best = -1;
    for (int i = 0; i < V; i++)
        if (l[i] > -INFINITY && (best < 0 || l[i] > l[best]))
            best = i;
    return best;
}

/* Builds the kept candidates (s->cands[0..*nkept)) and their total mass
 * from penalised logits l[0..n) of ids ids[0..n) (NULL: id j is j), in
 * increasing id order, whose largest finite entry (lowest id on ties) is
 * l[best]. partial: the row holds only the largest entries of the full
 * vocabulary (ranked by logit, then id) and every id left out has a logit
 * <= lmin; the result is then the full row's when it can be proved so, else
 * -2 is returned (nothing consumed). Returns -1 when nothing can be drawn. */
static int build_rows(qc_sampler *s, const float *l, const int32_t *ids, int n_in, int32_t best,
                      bool partial, float lmin, double *mass)
{
#define ID_OF(j) (ids ? ids[j] : (int32_t)(j))
    if (best < 0)
        return -1;
    cand *c = s->cands;
    if (s->p.temperature <= 0.0f || s->p.top_k == 1) {
        /* The largest entry of a top set is the full row's largest. */
        c[0].p = 1.0f;
        c[0].id = ID_OF(best);
        *mass = 1.0;
        return 1;
    }
    const float mx = l[best];
    const double invt = 1.0 / (double)s->p.temperature;
    /* Unnormalised probabilities; the max token has exactly 1. */
    int n = 0;
    double total = 0.0;
    for (int i = 0; i < n_in; i++) {
        if (!(l[i] > -INFINITY))
            continue;
        float p = (float)exp(((double)l[i] - (double)mx) * invt);
        if (p > 0.0f) {
            c[n].p = p;
            c[n].id = ID_OF(i);
            total += p;
            n++;
        }
    }
    /* A partial row is the full row's answer when every id left out has
     * probability 0 (then the kept ids and their id order are the same), or
     * when top-k applies and its k-th probability exceeds the left-out ids'
     * bound pmin strictly (then no left-out id can enter the top k, ties by id
     * included, and everything after top-k works on the same k). */
    float pmin = 0.0f;
    if (partial)
        pmin = (float)exp(((double)lmin - (double)mx) * invt);
    /* top-k: the k most probable, sorted. */
    bool sorted = false;
    int k = s->p.top_k;
    if (partial && pmin > 0.0f && !(k > 0 && k < n))
        return -2;
    if (k > 0 && k < n) {
        cand_select(c, n, k);
        n = k;
        qsort(c, (size_t)n, sizeof *c, cand_cmp);
        if (partial && pmin > 0.0f && !(c[k - 1].p > pmin))
            return -2;
        sorted = true;
        total = 0.0;
        for (int i = 0; i < n; i++) total += c[i].p;
    }
#undef ID_OF
    /* top-p: the smallest sorted prefix with mass >= top_p. Only the tokens
     * above a threshold need sorting once they alone hold that mass: every
     * token below it comes later in the order. */
    if (s->p.top_p < 1.0f) {
        double need = (double)s->p.top_p * total;
        if (!sorted) {
            float tau = 1e-3f;
            for (;;) {
                int m = 0;
                double msum = 0.0;
                for (int i = 0; i < n; i++)
                    if (c[i].p >= tau) {
                        cand_swap(&c[m++], &c[i]);
                        msum += c[m - 1].p;
                    }
                if (msum >= need || tau == 0.0f) {
                    qsort(c, (size_t)m, sizeof *c, cand_cmp);
                    n = m; /* the prefix lies within these */
                    break;
                }
                tau = tau > 1e-30f ? tau * 1e-3f : 0.0f;
            }
            sorted = true;
        }
        double cum = 0.0;
        int keep = 0;
        while (keep < n) {
            cum += c[keep].p;
            keep++;
            if (cum >= need)
                break;
        }
        n = keep;
        total = cum;
    }
    /* min-p: relative to the most probable token, whose p is 1. */
    if (s->p.min_p > 0.0f) {
        int m = 0;
        total = 0.0;
        for (int i = 0; i < n; i++)
            if (c[i].p >= s->p.min_p) {
                c[m++] = c[i];
                total += c[i].p;
            }
        n = m;
    }
    *mass = total;
    return n;
}

/* The full-row pipeline: penalties, then build_rows over ids [0, V). */
static int build(qc_sampler *s, const float *logits, int vocab, double *mass)
{
    int V = vocab < s->n_tokens ? vocab : s->n_tokens;
    if (V <= 0)
        return -1;
    int32_t best = penalise(s, logits, V);
    return build_rows(s, s->work, NULL, V, best, false, 0.0f, mass);
}

/* Draws from s->cands[0..n) of total mass (n from build_rows). */
static int32_t draw(qc_sampler *s, int n, double mass)
{
    if (n < 0)
        return -1;
    if (s->p.temperature <= 0.0f || s->p.top_k == 1)
        return s->cands[0].id; /* greedy: no draw */
    /* Sampling consumes one draw even when one token is left, so the stream
     * advances the same way whatever the truncation keeps. */
    double u = rng_uniform(s) * mass, cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += s->cands[i].p;
        if (u < cum)
            return s->cands[i].id;
    }
    return s->cands[n - 1].id; /* rounding at the very top */
}

int32_t qc_sampler_sample(qc_sampler *s, const float *logits, int vocab)
{
    double mass;
    int n = build(s, logits, vocab, &mass);
    return draw(s, n, mass);
}

const qc_sample_params *qc_sampler_params(const qc_sampler *s) { return &s->p; }
int qc_sampler_n_tokens(const qc_sampler *s) { return s->n_tokens; }

int qc_sampler_history(const qc_sampler *s, const int32_t **ids, const int32_t **counts)
{
    *ids = s->seen;
    *counts = s->count;
    return s->nseen;
}

bool qc_sampler_has_penalties(const qc_sampler *s)
{
    return s->nseen > 0 && (s->p.repetition_penalty != 1.0f || s->p.presence_penalty != 0.0f ||
                            s->p.frequency_penalty != 0.0f);
}

int qc_sampler_candidates_wanted(const qc_sampler *s)
{
    if (s->p.temperature <= 0.0f || s->p.top_k == 1)
        return 1;
    if (s->p.top_k <= 0 || s->p.top_k > QC_SAMPLER_MAX_TOPK)
        return 0;
    /* Room beyond k, so that the k-th probability usually exceeds every
     * left-out one strictly (build_rows' proof of exactness). */
    int c = 2 * s->p.top_k;
    return c < 64 ? 64 : c;
}

static int cand_id_cmp(const void *x, const void *y)
{
    const cand *a = x, *b = y;
    return (a->id > b->id) - (a->id < b->id);
}

int qc_sampler_sample_candidates(qc_sampler *s, const float *vals, const int32_t *ids, int n,
                                 bool partial, int32_t *out)
{
    *out = -1;
    if (n < 0 || n > s->n_tokens)
        return QC_SAMPLER_UNDECIDED;
    if (n == 0)
        return partial ? QC_SAMPLER_UNDECIDED : QC_OK;
    /* Into increasing id order (build_rows' contract), through s->cands. */
    cand *c = s->cands;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= s->n_tokens)
            return QC_SAMPLER_UNDECIDED;
        c[i].p = isnan(vals[i]) ? -INFINITY : vals[i];
        c[i].id = ids[i];
    }
    qsort(c, (size_t)n, sizeof *c, cand_id_cmp);
    float *l = s->work, lmin = INFINITY;
    int32_t *cid = s->cid, best = -1;
    for (int i = 0; i < n; i++) {
        l[i] = c[i].p;
        cid[i] = c[i].id;
        if (l[i] < lmin)
            lmin = l[i];
        if (l[i] > -INFINITY && (best < 0 || l[i] > l[best]))
            best = i;
    }
    if (best < 0 && partial)
        return QC_SAMPLER_UNDECIDED;
    double mass;
    int kept = build_rows(s, l, cid, n, best, partial, lmin, &mass);
    if (kept == -2)
        return QC_SAMPLER_UNDECIDED;
    *out = draw(s, kept, mass);
    return QC_OK;
}

int32_t qc_sampler_next(qc_sampler *s, const float *logits, int vocab)
{
    int32_t id = qc_sampler_sample(s, logits, vocab);
    if (id >= 0)
        qc_sampler_accept(s, id);
    return id;
}

int64_t qc_logits_count_nonfinite(const float *row, int64_t n)
{
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += !isfinite(row[i]);
    return c;
}

int qc_logits_nonfinite_error(qc_err *err, int64_t count, int64_t n, int pos)
{
    return qc_err_set(err, QC_EXIT_RUNTIME,
                      "the model's logits at position %d are not finite (%lld of %lld NaN or infinite): "
                      "a weight of the checkpoint is NaN or infinite, or the computation overflowed",
                      pos, (long long)count, (long long)n);
}

int qc_sampler_probs(qc_sampler *s, const float *logits, int vocab, float *probs)
{
    for (int i = 0; i < vocab; i++) probs[i] = 0.0f;
    double mass;
    int n = build(s, logits, vocab, &mass);
    if (n < 0)
        return -1;
    for (int i = 0; i < n; i++) probs[s->cands[i].id] = (float)(s->cands[i].p / mass);
    return n;
}
