#!/usr/bin/env bash
# test_layers.sh BINDIR SRCDIR - the layering is the build's, not a habit:
#  - the library graph `cmake --graphviz` prints is the table in
#    docs/architecture.md ("The code"), edge for edge;
#  - a role's source that includes another role's header does not compile,
#    and one that calls another role's function does not link, while the
#    same probes against a layer below compile and link (the controls);
#  - etcd keys are spelled in one module and public headers include only
#    public headers.
set -u
bindir=$1
src=$2
build=$(cd "$bindir/.." && pwd)
. "$src/tests/lib/assert.sh"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---- the graph against the documented table ----
run cmake -S "$src" -B "$tmp/graph" -DKEEL_TESTS=OFF -DKEEL_BENCH=OFF --graphviz="$tmp/graph/keel.dot"
expect_status 0 "cmake --graphviz"
# Edges between Keel's own libraries: "// keel_x -> keel_y" comments.
grep -oE '// keel_[a-z]+ -> keel_[a-z]+$' "$tmp/graph/keel.dot" | sed 's|^// ||' | sort >"$tmp/built"
# The table: "| `keel_x` | `keel_y`, `keel_z` |".
sed -n '/^| library | links |$/,/^$/p' "$src/docs/architecture.md" |
    grep -oE '^\| `keel_[a-z]+` \|[^|]*\|' |
    while IFS='|' read -r _ lib uses _; do
        lib=$(echo "$lib" | tr -d ' `')
        for u in $(echo "$uses" | tr -d '`,'); do echo "$lib -> $u"; done
    done | sort >"$tmp/documented"
run diff "$tmp/documented" "$tmp/built"
expect_status 0 "docs/architecture.md's table is the graph CMake builds (< documented, > built)"
[ "$(wc -l <"$tmp/built")" -ge 10 ] && ok || fail "too few library edges found: $(cat "$tmp/built")"

# ---- a back-edge fails the build ----
# The compile command CMake uses for server/server.c, with a probe file instead.
compile_cmd() {
    python3 - "$build/compile_commands.json" "$1" <<'EOF'
import json, shlex, sys
for e in json.load(open(sys.argv[1])):
    if e["file"].endswith(sys.argv[2]):
        args = shlex.split(e["command"])
        out = []
        skip = False
        for a in args:
            if skip:
                skip = False
                continue
            if a in ("-o", "-c"):
                skip = True
                continue
            out.append(a)
        print(shlex.join(out))
        break
EOF
}
cc_server=$(compile_cmd server/server.c)
[ -n "$cc_server" ] && ok || fail "no compile command for server/server.c in $build"

printf '#include "leader.h"\n' >"$tmp/include_role.c"
run bash -c "$cc_server -fsyntax-only $tmp/include_role.c"
expect_status 1 "server/ including a coordinator header"
expect_err 'leader.h: No such file' "server/ including a coordinator header"
printf '#include "etcd.h"\n#include "net.h"\n' >"$tmp/include_below.c"
run bash -c "$cc_server -fsyntax-only $tmp/include_below.c"
expect_status 0 "server/ including cluster and net headers (control)"

# Link a probe against keel-server's own link line in place of its main.c.
link=$(cat "$build/server/CMakeFiles/keel-server.dir/link.txt")
probe_link() { # NAME DECLARATION CALL
    printf '%s\nint main(void) { return %s != 0; }\n' "$2" "$3" >"$tmp/$1.c"
    (cd "$build/server" &&
        eval "$cc_server -c $tmp/$1.c -o $tmp/$1.o" &&
        eval "${link/CMakeFiles\/keel-server.dir\/main.c.o/$tmp/$1.o}" -o "$tmp/$1")
}
run probe_link call_role 'int keel_assign_join(void *, const char *, void *, void *);' \
    'keel_assign_join(0, "s", 0, 0)'
expect_status 1 "keel-server calling the coordinator's rebalancer"
expect_err "undefined reference to .keel_assign_join" "keel-server calling the coordinator's rebalancer"
run probe_link call_below 'unsigned keel_assign_replication(const void *);' \
    'keel_assign_replication(0)'
expect_status 0 "keel-server calling the assignment table of cluster/ (control)"

# ---- etcd keys in one module; public headers stand alone ----
run grep -rln '"/keel/%s' --include=*.c "$src"
if [ -z "$run_out" ] || [ "$(printf '%s\n' "$run_out" | sed "s|^$src/||")" = cluster/keys.c ]; then
    ok
else
    fail '"/keel/%s" spelled outside cluster/keys.c' "$run_out"
fi
run grep -nE '#include ("[^k/][^"]*"|"k[^e][^"]*"|<(lmdb|openssl/|curl/|event2/)[^>]*>)' \
    "$src"/include/keel/*.h
[ -z "$run_out" ] && ok || fail "public headers include folder or third-party headers" "$run_out"

finish
