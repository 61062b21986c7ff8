/*
 * jobspec.h - a training job's specification: the INI file an operator
 * submits, its canonical JSON form kept in etcd, its digest, and the model's
 * parameter tables derived from it.
 *
 * docs/coordinator.md describes the file format field by field, with an
 * example; examples/fashion-mnist-mlp.ini is a complete one.
 *
 * Invariants of a struct keel_jobspec that keel_jobspec_load(),
 * keel_jobspec_parse() or keel_jobspec_decode() returned successfully:
 *  - every field is within its documented bounds, the job's name is an id
 *    (keel/id.h), dataset names follow keel_dataset_name_check(), the model has 2 sizes (softmax)
 *    or 3 to KEEL_MODEL_MAX_LAYERS + 1 (mlp: at least one hidden layer, so that
 *    a one-layer model is written one way only, as softmax), each of 1 to
 *    KEEL_MODEL_MAX_UNITS, and at most KEEL_MODEL_MAX_PARAMS parameters;
 *  - optimizer parameters the chosen optimizer does not use are 0, and
 *    init.scale is 0 unless the method is uniform, so two specs that mean
 *    the same thing are equal field by field and encode to the same bytes;
 *  - real numbers hold exactly the value of their 15-significant-digit
 *    decimal form, so encode -> decode -> encode gives the same bytes.
 * The model, the optimizer and the init method are the types of keel/model.h
 * and keel/optim.h, so a spec's model is the struct keel_model the worker
 * trains and its optimizer type the kind the servers apply.
 * The struct owns no memory (fixed arrays); copy it freely.  Every function
 * is thread-safe on distinct specs.
 */
#ifndef KEEL_JOBSPEC_H
#define KEEL_JOBSPEC_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/half.h" /* enum keel_rows_enc: compression */
#include "keel/id.h"
#include "keel/model.h"
#include "keel/optim.h"

#define KEEL_JOBSPEC_FORMAT      1           /* "format" in the JSON form */
#define KEEL_JOBSPEC_MAX_JSON    (64u << 10) /* largest JSON form accepted */
#define KEEL_JOBSPEC_DIGEST_SIZE 32          /* SHA-256 */

enum keel_consistency {
    KEEL_CONSISTENCY_BSP = 1,
    KEEL_CONSISTENCY_SSP = 2, /* with staleness 1..KEEL_JOBSPEC_MAX_STALENESS */
    KEEL_CONSISTENCY_ASP = 3,
};

#define KEEL_JOBSPEC_MAX_STALENESS 1000

/* Hex digits of a job's unique id (128 random bits, lowercase). */
#define KEEL_JOB_UID_HEX 32

struct keel_jobspec {
    char name[KEEL_ID_MAX + 1]; /* [job] name */
    /*
     * The job's unique id, made by `keelctl job submit` (not written in an
     * INI file): two submissions of one name are two jobs, whose state a
     * store never mixes ("" for a spec not submitted).  Part of the digest.
     */
    char uid[KEEL_JOB_UID_HEX + 1];
    char dataset[KEEL_ID_MAX + 1];      /* [job] dataset: training records, as imported */
    char test_dataset[KEEL_ID_MAX + 1]; /* [job] test_dataset: "" when none */
    struct keel_model model;            /* [job] model: "softmax:784-10" (keel/model.h) */
    /*
     * [optimizer]: the kind of keel/optim.h and its hyper-parameters, as
     * doubles holding the decimals written (struct keel_optim's floats would
     * not give back the same canonical form); a server's keel_ps_optim_of()
     * rounds them.  Defaults: KEEL_OPTIM_DEFAULT_*.
     */
    struct {
        enum keel_optim_kind type; /* [optimizer] type: sgd, momentum, adagrad, adam */
        double lr;                 /* all */
        double momentum;           /* momentum */
        double beta1, beta2;       /* adam */
        double epsilon;            /* adagrad, adam */
        double lr_decay;           /* all: lr factor per lr_decay_every clocks, (0, 1] */
        uint64_t lr_decay_every;   /* all: clocks per decay step; 0 = a constant rate */
    } optimizer;
    /*
     * [init]: the initializer of keel/model.h every weight row starts from;
     * a spec offers the uniform ones: zeros (KEEL_INITIALIZER_ZEROS), uniform
     * (_UNIFORM, with scale), glorot (_GLOROT_UNIFORM) and he (_HE_UNIFORM).
     */
    struct {
        enum keel_initializer_kind method; /* [init] method */
        uint64_t seed;                     /* [init] seed, < 2^63 */
        double scale;                      /* [init] scale: uniform only */
    } init;
    uint32_t batch_size;               /* records per batch */
    uint32_t epochs;                   /* passes over the data */
    enum keel_consistency consistency; /* bsp | ssp:N | asp */
    uint32_t staleness;                /* N of ssp:N, else 0 */
    uint64_t checkpoint_interval;      /* clocks between checkpoints, 0 = none */
    unsigned replication;              /* replicas per range, 1..5 */
    uint32_t shards;                   /* the dataset's shard count, as imported */
    /*
     * lost_ranges = fail | rewind: when no replica, store or checkpoint
     * holds a range's trained state, fail the job naming the range (0, the
     * default), or start the range from its initializer and rewind every
     * shard to where that range is, the beginning (1).
     */
    int lost_ranges_rewind;
    /*
     * durability = replicas | disk: a push is acknowledged once every
     * in-sync replica of its ranges has applied it, the update log written
     * behind (0, the default); or once every one of them has also committed
     * it to its update log (1).
     */
    int durability_disk;
    /*
     * compression = none | bf16 | fp16: how pulls and pushes carry rows on
     * the wire (enum keel_rows_enc, half.h: 32-bit floats, the default, or
     * 16-bit ones).  Servers keep, apply, log and replicate 32-bit floats
     * either way.
     */
    unsigned compression;
};

