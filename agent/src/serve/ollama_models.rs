//! Ollama-compatible model routes: `/api/tags` (every model reachable
//! through this node), `/api/show` (one model's template, parameters,
//! details and GGUF metadata), `/api/ps` (the model loaded here),
//! `/api/pull` and `/api/version`, in the shapes the `ollama` client
//! parses. Models reach a node by assignment from the controller, never by
//! pull: a pull succeeds for a model already reachable here (as
//! `/api/tags` lists it) and is refused with a 404 that says so otherwise.
//!
//! Names are listed with Ollama's `:latest` tag; every route takes a name
//! as clients write it (bare, `:latest`, `:<version>`, or an alias).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use super::card::ModelCard;
use super::fields::{self, Rule};
use super::http::{HttpState, incoming, parse_json, with_served_model};
use super::ollama::{error_response, now_rfc3339};
use super::{Listed, ModelInfo, Reached, ServeError};

/// The Ollama release whose API these routes follow (its `docs/api.md`:
/// `/api/show` with `model_info` and `capabilities`, `/api/ps` with
/// `expires_at` and `size_vram`, `/api/tags` details). Clients compare
/// this string with the Ollama versions they need (Open WebUI and the
/// `ollama` CLI, for example, call `/api/version` first), and read the
/// agent's own version (0.1.0) as an Ollama from 2023 that lacks these
/// routes; so this is what `/api/version` answers, the agent's own version
/// being in `x-flotilla-agent-version`.
pub const OLLAMA_API_VERSION: &str = "0.6.0";

/// The response header with the agent's own version (`/api/version`).
pub const AGENT_VERSION_HEADER: &str = "x-flotilla-agent-version";

/// `name` with Ollama's `:latest` tag unless it has a tag already.
fn tagged(name: &str) -> String {
    if name.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// Ollama's `details` of a model loaded here.
fn local_details(info: &ModelInfo) -> Value {
    let card: &ModelCard = &info.card;
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": card.architecture,
        "families": [card.architecture],
        "parameter_size": card.parameter_size(),
        "quantization_level": card.file_type.clone().unwrap_or_else(|| info.quantization.clone()),
    })
}

/// Ollama's `details` of a model only a peer serves: the directory tells
/// its quantization, not its architecture or parameter count.
fn peer_details(quantization: &str) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": "",
        "families": [],
        "parameter_size": "",
        "quantization_level": quantization,
    })
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
                    "modified_at": rfc3339(info.loaded_at.into()),
                    "size": info.size_bytes,
                    "digest": info.digest.to_hex(),
                    "details": local_details(info),
                    "local": true,
                }),
                Reached::Peer(peer) => json!({
                    "modified_at": now_rfc3339(),
                    "size": peer.size_bytes,
                    "digest": peer.digest,
                    "details": peer_details(&peer.quantization),
                    "local": false,
                    "node": peer.node,
                }),
            };
            entry["name"] = json!(tagged(name));
            entry["model"] = json!(tagged(name));
            entry["version"] = json!(listed.version);
            if name != listed.name {
                entry["alias_of"] = json!(listed.name);
            }
            models.push(entry);
        }
    }
    Json(json!({ "models": models })).into_response()
}

/// `/api/show` and `/api/pull` name the model as `model` (Ollama's older
/// clients: `name`).
#[derive(Debug, Deserialize)]
struct ModelRequest {
    model: Option<String>,
    name: Option<String>,
    stream: Option<bool>,
}

impl ModelRequest {
    fn model(&self) -> Result<&str, ServeError> {
        self.model
            .as_deref()
            .or(self.name.as_deref())
            .filter(|model| !model.trim().is_empty())
            .ok_or_else(|| ServeError::InvalidRequest("model is required".to_owned()))
    }
}

const SHOW_FIELDS: &[(&str, Rule)] = &[
    ("model", Rule::Supported),
    ("name", Rule::Supported),
    // The long tokenizer arrays are left out either way (`card`).
    ("verbose", Rule::NoEffect),
];

const PULL_FIELDS: &[(&str, Rule)] = &[
    ("model", Rule::Supported),
    ("name", Rule::Supported),
    ("stream", Rule::Supported),
    // Nothing is downloaded from a registry, securely or not.
    ("insecure", Rule::NoEffect),
];

fn parse_model_request(body: &[u8], table: &[(&str, Rule)]) -> Result<ModelRequest, ServeError> {
    let value: Value = parse_json(body)?;
    fields::check(&value, &[table], "")?;
    serde_json::from_value(value)
        .map_err(|error| ServeError::InvalidRequest(format!("invalid JSON body: {error}")))
}

