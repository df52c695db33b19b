//! The fleet's tables on SQLite: bootstrap tokens, nodes, assignments and
//! health history; the SQL both backends share is in `store/fleet_sql.rs`. Enrolment
//! runs in a `BEGIN IMMEDIATE` transaction, which holds the database's write
//! lock from its first statement, so concurrent enrolments with one token
//! are serialised and can never take more uses than it has.

use sqlx::SqliteConnection;

use super::super::rows::{
    BOOTSTRAP_TOKEN_COLUMNS, BootstrapTokenRow, NodeRow, SELECT_NODES, TOKEN_CHECK_COLUMNS,
    TokenCheckRow, convert_all, map_sqlx_error, overfetch,
};
use super::super::{
    EnrollOutcome, Enrolment, NewBootstrapToken, NodeReport, StoreError, StoreResult,
};
use super::{Access, SqliteStore, StoreBackend, is_retryable, transaction};
use crate::domain::{
    Assignment, AssignmentTarget, BootstrapToken, HealthPoint, NewAssignment, Node, NodeChange,
    NodeDesired, NodeName, Page, PageRequest,
};

impl SqliteStore {
    pub(super) async fn fleet_create_bootstrap_token(
        &self,
        token: &NewBootstrapToken,
    ) -> StoreResult<BootstrapToken> {
        let uses = i32::try_from(token.uses).map_err(|_| {
            StoreError::FailedPrecondition(format!("{} uses is too many", token.uses))
        })?;
        in_transaction!(self, "create_bootstrap_token", Access::Write, |conn| {
            sqlx::query_as::<_, BootstrapTokenRow>(&format!(
                "INSERT INTO bootstrap_tokens (id, secret_hash, expires_at, uses_left, created_by, \
                 node_pattern, may_replace) \
                 VALUES ($1, $2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $3), $4, $5, $6, $7) \
                 RETURNING {BOOTSTRAP_TOKEN_COLUMNS}"
            ))
            .bind(&token.id)
            .bind(token.secret_hash.0.as_slice())
            .bind(format!("+{} seconds", token.ttl.as_secs()))
            .bind(uses)
            .bind(&token.created_by)
            .bind(token.node_pattern.as_ref().map(|pattern| pattern.as_str()))
            .bind(token.may_replace)
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
            let token = sqlx::query_as::<_, TokenCheckRow>(&format!(
                "SELECT {TOKEN_CHECK_COLUMNS}, \
                 expires_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS expired \
                 FROM bootstrap_tokens WHERE id = $1"
            ))
            .bind(&enrolment.token_id)
            .fetch_optional(&mut *conn)
            .await?;
            queries::enroll(conn, enrolment, token.as_ref()).await
        })
    }

