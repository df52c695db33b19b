//! `flotilla-agent`: the edge agent binary.
//!
//! On start it looks for its identity in `DATA_DIR/node.toml`. Without one
//! (or with `--replace`) it enrols with the controller using
//! `--bootstrap-token` and saves the identity it is granted; a restarted
//! agent needs no token. Then it runs the reconciler and the sync loop until
//! SIGINT or SIGTERM, when it closes its stream and exits 0.
//!
//! `--simulate N` instead runs N simulated agents in this process (see
//! `flotilla_agent::simulate`) and prints a one-line summary to stderr every
//! few seconds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use flotilla_agent::cache::{ArtifactCache, BlobSource, CacheConfig};
use flotilla_agent::credentials::Credentials;
use flotilla_agent::enrol::{self, EnrolRequest, NodeIdentity};
use flotilla_agent::health::HealthProbe;
use flotilla_agent::node_cert::NodeCertificates;
use flotilla_agent::reconcile::{CacheFetcher, Reconciler, ReconcilerConfig, persist};
use flotilla_agent::serve::{self, ServeConfig, Serving};
use flotilla_agent::simulate::{Simulation, SimulationConfig};
use flotilla_agent::sync::{AdvertisedUrls, LocalNode, SyncAgent, SyncConfig};
use flotilla_agent::tls::CaTrust;
use tokio_util::sync::CancellationToken;

