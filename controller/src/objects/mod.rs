//! The artifact blob store: content-addressed bytes in an object store
//! (a local directory by default, S3 in production) through `object_store`.
//!
//! Layout: `blobs/<blake3 hex>` holds verified, registered blobs;
//! `tmp/<uuid>` holds uploads in flight. An upload streams into `tmp/`, and
//! only once its digest is known and the registry accepted it is it moved to
//! its content address. Architecture invariant: nothing under `blobs/` is
//! ever written from a failed or unverified upload, and nothing under
//! `blobs/` is ever deleted by an upload path (another row may use it).
//!
//! S3: the endpoint and region come from `--s3-endpoint`/`--s3-region`
//! (else the `AWS_*` variables), credentials from the `AWS_*` variables.
//! The move from `tmp/` to `blobs/` is a server-side CopyObject up to
//! S3's 5 GiB limit and a streamed multipart copy above it, so uploads of
//! any size register.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};

use crate::domain::Digest;

/// Size of the parts an upload is cut into (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// How many parts may be in flight at once; with [`PART_SIZE`] this bounds an
/// upload's buffered memory to about 32 MiB whatever the file's size.
const MAX_PARTS_IN_FLIGHT: usize = 4;
/// S3's CopyObject copies at most 5 GiB; larger objects are copied part
/// by part through the controller.
const S3_COPY_OBJECT_LIMIT: u64 = 5 * 1024 * 1024 * 1024;

