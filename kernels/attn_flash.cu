/* attn_flash.cu — causal GQA attention for prefill chunks on the tensor cores,
 * flash style: scores never leave the chip (the cuBLAS path of attn_gemm.cu
 * writes an fp32 score matrix and was memory-bound on it: 13.4 ms per 27B
 * layer at T = 8192).
 *
 * Block = BM query rows (BM/16 warps, 16 rows each) of one query head. K/V
 * tiles of BN keys stream through shared memory with cp.async; the V tile
 * loads while Q K^T runs and the next K tile while P V runs (one buffer each,
 * which keeps hd = 256 inside the 99 KiB a block gets on sm_86/89/120). S and
 * O live in the mma.sync m16n8k16 accumulators (bf16 inputs, fp32
 * accumulate); the online softmax is fp32 with exp2 and the scale folded into
 * one FMA; P is rounded to bf16 in registers and reused as the A operand of
 * P V. Key tiles run from the diagonal down, so only the first one or two of
 * a block need the causal mask and fully-masked tiles are never loaded.
 * Blocks are ordered heaviest query tile first, the heads of one tile next to
 * each other (they share K/V through L2). Shared tiles are [row][hd] with the
 * 16-byte chunks XOR-swizzled by row, so ldmatrix is conflict-free without
 * padding. Q and P are rounded to bf16 (K and V are bf16 in the cache). */
#include <math.h>

#include "common.cuh"
#include "mma.cuh"

/* Element offset of 16-byte chunk c of row r in a swizzled [rows][HD] tile. */
template <int HD>
__device__ __forceinline__ int fa_off(int r, int c)
{
    constexpr int SWM = HD / 8 >= 8 ? 7 : HD / 8 - 1;
    return r * HD + ((c ^ (r & SWM)) << 3);
}

/* grid ntiles * H (heaviest query tile first), block 32 * BM / 16. NSTG 1:
 * one K and one V buffer (above); 2: two of each, so both of the next
 * tile's loads are in flight during the whole of this tile's work, and one
 * barrier per tile. */
