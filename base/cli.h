/*
 * cli.h - the command line every Keel binary shares.
 *
 *   --config FILE, -c FILE      read the INI file FILE
 *   --set SECTION.KEY=VALUE, -o override one option (repeatable, applied in order)
 *   --log-level LEVEL           shorthand for --set log.level=LEVEL
 *   --check-config              load and validate, print "config ok", exit 0
 *   --dump-config               print the effective configuration as INI, exit 0
 *   --describe-config           print the option table as Markdown, exit 0
 *   --help, -h / --version, -V
 *
 * Exit codes follow sysexits(3): 0 success, 64 usage error, 78 configuration
 * error, 69 when the binary has no job to run yet, 1 a runtime failure.
 */
#ifndef KEEL_CLI_H
#define KEEL_CLI_H

#include <stdio.h>

#include "keel/config.h"

#define KEEL_EXIT_OK          0
#define KEEL_EXIT_FAILURE     1
#define KEEL_EXIT_USAGE       64
#define KEEL_EXIT_UNAVAILABLE 69
#define KEEL_EXIT_CONFIG      78

struct keel_cli_spec {
    const char *name;                 /* "keel-server" */
    const char *summary;              /* one line for --help */
    const char *usage_tail;           /* appended to the usage line, or NULL */
    void (*list_commands)(FILE *out); /* prints the commands after the options, or NULL */
    const char *const *required;      /* NULL-terminated "section.key" list that must be set */
    /*
     * The binary's job, run with the loaded configuration and the arguments
     * left after the options (argv[0] is the first of them).  NULL while the
     * binary has no job: it then says so and exits with KEEL_EXIT_UNAVAILABLE.
     */
    int (*run)(const struct keel_config *config, int argc, char **argv);
};

/*
 * Parse the shared options, load and validate the configuration, set up
 * logging and call spec->run.  Returns the process exit code.
 */
int keel_cli_main(const struct keel_cli_spec *spec, int argc, char **argv);

#endif
