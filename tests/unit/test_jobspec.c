/*
 * test_jobspec.c - job spec files: good ones parse with their defaults, each
 * bad field is refused naming the file, line and field, the JSON form round
 * trips and its decoder refuses bad input, the digest is stable, and the
 * model's tables and initial rows are what the docs say.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "keel/jobspec.h"

static struct keel_jobspec spec;
static struct keel_error err;

static void setup(void)
{
    memset(&spec, 0xA5, sizeof(spec)); /* the parser must set everything */
    keel_error_init(&err);
}

TestSuite(jobspec, .init = setup);

/* The repository's top directory, from this file's path. */
static void source_path(char *out, size_t n, const char *rel)
{
    const char *here = __FILE__;
    const char *cut = strstr(here, "tests/unit/test_jobspec.c");

    cr_assert_not_null(cut, "cannot find the source tree from %s", here);
    snprintf(out, n, "%.*s%s", (int)(cut - here), here, rel);
}

#define MINIMAL "[job]\nname = j1\nmodel = softmax:4-3\ndataset = d1\n"

static void encode(const struct keel_jobspec *s, struct keel_buf *b)
{
    keel_buf_reset(b);
    keel_jobspec_encode(s, b);
}

/* ---- good specs ----------------------------------------------------------- */

Test(jobspec, example_file_parses)
{
    char path[512];
    char text[64];

    source_path(path, sizeof(path), "examples/fashion-mnist-mlp.ini");
    cr_assert_eq(keel_jobspec_load(&spec, path, &err), 0, "%s", err.msg);
    cr_assert_str_eq(spec.name, "fmnist-mlp");
    cr_assert_eq(spec.model.type, KEEL_MODEL_TYPE_MLP);
    cr_assert_eq(spec.model.nlayers + 1, 4);
    cr_assert_eq(spec.model.sizes[0], 784);
    cr_assert_eq(spec.model.sizes[1], 256);
    cr_assert_eq(spec.model.sizes[2], 128);
    cr_assert_eq(spec.model.sizes[3], 10);
    cr_assert_str_eq(spec.dataset, "fashion-mnist");
    cr_assert_str_eq(spec.test_dataset, "fashion-mnist-test");
    cr_assert_eq(spec.batch_size, 64);
    cr_assert_eq(spec.epochs, 10);
    cr_assert_eq(spec.consistency, KEEL_CONSISTENCY_SSP);
    cr_assert_eq(spec.staleness, 2);
    cr_assert_eq(spec.checkpoint_interval, 500);
    cr_assert_eq(spec.replication, 1);
    cr_assert_eq(spec.shards, 4);
    cr_assert_eq(spec.optimizer.type, KEEL_OPTIM_ADAM);
    cr_assert_eq(spec.optimizer.lr, 0.001);
    cr_assert_eq(spec.optimizer.beta1, 0.9);
    cr_assert_eq(spec.optimizer.beta2, 0.999);
    cr_assert_eq(spec.optimizer.epsilon, 1e-8);
    cr_assert_eq(spec.optimizer.momentum, 0);
    cr_assert_eq(spec.init.method, KEEL_INITIALIZER_GLOROT_UNIFORM);
    cr_assert_eq(spec.init.seed, 42);
    cr_assert_eq(spec.init.scale, 0);
    keel_jobspec_model_string(&spec, text, sizeof(text));
    cr_assert_str_eq(text, "mlp:784-256-128-10");
    keel_consistency_string(&spec, text, sizeof(text));
    cr_assert_str_eq(text, "ssp:2");
}

Test(jobspec, softmax_example_parses)
{
    char path[512];

    source_path(path, sizeof(path), "examples/fashion-mnist-softmax.ini");
    cr_assert_eq(keel_jobspec_load(&spec, path, &err), 0, "%s", err.msg);
    cr_assert_eq(spec.model.type, KEEL_MODEL_TYPE_SOFTMAX);
    cr_assert_eq(spec.optimizer.type, KEEL_OPTIM_SGD);
    cr_assert_eq(spec.optimizer.lr, 0.1);
    cr_assert_eq(spec.init.method, KEEL_INITIALIZER_ZEROS);
    cr_assert_str_eq(spec.test_dataset, "fashion-mnist-test");
}

