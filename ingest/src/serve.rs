//! `auditledger serve`: binds, wires the services, health and reflection, metrics, and shuts
//! down cleanly on SIGTERM/SIGINT (stop accepting, drain in-flight appends, sign final
//! checkpoints).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use auditledger_proto::v1::admin_server::AdminServer;
use auditledger_proto::v1::compliance_server::ComplianceServer;
use auditledger_proto::v1::ingest_server::IngestServer;
use auditledger_proto::v1::investigate_server::InvestigateServer;
use auditledger_proto::v1::log_server::LogServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use crate::admin::AdminService;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::export::ComplianceService;
use crate::investigate::InvestigateService;
use crate::metrics::ServerMetrics;
use crate::quotas::Quotas;
use crate::seqtrack::SeqTracker;
use crate::server::{AppState, IngestService, LogService};
use crate::syslog::SystemLog;
use crate::{open, tls};

/// Resolves the listen address and checks the plaintext-on-loopback-only rule.
pub async fn listen_address(config: &Config, listen: &str) -> anyhow::Result<(SocketAddr, bool)> {
    let addr = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("resolving listen address {listen:?}"))?
        .next()
        .with_context(|| format!("listen address {listen:?} resolves to nothing"))?;
    let tls = !config.server.tls_cert.as_os_str().is_empty()
        || !config.server.tls_key.as_os_str().is_empty();
    if tls
        && (config.server.tls_cert.as_os_str().is_empty()
            || config.server.tls_key.as_os_str().is_empty())
    {
        bail!("set both server.tls_cert and server.tls_key to serve TLS");
    }
    if !tls && !addr.ip().is_loopback() {
        bail!(
            "refusing to serve plaintext gRPC on non-loopback address {addr}: configure server.tls_cert and \
             server.tls_key (and optionally server.tls_client_ca for mutual TLS), or listen on 127.0.0.1"
        );
    }
    Ok((addr, tls))
}

