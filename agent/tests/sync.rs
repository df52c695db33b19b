//! The agent's sync loop, reconciler and cache against a real controller
//! in-process on loopback (both stores): a credential the controller no
//! longer accepts is renewed with the refresh secret; the agent says hello,
//! receives its assignment, downloads and verifies the artifact, reports it
//! ready and heartbeats; the controller's view shows all of it.

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::credentials::Credentials;
use flotilla_agent::enrol::{self, EnrolRequest};
use flotilla_agent::reconcile::{AcceptVerifiedBlob, CacheFetcher, Reconciler, ReconcilerConfig};
use flotilla_agent::sync::{LocalNode, SyncAgent, SyncConfig};
use flotilla_agent::{cache, health};
use flotilla_api_types as dto;
use flotilla_controller::testing::{TestController, TestStore};
use flotilla_gguf::GgufBuilder;
use serde_json::json;
use tokio_util::sync::CancellationToken;

flotilla_controller::on_both_stores!(agent_converges_on_its_assignment_and_heartbeats);

const DEADLINE: Duration = Duration::from_secs(30);

async fn post(
    http: &reqwest::Client,
    controller: &TestController,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let response = http
        .post(format!("{}{path}", controller.url))
        .bearer_auth(&controller.admin_token)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "POST {path}: {} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    Ok(response.json().await?)
}

async fn agent_converges_on_its_assignment_and_heartbeats(store: TestStore) -> anyhow::Result<()> {
    let controller = TestController::start_with(store, |config| {
        config.heartbeat_interval = Duration::from_millis(200);
    })
    .await?;
    let http = reqwest::Client::new();
    let grpc_url = format!("http://{}", controller.grpc_addr);

    // A model with one artifact.
    post(
        &http,
        &controller,
        "/api/v1/models",
        json!({"name": "tiny"}),
    )
    .await?;
    post(
        &http,
        &controller,
        "/api/v1/models/tiny/versions",
        json!({"version": "1.0.0"}),
    )
    .await?;
    let file = GgufBuilder::tiny_llama(3, 7);
    let digest = blake3::hash(&file).to_hex().to_string();
    let response = http
        .post(format!(
            "{}/api/v1/models/tiny/versions/1.0.0/artifacts",
            controller.url
        ))
        .bearer_auth(&controller.admin_token)
        .body(file.clone())
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());
    let response = http
        .patch(format!(
            "{}/api/v1/models/tiny/versions/1.0.0",
            controller.url
        ))
        .bearer_auth(&controller.admin_token)
        .json(&json!({"state": "published"}))
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());

    // Enrol for real, then spoil the credential: the agent must renew it.
    let token = post(
        &http,
        &controller,
        "/api/v1/nodes/tokens",
        json!({"ttl_seconds": 600, "uses": 1}),
    )
    .await?;
    let data_dir = tempfile::tempdir()?;
    let probe = health::HealthProbe::new(data_dir.path());
    let mut identity = enrol::enrol(
        EnrolRequest {
            controller: grpc_url.clone(),
            bootstrap_token: token["token"].as_str().unwrap_or_default().to_owned(),
            name: "edge-1".to_owned(),
            labels: [("site".to_owned(), "lab".to_owned())].into(),
            replace_existing: false,
            certificates: None,
        },
        &flotilla_agent::tls::CaTrust::system(),
        &probe.inventory().await,
    )
    .await?;
    assert!(!identity.refresh_secret.is_empty());
    identity.credential = "revoked".to_owned();
    enrol::save(data_dir.path(), &identity)?;
    let change = post(
        &http,
        &controller,
        "/api/v1/assignments",
        json!({"node": "edge-1", "model": "tiny", "version": "1.0.0"}),
    )
    .await?;
    let generation = change["assignment"]["generation"].as_u64().unwrap_or(0);
    assert!(generation > 0, "{change}");

    let credentials = Arc::new(Credentials::new(identity, Some(data_dir.path().to_owned())));
    let cache = Arc::new(
        cache::ArtifactCache::open(
            cache::CacheConfig::new(data_dir.path()),
            cache::BlobSource::new(&controller.url, credentials.token())?,
        )
        .await?,
    );
    let (reconciler, link) = Reconciler::new(
        Arc::new(CacheFetcher::new(cache.clone(), credentials.token(), None)),
        Arc::new(AcceptVerifiedBlob),
        ReconcilerConfig::new(Some(data_dir.path().to_owned())),
        None,
    );
    let channel = tonic::transport::Endpoint::from_shared(grpc_url)?.connect_lazy();
    let sync = SyncConfig::new(
        channel,
        credentials.clone(),
        Arc::new(LocalNode::new(probe, cache.clone())),
        link.clone(),
    );
    let telemetry = sync.fleet_telemetry.clone();
    let shutdown = CancellationToken::new();
    let reconciling = tokio::spawn(reconciler.run(shutdown.clone()));
    let agent = tokio::spawn(SyncAgent::run(sync, shutdown.clone()));

    // The controller sees it ready, serving the artifact, heartbeating.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let node = loop {
        let node: dto::NodeInfo = http
            .get(format!("{}/api/v1/nodes/edge-1", controller.url))
            .bearer_auth(&controller.admin_token)
            .send()
            .await?
            .json()
            .await?;
        let converged = node.ready
            && node.observed.as_ref().is_some_and(|observed| {
                observed.phase == "ready"
                    && observed.generation == generation
                    && observed.serving_digest.as_deref() == Some(digest.as_str())
            })
            && node.health.is_some();
        if converged {
            break node;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "agent did not converge: {node:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(node.desired_generation, generation);
    assert_eq!(
        std::fs::read(data_dir.path().join("cache/blobs").join(&digest))?,
        file
    );

    // The renewed credential was persisted and is a real one.
    let saved = enrol::load(data_dir.path())?.expect("identity");
    assert_ne!(saved.credential, "revoked");
    assert_eq!(saved.credential, credentials.token().current());
    assert_eq!(telemetry.connected_streams(), 1);
    assert!(telemetry.take_ack_latencies().count >= 1);

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, agent).await??;
    tokio::time::timeout(DEADLINE, reconciling).await??;
    assert_eq!(telemetry.connected_streams(), 0);
    Ok(())
}
