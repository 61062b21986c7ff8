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
 *
 * The harness is single-threaded and keeps its state in struct keel_bench.
 */
#ifndef KEEL_BENCH_H
#define KEEL_BENCH_H

#include <stddef.h>
#include <stdint.h>

/* One result row; ratio is value / baseline (0 when baseline is not positive). */
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
