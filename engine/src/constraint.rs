//! Constrained decoding: the output of a request must match a grammar (a JSON Schema, any
//! JSON object, or a Lark grammar), enforced token by token by masking the logits of every
//! token that cannot continue a valid output before the sampler draws.
//!
//! The grammar engine is `llguidance` (the library llama.cpp and vLLM use for the same
//! job), not a home-made one: JSON Schema coverage, lexing across token boundaries and the
//! token trie are hard to get right and it is fast enough to run once per generated token
//! (tens of microseconds for JSON on a 150k-token vocabulary).
//!
//! # What the trie is built from
//! Every token contributes the bytes it decodes to ([`Tokenizer::token_bytes`]); control
//! tokens (`<|im_end|>`, `<|eot_id|>`) are marked special (llguidance's `0xFF` prefix), so
//! that a grammar's text never matches them. The model's end-of-sequence and end-of-turn
//! tokens are allowed exactly when the grammar accepts the output so far, so generation
//! ends with a complete value and never in the middle of one.
//!
//! # Schemas are closed unless they say otherwise
//! JSON Schema lets an object without `additionalProperties` carry any extra key. A small
//! model given that freedom tends to invent keys until it runs out of tokens, and clients
//! that ask for a schema (LangChain's `with_structured_output`, Ollama's `format`) mean the
//! listed properties. So [`Grammar::json_schema`] closes every object schema that has
//! `properties` and no `additionalProperties` (what OpenAI's `strict` mode requires of the
//! caller), and JSON is generated without optional whitespace, which small models otherwise
//! repeat until `max_tokens`.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use crate::EngineError;
use crate::tokenizer::{TokenId, Tokenizer};

/// What a constrained output must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Grammar(GrammarSource);

#[derive(Debug, Clone, PartialEq)]
enum GrammarSource {
    JsonSchema(Value),
    Lark(String),
}

impl Grammar {
    /// Any JSON object (OpenAI's `json_object`, Ollama's `format: "json"`).
    pub fn json_object() -> Grammar {
        Grammar::json_schema(json!({"type": "object"}))
    }

    /// A value valid against `schema` (closed objects, compact JSON: see the module docs).
    pub fn json_schema(schema: Value) -> Grammar {
        Grammar(GrammarSource::JsonSchema(compact(closed(schema))))
    }

    /// A Lark grammar in llguidance's dialect; `%json { schema }` embeds a JSON Schema.
    pub fn lark(source: impl Into<String>) -> Grammar {
        Grammar(GrammarSource::Lark(source.into()))
    }

    fn top_level(&self) -> TopLevelGrammar {
        match &self.0 {
            GrammarSource::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            GrammarSource::Lark(source) => TopLevelGrammar::from_lark(source.clone()),
        }
    }
}

/// Closes object schemas that list properties but leave `additionalProperties` open.
pub(crate) fn closed(mut schema: Value) -> Value {
    close_in_place(&mut schema);
    schema
}

fn close_in_place(schema: &mut Value) {
    let Value::Object(map) = schema else {
        return;
    };
    if map.contains_key("properties") && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    for (keyword, value) in map.iter_mut() {
        match keyword.as_str() {
            // Maps from names to schemas.
            "properties" | "patternProperties" | "$defs" | "definitions" => {
                if let Value::Object(named) = value {
                    named.values_mut().for_each(close_in_place);
                }
            }
            // One schema, or a list of them.
            "items"
            | "additionalProperties"
            | "not"
            | "contains"
            | "if"
            | "then"
            | "else"
            | "anyOf"
            | "oneOf"
            | "allOf"
            | "prefixItems" => match value {
                Value::Array(schemas) => schemas.iter_mut().for_each(close_in_place),
                other => close_in_place(other),
            },
            _ => {}
        }
    }
}

/// Asks llguidance for JSON without optional whitespace (see the module docs).
pub(crate) fn compact(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(|| {
            // Python's `json.dumps` separators: the JSON models saw most in training.
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
        });
    }
    schema
}

/// The grammar compiler of one model's vocabulary; built once, on the first constrained
/// request, because the token trie of a large vocabulary takes a moment to build.
pub(crate) struct Constraints {
    factory: ParserFactory,
    /// Tokens that end generation (end of sequence, end of turn).
    end_tokens: Vec<TokenId>,
    vocab_size: usize,
}

