//! Choosing and starting the device a model runs on (`DeviceRequest`), and listing the
//! GPU adapters (wgpu's, feature `gpu`).
//!
//! burn starts a wgpu device lazily and panics when it cannot; the first operation on a
//! new device runs under `catch_unwind` here, so an absent or broken adapter becomes an
//! [`EngineError::Device`] (and `auto` falls back to the CPU) instead of a crash.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{Device, Tensor};

use super::DeviceModel;
use crate::EngineError;
use crate::model::LlamaModel;
use crate::placement::{DeviceRequest, Placement};

/// Runs `work` on a device, turning a panic inside burn or wgpu into an error.
pub(crate) fn guarded<T>(what: &str, work: impl FnOnce() -> T) -> Result<T, EngineError> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        EngineError::Device(format!("{what}: {message}"))
    })
}

/// Loads `model` where `request` says; `cpu_name` names the CPU kernels in the placement.
pub(crate) fn place(
    model: &LlamaModel,
    request: DeviceRequest,
    cpu_name: &str,
) -> Result<(Option<DeviceModel>, Placement), EngineError> {
    let cpu = |note: Option<String>| Placement {
        kind: "cpu".into(),
        name: cpu_name.to_string(),
        note,
    };
    match request {
        DeviceRequest::Cpu => Ok((None, cpu(None))),
        DeviceRequest::Gpu(index) => {
            let model = upload_to_adapter(model, index)?;
            let placement = gpu_placement(&model);
            Ok((Some(model), placement))
        }
        DeviceRequest::Auto => {
            let adapters = crate::placement::gpu_adapters();
            let allow_software = crate::placement::auto_allows_software();
            let Some(adapter) = adapters
                .iter()
                .find(|adapter| adapter.is_hardware() || allow_software)
            else {
                let note = (!adapters.is_empty()).then(|| {
                    let names: Vec<&str> = adapters.iter().map(|a| a.name.as_str()).collect();
                    format!("only software GPU adapters ({})", names.join(", "))
                });
                return Ok((None, cpu(note)));
            };
            match upload_to_adapter(model, Some(adapter.index)) {
                Ok(model) => {
                    let placement = gpu_placement(&model);
                    Ok((Some(model), placement))
                }
                Err(error) => Ok((None, cpu(Some(format!("{}: {error}", adapter.name))))),
            }
        }
    }
}

fn gpu_placement(model: &DeviceModel) -> Placement {
    Placement {
        kind: "gpu".into(),
        name: model.description().to_string(),
        note: None,
    }
}

/// Uploads `model` to a burn device and checks it computes (tests use the `flex` CPU
/// backend this way, without any GPU).
pub(crate) fn upload(
    model: &LlamaModel,
    device: Device,
    description: String,
) -> Result<DeviceModel, EngineError> {
    guarded("starting the device", || {
        let probe = Tensor::<2>::ones([2, 2], &device);
        probe.clone().matmul(probe).into_data()
    })?;
    guarded("uploading the weights", || {
        DeviceModel::upload(model, device, description)
    })?
}

#[cfg(feature = "gpu")]
fn upload_to_adapter(model: &LlamaModel, index: Option<usize>) -> Result<DeviceModel, EngineError> {
    let adapters = wgpu_adapters();
    let adapter = match index {
        Some(index) => adapters.get(index),
        None => adapters.first(),
    }
    .ok_or_else(|| {
        let which = index.map_or_else(|| "a GPU adapter".to_string(), |i| format!("GPU adapter {i}"));
        EngineError::Device(format!(
            "{which} was asked for, but wgpu finds {} (is a Vulkan, Metal or DX12 driver installed? `vulkaninfo --summary` lists Vulkan's)",
            match adapters.len() {
                0 => "none".to_string(),
                count => format!("only {count}"),
            }
        ))
    })?;
    let device = Device::wgpu(wgpu_kind(&adapters, adapter.index));
    let description = format!("{} {}", adapter.backend, adapter.name);
    upload(model, device, description)
}

#[cfg(not(feature = "gpu"))]
fn upload_to_adapter(_: &LlamaModel, _: Option<usize>) -> Result<DeviceModel, EngineError> {
    Err(EngineError::Device(
        "this build has no GPU support (built without the engine's `gpu` feature)".into(),
    ))
}

/// burn names a wgpu adapter by its type and its index among adapters of that type, in
/// wgpu's enumeration order.
#[cfg(feature = "gpu")]
fn wgpu_kind(adapters: &[crate::placement::GpuAdapter], index: usize) -> burn::tensor::DeviceKind {
    use burn::tensor::DeviceKind;
    let kind = adapters[index].kind.as_str();
    let rank = adapters[..index].iter().filter(|a| a.kind == kind).count();
    match kind {
        "discrete" => DeviceKind::DiscreteGpu(rank),
        "integrated" => DeviceKind::IntegratedGpu(rank),
        "virtual" => DeviceKind::VirtualGpu(rank),
        "cpu" => DeviceKind::Cpu,
        _ => DeviceKind::DefaultDevice,
    }
}

/// Every adapter wgpu finds, on every backend it was built with.
#[cfg(feature = "gpu")]
pub(crate) fn wgpu_adapters() -> Vec<crate::placement::GpuAdapter> {
    use burn::tensor::wgpu::wgpu;
    let listed = guarded("listing GPU adapters", || {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .into_iter()
            .enumerate()
            .map(|(index, adapter)| {
                let info = adapter.get_info();
                crate::placement::GpuAdapter {
                    index,
                    name: info.name,
                    backend: info.backend.to_str().to_string(),
                    kind: match info.device_type {
                        wgpu::DeviceType::DiscreteGpu => "discrete",
                        wgpu::DeviceType::IntegratedGpu => "integrated",
                        wgpu::DeviceType::VirtualGpu => "virtual",
                        wgpu::DeviceType::Cpu => "cpu",
                        wgpu::DeviceType::Other => "other",
                    }
                    .to_string(),
                    max_buffer_bytes: adapter.limits().max_buffer_size,
                }
            })
            .collect()
    });
    listed.unwrap_or_default()
}
