//! OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/models` and `/v1/models/{id}`, non-streaming and streaming
//! (server-sent events ending with `data: [DONE]`). The DTOs here are the
//! OpenAI wire shapes; they are converted to [`InferenceRequest`] on the way
//! in, after every field has passed its table here ([`fields`]): a field of
//! OpenAI's API that this node does not implement is a 400 naming it, never
//! dropped. Answers name the model as the request did (an alias, or a
//! `name:tag`). Errors use OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` body.

use std::convert::Infallible;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use flotilla_engine::tools::{ToolCall, ToolChoice};

use super::dispatch::Dispatched;
use super::fields::{self, Rule};
use super::forward::HttpIncoming;
use super::generation::{Alternative, TokenLogprob};
use super::http::{HttpState, incoming, unix_seconds, with_answer_headers, with_retry_after};
use super::request::{OutputFormat, Tools};
use super::tool_wire::{ResponseFormatIn, ToolCallIn, ToolIn, replayed_calls, tool_specs};
use super::{
    Chunk, Completion, Finished, Generation, InferenceRequest, Input, Message, Params, Reached,
    Role, ServeError,
};

/// `stop`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(stop) => vec![stop],
            StopField::Many(stops) => stops,
        }
    }
}

const NO_FUNCTIONS: &str =
    "the deprecated functions API is not implemented on this node; send tools and tool_choice";
const NO_LOGPROBS: &str =
    "log probabilities are implemented for chat completions only (logprobs, top_logprobs)";

/// What both endpoints accept besides their prompt: implemented, or
/// without effect on the answer (`user`, `safety_identifier`,
/// `prompt_cache_key` and `metadata` identify requests in OpenAI's records;
/// `stream_options.include_obfuscation` pads OpenAI's events, which carry
/// nothing to hide here).
const COMMON_FIELDS: &[(&str, Rule)] = &[
    ("model", Rule::Supported),
    ("max_tokens", Rule::Supported),
    ("max_completion_tokens", Rule::Supported),
    ("temperature", Rule::Supported),
    ("top_p", Rule::Supported),
    // The engine's sampler is seeded (`SamplingParams::seed`).
    ("seed", Rule::Supported),
    ("stop", Rule::Supported),
    ("stream", Rule::Supported),
    ("stream_options", Rule::Supported),
    ("user", Rule::NoEffect),
    ("safety_identifier", Rule::NoEffect),
    ("prompt_cache_key", Rule::NoEffect),
    ("metadata", Rule::NoEffect),
    (
        "n",
        Rule::DefaultOnly {
            accepts: fields::is_one,
            why: "one choice per request is supported: n must be 1",
        },
    ),
    ("presence_penalty", Rule::Supported),
    ("frequency_penalty", Rule::Supported),
    (
        "logit_bias",
        Rule::DefaultOnly {
            accepts: fields::is_empty,
            why: "logit bias is not implemented on this node; only {} is accepted",
        },
    ),
    (
        "service_tier",
        Rule::DefaultOnly {
            accepts: is_default_tier,
            why: "this node has one service tier: only \"auto\" or \"default\" is accepted",
        },
    ),
    (
        "store",
        Rule::DefaultOnly {
            accepts: fields::is_false,
            why: "this node stores no completions",
        },
    ),
];

/// `/v1/chat/completions` beyond [`COMMON_FIELDS`].
const CHAT_FIELDS: &[(&str, Rule)] = &[
    ("messages", Rule::Supported),
    // Calls are constrained to the tool's schema (`flotilla_engine::tools`).
    ("tools", Rule::Supported),
    ("tool_choice", Rule::Supported),
    ("parallel_tool_calls", Rule::Supported),
    (
        "functions",
        Rule::DefaultOnly {
            accepts: fields::is_empty,
            why: NO_FUNCTIONS,
        },
    ),
    (
        "function_call",
        Rule::DefaultOnly {
            accepts: is_none_choice,
            why: NO_FUNCTIONS,
        },
    ),
    // Enforced by constrained decoding: the answer always parses.
    ("response_format", Rule::Supported),
    // From the distribution the sampler draws from (`flotilla_engine::TokenLogprobs`).
    ("logprobs", Rule::Supported),
    ("top_logprobs", Rule::Supported),
    (
        "modalities",
        Rule::DefaultOnly {
            accepts: is_text_modality,
            why: "the served models are text-only: only [\"text\"] is accepted",
        },
    ),
    (
        "audio",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: "the served models are text-only",
        },
    ),
    (
        "prediction",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: "predicted outputs are not implemented on this node",
        },
    ),
    (
        "reasoning_effort",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: "the served models are not reasoning models",
        },
    ),
    (
        "verbosity",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: "output verbosity is not implemented on this node",
        },
    ),
    (
        "web_search_options",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: "web search is not implemented on this node",
        },
    ),
];

