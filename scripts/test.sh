#!/usr/bin/env bash
# The full test suite: formatting, lints (warnings are errors), every test of every crate.
# Installs what is missing first. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ensure_system_packages
export PROTOC="$(command -v protoc)"
# Stale test executables in the fixed target dir (scripts/prune-target.py), removed on every
# exit, failed runs included: a red run must not leave ~400 MB per stale executable behind to
# fill the disk. The exit status stays the suite's.
prune_target() {
    local status=$?
    echo "== stale test executables in the fixed target dir (scripts/prune-target.py)" >&2
    cargo test --workspace --all-targets --locked --no-run --message-format=json 2>/dev/null \
        | python3 scripts/prune-target.py >&2 || echo "prune-target: skipped" >&2
    exit "$status"
}
trap prune_target EXIT
python3 -c 'import moto.server, flask_cors' 2>/dev/null || python3 -m pip install --quiet 'moto[server]' </dev/null  # S3 server of archiver/tests/s3.rs

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the verifier's dependencies: no rocksdb, no tonic (DESIGN §2)" >&2
deps="$(cargo tree --locked -e normal -p auditledger-verifier)"; if grep -E 'rocksdb|tonic' <<<"$deps"; then echo "auditledger-verifier must not depend on rocksdb or tonic (DESIGN §2)" >&2; exit 1; fi
echo "== cargo test" >&2
cargo test --workspace --all-targets --locked
echo "== gateway examples (Rust client, Python, grpcurl) against a throwaway ledger" >&2
scripts/examples.sh
echo "== the docs' commands (quickstart, operations, scale-out) and command forms (all docs)" >&2
scripts/doc-commands.sh
echo "== doc tests" >&2
cargo test --workspace --doc --locked
echo "== fuzz targets, 5 s each (scripts/fuzz.sh; own toolchain and target dir)" >&2
scripts/fuzz.sh 5
echo "all tests passed" >&2
