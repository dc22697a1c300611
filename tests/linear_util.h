/* linear_util.h — qc_tensor and qc_linear values over host buffers, for the
 * tests that lay out published checkpoint formats by hand (test_dequant.c,
 * test_kernels_quant.c, test_gemm_lt.c). Include after format.h. */
#ifndef QC_LINEAR_UTIL_H
#define QC_LINEAR_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "format.h"

/* A 1- or 2-D tensor of dt over data (d1 unused when ndim is 1). */
static inline qc_tensor th_tensor(const char *name, qc_dtype dt, int ndim, int64_t d0, int64_t d1, const void *data)
{
    qc_tensor t;
    memset(&t, 0, sizeof t);
    t.name = name;
    t.dtype = dt;
    t.ndim = ndim;
    t.numel = 1;
    const int64_t d[2] = {d0, d1};
    for (int i = 0; i < ndim; i++) {
        t.shape[i] = d[i];
        t.numel *= d[i];
    }
    t.data = data;
    t.nbytes = (size_t)t.numel * qc_dtype_size(dt);
    return t;
}

/* An n x k Linear of format f with no tensors attached yet. */
static inline qc_linear th_linear(const char *name, qc_format f, int64_t n, int64_t k)
{
    qc_linear l;
    memset(&l, 0, sizeof l);
    snprintf(l.name, sizeof l.name, "%s", name);
    l.format = f;
    l.n = n;
    l.k = k;
    return l;
}

#endif
