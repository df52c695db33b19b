//! Splitting text into words before BPE, exactly as llama.cpp does for GPT-2-style
//! vocabularies. llama.cpp does not run the GPT-2 regex through a regex engine; it uses a
//! hand-written matcher (`unicode_regex_split_custom_gpt2`) whose behaviour at segment
//! boundaries and for `\s+(?!\S)` we reproduce here, so token ids match the reference.

use unicode_general_category::{GeneralCategory, get_general_category};

/// How a vocabulary splits words (GGUF `tokenizer.ggml.pre`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 regex.
    Gpt2,
    /// Every digit on its own, then the GPT-2 regex (SmolLM, StarCoder).
    DigitsThenGpt2,
}

impl PreTokenizer {
    /// Maps a `tokenizer.ggml.pre` name; `None` for pre-tokenizers not implemented here.
    pub fn from_gguf_name(name: Option<&str>) -> Option<PreTokenizer> {
        match name {
            None | Some("default") | Some("gpt2") | Some("gpt-2") => Some(PreTokenizer::Gpt2),
            Some("smollm") | Some("starcoder") | Some("refact") => {
                Some(PreTokenizer::DigitsThenGpt2)
            }
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
        }
        words
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
        defined: category != GeneralCategory::Unassigned || character.is_whitespace(),
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
