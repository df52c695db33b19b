//! Ollama-compatible generation routes: `/api/generate`, `/api/chat` (NDJSON
//! streaming by default, one JSON object with `"stream": false`). The DTOs
//! are Ollama's wire shapes, converted to [`InferenceRequest`] on the way
//! in, after every field (and every `options` key) has passed its table
//! here ([`fields`]): one this node does not implement is a 400 naming it,
//! never dropped. Answers name the model as the request did. Errors are
//! `{"error": "..."}`. The model routes (`/api/tags`, `/api/show`,
//! `/api/ps`, `/api/pull`, `/api/version`) are in `ollama_models`.
//!
//! As in Ollama, `/api/generate` renders the prompt with the chat template
//! (as a user turn, after `system`) unless `"raw": true`.

use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use flotilla_engine::tools::ToolChoice;

use super::dispatch::Dispatched;
use super::fields::{self, Rule};
use super::forward::HttpIncoming;
use super::http::{HttpState, incoming, with_answer_headers, with_retry_after};
use super::request::Tools;
use super::tool_wire::{ToolCallIn, ToolIn, ollama_format, replayed_calls, tool_specs};
use super::{Chunk, Finished, InferenceRequest, Input, Message, Params, Role, ServeError};

const NO_THINKING: &str = "the served models do not think aloud: only false is accepted";
const NO_LOGPROBS: &str = "log probabilities are not implemented on this node";
const NO_IMAGES: &str = "image generation is not implemented on this node";

/// What both routes accept besides their input: implemented, or without
/// effect on the answer (`keep_alive`: a model stays loaded for as long as
/// it is assigned here, whatever a request asks).
const COMMON_FIELDS: &[(&str, Rule)] = &[
    ("model", Rule::Supported),
    ("stream", Rule::Supported),
    ("options", Rule::Supported),
    ("keep_alive", Rule::NoEffect),
    // `"json"` or a JSON Schema, enforced by constrained decoding.
    ("format", Rule::Supported),
    (
        "think",
        Rule::DefaultOnly {
            accepts: fields::is_false,
            why: NO_THINKING,
        },
    ),
    (
        "logprobs",
        Rule::DefaultOnly {
            accepts: fields::is_false,
            why: NO_LOGPROBS,
        },
    ),
    (
        "top_logprobs",
        Rule::DefaultOnly {
            accepts: fields::is_zero,
            why: NO_LOGPROBS,
        },
    ),
];

/// `/api/generate` beyond [`COMMON_FIELDS`]; `images` is refused by the
/// typed parser with its own message.
const GENERATE_FIELDS: &[(&str, Rule)] = &[
    ("prompt", Rule::Supported),
    ("system", Rule::Supported),
    ("raw", Rule::Supported),
    ("images", Rule::Supported),
    (
        "suffix",
        Rule::DefaultOnly {
            accepts: fields::is_empty,
            why: "insertion before a suffix is not implemented on this node",
        },
    ),
    (
        "template",
        Rule::DefaultOnly {
            accepts: fields::is_empty,
            why: "a request cannot replace the chat template here: the assignment sets it",
        },
    ),
    (
        "context",
        Rule::DefaultOnly {
            accepts: fields::is_empty,
            why: "token context from an earlier answer is not implemented on this node; send the conversation to /api/chat",
        },
    ),
    (
        "width",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: NO_IMAGES,
        },
    ),
    (
        "height",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: NO_IMAGES,
        },
    ),
    (
        "steps",
        Rule::DefaultOnly {
            accepts: fields::never,
            why: NO_IMAGES,
        },
    ),
];

/// `/api/chat` beyond [`COMMON_FIELDS`]. The `ollama` client sends
/// `"tools": []` on every chat; with tools, the model may call them (as
/// OpenAI's `"auto"`).
const CHAT_FIELDS: &[(&str, Rule)] = &[("messages", Rule::Supported), ("tools", Rule::Supported)];

