//! Rollouts: created with their planned nodes under a new generation, one
//! active rollout per node, optimistic updates that write node-level
//! assignments through placement, pins that win, restores on rollback, and
//! the event log.

use std::time::Duration;

use flotilla_controller::domain::{
    AssignmentTarget, GateThresholds, NewAssignment, NewEvent, PromptPolicy, QuantizationPolicy,
    RolloutName, RolloutNode, RolloutNodeState, RolloutSpec, RolloutState, Waves,
};
use flotilla_controller::store::{NewRollout, RolloutUpdate};

use super::fleet::{HOUR, create_token, desired, desired_of, enrol, node_name, selector};
use super::*;

fn rollout_name(name: &str) -> RolloutName {
    name.parse().expect("valid rollout name")
}

fn spec() -> RolloutSpec {
    RolloutSpec {
        selector: "site=berlin".parse().expect("valid"),
        model: model_name("big"),
        requirement: "^1".parse().expect("valid"),
        quantization: QuantizationPolicy::Auto,
        prompt: None,
        prompt_policy: PromptPolicy::Forbid,
        aliases: vec!["chat".to_owned()],
        // Stored as the operator wrote it; resolved when the rollout is planned.
        escalation_policy: Some("hybrid@2".parse().expect("valid")),
        waves: "1,100%".parse::<Waves>().expect("valid"),
        max_unavailable: 2,
        bake: Duration::from_millis(200),
        auto_rollback: true,
        // Every threshold survives the store, the rate gates included.
        gates: GateThresholds {
            max_error_rate_percent: Some(10),
            min_requests_for_error_rate: 50,
            max_escalation_rate_percent: Some(25),
            ..GateThresholds::default()
        },
    }
}

fn planned(name: &str, wave: u32, model: Option<&str>) -> RolloutNode {
    RolloutNode {
        node: node_name(name),
        wave,
        state: if model.is_some() {
            RolloutNodeState::Waiting
        } else {
            RolloutNodeState::Unschedulable
        },
        desired: model.map(desired),
        previous: None,
        reason: model.is_none().then(|| "too little memory".to_owned()),
    }
}

fn new_rollout(name: &str, nodes: Vec<RolloutNode>) -> NewRollout {
    NewRollout {
        name: rollout_name(name),
        spec: spec(),
        wave_count: 2,
        nodes,
        created_by: "op".to_owned(),
        events: vec![NewEvent::rollout(
            "op",
            &rollout_name(name),
            "rollout.created",
            "created".to_owned(),
        )],
    }
}

