//! The node credential while the agent runs: the bearer token the sync
//! stream and blob downloads present, its expiry, and the refresh secret
//! that buys a new one after the agent was offline too long.
//!
//! In memory: the token (a [`SharedToken`], so the artifact cache sees a
//! replacement at once) and the expiry. Persisted: every replacement is
//! written back to `DATA_DIR/node.toml` (atomically, mode 0600, through
//! [`crate::enrol::save`]) when a data directory is set; simulated nodes have
//! none. Neither the credential nor the refresh secret is ever logged.
//!
//! The node certificate ([`NodeCertificates`]) renews with the credential:
//! `RenewCredential` carries the node's signing request and the answer's
//! certificate is installed, as is one pushed on the stream.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_proto::fleet::v1 as pb;
use flotilla_proto::fleet::v1::fleet_client::FleetClient;
use tonic::transport::Channel;

use crate::cache::SharedToken;
use crate::enrol::{self, EnrolError, NodeIdentity};
use crate::node_cert::{IssuedCertificate, NodeCertificates};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "node {node} has no refresh secret (enrolled by an older agent) and its credential \
         expired; re-enrol it with --replace and a bootstrap token"
    )]
    NoRefreshSecret { node: String },
    #[error(
        "the controller refused to renew the credential of node {node} ({code:?}: {message}); \
         re-enrol it with --replace and a bootstrap token"
    )]
    Refused {
        node: String,
        code: tonic::Code,
        message: String,
    },
    #[error("cannot renew the credential of node {node}: {message}")]
    Unreachable { node: String, message: String },
    #[error(transparent)]
    Persist(#[from] EnrolError),
}

impl CredentialError {
    /// Whether only an operator can fix this (retrying soon is pointless).
    pub fn needs_reenrolment(&self) -> bool {
        matches!(
            self,
            CredentialError::NoRefreshSecret { .. } | CredentialError::Refused { .. }
        )
    }
}

pub struct Credentials {
    node_name: String,
    token: SharedToken,
    /// Rewritten to `node.toml` on every change when `data_dir` is set.
    identity: Mutex<NodeIdentity>,
    data_dir: Option<PathBuf>,
    /// This node's key and certificate (`None`: it asks for none, as
    /// simulated nodes do).
    certificates: Option<Arc<NodeCertificates>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("node_name", &self.node_name)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `data_dir`: where `node.toml` is rewritten on renewal; `None` keeps
    /// the credential in memory only.
    pub fn new(identity: NodeIdentity, data_dir: Option<PathBuf>) -> Self {
        Self {
            node_name: identity.name.clone(),
            token: SharedToken::new(identity.credential.clone()),
            identity: Mutex::new(identity),
            data_dir,
            certificates: None,
        }
    }

    /// These credentials, renewing `certificates` with the credential.
    pub fn with_certificates(self, certificates: Arc<NodeCertificates>) -> Self {
        Self {
            certificates: Some(certificates),
            ..self
        }
    }

    /// The node's certificates, when it has a key.
    pub fn certificates(&self) -> Option<&Arc<NodeCertificates>> {
        self.certificates.as_ref()
    }

    /// The signing request to send with a renewal or a hello (empty: none).
    pub fn csr_pem(&self) -> String {
        self.certificates
            .as_ref()
            .map(|certificates| certificates.csr_pem().to_owned())
            .unwrap_or_default()
    }

    /// Takes a certificate from the controller (a renewal's or the
    /// stream's). One that does not check out is logged and dropped: the
    /// previous one stays, and the next renewal brings another.
    pub async fn install_certificate(&self, issued: IssuedCertificate) {
        let Some(certificates) = self.certificates.clone() else {
            return;
        };
        let installed = tokio::task::spawn_blocking(move || certificates.install(&issued)).await;
        match installed {
            Ok(Ok(())) => tracing::debug!(node = %self.node_name, "node certificate renewed"),
            Ok(Err(error)) => {
                tracing::warn!(node = %self.node_name, %error, "keeping the previous node certificate")
            }
            Err(error) => {
                tracing::warn!(node = %self.node_name, %error, "cannot install the node certificate")
            }
        }
    }

