/*
 * test_certs.c - the cluster CA, issued node certificates (chain, extensions,
 * file modes), the CRL, and reading a certificate's keel:// identity.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "ca.h"

static char dir[64];
static char other[128]; /* a second CA */

static void rm_tree(const char *path)
{
    char cmd[256];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    cr_assert_eq(system(cmd), 0);
}

static void make_ca(const char *d)
{
    struct keel_certs_ca_opts o = {.dir = d};
    struct keel_error err;

    keel_error_init(&err);
    cr_assert_eq(keel_certs_ca_create(&o, &err), 0, "ca: %s", err.msg);
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/keel-certs-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(other, sizeof(other), "%s/other", dir);
    cr_assert_eq(mkdir(other, 0700), 0);
    umask(0); /* the modes below must not depend on the caller's umask */
    make_ca(dir);
}

static void teardown(void)
{
    umask(022);
    rm_tree(dir);
}

static struct keel_certs_issue_opts opts(enum keel_role role, const char *id)
{
    struct keel_certs_issue_opts o;

    memset(&o, 0, sizeof(o));
    o.ca_dir = dir;
    o.out_dir = dir;
    o.role = role;
    o.id = id;
    return o;
}

/* Issue and load the certificate; *out gets the paths. */
static X509 *issue(const struct keel_certs_issue_opts *o, struct keel_certs_issued *out)
{
    struct keel_error err;
    X509 *x;

    keel_error_init(&err);
    cr_assert_eq(keel_certs_issue(o, out, &err), 0, "issue: %s", err.msg);
    x = keel_certs_load_cert(out->cert_path, &err);
    cr_assert_not_null(x, "load: %s", err.msg);
    return x;
}

static X509 *load(const char *d, const char *name)
{
    char path[256];
    struct keel_error err;
    X509 *x;

    snprintf(path, sizeof(path), "%s/%s", d, name);
    keel_error_init(&err);
    x = keel_certs_load_cert(path, &err);
    cr_assert_not_null(x, "load: %s", err.msg);
    return x;
}

/* X509_verify_cert() of `x` against the CA in `ca_dir` (and its CRL when `crl`). */
static int verify(X509 *x, const char *ca_dir, int crl, int purpose)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509 *ca = load(ca_dir, "ca.crt");
    int rc;

    cr_assert_eq(X509_STORE_add_cert(store, ca), 1);
    if (crl) {
        char path[256];
        FILE *f;
        X509_CRL *c;

        snprintf(path, sizeof(path), "%s/ca.crl", ca_dir);
        f = fopen(path, "r");
        cr_assert_not_null(f);
        c = PEM_read_X509_CRL(f, NULL, NULL, NULL);
        fclose(f);
        cr_assert_not_null(c);
        cr_assert_eq(X509_STORE_add_crl(store, c), 1);
        X509_CRL_free(c);
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    cr_assert_eq(X509_STORE_CTX_init(ctx, store, x, NULL), 1);
    if (purpose)
        X509_STORE_CTX_set_purpose(ctx, purpose);
    rc = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(ca);
    return rc;
}

static int ext_critical(X509 *x, int nid)
{
    int idx = X509_get_ext_by_NID(x, nid, -1);

    cr_assert_geq(idx, 0, "extension %s missing", OBJ_nid2sn(nid));
    return X509_EXTENSION_get_critical(X509_get_ext(x, idx));
}

static mode_t mode_of(const char *path)
{
    struct stat st;

    cr_assert_eq(stat(path, &st), 0, "stat %s", path);
    return st.st_mode & 07777;
}

TestSuite(certs, .init = setup, .fini = teardown);

/* ---- the CA ---- */

