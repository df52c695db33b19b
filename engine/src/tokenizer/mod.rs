//! Byte-level BPE tokenizer built from GGUF metadata (`tokenizer.ggml.*`), matching
//! llama.cpp's tokenization for GPT-2-style vocabularies (SmolLM2, StarCoder, GPT-2).
//!
//! Why our own and not HF `tokenizers`: the GGUF carries vocabulary and merges, llama.cpp is
//! the reference we must match token for token (including its hand-written pre-tokenizer
//! and special-token splitting), and the BPE itself is small. The tokenizer lives in
//! memory only and is immutable after loading.

mod pretokenize;

use std::collections::HashMap;

use flotilla_gguf::{GgufHeader, MetadataValue};

pub use pretokenize::PreTokenizer;

use crate::EngineError;

/// A token id.
pub type TokenId = u32;

/// GGUF token types (`tokenizer.ggml.token_type`, llama.cpp `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_gguf(value: i64) -> TokenKind {
        match value {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

/// The tokenizer of one model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    token_ids: HashMap<String, TokenId>,
    merge_ranks: HashMap<(String, String), u32>,
    /// Tokens matched verbatim in input text, longest first.
    special_tokens: Vec<(String, TokenId, TokenKind)>,
    pre_tokenizer: PreTokenizer,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    bos: Option<TokenId>,
    eos: Option<TokenId>,
    eot: Option<TokenId>,
    add_bos: bool,
}

fn string_array<'h>(header: &'h GgufHeader, key: &str) -> Result<Vec<&'h str>, EngineError> {
    header
        .metadata
        .get(key)
        .and_then(MetadataValue::as_array)
        .ok_or_else(|| EngineError::Missing(format!("metadata {key}")))?
        .iter()
        .map(|value| {
            value
                .as_str()
                .ok_or_else(|| EngineError::Tokenizer(format!("{key} holds a non-string")))
        })
        .collect()
}

