//! `flotilla rollout create|status|ls|pause|resume|promote|abort|rollback`
//! and `flotilla events`: staged, health-gated rollouts and the audit log.
//!
//! The controller owns the meaning (waves, hardware fit, gates); this module
//! checks the operator's arguments, sends them and shows the outcome.

use std::time::Duration;

use flotilla_api_types::{CreateRolloutRequest, EventInfo, RolloutInfo, RolloutNodeInfo};
use flotilla_client::ApiClient;

use super::assignment::{Selector, parse_selector};
use super::parse_duration;
use super::prompt::parse_prompt_ref;
use crate::output::{Printer, Table, human_bytes, human_time, label_list, short_digest};

/// How often `status --watch` refreshes.
const WATCH_EVERY: Duration = Duration::from_secs(1);
const BAR_WIDTH: usize = 20;

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Starts a staged rollout of a model version to the nodes matching a selector.
    Create(Box<CreateArgs>),
    /// Shows a rollout's waves and each node's state, with download progress.
    Status(StatusArgs),
    /// Lists rollouts.
    #[command(visible_alias = "list")]
    Ls,
    /// Stops a rollout where it is; `resume` continues it.
    Pause(NameArg),
    /// Continues a paused or halted rollout.
    Resume(NameArg),
    /// Skips the rest of the current wave's bake time.
    Promote(NameArg),
    /// Stops a rollout for good; nodes keep what they have.
    Abort(NameArg),
    /// Restores every node the rollout touched to what it had before.
    Rollback(NameArg),
    /// Deletes a rollout that has ended, so that its name can be used
    /// again; its events stay in the audit log.
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub name: String,
    /// Also remove the node-level assignments the rollout wrote, so that
    /// its nodes fall back to their selector assignments (which may change
    /// what they serve, at once and without waves). Without it they stay,
    /// as plain node assignments.
    #[arg(long)]
    pub release_pins: bool,
}

#[derive(Debug, clap::Args)]
pub struct NameArg {
    pub name: String,
}

#[derive(Debug, clap::Args)]
// `--min-requests` means something only beside a rate gate.
#[command(group(clap::ArgGroup::new("rate_gates")
    .args(["max_error_rate", "max_escalation_rate"])
    .multiple(true)))]
pub struct CreateArgs {
    pub name: String,
    /// The model's name.
    #[arg(long)]
    pub model: String,
    /// An exact version such as 1.2.0 (that one and no other), or a range
    /// spelled as one: ^1.2, ~1.2.3, >=1.2, 1.*.
    #[arg(long, value_name = "VERSION|RANGE", value_parser = exact_or_range)]
    pub version: String,
    /// The nodes: every active node carrying all these labels, e.g. site=berlin.
    #[arg(long, value_name = "K=V[,K2=V2]", value_parser = parse_selector)]
    pub selector: Selector,
    /// `auto` (the highest precision that fits each node's memory) or a
    /// preference list such as Q8_0,Q4_1.
    #[arg(long, value_name = "auto|Q8_0,Q4_1", default_value = "auto")]
    pub quant: String,
    /// A system prompt version to serve with the model.
    #[arg(long, value_name = "NAME@VERSION", value_parser = parse_prompt)]
    pub prompt: Option<String>,
    /// Cumulative waves: counts or percentages of the selected nodes.
    #[arg(long, value_name = "1,10%,50%,100%", default_value = "1,100%")]
    pub waves: String,
    /// How long every node of a wave must stay ready before the next (e.g. 30s, 200ms, 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub bake: Duration,
    /// Nodes of a wave changing at once.
    #[arg(long, value_name = "N", default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unavailable: u32,
    /// Restore every touched node automatically when a health gate trips.
    #[arg(long)]
    pub auto_rollback: bool,
    /// Failed activations tolerated before the rollout halts.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_failed: u32,
    /// Halt when a node of the current wave fails more than this share of
    /// its requests on the new version [default: no error-rate gate].
    #[arg(long, value_name = "PERCENT",
        value_parser = clap::value_parser!(u32).range(0..100))]
    pub max_error_rate: Option<u32>,
    /// Halt when a node of the current wave sends more than this share of
    /// the requests it answers on the new version to its escalation
    /// policy's upstream [default: no escalation-rate gate].
    #[arg(long, value_name = "PERCENT",
        value_parser = clap::value_parser!(u32).range(0..100))]
    pub max_escalation_rate: Option<u32>,
    /// Requests a node must have answered on the new version before its
    /// error and escalation rates count [default: 20].
    #[arg(long, value_name = "N", requires = "rate_gates")]
    pub min_requests: Option<u32>,
    #[command(flatten)]
    pub serving: super::assignment::ServingArgs,
    /// Print which node would get which artifact, and which are
    /// unschedulable, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    pub name: String,
    /// Refresh every second until the rollout ends.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only the events of this rollout.
    #[arg(long, value_name = "NAME")]
    pub rollout: Option<String>,
    /// Only the events about this node.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Only what this subject did (a token's subject, or `controller`).
    #[arg(long, value_name = "SUBJECT")]
    pub actor: Option<String>,
    /// Only actions containing this text, e.g. `cordon`, `POST`, `rollout.`.
    #[arg(long, value_name = "TEXT")]
    pub action: Option<String>,
}

