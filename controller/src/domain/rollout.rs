//! Rollouts: moving a selection of nodes to a new model version,
//! quantization or system prompt in health-gated waves.
//!
//! Everything here is pure: the wave planner ([`plan_waves`]), the
//! hardware-fit choice of an artifact per node ([`fit_node`]), the gates
//! ([`evaluate_gates`]) and the reconciler's decision for one tick
//! ([`decide`]). The engine (`rollout/`) reads the store and the sync hub,
//! calls [`decide`] and writes what it returns, so every rule is tested
//! here without a database or a network.
//!
//! What is persisted (by `store/`): the rollout (spec, state, current wave,
//! when the current wave's bake began), one row per selected node (its
//! wave, its state, the artifact chosen for it, and the node-level
//! assignment it had before, to restore on rollback), and an event log.
//! Nothing of a rollout lives only in memory, so a restarted controller
//! resumes where the last one stopped.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    Artifact, AssignmentPhase, DesiredAssignment, HealthSample, Labels, ModelName, ModelVersion,
    NodeInventory, NodeName, PolicyRef, PromptPolicy, PromptRef, QuantizationPolicy, Resolution,
    RolloutName, resolve,
};

/// Most waves a rollout may have.
pub const MAX_WAVES: usize = 100;
/// Longest bake time a rollout may ask for.
pub const MAX_BAKE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Share of a node's free memory kept free by `auto` (percent).
pub const DEFAULT_SAFETY_MARGIN_PERCENT: u8 = 10;

/// One step of a rollout's strategy: a cumulative number of nodes, or a
/// cumulative share of the selected nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    Count(u32),
    /// 1 to 100.
    Percent(u8),
}

