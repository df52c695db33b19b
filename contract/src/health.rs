//! What a heartbeat says about a node: its machine, GPUs and inference
//! serving.

use flotilla_digest::Digest;
use flotilla_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// At most this many GPUs of a heartbeat are kept.
const MAX_GPUS: usize = 64;

/// A sample taken more than this far from the receiver's clock is dated by
/// the receiver instead: the agent's clock is not to be trusted.
const MAX_CLOCK_SKEW: time::Duration = time::Duration::minutes(1);

/// At most this many throttle reasons per GPU, of at most this many
/// characters each, are kept from a heartbeat: a misbehaving agent must not
/// grow every stored health row.
const MAX_THROTTLE_REASONS: usize = 16;
const MAX_THROTTLE_REASON_CHARS: usize = 64;
/// At most this many characters of an agent's error message are kept.
const MAX_ERROR_CHARS: usize = 500;
/// An adapter's name with its API fits easily; an agent's longer text is cut.
const MAX_DEVICE_CHARS: usize = 200;

/// One health sample of a node, as its agent measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = HealthInfo))]
pub struct HealthSample {
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub taken_at: OffsetDateTime,
    /// Busy share of all CPUs since the previous sample, 0–100.
    pub cpu_utilisation_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Free space on the agent's data directory's filesystem.
    pub disk_available_bytes: Option<u64>,
    /// The hottest CPU package or core sensor, where the kernel exposes one.
    pub cpu_temperature_celsius: Option<f32>,
    pub gpus: Vec<GpuHealth>,
    /// The node's inference serving; absent from agents that do not serve.
    #[serde(default)]
    pub inference: Option<InferenceHealth>,
    /// Why the agent's latest write of its own state failed (a full disk,
    /// a read-only volume); absent while its writes succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_write_error: Option<String>,
}

impl HealthSample {
    /// A sample that says nothing yet, dated `at`.
    pub fn empty(at: OffsetDateTime) -> Self {
        Self {
            taken_at: at,
            cpu_utilisation_percent: 0.0,
            memory_used_bytes: 0,
            memory_total_bytes: 0,
            disk_available_bytes: None,
            cpu_temperature_celsius: None,
            gpus: Vec::new(),
            inference: None,
            state_write_error: None,
        }
    }

    /// Decodes a heartbeat's sample, trusting nothing: a time far from
    /// `now` (the receiver's clock) is replaced by `now`, figures out of
    /// range are clamped, and lists are capped.
    pub fn from_wire(sample: pb::HealthSample, now: OffsetDateTime) -> Self {
        let taken_at = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(sample.taken_at_unix_ms) * 1_000_000,
        )
        .ok()
        .filter(|at| (*at - now).abs() <= MAX_CLOCK_SKEW)
        .unwrap_or(now);
        let finite = |value: f32| value.is_finite().then_some(value);
        Self {
            taken_at,
            cpu_utilisation_percent: finite(sample.cpu_utilisation_percent)
                .unwrap_or(0.0)
                .clamp(0.0, 100.0),
            memory_used_bytes: sample.memory_used_bytes,
            memory_total_bytes: sample.memory_total_bytes,
            disk_available_bytes: sample.disk_available_bytes,
            cpu_temperature_celsius: sample.cpu_temperature_celsius.and_then(finite),
            gpus: sample
                .gpus
                .into_iter()
                .take(MAX_GPUS)
                .map(GpuHealth::from)
                .collect(),
            inference: sample.inference.map(InferenceHealth::from),
            state_write_error: Some(sample.state_write_error)
                .filter(|error| !error.is_empty())
                .map(|error| error.chars().take(MAX_ERROR_CHARS).collect()),
        }
    }
}

impl From<&HealthSample> for pb::HealthSample {
    fn from(sample: &HealthSample) -> Self {
        let unix_ms = sample.taken_at.unix_timestamp_nanos() / 1_000_000;
        Self {
            taken_at_unix_ms: i64::try_from(unix_ms).unwrap_or(i64::MAX),
            cpu_utilisation_percent: sample.cpu_utilisation_percent,
            memory_used_bytes: sample.memory_used_bytes,
            memory_total_bytes: sample.memory_total_bytes,
            disk_available_bytes: sample.disk_available_bytes,
            cpu_temperature_celsius: sample.cpu_temperature_celsius,
            gpus: sample.gpus.iter().map(pb::GpuSample::from).collect(),
            inference: sample.inference.as_ref().map(pb::InferenceSample::from),
            state_write_error: sample.state_write_error.clone().unwrap_or_default(),
        }
    }
}

