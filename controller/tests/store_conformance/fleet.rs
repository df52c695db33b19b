//! The fleet: bootstrap tokens are checked and used up inside the enrolling
//! transaction, nodes are inserted or explicitly replaced, listed in pages
//! and approved; concurrent enrolments never overuse a token.

use std::time::Duration;

use flotilla_controller::domain::{
    AssignmentPhase, AssignmentTarget, BootstrapSecret, DesiredAssignment, DirectoryEntry,
    HealthPoint, InferenceMinute, Labels, NewAssignment, NewNode, NodeChange, NodeInventory,
    NodeName, NodeStatus, ObservedState, PromptPolicy, SecretHash, TokenRejection,
};
use flotilla_controller::store::{
    EnrollOutcome, Enrolment, NewBootstrapToken, NodeReport, StoreBackend,
};
use time::OffsetDateTime;

use super::*;

pub(crate) fn node_name(name: &str) -> NodeName {
    name.parse().expect("valid node name")
}

fn new_node(name: &str, labels: &str) -> NewNode {
    NewNode {
        name: node_name(name),
        labels: labels.parse::<Labels>().expect("valid labels"),
        inventory: NodeInventory {
            cpu_model: "test cpu".to_owned(),
            cpu_cores: 8,
            memory_total_bytes: 16 << 30,
            ..NodeInventory::default()
        },
        agent_version: "0.1.0".to_owned(),
    }
}

pub(crate) async fn create_token(store: &dyn Store, ttl: Duration, uses: u32) -> BootstrapSecret {
    let secret = BootstrapSecret::generate();
    let token = store
        .create_bootstrap_token(&NewBootstrapToken {
            id: secret.id().to_owned(),
            secret_hash: secret.secret_hash(),
            ttl,
            uses,
            created_by: "tester".to_owned(),
            node_pattern: None,
            may_replace: false,
        })
        .await
        .expect("create bootstrap token");
    assert_eq!((token.id.as_str(), token.uses_left), (secret.id(), uses));
    assert_eq!(token.created_by, "tester");
    secret
}

fn enrolment(secret: &BootstrapSecret, node: NewNode, replace: bool) -> Enrolment {
    Enrolment {
        token_id: secret.id().to_owned(),
        secret_hash: secret.secret_hash(),
        node,
        replace_existing: replace,
        initial_status: NodeStatus::Active,
        refresh_secret_hash: SecretHash(*blake3::hash(b"refresh").as_bytes()),
    }
}

pub(crate) const HOUR: Duration = Duration::from_secs(3600);

pub(crate) async fn enrolment_checks_and_uses_up_the_token(database: &TestDatabase) {
    let store = database.store();
    let token = create_token(&*store, HOUR, 2).await;
    let outcome = store
        .enroll_node(&enrolment(&token, new_node("edge-1", "site=berlin"), false))
        .await
        .expect("enrol");
    let EnrollOutcome::Enrolled(node) = outcome else {
        panic!("expected an enrolment, got {outcome:?}");
    };
    assert_eq!(node.name, node_name("edge-1"));
    assert_eq!(node.status, NodeStatus::Active);
    assert_eq!(node.labels.iter().collect::<Vec<_>>(), [("site", "berlin")]);
    assert_eq!(node.inventory.cpu_cores, 8);
    let first_generation = node.credential_generation;
    assert_eq!(
        store.get_node(&node_name("edge-1")).await.expect("get"),
        Some(*node)
    );

    // The same name again without replace: refused, and the use is kept.
    let error = store
        .enroll_node(&enrolment(&token, new_node("edge-1", ""), false))
        .await
        .expect_err("name taken");
    assert!(
        matches!(&error, StoreError::AlreadyExists(message) if message.contains("edge-1")),
        "{error:?}"
    );
    // With replace but without an operator's approval: refused, use kept.
    assert_eq!(
        store
            .enroll_node(&enrolment(&token, new_node("edge-1", "site=paris"), true))
            .await
            .expect("answer"),
        EnrollOutcome::Rejected(TokenRejection::ReplacementNotApproved)
    );
    // Approved: the row is replaced in place, with a new credential
    // generation, and the approval is used up.
    store
        .approve_replacement(&node_name("edge-1"))
        .await
        .expect("approve");
    let EnrollOutcome::Enrolled(replaced) = store
        .enroll_node(&enrolment(&token, new_node("edge-1", "site=paris"), true))
        .await
        .expect("re-enrol")
    else {
        panic!("expected a re-enrolment");
    };
    assert_eq!(
        replaced.labels.iter().collect::<Vec<_>>(),
        [("site", "paris")]
    );
    assert!(replaced.credential_generation > first_generation);
    assert_eq!(
        store
            .credential_generation(&node_name("edge-1"))
            .await
            .expect("generation"),
        Some(replaced.credential_generation)
    );
    // Two uses are gone now; the third is refused and writes nothing.
    assert_eq!(
        store
            .enroll_node(&enrolment(&token, new_node("edge-2", ""), false))
            .await
            .expect("answer"),
        EnrollOutcome::Rejected(TokenRejection::UsedUp)
    );
    assert_eq!(
        store.get_node(&node_name("edge-2")).await.expect("get"),
        None
    );
}

