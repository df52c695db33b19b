//! The HTTP server: one axum router with the OpenAI-compatible routes under
//! `/v1`, the Ollama-compatible ones under `/api`, and `/metrics`. Bodies are
//! read as bytes and parsed here, so a malformed body gets a 400 in the
//! surface's own error shape rather than axum's plain-text rejection.
//! Requests for models this node does not serve go to a peer through
//! [`forward::http`] with the same path and body.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;

use super::auth::PRINCIPAL_HEADER;
use super::dispatch::{self, Dispatched, Forward};
use super::forward::{self, HttpIncoming};
use super::{ServeError, Serving, browser, embed_routes, ollama, ollama_models, openai};

#[derive(Clone)]
pub(super) struct HttpState {
    pub serving: Serving,
    pub metrics: Option<PrometheusHandle>,
    /// Forwards requests to peers (pools their connections).
    pub client: reqwest::Client,
}

impl HttpState {
    /// Relays `forward` to its peers; `error_response` gives a refusal its
    /// surface's shape.
    pub async fn relay(
        &self,
        forward: Forward,
        incoming: &HttpIncoming,
        error_response: fn(&ServeError) -> Response,
    ) -> Response {
        match forward::http(&self.client, &self.serving.routes, forward, incoming).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        }
    }

    /// Answers with `local`'s error unless the request can go to a peer
    /// (for requests that do not generate: embeddings, a preload).
    pub async fn forward_or(
        &self,
        model: &str,
        incoming: &HttpIncoming,
        local: ServeError,
        error_response: fn(&ServeError) -> Response,
    ) -> Response {
        match dispatch::forward_instead(&self.serving, model, incoming.arrival(), local) {
            Ok(forward) => self.relay(forward, incoming, error_response).await,
            Err(error) => error_response(&error),
        }
    }

    /// Routes and runs a generation (`dispatch::run`).
    pub async fn dispatch(
        &self,
        request: super::InferenceRequest,
        incoming: &HttpIncoming,
    ) -> Dispatched {
        dispatch::run(&self.serving, request, incoming.arrival()).await
    }
}

