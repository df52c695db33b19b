//! `/api/v1/nodes`: bootstrap tokens for enrolling agents, the fleet's
//! nodes (views, cordon/uncordon/drain, labels, health history), and
//! `/api/v1/assignments`. Enrolment and the sync stream are gRPC
//! (`flotilla.fleet.v1.Fleet`).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api_types as dto;

use super::AppState;
use super::convert::{
    aliases, assignment_change, assignment_record, model_name, node_info, node_name, page,
    page_request, policy_ref, prompt_policy,
};
use super::extract::{Caller, Json, Path, Query};
use crate::auth::Role;
use crate::domain::{
    AssignmentTarget, BootstrapToken, Labels, Node, NodeChange, NodePattern, NodeStatus, PromptRef,
    Quantization,
};
use crate::error::ApiError;
use crate::fleet::{AssignRequest, Fleet, TokenBinding};

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
    let binding = match (request.node.as_deref(), request.replace.as_deref()) {
        (None, None) => TokenBinding::Any,
        (Some(pattern), None) => TokenBinding::Nodes(
            pattern
                .parse::<NodePattern>()
                .map_err(|error| ApiError::invalid_argument(error.to_string()))?,
        ),
        (None, Some(name)) => TokenBinding::Replace(node_name(name)?),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_argument(
                "give at most one of node and replace: replace binds the token to that name",
            ));
        }
    };
    let (secret, token) = state
        .fleet
        .create_bootstrap_token(&caller.subject, ttl, request.uses.unwrap_or(1), binding)
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
    Ok(Json(page(nodes, |node| view(&state.fleet, node))))
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
    Ok(Json(view(&state.fleet, state.fleet.get_node(&name).await?)))
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
    let node = state.fleet.approve(&name, &caller.subject).await?;
    Ok(Json(view(&state.fleet, node)))
}

fn bootstrap_token_record(token: BootstrapToken) -> dto::BootstrapTokenRecord {
    dto::BootstrapTokenRecord {
        id: token.id,
        expires_at: token.expires_at,
        uses_left: token.uses_left,
        created_by: token.created_by,
        created_at: token.created_at,
        node: token.node_pattern.map(|pattern| pattern.to_string()),
        replace: token.may_replace,
        revoked: token.revoked,
    }
}

#[utoipa::path(get, path = "/api/v1/nodes/tokens", tag = "nodes",
    responses((status = 200, body = Vec<dto::BootstrapTokenRecord>), (status = 403, body = dto::ErrorBody)),
    security(("bearer" = [])))]
