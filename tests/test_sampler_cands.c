/* test_sampler_cands.c — drawing from a candidate set (what device sampling
 * copies back: the largest penalised logits, ties by lower id) gives the same
 * tokens, random stream included, as drawing from the full row, over many
 * random rows, seeds and parameter sets (ties, NaN and -inf entries, ids
 * beyond the tokenizer, penalties over a growing history). */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "sampler.h"

static uint64_t rs = 0x243F6A8885A308D3ull;
static double urand(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}
static int irand(int n) { return (int)(urand() * n); }

/* The penalised row as sampler.h defines it (NaN -> -inf first). */
static void ref_penalise(const qc_sampler *s, const float *in, float *out, int nv)
{
    const qc_sample_params *p = qc_sampler_params(s);
    for (int i = 0; i < nv; i++) out[i] = isnan(in[i]) ? -INFINITY : in[i];
    const int32_t *seen, *count;
    int ns = qc_sampler_history(s, &seen, &count);
    for (int j = 0; j < ns; j++) {
        int id = seen[j];
        if (id >= nv)
            continue;
        float v = out[id];
        if (p->repetition_penalty != 1.0f)
            v = v > 0.0f ? v / p->repetition_penalty : v * p->repetition_penalty;
        v -= p->presence_penalty;
        v -= p->frequency_penalty * (float)count[id];
        out[id] = v;
    }
}

static const float *g_row;
static int by_value(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    if (g_row[x] != g_row[y])
        return g_row[x] > g_row[y] ? -1 : 1;
    return (x > y) - (x < y);
}

