//! Rollouts end to end, on SQLite and on Postgres: a real controller
//! process, the `flotilla` CLI, and simulated agents over real gRPC.
//!
//! - A 4-wave rollout (`1,10%,50%,100%`) over 20 nodes advances wave by
//!   wave and never has more than `--max-unavailable` nodes changing.
//! - A wave whose node fails to activate halts the rollout and rolls back
//!   every touched node to the model it had.
//! - Pause, resume, promote, abort and rollback; a second rollout over busy
//!   nodes is a conflict.
//! - A controller killed mid-rollout and restarted on the same ports
//!   carries on and finishes.
//! - `auto` picks Q8_0 for a big node and Q4_1 for a small one from the
//!   same version; a node with too little memory is unschedulable (also in
//!   the dry run, which changes nothing).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use flotilla_agent::backoff::BackoffPolicy;
use flotilla_agent::simulate::{Simulation, SimulationConfig};
use flotilla_controller::testing::TestDatabase;
use flotilla_gguf::{GgmlType, GgufBuilder};
use flotilla_tests::{ControllerProcess, flotilla, wait_until};
use serde_json::Value;

const MODEL: &str = "tiny";
const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollouts_on_sqlite() -> anyhow::Result<()> {
    scenario(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollouts_on_postgres() -> anyhow::Result<()> {
    let database = TestDatabase::postgres().await?;
    scenario(&["--database-url", &database.url]).await
}

/// Three simulated nodes (`prefix-0` to `-2`, label `site=prefix`) serving
/// version 1.0.0 of a controller that also has 2.0.0; `first_node` sets
/// what the first one reports (see the gate tests).
struct GateFleet {
    controller: ControllerProcess,
    _simulation: Simulation,
    home: tempfile::TempDir,
    _dirs: [tempfile::TempDir; 2],
    nodes: Vec<String>,
    v1: String,
    v2: String,
}

impl GateFleet {
    async fn start(
        prefix: &str,
        first_node: impl FnOnce(&mut SimulationConfig, String),
    ) -> anyhow::Result<GateFleet> {
        let data = tempfile::tempdir()?;
        let home = tempfile::tempdir()?;
        let files = tempfile::tempdir()?;
        let controller =
            ControllerProcess::start(data.path(), &["--heartbeat-interval-ms", "500"]).await?;
        let cli = Cli {
            rest_url: controller.rest_url.clone(),
            admin: controller.admin_token()?,
            home: home.path(),
        };
        let grpc = format!("http://{}", controller.grpc_addr);
        let (v1, _) = push_version(&cli, files.path(), "1.0.0", 1)?;
        let (v2, _) = push_version(&cli, files.path(), "2.0.0", 2)?;
        let token = cli.text(&["node", "token", "create", "--ttl", "10m", "--uses", "3"])?;
        let site = format!("site={prefix}");
        let mut config = simulation_config(&grpc, &token, prefix, 3, &[("site", prefix)]);
        first_node(&mut config, format!("{prefix}-0"));
        let simulation = Simulation::start(config).await?;
        let nodes = names(prefix, 3);
        cli.run(&[
            "assign",
            "--selector",
            &site,
            "--model",
            MODEL,
            "--version",
            "1.0.0",
            "--quant",
            "Q4_1",
        ])?;
        cli.wait_serving(&nodes, &v1).await?;
        drop(cli);
        Ok(GateFleet {
            controller,
            _simulation: simulation,
            home,
            _dirs: [data, files],
            nodes,
            v1,
            v2,
        })
    }

    fn cli(&self) -> anyhow::Result<Cli<'_>> {
        Ok(Cli {
            rest_url: self.controller.rest_url.clone(),
            admin: self.controller.admin_token()?,
            home: self.home.path(),
        })
    }

    /// Starts the rollout of 2.0.0 to every node, the first alone in the
    /// first wave, with `gate` (the gate's flags).
    fn roll_out(&self, prefix: &str, gate: &[&str]) -> anyhow::Result<()> {
        let site = format!("site={prefix}");
        let mut args = vec![
            "rollout",
            "create",
            "canary",
            "--model",
            MODEL,
            "--version",
            "2.0.0",
            "--selector",
            &site,
            "--quant",
            "Q4_1",
            "--waves",
            "1,100%",
            "--bake",
            "30s",
            "--min-requests",
            "50",
        ];
        args.extend_from_slice(gate);
        self.cli()?.run(&args)?;
        Ok(())
    }
}

/// The error-rate gate: the canary's heartbeats say 30 of the 100
/// requests its new version answered failed, over a 10% gate, so the
/// rollout stops after the first wave and puts the canary back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_requests_trips_the_error_rate_gate() -> anyhow::Result<()> {
    let fleet = GateFleet::start("err", |config, first| {
        config.erroring_nodes = HashSet::from([first]);
    })
    .await?;
    let cli = fleet.cli()?;
    fleet.roll_out("err", &["--max-error-rate", "10", "--auto-rollback"])?;
    let rolled_back = cli.wait_state("canary", &["rolled_back"]).await?;
    let reason = rolled_back["reason"].as_str().unwrap_or_default();
    anyhow::ensure!(
        reason.contains("node err-0 failed 30 of 100 requests (30%)"),
        "{reason}"
    );
    // Only the canary was touched, and it serves 1.0.0 again.
    cli.wait_serving(&fleet.nodes, &fleet.v1).await?;
    Ok(())
}