impl WaveSize {
    /// How many of `total` nodes have been reached once this wave is done
    /// (percentages round up, so `1%` of 20 nodes is one node).
    fn cumulative(self, total: usize) -> usize {
        match self {
            Self::Count(count) => (count as usize).min(total),
            Self::Percent(percent) => (total * usize::from(percent)).div_ceil(100).min(total),
        }
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(count) => write!(f, "{count}"),
            Self::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// A rollout's waves, e.g. `1,10%,50%,100%`: cumulative targets in
/// non-decreasing order. Whatever the last wave leaves out is added as a
/// final wave, so every selected node is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waves(Vec<WaveSize>);

impl Waves {
    pub fn sizes(&self) -> &[WaveSize] {
        &self.0
    }
}

impl Default for Waves {
    /// One canary node, then everything.
    fn default() -> Self {
        Self(vec![WaveSize::Count(1), WaveSize::Percent(100)])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid waves {input:?}: {why}")]
pub struct InvalidWaves {
    input: String,
    why: &'static str,
}

impl FromStr for Waves {
    type Err = InvalidWaves;

    /// Parses `1,10%,50%,100%`: positive counts and percentages from 1 to
    /// 100, at most [`MAX_WAVES`] of them.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |why| InvalidWaves {
            input: input.chars().take(80).collect(),
            why,
        };
        let mut sizes = Vec::new();
        for part in input.split(',').map(str::trim) {
            let size = match part.strip_suffix('%') {
                Some(percent) => {
                    let percent: u8 = percent.parse().map_err(|_| {
                        invalid("a percentage must be a whole number from 1 to 100")
                    })?;
                    if percent == 0 || percent > 100 {
                        return Err(invalid("a percentage must be from 1% to 100%"));
                    }
                    WaveSize::Percent(percent)
                }
                None => {
                    let count: u32 = part.parse().map_err(|_| {
                        invalid(
                            "expected comma-separated counts or percentages, e.g. 1,10%,50%,100%",
                        )
                    })?;
                    if count == 0 {
                        return Err(invalid("a wave must have at least one node"));
                    }
                    WaveSize::Count(count)
                }
            };
            sizes.push(size);
        }
        if sizes.len() > MAX_WAVES {
            return Err(invalid("too many waves (at most 100)"));
        }
        let percents: Vec<u8> = sizes
            .iter()
            .filter_map(|size| match size {
                WaveSize::Percent(percent) => Some(*percent),
                WaveSize::Count(_) => None,
            })
            .collect();
        let counts: Vec<u32> = sizes
            .iter()
            .filter_map(|size| match size {
                WaveSize::Count(count) => Some(*count),
                WaveSize::Percent(_) => None,
            })
            .collect();
        if percents.windows(2).any(|pair| pair[0] > pair[1])
            || counts.windows(2).any(|pair| pair[0] > pair[1])
        {
            return Err(invalid("waves are cumulative and must not shrink"));
        }
        Ok(Self(sizes))
    }
}

impl fmt::Display for Waves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(WaveSize::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits `nodes` into waves: sorted by name (so the plan is the same on
/// every controller and after a restart), each wave the nodes between the
/// previous cumulative target and its own. Waves that would add no node
/// are dropped; the last wave takes every node left.
pub fn plan_waves(nodes: &[NodeName], waves: &Waves) -> Vec<Vec<NodeName>> {
    let mut sorted = nodes.to_vec();
    sorted.sort();
    sorted.dedup();
    let total = sorted.len();
    let mut plan = Vec::new();
    let mut reached = 0;
    for size in waves.sizes() {
        let target = size.cumulative(total).max(reached);
        if target > reached {
            plan.push(sorted[reached..target].to_vec());
            reached = target;
        }
    }
    if reached < total {
        plan.push(sorted[reached..].to_vec());
    }
    plan
}

/// When a rollout halts on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateThresholds {
    /// Halt when more than this many nodes failed to activate.
    pub max_failed_activations: u32,
    /// Halt when a node of the current wave goes not-ready.
    pub halt_on_not_ready: bool,
    /// Halt when a GPU of the current wave throttles while baking.
    pub halt_on_throttling: bool,
    /// Halt when a node of the current wave failed more than this share
    /// of its requests (percent) since activating the rollout's artifact;
    /// `None`: no error-rate gate. Added later, hence the serde defaults.
    #[serde(default)]
    pub max_error_rate_percent: Option<u32>,
    /// Requests a node must have finished on the new artifact before its
    /// error rate counts (a single early failure is not a trend); also the
    /// answered requests before its escalation rate counts.
    #[serde(default = "default_min_requests_for_error_rate")]
    pub min_requests_for_error_rate: u32,
    /// Halt when a node of the current wave sent more than this share of
    /// the requests it answered (percent) to its escalation policy's
    /// upstream since activating the rollout's artifact: a new version
    /// that cannot handle what the old one did costs money and sends data
    /// off the box. `None`: no escalation-rate gate. Added later, hence
    /// the serde default (rollouts stored before have none).
    #[serde(default)]
    pub max_escalation_rate_percent: Option<u32>,
}

/// See [`GateThresholds::min_requests_for_error_rate`].
pub const DEFAULT_MIN_REQUESTS_FOR_ERROR_RATE: u32 = 20;

fn default_min_requests_for_error_rate() -> u32 {
    DEFAULT_MIN_REQUESTS_FOR_ERROR_RATE
}

impl Default for GateThresholds {
    fn default() -> Self {
        Self {
            max_failed_activations: 0,
            halt_on_not_ready: true,
            halt_on_throttling: true,
            max_error_rate_percent: None,
            min_requests_for_error_rate: DEFAULT_MIN_REQUESTS_FOR_ERROR_RATE,
            max_escalation_rate_percent: None,
        }
    }
}

/// What to roll out, where and how. Validated on construction by the
/// parsers of its parts; immutable once the rollout is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    pub selector: Labels,
    pub model: ModelName,
    pub requirement: semver::VersionReq,
    pub quantization: QuantizationPolicy,
    pub prompt: Option<PromptRef>,
    pub prompt_policy: PromptPolicy,
    pub aliases: Vec<String>,
    /// The escalation policy version its nodes apply (`None`: each keeps
    /// its current one).
    pub escalation_policy: Option<PolicyRef>,
    pub waves: Waves,
    /// Nodes of a wave that may be changing (not yet ready) at once; ≥ 1.
    pub max_unavailable: u32,
    pub bake: Duration,
    pub auto_rollback: bool,
    pub gates: GateThresholds,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutState {
    /// Created; no node changed yet.
    Pending,
    /// The current wave's nodes are being changed.
    Progressing,
    /// Every node of the current wave is ready; waiting out the bake time.
    Baking,
    /// Stopped by an operator; resumes where it was.
    Paused,
    /// Stopped by a gate, without rolling back; an operator resumes or
    /// rolls back.
    Halted,
    /// Restoring every touched node's previous assignment.
    RollingBack,
    RolledBack,
    /// Stopped by an operator; nodes keep what they have.
    Aborted,
    Succeeded,
}

impl RolloutState {
    pub const ALL: [Self; 9] = [
        Self::Pending,
        Self::Progressing,
        Self::Baking,
        Self::Paused,
        Self::Halted,
        Self::RollingBack,
        Self::RolledBack,
        Self::Aborted,
        Self::Succeeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Progressing => "progressing",
            Self::Baking => "baking",
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
            Self::Succeeded => "succeeded",
        }
    }

    /// A terminal rollout releases its nodes to other rollouts.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::RolledBack | Self::Aborted | Self::Succeeded)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rollout state {0:?}")]
pub struct InvalidRolloutState(String);

impl FromStr for RolloutState {
    type Err = InvalidRolloutState;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == input)
            .ok_or_else(|| InvalidRolloutState(input.chars().take(40).collect()))
    }
}

/// What an operator asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutCommand {
    Pause,
    Resume,
    /// Skip the rest of the current wave's bake time.
    Promote,
    Abort,
    Rollback,
}

