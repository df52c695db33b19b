//! The agent's logs and traces: the shared `flotilla_telemetry` (the
//! `OTEL_*` variables, W3C trace context in and out), plus the layer that
//! gives each inference gRPC call a span and its latency.

pub use flotilla_telemetry::{TelemetryGuard, init, propagate};

/// Spans and latency of every inference gRPC call the agent serves.
pub fn grpc_layer() -> flotilla_telemetry::grpc::GrpcServerLayer {
    flotilla_telemetry::grpc::GrpcServerLayer::new(
        "flotilla_inference_grpc_request_duration_seconds",
    )
}
