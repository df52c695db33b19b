//! Observability of real processes against a real OTLP receiver in the
//! test (OTLP/HTTP and OTLP/gRPC, decoded with the protocol's own types):
//! server spans named by route template and RPC, SERVER kind, the HTTP and
//! RPC semantic-convention attributes, a caller's `traceparent` honoured,
//! probes untraced, `OTEL_SERVICE_NAME` obeyed, trace ids in the JSON
//! logs; the agent's spans (sync, download, activation, inference) joined
//! to the controller's by propagated trace context; the CLI's and a
//! forwarding peer's hops in the same trace. Secrets (tokens, the
//! database password) never appear in the logs, even at debug level.

use std::time::Duration;

use flotilla_controller::testing::TestDatabase;
use flotilla_tests::otlp::{OtlpReceiver, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR};
use flotilla_tests::serving::{SERVE_WAIT, ServedModel, cli, openai_chat_answers};
use flotilla_tests::{AgentProcess, ControllerProcess, binary, test_model, wait_until};

const MODEL: &str = "smollm2-135m-instruct";
/// How long a flushed batch may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(15);

/// The forwarding agent's service name.
const FORWARDER: &str = "forwarder-under-test";

/// A second agent on `served`'s controller, without the model: it forwards
/// to the agent that serves it, exporting its spans to `receiver`.
struct Forwarder {
    agent: AgentProcess,
    http_url: String,
    grpc_url: String,
    _dir: tempfile::TempDir,
}

impl Forwarder {
    async fn start(served: &ServedModel, receiver: &OtlpReceiver) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let token = cli(
            &served.controller,
            served.home.path(),
            &["node", "token", "create", "--ttl", "10m", "--uses", "1"],
        )?;
        let controller_url = format!("http://{}", served.controller.grpc_addr);
        let agent = AgentProcess::start_with_env(
            dir.path(),
            &[
                "--controller",
                &controller_url,
                "--bootstrap-token",
                token.trim(),
                "--name",
                "edge-forwarder",
            ],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http_endpoint),
                ("OTEL_SERVICE_NAME", FORWARDER),
            ],
        )?;
        let address = |addr: Option<std::net::SocketAddr>| {
            addr.map(|addr| format!("http://{addr}"))
                .ok_or_else(|| anyhow::anyhow!("the agent has no serving address"))
        };
        let http_url = address(agent.http_addr)?;
        let grpc_url = address(agent.grpc_addr)?;
        let client = reqwest::Client::new();
        let models = format!("{http_url}/v1/models");
        let routed = wait_until(
            "the forwarder to list the peer's model",
            SERVE_WAIT,
            || async {
                let Ok(response) = client.get(&models).send().await else {
                    return false;
                };
                response
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|listed| {
                        listed["data"]
                            .as_array()
                            .is_some_and(|data| data.iter().any(|model| model["id"] == MODEL))
                    })
            },
        )
        .await;
        if let Err(error) = routed {
            eprintln!("--- forwarder log ---\n{}", agent.log());
            return Err(error);
        }
        Ok(Self {
            agent,
            http_url,
            grpc_url,
            _dir: dir,
        })
    }
}

