//! The rollout engine: a reconciler that looks at every unfinished rollout
//! each tick (and at once when a rollout changes), asks the pure
//! [`decide`] what to do, and writes it through the store with the
//! generation it read, so a stale leader or a racing operator cannot act
//! on an old view. Desired states it changes are pushed through the sync
//! hub like operators' assignments.
//!
//! Only the leader runs it: on Postgres the replica holding the advisory
//! lock (`Store::try_lead`), on SQLite the one process. In memory only:
//! nothing but the leadership handle; a restarted controller reads every
//! rollout back from the store and carries on where it was.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{
    Decision, NewEvent, Node, NodeName, NodeObservation, PageRequest, Rollout, RolloutNode,
    RolloutState, ServedRequests, Transition, decide,
};
use crate::fleet::{Fleet, FleetError};
use crate::store::{Leadership, RolloutUpdate, Store, StoreError};

/// Who the event log names for the engine's own transitions.
const ENGINE_ACTOR: &str = "controller";
/// How often a replica that does not lead tries to.
const FOLLOWER_RETRY: Duration = Duration::from_secs(2);
/// After taking leadership (a start or a restart), agents get this many
/// heartbeat intervals (plus [`RECONNECT_GRACE_EXTRA`]) to reconnect before the engine acts:
/// until then their streams are not open here and a gate would read every
/// node as not-ready.
const RECONNECT_GRACE_HEARTBEATS: u32 = 3;
/// Reconnect backoff of agents whose controller went away grows to
/// seconds; leave them that long too.
const RECONNECT_GRACE_EXTRA: Duration = Duration::from_secs(4);
/// After a pass that changed something, look again this soon: the next
/// step (a bake that ends, a wave that starts) often follows at once.
const AGAIN_SOON: Duration = Duration::from_millis(50);

/// What one pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pass {
    /// Some rollout changed: look again soon.
    pub changed: bool,
    /// The earliest end of a bake in progress.
    pub next_bake_end: Option<OffsetDateTime>,
}

pub struct RolloutEngine {
    store: Arc<dyn Store>,
    fleet: Fleet,
    wake: Arc<Notify>,
    tick: Duration,
}

impl RolloutEngine {
    pub(super) fn new(
        store: Arc<dyn Store>,
        fleet: Fleet,
        wake: Arc<Notify>,
        tick: Duration,
    ) -> Self {
        Self {
            store,
            fleet,
            wake,
            tick,
        }
    }

    /// Leads when it can and reconciles until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut leadership: Option<Box<dyn Leadership>> = None;
        let mut leading_since = tokio::time::Instant::now();
        loop {
            if let Some(held) = leadership.as_mut()
                && !held.still_leader().await
            {
                tracing::warn!("lost rollout engine leadership");
                leadership = None;
            }
            if leadership.is_none() {
                match self.store.try_lead().await {
                    Ok(Some(held)) => {
                        tracing::info!("leading the rollout engine");
                        leadership = Some(held);
                        leading_since = tokio::time::Instant::now();
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot try for rollout engine leadership")
                    }
                }
            }
            let grace = self.fleet.hub().heartbeat_interval() * RECONNECT_GRACE_HEARTBEATS
                + RECONNECT_GRACE_EXTRA;
            let grace_left = grace.saturating_sub(leading_since.elapsed());
            let wait = if leadership.is_some() && !grace_left.is_zero() {
                grace_left.min(self.tick)
            } else if leadership.is_some() {
                match self.reconcile_all().await {
                    Ok(Pass { changed: true, .. }) => AGAIN_SOON,
                    Ok(Pass { next_bake_end, .. }) => next_bake_end.map_or(self.tick, |end| {
                        let left = end - OffsetDateTime::now_utc();
                        Duration::try_from(left)
                            .unwrap_or(Duration::ZERO)
                            .clamp(Duration::from_millis(10), self.tick)
                    }),
                    Err(error) => {
                        tracing::warn!(%error, "rollout reconciliation failed; retrying next tick");
                        self.tick
                    }
                }
            } else {
                FOLLOWER_RETRY
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// One pass over every unfinished rollout.
    pub async fn reconcile_all(&self) -> Result<Pass, FleetError> {
        let rollouts: Vec<Rollout> = self
            .store
            .list_rollouts()
            .await?
            .into_iter()
            .filter(|rollout| !rollout.state.is_terminal())
            .collect();
        let mut pass = Pass::default();
        if rollouts.is_empty() {
            return Ok(pass);
        }
        let nodes = self.all_nodes().await?;
        let pinned: HashSet<NodeName> = self.store.pinned_nodes().await?.into_iter().collect();
        for rollout in rollouts {
            if let Some(started) = rollout.bake_started_at
                && rollout.state == RolloutState::Baking
            {
                let end = started
                    + time::Duration::try_from(rollout.spec.bake).unwrap_or(time::Duration::MAX);
                pass.next_bake_end = Some(
                    pass.next_bake_end
                        .map_or(end, |e: OffsetDateTime| e.min(end)),
                );
            }
            match self.reconcile(&rollout.name, &nodes, &pinned).await {
                Ok(changed) => pass.changed |= changed,
                // Someone changed it meanwhile: look again next tick.
                Err(FleetError::Store(StoreError::FailedPrecondition(why))) => {
                    tracing::debug!(rollout = %rollout.name, %why, "rollout moved; will look again");
                }
                Err(error) => {
                    tracing::warn!(rollout = %rollout.name, %error, "cannot reconcile rollout");
                }
            }
        }
        Ok(pass)
    }

    async fn all_nodes(&self) -> Result<Vec<Node>, FleetError> {
        let mut nodes = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .fleet
                .list_nodes(&PageRequest::new(Some(1000), after))
                .await?;
            nodes.extend(page.items);
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => return Ok(nodes),
            }
        }
    }