    pub(super) async fn fleet_get_node(&self, name: &NodeName) -> StoreResult<Option<Node>> {
        in_transaction!(self, "get_node", Access::Read, |conn| {
            queries::select_node(conn, name).await
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

    pub(super) async fn fleet_create_assignment(
        &self,
        new: &NewAssignment,
    ) -> StoreResult<(Assignment, Vec<NodeDesired>)> {
        in_transaction!(self, "create_assignment", Access::Write, |conn| {
            queries::create_assignment(conn, new).await
        })
    }

    pub(super) async fn fleet_remove_assignment(
        &self,
        target: &AssignmentTarget,
    ) -> StoreResult<Vec<NodeDesired>> {
        in_transaction!(self, "remove_assignment", Access::Write, |conn| {
            queries::remove_assignment(conn, target).await
        })
    }

    pub(super) async fn fleet_list_assignments(
        &self,
        page: &PageRequest,
    ) -> StoreResult<Page<Assignment>> {
        let after = page
            .after
            .as_deref()
            .map(|cursor| {
                cursor.parse::<u64>().map_err(|_| {
                    StoreError::FailedPrecondition(format!("invalid cursor {cursor:?}"))
                })
            })
            .transpose()?;
        in_transaction!(self, "list_assignments", Access::Read, |conn| {
            let assignments = queries::list_assignments(conn, after, overfetch(page.limit)).await?;
            Ok(Page::from_overfetched(assignments, page.limit, |a| {
                a.generation.to_string()
            }))
        })
    }

    pub(super) async fn fleet_change_node(
        &self,
        name: &NodeName,
        change: &NodeChange,
    ) -> StoreResult<(Node, Option<NodeDesired>)> {
        in_transaction!(self, "change_node", Access::Write, |conn| {
            queries::change_node(conn, name, change).await
        })
    }

    pub(super) async fn fleet_update_node_inventory(
        &self,
        name: &NodeName,
        inventory: &crate::domain::NodeInventory,
        agent_version: &str,
    ) -> StoreResult<()> {
        in_transaction!(self, "update_node_inventory", Access::Write, |conn| {
            queries::update_inventory(conn, name, inventory, agent_version).await
        })
    }

    pub(super) async fn fleet_refresh_secret_hash(
        &self,
        name: &NodeName,
    ) -> StoreResult<Option<Option<Vec<u8>>>> {
        in_transaction!(self, "refresh_secret_hash", Access::Read, |conn| {
            queries::refresh_secret_hash(conn, name).await
        })
    }

    pub(super) async fn fleet_write_reports(&self, reports: &[NodeReport]) -> StoreResult<()> {
        in_transaction!(self, "write_reports", Access::Write, |conn| {
            queries::write_reports(conn, reports).await
        })
    }

    pub(super) async fn fleet_write_health_minutes(
        &self,
        points: &[(NodeName, HealthPoint)],
    ) -> StoreResult<()> {
        in_transaction!(self, "write_health_minutes", Access::Write, |conn| {
            queries::write_health_minutes(conn, points).await
        })
    }

    pub(super) async fn fleet_health_minutes(
        &self,
        name: &NodeName,
        since_unix: i64,
    ) -> StoreResult<Vec<HealthPoint>> {
        in_transaction!(self, "health_minutes", Access::Read, |conn| {
            queries::read_health_minutes(conn, name, since_unix).await
        })
    }

    pub(super) async fn fleet_desired_changed_since(
        &self,
        after: u64,
    ) -> StoreResult<Vec<NodeDesired>> {
        in_transaction!(self, "desired_changed_since", Access::Read, |conn| {
            queries::desired_changed_since(conn, after).await
        })
    }

    pub(super) async fn fleet_prune_health_minutes(&self, before_unix: i64) -> StoreResult<u64> {
        in_transaction!(self, "prune_health_minutes", Access::Write, |conn| {
            queries::prune_health_minutes(conn, before_unix).await
        })
    }
}

/// The SQL shared with the other backend (`store/fleet_sql.rs`).
pub(super) mod queries {
    crate::store::fleet_sql::fleet_queries!(
        sqlx::SqliteConnection,
        "",
        "SELECT value FROM json_each($3)",
        "SELECT value ->> '$.name' AS name, value -> '$.observed' AS observed, value -> '$.health' AS health, value ->> '$.heartbeat' AS heartbeat FROM json_each($1)",
        "SELECT value ->> '$.node_name' AS node_name, value ->> '$.minute_unix' AS minute_unix, value ->> '$.samples' AS samples, value ->> '$.cpu' AS cpu, value ->> '$.memory' AS memory, value ->> '$.gpu_util' AS gpu_util, value ->> '$.gpu_temp' AS gpu_temp, value ->> '$.throttled' AS throttled, value -> '$.inference' AS inference FROM json_each($1)",
        ""
    );
    crate::store::rollout_sql::rollout_queries!(sqlx::SqliteConnection);
}

/// Identity and access (`store/identity_sql.rs`).
pub(super) mod identity {
    crate::store::identity_sql::identity_queries!(sqlx::SqliteConnection);
}
