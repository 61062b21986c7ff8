/*
 * identity.c - the keel://<role>/<id> identity a certificate carries, on
 * OpenSSL 3's API.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "identity.h"

int keel_certs_id_valid(const char *id)
{
    size_t n = 0;

    for (; id[n] != '\0'; n++) {
        char c = id[n];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
        if (n >= KEEL_ID_MAX)
            return 0;
    }
    return n >= 1;
}

/* ---- identity ---- */

/* Copy `len` bytes of untrusted text for a message: printable ASCII, others as '?', cut. */
static void quote(char *out, size_t size, const unsigned char *p, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len && n + 4 < size; i++)
        out[n++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    if (len > 0 && n + 4 >= size && n < len) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
}

static int refuse(struct keel_cert_identity *out, struct keel_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(struct keel_cert_identity *out, struct keel_error *err, const char *fmt, ...)
{
    char msg[KEEL_ERROR_MSG_MAX];
    va_list ap;

    memset(out, 0, sizeof(*out));
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return keel_err_set(err, KEEL_EPERM, "%s", msg);
}

/* Parse exactly "keel://<role>/<id>" of `len` bytes at `p`. */
static int parse_identity(const unsigned char *p, size_t len, struct keel_cert_identity *out,
                          struct keel_error *err)
{
    static const char prefix[] = "keel://";
    const size_t plen = sizeof(prefix) - 1;
    char q[160], role[16];
    const unsigned char *r, *slash, *id;
    size_t rlen, idlen;
    enum keel_role rv;

    quote(q, sizeof(q), p, len);
    if (memchr(p, '\0', len) != NULL)
        return refuse(out, err, "identity URI '%s' holds a NUL byte", q);
    if (len < plen || memcmp(p, prefix, plen) != 0)
        return refuse(out, err, "identity URI '%s' does not start with 'keel://'", q);
    r = p + plen;
    slash = memchr(r, '/', len - plen);
    if (slash == NULL)
        return refuse(out, err, "identity URI '%s' is not keel://<role>/<id>", q);
    rlen = (size_t)(slash - r);
    if (rlen == 0 || rlen >= sizeof(role))
        return refuse(out, err, "identity URI '%s' has an unknown role", q);
    memcpy(role, r, rlen);
    role[rlen] = '\0';
    rv = keel_role_parse(role);
    if (rv == 0)
        return refuse(out, err,
                      "identity URI '%s' has an unknown role (coordinator, server, worker or "
                      "admin)",
                      q);
    id = slash + 1;
    idlen = len - (size_t)(id - p);
    if (idlen == 0 || idlen > KEEL_ID_MAX)
        return refuse(out, err, "identity URI '%s' has a bad id: must be 1-64 characters", q);
    for (size_t i = 0; i < idlen; i++) {
        unsigned char c = id[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return refuse(out, err,
                          "identity URI '%s' has a bad id: must be 1-64 of A-Z a-z 0-9 - _", q);
    }
    memset(out, 0, sizeof(*out));
    out->role = rv;
    memcpy(out->id, id, idlen);
    out->id[idlen] = '\0';
    return 0;
}

int keel_cert_identity(X509 *cert, struct keel_cert_identity *out, struct keel_error *err)
{
    GENERAL_NAMES *gens;
    const unsigned char *found = NULL;
    size_t found_len = 0;
    int crit = -1, count = 0, rc;

    if (cert == NULL)
        return refuse(out, err, "no certificate");
    gens = X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
    if (gens == NULL) {
        ERR_clear_error();
        if (crit == -1)
            return refuse(out, err, "certificate has no subjectAltName, so no keel:// identity");
        if (crit == -2)
            return refuse(out, err, "certificate has more than one subjectAltName extension");
        return refuse(out, err, "certificate's subjectAltName cannot be decoded");
    }
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        const unsigned char *p;
        int n;

        if (g->type != GEN_URI)
            continue;
        p = ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
        n = ASN1_STRING_length(g->d.uniformResourceIdentifier);
        if (n < 5 || strncasecmp((const char *)p, "keel:", 5) != 0)
            continue;
        if (++count == 1) {
            found = p;
            found_len = (size_t)n;
        }
    }
    if (count == 0)
        rc = refuse(out, err, "certificate has no keel:// URI subjectAltName");
    else if (count > 1)
        rc = refuse(out, err,
                    "certificate has %d keel:// URI subjectAltNames; exactly one is "
                    "allowed",
                    count);
    else
        rc = parse_identity(found, found_len, out, err);
    GENERAL_NAMES_free(gens);
    return rc;
}
