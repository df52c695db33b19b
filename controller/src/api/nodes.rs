//! `/api/v1/nodes`: bootstrap tokens for enrolling agents, and the fleet's
//! nodes. Enrolment itself is gRPC (`flotilla.fleet.v1.Fleet/Enroll`).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api_types as dto;

use super::AppState;
use super::convert::{node_info, node_name, page, page_request};
use super::extract::{Caller, Json, Path, Query};
use crate::auth::Role;
use crate::error::ApiError;

const DEFAULT_BOOTSTRAP_TTL: Duration = Duration::from_secs(3600);

#[utoipa::path(post, path = "/api/v1/nodes/tokens", tag = "nodes",
    request_body = dto::CreateBootstrapTokenRequest,
    responses((status = 201, body = dto::BootstrapTokenInfo), (status = 400, body = dto::ErrorBody),
        (status = 403, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_bootstrap_token(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(request): Json<dto::CreateBootstrapTokenRequest>,
) -> Result<(StatusCode, Json<dto::BootstrapTokenInfo>), ApiError> {
    caller.require(Role::Operator)?;
    let ttl = request
        .ttl_seconds
        .map_or(DEFAULT_BOOTSTRAP_TTL, Duration::from_secs);
    let (secret, token) = state
        .fleet
        .create_bootstrap_token(&caller.subject, ttl, request.uses.unwrap_or(1))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(dto::BootstrapTokenInfo {
            token: secret.expose(),
            id: token.id,
            expires_at: token.expires_at,
            uses: token.uses_left,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(dto::PageQuery),
    responses((status = 200, body = dto::Page<dto::NodeInfo>)), security(("bearer" = [])))]
pub async fn list_nodes(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<dto::PageQuery>,
) -> Result<Json<dto::Page<dto::NodeInfo>>, ApiError> {
    caller.require(Role::Viewer)?;
    let nodes = state.fleet.list_nodes(&page_request(query)).await?;
    Ok(Json(page(nodes, node_info)))
}

#[utoipa::path(get, path = "/api/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path)),
    responses((status = 200, body = dto::NodeInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_node(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::NodeInfo>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = node_name(&name)?;
    Ok(Json(node_info(state.fleet.get_node(&name).await?)))
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/approve", tag = "nodes",
    params(("name" = String, Path)),
    responses((status = 200, body = dto::NodeInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn approve_node(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::NodeInfo>, ApiError> {
    caller.require(Role::Operator)?;
    let name = node_name(&name)?;
    Ok(Json(node_info(
        state.fleet.approve(&name, &caller.subject).await?,
    )))
}