/// Installs the SIGTERM/SIGINT handlers now and returns a future that resolves on the first
/// of them. Installed before the server announces its address: a signal that arrives right
/// after start-up must shut it down gracefully, not kill it with the default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Runs the server until SIGTERM/SIGINT.
pub async fn serve(config: Config, listen_override: Option<String>) -> anyhow::Result<()> {
    let listen = listen_override.unwrap_or_else(|| config.server.listen.clone());
    let (addr, use_tls) = listen_address(&config, &listen).await?;
    let tls_config = if use_tls {
        let client_ca = config.optional_path(&config.server.tls_client_ca);
        Some(
            tls::server_config(
                &config.resolve(&config.server.tls_cert),
                &config.resolve(&config.server.tls_key),
                client_ca.as_deref(),
            )
            .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    let auth = Authenticator::new(config.tokens_path(), &config.auth.client_cert)
        .map_err(anyhow::Error::msg)?;
    let fds_needed = u64::from(config.ledger.max_open_files)
        + config.server.max_connections as u64
        + crate::hardening::FD_RESERVE;
    match crate::hardening::ensure_fd_limit(fds_needed).map_err(anyhow::Error::msg)? {
        crate::hardening::FdLimit::Raised { from, to } => {
            tracing::info!(from, to, "raised the open-file limit")
        }
        crate::hardening::FdLimit::Enough { soft } => {
            tracing::debug!(soft, needed = fds_needed, "open-file limit")
        }
    }
    let open_config = config.clone();
    let (ledger, store) =
        tokio::task::spawn_blocking(move || open::open_ledger(&open_config)).await??;
    let ledger = Arc::new(ledger);
    let syslog = SystemLog::start(ledger.clone(), config.auth.default_environment.clone());
    let archiver = Arc::new(crate::tiering::archiver(&config, ledger.clone(), &syslog)?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(ServerMetrics::default());
    let state = Arc::new(AppState {
        quotas: Quotas::new(config.quotas.clone()),
        seq: SeqTracker::new(config.server.seq_gap_grace),
        config: config.clone(),
        ledger: ledger.clone(),
        auth,
        syslog,
        metrics: metrics.clone(),
        shutdown: shutdown_rx.clone(),
        archiver: archiver.clone(),
        // 4096 distinct denials per window: beyond that only a total is kept.
        denials: crate::hardening::DenialLimiter::new(
            config.server.denial_window,
            4096,
            metrics.hardening.clone(),
        ),
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IngestServer<IngestService>>()
        .await;
    health_reporter.set_serving::<LogServer<LogService>>().await;
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    health_reporter
        .set_serving::<ComplianceServer<ComplianceService>>()
        .await;
    health_reporter
        .set_serving::<InvestigateServer<InvestigateService>>()
        .await;
    // Ingest is reported NOT_SERVING while appends cannot be made durable (the hot store
    // refuses writes: disk full, I/O error), so load balancers and gateways route or spool
    // instead of collecting UNAVAILABLE answers; it is SERVING again once a write succeeds.
    let health_watch = tokio::spawn({
        let reporter = health_reporter.clone();
        let ledger = ledger.clone();
        async move {
            let mut serving = true;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let healthy = ledger.write_error().is_none();
                if healthy != serving {
                    serving = healthy;
                    if healthy {
                        reporter.set_serving::<IngestServer<IngestService>>().await;
                    } else {
                        reporter
                            .set_not_serving::<IngestServer<IngestService>>()
                            .await;
                    }
                }
            }
        }
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(auditledger_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    // grpcurl before 1.9 (and other older tools) only speak v1alpha reflection.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the v1alpha reflection service")?;

    let max_message = config.limits.max_batch_bytes + (64 << 10);
    let ingest = IngestServer::new(IngestService(state.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(64 << 20);
    let log = LogServer::new(LogService(state.clone()))
        .max_decoding_message_size(1 << 20)
        .max_encoding_message_size(64 << 20);

    let admin = AdminServer::new(AdminService(state.clone()));
    let compliance =
        ComplianceServer::new(ComplianceService(state.clone())).max_decoding_message_size(1 << 20);
    // Pages with proofs and 1000 events of up to 64 KiB each can be large.
    let investigate = InvestigateServer::new(InvestigateService(state.clone()))
        .max_decoding_message_size(1 << 20)
        .max_encoding_message_size(128 << 20);

    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let scheme = if use_tls { "https" } else { "http" };

    let metrics_task = if config.server.metrics_listen.is_empty() {
        None
    } else {
        let m = TcpListener::bind(&config.server.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "binding server.metrics_listen {}",
                    config.server.metrics_listen
                )
            })?;
        let maddr = m.local_addr()?;
        tracing::info!(address = %maddr, "metrics at http://{maddr}/metrics");
        println!("auditledger metrics on http://{maddr}/metrics");
        Some(tokio::spawn(crate::metrics::serve(
            m,
            ledger.clone(),
            metrics.clone(),
            Some(archiver.clone()),
            Some(store.clone()),
        )))
    };
    let sweeper_state = state.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let gaps = sweeper_state.seq.expired_gaps(Instant::now());
            sweeper_state.seq_anomalies(gaps);
            sweeper_state.flush_denials();
        }
    });

    let archive_task = (!config.tiers.archive_interval.is_zero()).then(|| {
        tokio::spawn(crate::tiering::run_loop(
            archiver.clone(),
            config.tiers.archive_interval,
            shutdown_rx.clone(),
        ))
    });

    let stop_signal = shutdown_signal()?;
    tracing::info!(address = %local, tls = use_tls, mtls = use_tls && !config.server.tls_client_ca.as_os_str().is_empty(), "listening");
    println!("auditledger listening on {scheme}://{local}");

    let router = Server::builder()
        .tcp_nodelay(true)
        // Gateways keep several multi-megabyte batches in flight per stream; HTTP/2's default
        // 64 KiB windows would stall them on flow control.
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        // Hostile-client limits (docs/reliability.md "Hostile clients"). tonic leaves streams
        // per connection unlimited unless told; hyper's header-list default (16 KiB) is made
        // explicit; the timeout bounds unary request bodies that never complete.
        .max_concurrent_streams(Some(config.server.max_concurrent_streams))
        .http2_max_header_list_size(Some(config.server.max_header_list_size))
        .http2_keepalive_interval(Some(config.server.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(config.server.http2_keepalive_timeout))
        .timeout(config.server.request_timeout)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .add_service(log)
        .add_service(admin)
        .add_service(compliance)
        .add_service(investigate);

    let mut signal_rx = shutdown_rx.clone();
    let graceful = async move {
        let _ = signal_rx.wait_for(|s| *s).await;
    };
    let (max_connections, handshake_timeout, counters) = (
        config.server.max_connections,
        config.server.handshake_timeout,
        metrics.hardening.clone(),
    );
    let server = async move {
        match tls_config {
            Some(tls) => {
                let incoming = crate::hardening::limit_connections(
                    ReceiverStream::new(tls::incoming(listener, tls)),
                    max_connections,
                    handshake_timeout,
                    counters,
                );
                router
                    .serve_with_incoming_shutdown(incoming, graceful)
                    .await
            }
            None => {
                let incoming = crate::hardening::limit_connections(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    max_connections,
                    handshake_timeout,
                    counters,
                );
                router
                    .serve_with_incoming_shutdown(incoming, graceful)
                    .await
            }
        }
    };
    tokio::pin!(server);
    let grace = config.server.shutdown_grace;
    tokio::select! {
        result = &mut server => result.context("gRPC server failed")?,
        _ = stop_signal => {
            tracing::info!(grace = ?grace, "shutting down: no new requests, draining in-flight ones");
            let _ = shutdown_tx.send(true);
            if tokio::time::timeout(grace, &mut server).await.is_err() {
                tracing::warn!("in-flight requests did not finish within server.shutdown_grace; closing anyway");
            }
        }
    }
    sweeper.abort();
    health_watch.abort();
    if let Some(mut task) = archive_task {
        // A pass in progress finishes (every step is idempotent, but finishing is cheaper
        // than redoing); one that overruns the grace is cut off and redone next start.
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            tracing::warn!("archiver pass still running after server.shutdown_grace; stopping it");
            task.abort();
        }
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    health_reporter
        .set_not_serving::<IngestServer<IngestService>>()
        .await;
    // Everything accepted has been answered; commit the queued system records, then sign
    // final checkpoints.
    state.syslog.close().await;
    let closing = ledger.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await?
        .context("closing the ledger")?;
    tracing::info!("stopped cleanly");
    Ok(())
}
