//! `/api/v1/rollouts` (create with dry run, list, status, pause, resume,
//! promote, abort, rollback) and `/api/v1/events`, the audit log.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use flotilla_api_types as dto;

use super::AppState;
use super::extract::{Caller, Json, Path, Query};
use crate::auth::Role;
use crate::domain::{
    Event, GateThresholds, Labels, PromptRef, QuantizationPolicy, Rollout, RolloutCommand,
    RolloutName, RolloutNode, RolloutSpec, Waves,
};
use crate::error::ApiError;
use crate::rollout::{MAX_EVENTS, RolloutView};

const DEFAULT_BAKE: Duration = Duration::from_secs(30);

fn rollout_name(raw: &str) -> Result<RolloutName, ApiError> {
    raw.parse()
        .map_err(|error: crate::domain::InvalidName| ApiError::invalid_argument(error.to_string()))
}

fn spec(request: &dto::CreateRolloutRequest) -> Result<RolloutSpec, ApiError> {
    let invalid = |error: String| ApiError::invalid_argument(error);
    let selector = Labels::new(request.selector.clone()).map_err(|e| invalid(e.to_string()))?;
    if selector.is_empty() {
        return Err(invalid(
            "a rollout needs a selector (k=v); it never targets the whole fleet by accident"
                .to_owned(),
        ));
    }
    let model = request
        .model
        .parse()
        .map_err(|e: crate::domain::InvalidName| invalid(e.to_string()))?;
    // A bare version is that version exactly, as in assignments; semver
    // alone would read `1.1.0` as the caret range `^1.1.0`.
    let version_text = request.version.trim();
    let requirement = match semver::Version::parse(version_text) {
        Ok(exact) => semver::VersionReq::parse(&format!("={exact}")),
        Err(_) => semver::VersionReq::parse(version_text),
    }
    .map_err(|error| {
        invalid(format!(
            "invalid version requirement {:?}: {error}",
            request.version.chars().take(40).collect::<String>()
        ))
    })?;
    let quantization = match &request.quantization {
        None => QuantizationPolicy::Auto,
        Some(policy) => policy
            .parse()
            .map_err(|e: crate::domain::InvalidQuantization| invalid(e.to_string()))?,
    };
    let prompt = request
        .prompt
        .as_deref()
        .map(|prompt| prompt.parse::<PromptRef>().map_err(invalid))
        .transpose()?;
    let waves = match &request.waves {
        None => Waves::default(),
        Some(waves) => waves
            .parse()
            .map_err(|e: crate::domain::InvalidWaves| invalid(e.to_string()))?,
    };
    let aliases = super::convert::aliases(&request.aliases)?
        .iter()
        .map(ToString::to_string)
        .collect();
    let prompt_policy = super::convert::prompt_policy(request.prompt_policy.as_deref())?;
    let escalation_policy = super::convert::policy_ref(request.policy.as_deref())?;
    let max_error_rate_percent = request.max_error_rate_percent;
    if max_error_rate_percent.is_some_and(|percent| percent >= 100) {
        return Err(invalid(
            "max_error_rate_percent must be below 100 (omit it for no error-rate gate)".to_owned(),
        ));
    }
    let max_escalation_rate_percent = request.max_escalation_rate_percent;
    // 100% could never be exceeded: a gate that cannot trip is a mistake.
    if max_escalation_rate_percent.is_some_and(|percent| percent >= 100) {
        return Err(invalid(
            "max_escalation_rate_percent must be below 100 (omit it for no escalation-rate gate)"
                .to_owned(),
        ));
    }
    let max_unavailable = request.max_unavailable.unwrap_or(1);
    if max_unavailable == 0 {
        return Err(invalid("max_unavailable must be at least 1".to_owned()));
    }
    let bake = request.bake_ms.map_or(DEFAULT_BAKE, Duration::from_millis);
    if bake > crate::domain::MAX_BAKE {
        return Err(invalid(format!(
            "bake time must be at most {} seconds",
            crate::domain::MAX_BAKE.as_secs()
        )));
    }
    Ok(RolloutSpec {
        selector,
        model,
        requirement,
        quantization,
        prompt,
        prompt_policy,
        aliases,
        escalation_policy,
        waves,
        max_unavailable,
        bake,
        auto_rollback: request.auto_rollback,
        gates: GateThresholds {
            max_failed_activations: request.max_failed_activations.unwrap_or(0),
            max_error_rate_percent,
            min_requests_for_error_rate: request
                .min_requests_for_error_rate
                .unwrap_or(crate::domain::DEFAULT_MIN_REQUESTS_FOR_ERROR_RATE),
            max_escalation_rate_percent,
            ..GateThresholds::default()
        },
    })
}