    /// Whether the node certificate (when the node has a key) expires
    /// within `margin`, or there is none yet.
    pub fn certificate_expires_within(&self, margin: Duration) -> bool {
        self.certificates
            .as_ref()
            .is_some_and(|certificates| certificates.expires_within(margin))
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The token slot shared with the blob source.
    pub fn token(&self) -> SharedToken {
        self.token.clone()
    }

    fn identity(&self) -> std::sync::MutexGuard<'_, NodeIdentity> {
        self.identity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the credential expires within `margin` from now (or already has).
    pub fn expires_within(&self, margin: Duration) -> bool {
        let expires_at = self.identity().credential_expires_at_unix;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let deadline = now.saturating_add(margin.as_secs());
        i64::try_from(deadline).map_or(true, |deadline| expires_at <= deadline)
    }

    /// Takes a fresh credential (from the stream or a renewal): in memory at
    /// once, then in `node.toml`.
    pub async fn replace(
        &self,
        credential: String,
        expires_at_unix: i64,
        status: Option<pb::NodeStatus>,
    ) -> Result<(), EnrolError> {
        self.token.replace(credential.clone());
        let snapshot = {
            let mut identity = self.identity();
            identity.credential = credential;
            identity.credential_expires_at_unix = expires_at_unix;
            if let Some(status) = status {
                identity.status = enrol::node_status_name(status).to_owned();
            }
            identity.clone()
        };
        let Some(data_dir) = self.data_dir.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || enrol::save(&data_dir, &snapshot))
            .await
            .map_err(|error| EnrolError::Write {
                path: "node.toml".to_owned(),
                source: std::io::Error::other(error),
            })?
    }

    /// Exchanges the refresh secret for a fresh credential with
    /// `Fleet/RenewCredential`, and keeps it.
    pub async fn renew(&self, channel: Channel) -> Result<(), CredentialError> {
        let refresh_secret = self.identity().refresh_secret.clone();
        if refresh_secret.is_empty() {
            return Err(CredentialError::NoRefreshSecret {
                node: self.node_name.clone(),
            });
        }
        let mut response = FleetClient::new(channel)
            .renew_credential(pb::RenewCredentialRequest {
                node_name: self.node_name.clone(),
                refresh_secret,
                certificate_signing_request: self.csr_pem(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::NotFound => CredentialError::Refused {
                    node: self.node_name.clone(),
                    code: status.code(),
                    message: status.message().to_owned(),
                },
                _ => CredentialError::Unreachable {
                    node: self.node_name.clone(),
                    message: format!("{:?}: {}", status.code(), status.message()),
                },
            })?
            .into_inner();
        let status = response.status();
        if let Some(certificate) = response.certificate.take() {
            self.install_certificate(certificate.into()).await;
        }
        self.replace(
            response.credential,
            response.credential_expires_at_unix,
            Some(status),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(expires_at_unix: i64) -> NodeIdentity {
        NodeIdentity {
            name: "edge-1".to_owned(),
            controller: "http://127.0.0.1:1".to_owned(),
            status: "active".to_owned(),
            credential: "old.jwt".to_owned(),
            credential_expires_at_unix: expires_at_unix,
            refresh_secret: "refresh".to_owned(),
        }
    }

    fn now_unix() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() as i64)
    }

    #[test]
    fn expiry_is_judged_with_a_margin() {
        let credentials = Credentials::new(identity(now_unix() + 600), None);
        assert!(!credentials.expires_within(Duration::from_secs(60)));
        assert!(credentials.expires_within(Duration::from_secs(3600)));
        assert!(Credentials::new(identity(0), None).expires_within(Duration::ZERO));
    }

    #[tokio::test]
    async fn a_replacement_reaches_the_shared_token_and_node_toml() {
        let dir = tempfile::tempdir().expect("tempdir");
        enrol::save(dir.path(), &identity(1)).expect("save");
        let credentials = Credentials::new(identity(1), Some(dir.path().to_owned()));
        let token = credentials.token();
        credentials
            .replace("new.jwt".to_owned(), 99, Some(pb::NodeStatus::Cordoned))
            .await
            .expect("replace");
        assert_eq!(token.current(), "new.jwt");
        let saved = enrol::load(dir.path()).expect("load").expect("present");
        assert_eq!(saved.credential, "new.jwt");
        assert_eq!(saved.credential_expires_at_unix, 99);
        assert_eq!(saved.status, "cordoned");
        assert_eq!(saved.refresh_secret, "refresh");
        assert!(!format!("{credentials:?}").contains("jwt"));
    }
}
