use time::OffsetDateTime;

use super::*;
use crate::domain::{
    ArtifactFormat, Digest, GpuHealth, NodeGpu, PromptPolicy, Quantization, ServedRequests,
    VersionState,
};

fn names(count: usize) -> Vec<NodeName> {
    (0..count)
        .map(|i| format!("edge-{i:02}").parse().expect("valid name"))
        .collect()
}

fn name(s: &str) -> NodeName {
    s.parse().expect("valid name")
}

#[test]
fn waves_parse_and_reject_nonsense() {
    let waves: Waves = "1, 10%,50%,100%".parse().expect("valid");
    assert_eq!(
        waves.sizes(),
        [
            WaveSize::Count(1),
            WaveSize::Percent(10),
            WaveSize::Percent(50),
            WaveSize::Percent(100)
        ]
    );
    assert_eq!(waves.to_string(), "1,10%,50%,100%");
    for bad in [
        "", "0", "0%", "101%", "x", "1,,2", "50%,10%", "5,2", "-1", "1.5",
    ] {
        assert!(bad.parse::<Waves>().is_err(), "{bad}");
    }
    let many = vec!["1"; 101].join(",");
    assert!(many.parse::<Waves>().is_err());
}

#[test]
fn four_waves_over_twenty_nodes() {
    let mut nodes = names(20);
    nodes.reverse();
    let plan = plan_waves(&nodes, &"1,10%,50%,100%".parse().expect("valid"));
    let sizes: Vec<usize> = plan.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 1, 8, 10]);
    // Deterministic: by name.
    assert_eq!(plan[0], [name("edge-00")]);
    assert_eq!(plan[1], [name("edge-01")]);
    assert_eq!(plan[3].last(), Some(&name("edge-19")));
}

#[test]
fn empty_waves_are_dropped_and_the_rest_gets_a_final_wave() {
    let nodes = names(3);
    let plan = plan_waves(&nodes, &"1,10%,50%".parse().expect("valid"));
    // 10% of 3 rounds up to 1: no new node, dropped; 50% is 2; the third
    // node gets a final wave.
    let sizes: Vec<usize> = plan.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 1, 1]);
    assert!(plan_waves(&[], &Waves::default()).is_empty());
    let plan = plan_waves(&names(5), &"100".parse().expect("valid"));
    assert_eq!(plan.len(), 1);
}

#[test]
fn states_round_trip() {
    for state in RolloutState::ALL {
        assert_eq!(state.as_str().parse::<RolloutState>(), Ok(state));
    }
    for state in RolloutNodeState::ALL {
        assert_eq!(state.as_str().parse::<RolloutNodeState>(), Ok(state));
    }
    assert!("done".parse::<RolloutState>().is_err());
    assert!(RolloutState::Succeeded.is_terminal());
    assert!(!RolloutState::Halted.is_terminal());
}

#[test]
fn command_state_machine() {
    use RolloutCommand::*;
    use RolloutState::*;
    let go = |state, command, baking| apply_command(state, command, baking).map(|o| o.state);
    assert_eq!(go(Progressing, Pause, false), Ok(Paused));
    assert_eq!(go(Paused, Resume, false), Ok(Progressing));
    assert_eq!(go(Paused, Resume, true), Ok(Baking));
    assert_eq!(go(Halted, Resume, false), Ok(Progressing));
    assert!(go(Halted, Pause, false).is_err());
    assert_eq!(go(Baking, Abort, true), Ok(Aborted));
    assert_eq!(go(Succeeded, Rollback, false), Ok(RollingBack));
    assert_eq!(go(Aborted, Rollback, false), Ok(RollingBack));
    assert!(go(RolledBack, Rollback, false).is_err());
    assert!(go(Succeeded, Pause, false).is_err());
    assert!(go(RollingBack, Abort, false).is_err());
    assert!(go(Paused, Promote, false).is_err());
    let promoted = apply_command(Baking, Promote, true).expect("allowed");
    assert_eq!(promoted.state, Baking);
    assert!(promoted.skip_bake);
    assert_eq!("pause".parse::<RolloutCommand>(), Ok(Pause));
    assert!("explode".parse::<RolloutCommand>().is_err());
}

