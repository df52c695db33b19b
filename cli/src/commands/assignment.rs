//! `flotilla assign`, `flotilla unassign` and `flotilla assignment ls`: what
//! a node, or every node matching a label selector, should serve.
//!
//! The controller owns the meaning: it resolves the version and the
//! quantization to one artifact, decides which assignment wins on a node (a
//! node's own over selectors, the newest selector otherwise) and bumps the
//! generation of every node whose desired state changed. This module only
//! checks the operator's arguments and shows the outcome.

use std::collections::BTreeMap;
use std::fmt;

use flotilla_api_types::{
    AssignmentChange, AssignmentRecord, CreateAssignmentRequest, RemoveAssignmentQuery,
};
use flotilla_client::ApiClient;

use super::prompt::parse_prompt_ref;
use super::{ListArgs, collect_pages};
use crate::output::{Printer, Table, human_bytes, human_time, label_list, short_digest};

#[derive(Debug, clap::Subcommand)]
pub enum AssignmentCommand {
    /// Lists the operators' assignments.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
}

/// Which nodes an assignment is for: exactly one of `--node` and `--selector`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// One node, by name.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Every node carrying all these labels, e.g. zone=eu,gpu=l4.
    #[arg(long, value_name = "K=V[,K2=V2]", value_parser = parse_selector)]
    pub selector: Option<Selector>,
}

#[derive(Debug, clap::Args)]
pub struct AssignArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The model's name.
    #[arg(long)]
    pub model: String,
    /// A version such as 1.2.0, or a requirement such as ^1.2 (the newest
    /// published version that matches, resolved once, now).
    #[arg(long, value_name = "SEMVER", value_parser = parse_version_or_requirement)]
    pub version: String,
    /// The quantization, e.g. Q4_1 [default: the most precise artifact of the version].
    #[arg(long, value_name = "QUANT")]
    pub quant: Option<String>,
    /// A system prompt version to serve with the model.
    #[arg(long, value_name = "NAME@VERSION", value_parser = parse_pinned_prompt)]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub serving: ServingArgs,
}

/// How nodes serve an assigned model: shared by `assign` and `rollout create`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServingArgs {
    /// What a chat request's own system message does with the assigned
    /// prompt [default: prepend].
    #[arg(long, value_name = "POLICY", value_parser = ["prepend", "replace", "forbid"])]
    pub prompt_policy: Option<String>,
    /// Another name clients may ask for the model by (repeatable).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// An escalation policy version the nodes apply (see `flotilla policy`).
    #[arg(long, value_name = "NAME@VERSION", value_parser = super::policy::parse_pinned_policy)]
    pub policy: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct UnassignArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

/// A label selector: every pair must match. Kept sorted, so that the same
/// selector always prints (and is sent) the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(BTreeMap<String, String>);

impl Selector {
    pub fn into_labels(self) -> BTreeMap<String, String> {
        self.0
    }
}

/// `k=v,k2=v2`, the form `DELETE /assignments?selector=` takes.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&label_list(&self.0))
    }
}

/// `k=v,k2=v2`: keys and values non-empty, each key once.
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    let mut labels = BTreeMap::new();
    for term in text.split(',') {
        let (key, value) = term
            .split_once('=')
            .ok_or_else(|| format!("selector term {term:?} is not KEY=VALUE"))?;
        if key.is_empty() || value.is_empty() {
            return Err(format!(
                "selector term {term:?} needs both a key and a value, e.g. zone=eu"
            ));
        }
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("selector names {key:?} twice"));
        }
    }
    Ok(Selector(labels))
}

/// Checks the text here so a typo is a usage error, but sends the
/// operator's own text: `1.2.0` means exactly that version to the
/// controller, whereas semver's requirement parser would read it as `^1.2.0`.
fn parse_version_or_requirement(text: &str) -> Result<String, String> {
    if semver::Version::parse(text).is_ok() || semver::VersionReq::parse(text).is_ok() {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is neither a version such as 1.2.0 nor a requirement such as ^1.2"
        ))
    }
}

