/* cuda_nvml.h — how much device memory this process holds, from NVML.
 *
 * cudaMemGetInfo gives the device's free memory, not whose the rest is: a
 * second process (another model server, a desktop) would show as qchat's
 * own runtime. NVML lists the compute and graphics processes of a device
 * with their memory. libnvidia-ml ships with the driver (not the toolkit),
 * so it is opened at run time: no build dependency, and where it is missing,
 * or does not list this process (a container whose pids NVML does not see),
 * callers fall back to cudaMemGetInfo alone. Answers are reused for a
 * second. Owner of nothing the caller sees; the library handle stays open
 * for the process's life. */
#ifndef QC_CUDA_NVML_H
#define QC_CUDA_NVML_H

#include <stdint.h>

/* Device memory on the GPU at PCI bus id `bus_id` (as cudaDeviceGetPCIBusId
 * writes it) held by the processes other than `pid` listed on pid's GPU
 * instance (*others, each process once; what no process is listed for, the
 * driver's own, is not in it). 0 on success; -1 when NVML is missing, fails,
 * or does not list pid. */
int qc_nvml_others_bytes(const char *bus_id, int pid, uint64_t *others);

#endif
