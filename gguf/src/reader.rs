//! The sequential GGUF header parser. It reads from any `Read` without seeking because the
//! controller validates uploads while their bytes stream in. The input is hostile: every
//! length is checked against a limit before anything is allocated for it, vectors grow
//! with the bytes actually read (never `with_capacity(untrusted)`), and the memory the
//! parsed metadata may occupy is budgeted twice: per value ([`MAX_VALUE_MEMORY`]) and for
//! the whole header ([`MAX_METADATA_MEMORY`]). An array of fixed-size elements is charged
//! in full before its first element is read, so a small file declaring a huge array is
//! refused before it costs anything (each element is a [`MetadataValue`] of 32 bytes: an
//! 8 MiB file of one `u8` array would otherwise occupy 256 MiB).

use std::collections::HashSet;
use std::io::Read;

use crate::{GgmlType, GgufError, GgufHeader, Metadata, MetadataValue, TensorInfo};

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest accepted string (keys, values, tensor names).
pub const MAX_STRING_BYTES: u64 = 1 << 20;
/// Most metadata entries accepted.
pub const MAX_METADATA_ENTRIES: u64 = 1 << 16;
/// Most tensors accepted (large MoE models have a few thousand).
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most elements in one metadata array (vocabularies are a few hundred thousand).
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 24;
/// Memory budget for all parsed metadata values together. Real models need a few tens of
/// MiB (a 262k-token vocabulary with scores and token types: about 35 MiB).
pub const MAX_METADATA_MEMORY: u64 = 256 << 20;
/// Memory budget for one metadata value (an array counts all its elements). The largest
/// real values, vocabularies and merge lists of a few hundred thousand strings, take
/// about 20 MiB.
pub const MAX_VALUE_MEMORY: u64 = 64 << 20;
/// Most dimensions per tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_TENSOR_DIMS: u32 = 4;
/// Nesting depth of arrays inside arrays.
const MAX_ARRAY_DEPTH: u32 = 4;

/// Reads a GGUF (v2 or v3, little-endian) header: metadata and tensor infos.
///
/// The reader is consumed sequentially and is left positioned right after the last tensor
/// info; the padding up to [`GgufHeader::data_offset`] is not consumed. Reads are small,
/// so pass a buffered reader when the source is a file or socket.
pub fn read_header<R: Read>(reader: R) -> Result<GgufHeader, GgufError> {
    let mut parser = Parser {
        reader,
        position: 0,
        metadata_memory: 0,
        value_memory: 0,
    };
    parser.header()
}

struct Parser<R> {
    reader: R,
    position: u64,
    metadata_memory: u64,
    /// Memory of the metadata value being read (reset per entry).
    value_memory: u64,
}

/// Whether values of this type id occupy one [`MetadataValue`] and nothing else.
fn fixed_size(type_id: u32) -> bool {
    matches!(type_id, 0..=7 | 10..=12)
}

