//! The controller's Prometheus metrics: one process-wide recorder, the
//! catalogue of every family it exports (each with HELP), histogram buckets
//! chosen per quantity, `flotilla_controller_build_info` and the process
//! collector. Per-model fleet gauges are not kept in the recorder: they are
//! computed from the hub at each scrape, so a model that no node serves any
//! more has no series at all (the recorder cannot forget one).

use std::fmt::Write as _;
use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::fleet::Fleet;

/// REST requests: from a cached GET (a millisecond) to an artifact upload
/// of tens of GiB (minutes).
const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];
/// gRPC calls until the response head: enrolment and info take
/// milliseconds (a database round trip or two), a Sync stream opens after
/// its hello is checked.
const GRPC_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Store transactions and report flushes: sub-millisecond on SQLite, tens
/// of milliseconds on a remote Postgres, seconds when something is wrong.
const STORE_DURATION_BUCKETS: &[f64] = &[
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
                "flotilla_http_request_duration_seconds",
                HTTP_DURATION_BUCKETS,
            ),
            (
                "flotilla_grpc_server_duration_seconds",
                GRPC_DURATION_BUCKETS,
            ),
            (
                "flotilla_store_transaction_duration_seconds",
                STORE_DURATION_BUCKETS,
            ),
            ("flotilla_fleet_flush_seconds", STORE_DURATION_BUCKETS),
        ],
        describe,
        build_info: "flotilla_controller_build_info",
        version: env!("CARGO_PKG_VERSION"),
    };

/// HELP and units of every family the recorder holds. A family missing
/// here fails `promtool check metrics` (tests/tests/metrics.rs).
fn describe() {
    describe_gauge!(
        "flotilla_controller_build_info",
        "always 1; the labels name the controller's version"
    );
    describe_counter!(
        "flotilla_http_requests_total",
        "REST requests answered, by route template, method and status"
    );
    describe_histogram!(
        "flotilla_http_request_duration_seconds",
        Unit::Seconds,
        "REST request latency until the response head, by route template and method"
    );
    describe_counter!(
        "flotilla_http_server_errors_total",
        "REST requests that failed inside the controller (HTTP 5xx)"
    );
    describe_histogram!(
        "flotilla_grpc_server_duration_seconds",
        Unit::Seconds,
        "gRPC call latency until the response head (a stream: until it opens), by RPC"
    );
    describe_counter!(
        "flotilla_auth_failures_total",
        "requests refused for a missing, invalid or insufficient credential"
    );
    describe_counter!(
        "flotilla_blob_bytes_served_total",
        Unit::Bytes,
        "artifact bytes sent to agents"
    );
    describe_counter!(
        "flotilla_artifact_uploads_total",
        "artifact uploads finished, by outcome"
    );
    describe_counter!(
        "flotilla_artifact_upload_bytes_total",
        Unit::Bytes,
        "artifact bytes received by uploads"
    );
    describe_counter!(
        "flotilla_fleet_followed_changes_total",
        "changes committed by other replicas that this one applied"
    );
    describe_counter!(
        "flotilla_fleet_desired_pushes_total",
        "desired states pushed to agents' streams"
    );
    describe_histogram!(
        "flotilla_fleet_flush_seconds",
        Unit::Seconds,
        "time to write one batch of agents' reports to the store"
    );
    describe_counter!(
        "flotilla_fleet_reports_written_total",
        "agents' reports written to the store"
    );
    describe_gauge!(
        "flotilla_fleet_streams",
        "agents' Sync streams held by this replica (counted as they open and close)"
    );
    describe_gauge!(
        "flotilla_fleet_streams_open",
        "agents' Sync streams held by this replica (sampled by the flusher)"
    );
    describe_counter!(
        "flotilla_store_transaction_retries_total",
        "store transactions retried after a serialization conflict"
    );
    describe_histogram!(
        "flotilla_store_transaction_duration_seconds",
        Unit::Seconds,
        "store transaction latency, retries included, by operation and outcome"
    );
}

/// The per-model fleet gauges, from the hub's current view: one sample per
/// model that some ready node serves.
struct ModelGauge {
    name: &'static str,
    help: &'static str,
    value: fn(&crate::fleet::ModelLoad) -> f64,
}

const MODEL_GAUGES: &[ModelGauge] = &[
    ModelGauge {
        name: "flotilla_fleet_model_nodes_ready",
        help: "ready nodes serving the model",
        value: |load| f64::from(load.nodes),
    },
    ModelGauge {
        name: "flotilla_fleet_model_queue_depth",
        help: "requests admitted and not finished on the model's nodes, summed",
        value: |load| load.queue_depth as f64,
    },
    ModelGauge {
        name: "flotilla_fleet_model_queue_capacity",
        help: "requests the model's nodes can admit at once, summed",
        value: |load| load.queue_capacity as f64,
    },
    ModelGauge {
        name: "flotilla_fleet_model_tokens_per_second",
        help: "tokens generated per second by the model's nodes, summed",
        value: |load| load.tokens_per_second,
    },
    ModelGauge {
        name: "flotilla_fleet_model_time_to_first_token_max_seconds",
        help: "the slowest recent time to first token among the model's nodes",
        value: |load| f64::from(load.time_to_first_token_max_ms.unwrap_or(0)) / 1000.0,
    },
];

/// The whole `/metrics` page: the recorder's families, the process's, and
/// the per-model gauges.
pub fn render(handle: &PrometheusHandle, fleet: &Fleet) -> String {
    let mut page = flotilla_telemetry::prometheus::render(handle);
    let loads = fleet.hub().model_load();
    for gauge in MODEL_GAUGES {
        let _ = writeln!(page, "# HELP {} {}", gauge.name, gauge.help);
        let _ = writeln!(page, "# TYPE {} gauge", gauge.name);
        for (model, load) in &loads {
            let _ = writeln!(
                page,
                "{}{{model=\"{}\"}} {}",
                gauge.name,
                escape_label(model),
                (gauge.value)(load)
            );
        }
    }
    page
}

/// A label value as the text format wants it.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
