/* probe.cuh — per-block timing of the quantized GEMV launches, a
 * diagnostic compiled only with -DQG_PROBE (`make probe`, never part of
 * qchat or the tests). Every block of a persistent or streamed GEMV records
 * its SM, its entry time, the time its PDL wait returned and its end time
 * (%globaltimer, ns); the host writes the records to $QG_PROBE_OUT at exit,
 * and tools/trace/blocks.py reads them. What it answers that a kernel
 * timeline (tools/trace/kernel_trace.c) cannot: how long the PDL release
 * takes after the previous launch's last block, and which blocks of a
 * launch finish late and why (BENCHMARKS.md, ninth session).
 *
 * A launch is numbered by a device counter that the last block of each
 * probed launch advances after its own record, so every block of a launch
 * reads its launch's number at its end (the launch before completed before
 * its PDL wait returned). The record buffer is static (QG_PROBE_N records);
 * later records are dropped. */
#pragma once

#ifdef QG_PROBE
#include <stdio.h>
#include <stdlib.h>

#include "common.cuh"

struct qg_probe_rec {
    unsigned launch, smid, block, grid, groups, kind;
    unsigned long long t_entry, t_wait, t_end;
};
#define QG_PROBE_N (1u << 21)
__device__ qg_probe_rec qg_probe_buf[QG_PROBE_N];
__device__ unsigned qg_probe_n, qg_probe_launch, qg_probe_done;

/* Thread 0 of each block, at its end (after a block barrier). */
__device__ __forceinline__ void qg_probe_record(unsigned kind, unsigned groups, unsigned long long t_entry,
                                                unsigned long long t_wait)
{
    const unsigned long long t_end = qk_globaltimer();
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    const unsigned i = atomicAdd(&qg_probe_n, 1u);
    if (i < QG_PROBE_N) {
        const qg_probe_rec r = {*(volatile unsigned *)&qg_probe_launch, smid, blockIdx.x, gridDim.x, groups, kind,
                                t_entry, t_wait, t_end};
        qg_probe_buf[i] = r;
    }
    __threadfence();
    if (atomicAdd(&qg_probe_done, 1u) == gridDim.x - 1) {
        qg_probe_done = 0;
        atomicAdd(&qg_probe_launch, 1u);
    }
}

static void qg_probe_dump(void)
{
    unsigned n = 0;
    const char *path = getenv("QG_PROBE_OUT");
    if (!path || cudaDeviceSynchronize() != cudaSuccess || cudaMemcpyFromSymbol(&n, qg_probe_n, 4) != cudaSuccess) {
        fprintf(stderr, "qg_probe: nothing written (QG_PROBE_OUT unset or the device failed)\n");
        return;
    }
    if (n > QG_PROBE_N) n = QG_PROBE_N;
    qg_probe_rec *h = (qg_probe_rec *)malloc((size_t)n * sizeof *h + 1);
    FILE *f = fopen(path, "wb");
    const bool ok = h && f && cudaMemcpyFromSymbol(h, qg_probe_buf, (size_t)n * sizeof *h) == cudaSuccess &&
                    fwrite(h, sizeof *h, n, f) == n;
    if (f && fclose(f) != 0) fprintf(stderr, "qg_probe: cannot write %s\n", path);
    if (!ok) fprintf(stderr, "qg_probe: cannot write %u records to %s\n", n, path);
    free(h);
}

/* Host: registers the dump once (atexit runs it before the CUDA runtime's
 * own teardown, which registered earlier). */
static inline void qg_probe_arm(void)
{
    static int armed;
    if (!armed) {
        armed = 1;
        atexit(qg_probe_dump);
    }
}

#define QG_PROBE_ENTRY const unsigned long long qg_t_entry = qk_globaltimer();
#define QG_PROBE_WAITED const unsigned long long qg_t_wait = qk_globaltimer();
#define QG_PROBE_END(KIND, GROUPS)                                                                               \
    do {                                                                                                         \
        __syncthreads();                                                                                         \
        if (threadIdx.x == 0) qg_probe_record((KIND), (unsigned)(GROUPS), qg_t_entry, qg_t_wait);               \
    } while (0)
#else
#define QG_PROBE_ENTRY
#define QG_PROBE_WAITED
#define QG_PROBE_END(KIND, GROUPS) \
    do {                           \
    } while (0)
static inline void qg_probe_arm(void) {}
#endif
