//! What a node's hardware is, as its agent reports it at enrolment and on
//! every reconnect. The agent knows more about its box (its own
//! `health::Inventory`); this is what it tells the controller.

use flotilla_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};

/// A node's hardware. The controller stores it as JSON: placement reads it
/// whole, and new fields must not need migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = NodeInventoryInfo))]
pub struct NodeInventory {
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub disk_total_bytes: u64,
    pub os: String,
    pub gpus: Vec<NodeGpu>,
    /// The GPU adapters the engine can run on, as `--device gpu:N` numbers
    /// them (none from agents older than the field).
    #[serde(default)]
    pub adapters: Vec<NodeAdapter>,
}

/// A GPU adapter the agent's engine sees (wgpu's view: no memory size).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = NodeAdapterInfo))]
pub struct NodeAdapter {
    pub index: u32,
    pub name: String,
    /// "vulkan", "metal", "dx12", "gl".
    pub backend: String,
    /// "discrete", "integrated", "virtual", "cpu" (software) or "other".
    pub kind: String,
    pub max_buffer_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = NodeGpuInfo))]
pub struct NodeGpu {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub driver_version: String,
}

impl From<pb::Inventory> for NodeInventory {
    fn from(inventory: pb::Inventory) -> Self {
        Self {
            cpu_model: inventory.cpu_model,
            cpu_cores: inventory.cpu_cores,
            memory_total_bytes: inventory.memory_total_bytes,
            disk_total_bytes: inventory.disk_total_bytes,
            os: inventory.os,
            gpus: inventory.gpus.into_iter().map(NodeGpu::from).collect(),
            adapters: inventory
                .adapters
                .into_iter()
                .map(|adapter| NodeAdapter {
                    index: adapter.index,
                    name: adapter.name,
                    backend: adapter.backend,
                    kind: adapter.kind,
                    max_buffer_bytes: adapter.max_buffer_bytes,
                })
                .collect(),
        }
    }
}

impl From<pb::Gpu> for NodeGpu {
    fn from(gpu: pb::Gpu) -> Self {
        Self {
            index: gpu.index,
            name: gpu.name,
            memory_total_bytes: gpu.memory_total_bytes,
            driver_version: gpu.driver_version,
        }
    }
}