/// One minute of a node's health, down-sampled by the controller from its
/// heartbeats: averages, and maxima where the worst moment matters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthPoint {
    /// Start of the minute.
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
    pub samples: u32,
    pub cpu_utilisation_percent: f32,
    pub memory_used_bytes_max: u64,
    /// Mean over the node's GPUs; null without GPUs.
    pub gpu_utilisation_percent: Option<f32>,
    /// Hottest GPU; null without GPUs.
    pub gpu_temperature_celsius_max: Option<f32>,
    /// Whether any sample of the minute saw clock throttling.
    pub throttled: bool,
    /// What the node served in the minute; null when none of its
    /// heartbeats carried inference figures (an agent from before they
    /// existed).
    #[serde(default)]
    pub inference: Option<InferenceMinute>,
}

/// One minute of a node's inference, from its heartbeats' figures. The
/// controller stores it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InferenceMinute {
    /// Mean of the samples' tokens per second.
    pub tokens_per_second: f32,
    /// Longest queue a sample saw.
    pub queue_depth_max: u32,
    /// Slowest first token of the minute; null when no request started.
    pub time_to_first_token_max_ms: Option<u32>,
    /// Requests that ended in the minute, by outcome (from the agent's
    /// running totals; an agent restart counts from its new totals).
    pub completed: u64,
    pub failed: u64,
    /// Refused as over capacity (429 / RESOURCE_EXHAUSTED).
    pub rejected: u64,
    /// Answered by the escalation policy's upstream instead of the local
    /// model. Added later: minutes stored before read as none.
    #[serde(default)]
    pub escalated: u64,
}

/// One GPU's state in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = GpuHealthInfo))]
pub struct GpuHealth {
    pub index: u32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub utilisation_percent: Option<u32>,
    pub temperature_celsius: Option<u32>,
    pub power_draw_milliwatts: Option<u32>,
    pub power_limit_milliwatts: Option<u32>,
    /// Why the clocks are held down right now, e.g. `HW_THERMAL_SLOWDOWN`,
    /// `SW_POWER_CAP`; empty when they are not.
    pub throttle_reasons: Vec<String>,
}

/// How inference on a node is doing, from its latest heartbeat. Counters
/// run since the agent started; the rate and the latencies cover the
/// interval since its previous heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = InferenceHealthInfo))]
pub struct InferenceHealth {
    /// Requests queued or decoding now.
    pub queue_depth: u32,
    /// Most requests admitted at once since the previous heartbeat (at
    /// least `queue_depth`): a burst between two heartbeats shows here.
    #[serde(default)]
    pub queue_depth_peak: u32,
    /// How many may be admitted at once.
    pub queue_capacity: u32,
    pub completed_total: u64,
    /// Refused with 429 / RESOURCE_EXHAUSTED (queue full).
    pub rejected_total: u64,
    /// Timed out or failed.
    pub failed_total: u64,
    /// The client went away first.
    pub cancelled_total: u64,
    pub generated_tokens_total: u64,
    pub tokens_per_second: f32,
    /// Time to first token (queue wait included); null when no request got
    /// its first token in the interval.
    pub time_to_first_token_p50_ms: Option<u32>,
    pub time_to_first_token_max_ms: Option<u32>,
    /// The artifact served (blake3 hex), and how its requests ended since
    /// it was activated: what the rollouts' error-rate gate reads.
    #[serde(default)]
    pub serving_digest: Option<String>,
    /// Where the artifact served now runs ("gpu (vulkan …)", "cpu (avx2
    /// kernels, 2 threads)"); none when nothing is served or the agent is
    /// older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_device: Option<String>,
    #[serde(default)]
    pub completed_since_activation: u64,
    #[serde(default)]
    pub failed_since_activation: u64,
    /// Requests answered by the escalation policy's upstream instead of
    /// the local model, since the agent started and since the artifact
    /// served now was activated. Neither completed nor failed: the
    /// escalation rate is `escalated / (completed + escalated)`, what the
    /// rollouts' escalation-rate gate reads. Added later, hence the
    /// defaults: samples stored before read as none escalated.
    #[serde(default)]
    pub escalated_total: u64,
    #[serde(default)]
    pub escalated_since_activation: u64,
}

