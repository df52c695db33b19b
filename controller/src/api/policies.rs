//! `/api/v1/policies`: versioned escalation policies (issue 20). Created
//! and read like system prompts, with the same roles: operators create,
//! viewers read. A body is the fleet contract's policy document; one that
//! does not validate (a literal key instead of a secret reference among
//! them) is a 400 that never repeats the offending value.

use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api_types as dto;

use super::AppState;
use super::convert::{page, page_request, policy_info, policy_name, policy_summary_info};
use super::extract::{Caller, Json, Path, Query};
use crate::auth::Role;
use crate::error::ApiError;

#[utoipa::path(get, path = "/api/v1/policies", tag = "policies", params(dto::PageQuery),
    responses((status = 200, body = dto::Page<dto::PolicySummaryInfo>)), security(("bearer" = [])))]
pub async fn list_policies(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<dto::PageQuery>,
) -> Result<Json<dto::Page<dto::PolicySummaryInfo>>, ApiError> {
    caller.require(Role::Viewer)?;
    let policies = state.registry.list_policies(&page_request(query)).await?;
    Ok(Json(page(policies, policy_summary_info)))
}

#[utoipa::path(post, path = "/api/v1/policies/{name}/versions", tag = "policies",
    params(("name" = String, Path)), request_body = dto::PolicyDocument,
    responses((status = 201, body = dto::PolicyInfo), (status = 400, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_policy_version(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(request): Json<dto::PolicyDocument>,
) -> Result<(StatusCode, Json<dto::PolicyInfo>), ApiError> {
    caller.require(Role::Operator)?;
    let name = policy_name(&name)?;
    let policy = state.registry.create_policy_version(&name, request).await?;
    tracing::info!(policy = %name, version = policy.version, by = %caller.subject, "escalation policy version created");
    Ok((StatusCode::CREATED, Json(policy_info(policy))))
}

#[utoipa::path(get, path = "/api/v1/policies/{name}", tag = "policies", params(("name" = String, Path)),
    responses((status = 200, description = "the latest version", body = dto::PolicyInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_policy(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::PolicyInfo>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = policy_name(&name)?;
    Ok(Json(policy_info(state.registry.policy(&name, None).await?)))
}

#[utoipa::path(get, path = "/api/v1/policies/{name}/versions", tag = "policies",
    params(("name" = String, Path), dto::PageQuery),
    responses((status = 200, description = "newest first", body = dto::Page<dto::PolicyInfo>), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_policy_versions(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<dto::PageQuery>,
) -> Result<Json<dto::Page<dto::PolicyInfo>>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = policy_name(&name)?;
    let versions = state
        .registry
        .list_policy_versions(&name, &page_request(query))
        .await?;
    Ok(Json(page(versions, policy_info)))
}

#[utoipa::path(get, path = "/api/v1/policies/{name}/versions/{version}", tag = "policies",
    params(("name" = String, Path), ("version" = u32, Path)),
    responses((status = 200, body = dto::PolicyInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_policy_version(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, version)): Path<(String, u32)>,
) -> Result<Json<dto::PolicyInfo>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = policy_name(&name)?;
    Ok(Json(policy_info(
        state.registry.policy(&name, Some(version)).await?,
    )))
}
