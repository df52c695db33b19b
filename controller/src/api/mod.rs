//! The REST API under `/api/v1`, served by axum: JSON bodies from
//! `flotilla-api-types`, one error body for every failure, bearer-token auth
//! on everything but the health and metrics endpoints, and an OpenAPI
//! document generated from the handlers at `/api/v1/openapi.json`.
//!
//! Every mutation (any method but GET, HEAD and OPTIONS) is recorded in the
//! audit log (the `events` table, `flotilla events`) by [`audit_mutations`]:
//! who (the token's subject), what (method, route template and path), when,
//! and the result (the HTTP status). One layer rather than a line in each
//! handler, so a new endpoint cannot forget it.

mod access;
mod blobs;
mod convert;
mod extract;
mod models;
mod nodes;
mod policies;
mod prompts;
mod rollouts;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::auth::Authenticator;
use crate::fleet::Fleet;
use crate::registry::Registry;

/// Everything a handler may need, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub fleet: Fleet,
    pub rollouts: crate::rollout::Rollouts,
    pub auth: Arc<Authenticator>,
    pub metrics: PrometheusHandle,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla controller API", description = "Model registry and fleet control plane for local LLMs."),
    paths(
        models::list_models, models::create_model, models::get_model, models::list_versions,
        models::create_version, models::get_version, models::update_version, models::upload_artifact,
        models::resolve, prompts::list_prompts, prompts::create_prompt_version, prompts::get_prompt,
        prompts::list_prompt_versions, prompts::get_prompt_version, policies::list_policies,
        policies::create_policy_version, policies::get_policy, policies::list_policy_versions,
        policies::get_policy_version, blobs::get_blob,
        tokens::create_token, tokens::whoami, nodes::create_bootstrap_token, nodes::list_nodes,
        nodes::get_node, nodes::approve_node, nodes::cordon_node, nodes::uncordon_node,
        nodes::drain_node, nodes::update_labels, nodes::health_history, nodes::create_assignment,
        nodes::list_assignments, nodes::remove_assignment, nodes::list_bootstrap_tokens,
        nodes::revoke_bootstrap_token, nodes::approve_replace_node, nodes::remove_node,
        tokens::list_tokens, tokens::revoke_token, rollouts::create_rollout,
        rollouts::list_rollouts, rollouts::get_rollout, rollouts::command_rollout,
        rollouts::delete_rollout,
        rollouts::list_events, models::delete_model, models::delete_version,
    ),
    modifiers(&BearerAuth),
    tags((name = "models"), (name = "prompts"), (name = "policies"), (name = "blobs"), (name = "auth"), (name = "nodes"), (name = "assignments"), (name = "rollouts"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_owned())
}

pub fn router(state: AppState) -> Router {
    let audit = middleware::from_fn_with_state(state.clone(), audit_mutations);
    let uploads = Arc::new(tokio::sync::Semaphore::new(access::MAX_CONCURRENT_UPLOADS));
    let api = Router::new()
        .route(
            "/models",
            get(models::list_models).post(models::create_model),
        )
        .route(
            "/models/{name}",
            get(models::get_model).delete(models::delete_model),
        )
        .route(
            "/models/{name}/versions",
            get(models::list_versions).post(models::create_version),
        )
        .route(
            "/models/{name}/versions/{version}",
            get(models::get_version)
                .patch(models::update_version)
                .delete(models::delete_version),
        )
        .route(
            "/models/{name}/versions/{version}/artifacts",
            post(models::upload_artifact).layer(middleware::from_fn(
                move |request: Request, next: Next| {
                    access::limit_uploads(uploads.clone(), request, next)
                },
            )),
        )
        .route("/resolve", get(models::resolve))
        .route("/prompts", get(prompts::list_prompts))
        .route("/prompts/{name}", get(prompts::get_prompt))
        .route(
            "/prompts/{name}/versions",
            get(prompts::list_prompt_versions).post(prompts::create_prompt_version),
        )
        .route(
            "/prompts/{name}/versions/{version}",
            get(prompts::get_prompt_version),
        )
        .route("/policies", get(policies::list_policies))
        .route("/policies/{name}", get(policies::get_policy))
        .route(
            "/policies/{name}/versions",
            get(policies::list_policy_versions).post(policies::create_policy_version),
        )
        .route(
            "/policies/{name}/versions/{version}",
            get(policies::get_policy_version),
        )
        .route("/blobs/{digest}", get(blobs::get_blob))
        .route("/nodes", get(nodes::list_nodes))
        .route(
            "/nodes/tokens",
            get(nodes::list_bootstrap_tokens).post(nodes::create_bootstrap_token),
        )
        .route(
            "/nodes/tokens/{id}",
            axum::routing::delete(nodes::revoke_bootstrap_token),
        )
        .route(
            "/nodes/{name}",
            get(nodes::get_node).delete(nodes::remove_node),
        )
        .route("/nodes/{name}/approve", post(nodes::approve_node))
        .route(
            "/nodes/{name}/approve-replace",
            post(nodes::approve_replace_node),
        )
        .route("/nodes/{name}/cordon", post(nodes::cordon_node))
        .route("/nodes/{name}/uncordon", post(nodes::uncordon_node))
        .route("/nodes/{name}/drain", post(nodes::drain_node))
        .route("/nodes/{name}/labels", patch(nodes::update_labels))
        .route("/nodes/{name}/health", get(nodes::health_history))
        .route(
            "/assignments",
            get(nodes::list_assignments)
                .post(nodes::create_assignment)
                .delete(nodes::remove_assignment),
        )
        .route(
            "/rollouts",
            get(rollouts::list_rollouts).post(rollouts::create_rollout),
        )
        .route(
            "/rollouts/{name}",
            get(rollouts::get_rollout).delete(rollouts::delete_rollout),
        )
        .route(
            "/rollouts/{name}/{command}",
            post(rollouts::command_rollout),
        )
        .route("/events", get(rollouts::list_events))
        .route(
            "/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke_token))
        .route("/whoami", get(tokens::whoami))
        .route("/openapi.json", get(openapi))
        // Authentication and the route's role, from the request's head,
        // before any handler reads a body (`access.rs`).
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::authorize,
        ))
        .fallback(unknown_route);
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus_metrics))
        .layer(audit)
        .layer(middleware::from_fn(json_error_bodies))
        .layer(middleware::from_fn_with_state(
            &HTTP_REQUESTS,
            flotilla_telemetry::http::record_metrics,
        ))
        // SERVER spans named by route template (flotilla_telemetry::http).
        .layer(middleware::from_fn(flotilla_telemetry::http::trace_http))
        .with_state(state)
}

