/* kernel_trace.c — a CUDA injection library (CUDA_INJECTION64_PATH) that
 * records the start and end of every kernel a process runs, graph launches
 * included, with CUPTI's concurrent-kernel activity records, and writes them
 * to $KTRACE_OUT at exit. A diagnostic for benchmarks only: it is not part of
 * qchat and the build never needs it. The H100 test machine has no Nsight
 * Systems; this gives the same kernel timeline (programmatic dependent
 * launches keep their overlap: the records are not serialized).
 *
 *   make trace                       (builds build/kernel_trace.so)
 *   CUDA_INJECTION64_PATH=$PWD/build/kernel_trace.so KTRACE_OUT=t.txt \
 *       ./qchat bench --synthetic 27b:int4 --quick --no-profile
 *   python3 tools/trace/timeline.py t.txt int4
 *
 * Output: one line per kernel, "K start_ns end_ns grid block smem graph node
 * name_index", then "N index mangled_name" for every name. */
#include <cupti.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KT_BUF (8u << 20)
#define KT_NAMES 4096

static FILE *kt_out;
static const char *kt_name[KT_NAMES];
static int kt_nnames;

static int kt_name_index(const char *n)
{
    for (int i = 0; i < kt_nnames; i++)
        if (kt_name[i] == n || (n && kt_name[i] && strcmp(kt_name[i], n) == 0)) return i;
    if (kt_nnames == KT_NAMES) return -1;
    kt_name[kt_nnames] = n ? strdup(n) : NULL;
    return kt_nnames++;
}

static void CUPTIAPI kt_buffer_requested(uint8_t **buf, size_t *size, size_t *max_records)
{
    *buf = aligned_alloc(8, KT_BUF);
    *size = *buf ? KT_BUF : 0;
    *max_records = 0;
}

static void CUPTIAPI kt_buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid)
{
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity *rec = NULL;
    while (kt_out && cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
        const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
        fprintf(kt_out, "K %llu %llu %d %d %d %u %llu %d\n", (unsigned long long)k->start,
                (unsigned long long)k->end, k->gridX, k->blockX, k->dynamicSharedMemory, k->graphId,
                (unsigned long long)k->graphNodeId, kt_name_index(k->name));
    }
    free(buf);
}

static void kt_finish(void)
{
    cuptiActivityFlushAll(1);
    if (!kt_out) return;
    for (int i = 0; i < kt_nnames; i++) fprintf(kt_out, "N %d %s\n", i, kt_name[i] ? kt_name[i] : "?");
    fclose(kt_out);
    kt_out = NULL;
}

int InitializeInjection(void)
{
    const char *path = getenv("KTRACE_OUT");
    path = path && *path ? path : "ktrace.txt";
    kt_out = fopen(path, "w");
    if (!kt_out) {
        fprintf(stderr, "kernel_trace: cannot write %s: %s (no trace recorded)\n", path, strerror(errno));
        return 0;
    }
    if (cuptiActivityRegisterCallbacks(kt_buffer_requested, kt_buffer_completed) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
        fprintf(stderr, "kernel_trace: CUPTI activity setup failed\n");
        return 0;
    }
    atexit(kt_finish);
    return 1;
}
