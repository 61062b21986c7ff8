/*
 * optim.c - server-side optimizers: one row's update from its gradient.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "keel/optim.h"

#define ADAM_T_MAX 16777216.0f /* 2^24: the last integer a float counts to exactly */

int keel_optim_defaults(struct keel_optim *o, enum keel_optim_kind kind, struct keel_error *err)
{
    memset(o, 0, sizeof(*o));
    o->kind = kind;
    o->lr = (float)keel_optim_default_lr(kind);
    o->momentum = (float)KEEL_OPTIM_DEFAULT_MOMENTUM;
    o->beta1 = (float)KEEL_OPTIM_DEFAULT_BETA1;
    o->beta2 = (float)KEEL_OPTIM_DEFAULT_BETA2;
    o->epsilon = (float)KEEL_OPTIM_DEFAULT_EPSILON;
    if (strcmp(keel_optim_name(kind), "unknown") == 0) {
        o->kind = KEEL_OPTIM_SGD;
        o->lr = (float)KEEL_OPTIM_DEFAULT_LR;
        return keel_err_set(err, KEEL_EINVAL, "unknown optimizer kind %d", (int)kind);
    }
    return KEEL_OK;
}

const char *keel_optim_name(enum keel_optim_kind kind)
{
    switch (kind) {
    case KEEL_OPTIM_SGD:
        return "sgd";
    case KEEL_OPTIM_MOMENTUM:
        return "momentum";
    case KEEL_OPTIM_ADAGRAD:
        return "adagrad";
    case KEEL_OPTIM_ADAM:
        return "adam";
    }
    return "unknown";
}

/* Which hyper-parameters each optimizer uses, in the order they are formatted. */
enum { P_LR = 1, P_MOMENTUM = 2, P_BETA1 = 4, P_BETA2 = 8, P_EPSILON = 16 };

static unsigned params_of(enum keel_optim_kind kind)
{
    switch (kind) {
    case KEEL_OPTIM_SGD:
        return P_LR;
    case KEEL_OPTIM_MOMENTUM:
        return P_LR | P_MOMENTUM;
    case KEEL_OPTIM_ADAGRAD:
        return P_LR | P_EPSILON;
    case KEEL_OPTIM_ADAM:
        return P_LR | P_BETA1 | P_BETA2 | P_EPSILON;
    }
    return 0;
}

static const struct {
    const char *name;
    unsigned bit;
} param_table[] = {
    {"lr", P_LR},       {"momentum", P_MOMENTUM}, {"beta1", P_BETA1},
    {"beta2", P_BETA2}, {"epsilon", P_EPSILON},
};

#define NPARAMS (sizeof(param_table) / sizeof(param_table[0]))

/* The field of `o` that param_table[i] names. */
static float *param_ptr(struct keel_optim *o, size_t i)
{
    switch (param_table[i].bit) {
    case P_MOMENTUM:
        return &o->momentum;
    case P_BETA1:
        return &o->beta1;
    case P_BETA2:
        return &o->beta2;
    case P_EPSILON:
        return &o->epsilon;
    default:
        return &o->lr;
    }
}

/* Parse one "key=value" of length `len` at `p` into `o`. */
static int parse_param(struct keel_optim *o, const char *text, const char *p, size_t len,
                       struct keel_error *err)
{
    const char *eq = memchr(p, '=', len);
    char value[64];
    size_t klen, vlen;
    char *end;
    double v;

    if (eq == NULL)
        return keel_err_set(err, KEEL_EINVAL, "optimizer '%.64s': expected KEY=VALUE at '%.*s'",
                            text, (int)len, p);
    klen = (size_t)(eq - p);
    vlen = len - klen - 1;
    for (size_t i = 0; i < NPARAMS; i++) {
        if (strlen(param_table[i].name) != klen || memcmp(param_table[i].name, p, klen) != 0)
            continue;
        if (!(params_of(o->kind) & param_table[i].bit))
            return keel_err_set(err, KEEL_EINVAL, "optimizer '%.64s': %s does not take '%s'", text,
                                keel_optim_name(o->kind), param_table[i].name);
        if (vlen == 0 || vlen >= sizeof(value))
            return keel_err_set(err, KEEL_EINVAL, "optimizer '%.64s': bad value for '%s'", text,
                                param_table[i].name);
        memcpy(value, eq + 1, vlen);
        value[vlen] = '\0';
        errno = 0;
        v = strtod(value, &end);
        if (*end != '\0' || end == value || errno != 0 || !isfinite(v))
            return keel_err_set(err, KEEL_EINVAL, "optimizer '%.64s': bad value '%s' for '%s'",
                                text, value, param_table[i].name);
        *param_ptr(o, i) = (float)v;
        return KEEL_OK;
    }
    return keel_err_set(err, KEEL_EINVAL,
                        "optimizer '%.64s': unknown key '%.*s' (lr, momentum, beta1, beta2, "
                        "epsilon)",
                        text, (int)klen, p);
}

