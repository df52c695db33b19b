//! The store conformance suite: every test here runs against both backends,
//! SQLite on a temporary file and a real Postgres, through `Arc<dyn Store>`
//! alone, so the two cannot drift apart in behaviour.
//!
//! Each test gets a fresh database of its own (a temporary directory, or a
//! `flotilla_test_<uuid>` database dropped afterwards), so tests run in
//! parallel without seeing each other's rows.
//!
//! Postgres comes from `FLOTILLA_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, used only to create and drop
//! the per-test databases). An unreachable Postgres fails the Postgres tests;
//! set `FLOTILLA_SKIP_POSTGRES=1` to skip them deliberately.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flotilla_controller::domain::{
    ArtifactFormat, Digest, ModelName, NewArtifact, PageRequest, PromptName, Quantization,
    VersionState,
};
use flotilla_controller::store::{self, ArtifactInsert, BeforeCommit, Store, StoreError};
use sqlx::Connection;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// One test's private database and the store connected to it.
struct TestDatabase {
    url: String,
    store: Arc<dyn Store>,
    /// Dropped last: removes the database once the test is over, even when
    /// it panicked.
    _cleanup: Cleanup,
}

enum Cleanup {
    Sqlite { _directory: tempfile::TempDir },
    Postgres { _database: DropPostgresDatabase },
}

impl TestDatabase {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        // A directory that does not exist yet: connect must create it.
        let path = dir.path().join("state").join("controller.db");
        let url = format!("sqlite://{}", path.display());
        let store = store::connect(&url)
            .await
            .unwrap_or_else(|error| panic!("cannot open sqlite store at {url}: {error}"));
        Self {
            url,
            store,
            _cleanup: Cleanup::Sqlite { _directory: dir },
        }
    }

    /// A fresh Postgres database, or `None` when Postgres tests are skipped
    /// on purpose.
    async fn postgres() -> Option<Self> {
        if std::env::var("FLOTILLA_SKIP_POSTGRES").is_ok_and(|value| value == "1") {
            eprintln!("FLOTILLA_SKIP_POSTGRES=1: skipping a postgres conformance test");
            return None;
        }
        let admin_url = std::env::var("FLOTILLA_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot reach postgres at {} for the store conformance tests: {error}\n\
                     start postgres, point FLOTILLA_TEST_DATABASE_URL at one, or set \
                     FLOTILLA_SKIP_POSTGRES=1 to skip the postgres backend",
                    store::redact_url(&admin_url)
                )
            });
        let name = format!("flotilla_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|error| panic!("cannot create database {name}: {error}"));
        // The cleanup guard exists before anything else can panic.
        let cleanup = DropPostgresDatabase {
            admin_url: admin_url.clone(),
            name: name.clone(),
        };
        let _ = admin.close().await;
        let mut url = url::Url::parse(&admin_url).expect("FLOTILLA_TEST_DATABASE_URL is a url");
        url.set_path(&name);
        let url = url.to_string();
        let store = store::connect(&url).await.unwrap_or_else(|error| {
            panic!("cannot open postgres store on database {name}: {error}")
        });
        Some(Self {
            url,
            store,
            _cleanup: Cleanup::Postgres { _database: cleanup },
        })
    }

    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

/// Drops a per-test Postgres database, best effort. `Drop` cannot await, so
/// it runs on a thread of its own with a small runtime; `WITH (FORCE)` ends
/// the store's still-open pool connections.
struct DropPostgresDatabase {
    admin_url: String,
    name: String,
}

impl Drop for DropPostgresDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    if let Err(error) = sqlx::query(&statement).execute(&mut admin).await {
                        eprintln!("cleanup failed ({statement}): {error}");
                    }
                    let _ = admin.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// Declares each listed test once per backend: `sqlite::<name>` and
/// `postgres::<name>`, both calling the same `async fn <name>(&TestDatabase)`.
macro_rules! conformance_suite {
    ($($test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let database = super::TestDatabase::sqlite().await;
                    super::$test(&database).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let Some(database) = super::TestDatabase::postgres().await else {
                        return;
                    };
                    super::$test(&database).await;
                }
            )+
        }
    };
}

conformance_suite!(
    models_are_created_read_and_listed_in_pages,
    duplicate_model_is_already_exists,
    concurrent_create_model_has_one_winner,
    version_lifecycle_follows_the_rules,
    duplicate_version_is_already_exists,
    versions_are_listed_in_creation_order_in_pages,
    add_artifact_creates_then_reports_present_or_conflicting,
    add_artifact_needs_an_existing_draft,
    failed_before_commit_persists_nothing,
    concurrent_duplicate_add_artifact_creates_one_row,
    one_blob_has_one_size,
    find_artifacts_by_digest_spans_models,
    resolvable_versions_are_published_or_deprecated_with_artifacts,
    prompts_are_versioned_and_listed,
    concurrent_prompt_versions_get_distinct_numbers,
    migrations_are_idempotent_and_keep_data,
);

// ---- fixtures ----

fn model_name(name: &str) -> ModelName {
    name.parse().expect("valid model name")
}

