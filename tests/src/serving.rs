//! A controller with the real SmolLM2 pushed through the CLI and one agent
//! serving it: the setup every inference end-to-end test starts from.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{AgentProcess, ControllerProcess, flotilla, wait_until};

/// Upload, download and load of 100 MB on loopback, in a debug build.
pub const SERVE_WAIT: Duration = Duration::from_secs(180);

/// A running controller and an agent that serves `model` 1.0.0.
pub struct ServedModel {
    pub controller: ControllerProcess,
    pub agent: AgentProcess,
    /// `http://addr` of the agent's OpenAI/Ollama API.
    pub http_url: String,
    /// `http://addr` of the agent's gRPC inference API.
    pub grpc_url: String,
    /// The CLI's home (its config) and the processes' data directories.
    pub home: tempfile::TempDir,
    _dirs: [tempfile::TempDir; 2],
}

impl ServedModel {
    /// Starts a controller, pushes `gguf` as `model` 1.0.0, enrols agent
    /// `node`, assigns the model to it and waits until it reports ready.
    pub async fn start(gguf: &Path, model: &str, node: &str) -> anyhow::Result<Self> {
        Self::start_with(gguf, model, node, &[]).await
    }

    /// [`ServedModel::start`] with more agent flags.
    pub async fn start_with(
        gguf: &Path,
        model: &str,
        node: &str,
        agent_flags: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(gguf, model, node, agent_flags, &[], &[]).await
    }

    /// [`ServedModel::start_with`] with environment variables for the
    /// controller and for the agent.
    pub async fn start_with_env(
        gguf: &Path,
        model: &str,
        node: &str,
        agent_flags: &[&str],
        controller_env: &[(&str, &str)],
        agent_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let home = tempfile::tempdir()?;
        let agent_dir = tempfile::tempdir()?;
        let controller = ControllerProcess::start_with_env(
            data.path(),
            &["--heartbeat-interval-ms", "500"],
            controller_env,
            None,
        )
        .await?;
        push_model(&controller, home.path(), gguf, model, "1.0.0")?;
        let token = cli(
            &controller,
            home.path(),
            &["node", "token", "create", "--ttl", "10m", "--uses", "1"],
        )?;
        let controller_url = format!("http://{}", controller.grpc_addr);
        let mut flags = vec![
            "--controller",
            &controller_url,
            "--bootstrap-token",
            token.trim(),
            "--name",
            node,
            "--engine-threads",
            "2",
        ];
        flags.extend_from_slice(agent_flags);
        let agent = AgentProcess::start_with_env(agent_dir.path(), &flags, agent_env)?;
        let http_url = format!(
            "http://{}",
            agent
                .http_addr
                .ok_or_else(|| anyhow::anyhow!("no --http address"))?
        );
        let grpc_url = format!(
            "http://{}",
            agent
                .grpc_addr
                .ok_or_else(|| anyhow::anyhow!("no --grpc address"))?
        );
        wait_until("the agent to enrol", SERVE_WAIT, || async {
            node_phase(&controller, home.path(), node).is_some()
        })
        .await?;
        let assign = [
            "assign",
            "--node",
            node,
            "--model",
            model,
            "--version",
            "1.0.0",
        ];
        cli(&controller, home.path(), &assign)?;
        let ready = wait_until("the agent to serve the model", SERVE_WAIT, || async {
            node_phase(&controller, home.path(), node).as_deref() == Some("ready")
        })
        .await;
        if let Err(error) = ready {
            eprintln!("--- agent log ---\n{}", agent.log());
            return Err(error);
        }
        Ok(Self {
            controller,
            agent,
            http_url,
            grpc_url,
            home,
            _dirs: [data, agent_dir],
        })
    }

    /// Node `node`'s observed phase and serving digest, per the controller.
    pub fn serving(&self, node: &str) -> Option<(String, String)> {
        let shown = node_json(&self.controller, self.home.path(), node)?;
        Some((
            shown["observed"]["phase"].as_str()?.to_owned(),
            shown["observed"]["serving_digest"].as_str()?.to_owned(),
        ))
    }
}

