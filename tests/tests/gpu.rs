//! Issue 15, end to end: an agent started with `--device gpu` serves a
//! model pushed through the CLI on a wgpu adapter (Mesa's lavapipe in CI,
//! `scripts/ensure-vulkan.sh`): it activates the model, answers chats over
//! OpenAI, Ollama and gRPC with the same greedy text the CPU
//! engine writes, and `node show` says it serves on the GPU and lists the
//! adapters. `--device auto` takes a software adapter only when
//! `FLOTILLA_DEVICE_ALLOW_SOFTWARE=1` says it may, else the CPU.
//!
//! The model is the engine's tiny random one (`flotilla_engine::testing`),
//! not SmolLM2: the device graph decodes SmolLM2 at about 25 s a token on
//! lavapipe in a debug build (each matrix product dequantizes its weight
//! with generic tensor operations, which lavapipe runs slowly), which a CI
//! run cannot afford. The graph's parity on real files is in
//! `engine/tests/gpu.rs`.
//!
//! Blue/green on the GPU (a second version loaded beside the first, then
//! swapped in) is `agent/tests/serve/gpu.rs`.
//!
//! These tests fail where wgpu finds no adapter: a broken GPU path must not
//! pass as a skipped one.

use flotilla_engine::chat::single_turn;
use flotilla_engine::{Engine, EngineOptions, GenerationRequest, Prompt, SamplingParams};
use flotilla_tests::serving::{
    SERVE_WAIT, ServedModel, cli, grpc_chat, node_json, ollama_chat_answers, openai_chat_answers,
};
use flotilla_tests::wait_until;
use serde_json::Value;

const MODEL: &str = "tiny";
const QUESTION: &str = "What is the capital of France?";
const MAX_TOKENS: u32 = 12;

/// What the node reports serving on (`node show`'s "device").
fn serving_device(served: &ServedModel, node: &str) -> Option<String> {
    let shown: Value = node_json(&served.controller, served.home.path(), node)?;
    shown["health"]["inference"]["serving_device"]
        .as_str()
        .map(str::to_owned)
}

async fn wait_for_device(served: &ServedModel, node: &str, kind: &str) -> anyhow::Result<String> {
    wait_until("the node to report its device", SERVE_WAIT, || async {
        serving_device(served, node).is_some_and(|device| device.starts_with(kind))
    })
    .await?;
    Ok(serving_device(served, node).unwrap_or_default())
}

/// The tiny model in a file of its own.
fn tiny_model(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, flotilla_engine::testing::tiny_model_bytes())?;
    Ok(path)
}

/// The CPU engine's greedy answer, the reference the GPU must match.
fn cpu_answer(model: &std::path::Path) -> anyhow::Result<String> {
    let engine = Engine::load(
        model,
        EngineOptions {
            threads: Some(2),
            ..EngineOptions::default()
        },
    )?;
    let mut request = GenerationRequest::new(Prompt::Chat(single_turn(None, QUESTION)));
    request.sampling = SamplingParams::greedy();
    request.max_tokens = MAX_TOKENS as usize;
    Ok(engine.generate(&request, |_| {})?.text)
}

#[tokio::test]
async fn an_agent_on_the_gpu_answers_every_api_as_the_cpu_does() -> anyhow::Result<()> {
    let models = tempfile::tempdir()?;
    let model = tiny_model(models.path())?;
    let node = "edge-gpu";
    let served = ServedModel::start_with(&model, MODEL, node, &["--device", "gpu"]).await?;
    let device = wait_for_device(&served, node, "gpu").await?;
    let shown = cli(
        &served.controller,
        served.home.path(),
        &["node", "show", node],
    )?;
    assert!(shown.contains(&device), "node show:\n{shown}");
    assert!(
        shown.contains("gpu:0 "),
        "node show lists the adapters:\n{shown}"
    );

    let expected = cpu_answer(&model)?;
    let client = reqwest::Client::new();
    let (whole, streamed) =
        openai_chat_answers(&client, &served.http_url, MODEL, QUESTION, MAX_TOKENS).await?;
    assert_eq!(whole, expected, "OpenAI on the GPU against the CPU engine");
    assert_eq!(streamed, expected, "streamed");
    let (whole, streamed) =
        ollama_chat_answers(&client, &served.http_url, MODEL, QUESTION, MAX_TOKENS).await?;
    assert_eq!(whole, expected, "Ollama on the GPU");
    assert_eq!(streamed, expected, "Ollama streamed");
    let (text, last) = grpc_chat(&served.grpc_url, MODEL, QUESTION, MAX_TOKENS).await?;
    assert_eq!(text, expected, "gRPC on the GPU");
    assert!(last.done, "{last:?}");

    assert!(wait_for_device(&served, node, "gpu").await.is_ok());
    Ok(())
}

#[tokio::test]
async fn auto_takes_a_software_adapter_only_when_allowed() -> anyhow::Result<()> {
    let models = tempfile::tempdir()?;
    let model = tiny_model(models.path())?;
    let adapters = flotilla_engine::gpu_adapters();
    assert!(
        !adapters.is_empty(),
        "wgpu finds no adapter: scripts/ensure-vulkan.sh installs Mesa's lavapipe"
    );
    let hardware = adapters.iter().any(|adapter| adapter.is_hardware());

    let allowed = ServedModel::start_with_env(
        &model,
        MODEL,
        "edge-auto-allowed",
        &["--device", "auto"],
        &[],
        &[("FLOTILLA_DEVICE_ALLOW_SOFTWARE", "1")],
    )
    .await?;
    wait_for_device(&allowed, "edge-auto-allowed", "gpu").await?;
    drop(allowed);

    let plain = ServedModel::start_with(&model, MODEL, "edge-auto", &["--device", "auto"]).await?;
    let expected = if hardware { "gpu" } else { "cpu" };
    let device = wait_for_device(&plain, "edge-auto", expected).await?;
    if !hardware {
        assert!(
            plain.agent.log().contains("only software GPU adapters"),
            "the agent says why it did not take the GPU ({device})"
        );
    }
    Ok(())
}