/// A greedy gRPC chat sent with `traceparent` in its metadata.
async fn traced_grpc_chat(url: &str, traceparent: &str) -> anyhow::Result<()> {
    use flotilla_proto::inference::v1 as pb;
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await?;
    let mut client = pb::inference_client::InferenceClient::new(channel);
    let mut request = tonic::Request::new(pb::ChatRequest {
        model: MODEL.to_owned(),
        messages: vec![pb::ChatMessage {
            role: "user".to_owned(),
            content: "Say hi.".to_owned(),
            ..Default::default()
        }],
        options: Some(pb::SamplingOptions {
            temperature: Some(0.0),
            max_tokens: Some(4),
            ..pb::SamplingOptions::default()
        }),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse()?);
    let response = client.chat(request).await?;
    assert_eq!(
        response
            .metadata()
            .get("x-flotilla-served-by")
            .and_then(|value| value.to_str().ok()),
        Some("edge-traced"),
        "a forwarded gRPC answer names the node that served it"
    );
    let mut stream = response.into_inner();
    let mut done = false;
    while let Some(message) = stream.message().await? {
        done |= message.done;
    }
    anyhow::ensure!(done, "the gRPC stream from {url} ended without done");
    Ok(())
}

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

// One trace crosses CLI → controller, and client → agent → peer: a second
// agent without the model forwards chats (HTTP and gRPC) to the one that
// serves it, and the peer's spans hang under the forwarder's `forward`
// span.
//
// Multi-threaded: the receiver must keep serving while this thread blocks
// in `terminate`, which is when the processes flush their spans.
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

    // The CLI passes a caller's TRACEPARENT on.
    let cli_trace_id = "5cf92f3577b34da6a3ce929d0e0e4736";
    let cli_parent_id = "10f067aa0ba902b7";
    let listed = std::process::Command::new(binary("flotilla")?)
        .args(["node", "ls"])
        .env("FLOTILLA_URL", &served.controller.rest_url)
        .env("FLOTILLA_TOKEN", served.controller.admin_token()?)
        .env("HOME", served.home.path())
        .env("TRACEPARENT", traceparent(cli_trace_id, cli_parent_id))
        .output()?;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // A second agent, without the model, forwards to the first.
    let mut forwarder = Forwarder::start(&served, &receiver).await?;
    let forwarded_trace_id = "1af7651916cd43dd8448eb211c80319c";
    let forwarded_parent_id = "c7ad6b7169203331";
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "traceparent",
        reqwest::header::HeaderValue::from_str(&traceparent(
            forwarded_trace_id,
            forwarded_parent_id,
        ))?,
    );
    let forwarding_client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    openai_chat_answers(&forwarding_client, &forwarder.http_url, MODEL, "Say hi.", 4).await?;
    let grpc_trace_id = "2af7651916cd43dd8448eb211c80319c";
    let grpc_parent_id = "d7ad6b7169203331";
    traced_grpc_chat(
        &forwarder.grpc_url,
        &traceparent(grpc_trace_id, grpc_parent_id),
    )
    .await?;

    // All stop gracefully, flushing their spans (the agents' Sync spans
    // end with their streams).
    let forwarder_status = forwarder.agent.process.terminate(Duration::from_secs(30))?;
    assert!(
        forwarder_status.success(),
        "forwarder exited with {forwarder_status}"
    );
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
    assert_eq!(inference.attribute("gen_ai.response.model"), Some(MODEL));
    assert_eq!(inference.attribute("flotilla.model.version"), Some("1.0.0"));
    assert!(
        inference
            .attribute("gen_ai.usage.output_tokens")
            .and_then(|tokens| tokens.parse::<u64>().ok())
            .is_some_and(|tokens| (1..=4).contains(&tokens)),
        "{inference:#?}"
    );
    assert!(
        inference
            .attribute("gen_ai.usage.input_tokens")
            .and_then(|tokens| tokens.parse::<u64>().ok())
            .is_some_and(|tokens| tokens > 0),
        "{inference:#?}"
    );
    assert!(
        inference
            .attribute("flotilla.time_to_first_token_ms")
            .and_then(|ms| ms.parse::<f64>().ok())
            .is_some_and(|ms| ms > 0.0),
        "{inference:#?}"
    );

    // CLI → controller.
    let cli_span = spans
        .wait_for(
            "the controller's span for the CLI's request",
            ARRIVAL,
            |span| span.trace_id == cli_trace_id,
        )
        .await?;
    assert_eq!(cli_span.name, "GET /api/v1/nodes", "{cli_span:#?}");
    assert_eq!(cli_span.parent_span_id, cli_parent_id);

    // Client → forwarder → peer, over HTTP and over gRPC.
    for (surface, trace_id, parent_id, route) in [
        (
            "http",
            forwarded_trace_id,
            forwarded_parent_id,
            "POST /v1/chat/completions",
        ),
        (
            "grpc",
            grpc_trace_id,
            grpc_parent_id,
            "flotilla.inference.v1.Inference/Chat",
        ),
    ] {
        let received = spans
            .wait_for("the forwarder's server span", ARRIVAL, |span| {
                span.service == FORWARDER && span.name == route && span.trace_id == trace_id
            })
            .await?;
        assert_eq!(received.parent_span_id, parent_id, "{received:#?}");
        let forward = spans
            .wait_for("the forwarder's forward span", ARRIVAL, |span| {
                span.name == "forward" && span.parent_span_id == received.span_id
            })
            .await?;
        assert_eq!(forward.kind, SPAN_KIND_CLIENT, "{forward:#?}");
        assert_eq!(forward.attribute("flotilla.surface"), Some(surface));
        assert_eq!(forward.attribute("flotilla.peer"), Some("edge-traced"));
        let peer = spans
            .wait_for(
                "the peer's server span under the forward",
                ARRIVAL,
                |span| span.name == route && span.parent_span_id == forward.span_id,
            )
            .await?;
        assert_eq!(peer.service, "agent-under-test");
        assert_eq!(peer.kind, SPAN_KIND_SERVER);
        assert_eq!(peer.trace_id, trace_id);
        spans
            .wait_for("the peer's inference span", ARRIVAL, |span| {
                span.name == "inference" && span.parent_span_id == peer.span_id
            })
            .await?;
    }

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
