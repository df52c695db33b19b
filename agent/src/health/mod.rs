//! Hardware inventory and health samples of the box the agent runs on.
//!
//! [`HealthProbe::inventory`] describes what the box has (sent once per
//! connection); [`HealthProbe::sample`] measures how it is doing (sent with
//! every heartbeat). Nothing is persisted: the probe keeps one `sysinfo`
//! `System`, the disk and sensor lists, and the NVML handle in memory, and
//! refreshes only the parts a sample reads. CPU utilisation is measured
//! between two samples, so the first one reports the time since the probe
//! was created.
//!
//! Refreshing reads `/proc` and `/sys` and NVML calls can take milliseconds,
//! so both calls run on the blocking pool.

mod gpu;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

use serde::{Deserialize, Serialize};
use sysinfo::{
    Components, CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System,
};

/// How the box is doing right now: the fleet contract's record, which the
/// heartbeat carries as it is.
pub use flotilla_contract::{GpuHealth, HealthSample, InferenceHealth};
pub use gpu::GpuInfo;

/// What the box has. Changes rarely (a GPU driver upgrade, a resized disk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: Option<String>,
    /// e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os: Option<String>,
    pub kernel_version: Option<String>,
    /// e.g. `x86_64`.
    pub cpu_arch: String,
    /// The brand string of the first CPU, e.g. `AMD EPYC 7B13`.
    pub cpu_model: String,
    pub cpu_logical_cores: usize,
    pub cpu_physical_cores: Option<usize>,
    pub memory_total_bytes: u64,
    /// The filesystem holding the agent's data directory (and its cache).
    pub data_disk: Option<DiskInfo>,
    pub gpus: Vec<GpuInfo>,
    /// The GPU adapters the engine can run on (`--device gpu:N`).
    #[serde(default)]
    pub adapters: Vec<flotilla_engine::GpuAdapter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub mount_point: PathBuf,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Measures the box. Clone it freely; clones share the probe's state.
#[derive(Clone)]
pub struct HealthProbe {
    state: Arc<Mutex<ProbeState>>,
}

struct ProbeState {
    data_dir: PathBuf,
    system: System,
    disks: Disks,
    /// Index into `disks` of the filesystem holding `data_dir`.
    data_disk: Option<usize>,
    components: Components,
    gpus: gpu::Gpus,
}

impl HealthProbe {
    /// Reads the static facts once and takes the CPU baseline. Blocking (it
    /// reads `/proc`, `/sys` and loads NVML): call it at start-up or from
    /// `spawn_blocking`.
    pub fn new(data_dir: &Path) -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let disks =
            Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage());
        let data_disk = disk_holding(&disks, data_dir);
        let components = Components::new_with_refreshed_list();
        Self {
            state: Arc::new(Mutex::new(ProbeState {
                data_dir: data_dir.to_owned(),
                system,
                disks,
                data_disk,
                components,
                gpus: gpu::Gpus::load(),
            })),
        }
    }

    /// What the box has.
    pub async fn inventory(&self) -> Inventory {
        let state = self.state.clone();
        match tokio::task::spawn_blocking(move || lock(&state).inventory()).await {
            Ok(inventory) => inventory,
            Err(error) => {
                tracing::warn!(%error, "hardware inventory failed");
                Inventory::default()
            }
        }
    }

    /// How the box is doing now.
    pub async fn sample(&self) -> HealthSample {
        let state = self.state.clone();
        match tokio::task::spawn_blocking(move || lock(&state).sample()).await {
            Ok(sample) => sample,
            Err(error) => {
                tracing::warn!(%error, "health sample failed");
                HealthSample::empty(OffsetDateTime::now_utc())
            }
        }
    }
}

fn lock(state: &Mutex<ProbeState>) -> std::sync::MutexGuard<'_, ProbeState> {
    // A panic inside a refresh leaves counters that are merely stale.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The engine's GPU adapters, listed once: listing starts a Vulkan (or
/// Metal, DX12) instance, and adapters come and go only with drivers.
fn compute_adapters() -> &'static [flotilla_engine::GpuAdapter] {
    static ADAPTERS: std::sync::OnceLock<Vec<flotilla_engine::GpuAdapter>> =
        std::sync::OnceLock::new();
    ADAPTERS.get_or_init(flotilla_engine::gpu_adapters)
}

impl ProbeState {
    fn inventory(&mut self) -> Inventory {
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        // Mounts may have changed since start-up (the data disk attached late).
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        self.data_disk = disk_holding(&self.disks, &self.data_dir);
        let data_disk = self
            .data_disk
            .and_then(|index| self.disks.list().get(index))
            .map(|disk| DiskInfo {
                mount_point: disk.mount_point().to_owned(),
                total_bytes: disk.total_space(),
                available_bytes: disk.available_space(),
            });
        Inventory {
            hostname: System::host_name(),
            os: System::long_os_version(),
            kernel_version: System::kernel_version(),
            cpu_arch: System::cpu_arch(),
            cpu_model: self
                .system
                .cpus()
                .first()
                .map(|cpu| cpu.brand().trim().to_owned())
                .unwrap_or_default(),
            cpu_logical_cores: self.system.cpus().len(),
            cpu_physical_cores: System::physical_core_count(),
            memory_total_bytes: self.system.total_memory(),
            data_disk,
            gpus: self.gpus.inventory(),
            adapters: compute_adapters().to_vec(),
        }
    }

    fn sample(&mut self) -> HealthSample {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let disk_available_bytes = self.data_disk.and_then(|index| {
            let disk = self.disks.list_mut().get_mut(index)?;
            disk.refresh_specifics(DiskRefreshKind::nothing().with_storage())
                .then(|| disk.available_space())
        });
        self.components.refresh(false);
        HealthSample {
            taken_at: OffsetDateTime::now_utc(),
            cpu_utilisation_percent: self.system.global_cpu_usage(),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            disk_available_bytes,
            cpu_temperature_celsius: cpu_temperature(&self.components),
            gpus: self.gpus.sample(),
            inference: None,
            state_write_error: None,
        }
    }
}

/// The disk whose mount point is the longest prefix of `path` (or of its
/// nearest existing ancestor, before the data directory is created).
fn disk_holding(disks: &Disks, path: &Path) -> Option<usize> {
    let resolved = path
        .ancestors()
        .find_map(|ancestor| ancestor.canonicalize().ok())?;
    disks
        .list()
        .iter()
        .enumerate()
        .filter(|(_, disk)| resolved.starts_with(disk.mount_point()))
        .max_by_key(|(_, disk)| disk.mount_point().as_os_str().len())
        .map(|(index, _)| index)
}

/// Sensor labels that name a CPU: Intel `coretemp` (`Package id 0`,
/// `Core 0`), AMD `k10temp` (`Tctl`, `Tdie`), and generic `cpu` zones.
fn cpu_temperature(components: &Components) -> Option<f32> {
    const CPU_LABELS: [&str; 6] = ["cpu", "package", "core", "tctl", "tdie", "k10temp"];
    components
        .list()
        .iter()
        .filter(|component| {
            let label = component.label().to_ascii_lowercase();
            CPU_LABELS.iter().any(|hint| label.contains(hint))
        })
        .filter_map(|component| component.temperature())
        .filter(|celsius| celsius.is_finite())
        .reduce(f32::max)
}