Test(certs, ca_is_a_ca_with_its_extensions_and_modes)
{
    char path[256];
    X509 *ca = load(dir, "ca.crt");

    cr_assert_eq(X509_check_ca(ca), 1);
    cr_assert(ext_critical(ca, NID_basic_constraints));
    cr_assert(ext_critical(ca, NID_key_usage));
    cr_assert_eq(X509_get_key_usage(ca), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    cr_assert_not_null(X509_get0_subject_key_id(ca));
    cr_assert_eq(X509_check_issued(ca, ca), X509_V_OK);
    cr_assert_eq(EVP_PKEY_get_base_id(X509_get0_pubkey(ca)), EVP_PKEY_EC);
    cr_assert_eq(verify(ca, dir, 0, 0), X509_V_OK);
    /* ten years by default */
    cr_assert_gt(ASN1_TIME_cmp_time_t(X509_get0_notAfter(ca), time(NULL) + 3649L * 86400), 0);
    cr_assert_lt(ASN1_TIME_cmp_time_t(X509_get0_notAfter(ca), time(NULL) + 3651L * 86400), 0);
    snprintf(path, sizeof(path), "%s/ca.key", dir);
    cr_assert_eq(mode_of(path), 0600);
    snprintf(path, sizeof(path), "%s/ca.crt", dir);
    cr_assert_eq(mode_of(path), 0644);
    X509_free(ca);
}

Test(certs, ca_refuses_to_overwrite_unless_forced)
{
    struct keel_certs_ca_opts o = {.dir = dir};
    struct keel_error err;
    X509 *before = load(dir, "ca.crt"), *after;

    keel_error_init(&err);
    cr_assert_eq(keel_certs_ca_create(&o, &err), KEEL_EEXIST);
    cr_assert(strstr(err.msg, "ca.key' already exists") != NULL, "%s", err.msg);
    after = load(dir, "ca.crt");
    cr_assert_eq(X509_cmp(before, after), 0);
    X509_free(after);
    o.force = 1;
    cr_assert_eq(keel_certs_ca_create(&o, &err), 0, "%s", err.msg);
    after = load(dir, "ca.crt");
    cr_assert_neq(X509_cmp(before, after), 0);
    X509_free(after);
    X509_free(before);
}

Test(certs, ca_refuses_bad_days_and_missing_dir)
{
    struct keel_certs_ca_opts o = {.dir = other, .days = KEEL_CERTS_MAX_DAYS + 1};
    char missing[256];
    struct keel_error err;

    keel_error_init(&err);
    cr_assert_eq(keel_certs_ca_create(&o, &err), KEEL_EINVAL);
    snprintf(missing, sizeof(missing), "%s/nope", dir);
    o.dir = missing;
    o.days = 0;
    cr_assert_eq(keel_certs_ca_create(&o, &err), -ENOENT);
    cr_assert(strstr(err.msg, "nope") != NULL, "%s", err.msg);
}

/* ---- issued certificates ---- */

Test(certs, issued_cert_verifies_against_its_ca_for_client_and_server)
{
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_WORKER, "w1");
    struct keel_certs_issued out;
    X509 *x = issue(&o, &out);

    cr_assert_eq(verify(x, dir, 0, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
    cr_assert_eq(verify(x, dir, 0, X509_PURPOSE_SSL_SERVER), X509_V_OK);
    make_ca(other);
    cr_assert_eq(verify(x, other, 0, 0), X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
    X509_free(x);
}

Test(certs, issued_cert_has_usages_and_identifiers)
{
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_SERVER, "s-1");
    struct keel_certs_issued out;
    X509 *x = issue(&o, &out);
    X509 *ca = load(dir, "ca.crt");

    cr_assert_eq(X509_check_ca(x), 0);
    cr_assert(ext_critical(x, NID_basic_constraints));
    cr_assert(ext_critical(x, NID_key_usage));
    cr_assert_eq(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE);
    cr_assert_eq(X509_get_extended_key_usage(x), XKU_SSL_SERVER | XKU_SSL_CLIENT);
    cr_assert_not_null(X509_get0_subject_key_id(x));
    cr_assert_eq(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(x), X509_get0_subject_key_id(ca)),
                 0);
    cr_assert_eq(X509_check_issued(ca, x), X509_V_OK);
    cr_assert_eq(EVP_PKEY_get_base_id(X509_get0_pubkey(x)), EVP_PKEY_EC);
    X509_free(ca);
    X509_free(x);
}

Test(certs, key_is_0600_cert_is_0644_and_they_match)
{
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_COORDINATOR, "c1");
    struct keel_certs_issued out;
    X509 *x = issue(&o, &out);
    char want[256];
    EVP_PKEY *k;
    FILE *f;

    snprintf(want, sizeof(want), "%s/coordinator-c1.key", dir);
    cr_assert_str_eq(out.key_path, want);
    snprintf(want, sizeof(want), "%s/coordinator-c1.crt", dir);
    cr_assert_str_eq(out.cert_path, want);
    cr_assert_eq(mode_of(out.key_path), 0600);
    cr_assert_eq(mode_of(out.cert_path), 0644);
    f = fopen(out.key_path, "r");
    cr_assert_not_null(f);
    k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    cr_assert_not_null(k);
    cr_assert_eq(X509_check_private_key(x, k), 1);
    EVP_PKEY_free(k);
    X509_free(x);
}

