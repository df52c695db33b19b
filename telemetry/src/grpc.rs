//! A tower layer around a tonic server: each call gets a SERVER span named
//! by its RPC (`flotilla.fleet.v1.Fleet/Sync`) with the RPC semantic
//! conventions (`rpc.system.name`, `rpc.method`,
//! `rpc.response.status_code`; ERROR status on codes a server is at fault
//! for), a `traceparent` in the metadata as its parent, and its latency
//! until the response head in a histogram (a stream: until it opens).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::trace::Status;
use opentelemetry_semantic_conventions::attribute as semconv;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Install with `tonic::transport::Server::builder().layer(...)`.
#[derive(Debug, Clone, Copy)]
pub struct GrpcServerLayer {
    /// The histogram, by `rpc`, of each call's latency.
    duration_metric: &'static str,
}

impl GrpcServerLayer {
    pub fn new(duration_metric: &'static str) -> Self {
        Self { duration_metric }
    }
}

impl<S> tower::Layer<S> for GrpcServerLayer {
    type Service = GrpcServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerService {
            inner,
            duration_metric: self.duration_metric,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcServerService<S> {
    inner: S,
    duration_metric: &'static str,
}

/// Health checks and reflection are infrastructure, not requests.
fn untraced(rpc: &str) -> bool {
    rpc.starts_with("grpc.health.") || rpc.starts_with("grpc.reflection.")
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcServerService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // `/package.Service/Method`; bounded by the services registered
        // (an unknown one is answered by tonic alone, as Unimplemented).
        let rpc = request.uri().path().trim_start_matches('/').to_owned();
        let duration_metric = self.duration_metric;
        let started = Instant::now();
        if untraced(&rpc) {
            let response = self.inner.call(request);
            return Box::pin(async move {
                let response = response.await;
                metrics::histogram!(duration_metric, "rpc" => rpc)
                    .record(started.elapsed().as_secs_f64());
                response
            });
        }
        let span = tracing::info_span!(
            "gRPC call",
            otel.name = %rpc,
            otel.kind = "server",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let _ = span.set_parent(crate::propagate::extract(request.headers()));
        crate::propagate::record_ids(&span);
        // The current conventions: the system's name, and the method
        // fully qualified (`package.Service/Method`).
        span.set_attribute(semconv::RPC_SYSTEM_NAME, "grpc");
        span.set_attribute(semconv::RPC_METHOD, rpc.clone());
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = response.await;
                metrics::histogram!(duration_metric, "rpc" => rpc)
                    .record(started.elapsed().as_secs_f64());
                let span = tracing::Span::current();
                if let Ok(response) = &response {
                    // An error answered at once travels in the headers
                    // (trailers-only); otherwise the call began as OK.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<i32>().ok())
                        .unwrap_or(0);
                    span.set_attribute(semconv::RPC_RESPONSE_STATUS_CODE, grpc_code_name(code));
                    if server_fault(code) {
                        span.set_status(Status::error(format!("gRPC status {code}")));
                    }
                }
                response
            }
            .instrument(span),
        )
    }
}

/// A gRPC status code by its name, as `rpc.response.status_code` wants it.
fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The codes the conventions count as a server span's error: UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
fn server_fault(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}
