//! The rollouts' REST API against a real controller on loopback, on both
//! stores: every bad input is a 4xx with a message naming the problem, and
//! viewers may read but not change rollouts. (Rollouts that move agents are
//! tested end to end in `tests/tests/rollout.rs`, with simulated agents.)

use flotilla_api_types as dto;
use flotilla_controller::testing::{TestController, TestStore};
use reqwest::StatusCode;
use serde_json::{Value, json};

flotilla_controller::on_both_stores!(bad_rollout_requests_are_refused_clearly);

struct Api {
    controller: TestController,
    http: reqwest::Client,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.controller.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
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
    let api = Api {
        controller: TestController::start(store).await?,
        http: reqwest::Client::new(),
    };
    let admin = api.controller.admin_token.clone();
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;

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
        let (got, body) = api
            .send(
                post.clone(),
                "/api/v1/rollouts",
                &admin,
                Some(create(overrides.clone())),
            )
            .await?;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, *status, "{overrides}: {body}");
        assert!(
            message.contains(needle),
            "{overrides}: {message:?} lacks {needle:?}"
        );
    }
    // A model without nodes: nothing to roll out to.
    let (status, _) = api
        .send(
            post.clone(),
            "/api/v1/models",
            &admin,
            Some(json!({"name": "smol"})),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = api
        .send(
            post.clone(),
            "/api/v1/rollouts",
            &admin,
            Some(create(json!({}))),
        )
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("matches no active node")
    );
    // Unknown rollouts and commands.
    let (status, body) = api
        .send(get.clone(), "/api/v1/rollouts/nope", &admin, None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("rollout nope not found")
    );
    let (status, body) = api
        .send(post.clone(), "/api/v1/rollouts/nope/explode", &admin, None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown rollout command")
    );
    let (status, _) = api
        .send(post.clone(), "/api/v1/rollouts/nope/pause", &admin, None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A name no rollout ever had and nothing was ever asked of is a 404
    // (a typo); one that was asked of lists the refused requests, as the
    // events of a deleted rollout stay listed.
    let (status, _) = api
        .send(
            get.clone(),
            "/api/v1/events?rollout=never-named",
            &admin,
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api
        .send(get.clone(), "/api/v1/events?rollout=nope", &admin, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    let refused = body["items"].as_array().cloned().unwrap_or_default();
    assert!(
        !refused.is_empty()
            && refused.iter().all(|event| event["message"]
                .as_str()
                .is_some_and(|message| message.contains("-> 404"))),
        "{body}"
    );
    let (status, _) = api
        .send(
            get.clone(),
            "/api/v1/events?rollout=Bad%20Name",
            &admin,
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = api
        .send(get.clone(), "/api/v1/events", &admin, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    let events: dto::EventList = serde_json::from_value(body)?;
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
    let (_, minted) = api
        .send(
            post.clone(),
            "/api/v1/tokens",
            &admin,
            Some(json!({"subject": "vera", "role": "viewer"})),
        )
        .await?;
    let viewer = minted["token"].as_str().unwrap_or_default().to_owned();
    let (status, _) = api
        .send(get.clone(), "/api/v1/rollouts", &viewer, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .send(
            post.clone(),
            "/api/v1/rollouts",
            &viewer,
            Some(create(json!({}))),
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .send(post.clone(), "/api/v1/rollouts/r1/abort", &viewer, None)
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let delete = reqwest::Method::DELETE;
    let (status, _) = api
        .send(delete.clone(), "/api/v1/rollouts/r1", &viewer, None)
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api
        .send(delete.clone(), "/api/v1/rollouts/nope", &admin, None)
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = api
        .send(delete, "/api/v1/rollouts/Bad%20Name", &admin, None)
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .send(get, "/api/v1/rollouts", "not-a-token", None)
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.controller.stop().await
}
