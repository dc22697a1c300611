/* test_moe.c — the CPU MoE block (qwen35-model.md §3.4) against a direct
 * double-precision computation on small random weights: softmax over every
 * expert, top-k, renormalised weights, SwiGLU experts, shared expert with its
 * sigmoid gate. Also: prefill (tokens gathered per expert) equals token by
 * token, BF16 expert weights read through the dequantizer, and the layer
 * without a shared expert. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "harness.h"
#include "util.h"

static uint64_t rng = 0x243F6A8885A308D3ull;
static float frand(void)
{
    return ((th_xorshift(&rng) >> 40) + 0.5f) / 16777216.0f;
}
static float nrand(void) { return sqrtf(-2 * logf(frand())) * cosf(6.2831853f * frand()); }

typedef struct lin {
    qc_tensor t;
    qc_linear l;
    float *w; /* the values the layer must see, as float */
} lin;

/* A random n x k Linear stored as F32, or as BF16 when bf16 is set (w then
 * holds the rounded values). */
static void lin_make(lin *x, int n, int k, float scale, bool bf16)
{
    memset(x, 0, sizeof *x);
    x->w = malloc(sizeof(float) * n * k);
    void *data;
    if (bf16) {
        uint16_t *b = malloc(2 * (size_t)n * k);
        for (int i = 0; i < n * k; i++) {
            b[i] = qc_f32_to_bf16(nrand() * scale);
            x->w[i] = qc_bf16_to_f32(b[i]);
        }
        data = b;
    } else {
        float *f = malloc(sizeof(float) * (size_t)n * k);
        for (int i = 0; i < n * k; i++)
            f[i] = x->w[i] = nrand() * scale;
        data = f;
    }
    x->t = (qc_tensor){.name = "w", .dtype = bf16 ? QC_DT_BF16 : QC_DT_F32, .ndim = 2, .shape = {n, k},
                       .numel = (int64_t)n * k, .data = data, .nbytes = (size_t)n * k * (bf16 ? 2 : 4)};
    snprintf(x->l.name, sizeof x->l.name, "test.%dx%d", n, k);
    x->l.format = bf16 ? QC_FMT_BF16 : QC_FMT_F32;
    x->l.n = n;
    x->l.k = k;
    x->l.bits = bf16 ? 16 : 32;
    x->l.weight = &x->t;
    x->l.bytes = (int64_t)x->t.nbytes;
}

static void lin_free(lin *x)
{
    free(x->w);
    free((void *)x->t.data);
}

static void matvec(const lin *x, const double *in, double *out)
{
    for (int r = 0; r < x->l.n; r++) {
        double s = 0;
        for (int c = 0; c < x->l.k; c++)
            s += (double)x->w[r * x->l.k + c] * in[c];
        out[r] = s;
    }
}

static void swiglu(const lin *g, const lin *u, const lin *d, const double *x, double *y)
{
    int I = (int)g->l.n;
    double *a = malloc(sizeof(double) * I), *b = malloc(sizeof(double) * I);
    matvec(g, x, a);
    matvec(u, x, b);
    for (int i = 0; i < I; i++)
        a[i] = a[i] / (1 + exp(-a[i])) * b[i];
    matvec(d, a, y);
    free(a);
    free(b);
}

