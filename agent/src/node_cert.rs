//! This node's workload identity (issue 16): an ECDSA P-256 key made once,
//! and the short-lived X.509 certificate the controller's node CA issues
//! for it at enrolment and with every credential renewal. The certificate
//! names this node alone (`flotilla_tls::node_dns_name`); peers verify it
//! when this agent forwards to them (client certificate) and, with
//! `--tls-node-cert`, when they forward to it (server certificate).
//!
//! Persisted in the data directory, mode 0600, each written to a temporary
//! file and renamed into place: `node.key` (the private key, never sent
//! anywhere; the controller only sees signing requests) and
//! `node-cert.toml` (the latest certificate, the node CA and the expiry).
//! In memory: the same, with the certificate ready for rustls
//! ([`SwappableCertificate`]), so that a renewal reaches new handshakes at
//! once. Simulated nodes have none.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_proto::fleet::v1 as pb;
use flotilla_tls::SwappableCertificate;
use serde::{Deserialize, Serialize};

/// The private key's file in the data directory.
pub const KEY_FILE: &str = "node.key";
/// The latest certificate's file in the data directory.
pub const CERTIFICATE_FILE: &str = "node-cert.toml";

#[derive(Debug, thiserror::Error)]
pub enum NodeCertError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the node key or its signing request: {0}")]
    Key(String),
    #[error("the controller's node certificate for {node} does not check out: {reason}")]
    Refused { node: String, reason: String },
}

/// A certificate as the controller issued it (`pb::NodeCertificate`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    pub chain_pem: String,
    pub ca_pem: String,
    pub expires_at_unix: i64,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("expires_at_unix", &self.expires_at_unix)
            .finish_non_exhaustive()
    }
}

impl From<pb::NodeCertificate> for IssuedCertificate {
    fn from(certificate: pb::NodeCertificate) -> Self {
        Self {
            chain_pem: certificate.chain_pem,
            ca_pem: certificate.ca_pem,
            expires_at_unix: certificate.expires_at_unix,
        }
    }
}

/// See the module docs. Shared by the sync loop (which installs renewals),
/// the peer clients and the inference servers.
pub struct NodeCertificates {
    node: String,
    /// Where the files live; `None`: memory only (tests).
    dir: Option<PathBuf>,
    key_pem: String,
    csr_pem: String,
    served: Arc<SwappableCertificate>,
    installed: RwLock<Option<IssuedCertificate>>,
    /// Bumped by every install, so that clients built with an older
    /// certificate or CA are rebuilt.
    version: AtomicU64,
}

