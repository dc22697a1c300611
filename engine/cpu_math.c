/* cpu_math.c — norms, dot products, tensor conversion and the threaded
 * any-format matmul of the CPU backend. */
#include "cpu_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dequant.h"
#include "util.h"

float cpu_dot(const float *a, const float *b, int n)
{
    /* Eight independent partial sums: lets the compiler vectorise without
     * -ffast-math and keeps rounding error small on long rows. */
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static float row_inv_rms(const float *x, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    return (float)(1.0 / sqrt(ss / n + eps));
}

void cpu_norm1p(const float *x, const float *w, int rows, int n, float eps, float *y)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        float inv = row_inv_rms(xr, n, eps);
        for (int i = 0; i < n; i++)
            yr[i] = xr[i] * inv * (1.0f + w[i]);
    }
}

void cpu_norm_mul(const float *x, const float *w, int rows, int n, float eps, float *y)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        float inv = row_inv_rms(xr, n, eps);
        for (int i = 0; i < n; i++)
            yr[i] = w[i] * (xr[i] * inv);
    }
}

bool cpu_tensor_to_f32(const qc_tensor *t, float *out)
{
    switch (t->dtype) {
    case QC_DT_F32:
        memcpy(out, t->data, (size_t)t->numel * sizeof(float));
        return true;
    case QC_DT_BF16: {
        const uint16_t *s = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            out[i] = qc_bf16_to_f32(s[i]);
        return true;
    }
    case QC_DT_F16: {
        const uint16_t *s = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            out[i] = qc_f16_to_f32(s[i]);
        return true;
    }
    default:
        return false;
    }
}

/* ---- matmul: tasks over tiles of output rows ------------------------------ */

typedef struct mm_ctx {
    cpu_pool *p;
    const qc_linear *l;
    const float *x;
    int T, ldy, rows_per_task;
    float *y;
} mm_ctx;

static void mm_task(void *vctx, int task, int worker)
{
    mm_ctx *c = vctx;
    int64_t N = c->l->n;
    int64_t r0 = (int64_t)task * c->rows_per_task;
    int64_t nr = N - r0 < c->rows_per_task ? N - r0 : c->rows_per_task;
    /* Reserved at load (cpu_pool_reserve): this never allocates. */
    float *w = cpu_pool_scratch(c->p, worker, (size_t)qc_linear_tile_floats(c->l, nr));
    if (!w)
        abort();
    qc_linear_matmul_rows(c->l, c->x, c->T, c->l->k, r0, nr, c->y, c->ldy, w);
}

#define MM_TILE_FLOATS 16384

size_t cpu_matmul_scratch(int64_t k) { return k > MM_TILE_FLOATS ? (size_t)k : MM_TILE_FLOATS; }

/* QCHAT_CPU_XBF16=1, a diagnostic: every matmul input rounded to bf16 as the
 * CUDA engine stages it, so that a CUDA-vs-CPU difference can be split into
 * that rounding and the rest (tools/cuda_score_check.py --cpu-golden on
 * random-weight checkpoints, BENCHMARKS.md). Off by default. */
static bool mm_round_inputs(void)
{
    /* Read at every call, not cached: no shared state between the threads
     * that may run sessions; one getenv is nothing beside a matmul. */
    const char *e = getenv("QCHAT_CPU_XBF16");
    return e && strcmp(e, "1") == 0;
}

void cpu_matmul(cpu_pool *p, const qc_linear *l, const float *x, int T, float *y, int ldy)
{
    if (T <= 0 || l->n <= 0)
        return;
    float *xr = NULL;
    if (mm_round_inputs()) {
        const size_t n = (size_t)T * (size_t)l->k;
        xr = malloc(n * sizeof *xr);
        if (!xr) {
            fprintf(stderr, "qchat: QCHAT_CPU_XBF16: no memory for %zu floats; input not rounded\n", n);
        } else {
            for (size_t i = 0; i < n; i++)
                xr[i] = qc_bf16_to_f32(qc_f32_to_bf16(x[i]));
            x = xr;
        }
    }
    /* Tiles of ~64 KiB of dequantized weight: big enough to amortise the
     * dequantizer, small enough to stay in L2 while T tokens reuse it. */
    int64_t rows = MM_TILE_FLOATS / (l->k > 0 ? l->k : 1);
    if (rows < 1)
        rows = 1;
    if (rows > 64)
        rows = 64;
    if (rows >= 4) /* the tile kernel works on groups of 4 rows */
        rows &= ~(int64_t)3;
    /* Enough tasks to keep every worker busy. */
    int nt = cpu_pool_threads(p);
    while (rows > 1 && (l->n + rows - 1) / rows < 4 * nt)
        rows = rows > 4 ? (rows / 2) & ~(int64_t)3 : rows / 2;
    mm_ctx c = {p, l, x, T, ldy, (int)rows, y};
    int ntasks = (int)((l->n + rows - 1) / rows);
    if (l->n * l->k * (int64_t)T < (1 << 17)) {
        /* Too small to pay for waking the workers: run on this thread
         * (worker 0 is always the caller). */
        for (int t = 0; t < ntasks; t++)
            mm_task(&c, t, 0);
    } else {
        cpu_pool_run(p, ntasks, mm_task, &c);
    }
    free(xr);
}

/* ---- dense MLP ------------------------------------------------------------- */

void cpu_mlp_forward(cpu_pool *p, const qc_linear *gate, const qc_linear *up,
                     const qc_linear *down, const float *x, int T, float *tmp, float *y)
{
    int I = (int)gate->n;
    float *gb = tmp, *ub = tmp + (size_t)T * I;
    cpu_matmul(p, gate, x, T, gb, I);
    cpu_matmul(p, up, x, T, ub, I);
    for (size_t i = 0; i < (size_t)T * I; i++)
        gb[i] = cpu_silu(gb[i]) * ub[i];
    cpu_matmul(p, down, gb, T, y, (int)down->n);
}
