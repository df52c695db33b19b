//! The rollouts' queries, written once for both backends (see `sql.rs`).
//! They share the fleet's generation lock, generation counter and placement
//! (`replan`, in `fleet.rs`). Every
//! function runs inside the caller's transaction, and every writer takes
//! the `fleet_generation` row lock first, like every writer of node rows.
//!
//! What a rollout gives a node is written as an ordinary node-level
//! assignment with the rollout's name in its `rollout` column, then the
//! node is re-placed: the same path operators' assignments take, so the
//! sync hub pushes it the same way. An operator's node-level assignment
//! (`rollout` NULL) is a pin: the rollout never replaces it.

use sqlx::types::Json;

use super::fleet::{lock_generation, next_generation, replan};
use super::sql::{self, Tx};
use crate::domain::{
    DesiredAssignment, Event, NewEvent, NodeDesired, NodeName, Rollout, RolloutName, RolloutNode,
    RolloutNodeState,
};
use crate::store::rollout_rows::{
    EventRow, RolloutNodeRow, RolloutRow, SELECT_EVENTS, SELECT_ROLLOUT_NODES, SELECT_ROLLOUTS,
    SpecJson, to_unix_ms,
};
use crate::store::rows::{convert_all, map_sqlx_error, to_i64};
use crate::store::{
    DeletedRollout, Missing, NewRollout, RolloutDeletion, RolloutUpdate, StoreError, StoreResult,
};

pub(in crate::store) async fn select_rollout(
    conn: &mut Tx,
    name: &RolloutName,
) -> StoreResult<Option<Rollout>> {
    sql::query_as::<RolloutRow>(format!("{SELECT_ROLLOUTS} WHERE name = $1"))
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .map(Rollout::try_from)
        .transpose()
}

pub(in crate::store) async fn select_nodes(
    conn: &mut Tx,
    name: &RolloutName,
) -> StoreResult<Vec<RolloutNode>> {
    let rows = sql::query_as::<RolloutNodeRow>(format!(
        "{SELECT_ROLLOUT_NODES} WHERE rollout = $1 ORDER BY wave, node_name"
    ))
    .bind(name.as_str())
    .fetch_all(&mut *conn)
    .await?;
    convert_all(rows)
}

pub(in crate::store) async fn list_rollouts(conn: &mut Tx) -> StoreResult<Vec<Rollout>> {
    let rows =
        sql::query_as::<RolloutRow>(format!("{SELECT_ROLLOUTS} ORDER BY created_unix_ms, name"))
            .fetch_all(&mut *conn)
            .await?;
    convert_all(rows)
}

/// The node-level assignment of a node: its desired state and
/// the rollout that wrote it (`None`: an operator's pin).
async fn node_assignment(
    conn: &mut Tx,
    node: &NodeName,
) -> StoreResult<Option<(DesiredAssignment, Option<String>)>> {
    let row: Option<(Json<DesiredAssignment>, Option<String>)> =
        sql::query_as("SELECT desired, rollout FROM assignments WHERE node_name = $1")
            .bind(node.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(desired, rollout)| (desired.0, rollout)))
}

/// Nodes an operator pinned with a node-level assignment.
pub(in crate::store) async fn pinned_nodes(conn: &mut Tx) -> StoreResult<Vec<NodeName>> {
    let names: Vec<String> = sql::query_scalar(
        "SELECT node_name FROM assignments \
         WHERE node_name IS NOT NULL AND rollout IS NULL ORDER BY node_name",
    )
    .fetch_all(&mut *conn)
    .await?;
    names.iter().map(|name| assigned_node(name)).collect()
}

/// A node name read back from `assignments.node_name`.
fn assigned_node(name: &str) -> StoreResult<NodeName> {
    name.parse().map_err(|error| {
        StoreError::Corrupt(format!("assignments.node_name holds {name}: {error}"))
    })
}

