//! `flotilla`: the operators' command-line tool. It only speaks the
//! controller's REST API; see `commands/` for what each subcommand does,
//! `client.rs` for the API client and `config.rs` for where the URL and the
//! token come from.
//!
//! Exit status: 0 on success, 1 when a command fails (the controller's
//! message is printed as `error: …` on stderr), 2 for usage errors (clap).

#![forbid(unsafe_code)]

mod client;
mod commands;
mod config;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::commands::Command;
use crate::config::{Overrides, Settings};
use crate::output::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Operate a Flotilla fleet: push models, manage prompts, nodes and tokens."
)]
struct Cli {
    /// The controller's URL [default: http://127.0.0.1:8080, or `url` in the config file].
    #[arg(long, global = true, env = "FLOTILLA_URL")]
    url: Option<String>,
    /// API token [default: `token` in the config file].
    #[arg(long, global = true, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Config file with `url` and `token` [default: $XDG_CONFIG_HOME/flotilla/config.toml].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// How to print results.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::resolve(Overrides {
        url: cli.url,
        token: cli.token,
        config_file: cli.config,
    })?;
    commands::run(cli.command, &settings, output::Printer::new(cli.output)).await
}

/// The reader of our stdout went away (`| head`); that is not a failure worth reporting.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
