//! `Compliance.Export`: signed retention exports (DESIGN §7) — a POSIX tar of the signed
//! checkpoint, the range proof, the leaves as Parquet entry files, and a signed manifest, streamed
//! in bounded memory whatever the size and whichever tier holds the leaves.
//!
//! The export is recorded in the system log before a byte of it leaves: no record, no export.
//! Member formats: `auditledger_ledger::export`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use auditledger_archiver::export::{ExportDescription, ExportWriteError, ExportWriter};
use auditledger_ledger::event::{Decision, EventKind};
use auditledger_ledger::merkle::Hash;
use auditledger_ledger::{Clock as _, Log, SignedCheckpoint, SystemClock};
use auditledger_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Principal, Role};
use crate::investigate::first_logged_at_or_after;
use crate::server::AppState;
use crate::status;
use crate::syslog::SystemRecord;

const EXPORT_ROLES: &[Role] = &[Role::Compliance, Role::Admin];

/// Bytes per `ExportChunk` message.
const CHUNK_BYTES: usize = 256 * 1024;

/// The `Compliance` service.
pub struct ComplianceService(pub Arc<AppState>);

/// What one export covers, resolved from the request.
#[derive(Clone, Debug)]
struct Plan {
    start: u64,
    end: u64,
    checkpoint: Arc<SignedCheckpoint>,
    from_time: u64,
    to_time: u64,
}

#[tonic::async_trait]
impl pb::compliance_server::Compliance for ComplianceService {
    type ExportStream = ReceiverStream<Result<pb::ExportChunk, Status>>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        const METHOD: &str = "Compliance.Export";
        let s = self.0.clone();
        let req = request.get_ref().clone();
        let p = s.authenticate(&request, METHOD, &req.environment)?;
        s.authorize(&p, METHOD, EXPORT_ROLES, &req.tenant_id, &req.environment)?;
        if req.justification.trim().is_empty() {
            let reason = format!(
                "{METHOD}: a justification is required (it is written into the signed manifest)"
            );
            s.deny_on_log(&p.name, METHOD, &req.tenant_id, &req.environment, &reason);
            return Err(Status::invalid_argument(reason));
        }
        let log = s.log(&req.tenant_id, &req.environment)?;
        let plan = plan(&s, &log, &req).await?;
        record_export(&s, &p, &req, &plan).await?;

        let (tx, rx) = mpsc::channel::<Result<pb::ExportChunk, Status>>(8);
        let handle = tokio::runtime::Handle::current();
        let requester = p.name.clone();
        tokio::task::spawn_blocking(move || {
            let mut sink = ChunkSink {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK_BYTES),
            };
            let result = write_export(
                &s,
                &log,
                &plan,
                &requester,
                &req.justification,
                &handle,
                &mut sink,
            )
            .and_then(|()| {
                sink.flush_chunk()
                    .map_err(|e| Status::aborted(e.to_string()))
            });
            match result {
                Ok(()) => tracing::info!(
                    origin = log.origin(),
                    start = plan.start,
                    end = plan.end,
                    tree_size = plan.checkpoint.checkpoint.tree_size,
                    "export sent"
                ),
                Err(e) => {
                    tracing::warn!(origin = log.origin(), error = %e, "export failed");
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Resolves the leaf range and the checkpoint the export is proven against.
async fn plan(s: &AppState, log: &Log, req: &pb::ExportRequest) -> Result<Plan, Status> {
    let by_time = req.start == 0 && req.end == 0;
    let checkpoint = log.latest_checkpoint().ok_or_else(|| {
        Status::failed_precondition(format!(
            "{} has no signed checkpoint yet; retry in a second",
            log.origin()
        ))
    })?;
    let (start, end, checkpoint) = if by_time {
        if req.from_time == 0 && req.to_time == 0 {
            return Err(Status::invalid_argument(
                "give a leaf range (start < end) or a logged_at window (from_time, to_time); all four are 0",
            ));
        }
        let to_time = if req.to_time == 0 {
            u64::MAX
        } else {
            req.to_time
        };
        if req.from_time >= to_time {
            return Err(Status::invalid_argument(format!(
                "from_time {} is not before to_time {}",
                req.from_time, req.to_time
            )));
        }
        // Only checkpointed leaves can be proven.
        let size = checkpoint.checkpoint.tree_size;
        let start = first_logged_at_or_after(s, log, req.from_time, size).await?;
        let end = first_logged_at_or_after(s, log, to_time, size).await?;
        (start, end.max(start), checkpoint)
    } else {
        if req.start >= req.end {
            return Err(Status::invalid_argument(format!(
                "leaf range [{}, {}) is empty or reversed",
                req.start, req.end
            )));
        }
        let size = log.tree_size();
        if req.end > size {
            return Err(Status::out_of_range(format!(
                "end {} is beyond the tree size {size}",
                req.end
            )));
        }
        // The leaves exist; wait (briefly) for the checkpoint that covers them.
        let checkpoint = if checkpoint.checkpoint.tree_size >= req.end {
            checkpoint
        } else {
            let wait = s.config.ledger.checkpoint_interval * 5 + std::time::Duration::from_secs(5);
            tokio::time::timeout(wait, log.wait_for_checkpoint(req.end))
                .await
                .map_err(|_| {
                    Status::unavailable(format!(
                        "no checkpoint covers leaf {} yet; retry later",
                        req.end - 1
                    ))
                })?
                .map_err(status::from_ledger)?
        };
        (req.start, req.end, checkpoint)
    };
    Ok(Plan {
        start,
        end,
        checkpoint,
        from_time: req.from_time,
        to_time: req.to_time,
    })
}

/// Records the export in the system log, durably, before any of it is sent.
async fn record_export(
    s: &AppState,
    p: &Principal,
    req: &pb::ExportRequest,
    plan: &Plan,
) -> Result<(), Status> {
    let mut attributes = BTreeMap::new();
    attributes.insert("role".into(), p.role.as_str().to_owned());
    attributes.insert("start".into(), plan.start.to_string());
    attributes.insert("end".into(), plan.end.to_string());
    attributes.insert(
        "tree_size".into(),
        plan.checkpoint.checkpoint.tree_size.to_string(),
    );
    attributes.insert("from_time".into(), plan.from_time.to_string());
    attributes.insert("to_time".into(), plan.to_time.to_string());
    s.syslog
        .record(&SystemRecord {
            kind: EventKind::DataExport,
            environment: req.environment.clone(),
            principal: p.name.clone(),
            method: "Compliance.Export".into(),
            decision: Decision::Allow,
            reason: "retention export".into(),
            target: format!("{}/{}", req.tenant_id, req.environment),
            justification: req.justification.clone(),
            attributes,
        })
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "cannot record this export in the system log ({e}); refusing to export"
            ))
        })
}

