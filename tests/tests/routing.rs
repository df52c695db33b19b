//! Routing between agents with real processes: a controller and two agents,
//! the real SmolLM2 assigned to edge-a only. edge-b learns from the
//! controller's directory that edge-a serves it, lists it as not local, and
//! forwards the same chat over gRPC, OpenAI HTTP and Ollama HTTP (streamed
//! and whole): greedy decoding makes its answers identical to edge-a's own.
//! A model nobody serves gets a not-found from edge-b, and a request that
//! was already forwarded once is not forwarded again.

use std::time::Duration;

use flotilla_proto::inference::v1 as pb;
use flotilla_tests::serving::{
    assert_unknown_model_not_found, cli, grpc_chat, node_phase, ollama_chat_answers,
    openai_chat_answers, push_model,
};
use flotilla_tests::{
    AgentProcess, ControllerProcess, metric_value, scrape, test_model, wait_until,
};
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m-instruct";
/// Upload, download and load of 100 MB on loopback, in a debug build.
const WAIT: Duration = Duration::from_secs(180);
const QUESTION: &str = "What is the capital of Germany?";

fn urls(agent: &AgentProcess) -> anyhow::Result<(String, String)> {
    let http = agent
        .http_addr
        .ok_or_else(|| anyhow::anyhow!("no --http address"))?;
    let grpc = agent
        .grpc_addr
        .ok_or_else(|| anyhow::anyhow!("no --grpc address"))?;
    Ok((format!("http://{http}"), format!("http://{grpc}")))
}

/// A greedy gRPC chat that must end with a final `done` message.
async fn grpc_answer(url: &str) -> anyhow::Result<String> {
    let (answer, last) = grpc_chat(url, MODEL, QUESTION, 32).await?;
    anyhow::ensure!(last.done, "the gRPC stream from {url} ended without done");
    Ok(answer)
}

