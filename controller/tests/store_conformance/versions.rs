//! Versions: the lifecycle rules, uniqueness, listing in creation order.

use super::*;

pub(crate) async fn version_lifecycle_follows_the_rules(database: &TestDatabase) {
    let store = database.store();
    let store = store.as_ref();
    let model = model_name("lifecycle");
    let version = semver("1.2.3");
    store.create_model(&model, "").await.expect("create model");
    let draft = store
        .create_version(&model, &version, "first cut")
        .await
        .expect("create version");
    assert_eq!(draft.state, VersionState::Draft);
    assert_eq!(draft.notes, "first cut");
    assert_eq!(draft.published_at, None);
    assert_eq!(
        store.get_version(&model, &version).await.expect("get"),
        Some(draft.clone())
    );

    // Publishing needs at least one artifact.
    assert_error(
        store
            .set_version_state(&model, &version, VersionState::Published)
            .await,
        is_failed_precondition,
        &["lifecycle", "1.2.3"],
    );
    add(
        store,
        "lifecycle",
        "1.2.3",
        &new_artifact("a", Quantization::Q4_1),
    )
    .await;

    // A draft can only be published.
    assert_error(
        store
            .set_version_state(&model, &version, VersionState::Yanked)
            .await,
        is_failed_precondition,
        &["lifecycle", "1.2.3"],
    );
    let published = store
        .set_version_state(&model, &version, VersionState::Published)
        .await
        .expect("publish");
    assert_eq!(published.state, VersionState::Published);
    let first_published_at = published.published_at.expect("published_at is set");

    for illegal in [VersionState::Draft, VersionState::Published] {
        assert_error(
            store.set_version_state(&model, &version, illegal).await,
            is_failed_precondition,
            &["lifecycle", "1.2.3"],
        );
    }
    let deprecated = store
        .set_version_state(&model, &version, VersionState::Deprecated)
        .await
        .expect("deprecate");
    assert_eq!(deprecated.state, VersionState::Deprecated);
    let republished = store
        .set_version_state(&model, &version, VersionState::Published)
        .await
        .expect("publish again");
    // The first publication is what published_at records.
    assert_eq!(republished.published_at, Some(first_published_at));
    let yanked = store
        .set_version_state(&model, &version, VersionState::Yanked)
        .await
        .expect("yank");
    assert_eq!(yanked.state, VersionState::Yanked);
    for illegal in [
        VersionState::Draft,
        VersionState::Published,
        VersionState::Deprecated,
        VersionState::Yanked,
    ] {
        assert_error(
            store.set_version_state(&model, &version, illegal).await,
            is_failed_precondition,
            &["lifecycle", "1.2.3"],
        );
    }
    assert_eq!(
        store.get_version(&model, &version).await.expect("get"),
        Some(yanked)
    );

    // Missing models and versions are named.
    assert_error(
        store
            .set_version_state(&model, &semver("9.9.9"), VersionState::Published)
            .await,
        is_not_found,
        &["model lifecycle has no version 9.9.9"],
    );
    assert_error(
        store
            .set_version_state(&model_name("ghost"), &version, VersionState::Published)
            .await,
        is_not_found,
        &["model ghost not found"],
    );
    assert_eq!(
        store
            .get_version(&model, &semver("9.9.9"))
            .await
            .expect("get"),
        None
    );
}

pub(crate) async fn duplicate_version_is_already_exists(database: &TestDatabase) {
    let store = database.store();
    let model = model_name("dup");
    store.create_model(&model, "").await.expect("create model");
    store
        .create_version(&model, &semver("1.0.0"), "")
        .await
        .expect("create version");
    assert_error(
        store.create_version(&model, &semver("1.0.0"), "").await,
        is_already_exists,
        &["1.0.0", "dup"],
    );
    // The same version number under another model is a different version.
    store
        .create_model(&model_name("other"), "")
        .await
        .expect("create model");
    store
        .create_version(&model_name("other"), &semver("1.0.0"), "")
        .await
        .expect("create version of another model");
    assert_error(
        store
            .create_version(&model_name("ghost"), &semver("1.0.0"), "")
            .await,
        is_not_found,
        &["model ghost not found"],
    );
}

pub(crate) async fn versions_are_listed_in_creation_order_in_pages(database: &TestDatabase) {
    let store = database.store();
    let model = model_name("paged");
    store.create_model(&model, "").await.expect("create model");
    // Creation order, not semver order.
    let created = ["2.0.0", "1.0.0", "1.10.0", "1.2.0-rc.1", "0.1.0"];
    for version in created {
        store
            .create_version(&model, &semver(version), "")
            .await
            .expect("create version");
    }
    let mut listed = Vec::new();
    let mut pages = 0;
    let mut after = None;
    loop {
        let page = store
            .list_versions(&model, &PageRequest::new(Some(2), after.clone()))
            .await
            .expect("list versions");
        pages += 1;
        listed.extend(page.items.iter().map(|version| version.version.to_string()));
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, created);

    assert_error(
        store
            .list_versions(
                &model,
                &PageRequest::new(Some(2), Some("not-a-cursor".into())),
            )
            .await,
        is_failed_precondition,
        &["invalid page cursor"],
    );
    assert_error(
        store
            .list_versions(&model_name("ghost"), &PageRequest::first(2))
            .await,
        is_not_found,
        &["model ghost not found"],
    );
}
