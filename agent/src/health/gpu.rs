//! NVIDIA GPUs through NVML. `libnvidia-ml` is loaded at run time, so the
//! agent builds and runs on boxes without the driver: there the GPU lists
//! are empty. Only the NVML handle lives in memory; nothing is persisted.

use flotilla_contract::GpuHealth;
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub memory_total_bytes: u64,
    pub driver_version: Option<String>,
}

pub(crate) struct Gpus {
    nvml: Option<Nvml>,
}

impl Gpus {
    /// Loads NVML once. Its absence is normal (no NVIDIA driver) and logged
    /// once, at debug.
    pub(crate) fn load() -> Self {
        match Nvml::init() {
            Ok(nvml) => Self { nvml: Some(nvml) },
            Err(error) => {
                tracing::debug!(%error, "nvml is not available; reporting no gpus");
                Self { nvml: None }
            }
        }
    }

    pub(crate) fn inventory(&self) -> Vec<GpuInfo> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let driver_version = nvml.sys_driver_version().ok();
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = nvml
                    .device_by_index(index)
                    .inspect_err(|error| tracing::debug!(index, %error, "cannot open gpu"))
                    .ok()?;
                Some(GpuInfo {
                    index,
                    name: device
                        .name()
                        .unwrap_or_else(|_| "unknown NVIDIA GPU".to_owned()),
                    uuid: device.uuid().ok(),
                    memory_total_bytes: device
                        .memory_info()
                        .map(|memory| memory.total)
                        .unwrap_or(0),
                    driver_version: driver_version.clone(),
                })
            })
            .collect()
    }

    pub(crate) fn sample(&self) -> Vec<GpuHealth> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let memory = device.memory_info().ok();
                let throttle_reasons = device
                    .current_throttle_reasons()
                    // `GPU_IDLE` is left out: an idle GPU is not throttled
                    // in any sense an operator cares about.
                    .map(|reasons| {
                        reasons
                            .iter_names()
                            .map(|(name, _)| name)
                            .filter(|name| !matches!(*name, "GPU_IDLE" | "NONE"))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                Some(GpuHealth {
                    index,
                    memory_used_bytes: memory.as_ref().map(|memory| memory.used).unwrap_or(0),
                    memory_total_bytes: memory.as_ref().map(|memory| memory.total).unwrap_or(0),
                    utilisation_percent: device.utilization_rates().ok().map(|rates| rates.gpu),
                    temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
                    power_draw_milliwatts: device.power_usage().ok(),
                    power_limit_milliwatts: device.enforced_power_limit().ok(),
                    throttle_reasons,
                })
            })
            .collect()
    }
}