Test(jobspec, defaults_fill_what_is_not_given)
{
    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL, "t.ini", &err), 0, "%s", err.msg);
    cr_assert_eq(spec.batch_size, 64);
    cr_assert_eq(spec.epochs, 1);
    cr_assert_eq(spec.consistency, KEEL_CONSISTENCY_BSP);
    cr_assert_eq(spec.staleness, 0);
    cr_assert_eq(spec.checkpoint_interval, 1000);
    cr_assert_eq(spec.replication, 2);
    cr_assert_eq(spec.shards, 8);
    cr_assert_eq(spec.optimizer.type, KEEL_OPTIM_SGD);
    cr_assert_eq(spec.optimizer.lr, 0.01);
    cr_assert_eq(spec.init.method, KEEL_INITIALIZER_GLOROT_UNIFORM);
    cr_assert_eq(spec.init.seed, 1);
}

Test(jobspec, each_optimizer_gets_its_own_defaults)
{
    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL "[optimizer]\ntype = momentum\n", "t", &err), 0,
                 "%s", err.msg);
    cr_assert_eq(spec.optimizer.momentum, 0.9);
    cr_assert_eq(spec.optimizer.epsilon, 0);
    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL "[optimizer]\ntype = adagrad\n", "t", &err), 0,
                 "%s", err.msg);
    cr_assert_eq(spec.optimizer.epsilon, 1e-8);
    cr_assert_eq(spec.optimizer.momentum, 0);
    cr_assert_eq(
        keel_jobspec_parse(&spec, MINIMAL "[optimizer]\nlr = 0.5\ntype = adam\n", "t", &err), 0,
        "%s", err.msg);
    cr_assert_eq(spec.optimizer.lr, 0.5, "a value given before the type is kept");
    cr_assert_eq(spec.optimizer.beta2, 0.999);
}

Test(jobspec, uniform_init_takes_a_scale)
{
    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL "[init]\nmethod = uniform\n", "t", &err), 0,
                 "%s", err.msg);
    cr_assert_eq(spec.init.scale, 0.05);
    cr_assert_eq(
        keel_jobspec_parse(&spec, MINIMAL "[init]\nmethod = uniform\nscale = 0.2\n", "t", &err), 0,
        "%s", err.msg);
    cr_assert_eq(spec.init.scale, 0.2);
}

Test(jobspec, missing_file_is_an_errno)
{
    cr_assert_eq(keel_jobspec_load(&spec, "/nonexistent/job.ini", &err), -ENOENT);
    cr_assert(strstr(err.msg, "'/nonexistent/job.ini'"), "%s", err.msg);
}

/* ---- bad fields ------------------------------------------------------------ */

struct bad_spec {
    char text[320];
    char expect[128]; /* what the message must contain */
};

