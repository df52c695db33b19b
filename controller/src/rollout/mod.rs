//! Business logic of rollouts, shared by the REST API and the engine:
//! planning (which nodes, which wave, which artifact each), creation with a
//! dry run, operators' commands, views and the event log.
//!
//! What is persisted: everything of a rollout, through the store (see
//! `domain::rollout`). In memory only: the engine's wake-up signal, so a
//! change is acted on at once instead of at the next tick.

pub mod engine;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::domain::{
    DEFAULT_SAFETY_MARGIN_PERCENT, DesiredAssignment, DesiredPrompt, Event, Fit, NewEvent, Node,
    NodeStatus, PageRequest, ResolveError, Rollout, RolloutCommand, RolloutName, RolloutNode,
    RolloutNodeState, RolloutSpec, apply_command, fit_node, memory_budget, plan_waves, resolve,
};
use crate::fleet::{Fleet, FleetError};
use crate::store::{
    DeletedRollout, Missing, NewRollout, RolloutDeletion, RolloutUpdate, Store, StoreError,
};

/// Most selected nodes one listing page of the fleet yields while planning.
const NODE_PAGE: u32 = 1000;
/// Most events one request returns.
pub const MAX_EVENTS: u32 = 1000;

/// A planned rollout: what would be written (or was).
#[derive(Debug, Clone)]
pub struct RolloutPlan {
    pub wave_count: u32,
    pub nodes: Vec<RolloutNode>,
}

/// A rollout with its nodes and what their agents report now.
#[derive(Debug, Clone)]
pub struct RolloutView {
    pub rollout: Rollout,
    pub nodes: Vec<(RolloutNode, Option<Node>)>,
}

/// The rollouts' operations. Cheap to clone.
#[derive(Clone)]
pub struct Rollouts {
    store: Arc<dyn Store>,
    fleet: Fleet,
    wake: Arc<Notify>,
}

impl Rollouts {
    pub fn new(store: Arc<dyn Store>, fleet: Fleet) -> Self {
        Self {
            store,
            fleet,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The engine to run (once, on every replica: it leads or waits).
    pub fn engine(&self, tick: std::time::Duration) -> engine::RolloutEngine {
        engine::RolloutEngine::new(
            self.store.clone(),
            self.fleet.clone(),
            self.wake.clone(),
            tick,
        )
    }

    fn wake_engine(&self) {
        self.wake.notify_one();
    }

    /// Every node of the fleet, with what the hub knows.
    async fn all_nodes(&self) -> Result<Vec<Node>, FleetError> {
        let mut nodes = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .fleet
                .list_nodes(&PageRequest::new(Some(NODE_PAGE), after))
                .await?;
            nodes.extend(page.items);
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => return Ok(nodes),
            }
        }
    }

