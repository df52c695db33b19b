//! `flotilla.fleet.v1.Fleet`: enrolment, credential renewal and the `Sync`
//! stream of agents. Converts wire messages into validated domain types
//! once, on the way in (a bad name or label is `InvalidArgument`), calls
//! [`Fleet`], and maps its errors through [`ApiError`] so that REST and gRPC
//! report a failure alike.
//!
//! Each `Sync` stream is one tokio task (no OS thread): it authenticates the
//! node credential, waits for the hello, registers with the [`SyncHub`] and
//! then sends the complete desired state whenever the hub's `watch` changes,
//! acks heartbeats, sends the routing directory whenever the hub's shared
//! directory `watch` changes, and sends a fresh credential when the one in
//! use is past half its life. What it hears goes to the hub in memory; the hub's flusher
//! writes it to the store in batches.
//!
//! Node certificates (`auth::node_ca`): a signing request on `Enroll` or
//! `RenewCredential` is answered with a certificate; one in the hello is
//! signed when the stream opens and again with every credential the
//! stream sends (at half the life of the credential or of the
//! certificate, whichever comes first), and the hub lists the node only
//! while the certificate issued on its stream is valid.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::fleet::v1 as pb;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth::node_ca::{IssuedCertificate, NodeCsr};
use crate::auth::{AuthError, NODE_CREDENTIAL_TTL, Role, bearer_token};
use crate::domain::{
    AssignmentPhase, DesiredState, DirectoryEntry, HealthSample, Labels, NewNode, NodeInventory,
    NodeName, NodeStatus, ObservedState, PEERS_PER_OFFERING, PromptPolicy, Resend, peer_base_url,
    resend, view_for,
};
use crate::error::ApiError;
use crate::fleet::{Directory, Endpoints, Fleet, PushedState, Session};

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards one agent; desired states are coalesced by the
/// hub's `watch`, so this only absorbs acks.
const OUTBOUND_QUEUE: usize = 16;
/// Longest text kept from an agent's report (failure reasons).
const MAX_REASON_LEN: usize = 2000;
/// Longest advertised inference URL accepted.
const MAX_URL_LEN: usize = 512;

pub(super) struct FleetService {
    pub(super) fleet: Fleet,
    /// Ends every stream when the server shuts down.
    pub(super) shutdown: CancellationToken,
    /// Whether nodes must advertise `https://` URLs: the controller serves
    /// TLS, so the fleet has it, and a node advertising `http://` would
    /// have peers send clients' requests in the clear (issue 16, item 3).
    pub(super) require_https_peers: bool,
}

