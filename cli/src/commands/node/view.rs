//! How nodes read in a terminal: the `node ls` table, the `node show`
//! fields, and the last hour of health drawn as sparklines. Pure functions
//! of the API's DTOs and the current time, so they are tested without a
//! controller.

use flotilla_api_types::{
    AssignmentInfo, GpuHealthInfo, HealthInfo, HealthPoint, InferenceHealthInfo, NodeInfo,
    ObservedInfo,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::output::{Table, human_age, human_bytes, human_time, label_list, sparkline};

/// How much of a failure reason fits in a `node ls` cell; `show` prints all of it.
const REASON_CHARS: usize = 40;

/// `node show --output json`: the node as the API sends it, plus the health
/// history that was drawn (one point per minute, oldest first; minutes
/// without samples are absent).
#[derive(Debug, Serialize)]
pub struct NodeWithHistory {
    #[serde(flatten)]
    pub node: NodeInfo,
    pub history: Vec<HealthPoint>,
}

pub fn nodes_table(nodes: &[NodeInfo], now: OffsetDateTime) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "STATUS",
        "READY",
        "LABELS",
        "MODEL",
        "STATE",
        "GEN",
        "HEARTBEAT",
        "GPU",
    ]);
    for node in nodes {
        table.row(vec![
            node.name.clone(),
            node.status.clone(),
            yes_no(node.ready),
            or_dash(label_list(&node.labels)),
            node.assignment.as_ref().map_or_else(dash, model_text),
            node.observed
                .as_ref()
                .map_or_else(dash, |observed| state_text(observed, Some(REASON_CHARS))),
            generation_text(node),
            heartbeat_text(node.last_heartbeat_at, now),
            node.health.as_ref().map_or_else(dash, hottest_gpu_text),
        ]);
    }
    table
}

