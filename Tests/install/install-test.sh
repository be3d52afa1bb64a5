#!/bin/bash
# The install test (`make install-test`, run by `make test`): `make install` into a temporary
# prefix, then the installed strait runs with the build folder out of reach. A private mount
# namespace (`unshare --mount`) puts an empty tmpfs over .build for the installed binary only;
# nothing else on the machine sees it. From there it runs --version, doctor --json, accel enable on
# a cgroup the test creates and disable (with its own pin folder), and drop attach, add and detach
# on a veth in a network namespace the test creates (addresses from 198.18.0.0/15). It also checks
# the exit codes: 64 with the usage for a bad command line, 1 with one line for a runtime failure.
# Everything it makes is removed on exit, failed or not. Needs root.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
name="strait-install-$$"
prefix=$(mktemp -d "/tmp/$name.XXXXXX")
cgroup_root=/sys/fs/cgroup/unified
[ -d "$cgroup_root" ] && grep -q " $cgroup_root cgroup2 " /proc/mounts || cgroup_root=/sys/fs/cgroup
cgroup="$cgroup_root/$name"
accel_pins="/sys/fs/bpf/$name-accel"
drop_pins="/sys/fs/bpf/$name-drop"
netns="$name"
failures=0

if [ "$(id -u)" -ne 0 ]; then
    if [ "${CI:-}" = true ]; then echo "install test: needs root (CI=true)"; exit 1; fi
    echo "install test: skipped, it needs root (accel and drop load BPF programs)"; exit 0
fi

cleanup() {
    set +e
    hidden drop detach veth-a --netns "$netns" --pin-directory "$drop_pins" >/dev/null 2>&1
    hidden accel disable --pin-directory "$accel_pins" >/dev/null 2>&1
    rm -rf "$accel_pins" "$drop_pins"
    ip netns del "$netns" 2>/dev/null
    rmdir "$cgroup" 2>/dev/null
    rm -rf "$prefix"
}
trap cleanup EXIT

# Runs the installed strait with .build replaced by an empty tmpfs and a PATH without the build.
hidden() {
    unshare --mount --propagation private sh -c 'mount -t tmpfs strait-hidden "$1/.build" && shift && exec "$@"' \
        sh "$repo" env PATH=/usr/sbin:/usr/bin:/sbin:/bin "$prefix/bin/strait" "$@"
}

check() {  # check DESCRIPTION COMMAND...: runs it, counts a failure
    local what=$1; shift
    if "$@"; then echo "ok   $what"; else echo "FAIL $what"; failures=$((failures + 1)); fi
}

make -C "$repo" --no-print-directory install PREFIX="$prefix" >/dev/null
binary="$prefix/bin/strait"

