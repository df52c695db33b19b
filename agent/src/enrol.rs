//! Enrolment: turning a bootstrap token into a node identity, once, and
//! remembering it.
//!
//! What is persisted: `DATA_DIR/node.toml` (mode 0600, written to a
//! temporary file and renamed into place so a crash never leaves half a
//! file) holding the node's name, the controller's gRPC URL, the node
//! credential (a short-lived JWT) with its expiry, and the long-lived refresh
//! secret. An agent restarted on the same data directory loads it and does
//! not enrol again; the sync stream renews the credential, and
//! [`crate::credentials`] rewrites this file whenever it does. The bootstrap
//! token is never written down.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use flotilla_proto::fleet::v1 as pb;
use flotilla_proto::fleet::v1::fleet_client::FleetClient;
use serde::{Deserialize, Serialize};

use crate::health::Inventory;
use crate::tls::CaTrust;

/// The identity file's name inside the data directory.
pub const IDENTITY_FILE: &str = "node.toml";

/// Who this agent is in the fleet, as the controller enrolled it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub name: String,
    /// The controller's gRPC URL, e.g. `http://127.0.0.1:50051`.
    pub controller: String,
    /// `pending` or `active` at enrolment.
    pub status: String,
    pub credential: String,
    pub credential_expires_at_unix: i64,
    /// Exchanged for a fresh credential with `Fleet/RenewCredential` when the
    /// credential expired while the agent was offline. Empty in identity
    /// files written before the controller issued refresh secrets.
    #[serde(default)]
    pub refresh_secret: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credential and the refresh secret stay out of logs.
        f.debug_struct("NodeIdentity")
            .field("name", &self.name)
            .field("controller", &self.controller)
            .field("status", &self.status)
            .field(
                "credential_expires_at_unix",
                &self.credential_expires_at_unix,
            )
            .finish_non_exhaustive()
    }
}

/// What an agent enrols with.
#[derive(Clone)]
pub struct EnrolRequest {
    pub controller: String,
    pub bootstrap_token: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub replace_existing: bool,
    /// This node's key: its signing request goes with the enrolment and
    /// the certificate that comes back is installed (`None`: asks for no
    /// certificate, as simulated nodes do).
    pub certificates: Option<std::sync::Arc<crate::node_cert::NodeCertificates>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("invalid controller url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot reach the controller at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The controller answered and refused: a bad token, a taken name, bad
    /// labels. Permanent: retrying with the same input will not help.
    #[error("the controller at {url} refused enrolment of {name} ({code:?}): {message}")]
    Refused {
        url: String,
        name: String,
        code: tonic::Code,
        message: String,
    },
    #[error("cannot read node identity {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write node identity {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid label {0:?}: expected key=value")]
    Label(String),
    #[error(transparent)]
    Certificate(#[from] crate::node_cert::NodeCertError),
}

/// `k=v,k2=v2` into a map; the controller validates the alphabet.
pub fn parse_labels(text: &str) -> Result<HashMap<String, String>, EnrolError> {
    let mut labels = HashMap::new();
    for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| EnrolError::Label(pair.to_owned()))?;
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

pub fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

/// The identity saved in `data_dir`, or `None` if this agent never enrolled.
pub fn load(data_dir: &Path) -> Result<Option<NodeIdentity>, EnrolError> {
    let path = identity_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(EnrolError::Read {
                path: path.display().to_string(),
                reason: error.to_string(),
            });
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|error| EnrolError::Read {
            path: path.display().to_string(),
            reason: error.to_string(),
        })
}

/// Writes the identity atomically with mode 0600: a temporary file in the
/// same directory, flushed to disk, then renamed over the old one.
pub fn save(data_dir: &Path, identity: &NodeIdentity) -> Result<(), EnrolError> {
    let path = identity_path(data_dir);
    let write_error = |source| EnrolError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(write_error)?;
    let text =
        toml::to_string(identity).map_err(|error| write_error(std::io::Error::other(error)))?;
    let temporary = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut file = create_private(&temporary).map_err(write_error)?;
    file.write_all(text.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(write_error)?;
    Ok(())
}

/// Creates `path` afresh, readable by its owner only (0600), for a file
/// that is then renamed into place: the identity here, the agent's state
/// (with its system prompts) in `reconcile::persist`. A leftover file is
/// removed first, since opening an existing file keeps its mode.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Calls `Fleet/Enroll` and returns the identity the controller granted.
/// Does not save it; see [`save`].
pub async fn enrol(
    request: EnrolRequest,
    trust: &CaTrust,
    inventory: &Inventory,
) -> Result<NodeIdentity, EnrolError> {
    let channel = connect(&request.controller, trust).await?;
    enrol_over(channel, request, inventory).await
}

/// Opens a gRPC channel to the controller (for enrolment, and for callers
/// such as the simulator that enrol many nodes over one connection), over
/// TLS for an `https://` URL.
pub async fn connect(url: &str, trust: &CaTrust) -> Result<tonic::transport::Channel, EnrolError> {
    let endpoint = trust
        .endpoint(url)
        .map_err(|error| EnrolError::InvalidUrl {
            url: url.to_owned(),
            reason: error.to_string(),
        })?;
    endpoint
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|error| EnrolError::Unreachable {
            url: url.to_owned(),
            reason: error_chain(&error),
        })
}

/// [`enrol`] over a channel the caller already holds; `request.controller`
/// is only recorded in the identity.
#[tracing::instrument(name = "enrol", skip_all, fields(otel.kind = "client", node = %request.name))]
pub async fn enrol_over(
    channel: tonic::transport::Channel,
    request: EnrolRequest,
    inventory: &Inventory,
) -> Result<NodeIdentity, EnrolError> {
    let url = request.controller.clone();
    let name = request.name.clone();
    let certificates = request.certificates.clone();
    let response =
        FleetClient::with_interceptor(channel, crate::telemetry::propagate::grpc_interceptor)
            .enroll(pb::EnrollRequest {
                bootstrap_token: request.bootstrap_token,
                node_name: request.name,
                labels: request.labels,
                inventory: Some(inventory_to_wire(inventory)),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                replace_existing: request.replace_existing,
                certificate_signing_request: certificates
                    .as_ref()
                    .map(|certificates| certificates.csr_pem().to_owned())
                    .unwrap_or_default(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown => EnrolError::Unreachable {
                    url: url.clone(),
                    reason: status.message().to_owned(),
                },
                code => EnrolError::Refused {
                    url: url.clone(),
                    name: name.clone(),
                    code,
                    message: status.message().to_owned(),
                },
            })?
            .into_inner();
    let status = node_status_name(response.status()).to_owned();
    // A certificate that does not check out stops the enrolment here,
    // with the reason, rather than leaving a node no peer accepts.
    if let (Some(certificates), Some(certificate)) = (&certificates, response.certificate) {
        certificates.install(&certificate.into())?;
    }
    Ok(NodeIdentity {
        name: response.node_name,
        controller: url,
        status,
        credential: response.credential,
        credential_expires_at_unix: response.credential_expires_at_unix,
        refresh_secret: response.refresh_secret,
    })
}

/// The lowercase name kept in `node.toml` for a wire node status.
pub fn node_status_name(status: pb::NodeStatus) -> &'static str {
    match status {
        pb::NodeStatus::Pending => "pending",
        pb::NodeStatus::Active => "active",
        pb::NodeStatus::Cordoned => "cordoned",
        pb::NodeStatus::Unspecified => "unspecified",
    }
}

/// Longest inventory text the controller accepts (`MAX_INVENTORY_TEXT_LEN`
/// there); longer text from an odd driver is cut, not refused.
const MAX_INVENTORY_TEXT: usize = 256;
/// Most GPUs the controller accepts in an inventory.
const MAX_INVENTORY_GPUS: usize = 64;

/// `text` cut to what the controller accepts, without control characters.
fn bounded(text: &str) -> String {
    let mut kept = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if kept.len() + c.len_utf8() > MAX_INVENTORY_TEXT {
            break;
        }
        kept.push(c);
    }
    kept
}

