//! Persistence of the controller's state behind one interface, [`Store`],
//! implemented once ([`SqlStore`]) on sqlx for two backends: Postgres
//! (production, several controller replicas) and SQLite (the embedded
//! default for a single box). The queries are written once over a small
//! dialect (`sql.rs`); `postgres.rs` and `sqlite.rs` keep only what truly
//! differs (connecting, leadership, the change feed).
//!
//! What is persisted: models, versions, artifacts (their metadata; the bytes
//! live in the object store), system prompts, escalation policies (their
//! upstream credential as a reference only), enrolled nodes and bootstrap
//! tokens (a hash of each token's secret, never the secret). Nothing else is kept in memory
//! across requests. Invariants are enforced by the schema (unique constraints,
//! foreign keys), so concurrent writers cannot create duplicates, and every
//! change that touches several rows runs in one transaction.
//!
//! Both backends pass the same conformance suite (`tests/store_conformance.rs`).

mod fleet;
mod identity;
mod policies;
mod postgres;
mod rollout_rows;
mod rollouts;
mod rows;
mod sql;
mod sql_store;
mod sqlite;
mod transaction;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::domain::DirectoryEntry;
use crate::domain::{
    Artifact, Assignment, AssignmentTarget, BootstrapToken, Digest, EscalationPolicy, HealthPoint,
    HealthSample, Model, ModelName, ModelVersion, NewArtifact, NewAssignment, NewNode, Node,
    NodeChange, NodeDesired, NodeInventory, NodeName, NodePattern, NodeStatus, ObservedState, Page,
    PageRequest, PolicyName, PolicyRef, PolicySpec, PolicySummary, PromptName, PromptRef,
    PromptSummary, SecretHash, SystemPrompt, TokenRejection, VersionState,
};
use crate::domain::{
    Event, NewEvent, Rollout, RolloutName, RolloutNode, RolloutNodeState, RolloutSpec, RolloutState,
};

pub use sql_store::SqlStore;

/// Errors of the store. `NotFound`, `AlreadyExists` and `FailedPrecondition`
/// are the caller's fault and name the object; `Backend` and `Corrupt` are
/// ours.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(Missing),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A value read back from the database does not convert to its domain
    /// type (a bad state string, an unparsable version): data corruption or a
    /// schema/code mismatch, never the client's fault.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The `before_commit` step of [`Store::add_artifact`] failed; the
    /// transaction was rolled back.
    #[error("{0}")]
    BeforeCommit(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a lookup or a change did not find. Each message is written here
/// once, for the store and for the services that report a missing object
/// the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("model {0} not found")]
    Model(ModelName),
    #[error("model {model} has no version {version}")]
    Version {
        model: ModelName,
        version: semver::Version,
    },
    #[error("prompt {0} not found")]
    Prompt(PromptName),
    /// A prompt as an assignment or rollout names it (`NAME` or `NAME@N`).
    #[error("system prompt {0} not found")]
    PromptRef(PromptRef),
    #[error("escalation policy {0} not found")]
    Policy(PolicyName),
    /// A policy as an assignment or rollout names it (`NAME` or `NAME@N`).
    #[error("escalation policy {0} not found")]
    PolicyRef(PolicyRef),
    #[error("node {0} not found")]
    Node(NodeName),
    #[error("no assignment for {0}")]
    Assignment(AssignmentTarget),
    #[error("rollout {0} not found")]
    Rollout(RolloutName),
    #[error("node {node} is not part of rollout {rollout}")]
    RolloutNode {
        rollout: RolloutName,
        node: NodeName,
    },
    #[error("bootstrap token {0} not found")]
    BootstrapToken(String),
    #[error("api token {0} not found")]
    ApiToken(String),
    /// A row that a change refers to (by foreign key) is gone; the
    /// database's own message says which.
    #[error("a row referenced by the change does not exist ({0})")]
    Referenced(String),
}

/// Work to run inside the transaction that inserts an artifact, just before it
/// commits: the registry moves the uploaded blob to its content address here,
/// so that a row never exists without its blob, and a failed move rolls the
/// row back.
pub type BeforeCommit = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), String>> + Send>;

