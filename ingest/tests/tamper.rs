//! Tamper detection at every tier (issue 8, item 4), with the real binaries: one ledger is
//! built over gRPC and archived with `auditledger archive` so that it has leaves in the cold
//! tier ([0, 512), two segments), the warm tier ([512, 768)) and the hot tier ([768, 1112): one
//! full tile and a right edge without a stored tile), plus a retention export of the whole
//! log. Each case copies it, flips one bit in one place and runs the detector that must catch
//! it, asserting failure and a message naming the leaf, tile, checkpoint, segment or member.
//!
//! Hot-tier cases rewrite one RocksDB value (key layout: `ledger/src/layout.rs`,
//! `docs/storage-format.md`) through the ledger's own `RocksStore` with the server stopped;
//! `auditledger fsck` must fail. Warm and cold objects are checked by `auditledger-verify
//! archive` and by the archiver's own read-back before a warm → cold move; `fsck` does not
//! read tier objects (it checks the segment records against the tree). Exports: one case
//! here; `verifier/tests/export.rs` flips every byte of every member. More tamperings of
//! archives (anchors, swapped objects, manifests) are in `archiver/tests/anchors.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use auditledger_ledger::layout::{self, Space, TileId};
use auditledger_ledger::store::rocks::{RocksOptions, RocksStore};
use auditledger_ledger::store::{Direction, Store, WriteBatch};
use auditledger_proto::v1 as pb;
use common::{Ledger, Server, authed, event};

