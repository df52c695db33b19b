//! Business logic of the fleet: bootstrap tokens, enrolment, listing and
//! approving nodes. Shared by the REST API (operators) and the gRPC `Fleet`
//! service (agents), so both enforce the same rules.
//!
//! What is persisted (through the store): nodes, and bootstrap tokens as a
//! hash of their secret. The token string itself exists only in the response
//! to the operator who created it; node credentials are minted on demand and
//! never stored. A node's refresh secret is stored as a hash too.
//!
//! Assignments, operators' node changes and the sync streams meet here:
//! every change of desired state is committed by the store (which gives it
//! a generation) and then pushed through the [`SyncHub`] to the streams
//! open on this controller.

pub mod follow;
pub mod hub;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;

use crate::auth::node_ca::NodeCa;
use crate::auth::{AuthError, Authenticator, MintedToken, Principal, Revocations, Role};
use crate::domain::{
    AssignedPolicy, Assignment, AssignmentTarget, BootstrapSecret, BootstrapToken,
    DesiredAssignment, DesiredPrompt, HealthPoint, ModelName, NewAssignment, NewEvent, NewNode,
    Node, NodeChange, NodeDesired, NodeInventory, NodeName, NodePattern, NodeStatus, Page,
    PageRequest, PolicyRef, PromptPolicy, PromptRef, Quantization, QuantizationPolicy, SecretHash,
    TokenRejection, resolve,
};
use crate::store::{
    ApiToken, EnrollOutcome, Enrolment, Missing, NewBootstrapToken, Store, StoreBackend, StoreError,
};
pub use follow::ChangeFollower;
pub use hub::{
    Directory, DirectoryEntry, Endpoints, Flusher, ModelLoad, NodeRuntime, PushedState, Session,
    SyncHub,
};

/// Default heartbeat interval agents are told to keep.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Longest health history one request may ask for.
pub const MAX_HISTORY: Duration = Duration::from_secs(24 * 3600);

/// Longest a bootstrap token may live: they are for enrolling boxes being
/// set up now, not standing credentials.
pub const MAX_BOOTSTRAP_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most uses one bootstrap token may have (a rack or a site at once).
pub const MAX_BOOTSTRAP_USES: u32 = 10_000;
/// A node name that would be shadowed by `/api/v1/nodes/tokens`.
const RESERVED_NODE_NAME: &str = "tokens";
/// Longest agent version string kept.
const MAX_AGENT_VERSION_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    TokenRejected(TokenRejection),
    /// Authenticated, but this is not allowed (a token bound to other
    /// names, an unapproved replacement).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A successful enrolment: the node as recorded, its credential and its
/// refresh secret (shown to the agent once; only a hash is stored).
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub node: Node,
    pub credential: String,
    pub credential_expires_at: OffsetDateTime,
    pub refresh_secret: String,
}

/// What an operator asks a node or selector to serve, before resolution.
#[derive(Debug, Clone)]
pub struct AssignRequest {
    pub target: AssignmentTarget,
    pub model: ModelName,
    pub requirement: semver::VersionReq,
    /// `None`: the most precise artifact of the version.
    pub quantization: Option<Quantization>,
    pub prompt: Option<PromptRef>,
    pub prompt_policy: PromptPolicy,
    /// Other names the node answers to for the model.
    pub aliases: Vec<ModelName>,
    /// The escalation policy version the node applies.
    pub escalation_policy: Option<PolicyRef>,
}

/// Tunables of the fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub require_approval: bool,
    pub heartbeat_interval: Duration,
}

/// The fleet's operations over the store. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
    require_approval: bool,
    hub: Arc<SyncHub>,
    /// The REST root agents download blobs from; known once REST is bound.
    blob_base_url: Arc<RwLock<String>>,
    /// Revoked API token ids, checked on every REST request.
    revocations: Arc<Revocations>,
    /// Issues node certificates at enrolment and renewal (`None`: nodes get
    /// none, as from a controller before node identity).
    node_ca: Option<Arc<NodeCa>>,
}

