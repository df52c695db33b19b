//! Escalation policies end to end (issue 20, item 1), with real processes: a
//! controller and an agent, a policy created with `flotilla policy create`
//! and attached with `flotilla assign --policy`. The agent receives it in
//! its desired state and keeps it in `state.json`; `flotilla node show`
//! names it with its key reference. The key itself, set in the agent's
//! environment, appears nowhere: not in the controller's views, not in the
//! agent's state file. A literal key given to `policy create` is refused,
//! and an unknown policy refused at assign time.
//!
//! Then the serving side (items 2 to 4): escalation against a real HTTP
//! server standing in for the cloud provider.

use std::path::Path;
use std::time::Duration;

use flotilla_proto::inference::v1 as pb;
use flotilla_tests::{AgentProcess, ControllerProcess, flotilla, wait_until};
use pb::inference_client::InferenceClient;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// What the agent's environment holds under `UPSTREAM_KEY`: must never show.
const KEY_VALUE: &str = "sk-e2e-test-key-that-must-never-leave-the-node-0123456789";

struct Cli {
    rest_url: String,
    admin: String,
    home: tempfile::TempDir,
}

impl Cli {
    /// Exit status, stdout and stderr of `flotilla args…`.
    fn outcome(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let output = flotilla(&self.rest_url, &self.admin, self.home.path(), args)?;
        Ok((
            output.status.success(),
            String::from_utf8(output.stdout)?,
            String::from_utf8(output.stderr)?,
        ))
    }

    fn text(&self, args: &[&str]) -> anyhow::Result<String> {
        let (success, stdout, stderr) = self.outcome(args)?;
        anyhow::ensure!(success, "flotilla {}: {stderr}", args.join(" "));
        Ok(stdout)
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        Ok(serde_json::from_str(&self.text(&args)?)?)
    }
}

/// A controller with the tiny model pushed as `tiny` 1.0.0, and the CLI.
struct Fleet {
    controller: ControllerProcess,
    cli: Cli,
    _dirs: [tempfile::TempDir; 2],
}

impl Fleet {
    async fn start() -> anyhow::Result<Fleet> {
        let data = tempfile::tempdir()?;
        let files = tempfile::tempdir()?;
        let controller =
            ControllerProcess::start(data.path(), &["--heartbeat-interval-ms", "500"]).await?;
        let cli = Cli {
            rest_url: controller.rest_url.clone(),
            admin: controller.admin_token()?,
            home: tempfile::tempdir()?,
        };
        let model = files.path().join("tiny.gguf");
        std::fs::write(&model, flotilla_gguf::GgufBuilder::tiny_llama(3, 11))?;
        let model = model.to_string_lossy().into_owned();
        cli.json(&[
            "model",
            "push",
            &model,
            "--name",
            "tiny",
            "--version",
            "1.0.0",
        ])?;
        Ok(Fleet {
            controller,
            cli,
            _dirs: [data, files],
        })
    }