static struct bad_spec bad_specs[] = {
    {"[job]\nmodel = softmax:4-3\ndataset = d\n", "t.ini: [job] name: must be set"},
    {"[job]\nname = j\ndataset = d\n", "t.ini: [job] model: must be set"},
    {"[job]\nname = j\nmodel = softmax:4-3\n", "t.ini: [job] dataset: must be set"},
    {"[job]\nname = no/slash\n", "t.ini:2: [job] name: must be 1-64"},
    {"[job]\nname = j\nname = k\n", "t.ini:3: [job] name: set twice (first on line 2)"},
    {"[job]\nmodel = conv:3-3\n", "t.ini:2: [job] model: must be softmax:IN-OUT"},
    {"[job]\nmodel = softmax:784-256-10\n", "t.ini:2: [job] model: softmax takes exactly 2"},
    {"[job]\nmodel = mlp:784-10\n", "t.ini:2: [job] model: mlp takes at least 3"},
    {"[job]\nmodel = mlp:784-0-10\n", "t.ini:2: [job] model: layer size 2 is 0"},
    {"[job]\nmodel = mlp:784-99999-10\n", "t.ini:2: [job] model: layer size 2 is 99999"},
    {"[job]\nmodel = mlp:784--10\n", "t.ini:2: [job] model: layer sizes must be decimal"},
    {"[job]\nmodel = mlp:784-10-\n", "t.ini:2: [job] model: layer sizes must be decimal"},
    {"[job]\nname = j\ndataset = d\nmodel = mlp:65536-65536-65536\n",
     "t.ini: [job] model: 8590065664 parameters, more than the 2147483648 allowed"},
    {"[job]\ndataset = .hidden\n", "t.ini:2: [job] dataset: must be 1-64 of A-Z a-z 0-9 . _ -"},
    {"[job]\ndataset = a/b\n", "t.ini:2: [job] dataset: must be 1-64"},
    {"[job]\ntest_dataset = \n", "t.ini:2: [job] test_dataset: must be 1-64"},
    {"[job]\nbatch_size = 0\n", "t.ini:2: [job] batch_size: must be an integer from 1 to 65536"},
    {"[job]\nbatch_size = 12x\n", "t.ini:2: [job] batch_size: must be an integer"},
    {"[job]\nbatch_size = -1\n", "t.ini:2: [job] batch_size: must be an integer"},
    {"[job]\nepochs = 100001\n", "t.ini:2: [job] epochs: must be an integer from 1 to 100000"},
    {"[job]\nconsistency = ssp\n", "t.ini:2: [job] consistency: must be bsp, asp or ssp:N"},
    {"[job]\nconsistency = ssp:0\n", "t.ini:2: [job] consistency: must be bsp, asp or ssp:N"},
    {"[job]\nconsistency = ssp:1001\n", "t.ini:2: [job] consistency"},
    {"[job]\nconsistency = BSP\n", "t.ini:2: [job] consistency"},
    {"[job]\ncheckpoint_interval = 1s\n", "t.ini:2: [job] checkpoint_interval: must be an"},
    {"[job]\nreplication = 6\n", "t.ini:2: [job] replication: must be an integer from 1 to 5"},
    {"[job]\nreplication = 0\n", "t.ini:2: [job] replication"},
    {"[job]\nshards = 4097\n", "t.ini:2: [job] shards: must be an integer from 1 to 4096"},
    {"[job]\nlost_ranges = restart\n", "t.ini:2: [job] lost_ranges: must be fail or rewind"},
    {"[job]\ndurability = fsync\n", "t.ini:2: [job] durability: must be replicas or disk"},
    {"[job]\ncompression = fp8\n", "t.ini:2: [job] compression: must be none, bf16 or fp16"},
    {"[optimizer]\ntype = rmsprop\n", "t.ini:2: [optimizer] type: must be sgd, momentum"},
    {"[optimizer]\nlr = 0\n", "t.ini:2: [optimizer] lr: must be a number greater than 0"},
    {"[optimizer]\nlr = 11\n", "t.ini:2: [optimizer] lr: must be a number greater than 0"},
    {"[optimizer]\nlr = nan\n", "t.ini:2: [optimizer] lr"},
    {"[optimizer]\nlr = 1e999\n", "t.ini:2: [optimizer] lr"},
    {"[optimizer]\nlr = fast\n", "t.ini:2: [optimizer] lr"},
    {"[optimizer]\nmomentum = 1\n", "t.ini:2: [optimizer] momentum: must be a number at least 0"},
    {"[optimizer]\nbeta1 = -0.1\n", "t.ini:2: [optimizer] beta1"},
    {"[optimizer]\nbeta2 = 1.0\n", "t.ini:2: [optimizer] beta2"},
    {"[optimizer]\nepsilon = 0\n", "t.ini:2: [optimizer] epsilon"},
    {MINIMAL "[optimizer]\nbeta1 = 0.8\n", "t.ini:6: [optimizer] beta1: not used by optimizer "
                                           "'sgd'"},
    {MINIMAL "[optimizer]\ntype = adam\nmomentum = 0.5\n",
     "t.ini:7: [optimizer] momentum: not used by optimizer 'adam'"},
    {"[init]\nmethod = xavier\n", "t.ini:2: [init] method: must be zeros, uniform, glorot or he"},
    {"[init]\nseed = 9223372036854775808\n", "t.ini:2: [init] seed: must be an integer from 0"},
    {"[init]\nscale = 0\n", "t.ini:2: [init] scale: must be a number greater than 0"},
    {MINIMAL "[init]\nscale = 0.1\n", "t.ini:6: [init] scale: used only by init method 'uniform'"},
    {"[optimizer]\nlr_decay = 0\n", "t.ini:2: [optimizer] lr_decay: must be a number greater"},
    {"[optimizer]\nlr_decay = 1.5\n", "t.ini:2: [optimizer] lr_decay: must be a number"},
    {"[optimizer]\nlr_decay_every = -1\n", "t.ini:2: [optimizer] lr_decay_every: must be an"},
    {MINIMAL "[optimizer]\nlr_decay = 0.5\n",
     "t.ini: [optimizer] lr_decay: needs [optimizer] lr_decay_every"},
    {"[job]\nfoo = 1\n", "t.ini:2: unknown key 'foo' in section [job]"},
    {"[jobs]\nname = j\n", "t.ini:2: unknown section [jobs]"},
    {"name = j\n", "t.ini:1: unknown section []"},
    {"[job\nname = j\n", "t.ini:1: syntax error"},
    {"[job]\nname\n", "t.ini:2: syntax error"},
};

ParameterizedTestParameters(jobspec, each_bad_field_is_refused_naming_it)
{
    return cr_make_param_array(struct bad_spec, bad_specs,
                               sizeof(bad_specs) / sizeof(bad_specs[0]));
}

