// tlb_spread.cu — does a chain of streaming kernels pay for address translation when each reads a
// region not touched recently (as the decode reads ~15 GB of weights per step)? 8 reused regions vs
// regions spread over 40 GB, and spread regions warmed by the kernel before (one word per 64 KB / 4 KB,
// or an L2 prefetch). Build: nvcc -O3 -arch=sm_90a -std=c++17 -o tlb_spread tlb_spread.cu
#include <cstdio>
#include <cstdint>
#include <vector>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("ERR %s line %d: %s\n", #x, __LINE__, cudaGetErrorString(e_)); exit(1);} } while (0)
template <int CH>
__global__ void __launch_bounds__(256, 2) k_stream(const uint4 *__restrict__ w, size_t n16, const uint32_t *__restrict__ nxt, size_t nxt_words, int warm_stride_words, float *out)
{
    const size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, T = (size_t)gridDim.x * blockDim.x;
    uint32_t h = 0;
    if (warm_stride_words > 0) { // one word per warm_stride of the next region, early
        for (size_t j = tid * (size_t)warm_stride_words; j < nxt_words; j += T * (size_t)warm_stride_words) {
            uint32_t v; asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(nxt + j)); h ^= v;
        }
    }
    if (warm_stride_words < 0) { // the same as an L2 prefetch
        for (size_t j = tid * (size_t)(-warm_stride_words); j < nxt_words; j += T * (size_t)(-warm_stride_words))
            asm volatile("prefetch.global.L2 [%0];" :: "l"(nxt + j));
    }
    for (size_t i = tid; i < n16; i += CH * T) {
        uint4 v[CH];
#pragma unroll
        for (int c = 0; c < CH; c++) v[c] = (i + c * T < n16) ? __ldcs(w + i + c * T) : make_uint4(0,0,0,0);
#pragma unroll
        for (int c = 0; c < CH; c++) h ^= v[c].x ^ v[c].y ^ v[c].z ^ v[c].w;
    }
    if (h == 0x12345678u) out[blockIdx.x] = 1.0f;
}
int main()
{
    int nsm; CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
    cudaStream_t st; CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const size_t total = 40ull << 30; uint8_t *base; CK(cudaMalloc(&base, total)); CK(cudaMemset(base, 1, total));
    std::vector<uint8_t *> chunks; // also many separate allocations
    float *out; CK(cudaMalloc(&out, 1 << 20));
    const int nodes = 240, grid = 2 * nsm;
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    for (size_t sz : {16ull << 20, 48ull << 20}) {
        for (int layout = 0; layout < 2; layout++) for (int warm : {0, 16384, 1024, -16384}) {
            if (layout == 0 && warm) continue;
            std::vector<const uint4 *> reg(nodes + 1);
            for (int i = 0; i <= nodes; i++) {
                size_t off = layout == 0 ? (size_t)(i % 8) * sz : (size_t)i * (total / (nodes + 1) & ~(size_t)0xffff);
                reg[i] = (const uint4 *)(base + off);
            }
            cudaGraph_t g; cudaGraphExec_t ge;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            for (int i = 0; i < nodes; i++)
                k_stream<4><<<grid, 256, 0, st>>>(reg[i], sz / 16, (const uint32_t *)reg[i + 1], sz / 4, warm, out);
            CK(cudaStreamEndCapture(st, &g)); CK(cudaGraphInstantiate(&ge, g, 0));
            float best = 1e30f;
            for (int r = 0; r < 6; r++) {
                cudaEventRecord(a, st); CK(cudaGraphLaunch(ge, st)); cudaEventRecord(b, st); CK(cudaEventSynchronize(b));
                float ms; cudaEventElapsedTime(&ms, a, b); if (r && ms < best) best = ms;
            }
            float us = best * 1000 / nodes;
            printf("%3zu MB per kernel, %s, warm %6d words: %.2f us/kernel, %.0f GB/s\n", sz >> 20,
                   layout ? "regions spread over 40 GB" : "8 regions reused        ", warm, us, sz / us / 1e3);
            cudaGraphExecDestroy(ge); cudaGraphDestroy(g);
        }
    }
    return 0;
}
