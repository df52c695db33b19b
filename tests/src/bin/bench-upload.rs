//! Artifact upload throughput against plain disk copy, in one run.
//!
//! Generates a valid GGUF file of `FLOTILLA_BENCH_UPLOAD_MB` MiB (default
//! 1024) of incompressible tensor data, then measures on the same disk:
//! `std::fs::copy` of the file (the peer figure), and `flotilla model push`
//! of it to a real `flotilla-controller` process (SQLite, local objects),
//! which hashes, parses and stores it. Reports MiB/s, the ratio, and the
//! controller's peak RSS before and after (memory must stay flat, however
//! large the file). Prints one JSON object on stdout.
//!
//! Run: `cargo build --release --bins && target/release/bench-upload`
//! (the binaries of the same profile are used: release with release).

use std::io::Write;
use std::time::Instant;

use flotilla_tests::{ControllerProcess, flotilla};

fn write_gguf_of_size(path: &std::path::Path, mib: u64) -> anyhow::Result<()> {
    // A minimal GGUF v3 header (architecture + one F32 tensor), then data.
    let elements = mib * 1024 * 1024 / 4;
    let mut header = Vec::new();
    header.extend_from_slice(b"GGUF");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&1u64.to_le_bytes()); // tensors
    header.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    let key = b"general.architecture";
    header.extend_from_slice(&(key.len() as u64).to_le_bytes());
    header.extend_from_slice(key);
    header.extend_from_slice(&8u32.to_le_bytes()); // string
    let value = b"llama";
    header.extend_from_slice(&(value.len() as u64).to_le_bytes());
    header.extend_from_slice(value);
    let name = b"weight";
    header.extend_from_slice(&(name.len() as u64).to_le_bytes());
    header.extend_from_slice(name);
    header.extend_from_slice(&2u32.to_le_bytes()); // dims
    header.extend_from_slice(&(elements / 1024).to_le_bytes());
    header.extend_from_slice(&1024u64.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // F32
    header.extend_from_slice(&0u64.to_le_bytes()); // offset
    while header.len() % 32 != 0 {
        header.push(0);
    }
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    file.write_all(&header)?;
    // xorshift: incompressible and fast to generate.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block)?;
    }
    file.flush()?;
    file.get_ref().sync_all()?;
    Ok(())
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::var("FLOTILLA_BENCH_UPLOAD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let work = tempfile::tempdir_in(flotilla_tests::workspace_root().join("target"))?;
    let source = work.path().join("big.gguf");
    write_gguf_of_size(&source, mib)?;
    let size = std::fs::metadata(&source)?.len();

    let copy_started = Instant::now();
    let copy_target = work.path().join("copy.gguf");
    std::fs::copy(&source, &copy_target)?;
    std::fs::File::open(&copy_target)?.sync_all()?;
    let copy_seconds = copy_started.elapsed().as_secs_f64();
    std::fs::remove_file(&copy_target)?;

    let data = work.path().join("controller");
    let controller = ControllerProcess::start(&data, &[]).await?;
    let pid = controller.process.id();
    let rss_before = peak_rss_kib(pid);
    let token = controller.admin_token()?;
    let source_arg = source.to_string_lossy().into_owned();
    let push_started = Instant::now();
    let output = flotilla(
        &controller.rest_url,
        &token,
        work.path(),
        &[
            "model",
            "push",
            &source_arg,
            "--name",
            "bench",
            "--version",
            "1.0.0",
            "--output",
            "json",
        ],
    )?;
    let push_seconds = push_started.elapsed().as_secs_f64();
    anyhow::ensure!(
        output.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rss_after = peak_rss_kib(pid);

    let mib_per_s = |seconds: f64| size as f64 / (1024.0 * 1024.0) / seconds;
    let summary = serde_json::json!({
        "bench": "artifact_upload",
        "file_mib": size as f64 / (1024.0 * 1024.0),
        "disk_copy_mib_per_s": mib_per_s(copy_seconds),
        "push_mib_per_s": mib_per_s(push_seconds),
        "push_vs_disk_copy_ratio": copy_seconds / push_seconds,
        "push_seconds_including_client_hash": push_seconds,
        "controller_peak_rss_mib_before": rss_before.map(|k| k as f64 / 1024.0),
        "controller_peak_rss_mib_after": rss_after.map(|k| k as f64 / 1024.0),
    });
    println!("{summary}");
    Ok(())
}