pub(crate) async fn rollouts_write_assignments_conflict_and_roll_back(database: &TestDatabase) {
    let store = database.store();
    let token = create_token(&*store, HOUR, 10).await;
    for name in ["b-1", "b-2", "b-3", "b-4"] {
        enrol(&*store, &token, name, "site=berlin").await;
    }
    // Before: a selector gives every node "small"; b-3 is pinned by an
    // operator.
    store
        .create_assignment(&NewAssignment {
            target: selector("site=berlin"),
            desired: desired("small"),
            created_by: "op".to_owned(),
        })
        .await
        .expect("assign");
    store
        .create_assignment(&NewAssignment {
            target: AssignmentTarget::Node(node_name("b-3")),
            desired: desired("pinned"),
            created_by: "op".to_owned(),
        })
        .await
        .expect("pin");
    let (before, _) = desired_of(&*store, "b-1").await;

    let (rollout, nodes) = store
        .create_rollout(&new_rollout(
            "r1",
            vec![
                planned("b-1", 0, Some("big")),
                planned("b-2", 1, Some("big")),
                planned("b-3", 1, Some("big")),
                planned("b-4", 1, None),
            ],
        ))
        .await
        .expect("create rollout");
    assert_eq!(rollout.state, RolloutState::Pending);
    assert!(rollout.generation > before);
    assert_eq!(rollout.spec, spec());
    let states: Vec<_> = nodes
        .iter()
        .map(|n| (n.node.to_string(), n.state))
        .collect();
    assert_eq!(
        states,
        [
            ("b-1".to_owned(), RolloutNodeState::Waiting),
            ("b-2".to_owned(), RolloutNodeState::Waiting),
            ("b-3".to_owned(), RolloutNodeState::Pinned),
            ("b-4".to_owned(), RolloutNodeState::Unschedulable),
        ]
    );

    // One active rollout per node; a taken name is refused too.
    assert_error(
        store
            .create_rollout(&new_rollout("r2", vec![planned("b-2", 0, Some("big"))]))
            .await,
        is_already_exists,
        &["b-2", "active rollout r1"],
    );
    assert_error(
        store
            .create_rollout(&new_rollout("r1", vec![planned("x", 0, Some("big"))]))
            .await,
        is_already_exists,
        &["rollout r1 already exists"],
    );

    // Start b-1: it gets a node-level assignment of the rollout's model.
    let mut update = RolloutUpdate::new(rollout_name("r1"), Some(rollout.generation));
    update.state = Some(RolloutState::Progressing);
    update.start = vec![node_name("b-1")];
    let (progressing, changed) = store.update_rollout(&update).await.expect("start b-1");
    assert_eq!(progressing.state, RolloutState::Progressing);
    assert!(progressing.generation > rollout.generation);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].name.as_str(), "b-1");
    let (generation, model) = desired_of(&*store, "b-1").await;
    assert_eq!(model.as_deref(), Some("big"));
    assert!(generation > rollout.generation);

    // A stale writer is refused.
    assert_error(
        store.update_rollout(&update).await,
        is_failed_precondition,
        &["changed concurrently"],
    );

    // Ready, bake, next wave: b-2 starts; b-3 stays pinned.
    let mut update = RolloutUpdate::new(rollout_name("r1"), Some(progressing.generation));
    update.node_states = vec![(node_name("b-1"), RolloutNodeState::Ready, None)];
    update.current_wave = Some(1);
    update.start = vec![node_name("b-2"), node_name("b-3")];
    let (advanced, changed) = store.update_rollout(&update).await.expect("advance");
    assert_eq!(advanced.current_wave, 1);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(
        desired_of(&*store, "b-3").await.1.as_deref(),
        Some("pinned")
    );
    assert!(
        store
            .pinned_nodes()
            .await
            .expect("pins")
            .contains(&node_name("b-3"))
    );

    // Roll back: b-1 and b-2 return to the selector's "small"; the
    // rollout ends and releases its nodes.
    let mut update = RolloutUpdate::new(rollout_name("r1"), Some(advanced.generation));
    update.state = Some(RolloutState::RolledBack);
    update.restore = true;
    update.reason = Some(Some("gate tripped".to_owned()));
    update.events.push(NewEvent::rollout(
        "controller",
        &rollout_name("r1"),
        "rollout.rolled_back",
        "gate tripped".to_owned(),
    ));
    let (rolled_back, changed) = store.update_rollout(&update).await.expect("roll back");
    assert_eq!(rolled_back.state, RolloutState::RolledBack);
    assert_eq!(rolled_back.reason.as_deref(), Some("gate tripped"));
    assert_eq!(changed.len(), 2, "{changed:?}");
    for name in ["b-1", "b-2"] {
        let (generation, model) = desired_of(&*store, name).await;
        assert_eq!(model.as_deref(), Some("small"), "{name}");
        assert!(generation > advanced.generation);
    }
    assert_eq!(
        desired_of(&*store, "b-3").await.1.as_deref(),
        Some("pinned")
    );
    let (_, nodes) = store
        .get_rollout(&rollout_name("r1"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(nodes[0].state, RolloutNodeState::RolledBack);
    assert_eq!(nodes[1].state, RolloutNodeState::RolledBack);

    // Released: a new rollout may take the nodes.
    let (second, _) = store
        .create_rollout(&new_rollout("r2", vec![planned("b-2", 0, Some("big"))]))
        .await
        .expect("nodes were released");
    let listed = store.list_rollouts().await.expect("list");
    let names: Vec<_> = listed.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(names, ["r1", "r2"]);
    // Starting over an earlier rollout's assignment records it as the
    // previous one, to restore.
    let mut update = RolloutUpdate::new(rollout_name("r2"), Some(second.generation));
    update.start = vec![node_name("b-2")];
    store.update_rollout(&update).await.expect("start");
    let mut update = RolloutUpdate::new(rollout_name("r2"), None);
    update.state = Some(RolloutState::Aborted);
    store.update_rollout(&update).await.expect("abort");

    let events = store
        .list_events(Some(&rollout_name("r1")), 0, 100)
        .await
        .expect("events");
    let actions: Vec<_> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["rollout.created", "rollout.rolled_back"]);
    assert_eq!(events[1].actor, "controller");
    let after = store
        .list_events(None, events[0].id, 100)
        .await
        .expect("events after");
    assert_eq!(after.len(), 2);
    assert!(
        store
            .get_rollout(&rollout_name("nope"))
            .await
            .expect("get")
            .is_none()
    );
    assert_error(
        store
            .update_rollout(&RolloutUpdate::new(rollout_name("nope"), None))
            .await,
        is_not_found,
        &["rollout nope not found"],
    );
}

/// One leader at a time: on Postgres a second store on the same database
/// does not get the lock while the first holds it, and gets it once the
/// holder's session ends; SQLite, one box, always leads.
pub(crate) async fn one_engine_leader_at_a_time(database: &TestDatabase) {
    let store = database.store();
    let mut first = store
        .try_lead()
        .await
        .expect("try to lead")
        .expect("the first store leads");
    assert!(first.still_leader().await);
    let other = flotilla_controller::store::connect(&database.url)
        .await
        .expect("a second store on the same database");
    let second = other.try_lead().await.expect("try to lead");
    match other.backend() {
        flotilla_controller::store::StoreBackend::Sqlite => {
            assert!(second.is_some(), "sqlite always leads");
        }
        flotilla_controller::store::StoreBackend::Postgres => {
            assert!(second.is_none(), "two leaders at once");
            drop(first);
            // The lock goes with the session; the server notices the
            // closed connection at once or shortly after.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if other.try_lead().await.expect("try to lead").is_some() {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the lock was not released with its session"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