fn artifact(quant: Quantization, memory: u64) -> Artifact {
    Artifact {
        model: "m".parse().expect("valid"),
        version: "1.0.0".parse().expect("valid"),
        digest: Digest::from(blake3::hash(quant.name().as_bytes())),
        size_bytes: memory / 2,
        format: ArtifactFormat::Gguf,
        quantization: quant,
        architecture: "llama".into(),
        parameter_count: 1,
        context_length: None,
        memory_estimate_bytes: memory,
        servability: crate::domain::Servability::Unchecked,
        created_at: OffsetDateTime::UNIX_EPOCH,
    }
}

fn catalogue() -> Vec<(ModelVersion, Vec<Artifact>)> {
    vec![(
        ModelVersion {
            model: "m".parse().expect("valid"),
            version: "1.0.0".parse().expect("valid"),
            state: VersionState::Published,
            notes: String::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            published_at: None,
        },
        vec![
            artifact(Quantization::Q4_1, 1_000),
            artifact(Quantization::Q8_0, 2_000),
        ],
    )]
}

fn cpu_node(memory: u64) -> NodeInventory {
    NodeInventory {
        memory_total_bytes: memory,
        ..NodeInventory::default()
    }
}

#[test]
fn budget_uses_free_vram_or_ram_less_the_margin() {
    assert_eq!(memory_budget(&cpu_node(1_000), None, 10), 900);
    let gpu_node = NodeInventory {
        memory_total_bytes: 1 << 40,
        gpus: vec![
            NodeGpu {
                index: 0,
                memory_total_bytes: 2_000,
                ..NodeGpu::default()
            },
            NodeGpu {
                index: 1,
                memory_total_bytes: 3_000,
                ..NodeGpu::default()
            },
        ],
        ..NodeInventory::default()
    };
    assert_eq!(memory_budget(&gpu_node, None, 0), 3_000);
    let health = HealthSample {
        taken_at: OffsetDateTime::UNIX_EPOCH,
        cpu_utilisation_percent: 0.0,
        memory_used_bytes: 0,
        memory_total_bytes: 0,
        disk_available_bytes: None,
        cpu_temperature_celsius: None,
        gpus: vec![GpuHealth {
            index: 1,
            memory_used_bytes: 2_500,
            memory_total_bytes: 3_000,
            utilisation_percent: None,
            temperature_celsius: None,
            power_draw_milliwatts: None,
            power_limit_milliwatts: None,
            throttle_reasons: Vec::new(),
        }],
        inference: None,
        state_write_error: None,
    };
    assert_eq!(memory_budget(&gpu_node, Some(&health), 0), 2_000);
    assert_eq!(
        memory_budget(&cpu_node(u64::MAX), None, 10),
        u64::MAX / 100 * 90 + 13
    );
}

#[test]
fn auto_fits_q8_on_big_nodes_and_q4_on_small_ones() {
    let model: ModelName = "m".parse().expect("valid");
    let req: semver::VersionReq = "^1".parse().expect("valid");
    let auto = QuantizationPolicy::Auto;
    let fit = |memory| {
        fit_node(
            &model,
            &catalogue(),
            &req,
            &auto,
            memory_budget(&cpu_node(memory), None, DEFAULT_SAFETY_MARGIN_PERCENT),
        )
    };
    let Fit::Fits(fits) = fit(10_000) else {
        panic!("big node fits");
    };
    assert_eq!(fits.artifact.quantization, Quantization::Q8_0);
    let Fit::Fits(fits) = fit(1_500) else {
        panic!("small node fits");
    };
    assert_eq!(fits.artifact.quantization, Quantization::Q4_1);
    // 1 000 bytes less 10% is too little for the smallest artifact.
    let Fit::Unschedulable(reason) = fit(1_000) else {
        panic!("tiny node does not fit");
    };
    assert!(reason.contains("fits in 900 bytes"), "{reason}");
    let Fit::Unschedulable(reason) = fit_node(
        &model,
        &catalogue(),
        &"^2".parse().expect("valid"),
        &auto,
        10_000,
    ) else {
        panic!("no version 2");
    };
    assert!(reason.contains("no published version"), "{reason}");
}

fn spec(max_unavailable: u32) -> RolloutSpec {
    RolloutSpec {
        selector: Labels::default(),
        model: "m".parse().expect("valid"),
        requirement: "^1".parse().expect("valid"),
        quantization: QuantizationPolicy::Auto,
        prompt: None,
        prompt_policy: PromptPolicy::default(),
        aliases: Vec::new(),
        escalation_policy: None,
        waves: Waves::default(),
        max_unavailable,
        bake: Duration::from_secs(10),
        auto_rollback: true,
        gates: GateThresholds::default(),
    }
}

