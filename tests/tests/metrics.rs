//! Both processes' `/metrics`, as Prometheus would read them: a real
//! controller and a real agent serving the real SmolLM2, one chat through
//! each of the agent's surfaces, then each page piped to `promtool check
//! metrics` (HELP on every family, names and units by the conventions).
//! Latencies are histograms (aggregatable across agents and replicas),
//! both processes export `*_build_info` and process metrics, and a model
//! no node serves any more leaves no series behind on the controller.
//!
//! `promtool` comes from Debian's `prometheus` package, which
//! `scripts/ensure-promtool.sh` installs; under `scripts/test.sh`
//! (`FLOTILLA_PROMTOOL` set) a missing one is an error, never a skip.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_tests::serving::{ServedModel, cli, openai_chat_answers};
use flotilla_tests::{scrape, test_model, wait_until};

const MODEL: &str = "smollm2-135m-instruct";

fn promtool() -> anyhow::Result<Option<PathBuf>> {
    if let Some(required) = std::env::var_os("FLOTILLA_PROMTOOL") {
        let path = PathBuf::from(required);
        anyhow::ensure!(
            path.exists(),
            "FLOTILLA_PROMTOOL={} does not exist; run scripts/ensure-promtool.sh",
            path.display()
        );
        return Ok(Some(path));
    }
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    Ok(found.then(|| PathBuf::from("promtool")))
}

/// `promtool check metrics` on `page`: its complaints, if any.
fn promtool_check(promtool: &PathBuf, page: &str) -> anyhow::Result<()> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("promtool has no stdin"))?
        .write_all(page.as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- page ---\n{page}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn assert_has(page: &str, what: &str, wanted: &str) {
    assert!(
        page.lines().any(|line| line.starts_with(wanted)),
        "{what}: no line starting with {wanted:?} in\n{page}"
    );
}

#[tokio::test]
async fn both_processes_pass_promtool_and_forget_unserved_models() -> anyhow::Result<()> {
    let Some(promtool) = promtool()? else {
        eprintln!("SKIP: no promtool; run scripts/ensure-promtool.sh (scripts/test.sh does)");
        return Ok(());
    };
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let served = ServedModel::start(&model, MODEL, "edge-a").await?;
    let client = reqwest::Client::new();
    openai_chat_answers(&client, &served.http_url, MODEL, "Say hi.", 8).await?;

    let agent = scrape(&served.http_url).await?;
    promtool_check(&promtool, &agent)?;
    for wanted in [
        "flotilla_agent_build_info{",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "flotilla_inference_http_request_duration_seconds_bucket{",
        "flotilla_inference_time_to_first_token_seconds_bucket{",
        "flotilla_inference_inter_token_latency_seconds_bucket{",
        "flotilla_agent_download_throughput_bytes_per_second_bucket{",
    ] {
        assert_has(&agent, "agent", wanted);
    }
    assert!(
        !agent.contains("quantile="),
        "a summary on the agent (summaries cannot be aggregated):\n{agent}"
    );

    let controller_url = served.controller.rest_url.clone();
    let serving_series = format!("flotilla_fleet_model_nodes_ready{{model=\"{MODEL}\"}} 1");
    wait_until(
        "the controller to count the ready node",
        Duration::from_secs(30),
        || async {
            scrape(&controller_url)
                .await
                .is_ok_and(|page| page.contains(&serving_series))
        },
    )
    .await?;
    let controller = scrape(&controller_url).await?;
    promtool_check(&promtool, &controller)?;
    for wanted in [
        "flotilla_controller_build_info{",
        "process_resident_memory_bytes ",
        "flotilla_http_request_duration_seconds_bucket{",
        "flotilla_grpc_server_duration_seconds_bucket{rpc=\"flotilla.fleet.v1.Fleet/Sync\"",
        "flotilla_store_transaction_duration_seconds_bucket{",
    ] {
        assert_has(&controller, "controller", wanted);
    }
    assert!(
        !controller.contains("quantile="),
        "a summary on the controller:\n{controller}"
    );

    // Unassigned, the model's series go (not a zero left forever).
    cli(
        &served.controller,
        served.home.path(),
        &["unassign", "--node", "edge-a"],
    )?;
    let model_label = format!("model=\"{MODEL}\"");
    wait_until(
        "the controller to drop the unserved model's series",
        Duration::from_secs(60),
        || async {
            scrape(&controller_url).await.is_ok_and(|page| {
                !page.lines().any(|line| {
                    line.starts_with("flotilla_fleet_model_") && line.contains(&model_label)
                })
            })
        },
    )
    .await?;
    promtool_check(&promtool, &scrape(&controller_url).await?)?;
    // And the agent's: its queue depth, counters and histograms of the
    // model it no longer serves.
    assert!(
        agent.contains(&model_label),
        "the agent had no per-model series:\n{agent}"
    );
    wait_until(
        "the agent to drop the unserved model's series",
        Duration::from_secs(60),
        || async {
            scrape(&served.http_url).await.is_ok_and(|page| {
                !page
                    .lines()
                    .any(|line| !line.starts_with('#') && line.contains(&model_label))
            })
        },
    )
    .await?;
    promtool_check(&promtool, &scrape(&served.http_url).await?)?;
    Ok(())
}
