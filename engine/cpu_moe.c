/* cpu_moe.c — the mixture-of-experts block of qwen35-model.md §3.4 on the CPU:
 * router softmax over all experts in fp32, top-k, renormalised weights, each
 * expert's SwiGLU over the tokens routed to it (gathered, so prefill runs one
 * matmul per expert), plus the shared expert scaled by its sigmoid gate. */
#include "cpu_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

bool cpu_moe_forward(cpu_pool *p, const cpu_moe_weights *w, const float *x, int T, float *y)
{
    const int E = w->n_experts, K = w->top_k, D = w->d_model;
    int Im = w->d_expert > w->d_shared ? w->d_expert : w->d_shared;
    if (T <= 0)
        return true;
    if (K < 1 || K > E)
        return false;
    float *logits = malloc(sizeof(float) * (size_t)T * E);
    int *sel = malloc(sizeof(int) * (size_t)T * K);
    float *selw = malloc(sizeof(float) * (size_t)T * K);
    int *rows = malloc(sizeof(int) * (size_t)T);
    float *roww = malloc(sizeof(float) * (size_t)T);
    float *xe = malloc(sizeof(float) * (size_t)T * D);
    float *ye = malloc(sizeof(float) * (size_t)T * D);
    float *tmp = malloc(sizeof(float) * (size_t)T * Im * 2);
    float *sg = malloc(sizeof(float) * (size_t)T);
    bool ok = logits && sel && selw && rows && roww && xe && ye && tmp && sg;
    if (!ok)
        goto out;

    cpu_matmul(p, w->router, x, T, logits, E);
    for (int t = 0; t < T; t++) {
        float *l = logits + (size_t)t * E;
        float mx = l[0];
        for (int e = 1; e < E; e++)
            mx = l[e] > mx ? l[e] : mx;
        float sum = 0;
        for (int e = 0; e < E; e++) {
            l[e] = expf(l[e] - mx);
            sum += l[e];
        }
        for (int e = 0; e < E; e++)
            l[e] /= sum;
        /* top-k by repeated selection; ties go to the lower index. */
        float tot = 0;
        for (int j = 0; j < K; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool taken = false;
                for (int i = 0; i < j; i++)
                    taken |= sel[t * K + i] == e;
                if (!taken && (best < 0 || l[e] > l[best]))
                    best = e;
            }
            sel[t * K + j] = best;
            selw[t * K + j] = l[best];
            tot += l[best];
        }
        for (int j = 0; j < K; j++)
            selw[t * K + j] /= tot;
    }

    memset(y, 0, sizeof(float) * (size_t)T * D);
    /* Experts in index order, each over the tokens that chose it. */
    for (int e = 0; e < E; e++) {
        int n = 0;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < K; j++)
                if (sel[t * K + j] == e) {
                    rows[n] = t;
                    roww[n] = selw[t * K + j];
                    memcpy(xe + (size_t)n * D, x + (size_t)t * D, sizeof(float) * D);
                    n++;
                }
        if (!n)
            continue;
        cpu_mlp_forward(p, w->gate[e], w->up[e], w->down[e], xe, n, tmp, ye);
        for (int i = 0; i < n; i++) {
            float *yr = y + (size_t)rows[i] * D;
            const float *er = ye + (size_t)i * D;
            for (int c = 0; c < D; c++)
                yr[c] += roww[i] * er[c];
        }
    }

    if (w->sh_gate) {
        cpu_mlp_forward(p, w->sh_gate, w->sh_up, w->sh_down, x, T, tmp, ye);
        if (w->sh_router)
            cpu_matmul(p, w->sh_router, x, T, sg, 1);
        for (int t = 0; t < T; t++) {
            float gt = w->sh_router ? cpu_sigmoid(sg[t]) : 1.0f;
            for (int c = 0; c < D; c++)
                y[(size_t)t * D + c] += gt * ye[(size_t)t * D + c];
        }
    }
out:
    free(logits);
    free(sel);
    free(selw);
    free(rows);
    free(roww);
    free(xe);
    free(ye);
    free(tmp);
    free(sg);
    return ok;
}
