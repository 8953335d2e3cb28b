#!/bin/sh
# Make sure python3 can `import msgpack` (PyPI `msgpack`), for the Python interop tests.
#
# Idempotent: does nothing when msgpack is already importable. Otherwise installs it with
# pip for the current user's python3, retrying with --break-system-packages when pip
# refuses an "externally managed" environment (Debian 12 and later). Set PYTHON to use
# another interpreter. Exits non-zero with a message on stderr when it cannot succeed.
set -u

PYTHON="${PYTHON:-python3}"
# Quiet the "running pip as root" and "new pip available" notices; older pips ignore these.
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

die() {
    echo "ensure-python-deps: $*" >&2
    exit 1
}

command -v "$PYTHON" >/dev/null 2>&1 ||
    die "$PYTHON not found; install Python 3 (Debian: apt-get install python3 python3-pip)"

if "$PYTHON" -c 'import msgpack' >/dev/null 2>&1; then
    exit 0
fi

"$PYTHON" -m pip --version >/dev/null 2>&1 ||
    die "msgpack is missing and '$PYTHON -m pip' is unavailable (Debian: apt-get install python3-pip, or python3-msgpack)"

echo "ensure-python-deps: installing msgpack with pip" >&2
if ! out=$("$PYTHON" -m pip install --quiet msgpack 2>&1); then
    case "$out" in
    *externally-managed-environment* | *break-system-packages*)
        # PEP 668 (Debian 12+): the system python refuses pip installs outside a venv.
        echo "ensure-python-deps: pip refused (externally managed); retrying with --break-system-packages" >&2
        out=$("$PYTHON" -m pip install --quiet --break-system-packages msgpack 2>&1) ||
            die "'$PYTHON -m pip install --break-system-packages msgpack' failed:
$out
(no network? on Debian, apt-get install python3-msgpack also works)"
        ;;
    *)
        die "'$PYTHON -m pip install msgpack' failed:
$out
(no network? on Debian, apt-get install python3-msgpack also works)"
        ;;
    esac
fi
[ -n "$out" ] && printf '%s\n' "$out" >&2

"$PYTHON" -c 'import msgpack' >/dev/null 2>&1 ||
    die "pip reported success but '$PYTHON -c \"import msgpack\"' still fails (is pip installing for another interpreter?)"
exit 0
