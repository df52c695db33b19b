//! Observability of real processes against a real OTLP receiver in the
//! test (OTLP/HTTP and OTLP/gRPC, decoded with the protocol's own types):
//! server spans named by route template and RPC, SERVER kind, the HTTP and
//! RPC semantic-convention attributes, a caller's `traceparent` honoured,
//! probes untraced, `OTEL_SERVICE_NAME` obeyed, trace ids in the JSON
//! logs; the agent's spans (sync, download, activation, inference) joined
//! to the controller's by propagated trace context. Secrets (tokens, the
//! database password) never appear in the logs, even at debug level.

use std::time::Duration;

use flotilla_controller::testing::TestDatabase;
use flotilla_tests::otlp::{OtlpReceiver, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR};
use flotilla_tests::serving::{ServedModel, openai_chat_answers};
use flotilla_tests::{ControllerProcess, test_model};

const MODEL: &str = "smollm2-135m-instruct";
/// How long a flushed batch may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(15);

/// A W3C traceparent with fixed, recognisable ids.
fn traceparent(trace_id: &str, parent_id: &str) -> String {
    format!("00-{trace_id}-{parent_id}-01")
}

#[tokio::test]
async fn controller_spans_follow_the_conventions_and_secrets_stay_out_of_logs() -> anyhow::Result<()>
{
    let receiver = OtlpReceiver::start().await?;
    let database = TestDatabase::postgres().await?;
    // Trust auth ignores the password, so it can be a marker to look for.
    let password = "s3cret-db-password-marker";
    let mut database_url = reqwest::Url::parse(&database.url)?;
    let _ = database_url.set_password(Some(password));
    let data = tempfile::tempdir()?;
    let log_path = data.path().join("controller.log");
    let mut controller = ControllerProcess::start_with_env(
        &data.path().join("state"),
        &["--database-url", database_url.as_str()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http_endpoint),
            ("OTEL_SERVICE_NAME", "controller-under-test"),
            ("RUST_LOG", "debug"),
            ("FLOTILLA_LOG_FORMAT", "json"),
        ],
        Some(&log_path),
    )
    .await?;
    let token = controller.admin_token()?;
    let client = reqwest::Client::new();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let response = client
        .get(format!("{}/api/v1/models", controller.rest_url))
        .bearer_auth(&token)
        .header("traceparent", traceparent(trace_id, parent_id))
        .send()
        .await?;
    assert!(response.status().is_success());
    let missing = client
        .get(format!(
            "{}/api/v1/models/no-such-model",
            controller.rest_url
        ))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    let refused = client
        .get(format!("{}/api/v1/models", controller.rest_url))
        .bearer_auth("forged.token.value")
        .send()
        .await?;
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);
    for probe in ["/readyz", "/healthz", "/metrics"] {
        client
            .get(format!("{}{probe}", controller.rest_url))
            .send()
            .await?
            .error_for_status()?;
    }

    // A graceful stop flushes the batch exporter.
    let status = controller.process.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "controller exited with {status}");
    let listed = receiver
        .spans
        .wait_for(
            "GET /api/v1/models in the caller's trace",
            ARRIVAL,
            |span| span.name == "GET /api/v1/models" && span.trace_id == trace_id,
        )
        .await?;
    assert_eq!(listed.parent_span_id, parent_id, "{listed:#?}");
    assert_eq!(listed.kind, SPAN_KIND_SERVER, "{listed:#?}");
    assert_eq!(listed.service, "controller-under-test");
    assert_eq!(listed.attribute("http.request.method"), Some("GET"));
    assert_eq!(listed.attribute("http.route"), Some("/api/v1/models"));
    assert_eq!(listed.attribute("http.response.status_code"), Some("200"));
    let not_found = receiver
        .spans
        .wait_for("GET /api/v1/models/{name}", ARRIVAL, |span| {
            span.name == "GET /api/v1/models/{name}"
        })
        .await?;
    assert_eq!(
        not_found.attribute("http.response.status_code"),
        Some("404")
    );
    assert_eq!(
        not_found.attribute("url.path"),
        Some("/api/v1/models/no-such-model")
    );
    // A 4xx is the client's error: a server span leaves its status unset.
    assert_ne!(not_found.status_code, STATUS_ERROR, "{not_found:#?}");
    // Each request without a traceparent starts its own trace.
    assert_ne!(not_found.trace_id, trace_id);
    let untraced: Vec<_> = receiver
        .spans
        .all()
        .into_iter()
        .filter(|span| {
            ["readyz", "healthz", "metrics"]
                .iter()
                .any(|probe| span.name.contains(probe))
        })
        .collect();
    assert!(untraced.is_empty(), "probes were traced: {untraced:#?}");

    let logs = std::fs::read_to_string(&log_path)?;
    assert!(logs.contains("\"level\""), "logs are JSON: {logs}");
    assert!(
        logs.contains(&format!("\"trace_id\":\"{trace_id}\"")),
        "no log line carries the request's trace id: {logs}"
    );
    assert!(
        !logs.contains(&token),
        "the admin token leaked into the logs"
    );
    assert!(
        !logs.contains("forged.token.value"),
        "a presented token leaked into the logs"
    );
    assert!(
        !logs.contains(password),
        "the database password leaked into the logs"
    );
    let keys = std::fs::read_to_string(data.path().join("state/auth-keys.toml"))?;
    for line in keys.lines().filter(|line| line.starts_with("secret")) {
        let secret = line.split('"').nth(1).unwrap_or_default();
        assert!(
            !secret.is_empty() && !logs.contains(secret),
            "a JWT key leaked into the logs"
        );
    }
    Ok(())
}