/// The escalation-rate gate: the canary's heartbeats say 40 of the 100
/// requests its new version answered went upstream, over a 25% gate, so
/// the rollout halts after the first wave (no auto-rollback: it waits for
/// an operator), and a rollback puts the canary back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_escalating_requests_trips_the_escalation_rate_gate() -> anyhow::Result<()> {
    let fleet = GateFleet::start("esc", |config, first| {
        config.escalating_nodes = HashSet::from([first]);
    })
    .await?;
    let cli = fleet.cli()?;
    // The node view shows what the gate reads, once a heartbeat with
    // the figures is in.
    wait_until("esc-0's view to show its escalations", WAIT, || {
        let shown = cli.text(&["node", "show", "esc-0"]).unwrap_or_default();
        async move { shown.contains("40 escalated") }
    })
    .await?;
    fleet.roll_out("esc", &["--max-escalation-rate", "25"])?;
    let halted = cli.wait_state("canary", &["halted"]).await?;
    let reason = halted["reason"].as_str().unwrap_or_default();
    anyhow::ensure!(
        reason.contains("node esc-0 escalated 40 of 100 requests (40%)"),
        "{reason}"
    );
    // Halted, not rolled back: the canary still serves 2.0.0, the rest
    // were never touched.
    let (canary, rest) = fleet.nodes.split_at(1);
    cli.wait_serving(canary, &fleet.v2).await?;
    cli.wait_serving(rest, &fleet.v1).await?;
    cli.run(&["rollout", "rollback", "canary"])?;
    cli.wait_state("canary", &["rolled_back"]).await?;
    cli.wait_serving(&fleet.nodes, &fleet.v1).await?;
    Ok(())
}

