/*
 * ca.c - the cluster CA, node certificates and the CRL, on OpenSSL 3's API
 * (keelctl certs).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "alloc.h"
#include "ca.h"

#define PATH_SIZE 4096

/* Point `err` at `local` when the caller passed none, so err->code is always there. */
#define USE_LOCAL_ERROR(err, local)                                                                \
    do {                                                                                           \
        if ((err) == NULL) {                                                                       \
            keel_error_init(&(local));                                                             \
            (err) = &(local);                                                                      \
        }                                                                                          \
    } while (0)

/*
 * Record `code` with the message "<what>: <OpenSSL's reason>", draining the
 * OpenSSL error queue of this thread (the first error is the root cause).
 */
static int ssl_fail(struct keel_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int ssl_fail(struct keel_error *err, int code, const char *fmt, ...)
{
    char what[KEEL_ERROR_MSG_MAX], reason[160] = "";
    unsigned long e, first = 0;
    va_list ap;

    while ((e = ERR_get_error()) != 0)
        if (first == 0)
            first = e;
    if (first != 0)
        ERR_error_string_n(first, reason, sizeof(reason));
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (reason[0] == '\0')
        return keel_err_set(err, code, "%s", what);
    return keel_err_set(err, code, "%s: %s", what, reason);
}

static int join(char *out, size_t size, const char *dir, const char *name, struct keel_error *err)
{
    int n = snprintf(out, size, "%s/%s", dir, name);

    if (n < 0 || (size_t)n >= size)
        return keel_err_set(err, KEEL_EINVAL, "path too long: '%s/%s'", dir, name);
    return 0;
}

int keel_certs_node_paths(const char *dir, enum keel_role role, const char *id, char *crt,
                          size_t crt_size, char *key, size_t key_size, struct keel_error *err)
{
    char name[KEEL_ID_MAX + 32];
    int rc;

    if (role < KEEL_ROLE_COORDINATOR || role > KEEL_ROLE_ADMIN)
        return keel_err_set(err, KEEL_EINVAL, "unknown role %d", (int)role);
    if (!keel_certs_id_valid(id))
        return keel_err_set(err, KEEL_EINVAL, "bad id '%.80s': must be 1-64 of A-Z a-z 0-9 - _",
                            id);
    snprintf(name, sizeof(name), "%s-%s.crt", keel_role_name(role), id);
    if ((rc = join(crt, crt_size, dir, name, err)) != 0)
        return rc;
    snprintf(name, sizeof(name), "%s-%s.key", keel_role_name(role), id);
    return join(key, key_size, dir, name, err);
}

/* ---- files ---- */

/* A PEM file written under a temporary name, not yet in place. */
struct staged {
    char tmp[PATH_SIZE];
    char path[PATH_SIZE];
    int live; /* tmp exists */
};

typedef int (*pem_writer)(BIO *bio, const void *obj);

static int write_key(BIO *bio, const void *obj)
{
    return PEM_write_bio_PrivateKey(bio, (EVP_PKEY *)obj, NULL, NULL, 0, NULL, NULL);
}

static int write_cert(BIO *bio, const void *obj)
{
    return PEM_write_bio_X509(bio, (X509 *)obj);
}

static int write_crl(BIO *bio, const void *obj)
{
    return PEM_write_bio_X509_CRL(bio, (X509_CRL *)obj);
}

static void unstage(struct staged *s)
{
    if (s->live)
        unlink(s->tmp);
    s->live = 0;
}

/*
 * Write `obj` as PEM to a new temporary file next to `path`, created with mode
 * 0600 (mkstemp) and then set to `mode`, and fsync it.  The PEM text goes
 * through a memory BIO that is wiped before it is freed (it may hold a key).
 */
static int stage(struct staged *s, const char *path, mode_t mode, pem_writer writer,
                 const void *obj, struct keel_error *err)
{
    BIO *mem = NULL;
    char *data;
    long len;
    int fd = -1, rc = 0;
    size_t off = 0;

    memset(s, 0, sizeof(*s));
    if (snprintf(s->path, sizeof(s->path), "%s", path) >= (int)sizeof(s->path) ||
        snprintf(s->tmp, sizeof(s->tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(s->tmp))
        return keel_err_set(err, KEEL_EINVAL, "path too long: '%s'", path);
    mem = BIO_new(BIO_s_mem());
    if (mem == NULL || !writer(mem, obj)) {
        rc = ssl_fail(err, KEEL_ETLS, "cannot encode '%s' as PEM", path);
        goto out_bio;
    }
    len = BIO_get_mem_data(mem, &data);
    fd = mkostemp(s->tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = keel_err_set(err, -errno, "cannot create '%s': %s", s->tmp, strerror(errno));
        goto out_bio;
    }
    s->live = 1;
    if (fchmod(fd, mode) != 0) {
        rc = keel_err_set(err, -errno, "cannot set the mode of '%s': %s", s->tmp, strerror(errno));
        goto out_fd;
    }
    while (off < (size_t)len) {
        ssize_t n = write(fd, data + off, (size_t)len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = keel_err_set(err, -errno, "cannot write '%s': %s", s->tmp, strerror(errno));
            goto out_fd;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0)
        rc = keel_err_set(err, -errno, "cannot sync '%s': %s", s->tmp, strerror(errno));
out_fd:
    if (close(fd) != 0 && rc == 0)
        rc = keel_err_set(err, -errno, "cannot close '%s': %s", s->tmp, strerror(errno));
    if (rc != 0)
        unstage(s);
out_bio:
    if (mem != NULL) {
        len = BIO_get_mem_data(mem, &data);
        if (len > 0)
            OPENSSL_cleanse(data, (size_t)len);
        BIO_free(mem);
    }
    return rc;
}

/*
 * Put a staged file in place: rename over an existing file when `replace`,
 * else link(), which fails atomically when the name is taken.
 */
static int commit(struct staged *s, int replace, struct keel_error *err)
{
    int rc = 0;

    if (replace) {
        if (rename(s->tmp, s->path) != 0)
            rc = keel_err_set(err, -errno, "cannot rename '%s' to '%s': %s", s->tmp, s->path,
                              strerror(errno));
        else
            s->live = 0;
    } else if (link(s->tmp, s->path) != 0) {
        if (errno == EEXIST)
            rc = keel_err_set(err, KEEL_EEXIST, "'%s' already exists (use --force to replace it)",
                              s->path);
        else
            rc = keel_err_set(err, -errno, "cannot create '%s': %s", s->path, strerror(errno));
    }
    unstage(s);
    return rc;
}

/* fsync the directory holding `path`, so a rename or link survives a crash. */
static void sync_dir_of(const char *path)
{
    char dir[PATH_SIZE];
    char *slash;
    int fd;

    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

static int refuse_existing(const char *path, struct keel_error *err)
{
    struct stat st;

    if (lstat(path, &st) == 0)
        return keel_err_set(err, KEEL_EEXIST, "'%s' already exists (use --force to replace it)",
                            path);
    if (errno != ENOENT)
        return keel_err_set(err, -errno, "cannot stat '%s': %s", path, strerror(errno));
    return 0;
}

static int check_dir(const char *dir, struct keel_error *err)
{
    struct stat st;

    if (dir == NULL || *dir == '\0')
        return keel_err_set(err, KEEL_EINVAL, "no directory given");
    if (stat(dir, &st) != 0)
        return keel_err_set(err, -errno, "cannot use directory '%s': %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return keel_err_set(err, -ENOTDIR, "cannot use directory '%s': %s", dir, strerror(ENOTDIR));
    return 0;
}

/*
 * Stage both files of a pair, then put them in place, key first; when the
 * certificate cannot be put in place, the key just linked is removed again.
 */
static int write_pair(const char *key_path, EVP_PKEY *key, const char *crt_path, X509 *crt,
                      int force, struct keel_error *err)
{
    struct staged sk, sc;
    int rc;

    if (!force &&
        ((rc = refuse_existing(key_path, err)) != 0 || (rc = refuse_existing(crt_path, err)) != 0))
        return rc;
    if ((rc = stage(&sk, key_path, 0600, write_key, key, err)) != 0)
        return rc;
    if ((rc = stage(&sc, crt_path, 0644, write_cert, crt, err)) != 0) {
        unstage(&sk);
        return rc;
    }
    if ((rc = commit(&sk, force, err)) != 0) {
        unstage(&sc);
        return rc;
    }
    if ((rc = commit(&sc, force, err)) != 0) {
        if (!force)
            unlink(key_path);
        return rc;
    }
    sync_dir_of(crt_path);
    return 0;
}

/* ---- loading ---- */

static BIO *open_bio(const char *path, const char *what, struct keel_error *err)
{
    BIO *bio;
    FILE *f = fopen(path, "re");

    if (f == NULL)
        return keel_err_set(err, errno == ENOENT ? KEEL_ENOTFOUND : -errno,
                            "cannot read %s '%s': %s", what, path, strerror(errno)),
               NULL;
    bio = BIO_new_fp(f, BIO_CLOSE);
    if (bio == NULL) {
        fclose(f);
        ssl_fail(err, KEEL_ETLS, "cannot read %s '%s'", what, path);
    }
    return bio;
}

static X509 *load_cert(const char *path, const char *what, struct keel_error *err)
{
    BIO *bio = open_bio(path, what, err);
    X509 *x;

    if (bio == NULL)
        return NULL;
    x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (x == NULL)
        ssl_fail(err, KEEL_ETLS, "no PEM certificate in '%s'", path);
    return x;
}

X509 *keel_certs_load_cert(const char *path, struct keel_error *err)
{
    return load_cert(path, "certificate", err);
}

/* Refuse to prompt for a passphrase: Keel's keys are not encrypted. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

static EVP_PKEY *load_key(const char *path, struct keel_error *err)
{
    BIO *bio = open_bio(path, "CA key", err);
    EVP_PKEY *k;

    if (bio == NULL)
        return NULL;
    k = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (k == NULL)
        ssl_fail(err, KEEL_ETLS, "no unencrypted PEM private key in '%s'", path);
    return k;
}

struct ca {
    X509 *cert;
    EVP_PKEY *key;
};

static void ca_release(struct ca *ca)
{
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    ca->cert = NULL;
    ca->key = NULL;
}

/* Load <dir>/ca.crt and <dir>/ca.key and check that they belong together. */
static int ca_load(struct ca *ca, const char *dir, struct keel_error *err)
{
    char crt[PATH_SIZE], key[PATH_SIZE];
    int rc;

    memset(ca, 0, sizeof(*ca));
    if ((rc = join(crt, sizeof(crt), dir, "ca.crt", err)) != 0 ||
        (rc = join(key, sizeof(key), dir, "ca.key", err)) != 0)
        return rc;
    ca->cert = load_cert(crt, "CA certificate", err);
    if (ca->cert == NULL)
        return err->code;
    if (X509_check_ca(ca->cert) < 1) {
        rc = keel_err_set(err, KEEL_ETLS, "'%s' is not a CA certificate", crt);
        goto fail;
    }
    ca->key = load_key(key, err);
    if (ca->key == NULL) {
        rc = err->code;
        goto fail;
    }
    if (X509_check_private_key(ca->cert, ca->key) != 1) {
        rc = ssl_fail(err, KEEL_ETLS, "CA key '%s' does not match CA certificate '%s'", key, crt);
        goto fail;
    }
    return 0;
fail:
    ca_release(ca);
    return rc;
}

/* ---- building certificates ---- */

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value, struct keel_error *err)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;

    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    if (ext == NULL)
        return ssl_fail(err, KEEL_ETLS, "cannot make extension %s", OBJ_nid2sn(nid));
    ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (!ok)
        return ssl_fail(err, KEEL_ETLS, "cannot add extension %s", OBJ_nid2sn(nid));
    return 0;
}

/* A random positive serial of 127 bits (RFC 5280: at most 20 octets, positive). */
static int set_random_serial(X509 *x, struct keel_error *err)
{
    unsigned char bytes[16];
    BIGNUM *bn = NULL;
    int rc = 0;

    do {
        if (RAND_bytes(bytes, sizeof(bytes)) != 1)
            return ssl_fail(err, KEEL_ETLS, "cannot draw a random serial");
        bytes[0] &= 0x7f;
        BN_free(bn);
        bn = BN_bin2bn(bytes, sizeof(bytes), NULL);
        if (bn == NULL)
            return ssl_fail(err, KEEL_ETLS, "cannot make a serial");
    } while (BN_is_zero(bn));
    if (BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
        rc = ssl_fail(err, KEEL_ETLS, "cannot set the serial");
    BN_free(bn);
    return rc;
}

static int set_validity(X509 *x, unsigned days, time_t not_before, time_t not_after,
                        struct keel_error *err)
{
    time_t now = time(NULL);

    if (not_after != 0) {
        if (not_after <= not_before)
            return keel_err_set(err, KEEL_EINVAL, "not-after must be later than not-before");
    } else {
        not_before = now - KEEL_CERTS_BACKDATE;
        not_after = now + (time_t)days * 86400;
    }
    if (ASN1_TIME_set(X509_getm_notBefore(x), not_before) == NULL ||
        ASN1_TIME_set(X509_getm_notAfter(x), not_after) == NULL)
        return ssl_fail(err, KEEL_ETLS, "cannot set the validity");
    return 0;
}

static int check_days(unsigned days, struct keel_error *err)
{
    if (days < 1 || days > KEEL_CERTS_MAX_DAYS)
        return keel_err_set(err, KEEL_EINVAL, "days must be between 1 and %d, got %u",
                            KEEL_CERTS_MAX_DAYS, days);
    return 0;
}

static int name_add(X509_NAME *name, const char *field, const char *value, struct keel_error *err)
{
    if (!X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, (const unsigned char *)value, -1,
                                    -1, 0))
        return ssl_fail(err, KEEL_ETLS, "cannot set subject %s='%s'", field, value);
    return 0;
}

/* A new X509v3 certificate with a random serial, `key`'s public key and validity. */
static X509 *cert_new(EVP_PKEY *key, unsigned days, time_t nb, time_t na, struct keel_error *err)
{
    X509 *x = X509_new();

    if (x == NULL) {
        ssl_fail(err, KEEL_ETLS, "cannot make a certificate");
        return NULL;
    }
    if (!X509_set_version(x, X509_VERSION_3) || !X509_set_pubkey(x, key)) {
        ssl_fail(err, KEEL_ETLS, "cannot make a certificate");
        goto fail;
    }
    if (set_random_serial(x, err) != 0 || set_validity(x, days, nb, na, err) != 0)
        goto fail;
    return x;
fail:
    X509_free(x);
    return NULL;
}

static EVP_PKEY *new_key(struct keel_error *err)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");

    if (k == NULL)
        ssl_fail(err, KEEL_ETLS, "cannot generate an EC P-256 key");
    return k;
}

int keel_certs_ca_create(const struct keel_certs_ca_opts *opts, struct keel_error *err)
{
    struct keel_error local;
    char crt_path[PATH_SIZE], key_path[PATH_SIZE];
    unsigned days = opts->days ? opts->days : KEEL_CERTS_CA_DAYS;
    const char *cn = opts->common_name ? opts->common_name : "Keel cluster CA";
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    X509_NAME *name;
    int rc;

    USE_LOCAL_ERROR(err, local);
    if ((rc = check_days(days, err)) != 0 || (rc = check_dir(opts->dir, err)) != 0 ||
        (rc = join(crt_path, sizeof(crt_path), opts->dir, "ca.crt", err)) != 0 ||
        (rc = join(key_path, sizeof(key_path), opts->dir, "ca.key", err)) != 0)
        return rc;
    if (!opts->force &&
        ((rc = refuse_existing(key_path, err)) != 0 || (rc = refuse_existing(crt_path, err)) != 0))
        return rc;
    if ((key = new_key(err)) == NULL)
        return err->code;
    if ((x = cert_new(key, days, 0, 0, err)) == NULL) {
        rc = err->code;
        goto out;
    }
    name = X509_get_subject_name(x);
    if ((rc = name_add(name, "O", "Keel", err)) != 0 || (rc = name_add(name, "CN", cn, err)) != 0)
        goto out;
    if (!X509_set_issuer_name(x, name)) {
        rc = ssl_fail(err, KEEL_ETLS, "cannot set the issuer");
        goto out;
    }
    if ((rc = add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0", err)) != 0 ||
        (rc = add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign", err)) != 0 ||
        (rc = add_ext(x, x, NID_subject_key_identifier, "hash", err)) != 0)
        goto out;
    if (X509_sign(x, key, EVP_sha256()) <= 0) {
        rc = ssl_fail(err, KEEL_ETLS, "cannot sign the CA certificate");
        goto out;
    }
    rc = write_pair(key_path, key, crt_path, x, opts->force, err);
out:
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

/* ---- subjectAltName ---- */

/* A DNS name: labels of A-Z a-z 0-9 and '-', dot-separated, optional leading "*.". */
static int valid_dns(const char *s)
{
    size_t total = strlen(s), label = 0;

    if (total == 0 || total > 253)
        return 0;
    if (strncmp(s, "*.", 2) == 0)
        s += 2;
    if (*s == '\0')
        return 0;
    for (; *s; s++) {
        char c = *s;
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '-') {
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return label > 0;
}

static int push_name(GENERAL_NAMES *gens, int type, const char *text, struct keel_error *err)
{
    GENERAL_NAME *g = GENERAL_NAME_new();
    ASN1_STRING *s = NULL;

    if (g == NULL)
        goto fail;
    if (type == GEN_IPADD) {
        s = a2i_IPADDRESS(text);
        if (s == NULL) {
            GENERAL_NAME_free(g);
            ERR_clear_error();
            return keel_err_set(err, KEEL_EINVAL, "bad IP address '%s'", text);
        }
    } else {
        s = ASN1_IA5STRING_new();
        if (s == NULL || !ASN1_STRING_set(s, text, (int)strlen(text)))
            goto fail;
    }
    GENERAL_NAME_set0_value(g, type, s);
    s = NULL;
    if (!sk_GENERAL_NAME_push(gens, g))
        goto fail;
    return 0;
fail:
    ASN1_STRING_free(s);
    GENERAL_NAME_free(g);
    return ssl_fail(err, KEEL_ETLS, "cannot add subjectAltName '%s'", text);
}

static int is_ip(const char *s)
{
    unsigned char buf[16];

    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* Add one operator-given SAN: "IP:x", "DNS:x" or a bare IP address or DNS name. */
static int push_san(GENERAL_NAMES *gens, const char *san, struct keel_error *err)
{
    const char *v = san;

    if (strncasecmp(san, "IP:", 3) == 0) {
        v = san + 3;
        if (!is_ip(v))
            return keel_err_set(err, KEEL_EINVAL, "bad SAN '%s': not an IPv4 or IPv6 address", san);
        return push_name(gens, GEN_IPADD, v, err);
    }
    if (strncasecmp(san, "DNS:", 4) == 0)
        v = san + 4;
    else if (is_ip(san))
        return push_name(gens, GEN_IPADD, san, err);
    if (!valid_dns(v))
        return keel_err_set(err, KEEL_EINVAL,
                            "bad SAN '%s': expected IP:ADDRESS, DNS:NAME, an address or a name",
                            san);
    return push_name(gens, GEN_DNS, v, err);
}

static int printable_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
            return 0;
    return 1;
}

static int add_sans(X509 *x, const struct keel_certs_issue_opts *o, struct keel_error *err)
{
    static const char *const defaults[] = {"IP:127.0.0.1", "DNS:localhost"};
    const char *const *sans = o->nsans ? o->sans : defaults;
    size_t nsans = o->nsans ? o->nsans : 2;
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    char uri[KEEL_ID_MAX + 32];
    int rc = 0;

    if (gens == NULL)
        return ssl_fail(err, KEEL_ETLS, "cannot make subjectAltName");
    if (!o->no_identity) {
        snprintf(uri, sizeof(uri), "keel://%s/%s", keel_role_name(o->role), o->id);
        if ((rc = push_name(gens, GEN_URI, uri, err)) != 0)
            goto out;
    }
    for (size_t i = 0; i < o->nextra_uris; i++) {
        if (!printable_ascii(o->extra_uris[i])) {
            rc = keel_err_set(err, KEEL_EINVAL, "bad URI '%s': must be printable ASCII",
                              o->extra_uris[i]);
            goto out;
        }
        if ((rc = push_name(gens, GEN_URI, o->extra_uris[i], err)) != 0)
            goto out;
    }
    for (size_t i = 0; i < nsans; i++)
        if ((rc = push_san(gens, sans[i], err)) != 0)
            goto out;
    if (sk_GENERAL_NAME_num(gens) == 0)
        goto out; /* a test's certificate with no SAN at all */
    if (!X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT))
        rc = ssl_fail(err, KEEL_ETLS, "cannot add subjectAltName");
out:
    GENERAL_NAMES_free(gens);
    return rc;
}

int keel_certs_issue(const struct keel_certs_issue_opts *o, struct keel_certs_issued *out,
                     struct keel_error *err)
{
    struct keel_error local;
    char crt_path[PATH_SIZE], key_path[PATH_SIZE];
    unsigned days = o->days ? o->days : KEEL_CERTS_NODE_DAYS;
    struct ca ca = {NULL, NULL};
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    X509_NAME *name;
    int rc;

    USE_LOCAL_ERROR(err, local);
    if (o->id == NULL)
        return keel_err_set(err, KEEL_EINVAL, "no id given");
    if (o->nsans > KEEL_CERTS_MAX_SANS || o->nextra_uris > KEEL_CERTS_MAX_SANS)
        return keel_err_set(err, KEEL_EINVAL, "too many SANs (at most %d)", KEEL_CERTS_MAX_SANS);
    if ((o->not_after == 0 && (rc = check_days(days, err)) != 0) ||
        (rc = keel_certs_node_paths(o->out_dir ? o->out_dir : "", o->role, o->id, crt_path,
                                    sizeof(crt_path), key_path, sizeof(key_path), err)) != 0 ||
        (rc = check_dir(o->out_dir, err)) != 0)
        return rc;
    if (!o->force &&
        ((rc = refuse_existing(key_path, err)) != 0 || (rc = refuse_existing(crt_path, err)) != 0))
        return rc;
    if ((rc = ca_load(&ca, o->ca_dir ? o->ca_dir : "", err)) != 0)
        return rc;
    if ((key = new_key(err)) == NULL) {
        rc = err->code;
        goto out;
    }
    if ((x = cert_new(key, days, o->not_before, o->not_after, err)) == NULL) {
        rc = err->code;
        goto out;
    }
    name = X509_get_subject_name(x);
    if ((rc = name_add(name, "O", "Keel", err)) != 0 ||
        (rc = name_add(name, "OU", keel_role_name(o->role), err)) != 0 ||
        (rc = name_add(name, "CN", o->id, err)) != 0)
        goto out;
    if (!X509_set_issuer_name(x, X509_get_subject_name(ca.cert))) {
        rc = ssl_fail(err, KEEL_ETLS, "cannot set the issuer");
        goto out;
    }
    if ((rc = add_ext(x, ca.cert, NID_basic_constraints, "critical,CA:FALSE", err)) != 0 ||
        (rc = add_ext(x, ca.cert, NID_key_usage, "critical,digitalSignature", err)) != 0 ||
        (rc = add_ext(x, ca.cert, NID_ext_key_usage, "serverAuth,clientAuth", err)) != 0 ||
        (rc = add_ext(x, ca.cert, NID_subject_key_identifier, "hash", err)) != 0 ||
        (rc = add_ext(x, ca.cert, NID_authority_key_identifier, "keyid:always", err)) != 0 ||
        (rc = add_sans(x, o, err)) != 0)
        goto out;
    if (X509_sign(x, ca.key, EVP_sha256()) <= 0) {
        rc = ssl_fail(err, KEEL_ETLS, "cannot sign the certificate");
        goto out;
    }
    if ((rc = write_pair(key_path, key, crt_path, x, o->force, err)) != 0)
        goto out;
    if (out != NULL) {
        snprintf(out->cert_path, sizeof(out->cert_path), "%s", crt_path);
        snprintf(out->key_path, sizeof(out->key_path), "%s", key_path);
        keel_certs_serial_hex(x, out->serial, sizeof(out->serial));
    }
out:
    X509_free(x);
    EVP_PKEY_free(key);
    ca_release(&ca);
    return rc;
}

int keel_certs_serial_hex(X509 *cert, char *buf, size_t size)
{
    const ASN1_INTEGER *ai = X509_get0_serialNumber(cert);
    BIGNUM *bn = ASN1_INTEGER_to_BN(ai, NULL);
    char *hex;
    int rc = 0;

    if (size > 0)
        buf[0] = '\0';
    if (bn == NULL || BN_num_bytes(bn) > 20) {
        BN_free(bn);
        return KEEL_EINVAL;
    }
    hex = BN_bn2hex(bn);
    if (hex == NULL || strlen(hex) >= size)
        rc = KEEL_EINVAL;
    else
        snprintf(buf, size, "%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    return rc;
}

/* ---- revocation ---- */

/* Parse "0x1A:2B..." into a positive ASN1_INTEGER. */
static ASN1_INTEGER *parse_serial(const char *text, struct keel_error *err)
{
    char hex[2 * 20 + 1];
    size_t n = 0;
    const char *p = text;
    BIGNUM *bn = NULL;
    ASN1_INTEGER *ai;

    if (strncasecmp(p, "0x", 2) == 0)
        p += 2;
    for (; *p; p++) {
        if (*p == ':')
            continue;
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F'))) {
            keel_err_set(err, KEEL_EINVAL, "bad serial '%.80s': not hexadecimal", text);
            return NULL;
        }
        if (n + 1 >= sizeof(hex)) {
            keel_err_set(err, KEEL_EINVAL, "bad serial '%.80s': longer than 20 octets", text);
            return NULL;
        }
        hex[n++] = *p;
    }
    hex[n] = '\0';
    if (n == 0 || !BN_hex2bn(&bn, hex) || BN_is_zero(bn)) {
        BN_free(bn);
        keel_err_set(err, KEEL_EINVAL, "bad serial '%.80s': must be a non-zero hex number", text);
        return NULL;
    }
    ai = BN_to_ASN1_INTEGER(bn, NULL);
    BN_free(bn);
    if (ai == NULL)
        ssl_fail(err, KEEL_ETLS, "cannot convert serial '%.80s'", text);
    return ai;
}

/* Load the CRL at `path` and check it was issued and signed by `ca`. */
static X509_CRL *load_crl(const char *path, X509 *ca, struct keel_error *err)
{
    BIO *bio = open_bio(path, "CRL", err);
    X509_CRL *crl;

    if (bio == NULL)
        return NULL;
    crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (crl == NULL) {
        ssl_fail(err, KEEL_ETLS, "no PEM CRL in '%s'", path);
        return NULL;
    }
    if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)) != 0 ||
        X509_CRL_verify(crl, X509_get0_pubkey(ca)) != 1) {
        ssl_fail(err, KEEL_ETLS, "CRL '%s' was not issued by this CA", path);
        X509_CRL_free(crl);
        return NULL;
    }
    return crl;
}

static int crl_listed(X509_CRL *crl, const ASN1_INTEGER *serial)
{
    STACK_OF(X509_REVOKED) *revs = X509_CRL_get_REVOKED(crl);

    for (int i = 0; i < sk_X509_REVOKED_num(revs); i++)
        if (ASN1_INTEGER_cmp(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revs, i)),
                             serial) == 0)
            return 1;
    return 0;
}

/* Set crlNumber to the old one + 1 (1 for a new CRL). */
static int bump_crl_number(X509_CRL *crl, struct keel_error *err)
{
    ASN1_INTEGER *old = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
    BIGNUM *bn = old ? ASN1_INTEGER_to_BN(old, NULL) : BN_new();
    ASN1_INTEGER *num = NULL;
    int rc = 0;

    if (bn == NULL || !BN_add_word(bn, 1) || (num = BN_to_ASN1_INTEGER(bn, NULL)) == NULL ||
        !X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, X509V3_ADD_REPLACE))
        rc = ssl_fail(err, KEEL_ETLS, "cannot update crlNumber");
    ASN1_INTEGER_free(num);
    ASN1_INTEGER_free(old);
    BN_free(bn);
    return rc;
}

