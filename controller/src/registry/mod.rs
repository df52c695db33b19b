//! The model registry: models, semver versions, artifacts, system prompts and
//! escalation policies (`policies.rs`),
//! and the resolution of a requirement to an exact artifact.
//!
//! This is business logic over the [`Store`] (rows) and the [`BlobStore`]
//! (bytes). The one delicate path is [`Registry::upload_artifact`]: bytes
//! stream into `tmp/` while a blocking thread hashes and parses them; a bad
//! file or a digest mismatch discards the upload; a good one is moved to
//! `blobs/<digest>` inside the transaction that inserts its row, so a row never
//! exists without its blob and a failed insert leaves no blob behind.

mod inspect;
mod policies;

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::Mutex;

use crate::domain::{
    Artifact, ArtifactFormat, Digest, Model, ModelName, ModelVersion, NewArtifact, Page,
    PageRequest, PromptName, PromptSummary, Quantization, QuantizationPolicy, Resolution,
    ResolveError, Servability, SystemPrompt, VersionState, resolve,
};
use crate::objects::{BlobError, BlobStore, PendingUpload};
use crate::store::{ArtifactInsert, BeforeCommit, Store, StoreError};

/// Context window assumed when estimating the memory an artifact needs: agents
/// serve with at most this many tokens of KV cache unless configured
/// otherwise, so sizing for a 128k-token context would overstate needs ~30x.
pub const SERVING_CONTEXT_TOKENS: u64 = 4096;

/// Longest system prompt accepted (a prompt, not a document).
const MAX_PROMPT_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The uploaded bytes are not an acceptable artifact.
    #[error("{0}")]
    InvalidArtifact(String),
    #[error("upload is larger than the limit of {limit_bytes} bytes")]
    TooLarge { limit_bytes: u64 },
    #[error("upload interrupted: {0}")]
    Interrupted(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(missing) => Self::NotFound(missing.to_string()),
            StoreError::AlreadyExists(message) => Self::AlreadyExists(message),
            StoreError::FailedPrecondition(message) => Self::FailedPrecondition(message),
            other => Self::Store(other),
        }
    }
}

pub type RegistryResult<T> = Result<T, RegistryError>;

/// An artifact upload's parameters (the bytes come separately, as a stream).
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub model: ModelName,
    pub version: semver::Version,
    /// The digest the client expects; a mismatch refuses the upload.
    pub declared_digest: Option<Digest>,
    /// When set, the file's own quantization must be this one.
    pub expected_quantization: Option<Quantization>,
}

/// The outcome of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    Created(Artifact),
    /// The version already had this exact file; nothing new was stored.
    AlreadyPresent(Artifact),
}

impl UploadOutcome {
    pub fn artifact(&self) -> &Artifact {
        match self {
            Self::Created(artifact) | Self::AlreadyPresent(artifact) => artifact,
        }
    }
}