/// The sampling defaults requests get here, as Ollama's `parameters`
/// (Modelfile `PARAMETER` lines) show a model's.
fn parameters() -> String {
    let defaults = flotilla_engine::SamplingParams::default();
    [
        ("temperature", defaults.temperature.to_string()),
        ("top_k", defaults.top_k.to_string()),
        ("top_p", defaults.top_p.to_string()),
        ("min_p", defaults.min_p.to_string()),
        ("repeat_penalty", defaults.repetition_penalty.to_string()),
        ("repeat_last_n", defaults.repetition_window.to_string()),
    ]
    .iter()
    .map(|(name, value)| format!("{name:<30} {value}"))
    .collect::<Vec<_>>()
    .join("\n")
}

/// One model's template, parameters, details and GGUF metadata. A model
/// this node does not serve is asked of the peer that does (the same body
/// on its `/api/show`), so a routed model shows what its node shows.
pub(super) async fn show(
    State(state): State<HttpState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let forwarded = match incoming(&headers, &uri, &body) {
        Ok(forwarded) => forwarded,
        Err(error) => return error_response(&error),
    };
    let request = match parse_model_request(&body, SHOW_FIELDS) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let requested = match request.model() {
        Ok(model) => model.to_owned(),
        Err(error) => return error_response(&error),
    };
    let served = match state.serving.slot.get(&requested) {
        Ok(served) => served,
        Err(local) => {
            return state
                .forward_or(&requested, &forwarded, local, error_response)
                .await;
        }
    };
    let info = served.info();
    let card = &info.card;
    let mut model_info = card.model_info.clone();
    model_info.insert(
        "general.context_length".to_owned(),
        json!(info.context_length),
    );
    let response = Json(json!({
        "modelfile": format!("# Served by Flotilla: {} {} ({})\nFROM {}\n", info.name, info.version, info.digest.short(), tagged(&info.name)),
        "parameters": parameters(),
        "template": card.template,
        "details": local_details(info),
        "model_info": model_info,
        "capabilities": ["completion"],
        "modified_at": rfc3339(info.loaded_at.into()),
    }))
    .into_response();
    with_served_model(info, response)
}

/// The model loaded on this node (peers' models are loaded elsewhere). It
/// stays loaded while it is assigned, as an Ollama model pinned with
/// `keep_alive: -1` does, so `expires_at` is what Ollama shows for one:
/// now plus Go's largest duration (about 292 years). Weights are in main
/// memory, so `size_vram` is 0.
pub(super) async fn ps(State(state): State<HttpState>) -> Response {
    let models: Vec<Value> = state
        .serving
        .slot
        .current()
        .iter()
        .map(|served| {
            let info = served.info();
            let expires_at =
                time::OffsetDateTime::now_utc() + time::Duration::nanoseconds(i64::MAX);
            json!({
                "name": tagged(&info.name),
                "model": tagged(&info.name),
                "size": info.size_bytes,
                "digest": info.digest.to_hex(),
                "details": local_details(info),
                "expires_at": rfc3339(expires_at),
                "size_vram": 0,
                "context_length": info.context_length,
                "version": info.version,
            })
        })
        .collect();
    Json(json!({ "models": models })).into_response()
}

/// Succeeds, as a pull of a model already present does in Ollama, when the
/// model is reachable through this node (served here or by a peer, as
/// `/api/tags` lists it); otherwise a 404 saying that models arrive by
/// assignment. Streams Ollama's NDJSON status lines unless
/// `"stream": false`.
pub(super) async fn pull(State(state): State<HttpState>, body: Bytes) -> Response {
    let request = match parse_model_request(&body, PULL_FIELDS) {
        Ok(request) => request,
        Err(error) => return error_response(&error),
    };
    let requested = match request.model() {
        Ok(model) => model.to_owned(),
        Err(error) => return error_response(&error),
    };
    let reachable = state.serving.catalogue().iter().any(|listed: &Listed| {
        crate::routing::names_match(&requested, &listed.name, &listed.aliases, &listed.version)
    });
    if !reachable {
        return error_response(&ServeError::NotAssigned { requested });
    }
    if !request.stream.unwrap_or(true) {
        return Json(json!({"status": "success"})).into_response();
    }
    let lines = [
        json!({"status": "pulling manifest"}),
        json!({"status": "success"}),
    ]
    .map(|line| Ok::<_, std::convert::Infallible>(format!("{line}\n")));
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(futures::stream::iter(lines)),
    )
        .into_response()
}

pub(super) async fn version() -> Response {
    (
        [(AGENT_VERSION_HEADER, env!("CARGO_PKG_VERSION"))],
        Json(json!({"version": OLLAMA_API_VERSION})),
    )
        .into_response()
}
