/* cmd_bench.c — `qchat bench DIR | --synthetic SIZE:FMT [--json] [--quick]
 * [--steps N] [--ctx N,N,...] [--no-profile]`: the speed of the CUDA engine.
 *
 * Reports, in one run: the achievable bandwidth (a 1 GiB device-to-device
 * copy, bytes read + written); load time and GB/s; prefill tokens/s and TTFT
 * (prefill + first sampled token) at 32, 128, 512, 1000, 2048 and 8192
 * tokens; decode tokens/s and inter-token latency p50/p99 at context 0, 4096 and 32768 or --ctx's (each
 * step = the captured CUDA graph + on-device sampling + a 4-byte copy);
 * bytes one decode step must read and the achieved fraction of the copy
 * bandwidth; a per-kernel profile of one decode step; the VRAM split.
 * --synthetic makes random weights of a real shape (0.8b, 2b, 4b, 9b, 27b,
 * 35b-a3b: the MoE, 256 experts, 8 per token)
 * directly on the GPU, in one of the published format mixes (FMT: bf16, fp8,
 * fp8-channel, int4, int4-gptq, int4-g32, int4-g64, int4-gidx, nvfp4, mxfp4,
 * nvfp4-mixed; see qc_cuda_model_synthetic_fmt) with the
 * quantized weights in the kernels' layouts. --load-only stops after the
 * load and reports where its time went (checkpoint bytes on disk per second,
 * the loader's threads and per-phase seconds, the pinned host-to-device
 * bandwidth). Needs a CUDA build and a GPU. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "cmd.h"
#include "qchat.h"

#ifdef QC_HAVE_CUDA
#include "cuda_backend.h"
#endif

static int usage(const char *msg)
{
    if (msg) fprintf(stderr, "qchat bench: %s\n", msg);
    fprintf(stderr, "usage: qchat bench CHECKPOINT_DIR | --synthetic SIZE:FMT [--json] [--quick] [--steps N] "
                    "[--ctx N,N,...] [--no-profile] [--load-only]\n"
                    "       SIZE: 0.8b, 2b, 4b, 9b, 27b, 35b-a3b; FMT: bf16, fp8, fp8-channel, int4, int4-gptq,\n"
                    "       int4-g32, int4-g64, int4-gidx, nvfp4, mxfp4, nvfp4-mixed\n");
    return QC_EXIT_USAGE;
}

#ifndef QC_HAVE_CUDA
int cmd_bench(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(NULL);
            return 0;
        }
    fprintf(stderr, "qchat bench: this qchat was built without CUDA; the benchmark measures the CUDA engine\n");
    return QC_EXIT_RUNTIME;
}
#else

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void random_ids(int32_t *ids, int n, int n_tokens, uint64_t *s)
{
    for (int i = 0; i < n; i++) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((*s >> 33) % (uint64_t)n_tokens);
    }
}

/* Prefill of n tokens from an empty state, in chunks of at most `chunk`. */
static int prefill_n(qc_cuda_sess *cs, const int32_t *ids, int n, int chunk, qc_err *err)
{
    qc_cuda_sess_reset(cs);
    for (int p = 0; p < n; p += chunk) {
        int c = n - p < chunk ? n - p : chunk;
        int rc = qc_cuda_prefill(cs, ids + p, c, p, err);
        if (rc) return rc;
    }
    return QC_OK;
}

/* Bytes of the checkpoint's .safetensors files (what a load reads). */
static double ckpt_file_bytes(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    double total = 0;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (!stat(path, &sb)) total += (double)sb.st_size;
    }
    closedir(d);
    return total;
}

/* --ctx: up to BENCH_MAX_CTX comma-separated context lengths (0 .. 1M
 * tokens) into ctx; their number, or -1 for anything else. */
#define BENCH_MAX_CTX 8
static int parse_ctx_list(const char *v, int *ctx)
{
    int n = 0;
    while (*v) {
        char *end;
        if (n == BENCH_MAX_CTX || *v < '0' || *v > '9') return -1;
        long c = strtol(v, &end, 10);
        if (c > (1L << 20) || (*end && *end != ',') || (*end == ',' && !end[1])) return -1;
        ctx[n++] = (int)c;
        v = *end ? end + 1 : end;
    }
    return n ? n : -1;
}

static const char *mem_names[QC_MEM_COUNT] = {"weights_bf16", "weights_fp8", "weights_int4", "weights_nvfp4",
                                              "weights_mxfp4_other", "kv_cache", "gdn_state", "scratch",
                                              "runtime", "other_processes", "free"};

