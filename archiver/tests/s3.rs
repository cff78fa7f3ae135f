//! The cold tier on a real S3-compatible server: moto, started here on 127.0.0.1 (installed by
//! `scripts/test.sh`). Fails — does not skip — if the server cannot be started.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditledger_archiver::store::S3Options;
use auditledger_archiver::{
    Archiver, ArchiverConfig, SegmentStore, StoreOptions, TierStores, allow_deletions,
};
use auditledger_ledger::segments::Tier;
use auditledger_ledger::store::memory::MemoryStore;
use auditledger_ledger::{Clock, SystemClock};

use common::tiers::{Census, append, check_archive, open_ledger, verifiers};

const BUCKET: &str = "auditledger-cold";

/// A moto server on a free loopback port, killed on drop.
struct S3Server {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    fn start(dir: &std::path::Path) -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let log = dir.join("moto.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not start the S3 test server `python3 -m moto.server`: {e}; \
                     install it with `python3 -m pip install 'moto[server]'` (scripts/test.sh does)"
                )
            });
        let mut server = S3Server { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "the S3 test server `python3 -m moto.server` exited with {status} before \
                     listening; is moto installed (`python3 -m pip install 'moto[server]'`)? \
                     Its output:\n{}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the S3 test server did not listen on 127.0.0.1:{port} within 60 s; its output:\n{}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server.create_bucket();
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `PUT /bucket` (moto accepts unsigned requests).
    fn create_bucket(&mut self) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "creating bucket {BUCKET}: {response}"
        );
    }

    fn store(&self, prefix: &str) -> SegmentStore {
        SegmentStore::open(&format!("s3://{BUCKET}/{prefix}"), &self.options()).unwrap()
    }

    fn options(&self) -> StoreOptions {
        StoreOptions {
            s3: S3Options {
                endpoint: Some(self.endpoint()),
                region: Some("us-east-1".into()),
                access_key_id: Some("test".into()),
                secret_access_key: Some("test".into()),
                allow_http: Some(true),
                ..S3Options::default()
            },
            ..StoreOptions::default()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_to_warm_on_file_to_cold_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(dir.path());
    let stores = TierStores {
        warm: SegmentStore::open(
            &format!("file://{}", dir.path().join("warm").display()),
            &StoreOptions::default(),
        )
        .unwrap(),
        cold: server.store("cold"),
    };
    let ledger = open_ledger(Arc::new(MemoryStore::new()), 8);
    append(&ledger, "acme", 0, 3 * 256 + 7).await;
    let archiver = Archiver::new(
        ledger.clone(),
        stores.clone(),
        ArchiverConfig::default(),
        allow_deletions(),
    );
    let now = SystemClock.now_nanos();
    let report = archiver.move_down(Tier::Warm, Duration::ZERO, now).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (3, 0),
        "{report:?}"
    );
    let report = archiver.move_down(Tier::Cold, Duration::ZERO, now).await;
    assert_eq!(
        (report.moved.len(), report.failures.len()),
        (3, 0),
        "{report:?}"
    );
    let census = check_archive(&ledger, &stores, archiver.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 0,
            cold: 3,
            expired: 0
        }
    );

    // Retention expiry rewrites the objects on S3 too.
    let later = now + Duration::from_secs(8 * 365 * 24 * 3600).as_nanos() as u64;
    let report = archiver.pass(later).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.expired.len(), 3, "{report:?}");
    let census = check_archive(&ledger, &stores, archiver.reader()).await;
    assert_eq!(
        census,
        Census {
            warm: 0,
            cold: 3,
            expired: 3
        }
    );

    // The offline verifier checks the cold tier on S3: manifests, rows, anchors, chain.
    let options = auditledger_verifier::archive::ArchiveOptions {
        keys: verifiers(),
        store: server.options(),
        ..Default::default()
    };
    let url = format!("s3://{BUCKET}/cold");
    let verified = tokio::task::spawn_blocking(move || {
        auditledger_verifier::archive::verify_archive(&url, &options)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(verified.is_ok(), "{:?}", verified.failures);
    assert_eq!(verified.logs.len(), 1);
    let log = &verified.logs[0];
    assert_eq!(
        (log.segments, log.leaves, log.expired_leaves),
        (3, 768, 768)
    );
    assert!(
        log.highest_checkpoint
            .as_ref()
            .is_some_and(|(size, _)| *size >= 768)
    );
    ledger.close().unwrap();
    drop(server);
}
