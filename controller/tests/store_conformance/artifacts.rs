//! Artifacts: adding them to drafts, duplicates and conflicts, the
//! before-commit step, concurrent uploads, lookups by digest, resolution.

use super::*;

pub(crate) async fn add_artifact_creates_then_reports_present_or_conflicting(
    database: &TestDatabase,
) {
    let store = database.store();
    let store = store.as_ref();
    create_draft(store, "tiny", "1.2.3").await;
    let model = model_name("tiny");
    let version = semver("1.2.3");
    let artifact = new_artifact("q4 bytes", Quantization::Q4_1);
    let hook_runs = Arc::new(AtomicUsize::new(0));

    let created = match store
        .add_artifact(&model, &version, &artifact, counting(&hook_runs))
        .await
        .expect("add artifact")
    {
        ArtifactInsert::Created(created) => created,
        other => panic!("expected Created, got {other:?}"),
    };
    assert_eq!(hook_runs.load(Ordering::SeqCst), 1);
    assert_eq!(created.model, model);
    assert_eq!(created.version, version);
    assert_eq!(created.digest, artifact.digest);
    assert_eq!(created.size_bytes, artifact.size_bytes);
    assert_eq!(created.quantization, Quantization::Q4_1);
    assert_eq!(created.format, ArtifactFormat::Gguf);
    assert_eq!(created.architecture, "llama");
    assert_eq!(created.parameter_count, artifact.parameter_count);
    assert_eq!(created.context_length, Some(2048));
    assert_eq!(
        created.memory_estimate_bytes,
        artifact.memory_estimate_bytes
    );
    assert_eq!(created.servability, artifact.servability);
    // Every verdict reads back as written: unservable with the engine's
    // reason, and unchecked (uploaded before the check existed).
    create_draft(store, "tiny", "1.2.4").await;
    for (seed, quantization, servability) in [
        (
            "q8 bytes",
            Quantization::Q8_0,
            Servability::judged(Err("tensor x has type IQ4_NL".into())),
        ),
        ("f16 bytes", Quantization::F16, Servability::Unchecked),
    ] {
        let other = NewArtifact {
            servability,
            ..new_artifact(seed, quantization)
        };
        match store
            .add_artifact(&model, &semver("1.2.4"), &other, no_op())
            .await
            .expect("add artifact")
        {
            ArtifactInsert::Created(created) => {
                assert_eq!(created.servability, other.servability);
            }
            other => panic!("expected Created, got {other:?}"),
        }
    }

    // The same bytes again: reported, not written, hook not run.
    let again = store
        .add_artifact(&model, &version, &artifact, counting(&hook_runs))
        .await
        .expect("add the same artifact");
    assert_eq!(again, ArtifactInsert::AlreadyPresent(created.clone()));
    assert_eq!(hook_runs.load(Ordering::SeqCst), 1);

    // Other bytes with the same quantization conflict.
    let rival = new_artifact("other q4 bytes", Quantization::Q4_1);
    assert_error(
        store
            .add_artifact(&model, &version, &rival, counting(&hook_runs))
            .await,
        is_already_exists,
        &[
            "version 1.2.3 of model tiny already has a Q4_1 artifact",
            "blake3:",
        ],
    );
    assert_eq!(hook_runs.load(Ordering::SeqCst), 1);

    // Another quantization is another artifact; unknown names are kept.
    let q8 = new_artifact("q8 bytes", Quantization::Q8_0);
    assert!(matches!(
        add(store, "tiny", "1.2.3", &q8).await,
        ArtifactInsert::Created(_)
    ));
    let exotic = new_artifact("iq2 bytes", Quantization::Other("IQ2_XXS".into()));
    assert!(matches!(
        add(store, "tiny", "1.2.3", &exotic).await,
        ArtifactInsert::Created(_)
    ));
    let listed = store
        .list_artifacts(&model, &version)
        .await
        .expect("list artifacts");
    let quantizations: Vec<_> = listed
        .iter()
        .map(|artifact| artifact.quantization.clone())
        .collect();
    assert_eq!(
        quantizations,
        vec![
            Quantization::Q4_1,
            Quantization::Q8_0,
            Quantization::Other("IQ2_XXS".into())
        ]
    );
    assert_eq!(listed[0], created);
}