static double rel_l2(const float *a, const double *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - ref[i]) * (a[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return num == num ? sqrt(num / den) : INFINITY;
}

static void run_case(cpu_pool *pool, const char *name, int E, int K, int D, int Im, int Is, int T, bool bf16)
{
    lin router, *gate = calloc(E, sizeof(lin)), *up = calloc(E, sizeof(lin)), *down = calloc(E, sizeof(lin));
    lin sg, su, sd, sr;
    lin_make(&router, E, D, 1.0f, false);
    const qc_linear **pg = calloc(E, sizeof *pg), **pu = calloc(E, sizeof *pu), **pd = calloc(E, sizeof *pd);
    for (int e = 0; e < E; e++) {
        lin_make(&gate[e], Im, D, 0.3f, bf16);
        lin_make(&up[e], Im, D, 0.3f, bf16);
        lin_make(&down[e], D, Im, 0.3f, bf16);
        pg[e] = &gate[e].l;
        pu[e] = &up[e].l;
        pd[e] = &down[e].l;
    }
    if (Is) {
        lin_make(&sg, Is, D, 0.3f, bf16);
        lin_make(&su, Is, D, 0.3f, bf16);
        lin_make(&sd, D, Is, 0.3f, bf16);
        lin_make(&sr, 1, D, 0.5f, false);
    }
    cpu_moe_weights w = {E, K, D, Im, Is, &router.l, pg, pu, pd,
                         Is ? &sg.l : NULL, Is ? &su.l : NULL, Is ? &sd.l : NULL, Is ? &sr.l : NULL};
    float *x = malloc(sizeof(float) * T * D), *y = malloc(sizeof(float) * T * D), *y1 = malloc(sizeof(float) * T * D);
    double *ref = calloc((size_t)T * D, sizeof(double));
    for (int i = 0; i < T * D; i++)
        x[i] = nrand();

    /* direct computation */
    double *xd = malloc(sizeof(double) * D), *lg = malloc(sizeof(double) * E), *eo = malloc(sizeof(double) * D);
    for (int t = 0; t < T; t++) {
        for (int c = 0; c < D; c++)
            xd[c] = x[t * D + c];
        matvec(&router, xd, lg);
        double mx = lg[0], sum = 0;
        for (int e = 1; e < E; e++)
            mx = fmax(mx, lg[e]);
        for (int e = 0; e < E; e++)
            sum += (lg[e] = exp(lg[e] - mx));
        for (int e = 0; e < E; e++)
            lg[e] /= sum;
        int sel[16];
        double sw[16], tot = 0;
        for (int j = 0; j < K; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++)
                    taken |= sel[i] == e;
                if (!taken && (best < 0 || lg[e] > lg[best]))
                    best = e;
            }
            sel[j] = best;
            tot += sw[j] = lg[best];
        }
        for (int j = 0; j < K; j++) {
            swiglu(&gate[sel[j]], &up[sel[j]], &down[sel[j]], xd, eo);
            for (int c = 0; c < D; c++)
                ref[t * D + c] += sw[j] / tot * eo[c];
        }
        if (Is) {
            double gl;
            matvec(&sr, xd, &gl);
            swiglu(&sg, &su, &sd, xd, eo);
            for (int c = 0; c < D; c++)
                ref[t * D + c] += eo[c] / (1 + exp(-gl));
        }
    }

    bool ok = cpu_moe_forward(pool, &w, x, T, y);
    double e = ok ? rel_l2(y, ref, (size_t)T * D) : INFINITY;
    CHECK(name, e < 1e-5, "rel L2 %.3g vs direct computation", e);
    /* token by token must give the same as the gathered prefill */
    for (int t = 0; t < T && ok; t++)
        ok = cpu_moe_forward(pool, &w, x + t * D, 1, y1 + t * D);
    double d = 0;
    for (int i = 0; i < T * D; i++)
        d = fmax(d, fabs(y1[i] - y[i]));
    char n2[128];
    snprintf(n2, sizeof n2, "%s_token_by_token", name);
    CHECK(n2, ok && d < 1e-5, "max diff %.3g", d);

    free(xd);
    free(lg);
    free(eo);
    free(x);
    free(y);
    free(y1);
    free(ref);
    lin_free(&router);
    for (int i = 0; i < E; i++) {
        lin_free(&gate[i]);
        lin_free(&up[i]);
        lin_free(&down[i]);
    }
    if (Is) {
        lin_free(&sg);
        lin_free(&su);
        lin_free(&sd);
        lin_free(&sr);
    }
    free(gate);
    free(up);
    free(down);
    free(pg);
    free(pu);
    free(pd);
}

int main(void)
{
    cpu_pool *pool = cpu_pool_new(2);
    cpu_pool_reserve(pool, cpu_matmul_scratch(64));
    run_case(pool, "moe_f32_e8_top2_shared", 8, 2, 32, 16, 24, 9, false);
    run_case(pool, "moe_bf16_e6_top3_shared", 6, 3, 40, 12, 20, 7, true);
    run_case(pool, "moe_f32_e5_top1_no_shared", 5, 1, 24, 8, 0, 6, false);
    run_case(pool, "moe_f32_e16_top16_all", 16, 16, 16, 8, 8, 4, false);
    cpu_pool_free(pool);
    return th_exit();
}
