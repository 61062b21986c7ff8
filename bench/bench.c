/*
 * bench.c - option parsing, timing and result output for the benchmarks.
 *
 * Timing: the iteration count is calibrated until one repetition lasts about
 * rep_seconds, then `reps` repetitions are timed and the median kept, which
 * is robust against the odd repetition slowed by an interrupt or a page fault.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "alloc.h"
#include "cli.h"

/* Normal runs: 5 repetitions of ~60 ms, so a measurement takes ~0.3 s. */
#define REP_SECONDS 0.06
#define REPS        5
/* --quick: 3 repetitions of ~5 ms, enough to see that everything runs. */
#define QUICK_REP_SECONDS 0.005
#define QUICK_REPS        3
#define MAX_REPS          15

static void usage(FILE *f, const char *prog, const char *summary,
                  const struct keel_bench_opts *opts)
{
    fprintf(f,
            "usage: %s [--json] [--quick]%s\n"
            "%s\n"
            "\n"
            "  --json   print a JSON array of {name, value, unit, baseline, ratio}\n"
            "  --quick  short run with few repetitions (a smoke test; numbers are rough)\n"
            "  --help   print this help and exit\n"
            "%s"
            "\n"
            "Each row's baseline is measured in the same run; ratio = value / baseline.\n",
            prog, opts && opts->help ? " [OPTIONS]" : "", summary,
            opts && opts->help ? opts->help : "");
}

int keel_bench_init(struct keel_bench *b, const char *prog, const char *summary, int argc,
                    char **argv)
{
    return keel_bench_init_opts(b, prog, summary, NULL, argc, argv);
}

int keel_bench_init_opts(struct keel_bench *b, const char *prog, const char *summary,
                         const struct keel_bench_opts *opts, int argc, char **argv)
{
    memset(b, 0, sizeof(*b));
    b->prog = prog;
    for (int i = 1; i < argc; i++) {
        int took;

        if (strcmp(argv[i], "--json") == 0) {
            b->json = 1;
        } else if (strcmp(argv[i], "--quick") == 0) {
            b->quick = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout, prog, summary, opts);
            return KEEL_EXIT_OK;
        } else if (opts && opts->parse && (took = opts->parse(opts->ctx, argc, argv, i)) != 0) {
            if (took < 0)
                return KEEL_EXIT_USAGE;
            i += took - 1;
        } else {
            fprintf(stderr, "%s: unknown argument '%s'\n", prog, argv[i]);
            usage(stderr, prog, summary, opts);
            return KEEL_EXIT_USAGE;
        }
    }
    b->rep_seconds = b->quick ? QUICK_REP_SECONDS : REP_SECONDS;
    b->reps = b->quick ? QUICK_REPS : REPS;
    return -1;
}

double keel_bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds taken by one call of fn->run(ctx, iters). */
static double run_once(const struct keel_bench_fn *fn, uint64_t iters)
{
    double t0 = keel_bench_now();

    fn->run(fn->ctx, iters);
    return keel_bench_now() - t0;
}

