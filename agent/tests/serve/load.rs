//! Load handling: the bounded queue, the per-request timeout, client
//! disconnects, metrics.

use super::*;

#[tokio::test]
async fn a_full_queue_gets_429_with_retry_after_and_resource_exhausted() -> anyhow::Result<()> {
    let config = ServeConfig {
        queue_capacity: 1,
        max_batch: 1,
        ..ServeConfig::default()
    };
    let harness = Harness::with_model("busy", config).await?;
    let served = harness.served()?;
    assert_eq!(served.capacity(), 2);
    // Occupy every place, as two long requests would.
    let held: Vec<_> = (0..served.capacity())
        .map(|_| served.admit(Duration::from_secs(1)))
        .collect::<Result<_, ServeError>>()?;
    let response = harness
        .post("/v1/chat/completions", greedy_chat("busy", 4))
        .await?;
    assert_eq!(response.status(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let response = harness
        .post(
            "/api/generate",
            json!({"model": "busy", "prompt": "hi", "stream": false}),
        )
        .await?;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let status = harness
        .grpc()
        .await?
        .generate(pb::GenerateRequest {
            model: "busy".to_owned(),
            prompt: "hello".to_owned(),
            options: None,
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a full queue accepted a gRPC request"))?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.metadata().get("retry-after").is_some());
    assert!(
        metric(
            "flotilla_inference_requests_total",
            &["model=\"busy\"", "outcome=\"overloaded\""]
        ) >= 3.0
    );

    drop(held);
    let response = harness
        .post("/v1/chat/completions", greedy_chat("busy", 4))
        .await?;
    assert_eq!(response.status(), 200);
    Ok(())
}

#[tokio::test]
async fn a_request_past_its_timeout_gets_504() -> anyhow::Result<()> {
    let config = ServeConfig {
        request_timeout: Duration::from_millis(1),
        ..ServeConfig::default()
    };
    let harness = Harness::with_model("slow", config).await?;
    let response = harness
        .post(
            "/v1/completions",
            json!({"model": "slow", "prompt": "hello", "max_tokens": 3000, "temperature": 0}),
        )
        .await?;
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["code"], "timeout");
    Ok(())
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_generation() -> anyhow::Result<()> {
    let harness = Harness::with_model("leaver", ServeConfig::default()).await?;
    let response = harness
        .post(
            "/v1/completions",
            json!({"model": "leaver", "prompt": "hello", "max_tokens": 3000,
                "temperature": 0, "stream": true}),
        )
        .await?
        .error_for_status()?;
    let mut body = response.bytes_stream();
    let first = body.next().await;
    assert!(first.is_some_and(|chunk| chunk.is_ok()));
    drop(body);
    let served = harness.served()?;
    wait_until(
        "the generation to be cancelled",
        Duration::from_secs(30),
        || {
            served.in_flight() == 0
                && metric(
                    "flotilla_inference_requests_total",
                    &["model=\"leaver\"", "outcome=\"cancelled\""],
                ) >= 1.0
        },
    )
    .await;
    assert_eq!(
        metric(
            "flotilla_inference_requests_total",
            &["model=\"leaver\"", "outcome=\"ok\""]
        ),
        0.0,
        "the 3000-token generation did not run to its end"
    );
    let metrics = serve::metrics::metrics_handle().render();
    assert!(metrics.contains("flotilla_inference_time_to_first_token_seconds"));
    assert!(metrics.contains("flotilla_inference_queue_depth{model=\"leaver\"} 0"));
    Ok(())
}

#[tokio::test]
async fn metrics_are_served_over_http() -> anyhow::Result<()> {
    let harness = Harness::with_model("counted", ServeConfig::default()).await?;
    harness
        .post("/v1/chat/completions", greedy_chat("counted", 3))
        .await?
        .error_for_status()?;
    let text = harness
        .client
        .get(format!("{}/metrics", harness.http))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    assert!(
        text.contains("flotilla_inference_generated_tokens_total{model=\"counted\"}"),
        "{text}"
    );
    assert!(
        text.contains("flotilla_inference_requests_total{model=\"counted\",outcome=\"ok\"} 1"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn refusals_never_wait_for_a_place_to_free_up() -> anyhow::Result<()> {
    let config = ServeConfig {
        queue_capacity: 2,
        max_batch: 2,
        ..ServeConfig::default()
    };
    let harness = Harness::with_model("crowded", config).await?;
    let served = harness.served()?;
    // Every place taken, as long requests would; none frees up below.
    let held: Vec<_> = (0..served.capacity())
        .map(|_| served.admit(Duration::from_secs(1)))
        .collect::<Result<_, ServeError>>()?;
    let rejected_before = serve::stats::global().snapshot().rejected_total;
    let burst: Vec<_> = (0..32)
        .map(|index| {
            let (path, body) = if index % 2 == 0 {
                ("/v1/chat/completions", greedy_chat("crowded", 8))
            } else {
                (
                    "/api/generate",
                    json!({"model": "crowded", "prompt": "hi", "stream": false}),
                )
            };
            let request = harness
                .client
                .post(format!("{}{path}", harness.http))
                .json(&body)
                .send();
            tokio::spawn(request)
        })
        .collect();
    // Had any of them waited for a place, this would never finish: the
    // held places are only released after it.
    let statuses = tokio::time::timeout(Duration::from_secs(60), async {
        let mut statuses = Vec::new();
        for request in burst {
            let response = request.await??;
            statuses.push((
                response.status().as_u16(),
                response.headers().contains_key("retry-after"),
            ));
        }
        anyhow::Ok(statuses)
    })
    .await
    .map_err(|_| anyhow::anyhow!("refused requests waited for a place"))??;
    assert!(
        statuses.iter().all(|&status| status == (429, true)),
        "{statuses:?}"
    );
    assert!(serve::stats::global().snapshot().rejected_total >= rejected_before + 32);
    assert_eq!(served.in_flight(), served.capacity());
    drop(held);
    assert_eq!(served.in_flight(), 0);
    let response = harness
        .post("/v1/chat/completions", greedy_chat("crowded", 4))
        .await?;
    assert_eq!(response.status(), 200);
    Ok(())
}