fn rollout(state: RolloutState, wave: u32, waves: u32) -> Rollout {
    Rollout {
        name: "r".parse().expect("valid"),
        spec: spec(2),
        state,
        current_wave: wave,
        wave_count: waves,
        bake_started_at: None,
        skip_bake: false,
        reason: None,
        generation: 1,
        created_by: "admin".into(),
        created_at: OffsetDateTime::UNIX_EPOCH,
        updated_at: OffsetDateTime::UNIX_EPOCH,
    }
}

fn desired(digest: &str) -> DesiredAssignment {
    DesiredAssignment {
        model: "m".into(),
        version: "1.0.0".into(),
        quantization: "Q8_0".into(),
        digest: digest.into(),
        size_bytes: 1,
        prompt: None,
        prompt_policy: PromptPolicy::Replace,
        aliases: vec!["chat".to_owned()],
        escalation_policy: None,
        assignment_generation: 0,
        target: String::new(),
    }
}

fn node(n: &str, wave: u32, state: RolloutNodeState) -> RolloutNode {
    RolloutNode {
        node: name(n),
        wave,
        state,
        desired: Some(desired("new")),
        previous: None,
        reason: None,
    }
}

fn idle() -> NodeObservation {
    NodeObservation {
        connected: true,
        phase: Some(AssignmentPhase::Ready),
        digest: Some("old".into()),
        serving_digest: Some("old".into()),
        reason: None,
        throttled: false,
        requests: None,
        pinned: false,
    }
}

fn ready_new() -> NodeObservation {
    NodeObservation {
        digest: Some("new".into()),
        serving_digest: Some("new".into()),
        ..idle()
    }
}

const NOW: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

#[test]
fn a_pending_rollout_starts_and_terminal_ones_do_nothing() {
    let nodes = [node("a", 0, RolloutNodeState::Waiting)];
    let d = decide(
        &rollout(RolloutState::Pending, 0, 1),
        &nodes,
        |_| idle(),
        NOW,
    );
    assert_eq!(d.transition, Some(Transition::Start));
    for state in [
        RolloutState::Paused,
        RolloutState::Halted,
        RolloutState::Succeeded,
        RolloutState::Aborted,
    ] {
        assert!(decide(&rollout(state, 0, 1), &nodes, |_| idle(), NOW).is_empty());
    }
}

#[test]
fn starts_at_most_max_unavailable_nodes_of_the_current_wave() {
    let nodes = [
        node("d", 1, RolloutNodeState::Waiting),
        node("c", 0, RolloutNodeState::Waiting),
        node("b", 0, RolloutNodeState::Waiting),
        node("a", 0, RolloutNodeState::Waiting),
        node("u", 0, RolloutNodeState::Unschedulable),
    ];
    let r = rollout(RolloutState::Progressing, 0, 2);
    let d = decide(&r, &nodes, |_| idle(), NOW);
    assert_eq!(d.start, [name("a"), name("b")]);
    // One still updating: one more may start.
    let nodes = [
        node("a", 0, RolloutNodeState::Updating),
        node("b", 0, RolloutNodeState::Ready),
        node("c", 0, RolloutNodeState::Waiting),
        node("e", 0, RolloutNodeState::Waiting),
    ];
    let d = decide(&r, &nodes, |_| idle(), NOW);
    assert_eq!(d.start, [name("c")]);
    // A disconnected waiting node counts as unavailable and is not started.
    let d = decide(
        &r,
        &nodes,
        |n| {
            if n.as_str() == "c" {
                NodeObservation {
                    connected: false,
                    ..idle()
                }
            } else {
                idle()
            }
        },
        NOW,
    );
    assert!(d.start.is_empty());
}

