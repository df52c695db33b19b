//! Flotilla's inference engine: runs Llama-family GGUF models on the CPU.
//!
//! The engine knows nothing about the fleet. It loads a GGUF file (memory-mapped, weights
//! stay quantized), tokenizes and renders chat templates from the file's own metadata,
//! decodes with a KV cache per sequence, and schedules concurrent requests through one
//! batched forward pass. Everything lives in memory; nothing is persisted.

#[cfg(feature = "burn")]
pub mod burn_graph;
pub mod chat;
mod error;
mod generate;
pub mod kernels;
pub mod model;
pub mod sampling;
mod scheduler;
pub mod tokenizer;

pub use error::EngineError;

#[cfg(test)]
mod tests;
pub use chat::ChatMessage;
pub use generate::{
    CancellationFlag, Engine, EngineOptions, FinishReason, GenerationOutput, GenerationRequest,
    Prompt, TokenEvent,
};
pub use model::{KvCache, LlamaConfig, LlamaModel, SequenceInput};
pub use sampling::SamplingParams;
pub use scheduler::{GenerationEvent, RequestHandle, Scheduler, SchedulerConfig};
pub use tokenizer::{TokenId, Tokenizer};
