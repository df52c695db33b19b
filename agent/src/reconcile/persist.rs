//! `DATA_DIR/state.json`: the applied generation and the last observed
//! state, so that a restarted agent reports the right generation in its
//! hello and never regresses below it. Written to a temporary file, synced,
//! and renamed over the old one, so a crash leaves the old or the new file,
//! never half of one. The row types here are the file's shape; the domain
//! types stay free of serde.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::{ObservedState, Phase};
use crate::cache::Digest;

pub const STATE_FILE: &str = "state.json";

/// What survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedState {
    /// The generation of the last desired state the agent started
    /// reconciling towards.
    pub applied_generation: u64,
    pub observed: ObservedState,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read agent state {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write agent state {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_FILE)
}

#[derive(Serialize, Deserialize)]
struct StateRow {
    applied_generation: u64,
    observed: ObservedRow,
}

#[derive(Serialize, Deserialize)]
struct ObservedRow {
    generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    /// `idle`, `pending`, `downloading`, `verifying`, `loading`, `ready`, `failed`.
    phase: String,
    #[serde(default)]
    bytes_done: u64,
    #[serde(default)]
    bytes_total: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    serving_digest: Option<String>,
}

impl From<&PersistedState> for StateRow {
    fn from(state: &PersistedState) -> Self {
        let observed = &state.observed;
        let (phase, bytes_done, bytes_total, reason) = match &observed.phase {
            Phase::Idle => ("idle", 0, 0, String::new()),
            Phase::Pending => ("pending", 0, 0, String::new()),
            Phase::Downloading {
                bytes_done,
                bytes_total,
            } => ("downloading", *bytes_done, *bytes_total, String::new()),
            Phase::Verifying => ("verifying", 0, 0, String::new()),
            Phase::Loading => ("loading", 0, 0, String::new()),
            Phase::Ready => ("ready", 0, 0, String::new()),
            Phase::Failed { reason } => ("failed", 0, 0, reason.clone()),
        };
        StateRow {
            applied_generation: state.applied_generation,
            observed: ObservedRow {
                generation: observed.generation,
                digest: observed.digest.map(|digest| digest.to_hex()),
                phase: phase.to_owned(),
                bytes_done,
                bytes_total,
                reason,
                serving_digest: observed.serving_digest.map(|digest| digest.to_hex()),
            },
        }
    }
}

impl TryFrom<StateRow> for PersistedState {
    type Error = String;

    fn try_from(row: StateRow) -> Result<Self, String> {
        let digest = |text: Option<String>| -> Result<Option<Digest>, String> {
            text.map(|text| {
                text.parse::<Digest>()
                    .map_err(|error| format!("bad digest {text:?}: {error}"))
            })
            .transpose()
        };
        let observed = row.observed;
        let phase = match observed.phase.as_str() {
            "idle" => Phase::Idle,
            "pending" => Phase::Pending,
            "downloading" => Phase::Downloading {
                bytes_done: observed.bytes_done,
                bytes_total: observed.bytes_total,
            },
            "verifying" => Phase::Verifying,
            "loading" => Phase::Loading,
            "ready" => Phase::Ready,
            "failed" => Phase::Failed {
                reason: observed.reason,
            },
            other => return Err(format!("unknown phase {other:?}")),
        };
        Ok(PersistedState {
            applied_generation: row.applied_generation,
            observed: ObservedState {
                generation: observed.generation,
                digest: digest(observed.digest)?,
                phase,
                serving_digest: digest(observed.serving_digest)?,
            },
        })
    }
}

/// The saved state, or `None` when the agent never reconciled anything.
pub fn load(data_dir: &Path) -> Result<Option<PersistedState>, StateFileError> {
    let path = state_path(data_dir);
    let read_error = |reason: String| StateFileError::Read {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(read_error(error.to_string())),
    };
    let row: StateRow =
        serde_json::from_str(&text).map_err(|error| read_error(error.to_string()))?;
    PersistedState::try_from(row).map(Some).map_err(read_error)
}

/// Writes the state atomically (temporary file, fsync, rename).
pub fn save(data_dir: &Path, state: &PersistedState) -> Result<(), StateFileError> {
    let path = state_path(data_dir);
    let write_error = |source| StateFileError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(write_error)?;
    let text = serde_json::to_vec_pretty(&StateRow::from(state))
        .map_err(|error| write_error(std::io::Error::other(error)))?;
    let temporary = data_dir.join(format!("{STATE_FILE}.tmp"));
    let mut file = std::fs::File::create(&temporary).map_err(write_error)?;
    file.write_all(&text).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(write_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), None);
        let digest = Digest::of(b"model");
        let states = [
            PersistedState {
                applied_generation: 7,
                observed: ObservedState {
                    generation: 7,
                    digest: Some(digest),
                    phase: Phase::Downloading {
                        bytes_done: 10,
                        bytes_total: 100,
                    },
                    serving_digest: Some(Digest::of(b"old model")),
                },
            },
            PersistedState {
                applied_generation: 8,
                observed: ObservedState {
                    generation: 8,
                    digest: Some(digest),
                    phase: Phase::Failed {
                        reason: "blob blake3:ab… failed verification".to_owned(),
                    },
                    serving_digest: None,
                },
            },
            PersistedState {
                applied_generation: 9,
                observed: ObservedState {
                    generation: 9,
                    ..ObservedState::default()
                },
            },
        ];
        for state in states {
            save(dir.path(), &state).expect("save");
            assert_eq!(load(dir.path()).expect("load"), Some(state));
        }
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(state_path(dir.path()), "{\"applied_generation\": ").expect("write");
        assert!(matches!(load(dir.path()), Err(StateFileError::Read { .. })));
        std::fs::write(
            state_path(dir.path()),
            r#"{"applied_generation": 1, "observed": {"generation": 1, "phase": "dancing"}}"#,
        )
        .expect("write");
        assert!(matches!(load(dir.path()), Err(StateFileError::Read { .. })));
    }
}
