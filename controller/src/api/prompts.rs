//! `/api/v1/prompts`: versioned system prompts.

use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api_types as dto;

use super::AppState;
use super::convert::{page, page_request, prompt_info, prompt_name, prompt_summary_info};
use super::extract::{Caller, Json, Path, Query};
use crate::auth::Role;
use crate::error::ApiError;

#[utoipa::path(get, path = "/api/v1/prompts", tag = "prompts", params(dto::PageQuery),
    responses((status = 200, body = dto::Page<dto::PromptSummaryInfo>)), security(("bearer" = [])))]
pub async fn list_prompts(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<dto::PageQuery>,
) -> Result<Json<dto::Page<dto::PromptSummaryInfo>>, ApiError> {
    caller.require(Role::Viewer)?;
    let prompts = state.registry.list_prompts(&page_request(query)).await?;
    Ok(Json(page(prompts, prompt_summary_info)))
}

#[utoipa::path(post, path = "/api/v1/prompts/{name}/versions", tag = "prompts",
    params(("name" = String, Path)), request_body = dto::CreatePromptVersionRequest,
    responses((status = 201, body = dto::PromptInfo), (status = 400, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_prompt_version(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(request): Json<dto::CreatePromptVersionRequest>,
) -> Result<(StatusCode, Json<dto::PromptInfo>), ApiError> {
    caller.require(Role::Operator)?;
    let name = prompt_name(&name)?;
    let prompt = state
        .registry
        .create_prompt_version(&name, &request.text, request.chat_template.as_deref())
        .await?;
    tracing::info!(prompt = %name, version = prompt.version, by = %caller.subject, "prompt version created");
    Ok((StatusCode::CREATED, Json(prompt_info(prompt))))
}

#[utoipa::path(get, path = "/api/v1/prompts/{name}", tag = "prompts", params(("name" = String, Path)),
    responses((status = 200, description = "the latest version", body = dto::PromptInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_prompt(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::PromptInfo>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = prompt_name(&name)?;
    Ok(Json(prompt_info(state.registry.prompt(&name, None).await?)))
}

#[utoipa::path(get, path = "/api/v1/prompts/{name}/versions", tag = "prompts",
    params(("name" = String, Path), dto::PageQuery),
    responses((status = 200, description = "newest first", body = dto::Page<dto::PromptInfo>), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_prompt_versions(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<dto::PageQuery>,
) -> Result<Json<dto::Page<dto::PromptInfo>>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = prompt_name(&name)?;
    let versions = state
        .registry
        .list_prompt_versions(&name, &page_request(query))
        .await?;
    Ok(Json(page(versions, prompt_info)))
}

#[utoipa::path(get, path = "/api/v1/prompts/{name}/versions/{version}", tag = "prompts",
    params(("name" = String, Path), ("version" = u32, Path)),
    responses((status = 200, body = dto::PromptInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_prompt_version(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, version)): Path<(String, u32)>,
) -> Result<Json<dto::PromptInfo>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = prompt_name(&name)?;
    Ok(Json(prompt_info(
        state.registry.prompt(&name, Some(version)).await?,
    )))
}