const ORIGIN: &str = "auditledger.local/acme/prod";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn output(out: std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn cli(args: &[&str]) -> (bool, String) {
    output(common::run(args, &[]))
}

fn verify_bin() -> PathBuf {
    Path::new(common::bin()).with_file_name("auditledger-verify")
}

fn append(server: &Server, token: &str, first_seq: u64, n: u64) {
    rt().block_on(async {
        let mut ingest = server.ingest().await;
        let events: Vec<_> = (first_seq..first_seq + n)
            .map(|i| {
                let mut e = event("acme", "prod", i);
                e.decision_reason = format!("allowed by rule {}", i % 17);
                e
            })
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

/// The pristine ledger every case copies.
struct Built {
    ledger: Ledger,
    keys: Vec<String>,
    export: PathBuf,
}

fn build() -> Built {
    let ledger = Ledger::init(
        "ledger.segment_bits = 8\nledger.checkpoint_interval = \"50ms\"\ntiers.archive_interval = \"0s\"",
    );
    let config = ledger.config();
    let gateway = ledger.token("gateway", &["acme"], &["prod"], None);
    let compliance = ledger.token("compliance", &["acme"], &["prod"], None);
    let step = |what: &str, (ok, text): (bool, String)| assert!(ok, "{what}: {text}");

    let server = Server::start(&ledger);
    append(&server, &gateway, 1, 512);
    assert!(server.stop());
    step("archive warm", common::archive_once(&config, "warm"));
    step("archive cold", common::archive_once(&config, "cold"));
    let server = Server::start(&ledger);
    append(&server, &gateway, 513, 300);
    assert!(server.stop());
    step("archive warm", common::archive_once(&config, "warm"));
    let server = Server::start(&ledger);
    append(&server, &gateway, 813, 300);
    let export = ledger.dir.join("export.tar");
    // The export needs a checkpoint covering its end; `export` waits for none, so poll.
    let mut exported = (false, String::new());
    for _ in 0..100 {
        exported = output(common::run(
            &[
                "export",
                "--target",
                &server.url(),
                "--tenant",
                "acme",
                "--env",
                "prod",
                "--justification",
                "tamper test",
                "--out",
                export.to_str().unwrap(),
                "--start",
                "0",
                "--end",
                "1112",
            ],
            &[("AUDITLEDGER_TOKEN", compliance.as_str())],
        ));
        if exported.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    step("export", exported);
    assert!(server.stop());
    let keys = ledger.keys().iter().map(ToString::to_string).collect();
    Built {
        ledger,
        keys,
        export,
    }
}

/// A detector run: (passed, output).
type Outcome = (bool, String);

fn fsck(dir: &Path) -> Outcome {
    cli(&[
        "fsck",
        "--config",
        dir.join("config.toml").to_str().unwrap(),
    ])
}

fn verify_archive(tier: &Path, keys: &[String]) -> Outcome {
    let mut cmd = Command::new(verify_bin());
    cmd.arg("archive").arg(tier);
    for k in keys {
        cmd.args(["--key", k]);
    }
    output(cmd.output().expect("run auditledger-verify"))
}

fn verify_export(file: &Path, keys: &[String]) -> Outcome {
    let mut cmd = Command::new(verify_bin());
    cmd.arg("export").arg(file);
    for k in keys {
        cmd.args(["--key", k]);
    }
    output(cmd.output().expect("run auditledger-verify"))
}

/// The archiver's verify step: a warm → cold pass reads every warm object back and checks it
/// against its manifest and segment record before writing it to cold.
fn archive_cold(dir: &Path) -> Outcome {
    common::archive_once(dir.join("config.toml").to_str().unwrap(), "cold")
}

fn flip_file_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(at < bytes.len(), "{}: {at} beyond the file", path.display());
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Offset of the first occurrence of `needle` in `bytes`.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// Opens the copy's hot tier, lets `edit` rewrite one value, closes it.
fn with_store(dir: &Path, edit: impl FnOnce(&RocksStore, u32)) {
    let store = RocksStore::open(&dir.join("hot"), &RocksOptions::small_for_tests())
        .expect("open the copied hot tier");
    let id = store
        .get(Space::Meta, &layout::meta_origin_key(ORIGIN))
        .unwrap()
        .and_then(|v| layout::decode_u32(&v))
        .expect("acme/prod is registered");
    edit(&store, id);
    store.sync().unwrap();
}

/// Rewrites the value of `space`/`key` with bit 0 of the byte `at` picks flipped.
fn flip_value(store: &RocksStore, space: Space, key: &[u8], at: impl FnOnce(&[u8]) -> usize) {
    let mut value = store
        .get(space, key)
        .unwrap()
        .unwrap_or_else(|| panic!("no {} value under {}", space.name(), hex::encode(key)));
    let i = at(&value);
    value[i] ^= 0x01;
    let mut batch = WriteBatch::new();
    batch.put(space, key, value);
    store.write(batch, true).unwrap();
}

/// The newest checkpoint key of log `id`.
fn last_checkpoint_key(store: &RocksStore, id: u32) -> Vec<u8> {
    let (start, end) = layout::log_range(id);
    let mut found = None;
    store
        .scan(
            Space::Checkpoints,
            &start,
            end.as_ref().map(|e| &e[..]),
            Direction::Reverse,
            &mut |k, _| {
                found = Some(k.to_vec());
                false
            },
        )
        .unwrap();
    found.expect("a checkpoint")
}

fn segment_path(dir: &Path, tier: &str, start: u64, ext: &str) -> PathBuf {
    dir.join(tier)
        .join("acme/prod/segments")
        .join(format!("{start}-{}.{ext}", start + 256))
}

/// Name, data offset and size of the export's first `entries-*.parquet` member.
fn first_entries_member(tar_path: &Path) -> (String, u64, u64) {
    let file = std::fs::File::open(tar_path).unwrap();
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.starts_with("entries-") && name.ends_with(".parquet") {
            return (name, entry.raw_file_position(), entry.size());
        }
    }
    panic!("{}: no entries-*.parquet member", tar_path.display());
}

/// One tampering and what must catch it.
struct Case {
    name: &'static str,
    /// Where the bit is flipped, for the record.
    place: &'static str,
    tamper: Box<dyn Fn(&Path)>,
    detectors: Vec<Detector>,
}

/// A check that must fail on the tampered copy with a message containing `needle`.
struct Detector {
    name: &'static str,
    run: Box<dyn Fn(&Path) -> Outcome>,
    needle: String,
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp -a");
    assert!(status.success(), "copying {}", from.display());
}

#[test]
fn one_flipped_bit_anywhere_is_detected_and_named() {
    let built = build();
    let pristine = &built.ledger.dir;
    let keys = built.keys.clone();

    // Baseline: every detector passes on the untouched data (or the cases prove nothing).
    let (ok, text) = fsck(pristine);
    assert!(ok, "fsck on the pristine ledger: {text}");
    for tier in ["warm", "cold"] {
        let (ok, text) = verify_archive(&pristine.join(tier), &keys);
        assert!(ok, "verify archive {tier} on the pristine ledger: {text}");
    }
    let (ok, text) = verify_export(&built.export, &keys);
    assert!(ok, "verify export on the pristine export: {text}");

    let fsck_d = |needle: &str| Detector {
        name: "auditledger fsck",
        run: Box::new(fsck),
        needle: needle.to_owned(),
    };
    let archive_d = |tier: &'static str, needle: &str| {
        let keys = keys.clone();
        Detector {
            name: "auditledger-verify archive",
            run: Box::new(move |dir: &Path| verify_archive(&dir.join(tier), &keys)),
            needle: needle.to_owned(),
        }
    };
    let mover_d = |needle: &str| Detector {
        name: "auditledger archive --tier cold (read-back)",
        run: Box::new(archive_cold),
        needle: needle.to_owned(),
    };
    let leaf = |index: u64, locate: fn(&[u8]) -> usize| -> Box<dyn Fn(&Path)> {
        Box::new(move |dir: &Path| {
            with_store(dir, |s, id| {
                flip_value(s, Space::Leaves, &layout::leaf_key(id, index), locate)
            })
        })
    };
    let tile = |index: u64, at: usize| -> Box<dyn Fn(&Path)> {
        Box::new(move |dir: &Path| {
            with_store(dir, |s, id| {
                let key = layout::tile_key(id, TileId { level: 0, index });
                flip_value(s, Space::Tiles, &key, |_| at)
            })
        })
    };
    let file = |tier: &'static str, start: u64, ext: &'static str, at: fn(&[u8]) -> usize| {
        let f: Box<dyn Fn(&Path)> = Box::new(move |dir: &Path| {
            let path = segment_path(dir, tier, start, ext);
            let bytes = std::fs::read(&path).unwrap();
            flip_file_byte(&path, at(&bytes));
        });
        f
    };

    let cases = vec![
        Case {
            name: "hot leaf value, inside a stored tile",
            place: "leaves[acme/prod, 800]: a letter of tool_name (the leaf still decodes)",
            tamper: leaf(800, |v| find(v, b"create_issue")),
            detectors: vec![fsck_d("leaf 800")],
        },
        Case {
            name: "hot leaf value, right edge (no stored tile)",
            place: "leaves[acme/prod, 1100]: a letter of tool_name",
            tamper: leaf(1100, |v| find(v, b"create_issue")),
            detectors: vec![fsck_d("leaf 1100")],
        },
        Case {
            name: "hot leaf value, undecodable",
            place: "leaves[acme/prod, 801]: first byte (protobuf tag)",
            tamper: leaf(801, |_| 0),
            detectors: vec![fsck_d("leaf 801")],
        },
        Case {
            name: "tile value over hot leaves",
            place: "tiles[acme/prod, level 0, index 3]: byte 1000 (a level-0 hash of leaves 768..1024)",
            tamper: tile(3, 1000),
            detectors: vec![fsck_d("tile (level 0, index 3)")],
        },
        Case {
            name: "tile value over an archived (cold) segment",
            place: "tiles[acme/prod, level 0, index 0]: byte 40, the hash of leaf 1 (hashes of [0, 256) live only here)",
            tamper: tile(0, 40),
            // Rehashing the tile names the leaf whose hash no longer matches its index entry.
            detectors: vec![fsck_d("leaf 1:")],
        },
        Case {
            name: "checkpoint value",
            place: "checkpoints[acme/prod, newest]: a byte of the root hash line",
            tamper: Box::new(|dir: &Path| {
                with_store(dir, |s, id| {
                    let key = last_checkpoint_key(s, id);
                    // Line 3 of the note body is the base64 root hash.
                    flip_value(s, Space::Checkpoints, &key, |v| {
                        let body = String::from_utf8_lossy(v);
                        let third = body.match_indices('\n').nth(1).expect("3 lines").0 + 1;
                        third + 5
                    })
                })
            }),
            detectors: vec![fsck_d("checkpoint at size")],
        },
        Case {
            name: "event-id index value of a hot leaf",
            place: "event_ids[acme/prod, event of leaf 900]: low byte of the leaf index",
            tamper: Box::new(|dir: &Path| {
                with_store(dir, |s, id| {
                    let leaf = s
                        .get(Space::Leaves, &layout::leaf_key(id, 900))
                        .unwrap()
                        .unwrap();
                    let ev = auditledger_ledger::event::decode_leaf_strict(&leaf)
                        .unwrap()
                        .event
                        .unwrap();
                    let uuid = auditledger_ledger::event::EventId::parse(&ev.event_id).unwrap();
                    let key = layout::event_id_key(id, &uuid.0);
                    flip_value(s, Space::EventIds, &key, |v| v.len() - 1)
                })
            }),
            detectors: vec![fsck_d("leaf 900")],
        },
        Case {
            name: "event-id index value of an archived leaf",
            place: "event_ids[acme/prod, the entry of leaf 100 (cold)]: low byte of the leaf index",
            tamper: Box::new(|dir: &Path| {
                with_store(dir, |s, id| {
                    // The entry pointing to leaf 100 (cold): find it by value.
                    let (start, end) = layout::log_range(id);
                    let mut key = None;
                    s.scan(
                        Space::EventIds,
                        &start,
                        end.as_ref().map(|e| &e[..]),
                        Direction::Forward,
                        &mut |k, v| {
                            if layout::decode_u64(v) == Some(100) {
                                key = Some(k.to_vec());
                                return false;
                            }
                            true
                        },
                    )
                    .unwrap();
                    let key = key.expect("an entry for leaf 100");
                    flip_value(s, Space::EventIds, &key, |v| v.len() - 1)
                })
            }),
            detectors: vec![fsck_d("leaf 100")],
        },
        Case {
            name: "leaf-hash index value",
            place: "leaf_hashes[acme/prod, hash of leaf 950]: low byte of the leaf index",
            tamper: Box::new(|dir: &Path| {
                with_store(dir, |s, id| {
                    let leaf = s
                        .get(Space::Leaves, &layout::leaf_key(id, 950))
                        .unwrap()
                        .unwrap();
                    let hash = auditledger_ledger::merkle::leaf_hash(&leaf);
                    let key = layout::leaf_hash_key(id, &hash);
                    flip_value(s, Space::LeafHashes, &key, |v| v.len() - 1)
                })
            }),
            detectors: vec![fsck_d("leaf 950: leaf hash index points to")],
        },
        Case {
            name: "segment record value",
            place: "meta['G', acme/prod, 0]: a byte of the recorded segment root",
            tamper: Box::new(|dir: &Path| {
                with_store(dir, |s, id| {
                    flip_value(s, Space::Meta, &layout::meta_segment_key(id, 0), |_| 10)
                })
            }),
            detectors: vec![fsck_d("segment [0, 256)")],
        },
        Case {
            name: "warm Parquet object",
            place: "warm/acme/prod/segments/512-768.parquet: middle byte",
            tamper: file("warm", 512, "parquet", |b| b.len() / 2),
            detectors: vec![archive_d("warm", "512-768"), mover_d("512")],
        },
        Case {
            name: "warm manifest",
            place: "warm/acme/prod/segments/512-768.manifest: a byte of the root line",
            tamper: file("warm", 512, "manifest", |b| find(b, b"root") + 8),
            detectors: vec![archive_d("warm", "512-768"), mover_d("512")],
        },
        Case {
            name: "cold Parquet object",
            place: "cold/acme/prod/segments/0-256.parquet: middle byte",
            tamper: file("cold", 0, "parquet", |b| b.len() / 2),
            detectors: vec![archive_d("cold", "0-256")],
        },
        Case {
            name: "cold manifest",
            place: "cold/acme/prod/segments/256-512.manifest: a byte of the root line",
            tamper: file("cold", 256, "manifest", |b| find(b, b"root") + 8),
            detectors: vec![archive_d("cold", "256-512")],
        },
        Case {
            name: "export",
            place: "export.tar: the middle byte of the first entries Parquet member",
            tamper: Box::new(|dir: &Path| {
                let path = dir.join("export.tar");
                let (_, offset, size) = first_entries_member(&path);
                flip_file_byte(&path, (offset + size / 2) as usize);
            }),
            detectors: vec![Detector {
                name: "auditledger-verify export",
                run: {
                    let keys = keys.clone();
                    Box::new(move |dir: &Path| verify_export(&dir.join("export.tar"), &keys))
                },
                needle: first_entries_member(&built.export).0,
            }],
        },
    ];

    let mut misses = Vec::new();
    let scratch = tempfile::tempdir().unwrap();
    for (n, case) in cases.iter().enumerate() {
        let dir = scratch.path().join(format!("case-{n}"));
        copy_dir(pristine, &dir);
        (case.tamper)(&dir);
        for Detector {
            name: detector,
            run,
            needle,
        } in &case.detectors
        {
            let (ok, text) = run(&dir);
            let verdict = if ok {
                misses.push(format!("{}: {detector} passed:\n{text}", case.name));
                "MISSED"
            } else if !text.contains(needle.as_str()) {
                misses.push(format!(
                    "{}: {detector} failed without naming {needle:?}:\n{text}",
                    case.name
                ));
                "NOT NAMED"
            } else {
                "detected"
            };
            let first = text
                .lines()
                .find(|l| {
                    !needle.is_empty() && l.contains(needle.as_str()) && !l.starts_with("note:")
                })
                .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("");
            eprintln!(
                "| {} | {} | {detector} | {verdict} | {} |",
                case.name,
                case.place,
                first.trim()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(
        misses.is_empty(),
        "{} tampering(s) not caught:\n{}",
        misses.len(),
        misses.join("\n\n")
    );
}