pub(crate) async fn add_artifact_needs_an_existing_draft(database: &TestDatabase) {
    let store = database.store();
    let store = store.as_ref();
    let artifact = new_artifact("bytes", Quantization::Q4_1);
    assert_error(
        store
            .add_artifact(&model_name("ghost"), &semver("1.0.0"), &artifact, no_op())
            .await,
        is_not_found,
        &["model ghost not found"],
    );
    create_draft(store, "real", "1.0.0").await;
    assert_error(
        store
            .add_artifact(&model_name("real"), &semver("2.0.0"), &artifact, no_op())
            .await,
        is_not_found,
        &["model real has no version 2.0.0"],
    );

    add(store, "real", "1.0.0", &artifact).await;
    publish(store, "real", "1.0.0").await;
    let hook_runs = Arc::new(AtomicUsize::new(0));
    assert_error(
        store
            .add_artifact(
                &model_name("real"),
                &semver("1.0.0"),
                &new_artifact("late", Quantization::Q8_0),
                counting(&hook_runs),
            )
            .await,
        is_failed_precondition,
        &["version 1.0.0 of model real is published; artifacts can be added only to drafts"],
    );
    assert_eq!(hook_runs.load(Ordering::SeqCst), 0);
    assert_error(
        store
            .list_artifacts(&model_name("real"), &semver("3.0.0"))
            .await,
        is_not_found,
        &["model real has no version 3.0.0"],
    );
}

pub(crate) async fn failed_before_commit_persists_nothing(database: &TestDatabase) {
    let store = database.store();
    let store = store.as_ref();
    create_draft(store, "fragile", "0.1.0").await;
    let model = model_name("fragile");
    let version = semver("0.1.0");
    let artifact = new_artifact("never stored", Quantization::F16);

    let error = store
        .add_artifact(&model, &version, &artifact, failing("object store is down"))
        .await
        .expect_err("before_commit failed");
    assert!(
        matches!(&error, StoreError::BeforeCommit(message) if message == "object store is down"),
        "{error:?}"
    );
    assert!(
        store
            .list_artifacts(&model, &version)
            .await
            .expect("list artifacts")
            .is_empty()
    );
    assert!(
        store
            .find_artifacts_by_digest(&artifact.digest)
            .await
            .expect("find by digest")
            .is_empty()
    );
    // Nothing half-written blocks a retry.
    assert!(matches!(
        add(store, "fragile", "0.1.0", &artifact).await,
        ArtifactInsert::Created(_)
    ));
}

