//! Forwarding to peers in-process: two servers on loopback, the routing
//! directory filled by hand (the sync loop fills it in production).

use flotilla_agent::routing::Peer;

use super::*;

pub(super) fn peer(node: &str, model: &str, http_url: String, grpc_url: String) -> Peer {
    Peer {
        model: model.to_owned(),
        version: "1.0.0".to_owned(),
        node: node.to_owned(),
        http_url,
        grpc_url,
        load: 0,
        queue_depth: 0,
        queue_capacity: 20,
        aliases: Vec::new(),
        // The artifact the peer really serves: forwarding refuses an answer
        // that names another one.
        digest: Digest::of(&tiny_model()).to_hex(),
        size_bytes: 1234,
        quantization: "Q8_0".to_owned(),
    }
}

#[tokio::test]
async fn a_node_forwards_to_the_peer_serving_the_model_once() -> anyhow::Result<()> {
    let owner = Harness::with_model("routed", ServeConfig::default()).await?;
    let asked = Harness::start(ServeConfig::default()).await?;
    asked.serving.routes.replace(vec![peer(
        "owner",
        "routed",
        owner.http.clone(),
        format!("http://{}", owner.grpc),
    )]);

    // HTTP: the peer's answer, relayed unchanged.
    let direct: Value = owner
        .post("/v1/chat/completions", greedy_chat("routed", 6))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let response = asked
        .post("/v1/chat/completions", greedy_chat("routed", 6))
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("x-flotilla-served-by")
            .and_then(|value| value.to_str().ok()),
        Some("owner")
    );
    let forwarded: Value = response.json().await?;
    assert_eq!(
        forwarded["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
    let body = asked
        .post(
            "/api/chat",
            json!({"model": "routed:latest", "messages": [{"role": "user", "content": "hi"}],
                "options": {"temperature": 0, "num_predict": 4}}),
        )
        .await?
        .error_for_status()?
        .text()
        .await?;
    assert!(body.lines().count() >= 2, "{body}");

    // gRPC: the call is made again on the peer.
    let mut client = asked.grpc().await?;
    let mut stream = client
        .generate(pb::GenerateRequest {
            model: "routed".to_owned(),
            prompt: "hello".to_owned(),
            options: Some(pb::SamplingOptions {
                max_tokens: Some(4),
                temperature: Some(0.0),
                ..pb::SamplingOptions::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut done = false;
    while let Some(message) = stream.message().await? {
        assert_eq!(message.model, "routed");
        done |= message.done;
    }
    assert!(done);

    // Listing: the routed model, not local, described by the directory.
    let models = asked.get("/v1/models").await?;
    assert_eq!(models["data"][0]["id"], "routed", "{models}");
    assert_eq!(models["data"][0]["local"], false, "{models}");
    assert_eq!(models["data"][0]["owned_by"], "flotilla:owner", "{models}");
    assert_eq!(models["data"][0]["quantization"], "Q8_0", "{models}");
    let tags = asked.get("/api/tags").await?;
    let tag = &tags["models"][0];
    assert_eq!(tag["name"], "routed:latest", "{tags}");
    assert_eq!(tag["local"], false, "{tags}");
    assert_eq!(tag["node"], "owner", "{tags}");
    assert_eq!(tag["digest"], Digest::of(&tiny_model()).to_hex(), "{tags}");
    assert_eq!(tag["size"], 1234, "{tags}");
    assert_eq!(tag["details"]["quantization_level"], "Q8_0", "{tags}");
    let listed = client
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner();
    assert_eq!(listed.models.len(), 1);
    let model = &listed.models[0];
    assert!(!model.local);
    assert_eq!(
        (model.node.as_str(), model.digest.as_str(), model.size_bytes),
        ("owner", Digest::of(&tiny_model()).to_hex().as_str(), 1234)
    );

    // Already forwarded once: not forwarded again.
    let response = asked
        .client
        .post(format!("{}/v1/chat/completions", asked.http))
        .header("x-flotilla-hops", "1")
        .json(&greedy_chat("routed", 4))
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    let mut request = tonic::Request::new(pb::GenerateRequest {
        model: "routed".to_owned(),
        prompt: "hello".to_owned(),
        options: None,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-flotilla-hops", "1".parse()?);
    let status = client
        .generate(request)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a second hop was forwarded"))?;
    assert_eq!(status.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn unreachable_peers_are_a_bad_gateway_naming_the_model() -> anyhow::Result<()> {
    let asked = Harness::start(ServeConfig::default()).await?;
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    asked.serving.routes.replace(vec![peer(
        "gone",
        "vanished",
        format!("http://{closed}"),
        format!("http://{closed}"),
    )]);
    let response = asked
        .post("/v1/chat/completions", greedy_chat("vanished", 4))
        .await?;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "peer_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("vanished") && message.contains("gone"),
        "{body}"
    );
    let response = asked
        .post(
            "/api/generate",
            json!({"model": "vanished", "prompt": "hi"}),
        )
        .await?;
    assert_eq!(response.status(), 502);
    let status = asked
        .grpc()
        .await?
        .chat(pb::ChatRequest {
            model: "vanished".to_owned(),
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
        .ok_or_else(|| anyhow::anyhow!("an unreachable peer answered"))?;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("vanished"), "{status:?}");
    Ok(())
}

/// A node whose queue is full sends the request to a peer that had room at
/// its latest heartbeat; when none takes it, the client gets the node's own
/// 429 / RESOURCE_EXHAUSTED with its retry advice, not a gateway error.
#[tokio::test]
async fn a_full_node_overflows_to_a_peer_with_room() -> anyhow::Result<()> {
    let full_config = || ServeConfig {
        queue_capacity: 1,
        max_batch: 1,
        ..ServeConfig::default()
    };
    let busy = Harness::with_model("routed", full_config()).await?;
    let idle = Harness::with_model("routed", full_config()).await?;
    let to_idle = peer(
        "idle",
        "routed",
        idle.http.clone(),
        format!("http://{}", idle.grpc),
    );
    busy.serving.routes.replace(vec![to_idle.clone()]);
    let served = busy.served()?;
    let _held: Vec<_> = (0..served.capacity())
        .map(|_| served.admit(Duration::from_secs(1)))
        .collect::<Result<_, ServeError>>()?;
    let served_by = |response: &reqwest::Response| {
        response
            .headers()
            .get("x-flotilla-served-by")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };

    // HTTP and gRPC go to the idle peer.
    let response = busy
        .post("/v1/chat/completions", greedy_chat("routed", 4))
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(served_by(&response).as_deref(), Some("idle"));
    let answered = busy
        .grpc()
        .await?
        .generate(pb::GenerateRequest {
            model: "routed".to_owned(),
            prompt: "hello".to_owned(),
            options: Some(pb::SamplingOptions {
                max_tokens: Some(2),
                temperature: Some(0.0),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        answered
            .metadata()
            .get("x-flotilla-served-by")
            .and_then(|value| value.to_str().ok()),
        Some("idle")
    );
    drop(answered);

    // A peer that was full at its heartbeat is not asked at all.
    let mut full = to_idle.clone();
    full.queue_depth = 20;
    busy.serving.routes.replace(vec![full]);
    let response = busy
        .post("/v1/chat/completions", greedy_chat("routed", 4))
        .await?;
    assert_eq!(response.status(), 429);
    assert_eq!(served_by(&response), None);
    assert!(response.headers().contains_key("retry-after"));

    // One that filled up since answers 429 / RESOURCE_EXHAUSTED itself:
    // the client still gets this node's refusal.
    busy.serving.routes.replace(vec![to_idle]);
    let idle_served = idle.served()?;
    // The calls forwarded above (the gRPC stream dropped mid-answer) may
    // still hold their places for a moment.
    wait_until(
        "the idle peer's queue to drain",
        Duration::from_secs(30),
        || idle_served.in_flight() == 0,
    )
    .await;
    let _idle_held: Vec<_> = (0..idle_served.capacity())
        .map(|_| idle_served.admit(Duration::from_secs(1)))
        .collect::<Result<_, ServeError>>()?;
    let response = busy
        .post("/v1/chat/completions", greedy_chat("routed", 4))
        .await?;
    assert_eq!(response.status(), 429);
    assert_eq!(served_by(&response), None);
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    let status = busy
        .grpc()
        .await?
        .generate(pb::GenerateRequest {
            model: "routed".to_owned(),
            prompt: "hello".to_owned(),
            options: None,
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a full fleet accepted a gRPC request"))?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    Ok(())
}