fn node_info(
    node: RolloutNode,
    current: Option<&crate::domain::Node>,
    ready: bool,
) -> dto::RolloutNodeInfo {
    let observed = current.and_then(|n| n.observed.as_ref());
    let about_ours = |digest: &Option<String>| {
        node.desired
            .as_ref()
            .is_some_and(|d| digest.as_deref() == Some(d.digest.as_str()))
    };
    let (phase, bytes_done, bytes_total) = match observed {
        Some(o) if about_ours(&o.digest) => (
            Some(o.phase.as_str().to_owned()),
            o.bytes_done,
            o.bytes_total,
        ),
        Some(o) => (Some(o.phase.as_str().to_owned()), 0, 0),
        None => (None, 0, 0),
    };
    dto::RolloutNodeInfo {
        node: node.node.to_string(),
        wave: node.wave + 1,
        state: node.state.to_string(),
        version: node.desired.as_ref().map(|d| d.version.clone()),
        quantization: node.desired.as_ref().map(|d| d.quantization.clone()),
        digest: node.desired.as_ref().map(|d| d.digest.clone()),
        reason: node.reason,
        phase,
        bytes_done,
        bytes_total,
        ready,
        current: node.previous.as_ref().map(serving_summary),
        next: node.desired.as_ref().map(serving_summary),
    }
}

fn serving_summary(desired: &crate::domain::DesiredAssignment) -> dto::ServingSummary {
    dto::ServingSummary {
        model: desired.model.clone(),
        version: desired.version.clone(),
        prompt: desired
            .prompt
            .as_ref()
            .map(|prompt| format!("{}@{}", prompt.name, prompt.version)),
        prompt_policy: desired.prompt_policy.as_str().to_owned(),
        aliases: desired.aliases.clone(),
        policy: super::convert::policy_label(desired),
    }
}

fn rollout_info(rollout: Rollout, nodes: Vec<dto::RolloutNodeInfo>) -> dto::RolloutInfo {
    let spec = &rollout.spec;
    dto::RolloutInfo {
        name: rollout.name.to_string(),
        state: rollout.state.to_string(),
        model: spec.model.to_string(),
        version: spec.requirement.to_string(),
        quantization: spec.quantization.to_string(),
        prompt: spec.prompt.as_ref().map(ToString::to_string),
        policy: spec.escalation_policy.as_ref().map(ToString::to_string),
        selector: spec.selector.as_map().clone(),
        waves: spec.waves.to_string(),
        wave_count: rollout.wave_count,
        current_wave: (rollout.current_wave + 1).min(rollout.wave_count.max(1)),
        bake_ms: u64::try_from(spec.bake.as_millis()).unwrap_or(u64::MAX),
        max_unavailable: spec.max_unavailable,
        auto_rollback: spec.auto_rollback,
        reason: rollout.reason,
        generation: rollout.generation,
        created_by: rollout.created_by,
        bake_started_at: rollout.bake_started_at,
        updated_at: Some(rollout.updated_at),
        nodes,
    }
}

fn view_info(state: &AppState, view: RolloutView) -> dto::RolloutInfo {
    let nodes = view
        .nodes
        .into_iter()
        .map(|(node, current)| {
            let ready = current.as_ref().is_some_and(|n| state.fleet.is_ready(n));
            node_info(node, current.as_ref(), ready)
        })
        .collect();
    rollout_info(view.rollout, nodes)
}

fn event_info(event: Event) -> dto::EventInfo {
    dto::EventInfo {
        id: event.id,
        at: event.at,
        actor: event.actor,
        rollout: event.rollout.map(|r| r.to_string()),
        node: event.node.map(|n| n.to_string()),
        action: event.action,
        message: event.message,
    }
}

