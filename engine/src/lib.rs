//! Flotilla's inference engine: runs Llama-family GGUF models (Llama, Mistral, Qwen2,
//! Gemma 3, Phi-3) on the CPU.
//!
//! The engine knows nothing about the fleet. It loads a GGUF file (memory-mapped, weights
//! stay quantized), tokenizes and renders chat templates from the file's own metadata,
//! decodes with a KV cache per sequence, and schedules concurrent requests through one
//! batched forward pass. Everything lives in memory; nothing is persisted.
//!
//! # Using it (what the agent calls)
//!
//! ```no_run
//! use std::sync::Arc;
//! use flotilla_engine::{chat::single_turn, Engine, EngineOptions, GenerationEvent,
//!     GenerationRequest, Prompt, SamplingParams, Scheduler, SchedulerConfig};
//!
//! # fn main() -> Result<(), flotilla_engine::EngineError> {
//! let engine = Arc::new(Engine::load("model.gguf", EngineOptions { threads: Some(2), ..EngineOptions::default() })?);
//! let scheduler = Scheduler::start(engine, SchedulerConfig { queue_capacity: 64, max_batch: 8 })?;
//! let mut request = GenerationRequest::new(Prompt::Chat(single_turn(None, "Hi!")));
//! request.sampling = SamplingParams { temperature: 0.7, seed: Some(1), ..SamplingParams::default() };
//! request.max_tokens = 128;
//! request.stop = vec!["\n\n".into()];
//! let handle = scheduler.submit(request)?; // Err(EngineError::QueueFull { .. }) = back-pressure
//! for event in handle.events.iter() {      // blocking: bridge with spawn_blocking in async code
//!     match event {
//!         GenerationEvent::Token(token) => print!("{}", token.text),
//!         GenerationEvent::Finished(output) => println!("\n{:?}", output.finish_reason),
//!         GenerationEvent::Failed(error) => eprintln!("{error}"),
//!     }
//! }
//! // handle.cancel.cancel() stops it; dropping `handle.events` does too.
//! # Ok(()) }
//! ```
//!
//! # Map
//!
//! - [`kernels`]: quantized mat-vec kernels (AVX-512 + VNNI, AVX2/FMA/F16C, chosen at
//!   run time, and a scalar fallback); the only module with `unsafe`.
//! - [`model`]: hyper-parameters and per-family differences as data, weights borrowed
//!   from the mapped file, the batched forward pass, the per-sequence KV cache.
//! - [`tokenizer`]: byte-level BPE (each family's pre-tokenizer) and SentencePiece from
//!   GGUF metadata, matching llama.cpp token for token.
//! - [`chat`]: the model's Jinja chat template through minijinja, with the Python-isms
//!   real templates use.
//! - [`sampling`]: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeds.
//! - `generate`: [`Engine`] and the per-request state machine (stop sequences, streaming,
//!   cancellation); `scheduler`: [`Scheduler`], the bounded queue and batching worker.
//! - `embed`: [`Engine::embed`], a prompt's normed final hidden states pooled (mean, cls
//!   or last) into one vector.
//! - `device` (feature `burn`; GPUs through burn's wgpu backend with feature `gpu`): the
//!   same graph on a burn device, weights still quantized, KV cache in device memory,
//!   driven by the same scheduler; [`placement`]: `--device auto|cpu|gpu[:N]`.

pub mod chat;
mod constraint;
#[cfg(feature = "burn")]
mod device;
mod embed;
mod error;
mod generate;
pub mod kernels;
pub mod model;
pub mod placement;
pub mod sampling;
mod scheduler;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokenizer;
pub mod tools;

pub use error::EngineError;

#[cfg(test)]
mod tests;
pub use chat::ChatMessage;
pub use constraint::Grammar;
pub use embed::{Embedding, Pooling, cosine, normalize};
pub use generate::{
    CancellationFlag, Engine, EngineOptions, FinishReason, GenerationOutput, GenerationRequest,
    Prompt, TokenEvent, TokenLogprobs,
};
pub use model::{KvCache, LlamaConfig, LlamaModel, SequenceInput};
pub use placement::{DeviceRequest, GpuAdapter, Placement, gpu_adapters};
pub use sampling::SamplingParams;
pub use scheduler::{GenerationEvent, RequestHandle, Scheduler, SchedulerConfig};
pub use tokenizer::{TokenId, Tokenizer};
