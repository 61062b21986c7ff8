#!/usr/bin/env bash
# test_certs.sh BINDIR SRCDIR - `keelctl certs` end to end, cross-checked with
# the openssl command line: chains verify against the cluster CA and not
# against another CA, the SAN URI and usages are there, the CRL revokes, and
# two issued certificates complete a TLS 1.3 mutual handshake on loopback.
set -u
bindir=$1
srcdir=$2
. "$srcdir/tests/lib/assert.sh"
K=$bindir/keelctl

tmp=$(mktemp -d)
srv_pid=
cleanup() {
    if [ -n "$srv_pid" ]; then
        kill "$srv_pid" 2>/dev/null
        wait "$srv_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

mode() { stat -c %a "$1"; }

expect_eq() { # ACTUAL EXPECTED WHAT
    if [ "$1" = "$2" ]; then ok; else fail "$3: got '$1', expected '$2'"; fi
}

# ---- help and usage errors ----
run "$K" certs --help
expect_status 0 "certs --help"
expect_out "init" "certs --help lists init"
for sub in init issue show revoke; do
    run "$K" certs $sub --help
    expect_status 0 "certs $sub --help"
    expect_out "usage: keelctl certs $sub" "certs $sub --help"
done
run "$K" certs
expect_status 64 "certs without a subcommand"
expect_err "no subcommand given" "certs without a subcommand"
run "$K" certs frob
expect_status 64 "certs unknown subcommand"
expect_err "unknown subcommand 'frob'" "certs unknown subcommand"
run "$K" certs init
expect_status 64 "init without --dir"
expect_err "--dir is required" "init without --dir"
run "$K" certs init --dir "$tmp/x" --days 0
expect_status 64 "init --days 0"
expect_err "--days: must be 1-36500, got '0'" "init --days 0"

# ---- the CA ----
ca=$tmp/ca
run "$K" certs init --dir "$ca"
expect_status 0 "init"
expect_out "keep ca.key offline" "init says to keep the key offline"
expect_eq "$(mode "$ca/ca.key")" 600 "ca.key mode"
expect_eq "$(mode "$ca/ca.crt")" 644 "ca.crt mode"
expect_eq "$(mode "$ca")" 700 "CA directory mode"
run "$K" certs init --dir "$ca"
expect_status 1 "init over an existing CA"
expect_err "ca.key' already exists \(use --force" "init over an existing CA"
run openssl x509 -in "$ca/ca.crt" -noout -text
expect_out "CA:TRUE" "CA basicConstraints"
expect_out "Certificate Sign, CRL Sign" "CA key usage"
expect_out "ASN1 OID: prime256v1" "CA key is P-256"

# ---- node certificates ----
nodes=$tmp/nodes
run "$K" certs issue --dir "$ca" --out "$nodes" --role server --id s1
expect_status 0 "issue server"
expect_out "identity: keel://server/s1" "issue server prints the identity"
expect_out "^serial: [0-9A-F]+$" "issue server prints the serial"
run "$K" certs issue --dir "$ca" --out "$nodes" --role worker --id w-1 --san IP:127.0.0.1 \
    --san DNS:worker.local --days 30
expect_status 0 "issue worker"
for f in server-s1 worker-w-1; do
    expect_eq "$(mode "$nodes/$f.key")" 600 "$f.key mode"
    expect_eq "$(mode "$nodes/$f.crt")" 644 "$f.crt mode"
done
if [ -e "$nodes/ca.key" ]; then fail "the CA key was copied to the node directory"; else ok; fi

run "$K" certs issue --dir "$ca" --out "$nodes" --role server --id s1
expect_status 1 "issue over an existing pair"
expect_err "server-s1.key' already exists" "issue over an existing pair"
old_serial=$(openssl x509 -in "$nodes/server-s1.crt" -noout -serial)
run "$K" certs issue --dir "$ca" --out "$nodes" --role server --id s1 --force
expect_status 0 "issue --force"
if [ "$(openssl x509 -in "$nodes/server-s1.crt" -noout -serial)" != "$old_serial" ]; then ok; else
    fail "issue --force did not replace the certificate"
fi
run "$K" certs issue --dir "$ca" --role trainer --id t1
expect_status 64 "issue with a bad role"
expect_err "--role: must be coordinator, server, worker or admin, got 'trainer'" "bad role"
run "$K" certs issue --dir "$ca" --role worker --id 'w/1'
expect_status 64 "issue with a bad id"
expect_err "--id: must be 1-64 of A-Z a-z 0-9 - _, got 'w/1'" "bad id"
run "$K" certs issue --dir "$ca" --role worker
expect_status 64 "issue without --id"
expect_err "--id is required" "issue without --id"
run "$K" certs issue --dir "$ca" --role worker --id w9 --san 'DNS:a,URI:keel://admin/root'
expect_status 1 "issue with a bad SAN"
expect_err "bad SAN 'DNS:a,URI:keel://admin/root'" "issue with a bad SAN"
run "$K" certs issue --dir "$tmp/noca" --out "$tmp/noca-out" --role worker --id w1
expect_status 1 "issue without a CA"
expect_err "cannot read CA certificate '.*noca/ca.crt'" "issue without a CA"
expect_err "keelctl certs init" "issue without a CA gives a hint"
if [ -e "$tmp/noca-out" ]; then fail "issue without a CA created its output directory"; else ok; fi

# ---- cross-check with openssl ----
for f in server-s1 worker-w-1; do
    for purpose in sslserver sslclient; do
        run openssl verify -purpose $purpose -CAfile "$ca/ca.crt" "$nodes/$f.crt"
        expect_status 0 "openssl verify $f $purpose"
        expect_out ": OK$" "openssl verify $f $purpose"
    done
    run openssl x509 -in "$nodes/$f.crt" -noout -text
    expect_out "TLS Web Server Authentication, TLS Web Client Authentication" "$f EKU"
    expect_out "X509v3 Key Usage: critical" "$f key usage critical"
    expect_out "^ +Digital Signature$" "$f key usage"
    expect_out "CA:FALSE" "$f is not a CA"
    expect_out "X509v3 Authority Key Identifier" "$f AKID"
    expect_out "ASN1 OID: prime256v1" "$f key is P-256"
done
run openssl x509 -in "$nodes/server-s1.crt" -noout -text
expect_out "URI:keel://server/s1, IP Address:127.0.0.1, DNS:localhost" "server SANs (defaults)"
run openssl x509 -in "$nodes/worker-w-1.crt" -noout -text
expect_out "URI:keel://worker/w-1, IP Address:127.0.0.1, DNS:worker.local" "worker SANs"
run openssl pkey -in "$nodes/worker-w-1.key" -pubout
key_pub=$run_out
run openssl x509 -in "$nodes/worker-w-1.crt" -noout -pubkey
expect_eq "$run_out" "$key_pub" "worker key matches its certificate"

# another CA: its certificates do not verify against this cluster's CA
other=$tmp/other
"$K" certs init --dir "$other" >/dev/null
"$K" certs issue --dir "$other" --role worker --id w-1 >/dev/null
run openssl verify -CAfile "$ca/ca.crt" "$other/worker-w-1.crt"
expect_status 2 "openssl verify of another CA's certificate"
expect_err "unable to get local issuer certificate" "another CA's certificate"
run openssl verify -CAfile "$other/ca.crt" "$other/worker-w-1.crt"
expect_status 0 "another CA's certificate against its own CA"
# CA rotation: a bundle of both CAs (same subject name) verifies certificates of either
cat "$ca/ca.crt" "$other/ca.crt" >"$tmp/both.crt"
run openssl verify -CAfile "$tmp/both.crt" "$other/worker-w-1.crt" "$nodes/worker-w-1.crt"
expect_status 0 "a CA bundle verifies certificates of both CAs"

# ---- show ----
run "$K" certs show "$nodes/worker-w-1.crt"
expect_status 0 "show"
expect_out "^role: +worker$" "show role"
expect_out "^id: +w-1$" "show id"
expect_out "^sans: +URI:keel://worker/w-1, IP:127.0.0.1, DNS:worker.local$" "show SANs"
expect_out "^serial: +$(openssl x509 -in "$nodes/worker-w-1.crt" -noout -serial | cut -d= -f2)$" \
    "show serial matches openssl"
expect_out "^issuer: +O = Keel, CN = Keel CA for cluster keel$" "show issuer"
expect_out "^status: +valid$" "show status"
expect_out "^not-after: +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$" "show not-after"
run "$K" certs show --json "$nodes/worker-w-1.crt"
expect_status 0 "show --json"
printf '%s' "$run_out" >"$tmp/show.json"
run /usr/bin/python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["role"] == "worker" and d["id"] == "w-1", d
assert d["sans"] == ["URI:keel://worker/w-1", "IP:127.0.0.1", "DNS:worker.local"], d
assert d["expired"] is False and d["ca"] is False and d["identity_error"] is None, d
print("json ok")' "$tmp/show.json"
expect_out "json ok" "show --json fields"
run "$K" certs show "$ca/ca.crt"
expect_status 0 "show the CA"
expect_out "^identity: +none \(certificate has no subjectAltName" "show the CA has no identity"
expect_out "^ca: +yes$" "show the CA is a CA"
run "$K" certs show "$tmp/missing.crt"
expect_status 1 "show a missing file"
expect_err "cannot read certificate '.*missing.crt'" "show a missing file"
run "$K" certs show
expect_status 64 "show without a file"

# test aids: expired, not yet valid, no identity, two identities
run "$K" certs issue --dir "$ca" --out "$nodes" --role worker --id old \
    --not-before 2020-01-01T00:00:00Z --not-after 2020-02-01T00:00:00Z
expect_status 0 "issue an expired certificate"
run "$K" certs show "$nodes/worker-old.crt"
expect_out "^status: +EXPIRED$" "show an expired certificate"
expect_out "^not-after: +2020-02-01T00:00:00Z$" "exact not-after"
run openssl verify -CAfile "$ca/ca.crt" "$nodes/worker-old.crt"
expect_status 2 "openssl verify of an expired certificate"
expect_err "certificate has expired" "openssl verify of an expired certificate"
run "$K" certs issue --dir "$ca" --out "$nodes" --role worker --id late \
    --not-before $(($(date +%s) + 86400)) --not-after $(($(date +%s) + 2 * 86400))
expect_status 0 "issue a not-yet-valid certificate"
run "$K" certs show "$nodes/worker-late.crt"
expect_out "^status: +NOT YET VALID$" "show a not-yet-valid certificate"
run "$K" certs issue --dir "$ca" --role worker --id x --not-after 2020-01-01T00:00:00Z
expect_status 64 "--not-after alone"
run "$K" certs issue --dir "$ca" --out "$nodes" --role worker --id anon --no-identity
expect_status 0 "issue without identity"
run "$K" certs show "$nodes/worker-anon.crt"
expect_out "^identity: +none \(certificate has no keel:// URI subjectAltName\)$" "no identity"
run "$K" certs issue --dir "$ca" --out "$nodes" --role worker --id twice --uri keel://admin/root
expect_status 0 "issue with two identities"
run "$K" certs show "$nodes/worker-twice.crt"
expect_out "^identity: +none \(certificate has 2 keel:// URI subjectAltNames" "two identities"

# ---- revocation ----
run "$K" certs revoke --dir "$ca"
expect_status 64 "revoke without a serial"
expect_err "exactly one of --serial and --cert" "revoke without a serial"
run "$K" certs revoke --dir "$ca" --serial nothex
expect_status 1 "revoke a bad serial"
expect_err "bad serial 'nothex'" "revoke a bad serial"
run "$K" certs revoke --dir "$ca" --cert "$nodes/worker-w-1.crt"
expect_status 0 "revoke --cert"
expect_out "revoked serial" "revoke --cert"
expect_eq "$(mode "$ca/ca.crl")" 644 "CRL mode"
run openssl verify -crl_check -CRLfile "$ca/ca.crl" -CAfile "$ca/ca.crt" "$nodes/worker-w-1.crt"
expect_status 2 "openssl verify of a revoked certificate"
expect_err "certificate revoked" "openssl verify of a revoked certificate"
run openssl verify -crl_check -CRLfile "$ca/ca.crl" -CAfile "$ca/ca.crt" "$nodes/server-s1.crt"
expect_status 0 "openssl verify of a certificate not revoked, with the CRL"
serial=$(openssl x509 -in "$nodes/worker-w-1.crt" -noout -serial | cut -d= -f2)
run "$K" certs revoke --dir "$ca" --serial "$serial"
expect_status 0 "revoke an already revoked serial"
expect_out "already revoked" "revoke an already revoked serial"
run openssl crl -in "$ca/ca.crl" -noout -text -CAfile "$ca/ca.crt"
expect_err "verify OK" "openssl checks the CRL's signature"
expect_out "X509v3 CRL Number: *$" "CRL number present"
run "$K" certs revoke --dir "$tmp/noca" --serial 01
expect_status 1 "revoke without a CA"

# ---- TLS 1.3 mutual handshake with openssl s_server / s_client ----
# start_server CERTNAME: s_server for one connection, requiring a client
# certificate from the cluster CA; sets srv_pid once it accepts.
free_port() { python3 "$srcdir/scripts/lib/free_port.py"; }
start_server() {
    port=$(free_port)
    : >"$tmp/srv.out"
    timeout 60 openssl s_server -accept "127.0.0.1:$port" -cert "$nodes/$1.crt" \
        -key "$nodes/$1.key" -CAfile "$ca/ca.crt" -Verify 1 -verify_return_error -tls1_3 \
        -naccept 1 -www >"$tmp/srv.out" 2>"$tmp/srv.err" &
    srv_pid=$!
    for _ in $(seq 200); do
        grep -q ACCEPT "$tmp/srv.out" && return 0
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.1
    done
    fail "s_server did not start" "$(cat "$tmp/srv.err")"
}
stop_server() {
    local i
    for i in $(seq 100); do
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$srv_pid" 2>/dev/null
    wait "$srv_pid" 2>/dev/null
    srv_pid=
}
client() { # CERTDIR/NAME or "none", extra args...
    local who=$1
    shift
    local certargs=()
    [ "$who" != none ] && certargs=(-cert "$who.crt" -key "$who.key")
    run timeout 20 openssl s_client -connect "127.0.0.1:$port" "${certargs[@]}" \
        -CAfile "$ca/ca.crt" -verify 1 -verify_return_error -verify_ip 127.0.0.1 -tls1_3 \
        -ign_eof "$@" < <(printf 'GET / HTTP/1.0\r\n\r\n')
}

start_server server-s1
client "$nodes/worker-w-1"
expect_status 0 "mutual TLS 1.3 handshake"
expect_out "New, TLSv1.3, Cipher is" "the handshake is TLS 1.3"
expect_out "Verify return code: 0 \(ok\)" "the client verified the server"
expect_out "Subject: O=Keel, OU=worker, CN=w-1" "the server saw the worker's certificate"
stop_server
run cat "$tmp/srv.err"
expect_out "depth=0 O = Keel, OU = worker, CN = w-1" "s_server verified the client certificate"

start_server server-s1
client none
expect_err "alert certificate required" "no client certificate: the server sends an alert"
if printf '%s' "$run_out" | grep -q "Subject: O=Keel, OU=worker"; then
    fail "a client without a certificate got an answer"
else ok; fi
stop_server
run cat "$tmp/srv.err"
expect_out "peer did not return a certificate" "s_server refused a client without a certificate"

start_server server-s1
client "$other/worker-w-1"
if printf '%s' "$run_out" | grep -q "Subject: O=Keel, OU=worker"; then
    fail "a client of another CA got an answer"
else ok; fi
stop_server
run cat "$tmp/srv.err"
expect_out "unable to get local issuer certificate|certificate verify failed" \
    "s_server refused a client of another CA"

finish
