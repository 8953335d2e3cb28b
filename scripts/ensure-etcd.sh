#!/bin/sh
# Make sure `etcd` (Debian's etcd-server, 3.4) and `protoc` (protobuf-compiler) are
# installed: the etcd tests (examples/tests/etcd.rs) start a real etcd, and the `etcd`
# feature's etcd-client builds its gRPC code with protoc.
#
# Idempotent: does nothing when both are on PATH (or PROTOC points at a protoc). Otherwise
# installs the missing packages with apt-get (needs root, as in CI). The tests start etcd
# themselves, on loopback with a temporary data directory: the package's own service is
# not needed, and this script does not start it. Exits non-zero with a message on stderr
# when it cannot succeed.
set -u

die() {
    echo "ensure-etcd: $*" >&2
    exit 1
}

missing=""
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
if [ -z "${PROTOC:-}" ] || [ ! -x "${PROTOC:-}" ]; then
    command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
    # protoc's well-known types (google/protobuf/descriptor.proto, which etcd-client's
    # protos import) are in libprotobuf-dev, only a recommendation of protobuf-compiler:
    # `--no-install-recommends` leaves them out.
    [ -f /usr/include/google/protobuf/descriptor.proto ] || missing="$missing libprotobuf-dev"
fi
[ -z "$missing" ] && exit 0

command -v apt-get >/dev/null 2>&1 ||
    die "missing:$missing, and apt-get is not available: install etcd (3.4 or later) and protoc by hand"
if [ "$(id -u)" -ne 0 ]; then
    die "missing:$missing; run as root, or: sudo apt-get install -y$missing"
fi

echo "ensure-etcd: installing$missing with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale or absent on a fresh machine: update once if needed.
# shellcheck disable=SC2086
if ! apt-get install -y --no-install-recommends $missing >/dev/null 2>&1; then
    apt-get update >/dev/null 2>&1 || die "apt-get update failed (no network?)"
    # shellcheck disable=SC2086
    out=$(apt-get install -y --no-install-recommends $missing 2>&1) ||
        die "apt-get install$missing failed:
$out"
fi
# Debian's package enables and starts an etcd service on 127.0.0.1:2379 where systemd
# runs; the tests use ports of their own and do not mind it.
command -v etcd >/dev/null 2>&1 || die "etcd-server installed but etcd is not on PATH"
command -v protoc >/dev/null 2>&1 || [ -n "${PROTOC:-}" ] || die "protobuf-compiler installed but protoc is not on PATH"
[ -n "${PROTOC:-}" ] || [ -f /usr/include/google/protobuf/descriptor.proto ] ||
    die "libprotobuf-dev installed but google/protobuf/descriptor.proto is not in /usr/include"
exit 0
