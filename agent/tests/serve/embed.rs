//! The embedding routes: OpenAI's `/v1/embeddings`, Ollama's `/api/embed`
//! and `/api/embeddings`, and gRPC's `Embed`, on the tiny model: their
//! shapes, that a batch gives each input's own vector, which ones are unit
//! vectors, the 400s, and a model served elsewhere (forwarded, over HTTP
//! and gRPC, or 404).

use base64::Engine as _;
use flotilla_engine::Prompt;

use super::routing::peer;
use super::*;

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("a list of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn norm(vector: &[f32]) -> f64 {
    vector
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

/// The engine's own pooled vector for `text` (not normalised).
fn raw(harness: &Harness, text: &str) -> anyhow::Result<Vec<f32>> {
    let served = harness.served()?;
    let engine = served.engine();
    let tokens = engine.prompt_tokens(&Prompt::Text(text.to_owned()))?;
    Ok(engine.embed(&[tokens])?.remove(0).vector)
}

fn unit(mut vector: Vec<f32>) -> Vec<f32> {
    flotilla_engine::normalize(&mut vector);
    vector
}

#[tokio::test]
async fn openai_embeddings_are_unit_vectors_each_as_alone() -> anyhow::Result<()> {
    let harness = Harness::with_model("embedder", ServeConfig::default()).await?;
    let texts = ["hello world", "the quick brown fox", "a"];
    let response = harness
        .post(
            "/v1/embeddings",
            json!({"model": "embedder:latest", "input": texts, "encoding_format": "float"}),
        )
        .await?;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-flotilla-model-digest"));
    let body: Value = response.json().await?;
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "embedder:latest");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), texts.len());
    let served = harness.served()?;
    let width = served.engine().model().config().embedding_length;
    let mut tokens = 0;
    for (index, (item, text)) in data.iter().zip(texts).enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], index);
        let vector = floats(&item["embedding"]);
        assert_eq!(vector.len(), width);
        assert!((norm(&vector) - 1.0).abs() < 1e-4, "not a unit vector");
        // Each input in the batch gives the vector it gives alone.
        assert!(close(&vector, &unit(raw(&harness, text)?)), "{text:?}");
        tokens += served
            .engine()
            .prompt_tokens(&Prompt::Text(text.to_owned()))?
            .len();
    }
    assert_eq!(body["usage"]["prompt_tokens"], tokens);
    assert_eq!(body["usage"]["total_tokens"], tokens);

    // A string; base64 (what the openai client asks for by default) is the
    // same floats, little-endian; token ids are the text they spell.
    let one: Value = harness
        .post(
            "/v1/embeddings",
            json!({"model": "embedder", "input": "hello world", "encoding_format": "base64",
                "dimensions": width, "user": "u-1"}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(one["data"][0]["embedding"].as_str().expect("base64 string"))?;
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
        .collect();
    assert!(close(&decoded, &floats(&data[0]["embedding"])));
    let ids = served
        .engine()
        .prompt_tokens(&Prompt::Text("hello world".to_owned()))?;
    let by_ids: Value = harness
        .post(
            "/v1/embeddings",
            json!({"model": "embedder", "input": [ids.clone(), ids]}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert!(close(&floats(&by_ids["data"][1]["embedding"]), &decoded));
    Ok(())
}

#[tokio::test]
async fn bad_embedding_requests_are_400s_naming_what_is_wrong() -> anyhow::Result<()> {
    let harness = Harness::with_model("embedder-bad", ServeConfig::default()).await?;
    let served = harness.served()?;
    let context = served.engine().context_length();
    let long = "hello ".repeat(context + 8);
    for (path, body, says) in [
        (
            "/v1/embeddings",
            json!({"model": "embedder-bad", "input": ""}),
            "empty string",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embedder-bad", "input": []}),
            "empty list",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embedder-bad", "input": "hi", "dimensions": 3}),
            "dimensions",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embedder-bad", "input": "hi", "encoding_format": "int8"}),
            "invalid JSON body",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embedder-bad", "input": "hi", "pooling": "max"}),
            "pooling",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embedder-bad", "input": [[4_000_000_000u64]]}),
            "vocabulary",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embedder-bad", "input": long}),
            "longer than the context",
        ),
        (
            "/api/embed",
            json!({"model": "embedder-bad", "input": long, "truncate": false}),
            "longer than the context",
        ),
        (
            "/api/embed",
            json!({"model": "embedder-bad", "input": "hi", "options": {"mirostat": 2}}),
            "options.mirostat",
        ),
        (
            "/api/embeddings",
            json!({"model": "embedder-bad", "prompt": "hi", "input": "hi"}),
            "input",
        ),
    ] {
        let response = harness.post(path, body.clone()).await?;
        assert_eq!(response.status(), 400, "{path} {body}");
        let text = response.text().await?;
        assert!(text.contains(says), "{path} {body}: {text}");
    }
    // Ollama's default `truncate: true` cuts the long input instead.
    let cut: Value = harness
        .post(
            "/api/embed",
            json!({"model": "embedder-bad", "input": long}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(cut["prompt_eval_count"], context);
    Ok(())
}

#[tokio::test]
async fn ollama_embed_normalises_and_the_legacy_route_does_not() -> anyhow::Result<()> {
    let harness = Harness::with_model("embedder-ollama", ServeConfig::default()).await?;
    let body: Value = harness
        .post(
            "/api/embed",
            json!({"model": "embedder-ollama", "input": ["hello world", "sunny day"],
                "keep_alive": "5m", "options": {"temperature": 0}}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(body["model"], "embedder-ollama");
    let vectors = body["embeddings"].as_array().expect("embeddings");
    assert_eq!(vectors.len(), 2);
    assert!(close(
        &floats(&vectors[0]),
        &unit(raw(&harness, "hello world")?)
    ));
    assert!(close(
        &floats(&vectors[1]),
        &unit(raw(&harness, "sunny day")?)
    ));
    assert!(body["prompt_eval_count"].as_u64().is_some_and(|n| n > 0));
    assert!(body["total_duration"].as_u64().is_some());

    // One string is a list of one; no input, no vectors.
    let one: Value = harness
        .post(
            "/api/embed",
            json!({"model": "embedder-ollama", "input": "hello world"}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert!(close(&floats(&one["embeddings"][0]), &floats(&vectors[0])));
    let none: Value = harness
        .post(
            "/api/embed",
            json!({"model": "embedder-ollama", "input": []}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(none["embeddings"], json!([]));

    // The legacy route: the pooled vector as is, as Ollama returns it.
    let legacy: Value = harness
        .post(
            "/api/embeddings",
            json!({"model": "embedder-ollama", "prompt": "hello world"}),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
    let legacy = floats(&legacy["embedding"]);
    assert!(close(&legacy, &raw(&harness, "hello world")?));
    assert!(
        (norm(&legacy) - 1.0).abs() > 1e-3,
        "the legacy vector was normalised"
    );
    Ok(())
}

#[tokio::test]
async fn grpc_embed_gives_unit_vectors_and_not_found() -> anyhow::Result<()> {
    let harness = Harness::with_model("embedder-grpc", ServeConfig::default()).await?;
    let mut client = harness.grpc().await?;
    let response = client
        .embed(pb::EmbedRequest {
            model: "embedder-grpc".to_owned(),
            inputs: vec!["hello world".to_owned(), "sunny day".to_owned()],
            truncate: false,
        })
        .await?
        .into_inner();
    assert_eq!(response.model, "embedder-grpc");
    assert_eq!(response.version, "1.0.0");
    assert_eq!(response.embeddings.len(), 2);
    assert!(close(
        &response.embeddings[1].values,
        &unit(raw(&harness, "sunny day")?)
    ));
    assert!(response.prompt_tokens > 0);
    let empty = client
        .embed(pb::EmbedRequest {
            model: "embedder-grpc".to_owned(),
            inputs: Vec::new(),
            truncate: false,
        })
        .await
        .expect_err("no inputs");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    let missing = client
        .embed(pb::EmbedRequest {
            model: "elsewhere".to_owned(),
            inputs: vec!["hi".to_owned()],
            truncate: false,
        })
        .await
        .expect_err("not served");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn embeddings_for_a_model_served_elsewhere_are_forwarded_or_404() -> anyhow::Result<()> {
    let owner = Harness::with_model("embedder-routed", ServeConfig::default()).await?;
    let asked = Harness::start(ServeConfig::default()).await?;
    for (path, body) in [
        (
            "/v1/embeddings",
            json!({"model": "embedder-routed", "input": "hi"}),
        ),
        (
            "/api/embed",
            json!({"model": "embedder-routed", "input": "hi"}),
        ),
        (
            "/api/embeddings",
            json!({"model": "embedder-routed", "prompt": "hi"}),
        ),
    ] {
        let response = asked.post(path, body.clone()).await?;
        assert_eq!(response.status(), 404, "{path} with no peer");
        assert!(response.text().await?.contains("embedder-routed"));
    }
    asked.serving.routes.replace(vec![peer(
        "owner",
        "embedder-routed",
        owner.http.clone(),
        format!("http://{}", owner.grpc),
    )]);
    for (path, body, key) in [
        (
            "/v1/embeddings",
            json!({"model": "embedder-routed", "input": "hi"}),
            "/data/0/embedding",
        ),
        (
            "/api/embed",
            json!({"model": "embedder-routed", "input": "hi"}),
            "/embeddings/0",
        ),
        (
            "/api/embeddings",
            json!({"model": "embedder-routed", "prompt": "hi"}),
            "/embedding",
        ),
    ] {
        let direct: Value = owner
            .post(path, body.clone())
            .await?
            .error_for_status()?
            .json()
            .await?;
        let response = asked.post(path, body).await?;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response
                .headers()
                .get("x-flotilla-served-by")
                .and_then(|value| value.to_str().ok()),
            Some("owner")
        );
        let forwarded: Value = response.json().await?;
        assert_eq!(forwarded.pointer(key), direct.pointer(key), "{path}");
    }
    // gRPC: the call is made again on the peer.
    let call = pb::EmbedRequest {
        model: "embedder-routed".to_owned(),
        inputs: vec!["hi".to_owned()],
        truncate: false,
    };
    let direct = owner.grpc().await?.embed(call.clone()).await?.into_inner();
    let response = asked.grpc().await?.embed(call).await?;
    assert_eq!(
        response
            .metadata()
            .get("x-flotilla-served-by")
            .and_then(|value| value.to_str().ok()),
        Some("owner")
    );
    assert_eq!(response.into_inner(), direct);
    Ok(())
}