#[tokio::test]
async fn a_node_without_the_model_forwards_to_the_peer_that_serves_it() -> anyhow::Result<()> {
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let a_dir = tempfile::tempdir()?;
    let b_dir = tempfile::tempdir()?;
    let controller =
        ControllerProcess::start(data.path(), &["--heartbeat-interval-ms", "500"]).await?;
    push_model(&controller, home.path(), &model, MODEL, "1.0.0")?;
    let token = cli(
        &controller,
        home.path(),
        &["node", "token", "create", "--ttl", "10m", "--uses", "2"],
    )?;
    let controller_url = format!("http://{}", controller.grpc_addr);
    let start = |dir: &std::path::Path, name: &str| {
        AgentProcess::start(
            dir,
            &[
                "--controller",
                &controller_url,
                "--bootstrap-token",
                token.trim(),
                "--name",
                name,
                "--engine-threads",
                "2",
            ],
        )
    };
    let agent_a = start(a_dir.path(), "edge-a")?;
    let agent_b = start(b_dir.path(), "edge-b")?;
    let (a_http, a_grpc) = urls(&agent_a)?;
    let (b_http, b_grpc) = urls(&agent_b)?;
    wait_until("both agents to enrol", WAIT, || async {
        node_phase(&controller, home.path(), "edge-a").is_some()
            && node_phase(&controller, home.path(), "edge-b").is_some()
    })
    .await?;
    cli(
        &controller,
        home.path(),
        &[
            "assign",
            "--node",
            "edge-a",
            "--model",
            MODEL,
            "--version",
            "1.0.0",
            "--alias",
            "chat",
        ],
    )?;
    let client = reqwest::Client::new();
    let listed_on_b = |client: reqwest::Client| {
        let url = format!("{b_http}/v1/models");
        async move {
            let Ok(response) = client.get(&url).send().await else {
                return false;
            };
            let Ok(models) = response.json::<Value>().await else {
                return false;
            };
            models["data"]
                .as_array()
                .is_some_and(|data| data.iter().any(|model| model["id"] == MODEL))
        }
    };
    let routed = wait_until("edge-b to list the model served by edge-a", WAIT, || {
        listed_on_b(client.clone())
    })
    .await;
    if let Err(error) = routed {
        eprintln!(
            "--- edge-a log ---\n{}\n--- edge-b log ---\n{}",
            agent_a.log(),
            agent_b.log()
        );
        return Err(error);
    }

    // Listing: on edge-b the model is reachable, not local.
    let models: Value = client
        .get(format!("{b_http}/v1/models"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(models["data"].as_array().map(Vec::len), Some(2), "{models}");
    assert_eq!(models["data"][0]["id"], MODEL, "{models}");
    assert_eq!(models["data"][0]["local"], false, "{models}");
    assert_eq!(models["data"][0]["owned_by"], "flotilla:edge-a", "{models}");
    // The assignment's alias is listed too, and routes like the name.
    assert_eq!(models["data"][1]["id"], "chat", "{models}");
    assert_eq!(models["data"][1]["alias_of"], MODEL, "{models}");
    let models: Value = client
        .get(format!("{a_http}/v1/models"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(models["data"][0]["local"], true, "{models}");
    assert_eq!(models["data"][0]["owned_by"], "flotilla:local", "{models}");
    let tags: Value = client
        .get(format!("{b_http}/api/tags"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        tags["models"][0]["name"],
        format!("{MODEL}:latest"),
        "{tags}"
    );
    assert_eq!(tags["models"][0]["local"], false, "{tags}");
    // Described as edge-a describes it: the same artifact.
    let tags_on_a: Value = client
        .get(format!("{a_http}/api/tags"))
        .send()
        .await?
        .json()
        .await?;
    for field in ["digest", "size"] {
        assert_eq!(
            tags["models"][0][field], tags_on_a["models"][0][field],
            "{field}: {tags} vs {tags_on_a}"
        );
    }
    assert_eq!(
        tags["models"][0]["details"]["quantization_level"], "Q4_1",
        "{tags}"
    );
    let mut inference_b = pb::inference_client::InferenceClient::connect(b_grpc.clone()).await?;
    let listed = inference_b
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner();
    assert_eq!(listed.models.len(), 1, "{listed:?}");
    assert_eq!(listed.models[0].name, MODEL);
    assert_eq!(listed.models[0].aliases, ["chat"]);
    assert_eq!(listed.models[0].node, "edge-a");
    assert!(!listed.models[0].local);

    // The same chat asked of edge-b is answered by edge-a, identically.
    let from_a = grpc_answer(&a_grpc).await?;
    assert!(from_a.contains("Berlin"), "edge-a answered {from_a:?}");
    let from_b = grpc_answer(&b_grpc).await?;
    assert_eq!(from_b, from_a, "gRPC through edge-b");

    let (a_whole, a_streamed) = openai_chat_answers(&client, &a_http, MODEL, QUESTION, 32).await?;
    let (b_whole, b_streamed) = openai_chat_answers(&client, &b_http, MODEL, QUESTION, 32).await?;
    assert!(a_whole.contains("Berlin"), "edge-a answered {a_whole:?}");
    assert_eq!(b_whole, a_whole, "OpenAI through edge-b");
    assert_eq!(b_streamed, a_streamed, "OpenAI streamed through edge-b");
    assert_eq!(b_whole, from_a, "greedy answers agree across APIs");
    let by_alias = client
        .post(format!("{b_http}/v1/chat/completions"))
        .json(&json!({"model": "chat", "temperature": 0, "max_tokens": 32,
            "messages": [{"role": "user", "content": QUESTION}]}))
        .send()
        .await?
        .error_for_status()?;
    assert_eq!(
        by_alias
            .headers()
            .get("x-flotilla-served-by")
            .and_then(|value| value.to_str().ok()),
        Some("edge-a")
    );
    assert_eq!(
        by_alias
            .headers()
            .get("x-flotilla-model-version")
            .and_then(|value| value.to_str().ok()),
        Some("1.0.0")
    );
    let by_alias: Value = by_alias.json().await?;
    assert_eq!(
        by_alias["choices"][0]["message"]["content"], from_a,
        "the alias through edge-b"
    );

    let (a_whole, a_streamed) = ollama_chat_answers(&client, &a_http, MODEL, QUESTION, 32).await?;
    let (b_whole, b_streamed) = ollama_chat_answers(&client, &b_http, MODEL, QUESTION, 32).await?;
    assert!(a_whole.contains("Berlin"), "edge-a answered {a_whole:?}");
    assert_eq!(b_whole, a_whole, "Ollama through edge-b");
    assert_eq!(b_streamed, a_streamed, "Ollama streamed through edge-b");

    // A model no node serves: edge-b says so, naming it.
    assert_unknown_model_not_found(&b_http, &b_grpc).await?;

    // A request that was forwarded already is answered locally or refused.
    let response = client
        .post(format!("{b_http}/v1/chat/completions"))
        .header("x-flotilla-hops", "1")
        .json(
            &json!({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 4}),
        )
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    let response = client
        .post(format!("{b_http}/v1/chat/completions"))
        .header("x-flotilla-hops", "lots")
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}))
        .send()
        .await?;
    assert_eq!(response.status(), 400);

    // The agents' own /metrics: the sync stream and the forwarding.
    let metrics_b = scrape(&b_http).await?;
    let value = |name: &str| metric_value(&metrics_b, name);
    assert_eq!(
        value("flotilla_agent_sync_streams_connected"),
        Some(1.0),
        "{metrics_b}"
    );
    for counted in [
        "flotilla_agent_sync_streams_opened_total",
        "flotilla_agent_sync_ack_latency_seconds_count",
        "flotilla_inference_forwarded_total",
    ] {
        assert!(value(counted) >= Some(1.0), "{counted}: {metrics_b}");
    }
    // edge-a received the assignment's generation.
    let metrics_a = scrape(&a_http).await?;
    assert!(
        metric_value(&metrics_a, "flotilla_agent_desired_generation") >= Some(1.0),
        "{metrics_a}"
    );
    Ok(())
}
