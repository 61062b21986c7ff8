/*
 * test_config.c - defaults, INI loading, overrides and rejection of bad values.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "keel/config.h"
#include "log.h"

static struct keel_config cfg;
static struct keel_error err;
static char path[64];

static void setup(void)
{
    keel_config_init(&cfg);
    keel_error_init(&err);
    snprintf(path, sizeof(path), "/tmp/keel-test-config-%d.ini", (int)getpid());
}

static void teardown(void)
{
    keel_config_release(&cfg);
    unlink(path);
}

static void write_file(const char *text)
{
    FILE *f = fopen(path, "w");

    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

TestSuite(config, .init = setup, .fini = teardown);

Test(config, defaults_are_set_and_valid)
{
    cr_assert_str_eq(cfg.cluster_name, "keel");
    cr_assert_str_eq(cfg.node_id, "");
    cr_assert_eq(cfg.io_threads, 2);
    cr_assert_eq(cfg.max_frame_size, 64u << 20);
    cr_assert_eq(cfg.handshake_timeout_ms, 10000);
    cr_assert_eq(cfg.log_level, KEEL_LOG_LEVEL_INFO);
    cr_assert_eq(keel_config_validate(&cfg, NULL, &err), 0, "%s", err.msg);
}

Test(config, file_values_are_read_with_units)
{
    write_file("; a comment\n"
               "[node]\n"
               "id = s1\n"
               "listen = 127.0.0.1:7000\n"
               "[net]\n"
               "io_threads = 4\n"
               "max_frame_size = 1M\n"
               "idle_timeout = 2m\n"
               "request_timeout = 250ms\n"
               "[log]\n"
               "level = debug\n");
    cr_assert_eq(keel_config_load(&cfg, path, &err), 0, "%s", err.msg);
    cr_assert_str_eq(cfg.node_id, "s1");
    cr_assert_str_eq(cfg.listen, "127.0.0.1:7000");
    cr_assert_eq(cfg.io_threads, 4);
    cr_assert_eq(cfg.max_frame_size, 1u << 20);
    cr_assert_eq(cfg.idle_timeout_ms, 120000);
    cr_assert_eq(cfg.request_timeout_ms, 250);
    cr_assert_eq(cfg.log_level, KEEL_LOG_LEVEL_DEBUG);
}

Test(config, overrides_win_over_file)
{
    write_file("[net]\nio_threads = 4\n");
    cr_assert_eq(keel_config_load(&cfg, path, &err), 0);
    cr_assert_eq(keel_config_set(&cfg, "net.io_threads=8", &err), 0, "%s", err.msg);
    cr_assert_eq(cfg.io_threads, 8);
    cr_assert_eq(keel_config_set(&cfg, "node.id=w-2_b", &err), 0, "%s", err.msg);
    cr_assert_str_eq(cfg.node_id, "w-2_b");
}

Test(config, missing_file_gives_errno)
{
    cr_assert_eq(keel_config_load(&cfg, "/nonexistent/keel.ini", &err), -ENOENT);
    cr_assert(strstr(err.msg, "/nonexistent/keel.ini") != NULL, "%s", err.msg);
}

Test(config, unknown_key_is_named_with_line)
{
    write_file("[net]\nio_threads = 2\nio_threadz = 3\n");
    cr_assert_eq(keel_config_load(&cfg, path, &err), KEEL_ECONFIG);
    cr_assert(strstr(err.msg, ":3: unknown key 'io_threadz' in section [net]") != NULL, "%s",
              err.msg);
}

Test(config, unknown_section_is_named)
{
    write_file("[nett]\nio_threads = 2\n");
    cr_assert_eq(keel_config_load(&cfg, path, &err), KEEL_ECONFIG);
    cr_assert(strstr(err.msg, "unknown section [nett]") != NULL, "%s", err.msg);
}

Test(config, syntax_error_gives_line)
{
    write_file("[net]\nthis line has no equals sign\n");
    cr_assert_eq(keel_config_load(&cfg, path, &err), KEEL_ECONFIG);
    cr_assert(strstr(err.msg, ":2: syntax error") != NULL, "%s", err.msg);
}

/* Arrays, not pointers: Criterion copies parameters into each test's process. */
struct bad_value {
    char assignment[80];
    char expect[64]; /* substring of the message */
};

