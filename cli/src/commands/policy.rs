//! `flotilla policy …`: versioned escalation policies (issue 20). Each
//! `create` adds a new version (1, 2, …) of the named policy, from flags or
//! from a JSON document (`--file`); `show NAME@N` reads an old one. The
//! upstream's key is never given here: `--credential` takes a reference
//! (`env:NAME` or `file:/path`) that each node resolves itself.

use std::path::PathBuf;

use anyhow::Context;
use flotilla_api_types::{PolicyDocument, PolicyInfo, TriggersDocument, UpstreamDocument};
use flotilla_client::ApiClient;

use super::prompt::{PromptRef, parse_prompt_ref};
use super::{ListArgs, collect_pages};
use crate::output::{Printer, Table, human_time};

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Adds a new version of an escalation policy (creating it if needed).
    Create(CreateArgs),
    /// Lists policies with their latest version.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Shows a policy's latest version, or NAME@VERSION for a given one.
    Show {
        /// NAME or NAME@VERSION.
        #[arg(value_name = "NAME[@VERSION]", value_parser = parse_prompt_ref)]
        policy: PromptRef,
    },
    /// Lists every version of a policy, newest first.
    Versions {
        name: String,
        #[command(flatten)]
        list: ListArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The policy's name.
    pub name: String,
    /// Read the whole policy from a JSON document (`-` for stdin) instead
    /// of the flags below.
    #[arg(long, value_name = "PATH", conflicts_with_all = [
        "egress", "upstream_url", "upstream_model", "credential", "escalate_model",
        "header", "prompt_over_context", "feature", "on_overload", "on_failure",
        "self_check", "scrub",
    ])]
    pub file: Option<PathBuf>,
    /// `allowed` (escalate to the upstream) or `forbidden` (never call out).
    #[arg(long, value_parser = ["allowed", "forbidden"], required_unless_present = "file")]
    pub egress: Option<String>,
    /// The upstream's OpenAI-compatible API root, e.g. https://api.openai.com/v1.
    #[arg(long, value_name = "URL")]
    pub upstream_url: Option<String>,
    /// The model to ask upstream.
    #[arg(long, value_name = "MODEL")]
    pub upstream_model: Option<String>,
    /// Where each node finds the upstream's key: env:NAME or file:/path.
    /// Never the key itself (refused).
    #[arg(long, value_name = "env:NAME|file:PATH")]
    pub credential: Option<String>,
    /// A model name that means "escalate" when a client asks for it
    /// (repeatable), e.g. auto, frontier.
    #[arg(long, value_name = "NAME")]
    pub escalate_model: Vec<String>,
    /// Let clients ask for escalation with `x-flotilla-escalate: true`.
    #[arg(long)]
    pub header: bool,
    /// Escalate a prompt longer than the local model's context.
    #[arg(long)]
    pub prompt_over_context: bool,
    /// A request feature the local model must not serve, so it escalates
    /// (repeatable): tools, response_format.
    #[arg(long, value_name = "FEATURE", value_parser = ["tools", "response_format"])]
    pub feature: Vec<String>,
    /// Escalate when the local queue is full.
    #[arg(long)]
    pub on_overload: bool,
    /// Escalate when the local generation fails.
    #[arg(long)]
    pub on_failure: bool,
    /// Ask the local model whether it can answer; escalate when its
    /// confidence is below this percentage (1-99).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=99))]
    pub self_check: Option<u32>,
    /// Kinds of personal data to scrub before a request leaves the node
    /// [default: the pattern kinds]: email, phone, payment_card, iban,
    /// us_ssn, ip_address, secret; and person, organisation, address,
    /// which the node's local model finds (a request escalates only once
    /// they are found).
    #[arg(long, value_name = "KIND[,KIND]", value_delimiter = ',')]
    pub scrub: Option<Vec<String>>,
}

impl CreateArgs {
    /// The document the flags describe. The controller validates it (and
    /// says which field is wrong); here only what clap cannot say.
    fn document(self) -> anyhow::Result<PolicyDocument> {
        if let Some(path) = &self.file {
            let text = super::prompt::read_text(path)?;
            return serde_json::from_str(&text)
                .with_context(|| format!("{} is not a policy document", path.display()));
        }
        let upstream = match (self.upstream_url, self.upstream_model, self.credential) {
            (None, None, None) => None,
            (Some(base_url), Some(model), Some(credential)) => Some(UpstreamDocument {
                base_url,
                model,
                credential,
            }),
            _ => anyhow::bail!(
                "an upstream needs all of --upstream-url, --upstream-model and --credential"
            ),
        };
        Ok(PolicyDocument {
            egress: self.egress.unwrap_or_else(|| "forbidden".to_owned()),
            upstream,
            triggers: TriggersDocument {
                model_names: self.escalate_model,
                header: self.header,
                prompt_over_context: self.prompt_over_context,
                features: self.feature,
                on_overload: self.on_overload,
                on_failure: self.on_failure,
                self_check_threshold_percent: self.self_check,
            },
            scrub: self.scrub,
        })
    }
}