#[test]
fn ready_reports_lead_to_bake_then_the_next_wave_then_success() {
    let mut r = rollout(RolloutState::Progressing, 0, 2);
    let nodes = [
        node("a", 0, RolloutNodeState::Updating),
        node("b", 1, RolloutNodeState::Waiting),
        node("p", 0, RolloutNodeState::Pinned),
    ];
    let d = decide(&r, &nodes, |_| ready_new(), NOW);
    assert_eq!(d.node_updates, [(name("a"), RolloutNodeState::Ready, None)]);
    assert_eq!(d.transition, Some(Transition::BeginBake));
    let nodes = [
        node("a", 0, RolloutNodeState::Ready),
        node("b", 1, RolloutNodeState::Waiting),
    ];
    r.state = RolloutState::Baking;
    r.bake_started_at = Some(NOW);
    let early = decide(
        &r,
        &nodes,
        |_| ready_new(),
        NOW + time::Duration::seconds(5),
    );
    assert!(early.is_empty(), "{early:?}");
    let late = decide(
        &r,
        &nodes,
        |_| ready_new(),
        NOW + time::Duration::seconds(10),
    );
    assert_eq!(late.transition, Some(Transition::AdvanceWave(1)));
    r.skip_bake = true;
    let promoted = decide(&r, &nodes, |_| ready_new(), NOW);
    assert_eq!(promoted.transition, Some(Transition::AdvanceWave(1)));
    r.skip_bake = false;
    r.current_wave = 1;
    let nodes = [
        node("a", 0, RolloutNodeState::Ready),
        node("b", 1, RolloutNodeState::Ready),
    ];
    let done = decide(
        &r,
        &nodes,
        |_| ready_new(),
        NOW + time::Duration::seconds(10),
    );
    assert_eq!(done.transition, Some(Transition::Succeed));
}

#[test]
fn gates_trip_on_failures_not_ready_and_throttling() {
    let r = rollout(RolloutState::Progressing, 0, 2);
    let nodes = [
        node("a", 0, RolloutNodeState::Updating),
        node("b", 0, RolloutNodeState::Updating),
    ];
    let failing = |n: &NodeName| {
        if n.as_str() == "a" {
            NodeObservation {
                phase: Some(AssignmentPhase::Failed),
                digest: Some("new".into()),
                reason: Some("warm-up generation failed".into()),
                ..idle()
            }
        } else {
            idle()
        }
    };
    let d = decide(&r, &nodes, failing, NOW);
    assert_eq!(
        d.node_updates,
        [(
            name("a"),
            RolloutNodeState::Failed,
            Some("warm-up generation failed".into())
        )]
    );
    let Some(Transition::Trip(GateTrip(why))) = d.transition else {
        panic!("expected a trip: {d:?}");
    };
    assert!(why.contains("1 failed activations"), "{why}");

    // A failure of the old artifact is not the rollout's.
    let old_failure = |_: &NodeName| NodeObservation {
        phase: Some(AssignmentPhase::Failed),
        ..idle()
    };
    assert_eq!(decide(&r, &nodes, old_failure, NOW).transition, None);

    let gone = |_: &NodeName| NodeObservation {
        connected: false,
        ..idle()
    };
    let Some(Transition::Trip(GateTrip(why))) = decide(&r, &nodes, gone, NOW).transition else {
        panic!("expected a trip");
    };
    assert!(why.contains("went not-ready during wave 1"), "{why}");

    let mut baking = rollout(RolloutState::Baking, 0, 2);
    baking.bake_started_at = Some(NOW);
    let ready = [node("a", 0, RolloutNodeState::Ready)];
    let hot = |_: &NodeName| NodeObservation {
        throttled: true,
        ..ready_new()
    };
    let Some(Transition::Trip(GateTrip(why))) = decide(&baking, &ready, hot, NOW).transition else {
        panic!("expected a trip");
    };
    assert!(why.contains("throttling"), "{why}");
    // Throttling outside the bake window does not count.
    assert!(
        decide(&r, &[node("a", 0, RolloutNodeState::Updating)], hot, NOW)
            .transition
            .is_some_and(|t| t == Transition::BeginBake)
    );
    let mut lenient = baking.clone();
    lenient.spec.gates.halt_on_throttling = false;
    assert_eq!(decide(&lenient, &ready, hot, NOW).transition, None);
}