impl EventsArgs {
    fn keeps(&self, event: &EventInfo) -> bool {
        self.node
            .as_ref()
            .is_none_or(|node| event.node.as_ref() == Some(node))
            && self
                .actor
                .as_ref()
                .is_none_or(|actor| &event.actor == actor)
            && self
                .action
                .as_ref()
                .is_none_or(|action| event.action.contains(action.as_str()))
    }
}

/// A bare version means exactly that version (`1.1.0` → `=1.1.0`): semver's
/// own reading of a bare version is a caret range, which picked 1.2.0 for
/// `--version 1.1.0`. Anything else must parse as a requirement.
pub fn exact_or_range(text: &str) -> Result<String, String> {
    let text = text.trim();
    if let Ok(version) = semver::Version::parse(text) {
        return Ok(format!("={version}"));
    }
    semver::VersionReq::parse(text)
        .map(|_| text.to_owned())
        .map_err(|error| {
            format!("{text:?} is neither a version such as 1.2.0 nor a range such as ^1.2: {error}")
        })
}

fn parse_prompt(text: &str) -> Result<String, String> {
    let prompt = parse_prompt_ref(text)?;
    match prompt.version {
        Some(_) => Ok(text.to_owned()),
        None => Err(format!(
            "{text:?} names no version: a rollout pins one, e.g. {text}@3"
        )),
    }
}

pub async fn run(
    command: RolloutCommand,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    match command {
        RolloutCommand::Create(args) => create(*args, client, printer).await,
        RolloutCommand::Status(args) => status(args, client, printer).await,
        RolloutCommand::Ls => {
            let list = client.list_rollouts().await?;
            if printer.is_json() {
                return printer.json(&list);
            }
            let mut table = Table::new(&["NAME", "STATE", "MODEL", "VERSION", "WAVE", "SELECTOR"]);
            for rollout in list.items {
                table.row(vec![
                    rollout.name,
                    rollout.state,
                    rollout.model,
                    rollout.version,
                    format!("{}/{}", rollout.current_wave, rollout.wave_count),
                    label_list(&rollout.selector),
                ]);
            }
            printer.table(&table)
        }
        RolloutCommand::Pause(NameArg { name }) => command_(client, printer, &name, "pause").await,
        RolloutCommand::Resume(NameArg { name }) => {
            command_(client, printer, &name, "resume").await
        }
        RolloutCommand::Promote(NameArg { name }) => {
            command_(client, printer, &name, "promote").await
        }
        RolloutCommand::Abort(NameArg { name }) => command_(client, printer, &name, "abort").await,
        RolloutCommand::Rollback(NameArg { name }) => {
            command_(client, printer, &name, "rollback").await
        }
        RolloutCommand::Delete(args) => delete(args, client, printer).await,
    }
}