/// Outcome of [`Store::add_artifact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactInsert {
    Created(Artifact),
    /// The version already had an artifact with these exact bytes; nothing
    /// was written and `before_commit` was not run.
    AlreadyPresent(Artifact),
}

/// A bootstrap token to record. Only the hash of its secret is stored.
#[derive(Debug, Clone)]
pub struct NewBootstrapToken {
    pub id: String,
    pub secret_hash: SecretHash,
    /// Counted from the database's clock at insertion.
    pub ttl: Duration,
    pub uses: u32,
    /// The subject of the operator who created it.
    pub created_by: String,
    /// The node names it may enrol (`None`: any).
    pub node_pattern: Option<NodePattern>,
    /// It may replace the enrolled node named exactly by `node_pattern`.
    pub may_replace: bool,
}

/// An agent's request to enrol, after validation.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub token_id: String,
    pub secret_hash: SecretHash,
    pub node: NewNode,
    /// Replace an existing node of the same name instead of refusing; the
    /// store allows it only when an operator approved the replacement
    /// ([`Store::approve_replacement`]) or the token was made for it.
    pub replace_existing: bool,
    /// `Pending` when operators must approve new nodes, else `Active`.
    pub initial_status: NodeStatus,
    /// Hash of the node's new refresh secret (for `RenewCredential`).
    pub refresh_secret_hash: SecretHash,
}

/// What agents reported since the last flush, for one node; `None` fields
/// leave the stored value as it is.
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub name: NodeName,
    pub observed: Option<ObservedState>,
    pub health: Option<HealthSample>,
    pub last_heartbeat_unix_ms: Option<i64>,
}

/// Outcome of [`Store::enroll_node`].
#[derive(Debug, Clone, PartialEq)]
pub enum EnrollOutcome {
    Enrolled(Box<Node>),
    /// The token did not allow it; nothing was written.
    Rejected(TokenRejection),
}

/// A rollout to record, with its nodes planned into waves and the
/// artifact chosen for each. The store gives it its generation.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub name: RolloutName,
    pub spec: RolloutSpec,
    pub wave_count: u32,
    /// `Waiting` or `Unschedulable`; the store marks pinned nodes.
    pub nodes: Vec<RolloutNode>,
    pub created_by: String,
    pub events: Vec<NewEvent>,
}

/// One change of a rollout, applied atomically with a new generation.
/// `None` fields stay as they are.
#[derive(Debug, Clone)]
pub struct RolloutUpdate {
    pub name: RolloutName,
    /// Refuse the change unless the rollout is still at this generation.
    pub expected_generation: Option<u64>,
    pub state: Option<RolloutState>,
    pub current_wave: Option<u32>,
    pub bake_started_at: Option<Option<time::OffsetDateTime>>,
    pub skip_bake: Option<bool>,
    pub reason: Option<Option<String>>,
    /// State changes that leave desired state alone.
    pub node_states: Vec<(NodeName, RolloutNodeState, Option<String>)>,
    /// Nodes to give the rollout's artifact (pinned ones become `Pinned`).
    pub start: Vec<NodeName>,
    /// Restore every touched node's previous node-level assignment.
    pub restore: bool,
    pub events: Vec<NewEvent>,
}

impl RolloutUpdate {
    /// A change of nothing yet, refused unless the rollout is still at
    /// `expected_generation` (when given).
    pub fn new(name: RolloutName, expected_generation: Option<u64>) -> Self {
        Self {
            name,
            expected_generation,
            state: None,
            current_wave: None,
            bake_started_at: None,
            skip_bake: None,
            reason: None,
            node_states: Vec::new(),
            start: Vec::new(),
            restore: false,
            events: Vec::new(),
        }
    }
}

/// A rollout to delete (see [`Store::delete_rollout`]).
#[derive(Debug, Clone)]
pub struct RolloutDeletion {
    pub name: RolloutName,
    /// Remove the node-level assignments the rollout wrote instead of
    /// keeping them as plain node assignments.
    pub release_pins: bool,
    /// Recorded with the deletion.
    pub event: NewEvent,
}

