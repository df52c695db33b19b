//! Row structs of rollouts, their nodes and the event log, and their
//! conversion to domain types. A rollout's spec is stored as JSON of plain
//! strings and numbers ([`SpecJson`]) and validated again when read back,
//! so a bad row is [`StoreError::Corrupt`], never a panic.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::{
    DesiredAssignment, Event, GateThresholds, Labels, NodeName, PromptPolicy, Rollout, RolloutName,
    RolloutNode, RolloutSpec,
};

fn corrupt(
    column: &str,
    value: impl std::fmt::Display,
    error: impl std::fmt::Display,
) -> StoreError {
    StoreError::Corrupt(format!("{column} holds {value}: {error}"))
}

/// Milliseconds since the epoch, as the rollout tables store times.
pub(super) fn to_unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn from_unix_ms(column: &str, ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|error| corrupt(column, ms, error))
}

fn to_u32(column: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|error| corrupt(column, value, error))
}

/// A rollout's spec as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SpecJson {
    selector: BTreeMap<String, String>,
    model: String,
    requirement: String,
    quantization: String,
    prompt: Option<String>,
    /// Added after the first rollouts were stored: absent reads as prepend.
    #[serde(default)]
    prompt_policy: PromptPolicy,
    aliases: Vec<String>,
    /// The escalation policy (`NAME@N`); added later, absent reads as none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    escalation_policy: Option<String>,
    waves: String,
    max_unavailable: u32,
    bake_ms: u64,
    auto_rollback: bool,
    gates: GateThresholds,
}

impl From<&RolloutSpec> for SpecJson {
    fn from(spec: &RolloutSpec) -> Self {
        Self {
            selector: spec.selector.as_map().clone(),
            model: spec.model.to_string(),
            requirement: spec.requirement.to_string(),
            quantization: spec.quantization.to_string(),
            prompt: spec.prompt.as_ref().map(ToString::to_string),
            prompt_policy: spec.prompt_policy,
            aliases: spec.aliases.clone(),
            escalation_policy: spec.escalation_policy.as_ref().map(ToString::to_string),
            waves: spec.waves.to_string(),
            max_unavailable: spec.max_unavailable,
            bake_ms: u64::try_from(spec.bake.as_millis()).unwrap_or(u64::MAX),
            auto_rollback: spec.auto_rollback,
            gates: spec.gates.clone(),
        }
    }
}

impl TryFrom<SpecJson> for RolloutSpec {
    type Error = StoreError;

    fn try_from(json: SpecJson) -> Result<Self, Self::Error> {
        let bad = |field: &str, value: &str, error: String| {
            corrupt(&format!("rollouts.spec.{field}"), value, error)
        };
        Ok(Self {
            selector: Labels::new(json.selector)
                .map_err(|error| bad("selector", "a label", error.to_string()))?,
            model: json
                .model
                .parse()
                .map_err(|error: crate::domain::InvalidName| {
                    bad("model", &json.model, error.to_string())
                })?,
            requirement: json.requirement.parse().map_err(|error: semver::Error| {
                bad("requirement", &json.requirement, error.to_string())
            })?,
            quantization: json.quantization.parse().map_err(
                |error: crate::domain::InvalidQuantization| {
                    bad("quantization", &json.quantization, error.to_string())
                },
            )?,
            prompt: json
                .prompt
                .as_deref()
                .map(|prompt| prompt.parse().map_err(|error| bad("prompt", prompt, error)))
                .transpose()?,
            prompt_policy: json.prompt_policy,
            aliases: json.aliases,
            escalation_policy: json
                .escalation_policy
                .as_deref()
                .map(|policy| {
                    policy
                        .parse()
                        .map_err(|error| bad("escalation_policy", policy, error))
                })
                .transpose()?,
            waves: json
                .waves
                .parse()
                .map_err(|error: crate::domain::InvalidWaves| {
                    bad("waves", &json.waves, error.to_string())
                })?,
            max_unavailable: json.max_unavailable,
            bake: Duration::from_millis(json.bake_ms),
            auto_rollback: json.auto_rollback,
            gates: json.gates,
        })
    }
}

