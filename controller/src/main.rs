//! `flotilla-controller`: runs the control plane. With no arguments it serves
//! on the embedded defaults (SQLite and objects in ./flotilla-data).

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_controller::auth::{Authenticator, KeyFile, Role};
use flotilla_controller::config::{ControllerArgs, ControllerConfig};
use flotilla_controller::server::Controller;
use flotilla_controller::store;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "flotilla-controller",
    version,
    about = "Flotilla control plane: model registry, fleet and rollouts"
)]
struct Cli {
    #[command(flatten)]
    args: ControllerArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST and gRPC APIs (the default).
    Serve,
    /// Mint an API token from the key file and print it, without a running
    /// controller (for a first token, or after losing every admin token).
    /// It is recorded in the database like any token, so `flotilla token
    /// ls` lists it and `flotilla token revoke` ends it.
    MintToken {
        #[arg(long, default_value = "admin")]
        subject: String,
        #[arg(long, default_value = "admin")]
        role: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl_seconds: u64,
    },
    /// Print the OpenAPI document.
    Openapi,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = ControllerConfig::resolve(&cli.args)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi => {
            // `write!`, not `println!`: a reader that went away (`| head`)
            // ends the output quietly instead of panicking.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{}", flotilla_controller::api::openapi_json()) {
                Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
                _ => Ok(()),
            }
        }
        Command::MintToken {
            subject,
            role,
            ttl_seconds,
        } => {
            let role: Role = role.parse()?;
            anyhow::ensure!(
                role.is_human(),
                "role {role} cannot be minted: node credentials come from enrolment with a bootstrap token"
            );
            let keys = KeyFile::load(&config.jwt_keys)?;
            let auth = Authenticator::new(&keys, config.audience.clone())?;
            let minted = auth.mint_with_id(&subject, role, Duration::from_secs(ttl_seconds))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(record_minted(&config, &subject, role, &minted))?;
            println!("{}", minted.token);
            Ok(())
        }
        Command::Serve => {
            // Telemetry first: its exporter must be built outside the runtime.
            let _telemetry = flotilla_controller::telemetry::init("flotilla-controller")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config))
        }
    }
}

/// Records an offline-minted token (by id, never the token) so that it can
/// be listed and revoked; an unrecorded one would be an admin credential
/// nobody can see.
async fn record_minted(
    config: &ControllerConfig,
    subject: &str,
    role: Role,
    minted: &flotilla_controller::auth::MintedToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let store = store::connect(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open database {} to record the token",
                store::redact_url(&config.database_url)
            )
        })?;
    store
        .record_api_token(&store::ApiToken {
            id: minted.id.clone(),
            subject: subject.to_owned(),
            role,
            created_by: "flotilla-controller mint-token".to_owned(),
            created_at: minted.issued_at,
            expires_at: minted.expires_at,
            revoked_at: None,
        })
        .await
        .context("cannot record the token")?;
    Ok(())
}

async fn serve(config: ControllerConfig) -> anyhow::Result<()> {
    tracing::info!(
        ?config,
        "starting flotilla-controller {}",
        env!("CARGO_PKG_VERSION")
    );
    let controller = Controller::open(config).await?;
    let shutdown = CancellationToken::new();
    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal_shutdown.cancel();
    });
    controller.run(shutdown).await
}

async fn wait_for_signal() {
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
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
