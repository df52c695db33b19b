//! `flotilla-engine bench`: prompt and decode throughput, time to first token and peak
//! memory, and — in the same run, with the same prompt tokens and thread count — the same
//! figures for llama.cpp when its Python binding or a `llama-bench` binary is available.
//!
//! With `--sequences N` (N > 1) it also measures batched decoding: N sequences, each with
//! its own prompt, prefilled one sequence at a time and then decoded together, one forward
//! pass over all N per step; the peer does the same through llama.cpp's batch API. Before
//! the timed batched run, an untimed one over N copies of the single-sequence prompt checks
//! that batching changes no sequence's greedy tokens (and warms the batched path up).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use flotilla_engine::sampling::argmax;
use flotilla_engine::{DeviceRequest, Engine, EngineOptions, KvCache, SequenceInput};
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
    /// Also decode this many sequences together (one batched forward pass per step) and
    /// report the aggregate decode rate; 1 measures the single sequence only.
    #[arg(long, default_value_t = 1)]
    sequences: usize,
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
    /// Where our engine runs: auto, cpu, gpu or gpu:N (the peer always runs llama.cpp's
    /// CPU build).
    #[arg(long, default_value = "cpu")]
    device: DeviceRequest,
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
    if arguments.sequences == 0 {
        bail!("--sequences must be at least 1");
    }
    let engine = Engine::load(
        &arguments.model,
        EngineOptions {
            threads: Some(arguments.threads),
            device: arguments.device,
        },
    )
    .with_context(|| format!("loading {}", arguments.model.display()))?;
    let mut tokens = Vec::new();
    while tokens.len() < arguments.prompt_tokens {
        tokens.extend(engine.tokenizer().encode(PROMPT_TEXT, false, Some(false)));
    }
    tokens.truncate(arguments.prompt_tokens);

    // Warm-up: page the mapped weights in and start the thread pool.
    let mut cache = engine.new_cache();
    engine.prefill(&mut cache, &tokens[..tokens.len().min(8)])?;

    let mut cache = engine.new_cache();
    let mut single_tokens = Vec::with_capacity(arguments.gen_tokens + 1);
    let start = Instant::now();
    let logits = engine.prefill(&mut cache, &tokens)?;
    let mut token = argmax(&logits);
    let first = Instant::now();
    single_tokens.push(token);
    for _ in 0..arguments.gen_tokens {
        let mut batch = [SequenceInput {
            cache: &mut cache,
            tokens: &[token],
        }];
        let logits = engine.forward(&mut batch)?;
        token = argmax(logits.first().context("forward returned no logits")?);
        single_tokens.push(token);
    }
    let end = Instant::now();
    let prompt_seconds = (first - start).as_secs_f64();
    let decode_seconds = (end - first).as_secs_f64();
    let mut ours = json!({
        "prompt_tokens_per_s": tokens.len() as f64 / prompt_seconds,
        "decode_tokens_per_s": arguments.gen_tokens as f64 / decode_seconds,
        "time_to_first_token_ms": prompt_seconds * 1000.0,
        "peak_rss_mib": peak_rss_mib(),
        "rss_mib": status_mib("VmRSS:"),
        "weights_mib": engine.model().weight_bytes() as f64 / (1024.0 * 1024.0),
        "model_file_mib": engine.model().file().file_size() as f64 / (1024.0 * 1024.0),
        "kv_cache_mib": cache.byte_size() as f64 / (1024.0 * 1024.0),
        "kernel": format!("{:?}", flotilla_engine::kernels::KernelImpl::detect()),
        "device": engine.placement().to_string(),
        "device_weights_mib": engine.device_weight_bytes().map(|bytes| bytes as f64 / (1024.0 * 1024.0)),
        "weight_types": weight_types(&engine),
    });
    let batched = if arguments.sequences > 1 {
        measure_batched(&engine, &arguments, &tokens, &single_tokens)?
    } else {
        BatchedFigures::default()
    };
    batched.insert_into(&mut ours);

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
        "sequences": arguments.sequences,
        "batched_prefill": (arguments.sequences > 1).then_some("one sequence at a time"),
        "load_average": load_average(),
        "flotilla": ours,
        "llama_cpp": peer,
        "llama_cpp_error": peer_error,
        "ratio_vs_llama_cpp": {
            "prompt_tokens_per_s": ratio("prompt_tokens_per_s"),
            "decode_tokens_per_s": ratio("decode_tokens_per_s"),
            "time_to_first_token_ms": ratio("time_to_first_token_ms"),
            "batched_decode_tokens_per_s": ratio("batched_decode_tokens_per_s"),
        },
    });
    println!("{result}");
    Ok(())
}

/// The batched figures, all `None` when only one sequence was measured.
#[derive(Default)]
struct BatchedFigures {
    decode_tokens_per_s: Option<f64>,
    decode_tokens_per_s_per_sequence: Option<f64>,
    peak_rss_mib: Option<f64>,
    kv_cache_mib: Option<f64>,
    consistent: Option<bool>,
}