/// `/v1/completions` beyond [`COMMON_FIELDS`].
const COMPLETION_FIELDS: &[(&str, Rule)] = &[
    ("prompt", Rule::Supported),
    (
        "best_of",
        Rule::DefaultOnly {
            accepts: fields::is_one,
            why: "one candidate per request is generated: best_of must be 1",
        },
    ),
    (
        "echo",
        Rule::DefaultOnly {
            accepts: fields::is_false,
            why: "echoing the prompt is not implemented on this node",
        },
    ),
    (
        "suffix",
        Rule::DefaultOnly {
            accepts: fields::is_empty,
            why: "insertion after a suffix is not implemented on this node",
        },
    ),
    (
        "logprobs",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: NO_LOGPROBS,
        },
    ),
];

/// A chat message's fields. `name` is accepted on tool results only (the
/// tool's name, which LangChain sends); on other messages it is refused in
/// [`chat_messages`], because no chat template here shows participant names
/// to the model. `tool_call_id` pairs a result with its call; the templates
/// pair them by order, as the models were trained. `refusal`, `audio` and
/// `annotations` come back `null` or empty when a client replays an answer.
const MESSAGE_FIELDS: &[(&str, Rule)] = &[
    ("role", Rule::Supported),
    ("content", Rule::Supported),
    ("name", Rule::Supported),
    ("tool_calls", Rule::Supported),
    ("tool_call_id", Rule::NoEffect),
    (
        "function_call",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: NO_FUNCTIONS,
        },
    ),
    (
        "refusal",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: "refusals are not passed to the model",
        },
    ),
    (
        "audio",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: "the served models are text-only",
        },
    ),
    (
        "annotations",
        Rule::DefaultOnly {
            accepts: fields::is_empty,
            why: "annotations are not passed to the model",
        },
    ),
];

const STREAM_OPTIONS_FIELDS: &[(&str, Rule)] = &[
    ("include_usage", Rule::Supported),
    ("include_obfuscation", Rule::NoEffect),
];

fn is_default_tier(value: &Value) -> bool {
    matches!(value.as_str(), Some("auto" | "default"))
}

fn is_none_choice(value: &Value) -> bool {
    value.as_str() == Some("none")
}

fn is_text_modality(value: &Value) -> bool {
    value == &json!(["text"])
}

/// Parses a body after checking its fields against [`COMMON_FIELDS`] and
/// `specific` (and its messages and stream options against theirs).
fn parse_checked<T: DeserializeOwned>(
    body: &[u8],
    specific: &'static fields::Table,
) -> Result<T, ServeError> {
    fields::parse_checked(
        body,
        &fields::Shape {
            top: &[COMMON_FIELDS, specific],
            objects: &[("stream_options", STREAM_OPTIONS_FIELDS)],
            lists: &[("messages", MESSAGE_FIELDS)],
        },
    )
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What both endpoints accept besides their prompt.
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopField>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

impl Common {
    fn params(self) -> (String, Params, bool, bool) {
        let params = Params {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            stop: self.stop.map(StopField::into_vec).unwrap_or_default(),
            ..Params::default()
        };
        let include_usage = self
            .stream_options
            .is_some_and(|options| options.include_usage);
        (self.model, params, self.stream, include_usage)
    }
}

/// Message content: a string, or a list of parts of which the text ones count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessageIn {
    role: String,
    content: Option<Content>,
    name: Option<String>,
    tool_calls: Option<Vec<ToolCallIn>>,
}

#[derive(Debug, Deserialize)]
struct ChatCompletionRequest {
    messages: Vec<ChatMessageIn>,
    tools: Option<Vec<ToolIn>>,
    tool_choice: Option<ToolChoiceIn>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<ResponseFormatIn>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
    #[serde(flatten)]
    common: Common,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"` or
/// `{"type": "function", "function": {"name": …}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ToolChoiceIn {
    Mode(String),
    Named { function: NamedFunction },
}