async fn unknown_route() -> crate::error::ApiError {
    crate::error::ApiError::not_found("no such API endpoint")
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
        .into_response()
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database and the object store answer, and changes
/// committed by other replicas reach this one.
async fn readyz(State(state): State<AppState>) -> Response {
    if !state.fleet.hub().following_changes() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not yet following changes of other replicas\n",
        )
            .into_response();
    }
    // A probe answers within its own deadline: with the database down, a
    // ping would otherwise wait out the pool's whole acquire timeout.
    match tokio::time::timeout(READINESS_PING_TIMEOUT, state.registry.store().ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: database unavailable");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = READINESS_PING_TIMEOUT.as_millis() as u64,
                "readiness: the database did not answer in time"
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable (no answer in time)\n",
            )
                .into_response();
        }
    }
    if let Err(error) = state.registry.blobs().ping().await {
        tracing::warn!(%error, "readiness: object store unavailable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "object store unavailable\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// Records each mutation in the audit log once it has been answered (so the
/// result is known). Runs after routing, so the route template is known; the
/// caller is read from the bearer token again (a token that does not verify
/// is recorded as `unauthenticated`). A failure to record is logged, not
/// turned into a failure of the request that already happened.
async fn audit_mutations(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use axum::http::Method;
    let method = request.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let actor = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|header| crate::auth::bearer_token(Some(header)).ok())
        .and_then(|token| state.auth.verify(token).ok())
        .map_or_else(
            || "unauthenticated".to_owned(),
            |principal| principal.subject,
        );
    let response = next.run(request).await;
    let status = response.status();
    let node = path
        .strip_prefix("/api/v1/nodes/")
        .and_then(|rest| rest.split('/').next())
        .filter(|name| *name != "tokens")
        .and_then(|name| name.parse::<crate::domain::NodeName>().ok());
    let rollout = path
        .strip_prefix("/api/v1/rollouts/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|name| name.parse::<crate::domain::RolloutName>().ok());
    let event = crate::domain::NewEvent {
        actor,
        rollout,
        node,
        action: format!("api {method} {route}"),
        message: format!(
            "{method} {path} -> {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
    };
    if let Err(error) = state.registry.store().append_events(&[event]).await {
        tracing::warn!(%error, %method, %path, "cannot record the request in the audit log");
    }
    response
}

/// How long `/readyz` waits for the database before it says not ready.
const READINESS_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Gives the errors that layers below the handlers answer by themselves (a
/// body over the size limit: a plain-text 413) the API's JSON error shape.
async fn json_error_bodies(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return crate::error::ApiError::new(
            crate::error::ErrorCode::PayloadTooLarge,
            "the request body is larger than this endpoint accepts",
        )
        .into_response();
    }
    response
}

async fn prometheus_metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::render_metrics(&state.metrics, &state.fleet),
    )
        .into_response()
}

/// The REST request families, recorded by
/// `flotilla_telemetry::http::record_metrics`.
static HTTP_REQUESTS: flotilla_telemetry::http::RequestMetrics =
    flotilla_telemetry::http::RequestMetrics {
        requests_total: "flotilla_http_requests_total",
        duration_seconds: "flotilla_http_request_duration_seconds",
    };
