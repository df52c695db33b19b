//! Logs, traces and metrics. Logs and traces are the shared
//! `flotilla_telemetry`'s (the `OTEL_*` variables, W3C trace context,
//! spans named by route and RPC); Prometheus metrics are rendered at
//! `/metrics` from one process-wide recorder ([`prometheus`]).

mod prometheus;

pub use flotilla_telemetry::{TelemetryGuard, init};
pub use prometheus::{metrics_handle, render as render_metrics};

/// Spans and latency of every gRPC call the controller serves.
pub fn grpc_layer() -> flotilla_telemetry::grpc::GrpcServerLayer {
    flotilla_telemetry::grpc::GrpcServerLayer::new("flotilla_grpc_server_duration_seconds")
}
