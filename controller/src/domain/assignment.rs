//! What nodes should serve, and what they report back.
//!
//! An operator's [`Assignment`] says "this node" or "every node matching
//! this label selector" should serve one artifact of a model version with a
//! system prompt version. Each node's [`DesiredState`] is derived from the
//! assignments by [`place`]: the node's own assignment wins over selectors,
//! and among matching selectors the newest wins. The rollout engine will
//! write the same assignments.
//!
//! What is persisted: assignments (with their resolved artifact and prompt
//! text, so placement needs no joins) and, per node, its desired state and
//! generation, its last observed state, its latest health sample and a
//! down-sampled health history. Generations come from one counter in the
//! database, so they only grow, across restarts and replicas.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use flotilla_contract::{
    GpuHealth, HealthPoint, HealthSample, InferenceHealth, InferenceMinute,
};

use super::{AssignedPolicy, Labels, NodeName, NodeStatus};

/// Whom an assignment is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentTarget {
    Node(NodeName),
    /// Every node carrying all of these labels. An empty selector matches
    /// every node.
    Selector(Labels),
}

impl AssignmentTarget {
    pub fn matches(&self, name: &NodeName, labels: &Labels) -> bool {
        match self {
            Self::Node(target) => target == name,
            Self::Selector(selector) => selector
                .iter()
                .all(|(key, value)| labels.as_map().get(key).map(String::as_str) == Some(value)),
        }
    }
}

impl fmt::Display for AssignmentTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node(name) => write!(f, "node={name}"),
            Self::Selector(labels) => {
                let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "selector {}", pairs.join(","))
            }
        }
    }
}

/// A system prompt version resolved to its text, as nodes receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPrompt {
    pub name: String,
    pub version: u32,
    pub text: String,
    pub chat_template: Option<String>,
}

/// How the assigned system prompt combines with a chat request's own system
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptPolicy {
    /// The assigned prompt first, then the request's system message.
    #[default]
    Prepend,
    /// The request's system message replaces the assigned prompt.
    Replace,
    /// A request carrying a system message is refused.
    Forbid,
}

impl PromptPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepend => "prepend",
            Self::Replace => "replace",
            Self::Forbid => "forbid",
        }
    }
}

impl std::str::FromStr for PromptPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "prepend" => Ok(Self::Prepend),
            "replace" => Ok(Self::Replace),
            "forbid" => Ok(Self::Forbid),
            other => Err(format!(
                "unknown system prompt policy {other:?}: use prepend, replace or forbid"
            )),
        }
    }
}

/// At most this many aliases per assignment.
pub const MAX_ALIASES: usize = 16;

/// One artifact to serve, resolved: everything an agent needs, with no
/// further lookups. Stored as JSON in assignment and node rows; fields added
/// after the first release default, so older rows still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredAssignment {
    pub model: String,
    pub version: String,
    pub quantization: String,
    /// blake3 hex.
    pub digest: String,
    pub size_bytes: u64,
    pub prompt: Option<DesiredPrompt>,
    /// What happens to a request's own system message.
    #[serde(default)]
    pub prompt_policy: PromptPolicy,
    /// Other names clients may ask for the model by (model-style names).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The escalation policy version the node applies (`None`: it never
    /// calls out). Holds the upstream's credential as a reference only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_policy: Option<AssignedPolicy>,
    /// The generation of the operator's assignment this came from.
    pub assignment_generation: u64,
    /// The assignment's target, for views (`node=a`, `selector k=v`).
    pub target: String,
}

/// An operator's assignment as recorded. Its generation identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub generation: u64,
    pub target: AssignmentTarget,
    pub desired: DesiredAssignment,
    pub created_by: String,
    pub created_at: OffsetDateTime,
}

/// An assignment to record; the store gives it its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAssignment {
    pub target: AssignmentTarget,
    /// `assignment_generation` and `target` are filled in by the store.
    pub desired: DesiredAssignment,
    pub created_by: String,
}

/// A node's complete desired state. `generation` grows with every change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredState {
    pub generation: u64,
    pub assignment: Option<DesiredAssignment>,
}

/// A node whose desired state changed, as fan-out needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDesired {
    pub name: NodeName,
    pub status: NodeStatus,
    pub desired: DesiredState,
}

/// Where an agent stands with its desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentPhase {
    Idle,
    Pending,
    Downloading,
    Verifying,
    Loading,
    Ready,
    Failed,
}

