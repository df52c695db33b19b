//! The reconciler: drives the node from where it stands towards the latest
//! desired state, and publishes where it stands after every transition.
//!
//! Level-triggered: it reads only the latest desired state from a
//! `tokio::sync::watch` (the sync loop writes it) and publishes the latest
//! observed state to another (the sync loop reports it). A newer desired
//! state that no longer wants the artifact being fetched drops the fetch
//! (the cache is cancel-safe; the `.part` file stays for a later resume).
//! After a failure the same desired state is retried only when a newer one
//! arrives or after [`ReconcilerConfig::failure_retry`].
//!
//! The two seams, so that the pieces can be swapped without touching the
//! state machine: an [`ArtifactFetcher`] brings the verified blob (the
//! artifact cache in production; an instant fake in the simulator and the
//! tests) and an [`Activator`] makes it served (the inference engine's
//! `crate::serve::EngineActivator` in the agent binary; [`AcceptVerifiedBlob`]
//! in the simulator and the tests).
//!
//! The escalation policy rides on the assignment but needs no download: the
//! reconciler publishes it ([`policy`], [`ReconcilerLink::policy`]) as soon
//! as a desired state is applied, and a change of policy alone never
//! reloads the model.
//!
//! What is persisted: `DATA_DIR/state.json` (see [`persist`]) after each
//! settled transition and each newly applied generation, the desired
//! state's policy with it. Download progress lives only in memory.

pub mod model;
pub mod persist;
pub mod policy;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::{ArtifactCache, BlobSource, Digest, Progress, SharedToken};
pub use model::{
    Assignment, DEFAULT_HEARTBEAT_INTERVAL, DesiredState, NodeStatus, ObservedState, Phase,
    SystemPrompt, SystemPromptPolicy,
};
pub use persist::PersistedState;
pub use policy::{ActivePolicy, PolicyWatch};

/// Reports fetch progress; called from inside the fetch.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Brings an assigned artifact onto the box, verified.
pub trait ArtifactFetcher: Send + Sync + 'static {
    /// The path of the verified blob, or why it could not be had. Dropping
    /// the future must be safe (it is how a fetch is cancelled).
    fn fetch(
        &self,
        assignment: &Assignment,
        progress: ProgressFn,
    ) -> BoxFuture<'static, Result<PathBuf, String>>;

    /// Housekeeping after an artifact became ready, e.g. evicting blobs
    /// beyond the cache budget; `keep` holds the digests in use.
    fn after_ready(&self, keep: HashSet<Digest>) -> BoxFuture<'static, ()>;

    /// Forgets a fetched artifact that could not be activated (the engine
    /// refused to load it), so that the next fetch brings fresh bytes
    /// instead of handing out the same file again.
    fn discard(&self, digest: Digest) -> BoxFuture<'static, ()> {
        let _ = digest;
        Box::pin(async {})
    }
}

/// A verified artifact to serve.
#[derive(Debug, Clone)]
pub struct Activation {
    pub assignment: Assignment,
    pub blob_path: PathBuf,
}

/// Makes a verified artifact the one the node serves. This is where the
/// inference engine plugs in: load the model from `blob_path` (off the tokio
/// workers), swap it in, and only then return `Ok`.
pub trait Activator: Send + Sync + 'static {
    fn activate(&self, activation: Activation) -> BoxFuture<'static, Result<(), String>>;
    /// Stops serving (the assignment was removed). The blob stays cached.
    fn deactivate(&self) -> BoxFuture<'static, ()>;
}

/// Accepts every verified blob and serves nothing: the simulator's and the
/// tests' activator, where no model needs to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptVerifiedBlob;

