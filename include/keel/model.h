/*
 * model.h - the dense models Keel trains: their parameter layout, forward
 * and backward passes, and the deterministic initializers of their rows.
 *
 * A model is a stack of fully connected layers given by its sizes
 * s_0-s_1-...-s_L: s_0 inputs, s_L classes, L weight layers.  Every hidden
 * layer is followed by a ReLU; the last layer's outputs are the logits of a
 * softmax, trained with the mean cross-entropy over a batch.
 *   "softmax:784-10"       softmax regression (exactly one layer)
 *   "mlp:784-256-128-10"   a multi-layer perceptron (one or more layers)
 * This is Keel's one model vocabulary: a job spec (keel/jobspec.h) holds its
 * model as a struct keel_model and reads the notation with keel_model_scan().
 *
 * Parameter layout (part of Keel's persistent format; servers, workers,
 * snapshots and exports all agree on it, so it never changes):
 *  - layer l (0-based) is table id l + 1;
 *  - it has s_{l+1} rows; row r holds the s_l weights of output unit r over
 *    the layer's inputs, followed by that unit's bias, so every row of the
 *    table is s_l + 1 floats wide;
 *  - the key of row r of table t is `(uint64_t)t << 48 | r`;
 *  - a table's rows are packed in key order: row r starts at float
 *    r * (s_l + 1).  Gradients use the same layout, so the worker pushes a
 *    table's gradient as its keys in ascending order and the packed rows.
 *
 * Initializers (struct keel_initializer) are pure functions of (seed, table id, row,
 * column): any server creates any row identically, with no coordination and
 * whatever order rows are first touched in.
 *
 * Thread safety: struct keel_model and the parameters are only read by the
 * passes and can be shared by threads; a struct keel_model_work belongs to one
 * thread at a time.  The passes call cblas_sgemm; with several worker threads,
 * set OpenBLAS to one thread (openblas_set_num_threads(1)) so they do not
 * oversubscribe the cores.
 */
#ifndef KEEL_MODEL_H
#define KEEL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"

#define KEEL_MODEL_MAX_LAYERS 16                  /* weight layers (tables 1..16) */
#define KEEL_MODEL_MAX_UNITS  65536               /* largest layer size (rows fit a frame) */
#define KEEL_MODEL_MAX_PARAMS (UINT64_C(1) << 31) /* floats over all tables */
#define KEEL_MODEL_MAX_BATCH  (UINT32_C(1) << 20) /* samples in one pass */
#define KEEL_MODEL_SPEC_MAX   256                 /* bytes of a model spec, with NUL */

enum keel_model_type {
    KEEL_MODEL_TYPE_SOFTMAX = 1, /* softmax regression: one layer */
    KEEL_MODEL_TYPE_MLP = 2,     /* ReLU hidden layers, softmax output */
};

/* A model's shape.  Plain data: copy it freely; it owns no memory. */
struct keel_model {
    enum keel_model_type type;
    unsigned nlayers;                          /* L, 1..KEEL_MODEL_MAX_LAYERS */
    uint32_t sizes[KEEL_MODEL_MAX_LAYERS + 1]; /* s_0..s_L; unused entries are 0 */
};

/*
 * Describe the model of `nsizes` layer sizes s_0..s_L (so nsizes = L + 1, at
 * least 2) of the given type.  The values of enum keel_model_type are fixed
 * (softmax 1, mlp 2).
 * Errors: KEEL_EINVAL when the type is unknown, a softmax model has more than
 * one layer, nsizes is out of 2..KEEL_MODEL_MAX_LAYERS+1, a size is 0 or above
 * KEEL_MODEL_MAX_UNITS, or the parameters exceed KEEL_MODEL_MAX_PARAMS floats.
 */
int keel_model_init(struct keel_model *m, enum keel_model_type type, const uint32_t *sizes,
                    unsigned nsizes, struct keel_error *err);

/*
 * Parse a model spec, "softmax:784-10" or "mlp:784-256-128-10": a type, a
 * colon and the layer sizes as decimal numbers joined by '-'.  The notation
 * is read by keel_model_scan(), then checked by keel_model_init().
 * Errors: KEEL_EINVAL naming the spec and what is wrong with it
 * ("model 'mlp:784--10': layer sizes must be decimal numbers joined by '-'").
 */
