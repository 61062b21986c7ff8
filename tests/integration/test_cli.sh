#!/usr/bin/env bash
# test_cli.sh BINDIR SRCDIR - every binary's command line: --help, --version,
# configuration errors named, exit codes.  Runs the real binaries.
set -u
bindir=$1
. "$2/tests/lib/assert.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for bin in keel-coordinator keel-server keel-worker keelctl; do
    exe=$bindir/$bin
    run "$exe" --help
    expect_status 0 "$bin --help"
    expect_out "usage: $bin" "$bin --help"
    expect_out "--config FILE" "$bin --help"

    run "$exe" --version
    expect_status 0 "$bin --version"
    expect_out "^$bin [0-9]+\.[0-9]+\.[0-9]+ \(protocol 4\)$" "$bin --version"

    run "$exe" --bogus
    expect_status 64 "$bin --bogus"
    expect_err "unknown or incomplete option '--bogus'" "$bin --bogus"

    printf '[node]\nid = n1\n[net]\nio_threadz = 3\n' >"$tmp/unknown.ini"
    run "$exe" --config "$tmp/unknown.ini"
    expect_status 78 "$bin unknown key"
    expect_err "unknown.ini:4: unknown key 'io_threadz' in section \[net\]" "$bin unknown key"

    printf '[node]\nid = n1\n[net]\nmax_frame_size = huge\n' >"$tmp/bad.ini"
    run "$exe" --config "$tmp/bad.ini"
    expect_status 78 "$bin bad value"
    expect_err "\[net\] max_frame_size: must be a size such as 512K or 64M, got 'huge'" \
        "$bin bad value"

    run "$exe" --config "$tmp/missing.ini"
    expect_status 1 "$bin missing file"
    expect_err "cannot open config '.*missing.ini': No such file or directory" "$bin missing file"

    printf '[node]\nid = n1\ndata_dir = %s/data\n[tls]\nca = %s/none/ca.crt\ncert = %s/none/n.crt\nkey = %s/none/n.key\n[net]\nio_threads = 3\n' \
        "$tmp" "$tmp" "$tmp" "$tmp" >"$tmp/good.ini"
    run "$exe" --config "$tmp/good.ini" --set net.io_threads=0
    expect_status 78 "$bin override"
    expect_err "\[net\] io_threads: must be between 1 and 64, got '0'" "$bin override"

    run "$exe" --config "$tmp/good.ini" --check-config
    expect_status 0 "$bin --check-config"
    expect_out "config ok" "$bin --check-config"

    run "$exe" --config "$tmp/good.ini" -o net.io_threads=5 --dump-config
    expect_status 0 "$bin --dump-config"
    expect_out "^io_threads = 5$" "$bin --dump-config shows the override"
    expect_out "^id = n1$" "$bin --dump-config shows the file"

    if [ "$bin" = keelctl ]; then
        run "$exe" --config "$tmp/good.ini"
        expect_status 64 "keelctl without a command"
        expect_err "no command given" "keelctl without a command"
        run "$exe" --config "$tmp/good.ini" frobnicate
        expect_status 64 "keelctl unknown command"
        expect_err "unknown command 'frobnicate'" "keelctl unknown command"
    elif [ "$bin" != keel-coordinator ]; then
        # The server and the worker run (test_server.c, test_worker.sh); here:
        # their missing certificate files are named.  The coordinator runs
        # too: test_coordinator.sh.
        run "$exe" --config "$tmp/good.ini"
        expect_status 78 "$bin without its certificates"
        expect_err "cannot load CA certificate '$tmp/none/ca.crt'" "$bin without its certificates"
    fi
done

# Roles that need an identity refuse to start without one.
for bin in keel-coordinator keel-server keel-worker; do
    run "$bindir/$bin" --check-config
    expect_status 78 "$bin without node.id"
    expect_err "\[node\] id: must be set" "$bin without node.id"
done

# docs/configuration.md carries the option table; it must match the binaries.
srcdir=$2
run "$bindir/keelctl" --describe-config
expect_status 0 "keelctl --describe-config"
table=$(sed -n '/^| option | default | meaning |$/,$p' "$srcdir/docs/configuration.md")
if [ "$table" = "$run_out" ]; then ok; else
    fail "docs/configuration.md option table differs from keelctl --describe-config" \
        "$(diff <(printf '%s\n' "$table") <(printf '%s\n' "$run_out"))"
fi

finish
