#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/ for SECONDS each (default 60), from a fresh seed
# corpus of valid messages; fail if any target finds a crash, a hang (an input taking over
# 10 s) or a single allocation over 64 MiB.
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (`cargo +nightly`); installs cargo-fuzz when it is missing
# (`cargo install cargo-fuzz --locked`, about a minute). A finding is saved under
# fuzz/artifacts/TARGET/; replay it with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Every target (and the corpus generator) in one build.
cargo +nightly fuzz build
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
"fuzz/target/$host/release/gen_corpus" fuzz/corpus

logs="$(mktemp -d)"
failed=()
for path in fuzz/fuzz_targets/*.rs; do
    target="$(basename "$path" .rs)"
    echo "fuzz: $target for ${seconds}s"
    if cargo +nightly fuzz run "$target" -- \
        -max_total_time="$seconds" -timeout=10 -malloc_limit_mb=64 -rss_limit_mb=2048 \
        >"$logs/$target.log" 2>&1; then
        grep -E '^Done [0-9]+ runs' "$logs/$target.log" || true
    else
        echo "fuzz: $target FAILED; the end of its log:"
        tail -n 40 "$logs/$target.log"
        failed+=("$target")
    fi
done
rm -rf "$logs"

if ((${#failed[@]})); then
    echo "fuzz: findings in: ${failed[*]} (inputs under fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: no findings"