/// What deleting a rollout did.
#[derive(Debug, Clone)]
pub struct DeletedRollout {
    /// The nodes whose node-level assignment the rollout had written: kept
    /// as plain node assignments, or released.
    pub nodes: Vec<NodeName>,
    /// Desired states that changed, to push.
    pub changed: Vec<NodeDesired>,
}

/// Which backend a store runs on, for `/readyz`, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Postgres,
    Sqlite,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// The controller's persistent state. Implementations must make every method
/// atomic (one transaction) and map constraint violations to
/// [`StoreError::AlreadyExists`] with a message naming the object.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> StoreBackend;

    /// Checks that the database answers (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    // ---- models ----

    /// Creates a model. `AlreadyExists` if the name is taken.
    async fn create_model(&self, name: &ModelName, description: &str) -> StoreResult<Model>;
    async fn get_model(&self, name: &ModelName) -> StoreResult<Option<Model>>;
    /// Models ordered by name; the cursor is the last name of the page.
    async fn list_models(&self, page: &PageRequest) -> StoreResult<Page<Model>>;

    // ---- versions ----

    /// Creates a draft version. `NotFound` if the model does not exist,
    /// `AlreadyExists` if the version does.
    async fn create_version(
        &self,
        model: &ModelName,
        version: &semver::Version,
        notes: &str,
    ) -> StoreResult<ModelVersion>;
    async fn get_version(
        &self,
        model: &ModelName,
        version: &semver::Version,
    ) -> StoreResult<Option<ModelVersion>>;
    /// Versions of one model in creation order; the cursor is opaque.
    async fn list_versions(
        &self,
        model: &ModelName,
        page: &PageRequest,
    ) -> StoreResult<Page<ModelVersion>>;
    /// Moves a version to `next`, checking [`VersionState::can_become`] inside
    /// the transaction (`FailedPrecondition` otherwise). Publishing a version
    /// without artifacts is a `FailedPrecondition` too.
    async fn set_version_state(
        &self,
        model: &ModelName,
        version: &semver::Version,
        next: VersionState,
    ) -> StoreResult<ModelVersion>;

    // ---- artifacts ----

    /// Adds an artifact to a draft version, running `before_commit` inside the
    /// transaction. `NotFound` if the version does not exist,
    /// `FailedPrecondition` if it is not a draft, `AlreadyExists` if it has
    /// another artifact with the same quantization. The same digest added
    /// twice to one version is [`ArtifactInsert::AlreadyPresent`].
    async fn add_artifact(
        &self,
        model: &ModelName,
        version: &semver::Version,
        artifact: &NewArtifact,
        before_commit: BeforeCommit,
    ) -> StoreResult<ArtifactInsert>;
    async fn list_artifacts(
        &self,
        model: &ModelName,
        version: &semver::Version,
    ) -> StoreResult<Vec<Artifact>>;
    /// Every artifact, of any model, whose bytes have this digest.
    async fn find_artifacts_by_digest(&self, digest: &Digest) -> StoreResult<Vec<Artifact>>;
    /// All versions of a model that a requirement could resolve to
    /// (published or deprecated), each with its artifacts.
    async fn resolvable_versions(
        &self,
        model: &ModelName,
    ) -> StoreResult<Vec<(ModelVersion, Vec<Artifact>)>>;

    // ---- system prompts ----

    /// Appends a new immutable version (previous latest + 1, starting at 1).
    async fn create_prompt_version(
        &self,
        name: &PromptName,
        text: &str,
        chat_template: Option<&str>,
    ) -> StoreResult<SystemPrompt>;
    /// One version, or the latest when `version` is `None`.
    async fn get_prompt(
        &self,
        name: &PromptName,
        version: Option<u32>,
    ) -> StoreResult<Option<SystemPrompt>>;
    /// Prompts ordered by name; the cursor is the last name of the page.
    async fn list_prompts(&self, page: &PageRequest) -> StoreResult<Page<PromptSummary>>;
    /// Versions of one prompt, newest first.
    async fn list_prompt_versions(
        &self,
        name: &PromptName,
        page: &PageRequest,
    ) -> StoreResult<Page<SystemPrompt>>;

    // ---- escalation policies ----

    /// Appends a new immutable version (previous latest + 1, starting at 1).
    async fn create_policy_version(
        &self,
        name: &PolicyName,
        spec: &PolicySpec,
    ) -> StoreResult<EscalationPolicy>;
    /// One version, or the latest when `version` is `None`.
    async fn get_policy(
        &self,
        name: &PolicyName,
        version: Option<u32>,
    ) -> StoreResult<Option<EscalationPolicy>>;
    /// Policies ordered by name; the cursor is the last name of the page.
    async fn list_policies(&self, page: &PageRequest) -> StoreResult<Page<PolicySummary>>;
    /// Versions of one policy, newest first.
    async fn list_policy_versions(
        &self,
        name: &PolicyName,
        page: &PageRequest,
    ) -> StoreResult<Page<EscalationPolicy>>;

    // ---- fleet ----

    /// Records a bootstrap token. `AlreadyExists` if its id is taken.
    async fn create_bootstrap_token(
        &self,
        token: &NewBootstrapToken,
    ) -> StoreResult<BootstrapToken>;
    /// In one transaction: checks the token (exists, secret hash matches,
    /// not expired, uses left) under a lock, takes one use, and inserts the
    /// node or, with `replace_existing`, replaces the one of that name.
    /// Concurrent enrolments never take more uses than the token has.
    /// `AlreadyExists` (and the use is not taken) if the name is enrolled
    /// and `replace_existing` is false.
    async fn enroll_node(&self, enrolment: &Enrolment) -> StoreResult<EnrollOutcome>;
    async fn get_node(&self, name: &NodeName) -> StoreResult<Option<Node>>;
    /// Nodes ordered by name; the cursor is the last name of the page.
    async fn list_nodes(&self, page: &PageRequest) -> StoreResult<Page<Node>>;
    /// Applies an operator's change (status, drain, labels) to a node and
    /// re-places it under the assignments, in one transaction. Returns the
    /// node and, when its desired state or status changed, what to push to
    /// its agent. `NotFound` if no such node; `FailedPrecondition` if the
    /// labels would become invalid.
    async fn change_node(
        &self,
        name: &NodeName,
        change: &NodeChange,
    ) -> StoreResult<(Node, Option<NodeDesired>)>;
    /// Records what a node's agent reports about itself at hello (its
    /// hardware may have changed since enrolment). `NotFound` if no such
    /// node.
    async fn update_node_inventory(
        &self,
        name: &NodeName,
        inventory: &NodeInventory,
        agent_version: &str,
    ) -> StoreResult<()>;
    /// The hash of a node's refresh secret: `None` if no such node,
    /// `Some(None)` if it enrolled before refresh secrets existed.
    async fn refresh_secret_hash(&self, name: &NodeName) -> StoreResult<Option<Option<Vec<u8>>>>;

    // ---- assignments and reports ----

    /// Records an assignment, replacing the one with the same target, and
    /// re-places every node, in one transaction: the nodes whose desired
    /// state changed get the assignment's generation. `NotFound` if it
    /// targets a node that does not exist.
    async fn create_assignment(
        &self,
        new: &NewAssignment,
    ) -> StoreResult<(Assignment, Vec<NodeDesired>)>;
    /// Removes the assignment of `target` and re-places every node.
    /// `NotFound` if there is none.
    async fn remove_assignment(&self, target: &AssignmentTarget) -> StoreResult<Vec<NodeDesired>>;
    /// Assignments in generation order; the cursor is the last generation.
    async fn list_assignments(&self, page: &PageRequest) -> StoreResult<Page<Assignment>>;
    /// Writes a batch of agents' reports (one transaction for the batch).
    async fn write_reports(&self, reports: &[NodeReport]) -> StoreResult<()>;
    /// Writes (or overwrites) minutes of health history.
    async fn write_health_minutes(&self, points: &[(NodeName, HealthPoint)]) -> StoreResult<()>;
    /// A node's health history since `since_unix`, oldest first.
    async fn health_minutes(
        &self,
        name: &NodeName,
        since_unix: i64,
    ) -> StoreResult<Vec<HealthPoint>>;
    /// Deletes health history older than `before_unix`; returns rows removed.
    async fn prune_health_minutes(&self, before_unix: i64) -> StoreResult<u64>;

    // ---- change notification between replicas ----

    /// The desired state (and status) of every node whose desired
    /// generation is above `after`, oldest first.
    async fn desired_changed_since(&self, after: u64) -> StoreResult<Vec<NodeDesired>>;
    /// Announcements of changes of desired state committed by any
    /// controller sharing this database, or `None` where one process owns
    /// the database (SQLite) and every change is made by this one.
    async fn change_feed(&self) -> StoreResult<Option<Box<dyn ChangeFeed>>>;
    /// Routing between replicas: marks replica `replica`'s entries of the
    /// routing directory fresh, storing `routes` as them when `changed` (or
    /// when the store has none of this replica's), and returns the entries
    /// of the other replicas that did so within `fresh_within`, the most
    /// recently changed replica's first. Times are the database's, so the
    /// replicas' clocks need not agree. `None` where one process owns the
    /// database (SQLite): there are no other replicas.
    async fn exchange_routes(
        &self,
        replica: &str,
        routes: &[DirectoryEntry],
        changed: bool,
        fresh_within: Duration,
    ) -> StoreResult<Option<Vec<DirectoryEntry>>>;

    // ---- rollouts and events ----

    /// Records a rollout, its nodes and events with a new generation.
    /// `AlreadyExists` if the name is taken or a node is in another active
    /// rollout (the message names both).
    async fn create_rollout(&self, new: &NewRollout) -> StoreResult<(Rollout, Vec<RolloutNode>)>;
    async fn get_rollout(
        &self,
        name: &RolloutName,
    ) -> StoreResult<Option<(Rollout, Vec<RolloutNode>)>>;
    /// Every rollout, oldest first.
    async fn list_rollouts(&self) -> StoreResult<Vec<Rollout>>;
    /// Applies one change of a rollout in one transaction (see
    /// [`RolloutUpdate`]). `NotFound` if no such rollout,
    /// `FailedPrecondition` if it moved past `expected_generation`.
    async fn update_rollout(
        &self,
        update: &RolloutUpdate,
    ) -> StoreResult<(Rollout, Vec<NodeDesired>)>;
    /// Deletes a rollout that has ended (see [`RolloutDeletion`]).
    /// `NotFound` if no such rollout, `FailedPrecondition` while it is
    /// still under way.
    async fn delete_rollout(&self, deletion: &RolloutDeletion) -> StoreResult<DeletedRollout>;
    /// Nodes an operator pinned with a node-level assignment.
    async fn pinned_nodes(&self) -> StoreResult<Vec<NodeName>>;
    /// Events in id order after `after`, of one rollout or all.
    async fn list_events(
        &self,
        rollout: Option<&RolloutName>,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<Event>>;

    /// Tries to become the one controller that runs the rollout engine.
    /// Postgres: a session advisory lock on a dedicated connection, held
    /// until that connection closes (so a crashed leader releases it);
    /// SQLite: one box, always the leader. `None`: another replica leads.
    async fn try_lead(&self) -> StoreResult<Option<Box<dyn Leadership>>>;

    // ---- registry lifecycle (issue 19) ----

    /// Deletes a draft version and its artifact rows (the blobs stay: another
    /// version may share them, and a later push of the same bytes reuses
    /// them). `NotFound` if there is no such version, `FailedPrecondition` if
    /// it has been published (assignments and rollouts may name it).
    async fn delete_draft_version(
        &self,
        model: &ModelName,
        version: &semver::Version,
    ) -> StoreResult<()>;
    /// Deletes a model none of whose versions was ever published, with its
    /// drafts. `NotFound` if there is no such model, `FailedPrecondition`
    /// naming the published versions otherwise.
    async fn delete_unused_model(&self, model: &ModelName) -> StoreResult<()>;
    /// Appends events to the audit log (the API's record of each mutation).
    async fn append_events(&self, events: &[NewEvent]) -> StoreResult<()>;

    // ---- identity and access (issue 16: control plane) ----

    /// Every bootstrap token, newest first (expired and revoked included,
    /// for the operator's view; there are few).
    async fn list_bootstrap_tokens(&self) -> StoreResult<Vec<BootstrapToken>>;
    /// Revokes a bootstrap token: it enrols nothing from now on.
    /// `NotFound` if no such id.
    async fn revoke_bootstrap_token(&self, id: &str) -> StoreResult<BootstrapToken>;
    /// A node's current credential generation (`None`: no such node).
    async fn credential_generation(&self, name: &NodeName) -> StoreResult<Option<u64>>;
    /// Lets the next enrolment under `name` replace the node. `NotFound`
    /// if no such node.
    async fn approve_replacement(&self, name: &NodeName) -> StoreResult<()>;
    /// Removes a node: its row, its node-level assignment and its health
    /// history. Its credentials stop working with the row. `NotFound` if
    /// no such node.
    async fn remove_node(&self, name: &NodeName) -> StoreResult<()>;
    /// Records a minted API token by its id (`jti`). `AlreadyExists` if
    /// the id is taken.
    async fn record_api_token(&self, token: &ApiToken) -> StoreResult<()>;
    /// Every recorded API token, newest first.
    async fn list_api_tokens(&self) -> StoreResult<Vec<ApiToken>>;
    /// Revokes an API token. `NotFound` if no such id.
    async fn revoke_api_token(&self, id: &str) -> StoreResult<ApiToken>;
    /// Ids of revoked API tokens that have not expired yet (an expired
    /// token fails anyway): what every request is checked against.
    async fn revoked_api_token_ids(&self) -> StoreResult<Vec<String>>;
}

