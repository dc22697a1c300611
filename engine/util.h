/* util.h — errors, exit codes, small helpers shared by every module.
 *
 * Error convention: a function that can fail returns 0 on success or one of the
 * QC_EXIT_* codes, and fills a caller-owned qc_err with a one-line message that
 * names the file, tensor or option at fault. Nothing prints on its own. */
#ifndef QC_UTIL_H
#define QC_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    QC_OK = 0,
    QC_EXIT_RUNTIME = 1,    /* runtime failure (I/O, out of memory, CUDA error) */
    QC_EXIT_USAGE = 2,      /* bad flags or arguments */
    QC_EXIT_CHECKPOINT = 3, /* unusable checkpoint: message names file and fault */
};

typedef struct qc_err {
    int code;
    char msg[1024];
} qc_err;

/* Sets err (if not NULL) and returns code. printf-style. */
int qc_err_set(qc_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Allocation that reports failure through err rather than aborting. */
void *qc_malloc(size_t n, qc_err *err, const char *what);
void *qc_calloc(size_t count, size_t size, qc_err *err, const char *what);

/* Reads a whole file into a NUL-terminated heap buffer. Returns QC_OK or code. */
int qc_read_file(const char *path, char **out, size_t *len, int missing_code, qc_err *err);

/* Joins dir + "/" + name into a heap string (caller frees). */
char *qc_path_join(const char *dir, const char *name);

/* Monotonic time in seconds. */
double qc_now(void);

/* A float parameter as the short decimal people wrote (0.6, not
 * 0.600000023841858): for JSON and settings read from float fields. */
double qc_float_decimal(float f);

/* Threads for loading a model (the weight loader's pool, hashing shared
 * tensors): QCHAT_LOAD_THREADS, else the online CPUs (max 64). */
int qc_load_default_threads(void);

/* Room for element n of a growing array of elsize-byte elements: returns
 * arr when n < *cap, else the array reallocated to double the capacity
 * (first when empty) with *cap updated; NULL when out of memory, arr and
 * *cap then unchanged. */
void *qc_grow(void *arr, size_t *cap, size_t n, size_t elsize, size_t first);

/* Unaligned little-endian loads of element i from packed tensor data (the
 * mmap'ed checkpoint gives no alignment guarantee beyond the file's). */
static inline uint16_t qc_ld_u16(const void *base, int64_t i)
{
    uint16_t v;
    memcpy(&v, (const unsigned char *)base + 2 * i, 2);
    return v;
}
static inline uint32_t qc_ld_u32(const void *base, int64_t i)
{
    uint32_t v;
    memcpy(&v, (const unsigned char *)base + 4 * i, 4);
    return v;
}
static inline uint64_t qc_ld_u64(const void *base, int64_t i)
{
    uint64_t v;
    memcpy(&v, (const unsigned char *)base + 8 * i, 8);
    return v;
}

/* bf16 / f16 / e4m3 scalar conversions (exact). */
float qc_bf16_to_f32(uint16_t v);
uint16_t qc_f32_to_bf16(float f); /* round to nearest even */
float qc_f16_to_f32(uint16_t v);
float qc_e4m3_to_f32(uint8_t v);

#endif