pub(crate) async fn forged_unknown_and_expired_tokens_are_rejected(database: &TestDatabase) {
    let store = database.store();
    let token = create_token(&*store, HOUR, 5).await;
    // Same id, other secret: a forgery.
    let forged = Enrolment {
        secret_hash: BootstrapSecret::generate().secret_hash(),
        ..enrolment(&token, new_node("forged", ""), false)
    };
    assert_eq!(
        store.enroll_node(&forged).await.expect("answer"),
        EnrollOutcome::Rejected(TokenRejection::Unknown)
    );
    let unknown = BootstrapSecret::generate();
    assert_eq!(
        store
            .enroll_node(&enrolment(&unknown, new_node("unknown", ""), false))
            .await
            .expect("answer"),
        EnrollOutcome::Rejected(TokenRejection::Unknown)
    );
    // A zero lifetime has expired by the time anyone uses it.
    let expired = create_token(&*store, Duration::ZERO, 5).await;
    assert_eq!(
        store
            .enroll_node(&enrolment(&expired, new_node("late", ""), false))
            .await
            .expect("answer"),
        EnrollOutcome::Rejected(TokenRejection::Expired)
    );
    let page = store
        .list_nodes(&PageRequest::default())
        .await
        .expect("list");
    assert!(page.items.is_empty(), "{page:?}");
}

pub(crate) async fn concurrent_enrolments_never_overuse_a_token(database: &TestDatabase) {
    let store = database.store();
    let token = create_token(&*store, HOUR, 1).await;
    let tasks: Vec<_> = (0..8)
        .map(|index| {
            let store = database.store();
            let enrolment = enrolment(&token, new_node(&format!("racer-{index}"), ""), false);
            tokio::spawn(async move { store.enroll_node(&enrolment).await })
        })
        .collect();
    let mut enrolled = 0;
    for task in tasks {
        match task.await.expect("task").expect("no store error") {
            EnrollOutcome::Enrolled(_) => enrolled += 1,
            EnrollOutcome::Rejected(rejection) => {
                assert_eq!(rejection, TokenRejection::UsedUp);
            }
        }
    }
    assert_eq!(enrolled, 1);
    let page = store
        .list_nodes(&PageRequest::default())
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1);
}

pub(crate) async fn nodes_are_listed_in_pages_and_approved(database: &TestDatabase) {
    let store = database.store();
    let token = create_token(&*store, HOUR, 5).await;
    for name in ["c-node", "a-node", "b-node"] {
        let pending = Enrolment {
            initial_status: NodeStatus::Pending,
            ..enrolment(&token, new_node(name, "gpu=l4"), false)
        };
        assert!(matches!(
            store.enroll_node(&pending).await.expect("enrol"),
            EnrollOutcome::Enrolled(_)
        ));
    }
    let first = store
        .list_nodes(&PageRequest::first(2))
        .await
        .expect("list");
    let names: Vec<_> = first.items.iter().map(|n| n.name.to_string()).collect();
    assert_eq!(names, ["a-node", "b-node"]);
    assert!(first.items.iter().all(|n| n.status == NodeStatus::Pending));
    let second = store
        .list_nodes(&PageRequest::new(Some(2), first.next_cursor.clone()))
        .await
        .expect("list");
    let names: Vec<_> = second.items.iter().map(|n| n.name.to_string()).collect();
    assert_eq!(
        (names, second.next_cursor),
        (vec!["c-node".to_owned()], None)
    );

    let (approved, _) = store
        .change_node(
            &node_name("b-node"),
            &NodeChange::Status(NodeStatus::Active),
        )
        .await
        .expect("approve");
    assert_eq!(approved.status, NodeStatus::Active);
    let error = store
        .change_node(
            &node_name("absent"),
            &NodeChange::Status(NodeStatus::Active),
        )
        .await
        .expect_err("absent");
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}

