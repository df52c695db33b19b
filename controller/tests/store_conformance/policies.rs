//! Escalation policies: immutable numbered versions, latest vs pinned,
//! listings, concurrent creators, and the document kept as it was given
//! (the credential a reference, never a key).

use flotilla_contract::{PolicyDocument, PolicySpec, SecretRef};
use flotilla_controller::domain::PolicyName;

use super::*;

fn policy_name(name: &str) -> PolicyName {
    name.parse().expect("valid policy name")
}

fn spec(json: &str) -> PolicySpec {
    PolicySpec::try_from(serde_json::from_str::<PolicyDocument>(json).expect("a document"))
        .expect("a valid policy")
}

fn allowed(model: &str) -> PolicySpec {
    spec(&format!(
        r#"{{"egress": "allowed",
            "upstream": {{"base_url": "https://llm.example.com/v1", "model": "{model}",
                          "credential": "file:/etc/flotilla/upstream.key"}},
            "triggers": {{"model_names": ["auto", "frontier"], "header": true,
                          "features": ["tools"], "self_check_threshold_percent": 35}},
            "scrub": ["email", "iban"]}}"#
    ))
}

pub(crate) async fn policies_are_versioned_and_listed(database: &TestDatabase) {
    let store = database.store();
    let hybrid = policy_name("hybrid");
    let forbidden = spec(r#"{"egress": "forbidden"}"#);
    for (expected, spec) in [
        (1, allowed("big")),
        (2, forbidden.clone()),
        (3, allowed("bigger")),
    ] {
        let created = store
            .create_policy_version(&hybrid, &spec)
            .await
            .expect("create policy version");
        assert_eq!(created.version, expected);
        assert_eq!(
            created.spec, spec,
            "the policy reads back as it was written"
        );
    }
    let latest = store
        .get_policy(&hybrid, None)
        .await
        .expect("get latest")
        .expect("hybrid exists");
    assert_eq!(latest.version, 3);
    let upstream = latest.spec.upstream().expect("egress allowed");
    assert_eq!(upstream.model, "bigger");
    assert_eq!(
        upstream.credential,
        SecretRef::File("/etc/flotilla/upstream.key".to_owned())
    );
    let pinned = store
        .get_policy(&hybrid, Some(2))
        .await
        .expect("get pinned")
        .expect("version 2 exists");
    assert_eq!(pinned.spec, forbidden);
    assert_eq!(store.get_policy(&hybrid, Some(4)).await.expect("get"), None);
    assert_eq!(
        store
            .get_policy(&policy_name("absent"), None)
            .await
            .expect("get"),
        None
    );

    // Versions, newest first, two per page.
    let first = store
        .list_policy_versions(&hybrid, &PageRequest::first(2))
        .await
        .expect("list policy versions");
    assert_eq!(
        first.items.iter().map(|p| p.version).collect::<Vec<_>>(),
        vec![3, 2]
    );
    let second = store
        .list_policy_versions(&hybrid, &PageRequest::new(Some(2), first.next_cursor))
        .await
        .expect("list policy versions");
    assert_eq!(
        second.items.iter().map(|p| p.version).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(second.next_cursor, None);
    assert_error(
        store
            .list_policy_versions(&policy_name("absent"), &PageRequest::first(2))
            .await,
        is_not_found,
        &["escalation policy absent not found"],
    );

    // Policies by name, with their latest version.
    for name in ["edge", "air-gapped"] {
        store
            .create_policy_version(&policy_name(name), &forbidden)
            .await
            .expect("create policy");
    }
    let mut listed = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = store
            .list_policies(&PageRequest::new(Some(2), after.clone()))
            .await
            .expect("list policies");
        listed.extend(
            page.items
                .iter()
                .map(|policy| (policy.name.to_string(), policy.latest_version)),
        );
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(
        listed,
        vec![
            ("air-gapped".to_owned(), 1),
            ("edge".to_owned(), 1),
            ("hybrid".to_owned(), 3),
        ]
    );
}

pub(crate) async fn concurrent_policy_versions_get_distinct_numbers(database: &TestDatabase) {
    let tasks: Vec<_> = (0..6)
        .map(|task| {
            let store = database.store();
            tokio::spawn(async move {
                store
                    .create_policy_version(&policy_name("busy"), &allowed(&format!("m{task}")))
                    .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        let policy = task
            .await
            .expect("task panicked")
            .expect("every concurrent creation succeeds");
        versions.push(policy.version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=6).collect::<Vec<u32>>());
}
