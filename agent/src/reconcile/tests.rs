//! The reconciler's state machine with an in-process fetcher and activator:
//! no network, no disk. Every wait is on a condition with a deadline.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// A fetch in flight: its progress callback and the way to finish it.
type PendingFetch = (ProgressFn, oneshot::Sender<Result<PathBuf, String>>);

/// A fetcher whose fetches finish when the test says so.
#[derive(Default)]
struct ScriptedFetcher {
    /// Pending fetches by digest: the test completes them.
    pending: Mutex<HashMap<Digest, PendingFetch>>,
    started: Notify,
    fetch_count: Mutex<u32>,
}

impl ScriptedFetcher {
    async fn wait_for_fetch(&self, digest: Digest) -> ProgressFn {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let notified = self.started.notified();
                if let Some((progress, _)) = self.lock().get(&digest) {
                    return progress.clone();
                }
                notified.await;
            }
        })
        .await
        .expect("the reconciler should start a fetch")
    }

    fn finish(&self, digest: Digest, outcome: Result<PathBuf, String>) {
        let (_, sender) = self.lock().remove(&digest).expect("a fetch in flight");
        let _ = sender.send(outcome);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, PendingFetch>> {
        self.pending.lock().expect("not poisoned")
    }

    fn fetches(&self) -> u32 {
        *self.fetch_count.lock().expect("not poisoned")
    }
}

