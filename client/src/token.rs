//! The API bearer token, kept so that it cannot end up in an error message
//! or a log line by accident: its `Debug` is redacted and it has no
//! `Display`. Nothing here is persisted.

use std::fmt;

/// An API bearer token. Deliberately has no `Display`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token from any source, with surrounding whitespace (the newline of a
    /// `cat`ed token file) removed; blank means "no token".
    pub fn new(raw: &str) -> Option<Self> {
        let trimmed = raw.trim();
        (!trimmed.is_empty()).then(|| Self(trimmed.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_and_blank_means_none() {
        assert_eq!(
            Token::new("  abc\n").map(|t| t.expose().to_owned()),
            Some("abc".to_owned())
        );
        assert!(Token::new(" \n").is_none());
        assert_eq!(
            format!("{:?}", Token::new("secret")),
            "Some(Token(<redacted>))"
        );
    }
}
