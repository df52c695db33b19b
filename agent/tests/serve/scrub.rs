//! `POST /v1/flotilla/scrub`: the scrubber on its own, over HTTP.

use super::*;

#[tokio::test]
async fn scrub_replaces_personal_data_and_names_the_originals() -> anyhow::Result<()> {
    let harness = Harness::start(ServeConfig::default()).await?;
    let response = harness
        .post(
            "/v1/flotilla/scrub",
            json!({"text": "Mail jane@example.com, card 4111 1111 1111 1111, mail jane@example.com"}),
        )
        .await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    assert_eq!(
        body["text"],
        "Mail <EMAIL_1>, card <CARD_1>, mail <EMAIL_1>"
    );
    assert_eq!(
        body["placeholders"],
        json!([
            {"placeholder": "<EMAIL_1>", "kind": "email", "original": "jane@example.com"},
            {"placeholder": "<CARD_1>", "kind": "payment_card", "original": "4111 1111 1111 1111"},
        ])
    );
    assert!(
        metric(
            "flotilla_scrub_redactions_total",
            &["kind=\"payment_card\""]
        ) >= 1.0
    );

    // Only the kinds asked for.
    let body: Value = harness
        .post(
            "/v1/flotilla/scrub",
            json!({"text": "jane@example.com at 10.0.0.1", "kinds": ["ip_address"]}),
        )
        .await?
        .json()
        .await?;
    assert_eq!(body["text"], "jane@example.com at <IP_1>");

    // Bad input: OpenAI's error shape, naming the problem.
    for (request, expected) in [
        (
            json!({"text": "x", "kinds": ["names"]}),
            "unknown kind of personal data \"names\"",
        ),
        (json!({"txt": "x"}), "unknown field `txt`"),
        (json!({"text": 3}), "invalid type"),
    ] {
        let response = harness.post("/v1/flotilla/scrub", request).await?;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{body}");
    }
    Ok(())
}

/// The same scrubber over gRPC `Scrub`; names need a loaded model.
#[tokio::test]
async fn grpc_scrub_answers_as_http_does() -> anyhow::Result<()> {
    let harness = Harness::start(ServeConfig::default()).await?;
    let mut client = harness.grpc().await?;
    let scrubbed = client
        .scrub(pb::ScrubRequest {
            text: "Mail jane@example.com from 10.0.0.1".to_owned(),
            kinds: Vec::new(),
        })
        .await?
        .into_inner();
    assert_eq!(scrubbed.text, "Mail <EMAIL_1> from <IP_1>");
    assert_eq!(
        scrubbed
            .placeholders
            .iter()
            .map(|p| (p.placeholder.as_str(), p.kind.as_str(), p.original.as_str()))
            .collect::<Vec<_>>(),
        [
            ("<EMAIL_1>", "email", "jane@example.com"),
            ("<IP_1>", "ip_address", "10.0.0.1"),
        ]
    );
    let unknown = client
        .scrub(pb::ScrubRequest {
            text: "x".to_owned(),
            kinds: vec!["names".to_owned()],
        })
        .await
        .expect_err("an unknown kind was accepted");
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    let no_model = client
        .scrub(pb::ScrubRequest {
            text: "Ask Maria Garcia".to_owned(),
            kinds: vec!["person".to_owned()],
        })
        .await
        .expect_err("names were listed without a model");
    assert_eq!(no_model.code(), tonic::Code::Unavailable);
    assert!(
        no_model.message().contains("none is loaded"),
        "{no_model:?}"
    );
    Ok(())
}
