//! Certificates renewed in place are served without a restart, over REST
//! (axum) and gRPC (tonic), on real loopback servers; files that do not
//! load are refused with the file's name, at start and on reload alike.

use std::path::Path;
use std::time::{Duration, SystemTime};

use flotilla_tls::ServerTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_util::sync::CancellationToken;

/// A private CA that signs server certificates for `localhost`.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "reload test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A fresh key and certificate: (certificate PEM, key PEM, DER).
    fn server(&self) -> anyhow::Result<(String, String, Vec<u8>)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem(), cert.der().to_vec()))
    }
}

/// Writes a pair with a distinct modification time, so that a rewrite
/// within the file system's timestamp granularity is still seen.
fn write_pair(dir: &Path, cert: &str, key: &str, at: SystemTime) -> anyhow::Result<()> {
    for (name, contents) in [("cert.pem", cert), ("key.pem", key)] {
        std::fs::write(dir.join(name), contents)?;
        std::fs::File::options()
            .write(true)
            .open(dir.join(name))?
            .set_modified(at)?;
    }
    Ok(())
}

/// The certificate the REST server at `port` presents now.
async fn presented(client: &reqwest::Client, port: u16) -> anyhow::Result<Vec<u8>> {
    let response = client
        .get(format!("https://localhost:{port}/"))
        .send()
        .await?
        .error_for_status()?;
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .ok_or_else(|| anyhow::anyhow!("no TLS info"))?;
    Ok(info.peer_certificate().unwrap_or_default().to_vec())
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new()?;
    let (cert_a, key_a, der_a) = ca.server()?;
    let start = SystemTime::now() - Duration::from_secs(60);
    write_pair(dir.path(), &cert_a, &key_a, start)?;
    let tls = ServerTls::load(&dir.path().join("cert.pem"), &dir.path().join("key.pem"))?;
    assert!(!tls.reload_if_changed()?, "nothing changed yet");

    let shutdown = CancellationToken::new();
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let rest_port = rest.local_addr()?.port();
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(flotilla_tls::serve_router(
        rest,
        router,
        Some(tls.clone()),
        shutdown.clone(),
        None,
    ));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_port = grpc.local_addr()?.port();
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(flotilla_tls::serve_grpc(
        tonic::transport::Server::builder().add_service(health),
        grpc,
        Some(tls.clone()),
        shutdown.clone(),
    ));

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes())?)
        .tls_info(true)
        .build()?;
    let grpc_check = || async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("https://localhost:{grpc_port}"))?
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&ca.pem)),
                )?
                .connect()
                .await?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await?;
        anyhow::Ok(())
    };
    assert_eq!(presented(&client, rest_port).await?, der_a);
    grpc_check().await?;

    // Renewed in place: new handshakes get the new certificate.
    let (cert_b, key_b, der_b) = ca.server()?;
    write_pair(dir.path(), &cert_b, &key_b, start + Duration::from_secs(30))?;
    assert!(tls.reload_if_changed()?, "the new pair is loaded");
    let fresh = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes())?)
        .tls_info(true)
        .build()?;
    assert_eq!(presented(&fresh, rest_port).await?, der_b);
    grpc_check().await?;

    // A key that does not fit (a renewal caught half way): refused, naming
    // the files, and the previous pair stays in service.
    write_pair(dir.path(), &cert_a, &key_b, start + Duration::from_secs(40))?;
    let refused = tls.reload_if_changed().expect_err("a mismatched pair");
    assert!(refused.to_string().contains("does not fit"), "{refused}");
    assert!(refused.to_string().contains("key.pem"), "{refused}");
    let after = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes())?)
        .tls_info(true)
        .build()?;
    assert_eq!(presented(&after, rest_port).await?, der_b);

    // `watch` does the same by itself.
    let (cert_c, key_c, der_c) = ca.server()?;
    write_pair(dir.path(), &cert_c, &key_c, start + Duration::from_secs(50))?;
    tokio::spawn(
        tls.clone()
            .watch(Duration::from_millis(50), shutdown.clone()),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes())?)
            .tls_info(true)
            .build()?;
        if presented(&client, rest_port).await? == der_c {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watch never loaded the renewed pair"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    Ok(())
}

#[test]
fn unusable_files_are_refused_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let missing = ServerTls::load(Path::new("/nonexistent/cert.pem"), &key);
    let message = missing.expect_err("refused").to_string();
    assert!(message.contains("/nonexistent/cert.pem"), "{message}");

    std::fs::write(&cert, "not a certificate")?;
    std::fs::write(&key, "not a key")?;
    let message = ServerTls::load(&cert, &key)
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains("cert.pem holds no PEM certificate"),
        "{message}"
    );

    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    let message = ServerTls::load(&cert, &key)
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains("key.pem holds no PEM private key"),
        "{message}"
    );
    Ok(())
}
