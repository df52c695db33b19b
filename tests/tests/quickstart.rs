//! The README's quick start, with real processes: a controller on the
//! embedded defaults (and on Postgres), the real SmolLM2 GGUF pushed through
//! the CLI, and a controller restart that loses nothing.

use std::time::Duration;

use flotilla_controller::testing::TestDatabase;
use flotilla_tests::{ControllerProcess, flotilla, independent_blake3, test_model};

async fn push_real_model_and_restart(extra: &[&str]) -> anyhow::Result<()> {
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let Some(expected_digest) = independent_blake3(&model) else {
        eprintln!("SKIP: no python with the blake3 package; run scripts/ensure-python.sh");
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let controller = ControllerProcess::start(data.path(), extra).await?;
    let token = controller.admin_token()?;
    let model_path = model.to_string_lossy().into_owned();
    let push = flotilla(
        &controller.rest_url,
        &token,
        home.path(),
        &[
            "model",
            "push",
            &model_path,
            "--name",
            "smollm2-135m-instruct",
            "--version",
            "1.0.0",
            "--output",
            "json",
        ],
    )?;
    anyhow::ensure!(
        push.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&push.stderr)
    );
    let artifact: serde_json::Value = serde_json::from_slice(&push.stdout)?;
    assert_eq!(artifact["digest"], expected_digest.as_str());
    assert_eq!(artifact["architecture"], "llama");
    assert_eq!(artifact["quantization"], "Q4_1");
    let parameters = artifact["parameter_count"].as_u64().unwrap_or_default();
    assert!(
        (130_000_000..140_000_000).contains(&parameters),
        "{parameters} parameters"
    );

    // A restart keeps everything and does not rotate the admin token.
    let mut controller = controller;
    controller.process.kill()?;
    let restarted = ControllerProcess::start(data.path(), extra).await?;
    assert_eq!(restarted.admin_token()?, token);
    let show = flotilla(
        &restarted.rest_url,
        &token,
        home.path(),
        &["model", "show", "smollm2-135m-instruct", "--output", "json"],
    )?;
    anyhow::ensure!(
        show.status.success(),
        "show failed: {}",
        String::from_utf8_lossy(&show.stderr)
    );
    let detail: serde_json::Value = serde_json::from_slice(&show.stdout)?;
    assert_eq!(detail["versions"][0]["state"], "published");
    assert_eq!(
        detail["versions"][0]["artifacts"][0]["digest"],
        expected_digest.as_str()
    );

    // The blob served back is byte-identical to the file.
    let blob = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/blobs/{expected_digest}",
            restarted.rest_url
        ))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(60))
        .send()
        .await?
        .bytes()
        .await?;
    assert_eq!(blob.as_ref(), std::fs::read(&model)?.as_slice());
    Ok(())
}

#[tokio::test]
async fn quickstart_on_embedded_defaults() -> anyhow::Result<()> {
    push_real_model_and_restart(&[]).await
}

#[tokio::test]
async fn quickstart_on_postgres() -> anyhow::Result<()> {
    let database = TestDatabase::postgres().await?;
    push_real_model_and_restart(&["--database-url", &database.url]).await
}
