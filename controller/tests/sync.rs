//! The `Sync` stream against a real controller on loopback, on both stores,
//! with a real tonic client: desired state arrives at hello and again on
//! every assignment change; heartbeats are acked and make the node ready;
//! observed state shows in the REST view; a newer stream replaces an older
//! one; credentials are renewed; and every refused credential (another
//! node's, an operator's, expired, forged) is refused before anything is
//! read or written.

use std::time::Duration;

use flotilla_api_types as dto;
use flotilla_controller::auth::{Authenticator, Role};
use flotilla_controller::testing::{
    TestController, TestStore, api_error, enroll_request, l4_inventory,
};
use flotilla_gguf::GgufBuilder;
use flotilla_proto::fleet::v1 as pb;
use flotilla_proto::fleet::v1::fleet_client::FleetClient;
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

flotilla_controller::on_both_stores!(
    desired_state_flows_and_reports_come_back,
    refused_credentials_read_and_write_nothing,
    newer_stream_replaces_older_and_credentials_renew,
    node_credentials_download_only_their_artifact,
    hello_updates_inventory_and_agent_version,
    ready_nodes_reach_every_stream_in_the_routing_directory,
);

const DEADLINE: Duration = Duration::from_secs(15);

/// The controller, and the gRPC client the simulated agents use.
struct Harness {
    controller: TestController,
    grpc: FleetClient<Channel>,
}

/// One agent's open stream.
struct Stream {
    outbound: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::ControllerMessage>,
}

impl Stream {
    async fn send(&self, body: pb::agent_message::Body) -> anyhow::Result<()> {
        self.outbound
            .send(pb::AgentMessage { body: Some(body) })
            .await?;
        Ok(())
    }

    /// The next message, within the deadline.
    async fn next(&mut self) -> anyhow::Result<pb::controller_message::Body> {
        let message = tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .map_err(|_| anyhow::anyhow!("no message within {DEADLINE:?}"))??
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        message
            .body
            .ok_or_else(|| anyhow::anyhow!("empty controller message"))
    }

    /// Reads until a desired state with at least `generation` arrives.
    async fn desired_at_least(&mut self, generation: u64) -> anyhow::Result<pb::DesiredState> {
        loop {
            if let pb::controller_message::Body::Desired(desired) = self.next().await?
                && desired.generation >= generation
            {
                return Ok(desired);
            }
        }
    }

    async fn heartbeat(&self, sequence: u64, cpu: f32) -> anyhow::Result<()> {
        self.send(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
            sequence,
            sample: Some(pb::HealthSample {
                taken_at_unix_ms: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
                cpu_utilisation_percent: cpu,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 8 << 30,
                disk_available_bytes: Some(100 << 30),
                cpu_temperature_celsius: None,
                gpus: vec![pb::GpuSample {
                    index: 0,
                    memory_used_bytes: 2 << 30,
                    memory_total_bytes: 24 << 30,
                    utilisation_percent: Some(40),
                    temperature_celsius: Some(66),
                    power_draw_milliwatts: Some(70_000),
                    power_limit_milliwatts: Some(72_000),
                    throttle_reasons: vec![],
                }],
                inference: Some(pb::InferenceSample {
                    queue_depth: 3,
                    queue_capacity: 20,
                    completed_total: 40,
                    generated_tokens_total: 1000,
                    tokens_per_second: 55.5,
                    time_to_first_token_p50_ms: Some(120),
                    time_to_first_token_max_ms: Some(400),
                    escalated_total: 9,
                    escalated_since_activation: 4,
                    ..pb::InferenceSample::default()
                }),
                state_write_error: String::new(),
            }),
        }))
        .await
    }
}

impl Harness {
    async fn start(store: TestStore) -> anyhow::Result<Self> {
        let controller = TestController::builder(store)
            .heartbeat_interval(Duration::from_millis(500))
            .start()
            .await?;
        let grpc = controller.fleet_client().await?;
        Ok(Self { controller, grpc })
    }

