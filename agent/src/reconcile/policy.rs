//! The node's active escalation policy (issue 20), kept beside the active
//! system prompt: both come with the assignment in the desired state. The
//! reconciler publishes the policy of the latest desired state it applied
//! through a `tokio::sync::watch`, so the serving layer reads it without
//! locks or I/O on the request path ([`PolicyWatch::current`]), and saves
//! it in `state.json` with the rest of the desired state, so a restarted
//! agent applies the same policy before the controller answers.
//!
//! A policy takes effect as soon as its desired state is applied, not when
//! the assignment's model finishes loading: a policy that forbids egress
//! must not wait for a download. No policy (nothing assigned, or an
//! assignment without one) means the node never calls out.
//!
//! The upstream's key is not in the policy, only where to find it
//! ([`SecretRef`]). [`resolve_credential`] reads it at call time, every
//! time, so a rotated key file or variable is used at once and the key is
//! held in memory only for the call. Nothing here logs a key.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

pub use flotilla_contract::{
    AssignedPolicy, ESCALATE_HEADER, Egress, Feature, PolicySpec, ScrubKind, SecretRef, Triggers,
    Upstream,
};

/// The policy in force, shared: `None` never calls out.
pub type ActivePolicy = Option<Arc<AssignedPolicy>>;

/// The longest key file read; a key is far smaller, and a bound keeps a
/// mistaken path (a log, a device) from being read whole.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// The serving layer's view of the active policy: cheap to clone, one per
/// server or request handler.
#[derive(Debug, Clone)]
pub struct PolicyWatch {
    receiver: watch::Receiver<ActivePolicy>,
}

impl PolicyWatch {
    pub fn new(receiver: watch::Receiver<ActivePolicy>) -> Self {
        Self { receiver }
    }

    /// A watch that always says "no policy" (tests, a serving layer built
    /// without a reconciler).
    pub fn none() -> Self {
        let (_sender, receiver) = watch::channel(None);
        Self { receiver }
    }

    /// The policy in force now; a request decides with the one it read.
    pub fn current(&self) -> ActivePolicy {
        self.receiver.borrow().clone()
    }

    /// Waits until the policy changes (for a component that caches what it
    /// derives from the policy). Ends with `Err` when the reconciler is gone.
    pub async fn changed(&mut self) -> Result<ActivePolicy, watch::error::RecvError> {
        self.receiver.changed().await?;
        Ok(self.receiver.borrow_and_update().clone())
    }
}

/// An upstream key read from the node. Its `Debug` and `Display` hide it, so
/// it cannot reach a log by accident; [`UpstreamKey::expose`] is the one
/// way to the text (for the `Authorization` header of the call).
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamKey(String);

impl UpstreamKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UpstreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UpstreamKey(<redacted>)")
    }
}

/// Why a key could not be had; names the reference, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the upstream key variable {0} is not set (or not UTF-8) in the agent's environment")]
    MissingVariable(String),
    #[error("cannot read the upstream key file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("the upstream key from {0} is empty")]
    Empty(String),
}

/// Reads the key `reference` points to, now. Blocking for a file (small and
/// local); call it from a blocking thread or accept a short read.
pub fn resolve_credential(reference: &SecretRef) -> Result<UpstreamKey, CredentialError> {
    let text = match reference {
        SecretRef::Env(name) => {
            std::env::var(name).map_err(|_| CredentialError::MissingVariable(name.clone()))?
        }
        SecretRef::File(path) => read_key_file(path)?,
    };
    // A trailing newline from `echo key > file` is not part of the key.
    let key = text.trim();
    if key.is_empty() {
        return Err(CredentialError::Empty(reference.to_string()));
    }
    Ok(UpstreamKey(key.to_owned()))
}

fn read_key_file(path: &str) -> Result<String, CredentialError> {
    use std::io::Read;
    let unreadable = |reason: String| CredentialError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|error| unreadable(error.to_string()))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|error| unreadable(error.to_string()))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(unreadable(format!(
            "it is larger than {MAX_KEY_FILE_BYTES} bytes, too large for a key"
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_files_trimmed_and_never_show_in_debug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("upstream.key");
        std::fs::write(&path, "sk-test-value\n").expect("write");
        let reference = SecretRef::File(path.display().to_string());
        let key = resolve_credential(&reference).expect("readable");
        assert_eq!(key.expose(), "sk-test-value");
        assert!(!format!("{key:?}").contains("sk-test"));

        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(
            resolve_credential(&reference),
            Err(CredentialError::Empty(_))
        ));
        std::fs::write(&path, vec![b'k'; 20_000]).expect("write");
        assert!(matches!(
            resolve_credential(&reference),
            Err(CredentialError::Unreadable { .. })
        ));
        let missing = SecretRef::File(dir.path().join("absent").display().to_string());
        assert!(matches!(
            resolve_credential(&missing),
            Err(CredentialError::Unreadable { .. })
        ));
    }

    #[test]
    fn a_missing_variable_is_named() {
        // A name no environment sets; the test never sets variables
        // (`set_var` races other tests' threads).
        let reference = SecretRef::Env("FLOTILLA_TEST_SURELY_UNSET_KEY_0F3A".to_owned());
        assert_eq!(
            resolve_credential(&reference),
            Err(CredentialError::MissingVariable(
                "FLOTILLA_TEST_SURELY_UNSET_KEY_0F3A".to_owned()
            ))
        );
    }

    #[test]
    fn the_watch_reports_the_policy_in_force() {
        assert!(PolicyWatch::none().current().is_none());
        let (sender, receiver) = watch::channel(None);
        let watch = PolicyWatch::new(receiver);
        let policy = Arc::new(AssignedPolicy {
            name: "air-gapped".to_owned(),
            version: 1,
            spec: PolicySpec {
                egress: Egress::Forbidden,
                triggers: Triggers::default(),
                scrub: ScrubKind::ALL.into_iter().collect(),
            },
        });
        sender.send_replace(Some(policy.clone()));
        assert_eq!(watch.current(), Some(policy));
    }
}
