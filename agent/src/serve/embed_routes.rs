//! The embedding routes of both HTTP surfaces: OpenAI's `POST /v1/embeddings`
//! and Ollama's `POST /api/embed` and older `POST /api/embeddings`. Each
//! body passes its field table ([`fields`]) before the typed parse, becomes
//! an [`EmbeddingRequest`], and is answered in its API's shape and error
//! body; a model this node does not serve is forwarded as the generation
//! routes forward it.
//!
//! Normalisation follows each API: OpenAI's and Ollama's `/api/embed`
//! vectors are unit length; Ollama's legacy `/api/embeddings` returns the
//! pooled vector as is, as Ollama does. Inputs longer than the context are
//! refused, except where Ollama's `truncate` (default true) asks to cut them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::embedding::{self, EmbeddingInput, EmbeddingRequest, Embeddings, Overflow};
use super::fields::{self, Rule};
use super::http::{HttpState, incoming, with_served_model};
use super::{ServeError, ollama, openai};

/// `/v1/embeddings`: every field of OpenAI's request (`user` identifies the
/// caller in OpenAI's records and changes nothing).
const OPENAI_FIELDS: &[(&str, Rule)] = &[
    ("model", Rule::Supported),
    ("input", Rule::Supported),
    ("encoding_format", Rule::Supported),
    ("dimensions", Rule::Supported),
    ("user", Rule::NoEffect),
];

/// `/api/embed`: `keep_alive` as on the other Ollama routes (a model stays
/// loaded while it is assigned); `options` against the generation options'
/// table, since none of them changes an embedding beyond what that table
/// already refuses.
const OLLAMA_EMBED_FIELDS: &[(&str, Rule)] = &[
    ("model", Rule::Supported),
    ("input", Rule::Supported),
    ("truncate", Rule::Supported),
    ("dimensions", Rule::Supported),
    ("options", Rule::Supported),
    ("keep_alive", Rule::NoEffect),
];

/// `/api/embeddings` (Ollama's older route).
const OLLAMA_EMBEDDINGS_FIELDS: &[(&str, Rule)] = &[
    ("model", Rule::Supported),
    ("prompt", Rule::Supported),
    ("options", Rule::Supported),
    ("keep_alive", Rule::NoEffect),
];

fn parse_checked<T: DeserializeOwned>(
    body: &[u8],
    table: &fields::Table,
    options: Option<&fields::Table>,
) -> Result<T, ServeError> {
    let options: Vec<(&str, &fields::Table)> = options
        .map(|table| ("options", table))
        .into_iter()
        .collect();
    fields::parse_checked(
        body,
        &fields::Shape {
            top: &[table],
            objects: &options,
            lists: &[],
        },
    )
}

/// OpenAI's `input`: a string, a list of strings, a list of token ids, or
/// a list of such lists.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OpenAiInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Debug, Deserialize)]
struct OpenAiRequest {
    model: String,
    input: OpenAiInput,
    #[serde(default)]
    encoding_format: EncodingFormat,
    dimensions: Option<u64>,
}

impl TryFrom<OpenAiRequest> for EmbeddingRequest {
    type Error = ServeError;

    fn try_from(wire: OpenAiRequest) -> Result<Self, ServeError> {
        let invalid = |message: &str| Err(ServeError::InvalidRequest(message.to_owned()));
        let inputs = match wire.input {
            OpenAiInput::Text(text) => vec![text_input(text)?],
            OpenAiInput::Texts(texts) => texts
                .into_iter()
                .map(text_input)
                .collect::<Result<_, _>>()?,
            OpenAiInput::Tokens(tokens) => vec![token_input(tokens)?],
            OpenAiInput::TokenLists(lists) => lists
                .into_iter()
                .map(token_input)
                .collect::<Result<_, _>>()?,
        };
        if inputs.is_empty() {
            return invalid("input must not be an empty list");
        }
        Ok(EmbeddingRequest {
            model: wire.model,
            inputs,
            // OpenAI refuses an input longer than the model takes.
            overflow: Overflow::Refuse,
            dimensions: wire.dimensions,
        })
    }
}

fn text_input(text: String) -> Result<EmbeddingInput, ServeError> {
    if text.is_empty() {
        return Err(ServeError::InvalidRequest(
            "input must not contain an empty string".to_owned(),
        ));
    }
    Ok(EmbeddingInput::Text(text))
}

fn token_input(tokens: Vec<u32>) -> Result<EmbeddingInput, ServeError> {
    if tokens.is_empty() {
        return Err(ServeError::InvalidRequest(
            "input must not contain an empty token list".to_owned(),
        ));
    }
    Ok(EmbeddingInput::Tokens(tokens))
}

/// A vector scaled to unit length.
fn unit(mut vector: Vec<f32>) -> Vec<f32> {
    flotilla_engine::normalize(&mut vector);
    vector
}