int main(void)
{
    const int VMAX = 3000;
    float *row = malloc(sizeof(float) * VMAX), *pen = malloc(sizeof(float) * VMAX);
    float *cv = malloc(sizeof(float) * VMAX);
    int *idx = malloc(sizeof(int) * VMAX);
    int32_t *ci = malloc(sizeof(int32_t) * VMAX);
    static const float temps[] = {0.0f, 0.01f, 0.3f, 0.7f, 1.0f, 1.5f, 1e7f}; /* 1e7: probabilities tie across distinct logits */
    static const int topks[] = {0, 1, 2, 5, 20, 50, 200, 1024};
    static const float topps[] = {1.0f, 0.9f, 0.5f};
    static const float minps[] = {0.0f, 0.05f};
    static const float reps[] = {1.0f, 1.3f, 0.8f};
    long draws = 0, partial_decided = 0, undecided = 0, undecided_noties = 0, full_rows = 0, mismatches = 0;
    char first_bad[200] = "";
    for (int trial = 0; trial < 600; trial++) {
        int V = 300 + irand(VMAX - 300), n_tokens = V - irand(20);
        int mode = irand(4); /* 0 plain, 1 coarse ties, 2 NaN/-inf sprinkled, 3 mostly -inf */
        qc_sample_params p;
        qc_sample_params_init(&p);
        p.temperature = temps[irand(7)];
        p.top_k = topks[irand(8)];
        p.top_p = topps[irand(3)];
        p.min_p = minps[irand(2)];
        p.repetition_penalty = reps[irand(3)];
        p.presence_penalty = irand(2) ? 0.5f : 0.0f;
        p.frequency_penalty = irand(2) ? 0.2f : 0.0f;
        p.seed = (uint64_t)trial * 7919u + 1;
        qc_sampler *a, *b;
        qc_err err;
        if (qc_sampler_new(&p, n_tokens, &a, &err) || qc_sampler_new(&p, n_tokens, &b, &err)) {
            CHECK("cands/new", 0, "%s", err.msg);
            return th_exit();
        }
        double spread = 2.0 + urand() * 12.0;
        for (int step = 0; step < 8; step++) {
            for (int i = 0; i < V; i++) {
                float x = (float)((urand() * 2.0 - 1.0) * spread);
                if (mode == 1)
                    x = roundf(x * 2.0f) / 2.0f;
                else if (mode == 2 && irand(50) == 0)
                    x = irand(2) ? NAN : -INFINITY;
                else if (mode == 3 && irand(100) != 0)
                    x = -INFINITY;
                row[i] = x;
            }
            /* Favour already generated ids so the penalties decide things. */
            const int32_t *seen, *cnt;
            int ns = qc_sampler_history(b, &seen, &cnt);
            for (int j = 0; j < ns && mode != 3; j++)
                if (irand(3) == 0 && seen[j] < V)
                    row[seen[j]] = (float)(spread * (0.8 + 0.2 * urand()));
            int32_t want = qc_sampler_next(a, row, V);
            int nv = V < n_tokens ? V : n_tokens;
            int C = qc_sampler_candidates_wanted(b);
            int32_t got = -1;
            bool decided = false;
            if (C > 0) {
                ref_penalise(b, row, pen, nv);
                int m = 0;
                for (int i = 0; i < nv; i++)
                    if (pen[i] > -INFINITY)
                        idx[m++] = i;
                g_row = pen;
                qsort(idx, (size_t)m, sizeof *idx, by_value);
                bool partial = m > C;
                if (m > C)
                    m = C;
                for (int i = 0; i < m; i++) { /* any order */
                    int j = i + irand(m - i), t = idx[i];
                    idx[i] = idx[j];
                    idx[j] = t;
                }
                for (int i = 0; i < m; i++) {
                    ci[i] = idx[i];
                    cv[i] = pen[idx[i]];
                }
                int rc = qc_sampler_sample_candidates(b, cv, ci, m, partial, &got);
                if (rc == QC_OK) {
                    decided = true;
                    partial_decided += partial;
                } else if (rc == QC_SAMPLER_UNDECIDED) {
                    undecided++;
                    undecided_noties += mode == 0;
                } else {
                    snprintf(first_bad, sizeof first_bad, "trial %d: unexpected rc %d", trial, rc);
                }
            }
            if (!decided) {
                full_rows++;
                got = qc_sampler_sample(b, row, V);
            }
            if (got >= 0)
                qc_sampler_accept(b, got);
            draws++;
            if (got != want) {
                if (!mismatches)
                    snprintf(first_bad, sizeof first_bad,
                             "trial %d step %d (T %g k %d p %g minp %g mode %d): full row %d, candidates %d",
                             trial, step, (double)p.temperature, p.top_k, (double)p.top_p,
                             (double)p.min_p, mode, (int)want, (int)got);
                mismatches++;
            }
        }
        qc_sampler_free(a);
        qc_sampler_free(b);
    }
    printf("# %ld draws: %ld from partial candidate sets, %ld undecided (%ld without ties), %ld full rows\n",
           draws, partial_decided, undecided, undecided_noties, full_rows);
    CHECK("cands/same-token-as-full-row", mismatches == 0 && !first_bad[0], "%ld mismatches; %s", mismatches,
          first_bad);
    CHECK("cands/partial-sets-exercised", partial_decided > draws / 4, "only %ld of %ld", partial_decided, draws);
    CHECK("cands/undecided-rare-without-ties", undecided_noties * 100 <= draws, "%ld of %ld", undecided_noties,
          draws);

    /* The policy: greedy needs 1, top-k off needs the row, else max(64, 2k). */
    qc_sample_params p;
    qc_sample_params_init(&p);
    qc_sampler *s;
    qc_err err;
    int ok = 1;
    p.top_k = 0;
    qc_sampler_new(&p, 100, &s, &err);
    ok &= qc_sampler_candidates_wanted(s) == 0;
    qc_sampler_free(s);
    p.top_k = 20;
    qc_sampler_new(&p, 100, &s, &err);
    ok &= qc_sampler_candidates_wanted(s) == 64;
    qc_sampler_free(s);
    p.top_k = 1000;
    qc_sampler_new(&p, 100, &s, &err);
    ok &= qc_sampler_candidates_wanted(s) == 2000;
    qc_sampler_free(s);
    p.top_k = 2000;
    qc_sampler_new(&p, 100, &s, &err);
    ok &= qc_sampler_candidates_wanted(s) == 0;
    qc_sampler_free(s);
    p.top_k = 0;
    p.temperature = 0.0f;
    qc_sampler_new(&p, 100, &s, &err);
    ok &= qc_sampler_candidates_wanted(s) == 1;
    qc_sampler_free(s);
    CHECK("cands/policy", ok, "candidate counts differ from sampler.h");
    free(row);
    free(pen);
    free(cv);
    free(idx);
    free(ci);
    return th_exit();
}
