//! Rollouts and the event log on SQLite; the SQL is shared with the
//! other backend (`store/rollout_sql.rs`, expanded in `fleet.rs`'s
//! `queries` module).

use sqlx::SqliteConnection;

use super::super::rollout_rows::to_unix_ms;
use super::super::{NewRollout, RolloutUpdate, StoreResult};
use super::fleet::queries::rollouts;
use super::{Access, SqliteStore, StoreBackend, is_retryable, transaction};
use crate::domain::{Event, NodeDesired, NodeName, Rollout, RolloutName, RolloutNode};

fn now_ms() -> i64 {
    to_unix_ms(time::OffsetDateTime::now_utc())
}

impl SqliteStore {
    pub(super) async fn rollouts_create(
        &self,
        new: &NewRollout,
    ) -> StoreResult<(Rollout, Vec<RolloutNode>)> {
        in_transaction!(self, "create_rollout", Access::Write, |conn| {
            rollouts::create_rollout(conn, new, now_ms()).await
        })
    }

    pub(super) async fn rollouts_get(
        &self,
        name: &RolloutName,
    ) -> StoreResult<Option<(Rollout, Vec<RolloutNode>)>> {
        in_transaction!(self, "get_rollout", Access::Read, |conn| {
            let Some(rollout) = rollouts::select_rollout(conn, name).await? else {
                return Ok(None);
            };
            let nodes = rollouts::select_nodes(conn, name).await?;
            Ok(Some((rollout, nodes)))
        })
    }

    pub(super) async fn rollouts_list(&self) -> StoreResult<Vec<Rollout>> {
        in_transaction!(self, "list_rollouts", Access::Read, |conn| {
            rollouts::list_rollouts(conn).await
        })
    }

    pub(super) async fn rollouts_update(
        &self,
        update: &RolloutUpdate,
    ) -> StoreResult<(Rollout, Vec<NodeDesired>)> {
        in_transaction!(self, "update_rollout", Access::Write, |conn| {
            rollouts::update_rollout(conn, update, now_ms()).await
        })
    }

    pub(super) async fn rollouts_pinned_nodes(&self) -> StoreResult<Vec<NodeName>> {
        in_transaction!(self, "pinned_nodes", Access::Read, |conn| {
            rollouts::pinned_nodes(conn).await
        })
    }

    pub(super) async fn rollouts_list_events(
        &self,
        rollout: Option<&RolloutName>,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        in_transaction!(self, "list_events", Access::Read, |conn| {
            rollouts::list_events(conn, rollout, after, i64::from(limit)).await
        })
    }
}