// Multi-threaded: the receiver must keep serving while this thread blocks
// in `terminate`, which is when both processes flush their spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_and_the_agents_work_are_traced_across_processes() -> anyhow::Result<()> {
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let receiver = OtlpReceiver::start().await?;
    // The controller exports over OTLP/HTTP, the agent over OTLP/gRPC.
    let mut served = ServedModel::start_with_env(
        &model,
        MODEL,
        "edge-traced",
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http_endpoint)],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.grpc_endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "agent-under-test"),
        ],
    )
    .await?;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent_id = "b7ad6b7169203331";
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "traceparent",
        reqwest::header::HeaderValue::from_str(&traceparent(trace_id, parent_id))?,
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    openai_chat_answers(&client, &served.http_url, MODEL, "Say hi.", 4).await?;
    // Both stop gracefully, flushing their spans (the agent's Sync span
    // ends with its stream).
    let agent_status = served.agent.process.terminate(Duration::from_secs(30))?;
    assert!(agent_status.success(), "agent exited with {agent_status}");
    let controller_status = served
        .controller
        .process
        .terminate(Duration::from_secs(30))?;
    assert!(
        controller_status.success(),
        "controller exited with {controller_status}"
    );
    let spans = &receiver.spans;

    let chat = spans
        .wait_for(
            "the agent's chat span in the caller's trace",
            ARRIVAL,
            |span| span.name == "POST /v1/chat/completions" && span.trace_id == trace_id,
        )
        .await?;
    assert_eq!(chat.service, "agent-under-test");
    assert_eq!(chat.kind, SPAN_KIND_SERVER);
    assert_eq!(chat.parent_span_id, parent_id);
    let inference = spans
        .wait_for("the inference span under the chat", ARRIVAL, |span| {
            span.name == "inference" && span.parent_span_id == chat.span_id
        })
        .await?;
    assert_eq!(inference.attribute("gen_ai.request.model"), Some(MODEL));

    // The agent's Sync stream, and the controller's side of it.
    let sync = spans
        .wait_for("the agent's sync span", ARRIVAL, |span| {
            span.name == "sync" && span.service == "agent-under-test"
        })
        .await?;
    assert_eq!(sync.kind, SPAN_KIND_CLIENT);
    let served_sync = spans
        .wait_for(
            "the controller's Fleet/Sync span under it",
            ARRIVAL,
            |span| {
                span.name == "flotilla.fleet.v1.Fleet/Sync" && span.parent_span_id == sync.span_id
            },
        )
        .await?;
    assert_eq!(served_sync.kind, SPAN_KIND_SERVER);
    assert_eq!(served_sync.attribute("rpc.system.name"), Some("grpc"));
    assert_eq!(
        served_sync.attribute("rpc.method"),
        Some("flotilla.fleet.v1.Fleet/Sync")
    );
    spans
        .wait_for(
            "the controller's Enroll span under the agent's enrol",
            ARRIVAL,
            |span| span.name == "flotilla.fleet.v1.Fleet/Enroll" && !span.parent_span_id.is_empty(),
        )
        .await?;

    // The artifact download: the agent's span, and the controller's blob
    // request under it.
    let download = spans
        .wait_for("the agent's download span", ARRIVAL, |span| {
            span.name == "download"
        })
        .await?;
    spans
        .wait_for(
            "the controller's blob request under the download",
            ARRIVAL,
            |span| {
                span.name == "GET /api/v1/blobs/{digest}" && span.parent_span_id == download.span_id
            },
        )
        .await?;
    spans
        .wait_for("the agent's activation span", ARRIVAL, |span| {
            span.name == "activate" && span.attribute("model") == Some(MODEL)
        })
        .await?;
    Ok(())
}
