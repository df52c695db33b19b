//! Every weight format the engine reads, dequantized block for block by the engine and by
//! an independent implementation: the `gguf` Python package (`gguf.quants`, llama.cpp's own
//! Python reference for the formats), on random blocks with valid f16 scales.
//!
//! The engine's expressions follow ggml's term by term, so the values must be *equal*
//! (compared as f32 with `==`, which also equates 0.0 and -0.0).
//!
//! Needs a Python with `gguf` and numpy: `$FLOTILLA_PYTHON` (scripts/test.sh sets it and
//! then the test must run), else `<workspace>/.venv/bin/python`; outside CI the test
//! skips loudly when neither has the package.

mod common;

use std::path::PathBuf;

use flotilla_engine::kernels::{WeightFormat, dequantize_row};
use half::f16;

/// The formats and their names in `gguf.GGMLQuantizationType`.
const FORMATS: [(WeightFormat, &str); 12] = [
    (WeightFormat::F16, "F16"),
    (WeightFormat::BF16, "BF16"),
    (WeightFormat::Q8_0, "Q8_0"),
    (WeightFormat::Q4_0, "Q4_0"),
    (WeightFormat::Q4_1, "Q4_1"),
    (WeightFormat::Q5_0, "Q5_0"),
    (WeightFormat::Q5_1, "Q5_1"),
    (WeightFormat::Q2_K, "Q2_K"),
    (WeightFormat::Q3_K, "Q3_K"),
    (WeightFormat::Q4_K, "Q4_K"),
    (WeightFormat::Q5_K, "Q5_K"),
    (WeightFormat::Q6_K, "Q6_K"),
];

/// Byte offsets of each block's f16 scale fields (ggml-common.h); every other byte of a
/// block is a valid quant whatever its value, but a random f16 may be NaN or infinite.
fn scale_offsets(format: WeightFormat) -> &'static [usize] {
    match format {
        WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q5_0 => &[0],
        WeightFormat::Q4_1 | WeightFormat::Q5_1 | WeightFormat::Q4_K | WeightFormat::Q5_K => {
            &[0, 2]
        }
        WeightFormat::Q2_K => &[80, 82],
        WeightFormat::Q3_K => &[108],
        WeightFormat::Q6_K => &[208],
        // Plain f16/bf16 values: every element is a scale of its own.
        WeightFormat::F16 | WeightFormat::BF16 | WeightFormat::F32 => &[],
    }
}

/// xorshift64*: deterministic bytes without a dependency.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }

    fn finite_f16(&mut self) -> [u8; 2] {
        // Any finite f16 (normal, subnormal, zero, either sign): redraw NaN and infinity.
        loop {
            let bits = u16::from_le_bytes([self.next(), self.next()]);
            if f16::from_bits(bits).is_finite() {
                return bits.to_le_bytes();
            }
        }
    }
}

fn random_blocks(format: WeightFormat, blocks: usize, bytes: &mut Bytes) -> Vec<u8> {
    let mut data: Vec<u8> = (0..blocks * format.block_bytes())
        .map(|_| bytes.next())
        .collect();
    for block in data.chunks_exact_mut(format.block_bytes()) {
        let offsets: Vec<usize> = match format {
            WeightFormat::F16 => vec![0],
            _ => scale_offsets(format).to_vec(),
        };
        for offset in offsets {
            block[offset..offset + 2].copy_from_slice(&bytes.finite_f16());
        }
        if format == WeightFormat::BF16 {
            // Clearing the exponent's top bit keeps a bf16 finite (no NaN or infinity).
            block[1] &= 0xBF;
        }
    }
    data
}

fn python_with_gguf() -> Option<PathBuf> {
    let required = std::env::var_os("FLOTILLA_PYTHON").is_some();
    let python = std::env::var_os("FLOTILLA_PYTHON").map_or_else(
        || common::workspace_root().join(".venv/bin/python"),
        PathBuf::from,
    );
    let usable = std::process::Command::new(&python)
        .args(["-c", "import gguf.quants, numpy"])
        .output()
        .is_ok_and(|output| output.status.success());
    if usable {
        return Some(python);
    }
    assert!(
        !required,
        "FLOTILLA_PYTHON={} has no `gguf` package (scripts/ensure-python.sh installs it)",
        python.display()
    );
    eprintln!(
        "\n*** SKIP dequantization against gguf-py: no python with the gguf package at {} ***\n",
        python.display()
    );
    None
}

#[test]
fn every_format_dequantizes_like_gguf_py() {
    let Some(python) = python_with_gguf() else {
        return;
    };
    let directory = std::env::temp_dir().join(format!(
        "flotilla-dequantize-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos())
    ));
    std::fs::create_dir_all(&directory).expect("create the scratch directory");
    let mut bytes = Bytes(0x0123_4567_89AB_CDEF);
    let mut inputs = Vec::new();
    for (format, name) in FORMATS {
        // 64 blocks per format: 2,048 or 16,384 elements, a few kB each.
        let data = random_blocks(format, 64, &mut bytes);
        std::fs::write(directory.join(format!("{name}.bin")), &data).expect("write blocks");
        inputs.push((format, name, data));
    }
    let output = std::process::Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/gguf_dequantize.py"))
        .arg(&directory)
        .args(FORMATS.iter().map(|(_, name)| name))
        .output()
        .expect("run gguf_dequantize.py");
    assert!(
        output.status.success(),
        "gguf_dequantize.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "reference: {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );

    let mut failures = Vec::new();
    for (format, name, data) in inputs {
        let expected: Vec<f32> = std::fs::read(directory.join(format!("{name}.f32")))
            .expect("read the reference values")
            .chunks_exact(4)
            .map(|word| f32::from_le_bytes([word[0], word[1], word[2], word[3]]))
            .collect();
        let elements = data.len() / format.block_bytes() * format.block_elements();
        assert_eq!(expected.len(), elements, "{name}: element count");
        let mut ours = vec![0.0f32; elements];
        dequantize_row(format, &data, &mut ours);
        let mismatches: Vec<usize> = (0..elements)
            .filter(|&index| ours[index] != expected[index])
            .collect();
        if let Some(&first) = mismatches.first() {
            let block = first / format.block_elements();
            failures.push(format!(
                "{name}: {} of {elements} values differ; first at element {first} (block {block}): ours {} gguf {}",
                mismatches.len(),
                ours[first],
                expected[first]
            ));
        }
    }
    std::fs::remove_dir_all(&directory).ok();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
