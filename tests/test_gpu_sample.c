/* test_gpu_sample.c — device sampling (engine/cuda_backend.c's
 * qc_cuda_sampling_draw: penalties and candidate selection on the GPU, the
 * draw on the host) returns the token qc_sampler_sample returns on the full
 * row, over many random rows (real and odd vocabulary sizes, ties, NaN and
 * -inf entries), seeds and parameter sets, greedy included, with penalties
 * over a growing history; and counts the row's non-finite logits as the host
 * does. Skips without a GPU. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"
#include "sampler.h"

#ifdef QC_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "cuda_backend.h"

static uint64_t rs = 0x13198A2E03707344ull;
static double urand(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1.0p-53;
}
static int irand(int n) { return (int)(urand() * n); }

int main(void)
{
    if (!qc_cuda_available()) {
        th_skip("gpu-sample", "no CUDA device");
        return 0;
    }
    static const int sizes[] = {248320, 151936, 33333, 4097, 1000};
    const int VMAX = 248320;
    float *row = malloc(sizeof(float) * VMAX), *host = malloc(sizeof(float) * VMAX);
    float *d_row = NULL;
    qc_cuda_sampling *ds = NULL;
    qc_err err;
    if (!row || !host || cudaMalloc((void **)&d_row, sizeof(float) * VMAX) != cudaSuccess ||
        qc_cuda_sampling_new(VMAX, VMAX, NULL, &ds, &err)) {
        CHECK("gpu-sample/setup", 0, "cannot allocate");
        return th_exit();
    }
    static const float temps[] = {0.0f, 0.01f, 0.3f, 0.7f, 1.0f, 1.5f, 1e7f};
    static const int topks[] = {0, 1, 2, 5, 20, 50, 200, 1024};
    static const float topps[] = {1.0f, 0.9f, 0.5f};
    static const float reps[] = {1.0f, 1.3f, 0.8f};
    long draws = 0, cand_draws = 0, greedy_draws = 0, copies = 0, mismatches = 0, errors = 0;
    long rows_nonfinite = 0, count_errors = 0;
    char first_bad[1100] = "", first_count[200] = "";
    for (int trial = 0; trial < 160; trial++) {
        int V = sizes[irand(5)], n_tokens = V - irand(60);
        int mode = irand(4); /* 0 plain, 1 coarse ties, 2 NaN/-inf sprinkled, 3 mostly -inf */
        qc_sample_params p;
        qc_sample_params_init(&p);
        p.temperature = temps[irand(7)];
        p.top_k = topks[irand(8)];
        p.top_p = topps[irand(3)];
        p.min_p = irand(2) ? 0.05f : 0.0f;
        p.repetition_penalty = reps[irand(3)];
        p.presence_penalty = irand(2) ? 0.5f : 0.0f;
        p.frequency_penalty = irand(2) ? 0.2f : 0.0f;
        p.seed = (uint64_t)trial * 104729u + 3;
        qc_sampler *a, *b;
        if (qc_sampler_new(&p, n_tokens, &a, &err) || qc_sampler_new(&p, n_tokens, &b, &err)) {
            CHECK("gpu-sample/new", 0, "%s", err.msg);
            return th_exit();
        }
        double spread = 2.0 + urand() * 12.0;
        for (int step = 0; step < 6; step++) {
            for (int i = 0; i < V; i++) {
                float x = (float)((urand() * 2.0 - 1.0) * spread);
                if (mode == 1)
                    x = roundf(x * 2.0f) / 2.0f;
                else if (mode == 2 && irand(50) == 0)
                    x = irand(2) ? NAN : -INFINITY;
                else if (mode == 3 && irand(2000) != 0)
                    x = -INFINITY;
                row[i] = x;
            }
            const int32_t *seen, *cnt;
            int ns = qc_sampler_history(b, &seen, &cnt);
            for (int j = 0; j < ns && mode != 3; j++)
                if (irand(2) == 0 && seen[j] < V)
                    row[seen[j]] = (float)(spread * (0.9 + 0.1 * urand()));
            if (cudaMemcpy(d_row, row, sizeof(float) * V, cudaMemcpyHostToDevice) != cudaSuccess) {
                errors++;
                break;
            }
            int32_t want = qc_sampler_next(a, row, V), got = -1;
            bool copied = false;
            int64_t bad = -1, want_bad = qc_logits_count_nonfinite(row, n_tokens < V ? n_tokens : V);
            if (qc_cuda_sampling_draw(ds, d_row, V, b, host, &got, &copied, &bad, &err)) {
                if (!errors)
                    snprintf(first_bad, sizeof first_bad, "%s", err.msg);
                errors++;
                break;
            }
            if (got >= 0)
                qc_sampler_accept(b, got);
            draws++;
            rows_nonfinite += want_bad > 0;
            if (bad != want_bad && !count_errors++)
                snprintf(first_count, sizeof first_count, "trial %d step %d (mode %d, C %d): %lld non-finite, device says %lld",
                         trial, step, mode, qc_sampler_candidates_wanted(b), (long long)want_bad, (long long)bad);
            copies += copied;
            if (!copied)
                *(qc_sampler_candidates_wanted(b) == 1 ? &greedy_draws : &cand_draws) += 1;
            if (got != want) {
                if (!mismatches)
                    snprintf(first_bad, sizeof first_bad,
                             "trial %d step %d (V %d T %g k %d p %g rep %g mode %d): full row %d, device %d",
                             trial, step, V, (double)p.temperature, p.top_k, (double)p.top_p,
                             (double)p.repetition_penalty, mode, (int)want, (int)got);
                mismatches++;
            }
        }
        qc_sampler_free(a);
        qc_sampler_free(b);
    }
    printf("# %ld draws: %ld greedy on the device, %ld from device candidates, %ld full-row copies\n", draws,
           greedy_draws, cand_draws, copies);
    CHECK("gpu-sample/same-token-as-cpu", !mismatches && !errors, "%ld mismatches, %ld errors; %s", mismatches,
          errors, first_bad);
    /* the count sessions refuse a row by (NaN, +-inf among the drawable ids) */
    CHECK("gpu-sample/nonfinite-count", !count_errors && rows_nonfinite > draws / 5 && rows_nonfinite < draws,
          "%ld wrong counts, %ld of %ld rows with non-finite logits; %s", count_errors, rows_nonfinite, draws,
          first_count);
    CHECK("gpu-sample/greedy-on-device", greedy_draws > draws / 10, "%ld of %ld", greedy_draws, draws);
    CHECK("gpu-sample/candidates-on-device", cand_draws > draws / 4, "%ld of %ld", cand_draws, draws);
    qc_cuda_sampling_free(ds);
    cudaFree(d_row);
    free(row);
    free(host);
    return th_exit();
}

#else
int main(void)
{
    th_skip("gpu-sample", "built without CUDA");
    return 0;
}
#endif
