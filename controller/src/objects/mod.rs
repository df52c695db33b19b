//! The artifact blob store: content-addressed bytes in an object store
//! (a local directory by default, S3 in production) through `object_store`.
//!
//! Layout: `blobs/<blake3 hex>` holds verified, registered blobs;
//! `tmp/<uuid>` holds uploads in flight. An upload streams into `tmp/`, and
//! only once its digest is known and the registry accepted it is it moved to
//! its content address. Architecture invariant: nothing under `blobs/` is
//! ever written from a failed or unverified upload, and nothing under
//! `blobs/` is ever deleted by an upload path (another row may use it).

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
}

/// Where blobs live, cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    description: String,
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
    pub fn open(url: Option<&str>, default_dir: &FsPath) -> Result<Self, BlobError> {
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
                        // Credentials and region come from the usual AWS_* variables.
                        let s3 = AmazonS3Builder::from_env()
                            .with_bucket_name(bucket)
                            .build()?;
                        let prefix = parsed.path().trim_matches('/');
                        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                            Arc::new(s3)
                        } else {
                            Arc::new(PrefixStore::new(s3, prefix))
                        };
                        Ok(Self {
                            inner,
                            description: format!("s3://{bucket}/{prefix}"),
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
        })
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
        let upload = self.inner.put_multipart(&path).await?;
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
        self.store.inner.rename(&self.path, &target).await?;
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