template <int HD, int BM, int BN, int NSTG>
__global__ void __launch_bounds__(2 * BM, 128 / BM)
    k_attn_flash(const float *__restrict__ q, const float *__restrict__ gate, const uint16_t *__restrict__ kc,
                 const uint16_t *__restrict__ vc, int max_ctx, int T, int H, int KV, int pos0, int ntiles,
                 uint16_t *__restrict__ out)
{
    constexpr int NTH = 2 * BM; /* BM / 16 warps */
    constexpr int NC = HD / 8;  /* 16-byte chunks per row */
    constexpr int NS = BN / 8;  /* S n-tiles per warp */
    constexpr int NO = HD / 8;  /* O n-tiles per warp */
    extern __shared__ __align__(128) uint16_t fa_sm[];
    uint16_t *Qs = fa_sm, *Ks = Qs + BM * HD, *Vs = Ks + NSTG * BN * HD; /* K, V: NSTG buffers each */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int mb = ntiles - 1 - (int)(blockIdx.x / H), h = (int)(blockIdx.x % H);
    const int kvh = h / (H / KV);
    const int t0 = mb * BM;
    const int nkeys = pos0 + min(T, t0 + BM); /* keys any row of this tile sees */
    const int nkt = (nkeys + BN - 1) / BN;
    const uint16_t *kb = kc + (int64_t)kvh * max_ctx * HD, *vb = vc + (int64_t)kvh * max_ctx * HD;

    auto load_kv = [&](uint16_t *dst, const uint16_t *src, int j) {
#pragma unroll
        for (int i = 0; i < (BN * NC + NTH - 1) / NTH; i++) {
            int e = tid + i * NTH, r = e / NC, c = e % NC, key = j * BN + r;
            if ((BN * NC) % NTH && e >= BN * NC) break;
            bool ok = key < nkeys;
            tc_cp16(tc_smem(dst + fa_off<HD>(r, c)), src + (int64_t)(ok ? key : 0) * HD + c * 8, ok ? 16 : 0);
        }
        tc_cp_commit();
    };

    load_kv(Ks, kb, nkt - 1);
    if (NSTG == 2) load_kv(Vs, vb, nkt - 1);
    /* Q tile: fp32 -> bf16 while the first K tile is in flight */
#pragma unroll 4
    for (int i = 0; i < (BM * NC + NTH - 1) / NTH; i++) {
        int e = tid + i * NTH, r = e / NC, c = e % NC, t = t0 + r;
        if ((BM * NC) % NTH && e >= BM * NC) break;
        uint4 pk = make_uint4(0, 0, 0, 0);
        if (t < T) {
            const float4 *src = (const float4 *)(q + ((int64_t)t * H + h) * HD + c * 8);
            float4 a = src[0], b = src[1];
            pk = make_uint4(tc_pack(a.x, a.y), tc_pack(a.z, a.w), tc_pack(b.x, b.y), tc_pack(b.z, b.w));
        }
        *(uint4 *)(Qs + fa_off<HD>(r, c)) = pk;
    }

    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const float sl2 = rsqrtf((float)HD) * 1.4426950408889634f; /* scale * log2(e) */
    const int wr = warp * 16;                                  /* first row of this warp */
    const int p0 = pos0 + t0 + wr + (lane >> 2), p1 = p0 + 8;  /* positions of rows g, g + 8 */
    const int pmin = pos0 + t0;
    /* ldmatrix row addresses. Every fragment row has row & 7 == lane & 7 and
     * chunk 2 * kk + x (x per lane, 0 or 1), so its swizzled chunk is
     * 8 * (kk >> 2) + ((2 * (kk & 3)) ^ x ^ (lane & 7)): four per-lane bases
     * plus constants, instead of a swizzle per load. Byte addresses. */
    uint32_t qa[4], ka[4], va[4];
    {
        constexpr int SWM = HD / 8 >= 8 ? 7 : HD / 8 - 1;
        const int rl = lane & 7 & SWM;
        const int qr = wr + (lane & 7) + ((lane >> 3) & 1) * 8, qx = lane >> 4;
        const int kr = (lane & 7) + (lane >> 4) * 8, kx = (lane >> 3) & 1;
        const int vr = (lane & 7) + ((lane >> 3) & 1) * 8, vx = lane >> 4;
#pragma unroll
        for (int v = 0; v < 4; v++) {
            qa[v] = tc_smem(Qs + qr * HD + (((2 * v) ^ qx ^ rl) << 3));
            ka[v] = tc_smem(Ks + kr * HD + (((2 * v) ^ kx ^ rl) << 3));
            va[v] = tc_smem(Vs + vr * HD + (((2 * v) ^ vx ^ rl) << 3));
        }
    }

    for (int j = nkt - 1; j >= 0; j--) {
        /* buffer of tile j (NSTG 2: tile nkt - 1 in buffer 0, then alternating) */
        const int bo = NSTG == 2 ? ((nkt - 1 - j) & 1) * BN * HD : 0;
        const uint32_t bb = (uint32_t)bo * 2;
        tc_cp_wait_all();
        /* NSTG 1: K tile j landed; every warp is done with V of j + 1.
         * NSTG 2: K and V of j landed; every warp is done with tile j + 1,
         * whose buffers now take tile j - 1. */
        __syncthreads();
        if (NSTG == 1) {
            load_kv(Vs, vb, j);
        } else if (j > 0) {
            load_kv(Ks + (BN * HD - bo), kb, j - 1);
            load_kv(Vs + (BN * HD - bo), vb, j - 1);
        }

        float s[NS][4];
#pragma unroll
        for (int n = 0; n < NS; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t a[4];
            tc_ldsm4(a, qa[kk & 3] + (kk >> 2) * 128);
#pragma unroll
            for (int np = 0; np < BN / 16; np++) {
                uint32_t b[4];
                tc_ldsm4(b, ka[kk & 3] + bb + (kk >> 2) * 128 + np * 32 * HD);
                tc_mma(s[2 * np], a, b[0], b[1]);
                tc_mma(s[2 * np + 1], a, b[2], b[3]);
            }
        }

        if ((j + 1) * BN - 1 > pmin) { /* the tile reaches past the first row's position */
            int k0 = j * BN + 2 * (lane & 3);
#pragma unroll
            for (int n = 0; n < NS; n++) {
                int k = k0 + 8 * n;
                if (k > p0) s[n][0] = -INFINITY;
                if (k + 1 > p0) s[n][1] = -INFINITY;
                if (k > p1) s[n][2] = -INFINITY;
                if (k + 1 > p1) s[n][3] = -INFINITY;
            }
        }

        /* online softmax; a row's 4 owners are lanes 4g .. 4g + 3 */
        float x0 = m0, x1 = m1;
#pragma unroll
        for (int n = 0; n < NS; n++) {
            x0 = fmaxf(x0, fmaxf(s[n][0], s[n][1]));
            x1 = fmaxf(x1, fmaxf(s[n][2], s[n][3]));
        }
        x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 1));
        x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 2));
        x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 1));
        x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 2));
        /* a row with no visible key yet keeps max -inf: use 0 so no inf - inf */
        float ms0 = x0 == -INFINITY ? 0.0f : x0 * sl2, ms1 = x1 == -INFINITY ? 0.0f : x1 * sl2;
        float c0 = exp2f(m0 * sl2 - ms0), c1 = exp2f(m1 * sl2 - ms1);
        m0 = x0;
        m1 = x1;
        l0 *= c0;
        l1 *= c1;
        /* rescaling O costs as many instructions as the tile's mma; skip it
         * when no row of the warp got a new maximum (most tiles once the
         * diagonal is behind) */
        if (__any_sync(0xffffffffu, c0 != 1.0f || c1 != 1.0f)) {
#pragma unroll
            for (int n = 0; n < NO; n++) {
                o[n][0] *= c0;
                o[n][1] *= c0;
                o[n][2] *= c1;
                o[n][3] *= c1;
            }
        }
        uint32_t pa[BN / 16][4];
