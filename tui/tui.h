/* tui.h — the interactive TUI's entry point, called by cli/main.c when the
 * first argument is not a subcommand. Returns the process exit status. */
#ifndef TUI_TUI_H
#define TUI_TUI_H

int tui_main(int argc, char **argv);

#endif
