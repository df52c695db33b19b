//! The rollouts' REST API against a real controller on loopback, on both
//! stores: every bad input is a 4xx with a message naming the problem, and
//! viewers may read but not change rollouts. (Rollouts that move agents are
//! tested end to end in `tests/tests/rollout.rs`, with simulated agents.)

use flotilla_api_types as dto;
use flotilla_controller::testing::{RawHttp, TestController, TestStore, api_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

flotilla_controller::on_both_stores!(bad_rollout_requests_are_refused_clearly);

/// `POST /api/v1/rollouts` with `body` as it stands: the bodies here are
/// wrong on purpose, so they go as raw JSON rather than through the typed
/// client's `CreateRolloutRequest`.
async fn post_rollout(
    raw: &RawHttp,
    token: &str,
    body: Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let response = raw
        .post("/api/v1/rollouts")
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

fn create(overrides: Value) -> Value {
    let mut body = json!({
        "name": "r1",
        "model": "smol",
        "version": "^1",
        "selector": {"site": "lab"},
    });
    if let (Some(body), Some(overrides)) = (body.as_object_mut(), overrides.as_object()) {
        for (key, value) in overrides {
            body.insert(key.clone(), value.clone());
        }
    }
    body
}

async fn bad_rollout_requests_are_refused_clearly(store: TestStore) -> anyhow::Result<()> {
    let controller = TestController::start(store).await?;
    let admin_token = controller.admin_token.clone();
    let admin = controller.client();
    let raw = controller.raw();

    let cases: &[(Value, StatusCode, &str)] = &[
        (
            json!({"name": "Bad Name"}),
            StatusCode::BAD_REQUEST,
            "invalid rollout name",
        ),
        (
            json!({"selector": {}}),
            StatusCode::BAD_REQUEST,
            "needs a selector",
        ),
        (
            json!({"selector": {"si te": "x"}}),
            StatusCode::BAD_REQUEST,
            "invalid label key",
        ),
        (
            json!({"version": "one"}),
            StatusCode::BAD_REQUEST,
            "invalid version requirement",
        ),
        (
            json!({"quantization": "Q8-0"}),
            StatusCode::BAD_REQUEST,
            "invalid quantization",
        ),
        (
            json!({"prompt": "p@0"}),
            StatusCode::BAD_REQUEST,
            "invalid prompt version",
        ),
        (
            json!({"waves": "50%,10%"}),
            StatusCode::BAD_REQUEST,
            "must not shrink",
        ),
        (
            json!({"waves": "0"}),
            StatusCode::BAD_REQUEST,
            "at least one node",
        ),
        (
            json!({"max_error_rate_percent": 100}),
            StatusCode::BAD_REQUEST,
            "max_error_rate_percent must be below 100",
        ),
        (
            json!({"max_escalation_rate_percent": 100}),
            StatusCode::BAD_REQUEST,
            "max_escalation_rate_percent must be below 100",
        ),
        (
            json!({"max_unavailable": 0}),
            StatusCode::BAD_REQUEST,
            "max_unavailable",
        ),
        (
            json!({"bake_ms": 999_999_999_999u64}),
            StatusCode::BAD_REQUEST,
            "bake time",
        ),
        (
            json!({"aliases": ["Not A Name"]}),
            StatusCode::BAD_REQUEST,
            "invalid alias",
        ),
        (json!({}), StatusCode::NOT_FOUND, "model smol not found"),
    ];
    for (overrides, status, needle) in cases {
        let (got, body) = post_rollout(&raw, &admin_token, create(overrides.clone())).await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, *status, "{overrides}: {body}");
        assert!(
            message.contains(needle),
            "{overrides}: {message:?} lacks {needle:?}"
        );
    }
    // A model without nodes: nothing to roll out to.
    admin
        .create_model(&dto::CreateModelRequest {
            name: "smol".to_owned(),
            description: String::new(),
        })
        .await?;
    let (status, body) = post_rollout(&raw, &admin_token, create(json!({}))).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("matches no active node")
    );
    // Unknown rollouts and commands.
    let (status, _, message) = api_error(admin.rollout("nope").await)?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{message}");
    assert!(message.contains("rollout nope not found"), "{message}");
    let (status, _, message) = api_error(admin.rollout_command("nope", "explode").await)?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{message}");
    assert!(message.contains("unknown rollout command"), "{message}");
    let (status, _, _) = api_error(admin.rollout_command("nope", "pause").await)?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A name no rollout ever had and nothing was ever asked of is a 404
    // (a typo); one that was asked of lists the refused requests, as the
    // events of a deleted rollout stay listed.
    let (status, _, _) = api_error(admin.events(Some("never-named"), None).await)?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let refused = admin.events(Some("nope"), None).await?.items;
    assert!(
        !refused.is_empty() && refused.iter().all(|event| event.message.contains("-> 404")),
        "{refused:?}"
    );
    let (status, _, _) = api_error(admin.events(Some("Bad Name"), None).await)?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let events = admin.events(None, None).await?;
    // The audit log records the refused requests (`api …`); the rollout
    // engine recorded nothing (no `rollout.created` or the like).
    assert!(
        events
            .items
            .iter()
            .all(|event| event.action.starts_with("api ")),
        "{:?}",
        events.items
    );

    // Viewers read, never change.
    let viewer_token = controller.mint_token("vera", "viewer").await?;
    let viewer = controller.client_as(&viewer_token)?;
    viewer.list_rollouts().await?;
    let (status, _) = post_rollout(&raw, &viewer_token, create(json!({}))).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = api_error(viewer.rollout_command("r1", "abort").await)?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = api_error(viewer.delete_rollout("r1", false).await)?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, message) = api_error(admin.delete_rollout("nope", false).await)?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{message}");
    let (status, _, _) = api_error(admin.delete_rollout("Bad Name", false).await)?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = api_error(controller.client_as("not-a-token")?.list_rollouts().await)?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    controller.stop().await
}
