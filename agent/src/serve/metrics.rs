//! The inference metrics, through the `metrics` facade, and the process-wide
//! Prometheus recorder the HTTP server renders at `/metrics` (the same
//! approach as the controller's `telemetry::metrics_handle`). Each one also
//! feeds the heartbeat's [`super::stats`].

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::stats::{self, Outcome};

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then this
            // handle renders nothing, which the tests would notice.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Requests admitted and not finished, per model.
pub fn queue_depth(model: &str, depth: usize) {
    metrics::gauge!("flotilla_inference_queue_depth", "model" => model.to_owned())
        .set(depth as f64);
}

/// A request ended: `ok`, `cancelled`, or a [`super::ServeError::code`].
pub fn request_finished(model: &str, outcome: &'static str) {
    metrics::counter!("flotilla_inference_requests_total", "model" => model.to_owned(), "outcome" => outcome)
        .increment(1);
    stats::global().finished(match outcome {
        "ok" => Outcome::Completed,
        "cancelled" => Outcome::Cancelled,
        "overloaded" => Outcome::Rejected,
        "timeout" | "unavailable" | "internal" | "peer_unavailable" => Outcome::Failed,
        _ => Outcome::ClientError,
    });
}

pub fn tokens_generated(model: &str, tokens: u64) {
    metrics::counter!("flotilla_inference_generated_tokens_total", "model" => model.to_owned())
        .increment(tokens);
    stats::global().tokens_generated(tokens);
}

pub fn prompt_tokens(model: &str, tokens: usize) {
    metrics::counter!("flotilla_inference_prompt_tokens_total", "model" => model.to_owned())
        .increment(tokens as u64);
}

/// From admission (queue wait included) to the first generated token.
pub fn time_to_first_token(model: &str, elapsed: Duration) {
    metrics::histogram!("flotilla_inference_time_to_first_token_seconds", "model" => model.to_owned())
        .record(elapsed.as_secs_f64());
    stats::global().first_token(elapsed);
}