#[derive(Debug, Deserialize)]
struct NamedFunction {
    name: String,
}

impl ChatCompletionRequest {
    /// How many alternatives per token to report, if log probabilities were asked for.
    fn logprobs(logprobs: bool, top_logprobs: Option<usize>) -> Result<Option<usize>, ServeError> {
        match (logprobs, top_logprobs) {
            (true, top) => Ok(Some(top.unwrap_or(0))),
            (false, None | Some(0)) => Ok(None),
            (false, Some(_)) => Err(ServeError::InvalidRequest(
                "top_logprobs needs logprobs set to true".to_owned(),
            )),
        }
    }

    /// The tools the model may call: none with `tool_choice: "none"` or
    /// without tools (the tools are then not shown to the model either).
    fn tools(
        tools: Option<Vec<ToolIn>>,
        choice: Option<ToolChoiceIn>,
        parallel: Option<bool>,
    ) -> Result<Option<Tools>, ServeError> {
        let specs = tool_specs(tools.unwrap_or_default())?;
        let choice = match choice {
            None => (!specs.is_empty()).then_some(ToolChoice::Auto),
            Some(ToolChoiceIn::Mode(mode)) => match mode.as_str() {
                "none" => None,
                "auto" => (!specs.is_empty()).then_some(ToolChoice::Auto),
                "required" => Some(ToolChoice::Required),
                other => {
                    return Err(ServeError::InvalidRequest(format!(
                        "tool_choice {other:?} is not one of none, auto, required or a function"
                    )));
                }
            },
            Some(ToolChoiceIn::Named { function }) => Some(ToolChoice::Function(function.name)),
        };
        Ok(choice.map(|choice| Tools {
            specs,
            choice,
            parallel: parallel.unwrap_or(true),
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: PromptField,
    #[serde(flatten)]
    common: Common,
}

fn chat_messages(messages: Vec<ChatMessageIn>) -> Result<Vec<Message>, ServeError> {
    if messages.is_empty() {
        return Err(ServeError::InvalidRequest(
            "messages must not be empty".to_owned(),
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| {
            let role = Role::parse(&message.role)?;
            if message.name.is_some() && role != Role::Tool {
                return Err(ServeError::UnsupportedField {
                    field: format!("messages[{index}].name"),
                    why: "participant names are not passed to the model (only a tool result may name its tool)".to_owned(),
                });
            }
            let tool_calls = replayed_calls(message.tool_calls.unwrap_or_default())?;
            let content = match message.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        if part.kind != "text" {
                            return Err(ServeError::InvalidRequest(format!(
                                "content parts of type {:?} are not supported; only text",
                                part.kind
                            )));
                        }
                        text.push_str(part.text.as_deref().unwrap_or(""));
                    }
                    text
                }
            };
            Ok(Message {
                role,
                content,
                tool_calls,
            })
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

impl From<&Finished> for Usage {
    fn from(finished: &Finished) -> Self {
        Usage {
            prompt_tokens: finished.prompt_tokens,
            completion_tokens: finished.completion_tokens,
            total_tokens: finished.prompt_tokens + finished.completion_tokens,
        }
    }
}

/// `{"error": {...}}` with the status and `Retry-After` the error maps to.
pub(super) fn error_response(error: &ServeError) -> Response {
    let kind = match error {
        ServeError::InvalidRequest(_)
        | ServeError::UnsupportedField { .. }
        | ServeError::ModelNotFound { .. }
        | ServeError::NotAssigned { .. }
        | ServeError::ContextOverflow(_)
        | ServeError::UnsupportedMediaType(_) => "invalid_request_error",
        ServeError::Forbidden(_) => "permission_error",
        ServeError::Overloaded { .. } => "rate_limit_error",
        ServeError::Unauthenticated => "authentication_error",
        ServeError::Timeout(_)
        | ServeError::Unavailable(_)
        | ServeError::PeerUnavailable(_)
        | ServeError::UpstreamUnavailable(_)
        | ServeError::Internal(_) => "server_error",
    };
    let param = match error {
        ServeError::ModelNotFound { .. } => Value::from("model"),
        ServeError::UnsupportedField { field, .. } => Value::from(field.as_str()),
        _ => Value::Null,
    };
    let body = json!({
        "error": {
            "message": error.to_string(),
            "type": kind,
            "param": param,
            "code": error.code(),
        }
    });
    with_retry_after(error, (error.http_status(), Json(body)).into_response())
}

/// What differs between the chat and the text completion endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn id(self) -> String {
        let prefix = match self {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        };
        format!("{prefix}-{:016x}", rand::random::<u64>())
    }
}

pub(super) async fn chat_completions(
    State(state): State<HttpState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let forwarded = match incoming(&headers, &uri, &body) {
        Ok(forwarded) => forwarded,
        Err(error) => return error_response(&error),
    };
    let parsed = parse_checked::<ChatCompletionRequest>(&body, CHAT_FIELDS).and_then(|request| {
        let messages = chat_messages(request.messages)?;
        let tools = ChatCompletionRequest::tools(
            request.tools,
            request.tool_choice,
            request.parallel_tool_calls,
        )?;
        let format = match request.response_format {
            None => OutputFormat::Text,
            Some(format) => format.into_format()?,
        };
        let logprobs = ChatCompletionRequest::logprobs(request.logprobs, request.top_logprobs)?;
        let (model, params, stream, include_usage) = request.common.params();
        let mut inference = InferenceRequest::new(model, Input::Chat(messages), params);
        inference.format = format;
        inference.tools = tools;
        inference.logprobs = logprobs;
        Ok((inference, stream, include_usage))
    });
    respond(state, Kind::Chat, parsed, forwarded).await
}

pub(super) async fn completions(
    State(state): State<HttpState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let forwarded = match incoming(&headers, &uri, &body) {
        Ok(forwarded) => forwarded,
        Err(error) => return error_response(&error),
    };
    let parsed = parse_checked::<CompletionRequest>(&body, COMPLETION_FIELDS).and_then(|request| {
        let prompt = match request.prompt {
            PromptField::One(prompt) => prompt,
            PromptField::Many(mut prompts) if prompts.len() == 1 => prompts.remove(0),
            PromptField::Many(_) => {
                return Err(ServeError::InvalidRequest(
                    "prompt must be one string: batches of prompts are not supported".to_owned(),
                ));
            }
        };
        if prompt.is_empty() {
            return Err(ServeError::InvalidRequest(
                "prompt must not be empty".to_owned(),
            ));
        }
        let (model, params, stream, include_usage) = request.common.params();
        Ok((
            InferenceRequest::new(model, Input::Text(prompt), params),
            stream,
            include_usage,
        ))
    });
    respond(state, Kind::Text, parsed, forwarded).await
}

async fn respond(
    state: HttpState,
    kind: Kind,
    parsed: Result<(InferenceRequest, bool, bool), ServeError>,
    forwarded: HttpIncoming,
) -> Response {
    let (request, stream, include_usage) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return error_response(&error),
    };
    let requested = request.model.clone();
    let calls_tools = request.tools.is_some();
    let with_logprobs = request.logprobs.is_some();
    let generation = match state.dispatch(request, &forwarded).await {
        Dispatched::Generated(generation) => generation,
        Dispatched::Forward(forward) => {
            return state.relay(forward, &forwarded, error_response).await;
        }
        Dispatched::Refused(error) => return error_response(&error),
    };
    let id = kind.id();
    let answered = generation.answer_headers();
    // As the client named it (an alias, `name:tag`), as OpenAI echoes it.
    let model = requested;
    let created = unix_seconds(std::time::SystemTime::now());
    let response = if stream && calls_tools {
        // A call is known only once its block is complete, so an answer that may call
        // tools is streamed as a whole: its text or its calls, then the end.
        match generation.complete().await {
            Ok(completion) => {
                let answer = Answer::of(&completion, calls_tools, with_logprobs);
                let events = answer_events(&answer, &id, &model, created, include_usage);
                Sse::new(futures::stream::iter(events)).into_response()
            }
            Err(error) => error_response(&error),
        }
    } else if stream {
        let events = sse_events(
            generation,
            kind,
            id,
            model,
            created,
            include_usage,
            with_logprobs,
        );
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        match generation.complete().await {
            Ok(completion) => {
                let answer = Answer::of(&completion, calls_tools, with_logprobs);
                Json(whole(kind, &id, &model, created, &answer)).into_response()
            }
            Err(error) => error_response(&error),
        }
    };
    with_answer_headers(&answered, response)
}

/// A finished answer as OpenAI reports it: text, or text and tool calls.
struct Answer<'a> {
    content: String,
    calls: Vec<ToolCall>,
    finished: &'a Finished,
    /// `choices[].logprobs`: `null` unless asked for.
    logprobs: Value,
}

impl<'a> Answer<'a> {
    fn of(completion: &'a Completion, calls_tools: bool, with_logprobs: bool) -> Answer<'a> {
        let (content, calls) = completion.text_and_calls(calls_tools);
        Answer {
            content,
            calls,
            finished: &completion.finished,
            logprobs: if with_logprobs {
                logprobs_json(&completion.logprobs)
            } else {
                Value::Null
            },
        }
    }

    fn finish_reason(&self) -> &'static str {
        if self.calls.is_empty() {
            self.finished.reason.as_openai()
        } else {
            "tool_calls"
        }
    }

    /// `content` is `null` beside calls when there is no text, as OpenAI's is.
    fn content(&self) -> Value {
        if self.content.is_empty() && !self.calls.is_empty() {
            Value::Null
        } else {
            json!(self.content)
        }
    }

    /// OpenAI's `tool_calls`: ids are fresh, arguments are JSON text;
    /// `with_index` adds the `index` that streamed deltas carry.
    fn tool_calls(&self, with_index: bool) -> Value {
        let calls: Vec<Value> = self
            .calls
            .iter()
            .enumerate()
            .map(|(index, call)| {
                let mut value = json!({
                    "id": format!("call_{:016x}", rand::random::<u64>()),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments.to_string()},
                });
                if with_index {
                    value["index"] = json!(index);
                }
                value
            })
            .collect();
        Value::Array(calls)
    }
}

fn whole(kind: Kind, id: &str, model: &str, created: u64, answer: &Answer<'_>) -> Value {
    let reason = answer.finish_reason();
    let usage = Usage::from(answer.finished);
    match kind {
        Kind::Chat => {
            let mut message = json!({"role": "assistant", "content": answer.content()});
            if !answer.calls.is_empty() {
                message["tool_calls"] = answer.tool_calls(false);
            }
            json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "logprobs": answer.logprobs,
                    "finish_reason": reason,
                }],
                "usage": usage,
            })
        }
        Kind::Text => json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "text": answer.content,
                "logprobs": null,
                "finish_reason": reason,
            }],
            "usage": usage,
        }),
    }
}

