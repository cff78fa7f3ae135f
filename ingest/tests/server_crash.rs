//! Kill -9 of the real `auditledger serve` under load (issue 8, item 1): a load client on
//! loopback (three `AppendStream` gateways with up to 8 requests in flight each, one unary
//! `Append` gateway that sometimes waits for a checkpoint, and a checkpoint poller) records
//! every receipt and every checkpoint the server returns; the server is SIGKILLed at a random
//! moment and restarted on the same directory, round after round. The archiver runs inside the
//! server (256-leaf segments, hot window 0 s, warm window 3 s, a pass every 150 ms), so kills
//! land in the middle of hot → warm and warm → cold moves. Every fifth round also kills a
//! server while it is still starting (recovering the store).
//!
//! After each restart, for every log:
//! - every acknowledged event is read back with `GetEntries` at its acknowledged index, with
//!   its acknowledged leaf hash and the very event sent; the leaf hashes of the whole log
//!   rebuild the root of the latest signed checkpoint (so every acknowledged leaf is included
//!   in it), and `GetInclusionProof` by event id for a seeded sample of up to
//!   [`PROOFS_PER_ROUND`] acknowledged events verifies with `auditledger_verifier`;
//! - every checkpoint the server ever returned (polled or in an `Append` response) is
//!   consistent with the latest one (`GetConsistencyProof` + `verify_consistency`), checked
//!   once, the previous round's latest included, so by transitivity every one is consistent
//!   with the final tree;
//! - every event acknowledged since the previous check, and a sample of older ones, re-sent,
//!   comes back `duplicate = true` with its original index and hash.
//!
//! At the end the archiver is let finish, the server stopped with SIGTERM, and `auditledger
//! fsck` and `auditledger-verify archive` (warm and cold tiers) must pass.
//!
//! Rounds: `AUDITLEDGER_CRASH_SERVER_ROUNDS` (default 8, ~25 s on a 2-core VM; 50 take ~4
//! min). Seed: `AUDITLEDGER_CRASH_SERVER_SEED` (printed). Not `AUDITLEDGER_SERVER_*`: the
//! binaries read that prefix as overrides of the `[server]` config section.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditledger_ledger::checkpoint;
use auditledger_ledger::event::decode_leaf_strict;
use auditledger_ledger::merkle::{CompactRange, leaf_hash};
use auditledger_ledger::note::VerifierKey;
use auditledger_proto::v1 as pb;
use common::{Ledger, Server, authed};
use pb::get_inclusion_proof_request::Key;
use tonic::transport::Channel;

const TENANTS: [&str; 2] = ["acme", "globex"];
const ENV: &str = "prod";
/// Gateways 0..STREAM_GATEWAYS use AppendStream; gateway STREAM_GATEWAYS uses unary Append.
const STREAM_GATEWAYS: u32 = 3;
const GATEWAYS: u32 = STREAM_GATEWAYS + 1;
/// Requests in flight per AppendStream.
const IN_FLIGHT: usize = 8;
/// Inclusion proofs fetched and verified per log and round.
const PROOFS_PER_ROUND: usize = 100;
/// Older acknowledged events re-sent per round besides every new one.
const OLD_RESENDS_PER_ROUND: usize = 200;
/// Upper bound on requests one load task sends in one round (loops are bounded).
const MAX_REQUESTS_PER_ROUND: u64 = 1_000_000;

/// xorshift64*: reproducible from the printed seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// The UUIDv7 of event `seq` of `gateway`: unique, and the event is rebuilt from it on re-send.
fn event_id(gateway: u32, seq: u64) -> String {
    format!(
        "01936f0e-7a2b-7{:03x}-8{:03x}-{:012x}",
        gateway & 0xfff,
        (seq >> 48) & 0xfff,
        seq & 0xffff_ffff_ffff
    )
}

fn tenant_of(seq: u64) -> &'static str {
    TENANTS[(seq % 2) as usize]
}

