//! The store conformance suite: every test runs against both backends, SQLite
//! on a temporary file and a real Postgres, through `Arc<dyn Store>` alone, so
//! the two cannot drift apart in behaviour. The tests live in
//! `store_conformance/*.rs`, one module per area; this root holds the harness,
//! the fixtures and the list that instantiates each test once per backend.
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
    Servability, VersionState,
};
use flotilla_controller::store::{self, ArtifactInsert, BeforeCommit, Store, StoreError};

/// One test's private database and the store connected to it.
struct TestDatabase {
    url: String,
    store: Arc<dyn Store>,
    /// Dropped last: removes the database once the test is over, even when
    /// it panicked.
    _cleanup: Cleanup,
}

enum Cleanup {
    Sqlite {
        _directory: tempfile::TempDir,
    },
    Postgres {
        _database: flotilla_controller::testing::TestDatabase,
    },
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
        let database = flotilla_controller::testing::TestDatabase::postgres()
            .await
            .unwrap_or_else(|error| {
                panic!("{error}\n(set FLOTILLA_SKIP_POSTGRES=1 to skip the postgres backend)")
            });
        let url = database.url.clone();
        let store = store::connect(&url)
            .await
            .unwrap_or_else(|error| panic!("cannot open postgres store on {url}: {error}"));
        Some(Self {
            url,
            store,
            _cleanup: Cleanup::Postgres {
                _database: database,
            },
        })
    }

    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

/// Declares each listed test once per backend: `sqlite::<name>` and
/// `postgres::<name>`, both calling the same `async fn <name>(&TestDatabase)`
/// of the named module.
macro_rules! conformance_suite {
    ($($module:ident :: $test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let database = super::TestDatabase::sqlite().await;
                    super::$module::$test(&database).await;
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
                    super::$module::$test(&database).await;
                }
            )+
        }
    };
}

// The tests, one module per area, next to this crate root.
#[path = "store_conformance/artifacts.rs"]
mod artifacts;
#[path = "store_conformance/fleet.rs"]
mod fleet;
#[path = "store_conformance/migrations.rs"]
mod migrations;
#[path = "store_conformance/models.rs"]
mod models;
#[path = "store_conformance/policies.rs"]
mod policies;
#[path = "store_conformance/prompts.rs"]
mod prompts;
#[path = "store_conformance/rollouts.rs"]
mod rollouts;
#[path = "store_conformance/versions.rs"]
mod versions;

conformance_suite!(
    models::models_are_created_read_and_listed_in_pages,
    models::duplicate_model_is_already_exists,
    models::concurrent_create_model_has_one_winner,
    versions::version_lifecycle_follows_the_rules,
    versions::duplicate_version_is_already_exists,
    versions::versions_are_listed_in_creation_order_in_pages,
    artifacts::add_artifact_creates_then_reports_present_or_conflicting,
    artifacts::add_artifact_needs_an_existing_draft,
    artifacts::failed_before_commit_persists_nothing,
    artifacts::concurrent_duplicate_add_artifact_creates_one_row,
    artifacts::one_blob_has_one_size,
    artifacts::find_artifacts_by_digest_spans_models,
    artifacts::resolvable_versions_are_published_or_deprecated_with_artifacts,
    prompts::prompts_are_versioned_and_listed,
    prompts::concurrent_prompt_versions_get_distinct_numbers,
    policies::policies_are_versioned_and_listed,
    policies::concurrent_policy_versions_get_distinct_numbers,
    migrations::migrations_are_idempotent_and_keep_data,
    fleet::enrolment_checks_and_uses_up_the_token,
    fleet::forged_unknown_and_expired_tokens_are_rejected,
    fleet::concurrent_enrolments_never_overuse_a_token,
    fleet::nodes_are_listed_in_pages_and_approved,
    fleet::assignments_place_nodes_and_generations_only_grow,
    fleet::reports_and_health_history_are_written_in_batches,
    fleet::replicas_exchange_routes_and_forget_withdrawn_ones,
    fleet::routes_stored_by_the_previous_version_still_read,
    rollouts::rollouts_write_assignments_conflict_and_roll_back,
    rollouts::one_engine_leader_at_a_time,
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
        servability: Servability::judged(Ok(())),
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