static int crl_set_akid(X509_CRL *crl, X509 *ca, struct keel_error *err)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int idx, ok;

    while ((idx = X509_CRL_get_ext_by_NID(crl, NID_authority_key_identifier, -1)) >= 0)
        X509_EXTENSION_free(X509_CRL_delete_ext(crl, idx));
    X509V3_set_ctx(&ctx, ca, NULL, NULL, crl, 0);
    ext = X509V3_EXT_nconf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
    if (ext == NULL)
        return ssl_fail(err, KEEL_ETLS, "cannot make the CRL's authorityKeyIdentifier");
    ok = X509_CRL_add_ext(crl, ext, -1);
    X509_EXTENSION_free(ext);
    if (!ok)
        return ssl_fail(err, KEEL_ETLS, "cannot add the CRL's authorityKeyIdentifier");
    return 0;
}

int keel_certs_revoke(const char *ca_dir, const char *crl_path, const char *serial_hex,
                      struct keel_error *err)
{
    struct keel_error local;
    char path[PATH_SIZE];
    struct ca ca = {NULL, NULL};
    ASN1_INTEGER *serial = NULL;
    X509_CRL *crl = NULL;
    X509_REVOKED *rev = NULL;
    ASN1_TIME *t = NULL;
    struct staged st;
    time_t now = time(NULL);
    int rc, listed = 0;