/// `NAME@VERSION`: unlike `prompt show`, an assignment pins a version, so
/// that a new prompt version never reaches nodes without an assignment.
fn parse_pinned_prompt(text: &str) -> Result<String, String> {
    let prompt = parse_prompt_ref(text)?;
    match prompt.version {
        Some(version) => Ok(format!("{}@{version}", prompt.name)),
        None => Err(format!(
            "the prompt needs a version: {text}@N (see flotilla prompt show {text})"
        )),
    }
}

pub async fn assign(args: AssignArgs, client: &ApiClient, printer: &Printer) -> anyhow::Result<()> {
    let request = CreateAssignmentRequest {
        node: args.target.node,
        selector: args.target.selector.map(Selector::into_labels),
        model: args.model,
        version: args.version,
        quantization: args.quant,
        prompt: args.prompt,
        prompt_policy: args.serving.prompt_policy,
        aliases: args.serving.aliases,
        policy: args.serving.policy,
    };
    let change = client.create_assignment(&request).await?;
    if printer.is_json() {
        return printer.json(&change);
    }
    if let Some(assignment) = &change.assignment {
        printer.fields(&[
            ("assignment", assignment.generation.to_string()),
            ("target", target_text(assignment)),
            (
                "model",
                format!(
                    "{}@{} {}",
                    assignment.model, assignment.version, assignment.quantization
                ),
            ),
            (
                "artifact",
                format!(
                    "blake3:{} ({})",
                    assignment.digest,
                    human_bytes(assignment.size_bytes)
                ),
            ),
            ("prompt", prompt_text(assignment)),
            ("prompt policy", assignment.prompt_policy.clone()),
            ("aliases", alias_text(&assignment.aliases)),
            (
                "policy",
                assignment.policy.clone().unwrap_or_else(|| "-".to_owned()),
            ),
        ])?;
        printer.line("")?;
    }
    nodes_changed(&change, printer)?;
    if let Some(selector) = &request.selector {
        shadowing_pins(selector, client, printer).await?;
    }
    Ok(())
}

/// Names the nodes a selector assignment matches but does not reach: those
/// holding a node-level assignment (an operator's `assign --node`, or one a
/// rollout wrote), which wins over every selector.
async fn shadowing_pins(
    selector: &std::collections::BTreeMap<String, String>,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    let nodes = super::collect_pages(None, |limit, after| async move {
        client.list_nodes(limit, after.as_deref()).await
    })
    .await?;
    let pinned: Vec<String> = nodes
        .items
        .iter()
        .filter(|node| {
            selector
                .iter()
                .all(|(key, value)| node.labels.get(key) == Some(value))
        })
        .filter_map(|node| {
            let assignment = node.assignment.as_ref()?;
            assignment
                .target
                .starts_with("node=")
                .then(|| format!("{} ({})", node.name, assignment.target))
        })
        .collect();
    if pinned.is_empty() {
        return Ok(());
    }
    printer.line(&format!(
        "note: {} matching node(s) keep a node-level assignment, which wins over selectors: {}; \
         `flotilla unassign --node NAME` hands a node back to the selector",
        pinned.len(),
        pinned.join(", ")
    ))
}

fn alias_text(aliases: &[String]) -> String {
    if aliases.is_empty() {
        "-".to_owned()
    } else {
        aliases.join(", ")
    }
}

pub async fn unassign(
    args: UnassignArgs,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    let query = RemoveAssignmentQuery {
        node: args.target.node,
        selector: args.target.selector.map(|selector| selector.to_string()),
    };
    let target = match (&query.node, &query.selector) {
        (Some(node), _) => format!("node={node}"),
        (None, Some(selector)) => format!("selector {selector}"),
        (None, None) => String::new(),
    };
    let change = client.remove_assignment(&query).await?;
    if printer.is_json() {
        return printer.json(&change);
    }
    printer.line(&format!("removed the assignment for {target}"))?;
    nodes_changed(&change, printer)
}

pub async fn run(
    command: AssignmentCommand,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    match command {
        AssignmentCommand::Ls(list) => {
            let page = collect_pages(list.limit, |limit, after| async move {
                client.list_assignments(limit, after.as_deref()).await
            })
            .await?;
            if printer.is_json() {
                return printer.json(&page);
            }
            printer.table(&assignments_table(&page.items))
        }
    }
}

