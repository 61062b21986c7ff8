# assert.sh - tiny helpers for the shell-driven integration tests.
# Source it; call `run CMD...`, then expect_* (or require_status) on the captured result, and
# `finish` at the end, which prints "N passed, N failed" and sets the status.

passed=0
failed=0
run_out=
run_err=
run_status=0

run() {
    local o e
    o=$(mktemp) e=$(mktemp)
    "$@" >"$o" 2>"$e"
    run_status=$?
    run_out=$(cat "$o")
    run_err=$(cat "$e")
    rm -f "$o" "$e"
}

ok() { passed=$((passed + 1)); }
fail() {
    failed=$((failed + 1))
    printf 'FAIL: %s\n' "$1" >&2
    [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/    /' >&2
    return 0
}

expect_status() {
    if [ "$run_status" -eq "$1" ]; then ok; else
        fail "$2: exit status $run_status, expected $1" "stdout: $run_out
stderr: $run_err"
    fi
}

# require_status N WHAT: expect_status, and end the test at once on a
# mismatch (for steps nothing after can pass without, like a cluster's start).
require_status() {
    expect_status "$@"
    [ "$run_status" -eq "$1" ] || {
        finish
        exit 1
    }
}

expect_out() {
    if printf '%s\n' "$run_out" | grep -Eq -- "$1"; then ok; else
        fail "$2: stdout lacks /$1/" "$run_out"
    fi
}

expect_err() {
    if printf '%s\n' "$run_err" | grep -Eq -- "$1"; then ok; else
        fail "$2: stderr lacks /$1/" "$run_err"
    fi
}

finish() {
    printf '%d passed, %d failed\n' "$passed" "$failed"
    [ "$failed" -eq 0 ]
}
