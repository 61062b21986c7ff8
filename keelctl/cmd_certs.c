/*
 * cmd_certs.c - `keelctl certs`: make the cluster CA, issue node certificates,
 * show a certificate, revoke one.  The work is done by ca.h; this file
 * parses the command line and prints the results.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "alloc.h"
#include "ca.h"
#include "cli.h"
#include "keelctl.h"

static void usage_all(FILE *out)
{
    fprintf(out, "usage: keelctl certs SUBCOMMAND [OPTIONS]\n"
                 "Make and inspect the cluster's TLS certificates.\n"
                 "\n"
                 "subcommands:\n"
                 "  init    make the cluster CA: DIR/ca.crt and DIR/ca.key\n"
                 "  issue   make a node's key and certificate: OUT/<role>-<id>.crt and .key\n"
                 "  show    print a certificate's identity, SANs, serial, issuer and validity\n"
                 "  revoke  add a certificate's serial to the CA's CRL (DIR/ca.crl)\n"
                 "\n"
                 "Run 'keelctl certs SUBCOMMAND --help' for its options.\n"
                 "Keep ca.key offline: a node needs only ca.crt and its own pair.\n");
}

static void usage_init(FILE *out)
{
    fprintf(out, "usage: keelctl certs init --dir DIR [--days N] [--force]\n"
                 "Make the cluster CA: an EC P-256 key DIR/ca.key (mode 0600) and a\n"
                 "self-signed certificate DIR/ca.crt (mode 0644).  DIR is created (0700)\n"
                 "when missing.  The CA's name is taken from cluster.name.\n"
                 "\n"
                 "  -d, --dir DIR   where the CA goes\n"
                 "      --days N    validity in days (default 3650)\n"
                 "  -f, --force     replace an existing CA (every certificate it issued\n"
                 "                  stops verifying)\n"
                 "  -h, --help      show this help\n");
}

static void usage_issue(FILE *out)
{
    fprintf(out,
            "usage: keelctl certs issue --dir DIR --role ROLE --id ID [--san SAN]... [--days N]\n"
            "                           [--ca-dir CADIR] [--out OUTDIR] [--force]\n"
            "Make a node's EC P-256 key OUTDIR/<role>-<id>.key (mode 0600) and its\n"
            "certificate OUTDIR/<role>-<id>.crt (mode 0644), signed by the CA in CADIR.\n"
            "The certificate names the node with the SAN URI keel://<role>/<id>.\n"
            "\n"
            "  -d, --dir DIR          the cluster's certificate directory: the default\n"
            "                         for both --ca-dir and --out\n"
            "  -r, --role ROLE        coordinator, server, worker or admin\n"
            "  -i, --id ID            1-64 of A-Z a-z 0-9 - _\n"
            "  -s, --san SAN          an extra IP or DNS SAN: IP:ADDR, DNS:NAME or a bare\n"
            "                         address or name (repeatable).  Without any --san the\n"
            "                         certificate gets IP:127.0.0.1 and DNS:localhost.\n"
            "      --days N           validity in days (default 365)\n"
            "      --ca-dir CADIR     where ca.crt and ca.key are (default DIR)\n"
            "  -o, --out OUTDIR       where the pair goes (default DIR; created 0700)\n"
            "  -f, --force            replace an existing pair\n"
            "      --not-before TIME  for tests: exact validity start (seconds since the\n"
            "                         epoch, or YYYY-MM-DDTHH:MM:SSZ); needs --not-after\n"
            "      --not-after TIME   for tests: exact validity end, may be in the past\n"
            "      --no-identity      for tests: leave out the keel:// URI\n"
            "      --uri URI          for tests: add a URI SAN verbatim (repeatable)\n"
            "  -h, --help             show this help\n");
}

static void usage_show(FILE *out)
{
    fprintf(out, "usage: keelctl certs show [--json] FILE\n"
                 "Print the certificate's keel:// identity (role and id), SANs, serial,\n"
                 "subject, issuer and validity, and whether it has expired.\n"
                 "\n"
                 "  -j, --json   print one JSON object instead\n"
                 "  -h, --help   show this help\n");
}

static void usage_revoke(FILE *out)
{
    fprintf(out, "usage: keelctl certs revoke --dir DIR (--serial HEX | --cert FILE) [--crl FILE]\n"
                 "Add a serial to the CRL signed by the CA in DIR (created when missing) and\n"
                 "re-sign it, valid for 365 days.  Revoking a serial that is already listed\n"
                 "only re-signs the CRL with fresh dates.  Nodes use the CRL when tls.crl\n"
                 "names it, and re-read it on SIGHUP.\n"
                 "\n"
                 "  -d, --dir DIR      where ca.crt and ca.key are\n"
                 "  -s, --serial HEX   the serial to revoke, as 'keelctl certs show' prints it\n"
                 "  -c, --cert FILE    revoke this certificate's serial\n"
                 "      --crl FILE     the CRL (default DIR/ca.crl)\n"
                 "  -h, --help         show this help\n");
}

static int fail(const char *sub, const struct keel_error *err)
{
    fprintf(stderr, "keelctl certs %s: %s\n", sub, err->msg);
    if (err->code == KEEL_ENOTFOUND && strcmp(sub, "show") != 0)
        fprintf(stderr, "keelctl certs %s: make a CA with 'keelctl certs init --dir DIR'\n", sub);
    return KEEL_EXIT_FAILURE;
}

static int parse_days(const char *s, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || *s == '-' || v < 1 || v > KEEL_CERTS_MAX_DAYS)
        return -1;
    *out = (unsigned)v;
    return 0;
}

/* Seconds since the epoch, or YYYY-MM-DDTHH:MM:SSZ (UTC). */
static int parse_time(const char *s, time_t *out)
{
    struct tm tm;
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno == 0 && end != s && *end == '\0' && v > 0) {
        *out = (time_t)v;
        return 0;
    }
    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (end == NULL || *end != '\0')
        return -1;
    *out = timegm(&tm);
    return 0;
}

