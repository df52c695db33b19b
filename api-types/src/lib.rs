//! The JSON bodies of Flotilla's REST API (`/api/v1`), shared by the
//! controller (which serves them) and the `flotilla` CLI (which reads them),
//! so the two cannot drift apart. Plain data with serde; no behaviour.
//!
//! Field names are snake_case. Timestamps are RFC 3339 strings. Digests are
//! 64 lowercase hex characters of blake3. Every list is paginated: pass
//! `next_cursor` back as `?after=` to get the next page.

/// A node's hardware and health as its agent reports them, and its health
/// history: the fleet contract's records, shown as they are.
pub use flotilla_contract::{
    GpuHealth as GpuHealthInfo, HealthPoint, HealthSample as HealthInfo,
    InferenceHealth as InferenceHealthInfo, InferenceMinute, NodeGpu as NodeGpuInfo,
    NodeInventory as NodeInventoryInfo,
};
/// An escalation policy's content as JSON: the body of `POST
/// /api/v1/policies/{name}/versions` and what `GET` shows. Defined by the
/// fleet contract, where it is validated for the controller and the agent
/// alike.
pub use flotilla_contract::{PolicyDocument, TriggersDocument, UpstreamDocument};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[cfg(feature = "openapi")]
use utoipa::{IntoParams, ToSchema};

/// The body of every error response, with the HTTP status matching `code`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_argument`, `unauthenticated`,
    /// `permission_denied`, `not_found`, `already_exists`,
    /// `failed_precondition`, `unprocessable` (a bad artifact),
    /// `payload_too_large`, `range_not_satisfiable`, `unavailable`, `internal`.
    pub code: String,
    /// A lowercase sentence naming the object concerned.
    pub message: String,
}

/// Query parameters of every list endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(IntoParams))]
pub struct PageQuery {
    /// Items per page (1–500, default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when another page follows.
    pub next_cursor: Option<String>,
}

// ---- models ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateModelRequest {
    /// 1–128 characters of a-z, 0-9, '.', '_' and '-'.
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ModelInfo {
    pub name: String,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
}

/// A model with all its versions and their artifacts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ModelDetail {
    #[serde(flatten)]
    pub model: ModelInfo,
    pub versions: Vec<VersionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateVersionRequest {
    /// A semantic version, e.g. `1.2.0`.
    pub version: String,
    #[serde(default)]
    pub notes: String,
}

/// Body of `PATCH /api/v1/models/{name}/versions/{version}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UpdateVersionRequest {
    /// `published`, `deprecated` or `yanked`.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct VersionInfo {
    pub model: String,
    pub version: String,
    /// `draft`, `published`, `deprecated` or `yanked`.
    pub state: String,
    pub notes: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub published_at: Option<OffsetDateTime>,
    pub artifacts: Vec<ArtifactInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ArtifactInfo {
    pub model: String,
    pub version: String,
    /// blake3 of the file's bytes, 64 hex characters.
    pub digest: String,
    pub size_bytes: u64,
    /// `gguf`.
    pub format: String,
    /// e.g. `Q4_1`, `Q8_0`, `F16`.
    pub quantization: String,
    /// e.g. `llama`.
    pub architecture: String,
    pub parameter_count: u64,
    pub context_length: Option<u64>,
    /// Memory needed to run it: weights plus KV cache for the full context.
    pub memory_estimate_bytes: u64,
    /// Whether this release's engine can load it, judged from its header at upload;
    /// `null` for artifacts uploaded before the controller checked. Rollouts and
    /// assignments never resolve to an unservable artifact.
    #[serde(default)]
    pub servable: Option<bool>,
    /// Why the engine cannot serve it, in the engine's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unservable_reason: Option<String>,
    /// The engine that judged it, e.g. `flotilla-engine 0.1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
}

/// Query of `POST .../artifacts` (the body is the file's raw bytes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(IntoParams))]
pub struct UploadQuery {
    /// When set (not `auto`), the upload is refused unless the file's own
    /// quantization is this one.
    pub quantization: Option<String>,
}

/// The header in which a client may declare the blake3 digest it expects; a
/// mismatch refuses the upload and keeps nothing.
pub const DIGEST_HEADER: &str = "x-flotilla-blake3";

