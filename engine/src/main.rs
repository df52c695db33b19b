//! `flotilla-engine`: run a prompt through a GGUF model, or benchmark it against llama.cpp.
//! Generated text goes to stdout, diagnostics to stderr, benchmark results as one JSON
//! object on stdout.

mod bench;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_engine::chat::single_turn;
use flotilla_engine::{
    DeviceRequest, Engine, EngineOptions, GenerationRequest, Prompt, SamplingParams,
};

#[derive(Parser)]
#[command(
    name = "flotilla-engine",
    version,
    about = "Flotilla's local LLM inference engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one prompt.
    Run {
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt in the model's chat template.
        #[arg(long)]
        chat: bool,
        /// System prompt (with --chat).
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// 0 means greedy.
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        threads: Option<usize>,
        /// Where the model runs: auto, cpu, gpu or gpu:N.
        #[arg(long, default_value = "cpu")]
        device: DeviceRequest,
    },
    /// List the GPU adapters this machine has (what `--device gpu:N` numbers).
    Devices,
    /// Measure prompt and decode throughput (and llama.cpp's, when available).
    Bench(Box<bench::BenchArgs>),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            model,
            prompt,
            chat,
            system,
            max_tokens,
            temperature,
            seed,
            threads,
            device,
        } => {
            let engine = Engine::load(&model, EngineOptions { threads, device })
                .with_context(|| format!("loading {}", model.display()))?;
            eprintln!(
                "loaded {} on {} ({engine:?})",
                model.display(),
                engine.placement()
            );
            let prompt = if chat {
                Prompt::Chat(single_turn(system.as_deref(), &prompt))
            } else {
                Prompt::Text(prompt)
            };
            let mut request = GenerationRequest::new(prompt);
            request.max_tokens = max_tokens;
            request.sampling = SamplingParams {
                temperature,
                seed,
                ..SamplingParams::default()
            };
            let stdout = std::io::stdout();
            let output = engine.generate(&request, |event| {
                let mut handle = stdout.lock();
                // A closed stdout (e.g. `| head`) is not worth failing generation over.
                let _ = handle.write_all(event.text.as_bytes());
                let _ = handle.flush();
            })?;
            println!();
            let decode_seconds = (output.total_time - output.time_to_first_token).as_secs_f64();
            eprintln!(
                "{} prompt tokens, {} generated, finish: {:?}, first token after {:.0} ms, {:.1} tokens/s",
                output.prompt_tokens,
                output.tokens.len(),
                output.finish_reason,
                output.time_to_first_token.as_secs_f64() * 1000.0,
                output.tokens.len().saturating_sub(1) as f64 / decode_seconds.max(1e-9)
            );
        }
        Command::Devices => {
            for adapter in flotilla_engine::gpu_adapters() {
                println!(
                    "gpu:{}\t{}\t{} ({}, buffers up to {} MiB)",
                    adapter.index,
                    adapter.name,
                    adapter.backend,
                    adapter.kind,
                    adapter.max_buffer_bytes >> 20
                );
            }
        }
        Command::Bench(arguments) => bench::run(*arguments)?,
    }
    Ok(())
}
