//! Relaying a request to the peers `dispatch` chose (DESIGN.md §7): a model
//! this node does not serve goes to a peer that does, one its full queue
//! refused to a peer with room (overflow), over the surface it came in on:
//! HTTP requests are replayed with the same path and body on the peer's
//! HTTP API and its response is relayed unchanged (streamed as it
//! arrives); gRPC calls are made again on the peer's gRPC API and its
//! stream is relayed.
//!
//! Peers are tried best first ([`Routes::candidates`]); one that cannot be
//! reached is skipped for the next. A forwarded request carries
//! [`HOPS_HEADER`] one higher than it arrived with, and a request that
//! arrived forwarded is not forwarded again (`routing::may_forward`, which
//! `dispatch` asks), so requests cannot loop between nodes whose
//! directories disagree.
//!
//! The client's credential stays here: a forwarded request carries the
//! principal this agent admitted ([`PRINCIPAL_HEADER`]) instead, which a
//! peer believes only over mutual TLS from a node (see `auth`). A peer that
//! refuses it (401/403: no mutual TLS between the two) is skipped and the
//! client told why with a 502, not asked for a key it already gave.
//!
//! A peer's successful answer must name the artifact the directory says it
//! serves (`x-flotilla-model-digest`); one answering with another model is
//! refused, counted (`flotilla_inference_peer_mismatch_total`) and logged,
//! and the next peer tried. With node identity (`--tls-node-cert`) the peer
//! was verified as the node the directory lists (its certificate names it:
//! [`crate::tls`]), so another node cannot answer in its place; without
//! per-node certificates this check catches a misconfigured peer, not one
//! that lies on purpose (see ARCHITECTURE.md).
//!
//! Peer URLs come from the directory checked ([`crate::routing`]) and the
//! request's path is set on them by the URL parser ([`forward_url`]).
//!
//! gRPC answers are checked the same way (the peer's initial metadata names
//! the digest), and carry [`SERVED_BY_HEADER`] in theirs.
//!
//! Each attempt is a `forward` span of CLIENT kind whose trace context goes
//! with the request (`traceparent` header or gRPC metadata), so the peer's
//! spans join the client's trace.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use flotilla_proto::inference::v1 as pb;
use pb::inference_client::InferenceClient;

use tracing::Instrument as _;

use super::ServeError;
use super::auth::PRINCIPAL_HEADER;
use super::dispatch::{Arrival, Forward, Forwarding};
use super::headers::{MODEL_DIGEST_HEADER, MODEL_VERSION_HEADER, SERVED_BY_HEADER};
use crate::routing::{HOPS_HEADER, Peer, Routes, Surface, forward_url, parse_hops};

/// What a forwarded HTTP request needs besides the model.
pub(super) struct HttpIncoming {
    pub path: String,
    pub hops: u32,
    /// The client asked for escalation (issue 20).
    pub escalate: bool,
    pub body: Bytes,
    /// Who this agent admitted (never the client's credential).
    pub principal: Option<HeaderValue>,
}

impl HttpIncoming {
    pub fn arrival(&self) -> Arrival {
        Arrival {
            hops: self.hops,
            escalate: self.escalate,
            surface: Surface::Http,
        }
    }
}

/// The hop count of an HTTP request; a malformed one is a 400.
pub(super) fn http_hops(headers: &HeaderMap) -> Result<u32, ServeError> {
    parse_hops(headers.get(HOPS_HEADER).map(HeaderValue::as_bytes))
        .map_err(|error| ServeError::InvalidRequest(error.to_string()))
}

/// The hop count of a gRPC call; a malformed one is INVALID_ARGUMENT.
pub(super) fn grpc_hops(metadata: &tonic::metadata::MetadataMap) -> Result<u32, ServeError> {
    parse_hops(
        metadata
            .get(HOPS_HEADER)
            .map(tonic::metadata::MetadataValue::as_encoded_bytes),
    )
    .map_err(|error| ServeError::InvalidRequest(error.to_string()))
}

/// Counts a request that went to a peer.
fn count_forwarded(surface: &'static str, why: Forwarding) {
    metrics::counter!("flotilla_inference_forwarded_total", "surface" => surface).increment(1);
    if why == Forwarding::Overflow {
        metrics::counter!("flotilla_inference_overflowed_total", "surface" => surface).increment(1);
    }
}

/// What to answer when no peer took the request: this node's own refusal
/// for an overflow, else that no peer serving the model could be reached.
fn no_peer_took(
    why: Forwarding,
    model: &str,
    local: ServeError,
    failures: &[String],
) -> ServeError {
    match why {
        Forwarding::Overflow => {
            tracing::debug!(model, failures = %failures.join("; "), "no peer took the overflow");
            local
        }
        Forwarding::NotServedHere => ServeError::PeerUnavailable(format!(
            "model {model:?} is not served by this node and no peer serving it could be reached: {}",
            failures.join("; ")
        )),
    }
}

