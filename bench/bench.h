/*
 * bench.h - the harness every Keel benchmark shares.
 *
 * A benchmark is a main() that parses the shared options with
 * keel_bench_init(), times its work against a baseline with
 * keel_bench_compare(), records one row per result with keel_bench_record()
 * and ends with keel_bench_finish(), which prints the rows and frees them.
 *
 * Every row carries its own baseline, measured in the same run on the same
 * machine (a memcpy of the same bytes, say), and ratio = value / baseline.
 * Absolute numbers vary from machine to machine and run to run; the ratio is
 * what can be compared.  Nothing here ever fails because the machine is slow.
 *
 * Options every benchmark takes:
 *   --json    print a JSON array of {"name", "value", "unit", "baseline",
 *             "ratio"} objects instead of the table
 *   --quick   shrink the repetitions and their length, for a smoke run
 *   --help    print the usage and exit
 * A benchmark may add its own (keel_bench_init_opts()).
 *
 * A value that could not be measured (a target never reached) is NaN: the
 * table shows "-" and JSON null, and a note (keel_bench_note()) says why.
 *
 * The harness is single-threaded and keeps its state in struct keel_bench.
 */
#ifndef KEEL_BENCH_H
#define KEEL_BENCH_H

#include <stddef.h>
#include <stdint.h>

/* One result row; ratio is value / baseline (0 when baseline is not positive, NaN when either is).
 */
struct keel_bench_row {
    char *name;
    double value;
    const char *unit; /* a string literal: "MB/s", "msg/s" */
    double baseline;
    double ratio;
};

struct keel_bench {
    const char *prog;   /* "keel-bench-proto" */
    int json;           /* --json given */
    int quick;          /* --quick given */
    double rep_seconds; /* target length of one timed repetition */
    int reps;           /* repetitions per measurement; the median is kept */
    struct keel_bench_row *rows;
    size_t nrows;
    size_t arows;
    char **notes; /* keel_bench_note() */
    size_t nnotes;
};

/*
 * The work to time: run the operation `iters` times.  The function must use
 * what the operation produces (keel_bench_use()), so that the compiler cannot
 * drop the work.
 */
struct keel_bench_fn {
    void (*run)(void *ctx, uint64_t iters);
    void *ctx;
};

/*
 * Parse the shared options into `b`.  Returns -1 when the benchmark should
 * run, otherwise the exit code main() should return (0 after --help, 64 on a
 * usage error).  `summary` is one line for --help.
 */
int keel_bench_init(struct keel_bench *b, const char *prog, const char *summary, int argc,
                    char **argv);

/*
 * A benchmark's own options.  `parse` is called with each argument the
 * harness does not know (argv[i]) and returns how many arguments it took
 * (1, or 2 for an option and its value), 0 when it does not know it either,
 * or -1 when it is wrong (after printing why on stderr).  `help` (lines of
 * "  --name VALUE  what it does\n") is printed by --help after the shared
 * options.
 */
struct keel_bench_opts {
    const char *help;
    int (*parse)(void *ctx, int argc, char **argv, int i);
    void *ctx;
};

/* keel_bench_init() with the benchmark's own options `opts` (may be NULL). */
int keel_bench_init_opts(struct keel_bench *b, const char *prog, const char *summary,
                         const struct keel_bench_opts *opts, int argc, char **argv);

/*
 * A benchmark option's whole decimal number in [lo, hi] into *v: 0, or -1
 * after saying on stderr ("PROG: OPT: expected a number from LO to HI, got
 * 'TEXT'") what is wrong (TEXT NULL: the value is missing).
 */
int keel_bench_parse_uint(const char *prog, const char *opt, const char *text, unsigned lo,
                          unsigned hi, unsigned *v);

/* Seconds on the monotonic clock, from an arbitrary origin. */
double keel_bench_now(void);

/*
 * Median seconds per iteration of `fn`: the iteration count is calibrated so
 * that one repetition takes about b->rep_seconds, then b->reps repetitions
 * are timed after a warm-up one.
 */
double keel_bench_time(const struct keel_bench *b, const struct keel_bench_fn *fn);

/*
 * Time `fn` and `base` the same way as keel_bench_time(), alternating their
 * repetitions so that a change in clock speed or load during the run affects
 * both alike.  Stores the median seconds per iteration of each.
 */
void keel_bench_compare(const struct keel_bench *b, const struct keel_bench_fn *fn,
                        const struct keel_bench_fn *base, double *fn_seconds, double *base_seconds);

/* Add a row; `name` is copied, `unit` must be a string literal. */
void keel_bench_record(struct keel_bench *b, const char *name, double value, const char *unit,
                       double baseline);

/*
 * Add a sentence about the results ("not reached in 2 epochs"), printed by
 * keel_bench_finish() below the table, or on stderr with --json so that
 * stdout stays one JSON document.
 */
void keel_bench_note(struct keel_bench *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Print the rows (a table, or JSON with --json) to stdout and free them.
 * Returns the exit code for main(): 0, or 1 when the output failed.
 */
int keel_bench_finish(struct keel_bench *b);

/*
 * Make the compiler assume the memory at `p` is read and may have changed,
 * so that work whose result lands there is neither dropped nor hoisted out of
 * a loop.  Costs no instruction.
 */
static inline void keel_bench_use(const void *p)
{
    __asm__ volatile("" : : "r"(p) : "memory");
}

/* Make the compiler assume `v` is used, so that computing it is not dropped. */
static inline void keel_bench_use_u64(uint64_t v)
{
    __asm__ volatile("" : : "r"(v));
}

#endif