/* An iteration count for which one repetition lasts about b->rep_seconds. */
static uint64_t calibrate(const struct keel_bench *b, const struct keel_bench_fn *fn)
{
    uint64_t iters = 1;
    double t;

    /* Grow until the run is long enough (a tenth of a repetition) to time well. */
    while ((t = run_once(fn, iters)) < b->rep_seconds / 10 && iters < UINT64_MAX / 2)
        iters *= 2;
    if (t <= 0)
        return iters;
    t = (double)iters * b->rep_seconds / t;
    return t < 1 ? 1 : (uint64_t)t;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double keel_bench_time(const struct keel_bench *b, const struct keel_bench_fn *fn)
{
    double per_iter[MAX_REPS];
    int reps = b->reps < MAX_REPS ? b->reps : MAX_REPS;
    uint64_t iters = calibrate(b, fn);

    run_once(fn, iters); /* warm-up: caches, page faults, clock speed */
    for (int r = 0; r < reps; r++)
        per_iter[r] = run_once(fn, iters) / (double)iters;
    return median(per_iter, reps);
}

void keel_bench_compare(const struct keel_bench *b, const struct keel_bench_fn *fn,
                        const struct keel_bench_fn *base, double *fn_seconds, double *base_seconds)
{
    double t_fn[MAX_REPS], t_base[MAX_REPS];
    int reps = b->reps < MAX_REPS ? b->reps : MAX_REPS;
    uint64_t n_fn = calibrate(b, fn);
    uint64_t n_base = calibrate(b, base);

    run_once(fn, n_fn);
    run_once(base, n_base);
    for (int r = 0; r < reps; r++) {
        t_fn[r] = run_once(fn, n_fn) / (double)n_fn;
        t_base[r] = run_once(base, n_base) / (double)n_base;
    }
    *fn_seconds = median(t_fn, reps);
    *base_seconds = median(t_base, reps);
}

void keel_bench_record(struct keel_bench *b, const char *name, double value, const char *unit,
                       double baseline)
{
    struct keel_bench_row *row;

    if (b->nrows == b->arows) {
        b->arows = b->arows ? b->arows * 2 : 16;
        KEEL_REALLOC_ARRAY(b->rows, b->arows);
    }
    row = &b->rows[b->nrows++];
    row->name = keel_strdup(name);
    row->value = value;
    row->unit = unit;
    row->baseline = baseline;
    if (isnan(value) || isnan(baseline))
        row->ratio = NAN;
    else
        row->ratio = baseline > 0 ? value / baseline : 0;
}

void keel_bench_note(struct keel_bench *b, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    KEEL_REALLOC_ARRAY(b->notes, b->nnotes + 1);
    b->notes[b->nnotes++] = keel_strdup(line);
}

/* A number for the table: fewer decimals as it grows (4 below 1, for accuracies); "-" for none. */
static void fmt_num(char *out, size_t size, double v)
{
    if (!isfinite(v)) {
        snprintf(out, size, "-");
        return;
    }
    snprintf(out, size,
             v >= 100 || v <= -100 ? "%.0f"
             : v >= 10 || v <= -10 ? "%.1f"
             : v >= 1 || v <= -1   ? "%.2f"
                                   : "%.4f",
             v);
}

static int print_table(const struct keel_bench *b)
{
    int w_name = (int)strlen("name"), w_val = (int)strlen("value"), w_unit = (int)strlen("unit");
    int w_base = (int)strlen("baseline");
    char num[64];

    for (size_t i = 0; i < b->nrows; i++) {
        const struct keel_bench_row *r = &b->rows[i];
        int n;

        if ((n = (int)strlen(r->name)) > w_name)
            w_name = n;
        if ((n = (int)strlen(r->unit)) > w_unit)
            w_unit = n;
        fmt_num(num, sizeof(num), r->value);
        if ((n = (int)strlen(num)) > w_val)
            w_val = n;
        fmt_num(num, sizeof(num), r->baseline);
        if ((n = (int)strlen(num)) > w_base)
            w_base = n;
    }
    printf("%-*s  %*s  %-*s  %*s  %s\n", w_name, "name", w_val, "value", w_unit, "unit", w_base,
           "baseline", "ratio");
    for (size_t i = 0; i < b->nrows; i++) {
        const struct keel_bench_row *r = &b->rows[i];
        char val[64], base[64];

        fmt_num(val, sizeof(val), r->value);
        fmt_num(base, sizeof(base), r->baseline);
        if (isfinite(r->ratio))
            printf("%-*s  %*s  %-*s  %*s  %5.3f\n", w_name, r->name, w_val, val, w_unit, r->unit,
                   w_base, base, r->ratio);
        else
            printf("%-*s  %*s  %-*s  %*s  %5s\n", w_name, r->name, w_val, val, w_unit, r->unit,
                   w_base, base, "-");
    }
    if (b->nnotes > 0)
        putchar('\n');
    for (size_t i = 0; i < b->nnotes; i++)
        printf("%s\n", b->notes[i]);
    return 0;
}

/* A JSON number, or null for what JSON cannot hold (NaN, infinity). */
static json_t *json_num(double v)
{
    json_t *j = json_real(v);

    return j ? j : json_null();
}

static int print_json(const struct keel_bench *b)
{
    json_t *arr = json_array();
    int rc = 0;

    if (arr == NULL)
        return -1;
    for (size_t i = 0; i < b->nrows && rc == 0; i++) {
        const struct keel_bench_row *r = &b->rows[i];
        json_t *o = json_object();

        /* The _new setters take the value's reference even when they fail. */
        if (o == NULL || json_object_set_new(o, "name", json_string(r->name)) != 0 ||
            json_object_set_new(o, "value", json_num(r->value)) != 0 ||
            json_object_set_new(o, "unit", json_string(r->unit)) != 0 ||
            json_object_set_new(o, "baseline", json_num(r->baseline)) != 0 ||
            json_object_set_new(o, "ratio", json_num(r->ratio)) != 0) {
            json_decref(o);
            rc = -1;
        } else if (json_array_append_new(arr, o) != 0) {
            rc = -1;
        }
    }
    if (rc == 0 && (json_dumpf(arr, stdout, JSON_INDENT(2)) != 0 || putchar('\n') == EOF))
        rc = -1;
    json_decref(arr);
    return rc;
}

int keel_bench_finish(struct keel_bench *b)
{
    int rc = b->json ? print_json(b) : print_table(b);

    for (size_t i = 0; i < b->nnotes; i++) {
        if (b->json)
            fprintf(stderr, "%s: %s\n", b->prog, b->notes[i]);
        free(b->notes[i]);
    }
    free(b->notes);
    b->notes = NULL;
    b->nnotes = 0;

    if (fflush(stdout) != 0 || ferror(stdout))
        rc = -1;
    if (rc != 0)
        fprintf(stderr, "%s: cannot write the results\n", b->prog);
    for (size_t i = 0; i < b->nrows; i++)
        free(b->rows[i].name);
    free(b->rows);
    b->rows = NULL;
    b->nrows = b->arows = 0;
    return rc == 0 ? KEEL_EXIT_OK : KEEL_EXIT_FAILURE;
}

int keel_bench_parse_uint(const char *prog, const char *opt, const char *text, unsigned lo,
                          unsigned hi, unsigned *v)
{
    char *end;
    unsigned long n;

    errno = 0;
    n = text ? strtoul(text, &end, 10) : 0;
    if (text == NULL || errno != 0 || end == text || *end != '\0' || text[0] == '-' || n < lo ||
        n > hi) {
        fprintf(stderr, "%s: %s: expected a number from %u to %u, got '%s'\n", prog, opt, lo, hi,
                text ? text : "");
        return -1;
    }
    *v = (unsigned)n;
    return 0;
}
