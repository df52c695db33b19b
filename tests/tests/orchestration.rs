//! Issue 17's done-when: the orchestration layer users build on a node,
//! through unchanged third-party libraries, against a real agent serving
//! Qwen2.5-Coder 0.5B (tests/python/orchestration.py drives them):
//! LangChain's `bind_tools` agent loop calling a local Python tool,
//! `with_structured_output` (json_schema), `OpenAIEmbeddings` and
//! `OllamaEmbeddings` filling a Chroma collection for a retrieval-augmented
//! answer, the `ollama` client's chat with tools and a `format` schema, and
//! LiteLLM through its `ollama/`, `ollama_chat/` and `openai/` prefixes.
//!
//! Beside it, the same surfaces over plain HTTP and gRPC: tool calls and
//! JSON answers are valid on every API, whole and streamed, and the
//! requests that cannot be served are 400s that name the problem.
//!
//! Under scripts/test.sh (`FLOTILLA_ARCH_MODELS`, `FLOTILLA_PYTHON` set) a
//! missing model or package fails the test; elsewhere it is skipped.

use std::path::PathBuf;
use std::process::Command;

use flotilla_proto::inference::v1 as pb;
use flotilla_tests::serving::{ServedModel, sse_text};
use flotilla_tests::workspace_root;
use serde_json::{Value, json};

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-awq-Q4_K_M.gguf";
const MODEL: &str = "qwen-coder";

fn qwen() -> Option<PathBuf> {
    let (dir, required) = match std::env::var_os("FLOTILLA_ARCH_MODELS") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (workspace_root().join("models"), false),
    };
    let path = dir.join(QWEN);
    if path.exists() {
        return Some(path);
    }
    assert!(
        !required,
        "{} is missing under scripts/test.sh",
        path.display()
    );
    eprintln!("\n*** SKIP orchestration: run ../shared/fetch-models.sh models ***\n");
    None
}

/// The venv's Python with the orchestration libraries; under
/// scripts/test.sh a missing one is an error.
fn python_with_libraries() -> anyhow::Result<Option<PathBuf>> {
    let required = std::env::var_os("FLOTILLA_PYTHON");
    let python = required
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let usable = Command::new(&python)
        // LiteLLM fetches a price list at import unless told to use its own.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .args([
            "-c",
            "import langchain_openai, langchain_ollama, langchain_chroma, chromadb, litellm, ollama",
        ])
        .output()
        .is_ok_and(|output| output.status.success());
    match (usable, required) {
        (true, _) => Ok(Some(python)),
        (false, Some(_)) => anyhow::bail!(
            "{} lacks the LangChain, Chroma or LiteLLM packages; run scripts/ensure-python.sh",
            python.display()
        ),
        (false, None) => Ok(None),
    }
}

fn multiply_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "multiply",
        "description": "Multiply two integers and return the product.",
        "parameters": {"type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"]},
    }})
}

