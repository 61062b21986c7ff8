/*
 * fuzz_cert_identity.c - libFuzzer target for keel_cert_identity().
 *
 * The input is either a DER certificate (first byte 0x30), or a list of
 * subjectAltNames separated by '\n', each a type byte ('U' URI, 'D' DNS,
 * 'I' IP; anything else is a URI) followed by raw bytes, NULs included,
 * which are put into a certificate as they are.  Any input must give an
 * identity or a refusal, never read out of bounds (ASan watches).  An
 * accepted identity must be checked against the SANs independently: exactly
 * one URI with the scheme "keel" (any case), and it is exactly
 * "keel://" + role name + "/" + id, with a valid role and id.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "identity.h"

#define MAX_NAMES 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_accepted(const struct keel_cert_identity *id, const uint8_t *names[],
                           const size_t lens[], const int types[], int n)
{
    char want[128];
    int keel = 0, match = 0;

    if (id->role < KEEL_ROLE_COORDINATOR || id->role > KEEL_ROLE_ADMIN ||
        !keel_certs_id_valid(id->id))
        abort();
    snprintf(want, sizeof(want), "keel://%s/%s", keel_role_name(id->role), id->id);
    for (int i = 0; i < n; i++) {
        if (types[i] != GEN_URI || lens[i] < 5 || strncasecmp((const char *)names[i], "keel:", 5))
            continue;
        keel++;
        if (lens[i] == strlen(want) && memcmp(names[i], want, lens[i]) == 0)
            match++;
    }
    if (keel != 1 || match != 1) {
        fprintf(stderr, "accepted %s with %d keel URIs, %d matching\n", want, keel, match);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *names[MAX_NAMES];
    size_t lens[MAX_NAMES];
    int types[MAX_NAMES], n = 0;
    struct keel_cert_identity id;
    struct keel_error err;
    GENERAL_NAMES *gens;
    X509 *x;

    keel_error_init(&err);
    if (size > 0 && data[0] == 0x30) {
        const unsigned char *p = data;
        x = d2i_X509(NULL, &p, (long)size);
        if (x != NULL) {
            (void)keel_cert_identity(x, &id, &err);
            X509_free(x);
        }
        ERR_clear_error();
        return 0;
    }
    x = X509_new();
    gens = sk_GENERAL_NAME_new_null();
    if (x == NULL || gens == NULL)
        abort();
    for (size_t off = 0; off < size && n < MAX_NAMES;) {
        const uint8_t *end = memchr(data + off, '\n', size - off);
        size_t len = end ? (size_t)(end - (data + off)) : size - off;
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_STRING *s = ASN1_STRING_type_new(V_ASN1_IA5STRING);
        uint8_t t = len ? data[off] : 'U';

        types[n] = t == 'D' ? GEN_DNS : t == 'I' ? GEN_IPADD : GEN_URI;
        if (types[n] == GEN_IPADD) {
            ASN1_STRING_free(s);
            s = ASN1_OCTET_STRING_new();
        }
        names[n] = data + off + (len ? 1 : 0);
        lens[n] = len ? len - 1 : 0;
        if (g == NULL || s == NULL || !ASN1_STRING_set(s, names[n], (int)lens[n]))
            abort();
        GENERAL_NAME_set0_value(g, types[n], s);
        sk_GENERAL_NAME_push(gens, g);
        n++;
        off += len + 1;
    }
    if (n > 0 && !X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT))
        abort();
    if (keel_cert_identity(x, &id, &err) == 0)
        check_accepted(&id, names, lens, types, n);
    else if (err.code != KEEL_EPERM || err.msg[0] == '\0')
        abort();
    GENERAL_NAMES_free(gens);
    X509_free(x);
    ERR_clear_error();
    return 0;
}