pub(super) const SELECT_ROLLOUTS: &str = "SELECT name, spec, state, current_wave, wave_count, \
    bake_started_unix_ms, skip_bake, reason, generation, created_by, created_unix_ms, \
    updated_unix_ms FROM rollouts";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct RolloutRow {
    pub name: String,
    pub spec: sqlx::types::Json<SpecJson>,
    pub state: String,
    pub current_wave: i64,
    pub wave_count: i64,
    pub bake_started_unix_ms: Option<i64>,
    pub skip_bake: bool,
    pub reason: Option<String>,
    pub generation: i64,
    pub created_by: String,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
}

impl TryFrom<RolloutRow> for Rollout {
    type Error = StoreError;

    fn try_from(row: RolloutRow) -> Result<Self, Self::Error> {
        Ok(Self {
            name: row
                .name
                .parse::<RolloutName>()
                .map_err(|error| corrupt("rollouts.name", &row.name, error))?,
            spec: RolloutSpec::try_from(row.spec.0)?,
            state: row
                .state
                .parse()
                .map_err(|error| corrupt("rollouts.state", &row.state, error))?,
            current_wave: to_u32("rollouts.current_wave", row.current_wave)?,
            wave_count: to_u32("rollouts.wave_count", row.wave_count)?,
            bake_started_at: row
                .bake_started_unix_ms
                .map(|ms| from_unix_ms("rollouts.bake_started_unix_ms", ms))
                .transpose()?,
            skip_bake: row.skip_bake,
            reason: row.reason,
            generation: u64::try_from(row.generation)
                .map_err(|error| corrupt("rollouts.generation", row.generation, error))?,
            created_by: row.created_by,
            created_at: from_unix_ms("rollouts.created_unix_ms", row.created_unix_ms)?,
            updated_at: from_unix_ms("rollouts.updated_unix_ms", row.updated_unix_ms)?,
        })
    }
}

pub(super) const SELECT_ROLLOUT_NODES: &str =
    "SELECT node_name, wave, state, desired, previous, reason FROM rollout_nodes";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct RolloutNodeRow {
    pub node_name: String,
    pub wave: i64,
    pub state: String,
    pub desired: Option<sqlx::types::Json<DesiredAssignment>>,
    pub previous: Option<sqlx::types::Json<DesiredAssignment>>,
    pub reason: Option<String>,
}

impl TryFrom<RolloutNodeRow> for RolloutNode {
    type Error = StoreError;

    fn try_from(row: RolloutNodeRow) -> Result<Self, Self::Error> {
        Ok(Self {
            node: row
                .node_name
                .parse::<NodeName>()
                .map_err(|error| corrupt("rollout_nodes.node_name", &row.node_name, error))?,
            wave: to_u32("rollout_nodes.wave", row.wave)?,
            state: row
                .state
                .parse()
                .map_err(|error| corrupt("rollout_nodes.state", &row.state, error))?,
            desired: row.desired.map(|json| json.0),
            previous: row.previous.map(|json| json.0),
            reason: row.reason,
        })
    }
}

pub(super) const SELECT_EVENTS: &str =
    "SELECT id, at_unix_ms, actor, rollout, node_name, action, message FROM events";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    pub id: i64,
    pub at_unix_ms: i64,
    pub actor: String,
    pub rollout: Option<String>,
    pub node_name: Option<String>,
    pub action: String,
    pub message: String,
}

impl TryFrom<EventRow> for Event {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, Self::Error> {
        Ok(Self {
            id: u64::try_from(row.id).map_err(|error| corrupt("events.id", row.id, error))?,
            at: from_unix_ms("events.at_unix_ms", row.at_unix_ms)?,
            actor: row.actor,
            rollout: row
                .rollout
                .as_deref()
                .map(|name| {
                    name.parse::<RolloutName>()
                        .map_err(|error| corrupt("events.rollout", name, error))
                })
                .transpose()?,
            node: row
                .node_name
                .as_deref()
                .map(|name| {
                    name.parse::<NodeName>()
                        .map_err(|error| corrupt("events.node_name", name, error))
                })
                .transpose()?,
            action: row.action,
            message: row.message,
        })
    }
}