/// Writes the whole tar into `sink`.
fn write_export(
    s: &AppState,
    log: &Log,
    plan: &Plan,
    requester: &str,
    justification: &str,
    handle: &tokio::runtime::Handle,
    sink: &mut ChunkSink,
) -> Result<(), Status> {
    let exported_at = SystemClock.now_nanos() / 1_000_000_000;
    let tree_size = plan.checkpoint.checkpoint.tree_size;
    let failed = |e: ExportWriteError| match e {
        ExportWriteError::Io(e) => Status::aborted(format!("sending the export: {e}")),
        e => Status::data_loss(e.to_string()),
    };
    let proof = log
        .range_proof(plan.start, plan.end, tree_size)
        .map_err(status::from_ledger)?;
    let description = ExportDescription {
        origin: log.origin().to_owned(),
        tree_size,
        from_time: plan.from_time,
        to_time: plan.to_time,
        requester: requester.to_owned(),
        justification: justification.to_owned(),
        exported_at,
    };
    // The checkpoint as the log serves it: with the witness cosignatures stored so far.
    let checkpoint_note = log
        .cosigned_note(&plan.checkpoint)
        .map_err(status::from_ledger)?;
    let mut writer = ExportWriter::new(
        sink,
        description,
        &checkpoint_note,
        &proof,
        plan.start,
        plan.end,
    )
    .map_err(failed)?;
    s.for_each_leaf_blocking(log, plan.start, plan.end, handle, |entry| {
        if entry.content_expired {
            let hash: Hash = entry.leaf_hash.as_slice().try_into().map_err(|_| {
                Status::data_loss(format!(
                    "leaf {}: stored hash is not 32 bytes",
                    entry.leaf_index
                ))
            })?;
            writer.push_expired(hash)
        } else {
            writer.push_leaf(&entry.leaf)
        }
        .map_err(failed)?;
        Ok(true)
    })?;
    let signers = s
        .ledger
        .keyring()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .active_signers(exported_at);
    writer.finish(&signers).map_err(failed)?;
    Ok(())
}

/// `Write` into `ExportChunk` messages of [`CHUNK_BYTES`]; fails once the client is gone.
struct ChunkSink {
    tx: mpsc::Sender<Result<pb::ExportChunk, Status>>,
    buf: Vec<u8>,
}

impl ChunkSink {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.tx
            .blocking_send(Ok(pb::ExportChunk { data }))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_chunk()
    }
}
