/* gemm.cu — prefill GEMMs through cuBLAS: bf16 operands, fp32 accumulate and
 * fp32 output (so the residual add can be fused with beta = 1). */
#include <cublas_v2.h>
#include <stdlib.h>

#include "blas.cuh"


extern "C" int qk_blas_create(qk_blas **out, qk_stream st, size_t workspace_bytes)
{
    *out = NULL;
    qk_blas *b = (qk_blas *)calloc(1, sizeof *b);
    if (!b) return (int)cudaErrorMemoryAllocation;
    if (cublasCreate(&b->h) != CUBLAS_STATUS_SUCCESS) {
        free(b);
        return (int)cudaErrorInitializationError;
    }
    cudaError_t e = cudaSuccess;
    if (workspace_bytes) e = cudaMalloc(&b->ws, workspace_bytes);
    if (e != cudaSuccess) {
        cublasDestroy(b->h);
        free(b);
        return (int)e;
    }
    b->ws_bytes = workspace_bytes;
    /* An explicit workspace keeps cuBLAS from allocating during graph capture. */
    if (cublasSetStream(b->h, st) != CUBLAS_STATUS_SUCCESS ||
        (workspace_bytes && cublasSetWorkspace(b->h, b->ws, workspace_bytes) != CUBLAS_STATUS_SUCCESS) ||
        cublasSetMathMode(b->h, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
        qk_blas_free(b);
        return (int)cudaErrorInitializationError;
    }
    *out = b;
    return 0;
}

extern "C" void qk_blas_free(qk_blas *b)
{
    if (!b) return;
    cublasDestroy(b->h);
    if (b->ws) cudaFree(b->ws);
    free(b);
}

extern "C" size_t qk_blas_workspace_bytes(const qk_blas *b) { return b ? b->ws_bytes : 0; }

extern "C" int qk_gemm_bf16(qk_blas *b, const uint16_t *W, const uint16_t *X, float *Y, int ldy, int T, int N,
                            int K, float beta)
{
    if (T <= 0 || N <= 0) return 0;
    float alpha = 1.0f;
    /* Column-major view: Y^T (N x T, ld ldy) = W^T' (W stored K x N col-major,
     * transposed) * X^T (K x T col-major, ld K). */
    cublasStatus_t s = cublasGemmEx(b->h, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, W, CUDA_R_16BF, K, X,
                                    CUDA_R_16BF, K, &beta, Y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) return (int)cudaErrorLaunchFailure;
    return qk_launch_status();
}

extern "C" int qk_gemm_bf16_out16(qk_blas *b, const uint16_t *W, const uint16_t *X, uint16_t *Y, int ldy, int T,
                                  int N, int K)
{
    if (T <= 0 || N <= 0) return 0;
    float alpha = 1.0f, beta = 0.0f;
    cublasStatus_t s = cublasGemmEx(b->h, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, W, CUDA_R_16BF, K, X,
                                    CUDA_R_16BF, K, &beta, Y, CUDA_R_16BF, ldy, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) return (int)cudaErrorLaunchFailure;
    return qk_launch_status();
}

extern "C" int qk_gemm_f32(qk_blas *b, const float *W, const float *X, float *Y, int ldy, int T, int N, int K)
{
    if (T <= 0 || N <= 0) return 0;
    float alpha = 1.0f, beta = 0.0f;
    /* CUBLAS_COMPUTE_32F with the default math mode: plain fp32 FMAs, never TF32 */
    cublasStatus_t s = cublasGemmEx(b->h, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, W, CUDA_R_32F, K, X, CUDA_R_32F,
                                    K, &beta, Y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) return (int)cudaErrorLaunchFailure;
    return qk_launch_status();
}
