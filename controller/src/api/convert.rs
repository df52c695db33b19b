//! Domain types → API bodies, and API inputs → validated domain types.

use flotilla_api_types as dto;

use crate::domain::{
    Artifact, AssignedPolicy, Assignment, AssignmentTarget, DesiredAssignment, EscalationPolicy,
    Model, ModelName, ModelVersion, Node, NodeDesired, NodeName, ObservedState, Page, PageRequest,
    PolicyName, PolicyRef, PolicySummary, PromptName, PromptPolicy, PromptSummary, Servability,
    SystemPrompt,
};
use crate::error::ApiError;
use crate::registry::VersionWithArtifacts;

pub fn model_name(raw: &str) -> Result<ModelName, ApiError> {
    raw.parse()
        .map_err(|e: crate::domain::InvalidName| ApiError::invalid_argument(e.to_string()))
}

pub fn prompt_name(raw: &str) -> Result<PromptName, ApiError> {
    raw.parse()
        .map_err(|e: crate::domain::InvalidName| ApiError::invalid_argument(e.to_string()))
}

pub fn policy_name(raw: &str) -> Result<PolicyName, ApiError> {
    raw.parse()
        .map_err(|e: crate::domain::InvalidName| ApiError::invalid_argument(e.to_string()))
}

/// `NAME@N` (or `NAME`: the latest) of an escalation policy.
pub fn policy_ref(raw: Option<&str>) -> Result<Option<PolicyRef>, ApiError> {
    raw.map(|raw| raw.parse::<PolicyRef>().map_err(ApiError::invalid_argument))
        .transpose()
}

pub fn node_name(raw: &str) -> Result<NodeName, ApiError> {
    raw.parse()
        .map_err(|e: crate::domain::InvalidName| ApiError::invalid_argument(e.to_string()))
}

