#!/usr/bin/env python3
"""An MCP gateway recording its decisions in AuditLedger from Python.

Three events go through Ingest.Append in one all-or-nothing batch: a `tools/call` held for
approval, the human approval, and a denied secret read. The client stubs are generated from
the repository's .proto files at run time (grpcio-tools), into a temporary directory: nothing
generated is committed.

    pip install grpcio-tools
    python3 examples/python/gateway_example.py --target 127.0.0.1:50051 \
        --token-file data/dev-gateway.token [--proof-dir DIR]

With --proof-dir, each receipt's inclusion proof (with its signed checkpoint) is written as
protobuf JSON, ready for `auditledger-verify inclusion FILE --key VKEY`.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time
import uuid

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto" / "proto"


def generate_stubs(out_dir):
    """Runs protoc (from grpcio-tools) over auditledger/v1/*.proto into out_dir."""
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "auditledger" / "v1").glob("*.proto"))
    if not protos:
        sys.exit(f"no .proto files under {PROTO_ROOT}")
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"] + protos
    if protoc.main(args) != 0:
        sys.exit("protoc failed on " + " ".join(protos))
    sys.path.insert(0, str(out_dir))


def uuid7():
    """A UUIDv7 (RFC 9562): 48-bit unix milliseconds, version 7, variant 10, random rest."""
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(raw)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of the ledger (plaintext, loopback)")
    parser.add_argument("--token", help="gateway token")
    parser.add_argument("--token-file", help="file holding the gateway token")
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--env", default="dev")
    parser.add_argument("--proof-dir", help="write each receipt's inclusion proof here as JSON")
    args = parser.parse_args()
    token = args.token or (open(args.token_file).read().strip() if args.token_file else None)
    if not token:
        sys.exit("--token or --token-file is required")

    with tempfile.TemporaryDirectory(prefix="auditledger-stubs-") as stubs:
        generate_stubs(stubs)
        import grpc
        from google.protobuf import json_format
        from auditledger.v1 import event_pb2, ingest_pb2, ingest_pb2_grpc

        now = time.time_ns()
        base = dict(
            schema_version=1, tenant_id=args.tenant, environment=args.env, session_id="py-session-1",
            correlation_id="incident-42", user_id="alice@example.com", agent_id="support-agent",
            # A gateway_id per run: each run numbers its events from 1, and the ledger flags a
            # gateway whose numbers go backwards.
            gateway_id=f"python-gateway-{uuid7()[-12:]}", occurred_at=now,
        )
        call_id = uuid7()
        events = [
            event_pb2.AuditEvent(
                event_id=call_id, event_kind=event_pb2.EVENT_KIND_TOOL_CALL, gateway_seq=1,
                tool_server="github", tool_name="merge_pull_request", mcp_method="tools/call",
                decision=event_pb2.DECISION_REQUIRE_APPROVAL, policy_id="prod-write-needs-approval",
                risk_tier="high", **base),
            event_pb2.AuditEvent(
                event_id=uuid7(), event_kind=event_pb2.EVENT_KIND_APPROVAL, gateway_seq=2,
                tool_server="github", tool_name="merge_pull_request", decision=event_pb2.DECISION_ALLOW,
                parent_event_id=call_id,
                approval=event_pb2.Approval(approver="bob@example.com", ticket="CHG-1234",
                                            outcome=event_pb2.APPROVAL_OUTCOME_APPROVED, decided_at=now,
                                            reason="reviewed"),
                **base),
            event_pb2.AuditEvent(
                event_id=uuid7(), event_kind=event_pb2.EVENT_KIND_ACCESS, gateway_seq=3,
                tool_server="vault", tool_name="read_secret", resource="secret/prod/db-password",
                decision=event_pb2.DECISION_DENY, decision_reason="agents may not read production secrets",
                rule_id="no-prod-secrets", data_classification="restricted", **base),
        ]
        names = ["tools/call held for approval", "approval", "denied secret read"]
        with grpc.insecure_channel(args.target) as channel:
            ingest = ingest_pb2_grpc.IngestStub(channel)
            try:
                response = ingest.Append(
                    ingest_pb2.AppendRequest(events=events, wait_for_checkpoint=True),
                    metadata=[("authorization", f"Bearer {token}")],
                    timeout=30,
                )
            except grpc.RpcError as e:
                sys.exit(f"Append failed: {e.code().name}: {e.details()}")
        if len(response.receipts) != len(events):
            sys.exit(f"{len(response.receipts)} receipts for {len(events)} events")
        for name, event, receipt in zip(names, events, response.receipts):
            if receipt.event_id != event.event_id or len(receipt.leaf_hash) != 32:
                sys.exit(f"malformed receipt for {event.event_id}: {receipt}")
            print(f"{name}: event {receipt.event_id} -> {receipt.origin} leaf {receipt.leaf_index} "
                  f"(leaf hash {receipt.leaf_hash.hex()}){' [duplicate]' if receipt.duplicate else ''}, "
                  f"{len(receipt.proof.hashes)} proof hashes to tree size {receipt.proof.tree_size}")
            if args.proof_dir:
                proof = receipt.proof
                if not proof.HasField("checkpoint"):
                    proof.checkpoint.CopyFrom(response.checkpoint)
                path = pathlib.Path(args.proof_dir) / f"leaf-{receipt.leaf_index}.json"
                path.write_text(json_format.MessageToJson(proof))
                print(f"  proof written to {path}")
        print("signed checkpoint covering them:")
        print(response.checkpoint.note.rstrip())


if __name__ == "__main__":
    main()