Test(certs, serial_is_random_positive_and_reported)
{
    struct keel_certs_issue_opts a = opts(KEEL_ROLE_WORKER, "a"), b = opts(KEEL_ROLE_WORKER, "b");
    struct keel_certs_issued oa, ob;
    X509 *xa = issue(&a, &oa), *xb = issue(&b, &ob);
    char hex[KEEL_CERTS_SERIAL_HEX];
    const ASN1_INTEGER *s = X509_get0_serialNumber(xa);

    cr_assert_eq(ASN1_STRING_type(s), V_ASN1_INTEGER); /* positive */
    cr_assert_leq(ASN1_STRING_length(s), 16);
    cr_assert_gt(ASN1_STRING_length(s), 8); /* 2^-64 chance of a false failure */
    cr_assert_neq(ASN1_INTEGER_cmp(s, X509_get0_serialNumber(xb)), 0);
    cr_assert_eq(keel_certs_serial_hex(xa, hex, sizeof(hex)), 0);
    cr_assert_str_eq(hex, oa.serial);
    cr_assert_str_neq(oa.serial, ob.serial);
    X509_free(xa);
    X509_free(xb);
}

Test(certs, default_sans_are_loopback_and_localhost)
{
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_WORKER, "w1");
    struct keel_certs_issued out;
    X509 *x = issue(&o, &out);

    cr_assert_eq(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
    cr_assert_eq(X509_check_host(x, "localhost", 0, 0, NULL), 1);
    cr_assert_eq(X509_check_host(x, "example.com", 0, 0, NULL), 0);
    X509_free(x);
}

Test(certs, given_sans_replace_the_defaults)
{
    static const char *const sans[] = {"IP:10.1.2.3", "::1", "DNS:ps-1.example", "node7.lan"};
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_SERVER, "s1");
    struct keel_certs_issued out;
    X509 *x;

    o.sans = sans;
    o.nsans = 4;
    x = issue(&o, &out);
    cr_assert_eq(X509_check_ip_asc(x, "10.1.2.3", 0), 1);
    cr_assert_eq(X509_check_ip_asc(x, "::1", 0), 1);
    cr_assert_eq(X509_check_host(x, "ps-1.example", 0, 0, NULL), 1);
    cr_assert_eq(X509_check_host(x, "node7.lan", 0, 0, NULL), 1);
    cr_assert_eq(X509_check_ip_asc(x, "127.0.0.1", 0), 0);
    cr_assert_eq(X509_check_host(x, "localhost", 0, 0, NULL), 0);
    X509_free(x);
}

Test(certs, bad_sans_are_refused_and_leave_no_file)
{
    static const char *const bad[] = {"IP:1.2.3.999", "DNS:a..b", "bad name",
                                      "DNS:", "DNS:x,URI:keel://admin/root"};
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_WORKER, "w1");
    struct keel_error err;
    char path[256];

    keel_error_init(&err);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o.sans = &bad[i];
        o.nsans = 1;
        cr_assert_eq(keel_certs_issue(&o, NULL, &err), KEEL_EINVAL, "%s", bad[i]);
        cr_assert(strstr(err.msg, "bad SAN") != NULL || strstr(err.msg, "bad IP") != NULL, "%s",
                  err.msg);
    }
    snprintf(path, sizeof(path), "%s/worker-w1.key", dir);
    cr_assert_neq(access(path, F_OK), 0);
}