/// Admits a request (`auth::admit`): a node's forwarded request by its
/// verified client certificate, anyone else by a valid API key or JWT when
/// authentication is configured. Refusals come in the error shape of the
/// surface asked (OpenAI under `/v1`, else Ollama). The admitted principal
/// replaces whatever the request said under [`PRINCIPAL_HEADER`], so that
/// handlers (and forwarding) read only what was verified here.
async fn authorize(
    State(keys): State<Option<std::sync::Arc<super::InferenceAuth>>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let from_node = request
        .extensions()
        .get::<std::sync::Arc<flotilla_tls::TlsInfo>>()
        .is_some_and(|info| !info.peer_certificates.is_empty());
    let claimed = request.headers_mut().remove(PRINCIPAL_HEADER);
    let admitted = super::auth::admit(
        keys.as_deref(),
        request
            .headers()
            .get(header::AUTHORIZATION)
            .map(axum::http::HeaderValue::as_bytes),
        from_node,
        claimed.as_ref().map(axum::http::HeaderValue::as_bytes),
    );
    let error = match admitted.map(|principal| axum::http::HeaderValue::from_str(&principal)) {
        Ok(Ok(principal)) => {
            request.headers_mut().insert(PRINCIPAL_HEADER, principal);
            return next.run(request).await;
        }
        Ok(Err(_)) => {
            ServeError::Internal("the admitted principal is not a header value".to_owned())
        }
        Err(error) => error,
    };
    let unauthenticated = matches!(error, ServeError::Unauthenticated);
    if unauthenticated {
        metrics::counter!("flotilla_inference_unauthenticated_total").increment(1);
    }
    let mut response = if request.uri().path().starts_with("/v1/") {
        openai::error_response(&error)
    } else {
        ollama::error_response(&error)
    };
    if unauthenticated {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The hop count, path and body of a request that may be forwarded.
pub(super) fn incoming(
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
    body: &axum::body::Bytes,
) -> Result<HttpIncoming, ServeError> {
    Ok(HttpIncoming {
        path: uri.path().to_owned(),
        hops: forward::http_hops(headers)?,
        escalate: super::escalate::header_asks(
            headers
                .get(super::escalate::ESCALATE_HEADER)
                .map(axum::http::HeaderValue::as_bytes),
        )?,
        body: body.clone(),
        // Set by `authorize` from what it verified, never the client's.
        principal: headers.get(PRINCIPAL_HEADER).cloned(),
    })
}

pub(super) fn router(serving: Serving, metrics: Option<PrometheusHandle>) -> Router {
    let cors = serving.config.browser.cors_layer();
    let router = Router::new()
        .route("/v1/models", get(openai::list_models))
        // A wildcard: a model id may hold a `/` (`org/model`).
        .route("/v1/models/{*id}", get(openai::retrieve_model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embed_routes::openai_embeddings))
        .route("/api/tags", get(ollama_models::tags))
        .route("/api/show", post(ollama_models::show))
        .route("/api/ps", get(ollama_models::ps))
        .route("/api/pull", post(ollama_models::pull))
        .route("/api/version", get(ollama_models::version))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(embed_routes::ollama_embed))
        .route("/api/embeddings", post(embed_routes::ollama_embeddings))
        .route("/v1/flotilla/scrub", post(super::scrub::scrub))
        // Only the routes above need a key; probes and metrics stay open.
        .route_layer(axum::middleware::from_fn_with_state(
            serving.config.auth.clone(),
            authorize,
        ))
        // Before the key check (the outer layer runs first): a web page's
        // request is refused whatever it carries.
        .route_layer(axum::middleware::from_fn_with_state(
            serving.config.browser.clone(),
            browser::guard,
        ))
        .route("/metrics", get(prometheus_metrics))
        // Ollama answers its root so that clients can probe it.
        .route(
            "/",
            get(|| async { "Ollama-compatible Flotilla agent is running" }),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            &super::metrics::HTTP_REQUESTS,
            flotilla_telemetry::http::record_metrics,
        ))
        .layer(axum::middleware::from_fn(
            flotilla_telemetry::http::trace_http,
        ))
        .with_state(HttpState {
            // Before `serving` moves. The agent checked at start that this
            // builds (`ServeConfig::peer_http_client`).
            client: serving.config.peer_http_client().unwrap_or_else(|error| {
                tracing::error!(%error, "forwarding to peers without --peer-ca");
                reqwest::Client::new()
            }),
            serving,
            metrics,
        });
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Parses a JSON body; the error names what was wrong.
pub(super) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServeError> {
    if body.is_empty() {
        return Err(ServeError::InvalidRequest(
            "the request body is empty; expected a JSON object".to_owned(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|error| ServeError::InvalidRequest(format!("invalid JSON body: {error}")))
}

/// Seconds since the Unix epoch.
pub(super) fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Adds `Retry-After` when the error advises one.
pub(super) fn with_retry_after(error: &ServeError, mut response: Response) -> Response {
    if let Some(seconds) = error.retry_after_seconds()
        && let Ok(value) = seconds.to_string().parse()
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Says who answered, so that clients and operators can tell a rollout's
/// versions apart in responses, and an escalated answer from a local one
/// (the bodies keep each surface's own shape): see
/// [`super::Generation::answer_headers`].
pub(super) fn with_served_model(model: &super::ModelInfo, response: Response) -> Response {
    with_answer_headers(&super::headers::served_model(model), response)
}

/// Adds `answered` (a generation's [`super::Generation::answer_headers`]).
pub(super) fn with_answer_headers(
    answered: &[(&'static str, String)],
    mut response: Response,
) -> Response {
    let headers = response.headers_mut();
    for (name, value) in answered {
        if let Ok(value) = axum::http::HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    response
}

async fn prometheus_metrics(State(state): State<HttpState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            super::metrics::render(
                handle,
                state
                    .serving
                    .slot
                    .current()
                    .as_ref()
                    .map(|model| model.info().name.as_str()),
            ),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let message = format!("no route for {}", uri.path());
    if uri.path().starts_with("/v1/") {
        openai::error_response(&ServeError::InvalidRequest(message))
            .map_status(StatusCode::NOT_FOUND)
    } else {
        ollama::error_response(&ServeError::InvalidRequest(message))
            .map_status(StatusCode::NOT_FOUND)
    }
}

/// Overrides a response's status.
pub(super) trait MapStatus {
    fn map_status(self, status: StatusCode) -> Response;
}

impl MapStatus for Response {
    fn map_status(mut self, status: StatusCode) -> Response {
        *self.status_mut() = status;
        self
    }
}