/// Relays an HTTP request to the peers `forward` names, best first;
/// returns the first acceptable answer, or the error to answer with.
pub(super) async fn http(
    client: &reqwest::Client,
    routes: &Routes,
    forward: Forward,
    incoming: &HttpIncoming,
) -> Result<Response, ServeError> {
    let Forward {
        model,
        peers,
        why,
        local,
    } = forward;
    let model = model.as_str();
    let mut failures = Vec::new();
    for peer in &peers {
        let url = match forward_url(&peer.http_url, &incoming.path, routes.https_only()) {
            Ok(url) => url,
            Err(reason) => {
                tracing::warn!(model, peer = %peer.node, url = %peer.http_url, %reason,
                    "not forwarding to a peer URL that does not check out");
                failures.push(format!("{} ({reason})", peer.node));
                continue;
            }
        };
        let span = forward_span(peer, "http");
        let peer_client = match routes.peer_http_client(peer) {
            Ok(Some(peer_client)) => peer_client,
            Ok(None) => client.clone(),
            Err(reason) => {
                tracing::warn!(model, peer = %peer.node, %reason, "cannot forward to peer; trying the next");
                failures.push(format!("{} ({reason})", peer.node));
                continue;
            }
        };
        let mut forwarded = peer_client
            .post(url.clone())
            .headers(span.in_scope(crate::telemetry::propagate::headers))
            .header(header::CONTENT_TYPE.as_str(), "application/json")
            .header(HOPS_HEADER, (incoming.hops + 1).to_string());
        if let Some(principal) = &incoming.principal {
            forwarded = forwarded.header(PRINCIPAL_HEADER, principal.as_bytes());
        }
        let sent = forwarded
            .body(incoming.body.clone())
            .send()
            .instrument(span.clone())
            .await;
        match sent {
            Ok(response) => {
                span.record("http.response.status_code", response.status().as_u16());
                if why == Forwarding::Overflow && matches!(response.status().as_u16(), 429 | 503) {
                    tracing::debug!(model, peer = %peer.node, status = %response.status(),
                        "a peer is full too; trying the next");
                    failures.push(format!("{} (answered {})", peer.node, response.status()));
                    continue;
                }
                let answered = response
                    .headers()
                    .get(MODEL_DIGEST_HEADER)
                    .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
                if let Err(reason) = check_answer(response.status().as_u16(), answered, peer) {
                    span.record("otel.status_code", "ERROR");
                    tracing::warn!(model, peer = %peer.node, %url, %reason, "refusing a peer's answer");
                    failures.push(format!("{} ({reason})", peer.node));
                    continue;
                }
                count_forwarded("http", why);
                tracing::debug!(model, peer = %peer.node, %url, ?why, "forwarded an HTTP request");
                return Ok(relay(response, &peer.node));
            }
            Err(error) => {
                span.record("otel.status_code", "ERROR");
                // The whole chain: a refused peer certificate is in a source.
                let error = crate::enrol::error_chain(&error);
                tracing::warn!(model, peer = %peer.node, %url, %error, "cannot forward to peer; trying the next");
                failures.push(format!("{} ({error})", peer.node));
            }
        }
    }
    Err(no_peer_took(why, model, local, &failures))
}

