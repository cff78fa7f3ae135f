#!/usr/bin/env bash
# The three gateway events (a tools/call held for approval, the approval, a denied secret read)
# sent with grpcurl, which reads the API from the repository's .proto files (no generated code;
# this also works with grpcurl releases older than the server's v1 reflection service).
#
#   examples/grpcurl.sh [HOST:PORT] TOKEN_FILE
#
# Prints the AppendResponse (receipts, inclusion proofs, the signed checkpoint) as JSON.
set -euo pipefail
target="${1:-127.0.0.1:50051}"
token_file="${2:?usage: examples/grpcurl.sh [HOST:PORT] TOKEN_FILE}"
command -v grpcurl >/dev/null || { echo "grpcurl is not installed (https://github.com/fullstorydev/grpcurl/releases)" >&2; exit 2; }

uuid7() {  # RFC 9562 UUIDv7: unix milliseconds, version 7, variant 10, random rest
    python3 -c 'import os,time,uuid;b=bytearray((time.time_ns()//10**6).to_bytes(6,"big")+os.urandom(10));b[6]=0x70|b[6]&15;b[8]=0x80|b[8]&63;print(uuid.UUID(bytes=bytes(b)))'
}
now="$(date +%s%N)"
call_id="$(uuid7)"
common='"tenant_id":"demo","environment":"dev","session_id":"grpcurl-session-1","user_id":"alice@example.com","agent_id":"support-agent","gateway_id":"grpcurl-gateway-'"${call_id: -12}"'","occurred_at":"'"$now"'"'
request='{"wait_for_checkpoint":true,"events":[
 {"event_id":"'"$call_id"'","event_kind":"EVENT_KIND_TOOL_CALL","gateway_seq":"1",'"$common"',
  "tool_server":"github","tool_name":"merge_pull_request","mcp_method":"tools/call","decision":"DECISION_REQUIRE_APPROVAL"},
 {"event_id":"'"$(uuid7)"'","event_kind":"EVENT_KIND_APPROVAL","gateway_seq":"2",'"$common"',
  "tool_server":"github","tool_name":"merge_pull_request","decision":"DECISION_ALLOW","parent_event_id":"'"$call_id"'",
  "approval":{"approver":"bob@example.com","ticket":"CHG-1234","outcome":"APPROVAL_OUTCOME_APPROVED","decided_at":"'"$now"'"}},
 {"event_id":"'"$(uuid7)"'","event_kind":"EVENT_KIND_ACCESS","gateway_seq":"3",'"$common"',
  "tool_server":"vault","tool_name":"read_secret","resource":"secret/prod/db-password","decision":"DECISION_DENY",
  "decision_reason":"agents may not read production secrets"}]}'
proto_root="$(cd "$(dirname "$0")/../proto/proto" && pwd)"
grpcurl -plaintext -import-path "$proto_root" -proto auditledger/v1/ingest.proto \
    -H "authorization: Bearer $(cat "$token_file")" -d "$request" \
    "$target" auditledger.v1.Ingest/Append
