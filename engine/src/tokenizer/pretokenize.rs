//! Splitting text into words before BPE, exactly as llama.cpp does for each family's
//! `tokenizer.ggml.pre`. llama.cpp runs the GPT-2, Llama 3 and Qwen2 patterns through
//! hand-written matchers (`unicode_regex_split_custom_*`) whose behaviour at segment
//! boundaries and for `\s+(?!\S)` we reproduce here; the DeepSeek patterns have no
//! look-around, so they run through the `regex` crate, one pattern after another over the
//! pieces the previous one left, as llama.cpp's `unicode_regex_split` chains them.

use std::sync::LazyLock;

use regex::Regex;
use unicode_general_category::{GeneralCategory, get_general_category};

/// How a vocabulary splits words (GGUF `tokenizer.ggml.pre`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 regex.
    Gpt2,
    /// Every digit on its own, then the GPT-2 regex (SmolLM, StarCoder).
    DigitsThenGpt2,
    /// Llama 3's pattern: letters with one leading non-letter, digits in threes, newlines
    /// kept with the whitespace before them.
    Llama3,
    /// Qwen2's pattern: Llama 3's with every digit on its own.
    Qwen2,
    /// DeepSeek LLM's chain of patterns.
    DeepseekLlm,
    /// DeepSeek Coder's chain of patterns.
    DeepseekCoder,
}

/// DeepSeek LLM's patterns (llama.cpp `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM`).
static DEEPSEEK_LLM: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    compile(&[
        "[\r\n]",
        "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
        "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
        "\\s+$",
        "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
        "\\p{N}+",
    ])
});

/// DeepSeek Coder's patterns (llama.cpp `LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_CODER`).
static DEEPSEEK_CODER: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    compile(&[
        "[\r\n]",
        "\\s?\\p{L}+",
        "\\s?\\p{P}+",
        "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
        "\\p{N}",
    ])
});

fn compile(patterns: &[&str]) -> Vec<Regex> {
    patterns
        .iter()
        // The patterns are constants; a failure is a programming error caught by the tests.
        .map(|pattern| Regex::new(pattern).expect("valid pre-tokenizer pattern"))
        .collect()
}

/// Splits every piece by `pattern`: matches and the text between them become pieces.
fn regex_split<'t>(pieces: Vec<&'t str>, pattern: &Regex) -> Vec<&'t str> {
    let mut output = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let mut last = 0;
        for found in pattern.find_iter(piece) {
            if found.start() > last {
                output.push(&piece[last..found.start()]);
            }
            output.push(found.as_str());
            last = found.end();
        }
        if last < piece.len() {
            output.push(&piece[last..]);
        }
    }
    output
}

impl PreTokenizer {
    /// Maps a `tokenizer.ggml.pre` name; `None` for pre-tokenizers not implemented here.
    pub fn from_gguf_name(name: Option<&str>) -> Option<PreTokenizer> {
        match name {
            None | Some("default") | Some("gpt2") | Some("gpt-2") | Some("mpt") | Some("olmo")
            | Some("phi-2") => Some(PreTokenizer::Gpt2),
            Some("smollm") | Some("starcoder") | Some("refact") | Some("command-r") => {
                Some(PreTokenizer::DigitsThenGpt2)
            }
            Some(
                "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe",
            ) => Some(PreTokenizer::Llama3),
            Some("qwen2" | "deepseek-r1-qwen" | "stablelm2") => Some(PreTokenizer::Qwen2),
            Some("deepseek-llm") => Some(PreTokenizer::DeepseekLlm),
            Some("deepseek-coder") => Some(PreTokenizer::DeepseekCoder),
            Some(_) => None,
        }
    }

