//! Where a model runs: `--device auto|cpu|gpu[:N]`, the GPU adapters this machine has,
//! and what an engine ended up on (reported by the agent in its inventory).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The device a model is asked to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The CPU kernels.
    #[default]
    Cpu,
    /// A hardware GPU adapter when there is one and the model loads on it, else the CPU.
    /// Software adapters (Mesa's llvmpipe) are skipped: the CPU kernels are faster on the
    /// same cores. `FLOTILLA_DEVICE_ALLOW_SOFTWARE=1` lets `auto` take them (CI has no
    /// other adapter to prove `auto` with).
    Auto,
    /// A GPU adapter, by its index in [`gpu_adapters`] (the first one when absent); an
    /// error when there is none or the model cannot load on it.
    Gpu(Option<usize>),
}

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(text: &str) -> Result<DeviceRequest, String> {
        match text {
            "cpu" => Ok(DeviceRequest::Cpu),
            "auto" => Ok(DeviceRequest::Auto),
            "gpu" => Ok(DeviceRequest::Gpu(None)),
            other => other
                .strip_prefix("gpu:")
                .and_then(|index| index.parse().ok())
                .map(|index| DeviceRequest::Gpu(Some(index)))
                .ok_or_else(|| {
                    format!("unknown device {other:?} (expected auto, cpu, gpu or gpu:N)")
                }),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Cpu => formatter.write_str("cpu"),
            DeviceRequest::Auto => formatter.write_str("auto"),
            DeviceRequest::Gpu(None) => formatter.write_str("gpu"),
            DeviceRequest::Gpu(Some(index)) => write!(formatter, "gpu:{index}"),
        }
    }
}

/// A GPU adapter as wgpu reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuAdapter {
    /// Position in [`gpu_adapters`], what `gpu:N` names.
    pub index: usize,
    pub name: String,
    /// The graphics API: "vulkan", "metal", "dx12", "gl".
    pub backend: String,
    /// "discrete", "integrated", "virtual", "cpu" (a software rasterizer) or "other".
    pub kind: String,
    /// The largest buffer the adapter allows, in bytes (wgpu reports no memory size).
    pub max_buffer_bytes: u64,
}

impl GpuAdapter {
    /// Whether this is real hardware rather than a software implementation.
    pub fn is_hardware(&self) -> bool {
        matches!(self.kind.as_str(), "discrete" | "integrated" | "virtual")
    }
}

/// Where an engine runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// "cpu" or "gpu".
    pub kind: String,
    /// The CPU kernels' instruction set, or the adapter's name and API.
    pub name: String,
    /// Why `auto` did not take a GPU it saw, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Placement {
    pub fn is_gpu(&self) -> bool {
        self.kind == "gpu"
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({})", self.kind, self.name)
    }
}

/// The GPU adapters wgpu finds (none in a build without the `gpu` feature).
pub fn gpu_adapters() -> Vec<GpuAdapter> {
    #[cfg(feature = "gpu")]
    {
        crate::device::wgpu_adapters()
    }
    #[cfg(not(feature = "gpu"))]
    {
        Vec::new()
    }
}

/// Whether `auto` may take software adapters (see [`DeviceRequest::Auto`]).
pub(crate) fn auto_allows_software() -> bool {
    std::env::var("FLOTILLA_DEVICE_ALLOW_SOFTWARE").is_ok_and(|value| value == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_requests_parse_and_print_back() {
        for text in ["cpu", "auto", "gpu", "gpu:0", "gpu:3"] {
            let request: DeviceRequest = text.parse().expect("valid");
            assert_eq!(request.to_string(), text);
        }
        for bad in ["", "GPU", "gpu:", "gpu:x", "gpu:-1", "tpu"] {
            let error = bad.parse::<DeviceRequest>().expect_err(bad);
            assert!(
                error.contains("expected auto, cpu, gpu or gpu:N"),
                "{error}"
            );
        }
    }
}
