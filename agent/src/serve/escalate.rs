//! Escalation (issue 20): answering a request through the policy's
//! OpenAI-compatible upstream instead of the local model, with personal
//! data and secrets scrubbed before anything leaves the node and put back
//! in the answer on the way in.
//!
//! [`Escalation::on_request`] and [`Escalation::after_local`] decide, from
//! the policy in force, whether a request escalates and why; `dispatch`
//! asks them. [`start`] makes the call: the request, as the surfaces parsed
//! it ([`InferenceRequest`]), becomes one streamed `chat/completions` call
//! (a plain-text prompt goes as one user message: frontier APIs are
//! chat-first), and the upstream's stream comes back as the same [`Chunk`]s
//! a local generation yields, so the OpenAI, Ollama and gRPC surfaces encode
//! an escalated answer exactly as a local one. Tool calls the upstream makes
//! are written into the text in the Hermes syntax the local engine uses
//! (`<tool_call>{…}</tool_call>`), so that one parser
//! ([`super::Completion::text_and_calls`]) finds the calls of both.
//!
//! Scrubbing covers every message and the arguments of replayed tool calls;
//! tool definitions and output schemas are the application's, not the
//! user's, and go as they are. The policy's kinds are found by pattern,
//! and people's and organisations' names and street addresses, where the
//! policy asks for them, by the local model (`ask_local::find_names`)
//! before the call; when they cannot be found, nothing is sent. One
//! [`Placeholders`] serves the whole exchange, so a value gets the same
//! placeholder in every message and the answer's placeholders are
//! restored whether they arrive whole or split between chunks
//! ([`flotilla_scrub::Restorer`]).
//!
//! Each escalation is an audit event (`flotilla::audit` target, at info):
//! the policy, the reason, the upstream's host and model, redaction counts
//! by kind and token counts, never the text; and Prometheus counters
//! (`flotilla_inference_escalated_total{reason,outcome}`). The key is read
//! at call time ([`resolve_credential`]) and never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_engine::tools::ToolChoice;
use flotilla_scrub::{Kind, Placeholders, Scrubber};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::ServeError;
use super::generation::{AnsweredBy, Chunk, FinishReason, Finished, Generation};
use super::request::{InferenceRequest, Input, Message, OutputFormat, Role};
pub(super) use crate::reconcile::policy::ESCALATE_HEADER;
use crate::reconcile::policy::{AssignedPolicy, Feature, Upstream, resolve_credential};

/// How long the upstream may take to accept the connection.
pub(super) const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of an upstream's error body quoted back to the client.
const MAX_ERROR_BODY_QUOTED: usize = 300;

/// Chunks buffered between the upstream reader and a slow client.
const CHANNEL_CAPACITY: usize = 64;

/// Why a request escalated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// The client asked for one of the policy's model names (`auto`).
    ModelName,
    /// The client set [`ESCALATE_HEADER`].
    Header,
    /// It uses a feature the local model must not serve.
    Feature(Feature),
    /// The prompt does not fit the local model's context.
    PromptOverContext,
    /// The local queue was full.
    Overload,
    /// The local generation failed before its first output.
    Failure,
    /// The local model judged itself unlikely to answer well.
    SelfCheck,
}

impl Reason {
    /// As metrics, audit events and the escalation-reason header name it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Reason::ModelName => "model_name",
            Reason::Header => "header",
            Reason::Feature(Feature::Tools) => "tools",
            Reason::Feature(Feature::ResponseFormat) => "response_format",
            Reason::PromptOverContext => "prompt_over_context",
            Reason::Overload => "overload",
            Reason::Failure => "failure",
            Reason::SelfCheck => "self_check",
        }
    }
}

/// A decision to escalate: the policy that allows it and why.
#[derive(Debug, Clone)]
pub(super) struct Escalation {
    pub policy: Arc<AssignedPolicy>,
    pub reason: Reason,
}

impl Escalation {
    /// Whether `request` escalates before anything runs here: asked for by
    /// model name or header, or using a feature the policy keeps off the
    /// local model. `None` without a policy or where egress is forbidden.
    pub(super) fn on_request(
        policy: Option<&Arc<AssignedPolicy>>,
        request: &InferenceRequest,
        header: bool,
    ) -> Option<Escalation> {
        let policy = allowing_egress(policy)?;
        let triggers = &policy.spec.triggers;
        let reason = if triggers.model_names.contains(&request.model) {
            Reason::ModelName
        } else if triggers.header && header {
            Reason::Header
        } else if triggers.features.contains(&Feature::Tools) && request.tools.is_some() {
            Reason::Feature(Feature::Tools)
        } else if triggers.features.contains(&Feature::ResponseFormat)
            && request.format != OutputFormat::Text
        {
            Reason::Feature(Feature::ResponseFormat)
        } else {
            return None;
        };
        Some(Escalation {
            policy: policy.clone(),
            reason,
        })
    }

