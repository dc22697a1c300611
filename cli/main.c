/* main.c — qchat's entry point: dispatches to a subcommand, or to the
 * interactive TUI when the first argument is not one. */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "tui.h"
#include "util.h"

#define QCHAT_VERSION "0.1.0"

typedef struct subcommand {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *usage;
} subcommand;

/* One row per subcommand; the usage text is what `qchat --help` prints. */
static const subcommand subcommands[] = {
    {"inspect", cmd_inspect, "inspect CHECKPOINT_DIR [--json] [--ctx N]"},
    {"tokenize", cmd_tokenize, "tokenize CHECKPOINT_DIR [--json] [--decode] TEXT|-"},
    {"quantize", cmd_quantize, "quantize SRC_DIR DST_DIR --to fp8|int4|nvfp4 [--group N] [--force]"},
    {"run", cmd_run, "run CHECKPOINT_DIR -p PROMPT|- [--json] [--no-think] [--max-tokens N] [--seed N] [sampling flags] [--device cpu|cuda]"},
    {"score", cmd_score, "score CHECKPOINT_DIR --ids FILE --out FILE.safetensors [--chunk N] [--device cpu|cuda]"},
    {"drift", cmd_drift, "drift REF_DIR DIR --ids FILE [--json] [--chunk N] [--device cpu|cuda]"},
    {"synth", cmd_synth, "synth OUTDIR --size tiny|0.8b|9b|27b --format bf16|fp8|int4-gptq|int4-ct|nvfp4|nvfp4-modelopt [--asym] [--shard-size N] [--seed N] [--force] [--dry-run]"},
    {"bench", cmd_bench, "bench CHECKPOINT_DIR | --synthetic SIZE:FMT [--json] [--quick] [--steps N] [--no-profile]"},
};

static void print_usage(FILE *f)
{
    fprintf(f, "usage: qchat [OPTIONS] [CHECKPOINT_DIR...]\n");
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(f, "       qchat %s\n", subcommands[i].usage);
    fprintf(f, "See qchat(1) for details.\n");
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        print_usage(stdout);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("qchat %s\n", QCHAT_VERSION);
        return 0;
    }
    for (size_t i = 0; argc >= 2 && i < sizeof subcommands / sizeof subcommands[0]; i++)
        if (!strcmp(argv[1], subcommands[i].name))
            return subcommands[i].fn(argc - 1, argv + 1);
    /* Anything else (options, checkpoint directories, nothing) is the TUI. */
    return tui_main(argc, argv);
}