int keel_model_parse(struct keel_model *m, const char *spec, struct keel_error *err);

/*
 * The parser of the notation, for callers that word their own errors (the
 * job spec): a type, a colon, then 1 to KEEL_MODEL_MAX_LAYERS + 1 sizes, each
 * 1 to 8 decimal digits with a value of 1 to KEEL_MODEL_MAX_UNITS, joined by
 * '-'.  Stores the type and sizes in `m` (nlayers = sizes - 1, unused sizes
 * 0), without keel_model_init()'s checks of how many sizes the type takes
 * and of the parameter count: the caller makes them.
 * Errors: -1, with the reason (without the spec) in why[0..whylen):
 * "layer size 2 is 0, must be 1 to 65536".
 */
int keel_model_scan(struct keel_model *m, const char *spec, char *why, size_t whylen);

/*
 * Append the spec of `m` ("mlp:784-256-128-10") to `out`; parses back to `m`.
 * An unknown type is written as "unknown".
 */
void keel_model_format(const struct keel_model *m, struct keel_buf *out);

/* The number of tables (= layers) and the id of layer `layer`'s table. */
static inline unsigned keel_model_ntables(const struct keel_model *m)
{
    return m->nlayers;
}

static inline uint32_t keel_model_table_id(unsigned layer)
{
    return (uint32_t)layer + 1;
}

/* Rows of layer `layer`'s table: its output units. */
static inline uint32_t keel_model_rows(const struct keel_model *m, unsigned layer)
{
    return m->sizes[layer + 1];
}

/* Floats per row of layer `layer`'s table: its inputs and a bias. */
static inline uint32_t keel_model_row_width(const struct keel_model *m, unsigned layer)
{
    return m->sizes[layer] + 1;
}

/* Floats of layer `layer`'s table: rows * row width. */
size_t keel_model_table_floats(const struct keel_model *m, unsigned layer);

/* Floats over all tables. */
size_t keel_model_nparams(const struct keel_model *m);

/* The key of row `row` of table `table_id`: table_id << 48 | row. */
static inline uint64_t keel_model_key(uint32_t table_id, uint64_t row)
{
    return (uint64_t)table_id << 48 | row;
}

/*
 * Store the keys of every row of layer `layer`'s table, ascending, in
 * keys[0..keel_model_rows(m, layer)).
 */
void keel_model_keys(const struct keel_model *m, unsigned layer, uint64_t *keys);

/*
 * The parameters (or the gradients) of every table of one model, each table
 * a packed array in the layout above.  The arrays are owned by the struct.
 */
struct keel_model_params {
    unsigned ntables;
    float *table[KEEL_MODEL_MAX_LAYERS]; /* table[l]: layer l's rows, packed */
};

/* Allocate zeroed tables for `m` into `p` (aborts on out-of-memory). */
void keel_model_params_init(struct keel_model_params *p, const struct keel_model *m);

/* Free the tables; `p` is left empty.  Safe on an already released `p`. */
void keel_model_params_release(struct keel_model_params *p);

/*
 * Initialize every row of every table with keel_model_default_initializer() and
 * `seed`: the same values any server computes for the same rows.
 */
void keel_model_params_fill(struct keel_model_params *p, const struct keel_model *m, uint64_t seed);

/*
 * Scratch space for the passes: activations and their gradients for up to
 * `max_batch` samples.  A heap object, one per thread.
 */
typedef struct keel_model_work keel_model_work;

/*
 * A work area for `m` and batches of up to `max_batch` samples (0 is taken
 * as 1, more than KEEL_MODEL_MAX_BATCH as that).  It holds about
 * max_batch * (s_1 + ... + s_L + 2 * max(s_l)) floats; aborts on out-of-memory.
 */
keel_model_work *keel_model_work_new(const struct keel_model *m, uint32_t max_batch);

void keel_model_work_free(keel_model_work *w);

/* What one pass over a batch measured. */
struct keel_model_stats {
    double loss;       /* mean cross-entropy over the batch, in nats */
    uint32_t ncorrect; /* samples whose argmax (lowest index on ties) is the label */
    uint32_t n;        /* samples in the batch */
};

