/*
 * model.c - dense models: spec parsing, forward and backward passes with
 * CBLAS, and the counter-based initializers of parameter rows.
 *
 * The passes keep every matrix row-major.  A layer's table W is s_out rows of
 * s_in + 1 floats (weights, then the bias), so its weight block is W with a
 * leading dimension of s_in + 1 and the biases are the column at offset s_in:
 * sgemm reads and writes the packed rows in place, with no copy.
 */
#include <cblas.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "keel/model.h"

#define GOLDEN UINT64_C(0x9e3779b97f4a7c15)

struct keel_model_work {
    uint32_t max_batch;
    unsigned nlayers;
    float *act[KEEL_MODEL_MAX_LAYERS + 1]; /* act[l], l >= 1: layer l-1's output, n * s_l */
    float *delta[2];                       /* gradients wrt pre-activations, ping-pong */
    uint32_t n;                            /* samples of the last successful pass, 0 if none */
};

static const char *type_name(enum keel_model_type type)
{
    switch (type) {
    case KEEL_MODEL_TYPE_SOFTMAX:
        return "softmax";
    case KEEL_MODEL_TYPE_MLP:
        return "mlp";
    }
    return NULL;
}

int keel_model_init(struct keel_model *m, enum keel_model_type type, const uint32_t *sizes,
                    unsigned nsizes, struct keel_error *err)
{
    uint64_t nparams = 0;

    memset(m, 0, sizeof(*m));
    if (type_name(type) == NULL)
        return keel_err_set(err, KEEL_EINVAL, "unknown model type %d", (int)type);
    if (nsizes < 2 || nsizes > KEEL_MODEL_MAX_LAYERS + 1)
        return keel_err_set(err, KEEL_EINVAL,
                            "model '%s' has %u layer sizes; it needs 2 to %u (inputs to classes)",
                            type_name(type), nsizes, KEEL_MODEL_MAX_LAYERS + 1);
    if (type == KEEL_MODEL_TYPE_SOFTMAX && nsizes != 2)
        return keel_err_set(
            err, KEEL_EINVAL,
            "model 'softmax' has exactly 2 layer sizes (inputs and classes), not %u", nsizes);
    for (unsigned i = 0; i < nsizes; i++) {
        if (sizes[i] == 0 || sizes[i] > KEEL_MODEL_MAX_UNITS)
            return keel_err_set(err, KEEL_EINVAL, "model layer size %u (index %u) is not in 1..%u",
                                (unsigned)sizes[i], i, (unsigned)KEEL_MODEL_MAX_UNITS);
        if (i > 0)
            nparams += (uint64_t)sizes[i] * ((uint64_t)sizes[i - 1] + 1);
    }
    if (nparams > KEEL_MODEL_MAX_PARAMS)
        return keel_err_set(err, KEEL_EINVAL, "model has %llu parameters; at most %llu are allowed",
                            (unsigned long long)nparams, (unsigned long long)KEEL_MODEL_MAX_PARAMS);
    m->type = type;
    m->nlayers = nsizes - 1;
    memcpy(m->sizes, sizes, nsizes * sizeof(sizes[0]));
    return KEEL_OK;
}

int keel_model_scan(struct keel_model *m, const char *spec, char *why, size_t whylen)
{
    const char *p;
    unsigned n = 0;

    memset(m, 0, sizeof(*m));
    if (strncmp(spec, "softmax:", 8) == 0) {
        m->type = KEEL_MODEL_TYPE_SOFTMAX;
        p = spec + 8;
    } else if (strncmp(spec, "mlp:", 4) == 0) {
        m->type = KEEL_MODEL_TYPE_MLP;
        p = spec + 4;
    } else {
        snprintf(why, whylen, "must be softmax:IN-OUT or mlp:IN-HIDDEN...-OUT");
        return -1;
    }
    for (;;) {
        uint64_t v = 0;
        const char *start = p;

        while (*p >= '0' && *p <= '9' && p - start < 8)
            v = v * 10 + (uint64_t)(*p++ - '0');
        if (p == start || (*p != '-' && *p != '\0')) {
            snprintf(why, whylen, "layer sizes must be decimal numbers joined by '-'");
            return -1;
        }
        if (v < 1 || v > KEEL_MODEL_MAX_UNITS) {
            snprintf(why, whylen, "layer size %u is %" PRIu64 ", must be 1 to %u", n + 1, v,
                     (unsigned)KEEL_MODEL_MAX_UNITS);
            return -1;
        }
        if (n == KEEL_MODEL_MAX_LAYERS + 1) {
            snprintf(why, whylen, "at most %d layer sizes", KEEL_MODEL_MAX_LAYERS + 1);
            return -1;
        }
        m->sizes[n++] = (uint32_t)v;
        if (*p == '\0')
            break;
        p++;
    }
    m->nlayers = n - 1;
    return 0;
}