impl RolloutCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::Abort => "abort",
            Self::Rollback => "rollback",
        }
    }
}

impl FromStr for RolloutCommand {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "pause" => Ok(Self::Pause),
            "resume" => Ok(Self::Resume),
            "promote" => Ok(Self::Promote),
            "abort" => Ok(Self::Abort),
            "rollback" => Ok(Self::Rollback),
            other => Err(format!(
                "unknown rollout command {:?}: expected pause, resume, promote, abort or rollback",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// The outcome of an operator's command on a rollout in some state: the
/// state it moves to and whether the bake is to be skipped, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandOutcome {
    pub state: RolloutState,
    pub skip_bake: bool,
}

/// The state machine of operators' commands. `baking` says whether the
/// current wave's bake had begun (so `resume` knows where to go back to).
pub fn apply_command(
    state: RolloutState,
    command: RolloutCommand,
    baking: bool,
) -> Result<CommandOutcome, String> {
    use RolloutState::*;
    let resumed = if baking { Baking } else { Progressing };
    let to = |state| {
        Ok(CommandOutcome {
            state,
            skip_bake: false,
        })
    };
    match (command, state) {
        (RolloutCommand::Rollback, RolledBack | RollingBack) => {
            Err(format!("the rollout is already {state}"))
        }
        (RolloutCommand::Rollback, _) => to(RollingBack),
        (_, terminal) if terminal.is_terminal() => Err(format!(
            "the rollout is {terminal}; only rollback is possible"
        )),
        (_, RollingBack) => Err("the rollout is rolling back".to_owned()),
        (RolloutCommand::Pause, Pending | Progressing | Baking) => to(Paused),
        (RolloutCommand::Pause, Paused) => to(Paused),
        (RolloutCommand::Pause, Halted) => {
            Err("the rollout is halted; resume or roll it back".into())
        }
        (RolloutCommand::Resume, Paused | Halted) => to(resumed),
        (RolloutCommand::Resume, Pending | Progressing | Baking) => to(state),
        (RolloutCommand::Promote, Halted | Paused) => Err(format!(
            "the rollout is {state}; resume it before promoting"
        )),
        (RolloutCommand::Promote, _) => Ok(CommandOutcome {
            state,
            skip_bake: true,
        }),
        (RolloutCommand::Abort, _) => to(Aborted),
        (_, RolledBack | Aborted | Succeeded) => Err(format!("the rollout is {state}")),
    }
}

/// Where one node of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutNodeState {
    /// Not changed yet.
    Waiting,
    /// Its new desired state was written; waiting for its agent.
    Updating,
    /// Its agent reports the new artifact ready.
    Ready,
    /// Its agent reported the activation failed.
    Failed,
    /// No artifact fits the node; never changed.
    Unschedulable,
    /// An operator pinned the node with a node-level assignment, which
    /// overrides the rollout; never changed by it.
    Pinned,
    /// Its previous assignment was restored.
    RolledBack,
}

impl RolloutNodeState {
    pub const ALL: [Self; 7] = [
        Self::Waiting,
        Self::Updating,
        Self::Ready,
        Self::Failed,
        Self::Unschedulable,
        Self::Pinned,
        Self::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Updating => "updating",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Unschedulable => "unschedulable",
            Self::Pinned => "pinned",
            Self::RolledBack => "rolled_back",
        }
    }