/* Create `dir` with mode 0700 when it does not exist yet. */
static int ensure_dir(const char *sub, const char *dir)
{
    if (mkdir(dir, 0700) == 0 || errno == EEXIST)
        return 0;
    fprintf(stderr, "keelctl certs %s: cannot create directory '%s': %s\n", sub, dir,
            strerror(errno));
    return -1;
}

static int cmd_init(const struct keel_config *config, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"days", required_argument, NULL, 'D'},
        {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {
        .what = "certs init", .usage = usage_init, .shortopts = "d:fh", .longopts = longopts};
    struct keel_certs_ca_opts o;
    struct keel_error err;
    char cn[128];
    int opt;

    memset(&o, 0, sizeof(o));
    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0) {
        switch (opt) {
        case 'd':
            o.dir = optarg;
            break;
        case 'D':
            if (parse_days(optarg, &o.days) != 0)
                return keelctl_usage_error(&cl, "--days: must be 1-36500, got '%s'", optarg);
            break;
        case 'f':
            o.force = 1;
            break;
        }
    }
    if (opt < 0)
        return cl.exit;
    if (optind < argc)
        return keelctl_usage_error(&cl, "unexpected argument '%s'", argv[optind]);
    if (o.dir == NULL)
        return keelctl_usage_error(&cl, "%s", "--dir is required");
    if (ensure_dir("init", o.dir) != 0)
        return KEEL_EXIT_FAILURE;
    snprintf(cn, sizeof(cn), "Keel CA for cluster %s", config->cluster_name);
    o.common_name = cn;
    keel_error_init(&err);
    if (keel_certs_ca_create(&o, &err) != 0)
        return fail("init", &err);
    printf("wrote %s/ca.crt (0644) and %s/ca.key (0600)\n", o.dir, o.dir);
    printf("keep ca.key offline; copy only ca.crt to the nodes\n");
    return KEEL_EXIT_OK;
}