/// A human/API token the controller minted, as recorded: never the token
/// string, only its id (`jti`) and claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub subject: String,
    pub role: crate::auth::Role,
    pub created_by: String,
    pub created_at: time::OffsetDateTime,
    pub expires_at: time::OffsetDateTime,
    pub revoked_at: Option<time::OffsetDateTime>,
}

/// Held by the controller that runs the rollout engine.
#[async_trait]
pub trait Leadership: Send {
    /// Whether the lock is still held (its connection still answers).
    async fn still_leader(&mut self) -> bool;
}

/// The advisory lock key of the rollout engine's leader ("flotilla").
pub const LEADER_LOCK_KEY: i64 = 0x666c_6f74_696c_6c61;

/// SQLite's leadership: one process owns the database file.
pub struct SoleLeader;

#[async_trait]
impl Leadership for SoleLeader {
    async fn still_leader(&mut self) -> bool {
        true
    }
}

/// Wakes a controller replica when some replica commits a change of
/// desired state (Postgres `LISTEN`/`NOTIFY`). An announcement carries no
/// data: the listener re-reads what changed by generation, so a lost
/// announcement costs latency, never correctness.
#[async_trait]
pub trait ChangeFeed: Send {
    /// Waits for the next announcement. Also returns when announcements may
    /// have been missed (the listening connection was lost and will be
    /// re-opened): the caller re-reads either way.
    async fn next(&mut self) -> StoreResult<()>;
}

/// Opens the store named by a database URL (`postgres://…` or `sqlite:…`) and
/// applies pending migrations.
pub async fn connect(database_url: &str) -> StoreResult<Arc<dyn Store>> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        let pool = postgres::connect(database_url).await?;
        Ok(Arc::new(SqlStore::new(sql::Pool::Postgres(pool))))
    } else if database_url.starts_with("sqlite:") {
        let pool = sqlite::connect(database_url).await?;
        Ok(Arc::new(SqlStore::new(sql::Pool::Sqlite(pool))))
    } else {
        Err(StoreError::FailedPrecondition(format!(
            "unsupported database url scheme in {:?}: expected postgres:// or sqlite:",
            redact_url(database_url)
        )))
    }
}

/// A database URL with its password replaced, safe for logs and errors.
pub fn redact_url(database_url: &str) -> String {
    match url::Url::parse(database_url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable url>".to_owned(),
    }
}
