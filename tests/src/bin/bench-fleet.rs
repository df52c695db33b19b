//! Control-plane benchmark: thousands of simulated agents (the agent's own
//! sync client and reconciler, over real gRPC streams) against a real
//! `flotilla-controller` process on Postgres, on this machine.
//!
//! Measures, and prints as one JSON object:
//! - fan-out: from a committed assignment that changes every node's desired
//!   state to its receipt by every agent (from the request's start, and
//!   from the moment its 201 came back, which is after the commit);
//! - heartbeat ack latency in steady state (every agent at the interval);
//! - controller CPU (cores, from /proc over the steady window) and RSS;
//! - resync: from restarting a SIGKILLed controller on the same ports to
//!   every agent holding its desired state again;
//! - with `--advertise`, routing directory traffic: the agents advertise
//!   inference URLs, so every node serving the model is in the directory
//!   and each agent is sent its own view of it; counted while the
//!   assignments fan out and settle, and over the steady window.
//!
//! A bootstrap token enrols at most `MAX_BOOTSTRAP_USES` (10,000) nodes, so
//! a larger fleet is simulated in slices of that many agents, each with its
//! own token; the ack latency figures are then the worst slice's.
//!
//! Run with `cargo run --release -p flotilla-tests --bin bench-fleet --
//! --agents 10000` after `cargo build --release --bins` (it starts the
//! release controller binary).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_agent::simulate::{SimulatedNode, Simulation, SimulationConfig};
use flotilla_agent::sync::{DirectoryTraffic, LatencySummary};
use flotilla_controller::fleet::MAX_BOOTSTRAP_USES;
use flotilla_controller::testing::TestDatabase;
use flotilla_gguf::GgufBuilder;
use flotilla_tests::ControllerProcess;
use serde_json::json;

struct Args {
    agents: usize,
    heartbeat_ms: u64,
    steady_seconds: u64,
    advertise: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        agents: 10_000,
        heartbeat_ms: 1000,
        steady_seconds: 30,
        advertise: false,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "bench-fleet: control-plane benchmark (simulated agents against a real controller)\n\n\
                 usage: bench-fleet [--agents N] [--heartbeat-ms MS] [--steady-seconds S] [--advertise]\n\n\
                 --agents N           simulated agents [default: 10000]\n\
                 --heartbeat-ms MS    heartbeat interval [default: 1000]\n\
                 --steady-seconds S   steady-state window [default: 30]\n\
                 --advertise          agents advertise inference URLs (routing directory traffic)\n\n\
                 Needs FLOTILLA_TEST_DATABASE_URL (Postgres) and the release controller binary."
            );
            std::process::exit(0);
        }
        if flag == "--advertise" {
            args.advertise = true;
            continue;
        }
        let value = iter
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => args.agents = value.parse()?,
            "--heartbeat-ms" => args.heartbeat_ms = value.parse()?,
            "--steady-seconds" => args.steady_seconds = value.parse()?,
            other => anyhow::bail!(
                "unknown flag {other}; use --agents N --heartbeat-ms MS --steady-seconds S [--advertise]"
            ),
        }
    }
    Ok(args)
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    // USER_HZ is 100 on Linux.
    Ok((utime + stime) / 100.0)
}