impl Activator for AcceptVerifiedBlob {
    fn activate(&self, activation: Activation) -> BoxFuture<'static, Result<(), String>> {
        tracing::info!(
            model = %activation.assignment.model,
            version = %activation.assignment.version,
            digest = %activation.assignment.digest.short(),
            path = %activation.blob_path.display(),
            "artifact verified (this activator serves nothing)"
        );
        Box::pin(async { Ok(()) })
    }

    fn deactivate(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// The production fetcher: the artifact cache, downloading from the blob
/// URL each assignment names with the node credential.
pub struct CacheFetcher {
    cache: Arc<ArtifactCache>,
    token: SharedToken,
    /// Evict least-recently-used blobs above this many bytes after each ready.
    budget_bytes: Option<u64>,
}

impl CacheFetcher {
    pub fn new(cache: Arc<ArtifactCache>, token: SharedToken, budget_bytes: Option<u64>) -> Self {
        Self {
            cache,
            token,
            budget_bytes,
        }
    }
}

impl ArtifactFetcher for CacheFetcher {
    fn fetch(
        &self,
        assignment: &Assignment,
        progress: ProgressFn,
    ) -> BoxFuture<'static, Result<PathBuf, String>> {
        let cache = self.cache.clone();
        let token = self.token.clone();
        let (base_url, digest, size_bytes) = (
            assignment.blob_base_url.clone(),
            assignment.digest,
            assignment.size_bytes,
        );
        cache.add_in_use(digest);
        Box::pin(async move {
            let source = BlobSource::new(&base_url, token).map_err(|error| error.to_string())?;
            cache
                .ensure_from(&source, &digest, size_bytes, move |step| progress(step))
                .await
                .map_err(|error| error.to_string())
        })
    }

    fn after_ready(&self, keep: HashSet<Digest>) -> BoxFuture<'static, ()> {
        let cache = self.cache.clone();
        let budget_bytes = self.budget_bytes;
        cache.set_in_use(keep.clone());
        Box::pin(async move {
            let Some(budget_bytes) = budget_bytes else {
                return;
            };
            if let Err(error) = cache.evict_to_budget(budget_bytes, &keep).await {
                tracing::warn!(%error, "cache eviction failed");
            }
        })
    }

    fn discard(&self, digest: Digest) -> BoxFuture<'static, ()> {
        let cache = self.cache.clone();
        Box::pin(async move {
            if let Err(error) = cache.discard(&digest).await {
                tracing::warn!(%error, "cannot discard an unusable cached blob");
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Where `state.json` goes; `None` keeps state only in memory (simulator).
    pub state_dir: Option<PathBuf>,
    /// After a failure, how long before the same desired state is tried again.
    pub failure_retry: Duration,
    /// The least time between two download-progress reports.
    pub progress_interval: Duration,
}

impl ReconcilerConfig {
    pub fn new(state_dir: Option<PathBuf>) -> Self {
        Self {
            state_dir,
            failure_retry: Duration::from_secs(60),
            progress_interval: Duration::from_millis(500),
        }
    }
}

/// The sync loop's side of a reconciler: where it writes the desired state
/// and reads the observed one.
#[derive(Debug, Clone)]
pub struct ReconcilerLink {
    pub desired: Arc<watch::Sender<Option<DesiredState>>>,
    pub observed: watch::Receiver<ObservedState>,
    /// Why the latest write of `state.json` failed (`None`: it succeeded),
    /// for the heartbeat: an agent that cannot keep its state would report
    /// an older generation after a restart, and its operator should know
    /// before that.
    pub state_write_error: watch::Receiver<Option<String>>,
    /// The escalation policy in force, for the serving layer.
    pub policy: PolicyWatch,
}

pub struct Reconciler {
    fetcher: Arc<dyn ArtifactFetcher>,
    activator: Arc<dyn Activator>,
    config: ReconcilerConfig,
    desired: watch::Receiver<Option<DesiredState>>,
    observed: Arc<watch::Sender<ObservedState>>,
    state_write_error: watch::Sender<Option<String>>,
    policy: watch::Sender<ActivePolicy>,
    /// The desired state being reconciled towards.
    wanted: Option<DesiredState>,
    attempt: Option<Attempt>,
    retry_at: Option<Instant>,
}

/// One fetch-and-activate of one digest, cancelled by dropping it.
struct Attempt {
    digest: Digest,
    future: BoxFuture<'static, Result<(), String>>,
}

impl Reconciler {
    /// A reconciler starting from `restored` (what `state.json` held). A
    /// restored state is reported as it was, except that nothing is served
    /// yet and unfinished work shows as pending. The restored desired state
    /// is reconciled towards at once, so that a restarted agent serves its
    /// cached assignment again without waiting for the controller.
    pub fn new(
        fetcher: Arc<dyn ArtifactFetcher>,
        activator: Arc<dyn Activator>,
        config: ReconcilerConfig,
        restored: Option<PersistedState>,
    ) -> (Self, ReconcilerLink) {
        let restored_desired = restored
            .as_ref()
            .and_then(|restored| restored.desired.clone());
        let observed = restored
            .map(|restored| {
                let observed = restored.observed;
                let phase = match observed.phase {
                    Phase::Idle => Phase::Idle,
                    Phase::Failed { reason } => Phase::Failed { reason },
                    _ if observed.digest.is_some() => Phase::Pending,
                    _ => Phase::Idle,
                };
                ObservedState {
                    generation: restored.applied_generation.max(observed.generation),
                    digest: observed.digest,
                    phase,
                    serving_digest: None,
                }
            })
            .unwrap_or_default();
        // The saved policy is in force from the start: a restarted agent
        // that cannot reach the controller keeps the operator's choice
        // (above all a forbidding one).
        let (policy_sender, policy_receiver) = watch::channel(policy_of(restored_desired.as_ref()));
        let (desired_sender, desired_receiver) = watch::channel(restored_desired);
        let (observed_sender, observed_receiver) = watch::channel(observed);
        let (state_write_error, state_write_error_receiver) = watch::channel(None);
        let reconciler = Self {
            fetcher,
            activator,
            config,
            desired: desired_receiver,
            observed: Arc::new(observed_sender),
            state_write_error,
            policy: policy_sender,
            wanted: None,
            attempt: None,
            retry_at: None,
        };
        let link = ReconcilerLink {
            desired: Arc::new(desired_sender),
            observed: observed_receiver,
            state_write_error: state_write_error_receiver,
            policy: PolicyWatch::new(policy_receiver),
        };
        (reconciler, link)
    }

    /// Reconciles until `shutdown` or until the link's desired sender is gone.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // A desired state written before `run` started counts as new.
        self.desired.mark_changed();
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let latest = self.desired.borrow_and_update().clone();
                    if let Some(desired) = latest {
                        self.on_desired(desired).await;
                    }
                }
                outcome = poll_if_some(self.attempt.as_mut().map(|attempt| &mut attempt.future)) => {
                    let digest = self.attempt.take().map(|attempt| attempt.digest);
                    self.on_attempt_finished(digest, outcome).await;
                }
                _ = sleep_until_if_some(retry_at) => {
                    self.retry_at = None;
                    if let Some(assignment) = self.wanted.as_ref().and_then(|wanted| wanted.assignment.clone()) {
                        tracing::info!(digest = %assignment.digest.short(), "retrying the failed assignment");
                        self.start_attempt(assignment);
                        self.persist().await;
                    }
                }
            }
        }
    }

    async fn on_desired(&mut self, desired: DesiredState) {
        if self.wanted.as_ref() == Some(&desired) {
            return;
        }
        let current = self.observed.borrow().clone();
        if desired.generation < current.generation {
            tracing::warn!(
                generation = desired.generation,
                applied = current.generation,
                "ignoring a desired state older than the one applied"
            );
            return;
        }
        self.retry_at = None;
        self.publish_policy(&desired);
        let previous_assignment = self.wanted.as_ref().and_then(|w| w.assignment.clone());
        // The policy does not change what is served: compare without it.
        let same_serving = |assignment: &Assignment| {
            previous_assignment
                .as_ref()
                .is_some_and(|previous| previous.serves_the_same_as(assignment))
        };
        match &desired.assignment {
            None => {
                self.attempt = None;
                if current.serving_digest.is_some() {
                    self.activator.deactivate().await;
                }
                self.observed.send_replace(ObservedState {
                    generation: desired.generation,
                    digest: None,
                    phase: Phase::Idle,
                    serving_digest: None,
                });
            }
            Some(assignment) => {
                let fetching_it = self
                    .attempt
                    .as_ref()
                    .is_some_and(|attempt| attempt.digest == assignment.digest);
                let serving_it = current.phase == Phase::Ready && same_serving(assignment);
                if fetching_it && same_serving(assignment) || serving_it {
                    // Same work under a new generation: keep going.
                    self.observed
                        .send_modify(|observed| observed.generation = desired.generation);
                } else {
                    self.observed.send_modify(|observed| {
                        observed.generation = desired.generation;
                    });
                    self.start_attempt(assignment.clone());
                }
            }
        }
        self.wanted = Some(desired);
        self.persist().await;
    }

    /// Makes `desired`'s escalation policy the one in force, telling the
    /// serving layer only when it changed.
    fn publish_policy(&self, desired: &DesiredState) {
        let next = policy_of(Some(desired));
        self.policy.send_if_modified(|current| {
            if *current == next {
                return false;
            }
            match &next {
                Some(policy) => {
                    tracing::info!(policy = %policy, egress = policy.spec.upstream().is_some(), "escalation policy in force")
                }
                None => tracing::info!("no escalation policy: this node does not call out"),
            }
            *current = next.clone();
            true
        });
    }

    /// Replaces any attempt in flight with a fetch-and-activate of `assignment`.
    fn start_attempt(&mut self, assignment: Assignment) {
        let digest = assignment.digest;
        self.observed.send_modify(|observed| {
            observed.digest = Some(digest);
            observed.phase = Phase::Pending;
        });
        let progress =
            progress_reporter(self.observed.clone(), digest, self.config.progress_interval);
        let fetch = self.fetcher.fetch(&assignment, progress);
        let fetcher = self.fetcher.clone();
        let activator = self.activator.clone();
        let observed = self.observed.clone();
        let future = Box::pin(async move {
            let blob_path = fetch.await?;
            observed.send_if_modified(|state| {
                let ours = state.digest == Some(digest);
                if ours {
                    state.phase = Phase::Loading;
                }
                ours
            });
            let activated = activator
                .activate(Activation {
                    assignment,
                    blob_path,
                })
                .await;
            if let Err(reason) = activated {
                // Bytes that verified but do not load are not kept: the
                // retry fetches them again rather than failing on the same
                // file for ever.
                fetcher.discard(digest).await;
                return Err(format!(
                    "{reason} (the cached blob was discarded and will be fetched again)"
                ));
            }
            Ok(())
        });
        self.attempt = Some(Attempt { digest, future });
    }

    async fn on_attempt_finished(&mut self, digest: Option<Digest>, outcome: Result<(), String>) {
        let Some(digest) = digest else { return };
        match outcome {
            Ok(()) => {
                self.observed.send_modify(|observed| {
                    observed.phase = Phase::Ready;
                    observed.serving_digest = Some(digest);
                });
                tracing::info!(digest = %digest.short(), "assignment ready");
                self.fetcher.after_ready(HashSet::from([digest])).await;
            }
            Err(reason) => {
                tracing::warn!(digest = %digest.short(), %reason, "assignment failed");
                self.observed.send_modify(|observed| {
                    observed.phase = Phase::Failed { reason };
                });
                self.retry_at = Some(Instant::now() + self.config.failure_retry);
            }
        }
        self.persist().await;
    }

    // `&mut self`: the in-flight attempt is `Send` but not `Sync`, so the
    // reconciler may only be held across an await by unique reference.
    async fn persist(&mut self) {
        let Some(state_dir) = self.config.state_dir.clone() else {
            return;
        };
        let observed = self.observed.borrow().clone();
        let state = PersistedState {
            applied_generation: observed.generation,
            observed,
            desired: self.wanted.clone(),
        };
        let saved = tokio::task::spawn_blocking(move || persist::save(&state_dir, &state)).await;
        let failure = match saved {
            Ok(Ok(())) => None,
            Ok(Err(error)) => {
                metrics::counter!("flotilla_agent_state_write_failures_total").increment(1);
                tracing::warn!(%error, "cannot persist the agent state");
                Some(error.to_string())
            }
            Err(error) => {
                tracing::warn!(%error, "persisting the agent state panicked");
                Some(format!("persisting the agent state panicked: {error}"))
            }
        };
        self.state_write_error.send_replace(failure);
    }
}

