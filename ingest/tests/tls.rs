//! TLS 1.3 and mutual TLS against the real server: a client certificate authenticates a
//! gateway without a token; no certificate and no token is refused; a certificate from an
//! unknown CA cannot connect.

mod common;

use auditledger_ledger::event::decode_leaf_strict;
use auditledger_proto::v1 as pb;
use common::{Ledger, Server, event};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM)
    fn issue(
        &self,
        common_name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

async fn connect(
    addr: &str,
    ca_pem: &str,
    client: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[test]
fn mutual_tls_authenticates_gateways_by_certificate() {
    let pki = Pki::new("AuditLedger test CA");
    let (server_cert, server_key) = pki.issue(
        "localhost",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let gateway = pki.issue(
        "gateway-1.example.com",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let stranger_pki = Pki::new("someone else");
    let stranger = stranger_pki.issue(
        "gateway-1.example.com",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    let ledger = Ledger::init("");
    for (name, pem) in [
        ("server.pem", &server_cert),
        ("server.key", &server_key),
        ("ca.pem", &pki.ca_pem),
    ] {
        std::fs::write(ledger.dir.join(name), pem).unwrap();
    }
    let config = std::fs::read_to_string(ledger.config())
        .unwrap()
        .replace("tls_cert = \"\"", "tls_cert = \"server.pem\"")
        .replace("tls_key = \"\"", "tls_key = \"server.key\"")
        .replace("tls_client_ca = \"\"", "tls_client_ca = \"ca.pem\"")
        + "\n[[auth.client_cert]]\ncommon_name = \"gateway-1.example.com\"\nrole = \"gateway\"\ntenants = [\"acme\"]\nenvironments = [\"prod\"]\n";
    std::fs::write(ledger.config(), config).unwrap();
    let inv = ledger.token("investigator", &["acme"], &["prod"], None);

    // Tests stay on loopback; TLS is what would let the server listen off it.
    let server = Server::start_with(
        &ledger,
        &["--listen", "127.0.0.1:0"],
        &[("AUDITLEDGER_SERVER_METRICS_LISTEN", "")],
    );
    assert_eq!(server.scheme, "https");
    let addr = server.addr.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Certificate, no token: authenticated as the certificate's common name.
        let channel = connect(&addr, &pki.ca_pem, Some(&gateway)).await.unwrap();
        let mut ingest = pb::ingest_client::IngestClient::new(channel);
        let receipts = ingest
            .append(pb::AppendRequest {
                events: vec![event("acme", "prod", 1)],
                wait_for_checkpoint: true,
            })
            .await
            .unwrap()
            .into_inner()
            .receipts;
        assert_eq!(receipts[0].leaf_index, 0);
        // The certificate covers acme/prod only.
        let err = ingest
            .append(pb::AppendRequest {
                events: vec![event("globex", "prod", 1)],
                wait_for_checkpoint: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        // The leaf records the certificate identity as principal.
        let channel = connect(&addr, &pki.ca_pem, None).await.unwrap();
        let mut log = pb::log_client::LogClient::new(channel.clone());
        let proof = log
            .get_inclusion_proof(common::authed(
                pb::GetInclusionProofRequest {
                    tenant_id: "acme".into(),
                    environment: "prod".into(),
                    key: Some(pb::get_inclusion_proof_request::Key::LeafIndex(0)),
                    tree_size: 0,
                    justification: "tls test".into(),
                },
                &inv,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            decode_leaf_strict(&proof.leaf).unwrap().principal,
            "gateway-1.example.com"
        );

        // Neither certificate nor token: refused.
        let mut anonymous = pb::ingest_client::IngestClient::new(channel);
        let err = anonymous
            .append(pb::AppendRequest {
                events: vec![event("acme", "prod", 2)],
                wait_for_checkpoint: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);

        // A certificate from another CA does not get through the handshake.
        let result = match connect(&addr, &pki.ca_pem, Some(&stranger)).await {
            Err(e) => Err(e.to_string()),
            Ok(channel) => pb::ingest_client::IngestClient::new(channel)
                .append(pb::AppendRequest {
                    events: vec![event("acme", "prod", 3)],
                    wait_for_checkpoint: false,
                })
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
        };
        assert!(result.is_err(), "a foreign client certificate was accepted");
    });
    assert!(server.stop());
}
