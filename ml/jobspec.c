/*
 * jobspec.c - job specs: the INI parser (inih), validation, the canonical
 * JSON form (jansson), its SHA-256 digest, and the model tables.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <ini.h>
#include <jansson.h>

#include "digest.h"
#include "keel/dataset.h"
#include "keel/half.h"
#include "keel/jobspec.h"
#include "keel/model.h"
#include "keel/range.h"

/* The fields of the INI file, in the order the docs list them. */
enum field {
    F_NAME,
    F_MODEL,
    F_DATASET,
    F_TEST_DATASET,
    F_BATCH_SIZE,
    F_EPOCHS,
    F_CONSISTENCY,
    F_CHECKPOINT_INTERVAL,
    F_REPLICATION,
    F_SHARDS,
    F_LOST_RANGES,
    F_DURABILITY,
    F_COMPRESSION,
    F_OPT_TYPE,
    F_LR,
    F_MOMENTUM,
    F_BETA1,
    F_BETA2,
    F_EPSILON,
    F_LR_DECAY,
    F_LR_DECAY_EVERY,
    F_INIT_METHOD,
    F_SEED,
    F_SCALE,
    NFIELDS
};

static const struct {
    const char *section, *key;
} fields[NFIELDS] = {
    [F_NAME] = {"job", "name"},
    [F_MODEL] = {"job", "model"},
    [F_DATASET] = {"job", "dataset"},
    [F_TEST_DATASET] = {"job", "test_dataset"},
    [F_BATCH_SIZE] = {"job", "batch_size"},
    [F_EPOCHS] = {"job", "epochs"},
    [F_CONSISTENCY] = {"job", "consistency"},
    [F_CHECKPOINT_INTERVAL] = {"job", "checkpoint_interval"},
    [F_REPLICATION] = {"job", "replication"},
    [F_SHARDS] = {"job", "shards"},
    [F_LOST_RANGES] = {"job", "lost_ranges"},
    [F_DURABILITY] = {"job", "durability"},
    [F_COMPRESSION] = {"job", "compression"},
    [F_OPT_TYPE] = {"optimizer", "type"},
    [F_LR] = {"optimizer", "lr"},
    [F_MOMENTUM] = {"optimizer", "momentum"},
    [F_BETA1] = {"optimizer", "beta1"},
    [F_BETA2] = {"optimizer", "beta2"},
    [F_EPSILON] = {"optimizer", "epsilon"},
    [F_LR_DECAY] = {"optimizer", "lr_decay"},
    [F_LR_DECAY_EVERY] = {"optimizer", "lr_decay_every"},
    [F_INIT_METHOD] = {"init", "method"},
    [F_SEED] = {"init", "seed"},
    [F_SCALE] = {"init", "scale"},
};

/* Bounds of the numeric fields. */
#define MAX_BATCH_SIZE  65536
#define MAX_EPOCHS      100000
#define MAX_CHECKPOINT  UINT64_C(1000000000)
#define MAX_DECAY_EVERY UINT64_C(1000000000)
#define MAX_REPLICATION 5
#define MAX_SHARDS      4096
#define MAX_LR          10.0
#define MAX_SEED        ((UINT64_C(1) << 63) - 1)
#define MAX_SCALE       10.0
#define DEFAULT_SCALE   0.05

/* Dataset names are as `keelctl dataset import` takes them. */
#define DATASET_RULE "must be 1-64 of A-Z a-z 0-9 . _ -, not starting with '.' or '-'"

/* The init methods a spec offers, by the names [init] method takes. */
static const char *const init_names[] = {
    [KEEL_INITIALIZER_ZEROS] = "zeros",
    [KEEL_INITIALIZER_UNIFORM] = "uniform",
    [KEEL_INITIALIZER_GLOROT_UNIFORM] = "glorot",
    [KEEL_INITIALIZER_HE_UNIFORM] = "he",
};

#define NINIT_NAMES (sizeof(init_names) / sizeof(init_names[0]))

const char *keel_init_method_name(enum keel_initializer_kind kind)
{
    if ((size_t)kind < NINIT_NAMES && init_names[kind] != NULL)
        return init_names[kind];
    return "unknown";
}

/* The optimizer kind named `s` ("adam"), or 0. */
static enum keel_optim_kind optim_kind_of(const char *s)
{
    for (int k = KEEL_OPTIM_SGD; k <= KEEL_OPTIM_ADAM; k++)
        if (strcmp(keel_optim_name((enum keel_optim_kind)k), s) == 0)
            return (enum keel_optim_kind)k;
    return 0;
}

/* The init method named `s` ("glorot"), or 0. */
static enum keel_initializer_kind init_kind_of(const char *s)
{
    for (size_t k = 1; k < NINIT_NAMES; k++)
        if (init_names[k] != NULL && strcmp(init_names[k], s) == 0)
            return (enum keel_initializer_kind)k;
    return 0;
}

/* Which optimizer parameters each optimizer uses. */
static int uses(enum keel_optim_kind o, enum field f)
{
    switch (f) {
    case F_LR:
        return 1;
    case F_MOMENTUM:
        return o == KEEL_OPTIM_MOMENTUM;
    case F_BETA1:
    case F_BETA2:
        return o == KEEL_OPTIM_ADAM;
    case F_EPSILON:
        return o == KEEL_OPTIM_ADAGRAD || o == KEEL_OPTIM_ADAM;
    default:
        return 0;
    }
}

static double *opt_param(struct keel_jobspec *s, enum field f)
{
    switch (f) {
    case F_LR:
        return &s->optimizer.lr;
    case F_MOMENTUM:
        return &s->optimizer.momentum;
    case F_BETA1:
        return &s->optimizer.beta1;
    case F_BETA2:
        return &s->optimizer.beta2;
    case F_EPSILON:
        return &s->optimizer.epsilon;
    default:
        return NULL;
    }
}