#[utoipa::path(post, path = "/api/v1/rollouts", tag = "rollouts",
    request_body = dto::CreateRolloutRequest,
    responses((status = 201, body = dto::RolloutInfo), (status = 200, body = dto::RolloutInfo,
        description = "dry run: the plan, nothing recorded"),
        (status = 400, body = dto::ErrorBody), (status = 404, body = dto::ErrorBody),
        (status = 409, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_rollout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(request): Json<dto::CreateRolloutRequest>,
) -> Result<(StatusCode, Json<dto::RolloutInfo>), ApiError> {
    caller.require(Role::Operator)?;
    let name = rollout_name(&request.name)?;
    let spec = spec(&request)?;
    if request.dry_run {
        // The dry run refuses what the real create would: a name in use.
        if state.rollouts.get(&name).await.is_ok() {
            return Err(ApiError::new(
                crate::error::ErrorCode::AlreadyExists,
                format!("rollout {name} already exists"),
            ));
        }
        let plan = state.rollouts.plan(&spec).await?;
        let now = time::OffsetDateTime::now_utc();
        let rollout = Rollout {
            name,
            spec,
            state: crate::domain::RolloutState::Pending,
            current_wave: 0,
            wave_count: plan.wave_count,
            bake_started_at: None,
            skip_bake: false,
            reason: None,
            generation: 0,
            created_by: caller.subject.clone(),
            created_at: now,
            updated_at: now,
        };
        let nodes = plan
            .nodes
            .into_iter()
            .map(|node| node_info(node, None, false))
            .collect();
        let mut info = rollout_info(rollout, nodes);
        info.state = "dry_run".to_owned();
        info.updated_at = None;
        return Ok((StatusCode::OK, Json(info)));
    }
    let (rollout, _) = state
        .rollouts
        .create(&caller.subject, name.clone(), spec)
        .await?;
    let view = state.rollouts.get(&rollout.name).await?;
    Ok((StatusCode::CREATED, Json(view_info(&state, view))))
}

#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts",
    responses((status = 200, body = dto::RolloutList)), security(("bearer" = [])))]
pub async fn list_rollouts(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<dto::RolloutList>, ApiError> {
    caller.require(Role::Viewer)?;
    let items = state
        .rollouts
        .list()
        .await?
        .into_iter()
        .map(|rollout| rollout_info(rollout, Vec::new()))
        .collect();
    Ok(Json(dto::RolloutList { items }))
}

#[utoipa::path(get, path = "/api/v1/rollouts/{name}", tag = "rollouts",
    params(("name" = String, Path)),
    responses((status = 200, body = dto::RolloutInfo), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_rollout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<dto::RolloutInfo>, ApiError> {
    caller.require(Role::Viewer)?;
    let name = rollout_name(&name)?;
    let view = state.rollouts.get(&name).await?;
    Ok(Json(view_info(&state, view)))
}

#[utoipa::path(post, path = "/api/v1/rollouts/{name}/{command}", tag = "rollouts",
    params(("name" = String, Path), ("command" = String, Path,
        description = "pause, resume, promote, abort or rollback")),
    responses((status = 200, body = dto::RolloutInfo), (status = 404, body = dto::ErrorBody),
        (status = 409, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn command_rollout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((name, command)): Path<(String, String)>,
) -> Result<Json<dto::RolloutInfo>, ApiError> {
    caller.require(Role::Operator)?;
    let command: RolloutCommand = command
        .parse()
        .map_err(|error: String| ApiError::not_found(error))?;
    let name = rollout_name(&name)?;
    state
        .rollouts
        .command(&caller.subject, &name, command)
        .await?;
    let view = state.rollouts.get(&name).await?;
    Ok(Json(view_info(&state, view)))
}

#[utoipa::path(delete, path = "/api/v1/rollouts/{name}", tag = "rollouts",
    params(("name" = String, Path), dto::DeleteRolloutQuery),
    responses((status = 200, body = dto::DeletedRolloutInfo), (status = 404, body = dto::ErrorBody),
        (status = 409, body = dto::ErrorBody, description = "the rollout has not ended")),
    security(("bearer" = [])))]
pub async fn delete_rollout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<dto::DeleteRolloutQuery>,
) -> Result<Json<dto::DeletedRolloutInfo>, ApiError> {
    caller.require(Role::Operator)?;
    let name = rollout_name(&name)?;
    let deleted = state
        .rollouts
        .delete(&caller.subject, &name, query.release_pins)
        .await?;
    Ok(Json(dto::DeletedRolloutInfo {
        name: name.to_string(),
        nodes: deleted.nodes.iter().map(ToString::to_string).collect(),
        released: query.release_pins,
        nodes_changed: u32::try_from(deleted.changed.len()).unwrap_or(u32::MAX),
    }))
}

#[utoipa::path(get, path = "/api/v1/events", tag = "rollouts", params(dto::EventsQuery),
    responses((status = 200, body = dto::EventList), (status = 404, body = dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<dto::EventsQuery>,
) -> Result<Json<dto::EventList>, ApiError> {
    caller.require(Role::Viewer)?;
    let rollout = query.rollout.as_deref().map(rollout_name).transpose()?;
    let events = state
        .rollouts
        .events(
            rollout.as_ref(),
            query.after.unwrap_or(0),
            query.limit.unwrap_or(MAX_EVENTS),
        )
        .await?;
    Ok(Json(dto::EventList {
        items: events.into_iter().map(event_info).collect(),
    }))
}