/// S3 settings beyond the `s3://bucket/prefix` URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// An S3-compatible server's URL; `http://` is allowed because it is
    /// named explicitly.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Overrides [`S3_COPY_OBJECT_LIMIT`] (tests).
    pub copy_limit_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("invalid object store url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("object store error: {0}")]
    Backend(#[from] object_store::Error),
    #[error("cannot prepare object directory {path}: {source}")]
    LocalDir {
        path: String,
        source: std::io::Error,
    },
    /// The store cannot be used as configured (a missing bucket, refused
    /// credentials, an unreachable endpoint): an operator must act.
    #[error("object store {store}: {reason}")]
    Unusable { store: String, reason: String },
}

/// Where blobs live, cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    description: String,
    /// Objects larger than this are moved by a streamed copy rather than
    /// the store's own copy (S3's CopyObject limit); `None`: no limit.
    copy_limit: Option<u64>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// A byte range of a blob and the blob's total size, for HTTP `Range`.
pub struct BlobRead {
    pub total_size: u64,
    pub range: Range<u64>,
    pub stream: BoxStream<'static, Result<Bytes, BlobError>>,
}

impl BlobStore {
    /// Opens the store named by `url` (`s3://bucket/prefix`, `file:///dir`),
    /// or a local directory when no URL is given.
    pub fn open(
        url: Option<&str>,
        default_dir: &FsPath,
        s3_options: &S3Options,
    ) -> Result<Self, BlobError> {
        match url {
            None => Self::local(default_dir),
            Some(url) => {
                let parsed = url::Url::parse(url).map_err(|e| BlobError::InvalidUrl {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
                match parsed.scheme() {
                    "file" => Self::local(FsPath::new(parsed.path())),
                    "s3" => {
                        let bucket = parsed.host_str().ok_or_else(|| BlobError::InvalidUrl {
                            url: url.to_owned(),
                            reason: "missing bucket name".into(),
                        })?;
                        let prefix = parsed.path().trim_matches('/');
                        let description = format!("s3://{bucket}/{prefix}");
                        let s3 = s3_builder(bucket, s3_options).build().map_err(|error| {
                            BlobError::Unusable {
                                store: description.clone(),
                                reason: error_chain(&error),
                            }
                        })?;
                        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                            Arc::new(s3)
                        } else {
                            Arc::new(PrefixStore::new(s3, prefix))
                        };
                        Ok(Self {
                            inner,
                            description,
                            copy_limit: Some(
                                s3_options.copy_limit_bytes.unwrap_or(S3_COPY_OBJECT_LIMIT),
                            ),
                        })
                    }
                    other => Err(BlobError::InvalidUrl {
                        url: url.to_owned(),
                        reason: format!("unsupported scheme {other:?}: use s3:// or file://"),
                    }),
                }
            }
        }
    }

    /// A store in a local directory, created if missing.
    pub fn local(dir: &FsPath) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir).map_err(|source| BlobError::LocalDir {
            path: dir.display().to_string(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            inner: Arc::new(store),
            description: format!("file://{}", dir.display()),
            copy_limit: None,
        })
    }

    /// Checks at start-up that the store is usable: lists `blobs/` and
    /// says what is wrong in an operator's words when it cannot.
    pub async fn check(&self) -> Result<(), BlobError> {
        let mut listing = self.inner.list(Some(&Path::from("blobs")));
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(self.unusable(&error)),
        }
    }

    /// An object store error, explained: the common misconfigurations
    /// named, the backend's own words kept.
    fn unusable(&self, error: &object_store::Error) -> BlobError {
        BlobError::Unusable {
            store: self.description.clone(),
            reason: explain(error),
        }
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    fn blob_path(digest: &Digest) -> Path {
        Path::from(format!("blobs/{}", digest.to_hex()))
    }

    /// Starts writing a new upload under `tmp/`.
    pub async fn begin_upload(&self) -> Result<PendingUpload, BlobError> {
        let path = Path::from(format!("tmp/{}", uuid::Uuid::new_v4().simple()));
        // The first write of an upload: where a bucket deleted since the
        // start, or revoked credentials, show first.
        let upload = self
            .inner
            .put_multipart(&path)
            .await
            .map_err(|error| self.unusable(&error))?;
        Ok(PendingUpload {
            store: self.clone(),
            path,
            writer: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)),
        })
    }

    pub async fn exists(&self, digest: &Digest) -> Result<bool, BlobError> {
        match self.inner.head(&Self::blob_path(digest)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads `range` (or all) of a blob.
    pub async fn read(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead, BlobError> {
        let options = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..Default::default()
        };
        let result = match self.inner.get_opts(&Self::blob_path(digest), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BlobError::NotFound(digest.short()));
            }
            Err(e) => return Err(e.into()),
        };
        let total_size = result.meta.size;
        let range = result.range.clone();
        let stream = result.into_stream().map_err(BlobError::from).boxed();
        Ok(BlobRead {
            total_size,
            range,
            stream,
        })
    }

    /// The size of a stored blob.
    pub async fn size(&self, digest: &Digest) -> Result<u64, BlobError> {
        match self.inner.head(&Self::blob_path(digest)).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound(digest.short())),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks that the store answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), BlobError> {
        let mut listing = self.inner.list(Some(&Path::from("blobs")));
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// Deletes uploads left in `tmp/` by a crash, older than `min_age`.
    /// Returns how many were removed.
    pub async fn sweep_stale_uploads(&self, min_age: Duration) -> Result<usize, BlobError> {
        let cutoff = std::time::SystemTime::now() - min_age;
        let stale: Vec<Path> = self
            .inner
            .list(Some(&Path::from("tmp")))
            .try_filter_map(|meta| async move {
                let modified = std::time::SystemTime::from(meta.last_modified);
                Ok((modified < cutoff).then_some(meta.location))
            })
            .try_collect()
            .await?;
        for path in &stale {
            match self.inner.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(stale.len())
    }

    /// How many uploads are in `tmp/` (tests check that failures leave none).
    pub async fn pending_upload_count(&self) -> Result<usize, BlobError> {
        Ok(self
            .inner
            .list(Some(&Path::from("tmp")))
            .try_collect::<Vec<_>>()
            .await?
            .len())
    }

    /// How many blobs are stored.
    pub async fn blob_count(&self) -> Result<usize, BlobError> {
        Ok(self
            .inner
            .list(Some(&Path::from("blobs")))
            .try_collect::<Vec<_>>()
            .await?
            .len())
    }
}

impl BlobStore {
    /// Copies `from` to `to` part by part through this process (bounded
    /// memory: [`MAX_PARTS_IN_FLIGHT`] parts of [`PART_SIZE`]), for objects
    /// the store cannot copy server-side. `to` appears whole or not at all
    /// (a multipart upload completes atomically).
    async fn streamed_copy(&self, from: &Path, to: &Path) -> Result<(), BlobError> {
        let upload = self.inner.put_multipart(to).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut source = self.inner.get(from).await?.into_stream();
        while let Some(chunk) = source.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    let _ = writer.abort().await;
                    return Err(error.into());
                }
            };
            if let Err(error) = writer.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(error.into());
            }
            writer.put(chunk);
        }
        writer.finish().await?;
        Ok(())
    }
}

