//! The agent's artifact cache: content-addressed blobs downloaded from the
//! controller, verified, and kept within a disk budget.
//!
//! # On disk (`DATA_DIR/cache`)
//! - `blobs/<blake3-hex>`: complete blobs whose blake3 digest and size matched.
//!   Architecture invariant: a blob is renamed into `blobs/` only after its
//!   digest matched (see [`part::VerifiedPart`]); nothing else writes there.
//!   A blob's modification time is its last use, which is what least-recently-
//!   used eviction orders by, so that order survives restarts without an index.
//! - `tmp/<blake3-hex>.part`: a download in progress. Its bytes are a prefix of
//!   the blob as the controller sent it.
//!
//! # Resuming: re-hash the `.part`, no sidecar
//! A resumed download needs the blake3 state of the bytes already on disk.
//! blake3's hasher state cannot be serialised, so a sidecar could only record
//! a byte count and the prefix would have to be read and hashed again anyway;
//! re-hashing runs at well over 1 GB/s, and the `.part` file alone is then the
//! only state, with no second file to keep consistent across crashes. The
//! prefix is not trusted: if a crash left garbage in it, the final digest does
//! not match, the `.part` is deleted and the next attempt starts from zero.
//!
//! # Trusting a cached blob: re-hash once per process, no seal
//! A blob is handed out only when this process has seen its bytes match
//! its digest: it downloaded and verified them, or it re-hashed the file
//! (blake3 over an mmap, on all cores through rayon, on the blocking pool)
//! the first time the blob was asked for. So after a restart every blob is
//! read once before it is loaded. A sealed digest (a sidecar or an xattr
//! written at verification time, trusted while size and mtime stay the same)
//! would skip that read, but what it seals is metadata: a flipped bit on the
//! medium, or a write that restores the mtime, keeps the seal and changes the
//! bytes. Only reading the bytes proves them, and blake3 reads a 100 MB
//! artifact in well under a second (several GB/s on a few cores), which is
//! small beside loading the model. A blob that fails the check is deleted and
//! fetched again; so is one the engine cannot load ([`ArtifactCache::discard`]).
//!
//! # Disk space
//! Before a download the cache makes room for what is still missing plus a
//! margin ([`space::MARGIN_BYTES`]) on the filesystem, and keeps its own total
//! within the configured budget, evicting least-recently-used blobs that are
//! not in use ([`ArtifactCache::set_in_use`]). A blob that cannot fit is
//! refused with [`CacheError::NoSpace`] before a byte is written, and a
//! download that runs out of space anyway deletes its `.part`.
//!
//! # In memory only
//! A per-digest async mutex (one download per digest; other callers wait and
//! then find the blob), the set of digests verified by this process, the set
//! in use, a semaphore bounding concurrent downloads, the HTTP client, and
//! counters ([`CacheStats`]).

mod download;
mod part;
mod rate;
mod source;
mod space;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::Semaphore;

pub use flotilla_digest::{Digest, DigestParseError};
pub use source::{BlobSource, SharedToken};

use crate::tls::CaTrust;
use download::AttemptError;
use part::{DigestLock, PartFile};

/// Bytes gathered from the network before one write to the `.part` file:
/// large enough that the hand-off to the blocking pool is cheap per byte,
/// small enough that an interruption loses little.
const FLUSH_BYTES: usize = 1 << 20;

/// Tunables of the cache. [`CacheConfig::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The cache directory, normally `DATA_DIR/cache`.
    pub root: PathBuf,
    /// Downloads running at once, over all digests.
    pub max_concurrent_downloads: usize,
    /// Digest or size mismatches tolerated for one blob before giving up.
    pub max_verification_attempts: u32,
    /// Consecutive network failures without progress before giving up.
    pub max_network_attempts: u32,
    /// First retry delay after a network failure; doubles each time.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest silence on an open connection before it counts as cut.
    pub read_timeout: Duration,
    /// Network bytes per second over all downloads together; `None`: as
    /// fast as the link allows.
    pub max_download_bytes_per_second: Option<u64>,
    /// Which certificates an `https://` blob URL may present.
    pub trust: CaTrust,
    /// The most bytes of blobs the cache may hold; a blob larger than this
    /// is refused before it is downloaded. `None`: only the disk limits it.
    pub budget_bytes: Option<u64>,
}