/// The SSE events of a whole chat answer that may hold tool calls: the
/// role, the text (if any), the calls (if any), the end, the usage when
/// asked for, `[DONE]`.
fn answer_events(
    answer: &Answer<'_>,
    id: &str,
    model: &str,
    created: u64,
    include_usage: bool,
) -> Vec<Result<Event, Infallible>> {
    let kind = Kind::Chat;
    let mut events = vec![data(&chunk(kind, id, model, created, Some(""), None))];
    if !answer.content.is_empty() {
        let mut text = chunk(kind, id, model, created, Some(&answer.content), None);
        text["choices"][0]["logprobs"] = answer.logprobs.clone();
        events.push(data(&text));
    }
    if !answer.calls.is_empty() {
        let mut calls = chunk(kind, id, model, created, None, None);
        calls["choices"][0]["delta"] = json!({"tool_calls": answer.tool_calls(true)});
        events.push(data(&calls));
    }
    events.push(data(&chunk(
        kind,
        id,
        model,
        created,
        None,
        Some(answer.finish_reason()),
    )));
    if include_usage {
        let mut usage = chunk(kind, id, model, created, None, None);
        usage["choices"] = json!([]);
        usage["usage"] = json!(Usage::from(answer.finished));
        events.push(data(&usage));
    }
    events.push(Ok(Event::default().data("[DONE]")));
    events
}