impl ArtifactFetcher for Arc<ScriptedFetcher> {
    fn fetch(
        &self,
        assignment: &Assignment,
        progress: ProgressFn,
    ) -> BoxFuture<'static, Result<PathBuf, String>> {
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(assignment.digest, (progress, sender));
        *self.fetch_count.lock().expect("not poisoned") += 1;
        self.started.notify_waiters();
        Box::pin(async move {
            receiver
                .await
                .unwrap_or_else(|_| Err("fetch abandoned".to_owned()))
        })
    }

    fn after_ready(&self, _keep: HashSet<Digest>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Records what it was asked to serve.
#[derive(Default)]
struct RecordingActivator {
    activated: Mutex<Vec<Digest>>,
}

impl Activator for Arc<RecordingActivator> {
    fn activate(&self, activation: Activation) -> BoxFuture<'static, Result<(), String>> {
        self.activated
            .lock()
            .expect("not poisoned")
            .push(activation.assignment.digest);
        Box::pin(async { Ok(()) })
    }

    fn deactivate(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

fn assignment(name: &str) -> Assignment {
    Assignment {
        model: name.to_owned(),
        version: "1.0.0".to_owned(),
        quantization: "q4_1".to_owned(),
        digest: Digest::of(name.as_bytes()),
        size_bytes: 1000,
        blob_base_url: "http://127.0.0.1:1".to_owned(),
        system_prompt: None,
        system_prompt_policy: SystemPromptPolicy::Prepend,
        aliases: Vec::new(),
        escalation_policy: None,
        assignment_generation: 1,
    }
}

fn desired(generation: u64, assignment: Option<Assignment>) -> DesiredState {
    DesiredState {
        generation,
        status: NodeStatus::Active,
        assignment,
        heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
    }
}

struct Harness {
    fetcher: Arc<ScriptedFetcher>,
    activator: Arc<RecordingActivator>,
    link: ReconcilerLink,
    shutdown: CancellationToken,
    state_dir: tempfile::TempDir,
}

impl Harness {
    fn start(restored: Option<PersistedState>) -> Self {
        let state_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(state_dir, restored)
    }

    fn start_in(state_dir: tempfile::TempDir, restored: Option<PersistedState>) -> Self {
        let fetcher = Arc::new(ScriptedFetcher::default());
        let activator = Arc::new(RecordingActivator::default());
        let config = ReconcilerConfig {
            progress_interval: Duration::from_secs(3600),
            ..ReconcilerConfig::new(Some(state_dir.path().to_owned()))
        };
        let (reconciler, link) = Reconciler::new(
            Arc::new(fetcher.clone()),
            Arc::new(activator.clone()),
            config,
            restored,
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(reconciler.run(shutdown.clone()));
        Self {
            fetcher,
            activator,
            link,
            shutdown,
            state_dir,
        }
    }

    fn want(&self, desired: DesiredState) {
        self.link.desired.send_replace(Some(desired));
    }

    async fn wait_for(
        &self,
        what: &str,
        condition: impl Fn(&ObservedState) -> bool,
    ) -> ObservedState {
        let mut observed = self.link.observed.clone();
        tokio::time::timeout(DEADLINE, observed.wait_for(|state| condition(state)))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {what}; last: {:?}",
                    self.link.observed.borrow()
                )
            })
            .map(|state| state.clone())
            .expect("reconciler alive")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn an_assignment_goes_pending_downloading_verifying_ready() {
    let harness = Harness::start(None);
    let alpha = assignment("alpha");
    harness.want(desired(1, Some(alpha.clone())));
    let progress = harness.fetcher.wait_for_fetch(alpha.digest).await;
    let pending = harness
        .wait_for("pending", |s| s.phase == Phase::Pending)
        .await;
    assert_eq!(
        (pending.generation, pending.digest),
        (1, Some(alpha.digest))
    );

    progress(Progress {
        bytes_done: 0,
        bytes_total: 1000,
    });
    harness
        .wait_for("downloading", |s| {
            s.phase
                == Phase::Downloading {
                    bytes_done: 0,
                    bytes_total: 1000,
                }
        })
        .await;
    // Within the progress interval, intermediate progress is coalesced away...
    progress(Progress {
        bytes_done: 500,
        bytes_total: 1000,
    });
    assert_eq!(
        harness.link.observed.borrow().phase,
        Phase::Downloading {
            bytes_done: 0,
            bytes_total: 1000
        }
    );
    // ...but the last byte always reports.
    progress(Progress {
        bytes_done: 1000,
        bytes_total: 1000,
    });
    harness
        .wait_for("verifying", |s| s.phase == Phase::Verifying)
        .await;

    harness
        .fetcher
        .finish(alpha.digest, Ok(PathBuf::from("/blobs/alpha")));
    let ready = harness.wait_for("ready", |s| s.phase == Phase::Ready).await;
    assert_eq!(ready.serving_digest, Some(alpha.digest));
    assert_eq!(
        *harness.activator.activated.lock().expect("lock"),
        vec![alpha.digest]
    );

    // What a restarted agent would say in its hello. The file is written
    // just after the state is published, so wait for it (with a deadline).
    let persisted = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(Some(state)) = persist::load(harness.state_dir.path())
                && state.observed.phase == Phase::Ready
            {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("state.json should say ready");
    assert_eq!(persisted.applied_generation, 1);
}

#[tokio::test]
async fn a_newer_assignment_cancels_the_fetch_of_one_no_longer_wanted() {
    let harness = Harness::start(None);
    let (alpha, bravo) = (assignment("alpha"), assignment("bravo"));
    harness.want(desired(1, Some(alpha.clone())));
    harness.fetcher.wait_for_fetch(alpha.digest).await;
    harness.want(desired(2, Some(bravo.clone())));
    harness.fetcher.wait_for_fetch(bravo.digest).await;
    // Alpha's fetch future was dropped: its completion channel is closed.
    let alpha_sender_closed = harness
        .fetcher
        .lock()
        .get(&alpha.digest)
        .is_some_and(|(_, sender)| sender.is_closed());
    assert!(
        alpha_sender_closed,
        "alpha's fetch should have been dropped"
    );
    harness
        .fetcher
        .finish(bravo.digest, Ok(PathBuf::from("/blobs/bravo")));
    let ready = harness
        .wait_for("bravo ready", |s| s.phase == Phase::Ready)
        .await;
    assert_eq!(
        (ready.generation, ready.serving_digest),
        (2, Some(bravo.digest))
    );
    assert_eq!(
        *harness.activator.activated.lock().expect("lock"),
        vec![bravo.digest]
    );
}

#[tokio::test]
async fn a_new_generation_for_the_same_artifact_keeps_the_fetch_and_repeats_are_no_ops() {
    let harness = Harness::start(None);
    let alpha = assignment("alpha");
    harness.want(desired(1, Some(alpha.clone())));
    harness.fetcher.wait_for_fetch(alpha.digest).await;
    // Only the node status changed: same assignment, new generation.
    let mut cordoned = desired(2, Some(alpha.clone()));
    cordoned.status = NodeStatus::Cordoned;
    harness.want(cordoned.clone());
    harness
        .wait_for("generation 2", |s| s.generation == 2)
        .await;
    harness
        .fetcher
        .finish(alpha.digest, Ok(PathBuf::from("/blobs/alpha")));
    harness.wait_for("ready", |s| s.phase == Phase::Ready).await;
    harness.want(cordoned);
    harness.want(desired(3, Some(alpha.clone())));
    harness
        .wait_for("generation 3", |s| s.generation == 3)
        .await;
    assert_eq!(harness.fetcher.fetches(), 1);
    assert_eq!(harness.link.observed.borrow().phase, Phase::Ready);
}

#[tokio::test]
async fn a_failure_is_reported_and_retried_only_for_a_new_generation() {
    let harness = Harness::start(None);
    let alpha = assignment("alpha");
    harness.want(desired(1, Some(alpha.clone())));
    harness.fetcher.wait_for_fetch(alpha.digest).await;
    harness.fetcher.finish(
        alpha.digest,
        Err("blob blake3:ab… failed verification 3 times".to_owned()),
    );
    let failed = harness
        .wait_for("failed", |s| matches!(s.phase, Phase::Failed { .. }))
        .await;
    assert_eq!(
        failed.phase,
        Phase::Failed {
            reason: "blob blake3:ab… failed verification 3 times".to_owned()
        }
    );
    // The same desired state again does not retry...
    harness.want(desired(1, Some(alpha.clone())));
    // ...a new generation does.
    harness.want(desired(2, Some(alpha.clone())));
    harness.fetcher.wait_for_fetch(alpha.digest).await;
    assert_eq!(harness.fetcher.fetches(), 2);
    harness
        .fetcher
        .finish(alpha.digest, Ok(PathBuf::from("/blobs/alpha")));
    harness
        .wait_for("ready", |s| s.phase == Phase::Ready && s.generation == 2)
        .await;
}

#[tokio::test]
async fn no_assignment_is_idle_and_serves_nothing() {
    let harness = Harness::start(None);
    let alpha = assignment("alpha");
    harness.want(desired(1, Some(alpha.clone())));
    harness.fetcher.wait_for_fetch(alpha.digest).await;
    harness
        .fetcher
        .finish(alpha.digest, Ok(PathBuf::from("/blobs/alpha")));
    harness.wait_for("ready", |s| s.phase == Phase::Ready).await;
    harness.want(desired(2, None));
    let idle = harness.wait_for("idle", |s| s.phase == Phase::Idle).await;
    assert_eq!(
        idle,
        ObservedState {
            generation: 2,
            ..ObservedState::default()
        }
    );
}

#[tokio::test]
async fn a_restart_keeps_the_applied_generation_and_refuses_older_ones() {
    let restored = PersistedState {
        applied_generation: 7,
        observed: ObservedState {
            generation: 7,
            digest: Some(Digest::of(b"alpha")),
            phase: Phase::Ready,
            serving_digest: Some(Digest::of(b"alpha")),
        },
        desired: None,
    };
    let harness = Harness::start(Some(restored));
    let observed = harness.link.observed.borrow().clone();
    // Nothing is served until the engine loaded it again.
    assert_eq!(
        (
            observed.generation,
            observed.phase.clone(),
            observed.serving_digest
        ),
        (7, Phase::Pending, None)
    );
    harness.want(desired(6, None));
    harness.want(desired(7, Some(assignment("alpha"))));
    harness.fetcher.wait_for_fetch(Digest::of(b"alpha")).await;
    assert_eq!(harness.link.observed.borrow().generation, 7);
}

#[tokio::test]
async fn a_restart_serves_the_restored_assignment_without_the_controller() {
    let alpha = assignment("alpha");
    let restored = PersistedState {
        applied_generation: 7,
        observed: ObservedState {
            generation: 7,
            digest: Some(alpha.digest),
            phase: Phase::Ready,
            serving_digest: Some(alpha.digest),
        },
        desired: Some(desired(7, Some(alpha.clone()))),
    };
    let harness = Harness::start(Some(restored));
    // No desired state arrives: the restored one is reconciled towards.
    harness.fetcher.wait_for_fetch(alpha.digest).await;
    harness
        .fetcher
        .finish(alpha.digest, Ok(PathBuf::from("/blobs/alpha")));
    let ready = harness.wait_for("ready", |s| s.phase == Phase::Ready).await;
    assert_eq!(
        (ready.generation, ready.serving_digest),
        (7, Some(alpha.digest))
    );
    // The controller's copy of the same state, once it is back, is a no-op.
    harness.want(desired(7, Some(alpha.clone())));
    assert_eq!(harness.link.observed.borrow().phase, Phase::Ready);
}

fn forbidding_policy(version: u32) -> flotilla_contract::AssignedPolicy {
    flotilla_contract::AssignedPolicy {
        name: "air-gapped".to_owned(),
        version,
        spec: flotilla_contract::PolicySpec {
            egress: flotilla_contract::Egress::Forbidden,
            triggers: flotilla_contract::Triggers::default(),
            scrub: flotilla_contract::ScrubKind::ALL.into_iter().collect(),
        },
    }
}

#[tokio::test]
async fn the_policy_is_published_at_once_kept_across_restarts_and_never_reloads_the_model() {
    let harness = Harness::start(None);
    let mut policy_watch = harness.link.policy.clone();
    assert!(
        policy_watch.current().is_none(),
        "no policy before any desired state"
    );
    let mut alpha = assignment("alpha");
    alpha.escalation_policy = Some(forbidding_policy(1));
    harness.want(desired(1, Some(alpha.clone())));
    // In force before the artifact is even fetched.
    let published = tokio::time::timeout(DEADLINE, policy_watch.changed())
        .await
        .expect("the policy should be published")
        .expect("reconciler alive");
    assert_eq!(published.map(|policy| policy.version), Some(1));
    harness.fetcher.wait_for_fetch(alpha.digest).await;
    harness
        .fetcher
        .finish(alpha.digest, Ok(PathBuf::from("/blobs/alpha")));
    harness.wait_for("ready", |s| s.phase == Phase::Ready).await;

    // A new version of the policy alone: published, the model untouched.
    alpha.escalation_policy = Some(forbidding_policy(2));
    harness.want(desired(2, Some(alpha.clone())));
    let published = tokio::time::timeout(DEADLINE, policy_watch.changed())
        .await
        .expect("the new policy should be published")
        .expect("reconciler alive");
    assert_eq!(published.map(|policy| policy.version), Some(2));
    harness
        .wait_for("generation 2", |s| {
            s.generation == 2 && s.phase == Phase::Ready
        })
        .await;
    assert_eq!(
        harness.fetcher.fetches(),
        1,
        "a policy change fetched again"
    );
    assert_eq!(harness.activator.activated.lock().expect("lock").len(), 1);

    // A restarted agent applies the saved policy before the controller speaks.
    let saved = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(Some(state)) = persist::load(harness.state_dir.path())
                && state.applied_generation == 2
            {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("state.json should hold generation 2");
    let restarted = Harness::start(Some(saved));
    assert_eq!(
        restarted.link.policy.current().map(|policy| policy.version),
        Some(2)
    );

    // Unassigned: no policy, so the node never calls out.
    harness.want(desired(3, None));
    let published = tokio::time::timeout(DEADLINE, policy_watch.changed())
        .await
        .expect("the removal should be published")
        .expect("reconciler alive");
    assert!(published.is_none());
}
