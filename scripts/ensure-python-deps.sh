#!/bin/sh
# Make a Python virtual environment with PyPI's msgpack for the Python interop tests, and
# print its interpreter's path on stdout (the only thing printed there).
#
# The environment is target/py-venv in the repository (or $RPC_PY_VENV): the system Python
# is never installed into. Idempotent: an environment whose interpreter already imports
# msgpack is used as it is. The environment sees the system's site-packages, so a machine
# without network that has Debian's python3-msgpack needs no download. $PYTHON names the
# interpreter the environment is made from (default python3). Exits non-zero with a message
# on stderr when it cannot succeed.
set -u

PYTHON="${PYTHON:-python3}"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="${RPC_PY_VENV:-$ROOT/target/py-venv}"
VPY="$VENV/bin/python"
# Quiet the "new pip available" notice; older pips ignore it.
export PIP_DISABLE_PIP_VERSION_CHECK=1

die() {
    echo "ensure-python-deps: $*" >&2
    exit 1
}

if [ -x "$VPY" ] && "$VPY" -c 'import msgpack' >/dev/null 2>&1; then
    echo "$VPY"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 ||
    die "$PYTHON not found; install Python 3 (Debian: apt-get install python3 python3-venv)"

# Test binaries run in parallel (nextest) make the environment one at a time.
mkdir -p "$(dirname "$VENV")" || die "cannot create $(dirname "$VENV")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
fi

if [ ! -x "$VPY" ]; then
    echo "ensure-python-deps: creating $VENV" >&2
    if ! out=$("$PYTHON" -m venv --system-site-packages "$VENV" 2>&1); then
        rm -rf "$VENV"
        # Debian's python3 keeps venv's pip bootstrap (ensurepip) in python3-venv.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "ensure-python-deps: '$PYTHON -m venv' failed; installing python3-venv" >&2
            apt-get install -y -q python3-venv >&2 ||
                die "'apt-get install python3-venv' failed"
            out=$("$PYTHON" -m venv --system-site-packages "$VENV" 2>&1) ||
                die "'$PYTHON -m venv $VENV' failed:
$out"
        else
            die "'$PYTHON -m venv $VENV' failed (Debian: apt-get install python3-venv):
$out"
        fi
    fi
fi

if ! "$VPY" -c 'import msgpack' >/dev/null 2>&1; then
    echo "ensure-python-deps: installing msgpack into $VENV" >&2
    out=$("$VPY" -m pip install --quiet msgpack 2>&1) ||
        die "'$VPY -m pip install msgpack' failed:
$out
(no network? Debian's python3-msgpack, installed system-wide, is seen by the environment too)"
    [ -n "$out" ] && printf '%s\n' "$out" >&2
fi

"$VPY" -c 'import msgpack' >/dev/null 2>&1 ||
    die "pip reported success but '$VPY -c \"import msgpack\"' still fails"
echo "$VPY"