    /// Enrols an agent named `name` with the upstream's key in its
    /// environment, in `dir`; returns once the controller lists it.
    async fn agent(&self, name: &str, dir: &Path) -> anyhow::Result<AgentProcess> {
        let token = self
            .cli
            .text(&["node", "token", "create", "--ttl", "10m", "--uses", "1"])?
            .trim()
            .to_owned();
        let grpc = format!("http://{}", self.controller.grpc_addr);
        let agent = AgentProcess::start_with_env(
            dir,
            &[
                "--controller",
                &grpc,
                "--bootstrap-token",
                &token,
                "--name",
                name,
            ],
            &[("UPSTREAM_KEY", KEY_VALUE)],
        )?;
        wait_until(&format!("{name} to enrol"), WAIT, || async {
            self.cli
                .json(&["node", "ls"])
                .map(|nodes| {
                    nodes["items"]
                        .as_array()
                        .is_some_and(|items| !items.is_empty())
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(agent)
    }
}

/// `policy create NAME`, egress allowed to `model` at `url` with the key
/// found by `credential`; the triggers and scrub flags follow.
fn allowed_policy<'a>(
    name: &'a str,
    url: &'a str,
    model: &'a str,
    credential: &'a str,
) -> Vec<&'a str> {
    vec![
        "policy",
        "create",
        name,
        "--egress",
        "allowed",
        "--upstream-url",
        url,
        "--upstream-model",
        model,
        "--credential",
        credential,
    ]
}

/// The policy in the agent's `state.json`, once there.
fn saved_policy(data_dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(data_dir.join("state.json")).ok()?;
    let state: Value = serde_json::from_str(&text).ok()?;
    let policy = state["desired"]["assignment"]["escalation_policy"].clone();
    (!policy.is_null()).then_some(policy)
}

#[tokio::test]
async fn a_policy_assigned_with_the_cli_reaches_the_agent_and_shows_per_node() -> anyhow::Result<()>
{
    let agent_dir = tempfile::tempdir()?;
    let fleet = Fleet::start().await?;
    let cli = &fleet.cli;

    // A literal key is refused, and the refusal does not echo it.
    let mut literal_key = allowed_policy("hybrid", "https://llm.example.com/v1", "big", KEY_VALUE);
    literal_key.extend(["--escalate-model", "auto"]);
    let (success, _, stderr) = cli.outcome(&literal_key)?;
    assert!(!success, "a literal key was accepted");
    assert!(stderr.contains("looks like a literal key"), "{stderr}");
    assert!(
        !stderr.contains(KEY_VALUE),
        "the refusal echoes the key: {stderr}"
    );

    let mut hybrid = allowed_policy(
        "hybrid",
        "https://llm.example.com/v1",
        "big",
        "env:UPSTREAM_KEY",
    );
    hybrid.extend([
        "--escalate-model",
        "auto",
        "--escalate-model",
        "frontier",
        "--on-overload",
        "--scrub",
        "email,phone",
    ]);
    let created = cli.json(&hybrid)?;
    assert_eq!(created["version"], 1, "{created}");
    let shown = cli.text(&["policy", "show", "hybrid@1"])?;
    assert!(shown.contains("env:UPSTREAM_KEY"), "{shown}");
    assert!(shown.contains("model auto|frontier"), "{shown}");
    let listed = cli.text(&["policy", "ls"])?;
    assert!(listed.contains("hybrid"), "{listed}");

    let agent = fleet.agent("edge-1", agent_dir.path()).await?;

    // An unknown policy is refused at assign time; nothing is assigned.
    let (success, _, stderr) = cli.outcome(&[
        "assign",
        "--node",
        "edge-1",
        "--model",
        "tiny",
        "--version",
        "1.0.0",
        "--policy",
        "absent@1",
    ])?;
    assert!(!success, "an unknown policy was assigned");
    assert!(
        stderr.contains("escalation policy absent@1 not found"),
        "{stderr}"
    );

    let assigned = cli.json(&[
        "assign",
        "--node",
        "edge-1",
        "--model",
        "tiny",
        "--version",
        "1.0.0",
        "--policy",
        "hybrid@1",
    ])?;
    assert_eq!(assigned["assignment"]["policy"], "hybrid@1", "{assigned}");
    let waited = wait_until("edge-1 to keep the policy in state.json", WAIT, || async {
        saved_policy(agent_dir.path()).is_some()
    })
    .await;
    if waited.is_err() {
        eprintln!("--- agent log ---\n{}", agent.log());
    }
    waited?;
    let saved = saved_policy(agent_dir.path()).unwrap_or_default();
    assert_eq!(
        (&saved["name"], &saved["version"]),
        (&Value::from("hybrid"), &Value::from(1))
    );
    assert_eq!(saved["spec"]["upstream"]["credential"], "env:UPSTREAM_KEY");
    assert_eq!(
        saved["spec"]["scrub"],
        serde_json::json!(["email", "phone"])
    );

    // `node show` names the policy and the key's reference, never the key.
    let node = cli.json(&["node", "show", "edge-1"])?;
    assert_eq!(node["assignment"]["policy"], "hybrid@1", "{node}");
    let text = cli.text(&["node", "show", "edge-1"])?;
    assert!(text.contains("hybrid@1"), "{text}");
    assert!(text.contains("key env:UPSTREAM_KEY"), "{text}");
    let state = std::fs::read_to_string(agent_dir.path().join("state.json"))?;
    for (what, haystack) in [
        ("node show", text.as_str()),
        ("node show --output json", &node.to_string()),
        ("state.json", state.as_str()),
        ("the agent's log", &agent.log()),
    ] {
        assert!(!haystack.contains(KEY_VALUE), "the key shows in {what}");
    }

    // A new version forbidding egress replaces it on the node.
    cli.json(&["policy", "create", "hybrid", "--egress", "forbidden"])?;
    cli.json(&[
        "assign",
        "--node",
        "edge-1",
        "--model",
        "tiny",
        "--version",
        "1.0.0",
        "--policy",
        "hybrid@2",
    ])?;
    wait_until("edge-1 to apply hybrid@2", WAIT, || async {
        saved_policy(agent_dir.path()).is_some_and(|policy| policy["version"] == 2)
    })
    .await?;
    let saved = saved_policy(agent_dir.path()).unwrap_or_default();
    assert_eq!(saved["spec"]["egress"], "forbidden");
    assert!(saved["spec"]["upstream"].is_null());
    let text = cli.text(&["node", "show", "edge-1"])?;
    assert!(text.contains("hybrid@2, egress forbidden"), "{text}");
    drop(agent);
    Ok(())
}

/// Personal data of every kind the scrubber knows, planted in one message.
const PLANTED: [&str; 8] = [
    "jane.doe+work@example.co.uk",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "123-45-6789",
    "192.168.10.21",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
];

fn planted_message() -> String {
    format!(
        "Write to {} or call {}. Card {}, IBAN {}, SSN {}. The server {} uses token {} \
         and key {}.",
        PLANTED[0],
        PLANTED[1],
        PLANTED[2],
        PLANTED[3],
        PLANTED[4],
        PLANTED[5],
        PLANTED[6],
        PLANTED[7]
    )
}

/// What the stand-in cloud provider received: each call's `Authorization`
/// header and body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>;

/// A real OpenAI-compatible HTTP server standing in for the cloud provider:
/// it records each `chat/completions` call and streams back, in small
/// pieces (so placeholders arrive split), "Noted: " and the last message as
/// it received it; offered tools, it calls the first one with the first
/// placeholder it was sent.
async fn stand_in_upstream() -> anyhow::Result<(String, Received)> {
    use axum::http::HeaderMap;
    let received: Received = Default::default();
    let recorder = received.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let recorder = recorder.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = body.0;
                recorder
                    .lock()
                    .map(|mut calls| calls.push((auth, body.clone())))
                    .ok();
                let said = body["messages"]
                    .as_array()
                    .and_then(|messages| messages.last())
                    .and_then(|message| message["content"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let event = |delta: Value, finish: Value| {
                    let chunk = serde_json::json!({
                        "id": "chatcmpl-standin", "object": "chat.completion.chunk",
                        "model": "frontier-large",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    });
                    format!("data: {chunk}\n\n")
                };
                if said.starts_with("whole:") {
                    // An upstream that ignores `stream: true`.
                    let answer = serde_json::json!({
                        "id": "chatcmpl-standin", "object": "chat.completion",
                        "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": format!("Noted: {said}")}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                    });
                    return ([("content-type", "application/json")], answer.to_string());
                }
                let mut stream = String::new();
                if let Some(tool) = body["tools"][0]["function"]["name"].as_str() {
                    let first = said
                        .split(['<', '>'])
                        .find(|piece| piece.starts_with("EMAIL_"))
                        .map(|piece| format!("<{piece}>"))
                        .unwrap_or_default();
                    let arguments = serde_json::json!({"to": first}).to_string();
                    let (head, tail) = arguments.split_at(arguments.len() / 2);
                    stream.push_str(&event(
                        serde_json::json!({"tool_calls": [{"index": 0, "id": "call_a",
                            "type": "function", "function": {"name": tool, "arguments": head}}]}),
                        Value::Null,
                    ));
                    stream.push_str(&event(
                        serde_json::json!({"tool_calls": [{"index": 0,
                            "function": {"arguments": tail}}]}),
                        Value::from("tool_calls"),
                    ));
                } else {
                    let answer: Vec<char> = format!("Noted: {said}").chars().collect();
                    for piece in answer.chunks(5) {
                        let piece: String = piece.iter().collect();
                        stream.push_str(&event(serde_json::json!({"content": piece}), Value::Null));
                    }
                    stream.push_str(&event(serde_json::json!({}), Value::from("stop")));
                }
                stream.push_str(&format!(
                    "data: {}\n\ndata: [DONE]\n\n",
                    serde_json::json!({"id": "chatcmpl-standin", "choices": [],
                        "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}})
                ));
                ([("content-type", "text/event-stream")], stream)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, received))
}

fn calls(received: &Received) -> Vec<(String, Value)> {
    received
        .lock()
        .map(|calls| calls.clone())
        .unwrap_or_default()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// Issue 20's end-to-end check: a real agent under a policy escalates
/// requests with planted personal data of every kind to a real HTTP server
/// standing in for the cloud provider, over OpenAI (whole, streamed, with
/// tools), Ollama and gRPC, and a prompt too long for the local context by
/// rule. The provider receives none of the planted values; the client gets
/// them back in the answer. Under a policy that forbids egress nothing
/// calls out; with the upstream down the local model answers and the
/// response says the escalation failed.
#[tokio::test]
async fn escalated_requests_leave_scrubbed_and_come_back_restored() -> anyhow::Result<()> {
    let agent_dir = tempfile::tempdir()?;
    let fleet = Fleet::start().await?;
    let cli = &fleet.cli;
    let (upstream_url, received) = stand_in_upstream().await?;
    let dead_url = format!("http://{}/v1", flotilla_tests::free_addr()?);
    for (name, url) in [("hybrid", upstream_url.as_str()), ("deadend", &dead_url)] {
        let mut policy = allowed_policy(name, url, "frontier-large", "env:UPSTREAM_KEY");
        policy.extend([
            "--escalate-model",
            "auto",
            "--header",
            "--prompt-over-context",
        ]);
        cli.json(&policy)?;
    }
    cli.json(&["policy", "create", "airgap", "--egress", "forbidden"])?;

    let agent = fleet.agent("edge-2", agent_dir.path()).await?;
    let base = format!(
        "http://{}",
        agent
            .http_addr
            .ok_or_else(|| anyhow::anyhow!("no HTTP address"))?
    );
    let http = reqwest::Client::new();
    let assign = |policy: &'static str| {
        let agent_dir = agent_dir.path().to_owned();
        let http = http.clone();
        let base = base.clone();
        async move {
            cli.json(&[
                "assign",
                "--node",
                "edge-2",
                "--model",
                "tiny",
                "--version",
                "1.0.0",
                "--policy",
                policy,
            ])?;
            let (name, version) = policy.split_once('@').unwrap_or((policy, "1"));
            let version: u64 = version.parse()?;
            wait_until(
                &format!("edge-2 to serve tiny under {policy}"),
                WAIT,
                || async {
                    let applied = saved_policy(&agent_dir)
                        .is_some_and(|saved| saved["name"] == name && saved["version"] == version);
                    let served = match http.get(format!("{base}/v1/models")).send().await {
                        Ok(response) => response.text().await.unwrap_or_default().contains("tiny"),
                        Err(_) => false,
                    };
                    applied && served
                },
            )
            .await
        }
    };
    let assigned = assign("hybrid@1").await;
    if assigned.is_err() {
        eprintln!("--- agent log ---\n{}", agent.log());
    }
    assigned?;
    let message = planted_message();
    let leaked = |text: &str| -> Vec<&str> {
        PLANTED
            .iter()
            .copied()
            .filter(|planted| text.contains(planted))
            .collect()
    };
    let restored = |text: &str| PLANTED.iter().all(|planted| text.contains(planted));

    // OpenAI, whole: asked for by model name.
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "auto",
            "messages": [{"role": "user", "content": message}],
        }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-flotilla-served-by"), "upstream");
    assert_eq!(
        header(&response, "x-flotilla-escalation-reason"),
        "model_name"
    );
    assert_eq!(
        header(&response, "x-flotilla-upstream-model"),
        "frontier-large"
    );
    let answer: Value = response.json().await?;
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(restored(content), "not restored: {content}");
    assert_eq!(answer["model"], "auto", "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens"], 42, "{answer}");
    let sent = calls(&received);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, format!("Bearer {KEY_VALUE}"));
    assert_eq!(sent[0].1["model"], "frontier-large");
    let upstream_saw = sent[0].1.to_string();
    assert!(
        leaked(&upstream_saw).is_empty(),
        "the upstream received {:?}: {upstream_saw}",
        leaked(&upstream_saw)
    );
    for placeholder in ["<EMAIL_1>", "<PHONE_1>", "<IBAN_1>", "<SSN_1>", "<IP_1>"] {
        assert!(
            upstream_saw.contains(placeholder),
            "{placeholder}: {upstream_saw}"
        );
    }