/// A field of a request that is missing or does not validate.
#[derive(Debug, thiserror::Error)]
enum ProtocolError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid field {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl From<ProtocolError> for Status {
    fn from(error: ProtocolError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

/// The enrolment a request asks for, validated.
struct EnrollArgs {
    bootstrap_token: String,
    node: NewNode,
    replace_existing: bool,
    csr: Option<NodeCsr>,
}

/// A signing request field: empty is none; anything else must parse and
/// verify (`NodeCsr::from_pem`, which bounds its size).
fn csr_from_wire(field: &'static str, pem: &str) -> Result<Option<NodeCsr>, ProtocolError> {
    if pem.is_empty() {
        return Ok(None);
    }
    NodeCsr::from_pem(pem)
        .map(Some)
        .map_err(|error| ProtocolError::Invalid {
            field,
            message: error.to_string(),
        })
}

fn certificate_to_wire(issued: IssuedCertificate) -> pb::NodeCertificate {
    pb::NodeCertificate {
        chain_pem: issued.chain_pem,
        ca_pem: issued.ca_pem,
        expires_at_unix: issued.expires_at.unix_timestamp(),
    }
}

impl TryFrom<pb::EnrollRequest> for EnrollArgs {
    type Error = ProtocolError;

    fn try_from(request: pb::EnrollRequest) -> Result<Self, Self::Error> {
        if request.bootstrap_token.is_empty() {
            return Err(ProtocolError::Missing("bootstrap_token"));
        }
        if request.node_name.is_empty() {
            return Err(ProtocolError::Missing("node_name"));
        }
        let name: NodeName =
            request
                .node_name
                .parse()
                .map_err(|error: crate::domain::InvalidName| ProtocolError::Invalid {
                    field: "node_name",
                    message: error.to_string(),
                })?;
        let labels = Labels::new(request.labels.into_iter().collect::<BTreeMap<_, _>>()).map_err(
            |error| ProtocolError::Invalid {
                field: "labels",
                message: error.to_string(),
            },
        )?;
        let inventory = request
            .inventory
            .map(NodeInventory::from)
            .unwrap_or_default();
        let csr = csr_from_wire(
            "certificate_signing_request",
            &request.certificate_signing_request,
        )?;
        Ok(Self {
            csr,
            bootstrap_token: request.bootstrap_token,
            node: NewNode {
                name,
                labels,
                inventory,
                agent_version: request.agent_version,
            },
            replace_existing: request.replace_existing,
        })
    }
}

fn status_to_wire(status: NodeStatus) -> pb::NodeStatus {
    match status {
        NodeStatus::Pending => pb::NodeStatus::Pending,
        NodeStatus::Active => pb::NodeStatus::Active,
        NodeStatus::Cordoned => pb::NodeStatus::Cordoned,
    }
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let args = EnrollArgs::try_from(request.into_inner())?;
        // Issued before enrolling (and dropped if enrolment is refused), so
        // that a name no certificate can carry does not spend the token.
        let certificate = self.issue(&args.node.name, args.csr.as_ref())?;
        let enrolled = self
            .fleet
            .enroll(&args.bootstrap_token, args.node, args.replace_existing)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::EnrollResponse {
            node_name: enrolled.node.name.to_string(),
            credential: enrolled.credential,
            credential_expires_at_unix: enrolled.credential_expires_at.unix_timestamp(),
            status: status_to_wire(enrolled.node.status).into(),
            refresh_secret: enrolled.refresh_secret,
            certificate: certificate.map(certificate_to_wire),
        }))
    }

    async fn renew_credential(
        &self,
        request: Request<pb::RenewCredentialRequest>,
    ) -> Result<Response<pb::RenewCredentialResponse>, Status> {
        let request = request.into_inner();
        let name = parse_node_name(&request.node_name)?;
        if request.refresh_secret.is_empty() {
            return Err(ProtocolError::Missing("refresh_secret").into());
        }
        let csr = csr_from_wire(
            "certificate_signing_request",
            &request.certificate_signing_request,
        )?;
        let (node, credential, expires_at) = self
            .fleet
            .renew_credential(&name, &request.refresh_secret)
            .await
            .map_err(ApiError::from)?;
        // Only once the refresh secret proved who is asking.
        let certificate = self.issue(&name, csr.as_ref())?;
        Ok(Response::new(pb::RenewCredentialResponse {
            credential,
            credential_expires_at_unix: expires_at.unix_timestamp(),
            status: status_to_wire(node.status).into(),
            certificate: certificate.map(certificate_to_wire),
        }))
    }

