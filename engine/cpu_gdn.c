/* cpu_gdn.c — the Gated DeltaNet delta rule on the CPU in float32: the
 * token-by-token recurrence (decode) and the chunked form (prefill) of
 * qwen35-model.md §3.2. Both keep S[h] as [dk][dv] row-major, and every
 * exponent they take is <= 0 (cumulative log-decays only ever subtracted from
 * a later one), so nothing overflows however long the chunk decays. */
#include "cpu_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void cpu_gdn_recurrent(const cpu_gdn_dims *d, int T, const float *q, const float *k,
                       const float *v, const float *g, const float *beta, float *S, float *o)
{
    const int dk = d->dk, dv = d->dv, rep = d->hv / d->hk;
    float u[dv > 0 ? dv : 1];
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < d->hv; h++) {
            const int kh = h / rep;
            const float *qt = q + ((size_t)t * d->hk + kh) * dk;
            const float *kt = k + ((size_t)t * d->hk + kh) * dk;
            const float *vt = v + ((size_t)t * d->hv + h) * dv;
            float *Sh = S + (size_t)h * dk * dv;
            float *ot = o + ((size_t)t * d->hv + h) * dv;
            const float decay = expf(g[(size_t)t * d->hv + h]);
            const float b = beta[(size_t)t * d->hv + h];
            /* S <- e^g S; u = b (v - S^T k) */
            for (int j = 0; j < dv; j++)
                u[j] = 0;
            for (int i = 0; i < dk; i++) {
                float *Si = Sh + (size_t)i * dv;
                for (int j = 0; j < dv; j++) {
                    Si[j] *= decay;
                    u[j] += Si[j] * kt[i];
                }
            }
            for (int j = 0; j < dv; j++)
                u[j] = b * (vt[j] - u[j]);
            /* S <- S + k u^T; o = S^T q (after the update) */
            for (int j = 0; j < dv; j++)
                ot[j] = 0;
            for (int i = 0; i < dk; i++) {
                float *Si = Sh + (size_t)i * dv;
                for (int j = 0; j < dv; j++) {
                    Si[j] += kt[i] * u[j];
                    ot[j] += Si[j] * qt[i];
                }
            }
        }
    }
}

typedef struct gdn_ctx {
    const cpu_gdn_dims *d;
    int T;
    const float *q, *k, *v, *g, *beta;
    float *S, *o, *scratch;
    size_t scratch_per_head;
} gdn_ctx;

enum { C = CPU_GDN_CHUNK };

