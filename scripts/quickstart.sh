#!/usr/bin/env bash
# Quick start: installs what is missing, builds, creates ./data on first run (config, signing
# key, dev tokens, RocksDB) and serves the ledger on 127.0.0.1:50051 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ensure_system_packages
export PROTOC="$(command -v protoc)"

# The same build as the test suite (same features, one RocksDB compile for both).
cargo test --workspace --all-targets --locked --no-run
BIN="$CARGO_TARGET_DIR/debug/auditledger"
if [ ! -f data/config.toml ]; then
    echo "== creating ./data; checkpoint verifier key:" >&2
    "$BIN" init data
    "$BIN" token create --config data/config.toml --tenant demo --env dev --role gateway \
        --name dev-gateway | tail -n 1 > data/dev-gateway.token
    "$BIN" token create --config data/config.toml --tenant demo --env dev --role investigator \
        --name dev-investigator | tail -n 1 > data/dev-investigator.token
    chmod 600 data/*.token
fi
cat >&2 <<EOT

== AuditLedger on 127.0.0.1:50051 (gRPC, plaintext on loopback), metrics on 127.0.0.1:9464/metrics
   Send a first event from another terminal:
     $BIN append --target http://127.0.0.1:50051 --token "\$(cat data/dev-gateway.token)"
   or with grpcurl (reflection is on):
     grpcurl -plaintext -H "authorization: Bearer \$(cat data/dev-gateway.token)" -d '{"events":[{
       "event_id":"'\$(python3 -c 'import uuid,time,os;t=int(time.time()*1000);b=bytearray(t.to_bytes(6,"big")+os.urandom(10));b[6]=0x70|b[6]&15;b[8]=0x80|b[8]&63;print(uuid.UUID(bytes=bytes(b)))')'",
       "event_kind":"EVENT_KIND_TOOL_CALL","tenant_id":"demo","environment":"dev",
       "occurred_at":"'\$(date +%s%N)'","tool_name":"search","decision":"DECISION_ALLOW"}],
       "wait_for_checkpoint":true}' 127.0.0.1:50051 auditledger.v1.Ingest/Append
   Verifier key: $("$BIN" keys list --config data/config.toml | head -n 1)
EOT
exec "$BIN" serve --config data/config.toml
