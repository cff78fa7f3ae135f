//! `Compliance.Export` end to end with the real binaries: events appended over gRPC, segments
//! moved to cold and warm, then `auditledger export` (by leaf range and by time window) across
//! cold, warm and hot leaves, checked by `auditledger-verify export`; roles, justification and
//! the system-log record.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use auditledger_ledger::event::decode_leaf_strict;
use auditledger_proto::v1 as pb;
use common::{Ledger, Server, authed, event, output, rt};

fn verify(file: &Path, keys: &[String]) -> (bool, String) {
    let mut cmd = Command::new(Path::new(common::bin()).with_file_name("auditledger-verify"));
    cmd.arg("export").arg(file);
    for k in keys {
        cmd.args(["--key", k]);
    }
    output(cmd.output().unwrap())
}

fn append(server: &Server, token: &str, first_seq: u64, n: u64) {
    rt().block_on(async {
        let mut ingest = server.ingest().await;
        let events: Vec<_> = (first_seq..first_seq + n)
            .map(|i| event("acme", "prod", i))
            .collect();
        for chunk in events.chunks(100) {
            ingest
                .append(authed(
                    pb::AppendRequest {
                        events: chunk.to_vec(),
                        wait_for_checkpoint: false,
                    },
                    token,
                ))
                .await
                .unwrap();
        }
    });
}

