//! The inference APIs over real servers on loopback, with the real engine on
//! the tiny random model from `flotilla_engine::testing` (it loads and
//! generates in milliseconds; its text is noise, which is all these tests
//! need): request validation, OpenAI SSE and Ollama NDJSON framing,
//! not-found, 429 with `Retry-After`, timeouts, client disconnects, the
//! system-prompt policies, and blue/green activation (a failed activation
//! keeps the old model; a swap keeps streams alive).
//!
//! Each test serves its own model name, so the process-wide metrics
//! recorder's counters do not mix between tests running in parallel.
//!
//! - `api`: the OpenAI, Ollama and gRPC surfaces: framing, validation,
//!   not-found, health and reflection.
//! - `load`: the bounded queue, the timeout, disconnects, metrics.
//! - `activation`: blue/green swaps and the system-prompt policies.
//! - `embed`: the embedding routes of every surface.
//! - `routing`: forwarding to a peer, the hop rule, unreachable peers.
//! - `auth`: API keys on every inference route; probes stay open.
//! - `surface`: unsupported fields refused by name, usage once per stream,
//!   the model echoed as named, `/v1/models/{id}` and Ollama's model routes.

mod activation;
mod api;
mod auth;
mod embed;
mod gpu;
mod load;
mod routing;
mod scrub;
mod surface;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::cache::Digest;
use flotilla_agent::reconcile::{
    Activation, Activator, Assignment, SystemPrompt, SystemPromptPolicy,
};
use flotilla_agent::serve::{
    self, Input, Message, Role, ServeConfig, ServeError, ServedModel, Serving,
};
use flotilla_engine::Prompt;
use flotilla_proto::inference::v1 as pb;
use futures::StreamExt;
use pb::inference_client::InferenceClient;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Servers on loopback around one [`Serving`].
struct Harness {
    serving: Serving,
    http: String,
    grpc: SocketAddr,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn assignment(model: &str, version: &str, bytes: &[u8]) -> Assignment {
    Assignment {
        model: model.to_owned(),
        version: version.to_owned(),
        quantization: "Q4_1".to_owned(),
        digest: Digest::of(bytes),
        size_bytes: bytes.len() as u64,
        blob_base_url: "http://127.0.0.1:1".to_owned(),
        system_prompt: None,
        system_prompt_policy: SystemPromptPolicy::Prepend,
        aliases: Vec::new(),
        escalation_policy: None,
        assignment_generation: 1,
    }
}

impl Harness {
    async fn start(config: ServeConfig) -> anyhow::Result<Harness> {
        let serving = Serving::new(config);
        let shutdown = CancellationToken::new();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http = format!("http://{}", http_listener.local_addr()?);
        let grpc = grpc_listener.local_addr()?;
        tokio::spawn(serve::serve_http(
            http_listener,
            serving.clone(),
            Some(serve::metrics::metrics_handle()),
            None,
            shutdown.clone(),
        ));
        tokio::spawn(serve::serve_grpc(
            grpc_listener,
            serving.clone(),
            None,
            shutdown.clone(),
        ));
        Ok(Harness {
            serving,
            http,
            grpc,
            shutdown,
            dir: tempfile::tempdir()?,
            client: reqwest::Client::new(),
        })
    }

    /// Started with the tiny model active as `model` 1.0.0.
    async fn with_model(model: &str, config: ServeConfig) -> anyhow::Result<Harness> {
        let harness = Harness::start(config).await?;
        harness
            .activate(assignment(model, "1.0.0", &tiny_model()))
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(harness)
    }

    /// Stores `bytes` under their digest, as the cache does: written beside
    /// and renamed into place, never rewritten where a loaded model may map
    /// the file (truncating a mapped file is a SIGBUS for its reader).
    fn blob(&self, bytes: &[u8]) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(Digest::of(bytes).to_hex());
        if !path.exists() {
            let part = tempfile::NamedTempFile::new_in(self.dir.path())?;
            std::fs::write(part.path(), bytes)?;
            part.persist(&path)?;
        }
        Ok(path)
    }

    /// Activates `assignment`, whose bytes are the tiny model unless it is
    /// one of the tests' broken files.
    async fn activate(&self, assignment: Assignment) -> Result<(), String> {
        self.activate_bytes(assignment, &tiny_model()).await
    }

    async fn activate_bytes(&self, assignment: Assignment, bytes: &[u8]) -> Result<(), String> {
        let blob_path = self.blob(bytes).map_err(|error| error.to_string())?;
        self.serving
            .activator()
            .activate(Activation {
                assignment,
                blob_path,
            })
            .await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .client
            .post(format!("{}{path}", self.http))
            .json(&body)
            .send()
            .await?)
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .client
            .post(format!("{}{path}", self.http))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .client
            .get(format!("{}{path}", self.http))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn grpc(&self) -> anyhow::Result<InferenceClient<tonic::transport::Channel>> {
        Ok(InferenceClient::connect(format!("http://{}", self.grpc)).await?)
    }

    fn served(&self) -> anyhow::Result<Arc<ServedModel>> {
        self.serving
            .slot
            .current()
            .ok_or_else(|| anyhow::anyhow!("no model is served"))
    }
}

fn tiny_model() -> Vec<u8> {
    flotilla_engine::testing::tiny_model_bytes()
}

/// Polls `check` until it holds or `timeout` passes.
async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of a Prometheus counter or gauge line, 0 when absent.
fn metric(name: &str, labels: &[&str]) -> f64 {
    serve::metrics::metrics_handle()
        .render()
        .lines()
        .find(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

fn greedy_chat(model: &str, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello world"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// The JSON payloads of an SSE body, and whether it ended with `[DONE]`.
fn sse_payloads(body: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    let done = data.last() == Some(&"[DONE]");
    let payloads = data
        .iter()
        .filter(|data| **data != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("every SSE payload is JSON"))
        .collect();
    (payloads, done)
}

fn ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .map(|line| serde_json::from_str(line).expect("every NDJSON line is JSON"))
        .collect()
}