    /// Whether a request the local model could not take escalates: `local`
    /// is why it could not.
    pub(super) fn after_local(
        policy: Option<&Arc<AssignedPolicy>>,
        local: &ServeError,
    ) -> Option<Escalation> {
        let policy = allowing_egress(policy)?;
        let triggers = &policy.spec.triggers;
        let reason = match local {
            ServeError::Overloaded { .. } if triggers.on_overload => Reason::Overload,
            ServeError::ContextOverflow(_) if triggers.prompt_over_context => {
                Reason::PromptOverContext
            }
            ServeError::Internal(_) | ServeError::Unavailable(_) | ServeError::Timeout(_)
                if triggers.on_failure =>
            {
                Reason::Failure
            }
            _ => return None,
        };
        Some(Escalation {
            policy: policy.clone(),
            reason,
        })
    }

    /// Whether a request the local model refused may still go upstream:
    /// the policy has a trigger for some refusal. Only then is a copy of
    /// the request kept while the local model tries it.
    pub(super) fn may_follow_local(policy: Option<&Arc<AssignedPolicy>>) -> bool {
        allowing_egress(policy).is_some_and(|policy| {
            let triggers = &policy.spec.triggers;
            triggers.on_overload || triggers.prompt_over_context || triggers.on_failure
        })
    }

    /// The upstream (a policy without one never escalates).
    fn upstream(&self) -> Result<&Upstream, ServeError> {
        self.policy.spec.upstream().ok_or_else(|| {
            ServeError::Internal("escalating under a policy that forbids egress".to_owned())
        })
    }
}

/// `policy` where it lets this node call out: no policy, or one that
/// forbids egress, never escalates.
pub(super) fn allowing_egress(
    policy: Option<&Arc<AssignedPolicy>>,
) -> Option<&Arc<AssignedPolicy>> {
    policy.filter(|policy| policy.spec.upstream().is_some())
}

/// Whether the client asked for escalation: `true` or `1` in
/// [`ESCALATE_HEADER`]; `false`, `0` or no header is no; anything else is
/// refused rather than guessed.
pub(super) fn header_asks(value: Option<&[u8]>) -> Result<bool, ServeError> {
    match value.map(|value| String::from_utf8_lossy(value).trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(value) if value == "true" || value == "1" => Ok(true),
        Some(value) if value == "false" || value == "0" || value.is_empty() => Ok(false),
        Some(_) => Err(ServeError::InvalidRequest(format!(
            "{ESCALATE_HEADER} must be true or false"
        ))),
    }
}

/// Sends `request`, scrubbed, to the escalation's upstream and returns its
/// answer as a generation, once its first output arrived: an upstream that
/// cannot be reached, refuses the call or fails before any output comes
/// back here as [`ServeError::UpstreamUnavailable`], so that the caller can
/// still answer locally.
pub(super) async fn start(
    client: &reqwest::Client,
    config: &super::ServeConfig,
    local: Option<Arc<super::models::ServedModel>>,
    escalation: &Escalation,
    request: &InferenceRequest,
) -> Result<Generation, ServeError> {
    let upstream = escalation.upstream()?;
    let started = Instant::now();
    let timeout = config.request_timeout;
    let scrubber = Scrubber::new(escalation.policy.spec.scrub.iter().copied());
    let names = super::ask_local::names_for(local, config, &scrubber, request).await?;
    let mut placeholders = Placeholders::new();
    let body = upstream_body(upstream, request, &scrubber, &names, &mut placeholders);
    let audit = Audit {
        policy: escalation.policy.to_string(),
        reason: escalation.reason,
        upstream_host: host_of(&upstream.base_url),
        upstream_model: upstream.model.clone(),
        redactions: placeholders
            .counts()
            .into_iter()
            .map(|(kind, count)| format!("{}={count}", kind.as_str()))
            .collect::<Vec<_>>()
            .join(","),
    };
    super::scrub::count_redactions(&placeholders);
    let sent = call(client, timeout, upstream, &body).await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            audit.failed(&error);
            return Err(error);
        }
    };
    let (sender, mut events) = mpsc::channel(CHANNEL_CAPACITY);
    let offered_tools = request.tools.is_some();
    tokio::spawn(relay(
        response,
        placeholders,
        offered_tools,
        started,
        timeout,
        sender,
        audit,
    ));
    let first = events.recv().await.unwrap_or_else(|| {
        Err(ServeError::UpstreamUnavailable(
            "the upstream's answer ended without output".to_owned(),
        ))
    })?;
    Ok(Generation::relayed(
        AnsweredBy::Upstream {
            model: upstream.model.clone(),
            reason: escalation.reason.as_str(),
        },
        first,
        events,
    ))
}

