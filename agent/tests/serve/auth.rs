//! API keys and JWTs on the inference APIs: without a valid key or token
//! every inference route refuses (401 in the surface's error shape, gRPC
//! UNAUTHENTICATED); with one it answers; probes, metrics and gRPC health
//! stay open.

use flotilla_agent::serve::{ApiKeys, InferenceAuth, JwtVerifier};
use flotilla_proto::inference::v1 as pb;

use super::*;

const KEY: &str = "fleet-key-0123456789abcdef";

#[tokio::test]
async fn a_valid_api_key_is_required_on_every_inference_route() -> anyhow::Result<()> {
    let config = ServeConfig {
        auth: InferenceAuth::new(
            Some(ApiKeys::parse(&format!("{KEY}\n")).map_err(anyhow::Error::msg)?),
            None,
        )
        .map(Arc::new),
        ..ServeConfig::default()
    };
    let harness = Harness::with_model("guarded", config).await?;
    let url = |path: &str| format!("{}{path}", harness.http);

    // No key, a wrong key, another scheme: refused in each surface's shape.
    for (path, authorization) in [
        ("/v1/chat/completions", None),
        ("/v1/chat/completions", Some("Bearer wrong-key-0123456789")),
        ("/api/chat", Some(&*format!("Basic {KEY}"))),
    ] {
        let mut request = harness
            .client
            .post(url(path))
            .json(&greedy_chat("guarded", 2));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await?;
        assert_eq!(response.status(), 401, "{path} {authorization:?}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let body: Value = response.json().await?;
        if path.starts_with("/v1/") {
            assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        } else {
            assert!(
                body["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("API key"),
                "{body}"
            );
        }
    }
    let listed = harness.client.get(url("/api/tags")).send().await?;
    assert_eq!(listed.status(), 401);

    // With the key, it answers.
    let answered = harness
        .client
        .post(url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&greedy_chat("guarded", 2))
        .send()
        .await?;
    assert_eq!(answered.status(), 200);
    let models = harness
        .client
        .get(url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(models.status(), 200);
    // Probes and metrics stay open.
    assert_eq!(harness.client.get(url("/")).send().await?.status(), 200);
    assert_eq!(
        harness.client.get(url("/metrics")).send().await?.status(),
        200
    );

    // gRPC: UNAUTHENTICATED without the key, answers with it; health open.
    let mut client = harness.grpc().await?;
    let refused = client
        .list_models(pb::ListModelsRequest {})
        .await
        .expect_err("no key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(pb::ListModelsRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse()?);
    let listed = client.list_models(request).await?.into_inner();
    assert_eq!(listed.models[0].name, "guarded");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", harness.grpc))?
        .connect()
        .await?;
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    assert_eq!(
        health.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    Ok(())
}

#[tokio::test]
async fn jwts_from_the_configured_key_are_accepted_beside_api_keys() -> anyhow::Result<()> {
    const SECRET: &[u8] = b"inference-only-secret-0123456789abcdef";
    let jwt = JwtVerifier::from_key(SECRET, "flotilla-inference", Some("https://idp.example"))
        .map_err(anyhow::Error::msg)?;
    let keys = ApiKeys::parse(&format!("{KEY}\n")).map_err(anyhow::Error::msg)?;
    let config = ServeConfig {
        auth: InferenceAuth::new(Some(keys), Some(jwt)).map(Arc::new),
        ..ServeConfig::default()
    };
    let harness = Harness::with_model("tokened", config).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = |audience: &str, expires: u64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "billing-app", "aud": audience, "iss": "https://idp.example",
                "exp": expires}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
    };
    let chat = |bearer: String| {
        harness
            .client
            .post(format!("{}/v1/chat/completions", harness.http))
            .bearer_auth(bearer)
            .json(&greedy_chat("tokened", 2))
            .send()
    };
    assert_eq!(
        chat(token("flotilla-inference", now + 300)?)
            .await?
            .status(),
        200
    );
    assert_eq!(
        chat(KEY.to_owned()).await?.status(),
        200,
        "API keys still work"
    );
    for refused in [
        token("flotilla-inference", now - 3600)?,
        token("controller", now + 300)?,
    ] {
        assert_eq!(chat(refused).await?.status(), 401);
    }

    let mut client = harness.grpc().await?;
    let mut request = tonic::Request::new(pb::ListModelsRequest {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token("flotilla-inference", now + 300)?).parse()?,
    );
    let listed = client.list_models(request).await?.into_inner();
    assert_eq!(listed.models[0].name, "tokened");
    Ok(())
}