int keel_model_parse(struct keel_model *m, const char *spec, struct keel_error *err)
{
    struct keel_model scanned;
    char why[KEEL_ERROR_MSG_MAX];
    int rc;

    memset(m, 0, sizeof(*m));
    if (keel_model_scan(&scanned, spec, why, sizeof(why)) != 0)
        return keel_err_set(err, KEEL_EINVAL, "model '%.64s': %s", spec, why);
    rc = keel_model_init(m, scanned.type, scanned.sizes, scanned.nlayers + 1, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "model '%.64s'", spec);
    return KEEL_OK;
}

void keel_model_format(const struct keel_model *m, struct keel_buf *out)
{
    const char *name = type_name(m->type);

    keel_buf_addf(out, "%s:", name != NULL ? name : "unknown");
    for (unsigned i = 0; i <= m->nlayers; i++)
        keel_buf_addf(out, i == 0 ? "%u" : "-%u", (unsigned)m->sizes[i]);
}

size_t keel_model_table_floats(const struct keel_model *m, unsigned layer)
{
    return (size_t)keel_model_rows(m, layer) * keel_model_row_width(m, layer);
}

size_t keel_model_nparams(const struct keel_model *m)
{
    size_t n = 0;

    for (unsigned l = 0; l < m->nlayers; l++)
        n += keel_model_table_floats(m, l);
    return n;
}

void keel_model_keys(const struct keel_model *m, unsigned layer, uint64_t *keys)
{
    uint32_t table = keel_model_table_id(layer), rows = keel_model_rows(m, layer);

    for (uint32_t r = 0; r < rows; r++)
        keys[r] = keel_model_key(table, r);
}

void keel_model_params_init(struct keel_model_params *p, const struct keel_model *m)
{
    memset(p, 0, sizeof(*p));
    p->ntables = m->nlayers;
    for (unsigned l = 0; l < m->nlayers; l++)
        KEEL_ALLOC_ARRAY(p->table[l], keel_model_table_floats(m, l));
}

void keel_model_params_release(struct keel_model_params *p)
{
    for (unsigned l = 0; l < KEEL_MODEL_MAX_LAYERS; l++) {
        free(p->table[l]);
        p->table[l] = NULL;
    }
    p->ntables = 0;
}

void keel_model_params_fill(struct keel_model_params *p, const struct keel_model *m, uint64_t seed)
{
    for (unsigned l = 0; l < m->nlayers; l++) {
        uint32_t width = keel_model_row_width(m, l);
        struct keel_initializer ini;

        keel_model_default_initializer(m, l, seed, &ini);
        for (uint32_t r = 0; r < keel_model_rows(m, l); r++)
            (void)keel_initializer_row(&ini, keel_model_table_id(l), r,
                                       p->table[l] + (size_t)r * width, width,
                                       NULL); /* the default initializers are always valid */
    }
}

keel_model_work *keel_model_work_new(const struct keel_model *m, uint32_t max_batch)
{
    keel_model_work *w;
    uint32_t widest = 0;

    if (max_batch == 0)
        max_batch = 1;
    if (max_batch > KEEL_MODEL_MAX_BATCH)
        max_batch = KEEL_MODEL_MAX_BATCH;
    w = keel_calloc(1, sizeof(*w));
    w->max_batch = max_batch;
    w->nlayers = m->nlayers;
    for (unsigned l = 1; l <= m->nlayers; l++) {
        w->act[l] = keel_calloc(keel_size_mul(max_batch, m->sizes[l]), sizeof(float));
        if (m->sizes[l] > widest)
            widest = m->sizes[l];
    }
    for (int i = 0; i < 2; i++)
        w->delta[i] = keel_calloc(keel_size_mul(max_batch, widest), sizeof(float));
    return w;
}

void keel_model_work_free(keel_model_work *w)
{
    if (w == NULL)
        return;
    for (unsigned l = 0; l <= KEEL_MODEL_MAX_LAYERS; l++)
        free(w->act[l]);
    free(w->delta[0]);
    free(w->delta[1]);
    free(w);
}

const float *keel_model_probs(const keel_model_work *w)
{
    return w->act[w->nlayers];
}

