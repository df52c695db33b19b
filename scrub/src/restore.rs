//! Putting originals back into an answer, whole or streamed: a placeholder
//! the model splits over two chunks (`<EMA` then `IL_1>`) is held back
//! until it is complete, and nothing else is.

use std::sync::LazyLock;

use regex::Regex;

use crate::Placeholders;

/// The longest placeholder shape held back while waiting for its end.
const LONGEST_PLACEHOLDER: usize = 24;

static SHAPE: LazyLock<Regex> = LazyLock::new(|| {
    // A constant pattern, compiled by the tests.
    Regex::new(r"<[A-Z]{2,10}_[0-9]{1,6}>").expect("a valid pattern")
});

/// Every placeholder-shaped piece of `text`.
pub(crate) fn placeholder_shapes(text: &str) -> impl Iterator<Item = &str> {
    SHAPE.find_iter(text).map(|found| found.as_str())
}

/// Restores placeholders in a stream of chunks (see [`Placeholders::restorer`]).
#[derive(Debug)]
pub struct Restorer<'a> {
    placeholders: &'a Placeholders,
    pending: String,
}

impl<'a> Restorer<'a> {
    pub(crate) fn new(placeholders: &'a Placeholders) -> Self {
        Self {
            placeholders,
            pending: String::new(),
        }
    }

    /// What of `chunk` (after anything held back) can be passed on now.
    pub fn push(&mut self, chunk: &str) -> String {
        self.pending.push_str(chunk);
        // Hold back a trailing `<…` that may still become a placeholder.
        let held = match self.pending.rfind('<') {
            Some(at)
                if !self.pending[at..].contains('>')
                    && self.pending.len() - at < LONGEST_PLACEHOLDER
                    && self.pending[at + 1..]
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') =>
            {
                at
            }
            _ => self.pending.len(),
        };
        let ready: String = self.pending.drain(..held).collect();
        self.replace(&ready)
    }

    /// The rest, at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.replace(&rest)
    }

    fn replace(&self, text: &str) -> String {
        SHAPE
            .replace_all(text, |captures: &regex::Captures<'_>| {
                let shape = &captures[0];
                self.placeholders
                    .original(shape)
                    .unwrap_or(shape)
                    .to_owned()
            })
            .into_owned()
    }
}
