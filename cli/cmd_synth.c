/* cmd_synth.c — `qchat synth OUTDIR --size SIZE --format FMT [--asym]
 * [--shard-size BYTES] [--seed N] [--force] [--dry-run]`: writes a full-size
 * random checkpoint in a published layout (synth.h), or with --dry-run prints
 * the file plan (shards and byte counts) without writing anything. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "synth.h"
#include "util.h"

static int usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "qchat synth: %s\n", msg);
    fprintf(stderr,
            "usage: qchat synth OUTDIR --size tiny|0.8b|9b|27b --format "
            "bf16|fp8|int4-gptq|int4-ct|nvfp4|nvfp4-modelopt [--asym] [--shard-size BYTES[K|M|G]] "
            "[--seed N] [--force] [--dry-run]\n");
    return QC_EXIT_USAGE;
}

/* "5G", "500M", "4500000000": decimal units, as save_pretrained's "5GB". */
static int64_t parse_bytes(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v > 0))
        return -1;
    double mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1e3, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1e6, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1e9, end++;
    if (mul > 1 && (*end == 'B' || *end == 'b'))
        end++;
    if (*end || v * mul < 1 || v * mul > 1e15)
        return -1;
    return (int64_t)(v * mul);
}

int cmd_synth(int argc, char **argv)
{
    const char *out = NULL, *size = NULL, *fmt = NULL;
    qc_synth_opts o = {0};
    bool dry = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--size") || !strcmp(a, "--format") || !strcmp(a, "--shard-size") ||
            !strcmp(a, "--seed")) {
            if (++i >= argc) {
                char m[64];
                snprintf(m, sizeof m, "%s needs a value", a);
                return usage(m);
            }
            const char *v = argv[i];
            if (!strcmp(a, "--size")) {
                size = v;
            } else if (!strcmp(a, "--format")) {
                fmt = v;
            } else if (!strcmp(a, "--shard-size")) {
                o.shard_bytes = parse_bytes(v);
                if (o.shard_bytes < 0) {
                    fprintf(stderr, "qchat synth: --shard-size %s: expected a size such as 5G\n", v);
                    return QC_EXIT_USAGE;
                }
            } else {
                char *end;
                errno = 0;
                unsigned long long s = strtoull(v, &end, 10);
                if (errno || !*v || *end || v[0] == '-') {
                    fprintf(stderr, "qchat synth: --seed %s: expected a non-negative integer\n", v);
                    return QC_EXIT_USAGE;
                }
                o.seed = s;
            }
        } else if (!strcmp(a, "--asym")) {
            o.asym = true;
        } else if (!strcmp(a, "--force")) {
            o.force = true;
        } else if (!strcmp(a, "--dry-run")) {
            dry = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(NULL);
            return 0;
        } else if (a[0] == '-' && a[1]) {
            char m[160];
            snprintf(m, sizeof m, "unknown option %.100s", a);
            return usage(m);
        } else if (!out) {
            out = a;
        } else {
            return usage("too many arguments");
        }
    }
    if (!out && !dry)
        return usage("OUTDIR is required");
    if (!size || !fmt)
        return usage("--size and --format are required");
    o.shape = qc_synth_size_find(size);
    if (!o.shape) {
        fprintf(stderr, "qchat synth: --size %s: expected one of %s\n", size,
                qc_synth_size_names());
        return QC_EXIT_USAGE;
    }
    int f = qc_synth_format_parse(fmt);
    if (f < 0) {
        fprintf(stderr, "qchat synth: --format %s: expected bf16, fp8, int4-gptq, int4-ct, nvfp4 "
                        "or nvfp4-modelopt\n", fmt);
        return QC_EXIT_USAGE;
    }
    o.format = (qc_synth_format)f;
    if (o.asym && o.format != QC_SYNTH_INT4_CT)
        return usage("--asym applies to --format int4-ct only");
    qc_err err = {0};
    if (dry) {
        qc_synth_plan *p = NULL;
        int rc = qc_synth_plan_build(&o, &p, &err);
        if (rc) {
            fprintf(stderr, "qchat synth: %s\n", err.msg);
            return rc;
        }
        printf("synth %s %s%s: %zu tensors in %zu shards\n", o.shape->name, fmt,
               o.asym ? " (asym)" : "", qc_synth_plan_tensor_count(p),
               qc_synth_plan_shard_count(p));
        for (size_t i = 0; i < qc_synth_plan_shard_count(p); i++)
            printf("shard %s %lld bytes %zu tensors\n", qc_synth_plan_shard_name(p, i),
                   (long long)qc_synth_plan_shard_file_bytes(p, i),
                   qc_synth_plan_shard_tensors(p, i));
        printf("tensor_bytes %lld\n", (long long)qc_synth_plan_tensor_bytes(p));
        printf("file_bytes %lld (%.2f GB)\n", (long long)qc_synth_plan_file_bytes(p),
               qc_synth_plan_file_bytes(p) / 1e9);
        qc_synth_plan_free(p);
        return 0;
    }
    o.progress = stderr;
    qc_synth_report rep;
    int rc = qc_synth_write(out, &o, &rep, &err);
    if (rc) {
        fprintf(stderr, "qchat synth: %s\n", err.msg);
        return rc;
    }
    printf("%s: synthetic %s %s%s, %zu tensors in %zu shards, %.2f GB in %.1f s (%.2f GB/s)\n", out,
           o.shape->name, fmt, o.asym ? " (asym)" : "", rep.tensors, rep.shards,
           rep.file_bytes / 1e9, rep.seconds, rep.seconds > 0 ? rep.file_bytes / 1e9 / rep.seconds : 0);
    return 0;
}