impl From<&GpuHealth> for pb::GpuSample {
    fn from(gpu: &GpuHealth) -> Self {
        Self {
            index: gpu.index,
            memory_used_bytes: gpu.memory_used_bytes,
            memory_total_bytes: gpu.memory_total_bytes,
            utilisation_percent: gpu.utilisation_percent,
            temperature_celsius: gpu.temperature_celsius,
            power_draw_milliwatts: gpu.power_draw_milliwatts,
            power_limit_milliwatts: gpu.power_limit_milliwatts,
            throttle_reasons: gpu.throttle_reasons.clone(),
        }
    }
}

/// Decoding never fails: what an agent sends out of range is clamped or
/// cut, since a heartbeat is worth keeping even when one figure is odd.
impl From<pb::GpuSample> for GpuHealth {
    fn from(gpu: pb::GpuSample) -> Self {
        Self {
            index: gpu.index,
            memory_used_bytes: gpu.memory_used_bytes,
            memory_total_bytes: gpu.memory_total_bytes,
            utilisation_percent: gpu.utilisation_percent.map(|percent| percent.min(100)),
            temperature_celsius: gpu.temperature_celsius,
            power_draw_milliwatts: gpu.power_draw_milliwatts,
            power_limit_milliwatts: gpu.power_limit_milliwatts,
            throttle_reasons: gpu
                .throttle_reasons
                .into_iter()
                .take(MAX_THROTTLE_REASONS)
                .map(|reason| reason.chars().take(MAX_THROTTLE_REASON_CHARS).collect())
                .collect(),
        }
    }
}

impl From<&InferenceHealth> for pb::InferenceSample {
    fn from(inference: &InferenceHealth) -> Self {
        Self {
            queue_depth: inference.queue_depth,
            queue_capacity: inference.queue_capacity,
            completed_total: inference.completed_total,
            rejected_total: inference.rejected_total,
            failed_total: inference.failed_total,
            cancelled_total: inference.cancelled_total,
            generated_tokens_total: inference.generated_tokens_total,
            tokens_per_second: inference.tokens_per_second,
            time_to_first_token_p50_ms: inference.time_to_first_token_p50_ms,
            time_to_first_token_max_ms: inference.time_to_first_token_max_ms,
            serving_digest: inference.serving_digest.clone().unwrap_or_default(),
            serving_device: inference.serving_device.clone().unwrap_or_default(),
            completed_since_activation: inference.completed_since_activation,
            failed_since_activation: inference.failed_since_activation,
            queue_depth_peak: inference.queue_depth_peak,
            escalated_total: inference.escalated_total,
            escalated_since_activation: inference.escalated_since_activation,
        }
    }
}

