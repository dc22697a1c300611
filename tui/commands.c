/* commands.c — see commands.h. */
#include "commands.h"

#include <ctype.h>
#include <string.h>

const cmd_def cmd_table[CMD_COUNT] = {
    {CMD_HELP, "help", "", 0, "list the commands and keys"},
    {CMD_SWAP, "swap", "FAMILY|DIR", 1,
     "switch to another checkpoint (BF16, FP8, INT4, NVFP4, a number or a directory); the "
     "conversation is re-prefilled on it"},
    {CMD_MODELS, "models", "", 0, "list the checkpoints, their formats and which are resident"},
    {CMD_THINK, "think", "on|off", 1, "start replies inside <think> (on) or skip reasoning (off)"},
    {CMD_REGEN, "regen", "", 0, "drop the last reply and generate it again"},
    {CMD_CLEAR, "clear", "", 0, "start a new conversation (the system prompt is kept)"},
    {CMD_SYSTEM, "system", "[TEXT]", 0, "set the system prompt for the next replies; without TEXT, show it"},
    {CMD_SET, "set", "KEY=VALUE", 0,
     "sampling: temperature, top_p, top_k, min_p, repetition_penalty, presence_penalty, seed, max_tokens; no "
     "argument lists them"},
    {CMD_SAVE, "save", "[FILE]", 0,
     "write the session as JSON (atomically); default $XDG_STATE_HOME/qchat/session.json"},
    {CMD_LOAD, "load", "FILE", 1, "restore a saved session (re-prefills its tokens)"},
    {CMD_STATS, "stats", "", 0, "per-reply statistics of this session"},
    {CMD_COMPARE, "compare", "[A [B]]", 0,
     "run the last prompt on two formats (families, numbers or directories; default the active one and the "
     "next resident one) with the same seed and sampling, side by side, then a table of reasoning and answer "
     "tokens, TTFT, tok/s and peak memory; the conversation is not changed; Esc or q closes, Ctrl-C stops"},
    {CMD_DRIFT, "drift", "[REF|on|off]", 0,
     "score the last reply's tokens under a reference format (default BF16): KL(ref||active) mean and max per "
     "token, top-1 agreement and the first divergent token; /drift on [REF] scores every new reply live as it "
     "streams, /drift off stops"},
    {CMD_QUIT, "quit", "", 0, "leave qchat"},
};

const cmd_def *cmd_parse(const char *line, const char **args, char *msg, int msglen)
{
    *args = "";
    if (!line || line[0] != '/') {
        snprintf(msg, (size_t)msglen, "not a command");
        return NULL;
    }
    const char *p = line + 1;
    size_t n = 0;
    while (p[n] && !isspace((unsigned char)p[n]))
        n++;
    const char *a = p + n;
    while (*a && isspace((unsigned char)*a))
        a++;
    const cmd_def *hit = NULL;
    int hits = 0;
    for (int i = 0; i < CMD_COUNT && n > 0; i++) {
        if (strlen(cmd_table[i].name) == n && !strncmp(cmd_table[i].name, p, n)) {
            hit = &cmd_table[i];
            hits = 1;
            break;
        }
        if (!strncmp(cmd_table[i].name, p, n)) {
            hit = &cmd_table[i];
            hits++;
        }
    }
    if (hits == 0) {
        snprintf(msg, (size_t)msglen, "unknown command /%.*s (try /help)", (int)(n > 40 ? 40 : n), p);
        return NULL;
    }
    if (hits > 1) {
        snprintf(msg, (size_t)msglen, "ambiguous command /%.*s (try /help)", (int)(n > 40 ? 40 : n), p);
        return NULL;
    }
    if (hit->min_args && !*a) {
        snprintf(msg, (size_t)msglen, "usage: /%s %s", hit->name, hit->args);
        return NULL;
    }
    *args = a;
    return hit;
}

void cmd_write_help(FILE *f)
{
    for (int i = 0; i < CMD_COUNT; i++) {
        char syn[64];
        snprintf(syn, sizeof syn, "/%s%s%s", cmd_table[i].name, *cmd_table[i].args ? " " : "",
                 cmd_table[i].args);
        fprintf(f, "%-20s %s\n", syn, cmd_table[i].help);
    }
}

/* Writes s escaping what roff would take as markup. */
static void man_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\e", f);
        else if (*s == '-')
            fputs("\\-", f);
        else
            fputc(*s, f);
    }
}

void cmd_write_man(FILE *f)
{
    for (int i = 0; i < CMD_COUNT; i++) {
        /* .BI alternates bold (the command) and italic (its arguments). */
        fputs(*cmd_table[i].args ? ".TP\n.BI \"/" : ".TP\n.B \"/", f);
        man_escape(f, cmd_table[i].name);
        if (*cmd_table[i].args) {
            fputs(" \" \"", f);
            man_escape(f, cmd_table[i].args);
        }
        fputs("\"\n", f);
        man_escape(f, cmd_table[i].help);
        fputs("\n", f);
    }
}

int cmd_split_assign(const char *s, char *key, int keylen, char *val, int vallen)
{
    const char *eq = strchr(s, '=');
    if (!eq)
        return -1;
    const char *k0 = s, *k1 = eq;
    while (k0 < k1 && isspace((unsigned char)*k0))
        k0++;
    while (k1 > k0 && isspace((unsigned char)k1[-1]))
        k1--;
    const char *v0 = eq + 1;
    while (*v0 && isspace((unsigned char)*v0))
        v0++;
    size_t vl = strlen(v0);
    while (vl > 0 && isspace((unsigned char)v0[vl - 1]))
        vl--;
    if (k1 == k0 || vl == 0 || (int)(k1 - k0) >= keylen || (int)vl >= vallen)
        return -1;
    memcpy(key, k0, (size_t)(k1 - k0));
    key[k1 - k0] = 0;
    memcpy(val, v0, vl);
    val[vl] = 0;
    return 0;
}
