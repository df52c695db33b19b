//! Inference serving on this node: the model it serves and the APIs clients
//! reach it through (DESIGN.md §5 and §7).
//!
//! - [`models`]: [`ModelSlot`] (the served model, swapped in one step) and
//!   [`EngineActivator`] (the reconciler's activator: load, warm up, swap).
//! - [`request`]: requests as plain domain types, validated once.
//! - [`card`]: what a loaded GGUF says about itself (family, parameter
//!   size, template, metadata), for Ollama's model routes.
//! - `fields`: the table of every request field each HTTP surface's API
//!   defines, and the 400 for one this node does not implement.
//! - [`generation`]: one running generation: admission into the bounded
//!   queue, cancellation when the client goes away, the per-request timeout,
//!   metrics.
//! - [`embedding`]: one embedding request: admission into the same queue,
//!   the engine's pooled vectors off the tokio workers; `embed_routes`: its
//!   OpenAI and Ollama routes.
//! - [`stats`]: the inference figures each heartbeat carries.
//! - [`error`]: [`ServeError`], mapped to HTTP and gRPC statuses in one place.
//! - [`browser`]: the `Host`, `Origin` and content-type checks that keep
//!   web pages from using the HTTP API unless configured.
//! - `http` (axum): the OpenAI-compatible `/v1/*` (`openai`) and the
//!   Ollama-compatible `/api/*` (`ollama` for generation, `ollama_models`
//!   for tags, show, ps, pull and version) on one port, plus `/metrics`.
//! - `grpc` (tonic): `flotilla.inference.v1.Inference`, `grpc.health.v1`
//!   and server reflection.
//!
//! The servers take pre-bound listeners and a shutdown token, so tests bind
//! port 0. Nothing here is persisted.
//!
//! Routing: a request for a model this node does not serve is forwarded
//! ([`forward`]) to a ready peer from the directory ([`crate::routing`]),
//! unless it was forwarded already; with no peer it gets the not-found that
//! names the model.

mod ask_local;
pub mod auth;
pub mod browser;
pub mod card;
mod dispatch;
mod embed_routes;
pub mod embedding;
pub mod error;
mod escalate;
mod fields;
mod forward;
pub mod generation;
mod grpc;
mod headers;
mod http;
pub mod metrics;
pub mod models;
mod ollama;
mod ollama_models;
mod openai;
pub mod request;
mod scrub;
pub mod stats;
mod tool_wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::reconcile::PolicyWatch;
use crate::routing::{Peer, Routes};
use crate::tls::CaTrust;
use flotilla_tls::ServerTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{ApiKeys, InferenceAuth, JwtVerifier};
pub use browser::BrowserPolicy;
pub use error::ServeError;
pub use generation::{AnsweredBy, Chunk, Completion, FinishReason, Finished, Generation};
pub use models::{EngineActivator, ModelInfo, ModelSlot, ServedModel};
pub use request::{InferenceRequest, Input, Message, Params, Role};

/// Where the OpenAI/Ollama-compatible HTTP API listens unless told otherwise
/// (Ollama's port, so tools written for Ollama work unchanged).
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 11434);
/// Where the gRPC inference API listens unless told otherwise.
pub const DEFAULT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50052);

/// Limits and defaults of inference serving.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Requests that may wait for a decoding slot, per model.
    pub queue_capacity: usize,
    /// Sequences decoded together in one forward pass.
    pub max_batch: usize,
    /// A request still running after this long is cancelled.
    pub request_timeout: Duration,
    /// New tokens when a request does not say.
    pub default_max_tokens: usize,
    /// What a refused request is told to wait (`Retry-After`).
    pub retry_after: Duration,
    /// Kernel threads per loaded model (`None`: all cores).
    pub engine_threads: Option<usize>,
    /// Where models run (`--device`).
    pub device: flotilla_engine::DeviceRequest,
    /// How long the warm-up generation of a new model may take.
    pub warm_up_timeout: Duration,
    /// API keys or JWTs the inference APIs require (`None`: open, see
    /// [`auth`]).
    pub auth: Option<Arc<InferenceAuth>>,
    /// The roots trusted for peers' `https://` URLs when forwarding.
    pub peer_trust: CaTrust,
    /// Forward to `https://` peers only, never over plain `http://`: set
    /// when the agent has TLS configured (`--tls-cert`, `--peer-ca` or
    /// `--peer-tls-name`), so that a peer advertising `http://` cannot
    /// downgrade the fleet (issue 16, item 3).
    pub peer_https_only: bool,
    /// Which `Host`s and web origins the HTTP API serves (`browser`).
    pub browser: Arc<BrowserPolicy>,
}