    type SyncStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn sync(
        &self,
        request: Request<tonic::Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|value| value.to_str().map_err(|_| AuthError::MalformedHeader))
            .transpose()
            .map_err(ApiError::from)?;
        let token = bearer_token(header).map_err(ApiError::from)?;
        let principal = self.fleet.auth().verify(token).map_err(|error| {
            metrics::counter!("flotilla_auth_failures_total", "surface" => "grpc").increment(1);
            ApiError::from(error)
        })?;
        if principal.role != Role::Node {
            return Err(ApiError::from(AuthError::Forbidden {
                subject: principal.subject,
                role: principal.role,
                required: Role::Node,
            })
            .into());
        }
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10 seconds")),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::invalid_argument("stream closed before hello")),
            Ok(Ok(Some(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "the first message of a sync stream must be a hello",
                ));
            }
        };
        let name = parse_node_name(&hello.node_name)?;
        let csr = csr_from_wire(
            "hello.certificate_signing_request",
            &hello.certificate_signing_request,
        )?;
        let endpoints = Endpoints {
            http_url: advertised_url(
                "inference_http_url",
                &hello.inference_http_url,
                self.require_https_peers,
            )?,
            grpc_url: advertised_url(
                "inference_grpc_url",
                &hello.inference_grpc_url,
                self.require_https_peers,
            )?,
        };
        principal.require_node(&name).map_err(|error| {
            tracing::warn!(credential_of = %principal.subject, claimed = %name,
                "sync refused: credential of another node");
            ApiError::from(error)
        })?;
        // A credential minted before the node was replaced or removed.
        self.fleet
            .check_node_credential(&principal)
            .await
            .map_err(ApiError::from)?;
        let hub = self.fleet.hub().clone();
        // Register first, then read the store: a change committed between
        // the two reaches this stream either way.
        let session = hub.connect(
            &name,
            PushedState {
                status: NodeStatus::Pending,
                desired: DesiredState::default(),
            },
        );
        let inventory = hello.inventory.map(NodeInventory::from);
        let node = match self.fleet.get_node(&name).await {
            Ok(node) => {
                self.fleet
                    .record_hello(node, inventory, &hello.agent_version)
                    .await
            }
            Err(error) => Err(error),
        };
        let node = match node {
            Ok(node) => node,
            Err(error) => {
                hub.disconnect(&session);
                return Err(ApiError::from(error).into());
            }
        };
        hub.offer(
            &session,
            PushedState {
                status: node.status,
                desired: node.desired.clone(),
            },
        );
        if let Some(observed) = hello.observed.map(observed_from_wire).transpose()? {
            hub.observe(&name, observed);
        }
        hub.advertise(&name, endpoints);
        tracing::info!(node = %name, applied_generation = hello.applied_generation,
            desired_generation = node.desired.generation, cached_blobs = hello.cache.len(),
            "sync stream opened");
        let (outbound, receiver) = mpsc::channel(OUTBOUND_QUEUE);
        let stream = StreamTask {
            fleet: self.fleet.clone(),
            session,
            directory: hub.subscribe_directory(),
            view: SentView::default(),
            inbound,
            outbound,
            credential_renew_at: renew_time(principal.expires_at),
            principal,
            csr,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run());
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// When to send a fresh credential: half way through the current one's life.
fn renew_time(expires_at: OffsetDateTime) -> OffsetDateTime {
    expires_at - NODE_CREDENTIAL_TTL / 2
}

impl FleetService {
    /// A certificate for `node`'s key in `csr`, when there is a request
    /// and this controller has a node CA.
    fn issue(
        &self,
        node: &NodeName,
        csr: Option<&NodeCsr>,
    ) -> Result<Option<IssuedCertificate>, Status> {
        let (Some(csr), Some(ca)) = (csr, self.fleet.node_ca()) else {
            return Ok(None);
        };
        ca.issue(node, csr).map(Some).map_err(|error| {
            tracing::warn!(node = %node, %error, "cannot issue a node certificate");
            Status::failed_precondition(error.to_string())
        })
    }
}

/// The routing view last sent to an agent (`domain::view_for`), and a
/// deferred one whose loads alone changed (`domain::resend`).
#[derive(Default)]
struct SentView {
    entries: Option<Vec<DirectoryEntry>>,
    sent_at: Option<tokio::time::Instant>,
    /// When to look again at a view held back for its loads.
    deferred_until: Option<tokio::time::Instant>,
}

/// One open `Sync` stream.
struct StreamTask {
    fleet: Fleet,
    session: Session,
    /// The hub's shared routing directory (starts marked changed).
    directory: tokio::sync::watch::Receiver<Arc<Directory>>,
    /// This agent's view of it, as last sent.
    view: SentView,
    inbound: tonic::Streaming<pb::AgentMessage>,
    outbound: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
    credential_renew_at: OffsetDateTime,
    /// The credential the stream opened with; renewals keep its generation
    /// and are refused once the node's generation moved on.
    principal: crate::auth::Principal,
    /// The hello's signing request, signed anew with every credential.
    csr: Option<NodeCsr>,
    shutdown: CancellationToken,
}