    /// Whether the rollout changed this node's desired state (so a
    /// rollback must restore it).
    pub fn is_touched(self) -> bool {
        matches!(self, Self::Updating | Self::Ready | Self::Failed)
    }

    /// Whether the node takes part in waves at all.
    pub fn is_schedulable(self) -> bool {
        !matches!(self, Self::Unschedulable | Self::Pinned)
    }
}

impl fmt::Display for RolloutNodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RolloutNodeState {
    type Err = InvalidRolloutState;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == input)
            .ok_or_else(|| InvalidRolloutState(input.chars().take(40).collect()))
    }
}

/// A rollout as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub name: RolloutName,
    pub spec: RolloutSpec,
    pub state: RolloutState,
    /// Index of the wave being worked on (0-based).
    pub current_wave: u32,
    pub wave_count: u32,
    /// When every node of the current wave was first seen ready.
    pub bake_started_at: Option<OffsetDateTime>,
    /// An operator promoted the current wave: advance without baking.
    pub skip_bake: bool,
    /// Why the rollout halted, rolled back or was aborted.
    pub reason: Option<String>,
    /// The fleet generation of the rollout's latest change.
    pub generation: u64,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// One selected node of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutNode {
    pub node: NodeName,
    pub wave: u32,
    pub state: RolloutNodeState,
    /// What the rollout gives the node; `None` when unschedulable.
    pub desired: Option<DesiredAssignment>,
    /// The node-level assignment the node had before the rollout touched it
    /// (`None`: none, it followed selectors).
    pub previous: Option<DesiredAssignment>,
    pub reason: Option<String>,
}

/// One entry of the audit log: who did what, when and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub at: OffsetDateTime,
    /// A subject (`admin`), or `controller` for the engine.
    pub actor: String,
    pub rollout: Option<RolloutName>,
    pub node: Option<NodeName>,
    /// A short verb: `rollout.created`, `wave.started`, `node.failed`, …
    pub action: String,
    pub message: String,
}

/// An event to record; the store gives it its id and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub actor: String,
    pub rollout: Option<RolloutName>,
    pub node: Option<NodeName>,
    pub action: String,
    pub message: String,
}

impl NewEvent {
    pub fn rollout(actor: &str, rollout: &RolloutName, action: &str, message: String) -> Self {
        Self {
            actor: actor.to_owned(),
            rollout: Some(rollout.clone()),
            node: None,
            action: action.to_owned(),
            message,
        }
    }

    pub fn node(
        actor: &str,
        rollout: &RolloutName,
        node: &NodeName,
        action: &str,
        message: String,
    ) -> Self {
        Self {
            node: Some(node.clone()),
            ..Self::rollout(actor, rollout, action, message)
        }
    }

    /// About a node and no rollout (an enrolment, a renewal).
    pub fn fleet(actor: &str, node: &NodeName, action: &str, message: String) -> Self {
        Self {
            actor: actor.to_owned(),
            rollout: None,
            node: Some(node.clone()),
            action: action.to_owned(),
            message,
        }
    }
}

// ---- hardware fit ----

