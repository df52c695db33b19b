//! Stopping an agent that is mid-generation: SIGTERM ends its servers
//! gracefully, but a long request may hold the exit only for
//! `--shutdown-grace`, not for the whole request timeout.

use std::time::Duration;

use flotilla_tests::serving::ServedModel;
use flotilla_tests::test_model;
use serde_json::json;

const MODEL: &str = "smollm2-135m-instruct";

#[tokio::test]
async fn sigterm_waits_for_running_requests_only_as_long_as_the_grace() -> anyhow::Result<()> {
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let mut served =
        ServedModel::start_with(&model, MODEL, "edge-a", &["--shutdown-grace", "1"]).await?;
    // Greedy, the model keeps counting without an end-of-text: 4000
    // tokens take far longer than the grace (and the deadline below).
    let mut stream = reqwest::Client::new()
        .post(format!("{}/v1/completions", served.http_url))
        .json(
            &json!({"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
            "max_tokens": 4000, "temperature": 0, "stream": true}),
        )
        .send()
        .await?
        .error_for_status()?;
    let first = stream.chunk().await?;
    anyhow::ensure!(first.is_some(), "the generation started");

    let status = served.agent.process.terminate(Duration::from_secs(20));
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            eprintln!("--- agent log ---\n{}", served.agent.log());
            return Err(error);
        }
    };
    assert!(status.success(), "the agent exited with {status}");
    assert!(
        served
            .agent
            .log()
            .contains("requests still running after the shutdown grace period"),
        "the exit did not come from the grace period"
    );
    Ok(())
}