/// The upstream's host (and port), for audit events: the URL's path may
/// carry an account or deployment name.
fn host_of(base_url: &str) -> String {
    reqwest::Url::parse(base_url)
        .ok()
        .and_then(|url| {
            url.host_str().map(|host| match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            })
        })
        .unwrap_or_default()
}

/// The `chat/completions` body: the request's messages scrubbed, its
/// parameters as OpenAI names them, the upstream's model.
fn upstream_body(
    upstream: &Upstream,
    request: &InferenceRequest,
    scrubber: &Scrubber,
    names: &[(Kind, String)],
    placeholders: &mut Placeholders,
) -> Value {
    let messages = match &request.input {
        Input::Chat(messages) => messages.clone(),
        Input::Text(prompt) => vec![Message::new(Role::User, prompt.clone())],
    };
    let mut wire = Vec::with_capacity(messages.len());
    // OpenAI pairs a tool result with its call by id; the surfaces keep
    // calls in order, so ids are given here, in order, and each tool
    // message answers the next unanswered call.
    let mut call_ids: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut next_call = 0usize;
    for message in &messages {
        let content = scrubber.scrub_with_names(&message.content, names, placeholders);
        let mut entry = json!({"role": message.role.as_str(), "content": content});
        if !message.tool_calls.is_empty() {
            let calls: Vec<Value> = message
                .tool_calls
                .iter()
                .map(|call| {
                    next_call += 1;
                    let id = format!("call_{next_call}");
                    call_ids.push_back(id.clone());
                    let arguments = scrub_value(&call.arguments, scrubber, names, placeholders);
                    json!({
                        "id": id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": arguments.to_string()},
                    })
                })
                .collect();
            entry["tool_calls"] = Value::Array(calls);
        }
        if message.role == Role::Tool {
            let id = call_ids.pop_front().unwrap_or_else(|| {
                next_call += 1;
                format!("call_{next_call}")
            });
            entry["tool_call_id"] = json!(id);
        }
        wire.push(entry);
    }
    let params = &request.params;
    let mut body = json!({
        "model": upstream.model,
        "messages": wire,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut set = |name: &str, value: Value| {
        body[name] = value;
    };
    if let Some(max_tokens) = params.max_tokens {
        set("max_tokens", json!(max_tokens));
    }
    if let Some(temperature) = params.temperature {
        set("temperature", json!(temperature));
    }
    if let Some(top_p) = params.top_p {
        set("top_p", json!(top_p));
    }
    if let Some(penalty) = params.presence_penalty {
        set("presence_penalty", json!(penalty));
    }
    if let Some(penalty) = params.frequency_penalty {
        set("frequency_penalty", json!(penalty));
    }
    if let Some(seed) = params.seed {
        set("seed", json!(seed));
    }
    if !params.stop.is_empty() {
        set("stop", json!(params.stop));
    }
    match &request.format {
        OutputFormat::Text | OutputFormat::OneOf(_) => {}
        OutputFormat::JsonObject => set("response_format", json!({"type": "json_object"})),
        OutputFormat::JsonSchema(schema) => set(
            "response_format",
            json!({
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": true},
            }),
        ),
    }
    if let Some(tools) = &request.tools {
        let specs: Vec<Value> = tools
            .specs
            .iter()
            .map(|spec| {
                let mut function = json!({"name": spec.name, "parameters": spec.parameters});
                if let Some(description) = &spec.description {
                    function["description"] = json!(description);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        set("tools", Value::Array(specs));
        set(
            "tool_choice",
            match &tools.choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Function(name) => {
                    json!({"type": "function", "function": {"name": name}})
                }
            },
        );
        set("parallel_tool_calls", json!(tools.parallel));
    }
    body
}

/// `value` with every string in it scrubbed (tool-call arguments).
fn scrub_value(
    value: &Value,
    scrubber: &Scrubber,
    names: &[(Kind, String)],
    placeholders: &mut Placeholders,
) -> Value {
    match value {
        Value::String(text) => Value::String(scrubber.scrub_with_names(text, names, placeholders)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| scrub_value(item, scrubber, names, placeholders))
                .collect(),
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, item)| {
                    (
                        name.clone(),
                        scrub_value(item, scrubber, names, placeholders),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Makes the call; a refusal or an unreachable upstream is
/// [`ServeError::UpstreamUnavailable`] with what the upstream said (its
/// status and the start of its error body, which holds no key of ours).
async fn call(
    client: &reqwest::Client,
    timeout: Duration,
    upstream: &Upstream,
    body: &Value,
) -> Result<reqwest::Response, ServeError> {
    let key = resolve_credential(&upstream.credential).map_err(|error| {
        ServeError::UpstreamUnavailable(format!("cannot read the upstream's key: {error}"))
    })?;
    let url = format!(
        "{}/chat/completions",
        upstream.base_url.trim_end_matches('/')
    );
    let response = client
        .post(&url)
        .bearer_auth(key.expose())
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(|error| {
            ServeError::UpstreamUnavailable(format!(
                "the upstream could not be reached: {}",
                crate::enrol::error_chain(&error)
            ))
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let said = response.text().await.unwrap_or_default();
    let said: String = said.chars().take(MAX_ERROR_BODY_QUOTED).collect();
    Err(ServeError::UpstreamUnavailable(format!(
        "the upstream answered {status}: {said}"
    )))
}

/// One tool call as the upstream streams it, by index.
#[derive(Debug, Default)]
struct CallParts {
    name: String,
    arguments: String,
}

/// What the audit event of one escalation says (never the text).
struct Audit {
    policy: String,
    reason: Reason,
    upstream_host: String,
    upstream_model: String,
    /// `kind=count,…`.
    redactions: String,
}

impl Audit {
    fn answered(&self, finished: &Finished) {
        metrics::counter!("flotilla_inference_escalated_total",
            "reason" => self.reason.as_str(), "outcome" => "answered")
        .increment(1);
        // For the heartbeat and the rollout gate on escalation rate; not
        // counted as a local completion.
        super::stats::global().escalated();
        tracing::info!(
            target: "flotilla::audit",
            event = "escalated",
            policy = %self.policy,
            reason = self.reason.as_str(),
            upstream = %self.upstream_host,
            upstream_model = %self.upstream_model,
            redactions = %self.redactions,
            prompt_tokens = finished.prompt_tokens,
            completion_tokens = finished.completion_tokens,
            "a request was answered by the policy's upstream"
        );
    }

    fn failed(&self, error: &ServeError) {
        metrics::counter!("flotilla_inference_escalated_total",
            "reason" => self.reason.as_str(), "outcome" => "failed")
        .increment(1);
        tracing::warn!(
            target: "flotilla::audit",
            event = "escalation_failed",
            policy = %self.policy,
            reason = self.reason.as_str(),
            upstream = %self.upstream_host,
            upstream_model = %self.upstream_model,
            redactions = %self.redactions,
            %error,
            "a request could not be escalated"
        );
    }
}

/// Reads the upstream's event stream into chunks, restoring placeholders,
/// until its end, the client going away, or the deadline.
async fn relay(
    response: reqwest::Response,
    placeholders: Placeholders,
    offered_tools: bool,
    started: Instant,
    timeout: Duration,
    sender: mpsc::Sender<Result<Chunk, ServeError>>,
    audit: Audit,
) {
    let mut restorer = placeholders.restorer();
    let mut events = std::pin::pin!(upstream_events(response));
    let mut calls: Vec<CallParts> = Vec::new();
    let mut reason = FinishReason::Stop;
    let mut usage = (0usize, 0usize);
    let mut first_output: Option<Instant> = None;
    let deadline = tokio::time::Instant::from_std(started + timeout);
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            () = tokio::time::sleep_until(deadline) => Some(Err(ServeError::Timeout(timeout))),
            () = sender.closed() => return,
        };
        let data = match next {
            None => break,
            Some(Ok(data)) => data,
            Some(Err(error)) => {
                audit.failed(&error);
                let _ = sender.send(Err(error)).await;
                return;
            }
        };
        if data.trim() == "[DONE]" {
            break;
        }
        let event: Value = match serde_json::from_str(&data) {
            Ok(event) => event,
            Err(error) => {
                let error = ServeError::UpstreamUnavailable(format!(
                    "the upstream sent an event that is not JSON: {error}"
                ));
                audit.failed(&error);
                let _ = sender.send(Err(error)).await;
                return;
            }
        };
        if let Some(counted) = event.get("usage").filter(|usage| usage.is_object()) {
            let count = |name: &str| {
                counted
                    .get(name)
                    .and_then(Value::as_u64)
                    .map_or(0, |n| n as usize)
            };
            usage = (count("prompt_tokens"), count("completion_tokens"));
        }
        let Some(choice) = event.get("choices").and_then(|choices| choices.get(0)) else {
            continue;
        };
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            reason = match finish {
                "length" => FinishReason::Length,
                _ => FinishReason::Stop,
            };
        }
        let Some(delta) = choice.get("delta") else {
            continue;
        };
        if let Some(content) = delta.get("content").and_then(Value::as_str) {
            let text = restorer.push(content);
            if !text.is_empty() {
                first_output.get_or_insert_with(Instant::now);
                let chunk = Chunk::Text {
                    text,
                    logprobs: Vec::new(),
                };
                if sender.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        }
        for part in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = part
                .get("index")
                .and_then(Value::as_u64)
                .map_or(calls.len(), |index| index as usize);
            if index > calls.len() + 64 {
                continue;
            }
            while calls.len() <= index {
                calls.push(CallParts::default());
            }
            let function = part.get("function");
            if let Some(name) = function
                .and_then(|function| function.get("name"))
                .and_then(Value::as_str)
            {
                calls[index].name.push_str(name);
            }
            if let Some(arguments) = function
                .and_then(|function| function.get("arguments"))
                .and_then(Value::as_str)
            {
                calls[index].arguments.push_str(arguments);
            }
        }
    }
    let mut rest = restorer.finish();
    if offered_tools {
        for call in calls.iter().filter(|call| !call.name.is_empty()) {
            let arguments = placeholders.restore(&call.arguments);
            let arguments: Value =
                serde_json::from_str(&arguments).unwrap_or_else(|_| Value::String(arguments));
            rest.push_str(&format!(
                "<tool_call>\n{}\n</tool_call>",
                json!({"name": call.name, "arguments": arguments})
            ));
        }
    }
    if !rest.is_empty() {
        first_output.get_or_insert_with(Instant::now);
        let chunk = Chunk::Text {
            text: rest,
            logprobs: Vec::new(),
        };
        if sender.send(Ok(chunk)).await.is_err() {
            return;
        }
    }
    let finished = Finished {
        reason,
        prompt_tokens: usage.0,
        completion_tokens: usage.1,
        time_to_first_token: first_output.unwrap_or_else(Instant::now) - started,
        total_time: started.elapsed(),
    };
    audit.answered(&finished);
    let _ = sender.send(Ok(Chunk::Finished(finished))).await;
}

/// The upstream's answer as streamed events' JSON: its server-sent events,
/// or, from an upstream that ignored `stream: true` and answered whole
/// (`application/json`), that answer as one event whose `delta` is its
/// message, so that both take the same path.
fn upstream_events(
    response: reqwest::Response,
) -> futures::stream::BoxStream<'static, Result<String, ServeError>> {
    let whole = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !whole {
        return sse_data(response.bytes_stream()).boxed();
    }
    futures::stream::once(async move {
        let answer: Value = response.json().await.map_err(|error| {
            ServeError::UpstreamUnavailable(format!("the upstream's answer is not JSON: {error}"))
        })?;
        let choice = &answer["choices"][0];
        Ok(json!({
            "choices": [{"delta": choice["message"], "finish_reason": choice["finish_reason"]}],
            "usage": answer["usage"],
        })
        .to_string())
    })
    .boxed()
}

/// The `data:` payloads of a server-sent event stream, one per event.
fn sse_data(
    bytes: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
) -> impl futures::Stream<Item = Result<String, ServeError>> + Send + 'static {
    use eventsource_stream::Eventsource as _;
    bytes.eventsource().filter_map(|event| async move {
        match event {
            Ok(event) => Some(Ok(event.data)),
            Err(error) => Some(Err(ServeError::UpstreamUnavailable(format!(
                "the upstream's stream broke: {error}"
            )))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escalate_header_is_a_boolean() {
        assert_eq!(header_asks(None), Ok(false));
        assert_eq!(header_asks(Some(b"true")), Ok(true));
        assert_eq!(header_asks(Some(b"1")), Ok(true));
        assert_eq!(header_asks(Some(b"False")), Ok(false));
        assert!(header_asks(Some(b"please")).is_err());
    }

    #[test]
    fn audit_events_name_the_host_not_the_path() {
        assert_eq!(
            host_of("https://api.example.test:8443/v1/acct-123"),
            "api.example.test:8443"
        );
        assert_eq!(host_of("not a url"), "");
    }
}
