//! TLS for Flotilla's servers (DESIGN.md §8): the controller's REST and gRPC
//! APIs, and the agent's inference APIs (HTTP and gRPC). One certificate
//! chain and private key, in PEM, read and checked once at start. Both kinds
//! of server use rustls with the aws-lc-rs provider, the one reqwest brings.
//!
//! Its own crate because the controller and the agent serve the same way and
//! neither depends on the other.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a certificate or key cannot be served. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a PEM certificate chain: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}", path.display())]
    NoKey { path: PathBuf, reason: String },
    #[error("the key {} does not fit the certificate {}: {reason}", key.display(), cert.display())]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("no TLS protocol version available: {0}")]
    NoProtocol(String),
}

/// A loaded certificate chain and its key, ready for both kinds of server.
/// Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Arc<Vec<u8>>,
    key_pem: Arc<Vec<u8>>,
    rest: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks both files: a chain of at least one certificate, a
    /// key of a supported kind that belongs to it.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        install_crypto_provider();
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("key", key)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::BadCertificate {
                path: cert.to_path_buf(),
                reason: error.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert.to_path_buf(),
            });
        }
        let private_key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::NoKey {
                path: key.to_path_buf(),
                reason: error.to_string(),
            })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut rest = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::NoProtocol(error.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|error| TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                reason: error.to_string(),
            })?;
        rest.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem: Arc::new(cert_pem),
            key_pem: Arc::new(key_pem),
            rest: Arc::new(rest),
        })
    }

    /// For a tonic server's `tls_config`.
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            self.cert_pem.as_slice(),
            self.key_pem.as_slice(),
        ))
    }
}

/// Serves `router` on `listener` until `shutdown`, over TLS when `tls` is
/// given. After `shutdown`, open requests get `grace` to finish (`None`:
/// as long as they take; the caller bounds the wait).
pub async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<&ServerTls>,
    shutdown: CancellationToken,
    grace: Option<Duration>,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        let serving = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future();
        let Some(grace) = grace else {
            return serving.await;
        };
        return tokio::select! {
            served = serving => served,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            } => Ok(()),
        };
    };
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(grace);
    });
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.rest.clone());
    axum_server::from_tcp_rustls(listener.into_std()?, config)?
        .handle(handle)
        .serve(router.into_make_service())
        .await
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

    fn load(cert: &[u8], key: &[u8]) -> Result<ServerTls, TlsError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert).expect("write certificate");
        std::fs::write(&key_path, key).expect("write key");
        ServerTls::load(&cert_path, &key_path)
    }

    #[test]
    fn unusable_files_are_refused_naming_the_file() {
        let missing = ServerTls::load(
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
        );
        let message = missing.expect_err("refused").to_string();
        assert!(message.contains("/nonexistent/cert.pem"), "{message}");

        let empty = load(b"not a certificate", b"not a key");
        let message = empty.expect_err("refused").to_string();
        assert!(
            message.contains("cert.pem holds no PEM certificate"),
            "{message}"
        );

        let certificate = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let keyless = load(certificate, b"not a key");
        let message = keyless.expect_err("refused").to_string();
        assert!(
            message.contains("key.pem holds no PEM private key"),
            "{message}"
        );
    }
}
