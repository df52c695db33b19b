//! `/api/v1/tokens` and `/api/v1/whoami`: minting, listing and revoking API
//! tokens (admins only) and telling callers who they are. Minted tokens are
//! recorded by their id (`jti`), never the token string; a revoked one is
//! refused on every request from then on (`auth::Revocations`).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api_types as dto;

use super::AppState;
use super::extract::{Caller, Json, Path};
use crate::auth::Role;
use crate::error::ApiError;

const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

#[utoipa::path(post, path = "/api/v1/tokens", tag = "auth", request_body = dto::CreateTokenRequest,
    responses((status = 201, body = dto::TokenInfo), (status = 403, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(request): Json<dto::CreateTokenRequest>,
) -> Result<(StatusCode, Json<dto::TokenInfo>), ApiError> {
    caller.require(Role::Admin)?;
    let role = request
        .role
        .parse::<Role>()
        .map_err(|e| ApiError::invalid_argument(e.to_string()))?;
    if !role.is_human() {
        return Err(ApiError::invalid_argument(
            "role node cannot be minted here: node credentials come from enrolment with a bootstrap token",
        ));
    }
    let subject = request.subject.trim();
    if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
        return Err(ApiError::invalid_argument(
            "token subject must be 1 to 256 printable characters",
        ));
    }
    let ttl = request
        .ttl_seconds
        .map_or(DEFAULT_TOKEN_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::invalid_argument(format!(
            "ttl_seconds must be between 1 and {}",
            MAX_TOKEN_TTL.as_secs()
        )));
    }
    let minted = state
        .fleet
        .mint_api_token(subject, role, ttl, &caller.subject)
        .await?;
    tracing::info!(subject, %role, token_id = %minted.id, by = %caller.subject, "token minted");
    Ok((
        StatusCode::CREATED,
        Json(dto::TokenInfo {
            token: minted.token,
            id: minted.id,
            subject: subject.to_owned(),
            role: role.to_string(),
            expires_at: minted.expires_at,
        }),
    ))
}

fn token_record(token: crate::store::ApiToken) -> dto::TokenRecord {
    dto::TokenRecord {
        id: token.id,
        subject: token.subject,
        role: token.role.to_string(),
        created_by: token.created_by,
        created_at: token.created_at,
        expires_at: token.expires_at,
        revoked_at: token.revoked_at,
    }
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "auth",
    responses((status = 200, body = Vec<dto::TokenRecord>), (status = 403, body = dto::ErrorBody)),
    security(("bearer" = [])))]
/// Every API token this controller minted, newest first; never the tokens.
pub async fn list_tokens(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<dto::TokenRecord>>, ApiError> {
    caller.require(Role::Admin)?;
    let tokens = state.fleet.list_api_tokens().await?;
    Ok(Json(tokens.into_iter().map(token_record).collect()))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "auth", params(("id" = String, Path)),
    responses((status = 200, body = dto::TokenRecord), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
/// Revokes an API token: every request bearing it is refused from now on.
pub async fn revoke_token(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<dto::TokenRecord>, ApiError> {
    caller.require(Role::Admin)?;
    let token = state.fleet.revoke_api_token(&id, &caller.subject).await?;
    Ok(Json(token_record(token)))
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth",
    responses((status = 200, body = dto::WhoAmI), (status = 401, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn whoami(Caller(caller): Caller) -> Json<dto::WhoAmI> {
    Json(dto::WhoAmI {
        subject: caller.subject,
        role: caller.role.to_string(),
        expires_at: caller.expires_at,
    })
}
