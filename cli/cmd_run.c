/* cmd_run.c — `qchat run DIR -p PROMPT|-`: one chat turn.
 *
 * Renders the prompt with the checkpoint's chat template, prefills it,
 * samples (defaults from generation_config.json, overridden by flags) and
 * streams the reply through the reasoning/answer splitter.
 *
 * Where things go:
 *   stdout is a terminal  reasoning and answer both on stdout, the reasoning
 *                         dimmed (NO_COLOR: between "<think>" / "</think>" lines);
 *   stdout is not         answer only on stdout, reasoning on stderr — so
 *                         `qchat run ... > answer.txt` keeps just the answer;
 *   --json                nothing streams; one JSON object on stdout at the end.
 * The statistics line (TTFT, tokens/s, reasoning and answer token counts,
 * stop reason) always goes to stderr (not with --json: it is in the object).
 * SIGINT stops generation after the current token; what was produced is
 * printed with the stats and the exit status is 0 (stop reason "interrupted"). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "cmd.h"
#include "config.h"
#include "demo.h"
#include "qchat.h"
#include "reply.h"
#include "sampler.h"
#include "tokenizer.h"

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

static int usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "qchat run: %s\n", msg);
    fprintf(stderr,
            "usage: qchat run CHECKPOINT_DIR -p PROMPT|- [--system TEXT] [--no-think|--think] [--json]\n"
            "                 [--max-tokens N] [--temperature F] [--top-k N] [--top-p F] [--min-p F]\n"
            "                 [--presence-penalty F] [--repetition-penalty F] [--seed N]\n"
            "                 [--device auto|cpu|cuda] [--threads N]\n");
    return QC_EXIT_USAGE;
}

static char *read_stdin(void)
{
    size_t len = 0, cap = 4096;
    char *b = malloc(cap);
    while (b) {
        if (len + 1024 + 1 > cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) {
                free(b);
                return NULL;
            }
            b = nb;
        }
        size_t r = fread(b + len, 1, 1024, stdin);
        len += r;
        if (r == 0)
            break;
    }
    if (b)
        b[len] = 0;
    return b;
}

typedef struct run_opts {
    const char *dir, *prompt, *system;
    int think; /* QC_THINK_* */
    bool json;
    int max_tokens, threads;
    qc_device dev;
    /* flags given on the command line (override generation_config.json) */
    bool has_t, has_k, has_p, has_minp, has_pres, has_rep, has_seed;
    float t, p, minp, pres, rep;
    int k;
    uint64_t seed;
} run_opts;

static int parse_float(const char *opt, const char *v, float *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (!*v || *end || errno || !isfinite(d)) {
        fprintf(stderr, "qchat run: %s: \"%s\" is not a number\n", opt, v);
        return QC_EXIT_USAGE;
    }
    *out = (float)d;
    return QC_OK;
}

static int parse_int(const char *opt, const char *v, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (!*v || *end || errno || n < lo || n > hi) {
        fprintf(stderr, "qchat run: %s: \"%s\" is not an integer in [%lld, %lld]\n", opt, v, lo, hi);
        return QC_EXIT_USAGE;
    }
    *out = n;
    return QC_OK;
}