    // OpenAI, streamed: placeholders split between chunks are restored.
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "auto", "stream": true,
            "messages": [{"role": "user", "content": message}],
        }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-flotilla-served-by"), "upstream");
    let events = response.text().await?;
    let streamed: String = events
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(restored(&streamed), "not restored: {streamed}");

    // An upstream that answers whole despite `stream: true` is read too.
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "auto",
            "messages": [{"role": "user", "content": format!("whole: {message}")}],
        }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await?;
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(restored(content), "not restored: {content}");
    assert_eq!(answer["usage"]["completion_tokens"], 3, "{answer}");

    // OpenAI with tools: the call's arguments come back with the original.
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "auto",
            "messages": [{"role": "user", "content": message}],
            "tools": [{"type": "function", "function": {"name": "send_email",
                "parameters": {"type": "object", "properties": {"to": {"type": "string"}}}}}],
        }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await?;
    let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "send_email", "{answer}");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap_or_default())?;
    assert_eq!(arguments["to"], PLANTED[0], "{answer}");
    assert_eq!(
        answer["choices"][0]["finish_reason"], "tool_calls",
        "{answer}"
    );

    // Ollama: asked for with the header, on the local model's name.
    let response = http
        .post(format!("{base}/api/chat"))
        .header("x-flotilla-escalate", "true")
        .json(&serde_json::json!({
            "model": "tiny", "stream": false,
            "messages": [{"role": "user", "content": message}],
        }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-flotilla-escalation-reason"), "header");
    let answer: Value = response.json().await?;
    let content = answer["message"]["content"].as_str().unwrap_or_default();
    assert!(restored(content), "not restored: {content}");

    // gRPC, with the header as metadata.
    let grpc_addr = agent
        .grpc_addr
        .ok_or_else(|| anyhow::anyhow!("no gRPC address"))?;
    let mut client = InferenceClient::connect(format!("http://{grpc_addr}")).await?;
    let mut request = tonic::Request::new(pb::ChatRequest {
        model: "tiny".to_owned(),
        messages: vec![pb::ChatMessage {
            role: "user".to_owned(),
            content: message.clone(),
            tool_calls: Vec::new(),
        }],
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-flotilla-escalate", "true".parse()?);
    let response = client.chat(request).await?;
    assert_eq!(
        response
            .metadata()
            .get("x-flotilla-served-by")
            .and_then(|value| value.to_str().ok()),
        Some("upstream")
    );
    let mut stream = response.into_inner();
    let mut text = String::new();
    while let Some(message) = stream.message().await? {
        text.push_str(&message.text);
    }
    assert!(restored(&text), "not restored: {text}");

    // A prompt the local model's context cannot hold goes upstream by rule.
    let response = http
        .post(format!("{base}/v1/completions"))
        .json(
            &serde_json::json!({"model": "tiny", "prompt": "word ".repeat(2500),
            "max_tokens": 4}),
        )
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-flotilla-escalation-reason"),
        "prompt_over_context"
    );

    let sent = calls(&received);
    assert_eq!(sent.len(), 7, "one upstream call per escalated request");
    for (_, body) in &sent {
        let body = body.to_string();
        assert!(leaked(&body).is_empty(), "leaked {:?}", leaked(&body));
    }
    // The audit events name the policy and the counts, never the text.
    let log = agent.log();
    assert!(
        log.contains("a request was answered by the policy's upstream"),
        "{log}"
    );
    assert!(log.contains("hybrid@1"), "{log}");
    assert!(leaked(&log).is_empty(), "the log holds {:?}", leaked(&log));
    assert!(!log.contains(KEY_VALUE), "the log holds the key");
    // The heartbeat carries the count to the node view (and the rollout
    // gate on escalation rate).
    wait_until("node show to count the escalations", WAIT, || async {
        cli.text(&["node", "show", "edge-2"])
            .is_ok_and(|text| text.contains("7 escalated"))
    })
    .await?;
    let metrics = flotilla_tests::scrape(&base).await?;
    assert!(
        metrics.contains("flotilla_inference_escalated_total"),
        "{metrics}"
    );

    // A policy that forbids egress never calls out: the header is ignored,
    // the trigger name is not a model here.
    assign("airgap@1").await?;
    let response = http
        .post(format!("{base}/v1/completions"))
        .header("x-flotilla-escalate", "true")
        .json(&serde_json::json!({"model": "tiny", "prompt": message, "max_tokens": 4}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-flotilla-served-by"), "");
    assert_eq!(header(&response, "x-flotilla-model-version"), "1.0.0");
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "auto",
            "messages": [{"role": "user", "content": message}]}))
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    assert_eq!(calls(&received).len(), 7, "a forbidding policy called out");

    // The upstream down: the local model answers, and says escalation failed.
    assign("deadend@1").await?;
    let response = http
        .post(format!("{base}/v1/completions"))
        .header("x-flotilla-escalate", "true")
        .json(&serde_json::json!({"model": "tiny", "prompt": "Hello", "max_tokens": 4}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-flotilla-escalation"), "failed");
    assert!(
        header(&response, "x-flotilla-escalation-error").contains("could not be reached"),
        "{:?}",
        response.headers()
    );
    assert_eq!(header(&response, "x-flotilla-model-version"), "1.0.0");
    drop(agent);
    Ok(())
}
