/*
 * tls.c - the cluster TLS context: policy, loading, reload, peer identity.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "alloc.h"
#include "identity.h"
#include "tls.h"

struct keel_tls {
    pthread_mutex_t lock; /* guards ctx */
    SSL_CTX *ctx;
    struct keel_cert_identity self;
    char *ca, *cert, *key, *crl;
};

const char *keel_tls_errors(char *buf, size_t n)
{
    unsigned long e;
    size_t used = 0;

    buf[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        int r;

        ERR_error_string_n(e, one, sizeof(one));
        /* "error:0A000086:SSL routines::certificate verify failed" -> the reason */
        const char *reason = ERR_reason_error_string(e);
        r = snprintf(buf + used, n - used, "%s%s", used ? "; " : "", reason ? reason : one);
        if (r < 0 || (size_t)r >= n - used)
            break;
        used += (size_t)r;
    }
    return buf;
}

/* "cannot load certificate 'x.crt': <OpenSSL's reasons>"; subject may be NULL. */
static int tls_fail(struct keel_error *err, const char *what, const char *subject)
{
    char why[512];

    keel_tls_errors(why, sizeof(why));
    if (subject == NULL)
        return keel_err_set(err, KEEL_ETLS, "%s: %s", what, why[0] ? why : "unknown reason");
    return keel_err_set(err, KEEL_ETLS, "%s '%s': %s", what, subject,
                        why[0] ? why : "unknown reason");
}

/*
 * The CRLs of the PEM file `path` into `store`, and nothing else: a
 * certificate in the file would become a trust anchor (X509_STORE_load_file
 * adds whatever it finds), so a file holding one, or a key, is refused, as
 * is one holding no CRL.
 */
static int load_crls(X509_STORE *store, const char *path, struct keel_error *err)
{
    STACK_OF(X509_INFO) * infos;
    BIO *in = BIO_new_file(path, "r");
    int ncrls = 0, rc = 0;

    if (in == NULL)
        return tls_fail(err, "cannot open CRL", path);
    infos = PEM_X509_INFO_read_bio(in, NULL, NULL, NULL);
    BIO_free(in);
    if (infos == NULL)
        return tls_fail(err, "cannot read CRL", path);
    for (int i = 0; i < sk_X509_INFO_num(infos) && rc == 0; i++) {
        const X509_INFO *xi = sk_X509_INFO_value(infos, i);

        if (xi->x509 != NULL || xi->x_pkey != NULL)
            rc = keel_err_set(err, KEEL_ETLS,
                              "CRL file '%s' holds a certificate or a key: it may hold only "
                              "CRLs (a certificate there would be trusted)",
                              path);
        else if (xi->crl != NULL && X509_STORE_add_crl(store, xi->crl) != 1)
            rc = tls_fail(err, "cannot add CRL", path);
        else if (xi->crl != NULL)
            ncrls++;
    }
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    if (rc == 0 && ncrls == 0)
        rc = keel_err_set(err, KEEL_ETLS, "CRL file '%s' holds no CRL", path);
    return rc;
}

/* Build a context from the files; on success *self is the certificate's identity. */
static int build_ctx(const struct keel_tls *t, SSL_CTX **out, struct keel_cert_identity *self,
                     struct keel_error *err)
{
    SSL_CTX *ctx;
    X509_STORE *store;
    int rc;

    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_method());
    if (ctx == NULL)
        return tls_fail(err, "cannot create TLS context", NULL);
    /* TLS 1.3 only, no resumption of any kind. */
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
        rc = tls_fail(err, "cannot require TLS 1.3", NULL);
        goto free_ctx;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* AES-128-GCM first: hardware-accelerated, and enough for loopback-to-LAN. */
    SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                  "TLS_CHACHA20_POLY1305_SHA256");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set_verify_depth(ctx, 4);

    if (SSL_CTX_load_verify_locations(ctx, t->ca, NULL) != 1) {
        rc = tls_fail(err, "cannot load CA certificate", t->ca);
        goto free_ctx;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, t->cert) != 1) {
        rc = tls_fail(err, "cannot load certificate", t->cert);
        goto free_ctx;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, t->key, SSL_FILETYPE_PEM) != 1) {
        rc = tls_fail(err, "cannot load private key", t->key);
        goto free_ctx;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        rc = tls_fail(err, "private key does not match the certificate", t->key);
        goto free_ctx;
    }
    if (t->crl != NULL) {
        store = SSL_CTX_get_cert_store(ctx);
        if ((rc = load_crls(store, t->crl, err)) != 0)
            goto free_ctx;
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    rc = keel_cert_identity(SSL_CTX_get0_certificate(ctx), self, err);
    if (rc != 0) {
        rc = keel_err_prefix(err, KEEL_ETLS, "certificate '%s'", t->cert);
        goto free_ctx;
    }
    *out = ctx;
    return 0;

free_ctx:
    SSL_CTX_free(ctx);
    return rc;
}

