/*
 * fuzz_jobspec.c - libFuzzer target for the job spec's JSON decoder and its
 * INI parser.
 *
 * Every input goes to both: the JSON decoder, and (up to its first NUL) the
 * INI parser.  Whatever is accepted must be valid, encode to canonical JSON
 * that decodes back, and encode to the same bytes again; whatever is refused
 * must say why.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/jobspec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_accepted(const struct keel_jobspec *spec, const char *how)
{
    struct keel_buf once = KEEL_BUF_INIT, twice = KEEL_BUF_INIT;
    struct keel_jobspec back;
    struct keel_error err;

    keel_error_init(&err);
    if (keel_jobspec_validate(spec, &err) != 0) {
        fprintf(stderr, "%s accepted an invalid spec: %s\n", how, err.msg);
        abort();
    }
    keel_jobspec_encode(spec, &once);
    if (keel_jobspec_decode(once.buf, once.len, &back, &err) != 0) {
        fprintf(stderr, "canonical form of a spec from %s does not decode: %s\n%s\n", how, err.msg,
                (const char *)once.buf);
        abort();
    }
    keel_jobspec_encode(&back, &twice);
    if (once.len != twice.len || memcmp(once.buf, twice.buf, once.len) != 0) {
        fprintf(stderr, "round trip changed the spec from %s:\n%s\n%s\n", how,
                (const char *)once.buf, (const char *)twice.buf);
        abort();
    }
    keel_buf_release(&once);
    keel_buf_release(&twice);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_jobspec spec;
    struct keel_error err;
    char *text;

    keel_error_init(&err);
    if (keel_jobspec_decode(data, size, &spec, &err) == 0)
        check_accepted(&spec, "JSON");
    else if (err.msg[0] == '\0')
        abort();

    /* The same bytes as an INI file (up to the first NUL). */
    text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    keel_error_init(&err);
    if (keel_jobspec_parse(&spec, text, "fuzz.ini", &err) == 0)
        check_accepted(&spec, "INI");
    else if (strncmp(err.msg, "fuzz.ini", 8) != 0) {
        fprintf(stderr, "INI error does not name the file: %s\n", err.msg);
        abort();
    }
    free(text);
    return 0;
}
