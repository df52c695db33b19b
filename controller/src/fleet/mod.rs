//! Business logic of the fleet: bootstrap tokens, enrolment, listing and
//! approving nodes. Shared by the REST API (operators) and the gRPC `Fleet`
//! service (agents), so both enforce the same rules.
//!
//! What is persisted (through the store): nodes, and bootstrap tokens as a
//! hash of their secret. The token string itself exists only in the response
//! to the operator who created it; node credentials are minted on demand and
//! never stored. The sync stream, assignments and heartbeats join here later.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::auth::{AuthError, Authenticator};
use crate::domain::{
    BootstrapSecret, BootstrapToken, NewNode, Node, NodeName, NodeStatus, Page, PageRequest,
    TokenRejection,
};
use crate::store::{EnrollOutcome, Enrolment, NewBootstrapToken, Store, StoreError};

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
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A successful enrolment: the node as recorded and its credential.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub node: Node,
    pub credential: String,
    pub credential_expires_at: OffsetDateTime,
}

/// The fleet's operations over the store. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
    require_approval: bool,
}

impl Fleet {
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>, require_approval: bool) -> Self {
        Self {
            store,
            auth,
            require_approval,
        }
    }

    /// Creates a bootstrap token; the returned secret is shown once and
    /// never stored.
    pub async fn create_bootstrap_token(
        &self,
        created_by: &str,
        ttl: Duration,
        uses: u32,
    ) -> Result<(BootstrapSecret, BootstrapToken), FleetError> {
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
            })
            .await?;
        tracing::info!(token_id = %token.id, uses, by = created_by, expires_at = %token.expires_at,
            "bootstrap token created");
        Ok((secret, token))
    }

    /// Enrols a node with a bootstrap token: takes one use of the token,
    /// records the node (`pending` when approval is required, else
    /// `active`) and mints its credential.
    pub async fn enroll(
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
        if node.agent_version.len() > MAX_AGENT_VERSION_LEN
            || node.agent_version.chars().any(char::is_control)
        {
            return Err(FleetError::InvalidArgument(format!(
                "agent version must be at most {MAX_AGENT_VERSION_LEN} printable characters"
            )));
        }
        let initial_status = if self.require_approval {
            NodeStatus::Pending
        } else {
            NodeStatus::Active
        };
        let name = node.name.clone();
        let outcome = self
            .store
            .enroll_node(&Enrolment {
                token_id: secret.id().to_owned(),
                secret_hash: secret.secret_hash(),
                node,
                replace_existing,
                initial_status,
            })
            .await?;
        let node = match outcome {
            EnrollOutcome::Enrolled(node) => node,
            EnrollOutcome::Rejected(rejection) => {
                tracing::warn!(node = %name, token_id = secret.id(), %rejection, "enrolment refused");
                return Err(FleetError::TokenRejected(rejection));
            }
        };
        let (credential, credential_expires_at) = self.auth.mint_node_credential(&node.name)?;
        tracing::info!(node = %node.name, status = %node.status, token_id = secret.id(),
            replaced = replace_existing, "node enrolled");
        Ok(Enrolled {
            node,
            credential,
            credential_expires_at,
        })
    }

    pub async fn get_node(&self, name: &NodeName) -> Result<Node, FleetError> {
        self.store
            .get_node(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {name} not found")).into())
    }

    pub async fn list_nodes(&self, page: &PageRequest) -> Result<Page<Node>, FleetError> {
        Ok(self.store.list_nodes(page).await?)
    }

    /// Lets a pending node take part. Approving an active node is a no-op;
    /// a cordoned one stays cordoned (approval is not uncordoning).
    pub async fn approve(&self, name: &NodeName, by: &str) -> Result<Node, FleetError> {
        let node = self.get_node(name).await?;
        if node.status != NodeStatus::Pending {
            return Ok(node);
        }
        let node = self.store.set_node_status(name, NodeStatus::Active).await?;
        tracing::info!(node = %name, by, "node approved");
        Ok(node)
    }
}
