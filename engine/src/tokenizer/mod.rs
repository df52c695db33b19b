//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`), matching llama.cpp token for
//! token: byte-level BPE (`gpt2`: SmolLM, Llama 3, Qwen2, DeepSeek, GPT-2, with each
//! family's pre-tokenizer) and SentencePiece (`llama`: Llama 2, Phi-3, Gemma; scores,
//! byte fallback, leading-space handling).
//!
//! Why our own and not HF `tokenizers`: the GGUF carries vocabulary, scores and merges,
//! llama.cpp is the reference we must match token for token (including its hand-written
//! pre-tokenizers and special-token splitting), and the algorithms are small. The
//! tokenizer lives in memory only and is immutable after loading.

mod pretokenize;
mod spm;

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

/// The vocabulary's algorithm (`tokenizer.ggml.model`).
#[derive(Debug, Clone)]
enum Algorithm {
    /// Byte-level BPE with merges (`gpt2`).
    BytePairs {
        merge_ranks: HashMap<(String, String), u32>,
        pre_tokenizer: PreTokenizer,
    },
    /// SentencePiece (`llama`): highest-scoring pairs merge first; bytes without a piece
    /// fall back to `<0xXX>` tokens.
    SentencePiece {
        scores: Vec<f32>,
        /// A space is prepended to text that follows a special token or starts the input.
        add_space_prefix: bool,
    },
}

/// A token matched verbatim in input text before the vocabulary's algorithm runs.
#[derive(Debug, Clone)]
struct SpecialToken {
    text: String,
    id: TokenId,
    kind: TokenKind,
    /// Whitespace right after it is dropped (llama.cpp's `LLAMA_TOKEN_ATTR_RSTRIP`).
    strips_right: bool,
}

