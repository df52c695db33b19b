//! SERVER spans for axum routers, by the OpenTelemetry HTTP semantic
//! conventions: named `METHOD /route/{template}`, attributes
//! `http.request.method`, `http.route`, `url.path`, `url.scheme`,
//! `http.response.status_code`, `network.protocol.version`,
//! `user_agent.original`; status ERROR and `error.type` on 5xx (a 4xx is
//! the client's error, which the conventions leave unset on a server
//! span). A `traceparent` header makes the span its child.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::Status;
use opentelemetry_semantic_conventions::attribute as semconv;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Paths never traced: probes and scrapes would drown the requests.
const UNTRACED: &[&str] = &["/healthz", "/readyz", "/metrics", "/"];

/// The middleware; install with `.layer(axum::middleware::from_fn(trace_http))`
/// on the router, so that the route template is known.
pub async fn trace_http(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if UNTRACED.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        // The conventions' name for an unmatched route: the method alone.
        None => method.clone(),
    };
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %name,
        otel.kind = "server",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let _ = span.set_parent(crate::propagate::extract(request.headers()));
    crate::propagate::record_ids(&span);
    span.set_attribute(semconv::HTTP_REQUEST_METHOD, method);
    if let Some(route) = route {
        span.set_attribute(semconv::HTTP_ROUTE, route);
    }
    span.set_attribute(semconv::URL_PATH, path);
    span.set_attribute(
        semconv::URL_SCHEME,
        request.uri().scheme_str().unwrap_or("http").to_owned(),
    );
    span.set_attribute(
        semconv::NETWORK_PROTOCOL_VERSION,
        match request.version() {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_3 => "3",
            _ => "1.1",
        },
    );
    if let Some(agent) = request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
    {
        span.set_attribute(semconv::USER_AGENT_ORIGINAL, agent.to_owned());
    }
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.set_attribute(
        semconv::HTTP_RESPONSE_STATUS_CODE,
        i64::from(status.as_u16()),
    );
    if status.is_server_error() {
        span.set_attribute(semconv::ERROR_TYPE, status.as_u16().to_string());
        span.set_status(Status::error(status.to_string()));
    }
    response
}

/// The two families [`record_metrics`] writes: a counter by route template,
/// method and status, and a latency histogram by route template and method.
#[derive(Debug)]
pub struct RequestMetrics {
    pub requests_total: &'static str,
    pub duration_seconds: &'static str,
}

/// Counts requests and their latency by route template (not raw path, so
/// names, digests and unknown paths cannot grow the label set). Install
/// with `axum::middleware::from_fn_with_state(&NAMES, record_metrics)`.
pub async fn record_metrics(
    axum::extract::State(names): axum::extract::State<&'static RequestMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(names.requests_total, "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(names.duration_seconds, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