impl StreamTask {
    async fn run(mut self) {
        let hub: Arc<crate::fleet::SyncHub> = self.fleet.hub().clone();
        let node = self.session.node.clone();
        let outcome = self.serve(&hub).await;
        hub.disconnect(&self.session);
        match outcome {
            Ok(()) => tracing::info!(node = %node, "sync stream closed"),
            Err(status) => {
                tracing::info!(node = %node, code = ?status.code(), message = status.message(),
                    "sync stream ended");
                let _ = self.outbound.send(Err(status)).await;
            }
        }
    }

    async fn serve(&mut self, hub: &crate::fleet::SyncHub) -> Result<(), Status> {
        let state = self.session.desired.borrow_and_update().clone();
        self.send_desired(&state).await?;
        // A certificate of this stream's own, before the node is listed.
        if self.csr.is_some() {
            self.renew_credential().await?;
        }
        loop {
            tokio::select! {
                changed = self.session.desired.changed() => {
                    if changed.is_err() {
                        return Err(Status::aborted(
                            "a newer sync stream of this node replaced this one, or the node was replaced or removed",
                        ));
                    }
                    let state = self.session.desired.borrow_and_update().clone();
                    self.send_desired(&state).await?;
                    // An approval lets the node see the directory now.
                    if state.status != NodeStatus::Pending && self.view.entries.is_none() {
                        let directory = self.directory.borrow().clone();
                        self.send_view(&directory).await?;
                    }
                }
                changed = self.directory.changed() => {
                    if changed.is_ok() {
                        let directory = self.directory.borrow_and_update().clone();
                        self.send_view(&directory).await?;
                    }
                }
                () = deferred(self.view.deferred_until) => {
                    let directory = self.directory.borrow().clone();
                    self.send_view(&directory).await?;
                }
                message = self.inbound.message() => {
                    match message {
                        Ok(Some(message)) => self.handle(hub, message).await?,
                        Ok(None) => return Ok(()),
                        Err(status) => {
                            tracing::debug!(node = %self.session.node, %status, "agent stream error");
                            return Ok(());
                        }
                    }
                }
                () = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("the controller is shutting down; reconnect"));
                }
            }
        }
    }

    async fn handle(
        &mut self,
        hub: &crate::fleet::SyncHub,
        message: pb::AgentMessage,
    ) -> Result<(), Status> {
        match message.body {
            Some(pb::agent_message::Body::Heartbeat(heartbeat)) => {
                let now = OffsetDateTime::now_utc();
                let sample = heartbeat
                    .sample
                    .map(|sample| HealthSample::from_wire(sample, now))
                    .unwrap_or_else(|| HealthSample::empty(now));
                hub.heartbeat(&self.session.node, sample, now);
                self.send(pb::controller_message::Body::HeartbeatAck(
                    pb::HeartbeatAck {
                        sequence: heartbeat.sequence,
                    },
                ))
                .await?;
                if now >= self.credential_renew_at {
                    self.renew_credential().await?;
                }
                Ok(())
            }
            Some(pb::agent_message::Body::Observed(observed)) => {
                hub.observe(&self.session.node, observed_from_wire(observed)?);
                Ok(())
            }
            Some(pb::agent_message::Body::Hello(_)) => Err(Status::invalid_argument(
                "hello is only valid as the first message of a stream",
            )),
            None => Err(Status::invalid_argument("empty agent message")),
        }
    }

    /// Sends the agent its view of `directory` when it differs from the
    /// last one sent, or defers it when only loads moved.
    async fn send_view(&mut self, directory: &Directory) -> Result<(), Status> {
        // A pending node is not yet trusted with its peers' names and URLs.
        if self.session.desired.borrow().status == NodeStatus::Pending {
            self.view = SentView::default();
            return Ok(());
        }
        let view = view_for(&self.session.node, &directory.entries, PEERS_PER_OFFERING);
        let since = self.view.sent_at.map_or(Duration::MAX, |at| at.elapsed());
        match resend(
            self.view.entries.as_deref(),
            &view,
            &directory.entries,
            since,
        ) {
            Resend::Nothing => {
                self.view.deferred_until = None;
                Ok(())
            }
            Resend::After(wait) => {
                self.view.deferred_until = Some(tokio::time::Instant::now() + wait);
                Ok(())
            }
            Resend::Now => {
                self.send(pb::controller_message::Body::Directory(directory_to_wire(
                    &view,
                )))
                .await?;
                self.view = SentView {
                    entries: Some(view),
                    sent_at: Some(tokio::time::Instant::now()),
                    deferred_until: None,
                };
                Ok(())
            }
        }
    }

    async fn renew_credential(&mut self) -> Result<(), Status> {
        // The node may have been replaced or removed since the stream
        // opened (on another replica, say): then the stream ends here
        // instead of renewing a revoked credential.
        self.fleet
            .check_node_credential(&self.principal)
            .await
            .map_err(ApiError::from)?;
        let generation = self.principal.credential_generation.unwrap_or_default();
        let (credential, expires_at) = self
            .fleet
            .auth()
            .mint_node_credential(&self.session.node, generation)
            .map_err(ApiError::from)?;
        self.credential_renew_at = renew_time(expires_at);
        let certificate = match (&self.csr, self.fleet.node_ca()) {
            (Some(csr), Some(ca)) => match ca.issue(&self.session.node, csr) {
                Ok(issued) => {
                    // Renewed with the credential, or sooner when the
                    // certificate lives shorter.
                    let half_life =
                        time::Duration::try_from(ca.ttl() / 2).unwrap_or(time::Duration::ZERO);
                    self.credential_renew_at =
                        self.credential_renew_at.min(issued.expires_at - half_life);
                    self.fleet.hub().certify(&self.session, issued.expires_at);
                    Some(certificate_to_wire(issued))
                }
                Err(error) => {
                    // The node stays unlisted once its certificate expires.
                    tracing::warn!(node = %self.session.node, %error, "cannot issue a node certificate");
                    None
                }
            },
            _ => None,
        };
        tracing::debug!(node = %self.session.node, %expires_at, certificate = certificate.is_some(),
            "sent a fresh node credential");
        self.send(pb::controller_message::Body::Credential(pb::Credential {
            credential,
            expires_at_unix: expires_at.unix_timestamp(),
            certificate,
        }))
        .await
    }

    async fn send_desired(&self, state: &PushedState) -> Result<(), Status> {
        let message = desired_to_wire(
            state,
            &self.fleet.blob_base_url(),
            self.fleet.hub().heartbeat_interval(),
        );
        self.send(pb::controller_message::Body::Desired(message))
            .await
    }

    async fn send(&self, body: pb::controller_message::Body) -> Result<(), Status> {
        self.outbound
            .send(Ok(pb::ControllerMessage { body: Some(body) }))
            .await
            // The agent went away; the stream ends quietly.
            .map_err(|_| Status::cancelled("agent disconnected"))
    }
}

