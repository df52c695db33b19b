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
use flotilla_tests::serving::{
    ServedModel, assert_unknown_model_not_found, grpc_chat, ollama_chat_answers,
    openai_chat_answers,
};
use flotilla_tests::test_model;
use serde_json::Value;

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
    assert_eq!(
        tags["models"][0]["name"],
        format!("{MODEL}:latest"),
        "{tags}"
    );
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
    let (openai_answer, text) = openai_chat_answers(&client, &http, MODEL, QUESTION, 48).await?;
    assert_coherent("OpenAI chat", &openai_answer);
    assert_eq!(openai_answer, answer, "greedy answers agree across APIs");
    assert_coherent("OpenAI chat, streamed", &text);

    // Ollama, streamed (its default) and whole.
    let (whole, text) = ollama_chat_answers(&client, &http, MODEL, QUESTION, 48).await?;
    assert_coherent("Ollama chat, streamed", &text);
    assert_coherent("Ollama chat", &whole);

    // A model this node does not serve.
    assert_unknown_model_not_found(&http, &grpc).await?;
    Ok(())
}
