//! The fleet: bootstrap tokens are checked and used up inside the enrolling
//! transaction, nodes are inserted or explicitly replaced, listed in pages
//! and approved; concurrent enrolments never overuse a token.

use std::time::Duration;

use flotilla_controller::domain::{
    BootstrapSecret, Labels, NewNode, NodeInventory, NodeName, NodeStatus, TokenRejection,
};
use flotilla_controller::store::{EnrollOutcome, Enrolment, NewBootstrapToken};

use super::*;

fn node_name(name: &str) -> NodeName {
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

async fn create_token(store: &dyn Store, ttl: Duration, uses: u32) -> BootstrapSecret {
    let secret = BootstrapSecret::generate();
    let token = store
        .create_bootstrap_token(&NewBootstrapToken {
            id: secret.id().to_owned(),
            secret_hash: secret.secret_hash(),
            ttl,
            uses,
            created_by: "tester".to_owned(),
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
    }
}

const HOUR: Duration = Duration::from_secs(3600);

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
    assert_eq!(
        store.get_node(&node_name("edge-1")).await.expect("get"),
        Some(node)
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
    // With replace: the row is replaced in place.
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

    let approved = store
        .set_node_status(&node_name("b-node"), NodeStatus::Active)
        .await
        .expect("approve");
    assert_eq!(approved.status, NodeStatus::Active);
    let error = store
        .set_node_status(&node_name("absent"), NodeStatus::Active)
        .await
        .expect_err("absent");
    assert!(matches!(error, StoreError::NotFound(_)), "{error:?}");
}