#[tokio::test]
async fn langchain_chroma_ollama_and_litellm_work_unchanged() -> anyhow::Result<()> {
    let Some(file) = qwen() else {
        return Ok(());
    };
    let Some(python) = python_with_libraries()? else {
        eprintln!(
            "SKIP: no .venv with LangChain, Chroma and LiteLLM; run scripts/ensure-python.sh"
        );
        return Ok(());
    };
    let served = ServedModel::start(&file, MODEL, "edge-orchestration").await?;
    let script = workspace_root().join("tests/python/orchestration.py");
    let http_url = served.http_url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(&http_url)
            .arg(MODEL)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
    })
    .await??;
    if !output.status.success() {
        eprintln!("--- agent log ---\n{}", served.agent.log());
        anyhow::bail!(
            "the libraries failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let answers: Value = serde_json::from_slice(&output.stdout)?;
    eprintln!("{answers:#}");

    // The agent loop: the model called the tool with 12 and 7, the tool ran
    // here, and the answer carries its result.
    assert_eq!(
        answers["tool_calls"][0],
        json!({"name": "multiply", "args": {"a": 12, "b": 7}}),
        "{answers}"
    );
    assert_eq!(answers["tool_invocations"][0], json!([12, 7]), "{answers}");
    let answer = answers["agent_answer"].as_str().unwrap_or("");
    assert!(answer.contains("84"), "{answers}");
    assert_eq!(
        answers["streamed_tool_calls"],
        json!([{"name": "multiply", "args": {"a": 6, "b": 7}}]),
        "{answers}"
    );
    // Structured output: a validated pydantic object.
    assert_eq!(answers["structured_type"], "Person", "{answers}");
    assert_eq!(answers["structured"]["age"], 36, "{answers}");
    assert_eq!(answers["structured"]["city"], "Oslo", "{answers}");
    // Retrieval through both embeddings clients finds the policy, and the
    // answer states it.
    let policy = "Our internal server policy requires 2FA for all SSH connections.";
    assert_eq!(answers["retrieved"]["openai"], policy, "{answers}");
    assert_eq!(answers["retrieved"]["ollama"], policy, "{answers}");
    assert!(
        answers["rag_answer"]
            .as_str()
            .is_some_and(|text| text.contains("2FA")),
        "{answers}"
    );
    // The ollama client: a tool call and a schema-shaped answer.
    assert_eq!(
        answers["ollama_tool_calls"],
        json!([{"name": "add", "args": {"a": 40, "b": 2}}]),
        "{answers}"
    );
    let formatted = &answers["ollama_format"];
    assert!(
        formatted["name"].is_string() && formatted["age"].is_i64() && formatted["city"].is_string(),
        "{answers}"
    );
    // LiteLLM through each prefix.
    for prefix in ["ollama", "ollama_chat", "openai"] {
        let text = answers["litellm"][prefix].as_str().unwrap_or("");
        assert!(text.contains("Paris"), "{prefix}: {answers}");
    }
    Ok(())
}

#[tokio::test]
async fn tool_calls_and_json_answers_are_valid_on_every_api() -> anyhow::Result<()> {
    let Some(file) = qwen() else {
        return Ok(());
    };
    let served = ServedModel::start(&file, MODEL, "edge-tools").await?;
    let client = reqwest::Client::new();
    let chat = format!("{}/v1/chat/completions", served.http_url);
    let question =
        json!([{"role": "user", "content": "What is 12 times 7? Use the multiply tool."}]);

    // OpenAI, whole: the call, with JSON-text arguments; no text.
    let whole: Value = client
        .post(&chat)
        .json(
            &json!({"model": MODEL, "messages": question, "temperature": 0,
            "tools": [multiply_tool()], "tool_choice": "required"}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{whole:#}");
    assert_eq!(choice["message"]["content"], Value::Null, "{whole:#}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(
        call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_"))
    );
    assert_eq!(call["function"]["name"], "multiply");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or(""))?;
    assert_eq!(arguments, json!({"a": 12, "b": 7}), "{whole:#}");

    // OpenAI, streamed: the same call in one delta with its index.
    let streamed = client
        .post(&chat)
        .json(
            &json!({"model": MODEL, "messages": question, "temperature": 0, "stream": true,
            "tools": [multiply_tool()], "tool_choice": "required"}),
        )
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let (_, done) = sse_text(&streamed);
    assert!(done, "{streamed}");
    let chunks: Vec<Value> = streamed
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let delta_call = chunks
        .iter()
        .find_map(|chunk| chunk["choices"][0]["delta"]["tool_calls"].get(0))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(delta_call["index"], 0, "{streamed}");
    assert_eq!(delta_call["function"]["name"], "multiply", "{streamed}");
    assert!(
        chunks
            .iter()
            .any(|chunk| chunk["choices"][0]["finish_reason"] == "tool_calls"),
        "{streamed}"
    );

    // A schema answer always parses and validates, on OpenAI and Ollama.
    // Bounded, so that it ends within max_tokens whatever the kernels'
    // rounding makes of the greedy path (an unbounded number let the 0.5B
    // model write digits to the limit on an AVX-512 machine).
    let schema = json!({"type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40},
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["city", "population_millions"]});
    let formatted: Value = client
        .post(&chat)
        .json(&json!({"model": MODEL, "temperature": 0, "max_tokens": 200,
            "messages": [{"role": "user", "content": "Tell me about Paris."}],
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "city", "schema": schema, "strict": true}}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let content = formatted["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("");
    let parsed: Value =
        serde_json::from_str(content).map_err(|error| anyhow::anyhow!("{error}: {formatted:#}"))?;
    assert!(parsed["city"].is_string() && parsed["population_millions"].is_number());
    assert_eq!(parsed.as_object().map(|object| object.len()), Some(2));
    let ollama: Value = client
        .post(format!("{}/api/generate", served.http_url))
        .json(&json!({"model": MODEL, "stream": false, "format": "json",
            "prompt": "Reply in JSON with the keys city and country: where is the Eiffel Tower?",
            "options": {"temperature": 0, "num_predict": 100}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let parsed: Value = serde_json::from_str(ollama["response"].as_str().unwrap_or(""))
        .map_err(|error| anyhow::anyhow!("{error}: {ollama:#}"))?;
    assert!(parsed.is_object(), "{ollama:#}");

    // gRPC Chat with a tool: the call on the final message.
    let mut grpc = pb::inference_client::InferenceClient::connect(served.grpc_url.clone()).await?;
    let request = pb::ChatRequest {
        model: MODEL.to_owned(),
        messages: vec![pb::ChatMessage {
            role: "user".to_owned(),
            content: "What is 12 times 7? Use the multiply tool.".to_owned(),
            tool_calls: Vec::new(),
        }],
        options: Some(pb::SamplingOptions {
            temperature: Some(0.0),
            ..Default::default()
        }),
        format: None,
        tools: vec![pb::Tool {
            name: "multiply".to_owned(),
            description: "Multiply two integers and return the product.".to_owned(),
            parameters_json: multiply_tool()["function"]["parameters"].to_string(),
        }],
        tool_choice: "multiply".to_owned(),
        single_tool_call: true,
    };
    let mut stream = grpc.chat(request).await?.into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await? {
        last = Some(message);
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("no final message"))?;
    assert_eq!(last.finish_reason, pb::FinishReason::ToolCalls as i32);
    assert_eq!(last.tool_calls.len(), 1);
    assert_eq!(last.tool_calls[0].name, "multiply");
    let arguments: Value = serde_json::from_str(&last.tool_calls[0].arguments_json)?;
    assert_eq!(arguments, json!({"a": 12, "b": 7}));

    // What cannot be served is a 400 naming the problem, before any token.
    for (body, says) in [
        (
            json!({"tools": [multiply_tool()], "tool_choice": {"type": "function", "function": {"name": "divide"}}}),
            "divide",
        ),
        (
            json!({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}),
            "retrieval",
        ),
        (
            json!({"tools": [multiply_tool(), multiply_tool()]}),
            "defined twice",
        ),
        (
            json!({"tools": [multiply_tool()], "response_format": {"type": "json_object"}}),
            "together with tools",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"type": "object", "properties": {"a": {"type": 7}}}}}}),
            "output format",
        ),
        (json!({"response_format": {"type": "yaml"}}), "yaml"),
        (
            json!({"messages": [{"role": "user", "content": "hi", "name": "ada"}]}),
            "participant names",
        ),
    ] {
        let mut request = json!({"model": MODEL, "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hi"}]});
        for (key, value) in body.as_object().into_iter().flatten() {
            request[key] = value.clone();
        }
        let response = client.post(&chat).json(&request).send().await?;
        let status = response.status();
        let error: Value = response.json().await?;
        assert_eq!(status, 400, "{request}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{request}: {error}");
    }
    // The scrubber's model-found kinds (issue 20): the local model lists
    // the names, and only names that occur in the text are replaced.
    let text = "Please send the signed contract to Maria Garcia at Initech, \
        42 Elm Street, Springfield, before Friday.";
    let scrubbed: Value = client
        .post(format!("{}/v1/flotilla/scrub", served.http_url))
        .json(&json!({"text": text, "kinds": ["person", "organisation", "address"]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let sent = scrubbed["text"].as_str().unwrap_or_default();
    for name in ["Maria Garcia", "Initech", "42 Elm Street"] {
        assert!(!sent.contains(name), "{name} is left: {scrubbed:#}");
    }
    let mut restored = sent.to_owned();
    for entry in scrubbed["placeholders"].as_array().into_iter().flatten() {
        let original = entry["original"].as_str().unwrap_or_default();
        assert!(text.contains(original), "a made-up name: {scrubbed:#}");
        restored = restored.replace(entry["placeholder"].as_str().unwrap_or_default(), original);
    }
    assert_eq!(restored, text);
    Ok(())
}
