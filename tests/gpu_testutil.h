/* gpu_testutil.h — helpers shared by the GPU kernel tests (test_kernels.c,
 * test_attn_flash.c): a deterministic random source, device buffers filled
 * from / read back to the host, launch checks and the rel-L2 comparison that
 * prints the "# name: ... rel_l2=..." lines. Include after harness.h, cuda_runtime_api.h,
 * kernels.h and util.h; define GT_RNG_SEED first for another random stream. */
#ifndef QC_GPU_TESTUTIL_H
#define QC_GPU_TESTUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef GT_RNG_SEED
#define GT_RNG_SEED 0x1234567887654321ull
#endif

static uint64_t rng_state = GT_RNG_SEED;
static float frand(void) /* uniform [-1, 1) */
{
    return (float)((th_xorshift(&rng_state) >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

/* 1 when a CUDA device is present (its name is printed); else every test
 * name is reported skipped with the reason and 0 is returned. */
static int gt_device_or_skip(const char *const *names, int n)
{
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        for (int i = 0; i < n; i++) th_skip(names[i], "no CUDA device");
        return 0;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("# device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    return 1;
}

/* A device copy of h (bytes), or with h NULL a buffer poisoned with NaN
 * (0xff bytes) so that anything a kernel fails to write shows. */
static void *dput(const void *h, size_t bytes)
{
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 4) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc %zu failed\n", bytes);
        exit(1);
    }
    if (h) cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    else cudaMemset(d, 0xff, bytes);
    return d;
}
static void dget(void *h, const void *d, size_t bytes) { cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost); }
static inline float *dget_f(const float *d, size_t n)
{
    float *h = malloc(n * sizeof *h);
    dget(h, d, n * sizeof *h);
    return h;
}
static float *dget_bf(const uint16_t *d, size_t n)
{
    uint16_t *b = malloc(n * 2);
    dget(b, d, n * 2);
    float *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = qc_bf16_to_f32(b[i]);
    free(b);
    return h;
}

/* 1 when the launch was accepted and the device ran it without error. */
static int launch_ok(int rc, const char *what)
{
    int e = rc ? rc : (int)cudaDeviceSynchronize();
    if (e) printf("# %s: CUDA error %s\n", what, qk_error_string(e));
    return e == 0;
}

/* Compares, prints the error line, returns 1 when within tol (rel L2) and
 * everything is finite. */
static int cmp(const char *what, const float *got, const float *ref, size_t n, double tol)
{
    double num = 0, den = 0, mx = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i])) bad = 1;
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (fabs(d) > mx) mx = fabs(d);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    int ok = !bad && rel <= tol;
    printf("# %s: n=%zu max_abs=%.3g rel_l2=%.3g tol=%.1g%s\n", what, n, mx, rel, tol, bad ? " NON-FINITE" : "");
    return ok;
}

#endif