pub async fn run(
    command: PolicyCommand,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Create(args) => {
            let name = args.name.clone();
            let created = client
                .create_policy_version(&name, &args.document()?)
                .await?;
            if printer.is_json() {
                return printer.json(&created);
            }
            printer.line(&format!(
                "created policy {} version {}",
                created.name, created.version
            ))
        }
        PolicyCommand::Ls(list) => {
            let page = collect_pages(list.limit, |limit, after| async move {
                client.list_policies(limit, after.as_deref()).await
            })
            .await?;
            if printer.is_json() {
                return printer.json(&page);
            }
            let mut table = Table::new(&["NAME", "LATEST", "UPDATED"]);
            for policy in &page.items {
                table.row(vec![
                    policy.name.clone(),
                    policy.latest_version.to_string(),
                    human_time(policy.updated_at),
                ]);
            }
            printer.table(&table)
        }
        PolicyCommand::Show { policy } => {
            let found = client.policy(&policy.name, policy.version).await?;
            if printer.is_json() {
                return printer.json(&found);
            }
            printer.fields(&policy_fields(&found))
        }
        PolicyCommand::Versions { name, list } => {
            let page = collect_pages(list.limit, |limit, after| {
                let name = &name;
                async move {
                    client
                        .list_policy_versions(name, limit, after.as_deref())
                        .await
                }
            })
            .await?;
            if printer.is_json() {
                return printer.json(&page);
            }
            let mut table = Table::new(&["VERSION", "CREATED", "EGRESS"]);
            for policy in &page.items {
                table.row(vec![
                    policy.version.to_string(),
                    human_time(policy.created_at),
                    egress_text(&policy.spec),
                ]);
            }
            printer.table(&table)
        }
    }
}

/// `forbidden`, or `allowed: MODEL at URL`.
fn egress_text(spec: &PolicyDocument) -> String {
    match &spec.upstream {
        Some(upstream) if spec.egress == "allowed" => {
            format!("allowed: {} at {}", upstream.model, upstream.base_url)
        }
        _ => spec.egress.clone(),
    }
}

/// What `policy show` prints: one line per part, triggers in words.
fn policy_fields(policy: &PolicyInfo) -> Vec<(&'static str, String)> {
    let spec = &policy.spec;
    let triggers = &spec.triggers;
    let mut when = Vec::new();
    if !triggers.model_names.is_empty() {
        when.push(format!("model {}", triggers.model_names.join("|")));
    }
    if triggers.header {
        when.push("header x-flotilla-escalate: true".to_owned());
    }
    if triggers.prompt_over_context {
        when.push("prompt over the local context".to_owned());
    }
    if !triggers.features.is_empty() {
        when.push(format!("uses {}", triggers.features.join(",")));
    }
    if triggers.on_overload {
        when.push("local overload".to_owned());
    }
    if triggers.on_failure {
        when.push("local failure".to_owned());
    }
    if let Some(percent) = triggers.self_check_threshold_percent {
        when.push(format!("self-check below {percent}%"));
    }
    let mut fields = vec![
        ("name", policy.name.clone()),
        ("version", policy.version.to_string()),
        ("created", human_time(policy.created_at)),
        ("egress", spec.egress.clone()),
    ];
    if let Some(upstream) = &spec.upstream {
        fields.push(("upstream", upstream.base_url.clone()));
        fields.push(("upstream model", upstream.model.clone()));
        // A reference, resolved on each node: the key is not known here.
        fields.push(("credential", upstream.credential.clone()));
    }
    fields.push((
        "escalate on",
        if when.is_empty() {
            "-".to_owned()
        } else {
            when.join(", ")
        },
    ));
    fields.push((
        "scrub",
        match &spec.scrub {
            None => "all".to_owned(),
            Some(kinds) if kinds.is_empty() => "nothing".to_owned(),
            Some(kinds) => kinds.join(","),
        },
    ));
    fields
}

/// `NAME@VERSION`: an assignment or rollout pins a version, so that a new
/// policy version never reaches nodes without an operator's say.
pub(crate) fn parse_pinned_policy(text: &str) -> Result<String, String> {
    let policy = parse_prompt_ref(text)?;
    match policy.version {
        Some(version) => Ok(format!("{}@{version}", policy.name)),
        None => Err(format!(
            "the policy needs a version: {text}@N (see flotilla policy show {text})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_policies_pin_a_version() {
        assert_eq!(parse_pinned_policy("hybrid@3"), Ok("hybrid@3".into()));
        assert!(parse_pinned_policy("hybrid").is_err());
        assert!(parse_pinned_policy("hybrid@0").is_err());
    }

    #[test]
    fn show_words_the_triggers_and_names_only_the_reference() {
        let info = PolicyInfo {
            name: "hybrid".into(),
            version: 2,
            spec: PolicyDocument {
                egress: "allowed".into(),
                upstream: Some(UpstreamDocument {
                    base_url: "https://llm.example.com/v1".into(),
                    model: "big".into(),
                    credential: "env:UPSTREAM_KEY".into(),
                }),
                triggers: TriggersDocument {
                    model_names: vec!["auto".into(), "frontier".into()],
                    on_overload: true,
                    self_check_threshold_percent: Some(40),
                    ..TriggersDocument::default()
                },
                scrub: None,
            },
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let fields = policy_fields(&info);
        let value = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            value("escalate on"),
            "model auto|frontier, local overload, self-check below 40%"
        );
        assert_eq!(value("credential"), "env:UPSTREAM_KEY");
        assert_eq!(value("scrub"), "all");
    }
}
