//! The rest of the OpenAI and Ollama surface (issue 17): fields this node
//! does not implement are refused with a 400 naming them, never dropped;
//! usage once per stream; the model echoed as the client named it;
//! `/v1/models/{id}`; Ollama's `/api/version`, `/api/tags`, `/api/show`,
//! `/api/ps` and `/api/pull`.

use super::routing::peer;
use super::*;

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
}

fn ollama_chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": false,
        "options": {"num_predict": 2}})
}

/// `base` with `field` set to `value` (a dotted field goes one level down).
fn with(mut base: Value, field: &str, value: Value) -> Value {
    match field.split_once('.') {
        Some((outer, inner)) => {
            if base[outer].is_null() {
                base[outer] = json!({});
            }
            base[outer][inner] = value;
        }
        None => base[field] = value,
    }
    base
}

#[tokio::test]
async fn fields_this_node_does_not_implement_get_400_naming_them() -> anyhow::Result<()> {
    let harness = Harness::with_model("fields", ServeConfig::default()).await?;
    let refused_by_openai: Vec<(&str, Value)> = vec![
        ("functions", json!([{"name": "f", "parameters": {}}])),
        ("function_call", json!("auto")),
        ("n", json!(2)),
        ("logit_bias", json!({"50256": -100})),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("modalities", json!(["text", "audio"])),
        ("prediction", json!({"type": "content", "content": "x"})),
        ("reasoning_effort", json!("high")),
        ("store", json!(true)),
        ("service_tier", json!("flex")),
        ("web_search_options", json!({})),
        ("no_such_field", json!(1)),
        ("stream_options.no_such_option", json!(true)),
    ];
    for (field, value) in refused_by_openai {
        let body = with(chat("fields"), field, value);
        let response = harness.post("/v1/chat/completions", body.clone()).await?;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await?;
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert_eq!(error["error"]["param"], field, "{error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field}: {message}");
    }
    let message_field = json!({"model": "fields", "messages": [
        {"role": "user", "content": "hi", "name": "alice"}]});
    let response = harness.post("/v1/chat/completions", message_field).await?;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await?;
    assert_eq!(error["error"]["param"], "messages[0].name", "{error}");
    for (field, value) in [
        ("echo", json!(true)),
        ("best_of", json!(3)),
        ("suffix", json!("tail")),
        ("logprobs", json!(2)),
    ] {
        let body = with(
            json!({"model": "fields", "prompt": "hi", "max_tokens": 2}),
            field,
            value,
        );
        let response = harness.post("/v1/completions", body.clone()).await?;
        assert_eq!(response.status(), 400, "{body}");
    }

    // The values that ask for nothing, as clients send them by default
    // (LangChain's `n: 1`, `stream_options`; `null` for anything unset).
    let defaults = json!({"model": "fields", "messages": [
            {"role": "user", "content": "hi", "tool_calls": [], "refusal": null}],
        "max_tokens": 2, "n": 1, "temperature": 0.7, "top_p": 1, "seed": 7,
        "tools": [], "tool_choice": "none", "functions": null, "parallel_tool_calls": null,
        "response_format": {"type": "text"}, "logprobs": false, "top_logprobs": null,
        "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
        "user": "someone", "store": false, "service_tier": "auto", "modalities": ["text"],
        "stream": true, "stream_options": {"include_usage": true}});
    let response = harness.post("/v1/chat/completions", defaults).await?;
    assert_eq!(response.status(), 200, "{}", response.text().await?);

    let refused_by_ollama: Vec<(&str, &str, Value)> = vec![
        ("/api/chat", "think", json!(true)),
        ("/api/chat", "logprobs", json!(true)),
        ("/api/chat", "options.mirostat", json!(2)),
        ("/api/chat", "options.typical_p", json!(0.5)),
        ("/api/chat", "options.tfs_z", json!(0.9)),
        ("/api/chat", "options.repeat_last_n", json!(128)),
        ("/api/chat", "options.no_such_option", json!(1)),
        ("/api/chat", "surprise", json!(1)),
        ("/api/generate", "suffix", json!("}")),
        ("/api/generate", "template", json!("{{ .Prompt }}")),
        ("/api/generate", "context", json!([1, 2, 3])),
    ];
    for (path, field, value) in refused_by_ollama {
        let base = if path == "/api/chat" {
            ollama_chat("fields")
        } else {
            json!({"model": "fields", "prompt": "hi", "stream": false,
                "options": {"num_predict": 2}})
        };
        let body = with(base, field, value);
        let response = harness.post(path, body.clone()).await?;
        assert_eq!(response.status(), 400, "{path} {body}");
        let error: Value = response.json().await?;
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{path} {field}: {error}");
    }
    let message_thinking = json!({"model": "fields", "stream": false, "messages": [
        {"role": "assistant", "content": "", "thinking": "hmm"},
        {"role": "user", "content": "hi"}]});
    let response = harness.post("/api/chat", message_thinking).await?;
    assert_eq!(response.status(), 400);

    // What the `ollama` client sends on every chat (`tools: []`), the
    // load-time options, and the sampling options the engine implements.
    let defaults = json!({"model": "fields", "messages": [{"role": "user", "content": "hi"}],
        "stream": false, "tools": [], "format": "", "think": false, "keep_alive": "5m",
        "options": {"num_predict": 2, "num_ctx": 2048, "num_thread": 2, "seed": 3,
            "min_p": 0.1, "top_k": 20, "repeat_penalty": 1.1, "repeat_last_n": 64,
            "mirostat": 0, "typical_p": 1.0}});
    let response = harness.post("/api/chat", defaults).await?;
    assert_eq!(response.status(), 200, "{}", response.text().await?);
    let response = harness
        .post(
            "/api/generate",
            json!({"model": "fields", "prompt": "hi", "stream": false, "raw": false,
                "suffix": "", "context": [], "options": {"num_predict": 2}}),
        )
        .await?;
    assert_eq!(response.status(), 200, "{}", response.text().await?);
    // LangChain's older Ollama client: every option and `images` sent,
    // unset ones as null.
    let response = harness
        .post(
            "/api/generate",
            json!({"model": "fields", "prompt": "hi", "stream": false, "images": null,
                "options": {"mirostat": null, "mirostat_eta": null, "mirostat_tau": null,
                    "num_ctx": null, "num_gpu": null, "num_thread": null, "repeat_last_n": null,
                    "repeat_penalty": null, "temperature": null, "stop": null, "tfs_z": null,
                    "top_k": null, "top_p": null, "num_predict": 2}}),
        )
        .await?;
    assert_eq!(response.status(), 200, "{}", response.text().await?);
    Ok(())
}