    /// Splits `text` into words (slices of `text`, in order, covering all of it).
    pub fn split(self, text: &str) -> Vec<&str> {
        let characters: Vec<(usize, char)> = text.char_indices().collect();
        let mut words = Vec::new();
        let mut segment_start = 0;
        match self {
            PreTokenizer::Gpt2 => gpt2_split(text, &characters, &mut words),
            PreTokenizer::DigitsThenGpt2 => {
                for index in 0..characters.len() {
                    if flags(characters[index].1).number {
                        gpt2_split(text, &characters[segment_start..index], &mut words);
                        gpt2_split(text, &characters[index..index + 1], &mut words);
                        segment_start = index + 1;
                    }
                }
                gpt2_split(text, &characters[segment_start..], &mut words);
            }
            PreTokenizer::Llama3 => llama3_split(text, &characters, 3, &mut words),
            PreTokenizer::Qwen2 => llama3_split(text, &characters, 1, &mut words),
            PreTokenizer::DeepseekLlm | PreTokenizer::DeepseekCoder => {
                let patterns = if self == PreTokenizer::DeepseekLlm {
                    &*DEEPSEEK_LLM
                } else {
                    &*DEEPSEEK_CODER
                };
                let mut pieces = if text.is_empty() {
                    Vec::new()
                } else {
                    vec![text]
                };
                for pattern in patterns {
                    pieces = regex_split(pieces, pattern);
                }
                words = pieces;
            }
        }
        words
    }

    /// Whether a word that is itself a vocabulary entry skips the merges (llama.cpp's
    /// `ignore_merges`, set for Llama 3's vocabulary).
    pub fn ignores_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }
}

#[derive(Clone, Copy, Default)]
struct Flags {
    letter: bool,
    number: bool,
    whitespace: bool,
    /// Assigned code point (llama.cpp gives unassigned ones no flags at all).
    defined: bool,
}

fn flags(character: char) -> Flags {
    let category = get_general_category(character);
    Flags {
        letter: matches!(
            category,
            GeneralCategory::UppercaseLetter
                | GeneralCategory::LowercaseLetter
                | GeneralCategory::TitlecaseLetter
                | GeneralCategory::ModifierLetter
                | GeneralCategory::OtherLetter
        ),
        number: matches!(
            category,
            GeneralCategory::DecimalNumber
                | GeneralCategory::LetterNumber
                | GeneralCategory::OtherNumber
        ),
        whitespace: character.is_whitespace(),
        // llama.cpp flags unassigned code points too (`UNDEFINED`); only positions past
        // the segment have no flags at all.
        defined: true,
    }
}

/// The GPT-2 pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// over one segment (`characters` are `(byte offset, char)` pairs of `text`).
fn gpt2_split<'t>(text: &'t str, characters: &[(usize, char)], words: &mut Vec<&'t str>) {
    let length = characters.len();
    if length == 0 {
        return;
    }
    let character = |position: usize| characters.get(position).map(|&(_, c)| c);
    let flags_at = |position: usize| character(position).map(flags).unwrap_or_default();
    let byte_at = |position: usize| {
        characters.get(position).map_or_else(
            || characters[length - 1].0 + characters[length - 1].1.len_utf8(),
            |&(offset, _)| offset,
        )
    };
    let mut previous_end = 0;
    let mut emit = |end: usize, words: &mut Vec<&'t str>| {
        if end > previous_end {
            words.push(&text[byte_at(previous_end)..byte_at(end)]);
        }
        previous_end = end;
    };
    let other = |f: Flags| !(f.whitespace || f.letter || f.number) && f.defined;

    let mut position = 0;
    while position < length {
        let current = character(position).unwrap_or('\0');
        let current_flags = flags_at(position);

        if current == '\'' && position + 1 < length {
            let next = character(position + 1).unwrap_or('\0');
            if matches!(next, 's' | 't' | 'm' | 'd') {
                position += 2;
                emit(position, words);
                continue;
            }
            if position + 2 < length {
                let after = character(position + 2).unwrap_or('\0');
                if matches!((next, after), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    position += 3;
                    emit(position, words);
                    continue;
                }
            }
        }

        let lead = if current == ' ' {
            flags_at(position + 1)
        } else {
            current_flags
        };
        let skip_space = usize::from(current == ' ');
        if lead.letter {
            position += skip_space;
            while flags_at(position).letter {
                position += 1;
            }
            emit(position, words);
            continue;
        }
        if lead.number {
            position += skip_space;
            while flags_at(position).number {
                position += 1;
            }
            emit(position, words);
            continue;
        }
        if other(lead) {
            position += skip_space;
            while position < length && other(flags_at(position)) {
                position += 1;
            }
            emit(position, words);
            continue;
        }

        let mut whitespace = 0;
        while flags_at(position + whitespace).whitespace {
            whitespace += 1;
        }
        if whitespace > 1 && position + whitespace < length {
            position += whitespace - 1;
            emit(position, words);
            continue;
        }
        if whitespace > 0 {
            position += whitespace;
            emit(position, words);
            continue;
        }
        position += 1;
        emit(position, words);
    }
}