pub(crate) fn desired(model: &str) -> DesiredAssignment {
    DesiredAssignment {
        model: model.to_owned(),
        version: "1.0.0".to_owned(),
        quantization: "Q4_1".to_owned(),
        digest: "ab".repeat(32),
        size_bytes: 42,
        prompt: None,
        prompt_policy: PromptPolicy::Replace,
        aliases: vec!["chat".to_owned()],
        escalation_policy: None,
        assignment_generation: 0,
        target: String::new(),
    }
}

fn escalation_policy() -> flotilla_contract::AssignedPolicy {
    let document: flotilla_contract::PolicyDocument = serde_json::from_str(
        r#"{"egress": "allowed",
            "upstream": {"base_url": "https://llm.example.com/v1", "model": "big",
                         "credential": "env:UPSTREAM_KEY"},
            "triggers": {"on_overload": true}}"#,
    )
    .expect("a document");
    flotilla_contract::AssignedPolicy {
        name: "hybrid".to_owned(),
        version: 1,
        spec: document.try_into().expect("a valid policy"),
    }
}

pub(crate) fn selector(text: &str) -> AssignmentTarget {
    AssignmentTarget::Selector(text.parse().expect("valid selector"))
}

pub(crate) async fn enrol(store: &dyn Store, token: &BootstrapSecret, name: &str, labels: &str) {
    assert!(matches!(
        store
            .enroll_node(&enrolment(token, new_node(name, labels), false))
            .await
            .expect("enrol"),
        EnrollOutcome::Enrolled(_)
    ));
}

pub(crate) async fn desired_of(store: &dyn Store, name: &str) -> (u64, Option<String>) {
    let node = store
        .get_node(&node_name(name))
        .await
        .expect("get")
        .expect("exists");
    (
        node.desired.generation,
        node.desired.assignment.map(|a| a.model),
    )
}