    USE_LOCAL_ERROR(err, local);
    if (crl_path == NULL) {
        if ((rc = join(path, sizeof(path), ca_dir, "ca.crl", err)) != 0)
            return rc;
    } else if (snprintf(path, sizeof(path), "%s", crl_path) >= (int)sizeof(path)) {
        return keel_err_set(err, KEEL_EINVAL, "path too long: '%s'", crl_path);
    }
    if ((serial = parse_serial(serial_hex, err)) == NULL)
        return err->code;
    if ((rc = ca_load(&ca, ca_dir, err)) != 0)
        goto out;
    if (access(path, F_OK) == 0) {
        if ((crl = load_crl(path, ca.cert, err)) == NULL) {
            rc = err->code;
            goto out;
        }
    } else {
        crl = X509_CRL_new();
        if (crl == NULL || !X509_CRL_set_version(crl, X509_CRL_VERSION_2) ||
            !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca.cert))) {
            rc = ssl_fail(err, KEEL_ETLS, "cannot make a CRL");
            goto out;
        }
    }
    t = ASN1_TIME_set(NULL, now);
    if (t == NULL) {
        rc = ssl_fail(err, KEEL_ETLS, "cannot make a time");
        goto out;
    }
    listed = crl_listed(crl, serial);
    if (!listed) {
        rev = X509_REVOKED_new();
        if (rev == NULL || !X509_REVOKED_set_serialNumber(rev, serial) ||
            !X509_REVOKED_set_revocationDate(rev, t) || !X509_CRL_add0_revoked(crl, rev)) {
            X509_REVOKED_free(rev);
            rc = ssl_fail(err, KEEL_ETLS, "cannot add serial '%s' to the CRL", serial_hex);
            goto out;
        }
    }
    if (!X509_CRL_set1_lastUpdate(crl, t) ||
        ASN1_TIME_set(t, now + (time_t)KEEL_CERTS_CRL_DAYS * 86400) == NULL ||
        !X509_CRL_set1_nextUpdate(crl, t)) {
        rc = ssl_fail(err, KEEL_ETLS, "cannot set the CRL's dates");
        goto out;
    }
    if ((rc = bump_crl_number(crl, err)) != 0 || (rc = crl_set_akid(crl, ca.cert, err)) != 0)
        goto out;
    X509_CRL_sort(crl);
    if (X509_CRL_sign(crl, ca.key, EVP_sha256()) <= 0) {
        rc = ssl_fail(err, KEEL_ETLS, "cannot sign the CRL");
        goto out;
    }
    if ((rc = stage(&st, path, 0644, write_crl, crl, err)) != 0 || (rc = commit(&st, 1, err)) != 0)
        goto out;
    sync_dir_of(path);
    rc = listed;
out:
    ASN1_TIME_free(t);
    X509_CRL_free(crl);
    ASN1_INTEGER_free(serial);
    ca_release(&ca);
    return rc;
}
