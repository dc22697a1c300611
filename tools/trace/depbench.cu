/* depbench.cu — what a dependency between two decode launches costs (a
 * diagnostic, `make depbench`; not part of `all` or `check`).
 *
 * A decode step is a chain of ~370 launches, each of which must see all of
 * the one before. This times a chain of 256 launches of one streaming
 * kernel (2 blocks per SM, each block reading its share of SIZE bytes from
 * HBM, nothing written) in a CUDA graph, for every way the chain can be
 * ordered:
 *   plain     no PDL attribute (the stream orders whole kernels)
 *   pdl-wait  PDL launch, trigger at entry, griddepcontrol.wait (the engine's)
 *   flag      PDL launch, no griddepcontrol.wait: block 0 of kernel n spins
 *             (ld.acquire.gpu, __nanosleep NS) until every block of kernels
 *             < n has done __syncthreads + __threadfence + atomicAdd on one
 *             counter — what a persistent kernel's grid barrier would cost
 *   flags     PDL launch, no griddepcontrol.wait: each block of kernel n,
 *             after __syncthreads + __threadfence, sets its own flag (one
 *             word per block and launch, no atomics); warp 0 of every block
 *             of kernel n + 1 polls all of them (each lane a strided subset
 *             asked at once with relaxed loads, then one fence) before it
 *             reads — a dependency with no
 *             contended address (the flag mode above serialises 2 x 132
 *             atomics and as many pollers on one word)
 *   pf-L2     pdl-wait with the block's first PF bytes asked of L2
 *             (cp.async.bulk.prefetch.L2) before the wait
 *   nowait    PDL launch and no wait at all: no dependency (wrong for a real
 *             chain; the floor)
 * each with no dynamic shared memory (the next kernel's blocks fit beside
 * the running ones) and with 110 KB (they do not, as for the GEMVs). The
 * difference pdl-wait - nowait is the dependency's cost per launch.
 * Results: BENCHMARKS.md, "Tenth session" and "Twenty-seventh session". */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

enum { M_PLAIN, M_PDL, M_FLAG, M_PF, M_NOWAIT, M_FLAGS };
static const char *const mode_names[] = {"plain", "pdl-wait", "flag", "pf-L2", "nowait", "flags"};

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p)
{
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ unsigned ld_relaxed(const unsigned *p)
{
    unsigned v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}

#define FLAGS_PER_LANE 16 /* flags mode: up to 512 blocks */

/* target: the counter value that means every earlier kernel is done (0: the
 * chain's first kernel, which waits the PDL way); for flags, the launch's
 * index l (its flags are done[l * B ..], those it polls done[(l - 1) * B ..]).
 * arg: NS (flag, flags) or PF. */
__global__ void __launch_bounds__(256) k_stream(const uint4 *__restrict__ w, size_t per_block, float *out,
                                                unsigned *done, unsigned target, int mode, int arg)
{
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    const uint4 *p = w + blockIdx.x * per_block;
    if (mode == M_PF) {
        const size_t lim = per_block * 16 < (size_t)arg ? per_block * 16 : (size_t)arg;
        for (size_t o = threadIdx.x * 4096; o < lim; o += 256 * 4096) {
            const unsigned n = lim - o < 4096 ? (unsigned)(lim - o) : 4096u;
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"((const char *)p + o), "r"(n) : "memory");
        }
    }
    if (mode == M_PDL || mode == M_PF || ((mode == M_FLAG || mode == M_FLAGS) && target == 0)) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
    } else if (mode == M_FLAGS) {
        if (threadIdx.x < 32) { /* all of a lane's flags asked at once (relaxed), then one acquire fence */
            const unsigned *f = done + (size_t)(target - 1) * gridDim.x;
            for (;;) {
                unsigned v[FLAGS_PER_LANE];
#pragma unroll
                for (int i = 0; i < FLAGS_PER_LANE; i++) {
                    const unsigned b = threadIdx.x + 32u * (unsigned)i;
                    v[i] = b < gridDim.x ? ld_relaxed(f + b) : 1u;
                }
                unsigned ok = 1u;
#pragma unroll
                for (int i = 0; i < FLAGS_PER_LANE; i++) ok &= v[i] != 0u;
                if (__all_sync(0xffffffffu, ok)) break;
                if (arg) __nanosleep((unsigned)arg);
            }
            __threadfence();
        }
        __syncthreads();
    } else if (mode == M_FLAG) {
        if (threadIdx.x == 0)
            while (ld_acquire(done) < target)
                if (arg) __nanosleep((unsigned)arg);
        __syncthreads();
    }
    uint32_t acc = 0;
    for (size_t i = threadIdx.x; i < per_block; i += 4 * 256) {
        const uint4 a = p[i], b = i + 256 < per_block ? p[i + 256] : a, c = i + 512 < per_block ? p[i + 512] : a,
                    d = i + 768 < per_block ? p[i + 768] : a;
        acc ^= a.x ^ b.y ^ c.z ^ d.w;
    }
    if (acc == 0x12345678u) out[blockIdx.x] = 1.0f; /* keeps the loads; never true for the 0x01 fill */
    if (mode == M_FLAG) {
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(done, 1u);
        }
    } else if (mode == M_FLAGS) {
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(done + (size_t)target * gridDim.x + blockIdx.x),
                         "r"(1u)
                         : "memory");
        }
    }
}

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "depbench: %s: %s\n", #x, cudaGetErrorString(e_));                  \
            return 1;                                                                          \
        }                                                                                      \
    } while (0)

