//! Health probes on whatever box runs the tests (CI has no GPU and no NVML).

use flotilla_agent::health::HealthProbe;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_and_samples_are_sane_without_a_gpu() -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let probe = tokio::task::spawn_blocking({
        let path = data_dir.path().join("not-created-yet");
        move || HealthProbe::new(&path)
    })
    .await?;

    let inventory = probe.inventory().await;
    assert!(inventory.cpu_logical_cores > 0, "{inventory:?}");
    assert!(inventory.memory_total_bytes > 0, "{inventory:?}");
    assert!(!inventory.cpu_arch.is_empty(), "{inventory:?}");
    if let Some(disk) = &inventory.data_disk {
        assert!(
            disk.total_bytes > 0 && disk.available_bytes <= disk.total_bytes,
            "{disk:?}"
        );
    }
    for gpu in &inventory.gpus {
        assert!(gpu.memory_total_bytes > 0, "{gpu:?}");
    }

    for _ in 0..2 {
        let sample = probe.sample().await;
        assert!(sample.memory_total_bytes > 0, "{sample:?}");
        assert_eq!(sample.memory_total_bytes, inventory.memory_total_bytes);
        assert!(
            sample.memory_used_bytes <= sample.memory_total_bytes,
            "{sample:?}"
        );
        assert!(
            (0.0..=100.0).contains(&sample.cpu_utilisation_percent),
            "{sample:?}"
        );
        if let Some(celsius) = sample.cpu_temperature_celsius {
            assert!((-40.0..150.0).contains(&celsius), "{sample:?}");
        }
        assert_eq!(sample.gpus.len(), inventory.gpus.len());
        for gpu in &sample.gpus {
            assert!(gpu.memory_used_bytes <= gpu.memory_total_bytes, "{gpu:?}");
        }
    }
    // The domain types are what the sync loop will convert; they serialise.
    let json = serde_json::to_value(&inventory)?;
    assert!(json.get("cpu_model").is_some());
    println!("{}", serde_json::to_string_pretty(&inventory)?);
    println!("{}", serde_json::to_string_pretty(&probe.sample().await)?);
    Ok(())
}