fn prompt_name(name: &str) -> PromptName {
    name.parse().expect("valid prompt name")
}

fn semver(version: &str) -> semver::Version {
    version.parse().expect("valid semver")
}

/// An artifact whose bytes are identified by `seed`.
fn new_artifact(seed: &str, quantization: Quantization) -> NewArtifact {
    NewArtifact {
        digest: Digest::from(blake3::hash(seed.as_bytes())),
        size_bytes: 1_000 + seed.len() as u64,
        format: ArtifactFormat::Gguf,
        quantization,
        architecture: "llama".to_owned(),
        parameter_count: 135_000_000,
        context_length: Some(2048),
        memory_estimate_bytes: 300_000_000,
    }
}

fn no_op() -> BeforeCommit {
    Box::new(|| Box::pin(async { Ok(()) }))
}

/// A before-commit step that counts how often it ran.
fn counting(counter: &Arc<AtomicUsize>) -> BeforeCommit {
    let counter = Arc::clone(counter);
    Box::new(move || {
        Box::pin(async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    })
}

fn failing(message: &'static str) -> BeforeCommit {
    Box::new(move || Box::pin(async move { Err(message.to_owned()) }))
}

async fn create_draft(store: &dyn Store, model: &str, version: &str) {
    if store
        .get_model(&model_name(model))
        .await
        .expect("get model")
        .is_none()
    {
        store
            .create_model(&model_name(model), "")
            .await
            .expect("create model");
    }
    store
        .create_version(&model_name(model), &semver(version), "")
        .await
        .expect("create version");
}

async fn add(
    store: &dyn Store,
    model: &str,
    version: &str,
    artifact: &NewArtifact,
) -> ArtifactInsert {
    store
        .add_artifact(&model_name(model), &semver(version), artifact, no_op())
        .await
        .expect("add artifact")
}

async fn publish(store: &dyn Store, model: &str, version: &str) {
    store
        .set_version_state(
            &model_name(model),
            &semver(version),
            VersionState::Published,
        )
        .await
        .expect("publish");
}

#[track_caller]
fn assert_error<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    expected: fn(&StoreError) -> bool,
    needles: &[&str],
) {
    let error = result.expect_err("the store accepted what it should refuse");
    assert!(expected(&error), "unexpected error kind: {error:?}");
    let message = error.to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

fn is_not_found(error: &StoreError) -> bool {
    matches!(error, StoreError::NotFound(_))
}

fn is_already_exists(error: &StoreError) -> bool {
    matches!(error, StoreError::AlreadyExists(_))
}

fn is_failed_precondition(error: &StoreError) -> bool {
    matches!(error, StoreError::FailedPrecondition(_))
}

// ---- models ----

async fn models_are_created_read_and_listed_in_pages(database: &TestDatabase) {
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

async fn duplicate_model_is_already_exists(database: &TestDatabase) {
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

async fn concurrent_create_model_has_one_winner(database: &TestDatabase) {
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

// ---- versions ----

async fn version_lifecycle_follows_the_rules(database: &TestDatabase) {
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

async fn duplicate_version_is_already_exists(database: &TestDatabase) {
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

async fn versions_are_listed_in_creation_order_in_pages(database: &TestDatabase) {
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

// ---- artifacts ----

async fn add_artifact_creates_then_reports_present_or_conflicting(database: &TestDatabase) {
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

async fn add_artifact_needs_an_existing_draft(database: &TestDatabase) {
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

async fn failed_before_commit_persists_nothing(database: &TestDatabase) {
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

async fn concurrent_duplicate_add_artifact_creates_one_row(database: &TestDatabase) {
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

async fn one_blob_has_one_size(database: &TestDatabase) {
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

async fn find_artifacts_by_digest_spans_models(database: &TestDatabase) {
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

async fn resolvable_versions_are_published_or_deprecated_with_artifacts(database: &TestDatabase) {
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

// ---- system prompts ----

async fn prompts_are_versioned_and_listed(database: &TestDatabase) {
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

async fn concurrent_prompt_versions_get_distinct_numbers(database: &TestDatabase) {
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

// ---- migrations ----

async fn migrations_are_idempotent_and_keep_data(database: &TestDatabase) {
    let store = database.store();
    create_draft(store.as_ref(), "durable", "1.0.0").await;
    add(
        store.as_ref(),
        "durable",
        "1.0.0",
        &new_artifact("kept", Quantization::Q4KM),
    )
    .await;
    for _ in 0..2 {
        let reopened = store::connect(&database.url)
            .await
            .expect("connect again to the same database");
        assert_eq!(reopened.backend(), store.backend());
        reopened.ping().await.expect("ping");
        let model = reopened
            .get_model(&model_name("durable"))
            .await
            .expect("get model");
        assert!(model.is_some(), "data survives reconnecting");
        let artifacts = reopened
            .list_artifacts(&model_name("durable"), &semver("1.0.0"))
            .await
            .expect("list artifacts");
        assert_eq!(artifacts.len(), 1);
    }
}