/* us per launch of a 256-launch chain; -1 on an error (printed). */
static double time_chain(cudaStream_t st, const uint4 *w, size_t pool, float *out, unsigned *done, size_t bytes,
                         int B, int mode, int arg, size_t smem)
{
    const int L = 256, reps = 20;
    const size_t per_block = bytes / 16 / (size_t)B;
    cudaGraph_t g;
    cudaGraphExec_t ge;
    if (cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal) != cudaSuccess) return -1;
    cudaMemsetAsync(done, 0, (size_t)L * (size_t)B * sizeof(unsigned), st);
    size_t off = 0;
    for (int l = 0; l < L; l++) {
        if ((off + per_block * B) * 16 > pool) off = 0;
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.gridDim = dim3((unsigned)B);
        cfg.blockDim = dim3(256);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = st;
        cfg.attrs = at;
        cfg.numAttrs = mode == M_PLAIN ? 0 : 1;
        cudaLaunchKernelEx(&cfg, k_stream, w + off, per_block, out, done, mode == M_FLAGS ? (unsigned)l : (unsigned)(l * B),
                           mode, arg);
        off += per_block * B;
    }
    if (cudaStreamEndCapture(st, &g) != cudaSuccess || cudaGraphInstantiate(&ge, g, 0) != cudaSuccess) {
        fprintf(stderr, "depbench: capture: %s\n", cudaGetErrorString(cudaGetLastError()));
        return -1;
    }
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int r = 0; r < 3; r++) cudaGraphLaunch(ge, st);
    cudaEventRecord(e0, st);
    for (int r = 0; r < reps; r++) cudaGraphLaunch(ge, st);
    cudaEventRecord(e1, st);
    float ms = 0;
    const cudaError_t e = cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        fprintf(stderr, "depbench: %s\n", cudaGetErrorString(e));
        return -1;
    }
    return ms * 1000.0 / reps / L;
}

int main(void)
{
    int nsm = 0, cc = 0;
    CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
    CK(cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, 0));
    if (cc < 9) {
        fprintf(stderr, "depbench: needs sm_90 or later (PDL, bulk prefetch); this GPU is sm_%d\n", cc * 10);
        return 1;
    }
    const size_t pool = (size_t)2 << 30, big = 110 << 10;
    uint4 *w;
    float *out;
    unsigned *done;
    CK(cudaMalloc(&w, pool));
    CK(cudaMemset(w, 1, pool));
    CK(cudaMalloc(&out, 4096 * sizeof(float)));
    CK(cudaMalloc(&done, (size_t)256 * 2 * (size_t)nsm * sizeof(unsigned))); /* flags: a word per block and launch */
    CK(cudaFuncSetAttribute(k_stream, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)big));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    static const struct { int mode, arg; } runs[] = {{M_PLAIN, 0}, {M_PDL, 0},        {M_FLAG, 0},      {M_FLAG, 100},
                                                     {M_PF, 16384}, {M_PF, 32768}, {M_NOWAIT, 0},
                                                     {M_FLAGS, 0}, {M_FLAGS, 50}};
    const double mb[] = {5, 10, 20, 40};
    printf("%-9s %6s %6s %6s %10s %8s\n", "mode", "arg", "smem", "MB", "us/launch", "GB/s");
    for (int si = 0; si < 4; si++)
        for (int sm = 0; sm < 2; sm++)
            for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
                if (runs[r].mode == M_FLAGS && 2 * nsm > 32 * FLAGS_PER_LANE) continue; /* more blocks than flags polled */
                const size_t bytes = (size_t)(mb[si] * 1e6);
                const double us = time_chain(st, w, pool, out, done, bytes, 2 * nsm, runs[r].mode, runs[r].arg,
                                             sm ? big : 0);
                if (us < 0) return 1;
                printf("%-9s %6d %5zuK %6.0f %10.2f %8.0f\n", mode_names[runs[r].mode], runs[r].arg,
                       (sm ? big : 0) >> 10, mb[si], us, bytes / us / 1e3);
            }
    cudaEvent_t e0, e1; /* the copy figure the engine's percentages use */
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventRecord(e0, st));
    for (int r = 0; r < 10; r++) CK(cudaMemcpyAsync(w, (char *)w + pool / 2, pool / 2, cudaMemcpyDeviceToDevice, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    printf("device-to-device copy: %.0f GB/s (read + write)\n", 10.0 * pool / (ms * 1e6));
    return 0;
}
