//! SentencePiece tokenization as llama.cpp's `llm_tokenizer_spm` does it: start from single
//! characters, repeatedly merge the adjacent pair whose concatenation is the best-scoring
//! vocabulary entry (leftmost on ties), then emit each symbol as its token, falling back to
//! `<0xXX>` byte tokens for characters the vocabulary lacks.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::TokenId;

/// SentencePiece's visible space, `▁` (U+2581).
pub(super) const SPACE: char = '\u{2581}';

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    length: usize,
    previous: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    length: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Bigram) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Bigram) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Higher score first, then the leftmost pair (the max-heap pops the greatest).
    fn cmp(&self, other: &Bigram) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Tokenizes `text` (spaces already escaped to `▁`) and appends the ids.
pub(super) fn encode(
    text: &str,
    token_ids: &HashMap<String, TokenId>,
    scores: &[f32],
    output: &mut Vec<TokenId>,
) {
    let mut symbols: Vec<Symbol> = Vec::new();
    for (index, (start, character)) in text.char_indices().enumerate() {
        let length = character.len_utf8();
        symbols.push(Symbol {
            start,
            length,
            previous: index.checked_sub(1),
            next: (start + length < text.len()).then_some(index + 1),
        });
    }
    if symbols.is_empty() {
        return;
    }
    let mut queue = BinaryHeap::new();
    let try_add = |left: Option<usize>,
                   right: Option<usize>,
                   symbols: &[Symbol],
                   queue: &mut BinaryHeap<Bigram>| {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let start = symbols[left].start;
        let length = symbols[left].length + symbols[right].length;
        let piece = &text[start..start + length];
        let Some(&id) = token_ids.get(piece) else {
            return;
        };
        let Some(&score) = scores.get(id as usize) else {
            return;
        };
        queue.push(Bigram {
            left,
            right,
            score,
            length,
        });
    };
    for right in 1..symbols.len() {
        try_add(Some(right - 1), Some(right), &symbols, &mut queue);
    }
    while let Some(bigram) = queue.pop() {
        let (left, right) = (bigram.left, bigram.right);
        // Skip pairs whose symbols were merged into something else since.
        if symbols[left].length == 0
            || symbols[right].length == 0
            || symbols[left].length + symbols[right].length != bigram.length
        {
            continue;
        }
        symbols[left].length += symbols[right].length;
        symbols[right].length = 0;
        symbols[left].next = symbols[right].next;
        if let Some(next) = symbols[right].next {
            symbols[next].previous = Some(left);
        }
        let (previous, next) = (symbols[left].previous, symbols[left].next);
        try_add(previous, Some(left), &symbols, &mut queue);
        try_add(Some(left), next, &symbols, &mut queue);
    }
    let mut index = Some(0);
    while let Some(current) = index {
        let symbol = symbols[current];
        resegment(text, symbol, token_ids, output);
        index = symbol.next;
    }
}

/// Emits one final symbol. Symbols only merge into vocabulary entries, so a symbol is
/// either a token or a single character the vocabulary lacks, which becomes its bytes
/// (llama.cpp's `resegment`; its reverse-merge branch cannot be reached for that reason).
fn resegment(
    text: &str,
    symbol: Symbol,
    token_ids: &HashMap<String, TokenId>,
    output: &mut Vec<TokenId>,
) {
    let piece = &text[symbol.start..symbol.start + symbol.length];
    if let Some(&id) = token_ids.get(piece) {
        output.push(id);
        return;
    }
    for &byte in piece.as_bytes() {
        let name = format!("<0x{byte:02X}>");
        let id = token_ids.get(&name).or_else(|| {
            std::str::from_utf8(&[byte])
                .ok()
                .and_then(|character| token_ids.get(character))
        });
        // llama.cpp aborts on a byte the vocabulary cannot spell; we leave it out.
        if let Some(&id) = id {
            output.push(id);
        }
    }
}

/// The bytes of a SentencePiece token: `<0xXX>` byte tokens are that byte, `▁` is a space.
pub(super) fn piece_bytes(text: &str, is_byte: bool) -> Vec<u8> {
    if is_byte
        && let Some(hex) = text
            .strip_prefix("<0x")
            .and_then(|rest| rest.strip_suffix('>'))
        && let Ok(byte) = u8::from_str_radix(hex, 16)
    {
        return vec![byte];
    }
    text.replace(SPACE, " ").into_bytes()
}
