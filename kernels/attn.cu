/* attn.cu — gated full attention: q/gate split + q/k norm + partial RoPE +
 * cache write, and causal GQA attention (prefill and split-KV decode).
 *
 * Attention block = one query token x one KV head x one key split; its warps
 * are the H/KV query heads that share the KV head, so each K/V tile is read
 * from the cache once for the whole group. Inside a warp, lane l scores key l
 * of the 32-key tile (a full dot product, no shuffles), the online softmax
 * runs over the tile, and for P.V each lane owns hd/32 output dims. */
#include <math.h>

#include "common.cuh"

#define ATT_TILE 32
#define ATT_MAXG 16
#define ATT_NEG (-1e30f)

/* grid (T, H + KV), block hd threads. */
__global__ void k_attn_prep(const float *qkv, int ld, int H, int KV, int hd, int rot, float theta, const float *qn,
                            const float *kn, float eps, const int32_t *pos, uint16_t *kc, uint16_t *vc, int max_ctx,
                            float *q_out, float *gate_out)
{
    __shared__ float red[33];
    __shared__ float y[256];
    int t = blockIdx.x, hh = blockIdx.y, d = threadIdx.x;
    int p = pos[0] + t;
    const float *row = qkv + (int64_t)t * ld;
    bool isq = hh < H;
    int kvh = hh - H;
    float x = isq ? row[(int64_t)hh * 2 * hd + d] : row[(int64_t)H * 2 * hd + (int64_t)kvh * hd + d];
    float ss = qk_block_sum(x * x, red);
    float w = isq ? qn[d] : kn[d];
    y[d] = x * rsqrtf(ss / (float)hd + eps) * (1.0f + w);
    __syncthreads();
    float v = y[d];
    if (d < rot) {
        int half = rot / 2, j = d < half ? d : d - half;
        float inv = (float)(1.0 / pow((double)theta, (double)(2 * j) / (double)rot));
        float ang = (float)p * inv; /* fp32 angle, as the reference computes it */
        double sn, cs;
        sincos((double)ang, &sn, &cs);
        if (d < half) v = y[d] * (float)cs - y[d + half] * (float)sn;
        else v = y[d] * (float)cs + y[j] * (float)sn;
    }
    if (isq) {
        q_out[((int64_t)t * H + hh) * hd + d] = v;
        gate_out[(int64_t)t * H * hd + (int64_t)hh * hd + d] = row[(int64_t)hh * 2 * hd + hd + d];
    } else if (p < max_ctx) {
        int64_t o = ((int64_t)kvh * max_ctx + p) * hd + d;
        kc[o] = qk_to_bf(v);
        vc[o] = qk_to_bf(row[(int64_t)H * 2 * hd + (int64_t)KV * hd + (int64_t)kvh * hd + d]);
    }
}

extern "C" int qk_attn_prep(const float *qkv, int ld, int T, int H, int KV, int hd, int rot, float theta,
                            const float *qn, const float *kn, float eps, const int32_t *pos, uint16_t *kc,
                            uint16_t *vc, int max_ctx, float *q_out, float *gate_out, qk_stream st)
{
    if (T <= 0) return 0;
    if (hd % 32 || hd > 256 || rot > hd || rot % 2) return (int)cudaErrorInvalidValue;
    k_attn_prep<<<dim3(T, H + KV), hd, 0, st>>>(qkv, ld, H, KV, hd, rot, theta, qn, kn, eps, pos, kc, vc, max_ctx,
                                                q_out, gate_out);
    return qk_launch_status();
}

extern "C" size_t qk_attn_scratch(int T, int H, int hd, int nsplit)
{
    return (size_t)T * H * nsplit * (hd + 2) * sizeof(float);
}

