//! Reader tests over files made by the writer: round trips, derived facts, and hostile
//! input (random mutations and truncations must give errors, never panics).

use proptest::prelude::*;

use crate::{GgmlType, GgufBuilder, GgufError, MetadataValue, read_header};

fn tiny_llama() -> GgufBuilder {
    GgufBuilder::new()
        .metadata_str("general.architecture", "llama")
        .metadata_str("general.name", "tiny")
        .metadata_u32("llama.context_length", 256)
        .metadata_u32("llama.block_count", 2)
        .metadata_u32("llama.embedding_length", 64)
        .metadata_u32("llama.attention.head_count", 4)
        .metadata_u32("llama.attention.head_count_kv", 2)
        .metadata_str_array("tokenizer.ggml.tokens", &["a", "b", "é"])
        .metadata_f32_array("tokenizer.ggml.scores", &[0.0, -1.0, 2.5])
        .tensor(
            "token_embd.weight",
            &[64, 3],
            GgmlType::F32,
            &[1u8; 64 * 3 * 4],
        )
        .tensor(
            "blk.0.attn_q.weight",
            &[64, 64],
            GgmlType::Q4_1,
            &[2u8; 64 * 2 * 20],
        )
        .tensor(
            "blk.1.attn_q.weight",
            &[64, 64],
            GgmlType::Q4_1,
            &[3u8; 64 * 2 * 20],
        )
        .tensor("output_norm.weight", &[64], GgmlType::F32, &[4u8; 256])
}

#[test]
fn round_trip_reads_everything_back() {
    let bytes = tiny_llama().build();
    let header = read_header(&bytes[..]).expect("valid file");
    assert_eq!(header.version, 3);
    assert_eq!(header.architecture(), Some("llama"));
    assert_eq!(header.name(), Some("tiny"));
    assert_eq!(header.context_length(), Some(256));
    assert_eq!(header.alignment, 32);
    assert_eq!(header.data_offset % 32, 0);
    assert_eq!(header.tensors.len(), 4);
    assert_eq!(header.parameter_count(), 64 * 3 + 2 * 64 * 64 + 64);
    assert_eq!(header.required_file_size(), bytes.len() as u64);
    assert_eq!(header.quantization().as_deref(), Some("Q4_1"));
    let tokens = header
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(MetadataValue::as_array)
        .expect("tokens array");
    assert_eq!(tokens[2].as_str(), Some("é"));
    assert_eq!(header.metadata.len(), 9);
    let first_key = header.metadata.iter().next().map(|(key, _)| key);
    assert_eq!(first_key, Some("general.architecture"));
    // Each tensor's bytes sit where the header says.
    let q = header.tensor("blk.1.attn_q.weight").expect("tensor");
    let start = (header.data_offset + q.offset) as usize;
    assert_eq!(bytes[start], 3);
    assert_eq!(q.byte_size(), 64 * 2 * 20);
}

#[test]
fn file_type_names_the_quantization() {
    let bytes = tiny_llama().metadata_u32("general.file_type", 15).build();
    let header = read_header(&bytes[..]).expect("valid file");
    assert_eq!(header.quantization().as_deref(), Some("Q4_K_M"));
}

#[test]
fn memory_estimate_counts_kv_cache() {
    let header = read_header(&tiny_llama().build()[..]).expect("valid file");
    let small = header
        .memory_estimate(16)
        .expect("hyper-parameters present");
    let large = header
        .memory_estimate(1016)
        .expect("hyper-parameters present");
    // 2 layers * 1000 tokens * (k+v) * 2 kv heads * 16 head dim * 2 bytes, plus activations.
    assert_eq!(large - small, 2 * 1000 * 2 * 2 * 16 * 2 + 1000 * 64 * 16);
    let bare = GgufBuilder::new().build();
    assert_eq!(
        read_header(&bare[..]).expect("valid").memory_estimate(16),
        None
    );
}

#[test]
fn version_two_and_custom_alignment_are_read() {
    let bytes = tiny_llama().version(2).alignment(64).build();
    let header = read_header(&bytes[..]).expect("valid file");
    assert_eq!(header.version, 2);
    assert_eq!(header.alignment, 64);
    assert_eq!(header.data_offset % 64, 0);
    assert_eq!(header.required_file_size(), bytes.len() as u64);
}

#[test]
fn bad_magic_and_versions_are_rejected() {
    let mut bytes = tiny_llama().build();
    bytes[0] = b'X';
    assert!(matches!(
        read_header(&bytes[..]),
        Err(GgufError::BadMagic { .. })
    ));
    let bytes = tiny_llama().version(1).build();
    assert!(matches!(
        read_header(&bytes[..]),
        Err(GgufError::UnsupportedVersion(1))
    ));
}

