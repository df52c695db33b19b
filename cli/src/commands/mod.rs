//! The subcommands, one module per area of the API, and the helpers they
//! share: building the client from the settings and following pages.

pub mod assignment;
pub mod model;
pub mod node;
pub mod policy;
pub mod prompt;
pub mod rollout;
pub mod token;

use std::future::Future;
use std::time::Duration;

use flotilla_api_types::Page;
use flotilla_client::{ApiClient, ClientResult, MAX_PAGE_SIZE};

use crate::config::Settings;
use crate::output::Printer;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sets what a node, or every node matching a selector, should serve.
    Assign(assignment::AssignArgs),
    /// Removes the assignment of a node or a selector.
    Unassign(assignment::UnassignArgs),
    /// The operators' assignments.
    #[command(subcommand)]
    Assignment(assignment::AssignmentCommand),
    /// Models, their versions and artifacts.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// The fleet's nodes and the bootstrap tokens they enrol with.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Versioned system prompts.
    #[command(subcommand)]
    Prompt(prompt::PromptCommand),
    /// Versioned escalation policies: when a node may send a request to an
    /// upstream model, and what it scrubs first.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Staged, health-gated rollouts of a model version to many nodes.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// The audit log: every change made through the API (who, what, when,
    /// the result) and what rollouts did, filtered by rollout, node, actor
    /// or action.
    Events(rollout::EventsArgs),
    /// Prints a shell completion script: `flotilla completions bash >
    /// /etc/bash_completion.d/flotilla` (or zsh, fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// API tokens (creating them needs an admin token).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Shows who the configured token belongs to, and its role.
    Whoami,
}

pub async fn run(command: Command, settings: &Settings, printer: Printer) -> anyhow::Result<()> {
    let client = client(settings)?;
    match command {
        Command::Assign(args) => assignment::assign(args, &client, &printer).await,
        Command::Unassign(args) => assignment::unassign(args, &client, &printer).await,
        Command::Assignment(command) => assignment::run(command, &client, &printer).await,
        Command::Model(command) => model::run(command, &client, &printer).await,
        Command::Node(command) => node::run(command, &client, &printer).await,
        Command::Prompt(command) => prompt::run(command, &client, &printer).await,
        Command::Policy(command) => policy::run(command, &client, &printer).await,
        Command::Rollout(command) => rollout::run(command, &client, &printer).await,
        Command::Events(args) => rollout::events(args, &client, &printer).await,
        Command::Token(command) => token::run(command, &client, &printer).await,
        Command::Whoami => token::whoami(&client, &printer).await,
        // Answered in `main` before any settings are read.
        Command::Completions { .. } => Ok(()),
    }
}

fn client(settings: &Settings) -> anyhow::Result<ApiClient> {
    let file = settings.config_path.as_ref().map_or_else(
        || "the config file".to_owned(),
        |path| path.display().to_string(),
    );
    let hint = format!(
        "no API token is configured: pass --token, set FLOTILLA_TOKEN or put token = \"…\" in {file}"
    );
    let client = ApiClient::new(&settings.url, settings.token.as_ref(), hint)?
        .with_user_agent(concat!("flotilla-cli/", env!("CARGO_PKG_VERSION")))?;
    Ok(match &settings.ca_cert {
        Some(path) => client.trusting_ca_file(path)?,
        None => client,
    })
}

/// How many items a listing fetches.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ListArgs {
    /// Fetch at most this many items (default: all of them, following every page).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

/// Fetches pages until `limit` items (or all) are in hand. Pages are sized to
/// what is still wanted, so the returned `next_cursor` continues exactly
/// where the returned items stop.
pub async fn collect_pages<T, F, Fut>(limit: Option<u32>, mut fetch: F) -> ClientResult<Page<T>>
where
    F: FnMut(u32, Option<String>) -> Fut,
    Fut: Future<Output = ClientResult<Page<T>>>,
{
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let wanted = match limit {
            Some(limit) => {
                let remaining = (limit as usize).saturating_sub(items.len());
                if remaining == 0 {
                    break;
                }
                u32::try_from(remaining)
                    .unwrap_or(MAX_PAGE_SIZE)
                    .min(MAX_PAGE_SIZE)
            }
            None => MAX_PAGE_SIZE,
        };
        let page = fetch(wanted, cursor.clone()).await?;
        let received = page.items.len();
        items.extend(page.items);
        // An empty page or a cursor that does not move would loop forever.
        match page.next_cursor {
            Some(next) if received > 0 && cursor.as_ref() != Some(&next) => cursor = Some(next),
            _ => {
                cursor = None;
                break;
            }
        }
    }
    Ok(Page {
        items,
        next_cursor: cursor,
    })
}

/// A duration as people write one: `200ms`, `30s`, `5m`, `1h`, `30d`,
/// `2w`, `1h 30m` (humantime's syntax), or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{text:?} seconds is too long"));
    }
    humantime::parse_duration(text).map_err(|error| {
        format!("{text:?} is not a duration such as 200ms, 30s, 5m or 1h: {error}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake listing of `total` numbers served `page_size` at a time at most.
    async fn fetch_from(total: u32, limit: u32, after: Option<String>) -> ClientResult<Page<u32>> {
        let start: u32 = after.and_then(|a| a.parse().ok()).unwrap_or(0);
        let end = (start + limit.min(7)).min(total);
        Ok(Page {
            items: (start..end).collect(),
            next_cursor: (end < total).then(|| end.to_string()),
        })
    }

    #[tokio::test]
    async fn follows_every_page_or_stops_at_the_limit() -> ClientResult<()> {
        let all = collect_pages(None, |limit, after| fetch_from(20, limit, after)).await?;
        assert_eq!(all.items, (0..20).collect::<Vec<_>>());
        assert_eq!(all.next_cursor, None);

        let some = collect_pages(Some(10), |limit, after| fetch_from(20, limit, after)).await?;
        assert_eq!(some.items, (0..10).collect::<Vec<_>>());
        assert_eq!(some.next_cursor.as_deref(), Some("10"));
        Ok(())
    }
}