/*
 * The learning rate of a push made at `clock` (a worker's clock: pass x
 * batches per shard + batch): lr x lr_decay ^ floor(clock / lr_decay_every),
 * or lr when lr_decay_every is 0.  Servers apply each push with it, and a
 * replay of the update log applies the same rate, since records keep the clock.
 */
double keel_jobspec_lr_at(const struct keel_jobspec *spec, uint64_t clock);

/* One parameter table of the model (see keel_jobspec_tables()). */
struct keel_table_desc {
    uint16_t id;        /* table id in keys: layer index + 1 */
    uint32_t row_width; /* floats per row: inputs + 1 (the bias is last) */
    uint64_t rows;      /* one row per output unit */
    uint32_t in, out;   /* the layer's input and output sizes */
};

/* Fill `spec` with the defaults; name, model and dataset are left unset. */
void keel_jobspec_init(struct keel_jobspec *spec);

/*
 * Read and validate the job spec file at `path` into `spec`.
 * Errors: -errno when it cannot be opened; KEEL_EINVAL with the file, the
 * line when there is one, and the field: "job.ini:7: [optimizer] lr: must be
 * greater than 0 and at most 10, got '0'", "job.ini: [job] model: must be
 * set".  Unknown sections and keys, keys given twice and lines longer than
 * 195 bytes are refused the same way.  On error `spec` is unspecified.
 */
int keel_jobspec_load(struct keel_jobspec *spec, const char *path, struct keel_error *err);

/* As keel_jobspec_load() from the NUL-terminated `text`; `origin` names it in errors. */
int keel_jobspec_parse(struct keel_jobspec *spec, const char *text, const char *origin,
                       struct keel_error *err);

/*
 * Check every field and the relations between them.  The parsers and the
 * decoder call it; call it after changing a spec by hand.
 * Errors: KEEL_EINVAL naming the first field at fault ("[job] name: ...").
 */
int keel_jobspec_validate(const struct keel_jobspec *spec, struct keel_error *err);

/*
 * Append the canonical JSON form of a valid spec to `out`: keys sorted, no
 * whitespace, only the parameters the optimizer and init method use, reals
 * with 15 significant digits, "format": KEEL_JOBSPEC_FORMAT.  The same spec
 * always gives the same bytes.
 */
void keel_jobspec_encode(const struct keel_jobspec *spec, struct keel_buf *out);

/*
 * Decode and validate a spec from `len` bytes of JSON that may come from
 * anywhere.  Every key must be known and of the right type, required ones
 * present; input at most KEEL_JOBSPEC_MAX_JSON bytes.
 * Errors: KEEL_ECORRUPT naming the field ("job spec: optimizer.beta1: ...").
 */
int keel_jobspec_decode(const void *data, size_t len, struct keel_jobspec *spec,
                        struct keel_error *err);

/* SHA-256 of the canonical JSON form; checkpoints record it. */
void keel_jobspec_digest(const struct keel_jobspec *spec,
                         unsigned char digest[KEEL_JOBSPEC_DIGEST_SIZE]);

/* The digest as 64 lowercase hex digits and a NUL. */
/*
 * Give `spec` a new unique id (128 bits from getrandom(2)), as a submission
 * does.  -errno when the kernel gives no randomness.
 */
int keel_jobspec_new_uid(struct keel_jobspec *spec, struct keel_error *err);

void keel_jobspec_digest_hex(const struct keel_jobspec *spec,
                             char hex[2 * KEEL_JOBSPEC_DIGEST_SIZE + 1]);

/* "mlp:784-256-128-10" into `out` (cut at `n` bytes, always NUL-terminated). */
void keel_jobspec_model_string(const struct keel_jobspec *spec, char *out, size_t n);

/*
 * The model's parameter tables, one per layer l = 0 .. model.nlayers-1: table
 * id l + 1, sizes[l+1] rows (one per output unit), each of sizes[l] + 1
 * floats: the weights from every input, then the bias.  Stores up to `max`
 * into `out` and returns how many tables the model has (model.nlayers).
 */
size_t keel_jobspec_tables(const struct keel_jobspec *spec, struct keel_table_desc *out,
                           size_t max);

/*
 * The initial value of row `row` of table `t`, as every server computes it:
 * `row_width` floats into `out`; the bias (last float) is 0, the weights
 * follow init.method through keel_initializer_row() of model.h, so any
 * server, any time, gets the same row.
 */
void keel_jobspec_init_row(const struct keel_jobspec *spec, const struct keel_table_desc *t,
                           uint64_t row, float *out);

/*
 * Fill every row of every table of `p` with its initial value from
 * keel_jobspec_init_row(): the model exactly as the servers hold it before
 * the first push.  `p` must have the spec's tables (keel_model_params_init()
 * of the spec's model).  For whoever needs the whole model in one process,
 * e.g. the in-process training of the benchmark.
 */
void keel_jobspec_init_params(const struct keel_jobspec *spec, struct keel_model_params *p);

/*
 * The name [init] method takes for `kind` ("glorot" for
 * KEEL_INITIALIZER_GLOROT_UNIFORM), or "unknown" for a kind a spec does not
 * offer.  The optimizer's name is keel_optim_name() of keel/optim.h.
 */
const char *keel_init_method_name(enum keel_initializer_kind kind);

/* "bsp", "asp" or "ssp:N" into `out` (at least 16 bytes). */
void keel_consistency_string(const struct keel_jobspec *spec, char *out, size_t n);

#endif
