/* mma.cuh — tensor-core building blocks shared by the tiled kernels
 * (attn_flash.cu, moe_gemm.cu): cp.async copies into shared memory,
 * ldmatrix fragment loads and the mma.sync m16n8k16 bf16 MMA with fp32
 * accumulation (sm_80+, so the same code runs on Ampere, Ada, Hopper and
 * Blackwell). CUDA C++ only. */
#ifndef QC_KERNELS_MMA_CUH
#define QC_KERNELS_MMA_CUH

#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ uint32_t tc_smem(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16 bytes global -> shared; src_bytes 0 writes zeros (rows or columns past
 * the operand's end). */
__device__ __forceinline__ void tc_cp16(uint32_t dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void tc_cp_commit(void) { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void tc_cp_wait_all(void) { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
/* Waits until at most N of this thread's committed groups are in flight. */
template <int N>
__device__ __forceinline__ void tc_cp_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void tc_ldsm4(uint32_t *r, uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void tc_ldsm4_t(uint32_t *r, uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* c (16x8 fp32) += a (16x16 bf16) * b (16x8 bf16). */
__device__ __forceinline__ void tc_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* The transpose of an 8x8 b16 matrix held as one fragment register per
 * lane (lane l: row l / 4, columns 2 (l % 4) and + 1), sm_75+. */
__device__ __forceinline__ uint32_t tc_movt(uint32_t a)
{
    uint32_t d;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
    return d;
}

/* Two floats as bf16x2 (round to nearest even), lo in the low half (the
 * fragment's lower column). */
__device__ __forceinline__ uint32_t tc_pack(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return (uint32_t)__bfloat16_as_ushort(v.x) | ((uint32_t)__bfloat16_as_ushort(v.y) << 16);
}

#endif
