//! Routing between controller replicas on Postgres: the `replica_routes`
//! table (Postgres migration 0006), one row per replica holding the routing
//! directory entries of the nodes streaming to it. See
//! [`Store::exchange_routes`](super::super::Store::exchange_routes). SQLite
//! has one controller process, so no such table.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use super::super::StoreResult;
use super::super::sql::{self, Access, in_transaction};
use super::SqlStore;
use crate::domain::{DirectoryEntry, NodeName};

/// A replica that has not marked its routes fresh for this long is gone
/// for good; its row is deleted.
const FORGET_REPLICA_AFTER: Duration = Duration::from_secs(3600);

/// [`DirectoryEntry`] as stored. Every field has a default, so that rows
/// written by an older or newer replica during an upgrade still read.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct RouteRow {
    model: String,
    version: String,
    node: String,
    http_url: String,
    grpc_url: String,
    load: u32,
    queue_depth: u32,
    queue_capacity: u32,
    aliases: Vec<String>,
    digest: String,
    size_bytes: u64,
    quantization: String,
}

impl From<&DirectoryEntry> for RouteRow {
    fn from(entry: &DirectoryEntry) -> Self {
        Self {
            model: entry.model.clone(),
            version: entry.version.clone(),
            node: entry.node.to_string(),
            http_url: entry.http_url.clone(),
            grpc_url: entry.grpc_url.clone(),
            load: entry.load,
            queue_depth: entry.queue_depth,
            queue_capacity: entry.queue_capacity,
            aliases: entry.aliases.clone(),
            digest: entry.digest.clone(),
            size_bytes: entry.size_bytes,
            quantization: entry.quantization.clone(),
        }
    }
}

impl RouteRow {
    /// The entry, or `None` (with a warning) for a row no replica of this
    /// version could have written: one bad row must not cost the others.
    fn into_entry(self, replica: &str) -> Option<DirectoryEntry> {
        let node = match self.node.parse::<NodeName>() {
            Ok(node) => node,
            Err(error) => {
                tracing::warn!(%replica, %error, "skipping a stored route with a bad node name");
                return None;
            }
        };
        if self.model.is_empty() || (self.http_url.is_empty() && self.grpc_url.is_empty()) {
            tracing::warn!(%replica, node = %node, "skipping a stored route without a model or an address");
            return None;
        }
        Some(DirectoryEntry {
            model: self.model,
            version: self.version,
            node,
            http_url: self.http_url,
            grpc_url: self.grpc_url,
            load: self.load,
            queue_depth: self.queue_depth,
            queue_capacity: self.queue_capacity,
            aliases: self.aliases,
            digest: self.digest,
            size_bytes: self.size_bytes,
            quantization: self.quantization,
        })
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
        let rows: Vec<RouteRow> = routes.iter().map(RouteRow::from).collect();
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
                .bind(Json(&rows))
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
                    routes.into_iter().filter_map(move |route| {
                        match serde_json::from_value::<RouteRow>(route) {
                            Ok(row) => row.into_entry(&other),
                            Err(error) => {
                                tracing::warn!(replica = %other, %error, "skipping an unreadable stored route");
                                None
                            }
                        }
                    })
                })
                .collect())
        })
    }
}