/// A realistic ~600-byte tool-call event, a pure function of (`gateway`, `seq`).
fn load_event(gateway: u32, seq: u64) -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: event_id(gateway, seq),
        event_kind: pb::EventKind::ToolCall as i32,
        schema_version: 1,
        tenant_id: tenant_of(seq).into(),
        environment: ENV.into(),
        occurred_at: 1_763_700_000_000_000_000 + seq,
        trace_id: format!("{:032x}", (u128::from(gateway) << 64) | u128::from(seq) | 1),
        span_id: format!("{:016x}", seq | 1),
        correlation_id: format!("corr-{gateway}-{}", seq / 10),
        session_id: format!("session-{gateway}-{}", seq / 50),
        user_id: format!("user-{}@example.com", seq % 97),
        agent_id: format!("agent-{}", seq % 11),
        agent_name: "Support Agent".into(),
        model: "model-x".into(),
        // Gateways number events per log (tenant): seq alternates tenants.
        gateway_id: format!("gateway-{gateway}"),
        gateway_seq: seq / 2 + 1,
        tool_server: ["github", "jira", "slack", "postgres"][(seq % 4) as usize].into(),
        tool_name: ["create_issue", "search", "post_message", "query"][(seq % 4) as usize].into(),
        mcp_method: "tools/call".into(),
        arguments_hash: format!("blake3:{}", blake3::hash(&seq.to_le_bytes()).to_hex()),
        response_hash: format!("blake3:{}", blake3::hash(&(!seq).to_le_bytes()).to_hex()),
        content_ref: format!("s3://content/{gateway}/{seq}"),
        decision: pb::Decision::Allow as i32,
        policy_id: "default".into(),
        policy_version: "7".into(),
        decision_reason: format!(
            "allowed: tool on the allow-list of role support-agent (rule {})",
            seq % 17
        ),
        data_classification: "internal".into(),
        latency_ms: (seq % 900) as u32,
        ..Default::default()
    }
}

/// One receipt as acknowledged.
#[derive(Clone, Debug)]
struct Ack {
    gateway: u32,
    seq: u64,
    origin: String,
    leaf_index: u64,
    leaf_hash: Vec<u8>,
    /// The round whose check first covered it (`None`: not yet checked).
    checked_in: Option<u32>,
}

/// What the load client saw, shared by its tasks.
#[derive(Default)]
struct Seen {
    acks: HashMap<String, Ack>,
    /// Every distinct checkpoint note served, by tenant, with whether it was checked yet.
    checkpoints: BTreeMap<String, BTreeMap<String, bool>>,
    /// Error responses on AppendStream (code, message), e.g. backpressure.
    rejected: Vec<(i32, String)>,
    /// Inclusion proofs in `wait_for_checkpoint` responses verified on arrival.
    receipt_proofs: u64,
}

type Shared = Arc<Mutex<Seen>>;

/// Records a response's receipts for `batch`; panics on anything a receipt must not be.
fn record(
    seen: &Shared,
    gateway: u32,
    seqs: &[u64],
    receipts: &[pb::Receipt],
    checkpoint: Option<&pb::SignedCheckpoint>,
    keys: &[VerifierKey],
) {
    assert_eq!(
        receipts.len(),
        seqs.len(),
        "gateway {gateway}: one receipt per event"
    );
    let mut seen = seen.lock().unwrap();
    for (seq, r) in seqs.iter().zip(receipts) {
        let id = event_id(gateway, *seq);
        assert_eq!(
            r.event_id, id,
            "gateway {gateway}: receipts in request order"
        );
        assert!(!r.duplicate, "{id}: first send acknowledged as a duplicate");
        assert_eq!(r.leaf_hash.len(), 32, "{id}: leaf hash length");
        if let Some(proof) = &r.proof {
            // A proof against the response's checkpoint carries none of its own; one into
            // another log of the batch carries that log's.
            let note = proof
                .checkpoint
                .as_ref()
                .or(checkpoint)
                .unwrap_or_else(|| panic!("{id}: proof without a checkpoint"))
                .note
                .clone();
            // Receipt proofs carry the leaf hash, not the leaf (the client sent the event).
            assert_eq!(proof.leaf_hash, r.leaf_hash, "{id}: proof leaf hash");
            let hash: [u8; 32] = r.leaf_hash.as_slice().try_into().expect("checked above");
            auditledger_verifier::verify_inclusion_of_hash(
                &hash,
                r.leaf_index,
                &proof.hashes,
                note.as_bytes(),
                keys,
            )
            .unwrap_or_else(|e| panic!("{id}: receipt proof at leaf {}: {e}", r.leaf_index));
            seen.receipt_proofs += 1;
            seen.checkpoints
                .entry(tenant_of(*seq).to_owned())
                .or_default()
                .entry(note)
                .or_insert(false);
        }
        let previous = seen.acks.insert(
            id.clone(),
            Ack {
                gateway,
                seq: *seq,
                origin: r.origin.clone(),
                leaf_index: r.leaf_index,
                leaf_hash: r.leaf_hash.clone(),
                checked_in: None,
            },
        );
        assert!(previous.is_none(), "{id} acknowledged twice");
    }
}