impl CacheConfig {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("cache"),
            max_concurrent_downloads: 2,
            max_verification_attempts: 3,
            max_network_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_download_bytes_per_second: None,
            trust: CaTrust::system(),
            budget_bytes: None,
        }
    }
}

/// Download progress of one blob: bytes written to its partial file so far,
/// out of its full size (what the agent reports as "downloading n/m bytes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// One blob in `blobs/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedBlob {
    pub digest: Digest,
    pub size_bytes: u64,
}

/// Counters since the cache was opened (for metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blob requests sent to a source.
    pub http_requests: u64,
    /// Body bytes received from sources.
    pub network_bytes: u64,
    /// Downloads that completed but did not match their digest or size.
    pub verification_failures: u64,
    /// Cached blobs whose bytes no longer matched their digest when
    /// re-hashed (deleted and fetched again).
    pub corrupt_cached_blobs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("blob blake3:{digest} failed verification {attempts} times; last: {reason}")]
    Corrupt {
        digest: Digest,
        attempts: u32,
        reason: String,
    },
    #[error("source refused blob blake3:{digest} with {status}: {message}")]
    Rejected {
        digest: Digest,
        status: u16,
        message: String,
    },
    #[error(
        "blob blake3:{digest} could not be downloaded after {attempts} attempts; last: {reason}"
    )]
    Unavailable {
        digest: Digest,
        attempts: u32,
        reason: String,
    },
    #[error("not enough disk space for blob blake3:{digest} ({size_bytes} bytes): {reason}")]
    NoSpace {
        digest: Digest,
        size_bytes: u64,
        reason: String,
    },
    #[error("invalid blob source {url:?}: {reason}")]
    InvalidSource { url: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl CacheError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> CacheError {
        let context = context.into();
        move |source| CacheError::Io { context, source }
    }
}

#[derive(Default)]
struct Counters {
    http_requests: AtomicU64,
    network_bytes: AtomicU64,
    verification_failures: AtomicU64,
    corrupt_cached_blobs: AtomicU64,
}

/// The artifact cache. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct ArtifactCache {
    config: CacheConfig,
    source: BlobSource,
    client: reqwest::Client,
    downloads: Semaphore,
    locks: Mutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>,
    counters: Counters,
    rate_limit: Option<rate::RateLimiter>,
    /// Digests whose bytes this process has seen match (see the module docs).
    verified: Mutex<HashSet<Digest>>,
    /// Digests assigned or served: never evicted to make room.
    in_use: Mutex<HashSet<Digest>>,
}