/* Check the batch size and the labels before any work. */
static int check_batch(const struct keel_model *m, const keel_model_work *w, const uint32_t *labels,
                       uint32_t n, struct keel_error *err)
{
    uint32_t classes = m->sizes[m->nlayers];

    if (w->nlayers != m->nlayers)
        return keel_err_set(err, KEEL_EINVAL, "work area was made for another model");
    if (n == 0 || n > w->max_batch)
        return keel_err_set(err, KEEL_EINVAL, "batch of %u samples is not in 1..%u", (unsigned)n,
                            (unsigned)w->max_batch);
    for (uint32_t i = 0; i < n; i++)
        if (labels[i] >= classes)
            return keel_err_set(err, KEEL_EINVAL,
                                "label %u of sample %u is out of range (%u classes)",
                                (unsigned)labels[i], (unsigned)i, (unsigned)classes);
    return KEEL_OK;
}

/*
 * out (n x s_out) = in (n x s_in) * W^T + bias, with W's rows packed as
 * [weights, bias]; a ReLU follows when `relu`.
 */
static void layer_forward(const float *in, uint32_t n, uint32_t s_in, uint32_t s_out,
                          const float *w, float *out, int relu)
{
    size_t ld = (size_t)s_in + 1;

    for (uint32_t i = 0; i < n; i++) {
        float *o = out + (size_t)i * s_out;

        for (uint32_t r = 0; r < s_out; r++)
            o[r] = w[r * ld + s_in];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)s_out, (int)s_in, 1.0f, in,
                (int)s_in, w, (int)ld, 1.0f, out, (int)s_out);
    if (relu) {
        size_t total = (size_t)n * s_out;

        for (size_t k = 0; k < total; k++)
            out[k] = out[k] > 0.0f ? out[k] : 0.0f;
    }
}

/*
 * Turn the logits z (n x c) into probabilities in place, with the max of each
 * row subtracted before exp so that nothing overflows; add up the loss
 * log(sum exp(z - max)) - (z_y - max) and count the argmax hits.
 */
static void softmax_loss(float *z, uint32_t n, uint32_t c, const uint32_t *labels,
                         struct keel_model_stats *stats)
{
    double loss = 0.0;
    uint32_t ncorrect = 0;

    for (uint32_t i = 0; i < n; i++) {
        float *row = z + (size_t)i * c;
        uint32_t arg = 0;
        float max = row[0];
        double sum, zy;

        for (uint32_t k = 1; k < c; k++)
            if (row[k] > max) {
                max = row[k];
                arg = k;
            }
        zy = (double)row[labels[i]] - (double)max;
        row[0] = expf(row[0] - max);
        sum = row[0];
        for (uint32_t k = 1; k < c; k++) {
            row[k] = expf(row[k] - max);
            sum += row[k];
        }
        for (uint32_t k = 0; k < c; k++)
            row[k] = (float)(row[k] / sum);
        loss += log(sum) - zy;
        ncorrect += arg == labels[i];
    }
    stats->loss = loss / n;
    stats->ncorrect = ncorrect;
    stats->n = n;
}

static void forward(const struct keel_model *m, keel_model_work *w,
                    const struct keel_model_params *params, const float *x, const uint32_t *labels,
                    uint32_t n, struct keel_model_stats *stats)
{
    const float *in = x;
    unsigned L = m->nlayers;

    for (unsigned l = 0; l < L; l++) {
        layer_forward(in, n, m->sizes[l], m->sizes[l + 1], params->table[l], w->act[l + 1],
                      l + 1 < L);
        in = w->act[l + 1];
    }
    softmax_loss(w->act[L], n, m->sizes[L], labels, stats);
    w->n = n;
}

int keel_model_eval(const struct keel_model *m, keel_model_work *w,
                    const struct keel_model_params *params, const float *x, const uint32_t *labels,
                    uint32_t n, struct keel_model_stats *stats, struct keel_error *err)
{
    int rc;

    memset(stats, 0, sizeof(*stats));
    rc = check_batch(m, w, labels, n, err);
    if (rc != 0)
        return rc;
    forward(m, w, params, x, labels, n, stats);
    return KEEL_OK;
}

/*
 * Backward pass after forward(): with D the gradient of the mean loss with
 * respect to a layer's pre-activations (n x s_out),
 *   dW = D^T * in     (s_out x s_in, written into the packed rows)
 *   db = column sums of D
 *   D' = (D * W) masked by the ReLU (in > 0), for the layer below.
 * At the output, D = (P - onehot(y)) / n.
 */
