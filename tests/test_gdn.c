/* test_gdn.c — the chunked Gated DeltaNet form against the token-by-token
 * recurrence on random data with a non-zero initial state (T = 63, 64, 65, 130:
 * below, at and across the 64-token chunk boundary), the hand-off from a
 * chunked prefill into recurrent decode, the V-head -> K-head mapping
 * (Hv/Hk = 3) against a hand-written direct formula, and strong decays
 * (exponents stay <= 0: no inf/nan). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "harness.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) /* uniform (0,1) */
{
    return ((th_xorshift(&rng) >> 40) + 0.5f) / 16777216.0f;
}
static float nrand(void) { return sqrtf(-2 * logf(frand())) * cosf(6.2831853f * frand()); }

typedef struct data {
    cpu_gdn_dims d;
    int T;
    float *q, *k, *v, *g, *beta, *S0;
} data;

static void l2norm_rows(float *x, int rows, int n, float scale)
{
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += (double)x[r * n + i] * x[r * n + i];
        float inv = (float)(1.0 / sqrt(ss + 1e-6)) * scale;
        for (int i = 0; i < n; i++)
            x[r * n + i] *= inv;
    }
}

static data make(int T, float decay_scale)
{
    data x = {{2, 6, 16, 24}, T, 0, 0, 0, 0, 0, 0};
    const cpu_gdn_dims *d = &x.d;
    x.q = malloc(sizeof(float) * T * d->hk * d->dk);
    x.k = malloc(sizeof(float) * T * d->hk * d->dk);
    x.v = malloc(sizeof(float) * T * d->hv * d->dv);
    x.g = malloc(sizeof(float) * T * d->hv);
    x.beta = malloc(sizeof(float) * T * d->hv);
    x.S0 = malloc(sizeof(float) * d->hv * d->dk * d->dv);
    for (int i = 0; i < T * d->hk * d->dk; i++) {
        x.q[i] = nrand();
        x.k[i] = nrand();
    }
    l2norm_rows(x.q, T * d->hk, d->dk, 1.0f / sqrtf((float)d->dk));
    l2norm_rows(x.k, T * d->hk, d->dk, 1.0f);
    for (int i = 0; i < T * d->hv * d->dv; i++)
        x.v[i] = nrand();
    for (int i = 0; i < T * d->hv; i++) {
        /* g = -exp(A_log) * softplus(alpha + dt_bias), as the model forms it */
        x.g[i] = -expf(0.5f * nrand()) * cpu_softplus(nrand()) * decay_scale;
        x.beta[i] = cpu_sigmoid(nrand());
    }
    for (int i = 0; i < d->hv * d->dk * d->dv; i++)
        x.S0[i] = 0.3f * nrand();
    return x;
}

static void drop(data *x)
{
    free(x->q);
    free(x->k);
    free(x->v);
    free(x->g);
    free(x->beta);
    free(x->S0);
}

/* Direct reading of §3.2 step 7 for one head, written independently of the
 * library: S <- e^g S; u = b (v - S^T k); S <- S + k u^T; o = S^T q. */
static void reference(const data *x, float *S, float *o)
{
    const cpu_gdn_dims *d = &x->d;
    int rep = d->hv / d->hk;
    for (int t = 0; t < x->T; t++)
        for (int h = 0; h < d->hv; h++) {
            int kh = h / rep;
            const float *q = x->q + (t * d->hk + kh) * d->dk, *k = x->k + (t * d->hk + kh) * d->dk;
            const float *v = x->v + (t * d->hv + h) * d->dv;
            float *Sh = S + h * d->dk * d->dv;
            double e = exp(x->g[t * d->hv + h]), b = x->beta[t * d->hv + h];
            for (int i = 0; i < d->dk * d->dv; i++)
                Sh[i] = (float)(Sh[i] * e);
            for (int j = 0; j < d->dv; j++) {
                double sk = 0;
                for (int i = 0; i < d->dk; i++)
                    sk += (double)Sh[i * d->dv + j] * k[i];
                double u = b * (v[j] - sk);
                for (int i = 0; i < d->dk; i++)
                    Sh[i * d->dv + j] = (float)(Sh[i * d->dv + j] + k[i] * u);
            }
            for (int j = 0; j < d->dv; j++) {
                double s = 0;
                for (int i = 0; i < d->dk; i++)
                    s += (double)Sh[i * d->dv + j] * q[i];
                o[(t * d->hv + h) * d->dv + j] = (float)s;
            }
        }
}

