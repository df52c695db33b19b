//! Reading GGUF model files for Flotilla.
//!
//! The controller parses the header of every uploaded model *while the upload streams*, to
//! reject non-models, truncated files and unsupported quantizations before a byte lands in
//! the cache, and to show architecture, parameter count and a memory estimate. The engine
//! maps the same file and slices tensor data out of it. Both therefore use this one parser,
//! which reads sequentially ([`read_header`] takes any `Read`, no `Seek`) and treats its
//! input as hostile: it never panics and never allocates more than the input justifies.
//!
//! Nothing is persisted here; a [`GgufHeader`] lives only in memory.

mod error;
mod ggml_type;
mod header;
mod metadata;
mod reader;

#[cfg(feature = "mmap")]
mod mapped;
#[cfg(any(test, feature = "writer"))]
pub mod writer;

#[cfg(test)]
mod tests;

pub use error::GgufError;
pub use ggml_type::GgmlType;
pub use header::{GgufHeader, TensorInfo};
#[cfg(feature = "mmap")]
pub use mapped::GgufFile;
pub use metadata::{Metadata, MetadataValue};
pub use reader::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_ELEMENTS, MAX_METADATA_ENTRIES, MAX_METADATA_MEMORY,
    MAX_STRING_BYTES, MAX_TENSOR_DIMS, MAX_TENSORS, read_header,
};
#[cfg(any(test, feature = "writer"))]
pub use writer::GgufBuilder;
