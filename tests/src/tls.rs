//! Certificates for the TLS tests, made fresh for each test: a private CA,
//! a server certificate it signed for `localhost` and 127.0.0.1 (the
//! controller's), and one for `localhost` and the fleet-wide name
//! [`AGENT_NAME`] but no address (the agents', which peers reach by
//! address), as PEM files in a directory of the test's.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The name every agent's certificate carries (`--peer-tls-name`).
pub const AGENT_NAME: &str = "flotilla-agent";

pub struct TestTls {
    /// The CA certificate clients must trust.
    pub ca: PathBuf,
    /// The server's certificate and its private key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The agents' certificate and key.
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
}

impl TestTls {
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Flotilla test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let issue = |names: &[&str]| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(
                names
                    .iter()
                    .map(|name| (*name).to_owned())
                    .collect::<Vec<_>>(),
            )?;
            params.distinguished_name.push(DnType::CommonName, names[0]);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            // Agents present theirs as clients too (mutual TLS between
            // peers), which needs clientAuth.
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = issue(&["localhost", "127.0.0.1"])?;
        let (agent_cert, agent_key) = issue(&["localhost", AGENT_NAME])?;

        let tls = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            agent_cert: dir.join("agent.pem"),
            agent_key: dir.join("agent.key"),
        };
        std::fs::write(&tls.ca, ca_cert.pem())?;
        std::fs::write(&tls.cert, server_cert)?;
        std::fs::write(&tls.key, server_key)?;
        std::fs::write(&tls.agent_cert, agent_cert)?;
        std::fs::write(&tls.agent_key, agent_key)?;
        Ok(tls)
    }

    /// The CA as a root for reqwest clients.
    pub fn ca_certificate(&self) -> anyhow::Result<reqwest::Certificate> {
        Ok(reqwest::Certificate::from_pem(&std::fs::read(&self.ca)?)?)
    }
}
