/* commands.h — the slash commands as one declarative table. The same rows
 * produce the /help text, `qchat --help-commands` (the man page's COMMANDS
 * section is generated from it by tools/man-commands.sh) and the dispatcher. */
#ifndef TUI_COMMANDS_H
#define TUI_COMMANDS_H

#include <stdio.h>

typedef enum cmd_id {
    CMD_HELP, CMD_SWAP, CMD_MODELS, CMD_THINK, CMD_REGEN, CMD_CLEAR, CMD_SYSTEM,
    CMD_SET, CMD_SAVE, CMD_LOAD, CMD_STATS, CMD_COMPARE, CMD_DRIFT, CMD_QUIT, CMD_COUNT
} cmd_id;

typedef struct cmd_def {
    cmd_id id;
    const char *name;  /* without the slash */
    const char *args;  /* synopsis of the arguments, "" if none */
    int min_args;      /* 1 when an argument is required */
    const char *help;  /* one line */
} cmd_def;

extern const cmd_def cmd_table[CMD_COUNT];

/* Parses a line that starts with '/': finds the command (an unambiguous
 * prefix is accepted, e.g. /sw) and points *args at its argument text (leading
 * blanks skipped, never NULL). Returns the row, or NULL with msg filled
 * ("unknown command", "ambiguous", "missing argument"). */
const cmd_def *cmd_parse(const char *line, const char **args, char *msg, int msglen);

/* The help text: one line per command, "/name args  help", names padded. */
void cmd_write_help(FILE *f);
/* The COMMANDS section body in man(7) markup (.TP per command). */
void cmd_write_man(FILE *f);

/* Splits "key=value" (blanks allowed around '='). Returns 0 or -1. */
int cmd_split_assign(const char *s, char *key, int keylen, char *val, int vallen);

#endif
