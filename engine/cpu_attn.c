/* cpu_attn.c — gated full attention (qwen35-model.md §3.3) on the CPU in
 * float32: per-head [q | gate] projection, zero-centred q/k norms before a
 * partial rotate-half RoPE, GQA over a float32 KV cache, fp32 softmax, the
 * sigmoid output gate, then o_proj. */
#include "cpu_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void cpu_rope(float *v, int rot, int pos, float theta)
{
    const int half = rot / 2;
    for (int j = 0; j < half; j++) {
        /* Same float32 steps as the reference: inv_freq in float, then pos * inv_freq. */
        float inv = (float)(1.0 / pow((double)theta, (double)(2 * j) / rot));
        float ang = (float)pos * inv;
        float c = (float)cos((double)ang), s = (float)sin((double)ang);
        float a = v[j], b = v[j + half];
        v[j] = a * c - b * s;
        v[j + half] = b * c + a * s;
    }
}

typedef struct attn_ctx {
    const cpu_attn_weights *w;
    int T, pos0;
    const float *qg;     /* [T][2*H*hd] */
    const float *kc, *vc;
    float *out;          /* [T][H*hd] */
    float *scores;       /* [H][pos0+T] */
} attn_ctx;

/* One query head over every token of the chunk. */
static void attn_head(void *vctx, int h, int worker)
{
    (void)worker;
    const attn_ctx *c = vctx;
    const int H = c->w->n_heads, KV = c->w->n_kv, hd = c->w->head_dim;
    const int kvh = h / (H / KV);
    const int ctx = c->pos0 + c->T;
    float *sc = c->scores + (size_t)h * ctx;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t < c->T; t++) {
        const float *q = c->qg + (size_t)t * 2 * H * hd + (size_t)h * 2 * hd;
        const float *gate = q + hd;
        const int n = c->pos0 + t + 1; /* causal: keys 0 .. pos0+t */
        float mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            sc[j] = cpu_dot(q, c->kc + ((size_t)j * KV + kvh) * hd, hd) * scale;
            mx = sc[j] > mx ? sc[j] : mx;
        }
        float sum = 0;
        for (int j = 0; j < n; j++) {
            sc[j] = expf(sc[j] - mx);
            sum += sc[j];
        }
        float *o = c->out + (size_t)t * H * hd + (size_t)h * hd;
        for (int d = 0; d < hd; d++)
            o[d] = 0;
        for (int j = 0; j < n; j++) {
            const float pj = sc[j] / sum;
            const float *v = c->vc + ((size_t)j * KV + kvh) * hd;
            for (int d = 0; d < hd; d++)
                o[d] += pj * v[d];
        }
        for (int d = 0; d < hd; d++)
            o[d] *= cpu_sigmoid(gate[d]);
    }
}

bool cpu_attn_forward(cpu_pool *p, const cpu_attn_weights *w, const float *x, int T, int pos0,
                      float *kcache, float *vcache, float *y)
{
    const int H = w->n_heads, KV = w->n_kv, hd = w->head_dim;
    float *qg = malloc(sizeof(float) * (size_t)T * 2 * H * hd);
    float *out = malloc(sizeof(float) * (size_t)T * H * hd);
    float *scores = malloc(sizeof(float) * (size_t)H * (pos0 + T));
    bool ok = qg && out && scores;
    if (ok) {
        float *kn = kcache + (size_t)pos0 * KV * hd, *vn = vcache + (size_t)pos0 * KV * hd;
        cpu_matmul(p, w->q, x, T, qg, 2 * H * hd);
        cpu_matmul(p, w->k, x, T, kn, KV * hd);
        cpu_matmul(p, w->v, x, T, vn, KV * hd);
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < H; h++) {
                float *q = qg + (size_t)t * 2 * H * hd + (size_t)h * 2 * hd;
                cpu_norm1p(q, w->q_norm, 1, hd, w->eps, q);
                cpu_rope(q, w->rot_dim, pos0 + t, w->rope_theta);
            }
            for (int h = 0; h < KV; h++) {
                float *k = kn + ((size_t)t * KV + h) * hd;
                cpu_norm1p(k, w->k_norm, 1, hd, w->eps, k);
                cpu_rope(k, w->rot_dim, pos0 + t, w->rope_theta);
            }
        }
        attn_ctx c = {w, T, pos0, qg, kcache, vcache, out, scores};
        cpu_pool_run(p, H, attn_head, &c);
        cpu_matmul(p, w->o, out, T, y, (int)w->o->n);
    }
    free(qg);
    free(out);
    free(scores);
    return ok;
}
