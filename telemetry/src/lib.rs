//! Logs and traces, the same for the controller and the agent.
//!
//! - [`init`]: the global subscriber. Logs go to stderr as text, or JSON
//!   with `FLOTILLA_LOG_FORMAT=json` (request spans carry `trace_id` and
//!   `span_id`, so log lines join their traces). Spans are exported over
//!   OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is
//!   set, as the OpenTelemetry specification defines the variables:
//!   `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or
//!   `grpc`), `OTEL_SERVICE_NAME` (else the process's name),
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `…_ARG`.
//! - [`http::trace_http`]: an axum middleware giving each request a SERVER
//!   span named by its route template (`GET /api/v1/models/{name}`), with
//!   the HTTP semantic-convention attributes, a W3C `traceparent` honoured
//!   as its parent, and error status on 5xx. Probes and `/metrics` are not
//!   traced.
//! - [`grpc::GrpcServerLayer`]: the same for gRPC servers
//!   (`flotilla.fleet.v1.Fleet/Sync`), with their latency histogram.
//! - [`propagate`]: `traceparent` out, on HTTP requests and gRPC calls.
//!
//! Nothing here is persisted; the exporter's batch lives in memory and is
//! flushed when the [`TelemetryGuard`] drops.

pub mod grpc;
pub mod http;
pub mod prometheus;
pub mod propagate;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes and shuts the trace exporter down when dropped.
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    /// The gRPC exporter's runtime (tonic needs one), when it is used.
    exporter_runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            // On a thread of its own: the blocking HTTP client must not be
            // driven (or dropped) from inside an async runtime.
            let flushed = std::thread::spawn(move || provider.shutdown()).join();
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(error)) => eprintln!("warning: flushing traces failed: {error}"),
                Err(_) => eprintln!("warning: flushing traces panicked"),
            }
        }
        if let Some(runtime) = self.exporter_runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How spans leave the process (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    HttpProtobuf,
    Grpc,
}

impl Protocol {
    fn from_env() -> anyhow::Result<Self> {
        let value = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_default();
        match value.trim() {
            "" | "http/protobuf" => Ok(Self::HttpProtobuf),
            "grpc" => Ok(Self::Grpc),
            other => anyhow::bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use grpc or http/protobuf"
            ),
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()))
        && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.eq_ignore_ascii_case("true"))
        && !std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|value| value.trim() == "none")
}

/// Installs the global subscriber and, when configured, the OTLP exporter
/// and the W3C trace-context propagator. `service_name` is the default of
/// `service.name` (`OTEL_SERVICE_NAME` wins). Works inside or outside a
/// tokio runtime.
pub fn init(service_name: &'static str) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FLOTILLA_LOG_FORMAT")
        .is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal, not in files.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let mut guard = TelemetryGuard {
        tracer_provider: None,
        exporter_runtime: None,
    };
    if otlp_configured() {
        let (provider, runtime) = tracer_provider(service_name)?;
        guard.tracer_provider = Some(provider);
        guard.exporter_runtime = runtime;
    }
    // Each layer filters for itself: RUST_LOG sets how much is logged, not
    // what is traced, so a quiet log (RUST_LOG=warn) still exports the
    // INFO-level request, RPC and agent spans.
    let otel_layer = guard.tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(otel_layer)
        .try_init()?;
    Ok(guard)
}

fn tracer_provider(
    service_name: &'static str,
) -> anyhow::Result<(SdkTracerProvider, Option<tokio::runtime::Runtime>)> {
    // The resource's defaults read OTEL_SERVICE_NAME and
    // OTEL_RESOURCE_ATTRIBUTES; our name only fills a gap.
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service_name);
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            opentelemetry_semantic_conventions::resource::SERVICE_VERSION,
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    // The sampler comes from OTEL_TRACES_SAMPLER(_ARG), read by the SDK's
    // default configuration.
    let builder = SdkTracerProvider::builder().with_resource(resource);
    match Protocol::from_env()? {
        Protocol::HttpProtobuf => {
            // Built on a thread of its own: the blocking HTTP client
            // refuses to start inside an async runtime.
            let exporter = std::thread::spawn(|| {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .build()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("building the OTLP/HTTP exporter panicked"))??;
            Ok((builder.with_batch_exporter(exporter).build(), None))
        }
        Protocol::Grpc => {
            // tonic's channel runs on a runtime; a small one of our own, so
            // that this works before the process's runtime exists.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()?;
            let exporter = {
                let _entered = runtime.enter();
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                    .build()?
            };
            Ok((builder.with_batch_exporter(exporter).build(), Some(runtime)))
        }
    }
}
