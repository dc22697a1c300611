/* blas.cuh — the cuBLAS handle behind qk_blas (shared by gemm.cu and
 * attn_gemm.cu). */
#ifndef QC_KERNELS_BLAS_CUH
#define QC_KERNELS_BLAS_CUH

#include <cublas_v2.h>

#include "common.cuh"

struct qk_blas {
    cublasHandle_t h;
    void *ws;
    size_t ws_bytes;
};

#endif
