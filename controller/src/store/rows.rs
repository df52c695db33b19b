//! Row structs read back from the database, and their conversion to domain
//! types. Shared by both backends: the columns are the same, only their SQL
//! types differ, and sqlx decodes each backend's types into these fields.
//!
//! Nothing here trusts the database: every string goes through the domain
//! type's `FromStr`, every integer through a checked conversion, and a value
//! that does not convert is [`StoreError::Corrupt`] naming the column, never a
//! panic. Mapping sqlx errors to [`StoreError`] happens here too, in
//! [`map_sqlx_error`], so both backends classify failures identically.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;

use time::OffsetDateTime;

use super::StoreError;
use crate::domain::{
    Artifact, Assignment, AssignmentTarget, BootstrapToken, DesiredAssignment, DesiredState,
    Digest, HealthPoint, HealthSample, InferenceMinute, Labels, Model, ModelName, ModelVersion,
    NewArtifact, Node, NodeInventory, NodeName, NodePattern, NodeStatus, ObservedState, Page,
    PromptName, PromptSummary, SecretHash, Servability, SystemPrompt, TokenRejection,
};

/// Columns of [`ArtifactRow`], joined from artifacts, their version, model and
/// blob. Valid SQL on both backends; callers append `WHERE` and `ORDER BY`.
pub(super) const SELECT_ARTIFACTS: &str = "\
    SELECT a.version_id, m.name AS model, v.version, a.digest, b.size_bytes, a.format, \
           a.quantization, a.architecture, a.parameter_count, a.context_length, \
           a.memory_estimate_bytes, a.engine_check, a.unservable_reason, a.created_at \
    FROM artifacts a \
    JOIN model_versions v ON v.id = a.version_id \
    JOIN models m ON m.id = v.model_id \
    JOIN blobs b ON b.digest = a.digest";

/// Columns of [`VersionRow`]. Valid SQL on both backends; callers append
/// `WHERE` and `ORDER BY`.
pub(super) const SELECT_VERSIONS: &str = "\
    SELECT v.id, m.name AS model, v.version, v.state, v.notes, v.created_at, v.published_at \
    FROM model_versions v \
    JOIN models m ON m.id = v.model_id";

/// Columns of [`PromptRow`].
pub(super) const SELECT_PROMPTS: &str =
    "SELECT name, version, text, chat_template, created_at FROM system_prompts";

/// `SELECT` of [`NodeRow`]; callers append `WHERE` and `ORDER BY`.
pub(super) const SELECT_NODES: &str = "SELECT name, labels, inventory, agent_version, status, \
    enrolled_at, desired_generation, desired, observed, health, last_heartbeat_unix_ms, \
    credential_generation FROM nodes";

/// Columns of [`PlacementRow`]: only what placement reads.
pub(super) const SELECT_PLACEMENT: &str = "SELECT name, labels, status, desired FROM nodes";

/// Columns of [`AssignmentRow`].
pub(super) const SELECT_ASSIGNMENTS: &str =
    "SELECT generation, node_name, selector, desired, created_by, created_at FROM assignments";

/// How many rows a list query fetches: one more than the page, so that
/// `Page::from_overfetched` can tell whether another page follows.
pub(super) fn overfetch(limit: u32) -> i64 {
    i64::from(limit) + 1
}

pub(super) fn corrupt(column: &str, value: impl Display, error: impl Display) -> StoreError {
    StoreError::Corrupt(format!("{column} holds {value}: {error}"))
}

/// A count or size from the database, which the schema keeps non-negative.
pub(super) fn to_u64(column: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|error| corrupt(column, value, error))
}

/// A count or size going into a signed 64-bit column. Values past `i64::MAX`
/// (8 EiB) cannot be real; refusing them beats wrapping to a negative.
pub(super) fn to_i64(what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::FailedPrecondition(format!(
            "{what} {value} is too large to store (the maximum is {})",
            i64::MAX
        ))
    })
}

/// The numbers of a [`NewArtifact`] as the signed 64-bit integers both
/// schemas store, converted once before the transaction so that an
/// out-of-range value is refused before anything is written.
#[derive(Debug)]
pub(super) struct ArtifactNumbers {
    pub size_bytes: i64,
    pub parameter_count: i64,
    pub context_length: Option<i64>,
    pub memory_estimate_bytes: i64,
}

