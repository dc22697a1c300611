/* cuda_nvml.c — see cuda_nvml.h. The few NVML declarations needed are
 * written out here (the toolkit does not always ship nvml.h): return codes
 * are ints, 0 = success, 7 = the buffer was too small (the count needed is
 * written back). The process lists are read with the _v2 queries, whose
 * record is NVML's 24-byte v2 layout; some drivers' _v3 wrote a longer
 * record, so _v3 is not used. */
#include "cuda_nvml.h"

#include "util.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct nvml_process {
    unsigned int pid;
    unsigned long long used; /* bytes; ~0ULL when NVML cannot tell */
    unsigned int gpu_instance, compute_instance;
} nvml_process;
_Static_assert(sizeof(nvml_process) == 24, "NVML's nvmlProcessInfo_v2_t is 24 bytes");

enum { NVML_OK = 0, NVML_INSUFFICIENT_SIZE = 7 };

typedef int (*nvml_init_fn)(void);
typedef int (*nvml_by_bus_fn)(const char *bus_id, void **device);
typedef int (*nvml_procs_fn)(void *device, unsigned int *count, nvml_process *out);

static struct {
    pthread_once_t once;
    nvml_by_bus_fn by_bus;
    nvml_procs_fn compute, graphics; /* graphics: may be NULL */
    int ok;
    /* The last answer, reused for a second: callers ask every few hundred
     * milliseconds from timed loops, and the query is not free. */
    pthread_mutex_t mu;
    double t;
    char bus[32];
    int pid, rc;
    uint64_t others;
} g_nvml = {PTHREAD_ONCE_INIT, NULL, NULL, NULL, 0, PTHREAD_MUTEX_INITIALIZER, 0, "", 0, -1, 0};

static void nvml_open(void)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return;
    nvml_init_fn init = (nvml_init_fn)dlsym(h, "nvmlInit_v2");
    g_nvml.by_bus = (nvml_by_bus_fn)dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2");
    g_nvml.compute = (nvml_procs_fn)dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v2");
    g_nvml.graphics = (nvml_procs_fn)dlsym(h, "nvmlDeviceGetGraphicsRunningProcesses_v2");
    g_nvml.ok = init && g_nvml.by_bus && g_nvml.compute && init() == NVML_OK;
}

/* One of the device's process lists into *out (malloc'd, *n records); grows
 * the buffer while NVML says it is too small. 0 on success. */
static int nvml_list(nvml_procs_fn fn, void *dev, nvml_process **out, unsigned int *n)
{
    unsigned int cap = 64;
    for (int tries = 0; tries < 4; tries++) {
        nvml_process *p = malloc(cap * sizeof *p);
        if (!p)
            return -1;
        unsigned int got = cap;
        int rc = fn(dev, &got, p);
        if (rc == NVML_OK) {
            *out = p;
            *n = got;
            return 0;
        }
        free(p);
        if (rc != NVML_INSUFFICIENT_SIZE)
            return -1;
        cap = got + 16; /* (processes may start meanwhile) */
    }
    return -1;
}

static int nvml_query(const char *bus_id, int pid, uint64_t *others)
{
    void *dev = NULL;
    if (g_nvml.by_bus(bus_id, &dev) != NVML_OK)
        return -1;
    nvml_process *c = NULL, *g = NULL;
    unsigned int nc = 0, ng = 0;
    if (nvml_list(g_nvml.compute, dev, &c, &nc) != 0)
        return -1;
    if (g_nvml.graphics && nvml_list(g_nvml.graphics, dev, &g, &ng) != 0)
        ng = 0; /* (the compute list alone then) */
    /* Ours first: on a MIG instance only the processes of our instance
     * share the memory cudaMemGetInfo reports. */
    int found = -1;
    unsigned int inst = 0;
    for (unsigned int i = 0; i < nc && found; i++)
        if ((int)c[i].pid == pid && c[i].used != ~0ULL) {
            inst = c[i].gpu_instance;
            found = 0;
        }
    *others = 0;
    for (unsigned int l = 0; l < 2 && !found; l++) {
        const nvml_process *p = l ? g : c;
        unsigned int n = l ? ng : nc;
        for (unsigned int i = 0; i < n; i++) {
            if ((int)p[i].pid == pid || p[i].used == ~0ULL || p[i].gpu_instance != inst)
                continue;
            bool seen = false; /* a process with a graphics and a compute context: once */
            for (unsigned int j = 0; l && j < nc && !seen; j++)
                seen = c[j].pid == p[i].pid;
            if (!seen)
                *others += p[i].used;
        }
    }
    free(c);
    free(g);
    return found;
}

int qc_nvml_others_bytes(const char *bus_id, int pid, uint64_t *others)
{
    pthread_once(&g_nvml.once, nvml_open);
    if (!g_nvml.ok || !bus_id || !bus_id[0])
        return -1;
    double now = qc_now();
    pthread_mutex_lock(&g_nvml.mu);
    bool fresh = g_nvml.t > 0 && now - g_nvml.t < 1.0 && g_nvml.pid == pid &&
                 !strncmp(g_nvml.bus, bus_id, sizeof g_nvml.bus);
    if (!fresh) {
        g_nvml.rc = nvml_query(bus_id, pid, &g_nvml.others);
        g_nvml.t = now;
        g_nvml.pid = pid;
        snprintf(g_nvml.bus, sizeof g_nvml.bus, "%s", bus_id);
    }
    int rc = g_nvml.rc;
    *others = g_nvml.others;
    pthread_mutex_unlock(&g_nvml.mu);
    return rc;
}
