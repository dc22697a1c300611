/* test_sampler.c — the sampler against an independent reference of each rule
 * (penalties, temperature, top-k, top-p, min-p) over many random logit rows
 * and seeds, empirical frequencies against the distribution, determinism per
 * seed, and ids beyond the tokenizer never drawn. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "config.h"
#include "sampler.h"

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static double urand(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}

static void rand_logits(float *l, int n, double spread)
{
    for (int i = 0; i < n; i++) l[i] = (float)((urand() * 2.0 - 1.0) * spread);
}

/* ---- reference ------------------------------------------------------------ */

typedef struct ref_item {
    double p;
    int id;
} ref_item;

static int ref_cmp(const void *a, const void *b)
{
    const ref_item *x = a, *y = b;
    if (x->p != y->p)
        return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

/* The documented pipeline, written plainly: full sort, double precision.
 * counts[id] = times id was generated. probs[0..vocab) out. */
static void ref_probs(const qc_sample_params *p, const float *logits, int vocab, int n_tokens,
                      const int *counts, double *probs)
{
    int V = vocab < n_tokens ? vocab : n_tokens;
    double *l = malloc(sizeof(double) * (size_t)V);
    ref_item *it = malloc(sizeof(ref_item) * (size_t)V);
    for (int i = 0; i < vocab; i++) probs[i] = 0.0;
    for (int i = 0; i < V; i++) {
        double v = isnan(logits[i]) ? -INFINITY : logits[i];
        if (counts && counts[i] > 0) {
            if (p->repetition_penalty != 1.0f)
                v = v > 0 ? v / p->repetition_penalty : v * p->repetition_penalty;
            v -= p->presence_penalty;
            v -= p->frequency_penalty * counts[i];
        }
        l[i] = v;
    }
    int best = 0;
    for (int i = 1; i < V; i++)
        if (l[i] > l[best])
            best = i;
    if (p->temperature <= 0 || p->top_k == 1) {
        probs[best] = 1.0;
        free(l), free(it);
        return;
    }
    int n = 0;
    for (int i = 0; i < V; i++) {
        it[n].p = exp((l[i] - l[best]) / p->temperature);
        it[n].id = i;
        n++;
    }
    qsort(it, (size_t)n, sizeof *it, ref_cmp);
    while (n > 0 && it[n - 1].p == 0.0) n--;
    if (p->top_k > 0 && p->top_k < n)
        n = p->top_k;
    if (p->top_p < 1.0f) {
        double tot = 0, cum = 0;
        for (int i = 0; i < n; i++) tot += it[i].p;
        int keep = 0;
        while (keep < n) {
            cum += it[keep++].p;
            if (cum >= p->top_p * tot)
                break;
        }
        n = keep;
    }
    double tot = 0;
    for (int i = 0; i < n; i++)
        if (it[i].p >= p->min_p * it[0].p)
            tot += it[i].p;
    for (int i = 0; i < n; i++)
        if (it[i].p >= p->min_p * it[0].p)
            probs[it[i].id] = it[i].p / tot;
    free(l), free(it);
}

/* Compares qc_sampler_probs with the reference: same support, values close. */
static bool probs_match(qc_sampler *s, const qc_sample_params *p, const float *logits, int vocab,
                        int n_tokens, const int *counts, char *why, size_t wn)
{
    float *got = malloc(sizeof(float) * (size_t)vocab);
    double *want = malloc(sizeof(double) * (size_t)vocab);
    qc_sampler_probs(s, logits, vocab, got);
    ref_probs(p, logits, vocab, n_tokens, counts, want);
    bool ok = true;
    for (int i = 0; i < vocab && ok; i++) {
        if ((got[i] > 0) != (want[i] > 0)) {
            snprintf(why, wn, "id %d kept=%d, reference kept=%d (p %.3g vs %.3g)", i, got[i] > 0,
                     want[i] > 0, (double)got[i], want[i]);
            ok = false;
        } else if (fabs(got[i] - want[i]) > 1e-6 + 1e-5 * want[i]) {
            snprintf(why, wn, "id %d p %.9g, reference %.9g", i, (double)got[i], want[i]);
            ok = false;
        }
    }
    free(got), free(want);
    return ok;
}

static qc_sampler *new_sampler(const qc_sample_params *p, int n_tokens)
{
    qc_sampler *s = NULL;
    qc_err err = {0};
    if (qc_sampler_new(p, n_tokens, &s, &err)) {
        fprintf(stderr, "sampler_new: %s\n", err.msg);
        exit(1);
    }
    return s;
}

static int argmax(const float *l, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

/* ---- tests ----------------------------------------------------------------- */

static void test_greedy(void)
{
    enum { V = 300 };
    float l[V];
    int bad_t0 = 0, bad_k1 = 0, bad_cold = 0;
    for (int trial = 0; trial < 200; trial++) {
        rand_logits(l, V, 8.0);
        int want = argmax(l, V);
        qc_sample_params p;
        qc_sample_params_init(&p);
        p.seed = (uint64_t)trial;
        p.temperature = 0.0f;
        qc_sampler *s = new_sampler(&p, V);
        bad_t0 += qc_sampler_sample(s, l, V) != want;
        qc_sampler_free(s);
        p.temperature = 0.8f;
        p.top_k = 1;
        s = new_sampler(&p, V);
        bad_k1 += qc_sampler_sample(s, l, V) != want;
        qc_sampler_free(s);
        /* temperature -> 0: the distribution collapses onto the argmax */
        p.top_k = 0;
        p.temperature = 1e-4f;
        s = new_sampler(&p, V);
        l[want] += 0.01f; /* a clear margin */
        bad_cold += qc_sampler_sample(s, l, V) != want;
        qc_sampler_free(s);
    }
    CHECK("greedy/temperature-0-is-argmax", bad_t0 == 0, "%d of 200 rows differ", bad_t0);
    CHECK("greedy/top-k-1-is-greedy", bad_k1 == 0, "%d of 200 rows differ", bad_k1);
    CHECK("greedy/temperature-to-0-behaves-greedy", bad_cold == 0, "%d of 200 rows differ", bad_cold);
    /* ties: the lowest id */
    float t[5] = {1, 3, 3, 2, 3};
    qc_sample_params p;
    qc_sample_params_init(&p);
    p.temperature = 0;
    qc_sampler *s = new_sampler(&p, 5);
    CHECK("greedy/tie-lowest-id", qc_sampler_sample(s, t, 5) == 1, "got %d", qc_sampler_sample(s, t, 5));
    qc_sampler_free(s);
}

static void test_truncations(void)
{
    enum { V = 400 };
    float l[V];
    struct {
        const char *name;
        float t, top_p, min_p;
        int top_k;
    } cases[] = {
        {"truncate/plain-softmax", 1.0f, 1.0f, 0.0f, 0},
        {"truncate/temperature-0.6", 0.6f, 1.0f, 0.0f, 0},
        {"truncate/top-k-20", 1.0f, 1.0f, 0.0f, 20},
        {"truncate/top-p-0.9-smallest-prefix", 1.0f, 0.9f, 0.0f, 0},
        {"truncate/top-p-0.3", 0.7f, 0.3f, 0.0f, 0},
        {"truncate/min-p-0.05", 1.0f, 1.0f, 0.05f, 0},
        {"truncate/top-k-20-top-p-0.95", 0.6f, 0.95f, 0.0f, 20},
        {"truncate/all-three", 0.8f, 0.8f, 0.1f, 50},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int bad = 0;
        char why[256] = "";
        for (int trial = 0; trial < 60; trial++) {
            rand_logits(l, V, trial % 2 ? 3.0 : 10.0);
            qc_sample_params p;
            qc_sample_params_init(&p);
            p.temperature = cases[c].t;
            p.top_p = cases[c].top_p;
            p.min_p = cases[c].min_p;
            p.top_k = cases[c].top_k;
            qc_sampler *s = new_sampler(&p, V);
            char w[256];
            if (!probs_match(s, &p, l, V, V, NULL, w, sizeof w)) {
                if (!bad++)
                    snprintf(why, sizeof why, "%s", w);
            }
            qc_sampler_free(s);
        }
        CHECK(cases[c].name, bad == 0, "%d of 60 rows: %s", bad, why);
    }
    /* Sanity of the reference itself on a hand case: probs .5 .3 .15 .05,
     * top-p 0.79 keeps exactly the first two; top-p 0.81 the first three;
     * min-p 0.35 drops those below 0.35 * 0.5. */
    float h[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    qc_sample_params p;
    qc_sample_params_init(&p);
    p.top_p = 0.79f;
    qc_sampler *s = new_sampler(&p, 4);
    float pr[4];
    int n1 = qc_sampler_probs(s, h, 4, pr);
    qc_sampler_free(s);
    p.top_p = 0.81f;
    s = new_sampler(&p, 4);
    int n2 = qc_sampler_probs(s, h, 4, pr);
    qc_sampler_free(s);
    p.top_p = 1.0f;
    p.min_p = 0.35f;
    s = new_sampler(&p, 4);
    int n3 = qc_sampler_probs(s, h, 4, pr);
    qc_sampler_free(s);
    CHECK("truncate/hand-case", n1 == 2 && n2 == 3 && n3 == 2 && fabsf(pr[0] - 0.625f) < 1e-6f,
          "top-p .79 kept %d (want 2), .81 kept %d (want 3), min-p .35 kept %d (want 2), p0 %g", n1, n2,
          n3, (double)pr[0]);
}

/* Big vocabulary where the top-p nucleus is large: the threshold pre-filter
 * must widen until it holds the mass and still find the exact prefix. */
static void test_big_vocab(void)
{
    enum { V = 150000 };
    float *l = malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++) l[i] = -8.0f + (float)(urand() * 0.5);
    l[77] = 0.0f;
    l[123456] = 1.0f;
    qc_sample_params p;
    qc_sample_params_init(&p);
    p.top_p = 0.9f;
    qc_sampler *s = new_sampler(&p, V);
    char why[256] = "";
    bool ok = probs_match(s, &p, l, V, V, NULL, why, sizeof why);
    CHECK("truncate/top-p-wide-nucleus-150k", ok, "%s", why);
    qc_sampler_free(s);
    p.top_p = 0.5f;
    p.min_p = 0.0f;
    for (int i = 0; i < V; i++) l[i] = (float)(urand() * 12.0);
    s = new_sampler(&p, V);
    ok = probs_match(s, &p, l, V, V, NULL, why, sizeof why);
    CHECK("truncate/top-p-narrow-150k", ok, "%s", why);
    qc_sampler_free(s);
    free(l);
}

/* Empirical frequencies of many draws match the distribution. */
static void test_frequencies(void)
{
    enum { V = 8, DRAWS = 200000 };
    float l[V] = {1.0f, 0.5f, 2.0f, -1.0f, 0.0f, 1.5f, -3.0f, 0.7f};
    struct {
        const char *name;
        float t, top_p;
        int top_k;
    } cases[] = {{"frequency/softmax-t1", 1.0f, 1.0f, 0},
                 {"frequency/t0.7-top-k-4", 0.7f, 1.0f, 4},
                 {"frequency/top-p-0.7", 1.0f, 0.7f, 0}};
    for (int c = 0; c < 3; c++) {
        qc_sample_params p;
        qc_sample_params_init(&p);
        p.temperature = cases[c].t;
        p.top_p = cases[c].top_p;
        p.top_k = cases[c].top_k;
        p.seed = 42 + (uint64_t)c;
        double want[V];
        ref_probs(&p, l, V, V, NULL, want);
        qc_sampler *s = new_sampler(&p, V);
        int cnt[V] = {0};
        for (int i = 0; i < DRAWS; i++) cnt[qc_sampler_sample(s, l, V)]++;
        qc_sampler_free(s);
        double worst = 0;
        int never_bad = 0;
        for (int i = 0; i < V; i++) {
            double f = (double)cnt[i] / DRAWS, sd = sqrt(want[i] * (1 - want[i]) / DRAWS);
            double z = sd > 0 ? fabs(f - want[i]) / sd : 0;
            if (z > worst)
                worst = z;
            if (want[i] == 0 && cnt[i])
                never_bad++;
        }
        CHECK(cases[c].name, worst < 5.0 && never_bad == 0,
              "worst deviation %.2f sigma; %d removed ids drawn", worst, never_bad);
    }
}

static void test_penalties(void)
{
    enum { V = 50 };
    float l[V];
    int bad = 0;
    char why[256] = "";
    for (int trial = 0; trial < 50; trial++) {
        rand_logits(l, V, 4.0);
        qc_sample_params p;
        qc_sample_params_init(&p);
        p.repetition_penalty = trial % 3 == 0 ? 1.0f : 1.3f;
        p.presence_penalty = trial % 2 ? 0.5f : 0.0f;
        p.frequency_penalty = trial % 5 == 0 ? 0.2f : 0.0f;
        p.temperature = 0.9f;
        qc_sampler *s = new_sampler(&p, V);
        int counts[V] = {0};
        for (int j = 0; j < 12; j++) {
            int id = (int)(urand() * 10); /* repeats guaranteed */
            counts[id]++;
            qc_sampler_accept(s, id);
        }
        qc_sampler_accept(s, -3);  /* ignored */
        qc_sampler_accept(s, 999); /* ignored */
        char w[256];
        if (!probs_match(s, &p, l, V, V, counts, w, sizeof w) && !bad++)
            snprintf(why, sizeof why, "%s", w);
        qc_sampler_free(s);
    }
    CHECK("penalty/formulas", bad == 0, "%d of 50: %s", bad, why);
    /* Direction: repetition divides a positive logit and multiplies a negative one. */
    float h[3] = {2.0f, -1.0f, 0.0f};
    qc_sample_params p;
    qc_sample_params_init(&p);
    p.repetition_penalty = 2.0f;
    qc_sampler *s = new_sampler(&p, 3);
    qc_sampler_accept(s, 0);
    qc_sampler_accept(s, 1);
    qc_sampler_accept(s, 0);
    float pr[3];
    qc_sampler_probs(s, h, 3, pr);
    double z = exp(1.0) + exp(-2.0) + 1.0;
    CHECK("penalty/repetition-direction",
          fabs(pr[0] - exp(1.0) / z) < 1e-6 && fabs(pr[1] - exp(-2.0) / z) < 1e-6,
          "p = %g %g %g", (double)pr[0], (double)pr[1], (double)pr[2]);
    /* Greedy still sees the penalties; reset forgets the history. */
    p.temperature = 0;
    p.presence_penalty = 3.0f;
    qc_sampler_free(s);
    s = new_sampler(&p, 3);
    qc_sampler_accept(s, 0);
    int after = qc_sampler_sample(s, h, 3);
    qc_sampler_reset(s, 1);
    int reset = qc_sampler_sample(s, h, 3);
    CHECK("penalty/greedy-and-reset", after == 2 && reset == 0, "after penalty %d (want 2), after reset %d (want 0)",
          after, reset);
    qc_sampler_free(s);
}

static void test_determinism(void)
{
    enum { V = 200, STEPS = 64 };
    float *rows = malloc(sizeof(float) * V * STEPS);
    rand_logits(rows, V * STEPS, 3.0);
    qc_sample_params p;
    qc_sample_params_init(&p);
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    p.top_k = 40;
    p.repetition_penalty = 1.1f;
    int a[STEPS], b[STEPS], c[STEPS], same_ab = 1, diff_ac = 0;
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 7 : 12345;
        qc_sampler *s = new_sampler(&p, V);
        int *out = run == 0 ? a : run == 1 ? b : c;
        for (int t = 0; t < STEPS; t++) out[t] = qc_sampler_next(s, rows + t * V, V);
        qc_sampler_free(s);
    }
    for (int t = 0; t < STEPS; t++) {
        same_ab &= a[t] == b[t];
        diff_ac += a[t] != c[t];
    }
    CHECK("seed/same-seed-same-tokens", same_ab, "two runs with seed 12345 differ");
    CHECK("seed/other-seed-other-tokens", diff_ac > 0, "seeds 12345 and 7 gave identical sequences");
    /* reset(seed) replays the stream */
    p.seed = 12345;
    qc_sampler *s = new_sampler(&p, V);
    for (int t = 0; t < 10; t++) qc_sampler_next(s, rows + t * V, V);
    qc_sampler_reset(s, 12345);
    int replay = 1;
    for (int t = 0; t < STEPS; t++) replay &= qc_sampler_next(s, rows + t * V, V) == a[t];
    CHECK("seed/reset-replays", replay, "reset to the same seed gave other tokens");
    qc_sampler_free(s);
    free(rows);
}

static void test_vocab_bounds(void)
{
    enum { V = 16, NT = 10 };
    float l[V];
    for (int i = 0; i < V; i++) l[i] = i < NT ? 0.0f : 50.0f; /* padding rows look best */
    l[4] = NAN;
    qc_sample_params p;
    qc_sample_params_init(&p);
    p.temperature = 1.5f;
    qc_sampler *s = new_sampler(&p, NT);
    int out = 0;
    for (int i = 0; i < 20000; i++) {
        int id = qc_sampler_sample(s, l, V);
        out += id < 0 || id >= NT || id == 4;
    }
    float pr[V];
    qc_sampler_probs(s, l, V, pr);
    qc_sampler_free(s);
    p.temperature = 0;
    s = new_sampler(&p, NT);
    int g = qc_sampler_sample(s, l, V);
    qc_sampler_free(s);
    CHECK("bounds/ids-beyond-tokenizer-never-drawn", out == 0 && g >= 0 && g < NT && pr[12] == 0 && pr[4] == 0,
          "%d bad draws, greedy %d, p[12] %g, p[NaN id] %g", out, g, (double)pr[12], (double)pr[4]);
    float none[3] = {-INFINITY, NAN, -INFINITY};
    p.temperature = 1.0f;
    s = new_sampler(&p, 3);
    CHECK("bounds/nothing-drawable", qc_sampler_sample(s, none, 3) == -1, "expected -1");
    qc_sampler_free(s);
}

static void test_params(void)
{
    qc_sample_params p;
    qc_err err = {0};
    qc_sample_params_init(&p);
    int ok = qc_sample_params_check(&p, &err) == QC_OK;
    p.top_p = 0.0f;
    int r1 = qc_sample_params_check(&p, &err);
    qc_sample_params_init(&p);
    p.temperature = -1;
    int r2 = qc_sample_params_check(&p, &err);
    qc_sample_params_init(&p);
    p.repetition_penalty = 0;
    int r3 = qc_sample_params_check(&p, &err);
    qc_sample_params_init(&p);
    p.min_p = 1.5f;
    int r4 = qc_sample_params_check(&p, &err);
    CHECK("params/check", ok && r1 == QC_EXIT_USAGE && r2 == QC_EXIT_USAGE && r3 == QC_EXIT_USAGE &&
                              r4 == QC_EXIT_USAGE && strstr(err.msg, "min-p"),
          "defaults ok=%d, rejects: top_p 0 -> %d, temperature -1 -> %d, rep 0 -> %d, min_p 1.5 -> %d (%s)", ok,
          r1, r2, r3, r4, err.msg);
}

/* generation_config.json's values over the defaults, the same for `run`
 * and the TUI: greedy unless do_sample is true, as transformers reads it. */
static void test_gen_config(void)
{
    qc_gen_config g;
    memset(&g, 0, sizeof g);
    g.present = g.has_temperature = g.has_top_k = g.has_presence_penalty = true;
    g.temperature = 0.6f;
    g.top_k = 20;
    g.presence_penalty = 1.5f;
    qc_sample_params p;
    qc_sample_params_init(&p);
    qc_sample_params_apply_gen(&p, &g); /* no do_sample: greedy, the rest applied */
    CHECK("gen_no_do_sample_greedy", p.temperature == 0 && p.top_k == 20 && p.presence_penalty == 1.5f,
          "temperature %g top_k %d presence %g", (double)p.temperature, p.top_k, (double)p.presence_penalty);
    g.do_sample = true;
    qc_sample_params_init(&p);
    qc_sample_params_apply_gen(&p, &g);
    CHECK("gen_do_sample", p.temperature == 0.6f && p.top_p == 1.0f && p.repetition_penalty == 1.0f,
          "temperature %g top_p %g", (double)p.temperature, (double)p.top_p);
    g.present = false;
    qc_sample_params_init(&p);
    qc_sample_params_apply_gen(&p, &g);
    CHECK("gen_absent_untouched", p.temperature == 1.0f && p.top_k == 0 && p.presence_penalty == 0,
          "temperature %g", (double)p.temperature);
}

int main(void)
{
    test_gen_config();
    test_greedy();
    test_truncations();
    test_big_vocab();
    test_frequencies();
    test_penalties();
    test_determinism();
    test_vocab_bounds();
    test_params();
    return th_exit();
}