/// The `forward` span (CLIENT kind) of one attempt on `peer`: the peer's
/// server span becomes its child, through the trace context it carries.
fn forward_span(peer: &Peer, surface: &'static str) -> tracing::Span {
    tracing::info_span!(
        "forward",
        otel.kind = "client",
        flotilla.peer = %peer.node,
        flotilla.surface = surface,
        gen_ai.request.model = %peer.model,
        http.response.status_code = tracing::field::Empty,
        rpc.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Why a peer's answer (its HTTP status, or 200 for a gRPC call that
/// started, and the digest it names) is not relayed: it refused this agent
/// as a node (no mutual TLS), or it answered with an artifact other than
/// the one the directory says it serves.
fn check_answer(status: u16, answered: Option<String>, peer: &Peer) -> Result<(), String> {
    if status == 401 || status == 403 {
        return Err(format!(
            "it refused this agent with {status}: forwarding to a peer that requires \
             authentication needs mutual TLS (--tls-cert and a CA that verifies peers)"
        ));
    }
    if (200..300).contains(&status)
        && !peer.digest.is_empty()
        && answered.as_deref() != Some(peer.digest.as_str())
    {
        metrics::counter!("flotilla_inference_peer_mismatch_total").increment(1);
        return Err(format!(
            "it answered with artifact {:?}, but the directory says it serves {} {} ({})",
            answered.unwrap_or_default(),
            peer.model,
            peer.version,
            peer.digest
        ));
    }
    Ok(())
}

/// The peer's response as this node's: status, content type, retry advice,
/// which model version answered, and the body, streamed through unchanged.
fn relay(response: reqwest::Response, node: &str) -> Response {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for name in [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        header::CACHE_CONTROL,
        HeaderName::from_static(MODEL_VERSION_HEADER),
        HeaderName::from_static(MODEL_DIGEST_HEADER),
    ] {
        if let Some(value) = response.headers().get(name.as_str())
            && let Ok(value) = HeaderValue::from_bytes(value.as_bytes())
        {
            headers.insert(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(node) {
        headers.insert(SERVED_BY_HEADER, value);
    }
    let mut relayed = Response::new(Body::from_stream(response.bytes_stream()));
    *relayed.status_mut() = status;
    *relayed.headers_mut() = headers;
    relayed
}

/// `message` as a call to a peer: one more hop, and the principal this
/// agent admitted (never the client's credential).
fn forwarded<T>(
    message: T,
    hops: u32,
    principal: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> tonic::Request<T> {
    // The current (`forward`) span's trace context; the interceptor never
    // fails.
    let mut request = match crate::telemetry::propagate::grpc_interceptor(tonic::Request::new(())) {
        Ok(traced) => traced.map(|()| message),
        Err(_) => tonic::Request::new(message),
    };
    if let Ok(value) = (hops + 1).to_string().parse() {
        request.metadata_mut().insert(HOPS_HEADER, value);
    }
    if let Some(value) = principal {
        request
            .metadata_mut()
            .insert(PRINCIPAL_HEADER, value.clone());
    }
    request
}

/// A gRPC call to replay on a peer.
#[derive(Debug, Clone)]
pub(super) enum GrpcCall {
    Generate(pb::GenerateRequest),
    Chat(pb::ChatRequest),
    Embed(pb::EmbedRequest),
}

/// A peer's answer to a [`GrpcCall`]: a generation's stream, or an
/// embedding call's one message.
pub(super) enum GrpcAnswer {
    Stream(tonic::Streaming<pb::GenerateResponse>),
    Embed(pb::EmbedResponse),
}

/// Relays a gRPC call to the peers `forward` names, best first; returns
/// the first acceptable answer, or the status to answer with.
pub(super) async fn grpc(
    routes: &Routes,
    forward: Forward,
    incoming: &tonic::metadata::MetadataMap,
    hops: u32,
    call: GrpcCall,
) -> Result<tonic::Response<GrpcAnswer>, tonic::Status> {
    // Set by the interceptor from what it verified, never the client's.
    let principal = incoming.get(PRINCIPAL_HEADER).cloned();
    let Forward {
        model,
        peers,
        why,
        local,
    } = forward;
    let model = model.as_str();
    let mut failures = Vec::new();
    for peer in &peers {
        let channel = match routes.peer_grpc_channel(peer) {
            Ok(channel) => channel,
            Err(error) => {
                failures.push(format!("{} ({error})", peer.node));
                continue;
            }
        };
        let mut client = InferenceClient::new(channel);
        let span = forward_span(peer, "grpc");
        let answered = async {
            match call.clone() {
                GrpcCall::Generate(request) => client
                    .generate(forwarded(request, hops, principal.as_ref()))
                    .await
                    .map(|response| response.map(GrpcAnswer::Stream)),
                GrpcCall::Chat(request) => client
                    .chat(forwarded(request, hops, principal.as_ref()))
                    .await
                    .map(|response| response.map(GrpcAnswer::Stream)),
                GrpcCall::Embed(request) => client
                    .embed(forwarded(request, hops, principal.as_ref()))
                    .await
                    .map(|response| response.map(GrpcAnswer::Embed)),
            }
        }
        .instrument(span.clone())
        .await;
        match answered {
            Ok(response) => {
                let digest = response
                    .metadata()
                    .get(MODEL_DIGEST_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                if let Err(reason) = check_answer(200, digest, peer) {
                    span.record("otel.status_code", "ERROR");
                    tracing::warn!(model, peer = %peer.node, %reason, "refusing a peer's answer");
                    failures.push(format!("{} ({reason})", peer.node));
                    continue;
                }
                count_forwarded("grpc", why);
                tracing::debug!(model, peer = %peer.node, ?why, "forwarded a gRPC call");
                let (mut answered, stream, extensions) = response.into_parts();
                if let Ok(value) = peer.node.parse() {
                    answered.insert(SERVED_BY_HEADER, value);
                }
                return Ok(tonic::Response::from_parts(answered, stream, extensions));
            }
            // Unreachable, or the connection broke under the call: the
            // next peer may do.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                span.record("rpc.response.status_code", format!("{:?}", status.code()));
                tracing::warn!(model, peer = %peer.node, url = %peer.grpc_url,
                    error = %status.message(), "cannot forward to peer; trying the next");
                failures.push(format!("{} ({})", peer.node, status.message()));
            }
            // The peer does not take this agent for a node: no mutual TLS.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::warn!(model, peer = %peer.node, error = %status.message(),
                    "a peer refused a forwarded call; forwarding to a peer that requires authentication needs mutual TLS");
                failures.push(format!(
                    "{} (refused this agent: forwarding to a peer that requires authentication needs mutual TLS)",
                    peer.node
                ));
            }
            // Full as well: the next peer may have room.
            Err(status)
                if why == Forwarding::Overflow
                    && status.code() == tonic::Code::ResourceExhausted =>
            {
                failures.push(format!("{} ({})", peer.node, status.message()));
            }
            Err(status) => return Err(status),
        }
    }
    Err(no_peer_took(why, model, local, &failures).into())
}
