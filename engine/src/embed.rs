//! Embeddings: a prompt's final hidden states, pooled into one vector.
//!
//! The prompt runs through the same decoder as generation ([`LlamaModel::forward_hidden`]
//! stops before the output head and returns every position's hidden state after the
//! output norm, which is what llama.cpp's embeddings pool for decoder models: its
//! `result_norm`). Pooling is the model's declared `<arch>.pooling_type` where that is
//! mean, cls or last, else mean. Vectors come back as pooled, not normalised: each API
//! decides whether its callers get unit vectors.
//!
//! Nothing is kept between calls: each input gets a fresh KV cache that is dropped with
//! its vector.

use crate::EngineError;
use crate::generate::Engine;
use crate::model::{KvCache, SequenceInput};
use crate::tokenizer::TokenId;

/// Prompt tokens per forward pass and sequence (as generation's prefill).
const EMBED_CHUNK: usize = 128;

/// Inputs run together through one forward pass (bounds the KV caches alive at once).
const EMBED_BATCH: usize = 8;

/// How the hidden states of a prompt's positions become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average over every position.
    Mean,
    /// The first position (BERT's `[CLS]`).
    Cls,
    /// The last position.
    Last,
}

impl Pooling {
    /// The pooling a model declares (`<arch>.pooling_type`, llama.cpp's numbering), mean
    /// when it declares none; refuses the types that give no single vector per input.
    pub fn declared(pooling_type: Option<u64>) -> Result<Pooling, EngineError> {
        match pooling_type {
            None | Some(1) => Ok(Pooling::Mean),
            Some(2) => Ok(Pooling::Cls),
            Some(3) => Ok(Pooling::Last),
            Some(0) => Err(EngineError::Unsupported(
                "the model declares pooling type 0 (none: one vector per token); \
                 only mean, cls and last pooling give embeddings here"
                    .into(),
            )),
            Some(4) => Err(EngineError::Unsupported(
                "the model declares pooling type 4 (rank: a reranker's score); \
                 only mean, cls and last pooling give embeddings here"
                    .into(),
            )),
            Some(other) => Err(EngineError::Unsupported(format!(
                "the model declares unknown pooling type {other}; \
                 only mean (1), cls (2) and last (3) give embeddings here"
            ))),
        }
    }
}

/// A pooled vector and how many prompt tokens made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub vector: Vec<f32>,
    pub prompt_tokens: usize,
}

/// One input's running pool while its chunks go through the model.
struct Pooled {
    cache: KvCache,
    tokens: Vec<TokenId>,
    done: usize,
    sum: Vec<f32>,
}

impl Engine {
    /// The pooling [`Engine::embed`] applies for this model.
    pub fn pooling(&self) -> Result<Pooling, EngineError> {
        Pooling::declared(self.model().config().pooling_type)
    }

    /// Embeds each input (token lists, as [`Engine::prompt_tokens`] gives them) with the
    /// model's declared pooling; each vector is what that input gives alone. An empty
    /// input, or one longer than the context window, is refused: never truncated here.
    pub fn embed(&self, inputs: &[Vec<TokenId>]) -> Result<Vec<Embedding>, EngineError> {
        self.embed_with(inputs, self.pooling()?)
    }

    /// [`Engine::embed`] with an explicit pooling.
    pub fn embed_with(
        &self,
        inputs: &[Vec<TokenId>],
        pooling: Pooling,
    ) -> Result<Vec<Embedding>, EngineError> {
        let context = self.context_length();
        for (index, tokens) in inputs.iter().enumerate() {
            if tokens.is_empty() {
                return Err(EngineError::InvalidRequest(format!(
                    "input {index} is empty (no tokens)"
                )));
            }
            if tokens.len() > context {
                return Err(EngineError::InvalidRequest(format!(
                    "input {index} is {} tokens, longer than the context of {context} tokens",
                    tokens.len()
                )));
            }
        }
        let mut embeddings = Vec::with_capacity(inputs.len());
        for group in inputs.chunks(EMBED_BATCH) {
            embeddings.extend(self.embed_group(group, pooling)?);
        }
        Ok(embeddings)
    }