impl ServeConfig {
    /// The HTTP client requests are forwarded to peers with.
    pub fn peer_http_client(&self) -> Result<reqwest::Client, String> {
        self.peer_trust
            .http_client(reqwest::Client::builder())
            .connect_timeout(crate::routing::PEER_CONNECT_TIMEOUT)
            .build()
            .map_err(|error| format!("cannot build the HTTP client for peers: {error}"))
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            queue_capacity: 16,
            max_batch: 4,
            request_timeout: Duration::from_secs(300),
            default_max_tokens: 512,
            retry_after: Duration::from_secs(1),
            engine_threads: None,
            device: flotilla_engine::DeviceRequest::Cpu,
            warm_up_timeout: Duration::from_secs(120),
            auth: None,
            peer_trust: CaTrust::system(),
            peer_https_only: false,
            browser: Arc::new(BrowserPolicy::default()),
        }
    }
}

/// What both servers share.
#[derive(Debug, Clone)]
pub struct Serving {
    pub slot: Arc<ModelSlot>,
    pub config: Arc<ServeConfig>,
    /// Peers serving other models (the sync loop fills it).
    pub routes: Arc<Routes>,
    /// The escalation policy in force (issue 20; the reconciler publishes
    /// it): none means this node never calls out.
    pub policy: PolicyWatch,
    /// Calls the policy's upstream (the system's roots: an upstream is a
    /// public API, not a fleet node).
    pub upstream_client: reqwest::Client,
}

impl Serving {
    pub fn new(config: ServeConfig) -> Serving {
        Serving {
            slot: Arc::new(ModelSlot::new()),
            routes: Arc::new(Routes::new(
                config.peer_trust.clone(),
                config.peer_https_only,
            )),
            config: Arc::new(config),
            policy: PolicyWatch::none(),
            upstream_client: reqwest::Client::builder()
                .connect_timeout(escalate::UPSTREAM_CONNECT_TIMEOUT)
                .build()
                .unwrap_or_else(|error| {
                    tracing::error!(%error, "cannot build the upstream client; using the defaults");
                    reqwest::Client::new()
                }),
        }
    }

    /// Serves under the escalation policy `policy` publishes.
    pub fn with_policy(mut self, policy: PolicyWatch) -> Serving {
        self.policy = policy;
        self
    }

    /// Every model reachable through this node, for the listing APIs
    /// (`/v1/models`, `/api/tags`, `ListModels`): the one served here
    /// first, then each model only peers serve, once, by its least busy
    /// peer.
    pub fn catalogue(&self) -> Vec<Listed> {
        let local = self.slot.current();
        let mut listed: Vec<Listed> = local
            .iter()
            .map(|model| {
                let info = model.info();
                Listed {
                    name: info.name.clone(),
                    aliases: info.aliases.clone(),
                    version: info.version.clone(),
                    reached: Reached::Local(info.clone()),
                }
            })
            .collect();
        let mut routed: Vec<Peer> = Vec::new();
        for peer in self.routes.peers().iter() {
            if local
                .as_ref()
                .is_some_and(|model| model.answers_to(&peer.model))
            {
                continue;
            }
            match routed.iter_mut().find(|listed| listed.model == peer.model) {
                Some(listed) if listed.busyness() > peer.busyness() => *listed = peer.clone(),
                Some(_) => {}
                None => routed.push(peer.clone()),
            }
        }
        listed.extend(routed.into_iter().map(|peer| Listed {
            name: peer.model.clone(),
            aliases: peer.aliases.clone(),
            version: peer.version.clone(),
            reached: Reached::Peer(peer),
        }));
        listed
    }

    /// The reconciler's activator that fills this slot.
    pub fn activator(&self) -> EngineActivator {
        EngineActivator::new(self.slot.clone(), self.config.clone())
    }
}

/// One model reachable through this node.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub aliases: Vec<String>,
    pub version: String,
    pub reached: Reached,
}

impl Listed {
    /// The name, then the aliases: each is listed as a model of its own,
    /// since clients pick from the list by name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// Where a listed model is served.
#[derive(Debug, Clone)]
pub enum Reached {
    /// Here, with what is known about it.
    Local(ModelInfo),
    /// Through this peer (the least busy of those serving it).
    Peer(Peer),
}

/// Serves the OpenAI- and Ollama-compatible HTTP API on `listener` until
/// `shutdown`; `/metrics` renders `metrics` when given.
pub async fn serve_http(
    listener: TcpListener,
    serving: Serving,
    metrics: Option<PrometheusHandle>,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = http::router(serving, metrics);
    // No grace of its own: the agent's --shutdown-grace bounds the wait.
    flotilla_tls::serve_router(listener, router, tls, shutdown, None).await
}

/// Serves `flotilla.inference.v1.Inference`, health and reflection on
/// `listener` until `shutdown`, over TLS when `tls` is given.
pub async fn serve_grpc(
    listener: TcpListener,
    serving: Serving,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    grpc::serve(listener, serving, tls, shutdown).await
}