/// Query of `GET /api/v1/resolve`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(IntoParams))]
pub struct ResolveQuery {
    pub model: String,
    /// A semver requirement such as `^1.2` or `=1.3.0` (default `*`).
    pub requirement: Option<String>,
    /// `auto` (default) or a preference list such as `Q8_0,Q4_1`.
    pub quantization: Option<String>,
    /// With `auto`: pick the highest precision that fits in this many bytes.
    pub memory_budget_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ResolutionInfo {
    pub model: String,
    pub version: String,
    pub state: String,
    pub artifact: ArtifactInfo,
}

// ---- system prompts ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreatePromptVersionRequest {
    pub text: String,
    /// A Jinja chat template that replaces the model's own.
    #[serde(default)]
    pub chat_template: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PromptInfo {
    pub name: String,
    pub version: u32,
    pub text: String,
    pub chat_template: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PromptSummaryInfo {
    pub name: String,
    pub latest_version: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: OffsetDateTime,
}

// ---- escalation policies ----

/// One version of an escalation policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PolicyInfo {
    pub name: String,
    pub version: u32,
    /// The policy; its upstream credential is a reference (`env:NAME`,
    /// `file:/path`) resolved on the node, never a key.
    pub spec: PolicyDocument,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PolicySummaryInfo {
    pub name: String,
    pub latest_version: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: OffsetDateTime,
}

// ---- auth ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateTokenRequest {
    /// Who the token is for, e.g. `ci-pipeline` or `alice@example.com`.
    pub subject: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// Lifetime in seconds (default 30 days, at most one year).
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenInfo {
    pub token: String,
    /// The token's id (`jti`): what `flotilla token revoke` takes.
    #[serde(default)]
    pub id: String,
    pub subject: String,
    pub role: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct WhoAmI {
    pub subject: String,
    pub role: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
}

// ---- fleet ----

/// `POST /api/v1/nodes/tokens`: a bootstrap token for enrolling agents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateBootstrapTokenRequest {
    /// Lifetime in seconds (default 3600, at most 30 days).
    pub ttl_seconds: Option<u64>,
    /// How many agents may enrol with it (default 1).
    pub uses: Option<u32>,
    /// Bind it to a node name or a glob of `*` and `?` (`rack7-*`): only
    /// matching names may enrol with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Make it the operator's approval to replace the enrolled node of this
    /// exact name (binds the token to that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
}

/// A bootstrap token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BootstrapTokenRecord {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
    pub uses_left: u32,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    /// The node names it may enrol (absent: any).
    pub node: Option<String>,
    /// Whether it may replace the enrolled node named by `node`.
    pub replace: bool,
    pub revoked: bool,
}

/// A human/API token as listed: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenRecord {
    /// The token's id (`jti`).
    pub id: String,
    pub subject: String,
    pub role: String,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BootstrapTokenInfo {
    /// `flt_<id>_<secret>`: shown once; the controller keeps only a hash.
    pub token: String,
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
    pub uses: u32,
}

/// A node of the fleet: its identity, what it should serve (`assignment`,
/// with the node's `desired_generation`), what its agent last reported
/// (`observed`) and its latest health sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct NodeInfo {
    pub name: String,
    /// `pending` (awaiting approval), `active` or `cordoned`.
    pub status: String,
    /// Connected and heartbeating within three heartbeat intervals.
    pub ready: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    pub agent_version: String,
    pub inventory: NodeInventoryInfo,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub enrolled_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_heartbeat_at: Option<OffsetDateTime>,
    /// Increases with every change of what the node should serve.
    pub desired_generation: u64,
    /// What the node should serve; null when nothing is assigned.
    pub assignment: Option<AssignmentInfo>,
    /// What the node's agent last reported; null before its first report.
    pub observed: Option<ObservedInfo>,
    /// The latest health sample; null before the first heartbeat.
    pub health: Option<HealthInfo>,
}

/// What a node should serve: one artifact of a model version, and a
/// system prompt version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AssignmentInfo {
    pub model: String,
    pub version: String,
    pub quantization: String,
    pub digest: String,
    pub size_bytes: u64,
    /// `name@version`, or null for none.
    pub prompt: Option<String>,
    /// `prepend`, `replace` or `forbid`.
    #[serde(default)]
    pub prompt_policy: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `name@version` of the escalation policy; null for none (the node
    /// never calls out).
    #[serde(default)]
    pub policy: Option<String>,
    /// What the policy lets the node do: `forbidden`, or `allowed: MODEL at
    /// URL (key REF)` with the credential's reference, never its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// The generation of the operator's assignment this comes from.
    pub generation: u64,
    /// What the assignment targeted: `node=NAME` or `selector k=v,...`.
    pub target: String,
}

