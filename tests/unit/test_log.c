/*
 * test_log.c - levels, line format, and arguments not evaluated below the level.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "log.h"

static int evaluations;

static int count_evaluation(void)
{
    return ++evaluations;
}

static char line[4096];

/* Log through a temporary file and read back what was written. */
static void capture(int level, void (*emit)(void))
{
    FILE *f = tmpfile();
    size_t n;

    cr_assert_not_null(f);
    keel_log_init("test-comp", level, f);
    emit();
    rewind(f);
    n = fread(line, 1, sizeof(line) - 1, f);
    line[n] = '\0';
    fclose(f);
    keel_log_init("test", KEEL_LOG_LEVEL_INFO, NULL);
}

static void emit_debug_with_side_effect(void)
{
    KEEL_LOG_DEBUG("value %d", count_evaluation());
}

static void emit_info(void)
{
    KEEL_LOG_INFO("hello %s", "world");
}

Test(log, arguments_below_level_are_not_evaluated)
{
    evaluations = 0;
    capture(KEEL_LOG_LEVEL_INFO, emit_debug_with_side_effect);
    cr_assert_eq(evaluations, 0);
    cr_assert_str_eq(line, "");
    capture(KEEL_LOG_LEVEL_DEBUG, emit_debug_with_side_effect);
    cr_assert_eq(evaluations, 1);
    cr_assert(strstr(line, "value 1") != NULL, "%s", line);
}

Test(log, line_has_time_level_component_pid)
{
    char expect[64];

    capture(KEEL_LOG_LEVEL_INFO, emit_info);
    snprintf(expect, sizeof(expect), " INFO  test-comp[%d] hello world\n", (int)getpid());
    cr_assert(strstr(line, expect) != NULL, "line: %s", line);
    /* 2026-11-25T16:45:59.123Z */
    cr_assert_eq(line[4], '-');
    cr_assert_eq(line[10], 'T');
    cr_assert_eq(line[19], '.');
    cr_assert_eq(line[23], 'Z');
}

Test(log, level_names_parse_both_ways)
{
    cr_assert_eq(keel_log_level_parse("warn"), KEEL_LOG_LEVEL_WARN);
    cr_assert_eq(keel_log_level_parse("TRACE"), KEEL_LOG_LEVEL_TRACE);
    cr_assert_eq(keel_log_level_parse("verbose"), -1);
    cr_assert_str_eq(keel_log_level_name(KEEL_LOG_LEVEL_ERROR), "error");
    cr_assert_str_eq(keel_log_level_name(99), "unknown");
}

Test(log, set_level_clamps)
{
    keel_log_set_level(100);
    cr_assert_eq(keel_log_get_level(), KEEL_LOG_LEVEL_TRACE);
    keel_log_set_level(-5);
    cr_assert_eq(keel_log_get_level(), KEEL_LOG_LEVEL_ERROR);
    keel_log_set_level(KEEL_LOG_LEVEL_INFO);
}