pub(crate) async fn assignments_place_nodes_and_generations_only_grow(database: &TestDatabase) {
    let store = database.store();
    let token = create_token(&*store, HOUR, 10).await;
    enrol(&*store, &token, "berlin-1", "site=berlin").await;
    enrol(&*store, &token, "berlin-2", "site=berlin,gpu=l4").await;
    enrol(&*store, &token, "paris-1", "site=paris").await;

    // A selector reaches exactly the matching nodes, all at its generation.
    let (berlin, changed) = store
        .create_assignment(&NewAssignment {
            target: selector("site=berlin"),
            desired: DesiredAssignment {
                escalation_policy: Some(escalation_policy()),
                ..desired("small")
            },
            created_by: "op".to_owned(),
        })
        .await
        .expect("assign");
    let mut names: Vec<_> = changed.iter().map(|c| c.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["berlin-1", "berlin-2"]);
    assert!(
        changed
            .iter()
            .all(|c| c.desired.generation == berlin.generation)
    );
    assert_eq!(berlin.desired.assignment_generation, berlin.generation);
    assert_eq!(desired_of(&*store, "paris-1").await, (0, None));
    // The escalation policy rides in the node's stored desired state.
    let berlin_1 = store
        .get_node(&node_name("berlin-1"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        berlin_1
            .desired
            .assignment
            .and_then(|assignment| assignment.escalation_policy),
        Some(escalation_policy())
    );

    // A node's own assignment wins over the selector.
    let (own, changed) = store
        .create_assignment(&NewAssignment {
            target: AssignmentTarget::Node(node_name("berlin-2")),
            desired: desired("big"),
            created_by: "op".to_owned(),
        })
        .await
        .expect("assign node");
    assert!(own.generation > berlin.generation);
    assert_eq!(changed.len(), 1);
    assert_eq!(
        desired_of(&*store, "berlin-2").await,
        (own.generation, Some("big".to_owned()))
    );

    // Re-assigning the same selector replaces it; the pinned node stays.
    let (again, changed) = store
        .create_assignment(&NewAssignment {
            target: selector("site=berlin"),
            desired: desired("small-v2"),
            created_by: "op".to_owned(),
        })
        .await
        .expect("reassign");
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].name.as_str(), "berlin-1");
    let listed = store
        .list_assignments(&PageRequest::first(10))
        .await
        .expect("list");
    let generations: Vec<u64> = listed.items.iter().map(|a| a.generation).collect();
    assert_eq!(generations, [own.generation, again.generation]);

    // Removing the pin falls back to the selector, at a newer generation.
    let changed = store
        .remove_assignment(&AssignmentTarget::Node(node_name("berlin-2")))
        .await
        .expect("unassign");
    assert_eq!(changed.len(), 1);
    let (generation, model) = desired_of(&*store, "berlin-2").await;
    assert!(generation > again.generation);
    assert_eq!(model.as_deref(), Some("small-v2"));
    let missing = store
        .remove_assignment(&AssignmentTarget::Node(node_name("berlin-2")))
        .await
        .expect_err("nothing left to remove");
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing:?}");
    let unknown = store
        .create_assignment(&NewAssignment {
            target: AssignmentTarget::Node(node_name("absent")),
            desired: desired("x"),
            created_by: "op".to_owned(),
        })
        .await
        .expect_err("unknown node");
    assert!(matches!(unknown, StoreError::NotFound(_)), "{unknown:?}");

    // Relabelling moves a node under the selector; cordoning freezes it;
    // draining empties it; uncordoning brings it back.
    let (paris, pushed) = store
        .change_node(
            &node_name("paris-1"),
            &NodeChange::Labels {
                set: [("site".to_owned(), "berlin".to_owned())].into(),
                remove: Vec::new(),
            },
        )
        .await
        .expect("relabel");
    assert_eq!(
        paris.desired.assignment.map(|a| a.model).as_deref(),
        Some("small-v2")
    );
    assert!(pushed.is_some());
    let uncordoned = desired_of(&*store, "berlin-1").await;
    let (cordoned, pushed) = store
        .change_node(
            &node_name("berlin-1"),
            &NodeChange::Status(NodeStatus::Cordoned),
        )
        .await
        .expect("cordon");
    assert_eq!(cordoned.status, NodeStatus::Cordoned);
    // A status change alone keeps the assignment under a new generation,
    // which is how other replicas find it.
    let before = desired_of(&*store, "berlin-1").await;
    assert_eq!(before.1, uncordoned.1);
    assert!(before.0 > uncordoned.0);
    let pushed = pushed.expect("a status change is pushed");
    assert_eq!(
        (pushed.status, pushed.desired.generation),
        (NodeStatus::Cordoned, before.0)
    );
    let changed = store
        .desired_changed_since(uncordoned.0)
        .await
        .expect("changes since");
    assert!(
        changed
            .iter()
            .any(|c| c.name.as_str() == "berlin-1" && c.status == NodeStatus::Cordoned),
        "{changed:?}"
    );
    assert!(changed.iter().all(|c| c.desired.generation > uncordoned.0));
    assert!(
        store
            .desired_changed_since(before.0)
            .await
            .expect("nothing newer")
            .is_empty()
    );
    store
        .create_assignment(&NewAssignment {
            target: selector("site=berlin"),
            desired: desired("small-v3"),
            created_by: "op".to_owned(),
        })
        .await
        .expect("reassign while cordoned");
    assert_eq!(
        desired_of(&*store, "berlin-1").await,
        before,
        "cordoned nodes keep theirs"
    );
    let (drained, pushed) = store
        .change_node(&node_name("berlin-1"), &NodeChange::Drain)
        .await
        .expect("drain");
    assert!(drained.desired.assignment.is_none());
    assert!(drained.desired.generation > before.0);
    assert_eq!(
        pushed.map(|p| p.desired.generation),
        Some(drained.desired.generation)
    );
    let (back, _) = store
        .change_node(
            &node_name("berlin-1"),
            &NodeChange::Status(NodeStatus::Active),
        )
        .await
        .expect("uncordon");
    assert_eq!(
        back.desired.assignment.map(|a| a.model).as_deref(),
        Some("small-v3")
    );
    assert!(back.desired.generation > drained.desired.generation);

    // Bad labels are refused and change nothing.
    let error = store
        .change_node(
            &node_name("berlin-1"),
            &NodeChange::Labels {
                set: [("bad key".to_owned(), "x".to_owned())].into(),
                remove: Vec::new(),
            },
        )
        .await
        .expect_err("bad label");
    assert!(
        matches!(error, StoreError::FailedPrecondition(_)),
        "{error:?}"
    );
}