/// A version together with its artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionWithArtifacts {
    pub version: ModelVersion,
    pub artifacts: Vec<Artifact>,
}

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    blobs: BlobStore,
    max_upload_bytes: u64,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, blobs: BlobStore, max_upload_bytes: u64) -> Self {
        Self {
            store,
            blobs,
            max_upload_bytes,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    // ---- models and versions ----

    pub async fn create_model(&self, name: &ModelName, description: &str) -> RegistryResult<Model> {
        Ok(self.store.create_model(name, description).await?)
    }

    pub async fn model(&self, name: &ModelName) -> RegistryResult<Model> {
        self.store
            .get_model(name)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("model {name} not found")))
    }

    pub async fn list_models(&self, page: &PageRequest) -> RegistryResult<Page<Model>> {
        Ok(self.store.list_models(page).await?)
    }

    pub async fn create_version(
        &self,
        model: &ModelName,
        version: &semver::Version,
        notes: &str,
    ) -> RegistryResult<ModelVersion> {
        Ok(self.store.create_version(model, version, notes).await?)
    }

    pub async fn version(
        &self,
        model: &ModelName,
        version: &semver::Version,
    ) -> RegistryResult<VersionWithArtifacts> {
        let found = self
            .store
            .get_version(model, version)
            .await?
            .ok_or_else(|| {
                RegistryError::NotFound(format!("model {model} has no version {version}"))
            })?;
        let artifacts = self.store.list_artifacts(model, version).await?;
        Ok(VersionWithArtifacts {
            version: found,
            artifacts,
        })
    }

    /// One page of a model's versions, each with its artifacts.
    pub async fn list_versions(
        &self,
        model: &ModelName,
        page: &PageRequest,
    ) -> RegistryResult<Page<VersionWithArtifacts>> {
        // Check the model first, so an unknown model is a 404, not an empty list.
        self.model(model).await?;
        let versions = self.store.list_versions(model, page).await?;
        let mut items = Vec::with_capacity(versions.items.len());
        for version in versions.items {
            let artifacts = self.store.list_artifacts(model, &version.version).await?;
            items.push(VersionWithArtifacts { version, artifacts });
        }
        Ok(Page {
            items,
            next_cursor: versions.next_cursor,
        })
    }

    pub async fn set_version_state(
        &self,
        model: &ModelName,
        version: &semver::Version,
        next: VersionState,
    ) -> RegistryResult<VersionWithArtifacts> {
        if next == VersionState::Draft {
            return Err(RegistryError::InvalidArgument(
                "a version cannot go back to draft: create a new version instead".into(),
            ));
        }
        self.store.set_version_state(model, version, next).await?;
        self.version(model, version).await
    }

    /// Deletes a draft version (say, one a refused upload left behind).
    pub async fn delete_draft_version(
        &self,
        model: &ModelName,
        version: &semver::Version,
    ) -> RegistryResult<()> {
        Ok(self.store.delete_draft_version(model, version).await?)
    }

    /// Deletes a model that was never published, with its drafts.
    pub async fn delete_unused_model(&self, model: &ModelName) -> RegistryResult<()> {
        Ok(self.store.delete_unused_model(model).await?)
    }

    pub async fn resolve(
        &self,
        model: &ModelName,
        requirement: &semver::VersionReq,
        policy: &QuantizationPolicy,
        memory_budget_bytes: Option<u64>,
    ) -> RegistryResult<Resolution> {
        self.model(model).await?;
        let candidates = self.store.resolvable_versions(model).await?;
        resolve(
            model.as_str(),
            &candidates,
            requirement,
            policy,
            memory_budget_bytes,
        )
        .map_err(|error| match error {
            ResolveError::Unservable { .. } => RegistryError::FailedPrecondition(error.to_string()),
            _ => RegistryError::NotFound(error.to_string()),
        })
    }

    pub async fn artifacts_by_digest(&self, digest: &Digest) -> RegistryResult<Vec<Artifact>> {
        Ok(self.store.find_artifacts_by_digest(digest).await?)
    }

    // ---- artifacts ----

    /// Streams an artifact into the registry. See the module docs for the
    /// guarantees; on every error path the upload is discarded.
    pub async fn upload_artifact<S, E>(
        &self,
        request: UploadRequest,
        body: S,
    ) -> RegistryResult<UploadOutcome>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        // Fail fast, before reading gigabytes, when the target cannot take it.
        let target = self.version(&request.model, &request.version).await?;
        if target.version.state != VersionState::Draft {
            return Err(RegistryError::FailedPrecondition(format!(
                "version {} of model {} is {}; artifacts can be added only to drafts",
                request.version, request.model, target.version.state
            )));
        }

        let mut upload = self.blobs.begin_upload().await?;
        let received = self.receive(&mut upload, body).await;
        let inspection = match received {
            Ok(inspection) => inspection,
            Err(error) => {
                discard_logged(upload).await;
                return Err(error);
            }
        };
        let new_artifact = match describe_artifact(&request, inspection) {
            Ok(artifact) => artifact,
            Err(error) => {
                discard_logged(upload).await;
                return Err(error);
            }
        };

        // The blob is moved to its content address inside the insert's
        // transaction. The upload handle is shared with the callback, so that
        // when the callback does not run (same file already registered) or
        // the insert fails, it is still here to discard.
        let upload = Arc::new(Mutex::new(Some(upload)));
        let promote_slot = Arc::clone(&upload);
        let digest = new_artifact.digest;
        let before_commit: BeforeCommit = Box::new(move || {
            Box::pin(async move {
                let pending = promote_slot.lock().await.take();
                match pending {
                    Some(pending) => pending.promote(&digest).await.map_err(|e| e.to_string()),
                    None => Err("upload already consumed".to_owned()),
                }
            })
        });
        let inserted = self
            .store
            .add_artifact(
                &request.model,
                &request.version,
                &new_artifact,
                before_commit,
            )
            .await;
        if let Some(pending) = upload.lock().await.take() {
            discard_logged(pending).await;
        }
        match inserted {
            Ok(ArtifactInsert::Created(artifact)) => {
                tracing::info!(model = %request.model, version = %request.version, digest = %digest,
                    quantization = %artifact.quantization, size_bytes = artifact.size_bytes, "artifact stored");
                metrics::counter!("flotilla_artifact_uploads_total", "outcome" => "created")
                    .increment(1);
                metrics::counter!("flotilla_artifact_upload_bytes_total")
                    .increment(artifact.size_bytes);
                Ok(UploadOutcome::Created(artifact))
            }
            Ok(ArtifactInsert::AlreadyPresent(artifact)) => {
                metrics::counter!("flotilla_artifact_uploads_total", "outcome" => "duplicate")
                    .increment(1);
                Ok(UploadOutcome::AlreadyPresent(artifact))
            }
            Err(StoreError::BeforeCommit(message)) => {
                Err(RegistryError::Store(StoreError::BeforeCommit(format!(
                    "storing blob {} failed: {message}",
                    digest.short()
                ))))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Copies the body into the pending upload and through the inspector.
    async fn receive<S, E>(
        &self,
        upload: &mut PendingUpload,
        mut body: S,
    ) -> RegistryResult<inspect::Inspection>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let (inspector, inspection) = inspect::spawn_inspector();
        let mut received: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Interrupted(e.to_string()))?;
            received += chunk.len() as u64;
            if received > self.max_upload_bytes {
                return Err(RegistryError::TooLarge {
                    limit_bytes: self.max_upload_bytes,
                });
            }
            // The inspector only stops early if it panicked; then the join
            // below reports it.
            let _ = inspector.send(chunk.clone()).await;
            upload.write(chunk).await?;
        }
        drop(inspector);
        upload.finish().await?;
        inspection
            .await
            .map_err(|e| RegistryError::Interrupted(format!("artifact inspection failed: {e}")))
    }

    // ---- system prompts ----

    pub async fn create_prompt_version(
        &self,
        name: &PromptName,
        text: &str,
        chat_template: Option<&str>,
    ) -> RegistryResult<SystemPrompt> {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(RegistryError::InvalidArgument(format!(
                "system prompt is {} bytes; the limit is {MAX_PROMPT_BYTES}",
                text.len()
            )));
        }
        if text.trim().is_empty() {
            return Err(RegistryError::InvalidArgument(
                "system prompt text is empty".into(),
            ));
        }
        if let Some(template) = chat_template
            && template.len() > MAX_PROMPT_BYTES
        {
            return Err(RegistryError::InvalidArgument(format!(
                "chat template is {} bytes; the limit is {MAX_PROMPT_BYTES}",
                template.len()
            )));
        }
        Ok(self
            .store
            .create_prompt_version(name, text, chat_template)
            .await?)
    }

    pub async fn prompt(
        &self,
        name: &PromptName,
        version: Option<u32>,
    ) -> RegistryResult<SystemPrompt> {
        self.store
            .get_prompt(name, version)
            .await?
            .ok_or_else(|| match version {
                Some(version) => {
                    RegistryError::NotFound(format!("prompt {name} has no version {version}"))
                }
                None => RegistryError::NotFound(format!("prompt {name} not found")),
            })
    }

    pub async fn list_prompts(&self, page: &PageRequest) -> RegistryResult<Page<PromptSummary>> {
        Ok(self.store.list_prompts(page).await?)
    }

    pub async fn list_prompt_versions(
        &self,
        name: &PromptName,
        page: &PageRequest,
    ) -> RegistryResult<Page<SystemPrompt>> {
        self.prompt(name, None).await?;
        Ok(self.store.list_prompt_versions(name, page).await?)
    }
}

