//! The fleet with real processes, on SQLite and on Postgres: a controller,
//! the real SmolLM2 GGUF pushed with the CLI, agents enrolled with a CLI
//! bootstrap token and assigned the model with `flotilla assign`.
//!
//! - Three agents download, verify and report ready; each cache holds the
//!   uploaded bytes exactly.
//! - An agent SIGKILLed mid-download resumes from its partial file: the
//!   controller serves only the rest.
//! - A controller killed and restarted on the same ports: agents reconnect,
//!   nothing is lost, generations never go backwards, and a new assignment
//!   still reaches everyone.
//! - A blob tampered on the server is never marked ready and never lands in
//!   the agent's cache.
//!
//! (Cross-node, forged and expired credentials are refused in
//! `controller/tests/sync.rs`, against the same gRPC service.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_controller::testing::TestDatabase;
use flotilla_tests::{AgentProcess, ControllerProcess, flotilla, test_model, wait_until};
use serde_json::Value;

const MODEL: &str = "smollm2-135m-instruct";
/// Downloads of 100 MB on loopback, verification and several restarts.
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn fleet_on_sqlite() -> anyhow::Result<()> {
    fleet_scenario(&[]).await
}

#[tokio::test]
async fn fleet_on_postgres() -> anyhow::Result<()> {
    let database = TestDatabase::postgres().await?;
    fleet_scenario(&["--database-url", &database.url]).await
}

struct Cli<'a> {
    controller: &'a ControllerProcess,
    admin: String,
    home: &'a Path,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let output = flotilla(&self.controller.rest_url, &self.admin, self.home, &args)?;
        anyhow::ensure!(
            output.status.success(),
            "flotilla {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    fn text(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = flotilla(&self.controller.rest_url, &self.admin, self.home, args)?;
        anyhow::ensure!(
            output.status.success(),
            "flotilla {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    fn nodes(&self) -> anyhow::Result<Vec<Value>> {
        let listed = self.run(&["node", "ls"])?;
        Ok(listed["items"].as_array().cloned().unwrap_or_default())
    }

    fn node(&self, name: &str) -> anyhow::Result<Option<Value>> {
        Ok(self.nodes()?.into_iter().find(|node| node["name"] == name))
    }
}

fn observed_phase(node: &Value) -> &str {
    node["observed"]["phase"].as_str().unwrap_or("")
}

/// Whether `name` is ready and reports `ready` for `generation` or later.
fn serving(node: Option<&Value>, generation: u64) -> bool {
    node.is_some_and(|node| {
        node["ready"] == true
            && observed_phase(node) == "ready"
            && node["observed"]["generation"].as_u64().unwrap_or(0) >= generation
    })
}

async fn wait_serving(
    cli: &Cli<'_>,
    names: &[&str],
    generation: u64,
    agents: &[&AgentProcess],
) -> anyhow::Result<()> {
    let result = wait_until(
        &format!("{names:?} to serve generation {generation}"),
        WAIT,
        || async {
            let nodes = cli.nodes().unwrap_or_default();
            names
                .iter()
                .all(|name| serving(nodes.iter().find(|node| node["name"] == *name), generation))
        },
    )
    .await;
    if result.is_err() {
        for agent in agents {
            eprintln!(
                "--- agent log {} ---\n{}",
                agent.data_dir.display(),
                agent.log()
            );
        }
        eprintln!("--- nodes ---\n{:#?}", cli.nodes());
    }
    result
}

async fn blob_metric(controller: &ControllerProcess) -> anyhow::Result<f64> {
    let rendering = flotilla_tests::scrape(&controller.rest_url).await?;
    Ok(flotilla_tests::metric_value(&rendering, "flotilla_blob_bytes_served_total").unwrap_or(0.0))
}

