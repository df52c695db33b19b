//! Parity with llama.cpp for the architectures beyond plain Llama (Qwen2, Gemma 3, Phi-3,
//! Llama 3.1's rope scaling), on models llama.cpp itself re-quantized from the real files
//! and on small synthetic ones (`scripts/prepare-arch-models.sh`, into `models/requantized/`
//! and `models/synthetic/`): the first-position top-1 token (unless llama.cpp's own top-2
//! gap is under `NEAR_TIE`), the first-position top-5 logits within `LOGIT_TOLERANCE`, and
//! 32 greedy tokens per prompt.
//!
//! The reference is live llama.cpp (`tests/arch_reference/reference.py` through
//! `FLOTILLA_PYTHON`); there are no golden files, since the models are made locally.
//! Under scripts/test.sh (`FLOTILLA_ARCH_MODELS` set) a missing model or Python fails the
//! test; elsewhere it is skipped with a loud line. To add a case (for example the original
//! Q4_K_M files once the engine has K-quant kernels), add a `Case` constant and a `#[test]`
//! that calls `check` with it (one test per model, so cargo runs them in parallel).

mod common;

use std::path::PathBuf;

use flotilla_engine::{Engine, EngineOptions, GenerationRequest, Prompt, SamplingParams};
use serde_json::Value;

/// Two correct engines can part only at a near tie of llama.cpp's top two logits. Both
/// quantize activations to 8 bits per matmul, so a last-bit difference in summation order
/// can flip one rounding and move logits by a few tenths.
const NEAR_TIE: f64 = 0.5;
/// The largest first-position difference allowed in llama.cpp's top-5 logits.
const LOGIT_TOLERANCE: f32 = 1.0;
const GREEDY_TOKENS: usize = 32;

/// A model file (relative to the models directory) and the prompts to compare on.
struct Case {
    model: &'static str,
    prompts: &'static [&'static str],
    /// How many prompts must agree for all tokens (the rest may part at near ties).
    min_full_matches: usize,
}

const QWEN_PROMPTS: &[&str] = &[
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is a closure in Rust?<|im_end|>\n<|im_start|>assistant\n",
    "def quicksort(arr):\n",
    "// A function that adds two numbers\nfn add(",
    "The capital of France is",
];

const GEMMA_PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):\n",
    "The three primary colors are",
    "<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n",
];

const QWEN2_Q8_0: Case = Case {
    model: "requantized/qwen2.5-coder-0.5b-instruct-awq-Q8_0.gguf",
    prompts: QWEN_PROMPTS,
    min_full_matches: 3,
};

const GEMMA3_Q8_0: Case = Case {
    model: "requantized/gemma-3-270m-Q8_0.gguf",
    prompts: GEMMA_PROMPTS,
    min_full_matches: 3,
};

/// The directory the case models live in, and whether they are required (CI).
fn models_dir() -> (PathBuf, bool) {
    match std::env::var_os("FLOTILLA_ARCH_MODELS") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (common::workspace_root().join("models"), false),
    }
}

fn token_list(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("token array")
        .iter()
        .map(|token| token.as_u64().expect("token id") as u32)
        .collect()
}

/// The prompt as messages show it: long ones cut to their start and length.
fn label(prompt: &str) -> String {
    const SHOWN: usize = 60;
    match prompt.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}… ({} chars)", &prompt[..end], prompt.chars().count()),
        None => format!("{prompt:?}"),
    }
}