impl<R: Read> Parser<R> {
    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let mut buffer = [0u8; N];
        self.reader
            .read_exact(&mut buffer)
            .map_err(|error| GgufError::from_io(error, what()))?;
        self.position += N as u64;
        Ok(buffer)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn charge(&mut self, bytes: u64) -> Result<(), GgufError> {
        self.value_memory = self.value_memory.saturating_add(bytes);
        if self.value_memory > MAX_VALUE_MEMORY {
            return Err(GgufError::TooLarge {
                what: "one metadata value (in memory)".into(),
                value: self.value_memory,
                limit: MAX_VALUE_MEMORY,
            });
        }
        self.metadata_memory = self.metadata_memory.saturating_add(bytes);
        if self.metadata_memory > MAX_METADATA_MEMORY {
            return Err(GgufError::TooLarge {
                what: "metadata (in memory)".into(),
                value: self.metadata_memory,
                limit: MAX_METADATA_MEMORY,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let length = self.u64(&|| format!("length of {}", what()))?;
        if length > MAX_STRING_BYTES {
            return Err(GgufError::TooLarge {
                what: format!("string length of {}", what()),
                value: length,
                limit: MAX_STRING_BYTES,
            });
        }
        self.charge(length + 24)?;
        // Bounded by MAX_STRING_BYTES, and exact: no doubling slack.
        let mut buffer = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
        // `take` bounds the read to what the file really holds, so a lying length cannot
        // make us allocate more than the input provides.
        let read = (&mut self.reader)
            .take(length)
            .read_to_end(&mut buffer)
            .map_err(|error| GgufError::from_io(error, what()))?;
        self.position += read as u64;
        if (read as u64) < length {
            return Err(GgufError::Truncated { what: what() });
        }
        String::from_utf8(buffer)
            .map_err(|_| GgufError::Invalid(format!("{} is not valid utf-8", what())))
    }

    fn value(
        &mut self,
        type_id: u32,
        depth: u32,
        what: &dyn Fn() -> String,
    ) -> Result<MetadataValue, GgufError> {
        self.charge(std::mem::size_of::<MetadataValue>() as u64)?;
        self.value_charged(type_id, depth, what)
    }

    /// A value whose own [`MetadataValue`] was charged already.
    fn value_charged(
        &mut self,
        type_id: u32,
        depth: u32,
        what: &dyn Fn() -> String,
    ) -> Result<MetadataValue, GgufError> {
        Ok(match type_id {
            0 => MetadataValue::U8(u8::from_le_bytes(self.bytes(what)?)),
            1 => MetadataValue::I8(i8::from_le_bytes(self.bytes(what)?)),
            2 => MetadataValue::U16(u16::from_le_bytes(self.bytes(what)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.bytes(what)?)),
            4 => MetadataValue::U32(u32::from_le_bytes(self.bytes(what)?)),
            5 => MetadataValue::I32(i32::from_le_bytes(self.bytes(what)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.bytes(what)?)),
            7 => match u8::from_le_bytes(self.bytes(what)?) {
                0 => MetadataValue::Bool(false),
                1 => MetadataValue::Bool(true),
                other => {
                    return Err(GgufError::Invalid(format!(
                        "{} is a bool with byte value {other}",
                        what()
                    )));
                }
            },
            8 => MetadataValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Invalid(format!(
                        "{} nests arrays deeper than {MAX_ARRAY_DEPTH}",
                        what()
                    )));
                }
                let element_type = self.u32(&|| format!("element type of {}", what()))?;
                let count = self.u64(&|| format!("element count of {}", what()))?;
                if count > MAX_ARRAY_ELEMENTS {
                    return Err(GgufError::TooLarge {
                        what: format!("element count of {}", what()),
                        value: count,
                        limit: MAX_ARRAY_ELEMENTS,
                    });
                }
                let fixed = fixed_size(element_type);
                if fixed {
                    // Charged whole before reading: a lying count fails here.
                    self.charge(count.saturating_mul(std::mem::size_of::<MetadataValue>() as u64))?;
                }
                // Grown in bounded steps as elements arrive, never to the declared
                // count at once: a truncated file cannot make us allocate for it.
                const STEP: usize = 1 << 16;
                let mut values = Vec::new();
                for index in 0..count {
                    if values.len() == values.capacity() {
                        values.reserve_exact(
                            STEP.min(usize::try_from(count - index).unwrap_or(STEP)),
                        );
                    }
                    let element = &|| format!("element {index} of {}", what());
                    values.push(if fixed {
                        self.value_charged(element_type, depth + 1, element)?
                    } else {
                        self.value(element_type, depth + 1, element)?
                    });
                }
                MetadataValue::Array(values)
            }
            10 => MetadataValue::U64(u64::from_le_bytes(self.bytes(what)?)),
            11 => MetadataValue::I64(i64::from_le_bytes(self.bytes(what)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.bytes(what)?)),
            other => return Err(GgufError::UnknownValueType(other)),
        })
    }