impl TryFrom<&NewArtifact> for ArtifactNumbers {
    type Error = StoreError;

    fn try_from(artifact: &NewArtifact) -> Result<Self, Self::Error> {
        let what = |field: &str| format!("{field} of artifact {}", artifact.digest.short());
        Ok(Self {
            size_bytes: to_i64(&what("size_bytes"), artifact.size_bytes)?,
            parameter_count: to_i64(&what("parameter_count"), artifact.parameter_count)?,
            context_length: artifact
                .context_length
                .map(|length| to_i64(&what("context_length"), length))
                .transpose()?,
            memory_estimate_bytes: to_i64(
                &what("memory_estimate_bytes"),
                artifact.memory_estimate_bytes,
            )?,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct NodeRow {
    pub name: String,
    pub labels: sqlx::types::Json<BTreeMap<String, String>>,
    pub inventory: sqlx::types::Json<NodeInventory>,
    pub agent_version: String,
    pub status: String,
    pub enrolled_at: OffsetDateTime,
    pub desired_generation: i64,
    pub desired: Option<sqlx::types::Json<DesiredAssignment>>,
    pub observed: Option<sqlx::types::Json<ObservedState>>,
    pub health: Option<sqlx::types::Json<HealthSample>>,
    pub last_heartbeat_unix_ms: Option<i64>,
    pub credential_generation: i64,
}

impl TryFrom<NodeRow> for Node {
    type Error = StoreError;

    fn try_from(row: NodeRow) -> Result<Self, Self::Error> {
        Ok(Self {
            name: row
                .name
                .parse::<NodeName>()
                .map_err(|error| corrupt("nodes.name", &row.name, error))?,
            labels: Labels::new(row.labels.0)
                .map_err(|error| corrupt("nodes.labels", "a label", error))?,
            status: row
                .status
                .parse::<NodeStatus>()
                .map_err(|error| corrupt("nodes.status", &row.status, error))?,
            inventory: row.inventory.0,
            agent_version: row.agent_version,
            enrolled_at: row.enrolled_at,
            desired: DesiredState {
                generation: to_u64("nodes.desired_generation", row.desired_generation)?,
                assignment: row.desired.map(|json| json.0),
            },
            observed: row.observed.map(|json| json.0),
            health: row.health.map(|json| json.0),
            last_heartbeat_at: row
                .last_heartbeat_unix_ms
                .map(|ms| {
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                        .map_err(|error| corrupt("nodes.last_heartbeat_unix_ms", ms, error))
                })
                .transpose()?,
            credential_generation: to_u64(
                "nodes.credential_generation",
                row.credential_generation,
            )?,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct PlacementRow {
    pub name: String,
    pub labels: sqlx::types::Json<BTreeMap<String, String>>,
    pub status: String,
    pub desired: Option<sqlx::types::Json<DesiredAssignment>>,
}

impl PlacementRow {
    /// Name, labels, status and the assignment generation the node's
    /// desired state comes from (0: none).
    pub(super) fn into_parts(self) -> Result<(NodeName, Labels, NodeStatus, u64), StoreError> {
        Ok((
            self.name
                .parse::<NodeName>()
                .map_err(|error| corrupt("nodes.name", &self.name, error))?,
            Labels::new(self.labels.0)
                .map_err(|error| corrupt("nodes.labels", "a label", error))?,
            self.status
                .parse::<NodeStatus>()
                .map_err(|error| corrupt("nodes.status", &self.status, error))?,
            self.desired
                .map_or(0, |desired| desired.0.assignment_generation),
        ))
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct AssignmentRow {
    pub generation: i64,
    pub node_name: Option<String>,
    pub selector: Option<sqlx::types::Json<BTreeMap<String, String>>>,
    pub desired: sqlx::types::Json<DesiredAssignment>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
}

impl TryFrom<AssignmentRow> for Assignment {
    type Error = StoreError;

    fn try_from(row: AssignmentRow) -> Result<Self, Self::Error> {
        let target = match (row.node_name, row.selector) {
            (Some(name), None) => AssignmentTarget::Node(
                name.parse::<NodeName>()
                    .map_err(|error| corrupt("assignments.node_name", &name, error))?,
            ),
            (None, Some(selector)) => AssignmentTarget::Selector(
                Labels::new(selector.0)
                    .map_err(|error| corrupt("assignments.selector", "a label", error))?,
            ),
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "assignment {} has not exactly one of node_name and selector",
                    row.generation
                )));
            }
        };
        Ok(Self {
            generation: to_u64("assignments.generation", row.generation)?,
            target,
            desired: row.desired.0,
            created_by: row.created_by,
            created_at: row.created_at,
        })
    }
}

/// One minute of health history as stored.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct HealthMinuteRow {
    pub minute_unix: i64,
    pub samples: i64,
    pub cpu_utilisation_percent: f64,
    pub memory_used_bytes_max: i64,
    pub gpu_utilisation_percent: Option<f64>,
    pub gpu_temperature_celsius_max: Option<f64>,
    pub throttled: bool,
    pub inference: Option<sqlx::types::Json<InferenceMinute>>,
}

impl TryFrom<HealthMinuteRow> for HealthPoint {
    type Error = StoreError;

    fn try_from(row: HealthMinuteRow) -> Result<Self, Self::Error> {
        Ok(Self {
            at: OffsetDateTime::from_unix_timestamp(row.minute_unix).map_err(|error| {
                corrupt("node_health_minutes.minute_unix", row.minute_unix, error)
            })?,
            samples: u32::try_from(row.samples)
                .map_err(|error| corrupt("node_health_minutes.samples", row.samples, error))?,
            cpu_utilisation_percent: row.cpu_utilisation_percent as f32,
            memory_used_bytes_max: to_u64(
                "node_health_minutes.memory_used_bytes_max",
                row.memory_used_bytes_max,
            )?,
            gpu_utilisation_percent: row.gpu_utilisation_percent.map(|v| v as f32),
            gpu_temperature_celsius_max: row.gpu_temperature_celsius_max.map(|v| v as f32),
            throttled: row.throttled,
            inference: row.inference.map(|json| json.0),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct BootstrapTokenRow {
    pub id: String,
    pub expires_at: OffsetDateTime,
    pub uses_left: i64,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub node_pattern: Option<String>,
    pub may_replace: bool,
    pub revoked: bool,
}

/// Columns of [`BootstrapTokenRow`], for `SELECT` and `RETURNING`.
pub(super) const BOOTSTRAP_TOKEN_COLUMNS: &str = "id, expires_at, \
    CAST(uses_left AS BIGINT) AS uses_left, created_by, created_at, node_pattern, may_replace, \
    revoked_at IS NOT NULL AS revoked";

impl TryFrom<BootstrapTokenRow> for BootstrapToken {
    type Error = StoreError;

    fn try_from(row: BootstrapTokenRow) -> Result<Self, Self::Error> {
        Ok(Self {
            uses_left: u32::try_from(row.uses_left)
                .map_err(|error| corrupt("bootstrap_tokens.uses_left", row.uses_left, error))?,
            id: row.id,
            expires_at: row.expires_at,
            created_by: row.created_by,
            created_at: row.created_at,
            node_pattern: row
                .node_pattern
                .map(|text| {
                    text.parse::<NodePattern>()
                        .map_err(|error| corrupt("bootstrap_tokens.node_pattern", &text, error))
                })
                .transpose()?,
            may_replace: row.may_replace,
            revoked: row.revoked,
        })
    }
}

/// A bootstrap token row as the enrolling transaction reads it (locked):
/// expiry is judged by the database's clock, like `expires_at` was set.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct TokenCheckRow {
    pub secret_hash: Vec<u8>,
    pub expired: bool,
    pub uses_left: i64,
    pub node_pattern: Option<String>,
    pub may_replace: bool,
    pub revoked: bool,
}

impl TokenCheckRow {
    /// Whether the token may replace the enrolled node `name`: it was
    /// created with `--replace` for exactly that name.
    pub(super) fn may_replace(&self, name: &NodeName) -> bool {
        self.may_replace && self.node_pattern.as_deref() == Some(name.as_str())
    }
}

/// The columns of [`TokenCheckRow`] but `expired`, whose SQL differs.
pub(super) const TOKEN_CHECK_COLUMNS: &str = "secret_hash, CAST(uses_left AS BIGINT) AS uses_left, \
    node_pattern, may_replace, revoked_at IS NOT NULL AS revoked";

/// Whether the presented secret may enrol with this token row (`None` when no
/// row has the token's id). The hash is compared first, in constant time, so
/// that a forger learns nothing about expiry or uses.
pub(super) fn check_token(
    row: Option<&TokenCheckRow>,
    presented: &SecretHash,
    name: &NodeName,
) -> Option<TokenRejection> {
    let Some(row) = row else {
        return Some(TokenRejection::Unknown);
    };
    // A pattern that no longer parses matches nothing: fail closed.
    let bound_elsewhere = row.node_pattern.as_deref().is_some_and(|text| {
        !text
            .parse::<NodePattern>()
            .is_ok_and(|pattern| pattern.matches(name))
    });
    if !presented.matches(&row.secret_hash) {
        Some(TokenRejection::Unknown)
    } else if row.revoked {
        Some(TokenRejection::Revoked)
    } else if row.expired {
        Some(TokenRejection::Expired)
    } else if bound_elsewhere {
        Some(TokenRejection::WrongNode)
    } else if row.uses_left <= 0 {
        Some(TokenRejection::UsedUp)
    } else {
        None
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct ModelRow {
    pub name: String,
    pub description: String,
    pub created_at: OffsetDateTime,
}

impl TryFrom<ModelRow> for Model {
    type Error = StoreError;

    fn try_from(row: ModelRow) -> Result<Self, Self::Error> {
        Ok(Self {
            name: parse_model_name(&row.name)?,
            description: row.description,
            created_at: row.created_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct VersionRow {
    /// Surrogate key: the page cursor of `list_versions`, and how artifacts
    /// are grouped under their version in `resolvable_versions`.
    pub id: i64,
    pub model: String,
    pub version: String,
    pub state: String,
    pub notes: String,
    pub created_at: OffsetDateTime,
    pub published_at: Option<OffsetDateTime>,
}

impl TryFrom<VersionRow> for ModelVersion {
    type Error = StoreError;

    fn try_from(row: VersionRow) -> Result<Self, Self::Error> {
        Ok(Self {
            model: parse_model_name(&row.model)?,
            version: parse_version(&row.version)?,
            state: row
                .state
                .parse()
                .map_err(|error| corrupt("model_versions.state", &row.state, error))?,
            notes: row.notes,
            created_at: row.created_at,
            published_at: row.published_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct ArtifactRow {
    pub version_id: i64,
    pub model: String,
    pub version: String,
    pub digest: String,
    pub size_bytes: i64,
    pub format: String,
    pub quantization: String,
    pub architecture: String,
    pub parameter_count: i64,
    pub context_length: Option<i64>,
    pub memory_estimate_bytes: i64,
    pub engine_check: Option<String>,
    pub unservable_reason: Option<String>,
    pub created_at: OffsetDateTime,
}

impl TryFrom<ArtifactRow> for Artifact {
    type Error = StoreError;

    fn try_from(row: ArtifactRow) -> Result<Self, Self::Error> {
        Ok(Self {
            model: parse_model_name(&row.model)?,
            version: parse_version(&row.version)?,
            digest: row
                .digest
                .parse::<Digest>()
                .map_err(|error| corrupt("artifacts.digest", &row.digest, error))?,
            size_bytes: to_u64("blobs.size_bytes", row.size_bytes)?,
            format: row
                .format
                .parse()
                .map_err(|error| corrupt("artifacts.format", &row.format, error))?,
            quantization: row
                .quantization
                .parse()
                .map_err(|error| corrupt("artifacts.quantization", &row.quantization, error))?,
            architecture: row.architecture,
            parameter_count: to_u64("artifacts.parameter_count", row.parameter_count)?,
            context_length: row
                .context_length
                .map(|value| to_u64("artifacts.context_length", value))
                .transpose()?,
            memory_estimate_bytes: to_u64(
                "artifacts.memory_estimate_bytes",
                row.memory_estimate_bytes,
            )?,
            servability: match (row.engine_check, row.unservable_reason) {
                (None, _) => Servability::Unchecked,
                (Some(engine), None) => Servability::Servable { engine },
                (Some(engine), Some(reason)) => Servability::Unservable { engine, reason },
            },
            created_at: row.created_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct PromptRow {
    pub name: String,
    pub version: i32,
    pub text: String,
    pub chat_template: Option<String>,
    pub created_at: OffsetDateTime,
}

impl TryFrom<PromptRow> for SystemPrompt {
    type Error = StoreError;

    fn try_from(row: PromptRow) -> Result<Self, Self::Error> {
        Ok(Self {
            name: parse_prompt_name(&row.name)?,
            version: prompt_version("system_prompts.version", row.version)?,
            text: row.text,
            chat_template: row.chat_template,
            created_at: row.created_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct PromptSummaryRow {
    pub name: String,
    pub latest_version: i32,
    pub updated_at: OffsetDateTime,
}

impl TryFrom<PromptSummaryRow> for PromptSummary {
    type Error = StoreError;

    fn try_from(row: PromptSummaryRow) -> Result<Self, Self::Error> {
        Ok(Self {
            name: parse_prompt_name(&row.name)?,
            latest_version: prompt_version("system_prompts.version", row.latest_version)?,
            updated_at: row.updated_at,
        })
    }
}

/// Converts a batch of rows, failing on the first that does not convert.
pub(super) fn convert_all<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

/// A page of versions from up to `limit + 1` rows in id order; the cursor is
/// the last version's id, which the domain type does not carry.
pub(super) fn versions_page(
    rows: Vec<VersionRow>,
    limit: u32,
) -> Result<Page<ModelVersion>, StoreError> {
    let with_ids = rows
        .into_iter()
        .map(|row| {
            let id = row.id;
            ModelVersion::try_from(row).map(|version| (version, id))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(
        Page::from_overfetched(with_ids, limit, |(_, id)| id.to_string())
            .map(|(version, _)| version),
    )
}

/// Puts each artifact under its version, keeping both in creation order; for
/// `resolvable_versions`, which reads versions and artifacts in two queries
/// rather than one per version.
pub(super) fn group_artifacts(
    versions: Vec<VersionRow>,
    artifacts: Vec<ArtifactRow>,
) -> Result<Vec<(ModelVersion, Vec<Artifact>)>, StoreError> {
    let mut by_version: HashMap<i64, Vec<Artifact>> = HashMap::new();
    for row in artifacts {
        by_version
            .entry(row.version_id)
            .or_default()
            .push(row.try_into()?);
    }
    versions
        .into_iter()
        .map(|row| {
            let artifacts = by_version.remove(&row.id).unwrap_or_default();
            Ok((ModelVersion::try_from(row)?, artifacts))
        })
        .collect()
}

fn parse_model_name(name: &str) -> Result<ModelName, StoreError> {
    name.parse()
        .map_err(|error| corrupt("models.name", format_args!("{name:?}"), error))
}

fn parse_prompt_name(name: &str) -> Result<PromptName, StoreError> {
    name.parse()
        .map_err(|error| corrupt("system_prompts.name", format_args!("{name:?}"), error))
}

fn parse_version(version: &str) -> Result<semver::Version, StoreError> {
    version
        .parse()
        .map_err(|error| corrupt("model_versions.version", format_args!("{version:?}"), error))
}

fn prompt_version(column: &str, value: i32) -> Result<u32, StoreError> {
    u32::try_from(value)
        .ok()
        .filter(|version| *version >= 1)
        .ok_or_else(|| corrupt(column, value, "prompt versions start at 1"))
}

/// Parses a `list_versions` cursor: the decimal id of the last version of the
/// previous page.
pub(super) fn parse_id_cursor(cursor: &str) -> Result<i64, StoreError> {
    cursor.parse::<i64>().map_err(|_| invalid_cursor(cursor))
}

/// Parses a `list_prompt_versions` cursor: the last version number of the
/// previous page.
pub(super) fn parse_prompt_version_cursor(cursor: &str) -> Result<i32, StoreError> {
    cursor
        .parse::<i32>()
        .ok()
        .filter(|version| *version >= 1)
        .ok_or_else(|| invalid_cursor(cursor))
}

fn invalid_cursor(cursor: &str) -> StoreError {
    let shown: String = cursor.chars().take(40).collect();
    StoreError::FailedPrecondition(format!(
        "invalid page cursor {shown:?}: pass back the next_cursor of a previous page unchanged"
    ))
}

/// Prompt versions are `u32` in the domain and `INTEGER` (i32) in Postgres.
pub(super) fn prompt_version_to_db(name: &PromptName, version: u32) -> Result<i32, StoreError> {
    i32::try_from(version).map_err(|_| {
        StoreError::FailedPrecondition(format!(
            "prompt {name} cannot have a version above {}",
            i32::MAX
        ))
    })
}

/// The one place sqlx errors become [`StoreError`]s, for both backends.
///
/// A unique violation becomes `AlreadyExists` with the message `conflict`
/// builds (it names the object the caller was creating); a foreign-key
/// violation means a referenced row vanished, which is `NotFound`; a column
/// that does not decode is `Corrupt`; anything else stays `Backend`.
pub(super) fn map_sqlx_error(error: sqlx::Error, conflict: impl FnOnce() -> String) -> StoreError {
    if let Some(database_error) = error.as_database_error() {
        if database_error.is_unique_violation() {
            return StoreError::AlreadyExists(conflict());
        }
        if database_error.is_foreign_key_violation() {
            return StoreError::NotFound(super::Missing::Referenced(
                database_error.message().to_owned(),
            ));
        }
    }
    match error {
        sqlx::Error::ColumnDecode { index, source } => {
            StoreError::Corrupt(format!("column {index} does not decode: {source}"))
        }
        sqlx::Error::Decode(source) => {
            StoreError::Corrupt(format!("a value does not decode: {source}"))
        }
        other => StoreError::Backend(other),
    }
}

/// Applies [`map_sqlx_error`] to a [`StoreError`] that still wraps a raw
/// sqlx error (one passed up with `?` where no conflict was expected), so
/// that no constraint violation leaves the store as a bare `Backend` error.
pub(super) fn classify(error: StoreError) -> StoreError {
    match error {
        StoreError::Backend(error) => map_sqlx_error(error, || {
            "the change conflicts with an existing row".to_owned()
        }),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact_row() -> ArtifactRow {
        ArtifactRow {
            version_id: 1,
            model: "m".into(),
            version: "1.0.0".into(),
            digest: Digest::from(blake3::hash(b"x")).to_hex(),
            size_bytes: 10,
            format: "gguf".into(),
            quantization: "Q4_1".into(),
            architecture: "llama".into(),
            parameter_count: 100,
            context_length: Some(2048),
            memory_estimate_bytes: 20,
            engine_check: None,
            unservable_reason: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn good_row_converts() {
        let artifact = Artifact::try_from(artifact_row()).expect("valid row");
        assert_eq!(artifact.size_bytes, 10);
        assert_eq!(artifact.context_length, Some(2048));
    }

    #[test]
    fn bad_values_are_corrupt_not_panics() {
        let negative = ArtifactRow {
            size_bytes: -1,
            ..artifact_row()
        };
        assert!(matches!(
            Artifact::try_from(negative),
            Err(StoreError::Corrupt(_))
        ));
        let bad_digest = ArtifactRow {
            digest: "nope".into(),
            ..artifact_row()
        };
        assert!(matches!(
            Artifact::try_from(bad_digest),
            Err(StoreError::Corrupt(_))
        ));
        let bad_state = VersionRow {
            id: 1,
            model: "m".into(),
            version: "1.0.0".into(),
            state: "gone".into(),
            notes: String::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            published_at: None,
        };
        let error = ModelVersion::try_from(bad_state).expect_err("bad state");
        assert!(
            error.to_string().contains("model_versions.state"),
            "{error}"
        );
        let bad_prompt = PromptRow {
            name: "p".into(),
            version: 0,
            text: String::new(),
            chat_template: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert!(matches!(
            SystemPrompt::try_from(bad_prompt),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn cursors_parse_or_fail_precondition() {
        assert_eq!(parse_id_cursor("42").ok(), Some(42));
        assert!(matches!(
            parse_id_cursor("x"),
            Err(StoreError::FailedPrecondition(_))
        ));
        assert_eq!(parse_prompt_version_cursor("3").ok(), Some(3));
        assert!(matches!(
            parse_prompt_version_cursor("0"),
            Err(StoreError::FailedPrecondition(_))
        ));
        assert!(matches!(
            to_i64("size", u64::MAX),
            Err(StoreError::FailedPrecondition(_))
        ));
        assert!(matches!(to_u64("c", -5), Err(StoreError::Corrupt(_))));
    }
}