/// `.part` files under a cache, with their sizes.
fn part_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "part") {
                found.push((path.clone(), entry.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    found
}

fn as_refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn same_bytes(a: &Path, b: &Path) -> anyhow::Result<bool> {
    Ok(std::fs::read(a)? == std::fs::read(b)?)
}

async fn fleet_scenario(store_args: &[&str]) -> anyhow::Result<()> {
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let model_size = std::fs::metadata(&model)?.len();
    let data = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let mut controller_args = store_args.to_vec();
    controller_args.extend(["--heartbeat-interval-ms", "500"]);
    let mut controller = ControllerProcess::start(data.path(), &controller_args).await?;
    let admin = controller.admin_token()?;
    let grpc = format!("http://{}", controller.grpc_addr);

    let model_path = model.to_string_lossy().into_owned();
    let pushed = {
        let cli = Cli {
            controller: &controller,
            admin: admin.clone(),
            home: home.path(),
        };
        cli.run(&[
            "model",
            "push",
            &model_path,
            "--name",
            MODEL,
            "--version",
            "1.0.0",
        ])?
    };
    let digest = pushed["digest"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(digest.len() == 64, "push answered {pushed}");

    let cli = Cli {
        controller: &controller,
        admin: admin.clone(),
        home: home.path(),
    };
    let token = cli.text(&["node", "token", "create", "--ttl", "10m", "--uses", "5"])?;
    let dirs: Vec<tempfile::TempDir> = (0..5)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let enrol_args = |name: &'static str, labels: &'static str| {
        vec![
            "--controller".to_owned(),
            grpc.clone(),
            "--bootstrap-token".to_owned(),
            token.clone(),
            "--name".to_owned(),
            name.to_owned(),
            "--labels".to_owned(),
            labels.to_owned(),
        ]
    };

    // Three agents, one selector assignment.
    let mut agents = Vec::new();
    for (index, name) in ["edge-1", "edge-2", "edge-3"].into_iter().enumerate() {
        agents.push(AgentProcess::start(
            dirs[index].path(),
            &as_refs(&enrol_args(name, "site=lab")),
        )?);
    }
    let assigned = cli.run(&[
        "assign",
        "--selector",
        "site=lab",
        "--model",
        MODEL,
        "--version",
        "1.0.0",
    ])?;
    let generation = assigned["assignment"]["generation"].as_u64().unwrap_or(0);
    anyhow::ensure!(generation > 0, "assign answered {assigned}");
    let agent_refs: Vec<&AgentProcess> = agents.iter().collect();
    wait_serving(
        &cli,
        &["edge-1", "edge-2", "edge-3"],
        generation,
        &agent_refs,
    )
    .await?;
    for dir in &dirs[..3] {
        let cached = dir.path().join("cache/blobs").join(&digest);
        anyhow::ensure!(
            same_bytes(&cached, &model)?,
            "{} differs from the uploaded file",
            cached.display()
        );
    }
    let edge_1 = cli.node("edge-1")?.unwrap_or_default();
    assert_eq!(edge_1["assignment"]["digest"], digest.as_str());
    assert_eq!(edge_1["observed"]["serving_digest"], digest.as_str());

    // A slow agent killed mid-download resumes from what it has.
    let slow_args = {
        let mut args = enrol_args("edge-4", "site=lab");
        args.extend(["--max-download-rate".to_owned(), "10M".to_owned()]);
        args
    };
    let mut slow = AgentProcess::start(dirs[3].path(), &as_refs(&slow_args))?;
    wait_until("edge-4 to download a fifth of the model", WAIT, || async {
        part_files(dirs[3].path())
            .iter()
            .any(|(_, size)| *size > model_size / 5)
    })
    .await?;
    slow.process.kill()?;
    let partial: u64 = part_files(dirs[3].path())
        .iter()
        .map(|(_, size)| *size)
        .max()
        .unwrap_or(0);
    anyhow::ensure!(
        partial > 0 && partial < model_size,
        "partial file of {partial} bytes"
    );
    let served_before = blob_metric(&controller).await?;
    let resumed =
        AgentProcess::start(dirs[3].path(), &["--controller", &grpc, "--name", "edge-4"])?;
    wait_serving(&cli, &["edge-4"], generation, &[&resumed]).await?;
    let served = blob_metric(&controller).await? - served_before;
    assert!(
        served <= (model_size - partial) as f64,
        "the resumed download fetched {served} bytes; only {} were missing",
        model_size - partial
    );
    assert!(same_bytes(
        &dirs[3].path().join("cache/blobs").join(&digest),
        &model
    )?);
    agents.push(resumed);

    // A controller restart: agents reconnect, generations never go back.
    let before: Vec<(String, u64)> = cli
        .nodes()?
        .iter()
        .map(|node| {
            (
                node["name"].as_str().unwrap_or("").to_owned(),
                node["desired_generation"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    controller.restart(&controller_args).await?;
    let cli = Cli {
        controller: &controller,
        admin: admin.clone(),
        home: home.path(),
    };
    let agent_refs: Vec<&AgentProcess> = agents.iter().collect();
    let names = ["edge-1", "edge-2", "edge-3", "edge-4"];
    wait_serving(&cli, &names, generation, &agent_refs).await?;
    for (name, desired) in &before {
        let node = cli.node(name)?.unwrap_or_default();
        assert_eq!(
            node["desired_generation"].as_u64(),
            Some(*desired),
            "{name}"
        );
    }
    // A prompt change is a new generation and reaches every agent.
    cli.run(&["prompt", "create", "helpful", "--text", "You are helpful."])?;
    let reassigned = cli.run(&[
        "assign",
        "--selector",
        "site=lab",
        "--model",
        MODEL,
        "--version",
        "1.0.0",
        "--prompt",
        "helpful@1",
    ])?;
    let newer = reassigned["assignment"]["generation"].as_u64().unwrap_or(0);
    assert!(newer > generation, "{newer} after {generation}");
    wait_serving(&cli, &names, newer, &agent_refs).await?;

    // A blob tampered on the server never becomes ready anywhere.
    let stored = controller.data_dir.join("objects/blobs").join(&digest);
    let mut bytes = std::fs::read(&stored)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, &bytes)?;
    let tampered = AgentProcess::start(
        dirs[4].path(),
        &as_refs(&enrol_args("edge-5", "site=quarantine")),
    )?;
    // Assign only once it has enrolled: the agent process enrols first.
    wait_until("edge-5 to enrol", WAIT, || async {
        cli.node("edge-5").ok().flatten().is_some()
    })
    .await?;
    cli.run(&[
        "assign",
        "--node",
        "edge-5",
        "--model",
        MODEL,
        "--version",
        "1.0.0",
    ])?;
    let failed = wait_until("edge-5 to report the corrupt blob", WAIT, || async {
        cli.node("edge-5")
            .ok()
            .flatten()
            .is_some_and(|node| observed_phase(&node) == "failed")
    })
    .await;
    if failed.is_err() {
        eprintln!(
            "--- edge-5 ---\n{}\n{:#?}",
            tampered.log(),
            cli.node("edge-5")
        );
    }
    failed?;
    let node = cli.node("edge-5")?.unwrap_or_default();
    let reason = node["observed"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("verification") || reason.contains("digest"),
        "reason: {reason}"
    );
    assert!(!dirs[4].path().join("cache/blobs").join(&digest).exists());
    Ok(())
}
