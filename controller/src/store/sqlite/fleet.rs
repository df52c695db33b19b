//! The fleet's tables on SQLite: bootstrap tokens and nodes. Enrolment
//! runs in a `BEGIN IMMEDIATE` transaction, which holds the database's write
//! lock from its first statement, so concurrent enrolments with one token
//! are serialised and can never take more uses than it has.

use sqlx::SqliteConnection;
use sqlx::types::Json;

use super::super::rows::{
    BootstrapTokenRow, NodeRow, SELECT_NODES, TokenCheckRow, check_token, convert_all,
    map_sqlx_error, overfetch,
};
use super::super::{EnrollOutcome, Enrolment, NewBootstrapToken, StoreError, StoreResult};
use super::{Access, SqliteStore, StoreBackend, is_retryable, transaction};
use crate::domain::{BootstrapToken, Node, NodeName, NodeStatus, Page, PageRequest};

const NODE_COLUMNS: &str = "name, labels, inventory, agent_version, status, enrolled_at";

async fn insert_node(conn: &mut SqliteConnection, enrolment: &Enrolment) -> StoreResult<Node> {
    let node = &enrolment.node;
    // With `replace_existing` the row of that name is overwritten in place:
    // the node keeps its id (and, later, its assignment history).
    let on_conflict = if enrolment.replace_existing {
        " ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, \
         inventory = excluded.inventory, agent_version = excluded.agent_version, \
         status = excluded.status, enrolled_at = excluded.enrolled_at, \
         bootstrap_token_id = excluded.bootstrap_token_id"
    } else {
        ""
    };
    sqlx::query_as::<_, NodeRow>(&format!(
        "INSERT INTO nodes (name, labels, inventory, agent_version, status, bootstrap_token_id) \
         VALUES ($1, $2, $3, $4, $5, $6){on_conflict} RETURNING {NODE_COLUMNS}"
    ))
    .bind(node.name.as_str())
    .bind(Json(node.labels.as_map()))
    .bind(Json(&node.inventory))
    .bind(&node.agent_version)
    .bind(enrolment.initial_status.as_str())
    .bind(&enrolment.token_id)
    .fetch_one(&mut *conn)
    .await
    .map_err(|error| {
        map_sqlx_error(error, || {
            format!(
                "node {} is already enrolled; re-enrol it explicitly with replace_existing (agent flag --replace)",
                node.name
            )
        })
    })?
    .try_into()
}

impl SqliteStore {
    pub(super) async fn fleet_create_bootstrap_token(
        &self,
        token: &NewBootstrapToken,
    ) -> StoreResult<BootstrapToken> {
        let uses = i32::try_from(token.uses).map_err(|_| {
            StoreError::FailedPrecondition(format!("{} uses is too many", token.uses))
        })?;
        in_transaction!(self, "create_bootstrap_token", Access::Write, |conn| {
            sqlx::query_as::<_, BootstrapTokenRow>(
                "INSERT INTO bootstrap_tokens (id, secret_hash, expires_at, uses_left, created_by) \
                 VALUES ($1, $2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $3), $4, $5) \
                 RETURNING id, expires_at, uses_left, created_by, created_at",
            )
            .bind(&token.id)
            .bind(token.secret_hash.0.as_slice())
            .bind(format!("+{} seconds", token.ttl.as_secs()))
            .bind(uses)
            .bind(&token.created_by)
            .fetch_one(&mut *conn)
            .await
            .map_err(|error| {
                map_sqlx_error(error, || {
                    format!("bootstrap token {} already exists", token.id)
                })
            })?
            .try_into()
        })
    }

    pub(super) async fn fleet_enroll_node(
        &self,
        enrolment: &Enrolment,
    ) -> StoreResult<EnrollOutcome> {
        in_transaction!(self, "enroll_node", Access::Write, |conn| {
            let token = sqlx::query_as::<_, TokenCheckRow>(
                "SELECT secret_hash, expires_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS expired, \
                 uses_left FROM bootstrap_tokens WHERE id = $1",
            )
            .bind(&enrolment.token_id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(rejection) = check_token(token.as_ref(), &enrolment.secret_hash) {
                return Ok(EnrollOutcome::Rejected(rejection));
            }
            sqlx::query("UPDATE bootstrap_tokens SET uses_left = uses_left - 1 WHERE id = $1")
                .bind(&enrolment.token_id)
                .execute(&mut *conn)
                .await?;
            // A name conflict fails the transaction, which gives the use back.
            let node = insert_node(conn, enrolment).await?;
            Ok(EnrollOutcome::Enrolled(node))
        })
    }

    pub(super) async fn fleet_get_node(&self, name: &NodeName) -> StoreResult<Option<Node>> {
        in_transaction!(self, "get_node", Access::Read, |conn| {
            sqlx::query_as::<_, NodeRow>(&format!("{SELECT_NODES} WHERE name = $1"))
                .bind(name.as_str())
                .fetch_optional(&mut *conn)
                .await?
                .map(Node::try_from)
                .transpose()
        })
    }

    pub(super) async fn fleet_list_nodes(&self, page: &PageRequest) -> StoreResult<Page<Node>> {
        in_transaction!(self, "list_nodes", Access::Read, |conn| {
            let rows = sqlx::query_as::<_, NodeRow>(&format!(
                "{SELECT_NODES} WHERE name > $1 ORDER BY name LIMIT $2"
            ))
            .bind(page.after.as_deref().unwrap_or(""))
            .bind(overfetch(page.limit))
            .fetch_all(&mut *conn)
            .await?;
            let nodes: Vec<Node> = convert_all(rows)?;
            Ok(Page::from_overfetched(nodes, page.limit, |node| {
                node.name.to_string()
            }))
        })
    }

    pub(super) async fn fleet_set_node_status(
        &self,
        name: &NodeName,
        status: NodeStatus,
    ) -> StoreResult<Node> {
        in_transaction!(self, "set_node_status", Access::Write, |conn| {
            sqlx::query_as::<_, NodeRow>(&format!(
                "UPDATE nodes SET status = $2 WHERE name = $1 RETURNING {NODE_COLUMNS}"
            ))
            .bind(name.as_str())
            .bind(status.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("node {name} not found")))?
            .try_into()
        })
    }
}
