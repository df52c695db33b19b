//! TLS for Flotilla's servers (DESIGN.md §8): the controller's REST and gRPC
//! APIs, and the agent's inference APIs (HTTP and gRPC). One certificate
//! chain and private key, in PEM. Both kinds of server use rustls with the
//! aws-lc-rs provider, the one reqwest brings, and the same certificate
//! resolver.
//!
//! The files are read and checked at start, then watched: certificates are
//! short-lived where a tool such as cert-manager renews them in place (a
//! Kubernetes Secret volume swaps its files atomically), and a server must
//! pick up the new pair without a restart. [`ServerTls::watch`] re-reads the
//! pair when either file changes; new handshakes use it, open connections
//! keep theirs. A pair that does not load (half written, or a key that does
//! not fit) is logged and the previous one kept.
//!
//! gRPC is served over connections this crate accepts and handshakes
//! ([`ServerTls::grpc_incoming`]), rather than through tonic's own TLS
//! configuration, which reads its identity once.
//!
//! Its own crate because the controller and the agent serve the same way and
//! neither depends on the other.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How often [`ServerTls::watch`] looks at the files by default.
pub const WATCH_EVERY: Duration = Duration::from_secs(30);

/// How long a client may take over its TLS handshake on the gRPC port.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive on accepted gRPC connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

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
    #[error("cannot verify client certificates with the given CA: {0}")]
    ClientCa(String),
}

/// What the HTTP server puts in every request's extensions on a TLS
/// connection: with [`ServerTls::verifying_clients`], `peer_certificates`
/// is the client's chain, already verified against the client CA (empty
/// when the client presented none).
pub use axum_server::tls::TlsInfo;

/// The certificate chain and key a server presents, from two files, and
/// what they looked like when last read.
#[derive(Debug)]
struct CertificateFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification time and length of both files when `current` was read.
    loaded_from: Mutex<Option<[(SystemTime, u64); 2]>>,
}

impl CertificateFiles {
    fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamp = stamps(cert, key);
        let certified = read_pair(cert, key, &provider)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(certified)),
            loaded_from: Mutex::new(stamp),
        })
    }

    /// Re-reads the pair if either file changed since it was read; `true`
    /// when a new pair is now served. On an error the old pair stays.
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = stamps(&self.cert, &self.key);
        let mut loaded_from = self
            .loaded_from
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stamp.is_some() && stamp == *loaded_from {
            return Ok(false);
        }
        let certified = read_pair(&self.cert, &self.key, &self.provider)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
        *loaded_from = stamp;
        Ok(true)
    }
}

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Modification time and length of both files (`None` when either cannot be
/// read: then the next look reloads).
fn stamps(cert: &Path, key: &Path) -> Option<[(SystemTime, u64); 2]> {
    let stamp = |path: &Path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    };
    Some([stamp(cert)?, stamp(key)?])
}

/// Reads and checks a pair: a chain of at least one certificate, a key of a
/// supported kind that belongs to it.
fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
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
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::NoKey {
        path: key.to_path_buf(),
        reason: error.to_string(),
    })?;
    CertifiedKey::from_der(chain, private_key, provider).map_err(|error| TlsError::KeyMismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: error.to_string(),
    })
}

/// The DNS name suffix of node certificates: the controller's node CA
/// issues each node one certificate whose only name is
/// `<node>.node.flotilla.internal` ([`node_dns_name`]), and a peer is
/// verified against the name of the node the directory lists, whatever
/// address it is reached at. A DNS name rather than a URI (SPIFFE) name
/// because rustls checks DNS names itself; `.internal` is reserved for
/// private use and never resolves publicly.
pub const NODE_NAME_SUFFIX: &str = "node.flotilla.internal";

/// The one name a node's certificate carries: `<node>.node.flotilla.internal`.
/// Node names (a-z, 0-9, '.', '_', '-', starting with a letter or digit)
/// map to distinct DNS names; one with a label longer than 63 characters
/// is no DNS name, and rustls refuses it where it is parsed.
pub fn node_dns_name(node: &str) -> String {
    format!("{node}.{NODE_NAME_SUFFIX}")
}

