//! `flotilla node …`: bootstrap tokens for enrolling agents, and the fleet's
//! nodes: list and show them (with what they should serve, what their agents
//! report and their recent health), approve, cordon, uncordon and drain
//! them, and edit their labels. Enrolment itself is the agent's business:
//! `flotilla-agent --bootstrap-token TOKEN …`.
//!
//! How nodes look in tables and in `show` lives in `view.rs`.

mod view;

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_api_types::{CreateBootstrapTokenRequest, UpdateLabelsRequest};
use flotilla_client::ApiClient;
use time::OffsetDateTime;

use super::{ListArgs, collect_pages};
use crate::commands::token::parse_ttl;
use crate::output::{Printer, human_time, label_list};

/// How much health history `node show` draws: one character per minute.
const HISTORY_MINUTES: u32 = 60;

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Bootstrap tokens that agents enrol with.
    #[command(subcommand)]
    Token(NodeTokenCommand),
    /// Lists the fleet's nodes with what they serve and how they are doing.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Shows one node, its latest health and the last hour of it.
    Show { name: String },
    /// Lets a pending node take part (controllers run with --require-node-approval).
    Approve { name: String },
    /// Lets the next enrolment under NAME (agent flag --replace) replace the
    /// node, once: its old credentials stop working then, and its status
    /// (cordoned, say) carries over.
    ApproveReplace { name: String },
    /// Removes a node and revokes its credentials at once (admins only).
    #[command(visible_alias = "remove")]
    Rm { name: String },
    /// Keeps new assignments away from a node; what it serves stays.
    Cordon { name: String },
    /// Lets a cordoned node take assignments again.
    Uncordon { name: String },
    /// Cordons a node and empties its desired state, so it stops serving.
    Drain { name: String },
    /// Sets labels (KEY=VALUE) and removes them (KEY-), in one step.
    Label {
        name: String,
        /// `zone=eu` sets a label, `zone-` removes it.
        #[arg(required = true, value_name = "KEY=VALUE|KEY-", value_parser = parse_label_edit)]
        edits: Vec<LabelEdit>,
    },
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
        /// Only this node name, or names matching this glob (`rack7-*`), may enrol with it.
        #[arg(long, value_name = "NAME|PATTERN", conflicts_with = "replace")]
        node: Option<String>,
        /// The token approves replacing the enrolled node NAME (and enrols only NAME).
        #[arg(long, value_name = "NAME")]
        replace: Option<String>,
    },
    /// Lists bootstrap tokens (never their secrets).
    #[command(visible_alias = "list")]
    Ls,
    /// Revokes a bootstrap token: it enrols nothing from now on.
    Revoke { id: String },
}

/// One word of `flotilla node label`, kubectl style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelEdit {
    Set { key: String, value: String },
    Remove { key: String },
}

impl LabelEdit {
    fn key(&self) -> &str {
        match self {
            Self::Set { key, .. } | Self::Remove { key } => key,
        }
    }
}