int keel_optim_parse(struct keel_optim *o, const char *text, struct keel_error *err)
{
    static const enum keel_optim_kind kinds[] = {KEEL_OPTIM_SGD, KEEL_OPTIM_MOMENTUM,
                                                 KEEL_OPTIM_ADAGRAD, KEEL_OPTIM_ADAM};
    const char *colon = strchr(text, ':');
    size_t nlen = colon != NULL ? (size_t)(colon - text) : strlen(text);
    int rc = KEEL_EINVAL;

    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        const char *name = keel_optim_name(kinds[i]);

        if (strlen(name) == nlen && memcmp(name, text, nlen) == 0) {
            rc = keel_optim_defaults(o, kinds[i], err);
            break;
        }
    }
    if (rc != KEEL_OK)
        return keel_err_set(err, KEEL_EINVAL,
                            "unknown optimizer '%.64s' (sgd, momentum, adagrad, adam)", text);
    if (colon != NULL) {
        const char *p = colon + 1;

        for (;;) {
            const char *comma = strchr(p, ',');
            size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);

            rc = parse_param(o, text, p, len, err);
            if (rc != 0)
                return rc;
            if (comma == NULL)
                break;
            p = comma + 1;
        }
    }
    rc = keel_optim_check(o, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "optimizer '%.64s'", text);
    return KEEL_OK;
}

void keel_optim_format(const struct keel_optim *o, struct keel_buf *out)
{
    struct keel_optim copy = *o;
    unsigned used = params_of(o->kind);
    char sep = ':';

    keel_buf_addf(out, "%s", keel_optim_name(o->kind));
    for (size_t i = 0; i < NPARAMS; i++) {
        if (!(used & param_table[i].bit))
            continue;
        /* %.9g prints a float so that it reads back to the same float. */
        keel_buf_addf(out, "%c%s=%.9g", sep, param_table[i].name, (double)*param_ptr(&copy, i));
        sep = ',';
    }
}

static int in_unit(float v)
{
    return v >= 0.0f && v < 1.0f;
}

int keel_optim_check(const struct keel_optim *o, struct keel_error *err)
{
    unsigned used = params_of(o->kind);

    if (used == 0)
        return keel_err_set(err, KEEL_EINVAL, "unknown optimizer kind %d", (int)o->kind);
    if (!(o->lr > 0.0f) || !isfinite(o->lr))
        return keel_err_set(err, KEEL_EINVAL, "learning rate %g is not a positive number",
                            (double)o->lr);
    if ((used & P_MOMENTUM) && !in_unit(o->momentum))
        return keel_err_set(err, KEEL_EINVAL, "momentum %g is not in [0, 1)", (double)o->momentum);
    if ((used & P_BETA1) && !in_unit(o->beta1))
        return keel_err_set(err, KEEL_EINVAL, "beta1 %g is not in [0, 1)", (double)o->beta1);
    if ((used & P_BETA2) && !in_unit(o->beta2))
        return keel_err_set(err, KEEL_EINVAL, "beta2 %g is not in [0, 1)", (double)o->beta2);
    if ((used & P_EPSILON) && (!(o->epsilon > 0.0f) || !isfinite(o->epsilon)))
        return keel_err_set(err, KEEL_EINVAL, "epsilon %g is not a positive number",
                            (double)o->epsilon);
    return KEEL_OK;
}

size_t keel_optim_state_width(const struct keel_optim *o, uint32_t width)
{
    switch (o->kind) {
    case KEEL_OPTIM_SGD:
        return 0;
    case KEEL_OPTIM_MOMENTUM:
    case KEEL_OPTIM_ADAGRAD:
        return width;
    case KEEL_OPTIM_ADAM:
        return 2 * (size_t)width + 1;
    }
    return 0;
}

/*
 * The index of the first non-finite element of g[0..width), or width.  The
 * common case, all finite, is one branch-free pass the compiler vectorizes.
 */
