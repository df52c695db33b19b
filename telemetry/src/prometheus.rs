//! The process-wide Prometheus recorder both processes install: histogram
//! buckets chosen per family, HELP from the caller's catalogue, the process
//! collector and a `*_build_info` gauge. Each process keeps its own
//! catalogue and buckets; installing and rendering are the same.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What a process's recorder holds beyond the defaults.
pub struct Catalogue {
    /// Histogram buckets by full family name; other histograms keep the
    /// exporter's default buckets.
    pub buckets: &'static [(&'static str, &'static [f64])],
    /// Describes (HELP and unit) every family the process exports.
    pub describe: fn(),
    /// The `*_build_info` gauge's name; its `version` label is `version`.
    pub build_info: &'static str,
    pub version: &'static str,
}

/// Installs the global recorder and returns its handle. Call once (behind a
/// `OnceLock`): a second recorder is refused, and its handle renders
/// nothing, which the metrics tests would notice.
pub fn install(catalogue: &Catalogue) -> PrometheusHandle {
    let builder =
        with_buckets(PrometheusBuilder::new(), catalogue.buckets).unwrap_or_else(|error| {
            tracing::warn!(%error, "histogram buckets rejected; falling back to summaries");
            PrometheusBuilder::new()
        });
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder was already installed");
    }
    (catalogue.describe)();
    metrics_process::Collector::default().describe();
    metrics::gauge!(catalogue.build_info, "version" => catalogue.version).set(1.0);
    handle
}

/// The recorder's families and the process's (`process_*`), read now.
pub fn render(handle: &PrometheusHandle) -> String {
    metrics_process::Collector::default().collect();
    handle.render()
}

fn with_buckets(
    mut builder: PrometheusBuilder,
    buckets: &[(&str, &[f64])],
) -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    for (name, family_buckets) in buckets {
        builder =
            builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), family_buckets)?;
    }
    Ok(builder)
}