/// How much memory a node can give a new model: the free memory of its
/// largest GPU (VRAM total minus what the latest health sample says is
/// used), or its free RAM for a CPU node, less the safety margin.
pub fn memory_budget(
    inventory: &NodeInventory,
    health: Option<&HealthSample>,
    safety_margin_percent: u8,
) -> u64 {
    let free = if inventory.gpus.is_empty() {
        let used = health.map_or(0, |sample| sample.memory_used_bytes);
        inventory.memory_total_bytes.saturating_sub(used)
    } else {
        inventory
            .gpus
            .iter()
            .map(|gpu| {
                let used = health
                    .and_then(|sample| sample.gpus.iter().find(|g| g.index == gpu.index))
                    .map_or(0, |g| g.memory_used_bytes);
                gpu.memory_total_bytes.saturating_sub(used)
            })
            .max()
            .unwrap_or(0)
    };
    let margin = u64::from(safety_margin_percent.min(100));
    free / 100 * (100 - margin) + free % 100 * (100 - margin) / 100
}

/// What a rollout gives one node: the artifact that fits, or why none does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    Fits(Box<Resolution>),
    Unschedulable(String),
}

/// Chooses the artifact for one node: the rollout's policy (with `auto`,
/// the highest precision) among those whose memory estimate fits the
/// node's budget. Never returns something the node cannot load.
pub fn fit_node(
    model: &ModelName,
    candidates: &[(ModelVersion, Vec<Artifact>)],
    requirement: &semver::VersionReq,
    policy: &QuantizationPolicy,
    budget_bytes: u64,
) -> Fit {
    match resolve(
        model.as_str(),
        candidates,
        requirement,
        policy,
        Some(budget_bytes),
    ) {
        Ok(resolution) => Fit::Fits(Box::new(resolution)),
        Err(error) => Fit::Unschedulable(error.to_string()),
    }
}

// ---- observations and gates ----

/// What the engine sees of one node this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObservation {
    /// Connected and heartbeating (`SyncHub::is_ready`).
    pub connected: bool,
    /// The agent's latest report, if any.
    pub phase: Option<AssignmentPhase>,
    pub digest: Option<String>,
    pub serving_digest: Option<String>,
    pub reason: Option<String>,
    /// A GPU reports throttling in its latest health sample.
    pub throttled: bool,
    /// How requests ended on the artifact the node serves, since it was
    /// activated (from the latest health sample; `None`: not reported).
    pub requests: Option<ServedRequests>,
    /// An operator pinned the node with a node-level assignment.
    pub pinned: bool,
}

/// Requests a node finished on one artifact since activating it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRequests {
    /// The artifact (blake3 hex).
    pub digest: String,
    pub completed: u64,
    pub failed: u64,
    /// Answered by the escalation policy's upstream instead (neither
    /// completed nor failed).
    pub escalated: u64,
}