/// How often `--simulate` prints its summary line.
const SIMULATION_SUMMARY_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla's edge agent")]
struct Cli {
    /// The controller's gRPC URL, e.g. http://127.0.0.1:50051 (needed to
    /// enrol; afterwards it overrides the URL saved at enrolment).
    #[arg(long, env = "FLOTILLA_CONTROLLER", value_name = "URL")]
    controller: Option<String>,
    /// One-time token from `flotilla node token create`; needed only to enrol.
    #[arg(
        long,
        env = "FLOTILLA_BOOTSTRAP_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    bootstrap_token: Option<String>,
    /// A private CA (PEM) the controller's certificate chains to, for an
    /// `https://` controller URL; the system's roots are trusted as well.
    #[arg(long, env = "FLOTILLA_CONTROLLER_CA", value_name = "PEM")]
    controller_ca: Option<PathBuf>,
    /// This node's name in the fleet (a-z, 0-9, '.', '_', '-').
    #[arg(long, env = "FLOTILLA_NODE_NAME")]
    name: Option<String>,
    /// Where the agent keeps its identity, state and artifact cache.
    #[arg(
        long,
        env = "FLOTILLA_DATA_DIR",
        value_name = "DIR",
        required_unless_present = "simulate"
    )]
    data_dir: Option<PathBuf>,
    /// Labels for placement, e.g. site=berlin,gpu=l4.
    #[arg(long, default_value = "")]
    labels: String,
    /// Re-enrol, replacing a node of the same name (needs --bootstrap-token).
    #[arg(long)]
    replace: bool,
    /// Address for the OpenAI/Ollama-compatible HTTP API (and /metrics).
    #[arg(long, value_name = "ADDR", default_value_t = serve::DEFAULT_HTTP_ADDR)]
    http: SocketAddr,
    /// Address for the gRPC inference API (with health and reflection).
    #[arg(long, value_name = "ADDR", default_value_t = serve::DEFAULT_GRPC_ADDR)]
    grpc: SocketAddr,
    /// URL peers use to reach the HTTP API, told to the controller for
    /// routing (default: http://<bound --http address>, https:// with
    /// --tls-cert; set it when binding 0.0.0.0 or behind NAT).
    #[arg(long, value_name = "URL")]
    advertise_http: Option<String>,
    /// URL peers use to reach the gRPC API (default: http://<bound --grpc
    /// address>, https:// with --tls-cert).
    #[arg(long, value_name = "URL")]
    advertise_grpc: Option<String>,
    /// Serve the inference APIs (HTTP and gRPC) over TLS with this
    /// certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        env = "FLOTILLA_AGENT_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(
        long,
        env = "FLOTILLA_AGENT_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// A private CA (PEM) that peers' inference certificates chain to, for
    /// forwarding to https:// peers (default: --controller-ca); the
    /// system's roots are trusted as well.
    #[arg(long, env = "FLOTILLA_PEER_CA", value_name = "PEM")]
    peer_ca: Option<PathBuf>,
    /// Verify peers' certificates against this one DNS name, whatever
    /// address they are reached at (a fleet-wide certificate for peers at
    /// pod IPs, say), trusting the peer CA alone.
    #[arg(long, env = "FLOTILLA_PEER_TLS_NAME", value_name = "NAME")]
    peer_tls_name: Option<String>,
    /// Use this node's own certificate from the controller's node CA
    /// (issued at enrolment, renewed with the credential) for the
    /// inference APIs and between peers: serve with it, present it when
    /// forwarding, and accept a peer only with the node CA's certificate
    /// for the node the directory lists (forwarding agents likewise). Set
    /// it on every agent of a fleet whose controller serves TLS.
    #[arg(
        long,
        env = "FLOTILLA_TLS_NODE_CERT",
        conflicts_with_all = ["tls_cert", "tls_key", "peer_tls_name", "peer_ca"]
    )]
    tls_node_cert: bool,
    /// Inference requests per model that may wait for a decoding slot;
    /// beyond them (plus the batch) requests get 429 / RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = ServeConfig::default().queue_capacity)]
    inference_queue: usize,
    /// Requests decoded together in one batched forward pass.
    #[arg(long, value_name = "N", default_value_t = ServeConfig::default().max_batch)]
    inference_batch: usize,
    /// Seconds after which a running inference request is cancelled.
    #[arg(long, value_name = "SECONDS", default_value_t = ServeConfig::default().request_timeout.as_secs())]
    inference_timeout: u64,
    /// API keys the inference APIs require, one per line (`Authorization:
    /// Bearer KEY`). Needed when --http or --grpc listens beyond loopback.
    #[arg(long, value_name = "PATH", env = "FLOTILLA_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// Also accept JWTs on the inference APIs, verified with this key: the
    /// identity provider's public key (RSA, EC or Ed25519 PEM) or an HMAC
    /// secret of at least 32 bytes made for inference alone (never the
    /// controller's signing key).
    #[arg(long, value_name = "PATH", env = "FLOTILLA_INFERENCE_JWT_KEY")]
    inference_jwt_key: Option<PathBuf>,
    /// The `aud` claim inference JWTs must carry.
    #[arg(long, value_name = "AUDIENCE", default_value = serve::auth::DEFAULT_JWT_AUDIENCE,
        requires = "inference_jwt_key")]
    inference_jwt_audience: String,
    /// The `iss` claim inference JWTs must carry (default: any).
    #[arg(long, value_name = "ISSUER", requires = "inference_jwt_key")]
    inference_jwt_issuer: Option<String>,
    /// Serve inference beyond loopback without authentication.
    #[arg(long)]
    allow_unauthenticated_inference: bool,
    /// Host names (or addresses) clients may reach the HTTP API by, besides
    /// loopback names, the advertised URLs' hosts and the bound address;
    /// `*` for any. A request with another `Host` is refused (403), which
    /// stops DNS rebinding.
    #[arg(
        long,
        value_name = "HOST",
        value_delimiter = ',',
        env = "FLOTILLA_ALLOWED_HOSTS"
    )]
    allowed_host: Vec<String>,
    /// Web origins (e.g. https://app.example.com) whose pages may call the
    /// HTTP API; CORS is answered for them alone. Without it, any request
    /// with an `Origin` is refused (403).
    #[arg(
        long,
        value_name = "ORIGIN",
        value_delimiter = ',',
        env = "FLOTILLA_CORS_ORIGINS"
    )]
    cors_origin: Vec<String>,
    /// On SIGTERM/SIGINT, how long running inference requests may take to
    /// finish before the agent exits without them.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    shutdown_grace: u64,
    /// Kernel threads of the inference engine (default: all cores).
    #[arg(long, value_name = "N")]
    engine_threads: Option<usize>,
    /// Where models run: cpu (the CPU kernels), gpu or gpu:N (a GPU adapter,
    /// through Vulkan, Metal or DX12; an error when there is none), or auto
    /// (a hardware GPU when there is one and the model loads on it, else the
    /// CPU). `flotilla-engine devices` lists the adapters.
    #[arg(
        long,
        value_name = "DEVICE",
        env = "FLOTILLA_DEVICE",
        default_value = "cpu"
    )]
    device: flotilla_engine::DeviceRequest,
    /// Keep the artifact cache under this size (e.g. 50G), evicting the
    /// least recently used blobs that are not assigned or served.
    #[arg(long, value_name = "BYTES", value_parser = parse_byte_count)]
    cache_budget: Option<u64>,
    /// Limit artifact downloads to this many bytes per second (e.g. 20M).
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse_byte_count)]
    max_download_rate: Option<u64>,
    /// Run N simulated agents in this process instead of one real one.
    #[arg(long, value_name = "N", conflicts_with_all = ["data_dir", "replace"])]
    simulate: Option<usize>,
    /// Name prefix of simulated nodes: <prefix>-0, <prefix>-1, …
    #[arg(long, default_value = "sim", requires = "simulate")]
    simulate_prefix: String,
    /// Simulated nodes that report FAILED for every assignment (comma-separated names).
    #[arg(
        long,
        value_delimiter = ',',
        requires = "simulate",
        value_name = "NAMES"
    )]
    simulate_fail: Vec<String>,
}

