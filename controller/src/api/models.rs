//! `/api/v1/models`: models, versions, artifact uploads and resolution.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use flotilla_api_types as dto;
use futures::TryStreamExt;

use super::AppState;
use super::convert::{
    artifact_info, model_info, model_name, page, page_request, semver_version, version_info,
    version_with_artifacts,
};
use super::extract::{Caller, Json, Path, Query};
use crate::auth::Role;
use crate::domain::{Digest, PageRequest, Quantization, QuantizationPolicy, VersionState};
use crate::error::ApiError;
use crate::registry::{UploadOutcome, UploadRequest};

/// Versions shown inline by `GET /models/{name}`; longer histories page
/// through `/models/{name}/versions`.
const VERSIONS_IN_MODEL_DETAIL: u32 = 100;

#[utoipa::path(get, path = "/api/v1/models", tag = "models", params(dto::PageQuery),
    responses((status = 200, body = dto::Page<dto::ModelInfo>), (status = 401, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_models(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<dto::PageQuery>,
) -> Result<Json<dto::Page<dto::ModelInfo>>, ApiError> {
    caller.require(Role::Viewer)?;
    let models = state.registry.list_models(&page_request(query)).await?;
    Ok(Json(page(models, model_info)))
}

#[utoipa::path(post, path = "/api/v1/models", tag = "models", request_body = dto::CreateModelRequest,
    responses((status = 201, body = dto::ModelInfo), (status = 409, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_model(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(request): Json<dto::CreateModelRequest>,
) -> Result<(StatusCode, Json<dto::ModelInfo>), ApiError> {
    caller.require(Role::Operator)?;
    let name = model_name(&request.name)?;
    let model = state
        .registry
        .create_model(&name, &request.description)
        .await?;
    tracing::info!(model = %name, by = %caller.subject, "model created");
    Ok((StatusCode::CREATED, Json(model_info(model))))
}

#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "model name")),
    responses((status = 200, body = dto::ModelDetail), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_model(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::ModelDetail>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = model_name(&name)?;
    let model = state.registry.model(&name).await?;
    let versions = state
        .registry
        .list_versions(&name, &PageRequest::first(VERSIONS_IN_MODEL_DETAIL))
        .await?;
    Ok(Json(dto::ModelDetail {
        model: model_info(model),
        versions: versions
            .items
            .into_iter()
            .map(version_with_artifacts)
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/models/{name}/versions", tag = "models",
    params(("name" = String, Path, description = "model name"), dto::PageQuery),
    responses((status = 200, body = dto::Page<dto::VersionInfo>), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_versions(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<dto::PageQuery>,
) -> Result<Json<dto::Page<dto::VersionInfo>>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = model_name(&name)?;
    let versions = state
        .registry
        .list_versions(&name, &page_request(query))
        .await?;
    Ok(Json(page(versions, version_with_artifacts)))
}

#[utoipa::path(post, path = "/api/v1/models/{name}/versions", tag = "models",
    params(("name" = String, Path, description = "model name")),
    request_body = dto::CreateVersionRequest,
    responses((status = 201, body = dto::VersionInfo), (status = 404, body = dto::ErrorBody), (status = 409, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_version(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(request): Json<dto::CreateVersionRequest>,
) -> Result<(StatusCode, Json<dto::VersionInfo>), ApiError> {
    caller.require(Role::Operator)?;
    let name = model_name(&name)?;
    let version = semver_version(&request.version)?;
    let created = state
        .registry
        .create_version(&name, &version, &request.notes)
        .await?;
    tracing::info!(model = %name, %version, by = %caller.subject, "version created");
    Ok((StatusCode::CREATED, Json(version_info(created, Vec::new()))))
}

#[utoipa::path(get, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = dto::VersionInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_version(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<dto::VersionInfo>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = model_name(&name)?;
    let version = semver_version(&version)?;
    let found = state.registry.version(&name, &version).await?;
    Ok(Json(version_with_artifacts(found)))
}

#[utoipa::path(patch, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = String, Path)),
    request_body = dto::UpdateVersionRequest,
    responses((status = 200, body = dto::VersionInfo), (status = 409, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_version(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, version)): Path<(String, String)>,
    Json(request): Json<dto::UpdateVersionRequest>,
) -> Result<Json<dto::VersionInfo>, ApiError> {
    caller.require(Role::Operator)?;
    let name = model_name(&name)?;
    let version = semver_version(&version)?;
    let next = request
        .state
        .parse::<VersionState>()
        .map_err(|e| ApiError::invalid_argument(e.to_string()))?;
    let updated = state
        .registry
        .set_version_state(&name, &version, next)
        .await?;
    tracing::info!(model = %name, %version, state = %next, by = %caller.subject, "version state changed");
    Ok(Json(version_with_artifacts(updated)))
}

#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "model name")),
    responses((status = 204, description = "deleted"), (status = 404, body = dto::ErrorBody),
        (status = 409, description = "the model has published versions", body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_model(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let name = model_name(&name)?;
    state.registry.delete_unused_model(&name).await?;
    tracing::info!(model = %name, by = %caller.subject, "model deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/models/{name}/versions/{version}", tag = "models",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = dto::ErrorBody),
        (status = 409, description = "the version is not a draft", body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_version(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let name = model_name(&name)?;
    let version = semver_version(&version)?;
    state.registry.delete_draft_version(&name, &version).await?;
    tracing::info!(model = %name, %version, by = %caller.subject, "draft version deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/models/{name}/versions/{version}/artifacts", tag = "models",
    params(("name" = String, Path), ("version" = String, Path), dto::UploadQuery,
        ("x-flotilla-blake3" = Option<String>, Header, description = "expected blake3 digest (hex)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the GGUF file's bytes"),
    responses(
        (status = 201, description = "stored", body = dto::ArtifactInfo),
        (status = 200, description = "the version already had these exact bytes", body = dto::ArtifactInfo),
        (status = 409, body = dto::ErrorBody),
        (status = 413, body = dto::ErrorBody),
        (status = 422, description = "not a valid GGUF file, truncated, or digest mismatch", body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload_artifact(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<dto::UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<dto::ArtifactInfo>), ApiError> {
    caller.require(Role::Operator)?;
    let model = model_name(&name)?;
    let version = semver_version(&version)?;
    let declared_digest = match headers.get(dto::DIGEST_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<Digest>().ok())
                .ok_or_else(|| {
                    ApiError::invalid_argument(format!(
                        "invalid {} header: expected 64 hex characters",
                        dto::DIGEST_HEADER
                    ))
                })?,
        ),
    };
    let expected_quantization = match query.quantization.as_deref() {
        None => None,
        Some(raw) if raw.eq_ignore_ascii_case("auto") => None,
        Some(raw) => Some(
            raw.parse::<Quantization>()
                .map_err(|e| ApiError::invalid_argument(e.to_string()))?,
        ),
    };
    let request = UploadRequest {
        model,
        version,
        declared_digest,
        expected_quantization,
    };
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let outcome = state.registry.upload_artifact(request, stream).await?;
    let status = match &outcome {
        UploadOutcome::Created(_) => StatusCode::CREATED,
        UploadOutcome::AlreadyPresent(_) => StatusCode::OK,
    };
    let artifact = match outcome {
        UploadOutcome::Created(artifact) | UploadOutcome::AlreadyPresent(artifact) => artifact,
    };
    Ok((status, Json(artifact_info(artifact))))
}

#[utoipa::path(get, path = "/api/v1/resolve", tag = "models", params(dto::ResolveQuery),
    responses((status = 200, body = dto::ResolutionInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn resolve(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<dto::ResolveQuery>,
) -> Result<Json<dto::ResolutionInfo>, ApiError> {
    caller.require(Role::Viewer)?;
    let model = model_name(&query.model)?;
    let requirement_text = query.requirement.as_deref().unwrap_or("*");
    let requirement = requirement_text
        .parse::<semver::VersionReq>()
        .map_err(|e| {
            ApiError::invalid_argument(format!(
                "invalid version requirement {requirement_text:?}: {e}"
            ))
        })?;
    let policy = query
        .quantization
        .as_deref()
        .unwrap_or("auto")
        .parse::<QuantizationPolicy>()
        .map_err(|e| ApiError::invalid_argument(e.to_string()))?;
    let resolution = state
        .registry
        .resolve(&model, &requirement, &policy, query.memory_budget_bytes)
        .await?;
    Ok(Json(dto::ResolutionInfo {
        model: model.to_string(),
        version: resolution.version.version.to_string(),
        state: resolution.version.state.to_string(),
        artifact: artifact_info(resolution.artifact),
    }))
}