static void backward(const struct keel_model *m, keel_model_work *w,
                     const struct keel_model_params *params, const float *x, const uint32_t *labels,
                     uint32_t n, struct keel_model_params *grads)
{
    unsigned L = m->nlayers;
    uint32_t c = m->sizes[L];
    float *d = w->delta[0], *dprev = w->delta[1];
    float inv_n = 1.0f / (float)n;

    memcpy(d, w->act[L], (size_t)n * c * sizeof(float));
    for (uint32_t i = 0; i < n; i++)
        d[(size_t)i * c + labels[i]] -= 1.0f;
    for (size_t k = 0; k < (size_t)n * c; k++)
        d[k] *= inv_n;

    for (unsigned l = L; l-- > 0;) {
        uint32_t s_in = m->sizes[l], s_out = m->sizes[l + 1];
        size_t ld = (size_t)s_in + 1;
        const float *in = l == 0 ? x : w->act[l];
        float *g = grads->table[l];
        float *tmp;

        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)s_out, (int)s_in, (int)n, 1.0f, d,
                    (int)s_out, in, (int)s_in, 0.0f, g, (int)ld);
        for (uint32_t r = 0; r < s_out; r++)
            g[r * ld + s_in] = 0.0f;
        for (uint32_t i = 0; i < n; i++) {
            const float *di = d + (size_t)i * s_out;

            for (uint32_t r = 0; r < s_out; r++)
                g[r * ld + s_in] += di[r];
        }
        if (l == 0)
            break;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)s_in, (int)s_out, 1.0f,
                    d, (int)s_out, params->table[l], (int)ld, 0.0f, dprev, (int)s_in);
        for (size_t k = 0; k < (size_t)n * s_in; k++)
            if (!(in[k] > 0.0f))
                dprev[k] = 0.0f;
        tmp = d;
        d = dprev;
        dprev = tmp;
    }
}

int keel_model_grad(const struct keel_model *m, keel_model_work *w,
                    const struct keel_model_params *params, const float *x, const uint32_t *labels,
                    uint32_t n, struct keel_model_params *grads, struct keel_model_stats *stats,
                    struct keel_error *err)
{
    int rc;

    memset(stats, 0, sizeof(*stats));
    rc = check_batch(m, w, labels, n, err);
    if (rc != 0)
        return rc;
    forward(m, w, params, x, labels, n, stats);
    backward(m, w, params, x, labels, n, grads);
    return KEEL_OK;
}

/* ---- Initializers ---------------------------------------------------- */

/* The splitmix64 finalizer: a bijection of 64-bit words that mixes every bit. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/*
 * The stream of row (table, row) under `seed`: word k of the row is
 * mix64(base + k * GOLDEN), the splitmix64 sequence started at base, where
 * base mixes the seed with the row's key.  Distinct keys give distinct bases.
 */
static uint64_t row_base(uint64_t seed, uint32_t table_id, uint64_t row)
{
    return mix64(mix64(seed + GOLDEN) ^ keel_model_key(table_id, row));
}

static uint64_t row_word(uint64_t base, uint64_t k)
{
    return mix64(base + (k + 1) * GOLDEN);
}

/* A double in [0, 1) from the top 53 bits of `u`. */
static double unit_closed_open(uint64_t u)
{
    return (double)(u >> 11) * 0x1.0p-53;
}

/* A double in (0, 1]: never 0, so that its log is finite. */
static double unit_open_closed(uint64_t u)
{
    return (double)((u >> 11) + 1) * 0x1.0p-53;
}

