//! Assembly of a running controller: open the store and the object store,
//! load keys, write the first admin token, then serve REST and gRPC on
//! pre-bound listeners until a shutdown token fires (tests bind port 0).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::node_ca::NodeCa;
use crate::auth::{Authenticator, KeyFile, Role, write_private_file};
use crate::config::ControllerConfig;
use crate::fleet::{Fleet, FleetConfig};
use crate::objects::BlobStore;
use crate::registry::Registry;
use crate::rollout::Rollouts;
use crate::store;

/// How often the rollout engine looks at unfinished rollouts (it also
/// wakes when one changes).
const ROLLOUT_TICK: Duration = Duration::from_secs(1);
/// On shutdown, how long open REST requests may take to finish (an upload
/// in flight, say) before the server stops waiting for them, with or
/// without TLS, so that a stuck client cannot hold up the final flush.
const REST_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Uploads in `tmp/` older than this at start-up were abandoned by a crash.
const STALE_UPLOAD_AGE: Duration = Duration::from_secs(3600);

/// A controller with its dependencies opened, ready to serve.
pub struct Controller {
    config: ControllerConfig,
    state: AppState,
}

impl Controller {
    /// Opens the store (applying migrations), the object store and the keys.
    pub async fn open(config: ControllerConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let store = store::connect(&config.database_url)
            .await
            .with_context(|| {
                format!(
                    "cannot open database {}",
                    store::redact_url(&config.database_url)
                )
            })?;
        let blobs = BlobStore::open(
            config.object_store.as_deref(),
            &config.local_objects_dir(),
            &config.s3,
        )?;
        // A misconfigured store (a wrong endpoint, a missing bucket, bad
        // credentials) stops the start with its reason, rather than a
        // controller whose /readyz stays 503 and whose first push fails.
        blobs
            .check()
            .await
            .context("cannot start on this object store")?;
        match blobs.sweep_stale_uploads(STALE_UPLOAD_AGE).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed uploads abandoned by an earlier crash"),
            Err(error) => tracing::warn!(%error, "could not sweep abandoned uploads"),
        }
        let (keys, keys_created) = KeyFile::load_or_create(&config.jwt_keys)?;
        let auth = Arc::new(Authenticator::new(&keys, config.audience.clone())?);
        if keys_created {
            tracing::info!(path = %config.jwt_keys.display(), "created a new JWT key file");
        }
        tracing::info!(
            store = store.backend().as_str(),
            objects = blobs.description(),
            "controller opened"
        );
        let node_ca = match &config.node_ca {
            Some(files) => NodeCa::load(&files.cert, &files.key, config.node_cert_ttl)?,
            None => {
                let (ca, created) = NodeCa::load_or_create(&config.data_dir, config.node_cert_ttl)?;
                if created {
                    tracing::info!(dir = %config.data_dir.display(),
                        "created a node CA (node-ca.pem, node-ca.key mode 0600); give every replica the same one with --node-ca-cert/--node-ca-key");
                }
                ca
            }
        };
        let fleet = Fleet::new(
            store.clone(),
            auth.clone(),
            FleetConfig {
                require_approval: config.require_node_approval,
                heartbeat_interval: config.heartbeat_interval,
            },
        )
        .with_node_ca(Arc::new(node_ca));
        let admin_token_path = config.admin_token_path();
        if config.first_admin_token && (keys_created || !admin_token_path.exists()) {
            // Recorded like any API token, so it can be listed and revoked.
            let minted = fleet
                .mint_api_token(
                    "admin",
                    Role::Admin,
                    config.first_admin_token_ttl,
                    "controller",
                )
                .await?;
            write_private_file(&admin_token_path, format!("{}\n", minted.token).as_bytes())
                .with_context(|| format!("cannot write {}", admin_token_path.display()))?;
            tracing::info!(path = %admin_token_path.display(), expires_at = %minted.expires_at,
                token_id = %minted.id,
                "wrote an admin token (mode 0600); use it with FLOTILLA_TOKEN=$(cat PATH); delete the file and restart for a new one");
        }
        let rollouts = Rollouts::new(store.clone(), fleet.clone());
        let registry = Registry::new(store, blobs, config.max_upload_bytes);
        let state = AppState {
            registry,
            fleet,
            rollouts,
            auth,
            metrics: crate::telemetry::metrics_handle(),
        };
        Ok(Self { config, state })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Binds the configured addresses and serves until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let http = TcpListener::bind(self.config.http_addr)
            .await
            .with_context(|| format!("cannot listen on {} (REST)", self.config.http_addr))?;
        let grpc = TcpListener::bind(self.config.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {} (gRPC)", self.config.grpc_addr))?;
        self.serve(http, grpc, shutdown).await
    }

    /// Serves REST and gRPC on pre-bound listeners until `shutdown` fires or
    /// either server fails (then both stop).
    pub async fn serve(
        self,
        http: TcpListener,
        grpc: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let rest_addr = http.local_addr()?;
        let tls = match &self.config.tls {
            Some(files) => Some(flotilla_tls::ServerTls::load(&files.cert, &files.key)?),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(rest = %rest_addr, grpc = %grpc.local_addr()?, tls = tls.is_some(), "serving");
        let backend = self.state.registry.store().backend();
        let fleet = self.state.fleet.clone();
        let public_url = match &self.config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                if rest_addr.ip().is_unspecified() {
                    tracing::warn!(%rest_addr, "REST listens on all interfaces but no --public-url is set; \
                        agents on other hosts cannot download artifacts from {scheme}://{rest_addr}");
                }
                format!("{scheme}://{rest_addr}")
            }
        };
        fleet.set_blob_base_url(public_url);
        if let Some(tls) = &tls {
            tokio::spawn(
                tls.clone()
                    .watch(flotilla_tls::WATCH_EVERY, shutdown.clone()),
            );
        }
        let flusher = tokio::spawn(fleet.flusher().run(shutdown.clone()));
        let follower = fleet
            .follower()
            .rescan_every(self.config.change_rescan_interval);
        let follower = tokio::spawn(follower.run(shutdown.clone()));
        let engine = tokio::spawn(
            self.state
                .rollouts
                .engine(ROLLOUT_TICK)
                .run(shutdown.clone()),
        );
        let router = api::router(self.state);
        let http_server = {
            let tls = tls.clone();
            let shutdown = shutdown.clone();
            async move {
                flotilla_tls::serve_router(http, router, tls, shutdown, Some(REST_SHUTDOWN_GRACE))
                    .await
                    .context("REST server failed")
            }
        };
        let grpc_server = crate::grpc::serve(grpc, tls.clone(), backend, fleet, shutdown.clone());
        let result = tokio::try_join!(
            async {
                let result = http_server.await;
                shutdown.cancel();
                result
            },
            async {
                let result = grpc_server.await;
                shutdown.cancel();
                result
            }
        );
        if let Err(error) = engine.await {
            tracing::warn!(%error, "rollout engine failed");
        }
        // The flusher writes what agents reported last; wait for it.
        if let Err(error) = flusher.await {
            tracing::warn!(%error, "report flusher failed");
        }
        if let Err(error) = follower.await {
            tracing::warn!(%error, "change follower failed");
        }
        result.map(|_| ())
    }
}
