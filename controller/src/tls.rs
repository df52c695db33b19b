//! TLS for the controller's REST and gRPC servers (DESIGN.md §8): one
//! certificate chain and private key, in PEM, read once at start. Both
//! servers use rustls with the aws-lc-rs provider (the one reqwest brings).

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// The loaded certificate chain and key.
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    rest: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// Reads and checks both files: a chain of at least one certificate, a
    /// key of a supported kind that belongs to it. Every failure names the
    /// file.
    pub fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        install_crypto_provider();
        let cert_pem = std::fs::read(&files.cert)
            .with_context(|| format!("cannot read TLS certificate {}", files.cert.display()))?;
        let key_pem = std::fs::read(&files.key)
            .with_context(|| format!("cannot read TLS key {}", files.key.display()))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not a PEM certificate chain", files.cert.display()))?;
        anyhow::ensure!(
            !chain.is_empty(),
            "{} holds no PEM certificate",
            files.cert.display()
        );
        let key = PrivateKeyDer::from_pem_slice(&key_pem).with_context(|| {
            format!(
                "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                files.key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut rest = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("no TLS protocol version available")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .with_context(|| {
                format!(
                    "the key {} does not fit the certificate {}",
                    files.key.display(),
                    files.cert.display()
                )
            })?;
        rest.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            rest: Arc::new(rest),
        })
    }

    /// For the REST server.
    pub fn rest_config(&self) -> axum_server::tls_rustls::RustlsConfig {
        axum_server::tls_rustls::RustlsConfig::from_config(self.rest.clone())
    }

    /// For the gRPC server.
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }
}

/// Makes aws-lc-rs the process's rustls provider. tonic's server builds its
/// TLS configuration with the process default, and with both of rustls's
/// providers compiled in (ring comes with other dependencies) there is
/// none until one is installed. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(cert: &[u8], key: &[u8]) -> anyhow::Result<ServerTls> {
        let dir = tempfile::tempdir()?;
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&files.cert, cert)?;
        std::fs::write(&files.key, key)?;
        ServerTls::load(&files)
    }

    #[test]
    fn unusable_files_are_refused_naming_the_file() {
        let missing = ServerTls::load(&TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        });
        let message = format!("{:#}", missing.err().expect("refused"));
        assert!(message.contains("/nonexistent/cert.pem"), "{message}");

        let empty = load(b"not a certificate", b"not a key");
        let message = format!("{:#}", empty.err().expect("refused"));
        assert!(
            message.contains("cert.pem holds no PEM certificate"),
            "{message}"
        );

        let certificate = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let keyless = load(certificate, b"not a key");
        let message = format!("{:#}", keyless.err().expect("refused"));
        assert!(
            message.contains("key.pem holds no PEM private key"),
            "{message}"
        );
    }
}
