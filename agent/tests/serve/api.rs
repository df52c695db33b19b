//! The OpenAI, Ollama and gRPC surfaces.

use super::*;

#[tokio::test]
async fn nothing_loaded_and_unknown_models_are_not_found_with_the_name() -> anyhow::Result<()> {
    let harness = Harness::start(ServeConfig::default()).await?;
    let response = harness
        .post("/v1/chat/completions", greedy_chat("notfound-model", 4))
        .await?;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await?;
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("notfound-model"), "{body}");
    assert!(message.contains("no model is loaded"), "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");

    harness
        .activate(assignment("notfound", "1.0.0", &tiny_model()))
        .await
        .map_err(anyhow::Error::msg)?;
    let response = harness
        .post("/v1/chat/completions", greedy_chat("llama-70b", 4))
        .await?;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await?;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"llama-70b\""),
        "{body}"
    );
    let response = harness
        .post(
            "/api/chat",
            json!({"model": "llama-70b", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await?;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await?;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("llama-70b"),
        "{body}"
    );
    let status = harness
        .grpc()
        .await?
        .chat(pb::ChatRequest {
            model: "llama-70b".to_owned(),
            messages: vec![pb::ChatMessage {
                role: "user".to_owned(),
                content: "hi".to_owned(),
                ..Default::default()
            }],
            options: None,
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an unknown model was answered over gRPC"))?;
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("llama-70b"));

    // The served one is listed everywhere, and answers to Ollama's tags.
    let models = harness.get("/v1/models").await?;
    assert_eq!(models["data"][0]["id"], "notfound");
    let tags = harness.get("/api/tags").await?;
    assert_eq!(tags["models"][0]["name"], "notfound:latest");
    assert_eq!(tags["models"][0]["details"]["quantization_level"], "Q4_1");
    let listed = harness
        .grpc()
        .await?
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner();
    assert_eq!(listed.models.len(), 1);
    assert_eq!(listed.models[0].name, "notfound");
    assert!(listed.models[0].local);
    let response = harness
        .post("/v1/chat/completions", greedy_chat("notfound:latest", 2))
        .await?;
    assert_eq!(response.status(), 200);
    assert!(harness.get("/api/version").await?["version"].is_string());
    Ok(())
}

#[tokio::test]
async fn openai_answers_whole_and_streamed_alike() -> anyhow::Result<()> {
    let harness = Harness::with_model("openai", ServeConfig::default()).await?;
    let whole: Value = harness
        .post("/v1/chat/completions", greedy_chat("openai", 12))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["model"], "openai");
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let usage = &whole["usage"];
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    assert!((1..=12).contains(&completion_tokens), "{whole}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap_or(0) + completion_tokens)
    );
    assert!(matches!(
        whole["choices"][0]["finish_reason"].as_str(),
        Some("stop" | "length")
    ));

    let mut streamed_request = greedy_chat("openai", 12);
    streamed_request["stream"] = json!(true);
    streamed_request["stream_options"] = json!({"include_usage": true});
    let response = harness
        .post("/v1/chat/completions", streamed_request)
        .await?
        .error_for_status()?;
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let (payloads, done) = sse_payloads(&response.text().await?);
    assert!(done, "the stream ends with [DONE]");
    assert_eq!(payloads[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed_text: String = payloads
        .iter()
        .filter_map(|p| p["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed_text, text, "greedy: streamed equals whole");
    let finish = payloads
        .iter()
        .find(|p| !p["choices"][0]["finish_reason"].is_null())
        .ok_or_else(|| anyhow::anyhow!("no chunk carries a finish reason"))?;
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    let usage_chunk = payloads
        .last()
        .ok_or_else(|| anyhow::anyhow!("no payloads"))?;
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], completion_tokens);

    // Text completions, with a stop sequence the model cannot have emitted
    // and a seed for sampled decoding.
    let body = json!({"model": "openai", "prompt": "hello", "max_tokens": 8, "temperature": 0.9,
        "top_p": 0.9, "seed": 3, "stop": ["\u{1F600}"]});
    let first: Value = harness
        .post("/v1/completions", body.clone())
        .await?
        .error_for_status()?
        .json()
        .await?;
    let again: Value = harness
        .post("/v1/completions", body.clone())
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(first["object"], "text_completion");
    assert_eq!(
        first["choices"][0]["text"], again["choices"][0]["text"],
        "same seed, same text"
    );
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (payloads, done) = sse_payloads(
        &harness
            .post("/v1/completions", streamed)
            .await?
            .text()
            .await?,
    );
    assert!(done);
    let streamed_text: String = payloads
        .iter()
        .filter_map(|p| p["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(
        streamed_text,
        first["choices"][0]["text"].as_str().unwrap_or_default()
    );
    Ok(())
}

#[tokio::test]
async fn ollama_streams_ndjson_by_default_and_answers_whole_on_request() -> anyhow::Result<()> {
    let harness = Harness::with_model("ollama", ServeConfig::default()).await?;
    let request = json!({"model": "ollama", "messages": [{"role": "user", "content": "hello"}],
        "options": {"temperature": 0, "num_predict": 10}});
    let response = harness
        .post("/api/chat", request.clone())
        .await?
        .error_for_status()?;
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let lines = ndjson(&response.text().await?);
    let (last, pieces) = lines
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("empty stream"))?;
    assert!(pieces.iter().all(|line| line["done"] == false));
    assert_eq!(last["done"], true);
    assert!(last["eval_count"].as_u64().unwrap_or(0) >= 1);
    let streamed: String = lines
        .iter()
        .filter_map(|line| line["message"]["content"].as_str())
        .collect();
    let mut whole_request = request;
    whole_request["stream"] = json!(false);
    let whole: Value = harness
        .post("/api/chat", whole_request)
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(whole["done"], true);
    assert_eq!(whole["message"]["role"], "assistant");
    assert_eq!(
        whole["message"]["content"].as_str(),
        Some(streamed.as_str())
    );
    assert!(matches!(
        whole["done_reason"].as_str(),
        Some("stop" | "length")
    ));

    let generate = json!({"model": "ollama:latest", "prompt": "hello", "stream": false,
        "options": {"temperature": 0, "num_predict": 6}});
    let whole: Value = harness
        .post("/api/generate", generate.clone())
        .await?
        .error_for_status()?
        .json()
        .await?;
    // Named as the client named it, tag and all.
    assert_eq!(whole["model"], "ollama:latest");
    let mut streamed_request = generate;
    streamed_request["stream"] = json!(true);
    let lines = ndjson(
        &harness
            .post("/api/generate", streamed_request)
            .await?
            .text()
            .await?,
    );
    let streamed: String = lines
        .iter()
        .filter_map(|line| line["response"].as_str())
        .collect();
    assert_eq!(whole["response"].as_str(), Some(streamed.as_str()));
    // An empty prompt only checks that the model is loaded, as in Ollama.
    let loaded: Value = harness
        .post("/api/generate", json!({"model": "ollama"}))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(loaded["done_reason"], "load");
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_400_with_a_message() -> anyhow::Result<()> {
    let harness = Harness::with_model("bad", ServeConfig::default()).await?;
    let cases: Vec<(&str, Value)> = vec![
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "bad", "messages": []}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "bad", "messages": [{"role": "narrator", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "bad", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "bad", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "bad", "messages": [{"role": "user", "content": "hi"}], "n": 2}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "bad", "messages": [{"role": "user", "content": "hi"}], "top_p": "high"}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "bad", "messages": [{"role": "system", "content": "only rules"}]}),
        ),
        (
            "/v1/completions",
            json!({"model": "bad", "prompt": ["a", "b"]}),
        ),
        ("/v1/completions", json!({"model": "bad", "prompt": ""})),
        (
            "/api/chat",
            json!({"model": "bad", "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}),
        ),
        (
            "/api/generate",
            json!({"model": "bad", "prompt": "hi", "options": {"num_predict": -7}}),
        ),
        ("/api/generate", json!({"prompt": "hi"})),
    ];
    for (path, body) in cases {
        let response = harness.post(path, body.clone()).await?;
        assert_eq!(response.status(), 400, "{path} {body}");
        let error: Value = response.json().await?;
        let message = if path.starts_with("/v1") {
            error["error"]["message"].as_str().map(str::to_owned)
        } else {
            error["error"].as_str().map(str::to_owned)
        };
        assert!(
            message.is_some_and(|m| !m.is_empty()),
            "{path} {body}: {error}"
        );
    }
    for path in ["/v1/chat/completions", "/api/chat"] {
        for raw in ["{not json", "", "[1, 2]"] {
            let response = harness.post_raw(path, raw).await?;
            assert_eq!(response.status(), 400, "{path} {raw:?}");
        }
    }
    let response = harness.post("/v1/nothing-here", json!({})).await?;
    assert_eq!(response.status(), 404);
    let status = harness
        .grpc()
        .await?
        .chat(pb::ChatRequest {
            model: "bad".to_owned(),
            messages: vec![],
            options: None,
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an empty chat was answered"))?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = harness
        .grpc()
        .await?
        .generate(pb::GenerateRequest {
            model: "bad".to_owned(),
            prompt: "hello".to_owned(),
            options: Some(pb::SamplingOptions {
                temperature: Some(-1.0),
                ..pb::SamplingOptions::default()
            }),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a negative temperature was accepted"))?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn grpc_streams_text_then_usage_and_the_finish_reason() -> anyhow::Result<()> {
    let harness = Harness::with_model("grpc", ServeConfig::default()).await?;
    let mut stream = harness
        .grpc()
        .await?
        .chat(pb::ChatRequest {
            model: "grpc".to_owned(),
            messages: vec![pb::ChatMessage {
                role: "user".to_owned(),
                content: "hello".to_owned(),
                ..Default::default()
            }],
            options: Some(pb::SamplingOptions {
                temperature: Some(0.0),
                max_tokens: Some(5),
                ..pb::SamplingOptions::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await? {
        messages.push(message);
    }
    let (last, pieces) = messages
        .split_last()
        .ok_or_else(|| anyhow::anyhow!("empty stream"))?;
    assert!(
        pieces
            .iter()
            .all(|piece| !piece.done && piece.usage.is_none())
    );
    assert!(last.done);
    let usage = last.usage.ok_or_else(|| anyhow::anyhow!("no usage"))?;
    assert!((1..=5).contains(&usage.completion_tokens));
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert!(matches!(
        last.finish_reason(),
        pb::FinishReason::Stop | pb::FinishReason::Length
    ));
    // Generate on a raw prompt, with max_tokens 1: exactly one token.
    let mut stream = harness
        .grpc()
        .await?
        .generate(pb::GenerateRequest {
            model: "grpc".to_owned(),
            prompt: "hello world".to_owned(),
            options: Some(pb::SamplingOptions {
                max_tokens: Some(1),
                ..pb::SamplingOptions::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await? {
        last = Some(message);
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("empty stream"))?;
    assert_eq!(last.usage.map(|usage| usage.completion_tokens), Some(1));
    Ok(())
}

#[tokio::test]
async fn grpc_health_and_reflection_answer_as_grpcurl_expects() -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let harness = Harness::start(ServeConfig::default()).await?;
    let url = format!("http://{}", harness.grpc);
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let checked = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "flotilla.inference.v1.Inference".to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(checked.status(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let response = responses
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no reflection response"))?;
    let Some(MessageResponse::ListServicesResponse(listed)) = response.message_response else {
        anyhow::bail!("unexpected reflection response {response:?}");
    };
    let mut names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    // What this process serves, and nothing of the controller's.
    assert_eq!(
        names,
        [
            "flotilla.inference.v1.Inference",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
    );

    // v1alpha too (older grpcurl, Python's grpcio-reflection).
    use tonic_reflection::pb::v1alpha as alpha;
    let mut reflection = alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let response = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner()
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no v1alpha reflection response"))?;
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(listed)) =
        response.message_response
    else {
        anyhow::bail!("unexpected v1alpha reflection response {response:?}");
    };
    let mut names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "flotilla.inference.v1.Inference",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
    );
    Ok(())
}
