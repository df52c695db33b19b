//! The engine's error type: loading failures name the file and tensor, request failures
//! say which limit was hit, so the agent can map them to API errors directly.

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read model file: {0}")]
    Gguf(#[from] flotilla_gguf::GgufError),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("model is missing {0}")]
    Missing(String),
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(
        "prompt of {prompt} tokens plus {max_tokens} new tokens exceeds the context of {context} tokens"
    )]
    ContextOverflow {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    /// The grammar of a constrained request failed while decoding (llguidance's words).
    #[error("constrained decoding failed: {0}")]
    Constraint(String),
    #[error("request queue is full ({capacity} requests waiting)")]
    QueueFull { capacity: usize },
    #[error("engine is shut down")]
    ShutDown,
    #[error("cannot start thread pool: {0}")]
    ThreadPool(String),
    /// The requested compute device is absent, failed to start, or failed mid-pass.
    #[error("device: {0}")]
    Device(String),
}
