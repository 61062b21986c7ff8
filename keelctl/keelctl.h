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

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include <stdio.h>

#include "keel/assign.h"
#include "keel/config.h"
#include "keel/cstate.h"
#include "etcd.h"

struct keelctl_command {
    const char *name;
    const char *summary; /* one line for `keelctl --help` */
    int (*run)(const struct keel_config *config, int argc, char **argv);
};

/* keelctl certs: init, issue, show, revoke (cmd_certs.c). */
int keelctl_cmd_certs(const struct keel_config *config, int argc, char **argv);

/* keelctl dataset: import, info, list, verify (cmd_dataset.c). */
int keelctl_cmd_dataset(const struct keel_config *config, int argc, char **argv);

/* keelctl checkpoint: list, show, verify, diff, export, restore, prune, audit, keygen
 * (cmd_checkpoint.c). */
int keelctl_cmd_checkpoint(const struct keel_config *config, int argc, char **argv);

/* keelctl job: submit, list, show, stop (cmd_job.c), rollback (cmd_rollback.c). */
int keelctl_cmd_job(const struct keel_config *config, int argc, char **argv);
int keelctl_job_rollback(const struct keel_config *config, int argc, char **argv);

/* keelctl status: leader, members, ranges, jobs (cmd_status.c). */
int keelctl_cmd_status(const struct keel_config *config, int argc, char **argv);

/* ---- shared by the etcd commands (ctl_etcd.c) ---- */

/*
 * A client of the cluster's etcd ([cluster] etcd, [etcd] or [tls] files)
 * that gives up after about a second when etcd does not answer, so that an
 * operator hears at once that etcd is down.  Errors: keel_etcd_new()'s.
 */
int keelctl_etcd_open(const struct keel_config *config, keel_etcd **out, struct keel_error *err);

/*
 * Print "keelctl WHAT: ..." for `err` on stderr, saying plainly when etcd is
 * unreachable, and return KEEL_EXIT_FAILURE.
 */
int keelctl_etcd_fail(const char *what, const struct keel_config *config,
                      const struct keel_error *err);

/* How far a job has got, from its shard leases. */
struct keelctl_progress {
    uint32_t shards, shards_done, leased, epochs;
    uint64_t passes_done, passes_total; /* passes finished over all shards, of shards*epochs */
    int unreadable;                     /* a shard lease in etcd did not decode */
};

void keelctl_job_progress(const struct keel_cstate_job *j, struct keelctl_progress *p);

/* A job's state and progress as JSON: what `job list` and `status` print per job (cmd_job.c). */
json_t *keelctl_job_json(const struct keel_cstate_job *j);

/* The same as a table with a header line, one job per line (cmd_job.c). */
void keelctl_job_rows(const struct keel_cstate *s, FILE *out);

/*
 * `keelctl status` from a cluster state read at one revision (cmd_status.c):
 * `a` is its decoded assignment (NULL when absent or unreadable, then
 * `assign_error` says why, or is NULL when there is none).  The JSON's
 * reference is the caller's; the text goes to `out`.
 */
json_t *keelctl_status_json(const struct keel_config *config, const struct keel_cstate *s,
                            const keel_assign *a, const char *assign_error);
void keelctl_status_text(const struct keel_config *config, const struct keel_cstate *s,
                         const keel_assign *a, const char *assign_error, FILE *out);

/* "4.2s", "3m07s", "2h05m", "3d04h"; "-" for a negative age. */
void keelctl_format_age(int64_t ms, char *out, size_t n);

/* Unix ms as "2026-01-02T03:04:05Z". */
void keelctl_format_time(uint64_t ms, char *out, size_t n);

/* ---- command lines and output (keelctl.c) ---- */

/*
 * A (sub)command's options, read one at a time by keelctl_getopt(): the name
 * its messages start with, its help, and getopt_long()'s tables, which list
 * --help (-h) among the command's own options.
 */
struct keelctl_cmdline {
    const char *what;         /* "certs init": messages read "keelctl certs init: ..." */
    void (*usage)(FILE *out); /* prints the help */
    const char *shortopts;    /* for getopt_long(), "h" included */
    const struct option
        *longopts; /* for getopt_long(), {"help", no_argument, NULL, 'h'} included */
    int started;   /* 0 until the first keelctl_getopt() */
    int exit;      /* after keelctl_getopt() returned -1: the exit code */
};

/*
 * The next option of argv[0..argc) (argv[0] is the command's name) as
 * getopt_long() returns it, with optarg set; the first call starts getopt
 * over (optind = 0: the shared options were parsed with getopt too).
 * Returns 0 when the options are done (argv[optind] is the first operand),
 * or -1 when the command is to return cl->exit: KEEL_EXIT_OK after --help
 * printed the help on stdout, KEEL_EXIT_USAGE after "keelctl WHAT: unknown or
 * incomplete option '...'" and the help went to stderr.
 */
int keelctl_getopt(struct keelctl_cmdline *cl, int argc, char **argv);

/* "keelctl WHAT: <message>" and the help on stderr; returns KEEL_EXIT_USAGE. */
int keelctl_usage_error(const struct keelctl_cmdline *cl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* "keelctl WHAT: <message>" on stderr; returns KEEL_EXIT_FAILURE. */
int keelctl_fail(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Print `j` on stdout, indented by 2 in insertion order, and a newline, and
 * drop the caller's reference.  Returns KEEL_EXIT_OK, or KEEL_EXIT_FAILURE
 * with nothing printed when it cannot be encoded (out of memory).
 */
int keelctl_print_json(json_t *j);

/* A subcommand of a command: `keelctl certs issue ...`. */
struct keelctl_sub {
    const char *name;
    int (*run)(const struct keel_config *config, int argc, char **argv);
};

/*
 * Run the subcommand named by argv[1] of command `cmd` ("certs") from
 * subs[0..n), with argv[1] as its argv[0]; `usage` prints the command's help.
 * No subcommand or an unknown one: a message, the help on stderr, and
 * KEEL_EXIT_USAGE; --help or -h: the help on stdout and KEEL_EXIT_OK.
 */
int keelctl_run_sub(const char *cmd, const struct keelctl_sub *subs, size_t n,
                    void (*usage)(FILE *out), const struct keel_config *config, int argc,
                    char **argv);

#endif