static int cmd_issue(const struct keel_config *config, int argc, char **argv)
{
    enum { OPT_DAYS = 256, OPT_CA_DIR, OPT_NOT_BEFORE, OPT_NOT_AFTER, OPT_NO_IDENTITY, OPT_URI };
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"role", required_argument, NULL, 'r'},
        {"id", required_argument, NULL, 'i'},
        {"san", required_argument, NULL, 's'},
        {"days", required_argument, NULL, OPT_DAYS},
        {"ca-dir", required_argument, NULL, OPT_CA_DIR},
        {"out", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        {"not-before", required_argument, NULL, OPT_NOT_BEFORE},
        {"not-after", required_argument, NULL, OPT_NOT_AFTER},
        {"no-identity", no_argument, NULL, OPT_NO_IDENTITY},
        {"uri", required_argument, NULL, OPT_URI},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {.what = "certs issue",
                                 .usage = usage_issue,
                                 .shortopts = "d:r:i:s:o:fh",
                                 .longopts = longopts};
    const char *sans[KEEL_CERTS_MAX_SANS], *uris[KEEL_CERTS_MAX_SANS];
    const char *dir = NULL, *role = NULL;
    char ca_crt[4096];
    struct keel_certs_issue_opts o;
    struct keel_certs_issued out;
    struct keel_error err;
    int opt, have_nb = 0;

    memset(&o, 0, sizeof(o));
    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0) {
        switch (opt) {
        case 'd':
            dir = optarg;
            break;
        case 'r':
            role = optarg;
            break;
        case 'i':
            o.id = optarg;
            break;
        case 's':
            if (o.nsans == KEEL_CERTS_MAX_SANS)
                return keelctl_usage_error(&cl, "too many --san (at most %d)", KEEL_CERTS_MAX_SANS);
            sans[o.nsans++] = optarg;
            break;
        case OPT_URI:
            if (o.nextra_uris == KEEL_CERTS_MAX_SANS)
                return keelctl_usage_error(&cl, "too many --uri (at most %d)", KEEL_CERTS_MAX_SANS);
            uris[o.nextra_uris++] = optarg;
            break;
        case OPT_DAYS:
            if (parse_days(optarg, &o.days) != 0)
                return keelctl_usage_error(&cl, "--days: must be 1-36500, got '%s'", optarg);
            break;
        case OPT_CA_DIR:
            o.ca_dir = optarg;
            break;
        case 'o':
            o.out_dir = optarg;
            break;
        case 'f':
            o.force = 1;
            break;
        case OPT_NOT_BEFORE:
            if (parse_time(optarg, &o.not_before) != 0)
                return keelctl_usage_error(
                    &cl, "--not-before: expected seconds or YYYY-MM-DDTHH:MM:SSZ, got '%s'",
                    optarg);
            have_nb = 1;
            break;
        case OPT_NOT_AFTER:
            if (parse_time(optarg, &o.not_after) != 0)
                return keelctl_usage_error(
                    &cl, "--not-after: expected seconds or YYYY-MM-DDTHH:MM:SSZ, got '%s'", optarg);
            break;
        case OPT_NO_IDENTITY:
            o.no_identity = 1;
            break;
        }
    }
    if (opt < 0)
        return cl.exit;
    if (optind < argc)
        return keelctl_usage_error(&cl, "unexpected argument '%s'", argv[optind]);
    if (dir == NULL && (o.ca_dir == NULL || o.out_dir == NULL))
        return keelctl_usage_error(&cl, "%s", "--dir is required (or both --ca-dir and --out)");
    if (role == NULL)
        return keelctl_usage_error(&cl, "%s", "--role is required");
    o.role = keel_role_parse(role);
    if (o.role == 0)
        return keelctl_usage_error(
            &cl, "--role: must be coordinator, server, worker or admin, got '%s'", role);
    if (o.id == NULL)
        return keelctl_usage_error(&cl, "%s", "--id is required");
    if (!keel_certs_id_valid(o.id))
        return keelctl_usage_error(&cl, "--id: must be 1-64 of A-Z a-z 0-9 - _, got '%s'", o.id);
    if (have_nb != (o.not_after != 0))
        return keelctl_usage_error(&cl, "%s", "--not-before and --not-after go together");
    if (o.ca_dir == NULL)
        o.ca_dir = dir;
    if (o.out_dir == NULL)
        o.out_dir = dir;
    o.sans = sans;
    o.extra_uris = uris;
    /* The CA first: a missing CA must not leave an empty output directory behind. */
    snprintf(ca_crt, sizeof(ca_crt), "%s/ca.crt", o.ca_dir);
    if (access(ca_crt, R_OK) != 0) {
        keel_error_init(&err);
        keel_err_set(&err, errno == ENOENT ? KEEL_ENOTFOUND : -errno,
                     "cannot read CA certificate '%s': %s", ca_crt, strerror(errno));
        return fail("issue", &err);
    }
    if (ensure_dir("issue", o.out_dir) != 0)
        return KEEL_EXIT_FAILURE;
    keel_error_init(&err);
    if (keel_certs_issue(&o, &out, &err) != 0)
        return fail("issue", &err);
    printf("wrote %s (0644) and %s (0600)\n", out.cert_path, out.key_path);
    if (o.no_identity)
        printf("identity: none (--no-identity)\n");
    else
        printf("identity: keel://%s/%s\n", keel_role_name(o.role), o.id);
    printf("serial: %s\n", out.serial);
    return KEEL_EXIT_OK;
}

/* ---- show ---- */