#pragma unroll
        for (int n = 0; n < NS; n++) {
            float e0 = exp2f(fmaf(s[n][0], sl2, -ms0)), e1 = exp2f(fmaf(s[n][1], sl2, -ms0));
            float e2 = exp2f(fmaf(s[n][2], sl2, -ms1)), e3 = exp2f(fmaf(s[n][3], sl2, -ms1));
            l0 += e0 + e1;
            l1 += e2 + e3;
            /* C layout of n-tiles 2kk, 2kk+1 == A layout of k-chunk kk */
            pa[n >> 1][(n & 1) * 2] = tc_pack(e0, e1);
            pa[n >> 1][(n & 1) * 2 + 1] = tc_pack(e2, e3);
        }

        if (NSTG == 1) {
            tc_cp_wait_all();
            __syncthreads(); /* V tile j landed; every warp is done with K of j */
            if (j > 0) load_kv(Ks, kb, j - 1);
        }

#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                uint32_t b[4];
                tc_ldsm4_t(b, va[dp & 3] + bb + (dp >> 2) * 128 + kk * 32 * HD);
                tc_mma(o[2 * dp], pa[kk], b[0], b[1]);
                tc_mma(o[2 * dp + 1], pa[kk], b[2], b[3]);
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    int ta = t0 + wr + (lane >> 2), tb = ta + 8;
    int64_t ra = (int64_t)ta * H * HD + (int64_t)h * HD + 2 * (lane & 3), rb = ra + (int64_t)8 * H * HD;
#pragma unroll
    for (int n = 0; n < NO; n++) {
        if (ta < T) {
            float2 g = *(const float2 *)(gate + ra + 8 * n);
            *(uint32_t *)(out + ra + 8 * n) =
                tc_pack(o[n][0] * i0 * qk_sigmoid(g.x), o[n][1] * i0 * qk_sigmoid(g.y));
        }
        if (tb < T) {
            float2 g = *(const float2 *)(gate + rb + 8 * n);
            *(uint32_t *)(out + rb + 8 * n) =
                tc_pack(o[n][2] * i1 * qk_sigmoid(g.x), o[n][3] * i1 * qk_sigmoid(g.y));
        }
    }
}

static int fa_smem_optin(void)
{
    static int v = -1; /* the device's per-block opt-in shared memory, asked once */
    if (v < 0) {
        int dev = 0, s = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&s, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
            s = 48 << 10;
        v = s;
    }
    return v;
}