int keel_initializer_row(const struct keel_initializer *ini, uint32_t table_id, uint64_t row,
                         float *out, uint32_t width, struct keel_error *err)
{
    uint64_t base = row_base(ini->seed, table_id, row);
    uint32_t nweights = ini->bias_last && width > 0 ? width - 1 : width;
    double fans = (double)ini->fan_in + (double)ini->fan_out;
    double a = 0.0, sd = 0.0;

    switch (ini->kind) {
    case KEEL_INITIALIZER_ZEROS:
        memset(out, 0, (size_t)width * sizeof(float));
        return KEEL_OK;
    case KEEL_INITIALIZER_UNIFORM:
        if (!(ini->scale > 0.0f) || !isfinite(ini->scale))
            return keel_err_set(err, KEEL_EINVAL, "uniform initializer scale %g is not positive",
                                (double)ini->scale);
        a = ini->scale;
        break;
    case KEEL_INITIALIZER_GLOROT_UNIFORM:
    case KEEL_INITIALIZER_GLOROT_NORMAL:
        if (ini->fan_in == 0 || ini->fan_out == 0)
            return keel_err_set(err, KEEL_EINVAL, "%s initializer needs fan_in and fan_out",
                                keel_initializer_name(ini->kind));
        if (ini->kind == KEEL_INITIALIZER_GLOROT_UNIFORM)
            a = sqrt(6.0 / fans);
        else
            sd = sqrt(2.0 / fans);
        break;
    case KEEL_INITIALIZER_HE_UNIFORM:
    case KEEL_INITIALIZER_HE_NORMAL:
        if (ini->fan_in == 0)
            return keel_err_set(err, KEEL_EINVAL, "%s initializer needs fan_in",
                                keel_initializer_name(ini->kind));
        if (ini->kind == KEEL_INITIALIZER_HE_UNIFORM)
            a = sqrt(6.0 / (double)ini->fan_in);
        else
            sd = sqrt(2.0 / (double)ini->fan_in);
        break;
    default:
        return keel_err_set(err, KEEL_EINVAL, "unknown initializer kind %d", (int)ini->kind);
    }
    if (a > 0.0) {
        /* Word j gives value j. */
        for (uint32_t j = 0; j < nweights; j++)
            out[j] = (float)((2.0 * unit_closed_open(row_word(base, j)) - 1.0) * a);
    } else {
        /* Box-Muller: words 2p and 2p+1 give values 2p (cos) and 2p+1 (sin). */
        for (uint32_t j = 0; j < nweights; j++) {
            uint64_t p = j / 2;
            double r = sqrt(-2.0 * log(unit_open_closed(row_word(base, 2 * p))));
            double theta = 2.0 * M_PI * unit_closed_open(row_word(base, 2 * p + 1));

            out[j] = (float)(sd * r * (j % 2 == 0 ? cos(theta) : sin(theta)));
        }
    }
    if (nweights < width)
        out[nweights] = 0.0f;
    return KEEL_OK;
}

static const char *const initializer_names[] = {
    [KEEL_INITIALIZER_ZEROS] = "zeros",
    [KEEL_INITIALIZER_UNIFORM] = "uniform",
    [KEEL_INITIALIZER_GLOROT_UNIFORM] = "glorot_uniform",
    [KEEL_INITIALIZER_HE_UNIFORM] = "he_uniform",
    [KEEL_INITIALIZER_GLOROT_NORMAL] = "glorot_normal",
    [KEEL_INITIALIZER_HE_NORMAL] = "he_normal",
};

#define NINITIALIZERS (sizeof(initializer_names) / sizeof(initializer_names[0]))

int keel_initializer_parse(struct keel_initializer *ini, const char *text, struct keel_error *err)
{
    if (strncmp(text, "uniform:", 8) == 0) {
        char *end;
        double a;

        errno = 0;
        a = strtod(text + 8, &end);
        if (end == text + 8 || *end != '\0' || errno != 0 || !(a > 0.0) || !isfinite(a) || a > 1e30)
            return keel_err_set(err, KEEL_EINVAL,
                                "initializer '%.64s': the scale must be a positive number", text);
        ini->kind = KEEL_INITIALIZER_UNIFORM;
        ini->scale = (float)a;
        return KEEL_OK;
    }
    for (size_t k = 1; k < NINITIALIZERS; k++)
        if (k != KEEL_INITIALIZER_UNIFORM && strcmp(text, initializer_names[k]) == 0) {
            ini->kind = (enum keel_initializer_kind)k;
            return KEEL_OK;
        }
    return keel_err_set(err, KEEL_EINVAL,
                        "unknown initializer '%.64s' (zeros, uniform:A, glorot_uniform, "
                        "he_uniform, glorot_normal, he_normal)",
                        text);
}

const char *keel_initializer_name(enum keel_initializer_kind kind)
{
    if ((size_t)kind >= 1 && (size_t)kind < NINITIALIZERS)
        return initializer_names[kind];
    return "unknown";
}

void keel_model_default_initializer(const struct keel_model *m, unsigned layer, uint64_t seed,
                                    struct keel_initializer *ini)
{
    memset(ini, 0, sizeof(*ini));
    ini->kind =
        layer + 1 < m->nlayers ? KEEL_INITIALIZER_HE_NORMAL : KEEL_INITIALIZER_GLOROT_NORMAL;
    ini->seed = seed;
    ini->fan_in = m->sizes[layer];
    ini->fan_out = m->sizes[layer + 1];
    ini->bias_last = 1;
}
