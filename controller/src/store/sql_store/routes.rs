//! Routing between controller replicas on Postgres: the `replica_routes`
//! table (Postgres migration 0006), one row per replica holding the routing
//! directory entries of the nodes streaming to it. See
//! [`Store::exchange_routes`](super::super::Store::exchange_routes). SQLite
//! has one controller process, so no such table.

use std::time::Duration;

use sqlx::types::Json;

use super::super::StoreResult;
use super::super::sql::{self, Access, in_transaction};
use super::SqlStore;
use crate::domain::DirectoryEntry;

/// A replica that has not marked its routes fresh for this long is gone
/// for good; its row is deleted.
const FORGET_REPLICA_AFTER: Duration = Duration::from_secs(3600);

/// A stored route, or `None` (with a warning) for a row no replica of this
/// version could have written: one bad row must not cost the others. The
/// entry's serde shape is the row's (see `flotilla_contract::DirectoryEntry`:
/// rows of the previous version read, and it reads this version's).
fn read_route(replica: &str, route: serde_json::Value) -> Option<DirectoryEntry> {
    match serde_json::from_value::<DirectoryEntry>(route) {
        Ok(entry) if entry.has_address() => Some(entry),
        Ok(entry) => {
            tracing::warn!(%replica, node = %entry.node, "skipping a stored route without an address");
            None
        }
        Err(error) => {
            tracing::warn!(%replica, %error, "skipping an unreadable stored route");
            None
        }
    }
}

impl SqlStore {
    /// Only on a Postgres store: the statements are Postgres's.
    pub(super) async fn exchange_routes_postgres(
        &self,
        replica: &str,
        routes: &[DirectoryEntry],
        changed: bool,
        fresh_within: Duration,
    ) -> StoreResult<Vec<DirectoryEntry>> {
        in_transaction!(self, "exchange_routes", Access::Write, |conn| {
            let refreshed = if changed {
                0
            } else {
                sql::query("UPDATE replica_routes SET seen_at = now() WHERE replica = $1")
                    .bind(replica)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
            };
            // Changed, or the row is gone (first call, a pruned row, an
            // UNLOGGED table emptied by a crash or failover): write it whole.
            if refreshed == 0 {
                sql::query(
                    "INSERT INTO replica_routes (replica, routes, changed_at, seen_at) \
                     VALUES ($1, $2, now(), now()) \
                     ON CONFLICT (replica) DO UPDATE \
                     SET routes = EXCLUDED.routes, changed_at = now(), seen_at = now()",
                )
                .bind(replica)
                .bind(Json(routes))
                .execute(&mut *conn)
                .await?;
            }
            sql::query(
                "DELETE FROM replica_routes WHERE seen_at < now() - make_interval(secs => $1)",
            )
            .bind(FORGET_REPLICA_AFTER.as_secs_f64())
            .execute(&mut *conn)
            .await?;
            let others: Vec<(String, Json<Vec<serde_json::Value>>)> = sql::query_as(
                "SELECT replica, routes FROM replica_routes \
                 WHERE replica <> $1 AND seen_at > now() - make_interval(secs => $2) \
                 ORDER BY changed_at DESC",
            )
            .bind(replica)
            .bind(fresh_within.as_secs_f64())
            .fetch_all(&mut *conn)
            .await?;
            Ok(others
                .into_iter()
                .flat_map(|(other, Json(routes))| {
                    routes
                        .into_iter()
                        .filter_map(move |route| read_route(&other, route))
                })
                .collect())
        })
    }
}