impl NodeObservation {
    /// How the node stands with the artifact `expected` (blake3 hex).
    pub fn progress(&self, expected: &str) -> NodeProgress {
        let about_expected = self.digest.as_deref() == Some(expected);
        match self.phase {
            Some(AssignmentPhase::Ready)
                if about_expected || self.serving_digest.as_deref() == Some(expected) =>
            {
                NodeProgress::Ready
            }
            Some(AssignmentPhase::Failed) if about_expected => NodeProgress::Failed(
                self.reason
                    .clone()
                    .unwrap_or_else(|| "activation failed".to_owned()),
            ),
            _ => NodeProgress::InProgress,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeProgress {
    InProgress,
    Ready,
    Failed(String),
}

/// Why a gate tripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateTrip(pub String);

/// Evaluates the gates over the nodes the rollout has touched so far:
/// failed activations over the threshold, a touched node of the current
/// wave gone not-ready, (while baking) a throttling GPU in it, or one
/// failing or escalating too many requests on its new artifact.
pub fn evaluate_gates(
    gates: &GateThresholds,
    nodes: &[(&RolloutNode, &NodeObservation)],
    current_wave: u32,
    baking: bool,
) -> Option<GateTrip> {
    let failed: Vec<&str> = nodes
        .iter()
        .filter(|(node, _)| node.state == RolloutNodeState::Failed)
        .map(|(node, _)| node.node.as_str())
        .collect();
    if failed.len() > gates.max_failed_activations as usize {
        return Some(GateTrip(format!(
            "{} failed activations (threshold {}): {}",
            failed.len(),
            gates.max_failed_activations,
            failed.join(", ")
        )));
    }
    let in_wave = nodes
        .iter()
        .filter(|(node, _)| node.wave == current_wave && node.state.is_touched());
    for (node, observation) in in_wave {
        if gates.halt_on_not_ready && !observation.connected {
            return Some(GateTrip(format!(
                "node {} went not-ready during wave {}",
                node.node,
                current_wave + 1
            )));
        }
        if gates.halt_on_throttling && baking && observation.throttled {
            return Some(GateTrip(format!(
                "node {} reports GPU throttling while wave {} bakes",
                node.node,
                current_wave + 1
            )));
        }
        if let Some(trip) = error_rate_trip(gates, node, observation) {
            return Some(trip);
        }
        if let Some(trip) = escalation_rate_trip(gates, node, observation) {
            return Some(trip);
        }
    }
    None
}

/// The error-rate gate for one node: failed over finished requests.
fn error_rate_trip(
    gates: &GateThresholds,
    node: &RolloutNode,
    observation: &NodeObservation,
) -> Option<GateTrip> {
    rate_trip(
        gates.max_error_rate_percent?,
        gates.min_requests_for_error_rate,
        node,
        observation,
        "failed",
        |requests| {
            (
                requests.failed,
                requests.completed.saturating_add(requests.failed),
            )
        },
    )
}

/// The escalation-rate gate for one node: escalated over answered
/// requests (locally or upstream). Failures are left out: they say nothing
/// about how often the new version hands a request on.
fn escalation_rate_trip(
    gates: &GateThresholds,
    node: &RolloutNode,
    observation: &NodeObservation,
) -> Option<GateTrip> {
    rate_trip(
        gates.max_escalation_rate_percent?,
        gates.min_requests_for_error_rate,
        node,
        observation,
        "escalated",
        |requests| {
            (
                requests.escalated,
                requests.completed.saturating_add(requests.escalated),
            )
        },
    )
}

/// A rate gate for one node: trips when `share` (part, whole) of the
/// requests it served on the artifact this rollout gave it is over
/// `max_percent`. Only that artifact's requests count, and only once there
/// are `min_requests` of them: a single early failure is not a trend.
fn rate_trip(
    max_percent: u32,
    min_requests: u32,
    node: &RolloutNode,
    observation: &NodeObservation,
    verb: &str,
    share: impl Fn(&ServedRequests) -> (u64, u64),
) -> Option<GateTrip> {
    let requests = observation.requests.as_ref()?;
    let desired = node.desired.as_ref()?;
    if requests.digest != desired.digest {
        return None;
    }
    let (part, whole) = share(requests);
    if whole == 0 || whole < u64::from(min_requests) {
        return None;
    }
    // part / whole > max / 100, in integers wide enough not to overflow.
    (u128::from(part) * 100 > u128::from(max_percent) * u128::from(whole)).then(|| {
        GateTrip(format!(
            "node {} {verb} {part} of {whole} requests ({}%) on {} {} (threshold {max_percent}%)",
            node.node,
            u128::from(part) * 100 / u128::from(whole),
            desired.model,
            desired.version
        ))
    })
}

// ---- the reconciler's decision ----

/// What the engine is to do after one look at a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Nodes whose state changes without touching their desired state
    /// (an agent reported ready or failed).
    pub node_updates: Vec<(NodeName, RolloutNodeState, Option<String>)>,
    /// Nodes of the current wave to change now (in name order).
    pub start: Vec<NodeName>,
    pub transition: Option<Transition>,
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.node_updates.is_empty() && self.start.is_empty() && self.transition.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Pending → progressing (the first wave starts).
    Start,
    /// Every node of the current wave is ready: begin its bake now.
    BeginBake,
    /// The bake is over (or was skipped): go to the next wave.
    AdvanceWave(u32),
    Succeed,
    /// A gate tripped: halt, or roll back when the rollout says so.
    Trip(GateTrip),
}

/// The reconciler's decision for one tick, from the rollout, its nodes and
/// what the engine observes of them. Level-triggered: the same inputs give
/// the same decision, and applying it twice is harmless.
pub fn decide(
    rollout: &Rollout,
    nodes: &[RolloutNode],
    observe: impl Fn(&NodeName) -> NodeObservation,
    now: OffsetDateTime,
) -> Decision {
    let mut decision = Decision::default();
    let state = rollout.state;
    if !matches!(
        state,
        RolloutState::Pending | RolloutState::Progressing | RolloutState::Baking
    ) {
        return decision;
    }
    if state == RolloutState::Pending {
        decision.transition = Some(Transition::Start);
        return decision;
    }
    let observed: Vec<(RolloutNode, NodeObservation)> = nodes
        .iter()
        .map(|node| {
            let observation = observe(&node.node);
            let mut node = node.clone();
            // An operator's pin overrides the rollout from then on.
            if observation.pinned
                && matches!(
                    node.state,
                    RolloutNodeState::Waiting
                        | RolloutNodeState::Updating
                        | RolloutNodeState::Ready
                        | RolloutNodeState::Failed
                )
            {
                let reason = Some("pinned by an operator's node assignment".to_owned());
                decision.node_updates.push((
                    node.node.clone(),
                    RolloutNodeState::Pinned,
                    reason.clone(),
                ));
                node.state = RolloutNodeState::Pinned;
                node.reason = reason;
            }
            // Fold in what agents reported since the last tick.
            if matches!(
                node.state,
                RolloutNodeState::Updating | RolloutNodeState::Ready
            ) && let Some(desired) = &node.desired
            {
                let next = match observation.progress(&desired.digest) {
                    NodeProgress::Ready => Some((RolloutNodeState::Ready, None)),
                    NodeProgress::Failed(reason) => Some((RolloutNodeState::Failed, Some(reason))),
                    NodeProgress::InProgress => None,
                };
                if let Some((next, reason)) = next
                    && next != node.state
                {
                    decision
                        .node_updates
                        .push((node.node.clone(), next, reason.clone()));
                    node.state = next;
                    node.reason = reason;
                }
            }
            (node, observation)
        })
        .collect();
    let pairs: Vec<(&RolloutNode, &NodeObservation)> =
        observed.iter().map(|(node, obs)| (node, obs)).collect();
    let baking = state == RolloutState::Baking;
    if let Some(trip) = evaluate_gates(&rollout.spec.gates, &pairs, rollout.current_wave, baking) {
        decision.transition = Some(Transition::Trip(trip));
        return decision;
    }
    let wave: Vec<&(RolloutNode, NodeObservation)> = observed
        .iter()
        .filter(|(node, _)| node.wave == rollout.current_wave && node.state.is_schedulable())
        .collect();
    let all_ready = wave
        .iter()
        .all(|(node, _)| node.state == RolloutNodeState::Ready);
    if all_ready {
        let bake_over = rollout.skip_bake
            || rollout.bake_started_at.is_some_and(|started| {
                now - started
                    >= time::Duration::try_from(rollout.spec.bake).unwrap_or(time::Duration::MAX)
            });
        decision.transition = if rollout.bake_started_at.is_none() && !rollout.skip_bake {
            Some(Transition::BeginBake)
        } else if bake_over {
            let next = rollout.current_wave + 1;
            Some(if next >= rollout.wave_count {
                Transition::Succeed
            } else {
                Transition::AdvanceWave(next)
            })
        } else {
            None
        };
        return decision;
    }
    // Start waiting nodes while fewer than max_unavailable are changing or
    // disconnected.
    let unavailable = wave
        .iter()
        .filter(|(node, observation)| match node.state {
            RolloutNodeState::Updating => true,
            RolloutNodeState::Waiting => !observation.connected,
            _ => false,
        })
        .count();
    let budget = (rollout.spec.max_unavailable.max(1) as usize).saturating_sub(unavailable);
    let mut waiting: Vec<&NodeName> = wave
        .iter()
        .filter(|(node, observation)| {
            node.state == RolloutNodeState::Waiting && observation.connected
        })
        .map(|(node, _)| &node.node)
        .collect();
    waiting.sort();
    decision.start = waiting.into_iter().take(budget).cloned().collect();
    decision
}

#[cfg(test)]
mod tests;
