//! Models: creation, reads, pagination, uniqueness under concurrency.

use super::*;

pub(crate) async fn models_are_created_read_and_listed_in_pages(database: &TestDatabase) {
    let store = database.store();
    // Created out of order; listed by name.
    for name in [
        "gemma",
        "alpha",
        "mistral",
        "llama3.1-8b",
        "bert",
        "zephyr",
        "llama3",
    ] {
        let model = store
            .create_model(&model_name(name), &format!("the {name} model"))
            .await
            .expect("create model");
        assert_eq!(model.name.as_str(), name);
        assert_eq!(model.description, format!("the {name} model"));
    }
    let read = store
        .get_model(&model_name("gemma"))
        .await
        .expect("get model")
        .expect("gemma exists");
    assert_eq!(read.description, "the gemma model");
    assert!(
        store
            .get_model(&model_name("absent"))
            .await
            .expect("get model")
            .is_none()
    );

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_models(&PageRequest::new(Some(3), after.clone()))
            .await
            .expect("list models");
        pages.push(
            page.items
                .iter()
                .map(|model| model.name.to_string())
                .collect::<Vec<_>>(),
        );
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(
        pages,
        vec![
            vec!["alpha", "bert", "gemma"],
            vec!["llama3", "llama3.1-8b", "mistral"],
            vec!["zephyr"],
        ]
    );
}

pub(crate) async fn duplicate_model_is_already_exists(database: &TestDatabase) {
    let store = database.store();
    let first = store
        .create_model(&model_name("smollm2"), "first")
        .await
        .expect("create model");
    assert_error(
        store.create_model(&model_name("smollm2"), "second").await,
        is_already_exists,
        &["model smollm2"],
    );
    let kept = store
        .get_model(&model_name("smollm2"))
        .await
        .expect("get model");
    assert_eq!(kept, Some(first));
}

pub(crate) async fn concurrent_create_model_has_one_winner(database: &TestDatabase) {
    let store = database.store();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = database.store();
            tokio::spawn(async move {
                store
                    .create_model(&model_name("contended"), &format!("task {task}"))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task panicked") {
            Ok(_) => created += 1,
            Err(StoreError::AlreadyExists(message)) => assert!(message.contains("contended")),
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(created, 1);
    let page = store
        .list_models(&PageRequest::first(10))
        .await
        .expect("list models");
    assert_eq!(page.items.len(), 1);
}