pub(crate) async fn reports_and_health_history_are_written_in_batches(database: &TestDatabase) {
    let store = database.store();
    let token = create_token(&*store, HOUR, 2).await;
    enrol(&*store, &token, "edge-1", "").await;
    let name = node_name("edge-1");
    let observed = ObservedState {
        generation: 3,
        digest: Some("ab".repeat(32)),
        phase: AssignmentPhase::Downloading,
        bytes_done: 10,
        bytes_total: 42,
        reason: None,
        serving_digest: None,
    };
    store
        .write_reports(&[NodeReport {
            name: name.clone(),
            observed: Some(observed.clone()),
            health: None,
            last_heartbeat_unix_ms: Some(1_700_000_000_123),
        }])
        .await
        .expect("write");
    // A later report without observed state keeps the stored one.
    store
        .write_reports(&[NodeReport {
            name: name.clone(),
            observed: None,
            health: None,
            last_heartbeat_unix_ms: Some(1_700_000_001_000),
        }])
        .await
        .expect("write");
    let node = store.get_node(&name).await.expect("get").expect("exists");
    assert_eq!(node.observed, Some(observed));
    assert_eq!(
        node.last_heartbeat_at.map(|at| at.unix_timestamp()),
        Some(1_700_000_001)
    );

    let minute = |at: i64, cpu: f32| HealthPoint {
        at: OffsetDateTime::from_unix_timestamp(at).expect("valid"),
        samples: 12,
        cpu_utilisation_percent: cpu,
        memory_used_bytes_max: 1 << 30,
        gpu_utilisation_percent: None,
        gpu_temperature_celsius_max: Some(71.0),
        throttled: true,
        // Minutes with inference figures and without (older agents).
        inference: (cpu > 15.0).then_some(InferenceMinute {
            tokens_per_second: 41.5,
            queue_depth_max: 3,
            time_to_first_token_max_ms: Some(250),
            completed: 12,
            failed: 1,
            rejected: 4,
            escalated: 2,
        }),
    };
    store
        .write_health_minutes(&[
            (name.clone(), minute(1_700_000_040, 10.0)),
            (name.clone(), minute(1_700_000_100, 20.0)),
        ])
        .await
        .expect("write minutes");
    // Rewriting a minute replaces it.
    store
        .write_health_minutes(&[(name.clone(), minute(1_700_000_100, 30.0))])
        .await
        .expect("rewrite minute");
    let points = store
        .health_minutes(&name, 1_700_000_000)
        .await
        .expect("read");
    assert_eq!(points.len(), 2);
    assert_eq!(points[0], minute(1_700_000_040, 10.0));
    assert_eq!(points[0].inference, None);
    assert_eq!(points[1], minute(1_700_000_100, 30.0));
    assert!(points[1].inference.is_some());
    assert_eq!(
        store
            .prune_health_minutes(1_700_000_060)
            .await
            .expect("prune"),
        1
    );
    assert_eq!(store.health_minutes(&name, 0).await.expect("read").len(), 1);
}

fn route(node: &str, model: &str, load: u32) -> DirectoryEntry {
    DirectoryEntry {
        model: model_name(model),
        version: "1.0.0".to_owned(),
        node: node_name(node),
        http_url: format!("http://{node}:11434"),
        grpc_url: format!("http://{node}:50052"),
        load,
        queue_depth: 2,
        queue_capacity: 20,
        aliases: vec![model_name("chat")],
        digest: Some(format!("{:064x}", load).parse().expect("64 hex digits")),
        size_bytes: 98_362_432,
        quantization: "Q4_1".to_owned(),
    }
}

