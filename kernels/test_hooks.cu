/* test_hooks.cu — kernels that exist for the tests, not for the engine.
 *
 * A PDL launch may start before the kernel it depends on has finished and
 * must not read that kernel's output before griddepcontrol.wait. On a plain
 * stream the kernels before a decode kernel finish long before the decode
 * kernel issues anything, so a kernel that read too early still passed
 * (seventeenth session). qk_test_late_copy makes the window wide: it lets
 * its dependents launch at once, then sleeps, and only then writes. A
 * dependent that reads its input before its wait reads what was there
 * before (the tests poison it with NaN). */
#include "common.cuh"
#include "kernels.h"

__global__ void k_test_late_copy(uint4 *d0, const uint4 *s0, uint4 *d1, const uint4 *s1, int64_t n16, int64_t delay_ns)
{
    qk_pdl_trigger();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    uint64_t t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while ((int64_t)(t - t0) < delay_ns);
#endif
    for (int64_t i = threadIdx.x; i < n16; i += blockDim.x) {
        d0[i] = s0[i];
        if (d1) d1[i] = s1[i];
    }
}

extern "C" int qk_test_late_copy(void *dst0, const void *src0, void *dst1, const void *src1, size_t bytes,
                                 int64_t delay_ns, qk_stream st)
{
    if (bytes % 16 || (((uintptr_t)dst0 | (uintptr_t)src0 | (uintptr_t)dst1 | (uintptr_t)src1) & 15))
        return (int)cudaErrorInvalidValue;
    k_test_late_copy<<<1, 256, 0, st>>>((uint4 *)dst0, (const uint4 *)src0, (uint4 *)dst1, (const uint4 *)src1,
                                        (int64_t)(bytes / 16), delay_ns);
    return qk_launch_status();
}