impl ArtifactCache {
    /// Opens the cache under `config.root`, creating its directories, and
    /// removes files that cannot belong there (names that are not digests).
    /// Partial downloads are kept so that they resume.
    pub async fn open(config: CacheConfig, source: BlobSource) -> Result<Self, CacheError> {
        let client = config
            .trust
            .http_client(reqwest::Client::builder())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .build()
            .map_err(|error| CacheError::InvalidSource {
                url: source.blob_url(&Digest::from_bytes([0; 32])),
                reason: format!("cannot build an http client: {error}"),
            })?;
        let cache = Self {
            downloads: Semaphore::new(config.max_concurrent_downloads.max(1)),
            rate_limit: config
                .max_download_bytes_per_second
                .map(rate::RateLimiter::new),
            config,
            source,
            client,
            locks: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            verified: Mutex::new(HashSet::new()),
            in_use: Mutex::new(HashSet::new()),
        };
        let (blobs, tmp) = (cache.blobs_dir(), cache.tmp_dir());
        blocking(move || {
            std::fs::create_dir_all(&blobs)?;
            std::fs::create_dir_all(&tmp)?;
            remove_strays(&blobs, |name| name.parse::<Digest>().is_ok())?;
            remove_strays(&tmp, |name| {
                name.strip_suffix(".part")
                    .is_some_and(|digest| digest.parse::<Digest>().is_ok())
            })
        })
        .await
        .map_err(CacheError::io(format!(
            "cannot prepare the cache in {}",
            cache.config.root.display()
        )))?;
        Ok(cache)
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            http_requests: self.counters.http_requests.load(Ordering::Relaxed),
            network_bytes: self.counters.network_bytes.load(Ordering::Relaxed),
            verification_failures: self.counters.verification_failures.load(Ordering::Relaxed),
            corrupt_cached_blobs: self.counters.corrupt_cached_blobs.load(Ordering::Relaxed),
        }
    }

    /// Where the blob with `digest` lives once cached.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.to_hex())
    }

    /// Where a download of `digest` in progress is written.
    pub fn part_path(&self, digest: &Digest) -> PathBuf {
        self.tmp_dir().join(format!("{}.part", digest.to_hex()))
    }

    fn blobs_dir(&self) -> PathBuf {
        self.config.root.join("blobs")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.config.root.join("tmp")
    }

    /// Returns the path of the verified blob, downloading it from the
    /// configured source first when it is not cached.
    ///
    /// `progress` hears the bytes present in the partial file: first where
    /// this call starts (non-zero when it resumes), then after every write,
    /// and `bytes_total` once the blob is verified and in place.
    ///
    /// Errors: [`CacheError::Corrupt`] after `max_verification_attempts`
    /// downloads that did not match the digest or size (each one deleted and
    /// started over); [`CacheError::Rejected`] at once for a 4xx answer, with
    /// the server's message; [`CacheError::Unavailable`] after
    /// `max_network_attempts` consecutive network failures that made no
    /// progress, each followed by a jittered exponential backoff;
    /// [`CacheError::Io`] for local disk trouble.
    pub async fn ensure(
        &self,
        digest: &Digest,
        size_bytes: u64,
        progress: impl Fn(Progress) + Send + Sync,
    ) -> Result<PathBuf, CacheError> {
        self.ensure_from(&self.source, digest, size_bytes, progress)
            .await
    }

    /// [`ArtifactCache::ensure`] from a given source (a peer agent, later).
    ///
    /// Cancel-safe: dropping the future leaves at most a `.part` file that the
    /// next call resumes from.
    #[tracing::instrument(name = "download", skip_all, fields(digest = %digest, size_bytes = size_bytes))]
    pub async fn ensure_from(
        &self,
        source: &BlobSource,
        digest: &Digest,
        size_bytes: u64,
        progress: impl Fn(Progress) + Send + Sync,
    ) -> Result<PathBuf, CacheError> {
        let done = Progress {
            bytes_done: size_bytes,
            bytes_total: size_bytes,
        };
        if let Some(path) = self.cached(digest, size_bytes).await? {
            progress(done);
            return Ok(path);
        }
        let lock: DigestLock = Arc::new(self.digest_lock(digest).lock_owned().await);
        // Whoever held the lock before may have finished this blob.
        if let Some(path) = self.cached(digest, size_bytes).await? {
            progress(done);
            return Ok(path);
        }
        self.make_room(digest, size_bytes).await?;
        let mut verification_failures = 0u32;
        let mut network_failures = 0u32;
        let mut kept_part: Option<PartFile> = None;
        loop {
            let before = kept_part.as_ref().map(|part| part.len);
            // The permit is taken per attempt, so a download waiting out its
            // backoff does not hold up others.
            let permit = self.downloads.acquire().await.map_err(|_| CacheError::Io {
                context: format!(
                    "cannot download blob blake3:{digest}: the cache is shutting down"
                ),
                source: io::Error::other("download semaphore closed"),
            })?;
            let outcome = self
                .attempt(
                    source,
                    digest,
                    size_bytes,
                    &lock,
                    kept_part.take(),
                    &progress,
                )
                .await;
            drop(permit);
            let error = match outcome {
                Ok(verified) => {
                    let blob_path = self.blob_path(digest);
                    let target = blob_path.clone();
                    blocking(move || {
                        verified.promote(&target)?;
                        touch_file(&target)
                    })
                    .await
                    .map_err(CacheError::io(format!(
                        "cannot move verified blob blake3:{digest} into the cache"
                    )))?;
                    lock_set(&self.verified).insert(*digest);
                    tracing::info!(digest = %digest.short(), size_bytes, "blob verified and cached");
                    progress(done);
                    return Ok(blob_path);
                }
                Err(error) => error,
            };
            match error {
                AttemptError::Corrupt(reason) => {
                    verification_failures += 1;
                    self.counters
                        .verification_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(digest = %digest.short(), attempt = verification_failures, %reason,
                        "downloaded blob failed verification; discarded");
                    if verification_failures >= self.config.max_verification_attempts {
                        return Err(CacheError::Corrupt {
                            digest: *digest,
                            attempts: verification_failures,
                            reason,
                        });
                    }
                }
                AttemptError::Network { reason, part } => {
                    let after = part.as_ref().map(|part| part.len);
                    // A flaky link that keeps delivering bytes is not a reason
                    // to give up: only failures without progress add up.
                    if after.unwrap_or(0) > before.unwrap_or(0) {
                        network_failures = 0;
                    }
                    network_failures += 1;
                    kept_part = part;
                    if network_failures >= self.config.max_network_attempts {
                        return Err(CacheError::Unavailable {
                            digest: *digest,
                            attempts: network_failures,
                            reason,
                        });
                    }
                    let delay = backoff_delay(&self.config, network_failures);
                    tracing::info!(digest = %digest.short(), attempt = network_failures, %reason,
                        delay_ms = delay.as_millis() as u64, "blob download interrupted; retrying");
                    tokio::time::sleep(delay).await;
                }
                AttemptError::Rejected { status, message } => {
                    return Err(CacheError::Rejected {
                        digest: *digest,
                        status,
                        message,
                    });
                }
                AttemptError::Io(error) => {
                    return Err(self.after_io_error(digest, size_bytes, error).await);
                }
            }
        }
    }

    /// The per-digest download lock; entries vanish when no one holds them.
    fn digest_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(lock) = locks.get(digest).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(*digest, Arc::downgrade(&lock));
        lock
    }

    /// The blob's path when it is cached with the right size and its bytes
    /// have been seen to match `digest` by this process (re-hashing the file
    /// the first time; see the module docs). A blob of the wrong size or the
    /// wrong bytes is removed here, so that the caller downloads it again.
    async fn cached(
        &self,
        digest: &Digest,
        size_bytes: u64,
    ) -> Result<Option<PathBuf>, CacheError> {
        let path = self.blob_path(digest);
        let checked = path.clone();
        let digest_copy = *digest;
        let already_verified = lock_set(&self.verified).contains(digest);
        let state = blocking(move || match std::fs::metadata(&checked) {
            Ok(metadata) if metadata.len() == size_bytes => {
                if !already_verified {
                    let started = std::time::Instant::now();
                    let actual = part::hash_file_parallel(&checked)?;
                    if actual != digest_copy {
                        tracing::warn!(digest = %digest_copy.short(), actual = %actual.short(),
                            "cached blob no longer matches its digest; removing it to fetch it again");
                        part::remove_if_present(&checked)?;
                        return Ok(BlobState::Corrupt);
                    }
                    tracing::info!(digest = %digest_copy.short(), size_bytes,
                        elapsed_ms = started.elapsed().as_millis() as u64, "cached blob re-hashed and verified");
                }
                touch_file(&checked)?;
                Ok(BlobState::Verified)
            }
            Ok(metadata) => {
                tracing::warn!(digest = %digest_copy.short(), actual = metadata.len(), expected = size_bytes,
                    "cached blob has the wrong size; removing it");
                part::remove_if_present(&checked)?;
                Ok(BlobState::Corrupt)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(BlobState::Absent),
            Err(error) => Err(error),
        })
        .await
        .map_err(CacheError::io(format!("cannot inspect cached blob blake3:{digest}")))?;
        match state {
            BlobState::Verified => {
                lock_set(&self.verified).insert(*digest);
                Ok(Some(path))
            }
            BlobState::Corrupt => {
                lock_set(&self.verified).remove(digest);
                self.counters
                    .corrupt_cached_blobs
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("flotilla_agent_cache_faults_total", "kind" => "corrupt_blob")
                    .increment(1);
                Ok(None)
            }
            BlobState::Absent => {
                lock_set(&self.verified).remove(digest);
                Ok(None)
            }
        }
    }

    /// Deletes a cached blob that turned out to be unusable (the engine could
    /// not load it), so that the next `ensure` fetches it again instead of
    /// handing out the same bytes.
    pub async fn discard(&self, digest: &Digest) -> Result<(), CacheError> {
        let _guard = self.digest_lock(digest).lock_owned().await;
        lock_set(&self.verified).remove(digest);
        let path = self.blob_path(digest);
        blocking(move || part::remove_if_present(&path))
            .await
            .map_err(CacheError::io(format!(
                "cannot discard cached blob blake3:{digest}"
            )))?;
        metrics::counter!("flotilla_agent_cache_faults_total", "kind" => "unloadable_blob")
            .increment(1);
        tracing::warn!(digest = %digest.short(), "discarded a cached blob that could not be used; it will be fetched again");
        Ok(())
    }

    /// The digests that are assigned or served: never evicted to make room.
    pub fn set_in_use(&self, digests: HashSet<Digest>) {
        *lock_set(&self.in_use) = digests;
    }

    /// Adds a digest being fetched to those in use, beside what is served.
    pub fn add_in_use(&self, digest: Digest) {
        lock_set(&self.in_use).insert(digest);
    }

    /// Makes room for the bytes of `digest` still missing: refuses a blob
    /// larger than the budget, then evicts least-recently-used blobs that are
    /// not in use until the budget and the filesystem's free space (with
    /// [`space::MARGIN_BYTES`]) allow the download. On refusal the `.part`
    /// is deleted: bytes of a blob that cannot be completed only take space.
    async fn make_room(&self, digest: &Digest, size_bytes: u64) -> Result<(), CacheError> {
        let refuse = |reason: String| CacheError::NoSpace {
            digest: *digest,
            size_bytes,
            reason,
        };
        if let Some(budget) = self.config.budget_bytes
            && size_bytes > budget
        {
            self.remove_part(digest).await?;
            metrics::counter!("flotilla_agent_cache_faults_total", "kind" => "no_space")
                .increment(1);
            return Err(refuse(format!(
                "it is larger than the cache budget of {budget} bytes"
            )));
        }
        let (blobs, part_path) = (self.blobs_dir(), self.part_path(digest));
        let scanned = blocking(move || {
            let part_len = match std::fs::metadata(&part_path) {
                Ok(metadata) => metadata.len(),
                Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
                Err(error) => return Err(error),
            };
            Ok((scan_blobs(&blobs)?, part_len))
        })
        .await
        .map_err(CacheError::io(format!(
            "cannot list cached blobs in {}",
            self.blobs_dir().display()
        )))?;
        let (mut entries, part_len) = scanned;
        let missing = size_bytes.saturating_sub(part_len);
        let mut cached_total: u64 = entries
            .iter()
            .filter(|entry| entry.blob.digest != *digest)
            .map(|entry| entry.blob.size_bytes)
            .sum();
        let root = self.config.root.clone();
        let mut available = blocking(move || space::available_bytes(&root))
            .await
            .map_err(CacheError::io(format!(
                "cannot read the free space of {}",
                self.config.root.display()
            )))?;
        let fits = |cached_total: u64, available: u64| {
            let within_budget = self
                .config
                .budget_bytes
                .is_none_or(|budget| cached_total + size_bytes <= budget);
            within_budget && available >= missing.saturating_add(space::MARGIN_BYTES)
        };
        entries.sort_by_key(|entry| (entry.used_at, entry.blob.digest));
        let in_use = lock_set(&self.in_use).clone();
        for entry in entries {
            if fits(cached_total, available) {
                break;
            }
            let victim = entry.blob.digest;
            if victim == *digest || in_use.contains(&victim) {
                continue;
            }
            let Ok(_guard) = self.digest_lock(&victim).try_lock_owned() else {
                continue;
            };
            let path = self.blob_path(&victim);
            blocking(move || part::remove_if_present(&path))
                .await
                .map_err(CacheError::io(format!(
                    "cannot evict cached blob blake3:{victim}"
                )))?;
            lock_set(&self.verified).remove(&victim);
            tracing::info!(digest = %victim.short(), size_bytes = entry.blob.size_bytes,
                for_digest = %digest.short(), "evicted cached blob to make room for a download");
            cached_total = cached_total.saturating_sub(entry.blob.size_bytes);
            available = available.saturating_add(entry.blob.size_bytes);
        }
        if fits(cached_total, available) {
            return Ok(());
        }
        self.remove_part(digest).await?;
        metrics::counter!("flotilla_agent_cache_faults_total", "kind" => "no_space").increment(1);
        let budget = match self.config.budget_bytes {
            Some(budget) if cached_total + size_bytes > budget => format!(
                "; the blobs in use already hold {cached_total} of the cache budget of {budget} bytes"
            ),
            _ => String::new(),
        };
        Err(refuse(format!(
            "{available} bytes are free on the filesystem of {}, {missing} more are needed plus a margin of {} bytes, and no unused blob is left to evict{budget}",
            self.config.root.display(),
            space::MARGIN_BYTES
        )))
    }

    async fn remove_part(&self, digest: &Digest) -> Result<(), CacheError> {
        let path = self.part_path(digest);
        blocking(move || part::remove_if_present(&path))
            .await
            .map_err(CacheError::io(format!(
                "cannot remove the partial download of blob blake3:{digest}"
            )))
    }

    /// A download that failed on the local disk: when the disk is full, its
    /// `.part` is deleted so that the space comes back, and the error says so.
    async fn after_io_error(
        &self,
        digest: &Digest,
        size_bytes: u64,
        error: CacheError,
    ) -> CacheError {
        let (context, source) = match error {
            CacheError::Io { context, source } if space::is_out_of_space(&source) => {
                (context, source)
            }
            other => return other,
        };
        metrics::counter!("flotilla_agent_cache_faults_total", "kind" => "no_space").increment(1);
        let removed = match self.remove_part(digest).await {
            Ok(()) => "its partial download was deleted".to_owned(),
            Err(error) => format!("its partial download could not be deleted: {error}"),
        };
        CacheError::NoSpace {
            digest: *digest,
            size_bytes,
            reason: format!("{context}: {source}; {removed}"),
        }
    }

    /// Whether a verified blob with `digest` is cached.
    pub async fn contains(&self, digest: &Digest) -> bool {
        tokio::fs::try_exists(self.blob_path(digest))
            .await
            .unwrap_or(false)
    }

    /// Every cached blob, in digest order (for the agent's hello message).
    pub async fn list(&self) -> Result<Vec<CachedBlob>, CacheError> {
        let blobs = self.blobs_dir();
        let mut entries = blocking(move || scan_blobs(&blobs))
            .await
            .map_err(CacheError::io(format!(
                "cannot list cached blobs in {}",
                self.blobs_dir().display()
            )))?;
        entries.sort_by_key(|entry| entry.blob.digest);
        Ok(entries.into_iter().map(|entry| entry.blob).collect())
    }

    /// Marks the blob as just used, for least-recently-used eviction.
    pub async fn touch(&self, digest: &Digest) -> Result<(), CacheError> {
        let path = self.blob_path(digest);
        blocking(move || touch_file(&path))
            .await
            .map_err(CacheError::io(format!(
                "cannot mark cached blob blake3:{digest} as used"
            )))
    }

    /// Removes least-recently-used blobs that are not in `keep` (assigned or
    /// loaded) until the cache holds at most `budget_bytes`, and returns what
    /// it removed. Blobs being downloaded right now are skipped. When `keep`
    /// alone exceeds the budget the cache stays over it. Partial downloads in
    /// `tmp/` are not counted. A blob handed out by `ensure` is protected only
    /// by being in `keep`: the caller passes every assigned or loaded digest.
    pub async fn evict_to_budget(
        &self,
        budget_bytes: u64,
        keep: &HashSet<Digest>,
    ) -> Result<Vec<CachedBlob>, CacheError> {
        let blobs = self.blobs_dir();
        let mut entries = blocking(move || scan_blobs(&blobs))
            .await
            .map_err(CacheError::io(format!(
                "cannot list cached blobs in {}",
                self.blobs_dir().display()
            )))?;
        let mut total: u64 = entries.iter().map(|entry| entry.blob.size_bytes).sum();
        entries.sort_by_key(|entry| (entry.used_at, entry.blob.digest));
        let mut evicted = Vec::new();
        for entry in entries {
            if total <= budget_bytes {
                break;
            }
            let digest = entry.blob.digest;
            if keep.contains(&digest) {
                continue;
            }
            // Holding the digest's lock keeps an `ensure` of the same blob
            // from handing out a path that is being deleted.
            let Ok(_guard) = self.digest_lock(&digest).try_lock_owned() else {
                continue;
            };
            let path = self.blob_path(&digest);
            blocking(move || part::remove_if_present(&path))
                .await
                .map_err(CacheError::io(format!(
                    "cannot evict cached blob blake3:{digest}"
                )))?;
            lock_set(&self.verified).remove(&digest);
            tracing::info!(digest = %digest.short(), size_bytes = entry.blob.size_bytes, "evicted cached blob");
            total = total.saturating_sub(entry.blob.size_bytes);
            evicted.push(entry.blob);
        }
        Ok(evicted)
    }

    /// Removes cached blobs whose size differs from `expected` (digests the
    /// controller knows about, with their sizes); cheap, one `stat` each.
    /// Blobs not in `expected` are left alone. Returns what was removed.
    pub async fn remove_wrong_sizes(
        &self,
        expected: &HashMap<Digest, u64>,
    ) -> Result<Vec<CachedBlob>, CacheError> {
        let mut removed = Vec::new();
        for blob in self.list().await? {
            if let Some(&size_bytes) = expected.get(&blob.digest)
                && size_bytes != blob.size_bytes
                && self.cached(&blob.digest, size_bytes).await?.is_none()
            {
                removed.push(blob);
            }
        }
        Ok(removed)
    }

    /// Re-hashes every cached blob and removes those whose bytes no longer
    /// match their name (disk corruption, tampering). Reads the whole cache:
    /// for start-up after an unclean shutdown or an operator's request, not
    /// for every start.
    pub async fn verify_all(&self) -> Result<Vec<CachedBlob>, CacheError> {
        let mut removed = Vec::new();
        for blob in self.list().await? {
            let Ok(_guard) = self.digest_lock(&blob.digest).try_lock_owned() else {
                continue;
            };
            let path = self.blob_path(&blob.digest);
            let expected = blob.digest;
            let matched = blocking(move || {
                let actual = part::hash_file_parallel(&path)?;
                if actual != expected {
                    part::remove_if_present(&path)?;
                }
                Ok(actual == expected)
            })
            .await
            .map_err(CacheError::io(format!(
                "cannot verify cached blob blake3:{}",
                blob.digest
            )))?;
            if matched {
                lock_set(&self.verified).insert(blob.digest);
            } else {
                lock_set(&self.verified).remove(&blob.digest);
                tracing::warn!(digest = %blob.digest.short(), "cached blob no longer matches its digest; removed");
                removed.push(blob);
            }
        }
        Ok(removed)
    }
}

