//! Mutual TLS between agents, on a real loopback server: a server that
//! verifies clients against a CA still serves clients without a
//! certificate, tells handlers who presented one signed by the CA
//! (`TlsInfo`), and refuses one signed by another CA; `verifies_as_client`
//! predicts which certificates pass.

use std::sync::Arc;

use flotilla_tls::{ServerTls, TlsInfo, verifies_as_client};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_util::sync::CancellationToken;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// (certificate PEM, key PEM) for `localhost` with `usages`.
    fn issue(&self, usages: Vec<ExtendedKeyUsagePurpose>) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params.extended_key_usages = usages;
        Ok((
            params.signed_by(&key, &self.issuer)?.pem(),
            key.serialize_pem(),
        ))
    }
}

#[tokio::test]
async fn a_server_verifying_clients_tells_nodes_from_clients() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new()?;
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let (server_cert, server_key) = ca.issue(both.clone())?;
    std::fs::write(dir.path().join("cert.pem"), &server_cert)?;
    std::fs::write(dir.path().join("key.pem"), &server_key)?;
    let tls = ServerTls::load_verifying_clients(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
        Some(ca.pem.as_bytes()),
    )?;
    let router = axum::Router::new().route(
        "/",
        axum::routing::get(|info: Option<axum::Extension<Arc<TlsInfo>>>| async move {
            match info {
                Some(info) if !info.peer_certificates.is_empty() => "node",
                _ => "client",
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(flotilla_tls::serve_router(
        listener,
        router,
        Some(tls),
        shutdown.clone(),
        None,
    ));
    let root = reqwest::Certificate::from_pem(ca.pem.as_bytes())?;
    let ask = |identity: Option<reqwest::Identity>| {
        let root = root.clone();
        async move {
            let mut builder = reqwest::Client::builder().add_root_certificate(root);
            if let Some(identity) = identity {
                builder = builder.identity(identity);
            }
            builder
                .build()?
                .get(format!("https://localhost:{port}/"))
                .send()
                .await?
                .text()
                .await
        }
    };
    assert_eq!(ask(None).await?, "client");
    let (node_cert, node_key) = ca.issue(both)?;
    let node = reqwest::Identity::from_pem(format!("{node_cert}{node_key}").as_bytes())?;
    assert_eq!(ask(Some(node)).await?, "node");
    let stranger = Ca::new()?.issue(vec![ExtendedKeyUsagePurpose::ClientAuth])?;
    let stranger = reqwest::Identity::from_pem(format!("{}{}", stranger.0, stranger.1).as_bytes())?;
    assert!(
        ask(Some(stranger)).await.is_err(),
        "a certificate from another CA fails the handshake"
    );

    // What an agent checks before presenting its certificate.
    assert!(verifies_as_client(ca.pem.as_bytes(), node_cert.as_bytes()).is_ok());
    let (server_only, _) = ca.issue(vec![ExtendedKeyUsagePurpose::ServerAuth])?;
    assert!(verifies_as_client(ca.pem.as_bytes(), server_only.as_bytes()).is_err());
    let other = Ca::new()?;
    assert!(verifies_as_client(other.pem.as_bytes(), node_cert.as_bytes()).is_err());

    shutdown.cancel();
    server.await??;
    Ok(())
}
