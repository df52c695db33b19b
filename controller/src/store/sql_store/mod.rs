//! [`SqlStore`], the one implementation of [`Store`]: each method is one
//! named transaction (`in_transaction!`, retried on collisions and measured),
//! running queries written once for both backends (see `sql.rs`). The
//! registry's queries are here; the fleet's, the rollouts' and identity's
//! are in `store/fleet.rs`, `store/rollouts.rs` and `store/identity.rs`.
//!
//! Which backend a store runs on is chosen by its URL at connect; what only
//! one backend does (Postgres: the change feed, leadership and the route
//! exchange between replicas) is chosen by [`Pool`] here.
//!
//! What is persisted: the tables of `migrations/postgres` and
//! `migrations/sqlite` (the same tables; only column types differ). The
//! store keeps nothing in memory but its connection pool.

mod routes;

use std::time::Duration;

use async_trait::async_trait;

use super::rollout_rows::to_unix_ms;
use super::rows::{
    ArtifactNumbers, ArtifactRow, BOOTSTRAP_TOKEN_COLUMNS, BootstrapTokenRow, ModelRow, NodeRow,
    PromptRow, PromptSummaryRow, SELECT_ARTIFACTS, SELECT_NODES, SELECT_PROMPTS, SELECT_VERSIONS,
    TOKEN_CHECK_COLUMNS, TokenCheckRow, VersionRow, convert_all, group_artifacts, map_sqlx_error,
    overfetch, parse_id_cursor, parse_prompt_version_cursor, prompt_version_to_db, to_u64,
    versions_page,
};
use super::sql::{self, Access, Pool, Tx, in_transaction};
use super::{
    ArtifactInsert, BeforeCommit, DeletedRollout, EnrollOutcome, Enrolment, Missing,
    NewBootstrapToken, NewRollout, NodeReport, RolloutDeletion, RolloutUpdate, Store, StoreBackend,
    StoreError, StoreResult, fleet, identity, policies, postgres, rollouts,
};
use crate::domain::{
    Artifact, Assignment, AssignmentTarget, BootstrapToken, Digest, DirectoryEntry,
    EscalationPolicy, Event, HealthPoint, Model, ModelName, ModelVersion, NewArtifact,
    NewAssignment, Node, NodeChange, NodeDesired, NodeName, Page, PageRequest, PolicyName,
    PolicySpec, PolicySummary, PromptName, PromptSummary, Rollout, RolloutName, RolloutNode,
    SystemPrompt, VersionState,
};

/// How many times `create_prompt_version` (and `create_policy_version`)
/// tries again when a concurrent creator took the version number it
/// computed.
const PROMPT_VERSION_ATTEMPTS: u32 = 5;

/// The store on either backend; see the module's documentation.
pub struct SqlStore {
    pool: Pool,
}

