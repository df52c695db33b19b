//! The sync loop over real gRPC on loopback, against a scripted `Fleet`
//! server (the controller's own Sync lands separately): credential renewal
//! after a refusal, hello contents, desired state to reconciler, observed
//! state and heartbeats back, and a credential pushed down the stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_agent::credentials::Credentials;
use flotilla_agent::enrol::{self, NodeIdentity};
use flotilla_agent::reconcile::{AcceptVerifiedBlob, CacheFetcher, Reconciler, ReconcilerConfig};
use flotilla_agent::sync::{LocalNode, SyncAgent, SyncConfig};
use flotilla_agent::{cache, health};
use flotilla_proto::fleet::v1 as pb;
use flotilla_proto::fleet::v1::fleet_server::{Fleet, FleetServer};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(20);

/// What the scripted controller has seen.
#[derive(Default)]
struct Seen {
    bearers: Vec<String>,
    renewals: u32,
    hellos: Vec<pb::Hello>,
    heartbeats: u64,
    observed: Vec<pb::ObservedState>,
}

#[derive(Clone)]
struct ScriptedController {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<watch::Sender<u64>>,
}

impl ScriptedController {
    fn record(&self, update: impl FnOnce(&mut Seen)) {
        update(&mut self.seen.lock().expect("lock"));
        self.changed.send_modify(|count| *count += 1);
    }
}

#[tonic::async_trait]
impl Fleet for ScriptedController {
    async fn enroll(
        &self,
        _request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn renew_credential(
        &self,
        request: Request<pb::RenewCredentialRequest>,
    ) -> Result<Response<pb::RenewCredentialResponse>, Status> {
        let request = request.into_inner();
        if request.node_name != "edge-1" || request.refresh_secret != "refresh-secret" {
            return Err(Status::unauthenticated("wrong refresh secret"));
        }
        self.record(|seen| seen.renewals += 1);
        Ok(Response::new(pb::RenewCredentialResponse {
            credential: "fresh".to_owned(),
            credential_expires_at_unix: i64::MAX / 2,
            status: pb::NodeStatus::Active.into(),
        }))
    }

    type SyncStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.record(|seen| seen.bearers.push(bearer.clone()));
        if bearer != "Bearer fresh" {
            return Err(Status::unauthenticated("credential revoked"));
        }
        let mut inbound = request.into_inner();
        let (outbound, receiver) = mpsc::channel(16);
        let controller = self.clone();
        tokio::spawn(async move {
            let send = |body| pb::ControllerMessage { body: Some(body) };
            let _ = outbound
                .send(Ok(send(pb::controller_message::Body::Desired(
                    pb::DesiredState {
                        generation: 3,
                        status: pb::NodeStatus::Active.into(),
                        assignment: None,
                        heartbeat_interval_ms: 50,
                    },
                ))))
                .await;
            let _ = outbound
                .send(Ok(send(pb::controller_message::Body::Credential(
                    pb::Credential {
                        credential: "rotated".to_owned(),
                        expires_at_unix: 4_000_000_000,
                    },
                ))))
                .await;
            while let Some(Ok(message)) = inbound.next().await {
                match message.body {
                    Some(pb::agent_message::Body::Hello(hello)) => {
                        controller.record(|seen| seen.hellos.push(hello));
                    }
                    Some(pb::agent_message::Body::Heartbeat(heartbeat)) => {
                        controller.record(|seen| seen.heartbeats += 1);
                        let ack = pb::HeartbeatAck {
                            sequence: heartbeat.sequence,
                        };
                        let _ = outbound
                            .send(Ok(send(pb::controller_message::Body::HeartbeatAck(ack))))
                            .await;
                    }
                    Some(pb::agent_message::Body::Observed(observed)) => {
                        controller.record(|seen| seen.observed.push(observed));
                    }
                    None => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

#[tokio::test]
async fn the_sync_loop_renews_a_refused_credential_and_reports_what_it_was_told()
-> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (changed, mut changes) = watch::channel(0u64);
    let controller = ScriptedController {
        seen: Arc::default(),
        changed: Arc::new(changed),
    };
    let server_shutdown = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FleetServer::new(controller.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                server_shutdown.clone().cancelled_owned(),
            ),
    );

    let data_dir = tempfile::tempdir()?;
    // Not expired, but the controller no longer accepts it.
    let identity = NodeIdentity {
        name: "edge-1".to_owned(),
        controller: url.clone(),
        status: "active".to_owned(),
        credential: "revoked".to_owned(),
        credential_expires_at_unix: i64::MAX / 2,
        refresh_secret: "refresh-secret".to_owned(),
    };
    enrol::save(data_dir.path(), &identity)?;
    let credentials = Arc::new(Credentials::new(identity, Some(data_dir.path().to_owned())));
    let cache = Arc::new(
        cache::ArtifactCache::open(
            cache::CacheConfig::new(data_dir.path()),
            cache::BlobSource::new(&url, credentials.token())?,
        )
        .await?,
    );
    let (reconciler, link) = Reconciler::new(
        Arc::new(CacheFetcher::new(cache.clone(), credentials.token(), None)),
        Arc::new(AcceptVerifiedBlob),
        ReconcilerConfig::new(Some(data_dir.path().to_owned())),
        None,
    );
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect_lazy();
    let sync = SyncConfig::new(
        channel,
        credentials.clone(),
        Arc::new(LocalNode::new(
            health::HealthProbe::new(data_dir.path()),
            cache,
        )),
        link.clone(),
    );
    let telemetry = sync.fleet_telemetry.clone();
    let shutdown = CancellationToken::new();
    tokio::spawn(reconciler.run(shutdown.clone()));
    let agent = tokio::spawn(SyncAgent::run(sync, shutdown.clone()));

    // Idle at generation 3 reported, a few heartbeats acked, the pushed
    // credential taken.
    tokio::time::timeout(
        DEADLINE,
        changes.wait_for(|_| {
            let seen = controller.seen.lock().expect("lock");
            seen.heartbeats >= 3
                && seen.observed.iter().any(|observed| {
                    observed.generation == 3 && observed.phase() == pb::AssignmentPhase::Idle
                })
        }),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "agent did not converge; token now {:?}",
            credentials.token().current().len()
        )
    })??;
    {
        let seen = controller.seen.lock().expect("lock");
        assert_eq!(
            seen.bearers.first().map(String::as_str),
            Some("Bearer revoked")
        );
        assert_eq!(seen.renewals, 1);
        let hello = seen.hellos.first().expect("a hello");
        assert_eq!(hello.node_name, "edge-1");
        assert_eq!(hello.applied_generation, 0);
        assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(hello.inventory.is_some());
    }
    assert_eq!(credentials.token().current(), "rotated");
    let saved = enrol::load(data_dir.path())?.expect("identity");
    assert_eq!(saved.credential, "rotated");
    assert_eq!(saved.refresh_secret, "refresh-secret");
    assert_eq!(telemetry.connected_streams(), 1);

    // Acks come back within the run; the latency is measured.
    let acks = telemetry.take_ack_latencies();
    assert!(acks.count >= 1, "{acks:?}");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, agent).await??;
    assert_eq!(telemetry.connected_streams(), 0);
    server_shutdown.cancel();
    Ok(())
}
