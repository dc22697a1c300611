/* main.c — `qchat [OPTIONS] [CHECKPOINT_DIR...]`: options of the interactive
 * TUI, the demo model when no directory is given, then app_run. Kept apart
 * from the other TUI modules (the unit tests link those, not this). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app.h"
#include "commands.h"
#include "demo.h"
#include "tui.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qchat [OPTIONS] [CHECKPOINT_DIR...]\n"
            "  --theme NAME|FILE     colour theme (dark, light, basic16, mono, or a .theme file)\n"
            "  --colors N            force none|8|16|256|truecolor instead of detecting\n"
            "  --device cpu|cuda     engine backend (default: cuda when available)\n"
            "  --threads N           CPU threads (default: all cores)\n"
            "  --max-tokens N        stop each reply after N tokens (default: context)\n"
            "  --ctx N               context length of the session (default 32768; memory grows as it fills)\n"
            "  --mem-budget GB       weights kept resident across checkpoints\n"
            "  --no-think, --think   start with reasoning off / on\n"
            "  --temperature T       sampling temperature (default: generation_config.json)\n"
            "  --seed N              sampling seed\n"
            "  --help-commands[=man] print the slash commands (as man markup)\n");
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The demo checkpoints: demo/{bf16,fp8,int4,nvfp4} next to the executable
 * (or one level up, for a build tree), else in the current directory. */
static int parse_int(const char *opt, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "qchat: %s needs an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, v ? v : "");
        return -1;
    }
    *out = x;
    return 0;
}

int tui_main(int argc, char **argv)
{
    app_opts o = {.colors = 0, .device = QC_DEVICE_AUTO, .ctx = 32768, .think = -1, .temperature = -1, .seed = -1};
    /* The directories of argv, or the (at most 4) demo formats when none is given. */
    const char **dirs = calloc((size_t)argc + 5, sizeof *dirs);
    if (!dirs)
        return QC_EXIT_RUNTIME;
    int nd = 0, rc = QC_EXIT_USAGE;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long x;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            rc = 0;
            goto out;
        } else if (!strcmp(a, "--help-commands")) {
            cmd_write_help(stdout);
            rc = 0;
            goto out;
        } else if (!strcmp(a, "--help-commands=man")) {
            cmd_write_man(stdout);
            rc = 0;
            goto out;
        } else if (!strcmp(a, "--theme") && v) {
            o.theme = v;
            i++;
        } else if (!strcmp(a, "--colors") && v) {
            if (!strcmp(v, "none"))
                o.colors = -1;
            else if (!strcmp(v, "truecolor") || !strcmp(v, "24bit"))
                o.colors = 1 << 24;
            else if (!strcmp(v, "8") || !strcmp(v, "16") || !strcmp(v, "256"))
                o.colors = atoi(v);
            else {
                fprintf(stderr, "qchat: --colors takes none, 8, 16, 256 or truecolor, got '%s'\n", v);
                goto out;
            }
            i++;
        } else if (!strcmp(a, "--device") && v) {
            if (!strcmp(v, "cpu"))
                o.device = QC_DEVICE_CPU;
            else if (!strcmp(v, "cuda"))
                o.device = QC_DEVICE_CUDA;
            else if (!strcmp(v, "auto"))
                o.device = QC_DEVICE_AUTO;
            else {
                fprintf(stderr, "qchat: --device takes cpu, cuda or auto, got '%s'\n", v);
                goto out;
            }
            i++;
        } else if (!strcmp(a, "--threads") && v) {
            if (parse_int(a, v, 0, 1024, &x))
                goto out;
            o.threads = (int)x;
            i++;
        } else if (!strcmp(a, "--max-tokens") && v) {
            if (parse_int(a, v, 0, 1 << 24, &x))
                goto out;
            o.max_tokens = (int)x;
            i++;
        } else if (!strcmp(a, "--ctx") && v) {
            if (parse_int(a, v, 16, 1 << 24, &x))
                goto out;
            o.ctx = (int)x;
            i++;
        } else if (!strcmp(a, "--seed") && v) {
            if (parse_int(a, v, 0, 0x7fffffffL, &x))
                goto out;
            o.seed = x;
            i++;
        } else if ((!strcmp(a, "--mem-budget") || !strcmp(a, "--temperature")) && v) {
            char *end;
            double d = strtod(v, &end);
            if (*end || d < 0 || d > 1e6) {
                fprintf(stderr, "qchat: %s needs a non-negative number, got '%s'\n", a, v);
                goto out;
            }
            if (a[2] == 'm')
                o.budget_gb = d;
            else
                o.temperature = d;
            i++;
        } else if (!strcmp(a, "--no-think")) {
            o.think = 0;
        } else if (!strcmp(a, "--think")) {
            o.think = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "qchat: unknown option or missing value: %s\n", a);
            usage(stderr);
            goto out;
        } else {
            dirs[nd++] = a;
        }
    }
    static char demo[4][QC_DEMO_PATH_MAX];
    if (nd == 0) {
        int k = qc_demo_find(demo, 4);
        if (k == 0) {
            fprintf(stderr,
                    "qchat: no checkpoint given and no demo model found (demo/bf16 next to the executable or in "
                    "the current directory).\n"
                    "Pass one or more checkpoint directories: qchat ./Qwen3.5-27B-FP8 ./Qwen3.5-27B\n");
            goto out;
        }
        for (int i = 0; i < k; i++)
            dirs[nd++] = demo[i];
    }
    if (!isatty(0) || !isatty(1)) {
        fprintf(stderr, "qchat: the interactive TUI needs a terminal (use `qchat run DIR -p PROMPT` in scripts)\n");
        goto out;
    }
    for (int i = 0; i < nd; i++)
        if (!is_dir(dirs[i])) {
            fprintf(stderr, "qchat: %s: not a directory (expected a checkpoint directory)\n", dirs[i]);
            rc = QC_EXIT_CHECKPOINT;
            goto out;
        }
    o.dirs = dirs;
    o.n_dirs = nd;
    rc = app_run(&o);
out:
    free(dirs);
    return rc;
}