impl AssignmentPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Pending => "pending",
            Self::Downloading => "downloading",
            Self::Verifying => "verifying",
            Self::Loading => "loading",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

/// An agent's latest report. Complete: it replaces the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedState {
    pub generation: u64,
    pub digest: Option<String>,
    pub phase: AssignmentPhase,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub reason: Option<String>,
    pub serving_digest: Option<String>,
}

/// An agent's running request totals, to count a minute's requests as the
/// difference between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RequestTotals {
    completed: u64,
    failed: u64,
    rejected: u64,
    escalated: u64,
}

impl RequestTotals {
    fn of(inference: &InferenceHealth) -> Self {
        Self {
            completed: inference.completed_total,
            failed: inference.failed_total,
            rejected: inference.rejected_total,
            escalated: inference.escalated_total,
        }
    }

    /// Requests between `earlier` and `self`; a total that went down means
    /// the agent restarted, and everything since counts.
    fn since(self, earlier: Self) -> Self {
        let delta = |now: u64, then: u64| if now >= then { now - then } else { now };
        Self {
            completed: delta(self.completed, earlier.completed),
            failed: delta(self.failed, earlier.failed),
            rejected: delta(self.rejected, earlier.rejected),
            escalated: delta(self.escalated, earlier.escalated),
        }
    }
}

/// Folds the samples of one minute into a [`HealthPoint`].
#[derive(Debug, Clone)]
pub struct MinuteAccumulator {
    at: OffsetDateTime,
    samples: u32,
    cpu_sum: f64,
    memory_max: u64,
    gpu_util_sum: f64,
    gpu_util_count: u32,
    gpu_temp_max: Option<f32>,
    throttled: bool,
    inference_samples: u32,
    tokens_per_second_sum: f64,
    queue_depth_max: u32,
    time_to_first_token_max_ms: Option<u32>,
    /// Totals the minute's requests count from: the previous minute's last
    /// sample, else this minute's first.
    totals_before: Option<RequestTotals>,
    totals_latest: Option<RequestTotals>,
}

impl MinuteAccumulator {
    /// The minute a sample belongs to.
    pub fn minute_of(at: OffsetDateTime) -> OffsetDateTime {
        let seconds = at.unix_timestamp();
        OffsetDateTime::from_unix_timestamp(seconds - seconds.rem_euclid(60))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub fn new(at: OffsetDateTime) -> Self {
        Self {
            at: Self::minute_of(at),
            samples: 0,
            cpu_sum: 0.0,
            memory_max: 0,
            gpu_util_sum: 0.0,
            gpu_util_count: 0,
            gpu_temp_max: None,
            throttled: false,
            inference_samples: 0,
            tokens_per_second_sum: 0.0,
            queue_depth_max: 0,
            time_to_first_token_max_ms: None,
            totals_before: None,
            totals_latest: None,
        }
    }

    /// The accumulator of a later minute, counting requests from where this
    /// one's last sample left off.
    pub fn next(&self, at: OffsetDateTime) -> Self {
        Self {
            totals_before: self.totals_latest,
            ..Self::new(at)
        }
    }

    pub fn minute(&self) -> OffsetDateTime {
        self.at
    }

    pub fn add(&mut self, sample: &HealthSample) {
        self.samples += 1;
        self.cpu_sum += f64::from(sample.cpu_utilisation_percent);
        self.memory_max = self.memory_max.max(sample.memory_used_bytes);
        for gpu in &sample.gpus {
            if let Some(util) = gpu.utilisation_percent {
                self.gpu_util_sum += f64::from(util);
                self.gpu_util_count += 1;
            }
            if let Some(temp) = gpu.temperature_celsius {
                let temp = temp as f32;
                self.gpu_temp_max = Some(self.gpu_temp_max.map_or(temp, |max| max.max(temp)));
            }
            self.throttled |= !gpu.throttle_reasons.is_empty();
        }
        if let Some(inference) = &sample.inference {
            let totals = RequestTotals::of(inference);
            self.inference_samples += 1;
            self.tokens_per_second_sum += f64::from(inference.tokens_per_second);
            self.queue_depth_max = self.queue_depth_max.max(inference.queue_depth_peak);
            self.time_to_first_token_max_ms = self
                .time_to_first_token_max_ms
                .max(inference.time_to_first_token_max_ms);
            self.totals_before.get_or_insert(totals);
            self.totals_latest = Some(totals);
        }
    }

    pub fn finish(&self) -> HealthPoint {
        HealthPoint {
            at: self.at,
            samples: self.samples,
            cpu_utilisation_percent: if self.samples == 0 {
                0.0
            } else {
                (self.cpu_sum / f64::from(self.samples)) as f32
            },
            memory_used_bytes_max: self.memory_max,
            gpu_utilisation_percent: (self.gpu_util_count > 0)
                .then(|| (self.gpu_util_sum / f64::from(self.gpu_util_count)) as f32),
            gpu_temperature_celsius_max: self.gpu_temp_max,
            throttled: self.throttled,
            inference: self.inference_minute(),
        }
    }

    fn inference_minute(&self) -> Option<InferenceMinute> {
        let latest = self.totals_latest?;
        let requests = latest.since(self.totals_before.unwrap_or(latest));
        Some(InferenceMinute {
            tokens_per_second: (self.tokens_per_second_sum
                / f64::from(self.inference_samples.max(1))) as f32,
            queue_depth_max: self.queue_depth_max,
            time_to_first_token_max_ms: self.time_to_first_token_max_ms,
            completed: requests.completed,
            failed: requests.failed,
            rejected: requests.rejected,
            escalated: requests.escalated,
        })
    }
}

/// What placement decides for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement<'a> {
    /// Leave the desired state as it is (a cordoned node keeps what it has).
    Keep,
    /// The node should serve this (or nothing).
    Serve(Option<&'a Assignment>),
}

/// Decides what a node should serve under `assignments`: nothing while it
/// is pending approval; unchanged while cordoned; otherwise its own
/// assignment, else the newest selector that matches its labels.
pub fn place<'a>(
    name: &NodeName,
    labels: &Labels,
    status: NodeStatus,
    assignments: &'a [Assignment],
) -> Placement<'a> {
    match status {
        NodeStatus::Pending => Placement::Serve(None),
        NodeStatus::Cordoned => Placement::Keep,
        NodeStatus::Active => {
            let own = assignments
                .iter()
                .filter(|a| matches!(&a.target, AssignmentTarget::Node(n) if n == name))
                .max_by_key(|a| a.generation);
            let chosen = own.or_else(|| {
                assignments
                    .iter()
                    .filter(|a| {
                        matches!(a.target, AssignmentTarget::Selector(_))
                            && a.target.matches(name, labels)
                    })
                    .max_by_key(|a| a.generation)
            });
            Placement::Serve(chosen)
        }
    }
}