const MESSAGE_FIELDS: &[(&str, Rule)] = &[
    ("role", Rule::Supported),
    ("content", Rule::Supported),
    ("images", Rule::Supported),
    ("tool_calls", Rule::Supported),
    // Pairs a result with its call; the templates pair them by order, as
    // the models were trained.
    ("tool_name", Rule::NoEffect),
    (
        "thinking",
        Rule::DefaultOnly {
            accepts: fields::is_empty,
            why: NO_THINKING,
        },
    ),
];

/// `options`: the sampling options the engine implements; the load-time
/// ones, accepted without effect because the assignment decides how the
/// model is loaded (`num_ctx` too: the model's whole context is used, and a
/// prompt longer than it is refused, never cut); and the others only at
/// the value that changes nothing (Ollama's defaults).
pub(super) const OPTIONS_FIELDS: &[(&str, Rule)] = &[
    ("temperature", Rule::Supported),
    ("top_p", Rule::Supported),
    ("top_k", Rule::Supported),
    ("min_p", Rule::Supported),
    ("seed", Rule::Supported),
    ("num_predict", Rule::Supported),
    ("stop", Rule::Supported),
    ("repeat_penalty", Rule::Supported),
    ("presence_penalty", Rule::Supported),
    ("frequency_penalty", Rule::Supported),
    ("numa", Rule::NoEffect),
    ("num_ctx", Rule::NoEffect),
    ("num_batch", Rule::NoEffect),
    ("num_gpu", Rule::NoEffect),
    ("main_gpu", Rule::NoEffect),
    ("low_vram", Rule::NoEffect),
    ("f16_kv", Rule::NoEffect),
    ("use_mmap", Rule::NoEffect),
    ("use_mlock", Rule::NoEffect),
    ("num_thread", Rule::NoEffect),
    ("num_keep", Rule::NoEffect),
    // Deprecated in Ollama, which ignores it itself.
    ("penalize_newline", Rule::NoEffect),
    (
        "repeat_last_n",
        Rule::DefaultOnly {
            accepts: is_engine_window,
            why: "the repeat penalty looks at the last 64 tokens here: only 64 is accepted",
        },
    ),
    (
        "typical_p",
        Rule::DefaultOnly {
            accepts: fields::is_one,
            why: "typical sampling is not implemented on this node; only 1 is accepted",
        },
    ),
    (
        "tfs_z",
        Rule::DefaultOnly {
            accepts: fields::is_one,
            why: "tail-free sampling is not implemented on this node; only 1 is accepted",
        },
    ),
    (
        "mirostat",
        Rule::DefaultOnly {
            accepts: fields::is_zero,
            why: "mirostat sampling is not implemented on this node; only 0 is accepted",
        },
    ),
    // Read only by mirostat, which is off.
    ("mirostat_tau", Rule::NoEffect),
    ("mirostat_eta", Rule::NoEffect),
    (
        "logits_all",
        Rule::DefaultOnly {
            accepts: fields::is_false,
            why: NO_LOGPROBS,
        },
    ),
    (
        "vocab_only",
        Rule::DefaultOnly {
            accepts: fields::is_false,
            why: "a node loads whole models",
        },
    ),
    (
        "embedding_only",
        Rule::DefaultOnly {
            accepts: fields::is_false,
            why: "a node loads whole models; embeddings come from /api/embed",
        },
    ),
];

fn is_engine_window(value: &Value) -> bool {
    value.as_u64() == Some(flotilla_engine::SamplingParams::default().repetition_window as u64)
}

/// Parses a body after checking its fields against [`COMMON_FIELDS`] and
/// `specific`, its `options` and its messages against theirs.
fn parse_checked<T: DeserializeOwned>(
    body: &[u8],
    specific: &'static fields::Table,
) -> Result<T, ServeError> {
    fields::parse_checked(
        body,
        &fields::Shape {
            top: &[COMMON_FIELDS, specific],
            objects: &[("options", OPTIONS_FIELDS)],
            lists: &[("messages", MESSAGE_FIELDS)],
        },
    )
}

#[derive(Debug, Default, Deserialize)]
struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