/// The escalation policy a desired state puts in force.
fn policy_of(desired: Option<&DesiredState>) -> ActivePolicy {
    desired
        .and_then(|desired| desired.assignment.as_ref())
        .and_then(|assignment| assignment.escalation_policy.clone())
        .map(Arc::new)
}

/// Turns fetch progress into observed-state updates for `digest`: at most one
/// per `interval`, except that the first and the last always go out, and
/// none once the observed state has moved on to another digest.
fn progress_reporter(
    observed: Arc<watch::Sender<ObservedState>>,
    digest: Digest,
    interval: Duration,
) -> ProgressFn {
    let last_report: Mutex<Option<Instant>> = Mutex::new(None);
    Arc::new(move |progress: Progress| {
        let now = Instant::now();
        let complete = progress.bytes_done >= progress.bytes_total;
        {
            let mut last = last_report
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let due = last.is_none_or(|at| now.duration_since(at) >= interval);
            if !due && !complete {
                return;
            }
            *last = Some(now);
        }
        observed.send_if_modified(|state| {
            if state.digest != Some(digest)
                || !matches!(state.phase, Phase::Pending | Phase::Downloading { .. })
            {
                return false;
            }
            state.phase = if complete {
                // The cache hashes while it streams, so what is left once the
                // last byte is in is the final comparison and the rename.
                Phase::Verifying
            } else {
                Phase::Downloading {
                    bytes_done: progress.bytes_done,
                    bytes_total: progress.bytes_total,
                }
            };
            true
        });
    })
}

async fn poll_if_some<F: Future + Unpin>(future: Option<&mut F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_if_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
