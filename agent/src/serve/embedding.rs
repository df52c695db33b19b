//! One embedding request, shared by every API surface: the model lookup,
//! a place in the model's queue (the same bounded admission as generation,
//! so embeddings and generations share one limit), and the engine's
//! [`flotilla_engine::Engine::embed`] run off the tokio workers.
//!
//! Embeddings do not go through the engine's batching scheduler: a request
//! is one prompt pass per input with no decoding, so it runs whole on a
//! blocking thread, in the engine's thread pool beside the scheduler's
//! steps. Its place in the queue is held until the engine is done with it,
//! even when the client has gone or the timeout has passed.
//!
//! The vectors come back as the engine pools them; each surface decides
//! whether to normalise them (its API says). Nothing is kept.

use std::time::{Duration, Instant};

use flotilla_engine::{Prompt, TokenId};

use super::ServeConfig;
use super::error::ServeError;
use super::metrics;
use super::models::{ModelInfo, ModelSlot};

/// One input to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingInput {
    /// Text, tokenized as a raw prompt (no chat template).
    Text(String),
    /// Token ids of the served model's vocabulary.
    Tokens(Vec<TokenId>),
}

/// What to do with an input longer than the model's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse the request (400), naming the input.
    Refuse,
    /// Keep the first context-length tokens (Ollama's `truncate: true`,
    /// asked for by the client).
    Truncate,
}

/// An embedding request as the agent understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingRequest {
    pub model: String,
    pub inputs: Vec<EmbeddingInput>,
    pub overflow: Overflow,
    /// The width the client expects; refused unless it is the model's own.
    pub dimensions: Option<u64>,
}

/// The answer: one vector per input, in order, as the engine pooled them.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub model: ModelInfo,
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    pub total_time: Duration,
}

/// Embeds `request` with the served model, or says why not (a model not
/// served here comes back as `ModelNotFound`, which a surface may forward).
pub async fn embed(
    slot: &ModelSlot,
    config: &ServeConfig,
    request: EmbeddingRequest,
) -> Result<Embeddings, ServeError> {
    let served = slot.get(&request.model)?;
    // Refused while the model is being unloaded, as generations are.
    served.scheduler()?;
    let name = served.info().name.clone();
    let width = served.engine().model().config().embedding_length;
    if let Some(dimensions) = request.dimensions
        && dimensions != width as u64
    {
        return Err(ServeError::UnsupportedField {
            field: "dimensions".to_owned(),
            why: format!(
                "model {name:?} gives {width}-dimensional embeddings and they are not \
                 shortened here (got {dimensions})"
            ),
        });
    }
    // A model whose declared pooling gives no single vector cannot embed:
    // the request asks for something this model does not do (a 400, not a
    // server failure).
    served
        .engine()
        .pooling()
        .map_err(|error| ServeError::InvalidRequest(format!("model {name:?}: {error}")))?;
    if request.inputs.is_empty() {
        return Err(ServeError::InvalidRequest(
            "input must not be empty".to_owned(),
        ));
    }
    let admission = served.admit(config.retry_after).inspect_err(|error| {
        metrics::request_finished(&name, error.code());
    })?;
    metrics::queue_depth(&name, served.in_flight());
    let started = Instant::now();
    let worker = std::sync::Arc::clone(&served);
    let running = tokio::task::spawn_blocking(move || {
        let engine = worker.engine();
        let context = engine.context_length();
        let mut inputs = Vec::with_capacity(request.inputs.len());
        for input in request.inputs {
            let mut tokens = match input {
                EmbeddingInput::Text(text) => engine
                    .prompt_tokens(&Prompt::Text(text))
                    .map_err(ServeError::from_engine)?,
                EmbeddingInput::Tokens(tokens) => tokens,
            };
            if request.overflow == Overflow::Truncate {
                tokens.truncate(context);
            }
            inputs.push(tokens);
        }
        let embedded = engine.embed(&inputs).map_err(ServeError::from_engine);
        // Done with the engine: free the place before anyone is told.
        drop(admission);
        embedded
    });
    let outcome = match tokio::time::timeout(config.request_timeout, running).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(join)) => Err(ServeError::Internal(format!(
            "the embedding task failed: {join}"
        ))),
        Err(_) => Err(ServeError::Timeout(config.request_timeout)),
    };
    metrics::queue_depth(&name, served.in_flight());
    metrics::request_finished(
        &name,
        match &outcome {
            Ok(_) => "ok",
            Err(error) => error.code(),
        },
    );
    let embedded = outcome?;
    let prompt_tokens = embedded.iter().map(|one| one.prompt_tokens).sum();
    metrics::prompt_tokens(&name, prompt_tokens);
    Ok(Embeddings {
        model: served.info().clone(),
        vectors: embedded.into_iter().map(|one| one.vector).collect(),
        prompt_tokens,
        total_time: started.elapsed(),
    })
}