ParameterizedTest(struct bad_spec *c, jobspec, each_bad_field_is_refused_naming_it)
{
    struct keel_jobspec s;
    struct keel_error e;

    keel_error_init(&e);
    cr_assert_eq(keel_jobspec_parse(&s, c->text, "t.ini", &e), KEEL_EINVAL, "accepted:\n%s",
                 c->text);
    cr_assert(strstr(e.msg, c->expect), "for:\n%s\nwant '%s'\ngot  '%s'", c->text, c->expect,
              e.msg);
}

Test(jobspec, long_lines_are_refused)
{
    char text[600];

    snprintf(text, sizeof(text), "[job]\nname = j\n; %0300d\nmodel = softmax:4-3\ndataset = d\n",
             7);
    cr_assert_eq(keel_jobspec_parse(&spec, text, "t.ini", &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "t.ini:3: line longer than"), "%s", err.msg);
}

Test(jobspec, bad_field_in_a_file_names_file_and_line)
{
    char path[64];
    FILE *f;

    snprintf(path, sizeof(path), "/tmp/keel-test-jobspec-%d.ini", (int)getpid());
    f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(MINIMAL "\n[optimizer]\n; comment\nlr = -1\n", f);
    fclose(f);
    cr_assert_eq(keel_jobspec_load(&spec, path, &err), KEEL_EINVAL);
    unlink(path);
    cr_assert(strstr(err.msg, ":8: [optimizer] lr: must be a number greater than 0"), "%s",
              err.msg);
    cr_assert(strstr(err.msg, path), "%s", err.msg);
}

/* ---- JSON ------------------------------------------------------------------ */

static const char *const good_texts[] = {
    MINIMAL,
    MINIMAL "test_dataset = t2\nconsistency = asp\n[optimizer]\ntype = momentum\nlr = 0.3\n"
            "momentum = 0.95\n[init]\nmethod = he\nseed = 9223372036854775807\n",
    MINIMAL "consistency = ssp:1000\ncheckpoint_interval = 0\n[optimizer]\ntype = adagrad\n"
            "epsilon = 0.000001\n[init]\nmethod = uniform\nscale = 0.123456789012345678\n",
    "[job]\nname = big\nmodel = mlp:784-256-128-10\ndataset = d\nbatch_size = 65536\n"
    "epochs = 100000\nreplication = 5\nshards = 4096\n[optimizer]\ntype = adam\nlr = 10\n"
    "beta1 = 0\nbeta2 = 0.9999999999\nepsilon = 1\n[init]\nmethod = zeros\nseed = 0\n",
    MINIMAL "[optimizer]\nlr_decay = 0.8\nlr_decay_every = 235\n",
    MINIMAL "[optimizer]\nlr_decay = 1\nlr_decay_every = 1000000000\n",
    MINIMAL "lost_ranges = rewind\n",
    MINIMAL "lost_ranges = fail\n",
    MINIMAL "durability = disk\nlost_ranges = rewind\n",
    MINIMAL "durability = replicas\n",
    MINIMAL "compression = bf16\n",
    MINIMAL "compression = fp16\ndurability = disk\n",
    MINIMAL "compression = none\n",
};

Test(jobspec, json_round_trip_is_exact)
{
    for (size_t i = 0; i < sizeof(good_texts) / sizeof(good_texts[0]); i++) {
        struct keel_buf a = KEEL_BUF_INIT, b = KEEL_BUF_INIT;
        struct keel_jobspec back;
        char h1[65], h2[65];

        cr_assert_eq(keel_jobspec_parse(&spec, good_texts[i], "t", &err), 0, "%zu: %s", i, err.msg);
        encode(&spec, &a);
        cr_assert_eq(keel_jobspec_decode(a.buf, a.len, &back, &err), 0, "%zu: %s\n%s", i, err.msg,
                     a.buf);
        encode(&back, &b);
        cr_assert_str_eq((char *)b.buf, (char *)a.buf);
        cr_assert_str_eq(back.name, spec.name);
        cr_assert_eq(back.optimizer.lr, spec.optimizer.lr);
        cr_assert_eq(back.optimizer.beta2, spec.optimizer.beta2);
        cr_assert_eq(back.init.seed, spec.init.seed);
        cr_assert_eq(back.init.scale, spec.init.scale);
        cr_assert_eq(back.staleness, spec.staleness);
        cr_assert_eq(back.optimizer.lr_decay, spec.optimizer.lr_decay);
        cr_assert_eq(back.optimizer.lr_decay_every, spec.optimizer.lr_decay_every);
        cr_assert_eq(back.lost_ranges_rewind, spec.lost_ranges_rewind);
        cr_assert_eq(back.durability_disk, spec.durability_disk);
        cr_assert_eq(back.compression, spec.compression);
        keel_jobspec_digest_hex(&spec, h1);
        keel_jobspec_digest_hex(&back, h2);
        cr_assert_str_eq(h1, h2);
        keel_buf_release(&a);
        keel_buf_release(&b);
    }
}

