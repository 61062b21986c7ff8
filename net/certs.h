/*
 * certs.h - the cluster CA, node certificates, revocation, and the identity a
 * certificate carries.
 *
 * A Keel cluster has one CA (EC P-256, self-signed).  Every node has its own
 * EC P-256 key and a certificate signed by that CA whose one `keel://` URI
 * subjectAltName says who it is: `keel://<role>/<id>`, role one of
 * coordinator|server|worker|admin and id of [A-Za-z0-9_-]{1,64}.  That URI is
 * the only identity Keel reads; the subject name and any IP/DNS SANs are
 * informational.  docs/certificates.md is the operator's view.
 *
 * Files (PEM):
 *   CA directory:   ca.crt (0644), ca.key (0600), ca.crl (0644, made by revoke)
 *   node directory: <role>-<id>.crt (0644), <role>-<id>.key (0600)
 * A key file is created with mode 0600 under a temporary name and linked into
 * place, so it is never readable by others, not even for a moment, and never
 * seen half-written.  Existing files are refused (KEEL_EEXIST) unless `force`
 * is set, in which case they are replaced atomically.  The CRL is always
 * replaced atomically (a transport may be reading it).
 *
 * Node certificates carry: basicConstraints CA:FALSE (critical), keyUsage
 * digitalSignature (critical), extendedKeyUsage serverAuth + clientAuth (a
 * node is both), subject and authority key identifiers, a random 127-bit
 * positive serial, and the SANs.  The CA certificate carries basicConstraints
 * CA:TRUE, pathlen:0 (critical), keyUsage keyCertSign + cRLSign (critical) and
 * a subject key identifier.
 *
 * Errors: -errno for file system failures (the message names the file),
 * KEEL_EEXIST for a file that exists, KEEL_EINVAL for bad options (role, id,
 * SAN, validity), KEEL_ENOTFOUND for a missing CA file, KEEL_ETLS for an
 * OpenSSL failure (the message carries OpenSSL's own reason), KEEL_EPERM for a
 * certificate whose identity is refused.
 *
 * Thread safety: every function is thread-safe (no shared state of its own;
 * OpenSSL 3 is thread-safe).  They do blocking file I/O: keep them off event
 * loop threads except keel_cert_identity(), which only reads memory.
 */
#ifndef KEEL_CERTS_H
#define KEEL_CERTS_H

#include <stddef.h>
#include <time.h>

#include <openssl/x509.h>

#include "keel/err.h"
#include "keel/proto.h"

#define KEEL_CERTS_CA_DAYS    3650 /* default CA validity: 10 years */
#define KEEL_CERTS_NODE_DAYS  365  /* default node certificate validity: 1 year */
#define KEEL_CERTS_CRL_DAYS   365  /* the CRL's nextUpdate, from the time it is written */
#define KEEL_CERTS_MAX_DAYS   36500
#define KEEL_CERTS_BACKDATE   300 /* notBefore = now - 5 minutes: tolerates clock skew */
#define KEEL_CERTS_MAX_SANS   32  /* IP/DNS SANs and extra URIs, each */
#define KEEL_CERTS_SERIAL_HEX 41  /* bytes for a serial as hex (20 octets max) + NUL */

/* The identity a certificate carries: keel://<role>/<id>. */
struct keel_cert_identity {
    enum keel_role role;
    char id[KEEL_ID_MAX + 1]; /* NUL-terminated */
};

struct keel_certs_ca_opts {
    const char *dir;         /* where ca.crt and ca.key go; must exist */
    const char *common_name; /* subject CN; NULL: "Keel cluster CA" */
    unsigned days;           /* validity; 0: KEEL_CERTS_CA_DAYS */
    int force;               /* replace existing ca.crt / ca.key */
};

struct keel_certs_issue_opts {
    const char *ca_dir;  /* holds ca.crt and ca.key */
    const char *out_dir; /* where <role>-<id>.crt/.key go; must exist */
    enum keel_role role;
    const char *id; /* [A-Za-z0-9_-]{1,64} */
    /*
     * IP and DNS SANs: "IP:1.2.3.4", "IP:::1", "DNS:host.example", or a bare
     * value (an IPv4/IPv6 address is an IP, anything else a DNS name).  With
     * nsans == 0 the certificate gets IP:127.0.0.1 and DNS:localhost, so that
     * a single-machine cluster and standard tools work out of the box; giving
     * any SAN replaces those defaults.  Keel itself never checks them.
     */
    const char *const *sans;
    size_t nsans;
    unsigned days; /* validity; 0: KEEL_CERTS_NODE_DAYS */
    /*
     * When not_after != 0, the validity is exactly [not_before, not_after]
     * (seconds since the epoch) and `days` is ignored: for tests that need an
     * expired or a not-yet-valid certificate.  not_after must be > not_before.
     */
    time_t not_before;
    time_t not_after;
    /*
     * For tests of identity refusal only: no_identity leaves out the
     * keel://<role>/<id> URI; extra_uris are added as URI SANs verbatim
     * (after the identity, if any).  Role and id still name the files.
     */
    int no_identity;
    const char *const *extra_uris;
    size_t nextra_uris;
    int force; /* replace existing files */
};