    /// Another replica of this harness's controller (Postgres only). Its
    /// periodic re-read is an hour away, so only change announcements can
    /// bring it what the other replica commits.
    async fn replica(&self) -> anyhow::Result<Self> {
        let controller = self
            .controller
            .start_replica(|config| {
                config.heartbeat_interval = Duration::from_millis(500);
                config.change_rescan_interval = Duration::from_secs(3600);
            })
            .await?;
        let grpc = controller.fleet_client().await?;
        let replica = Self { controller, grpc };
        let raw = replica.controller.raw();
        eventually("the replica to follow changes", || {
            let request = raw.get("/readyz");
            async move { Ok(request.send().await?.status() == StatusCode::OK) }
        })
        .await?;
        Ok(replica)
    }

    fn admin(&self) -> &str {
        &self.controller.admin_token
    }

    async fn node(&self, name: &str) -> anyhow::Result<dto::NodeInfo> {
        Ok(self.controller.client().node(name).await?)
    }

    /// Enrols `names` (label site=berlin, no inventory) and returns their
    /// enrolments.
    async fn enrol(&self, names: &[&str]) -> anyhow::Result<Vec<pb::EnrollResponse>> {
        let token = self
            .controller
            .client()
            .create_bootstrap_token(&dto::CreateBootstrapTokenRequest {
                ttl_seconds: Some(600),
                uses: Some(u32::try_from(names.len())?),
                ..Default::default()
            })
            .await?;
        let mut enrolled = Vec::new();
        for name in names {
            enrolled.push(
                self.grpc
                    .clone()
                    .enroll(pb::EnrollRequest {
                        inventory: None,
                        agent_version: "test".to_owned(),
                        ..enroll_request(&token.token, name)
                    })
                    .await?
                    .into_inner(),
            );
        }
        Ok(enrolled)
    }

    /// Opens a stream with `credential`, saying hello as `name`.
    async fn open(&self, credential: &str, name: &str) -> Result<Stream, tonic::Status> {
        self.open_with(
            credential,
            pb::Hello {
                node_name: name.to_owned(),
                agent_version: "test".to_owned(),
                ..pb::Hello::default()
            },
        )
        .await
    }

    /// Opens a stream with `credential`, sending `hello` first.
    async fn open_with(&self, credential: &str, hello: pb::Hello) -> Result<Stream, tonic::Status> {
        let (outbound, receiver) = mpsc::channel(16);
        outbound
            .send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Hello(hello)),
            })
            .await
            .map_err(|_| tonic::Status::internal("queue closed"))?;
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {credential}")
                .parse()
                .map_err(|_| tonic::Status::internal("bad metadata"))?,
        );
        let inbound = self.grpc.clone().sync(request).await?.into_inner();
        Ok(Stream { outbound, inbound })
    }

    /// Publishes model `tiny` 1.0.`seed` with one Q4_1 artifact; returns
    /// its digest.
    async fn publish_model(&self, seed: u8) -> anyhow::Result<String> {
        let file = GgufBuilder::tiny_llama(3, seed);
        self.controller
            .publish_model("tiny", &format!("1.0.{seed}"), &file)
            .await
    }

    async fn assign(
        &self,
        request: dto::CreateAssignmentRequest,
    ) -> anyhow::Result<dto::AssignmentChange> {
        Ok(self.controller.client().create_assignment(&request).await?)
    }
}

/// Assigns `tiny` 1.0.1 (what `publish_model(1)` published) to `node`.
fn tiny_on(node: &str) -> dto::CreateAssignmentRequest {
    dto::CreateAssignmentRequest {
        node: Some(node.to_owned()),
        model: "tiny".to_owned(),
        version: "1.0.1".to_owned(),
        ..Default::default()
    }
}

