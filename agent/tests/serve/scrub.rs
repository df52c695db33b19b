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