/// `20M` → 20,000,000; `1Gi` → 2³⁰; plain digits are bytes.
fn parse_byte_count(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count like 1048576, 20M or 8Gi"))?;
    let multiplier: u64 = match suffix.trim().trim_end_matches(['B', 'b']) {
        "" => 1,
        "k" | "K" => 1_000,
        "M" | "m" => 1_000_000,
        "G" | "g" => 1_000_000_000,
        "T" | "t" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => return Err(format!("unknown byte suffix {other:?} in {text:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs, and spans over OTLP by the OTEL_* variables (flushed on drop).
    let _telemetry = match flotilla_agent::telemetry::init("flotilla-agent") {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("flotilla-agent: error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let outcome = match cli.simulate {
        Some(agents) => simulate(cli, agents).await,
        None => run(cli).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flotilla-agent: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancelled on the first SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut terminate) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the agent");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
        trigger.cancel();
    });
    shutdown
}

/// The name this agent runs as: the enrolled one, or `--name` to enrol.
fn node_name(cli: &Cli, data_dir: &Path) -> anyhow::Result<String> {
    match enrol::load(data_dir)? {
        Some(identity) if !cli.replace => Ok(identity.name),
        _ => cli
            .name
            .clone()
            .context("not enrolled yet: pass --name for this node"),
    }
}

async fn identity(
    cli: &Cli,
    data_dir: &Path,
    trust: &CaTrust,
    certificates: Arc<NodeCertificates>,
) -> anyhow::Result<NodeIdentity> {
    let existing = enrol::load(data_dir)?;
    match existing {
        Some(identity) if !cli.replace => {
            if let Some(name) = &cli.name
                && name != &identity.name
            {
                anyhow::bail!(
                    "data directory {} belongs to node {}, not {name}; use another --data-dir, \
                     or --replace with a bootstrap token to enrol it anew",
                    data_dir.display(),
                    identity.name
                );
            }
            tracing::info!(node = %identity.name, controller = %identity.controller,
                path = %enrol::identity_path(data_dir).display(), "already enrolled as {}", identity.name);
            Ok(identity)
        }
        _ => {
            let bootstrap_token = cli.bootstrap_token.clone().context(
                "not enrolled yet: pass --bootstrap-token (from `flotilla node token create`)",
            )?;
            let controller = cli
                .controller
                .clone()
                .context("not enrolled yet: pass --controller with the controller's gRPC URL")?;
            let name = cli
                .name
                .clone()
                .context("not enrolled yet: pass --name for this node")?;
            let labels = enrol::parse_labels(&cli.labels)?;
            let inventory = HealthProbe::new(data_dir).inventory().await;
            let identity = enrol::enrol(
                EnrolRequest {
                    controller,
                    bootstrap_token,
                    name,
                    labels,
                    replace_existing: cli.replace,
                    certificates: Some(certificates),
                },
                trust,
                &inventory,
            )
            .await?;
            enrol::save(data_dir, &identity)?;
            tracing::info!(node = %identity.name, controller = %identity.controller, status = %identity.status,
                path = %enrol::identity_path(data_dir).display(), "enrolled as {}; identity saved", identity.name);
            Ok(identity)
        }
    }
}

/// The URL to advertise for a listener: the flag's, checked, or
/// `SCHEME://<bound address>` (`https` when serving TLS).
fn advertised_url(
    flag: &str,
    given: Option<String>,
    listener: &tokio::net::TcpListener,
    tls: bool,
) -> anyhow::Result<String> {
    if let Some(url) = given {
        let wanted = if tls { "https://" } else { "http://" };
        anyhow::ensure!(
            url.starts_with(wanted),
            "{flag} {url:?} must be an {wanted} URL: the listener serves {}",
            if tls {
                "TLS (--tls-cert)"
            } else {
                "plain text (no --tls-cert)"
            }
        );
        // Host and port only: the controller refuses anything more.
        let base = flotilla_agent::routing::peer_base_url(&url, false)
            .map_err(|reason| anyhow::anyhow!("{flag} {url:?}: {reason}"))?;
        return Ok(base.as_str().trim_end_matches('/').to_owned());
    }
    let bound = listener.local_addr()?;
    let scheme = if tls { "https" } else { "http" };
    if bound.ip().is_unspecified() {
        tracing::warn!(%bound, "{flag} is not set and the listener is bound to all interfaces; peers are told {scheme}://{bound}, which they cannot reach: set {flag}");
    }
    Ok(format!("{scheme}://{bound}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.clone().context("--data-dir is required")?;
    let trust = CaTrust::load(cli.controller_ca.as_deref())?;
    // This node's key, made once; its certificate comes from the
    // controller at enrolment and with every credential.
    let certificates = Arc::new(NodeCertificates::load_or_create(
        &data_dir,
        &node_name(&cli, &data_dir)?,
    )?);
    let peer_trust = match &cli.peer_ca {
        Some(path) => CaTrust::load(Some(path))?,
        None => trust.clone(),
    };
    // Serving TLS, the agent shows its certificate to the peers it
    // forwards to (mutual TLS), and asks the agents forwarding to it for
    // theirs, verified against the peer CA: that is how a peer knows a
    // forwarded request comes from a node and may believe the principal it
    // names, since the client's own credential is never forwarded.
    let peer_trust = match (&cli.tls_cert, &cli.tls_key, peer_trust.private_ca_pem()) {
        (Some(cert), Some(key), Some(ca)) => {
            let pem = std::fs::read(cert)
                .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?;
            match flotilla_tls::verifies_as_client(ca, &pem) {
                Ok(()) => peer_trust.with_client_identity(cert, key)?,
                // Presented anyway, it would fail every handshake with a
                // peer; without it, peers that require keys refuse
                // forwarded requests instead, and say why.
                Err(error) => {
                    tracing::warn!(cert = %cert.display(), %error,
                        "not presenting --tls-cert to peers: the peer CA would not accept it as a \
                         client certificate (it needs the clientAuth extended key usage)");
                    peer_trust
                }
            }
        }
        _ => peer_trust,
    };
    let peer_trust = match &cli.peer_tls_name {
        Some(name) => peer_trust.verifying_as(name)?,
        None => peer_trust,
    };
    // With node identity, peers are trusted by node certificate alone.
    let peer_trust = if cli.tls_node_cert {
        CaTrust::with_node_identity(certificates.clone())
    } else {
        peer_trust
    };
    // With --tls-node-cert the servers' TLS is set up once the node has a
    // certificate (below); they serve TLS either way.
    let serves_tls = cli.tls_cert.is_some() || cli.tls_node_cert;
    let server_tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(flotilla_tls::ServerTls::load_verifying_clients(
            cert,
            key,
            peer_trust.private_ca_pem(),
        )?),
        _ => None,
    };
    // Bound before anything else starts, so that a taken port fails the
    // start with a clear message instead of a half-running agent.
    let http_listener = tokio::net::TcpListener::bind(cli.http)
        .await
        .with_context(|| format!("cannot listen for HTTP inference on {} (--http)", cli.http))?;
    let grpc_listener = tokio::net::TcpListener::bind(cli.grpc)
        .await
        .with_context(|| format!("cannot listen for gRPC inference on {} (--grpc)", cli.grpc))?;
    let api_keys = cli
        .api_keys_file
        .as_deref()
        .map(serve::ApiKeys::load)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let jwt = cli
        .inference_jwt_key
        .as_deref()
        .map(|path| {
            serve::JwtVerifier::load(
                path,
                &cli.inference_jwt_audience,
                cli.inference_jwt_issuer.as_deref(),
            )
        })
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let auth = serve::InferenceAuth::new(api_keys, jwt);
    serve::auth::check_exposure(
        auth.as_ref(),
        cli.allow_unauthenticated_inference,
        &[("--http", cli.http), ("--grpc", cli.grpc)],
    )
    .map_err(anyhow::Error::msg)?;
    let advertised = AdvertisedUrls {
        http: advertised_url(
            "--advertise-http",
            cli.advertise_http.clone(),
            &http_listener,
            serves_tls,
        )?,
        grpc: advertised_url(
            "--advertise-grpc",
            cli.advertise_grpc.clone(),
            &grpc_listener,
            serves_tls,
        )?,
    };
    tracing::info!(http = %advertised.http, grpc = %advertised.grpc, "advertising inference URLs to peers");
    // The names clients may use: loopback, the advertised hosts (peers
    // forward to those), the bound address, and --allowed-host.
    let mut browser = serve::BrowserPolicy::new(&cli.allowed_host, &cli.cors_origin)
        .map_err(anyhow::Error::msg)?;
    browser.allow_host_of(&advertised.http);
    let bound_http = http_listener.local_addr()?;
    if !bound_http.ip().is_unspecified() {
        browser.allow_host(&bound_http.ip().to_string());
    }
    // Enrol only once the checks above passed: a start refused for its
    // exposure must not spend the bootstrap token.
    let identity = identity(&cli, &data_dir, &trust, certificates.clone()).await?;
    let serve_config = ServeConfig {
        auth: auth.map(std::sync::Arc::new),
        queue_capacity: cli.inference_queue.max(1),
        max_batch: cli.inference_batch.max(1),
        request_timeout: Duration::from_secs(cli.inference_timeout.max(1)),
        engine_threads: cli.engine_threads,
        device: cli.device,
        peer_trust,
        // An agent with any TLS configured is in a fleet with TLS: it
        // never forwards a request (and its body) in the clear.
        peer_https_only: cli.tls_cert.is_some()
            || cli.peer_ca.is_some()
            || cli.peer_tls_name.is_some()
            || cli.tls_node_cert,
        browser: Arc::new(browser),
        ..ServeConfig::default()
    };
    // Fails here, at start, rather than on the first forwarded request.
    serve_config
        .peer_http_client()
        .map_err(anyhow::Error::msg)?;
    let serving = Serving::new(serve_config);
    let controller = cli
        .controller
        .clone()
        .unwrap_or_else(|| identity.controller.clone());
    let channel = trust
        .endpoint(&controller)?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        // Lazy: an unreachable controller at start is retried by the sync
        // loop, while the agent keeps serving what it has.
        .connect_lazy();

    let restored = match persist::load(&data_dir) {
        Ok(restored) => restored,
        Err(error) => {
            tracing::warn!(%error, "starting without the saved agent state; the controller's desired state will be applied afresh");
            None
        }
    };
    let credentials = Arc::new(
        Credentials::new(identity, Some(data_dir.clone())).with_certificates(certificates.clone()),
    );
    let server_tls = if cli.tls_node_cert {
        // The node CA comes with the certificate; an agent enrolled before
        // node identity (no certificate saved) fetches one now.
        if certificates.current().is_none() {
            credentials.renew(channel.clone()).await.context(
                "--tls-node-cert needs a node certificate and the controller did not give one",
            )?;
        }
        let ca = certificates
            .current()
            .map(|current| current.ca_pem)
            .context("--tls-node-cert: the controller issued no node certificate (a controller without a node CA?)")?;
        Some(flotilla_tls::ServerTls::from_memory(
            certificates.served(),
            Some(ca.as_bytes()),
        )?)
    } else {
        server_tls
    };
    let cache_config = CacheConfig {
        max_download_bytes_per_second: cli.max_download_rate,
        budget_bytes: cli.cache_budget,
        trust: trust.clone(),
        ..CacheConfig::new(&data_dir)
    };
    // Each download names its own source (the assignment's blob URL); this
    // one only fills the cache's default slot.
    let default_source = BlobSource::new(&controller, credentials.token())?;
    let cache = Arc::new(ArtifactCache::open(cache_config, default_source).await?);
    let probe = {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || HealthProbe::new(&data_dir)).await?
    };
    let (reconciler, link) = Reconciler::new(
        Arc::new(CacheFetcher::new(
            cache.clone(),
            credentials.token(),
            cli.cache_budget,
        )),
        Arc::new(serving.activator()),
        ReconcilerConfig::new(Some(data_dir.clone())),
        restored,
    );
    // The serving layer escalates under the policy the reconciler applies.
    let serving = serving.with_policy(link.policy.clone());
    let sync = SyncConfig {
        advertised,
        routes: serving.routes.clone(),
        ..SyncConfig::new(
            channel,
            credentials,
            Arc::new(LocalNode::new(probe, cache).with_inference(serve::stats::global())),
            link,
        )
    };
    let shutdown = shutdown_on_signal();
    if let Some(tls) = &server_tls {
        tokio::spawn(
            tls.clone()
                .watch(flotilla_tls::WATCH_EVERY, shutdown.clone()),
        );
    }
    tracing::info!(http = %cli.http, grpc = %cli.grpc, tls = server_tls.is_some(), "serving inference (OpenAI and Ollama over HTTP, gRPC)");
    let http = tokio::spawn(serve::serve_http(
        http_listener,
        serving.clone(),
        Some(serve::metrics::metrics_handle()),
        server_tls.clone(),
        shutdown.clone(),
    ));
    let grpc = tokio::spawn(serve::serve_grpc(
        grpc_listener,
        serving.clone(),
        server_tls,
        shutdown.clone(),
    ));
    tracing::info!(%controller, "syncing with the controller");
    let reconciling = tokio::spawn(reconciler.run(shutdown.clone()));
    SyncAgent::run(sync, shutdown.clone()).await;
    shutdown.cancel();
    reconciling.await?;
    // Unload the model before the servers' last requests are awaited.
    serving.slot.replace(None);
    let grace = Duration::from_secs(cli.shutdown_grace);
    let drained = tokio::time::timeout(grace, async {
        if let Err(error) = http.await? {
            tracing::warn!(%error, "the HTTP inference server failed");
        }
        if let Err(error) = grpc.await? {
            tracing::warn!(%error, "the gRPC inference server failed");
        }
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                in_flight = serve::stats::global().snapshot().queue_depth,
                grace_seconds = cli.shutdown_grace,
                "requests still running after the shutdown grace period; exiting without them"
            );
            Ok(())
        }
    }
}

async fn simulate(cli: Cli, agents: usize) -> anyhow::Result<()> {
    let config = SimulationConfig {
        name_prefix: cli.simulate_prefix.clone(),
        labels: enrol::parse_labels(&cli.labels)?,
        failing_nodes: cli.simulate_fail.iter().cloned().collect::<HashSet<_>>(),
        ..SimulationConfig::new(
            cli.controller
                .context("--simulate needs --controller with the controller's gRPC URL")?,
            cli.bootstrap_token
                .context("--simulate needs --bootstrap-token to enrol the simulated nodes")?,
            agents,
        )
    };
    let shutdown = shutdown_on_signal();
    let started = tokio::time::Instant::now();
    let simulation = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        simulation = Simulation::start(config) => simulation?,
    };
    eprintln!(
        "simulate: {agents} agents enrolled in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut summary = tokio::time::interval(SIMULATION_SUMMARY_EVERY);
    summary.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = summary.tick() => {
                let generations: Vec<u64> = simulation
                    .nodes()
                    .iter()
                    .map(|node| node.latest_desired().map_or(0, |received| received.generation))
                    .collect();
                let acks = simulation.take_ack_latencies();
                eprintln!(
                    "simulate: connected={}/{agents} hellos={} generation min={} max={} acks={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
                    simulation.connected_streams(),
                    simulation.hellos(),
                    generations.iter().min().copied().unwrap_or(0),
                    generations.iter().max().copied().unwrap_or(0),
                    acks.count,
                    acks.p50.as_secs_f64() * 1e3,
                    acks.p99.as_secs_f64() * 1e3,
                    acks.max.as_secs_f64() * 1e3,
                );
            }
        }
    }
    simulation.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_suffixes() {
        assert_eq!(parse_byte_count("1048576"), Ok(1_048_576));
        assert_eq!(parse_byte_count("20M"), Ok(20_000_000));
        assert_eq!(parse_byte_count("20MB"), Ok(20_000_000));
        assert_eq!(parse_byte_count("8Gi"), Ok(8 << 30));
        assert_eq!(parse_byte_count("512k"), Ok(512_000));
        assert!(parse_byte_count("fast").is_err());
        assert!(parse_byte_count("20X").is_err());
        assert!(parse_byte_count("99999999999T").is_err());
    }

    #[tokio::test]
    async fn advertised_urls_match_whether_the_listener_serves_tls() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let bound = listener.local_addr()?;
        let url = |given: Option<&str>, tls| {
            advertised_url("--advertise-http", given.map(str::to_owned), &listener, tls)
        };
        assert_eq!(url(None, false)?, format!("http://{bound}"));
        assert_eq!(url(None, true)?, format!("https://{bound}"));
        assert_eq!(
            url(Some("https://edge-7.example:11434/"), true)?,
            "https://edge-7.example:11434"
        );
        let plain_to_tls = url(Some("http://edge-7.example:11434"), true).expect_err("refused");
        assert!(
            plain_to_tls.to_string().contains("must be an https:// URL"),
            "{plain_to_tls}"
        );
        let tls_to_plain = url(Some("https://edge-7.example:11434"), false).expect_err("refused");
        assert!(
            tls_to_plain.to_string().contains("must be an http:// URL"),
            "{tls_to_plain}"
        );
        assert!(url(Some("ftp://edge-7"), false).is_err());
        assert!(url(Some("http://edge-7:11434/internal?x="), false).is_err());
        Ok(())
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