/// A certificate and key held in memory and replaced whole (a node
/// certificate, renewed by the controller): resolves for servers and for
/// clients alike, so that new handshakes use the latest one. Empty until
/// the first [`SwappableCertificate::replace`].
#[derive(Debug, Default)]
pub struct SwappableCertificate {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl SwappableCertificate {
    /// Checks a chain (PEM, leaf first) and its key (PEM) and serves them
    /// from now on; on an error the previous pair stays.
    pub fn replace(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let certified = certified_from_pem(chain_pem, key_pem)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(certified));
        Ok(())
    }

    /// The pair served now (`None` before the first one).
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for SwappableCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for SwappableCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// A chain and key from PEM held in memory, checked as [`read_pair`] checks
/// files.
fn certified_from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let memory = PathBuf::from("(node certificate in memory)");
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadCertificate {
            path: memory.clone(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: memory });
    }
    let private_key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::NoKey {
        path: memory.clone(),
        reason: error.to_string(),
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, private_key, &provider).map_err(|error| TlsError::KeyMismatch {
        cert: memory.clone(),
        key: memory,
        reason: error.to_string(),
    })
}

/// A server's certificate, ready for both kinds of server and kept current
/// by [`ServerTls::watch`] (files) or by whoever replaces a
/// [`SwappableCertificate`]. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    /// `None` when the certificate lives in memory ([`ServerTls::from_memory`]).
    files: Option<Arc<CertificateFiles>>,
    /// HTTP/2 and HTTP/1.1, for REST and the OpenAI/Ollama APIs.
    rest: Arc<rustls::ServerConfig>,
    /// HTTP/2 only, as gRPC requires.
    grpc: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls")
            .field("cert", &self.files.as_ref().map(|files| &files.cert))
            .field("key", &self.files.as_ref().map(|files| &files.key))
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks both files (see [`TlsError`] for what is refused).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::load_verifying_clients(cert, key, None)
    }

    /// [`ServerTls::load`], and when `client_ca` (PEM) is given, asks
    /// clients for a certificate and verifies one presented against that
    /// CA (mutual TLS). A client without a certificate is still served
    /// (API clients authenticate with keys); one with a certificate that
    /// does not verify fails the handshake. Handlers learn who presented
    /// one from [`TlsInfo`] (HTTP) or tonic's `peer_certs` (gRPC).
    pub fn load_verifying_clients(
        cert: &Path,
        key: &Path,
        client_ca: Option<&[u8]>,
    ) -> Result<Self, TlsError> {
        install_crypto_provider();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let files = Arc::new(CertificateFiles::load(cert, key, provider.clone())?);
        Self::with_resolver(files.clone(), Some(files), client_ca)
    }

    /// Serves the certificate `certificate` holds at each handshake (a node
    /// certificate, renewed in memory), verifying clients' certificates
    /// against `client_ca` as [`ServerTls::load_verifying_clients`] does.
    /// A handshake before the first certificate is in fails.
    pub fn from_memory(
        certificate: Arc<SwappableCertificate>,
        client_ca: Option<&[u8]>,
    ) -> Result<Self, TlsError> {
        install_crypto_provider();
        Self::with_resolver(certificate, None, client_ca)
    }

    fn with_resolver(
        resolver: Arc<dyn ResolvesServerCert>,
        files: Option<Arc<CertificateFiles>>,
        client_ca: Option<&[u8]>,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client_verifier = match client_ca {
            None => None,
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in CertificateDer::pem_slice_iter(pem) {
                    let certificate =
                        certificate.map_err(|error| TlsError::ClientCa(error.to_string()))?;
                    roots
                        .add(certificate)
                        .map_err(|error| TlsError::ClientCa(error.to_string()))?;
                }
                Some(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    )
                    .allow_unauthenticated()
                    .build()
                    .map_err(|error| TlsError::ClientCa(error.to_string()))?,
                )
            }
        };
        let config = |alpn: &[&[u8]]| -> Result<Arc<rustls::ServerConfig>, TlsError> {
            let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|error| TlsError::NoProtocol(error.to_string()))?;
            let builder = match &client_verifier {
                Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_cert_resolver(resolver.clone());
            config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
            Ok(Arc::new(config))
        };
        Ok(Self {
            rest: config(&[b"h2", b"http/1.1"])?,
            grpc: config(&[b"h2"])?,
            files,
        })
    }

    /// Re-reads the files if either changed since they were last read;
    /// `true` when a new pair is now served. On an error the old pair stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        match &self.files {
            Some(files) => files.reload_if_changed(),
            None => Ok(false),
        }
    }

    /// Looks at the files every `every` until `shutdown`, reloading them
    /// when they change (see the module docs).
    pub async fn watch(self, every: Duration, shutdown: CancellationToken) {
        let Some(watched) = self.files.clone() else {
            // In memory: replaced by its owner, nothing to watch.
            return;
        };
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let files = watched.clone();
            let reloaded = tokio::task::spawn_blocking(move || files.reload_if_changed()).await;
            match reloaded {
                Ok(Ok(true)) => tracing::info!(cert = %watched.cert.display(),
                    "TLS certificate changed on disk; new connections use the new one"),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => tracing::warn!(%error,
                    "cannot load the changed TLS certificate; still serving the previous one"),
                Err(error) => tracing::warn!(%error, "TLS certificate check failed"),
            }
        }
    }

    /// The connections of `listener`, TLS handshakes done (each in a task
    /// of its own, so a slow client holds up nobody), for tonic's
    /// `serve_with_incoming*`. Failed handshakes are logged and dropped.
    /// Accepting stops when the stream is dropped.
    fn grpc_incoming(
        &self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<
        std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>,
    > {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.grpc.clone());
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = sender.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, say: back off briefly
                        // rather than spin.
                        tracing::warn!(%error, "cannot accept a gRPC connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // As `serve_grpc` sets them for plain connections.
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream)
                    .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send(Ok(tls)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed on the gRPC port");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out on the gRPC port")
                        }
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(receiver)
    }
}

