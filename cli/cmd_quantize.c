/* cmd_quantize.c — `qchat quantize SRC DST --to fp8|int4|nvfp4 [--group N]
 * [--act-order] [--force]`: round-to-nearest quantization of a BF16/F16/F32 checkpoint into a
 * published layout (quantize.h), then a one-paragraph report on stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "quantize.h"
#include "util.h"

static int usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "qchat quantize: %s\n", msg);
    fprintf(stderr, "usage: qchat quantize SRC_DIR DST_DIR --to fp8|int4|nvfp4 [--group N] "
                    "[--act-order] [--force]\n");
    return QC_EXIT_USAGE;
}

int cmd_quantize(int argc, char **argv)
{
    const char *src = NULL, *dst = NULL, *to = NULL;
    qc_quant_opts o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--to")) {
            if (++i >= argc)
                return usage("--to needs fp8, int4 or nvfp4");
            to = argv[i];
        } else if (!strcmp(a, "--group")) {
            char *end;
            if (++i >= argc)
                return usage("--group needs a number");
            long g = strtol(argv[i], &end, 10);
            if (*end || g <= 0 || g > 4096)
                return usage("--group: expected a positive number (int4 group along K)");
            o.group_size = (int)g;
        } else if (!strcmp(a, "--force")) {
            o.force = true;
        } else if (!strcmp(a, "--act-order")) {
            o.act_order = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(NULL);
            return 0;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "qchat quantize: unknown option %s\n", a);
            return usage(NULL);
        } else if (!src) {
            src = a;
        } else if (!dst) {
            dst = a;
        } else {
            return usage("too many arguments");
        }
    }
    if (!src || !dst)
        return usage("SRC_DIR and DST_DIR are required");
    if (!to)
        return usage("--to is required");
    int t = qc_quant_to_parse(to);
    if (t < 0) {
        fprintf(stderr, "qchat quantize: --to %s: expected fp8, int4 or nvfp4\n", to);
        return QC_EXIT_USAGE;
    }
    o.to = (qc_quant_to)t;
    if (o.group_size && o.to != QC_QUANT_INT4)
        return usage("--group applies to --to int4 only");
    if (o.act_order && o.to != QC_QUANT_INT4)
        return usage("--act-order applies to --to int4 only");
    qc_err err = {0};
    qc_quant_report rep;
    int rc = qc_quantize_checkpoint(src, dst, &o, &rep, &err);
    if (rc) {
        fprintf(stderr, "qchat quantize: %s\n", err.msg);
        return rc;
    }
    static const char *const fmt[] = {"fp8-block [128,128]", "gptq v1 (auto_round:auto_gptq)",
                                      "nvfp4-ct (nvfp4-pack-quantized)"};
    printf("%s -> %s: %s", src, dst, fmt[o.to]);
    if (o.to == QC_QUANT_INT4)
        printf(", sym, group %d", rep.group_size);
    printf("\n  %d Linears quantized, %d kept 16-bit by shape; tensors %.2f MB -> %.2f MB\n",
           rep.n_quantized, rep.n_kept, rep.bytes_in / 1e6, rep.bytes_out / 1e6);
    printf("  round-to-nearest weight error (relative Frobenius): overall %.4f, worst %.4f (%s)\n",
           rep.rel_err_rms, rep.rel_err_max, rep.worst);
    return 0;
}
