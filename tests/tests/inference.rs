//! Inference end to end with real processes: a controller, the real SmolLM2
//! GGUF pushed with the CLI and assigned to one agent, which loads it, warms
//! it up and serves it. The same chat question then goes over gRPC, the
//! OpenAI-compatible HTTP API and the Ollama-compatible one, streamed and
//! whole, and each answer must be coherent; a model the node does not serve
//! gets a not-found that names it.
//!
//! (Routing to peers is tested in `routing.rs`, third-party clients in
//! `clients.rs`; the HTTP and gRPC surfaces in detail in
//! `agent/tests/serve/`.)

use flotilla_proto::inference::v1 as pb;
use flotilla_tests::serving::{ServedModel, assert_unknown_model_not_found, grpc_chat, sse_text};
use flotilla_tests::test_model;
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m-instruct";
/// The engine's own real-model test asks the same (135M parameters know Berlin;
/// their French geography is shakier).
const QUESTION: &str = "What is the capital of Germany?";

/// A coherent answer to [`QUESTION`] from a 135M model: it names the city.
fn assert_coherent(api: &str, answer: &str) {
    assert!(answer.contains("Berlin"), "{api} answered {answer:?}");
}

#[tokio::test]
async fn one_agent_serves_the_assigned_model_over_grpc_openai_and_ollama() -> anyhow::Result<()> {
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let served = ServedModel::start(&model, MODEL, "edge-a").await?;
    let (http, grpc) = (served.http_url.clone(), served.grpc_url.clone());
    let client = reqwest::Client::new();
    let tags: Value = client
        .get(format!("{http}/api/tags"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(tags["models"][0]["name"], MODEL, "{tags}");
    let models: Value = client
        .get(format!("{http}/v1/models"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(models["data"][0]["id"], MODEL, "{models}");

    // gRPC, streamed.
    let (answer, last) = grpc_chat(&grpc, MODEL, QUESTION, 48).await?;
    assert_coherent("gRPC Chat", &answer);
    assert!(last.done && last.usage.is_some_and(|usage| usage.completion_tokens > 0));
    let mut inference = pb::inference_client::InferenceClient::connect(grpc.clone()).await?;
    let listed = inference
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner();
    assert_eq!(listed.models[0].name, MODEL);

    // OpenAI, whole and streamed.
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0, "max_tokens": 48});
    let whole: Value = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&chat)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let openai_answer = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert_coherent("OpenAI chat", openai_answer);
    assert_eq!(openai_answer, answer, "greedy answers agree across APIs");
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let body = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let (text, done) = sse_text(&body);
    assert!(done, "the SSE stream ends with [DONE]");
    assert_coherent("OpenAI chat, streamed", &text);

    // Ollama, streamed (its default) and whole.
    let ollama = json!({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}],
        "options": {"temperature": 0, "num_predict": 48}});
    let body = client
        .post(format!("{http}/api/chat"))
        .json(&ollama)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let lines: Vec<Value> = body
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let text: String = lines
        .iter()
        .filter_map(|line| line["message"]["content"].as_str())
        .collect();
    assert_coherent("Ollama chat, streamed", &text);
    assert_eq!(
        lines.last().map(|line| line["done"].clone()),
        Some(json!(true))
    );
    let mut whole_request = ollama;
    whole_request["stream"] = json!(false);
    let whole: Value = client
        .post(format!("{http}/api/chat"))
        .json(&whole_request)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_coherent(
        "Ollama chat",
        whole["message"]["content"].as_str().unwrap_or(""),
    );

    // A model this node does not serve.
    assert_unknown_model_not_found(&http, &grpc).await?;
    Ok(())
}