/// Replicas exchange their routes through Postgres; SQLite has one
/// controller and nothing to exchange.
pub(crate) async fn replicas_exchange_routes_and_forget_withdrawn_ones(database: &TestDatabase) {
    let store = database.store();
    let fresh = Duration::from_secs(10);
    let a_routes = [route("edge-1", "tiny", 10)];
    let from_a = store
        .exchange_routes("replica-a", &a_routes, true, fresh)
        .await
        .expect("exchange");
    let Some(from_a) = from_a else {
        assert_eq!(store.backend(), StoreBackend::Sqlite);
        return;
    };
    assert_eq!(store.backend(), StoreBackend::Postgres);
    assert!(from_a.is_empty(), "no other replica yet: {from_a:?}");

    // B sees A's routes; A, marking its own fresh without a change, sees B's.
    let b_routes = [route("edge-2", "other", 0)];
    let seen_by_b = exchange(store.as_ref(), "replica-b", &b_routes, true, fresh).await;
    assert_eq!(seen_by_b, a_routes);
    let seen_by_a = exchange(store.as_ref(), "replica-a", &[], false, fresh).await;
    assert_eq!(
        seen_by_a, b_routes,
        "unchanged routes are kept as they were"
    );
    let seen_by_b = exchange(store.as_ref(), "replica-b", &b_routes, false, fresh).await;
    assert_eq!(
        seen_by_b, a_routes,
        "a refresh without a change keeps A's routes"
    );

    // A node that moved from A to C shows up in both slices for a moment;
    // C's changed last, so it comes first.
    let c_routes = [route("edge-1", "tiny", 90)];
    exchange(store.as_ref(), "replica-c", &c_routes, true, fresh).await;
    let seen_by_b = exchange(store.as_ref(), "replica-b", &b_routes, false, fresh).await;
    assert_eq!(seen_by_b, [c_routes[0].clone(), a_routes[0].clone()]);

    // Withdrawn routes (a replica shutting down) are gone at once; routes
    // not refreshed within the window count no more.
    exchange(store.as_ref(), "replica-a", &[], true, fresh).await;
    exchange(store.as_ref(), "replica-c", &[], true, fresh).await;
    let seen_by_b = exchange(store.as_ref(), "replica-b", &b_routes, false, fresh).await;
    assert!(seen_by_b.is_empty(), "{seen_by_b:?}");
    exchange(store.as_ref(), "replica-a", &a_routes, true, fresh).await;
    let seen_by_b = exchange(
        store.as_ref(),
        "replica-b",
        &b_routes,
        false,
        Duration::ZERO,
    )
    .await;
    assert!(seen_by_b.is_empty(), "stale routes count: {seen_by_b:?}");
}

/// A row as a replica of the previous version wrote it (its own row
/// struct, every field present, the digest as hex or empty), beside one
/// that no replica could have written.
const ROUTES_OF_THE_PREVIOUS_VERSION: &str = r#"[
    {"model": "tiny", "version": "1.0.0", "node": "edge-9",
     "http_url": "http://edge-9:11434", "grpc_url": "http://edge-9:50052",
     "load": 10, "queue_depth": 2, "queue_capacity": 20, "aliases": ["chat"],
     "digest": "000000000000000000000000000000000000000000000000000000000000000a",
     "size_bytes": 98362432, "quantization": "Q4_1"},
    {"model": "tiny", "node": "edge-8", "digest": "",
     "http_url": "http://edge-8:11434"},
    {"model": "tiny", "node": "Not A Node", "http_url": "http://x:1"}
]"#;

/// The routes a replica of the previous version stored still read, so a
/// rolling upgrade keeps the directory whole; a bad row costs only itself.
pub(crate) async fn routes_stored_by_the_previous_version_still_read(database: &TestDatabase) {
    if database.store().backend() != StoreBackend::Postgres {
        return;
    }
    let pool = sqlx::PgPool::connect(&database.url)
        .await
        .expect("connect to the test database");
    sqlx::query(
        "INSERT INTO replica_routes (replica, routes, changed_at, seen_at) \
         VALUES ('replica-old', $1::jsonb, now(), now())",
    )
    .bind(ROUTES_OF_THE_PREVIOUS_VERSION)
    .execute(&pool)
    .await
    .expect("store a row the old way");
    pool.close().await;

    let fresh = Duration::from_secs(10);
    let seen = exchange(database.store().as_ref(), "replica-new", &[], true, fresh).await;
    let edge_9 = route("edge-9", "tiny", 10);
    let edge_8 = DirectoryEntry {
        model: model_name("tiny"),
        version: String::new(),
        node: node_name("edge-8"),
        http_url: "http://edge-8:11434".to_owned(),
        grpc_url: String::new(),
        load: 0,
        queue_depth: 0,
        queue_capacity: 0,
        aliases: Vec::new(),
        digest: None,
        size_bytes: 0,
        quantization: String::new(),
    };
    assert_eq!(seen, [edge_9, edge_8]);
}

/// One replica's exchange, on Postgres: the routes the others published.
async fn exchange(
    store: &dyn Store,
    replica: &str,
    routes: &[DirectoryEntry],
    changed: bool,
    fresh: Duration,
) -> Vec<DirectoryEntry> {
    store
        .exchange_routes(replica, routes, changed, fresh)
        .await
        .expect("exchange")
        .expect("postgres")
}