/// Everything `node show` prints above the history, in reading order.
pub fn node_fields(node: &NodeInfo, now: OffsetDateTime) -> Vec<(String, String)> {
    let inventory = &node.inventory;
    let gpus = inventory
        .gpus
        .iter()
        .map(|gpu| format!("{} ({})", gpu.name, human_bytes(gpu.memory_total_bytes)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut add = |key: &str, value: String| fields.push((key.to_owned(), value));
    add("name", node.name.clone());
    add("status", node.status.clone());
    add("ready", yes_no(node.ready));
    add("labels", or_dash(label_list(&node.labels)));
    add("agent", node.agent_version.clone());
    add("enrolled", human_time(node.enrolled_at));
    add(
        "heartbeat",
        match node.last_heartbeat_at {
            Some(at) => format!("{} ({})", human_time(at), human_age(at, now)),
            None => "never".to_owned(),
        },
    );
    add(
        "cpu",
        format!("{} ({} cores)", inventory.cpu_model, inventory.cpu_cores),
    );
    add("memory", human_bytes(inventory.memory_total_bytes));
    add("disk", human_bytes(inventory.disk_total_bytes));
    add("os", inventory.os.clone());
    add("gpus", or_dash(gpus));
    let adapters = inventory
        .adapters
        .iter()
        .map(|adapter| {
            format!(
                "gpu:{} {} ({} {})",
                adapter.index, adapter.name, adapter.backend, adapter.kind
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    add("adapters", or_dash(adapters));
    add("generation", generation_words(node));
    match &node.assignment {
        None => add("assignment", "none".to_owned()),
        Some(assignment) => {
            add(
                "assignment",
                format!(
                    "{} from {} (assignment {})",
                    model_text(assignment),
                    assignment.target,
                    assignment.generation
                ),
            );
            add(
                "artifact",
                format!(
                    "blake3:{} ({})",
                    assignment.digest,
                    human_bytes(assignment.size_bytes)
                ),
            );
            add(
                "prompt",
                assignment
                    .prompt
                    .clone()
                    .unwrap_or_else(|| "none".to_owned()),
            );
            // The policy and where the node finds the upstream's key (a
            // reference: the controller never has the key itself).
            add(
                "policy",
                match (&assignment.policy, &assignment.egress) {
                    (Some(policy), Some(egress)) => format!("{policy}, egress {egress}"),
                    (Some(policy), None) => policy.clone(),
                    (None, _) => "none (never calls out)".to_owned(),
                },
            );
        }
    }
    match &node.observed {
        None => add("state", "not reported yet".to_owned()),
        Some(observed) => {
            add(
                "state",
                format!(
                    "{} (generation {})",
                    state_text(observed, None),
                    observed.generation
                ),
            );
            add(
                "serving",
                observed
                    .serving_digest
                    .as_deref()
                    .map_or_else(|| "nothing".to_owned(), |d| format!("blake3:{d}")),
            );
        }
    }
    match &node.health {
        None => add("health", "no sample yet".to_owned()),
        Some(health) => fields.extend(health_fields(health, now)),
    }
    fields
}

/// The latest health sample, one line per GPU.
fn health_fields(health: &HealthInfo, now: OffsetDateTime) -> Vec<(String, String)> {
    let mut fields = vec![
        (
            "health".to_owned(),
            format!(
                "sampled {} ({})",
                human_time(health.taken_at),
                human_age(health.taken_at, now)
            ),
        ),
        (
            "cpu use".to_owned(),
            format!("{:.0}%", health.cpu_utilisation_percent),
        ),
        (
            "cpu temp".to_owned(),
            health
                .cpu_temperature_celsius
                .map_or_else(dash, |t| format!("{t:.0}°C")),
        ),
        (
            "memory use".to_owned(),
            format!(
                "{} of {}",
                human_bytes(health.memory_used_bytes),
                human_bytes(health.memory_total_bytes)
            ),
        ),
        (
            "disk free".to_owned(),
            health.disk_available_bytes.map_or_else(dash, human_bytes),
        ),
    ];
    for gpu in &health.gpus {
        fields.push((format!("gpu {}", gpu.index), gpu_text(gpu)));
    }
    if let Some(inference) = &health.inference {
        if let Some(device) = &inference.serving_device {
            fields.push(("device".to_owned(), device.clone()));
        }
        fields.push(("inference".to_owned(), inference_text(inference)));
    }
    if let Some(error) = &health.state_write_error {
        fields.push(("state write".to_owned(), format!("FAILING: {error}")));
    }
    fields
}

/// `2 of 20 in queue (peak 20), 41.5 tok/s, first token 120 ms (max 300 ms),
/// 12 done, 4 escalated, 3 rejected, 0 failed, 1 cancelled`.
fn inference_text(inference: &InferenceHealthInfo) -> String {
    let mut queue = format!(
        "{} of {} in queue",
        inference.queue_depth, inference.queue_capacity
    );
    // The depth is sampled at the heartbeat; a burst between two shows
    // only in the peak.
    if inference.queue_depth_peak > inference.queue_depth {
        queue.push_str(&format!(" (peak {})", inference.queue_depth_peak));
    }
    let mut parts = vec![queue, format!("{:.1} tok/s", inference.tokens_per_second)];
    if let (Some(p50), Some(max)) = (
        inference.time_to_first_token_p50_ms,
        inference.time_to_first_token_max_ms,
    ) {
        parts.push(format!("first token {p50} ms (max {max} ms)"));
    }
    let mut outcomes = vec![format!("{} done", inference.completed_total)];
    // Only a node with an escalation policy ever escalates: elsewhere a
    // standing "0 escalated" would be noise.
    if inference.escalated_total > 0 {
        outcomes.push(format!("{} escalated", inference.escalated_total));
    }
    outcomes.push(format!(
        "{} rejected, {} failed, {} cancelled",
        inference.rejected_total, inference.failed_total, inference.cancelled_total
    ));
    parts.extend(outcomes);
    parts.join(", ")
}

/// `97% util, 71°C, 20.1 GiB of 24.0 GiB, 250 W of 300 W, throttled: HW_SLOWDOWN`.
fn gpu_text(gpu: &GpuHealthInfo) -> String {
    let mut parts = vec![
        format!("{} util", percent(gpu.utilisation_percent)),
        celsius(gpu.temperature_celsius),
        format!(
            "{} of {}",
            human_bytes(gpu.memory_used_bytes),
            human_bytes(gpu.memory_total_bytes)
        ),
    ];
    let watts = |milliwatts: u32| format!("{:.0} W", f64::from(milliwatts) / 1000.0);
    match (gpu.power_draw_milliwatts, gpu.power_limit_milliwatts) {
        (Some(draw), Some(limit)) => parts.push(format!("{} of {}", watts(draw), watts(limit))),
        (Some(draw), None) => parts.push(watts(draw)),
        (None, _) => {}
    }
    if !gpu.throttle_reasons.is_empty() {
        parts.push(format!("throttled: {}", gpu.throttle_reasons.join(",")));
    }
    parts.join(", ")
}

/// `71°C/98%` for the hottest GPU, the one that limits the node first.
fn hottest_gpu_text(health: &HealthInfo) -> String {
    let hottest = health
        .gpus
        .iter()
        .max_by_key(|gpu| (gpu.temperature_celsius, gpu.utilisation_percent));
    match hottest {
        Some(gpu) if gpu.temperature_celsius.is_some() || gpu.utilisation_percent.is_some() => {
            format!(
                "{}/{}",
                celsius(gpu.temperature_celsius),
                percent(gpu.utilisation_percent)
            )
        }
        _ => dash(),
    }
}

/// `llama@1.2.0 Q4_1`.
fn model_text(assignment: &AssignmentInfo) -> String {
    format!(
        "{}@{} {}",
        assignment.model, assignment.version, assignment.quantization
    )
}

/// The agent's phase, with progress while downloading and the reason of a
/// failure (cut to `reason_chars` when given).
fn state_text(observed: &ObservedInfo, reason_chars: Option<usize>) -> String {
    match observed.phase.as_str() {
        "downloading" if observed.bytes_total > 0 => {
            let done = u128::from(observed.bytes_done.min(observed.bytes_total));
            let percent = done * 100 / u128::from(observed.bytes_total);
            format!(
                "downloading {percent}% ({} of {})",
                human_bytes(observed.bytes_done),
                human_bytes(observed.bytes_total)
            )
        }
        "failed" => match observed.reason.as_deref() {
            Some(reason) if !reason.is_empty() => {
                let shown = match reason_chars {
                    Some(limit) if reason.chars().count() > limit => {
                        let mut cut: String = reason.chars().take(limit).collect();
                        cut.push('…');
                        cut
                    }
                    _ => reason.to_owned(),
                };
                format!("failed: {shown}")
            }
            _ => "failed".to_owned(),
        },
        phase => phase.to_owned(),
    }
}

/// `6/7`: the generation the agent last reported on, over the one it should
/// reach; `-/7` before its first report.
fn generation_text(node: &NodeInfo) -> String {
    let observed = node
        .observed
        .as_ref()
        .map_or_else(dash, |observed| observed.generation.to_string());
    format!("{observed}/{}", node.desired_generation)
}

fn generation_words(node: &NodeInfo) -> String {
    match &node.observed {
        Some(observed) if observed.generation == node.desired_generation => {
            format!("{} (reached)", node.desired_generation)
        }
        Some(observed) => format!(
            "desired {}, agent at {}",
            node.desired_generation, observed.generation
        ),
        None => format!(
            "desired {}, agent not reported yet",
            node.desired_generation
        ),
    }
}

fn heartbeat_text(at: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    at.map_or_else(|| "never".to_owned(), |at| human_age(at, now))
}

/// The history's points placed one per minute on the `minutes` minutes that
/// end now, oldest first; `None` where a minute has no sample. When the
/// current minute has no point yet (the controller may only summarise
/// whole minutes) the window ends a minute earlier, so a healthy node does
/// not always show a gap at the end.
pub fn minute_slots(
    points: &[HealthPoint],
    now: OffsetDateTime,
    minutes: u32,
) -> Vec<Option<&HealthPoint>> {
    let minute_of = |at: OffsetDateTime| at.unix_timestamp().div_euclid(60);
    let current = minute_of(now);
    let sampled = |point: &&HealthPoint| point.samples > 0;
    let end = if points
        .iter()
        .filter(sampled)
        .any(|point| minute_of(point.at) == current)
    {
        current
    } else {
        current - 1
    };
    let width = minutes as usize;
    let mut slots = vec![None; width];
    for point in points.iter().filter(sampled) {
        let back = end - minute_of(point.at);
        if let Ok(back) = usize::try_from(back)
            && back < width
        {
            slots[width - 1 - back] = Some(point);
        }
    }
    slots
}

/// Sparklines of CPU use, GPU use and GPU temperature, each with the range
/// it was scaled to; GPU lines only when some minute has GPU data.
pub fn history_fields(
    points: &[HealthPoint],
    now: OffsetDateTime,
    minutes: u32,
) -> Vec<(String, String)> {
    let slots = minute_slots(points, now, minutes);
    let sampled = slots.iter().flatten().count();
    if sampled == 0 {
        return vec![("samples".to_owned(), "none".to_owned())];
    }
    let series = |metric: fn(&HealthPoint) -> Option<f64>| -> Vec<Option<f64>> {
        slots.iter().map(|slot| slot.and_then(metric)).collect()
    };
    let drawn = |values: &[Option<f64>], unit: &str| {
        let drawn = sparkline(values);
        match drawn.range {
            Some((low, high)) => format!("{}  {low:.0}–{high:.0}{unit}", drawn.line),
            None => drawn.line,
        }
    };
    let mut fields = vec![(
        "cpu use".to_owned(),
        drawn(&series(|p| Some(f64::from(p.cpu_utilisation_percent))), "%"),
    )];
    let gpu_use = series(|p| p.gpu_utilisation_percent.map(f64::from));
    let gpu_temp = series(|p| p.gpu_temperature_celsius_max.map(f64::from));
    if gpu_use.iter().any(Option::is_some) {
        fields.push(("gpu use".to_owned(), drawn(&gpu_use, "%")));
    }
    if gpu_temp.iter().any(Option::is_some) {
        fields.push(("gpu temp".to_owned(), drawn(&gpu_temp, "°C")));
    }
    let tokens = series(|p| p.inference.as_ref().map(|i| f64::from(i.tokens_per_second)));
    if tokens.iter().any(Option::is_some) {
        let queue = series(|p| p.inference.as_ref().map(|i| f64::from(i.queue_depth_max)));
        fields.push(("tokens/s".to_owned(), drawn(&tokens, "")));
        fields.push(("queue".to_owned(), drawn(&queue, "")));
        let (completed, failed, rejected, escalated) = slots
            .iter()
            .flatten()
            .filter_map(|p| p.inference.as_ref())
            .fold((0, 0, 0, 0), |(c, f, r, e), i| {
                (
                    c + i.completed,
                    f + i.failed,
                    r + i.rejected,
                    e + i.escalated,
                )
            });
        // As in `show`: escalations only where there were any.
        let escalated = if escalated > 0 {
            format!(", {escalated} escalated")
        } else {
            String::new()
        };
        fields.push((
            "requests".to_owned(),
            format!("{completed} done{escalated}, {failed} failed, {rejected} rejected"),
        ));
    }
    let throttled = slots.iter().flatten().filter(|p| p.throttled).count();
    fields.push((
        "minutes".to_owned(),
        format!("{sampled} of {minutes} sampled, {throttled} throttled"),
    ));
    fields
}

fn percent(value: Option<u32>) -> String {
    value.map_or_else(|| "?%".to_owned(), |v| format!("{v}%"))
}

fn celsius(value: Option<u32>) -> String {
    value.map_or_else(|| "?°C".to_owned(), |v| format!("{v}°C"))
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

fn dash() -> String {
    "-".to_owned()
}

fn or_dash(text: String) -> String {
    if text.is_empty() { dash() } else { text }
}

#[cfg(test)]
mod tests {
    use flotilla_api_types::NodeInventoryInfo;
    use time::Duration;

    use super::*;

    fn now() -> OffsetDateTime {
        // 10:20:30 on some day: thirty seconds into a minute.
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000) + Duration::seconds(37_230)
    }

    /// A ready, active node with no assignment, report or health yet.
    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_owned(),
            status: "active".to_owned(),
            ready: true,
            labels: Default::default(),
            agent_version: "0.1.0".to_owned(),
            inventory: NodeInventoryInfo::default(),
            enrolled_at: OffsetDateTime::UNIX_EPOCH,
            last_heartbeat_at: None,
            desired_generation: 0,
            assignment: None,
            observed: None,
            health: None,
        }
    }

    fn observed(generation: u64, phase: &str) -> ObservedInfo {
        ObservedInfo {
            generation,
            phase: phase.to_owned(),
            digest: None,
            bytes_done: 0,
            bytes_total: 0,
            reason: None,
            serving_digest: None,
        }
    }

    fn gpu(index: u32, temperature: Option<u32>, utilisation: Option<u32>) -> GpuHealthInfo {
        GpuHealthInfo {
            index,
            memory_used_bytes: 20 << 30,
            memory_total_bytes: 24 << 30,
            utilisation_percent: utilisation,
            temperature_celsius: temperature,
            power_draw_milliwatts: Some(250_000),
            power_limit_milliwatts: Some(300_000),
            throttle_reasons: Vec::new(),
        }
    }

    fn health(gpus: Vec<GpuHealthInfo>) -> HealthInfo {
        HealthInfo {
            taken_at: now() - Duration::seconds(3),
            cpu_utilisation_percent: 37.4,
            memory_used_bytes: 12 << 30,
            memory_total_bytes: 64 << 30,
            disk_available_bytes: Some(100 << 30),
            cpu_temperature_celsius: None,
            gpus,
            inference: Some(InferenceHealthInfo {
                queue_depth: 2,
                queue_depth_peak: 20,
                queue_capacity: 20,
                completed_total: 12,
                rejected_total: 3,
                failed_total: 0,
                cancelled_total: 1,
                generated_tokens_total: 900,
                tokens_per_second: 41.46,
                time_to_first_token_p50_ms: Some(120),
                time_to_first_token_max_ms: Some(300),
                serving_digest: Some("ab".repeat(32)),
                serving_device: None,
                completed_since_activation: 10,
                failed_since_activation: 1,
                escalated_total: 4,
                escalated_since_activation: 2,
            }),
            state_write_error: None,
        }
    }

    fn point(minutes_ago: i64, cpu: f32, gpu_temperature: Option<f32>) -> HealthPoint {
        let minute = now().unix_timestamp().div_euclid(60) - minutes_ago;
        HealthPoint {
            at: OffsetDateTime::from_unix_timestamp(minute * 60)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            samples: 6,
            cpu_utilisation_percent: cpu,
            memory_used_bytes_max: 1 << 30,
            gpu_utilisation_percent: gpu_temperature.map(|_| 50.0),
            gpu_temperature_celsius_max: gpu_temperature,
            throttled: false,
            inference: None,
        }
    }

    #[test]
    fn node_rows_show_model_state_generation_heartbeat_and_gpu() {
        let mut serving = node("edge-1");
        serving.labels.insert("zone".into(), "eu".into());
        serving.labels.insert("gpu".into(), "l4".into());
        serving.desired_generation = 7;
        serving.last_heartbeat_at = Some(now() - Duration::seconds(3));
        serving.assignment = Some(AssignmentInfo {
            model: "llama".into(),
            version: "1.2.0".into(),
            quantization: "Q4_1".into(),
            digest: "ab".repeat(32),
            size_bytes: 1 << 30,
            prompt: None,
            prompt_policy: "prepend".into(),
            aliases: Vec::new(),
            policy: Some("hybrid@2".into()),
            egress: Some(
                "allowed: big at https://llm.example.com/v1 (key env:UPSTREAM_KEY)".into(),
            ),
            generation: 7,
            target: "selector zone=eu".into(),
        });
        serving.observed = Some(ObservedInfo {
            bytes_done: 450,
            bytes_total: 1000,
            ..observed(7, "downloading")
        });
        serving.health = Some(health(vec![
            gpu(0, Some(60), Some(99)),
            gpu(1, Some(71), Some(98)),
        ]));

        let mut failed = node("edge-2");
        failed.ready = false;
        failed.status = "cordoned".into();
        failed.desired_generation = 3;
        failed.last_heartbeat_at = Some(now() - Duration::minutes(5));
        failed.observed = Some(ObservedInfo {
            reason: Some("digest mismatch: expected blake3:0123456789abcdef0123".into()),
            ..observed(2, "failed")
        });
        failed.health = Some(health(Vec::new()));

        let table = nodes_table(&[serving, failed, node("edge-3")], now()).render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAME",
                "STATUS",
                "READY",
                "LABELS",
                "MODEL",
                "STATE",
                "GEN",
                "HEARTBEAT",
                "GPU"
            ]
        );
        assert!(lines[1].contains("gpu=l4,zone=eu"), "{table}");
        assert!(lines[1].contains("llama@1.2.0 Q4_1"), "{table}");
        assert!(
            lines[1].contains("downloading 45% (450 B of 1000 B)"),
            "{table}"
        );
        assert!(lines[1].contains(" 7/7 "), "{table}");
        assert!(lines[1].contains("3s ago"), "{table}");
        assert!(lines[1].ends_with("71°C/98%"), "{table}");
        assert!(
            lines[2].contains("failed: digest mismatch: expected blake3:0123456…"),
            "{table}"
        );
        assert!(lines[2].contains(" 2/3 "), "{table}");
        assert!(lines[2].contains("5m ago"), "{table}");
        assert!(lines[2].ends_with(" -"), "{table}");
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            [
                "edge-3", "active", "yes", "-", "-", "-", "-/0", "never", "-"
            ]
        );
    }

    #[test]
    fn the_hottest_gpu_is_shown_even_with_partial_data() {
        assert_eq!(
            hottest_gpu_text(&health(vec![
                gpu(0, None, Some(10)),
                gpu(1, Some(40), None)
            ])),
            "40°C/?%"
        );
        assert_eq!(hottest_gpu_text(&health(vec![gpu(0, None, None)])), "-");
    }

    #[test]
    fn show_prints_assignment_state_and_every_gpu() {
        let mut shown = node("edge-1");
        shown.desired_generation = 4;
        shown.observed = Some(ObservedInfo {
            reason: Some("x".repeat(100)),
            serving_digest: Some("cd".repeat(32)),
            ..observed(3, "failed")
        });
        let mut hot = gpu(1, Some(88), Some(100));
        hot.throttle_reasons = vec!["HW_THERMAL_SLOWDOWN".into()];
        shown.health = Some(health(vec![gpu(0, Some(50), Some(1)), hot]));
        let fields = node_fields(&shown, now());
        let value = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(value("assignment"), "none");
        assert_eq!(value("generation"), "desired 4, agent at 3");
        // No cut in `show`: the whole reason.
        assert_eq!(
            value("state"),
            format!("failed: {} (generation 3)", "x".repeat(100))
        );
        assert_eq!(value("serving"), format!("blake3:{}", "cd".repeat(32)));
        assert_eq!(value("heartbeat"), "never");
        assert_eq!(value("cpu use"), "37%");
        assert_eq!(value("memory use"), "12.0 GiB of 64.0 GiB");
        assert_eq!(
            value("gpu 1"),
            "100% util, 88°C, 20.0 GiB of 24.0 GiB, 250 W of 300 W, throttled: HW_THERMAL_SLOWDOWN"
        );
        assert!(!value("gpu 0").contains("throttled"));
        assert_eq!(
            value("inference"),
            "2 of 20 in queue (peak 20), 41.5 tok/s, first token 120 ms (max 300 ms), \
             12 done, 4 escalated, 3 rejected, 0 failed, 1 cancelled"
        );
        // A node that never escalated says nothing of escalation.
        let mut local_only = health(Vec::new()).inference.expect("the fixture serves");
        local_only.escalated_total = 0;
        assert!(
            !inference_text(&local_only).contains("escalated"),
            "{}",
            inference_text(&local_only)
        );
        assert_eq!(value("state write"), "", "no line while writes succeed");
    }

    #[test]
    fn show_names_the_policy_and_its_key_reference() {
        let mut shown = node("edge-1");
        shown.assignment = Some(AssignmentInfo {
            model: "llama".into(),
            version: "1.2.0".into(),
            quantization: "Q4_1".into(),
            digest: "ab".repeat(32),
            size_bytes: 1 << 30,
            prompt: None,
            prompt_policy: "prepend".into(),
            aliases: Vec::new(),
            policy: Some("hybrid@2".into()),
            egress: Some(
                "allowed: big at https://llm.example.com/v1 (key env:UPSTREAM_KEY)".into(),
            ),
            generation: 7,
            target: "node=edge-1".into(),
        });
        let policy = |node: &NodeInfo| {
            node_fields(node, now())
                .into_iter()
                .find(|(key, _)| key == "policy")
                .map(|(_, value)| value)
        };
        assert_eq!(
            policy(&shown).as_deref(),
            Some(
                "hybrid@2, egress allowed: big at https://llm.example.com/v1 (key env:UPSTREAM_KEY)"
            )
        );
        if let Some(assignment) = shown.assignment.as_mut() {
            assignment.policy = None;
            assignment.egress = None;
        }
        assert_eq!(policy(&shown).as_deref(), Some("none (never calls out)"));
    }

    #[test]
    fn history_points_land_on_their_minute_with_gaps_between() {
        // The current minute has no point yet: the window ends a minute ago.
        let points = [point(3, 10.0, None), point(1, 30.0, None)];
        let slots = minute_slots(&points, now(), 4);
        let cpu: Vec<Option<f32>> = slots
            .iter()
            .map(|slot| slot.map(|p| p.cpu_utilisation_percent))
            .collect();
        assert_eq!(cpu, [None, Some(10.0), None, Some(30.0)]);

        // With a point in the current minute the window ends now; points
        // older than the window are left out.
        let points = [
            point(90, 1.0, None),
            point(1, 30.0, None),
            point(0, 50.0, None),
        ];
        let cpu: Vec<Option<f32>> = minute_slots(&points, now(), 3)
            .iter()
            .map(|slot| slot.map(|p| p.cpu_utilisation_percent))
            .collect();
        assert_eq!(cpu, [None, Some(30.0), Some(50.0)]);

        // A minute without samples is a gap, whatever its numbers.
        let empty = [HealthPoint {
            samples: 0,
            ..point(1, 99.0, None)
        }];
        let slots = minute_slots(&empty, now(), 2);
        assert_eq!(slots.len(), 2);
        assert!(slots.iter().all(Option::is_none));
    }

    #[test]
    fn history_draws_cpu_always_and_gpu_lines_only_with_gpu_data() {
        let cpu_only = history_fields(&[point(2, 10.0, None), point(1, 90.0, None)], now(), 3);
        let keys: Vec<&str> = cpu_only.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["cpu use", "minutes"]);
        assert_eq!(cpu_only[0].1, " ▁█  10–90%");
        assert_eq!(cpu_only[1].1, "2 of 3 sampled, 0 throttled");

        let with_gpu = history_fields(&[point(1, 5.0, Some(70.0))], now(), 2);
        let keys: Vec<&str> = with_gpu.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["cpu use", "gpu use", "gpu temp", "minutes"]);
        assert_eq!(with_gpu[2].1, " ▄  70–70°C");

        assert_eq!(
            history_fields(&[], now(), 60),
            [("samples".to_owned(), "none".to_owned())]
        );
    }

    #[test]
    fn history_draws_inference_lines_when_minutes_carry_figures() {
        let serving = |minutes_ago: i64, tokens: f32, completed: u64| HealthPoint {
            inference: Some(flotilla_api_types::InferenceMinute {
                tokens_per_second: tokens,
                queue_depth_max: 2,
                time_to_first_token_max_ms: Some(120),
                completed,
                failed: 1,
                rejected: 3,
                escalated: 2,
            }),
            ..point(minutes_ago, 50.0, None)
        };
        let fields = history_fields(&[serving(2, 10.0, 5), serving(1, 40.0, 7)], now(), 2);
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["cpu use", "tokens/s", "queue", "requests", "minutes"]
        );
        assert_eq!(fields[1].1, "▁█  10–40");
        assert_eq!(fields[3].1, "12 done, 4 escalated, 2 failed, 6 rejected");
    }
}