/// Checks an inspected upload and turns it into the artifact to record.
fn describe_artifact(
    request: &UploadRequest,
    inspection: inspect::Inspection,
) -> RegistryResult<NewArtifact> {
    let digest = inspection.digest;
    if let Some(declared) = request.declared_digest
        && declared != digest
    {
        return Err(RegistryError::InvalidArtifact(format!(
            "digest mismatch: the upload's blake3 is {digest}, but {declared} was declared"
        )));
    }
    let header = inspection
        .header
        .map_err(|e| RegistryError::InvalidArtifact(format!("not a valid GGUF file: {e}")))?;
    let required = header.required_file_size();
    if inspection.size_bytes < required {
        return Err(RegistryError::InvalidArtifact(format!(
            "truncated GGUF file: it is {} bytes, but its tensors need {required}",
            inspection.size_bytes
        )));
    }
    // Writers pad the tensor data to the file's alignment, so up to one
    // alignment unit may follow the last tensor; anything beyond is bytes
    // that no tensor describes (a concatenated file, junk), refused rather
    // than stored and served.
    let padded = required.div_ceil(header.alignment.max(1)) * header.alignment.max(1);
    if inspection.size_bytes > padded {
        return Err(RegistryError::InvalidArtifact(format!(
            "GGUF file has {} bytes after its last tensor: it is {} bytes, but its tensors end at {required}",
            inspection.size_bytes - required,
            inspection.size_bytes
        )));
    }
    let architecture = header
        .architecture()
        .ok_or_else(|| {
            RegistryError::InvalidArtifact("GGUF file has no general.architecture".into())
        })?
        .to_owned();
    let quantization = header
        .quantization()
        .ok_or_else(|| {
            RegistryError::InvalidArtifact("cannot tell the GGUF file's quantization".into())
        })?
        .parse::<Quantization>()
        .map_err(|e| RegistryError::InvalidArtifact(e.to_string()))?;
    if let Some(expected) = &request.expected_quantization
        && expected != &quantization
    {
        return Err(RegistryError::InvalidArtifact(format!(
            "the file's quantization is {quantization}, but {expected} was requested"
        )));
    }
    let context_length = header.context_length();
    let serving_context = context_length
        .unwrap_or(SERVING_CONTEXT_TOKENS)
        .min(SERVING_CONTEXT_TOKENS);
    let memory_estimate_bytes = header
        .memory_estimate(serving_context)
        .unwrap_or_else(|| header.tensor_data_size());
    Ok(NewArtifact {
        digest,
        size_bytes: inspection.size_bytes,
        format: ArtifactFormat::Gguf,
        quantization,
        architecture,
        parameter_count: header.parameter_count(),
        context_length,
        memory_estimate_bytes,
        servability: inspection
            .engine_verdict
            .map_or(Servability::Unchecked, Servability::judged),
    })
}

async fn discard_logged(upload: PendingUpload) {
    if let Err(error) = upload.discard().await {
        // The start-up sweep removes it later; nothing else depends on it.
        tracing::warn!(%error, "could not delete a discarded upload from tmp/");
    }
}