/// Next sequence number of each gateway, kept across rounds (gateways never reuse one).
struct Batches {
    next: u64,
    rng: Rng,
}

impl Batches {
    fn next_batch(&mut self, gateway: u32) -> (Vec<u64>, Vec<pb::AuditEvent>) {
        let n = self.rng.range(1, 40);
        let seqs: Vec<u64> = (self.next..self.next + n).collect();
        self.next += n;
        let events = seqs.iter().map(|&s| load_event(gateway, s)).collect();
        (seqs, events)
    }
}

async fn stream_gateway(
    channel: Channel,
    token: String,
    gateway: u32,
    mut batches: Batches,
    seen: Shared,
    keys: Arc<Vec<VerifierKey>>,
) -> Batches {
    let mut ingest = pb::ingest_client::IngestClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT * 2);
    let mut pending: VecDeque<Vec<u64>> = VecDeque::new();
    // Queue the first requests before opening: the call resolves once the server answers.
    for _ in 0..IN_FLIGHT {
        let (seqs, events) = batches.next_batch(gateway);
        let req = pb::AppendRequest {
            events,
            wait_for_checkpoint: false,
        };
        if tx.send(req).await.is_err() {
            return batches;
        }
        pending.push_back(seqs);
    }
    let Ok(responses) = ingest
        .append_stream(authed(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &token,
        ))
        .await
    else {
        return batches;
    };
    let mut responses = responses.into_inner();
    for _ in 0..MAX_REQUESTS_PER_ROUND {
        // Ok(None) or Err: the server went away (killed); stop.
        let Ok(Some(resp)) = responses.message().await else {
            break;
        };
        let seqs = pending.pop_front().expect("a response answers a request");
        match &resp.error {
            Some(e) => seen
                .lock()
                .unwrap()
                .rejected
                .push((e.code, e.message.clone())),
            None => record(&seen, gateway, &seqs, &resp.receipts, None, &keys),
        }
        // A steady few thousand events/s in all, not a flood: the archiver inside the server
        // keeps up, and the rounds' read-back stays short.
        tokio::time::sleep(Duration::from_millis(batches.rng.range(2, 20))).await;
        let (seqs, events) = batches.next_batch(gateway);
        let req = pb::AppendRequest {
            events,
            wait_for_checkpoint: false,
        };
        if tx.send(req).await.is_err() {
            break;
        }
        pending.push_back(seqs);
    }
    batches
}

async fn unary_gateway(
    channel: Channel,
    token: String,
    gateway: u32,
    mut batches: Batches,
    seen: Shared,
    keys: Arc<Vec<VerifierKey>>,
) -> Batches {
    let mut ingest = pb::ingest_client::IngestClient::new(channel);
    for _ in 0..MAX_REQUESTS_PER_ROUND {
        tokio::time::sleep(Duration::from_millis(batches.rng.range(1, 10))).await;
        let (seqs, events) = batches.next_batch(gateway);
        let wait = batches.rng.range(0, 4) == 0;
        let req = pb::AppendRequest {
            events,
            wait_for_checkpoint: wait,
        };
        match ingest.append(authed(req, &token)).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                if wait {
                    assert!(
                        resp.checkpoint.is_some(),
                        "wait_for_checkpoint: no checkpoint"
                    );
                }
                record(
                    &seen,
                    gateway,
                    &seqs,
                    &resp.receipts,
                    resp.checkpoint.as_ref(),
                    &keys,
                );
            }
            // Killed mid-request (or refused): these events were never acknowledged.
            Err(_) => break,
        }
    }
    batches
}