fn assignments_table(assignments: &[AssignmentRecord]) -> Table {
    let mut table = Table::new(&[
        "GENERATION",
        "TARGET",
        "MODEL",
        "VERSION",
        "QUANT",
        "DIGEST",
        "PROMPT",
        "CREATED",
    ]);
    for assignment in assignments {
        table.row(vec![
            assignment.generation.to_string(),
            target_text(assignment),
            assignment.model.clone(),
            assignment.version.clone(),
            assignment.quantization.clone(),
            short_digest(&assignment.digest),
            prompt_text(assignment),
            human_time(assignment.created_at),
        ]);
    }
    table
}

/// `node=NAME` or `selector k=v,...`, as the API words a node's assignment target.
fn target_text(assignment: &AssignmentRecord) -> String {
    match (&assignment.node, &assignment.selector) {
        (Some(node), _) => format!("node={node}"),
        (None, Some(selector)) => format!("selector {}", label_list(selector)),
        (None, None) => "-".to_owned(),
    }
}

fn prompt_text(assignment: &AssignmentRecord) -> String {
    assignment.prompt.clone().unwrap_or_else(|| "-".to_owned())
}

fn nodes_changed(change: &AssignmentChange, printer: &Printer) -> anyhow::Result<()> {
    if change.nodes_changed.is_empty() {
        return printer.line("no node's desired state changed");
    }
    let mut table = Table::new(&["NODE", "GENERATION"]);
    for node in &change.nodes_changed {
        table.row(vec![node.node.clone(), node.generation.to_string()]);
    }
    printer.table(&table)
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;

    fn selector(pairs: &[(&str, &str)]) -> Selector {
        Selector(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn selectors_are_pairs_each_key_once() {
        assert_eq!(parse_selector("zone=eu"), Ok(selector(&[("zone", "eu")])));
        let two = parse_selector("zone=eu,gpu=l4");
        assert_eq!(two, Ok(selector(&[("gpu", "l4"), ("zone", "eu")])));
        // Sorted when sent, whatever order the operator typed.
        assert_eq!(two.map(|s| s.to_string()), Ok("gpu=l4,zone=eu".to_owned()));
        assert_eq!(parse_selector("path=a=b"), Ok(selector(&[("path", "a=b")])));
        for bad in ["", "zone", "zone=", "=eu", "zone=eu,", "zone=eu,zone=us"] {
            assert!(parse_selector(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn versions_and_requirements_are_sent_verbatim() {
        assert_eq!(parse_version_or_requirement("1.2.0"), Ok("1.2.0".into()));
        assert_eq!(parse_version_or_requirement("^1.2"), Ok("^1.2".into()));
        assert!(parse_version_or_requirement("latest").is_err());
    }

    #[test]
    fn assigned_prompts_pin_a_version() {
        assert_eq!(parse_pinned_prompt("greeter@3"), Ok("greeter@3".into()));
        assert!(parse_pinned_prompt("greeter").is_err());
        assert!(parse_pinned_prompt("greeter@0").is_err());
        assert!(parse_pinned_prompt("@3").is_err());
    }

    #[test]
    fn assignments_list_with_their_target() {
        let record = AssignmentRecord {
            generation: 7,
            node: None,
            selector: Some(selector(&[("zone", "eu"), ("gpu", "l4")]).into_labels()),
            model: "llama".into(),
            version: "1.2.0".into(),
            quantization: "Q4_1".into(),
            digest: "abcdef0123456789".into(),
            size_bytes: 1 << 30,
            prompt: None,
            prompt_policy: "prepend".into(),
            aliases: Vec::new(),
            policy: None,
            created_by: "alice".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        let pinned = AssignmentRecord {
            generation: 8,
            node: Some("edge-1".into()),
            selector: None,
            prompt: Some("greeter@2".into()),
            ..record.clone()
        };
        assert_eq!(
            assignments_table(&[record, pinned]).render(),
            "GENERATION  TARGET                   MODEL  VERSION  QUANT  DIGEST        PROMPT     CREATED\n\
             7           selector gpu=l4,zone=eu  llama  1.2.0    Q4_1   abcdef012345  -          1970-01-01 00:00:00Z\n\
             8           node=edge-1              llama  1.2.0    Q4_1   abcdef012345  greeter@2  1970-01-01 00:00:00Z\n"
        );
    }
}