/// Aliases an assignment or rollout gives its model: model-style names,
/// at most [`crate::domain::MAX_ALIASES`], duplicates dropped.
pub fn aliases(raw: &[String]) -> Result<Vec<ModelName>, ApiError> {
    let max = crate::domain::MAX_ALIASES;
    if raw.len() > max {
        return Err(ApiError::invalid_argument(format!("at most {max} aliases")));
    }
    let mut names: Vec<ModelName> = Vec::with_capacity(raw.len());
    for alias in raw {
        let name: ModelName = alias.parse().map_err(|_| {
            ApiError::invalid_argument(format!(
                "invalid alias {:?}: use a model-style name",
                alias.chars().take(80).collect::<String>()
            ))
        })?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `prepend` (the default when absent), `replace` or `forbid`.
pub fn prompt_policy(raw: Option<&str>) -> Result<PromptPolicy, ApiError> {
    raw.map_or(Ok(PromptPolicy::default()), |raw| {
        raw.parse().map_err(ApiError::invalid_argument)
    })
}

/// A node's REST view; `ready` comes from the fleet (streams and
/// heartbeats), which the node row alone cannot tell.
pub fn node_info(node: Node, ready: bool) -> dto::NodeInfo {
    dto::NodeInfo {
        name: node.name.to_string(),
        status: node.status.as_str().to_owned(),
        labels: node.labels.into(),
        agent_version: node.agent_version,
        // The fleet contract's record, shown as it is.
        inventory: node.inventory,
        enrolled_at: node.enrolled_at,
        ready,
        last_heartbeat_at: node.last_heartbeat_at,
        desired_generation: node.desired.generation,
        assignment: node.desired.assignment.map(assignment_info),
        observed: node.observed.map(observed_info),
        // The fleet contract's record, shown as it is.
        health: node.health,
    }
}

fn prompt_label(assignment: &DesiredAssignment) -> Option<String> {
    assignment
        .prompt
        .as_ref()
        .map(|prompt| format!("{}@{}", prompt.name, prompt.version))
}

/// `name@version` of an assignment's escalation policy.
pub fn policy_label(assignment: &DesiredAssignment) -> Option<String> {
    assignment
        .escalation_policy
        .as_ref()
        .map(AssignedPolicy::to_string)
}

/// What a policy lets a node do, for views: the upstream and the
/// credential's reference (where the node finds the key), never a key.
fn egress_label(policy: &AssignedPolicy) -> String {
    match policy.spec.upstream() {
        None => "forbidden".to_owned(),
        Some(upstream) => format!(
            "allowed: {} at {} (key {})",
            upstream.model, upstream.base_url, upstream.credential
        ),
    }
}

pub fn assignment_info(assignment: DesiredAssignment) -> dto::AssignmentInfo {
    dto::AssignmentInfo {
        prompt: prompt_label(&assignment),
        policy: policy_label(&assignment),
        egress: assignment.escalation_policy.as_ref().map(egress_label),
        model: assignment.model,
        version: assignment.version,
        quantization: assignment.quantization,
        digest: assignment.digest,
        size_bytes: assignment.size_bytes,
        prompt_policy: assignment.prompt_policy.as_str().to_owned(),
        aliases: assignment.aliases,
        generation: assignment.assignment_generation,
        target: assignment.target,
    }
}

pub fn observed_info(observed: ObservedState) -> dto::ObservedInfo {
    dto::ObservedInfo {
        generation: observed.generation,
        phase: observed.phase.as_str().to_owned(),
        digest: observed.digest,
        bytes_done: observed.bytes_done,
        bytes_total: observed.bytes_total,
        reason: observed.reason,
        serving_digest: observed.serving_digest,
    }
}

pub fn assignment_record(assignment: Assignment) -> dto::AssignmentRecord {
    let (node, selector) = match assignment.target {
        AssignmentTarget::Node(name) => (Some(name.to_string()), None),
        AssignmentTarget::Selector(labels) => (None, Some(labels.into())),
    };
    let desired = assignment.desired;
    dto::AssignmentRecord {
        generation: assignment.generation,
        node,
        selector,
        prompt: prompt_label(&desired),
        policy: policy_label(&desired),
        model: desired.model,
        version: desired.version,
        quantization: desired.quantization,
        digest: desired.digest,
        size_bytes: desired.size_bytes,
        prompt_policy: desired.prompt_policy.as_str().to_owned(),
        aliases: desired.aliases,
        created_by: assignment.created_by,
        created_at: assignment.created_at,
    }
}

pub fn assignment_change(
    assignment: Option<Assignment>,
    changed: Vec<NodeDesired>,
) -> dto::AssignmentChange {
    dto::AssignmentChange {
        assignment: assignment.map(assignment_record),
        nodes_changed: changed
            .into_iter()
            .map(|change| dto::NodeGeneration {
                node: change.name.to_string(),
                generation: change.desired.generation,
            })
            .collect(),
    }
}

pub fn semver_version(raw: &str) -> Result<semver::Version, ApiError> {
    raw.parse()
        .map_err(|e| ApiError::invalid_argument(format!("invalid semantic version {raw:?}: {e}")))
}

pub fn page_request(query: dto::PageQuery) -> PageRequest {
    PageRequest::new(query.limit, query.after)
}

pub fn page<T, U>(page: Page<T>, f: impl FnMut(T) -> U) -> dto::Page<U> {
    let page = page.map(f);
    dto::Page {
        items: page.items,
        next_cursor: page.next_cursor,
    }
}

pub fn model_info(model: Model) -> dto::ModelInfo {
    dto::ModelInfo {
        name: model.name.to_string(),
        description: model.description,
        created_at: model.created_at,
    }
}

pub fn artifact_info(artifact: Artifact) -> dto::ArtifactInfo {
    dto::ArtifactInfo {
        model: artifact.model.to_string(),
        version: artifact.version.to_string(),
        digest: artifact.digest.to_hex(),
        size_bytes: artifact.size_bytes,
        format: artifact.format.as_str().to_owned(),
        quantization: artifact.quantization.to_string(),
        architecture: artifact.architecture,
        parameter_count: artifact.parameter_count,
        context_length: artifact.context_length,
        memory_estimate_bytes: artifact.memory_estimate_bytes,
        servable: match &artifact.servability {
            Servability::Unchecked => None,
            Servability::Servable { .. } => Some(true),
            Servability::Unservable { .. } => Some(false),
        },
        unservable_reason: artifact.servability.unservable_reason().map(str::to_owned),
        checked_by: artifact.servability.checked_by().map(str::to_owned),
        created_at: artifact.created_at,
    }
}

pub fn version_info(version: ModelVersion, artifacts: Vec<Artifact>) -> dto::VersionInfo {
    dto::VersionInfo {
        model: version.model.to_string(),
        version: version.version.to_string(),
        state: version.state.to_string(),
        notes: version.notes,
        created_at: version.created_at,
        published_at: version.published_at,
        artifacts: artifacts.into_iter().map(artifact_info).collect(),
    }
}

pub fn version_with_artifacts(found: VersionWithArtifacts) -> dto::VersionInfo {
    version_info(found.version, found.artifacts)
}

pub fn prompt_info(prompt: SystemPrompt) -> dto::PromptInfo {
    dto::PromptInfo {
        name: prompt.name.to_string(),
        version: prompt.version,
        text: prompt.text,
        chat_template: prompt.chat_template,
        created_at: prompt.created_at,
    }
}

pub fn prompt_summary_info(summary: PromptSummary) -> dto::PromptSummaryInfo {
    dto::PromptSummaryInfo {
        name: summary.name.to_string(),
        latest_version: summary.latest_version,
        updated_at: summary.updated_at,
    }
}

pub fn policy_info(policy: EscalationPolicy) -> dto::PolicyInfo {
    dto::PolicyInfo {
        name: policy.name.to_string(),
        version: policy.version,
        spec: dto::PolicyDocument::from(&policy.spec),
        created_at: policy.created_at,
    }
}

pub fn policy_summary_info(summary: PolicySummary) -> dto::PolicySummaryInfo {
    dto::PolicySummaryInfo {
        name: summary.name.to_string(),
        latest_version: summary.latest_version,
        updated_at: summary.updated_at,
    }
}