/// The S3 client for `bucket`: the `AWS_*` variables, then the options
/// (which win). An `http://` endpoint, from either, is allowed: it was
/// named explicitly, and without it every request would fail with the
/// HTTP client's bare "builder error".
fn s3_builder(bucket: &str, options: &S3Options) -> AmazonS3Builder {
    use object_store::aws::AmazonS3ConfigKey;
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
    if endpoint.is_some_and(|endpoint| endpoint.starts_with("http://")) {
        builder = builder.with_allow_http(true);
    }
    builder
}

/// Names the usual misconfigurations; keeps the backend's words.
fn explain(error: &object_store::Error) -> String {
    let chain = error_chain(error);
    let hint = if chain.contains("NoSuchBucket") {
        "the bucket does not exist: create it, or fix the s3:// URL"
    } else if chain.contains("InvalidAccessKeyId")
        || chain.contains("SignatureDoesNotMatch")
        || chain.contains("403 Forbidden")
        || chain.contains("AccessDenied")
    {
        "the credentials were refused: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    } else if chain.contains("builder error") {
        "the request could not be built: is the endpoint a valid URL?"
    } else if chain.contains("error sending request") || chain.contains("Connection refused") {
        "the endpoint cannot be reached: check --s3-endpoint (or AWS_ENDPOINT) and the network"
    } else {
        "the store refused the request"
    };
    format!("{hint} ({chain})")
}

/// An error and its sources, joined: the interesting part of an HTTP
/// client's error is usually three levels down.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// An upload being written to `tmp/`. Call [`PendingUpload::finish`], then
/// either [`PendingUpload::promote`] or [`PendingUpload::discard`]; dropping it
/// half-written leaves a `tmp/` object for the start-up sweep.
pub struct PendingUpload {
    store: BlobStore,
    path: Path,
    writer: Option<WriteMultipart>,
}

impl PendingUpload {
    /// Appends bytes, waiting while too many parts are in flight, so memory
    /// stays bounded however fast the client sends.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        if let Some(writer) = self.writer.as_mut() {
            writer.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await?;
            writer.put(chunk);
        }
        Ok(())
    }

    /// Completes the write to `tmp/`.
    pub async fn finish(&mut self) -> Result<(), BlobError> {
        if let Some(writer) = self.writer.take() {
            writer.finish().await?;
        }
        Ok(())
    }

    /// Moves the finished upload to `blobs/<digest>`. If that blob exists
    /// already (same bytes), the upload is simply deleted: nothing new is
    /// stored. Content addressing makes a concurrent overwrite harmless.
    pub async fn promote(self, digest: &Digest) -> Result<(), BlobError> {
        let target = BlobStore::blob_path(digest);
        if self.store.exists(digest).await? {
            return self.discard().await;
        }
        let size = self.store.inner.head(&self.path).await?.size;
        match self.store.copy_limit {
            Some(limit) if size > limit => {
                self.store.streamed_copy(&self.path, &target).await?;
                self.store.inner.delete(&self.path).await?;
            }
            _ => self.store.inner.rename(&self.path, &target).await?,
        }
        Ok(())
    }

    /// Aborts or deletes the upload; nothing of it remains.
    pub async fn discard(mut self) -> Result<(), BlobError> {
        if let Some(writer) = self.writer.take() {
            // An unfinished multipart upload is aborted rather than completed.
            writer.abort().await?;
            return Ok(());
        }
        match self.store.inner.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