static uint32_t first_nonfinite(const float *g, uint32_t width)
{
    int bad = 0;

    for (uint32_t j = 0; j < width; j++)
        bad |= !(fabsf(g[j]) <= FLT_MAX);
    if (!bad)
        return width;
    for (uint32_t j = 0; j < width; j++)
        if (!isfinite(g[j]))
            return j;
    return width;
}

/*
 * Adam's bias corrections 1 / (1 - beta^t) for one step count t, kept across
 * the rows of one call: the rows of a push mostly share their step count, and
 * the two pow() calls cost more than a narrow row's update.
 */
struct adam_bias {
    float t; /* 0: none computed yet */
    float c1, c2;
};

/* The update itself, on a gradient already checked to be finite. */
static void apply_checked(const struct keel_optim *o, float *w, float *state, const float *g,
                          uint32_t width, struct adam_bias *bias)
{
    const float lr = o->lr;

    switch (o->kind) {
    case KEEL_OPTIM_SGD:
        for (uint32_t j = 0; j < width; j++)
            w[j] -= lr * g[j];
        break;
    case KEEL_OPTIM_MOMENTUM: {
        const float mu = o->momentum;

        for (uint32_t j = 0; j < width; j++) {
            state[j] = mu * state[j] + g[j];
            w[j] -= lr * state[j];
        }
        break;
    }
    case KEEL_OPTIM_ADAGRAD: {
        const float eps = o->epsilon;

        for (uint32_t j = 0; j < width; j++) {
            state[j] += g[j] * g[j];
            w[j] -= lr * g[j] / (sqrtf(state[j]) + eps);
        }
        break;
    }
    case KEEL_OPTIM_ADAM: {
        const float b1 = o->beta1, b2 = o->beta2, eps = o->epsilon;
        float *m = state + 1, *v = state + 1 + width;
        float t = state[0] < ADAM_T_MAX ? state[0] + 1.0f : ADAM_T_MAX;
        float c1, c2;

        if (bias->t != t) { /* 1 / (1 - beta^t), in double: for t = 1, 1 - beta is exact enough */
            bias->t = t;
            bias->c1 = (float)(1.0 / (1.0 - pow((double)b1, (double)t)));
            bias->c2 = (float)(1.0 / (1.0 - pow((double)b2, (double)t)));
        }
        c1 = bias->c1;
        c2 = bias->c2;
        state[0] = t;
        for (uint32_t j = 0; j < width; j++) {
            m[j] = b1 * m[j] + (1.0f - b1) * g[j];
            v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
            w[j] -= lr * (m[j] * c1) / (sqrtf(v[j] * c2) + eps);
        }
        break;
    }
    }
}

int keel_optim_apply(const struct keel_optim *o, float *row, float *state, const float *grad,
                     uint32_t width, struct keel_error *err)
{
    struct adam_bias bias = {0, 0, 0};
    uint32_t bad = first_nonfinite(grad, width);

    if (bad < width)
        return keel_err_set(err, KEEL_EINVAL, "gradient element %u is not finite (%g)",
                            (unsigned)bad, (double)grad[bad]);
    apply_checked(o, row, state, grad, width, &bias);
    return KEEL_OK;
}

void keel_optim_apply_rows_finite(const struct keel_optim *o, float *rows, float *states,
                                  const uint32_t *at, const float *grads, uint32_t nrows,
                                  uint32_t width)
{
    size_t sw = keel_optim_state_width(o, width);
    struct adam_bias bias = {0, 0, 0};

    for (uint32_t i = 0; i < nrows; i++) {
        size_t r = at ? at[i] : i;

        apply_checked(o, rows + r * width, sw ? states + r * sw : NULL, grads + (size_t)i * width,
                      width, &bias);
    }
}

int keel_optim_apply_rows(const struct keel_optim *o, float *rows, float *states,
                          const uint32_t *at, const float *grads, uint32_t nrows, uint32_t width,
                          struct keel_error *err)
{
    for (uint32_t i = 0; i < nrows; i++) {
        const float *g = grads + (size_t)i * width;
        uint32_t bad = first_nonfinite(g, width);

        if (bad < width)
            return keel_err_set(err, KEEL_EINVAL,
                                "gradient of row %u, element %u is not finite (%g)", (unsigned)i,
                                (unsigned)bad, (double)g[bad]);
    }
    keel_optim_apply_rows_finite(o, rows, states, at, grads, nrows, width);
    return KEEL_OK;
}
