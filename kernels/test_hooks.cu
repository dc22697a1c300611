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

struct late_copies {
    uint4 *dst[QK_TEST_LATE_MAX];
    const uint4 *src[QK_TEST_LATE_MAX];
    int64_t n16[QK_TEST_LATE_MAX];
    int n;
};

__global__ void k_test_late_copy(const late_copies c, int64_t delay_ns)
{
    qk_pdl_trigger();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    const unsigned long long t0 = qk_globaltimer();
    while ((int64_t)(qk_globaltimer() - t0) < delay_ns) __nanosleep(1000);
#endif
    for (int j = 0; j < c.n; j++)
        for (int64_t i = threadIdx.x; i < c.n16[j]; i += blockDim.x) c.dst[j][i] = c.src[j][i];
}

extern "C" int qk_test_late_copy(void *const *dst, const void *const *src, const size_t *bytes, int n,
                                 int64_t delay_ns, qk_stream st)
{
    late_copies c = {};
    if (n < 1 || n > QK_TEST_LATE_MAX) return (int)cudaErrorInvalidValue;
    for (int j = 0; j < n; j++) {
        if (!dst[j] || !src[j] || bytes[j] % 16 || (((uintptr_t)dst[j] | (uintptr_t)src[j]) & 15))
            return (int)cudaErrorInvalidValue;
        c.dst[j] = (uint4 *)dst[j];
        c.src[j] = (const uint4 *)src[j];
        c.n16[j] = (int64_t)(bytes[j] / 16);
    }
    c.n = n;
    k_test_late_copy<<<1, 256, 0, st>>>(c, delay_ns);
    return qk_launch_status();
}