    fn header(&mut self) -> Result<GgufHeader, GgufError> {
        let magic = self.u32(&|| "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = self.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = self.u64(&|| "tensor count".into())?;
        if tensor_count > MAX_TENSORS {
            return Err(GgufError::TooLarge {
                what: "tensor count".into(),
                value: tensor_count,
                limit: MAX_TENSORS,
            });
        }
        let metadata_count = self.u64(&|| "metadata entry count".into())?;
        if metadata_count > MAX_METADATA_ENTRIES {
            return Err(GgufError::TooLarge {
                what: "metadata entry count".into(),
                value: metadata_count,
                limit: MAX_METADATA_ENTRIES,
            });
        }

        let mut metadata = Metadata::default();
        for index in 0..metadata_count {
            self.value_memory = 0;
            let key = self.string(&|| format!("key of metadata entry {index}"))?;
            let type_id = self.u32(&|| format!("value type of metadata key {key:?}"))?;
            let value = self.value(type_id, 0, &|| format!("value of metadata key {key:?}"))?;
            if !metadata.insert(key.clone(), value) {
                return Err(GgufError::Invalid(format!(
                    "duplicate metadata key {key:?}"
                )));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(value) => match value.as_u64() {
                Some(alignment) if alignment > 0 && alignment.is_power_of_two() => alignment,
                _ => {
                    return Err(GgufError::Invalid(format!(
                        "general.alignment must be a power of two, found {value:?}"
                    )));
                }
            },
        };

        let mut tensors = Vec::new();
        let mut names = HashSet::new();
        for index in 0..tensor_count {
            let tensor = self.tensor_info(index, alignment)?;
            if !names.insert(tensor.name.clone()) {
                return Err(GgufError::Invalid(format!(
                    "duplicate tensor name {:?}",
                    tensor.name
                )));
            }
            tensors.push(tensor);
        }
        check_tensor_layout(&tensors)?;

        let data_offset = self
            .position
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| GgufError::Invalid("tensor data offset overflows".into()))?;
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    fn tensor_info(&mut self, index: u64, alignment: u64) -> Result<TensorInfo, GgufError> {
        let name = self.string(&|| format!("name of tensor {index}"))?;
        let dim_count = self.u32(&|| format!("dimension count of tensor {name:?}"))?;
        if dim_count == 0 || dim_count > MAX_TENSOR_DIMS {
            return Err(GgufError::Invalid(format!(
                "tensor {name:?} has {dim_count} dimensions (expected 1 to {MAX_TENSOR_DIMS})"
            )));
        }
        let mut dims = Vec::new();
        for dim in 0..dim_count {
            dims.push(self.u64(&|| format!("dimension {dim} of tensor {name:?}"))?);
        }
        let type_id = self.u32(&|| format!("type of tensor {name:?}"))?;
        let ggml_type = GgmlType::from_u32(type_id)?;
        let offset = self.u64(&|| format!("data offset of tensor {name:?}"))?;
        let tensor = TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        };
        let elements = tensor.checked_element_count().ok_or_else(|| {
            GgufError::Invalid(format!(
                "element count of tensor {:?} with dimensions {:?} overflows",
                tensor.name, tensor.dims
            ))
        })?;
        if elements > i64::MAX as u64 {
            return Err(GgufError::Invalid(format!(
                "tensor {:?} has too many elements ({elements})",
                tensor.name
            )));
        }
        if !tensor.dims[0].is_multiple_of(ggml_type.block_size()) {
            return Err(GgufError::Invalid(format!(
                "tensor {:?} has row length {} which is not a multiple of the {} block size {}",
                tensor.name,
                tensor.dims[0],
                ggml_type.name(),
                ggml_type.block_size()
            )));
        }
        if tensor.checked_byte_size().is_none() {
            return Err(GgufError::Invalid(format!(
                "byte size of tensor {:?} overflows",
                tensor.name
            )));
        }
        if offset % alignment != 0 {
            return Err(GgufError::Invalid(format!(
                "tensor {:?} data offset {offset} is not a multiple of the alignment {alignment}",
                tensor.name
            )));
        }
        Ok(tensor)
    }
}

/// Tensors must not overlap and their ends must not overflow.
fn check_tensor_layout(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut spans = Vec::new();
    for tensor in tensors {
        let size = tensor.byte_size();
        let end = tensor.offset.checked_add(size).ok_or_else(|| {
            GgufError::Invalid(format!("end of tensor {:?} overflows", tensor.name))
        })?;
        spans.push((tensor.offset, end, tensor.name.as_str()));
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let (_, previous_end, previous_name) = pair[0];
        let (start, _, name) = pair[1];
        if start < previous_end {
            return Err(GgufError::Invalid(format!(
                "tensor {name:?} (offset {start}) overlaps tensor {previous_name:?} which ends at {previous_end}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// A GGUF v3 header with one metadata entry, an array of `count` u8
    /// (`present` of them actually in the file).
    fn one_u8_array(count: u64, present: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes()); // tensors
        bytes.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
        let key = b"hostile.array";
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&9u32.to_le_bytes()); // array
        bytes.extend_from_slice(&0u32.to_le_bytes()); // of u8
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.resize(bytes.len() + present, 7);
        bytes
    }

    #[test]
    fn a_huge_fixed_size_array_is_refused_before_it_is_read() {
        // 8 Mi elements in an 8 MiB file: 256 MiB as MetadataValues.
        let count = 8 << 20;
        let file = one_u8_array(count, count as usize);
        let error = read_header(file.as_slice()).expect_err("refused");
        assert!(
            matches!(&error, GgufError::TooLarge { what, limit, .. }
                if what.contains("one metadata value") && *limit == MAX_VALUE_MEMORY),
            "{error}"
        );
    }

    #[test]
    fn arrays_within_the_budget_still_parse() {
        let count = 300_000;
        let header = read_header(one_u8_array(count, count as usize).as_slice()).expect("parses");
        match header.metadata.get("hostile.array") {
            Some(MetadataValue::Array(values)) => assert_eq!(values.len(), count as usize),
            other => panic!("unexpected {other:?}"),
        }
        // A count the file does not hold is truncation, not an allocation.
        assert!(matches!(
            read_header(one_u8_array(1 << 20, 10).as_slice()),
            Err(GgufError::Truncated { .. })
        ));
    }
}