/// What [`ArtifactCache::cached`] found on disk.
enum BlobState {
    Verified,
    /// Wrong size or wrong bytes; removed.
    Corrupt,
    Absent,
}

fn lock_set(set: &Mutex<HashSet<Digest>>) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct ScannedBlob {
    blob: CachedBlob,
    used_at: SystemTime,
}

fn scan_blobs(directory: &Path) -> io::Result<Vec<ScannedBlob>> {
    let mut blobs = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let Some(digest) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<Digest>().ok())
        else {
            continue;
        };
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            // Evicted between listing and stat.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        if !metadata.is_file() {
            continue;
        }
        blobs.push(ScannedBlob {
            blob: CachedBlob {
                digest,
                size_bytes: metadata.len(),
            },
            used_at: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    Ok(blobs)
}

fn remove_strays(directory: &Path, belongs: impl Fn(&str) -> bool) -> io::Result<()> {
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_some_and(&belongs) {
            continue;
        }
        let path = entry.path();
        tracing::warn!(path = %path.display(), "removing a file that does not belong in the cache");
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            part::remove_if_present(&path)?;
        }
    }
    Ok(())
}

/// Sets the file's modification time to now: its last use, for eviction.
/// Set explicitly rather than left to the kernel, whose file timestamps are
/// only as fine as the scheduler tick.
fn touch_file(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_modified(SystemTime::now())
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

/// Jittered exponential backoff: half the exponential delay fixed, half
/// random, so that a fleet cut off together does not come back together.
fn backoff_delay(config: &CacheConfig, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = config
        .initial_backoff
        .saturating_mul(1u32 << exponent)
        .min(config.max_backoff);
    let half = ceiling / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_bounded() {
        let config = CacheConfig::new(Path::new("/unused"));
        for failures in 1..40 {
            let ceiling = config
                .initial_backoff
                .saturating_mul(1u32 << (failures - 1).min(16))
                .min(config.max_backoff);
            let delay = backoff_delay(&config, failures);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{failures}: {delay:?}"
            );
        }
        assert!(backoff_delay(&config, 40) <= config.max_backoff);
    }
}
