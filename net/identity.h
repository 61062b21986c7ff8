/*
 * identity.h - the identity a node certificate carries: keel://<role>/<id>.
 *
 * Every node certificate has exactly one `keel://` URI subjectAltName that
 * says who it is: `keel://<role>/<id>`, role one of
 * coordinator|server|worker|admin and id of [A-Za-z0-9_-]{1,64}.  That URI is
 * the only identity Keel reads; the subject name and any IP/DNS SANs are
 * informational.  The transport (tls.c) reads it from every peer's verified
 * certificate.  Making certificates is keelctl's (keelctl/ca.h).
 *
 * Thread safety: both functions only read memory and are thread-safe.
 */
#ifndef KEEL_IDENTITY_H
#define KEEL_IDENTITY_H

#include <openssl/x509.h>

#include "keel/err.h"
#include "keel/proto.h"

/* The identity a certificate carries: keel://<role>/<id>. */
struct keel_cert_identity {
    enum keel_role role;
    char id[KEEL_ID_MAX + 1]; /* NUL-terminated */
};

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

#endif
