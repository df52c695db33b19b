//! The response headers (HTTP) and metadata keys (gRPC) that say who
//! answered a request, named once for every surface and for forwarding.
//! Kept apart from the surfaces so that `forward`, `generation` and
//! `escalate` name them without importing the HTTP server.

/// The response header with the served model's version (registry semver).
pub const MODEL_VERSION_HEADER: &str = "x-flotilla-model-version";
/// The response header with the served artifact's blake3 digest.
pub const MODEL_DIGEST_HEADER: &str = "x-flotilla-model-digest";
/// The node that answered a forwarded request, or `upstream` for an
/// escalated one.
pub const SERVED_BY_HEADER: &str = "x-flotilla-served-by";
/// What [`SERVED_BY_HEADER`] says of an escalated answer.
pub const SERVED_BY_UPSTREAM: &str = "upstream";
/// On an escalated answer: why it escalated (`model_name`, `overload`, …).
pub const ESCALATION_REASON_HEADER: &str = "x-flotilla-escalation-reason";
/// On an escalated answer: the upstream's model.
pub const UPSTREAM_MODEL_HEADER: &str = "x-flotilla-upstream-model";
/// Escalation was tried and failed, so the answer is the local model's
/// (`failed`).
pub const ESCALATION_HEADER: &str = "x-flotilla-escalation";
/// With [`ESCALATION_HEADER`]: what the upstream said or why it failed.
pub const ESCALATION_ERROR_HEADER: &str = "x-flotilla-escalation-error";

/// The version and artifact digest of a model served here.
pub(super) fn served_model(model: &super::ModelInfo) -> Vec<(&'static str, String)> {
    vec![
        (MODEL_VERSION_HEADER, model.version.clone()),
        (MODEL_DIGEST_HEADER, model.digest.to_hex()),
    ]
}
