//! The Postgres backend of [`Store`], for production: several controller
//! replicas share one database, so every invariant that concurrent writers
//! could break is either a schema constraint or taken under a row lock.
//!
//! What is persisted: the tables of `migrations/postgres` (models, versions,
//! blobs, artifacts, system prompts; nodes and bootstrap tokens in `fleet`).
//! The store keeps nothing in memory but its connection pool. Migrations run on connect under sqlx's advisory lock,
//! so replicas starting together apply them once.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::rows::{
    ArtifactNumbers, ArtifactRow, ModelRow, PromptRow, PromptSummaryRow, SELECT_ARTIFACTS,
    SELECT_PROMPTS, SELECT_VERSIONS, VersionRow, convert_all, group_artifacts, map_sqlx_error,
    overfetch, parse_id_cursor, parse_prompt_version_cursor, prompt_version_to_db, to_u64,
    versions_page,
};
use super::{
    ArtifactInsert, BeforeCommit, EnrollOutcome, Enrolment, NewBootstrapToken, NodeReport, Store,
    StoreBackend, StoreError, StoreResult, transaction,
};
use super::{NewRollout, RolloutUpdate};
use crate::domain::{
    Artifact, Assignment, AssignmentTarget, BootstrapToken, Digest, HealthPoint, Model, ModelName,
    ModelVersion, NewArtifact, NewAssignment, Node, NodeChange, NodeDesired, NodeName, Page,
    PageRequest, PromptName, PromptSummary, SystemPrompt, VersionState,
};
use crate::domain::{DirectoryEntry, Event, Rollout, RolloutName, RolloutNode};

/// Runs `$body` as one transaction on the store's pool, with `$conn` bound
/// to the transaction's connection, committing when the body returns `Ok` and
/// rolling back otherwise. In the body, `?` and `return` leave the
/// transaction. Retries and metrics: [`transaction::Attempts`].
macro_rules! in_transaction {
    ($store:expr, $operation:literal, |$conn:ident| $body:block) => {{
        let mut attempts =
            transaction::Attempts::new(StoreBackend::Postgres, $operation, is_retryable);
        loop {
            let result = transaction::body(async {
                let mut tx = $store.pool.begin().await?;
                let result = transaction::body(async {
                    let $conn: &mut PgConnection = &mut tx;
                    $body
                })
                .await;
                transaction::finish(tx, result).await
            })
            .await;
            if let Some(result) = attempts.settle(result).await {
                break result;
            }
        }
    }};
}

mod fleet;
mod rollouts;
mod routes;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Connections per controller replica. Transactions are short; more replicas
/// add connections, so this stays well under Postgres's default limit of 100.
const MAX_CONNECTIONS: u32 = 10;