/// Little-endian f32 bytes in base64, as OpenAI's `encoding_format: base64`.
fn base64_floats(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs `request` here, or forwards the body when the model is served
/// elsewhere; `answer` shapes a local result.
async fn respond(
    state: HttpState,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
    parsed: Result<EmbeddingRequest, ServeError>,
    error_response: fn(&ServeError) -> Response,
    answer: impl FnOnce(Embeddings) -> Value,
) -> Response {
    let forwarded = match incoming(&headers, &uri, &body) {
        Ok(forwarded) => forwarded,
        Err(error) => return error_response(&error),
    };
    let request = match parsed {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let requested = request.model.clone();
    match embedding::embed(&state.serving.slot, &state.serving.config, request).await {
        Ok(embeddings) => {
            let served = embeddings.model.clone();
            with_served_model(&served, Json(answer(embeddings)).into_response())
        }
        Err(local) => {
            state
                .forward_or(&requested, &forwarded, local, error_response)
                .await
        }
    }
}

pub(super) async fn openai_embeddings(
    State(state): State<HttpState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let parsed = parse_checked::<OpenAiRequest>(&body, OPENAI_FIELDS, None);
    let format = parsed
        .as_ref()
        .map_or(EncodingFormat::Float, |request| request.encoding_format);
    let model = parsed
        .as_ref()
        .map_or_else(|_| String::new(), |request| request.model.clone());
    let parsed = parsed.and_then(EmbeddingRequest::try_from);
    respond(
        state,
        headers,
        uri,
        body,
        parsed,
        openai::error_response,
        |embeddings| {
            let data: Vec<Value> = embeddings
                .vectors
                .into_iter()
                .enumerate()
                .map(|(index, vector)| {
                    let vector = unit(vector);
                    let embedding = match format {
                        EncodingFormat::Float => json!(vector),
                        EncodingFormat::Base64 => json!(base64_floats(&vector)),
                    };
                    json!({"object": "embedding", "index": index, "embedding": embedding})
                })
                .collect();
            json!({
                "object": "list",
                "data": data,
                // As the client named it, as the completion routes do.
                "model": model,
                "usage": {
                    "prompt_tokens": embeddings.prompt_tokens,
                    "total_tokens": embeddings.prompt_tokens,
                },
            })
        },
    )
    .await
}

/// Ollama's `input`: a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OllamaInput {
    Text(String),
    Texts(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct OllamaEmbedRequest {
    model: String,
    input: Option<OllamaInput>,
    truncate: Option<bool>,
    dimensions: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct OllamaEmbeddingsRequest {
    model: String,
    #[serde(default)]
    prompt: String,
}

/// Ollama's durations are nanoseconds.
fn nanoseconds(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

pub(super) async fn ollama_embed(
    State(state): State<HttpState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let parsed = parse_checked::<OllamaEmbedRequest>(
        &body,
        OLLAMA_EMBED_FIELDS,
        Some(ollama::OPTIONS_FIELDS),
    );
    let request = match parsed {
        Ok(request) => request,
        Err(error) => return ollama::error_response(&error),
    };
    let texts = match request.input {
        None => Vec::new(),
        // Ollama reads an empty string as no input.
        Some(OllamaInput::Text(text)) if text.is_empty() => Vec::new(),
        Some(OllamaInput::Text(text)) => vec![text],
        Some(OllamaInput::Texts(texts)) => texts,
    };
    if texts.is_empty() {
        // As Ollama: no input, no vectors (and no work), for the served model.
        return match state.serving.slot.get(&request.model) {
            Ok(_) => Json(json!({"model": request.model, "embeddings": []})).into_response(),
            Err(local) => {
                let forwarded = match incoming(&headers, &uri, &body) {
                    Ok(forwarded) => forwarded,
                    Err(error) => return ollama::error_response(&error),
                };
                state
                    .forward_or(&request.model, &forwarded, local, ollama::error_response)
                    .await
            }
        };
    }
    let model = request.model.clone();
    let parsed = texts
        .into_iter()
        .map(text_input)
        .collect::<Result<Vec<_>, _>>()
        .map(|inputs| EmbeddingRequest {
            model: request.model,
            inputs,
            // Ollama's default: cut an input to the context rather than fail.
            overflow: if request.truncate.unwrap_or(true) {
                Overflow::Truncate
            } else {
                Overflow::Refuse
            },
            dimensions: request.dimensions,
        });
    respond(
        state,
        headers,
        uri,
        body,
        parsed,
        ollama::error_response,
        |embeddings| {
            let vectors: Vec<Vec<f32>> = embeddings.vectors.into_iter().map(unit).collect();
            json!({
                "model": model,
                "embeddings": vectors,
                "total_duration": nanoseconds(embeddings.total_time),
                "load_duration": 0,
                "prompt_eval_count": embeddings.prompt_tokens,
            })
        },
    )
    .await
}

pub(super) async fn ollama_embeddings(
    State(state): State<HttpState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let parsed = parse_checked::<OllamaEmbeddingsRequest>(
        &body,
        OLLAMA_EMBEDDINGS_FIELDS,
        Some(ollama::OPTIONS_FIELDS),
    );
    let request = match parsed {
        Ok(request) => request,
        Err(error) => return ollama::error_response(&error),
    };
    if request.prompt.is_empty() {
        // As Ollama: an empty prompt gets an empty vector.
        return match state.serving.slot.get(&request.model) {
            Ok(_) => Json(json!({"embedding": []})).into_response(),
            Err(local) => {
                let forwarded = match incoming(&headers, &uri, &body) {
                    Ok(forwarded) => forwarded,
                    Err(error) => return ollama::error_response(&error),
                };
                state
                    .forward_or(&request.model, &forwarded, local, ollama::error_response)
                    .await
            }
        };
    }
    let parsed = Ok(EmbeddingRequest {
        model: request.model,
        inputs: vec![EmbeddingInput::Text(request.prompt)],
        // The legacy route has no `truncate`; an input past the context is refused.
        overflow: Overflow::Refuse,
        dimensions: None,
    });
    respond(
        state,
        headers,
        uri,
        body,
        parsed,
        ollama::error_response,
        // Not normalised: Ollama's legacy route returns the pooled vector as is.
        |embeddings| json!({"embedding": embeddings.vectors.into_iter().next().unwrap_or_default()}),
    )
    .await
}