static double opt_value(const struct keel_jobspec *s, enum field f)
{
    switch (f) {
    case F_LR:
        return s->optimizer.lr;
    case F_MOMENTUM:
        return s->optimizer.momentum;
    case F_BETA1:
        return s->optimizer.beta1;
    case F_BETA2:
        return s->optimizer.beta2;
    case F_EPSILON:
        return s->optimizer.epsilon;
    default:
        return 0;
    }
}

static double opt_default(enum keel_optim_kind o, enum field f)
{
    switch (f) {
    case F_LR:
        return keel_optim_default_lr(o);
    case F_MOMENTUM:
        return KEEL_OPTIM_DEFAULT_MOMENTUM;
    case F_BETA1:
        return KEEL_OPTIM_DEFAULT_BETA1;
    case F_BETA2:
        return KEEL_OPTIM_DEFAULT_BETA2;
    case F_EPSILON:
        return KEEL_OPTIM_DEFAULT_EPSILON;
    default:
        return 0;
    }
}

void keel_jobspec_init(struct keel_jobspec *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->optimizer.type = KEEL_OPTIM_SGD;
    spec->optimizer.lr = keel_optim_default_lr(KEEL_OPTIM_SGD);
    spec->optimizer.lr_decay = 1;
    spec->init.method = KEEL_INITIALIZER_GLOROT_UNIFORM;
    spec->init.seed = 1;
    spec->batch_size = 64;
    spec->epochs = 1;
    spec->consistency = KEEL_CONSISTENCY_BSP;
    spec->checkpoint_interval = 1000;
    spec->replication = 2;
    spec->shards = 8;
}

/* ------------------------------------------------------------------------ */
/* Values                                                                    */
/* ------------------------------------------------------------------------ */

/* The double nearest to v's 15-significant-digit decimal form (see jobspec.h). */
static double normalize_real(double v)
{
    char text[64];

    snprintf(text, sizeof(text), "%.15g", v);
    return strtod(text, NULL);
}

/* A decimal integer in [min, max]: digits only, no sign, no spaces. */
static int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        if (__builtin_mul_overflow(v, 10, &v) ||
            __builtin_add_overflow(v, (uint64_t)(*s - '0'), &v))
            return -1;
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* A finite number; the range check is the caller's. */
static int parse_real(const char *s, double *out)
{
    char *end;
    double v;

    if (*s == '\0' || *s == ' ' || *s == '\t')
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (*end != '\0' || errno == ERANGE || !isfinite(v))
        return -1;
    *out = normalize_real(v);
    return 0;
}

/*
 * "softmax:784-10" or "mlp:784-256-128-10" into spec->model, through the
 * model's own parser; a spec adds that an mlp has a hidden layer.
 */
static int parse_model(struct keel_jobspec *spec, const char *s, char *why, size_t whylen)
{
    unsigned n;

    if (keel_model_scan(&spec->model, s, why, whylen) != 0)
        return -1;
    n = spec->model.nlayers + 1;
    if (spec->model.type == KEEL_MODEL_TYPE_SOFTMAX && n != 2) {
        snprintf(why, whylen, "softmax takes exactly 2 sizes (inputs and classes), got %u", n);
        return -1;
    }
    if (spec->model.type == KEEL_MODEL_TYPE_MLP && n < 3) {
        snprintf(why, whylen, "mlp takes at least 3 sizes (inputs, hidden..., outputs), got %u", n);
        return -1;
    }
    return 0;
}

static int parse_consistency(struct keel_jobspec *spec, const char *s)
{
    uint64_t v;

    spec->staleness = 0;
    if (strcmp(s, "bsp") == 0) {
        spec->consistency = KEEL_CONSISTENCY_BSP;
        return 0;
    }
    if (strcmp(s, "asp") == 0) {
        spec->consistency = KEEL_CONSISTENCY_ASP;
        return 0;
    }
    if (strncmp(s, "ssp:", 4) == 0 && parse_uint(s + 4, 1, KEEL_JOBSPEC_MAX_STALENESS, &v) == 0) {
        spec->consistency = KEEL_CONSISTENCY_SSP;
        spec->staleness = (uint32_t)v;
        return 0;
    }
    return -1;
}

void keel_consistency_string(const struct keel_jobspec *spec, char *out, size_t n)
{
    switch (spec->consistency) {
    case KEEL_CONSISTENCY_BSP:
        snprintf(out, n, "bsp");
        break;
    case KEEL_CONSISTENCY_SSP:
        snprintf(out, n, "ssp:%" PRIu32, spec->staleness);
        break;
    case KEEL_CONSISTENCY_ASP:
        snprintf(out, n, "asp");
        break;
    default:
        snprintf(out, n, "unknown");
        break;
    }
}

void keel_jobspec_model_string(const struct keel_jobspec *spec, char *out, size_t n)
{
    struct keel_buf b = KEEL_BUF_INIT;

    keel_model_format(&spec->model, &b);
    snprintf(out, n, "%s", (const char *)b.buf);
    keel_buf_release(&b);
}

/* The range text of a real field's bounds, for messages. */
struct real_bounds {
    double lo, hi;
    int lo_open, hi_open; /* exclusive ends */
};

static const struct real_bounds *real_bounds_of(enum field f)
{
    static const struct real_bounds lr = {0, MAX_LR, 1, 0}, unit = {0, 1, 0, 1}, eps = {0, 1, 1, 0},
                                    scale = {0, MAX_SCALE, 1, 0};

    switch (f) {
    case F_LR:
        return &lr;
    case F_LR_DECAY:
        return &eps; /* (0, 1] */
    case F_MOMENTUM:
    case F_BETA1:
    case F_BETA2:
        return &unit;
    case F_EPSILON:
        return &eps;
    case F_SCALE:
        return &scale;
    default:
        return NULL;
    }
}

static int real_ok(const struct real_bounds *b, double v)
{
    return (b->lo_open ? v > b->lo : v >= b->lo) && (b->hi_open ? v < b->hi : v <= b->hi);
}

