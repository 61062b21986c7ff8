# etcd.sh - start, stop and restart a private etcd for a test.
#
# Source it, then:
#   etcd_start DIR [--tls CERTDIR]   start /usr/bin/etcd with its data in DIR/etcd.data
#                                    on two free loopback ports; waits until healthy.
#                                    With --tls, CERTDIR holds ca.crt, server.crt and
#                                    server.key and etcd requires client certificates.
#   etcd_stop                        SIGTERM by PID, wait for the exit (SIGKILL after 10 s)
#   etcd_kill                        SIGKILL by PID
#   etcd_restart                     etcd_stop, then start again: same ports, same data
#   etcdctl_ ARGS...                 etcdctl against the test's etcd (TLS flags included)
#   free_port                        print a loopback TCP port nobody listens on
#
# After etcd_start: ETCD_ENDPOINT (http[s]://127.0.0.1:PORT), ETCD_PID, ETCD_DIR,
# ETCD_LOG.  Only the PID this file started is ever signalled; call etcd_stop
# (or rely on the EXIT trap the caller sets) before removing DIR.

ETCD_BIN=${ETCD_BIN:-/usr/bin/etcd}
ETCDCTL_BIN=${ETCDCTL_BIN:-/usr/bin/etcdctl}
ETCD_PID=
ETCD_ENDPOINT=
ETCD_DIR=
ETCD_LOG=
ETCD_CLIENT_PORT=
ETCD_PEER_PORT=
ETCD_TLS_DIR=

# A loopback TCP port nobody listens on, below the ephemeral range
# (scripts/lib/free_port.py).
free_port() { python3 "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/free_port.py"; }

etcdctl_() {
    if [ -n "$ETCD_TLS_DIR" ]; then
        ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints "$ETCD_ENDPOINT" --dial-timeout 3s \
            --cacert "$ETCD_TLS_DIR/ca.crt" --cert "$ETCD_TLS_DIR/client.crt" \
            --key "$ETCD_TLS_DIR/client.key" "$@"
    else
        ETCDCTL_API=3 "$ETCDCTL_BIN" --endpoints "$ETCD_ENDPOINT" --dial-timeout 3s "$@"
    fi
}

etcd__launch() {
    local scheme=http
    local -a tls=()

    if [ -n "$ETCD_TLS_DIR" ]; then
        scheme=https
        tls=(--cert-file "$ETCD_TLS_DIR/server.crt" --key-file "$ETCD_TLS_DIR/server.key"
            --trusted-ca-file "$ETCD_TLS_DIR/ca.crt" --client-cert-auth)
    fi
    ETCD_ENDPOINT=$scheme://127.0.0.1:$ETCD_CLIENT_PORT
    "$ETCD_BIN" --name keeltest --data-dir "$ETCD_DIR/etcd.data" \
        --listen-client-urls "$ETCD_ENDPOINT" --advertise-client-urls "$ETCD_ENDPOINT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "keeltest=http://127.0.0.1:$ETCD_PEER_PORT" \
        --heartbeat-interval 100 --election-timeout 1000 \
        "${tls[@]}" >>"$ETCD_LOG" 2>&1 &
    ETCD_PID=$!
    etcd__wait_healthy
}

# Poll `endpoint health` for up to 30 s; on failure show the log's tail.
etcd__wait_healthy() {
    local i
    for i in $(seq 1 150); do
        if ! kill -0 "$ETCD_PID" 2>/dev/null; then
            echo "etcd.sh: etcd exited during start-up; log:" >&2
            tail -n 20 "$ETCD_LOG" >&2
            return 1
        fi
        if etcdctl_ endpoint health >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "etcd.sh: etcd not healthy after 30 s; log:" >&2
    tail -n 20 "$ETCD_LOG" >&2
    return 1
}

etcd_start() {
    ETCD_DIR=$1
    shift
    ETCD_TLS_DIR=
    if [ "${1:-}" = --tls ]; then
        ETCD_TLS_DIR=$2
    fi
    mkdir -p "$ETCD_DIR"
    ETCD_LOG=$ETCD_DIR/etcd.log
    ETCD_CLIENT_PORT=$(free_port)
    ETCD_PEER_PORT=$(free_port)
    while [ "$ETCD_PEER_PORT" = "$ETCD_CLIENT_PORT" ]; do
        ETCD_PEER_PORT=$(free_port)
    done
    etcd__launch
}

etcd_stop() {
    local i
    [ -n "$ETCD_PID" ] || return 0
    kill -TERM "$ETCD_PID" 2>/dev/null
    for i in $(seq 1 100); do
        kill -0 "$ETCD_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$ETCD_PID" 2>/dev/null
    wait "$ETCD_PID" 2>/dev/null
    ETCD_PID=
}

etcd_kill() {
    [ -n "$ETCD_PID" ] || return 0
    kill -KILL "$ETCD_PID" 2>/dev/null
    wait "$ETCD_PID" 2>/dev/null
    ETCD_PID=
}

# Same ports and data directory: clients configured with ETCD_ENDPOINT reconnect.
# The ports were ours a moment ago; retry the launch a few times in case the
# kernel still holds them.
etcd_restart() {
    local try
    etcd_stop
    for try in 1 2 3 4 5; do
        etcd__launch && return 0
        etcd_kill
        sleep 1
    done
    return 1
}

# Make a CA, a server certificate (serverAuth and clientAuth: etcd's gateway
# dials etcd itself with it) and a client certificate in DIR, with the openssl
# command line.  A second, unrelated CA and a client certificate it signed go
# to DIR/other.{crt,key} and DIR/other-ca.crt, for tests of refusal.
etcd_make_certs() {
    local d=$1
    mkdir -p "$d"
    (
        cd "$d" || exit 1
        for ca in ca other-ca; do
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -keyout "$ca.key" -out "$ca.crt" -days 2 -subj "/CN=keel test $ca" \
                >/dev/null 2>&1 || exit 1
        done
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' \
            >server.ext
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        issue() { # name ca ext
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
                -out "$1.csr" -subj "/CN=$1" >/dev/null 2>&1 &&
                openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial \
                    -days 2 -extfile "$3" -out "$1.crt" >/dev/null 2>&1
        }
        issue server ca server.ext || exit 1
        issue client ca client.ext || exit 1
        issue other other-ca client.ext || exit 1
    )
}
