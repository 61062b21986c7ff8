/*
 * test_err.c - error codes, names, messages and the error buffer.
 */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "keel/err.h"

Test(err, codes_are_negative_and_distinct_from_errno)
{
    cr_assert_eq(KEEL_OK, 0);
    cr_assert_lt(KEEL_EINVAL, -4096, "keel codes must not collide with -errno");
    cr_assert_lt(KEEL_ECANCELED, 0);
    cr_assert(keel_err_is_keel(KEEL_EMAGIC));
    cr_assert_not(keel_err_is_keel(-ENOENT));
    cr_assert_not(keel_err_is_keel(0));
}

Test(err, every_keel_code_has_a_name_and_message)
{
    for (int c = KEEL__ERR_FIRST + 1; c < KEEL__ERR_LAST; c++) {
        cr_assert_eq(strncmp(keel_err_name(c), "KEEL_E", 6), 0, "code %d: %s", c, keel_err_name(c));
        cr_assert_neq(strcmp(keel_strerror(c), "unknown error"), 0, "code %d", c);
    }
    cr_assert_str_eq(keel_err_name(KEEL_EUNSORTED), "KEEL_EUNSORTED");
    cr_assert_str_eq(keel_strerror(KEEL_EUNSORTED), "keys not strictly increasing");
}

Test(err, system_errors_use_errno_text)
{
    cr_assert_str_eq(keel_err_name(-ENOENT), "ENOENT");
    cr_assert_str_eq(keel_strerror(-ENOENT), strerror(ENOENT));
    cr_assert_str_eq(keel_err_name(0), "KEEL_OK");
    cr_assert_str_eq(keel_strerror(0), "success");
}

Test(err, unknown_codes_never_return_null)
{
    cr_assert_str_eq(keel_err_name(12345), "UNKNOWN");
    cr_assert_str_eq(keel_strerror(-99999), "unknown error");
    cr_assert_str_eq(keel_err_name(KEEL__ERR_LAST), "UNKNOWN");
}

Test(err, set_returns_code_and_formats_message)
{
    struct keel_error e;

    keel_error_init(&e);
    cr_assert_eq(keel_err_set(&e, KEEL_ENOTFOUND, "cannot find '%s'", "x"), KEEL_ENOTFOUND);
    cr_assert_eq(e.code, KEEL_ENOTFOUND);
    cr_assert_str_eq(e.msg, "cannot find 'x'");
}

Test(err, set_with_null_buffer_only_returns_code)
{
    cr_assert_eq(keel_err_set(NULL, KEEL_EPERM, "ignored %d", 1), KEEL_EPERM);
    cr_assert_eq(keel_err_prefix(NULL, KEEL_ESTORE, "x"), KEEL_ESTORE);
}

Test(err, prefix_adds_context_and_keeps_code)
{
    struct keel_error e;

    keel_error_init(&e);
    keel_err_set(&e, KEEL_ECONFIG, "unknown key 'a'");
    cr_assert_eq(keel_err_prefix(&e, KEEL_EINVAL, "%s:%d", "f.ini", 3), KEEL_ECONFIG);
    cr_assert_str_eq(e.msg, "f.ini:3: unknown key 'a'");
}

Test(err, long_messages_are_cut_not_overflowed)
{
    struct keel_error e;
    char big[1000];

    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    keel_err_set(&e, KEEL_EINVAL, "%s", big);
    cr_assert_eq(strlen(e.msg), KEEL_ERROR_MSG_MAX - 1);
    keel_err_prefix(&e, KEEL_EINVAL, "ctx");
    cr_assert_eq(strlen(e.msg), KEEL_ERROR_MSG_MAX - 1);
    cr_assert_eq(strncmp(e.msg, "ctx: aaa", 8), 0);
}