#[test]
fn the_error_rate_gate_counts_only_the_new_artifacts_requests_once_there_are_enough() {
    let mut baking = rollout(RolloutState::Baking, 0, 2);
    baking.bake_started_at = Some(NOW);
    baking.spec.gates.max_error_rate_percent = Some(10);
    baking.spec.gates.min_requests_for_error_rate = 20;
    let ready = [node("a", 0, RolloutNodeState::Ready)];
    let serving = |digest: &str, completed: u64, failed: u64| {
        let requests = Some(ServedRequests {
            digest: digest.to_owned(),
            completed,
            failed,
            escalated: 0,
        });
        move |_: &NodeName| NodeObservation {
            requests: requests.clone(),
            ..ready_new()
        }
    };
    // 3 of 25 failed (12% > 10%): tripped, naming the node and the numbers.
    let Some(Transition::Trip(GateTrip(why))) =
        decide(&baking, &ready, serving("new", 22, 3), NOW).transition
    else {
        panic!("expected a trip");
    };
    assert!(
        why.contains("node a failed 3 of 25 requests (12%)"),
        "{why}"
    );
    // Exactly at the threshold, too few requests, or the old artifact's
    // failures: no trip.
    for quiet in [
        serving("new", 27, 3),
        serving("new", 10, 9),
        serving("old", 0, 50),
    ] {
        assert_eq!(decide(&baking, &ready, quiet, NOW).transition, None);
    }
    // Without a threshold there is no error-rate gate.
    let mut off = baking.clone();
    off.spec.gates.max_error_rate_percent = None;
    assert_eq!(
        decide(&off, &ready, serving("new", 0, 50), NOW).transition,
        None
    );
}

#[test]
fn the_escalation_rate_gate_counts_answered_requests_on_the_new_artifact() {
    let mut baking = rollout(RolloutState::Baking, 0, 2);
    baking.bake_started_at = Some(NOW);
    baking.spec.gates.max_escalation_rate_percent = Some(20);
    baking.spec.gates.min_requests_for_error_rate = 20;
    let ready = [node("a", 0, RolloutNodeState::Ready)];
    let serving = |digest: &str, completed: u64, failed: u64, escalated: u64| {
        let requests = Some(ServedRequests {
            digest: digest.to_owned(),
            completed,
            failed,
            escalated,
        });
        move |_: &NodeName| NodeObservation {
            requests: requests.clone(),
            ..ready_new()
        }
    };
    // 9 of 30 answered upstream (30% > 20%): tripped, naming the node and
    // the numbers; failures are not in the count.
    let Some(Transition::Trip(GateTrip(why))) =
        decide(&baking, &ready, serving("new", 21, 5, 9), NOW).transition
    else {
        panic!("expected a trip");
    };
    assert!(
        why.contains("node a escalated 9 of 30 requests (30%)"),
        "{why}"
    );
    // Exactly at the threshold, too few answered (failures do not make up
    // the number), or the old artifact's escalations: no trip.
    for quiet in [
        serving("new", 24, 0, 6),
        serving("new", 5, 40, 10),
        serving("old", 0, 0, 50),
    ] {
        assert_eq!(decide(&baking, &ready, quiet, NOW).transition, None);
    }
    // The error-rate gate alone does not read escalations, and without a
    // threshold there is no escalation-rate gate.
    let mut off = baking.clone();
    off.spec.gates.max_escalation_rate_percent = None;
    off.spec.gates.max_error_rate_percent = Some(10);
    assert_eq!(
        decide(&off, &ready, serving("new", 0, 0, 50), NOW).transition,
        None
    );
}

#[test]
fn a_pin_takes_a_node_out_of_the_wave() {
    let r = rollout(RolloutState::Progressing, 0, 1);
    let nodes = [
        node("a", 0, RolloutNodeState::Updating),
        node("b", 0, RolloutNodeState::Ready),
    ];
    let pinned_a = |n: &NodeName| {
        if n.as_str() == "a" {
            NodeObservation {
                pinned: true,
                ..idle()
            }
        } else {
            ready_new()
        }
    };
    let d = decide(&r, &nodes, pinned_a, NOW);
    assert_eq!(d.node_updates.len(), 1);
    assert_eq!(d.node_updates[0].1, RolloutNodeState::Pinned);
    assert_eq!(d.transition, Some(Transition::BeginBake));
}

#[test]
fn gates_stored_before_the_escalation_rate_gate_read_as_without_it() {
    // The store keeps the thresholds as JSON; rollouts created before the
    // escalation-rate gate existed must still load.
    let stored = r#"{"max_failed_activations":0,"halt_on_not_ready":true,
        "halt_on_throttling":true,"max_error_rate_percent":10,
        "min_requests_for_error_rate":50}"#;
    let gates: GateThresholds = serde_json::from_str(stored).expect("older gates parse");
    assert_eq!(gates.max_escalation_rate_percent, None);
    assert_eq!(gates.max_error_rate_percent, Some(10));
}