    async fn reconcile(
        &self,
        name: &crate::domain::RolloutName,
        fleet_nodes: &[Node],
        pinned: &HashSet<NodeName>,
    ) -> Result<bool, FleetError> {
        let Some((rollout, nodes)) = self.store.get_rollout(name).await? else {
            return Ok(false);
        };
        let mut update = RolloutUpdate::new(name.clone(), Some(rollout.generation));
        if rollout.state == RolloutState::RollingBack {
            update.restore = true;
            update.state = Some(RolloutState::RolledBack);
            update.bake_started_at = Some(None);
            let touched = nodes.iter().filter(|n| n.state.is_touched()).count();
            update.events.push(NewEvent::rollout(
                ENGINE_ACTOR,
                name,
                "rollout.rolled_back",
                format!("restored the previous assignment of {touched} nodes"),
            ));
            self.write(update).await?;
            return Ok(true);
        }
        let look = |node: &NodeName| observe(&self.fleet, fleet_nodes, pinned, node);
        let now = OffsetDateTime::now_utc();
        let decision = decide(&rollout, &nodes, look, now);
        if decision.is_empty() {
            return Ok(false);
        }
        fill_update(&mut update, &rollout, &nodes, decision, now);
        self.write(update).await?;
        Ok(true)
    }

    async fn write(&self, update: RolloutUpdate) -> Result<(), FleetError> {
        let (rollout, changed) = self.store.update_rollout(&update).await?;
        self.fleet.hub().publish(&changed);
        for event in &update.events {
            tracing::info!(rollout = %rollout.name, node = ?event.node.as_ref().map(NodeName::as_str),
                action = %event.action, "{}", event.message);
        }
        Ok(())
    }
}

/// What the engine sees of one node: readiness from the hub (or the last
/// flushed heartbeat), the agent's report and health, and whether an
/// operator pinned it.
fn observe(
    fleet: &Fleet,
    fleet_nodes: &[Node],
    pinned: &HashSet<NodeName>,
    name: &NodeName,
) -> NodeObservation {
    let Some(node) = fleet_nodes.iter().find(|node| &node.name == name) else {
        return NodeObservation {
            connected: false,
            phase: None,
            digest: None,
            serving_digest: None,
            reason: Some("node no longer exists".to_owned()),
            throttled: false,
            requests: None,
            pinned: false,
        };
    };
    let observed = node.observed.as_ref();
    NodeObservation {
        connected: fleet.is_ready(node),
        phase: observed.map(|o| o.phase),
        digest: observed.and_then(|o| o.digest.clone()),
        serving_digest: observed.and_then(|o| o.serving_digest.clone()),
        reason: observed.and_then(|o| o.reason.clone()),
        throttled: node.health.as_ref().is_some_and(|health| {
            health
                .gpus
                .iter()
                .any(|gpu| gpu.throttle_reasons.iter().any(|r| is_thermal(r)))
        }),
        requests: node
            .health
            .as_ref()
            .and_then(|health| health.inference.as_ref())
            .and_then(|inference| {
                Some(ServedRequests {
                    digest: inference.serving_digest.clone()?,
                    completed: inference.completed_since_activation,
                    failed: inference.failed_since_activation,
                    escalated: inference.escalated_since_activation,
                })
            }),
        pinned: pinned.contains(name),
    }
}

