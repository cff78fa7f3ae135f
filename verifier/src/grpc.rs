//! A minimal unary gRPC client for the live checks and the monitor.
//!
//! Why not tonic: the verifier must build without tonic (DESIGN §2) so that the code a
//! compliance team runs to check the ledger shares as little as possible with the server it
//! checks, and stays small enough to audit. The live checks only need four unary calls, so
//! this module speaks the gRPC wire protocol directly over hyper's HTTP/2 client:
//!
//! - request: `POST /<package.Service>/<Method>`, `content-type: application/grpc`,
//!   `te: trailers`, optional `authorization: Bearer <token>`; body = one length-prefixed
//!   message (1 byte compression flag 0, 4-byte big-endian length, protobuf bytes);
//! - response: length-prefixed messages in DATA frames, then trailers carrying `grpc-status`
//!   and `grpc-message` (percent-encoded); an error may come as a "trailers-only" response
//!   whose headers carry the status.
//!
//! `http://` URLs use HTTP/2 with prior knowledge (h2c, what the server serves on loopback);
//! `https://` URLs use TLS (ALPN `h2`) with the system's roots or a given CA bundle, and
//! optionally a client certificate for mutual TLS. Compression is never requested, so a
//! compressed message is a protocol error. Every call (connect included) has a timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Largest response message accepted (a checkpoint with many cosignatures or an inclusion
/// proof with a 64 KiB leaf is far below this).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// gRPC status codes (grpc/doc/statuscodes.md).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC status code as received (unknown numbers are kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code(pub u32);

impl Code {
    pub const OK: Code = Code(0);
    pub const INVALID_ARGUMENT: Code = Code(3);
    pub const NOT_FOUND: Code = Code(5);
    pub const PERMISSION_DENIED: Code = Code(7);
    pub const FAILED_PRECONDITION: Code = Code(9);
    pub const OUT_OF_RANGE: Code = Code(11);
    pub const UNIMPLEMENTED: Code = Code(12);
    pub const UNAVAILABLE: Code = Code(14);
    pub const UNAUTHENTICATED: Code = Code(16);

    pub fn name(self) -> &'static str {
        CODE_NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("UNKNOWN")
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if (self.0 as usize) < CODE_NAMES.len() {
            f.write_str(self.name())
        } else {
            write!(f, "status {}", self.0)
        }
    }
}

/// A malformed length-prefixed message stream.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("compressed message received although no compression was offered")]
    Compressed,
    #[error("invalid message flag byte {0:#04x}")]
    BadFlag(u8),
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("response ended inside a message ({have} of {need} bytes)")]
    Truncated { have: usize, need: usize },
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    #[error("invalid server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("client configuration: {0}")]
    Config(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{method}: no complete answer from {addr} within {timeout:?}")]
    Timeout {
        method: String,
        addr: String,
        timeout: Duration,
    },
    /// The server answered with a non-OK gRPC status.
    #[error("server refused {method}: {code}: {message}")]
    Status {
        method: String,
        code: Code,
        message: String,
    },
    #[error("{method}: connection to {addr} failed: {reason}")]
    Transport {
        method: String,
        addr: String,
        reason: String,
    },
    #[error("{method}: not a valid gRPC answer: {reason}")]
    Protocol { method: String, reason: String },
}

impl GrpcError {
    /// The gRPC status code, when the server answered with one.
    pub fn code(&self) -> Option<Code> {
        match self {
            GrpcError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether retrying later may succeed: the server was unreachable, slow or temporarily
    /// unable to answer. Refusals (authentication, permission, bad arguments), bad URLs and
    /// protocol violations are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            GrpcError::Connect { .. } | GrpcError::Timeout { .. } | GrpcError::Transport { .. } => {
                true
            }
            // CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, UNAVAILABLE.
            GrpcError::Status { code, .. } => matches!(code.0, 1 | 4 | 8 | 10 | 14),
            _ => false,
        }
    }
}

/// Splits a gRPC message stream into messages; bounded by `max_message` so a hostile length
/// prefix cannot make the client buffer unbounded data.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_message: usize,
    messages: Vec<Bytes>,
}