/*
 * Forward pass over the batch x (n rows of s_0 floats, row-major) with
 * labels[0..n) (each below s_L): fills *stats, and keeps the class
 * probabilities for keel_model_probs().
 * Errors: KEEL_EINVAL when n is 0 or above the work's max_batch, or a label is
 * out of range (naming the sample).  On error *stats is zeroed.
 */
int keel_model_eval(const struct keel_model *m, keel_model_work *w,
                    const struct keel_model_params *params, const float *x, const uint32_t *labels,
                    uint32_t n, struct keel_model_stats *stats, struct keel_error *err);

/*
 * Forward and backward pass: like keel_model_eval(), and also stores in
 * `grads` (tables of the same shape, e.g. from keel_model_params_init()) the
 * gradient of the batch's mean loss with respect to every parameter, in the
 * packed layout: ready to push as it is.  `grads` must not alias `params`.
 * Errors: as keel_model_eval(); on error `grads` is left unspecified.
 */
int keel_model_grad(const struct keel_model *m, keel_model_work *w,
                    const struct keel_model_params *params, const float *x, const uint32_t *labels,
                    uint32_t n, struct keel_model_params *grads, struct keel_model_stats *stats,
                    struct keel_error *err);

/*
 * The class probabilities of the last successful pass on `w`: n rows of s_L
 * floats.  Valid until the next pass on `w` or keel_model_work_free().
 */
const float *keel_model_probs(const keel_model_work *w);

/* ---- Initializers ---------------------------------------------------- */

enum keel_initializer_kind {
    KEEL_INITIALIZER_ZEROS = 1,          /* every value 0 */
    KEEL_INITIALIZER_UNIFORM = 2,        /* uniform on [-scale, scale] (as floats) */
    KEEL_INITIALIZER_GLOROT_UNIFORM = 3, /* uniform, a = sqrt(6 / (fan_in + fan_out)) */
    KEEL_INITIALIZER_HE_UNIFORM = 4,     /* uniform, a = sqrt(6 / fan_in) */
    KEEL_INITIALIZER_GLOROT_NORMAL = 5,  /* normal, sd sqrt(2 / (fan_in + fan_out)) */
    KEEL_INITIALIZER_HE_NORMAL = 6,      /* normal, sd sqrt(2 / fan_in) */
};

/*
 * How the rows of one table are initialized.  With `bias_last`, the last
 * value of every row is a bias and is set to 0; the others are drawn from
 * the distribution.  Glorot and He have the same variance in their uniform
 * and normal forms.
 */
struct keel_initializer {
    enum keel_initializer_kind kind;
    uint64_t seed;
    float scale;      /* UNIFORM: the half-width a; unused by the others */
    uint32_t fan_in;  /* GLOROT_*, HE_*: inputs of a unit */
    uint32_t fan_out; /* GLOROT_*: outputs of a unit */
    int bias_last;
};

/*
 * Parse an initializer name into `ini->kind` (and `ini->scale`): "zeros",
 * "uniform:A" (A a positive number), "glorot_uniform", "he_uniform",
 * "glorot_normal" or "he_normal".  The seed, fans and bias flag are left as
 * they were.
 * Errors: KEEL_EINVAL naming the text.
 */
int keel_initializer_parse(struct keel_initializer *ini, const char *text, struct keel_error *err);

/* The name keel_initializer_parse() takes for `kind` ("he_normal"), or "unknown". */
const char *keel_initializer_name(enum keel_initializer_kind kind);

/*
 * The initializer of layer `layer` of `m` with `seed`: He normal for a layer
 * followed by a ReLU, Glorot normal for the output layer, biases zero.
 */
void keel_model_default_initializer(const struct keel_model *m, unsigned layer, uint64_t seed,
                                    struct keel_initializer *ini);

/*
 * Fill out[0..width) with the initial values of row `row` of table
 * `table_id`.  Value j is a pure function of (ini, table_id, row, j): the
 * same on every machine and in every order of calls.
 * Errors: KEEL_EINVAL when the kind is unknown, UNIFORM's scale is not a
 * positive finite number, or a fan it needs is 0.
 */
int keel_initializer_row(const struct keel_initializer *ini, uint32_t table_id, uint64_t row,
                         float *out, uint32_t width, struct keel_error *err);

#endif