/// What a node's agent reported about its desired state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ObservedInfo {
    /// The desired generation the report is about.
    pub generation: u64,
    /// `idle`, `pending`, `downloading`, `verifying`, `loading`, `ready` or
    /// `failed`.
    pub phase: String,
    pub digest: Option<String>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Why, when `phase` is `failed`.
    pub reason: Option<String>,
    /// What the node serves right now (possibly the previous artifact).
    pub serving_digest: Option<String>,
}

/// `GET /api/v1/nodes/{name}/health`: down-sampled health history, one
/// point per minute, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HealthHistory {
    pub node: String,
    pub points: Vec<HealthPoint>,
}

/// Query of `GET /api/v1/nodes/{name}/health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(IntoParams))]
pub struct HealthHistoryQuery {
    /// How far back, in minutes (1–1440, default 60).
    pub minutes: Option<u32>,
}

/// `PATCH /api/v1/nodes/{name}/labels`: sets and removes labels in one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UpdateLabelsRequest {
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `POST /api/v1/assignments`: what a node, or every node matching a label
/// selector, should serve. Exactly one of `node` and `selector`. A node's
/// own assignment wins over selectors; among selectors the newest wins. A
/// new assignment replaces an older one with the same target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateAssignmentRequest {
    pub node: Option<String>,
    pub selector: Option<std::collections::BTreeMap<String, String>>,
    pub model: String,
    /// An exact version or a semver requirement such as `^1.2`.
    pub version: String,
    /// e.g. `Q4_1`; default: the most precise artifact of the version.
    pub quantization: Option<String>,
    /// `name@version` of a system prompt.
    pub prompt: Option<String>,
    /// What a chat request's own system message does with the assigned
    /// prompt: `prepend` (default), `replace` or `forbid`.
    pub prompt_policy: Option<String>,
    /// Other names clients may ask for the model by (model-style names).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `name@version` of an escalation policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// An operator's assignment as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AssignmentRecord {
    /// Identifies the assignment; also the desired generation it created.
    pub generation: u64,
    pub node: Option<String>,
    pub selector: Option<std::collections::BTreeMap<String, String>>,
    pub model: String,
    pub version: String,
    pub quantization: String,
    pub digest: String,
    pub size_bytes: u64,
    pub prompt: Option<String>,
    /// `prepend`, `replace` or `forbid`.
    #[serde(default)]
    pub prompt_policy: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `name@version` of the escalation policy, or null.
    #[serde(default)]
    pub policy: Option<String>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
}

/// The answer to creating or removing an assignment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AssignmentChange {
    /// The assignment created (null when one was removed).
    pub assignment: Option<AssignmentRecord>,
    /// Nodes whose desired state changed, with their new generations.
    pub nodes_changed: Vec<NodeGeneration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct NodeGeneration {
    pub node: String,
    pub generation: u64,
}

/// Query of `DELETE /api/v1/assignments`: which assignment to remove.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(IntoParams))]
pub struct RemoveAssignmentQuery {
    pub node: Option<String>,
    /// `k=v,k2=v2`
    pub selector: Option<String>,
}

/// `POST /api/v1/rollouts`: a staged rollout of a model version to the
/// active nodes matching `selector`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateRolloutRequest {
    pub name: String,
    pub model: String,
    /// An exact version or a semver requirement such as `^1.2`.
    pub version: String,
    pub selector: std::collections::BTreeMap<String, String>,
    /// `auto` (default: the highest precision that fits each node) or a
    /// preference list such as `Q8_0,Q4_1`.
    pub quantization: Option<String>,
    /// `name@version` of a system prompt.
    pub prompt: Option<String>,
    /// What a chat request's own system message does with the assigned
    /// prompt: `prepend` (default), `replace` or `forbid`.
    pub prompt_policy: Option<String>,
    /// Other names clients may ask for the model by (model-style names).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `name@version` of an escalation policy (default: each node keeps
    /// its current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Cumulative waves such as `1,10%,50%,100%` (default `1,100%`).
    pub waves: Option<String>,
    /// How long every node of a wave must stay ready before the next
    /// (default 30 000).
    pub bake_ms: Option<u64>,
    /// Nodes of a wave changing at once (default 1).
    pub max_unavailable: Option<u32>,
    /// Restore every touched node when a gate trips (default false: halt).
    #[serde(default)]
    pub auto_rollback: bool,
    /// Failed activations tolerated before the rollout halts (default 0).
    pub max_failed_activations: Option<u32>,
    /// Halt when a node of the current wave has failed more than this
    /// percentage of its requests since activating the new version
    /// (default: no error-rate gate).
    pub max_error_rate_percent: Option<u32>,
    /// Requests a node must have answered before its error rate (and its
    /// escalation rate) counts (default 20).
    pub min_requests_for_error_rate: Option<u32>,
    /// Halt when a node of the current wave has sent more than this
    /// percentage of the requests it answered to its escalation policy's
    /// upstream since activating the new version (default: no
    /// escalation-rate gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_escalation_rate_percent: Option<u32>,
    /// Plan only: report which node would get which artifact.
    #[serde(default)]
    pub dry_run: bool,
}