/// Decoding never fails, as for [`GpuHealth`]: a rate that is not a finite
/// non-negative number reads as 0, and a malformed digest as none (which
/// only costs the rollouts' error-rate gate its input).
impl From<pb::InferenceSample> for InferenceHealth {
    fn from(inference: pb::InferenceSample) -> Self {
        let tokens_per_second = if inference.tokens_per_second.is_finite() {
            inference.tokens_per_second.max(0.0)
        } else {
            0.0
        };
        Self {
            queue_depth: inference.queue_depth,
            queue_capacity: inference.queue_capacity,
            completed_total: inference.completed_total,
            rejected_total: inference.rejected_total,
            failed_total: inference.failed_total,
            cancelled_total: inference.cancelled_total,
            generated_tokens_total: inference.generated_tokens_total,
            tokens_per_second,
            time_to_first_token_p50_ms: inference.time_to_first_token_p50_ms,
            time_to_first_token_max_ms: inference.time_to_first_token_max_ms,
            serving_digest: inference
                .serving_digest
                .parse::<Digest>()
                .ok()
                .map(|digest| digest.to_hex()),
            serving_device: Some(inference.serving_device)
                .filter(|device| !device.is_empty())
                .map(|device| device.chars().take(MAX_DEVICE_CHARS).collect()),
            completed_since_activation: inference.completed_since_activation,
            failed_since_activation: inference.failed_since_activation,
            queue_depth_peak: inference.queue_depth_peak.max(inference.queue_depth),
            escalated_total: inference.escalated_total,
            escalated_since_activation: inference.escalated_since_activation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_clock_is_replaced_and_a_sample_round_trips() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time");
        let mut sample = HealthSample::empty(now - time::Duration::seconds(5));
        sample.cpu_utilisation_percent = 42.0;
        sample.gpus = vec![GpuHealth::from(pb::GpuSample::default())];
        sample.state_write_error = Some("No space left on device (os error 28)".to_owned());
        assert_eq!(
            HealthSample::from_wire(pb::HealthSample::from(&sample), now),
            sample
        );

        let skewed = HealthSample::empty(now - time::Duration::hours(3));
        let mut wire = pb::HealthSample::from(&skewed);
        wire.cpu_utilisation_percent = f32::INFINITY;
        wire.gpus = vec![pb::GpuSample::default(); 1000];
        wire.state_write_error = "e".repeat(10_000);
        let decoded = HealthSample::from_wire(wire, now);
        assert_eq!(decoded.taken_at, now);
        assert_eq!(decoded.cpu_utilisation_percent, 0.0);
        assert_eq!(decoded.gpus.len(), MAX_GPUS);
        assert_eq!(
            decoded.state_write_error.map(|error| error.len()),
            Some(MAX_ERROR_CHARS)
        );
        // Empty on the wire is no error.
        let fine = HealthSample::from_wire(pb::HealthSample::default(), now);
        assert_eq!(fine.state_write_error, None);
    }

    #[test]
    fn a_sample_survives_the_wire_and_odd_values_are_tamed() {
        let digest = Digest::of(b"weights").to_hex();
        let inference = InferenceHealth {
            queue_depth: 2,
            queue_depth_peak: 9,
            queue_capacity: 20,
            completed_total: 7,
            tokens_per_second: 41.5,
            time_to_first_token_p50_ms: Some(120),
            serving_digest: Some(digest),
            serving_device: Some("gpu (vulkan llvmpipe)".to_owned()),
            completed_since_activation: 3,
            escalated_total: 5,
            escalated_since_activation: 2,
            ..InferenceHealth::default()
        };
        assert_eq!(
            InferenceHealth::from(pb::InferenceSample::from(&inference)),
            inference
        );

        let odd = pb::InferenceSample {
            tokens_per_second: f32::NAN,
            serving_digest: "not-a-digest".to_owned(),
            serving_device: "x".repeat(10_000),
            ..pb::InferenceSample::default()
        };
        let tamed = InferenceHealth::from(odd);
        assert_eq!(tamed.tokens_per_second, 0.0);
        // An agent without the peak (older) reports its depth as the peak.
        let older = InferenceHealth::from(pb::InferenceSample {
            queue_depth: 4,
            ..pb::InferenceSample::default()
        });
        assert_eq!(older.queue_depth_peak, 4);
        assert_eq!(tamed.serving_digest, None);
        assert_eq!(
            tamed.serving_device.map(|device| device.len()),
            Some(MAX_DEVICE_CHARS)
        );
        assert_eq!(older.serving_device, None);

        let gpu = pb::GpuSample {
            utilisation_percent: Some(250),
            throttle_reasons: vec!["x".repeat(1000); 100],
            ..pb::GpuSample::default()
        };
        let gpu = GpuHealth::from(gpu);
        assert_eq!(gpu.utilisation_percent, Some(100));
        assert_eq!(gpu.throttle_reasons.len(), MAX_THROTTLE_REASONS);
        assert!(
            gpu.throttle_reasons
                .iter()
                .all(|reason| reason.len() == MAX_THROTTLE_REASON_CHARS)
        );
    }
}