impl std::fmt::Debug for NodeCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("NodeCertificates")
            .field("node", &self.node)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl NodeCertificates {
    /// Loads `node.key` from `data_dir` (making it on first start) and the
    /// latest certificate, if any and if it still fits the key.
    pub fn load_or_create(data_dir: &Path, node: &str) -> Result<Self, NodeCertError> {
        let key_path = data_dir.join(KEY_FILE);
        let key_pem = match std::fs::read_to_string(&key_path) {
            Ok(pem) => pem,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let pem = rcgen::KeyPair::generate()
                    .map_err(|error| NodeCertError::Key(error.to_string()))?
                    .serialize_pem();
                write_private(data_dir, KEY_FILE, pem.as_bytes())?;
                tracing::info!(path = %key_path.display(), "made this node's key (mode 0600)");
                pem
            }
            Err(error) => {
                return Err(NodeCertError::Read {
                    path: key_path.display().to_string(),
                    reason: error.to_string(),
                });
            }
        };
        let certificates = Self::from_key(node, &key_pem, Some(data_dir.to_path_buf()))?;
        let certificate_path = data_dir.join(CERTIFICATE_FILE);
        match std::fs::read_to_string(&certificate_path) {
            Ok(text) => match toml::from_str::<IssuedCertificate>(&text) {
                Ok(saved) => {
                    if let Err(error) = certificates.install_in_memory(&saved) {
                        tracing::warn!(%error, path = %certificate_path.display(),
                            "ignoring the saved node certificate; a fresh one comes with the next credential");
                    }
                }
                Err(error) => tracing::warn!(%error, path = %certificate_path.display(),
                    "ignoring an unreadable node certificate file"),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(%error, path = %certificate_path.display(),
                "cannot read the saved node certificate"),
        }
        Ok(certificates)
    }

    /// Certificates for `node` with a key in memory only (tests).
    pub fn in_memory(node: &str) -> Result<Self, NodeCertError> {
        let key =
            rcgen::KeyPair::generate().map_err(|error| NodeCertError::Key(error.to_string()))?;
        Self::from_key(node, &key.serialize_pem(), None)
    }

    fn from_key(node: &str, key_pem: &str, dir: Option<PathBuf>) -> Result<Self, NodeCertError> {
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|error| NodeCertError::Key(error.to_string()))?;
        // The controller ignores what a request asks for; the name is
        // there for humans reading it.
        let mut params = rcgen::CertificateParams::new(vec![flotilla_tls::node_dns_name(node)])
            .map_err(|error| NodeCertError::Key(error.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node);
        let csr_pem = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|error| NodeCertError::Key(error.to_string()))?;
        Ok(Self {
            node: node.to_owned(),
            dir,
            key_pem: key_pem.to_owned(),
            csr_pem,
            served: Arc::new(SwappableCertificate::default()),
            installed: RwLock::new(None),
            version: AtomicU64::new(0),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The PKCS#10 signing request for this node's key (PEM).
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The private key (PEM), for clients that take one (tonic's).
    pub(crate) fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The certificate and key rustls serves and presents.
    pub fn served(&self) -> Arc<SwappableCertificate> {
        self.served.clone()
    }

    /// The latest certificate, when one was installed.
    pub fn current(&self) -> Option<IssuedCertificate> {
        self.installed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Counts installs; see the field.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether there is no certificate, or it expires within `margin`.
    pub fn expires_within(&self, margin: Duration) -> bool {
        let Some(current) = self.current() else {
            return true;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        i64::try_from(now.saturating_add(margin.as_secs()))
            .map_or(true, |deadline| current.expires_at_unix <= deadline)
    }

    /// Takes a certificate from the controller: it must fit this node's
    /// key, chain to the CA it came with and name this node (else peers
    /// would refuse it at every handshake); then it is served at once and
    /// saved.
    pub fn install(&self, issued: &IssuedCertificate) -> Result<(), NodeCertError> {
        self.install_in_memory(issued)?;
        if let Some(dir) = &self.dir {
            let text = toml::to_string(issued).map_err(|error| NodeCertError::Write {
                path: dir.join(CERTIFICATE_FILE).display().to_string(),
                source: std::io::Error::other(error),
            })?;
            write_private(dir, CERTIFICATE_FILE, text.as_bytes())?;
        }
        Ok(())
    }

    fn install_in_memory(&self, issued: &IssuedCertificate) -> Result<(), NodeCertError> {
        let refuse = |reason: String| NodeCertError::Refused {
            node: self.node.clone(),
            reason,
        };
        crate::tls::verify_node_certificate(
            issued.ca_pem.as_bytes(),
            issued.chain_pem.as_bytes(),
            &self.node,
        )
        .map_err(&refuse)?;
        self.served
            .replace(issued.chain_pem.as_bytes(), self.key_pem.as_bytes())
            .map_err(|error| refuse(error.to_string()))?;
        *self
            .installed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(issued.clone());
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Writes `name` in `dir` atomically with mode 0600.
fn write_private(dir: &Path, name: &str, contents: &[u8]) -> Result<(), NodeCertError> {
    let path = dir.join(name);
    let write_error = |source| NodeCertError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write_error)?;
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = crate::enrol::create_private(&temporary).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, and a certificate it issues for `names` and `key`, as the
    /// controller would (serverAuth and clientAuth).
    fn issue(key_pem: &str, names: &[&str], ttl_seconds: i64) -> IssuedCertificate {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut params = rcgen::CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .expect("params");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(ttl_seconds);
        params.not_after = expires;
        let key = rcgen::KeyPair::from_pem(key_pem).expect("key");
        IssuedCertificate {
            chain_pem: params.signed_by(&key, &issuer).expect("signed").pem(),
            ca_pem,
            expires_at_unix: expires.unix_timestamp(),
        }
    }

    #[test]
    fn the_key_is_made_once_and_the_certificate_kept_privately() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = NodeCertificates::load_or_create(dir.path(), "edge-1").expect("made");
        assert!(first.current().is_none());
        assert!(first.expires_within(Duration::ZERO));
        assert!(first.csr_pem().contains("BEGIN CERTIFICATE REQUEST"));
        let issued = issue(first.key_pem(), &["edge-1.node.flotilla.internal"], 3600);
        first.install(&issued).expect("installed");
        assert!(first.served().current().is_some());
        assert!(!first.expires_within(Duration::from_secs(60)));
        assert_eq!(first.version(), 1);

        let again = NodeCertificates::load_or_create(dir.path(), "edge-1").expect("loaded");
        assert_eq!(again.key_pem(), first.key_pem(), "the key is made once");
        assert_eq!(again.current(), Some(issued));
        #[cfg(unix)]
        for file in [KEY_FILE, CERTIFICATE_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(file))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        assert!(!format!("{again:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_certificate_for_another_node_or_key_is_refused() {
        let certificates = NodeCertificates::in_memory("edge-1").expect("made");
        let other_node = issue(
            certificates.key_pem(),
            &["edge-2.node.flotilla.internal"],
            3600,
        );
        assert!(matches!(
            certificates.install(&other_node),
            Err(NodeCertError::Refused { .. })
        ));
        let other_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
        let wrong_key = issue(&other_key, &["edge-1.node.flotilla.internal"], 3600);
        assert!(matches!(
            certificates.install(&wrong_key),
            Err(NodeCertError::Refused { .. })
        ));
        assert!(certificates.current().is_none());
        assert_eq!(certificates.version(), 0);
    }
}
