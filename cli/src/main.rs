//! `flotilla`: the operators' command-line tool. It only speaks the
//! controller's REST API; see `commands/` for what each subcommand does,
//! the `flotilla-client` crate for the API client and `config.rs` for where
//! the URL and the token come from.
//!
//! Exit status, so that scripts can tell failures apart (the message is
//! printed as `error: …` on stderr):
//! - 0: success;
//! - 1: any other failure;
//! - 2: usage (clap: unknown flag, bad value);
//! - 3: authentication or permission (HTTP 401/403: wrong, expired or
//!   revoked token, or a role too small);
//! - 4: not found (404);
//! - 5: conflict (409: already exists, or not possible in this state);
//! - 6: unavailable (cannot connect, TLS/plain mismatch, 502/503/504).

#![forbid(unsafe_code)]

mod commands;
mod config;
mod output;

use std::process::ExitCode;

use clap::Parser;
use flotilla_client::ClientError;

use crate::commands::Command;
use crate::config::{Overrides, Settings};
use crate::output::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Operate a Flotilla fleet: push models, manage prompts, assign them to nodes, manage nodes and tokens.",
    after_help = "Tracing: with TRACEPARENT (and TRACESTATE) set, as a traced CI job or script sets them, every request carries that W3C trace context, so the controller's spans join the caller's trace."
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

/// Exit codes beyond 0, 1 and clap's 2 (see the crate docs).
mod exit {
    pub const AUTH: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = &cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        let mut out = std::io::stdout();
        clap_complete::generate(*shell, &mut command, "flotilla", &mut out);
        return ExitCode::SUCCESS;
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            let (code, hint) = classify(&error);
            // The hint first: the last line stays the `error: …` line
            // that scripts and tests read.
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// The exit code for a failure, and a hint where the raw message is opaque
/// (a TLS library's words for "this is not TLS").
fn classify(error: &anyhow::Error) -> (u8, Option<&'static str>) {
    use reqwest::StatusCode;

    let Some(client_error) = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>())
    else {
        return (1, None);
    };
    match client_error {
        ClientError::Api { status, .. } | ClientError::UnexpectedResponse { status, .. } => {
            match *status {
                StatusCode::UNAUTHORIZED => (
                    exit::AUTH,
                    Some(
                        "the controller does not accept this token (wrong, expired or revoked): \
                     set --token or FLOTILLA_TOKEN, or `token` in the config file",
                    ),
                ),
                StatusCode::FORBIDDEN => (exit::AUTH, None),
                StatusCode::NOT_FOUND => (exit::NOT_FOUND, None),
                StatusCode::CONFLICT => (exit::CONFLICT, None),
                StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT => (exit::UNAVAILABLE, None),
                _ => (1, None),
            }
        }
        ClientError::Connect { reason, .. } | ClientError::Transport { reason, .. } => {
            (exit::UNAVAILABLE, tls_mismatch_hint(reason))
        }
        _ => (1, None),
    }
}

/// rustls and hyper describe a TLS/plain-HTTP mismatch in their own terms;
/// say what it means.
fn tls_mismatch_hint(reason: &str) -> Option<&'static str> {
    if reason.contains("InvalidContentType") || reason.contains("corrupt message") {
        Some(
            "the controller answered in plain HTTP to a TLS handshake: use an http:// URL, \
             or start the controller with TLS",
        )
    } else if reason.contains("invalid HTTP version")
        || reason.contains("connection closed before message completed")
    {
        Some(
            "if the controller serves TLS, use an https:// URL (plain HTTP to a TLS port fails like this)",
        )
    } else {
        None
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
    fn failures_get_distinct_exit_codes() {
        let api = |status: u16| {
            anyhow::Error::new(ClientError::Api {
                status: reqwest::StatusCode::from_u16(status).expect("valid status"),
                code: String::new(),
                message: "refused".into(),
            })
        };
        assert_eq!(classify(&api(401)).0, exit::AUTH);
        assert!(classify(&api(401)).1.is_some());
        assert_eq!(classify(&api(403)).0, exit::AUTH);
        assert_eq!(classify(&api(404)).0, exit::NOT_FOUND);
        assert_eq!(classify(&api(409)).0, exit::CONFLICT);
        assert_eq!(classify(&api(503)).0, exit::UNAVAILABLE);
        assert_eq!(classify(&api(400)).0, 1);
        let mismatch = anyhow::Error::new(ClientError::Connect {
            url: "https://127.0.0.1:1".into(),
            reason: "received corrupt message of type InvalidContentType".into(),
        });
        let (code, hint) = classify(&mismatch);
        assert_eq!(code, exit::UNAVAILABLE);
        assert!(hint.is_some_and(|hint| hint.contains("http://")));
        assert_eq!(classify(&anyhow::anyhow!("other")).0, 1);
    }

    #[test]
    fn completions_are_generated_for_bash_zsh_and_fish() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "flotilla", &mut out);
            let script = String::from_utf8_lossy(&out);
            assert!(script.contains("rollout"), "{shell}");
        }
        assert!(parse(&["completions", "zsh"]).is_ok());
    }

    #[test]
    fn min_requests_needs_a_rate_gate_and_rates_stay_below_100() {
        let create = |extra: &[&'static str]| {
            let mut args = vec![
                "rollout",
                "create",
                "canary",
                "--model",
                "tiny",
                "--version",
                "2.0.0",
                "--selector",
                "site=a",
            ];
            args.extend_from_slice(extra);
            args
        };
        assert_eq!(
            usage_error(&create(&["--min-requests", "50"])),
            ErrorKind::MissingRequiredArgument
        );
        for gate in ["--max-error-rate", "--max-escalation-rate"] {
            assert!(parse(&create(&[gate, "10", "--min-requests", "50"])).is_ok());
            assert_eq!(
                usage_error(&create(&[gate, "100"])),
                ErrorKind::ValueValidation
            );
        }
        let Ok(Cli {
            command: Command::Rollout(crate::commands::rollout::RolloutCommand::Create(args)),
            ..
        }) = parse(&create(&["--max-escalation-rate", "25"]))
        else {
            panic!("expected a rollout create");
        };
        assert_eq!(
            (args.max_escalation_rate, args.max_error_rate),
            (Some(25), None)
        );
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
