// pdl_chain.cu — per-node cost of chained full-grid streaming kernels in a CUDA graph on this GPU:
// plain launches vs programmatic dependent launch (trigger at entry, wait before use) vs PDL with the
// first loads issued before the wait. Build: nvcc -O3 -arch=sm_90a -std=c++17 -o pdl_chain pdl_chain.cu
// (BENCHMARKS.md, "CUDA engine: quantized formats", fifth session).
#include <cstdio>
#include <cstdint>
#include <vector>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("ERR %s line %d: %s\n", #x, __LINE__, cudaGetErrorString(e_)); exit(1);} } while (0)
__device__ __forceinline__ void trig() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void gwait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
// MODE 0: plain; 1: wait first then loads; 2: first loads issued before wait
template <int MODE, int CH>
__global__ void __launch_bounds__(256, 2) k_stream(const uint4 *__restrict__ w, size_t n16, const float *__restrict__ xin, float *out, int work)
{
    if (MODE) trig();
    if (MODE == 1) gwait();
    const size_t tid = blockIdx.x * (size_t)blockDim.x + threadIdx.x, T = (size_t)gridDim.x * blockDim.x;
    uint4 v[CH];
    size_t i = tid;
#pragma unroll
    for (int c = 0; c < CH; c++) v[c] = (i + c * T < n16) ? __ldcs(w + i + c * T) : make_uint4(0,0,0,0);
    if (MODE == 2) gwait();
    float x = xin[blockIdx.x & 63];
    uint32_t h = 0;
    for (;;) {
#pragma unroll
        for (int c = 0; c < CH; c++) {
            uint32_t t = v[c].x ^ v[c].y ^ v[c].z ^ v[c].w;
            for (int k = 0; k < work; k++) t = t * 1664525u + 1013904223u;
            h ^= t;
        }
        i += CH * T;
        if (i >= n16) break;
#pragma unroll
        for (int c = 0; c < CH; c++) v[c] = (i + c * T < n16) ? __ldcs(w + i + c * T) : make_uint4(0,0,0,0);
    }
    if (h == 0x12345678u) out[blockIdx.x] = x;
    if (tid == 0) out[1024 + (blockIdx.x & 63)] = x + 1.0f;
}
__global__ void k_empty(float *out, int pdl) { if (pdl) { trig(); gwait(); } if (threadIdx.x == 9999) out[0] = 1; }

template <class F>
static float time_graph(cudaStream_t st, F launch_all, int nodes)
{
    cudaGraph_t g; cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    launch_all();
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    CK(cudaGraphLaunch(ge, st)); CK(cudaStreamSynchronize(st));
    float best = 1e30f;
    for (int r = 0; r < 5; r++) {
        cudaEventRecord(a, st); CK(cudaGraphLaunch(ge, st)); cudaEventRecord(b, st); CK(cudaEventSynchronize(b));
        float ms; cudaEventElapsedTime(&ms, a, b); if (ms < best) best = ms;
    }
    cudaGraphExecDestroy(ge); cudaGraphDestroy(g);
    return best * 1000.0f / nodes;
}

int main()
{
    int nsm; CK(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, 0));
    cudaStream_t st; CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const int NB = 12; const size_t maxb = 96u << 20;
    std::vector<uint4 *> bufs(NB);
    for (auto &p : bufs) { CK(cudaMalloc(&p, maxb)); CK(cudaMemset(p, 1, maxb)); }
    float *out; CK(cudaMalloc(&out, 1 << 20)); CK(cudaMemset(out, 0, 1 << 20));
    const int grid = 2 * nsm, nodes = 120;
    for (int pdl = 0; pdl < 2; pdl++) {
        float us = time_graph(st, [&] {
            for (int i = 0; i < nodes; i++) {
                cudaLaunchConfig_t cfg = {}; cudaLaunchAttribute at[1];
                at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization; at[0].val.programmaticStreamSerializationAllowed = 1;
                cfg.gridDim = grid; cfg.blockDim = 256; cfg.stream = st; cfg.attrs = at; cfg.numAttrs = pdl;
                CK(cudaLaunchKernelEx(&cfg, k_empty, out, pdl));
            } }, nodes);
        printf("empty grid %d pdl %d: %.2f us/node\n", grid, pdl, us);
    }
    size_t sizes[] = {4u << 20, 16u << 20, 48u << 20, 96u << 20};
    for (int work : {0, 8}) for (size_t sz : sizes) {
        float t[3];
        for (int mode = 0; mode < 3; mode++) {
            t[mode] = time_graph(st, [&] {
                for (int i = 0; i < nodes; i++) {
                    cudaLaunchConfig_t cfg = {}; cudaLaunchAttribute at[1];
                    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization; at[0].val.programmaticStreamSerializationAllowed = 1;
                    cfg.gridDim = grid; cfg.blockDim = 256; cfg.stream = st; cfg.attrs = at; cfg.numAttrs = mode ? 1 : 0;
                    const uint4 *w = bufs[i % NB]; size_t n16 = sz / 16; const float *xin = out + 1024; float *o = out + 4096 * (1 + i % 8);
                    if (mode == 0) CK(cudaLaunchKernelEx(&cfg, k_stream<0, 4>, w, n16, xin, o, work));
                    if (mode == 1) CK(cudaLaunchKernelEx(&cfg, k_stream<1, 4>, w, n16, xin, o, work));
                    if (mode == 2) CK(cudaLaunchKernelEx(&cfg, k_stream<2, 4>, w, n16, xin, o, work));
                } }, nodes);
        }
        printf("stream %3zu MB work %d: plain %.2f us (%.0f GB/s), pdl %.2f us (%.0f GB/s), pdl+early %.2f us (%.0f GB/s)\n",
               sz >> 20, work, t[0], sz / t[0] / 1e3, t[1], sz / t[1] / 1e3, t[2], sz / t[2] / 1e3);
    }
    return 0;
}