impl Fleet {
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>, config: FleetConfig) -> Self {
        let hub = SyncHub::new(config.heartbeat_interval);
        // Other replicas can share a Postgres database: not ready until the
        // change follower listens.
        hub.set_following_changes(store.backend() != StoreBackend::Postgres);
        Self {
            revocations: Arc::new(Revocations::new(store.clone())),
            store,
            auth,
            require_approval: config.require_approval,
            hub: Arc::new(hub),
            blob_base_url: Arc::new(RwLock::new(String::new())),
            node_ca: None,
        }
    }

    /// This fleet, issuing node certificates from `ca`.
    pub fn with_node_ca(self, ca: Arc<NodeCa>) -> Self {
        Self {
            node_ca: Some(ca),
            ..self
        }
    }

    /// The node CA, when this controller issues node certificates.
    pub fn node_ca(&self) -> Option<&Arc<NodeCa>> {
        self.node_ca.as_ref()
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    pub fn hub(&self) -> &Arc<SyncHub> {
        &self.hub
    }

    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    /// The flusher writing this fleet's agent reports; run it once.
    pub fn flusher(&self) -> Flusher {
        Flusher::new(self.hub.clone(), self.store.clone())
    }

    /// The follower of other replicas' changes; run it once.
    pub fn follower(&self) -> ChangeFollower {
        ChangeFollower::new(self.hub.clone(), self.store.clone())
    }

    pub fn set_blob_base_url(&self, url: String) {
        *self
            .blob_base_url
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = url;
    }

    pub fn blob_base_url(&self) -> String {
        self.blob_base_url
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Creates a bootstrap token; the returned secret is shown once and
    /// never stored.
    pub async fn create_bootstrap_token(
        &self,
        created_by: &str,
        ttl: Duration,
        uses: u32,
        binding: TokenBinding,
    ) -> Result<(BootstrapSecret, BootstrapToken), FleetError> {
        let (node_pattern, may_replace) = match binding {
            TokenBinding::Any => (None, false),
            TokenBinding::Nodes(pattern) => (Some(pattern), false),
            TokenBinding::Replace(name) => {
                let pattern = name
                    .as_str()
                    .parse::<NodePattern>()
                    .map_err(|error| FleetError::InvalidArgument(error.to_string()))?;
                (Some(pattern), true)
            }
        };
        if ttl.is_zero() || ttl > MAX_BOOTSTRAP_TTL {
            return Err(FleetError::InvalidArgument(format!(
                "bootstrap token ttl must be between 1 and {} seconds",
                MAX_BOOTSTRAP_TTL.as_secs()
            )));
        }
        if uses == 0 || uses > MAX_BOOTSTRAP_USES {
            return Err(FleetError::InvalidArgument(format!(
                "bootstrap token uses must be between 1 and {MAX_BOOTSTRAP_USES}"
            )));
        }
        let secret = BootstrapSecret::generate();
        let token = self
            .store
            .create_bootstrap_token(&NewBootstrapToken {
                id: secret.id().to_owned(),
                secret_hash: secret.secret_hash(),
                ttl,
                uses,
                created_by: created_by.to_owned(),
                node_pattern,
                may_replace,
            })
            .await?;
        tracing::info!(token_id = %token.id, uses, by = created_by, expires_at = %token.expires_at,
            node_pattern = ?token.node_pattern, may_replace, "bootstrap token created");
        Ok((secret, token))
    }

    /// Enrols a node with a bootstrap token: takes one use of the token,
    /// records the node (`pending` when approval is required, else
    /// `active`) and mints its credential.
    /// Recorded in the audit log, refused or not, under the token's id.
    pub async fn enroll(
        &self,
        bootstrap_token: &str,
        node: NewNode,
        replace_existing: bool,
    ) -> Result<Enrolled, FleetError> {
        let name = node.name.clone();
        let actor = bootstrap_token.parse::<BootstrapSecret>().map_or_else(
            |_| "an unknown bootstrap token".to_owned(),
            |secret| format!("bootstrap-token/{}", secret.id()),
        );
        let enrolled = self
            .enroll_with_token(bootstrap_token, node, replace_existing)
            .await;
        let message = match &enrolled {
            Ok(enrolled) if replace_existing => {
                format!(
                    "enrolled as {}, replacing the node of that name",
                    enrolled.node.status
                )
            }
            Ok(enrolled) => format!("enrolled as {}", enrolled.node.status),
            Err(error) => format!("refused: {error}"),
        };
        self.audit(NewEvent::fleet(&actor, &name, "grpc Fleet/Enroll", message))
            .await;
        enrolled
    }

    async fn enroll_with_token(
        &self,
        bootstrap_token: &str,
        node: NewNode,
        replace_existing: bool,
    ) -> Result<Enrolled, FleetError> {
        let secret: BootstrapSecret = bootstrap_token
            .parse()
            .map_err(|_| FleetError::TokenRejected(TokenRejection::Unknown))?;
        if node.name.as_str() == RESERVED_NODE_NAME {
            return Err(FleetError::InvalidArgument(format!(
                "node name {RESERVED_NODE_NAME} is reserved: /api/v1/nodes/{RESERVED_NODE_NAME} is the bootstrap token endpoint"
            )));
        }
        check_agent_version(&node.agent_version)?;
        check_inventory(&node.inventory)?;
        let initial_status = if self.require_approval {
            NodeStatus::Pending
        } else {
            NodeStatus::Active
        };
        let name = node.name.clone();
        let refresh_secret = hex::encode(rand::random::<[u8; 32]>());
        let outcome = self
            .store
            .enroll_node(&Enrolment {
                token_id: secret.id().to_owned(),
                secret_hash: secret.secret_hash(),
                node,
                replace_existing,
                initial_status,
                refresh_secret_hash: refresh_hash(&refresh_secret),
            })
            .await?;
        let node = match outcome {
            EnrollOutcome::Enrolled(node) => *node,
            EnrollOutcome::Rejected(rejection) => {
                tracing::warn!(node = %name, token_id = secret.id(), %rejection, "enrolment refused");
                metrics::counter!("flotilla_fleet_enrolments_refused_total").increment(1);
                return Err(match rejection {
                    TokenRejection::WrongNode => FleetError::PermissionDenied(format!(
                        "bootstrap token {} may not enrol node {name}: it is bound to other node names",
                        secret.id()
                    )),
                    TokenRejection::ReplacementNotApproved => {
                        FleetError::PermissionDenied(format!(
                            "node {name} is already enrolled; replacing it needs an operator's approval: `flotilla node approve-replace {name}`, or a bootstrap token created with `--replace {name}`"
                        ))
                    }
                    other => FleetError::TokenRejected(other),
                });
            }
        };
        if replace_existing {
            // The replaced node's stream (if it is open here) ends now; its
            // credential fails on reconnect, its generation being stale.
            self.hub.evict(&node.name);
        }
        let (credential, credential_expires_at) = self
            .auth
            .mint_node_credential(&node.name, node.credential_generation)?;
        tracing::info!(node = %node.name, status = %node.status, token_id = secret.id(),
            replaced = replace_existing, "node enrolled");
        Ok(Enrolled {
            node,
            credential,
            credential_expires_at,
            refresh_secret,
        })
    }

    /// Mints a fresh credential for a node that proves it holds its
    /// refresh secret. Unknown nodes and wrong secrets read the same.
    /// Recorded in the audit log, refused or not (renewals over the
    /// stream, with a credential that still verifies, are not: they are
    /// routine and frequent).
    pub async fn renew_credential(
        &self,
        name: &NodeName,
        refresh_secret: &str,
    ) -> Result<(Node, String, OffsetDateTime), FleetError> {
        let renewed = self.renew_with_secret(name, refresh_secret).await;
        let message = match &renewed {
            Ok(_) => "credential renewed with the refresh secret".to_owned(),
            Err(error) => format!("refused: {error}"),
        };
        self.audit(NewEvent::fleet(
            &format!("node/{name}"),
            name,
            "grpc Fleet/RenewCredential",
            message,
        ))
        .await;
        renewed
    }

    async fn renew_with_secret(
        &self,
        name: &NodeName,
        refresh_secret: &str,
    ) -> Result<(Node, String, OffsetDateTime), FleetError> {
        let refused = || {
            FleetError::Auth(AuthError::InvalidToken(format!(
                "node {name} is unknown or the refresh secret is wrong; re-enrol the agent with --replace and a bootstrap token"
            )))
        };
        let stored = self
            .store
            .refresh_secret_hash(name)
            .await?
            .flatten()
            .ok_or_else(refused)?;
        if !refresh_hash(refresh_secret).matches(&stored) {
            tracing::warn!(node = %name, "credential renewal refused: wrong refresh secret");
            return Err(refused());
        }
        let node = self.get_node(name).await?;
        let (credential, expires_at) = self
            .auth
            .mint_node_credential(name, node.credential_generation)?;
        tracing::info!(node = %name, "node credential renewed with the refresh secret");
        Ok((node, credential, expires_at))
    }

    /// Records the inventory and agent version a node's agent sent in its
    /// hello when they differ from what is stored (new hardware, an
    /// upgraded agent). Returns the node as it now stands.
    pub async fn record_hello(
        &self,
        mut node: Node,
        inventory: Option<NodeInventory>,
        agent_version: &str,
    ) -> Result<Node, FleetError> {
        check_agent_version(agent_version)?;
        if let Some(inventory) = &inventory {
            check_inventory(inventory)?;
        }
        let inventory = inventory.unwrap_or_else(|| node.inventory.clone());
        let agent_version = if agent_version.is_empty() {
            node.agent_version.clone()
        } else {
            agent_version.to_owned()
        };
        if inventory != node.inventory || agent_version != node.agent_version {
            self.store
                .update_node_inventory(&node.name, &inventory, &agent_version)
                .await?;
            tracing::info!(node = %node.name, %agent_version, gpus = inventory.gpus.len(),
                "node inventory or agent version changed");
            self.audit(NewEvent::fleet(
                &format!("node/{}", node.name),
                &node.name,
                "grpc Fleet/Sync hello",
                format!(
                    "inventory or agent version changed: agent {} → {agent_version}, {} → {} GPU(s), \
                     {} → {} bytes of memory",
                    node.agent_version,
                    node.inventory.gpus.len(),
                    inventory.gpus.len(),
                    node.inventory.memory_total_bytes,
                    inventory.memory_total_bytes
                ),
            ))
            .await;
            node.inventory = inventory;
            node.agent_version = agent_version;
        }
        Ok(node)
    }

    /// The policy version `reference` names (its latest without a version),
    /// as an assignment carries it; an unknown one is `NotFound`.
    pub async fn assigned_policy(
        &self,
        reference: &PolicyRef,
    ) -> Result<AssignedPolicy, FleetError> {
        let policy = self
            .store
            .get_policy(&reference.name, reference.version)
            .await?
            .ok_or_else(|| StoreError::NotFound(Missing::PolicyRef(reference.clone())))?;
        Ok(policy.assigned())
    }

    /// Resolves what an operator asked for to one artifact (and prompt
    /// text), records the assignment and pushes the changed desired states.
    pub async fn assign(
        &self,
        by: &str,
        request: AssignRequest,
    ) -> Result<(Assignment, Vec<NodeDesired>), FleetError> {
        let model = &request.model;
        if self.store.get_model(model).await?.is_none() {
            return Err(StoreError::NotFound(Missing::Model(model.clone())).into());
        }
        let candidates = self.store.resolvable_versions(model).await?;
        let policy = request
            .quantization
            .clone()
            .map_or(QuantizationPolicy::Auto, |q| {
                QuantizationPolicy::Preferred(vec![q])
            });
        let resolution = resolve(
            model.as_str(),
            &candidates,
            &request.requirement,
            &policy,
            None,
        )
        .map_err(|error| StoreError::FailedPrecondition(error.to_string()))?;
        let prompt = match &request.prompt {
            None => None,
            Some(reference) => {
                let prompt = self
                    .store
                    .get_prompt(&reference.name, reference.version)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(Missing::PromptRef(reference.clone())))?;
                Some(DesiredPrompt {
                    name: prompt.name.to_string(),
                    version: prompt.version,
                    text: prompt.text,
                    chat_template: prompt.chat_template,
                })
            }
        };
        let escalation_policy = match &request.escalation_policy {
            None => None,
            Some(reference) => Some(self.assigned_policy(reference).await?),
        };
        let artifact = &resolution.artifact;
        let new = NewAssignment {
            target: request.target.clone(),
            desired: DesiredAssignment {
                model: model.to_string(),
                version: resolution.version.version.to_string(),
                quantization: artifact.quantization.name().to_owned(),
                digest: artifact.digest.to_hex(),
                size_bytes: artifact.size_bytes,
                prompt,
                prompt_policy: request.prompt_policy,
                aliases: request.aliases.iter().map(ToString::to_string).collect(),
                escalation_policy,
                assignment_generation: 0,
                target: String::new(),
            },
            created_by: by.to_owned(),
        };
        let (assignment, changed) = self.store.create_assignment(&new).await?;
        self.hub.publish(&changed);
        tracing::info!(target = %assignment.target, model = %model,
            version = %assignment.desired.version, quantization = %assignment.desired.quantization,
            generation = assignment.generation, nodes_changed = changed.len(), by,
            "assignment recorded");
        Ok((assignment, changed))
    }

    /// Removes the assignment of a target; its nodes fall back to what
    /// else matches them, or to nothing.
    pub async fn unassign(
        &self,
        by: &str,
        target: &AssignmentTarget,
    ) -> Result<Vec<NodeDesired>, FleetError> {
        let changed = self.store.remove_assignment(target).await?;
        self.hub.publish(&changed);
        tracing::info!(%target, nodes_changed = changed.len(), by, "assignment removed");
        Ok(changed)
    }

    pub async fn list_assignments(
        &self,
        page: &PageRequest,
    ) -> Result<Page<Assignment>, FleetError> {
        Ok(self.store.list_assignments(page).await?)
    }

    /// Applies an operator's change to a node and pushes the result.
    pub async fn change_node(
        &self,
        name: &NodeName,
        change: NodeChange,
        by: &str,
    ) -> Result<Node, FleetError> {
        if let NodeChange::Labels { set, remove } = &change {
            // Validate the pieces up front for a clear 400 (the store
            // validates the merged result again).
            crate::domain::Labels::new(set.clone())
                .map_err(|error| FleetError::InvalidArgument(error.to_string()))?;
            if let Some(key) = remove.iter().find(|key| key.is_empty()) {
                return Err(FleetError::InvalidArgument(format!(
                    "invalid label key {key:?} to remove"
                )));
            }
        }
        let (node, pushed) = self.store.change_node(name, &change).await?;
        if let Some(pushed) = pushed {
            self.hub.publish(std::slice::from_ref(&pushed));
        }
        tracing::info!(node = %name, ?change, by, status = %node.status, "node changed");
        Ok(self.with_runtime(node))
    }

    /// Health history of a node: the stored minutes and the one being
    /// folded now.
    pub async fn health_history(
        &self,
        name: &NodeName,
        span: Duration,
    ) -> Result<Vec<HealthPoint>, FleetError> {
        self.get_node(name).await?;
        let span = span.min(MAX_HISTORY);
        let since = OffsetDateTime::now_utc().unix_timestamp() - span.as_secs() as i64;
        let mut points = self.store.health_minutes(name, since).await?;
        if let Some(current) = self.hub.runtime(name).and_then(|r| r.current_minute) {
            points.retain(|point| point.at != current.at);
            points.push(current);
        }
        Ok(points)
    }

    /// Whether a node is connected and heartbeating.
    pub fn is_ready(&self, node: &Node) -> bool {
        self.hub.is_ready(&node.name, node.last_heartbeat_at)
    }

    /// Overlays what the hub knows (fresher than the last flush).
    fn with_runtime(&self, mut node: Node) -> Node {
        if let Some(runtime) = self.hub.runtime(&node.name) {
            if runtime.last_heartbeat_at.is_some() {
                node.last_heartbeat_at = runtime.last_heartbeat_at;
            }
            if runtime.observed.is_some() {
                node.observed = runtime.observed;
            }
            if runtime.health.is_some() {
                node.health = runtime.health;
            }
        }
        node
    }

    pub async fn get_node(&self, name: &NodeName) -> Result<Node, FleetError> {
        let node = self
            .store
            .get_node(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(Missing::Node(name.clone())))?;
        Ok(self.with_runtime(node))
    }

    pub async fn list_nodes(&self, page: &PageRequest) -> Result<Page<Node>, FleetError> {
        let mut nodes = self.store.list_nodes(page).await?;
        nodes.items = nodes
            .items
            .into_iter()
            .map(|node| self.with_runtime(node))
            .collect();
        Ok(nodes)
    }

    // ---- identity and access (issue 16: control plane) ----

    /// Checks a node credential against its node's current credential
    /// generation: a credential minted before a replacement or removal
    /// fails. Human principals pass (they are checked by [`Revocations`]).
    pub async fn check_node_credential(&self, principal: &Principal) -> Result<(), FleetError> {
        if principal.role != Role::Node {
            return Ok(());
        }
        let stale = || FleetError::Auth(AuthError::StaleNodeCredential(principal.subject.clone()));
        let name: NodeName = principal.subject.parse().map_err(|_| stale())?;
        let current = self.store.credential_generation(&name).await?;
        if current.is_none() || current != principal.credential_generation {
            tracing::warn!(node = %name, presented = ?principal.credential_generation, current = ?current,
                "refused a stale node credential");
            metrics::counter!("flotilla_fleet_stale_credentials_total").increment(1);
            return Err(stale());
        }
        Ok(())
    }

    /// Appends `event` to the audit log. A failure to record is logged,
    /// not turned into a failure of what already happened (as for REST
    /// requests, `api::audit_mutations`).
    async fn audit(&self, event: NewEvent) {
        if let Err(error) = self.store.append_events(std::slice::from_ref(&event)).await {
            tracing::warn!(%error, action = %event.action, "cannot record an event in the audit log");
        }
    }

    /// Lets the next enrolment under `name` replace the node (once).
    pub async fn approve_replacement(&self, name: &NodeName, by: &str) -> Result<Node, FleetError> {
        self.store.approve_replacement(name).await?;
        tracing::info!(node = %name, by, "replacement of the node approved");
        self.get_node(name).await
    }

    /// Removes a node: its credentials stop working and its stream here
    /// ends.
    pub async fn remove_node(&self, name: &NodeName, by: &str) -> Result<(), FleetError> {
        self.store.remove_node(name).await?;
        self.hub.evict(name);
        tracing::info!(node = %name, by, "node removed");
        Ok(())
    }

    pub async fn list_bootstrap_tokens(&self) -> Result<Vec<BootstrapToken>, FleetError> {
        Ok(self.store.list_bootstrap_tokens().await?)
    }

    pub async fn revoke_bootstrap_token(
        &self,
        id: &str,
        by: &str,
    ) -> Result<BootstrapToken, FleetError> {
        let token = self.store.revoke_bootstrap_token(id).await?;
        tracing::info!(token_id = id, by, "bootstrap token revoked");
        Ok(token)
    }

    /// Mints a human/API token and records it by its id, so that it can be
    /// listed and revoked.
    pub async fn mint_api_token(
        &self,
        subject: &str,
        role: Role,
        ttl: Duration,
        by: &str,
    ) -> Result<MintedToken, FleetError> {
        let minted = self.auth.mint_with_id(subject, role, ttl)?;
        self.store
            .record_api_token(&ApiToken {
                id: minted.id.clone(),
                subject: subject.to_owned(),
                role,
                created_by: by.to_owned(),
                created_at: minted.issued_at,
                expires_at: minted.expires_at,
                revoked_at: None,
            })
            .await?;
        Ok(minted)
    }

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, FleetError> {
        Ok(self.store.list_api_tokens().await?)
    }

    pub async fn revoke_api_token(&self, id: &str, by: &str) -> Result<ApiToken, FleetError> {
        let token = self.store.revoke_api_token(id).await?;
        self.revocations.revoked_now(id);
        tracing::info!(token_id = id, subject = %token.subject, by, "api token revoked");
        Ok(token)
    }

    /// Lets a pending node take part. Approving an active node is a no-op;
    /// a cordoned one stays cordoned (approval is not uncordoning).
    pub async fn approve(&self, name: &NodeName, by: &str) -> Result<Node, FleetError> {
        let node = self.get_node(name).await?;
        if node.status != NodeStatus::Pending {
            return Ok(node);
        }
        self.change_node(name, NodeChange::Status(NodeStatus::Active), by)
            .await
    }
}