    /// Runs a few inputs side by side, chunk by chunk, pooling as their rows come out.
    fn embed_group(
        &self,
        group: &[Vec<TokenId>],
        pooling: Pooling,
    ) -> Result<Vec<Embedding>, EngineError> {
        let width = self.model().config().embedding_length;
        let mut pools: Vec<Pooled> = group
            .iter()
            .map(|tokens| Pooled {
                cache: self.new_cache(),
                tokens: tokens.clone(),
                done: 0,
                sum: vec![0.0; width],
            })
            .collect();
        loop {
            let mut active: Vec<&mut Pooled> = pools
                .iter_mut()
                .filter(|pool| pool.done < pool.tokens.len())
                .collect();
            if active.is_empty() {
                break;
            }
            let ends: Vec<usize> = active
                .iter()
                .map(|pool| (pool.done + EMBED_CHUNK).min(pool.tokens.len()))
                .collect();
            let rows = {
                let mut batch: Vec<SequenceInput<'_>> = active
                    .iter_mut()
                    .zip(&ends)
                    .map(|(pool, &end)| SequenceInput {
                        cache: &mut pool.cache,
                        tokens: &pool.tokens[pool.done..end],
                    })
                    .collect();
                self.forward_hidden(&mut batch)?
            };
            for ((pool, rows), end) in active.iter_mut().zip(rows).zip(ends) {
                let first = pool.done == 0;
                let last = end == pool.tokens.len();
                match pooling {
                    Pooling::Mean => {
                        for row in rows.chunks_exact(width) {
                            pool.sum.iter_mut().zip(row).for_each(|(sum, x)| *sum += x);
                        }
                    }
                    Pooling::Cls if first => pool.sum.copy_from_slice(&rows[..width]),
                    Pooling::Last if last => {
                        pool.sum.copy_from_slice(&rows[rows.len() - width..]);
                    }
                    Pooling::Cls | Pooling::Last => {}
                }
                pool.done = end;
            }
        }
        Ok(pools
            .into_iter()
            .map(|pool| {
                let count = pool.tokens.len();
                let mut vector = pool.sum;
                if pooling == Pooling::Mean {
                    let scale = 1.0 / count as f32;
                    vector.iter_mut().for_each(|x| *x *= scale);
                }
                Embedding {
                    vector,
                    prompt_tokens: count,
                }
            })
            .collect())
    }
}

/// `vector` scaled to unit length (left as is when it is all zeros).
pub fn normalize(vector: &mut [f32]) {
    let norm = vector
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        vector
            .iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

/// The cosine similarity of two vectors of the same length.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_pooling_defaults_to_mean_and_refuses_per_token_and_rank() {
        assert_eq!(Pooling::declared(None).ok(), Some(Pooling::Mean));
        assert_eq!(Pooling::declared(Some(1)).ok(), Some(Pooling::Mean));
        assert_eq!(Pooling::declared(Some(2)).ok(), Some(Pooling::Cls));
        assert_eq!(Pooling::declared(Some(3)).ok(), Some(Pooling::Last));
        for refused in [0, 4, 9] {
            let error = Pooling::declared(Some(refused))
                .expect_err("refused")
                .to_string();
            assert!(error.contains("pooling type"), "{error}");
        }
    }

    #[test]
    fn normalize_gives_unit_vectors_and_leaves_zeros() {
        let mut vector = vec![3.0, 4.0];
        normalize(&mut vector);
        assert_eq!(vector, vec![0.6, 0.8]);
        let mut zeros = vec![0.0; 3];
        normalize(&mut zeros);
        assert_eq!(zeros, vec![0.0; 3]);
    }
}
