//! System prompts: immutable numbered versions, latest vs pinned, listings,
//! concurrent creators.

use super::*;

pub(crate) async fn prompts_are_versioned_and_listed(database: &TestDatabase) {
    let store = database.store();
    let support = prompt_name("support");
    for (expected, text) in [(1, "be kind"), (2, "be kind and brief"), (3, "be brief")] {
        let template = (expected == 2).then_some("{{ messages }}");
        let created = store
            .create_prompt_version(&support, text, template)
            .await
            .expect("create prompt version");
        assert_eq!(created.version, expected);
        assert_eq!(created.text, text);
        assert_eq!(created.chat_template.as_deref(), template);
    }
    let latest = store
        .get_prompt(&support, None)
        .await
        .expect("get latest")
        .expect("support exists");
    assert_eq!((latest.version, latest.text.as_str()), (3, "be brief"));
    let pinned = store
        .get_prompt(&support, Some(2))
        .await
        .expect("get pinned")
        .expect("version 2 exists");
    assert_eq!(pinned.text, "be kind and brief");
    assert_eq!(pinned.chat_template.as_deref(), Some("{{ messages }}"));
    assert_eq!(
        store.get_prompt(&support, Some(4)).await.expect("get"),
        None
    );
    assert_eq!(
        store
            .get_prompt(&prompt_name("absent"), None)
            .await
            .expect("get"),
        None
    );

    // Versions, newest first, two per page.
    let first = store
        .list_prompt_versions(&support, &PageRequest::first(2))
        .await
        .expect("list prompt versions");
    assert_eq!(
        first
            .items
            .iter()
            .map(|prompt| prompt.version)
            .collect::<Vec<_>>(),
        vec![3, 2]
    );
    let second = store
        .list_prompt_versions(&support, &PageRequest::new(Some(2), first.next_cursor))
        .await
        .expect("list prompt versions");
    assert_eq!(
        second
            .items
            .iter()
            .map(|prompt| prompt.version)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(second.next_cursor, None);
    assert_error(
        store
            .list_prompt_versions(&prompt_name("absent"), &PageRequest::first(2))
            .await,
        is_not_found,
        &["prompt absent not found"],
    );
    assert_error(
        store
            .list_prompt_versions(&support, &PageRequest::new(Some(2), Some("x".into())))
            .await,
        is_failed_precondition,
        &["invalid page cursor"],
    );

    // Prompts by name, with their latest version.
    for name in ["triage", "agent", "coder", "writer"] {
        store
            .create_prompt_version(&prompt_name(name), "v1", None)
            .await
            .expect("create prompt");
    }
    store
        .create_prompt_version(&prompt_name("coder"), "v2", None)
        .await
        .expect("create prompt");
    let mut listed = Vec::new();
    let mut pages = 0;
    let mut after = None;
    loop {
        let page = store
            .list_prompts(&PageRequest::new(Some(2), after.clone()))
            .await
            .expect("list prompts");
        pages += 1;
        listed.extend(
            page.items
                .iter()
                .map(|prompt| (prompt.name.to_string(), prompt.latest_version)),
        );
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(
        listed,
        vec![
            ("agent".to_owned(), 1),
            ("coder".to_owned(), 2),
            ("support".to_owned(), 3),
            ("triage".to_owned(), 1),
            ("writer".to_owned(), 1),
        ]
    );
}

pub(crate) async fn concurrent_prompt_versions_get_distinct_numbers(database: &TestDatabase) {
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = database.store();
            tokio::spawn(async move {
                store
                    .create_prompt_version(&prompt_name("busy"), &format!("text {task}"), None)
                    .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        let prompt = task
            .await
            .expect("task panicked")
            .expect("every concurrent creation succeeds");
        versions.push(prompt.version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u32>>());
    let latest = database
        .store()
        .get_prompt(&prompt_name("busy"), None)
        .await
        .expect("get latest")
        .expect("busy exists");
    assert_eq!(latest.version, 8);
}
