//! Issue 14, end to end: the fleet serves the model families people deploy,
//! not only SmolLM2. Each real file (`../shared/fetch-models.sh`, a Q4_K_M
//! mix of Q4_K, Q5_0, Q6_K and Q8_0 tensors) is pushed with the CLI,
//! recorded servable by the controller, assigned to a real agent, and
//! answers through the OpenAI and Ollama APIs, whole and streamed:
//!
//! - Qwen2.5-Coder 0.5B Instruct (`qwen2`: q/k/v biases, its own ChatML
//!   template with a default system prompt). The prompt the agent counts
//!   must be the model's own template rendered by the engine, token for
//!   token, so a chat that silently fell back to another template fails.
//! - Gemma 3 270M (`gemma3`: a base model without a chat template, so it is
//!   asked for a completion, over OpenAI's and Ollama's completion
//!   endpoints, and must complete exactly as the engine does on its own).
//!
//! Under scripts/test.sh (`FLOTILLA_ARCH_MODELS` set) a missing file fails
//! the test; elsewhere it is skipped with a loud line.

use std::path::PathBuf;

use flotilla_engine::chat::single_turn;
use flotilla_engine::{Engine, EngineOptions, GenerationRequest, Prompt, SamplingParams};
use flotilla_tests::serving::{ServedModel, cli, ollama_chat_answers, openai_chat_answers};
use flotilla_tests::workspace_root;
use serde_json::{Value, json};

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-awq-Q4_K_M.gguf";
const GEMMA: &str = "gemma-3-270m-Q4_K_M.gguf";

/// The fetched file, or `None` (skip) outside scripts/test.sh.
fn model_file(name: &str) -> Option<PathBuf> {
    let (dir, required) = match std::env::var_os("FLOTILLA_ARCH_MODELS") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (workspace_root().join("models"), false),
    };
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(
        !required,
        "{} is missing under scripts/test.sh",
        path.display()
    );
    eprintln!(
        "\n*** SKIP {name}: run ../shared/fetch-models.sh models (scripts/test.sh does) ***\n"
    );
    None
}

/// `flotilla model show` says this release's engine can serve it.
fn assert_recorded_servable(served: &ServedModel, model: &str) -> anyhow::Result<()> {
    let shown: Value = serde_json::from_str(&cli(
        &served.controller,
        served.home.path(),
        &["model", "show", model, "-o", "json"],
    )?)?;
    let artifact = &shown["versions"][0]["artifacts"][0];
    anyhow::ensure!(artifact["servable"] == json!(true), "{shown:#}");
    Ok(())
}

#[tokio::test]
async fn qwen2_is_served_with_its_own_chat_template() -> anyhow::Result<()> {
    let Some(file) = model_file(QWEN) else {
        return Ok(());
    };
    let model = "qwen-coder";
    let served = ServedModel::start(&file, model, "edge-qwen").await?;
    assert_recorded_servable(&served, model)?;
    let client = reqwest::Client::new();
    let question = "Write a Python function named add that returns the sum of two numbers.";

    let (whole, streamed) =
        openai_chat_answers(&client, &served.http_url, model, question, 40).await?;
    assert!(whole.contains("def add"), "OpenAI answered {whole:?}");
    assert_eq!(whole, streamed, "greedy answers, whole and streamed");
    let (whole, streamed) =
        ollama_chat_answers(&client, &served.http_url, model, question, 40).await?;
    assert!(whole.contains("def add"), "Ollama answered {whole:?}");
    assert_eq!(whole, streamed, "greedy answers, whole and streamed");

    // The prompt was the model's own template (Qwen's adds its default
    // system prompt): the agent counts exactly the engine's rendering.
    let engine = Engine::load(
        &file,
        EngineOptions {
            threads: Some(1),
            ..EngineOptions::default()
        },
    )?;
    let expected = engine
        .prompt_tokens(&Prompt::Chat(single_turn(None, question)))?
        .len();
    let answer: Value = client
        .post(format!("{}/v1/chat/completions", served.http_url))
        .json(&json!({"model": model, "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": question}]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(
        answer["usage"]["prompt_tokens"],
        json!(expected),
        "{answer:#}"
    );
    Ok(())
}

#[tokio::test]
async fn gemma3_base_model_completes_text() -> anyhow::Result<()> {
    let Some(file) = model_file(GEMMA) else {
        return Ok(());
    };
    let model = "gemma-base";
    let served = ServedModel::start(&file, model, "edge-gemma").await?;
    assert_recorded_servable(&served, model)?;
    let client = reqwest::Client::new();
    let prompt = "The capital of France is";
    let openai: Value = client
        .post(format!("{}/v1/completions", served.http_url))
        .json(&json!({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // What the engine itself completes, greedily: the node must serve the
    // model as it is, word for word (a 270M base model's sense is not the
    // point; it says "the capital of the country of France").
    let engine = Engine::load(
        &file,
        EngineOptions {
            threads: Some(1),
            ..EngineOptions::default()
        },
    )?;
    let mut request = GenerationRequest::new(Prompt::Text(prompt.to_owned()));
    request.sampling = SamplingParams::greedy();
    request.max_tokens = 8;
    let expected = engine.generate(&request, |_| {})?.text;
    let text = openai["choices"][0]["text"].as_str().unwrap_or("");
    assert!(!text.trim().is_empty(), "OpenAI completed {openai:#}");
    assert_eq!(text, expected, "OpenAI completed {openai:#}");
    let ollama: Value = client
        .post(format!("{}/api/generate", served.http_url))
        .json(
            &json!({"model": model, "prompt": prompt, "stream": false, "raw": true,
            "options": {"temperature": 0, "num_predict": 8}}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(ollama["response"].as_str(), Some(text), "{ollama:#}");
    Ok(())
}
