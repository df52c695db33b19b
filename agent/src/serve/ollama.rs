//! Ollama-compatible routes: `/api/generate`, `/api/chat` (NDJSON streaming
//! by default, one JSON object with `"stream": false`), `/api/tags` and
//! `/api/version`. The DTOs are Ollama's wire shapes, converted to
//! [`InferenceRequest`] on the way in. Errors are `{"error": "..."}`.
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
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use super::forward::HttpIncoming;
use super::http::{HttpState, incoming, parse_json, with_retry_after, with_served_model};
use super::{
    Chunk, Finished, Generation, InferenceRequest, Input, Message, Params, Reached, Role,
    ServeError,
};

#[derive(Debug, Default, Deserialize)]
struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    repeat_penalty: Option<f32>,
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
            repetition_penalty: self.repeat_penalty,
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
}

#[derive(Debug, Deserialize)]
struct ChatMessageIn {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Vec<ChatMessageIn>,
    stream: Option<bool>,
    #[serde(default)]
    options: Options,
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

fn now_rfc3339() -> String {
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
    let parsed = parse_json::<GenerateRequest>(&body).and_then(|request| {
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
        Ok((
            request.prompt.is_empty(),
            InferenceRequest {
                model: request.model,
                input,
                params: request.options.params()?,
            },
            stream,
        ))
    });
    let (empty_prompt, request, stream) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return error_response(&error),
    };
    if empty_prompt {
        // Ollama's way to preload a model: answer that it is loaded.
        return match state.serving.slot.get(&request.model) {
            Ok(model) => Json(json!({
                "model": model.info().name,
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
    let parsed = parse_json::<ChatRequest>(&body).and_then(|request| {
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
                Ok(Message::new(Role::parse(&message.role)?, message.content))
            })
            .collect::<Result<Vec<_>, ServeError>>()?;
        Ok((
            InferenceRequest {
                model: request.model,
                input: Input::Chat(messages),
                params: request.options.params()?,
            },
            request.stream.unwrap_or(true),
        ))
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
    let generation =
        match Generation::start(&state.serving.slot, &state.serving.config, request).await {
            Ok(generation) => generation,
            Err(local) => {
                return state
                    .forward_or(&requested, &forwarded, local, error_response)
                    .await;
            }
        };
    let served = generation.model.clone();
    let model = served.name.clone();
    if !stream {
        let response = match generation.complete().await {
            Ok(completion) => Json(final_object(
                kind,
                &model,
                &completion.text,
                &completion.finished,
            ))
            .into_response(),
            Err(error) => error_response(&error),
        };
        return with_served_model(&served, response);
    }
    let lines = generation.into_stream().map(move |item| {
        let value = match item {
            Ok(Chunk::Text(text)) => piece(kind, &model, &text),
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
    with_served_model(&served, response)
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

/// The node's own model (`"local": true`) and every model it can route to
/// (`"local": false`, with the `"node"` it would ask first). Each alias is
/// an entry of its own, with `"alias_of"` naming the registry model. A
/// routed model's size, digest and quantization are the directory's; its
/// load time is not known here, so `modified_at` is now.
pub(super) async fn tags(State(state): State<HttpState>) -> Response {
    let mut models: Vec<Value> = Vec::new();
    for listed in state.serving.catalogue() {
        for name in listed.names() {
            let mut entry = match &listed.reached {
                Reached::Local(info) => json!({
                    "modified_at": time::OffsetDateTime::from(info.loaded_at)
                        .format(&Rfc3339)
                        .unwrap_or_default(),
                    "size": info.size_bytes,
                    "digest": info.digest.to_hex(),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "llama",
                        "families": ["llama"],
                        "parameter_size": "",
                        "quantization_level": info.quantization,
                    },
                    "local": true,
                }),
                Reached::Peer(peer) => json!({
                    "modified_at": now_rfc3339(),
                    "size": peer.size_bytes,
                    "digest": peer.digest,
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "",
                        "families": [],
                        "parameter_size": "",
                        "quantization_level": peer.quantization,
                    },
                    "local": false,
                    "node": peer.node,
                }),
            };
            entry["name"] = json!(name);
            entry["model"] = json!(name);
            entry["version"] = json!(listed.version);
            if name != listed.name {
                entry["alias_of"] = json!(listed.name);
            }
            models.push(entry);
        }
    }
    Json(json!({ "models": models })).into_response()
}

pub(super) async fn version() -> Response {
    Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}