fn parse_node_name(raw: &str) -> Result<NodeName, ProtocolError> {
    if raw.is_empty() {
        return Err(ProtocolError::Missing("node_name"));
    }
    raw.parse()
        .map_err(|error: crate::domain::InvalidName| ProtocolError::Invalid {
            field: "node_name",
            message: error.to_string(),
        })
}

/// An advertised URL: empty, or `http(s)://host[:port]` of reasonable
/// length and nothing more (`domain::peer_base_url`); `https` only when
/// `require_https`.
fn advertised_url(
    field: &'static str,
    raw: &str,
    require_https: bool,
) -> Result<String, ProtocolError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    if raw.len() > MAX_URL_LEN || raw.chars().any(char::is_whitespace) {
        return Err(ProtocolError::Invalid {
            field,
            message: format!(
                "expected an http:// or https:// URL of at most {MAX_URL_LEN} characters"
            ),
        });
    }
    peer_base_url(raw, require_https).map_err(|error| {
        tracing::warn!(field, %error, "refused an advertised inference URL");
        ProtocolError::Invalid {
            field,
            message: error.to_string(),
        }
    })
}

/// Completes when `until` passes; never without one.
async fn deferred(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

fn directory_to_wire(entries: &[DirectoryEntry]) -> pb::Directory {
    pb::Directory {
        entries: entries.iter().map(pb::DirectoryEntry::from).collect(),
    }
}

fn desired_to_wire(
    state: &PushedState,
    blob_base_url: &str,
    heartbeat_interval: Duration,
) -> pb::DesiredState {
    pb::DesiredState {
        generation: state.desired.generation,
        status: status_to_wire(state.status).into(),
        assignment: state
            .desired
            .assignment
            .as_ref()
            .map(|assignment| pb::Assignment {
                model: assignment.model.clone(),
                version: assignment.version.clone(),
                quantization: assignment.quantization.clone(),
                digest: assignment.digest.clone(),
                size_bytes: assignment.size_bytes,
                blob_base_url: blob_base_url.to_owned(),
                system_prompt: assignment.prompt.as_ref().map(|prompt| pb::SystemPrompt {
                    name: prompt.name.clone(),
                    version: prompt.version,
                    text: prompt.text.clone(),
                    chat_template: prompt.chat_template.clone().unwrap_or_default(),
                }),
                assignment_generation: assignment.assignment_generation,
                system_prompt_policy: match assignment.prompt_policy {
                    PromptPolicy::Prepend => pb::SystemPromptPolicy::Prepend,
                    PromptPolicy::Replace => pb::SystemPromptPolicy::Replace,
                    PromptPolicy::Forbid => pb::SystemPromptPolicy::Forbid,
                }
                .into(),
                aliases: assignment.aliases.clone(),
                // The policy goes as stored: its credential is a reference
                // the node resolves, so nothing secret is on the stream.
                escalation_policy: assignment
                    .escalation_policy
                    .as_ref()
                    .map(pb::EscalationPolicy::from),
            }),
        heartbeat_interval_ms: u32::try_from(heartbeat_interval.as_millis()).unwrap_or(u32::MAX),
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn observed_from_wire(observed: pb::ObservedState) -> Result<ObservedState, ProtocolError> {
    let phase = match pb::AssignmentPhase::try_from(observed.phase) {
        Ok(pb::AssignmentPhase::Idle) => AssignmentPhase::Idle,
        Ok(pb::AssignmentPhase::Pending) => AssignmentPhase::Pending,
        Ok(pb::AssignmentPhase::Downloading) => AssignmentPhase::Downloading,
        Ok(pb::AssignmentPhase::Verifying) => AssignmentPhase::Verifying,
        Ok(pb::AssignmentPhase::Loading) => AssignmentPhase::Loading,
        Ok(pb::AssignmentPhase::Ready) => AssignmentPhase::Ready,
        Ok(pb::AssignmentPhase::Failed) => AssignmentPhase::Failed,
        Ok(pb::AssignmentPhase::Unspecified) | Err(_) => {
            return Err(ProtocolError::Invalid {
                field: "observed.phase",
                message: format!("unknown phase {}", observed.phase),
            });
        }
    };
    let digest_field = |field: &'static str, text: String| {
        if text.len() > 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Err(ProtocolError::Invalid {
                field,
                message: "expected blake3 hex".to_owned(),
            })
        } else {
            Ok(non_empty(text))
        }
    };
    Ok(ObservedState {
        generation: observed.generation,
        digest: digest_field("observed.digest", observed.digest)?,
        phase,
        bytes_done: observed.bytes_done,
        bytes_total: observed.bytes_total,
        reason: non_empty(observed.reason.chars().take(MAX_REASON_LEN).collect()),
        serving_digest: digest_field("observed.serving_digest", observed.serving_digest)?,
    })
}
