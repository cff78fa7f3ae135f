#!/usr/bin/env bash
# Fuzzes every parser (fuzz/, issue 8): builds the cargo-fuzz targets with nightly, ASan and
# debug assertions, then runs each for SECONDS (default 10) from its committed corpus
# fuzz/corpus/<target>/. Exits non-zero if any target crashes, or fails to build.
#
#   scripts/fuzz.sh [SECONDS]   run every target (new inputs go to a temp dir, not the repo)
#   scripts/fuzz.sh --seeds     regenerate the seed inputs into fuzz/corpus/<target>/
#   scripts/fuzz.sh --cmin      minimise every committed corpus in place (cargo fuzz cmin)
#
# Installs the nightly toolchain and cargo-fuzz when missing. Uses its own target dir,
# $HOME/.cache/auditledger-fuzz-target: a nightly/sanitizer build in the main one would
# force a full RocksDB rebuild. The fuzz crate never depends on RocksDB (checked below).
set -euo pipefail
cd "$(dirname "$0")/.."
export PROTOC="${PROTOC:-$(command -v protoc || echo /usr/bin/protoc)}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
fuzz_target_dir="$HOME/.cache/auditledger-fuzz-target"

mode="run"
seconds=10
case "${1:-}" in
    --seeds) mode="seeds" ;;
    --cmin) mode="cmin" ;;
    "") ;;
    *[!0-9]*) echo "usage: $0 [SECONDS] | --seeds | --cmin" >&2; exit 2 ;;
    *) seconds="$1" ;;
esac

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "== installing the nightly toolchain (cargo-fuzz needs -Zsanitizer)" >&2
    rustup toolchain install nightly --profile minimal </dev/null
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz" >&2
    # Its own temporary build dir: never the project's target dirs.
    env -u CARGO_TARGET_DIR cargo install cargo-fuzz --locked </dev/null
fi

echo "== fuzz dependencies: no RocksDB, no tonic" >&2
deps="$(cd fuzz && CARGO_TARGET_DIR="$fuzz_target_dir" cargo +nightly tree --locked -e normal)"
if grep -E 'rocksdb|tonic' <<<"$deps"; then
    echo "the fuzz crate must not depend on rocksdb or tonic" >&2
    exit 1
fi

fuzz() {
    CARGO_TARGET_DIR="$fuzz_target_dir" cargo +nightly fuzz "$@"
}
echo "== building the fuzz targets" >&2
fuzz build --debug-assertions --target-dir "$fuzz_target_dir" </dev/null
targets=$(fuzz list)
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="$fuzz_target_dir/$triple/release"

case "$mode" in
    seeds)
        for t in $targets; do
            AUDITLEDGER_FUZZ_SEEDS="$PWD/fuzz/corpus/$t" "$bin_dir/$t" </dev/null
        done
        exit 0
        ;;
    cmin)
        # Seeds and crash regressions (seed-*, regress-*; unit tests include some) are kept.
        keep="$(mktemp -d)"
        for t in $targets; do
            mkdir -p "$keep/$t"
            cp fuzz/corpus/"$t"/seed-* fuzz/corpus/"$t"/regress-* "$keep/$t/" 2>/dev/null || true
            fuzz cmin --debug-assertions --target-dir "$fuzz_target_dir" "$t" "$PWD/fuzz/corpus/$t" \
                -- -rss_limit_mb=2048 -malloc_limit_mb=512 </dev/null
            cp "$keep/$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
        done
        rm -rf "$keep"
        exit 0
        ;;
esac

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
# Targets with a known, still open crash (the input is in fuzz/crashes/, see
# docs/reliability.md): run only with FUZZ_ALL=1, so CI stays meaningful for the others.
open_crashes=""
for t in $targets; do
    if [ -z "${FUZZ_ALL:-}" ] && grep -qw "$t" <<<"$open_crashes"; then
        echo "== skipping $t (known open crash; FUZZ_ALL=1 runs it)" >&2
        continue
    fi
    echo "== fuzzing $t for ${seconds}s" >&2
    mkdir -p "$scratch/$t" "fuzz/corpus/$t" fuzz/artifacts
    # New inputs go to the scratch dir (first corpus dir); the committed corpus is read only.
    # -malloc_limit_mb: any single allocation above 512 MiB is a bug (hostile sizes).
    # -seed: fixed by default so a CI run explores the same inputs (a failure reproduces);
    # set FUZZ_SEED to something else for exploratory runs.
    if ! fuzz run --debug-assertions --target-dir "$fuzz_target_dir" "$t" \
        "$scratch/$t" "$PWD/fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -seed="${FUZZ_SEED:-1}" -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -print_final_stats=1 -artifact_prefix="$PWD/fuzz/artifacts/$t-" </dev/null; then
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets failed: ${failed[*]} (crashing inputs: fuzz/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${seconds}s without a crash" >&2