/// Throttle reasons that mean heat or power trouble, as NVML names them.
fn is_thermal(reason: &str) -> bool {
    let reason = reason.to_ascii_uppercase();
    reason.contains("THERMAL") || reason.contains("POWER_BRAKE") || reason.contains("HW_SLOWDOWN")
}

/// Turns a decision into the store's update and the event log's entries.
fn fill_update(
    update: &mut RolloutUpdate,
    rollout: &Rollout,
    nodes: &[RolloutNode],
    decision: Decision,
    now: OffsetDateTime,
) {
    let name = &rollout.name;
    for (node, state, reason) in &decision.node_updates {
        let message = match (state, reason) {
            (_, Some(reason)) => format!("{state}: {reason}"),
            (_, None) => state.to_string(),
        };
        update.events.push(NewEvent::node(
            ENGINE_ACTOR,
            name,
            node,
            &format!("node.{state}"),
            message,
        ));
    }
    update.node_states = decision.node_updates;
    for node in &decision.start {
        let what = nodes
            .iter()
            .find(|n| &n.node == node)
            .and_then(|n| n.desired.as_ref())
            .map(|d| format!("{} {} {}", d.model, d.version, d.quantization))
            .unwrap_or_default();
        update.events.push(NewEvent::node(
            ENGINE_ACTOR,
            name,
            node,
            "node.updating",
            format!("assigned {what} (wave {})", rollout.current_wave + 1),
        ));
    }
    update.start = decision.start;
    let waves = rollout.wave_count;
    match decision.transition {
        None => {}
        Some(Transition::Start) => {
            update.state = Some(RolloutState::Progressing);
            update.events.push(NewEvent::rollout(
                ENGINE_ACTOR,
                name,
                "wave.started",
                format!("wave 1 of {waves} started"),
            ));
        }
        Some(Transition::BeginBake) => {
            update.state = Some(RolloutState::Baking);
            update.bake_started_at = Some(Some(now));
            update.events.push(NewEvent::rollout(
                ENGINE_ACTOR,
                name,
                "wave.baking",
                format!(
                    "every node of wave {} is ready; baking for {:?}",
                    rollout.current_wave + 1,
                    rollout.spec.bake
                ),
            ));
        }
        Some(Transition::AdvanceWave(next)) => {
            update.state = Some(RolloutState::Progressing);
            update.current_wave = Some(next);
            update.bake_started_at = Some(None);
            update.skip_bake = Some(false);
            update.events.push(NewEvent::rollout(
                ENGINE_ACTOR,
                name,
                "wave.started",
                format!("wave {} of {waves} started", next + 1),
            ));
        }
        Some(Transition::Succeed) => {
            update.state = Some(RolloutState::Succeeded);
            update.bake_started_at = Some(None);
            update.skip_bake = Some(false);
            update.events.push(NewEvent::rollout(
                ENGINE_ACTOR,
                name,
                "rollout.succeeded",
                format!("all {waves} waves done"),
            ));
        }
        Some(Transition::Trip(trip)) => {
            update.reason = Some(Some(trip.0.clone()));
            if rollout.spec.auto_rollback {
                update.state = Some(RolloutState::RolledBack);
                update.restore = true;
                update.bake_started_at = Some(None);
                update.events.push(NewEvent::rollout(
                    ENGINE_ACTOR,
                    name,
                    "rollout.rolled_back",
                    format!("gate tripped, rolled back automatically: {}", trip.0),
                ));
            } else {
                update.state = Some(RolloutState::Halted);
                update.events.push(NewEvent::rollout(
                    ENGINE_ACTOR,
                    name,
                    "rollout.halted",
                    format!("gate tripped: {}", trip.0),
                ));
            }
        }
    }
}