Test(jobspec, canonical_json_shows_only_used_parameters)
{
    struct keel_buf b = KEEL_BUF_INIT;

    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL "[optimizer]\ntype = adam\n", "t", &err), 0);
    keel_jobspec_encode(&spec, &b);
    cr_assert_str_eq(
        (char *)b.buf,
        "{\"batch_size\":64,\"checkpoint_interval\":1000,\"consistency\":\"bsp\",\"dataset\":"
        "\"d1\",\"epochs\":1,\"format\":1,\"init\":{\"method\":\"glorot\",\"seed\":1},\"model\":"
        "\"softmax:4-3\",\"name\":\"j1\",\"optimizer\":{\"beta1\":0.9,\"beta2\":0.999,"
        "\"epsilon\":1e-8,\"lr\":0.001,\"type\":\"adam\"},\"replication\":2,\"shards\":8}");
    keel_buf_release(&b);
}

Test(jobspec, lost_ranges_rewind_is_said_in_the_json_and_the_default_is_not)
{
    struct keel_buf b = KEEL_BUF_INIT;

    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL, "t", &err), 0);
    cr_assert_eq(spec.lost_ranges_rewind, 0, "a lost range fails the job by default");
    keel_jobspec_encode(&spec, &b);
    cr_assert_null(strstr((char *)b.buf, "lost_ranges"), "older digests stay: %s", b.buf);
    keel_buf_reset(&b);
    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL "lost_ranges = rewind\n", "t", &err), 0);
    cr_assert_eq(spec.lost_ranges_rewind, 1);
    keel_jobspec_encode(&spec, &b);
    cr_assert_not_null(strstr((char *)b.buf, "\"lost_ranges\":\"rewind\""), "%s", b.buf);
    keel_buf_release(&b);
}

Test(jobspec, durability_is_replicas_unless_the_job_asks_for_disk)
{
    struct keel_buf b = KEEL_BUF_INIT;

    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL, "t", &err), 0);
    cr_assert_eq(spec.durability_disk, 0);
    keel_jobspec_encode(&spec, &b);
    cr_assert_null(strstr((char *)b.buf, "durability"), "older digests stay: %s", b.buf);
    keel_buf_reset(&b);
    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL "durability = disk\n", "t", &err), 0);
    cr_assert_eq(spec.durability_disk, 1);
    keel_jobspec_encode(&spec, &b);
    cr_assert_not_null(strstr((char *)b.buf, "\"durability\":\"disk\""), "%s", b.buf);
    keel_buf_release(&b);
}

Test(jobspec, compression_is_none_unless_the_job_asks_for_16_bit_rows)
{
    struct keel_buf b = KEEL_BUF_INIT;

    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL, "t", &err), 0);
    cr_assert_eq(spec.compression, KEEL_ROWS_F32);
    keel_jobspec_encode(&spec, &b);
    cr_assert_null(strstr((char *)b.buf, "compression"), "older digests stay: %s", b.buf);
    keel_buf_reset(&b);
    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL "compression = bf16\n", "t", &err), 0);
    cr_assert_eq(spec.compression, KEEL_ROWS_BF16);
    keel_jobspec_encode(&spec, &b);
    cr_assert_not_null(strstr((char *)b.buf, "\"compression\":\"bf16\""), "%s", b.buf);
    keel_buf_reset(&b);
    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL "compression = fp16\n", "t", &err), 0);
    cr_assert_eq(spec.compression, KEEL_ROWS_FP16);
    keel_buf_release(&b);
}

Test(jobspec, digest_is_stable_and_ignores_how_the_file_was_written)
{
    struct keel_jobspec other;
    char h1[65], h2[65];
    char path[512];

    source_path(path, sizeof(path), "examples/fashion-mnist-mlp.ini");
    cr_assert_eq(keel_jobspec_load(&spec, path, &err), 0, "%s", err.msg);
    keel_jobspec_digest_hex(&spec, h1);
    /* The canonical form is part of the checkpoint format: this value changes only with the
     * example's meaning (the last time: lr_decay 0.8 every 235 clocks; a spec without a decay
     * encodes as before, see canonical_json_shows_only_used_parameters). */
    cr_assert_str_eq(h1, "781a36ea24967b433fb5a206cfcd3997275c2b5ba6690c60ba8a7b0a1b25b5d5");
    /* Same meaning, other order, comments, defaults spelled out, other number forms. */
    cr_assert_eq(keel_jobspec_parse(&other,
                                    "[init]\nseed = 42\n[optimizer]\nepsilon = 0.00000001\n"
                                    "type = adam\nbeta2 = 0.9990\n; note\nlr = 1e-3\n"
                                    "[job]\nshards = 4\nname = fmnist-mlp\nreplication = 1\n"
                                    "model = mlp:784-256-128-10\ndataset = fashion-mnist\n"
                                    "test_dataset = fashion-mnist-test\nbatch_size = 64\n"
                                    "epochs = 10\nconsistency = ssp:2\n"
                                    "checkpoint_interval = 500\n"
                                    "[optimizer]\nlr_decay = 0.80\nlr_decay_every = 0235\n",
                                    "other", &err),
                 0, "%s", err.msg);
    keel_jobspec_digest_hex(&other, h2);
    cr_assert_str_eq(h1, h2);
    other.epochs = 11;
    keel_jobspec_digest_hex(&other, h2);
    cr_assert_str_neq(h1, h2);
}