/// The status of an open that must fail.
/// Reports `one` ready, serving `digest` at `generation`, then heartbeats
/// it until `watcher`'s stream receives a directory that lists a node (the
/// directory is rebuilt each second). Returns that directory and the last
/// heartbeat's sequence number.
async fn ready_until_listed(
    one: &mut Stream,
    watcher: &mut Stream,
    generation: u64,
    digest: &str,
    which_directory: &str,
) -> anyhow::Result<(pb::Directory, u64)> {
    one.send(pb::agent_message::Body::Observed(pb::ObservedState {
        generation,
        digest: digest.to_owned(),
        phase: pb::AssignmentPhase::Ready as i32,
        serving_digest: digest.to_owned(),
        ..pb::ObservedState::default()
    }))
    .await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut sequence = 0;
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the node never reached {which_directory}"
        );
        sequence += 1;
        one.heartbeat(sequence, 12.5).await?;
        // The heartbeats pace the wait; the deadline bounds it.
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(300), watcher.next()).await
            && let pb::controller_message::Body::Directory(directory) = message?
            && !directory.entries.is_empty()
        {
            return Ok((directory, sequence));
        }
    }
}

fn refused(result: Result<Stream, tonic::Status>) -> tonic::Status {
    match result {
        Ok(_) => panic!("the stream was opened; expected a refusal"),
        Err(status) => status,
    }
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn desired_state_flows_and_reports_come_back(store: TestStore) -> anyhow::Result<()> {
    let harness = Harness::start(store).await?;
    let enrolled = harness.enrol(&["edge-1", "edge-2"]).await?;
    let mut one = harness.open(&enrolled[0].credential, "edge-1").await?;
    let mut two = harness.open(&enrolled[1].credential, "edge-2").await?;

    // At hello: the complete (empty) desired state and the interval.
    let first = one.desired_at_least(0).await?;
    assert!(first.assignment.is_none());
    assert_eq!(first.heartbeat_interval_ms, 500);
    assert_eq!(first.status, pb::NodeStatus::Active as i32);
    two.desired_at_least(0).await?;

    // A selector assignment reaches both streams with one generation.
    let digest = harness.publish_model(1).await?;
    let change = harness
        .assign(dto::CreateAssignmentRequest {
            node: None,
            selector: Some([("site".to_owned(), "berlin".to_owned())].into()),
            ..tiny_on("")
        })
        .await?;
    let generation = change.assignment.as_ref().expect("recorded").generation;
    assert_eq!(change.nodes_changed.len(), 2);
    for stream in [&mut one, &mut two] {
        let desired = stream.desired_at_least(generation).await?;
        assert_eq!(desired.generation, generation);
        let assignment = desired.assignment.expect("assigned");
        assert_eq!(assignment.digest, digest);
        assert_eq!(assignment.model, "tiny");
        assert_eq!(assignment.quantization, "Q4_1");
        assert_eq!(assignment.blob_base_url, harness.controller.url);
    }

    // A node's own assignment (no such prompt → 404; bad version → 400).
    let admin = harness.controller.client();
    let response = admin
        .create_assignment(&dto::CreateAssignmentRequest {
            prompt: Some("nope@1".to_owned()),
            ..tiny_on("edge-1")
        })
        .await;
    assert_eq!(api_error(response)?.0, StatusCode::NOT_FOUND);
    let response = admin
        .create_assignment(&dto::CreateAssignmentRequest {
            version: "one".to_owned(),
            ..tiny_on("edge-1")
        })
        .await;
    assert_eq!(api_error(response)?.0, StatusCode::BAD_REQUEST);
    let response = admin
        .create_assignment(&dto::CreateAssignmentRequest {
            selector: Some([("a".to_owned(), "b".to_owned())].into()),
            ..tiny_on("edge-1")
        })
        .await;
    assert_eq!(api_error(response)?.0, StatusCode::BAD_REQUEST);
    for (bad, needle) in [
        (
            dto::CreateAssignmentRequest {
                aliases: vec!["Not A Name".to_owned()],
                ..tiny_on("edge-1")
            },
            "invalid alias",
        ),
        (
            dto::CreateAssignmentRequest {
                prompt_policy: Some("ignore".to_owned()),
                ..tiny_on("edge-1")
            },
            "unknown system prompt policy",
        ),
    ] {
        let (status, _, message) = api_error(admin.create_assignment(&bad).await)?;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains(needle), "{message}");
    }

    // Heartbeats are acked in order and make the node ready.
    one.heartbeat(1, 12.5).await?;
    loop {
        if let pb::controller_message::Body::HeartbeatAck(ack) = one.next().await? {
            assert_eq!(ack.sequence, 1);
            break;
        }
    }
    one.send(pb::agent_message::Body::Observed(pb::ObservedState {
        generation,
        digest: digest.clone(),
        phase: pb::AssignmentPhase::Downloading as i32,
        bytes_done: 10,
        bytes_total: 100,
        ..pb::ObservedState::default()
    }))
    .await?;
    eventually("the observed state in the node view", || async {
        let node = harness.node("edge-1").await?;
        Ok(node.ready
            && node
                .observed
                .as_ref()
                .is_some_and(|o| o.phase == "downloading" && o.bytes_done == 10)
            && node.health.as_ref().is_some_and(|h| h.gpus.len() == 1))
    })
    .await?;
    let node = harness.node("edge-1").await?;
    assert_eq!(node.desired_generation, generation);
    // The inference figures of the heartbeat come back in the node view.
    let inference = node
        .health
        .as_ref()
        .and_then(|health| health.inference.clone())
        .expect("inference figures");
    assert_eq!((inference.queue_depth, inference.completed_total), (3, 40));
    assert_eq!(inference.time_to_first_token_p50_ms, Some(120));
    assert_eq!(
        (
            inference.escalated_total,
            inference.escalated_since_activation
        ),
        (9, 4)
    );
    assert_eq!(node.assignment.expect("assigned").digest, digest);
    assert!(!harness.node("edge-2").await?.ready, "no heartbeat yet");

    // Health history has the current minute.
    let history = admin.node_health("edge-1", 5).await?;
    assert_eq!(history.points.len(), 1);
    assert!((history.points[0].cpu_utilisation_percent - 12.5).abs() < 0.01);
    assert_eq!(history.points[0].gpu_temperature_celsius_max, Some(66.0));
    // With the minute's inference: one sample, so no requests counted yet.
    assert_eq!(
        history.points[0].inference,
        Some(dto::InferenceMinute {
            tokens_per_second: 55.5,
            queue_depth_max: 3,
            time_to_first_token_max_ms: Some(400),
            completed: 0,
            failed: 0,
            rejected: 0,
            escalated: 0,
        })
    );

    // A bad report is refused with a clear status and ends the stream.
    one.send(pb::agent_message::Body::Observed(pb::ObservedState {
        generation,
        phase: 99,
        ..pb::ObservedState::default()
    }))
    .await?;
    let error = loop {
        match tokio::time::timeout(DEADLINE, one.inbound.message()).await? {
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("phase"), "{}", error.message());

    // Draining empties edge-2's desired state on its open stream.
    let drained = admin.drain_node("edge-2").await?;
    assert_eq!(drained.status, "cordoned");
    let desired = two.desired_at_least(generation + 1).await?;
    assert!(desired.assignment.is_none());
    assert_eq!(desired.status, pb::NodeStatus::Cordoned as i32);
    Ok(())
}

async fn refused_credentials_read_and_write_nothing(store: TestStore) -> anyhow::Result<()> {
    let harness = Harness::start(store).await?;
    let enrolled = harness.enrol(&["edge-1", "edge-2"]).await?;

    // edge-1's credential claiming to be edge-2.
    let error = refused(harness.open(&enrolled[0].credential, "edge-2").await);
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
    assert!(error.message().contains("edge-2"), "{}", error.message());

    // An operator's token is not a node credential.
    let error = refused(harness.open(harness.admin(), "edge-1").await);
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");

    // Forged: right kid, another secret.
    let forged = harness.controller.forged_token("edge-1", Role::Node)?;
    let error = refused(harness.open(&forged, "edge-1").await);
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");

    // Expired an hour ago, with the right key.
    let expired = harness.controller.expired_token("edge-1", Role::Node)?;
    let error = refused(harness.open(&expired, "edge-1").await);
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");
    assert!(error.message().contains("expired"), "{}", error.message());

    // No credential at all.
    let error = refused(harness.open("", "edge-1").await);
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");

    // None of it connected or reported anything.
    for name in ["edge-1", "edge-2"] {
        let node = harness.node(name).await?;
        assert!(!node.ready && node.observed.is_none() && node.health.is_none());
    }

    // A wrong refresh secret is refused; the right one renews.
    let error = harness
        .grpc
        .clone()
        .renew_credential(pb::RenewCredentialRequest {
            node_name: "edge-1".to_owned(),
            refresh_secret: enrolled[1].refresh_secret.clone(),
            certificate_signing_request: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");
    let renewed = harness
        .grpc
        .clone()
        .renew_credential(pb::RenewCredentialRequest {
            node_name: "edge-1".to_owned(),
            refresh_secret: enrolled[0].refresh_secret.clone(),
            certificate_signing_request: String::new(),
        })
        .await?
        .into_inner();
    let mut stream = harness.open(&renewed.credential, "edge-1").await?;
    stream.desired_at_least(0).await?;
    Ok(())
}

async fn newer_stream_replaces_older_and_credentials_renew(store: TestStore) -> anyhow::Result<()> {
    let harness = Harness::start(store).await?;
    let enrolled = harness.enrol(&["edge-1"]).await?;
    let mut old = harness.open(&enrolled[0].credential, "edge-1").await?;
    old.desired_at_least(0).await?;
    let mut new = harness.open(&enrolled[0].credential, "edge-1").await?;
    new.desired_at_least(0).await?;
    let error = loop {
        match tokio::time::timeout(DEADLINE, old.inbound.message()).await? {
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("old stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(error.code(), Code::Aborted, "{error:?}");

    // A credential past half its life is renewed on the next heartbeat.
    let auth = Authenticator::new(&harness.controller.keys()?, "flotilla")?;
    let generation = auth
        .verify(&enrolled[0].credential)?
        .credential_generation
        .unwrap_or_default();
    let (short, _) = auth.mint_node_credential_with_ttl(
        &"edge-1".parse()?,
        generation,
        Duration::from_secs(600),
    )?;
    let mut stream = harness.open(&short, "edge-1").await?;
    stream.desired_at_least(0).await?;
    stream.heartbeat(1, 1.0).await?;
    let credential = loop {
        if let pb::controller_message::Body::Credential(credential) = stream.next().await? {
            break credential;
        }
    };
    let principal = auth.verify(&credential.credential)?;
    assert_eq!(
        (principal.subject.as_str(), principal.role),
        ("edge-1", Role::Node)
    );
    assert!(credential.expires_at_unix > time::OffsetDateTime::now_utc().unix_timestamp() + 1800);
    Ok(())
}

async fn node_credentials_download_only_their_artifact(store: TestStore) -> anyhow::Result<()> {
    let harness = Harness::start(store).await?;
    let enrolled = harness.enrol(&["edge-1", "edge-2"]).await?;
    let assigned = harness.publish_model(1).await?;
    let other = harness.publish_model(2).await?;
    harness.assign(tiny_on("edge-1")).await?;
    // Blob bytes are not the typed client's business: plain GETs.
    let raw = harness.controller.raw();
    let get = |digest: &str, credential: &str| {
        raw.get(&format!("/api/v1/blobs/{digest}"))
            .bearer_auth(credential.to_owned())
            .send()
    };
    assert_eq!(
        get(&assigned, &enrolled[0].credential).await?.status(),
        StatusCode::OK
    );
    let refused = get(&other, &enrolled[0].credential).await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        get(&assigned, &enrolled[1].credential).await?.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(get(&other, harness.admin()).await?.status(), StatusCode::OK);
    Ok(())
}

async fn hello_updates_inventory_and_agent_version(store: TestStore) -> anyhow::Result<()> {
    let harness = Harness::start(store).await?;
    let enrolled = harness.enrol(&["edge-1"]).await?;
    assert!(harness.node("edge-1").await?.inventory.gpus.is_empty());
    let mut stream = harness
        .open_with(
            &enrolled[0].credential,
            pb::Hello {
                node_name: "edge-1".to_owned(),
                agent_version: "2.0.0".to_owned(),
                inventory: Some(pb::Inventory {
                    cpu_cores: 8,
                    memory_total_bytes: 32 << 30,
                    ..l4_inventory()
                }),
                ..pb::Hello::default()
            },
        )
        .await?;
    stream.desired_at_least(0).await?;
    let node = harness.node("edge-1").await?;
    assert_eq!(node.agent_version, "2.0.0");
    assert_eq!(node.inventory.cpu_cores, 8);
    assert_eq!(
        node.inventory.gpus.first().map(|gpu| gpu.name.as_str()),
        Some("NVIDIA L4")
    );

    // An agent version no one could print is refused.
    let refused = refused(
        harness
            .open_with(
                &enrolled[0].credential,
                pb::Hello {
                    node_name: "edge-1".to_owned(),
                    agent_version: "x".repeat(500),
                    ..pb::Hello::default()
                },
            )
            .await,
    );
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    Ok(())
}

async fn ready_nodes_reach_every_stream_in_the_routing_directory(
    store: TestStore,
) -> anyhow::Result<()> {
    let harness = Harness::start(store).await?;
    let enrolled = harness.enrol(&["edge-1", "edge-2"]).await?;
    let digest = harness.publish_model(1).await?;
    let change = harness
        .assign(dto::CreateAssignmentRequest {
            aliases: vec!["tiny-chat".to_owned()],
            prompt_policy: Some("forbid".to_owned()),
            ..tiny_on("edge-1")
        })
        .await?;
    let generation = change.assignment.as_ref().expect("recorded").generation;
    let advertising = pb::Hello {
        node_name: "edge-1".to_owned(),
        agent_version: "test".to_owned(),
        inference_http_url: "http://10.0.0.1:11434".to_owned(),
        inference_grpc_url: "http://10.0.0.1:50052".to_owned(),
        ..pb::Hello::default()
    };
    // An advertised URL that is not one is refused.
    let refused = refused(
        harness
            .open_with(
                &enrolled[0].credential,
                pb::Hello {
                    inference_http_url: "ftp://10.0.0.1".to_owned(),
                    ..advertising.clone()
                },
            )
            .await,
    );
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("inference_http_url"),
        "{refused:?}"
    );

    let mut one = harness
        .open_with(&enrolled[0].credential, advertising)
        .await?;
    let mut two = harness.open(&enrolled[1].credential, "edge-2").await?;
    let desired = one.desired_at_least(generation).await?;
    let assignment = desired.assignment.expect("assigned");
    assert_eq!(assignment.aliases, ["tiny-chat"]);
    assert_eq!(
        assignment.system_prompt_policy,
        pb::SystemPromptPolicy::Forbid as i32
    );
    // Not ready yet: the directory every stream starts with is empty.
    let first = loop {
        if let pb::controller_message::Body::Directory(directory) = two.next().await? {
            break directory;
        }
    };
    assert!(first.entries.is_empty(), "{first:?}");

    let (listed, mut sequence) =
        ready_until_listed(&mut one, &mut two, generation, &digest, "the directory").await?;
    assert_eq!(
        listed.entries,
        vec![pb::DirectoryEntry {
            model: "tiny".to_owned(),
            version: "1.0.1".to_owned(),
            node: "edge-1".to_owned(),
            http_url: "http://10.0.0.1:11434".to_owned(),
            grpc_url: "http://10.0.0.1:50052".to_owned(),
            load: 10,
            aliases: vec!["tiny-chat".to_owned()],
            queue_depth: 3,
            queue_capacity: 20,
            digest: assignment.digest.clone(),
            size_bytes: assignment.size_bytes,
            quantization: assignment.quantization.clone(),
        }]
    );

    // The controller's own /metrics sums the ready nodes per model. Keep
    // edge-1 heartbeating (so it stays ready) until the figures appear.
    let expected = [
        ("flotilla_fleet_model_nodes_ready{model=\"tiny\"}", 1.0),
        ("flotilla_fleet_model_queue_depth{model=\"tiny\"}", 3.0),
        ("flotilla_fleet_model_queue_capacity{model=\"tiny\"}", 20.0),
        (
            "flotilla_fleet_model_tokens_per_second{model=\"tiny\"}",
            55.5,
        ),
        (
            "flotilla_fleet_model_time_to_first_token_max_seconds{model=\"tiny\"}",
            0.4,
        ),
    ];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        sequence += 1;
        one.heartbeat(sequence, 12.5).await?;
        let rendering = harness
            .controller
            .raw()
            .get("/metrics")
            .send()
            .await?
            .text()
            .await?;
        let value = |series: &str| {
            rendering
                .lines()
                .find(|line| line.starts_with(series))
                .and_then(|line| line.split_whitespace().last())
                .and_then(|value| value.parse::<f64>().ok())
        };
        if expected
            .iter()
            .all(|(series, wanted)| value(series).is_some_and(|got| (got - wanted).abs() < 1e-3))
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the per-model figures never reached /metrics: {rendering}"
        );
        // Poll interval; the figures are published every five seconds.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Two controller replicas share one Postgres: a stream held by one gets
/// what an operator changes through the other (an assignment, a cordon),
/// by the change announcement alone.
#[tokio::test]
async fn changes_reach_streams_held_by_another_replica() -> anyhow::Result<()> {
    let first = Harness::start(TestStore::Postgres).await?;
    let second = first.replica().await?;
    let digest = first.publish_model(1).await?;
    let enrolled = first.enrol(&["edge-1"]).await?;
    let mut stream = second.open(&enrolled[0].credential, "edge-1").await?;
    let initial = stream.desired_at_least(0).await?;
    assert!(initial.assignment.is_none());

    let change = first.assign(tiny_on("edge-1")).await?;
    let generation = change.assignment.as_ref().expect("recorded").generation;
    let desired = stream.desired_at_least(generation).await?;
    assert_eq!(desired.generation, generation);
    assert_eq!(
        desired.assignment.as_ref().map(|a| a.digest.as_str()),
        Some(digest.as_str())
    );

    // A status change alone takes a generation too, so it travels as well.
    first.controller.client().cordon_node("edge-1").await?;
    let cordoned = stream.desired_at_least(generation + 1).await?;
    assert_eq!(cordoned.status, pb::NodeStatus::Cordoned as i32);
    assert_eq!(
        cordoned.assignment.as_ref().map(|a| a.digest.as_str()),
        Some(digest.as_str()),
        "cordoning keeps the assignment"
    );
    Ok(())
}

/// Two controller replicas share one Postgres: a node streaming to one
/// reaches the routing directory of streams held by the other, and leaves
/// it when its stream closes.
#[tokio::test]
async fn the_routing_directory_spans_replicas() -> anyhow::Result<()> {
    let first = Harness::start(TestStore::Postgres).await?;
    let second = first.replica().await?;
    let enrolled = first.enrol(&["edge-1", "edge-2"]).await?;
    let digest = first.publish_model(1).await?;
    let change = first.assign(tiny_on("edge-1")).await?;
    let generation = change.assignment.as_ref().expect("recorded").generation;
    let mut one = first
        .open_with(
            &enrolled[0].credential,
            pb::Hello {
                node_name: "edge-1".to_owned(),
                agent_version: "test".to_owned(),
                inference_http_url: "http://10.0.0.1:11434".to_owned(),
                ..pb::Hello::default()
            },
        )
        .await?;
    let mut two = second.open(&enrolled[1].credential, "edge-2").await?;
    one.desired_at_least(generation).await?;
    // edge-2's stream is held by the other replica.
    let (listed, _) = ready_until_listed(
        &mut one,
        &mut two,
        generation,
        &digest,
        "the other replica's directory",
    )
    .await?;
    let described: Vec<_> = listed
        .entries
        .iter()
        .map(|entry| {
            (
                entry.node.as_str(),
                entry.model.as_str(),
                entry.http_url.as_str(),
            )
        })
        .collect();
    assert_eq!(described, [("edge-1", "tiny", "http://10.0.0.1:11434")]);

    // edge-1's stream closes: the first replica withdraws it, and edge-2's
    // next directory is empty (well before the routes would go stale).
    drop(one);
    let emptied = tokio::time::timeout(DEADLINE, async {
        loop {
            if let pb::controller_message::Body::Directory(directory) = two.next().await?
                && directory.entries.is_empty()
            {
                return anyhow::Ok(());
            }
        }
    })
    .await;
    anyhow::ensure!(
        matches!(emptied, Ok(Ok(()))),
        "edge-1 stayed in the other replica's directory: {emptied:?}"
    );
    Ok(())
}
