//! The fleet's queries: enrolment, placement (`replan`), assignments, node
//! changes and what agents report, written once for both backends (see
//! `sql.rs`). Every function runs inside the caller's transaction, and
//! every writer of node rows takes the `fleet_generation` row lock first
//! ([`lock_generation`]), so a flush and a re-placement never deadlock.

use std::collections::BTreeMap;

use sqlx::types::Json;

use crate::domain::{
    Assignment, AssignmentTarget, DesiredAssignment, HealthPoint, InferenceMinute, Labels,
    NewAssignment, Node, NodeChange, NodeDesired, NodeName, NodeStatus, Placement, place,
};
use crate::store::rows::{
    AssignmentRow, HealthMinuteRow, NodeRow, PlacementRow, SELECT_ASSIGNMENTS, SELECT_NODES,
    SELECT_PLACEMENT, convert_all, map_sqlx_error, to_i64, to_u64,
};
use crate::store::sql::{self, ColumnType, Tx};
use crate::store::{Enrolment, Missing, NodeReport, StoreError, StoreResult};

/// An assignment's `selector` column, as bound.
type SelectorColumn<'a> = Json<&'a BTreeMap<String, String>>;

/// Reports written by one statement.
const REPORTS_PER_STATEMENT: usize = 2000;

/// Enrols a node once its token row was read (and locked): checks
/// the token against the node's name, refuses to replace an enrolled
/// node that nobody approved replacing (writing nothing, so the
/// token keeps its use), takes one use, and inserts the node or
/// overwrites it in place, then places it (a selector may already
/// match).
///
/// A replacement keeps the node's status (a cordoned node stays
/// cordoned), consumes the operator's approval, and takes a new
/// credential generation, which revokes every earlier credential.
pub(in crate::store) async fn enroll(
    conn: &mut Tx,
    enrolment: &Enrolment,
    token: Option<&crate::store::rows::TokenCheckRow>,
) -> StoreResult<crate::store::EnrollOutcome> {
    use crate::domain::TokenRejection;
    use crate::store::EnrollOutcome;
    let node = &enrolment.node;
    if let Some(rejection) =
        crate::store::rows::check_token(token, &enrolment.secret_hash, &node.name)
    {
        return Ok(EnrollOutcome::Rejected(rejection));
    }
    // Every writer of node rows takes the generation lock first; it
    // also serialises enrolments racing for one name.
    lock_generation(conn).await?;
    let existing: Option<(bool,)> =
        sql::query_as("SELECT replace_approved FROM nodes WHERE name = $1")
            .bind(node.name.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((approved,)) = existing {
        if !enrolment.replace_existing {
            return Err(StoreError::AlreadyExists(format!(
                "node {} is already enrolled; re-enrol it explicitly with replace_existing (agent flag --replace) once an operator approved the replacement",
                node.name
            )));
        }
        let by_token = token.is_some_and(|token| token.may_replace(&node.name));
        if !approved && !by_token {
            return Ok(EnrollOutcome::Rejected(
                TokenRejection::ReplacementNotApproved,
            ));
        }
    }
    sql::query("UPDATE bootstrap_tokens SET uses_left = uses_left - 1 WHERE id = $1")
        .bind(&enrolment.token_id)
        .execute(&mut *conn)
        .await?;
    let credential_generation = next_generation(conn).await?;
    // Overwriting keeps the row's id, status and desired generation,
    // so the node's generations keep growing across re-enrolments.
    let on_conflict = if existing.is_some() {
        " ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, \
         inventory = excluded.inventory, agent_version = excluded.agent_version, \
         enrolled_at = excluded.enrolled_at, \
         bootstrap_token_id = excluded.bootstrap_token_id, \
         refresh_secret_hash = excluded.refresh_secret_hash, \
         credential_generation = excluded.credential_generation, \
         replace_approved = false, \
         observed = NULL, health = NULL, last_heartbeat_unix_ms = NULL"
    } else {
        ""
    };
    sql::query(format!(
        "INSERT INTO nodes (name, labels, inventory, agent_version, status, \
         bootstrap_token_id, refresh_secret_hash, credential_generation) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8){on_conflict}"
    ))
    .bind(node.name.as_str())
    .bind(Json(node.labels.as_map()))
    .bind(Json(&node.inventory))
    .bind(&node.agent_version)
    .bind(enrolment.initial_status.as_str())
    .bind(&enrolment.token_id)
    .bind(enrolment.refresh_secret_hash.0.as_slice())
    .bind(to_i64("credential_generation", credential_generation)?)
    .execute(&mut *conn)
    .await
    .map_err(|error| map_sqlx_error(error, || format!("node {} is already enrolled", node.name)))?;
    replan(conn, Some(&node.name), &mut None).await?;
    let node = select_node(conn, &node.name)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("node {} vanished", node.name)))?;
    Ok(EnrollOutcome::Enrolled(Box::new(node)))
}