static int parse_args(int argc, char **argv, run_opts *o)
{
    memset(o, 0, sizeof *o);
    o->think = QC_THINK_DEFAULT;
    o->max_tokens = 4096;
    o->dev = QC_DEVICE_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-think")) {
            o->think = QC_THINK_OFF;
            continue;
        }
        if (!strcmp(a, "--think")) {
            o->think = QC_THINK_ON;
            continue;
        }
        if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(NULL);
            return -1;
        }
        if (a[0] == '-' && a[1]) {
            if (i + 1 >= argc) {
                char m[96];
                snprintf(m, sizeof m, "%s needs a value", a);
                return usage(m);
            }
            const char *v = argv[++i];
            long long n;
            int rc = QC_OK;
            if (!strcmp(a, "-p") || !strcmp(a, "--prompt"))
                o->prompt = v;
            else if (!strcmp(a, "--system"))
                o->system = v;
            else if (!strcmp(a, "--temperature"))
                rc = parse_float(a, v, &o->t), o->has_t = true;
            else if (!strcmp(a, "--top-p"))
                rc = parse_float(a, v, &o->p), o->has_p = true;
            else if (!strcmp(a, "--min-p"))
                rc = parse_float(a, v, &o->minp), o->has_minp = true;
            else if (!strcmp(a, "--presence-penalty"))
                rc = parse_float(a, v, &o->pres), o->has_pres = true;
            else if (!strcmp(a, "--repetition-penalty"))
                rc = parse_float(a, v, &o->rep), o->has_rep = true;
            else if (!strcmp(a, "--top-k")) {
                if (!(rc = parse_int(a, v, 0, 1 << 30, &n)))
                    o->k = (int)n, o->has_k = true;
            } else if (!strcmp(a, "--seed")) {
                char *end;
                errno = 0;
                unsigned long long s = strtoull(v, &end, 10);
                if (!*v || *end || errno || v[0] == '-') {
                    fprintf(stderr, "qchat run: --seed: \"%s\" is not a non-negative integer\n", v);
                    return QC_EXIT_USAGE;
                }
                o->seed = s;
                o->has_seed = true;
            } else if (!strcmp(a, "--max-tokens")) {
                if (!(rc = parse_int(a, v, 1, 1 << 30, &n)))
                    o->max_tokens = (int)n;
            } else if (!strcmp(a, "--threads")) {
                if (!(rc = parse_int(a, v, 0, 4096, &n)))
                    o->threads = (int)n;
            } else if (!strcmp(a, "--device")) {
                if (!strcmp(v, "auto"))
                    o->dev = QC_DEVICE_AUTO;
                else if (!strcmp(v, "cpu"))
                    o->dev = QC_DEVICE_CPU;
                else if (!strcmp(v, "cuda"))
                    o->dev = QC_DEVICE_CUDA;
                else
                    return usage("--device must be auto, cpu or cuda");
            } else {
                char m[96];
                snprintf(m, sizeof m, "unknown option %s", a);
                return usage(m);
            }
            if (rc)
                return rc;
            continue;
        }
        if (o->dir)
            return usage("more than one checkpoint directory");
        o->dir = a;
    }
    if (!o->dir) {
        /* No checkpoint: the shipped demo model (BF16), as the TUI does. */
        static char demo[4][QC_DEMO_PATH_MAX];
        if (qc_demo_find(demo, 4) == 0)
            return usage("CHECKPOINT_DIR is required (no demo model found in demo/)");
        o->dir = demo[0];
    }
    if (!o->prompt)
        return usage("-p PROMPT (or -p - for stdin) is required");
    return QC_OK;
}

/* generation_config.json, then the flags. */
static void sample_params(const run_opts *o, const qc_config *cfg, qc_sample_params *sp)
{
    qc_sample_params_init(sp);
    qc_sample_params_apply_gen(sp, &cfg->gen);
    if (o->has_t)
        sp->temperature = o->t;
    if (o->has_k)
        sp->top_k = o->k;
    if (o->has_p)
        sp->top_p = o->p;
    if (o->has_minp)
        sp->min_p = o->minp;
    if (o->has_pres)
        sp->presence_penalty = o->pres;
    if (o->has_rep)
        sp->repetition_penalty = o->rep;
    sp->seed = o->has_seed ? o->seed : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
}

/* The streaming side of the output. */
typedef struct sink {
    bool json, tty, color;
    qc_reply_kind last; /* side of the last visible text on the terminal */
    bool wrote_out, wrote_err; /* pipe mode: text went to stdout / stderr */
} sink;

static void sink_piece(sink *k, const qc_reply_piece *pc)
{
    if (k->json || pc->kind == QC_REPLY_NONE || !pc->len)
        return;
    if (!k->tty) {
        FILE *f = pc->kind == QC_REPLY_REASONING ? stderr : stdout;
        *(f == stderr ? &k->wrote_err : &k->wrote_out) = true;
        fwrite(pc->text, 1, pc->len, f);
        fflush(f);
        return;
    }
    if (pc->kind != k->last) {
        if (pc->kind == QC_REPLY_REASONING)
            fputs(k->color ? "\x1b[2m" : "<think>\n", stdout);
        else if (k->last == QC_REPLY_REASONING)
            fputs(k->color ? "\x1b[22m\n\n" : "\n</think>\n\n", stdout);
        k->last = pc->kind;
    }
    fwrite(pc->text, 1, pc->len, stdout);
    fflush(stdout);
}

static void sink_end(sink *k)
{
    if (k->json)
        return;
    if (k->tty) {
        if (k->last == QC_REPLY_REASONING)
            fputs(k->color ? "\x1b[22m" : "\n</think>", stdout);
        if (k->last != QC_REPLY_NONE)
            fputc('\n', stdout);
    } else {
        /* end each stream's text with a newline, so the stats start a line */
        if (k->wrote_out)
            fputc('\n', stdout);
        if (k->wrote_err)
            fputc('\n', stderr);
    }
    fflush(stdout);
}

