/* attn_gemm.cu — causal GQA attention for long prefills on the tensor cores
 * through cuBLAS: per block of query rows, S = Q K^T (batched over the query
 * heads of one KV head, K shared with stride 0), a causal softmax that writes
 * normalised bf16 probabilities P, O = P V, then the sigmoid gate. Q and P
 * are rounded to bf16 (K and V are bf16 in the cache already); softmax
 * statistics are fp32. The full-precision kernel in attn.cu serves decode and
 * short chunks. */
#include <math.h>

#include "blas.cuh"

__global__ void k_q_to_bf16(const float *q, int64_t n, uint16_t *out)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = qk_to_bf(q[i]);
}

/* One block per (head, query row): causal softmax over the first n_i keys of
 * a row of S (fp32, already scaled), P row written as bf16 (zeros past n_i
 * up to n_ld). */
__global__ void k_causal_softmax(const float *S, int Tq, int n_ld, int n_b, int first_pos, uint16_t *P)
{
    __shared__ float red[33];
    int h = blockIdx.y, i = blockIdx.x;
    const float *row = S + ((int64_t)h * Tq + i) * n_ld;
    uint16_t *prow = P + ((int64_t)h * Tq + i) * n_ld;
    int n = first_pos + i + 1;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, row[j]);
    __shared__ float mx[32];
    float wm = qk_warp_max(m);
    if ((threadIdx.x & 31) == 0) mx[threadIdx.x >> 5] = wm;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? mx[threadIdx.x] : -INFINITY;
        v = qk_warp_max(v);
        if (threadIdx.x == 0) mx[0] = v;
    }
    __syncthreads();
    m = mx[0];
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += __expf(row[j] - m);
    s = qk_block_sum(s, red);
    float inv = 1.0f / s;
    for (int j = threadIdx.x; j < n_ld; j += blockDim.x)
        prow[j] = j < n && j < n_b ? qk_to_bf(__expf(row[j] - m) * inv) : (uint16_t)0;
}

__global__ void k_gate_out(const float *O, const float *gate, int64_t n, uint16_t *out)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = qk_to_bf(O[i] * qk_sigmoid(gate[i]));
}

static size_t al256(size_t n) { return (n + 255) & ~(size_t)255; }

static size_t row_bytes(int n_keys, int H, int hd)
{
    size_t n_ld = (size_t)((n_keys + 7) & ~7);
    return (size_t)H * (n_ld * 4 + n_ld * 2 + (size_t)hd * 2 + (size_t)hd * 4);
}

extern "C" size_t qk_attn_gemm_rows(size_t scratch_bytes, int n_keys, int H, int hd)
{
    size_t per = row_bytes(n_keys, H, hd) + 1024;
    return scratch_bytes / per;
}

extern "C" int qk_attn_prefill_gemm(qk_blas *b, const float *q, const float *gate, const uint16_t *kc,
                                    const uint16_t *vc, int max_ctx, int T, int H, int KV, int hd, int pos0,
                                    void *scratch, size_t scratch_bytes, uint16_t *out)
{
    if (T <= 0) return 0;
    if (KV <= 0 || H % KV || hd % 8 || pos0 + T > max_ctx) return (int)cudaErrorInvalidValue;
    int Tq = (int)qk_attn_gemm_rows(scratch_bytes, pos0 + T, H, hd);
    if (Tq < 1) return (int)cudaErrorInvalidValue;
    if (Tq > T) Tq = T;
    cudaStream_t st;
    if (cublasGetStream(b->h, &st) != CUBLAS_STATUS_SUCCESS) return (int)cudaErrorInvalidValue;
    const int G = H / KV;
    const float scale = 1.0f / sqrtf((float)hd), one = 1.0f, zero = 0.0f;
    for (int t0 = 0; t0 < T; t0 += Tq) {
        int tq = T - t0 < Tq ? T - t0 : Tq;
        int n_b = pos0 + t0 + tq, n_ld = (n_b + 7) & ~7;
        char *p = (char *)scratch;
        float *S = (float *)p;
        p += al256((size_t)H * tq * n_ld * 4);
        uint16_t *P = (uint16_t *)p;
        p += al256((size_t)H * tq * n_ld * 2);
        uint16_t *Qb = (uint16_t *)p;
        p += al256((size_t)tq * H * hd * 2);
        float *O = (float *)p;
        int64_t nq = (int64_t)tq * H * hd;
        k_q_to_bf16<<<1024, 256, 0, st>>>(q + (int64_t)t0 * H * hd, nq, Qb);
        for (int g = 0; g < KV; g++) {
            const uint16_t *Kg = kc + (int64_t)g * max_ctx * hd;
            cublasStatus_t s = cublasGemmStridedBatchedEx(
                b->h, CUBLAS_OP_T, CUBLAS_OP_N, n_b, tq, hd, &scale, Kg, CUDA_R_16BF, hd, 0,
                Qb + (int64_t)g * G * hd, CUDA_R_16BF, H * hd, hd, &zero, S + (int64_t)g * G * tq * n_ld, CUDA_R_32F,
                n_ld, (int64_t)tq * n_ld, G, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS) return (int)cudaErrorLaunchFailure;
        }
        k_causal_softmax<<<dim3(tq, H), 256, 0, st>>>(S, tq, n_ld, n_b, pos0 + t0, P);
        for (int g = 0; g < KV; g++) {
            const uint16_t *Vg = vc + (int64_t)g * max_ctx * hd;
            cublasStatus_t s = cublasGemmStridedBatchedEx(
                b->h, CUBLAS_OP_N, CUBLAS_OP_N, hd, tq, n_b, &one, Vg, CUDA_R_16BF, hd, 0,
                P + (int64_t)g * G * tq * n_ld, CUDA_R_16BF, n_ld, (int64_t)tq * n_ld, &zero, O + (int64_t)g * G * hd,
                CUDA_R_32F, H * hd, hd, G, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS) return (int)cudaErrorLaunchFailure;
        }
        k_gate_out<<<1024, 256, 0, st>>>(O, gate + (int64_t)t0 * H * hd, nq, out + (int64_t)t0 * H * hd);
        int e = qk_launch_status();
        if (e) return e;
    }
    return 0;
}
