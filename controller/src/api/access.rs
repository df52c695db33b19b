//! Who may call which endpoint, decided before a handler runs: the bearer
//! token is verified (signature, expiry, audience, issuer, not-before), its
//! id checked against revocations (node credentials: against their node's
//! credential generation), and the role the route needs is required, all
//! from the request's head. So a caller without the role gets its 403 before
//! the JSON body is read or parsed, whatever the body holds. Handlers keep
//! their own checks as a second line.
//!
//! Also the cap on concurrent artifact uploads: each upload holds a
//! temporary file and an inspection of its GGUF header, so they are counted
//! and the surplus refused at once (503, retry later) instead of queued.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::AppState;
use crate::auth::{AuthError, Principal, Role, bearer_token};
use crate::error::{ApiError, ErrorCode};

/// Uploads inspected at once; more are refused with 503.
pub const MAX_CONCURRENT_UPLOADS: usize = 8;

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Any valid token, of any role (`/whoami`).
    AnyCaller,
    /// A human role including this one.
    Role(Role),
    /// A viewer, or a node (which the handler restricts to its artifact).
    ViewerOrNode,
}

/// The access a route template (below `/api/v1`) needs for a method.
/// Reads need a viewer and changes an operator, unless listed here.
fn required(method: &Method, route: &str) -> Access {
    match (method.as_str(), route) {
        (_, "/whoami") => Access::AnyCaller,
        ("GET" | "HEAD", "/blobs/{digest}") => Access::ViewerOrNode,
        (_, "/tokens" | "/tokens/{id}") => Access::Role(Role::Admin),
        ("DELETE", "/nodes/{name}") => Access::Role(Role::Admin),
        ("GET" | "HEAD", _) => Access::Role(Role::Viewer),
        _ => Access::Role(Role::Operator),
    }
}

/// Authenticates and authorises a request from its head, and leaves the
/// verified [`Principal`] in its extensions for the `Caller` extractor.
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(route) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
    else {
        return next.run(request).await;
    };
    let route = route.strip_prefix("/api/v1").unwrap_or(&route);
    if route == "/openapi.json" {
        return next.run(request).await;
    }
    let access = required(request.method(), route);
    match authenticate(&state, request.headers().get(AUTHORIZATION)).await {
        Ok(principal) => {
            let allowed = match access {
                Access::AnyCaller => Ok(()),
                Access::Role(role) => principal.require(role),
                Access::ViewerOrNode if principal.role == Role::Node => Ok(()),
                Access::ViewerOrNode => principal.require(Role::Viewer),
            };
            if let Err(error) = allowed {
                return ApiError::from(error).into_response();
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// Verifies the bearer token of a request and checks that it is still
/// good: not revoked, or for a node credential, of the node's current
/// credential generation.
pub async fn authenticate(
    state: &AppState,
    header: Option<&axum::http::HeaderValue>,
) -> Result<Principal, ApiError> {
    let header = match header {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| AuthError::MalformedHeader)?),
    };
    let token = bearer_token(header)?;
    let principal = state.auth.verify(token).inspect_err(|error| {
        metrics::counter!("flotilla_auth_failures_total").increment(1);
        tracing::debug!(%error, "rejected a token");
    })?;
    state.fleet.revocations().check(&principal).await?;
    state.fleet.check_node_credential(&principal).await?;
    Ok(principal)
}

/// Refuses an upload beyond [`MAX_CONCURRENT_UPLOADS`] at once.
pub async fn limit_uploads(uploads: Arc<Semaphore>, request: Request, next: Next) -> Response {
    let Ok(_permit) = uploads.try_acquire_owned() else {
        metrics::counter!("flotilla_uploads_refused_total").increment(1);
        return ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "too many uploads in progress (at most {MAX_CONCURRENT_UPLOADS} at once); retry when one has finished"
            ),
        )
        .into_response();
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minting_and_removal_need_an_admin_and_changes_an_operator() {
        assert_eq!(
            required(&Method::POST, "/tokens"),
            Access::Role(Role::Admin)
        );
        assert_eq!(required(&Method::GET, "/tokens"), Access::Role(Role::Admin));
        assert_eq!(
            required(&Method::DELETE, "/tokens/{id}"),
            Access::Role(Role::Admin)
        );
        assert_eq!(
            required(&Method::DELETE, "/nodes/{name}"),
            Access::Role(Role::Admin)
        );
        assert_eq!(
            required(&Method::POST, "/nodes/tokens"),
            Access::Role(Role::Operator)
        );
        assert_eq!(required(&Method::GET, "/nodes"), Access::Role(Role::Viewer));
        assert_eq!(
            required(&Method::PATCH, "/nodes/{name}/labels"),
            Access::Role(Role::Operator)
        );
        assert_eq!(
            required(&Method::GET, "/blobs/{digest}"),
            Access::ViewerOrNode
        );
        assert_eq!(required(&Method::GET, "/whoami"), Access::AnyCaller);
    }
}
