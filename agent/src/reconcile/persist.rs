//! `DATA_DIR/state.json`: the applied generation, the last observed state
//! and the last desired state, so that a restarted agent reports the right
//! generation in its hello, never regresses below it, and serves its
//! assignment again from the cache even while the controller is away
//! (DESIGN.md §3: disconnects are normal, the agent keeps serving). Written to a temporary file, synced,
//! and renamed over the old one, so a crash leaves the old or the new file,
//! never half of one. The row types here are the file's shape; the domain
//! types stay free of serde.

use std::io::Write;
use std::path::{Path, PathBuf};

use flotilla_contract::AssignedPolicy;
use serde::{Deserialize, Serialize};

use super::model::{
    Assignment, DesiredState, NodeStatus, ObservedState, Phase, SystemPrompt, SystemPromptPolicy,
};
use crate::cache::Digest;

pub const STATE_FILE: &str = "state.json";

/// What survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedState {
    /// The generation of the last desired state the agent started
    /// reconciling towards.
    pub applied_generation: u64,
    pub observed: ObservedState,
    /// The desired state being reconciled towards (`None` in files written
    /// before it was kept, or before any arrived).
    pub desired: Option<DesiredState>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    desired: Option<DesiredRow>,
}

#[derive(Serialize, Deserialize)]
struct DesiredRow {
    generation: u64,
    /// `pending`, `active`, `cordoned`.
    status: String,
    heartbeat_interval_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    assignment: Option<AssignmentRow>,
}

#[derive(Serialize, Deserialize)]
struct AssignmentRow {
    model: String,
    version: String,
    quantization: String,
    digest: String,
    size_bytes: u64,
    blob_base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    system_prompt: Option<PromptRow>,
    /// `prepend`, `replace`, `forbid`.
    system_prompt_policy: String,
    /// Added later: absent in older state files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
    /// The escalation policy in the fleet contract's JSON shape (its
    /// credential a reference, never a key); added later, absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    escalation_policy: Option<AssignedPolicy>,
    assignment_generation: u64,
}

#[derive(Serialize, Deserialize)]
struct PromptRow {
    name: String,
    version: u32,
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chat_template: Option<String>,
}

impl From<&DesiredState> for DesiredRow {
    fn from(desired: &DesiredState) -> Self {
        DesiredRow {
            generation: desired.generation,
            status: match desired.status {
                NodeStatus::Pending => "pending",
                NodeStatus::Active => "active",
                NodeStatus::Cordoned => "cordoned",
            }
            .to_owned(),
            heartbeat_interval_ms: u64::try_from(desired.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            assignment: desired.assignment.as_ref().map(|assignment| AssignmentRow {
                model: assignment.model.clone(),
                version: assignment.version.clone(),
                quantization: assignment.quantization.clone(),
                digest: assignment.digest.to_hex(),
                size_bytes: assignment.size_bytes,
                blob_base_url: assignment.blob_base_url.clone(),
                system_prompt: assignment.system_prompt.as_ref().map(|prompt| PromptRow {
                    name: prompt.name.clone(),
                    version: prompt.version,
                    text: prompt.text.clone(),
                    chat_template: prompt.chat_template.clone(),
                }),
                system_prompt_policy: match assignment.system_prompt_policy {
                    SystemPromptPolicy::Prepend => "prepend",
                    SystemPromptPolicy::Replace => "replace",
                    SystemPromptPolicy::Forbid => "forbid",
                }
                .to_owned(),
                aliases: assignment.aliases.clone(),
                escalation_policy: assignment.escalation_policy.clone(),
                assignment_generation: assignment.assignment_generation,
            }),
        }
    }
}

impl TryFrom<DesiredRow> for DesiredState {
    type Error = String;

    fn try_from(row: DesiredRow) -> Result<Self, String> {
        let status = match row.status.as_str() {
            "pending" => NodeStatus::Pending,
            "active" => NodeStatus::Active,
            "cordoned" => NodeStatus::Cordoned,
            other => return Err(format!("unknown node status {other:?}")),
        };
        let assignment =
            row.assignment
                .map(|assignment| -> Result<Assignment, String> {
                    let system_prompt_policy = match assignment.system_prompt_policy.as_str() {
                        "prepend" => SystemPromptPolicy::Prepend,
                        "replace" => SystemPromptPolicy::Replace,
                        "forbid" => SystemPromptPolicy::Forbid,
                        other => return Err(format!("unknown system prompt policy {other:?}")),
                    };
                    Ok(Assignment {
                        model: assignment.model,
                        version: assignment.version,
                        quantization: assignment.quantization,
                        digest: assignment.digest.parse::<Digest>().map_err(|error| {
                            format!("bad digest {:?}: {error}", assignment.digest)
                        })?,
                        size_bytes: assignment.size_bytes,
                        blob_base_url: assignment.blob_base_url,
                        system_prompt: assignment.system_prompt.map(|prompt| SystemPrompt {
                            name: prompt.name,
                            version: prompt.version,
                            text: prompt.text,
                            chat_template: prompt.chat_template,
                        }),
                        system_prompt_policy,
                        aliases: assignment.aliases,
                        escalation_policy: assignment.escalation_policy,
                        assignment_generation: assignment.assignment_generation,
                    })
                })
                .transpose()?;
        Ok(DesiredState {
            generation: row.generation,
            status,
            assignment,
            heartbeat_interval: std::time::Duration::from_millis(row.heartbeat_interval_ms),
        })
    }
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
            desired: state.desired.as_ref().map(DesiredRow::from),
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
            desired: row.desired.map(DesiredState::try_from).transpose()?,
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
    let mut file = crate::enrol::create_private(&temporary).map_err(write_error)?;
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
                desired: Some(DesiredState {
                    generation: 7,
                    status: NodeStatus::Cordoned,
                    heartbeat_interval: std::time::Duration::from_millis(1500),
                    assignment: Some(Assignment {
                        model: "smollm2".to_owned(),
                        version: "1.2.3".to_owned(),
                        quantization: "Q4_1".to_owned(),
                        digest,
                        size_bytes: 100,
                        blob_base_url: "http://controller:8080".to_owned(),
                        system_prompt: Some(SystemPrompt {
                            name: "support".to_owned(),
                            version: 2,
                            text: "Be brief.".to_owned(),
                            chat_template: Some("{{ messages }}".to_owned()),
                        }),
                        system_prompt_policy: SystemPromptPolicy::Forbid,
                        aliases: vec!["support-bot".to_owned()],
                        escalation_policy: Some(AssignedPolicy {
                            name: "hybrid".to_owned(),
                            version: 2,
                            spec: flotilla_contract::PolicySpec::try_from(
                                serde_json::from_str::<flotilla_contract::PolicyDocument>(
                                    r#"{"egress": "allowed",
                                        "upstream": {"base_url": "https://llm.example.com/v1",
                                                     "model": "big", "credential": "env:UPSTREAM_KEY"},
                                        "triggers": {"model_names": ["auto"]},
                                        "scrub": ["email"]}"#,
                                )
                                .expect("a document"),
                            )
                            .expect("a valid policy"),
                        }),
                        assignment_generation: 6,
                    }),
                }),
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
                desired: None,
            },
            PersistedState {
                applied_generation: 9,
                observed: ObservedState {
                    generation: 9,
                    ..ObservedState::default()
                },
                desired: Some(DesiredState {
                    generation: 9,
                    status: NodeStatus::Active,
                    heartbeat_interval: std::time::Duration::from_secs(5),
                    assignment: None,
                }),
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
