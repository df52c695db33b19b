//! `flotilla-engine bench`: prompt and decode throughput, time to first token and peak
//! memory, and — in the same run, with the same prompt tokens and thread count — the same
//! figures for llama.cpp when its Python binding or a `llama-bench` binary is available.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use flotilla_engine::sampling::argmax;
use flotilla_engine::{Engine, EngineOptions, SequenceInput};
use serde_json::{Value, json};

const PEER_SCRIPT: &str = include_str!("../tests/reference/bench_llama_cpp.py");

const PROMPT_TEXT: &str = "The history of computing is a story of people and ideas. Early mechanical \
calculators gave way to electronic machines, and programming languages made them useful to many. ";

#[derive(Args)]
pub struct BenchArgs {
    model: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Python with llama-cpp-python for the peer run (default: $FLOTILLA_PYTHON, else
    /// ./.venv/bin/python when present).
    #[arg(long)]
    peer_python: Option<PathBuf>,
    /// A `llama-bench` binary to use as the peer instead of Python.
    #[arg(long, env = "FLOTILLA_LLAMA_BENCH")]
    peer_llama_bench: Option<PathBuf>,
    /// Skip the peer run.
    #[arg(long)]
    no_peer: bool,
}

/// A `/proc/self/status` memory figure (`VmHWM:` peak, `VmRSS:` current) in MiB.
fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// How many tensors of each ggml type the file holds (a "Q4_K_M" is a mix).
fn weight_types(engine: &Engine) -> Value {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for tensor in &engine.model().file().header().tensors {
        *counts.entry(tensor.ggml_type.to_string()).or_default() += 1;
    }
    json!(counts)
}

fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg").ok().map(|text| {
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

pub fn run(arguments: BenchArgs) -> anyhow::Result<()> {
    if arguments.prompt_tokens == 0 || arguments.gen_tokens == 0 {
        bail!("--prompt-tokens and --gen-tokens must be at least 1");
    }
    let engine = Engine::load(
        &arguments.model,
        EngineOptions {
            threads: Some(arguments.threads),
        },
    )
    .with_context(|| format!("loading {}", arguments.model.display()))?;
    let mut tokens = Vec::new();
    while tokens.len() < arguments.prompt_tokens {
        tokens.extend(engine.tokenizer().encode(PROMPT_TEXT, false, Some(false)));
    }
    tokens.truncate(arguments.prompt_tokens);

    // Warm-up: page the mapped weights in and start the thread pool.
    let mut cache = engine.model().new_cache();
    engine.prefill(&mut cache, &tokens[..tokens.len().min(8)])?;

    let mut cache = engine.model().new_cache();
    let start = Instant::now();
    let logits = engine.prefill(&mut cache, &tokens)?;
    let mut token = argmax(&logits);
    let first = Instant::now();
    for _ in 0..arguments.gen_tokens {
        let mut batch = [SequenceInput {
            cache: &mut cache,
            tokens: &[token],
        }];
        let logits = engine.forward(&mut batch)?;
        token = argmax(logits.first().context("forward returned no logits")?);
    }
    let end = Instant::now();
    let prompt_seconds = (first - start).as_secs_f64();
    let decode_seconds = (end - first).as_secs_f64();
    let ours = json!({
        "prompt_tokens_per_s": tokens.len() as f64 / prompt_seconds,
        "decode_tokens_per_s": arguments.gen_tokens as f64 / decode_seconds,
        "time_to_first_token_ms": prompt_seconds * 1000.0,
        "peak_rss_mib": peak_rss_mib(),
        "rss_mib": status_mib("VmRSS:"),
        "weights_mib": engine.model().weight_bytes() as f64 / (1024.0 * 1024.0),
        "model_file_mib": engine.model().file().file_size() as f64 / (1024.0 * 1024.0),
        "kv_cache_mib": cache.byte_size() as f64 / (1024.0 * 1024.0),
        "kernel": format!("{:?}", flotilla_engine::kernels::KernelImpl::detect()),
        "weight_types": weight_types(&engine),
    });

    let (peer, peer_error) = if arguments.no_peer {
        (Value::Null, Value::Null)
    } else {
        match run_peer(&arguments, &tokens) {
            Ok(peer) => (peer, Value::Null),
            Err(error) => (Value::Null, json!(format!("{error:#}"))),
        }
    };
    let ratio = |key: &str| match (ours[key].as_f64(), peer[key].as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
    let result = json!({
        "model": arguments.model.display().to_string(),
        "threads": arguments.threads,
        "prompt_tokens": tokens.len(),
        "gen_tokens": arguments.gen_tokens,
        "load_average": load_average(),
        "flotilla": ours,
        "llama_cpp": peer,
        "llama_cpp_error": peer_error,
        "ratio_vs_llama_cpp": {
            "prompt_tokens_per_s": ratio("prompt_tokens_per_s"),
            "decode_tokens_per_s": ratio("decode_tokens_per_s"),
            "time_to_first_token_ms": ratio("time_to_first_token_ms"),
        },
    });
    println!("{result}");
    Ok(())
}

fn run_peer(arguments: &BenchArgs, tokens: &[u32]) -> anyhow::Result<Value> {
    if let Some(binary) = &arguments.peer_llama_bench {
        return run_llama_bench(binary, arguments);
    }
    let python = arguments
        .peer_python
        .clone()
        .or_else(|| std::env::var_os("FLOTILLA_PYTHON").map(PathBuf::from))
        .or_else(|| {
            let local = PathBuf::from(".venv/bin/python");
            local.exists().then_some(local)
        })
        .context("no peer: pass --peer-python or --peer-llama-bench (or set FLOTILLA_PYTHON)")?;
    let script =
        std::env::temp_dir().join(format!("flotilla-bench-peer-{}.py", std::process::id()));
    std::fs::write(&script, PEER_SCRIPT).context("writing the peer script")?;
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(&arguments.model)
        .arg(arguments.threads.to_string())
        .arg(arguments.gen_tokens.to_string())
        .arg(serde_json::to_string(tokens)?)
        .output()
        .with_context(|| format!("running {}", python.display()));
    let _ = std::fs::remove_file(&script);
    let output = output?;
    if !output.status.success() {
        bail!(
            "peer failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("parsing the peer's json")
}

fn run_llama_bench(binary: &PathBuf, arguments: &BenchArgs) -> anyhow::Result<Value> {
    let output = std::process::Command::new(binary)
        .arg("-m")
        .arg(&arguments.model)
        .args(["-t", &arguments.threads.to_string()])
        .args(["-p", &arguments.prompt_tokens.to_string()])
        .args(["-n", &arguments.gen_tokens.to_string()])
        .args(["-r", "1", "-o", "json"])
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "llama-bench failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let runs: Vec<Value> =
        serde_json::from_slice(&output.stdout).context("parsing llama-bench json")?;
    let rate = |prompt: bool| {
        runs.iter()
            .find(|run| (run["n_prompt"].as_u64().unwrap_or(0) > 0) == prompt)
            .and_then(|run| run["avg_ts"].as_f64())
    };
    let prompt_rate = rate(true);
    Ok(json!({
        "producer": format!("llama-bench {}", binary.display()),
        "prompt_tokens_per_s": prompt_rate,
        "decode_tokens_per_s": rate(false),
        "time_to_first_token_ms": prompt_rate.map(|rate| arguments.prompt_tokens as f64 / rate * 1000.0),
    }))
}
