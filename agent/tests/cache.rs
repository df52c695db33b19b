//! The artifact cache against a real controller on loopback (SQLite store,
//! local object directory): downloads, resumption, tampering, refusals,
//! concurrency and eviction.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_agent::cache::{
    ArtifactCache, BlobSource, CacheConfig, CacheError, CachedBlob, Digest, Progress, SharedToken,
};
use flotilla_api_types as dto;
use flotilla_controller::testing::{TestController, TestStore};
use flotilla_gguf::{GgmlType, GgufBuilder};
use reqwest::StatusCode;
use serde_json::json;

/// Q4_1 packs 32 weights into 20 bytes.
const Q4_1_BLOCK_BYTES: usize = 20;

/// A valid GGUF file of about `approx_bytes` bytes whose content depends on `seed`.
fn gguf_file(approx_bytes: usize, seed: u64) -> Vec<u8> {
    let blocks = approx_bytes.div_ceil(Q4_1_BLOCK_BYTES).max(1);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let tensor: Vec<u8> = (0..blocks * Q4_1_BLOCK_BYTES)
        .map(|_| {
            // xorshift: incompressible, reproducible bytes.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    GgufBuilder::new()
        .metadata_str("general.architecture", "llama")
        .metadata_u32("general.file_type", 3)
        .tensor("w", &[32, blocks as u64], GgmlType::Q4_1, &tensor)
        .build()
}

struct Fixture {
    controller: TestController,
    client: reqwest::Client,
    agent_dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> anyhow::Result<Self> {
        Ok(Self {
            controller: TestController::start(TestStore::Sqlite).await?,
            client: reqwest::Client::new(),
            agent_dir: tempfile::tempdir()?,
        })
    }

    /// Publishes `bytes` as the only artifact of model `model` 1.0.0.
    async fn upload(&self, model: &str, bytes: &[u8]) -> anyhow::Result<(Digest, u64)> {
        let url = |path: &str| format!("{}{path}", self.controller.url);
        let token = &self.controller.admin_token;
        let created = self
            .client
            .post(url("/api/v1/models"))
            .bearer_auth(token)
            .json(&json!({"name": model}))
            .send()
            .await?;
        anyhow::ensure!(
            created.status() == StatusCode::CREATED,
            "create model: {}",
            created.status()
        );
        let version = self
            .client
            .post(url(&format!("/api/v1/models/{model}/versions")))
            .bearer_auth(token)
            .json(&json!({"version": "1.0.0"}))
            .send()
            .await?;
        anyhow::ensure!(
            version.status() == StatusCode::CREATED,
            "create version: {}",
            version.status()
        );
        let uploaded = self
            .client
            .post(url(&format!(
                "/api/v1/models/{model}/versions/1.0.0/artifacts"
            )))
            .bearer_auth(token)
            .body(bytes.to_vec())
            .send()
            .await?;
        anyhow::ensure!(
            uploaded.status() == StatusCode::CREATED,
            "upload: {}",
            uploaded.status()
        );
        let artifact: dto::ArtifactInfo = uploaded.json().await?;
        let digest: Digest = artifact.digest.parse()?;
        anyhow::ensure!(digest == Digest::of(bytes), "controller digest differs");
        Ok((digest, artifact.size_bytes))
    }

    fn source(&self, token: &str) -> anyhow::Result<BlobSource> {
        Ok(BlobSource::new(
            &self.controller.url,
            SharedToken::new(token),
        )?)
    }

    /// A cache with fast retries, so failure paths finish quickly.
    fn config(&self) -> CacheConfig {
        CacheConfig {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..CacheConfig::new(self.agent_dir.path())
        }
    }

    async fn cache(&self) -> anyhow::Result<ArtifactCache> {
        Ok(ArtifactCache::open(self.config(), self.source(&self.controller.admin_token)?).await?)
    }

    fn controller_blob(&self, digest: &Digest) -> PathBuf {
        self.controller
            .data_dir
            .path()
            .join("objects/blobs")
            .join(digest.to_hex())
    }
}

fn files_in(directory: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn recorder() -> (
    Arc<Mutex<Vec<Progress>>>,
    impl Fn(Progress) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |progress| {
        sink.lock().expect("progress log").push(progress)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_verify_and_match_the_upload() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let file = gguf_file(3 << 20, 1);
    let (digest, size) = fixture.upload("smol", &file).await?;
    let cache = fixture.cache().await?;
    assert!(!cache.contains(&digest).await);

    let (seen, progress) = recorder();
    let path = cache.ensure(&digest, size, progress).await?;
    assert_eq!(path, cache.blob_path(&digest));
    assert_eq!(std::fs::read(&path)?, file);
    assert!(cache.contains(&digest).await);
    assert_eq!(
        cache.list().await?,
        vec![CachedBlob {
            digest,
            size_bytes: size
        }]
    );
    {
        let seen = seen.lock().expect("progress log");
        assert_eq!(seen.first().map(|p| p.bytes_done), Some(0));
        assert_eq!(
            seen.last(),
            Some(&Progress {
                bytes_done: size,
                bytes_total: size
            })
        );
        assert!(
            seen.windows(2)
                .all(|pair| pair[0].bytes_done <= pair[1].bytes_done),
            "{seen:?}"
        );
    }
    let stats = cache.stats();
    assert_eq!((stats.http_requests, stats.network_bytes), (1, size));
    assert!(files_in(&fixture.config().root.join("tmp"))?.is_empty());

    // A second call is a cache hit: no request.
    assert_eq!(cache.ensure(&digest, size, |_| {}).await?, path);
    assert_eq!(cache.stats().http_requests, 1);

    // Reopening (a restart) keeps the blob.
    drop(cache);
    let reopened = fixture.cache().await?;
    assert_eq!(
        reopened.list().await?,
        vec![CachedBlob {
            digest,
            size_bytes: size
        }]
    );
    fixture.controller.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_without_fetching_again() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let file = gguf_file(8 << 20, 2);
    let (digest, size) = fixture.upload("smol", &file).await?;
    let cache = fixture.cache().await?;

    // Drop the download future once it reports more than 40%: what a killed
    // process or a cancelled reconcile leaves behind.
    let (passed_40_percent, passed) = tokio::sync::watch::channel(false);
    let first = cache.ensure(&digest, size, move |progress| {
        if progress.bytes_done * 10 > progress.bytes_total * 4 {
            passed_40_percent.send_replace(true);
        }
    });
    let mut passed_wait = passed.clone();
    tokio::select! {
        biased;
        changed = passed_wait.wait_for(|passed| *passed) => { changed?; }
        finished = first => anyhow::bail!("the download finished before it could be interrupted: {finished:?}"),
    }
    assert!(
        !cache.contains(&digest).await,
        "an interrupted download never lands in blobs/"
    );
    let part_path = cache.part_path(&digest);
    assert!(part_path.exists(), "the partial file stays for resumption");
    let fetched_before = cache.stats();

    let (seen, progress) = recorder();
    let path = tokio::time::timeout(
        Duration::from_secs(60),
        cache.ensure(&digest, size, progress),
    )
    .await??;
    assert_eq!(std::fs::read(&path)?, file);
    let resumed_from = seen
        .lock()
        .expect("progress log")
        .first()
        .map(|p| p.bytes_done)
        .unwrap_or(0);
    assert!(
        resumed_from * 10 > size * 4,
        "resumed from {resumed_from} of {size}"
    );
    let fetched_now = cache.stats().network_bytes - fetched_before.network_bytes;
    assert_eq!(
        fetched_now,
        size - resumed_from,
        "only the remainder is fetched again"
    );
    assert_eq!(
        cache.stats().http_requests - fetched_before.http_requests,
        1
    );
    assert!(!part_path.exists());
    fixture.controller.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_never_enters_the_cache() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let file = gguf_file(1 << 20, 3);
    let (digest, size) = fixture.upload("smol", &file).await?;
    let stored = fixture.controller_blob(&digest);
    let mut tampered = std::fs::read(&stored)?;
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    std::fs::write(&stored, &tampered)?;

    let cache = fixture.cache().await?;
    let error = cache
        .ensure(&digest, size, |_| {})
        .await
        .expect_err("a tampered blob must fail");
    match &error {
        CacheError::Corrupt {
            digest: named,
            attempts,
            ..
        } => {
            assert_eq!((named, *attempts), (&digest, 3));
        }
        other => anyhow::bail!("expected a corrupt-blob error, got {other:?}"),
    }
    assert!(error.to_string().contains(&digest.to_hex()), "{error}");
    assert!(!cache.contains(&digest).await);
    assert!(files_in(&fixture.config().root.join("blobs"))?.is_empty());
    assert!(
        files_in(&fixture.config().root.join("tmp"))?.is_empty(),
        "no .part left behind"
    );
    let stats = cache.stats();
    assert_eq!((stats.http_requests, stats.verification_failures), (3, 3));
    fixture.controller.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_a_permanent_error_with_the_servers_message() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let file = gguf_file(64 << 10, 4);
    let (digest, size) = fixture.upload("smol", &file).await?;
    let token = SharedToken::new("not-a-valid-token");
    let source = BlobSource::new(&fixture.controller.url, token.clone())?;
    let cache = ArtifactCache::open(fixture.config(), source).await?;

    let error = cache
        .ensure(&digest, size, |_| {})
        .await
        .expect_err("a bad token must fail");
    let CacheError::Rejected {
        digest: named,
        status,
        message,
    } = &error
    else {
        anyhow::bail!("expected a refusal, got {error:?}");
    };
    assert_eq!((named, *status), (&digest, 401));
    // The controller's own sentence, not a generic status line.
    let direct = fixture
        .client
        .get(format!("{}/api/v1/blobs/{digest}", fixture.controller.url))
        .bearer_auth("not-a-valid-token")
        .send()
        .await?
        .json::<dto::ErrorBody>()
        .await?;
    assert_eq!(message, &direct.error.message);
    assert_eq!(cache.stats().http_requests, 1, "no retries for a refusal");

    // The sync loop renews the token in place; the next call uses it.
    token.replace(fixture.controller.admin_token.clone());
    let path = cache.ensure(&digest, size, |_| {}).await?;
    assert_eq!(std::fs::read(path)?, file);
    fixture.controller.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_gives_up_after_bounded_retries() -> anyhow::Result<()> {
    let agent_dir = tempfile::tempdir()?;
    // A port that was free a moment ago: connections are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    drop(listener);
    let config = CacheConfig {
        max_network_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..CacheConfig::new(agent_dir.path())
    };
    let cache = ArtifactCache::open(config, BlobSource::new(&url, SharedToken::new("t"))?).await?;
    let digest = Digest::of(b"anything");
    let error = cache
        .ensure(&digest, 8, |_| {})
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(error, CacheError::Unavailable { attempts: 3, .. }),
        "{error:?}"
    );
    assert_eq!(cache.stats().http_requests, 3);
    assert!(!cache.contains(&digest).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ensures_of_one_digest_download_once() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let file = gguf_file(2 << 20, 5);
    let (digest, size) = fixture.upload("smol", &file).await?;
    let cache = Arc::new(fixture.cache().await?);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.ensure(&digest, size, |_| {}).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await??, cache.blob_path(&digest));
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.http_requests, stats.network_bytes),
        (1, size),
        "one download"
    );
    assert_eq!(std::fs::read(cache.blob_path(&digest))?, file);
    fixture.controller.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_removes_least_recently_used_blobs_outside_keep() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let cache = fixture.cache().await?;
    let mut blobs = Vec::new();
    for (index, model) in ["alpha", "bravo", "charlie"].into_iter().enumerate() {
        let (digest, size) = fixture
            .upload(model, &gguf_file(32 << 10, 10 + index as u64))
            .await?;
        cache.ensure(&digest, size, |_| {}).await?;
        blobs.push(CachedBlob {
            digest,
            size_bytes: size,
        });
    }
    let [alpha, bravo, charlie] = [blobs[0], blobs[1], blobs[2]];
    // Use order now: bravo (oldest), charlie, alpha (just used).
    cache.touch(&alpha.digest).await?;
    let keep: HashSet<Digest> = [bravo.digest].into();

    // Nothing to do within budget.
    let everything = alpha.size_bytes + bravo.size_bytes + charlie.size_bytes;
    assert!(cache.evict_to_budget(everything, &keep).await?.is_empty());

    // Bravo is oldest but kept, so charlie goes first, and that is enough.
    let evicted = cache
        .evict_to_budget(alpha.size_bytes + bravo.size_bytes, &keep)
        .await?;
    assert_eq!(evicted, vec![charlie]);
    // A budget of zero removes everything but what is kept.
    let evicted = cache.evict_to_budget(0, &keep).await?;
    assert_eq!(evicted, vec![alpha]);
    assert_eq!(cache.list().await?, vec![bravo]);
    assert!(!cache.contains(&charlie.digest).await);
    fixture.controller.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_cached_blobs_are_found_and_replaced() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let file = gguf_file(256 << 10, 6);
    let (digest, size) = fixture.upload("smol", &file).await?;
    let cache = fixture.cache().await?;
    let path = cache.ensure(&digest, size, |_| {}).await?;

    // Same size, flipped byte: only a full re-verify can tell.
    let mut bytes = std::fs::read(&path)?;
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes)?;
    assert_eq!(
        cache.verify_all().await?,
        vec![CachedBlob {
            digest,
            size_bytes: size
        }]
    );
    assert!(!cache.contains(&digest).await);
    cache.ensure(&digest, size, |_| {}).await?;
    assert!(cache.verify_all().await?.is_empty());

    // Truncated: the cheap size check notices, and so does `ensure` itself.
    std::fs::write(&path, &file[..1000])?;
    let expected = [(digest, size)].into_iter().collect();
    assert_eq!(
        cache.remove_wrong_sizes(&expected).await?,
        vec![CachedBlob {
            digest,
            size_bytes: 1000
        }]
    );
    std::fs::write(&path, &file[..1000])?;
    assert_eq!(
        std::fs::read(cache.ensure(&digest, size, |_| {}).await?)?,
        file
    );

    // Files that cannot belong in the cache are cleared when it opens.
    let root = fixture.config().root;
    std::fs::write(root.join("tmp/stray.tmp"), b"x")?;
    std::fs::write(root.join("blobs/not-a-digest"), b"x")?;
    drop(cache);
    let reopened = fixture.cache().await?;
    assert!(files_in(&root.join("tmp"))?.is_empty());
    assert_eq!(files_in(&root.join("blobs"))?, vec![digest.to_hex()]);
    assert_eq!(reopened.list().await?.len(), 1);
    fixture.controller.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_file_left_by_a_killed_agent_is_resumed_or_discarded() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let file = gguf_file(2 << 20, 7);
    let (digest, size) = fixture.upload("smol", &file).await?;
    let part_path = fixture
        .config()
        .root
        .join("tmp")
        .join(format!("{}.part", digest.to_hex()));
    let prefix_len = file.len() * 6 / 10;

    // A restarted agent finds 60% of the blob on disk and fetches the rest.
    std::fs::create_dir_all(part_path.parent().expect("tmp dir"))?;
    std::fs::write(&part_path, &file[..prefix_len])?;
    let cache = fixture.cache().await?;
    let (seen, progress) = recorder();
    let path = cache.ensure(&digest, size, progress).await?;
    assert_eq!(std::fs::read(&path)?, file);
    assert_eq!(
        seen.lock()
            .expect("progress log")
            .first()
            .map(|p| p.bytes_done),
        Some(prefix_len as u64)
    );
    assert_eq!(cache.stats().network_bytes, size - prefix_len as u64);
    drop(cache);

    // A prefix that is not the blob's (a crash wrote garbage) fails the
    // digest check once; the download then starts over and succeeds.
    std::fs::remove_file(&path)?;
    let mut garbage = file[..prefix_len].to_vec();
    garbage[10] ^= 0x55;
    std::fs::write(&part_path, &garbage)?;
    let cache = fixture.cache().await?;
    let path = cache.ensure(&digest, size, |_| {}).await?;
    assert_eq!(std::fs::read(&path)?, file);
    let stats = cache.stats();
    assert_eq!(stats.verification_failures, 1);
    assert_eq!(stats.network_bytes, size - prefix_len as u64 + size);
    assert!(!part_path.exists());

    // A partial file longer than the blob cannot be a prefix of it.
    std::fs::remove_file(&path)?;
    std::fs::write(&part_path, [file.as_slice(), b"extra"].concat())?;
    let path = cache.ensure(&digest, size, |_| {}).await?;
    assert_eq!(std::fs::read(&path)?, file);
    assert_eq!(cache.stats().verification_failures, 2);
    fixture.controller.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_of_different_blobs_respect_the_concurrency_bound() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let (first, first_size) = fixture.upload("alpha", &gguf_file(3 << 20, 20)).await?;
    let (second, second_size) = fixture.upload("bravo", &gguf_file(3 << 20, 21)).await?;
    let config = CacheConfig {
        max_concurrent_downloads: 1,
        ..fixture.config()
    };
    let cache =
        ArtifactCache::open(config, fixture.source(&fixture.controller.admin_token)?).await?;

    // Every report made while a download is under way, in order.
    let events = Arc::new(Mutex::new(Vec::new()));
    let recorder = |digest: Digest| {
        let events = events.clone();
        move |progress: Progress| {
            if progress.bytes_done < progress.bytes_total {
                events.lock().expect("event log").push(digest);
            }
        }
    };
    let (a, b) = tokio::join!(
        cache.ensure(&first, first_size, recorder(first)),
        cache.ensure(&second, second_size, recorder(second)),
    );
    a?;
    b?;
    let events = events.lock().expect("event log").clone();
    let switches = events.windows(2).filter(|pair| pair[0] != pair[1]).count();
    assert_eq!(
        switches, 1,
        "with one download slot the downloads do not overlap: {events:?}"
    );
    fixture.controller.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_rate_limit_holds_the_transfer_back() -> anyhow::Result<()> {
    let fixture = Fixture::start().await?;
    let file = gguf_file(2 << 20, 40);
    let (digest, size) = fixture.upload("slow", &file).await?;
    let rate = 4_000_000u64;
    let config = CacheConfig {
        max_download_bytes_per_second: Some(rate),
        ..fixture.config()
    };
    let cache =
        ArtifactCache::open(config, fixture.source(&fixture.controller.admin_token)?).await?;
    let started = std::time::Instant::now();
    cache.ensure(&digest, size, |_| {}).await?;
    let took = started.elapsed();
    // Everything beyond the 100 ms burst is paid for at the limit; loopback
    // alone would take a few milliseconds.
    let floor = Duration::from_secs_f64((size as f64 - rate as f64 * 0.1) / rate as f64);
    assert!(
        took >= floor.mul_f64(0.95),
        "{size} bytes took {took:?} at {rate} B/s"
    );
    assert_eq!(std::fs::read(cache.blob_path(&digest))?, file);
    Ok(())
}