/// The tokenizer of one model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    algorithm: Algorithm,
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    token_ids: HashMap<String, TokenId>,
    /// Tokens matched verbatim in input text, longest first.
    special_tokens: Vec<SpecialToken>,
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
        let pre_name = header.metadata.get_str("tokenizer.ggml.pre");
        let algorithm = match model {
            "gpt2" => {
                let pre_tokenizer = PreTokenizer::from_gguf_name(pre_name).ok_or_else(|| {
                    EngineError::Unsupported(format!("pre-tokenizer {pre_name:?}"))
                })?;
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
                        .ok_or_else(|| {
                            EngineError::Tokenizer(format!("merge {merge:?} has no space"))
                        })?;
                    merge_ranks.insert(
                        (merge[..split].to_string(), merge[split + 1..].to_string()),
                        rank as u32,
                    );
                }
                Algorithm::BytePairs {
                    merge_ranks,
                    pre_tokenizer,
                }
            }
            "llama" => {
                let scores = match header.metadata.get("tokenizer.ggml.scores") {
                    Some(value) => value
                        .as_array()
                        .ok_or_else(|| EngineError::Tokenizer("scores is not an array".into()))?
                        .iter()
                        .map(MetadataValue::as_f32)
                        .collect::<Option<Vec<f32>>>()
                        .ok_or_else(|| {
                            EngineError::Tokenizer("scores holds a non-number".into())
                        })?,
                    None => vec![0.0; tokens.len()],
                };
                if scores.len() != tokens.len() {
                    return Err(EngineError::Tokenizer(format!(
                        "{} scores for {} tokens",
                        scores.len(),
                        tokens.len()
                    )));
                }
                Algorithm::SentencePiece {
                    scores,
                    add_space_prefix: header
                        .metadata
                        .get("tokenizer.ggml.add_space_prefix")
                        .and_then(MetadataValue::as_bool)
                        .unwrap_or(true),
                }
            }
            other => {
                return Err(EngineError::Unsupported(format!(
                    "tokenizer model {other:?} (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece)"
                )));
            }
        };
        let token_ids: HashMap<String, TokenId> = tokens
            .iter()
            .enumerate()
            .map(|(id, text)| (text.clone(), id as TokenId))
            .collect();
        // llama.cpp gives Phi-3's special tokens (all but BOS, UNK and <|endoftext|>) the
        // RSTRIP attribute, as Phi-3's tokenizer.json does, when the model's name says Phi-3:
        // "<|user|>\nHi" tokenizes as <|user|> ▁Hi (llama_vocab::impl::load).
        let phi3_name = header.metadata.get_str("general.name").is_some_and(|name| {
            let name = name.to_ascii_lowercase();
            name.contains("phi-3") || name.contains("phi3")
        });
        let mut special_tokens: Vec<SpecialToken> = tokens
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
            .map(|(id, (text, kind))| SpecialToken {
                text: text.clone(),
                id: id as TokenId,
                kind: *kind,
                strips_right: phi3_name
                    && !matches!(text.as_str(), "<unk>" | "<s>" | "<|endoftext|>"),
            })
            .collect();
        special_tokens.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
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
            .or_else(|| token_ids.get("<|eot_id|>").copied())
            .or_else(|| token_ids.get("<end_of_turn>").copied())
            .or_else(|| token_ids.get("<|end|>").copied());
        // Without `add_bos_token`, llama.cpp adds BOS for SentencePiece vocabularies and for
        // the byte-level ones whose pre-tokenizer it knows to want one (Llama 3's and its
        // kin: llama_vocab::impl::load).
        let default_add_bos = match algorithm {
            Algorithm::SentencePiece { .. } => true,
            Algorithm::BytePairs { .. } => matches!(
                pre_name,
                Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral")
            ),
        };
        Ok(Tokenizer {
            bos: token_id("tokenizer.ggml.bos_token_id"),
            eos: token_id("tokenizer.ggml.eos_token_id"),
            eot,
            add_bos: header
                .metadata
                .get("tokenizer.ggml.add_bos_token")
                .and_then(MetadataValue::as_bool)
                .unwrap_or(default_add_bos),
            algorithm,
            tokens,
            kinds,
            token_ids,
            special_tokens,
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

    /// Whether a token is a control token (`<|im_end|>`, `<|eot_id|>`): never part of text
    /// (unknown and unused entries count too, since text never produces them).
    pub fn is_control(&self, token: TokenId) -> bool {
        matches!(
            self.kinds.get(token as usize),
            Some(TokenKind::Control | TokenKind::Unknown | TokenKind::Unused)
        )
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
        // SentencePiece prefixes a space to text at the start and after special tokens.
        let mut after_special = true;
        let mut rest = text;
        while !rest.is_empty() {
            match self.find_special(rest, parse_special) {
                Some((start, special)) => {
                    if start > 0 {
                        self.encode_ordinary(&rest[..start], after_special, &mut output);
                    }
                    output.push(special.id);
                    after_special = true;
                    rest = &rest[start + special.text.len()..];
                    if special.strips_right {
                        // C's isspace: unlike char::is_ascii_whitespace, it includes \v.
                        rest = rest.trim_start_matches([' ', '\t', '\n', '\x0B', '\x0C', '\r']);
                    }
                }
                None => {
                    self.encode_ordinary(rest, after_special, &mut output);
                    break;
                }
            }
        }
        output
    }

    /// The earliest special token in `text` (longest on ties), with its byte offset.
    fn find_special(&self, text: &str, parse_special: bool) -> Option<(usize, &SpecialToken)> {
        let mut best: Option<(usize, &SpecialToken)> = None;
        for special in &self.special_tokens {
            if !parse_special && matches!(special.kind, TokenKind::Control | TokenKind::Unknown) {
                continue;
            }
            if let Some(start) = text.find(special.text.as_str())
                && best.is_none_or(|(best_start, best)| {
                    start < best_start
                        || (start == best_start && special.text.len() > best.text.len())
                })
            {
                best = Some((start, special));
            }
        }
        best
    }

    fn encode_ordinary(&self, text: &str, after_special: bool, output: &mut Vec<TokenId>) {
        let (merge_ranks, pre_tokenizer) = match &self.algorithm {
            Algorithm::BytePairs {
                merge_ranks,
                pre_tokenizer,
            } => (merge_ranks, *pre_tokenizer),
            Algorithm::SentencePiece {
                scores,
                add_space_prefix,
            } => {
                let mut escaped = String::with_capacity(text.len() + 3);
                if *add_space_prefix && after_special {
                    escaped.push(spm::SPACE);
                }
                escaped.extend(text.chars().map(|c| if c == ' ' { spm::SPACE } else { c }));
                spm::encode(&escaped, &self.token_ids, scores, output);
                return;
            }
        };
        for word in pre_tokenizer.split(text) {
            let encoded: String = word
                .bytes()
                .map(|byte| self.byte_to_char[usize::from(byte)])
                .collect();
            if pre_tokenizer.ignores_merges()
                && let Some(&id) = self.token_ids.get(&encoded)
            {
                output.push(id);
                continue;
            }
            for symbol in bpe(merge_ranks, &encoded) {
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
            _ if matches!(self.algorithm, Algorithm::SentencePiece { .. }) => {
                spm::piece_bytes(text, self.kinds[token as usize] == TokenKind::Byte)
            }
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
    /// SentencePiece's leading space, added by `encode`, is removed again (llama.cpp's
    /// `detokenize`), so `decode(encode(x)) == x`.
    pub fn decode(&self, tokens: &[TokenId], render_special: bool) -> String {
        let mut bytes: Vec<u8> = Vec::new();
        for (index, &token) in tokens.iter().enumerate() {
            let piece = self.token_bytes(token, render_special);
            let strip = index == 0
                && matches!(
                    self.algorithm,
                    Algorithm::SentencePiece {
                        add_space_prefix: true,
                        ..
                    }
                )
                && piece.first() == Some(&b' ');
            bytes.extend_from_slice(if strip { &piece[1..] } else { &piece });
        }
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

/// Applies merges, lowest rank first (leftmost on ties), until none applies.
fn bpe(merge_ranks: &HashMap<(String, String), u32>, word: &str) -> Vec<String> {
    let mut symbols: Vec<String> = word.chars().map(String::from).collect();
    loop {
        let mut best: Option<(u32, usize)> = None;
        for index in 0..symbols.len().saturating_sub(1) {
            let pair = (symbols[index].clone(), symbols[index + 1].clone());
            if let Some(&rank) = merge_ranks.get(&pair)
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

#[cfg(test)]
pub(crate) mod tests;