pub(crate) async fn concurrent_duplicate_add_artifact_creates_one_row(database: &TestDatabase) {
    let store = database.store();
    create_draft(store.as_ref(), "raced", "1.0.0").await;
    let artifact = new_artifact("raced bytes", Quantization::Q5KM);
    let hook_runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = database.store();
            let artifact = artifact.clone();
            let hook = counting(&hook_runs);
            tokio::spawn(async move {
                store
                    .add_artifact(&model_name("raced"), &semver("1.0.0"), &artifact, hook)
                    .await
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut present = Vec::new();
    for task in tasks {
        match task
            .await
            .expect("task panicked")
            .expect("every concurrent add succeeds")
        {
            ArtifactInsert::Created(artifact) => created.push(artifact),
            ArtifactInsert::AlreadyPresent(artifact) => present.push(artifact),
        }
    }
    assert_eq!(created.len(), 1, "exactly one call creates the artifact");
    assert_eq!(present.len(), 7);
    assert!(present.iter().all(|artifact| *artifact == created[0]));
    assert_eq!(hook_runs.load(Ordering::SeqCst), 1);
    let listed = store
        .list_artifacts(&model_name("raced"), &semver("1.0.0"))
        .await
        .expect("list artifacts");
    assert_eq!(listed, created);
}

pub(crate) async fn one_blob_has_one_size(database: &TestDatabase) {
    let store = database.store();
    let store = store.as_ref();
    create_draft(store, "first", "1.0.0").await;
    create_draft(store, "second", "1.0.0").await;
    let artifact = new_artifact("shared", Quantization::Q4_0);
    add(store, "first", "1.0.0", &artifact).await;
    let misreported = NewArtifact {
        size_bytes: artifact.size_bytes + 1,
        ..artifact.clone()
    };
    assert_error(
        store
            .add_artifact(
                &model_name("second"),
                &semver("1.0.0"),
                &misreported,
                no_op(),
            )
            .await,
        is_failed_precondition,
        &["blake3:", "bytes"],
    );
    let too_big = NewArtifact {
        memory_estimate_bytes: u64::MAX,
        ..new_artifact("huge", Quantization::Q8_0)
    };
    assert_error(
        store
            .add_artifact(&model_name("second"), &semver("1.0.0"), &too_big, no_op())
            .await,
        is_failed_precondition,
        &["memory_estimate_bytes", "too large"],
    );
}

pub(crate) async fn find_artifacts_by_digest_spans_models(database: &TestDatabase) {
    let store = database.store();
    let store = store.as_ref();
    create_draft(store, "base", "1.0.0").await;
    create_draft(store, "fork", "2.0.0").await;
    let shared = new_artifact("shared weights", Quantization::Q8_0);
    add(store, "base", "1.0.0", &shared).await;
    add(store, "fork", "2.0.0", &shared).await;
    add(
        store,
        "fork",
        "2.0.0",
        &new_artifact("fork only", Quantization::Q4_1),
    )
    .await;

    let found = store
        .find_artifacts_by_digest(&shared.digest)
        .await
        .expect("find by digest");
    let owners: Vec<_> = found
        .iter()
        .map(|artifact| format!("{}@{}", artifact.model, artifact.version))
        .collect();
    assert_eq!(owners, vec!["base@1.0.0", "fork@2.0.0"]);
    assert!(
        found
            .iter()
            .all(|artifact| artifact.digest == shared.digest)
    );
    let unknown = Digest::from(blake3::hash(b"never uploaded"));
    assert!(
        store
            .find_artifacts_by_digest(&unknown)
            .await
            .expect("find by digest")
            .is_empty()
    );
}

pub(crate) async fn resolvable_versions_are_published_or_deprecated_with_artifacts(
    database: &TestDatabase,
) {
    let store = database.store();
    let store = store.as_ref();
    for (version, quantizations) in [
        ("1.0.0", vec![Quantization::Q4_1, Quantization::Q8_0]),
        ("1.1.0", vec![Quantization::Q4_1]),
        ("1.2.0", vec![Quantization::F16]),
        ("2.0.0", vec![Quantization::Q8_0]),
        ("2.1.0", vec![]),
    ] {
        create_draft(store, "catalogue", version).await;
        for quantization in quantizations {
            let seed = format!("{version}/{quantization}");
            add(
                store,
                "catalogue",
                version,
                &new_artifact(&seed, quantization),
            )
            .await;
        }
    }
    let model = model_name("catalogue");
    publish(store, "catalogue", "1.0.0").await;
    publish(store, "catalogue", "1.1.0").await;
    publish(store, "catalogue", "1.2.0").await;
    store
        .set_version_state(&model, &semver("1.1.0"), VersionState::Deprecated)
        .await
        .expect("deprecate");
    store
        .set_version_state(&model, &semver("1.2.0"), VersionState::Yanked)
        .await
        .expect("yank");
    // 2.0.0 stays a draft with an artifact, 2.1.0 an empty draft.

    let resolvable = store
        .resolvable_versions(&model)
        .await
        .expect("resolvable versions");
    let summary: Vec<_> = resolvable
        .iter()
        .map(|(version, artifacts)| {
            (
                version.version.to_string(),
                version.state,
                artifacts
                    .iter()
                    .map(|artifact| artifact.quantization.to_string())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "1.0.0".to_owned(),
                VersionState::Published,
                vec!["Q4_1".to_owned(), "Q8_0".to_owned()]
            ),
            (
                "1.1.0".to_owned(),
                VersionState::Deprecated,
                vec!["Q4_1".to_owned()]
            ),
        ]
    );
    assert!(
        resolvable
            .iter()
            .flat_map(|(version, artifacts)| artifacts
                .iter()
                .map(move |artifact| (version, artifact)))
            .all(|(version, artifact)| artifact.version == version.version)
    );

    create_draft(store, "unreleased", "0.1.0").await;
    assert!(
        store
            .resolvable_versions(&model_name("unreleased"))
            .await
            .expect("resolvable versions")
            .is_empty()
    );
    assert_error(
        store.resolvable_versions(&model_name("ghost")).await,
        is_not_found,
        &["model ghost not found"],
    );
}