int cmd_run(int argc, char **argv)
{
    run_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc < 0 ? 0 : rc;
    qc_err err = {0};
    char *stdin_prompt = NULL, *prompt = NULL;
    int32_t *ids = NULL, *gen_ids = NULL;
    size_t nids = 0, plen = 0;
    qc_model *m = NULL;
    qc_session *s = NULL;
    qc_sampler *smp = NULL;
    qc_reply reply;
    bool reply_live = false;
    qc_chat chat;
    qc_chat_init(&chat);
    const char *stop = "max_tokens";
    int n_gen = 0;
    double t0 = 0, t_first = 0, t_last = 0, t_prefill = 0;

    if (!strcmp(o.prompt, "-")) {
        stdin_prompt = read_stdin();
        if (!stdin_prompt) {
            rc = qc_err_set(&err, QC_EXIT_RUNTIME, "cannot read the prompt from stdin");
            goto done;
        }
        o.prompt = stdin_prompt;
    }
    qc_load_opts lo = {o.dev, o.threads, 0};
    if ((rc = qc_model_load(o.dir, &lo, &m, &err)))
        goto done;
    qc_model_info info;
    qc_model_get_info(m, &info);
    const qc_config *cfg = qc_model_config(m);
    const qc_tokenizer *tok = qc_model_tokenizer(m);

    qc_chat_template tpl;
    if ((rc = qc_chat_template_detect(o.dir, NULL, &tpl, &err)))
        goto done;
    if (!tpl.recognised && tpl.warning[0] && !o.json)
        fprintf(stderr, "qchat run: %s\n", tpl.warning);
    if (o.system && (rc = qc_chat_add(&chat, QC_ROLE_SYSTEM, o.system, NULL, &err)))
        goto done;
    if ((rc = qc_chat_add(&chat, QC_ROLE_USER, o.prompt, NULL, &err)))
        goto done;
    if ((rc = qc_chat_render(&tpl, &chat, true, o.think, &prompt, &plen, &err)))
        goto done;
    if ((rc = qc_tokenizer_encode(tok, prompt, plen, &ids, &nids, &err)))
        goto done;
    if (nids == 0) {
        rc = qc_err_set(&err, QC_EXIT_USAGE, "the rendered prompt is empty");
        goto done;
    }

    qc_sample_params sp;
    sample_params(&o, cfg, &sp);
    if ((rc = qc_sample_params_check(&sp, &err)) || (rc = qc_sampler_new(&sp, info.n_tokens, &smp, &err)))
        goto done;
    int32_t eos[QC_REPLY_MAX_EOS];
    int n_eos = 0;
    const int *eos_src = cfg->gen.present && cfg->gen.n_eos ? cfg->gen.eos_ids : cfg->eos_ids;
    int eos_n = cfg->gen.present && cfg->gen.n_eos ? cfg->gen.n_eos : cfg->n_eos;
    for (int i = 0; i < eos_n && n_eos < QC_REPLY_MAX_EOS; i++)
        eos[n_eos++] = eos_src[i];
    bool in_reasoning = qc_chat_prompt_in_reasoning(prompt, plen);
    if ((rc = qc_reply_init(&reply, tok, eos, n_eos, in_reasoning, &err)))
        goto done;
    reply_live = true;
    if ((rc = qc_session_new(m, 0, &s, &err)))
        goto done;
    int gen_cap = 256;
    if (!(gen_ids = malloc(sizeof *gen_ids * (size_t)gen_cap))) {
        rc = qc_err_set(&err, QC_EXIT_RUNTIME, "out of memory for the reply");
        goto done;
    }

    sink sk = {o.json, isatty(STDOUT_FILENO) == 1, false, QC_REPLY_NONE, false, false};
    const char *nc = getenv("NO_COLOR");
    sk.color = sk.tty && !(nc && *nc);

    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa);

    t0 = qc_now();
    rc = qc_session_prefill(s, ids, (int)nids, 0, NULL, &err);
    t_prefill = qc_now();
    while (!rc) {
        if (g_interrupted) {
            stop = "interrupted";
            break;
        }
        int32_t id = -1;
        if ((rc = qc_session_sample(s, smp, &id, &err)))
            break;
        if (id < 0) {
            rc = qc_err_set(&err, QC_EXIT_RUNTIME, "no finite logit to sample from (position %d)",
                            qc_session_len(s));
            break;
        }
        t_last = qc_now();
        if (n_gen == 0)
            t_first = t_last;
        if (n_gen == gen_cap) {
            int32_t *g = realloc(gen_ids, sizeof *g * (size_t)(gen_cap *= 2));
            if (!g) {
                rc = qc_err_set(&err, QC_EXIT_RUNTIME, "out of memory for the reply");
                break;
            }
            gen_ids = g;
        }
        gen_ids[n_gen++] = id;
        qc_reply_piece pc;
        if ((rc = qc_reply_feed(&reply, id, &pc, &err)))
            break;
        sink_piece(&sk, &pc);
        if (pc.end) {
            stop = "eos";
            break;
        }
        if (n_gen >= o.max_tokens) {
            stop = "max_tokens";
            break;
        }
        if (g_interrupted) {
            stop = "interrupted";
            break;
        }
        rc = qc_session_step(s, id, &err);
    }
    sigaction(SIGINT, &old_sa, NULL);
    if (rc)
        goto done;
    if (strcmp(stop, "eos")) {
        qc_reply_piece pc;
        if ((rc = qc_reply_finish(&reply, &pc, &err)))
            goto done;
        sink_piece(&sk, &pc);
    }
    sink_end(&sk);

    double ttft_ms = n_gen ? (t_first - t0) * 1e3 : 0;
    double tps = n_gen > 1 && t_last > t_first ? (n_gen - 1) / (t_last - t_first) : 0;
    double prefill_tps = t_prefill > t0 ? nids / (t_prefill - t0) : 0;
    if (o.json) {
        size_t rl, al;
        const char *rtext = qc_reply_reasoning(&reply, &rl), *atext = qc_reply_answer(&reply, &al);
        cJSON *j = cJSON_CreateObject(), *tk = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "reasoning", rtext);
        cJSON_AddStringToObject(j, "answer", atext);
        cJSON_AddNumberToObject(tk, "prompt", (double)nids);
        cJSON_AddNumberToObject(tk, "generated", n_gen);
        cJSON_AddNumberToObject(tk, "reasoning", reply.n_reasoning);
        cJSON_AddNumberToObject(tk, "answer", reply.n_answer);
        cJSON_AddNumberToObject(tk, "other", reply.n_other);
        cJSON_AddItemToObject(j, "tokens", tk);
        cJSON_AddNumberToObject(j, "ttft_ms", round(ttft_ms * 1000) / 1000);
        cJSON_AddNumberToObject(j, "tok_per_s", round(tps * 1000) / 1000);
        cJSON_AddNumberToObject(j, "prefill_tok_per_s", round(prefill_tps * 1000) / 1000);
        cJSON_AddStringToObject(j, "stop_reason", stop);
        cJSON_AddStringToObject(j, "format", info.family);
        cJSON_AddStringToObject(j, "device", info.device);
        cJSON_AddBoolToObject(j, "thinking", in_reasoning);
        cJSON *spj = cJSON_CreateObject();
        cJSON_AddNumberToObject(spj, "temperature", qc_float_decimal(sp.temperature));
        cJSON_AddNumberToObject(spj, "top_k", sp.top_k);
        cJSON_AddNumberToObject(spj, "top_p", qc_float_decimal(sp.top_p));
        cJSON_AddNumberToObject(spj, "min_p", qc_float_decimal(sp.min_p));
        cJSON_AddNumberToObject(spj, "presence_penalty", qc_float_decimal(sp.presence_penalty));
        cJSON_AddNumberToObject(spj, "repetition_penalty", qc_float_decimal(sp.repetition_penalty));
        char seed[32];
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)sp.seed);
        cJSON_AddStringToObject(spj, "seed", seed); /* a string: 64-bit seeds exceed doubles */
        cJSON_AddItemToObject(j, "sampling", spj);
        cJSON *gen = cJSON_CreateArray();
        for (int i = 0; i < n_gen; i++)
            cJSON_AddItemToArray(gen, cJSON_CreateNumber(gen_ids[i]));
        cJSON_AddItemToObject(j, "ids", gen);
        char *out = cJSON_PrintUnformatted(j);
        if (out)
            printf("%s\n", out);
        free(out);
        cJSON_Delete(j);
    } else {
        fprintf(stderr,
                "[%s] prompt %zu tok · reasoning %d tok · answer %d tok · TTFT %.0f ms · %.1f tok/s · "
                "prefill %.1f tok/s · stop: %s\n",
                info.device, nids, reply.n_reasoning, reply.n_answer, ttft_ms, tps, prefill_tps, stop);
    }
done:
    if (rc)
        fprintf(stderr, "qchat run: %s\n", err.msg);
    if (reply_live)
        qc_reply_free(&reply);
    qc_sampler_free(smp);
    qc_session_free(s);
    qc_model_free(m);
    qc_chat_free(&chat);
    free(ids);
    free(gen_ids);
    free(prompt);
    free(stdin_prompt);
    return rc;
}
