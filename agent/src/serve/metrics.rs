//! The agent's Prometheus metrics, through the `metrics` facade, and the
//! process-wide recorder the HTTP server renders at `/metrics` (the same
//! approach as the controller's `telemetry::metrics_handle`): the catalogue
//! of every family (each with HELP), histogram buckets chosen per quantity,
//! `flotilla_agent_build_info` and the process collector. The inference
//! metrics also feed the heartbeat's [`super::stats`].

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use super::stats::{self, Outcome};

/// HTTP and gRPC requests until the response head: a refusal takes a
/// millisecond; a non-streamed completion of a long answer, minutes.
const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
/// Time to first token: tens of milliseconds for a small model on an idle
/// node, tens of seconds for a long prompt behind a full queue.
const TIME_TO_FIRST_TOKEN_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0,
];
/// Between two generated tokens: a few milliseconds on a GPU, up to a
/// second for a large model on a small CPU.
const INTER_TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
];
/// Download throughput in bytes per second: from a throttled 1 MB/s link
/// to 10 GB/s on loopback.
const DOWNLOAD_THROUGHPUT_BUCKETS: &[f64] = &[
    1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9, 1e10,
];
/// Heartbeat acks: a millisecond on a LAN, a second when the controller
/// is overloaded.
const SYNC_ACK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    flotilla_telemetry::prometheus::install(&CATALOGUE)
}

const CATALOGUE: flotilla_telemetry::prometheus::Catalogue =
    flotilla_telemetry::prometheus::Catalogue {
        buckets: &[
            (
                "flotilla_inference_http_request_duration_seconds",
                REQUEST_DURATION_BUCKETS,
            ),
            (
                "flotilla_inference_grpc_request_duration_seconds",
                REQUEST_DURATION_BUCKETS,
            ),
            (
                "flotilla_inference_time_to_first_token_seconds",
                TIME_TO_FIRST_TOKEN_BUCKETS,
            ),
            (
                "flotilla_inference_inter_token_latency_seconds",
                INTER_TOKEN_LATENCY_BUCKETS,
            ),
            (
                "flotilla_agent_download_throughput_bytes_per_second",
                DOWNLOAD_THROUGHPUT_BUCKETS,
            ),
            ("flotilla_agent_sync_ack_latency_seconds", SYNC_ACK_BUCKETS),
        ],
        describe,
        build_info: "flotilla_agent_build_info",
        version: env!("CARGO_PKG_VERSION"),
    };