/// Every bootstrap token, newest first; never their secrets.
pub async fn list_bootstrap_tokens(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Vec<dto::BootstrapTokenRecord>>, ApiError> {
    caller.require(Role::Operator)?;
    let tokens = state.fleet.list_bootstrap_tokens().await?;
    Ok(Json(
        tokens.into_iter().map(bootstrap_token_record).collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/nodes/tokens/{id}", tag = "nodes",
    params(("id" = String, Path)),
    responses((status = 200, body = dto::BootstrapTokenRecord), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
/// Revokes a bootstrap token: it enrols nothing from now on.
pub async fn revoke_bootstrap_token(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<dto::BootstrapTokenRecord>, ApiError> {
    caller.require(Role::Operator)?;
    let token = state
        .fleet
        .revoke_bootstrap_token(&id, &caller.subject)
        .await?;
    Ok(Json(bootstrap_token_record(token)))
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/approve-replace", tag = "nodes",
    params(("name" = String, Path)),
    responses((status = 200, body = dto::NodeInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
/// Lets the next enrolment under this name (with the agent's `--replace`)
/// replace the node, once. The replaced node's credentials stop working
/// then; its status (cordoned, say) carries over.
pub async fn approve_replace_node(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::NodeInfo>, ApiError> {
    caller.require(Role::Operator)?;
    let name = node_name(&name)?;
    let node = state
        .fleet
        .approve_replacement(&name, &caller.subject)
        .await?;
    Ok(Json(view(&state.fleet, node)))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{name}", tag = "nodes",
    params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = dto::ErrorBody), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
/// Removes a node (admins only): its row, node-level assignment and
/// history go, its credentials stop working and its stream ends.
pub async fn remove_node(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let name = node_name(&name)?;
    state.fleet.remove_node(&name, &caller.subject).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn view(fleet: &Fleet, node: Node) -> dto::NodeInfo {
    let ready = fleet.is_ready(&node);
    node_info(node, ready)
}

async fn change(
    state: &AppState,
    caller: &crate::auth::Principal,
    name: &str,
    change: NodeChange,
) -> Result<Json<dto::NodeInfo>, ApiError> {
    caller.require(Role::Operator)?;
    let name = node_name(name)?;
    let node = state
        .fleet
        .change_node(&name, change, &caller.subject)
        .await?;
    Ok(Json(view(&state.fleet, node)))
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/cordon", tag = "nodes",
    params(("name" = String, Path)),
    responses((status = 200, body = dto::NodeInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
/// Keeps the node out of placement; it keeps serving what it has.
pub async fn cordon_node(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::NodeInfo>, ApiError> {
    change(
        &state,
        &caller,
        &name,
        NodeChange::Status(NodeStatus::Cordoned),
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/uncordon", tag = "nodes",
    params(("name" = String, Path)),
    responses((status = 200, body = dto::NodeInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
/// Returns a cordoned node to placement; it gets what the assignments say.
pub async fn uncordon_node(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::NodeInfo>, ApiError> {
    change(
        &state,
        &caller,
        &name,
        NodeChange::Status(NodeStatus::Active),
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/drain", tag = "nodes",
    params(("name" = String, Path)),
    responses((status = 200, body = dto::NodeInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
/// Cordons the node and empties its desired state, so it unloads.
pub async fn drain_node(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::NodeInfo>, ApiError> {
    change(&state, &caller, &name, NodeChange::Drain).await
}

#[utoipa::path(patch, path = "/api/v1/nodes/{name}/labels", tag = "nodes",
    params(("name" = String, Path)), request_body = dto::UpdateLabelsRequest,
    responses((status = 200, body = dto::NodeInfo), (status = 400, body = dto::ErrorBody),
        (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_labels(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Json(request): Json<dto::UpdateLabelsRequest>,
) -> Result<Json<dto::NodeInfo>, ApiError> {
    change(
        &state,
        &caller,
        &name,
        NodeChange::Labels {
            set: request.set,
            remove: request.remove,
        },
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/nodes/{name}/health", tag = "nodes",
    params(("name" = String, Path), dto::HealthHistoryQuery),
    responses((status = 200, body = dto::HealthHistory), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn health_history(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<dto::HealthHistoryQuery>,
) -> Result<Json<dto::HealthHistory>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = node_name(&name)?;
    let minutes = query.minutes.unwrap_or(60);
    if !(1..=1440).contains(&minutes) {
        return Err(ApiError::invalid_argument(
            "minutes must be between 1 and 1440",
        ));
    }
    let points = state
        .fleet
        .health_history(&name, Duration::from_secs(u64::from(minutes) * 60))
        .await?;
    Ok(Json(dto::HealthHistory {
        node: name.to_string(),
        points,
    }))
}

#[utoipa::path(post, path = "/api/v1/assignments", tag = "assignments",
    request_body = dto::CreateAssignmentRequest,
    responses((status = 201, body = dto::AssignmentChange), (status = 400, body = dto::ErrorBody),
        (status = 404, body = dto::ErrorBody), (status = 412, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_assignment(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(request): Json<dto::CreateAssignmentRequest>,
) -> Result<(StatusCode, Json<dto::AssignmentChange>), ApiError> {
    caller.require(Role::Operator)?;
    let target = target(request.node.as_deref(), request.selector)?;
    let requirement = version_requirement(&request.version)?;
    let quantization = request
        .quantization
        .as_deref()
        .map(|raw| {
            raw.parse::<Quantization>()
                .map_err(|error| ApiError::invalid_argument(error.to_string()))
        })
        .transpose()?;
    let prompt = request
        .prompt
        .as_deref()
        .map(|raw| raw.parse::<PromptRef>().map_err(ApiError::invalid_argument))
        .transpose()?;
    let (assignment, changed) = state
        .fleet
        .assign(
            &caller.subject,
            AssignRequest {
                target,
                model: model_name(&request.model)?,
                requirement,
                quantization,
                prompt,
                prompt_policy: prompt_policy(request.prompt_policy.as_deref())?,
                aliases: aliases(&request.aliases)?,
                escalation_policy: policy_ref(request.policy.as_deref())?,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(assignment_change(Some(assignment), changed)),
    ))
}

#[utoipa::path(get, path = "/api/v1/assignments", tag = "assignments", params(dto::PageQuery),
    responses((status = 200, body = dto::Page<dto::AssignmentRecord>)), security(("bearer" = [])))]
pub async fn list_assignments(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<dto::PageQuery>,
) -> Result<Json<dto::Page<dto::AssignmentRecord>>, ApiError> {
    caller.require(Role::Viewer)?;
    let assignments = state.fleet.list_assignments(&page_request(query)).await?;
    Ok(Json(page(assignments, assignment_record)))
}

#[utoipa::path(delete, path = "/api/v1/assignments", tag = "assignments",
    params(dto::RemoveAssignmentQuery),
    responses((status = 200, body = dto::AssignmentChange), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_assignment(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<dto::RemoveAssignmentQuery>,
) -> Result<Json<dto::AssignmentChange>, ApiError> {
    caller.require(Role::Operator)?;
    let selector = query
        .selector
        .as_deref()
        .map(|raw| {
            raw.parse::<Labels>()
                .map_err(|error| ApiError::invalid_argument(error.to_string()))
        })
        .transpose()?;
    let target = target(query.node.as_deref(), selector.map(Into::into))?;
    let changed = state.fleet.unassign(&caller.subject, &target).await?;
    Ok(Json(assignment_change(None, changed)))
}

fn target(
    node: Option<&str>,
    selector: Option<std::collections::BTreeMap<String, String>>,
) -> Result<AssignmentTarget, ApiError> {
    match (node, selector) {
        (Some(node), None) => Ok(AssignmentTarget::Node(node_name(node)?)),
        (None, Some(selector)) => Ok(AssignmentTarget::Selector(
            Labels::new(selector).map_err(|error| ApiError::invalid_argument(error.to_string()))?,
        )),
        _ => Err(ApiError::invalid_argument(
            "give exactly one of node and selector",
        )),
    }
}

/// An exact version (`1.2.3` means exactly it) or a requirement (`^1.2`).
fn version_requirement(raw: &str) -> Result<semver::VersionReq, ApiError> {
    let raw = raw.trim();
    if let Ok(version) = raw.parse::<semver::Version>() {
        return Ok(semver::VersionReq {
            comparators: vec![semver::Comparator {
                op: semver::Op::Exact,
                major: version.major,
                minor: Some(version.minor),
                patch: Some(version.patch),
                pre: version.pre,
            }],
        });
    }
    raw.parse().map_err(|error| {
        ApiError::invalid_argument(format!(
            "invalid version {raw:?}: expected a version such as 1.2.3 or a requirement such as ^1.2 ({error})"
        ))
    })
}