/// GPT-2's reversible mapping of bytes to printable characters.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(byte)
        } else {
            let code = next_extra;
            next_extra += 1;
            code
        };
        table[usize::from(byte)] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF header.
    pub fn from_gguf(header: &GgufHeader) -> Result<Tokenizer, EngineError> {
        let model = header
            .metadata
            .get_str("tokenizer.ggml.model")
            .unwrap_or("");
        if model != "gpt2" {
            return Err(EngineError::Unsupported(format!(
                "tokenizer model {model:?} (supported: \"gpt2\" byte-level BPE)"
            )));
        }
        let pre_name = header.metadata.get_str("tokenizer.ggml.pre");
        let pre_tokenizer = PreTokenizer::from_gguf_name(pre_name)
            .ok_or_else(|| EngineError::Unsupported(format!("pre-tokenizer {pre_name:?}")))?;
        let tokens: Vec<String> = string_array(header, "tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_string)
            .collect();
        let kinds: Vec<TokenKind> = match header.metadata.get("tokenizer.ggml.token_type") {
            Some(value) => value
                .as_array()
                .ok_or_else(|| EngineError::Tokenizer("token_type is not an array".into()))?
                .iter()
                .map(|kind| TokenKind::from_gguf(kind.as_i64().unwrap_or(1)))
                .collect(),
            None => vec![TokenKind::Normal; tokens.len()],
        };
        if kinds.len() != tokens.len() {
            return Err(EngineError::Tokenizer(format!(
                "{} token types for {} tokens",
                kinds.len(),
                tokens.len()
            )));
        }
        let mut merge_ranks = HashMap::new();
        for (rank, merge) in string_array(header, "tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
        {
            // The first character may itself be a space-like symbol, so search from 1.
            let split = merge
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(index, _)| index)
                .ok_or_else(|| EngineError::Tokenizer(format!("merge {merge:?} has no space")))?;
            merge_ranks.insert(
                (merge[..split].to_string(), merge[split + 1..].to_string()),
                rank as u32,
            );
        }
        let token_ids: HashMap<String, TokenId> = tokens
            .iter()
            .enumerate()
            .map(|(id, text)| (text.clone(), id as TokenId))
            .collect();
        let mut special_tokens: Vec<(String, TokenId, TokenKind)> = tokens
            .iter()
            .zip(&kinds)
            .enumerate()
            .filter(|(_, (text, kind))| {
                !text.is_empty()
                    && matches!(
                        kind,
                        TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
                    )
            })
            .map(|(id, (text, kind))| (text.clone(), id as TokenId, *kind))
            .collect();
        special_tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let byte_to_char = byte_to_char_table();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(byte, &c)| (c, byte as u8))
            .collect();
        let token_id = |key: &str| {
            header
                .metadata
                .get_u64(key)
                .and_then(|id| u32::try_from(id).ok())
                .filter(|&id| (id as usize) < tokens.len())
        };
        let eot = token_id("tokenizer.ggml.eot_token_id")
            .or_else(|| token_ids.get("<|im_end|>").copied())
            .or_else(|| token_ids.get("<|eot_id|>").copied());
        Ok(Tokenizer {
            bos: token_id("tokenizer.ggml.bos_token_id"),
            eos: token_id("tokenizer.ggml.eos_token_id"),
            eot,
            add_bos: header
                .metadata
                .get("tokenizer.ggml.add_bos_token")
                .and_then(MetadataValue::as_bool)
                .unwrap_or(false),
            tokens,
            kinds,
            token_ids,
            merge_ranks,
            special_tokens,
            pre_tokenizer,
            byte_to_char,
            char_to_byte,
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_token(&self) -> Option<TokenId> {
        self.bos
    }

    pub fn eos_token(&self) -> Option<TokenId> {
        self.eos
    }

    /// Whether generation should stop at this token (end of sequence or of turn).
    pub fn is_end_of_generation(&self, token: TokenId) -> bool {
        Some(token) == self.eos || Some(token) == self.eot
    }

    /// The raw vocabulary entry of a token.
    pub fn token_text(&self, token: TokenId) -> Option<&str> {
        self.tokens.get(token as usize).map(String::as_str)
    }

    /// Tokenizes `text`. With `parse_special`, control tokens written in the text (such as
    /// `<|im_start|>`) become their ids; user-defined tokens are always matched, as in
    /// llama.cpp. `add_bos` follows the model's `tokenizer.ggml.add_bos_token` when `None`.
    pub fn encode(&self, text: &str, parse_special: bool, add_bos: Option<bool>) -> Vec<TokenId> {
        let mut output = Vec::new();
        if add_bos.unwrap_or(self.add_bos)
            && let Some(bos) = self.bos
        {
            output.push(bos);
        }
        let mut rest = text;
        while !rest.is_empty() {
            match self.find_special(rest, parse_special) {
                Some((start, length, id)) => {
                    self.encode_ordinary(&rest[..start], &mut output);
                    output.push(id);
                    rest = &rest[start + length..];
                }
                None => {
                    self.encode_ordinary(rest, &mut output);
                    break;
                }
            }
        }
        output
    }

    /// The earliest special token in `text` (longest on ties): (byte start, byte length, id).
    fn find_special(&self, text: &str, parse_special: bool) -> Option<(usize, usize, TokenId)> {
        let mut best: Option<(usize, usize, TokenId)> = None;
        for (special, id, kind) in &self.special_tokens {
            if !parse_special && matches!(kind, TokenKind::Control | TokenKind::Unknown) {
                continue;
            }
            if let Some(start) = text.find(special.as_str())
                && best.is_none_or(|(best_start, best_length, _)| {
                    start < best_start || (start == best_start && special.len() > best_length)
                })
            {
                best = Some((start, special.len(), *id));
            }
        }
        best
    }

    fn encode_ordinary(&self, text: &str, output: &mut Vec<TokenId>) {
        for word in self.pre_tokenizer.split(text) {
            let encoded: String = word
                .bytes()
                .map(|byte| self.byte_to_char[usize::from(byte)])
                .collect();
            if let Some(&id) = self.token_ids.get(&encoded) {
                output.push(id);
                continue;
            }
            for symbol in self.bpe(&encoded) {
                match self.token_ids.get(&symbol) {
                    Some(&id) => output.push(id),
                    None => {
                        // llama.cpp's fallback: one token per character, skipping unknowns.
                        for character in symbol.chars() {
                            if let Some(&id) = self.token_ids.get(character.to_string().as_str()) {
                                output.push(id);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Applies merges, lowest rank first (leftmost on ties), until none applies.
    fn bpe(&self, word: &str) -> Vec<String> {
        let mut symbols: Vec<String> = word.chars().map(String::from).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for index in 0..symbols.len().saturating_sub(1) {
                let pair = (symbols[index].clone(), symbols[index + 1].clone());
                if let Some(&rank) = self.merge_ranks.get(&pair)
                    && best.is_none_or(|(best_rank, _)| rank < best_rank)
                {
                    best = Some((rank, index));
                }
            }
            let Some((_, index)) = best else {
                return symbols;
            };
            let right = symbols.remove(index + 1);
            symbols[index].push_str(&right);
        }
    }

    /// The bytes a token stands for. Control tokens render as their text only when
    /// `render_special` (llama.cpp prints nothing for them by default).
    pub fn token_bytes(&self, token: TokenId, render_special: bool) -> Vec<u8> {
        let Some(text) = self.tokens.get(token as usize) else {
            return Vec::new();
        };
        match self.kinds[token as usize] {
            TokenKind::Control | TokenKind::Unknown | TokenKind::Unused => {
                if render_special {
                    text.as_bytes().to_vec()
                } else {
                    Vec::new()
                }
            }
            TokenKind::UserDefined => text.as_bytes().to_vec(),
            TokenKind::Normal | TokenKind::Byte => {
                let mut bytes = Vec::with_capacity(text.len());
                for character in text.chars() {
                    match self.char_to_byte.get(&character) {
                        Some(&byte) => bytes.push(byte),
                        None => {
                            let mut buffer = [0u8; 4];
                            bytes.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
                        }
                    }
                }
                bytes
            }
        }
    }

    /// Decodes tokens to text (invalid UTF-8 from partial byte tokens becomes U+FFFD).
    pub fn decode(&self, tokens: &[TokenId], render_special: bool) -> String {
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|&token| self.token_bytes(token, render_special))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token bytes into text pieces, holding back incomplete UTF-8.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(text) => {
                let text = text.to_string();
                self.pending.clear();
                text
            }
            Err(error) => {
                let valid = error.valid_up_to();
                let incomplete = error.error_len().is_none();
                let cut = if incomplete {
                    valid
                } else {
                    self.pending.len()
                };
                let text = String::from_utf8_lossy(&self.pending[..cut]).into_owned();
                self.pending.drain(..cut);
                text
            }
        }
    }

    /// Flushes whatever is left (lossily).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
pub(crate) mod tests;