impl SqlStore {
    pub(super) fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

fn now_ms() -> i64 {
    to_unix_ms(time::OffsetDateTime::now_utc())
}

async fn model_id(conn: &mut Tx, model: &ModelName) -> StoreResult<i64> {
    sql::query_scalar::<i64>("SELECT id FROM models WHERE name = $1")
        .bind(model.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| model_not_found(model))
}

fn model_not_found(model: &ModelName) -> StoreError {
    StoreError::NotFound(Missing::Model(model.clone()))
}

/// The `NotFound` for a version that a lookup did not find: says whether the
/// model or only the version is missing.
async fn version_not_found(
    conn: &mut Tx,
    model: &ModelName,
    version: &semver::Version,
) -> StoreError {
    match model_id(conn, model).await {
        Ok(_) => StoreError::NotFound(Missing::Version {
            model: model.clone(),
            version: version.clone(),
        }),
        Err(error) => error,
    }
}

/// The id and state of a version, locked against concurrent changes until
/// the transaction ends (a row lock on Postgres; on SQLite the write lock
/// that every write transaction holds from its start): artifacts are added
/// and states changed under this lock, so a version cannot be published
/// while an artifact is being added.
async fn lock_version(
    conn: &mut Tx,
    model: &ModelName,
    version: &semver::Version,
) -> StoreResult<(i64, VersionState)> {
    let lock = conn.dialect().for_update_of("v");
    let row = sql::query_as::<(i64, String)>(format!(
        "SELECT v.id, v.state FROM model_versions v JOIN models m ON m.id = v.model_id \
         WHERE m.name = $1 AND v.version = $2{lock}"
    ))
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
    conn: &mut Tx,
    model: &ModelName,
    version: &semver::Version,
) -> StoreResult<i64> {
    let id = sql::query_scalar::<i64>(
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

async fn version_by_id(conn: &mut Tx, id: i64) -> StoreResult<ModelVersion> {
    sql::query_as::<VersionRow>(format!("{SELECT_VERSIONS} WHERE v.id = $1"))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?
        .try_into()
}

async fn artifact_where(
    conn: &mut Tx,
    condition: &str,
    version_id: i64,
    value: &str,
) -> StoreResult<Option<Artifact>> {
    sql::query_as::<ArtifactRow>(format!(
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
    conn: &mut Tx,
    version_id: i64,
    digest: &Digest,
) -> StoreResult<Option<Artifact>> {
    artifact_where(conn, "a.digest = $2", version_id, &digest.to_hex()).await
}

/// The `AlreadyExists` for a version that already has an artifact of this
/// quantization (with other bytes), or `None` if it has none.
async fn quantization_conflict(
    conn: &mut Tx,
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
    conn: &mut Tx,
    artifact: &NewArtifact,
    numbers: &ArtifactNumbers,
) -> StoreResult<()> {
    let size_bytes = numbers.size_bytes;
    sql::query(
        "INSERT INTO blobs (digest, size_bytes) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
    )
    .bind(artifact.digest.to_hex())
    .bind(size_bytes)
    .execute(&mut *conn)
    .await?;
    let recorded = sql::query_scalar::<i64>("SELECT size_bytes FROM blobs WHERE digest = $1")
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
    conn: &mut Tx,
    version_id: i64,
    artifact: &NewArtifact,
    numbers: &ArtifactNumbers,
) -> Result<i64, sqlx::Error> {
    sql::query_scalar::<i64>(
        "INSERT INTO artifacts (version_id, digest, format, quantization, architecture, \
             parameter_count, context_length, memory_estimate_bytes, engine_check, \
             unservable_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(version_id)
    .bind(artifact.digest.to_hex())
    .bind(artifact.format.as_str())
    .bind(artifact.quantization.name())
    .bind(&artifact.architecture)
    .bind(numbers.parameter_count)
    .bind(numbers.context_length)
    .bind(numbers.memory_estimate_bytes)
    .bind(artifact.servability.checked_by())
    .bind(artifact.servability.unservable_reason())
    .fetch_one(&mut *conn)
    .await
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> StoreBackend {
        self.pool.dialect().backend()
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(self.pool.ping().await?)
    }

    async fn create_model(&self, name: &ModelName, description: &str) -> StoreResult<Model> {
        in_transaction!(self, "create_model", Access::Write, |conn| {
            sql::query_as::<ModelRow>(
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
        in_transaction!(self, "get_model", Access::Read, |conn| {
            sql::query_as::<ModelRow>(
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
        in_transaction!(self, "list_models", Access::Read, |conn| {
            // Every name is non-empty, so "after the empty string" is the
            // first page and the query stays one index range scan.
            let rows = sql::query_as::<ModelRow>(
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
        in_transaction!(self, "create_version", Access::Write, |conn| {
            let model_id = model_id(conn, model).await?;
            let id = sql::query_scalar::<i64>(
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
        in_transaction!(self, "get_version", Access::Read, |conn| {
            sql::query_as::<VersionRow>(format!(
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
        in_transaction!(self, "list_versions", Access::Read, |conn| {
            let model_id = model_id(conn, model).await?;
            let rows = sql::query_as::<VersionRow>(format!(
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
        in_transaction!(self, "set_version_state", Access::Write, |conn| {
            let (id, current) = lock_version(conn, model, version).await?;
            if !current.can_become(next) {
                return Err(StoreError::FailedPrecondition(format!(
                    "version {version} of model {model} is {current} and cannot become {next}"
                )));
            }
            if next == VersionState::Published {
                let artifacts = sql::query_scalar::<i64>(
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
            let now = conn.dialect().now();
            sql::query(format!(
                "UPDATE model_versions SET state = $2, published_at = COALESCE(published_at, {now}) \
                 WHERE id = $1"
            ))
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
        let attempt = in_transaction!(self, "add_artifact", Access::Write, |conn| {
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
                    // Unreachable while the version is locked, but
                    // the schema is the last word: a concurrent insert
                    // won, and the re-read below says what it inserted.
                    lost_race = error
                        .as_database_error()
                        .is_some_and(|error| error.is_unique_violation());
                    return Err(error.into());
                }
            };
            let created =
                sql::query_as::<ArtifactRow>(format!("{SELECT_ARTIFACTS} WHERE a.id = $1"))
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
                in_transaction!(self, "add_artifact_reread", Access::Read, |conn| {
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
        in_transaction!(self, "list_artifacts", Access::Read, |conn| {
            let version_id = version_id(conn, model, version).await?;
            let rows = sql::query_as::<ArtifactRow>(format!(
                "{SELECT_ARTIFACTS} WHERE a.version_id = $1 ORDER BY a.id"
            ))
            .bind(version_id)
            .fetch_all(&mut *conn)
            .await?;
            convert_all(rows)
        })
    }

    async fn find_artifacts_by_digest(&self, digest: &Digest) -> StoreResult<Vec<Artifact>> {
        in_transaction!(self, "find_artifacts_by_digest", Access::Read, |conn| {
            let rows = sql::query_as::<ArtifactRow>(format!(
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
        in_transaction!(self, "resolvable_versions", Access::Read, |conn| {
            let versions = sql::query_as::<VersionRow>(format!(
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
            let artifacts = sql::query_as::<ArtifactRow>(format!(
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
            let result = in_transaction!(self, "create_prompt_version", Access::Write, |conn| {
                // Creators of one prompt take turns (on Postgres a lock keyed
                // by its name, on SQLite the write lock every writer takes),
                // so each reads the previous creator's version; the unique
                // constraint and the retry below remain the guarantee if
                // the lock is ever bypassed.
                if let Some(lock) = conn.dialect().keyed_lock() {
                    sql::query(lock)
                        .bind(format!("flotilla.system_prompts/{name}"))
                        .execute(&mut *conn)
                        .await?;
                }
                let latest = sql::query_scalar::<i32>(
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
                sql::query_as::<PromptRow>(
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
        in_transaction!(self, "get_prompt", Access::Read, |conn| {
            let row = match version {
                Some(version) => {
                    sql::query_as::<PromptRow>(format!(
                        "{SELECT_PROMPTS} WHERE name = $1 AND version = $2"
                    ))
                    .bind(name.as_str())
                    .bind(version)
                    .fetch_optional(&mut *conn)
                    .await?
                }
                None => {
                    sql::query_as::<PromptRow>(format!(
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
        in_transaction!(self, "list_prompts", Access::Read, |conn| {
            let rows = sql::query_as::<PromptSummaryRow>(
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
        in_transaction!(self, "list_prompt_versions", Access::Read, |conn| {
            let rows = sql::query_as::<PromptRow>(format!(
                "{SELECT_PROMPTS} WHERE name = $1 AND version < $2 ORDER BY version DESC LIMIT $3"
            ))
            .bind(name.as_str())
            .bind(before.map_or(i64::from(i32::MAX) + 1, i64::from))
            .bind(overfetch(page.limit))
            .fetch_all(&mut *conn)
            .await?;
            if rows.is_empty() && before.is_none() {
                return Err(StoreError::NotFound(Missing::Prompt(name.clone())));
            }
            let prompts: Vec<SystemPrompt> = convert_all(rows)?;
            Ok(Page::from_overfetched(prompts, page.limit, |prompt| {
                prompt.version.to_string()
            }))
        })
    }

    async fn create_policy_version(
        &self,
        name: &PolicyName,
        spec: &PolicySpec,
    ) -> StoreResult<EscalationPolicy> {
        let mut attempt = 1;
        loop {
            let result = in_transaction!(self, "create_policy_version", Access::Write, |conn| {
                policies::create_policy_version(conn, name, spec).await
            });
            // The keyed lock makes a collision rare; the unique constraint
            // and this retry remain the guarantee if it is ever bypassed.
            match result {
                Err(StoreError::AlreadyExists(_)) if attempt < PROMPT_VERSION_ATTEMPTS => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get_policy(
        &self,
        name: &PolicyName,
        version: Option<u32>,
    ) -> StoreResult<Option<EscalationPolicy>> {
        in_transaction!(self, "get_policy", Access::Read, |conn| {
            policies::get_policy(conn, name, version).await
        })
    }

    async fn list_policies(&self, page: &PageRequest) -> StoreResult<Page<PolicySummary>> {
        in_transaction!(self, "list_policies", Access::Read, |conn| {
            policies::list_policies(conn, page).await
        })
    }

    async fn list_policy_versions(
        &self,
        name: &PolicyName,
        page: &PageRequest,
    ) -> StoreResult<Page<EscalationPolicy>> {
        in_transaction!(self, "list_policy_versions", Access::Read, |conn| {
            policies::list_policy_versions(conn, name, page).await
        })
    }

    async fn create_bootstrap_token(
        &self,
        token: &NewBootstrapToken,
    ) -> StoreResult<BootstrapToken> {
        let uses = i32::try_from(token.uses).map_err(|_| {
            StoreError::FailedPrecondition(format!("{} uses is too many", token.uses))
        })?;
        in_transaction!(self, "create_bootstrap_token", Access::Write, |conn| {
            let dialect = conn.dialect();
            let expires_at = dialect.now_plus(3);
            sql::query_as::<BootstrapTokenRow>(format!(
                "INSERT INTO bootstrap_tokens (id, secret_hash, expires_at, uses_left, created_by, \
                 node_pattern, may_replace) \
                 VALUES ($1, $2, {expires_at}, $4, $5, $6, $7) \
                 RETURNING {BOOTSTRAP_TOKEN_COLUMNS}"
            ))
            .bind(&token.id)
            .bind(token.secret_hash.0.as_slice())
            .bind(dialect.duration(token.ttl))
            .bind(uses)
            .bind(&token.created_by)
            .bind(token.node_pattern.as_ref().map(|pattern| pattern.as_str()))
            .bind(token.may_replace)
            .fetch_one(&mut *conn)
            .await
            .map_err(|error| {
                map_sqlx_error(error, || {
                    format!("bootstrap token {} already exists", token.id)
                })
            })?
            .try_into()
        })
    }

    async fn enroll_node(&self, enrolment: &Enrolment) -> StoreResult<EnrollOutcome> {
        in_transaction!(self, "enroll_node", Access::Write, |conn| {
            // Locked: concurrent enrolments with one token take turns, so
            // they never take more uses than it has.
            let dialect = conn.dialect();
            let (now, lock) = (dialect.now(), dialect.for_update());
            let token = sql::query_as::<TokenCheckRow>(format!(
                "SELECT {TOKEN_CHECK_COLUMNS}, expires_at <= {now} AS expired \
                 FROM bootstrap_tokens WHERE id = $1{lock}"
            ))
            .bind(&enrolment.token_id)
            .fetch_optional(&mut *conn)
            .await?;
            fleet::enroll(conn, enrolment, token.as_ref()).await
        })
    }

    async fn get_node(&self, name: &NodeName) -> StoreResult<Option<Node>> {
        in_transaction!(self, "get_node", Access::Read, |conn| {
            fleet::select_node(conn, name).await
        })
    }

    async fn list_nodes(&self, page: &PageRequest) -> StoreResult<Page<Node>> {
        in_transaction!(self, "list_nodes", Access::Read, |conn| {
            let rows = sql::query_as::<NodeRow>(format!(
                "{SELECT_NODES} WHERE name > $1 ORDER BY name LIMIT $2"
            ))
            .bind(page.after.as_deref().unwrap_or(""))
            .bind(overfetch(page.limit))
            .fetch_all(&mut *conn)
            .await?;
            let nodes: Vec<Node> = convert_all(rows)?;
            Ok(Page::from_overfetched(nodes, page.limit, |node| {
                node.name.to_string()
            }))
        })
    }

    async fn change_node(
        &self,
        name: &NodeName,
        change: &NodeChange,
    ) -> StoreResult<(Node, Option<NodeDesired>)> {
        in_transaction!(self, "change_node", Access::Write, |conn| {
            fleet::change_node(conn, name, change).await
        })
    }

    async fn update_node_inventory(
        &self,
        name: &NodeName,
        inventory: &crate::domain::NodeInventory,
        agent_version: &str,
    ) -> StoreResult<()> {
        in_transaction!(self, "update_node_inventory", Access::Write, |conn| {
            fleet::update_inventory(conn, name, inventory, agent_version).await
        })
    }

    async fn refresh_secret_hash(&self, name: &NodeName) -> StoreResult<Option<Option<Vec<u8>>>> {
        in_transaction!(self, "refresh_secret_hash", Access::Read, |conn| {
            fleet::refresh_secret_hash(conn, name).await
        })
    }

    async fn create_assignment(
        &self,
        new: &NewAssignment,
    ) -> StoreResult<(Assignment, Vec<NodeDesired>)> {
        in_transaction!(self, "create_assignment", Access::Write, |conn| {
            fleet::create_assignment(conn, new).await
        })
    }

    async fn remove_assignment(&self, target: &AssignmentTarget) -> StoreResult<Vec<NodeDesired>> {
        in_transaction!(self, "remove_assignment", Access::Write, |conn| {
            fleet::remove_assignment(conn, target).await
        })
    }

    async fn list_assignments(&self, page: &PageRequest) -> StoreResult<Page<Assignment>> {
        let after = page
            .after
            .as_deref()
            .map(|cursor| {
                cursor.parse::<u64>().map_err(|_| {
                    StoreError::FailedPrecondition(format!("invalid cursor {cursor:?}"))
                })
            })
            .transpose()?;
        in_transaction!(self, "list_assignments", Access::Read, |conn| {
            let assignments = fleet::list_assignments(conn, after, overfetch(page.limit)).await?;
            Ok(Page::from_overfetched(assignments, page.limit, |a| {
                a.generation.to_string()
            }))
        })
    }

    async fn write_reports(&self, reports: &[NodeReport]) -> StoreResult<()> {
        in_transaction!(self, "write_reports", Access::Write, |conn| {
            fleet::write_reports(conn, reports).await
        })
    }

    async fn write_health_minutes(&self, points: &[(NodeName, HealthPoint)]) -> StoreResult<()> {
        in_transaction!(self, "write_health_minutes", Access::Write, |conn| {
            fleet::write_health_minutes(conn, points).await
        })
    }

    async fn health_minutes(
        &self,
        name: &NodeName,
        since_unix: i64,
    ) -> StoreResult<Vec<HealthPoint>> {
        in_transaction!(self, "health_minutes", Access::Read, |conn| {
            fleet::read_health_minutes(conn, name, since_unix).await
        })
    }

    async fn prune_health_minutes(&self, before_unix: i64) -> StoreResult<u64> {
        in_transaction!(self, "prune_health_minutes", Access::Write, |conn| {
            fleet::prune_health_minutes(conn, before_unix).await
        })
    }

    async fn desired_changed_since(&self, after: u64) -> StoreResult<Vec<NodeDesired>> {
        in_transaction!(self, "desired_changed_since", Access::Read, |conn| {
            fleet::desired_changed_since(conn, after).await
        })
    }

    async fn change_feed(&self) -> StoreResult<Option<Box<dyn super::ChangeFeed>>> {
        match &self.pool {
            Pool::Postgres(pool) => postgres::change_feed(pool).await.map(Some),
            // One process owns a SQLite database: no other replica.
            Pool::Sqlite(_) => Ok(None),
        }
    }

    async fn exchange_routes(
        &self,
        replica: &str,
        routes: &[DirectoryEntry],
        changed: bool,
        fresh_within: Duration,
    ) -> StoreResult<Option<Vec<DirectoryEntry>>> {
        match self.pool {
            Pool::Postgres(_) => self
                .exchange_routes_postgres(replica, routes, changed, fresh_within)
                .await
                .map(Some),
            // One process owns a SQLite database: no other replica.
            Pool::Sqlite(_) => Ok(None),
        }
    }

    async fn create_rollout(&self, new: &NewRollout) -> StoreResult<(Rollout, Vec<RolloutNode>)> {
        in_transaction!(self, "create_rollout", Access::Write, |conn| {
            rollouts::create_rollout(conn, new, now_ms()).await
        })
    }

    async fn get_rollout(
        &self,
        name: &RolloutName,
    ) -> StoreResult<Option<(Rollout, Vec<RolloutNode>)>> {
        in_transaction!(self, "get_rollout", Access::Read, |conn| {
            let Some(rollout) = rollouts::select_rollout(conn, name).await? else {
                return Ok(None);
            };
            let nodes = rollouts::select_nodes(conn, name).await?;
            Ok(Some((rollout, nodes)))
        })
    }

    async fn list_rollouts(&self) -> StoreResult<Vec<Rollout>> {
        in_transaction!(self, "list_rollouts", Access::Read, |conn| {
            rollouts::list_rollouts(conn).await
        })
    }

    async fn update_rollout(
        &self,
        update: &RolloutUpdate,
    ) -> StoreResult<(Rollout, Vec<NodeDesired>)> {
        in_transaction!(self, "update_rollout", Access::Write, |conn| {
            rollouts::update_rollout(conn, update, now_ms()).await
        })
    }

    async fn delete_rollout(&self, deletion: &RolloutDeletion) -> StoreResult<DeletedRollout> {
        in_transaction!(self, "delete_rollout", Access::Write, |conn| {
            rollouts::delete_rollout(conn, deletion, now_ms()).await
        })
    }

    async fn pinned_nodes(&self) -> StoreResult<Vec<NodeName>> {
        in_transaction!(self, "pinned_nodes", Access::Read, |conn| {
            rollouts::pinned_nodes(conn).await
        })
    }

    async fn list_events(
        &self,
        rollout: Option<&RolloutName>,
        after: u64,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        in_transaction!(self, "list_events", Access::Read, |conn| {
            rollouts::list_events(conn, rollout, after, i64::from(limit)).await
        })
    }

    async fn try_lead(&self) -> StoreResult<Option<Box<dyn super::Leadership>>> {
        match &self.pool {
            Pool::Postgres(pool) => postgres::try_lead(pool).await,
            // One process owns a SQLite database.
            Pool::Sqlite(_) => Ok(Some(Box::new(super::SoleLeader))),
        }
    }

    // ---- registry lifecycle (issue 19) ----

    async fn delete_draft_version(
        &self,
        model: &ModelName,
        version: &semver::Version,
    ) -> StoreResult<()> {
        in_transaction!(self, "delete_draft_version", Access::Write, |conn| {
            let (id, state) = lock_version(conn, model, version).await?;
            if state != VersionState::Draft {
                return Err(StoreError::FailedPrecondition(format!(
                    "version {version} of model {model} is {state}; only drafts can be deleted \
                     (deprecate or yank a published version instead)"
                )));
            }
            sql::query("DELETE FROM artifacts WHERE version_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            sql::query("DELETE FROM model_versions WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    async fn delete_unused_model(&self, model: &ModelName) -> StoreResult<()> {
        in_transaction!(self, "delete_unused_model", Access::Write, |conn| {
            // Locked: a version created meanwhile waits, then fails its
            // foreign key, instead of being deleted unseen.
            let lock = conn.dialect().for_update();
            let model_id =
                sql::query_scalar::<i64>(format!("SELECT id FROM models WHERE name = $1{lock}"))
                    .bind(model.as_str())
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or_else(|| model_not_found(model))?;
            let published = sql::query_scalar::<String>(
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
            sql::query(
                "DELETE FROM artifacts WHERE version_id IN \
                 (SELECT id FROM model_versions WHERE model_id = $1)",
            )
            .bind(model_id)
            .execute(&mut *conn)
            .await?;
            sql::query("DELETE FROM model_versions WHERE model_id = $1")
                .bind(model_id)
                .execute(&mut *conn)
                .await?;
            sql::query("DELETE FROM models WHERE id = $1")
                .bind(model_id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    async fn append_events(&self, events: &[crate::domain::NewEvent]) -> StoreResult<()> {
        let now_ms = now_ms();
        in_transaction!(self, "append_events", Access::Write, |conn| {
            rollouts::insert_events(conn, events, now_ms).await
        })
    }

    // ---- identity and access (issue 16: control plane) ----

    async fn list_bootstrap_tokens(&self) -> StoreResult<Vec<BootstrapToken>> {
        in_transaction!(self, "list_bootstrap_tokens", Access::Read, |conn| {
            identity::list_bootstrap_tokens(conn).await
        })
    }

    async fn revoke_bootstrap_token(&self, id: &str) -> StoreResult<BootstrapToken> {
        in_transaction!(self, "revoke_bootstrap_token", Access::Write, |conn| {
            identity::revoke_bootstrap_token(conn, id).await
        })
    }

    async fn credential_generation(&self, name: &NodeName) -> StoreResult<Option<u64>> {
        in_transaction!(self, "credential_generation", Access::Read, |conn| {
            fleet::credential_generation(conn, name).await
        })
    }

    async fn approve_replacement(&self, name: &NodeName) -> StoreResult<()> {
        in_transaction!(self, "approve_replacement", Access::Write, |conn| {
            identity::approve_replacement(conn, name).await
        })
    }

    async fn remove_node(&self, name: &NodeName) -> StoreResult<()> {
        in_transaction!(self, "remove_node", Access::Write, |conn| {
            fleet::remove_node(conn, name).await
        })
    }

    async fn record_api_token(&self, token: &super::ApiToken) -> StoreResult<()> {
        in_transaction!(self, "record_api_token", Access::Write, |conn| {
            identity::record_api_token(conn, token).await
        })
    }

    async fn list_api_tokens(&self) -> StoreResult<Vec<super::ApiToken>> {
        in_transaction!(self, "list_api_tokens", Access::Read, |conn| {
            identity::list_api_tokens(conn).await
        })
    }

    async fn revoke_api_token(&self, id: &str) -> StoreResult<super::ApiToken> {
        in_transaction!(self, "revoke_api_token", Access::Write, |conn| {
            identity::revoke_api_token(conn, id).await
        })
    }

    async fn revoked_api_token_ids(&self) -> StoreResult<Vec<String>> {
        in_transaction!(self, "revoked_api_token_ids", Access::Read, |conn| {
            identity::revoked_api_token_ids(conn).await
        })
    }
}
