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
    about = "Operate a Flotilla fleet: push models, manage prompts, assign them to nodes, manage nodes and tokens."
)]
struct Cli {
    /// The controller's URL [default: http://127.0.0.1:8080, or `url` in the config file].
    #[arg(long, global = true, env = "FLOTILLA_URL")]
    url: Option<String>,
    /// API token [default: `token` in the config file].
    #[arg(long, global = true, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A private CA (PEM) the controller's TLS certificate chains to, for an
    /// `https://` URL [default: `ca_cert` in the config file; the system's roots are trusted anyway].
    #[arg(long, global = true, env = "FLOTILLA_CA_CERT", value_name = "PEM")]
    ca_cert: Option<std::path::PathBuf>,
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
        ca_cert: cli.ca_cert,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("flotilla").chain(args.iter().copied()))
    }

    fn usage_error(args: &[&str]) -> ErrorKind {
        parse(args)
            .err()
            .map_or(ErrorKind::DisplayHelp, |error| error.kind())
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn assign_takes_exactly_one_of_node_and_selector() {
        let base = ["assign", "--model", "llama", "--version", "1.2.0"];
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        assert!(parse(&with(&["--node", "edge-1"])).is_ok());
        assert!(parse(&with(&["--selector", "zone=eu,gpu=l4"])).is_ok());
        assert_eq!(usage_error(&base), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            usage_error(&with(&["--node", "edge-1", "--selector", "zone=eu"])),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            usage_error(&with(&["--selector", "zone"])),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            usage_error(&with(&["--node", "edge-1", "--prompt", "greeter"])),
            ErrorKind::ValueValidation
        );
        assert!(
            parse(&with(&[
                "--node",
                "e",
                "--quant",
                "Q4_1",
                "--prompt",
                "greeter@2"
            ]))
            .is_ok()
        );
        assert_eq!(
            usage_error(&["unassign", "--node", "a", "--selector", "b=c"]),
            ErrorKind::ArgumentConflict
        );
        assert!(parse(&["unassign", "--selector", "zone=eu"]).is_ok());
        assert!(parse(&["assignment", "ls", "--limit", "5"]).is_ok());
    }

    #[test]
    fn node_label_needs_at_least_one_well_formed_edit() {
        assert!(parse(&["node", "label", "edge-1", "zone=eu", "old-"]).is_ok());
        assert_eq!(
            usage_error(&["node", "label", "edge-1"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            usage_error(&["node", "label", "edge-1", "zone"]),
            ErrorKind::ValueValidation
        );
        for action in ["cordon", "uncordon", "drain", "show", "approve"] {
            assert!(parse(&["node", action, "edge-1"]).is_ok(), "{action}");
        }
    }
}