/* `t` as YYYY-MM-DDTHH:MM:SSZ. */
static void format_time(const ASN1_TIME *t, char *buf, size_t size)
{
    struct tm tm;

    if (ASN1_TIME_to_tm(t, &tm) != 1 || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, size, "?");
}

/* Untrusted text from the certificate, printable ASCII only. */
static void add_clean(struct keel_buf *b, const unsigned char *p, int len)
{
    for (int i = 0; i < len; i++)
        keel_buf_addf(b, "%c", (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?');
}

static char *name_text(const X509_NAME *name)
{
    BIO *mem = BIO_new(BIO_s_mem());
    struct keel_buf b = KEEL_BUF_INIT;
    char *data;
    long len;

    if (mem != NULL &&
        X509_NAME_print_ex(mem, name, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
        len = BIO_get_mem_data(mem, &data);
        add_clean(&b, (const unsigned char *)data, (int)len);
    }
    BIO_free(mem);
    return (char *)keel_buf_detach(&b, NULL);
}

/* Each SAN as "URI:...", "DNS:...", "IP:..." or "other", appended to `arr`. */
static void list_sans(X509 *x, json_t *arr)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);

    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        struct keel_buf b = KEEL_BUF_INIT;
        char ip[INET6_ADDRSTRLEN];

        switch (g->type) {
        case GEN_URI:
            keel_buf_add_str(&b, "URI:");
            add_clean(&b, ASN1_STRING_get0_data(g->d.ia5), ASN1_STRING_length(g->d.ia5));
            break;
        case GEN_DNS:
            keel_buf_add_str(&b, "DNS:");
            add_clean(&b, ASN1_STRING_get0_data(g->d.ia5), ASN1_STRING_length(g->d.ia5));
            break;
        case GEN_EMAIL:
            keel_buf_add_str(&b, "email:");
            add_clean(&b, ASN1_STRING_get0_data(g->d.ia5), ASN1_STRING_length(g->d.ia5));
            break;
        case GEN_IPADD: {
            int n = ASN1_STRING_length(g->d.ip);
            const unsigned char *p = ASN1_STRING_get0_data(g->d.ip);
            if ((n == 4 && inet_ntop(AF_INET, p, ip, sizeof(ip))) ||
                (n == 16 && inet_ntop(AF_INET6, p, ip, sizeof(ip))))
                keel_buf_addf(&b, "IP:%s", ip);
            else
                keel_buf_add_str(&b, "IP:?");
            break;
        }
        default:
            keel_buf_add_str(&b, "other");
            break;
        }
        json_array_append_new(arr, json_string((const char *)b.buf));
        keel_buf_release(&b);
    }
    ERR_clear_error();
    GENERAL_NAMES_free(gens);
}

static int cmd_show(const struct keel_config *config, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {
        .what = "certs show", .usage = usage_show, .shortopts = "jh", .longopts = longopts};
    struct keel_cert_identity id;
    struct keel_error err, iderr;
    char serial[KEEL_CERTS_SERIAL_HEX], nb[32], na[32];
    char *subject, *issuer;
    int opt, as_json = 0, expired, future, is_ca;
    json_t *sans, *obj;
    size_t i;
    X509 *x;

    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0)
        if (opt == 'j')
            as_json = 1;
    if (opt < 0)
        return cl.exit;
    if (optind != argc - 1)
        return keelctl_usage_error(&cl, "%s", "expected exactly one FILE");
    keel_error_init(&err);
    keel_error_init(&iderr);
    x = keel_certs_load_cert(argv[optind], &err);
    if (x == NULL)
        return fail("show", &err);
    keel_cert_identity(x, &id, &iderr);
    if (keel_certs_serial_hex(x, serial, sizeof(serial)) != 0)
        snprintf(serial, sizeof(serial), "?");
    format_time(X509_get0_notBefore(x), nb, sizeof(nb));
    format_time(X509_get0_notAfter(x), na, sizeof(na));
    expired = X509_cmp_current_time(X509_get0_notAfter(x)) < 0;
    future = X509_cmp_current_time(X509_get0_notBefore(x)) > 0;
    is_ca = X509_check_ca(x) >= 1;
    subject = name_text(X509_get_subject_name(x));
    issuer = name_text(X509_get_issuer_name(x));
    sans = json_array();
    list_sans(x, sans);

    if (as_json) {
        obj = json_object();
        json_object_set_new(obj, "file", json_string(argv[optind]));
        json_object_set_new(obj, "role",
                            iderr.code ? json_null() : json_string(keel_role_name(id.role)));
        json_object_set_new(obj, "id", iderr.code ? json_null() : json_string(id.id));
        json_object_set_new(obj, "identity_error",
                            iderr.code ? json_string(iderr.msg) : json_null());
        json_object_set_new(obj, "sans", json_incref(sans));
        json_object_set_new(obj, "serial", json_string(serial));
        json_object_set_new(obj, "subject", json_string(subject));
        json_object_set_new(obj, "issuer", json_string(issuer));
        json_object_set_new(obj, "not_before", json_string(nb));
        json_object_set_new(obj, "not_after", json_string(na));
        json_object_set_new(obj, "expired", json_boolean(expired));
        json_object_set_new(obj, "not_yet_valid", json_boolean(future));
        json_object_set_new(obj, "ca", json_boolean(is_ca));
        keelctl_print_json(obj);
    } else {
        printf("file:        %s\n", argv[optind]);
        if (iderr.code == 0) {
            printf("role:        %s\n", keel_role_name(id.role));
            printf("id:          %s\n", id.id);
        } else {
            printf("identity:    none (%s)\n", iderr.msg);
        }
        printf("sans:        ");
        for (i = 0; i < json_array_size(sans); i++)
            printf("%s%s", i ? ", " : "", json_string_value(json_array_get(sans, i)));
        printf("%s\n", json_array_size(sans) ? "" : "none");
        printf("serial:      %s\n", serial);
        printf("subject:     %s\n", subject);
        printf("issuer:      %s\n", issuer);
        printf("not-before:  %s\n", nb);
        printf("not-after:   %s\n", na);
        printf("status:      %s\n", expired ? "EXPIRED" : future ? "NOT YET VALID" : "valid");
        printf("ca:          %s\n", is_ca ? "yes" : "no");
    }
    json_decref(sans);
    free(subject);
    free(issuer);
    X509_free(x);
    return KEEL_EXIT_OK;
}

