//! The one error type of this crate. Every message names the thing that was wrong so an
//! operator reading a rejected upload's error knows which field of which file failed.

/// Everything that can go wrong while reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The underlying reader failed for a reason other than running out of bytes.
    #[error("i/o error while reading gguf: {0}")]
    Io(#[source] std::io::Error),
    /// The first four bytes are not `GGUF`.
    #[error("bad gguf magic: expected 0x46554747 (\"GGUF\"), found {found:#010x}")]
    BadMagic { found: u32 },
    /// Only versions 2 and 3 (little-endian) are understood.
    #[error("unsupported gguf version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// The input ended before `what` could be read completely.
    #[error("gguf file is truncated: ended while reading {what}")]
    Truncated { what: String },
    /// A tensor names a ggml type id this crate does not know.
    #[error("unknown ggml tensor type id {0}")]
    UnknownGgmlType(u32),
    /// A metadata value names a type id this crate does not know.
    #[error("unknown gguf metadata value type id {0}")]
    UnknownValueType(u32),
    /// A size or count exceeds the sanity limits this reader enforces against hostile input.
    #[error("gguf {what} is too large: {value} exceeds the limit of {limit}")]
    TooLarge {
        what: String,
        value: u64,
        limit: u64,
    },
    /// The bytes are well-formed enough to read but describe something impossible.
    #[error("invalid gguf: {0}")]
    Invalid(String),
}

impl GgufError {
    /// Converts an I/O error, mapping a premature end of input to [`GgufError::Truncated`].
    pub(crate) fn from_io(error: std::io::Error, what: impl Into<String>) -> Self {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            GgufError::Truncated { what: what.into() }
        } else {
            GgufError::Io(error)
        }
    }
}

impl From<std::io::Error> for GgufError {
    fn from(error: std::io::Error) -> Self {
        GgufError::from_io(error, "data")
    }
}
