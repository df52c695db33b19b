//! The fleet's tables on Postgres: bootstrap tokens, nodes, assignments and
//! health history; the SQL both backends share is in `store/fleet_sql.rs`. Enrolment
//! locks the token's row (`FOR UPDATE`) before it checks and decrements
//! `uses_left`, so concurrent enrolments with one token are serialised on
//! that row and can never take more uses than it has.

use sqlx::PgConnection;

use super::super::rows::{
    BOOTSTRAP_TOKEN_COLUMNS, BootstrapTokenRow, NodeRow, SELECT_NODES, TOKEN_CHECK_COLUMNS,
    TokenCheckRow, convert_all, map_sqlx_error, overfetch,
};
use super::super::{
    EnrollOutcome, Enrolment, NewBootstrapToken, NodeReport, StoreError, StoreResult,
};
use super::{PostgresStore, StoreBackend, is_retryable, transaction};
use crate::domain::{
    Assignment, AssignmentTarget, BootstrapToken, HealthPoint, NewAssignment, Node, NodeChange,
    NodeDesired, NodeName, Page, PageRequest,
};

impl PostgresStore {
    pub(super) async fn fleet_create_bootstrap_token(
        &self,
        token: &NewBootstrapToken,
    ) -> StoreResult<BootstrapToken> {
        let uses = i32::try_from(token.uses).map_err(|_| {
            StoreError::FailedPrecondition(format!("{} uses is too many", token.uses))
        })?;
        in_transaction!(self, "create_bootstrap_token", |conn| {
            sqlx::query_as::<_, BootstrapTokenRow>(&format!(
                "INSERT INTO bootstrap_tokens (id, secret_hash, expires_at, uses_left, created_by, \
                 node_pattern, may_replace) \
                 VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5, $6, $7) \
                 RETURNING {BOOTSTRAP_TOKEN_COLUMNS}"
            ))
            .bind(&token.id)
            .bind(token.secret_hash.0.as_slice())
            .bind(token.ttl.as_secs_f64())
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
        in_transaction!(self, "enroll_node", |conn| {
            let token = sqlx::query_as::<_, TokenCheckRow>(&format!(
                "SELECT {TOKEN_CHECK_COLUMNS}, expires_at <= now() AS expired \
                 FROM bootstrap_tokens WHERE id = $1 FOR UPDATE"
            ))
            .bind(&enrolment.token_id)
            .fetch_optional(&mut *conn)
            .await?;
            queries::enroll(conn, enrolment, token.as_ref()).await
        })
    }

    pub(super) async fn fleet_get_node(&self, name: &NodeName) -> StoreResult<Option<Node>> {
        in_transaction!(self, "get_node", |conn| {
            queries::select_node(conn, name).await
        })
    }

    pub(super) async fn fleet_list_nodes(&self, page: &PageRequest) -> StoreResult<Page<Node>> {
        in_transaction!(self, "list_nodes", |conn| {
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
        in_transaction!(self, "create_assignment", |conn| {
            queries::create_assignment(conn, new).await
        })
    }

    pub(super) async fn fleet_remove_assignment(
        &self,
        target: &AssignmentTarget,
    ) -> StoreResult<Vec<NodeDesired>> {
        in_transaction!(self, "remove_assignment", |conn| {
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
        in_transaction!(self, "list_assignments", |conn| {
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
        in_transaction!(self, "change_node", |conn| {
            queries::change_node(conn, name, change).await
        })
    }

    pub(super) async fn fleet_update_node_inventory(
        &self,
        name: &NodeName,
        inventory: &crate::domain::NodeInventory,
        agent_version: &str,
    ) -> StoreResult<()> {
        in_transaction!(self, "update_node_inventory", |conn| {
            queries::update_inventory(conn, name, inventory, agent_version).await
        })
    }

    pub(super) async fn fleet_refresh_secret_hash(
        &self,
        name: &NodeName,
    ) -> StoreResult<Option<Option<Vec<u8>>>> {
        in_transaction!(self, "refresh_secret_hash", |conn| {
            queries::refresh_secret_hash(conn, name).await
        })
    }

    pub(super) async fn fleet_write_reports(&self, reports: &[NodeReport]) -> StoreResult<()> {
        in_transaction!(self, "write_reports", |conn| {
            queries::write_reports(conn, reports).await
        })
    }

    pub(super) async fn fleet_write_health_minutes(
        &self,
        points: &[(NodeName, HealthPoint)],
    ) -> StoreResult<()> {
        in_transaction!(self, "write_health_minutes", |conn| {
            queries::write_health_minutes(conn, points).await
        })
    }

    pub(super) async fn fleet_health_minutes(
        &self,
        name: &NodeName,
        since_unix: i64,
    ) -> StoreResult<Vec<HealthPoint>> {
        in_transaction!(self, "health_minutes", |conn| {
            queries::read_health_minutes(conn, name, since_unix).await
        })
    }

    pub(super) async fn fleet_desired_changed_since(
        &self,
        after: u64,
    ) -> StoreResult<Vec<NodeDesired>> {
        in_transaction!(self, "desired_changed_since", |conn| {
            queries::desired_changed_since(conn, after).await
        })
    }

    pub(super) async fn fleet_prune_health_minutes(&self, before_unix: i64) -> StoreResult<u64> {
        in_transaction!(self, "prune_health_minutes", |conn| {
            queries::prune_health_minutes(conn, before_unix).await
        })
    }
}

/// The SQL shared with the other backend (`store/fleet_sql.rs`).
pub(super) mod queries {
    crate::store::fleet_sql::fleet_queries!(
        sqlx::PgConnection,
        " FOR UPDATE",
        "SELECT jsonb_array_elements_text($3)",
        "SELECT * FROM jsonb_to_recordset($1) AS x(name text, observed jsonb, health jsonb, heartbeat bigint)",
        "SELECT * FROM jsonb_to_recordset($1) AS x(node_name text, minute_unix bigint, samples bigint, cpu double precision, memory bigint, gpu_util double precision, gpu_temp double precision, throttled boolean, inference jsonb)",
        "SELECT pg_notify('flotilla_fleet', '')"
    );
    crate::store::rollout_sql::rollout_queries!(sqlx::PgConnection);
}

/// Identity and access (`store/identity_sql.rs`).
pub(super) mod identity {
    crate::store::identity_sql::identity_queries!(sqlx::PgConnection);
}
