//! `flotilla-agent`: the edge agent binary.
//!
//! On start it looks for its identity in `DATA_DIR/node.toml`. Without one
//! (or with `--replace`) it enrols with the controller using
//! `--bootstrap-token` and saves the identity it is granted. The sync loop
//! that will then drive the artifact cache and health probes is not built
//! yet, so after enrolment (or after finding its identity) the agent says so
//! and exits 0: it never pretends to be serving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use flotilla_agent::enrol::{self, EnrolRequest};
use flotilla_agent::health::HealthProbe;

#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla's edge agent")]
struct Cli {
    /// The controller's gRPC URL, e.g. http://127.0.0.1:50051.
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
    /// This node's name in the fleet (a-z, 0-9, '.', '_', '-').
    #[arg(long, env = "FLOTILLA_NODE_NAME")]
    name: Option<String>,
    /// Where the agent keeps its identity and artifact cache.
    #[arg(long, env = "FLOTILLA_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Labels for placement, e.g. site=berlin,gpu=l4.
    #[arg(long, default_value = "")]
    labels: String,
    /// Re-enrol, replacing a node of the same name (needs --bootstrap-token).
    #[arg(long)]
    replace: bool,
    /// Address for the OpenAI/Ollama-compatible HTTP API (not served yet).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Address for the gRPC inference API (not served yet).
    #[arg(long, value_name = "ADDR")]
    grpc: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flotilla-agent: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let existing = enrol::load(&cli.data_dir)?;
    let identity = match existing {
        Some(identity) if !cli.replace => {
            if let Some(name) = &cli.name
                && name != &identity.name
            {
                anyhow::bail!(
                    "data directory {} belongs to node {}, not {name}; use another --data-dir, \
                     or --replace with a bootstrap token to enrol it anew",
                    cli.data_dir.display(),
                    identity.name
                );
            }
            eprintln!(
                "flotilla-agent: already enrolled as {} with {} (identity in {})",
                identity.name,
                identity.controller,
                enrol::identity_path(&cli.data_dir).display()
            );
            identity
        }
        _ => {
            let bootstrap_token = cli.bootstrap_token.context(
                "not enrolled yet: pass --bootstrap-token (from `flotilla node token create`)",
            )?;
            let controller = cli
                .controller
                .context("not enrolled yet: pass --controller with the controller's gRPC URL")?;
            let name = cli
                .name
                .context("not enrolled yet: pass --name for this node")?;
            let labels = enrol::parse_labels(&cli.labels)?;
            let inventory = HealthProbe::new(&cli.data_dir).inventory().await;
            let identity = enrol::enrol(
                EnrolRequest {
                    controller,
                    bootstrap_token,
                    name,
                    labels,
                    replace_existing: cli.replace,
                },
                &inventory,
            )
            .await?;
            enrol::save(&cli.data_dir, &identity)?;
            eprintln!(
                "flotilla-agent: enrolled as {} with {} (status {}); identity saved in {}",
                identity.name,
                identity.controller,
                identity.status,
                enrol::identity_path(&cli.data_dir).display()
            );
            identity
        }
    };
    if cli.http.is_some() || cli.grpc.is_some() {
        eprintln!("flotilla-agent: --http and --grpc are accepted but nothing is served yet");
    }
    eprintln!(
        "flotilla-agent: node {} is enrolled; the sync loop is not implemented yet, exiting",
        identity.name
    );
    Ok(())
}