static int cmd_revoke(const struct keel_config *config, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},  {"serial", required_argument, NULL, 's'},
        {"cert", required_argument, NULL, 'c'}, {"crl", required_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {.what = "certs revoke",
                                 .usage = usage_revoke,
                                 .shortopts = "d:s:c:h",
                                 .longopts = longopts};
    const char *dir = NULL, *serial = NULL, *cert = NULL, *crl = NULL;
    char hex[KEEL_CERTS_SERIAL_HEX], crl_default[4096];
    struct keel_error err;
    int opt, rc;

    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0) {
        switch (opt) {
        case 'd':
            dir = optarg;
            break;
        case 's':
            serial = optarg;
            break;
        case 'c':
            cert = optarg;
            break;
        case 'C':
            crl = optarg;
            break;
        }
    }
    if (opt < 0)
        return cl.exit;
    if (optind < argc)
        return keelctl_usage_error(&cl, "unexpected argument '%s'", argv[optind]);
    if (dir == NULL)
        return keelctl_usage_error(&cl, "%s", "--dir is required");
    if ((serial == NULL) == (cert == NULL))
        return keelctl_usage_error(&cl, "%s", "give exactly one of --serial and --cert");
    keel_error_init(&err);
    if (cert != NULL) {
        X509 *x = keel_certs_load_cert(cert, &err);
        if (x == NULL)
            return fail("revoke", &err);
        rc = keel_certs_serial_hex(x, hex, sizeof(hex));
        X509_free(x);
        if (rc != 0) {
            fprintf(stderr, "keelctl certs revoke: '%s' has a serial longer than 20 octets\n",
                    cert);
            return KEEL_EXIT_FAILURE;
        }
        serial = hex;
    }
    if (crl == NULL) {
        snprintf(crl_default, sizeof(crl_default), "%s/ca.crl", dir);
        crl = crl_default;
    }
    rc = keel_certs_revoke(dir, crl, serial, &err);
    if (rc < 0)
        return fail("revoke", &err);
    if (rc == 1)
        printf("serial %s was already revoked; re-signed %s\n", serial, crl);
    else
        printf("revoked serial %s in %s\n", serial, crl);
    printf("nodes with tls.crl = %s see it after SIGHUP\n", crl);
    return KEEL_EXIT_OK;
}

int keelctl_cmd_certs(const struct keel_config *config, int argc, char **argv)
{
    static const struct keelctl_sub subs[] = {
        {"init", cmd_init},
        {"issue", cmd_issue},
        {"show", cmd_show},
        {"revoke", cmd_revoke},
    };

    return keelctl_run_sub("certs", subs, sizeof(subs) / sizeof(subs[0]), usage_all, config, argc,
                           argv);
}
