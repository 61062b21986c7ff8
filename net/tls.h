/*
 * tls.h - Keel's TLS policy and the cluster TLS context.
 *
 * Policy, the same for every connection, accepted or made:
 *  - TLS 1.3 only;
 *  - a certificate on both sides, verified against the cluster CA
 *    (`[tls] ca`), and checked against the CRL (`[tls] crl`) when one is set;
 *  - the peer's identity is read from its certificate's one `keel://ROLE/ID`
 *    URI SAN; a certificate without one is refused;
 *  - no session tickets and no session cache: every connection makes a full
 *    handshake, so a resumed session can never stand in for a certificate.
 *
 * A struct keel_tls holds the current SSL_CTX.  keel_tls_reload() (on SIGHUP)
 * builds a new one from the files and swaps it in; connections made earlier
 * keep the context they started with, new ones get the new one.  All
 * functions are thread-safe.
 */
#ifndef KEEL_TLS_H
#define KEEL_TLS_H

#include <openssl/ssl.h>

#include "identity.h"
#include "keel/config.h"
#include "keel/err.h"
#include "keel/proto.h"

struct keel_tls;

struct keel_tls_files {
    const char *ca;   /* cluster CA certificate (PEM), required */
    const char *cert; /* this node's certificate (PEM), required */
    const char *key;  /* this node's private key (PEM), required */
    const char *crl;  /* CRL (PEM), NULL or "" for none */
};

/*
 * Load the files and build the context.  Errors: KEEL_ETLS with the file
 * and OpenSSL's reason ("cannot load certificate 'x.crt': no start line"),
 * also when the key does not match the certificate or the certificate has
 * no keel:// identity.  *out is set only on success; free with keel_tls_free().
 */
int keel_tls_new(const struct keel_tls_files *files, struct keel_tls **out, struct keel_error *err);

/* The files of `config`'s [tls] section. */
struct keel_tls_files keel_tls_files_of(const struct keel_config *config);

void keel_tls_free(struct keel_tls *tls);

/*
 * Re-read the files and swap in a new context.  On error the current one
 * stays in use and the error says which file failed.
 */
int keel_tls_reload(struct keel_tls *tls, struct keel_error *err);

/* This node's own identity, from its certificate. */
const struct keel_cert_identity *keel_tls_self(const struct keel_tls *tls);

/*
 * Refuse to run as (role, id) with a certificate that names another node:
 * KEEL_ECONFIG saying both, so a node never speaks under a name its
 * certificate does not carry.
 */
int keel_tls_check_self(const struct keel_tls *tls, enum keel_role role, const char *id,
                        struct keel_error *err);

/*
 * A new SSL object from the current context, for one connection; the caller
 * frees it (SSL_free, or through the bufferevent that owns it).
 */
SSL *keel_tls_ssl_new(struct keel_tls *tls);

/*
 * After a completed handshake: the peer's identity from its verified
 * certificate.  Errors: KEEL_EPERM when there is no certificate or it has no
 * valid keel:// identity.
 */
int keel_tls_peer(SSL *ssl, struct keel_cert_identity *peer, struct keel_error *err);

/*
 * Why a handshake failed, for the log: the certificate verification result
 * when there is one, else the OpenSSL error `code` (from the error queue or
 * bufferevent_get_openssl_error()), written into buf.
 */
const char *keel_tls_failure(SSL *ssl, unsigned long code, char *buf, size_t n);

/*
 * Pop OpenSSL's error queue of this thread into one message (oldest first,
 * "; "-separated) in buf; returns buf.  "" when the queue is empty.
 */
const char *keel_tls_errors(char *buf, size_t n);

#endif