/// A node's credential generation (`None`: no such node).
pub(in crate::store) async fn credential_generation(
    conn: &mut Tx,
    name: &NodeName,
) -> StoreResult<Option<u64>> {
    let value: Option<i64> =
        sql::query_scalar("SELECT credential_generation FROM nodes WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    value
        .map(|value| to_u64("nodes.credential_generation", value))
        .transpose()
}

/// Removes a node with its node-level assignment and history.
pub(in crate::store) async fn remove_node(conn: &mut Tx, name: &NodeName) -> StoreResult<()> {
    lock_generation(conn).await?;
    let removed = sql::query("DELETE FROM nodes WHERE name = $1")
        .bind(name.as_str())
        .execute(&mut *conn)
        .await?;
    if removed.rows_affected() == 0 {
        return Err(StoreError::NotFound(Missing::Node(name.clone())));
    }
    sql::query("DELETE FROM assignments WHERE node_name = $1")
        .bind(name.as_str())
        .execute(&mut *conn)
        .await?;
    sql::query("DELETE FROM node_health_minutes WHERE node_name = $1")
        .bind(name.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(in crate::store) async fn select_node(
    conn: &mut Tx,
    name: &NodeName,
) -> StoreResult<Option<Node>> {
    sql::query_as::<NodeRow>(format!("{SELECT_NODES} WHERE name = $1"))
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .map(Node::try_from)
        .transpose()
}

/// Takes the next generation. The row stays locked until the
/// transaction ends, which serialises every change of desired state
/// (so generations also commit in order). Announces the change to
/// other replicas; the announcement is delivered at commit.
pub(in crate::store) async fn next_generation(conn: &mut Tx) -> StoreResult<u64> {
    let value: i64 =
        sql::query_scalar("UPDATE fleet_generation SET value = value + 1 RETURNING value")
            .fetch_one(&mut *conn)
            .await?;
    if let Some(announce) = conn.dialect().announce_change() {
        sql::query(announce).execute(&mut *conn).await?;
    }
    to_u64("fleet_generation.value", value)
}

/// The desired state of every node whose generation is above
/// `after`, oldest change first: what replicas that did not make a
/// change push to the streams they hold.
pub(in crate::store) async fn desired_changed_since(
    conn: &mut Tx,
    after: u64,
) -> StoreResult<Vec<NodeDesired>> {
    let rows = sql::query_as::<NodeRow>(format!(
        "{SELECT_NODES} WHERE desired_generation > $1 ORDER BY desired_generation"
    ))
    .bind(to_i64("generation", after)?)
    .fetch_all(&mut *conn)
    .await?;
    let nodes: Vec<Node> = convert_all(rows)?;
    Ok(nodes
        .into_iter()
        .map(|node| NodeDesired {
            name: node.name,
            status: node.status,
            desired: node.desired,
        })
        .collect())
}

/// Locks the generation row, so that placement reads assignments
/// and nodes that no concurrent change is rewriting.
pub(in crate::store) async fn lock_generation(conn: &mut Tx) -> StoreResult<()> {
    let lock = conn.dialect().for_update();
    sql::query_scalar::<i64>(format!("SELECT value FROM fleet_generation{lock}"))
        .fetch_one(&mut *conn)
        .await?;
    Ok(())
}

pub(in crate::store) async fn load_assignments(conn: &mut Tx) -> StoreResult<Vec<Assignment>> {
    let rows = sql::query_as::<AssignmentRow>(format!("{SELECT_ASSIGNMENTS} ORDER BY generation"))
        .fetch_all(&mut *conn)
        .await?;
    convert_all(rows)
}

/// Re-places every node (or just `only`) under the current
/// assignments and writes the desired state of those that change,
/// all with one new generation (taken into `generation` on first
/// need, or reused when the caller already took one). Reads only
/// what placement needs and writes one statement per distinct
/// outcome, so re-placing a large fleet stays a handful of queries.
pub(in crate::store) async fn replan(
    conn: &mut Tx,
    only: Option<&NodeName>,
    generation: &mut Option<u64>,
) -> StoreResult<Vec<NodeDesired>> {
    lock_generation(conn).await?;
    let assignments = load_assignments(conn).await?;
    let rows: Vec<PlacementRow> = match only {
        Some(name) => {
            sql::query_as(format!("{SELECT_PLACEMENT} WHERE name = $1"))
                .bind(name.as_str())
                .fetch_all(&mut *conn)
                .await?
        }
        None => {
            sql::query_as(SELECT_PLACEMENT)
                .fetch_all(&mut *conn)
                .await?
        }
    };
    // Nodes to rewrite, grouped by the assignment they now get
    // (0: nothing).
    let mut groups: BTreeMap<u64, Vec<(NodeName, NodeStatus)>> = BTreeMap::new();
    for row in rows {
        let (name, labels, status, current) = row.into_parts()?;
        let Placement::Serve(chosen) = place(&name, &labels, status, &assignments) else {
            continue;
        };
        let wanted = chosen.map_or(0, |assignment| assignment.generation);
        if wanted != current {
            groups.entry(wanted).or_default().push((name, status));
        }
    }
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let value = match *generation {
        Some(value) => value,
        None => {
            let value = next_generation(conn).await?;
            *generation = Some(value);
            value
        }
    };
    let mut changed = Vec::new();
    for (wanted, nodes) in groups {
        let desired = assignments
            .iter()
            .find(|assignment| assignment.generation == wanted)
            .map(|assignment| assignment.desired.clone());
        let names: Vec<&str> = nodes.iter().map(|(name, _)| name.as_str()).collect();
        let names_in = conn.dialect().json_strings(3);
        sql::query(format!(
            "UPDATE nodes SET desired = $1, desired_generation = $2 WHERE name IN ({names_in})"
        ))
        .bind(desired.as_ref().map(Json))
        .bind(to_i64("generation", value)?)
        .bind(Json(&names))
        .execute(&mut *conn)
        .await?;
        changed.extend(nodes.into_iter().map(|(name, status)| NodeDesired {
            name,
            status,
            desired: crate::domain::DesiredState {
                generation: value,
                assignment: desired.clone(),
            },
        }));
    }
    Ok(changed)
}

async fn write_desired(
    conn: &mut Tx,
    name: &NodeName,
    desired: Option<&DesiredAssignment>,
    generation: u64,
) -> StoreResult<()> {
    sql::query("UPDATE nodes SET desired = $2, desired_generation = $3 WHERE name = $1")
        .bind(name.as_str())
        .bind(desired.map(Json))
        .bind(to_i64("generation", generation)?)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(in crate::store) async fn create_assignment(
    conn: &mut Tx,
    new: &NewAssignment,
) -> StoreResult<(Assignment, Vec<NodeDesired>)> {
    lock_generation(conn).await?;
    if let AssignmentTarget::Node(name) = &new.target
        && select_node(conn, name).await?.is_none()
    {
        return Err(StoreError::NotFound(Missing::Node(name.clone())));
    }
    let generation = next_generation(conn).await?;
    delete_assignment_of(conn, &new.target).await?;
    let mut desired = new.desired.clone();
    desired.assignment_generation = generation;
    desired.target = new.target.to_string();
    let (node_name, selector) = target_columns(&new.target);
    let row = sql::query_as::<AssignmentRow>(
        "INSERT INTO assignments (generation, node_name, selector, desired, created_by) \
         VALUES ($1, $2, $3, $4, $5) \
         RETURNING generation, node_name, selector, desired, created_by, created_at",
    )
    .bind(to_i64("generation", generation)?)
    .bind(node_name)
    .bind(selector)
    .bind(Json(&desired))
    .bind(&new.created_by)
    .fetch_one(&mut *conn)
    .await?;
    let assignment = Assignment::try_from(row)?;
    let changed = replan(conn, None, &mut Some(generation)).await?;
    Ok((assignment, changed))
}

/// The `node_name` and `selector` columns of an assignment's target: one
/// of them is set.
fn target_columns(target: &AssignmentTarget) -> (Option<&str>, Option<SelectorColumn<'_>>) {
    match target {
        AssignmentTarget::Node(name) => (Some(name.as_str()), None),
        AssignmentTarget::Selector(labels) => (None, Some(Json(labels.as_map()))),
    }
}

async fn delete_assignment_of(conn: &mut Tx, target: &AssignmentTarget) -> StoreResult<bool> {
    // Selectors compare as their JSON text on SQLite and as JSONB on
    // Postgres; both are canonical (sorted keys) when written by us.
    let deleted = match target {
        AssignmentTarget::Node(name) => {
            sql::query("DELETE FROM assignments WHERE node_name = $1")
                .bind(name.as_str())
                .execute(&mut *conn)
                .await?
        }
        AssignmentTarget::Selector(labels) => {
            sql::query("DELETE FROM assignments WHERE selector = $1")
                .bind(Json(labels.as_map()))
                .execute(&mut *conn)
                .await?
        }
    };
    Ok(deleted.rows_affected() > 0)
}

pub(in crate::store) async fn remove_assignment(
    conn: &mut Tx,
    target: &AssignmentTarget,
) -> StoreResult<Vec<NodeDesired>> {
    lock_generation(conn).await?;
    if !delete_assignment_of(conn, target).await? {
        return Err(StoreError::NotFound(Missing::Assignment(target.clone())));
    }
    replan(conn, None, &mut None).await
}

pub(in crate::store) async fn list_assignments(
    conn: &mut Tx,
    after: Option<u64>,
    limit: i64,
) -> StoreResult<Vec<Assignment>> {
    let rows = sql::query_as::<AssignmentRow>(format!(
        "{SELECT_ASSIGNMENTS} WHERE generation > $1 ORDER BY generation LIMIT $2"
    ))
    .bind(to_i64("cursor", after.unwrap_or(0))?)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    convert_all(rows)
}

/// Applies an operator's change to a node and re-places it. A
/// drain empties the desired state of a node that stays cordoned.
pub(in crate::store) async fn change_node(
    conn: &mut Tx,
    name: &NodeName,
    change: &NodeChange,
) -> StoreResult<(Node, Option<NodeDesired>)> {
    lock_generation(conn).await?;
    let node = select_node(conn, name)
        .await?
        .ok_or_else(|| StoreError::NotFound(Missing::Node(name.clone())))?;
    let status_before = node.status;
    let mut drained = None;
    match change {
        NodeChange::Status(status) => {
            set_status(conn, name, *status).await?;
        }
        NodeChange::Drain => {
            set_status(conn, name, NodeStatus::Cordoned).await?;
            if node.desired.assignment.is_some() {
                let generation = next_generation(conn).await?;
                write_desired(conn, name, None, generation).await?;
                drained = Some(NodeDesired {
                    name: name.clone(),
                    status: NodeStatus::Cordoned,
                    desired: crate::domain::DesiredState {
                        generation,
                        assignment: None,
                    },
                });
            }
        }
        NodeChange::Labels { set, remove } => {
            let mut labels = node.labels.as_map().clone();
            for key in remove {
                labels.remove(key);
            }
            labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            let labels = Labels::new(labels)
                .map_err(|error| StoreError::FailedPrecondition(error.to_string()))?;
            sql::query("UPDATE nodes SET labels = $2 WHERE name = $1")
                .bind(name.as_str())
                .bind(Json(labels.as_map()))
                .execute(&mut *conn)
                .await?;
        }
    }
    let mut changed = replan(conn, Some(name), &mut None).await?;
    let mut node = select_node(conn, name)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("node {name} vanished")))?;
    let pushed = match changed.pop().or(drained) {
        Some(mut desired) => {
            desired.status = node.status;
            Some(desired)
        }
        // A status change alone (cordon, approval) is pushed too,
        // under a new generation: agents show it, and replicas
        // holding the node's stream find it by generation.
        None if node.status != status_before => {
            let generation = next_generation(conn).await?;
            write_desired(conn, name, node.desired.assignment.as_ref(), generation).await?;
            node.desired.generation = generation;
            Some(NodeDesired {
                name: node.name.clone(),
                status: node.status,
                desired: node.desired.clone(),
            })
        }
        None => None,
    };
    Ok((node, pushed))
}

async fn set_status(conn: &mut Tx, name: &NodeName, status: NodeStatus) -> StoreResult<()> {
    sql::query("UPDATE nodes SET status = $2 WHERE name = $1")
        .bind(name.as_str())
        .bind(status.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(in crate::store) async fn update_inventory(
    conn: &mut Tx,
    name: &NodeName,
    inventory: &crate::domain::NodeInventory,
    agent_version: &str,
) -> StoreResult<()> {
    let done = sql::query("UPDATE nodes SET inventory = $2, agent_version = $3 WHERE name = $1")
        .bind(name.as_str())
        .bind(Json(inventory))
        .bind(agent_version)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(Missing::Node(name.clone())));
    }
    Ok(())
}

pub(in crate::store) async fn refresh_secret_hash(
    conn: &mut Tx,
    name: &NodeName,
) -> StoreResult<Option<Option<Vec<u8>>>> {
    Ok(sql::query_scalar::<Option<Vec<u8>>>(
        "SELECT refresh_secret_hash FROM nodes WHERE name = $1",
    )
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await?)
}

/// Writes what agents reported, each column only where the report
/// has it: one statement per chunk, the rows passed as one JSON
/// array. Takes the generation lock first, like every writer of node
/// rows, so a flush and a re-placement never deadlock.
pub(in crate::store) async fn write_reports(
    conn: &mut Tx,
    reports: &[NodeReport],
) -> StoreResult<()> {
    #[derive(serde::Serialize)]
    struct ReportRow<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        observed: Option<&'a crate::domain::ObservedState>,
        #[serde(skip_serializing_if = "Option::is_none")]
        health: Option<&'a crate::domain::HealthSample>,
        #[serde(skip_serializing_if = "Option::is_none")]
        heartbeat: Option<i64>,
    }
    lock_generation(conn).await?;
    for chunk in reports.chunks(REPORTS_PER_STATEMENT) {
        let rows: Vec<ReportRow<'_>> = chunk
            .iter()
            .map(|report| ReportRow {
                name: report.name.as_str(),
                observed: report.observed.as_ref(),
                health: report.health.as_ref(),
                heartbeat: report.last_heartbeat_unix_ms,
            })
            .collect();
        let reports_from = conn.dialect().json_records(
            1,
            &[
                ("name", ColumnType::Text),
                ("observed", ColumnType::Json),
                ("health", ColumnType::Json),
                ("heartbeat", ColumnType::BigInt),
            ],
        );
        sql::query(format!(
            "UPDATE nodes AS n SET observed = COALESCE(r.observed, n.observed), \
             health = COALESCE(r.health, n.health), \
             last_heartbeat_unix_ms = COALESCE(r.heartbeat, n.last_heartbeat_unix_ms) \
             FROM ({reports_from}) AS r WHERE n.name = r.name"
        ))
        .bind(Json(&rows))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Writes (or overwrites) minutes of health history, one statement
/// per chunk with the rows passed as one JSON array.
pub(in crate::store) async fn write_health_minutes(
    conn: &mut Tx,
    points: &[(NodeName, HealthPoint)],
) -> StoreResult<()> {
    #[derive(serde::Serialize)]
    struct MinuteRow<'a> {
        node_name: &'a str,
        minute_unix: i64,
        samples: u32,
        cpu: f64,
        memory: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        gpu_util: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        gpu_temp: Option<f64>,
        throttled: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        inference: Option<&'a InferenceMinute>,
    }
    for chunk in points.chunks(REPORTS_PER_STATEMENT) {
        let rows = chunk
            .iter()
            .map(|(name, point)| {
                Ok(MinuteRow {
                    node_name: name.as_str(),
                    minute_unix: point.at.unix_timestamp(),
                    samples: point.samples,
                    cpu: f64::from(point.cpu_utilisation_percent),
                    memory: to_i64("memory_used_bytes_max", point.memory_used_bytes_max)?,
                    gpu_util: point.gpu_utilisation_percent.map(f64::from),
                    gpu_temp: point.gpu_temperature_celsius_max.map(f64::from),
                    throttled: point.throttled,
                    inference: point.inference.as_ref(),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        // `WHERE true` keeps SQLite from reading ON CONFLICT as a join
        // constraint of the SELECT.
        let minutes_from = conn.dialect().json_records(
            1,
            &[
                ("node_name", ColumnType::Text),
                ("minute_unix", ColumnType::BigInt),
                ("samples", ColumnType::BigInt),
                ("cpu", ColumnType::Double),
                ("memory", ColumnType::BigInt),
                ("gpu_util", ColumnType::Double),
                ("gpu_temp", ColumnType::Double),
                ("throttled", ColumnType::Boolean),
                ("inference", ColumnType::Json),
            ],
        );
        sql::query(format!(
            "INSERT INTO node_health_minutes (node_name, minute_unix, samples, \
             cpu_utilisation_percent, memory_used_bytes_max, gpu_utilisation_percent, \
             gpu_temperature_celsius_max, throttled, inference) \
             SELECT r.node_name, r.minute_unix, r.samples, r.cpu, r.memory, r.gpu_util, \
             r.gpu_temp, r.throttled, r.inference FROM ({minutes_from}) AS r WHERE true \
             ON CONFLICT (node_name, minute_unix) DO UPDATE SET \
             samples = excluded.samples, \
             cpu_utilisation_percent = excluded.cpu_utilisation_percent, \
             memory_used_bytes_max = excluded.memory_used_bytes_max, \
             gpu_utilisation_percent = excluded.gpu_utilisation_percent, \
             gpu_temperature_celsius_max = excluded.gpu_temperature_celsius_max, \
             throttled = excluded.throttled, \
             inference = excluded.inference"
        ))
        .bind(Json(&rows))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(in crate::store) async fn read_health_minutes(
    conn: &mut Tx,
    name: &NodeName,
    since_unix: i64,
) -> StoreResult<Vec<HealthPoint>> {
    let rows = sql::query_as::<HealthMinuteRow>(
        "SELECT minute_unix, samples, cpu_utilisation_percent, memory_used_bytes_max, \
         gpu_utilisation_percent, gpu_temperature_celsius_max, throttled, inference \
         FROM node_health_minutes WHERE node_name = $1 AND minute_unix >= $2 \
         ORDER BY minute_unix",
    )
    .bind(name.as_str())
    .bind(since_unix)
    .fetch_all(&mut *conn)
    .await?;
    convert_all(rows)
}

pub(in crate::store) async fn prune_health_minutes(
    conn: &mut Tx,
    before_unix: i64,
) -> StoreResult<u64> {
    let done = sql::query("DELETE FROM node_health_minutes WHERE minute_unix < $1")
        .bind(before_unix)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}
