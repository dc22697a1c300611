/* cuda_nvml.c — see cuda_nvml.h. The few NVML declarations needed are
 * written out here (the toolkit does not always ship nvml.h): return codes
 * are ints, 0 = success; the process record is NVML's v2 layout, which the
 * _v2 and _v3 queries both fill. */
#include "cuda_nvml.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

typedef struct nvml_process {
    unsigned int pid;
    unsigned long long used; /* bytes; ~0ULL when NVML cannot tell */
    unsigned int gpu_instance, compute_instance;
} nvml_process;

typedef int (*nvml_init_fn)(void);
typedef int (*nvml_by_bus_fn)(const char *bus_id, void **device);
typedef int (*nvml_procs_fn)(void *device, unsigned int *count, nvml_process *out);

static struct {
    pthread_once_t once;
    nvml_by_bus_fn by_bus;
    nvml_procs_fn procs;
    int ok;
} g_nvml = {PTHREAD_ONCE_INIT, NULL, NULL, 0};

static void nvml_open(void)
{
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return;
    nvml_init_fn init = (nvml_init_fn)dlsym(h, "nvmlInit_v2");
    g_nvml.by_bus = (nvml_by_bus_fn)dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2");
    g_nvml.procs = (nvml_procs_fn)dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
    if (!g_nvml.procs)
        g_nvml.procs = (nvml_procs_fn)dlsym(h, "nvmlDeviceGetComputeRunningProcesses_v2");
    g_nvml.ok = init && g_nvml.by_bus && g_nvml.procs && init() == 0;
}

int qc_nvml_process_bytes(const char *bus_id, int pid, uint64_t *ours, uint64_t *others)
{
    pthread_once(&g_nvml.once, nvml_open);
    void *dev = NULL;
    if (!g_nvml.ok || !bus_id || !bus_id[0] || g_nvml.by_bus(bus_id, &dev) != 0)
        return -1;
    nvml_process p[256];
    unsigned int n = sizeof p / sizeof p[0];
    if (g_nvml.procs(dev, &n, p) != 0) /* (more than 256 processes: not known) */
        return -1;
    int found = -1;
    *others = 0;
    for (unsigned int i = 0; i < n; i++) {
        if (p[i].used == ~0ULL)
            continue;
        if ((int)p[i].pid == pid) {
            *ours = p[i].used;
            found = 0;
        } else {
            *others += p[i].used;
        }
    }
    return found;
}