pub async fn run(
    command: NodeCommand,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    match command {
        NodeCommand::Token(NodeTokenCommand::Ls) => {
            let tokens = client.list_bootstrap_tokens().await?;
            if printer.is_json() {
                return printer.json(&tokens);
            }
            printer.table(&crate::commands::token::bootstrap_table(&tokens))
        }
        NodeCommand::Token(NodeTokenCommand::Revoke { id }) => {
            let token = client.revoke_bootstrap_token(&id).await?;
            if printer.is_json() {
                return printer.json(&token);
            }
            printer.line(&format!("bootstrap token {} revoked", token.id))
        }
        NodeCommand::ApproveReplace { name } => {
            let node = client.approve_replace_node(&name).await?;
            if printer.is_json() {
                return printer.json(&node);
            }
            printer.line(&format!(
                "the next enrolment of {} with --replace may replace it",
                node.name
            ))
        }
        NodeCommand::Rm { name } => {
            client.remove_node(&name).await?;
            if printer.is_json() {
                return printer.json(&serde_json::json!({ "removed": name }));
            }
            printer.line(&format!(
                "node {name} removed; its credentials no longer work"
            ))
        }
        NodeCommand::Token(NodeTokenCommand::Create {
            ttl,
            uses,
            node,
            replace,
        }) => {
            let created = client
                .create_bootstrap_token(&CreateBootstrapTokenRequest {
                    ttl_seconds: Some(ttl.as_secs()),
                    uses: Some(uses),
                    node,
                    replace,
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
            // The page as the API sends it: scripts rely on `{items, next_cursor}`.
            if printer.is_json() {
                return printer.json(&page);
            }
            printer.table(&view::nodes_table(&page.items, OffsetDateTime::now_utc()))
        }
        NodeCommand::Show { name } => {
            // The node first, so that a missing one is reported as such.
            let node = client.node(&name).await?;
            let history = client.node_health(&name, HISTORY_MINUTES).await?;
            if printer.is_json() {
                return printer.json(&view::NodeWithHistory {
                    node,
                    history: history.points,
                });
            }
            let now = OffsetDateTime::now_utc();
            printer.fields(&view::node_fields(&node, now))?;
            printer.line("")?;
            printer.line(&format!(
                "health, last {HISTORY_MINUTES} minutes (one column a minute, oldest first):"
            ))?;
            printer.fields(&view::history_fields(&history.points, now, HISTORY_MINUTES))
        }
        NodeCommand::Approve { name } => {
            let node = client.approve_node(&name).await?;
            if printer.is_json() {
                return printer.json(&node);
            }
            printer.line(&format!("node {} is {}", node.name, node.status))
        }
        NodeCommand::Cordon { name } => {
            let node = client.cordon_node(&name).await?;
            if printer.is_json() {
                return printer.json(&node);
            }
            printer.line(&format!("node {} is {}", node.name, node.status))
        }
        NodeCommand::Uncordon { name } => {
            let node = client.uncordon_node(&name).await?;
            if printer.is_json() {
                return printer.json(&node);
            }
            printer.line(&format!("node {} is {}", node.name, node.status))
        }
        NodeCommand::Drain { name } => {
            let node = client.drain_node(&name).await?;
            if printer.is_json() {
                return printer.json(&node);
            }
            printer.line(&format!(
                "node {} is {} and drained: it should serve nothing (desired generation {})",
                node.name, node.status, node.desired_generation
            ))
        }
        NodeCommand::Label { name, edits } => {
            let request = labels_request(&edits)?;
            let node = client.update_node_labels(&name, &request).await?;
            if printer.is_json() {
                return printer.json(&node);
            }
            let labels = if node.labels.is_empty() {
                "none".to_owned()
            } else {
                label_list(&node.labels)
            };
            printer.line(&format!("node {} labels: {labels}", node.name))
        }
    }
}

/// `KEY=VALUE` sets a label, `KEY-` removes it. `=` is looked for first, so
/// `tier=hot-` sets `tier` to `hot-`.
fn parse_label_edit(text: &str) -> Result<LabelEdit, String> {
    if let Some((key, value)) = text.split_once('=') {
        if key.is_empty() || value.is_empty() {
            return Err(format!(
                "label {text:?} needs both a key and a value, e.g. zone=eu (KEY- removes one)"
            ));
        }
        return Ok(LabelEdit::Set {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    match text.strip_suffix('-') {
        Some(key) if !key.is_empty() => Ok(LabelEdit::Remove {
            key: key.to_owned(),
        }),
        _ => Err(format!(
            "{text:?} is neither KEY=VALUE (set a label) nor KEY- (remove one)"
        )),
    }
}

/// One request for all the edits; a key edited twice is refused rather than
/// guessing which edit was meant.
fn labels_request(edits: &[LabelEdit]) -> anyhow::Result<UpdateLabelsRequest> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for edit in edits {
        if !seen.insert(edit.key()) {
            anyhow::bail!("label {} is edited more than once", edit.key());
        }
        match edit {
            LabelEdit::Set { key, value } => {
                set.insert(key.clone(), value.clone());
            }
            LabelEdit::Remove { key } => remove.push(key.clone()),
        }
    }
    Ok(UpdateLabelsRequest { set, remove })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> LabelEdit {
        LabelEdit::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn label_edits_set_with_equals_and_remove_with_a_trailing_dash() {
        assert_eq!(parse_label_edit("zone=eu"), Ok(set("zone", "eu")));
        assert_eq!(parse_label_edit("tier=hot-"), Ok(set("tier", "hot-")));
        assert_eq!(parse_label_edit("a=b=c"), Ok(set("a", "b=c")));
        assert_eq!(
            parse_label_edit("gpu-type-"),
            Ok(LabelEdit::Remove {
                key: "gpu-type".into()
            })
        );
        for bad in ["zone", "-", "=eu", "zone=", ""] {
            assert!(parse_label_edit(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn label_edits_become_one_request_each_key_once() -> anyhow::Result<()> {
        let request = labels_request(&[
            set("zone", "eu"),
            LabelEdit::Remove { key: "old".into() },
            set("gpu", "l4"),
        ])?;
        assert_eq!(
            request,
            UpdateLabelsRequest {
                set: [("gpu", "l4"), ("zone", "eu")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                remove: vec!["old".into()],
            }
        );
        assert!(labels_request(&[set("a", "1"), set("a", "2")]).is_err());
        assert!(labels_request(&[set("a", "1"), LabelEdit::Remove { key: "a".into() }]).is_err());
        Ok(())
    }
}