template <int HD, int BM, int BN, int NSTG>
static int fa_launch(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx, int T,
                     int H, int KV, int pos0, uint16_t *out, qk_stream st)
{
    size_t smem = (size_t)(BM + 2 * NSTG * BN) * HD * 2;
    if ((int)smem > fa_smem_optin()) return (int)cudaErrorInvalidValue;
    cudaError_t e = cudaFuncSetAttribute(k_attn_flash<HD, BM, BN, NSTG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess) return (int)e;
    int ntiles = (T + BM - 1) / BM;
    k_attn_flash<HD, BM, BN, NSTG>
        <<<ntiles * H, 2 * BM, smem, st>>>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, ntiles, out);
    return qk_launch_status();
}

template <int HD, int NSTG>
static int fa_launch_tile(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx,
                          int T, int H, int KV, int pos0, uint16_t *out, qk_stream st, int bm, int bn)
{
    if (bm == 64 && bn == 64) return fa_launch<HD, 64, 64, NSTG>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st);
    if (bm == 128 && bn == 64) return fa_launch<HD, 128, 64, NSTG>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st);
    if (bm == 64 && bn == 32) return fa_launch<HD, 64, 32, NSTG>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st);
    if (bm == 128 && bn == 32) return fa_launch<HD, 128, 32, NSTG>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st);
    return (int)cudaErrorInvalidValue;
}

template <int HD>
static int fa_launch_hd(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx, int T,
                        int H, int KV, int pos0, uint16_t *out, qk_stream st, int bm, int bn, int stages)
{
    if (stages == 1) return fa_launch_tile<HD, 1>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st, bm, bn);
    if (stages == 2) return fa_launch_tile<HD, 2>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st, bm, bn);
    return (int)cudaErrorInvalidValue;
}

extern "C" int qk_attn_flash_ok(int H, int KV, int hd)
{
    return KV > 0 && H >= KV && H % KV == 0 && (hd == 32 || hd == 64 || hd == 128 || hd == 256);
}

extern "C" int qk_attn_flash_cfg(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc,
                                 int max_ctx, int T, int H, int KV, int hd, int pos0, uint16_t *out, qk_stream st,
                                 int bm, int bn, int stages)
{
    if (T <= 0) return 0;
    if (!qk_attn_flash_ok(H, KV, hd) || pos0 < 0 || pos0 + T > max_ctx) return (int)cudaErrorInvalidValue;
    if (bm == 0) bm = 64;
    if (bn == 0) bn = 64;
    if (stages == 0) stages = 1;
    switch (hd) {
    case 32: return fa_launch_hd<32>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st, bm, bn, stages);
    case 64: return fa_launch_hd<64>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st, bm, bn, stages);
    case 128: return fa_launch_hd<128>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st, bm, bn, stages);
    case 256: return fa_launch_hd<256>(q, gate, kc, vc, max_ctx, T, H, KV, pos0, out, st, bm, bn, stages);
    default: return (int)cudaErrorInvalidValue;
    }
}

/* The default tiling: 64 query rows with one K and one V buffer (96 KB at
 * hd 256: two blocks per SM on sm_90, one on sm_120's 100 KB), except for
 * long chunks at hd 256 where the device holds 128 rows with two buffers
 * each (192 KiB): H100, 27B heads, 8192-token chunk at position 0 2.96 ->
 * 2.79 ms, at 57344 41.7 -> 38.8 ms (296 -> 319 TFLOP/s); at 1000 tokens
 * 0.082 -> 0.086 ms (half as many blocks), so short chunks, such as a chat
 * turn after a long history, keep 64 rows. Both give the same bits. */
#define FA_LONG_T 2048
extern "C" int qk_attn_flash(const float *q, const float *gate, const uint16_t *kc, const uint16_t *vc, int max_ctx,
                             int T, int H, int KV, int hd, int pos0, uint16_t *out, qk_stream st)
{
    if (hd == 256 && T >= FA_LONG_T && fa_smem_optin() >= (128 + 2 * 2 * 64) * 256 * 2)
        return qk_attn_flash_cfg(q, gate, kc, vc, max_ctx, T, H, KV, hd, pos0, out, st, 128, 64, 2);
    return qk_attn_flash_cfg(q, gate, kc, vc, max_ctx, T, H, KV, hd, pos0, out, st, 0, 0, 0);
}