/// One streamed chunk object.
fn chunk(
    kind: Kind,
    id: &str,
    model: &str,
    created: u64,
    text: Option<&str>,
    reason: Option<&str>,
) -> Value {
    match kind {
        Kind::Chat => {
            let delta = match text {
                Some(text) => json!({"role": "assistant", "content": text}),
                None => json!({}),
            };
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}],
            })
        }
        Kind::Text => json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": reason}],
        }),
    }
}

/// OpenAI's `logprobs` object of a choice or a chunk.
fn logprobs_json(logprobs: &[TokenLogprob]) -> Value {
    let entry = |alternative: &Alternative| {
        json!({
            "token": alternative.text,
            "logprob": alternative.logprob,
            "bytes": alternative.bytes,
        })
    };
    let content: Vec<Value> = logprobs
        .iter()
        .map(|token| {
            let mut value = entry(&token.token);
            value["top_logprobs"] = token.top.iter().map(entry).collect();
            value
        })
        .collect();
    json!({"content": content, "refusal": null})
}

fn data(value: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(value.to_string()))
}

/// The SSE body: text chunks, a final chunk with the finish reason, the
/// usage-only chunk (empty `choices`) when `stream_options.include_usage`
/// asked for it, then `[DONE]`. The usage comes once or not at all, as
/// OpenAI sends it: a client that meters by usage chunks counts it once.
/// A failure after the first byte becomes an `error` object, then `[DONE]`.
fn sse_events(
    generation: Generation,
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    with_logprobs: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let opening = match kind {
        // The first chat chunk names the role, as OpenAI's does.
        Kind::Chat => Some(data(&chunk(kind, &id, &model, created, Some(""), None))),
        Kind::Text => None,
    };
    let body = generation.into_stream().flat_map(move |item| {
        let events: Vec<Result<Event, Infallible>> = match item {
            Ok(Chunk::Text { text, logprobs }) => {
                let mut piece = chunk(kind, &id, &model, created, Some(&text), None);
                if with_logprobs {
                    piece["choices"][0]["logprobs"] = logprobs_json(&logprobs);
                }
                vec![data(&piece)]
            }
            Ok(Chunk::Finished(finished)) => {
                let last = chunk(
                    kind,
                    &id,
                    &model,
                    created,
                    None,
                    Some(finished.reason.as_openai()),
                );
                let mut events = vec![data(&last)];
                if include_usage {
                    let mut usage = chunk(kind, &id, &model, created, None, None);
                    usage["choices"] = json!([]);
                    usage["usage"] = json!(Usage::from(&finished));
                    events.push(data(&usage));
                }
                events.push(Ok(Event::default().data("[DONE]")));
                events
            }
            Err(error) => vec![
                data(&json!({"error": {"message": error.to_string(), "type": "server_error", "code": error.code()}})),
                Ok(Event::default().data("[DONE]")),
            ],
        };
        futures::stream::iter(events)
    });
    futures::stream::iter(opening).chain(body)
}