impl Constraints {
    pub(crate) fn new(tokenizer: &Tokenizer) -> Result<Constraints, EngineError> {
        let vocab_size = tokenizer.vocab_size();
        let end_tokens: Vec<TokenId> = (0..vocab_size as TokenId)
            .filter(|&token| tokenizer.is_end_of_generation(token))
            .collect();
        let Some(&eos) = end_tokens.first() else {
            return Err(EngineError::InvalidRequest(
                "constrained output needs a model with an end-of-sequence token".to_owned(),
            ));
        };
        let words: Vec<Vec<u8>> = (0..vocab_size as TokenId)
            .map(|token| {
                if tokenizer.is_control(token) {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(&tokenizer.token_bytes(token, true));
                    marked
                } else {
                    tokenizer.token_bytes(token, false)
                }
            })
            .collect();
        let info = TokRxInfo {
            vocab_size: vocab_size as u32,
            tok_eos: eos,
            tok_bos: tokenizer.bos_token(),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|error| EngineError::InvalidRequest(format!("grammar engine: {error}")))?;
        factory.quiet();
        Ok(Constraints {
            factory,
            end_tokens,
            vocab_size,
        })
    }

    /// Compiles `grammar` into a fresh per-sequence matcher; an invalid grammar or schema
    /// is the caller's error, named as llguidance explains it.
    pub(crate) fn start(&self, grammar: &Grammar) -> Result<OutputConstraint, EngineError> {
        let parser = self.factory.create_parser(grammar.top_level());
        let matcher = Matcher::new(parser);
        if let Some(error) = matcher.get_error() {
            return Err(EngineError::InvalidRequest(format!(
                "the output format cannot be compiled: {error}"
            )));
        }
        Ok(OutputConstraint {
            matcher,
            end_tokens: self.end_tokens.clone(),
            vocab_size: self.vocab_size,
        })
    }
}

impl std::fmt::Debug for Constraints {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Constraints")
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

/// One sequence's position in its grammar.
pub(crate) struct OutputConstraint {
    matcher: Matcher,
    end_tokens: Vec<TokenId>,
    vocab_size: usize,
}

impl OutputConstraint {
    /// Sets the logit of every token the grammar does not allow next to −∞. The end tokens
    /// are allowed exactly when the output so far is complete.
    pub(crate) fn mask(&mut self, logits: &mut [f32]) -> Result<(), EngineError> {
        let allowed = self.matcher.compute_mask().map_err(constraint_error)?;
        let accepting = self.matcher.is_accepting().map_err(constraint_error)?;
        for (token, logit) in logits.iter_mut().enumerate() {
            let token = token as TokenId;
            let permitted = if self.end_tokens.contains(&token) {
                accepting
            } else {
                (token as usize) < self.vocab_size && allowed.is_allowed(token)
            };
            if !permitted {
                *logit = f32::NEG_INFINITY;
            }
        }
        if logits.iter().all(|logit| *logit == f32::NEG_INFINITY) {
            return Err(EngineError::Constraint(
                "no token can continue the output".to_owned(),
            ));
        }
        Ok(())
    }

    /// Advances the grammar past `token` (one [`OutputConstraint::mask`] allowed).
    pub(crate) fn accept(&mut self, token: TokenId) -> Result<(), EngineError> {
        if self.end_tokens.contains(&token) {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(constraint_error)
    }

    /// Whether the grammar admits nothing more (the output is complete and closed).
    pub(crate) fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }
}

fn constraint_error(error: anyhow::Error) -> EngineError {
    EngineError::Constraint(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_schemas_with_properties_are_closed_unless_they_say_otherwise() {
        let schema = closed(json!({
            "type": "object",
            "properties": {
                "inner": {"type": "object", "properties": {"a": {"type": "string"}}},
                "open": {"type": "object", "properties": {}, "additionalProperties": true},
                // A property named like a keyword is a name, not a schema.
                "properties": {"type": "string"},
            },
        }));
        assert_eq!(
            schema["properties"]["properties"],
            json!({"type": "string"})
        );
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(
            schema["properties"]["inner"]["additionalProperties"],
            json!(false)
        );
        assert_eq!(
            schema["properties"]["open"]["additionalProperties"],
            json!(true)
        );
        // A bare `{"type": "object"}` (any object) stays open.
        assert_eq!(closed(json!({"type": "object"})), json!({"type": "object"}));
    }
}
