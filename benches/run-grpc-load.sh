#!/usr/bin/env bash
# End-to-end gRPC benchmark (by hand, not in CI): a fresh ledger served by `auditledger serve`,
# driven by `auditledger-load` on the same machine: a run paced at 50k events/s (latency, on
# the fresh database), an unlimited run (throughput), the no-op sink with the same client
# settings (transport ceiling), the paced run against a sink that stores each request as one
# synced RocksDB WriteBatch before answering (raw RocksDB behind the same transport, in its own
# process like the ledger: the ceiling for durable ack latency), and inclusion proof
# throughput: unary GetInclusionProof and GetInclusionProofs with 100 leaves per call, each
# beside the no-op sink.
#   benches/run-grpc-load.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
SECONDS_PER_RUN="${1:-20}"
BIN="$CARGO_TARGET_DIR/debug"
cargo test --workspace --all-targets --locked --no-run >/dev/null 2>&1
WORK="$(mktemp -d /work/grpc-load.XXXXXX 2>/dev/null || mktemp -d)"
SERVER=; SINK=
trap 'kill $SERVER $SINK 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN/auditledger" init "$WORK/ledger" >/dev/null
CONFIG="$WORK/ledger/config.toml"
GW="$("$BIN/auditledger" token create --config "$CONFIG" --tenant bench --env prod --role gateway | tail -n1)"
AUD="$("$BIN/auditledger" token create --config "$CONFIG" --tenant bench --env prod --role auditor | tail -n1)"
export AUDITLEDGER_QUOTAS_EVENTS_PER_SECOND=0 AUDITLEDGER_QUOTAS_BYTES_PER_SECOND=0 AUDITLEDGER_LOG=warn
"$BIN/auditledger" serve --config "$CONFIG" --listen 127.0.0.1:50551 > "$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER=$!
for _ in $(seq 1 100); do grep -q "listening" "$WORK/serve.out" && break; sleep 0.1; done
METRICS="http://$(sed -n 's#auditledger metrics on http://\(.*\)/metrics#\1#p' "$WORK/serve.out")/metrics"
echo "== ledger, paced at 50k events/s"
"$BIN/auditledger-load" --target http://127.0.0.1:50551 --token "$GW" --tenant bench --env prod \
    --connections 8 --inflight 4 --batch 100 --rate 50000 --seconds "$SECONDS_PER_RUN" --metrics "$METRICS"
echo "== ledger, unlimited rate"
"$BIN/auditledger-load" --target http://127.0.0.1:50551 --token "$GW" --tenant bench --env prod \
    --connections 8 --inflight 4 --batch 100 --seconds "$SECONDS_PER_RUN" --metrics "$METRICS"
echo "== no-op sink, same client"
"$BIN/auditledger-load" --sink --connections 8 --inflight 4 --batch 100 --seconds "$SECONDS_PER_RUN"
echo "== inclusion proofs (auditor token: proofs without contents)"
"$BIN/auditledger-load" --proofs --target http://127.0.0.1:50551 --token "$AUD" --tenant bench --env prod \
    --connections 4 --inflight 8 --seconds 10
echo "== proof sink, same client (unary transport ceiling)"
"$BIN/auditledger-load" --proofs --sink --connections 4 --inflight 8 --seconds 10
echo "== inclusion proofs in bulk (GetInclusionProofs, 100 leaves per call)"
"$BIN/auditledger-load" --proofs --proof-batch 100 --target http://127.0.0.1:50551 --token "$AUD" \
    --tenant bench --env prod --connections 4 --inflight 8 --seconds 10
echo "== proof sink, GetInclusionProofs with 100 leaves per call (transport ceiling)"
"$BIN/auditledger-load" --proofs --sink --proof-batch 100 --connections 4 --inflight 8 --seconds 10
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
echo "== durable sink (raw RocksDB, one synced WriteBatch per request, own process), paced at 50k events/s"
"$BIN/auditledger-load" --sink --durable "$WORK/durable-sink" --serve-sink 127.0.0.1:50561 > "$WORK/sink.out" 2>&1 &
SINK=$!
for _ in $(seq 1 100); do grep -q "serving" "$WORK/sink.out" && break; sleep 0.1; done
"$BIN/auditledger-load" --target http://127.0.0.1:50561 --label "durable sink (raw RocksDB, synced)" \
    --connections 8 --inflight 4 --batch 100 --rate 50000 --seconds "$SECONDS_PER_RUN"
kill "$SINK"; wait "$SINK" 2>/dev/null || true
echo "== raw RocksDB ceiling, same machine and run (8 writers, synced batches of 100)"
"$BIN/ledger_load" --raw-only --appenders 8 --seconds "$SECONDS_PER_RUN" --dir "$WORK"