fn check(case: &Case) {
    let (dir, required) = models_dir();
    let model = dir.join(case.model);
    let python = common::reference_python();
    if !model.exists() || python.is_none() {
        assert!(
            !required,
            "{} or the llama.cpp Python is missing under scripts/test.sh",
            model.display()
        );
        eprintln!(
            "\n*** SKIP parity on {}: run scripts/prepare-arch-models.sh (needs .venv with llama-cpp-python) ***\n",
            model.display()
        );
        return;
    }
    let python = python.expect("checked above");
    let prompts_file = std::env::temp_dir().join(format!(
        "flotilla-arch-prompts-{}-{}.json",
        std::process::id(),
        case.model.replace('/', "_")
    ));
    std::fs::write(
        &prompts_file,
        serde_json::to_string(case.prompts).expect("prompts json"),
    )
    .expect("write prompts");
    let output = std::process::Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/arch_reference/reference.py"))
        .arg(&model)
        .arg(&prompts_file)
        .arg(GREEDY_TOKENS.to_string())
        .output()
        .expect("run the reference script");
    let _ = std::fs::remove_file(&prompts_file);
    assert!(
        output.status.success(),
        "reference script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: Value = serde_json::from_slice(&output.stdout).expect("reference json");
    eprintln!("{}: reference {}", case.model, reference["producer"]);

    let engine = Engine::load(
        &model,
        EngineOptions {
            threads: Some(2),
            ..EngineOptions::default()
        },
    )
    .expect("load model");
    let mut full_matches = 0;
    let mut failures = Vec::new();
    for entry in reference["cases"].as_array().expect("cases") {
        let prompt = entry["prompt"].as_str().expect("prompt");
        let label = label(prompt);
        let prompt_tokens = token_list(&entry["prompt_tokens"]);
        assert_eq!(
            engine.tokenizer().encode(prompt, true, None),
            prompt_tokens,
            "tokenization of {label}"
        );
        let prompt_length = prompt_tokens.len();
        let expected = token_list(&entry["generated"]);
        let margins: Vec<f64> = entry["top1_margins"]
            .as_array()
            .expect("margins")
            .iter()
            .map(|margin| margin.as_f64().expect("margin"))
            .collect();
        let mut cache = engine.model().new_cache();
        let logits = engine.prefill(&mut cache, &prompt_tokens).expect("prefill");
        let top5 = entry["first_top5"].as_array().expect("top5");
        let mut max_difference = 0.0f32;
        for item in top5 {
            let id = item[0].as_u64().expect("id") as usize;
            let logit = item[1].as_f64().expect("logit") as f32;
            max_difference = max_difference.max((logits[id] - logit).abs());
        }
        let ours_top1 = flotilla_engine::sampling::argmax(&logits);
        let reference_top1 = top5[0][0].as_u64().expect("id") as u32;
        if max_difference >= LOGIT_TOLERANCE {
            failures.push(format!(
                "{label}: first-position logits differ by {max_difference}"
            ));
        }
        if ours_top1 != reference_top1 && margins[0] >= NEAR_TIE {
            failures.push(format!(
                "{label}: first-position top-1 ours {ours_top1}, llama.cpp {reference_top1}"
            ));
        }

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
        // Generation may stop early at end of turn; the reference keeps going.
        let complete = agreeing == expected.len() || agreeing == output.tokens.len();
        eprintln!(
            "{label} ({prompt_length} tokens): {agreeing}/{} tokens agree (first-position logits within {max_difference:.3}) -> {:?}",
            expected.len(),
            output.text
        );
        if complete {
            full_matches += 1;
        } else if margins[agreeing] >= NEAR_TIE {
            failures.push(format!(
                "{label} diverges at token {agreeing} where llama.cpp's margin is {:.3}:\n  ours  {:?}\n  llama {expected:?}",
                margins[agreeing], output.tokens
            ));
        } else {
            eprintln!(
                "  (parted at a near tie: llama.cpp margin {:.4})",
                margins[agreeing]
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} differs from llama.cpp:\n{}",
        case.model,
        failures.join("\n")
    );
    assert!(
        full_matches >= case.min_full_matches,
        "{}: only {full_matches} prompts matched llama.cpp for all {GREEDY_TOKENS} tokens (need {})",
        case.model,
        case.min_full_matches
    );
}

#[test]
fn qwen2_matches_llama_cpp_on_q8_0() {
    check(&QWEN2_Q8_0);
}

#[test]
fn gemma3_matches_llama_cpp_on_q8_0() {
    check(&GEMMA3_Q8_0);
}

/// The real files as fetched (`../shared/fetch-models.sh`): a Q4_K_M mix of Q4_K, Q5_0,
/// Q6_K and Q8_0 tensors. K-quant rows are dotted against 8-bit activations in blocks of
/// 256 (llama.cpp's Q8_K), whose coarser scales move logits more than Q8_0's blocks of 32
/// do, so fewer prompts agree to the last of 32 tokens; the first-position checks are the
/// same as for the Q8_0 copies.
const QWEN2_Q4_K_M: Case = Case {
    model: "qwen2.5-coder-0.5b-instruct-awq-Q4_K_M.gguf",
    prompts: QWEN_PROMPTS,
    min_full_matches: 1,
};

const GEMMA3_Q4_K_M: Case = Case {
    model: "gemma-3-270m-Q4_K_M.gguf",
    prompts: GEMMA_PROMPTS,
    min_full_matches: 1,
};

#[test]
fn qwen2_matches_llama_cpp_on_the_original_q4_k_m() {
    check(&QWEN2_Q4_K_M);
}

#[test]
fn gemma3_matches_llama_cpp_on_the_original_q4_k_m() {
    check(&GEMMA3_Q4_K_M);
}

/// Longer than the synthetic models' original rope context (256 positions) and Phi-3's
/// declared sliding window (128), in both tokenizers: 300-odd tokens.
const LONG_PROMPT: &str = "A lighthouse keeper's log from the winter of 1893 records the weather at every change of watch: the wind's direction and force, the state of the sea, the visibility in nautical miles, and whether the lamp needed trimming. \
Most entries are short. On the night of the ninth of January the keeper wrote that the glass was falling fast, that the swell from the south-west had begun to break over the landing stage, and that a steamer had passed inside the reef at half past two, closer than any master with a sound chart would have taken her. \
He lit the fog signal at three. By dawn the wind had backed to the south and the rain came in sheets; the relief boat could not land, so the two men on the rock rationed their oil and read the almanac to each other. \
The supply tender reached them on the fourteenth with coal, paraffin, flour, letters and a new wick for the burner, and the log for that day runs to two full pages, listing every cask and crate by weight. \
Historians value such records less for the storms than for the ordinary days between them, which show how a small crew kept a complicated machine running for months with no help from the shore: the clockwork that turned the lens was wound every two hours, the brass was polished each morning, and the glass of the lantern was cleaned of salt after every blow. \
Reading the whole winter in one sitting, one notices that the keeper never once wrote about being afraid, and that he always noted the time the light was lit and the time it went out.";

const PHI3_PROMPTS: &[&str] = &[
    "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n",
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
    LONG_PROMPT,
];

const LLAMA3_PROMPTS: &[&str] = &[
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
    LONG_PROMPT,
];

/// Synthetic models (`tests/arch_reference/synthesize.py`, written by
/// `scripts/prepare-arch-models.sh` into `models/synthetic/`). Phi-3 and Llama 3.1 have no
/// real model small enough for CI (Phi-3-mini is 2 GB, Llama 3.2 1B over 1 GB), so these
/// files carry each architecture's real metadata, tensor layout and tokenizer (copied from
/// llama.cpp's `ggml-vocab-phi-3.gguf` and `ggml-vocab-llama-bpe.gguf`) with seeded random
/// weights scaled to a trained model's activations and peaked logits. Random weights
/// predict nothing useful, but they run the same graph as the real models do: Phi-3's
/// fused `attn_qkv` and `[gate | up]` projections and its ignored sliding window (128,
/// shorter than the last prompt); Llama 3.1's `rope_freqs` divisors, computed with its
/// formula for a 256-position original context so that the divided rope pairs turn within
/// the prompts (the last prompt is longer than that context). The prompts also check
/// llama.cpp's tokenizer quirks for these vocabularies: whitespace dropped after Phi-3's
/// special tokens, and BOS added for Llama 3 without `add_bos_token`.
///
/// Measured (llama-cpp-python 0.3.36, debug build): all 5 prompts of each agree for 32
/// tokens; first-position top-5 logits within 0.0005 for the short prompts and 0.09 for
/// the 327-354-token one (attention over more positions sums in another order). One prompt
/// is left for a near tie that another CPU's summation order may decide otherwise.
// Three, not four: the synthetic model's random weights leave near ties
// mid-sequence (llama.cpp margins 0.05 and 0.07 on two of the five
// prompts), where the AVX-512 kernels' summation order parts from
// llama.cpp's and the AVX2 kernels' does not. Parting there is allowed
// (`NEAR_TIE`); a real defect (the key/value thirds of `attn_qkv` or the
// gate/up halves of `ffn_up` swapped) moves the first-position logits by 8
// or more, which `LOGIT_TOLERANCE` catches on every prompt.
const PHI3_SYNTHETIC: Case = Case {
    model: "synthetic/phi3-synthetic-Q8_0.gguf",
    prompts: PHI3_PROMPTS,
    min_full_matches: 3,
};

const LLAMA3_SYNTHETIC: Case = Case {
    model: "synthetic/llama3-synthetic-Q8_0.gguf",
    prompts: LLAMA3_PROMPTS,
    min_full_matches: 4,
};

#[test]
fn phi3_matches_llama_cpp_on_a_synthetic_model() {
    check(&PHI3_SYNTHETIC);
}

#[test]
fn llama3_rope_scaling_matches_llama_cpp_on_a_synthetic_model() {
    check(&LLAMA3_SYNTHETIC);
}
