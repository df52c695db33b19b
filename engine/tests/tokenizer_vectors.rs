//! Tokenizer conformance against llama.cpp's own vectors: for every vocabulary in
//! llama.cpp's `models/ggml-vocab-*.gguf` whose algorithm and pre-tokenizer this engine
//! claims, every `.inp` text tokenizes to the ids in `.out` (as llama.cpp's
//! `test-tokenizer-0` does: no BOS, special tokens not parsed), and decodes back to itself.
//!
//! The vectors come from `scripts/fetch-tokenizer-vectors.sh` (the llama-cpp-python
//! source package), directory in `FLOTILLA_TOKENIZER_VECTORS`; scripts/test.sh sets it, and
//! then a missing directory fails the test. Run alone with
//! `FLOTILLA_TOKENIZER_VECTORS=$(scripts/fetch-tokenizer-vectors.sh) cargo test -p flotilla-engine --test tokenizer_vectors`.

mod common;

use std::path::{Path, PathBuf};

use flotilla_engine::Tokenizer;

/// The vocabularies whose pre-tokenizers the engine claims; each must be present and pass.
const REQUIRED: &[&str] = &[
    "llama-spm",
    "llama-bpe",
    "qwen2",
    "phi-3",
    "gpt-2",
    "deepseek-llm",
    "deepseek-coder",
    "starcoder",
    "refact",
    "mpt",
    "command-r",
];

fn vectors_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FLOTILLA_TOKENIZER_VECTORS") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("ggml-vocab-llama-spm.gguf.inp").exists(),
            "FLOTILLA_TOKENIZER_VECTORS={} holds no llama.cpp vectors",
            dir.display()
        );
        return Some(dir);
    }
    let dir = common::workspace_root().join("models/llama-cpp-vocab");
    if dir.join("ggml-vocab-llama-spm.gguf.inp").exists() {
        return Some(dir);
    }
    eprintln!(
        "\n*** SKIP tokenizer vectors: run scripts/fetch-tokenizer-vectors.sh (scripts/test.sh does) ***\n"
    );
    None
}

/// The (input, expected ids) pairs of one vocabulary, split as `test-tokenizer-0` splits them.
fn read_pairs(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let input = std::fs::read_to_string(gguf.with_extension("gguf.inp")).expect("read .inp");
    let output = std::fs::read_to_string(gguf.with_extension("gguf.out")).expect("read .out");
    let texts: Vec<&str> = input.split("\n__ggml_vocab_test__\n").collect();
    let ids: Vec<Vec<u32>> = output
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("token id"))
                .collect()
        })
        .collect();
    // The input file ends with a separator and an empty remainder (`read_tests` keeps it
    // only if non-empty).
    let texts: Vec<&str> = match texts.last() {
        Some(&"") => texts[..texts.len() - 1].to_vec(),
        _ => texts,
    };
    assert_eq!(
        texts.len(),
        ids.len(),
        "{}: inputs and outputs differ in number",
        gguf.display()
    );
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

#[test]
fn llama_cpp_vocabulary_vectors() {
    let Some(dir) = vectors_dir() else {
        return;
    };
    let mut vocabularies: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read vectors dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "gguf"))
        .filter(|path| path.with_extension("gguf.inp").exists())
        .collect();
    vocabularies.sort();
    let mut failures = Vec::new();
    let mut passed = Vec::new();
    for path in &vocabularies {
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(|stem| stem.strip_prefix("ggml-vocab-"))
            .expect("vocabulary name")
            .to_string();
        // Only the header: vocabulary files carry no (or truncated) tensor data.
        let bytes = std::fs::read(path).expect("read vocabulary");
        let header = flotilla_gguf::read_header(&bytes[..]).expect("vocabulary header");
        let tokenizer = match Tokenizer::from_gguf(&header) {
            Ok(tokenizer) => tokenizer,
            Err(error) => {
                assert!(
                    !REQUIRED.contains(&name.as_str()),
                    "{name}: a claimed vocabulary does not load: {error}"
                );
                eprintln!("{name}: not claimed ({error})");
                continue;
            }
        };
        let pairs = read_pairs(path);
        let mut mismatches = 0;
        for (text, expected) in &pairs {
            let ours = tokenizer.encode(text, false, Some(false));
            if &ours != expected {
                mismatches += 1;
                failures.push(format!(
                    "{name} {text:?}:\n  ours  {ours:?}\n  llama {expected:?}"
                ));
            }
            let decoded = tokenizer.decode(&ours, false);
            if &decoded != text {
                mismatches += 1;
                failures.push(format!("{name}: {text:?} decodes to {decoded:?}"));
            }
        }
        eprintln!("{name}: {} cases, {mismatches} mismatches", pairs.len());
        passed.push(name);
    }
    for required in REQUIRED {
        assert!(
            passed.iter().any(|name| name == required),
            "vocabulary {required} is missing from {}",
            dir.display()
        );
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