struct bad_json {
    char text[400];
    char expect[96];
};

#define J_HEAD                                                                                     \
    "{\"batch_size\":64,\"checkpoint_interval\":1000,\"consistency\":\"bsp\",\"dataset\":\"d\","   \
    "\"epochs\":1,\"format\":1,"
#define J_INIT  "\"init\":{\"method\":\"glorot\",\"seed\":1},"
#define J_MODEL "\"model\":\"softmax:4-3\",\"name\":\"j\","
#define J_OPT   "\"optimizer\":{\"lr\":0.01,\"type\":\"sgd\"},"
#define J_TAIL  "\"replication\":2,\"shards\":8}"

static struct bad_json bad_jsons[] = {
    {"", "job spec: not JSON"},
    {"[1]", "job spec: not a JSON object"},
    {J_HEAD J_INIT J_MODEL J_OPT "\"replication\":2,\"shards\":8,\"x\":1}", "unknown key 'x'"},
    {J_HEAD J_INIT J_MODEL J_OPT "\"replication\":2}", "shards: missing"},
    {J_HEAD J_INIT J_MODEL J_OPT "\"replication\":2,\"shards\":0}", "[job] shards"},
    {J_HEAD J_INIT J_MODEL J_OPT "\"replication\":2,\"shards\":-1}", "shards: must be an integer"},
    {J_HEAD J_INIT J_MODEL J_OPT "\"replication\":\"2\",\"shards\":8}", "replication: must be"},
    {J_HEAD J_INIT "\"lost_ranges\":\"retry\"," J_MODEL J_OPT "\"replication\":2,\"shards\":8}",
     "lost_ranges: must be fail or rewind"},
    {J_HEAD J_INIT "\"model\":\"softmax:4\",\"name\":\"j\"," J_OPT J_TAIL, "model: softmax takes"},
    {J_HEAD J_INIT "\"model\":\"softmax:4-3\",\"name\":\"a b\"," J_OPT J_TAIL, "name: must be"},
    {J_HEAD J_INIT "\"model\":\"softmax:4-3\",\"name\":7," J_OPT J_TAIL, "name: must be a string"},
    {J_HEAD J_INIT J_MODEL "\"optimizer\":{\"lr\":0.01,\"type\":\"sgd\",\"beta1\":0.9}," J_TAIL,
     "optimizer: 'beta1' is not used by 'sgd'"},
    {J_HEAD J_INIT J_MODEL "\"optimizer\":{\"type\":\"sgd\"}," J_TAIL, "optimizer.lr: missing"},
    {J_HEAD J_INIT J_MODEL "\"optimizer\":{\"lr\":\"x\",\"type\":\"sgd\"}," J_TAIL,
     "optimizer.lr: must be a number"},
    {J_HEAD J_INIT J_MODEL "\"optimizer\":{\"lr\":0,\"type\":\"sgd\"}," J_TAIL, "[optimizer] lr"},
    {J_HEAD J_INIT J_MODEL "\"optimizer\":[]," J_TAIL, "optimizer: must be an object"},
    {J_HEAD J_INIT J_MODEL
     "\"optimizer\":{\"lr\":0.01,\"lr_decay_every\":5,\"type\":\"sgd\"}," J_TAIL,
     "optimizer.lr_decay: missing"},
    {J_HEAD J_INIT J_MODEL
     "\"optimizer\":{\"lr\":0.01,\"lr_decay\":0.5,\"lr_decay_every\":0,\"type\":\"sgd\"}," J_TAIL,
     "lr_decay_every is 0"},
    {J_HEAD J_INIT J_MODEL
     "\"optimizer\":{\"lr\":0.01,\"lr_decay\":2,\"lr_decay_every\":5,\"type\":\"sgd\"}," J_TAIL,
     "[optimizer] lr_decay: must be greater than 0 and at most 1"},
    {J_HEAD "\"init\":{\"method\":\"glorot\",\"seed\":1,\"scale\":0.1}," J_MODEL J_OPT J_TAIL,
     "init: 'scale' is used only"},
    {J_HEAD "\"init\":{\"method\":\"glorot\",\"seed\":-1}," J_MODEL J_OPT J_TAIL, "seed: must be"},
    {J_HEAD "\"init\":{\"method\":\"glorot\"}," J_MODEL J_OPT J_TAIL, "seed: missing"},
    {"{\"batch_size\":64,\"checkpoint_interval\":1000,\"consistency\":\"bsp\",\"dataset\":\"d\","
     "\"epochs\":1,\"format\":2," J_INIT J_MODEL J_OPT J_TAIL,
     "format: 2 is not the supported 1"},
    {J_HEAD J_INIT J_MODEL J_OPT "\"replication\":2,\"replication\":2,\"shards\":8}", "not JSON"},
};