#[test]
fn every_truncation_of_the_header_is_reported_as_truncated() {
    let bytes = tiny_llama().build_header_only();
    for length in 0..bytes.len() {
        match read_header(&bytes[..length]) {
            Err(GgufError::Truncated { what }) => assert!(!what.is_empty()),
            other => panic!("truncation at {length} gave {other:?}"),
        }
    }
    let header = read_header(&bytes[..]).expect("complete header");
    assert!(header.required_file_size() > bytes.len() as u64);
}

#[test]
fn non_power_of_two_alignment_is_rejected() {
    let bytes = tiny_llama().alignment(48).build_header_only();
    assert!(matches!(
        read_header(&bytes[..]),
        Err(GgufError::Invalid(_))
    ));
}

#[test]
fn huge_lengths_fail_without_allocating() {
    // A string that claims to be 2^40 bytes long.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&crate::GGUF_MAGIC.to_le_bytes());
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        read_header(&bytes[..]),
        Err(GgufError::TooLarge { .. })
    ));

    // An array that claims 16M u64 elements but holds none.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&crate::GGUF_MAGIC.to_le_bytes());
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.push(b'k');
    bytes.extend_from_slice(&9u32.to_le_bytes());
    bytes.extend_from_slice(&10u32.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 24).to_le_bytes());
    // 128 MiB of u64s is over the per-value budget: refused before reading.
    assert!(matches!(
        read_header(&bytes[..]),
        Err(GgufError::TooLarge { .. } | GgufError::Truncated { .. })
    ));
}

#[test]
fn overlapping_and_unaligned_tensors_are_rejected() {
    let header_bytes = tiny_llama().build_header_only();
    let header = read_header(&header_bytes[..]).expect("valid");
    // Point the second tensor's offset at the first tensor's data.
    let name = b"blk.0.attn_q.weight";
    let position = header_bytes
        .windows(name.len())
        .position(|window| window == name)
        .expect("name present");
    // name, n_dims u32, 2 dims u64, type u32, then offset u64.
    let offset_at = position + name.len() + 4 + 16 + 4;
    let mut overlapping = header_bytes.clone();
    overlapping[offset_at..offset_at + 8].copy_from_slice(&32u64.to_le_bytes());
    assert!(matches!(
        read_header(&overlapping[..]),
        Err(GgufError::Invalid(_))
    ));
    let mut unaligned = header_bytes;
    unaligned[offset_at..offset_at + 8]
        .copy_from_slice(&(header.tensors[1].offset + 1).to_le_bytes());
    assert!(matches!(
        read_header(&unaligned[..]),
        Err(GgufError::Invalid(_))
    ));
}

#[test]
fn unknown_tensor_type_is_an_error() {
    let bytes = tiny_llama().build_header_only();
    let name = b"output_norm.weight";
    let position = bytes
        .windows(name.len())
        .position(|window| window == name)
        .expect("name present");
    let type_at = position + name.len() + 4 + 8;
    let mut corrupted = bytes.clone();
    corrupted[type_at..type_at + 4].copy_from_slice(&4u32.to_le_bytes());
    assert!(matches!(
        read_header(&corrupted[..]),
        Err(GgufError::UnknownGgmlType(4))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random byte mutations and truncations never panic; whatever parses is self-consistent.
    #[test]
    fn mutated_files_never_panic(
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = tiny_llama().build();
        for (index, value) in mutations {
            let position = index.index(bytes.len());
            bytes[position] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(header) = read_header(&bytes[..]) {
            prop_assert!(header.data_offset % header.alignment == 0);
            let _ = header.quantization();
            let _ = header.memory_estimate(4096);
            let _ = header.required_file_size();
        }
    }

    /// Fully random input never panics.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut prefixed = crate::GGUF_MAGIC.to_le_bytes().to_vec();
        prefixed.extend_from_slice(&3u32.to_le_bytes());
        prefixed.extend_from_slice(&bytes);
        let _ = read_header(&prefixed[..]);
    }
}

#[cfg(feature = "mmap")]
#[test]
fn mapped_file_slices_tensor_data() {
    let directory = std::env::temp_dir().join(format!("flotilla-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temp dir");
    let path = directory.join("tiny.gguf");
    let bytes = tiny_llama().build();
    std::fs::write(&path, &bytes).expect("write fixture");
    let file = crate::GgufFile::open(&path).expect("open");
    let (info, data) = file
        .tensor_by_name("output_norm.weight")
        .expect("tensor present");
    assert_eq!(info.ggml_type, GgmlType::F32);
    assert_eq!(data.expect("in bounds"), &[4u8; 256][..]);
    std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("write truncated");
    assert!(matches!(
        crate::GgufFile::open(&path),
        Err(GgufError::Truncated { .. })
    ));
    std::fs::remove_dir_all(&directory).expect("cleanup");
}