Test(certs, bad_role_and_bad_id_are_refused)
{
    struct keel_certs_issue_opts o = opts((enum keel_role)9, "w1");
    struct keel_error err;
    char long_id[80];

    keel_error_init(&err);
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "role") != NULL, "%s", err.msg);
    o = opts(KEEL_ROLE_WORKER, "w/1");
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "bad id 'w/1'") != NULL, "%s", err.msg);
    o.id = "";
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), KEEL_EINVAL);
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    o.id = long_id;
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), KEEL_EINVAL);
    long_id[64] = '\0';
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), 0, "%s", err.msg);
}

Test(certs, missing_ca_is_notfound)
{
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_WORKER, "w1");
    struct keel_error err;

    keel_error_init(&err);
    o.ca_dir = other;
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), KEEL_ENOTFOUND);
    cr_assert(strstr(err.msg, "other/ca.crt") != NULL, "%s", err.msg);
}

Test(certs, mismatched_ca_key_is_refused)
{
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_WORKER, "w1");
    struct keel_error err;
    char from[256], to[256];

    make_ca(other);
    snprintf(from, sizeof(from), "%s/ca.key", other);
    snprintf(to, sizeof(to), "%s/ca.key", dir);
    cr_assert_eq(rename(from, to), 0);
    keel_error_init(&err);
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), KEEL_ETLS);
    cr_assert(strstr(err.msg, "does not match") != NULL, "%s", err.msg);
}

Test(certs, existing_pair_is_refused_unless_forced)
{
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_WORKER, "w1");
    struct keel_certs_issued a, b;
    struct keel_error err;
    X509 *x = issue(&o, &a), *y;

    keel_error_init(&err);
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), KEEL_EEXIST);
    cr_assert(strstr(err.msg, "already exists") != NULL, "%s", err.msg);
    o.force = 1;
    y = issue(&o, &b);
    cr_assert_str_neq(a.serial, b.serial);
    cr_assert_eq(mode_of(b.key_path), 0600);
    X509_free(x);
    X509_free(y);
}

Test(certs, explicit_validity_makes_expired_and_future_certs)
{
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_WORKER, "old");
    struct keel_certs_issued out;
    time_t now = time(NULL);
    struct keel_error err;
    X509 *x;

    o.not_before = now - 10 * 86400;
    o.not_after = now - 86400;
    x = issue(&o, &out);
    cr_assert_eq(verify(x, dir, 0, 0), X509_V_ERR_CERT_HAS_EXPIRED);
    X509_free(x);

    o = opts(KEEL_ROLE_WORKER, "future");
    o.not_before = now + 86400;
    o.not_after = now + 10 * 86400;
    x = issue(&o, &out);
    cr_assert_eq(verify(x, dir, 0, 0), X509_V_ERR_CERT_NOT_YET_VALID);
    X509_free(x);

    o = opts(KEEL_ROLE_WORKER, "backwards");
    o.not_before = now;
    o.not_after = now - 1;
    keel_error_init(&err);
    cr_assert_eq(keel_certs_issue(&o, NULL, &err), KEEL_EINVAL);
}

Test(certs, days_sets_not_after)
{
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_ADMIN, "ops");
    struct keel_certs_issued out;
    X509 *x;

    o.days = 2;
    x = issue(&o, &out);
    cr_assert_gt(ASN1_TIME_cmp_time_t(X509_get0_notAfter(x), time(NULL) + 86400), 0);
    cr_assert_lt(ASN1_TIME_cmp_time_t(X509_get0_notAfter(x), time(NULL) + 3 * 86400), 0);
    cr_assert_lt(ASN1_TIME_cmp_time_t(X509_get0_notBefore(x), time(NULL)), 0);
    X509_free(x);
}

/* ---- revocation ---- */