/// The assignment generation a node's desired state came from (0: none),
/// which placement compares to decide whether the node changes.
pub fn source_generation(desired: &DesiredState) -> u64 {
    desired
        .assignment
        .as_ref()
        .map_or(0, |assignment| assignment.assignment_generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(generation: u64, target: AssignmentTarget) -> Assignment {
        Assignment {
            generation,
            desired: DesiredAssignment {
                model: "m".into(),
                version: "1.0.0".into(),
                quantization: "Q4_1".into(),
                digest: "00".repeat(32),
                size_bytes: 1,
                prompt: None,
                prompt_policy: PromptPolicy::default(),
                aliases: Vec::new(),
                escalation_policy: None,
                assignment_generation: generation,
                target: target.to_string(),
            },
            target,
            created_by: "admin".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn own_assignment_beats_selectors_and_newest_selector_wins() {
        let name: NodeName = "edge-1".parse().expect("valid");
        let labels: Labels = "site=berlin,gpu=l4".parse().expect("valid");
        let all = [
            assignment(
                3,
                AssignmentTarget::Selector("site=berlin".parse().expect("v")),
            ),
            assignment(5, AssignmentTarget::Selector("gpu=l4".parse().expect("v"))),
            assignment(
                7,
                AssignmentTarget::Selector("site=paris".parse().expect("v")),
            ),
        ];
        let Placement::Serve(Some(chosen)) = place(&name, &labels, NodeStatus::Active, &all) else {
            panic!("expected an assignment");
        };
        assert_eq!(chosen.generation, 5);

        let mut with_own = all.to_vec();
        with_own.push(assignment(4, AssignmentTarget::Node(name.clone())));
        let Placement::Serve(Some(chosen)) = place(&name, &labels, NodeStatus::Active, &with_own)
        else {
            panic!("expected an assignment");
        };
        assert_eq!(chosen.generation, 4);

        assert_eq!(
            place(&name, &labels, NodeStatus::Pending, &with_own),
            Placement::Serve(None)
        );
        assert_eq!(
            place(&name, &labels, NodeStatus::Cordoned, &with_own),
            Placement::Keep
        );
        let other: NodeName = "edge-2".parse().expect("valid");
        assert_eq!(
            place(&other, &Labels::default(), NodeStatus::Active, &with_own),
            Placement::Serve(None)
        );
    }

    #[test]
    fn minutes_average_and_keep_maxima() {
        let at = OffsetDateTime::from_unix_timestamp(120 + 17).expect("valid");
        let mut minute = MinuteAccumulator::new(at);
        assert_eq!(minute.minute().unix_timestamp(), 120);
        let sample = |cpu: f32, memory: u64, temp: u32, throttled: bool| HealthSample {
            taken_at: at,
            cpu_utilisation_percent: cpu,
            memory_used_bytes: memory,
            memory_total_bytes: 100,
            disk_available_bytes: None,
            cpu_temperature_celsius: None,
            gpus: vec![GpuHealth {
                index: 0,
                memory_used_bytes: 0,
                memory_total_bytes: 0,
                utilisation_percent: Some(50),
                temperature_celsius: Some(temp),
                power_draw_milliwatts: None,
                power_limit_milliwatts: None,
                throttle_reasons: if throttled {
                    vec!["HW_THERMAL_SLOWDOWN".into()]
                } else {
                    Vec::new()
                },
            }],
            inference: None,
            state_write_error: None,
        };
        minute.add(&sample(10.0, 5, 60, false));
        minute.add(&sample(30.0, 9, 80, true));
        let point = minute.finish();
        assert_eq!(point.samples, 2);
        assert!((point.cpu_utilisation_percent - 20.0).abs() < 1e-3);
        assert_eq!(point.memory_used_bytes_max, 9);
        assert_eq!(point.gpu_temperature_celsius_max, Some(80.0));
        assert_eq!(point.gpu_utilisation_percent, Some(50.0));
        assert!(point.throttled);
        assert_eq!(point.inference, None, "no sample carried inference figures");
    }

    #[test]
    fn a_minute_counts_requests_from_the_previous_minutes_last_sample() {
        let sample =
            |second: i64, completed: u64, failed: u64, queue: u32, tps: f32| HealthSample {
                taken_at: OffsetDateTime::from_unix_timestamp(second).expect("valid"),
                cpu_utilisation_percent: 0.0,
                memory_used_bytes: 0,
                memory_total_bytes: 0,
                disk_available_bytes: None,
                cpu_temperature_celsius: None,
                gpus: Vec::new(),
                inference: Some(InferenceHealth {
                    queue_depth: queue,
                    queue_capacity: 8,
                    completed_total: completed,
                    rejected_total: 0,
                    failed_total: failed,
                    cancelled_total: 0,
                    generated_tokens_total: 0,
                    tokens_per_second: tps,
                    time_to_first_token_p50_ms: None,
                    time_to_first_token_max_ms: Some(queue * 100),
                    serving_digest: None,
                    serving_device: None,
                    completed_since_activation: 0,
                    failed_since_activation: 0,
                    queue_depth_peak: queue,
                    // One request escalated for every five completed.
                    escalated_total: completed / 5,
                    escalated_since_activation: 0,
                }),
                state_write_error: None,
            };
        // The first minute ever counts from its own first sample.
        let mut first =
            MinuteAccumulator::new(OffsetDateTime::from_unix_timestamp(60).expect("valid"));
        first.add(&sample(65, 100, 1, 2, 10.0));
        first.add(&sample(95, 110, 1, 5, 30.0));
        let point = first.finish().inference.expect("figures");
        assert_eq!((point.completed, point.failed, point.escalated), (10, 0, 2));
        assert_eq!(point.queue_depth_max, 5);
        assert_eq!(point.time_to_first_token_max_ms, Some(500));
        assert!((point.tokens_per_second - 20.0).abs() < 1e-3);

        // The next counts from the first's last sample: nothing between two
        // samples that straddle the minute is lost.
        let mut second = first.next(OffsetDateTime::from_unix_timestamp(125).expect("valid"));
        second.add(&sample(125, 115, 3, 0, 0.0));
        let point = second.finish().inference.expect("figures");
        assert_eq!((point.completed, point.failed, point.escalated), (5, 2, 1));

        // The agent restarted: its totals start again from zero.
        let mut third = second.next(OffsetDateTime::from_unix_timestamp(185).expect("valid"));
        third.add(&sample(185, 4, 0, 0, 0.0));
        let point = third.finish().inference.expect("figures");
        assert_eq!((point.completed, point.failed, point.escalated), (4, 0, 0));
    }
}