    /// Which active nodes the spec selects, in which wave, and the artifact
    /// that fits each (or why none does). Changes nothing.
    pub async fn plan(&self, spec: &RolloutSpec) -> Result<RolloutPlan, FleetError> {
        if spec.max_unavailable == 0 {
            return Err(FleetError::InvalidArgument(
                "max unavailable must be at least 1".to_owned(),
            ));
        }
        if spec.bake > crate::domain::MAX_BAKE {
            return Err(FleetError::InvalidArgument(format!(
                "bake time must be at most {} seconds",
                crate::domain::MAX_BAKE.as_secs()
            )));
        }
        let model = &spec.model;
        if self.store.get_model(model).await?.is_none() {
            return Err(StoreError::NotFound(Missing::Model(model.clone())).into());
        }
        let candidates = self.store.resolvable_versions(model).await?;
        // A file the engine cannot load would fail on every node: refuse the
        // rollout now rather than mark each node unschedulable.
        if let Err(error @ ResolveError::Unservable { .. }) = resolve(
            model.as_str(),
            &candidates,
            &spec.requirement,
            &spec.quantization,
            None,
        ) {
            return Err(StoreError::FailedPrecondition(error.to_string()).into());
        }
        let prompt = match &spec.prompt {
            None => None,
            Some(reference) => {
                let prompt = self
                    .store
                    .get_prompt(&reference.name, reference.version)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(Missing::PromptRef(reference.clone())))?;
                Some(DesiredPrompt {
                    name: prompt.name.to_string(),
                    version: prompt.version,
                    text: prompt.text,
                    chat_template: prompt.chat_template,
                })
            }
        };
        // An unknown policy is refused now, at plan time, like an unknown
        // prompt, rather than reaching no node.
        let escalation_policy = match &spec.escalation_policy {
            None => None,
            Some(reference) => Some(self.fleet.assigned_policy(reference).await?),
        };
        let target = crate::domain::AssignmentTarget::Selector(spec.selector.clone());
        let selected: Vec<Node> = self
            .all_nodes()
            .await?
            .into_iter()
            .filter(|node| {
                node.status == NodeStatus::Active && target.matches(&node.name, &node.labels)
            })
            .collect();
        if selected.is_empty() {
            return Err(StoreError::FailedPrecondition(format!(
                "selector {target} matches no active node"
            ))
            .into());
        }
        let names: Vec<_> = selected.iter().map(|node| node.name.clone()).collect();
        let waves = plan_waves(&names, &spec.waves);
        let mut nodes = Vec::with_capacity(selected.len());
        for (wave, members) in waves.iter().enumerate() {
            for name in members {
                let Some(node) = selected.iter().find(|node| &node.name == name) else {
                    continue;
                };
                let budget = memory_budget(
                    &node.inventory,
                    node.health.as_ref(),
                    DEFAULT_SAFETY_MARGIN_PERCENT,
                );
                let fit = fit_node(
                    model,
                    &candidates,
                    &spec.requirement,
                    &spec.quantization,
                    budget,
                );
                // What the rollout does not say, it keeps: the node's current
                // prompt (with its policy) and aliases carry over, so that a
                // version change does not silently drop them.
                let current = node.desired.assignment.as_ref();
                let (node_prompt, prompt_policy) = match (&prompt, current) {
                    (Some(prompt), _) => (Some(prompt.clone()), spec.prompt_policy),
                    (None, Some(current)) => (current.prompt.clone(), current.prompt_policy),
                    (None, None) => (None, spec.prompt_policy),
                };
                let aliases = match current {
                    Some(current) if spec.aliases.is_empty() => current.aliases.clone(),
                    _ => spec.aliases.clone(),
                };
                // The escalation policy carries over the same way.
                let node_escalation_policy = match (&escalation_policy, current) {
                    (Some(policy), _) => Some(policy.clone()),
                    (None, Some(current)) => current.escalation_policy.clone(),
                    (None, None) => None,
                };
                let (state, desired, reason) = match fit {
                    Fit::Fits(fits) => (
                        RolloutNodeState::Waiting,
                        Some(DesiredAssignment {
                            model: model.to_string(),
                            version: fits.version.version.to_string(),
                            quantization: fits.artifact.quantization.name().to_owned(),
                            digest: fits.artifact.digest.to_hex(),
                            size_bytes: fits.artifact.size_bytes,
                            prompt: node_prompt,
                            prompt_policy,
                            aliases,
                            escalation_policy: node_escalation_policy,
                            assignment_generation: 0,
                            target: String::new(),
                        }),
                        None,
                    ),
                    Fit::Unschedulable(reason) => {
                        (RolloutNodeState::Unschedulable, None, Some(reason))
                    }
                };
                nodes.push(RolloutNode {
                    node: name.clone(),
                    wave: u32::try_from(wave).unwrap_or(u32::MAX),
                    state,
                    desired,
                    // What it replaces, for the dry run's view; recorded
                    // again when the node is started.
                    previous: current.cloned(),
                    reason,
                });
            }
        }
        Ok(RolloutPlan {
            wave_count: u32::try_from(waves.len()).unwrap_or(u32::MAX),
            nodes,
        })
    }

    /// Plans and records a rollout; the engine starts it.
    pub async fn create(
        &self,
        by: &str,
        name: RolloutName,
        spec: RolloutSpec,
    ) -> Result<(Rollout, Vec<RolloutNode>), FleetError> {
        let plan = self.plan(&spec).await?;
        let unschedulable = plan
            .nodes
            .iter()
            .filter(|node| node.state == RolloutNodeState::Unschedulable)
            .count();
        let mut events = vec![NewEvent::rollout(
            by,
            &name,
            "rollout.created",
            format!(
                "{} {} ({}) to {} nodes in {} waves; {unschedulable} unschedulable",
                spec.model,
                spec.requirement,
                spec.quantization,
                plan.nodes.len(),
                plan.wave_count
            ),
        )];
        events.extend(
            plan.nodes
                .iter()
                .filter(|node| node.state == RolloutNodeState::Unschedulable)
                .map(|node| {
                    NewEvent::node(
                        by,
                        &name,
                        &node.node,
                        "node.unschedulable",
                        node.reason.clone().unwrap_or_default(),
                    )
                }),
        );
        let created = self
            .store
            .create_rollout(&NewRollout {
                name: name.clone(),
                spec,
                wave_count: plan.wave_count,
                nodes: plan.nodes,
                created_by: by.to_owned(),
                events,
            })
            .await?;
        tracing::info!(rollout = %name, by, waves = plan.wave_count, "rollout created");
        self.wake_engine();
        Ok(created)
    }

    pub async fn get(&self, name: &RolloutName) -> Result<RolloutView, FleetError> {
        let (rollout, nodes) = self
            .store
            .get_rollout(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(Missing::Rollout(name.clone())))?;
        let mut with_nodes = Vec::with_capacity(nodes.len());
        for node in nodes {
            let current = match self.fleet.get_node(&node.node).await {
                Ok(current) => Some(current),
                Err(FleetError::Store(StoreError::NotFound(_))) => None,
                Err(error) => return Err(error),
            };
            with_nodes.push((node, current));
        }
        Ok(RolloutView {
            rollout,
            nodes: with_nodes,
        })
    }

    pub async fn list(&self) -> Result<Vec<Rollout>, FleetError> {
        Ok(self.store.list_rollouts().await?)
    }

    /// An operator's command, checked against the state machine.
    pub async fn command(
        &self,
        by: &str,
        name: &RolloutName,
        command: RolloutCommand,
    ) -> Result<Rollout, FleetError> {
        // A racing engine tick may move the rollout between our read and
        // our write; read again and retry a few times.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (rollout, _) = self
                .store
                .get_rollout(name)
                .await?
                .ok_or_else(|| StoreError::NotFound(Missing::Rollout(name.clone())))?;
            let outcome = apply_command(rollout.state, command, rollout.bake_started_at.is_some())
                .map_err(|why| {
                    StoreError::FailedPrecondition(format!(
                        "cannot {} rollout {name}: {why}",
                        command.as_str()
                    ))
                })?;
            let mut update = RolloutUpdate::new(name.clone(), Some(rollout.generation));
            update.state = Some(outcome.state);
            if outcome.skip_bake {
                update.skip_bake = Some(true);
            }
            if matches!(command, RolloutCommand::Abort | RolloutCommand::Rollback) {
                update.reason = Some(Some(format!("{} by {by}", command.as_str())));
            }
            update.events.push(NewEvent::rollout(
                by,
                name,
                &format!("rollout.{}", command.as_str()),
                format!("{} → {}", rollout.state, outcome.state),
            ));
            match self.store.update_rollout(&update).await {
                Ok((rollout, changed)) => {
                    self.fleet.hub().publish(&changed);
                    tracing::info!(rollout = %name, by, command = command.as_str(),
                        state = %rollout.state, "rollout command applied");
                    self.wake_engine();
                    return Ok(rollout);
                }
                Err(StoreError::FailedPrecondition(_)) if attempts < 5 => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Deletes a rollout that has ended, so that its name can be used
    /// again. Deleting a record does not change what nodes serve: the
    /// node-level assignments it wrote stay, as plain node assignments,
    /// unless `release_pins` removes them (then their nodes fall back to
    /// their selector assignments, which is pushed at once). Its events
    /// stay in the audit log.
    pub async fn delete(
        &self,
        by: &str,
        name: &RolloutName,
        release_pins: bool,
    ) -> Result<DeletedRollout, FleetError> {
        let message = if release_pins {
            "deleted; the node assignments it wrote were removed"
        } else {
            "deleted; the node assignments it wrote stay as plain node assignments"
        };
        let deleted = self
            .store
            .delete_rollout(&RolloutDeletion {
                name: name.clone(),
                release_pins,
                event: NewEvent::rollout(by, name, "rollout.delete", message.to_owned()),
            })
            .await?;
        self.fleet.hub().publish(&deleted.changed);
        tracing::info!(rollout = %name, by, release_pins, nodes = deleted.nodes.len(),
            nodes_changed = deleted.changed.len(), "rollout deleted");
        Ok(deleted)
    }

    /// Events of one rollout (a deleted one's included) or of all.
    pub async fn events(
        &self,
        rollout: Option<&RolloutName>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, FleetError> {
        let events = self
            .store
            .list_events(rollout, after, limit.clamp(1, MAX_EVENTS))
            .await?;
        // A name that never had a rollout (a typo) is a 404, not silence.
        if let Some(name) = rollout
            && events.is_empty()
            && after == 0
            && self.store.get_rollout(name).await?.is_none()
        {
            return Err(StoreError::NotFound(Missing::Rollout(name.clone())).into());
        }
        Ok(events)
    }
}