static void real_bounds_text(const struct real_bounds *b, char *out, size_t n)
{
    snprintf(out, n, "a number %s %g and %s %g", b->lo_open ? "greater than" : "at least", b->lo,
             b->hi_open ? "less than" : "at most", b->hi);
}

/*
 * Set field `f` of `spec` from the text `value`.  On error writes the reason
 * (without the field's name) into `why` and returns -1.
 */
static int set_field(struct keel_jobspec *spec, enum field f, const char *value, char *why,
                     size_t whylen)
{
    uint64_t v;
    double d;
    int k;

    switch (f) {
    case F_NAME:
        if (!keel_id_valid(value)) {
            snprintf(why, whylen, "must be 1-%d of A-Z a-z 0-9 - _, got '%.80s'", KEEL_ID_MAX,
                     value);
            return -1;
        }
        snprintf(spec->name, sizeof(spec->name), "%s", value);
        return 0;
    case F_DATASET:
    case F_TEST_DATASET:
        if (keel_dataset_name_check(value, NULL) != 0) {
            snprintf(why, whylen, "%s, got '%.80s'", DATASET_RULE, value);
            return -1;
        }
        snprintf(f == F_DATASET ? spec->dataset : spec->test_dataset, sizeof(spec->dataset), "%s",
                 value);
        return 0;
    case F_MODEL:
        if (parse_model(spec, value, why, whylen) != 0) {
            size_t used = strlen(why);

            snprintf(why + used, whylen - used, ", got '%.80s'", value);
            return -1;
        }
        return 0;
    case F_BATCH_SIZE:
    case F_EPOCHS:
    case F_CHECKPOINT_INTERVAL:
    case F_REPLICATION:
    case F_SHARDS:
    case F_LR_DECAY_EVERY:
    case F_SEED: {
        uint64_t lo = f == F_CHECKPOINT_INTERVAL || f == F_SEED || f == F_LR_DECAY_EVERY ? 0 : 1;
        uint64_t hi = f == F_BATCH_SIZE            ? MAX_BATCH_SIZE
                      : f == F_EPOCHS              ? MAX_EPOCHS
                      : f == F_CHECKPOINT_INTERVAL ? MAX_CHECKPOINT
                      : f == F_REPLICATION         ? MAX_REPLICATION
                      : f == F_SHARDS              ? MAX_SHARDS
                      : f == F_LR_DECAY_EVERY      ? MAX_DECAY_EVERY
                                                   : MAX_SEED;

        if (parse_uint(value, lo, hi, &v) != 0) {
            snprintf(why, whylen, "must be an integer from %" PRIu64 " to %" PRIu64 ", got '%.80s'",
                     lo, hi, value);
            return -1;
        }
        if (f == F_BATCH_SIZE)
            spec->batch_size = (uint32_t)v;
        else if (f == F_EPOCHS)
            spec->epochs = (uint32_t)v;
        else if (f == F_CHECKPOINT_INTERVAL)
            spec->checkpoint_interval = v;
        else if (f == F_REPLICATION)
            spec->replication = (unsigned)v;
        else if (f == F_SHARDS)
            spec->shards = (uint32_t)v;
        else if (f == F_LR_DECAY_EVERY)
            spec->optimizer.lr_decay_every = v;
        else
            spec->init.seed = v;
        return 0;
    }
    case F_CONSISTENCY:
        if (parse_consistency(spec, value) != 0) {
            snprintf(why, whylen, "must be bsp, asp or ssp:N with N from 1 to %d, got '%.80s'",
                     KEEL_JOBSPEC_MAX_STALENESS, value);
            return -1;
        }
        return 0;
    case F_LOST_RANGES:
        if (strcmp(value, "fail") != 0 && strcmp(value, "rewind") != 0) {
            snprintf(why, whylen, "must be fail or rewind, got '%.80s'", value);
            return -1;
        }
        spec->lost_ranges_rewind = strcmp(value, "rewind") == 0;
        return 0;
    case F_DURABILITY:
        if (strcmp(value, "replicas") != 0 && strcmp(value, "disk") != 0) {
            snprintf(why, whylen, "must be replicas or disk, got '%.80s'", value);
            return -1;
        }
        spec->durability_disk = strcmp(value, "disk") == 0;
        return 0;
    case F_COMPRESSION:
        for (k = KEEL_ROWS_F32; k <= KEEL_ROWS_FP16; k++)
            if (strcmp(value, keel_rows_enc_name((unsigned)k)) == 0) {
                spec->compression = (unsigned)k;
                return 0;
            }
        snprintf(why, whylen, "must be none, bf16 or fp16, got '%.80s'", value);
        return -1;
    case F_OPT_TYPE:
        if ((k = optim_kind_of(value)) == 0) {
            snprintf(why, whylen, "must be sgd, momentum, adagrad or adam, got '%.80s'", value);
            return -1;
        }
        spec->optimizer.type = (enum keel_optim_kind)k;
        return 0;
    case F_INIT_METHOD:
        if ((k = init_kind_of(value)) == 0) {
            snprintf(why, whylen, "must be zeros, uniform, glorot or he, got '%.80s'", value);
            return -1;
        }
        spec->init.method = (enum keel_initializer_kind)k;
        return 0;
    case F_LR:
    case F_MOMENTUM:
    case F_BETA1:
    case F_BETA2:
    case F_EPSILON:
    case F_LR_DECAY:
    case F_SCALE: {
        const struct real_bounds *b = real_bounds_of(f);
        char range[96];

        if (parse_real(value, &d) != 0 || !real_ok(b, d)) {
            real_bounds_text(b, range, sizeof(range));
            snprintf(why, whylen, "must be %s, got '%.80s'", range, value);
            return -1;
        }
        if (f == F_SCALE)
            spec->init.scale = d;
        else if (f == F_LR_DECAY)
            spec->optimizer.lr_decay = d;
        else
            *opt_param(spec, f) = d;
        return 0;
    }
    case NFIELDS:
        break;
    }
    snprintf(why, whylen, "unhandled field");
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Validation                                                                */
/* ------------------------------------------------------------------------ */

static int field_err(struct keel_error *err, enum field f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int field_err(struct keel_error *err, enum field f, const char *fmt, ...)
{
    char why[KEEL_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    return keel_err_set(err, KEEL_EINVAL, "[%s] %s: %s", fields[f].section, fields[f].key, why);
}

int keel_jobspec_validate(const struct keel_jobspec *s, struct keel_error *err)
{
    static const enum field opt_fields[] = {F_LR, F_MOMENTUM, F_BETA1, F_BETA2, F_EPSILON};
    const unsigned nsizes = s->model.nlayers + 1;
    uint64_t params = 0;
    int consistency_ok = 1;

    if (!keel_id_valid(s->name))
        return field_err(err, F_NAME, "must be set to 1-%d of A-Z a-z 0-9 - _", KEEL_ID_MAX);
    if (memchr(s->dataset, '\0', sizeof(s->dataset)) == NULL || s->dataset[0] == '\0')
        return field_err(err, F_DATASET, "must be set");
    if (keel_dataset_name_check(s->dataset, NULL) != 0)
        return field_err(err, F_DATASET, DATASET_RULE);
    if (memchr(s->test_dataset, '\0', sizeof(s->test_dataset)) == NULL ||
        (s->test_dataset[0] != '\0' && keel_dataset_name_check(s->test_dataset, NULL) != 0))
        return field_err(err, F_TEST_DATASET, DATASET_RULE);
    if (s->model.type != KEEL_MODEL_TYPE_SOFTMAX && s->model.type != KEEL_MODEL_TYPE_MLP)
        return field_err(err, F_MODEL, "must be set");
    if ((s->model.type == KEEL_MODEL_TYPE_SOFTMAX && nsizes != 2) ||
        (s->model.type == KEEL_MODEL_TYPE_MLP &&
         (nsizes < 3 || nsizes > KEEL_MODEL_MAX_LAYERS + 1)))
        return field_err(err, F_MODEL, "wrong number of layer sizes (%u)", nsizes);
    for (unsigned i = 0; i < nsizes; i++) {
        if (s->model.sizes[i] < 1 || s->model.sizes[i] > KEEL_MODEL_MAX_UNITS)
            return field_err(err, F_MODEL, "layer size %u is %" PRIu32 ", must be 1 to %u", i + 1,
                             s->model.sizes[i], (unsigned)KEEL_MODEL_MAX_UNITS);
        if (i > 0)
            params += ((uint64_t)s->model.sizes[i - 1] + 1) * s->model.sizes[i];
    }
    if (params > KEEL_MODEL_MAX_PARAMS)
        return field_err(err, F_MODEL, "%" PRIu64 " parameters, more than the %" PRIu64 " allowed",
                         params, KEEL_MODEL_MAX_PARAMS);
    if (s->batch_size < 1 || s->batch_size > MAX_BATCH_SIZE)
        return field_err(err, F_BATCH_SIZE, "must be from 1 to %d", MAX_BATCH_SIZE);
    if (s->epochs < 1 || s->epochs > MAX_EPOCHS)
        return field_err(err, F_EPOCHS, "must be from 1 to %d", MAX_EPOCHS);
    if (s->consistency == KEEL_CONSISTENCY_SSP) {
        if (s->staleness < 1 || s->staleness > KEEL_JOBSPEC_MAX_STALENESS)
            consistency_ok = 0;
    } else if ((s->consistency != KEEL_CONSISTENCY_BSP && s->consistency != KEEL_CONSISTENCY_ASP) ||
               s->staleness != 0) {
        consistency_ok = 0;
    }
    if (!consistency_ok)
        return field_err(err, F_CONSISTENCY, "must be bsp, asp or ssp:N with N from 1 to %d",
                         KEEL_JOBSPEC_MAX_STALENESS);
    if (s->checkpoint_interval > MAX_CHECKPOINT)
        return field_err(err, F_CHECKPOINT_INTERVAL, "must be from 0 to %" PRIu64, MAX_CHECKPOINT);
    if (s->replication < 1 || s->replication > MAX_REPLICATION)
        return field_err(err, F_REPLICATION, "must be from 1 to %d", MAX_REPLICATION);
    if (s->shards < 1 || s->shards > MAX_SHARDS)
        return field_err(err, F_SHARDS, "must be from 1 to %d", MAX_SHARDS);
    if (s->optimizer.type < KEEL_OPTIM_SGD || s->optimizer.type > KEEL_OPTIM_ADAM)
        return field_err(err, F_OPT_TYPE, "must be sgd, momentum, adagrad or adam");
    for (size_t i = 0; i < sizeof(opt_fields) / sizeof(opt_fields[0]); i++) {
        enum field f = opt_fields[i];
        double v = opt_value(s, f);
        char range[96];

        if (!uses(s->optimizer.type, f)) {
            if (v != 0)
                return field_err(err, f, "not used by optimizer '%s'",
                                 keel_optim_name(s->optimizer.type));
            continue;
        }
        if (!real_ok(real_bounds_of(f), v)) {
            real_bounds_text(real_bounds_of(f), range, sizeof(range));
            return field_err(err, f, "must be %s", range);
        }
    }
    if (s->optimizer.lr_decay_every > MAX_DECAY_EVERY)
        return field_err(err, F_LR_DECAY_EVERY, "must be from 0 to %" PRIu64, MAX_DECAY_EVERY);
    if (!real_ok(real_bounds_of(F_LR_DECAY), s->optimizer.lr_decay))
        return field_err(err, F_LR_DECAY, "must be greater than 0 and at most 1");
    if (s->optimizer.lr_decay_every == 0 && s->optimizer.lr_decay != 1)
        return field_err(err, F_LR_DECAY, "needs [optimizer] lr_decay_every (clocks per step)");
    if (strcmp(keel_init_method_name(s->init.method), "unknown") == 0)
        return field_err(err, F_INIT_METHOD, "must be zeros, uniform, glorot or he");
    if (s->init.seed > MAX_SEED)
        return field_err(err, F_SEED, "must be from 0 to %" PRIu64, MAX_SEED);
    if (s->init.method == KEEL_INITIALIZER_UNIFORM
            ? !real_ok(real_bounds_of(F_SCALE), s->init.scale)
            : s->init.scale != 0)
        return field_err(err, F_SCALE, "%s",
                         s->init.method == KEEL_INITIALIZER_UNIFORM
                             ? "must be greater than 0 and at most 10"
                             : "used only by init method 'uniform'");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The INI file                                                              */
/* ------------------------------------------------------------------------ */

/* The longest line accepted: inih's buffer (200) less "\r\n\0" and slack. */
#define MAX_LINE 195

struct parse_ctx {
    struct keel_jobspec *spec;
    int line_of[NFIELDS]; /* where each field was set, 0 when it was not */
    int line;             /* the line inih is on */
    int at_line_start;
    int long_line; /* the line where a too long line was seen, or 0 */
    int failed;    /* the line of the first error, or 0 */
    char why[KEEL_ERROR_MSG_MAX];
    /* the input: a FILE or a string */
    FILE *file;
    const char *text;
};

/* inih reader: one line (or a chunk of a long one) at a time, counting lines. */
static char *read_line(char *str, int num, void *stream)
{
    struct parse_ctx *ctx = stream;
    size_t n = 0;

    if (ctx->at_line_start)
        ctx->line++;
    if (ctx->file) {
        if (fgets(str, num, ctx->file) == NULL)
            return NULL;
        n = strlen(str);
    } else {
        if (*ctx->text == '\0')
            return NULL;
        while (n + 1 < (size_t)num && ctx->text[n] != '\0' && ctx->text[n] != '\n')
            n++;
        if (ctx->text[n] == '\n' && n + 1 < (size_t)num)
            n++;
        memcpy(str, ctx->text, n);
        str[n] = '\0';
        ctx->text += n;
    }
    ctx->at_line_start = n > 0 && str[n - 1] == '\n';
    if (!ctx->long_line) {
        size_t content = n - (size_t)ctx->at_line_start;
        int more = ctx->file ? !feof(ctx->file) : *ctx->text != '\0';

        if (content > MAX_LINE || (!ctx->at_line_start && more))
            ctx->long_line = ctx->line;
    }
    return str;
}

static int on_value(void *user, const char *section, const char *key, const char *value)
{
    struct parse_ctx *ctx = user;
    char why[KEEL_ERROR_MSG_MAX - 64];
    int known_section = 0;

    if (ctx->failed)
        return 1;
    for (int f = 0; f < NFIELDS; f++) {
        if (strcmp(fields[f].section, section) != 0)
            continue;
        known_section = 1;
        if (strcmp(fields[f].key, key) != 0)
            continue;
        if (ctx->line_of[f]) {
            snprintf(ctx->why, sizeof(ctx->why), "[%s] %s: set twice (first on line %d)", section,
                     key, ctx->line_of[f]);
            ctx->failed = ctx->line;
            return 0;
        }
        ctx->line_of[f] = ctx->line;
        if (set_field(ctx->spec, (enum field)f, value, why, sizeof(why)) != 0) {
            snprintf(ctx->why, sizeof(ctx->why), "[%.16s] %.24s: %s", fields[f].section,
                     fields[f].key, why);
            ctx->failed = ctx->line;
            return 0;
        }
        return 1;
    }
    if (known_section)
        snprintf(ctx->why, sizeof(ctx->why), "unknown key '%.64s' in section [%s]", key, section);
    else
        snprintf(ctx->why, sizeof(ctx->why), "unknown section [%.64s] (key '%.64s')", section, key);
    ctx->failed = ctx->line;
    return 0;
}

/* After the file: required fields, defaults that depend on other fields. */
static int finish(struct parse_ctx *ctx, const char *origin, struct keel_error *err)
{
    static const enum field required[] = {F_NAME, F_MODEL, F_DATASET};
    static const enum field opt_fields[] = {F_LR, F_MOMENTUM, F_BETA1, F_BETA2, F_EPSILON};
    struct keel_jobspec *s = ctx->spec;
    int rc;

    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
        if (!ctx->line_of[required[i]])
            return keel_err_set(err, KEEL_EINVAL, "%s: [%s] %s: must be set", origin,
                                fields[required[i]].section, fields[required[i]].key);
    for (size_t i = 0; i < sizeof(opt_fields) / sizeof(opt_fields[0]); i++) {
        enum field f = opt_fields[i];

        if (!uses(s->optimizer.type, f)) {
            if (ctx->line_of[f])
                return keel_err_set(err, KEEL_EINVAL, "%s:%d: [%s] %s: not used by optimizer '%s'",
                                    origin, ctx->line_of[f], fields[f].section, fields[f].key,
                                    keel_optim_name(s->optimizer.type));
            *opt_param(s, f) = 0;
        } else if (!ctx->line_of[f]) {
            *opt_param(s, f) = opt_default(s->optimizer.type, f);
        }
    }
    if (s->init.method != KEEL_INITIALIZER_UNIFORM) {
        if (ctx->line_of[F_SCALE])
            return keel_err_set(err, KEEL_EINVAL,
                                "%s:%d: [init] scale: used only by init method 'uniform'", origin,
                                ctx->line_of[F_SCALE]);
        s->init.scale = 0;
    } else if (!ctx->line_of[F_SCALE]) {
        s->init.scale = DEFAULT_SCALE;
    }
    rc = keel_jobspec_validate(s, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "%s", origin);
    return 0;
}

static int parse_with(struct parse_ctx *ctx, const char *origin, struct keel_error *err)
{
    int line;

    keel_jobspec_init(ctx->spec);
    ctx->at_line_start = 1;
    line = ini_parse_stream(read_line, ctx, on_value, ctx);
    /* Report the first problem in the file, whichever kind it is. */
    if (ctx->long_line && (line == 0 || ctx->long_line <= line) &&
        (!ctx->failed || ctx->long_line <= ctx->failed))
        return keel_err_set(err, KEEL_EINVAL, "%s:%d: line longer than %d bytes", origin,
                            ctx->long_line, MAX_LINE);
    if (line != 0 && (!ctx->failed || line < ctx->failed))
        return keel_err_set(err, KEEL_EINVAL,
                            "%s:%d: syntax error (expected [section] or key = value)", origin,
                            line);
    if (ctx->failed)
        return keel_err_set(err, KEEL_EINVAL, "%s:%d: %s", origin, ctx->failed, ctx->why);
    return finish(ctx, origin, err);
}

int keel_jobspec_load(struct keel_jobspec *spec, const char *path, struct keel_error *err)
{
    struct parse_ctx ctx;
    int rc;

    memset(&ctx, 0, sizeof(ctx));
    ctx.spec = spec;
    ctx.file = fopen(path, "r");
    if (ctx.file == NULL) {
        int e = errno;

        return keel_err_set(err, -e, "cannot open job spec '%s': %s", path, strerror(e));
    }
    rc = parse_with(&ctx, path, err);
    fclose(ctx.file);
    return rc;
}

int keel_jobspec_parse(struct keel_jobspec *spec, const char *text, const char *origin,
                       struct keel_error *err)
{
    struct parse_ctx ctx;

    memset(&ctx, 0, sizeof(ctx));
    ctx.spec = spec;
    ctx.text = text;
    return parse_with(&ctx, origin, err);
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */
/* ------------------------------------------------------------------------ */

void keel_jobspec_encode(const struct keel_jobspec *s, struct keel_buf *out)
{
    json_t *root = json_object(), *opt = json_object(), *init = json_object();
    static const enum field opt_fields[] = {F_LR, F_MOMENTUM, F_BETA1, F_BETA2, F_EPSILON};
    char text[256];
    char *json;

    json_object_set_new(root, "format", json_integer(KEEL_JOBSPEC_FORMAT));
    json_object_set_new(root, "name", json_string(s->name));
    if (s->uid[0] != '\0') /* absent otherwise: older digests stay */
        json_object_set_new(root, "uid", json_string(s->uid));
    keel_jobspec_model_string(s, text, sizeof(text));
    json_object_set_new(root, "model", json_string(text));
    json_object_set_new(root, "dataset", json_string(s->dataset));
    if (s->test_dataset[0] != '\0')
        json_object_set_new(root, "test_dataset", json_string(s->test_dataset));
    json_object_set_new(root, "batch_size", json_integer(s->batch_size));
    json_object_set_new(root, "epochs", json_integer(s->epochs));
    keel_consistency_string(s, text, sizeof(text));
    json_object_set_new(root, "consistency", json_string(text));
    json_object_set_new(root, "checkpoint_interval",
                        json_integer((json_int_t)s->checkpoint_interval));
    json_object_set_new(root, "replication", json_integer(s->replication));
    json_object_set_new(root, "shards", json_integer(s->shards));
    if (s->lost_ranges_rewind) /* absent otherwise: older digests stay */
        json_object_set_new(root, "lost_ranges", json_string("rewind"));
    if (s->durability_disk) /* the same */
        json_object_set_new(root, "durability", json_string("disk"));
    if (s->compression != KEEL_ROWS_F32) /* the same */
        json_object_set_new(root, "compression", json_string(keel_rows_enc_name(s->compression)));
    json_object_set_new(opt, "type", json_string(keel_optim_name(s->optimizer.type)));
    for (size_t i = 0; i < sizeof(opt_fields) / sizeof(opt_fields[0]); i++)
        if (uses(s->optimizer.type, opt_fields[i]))
            json_object_set_new(opt, fields[opt_fields[i]].key,
                                json_real(opt_value(s, opt_fields[i])));
    if (s->optimizer.lr_decay_every > 0) { /* absent otherwise: older digests stay */
        json_object_set_new(opt, "lr_decay", json_real(s->optimizer.lr_decay));
        json_object_set_new(opt, "lr_decay_every",
                            json_integer((json_int_t)s->optimizer.lr_decay_every));
    }
    json_object_set_new(root, "optimizer", opt);
    json_object_set_new(init, "method", json_string(keel_init_method_name(s->init.method)));
    json_object_set_new(init, "seed", json_integer((json_int_t)s->init.seed));
    if (s->init.method == KEEL_INITIALIZER_UNIFORM)
        json_object_set_new(init, "scale", json_real(s->init.scale));
    json_object_set_new(root, "init", init);
    json = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(15));
    if (json == NULL) {
        fprintf(stderr, "keel: out of memory encoding a job spec\n");
        abort();
    }
    keel_buf_add_str(out, json);
    free(json);
    json_decref(root);
}

static int corrupt(struct keel_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int corrupt(struct keel_error *err, const char *field, const char *fmt, ...)
{
    char why[KEEL_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    return keel_err_set(err, KEEL_ECORRUPT, "job spec: %s: %s", field, why);
}

/* Check that `obj` has no key outside the NULL-terminated `known`. */
static int only_keys(json_t *obj, const char *const *known, const char *where,
                     struct keel_error *err)
{
    const char *key;
    json_t *v;

    json_object_foreach(obj, key, v)
    {
        const char *const *k = known;

        (void)v;
        while (*k && strcmp(*k, key) != 0)
            k++;
        if (*k == NULL)
            return corrupt(err, where, "unknown key '%.64s'", key);
    }
    return 0;
}

/* A string field through the INI field parser, so both forms have one rule. */
static int decode_text(json_t *root, const char *key, enum field f, int required,
                       struct keel_jobspec *s, struct keel_error *err)
{
    json_t *v = json_object_get(root, key);
    char why[KEEL_ERROR_MSG_MAX];

    if (v == NULL)
        return required ? corrupt(err, key, "missing") : 0;
    if (!json_is_string(v))
        return corrupt(err, key, "must be a string");
    if (set_field(s, f, json_string_value(v), why, sizeof(why)) != 0)
        return corrupt(err, key, "%s", why);
    return 0;
}

static int decode_uint(json_t *root, const char *key, uint64_t max, uint64_t *out,
                       struct keel_error *err)
{
    json_t *v = json_object_get(root, key);

    if (v == NULL)
        return corrupt(err, key, "missing");
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
        return corrupt(err, key, "must be an integer from 0 to %" PRIu64, max);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int decode_real(json_t *obj, const char *where, const char *key, double *out,
                       struct keel_error *err)
{
    json_t *v = json_object_get(obj, key);
    char field[64];

    snprintf(field, sizeof(field), "%s.%s", where, key);
    if (v == NULL)
        return corrupt(err, field, "missing");
    if (!json_is_number(v))
        return corrupt(err, field, "must be a number");
    *out = normalize_real(json_number_value(v));
    return 0;
}

/* "uid": absent, or KEEL_JOB_UID_HEX lowercase hex digits. */
static int decode_uid(json_t *root, struct keel_jobspec *s, struct keel_error *err)
{
    json_t *v = json_object_get(root, "uid");
    const char *t;

    if (v == NULL)
        return 0;
    if (!json_is_string(v) || json_string_length(v) != KEEL_JOB_UID_HEX)
        return corrupt(err, "uid", "must be %d hex digits", KEEL_JOB_UID_HEX);
    t = json_string_value(v);
    for (int i = 0; i < KEEL_JOB_UID_HEX; i++)
        if (!((t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'f')))
            return corrupt(err, "uid", "must be %d hex digits", KEEL_JOB_UID_HEX);
    memcpy(s->uid, t, KEEL_JOB_UID_HEX + 1);
    return 0;
}

int keel_jobspec_decode(const void *data, size_t len, struct keel_jobspec *s,
                        struct keel_error *err)
{
    static const char *const root_keys[] = {"format",      "name",         "model",
                                            "dataset",     "test_dataset", "batch_size",
                                            "epochs",      "consistency",  "checkpoint_interval",
                                            "replication", "shards",       "lost_ranges",
                                            "durability",  "compression",  "uid",
                                            "optimizer",   "init",         NULL};
    static const char *const init_keys[] = {"method", "seed", "scale", NULL};
    static const char *const opt_keys[] = {
        "type", "lr", "momentum", "beta1", "beta2", "epsilon", "lr_decay", "lr_decay_every", NULL};
    static const enum field opt_fields[] = {F_LR, F_MOMENTUM, F_BETA1, F_BETA2, F_EPSILON};
    json_error_t jerr;
    json_t *root, *opt, *init, *v;
    uint64_t u = 0;
    int rc;

    keel_jobspec_init(s);
    if (len > KEEL_JOBSPEC_MAX_JSON)
        return keel_err_set(err, KEEL_ECORRUPT, "job spec: %zu bytes, more than the %u allowed",
                            len, KEEL_JOBSPEC_MAX_JSON);
    root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return keel_err_set(err, KEEL_ECORRUPT, "job spec: not JSON: %s at offset %d", jerr.text,
                            jerr.position);
    if (!json_is_object(root)) {
        rc = keel_err_set(err, KEEL_ECORRUPT, "job spec: not a JSON object");
        goto out;
    }
    if ((rc = only_keys(root, root_keys, "job spec", err)) != 0)
        goto out;
    if ((rc = decode_uint(root, "format", UINT64_MAX, &u, err)) != 0)
        goto out;
    if (u != KEEL_JOBSPEC_FORMAT) {
        rc = corrupt(err, "format", "%" PRIu64 " is not the supported %d", u, KEEL_JOBSPEC_FORMAT);
        goto out;
    }
    if ((rc = decode_text(root, "name", F_NAME, 1, s, err)) != 0 ||
        (rc = decode_text(root, "model", F_MODEL, 1, s, err)) != 0 ||
        (rc = decode_text(root, "dataset", F_DATASET, 1, s, err)) != 0 ||
        (rc = decode_text(root, "test_dataset", F_TEST_DATASET, 0, s, err)) != 0 ||
        (rc = decode_text(root, "consistency", F_CONSISTENCY, 1, s, err)) != 0 ||
        (rc = decode_text(root, "lost_ranges", F_LOST_RANGES, 0, s, err)) != 0 ||
        (rc = decode_text(root, "durability", F_DURABILITY, 0, s, err)) != 0 ||
        (rc = decode_text(root, "compression", F_COMPRESSION, 0, s, err)) != 0)
        goto out;
    if ((rc = decode_uid(root, s, err)) != 0 ||
        (rc = decode_uint(root, "batch_size", MAX_BATCH_SIZE, &u, err)) != 0)
        goto out;
    s->batch_size = (uint32_t)u;
    if ((rc = decode_uint(root, "epochs", MAX_EPOCHS, &u, err)) != 0)
        goto out;
    s->epochs = (uint32_t)u;
    if ((rc = decode_uint(root, "checkpoint_interval", MAX_CHECKPOINT, &u, err)) != 0)
        goto out;
    s->checkpoint_interval = u;
    if ((rc = decode_uint(root, "replication", MAX_REPLICATION, &u, err)) != 0)
        goto out;
    s->replication = (unsigned)u;
    if ((rc = decode_uint(root, "shards", MAX_SHARDS, &u, err)) != 0)
        goto out;
    s->shards = (uint32_t)u;

    opt = json_object_get(root, "optimizer");
    if (!json_is_object(opt)) {
        rc = corrupt(err, "optimizer", "must be an object");
        goto out;
    }
    if ((rc = only_keys(opt, opt_keys, "optimizer", err)) != 0 ||
        (rc = decode_text(opt, "type", F_OPT_TYPE, 1, s, err)) != 0)
        goto out;
    for (size_t i = 0; i < sizeof(opt_fields) / sizeof(opt_fields[0]); i++) {
        enum field f = opt_fields[i];

        if (!uses(s->optimizer.type, f)) {
            if (json_object_get(opt, fields[f].key) != NULL) {
                rc = corrupt(err, "optimizer", "'%s' is not used by '%s'", fields[f].key,
                             keel_optim_name(s->optimizer.type));
                goto out;
            }
            continue;
        }
        if ((rc = decode_real(opt, "optimizer", fields[f].key, opt_param(s, f), err)) != 0)
            goto out;
    }
    if (json_object_get(opt, "lr_decay_every") != NULL ||
        json_object_get(opt, "lr_decay") != NULL) {
        if ((rc = decode_uint(opt, "lr_decay_every", MAX_DECAY_EVERY, &u, err)) != 0 ||
            (rc = decode_real(opt, "optimizer", "lr_decay", &s->optimizer.lr_decay, err)) != 0)
            goto out;
        s->optimizer.lr_decay_every = u;
        if (u == 0) {
            rc = corrupt(err, "optimizer", "lr_decay_every is 0: leave both decay keys out");
            goto out;
        }
    }

    init = json_object_get(root, "init");
    if (!json_is_object(init)) {
        rc = corrupt(err, "init", "must be an object");
        goto out;
    }
    if ((rc = only_keys(init, init_keys, "init", err)) != 0 ||
        (rc = decode_text(init, "method", F_INIT_METHOD, 1, s, err)) != 0)
        goto out;
    if ((rc = decode_uint(init, "seed", MAX_SEED, &u, err)) != 0)
        goto out;
    s->init.seed = u;
    v = json_object_get(init, "scale");
    s->init.scale = 0;
    if (s->init.method == KEEL_INITIALIZER_UNIFORM) {
        if ((rc = decode_real(init, "init", "scale", &s->init.scale, err)) != 0)
            goto out;
    } else if (v != NULL) {
        rc = corrupt(err, "init", "'scale' is used only by method 'uniform'");
        goto out;
    }
    rc = keel_jobspec_validate(s, err);
    if (rc != 0) {
        char msg[KEEL_ERROR_MSG_MAX];

        snprintf(msg, sizeof(msg), "%s", err ? err->msg : "");
        rc = keel_err_set(err, KEEL_ECORRUPT, "job spec: %s", msg);
    }
out:
    json_decref(root);
    return rc;
}

void keel_jobspec_digest(const struct keel_jobspec *spec,
                         unsigned char digest[KEEL_JOBSPEC_DIGEST_SIZE])
{
    struct keel_buf b = KEEL_BUF_INIT;

    keel_jobspec_encode(spec, &b);
    keel_sha256(digest, b.buf, b.len);
    keel_buf_release(&b);
}

int keel_jobspec_new_uid(struct keel_jobspec *spec, struct keel_error *err)
{
    unsigned char b[KEEL_JOB_UID_HEX / 2];

    if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
        return keel_err_set(err, -errno, "cannot make a job id: getrandom: %s", strerror(errno));
    keel_hex(spec->uid, b, sizeof(b));
    return 0;
}

void keel_jobspec_digest_hex(const struct keel_jobspec *spec,
                             char hex[2 * KEEL_JOBSPEC_DIGEST_SIZE + 1])
{
    unsigned char d[KEEL_JOBSPEC_DIGEST_SIZE];

    keel_jobspec_digest(spec, d);
    keel_hex(hex, d, sizeof(d));
}

/* ------------------------------------------------------------------------ */
/* Tables and initial values                                                 */
/* ------------------------------------------------------------------------ */

size_t keel_jobspec_tables(const struct keel_jobspec *spec, struct keel_table_desc *out, size_t max)
{
    const struct keel_model *m = &spec->model;
    size_t n = m->nlayers;

    for (size_t l = 0; l < n && l < max; l++) {
        out[l].id = (uint16_t)(l + 1);
        out[l].in = m->sizes[l];
        out[l].out = m->sizes[l + 1];
        out[l].row_width = m->sizes[l] + 1;
        out[l].rows = m->sizes[l + 1];
    }
    return n;
}

void keel_jobspec_init_row(const struct keel_jobspec *spec, const struct keel_table_desc *t,
                           uint64_t row, float *out)
{
    /* One generator for every initial value in Keel: the model's (model.h). */
    struct keel_initializer ini = {0};

    ini.seed = spec->init.seed;
    ini.fan_in = t->in;
    ini.fan_out = t->out;
    ini.bias_last = 1;
    ini.scale = (float)spec->init.scale;
    ini.kind = spec->init.method;
    /* A validated spec cannot fail here; if it did, start from zeros rather than garbage. */
    if (keel_initializer_row(&ini, t->id, row, out, t->row_width, NULL) != 0)
        memset(out, 0, (size_t)t->row_width * sizeof(float));
}

void keel_jobspec_init_params(const struct keel_jobspec *spec, struct keel_model_params *p)
{
    struct keel_table_desc t[KEEL_MODEL_MAX_LAYERS];
    size_t n = keel_jobspec_tables(spec, t, KEEL_MODEL_MAX_LAYERS);

    for (size_t l = 0; l < n && l < p->ntables; l++)
        for (uint64_t row = 0; row < t[l].rows; row++)
            keel_jobspec_init_row(spec, &t[l], row, p->table[l] + row * t[l].row_width);
}

double keel_jobspec_lr_at(const struct keel_jobspec *spec, uint64_t clock)
{
    const double lr = spec->optimizer.lr;

    if (spec->optimizer.lr_decay_every == 0 || spec->optimizer.lr_decay >= 1)
        return lr;
    return lr * pow(spec->optimizer.lr_decay, (double)(clock / spec->optimizer.lr_decay_every));
}