/// Runs the CLI against `controller` as admin; its stdout, or an error with
/// its stderr.
pub fn cli(controller: &ControllerProcess, home: &Path, args: &[&str]) -> anyhow::Result<String> {
    let ca_cert = controller
        .ca_cert
        .as_ref()
        .map(|path| path.to_string_lossy().into_owned());
    let args: Vec<&str> = match &ca_cert {
        Some(path) => ["--ca-cert", path.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect(),
        None => args.to_vec(),
    };
    let args = args.as_slice();
    let output = flotilla(&controller.rest_url, &controller.admin_token()?, home, args)?;
    anyhow::ensure!(
        output.status.success(),
        "flotilla {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Uploads the GGUF at `gguf` as `model` `version` with the CLI; the
/// artifact it answers (JSON).
pub fn push_model(
    controller: &ControllerProcess,
    home: &Path,
    gguf: &Path,
    model: &str,
    version: &str,
) -> anyhow::Result<Value> {
    let gguf = gguf.to_string_lossy();
    let pushed = cli(
        controller,
        home,
        &[
            "model",
            "push",
            &gguf,
            "--name",
            model,
            "--version",
            version,
            "--output",
            "json",
        ],
    )?;
    Ok(serde_json::from_str(&pushed)?)
}

/// The observed phase of node `name` per `flotilla node ls`, if it is listed.
pub fn node_phase(controller: &ControllerProcess, home: &Path, name: &str) -> Option<String> {
    let listed: Value =
        serde_json::from_str(&cli(controller, home, &["node", "ls", "--output", "json"]).ok()?)
            .ok()?;
    listed["items"]
        .as_array()?
        .iter()
        .find(|node| node["name"] == name)
        .map(|node| node["observed"]["phase"].as_str().unwrap_or("").to_owned())
}

/// The text of an OpenAI chat-completion SSE stream, and whether it ended
/// with `data: [DONE]`.
pub fn sse_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    let mut done = false;
    for data in body.lines().filter_map(|line| line.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap_or_default();
        text.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
    }
    (text, done)
}

/// Streams one greedy gRPC chat (`question` to `model` at `url`); returns
/// the text and the stream's last message (which carries `done`, usage and
/// the finish reason).
pub async fn grpc_chat(
    url: &str,
    model: &str,
    question: &str,
    max_tokens: u32,
) -> anyhow::Result<(String, flotilla_proto::inference::v1::GenerateResponse)> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await?;
    grpc_chat_over(channel, url, model, question, max_tokens).await
}

/// [`grpc_chat`] to an `https://` URL whose certificate chains to the CA in
/// `ca_pem`.
pub async fn grpc_chat_tls(
    url: &str,
    ca_pem: &[u8],
    model: &str,
    question: &str,
    max_tokens: u32,
) -> anyhow::Result<(String, flotilla_proto::inference::v1::GenerateResponse)> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let channel = Endpoint::from_shared(url.to_owned())?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))?
        .connect()
        .await?;
    grpc_chat_over(channel, url, model, question, max_tokens).await
}