ParameterizedTestParameters(jobspec, decoder_refuses_bad_json)
{
    return cr_make_param_array(struct bad_json, bad_jsons,
                               sizeof(bad_jsons) / sizeof(bad_jsons[0]));
}

ParameterizedTest(struct bad_json *c, jobspec, decoder_refuses_bad_json)
{
    struct keel_jobspec s;
    struct keel_error e;

    keel_error_init(&e);
    cr_assert_eq(keel_jobspec_decode(c->text, strlen(c->text), &s, &e), KEEL_ECORRUPT,
                 "accepted %s", c->text);
    cr_assert(strstr(e.msg, c->expect), "for %s\nwant '%s'\ngot  '%s'", c->text, c->expect, e.msg);
    cr_assert(strncmp(e.msg, "job spec: ", 10) == 0, "%s", e.msg);
}

Test(jobspec, decoder_accepts_the_reference_json)
{
    const char *text = J_HEAD J_INIT J_MODEL J_OPT J_TAIL;

    cr_assert_eq(keel_jobspec_decode(text, strlen(text), &spec, &err), 0, "%s", err.msg);
    cr_assert_str_eq(spec.name, "j");
}

Test(jobspec, the_learning_rate_falls_in_steps_of_lr_decay_every_clocks)
{
    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL "[optimizer]\nlr = 0.5\n", "t", &err), 0);
    cr_assert_eq(keel_jobspec_lr_at(&spec, 0), 0.5);
    cr_assert_eq(keel_jobspec_lr_at(&spec, UINT64_MAX), 0.5, "no decay: a constant rate");
    cr_assert_eq(keel_jobspec_parse(&spec,
                                    MINIMAL "[optimizer]\nlr = 0.5\nlr_decay = 0.5\n"
                                            "lr_decay_every = 10\n",
                                    "t", &err),
                 0, "%s", err.msg);
    cr_assert_eq(keel_jobspec_lr_at(&spec, 0), 0.5);
    cr_assert_eq(keel_jobspec_lr_at(&spec, 9), 0.5);
    cr_assert_eq(keel_jobspec_lr_at(&spec, 10), 0.25);
    cr_assert_eq(keel_jobspec_lr_at(&spec, 29), 0.125);
    cr_assert_eq(keel_jobspec_lr_at(&spec, 30), 0.0625);
}

/* ---- tables and initial rows ---------------------------------------------- */

Test(jobspec, mlp_has_one_table_per_layer)
{
    struct keel_table_desc t[KEEL_MODEL_MAX_LAYERS + 1];

    cr_assert_eq(keel_jobspec_parse(&spec,
                                    "[job]\nname = j\nmodel = mlp:784-256-128-10\ndataset = d\n",
                                    "t", &err),
                 0);
    cr_assert_eq(keel_jobspec_tables(&spec, t, KEEL_MODEL_MAX_LAYERS + 1), 3);
    cr_assert_eq(t[0].id, 1);
    cr_assert_eq(t[0].row_width, 785);
    cr_assert_eq(t[0].rows, 256);
    cr_assert_eq(t[1].id, 2);
    cr_assert_eq(t[1].row_width, 257);
    cr_assert_eq(t[1].rows, 128);
    cr_assert_eq(t[2].id, 3);
    cr_assert_eq(t[2].row_width, 129);
    cr_assert_eq(t[2].rows, 10);
    cr_assert_eq(t[2].in, 128);
    cr_assert_eq(t[2].out, 10);
    cr_assert_eq(keel_jobspec_tables(&spec, t, 1), 3, "the count does not depend on max");
}