Test(certs, revoked_serial_fails_verification_with_the_crl)
{
    struct keel_certs_issue_opts a = opts(KEEL_ROLE_WORKER, "bad"),
                                 b = opts(KEEL_ROLE_WORKER, "ok");
    struct keel_certs_issued oa, ob;
    X509 *xa = issue(&a, &oa), *xb = issue(&b, &ob);
    struct keel_error err;
    char path[256];

    keel_error_init(&err);
    cr_assert_eq(keel_certs_revoke(dir, NULL, oa.serial, &err), 0, "%s", err.msg);
    snprintf(path, sizeof(path), "%s/ca.crl", dir);
    cr_assert_eq(mode_of(path), 0644);
    cr_assert_eq(verify(xa, dir, 1, 0), X509_V_ERR_CERT_REVOKED);
    cr_assert_eq(verify(xb, dir, 1, 0), X509_V_OK);
    /* again: already listed, re-signed, still revoked */
    cr_assert_eq(keel_certs_revoke(dir, NULL, oa.serial, &err), 1, "%s", err.msg);
    cr_assert_eq(verify(xa, dir, 1, 0), X509_V_ERR_CERT_REVOKED);
    /* a second serial, given with a 0x prefix */
    snprintf(path, sizeof(path), "0x%s", ob.serial);
    cr_assert_eq(keel_certs_revoke(dir, NULL, path, &err), 0, "%s", err.msg);
    cr_assert_eq(verify(xb, dir, 1, 0), X509_V_ERR_CERT_REVOKED);
    X509_free(xa);
    X509_free(xb);
}

Test(certs, crl_number_increases)
{
    struct keel_error err;
    char path[256];
    X509_CRL *crl;
    ASN1_INTEGER *n;
    FILE *f;

    keel_error_init(&err);
    cr_assert_eq(keel_certs_revoke(dir, NULL, "01", &err), 0, "%s", err.msg);
    cr_assert_eq(keel_certs_revoke(dir, NULL, "02", &err), 0, "%s", err.msg);
    cr_assert_eq(keel_certs_revoke(dir, NULL, "0A:0B", &err), 0, "%s", err.msg);
    snprintf(path, sizeof(path), "%s/ca.crl", dir);
    f = fopen(path, "r");
    cr_assert_not_null(f);
    crl = PEM_read_X509_CRL(f, NULL, NULL, NULL);
    fclose(f);
    cr_assert_not_null(crl);
    n = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
    cr_assert_not_null(n);
    cr_assert_eq(ASN1_INTEGER_get(n), 3);
    cr_assert_eq(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 3);
    cr_assert_gt(ASN1_TIME_cmp_time_t(X509_CRL_get0_nextUpdate(crl), time(NULL)), 0);
    ASN1_INTEGER_free(n);
    X509_CRL_free(crl);
}

Test(certs, revoke_refuses_bad_serials_and_foreign_crls)
{
    struct keel_error err;
    char crl[256];

    keel_error_init(&err);
    cr_assert_eq(keel_certs_revoke(dir, NULL, "xyz", &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "not hexadecimal") != NULL, "%s", err.msg);
    cr_assert_eq(keel_certs_revoke(dir, NULL, "00", &err), KEEL_EINVAL);
    cr_assert_eq(keel_certs_revoke(dir, NULL, "", &err), KEEL_EINVAL);
    cr_assert_eq(keel_certs_revoke(dir, NULL, "0102030405060708090A0B0C0D0E0F101112131415", &err),
                 KEEL_EINVAL);
    /* a CRL made by another CA is not extended */
    make_ca(other);
    cr_assert_eq(keel_certs_revoke(other, NULL, "05", &err), 0, "%s", err.msg);
    snprintf(crl, sizeof(crl), "%s/ca.crl", other);
    cr_assert_eq(keel_certs_revoke(dir, crl, "06", &err), KEEL_ETLS);
    cr_assert(strstr(err.msg, "not issued by this CA") != NULL, "%s", err.msg);
}

/* ---- identity ---- */

Test(certs, identity_of_an_issued_cert)
{
    static const char *const extra[] = {"https://ops.example/worker"};
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_WORKER, "w_7-A");
    struct keel_certs_issued out;
    struct keel_cert_identity id;
    struct keel_error err;
    X509 *x;

    o.extra_uris = extra; /* other schemes are ignored */
    o.nextra_uris = 1;
    x = issue(&o, &out);
    keel_error_init(&err);
    cr_assert_eq(keel_cert_identity(x, &id, &err), 0, "%s", err.msg);
    cr_assert_eq(id.role, KEEL_ROLE_WORKER);
    cr_assert_str_eq(id.id, "w_7-A");
    X509_free(x);
}