# What was installed.
check "binary installed" test -x "$binary"
check "man page strait.1 installed" test -s "$prefix/share/man/man1/strait.1"
check "man page for strait accel enable installed" test -s "$prefix/share/man/man1/strait.accel.enable.1"
check "bash completion installed" grep -q "_strait" "$prefix/share/bash-completion/completions/strait"
check "zsh completion installed" grep -q "#compdef strait" "$prefix/share/zsh/site-functions/_strait"
check "fish completion installed" grep -q "^complete -c .strait" "$prefix/share/fish/vendor_completions.d/strait.fish"
check "license installed" grep -q "Apache License" "$prefix/share/doc/strait/LICENSE"
for unit in "$repo"/deploy/systemd/*.service; do
    [ -e "$unit" ] || continue
    check "unit $(basename "$unit") installed" test -s "$prefix/lib/systemd/system/$(basename "$unit")"
done

# Linked only against system libraries: no Swift runtime, no benchmark interposer.
libraries=$(ldd "$binary" | awk '{print $1}' | xargs)
echo "     ldd: $libraries"
check "no Swift runtime or interposer in ldd" sh -c "! ldd '$binary' | grep -Eq 'libswift|libFoundation|libdispatch|MallocInterposer|\.build/'"
check "libbpf linked dynamically" sh -c "ldd '$binary' | grep -q libbpf"
# No benchmark code inside (issue 14): no symbol of the bench targets, the test fixtures or the
# interposer. The first check shows nm reads the binary's Swift symbols at all.
check "nm lists the binary's Swift symbols" sh -c "nm '$binary' | grep -q StraitProxy"
check "no benchmark or test-support symbols (nm)" sh -c "! nm '$binary' | grep -Eq 'StraitBench|StraitNetBench|StraitTestSupport|MallocInterposer'"

# From here the build folder is hidden.
check "the build folder is out of reach" unshare --mount --propagation private sh -c 'mount -t tmpfs x "$1/.build" && [ -z "$(ls -A "$1/.build")" ]' sh "$repo"
version=$(hidden --version)
echo "     $version"
check "--version names the version and the commit" sh -c "echo '$version' | grep -Eq '^strait [0-9]+\.[0-9]+\.[0-9]+ \(commit ([0-9a-f]{7,}|unknown)\)$'"

doctor=$(hidden doctor --json || true)  # exits 1 when accel cannot run here; the JSON is the point
check "doctor --json is JSON with checks" python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["checks"] and "ready" in r' "$doctor"

mkdir "$cgroup"
check "accel enable on the test cgroup" hidden accel enable --cgroup "$cgroup" --pin-directory "$accel_pins"
status=$(hidden accel status --json --pin-directory "$accel_pins")
check "accel status says enabled on that cgroup" python3 -c 'import json,sys; s=json.loads(sys.argv[1])["status"]; assert s["enabled"] and s["cgroup"].endswith(sys.argv[2])' "$status" "$name"
check "accel disable" hidden accel disable --pin-directory "$accel_pins"
check "accel left no pins" test ! -e "$accel_pins"

ip netns add "$netns"
ip -n "$netns" link add veth-a type veth peer name veth-b
ip -n "$netns" addr add 198.18.77.1/24 dev veth-a
ip -n "$netns" addr add 198.18.77.2/24 dev veth-b
ip -n "$netns" link set veth-a up
ip -n "$netns" link set veth-b up
check "drop attach to a veth in the test namespace" hidden drop attach veth-a --netns "$netns" --mode generic --pin-directory "$drop_pins"
check "drop add" hidden drop add 198.18.78.0/24 --pin-directory "$drop_pins"
listing=$(hidden drop list --json --pin-directory "$drop_pins")
check "drop list shows the rule and the attachment" python3 -c 'import json,sys; l=json.loads(sys.argv[1]); assert [a["interface"] for a in l["attachments"]] == ["veth-a"] and len(l["rules"]) == 1' "$listing"
check "drop detach" hidden drop detach veth-a --netns "$netns" --pin-directory "$drop_pins"
check "drop left nothing in the kernel" sh -c "! ip -n '$netns' link show veth-a | grep -q xdp"

# Exit codes: 64 and the usage for a bad command line; 1 and one line for a runtime failure.
expect_exit() {  # expect_exit CODE LINES-OR-"usage" ARGUMENTS...
    local code=$1 shape=$2; shift 2
    local errors status=0
    errors=$(hidden "$@" 2>&1 >/dev/null) || status=$?
    if [ "$shape" = usage ]; then
        check "strait $* exits $code with the usage" sh -c "[ $status -eq $code ] && echo \"\$1\" | grep -q 'Usage:'" sh "$errors"
    else
        check "strait $* exits $code with one line" sh -c "[ $status -eq $code ] && [ \$(echo \"\$1\" | wc -l) -eq 1 ] && echo \"\$1\" | grep -q '^strait: error: ' && ! echo \"\$1\" | grep -qi usage" sh "$errors"
        echo "     $errors"
    fi
}
expect_exit 64 usage accel enable --ports nonsense --pin-directory "$accel_pins"
expect_exit 64 usage drop frobnicate
expect_exit 1 line accel enable --cgroup "$cgroup_root/$name-missing" --pin-directory "$accel_pins"
expect_exit 1 line proxy reload --pid-file "$prefix/no-such.pid"
expect_exit 1 line bench accel
# errno 99 (an address on no interface) is not "another process on that port".
expect_exit 1 line proxy --listen 198.18.0.1:7 --upstream 127.0.0.1:9 --pid-file "$prefix/proxy.pid" --handover-socket "$prefix/handover.sock"
check "EADDRNOTAVAIL is explained as an address this host does not have" sh -c "hidden_errors=\$(\"\$@\" 2>&1 >/dev/null); echo \"\$hidden_errors\" | grep -q 'on no interface' && ! echo \"\$hidden_errors\" | grep -qi 'another'" sh \
    env PATH=/usr/sbin:/usr/bin:/sbin:/bin "$binary" proxy --listen 198.18.0.1:7 --upstream 127.0.0.1:9 --pid-file "$prefix/proxy.pid" --handover-socket "$prefix/handover.sock"

if [ "$failures" -ne 0 ]; then echo "install test: $failures check(s) failed"; exit 1; fi
echo "install test: all checks passed"