impl FrameDecoder {
    pub fn new(max_message: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max_message,
            messages: Vec::new(),
        }
    }

    /// Adds the bytes of one DATA frame (which may hold part of a message or several).
    pub fn push(&mut self, data: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(data);
        loop {
            // The header is checked as soon as it is complete, before the body is buffered.
            let Some(header) = self.buf.get(..5) else {
                return Ok(());
            };
            match header[0] {
                0 => {}
                1 => return Err(FrameError::Compressed),
                other => return Err(FrameError::BadFlag(other)),
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len > self.max_message {
                return Err(FrameError::TooLarge {
                    len,
                    max: self.max_message,
                });
            }
            if self.buf.len() < 5 + len {
                return Ok(());
            }
            let message = Bytes::copy_from_slice(&self.buf[5..5 + len]);
            self.buf.drain(..5 + len);
            self.messages.push(message);
        }
    }

    /// The complete messages; an error if the stream stopped inside one.
    pub fn finish(self) -> Result<Vec<Bytes>, FrameError> {
        if !self.buf.is_empty() {
            let need = match self.buf.get(..5) {
                Some(h) => 5 + u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize,
                None => 5,
            };
            return Err(FrameError::Truncated {
                have: self.buf.len(),
                need,
            });
        }
        Ok(self.messages)
    }
}