impl BatchedFigures {
    /// Adds the figures under `batched_*` keys, the names the peer script uses too.
    fn insert_into(self, figures: &mut Value) {
        figures["batched_decode_tokens_per_s"] = json!(self.decode_tokens_per_s);
        figures["batched_decode_tokens_per_s_per_sequence"] =
            json!(self.decode_tokens_per_s_per_sequence);
        figures["batched_peak_rss_mib"] = json!(self.peak_rss_mib);
        figures["batched_kv_cache_mib"] = json!(self.kv_cache_mib);
        figures["batched_consistent"] = json!(self.consistent);
    }
}

/// The prompt of sequence `index` in a batched run: the bench prompt rotated left by
/// `index` tokens (modulo its length), so that the sequences and their caches differ while
/// sequence 0 keeps the single-sequence prompt. `bench_llama_cpp.py` builds the same ones.
fn sequence_prompt(tokens: &[u32], index: usize) -> Vec<u32> {
    let mut prompt = tokens.to_vec();
    prompt.rotate_left(index % tokens.len());
    prompt
}

fn measure_batched(
    engine: &Engine,
    arguments: &BenchArgs,
    tokens: &[u32],
    single_tokens: &[u32],
) -> anyhow::Result<BatchedFigures> {
    let sequences = arguments.sequences;
    let identical = vec![tokens.to_vec(); sequences];
    let check = decode_batched(engine, &identical, arguments.gen_tokens)?;
    let prompts: Vec<Vec<u32>> = (0..sequences)
        .map(|index| sequence_prompt(tokens, index))
        .collect();
    let timed = decode_batched(engine, &prompts, arguments.gen_tokens)?;
    let consistent = timed.tokens[0] == single_tokens
        && check
            .tokens
            .iter()
            .all(|sequence_tokens| sequence_tokens == single_tokens);
    if !consistent {
        eprintln!(
            "warning: batched greedy tokens differ from the single-sequence run's {single_tokens:?}: \
             identical prompts gave {:?}, sequence 0 of the timed run {:?}",
            check.tokens, timed.tokens[0]
        );
    }
    let decode_tokens_per_s = (sequences * arguments.gen_tokens) as f64 / timed.decode_seconds;
    Ok(BatchedFigures {
        decode_tokens_per_s: Some(decode_tokens_per_s),
        decode_tokens_per_s_per_sequence: Some(decode_tokens_per_s / sequences as f64),
        peak_rss_mib: peak_rss_mib(),
        kv_cache_mib: Some(timed.kv_cache_bytes as f64 / (1024.0 * 1024.0)),
        consistent: Some(consistent),
    })
}

/// What a batched run produced: per sequence, the greedy token after its prompt and then
/// one per decode step; how long the decode steps took; the caches' size at the end.
struct BatchedDecode {
    tokens: Vec<Vec<u32>>,
    decode_seconds: f64,
    kv_cache_bytes: usize,
}

/// Prefills each prompt into its own cache, one sequence at a time (the peer does the
/// same), then runs `gen_tokens` steps that each feed every sequence's last token through
/// one `Engine::forward` and take the argmax per sequence. Only the steps are timed.
fn decode_batched(
    engine: &Engine,
    prompts: &[Vec<u32>],
    gen_tokens: usize,
) -> anyhow::Result<BatchedDecode> {
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| engine.new_cache()).collect();
    let mut next = Vec::with_capacity(prompts.len());
    for (cache, prompt) in caches.iter_mut().zip(prompts) {
        next.push(argmax(&engine.prefill(cache, prompt)?));
    }
    let mut tokens: Vec<Vec<u32>> = next
        .iter()
        .map(|&token| {
            let mut sequence_tokens = Vec::with_capacity(gen_tokens + 1);
            sequence_tokens.push(token);
            sequence_tokens
        })
        .collect();
    let start = Instant::now();
    for _ in 0..gen_tokens {
        let mut batch: Vec<SequenceInput<'_>> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, token)| SequenceInput {
                cache,
                tokens: std::slice::from_ref(token),
            })
            .collect();
        let logits = engine.forward(&mut batch)?;
        if logits.len() != prompts.len() {
            bail!(
                "forward over {} sequences returned {} logit rows",
                prompts.len(),
                logits.len()
            );
        }
        for ((token, sequence_tokens), logits) in next.iter_mut().zip(&mut tokens).zip(&logits) {
            *token = argmax(logits);
            sequence_tokens.push(*token);
        }
    }
    let decode_seconds = start.elapsed().as_secs_f64();
    Ok(BatchedDecode {
        tokens,
        decode_seconds,
        kv_cache_bytes: caches.iter().map(KvCache::byte_size).sum(),
    })
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
        .arg(arguments.sequences.to_string())
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
