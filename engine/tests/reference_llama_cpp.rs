//! Correctness against llama.cpp on the real SmolLM2 Q4_1 model: tokenization of tricky
//! strings, the first-position top-1 token and 32 greedy tokens for several prompts.
//!
//! The reference comes from llama.cpp itself via `tests/reference/llama_cpp_reference.py`
//! when a Python with llama-cpp-python is available (`FLOTILLA_PYTHON`, default
//! `<workspace>/.venv/bin/python`), else from the committed golden file produced by the
//! same script for the pinned model (sha256 below). The test prints which one it used.
//!
//! The same checks run on SmolLM2 re-quantized by llama.cpp itself into the K-quant mixes
//! people deploy (Q2_K, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K, Q8_0; made by
//! scripts/ensure-quantized.sh next to the Q4_1 file). Those files mix Q2_K…Q6_K, Q4_0,
//! Q5_0, Q5_1 and Q8_0 tensors, so each exercises several kernels in one forward pass. Their
//! reference is always live llama.cpp (the file bytes depend on the llama.cpp version).

mod common;

use std::path::PathBuf;

use flotilla_engine::{Engine, EngineOptions, GenerationRequest, Prompt, SamplingParams};
use serde_json::Value;

const PINNED_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

fn load_reference(model: &std::path::Path, cases: &str) -> Value {
    if let Some(python) = common::reference_python() {
        let output = std::process::Command::new(&python)
            .arg(reference_dir().join("llama_cpp_reference.py"))
            .arg(model)
            .arg(reference_dir().join(cases))
            .output()
            .expect("run the reference script");
        assert!(
            output.status.success(),
            "reference script failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("reference: live llama.cpp via {}", python.display());
        return serde_json::from_slice(&output.stdout).expect("reference json");
    }
    let golden = reference_dir().join("golden-smollm2-135m-instruct-q4_1.json");
    eprintln!(
        "reference: committed golden file {} (no python with llama-cpp-python found)",
        golden.display()
    );
    let text = std::fs::read_to_string(&golden).expect("read golden file");
    serde_json::from_str(&text).expect("golden json")
}

fn token_list(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("token array")
        .iter()
        .map(|token| token.as_u64().expect("token id") as u32)
        .collect()
}

#[test]
fn matches_llama_cpp_tokenization_and_greedy_decoding() {
    let Some(model) = common::test_model("matches_llama_cpp_tokenization_and_greedy_decoding")
    else {
        return;
    };
    let reference = load_reference(&model, "cases.json");
    assert_eq!(
        reference["model_sha256"].as_str(),
        Some(PINNED_SHA256),
        "the reference was produced for a different model file"
    );
    check_against_reference(
        &model,
        &reference,
        Criteria {
            logit_tolerance: 1.0,
            near_tie: 0.5,
            minimum_full_matches: 5,
        },
    );
}

/// The model file of a K-quant variant next to the test model, or `None` (after a loud
/// SKIP line) outside CI when it or llama.cpp is missing. Under scripts/test.sh
/// (`FLOTILLA_PYTHON` set) a missing variant fails the test.
fn quantized_variant(variant: &str) -> Option<PathBuf> {
    let test = format!("{variant} parity");
    let model = common::test_model(&test)?;
    let name = model.file_name()?.to_str()?.to_owned();
    let stem = name.strip_suffix(".Q4_1.gguf").unwrap_or(&name);
    let path = model.with_file_name(format!("{stem}.{variant}.gguf"));
    let required = std::env::var_os("FLOTILLA_PYTHON").is_some();
    if path.exists() && common::reference_python().is_some() {
        return Some(path);
    }
    assert!(
        !required,
        "{} is missing or llama.cpp is unusable (scripts/ensure-quantized.sh makes it)",
        path.display()
    );
    eprintln!(
        "\n*** SKIP {test}: {} or llama-cpp-python missing (run scripts/ensure-quantized.sh) ***\n",
        path.display()
    );
    None
}

fn variant_matches_llama_cpp(variant: &str) {
    let Some(model) = quantized_variant(variant) else {
        return;
    };
    // Eight of the sixteen prompts and no tokenizer cases (the vocabulary is the Q4_1
    // file's): six files' llama.cpp references cost CI time.
    let reference = load_reference(&model, "cases-quantized.json");
    check_against_reference(&model, &reference, QUANTIZED_CRITERIA);
}

/// Criteria for the re-quantized files. These doubly quantized models are more sensitive
/// to rounding than the Q4_1 original: on them our own scalar and AVX2 kernels, which
/// share every integer and differ only in float summation order, give first-position
/// logits up to 0.8-1.3 apart over the whole vocabulary (1.7 on Q4_1), because one flipped
/// 8-bit activation rounding propagates. Measured against llama.cpp over its top 5: Q2_K
/// 0.49, Q4_K_M 0.48, Q5_K_M 0.73, Q6_K 0.46 (engine/PERFORMANCE.md). So a parting where
/// llama.cpp's own margin is under 1.0 is a near tie here, and logits must agree within 1.5.
/// Near ties are frequent in these files (most prompts meet one within 32 tokens: measured
/// full agreement Q2_K 1/8, Q3_K_M 1/8, Q5_K_M 0/8 prompts), so no count of whole
/// continuations is required: every parting must be at a near tie.
const QUANTIZED_CRITERIA: Criteria = Criteria {
    logit_tolerance: 1.5,
    near_tie: 1.0,
    minimum_full_matches: 0,
};

#[test]
fn q2_k_matches_llama_cpp() {
    variant_matches_llama_cpp("Q2_K");
}

#[test]
fn q3_k_m_matches_llama_cpp() {
    variant_matches_llama_cpp("Q3_K_M");
}

#[test]
fn q4_k_m_matches_llama_cpp() {
    variant_matches_llama_cpp("Q4_K_M");
}

#[test]
fn q5_k_m_matches_llama_cpp() {
    variant_matches_llama_cpp("Q5_K_M");
}

#[test]
fn q6_k_matches_llama_cpp() {
    variant_matches_llama_cpp("Q6_K");
}

#[test]
fn q8_0_matches_llama_cpp() {
    variant_matches_llama_cpp("Q8_0");
}

/// What agreement with llama.cpp a file must reach.
struct Criteria {
    /// Largest first-position difference over llama.cpp's top 5 logits.
    logit_tolerance: f32,
    /// Below this llama.cpp top-2 margin, a different token is a near tie, not a bug.
    near_tie: f64,
    /// Prompts whose whole continuation must agree.
    minimum_full_matches: usize,
}

/// Tokenization, first-position logits (over llama.cpp's top 5), top-1 and 32 greedy tokens against a reference made by `llama_cpp_reference.py`.
fn check_against_reference(model: &std::path::Path, reference: &Value, criteria: Criteria) {
    let Criteria {
        logit_tolerance,
        near_tie,
        minimum_full_matches,
    } = criteria;
    eprintln!("model: {}", model.display());
    eprintln!("producer: {}", reference["producer"]);
    let engine = Engine::load(
        model,
        EngineOptions {
            threads: Some(2),
            ..EngineOptions::default()
        },
    )
    .expect("load model");
    let tokenizer = engine.tokenizer();

    let mut tokenizer_failures = Vec::new();
    for case in reference["tokenize"].as_array().expect("tokenize cases") {
        let text = case["text"].as_str().expect("text");
        let expected = token_list(&case["tokens"]);
        let ours = tokenizer.encode(text, true, Some(false));
        if ours != expected {
            tokenizer_failures.push(format!("{text:?}:\n  ours  {ours:?}\n  llama {expected:?}"));
        }
        assert_eq!(
            tokenizer.decode(&ours, true),
            text,
            "round trip of {text:?}"
        );
    }
    assert!(
        tokenizer_failures.is_empty(),
        "tokenization differs:\n{}",
        tokenizer_failures.join("\n")
    );

    // Greedy decoding must agree token for token. Two correct engines can only part at a
    // near tie: llama.cpp's own top-2 margin below `near_tie` logits. Both engines quantize
    // activations to 8 bits per matmul, so a last-bit difference in float summation order
    // can flip one rounding and move logits (by up to ~0.35 at the first position on the
    // Q4_1 file; see QUANTIZED_CRITERIA for the re-quantized ones); a disagreement where
    // llama.cpp's margin exceeds `near_tie` is a real bug. After a near-tie parting the continuations are no longer comparable.
    let mut full_matches = 0;
    let mut largest_logit_difference = 0.0f32;
    let mut failures = Vec::new();
    let cases = reference["greedy"].as_array().expect("greedy cases");
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let prompt_tokens = token_list(&case["prompt_tokens"]);
        assert_eq!(
            tokenizer.encode(prompt, true, Some(false)),
            prompt_tokens,
            "prompt {prompt:?}"
        );
        let expected = token_list(&case["generated"]);
        let margins: Vec<f64> = case["top1_margins"]
            .as_array()
            .expect("margins")
            .iter()
            .map(|margin| margin.as_f64().expect("margin"))
            .collect();

        let mut cache = engine.model().new_cache();
        let logits = engine.prefill(&mut cache, &prompt_tokens).expect("prefill");
        let top5 = case["first_top5"].as_array().expect("top5");
        let mut max_logit_difference = 0.0f32;
        for entry in top5 {
            let id = entry[0].as_u64().expect("id") as usize;
            let reference_logit = entry[1].as_f64().expect("logit") as f32;
            max_logit_difference = max_logit_difference.max((logits[id] - reference_logit).abs());
        }
        assert!(
            max_logit_difference < logit_tolerance,
            "first-position logits differ by {max_logit_difference} (tolerance {logit_tolerance}) for {prompt:?}"
        );
        largest_logit_difference = largest_logit_difference.max(max_logit_difference);
        let ours_top1 = flotilla_engine::sampling::argmax(&logits);
        let reference_top1 = top5[0][0].as_u64().expect("id") as u32;
        assert!(
            ours_top1 == reference_top1 || margins[0] < near_tie,
            "first-position top-1 for {prompt:?}: ours {ours_top1}, llama.cpp {reference_top1}"
        );

        let mut request = GenerationRequest::new(Prompt::Tokens(prompt_tokens));
        request.sampling = SamplingParams::greedy();
        request.max_tokens = expected.len();
        let output = engine.generate(&request, |_| {}).expect("generate");
        let agreeing = output
            .tokens
            .iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count();
        // Generation may stop early at end-of-turn; the reference keeps going.
        let complete = agreeing == expected.len() || agreeing == output.tokens.len();
        eprintln!(
            "{prompt:?}: {agreeing}/{} tokens agree (first-position logits within {max_logit_difference:.3}) -> {:?}",
            expected.len(),
            output.text
        );
        if complete {
            full_matches += 1;
        } else if margins[agreeing] >= near_tie {
            failures.push(format!(
                "{prompt:?} diverges at token {agreeing} where llama.cpp's margin is {:.3}:\n  ours  {:?}\n  llama {expected:?}",
                margins[agreeing], output.tokens
            ));
        } else {
            eprintln!(
                "  (parted at a near tie: llama.cpp margin {:.4})",
                margins[agreeing]
            );
        }
    }
    eprintln!(
        "summary {}: {full_matches}/{} prompts agree for all tokens; first-position top-5 logits within {largest_logit_difference:.3}",
        model.display(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "greedy decoding differs from llama.cpp:\n{}",
        failures.join("\n")
    );
    assert!(
        full_matches >= minimum_full_matches,
        "only {full_matches} prompts matched llama.cpp for all 32 tokens (need {minimum_full_matches})"
    );
}