Test(certs, identity_of_every_role)
{
    for (int r = KEEL_ROLE_COORDINATOR; r <= KEEL_ROLE_ADMIN; r++) {
        struct keel_certs_issue_opts o = opts((enum keel_role)r, "n1");
        struct keel_certs_issued out;
        struct keel_cert_identity id;
        X509 *x = issue(&o, &out);

        cr_assert_eq(keel_cert_identity(x, &id, NULL), 0);
        cr_assert_eq((int)id.role, r);
        cr_assert_str_eq(id.id, "n1");
        X509_free(x);
    }
}

Test(certs, identity_refused_without_any_san)
{
    X509 *ca = load(dir, "ca.crt");
    struct keel_cert_identity id;
    struct keel_error err;

    keel_error_init(&err);
    cr_assert_eq(keel_cert_identity(ca, &id, &err), KEEL_EPERM);
    cr_assert(strstr(err.msg, "no subjectAltName") != NULL, "%s", err.msg);
    cr_assert_eq(id.role, 0);
    cr_assert_str_eq(id.id, "");
    X509_free(ca);
}

struct bad_identity {
    int no_identity;  /* leave out the real keel://worker/w1 */
    char uris[2][96]; /* extra URI SANs; "" for none */
    char msg[64];     /* expected in the error */
};

static struct bad_identity bad_identities[] = {
    {1, {"", ""}, "no keel:// URI"},                                         /* missing */
    {1, {"https://worker/w1", "spiffe://keel/worker/w1"}, "no keel:// URI"}, /* wrong scheme */
    {0, {"keel://worker/w2", ""}, "2 keel:// URI"},                          /* duplicate */
    {1, {"keel://worker/w1", "KEEL://worker/w1"}, "2 keel:// URI"}, /* duplicate, any case */
    {1, {"KEEL://worker/w1", ""}, "does not start with 'keel://'"},
    {1, {"keel:worker/w1", ""}, "does not start with 'keel://'"},
    {1, {"keel://worker", ""}, "is not keel://<role>/<id>"},
    {1, {"keel://trainer/w1", ""}, "unknown role"},
    {1, {"keel://Worker/w1", ""}, "unknown role"},
    {1, {"keel:///w1", ""}, "unknown role"},
    {1, {"keel://worker:443/w1", ""}, "unknown role"},
    {1, {"keel://worker/", ""}, "bad id"},
    {1, {"keel://worker/w1/", ""}, "bad id"},
    {1, {"keel://worker/w.1", ""}, "bad id"},
    {1, {"keel://worker/w1?x=1", ""}, "bad id"},
    {1, {"keel://worker/w1#f", ""}, "bad id"},
    {1, {"keel://worker/w%31", ""}, "bad id"},
    {1,
     {"keel://worker/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", ""},
     "bad id"}, /* 65 characters */
};

ParameterizedTestParameters(certs, identity_refused)
{
    return cr_make_param_array(struct bad_identity, bad_identities,
                               sizeof(bad_identities) / sizeof(bad_identities[0]));
}

ParameterizedTest(struct bad_identity *p, certs, identity_refused)
{
    const char *uris[2];
    struct keel_certs_issue_opts o = opts(KEEL_ROLE_WORKER, "w1");
    struct keel_certs_issued out;
    struct keel_cert_identity id;
    struct keel_error err;
    X509 *x;

    o.no_identity = p->no_identity;
    for (int i = 0; i < 2; i++)
        if (p->uris[i][0] != '\0')
            uris[o.nextra_uris++] = p->uris[i];
    o.extra_uris = uris;
    x = issue(&o, &out);
    keel_error_init(&err);
    cr_assert_eq(keel_cert_identity(x, &id, &err), KEEL_EPERM, "accepted %s", p->uris[0]);
    cr_assert(strstr(err.msg, p->msg) != NULL, "'%s': got '%s', want '%s'", p->uris[0], err.msg,
              p->msg);
    cr_assert_eq(id.role, 0);
    X509_free(x);
}

Test(certs, id_rules)
{
    cr_assert(keel_certs_id_valid("a"));
    cr_assert(keel_certs_id_valid("A-z_09"));
    cr_assert_not(keel_certs_id_valid(""));
    cr_assert_not(keel_certs_id_valid("a b"));
    cr_assert_not(keel_certs_id_valid("a.b"));
    cr_assert(keel_certs_id_valid(
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")); /* 64 */
    cr_assert_not(keel_certs_id_valid(
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")); /* 65 */
}