int main(void)
{
    cpu_pool *pool = cpu_pool_new(2);
    const int Ts[] = {63, 64, 65, 130};
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
        int T = Ts[ti];
        data x = make(T, 1.0f);
        const cpu_gdn_dims *d = &x.d;
        size_t ns = (size_t)d->hv * d->dk * d->dv, no = (size_t)T * d->hv * d->dv;
        float *Sr = malloc(ns * 4), *Sc = malloc(ns * 4), *Sd = malloc(ns * 4);
        float *orr = malloc(no * 4), *oc = malloc(no * 4), *od = malloc(no * 4);
        memcpy(Sr, x.S0, ns * 4);
        memcpy(Sc, x.S0, ns * 4);
        memcpy(Sd, x.S0, ns * 4);
        cpu_gdn_recurrent(d, T, x.q, x.k, x.v, x.g, x.beta, Sr, orr);
        bool okc = cpu_gdn_chunked(pool, d, T, x.q, x.k, x.v, x.g, x.beta, Sc, oc);
        reference(&x, Sd, od);
        char name[96];
        double eo = th_rel_l2(oc, orr, no), es = th_rel_l2(Sc, Sr, ns);
        snprintf(name, sizeof name, "gdn_chunked_vs_recurrent_T%d", T);
        CHECK(name, okc && eo < 1e-5 && es < 1e-5, "output rel %.3g state rel %.3g", eo, es);
        double er = th_rel_l2(orr, od, no), esr = th_rel_l2(Sr, Sd, ns);
        snprintf(name, sizeof name, "gdn_recurrent_vs_direct_T%d", T);
        CHECK(name, er < 1e-5 && esr < 1e-5, "output rel %.3g state rel %.3g", er, esr);

        /* Hand-off: a chunked prefill of the first T-5 tokens, then 5 recurrent
         * steps from its state, equals the whole recurrence. */
        int T1 = T - 5;
        memcpy(Sc, x.S0, ns * 4);
        cpu_gdn_chunked(pool, d, T1, x.q, x.k, x.v, x.g, x.beta, Sc, oc);
        for (int t = T1; t < T; t++)
            cpu_gdn_recurrent(d, 1, x.q + t * d->hk * d->dk, x.k + t * d->hk * d->dk,
                              x.v + t * d->hv * d->dv, x.g + t * d->hv, x.beta + t * d->hv, Sc,
                              oc + t * d->hv * d->dv);
        eo = th_rel_l2(oc, orr, no);
        es = th_rel_l2(Sc, Sr, ns);
        snprintf(name, sizeof name, "gdn_prefill_to_decode_handoff_T%d", T);
        CHECK(name, eo < 1e-5 && es < 1e-5, "output rel %.3g state rel %.3g", eo, es);

        /* Uneven chunks (37 then the rest) from the same state. */
        memcpy(Sc, x.S0, ns * 4);
        int a = T < 37 ? T : 37;
        cpu_gdn_chunked(pool, d, a, x.q, x.k, x.v, x.g, x.beta, Sc, oc);
        cpu_gdn_chunked(pool, d, T - a, x.q + a * d->hk * d->dk, x.k + a * d->hk * d->dk,
                        x.v + a * d->hv * d->dv, x.g + a * d->hv, x.beta + a * d->hv, Sc,
                        oc + a * d->hv * d->dv);
        eo = th_rel_l2(oc, orr, no);
        snprintf(name, sizeof name, "gdn_split_prefill_T%d", T);
        CHECK(name, eo < 1e-5, "output rel %.3g", eo);
        free(Sr);
        free(Sc);
        free(Sd);
        free(orr);
        free(oc);
        free(od);
        drop(&x);
    }

    /* Strong decays: cumulative log-decay reaches about -2000 inside a chunk.
     * A form dividing by e^gamma would overflow; this one must stay finite and
     * match the recurrence. */
    {
        data x = make(130, 30.0f);
        const cpu_gdn_dims *d = &x.d;
        size_t ns = (size_t)d->hv * d->dk * d->dv, no = (size_t)130 * d->hv * d->dv;
        float *Sr = malloc(ns * 4), *Sc = malloc(ns * 4), *orr = malloc(no * 4), *oc = malloc(no * 4);
        memcpy(Sr, x.S0, ns * 4);
        memcpy(Sc, x.S0, ns * 4);
        cpu_gdn_recurrent(d, 130, x.q, x.k, x.v, x.g, x.beta, Sr, orr);
        cpu_gdn_chunked(pool, d, 130, x.q, x.k, x.v, x.g, x.beta, Sc, oc);
        double eo = th_rel_l2(oc, orr, no), es = th_rel_l2(Sc, Sr, ns);
        CHECK("gdn_strong_decay_finite", isfinite(eo) && eo < 1e-5 && es < 1e-5,
              "output rel %.3g state rel %.3g", eo, es);
        free(Sr);
        free(Sc);
        free(orr);
        free(oc);
        drop(&x);
    }
    cpu_pool_free(pool);
    return th_exit();
}