int cmd_bench(int argc, char **argv)
{
    const char *dir = NULL, *synth = NULL;
    bool json = false, quick = false, profile = true, load_only = false;
    int steps = 0, ctxs[BENCH_MAX_CTX] = {0, 4096, 32768}, nctx = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--synthetic") || !strcmp(a, "--steps") || !strcmp(a, "--ctx")) {
            if (i + 1 >= argc) return usage("option needs a value");
            const char *v = argv[++i];
            if (!strcmp(a, "--synthetic")) {
                synth = v;
            } else if (!strcmp(a, "--ctx")) {
                if ((nctx = parse_ctx_list(v, ctxs)) < 0) return usage("--ctx: bad list");
            } else {
                char *end;
                long n = strtol(v, &end, 10);
                if (*end || n < 1 || n > 100000) return usage("--steps: bad value");
                steps = (int)n;
            }
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--quick")) {
            quick = true;
        } else if (!strcmp(a, "--load-only")) {
            load_only = true;
        } else if (!strcmp(a, "--no-profile")) {
            profile = false;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(NULL);
            return 0;
        } else if (a[0] == '-') {
            return usage("unknown option");
        } else if (!dir) {
            dir = a;
        } else {
            return usage("more than one checkpoint directory");
        }
    }
    if (!!dir == !!synth) return usage("give CHECKPOINT_DIR or --synthetic SIZE:FMT");
    if (!steps) steps = quick ? 16 : 64;

    qc_err err = {0};
    int rc = QC_OK;
    char size[16] = "";
    qc_cuda_shape sh;
    if (synth) {
        const char *colon = strchr(synth, ':');
        if (!colon || !colon[1] || (size_t)(colon - synth) >= sizeof size)
            return usage("--synthetic wants SIZE:FMT, e.g. 27b:fp8");
        memcpy(size, synth, (size_t)(colon - synth));
        if ((rc = qc_cuda_shape_by_name(size, &sh, &err))) {
            fprintf(stderr, "qchat bench: %s\n", err.msg);
            return rc;
        }
    }
    if (!qc_cuda_available()) {
        fprintf(stderr, "qchat bench: no CUDA device found\n");
        return QC_EXIT_RUNTIME;
    }
    double copy_bw = 0;
    if ((rc = qc_cuda_copy_bandwidth(&copy_bw, &err))) {
        fprintf(stderr, "qchat bench: %s\n", err.msg);
        return rc;
    }
    FILE *log = json ? stderr : stdout;

    /* load */
    qc_model *m = NULL;
    qc_cuda_model *cm = NULL, *own = NULL;
    double t0 = qc_now();
    if (synth) {
        rc = qc_cuda_model_synthetic_fmt(&sh, strchr(synth, ':') + 1, 1, &own, &err);
        cm = own;
    } else {
        qc_load_opts lo = {QC_DEVICE_CUDA, 0, 0};
        rc = qc_model_load(dir, &lo, &m, &err);
        if (!rc) cm = qc_cuda_model_of(m);
    }
    double t_load = qc_now() - t0;
    if (rc || !cm) {
        fprintf(stderr, "qchat bench: %s\n", rc ? err.msg : "model is not on the CUDA backend");
        qc_model_free(m);
        return rc ? rc : QC_EXIT_RUNTIME;
    }
    sh = *qc_cuda_model_shape(cm);
    /* 32 and 128: a chat turn's prompt (a MoE model runs such chunks as
     * pair GEMVs, longer ones as one GEMM per expert) */
    int pre[] = {32, 128, 512, 1000, 2048, 8192};
    const int npre = 6, chunk = 8192;
    int max_ctx = steps + 8;
    for (int i = 0; i < nctx; i++)
        if (ctxs[i] + steps + 8 > max_ctx) max_ctx = ctxs[i] + steps + 8;
    qc_cuda_sess *cs = NULL;
    bool root_made = false;
    int32_t *ids = malloc(sizeof *ids * (size_t)max_ctx);
    if (!ids) {
        rc = qc_err_set(&err, QC_EXIT_RUNTIME, "out of memory");
        goto done;
    }
    if (!load_only && (rc = qc_cuda_sess_new(cm, max_ctx, &cs, &err))) goto done;
    if (!load_only && (rc = qc_cuda_sess_reserve(cs, max_ctx, &err))) goto done; /* (as before: all up front) */
    uint64_t seed = 12345;
    random_ids(ids, max_ctx, sh.n_tokens, &seed);
    qc_mem_report mr;
    qc_cuda_mem(cm, NULL, &mr);
    uint64_t wbytes = 0;
    for (int i = 0; i < QC_MEM_KV; i++) wbytes += mr.bytes[i];

    root_made = true;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "device", qc_cuda_device_name(cm));
    cJSON_AddStringToObject(root, "model", synth ? synth : dir);
    cJSON_AddBoolToObject(root, "synthetic", synth != NULL);
    cJSON_AddNumberToObject(root, "copy_bandwidth_GBps", copy_bw / 1e9);
    cJSON *jl = cJSON_AddObjectToObject(root, "load");
    cJSON_AddNumberToObject(jl, "seconds", t_load);
    cJSON_AddNumberToObject(jl, "bytes", (double)wbytes);
    cJSON_AddNumberToObject(jl, "GBps", wbytes / t_load / 1e9);
    fprintf(log, "device %s, model %s%s\n", qc_cuda_device_name(cm), synth ? synth : dir, synth ? " (synthetic)" : "");
    fprintf(log, "copy bandwidth %.0f GB/s (1 GiB D2D, read + write)\n", copy_bw / 1e9);
    fprintf(log, "load %.2f s, %.2f GB weights, %.2f GB/s\n", t_load, wbytes / 1e9, wbytes / t_load / 1e9);
    double t_up = qc_cuda_load_seconds(cm);
    if (t_up > 0) {
        /* the upload alone (parsing and validation of the checkpoint excluded) */
        cJSON_AddNumberToObject(jl, "upload_seconds", t_up);
        cJSON_AddNumberToObject(jl, "upload_GBps", wbytes / t_up / 1e9);
        fprintf(log, "weight upload %.2f s, %.2f GB/s\n", t_up, wbytes / t_up / 1e9);
        double plan_s, h2d = 0;
        qc_load_stats ls;
        qc_cuda_load_report(cm, &plan_s, &ls);
        double fbytes = synth ? 0 : ckpt_file_bytes(dir), nt = ls.threads > 0 ? ls.threads : 1;
        qc_err herr;
        if (qc_cuda_h2d_bandwidth(&h2d, &herr)) h2d = 0;
        cJSON_AddNumberToObject(jl, "file_bytes", fbytes);
        cJSON_AddNumberToObject(jl, "file_GBps", fbytes / t_load / 1e9);
        cJSON_AddNumberToObject(jl, "plan_seconds", plan_s);
        cJSON_AddNumberToObject(jl, "pool_seconds", ls.wall_s);
        cJSON_AddNumberToObject(jl, "threads", ls.threads);
        cJSON_AddNumberToObject(jl, "staging_buffers", ls.buffers);
        cJSON_AddNumberToObject(jl, "jobs", (double)ls.jobs);
        cJSON_AddNumberToObject(jl, "read_seconds_per_thread", ls.read_s / nt);
        cJSON_AddNumberToObject(jl, "repack_seconds_per_thread", ls.fill_s / nt);
        cJSON_AddNumberToObject(jl, "ring_wait_seconds_per_thread", ls.wait_s / nt);
        cJSON_AddNumberToObject(jl, "copy_queue_seconds_per_thread", ls.copy_s / nt);
        cJSON_AddNumberToObject(jl, "staging_ring_seconds", ls.ring_s);
        cJSON_AddNumberToObject(jl, "h2d_pinned_GBps", h2d / 1e9);
        if (fbytes > 0)
            fprintf(log, "checkpoint files %.2f GB read in %.2f s: %.2f GB/s\n", fbytes / 1e9, t_load,
                    fbytes / t_load / 1e9);
        fprintf(log,
                "  before the backend (parse, validate) %.2f s; planning + cudaMalloc %.2f s; pool %.2f s: %d threads, "
                "%d x %.0f MiB pinned (allocated and freed in %.2f s), %llu jobs, %.2f GB staged\n",
                t_load - t_up, plan_s, ls.wall_s, ls.threads, ls.buffers, ls.buffer_bytes / 1048576.0, ls.ring_s,
                (unsigned long long)ls.jobs, ls.bytes / 1e9);
        fprintf(log, "  per thread: pre-fault (read) %.2f s, repack/copy into pinned %.2f s, waiting for a free buffer "
                     "(H2D) %.2f s, queueing copies %.2f s; pinned H2D alone %.1f GB/s\n",
                ls.read_s / nt, ls.fill_s / nt, ls.wait_s / nt, ls.copy_s / nt, h2d / 1e9);
    }
    if (load_only) goto done_json;
    uint64_t sbytes = qc_cuda_scale_bytes(cm);
    cJSON_AddNumberToObject(jl, "scale_bytes", (double)sbytes);
    if (sbytes) fprintf(log, "quantization scales %.3f GB (inside the weight families below)\n", sbytes / 1e9);

    /* prefill + TTFT */
    qk_sample_params greedy = {0, 0, 1.0f, 1, 0};
    int32_t tok = 0;
    if ((rc = prefill_n(cs, ids, 512, chunk, &err))) goto done_json; /* warm-up: kernels, cuBLAS heuristics */
    if ((rc = prefill_n(cs, ids, chunk, chunk, &err))) goto done_json;
    cJSON *jp = cJSON_AddArrayToObject(root, "prefill");
    /* Two conditions per length. "idle": the prompt arrives at a GPU that
     * has been idle for half a second, as in a chat (the user was typing) —
     * the TTFT a user sees. "busy": the same prefill again at once, the GPU
     * hot from the previous one; under sustained tensor-core load the H100
     * settles near its power limit at lower clocks (measured: ~1455 MHz,
     * 575 W, against 1980 MHz boost), so back-to-back prefills run up to
     * ~25 % slower. Throughput (seconds, tok/s) is the busy figure. */
    fprintf(log, "\nprefill   tokens   seconds   tok/s   TTFT ms (idle GPU)  TTFT ms (busy)\n");
    for (int i = 0; i < npre; i++) {
        int n = pre[i], reps = quick || n >= 8192 ? 1 : 3;
        double best = 1e30, best_ttft = 1e30, best_idle = 1e30;
        for (int r = 0; r < 2 * reps; r++) {
            bool idle = r % 2 == 0;
            if (idle) nanosleep(&(struct timespec){0, 500 * 1000 * 1000}, NULL);
            double a = qc_now();
            if ((rc = prefill_n(cs, ids, n, chunk, &err))) goto done_json;
            double b = qc_now();
            if ((rc = qc_cuda_sample(cs, &greedy, &tok, &err))) goto done_json;
            double c = qc_now();
            if (idle) {
                if (c - a < best_idle) best_idle = c - a;
            } else {
                if (b - a < best) best = b - a;
                if (c - a < best_ttft) best_ttft = c - a;
            }
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "tokens", n);
        cJSON_AddNumberToObject(o, "seconds", best);
        cJSON_AddNumberToObject(o, "tok_per_s", n / best);
        cJSON_AddNumberToObject(o, "ttft_ms", best_idle * 1e3);
        cJSON_AddNumberToObject(o, "ttft_busy_ms", best_ttft * 1e3);
        cJSON_AddItemToArray(jp, o);
        fprintf(log, "          %6d   %7.3f   %7.0f   %12.1f   %14.1f\n", n, best, n / best, best_idle * 1e3,
                best_ttft * 1e3);
    }

    /* decode */
    cJSON *jd = cJSON_AddArrayToObject(root, "decode");
    fprintf(log, "\ndecode    ctx      tok/s   ITL p50 ms  p99 ms   GB/step   GB/s    of copy bw   prefill s\n");
    double *lat = malloc(sizeof *lat * (size_t)steps);
    for (int i = 0; i < nctx && lat; i++) {
        int ctx = ctxs[i];
        double t_fill = 0; /* the context's prefill (chunks of 8192), reported for long contexts */
        if (ctx > 0) {
            double f0 = qc_now();
            if ((rc = prefill_n(cs, ids, ctx, chunk, &err))) break;
            t_fill = qc_now() - f0;
        } else {
            qc_cuda_sess_reset(cs);
        }
        int pos = ctx;
        tok = ids[ctx];
        /* warm-up steps (eager run, graph capture) are not counted */
        for (int w = 0; w < 3 && !rc; w++) rc = qc_cuda_decode(cs, tok, pos++, &greedy, &tok, &err);
        double a = qc_now();
        for (int s = 0; s < steps && !rc; s++) {
            double x = qc_now();
            rc = qc_cuda_decode(cs, tok, pos++, &greedy, &tok, &err);
            lat[s] = qc_now() - x;
        }
        double tot = qc_now() - a;
        if (rc) break;
        qsort(lat, (size_t)steps, sizeof *lat, cmp_double);
        double p50 = lat[steps / 2], p99 = lat[(int)((steps - 1) * 0.99)];
        double tps = steps / tot;
        double bytes = (double)qc_cuda_decode_bytes(cm, ctx + 3 + steps / 2);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "ctx", ctx);
        cJSON_AddNumberToObject(o, "steps", steps);
        cJSON_AddNumberToObject(o, "tok_per_s", tps);
        cJSON_AddNumberToObject(o, "itl_p50_ms", p50 * 1e3);
        cJSON_AddNumberToObject(o, "itl_p99_ms", p99 * 1e3);
        cJSON_AddNumberToObject(o, "bytes_per_step", bytes);
        cJSON_AddNumberToObject(o, "achieved_GBps", bytes * tps / 1e9);
        cJSON_AddNumberToObject(o, "fraction_of_copy_bw", bytes * tps / copy_bw);
        cJSON_AddNumberToObject(o, "context_prefill_seconds", t_fill);
        cJSON_AddItemToArray(jd, o);
        fprintf(log, "          %6d   %6.1f   %8.2f   %7.2f   %7.2f   %6.0f   %5.1f %%   %8.2f\n", ctx, tps, p50 * 1e3,
                p99 * 1e3, bytes / 1e9, bytes * tps / 1e9, 100 * bytes * tps / copy_bw, t_fill);
    }
    free(lat);
    if (rc) goto done_json;

    /* VRAM split (with the session at its largest) */
    qc_cuda_mem(cm, cs, &mr);
    cJSON *jv = cJSON_AddObjectToObject(root, "vram");
    fprintf(log, "\nVRAM (GiB):");
    for (int i = 0; i < QC_MEM_COUNT; i++) {
        cJSON_AddNumberToObject(jv, mem_names[i], (double)mr.bytes[i]);
        if (mr.bytes[i]) fprintf(log, " %s %.2f", mem_names[i], mr.bytes[i] / 1073741824.0);
    }
    cJSON_AddNumberToObject(jv, "total", (double)mr.total);
    fprintf(log, " total %.2f\n", mr.total / 1073741824.0);

    if (profile) {
        qc_cuda_prof_row rows[32];
        int nr = 0, pctx = 4096;
        if ((rc = qc_cuda_profile_decode(cs, pctx, rows, 32, &nr, &err))) goto done_json;
        cJSON *jk = cJSON_AddArrayToObject(root, "decode_profile");
        cJSON_AddNumberToObject(root, "decode_profile_ctx", pctx);
        double sum = 0;
        fprintf(log, "\ndecode step profile at ctx %d (each launch timed alone, median of 25):\n", pctx);
        fprintf(log, "  %-30s %6s %9s %9s %10s\n", "kernel", "count", "us", "GB/s", "us/token");
        for (int i = 0; i < nr; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "kernel", rows[i].name);
            cJSON_AddNumberToObject(o, "per_token", rows[i].per_token);
            cJSON_AddNumberToObject(o, "us", rows[i].us);
            cJSON_AddNumberToObject(o, "bytes", rows[i].bytes);
            cJSON_AddItemToArray(jk, o);
            sum += rows[i].us * rows[i].per_token;
            fprintf(log, "  %-30s %6d %9.1f %9.0f %10.1f\n", rows[i].name, rows[i].per_token, rows[i].us,
                    rows[i].bytes > 0 ? rows[i].bytes / (rows[i].us * 1e3) : 0.0, rows[i].us * rows[i].per_token);
        }
        if (nr > 0) {
            cJSON_AddNumberToObject(root, "decode_profile_sum_us", sum);
            fprintf(log, "  sum over one step: %.0f us (%.1f tok/s if launched back to back)\n", sum, 1e6 / sum);
        } else { /* qc_cuda_profile_decode lists the dense MLP's launches only */
            fprintf(log, "  (no table for MoE models: it lists the launches of a dense MLP)\n");
        }
    }

    if (profile) {
        /* where prefill time goes: one 8192-token chunk, every launch timed */
        fprintf(stderr, "\n");
        qc_cuda_set_profile(cm, true);
        rc = prefill_n(cs, ids, chunk, chunk, &err);
        qc_cuda_set_profile(cm, false);
    }

done_json:
    if (rc) fprintf(stderr, "qchat bench: %s\n", err.msg);
    if (json && !rc) {
        char *txt = cJSON_Print(root);
        if (txt) puts(txt);
        free(txt);
    }
    cJSON_Delete(root);
done:
    if (rc && !root_made) fprintf(stderr, "qchat bench: %s\n", err.msg);
    qc_cuda_sess_free(cs);
    free(ids);
    if (own) qc_cuda_model_free(own);
    qc_model_free(m);
    return rc;
}
#endif