/// Serves the gRPC `router` on `listener` until `shutdown`, over TLS when
/// `tls` is given. Connections get TCP_NODELAY (else a small message such
/// as a heartbeat ack waits for the peer's delayed ACK behind Nagle's
/// algorithm) and TCP keepalive.
pub async fn serve_grpc<L, ResBody>(
    router: tonic::transport::server::Router<L>,
    listener: TcpListener,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error>
where
    L: tower_layer::Layer<tonic::service::Routes>,
    L::Service: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<ResBody>,
        > + Clone
        + Send
        + 'static,
    <L::Service as tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Future:
        Send,
    <L::Service as tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>>::Error:
        Into<tonic::codegen::StdError> + Send,
    ResBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(
                    tls.grpc_incoming(listener),
                    shutdown.cancelled_owned(),
                )
                .await
        }
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(TCP_KEEPALIVE));
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, over TLS when `tls` is
/// given. After `shutdown`, open requests get `grace` to finish (`None`:
/// as long as they take; the caller bounds the wait).
pub async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<ServerTls>,
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

/// Whether the certificate chain in `cert_pem` would pass as a client
/// certificate with a server that verifies clients against `ca_pem` (as
/// [`ServerTls::load_verifying_clients`] does): signed by the CA, valid
/// now, and allowed for client authentication (extended key usage). An
/// agent checks its own certificate so that it does not present one its
/// peers would refuse, failing every handshake.
pub fn verifies_as_client(ca_pem: &[u8], cert_pem: &[u8]) -> Result<(), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem) {
        let certificate = certificate.map_err(|error| TlsError::ClientCa(error.to_string()))?;
        roots
            .add(certificate)
            .map_err(|error| TlsError::ClientCa(error.to_string()))?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|error| TlsError::ClientCa(error.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::ClientCa(error.to_string()))?;
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err(TlsError::ClientCa("no certificate".to_owned()));
    };
    verifier
        .verify_client_cert(
            end_entity,
            intermediates,
            rustls::pki_types::UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|error| TlsError::ClientCa(error.to_string()))
}

/// Makes aws-lc-rs the process's rustls provider. tonic's server builds its
/// TLS configuration with the process default, and with both of rustls's
/// providers compiled in (ring comes with other dependencies) there is
/// none until one is installed. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