pub(in crate::store) async fn insert_events(
    conn: &mut Tx,
    events: &[NewEvent],
    now_ms: i64,
) -> StoreResult<()> {
    for event in events {
        sql::query(
            "INSERT INTO events (at_unix_ms, actor, rollout, node_name, action, message) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now_ms)
        .bind(&event.actor)
        .bind(event.rollout.as_ref().map(RolloutName::as_str))
        .bind(event.node.as_ref().map(NodeName::as_str))
        .bind(&event.action)
        .bind(&event.message)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(in crate::store) async fn list_events(
    conn: &mut Tx,
    rollout: Option<&RolloutName>,
    after: u64,
    limit: i64,
) -> StoreResult<Vec<Event>> {
    let after = to_i64("cursor", after)?;
    let rows = match rollout {
        Some(name) => {
            sql::query_as::<EventRow>(format!(
                "{SELECT_EVENTS} WHERE rollout = $1 AND id > $2 ORDER BY id LIMIT $3"
            ))
            .bind(name.as_str())
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
        None => {
            sql::query_as::<EventRow>(format!(
                "{SELECT_EVENTS} WHERE id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    convert_all(rows)
}

/// Records a rollout and its nodes with a new generation.
/// `AlreadyExists` when the name is taken or a node is in
/// another active rollout; nodes an operator pinned are
/// recorded as pinned.
pub(in crate::store) async fn create_rollout(
    conn: &mut Tx,
    new: &NewRollout,
    now_ms: i64,
) -> StoreResult<(Rollout, Vec<RolloutNode>)> {
    lock_generation(conn).await?;
    if select_rollout(conn, &new.name).await?.is_some() {
        return Err(StoreError::AlreadyExists(format!(
            "rollout {} already exists",
            new.name
        )));
    }
    for node in &new.nodes {
        let holder: Option<String> =
            sql::query_scalar("SELECT rollout FROM rollout_nodes WHERE node_name = $1 AND active")
                .bind(node.node.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(holder) = holder {
            return Err(StoreError::AlreadyExists(format!(
                "node {} is already in active rollout {holder}; a node takes part in one active rollout at a time (abort, roll back or wait for {holder})",
                node.node
            )));
        }
    }
    let generation = next_generation(conn).await?;
    sql::query(
        "INSERT INTO rollouts (name, spec, state, current_wave, wave_count, \
         skip_bake, generation, created_by, created_unix_ms, updated_unix_ms) \
         VALUES ($1, $2, $3, 0, $4, FALSE, $5, $6, $7, $7)",
    )
    .bind(new.name.as_str())
    .bind(Json(SpecJson::from(&new.spec)))
    .bind(crate::domain::RolloutState::Pending.as_str())
    .bind(i64::from(new.wave_count))
    .bind(to_i64("generation", generation)?)
    .bind(&new.created_by)
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(|error| map_sqlx_error(error, || format!("rollout {} already exists", new.name)))?;
    for node in &new.nodes {
        let mut state = node.state;
        let mut reason = node.reason.clone();
        if state == RolloutNodeState::Waiting
            && matches!(node_assignment(conn, &node.node).await?, Some((_, None)))
        {
            state = RolloutNodeState::Pinned;
            reason = Some("pinned by an operator's node assignment".to_owned());
        }
        sql::query(
            "INSERT INTO rollout_nodes (rollout, node_name, wave, state, desired, reason) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new.name.as_str())
        .bind(node.node.as_str())
        .bind(i64::from(node.wave))
        .bind(state.as_str())
        .bind(node.desired.as_ref().map(Json))
        .bind(reason)
        .execute(&mut *conn)
        .await
        .map_err(|error| {
            map_sqlx_error(error, || {
                format!("node {} is already in an active rollout", node.node)
            })
        })?;
    }
    insert_events(conn, &new.events, now_ms).await?;
    let rollout = select_rollout(conn, &new.name)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("rollout {} vanished", new.name)))?;
    let nodes = select_nodes(conn, &new.name).await?;
    Ok((rollout, nodes))
}

/// Applies one change of a rollout, if it is still at the
/// generation the caller read (`FailedPrecondition` otherwise,
/// so a stale engine or a racing operator cannot act), with a
/// new generation. Returns the rollout and the nodes whose
/// desired state changed, to push.
pub(in crate::store) async fn update_rollout(
    conn: &mut Tx,
    update: &RolloutUpdate,
    now_ms: i64,
) -> StoreResult<(Rollout, Vec<NodeDesired>)> {
    lock_generation(conn).await?;
    let name = &update.name;
    let current = select_rollout(conn, name)
        .await?
        .ok_or_else(|| StoreError::NotFound(Missing::Rollout(name.clone())))?;
    if let Some(expected) = update.expected_generation
        && current.generation != expected
    {
        return Err(StoreError::FailedPrecondition(format!(
            "rollout {name} changed concurrently (generation {}, expected {expected}); retry",
            current.generation
        )));
    }
    let generation = next_generation(conn).await?;
    let nodes = select_nodes(conn, name).await?;
    let mut changed = Vec::new();
    for (node, state, reason) in &update.node_states {
        set_node_state(conn, name, node, *state, reason.as_deref()).await?;
    }
    for node_name in &update.start {
        let Some(node) = nodes.iter().find(|n| &n.node == node_name) else {
            return Err(StoreError::NotFound(Missing::RolloutNode {
                rollout: name.clone(),
                node: node_name.clone(),
            }));
        };
        let Some(desired) = &node.desired else {
            continue;
        };
        let existing = node_assignment(conn, node_name).await?;
        let previous = match existing {
            Some((_, None)) => {
                set_node_state(
                    conn,
                    name,
                    node_name,
                    RolloutNodeState::Pinned,
                    Some("pinned by an operator's node assignment"),
                )
                .await?;
                continue;
            }
            Some((desired, Some(_))) => Some(desired),
            None => None,
        };
        changed.extend(
            write_node_assignment(conn, name, node_name, Some(desired), Holder::Rollout).await?,
        );
        sql::query(
            "UPDATE rollout_nodes SET state = $3, previous = $4, reason = NULL \
             WHERE rollout = $1 AND node_name = $2",
        )
        .bind(name.as_str())
        .bind(node_name.as_str())
        .bind(RolloutNodeState::Updating.as_str())
        .bind(previous.as_ref().map(Json))
        .execute(&mut *conn)
        .await?;
    }
    if update.restore {
        for node in nodes.iter().filter(|n| n.state.is_touched()) {
            match node_assignment(conn, &node.node).await? {
                // Ours: put back what was there before.
                Some((_, Some(owner))) if owner == name.as_str() => {
                    changed.extend(
                        write_node_assignment(
                            conn,
                            name,
                            &node.node,
                            node.previous.as_ref(),
                            Holder::Rollout,
                        )
                        .await?,
                    );
                }
                // Pinned or re-assigned since: the operator's
                // choice stands.
                _ => {}
            }
            set_node_state(conn, name, &node.node, RolloutNodeState::RolledBack, None).await?;
        }
    }
    let state = update.state.unwrap_or(current.state);
    let bake = update
        .bake_started_at
        .unwrap_or(current.bake_started_at)
        .map(to_unix_ms);
    let reason = update.reason.clone().unwrap_or(current.reason.clone());
    sql::query(
        "UPDATE rollouts SET state = $2, current_wave = $3, bake_started_unix_ms = $4, \
         skip_bake = $5, reason = $6, generation = $7, updated_unix_ms = $8 \
         WHERE name = $1",
    )
    .bind(name.as_str())
    .bind(state.as_str())
    .bind(i64::from(
        update.current_wave.unwrap_or(current.current_wave),
    ))
    .bind(bake)
    .bind(update.skip_bake.unwrap_or(current.skip_bake))
    .bind(reason)
    .bind(to_i64("generation", generation)?)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    if state.is_terminal() {
        sql::query("UPDATE rollout_nodes SET active = FALSE WHERE rollout = $1")
            .bind(name.as_str())
            .execute(&mut *conn)
            .await?;
    }
    insert_events(conn, &update.events, now_ms).await?;
    let rollout = select_rollout(conn, name)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("rollout {name} vanished")))?;
    Ok((rollout, changed))
}

async fn set_node_state(
    conn: &mut Tx,
    rollout: &RolloutName,
    node: &NodeName,
    state: RolloutNodeState,
    reason: Option<&str>,
) -> StoreResult<()> {
    sql::query(
        "UPDATE rollout_nodes SET state = $3, reason = $4 \
         WHERE rollout = $1 AND node_name = $2",
    )
    .bind(rollout.as_str())
    .bind(node.as_str())
    .bind(state.as_str())
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Who holds a node-level assignment a rollout writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// The rollout: it may replace or restore the row later.
    Rollout,
    /// Nobody: a plain node assignment, as an operator's pin (what a
    /// deleted rollout leaves).
    Node,
}

/// Replaces a node's node-level assignment with `desired` written by the
/// rollout and held as `holder` says (or removes it, for `None`), with a
/// generation of its own, and re-places the node.
async fn write_node_assignment(
    conn: &mut Tx,
    rollout: &RolloutName,
    node: &NodeName,
    desired: Option<&DesiredAssignment>,
    holder: Holder,
) -> StoreResult<Vec<NodeDesired>> {
    sql::query("DELETE FROM assignments WHERE node_name = $1")
        .bind(node.as_str())
        .execute(&mut *conn)
        .await?;
    let mut generation = None;
    if let Some(desired) = desired {
        let value = next_generation(conn).await?;
        generation = Some(value);
        let mut desired = desired.clone();
        desired.assignment_generation = value;
        // Says whose it is: a rollout's node-level row wins over
        // selector assignments like an operator's pin does.
        desired.target = match holder {
            Holder::Rollout => format!("node={node} (rollout {rollout})"),
            Holder::Node => format!("node={node}"),
        };
        sql::query(
            "INSERT INTO assignments (generation, node_name, desired, created_by, rollout) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(to_i64("generation", value)?)
        .bind(node.as_str())
        .bind(Json(&desired))
        .bind(format!("rollout/{rollout}"))
        .bind((holder == Holder::Rollout).then_some(rollout.as_str()))
        .execute(&mut *conn)
        .await?;
    }
    replan(conn, Some(node), &mut generation).await
}

/// Deletes a rollout that has ended, with its nodes (events stay: they
/// are the audit log). The node-level assignments it wrote either stay,
/// rewritten as plain node assignments that no rollout owns (so a later
/// rollout of the same name cannot mistake them for its own), or, with
/// `release_pins`, are removed so that the nodes fall back to what their
/// selectors give them. `FailedPrecondition` while it has not ended.
pub(in crate::store) async fn delete_rollout(
    conn: &mut Tx,
    deletion: &RolloutDeletion,
    now_ms: i64,
) -> StoreResult<DeletedRollout> {
    lock_generation(conn).await?;
    let name = &deletion.name;
    let rollout = select_rollout(conn, name)
        .await?
        .ok_or_else(|| StoreError::NotFound(Missing::Rollout(name.clone())))?;
    if !rollout.state.is_terminal() {
        return Err(StoreError::FailedPrecondition(format!(
            "rollout {name} is {}; only a rollout that has ended (succeeded, aborted or rolled \
             back) can be deleted: abort or roll it back first",
            rollout.state
        )));
    }
    let owned: Vec<(String, Json<DesiredAssignment>)> = sql::query_as(
        "SELECT node_name, desired FROM assignments \
         WHERE rollout = $1 AND node_name IS NOT NULL ORDER BY node_name",
    )
    .bind(name.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut nodes = Vec::with_capacity(owned.len());
    let mut changed = Vec::new();
    for (node, Json(desired)) in owned {
        let node = assigned_node(&node)?;
        let kept = (!deletion.release_pins).then_some(&desired);
        changed.extend(write_node_assignment(conn, name, &node, kept, Holder::Node).await?);
        nodes.push(node);
    }
    sql::query("DELETE FROM rollouts WHERE name = $1")
        .bind(name.as_str())
        .execute(&mut *conn)
        .await?;
    insert_events(conn, std::slice::from_ref(&deletion.event), now_ms).await?;
    Ok(DeletedRollout { nodes, changed })
}
