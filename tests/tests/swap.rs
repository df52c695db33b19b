//! A controller-driven version change with real processes and the real
//! SmolLM2: while clients stream chat requests to the agent without pause,
//! the operator assigns version 1.1.0 (another artifact). The agent
//! downloads, loads and warms it up beside 1.0.0, then switches: no request
//! fails, and every request sent after the node reports the new version
//! ready is answered by it (the `x-flotilla-model-version` header says
//! which answered). The new assignment also brings an alias and the
//! `forbid` system-prompt policy, which the agent then applies; and the
//! node's heartbeats carry its inference figures to the controller.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use flotilla_tests::serving::{
    SERVE_WAIT, ServedModel, cli, node_json, push_model, renamed_variant, sse_text,
};
use flotilla_tests::{test_model, wait_until};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const MODEL: &str = "smollm2-135m-instruct";
const QUESTION: &str = "What is the capital of Germany?";

/// One streamed request as a client saw it.
#[derive(Debug)]
struct Outcome {
    sent_at: Instant,
    /// The version that answered, or why the request failed.
    answer: Result<String, String>,
}

/// Streams one greedy OpenAI chat; the version that answered.
async fn streamed_chat(
    client: &reqwest::Client,
    http: &str,
    model: &str,
) -> Result<String, String> {
    let request = json!({"model": model, "stream": true, "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "user", "content": QUESTION}]});
    let response = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let version = response
        .headers()
        .get("x-flotilla-model-version")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.text().await.map_err(|error| error.to_string())?;
    let (text, done) = sse_text(&body);
    if !status.is_success() || !done || text.is_empty() || body.contains("\"error\"") {
        return Err(format!("{status}: {body}"));
    }
    Ok(version)
}

#[tokio::test]
async fn a_new_version_takes_over_while_clients_stream_and_no_request_fails() -> anyhow::Result<()>
{
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let served = ServedModel::start(&model, MODEL, "edge-a").await?;
    let (_, first_digest) = served
        .serving("edge-a")
        .ok_or_else(|| anyhow::anyhow!("edge-a reports no serving digest"))?;
    let scratch = tempfile::tempdir()?;
    let variant = renamed_variant(&model, scratch.path())?;
    let home = served.home.path();
    push_model(&served.controller, home, &variant, MODEL, "1.1.0")?;

    // Clients streaming without pause, each recording what answered.
    let client = reqwest::Client::new();
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (client, http) = (client.clone(), served.http_url.clone());
        let (outcomes, stop) = (outcomes.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent_at = Instant::now();
                let answer = streamed_chat(&client, &http, MODEL).await;
                outcomes.lock().await.push(Outcome { sent_at, answer });
            }
        }));
    }
    let answered = |outcomes: Arc<Mutex<Vec<Outcome>>>, after: Instant, count: usize| async move {
        outcomes
            .lock()
            .await
            .iter()
            .filter(|outcome| outcome.sent_at >= after)
            .count()
            >= count
    };
    let started = Instant::now();
    wait_until("requests to 1.0.0", SERVE_WAIT, || {
        answered(outcomes.clone(), started, 4)
    })
    .await?;

    cli(
        &served.controller,
        home,
        &[
            "assign",
            "--node",
            "edge-a",
            "--model",
            MODEL,
            "--version",
            "1.1.0",
            "--alias",
            "support-bot",
            "--prompt-policy",
            "forbid",
        ],
    )?;
    let switched = wait_until("edge-a to serve 1.1.0", SERVE_WAIT, || async {
        served
            .serving("edge-a")
            .is_some_and(|(phase, digest)| phase == "ready" && digest != first_digest)
    })
    .await;
    if let Err(error) = switched {
        eprintln!("--- agent log ---\n{}", served.agent.log());
        return Err(error);
    }
    let switched_at = Instant::now();
    wait_until("requests after the switch", SERVE_WAIT, || {
        answered(outcomes.clone(), switched_at, 4)
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }

    let outcomes = outcomes.lock().await;
    let failures: Vec<_> = outcomes
        .iter()
        .filter_map(|outcome| outcome.answer.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the switch: {failures:?}",
        failures.len(),
        outcomes.len()
    );
    let versions = |after: Instant| -> Vec<&str> {
        outcomes
            .iter()
            .filter(|outcome| outcome.sent_at >= after)
            .filter_map(|outcome| outcome.answer.as_deref().ok())
            .collect()
    };
    assert_eq!(
        versions(started).first().copied(),
        Some("1.0.0"),
        "the first requests were answered by 1.0.0"
    );
    let after = versions(switched_at);
    assert!(
        after.iter().all(|version| *version == "1.1.0"),
        "requests after the switch: {after:?}"
    );
    drop(outcomes);

    // The alias answers, and the listing shows it.
    assert_eq!(
        streamed_chat(&client, &served.http_url, "support-bot").await,
        Ok("1.1.0".to_owned())
    );
    let models: Value = client
        .get(format!("{}/v1/models", served.http_url))
        .send()
        .await?
        .json()
        .await?;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .map(|data| {
            data.iter()
                .filter_map(|model| model["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids, [MODEL, "support-bot"], "{models}");
    // Under `forbid`, a request's own system message is refused.
    let response = client
        .post(format!("{}/v1/chat/completions", served.http_url))
        .json(&json!({"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": QUESTION}]}))
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await?;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("system"),
        "{body}"
    );

    // The controller knows how inference on the node is doing.
    let completed = |shown: &Value| {
        shown["health"]["inference"]["completed_total"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until("inference figures in a heartbeat", SERVE_WAIT, || async {
        node_json(&served.controller, home, "edge-a").is_some_and(|shown| completed(&shown) >= 8)
    })
    .await?;
    let shown = node_json(&served.controller, home, "edge-a")
        .ok_or_else(|| anyhow::anyhow!("edge-a is not shown"))?;
    let inference = &shown["health"]["inference"];
    assert!(
        inference["queue_capacity"].as_u64() > Some(0),
        "{inference}"
    );
    assert!(
        inference["generated_tokens_total"].as_u64() > Some(0),
        "{inference}"
    );
    assert_eq!(inference["failed_total"], 0, "{inference}");
    let assignment = &shown["assignment"];
    assert_eq!(assignment["aliases"], json!(["support-bot"]), "{shown}");
    assert_eq!(assignment["prompt_policy"], "forbid", "{shown}");
    Ok(())
}