async fn delete(args: DeleteArgs, client: &ApiClient, printer: &Printer) -> anyhow::Result<()> {
    let deleted = client.delete_rollout(&args.name, args.release_pins).await?;
    if printer.is_json() {
        return printer.json(&deleted);
    }
    printer.line(&format!("rollout {} deleted", deleted.name))?;
    if deleted.nodes.is_empty() {
        return Ok(());
    }
    let nodes = deleted.nodes.join(", ");
    if deleted.released {
        printer.line(&format!(
            "released the node assignments it wrote on {} node(s): {nodes}; they now follow \
             their selector assignments ({} desired state(s) changed)",
            deleted.nodes.len(),
            deleted.nodes_changed
        ))
    } else {
        printer.line(&format!(
            "kept the node assignments it wrote on {} node(s), which win over selectors: {nodes}; \
             `flotilla unassign --node NAME` hands a node back to its selector",
            deleted.nodes.len()
        ))
    }
}

async fn command_(
    client: &ApiClient,
    printer: &Printer,
    name: &str,
    command: &str,
) -> anyhow::Result<()> {
    let rollout = client.rollout_command(name, command).await?;
    if printer.is_json() {
        return printer.json(&rollout);
    }
    printer.line(&format!("rollout {}: {}", rollout.name, rollout.state))
}

async fn create(args: CreateArgs, client: &ApiClient, printer: &Printer) -> anyhow::Result<()> {
    let request = CreateRolloutRequest {
        name: args.name,
        model: args.model,
        version: args.version,
        selector: args.selector.into_labels(),
        quantization: Some(args.quant),
        prompt: args.prompt,
        prompt_policy: args.serving.prompt_policy,
        aliases: args.serving.aliases,
        policy: args.serving.policy,
        waves: Some(args.waves),
        bake_ms: Some(u64::try_from(args.bake.as_millis()).unwrap_or(u64::MAX)),
        max_unavailable: Some(args.max_unavailable),
        auto_rollback: args.auto_rollback,
        max_failed_activations: Some(args.max_failed),
        max_error_rate_percent: args.max_error_rate,
        min_requests_for_error_rate: args.min_requests,
        max_escalation_rate_percent: args.max_escalation_rate,
        dry_run: args.dry_run,
    };
    let rollout = client.create_rollout(&request).await?;
    if printer.is_json() {
        return printer.json(&rollout);
    }
    if args.dry_run {
        printer.line(&format!(
            "dry run of rollout {}: {} {} ({}) over {} nodes in {} waves; nothing changed",
            rollout.name,
            rollout.model,
            rollout.version,
            rollout.quantization,
            rollout.nodes.len(),
            rollout.wave_count
        ))?;
        let mut table = Table::new(&["WAVE", "NODE", "CURRENT", "NEXT", "QUANT", "DIGEST", "NOTE"]);
        for node in &rollout.nodes {
            table.row(vec![
                node.wave.to_string(),
                node.node.clone(),
                node.current
                    .as_ref()
                    .map_or_else(|| "nothing".into(), serving_summary),
                node.next.as_ref().map_or_else(
                    || node.version.clone().unwrap_or_else(|| "-".into()),
                    serving_summary,
                ),
                node.quantization.clone().unwrap_or_else(|| "-".into()),
                node.digest
                    .as_deref()
                    .map_or_else(|| "-".into(), short_digest),
                if node.state == "unschedulable" {
                    format!("unschedulable: {}", node.reason.clone().unwrap_or_default())
                } else {
                    String::new()
                },
            ]);
        }
        return printer.table(&table);
    }
    printer.line(&format!(
        "rollout {} created: {} nodes in {} waves (see `flotilla rollout status {}`)",
        rollout.name,
        rollout.nodes.len(),
        rollout.wave_count,
        rollout.name
    ))
}