async fn grpc_chat_over(
    channel: tonic::transport::Channel,
    url: &str,
    model: &str,
    question: &str,
    max_tokens: u32,
) -> anyhow::Result<(String, flotilla_proto::inference::v1::GenerateResponse)> {
    use flotilla_proto::inference::v1 as pb;
    let mut client = pb::inference_client::InferenceClient::new(channel);
    let mut stream = client
        .chat(pb::ChatRequest {
            model: model.to_owned(),
            messages: vec![pb::ChatMessage {
                role: "user".to_owned(),
                content: question.to_owned(),
                ..Default::default()
            }],
            options: Some(pb::SamplingOptions {
                temperature: Some(0.0),
                max_tokens: Some(max_tokens),
                ..pb::SamplingOptions::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut text = String::new();
    let mut last = None;
    while let Some(message) = stream.message().await? {
        text.push_str(&message.text);
        last = Some(message);
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("empty gRPC stream from {url}"))?;
    Ok((text, last))
}

/// A copy of the GGUF at `gguf` in `dir` with one letter of its
/// `general.name` changed: the same weights (so it answers the same), but
/// another file and so another blake3 digest, i.e. a new artifact to roll
/// out without a second model download.
pub fn renamed_variant(gguf: &Path, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let mut bytes = std::fs::read(gguf)?;
    // Key, then the value's type (8: string, u32 LE) and length (u64 LE).
    let key = b"general.name\x08\x00\x00\x00";
    let at = bytes
        .windows(key.len())
        .position(|window| window == key)
        .ok_or_else(|| anyhow::anyhow!("no general.name string in {}", gguf.display()))?;
    let value = at + key.len() + 8;
    let first = bytes
        .get_mut(value)
        .ok_or_else(|| anyhow::anyhow!("general.name runs past the end"))?;
    *first = if *first == b'V' { b'W' } else { b'V' };
    let path = dir.join("variant.gguf");
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// `flotilla node show NAME --output json`, parsed.
pub fn node_json(controller: &ControllerProcess, home: &Path, name: &str) -> Option<Value> {
    serde_json::from_str(
        &cli(
            controller,
            home,
            &["node", "show", name, "--output", "json"],
        )
        .ok()?,
    )
    .ok()
}

/// Asks the node at `http` / `grpc` for a model no node serves, over the
/// OpenAI and Ollama HTTP APIs and gRPC: each must answer not-found (404,
/// NOT_FOUND) naming the model.
pub async fn assert_unknown_model_not_found(http: &str, grpc: &str) -> anyhow::Result<()> {
    use flotilla_proto::inference::v1 as pb;
    const UNKNOWN: &str = "llama-3-70b";
    let client = reqwest::Client::new();
    let messages = json!([{"role": "user", "content": "Hello"}]);
    let response = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&json!({"model": UNKNOWN, "messages": messages}))
        .send()
        .await?;
    anyhow::ensure!(response.status() == 404, "OpenAI: {}", response.status());
    let error: Value = response.json().await?;
    anyhow::ensure!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains(UNKNOWN)),
        "OpenAI: {error}"
    );
    for (path, body) in [
        ("/api/chat", json!({"model": UNKNOWN, "messages": messages})),
        (
            "/api/generate",
            json!({"model": UNKNOWN, "prompt": "Hello"}),
        ),
    ] {
        let response = client
            .post(format!("{http}{path}"))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 404, "{path}: {}", response.status());
        let error: Value = response.json().await?;
        anyhow::ensure!(
            error["error"]
                .as_str()
                .is_some_and(|message| message.contains(UNKNOWN)),
            "{path}: {error}"
        );
    }
    let status = pb::inference_client::InferenceClient::connect(grpc.to_owned())
        .await?
        .generate(pb::GenerateRequest {
            model: UNKNOWN.to_owned(),
            prompt: "Hello".to_owned(),
            options: None,
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an unknown model was answered over gRPC"))?;
    anyhow::ensure!(
        status.code() == tonic::Code::NotFound && status.message().contains(UNKNOWN),
        "gRPC: {status:?}"
    );
    Ok(())
}

/// One greedy OpenAI chat (`question` to `model` at `base`), asked whole
/// and streamed: (whole answer, streamed answer). The stream must be SSE
/// and end with `[DONE]`.
pub async fn openai_chat_answers(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    question: &str,
    max_tokens: u32,
) -> anyhow::Result<(String, String)> {
    let chat = json!({"model": model, "messages": [{"role": "user", "content": question}],
        "temperature": 0, "max_tokens": max_tokens});
    let whole: Value = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let whole = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let mut streamed = chat;
    streamed["stream"] = json!(true);
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await?
        .error_for_status()?;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    anyhow::ensure!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let (text, done) = sse_text(&response.text().await?);
    anyhow::ensure!(done, "the SSE stream from {base} ends with [DONE]");
    Ok((whole, text))
}

/// One greedy Ollama chat (`question` to `model` at `base`), streamed (its
/// default) and whole: (whole answer, streamed answer). The NDJSON stream
/// must end with `done`.
pub async fn ollama_chat_answers(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    question: &str,
    max_tokens: u32,
) -> anyhow::Result<(String, String)> {
    let chat = json!({"model": model, "messages": [{"role": "user", "content": question}],
        "options": {"temperature": 0, "num_predict": max_tokens}});
    let body = client
        .post(format!("{base}/api/chat"))
        .json(&chat)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let lines: Vec<Value> = body
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        lines.last().map(|line| line["done"].clone()) == Some(json!(true)),
        "the NDJSON stream from {base} ends with done: {body}"
    );
    let streamed: String = lines
        .iter()
        .filter_map(|line| line["message"]["content"].as_str())
        .collect();
    let whole = ollama_chat_whole(client, base, model, question, max_tokens).await?;
    Ok((whole, streamed))
}

/// One greedy Ollama chat (`question` to `model` at `base`), not streamed: the answer.
pub async fn ollama_chat_whole(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    question: &str,
    max_tokens: u32,
) -> anyhow::Result<String> {
    let chat = json!({"model": model, "stream": false,
        "messages": [{"role": "user", "content": question}],
        "options": {"temperature": 0, "num_predict": max_tokens}});
    let whole: Value = client
        .post(format!("{base}/api/chat"))
        .json(&chat)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(whole["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned())
}
