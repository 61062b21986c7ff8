/*
 * keelctl.h - keelctl's commands.
 *
 * keelctl parses the shared options (--config, --set, ...) and then runs one
 * command: `keelctl [OPTIONS] COMMAND [ARGS...]`.  Each command lives in its
 * own file, keelctl/cmd_<name>.c, and is listed once in the table in
 * keelctl/main.c.
 *
 * A command's run function gets the loaded configuration and its own
 * arguments with argv[0] being the command's name; it parses them with
 * getopt_long() after setting `optind = 0` (a full reset: the shared options
 * were parsed with getopt too).  It returns a process exit code (KEEL_EXIT_*
 * from keel/cli.h), prints results on stdout and errors on stderr as
 * "keelctl COMMAND: what failed: why".
 */
#ifndef KEELCTL_H
#define KEELCTL_H

#include "keel/config.h"

struct keelctl_command {
    const char *name;
    const char *summary; /* one line for `keelctl --help` */
    int (*run)(const struct keel_config *config, int argc, char **argv);
};

/* keelctl certs: init, issue, show, revoke (cmd_certs.c). */
int keelctl_cmd_certs(const struct keel_config *config, int argc, char **argv);

/* keelctl dataset: import, info, list, verify (cmd_dataset.c). */
int keelctl_cmd_dataset(const struct keel_config *config, int argc, char **argv);

#endif