/* NH = hd / 32 output dims per lane. grid (T, KV, nsplit), block 32*G. */
template <int NH>
__global__ void k_attn(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx, int H,
                       int KV, const int32_t *pos, int nsplit, float *part, uint16_t *out)
{
    const int hd = NH * 32;
    extern __shared__ float sm[];
    int G = H / KV;
    float *Kt = sm;                         /* [32][hd+1] */
    float *Vt = Kt + ATT_TILE * (hd + 1);   /* [32][hd] */
    float *Qs = Vt + ATT_TILE * hd;         /* [G][hd] */
    int t = blockIdx.x, kvh = blockIdx.y, sp = blockIdx.z;
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nth = blockDim.x;
    int h = kvh * G + w;
    int p = pos[0] + t;
    int n = min(p + 1, max_ctx);
    int per = (n + nsplit - 1) / nsplit;
    int k0 = sp * per, k1 = min(n, k0 + per);
    for (int e = threadIdx.x; e < G * hd; e += nth) Qs[e] = q[((int64_t)t * H + kvh * G) * hd + e];
    float m = ATT_NEG, l = 0.0f, acc[NH];
#pragma unroll
    for (int i = 0; i < NH; i++) acc[i] = 0.0f;
    const float scale = rsqrtf((float)hd);
    const uint16_t *kb = kc + (int64_t)kvh * max_ctx * hd, *vb = vc + (int64_t)kvh * max_ctx * hd;
    for (int base = k0; base < k1; base += ATT_TILE) {
        int nk = min(ATT_TILE, k1 - base);
        __syncthreads();
        for (int e = threadIdx.x; e < ATT_TILE * hd / 8; e += nth) {
            int key = e / (hd / 8), d8 = (e % (hd / 8)) * 8;
            uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
            if (key < nk) {
                kv4 = *(const uint4 *)(kb + (int64_t)(base + key) * hd + d8);
                vv4 = *(const uint4 *)(vb + (int64_t)(base + key) * hd + d8);
            }
            const uint16_t *ka = (const uint16_t *)&kv4, *va = (const uint16_t *)&vv4;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                Kt[key * (hd + 1) + d8 + i] = qk_bf(ka[i]);
                Vt[key * hd + d8 + i] = qk_bf(va[i]);
            }
        }
        __syncthreads();
        const float *qh = Qs + w * hd;
        float s = 0.0f;
#pragma unroll 8
        for (int d = 0; d < hd; d++) s = fmaf(qh[d], Kt[lane * (hd + 1) + d], s);
        bool valid = lane < nk;
        s = valid ? s * scale : ATT_NEG;
        float mn = fmaxf(m, qk_warp_max(s));
        float corr = __expf(m - mn);
        float pr = valid ? __expf(s - mn) : 0.0f;
        l = l * corr + qk_warp_sum(pr);
#pragma unroll
        for (int i = 0; i < NH; i++) acc[i] *= corr;
        for (int key = 0; key < nk; key++) {
            float pk = __shfl_sync(0xffffffffu, pr, key);
#pragma unroll
            for (int i = 0; i < NH; i++) acc[i] = fmaf(pk, Vt[key * hd + lane + 32 * i], acc[i]);
        }
        m = mn;
    }
    if (nsplit == 1) {
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int i = 0; i < NH; i++) {
            int d = lane + 32 * i;
            int64_t o = (int64_t)t * H * hd + (int64_t)h * hd + d;
            out[o] = qk_to_bf(acc[i] * inv * qk_sigmoid(gate[o]));
        }
    } else {
        float *pp = part + (((int64_t)t * H + h) * nsplit + sp) * (hd + 2);
        if (lane == 0) {
            pp[0] = m;
            pp[1] = l;
        }
#pragma unroll
        for (int i = 0; i < NH; i++) pp[2 + lane + 32 * i] = acc[i];
    }
}

/* grid (T, H), block hd: merges the splits' partial softmax sums. */
__global__ void k_attn_combine(const float *part, const float *gate, int H, int hd, int nsplit, uint16_t *out)
{
    int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const float *pp = part + ((int64_t)t * H + h) * nsplit * (hd + 2);
    float M = ATT_NEG;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, pp[s * (hd + 2)]);
    float L = 0.0f, o = 0.0f;
    for (int s = 0; s < nsplit; s++) {
        const float *q = pp + s * (hd + 2);
        if (q[1] <= 0.0f) continue;
        float e = __expf(q[0] - M);
        L += q[1] * e;
        o += q[2 + d] * e;
    }
    int64_t oi = (int64_t)t * H * hd + (int64_t)h * hd + d;
    out[oi] = qk_to_bf((L > 0.0f ? o / L : 0.0f) * qk_sigmoid(gate[oi]));
}

template <int NH>
static int attn_launch(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx, int T,
                       int H, int KV, const int32_t *pos, int nsplit, void *scratch, uint16_t *out, qk_stream st)
{
    const int hd = NH * 32;
    int G = H / KV;
    size_t smem = (size_t)(ATT_TILE * (hd + 1) + ATT_TILE * hd + G * hd) * sizeof(float);
    cudaError_t e = cudaFuncSetAttribute(k_attn<NH>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    k_attn<NH><<<dim3(T, KV, nsplit), 32 * G, smem, st>>>(q, gate, kc, vc, max_ctx, H, KV, pos, nsplit,
                                                         (float *)scratch, out);
    if (nsplit > 1) k_attn_combine<<<dim3(T, H), hd, 0, st>>>((const float *)scratch, gate, H, hd, nsplit, out);
    return qk_launch_status();
}

extern "C" int qk_attn(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx, int T,
                       int H, int KV, int hd, const int32_t *pos, int nsplit, void *scratch, uint16_t *out,
                       qk_stream st)
{
    if (T <= 0) return 0;
    if (KV <= 0 || H % KV || H / KV > ATT_MAXG || nsplit < 1 || (nsplit > 1 && !scratch))
        return (int)cudaErrorInvalidValue;
    switch (hd) {
    case 32: return attn_launch<1>(q, gate, kc, vc, max_ctx, T, H, KV, pos, nsplit, scratch, out, st);
    case 64: return attn_launch<2>(q, gate, kc, vc, max_ctx, T, H, KV, pos, nsplit, scratch, out, st);
    case 128: return attn_launch<4>(q, gate, kc, vc, max_ctx, T, H, KV, pos, nsplit, scratch, out, st);
    case 256: return attn_launch<8>(q, gate, kc, vc, max_ctx, T, H, KV, pos, nsplit, scratch, out, st);
    default: return (int)cudaErrorInvalidValue;
    }
}