#[tokio::test]
async fn a_stream_carries_its_usage_once_and_only_when_asked() -> anyhow::Result<()> {
    let harness = Harness::with_model("usage", ServeConfig::default()).await?;
    for kind in ["/v1/chat/completions", "/v1/completions"] {
        for include_usage in [true, false] {
            let mut body = if kind == "/v1/completions" {
                json!({"model": "usage", "prompt": "hello", "max_tokens": 4})
            } else {
                greedy_chat("usage", 4)
            };
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": include_usage});
            let text = harness
                .post(kind, body)
                .await?
                .error_for_status()?
                .text()
                .await?;
            let (payloads, done) = sse_payloads(&text);
            assert!(done, "{text}");
            let with_usage: Vec<&Value> = payloads
                .iter()
                .filter(|payload| !payload["usage"].is_null())
                .collect();
            if include_usage {
                assert_eq!(with_usage.len(), 1, "{kind}: {text}");
                let last = payloads.last().ok_or_else(|| anyhow::anyhow!("empty"))?;
                assert_eq!(last["choices"], json!([]), "{kind}: {text}");
                assert!(last["usage"]["completion_tokens"].as_u64().unwrap_or(0) >= 1);
            } else {
                assert!(with_usage.is_empty(), "{kind}: {text}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn answers_name_the_model_as_the_client_did() -> anyhow::Result<()> {
    let harness = Harness::start(ServeConfig::default()).await?;
    let mut nicknamed = assignment("echo", "1.0.0", &tiny_model());
    nicknamed.aliases = vec!["nick".to_owned()];
    harness
        .activate(nicknamed)
        .await
        .map_err(anyhow::Error::msg)?;
    for asked in ["nick", "echo:latest", "nick:1.0.0"] {
        let whole: Value = harness
            .post("/v1/chat/completions", chat(asked))
            .await?
            .error_for_status()?
            .json()
            .await?;
        assert_eq!(whole["model"], asked, "{whole}");
        let mut streamed = chat(asked);
        streamed["stream"] = json!(true);
        let text = harness
            .post("/v1/chat/completions", streamed)
            .await?
            .text()
            .await?;
        let (payloads, _) = sse_payloads(&text);
        assert!(
            payloads.iter().all(|payload| payload["model"] == asked),
            "{text}"
        );
        let completion: Value = harness
            .post(
                "/v1/completions",
                json!({"model": asked, "prompt": "hi", "max_tokens": 2}),
            )
            .await?
            .json()
            .await?;
        assert_eq!(completion["model"], asked, "{completion}");

        let answer: Value = harness
            .post("/api/chat", ollama_chat(asked))
            .await?
            .error_for_status()?
            .json()
            .await?;
        assert_eq!(answer["model"], asked, "{answer}");
        let mut streamed = ollama_chat(asked);
        streamed["stream"] = json!(true);
        let lines = ndjson(&harness.post("/api/chat", streamed).await?.text().await?);
        assert!(lines.iter().all(|line| line["model"] == asked), "{lines:?}");
        let generated: Value = harness
            .post(
                "/api/generate",
                json!({"model": asked, "prompt": "hi", "stream": false, "options": {"num_predict": 2}}),
            )
            .await?
            .json()
            .await?;
        assert_eq!(generated["model"], asked, "{generated}");
        let loaded: Value = harness
            .post("/api/generate", json!({"model": asked}))
            .await?
            .json()
            .await?;
        assert_eq!(loaded["model"], asked, "{loaded}");

        let mut stream = harness
            .grpc()
            .await?
            .generate(pb::GenerateRequest {
                model: asked.to_owned(),
                prompt: "hi".to_owned(),
                options: Some(pb::SamplingOptions {
                    max_tokens: Some(2),
                    ..pb::SamplingOptions::default()
                }),
                ..Default::default()
            })
            .await?
            .into_inner();
        while let Some(message) = stream.message().await? {
            assert_eq!(message.model, asked);
        }
    }
    Ok(())
}

#[tokio::test]
async fn v1_models_id_knows_names_aliases_tags_and_peers() -> anyhow::Result<()> {
    let harness = Harness::start(ServeConfig::default()).await?;
    let mut nicknamed = assignment("retrieved", "1.0.0", &tiny_model());
    nicknamed.aliases = vec!["short".to_owned()];
    harness
        .activate(nicknamed)
        .await
        .map_err(anyhow::Error::msg)?;
    harness.serving.routes.replace(vec![peer(
        "elsewhere",
        "far-model",
        "http://127.0.0.1:9".to_owned(),
        String::new(),
    )]);
    let listed = harness.get("/v1/models").await?;
    for entry in listed["data"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{listed}"))?
    {
        let id = entry["id"].as_str().unwrap_or_default();
        let one = harness.get(&format!("/v1/models/{id}")).await?;
        assert_eq!(
            &one, entry,
            "/v1/models/{id} differs from its /v1/models entry"
        );
    }
    let alias = harness.get("/v1/models/short").await?;
    assert_eq!(alias["alias_of"], "retrieved");
    assert_eq!(alias["local"], true);
    let tagged = harness.get("/v1/models/retrieved:latest").await?;
    assert_eq!(tagged["id"], "retrieved:latest");
    assert!(tagged["alias_of"].is_null(), "{tagged}");
    let far = harness.get("/v1/models/far-model").await?;
    assert_eq!(far["owned_by"], "flotilla:elsewhere");
    assert_eq!(far["local"], false);

    let response = harness
        .client
        .get(format!("{}/v1/models/no-such-model", harness.http))
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await?;
    assert_eq!(error["error"]["code"], "model_not_found", "{error}");
    assert_eq!(error["error"]["param"], "model", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("no-such-model")),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn ollama_model_routes_describe_the_model_from_its_gguf() -> anyhow::Result<()> {
    let harness = Harness::with_model("described", ServeConfig::default()).await?;
    harness.serving.routes.replace(vec![peer(
        "elsewhere",
        "far-model",
        "http://127.0.0.1:9".to_owned(),
        String::new(),
    )]);
    let card = harness.served()?.info().card.clone();
    assert!(card.parameter_count > 0);
    assert_eq!(
        card.parameter_size(),
        serve::card::human_number(card.parameter_count)
    );

    let version = harness.get("/api/version").await?;
    assert_eq!(version["version"], "0.6.0");

    let tags = harness.get("/api/tags").await?;
    let local = &tags["models"][0];
    assert_eq!(local["name"], "described:latest", "{tags}");
    assert_eq!(local["model"], "described:latest", "{tags}");
    assert_eq!(local["digest"], Digest::of(&tiny_model()).to_hex());
    assert_eq!(local["size"], tiny_model().len());
    let details = &local["details"];
    assert_eq!(details["format"], "gguf");
    assert_eq!(details["family"], "llama", "{details}");
    assert_eq!(details["families"], json!(["llama"]));
    assert_eq!(details["parameter_size"], card.parameter_size());
    assert!(
        details["quantization_level"]
            .as_str()
            .is_some_and(|q| !q.is_empty())
    );
    assert_eq!(tags["models"][1]["name"], "far-model:latest", "{tags}");

    let show = harness
        .post("/api/show", json!({"model": "described:latest"}))
        .await?;
    assert_eq!(show.status(), 200);
    let show: Value = show.json().await?;
    // The tiny model has no chat template of its own (SmolLM2's is checked
    // with the `ollama` client in tests/tests/clients.rs).
    assert!(show["template"].is_string(), "{show}");
    assert!(
        show["parameters"]
            .as_str()
            .is_some_and(|p| p.contains("temperature"))
    );
    assert_eq!(show["details"], *details);
    let info = &show["model_info"];
    assert_eq!(info["general.architecture"], "llama", "{info}");
    assert_eq!(info["general.parameter_count"], card.parameter_count);
    assert!(info["llama.block_count"].as_u64().is_some(), "{info}");
    assert!(
        info.get("tokenizer.ggml.tokens").is_none(),
        "tokens are left out"
    );
    assert!(info.get("tokenizer.chat_template").is_none());
    assert_eq!(show["capabilities"], json!(["completion"]));
    // Ollama's older clients name the model `name`.
    let by_name = harness
        .post("/api/show", json!({"name": "described"}))
        .await?;
    assert_eq!(by_name.status(), 200);
    let unknown = harness
        .post("/api/show", json!({"model": "nothing"}))
        .await?;
    assert_eq!(unknown.status(), 404);

    let ps = harness.get("/api/ps").await?;
    let loaded = &ps["models"][0];
    assert_eq!(ps["models"].as_array().map(Vec::len), Some(1), "{ps}");
    assert_eq!(loaded["name"], "described:latest");
    assert_eq!(loaded["size_vram"], 0);
    assert_eq!(loaded["details"], *details);
    let expires = loaded["expires_at"].as_str().unwrap_or_default();
    let year: i32 = expires.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
    assert!(year > 2300, "pinned: {expires}");

    // Pull: a model reachable here (served, or a peer's) succeeds in
    // Ollama's shape, streamed or whole; any other is a 404 that says how
    // models arrive.
    let pulled: Value = harness
        .post("/api/pull", json!({"model": "described", "stream": false}))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(pulled["status"], "success");
    let streamed = harness
        .post("/api/pull", json!({"model": "far-model:latest"}))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let lines = ndjson(&streamed);
    assert_eq!(
        lines.last().map(|line| &line["status"]),
        Some(&json!("success"))
    );
    let refused = harness
        .post("/api/pull", json!({"model": "llama3:8b", "stream": false}))
        .await?;
    assert_eq!(refused.status(), 404);
    let error: Value = refused.json().await?;
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("llama3:8b") && message.contains("flotilla assign"),
        "{message}"
    );
    Ok(())
}

/// Structured output and tool calls through every surface on the tiny
/// random model: its logits are noise, so whatever comes out is the
/// grammar's doing. The schemas leave one valid answer, which must be it.
#[tokio::test]
async fn constrained_answers_parse_on_every_surface() -> anyhow::Result<()> {
    let harness = Harness::with_model("shaped", ServeConfig::default()).await?;
    let schema = json!({"type": "object", "properties": {"ok": {"const": true}},
        "required": ["ok"]});
    let mut body = chat("shaped");
    body["max_tokens"] = json!(32);
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "ok", "schema": schema}});
    let answer: Value = harness
        .post("/v1/chat/completions", body)
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        r#"{"ok": true}"#
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    // Ollama's `format` (a schema), on chat and generate.
    let mut body = ollama_chat("shaped");
    body["options"]["num_predict"] = json!(32);
    body["format"] = schema.clone();
    let answer: Value = harness
        .post("/api/chat", body)
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(answer["message"]["content"], r#"{"ok": true}"#, "{answer}");
    let answer: Value = harness
        .post(
            "/api/generate",
            json!({"model": "shaped", "prompt": "hi", "stream": false, "raw": true,
                "format": schema, "options": {"num_predict": 32}}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(answer["response"], r#"{"ok": true}"#, "{answer}");

    // A required call of a tool without arguments: the call is the only answer.
    let tool = json!({"type": "function", "function": {"name": "ping",
        "parameters": {"type": "object", "properties": {}}}});
    let mut body = chat("shaped");
    body["max_tokens"] = json!(96);
    body["tools"] = json!([tool]);
    body["tool_choice"] = json!("required");
    body["parallel_tool_calls"] = json!(false);
    let answer: Value = harness
        .post("/v1/chat/completions", body.clone())
        .await?
        .error_for_status()?
        .json()
        .await?;
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{answer}");
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["name"],
        "ping"
    );
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
    body["stream"] = json!(true);
    let text = harness
        .post("/v1/chat/completions", body)
        .await?
        .error_for_status()?
        .text()
        .await?;
    let (payloads, done) = sse_payloads(&text);
    assert!(done);
    assert!(
        payloads.iter().any(
            |chunk| chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "ping"
        ),
        "{text}"
    );

    // gRPC: a JSON object answer parses; a named tool is called.
    let mut client = harness.grpc().await?;
    let mut stream = client
        .chat(pb::ChatRequest {
            model: "shaped".to_owned(),
            messages: vec![pb::ChatMessage {
                role: "user".to_owned(),
                content: "hi".to_owned(),
                tool_calls: Vec::new(),
            }],
            options: Some(pb::SamplingOptions {
                max_tokens: Some(32),
                ..Default::default()
            }),
            format: Some(pb::OutputFormat {
                kind: Some(pb::output_format::Kind::JsonSchema(schema.to_string())),
            }),
            tools: Vec::new(),
            tool_choice: String::new(),
            single_tool_call: false,
        })
        .await?
        .into_inner();
    let mut text = String::new();
    while let Some(message) = stream.message().await? {
        text.push_str(&message.text);
    }
    assert_eq!(text, r#"{"ok": true}"#);
    let mut stream = client
        .chat(pb::ChatRequest {
            model: "shaped".to_owned(),
            messages: vec![pb::ChatMessage {
                role: "user".to_owned(),
                content: "hi".to_owned(),
                tool_calls: Vec::new(),
            }],
            options: Some(pb::SamplingOptions {
                max_tokens: Some(96),
                ..Default::default()
            }),
            format: None,
            tools: vec![pb::Tool {
                name: "ping".to_owned(),
                description: String::new(),
                parameters_json: String::new(),
            }],
            tool_choice: "ping".to_owned(),
            single_tool_call: true,
        })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await? {
        last = Some(message);
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("no final message"))?;
    assert_eq!(last.finish_reason, pb::FinishReason::ToolCalls as i32);
    assert_eq!(last.tool_calls[0].name, "ping");

    // Log probabilities, greedy: the chosen token is the likeliest, each
    // token of the text has its entry, whole and streamed.
    let mut body = greedy_chat("shaped", 6);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let answer: Value = harness
        .post("/v1/chat/completions", body.clone())
        .await?
        .error_for_status()?
        .json()
        .await?;
    let content = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!content.is_empty(), "{answer}");
    let mut joined = Vec::new();
    for entry in &content {
        let logprob = entry["logprob"].as_f64().unwrap_or(1.0);
        assert!(logprob <= 0.0, "{entry}");
        let top = entry["top_logprobs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(top.len(), 2, "{entry}");
        assert_eq!(
            top[0]["token"], entry["token"],
            "greedy takes the likeliest: {entry}"
        );
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        let bytes: Vec<u8> = serde_json::from_value(entry["bytes"].clone())?;
        joined.extend(bytes);
    }
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    assert!(
        String::from_utf8_lossy(&joined).starts_with(text),
        "the tokens spell the text: {answer}"
    );
    body["stream"] = json!(true);
    let streamed = harness
        .post("/v1/chat/completions", body)
        .await?
        .error_for_status()?
        .text()
        .await?;
    let (payloads, _) = sse_payloads(&streamed);
    let streamed_entries: usize = payloads
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["logprobs"]["content"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(streamed_entries, content.len(), "{streamed}");
    for bad in [
        json!({"top_logprobs": 2}),
        json!({"logprobs": true, "top_logprobs": 21}),
    ] {
        let mut body = greedy_chat("shaped", 2);
        for (key, value) in bad.as_object().into_iter().flatten() {
            body[key] = value.clone();
        }
        let response = harness.post("/v1/chat/completions", body).await?;
        assert_eq!(response.status(), 400);
    }

    // Replayed calls and their results are accepted on both HTTP surfaces.
    let replay = json!({"model": "shaped", "max_tokens": 2, "messages": [
        {"role": "user", "content": "ping?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
            "type": "function", "function": {"name": "ping", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "ping", "content": "pong"}],
        "tools": [tool]});
    harness
        .post("/v1/chat/completions", replay)
        .await?
        .error_for_status()?;
    let replay = json!({"model": "shaped", "stream": false, "options": {"num_predict": 2},
        "messages": [
        {"role": "user", "content": "ping?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "ping", "arguments": {}}}]},
        {"role": "tool", "tool_name": "ping", "content": "pong"}],
        "tools": [tool]});
    harness
        .post("/api/chat", replay)
        .await?
        .error_for_status()?;
    // A bad replayed call is a 400.
    let bad = json!({"model": "shaped", "max_tokens": 2, "messages": [
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
            "type": "function", "function": {"name": "ping", "arguments": "{not json"}}]},
        {"role": "user", "content": "hi"}]});
    let response = harness.post("/v1/chat/completions", bad).await?;
    assert_eq!(response.status(), 400);
    Ok(())
}