/// One node of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RolloutNodeInfo {
    pub node: String,
    /// 1-based.
    pub wave: u32,
    /// `waiting`, `updating`, `ready`, `failed`, `unschedulable`, `pinned`
    /// or `rolled_back`.
    pub state: String,
    pub version: Option<String>,
    pub quantization: Option<String>,
    pub digest: Option<String>,
    /// Why the node is unschedulable, failed or pinned.
    pub reason: Option<String>,
    /// What its agent reports now (`downloading`, `ready`, …).
    pub phase: Option<String>,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// Connected and heartbeating.
    #[serde(default)]
    pub ready: bool,
    /// What the node was assigned before the rollout (in a dry run: now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<ServingSummary>,
    /// What the rollout assigns it, prompt and aliases included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ServingSummary>,
}

/// One node's assignment, as a rollout shows it: model, version, prompt
/// and aliases.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ServingSummary {
    pub model: String,
    pub version: String,
    /// `name@version`, when the assignment carries a system prompt.
    pub prompt: Option<String>,
    /// `prepend`, `replace` or `forbid`.
    pub prompt_policy: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `name@version` of the escalation policy, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A rollout and its nodes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RolloutInfo {
    pub name: String,
    /// `pending`, `progressing`, `baking`, `paused`, `halted`,
    /// `rolling_back`, `rolled_back`, `aborted` or `succeeded`; `dry_run`
    /// for a plan that was not recorded.
    pub state: String,
    pub model: String,
    pub version: String,
    pub quantization: String,
    pub prompt: Option<String>,
    /// `name@version` of the escalation policy it assigns, if any.
    #[serde(default)]
    pub policy: Option<String>,
    pub selector: std::collections::BTreeMap<String, String>,
    pub waves: String,
    pub wave_count: u32,
    /// 1-based; the wave being worked on.
    pub current_wave: u32,
    pub bake_ms: u64,
    pub max_unavailable: u32,
    pub auto_rollback: bool,
    pub reason: Option<String>,
    pub generation: u64,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub bake_started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub updated_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub nodes: Vec<RolloutNodeInfo>,
}

/// `GET /api/v1/rollouts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RolloutList {
    pub items: Vec<RolloutInfo>,
}

/// Query of `DELETE /api/v1/rollouts/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(IntoParams))]
pub struct DeleteRolloutQuery {
    /// Remove the node-level assignments the rollout wrote, so that its
    /// nodes fall back to their selector assignments (pushed at once).
    /// Without it they stay, as plain node assignments.
    #[serde(default)]
    pub release_pins: bool,
}

/// `DELETE /api/v1/rollouts/{name}`: what deleting the rollout did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DeletedRolloutInfo {
    pub name: String,
    /// Nodes holding a node-level assignment the rollout wrote.
    pub nodes: Vec<String>,
    /// Whether those assignments were removed (else they stay, as plain
    /// node assignments that win over selectors).
    pub released: bool,
    /// Nodes whose desired state changed.
    pub nodes_changed: u32,
}

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EventInfo {
    pub id: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
    /// Who: an operator's subject, or `controller`.
    pub actor: String,
    pub rollout: Option<String>,
    pub node: Option<String>,
    /// What: `rollout.created`, `wave.started`, `node.failed`, …
    pub action: String,
    /// Why, in a sentence.
    pub message: String,
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(IntoParams))]
pub struct EventsQuery {
    pub rollout: Option<String>,
    /// Events with ids after this one.
    pub after: Option<u64>,
    /// At most this many (1–1000, default 1000).
    pub limit: Option<u32>,
}

/// `GET /api/v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EventList {
    pub items: Vec<EventInfo>,
}