ParameterizedTestParameters(config, bad_values_are_rejected_naming_the_option)
{
    static struct bad_value cases[] = {
        {"net.io_threads=0", "[net] io_threads: must be between 1 and 64, got '0'"},
        {"net.io_threads=65", "[net] io_threads: must be between 1 and 64"},
        {"net.io_threads=-1", "[net] io_threads: must be a non-negative integer"},
        {"net.io_threads=two", "[net] io_threads: must be a non-negative integer, got 'two'"},
        {"net.io_threads=99999999999999999999999", "[net] io_threads"},
        {"net.max_frame_size=12Q", "[net] max_frame_size: must be a size"},
        {"net.max_frame_size=1K", "[net] max_frame_size: must be between 4096 and"},
        {"net.max_frame_size=99999999999G", "[net] max_frame_size: must be a size"},
        {"net.idle_timeout=5 parsecs", "[net] idle_timeout: must be a duration"},
        {"net.idle_timeout=1ms", "[net] idle_timeout: must be between 100 and"},
        {"node.id=has space", "[node] id: must be 1-64 of"},
        {"node.id=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
         "[node] id: must be 1-64 of"},
        {"node.listen=localhost", "[node] listen: must be host:port"},
        {"node.listen=127.0.0.1:70000", "[node] listen: must be host:port"},
        {"node.listen=:80", "[node] listen: must be host:port"},
        {"cluster.etcd=ftp://x", "[cluster] etcd: must be comma-separated http"},
        {"cluster.etcd=http://a:1,", "[cluster] etcd: must be comma-separated http"},
        {"cluster.etcd=", "[cluster] etcd"},
        {"log.level=loud", "[log] level: must be error, warn, info, debug or trace"},
        {"net.nothing=1", "unknown key 'nothing' in section [net]"},
        {"nosuch.key=1", "unknown section [nosuch]"},
        {"novalue", "is not section.key=value"},
        {".key=1", "is not section.key=value"},
    };
    return cr_make_param_array(struct bad_value, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct bad_value *c, config, bad_values_are_rejected_naming_the_option)
{
    cr_assert_eq(keel_config_set(&cfg, c->assignment, &err), KEEL_ECONFIG, "'%s' accepted",
                 c->assignment);
    cr_assert(strstr(err.msg, c->expect) != NULL, "'%s': message '%s' lacks '%s'", c->assignment,
              err.msg, c->expect);
}

Test(config, bad_value_leaves_previous_value)
{
    cr_assert_eq(keel_config_set(&cfg, "net.io_threads=0", &err), KEEL_ECONFIG);
    cr_assert_eq(cfg.io_threads, 2);
}

Test(config, required_options_must_be_set)
{
    static const char *const required[] = {"node.id", "node.data_dir", NULL};

    keel_config_set(&cfg, "node.id=s1", &err);
    cr_assert_eq(keel_config_validate(&cfg, required, &err), KEEL_ECONFIG);
    cr_assert_str_eq(err.msg, "[node] data_dir: must be set");
    keel_config_set(&cfg, "node.data_dir=/tmp/x", &err);
    cr_assert_eq(keel_config_validate(&cfg, required, &err), 0, "%s", err.msg);
}

Test(config, tls_cert_without_key_is_refused)
{
    keel_config_set(&cfg, "tls.cert=/a.pem", &err);
    cr_assert_eq(keel_config_validate(&cfg, NULL, &err), KEEL_ECONFIG);
    cr_assert(strstr(err.msg, "[tls] key") != NULL, "%s", err.msg);
}

Test(config, dump_round_trips_through_load)
{
    struct keel_config again;
    FILE *f;

    keel_config_set(&cfg, "node.id=n7", &err);
    keel_config_set(&cfg, "net.idle_timeout=3s", &err);
    keel_config_set(&cfg, "log.level=warn", &err);
    f = fopen(path, "w");
    keel_config_dump(&cfg, f);
    fclose(f);
    keel_config_init(&again);
    cr_assert_eq(keel_config_load(&again, path, &err), 0, "%s", err.msg);
    cr_assert_str_eq(again.node_id, "n7");
    cr_assert_eq(again.idle_timeout_ms, 3000);
    cr_assert_eq(again.log_level, KEEL_LOG_LEVEL_WARN);
    cr_assert_eq(again.max_frame_size, cfg.max_frame_size);
    keel_config_release(&again);
}