/// Runs `auditledger export` against `server`; (success, output).
fn export(
    server: &Server,
    token: &str,
    out: &Path,
    selection: &[&str],
    why: &str,
) -> (bool, String) {
    let url = server.url();
    let mut args = vec![
        "export",
        "--target",
        &url,
        "--tenant",
        "acme",
        "--env",
        "prod",
        "--justification",
        why,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(selection);
    output(common::run(&args, &[("AUDITLEDGER_TOKEN", token)]))
}

/// `logged_at` of every leaf of acme/prod, read back as an investigator.
fn logged_at(server: &Server, investigator: &str, size: u64) -> Vec<u64> {
    rt().block_on(async {
        let mut log = server.log().await;
        let mut stream = log
            .get_entries(authed(
                pb::GetEntriesRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    start: 0,
                    end: size,
                    justification: "export test: locate times".into(),
                },
                investigator,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut times = Vec::new();
        while let Some(entry) = stream.message().await.unwrap() {
            times.push(decode_leaf_strict(&entry.leaf).unwrap().logged_at);
        }
        times
    })
}

#[test]
fn exports_across_tiers_verify_offline() {
    let ledger = Ledger::init("ledger.segment_bits = 8\nledger.checkpoint_interval = \"50ms\"");
    let gateway = ledger.token("gateway", &["acme"], &["prod"], None);
    let compliance = ledger.token("compliance", &["acme"], &["prod"], None);
    let investigator = ledger.token("investigator", &["acme"], &["prod"], None);
    let system_admin = ledger.token("admin", &["_system"], &["prod"], None);
    let other_tenant = ledger.token("compliance", &["globex"], &["prod"], None);
    let keys: Vec<String> = ledger.keys().iter().map(ToString::to_string).collect();
    // [0, 512) cold, [512, 768) warm, [768, 800) hot.
    let server = Server::start(&ledger);
    append(&server, &gateway, 1, 512);
    assert!(server.stop());
    ledger.archive("warm");
    ledger.archive("cold");
    let server = Server::start(&ledger);
    append(&server, &gateway, 513, 288);
    assert!(server.stop());
    ledger.archive("warm");
    let server = Server::start(&ledger);

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| -> PathBuf { dir.path().join(name) };

    // By leaf range, across all three tiers.
    let (ok, text) = export(
        &server,
        &compliance,
        &file("range.tar"),
        &["--start", "100", "--end", "790"],
        "SOC 2 evidence request 42",
    );
    assert!(ok, "{text}");
    let (ok, text) = verify(&file("range.tar"), &keys);
    assert!(ok, "{text}");
    assert!(
        text.contains("leaves [100, 790) — 690 leaves (0 without content"),
        "{text}"
    );
    // The same range as OCSF JSON lines for a SIEM: one API Activity object per leaf, in
    // order, each carrying its proof anchors; no tar is left behind.
    let (ok, text) = export(
        &server,
        &compliance,
        &file("range.ocsf.jsonl"),
        &["--start", "100", "--end", "790", "--format", "ocsf-jsonl"],
        "SIEM import 42",
    );
    assert!(ok, "{text}");
    let lines = std::fs::read_to_string(file("range.ocsf.jsonl")).unwrap();
    let objects: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
        .collect();
    assert_eq!(objects.len(), 690);
    for (i, o) in objects.iter().enumerate() {
        assert_eq!(o["class_uid"], 6003, "{o}");
        assert_eq!(
            o["unmapped"]["auditledger"]["leaf_index"],
            100 + i as u64,
            "{o}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".export-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // By time window: the range must be exactly the leaves logged in [from, to).
    let times = logged_at(&server, &investigator, 800);
    assert_eq!(times.len(), 800);
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "logged_at decreases"
    );
    let (from, to) = (times[150], times[700]);
    let expected_start = times.iter().position(|&t| t >= from).unwrap();
    let expected_end = times.iter().position(|&t| t >= to).unwrap();
    let (ok, text) = export(
        &server,
        &compliance,
        &file("time.tar"),
        &["--from", &from.to_string(), "--to", &to.to_string()],
        "incident 7 window",
    );
    assert!(ok, "{text}");
    let (ok, text) = verify(&file("time.tar"), &keys);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("leaves [{expected_start}, {expected_end})")),
        "expected [{expected_start}, {expected_end}): {text}"
    );
    assert!(text.contains(&format!("window [{from}, {to})")), "{text}");

    // The export is in the system log, with who, why and what.
    let events = rt().block_on(common::system_events(&server, &system_admin, |events| {
        events
            .iter()
            .filter(|e| e.event_kind == pb::EventKind::DataExport as i32)
            .count()
            >= 3
    }));
    let exports: Vec<_> = events
        .iter()
        .filter(|e| e.event_kind == pb::EventKind::DataExport as i32)
        .collect();
    // Three exports above: the range, the same range as OCSF, the time window.
    assert_eq!(exports.len(), 3, "{events:#?}");
    assert!(
        exports
            .iter()
            .any(|e| format!("{e:?}").contains("SIEM import 42")),
        "{exports:#?}"
    );
    let first = format!("{:?}", exports[0]);
    assert!(
        first.contains("SOC 2 evidence request 42")
            && first.contains("Compliance.Export")
            && first.contains("\"790\""),
        "{first}"
    );

    // Refusals: role, tenancy, justification, range — and no file left behind.
    let refused = |token: &str, selection: &[&str], why: &str, needle: &str| {
        let out = file("refused.tar");
        let (ok, text) = export(&server, token, &out, selection, why);
        assert!(!ok && text.contains(needle), "{needle:?} not in {text}");
        assert!(!out.exists(), "a refused export left {}", out.display());
    };
    refused(
        &investigator,
        &["--start", "0", "--end", "10"],
        "why",
        "PermissionDenied",
    );
    refused(
        &other_tenant,
        &["--start", "0", "--end", "10"],
        "why",
        "PermissionDenied",
    );
    refused(
        &compliance,
        &["--start", "0", "--end", "10"],
        " ",
        "justification is required",
    );
    refused(
        &compliance,
        &["--start", "0", "--end", "801"],
        "why",
        "beyond the tree size",
    );
    refused(
        &compliance,
        &["--start", "10", "--end", "10"],
        "why",
        "empty or reversed",
    );
    assert!(server.stop());

    // A tampered copy fails with the member named.
    let mut bytes = std::fs::read(file("range.tar")).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(file("tampered.tar"), &bytes).unwrap();
    let (ok, text) = verify(&file("tampered.tar"), &keys);
    assert!(
        !ok && text.contains("FAILED") && text.contains("entries-000000.parquet"),
        "{text}"
    );
}