/// The health probe's inventory in the wire shape the controller expects,
/// within its bounds.
pub fn inventory_to_wire(inventory: &Inventory) -> pb::Inventory {
    pb::Inventory {
        cpu_model: bounded(&inventory.cpu_model),
        cpu_cores: u32::try_from(inventory.cpu_logical_cores).unwrap_or(u32::MAX),
        memory_total_bytes: inventory.memory_total_bytes,
        disk_total_bytes: inventory
            .data_disk
            .as_ref()
            .map_or(0, |disk| disk.total_bytes),
        os: bounded(inventory.os.as_deref().unwrap_or_default()),
        gpus: inventory
            .gpus
            .iter()
            .take(MAX_INVENTORY_GPUS)
            .map(|gpu| pb::Gpu {
                index: gpu.index,
                name: bounded(&gpu.name),
                memory_total_bytes: gpu.memory_total_bytes,
                driver_version: bounded(gpu.driver_version.as_deref().unwrap_or_default()),
            })
            .collect(),
        adapters: inventory
            .adapters
            .iter()
            .take(MAX_INVENTORY_GPUS)
            .map(|adapter| pb::ComputeAdapter {
                index: u32::try_from(adapter.index).unwrap_or(u32::MAX),
                name: bounded(&adapter.name),
                backend: bounded(&adapter.backend),
                kind: bounded(&adapter.kind),
                max_buffer_bytes: adapter.max_buffer_bytes,
            })
            .collect(),
    }
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_privately() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("load").is_none());
        let identity = NodeIdentity {
            name: "edge-1".to_owned(),
            controller: "http://127.0.0.1:50051".to_owned(),
            status: "active".to_owned(),
            credential: "secret.jwt.value".to_owned(),
            credential_expires_at_unix: 1_700_000_000,
            refresh_secret: "refresh-me-not".to_owned(),
        };
        save(dir.path(), &identity).expect("save");
        assert_eq!(load(dir.path()).expect("load"), Some(identity.clone()));
        let debug = format!("{identity:?}");
        assert!(!debug.contains("secret.jwt"));
        assert!(!debug.contains("refresh-me-not"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(identity_path(dir.path()))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(identity_path(dir.path()), "not = [toml").expect("write");
        assert!(matches!(load(dir.path()), Err(EnrolError::Read { .. })));
    }

    #[test]
    fn identity_files_from_before_refresh_secrets_still_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            identity_path(dir.path()),
            "name = \"edge-1\"\ncontroller = \"http://127.0.0.1:50051\"\nstatus = \"active\"\n\
             credential = \"jwt\"\ncredential_expires_at_unix = 1\n",
        )
        .expect("write");
        let identity = load(dir.path()).expect("load").expect("present");
        assert_eq!(identity.refresh_secret, "");
        assert_eq!(identity.name, "edge-1");
    }

    #[test]
    fn labels_parse() {
        let labels = parse_labels("site=berlin, gpu=l4").expect("valid");
        assert_eq!(labels.get("site").map(String::as_str), Some("berlin"));
        assert_eq!(labels.len(), 2);
        assert!(parse_labels("").expect("empty").is_empty());
        assert!(parse_labels("site").is_err());
    }
}