fn quantiles(mut values: Vec<Duration>) -> serde_json::Value {
    values.sort_unstable();
    let at = |q: f64| {
        values
            .get(((values.len().saturating_sub(1)) as f64 * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    json!({"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0), "count": values.len()})
}

async fn publish_model(http: &reqwest::Client, url: &str, admin: &str) -> anyhow::Result<()> {
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.bearer_auth(admin).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        anyhow::Ok(())
    };
    send(
        http.post(format!("{url}/api/v1/models"))
            .json(&json!({"name": "bench"})),
    )
    .await?;
    for (version, seed) in [("1.0.0", 3u8), ("1.0.1", 5u8)] {
        send(
            http.post(format!("{url}/api/v1/models/bench/versions"))
                .json(&json!({"version": version})),
        )
        .await?;
        let file = GgufBuilder::tiny_llama(3, seed);
        send(
            http.post(format!(
                "{url}/api/v1/models/bench/versions/{version}/artifacts"
            ))
            .body(file),
        )
        .await?;
        send(
            http.patch(format!("{url}/api/v1/models/bench/versions/{version}"))
                .json(&json!({"state": "published"})),
        )
        .await?;
    }
    Ok(())
}

/// Assigns `version` to every simulated node; returns the generation, the
/// request's start and the moment its answer (after the commit) came back.
async fn assign(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    version: &str,
) -> anyhow::Result<(u64, Instant, Instant)> {
    let started = Instant::now();
    let response = http
        .post(format!("{url}/api/v1/assignments"))
        .bearer_auth(admin)
        .json(&json!({"selector": {"bench": "yes"}, "model": "bench", "version": version}))
        .send()
        .await?;
    let answered = Instant::now();
    anyhow::ensure!(
        response.status().is_success(),
        "assign: {}",
        response.status()
    );
    let change: serde_json::Value = response.json().await?;
    let generation = change["assignment"]["generation"]
        .as_u64()
        .context("no generation in the answer")?;
    Ok((generation, started, answered))
}

fn directory_json(traffic: DirectoryTraffic, agents: usize) -> serde_json::Value {
    let per_message = |total: u64| total as f64 / traffic.messages.max(1) as f64;
    json!({
        "messages": traffic.messages,
        "messages_per_agent": traffic.messages as f64 / agents.max(1) as f64,
        "entries_per_message": per_message(traffic.entries),
        "bytes_per_message": per_message(traffic.encoded_bytes),
        "total_bytes": traffic.encoded_bytes,
    })
}

/// The simulated fleet: one [`Simulation`] per bootstrap token, each of at
/// most `MAX_BOOTSTRAP_USES` agents, named `sim-<i>`, `sim2-<i>`, `sim3-<i>`…
struct Simulations(Vec<Simulation>);

impl Simulations {
    /// Mints a token per slice and enrols the slices one after another.
    async fn start(
        http: &reqwest::Client,
        controller: &ControllerProcess,
        admin: &str,
        args: &Args,
    ) -> anyhow::Result<Self> {
        let mut slices = Vec::new();
        let mut left = args.agents;
        while left > 0 {
            let agents = left.min(MAX_BOOTSTRAP_USES as usize);
            left -= agents;
            let response = http
                .post(format!("{}/api/v1/nodes/tokens", controller.rest_url))
                .bearer_auth(admin)
                .json(&json!({"ttl_seconds": 3600, "uses": agents}))
                .send()
                .await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            let token = body["token"]
                .as_str()
                .with_context(|| {
                    format!(
                        "no bootstrap token for slice {}: {status} {body}",
                        slices.len() + 1
                    )
                })?
                .to_owned();
            let mut config =
                SimulationConfig::new(format!("http://{}", controller.grpc_addr), token, agents);
            if !slices.is_empty() {
                config.name_prefix = format!("sim{}", slices.len() + 1);
            }
            config.labels = HashMap::from([("bench".to_owned(), "yes".to_owned())]);
            config.advertise = args.advertise;
            slices.push(Simulation::start(config).await?);
        }
        Ok(Self(slices))
    }

    fn nodes(&self) -> impl Iterator<Item = &SimulatedNode> {
        self.0.iter().flat_map(Simulation::nodes)
    }

    async fn wait_for_generation(
        &self,
        generation: u64,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        for slice in &self.0 {
            slice.wait_for_generation(generation, deadline).await?;
        }
        Ok(())
    }

    fn connected_streams(&self) -> u64 {
        self.0.iter().map(Simulation::connected_streams).sum()
    }

    fn hellos(&self) -> u64 {
        self.0.iter().map(Simulation::hellos).sum()
    }

    fn directories_received(&self) -> DirectoryTraffic {
        let mut sum = DirectoryTraffic::default();
        for slice in &self.0 {
            let traffic = slice.telemetry().directories_received();
            sum.messages += traffic.messages;
            sum.entries += traffic.entries;
            sum.encoded_bytes += traffic.encoded_bytes;
        }
        sum
    }

    /// Ack latencies since the last call: the count summed, the quantiles
    /// the worst slice's (quantiles of separate samples do not add up).
    fn take_ack_latencies(&self) -> LatencySummary {
        let mut worst = LatencySummary::default();
        for summary in self.0.iter().map(Simulation::take_ack_latencies) {
            worst.count += summary.count;
            worst.p50 = worst.p50.max(summary.p50);
            worst.p99 = worst.p99.max(summary.p99);
            worst.max = worst.max.max(summary.max);
        }
        worst
    }

    async fn shutdown(self) {
        for slice in self.0 {
            slice.shutdown().await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let database = TestDatabase::postgres().await?;
    let data = tempfile::tempdir()?;
    let heartbeat = args.heartbeat_ms.to_string();
    let controller_args = [
        "--database-url",
        database.url.as_str(),
        "--heartbeat-interval-ms",
        heartbeat.as_str(),
    ];
    let mut controller = ControllerProcess::start(data.path(), &controller_args).await?;
    let admin = controller.admin_token()?;
    let http = reqwest::Client::new();
    publish_model(&http, &controller.rest_url, &admin).await?;

    eprintln!("enrolling {} simulated agents…", args.agents);
    let enrol_started = Instant::now();
    let simulation = Simulations::start(&http, &controller, &admin, &args).await?;
    let enrol_seconds = enrol_started.elapsed().as_secs_f64();
    let deadline = || tokio::time::Instant::now() + Duration::from_secs(120);
    simulation.wait_for_generation(0, deadline()).await?;
    let connect_seconds = enrol_started.elapsed().as_secs_f64();
    eprintln!(
        "all connected after {connect_seconds:.1}s; {} streams",
        simulation.connected_streams()
    );

    // Fan-out of one assignment that changes every node, three times.
    let directories_before_fanout = simulation.directories_received();
    let mut fanout_from_request = Vec::new();
    let mut fanout_from_commit = Vec::new();
    let mut fanout_all = Vec::new();
    for (round, version) in ["1.0.0", "1.0.1", "1.0.0"].into_iter().enumerate() {
        let (generation, started, answered) =
            assign(&http, &controller.rest_url, &admin, version).await?;
        simulation
            .wait_for_generation(generation, deadline())
            .await?;
        for node in simulation.nodes() {
            if let Some(received) = node.latest_desired() {
                let at = received.at.into_std();
                fanout_from_request.push(at.saturating_duration_since(started));
                fanout_from_commit.push(at.saturating_duration_since(answered));
            }
        }
        let last = simulation
            .nodes()
            .filter_map(|node| node.latest_desired())
            .map(|received| received.at.into_std())
            .max()
            .unwrap_or(answered);
        fanout_all.push(last.saturating_duration_since(started).as_secs_f64());
        eprintln!(
            "round {round}: generation {generation} reached all {} agents {:.3}s after the request",
            args.agents,
            last.saturating_duration_since(started).as_secs_f64()
        );
    }

    // Directory views follow nodes becoming ready (and loads, at most every
    // 5 s): wait until none has arrived for 3 s before the steady window.
    let settle_started = Instant::now();
    let mut quiet_since = (Instant::now(), simulation.directories_received());
    while quiet_since.0.elapsed() < Duration::from_secs(3) {
        anyhow::ensure!(
            settle_started.elapsed() < Duration::from_secs(120),
            "directory traffic did not settle within 120s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = simulation.directories_received();
        if now != quiet_since.1 {
            quiet_since = (Instant::now(), now);
        }
    }
    let fanout_directories = quiet_since.1 - directories_before_fanout;
    let settle_seconds = quiet_since.0.duration_since(settle_started).as_secs_f64();

    // Steady state: heartbeats only.
    let steady_directories_before = simulation.directories_received();
    let pid = controller.process.id();
    let _ = simulation.take_ack_latencies();
    let cpu_before = cpu_seconds(pid)?;
    let simulator_cpu_before = cpu_seconds(std::process::id())?;
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let steady_wall = wall.elapsed().as_secs_f64();
    let cpu_cores = (cpu_seconds(pid)? - cpu_before) / steady_wall;
    // The simulator shares the machine with the controller: its cost is
    // part of the picture (the targets assume all three on 2 cores).
    let simulator_cpu_cores =
        (cpu_seconds(std::process::id())? - simulator_cpu_before) / steady_wall;
    let acks = simulation.take_ack_latencies();
    let steady_directories = simulation.directories_received() - steady_directories_before;
    let (rss_mib, peak_rss_mib) = flotilla_tests::memory_mib(pid)?;
    eprintln!(
        "steady: {} acks, p50 {:?} p99 {:?}; controller {cpu_cores:.3} cores, RSS {rss_mib:.0} MiB; simulator {simulator_cpu_cores:.3} cores",
        acks.count, acks.p50, acks.p99
    );

    // Resync after a controller crash.
    let generation = simulation
        .nodes()
        .filter_map(|node| node.latest_desired())
        .map(|received| received.generation)
        .min()
        .unwrap_or(0);
    let hellos_before = simulation.hellos();
    let restarted = Instant::now();
    controller.restart(&controller_args).await?;
    let resync_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let fresh = simulation
            .nodes()
            .filter(|node| {
                node.latest_desired().is_some_and(|received| {
                    received.generation >= generation && received.at.into_std() > restarted
                })
            })
            .count();
        if fresh == args.agents {
            break;
        }
        anyhow::ensure!(
            Instant::now() < resync_deadline,
            "only {fresh} of {} agents resynced within 120s",
            args.agents
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resync_seconds = restarted.elapsed().as_secs_f64();
    let reconnects = simulation.hellos() - hellos_before;
    eprintln!("resync: all agents after {resync_seconds:.2}s ({reconnects} reconnects)");

    let summary = json!({
        "agents": args.agents,
        "simulation_slices": simulation.0.len(),
        "heartbeat_interval_ms": args.heartbeat_ms,
        "enrol_seconds": enrol_seconds,
        "connect_seconds": connect_seconds,
        "fanout_from_request": quantiles(fanout_from_request),
        "fanout_from_commit_answer": quantiles(fanout_from_commit),
        "fanout_all_agents_seconds": fanout_all,
        "heartbeat_ack": {
            "count": acks.count,
            "p50_ms": acks.p50.as_secs_f64() * 1000.0,
            "p99_ms": acks.p99.as_secs_f64() * 1000.0,
            "max_ms": acks.max.as_secs_f64() * 1000.0,
        },
        "controller_cpu_cores": cpu_cores,
        "simulator_cpu_cores": simulator_cpu_cores,
        "controller_rss_mib": rss_mib,
        "controller_peak_rss_mib": peak_rss_mib,
        "resync_seconds": resync_seconds,
        "resync_reconnects": reconnects,
        "advertise": args.advertise,
        "directory": {
            "fanout_rounds": directory_json(fanout_directories, args.agents),
            "settled_seconds_after_last_round": settle_seconds,
            "steady": directory_json(steady_directories, args.agents),
        },
    });
    println!("{summary}");
    simulation.shutdown().await;
    Ok(())
}