/// Llama 3's pattern
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// (Qwen2's with `max_digits = 1`), as llama.cpp's `unicode_regex_split_custom_llama3`.
fn llama3_split<'t>(
    text: &'t str,
    characters: &[(usize, char)],
    max_digits: usize,
    words: &mut Vec<&'t str>,
) {
    let length = characters.len();
    if length == 0 {
        return;
    }
    let character = |position: usize| characters.get(position).map(|&(_, c)| c);
    let flags_at = |position: usize| character(position).map(flags).unwrap_or_default();
    let byte_at = |position: usize| {
        characters
            .get(position)
            .map_or(text.len(), |&(offset, _)| offset)
    };
    let mut previous_end = 0;
    let mut emit = |end: usize, words: &mut Vec<&'t str>| {
        if end > previous_end {
            words.push(&text[byte_at(previous_end)..byte_at(end)]);
        }
        previous_end = end;
    };
    let is_newline = |c: Option<char>| matches!(c, Some('\r' | '\n'));

    let mut position = 0;
    while position < length {
        let current = character(position).unwrap_or('\0');
        let current_flags = flags_at(position);

        if current == '\'' && position + 1 < length {
            let next = character(position + 1).map(|c| c.to_ascii_lowercase());
            if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                position += 2;
                emit(position, words);
                continue;
            }
            if position + 2 < length {
                let after = character(position + 2).map(|c| c.to_ascii_lowercase());
                if matches!(
                    (next, after),
                    (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                ) {
                    position += 3;
                    emit(position, words);
                    continue;
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(current == '\r' || current == '\n' || current_flags.number)
            && (current_flags.letter || flags_at(position + 1).letter)
        {
            position += 1;
            while flags_at(position).letter {
                position += 1;
            }
            emit(position, words);
            continue;
        }

        // \p{N}{1,max_digits}
        if current_flags.number {
            let mut run_start = position;
            while flags_at(position).number {
                position += 1;
                if position - run_start >= max_digits {
                    emit(position, words);
                    run_start = position;
                }
            }
            emit(position, words);
            continue;
        }

        // <space>?[^\s\p{L}\p{N}]+[\r\n]*
        let other = |f: Flags| !(f.whitespace || f.letter || f.number) && f.defined;
        let lead = if current == ' ' {
            flags_at(position + 1)
        } else {
            current_flags
        };
        if other(lead) && current_flags.defined {
            position += usize::from(current == ' ');
            while other(flags_at(position)) {
                position += 1;
            }
            while is_newline(character(position)) {
                position += 1;
            }
            emit(position, words);
            continue;
        }

        let mut whitespace = 0;
        let mut last_newline_end = 0;
        while flags_at(position + whitespace).whitespace {
            if is_newline(character(position + whitespace)) {
                last_newline_end = position + whitespace + 1;
            }
            whitespace += 1;
        }
        // \s*[\r\n]+
        if last_newline_end > 0 {
            position = last_newline_end;
            emit(position, words);
            continue;
        }
        // \s+(?!\S)
        if whitespace > 1 && position + whitespace < length {
            position += whitespace - 1;
            emit(position, words);
            continue;
        }
        if whitespace > 0 {
            position += whitespace;
            emit(position, words);
            continue;
        }
        position += 1;
        emit(position, words);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_pattern_examples() {
        let split = |text| PreTokenizer::DigitsThenGpt2.split(text);
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(split("I'm here"), ["I", "'m", " here"]);
        assert_eq!(split("a  b"), ["a", " ", " b"]);
        assert_eq!(split("x 123!"), ["x", " ", "1", "2", "3", "!"]);
        assert_eq!(split("end   "), ["end", "   "]);
        assert_eq!(split("héllo, wörld?!"), ["héllo", ",", " wörld", "?!"]);
        assert_eq!(split("\n\nHi"), ["\n", "\n", "Hi"]);
    }
}