/// How many times `create_prompt_version` tries again when a concurrent
/// creator took the version number it computed.
const PROMPT_VERSION_ATTEMPTS: u32 = 5;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` and applies pending migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

/// Serialization failures and deadlocks: the transaction lost a race and can
/// simply run again.
fn is_retryable(error: &sqlx::Error) -> bool {
    const SERIALIZATION_FAILURE: &str = "40001";
    const DEADLOCK_DETECTED: &str = "40P01";
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == SERIALIZATION_FAILURE || code == DEADLOCK_DETECTED)
}

async fn model_id(conn: &mut PgConnection, model: &ModelName) -> StoreResult<i64> {
    sqlx::query_scalar::<_, i64>("SELECT id FROM models WHERE name = $1")
        .bind(model.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| model_not_found(model))
}

fn model_not_found(model: &ModelName) -> StoreError {
    StoreError::NotFound(format!("model {model} not found"))
}

/// The `NotFound` for a version that a lookup did not find: says whether the
/// model or only the version is missing.
async fn version_not_found(
    conn: &mut PgConnection,
    model: &ModelName,
    version: &semver::Version,
) -> StoreError {
    match model_id(conn, model).await {
        Ok(_) => StoreError::NotFound(format!("model {model} has no version {version}")),
        Err(error) => error,
    }
}

/// The id and state of a version, locked against concurrent changes until
/// the transaction ends: artifacts are added and states changed under this
/// lock, so a version cannot be published while an artifact is being added.
async fn lock_version(
    conn: &mut PgConnection,
    model: &ModelName,
    version: &semver::Version,
) -> StoreResult<(i64, VersionState)> {
    let row = sqlx::query_as::<_, (i64, String)>(
        "SELECT v.id, v.state FROM model_versions v JOIN models m ON m.id = v.model_id \
         WHERE m.name = $1 AND v.version = $2 FOR UPDATE OF v",
    )
    .bind(model.as_str())
    .bind(version.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, state)) = row else {
        return Err(version_not_found(conn, model, version).await);
    };
    let state = state.parse::<VersionState>().map_err(|error| {
        StoreError::Corrupt(format!("model_versions.state holds {state:?}: {error}"))
    })?;
    Ok((id, state))
}

async fn version_id(
    conn: &mut PgConnection,
    model: &ModelName,
    version: &semver::Version,
) -> StoreResult<i64> {
    let id = sqlx::query_scalar::<_, i64>(
        "SELECT v.id FROM model_versions v JOIN models m ON m.id = v.model_id \
         WHERE m.name = $1 AND v.version = $2",
    )
    .bind(model.as_str())
    .bind(version.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    match id {
        Some(id) => Ok(id),
        None => Err(version_not_found(conn, model, version).await),
    }
}

async fn version_by_id(conn: &mut PgConnection, id: i64) -> StoreResult<ModelVersion> {
    sqlx::query_as::<_, VersionRow>(&format!("{SELECT_VERSIONS} WHERE v.id = $1"))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?
        .try_into()
}

async fn artifact_where(
    conn: &mut PgConnection,
    condition: &str,
    version_id: i64,
    value: &str,
) -> StoreResult<Option<Artifact>> {
    sqlx::query_as::<_, ArtifactRow>(&format!(
        "{SELECT_ARTIFACTS} WHERE a.version_id = $1 AND {condition}"
    ))
    .bind(version_id)
    .bind(value)
    .fetch_optional(&mut *conn)
    .await?
    .map(Artifact::try_from)
    .transpose()
}

/// The artifact of a version with these exact bytes, if any.
async fn artifact_with_digest(
    conn: &mut PgConnection,
    version_id: i64,
    digest: &Digest,
) -> StoreResult<Option<Artifact>> {
    artifact_where(conn, "a.digest = $2", version_id, &digest.to_hex()).await
}

/// The `AlreadyExists` for a version that already has an artifact of this
/// quantization (with other bytes), or `None` if it has none.
async fn quantization_conflict(
    conn: &mut PgConnection,
    version_id: i64,
    model: &ModelName,
    version: &semver::Version,
    artifact: &NewArtifact,
) -> StoreResult<Option<StoreError>> {
    let existing = artifact_where(
        conn,
        "a.quantization = $2",
        version_id,
        artifact.quantization.name(),
    )
    .await?;
    Ok(existing.map(|existing| {
        StoreError::AlreadyExists(format!(
            "version {version} of model {model} already has a {} artifact ({})",
            artifact.quantization,
            existing.digest.short()
        ))
    }))
}

/// Records the blob, or checks that the one already recorded under this
/// digest has the same size: equal digests with different sizes mean the
/// caller measured wrongly, and the first record must not be contradicted.
async fn upsert_blob(
    conn: &mut PgConnection,
    artifact: &NewArtifact,
    numbers: &ArtifactNumbers,
) -> StoreResult<()> {
    let size_bytes = numbers.size_bytes;
    sqlx::query(
        "INSERT INTO blobs (digest, size_bytes) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
    )
    .bind(artifact.digest.to_hex())
    .bind(size_bytes)
    .execute(&mut *conn)
    .await?;
    let recorded = sqlx::query_scalar::<_, i64>("SELECT size_bytes FROM blobs WHERE digest = $1")
        .bind(artifact.digest.to_hex())
        .fetch_one(&mut *conn)
        .await?;
    if recorded != size_bytes {
        return Err(StoreError::FailedPrecondition(format!(
            "blob {} is recorded as {} bytes, not {}",
            artifact.digest.short(),
            to_u64("blobs.size_bytes", recorded)?,
            artifact.size_bytes
        )));
    }
    Ok(())
}

async fn insert_artifact(
    conn: &mut PgConnection,
    version_id: i64,
    artifact: &NewArtifact,
    numbers: &ArtifactNumbers,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>(
        "INSERT INTO artifacts (version_id, digest, format, quantization, architecture, \
             parameter_count, context_length, memory_estimate_bytes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(version_id)
    .bind(artifact.digest.to_hex())
    .bind(artifact.format.as_str())
    .bind(artifact.quantization.name())
    .bind(&artifact.architecture)
    .bind(numbers.parameter_count)
    .bind(numbers.context_length)
    .bind(numbers.memory_estimate_bytes)
    .fetch_one(&mut *conn)
    .await
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> StoreBackend {
        StoreBackend::Postgres
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_model(&self, name: &ModelName, description: &str) -> StoreResult<Model> {
        in_transaction!(self, "create_model", |conn| {
            sqlx::query_as::<_, ModelRow>(
                "INSERT INTO models (name, description) VALUES ($1, $2) \
                 RETURNING name, description, created_at",
            )
            .bind(name.as_str())
            .bind(description)
            .fetch_one(&mut *conn)
            .await
            .map_err(|error| map_sqlx_error(error, || format!("model {name} already exists")))?
            .try_into()
        })
    }

    async fn get_model(&self, name: &ModelName) -> StoreResult<Option<Model>> {
        in_transaction!(self, "get_model", |conn| {
            sqlx::query_as::<_, ModelRow>(
                "SELECT name, description, created_at FROM models WHERE name = $1",
            )
            .bind(name.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(Model::try_from)
            .transpose()
        })
    }

    async fn list_models(&self, page: &PageRequest) -> StoreResult<Page<Model>> {
        in_transaction!(self, "list_models", |conn| {
            // Every name is non-empty, so "after the empty string" is the
            // first page and the query stays one index range scan.
            let rows = sqlx::query_as::<_, ModelRow>(
                "SELECT name, description, created_at FROM models WHERE name > $1 \
                 ORDER BY name LIMIT $2",
            )
            .bind(page.after.as_deref().unwrap_or(""))
            .bind(overfetch(page.limit))
            .fetch_all(&mut *conn)
            .await?;
            let models: Vec<Model> = convert_all(rows)?;
            Ok(Page::from_overfetched(models, page.limit, |model| {
                model.name.to_string()
            }))
        })
    }

    async fn create_version(
        &self,
        model: &ModelName,
        version: &semver::Version,
        notes: &str,
    ) -> StoreResult<ModelVersion> {
        in_transaction!(self, "create_version", |conn| {
            let model_id = model_id(conn, model).await?;
            let id = sqlx::query_scalar::<_, i64>(
                "INSERT INTO model_versions (model_id, version, notes) VALUES ($1, $2, $3) \
                 RETURNING id",
            )
            .bind(model_id)
            .bind(version.to_string())
            .bind(notes)
            .fetch_one(&mut *conn)
            .await
            .map_err(|error| {
                map_sqlx_error(error, || {
                    format!("version {version} of model {model} already exists")
                })
            })?;
            version_by_id(conn, id).await
        })
    }

    async fn get_version(
        &self,
        model: &ModelName,
        version: &semver::Version,
    ) -> StoreResult<Option<ModelVersion>> {
        in_transaction!(self, "get_version", |conn| {
            sqlx::query_as::<_, VersionRow>(&format!(
                "{SELECT_VERSIONS} WHERE m.name = $1 AND v.version = $2"
            ))
            .bind(model.as_str())
            .bind(version.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .map(ModelVersion::try_from)
            .transpose()
        })
    }

    async fn list_versions(
        &self,
        model: &ModelName,
        page: &PageRequest,
    ) -> StoreResult<Page<ModelVersion>> {
        let after = page.after.as_deref().map(parse_id_cursor).transpose()?;
        in_transaction!(self, "list_versions", |conn| {
            let model_id = model_id(conn, model).await?;
            let rows = sqlx::query_as::<_, VersionRow>(&format!(
                "{SELECT_VERSIONS} WHERE v.model_id = $1 AND v.id > $2 ORDER BY v.id LIMIT $3"
            ))
            .bind(model_id)
            .bind(after.unwrap_or(0))
            .bind(overfetch(page.limit))
            .fetch_all(&mut *conn)
            .await?;
            versions_page(rows, page.limit)
        })
    }

    async fn set_version_state(
        &self,
        model: &ModelName,
        version: &semver::Version,
        next: VersionState,
    ) -> StoreResult<ModelVersion> {
        in_transaction!(self, "set_version_state", |conn| {
            let (id, current) = lock_version(conn, model, version).await?;
            if !current.can_become(next) {
                return Err(StoreError::FailedPrecondition(format!(
                    "version {version} of model {model} is {current} and cannot become {next}"
                )));
            }
            if next == VersionState::Published {
                let artifacts = sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM artifacts WHERE version_id = $1",
                )
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
                if artifacts == 0 {
                    return Err(StoreError::FailedPrecondition(format!(
                        "version {version} of model {model} has no artifacts; \
                         add at least one before publishing"
                    )));
                }
            }
            // Every state but draft has been published (the lifecycle only
            // leaves draft by publishing), so published_at is set once, on
            // the first publication, and kept through deprecation.
            sqlx::query(
                "UPDATE model_versions SET state = $2, published_at = COALESCE(published_at, now()) \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(next.as_str())
            .execute(&mut *conn)
            .await?;
            version_by_id(conn, id).await
        })
    }

    async fn add_artifact(
        &self,
        model: &ModelName,
        version: &semver::Version,
        artifact: &NewArtifact,
        before_commit: BeforeCommit,
    ) -> StoreResult<ArtifactInsert> {
        let numbers = ArtifactNumbers::try_from(artifact)?;
        let mut before_commit = Some(before_commit);
        let mut lost_race = false;
        let attempt = in_transaction!(self, "add_artifact", |conn| {
            let (version_id, state) = lock_version(conn, model, version).await?;
            if state != VersionState::Draft {
                return Err(StoreError::FailedPrecondition(format!(
                    "version {version} of model {model} is {state}; \
                         artifacts can be added only to drafts"
                )));
            }
            if let Some(existing) = artifact_with_digest(conn, version_id, &artifact.digest).await?
            {
                return Ok(ArtifactInsert::AlreadyPresent(existing));
            }
            if let Some(conflict) =
                quantization_conflict(conn, version_id, model, version, artifact).await?
            {
                return Err(conflict);
            }
            upsert_blob(conn, artifact, &numbers).await?;
            let id = match insert_artifact(conn, version_id, artifact, &numbers).await {
                Ok(id) => id,
                Err(error) => {
                    // Unreachable while the version row is locked, but
                    // the schema is the last word: a concurrent insert
                    // won, and the re-read below says what it inserted.
                    lost_race = error
                        .as_database_error()
                        .is_some_and(|error| error.is_unique_violation());
                    return Err(error.into());
                }
            };
            let created =
                sqlx::query_as::<_, ArtifactRow>(&format!("{SELECT_ARTIFACTS} WHERE a.id = $1"))
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?
                    .try_into()?;
            let Some(before_commit) = before_commit.take() else {
                // Only a retried commit gets here, after the hook ran and
                // the commit failed; the hook cannot run twice.
                return Err(StoreError::BeforeCommit(format!(
                    "the transaction adding artifact {} was retried after its \
                         before-commit step had run",
                    artifact.digest.short()
                )));
            };
            before_commit().await.map_err(StoreError::BeforeCommit)?;
            Ok(ArtifactInsert::Created(created))
        });
        match attempt {
            Err(error) if lost_race => {
                in_transaction!(self, "add_artifact_reread", |conn| {
                    let version_id = version_id(conn, model, version).await?;
                    if let Some(existing) =
                        artifact_with_digest(conn, version_id, &artifact.digest).await?
                    {
                        return Ok(ArtifactInsert::AlreadyPresent(existing));
                    }
                    match quantization_conflict(conn, version_id, model, version, artifact).await? {
                        Some(conflict) => Err(conflict),
                        None => Err(StoreError::AlreadyExists(format!(
                            "version {version} of model {model} changed while adding artifact {}: {error}",
                            artifact.digest.short()
                        ))),
                    }
                })
            }
            other => other,
        }
    }

    async fn list_artifacts(
        &self,
        model: &ModelName,
        version: &semver::Version,
    ) -> StoreResult<Vec<Artifact>> {
        in_transaction!(self, "list_artifacts", |conn| {
            let version_id = version_id(conn, model, version).await?;
            let rows = sqlx::query_as::<_, ArtifactRow>(&format!(
                "{SELECT_ARTIFACTS} WHERE a.version_id = $1 ORDER BY a.id"
            ))
            .bind(version_id)
            .fetch_all(&mut *conn)
            .await?;
            convert_all(rows)
        })
    }

    async fn find_artifacts_by_digest(&self, digest: &Digest) -> StoreResult<Vec<Artifact>> {
        in_transaction!(self, "find_artifacts_by_digest", |conn| {
            let rows = sqlx::query_as::<_, ArtifactRow>(&format!(
                "{SELECT_ARTIFACTS} WHERE a.digest = $1 ORDER BY a.id"
            ))
            .bind(digest.to_hex())
            .fetch_all(&mut *conn)
            .await?;
            convert_all(rows)
        })
    }

    async fn resolvable_versions(
        &self,
        model: &ModelName,
    ) -> StoreResult<Vec<(ModelVersion, Vec<Artifact>)>> {
        in_transaction!(self, "resolvable_versions", |conn| {
            let versions = sqlx::query_as::<_, VersionRow>(&format!(
                "{SELECT_VERSIONS} WHERE m.name = $1 \
                 AND v.state IN ('published', 'deprecated') ORDER BY v.id"
            ))
            .bind(model.as_str())
            .fetch_all(&mut *conn)
            .await?;
            if versions.is_empty() {
                // Tell "no such model" from "nothing published yet".
                model_id(conn, model).await?;
                return Ok(Vec::new());
            }
            let artifacts = sqlx::query_as::<_, ArtifactRow>(&format!(
                "{SELECT_ARTIFACTS} WHERE m.name = $1 \
                 AND v.state IN ('published', 'deprecated') ORDER BY a.id"
            ))
            .bind(model.as_str())
            .fetch_all(&mut *conn)
            .await?;
            group_artifacts(versions, artifacts)
        })
    }

    async fn create_prompt_version(
        &self,
        name: &PromptName,
        text: &str,
        chat_template: Option<&str>,
    ) -> StoreResult<SystemPrompt> {
        let mut attempt = 1;
        loop {
            let result = in_transaction!(self, "create_prompt_version", |conn| {
                // Creators of one prompt queue on a lock keyed by its
                // name, so each reads the previous creator's version;
                // the unique constraint and the retry below remain the
                // guarantee if the lock is ever bypassed.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(format!("flotilla.system_prompts/{name}"))
                    .execute(&mut *conn)
                    .await?;
                let latest = sqlx::query_scalar::<_, i32>(
                    "SELECT COALESCE(MAX(version), 0) FROM system_prompts WHERE name = $1",
                )
                .bind(name.as_str())
                .fetch_one(&mut *conn)
                .await?;
                let next = latest.checked_add(1).ok_or_else(|| {
                    StoreError::FailedPrecondition(format!(
                        "prompt {name} has reached its last version number"
                    ))
                })?;
                sqlx::query_as::<_, PromptRow>(
                    "INSERT INTO system_prompts (name, version, text, chat_template) \
                         VALUES ($1, $2, $3, $4) \
                         RETURNING name, version, text, chat_template, created_at",
                )
                .bind(name.as_str())
                .bind(next)
                .bind(text)
                .bind(chat_template)
                .fetch_one(&mut *conn)
                .await
                .map_err(|error| {
                    map_sqlx_error(error, || {
                        format!("version {next} of prompt {name} was created concurrently")
                    })
                })?
                .try_into()
            });
            match result {
                Err(StoreError::AlreadyExists(_)) if attempt < PROMPT_VERSION_ATTEMPTS => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get_prompt(
        &self,
        name: &PromptName,
        version: Option<u32>,
    ) -> StoreResult<Option<SystemPrompt>> {
        let version = version
            .map(|version| prompt_version_to_db(name, version))
            .transpose()?;
        in_transaction!(self, "get_prompt", |conn| {
            let row = match version {
                Some(version) => {
                    sqlx::query_as::<_, PromptRow>(&format!(
                        "{SELECT_PROMPTS} WHERE name = $1 AND version = $2"
                    ))
                    .bind(name.as_str())
                    .bind(version)
                    .fetch_optional(&mut *conn)
                    .await?
                }
                None => {
                    sqlx::query_as::<_, PromptRow>(&format!(
                        "{SELECT_PROMPTS} WHERE name = $1 ORDER BY version DESC LIMIT 1"
                    ))
                    .bind(name.as_str())
                    .fetch_optional(&mut *conn)
                    .await?
                }
            };
            row.map(SystemPrompt::try_from).transpose()
        })
    }

    async fn list_prompts(&self, page: &PageRequest) -> StoreResult<Page<PromptSummary>> {
        in_transaction!(self, "list_prompts", |conn| {
            let rows = sqlx::query_as::<_, PromptSummaryRow>(
                "SELECT p.name, p.version AS latest_version, p.created_at AS updated_at \
                 FROM system_prompts p \
                 WHERE p.name > $1 \
                   AND p.version = (SELECT MAX(q.version) FROM system_prompts q WHERE q.name = p.name) \
                 ORDER BY p.name LIMIT $2",
            )
            .bind(page.after.as_deref().unwrap_or(""))
            .bind(overfetch(page.limit))
            .fetch_all(&mut *conn)
            .await?;
            let prompts: Vec<PromptSummary> = convert_all(rows)?;
            Ok(Page::from_overfetched(prompts, page.limit, |prompt| {
                prompt.name.to_string()
            }))
        })
    }

    async fn list_prompt_versions(
        &self,
        name: &PromptName,
        page: &PageRequest,
    ) -> StoreResult<Page<SystemPrompt>> {
        let before = page
            .after
            .as_deref()
            .map(parse_prompt_version_cursor)
            .transpose()?;
        in_transaction!(self, "list_prompt_versions", |conn| {
            let rows = sqlx::query_as::<_, PromptRow>(&format!(
                "{SELECT_PROMPTS} WHERE name = $1 AND version < $2 ORDER BY version DESC LIMIT $3"
            ))
            .bind(name.as_str())
            .bind(before.map_or(i64::from(i32::MAX) + 1, i64::from))
            .bind(overfetch(page.limit))
            .fetch_all(&mut *conn)
            .await?;
            if rows.is_empty() && before.is_none() {
                return Err(StoreError::NotFound(format!("prompt {name} not found")));
            }
            let prompts: Vec<SystemPrompt> = convert_all(rows)?;
            Ok(Page::from_overfetched(prompts, page.limit, |prompt| {
                prompt.version.to_string()
            }))
        })
    }

    async fn create_bootstrap_token(
        &self,
        token: &NewBootstrapToken,
    ) -> StoreResult<BootstrapToken> {
        self.fleet_create_bootstrap_token(token).await
    }

    async fn enroll_node(&self, enrolment: &Enrolment) -> StoreResult<EnrollOutcome> {
        self.fleet_enroll_node(enrolment).await
    }

    async fn get_node(&self, name: &NodeName) -> StoreResult<Option<Node>> {
        self.fleet_get_node(name).await
    }

    async fn list_nodes(&self, page: &PageRequest) -> StoreResult<Page<Node>> {
        self.fleet_list_nodes(page).await
    }

    async fn change_node(
        &self,
        name: &NodeName,
        change: &NodeChange,
    ) -> StoreResult<(Node, Option<NodeDesired>)> {
        self.fleet_change_node(name, change).await
    }

    async fn update_node_inventory(
        &self,
        name: &NodeName,
        inventory: &crate::domain::NodeInventory,
        agent_version: &str,
    ) -> StoreResult<()> {
        self.fleet_update_node_inventory(name, inventory, agent_version)
            .await
    }

    async fn refresh_secret_hash(&self, name: &NodeName) -> StoreResult<Option<Option<Vec<u8>>>> {
        self.fleet_refresh_secret_hash(name).await
    }

    async fn create_assignment(
        &self,
        new: &NewAssignment,
    ) -> StoreResult<(Assignment, Vec<NodeDesired>)> {
        self.fleet_create_assignment(new).await
    }

    async fn remove_assignment(&self, target: &AssignmentTarget) -> StoreResult<Vec<NodeDesired>> {
        self.fleet_remove_assignment(target).await
    }

    async fn list_assignments(&self, page: &PageRequest) -> StoreResult<Page<Assignment>> {
        self.fleet_list_assignments(page).await
    }

    async fn write_reports(&self, reports: &[NodeReport]) -> StoreResult<()> {
        self.fleet_write_reports(reports).await
    }

    async fn write_health_minutes(&self, points: &[(NodeName, HealthPoint)]) -> StoreResult<()> {
        self.fleet_write_health_minutes(points).await
    }

    async fn health_minutes(
        &self,
        name: &NodeName,
        since_unix: i64,
    ) -> StoreResult<Vec<HealthPoint>> {
        self.fleet_health_minutes(name, since_unix).await
    }

    async fn prune_health_minutes(&self, before_unix: i64) -> StoreResult<u64> {
        self.fleet_prune_health_minutes(before_unix).await
    }

    async fn desired_changed_since(&self, after: u64) -> StoreResult<Vec<NodeDesired>> {
        self.fleet_desired_changed_since(after).await
    }

    async fn change_feed(&self) -> StoreResult<Option<Box<dyn super::ChangeFeed>>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(FLEET_CHANNEL).await?;
        Ok(Some(Box::new(PgChangeFeed(listener))))
    }

    async fn exchange_routes(
        &self,
        replica: &str,
        routes: &[DirectoryEntry],
        changed: bool,
        fresh_within: Duration,
    ) -> StoreResult<Option<Vec<DirectoryEntry>>> {
        self.fleet_exchange_routes(replica, routes, changed, fresh_within)
            .await
            .map(Some)
    }

    async fn create_rollout(&self, new: &NewRollout) -> StoreResult<(Rollout, Vec<RolloutNode>)> {
        self.rollouts_create(new).await
    }

    async fn get_rollout(
        &self,
        name: &RolloutName,
    ) -> StoreResult<Option<(Rollout, Vec<RolloutNode>)>> {
        self.rollouts_get(name).await
    }

    async fn list_rollouts(&self) -> StoreResult<Vec<Rollout>> {
        self.rollouts_list().await
    }

    async fn update_rollout(
        &self,
        update: &RolloutUpdate,
    ) -> StoreResult<(Rollout, Vec<NodeDesired>)> {
        self.rollouts_update(update).await
    }

    async fn pinned_nodes(&self) -> StoreResult<Vec<NodeName>> {
        self.rollouts_pinned_nodes().await
    }

    async fn list_events(
        &self,
        rollout: Option<&RolloutName>,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        self.rollouts_list_events(rollout, after, limit).await
    }

    async fn try_lead(&self) -> StoreResult<Option<Box<dyn super::Leadership>>> {
        // A connection of its own, out of the pool: the lock lives as long
        // as this session.
        let mut conn = self.pool.acquire().await?.detach();
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(super::LEADER_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if acquired {
            Ok(Some(Box::new(PostgresLeadership { conn })))
        } else {
            use sqlx::Connection;
            let _ = conn.close().await;
            Ok(None)
        }
    }

    // ---- registry lifecycle (issue 19) ----

    async fn delete_draft_version(
        &self,
        model: &ModelName,
        version: &semver::Version,
    ) -> StoreResult<()> {
        in_transaction!(self, "delete_draft_version", |conn| {
            let (id, state) = lock_version(conn, model, version).await?;
            if state != VersionState::Draft {
                return Err(StoreError::FailedPrecondition(format!(
                    "version {version} of model {model} is {state}; only drafts can be deleted \
                     (deprecate or yank a published version instead)"
                )));
            }
            sqlx::query("DELETE FROM artifacts WHERE version_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM model_versions WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    async fn delete_unused_model(&self, model: &ModelName) -> StoreResult<()> {
        in_transaction!(self, "delete_unused_model", |conn| {
            // Locked: a version created meanwhile waits, then fails its
            // foreign key, instead of being deleted unseen.
            let model_id =
                sqlx::query_scalar::<_, i64>("SELECT id FROM models WHERE name = $1 FOR UPDATE")
                    .bind(model.as_str())
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or_else(|| model_not_found(model))?;
            let published = sqlx::query_scalar::<_, String>(
                "SELECT version FROM model_versions WHERE model_id = $1 AND state <> 'draft' \
                 ORDER BY id LIMIT 5",
            )
            .bind(model_id)
            .fetch_all(&mut *conn)
            .await?;
            if !published.is_empty() {
                return Err(StoreError::FailedPrecondition(format!(
                    "model {model} has published versions ({}); a model can be deleted only \
                     while it has nothing but drafts",
                    published.join(", ")
                )));
            }
            sqlx::query(
                "DELETE FROM artifacts WHERE version_id IN \
                 (SELECT id FROM model_versions WHERE model_id = $1)",
            )
            .bind(model_id)
            .execute(&mut *conn)
            .await?;
            sqlx::query("DELETE FROM model_versions WHERE model_id = $1")
                .bind(model_id)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM models WHERE id = $1")
                .bind(model_id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    async fn append_events(&self, events: &[crate::domain::NewEvent]) -> StoreResult<()> {
        let now_ms = super::rollout_rows::to_unix_ms(time::OffsetDateTime::now_utc());
        in_transaction!(self, "append_events", |conn| {
            fleet::queries::rollouts::insert_events(conn, events, now_ms).await
        })
    }

    // ---- identity and access (issue 16: control plane) ----

    async fn list_bootstrap_tokens(&self) -> StoreResult<Vec<BootstrapToken>> {
        in_transaction!(self, "list_bootstrap_tokens", |conn| {
            fleet::identity::list_bootstrap_tokens(conn).await
        })
    }

    async fn revoke_bootstrap_token(&self, id: &str) -> StoreResult<BootstrapToken> {
        in_transaction!(self, "revoke_bootstrap_token", |conn| {
            fleet::identity::revoke_bootstrap_token(conn, id).await
        })
    }

    async fn credential_generation(&self, name: &NodeName) -> StoreResult<Option<u64>> {
        in_transaction!(self, "credential_generation", |conn| {
            fleet::queries::credential_generation(conn, name).await
        })
    }

    async fn approve_replacement(&self, name: &NodeName) -> StoreResult<()> {
        in_transaction!(self, "approve_replacement", |conn| {
            fleet::identity::approve_replacement(conn, name).await
        })
    }

    async fn remove_node(&self, name: &NodeName) -> StoreResult<()> {
        in_transaction!(self, "remove_node", |conn| {
            fleet::queries::remove_node(conn, name).await
        })
    }

    async fn record_api_token(&self, token: &super::ApiToken) -> StoreResult<()> {
        in_transaction!(self, "record_api_token", |conn| {
            fleet::identity::record_api_token(conn, token).await
        })
    }

    async fn list_api_tokens(&self) -> StoreResult<Vec<super::ApiToken>> {
        in_transaction!(self, "list_api_tokens", |conn| {
            fleet::identity::list_api_tokens(conn).await
        })
    }

    async fn revoke_api_token(&self, id: &str) -> StoreResult<super::ApiToken> {
        in_transaction!(self, "revoke_api_token", |conn| {
            fleet::identity::revoke_api_token(conn, id).await
        })
    }

    async fn revoked_api_token_ids(&self) -> StoreResult<Vec<String>> {
        in_transaction!(self, "revoked_api_token_ids", |conn| {
            fleet::identity::revoked_api_token_ids(conn).await
        })
    }
}

/// The session holding the rollout engine's advisory lock.
struct PostgresLeadership {
    conn: PgConnection,
}

#[async_trait]
impl super::Leadership for PostgresLeadership {
    async fn still_leader(&mut self) -> bool {
        sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .is_ok()
    }
}

/// The channel every transaction that takes a fleet generation notifies
/// (see `next_generation` in `store/fleet_sql.rs`).
const FLEET_CHANNEL: &str = "flotilla_fleet";

struct PgChangeFeed(sqlx::postgres::PgListener);

#[async_trait]
impl super::ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> StoreResult<()> {
        // `Ok(None)`: the connection was lost (the next call re-opens it)
        // and notifications sent meanwhile are gone; the caller re-reads.
        self.0.try_recv().await?;
        Ok(())
    }
}
