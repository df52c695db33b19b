//! Domain types → API bodies, and API inputs → validated domain types.

use flotilla_api_types as dto;

use crate::domain::{
    Artifact, Model, ModelName, ModelVersion, Node, NodeName, Page, PageRequest, PromptName,
    PromptSummary, SystemPrompt,
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

pub fn node_name(raw: &str) -> Result<NodeName, ApiError> {
    raw.parse()
        .map_err(|e: crate::domain::InvalidName| ApiError::invalid_argument(e.to_string()))
}

pub fn node_info(node: Node) -> dto::NodeInfo {
    let inventory = node.inventory;
    dto::NodeInfo {
        name: node.name.to_string(),
        status: node.status.as_str().to_owned(),
        labels: node.labels.into(),
        agent_version: node.agent_version,
        inventory: dto::NodeInventoryInfo {
            cpu_model: inventory.cpu_model,
            cpu_cores: inventory.cpu_cores,
            memory_total_bytes: inventory.memory_total_bytes,
            disk_total_bytes: inventory.disk_total_bytes,
            os: inventory.os,
            gpus: inventory
                .gpus
                .into_iter()
                .map(|gpu| dto::NodeGpuInfo {
                    index: gpu.index,
                    name: gpu.name,
                    memory_total_bytes: gpu.memory_total_bytes,
                    driver_version: gpu.driver_version,
                })
                .collect(),
        },
        enrolled_at: node.enrolled_at,
        ready: false,
        last_heartbeat_at: None,
        desired_generation: 0,
        assignment: None,
        observed: None,
        health: None,
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
