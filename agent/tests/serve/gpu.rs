//! Issue 15: the agent serving on a GPU (`ServeConfig::device`, what
//! `--device gpu` sets) through a real wgpu adapter (Mesa's lavapipe in CI,
//! `scripts/ensure-vulkan.sh`): the tiny model activates on the device,
//! answers over OpenAI, Ollama and gRPC exactly as on the CPU (greedy), and
//! swaps blue/green to a new version that again runs on the GPU. Fails,
//! rather than skips, where wgpu finds no adapter.

use flotilla_engine::DeviceRequest;

use super::*;

const MAX_TOKENS: u32 = 16;

/// The greedy answers of the three surfaces, as text.
async fn answers(harness: &Harness, model: &str) -> anyhow::Result<[String; 3]> {
    let openai: Value = harness
        .post("/v1/chat/completions", greedy_chat(model, MAX_TOKENS))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let ollama: Value = harness
        .post(
            "/api/chat",
            json!({"model": model, "stream": false,
                "messages": [{"role": "user", "content": "hello world"}],
                "options": {"temperature": 0, "num_predict": MAX_TOKENS}}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut grpc = harness.grpc().await?;
    let mut stream = grpc
        .chat(pb::ChatRequest {
            model: model.to_owned(),
            messages: vec![pb::ChatMessage {
                role: "user".to_owned(),
                content: "hello world".to_owned(),
                ..Default::default()
            }],
            options: Some(pb::SamplingOptions {
                temperature: Some(0.0),
                max_tokens: Some(MAX_TOKENS),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut grpc_text = String::new();
    while let Some(message) = stream.next().await {
        grpc_text.push_str(&message?.text);
    }
    Ok([
        openai["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        ollama["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        grpc_text,
    ])
}

#[tokio::test]
async fn a_model_on_the_gpu_answers_as_on_the_cpu_and_swaps_blue_green() -> anyhow::Result<()> {
    let cpu = Harness::with_model("on-cpu", ServeConfig::default()).await?;
    let expected = answers(&cpu, "on-cpu").await?;
    assert!(!expected[0].is_empty());

    let gpu_config = ServeConfig {
        device: DeviceRequest::Gpu(None),
        ..ServeConfig::default()
    };
    let gpu = Harness::with_model("on-gpu", gpu_config).await?;
    let placement = gpu.served()?.engine().placement().clone();
    assert!(placement.is_gpu(), "{placement}");
    assert_eq!(answers(&gpu, "on-gpu").await?, expected, "on {placement}");

    // Blue/green: 2.0.0 loads on the GPU beside 1.0.0, then takes over.
    gpu.activate(assignment("on-gpu", "2.0.0", &tiny_model()))
        .await
        .map_err(anyhow::Error::msg)?;
    let served = gpu.served()?;
    assert_eq!(served.info().version, "2.0.0");
    assert!(served.engine().placement().is_gpu());
    assert_eq!(answers(&gpu, "on-gpu").await?, expected, "2.0.0 on the GPU");
    Ok(())
}

#[tokio::test]
async fn asking_for_a_missing_gpu_fails_the_activation_by_name() -> anyhow::Result<()> {
    let config = ServeConfig {
        device: DeviceRequest::Gpu(Some(999)),
        ..ServeConfig::default()
    };
    let harness = Harness::start(config).await?;
    let error = harness
        .activate(assignment("no-such-gpu", "1.0.0", &tiny_model()))
        .await
        .expect_err("no adapter 999");
    assert!(error.contains("GPU adapter 999"), "{error}");
    Ok(())
}
