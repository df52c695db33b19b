//! Issue 15, end to end: an agent started with `--device gpu` serves the real SmolLM2,
//! pushed through the CLI, on a wgpu adapter (Mesa's lavapipe in CI,
//! `scripts/ensure-vulkan.sh`): it activates the model, answers chats over OpenAI,
//! Ollama and gRPC with the greedy text the engine writes on that adapter, swaps
//! blue/green to a new version that again serves on the GPU, and `node show` says it
//! serves on the GPU and lists the adapters. `--device auto` takes a software adapter
//! only when `FLOTILLA_DEVICE_ALLOW_SOFTWARE=1` says it may, else the CPU.
//!
//! The answers must name Paris and be the same text on every surface and after the
//! swap. They are not compared with the CPU engine's: the device graph is f32, the CPU
//! kernels quantize activations, so the two may part at a near tie (`engine/tests/gpu.rs`
//! holds that parity, and the graph's agreement with an exact reference). Answers are
//! short: lavapipe decodes SmolLM2 at about a token a second, and reads a prompt at
//! about three, in a debug build.
//!
//! These tests fail where wgpu finds no adapter: a broken GPU path must not pass as a
//! skipped one.

use flotilla_tests::serving::{
    SERVE_WAIT, ServedModel, cli, grpc_chat, node_json, ollama_chat_whole, openai_chat_answers,
    push_model, renamed_variant,
};
use flotilla_tests::{test_model, wait_until};
use serde_json::Value;

const MODEL: &str = "smollm2";
const QUESTION: &str = "What is the capital of France?";
/// "The capital of France is Paris".
const MAX_TOKENS: u32 = 6;

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

#[tokio::test]
async fn an_agent_on_the_gpu_answers_every_api_and_swaps_blue_green() -> anyhow::Result<()> {
    let model = test_model()
        .ok_or_else(|| anyhow::anyhow!("SmolLM2 is missing: run scripts/prepare-test-inputs.sh"))?;
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

    let client = reqwest::Client::new();
    let (expected, streamed) =
        openai_chat_answers(&client, &served.http_url, MODEL, QUESTION, MAX_TOKENS).await?;
    assert!(
        expected.contains("Paris"),
        "OpenAI on the GPU: {expected:?}"
    );
    assert_eq!(streamed, expected, "streamed");
    // Ollama whole only: its stream is the same generation as OpenAI's, and each costs
    // seconds on lavapipe.
    let ollama = ollama_chat_whole(&client, &served.http_url, MODEL, QUESTION, MAX_TOKENS).await?;
    assert_eq!(ollama, expected, "Ollama on the GPU");
    let (text, last) = grpc_chat(&served.grpc_url, MODEL, QUESTION, MAX_TOKENS).await?;
    assert_eq!(text, expected, "gRPC on the GPU");
    assert!(last.done, "{last:?}");

    // Blue/green: 1.1.0 (the same weights in another file, so another artifact) loads
    // on the GPU beside 1.0.0, then takes over.
    let (_, first_digest) = served
        .serving(node)
        .ok_or_else(|| anyhow::anyhow!("{node} reports no serving digest"))?;
    let variants = tempfile::tempdir()?;
    let variant = renamed_variant(&model, variants.path())?;
    push_model(
        &served.controller,
        served.home.path(),
        &variant,
        MODEL,
        "1.1.0",
    )?;
    let assign = [
        "assign",
        "--node",
        node,
        "--model",
        MODEL,
        "--version",
        "1.1.0",
    ];
    cli(&served.controller, served.home.path(), &assign)?;
    let switched = wait_until("the node to serve 1.1.0", SERVE_WAIT, || async {
        served
            .serving(node)
            .is_some_and(|(phase, digest)| phase == "ready" && digest != first_digest)
    })
    .await;
    if let Err(error) = switched {
        eprintln!("--- agent log ---\n{}", served.agent.log());
        return Err(error);
    }
    let (text, _) = grpc_chat(&served.grpc_url, MODEL, QUESTION, MAX_TOKENS).await?;
    assert_eq!(text, expected, "1.1.0 on the GPU");
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