Test(jobspec, initial_rows_are_deterministic_and_bounded)
{
    struct keel_table_desc t[2];
    float a[785], b[785], c[785];
    double bound = sqrt(6.0 / (784 + 256)), sum = 0;

    cr_assert_eq(keel_jobspec_parse(&spec, "[job]\nname = j\nmodel = mlp:784-256-10\ndataset = d\n",
                                    "t", &err),
                 0);
    keel_jobspec_tables(&spec, t, 2);
    keel_jobspec_init_row(&spec, &t[0], 17, a);
    keel_jobspec_init_row(&spec, &t[0], 17, b);
    keel_jobspec_init_row(&spec, &t[0], 18, c);
    cr_assert(memcmp(a, b, sizeof(a)) == 0, "the same row twice differs");
    cr_assert(memcmp(a, c, sizeof(a)) != 0, "two rows are equal");
    cr_assert_eq(a[784], 0.0f, "the bias starts at 0");
    for (int i = 0; i < 784; i++) {
        cr_assert(fabs(a[i]) <= bound, "weight %d is %g, bound %g", i, a[i], bound);
        sum += a[i];
    }
    cr_assert(fabs(sum / 784) < bound / 5, "mean %g is far from 0", sum / 784);
    spec.init.seed = 2;
    keel_jobspec_init_row(&spec, &t[0], 17, b);
    cr_assert(memcmp(a, b, sizeof(a)) != 0, "the seed changes nothing");
    spec.init.method = KEEL_INITIALIZER_ZEROS;
    keel_jobspec_init_row(&spec, &t[0], 17, b);
    for (int i = 0; i < 785; i++)
        cr_assert_eq(b[i], 0.0f);
}

/*
 * A submission's unique id: made fresh each time, carried by the JSON form
 * (checked on the way in) and part of the digest, so that two submissions
 * of one name are two jobs to a store; a spec without one encodes as before.
 */
Test(jobspec, a_submission_has_its_own_id_in_the_json_and_the_digest)
{
    struct keel_jobspec a, back;
    struct keel_buf b = KEEL_BUF_INIT;
    char h0[65], h1[65], h2[65];

    cr_assert_eq(keel_jobspec_parse(&spec, MINIMAL, "t", &err), 0, "%s", err.msg);
    keel_jobspec_digest_hex(&spec, h0);
    keel_jobspec_encode(&spec, &b);
    cr_assert_null(strstr((const char *)b.buf, "uid"), "no id before a submission");
    keel_buf_reset(&b);

    a = spec;
    cr_assert_eq(keel_jobspec_new_uid(&a, &err), 0, "%s", err.msg);
    cr_assert_eq(strlen(a.uid), KEEL_JOB_UID_HEX);
    cr_assert_eq(strspn(a.uid, "0123456789abcdef"), KEEL_JOB_UID_HEX);
    keel_jobspec_encode(&a, &b);
    cr_assert_eq(keel_jobspec_decode(b.buf, b.len, &back, &err), 0, "%s", err.msg);
    cr_assert_str_eq(back.uid, a.uid);
    keel_jobspec_digest_hex(&a, h1);
    cr_assert_str_neq(h0, h1, "the id is part of the digest");
    keel_jobspec_digest_hex(&back, h2);
    cr_assert_str_eq(h1, h2);
    cr_assert_eq(keel_jobspec_new_uid(&back, &err), 0, "%s", err.msg);
    cr_assert_str_neq(back.uid, a.uid, "each submission gets a new id");
    keel_jobspec_digest_hex(&back, h2);
    cr_assert_str_neq(h1, h2);
    keel_buf_release(&b);
}

Test(jobspec, a_bad_id_is_refused)
{
    static const char *const bad[] = {"\"uid\":\"abc\",", "\"uid\":7,",
                                      "\"uid\":\"0123456789ABCDEF0123456789abcdef\",",
                                      "\"uid\":\"0123456789abcdef0123456789abcdeg\","};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[512];
        struct keel_jobspec out;

        snprintf(text, sizeof(text),
                 "{%s\"batch_size\":64,\"checkpoint_interval\":1000,\"consistency\":\"bsp\","
                 "\"dataset\":\"d\",\"epochs\":1,\"format\":1,\"init\":{\"method\":\"glorot\","
                 "\"seed\":1},\"model\":\"softmax:4-3\",\"name\":\"a\",\"optimizer\":{\"lr\":0.01,"
                 "\"type\":\"sgd\"},\"replication\":2,\"shards\":8}",
                 bad[i]);
        cr_assert_eq(keel_jobspec_decode(text, strlen(text), &out, &err), KEEL_ECORRUPT, "%s",
                     text);
        cr_assert(strstr(err.msg, "uid") != NULL, "%s", err.msg);
    }
}