struct Cli<'a> {
    rest_url: String,
    admin: String,
    home: &'a Path,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let output = flotilla(&self.rest_url, &self.admin, self.home, &args)?;
        anyhow::ensure!(
            output.status.success(),
            "flotilla {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = flotilla(&self.rest_url, &self.admin, self.home, args)?;
        anyhow::ensure!(
            !output.status.success(),
            "flotilla {} succeeded",
            args.join(" ")
        );
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    }

    fn text(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = flotilla(&self.rest_url, &self.admin, self.home, args)?;
        anyhow::ensure!(
            output.status.success(),
            "flotilla {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    fn status(&self, name: &str) -> anyhow::Result<Value> {
        self.run(&["rollout", "status", name])
    }

    fn events(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        let events = self.run(&["events", "--rollout", name])?;
        Ok(events["items"].as_array().cloned().unwrap_or_default())
    }

    fn nodes(&self) -> anyhow::Result<BTreeMap<String, Value>> {
        let listed = self.run(&["node", "ls"])?;
        Ok(listed["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|node| (node["name"].as_str().unwrap_or_default().to_owned(), node))
            .collect())
    }

    async fn wait_state(&self, name: &str, states: &[&str]) -> anyhow::Result<Value> {
        let mut last = Value::Null;
        let result = wait_until(&format!("rollout {name} to be {states:?}"), WAIT, || {
            let status = self.status(name).unwrap_or_default();
            let done = states.iter().any(|s| status["state"] == *s);
            last = status;
            async move { done }
        })
        .await;
        if let Err(error) = result {
            anyhow::bail!(
                "{error}\nstatus: {last:#}\nevents: {:#?}",
                self.events(name).unwrap_or_default()
            );
        }
        Ok(last)
    }

    /// Waits until every named node serves `digest` (desired and observed).
    async fn wait_serving(&self, names: &[String], digest: &str) -> anyhow::Result<()> {
        let mut last = BTreeMap::new();
        let result = wait_until(
            &format!("{} nodes to serve {digest}", names.len()),
            WAIT,
            || {
                let nodes = self.nodes().unwrap_or_default();
                let done = names.iter().all(|name| {
                    nodes.get(name).is_some_and(|node| {
                        node["assignment"]["digest"] == digest
                            && node["observed"]["serving_digest"] == digest
                    })
                });
                last = nodes;
                async move { done }
            },
        )
        .await;
        if let Err(error) = result {
            let summary: Vec<String> = names
                .iter()
                .map(|name| {
                    let node = last.get(name).cloned().unwrap_or_default();
                    format!(
                        "{name}: desired {} observed {}",
                        node["assignment"]["digest"], node["observed"]
                    )
                })
                .collect();
            anyhow::bail!("{error}\n{}", summary.join("\n"));
        }
        Ok(())
    }
}

/// A tiny servable llama GGUF whose matrices are `kind` (Q4_1 or Q8_0);
/// `seed` varies the bytes.
fn tiny_gguf(kind: GgmlType, seed: u8) -> Vec<u8> {
    let file_type = match kind {
        GgmlType::Q8_0 => 7,
        _ => 3,
    };
    GgufBuilder::tiny_llama(file_type, seed)
}

/// The controller's memory estimate for [`tiny_gguf`] of `kind` (the file's
/// own context, 2048 tokens, is under the serving cap).
fn memory_estimate(kind: GgmlType) -> anyhow::Result<u64> {
    flotilla_gguf::read_header(&tiny_gguf(kind, 0)[..])?
        .memory_estimate(2048)
        .ok_or_else(|| anyhow::anyhow!("the fixture declares its attention shape"))
}

/// Pushes a Q4_1 and a Q8_0 artifact of `version`; returns their digests.
fn push_version(
    cli: &Cli<'_>,
    dir: &Path,
    version: &str,
    seed: u8,
) -> anyhow::Result<(String, String)> {
    let q4 = dir.join(format!("{version}-q4.gguf"));
    let q8 = dir.join(format!("{version}-q8.gguf"));
    std::fs::write(&q4, tiny_gguf(GgmlType::Q4_1, seed))?;
    std::fs::write(&q8, tiny_gguf(GgmlType::Q8_0, seed))?;
    let q4 = cli.run(&[
        "model",
        "push",
        &q4.to_string_lossy(),
        "--name",
        MODEL,
        "--version",
        version,
        "--draft",
    ])?;
    let q8 = cli.run(&[
        "model",
        "push",
        &q8.to_string_lossy(),
        "--name",
        MODEL,
        "--version",
        version,
    ])?;
    let digest = |v: &Value| v["digest"].as_str().unwrap_or_default().to_owned();
    Ok((digest(&q4), digest(&q8)))
}

/// `count` simulated agents named `prefix-i` carrying `labels`.
fn simulation_config(
    grpc: &str,
    token: &str,
    prefix: &str,
    count: usize,
    labels: &[(&str, &str)],
) -> SimulationConfig {
    let mut config = SimulationConfig::new(grpc, token, count);
    config.name_prefix = prefix.to_owned();
    // Back quickly after the controller restart.
    config.backoff = BackoffPolicy {
        first_ceiling: Duration::from_millis(200),
        cap: Duration::from_secs(1),
        floor_fraction: 0.4,
    };
    config.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<HashMap<_, _>>();
    config
}

async fn simulate(
    grpc: &str,
    token: &str,
    prefix: &str,
    count: usize,
    labels: &[(&str, &str)],
    failing: &[&str],
    memory: &[(&str, u64)],
) -> anyhow::Result<Simulation> {
    let mut config = simulation_config(grpc, token, prefix, count, labels);
    config.failing_nodes = failing
        .iter()
        .map(|n| (*n).to_owned())
        .collect::<HashSet<_>>();
    config.node_memory_bytes = memory
        .iter()
        .map(|(n, m)| ((*n).to_owned(), *m))
        .collect::<HashMap<_, _>>();
    Ok(Simulation::start(config).await?)
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

/// Checks from the event log that waves started in order and that no more
/// than `max_unavailable` nodes were changing (assigned, not yet ready) at
/// any point.
fn check_waves(events: &[Value], waves: u32, max_unavailable: usize) -> anyhow::Result<()> {
    let started: Vec<String> = events
        .iter()
        .filter(|e| e["action"] == "wave.started")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<String> = (1..=waves)
        .map(|w| format!("wave {w} of {waves} started"))
        .collect();
    anyhow::ensure!(started == expected, "waves started: {started:?}");
    let mut changing: HashSet<String> = HashSet::new();
    let mut last_wave = 0;
    for event in events {
        let node = event["node"].as_str().unwrap_or_default().to_owned();
        match event["action"].as_str().unwrap_or_default() {
            "node.updating" => {
                let message = event["message"].as_str().unwrap_or_default();
                let wave: u32 = message
                    .rsplit("wave ")
                    .next()
                    .and_then(|w| w.trim_end_matches(')').parse().ok())
                    .unwrap_or(0);
                anyhow::ensure!(wave >= last_wave, "wave went backwards: {event}");
                last_wave = wave;
                changing.insert(node);
                anyhow::ensure!(
                    changing.len() <= max_unavailable,
                    "{} nodes changing at once: {changing:?}",
                    changing.len()
                );
            }
            "node.ready" | "node.failed" => {
                changing.remove(&node);
            }
            _ => {}
        }
    }
    Ok(())
}

async fn scenario(store_args: &[&str]) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let mut controller_args = store_args.to_vec();
    controller_args.extend(["--heartbeat-interval-ms", "1000"]);
    let mut controller = ControllerProcess::start(data.path(), &controller_args).await?;
    let cli = Cli {
        rest_url: controller.rest_url.clone(),
        admin: controller.admin_token()?,
        home: home.path(),
    };
    let grpc = format!("http://{}", controller.grpc_addr);
    let (v1_q4, _v1_q8) = push_version(&cli, files.path(), "1.0.0", 1)?;
    let (v2_q4, v2_q8) = push_version(&cli, files.path(), "2.0.0", 2)?;
    let token = cli.text(&["node", "token", "create", "--ttl", "10m", "--uses", "40"])?;

    let lab = simulate(&grpc, &token, "lab", 20, &[("site", "lab")], &[], &[]).await?;
    let bad = simulate(&grpc, &token, "bad", 4, &[("site", "bad")], &["bad-2"], &[]).await?;
    let q4_estimate = memory_estimate(GgmlType::Q4_1)?;
    let between_q4_and_q8 = (q4_estimate + memory_estimate(GgmlType::Q8_0)?) / 2 * 40 / 27;
    let hw = simulate(
        &grpc,
        &token,
        "hw",
        3,
        &[("role", "hw")],
        &[],
        // hw-0 keeps 16 GiB; hw-1 can hold Q4_1 but not Q8_0; hw-2 holds
        // neither. A simulated node reports a quarter of its memory used,
        // and planning keeps a 10% margin of the rest: its budget is 67.5%
        // of its memory.
        &[("hw-1", between_q4_and_q8), ("hw-2", q4_estimate / 2)],
    )
    .await?;
    let lab_nodes = names("lab", 20);
    wait_until("every simulated agent to connect", WAIT, || {
        let nodes = cli.nodes().unwrap_or_default();
        let ready = nodes.values().filter(|n| n["ready"] == true).count();
        async move { ready == 27 }
    })
    .await?;

    // Before: every lab and bad node serves 1.0.0 Q4_1 by selector.
    for site in ["site=lab", "site=bad"] {
        cli.run(&[
            "assign",
            "--selector",
            site,
            "--model",
            MODEL,
            "--version",
            "1.0.0",
            "--quant",
            "Q4_1",
        ])?;
    }
    cli.wait_serving(&lab_nodes, &v1_q4).await?;
    // bad-2 fails every activation, this one too.
    let healthy: Vec<String> = ["bad-0", "bad-1", "bad-3"]
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    cli.wait_serving(&healthy, &v1_q4).await?;

    // ---- 4 waves over 20 nodes, at most 3 changing at once ----
    let created = cli.run(&[
        "rollout",
        "create",
        "r1",
        "--model",
        MODEL,
        "--version",
        "^2",
        "--selector",
        "site=lab",
        "--quant",
        "Q4_1",
        "--waves",
        "1,10%,50%,100%",
        "--bake",
        "200ms",
        "--max-unavailable",
        "3",
    ])?;
    anyhow::ensure!(created["wave_count"] == 4, "created: {created:#}");
    anyhow::ensure!(created["nodes"].as_array().map(Vec::len) == Some(20));
    cli.wait_state("r1", &["succeeded"]).await?;
    cli.wait_serving(&lab_nodes, &v2_q4).await?;
    check_waves(&cli.events("r1")?, 4, 3)?;
    let status = cli.status("r1")?;
    let per_wave: Vec<usize> = (1..=4)
        .map(|w| {
            status["nodes"]
                .as_array()
                .map_or(0, |nodes| nodes.iter().filter(|n| n["wave"] == w).count())
        })
        .collect();
    anyhow::ensure!(per_wave == [1, 1, 8, 10], "wave sizes {per_wave:?}");
    let text = cli.text(&["rollout", "status", "r1"])?;
    anyhow::ensure!(
        text.contains("wave 4/4") && text.contains("succeeded"),
        "{text}"
    );

    // ---- a failing activation halts and rolls back automatically ----
    cli.run(&[
        "rollout",
        "create",
        "bad-r",
        "--model",
        MODEL,
        "--version",
        "2.0.0",
        "--selector",
        "site=bad",
        "--quant",
        "Q4_1",
        "--waves",
        "1,100%",
        "--bake",
        "200ms",
        "--max-unavailable",
        "3",
        "--auto-rollback",
    ])?;
    let rolled_back = cli.wait_state("bad-r", &["rolled_back"]).await?;
    let reason = rolled_back["reason"].as_str().unwrap_or_default();
    anyhow::ensure!(
        reason.contains("failed activations") && reason.contains("bad-2"),
        "{reason}"
    );
    // Every touched node is back on 1.0.0; bad-2 reports its failure of 2.0.0
    // but is told 1.0.0 again.
    cli.wait_serving(&healthy, &v1_q4).await?;
    let nodes = cli.nodes()?;
    anyhow::ensure!(nodes["bad-2"]["assignment"]["digest"] == v1_q4.as_str());
    let touched: Vec<&Value> = rolled_back["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|n| n["state"] == "rolled_back").collect())
        .unwrap_or_default();
    anyhow::ensure!(touched.len() >= 2, "touched nodes: {rolled_back:#}");

    // ---- pause, conflict, resume, promote, abort, rollback ----
    cli.run(&[
        "rollout",
        "create",
        "ops",
        "--model",
        MODEL,
        "--version",
        "1.0.0",
        "--selector",
        "site=lab",
        "--quant",
        "Q4_1",
        "--waves",
        "1,50%,100%",
        "--bake",
        "1h",
        "--max-unavailable",
        "20",
    ])?;
    let paused = cli.run(&["rollout", "pause", "ops"])?;
    anyhow::ensure!(paused["state"] == "paused", "{paused:#}");
    let under_way = cli.fails(&["rollout", "delete", "ops"])?;
    anyhow::ensure!(
        under_way.contains("rollout ops is paused; only a rollout that has ended"),
        "{under_way}"
    );
    let conflict = cli.fails(&[
        "rollout",
        "create",
        "other",
        "--model",
        MODEL,
        "--version",
        "1.0.0",
        "--selector",
        "site=lab",
    ])?;
    anyhow::ensure!(
        conflict.contains("already in active rollout ops"),
        "{conflict}"
    );
    let bad_command = cli.fails(&["rollout", "promote", "ops"])?;
    anyhow::ensure!(
        bad_command.contains("resume it before promoting"),
        "{bad_command}"
    );
    cli.run(&["rollout", "resume", "ops"])?;
    let baking = cli.wait_state("ops", &["baking"]).await?;
    anyhow::ensure!(baking["current_wave"] == 1, "{baking:#}");
    cli.run(&["rollout", "promote", "ops"])?;
    wait_until("ops to reach wave 2", WAIT, || {
        let status = cli.status("ops").unwrap_or_default();
        async move { status["current_wave"] == 2 && status["state"] == "baking" }
    })
    .await?;
    let aborted = cli.run(&["rollout", "abort", "ops"])?;
    anyhow::ensure!(aborted["state"] == "aborted", "{aborted:#}");
    // Aborted: the nodes of waves 1 and 2 keep 1.0.0.
    let changed: Vec<String> = aborted["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["state"] == "ready")
                .map(|n| n["node"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(changed.len() == 10, "ready after abort: {changed:?}");
    cli.wait_serving(&changed, &v1_q4).await?;
    let back = cli.run(&["rollout", "rollback", "ops"])?;
    anyhow::ensure!(back["state"] == "rolling_back" || back["state"] == "rolled_back");
    cli.wait_state("ops", &["rolled_back"]).await?;
    // They had r1's 2.0.0 before: restored.
    cli.wait_serving(&lab_nodes, &v2_q4).await?;
    let stale = cli.fails(&["rollout", "resume", "ops"])?;
    anyhow::ensure!(stale.contains("only rollback is possible"), "{stale}");

    // ---- a controller restart mid-rollout ----
    cli.run(&[
        "rollout",
        "create",
        "restart",
        "--model",
        MODEL,
        "--version",
        "1.0.0",
        "--selector",
        "site=lab",
        "--quant",
        "Q4_1",
        "--waves",
        "1,25%,50%,100%",
        "--bake",
        "1s",
        "--max-unavailable",
        "5",
    ])?;
    wait_until("rollout restart to reach wave 2", WAIT, || {
        let status = cli.status("restart").unwrap_or_default();
        async move { status["current_wave"].as_u64().unwrap_or(0) >= 2 }
    })
    .await?;
    let before = cli.status("restart")?;
    controller.restart(&controller_args).await?;
    let after = cli.status("restart")?;
    anyhow::ensure!(
        after["current_wave"].as_u64() >= before["current_wave"].as_u64()
            && after["generation"].as_u64() >= before["generation"].as_u64(),
        "went backwards over the restart: {before:#} → {after:#}"
    );
    cli.wait_state("restart", &["succeeded"]).await?;
    cli.wait_serving(&lab_nodes, &v1_q4).await?;
    check_waves(&cli.events("restart")?, 4, 5)?;

    // ---- hardware fit ----
    let dry = cli.run(&[
        "rollout",
        "create",
        "hw",
        "--model",
        MODEL,
        "--version",
        "2.0.0",
        "--selector",
        "role=hw",
        "--quant",
        "auto",
        "--bake",
        "200ms",
        "--dry-run",
    ])?;
    anyhow::ensure!(dry["state"] == "dry_run", "{dry:#}");
    let planned = |value: &Value, node: &str| -> (String, String) {
        let entry = value["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == node).cloned())
            .unwrap_or_default();
        (
            entry["state"].as_str().unwrap_or_default().to_owned(),
            entry["quantization"].as_str().unwrap_or("-").to_owned(),
        )
    };
    anyhow::ensure!(
        planned(&dry, "hw-0") == ("waiting".into(), "Q8_0".into()),
        "{dry:#}"
    );
    anyhow::ensure!(
        planned(&dry, "hw-1") == ("waiting".into(), "Q4_1".into()),
        "{dry:#}"
    );
    anyhow::ensure!(planned(&dry, "hw-2").0 == "unschedulable", "{dry:#}");
    let dry_text = cli.text(&[
        "rollout",
        "create",
        "hw",
        "--model",
        MODEL,
        "--version",
        "2.0.0",
        "--selector",
        "role=hw",
        "--dry-run",
    ])?;
    anyhow::ensure!(
        dry_text.contains("unschedulable: no artifact"),
        "{dry_text}"
    );
    anyhow::ensure!(
        cli.fails(&["rollout", "status", "hw"])?
            .contains("not found")
    );
    cli.run(&[
        "rollout",
        "create",
        "hw",
        "--model",
        MODEL,
        "--version",
        "2.0.0",
        "--selector",
        "role=hw",
        "--bake",
        "200ms",
        "--max-unavailable",
        "2",
    ])?;
    let done = cli.wait_state("hw", &["succeeded"]).await?;
    anyhow::ensure!(planned(&done, "hw-2").0 == "unschedulable", "{done:#}");
    cli.wait_serving(&["hw-0".to_owned()], &v2_q8).await?;
    cli.wait_serving(&["hw-1".to_owned()], &v2_q4).await?;
    let nodes = cli.nodes()?;
    anyhow::ensure!(nodes["hw-2"]["assignment"].is_null(), "{:#}", nodes["hw-2"]);

    // ---- what finished rollouts leave behind ----
    // A selector assignment does not reach the nodes the rollout pinned,
    // and the CLI says which.
    let assigned = cli.text(&[
        "assign",
        "--selector",
        "role=hw",
        "--model",
        MODEL,
        "--version",
        "1.0.0",
    ])?;
    anyhow::ensure!(
        assigned.contains("2 matching node(s) keep a node-level assignment")
            && assigned.contains("hw-0 (node=hw-0 (rollout hw))")
            && assigned.contains("hw-1 (node=hw-1 (rollout hw))"),
        "{assigned}"
    );
    // Deleting the record keeps what the nodes serve: its assignments stay,
    // owned by no rollout; its events stay; its name is free again.
    let deleted = cli.run(&["rollout", "delete", "hw"])?;
    anyhow::ensure!(
        deleted["nodes"] == serde_json::json!(["hw-0", "hw-1"]) && deleted["released"] == false,
        "{deleted:#}"
    );
    let nodes = cli.nodes()?;
    anyhow::ensure!(
        nodes["hw-0"]["assignment"]["target"] == "node=hw-0"
            && nodes["hw-0"]["assignment"]["digest"] == v2_q8.as_str(),
        "{:#}",
        nodes["hw-0"]
    );
    anyhow::ensure!(
        cli.events("hw")?
            .iter()
            .any(|event| event["action"] == "rollout.delete"),
        "no rollout.delete event"
    );
    anyhow::ensure!(
        cli.fails(&["rollout", "status", "hw"])?
            .contains("not found")
    );
    let reused = cli.run(&[
        "rollout",
        "create",
        "hw",
        "--model",
        MODEL,
        "--version",
        "2.0.0",
        "--selector",
        "role=hw",
        "--dry-run",
    ])?;
    anyhow::ensure!(reused["state"] == "dry_run", "{reused:#}");
    // Releasing the pins hands the nodes back to their selector (site=lab
    // serves 1.0.0 Q4_1, which the restart rollout also gave them).
    let released = cli.run(&["rollout", "delete", "restart", "--release-pins"])?;
    anyhow::ensure!(
        released["nodes"].as_array().map(Vec::len) == Some(20) && released["released"] == true,
        "{released:#}"
    );
    let nodes = cli.nodes()?;
    anyhow::ensure!(
        lab_nodes
            .iter()
            .all(|name| nodes[name]["assignment"]["target"] == "selector site=lab"),
        "{:#}",
        nodes["lab-0"]
    );
    cli.wait_serving(&lab_nodes, &v1_q4).await?;

    // Bad input is a clear 4xx.
    let bad_waves = cli.fails(&[
        "rollout",
        "create",
        "x",
        "--model",
        MODEL,
        "--version",
        "1.0.0",
        "--selector",
        "site=lab",
        "--waves",
        "50%,10%",
    ])?;
    anyhow::ensure!(bad_waves.contains("must not shrink"), "{bad_waves}");
    let unknown = cli.fails(&[
        "rollout",
        "create",
        "x",
        "--model",
        "nope",
        "--version",
        "1.0.0",
        "--selector",
        "site=lab",
    ])?;
    anyhow::ensure!(unknown.contains("model nope not found"), "{unknown}");

    lab.shutdown().await;
    bad.shutdown().await;
    hw.shutdown().await;
    Ok(())
}

/// The real SmolLM2 GGUF rolled out from the CLI across three real agent
/// processes (SQLite): every agent ends up serving it, and the status view
/// shows each wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smollm2_rollout_across_three_real_agents() -> anyhow::Result<()> {
    let Some(model) = flotilla_tests::test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let controller =
        ControllerProcess::start(data.path(), &["--heartbeat-interval-ms", "1000"]).await?;
    let cli = Cli {
        rest_url: controller.rest_url.clone(),
        admin: controller.admin_token()?,
        home: home.path(),
    };
    let pushed = cli.run(&[
        "model",
        "push",
        &model.to_string_lossy(),
        "--name",
        "smollm2-135m-instruct",
        "--version",
        "1.0.0",
    ])?;
    let digest = pushed["digest"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(digest.len() == 64, "push answered {pushed}");
    let token = cli.text(&["node", "token", "create", "--ttl", "10m", "--uses", "3"])?;
    let grpc = format!("http://{}", controller.grpc_addr);
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let names: Vec<String> = names("smol", 3);
    let mut agents = Vec::new();
    for (dir, name) in dirs.iter().zip(&names) {
        agents.push(flotilla_tests::AgentProcess::start(
            dir.path(),
            &[
                "--controller",
                &grpc,
                "--bootstrap-token",
                &token,
                "--name",
                name,
                "--labels",
                "site=lab",
            ],
        )?);
    }
    wait_until("three agents to connect", WAIT, || {
        let nodes = cli.nodes().unwrap_or_default();
        let ready = nodes.values().filter(|n| n["ready"] == true).count();
        async move { ready == 3 }
    })
    .await?;
    cli.text(&[
        "rollout",
        "create",
        "smol",
        "--model",
        "smollm2-135m-instruct",
        "--version",
        "1.0.0",
        "--selector",
        "site=lab",
        "--waves",
        "1,100%",
        "--bake",
        "200ms",
        "--max-unavailable",
        "2",
    ])?;
    let result = cli.wait_state("smol", &["succeeded"]).await;
    if let Err(error) = result {
        for agent in &agents {
            eprintln!("--- {} ---\n{}", agent.data_dir.display(), agent.log());
        }
        return Err(error);
    }
    cli.wait_serving(&names, &digest).await?;
    let status = cli.text(&["rollout", "status", "smol"])?;
    anyhow::ensure!(
        status.contains("wave 1/2") && status.contains("wave 2/2") && status.contains("succeeded"),
        "{status}"
    );
    Ok(())
}
