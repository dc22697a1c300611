/* util.c — see util.h. */
#define _POSIX_C_SOURCE 200809L
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int qc_err_set(qc_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void *qc_malloc(size_t n, qc_err *err, const char *what)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        qc_err_set(err, QC_EXIT_RUNTIME, "out of memory allocating %zu bytes for %s", n, what);
    return p;
}

void *qc_calloc(size_t count, size_t size, qc_err *err, const char *what)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        qc_err_set(err, QC_EXIT_RUNTIME, "out of memory allocating %zu x %zu bytes for %s", count,
                   size, what);
    return p;
}

int qc_read_file(const char *path, char **out, size_t *len, int missing_code, qc_err *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return qc_err_set(err, errno == ENOENT ? missing_code : QC_EXIT_RUNTIME, "%s: %s", path,
                          strerror(errno));
    /* A directory opens for reading on Linux and "seeks" to a huge end. */
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        return qc_err_set(err, missing_code, "%s: is a directory, not a file", path);
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return qc_err_set(err, QC_EXIT_RUNTIME, "%s: cannot seek: %s", path, strerror(errno));
    }
    long n = ftell(f);
    if (n < 0) {
        fclose(f);
        return qc_err_set(err, QC_EXIT_RUNTIME, "%s: cannot tell size: %s", path, strerror(errno));
    }
    rewind(f);
    char *buf = qc_malloc((size_t)n + 1, err, path);
    if (!buf) {
        fclose(f);
        return QC_EXIT_RUNTIME;
    }
    size_t got = fread(buf, 1, (size_t)n, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != (size_t)n) {
        free(buf);
        return qc_err_set(err, QC_EXIT_RUNTIME, "%s: read failed", path);
    }
    buf[n] = '\0';
    *out = buf;
    if (len)
        *len = (size_t)n;
    return QC_OK;
}

char *qc_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    size_t o = a;
    if (a && dir[a - 1] != '/')
        p[o++] = '/';
    memcpy(p + o, name, b + 1);
    return p;
}

double qc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double qc_float_decimal(float f)
{
    char b[32];
    snprintf(b, sizeof b, "%.6g", (double)f);
    return strtod(b, NULL);
}

float qc_bf16_to_f32(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t qc_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and a NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float qc_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) & 1u, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    float v;
    if (exp == 0)
        v = ldexpf((float)man, -24);
    else if (exp == 31)
        v = man ? NAN : INFINITY;
    else
        v = ldexpf((float)(man | 0x400u), (int)exp - 25);
    return sign ? -v : v;
}

float qc_e4m3_to_f32(uint8_t b)
{
    /* OCP E4M3 (fn): bias 7, no infinities, S.1111.111 is NaN, max 448. */
    uint32_t sign = b >> 7, exp = (b >> 3) & 0xfu, man = b & 7u;
    float v;
    if (exp == 15 && man == 7)
        v = NAN;
    else if (exp == 0)
        v = ldexpf((float)man, -9); /* subnormal: man/8 * 2^-6 */
    else
        v = ldexpf((float)(8u | man), (int)exp - 10);
    return sign ? -v : v;
}

void *qc_grow(void *arr, size_t *cap, size_t n, size_t elsize, size_t first)
{
    if (n < *cap)
        return arr;
    size_t nc = *cap ? *cap * 2 : first;
    if (nc <= n)
        nc = n + 1;
    void *p = realloc(arr, nc * elsize);
    if (p)
        *cap = nc;
    return p;
}

int qc_load_default_threads(void)
{
    const char *e = getenv("QCHAT_LOAD_THREADS");
    long n = e && *e ? strtol(e, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n > 64 ? 64 : (int)n;
}