/// The whole `/metrics` page: the recorder's families and the process's.
/// The page, less the samples of models this node no longer serves
/// (`served`: the one it serves now, if any).
///
/// The recorder keeps every series it was ever given, so a model unassigned
/// last week would go on exporting its last queue depth and its counters
/// for as long as the agent runs, and fleet-wide sums would count it. A
/// model served again comes back with its counters where they were
/// (Prometheus sees a gap, not a reset).
pub fn render(handle: &PrometheusHandle, served: Option<&str>) -> String {
    let page = flotilla_telemetry::prometheus::render(handle);
    let mut kept = String::with_capacity(page.len());
    for line in page.lines() {
        let gone =
            !line.starts_with('#') && model_label(line).is_some_and(|model| Some(model) != served);
        if !gone {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// The value of a sample line's `model` label, if it has one. Model names
/// are registry names (no quotes or backslashes), so the value ends at the
/// next quote.
fn model_label(line: &str) -> Option<&str> {
    let labels = &line[line.find('{')?..];
    let at = labels
        .match_indices("model=\"")
        .find(|(at, _)| matches!(labels.as_bytes().get(at.wrapping_sub(1)), Some(b'{' | b',')))?
        .0;
    let value = &labels[at + "model=\"".len()..];
    Some(&value[..value.find('"')?])
}

/// HELP and units of every family the recorder holds. A family missing
/// here fails `promtool check metrics` (tests/tests/metrics.rs).
fn describe() {
    describe_gauge!(
        "flotilla_agent_build_info",
        "always 1; the labels name the agent's version"
    );
    describe_counter!(
        "flotilla_inference_http_requests_total",
        "inference HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        "flotilla_inference_http_request_duration_seconds",
        Unit::Seconds,
        "inference HTTP request latency until the response head (a stream: its first byte), by route template and method"
    );
    describe_histogram!(
        "flotilla_inference_grpc_request_duration_seconds",
        Unit::Seconds,
        "inference gRPC call latency until the response head, by RPC"
    );
    describe_gauge!(
        "flotilla_inference_queue_depth",
        "requests admitted and not finished, per model"
    );
    describe_counter!(
        "flotilla_inference_requests_total",
        "inference requests finished, per model and outcome"
    );
    describe_counter!(
        "flotilla_inference_generated_tokens_total",
        "tokens generated, per model"
    );
    describe_counter!(
        "flotilla_inference_prompt_tokens_total",
        "prompt tokens evaluated, per model"
    );
    describe_histogram!(
        "flotilla_inference_time_to_first_token_seconds",
        Unit::Seconds,
        "from admission (queue wait included) to the first generated token, per model"
    );
    describe_histogram!(
        "flotilla_inference_inter_token_latency_seconds",
        Unit::Seconds,
        "time between two consecutive generated tokens of one request, per model"
    );
    describe_counter!(
        "flotilla_inference_forwarded_total",
        "requests forwarded to a peer that serves the model, by surface"
    );
    describe_counter!(
        "flotilla_inference_peer_mismatch_total",
        "peer answers refused because they named another artifact than the directory"
    );
    describe_counter!(
        "flotilla_inference_peer_identity_refused_total",
        "peers refused because their certificate did not name the node the directory lists"
    );
    describe_counter!(
        "flotilla_inference_unauthenticated_total",
        "inference requests refused for a missing or unknown API key"
    );
    describe_histogram!(
        "flotilla_agent_download_throughput_bytes_per_second",
        "throughput of each artifact download request (bytes received over its duration)"
    );
    describe_histogram!(
        "flotilla_agent_sync_ack_latency_seconds",
        Unit::Seconds,
        "from sending a heartbeat to the controller's ack"
    );
    describe_counter!(
        "flotilla_agent_sync_directories_total",
        "routing directories received from the controller"
    );
    describe_counter!(
        "flotilla_agent_sync_streams_opened_total",
        "Sync streams opened and accepted by the controller"
    );
    describe_counter!(
        "flotilla_agent_sync_streams_ended_total",
        "Sync streams that ended, by reason"
    );
    describe_gauge!(
        "flotilla_agent_sync_streams_connected",
        "Sync streams open now (0 or 1)"
    );
    describe_gauge!(
        "flotilla_agent_desired_generation",
        "the newest desired-state generation received"
    );
}

/// The inference HTTP request families, recorded by
/// `flotilla_telemetry::http::record_metrics`.
pub static HTTP_REQUESTS: flotilla_telemetry::http::RequestMetrics =
    flotilla_telemetry::http::RequestMetrics {
        requests_total: "flotilla_inference_http_requests_total",
        duration_seconds: "flotilla_inference_http_request_duration_seconds",
    };

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

/// One token generated; `since_previous` is the time since the request's
/// previous token (none for its first).
pub fn token_generated(model: &str, since_previous: Option<Duration>) {
    metrics::counter!("flotilla_inference_generated_tokens_total", "model" => model.to_owned())
        .increment(1);
    if let Some(latency) = since_previous {
        metrics::histogram!("flotilla_inference_inter_token_latency_seconds", "model" => model.to_owned())
            .record(latency.as_secs_f64());
    }
    stats::global().tokens_generated(1);
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

/// One download request moved `bytes` in `elapsed` (a resumed download
/// counts only what this request received).
pub fn download_finished(bytes: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    if bytes > 0 && seconds > 0.0 {
        metrics::histogram!("flotilla_agent_download_throughput_bytes_per_second")
            .record(bytes as f64 / seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::model_label;

    #[test]
    fn the_model_label_is_read_from_sample_lines() {
        assert_eq!(
            model_label("flotilla_inference_queue_depth{model=\"smol\"} 0"),
            Some("smol")
        );
        assert_eq!(
            model_label("x_bucket{code=\"ok\",model=\"a-b.c\",le=\"0.1\"} 3"),
            Some("a-b.c")
        );
        assert_eq!(model_label("x{other_model=\"no\"} 1"), None);
        assert_eq!(
            model_label("flotilla_agent_build_info{version=\"1\"} 1"),
            None
        );
        assert_eq!(model_label("process_cpu_seconds_total 2"), None);
    }
}