static char *dup_or_null(const char *s)
{
    return s != NULL && s[0] != '\0' ? keel_strdup(s) : NULL;
}

struct keel_tls_files keel_tls_files_of(const struct keel_config *config)
{
    struct keel_tls_files f = {config->tls_ca, config->tls_cert, config->tls_key, config->tls_crl};
    return f;
}

int keel_tls_new(const struct keel_tls_files *files, struct keel_tls **out, struct keel_error *err)
{
    struct keel_tls *t;
    int rc;

    if (files->ca == NULL || !files->ca[0] || files->cert == NULL || !files->cert[0] ||
        files->key == NULL || !files->key[0])
        return keel_err_set(err, KEEL_ECONFIG, "[tls] ca, cert and key must all be set");
    t = keel_calloc(1, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    t->ca = keel_strdup(files->ca);
    t->cert = keel_strdup(files->cert);
    t->key = keel_strdup(files->key);
    t->crl = dup_or_null(files->crl);
    rc = build_ctx(t, &t->ctx, &t->self, err);
    if (rc != 0) {
        keel_tls_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void keel_tls_free(struct keel_tls *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->lock);
    free(t->ca);
    free(t->cert);
    free(t->key);
    free(t->crl);
    free(t);
}

int keel_tls_reload(struct keel_tls *t, struct keel_error *err)
{
    struct keel_cert_identity self;
    SSL_CTX *fresh, *old;
    int rc;

    rc = build_ctx(t, &fresh, &self, err);
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&t->lock);
    old = t->ctx;
    t->ctx = fresh;
    t->self = self;
    pthread_mutex_unlock(&t->lock);
    /* Connections made with the old context hold their own reference. */
    SSL_CTX_free(old);
    return 0;
}

const struct keel_cert_identity *keel_tls_self(const struct keel_tls *t)
{
    return &t->self;
}

int keel_tls_check_self(const struct keel_tls *t, enum keel_role role, const char *id,
                        struct keel_error *err)
{
    if (t->self.role != role || strcmp(t->self.id, id) != 0)
        return keel_err_set(err, KEEL_ECONFIG,
                            "[node] id is %s '%s' but the certificate names %s '%s' "
                            "(keel://%s/%s): use the node's own certificate or its id",
                            keel_role_name(role), id, keel_role_name(t->self.role), t->self.id,
                            keel_role_name(t->self.role), t->self.id);
    return 0;
}

SSL *keel_tls_ssl_new(struct keel_tls *t)
{
    SSL *ssl;

    pthread_mutex_lock(&t->lock);
    ssl = SSL_new(t->ctx);
    pthread_mutex_unlock(&t->lock);
    if (ssl == NULL) {
        fprintf(stderr, "keel: out of memory creating a TLS session\n");
        abort();
    }
    return ssl;
}

int keel_tls_peer(SSL *ssl, struct keel_cert_identity *peer, struct keel_error *err)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);

    if (cert == NULL)
        return keel_err_set(err, KEEL_EPERM, "peer sent no certificate");
    if (SSL_get_verify_result(ssl) != X509_V_OK)
        return keel_err_set(err, KEEL_EPERM, "peer certificate not verified: %s",
                            X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
    if (keel_cert_identity(cert, peer, err) != 0)
        return keel_err_prefix(err, KEEL_EPERM, "peer certificate");
    return 0;
}

const char *keel_tls_failure(SSL *ssl, unsigned long code, char *buf, size_t n)
{
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    const char *reason;

    if (v != X509_V_OK) {
        snprintf(buf, n, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        return buf;
    }
    if (code != 0) {
        reason = ERR_reason_error_string(code);
        if (reason == NULL) {
            ERR_error_string_n(code, buf, n);
            return buf;
        }
        snprintf(buf, n, "%s", reason);
        return buf;
    }
    return keel_tls_errors(buf, n);
}