impl Options {
    fn params(self) -> Result<Params, ServeError> {
        let max_tokens = match self.num_predict {
            None => None,
            // Ollama: -1 is unbounded, -2 fills the context; both end when
            // the context is full here.
            Some(-1 | -2) => Some(u32::MAX),
            Some(n) if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            Some(n) => {
                return Err(ServeError::InvalidRequest(format!(
                    "num_predict {n} must be positive, -1 or -2"
                )));
            }
        };
        Ok(Params {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            // Ollama's seed is an int; a negative one means random.
            seed: self.seed.and_then(|seed| u64::try_from(seed).ok()),
            stop: self.stop.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct GenerateRequest {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    stream: Option<bool>,
    #[serde(default)]
    options: Options,
    #[serde(default)]
    images: Vec<Value>,
    format: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChatMessageIn {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Vec<Value>,
    tool_calls: Option<Vec<ToolCallIn>>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessageIn>,
    stream: Option<bool>,
    #[serde(default)]
    options: Options,
    format: Option<Value>,
    tools: Option<Vec<ToolIn>>,
}

/// `{"error": "..."}` with the status and `Retry-After` the error maps to.
pub(super) fn error_response(error: &ServeError) -> Response {
    with_retry_after(
        error,
        (
            error.http_status(),
            Json(json!({"error": error.to_string()})),
        )
            .into_response(),
    )
}

fn no_images(images: &[Value]) -> Result<(), ServeError> {
    if images.is_empty() {
        Ok(())
    } else {
        Err(ServeError::InvalidRequest(
            "images are not supported: the served models are text-only".to_owned(),
        ))
    }
}

pub(super) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Generate,
    Chat,
}

pub(super) async fn generate(
    State(state): State<HttpState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let forwarded = match incoming(&headers, &uri, &body) {
        Ok(forwarded) => forwarded,
        Err(error) => return error_response(&error),
    };
    let parsed = parse_checked::<GenerateRequest>(&body, GENERATE_FIELDS).and_then(|request| {
        no_images(&request.images)?;
        let stream = request.stream.unwrap_or(true);
        let input = if request.raw {
            Input::Text(request.prompt.clone())
        } else {
            let mut messages = Vec::new();
            if let Some(system) = request.system.filter(|system| !system.is_empty()) {
                messages.push(Message::new(Role::System, system));
            }
            messages.push(Message::new(Role::User, request.prompt.clone()));
            Input::Chat(messages)
        };
        let mut inference = InferenceRequest::new(request.model, input, request.options.params()?);
        inference.format = ollama_format(request.format)?;
        Ok((request.prompt.is_empty(), inference, stream))
    });
    let (empty_prompt, request, stream) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return error_response(&error),
    };
    if empty_prompt {
        // Ollama's way to preload a model: answer that it is loaded.
        return match state.serving.slot.get(&request.model) {
            Ok(_) => Json(json!({
                "model": request.model,
                "created_at": now_rfc3339(),
                "response": "",
                "done": true,
                "done_reason": "load",
            }))
            .into_response(),
            Err(local) => {
                state
                    .forward_or(&request.model, &forwarded, local, error_response)
                    .await
            }
        };
    }
    respond(state, Kind::Generate, request, stream, forwarded).await
}

pub(super) async fn chat(
    State(state): State<HttpState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let forwarded = match incoming(&headers, &uri, &body) {
        Ok(forwarded) => forwarded,
        Err(error) => return error_response(&error),
    };
    let parsed = parse_checked::<ChatRequest>(&body, CHAT_FIELDS).and_then(|request| {
        if request.messages.is_empty() {
            return Err(ServeError::InvalidRequest(
                "messages must not be empty".to_owned(),
            ));
        }
        let messages = request
            .messages
            .into_iter()
            .map(|message| {
                no_images(&message.images)?;
                let mut parsed = Message::new(Role::parse(&message.role)?, message.content);
                parsed.tool_calls = replayed_calls(message.tool_calls.unwrap_or_default())?;
                Ok(parsed)
            })
            .collect::<Result<Vec<_>, ServeError>>()?;
        let specs = tool_specs(request.tools.unwrap_or_default())?;
        let mut inference = InferenceRequest::new(
            request.model,
            Input::Chat(messages),
            request.options.params()?,
        );
        inference.format = ollama_format(request.format)?;
        inference.tools = (!specs.is_empty()).then(|| Tools {
            specs,
            choice: ToolChoice::Auto,
            parallel: true,
        });
        Ok((inference, request.stream.unwrap_or(true)))
    });
    let (request, stream) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return error_response(&error),
    };
    respond(state, Kind::Chat, request, stream, forwarded).await
}

async fn respond(
    state: HttpState,
    kind: Kind,
    request: InferenceRequest,
    stream: bool,
    forwarded: HttpIncoming,
) -> Response {
    let requested = request.model.clone();
    let calls_tools = request.tools.is_some();
    let generation = match state.dispatch(request, &forwarded).await {
        Dispatched::Generated(generation) => generation,
        Dispatched::Forward(forward) => {
            return state.relay(forward, &forwarded, error_response).await;
        }
        Dispatched::Refused(error) => return error_response(&error),
    };
    let answered = generation.answer_headers();
    // As the client named it (an alias, `name:tag`), as Ollama echoes it.
    let model = requested;
    if !stream || calls_tools {
        // A call is known only once its block is complete, so an answer that
        // may call tools is streamed as a whole: one message, then the end.
        let completion = match generation.complete().await {
            Ok(completion) => completion,
            Err(error) => return with_answer_headers(&answered, error_response(&error)),
        };
        let (content, calls) = completion.text_and_calls(calls_tools);
        let with_calls = |mut value: Value| {
            if !calls.is_empty() {
                value["message"]["tool_calls"] = calls
                    .iter()
                    .map(|call| json!({"function": {"name": call.name, "arguments": call.arguments}}))
                    .collect();
            }
            value
        };
        if !stream {
            let whole = final_object(kind, &model, &content, &completion.finished);
            return with_answer_headers(&answered, Json(with_calls(whole)).into_response());
        }
        let body = format!(
            "{}\n{}\n",
            with_calls(piece(kind, &model, &content)),
            final_object(kind, &model, "", &completion.finished)
        );
        let response = (
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::from(body),
        )
            .into_response();
        return with_answer_headers(&answered, response);
    }
    let lines = generation.into_stream().map(move |item| {
        let value = match item {
            Ok(Chunk::Text { text, .. }) => piece(kind, &model, &text),
            Ok(Chunk::Finished(finished)) => final_object(kind, &model, "", &finished),
            Err(error) => json!({"error": error.to_string()}),
        };
        let mut line = value.to_string();
        line.push('\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    let response = (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response();
    with_answer_headers(&answered, response)
}

fn piece(kind: Kind, model: &str, text: &str) -> Value {
    match kind {
        Kind::Generate => json!({
            "model": model,
            "created_at": now_rfc3339(),
            "response": text,
            "done": false,
        }),
        Kind::Chat => json!({
            "model": model,
            "created_at": now_rfc3339(),
            "message": {"role": "assistant", "content": text},
            "done": false,
        }),
    }
}

/// The last object: `done`, the reason, Ollama's counts and durations (ns).
fn final_object(kind: Kind, model: &str, text: &str, finished: &Finished) -> Value {
    let mut value = piece(kind, model, text);
    let nanos =
        |duration: std::time::Duration| u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    value["done"] = json!(true);
    value["done_reason"] = json!(finished.reason.as_openai());
    value["total_duration"] = json!(nanos(finished.total_time));
    value["load_duration"] = json!(0);
    value["prompt_eval_count"] = json!(finished.prompt_tokens);
    value["prompt_eval_duration"] = json!(nanos(finished.time_to_first_token));
    value["eval_count"] = json!(finished.completion_tokens);
    value["eval_duration"] = json!(nanos(
        finished
            .total_time
            .saturating_sub(finished.time_to_first_token)
    ));
    value
}
