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

/// Runs the CLI; (exit code, stdout, stderr).
fn cli_outcome(
    controller: &ControllerProcess,
    home: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let output = flotilla(&controller.rest_url, &controller.admin_token()?, home, args)?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Registry hygiene and the audit log, on the embedded store: a GGUF file
/// with bytes after its last tensor is refused with a clear 422, and the
/// push that tried it leaves no model and no draft behind; drafts and models
/// never published can be deleted (published ones cannot); every change is
/// an event naming who did it; and the CLI's exit codes tell failures apart.
#[tokio::test]
async fn refused_pushes_leave_nothing_and_unused_models_can_be_deleted() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let controller = ControllerProcess::start(data.path(), &[]).await?;
    let good = files.path().join("tiny.gguf");
    std::fs::write(&good, flotilla_gguf::GgufBuilder::tiny_llama(3, 7))?;
    let mut junk = flotilla_gguf::GgufBuilder::tiny_llama(3, 7);
    junk.extend_from_slice(&[0xA5; 4096]);
    let trailing = files.path().join("trailing.gguf");
    std::fs::write(&trailing, &junk)?;
    let path = |file: &std::path::Path| file.to_string_lossy().into_owned();

    // Trailing junk: refused, and nothing left behind.
    let (code, _, stderr) = cli_outcome(
        &controller,
        home.path(),
        &[
            "model",
            "push",
            &path(&trailing),
            "--name",
            "junk",
            "--version",
            "1.0.0",
        ],
    )?;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("after its last tensor"), "{stderr}");
    assert!(stderr.contains("removed the model junk"), "{stderr}");
    let (code, _, stderr) = cli_outcome(&controller, home.path(), &["model", "show", "junk"])?;
    assert_eq!(code, 4, "not found: {stderr}");

    // The raw REST path says the same, in the API's error shape.
    let token = controller.admin_token()?;
    let http = reqwest::Client::new();
    let api = format!("{}/api/v1", controller.rest_url);
    http.post(format!("{api}/models"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "raw"}))
        .send()
        .await?
        .error_for_status()?;
    http.post(format!("{api}/models/raw/versions"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"version": "1.0.0"}))
        .send()
        .await?
        .error_for_status()?;
    let refused = http
        .post(format!("{api}/models/raw/versions/1.0.0/artifacts"))
        .bearer_auth(&token)
        .body(junk.clone())
        .send()
        .await?;
    assert_eq!(refused.status(), 422);
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "unprocessable", "{body}");
    // The draft it left can be deleted, then the model.
    let deleted = http
        .delete(format!("{api}/models/raw/versions/1.0.0"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(deleted.status(), 204);
    let (code, _, stderr) = cli_outcome(&controller, home.path(), &["model", "rm", "raw"])?;
    assert_eq!(code, 0, "{stderr}");

    // A published version cannot be deleted, nor its model (conflict: 5).
    let (code, _, stderr) = cli_outcome(
        &controller,
        home.path(),
        &[
            "model",
            "push",
            &path(&good),
            "--name",
            "tiny",
            "--version",
            "1.0.0",
        ],
    )?;
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = cli_outcome(
        &controller,
        home.path(),
        &["model", "rm", "tiny", "--version", "1.0.0"],
    )?;
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("only drafts can be deleted"), "{stderr}");
    let (code, _, stderr) = cli_outcome(&controller, home.path(), &["model", "rm", "tiny"])?;
    assert_eq!(code, 5, "{stderr}");
    // A wrong token: its own exit code and a hint.
    let output = flotilla(
        &controller.rest_url,
        "not-a-token",
        home.path(),
        &["model", "ls"],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("FLOTILLA_TOKEN"), "{stderr}");

    // Every change above is in the audit log, with who and the result.
    let (code, events, stderr) = cli_outcome(
        &controller,
        home.path(),
        &["events", "--action", "models", "--output", "json"],
    )?;
    assert_eq!(code, 0, "{stderr}");
    let events: serde_json::Value = serde_json::from_str(&events)?;
    let messages: Vec<String> = events["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|event| format!("{} {}", event["actor"], event["message"]))
                .collect()
        })
        .unwrap_or_default();
    let has = |text: &str| messages.iter().any(|message| message.contains(text));
    assert!(
        has("DELETE /api/v1/models/raw/versions/1.0.0 -> 204"),
        "{messages:#?}"
    );
    assert!(
        has("POST /api/v1/models/raw/versions/1.0.0/artifacts -> 422"),
        "{messages:#?}"
    );
    assert!(has("DELETE /api/v1/models/tiny -> 409"), "{messages:#?}");
    assert!(
        messages
            .iter()
            .all(|message| message.starts_with("\"admin\"")),
        "{messages:#?}"
    );
    Ok(())
}