/// The node's own model (`"owned_by": "flotilla:local"`) and every model
/// it can route to (`"owned_by": "flotilla:<node>"`, the peer it would ask
/// first), with `"local"` saying which is which. Each alias is an entry of
/// its own, with `"alias_of"` naming the registry model.
pub(super) async fn list_models(State(state): State<HttpState>) -> Response {
    let data: Vec<Value> = state
        .serving
        .catalogue()
        .iter()
        .flat_map(|listed| listed.names().map(|name| model_entry(listed, name)))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// One model as `/v1/models` lists it, by the name the client knows
/// (`/v1/models/{id}` answers with the entry `/v1/models` has for that id,
/// or for a `name:tag` that names it); an unknown id is OpenAI's 404.
pub(super) async fn retrieve_model(
    State(state): State<HttpState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let catalogue = state.serving.catalogue();
    let found = catalogue.iter().find(|listed| {
        crate::routing::names_match(&id, &listed.name, &listed.aliases, &listed.version)
    });
    match found {
        Some(listed) => Json(model_entry(listed, &id)).into_response(),
        None => error_response(&ServeError::ModelNotFound {
            requested: id,
            served: state
                .serving
                .slot
                .current()
                .map(|model| model.info().name.clone()),
        }),
    }
}

/// The `/v1/models` entry of `listed` under `name`.
fn model_entry(listed: &super::Listed, name: &str) -> Value {
    let mut entry = json!({
        "id": name,
        "object": "model",
        "version": listed.version,
    });
    match &listed.reached {
        Reached::Local(info) => {
            entry["created"] = json!(unix_seconds(info.loaded_at));
            entry["owned_by"] = json!("flotilla:local");
            entry["quantization"] = json!(info.quantization);
            entry["local"] = json!(true);
        }
        Reached::Peer(peer) => {
            entry["created"] = json!(0);
            entry["owned_by"] = json!(format!("flotilla:{}", peer.node));
            entry["quantization"] = json!(peer.quantization);
            entry["local"] = json!(false);
        }
    }
    if !crate::routing::names_match(name, &listed.name, &[], &listed.version) {
        entry["alias_of"] = json!(listed.name);
    }
    entry
}
