/* cmd.h — the subcommands of the qchat binary. Each is a thin front end over
 * the engine (qchat.h) and returns the process exit status: 0 ok, 1 runtime
 * failure, 2 usage error, 3 unusable checkpoint. */
#ifndef QC_CMD_H
#define QC_CMD_H

int cmd_inspect(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_drift(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_synth(int argc, char **argv);

#endif
