//! `flotilla node …`: bootstrap tokens for enrolling agents, and the fleet's
//! nodes (list, show, approve). Enrolment itself is the agent's business:
//! `flotilla-agent --bootstrap-token TOKEN …`.

use std::time::Duration;

use flotilla_api_types::{CreateBootstrapTokenRequest, NodeInfo};

use super::{ListArgs, collect_pages};
use crate::client::ApiClient;
use crate::commands::token::parse_ttl;
use crate::output::{Printer, Table, human_bytes, human_time};

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Bootstrap tokens that agents enrol with.
    #[command(subcommand)]
    Token(NodeTokenCommand),
    /// Lists the fleet's nodes.
    Ls(ListArgs),
    /// Shows one node.
    Show { name: String },
    /// Lets a pending node take part (controllers run with --require-node-approval).
    Approve { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeTokenCommand {
    /// Creates a bootstrap token and prints it alone on stdout (details go to stderr).
    Create {
        /// Lifetime, e.g. 1h, 90m, 2d or seconds.
        #[arg(long, value_parser = parse_ttl, default_value = "1h")]
        ttl: Duration,
        /// How many agents may enrol with it.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
    },
}

pub async fn run(
    command: NodeCommand,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    match command {
        NodeCommand::Token(NodeTokenCommand::Create { ttl, uses }) => {
            let created = client
                .create_bootstrap_token(&CreateBootstrapTokenRequest {
                    ttl_seconds: Some(ttl.as_secs()),
                    uses: Some(uses),
                })
                .await?;
            if printer.is_json() {
                return printer.json(&created);
            }
            eprintln!(
                "bootstrap token {} for {} enrolment(s), expires {}",
                created.id,
                created.uses,
                human_time(created.expires_at)
            );
            printer.line(&created.token)
        }
        NodeCommand::Ls(list) => {
            let page = collect_pages(list.limit, |limit, after| async move {
                client.list_nodes(limit, after.as_deref()).await
            })
            .await?;
            if printer.is_json() {
                return printer.json(&page);
            }
            let mut table = Table::new(&[
                "NAME", "STATUS", "LABELS", "GPUS", "MEMORY", "AGENT", "ENROLLED",
            ]);
            for node in &page.items {
                table.row(vec![
                    node.name.clone(),
                    node.status.clone(),
                    labels(node),
                    node.inventory.gpus.len().to_string(),
                    human_bytes(node.inventory.memory_total_bytes),
                    node.agent_version.clone(),
                    human_time(node.enrolled_at),
                ]);
            }
            printer.table(&table)
        }
        NodeCommand::Show { name } => {
            let node = client.node(&name).await?;
            if printer.is_json() {
                return printer.json(&node);
            }
            show(&node, printer)
        }
        NodeCommand::Approve { name } => {
            let node = client.approve_node(&name).await?;
            if printer.is_json() {
                return printer.json(&node);
            }
            printer.line(&format!("node {} is {}", node.name, node.status))
        }
    }
}

fn labels(node: &NodeInfo) -> String {
    node.labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn show(node: &NodeInfo, printer: &Printer) -> anyhow::Result<()> {
    let inventory = &node.inventory;
    let gpus = inventory
        .gpus
        .iter()
        .map(|gpu| format!("{} ({})", gpu.name, human_bytes(gpu.memory_total_bytes)))
        .collect::<Vec<_>>()
        .join(", ");
    printer.fields(&[
        ("name", node.name.clone()),
        ("status", node.status.clone()),
        ("labels", labels(node)),
        ("agent", node.agent_version.clone()),
        ("enrolled", human_time(node.enrolled_at)),
        (
            "cpu",
            format!("{} ({} cores)", inventory.cpu_model, inventory.cpu_cores),
        ),
        ("memory", human_bytes(inventory.memory_total_bytes)),
        ("os", inventory.os.clone()),
        ("gpus", gpus),
        ("assignment", "none".to_owned()),
    ])
}
