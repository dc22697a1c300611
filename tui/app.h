/* app.h — the interactive TUI: screen, input, commands, over the worker. */
#ifndef TUI_APP_H
#define TUI_APP_H

#include <stdint.h>

#include "qchat.h"

typedef struct app_opts {
    const char **dirs;
    int n_dirs;
    const char *theme;   /* name or path; NULL = dark */
    int colors;          /* forced depth (0 detect, -1 none, 8, 16, 256, 16777216) */
    qc_device device;
    int threads;
    int max_tokens;      /* 0 = until the context is full */
    int ctx;             /* session context */
    double budget_gb;    /* resident weights budget; 0 = automatic */
    int think;           /* 1 on, 0 off, -1 model default */
    double temperature;  /* < 0: the checkpoint's default */
    long long seed;      /* < 0: 0 */
} app_opts;

/* Runs the TUI until the user quits. Returns the process exit status. */
int app_run(const app_opts *o);

#endif