async fn checkpoint_poller(channel: Channel, token: String, seen: Shared) {
    let mut log = pb::log_client::LogClient::new(channel);
    for _ in 0..MAX_REQUESTS_PER_ROUND {
        for tenant in TENANTS {
            let req = pb::GetCheckpointRequest {
                tenant_id: tenant.into(),
                environment: ENV.into(),
                tree_size: 0,
            };
            match log.get_checkpoint(authed(req, &token)).await {
                Ok(cp) => {
                    seen.lock()
                        .unwrap()
                        .checkpoints
                        .entry(tenant.to_owned())
                        .or_default()
                        .entry(cp.into_inner().note)
                        .or_insert(false);
                }
                // No log (or checkpoint) yet for this tenant.
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(_) => return,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Tokens {
    gateway: String,
    investigator: String,
    admin: String,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts `serve` and SIGKILLs it `delay` after spawning, usually while it is still opening
/// the store; a kill during recovery must be as harmless as one under load.
fn kill_during_startup(ledger: &Ledger, delay: Duration) {
    let mut child = Command::new(common::bin())
        .args([
            "serve",
            "--config",
            &ledger.config(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("AUDITLEDGER_CONFIG")
        .env("AUDITLEDGER_SERVER_METRICS_LISTEN", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL serve"); // SIGKILL on Unix
    child.wait().expect("reap serve");
}

/// Figures of one round's check, for the summary line.
#[derive(Default)]
struct Checked {
    events: usize,
    proofs: usize,
    consistency: usize,
    resent: usize,
}

/// The latest checkpoint of `tenant`'s log once it covers `needed` leaves (the server signs
/// one within `checkpoint_interval` of opening a log that grew). Polled, bounded.
async fn latest_covering(
    log: &mut pb::log_client::LogClient<Channel>,
    token: &str,
    tenant: &str,
    needed: u64,
    keys: &[VerifierKey],
) -> (String, checkpoint::Checkpoint) {
    let mut last = String::new();
    for _ in 0..400 {
        let req = pb::GetCheckpointRequest {
            tenant_id: tenant.into(),
            environment: ENV.into(),
            tree_size: 0,
        };
        if let Ok(cp) = log.get_checkpoint(authed(req, token)).await {
            let note = cp.into_inner().note;
            let cp = auditledger_verifier::verify_checkpoint(note.as_bytes(), keys, None, None)
                .unwrap_or_else(|e| panic!("{tenant}: latest checkpoint does not verify: {e}"))
                .checkpoint;
            if cp.tree_size >= needed {
                return (note, cp);
            }
            last = note;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{tenant}: no checkpoint covering {needed} leaves after 20 s (acknowledged or served \
         before the kill); the latest is:\n{last}"
    );
}

/// Checks everything the client saw against the restarted server (see the module docs).
async fn check_all(
    server: &Server,
    tokens: &Tokens,
    seen: &Shared,
    keys: &[VerifierKey],
    round: u32,
    rng: &mut Rng,
) -> Checked {
    let mut log = server.log().await;
    let mut ingest = server.ingest().await;
    let mut checked = Checked::default();
    let acks: Vec<(String, Ack)> = {
        let seen = seen.lock().unwrap();
        seen.acks
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    for tenant in TENANTS {
        let mine: Vec<&(String, Ack)> = acks
            .iter()
            .filter(|(_, a)| tenant_of(a.seq) == tenant)
            .collect();
        let served: Vec<String> = seen
            .lock()
            .unwrap()
            .checkpoints
            .get(tenant)
            .map(|m| {
                m.iter()
                    .filter(|(_, done)| !**done)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        if mine.is_empty() && served.is_empty() {
            continue;
        }
        let served_max = served
            .iter()
            .map(|n| checkpoint::open(n.as_bytes(), keys).map(|v| v.checkpoint.tree_size))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{tenant}: a served checkpoint does not verify: {e}"))
            .into_iter()
            .max()
            .unwrap_or(0);
        let acked_max = mine
            .iter()
            .map(|(_, a)| a.leaf_index + 1)
            .max()
            .unwrap_or(0);
        let (latest_note, latest) = latest_covering(
            &mut log,
            &tokens.investigator,
            tenant,
            acked_max.max(served_max),
            keys,
        )
        .await;
        let origin = latest.origin.clone();

        // Every leaf up to the latest checkpoint: acknowledged ones as acknowledged, and the
        // hashes of all of them rebuild its signed root.
        let by_index: HashMap<u64, &Ack> = mine
            .iter()
            .map(|(_, a)| {
                assert_eq!(
                    a.origin,
                    origin,
                    "{}: acknowledged origin",
                    event_id(a.gateway, a.seq)
                );
                (a.leaf_index, a)
            })
            .collect();
        assert_eq!(
            by_index.len(),
            mine.len(),
            "{origin}: two events acknowledged at one index"
        );
        let mut entries = log
            .get_entries(authed(
                pb::GetEntriesRequest {
                    tenant_id: tenant.into(),
                    environment: ENV.into(),
                    start: 0,
                    end: latest.tree_size,
                    justification: "server crash test: read back every acknowledged event".into(),
                },
                &tokens.investigator,
            ))
            .await
            .unwrap_or_else(|e| panic!("round {round}: GetEntries {origin}: {e}"))
            .into_inner();
        let mut range = CompactRange::new(0);
        let mut matched = 0usize;
        let mut next = 0u64;
        for _ in 0..=latest.tree_size {
            let Some(e) = entries
                .message()
                .await
                .unwrap_or_else(|e| panic!("round {round}: GetEntries {origin} at {next}: {e}"))
            else {
                break;
            };
            assert_eq!(e.leaf_index, next, "{origin}: entries in order");
            assert!(!e.content_expired, "{origin} leaf {next}: expired");
            let hash = leaf_hash(&e.leaf);
            assert_eq!(
                e.leaf_hash,
                hash.to_vec(),
                "{origin} leaf {next}: served hash"
            );
            if let Some(ack) = by_index.get(&next) {
                let id = event_id(ack.gateway, ack.seq);
                assert_eq!(
                    hex::encode(hash),
                    hex::encode(&ack.leaf_hash),
                    "round {round}: {origin} leaf {next} ({id}) differs from its receipt"
                );
                let event = decode_leaf_strict(&e.leaf)
                    .unwrap_or_else(|err| panic!("{origin} leaf {next}: {err}"))
                    .event
                    .expect("leaf has an event");
                assert_eq!(
                    event,
                    load_event(ack.gateway, ack.seq),
                    "{origin} leaf {next}"
                );
                matched += 1;
            }
            range.append(hash);
            next += 1;
        }
        assert_eq!(
            next, latest.tree_size,
            "round {round}: {origin}: GetEntries ended early"
        );
        assert_eq!(
            matched,
            mine.len(),
            "round {round}: {origin}: acknowledged events missing from the tree"
        );
        assert_eq!(
            range.root().expect("root of the entries"),
            latest.root_hash,
            "round {round}: {origin}: the leaves served do not make the signed root of size {}",
            latest.tree_size
        );
        checked.events += matched;

        // Inclusion proofs by event id, verified offline, for a sample (new ones first).
        let mut sample: Vec<&(String, Ack)> = mine
            .iter()
            .copied()
            .filter(|(_, a)| a.checked_in.is_none())
            .collect();
        let mut old: Vec<&(String, Ack)> = mine
            .iter()
            .copied()
            .filter(|(_, a)| a.checked_in.is_some())
            .collect();
        shuffle(&mut sample, rng);
        shuffle(&mut old, rng);
        sample.truncate(PROOFS_PER_ROUND * 3 / 4);
        sample.extend(old.into_iter().take(PROOFS_PER_ROUND - sample.len()));
        for (id, ack) in &sample {
            let p = log
                .get_inclusion_proof(authed(
                    pb::GetInclusionProofRequest {
                        tenant_id: tenant.into(),
                        environment: ENV.into(),
                        key: Some(Key::EventId(id.clone())),
                        tree_size: 0,
                        justification: "server crash test: prove an acknowledged event".into(),
                    },
                    &tokens.investigator,
                ))
                .await
                .unwrap_or_else(|e| panic!("round {round}: proof of {id}: {e}"))
                .into_inner();
            assert_eq!(p.leaf_index, ack.leaf_index, "{id}: proof index");
            assert_eq!(p.leaf_hash, ack.leaf_hash, "{id}: proof leaf hash");
            let note = p.checkpoint.expect("proof has a checkpoint").note;
            auditledger_verifier::verify_inclusion(
                &p.leaf,
                p.leaf_index,
                &p.hashes,
                note.as_bytes(),
                keys,
            )
            .unwrap_or_else(|e| panic!("round {round}: {id} at leaf {}: {e}", ack.leaf_index));
            checked.proofs += 1;
        }

        // Every checkpoint served and not yet checked is consistent with the latest.
        for old in served.iter().chain(std::iter::once(&latest_note)) {
            let first = checkpoint::open(old.as_bytes(), keys)
                .expect("verified above")
                .checkpoint
                .tree_size;
            let proof = log
                .get_consistency_proof(authed(
                    pb::GetConsistencyProofRequest {
                        tenant_id: tenant.into(),
                        environment: ENV.into(),
                        first,
                        second: latest.tree_size,
                    },
                    &tokens.investigator,
                ))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "round {round}: {origin}: consistency {first} → {}: {e}",
                        latest.tree_size
                    )
                })
                .into_inner();
            auditledger_verifier::verify_consistency(
                old.as_bytes(),
                latest_note.as_bytes(),
                &proof.hashes,
                keys,
            )
            .unwrap_or_else(|e| {
                panic!(
                    "round {round}: served checkpoint of size {first} is not consistent with the \
                     tree after restart: {e}\n{old}"
                )
            });
            checked.consistency += 1;
        }
        {
            let mut seen = seen.lock().unwrap();
            let map = seen.checkpoints.entry(tenant.to_owned()).or_default();
            for note in &served {
                map.insert(note.clone(), true);
            }
            // The next round checks its latest against this one (transitivity).
            map.insert(latest_note.clone(), false);
        }

        // Re-sending acknowledged events: duplicates with the original receipt.
        let mut resend: Vec<&(String, Ack)> = mine
            .iter()
            .copied()
            .filter(|(_, a)| a.checked_in.is_none())
            .collect();
        let mut old: Vec<&(String, Ack)> = mine
            .iter()
            .copied()
            .filter(|(_, a)| a.checked_in.is_some())
            .collect();
        shuffle(&mut old, rng);
        resend.extend(old.into_iter().take(OLD_RESENDS_PER_ROUND));
        for chunk in resend.chunks(500) {
            let events = chunk
                .iter()
                .map(|(_, a)| load_event(a.gateway, a.seq))
                .collect();
            let resp = ingest
                .append(authed(
                    pb::AppendRequest {
                        events,
                        wait_for_checkpoint: false,
                    },
                    &tokens.gateway,
                ))
                .await
                .unwrap_or_else(|e| panic!("round {round}: re-send to {origin}: {e}"))
                .into_inner();
            assert_eq!(resp.receipts.len(), chunk.len());
            for ((id, ack), r) in chunk.iter().zip(&resp.receipts) {
                assert!(
                    r.duplicate,
                    "round {round}: re-sent {id} was appended again at {} (first at {})",
                    r.leaf_index, ack.leaf_index
                );
                assert_eq!(
                    (r.leaf_index, &r.leaf_hash),
                    (ack.leaf_index, &ack.leaf_hash),
                    "round {round}: re-sent {id}: not the original receipt"
                );
            }
            checked.resent += chunk.len();
        }
    }
    let mut seen = seen.lock().unwrap();
    for (id, _) in &acks {
        if let Some(a) = seen.acks.get_mut(id) {
            a.checked_in.get_or_insert(round);
        }
    }
    checked
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.range(0, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Waits (bounded) until the archiver inside the server has no hot → warm move left to do.
async fn archiver_settled(server: &Server, admin: &str) {
    let mut client = pb::admin_client::AdminClient::new(server.channel().await);
    let mut pending = u64::MAX;
    for _ in 0..1200 {
        pending = 0;
        for tenant in TENANTS {
            let status = client
                .get_tier_status(authed(
                    pb::GetTierStatusRequest {
                        tenant_id: tenant.into(),
                        environment: ENV.into(),
                    },
                    admin,
                ))
                .await
                .expect("GetTierStatus")
                .into_inner();
            pending += status.logs.iter().map(|l| l.pending_moves).sum::<u64>();
        }
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the archiver still has {pending} segment move(s) pending after 120 s");
}

/// Number of `.manifest` files under `<tier>/<tenant>/<environment>/segments/`.
fn manifests(tier: &Path) -> usize {
    let list = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut n = 0;
    for tenant in list(tier) {
        for env in list(&tenant) {
            n += list(&env.join("segments"))
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "manifest"))
                .count();
        }
    }
    n
}

/// `auditledger-verify archive` on one tier, if it holds any segment (the warm tier may be
/// empty once everything moved on to cold).
fn verify_tier(dir: &Path, keys: &[VerifierKey]) -> Option<String> {
    if manifests(dir) == 0 {
        return None;
    }
    let mut cmd = Command::new(Path::new(common::bin()).with_file_name("auditledger-verify"));
    cmd.arg("archive").arg(dir);
    for k in keys {
        cmd.args(["--key", &k.to_string()]);
    }
    let out = cmd.output().expect("run auditledger-verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "auditledger-verify archive {}: {text}",
        dir.display()
    );
    Some(text)
}

#[test]
fn sigkill_of_the_server_under_load_loses_nothing_acknowledged() {
    let started = Instant::now();
    let rounds: u32 = std::env::var("AUDITLEDGER_CRASH_SERVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("AUDITLEDGER_CRASH_SERVER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("server crash test: {rounds} rounds, seed {seed} (AUDITLEDGER_CRASH_SERVER_SEED)");
    let mut rng = Rng::new(seed);
    let ledger = Ledger::init(
        "ledger.segment_bits = 8\n\
         ledger.checkpoint_interval = \"50ms\"\n\
         tiers.hot_window = \"0s\"\n\
         tiers.warm_window = \"3s\"\n\
         tiers.archive_interval = \"150ms\"\n\
         server.shutdown_grace = \"3s\"",
    );
    let tokens = Tokens {
        gateway: ledger.token("gateway", &TENANTS, &[ENV], None),
        investigator: ledger.token("investigator", &TENANTS, &[ENV], None),
        admin: ledger.token("admin", &TENANTS, &[ENV], None),
    };
    let keys = Arc::new(ledger.keys());
    let seen: Shared = Arc::default();
    let mut batches: Vec<Option<Batches>> = (0..GATEWAYS)
        .map(|g| {
            Some(Batches {
                next: 1,
                rng: Rng::new(seed ^ (u64::from(g) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            })
        })
        .collect();
    let runtime = rt();
    let mut total = Checked::default();
    let mut startup_kills = 0;
    for round in 0..=rounds {
        if round > 0 && round % 5 == 4 {
            kill_during_startup(&ledger, Duration::from_millis(rng.range(0, 300)));
            startup_kills += 1;
        }
        // Restart on the same directory (round 0: first start) and check everything so far.
        let server = Server::start(&ledger);
        let checked = runtime.block_on(check_all(&server, &tokens, &seen, &keys, round, &mut rng));
        let acked = seen.lock().unwrap().acks.len();
        eprintln!(
            "round {round}: {acked} acknowledged events, {} read back, {} proofs, {} checkpoints \
             consistent, {} re-sent as duplicates ({:.1} s)",
            checked.events,
            checked.proofs,
            checked.consistency,
            checked.resent,
            started.elapsed().as_secs_f64()
        );
        total.events += checked.events;
        total.proofs += checked.proofs;
        total.consistency += checked.consistency;
        total.resent += checked.resent;
        if round == rounds {
            runtime.block_on(archiver_settled(&server, &tokens.admin));
            assert!(
                server.stop(),
                "the last server did not stop cleanly on SIGTERM"
            );
            break;
        }

        // Load, then SIGKILL at a random moment.
        let tasks: Vec<_> = (0..GATEWAYS)
            .map(|g| {
                let url = server.url();
                let token = tokens.gateway.clone();
                let b = batches[g as usize].take().expect("batches returned");
                let seen = seen.clone();
                let keys = keys.clone();
                runtime.spawn(async move {
                    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
                    if g < STREAM_GATEWAYS {
                        stream_gateway(channel, token, g, b, seen, keys).await
                    } else {
                        unary_gateway(channel, token, g, b, seen, keys).await
                    }
                })
            })
            .collect();
        let poller = {
            let url = server.url();
            let token = tokens.investigator.clone();
            let seen = seen.clone();
            runtime.spawn(async move {
                let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
                checkpoint_poller(channel, token, seen).await;
            })
        };
        // Kill only once load is flowing (the first receipt of the round is in; bounded wait,
        // so a slow machine does not turn into a failure), then at a random moment.
        let before = seen.lock().unwrap().acks.len();
        for _ in 0..12_000 {
            if seen.lock().unwrap().acks.len() > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            seen.lock().unwrap().acks.len() > before,
            "round {round}: nothing acknowledged within 60 s of starting the load"
        );
        std::thread::sleep(Duration::from_millis(rng.range(100, 1300)));
        let mut server = server;
        server.child.kill().expect("SIGKILL the server"); // SIGKILL on Unix
        server.child.wait().expect("reap the server");
        drop(server);
        runtime.block_on(async {
            for (g, task) in tasks.into_iter().enumerate() {
                let b = tokio::time::timeout(Duration::from_secs(60), task)
                    .await
                    .unwrap_or_else(|_| panic!("gateway {g} did not notice the kill in 60 s"))
                    .unwrap_or_else(|e| panic!("gateway {g}: {e}"));
                batches[g] = Some(b);
            }
            tokio::time::timeout(Duration::from_secs(60), poller)
                .await
                .expect("poller ends after the kill")
                .expect("poller");
        });
    }

    // The last server is stopped: fsck and the archive verifier on what it left.
    let out = common::run(&["fsck", "--config", &ledger.config()], &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fsck after {rounds} kills (seed {seed}): {text}"
    );
    let warm = verify_tier(&ledger.dir.join("warm"), &keys);
    let cold = verify_tier(&ledger.dir.join("cold"), &keys);
    assert!(
        warm.is_some() || cold.is_some(),
        "the archiver moved nothing during the rounds"
    );
    let seen = seen.lock().unwrap();
    eprintln!(
        "server crash test: seed {seed}, {rounds} SIGKILLs under load + {startup_kills} during \
         start-up, {} events acknowledged ({} with a receipt proof), {} rejected; {} reads, {} \
         inclusion proofs, {} consistency proofs, {} duplicates checked; fsck clean; archive: \
         warm {}, cold {}; {:.1} s",
        seen.acks.len(),
        seen.receipt_proofs,
        seen.rejected.len(),
        total.events,
        total.proofs,
        total.consistency,
        total.resent,
        warm.as_deref()
            .map_or("empty", |t| t.lines().last().unwrap_or("")),
        cold.as_deref()
            .map_or("empty", |t| t.lines().last().unwrap_or("")),
        started.elapsed().as_secs_f64()
    );
}
