/*
 * optim.h - the optimizers a server applies to a parameter row when a
 * worker's gradient for it arrives.
 *
 * Every update is per row: the row's values, its gradient (the mean over the
 * worker's batch, as keel_model_grad() computes it) and the row's own
 * optimizer state, kept next to the row and persisted with it.  With w the
 * row, g the gradient, lr the learning rate, all operations elementwise:
 *
 *   sgd       w -= lr * g
 *   momentum  v = momentum * v + g;  w -= lr * v
 *   adagrad   a += g * g;  w -= lr * g / (sqrt(a) + epsilon)
 *   adam      t += 1;  m = beta1 * m + (1 - beta1) * g;
 *             v = beta2 * v + (1 - beta2) * g * g;
 *             w -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + epsilon)
 *
 * State layout, keel_optim_state_width() floats per row, all zero for a new
 * row (so storage creates a row's state by zero-filling it):
 *   sgd       none
 *   momentum  v[0..width)
 *   adagrad   a[0..width)
 *   adam      t, then m[0..width), then v[0..width): 2 * width + 1 floats.
 *             t is the number of updates this row has had, as a float: it
 *             counts exactly up to 2^24 and then stays there, where both bias
 *             corrections are already 1 in float precision.
 *
 * Invariants: a gradient with a NaN or infinite element is refused before
 * anything is written, so a bad push never poisons a row or its state; a
 * multi-row update is all or nothing in that respect.
 *
 * Thread safety: struct keel_optim is read-only data; the functions touch
 * only the row and state they are given (the caller serializes updates of
 * one row).
 */
#ifndef KEEL_OPTIM_H
#define KEEL_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"

/* The optimizers, Keel's one list of them: a job spec's [optimizer] type is one too. */
enum keel_optim_kind {
    KEEL_OPTIM_SGD = 1,
    KEEL_OPTIM_MOMENTUM = 2,
    KEEL_OPTIM_ADAGRAD = 3,
    KEEL_OPTIM_ADAM = 4,
};

/* An optimizer and its hyper-parameters; fields an optimizer does not use are ignored. */
struct keel_optim {
    enum keel_optim_kind kind;
    float lr;       /* learning rate, > 0 */
    float momentum; /* momentum: in [0, 1) */
    float beta1;    /* adam: in [0, 1) */
    float beta2;    /* adam: in [0, 1) */
    float epsilon;  /* adagrad, adam: > 0 */
};

/*
 * The default hyper-parameters, Keel's only copy of them: lr 0.01 (sgd,
 * momentum, adagrad) or 0.001 (adam).  They are doubles so that a job spec
 * (keel/jobspec.h), which keeps its reals as doubles, holds exactly these
 * decimals; keel_optim_defaults() rounds them to struct keel_optim's floats.
 */
#define KEEL_OPTIM_DEFAULT_LR       0.01
#define KEEL_OPTIM_DEFAULT_ADAM_LR  0.001
#define KEEL_OPTIM_DEFAULT_MOMENTUM 0.9
#define KEEL_OPTIM_DEFAULT_BETA1    0.9
#define KEEL_OPTIM_DEFAULT_BETA2    0.999
#define KEEL_OPTIM_DEFAULT_EPSILON  1e-8

/* The default learning rate of optimizer `kind`. */
static inline double keel_optim_default_lr(enum keel_optim_kind kind)
{
    return kind == KEEL_OPTIM_ADAM ? KEEL_OPTIM_DEFAULT_ADAM_LR : KEEL_OPTIM_DEFAULT_LR;
}

/*
 * Set `o` to optimizer `kind` with the default hyper-parameters.
 * Errors: KEEL_EINVAL for an unknown kind (`o` is then set to sgd).
 */
int keel_optim_defaults(struct keel_optim *o, enum keel_optim_kind kind, struct keel_error *err);

/*
 * Parse "NAME" or "NAME:KEY=VALUE,KEY=VALUE..." where NAME is sgd, momentum,
 * adagrad or adam and KEY one of lr, momentum, beta1, beta2, epsilon (only
 * those the optimizer uses).  Keys not given keep their defaults.
 *   "adam", "sgd:lr=0.1", "adam:lr=0.0005,beta2=0.99"
 * Errors: KEEL_EINVAL naming the text and the offending key or value; the
 * result is also checked with keel_optim_check().
 */
int keel_optim_parse(struct keel_optim *o, const char *text, struct keel_error *err);

/* Append the spec of `o` with every key it uses; parses back to `o`. */
void keel_optim_format(const struct keel_optim *o, struct keel_buf *out);

/* The name keel_optim_parse() takes for `kind` ("adam"), or "unknown". */
const char *keel_optim_name(enum keel_optim_kind kind);

/*
 * Check the hyper-parameters: lr > 0 and finite; momentum, beta1, beta2 in
 * [0, 1); epsilon > 0 and finite (for the optimizers that use them).
 * Errors: KEEL_EINVAL naming the parameter and its value.
 */
int keel_optim_check(const struct keel_optim *o, struct keel_error *err);

/* Floats of state per row of `width` floats (see the layout above). */
size_t keel_optim_state_width(const struct keel_optim *o, uint32_t width);

/*
 * Apply gradient grad[0..width) to row[0..width) and its state
 * state[0..keel_optim_state_width(o, width)) (NULL when that is 0).
 * `o` must have passed keel_optim_check().
 * Errors: KEEL_EINVAL when an element of the gradient is NaN or infinite
 * (naming its index); the row and state are then untouched.
 */
int keel_optim_apply(const struct keel_optim *o, float *row, float *state, const float *grad,
                     uint32_t width, struct keel_error *err);

/*
 * Apply `nrows` packed gradients (gradient i at grads + i * width) to rows of
 * a packed table and their packed states: gradient i to row at[i] (at rows +
 * at[i] * width, its state at states + at[i] * state width), or to row i when
 * `at` is NULL.  Every gradient is checked first: when one is not finite,
 * nothing is updated and KEEL_EINVAL names the gradient's index and element.
 * The one update path of Keel: servers, their log replay and the benchmark's
 * in-process training all apply through it.
 */
int keel_optim_apply_rows(const struct keel_optim *o, float *rows, float *states,
                          const uint32_t *at, const float *grads, uint32_t nrows, uint32_t width,
                          struct keel_error *err);

/* The same, for gradients the caller has already checked to be finite (no check). */
void keel_optim_apply_rows_finite(const struct keel_optim *o, float *rows, float *states,
                                  const uint32_t *at, const float *grads, uint32_t nrows,
                                  uint32_t width);

#endif