/* What keel_certs_issue() made.  Paths are NUL-terminated. */
struct keel_certs_issued {
    char cert_path[4096];
    char key_path[4096];
    char serial[KEEL_CERTS_SERIAL_HEX]; /* upper-case hex, as `openssl x509 -serial` */
};

/*
 * Make a cluster CA: a new EC P-256 key in <dir>/ca.key (0600) and a
 * self-signed certificate in <dir>/ca.crt (0644).
 * Errors: KEEL_EINVAL (days out of 1..KEEL_CERTS_MAX_DAYS), KEEL_EEXIST,
 * -errno, KEEL_ETLS.  On error no file is left behind.
 */
int keel_certs_ca_create(const struct keel_certs_ca_opts *opts, struct keel_error *err);

/*
 * Issue a node certificate signed by the CA in opts->ca_dir (whose key must
 * match its certificate), with a new key.  Writes <out_dir>/<role>-<id>.key
 * (0600) and .crt (0644); fills *out when non-NULL.
 * Errors: KEEL_EINVAL (role, id, SAN, validity), KEEL_ENOTFOUND (ca.crt or
 * ca.key missing), KEEL_EEXIST, -errno, KEEL_ETLS (including a CA key that
 * does not match the CA certificate, or a CA certificate that is not a CA).
 * On error no file is left behind.
 */
int keel_certs_issue(const struct keel_certs_issue_opts *opts, struct keel_certs_issued *out,
                     struct keel_error *err);

/*
 * Add `serial_hex` (hex digits, an optional 0x prefix, ':' separators
 * allowed) to the CRL at `crl_path` (NULL: <ca_dir>/ca.crl), creating it when
 * missing, and sign it with the CA in `ca_dir`.  The CRL gets a new
 * lastUpdate (now), nextUpdate (now + KEEL_CERTS_CRL_DAYS), an incremented
 * crlNumber and an authority key identifier; it replaces the old file
 * atomically (0644).  A CRL past its nextUpdate makes verification fail, so
 * re-run before then: revoking a serial that is already listed re-signs the
 * CRL with fresh dates and changes nothing else.
 * Returns 0 when the serial was added, 1 when it was already listed, or an
 * error: KEEL_EINVAL (serial not hex, too long, or 0), KEEL_ENOTFOUND (CA
 * files missing), KEEL_ETLS (a CRL not issued by this CA, or unreadable),
 * -errno.
 */
int keel_certs_revoke(const char *ca_dir, const char *crl_path, const char *serial_hex,
                      struct keel_error *err);

/*
 * Read the identity from `cert`: among its URI SANs, those whose scheme is
 * "keel" (any case) are identity candidates, and there must be exactly one,
 * of exactly the form keel://<role>/<id> (lower-case scheme and role, nothing
 * after the id).  Other URI SANs (https://, spiffe://) are ignored.  This is
 * what the transport calls on a peer's verified certificate; it does no chain
 * verification itself.
 * Errors (KEEL_EPERM, the message says which): no subjectAltName, no keel://
 * URI, more than one, an unknown role, an id that is empty, too long or has a
 * character outside [A-Za-z0-9_-], anything else malformed (NUL bytes,
 * missing "//" or "/", a port, query, fragment or trailing slash).
 * On error *out is zeroed.
 */
int keel_cert_identity(X509 *cert, struct keel_cert_identity *out, struct keel_error *err);

/* Non-zero when `id` is a valid node id: [A-Za-z0-9_-]{1,64}. */
int keel_certs_id_valid(const char *id);

/*
 * Read the first certificate of the PEM file at `path`.  The caller frees it
 * with X509_free().  Errors: -errno (open), KEEL_ETLS (no PEM certificate).
 */
X509 *keel_certs_load_cert(const char *path, struct keel_error *err);

/*
 * Write `cert`'s serial as upper-case hex (no leading zeros beyond what
 * `openssl x509 -serial` prints, at least one digit) into buf[KEEL_CERTS_SERIAL_HEX].
 * Returns 0, or KEEL_EINVAL when the serial is longer than 20 octets.
 */
int keel_certs_serial_hex(X509 *cert, char *buf, size_t size);

/*
 * The file names of a node's pair: "<role>-<id>.crt" / ".key" joined to
 * `dir`.  Returns 0, or KEEL_EINVAL (bad role or id, or too long a path).
 */
int keel_certs_node_paths(const char *dir, enum keel_role role, const char *id, char *crt,
                          size_t crt_size, char *key, size_t key_size, struct keel_error *err);

#endif