async fn status(args: StatusArgs, client: &ApiClient, printer: &Printer) -> anyhow::Result<()> {
    loop {
        let rollout = client.rollout(&args.name).await?;
        let done = matches!(
            rollout.state.as_str(),
            "succeeded" | "aborted" | "rolled_back" | "halted"
        );
        if printer.is_json() {
            printer.json(&rollout)?;
        } else {
            if args.watch && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                // Clear the screen and go home, like `watch`; into a pipe or
                // a file each refresh is simply appended.
                printer.raw("\x1b[2J\x1b[H")?;
            }
            printer.raw(&render_status(&rollout))?;
        }
        if !args.watch || done {
            return Ok(());
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// `model version, prompt p@1 (policy), aliases a,b`: one assignment in a
/// dry run's table, so that what a rollout keeps and changes is visible.
fn serving_summary(serving: &flotilla_api_types::ServingSummary) -> String {
    let mut text = format!("{} {}", serving.model, serving.version);
    match &serving.prompt {
        Some(prompt) => text.push_str(&format!(", prompt {prompt} ({})", serving.prompt_policy)),
        None => text.push_str(", no prompt"),
    }
    if serving.aliases.is_empty() {
        text.push_str(", no aliases");
    } else {
        text.push_str(&format!(", aliases {}", serving.aliases.join(",")));
    }
    if let Some(policy) = &serving.policy {
        text.push_str(&format!(", policy {policy}"));
    }
    text
}

/// The status view: a summary, one line per wave, one row per node.
pub fn render_status(rollout: &RolloutInfo) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "rollout {}  {}  generation {}\n",
        rollout.name, rollout.state, rollout.generation
    ));
    out.push_str(&format!(
        "  {} {} ({}){}  selector {}\n",
        rollout.model,
        rollout.version,
        rollout.quantization,
        rollout
            .prompt
            .as_deref()
            .map_or_else(String::new, |p| format!(" prompt {p}"))
            + &rollout
                .policy
                .as_deref()
                .map_or_else(String::new, |p| format!(" policy {p}")),
        label_list(&rollout.selector)
    ));
    out.push_str(&format!(
        "  waves {}  bake {}  max unavailable {}  auto rollback {}\n",
        rollout.waves,
        human_duration(Duration::from_millis(rollout.bake_ms)),
        rollout.max_unavailable,
        rollout.auto_rollback
    ));
    if let Some(reason) = &rollout.reason {
        out.push_str(&format!("  reason: {reason}\n"));
    }
    if let Some(at) = rollout.bake_started_at
        && rollout.state == "baking"
    {
        let baked = (time::OffsetDateTime::now_utc() - at)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let left = Duration::from_millis(rollout.bake_ms).saturating_sub(baked);
        out.push_str(&format!(
            "  baking since {}, {} left\n",
            human_time(at),
            human_duration(left)
        ));
    }
    // After a rollback or an abort no wave is current or next any more.
    let ended = matches!(
        rollout.state.as_str(),
        "rolled_back" | "rolling_back" | "aborted"
    );
    for wave in 1..=rollout.wave_count {
        let nodes: Vec<&RolloutNodeInfo> =
            rollout.nodes.iter().filter(|n| n.wave == wave).collect();
        let ready = nodes.iter().filter(|n| n.state == "ready").count();
        let marker = if ended {
            if wave <= rollout.current_wave {
                rollout.state.as_str()
            } else {
                "not started"
            }
        } else if wave < rollout.current_wave
            || (wave == rollout.current_wave && rollout.state == "succeeded")
        {
            "done"
        } else if wave == rollout.current_wave {
            "current"
        } else {
            "next"
        };
        out.push_str(&format!(
            "wave {wave}/{}  {marker}  {ready}/{} ready\n",
            rollout.wave_count,
            nodes.len()
        ));
    }
    let mut table = Table::new(&[
        "WAVE", "NODE", "STATE", "QUANT", "AGENT", "PROGRESS", "NOTE",
    ]);
    for node in &rollout.nodes {
        table.row(vec![
            node.wave.to_string(),
            node.node.clone(),
            node.state.clone(),
            node.quantization.clone().unwrap_or_else(|| "-".into()),
            // The agent's phase, and whether its stream is up: a `ready`
            // model on a node that stopped heartbeating is "ready, offline".
            match (&node.phase, node.ready) {
                (Some(phase), true) => phase.clone(),
                (Some(phase), false) => format!("{phase}, offline"),
                (None, _) => "-".into(),
            },
            progress_bar(node),
            node.reason.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// `300ms`, `45s`, `5m`, `5m 30s`, `1h 2m`: a duration as people write it.
pub fn human_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (hours, minutes, seconds) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// `[#########-----------] 45% 12 MiB/27 MiB` while a node downloads.
fn progress_bar(node: &RolloutNodeInfo) -> String {
    if node.bytes_total == 0 {
        return String::new();
    }
    let done = node.bytes_done.min(node.bytes_total);
    let filled = usize::try_from(done.saturating_mul(BAR_WIDTH as u64) / node.bytes_total)
        .unwrap_or(BAR_WIDTH);
    format!(
        "[{}{}] {}% {}/{}",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        done.saturating_mul(100) / node.bytes_total,
        human_bytes(done),
        human_bytes(node.bytes_total)
    )
}

pub async fn events(args: EventsArgs, client: &ApiClient, printer: &Printer) -> anyhow::Result<()> {
    let mut all: Vec<EventInfo> = Vec::new();
    let mut after = None;
    loop {
        let page = client.events(args.rollout.as_deref(), after).await?;
        let last = page.items.last().map(|e| e.id);
        let full = page.items.len() >= 1000;
        all.extend(page.items.into_iter().filter(|event| args.keeps(event)));
        match last {
            Some(id) if full => after = Some(id),
            _ => break,
        }
    }
    if printer.is_json() {
        return printer.json(&flotilla_api_types::EventList { items: all });
    }
    let mut table = Table::new(&["TIME", "ACTOR", "ROLLOUT", "NODE", "ACTION", "MESSAGE"]);
    for event in all {
        table.row(vec![
            human_time(event.at),
            event.actor,
            event.rollout.unwrap_or_else(|| "-".into()),
            event.node.unwrap_or_else(|| "-".into()),
            event.action,
            event.message,
        ]);
    }
    printer.table(&table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in [
            "",
            "s",
            "-1s",
            "99999999999999999999h",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bare_version_is_exact_and_ranges_stay_ranges() {
        assert_eq!(exact_or_range("1.1.0").as_deref(), Ok("=1.1.0"));
        assert_eq!(exact_or_range("^1.1").as_deref(), Ok("^1.1"));
        assert_eq!(exact_or_range(">=1.0, <2").as_deref(), Ok(">=1.0, <2"));
        assert!(exact_or_range("one").is_err());
        let exact = semver::VersionReq::parse("=1.1.0").expect("valid");
        assert!(!exact.matches(&semver::Version::new(1, 2, 0)));
    }

    #[test]
    fn durations_print_as_durations() {
        assert_eq!(human_duration(Duration::from_millis(300_000)), "5m");
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h 2m");
        assert_eq!(human_duration(Duration::from_secs(30)), "30s");
    }

    #[test]
    fn progress_bars_fill_with_the_download() {
        let mut node = RolloutNodeInfo {
            node: "a".into(),
            wave: 1,
            state: "updating".into(),
            version: None,
            quantization: None,
            digest: None,
            reason: None,
            phase: Some("downloading".into()),
            bytes_done: 50,
            bytes_total: 100,
            ready: true,
            current: None,
            next: None,
        };
        assert!(progress_bar(&node).starts_with("[##########----------] 50%"));
        node.bytes_total = 0;
        assert_eq!(progress_bar(&node), "");
    }
}