/* One V head over all chunks, in order. */
static void gdn_head(void *vctx, int h, int worker)
{
    (void)worker;
    const gdn_ctx *c = vctx;
    const cpu_gdn_dims *d = c->d;
    const int dk = d->dk, dv = d->dv, hk = d->hk, hv = d->hv, kh = h / (hv / hk);
    float *Sh = c->S + (size_t)h * dk * dv;
    float *A = c->scratch + (size_t)h * c->scratch_per_head; /* [C][C]  */
    float *U = A + C * C;                                    /* [C][dv] */
    float *W = U + (size_t)C * dv;                           /* [C][dk] */
    float *gam = W + (size_t)C * dk;                         /* [C]     */
    float *b = gam + C;                                      /* [C]     */
#define QROW(t) (c->q + ((size_t)(t) * hk + kh) * dk)
#define KROW(t) (c->k + ((size_t)(t) * hk + kh) * dk)
#define VROW(t) (c->v + ((size_t)(t) * hv + h) * dv)
#define OROW(t) (c->o + ((size_t)(t) * hv + h) * dv)
    for (int c0 = 0; c0 < c->T; c0 += C) {
        /* A partial last chunk is the zero-padded one of §3.2 with the padding
         * dropped: padded rows have beta = 0 and g = 0 and contribute nothing. */
        const int L = c->T - c0 < C ? c->T - c0 : C;
        float acc = 0;
        for (int i = 0; i < L; i++) {
            acc += c->g[(size_t)(c0 + i) * hv + h];
            gam[i] = acc;
            b[i] = c->beta[(size_t)(c0 + i) * hv + h];
        }
        /* A_ij = b_i (k_i . k_j) e^{gam_i - gam_j}, i > j */
        for (int i = 0; i < L; i++)
            for (int j = 0; j < i; j++)
                A[i * C + j] = b[i] * cpu_dot(KROW(c0 + i), KROW(c0 + j), dk) * expf(gam[i] - gam[j]);
        /* (I + A) U = diag(b) V and (I + A) W = diag(b e^gam) K by forward
         * substitution: T = (I+A)^-1 is never formed. */
        for (int i = 0; i < L; i++) {
            float *Ui = U + (size_t)i * dv, *Wi = W + (size_t)i * dk;
            const float *vi = VROW(c0 + i), *ki = KROW(c0 + i);
            const float bw = b[i] * expf(gam[i]);
            for (int j = 0; j < dv; j++)
                Ui[j] = b[i] * vi[j];
            for (int a = 0; a < dk; a++)
                Wi[a] = bw * ki[a];
            for (int j = 0; j < i; j++) {
                const float aij = A[i * C + j];
                const float *Uj = U + (size_t)j * dv, *Wj = W + (size_t)j * dk;
                for (int x = 0; x < dv; x++)
                    Ui[x] -= aij * Uj[x];
                for (int a = 0; a < dk; a++)
                    Wi[a] -= aij * Wj[a];
            }
        }
        /* V' = U - W S (in place in U) */
        for (int i = 0; i < L; i++) {
            float *Ui = U + (size_t)i * dv;
            const float *Wi = W + (size_t)i * dk;
            for (int a = 0; a < dk; a++) {
                const float wa = Wi[a];
                const float *Sa = Sh + (size_t)a * dv;
                for (int x = 0; x < dv; x++)
                    Ui[x] -= wa * Sa[x];
            }
        }
        /* O_i = e^{gam_i} q_i^T S + sum_{j<=i} (q_i . k_j) e^{gam_i - gam_j} V'_j */
        for (int i = 0; i < L; i++) {
            float *oi = OROW(c0 + i);
            const float *qi = QROW(c0 + i);
            const float eg = expf(gam[i]);
            for (int x = 0; x < dv; x++)
                oi[x] = 0;
            for (int a = 0; a < dk; a++) {
                const float qa = qi[a] * eg;
                const float *Sa = Sh + (size_t)a * dv;
                for (int x = 0; x < dv; x++)
                    oi[x] += qa * Sa[x];
            }
            for (int j = 0; j <= i; j++) {
                const float p = cpu_dot(qi, KROW(c0 + j), dk) * expf(gam[i] - gam[j]);
                const float *Vj = U + (size_t)j * dv;
                for (int x = 0; x < dv; x++)
                    oi[x] += p * Vj[x];
            }
        }
        /* S <- e^{gam_L} S + sum_j e^{gam_L - gam_j} k_j V'_j^T */
        const float gl = gam[L - 1], el = expf(gl);
        for (int a = 0; a < dk; a++) {
            float *Sa = Sh + (size_t)a * dv;
            for (int x = 0; x < dv; x++)
                Sa[x] *= el;
        }
        for (int j = 0; j < L; j++) {
            const float *kj = KROW(c0 + j), *Vj = U + (size_t)j * dv;
            const float e = expf(gl - gam[j]);
            for (int a = 0; a < dk; a++) {
                const float ka = kj[a] * e;
                float *Sa = Sh + (size_t)a * dv;
                for (int x = 0; x < dv; x++)
                    Sa[x] += ka * Vj[x];
            }
        }
    }
#undef QROW
#undef KROW
#undef VROW
#undef OROW
}

bool cpu_gdn_chunked(cpu_pool *p, const cpu_gdn_dims *d, int T, const float *q, const float *k,
                     const float *v, const float *g, const float *beta, float *S, float *o)
{
    if (T <= 0)
        return true;
    size_t per = (size_t)C * C + (size_t)C * d->dv + (size_t)C * d->dk + 2 * C;
    float *scratch = malloc(per * (size_t)d->hv * sizeof(float));
    if (!scratch)
        return false;
    gdn_ctx c = {d, T, q, k, v, g, beta, S, o, scratch, per};
    cpu_pool_run(p, d->hv, gdn_head, &c);
    free(scratch);
    return true;
}