/// One length-prefixed, uncompressed message.
pub fn encode_frame(message: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(message.len()).map_err(|_| FrameError::TooLarge {
        len: message.len(),
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(out)
}

/// Decodes a `grpc-message` value (percent-encoded UTF-8, gRPC over HTTP/2 spec).
pub fn percent_decode(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if value[i] == b'%'
            && let (Some(h), Some(l)) = (
                value.get(i + 1).copied().and_then(hex),
                value.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(value[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `http://host:port` (h2c) or `https://host:port` (TLS).
    pub url: String,
    /// Sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Limit for each call, connection set-up included.
    pub timeout: Duration,
    /// PEM CA bundle for `https://` instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate chain and key for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

struct Endpoint {
    scheme: &'static str,
    /// host:port as written (for the `:authority` header and messages).
    authority: String,
    /// Host without IPv6 brackets, for DNS and the TLS server name.
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    authorization: Option<http::HeaderValue>,
    timeout: Duration,
}

/// A gRPC client for one server; connects lazily and reconnects after a failed call.
pub struct GrpcClient {
    endpoint: Arc<Endpoint>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

fn read_pem_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, GrpcError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| GrpcError::Config(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(GrpcError::Config(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn tls_config(options: &ClientOptions) -> Result<rustls::ClientConfig, GrpcError> {
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_cert {
        Some(path) => {
            for cert in read_pem_certs(path, "--ca-cert")? {
                roots
                    .add(cert)
                    .map_err(|e| GrpcError::Config(format!("--ca-cert {}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(GrpcError::Config(format!(
                    "no usable system root certificates ({} errors loading them); pass --ca-cert",
                    found.errors.len()
                )));
            }
        }
    }
    // The provider is chosen explicitly: other crates of the workspace may compile in a
    // second one, and then rustls cannot pick a process default.
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| GrpcError::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots);
    let mut config = match (&options.client_cert, &options.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_pem_certs(cert, "--client-cert")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| GrpcError::Config(format!("--client-key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| GrpcError::Config(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(GrpcError::Config(
                "--client-cert and --client-key go together".into(),
            ));
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl GrpcClient {
    /// Checks the URL and reads the TLS files; does not connect yet.
    pub fn new(options: &ClientOptions) -> Result<Self, GrpcError> {
        let url_error = |reason: &str| GrpcError::Url {
            url: options.url.clone(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = options
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| url_error(&e.to_string()))?;
        let scheme = match uri.scheme_str() {
            Some("http") => "http",
            Some("https") => "https",
            Some(_) => return Err(url_error("the scheme must be http:// or https://")),
            None => return Err(url_error("expected http://HOST:PORT or https://HOST:PORT")),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(url_error("a gRPC server URL has no path or query"));
        }
        let authority = uri.authority().ok_or_else(|| url_error("no host"))?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let tls = if scheme == "https" {
            Some(Arc::new(tls_config(options)?))
        } else {
            if options.ca_cert.is_some() || options.client_cert.is_some() {
                return Err(GrpcError::Config(
                    "--ca-cert/--client-cert need an https:// server URL".into(),
                ));
            }
            None
        };
        let authorization = options
            .token
            .as_deref()
            .map(|t| {
                let mut v =
                    http::HeaderValue::from_str(&format!("Bearer {}", t.trim())).map_err(|_| {
                        GrpcError::Config(
                            "the token contains characters not allowed in an HTTP header".into(),
                        )
                    })?;
                v.set_sensitive(true);
                Ok::<_, GrpcError>(v)
            })
            .transpose()?;
        Ok(GrpcClient {
            endpoint: Arc::new(Endpoint {
                scheme,
                authority: authority.to_string(),
                host,
                port,
                tls,
                authorization,
                timeout: options.timeout,
            }),
            sender: None,
        })
    }

    /// `scheme://host:port` of the server.
    pub fn url(&self) -> String {
        format!("{}://{}", self.endpoint.scheme, self.endpoint.authority)
    }

    async fn connect(endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, GrpcError> {
        let connect_error = |reason: String| GrpcError::Connect {
            addr: endpoint.authority.clone(),
            reason,
        };
        let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        // Requests are tiny; do not let Nagle delay them.
        let _ = tcp.set_nodelay(true);
        match &endpoint.tls {
            None => handshake(tcp).await.map_err(connect_error),
            Some(config) => {
                let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                    connect_error(format!("{:?} is not a valid TLS name: {e}", endpoint.host))
                })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| connect_error(format!("TLS handshake: {e}")))?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(connect_error(
                        "the server did not agree to HTTP/2 (ALPN h2); is this a gRPC server?"
                            .into(),
                    ));
                }
                handshake(tls).await.map_err(connect_error)
            }
        }
    }

    /// Calls `/<service>/<method>` with `request`, expecting exactly one response message.
    /// `service` is the full name, e.g. `auditledger.v1.Log`.
    pub async fn unary<Req, Resp>(
        &mut self,
        service: &str,
        method: &str,
        request: &Req,
    ) -> Result<Resp, GrpcError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let endpoint = self.endpoint.clone();
        let timeout = endpoint.timeout;
        let result = tokio::time::timeout(
            timeout,
            Self::call(&endpoint, &mut self.sender, service, method, request),
        )
        .await
        .unwrap_or_else(|_| {
            Err(GrpcError::Timeout {
                method: method.to_owned(),
                addr: endpoint.authority.clone(),
                timeout,
            })
        });
        if matches!(
            result,
            Err(GrpcError::Timeout { .. }
                | GrpcError::Transport { .. }
                | GrpcError::Protocol { .. })
        ) {
            // The connection may be dead or out of step: start afresh on the next call.
            self.sender = None;
        }
        let bytes = result?;
        Resp::decode(bytes).map_err(|e| GrpcError::Protocol {
            method: method.to_owned(),
            reason: format!("response message does not decode: {e}"),
        })
    }

    async fn call<Req: prost::Message>(
        endpoint: &Endpoint,
        sender: &mut Option<SendRequest<Full<Bytes>>>,
        service: &str,
        method: &str,
        request: &Req,
    ) -> Result<Bytes, GrpcError> {
        let protocol = |reason: String| GrpcError::Protocol {
            method: method.to_owned(),
            reason,
        };
        let transport = |e: hyper::Error| GrpcError::Transport {
            method: method.to_owned(),
            addr: endpoint.authority.clone(),
            reason: error_chain(&e),
        };
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            *sender = Some(Self::connect(endpoint).await?);
        }
        let Some(send) = sender.as_mut() else {
            unreachable!("connected just above");
        };
        send.ready().await.map_err(transport)?;

        let body = encode_frame(&request.encode_to_vec()).map_err(|e| protocol(e.to_string()))?;
        let mut builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!(
                "{}://{}/{service}/{method}",
                endpoint.scheme, endpoint.authority
            ))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header(
                http::header::USER_AGENT,
                concat!("auditledger-verify/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &endpoint.authorization {
            builder = builder.header(http::header::AUTHORIZATION, auth.clone());
        }
        let http_request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| protocol(format!("building the request: {e}")))?;
        let response = send.send_request(http_request).await.map_err(transport)?;

        let (parts, mut body) = response.into_parts();
        // A trailers-only response (errors) carries the status in the headers.
        if let Some(status) = status_from(&parts.headers, method)? {
            return Err(status);
        }
        if parts.status != http::StatusCode::OK {
            return Err(protocol(format!(
                "HTTP status {} without a gRPC status",
                parts.status
            )));
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        if !content_type.starts_with("application/grpc") {
            return Err(protocol(format!(
                "content-type {content_type:?}, expected application/grpc"
            )));
        }
        let mut decoder = FrameDecoder::new(MAX_MESSAGE_BYTES);
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(transport)?;
            match frame.into_data() {
                Ok(data) => decoder.push(&data).map_err(|e| protocol(e.to_string()))?,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
        }
        let trailers = trailers.ok_or_else(|| {
            protocol("the response ended without trailers (no grpc-status)".into())
        })?;
        match status_from(&trailers, method)? {
            Some(status) => return Err(status),
            None if trailers.contains_key("grpc-status") => {}
            None => return Err(protocol("the trailers carry no grpc-status".into())),
        }
        let mut messages = decoder.finish().map_err(|e| protocol(e.to_string()))?;
        match messages.len() {
            1 => Ok(messages.remove(0)),
            n => Err(protocol(format!(
                "{n} response messages for a unary call (expected 1)"
            ))),
        }
    }
}

async fn handshake<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {}", error_chain(&e)))?;
    // The connection task ends when the client is dropped or the server goes away; its error
    // surfaces through the next call on `sender`.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// `e` and its sources, `: `-separated (hyper's own message alone is often just "http2 error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    // Bounded: error chains are short, but a cyclic one must not hang the client.
    for _ in 0..8 {
        let Some(s) = source else { break };
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The non-OK status in `headers`, `None` if OK or absent.
fn status_from(headers: &http::HeaderMap, method: &str) -> Result<Option<GrpcError>, GrpcError> {
    let Some(raw) = headers.get("grpc-status") else {
        return Ok(None);
    };
    let code = std::str::from_utf8(raw.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| GrpcError::Protocol {
            method: method.to_owned(),
            reason: format!("grpc-status {raw:?} is not a number"),
        })?;
    if code == 0 {
        return Ok(None);
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Ok(Some(GrpcError::Status {
        method: method.to_owned(),
        code: Code(code),
        message,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_and_within_frames() {
        let a = encode_frame(b"hello").unwrap();
        let b = encode_frame(b"").unwrap();
        let c = encode_frame(&[7u8; 300]).unwrap();
        let stream: Vec<u8> = [a, b, c].concat();
        // Every split point, including inside the 5-byte header.
        for cut in 0..=stream.len() {
            let mut d = FrameDecoder::new(1024);
            d.push(&stream[..cut]).unwrap();
            d.push(&stream[cut..]).unwrap();
            let msgs = d.finish().unwrap();
            assert_eq!(msgs.len(), 3, "cut at {cut}");
            assert_eq!(&msgs[0][..], b"hello");
            assert!(msgs[1].is_empty());
            assert_eq!(&msgs[2][..], &[7u8; 300][..]);
        }
        // Byte by byte.
        let mut d = FrameDecoder::new(1024);
        for byte in &stream {
            d.push(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(d.finish().unwrap().len(), 3);
    }

    #[test]
    fn partial_frames_are_reported_as_truncated() {
        let frame = encode_frame(b"0123456789").unwrap();
        for cut in 1..frame.len() {
            let mut d = FrameDecoder::new(1024);
            d.push(&frame[..cut]).unwrap();
            let err = d.finish().unwrap_err();
            let need = if cut < 5 { 5 } else { 15 };
            assert_eq!(
                err,
                FrameError::Truncated { have: cut, need },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_buffering() {
        let mut d = FrameDecoder::new(100);
        // Only the header of a 4 GiB message: rejected at once, nothing more is awaited.
        let err = d.push(&[0, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 100
            }
        );
        let mut d = FrameDecoder::new(100);
        d.push(&encode_frame(&[1; 100]).unwrap()).unwrap();
        assert!(d.push(&encode_frame(&[1; 101]).unwrap()).is_err());
    }

    #[test]
    fn compressed_and_unknown_flags_are_rejected() {
        let mut d = FrameDecoder::new(100);
        assert_eq!(
            d.push(&[1, 0, 0, 0, 1, 9]).unwrap_err(),
            FrameError::Compressed
        );
        let mut d = FrameDecoder::new(100);
        assert_eq!(
            d.push(&[2, 0, 0, 0, 0]).unwrap_err(),
            FrameError::BadFlag(2)
        );
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(
            percent_decode(b"token %E2%80%9Cx%E2%80%9D unknown: 100%25"),
            "token “x” unknown: 100%"
        );
        // Malformed escapes are kept as they are.
        assert_eq!(percent_decode(b"50% off %zz"), "50% off %zz");
    }

    #[test]
    fn status_headers_map_to_clear_errors() {
        let mut h = http::HeaderMap::new();
        assert!(status_from(&h, "GetCheckpoint").unwrap().is_none());
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert!(status_from(&h, "GetCheckpoint").unwrap().is_none());
        h.insert("grpc-status", http::HeaderValue::from_static("7"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("token%20not%20valid%20for%20tenant"),
        );
        let err = status_from(&h, "GetConsistencyProof").unwrap().unwrap();
        assert_eq!(
            err.to_string(),
            "server refused GetConsistencyProof: PERMISSION_DENIED: token not valid for tenant"
        );
        assert!(!err.is_transient());
        h.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(status_from(&h, "x").unwrap().unwrap().is_transient());
        h.insert("grpc-status", http::HeaderValue::from_static("abc"));
        assert!(status_from(&h, "x").is_err());
    }

    #[test]
    fn urls_are_checked() {
        let opts = |url: &str| ClientOptions {
            url: url.into(),
            token: Some("t".into()),
            timeout: Duration::from_secs(1),
            ca_cert: None,
            client_cert: None,
            client_key: None,
        };
        for (url, needle) in [
            ("127.0.0.1:50051", "expected http://"),
            ("ftp://127.0.0.1:1", "http:// or https://"),
            ("http://127.0.0.1:1/api", "no path"),
        ] {
            let err = GrpcClient::new(&opts(url)).err().expect(url);
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        let c = GrpcClient::new(&opts("http://[::1]:50051")).unwrap();
        assert_eq!(c.endpoint.host, "::1");
        assert_eq!(c.url(), "http://[::1]:50051");
        let mut bad_token = opts("http://127.0.0.1:1");
        bad_token.token = Some("a\nb".into());
        assert!(GrpcClient::new(&bad_token).is_err());
    }

    #[tokio::test]
    async fn unreachable_server_is_a_transient_connect_error() {
        // Bind then drop a listener to get a loopback port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut client = GrpcClient::new(&ClientOptions {
            url: format!("http://127.0.0.1:{port}"),
            token: None,
            timeout: Duration::from_secs(5),
            ca_cert: None,
            client_cert: None,
            client_key: None,
        })
        .unwrap();
        let err = client
            .unary::<_, auditledger_proto::v1::SignedCheckpoint>(
                "auditledger.v1.Log",
                "GetCheckpoint",
                &auditledger_proto::v1::GetCheckpointRequest::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, GrpcError::Connect { .. }), "{err}");
        assert!(err.is_transient());
    }
}