/// Agent versions are shown in views and logs: short and printable.
fn check_agent_version(version: &str) -> Result<(), FleetError> {
    if version.len() > MAX_AGENT_VERSION_LEN || version.chars().any(char::is_control) {
        return Err(FleetError::InvalidArgument(format!(
            "agent version must be at most {MAX_AGENT_VERSION_LEN} printable characters"
        )));
    }
    Ok(())
}

/// Which node names a new bootstrap token may enrol.
#[derive(Debug, Clone)]
pub enum TokenBinding {
    /// Any name not yet enrolled.
    Any,
    /// Names matching the pattern, not yet enrolled.
    Nodes(NodePattern),
    /// Exactly this name, replacing the enrolled node of that name.
    Replace(NodeName),
}

/// Longest inventory text field kept (CPU model, OS, GPU name, driver).
pub const MAX_INVENTORY_TEXT_LEN: usize = 256;
/// Most GPUs one node may report.
pub const MAX_INVENTORY_GPUS: usize = 64;

/// An agent's inventory is shown in every `GET /nodes`: bounded, printable.
fn check_inventory(inventory: &NodeInventory) -> Result<(), FleetError> {
    let text = |field: &str, value: &str| {
        if value.len() > MAX_INVENTORY_TEXT_LEN || value.chars().any(char::is_control) {
            Err(FleetError::InvalidArgument(format!(
                "invalid field {field}: at most {MAX_INVENTORY_TEXT_LEN} printable characters, got {} bytes",
                value.len()
            )))
        } else {
            Ok(())
        }
    };
    text("inventory.cpu_model", &inventory.cpu_model)?;
    text("inventory.os", &inventory.os)?;
    if inventory.gpus.len() > MAX_INVENTORY_GPUS {
        return Err(FleetError::InvalidArgument(format!(
            "invalid field inventory.gpus: at most {MAX_INVENTORY_GPUS} GPUs, got {}",
            inventory.gpus.len()
        )));
    }
    for gpu in &inventory.gpus {
        text("inventory.gpus.name", &gpu.name)?;
        text("inventory.gpus.driver_version", &gpu.driver_version)?;
    }
    Ok(())
}

/// What the store keeps of a refresh secret.
fn refresh_hash(secret: &str) -> SecretHash {
    SecretHash(*blake3::hash(secret.as_bytes()).as_bytes())
}
