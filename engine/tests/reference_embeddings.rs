//! Embedding parity with llama.cpp: for the same model, tokens and pooling, the engine's
//! pooled vector must point the same way as llama.cpp's (cosine ≥ 0.999).
//!
//! The reference is live llama.cpp via `tests/reference/llama_cpp_embeddings.py` (a Python
//! with llama-cpp-python: `FLOTILLA_PYTHON`, default `<workspace>/.venv/bin/python`);
//! without one the test prints a SKIP line. The engine embeds the tokens llama.cpp used,
//! and the test checks that it tokenizes the texts the same way too.
//!
//! To show that the threshold discriminates, each run also checks that the engine's
//! vector under another pooling stays below it against llama.cpp's.

mod common;

use std::path::{Path, PathBuf};

use flotilla_engine::{Engine, EngineOptions, Pooling, Prompt, cosine};
use serde_json::Value;

const THRESHOLD: f64 = 0.999;

const TEXTS: &[&str] = &[
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings turn text into vectors; similar texts give vectors that point the same way.",
    // Longer than one 128-token chunk, so pooling spans chunks.
    "A fleet control plane keeps a desired state in Postgres and pushes it to edge nodes. \
     Each node runs an agent that downloads model artifacts, checks their digests, loads \
     them into a CPU inference engine and serves OpenAI- and Ollama-compatible APIs. When \
     a node does not serve the requested model it forwards the request to a peer that does. \
     Rollouts move nodes from one model version to the next in waves, watching error rates \
     and latency, and roll back when a wave looks worse than the one before. Operators see \
     the fleet in one table: which node serves what, how busy it is, and what it reports.",
];

fn reference(model: &Path, pooling: &str) -> Option<Value> {
    let python = common::reference_python()?;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/llama_cpp_embeddings.py");
    let output = std::process::Command::new(&python)
        .arg(script)
        .arg(model)
        .arg(pooling)
        .args(TEXTS)
        .output()
        .expect("run the embeddings reference script");
    assert!(
        output.status.success(),
        "reference script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("reference json"))
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn tokens(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("token") as u32)
        .collect()
}

/// Checks `pooling` against llama.cpp on `model`; `contrast` is a pooling whose vectors
/// must stay below the threshold against the same reference.
fn check(test: &str, model: &Path, name: &str, pooling: Pooling, contrast: Pooling) {
    let Some(reference) = reference(model, name) else {
        eprintln!("\n*** SKIP {test}: no python with llama-cpp-python found ***\n");
        return;
    };
    let engine = Engine::load(
        model,
        EngineOptions {
            threads: Some(2),
            ..EngineOptions::default()
        },
    )
    .expect("load model");
    let cases = reference["cases"].as_array().expect("cases");
    let inputs: Vec<Vec<u32>> = cases.iter().map(|case| tokens(&case["tokens"])).collect();
    for (case, input) in cases.iter().zip(&inputs) {
        let text = case["text"].as_str().expect("text");
        let ours = engine
            .prompt_tokens(&Prompt::Text(text.to_owned()))
            .expect("tokenize");
        // llama-cpp-python's `tokenize` adds BOS when the model asks for it, as ours does.
        assert_eq!(&ours, input, "tokenization of {text:?}");
    }
    // Batched: all texts in one call, each vector as that text gives alone.
    let batched = engine.embed_with(&inputs, pooling).expect("embed");
    let contrasted = engine.embed_with(&inputs, contrast).expect("embed");
    let mut worst = f64::INFINITY;
    for ((case, ours), other) in cases.iter().zip(&batched).zip(&contrasted) {
        let theirs = floats(&case["embedding"]);
        assert_eq!(ours.vector.len(), theirs.len(), "embedding width");
        assert_eq!(ours.prompt_tokens, tokens(&case["tokens"]).len());
        let similarity = cosine(&ours.vector, &theirs);
        let contrast_similarity = cosine(&other.vector, &theirs);
        eprintln!(
            "{name}: cosine {similarity:.6} ({} tokens); {contrast:?} pooling gives {contrast_similarity:.6}",
            ours.prompt_tokens
        );
        worst = worst.min(similarity);
        assert!(
            similarity >= THRESHOLD,
            "{name} pooling: cosine {similarity} < {THRESHOLD} for {:?}",
            case["text"]
        );
        assert!(
            contrast_similarity < THRESHOLD,
            "{contrast:?} pooling passes against {name} ({contrast_similarity}): the check cannot fail"
        );
    }
    // One input alone gives the vector it gave in the batch.
    let alone = engine
        .embed_with(&inputs[1..2], pooling)
        .expect("embed one");
    assert!(cosine(&alone[0].vector, &batched[1].vector) > 0.999_999);
    eprintln!("{name}: worst cosine {worst:.6} over {} texts", cases.len());
}

#[test]
fn smollm2_embeddings_match_llama_cpp() {
    let Some(model) = common::test_model("smollm2_embeddings_match_llama_cpp") else {
        return;
    };
    let test = "smollm2_embeddings_match_llama_cpp";
    check(test, &model, "mean", Pooling::Mean, Pooling::Last);
    check(test, &model, "last", Pooling::Last, Pooling::Mean);
    check(test, &model, "cls", Pooling::Cls, Pooling::Mean);
}

#[test]
fn qwen2_embeddings_match_llama_cpp() {
    let model = common::workspace_root().join("models/qwen2.5-coder-0.5b-instruct-awq-Q4_K_M.gguf");
    if !model.exists() {
        eprintln!(
            "\n*** SKIP qwen2_embeddings_match_llama_cpp: {} not found ***\n",
            model.display()
        );
        return;
    }
    check(
        "qwen2_embeddings_match_llama_cpp",
        &model,
        "mean",
        Pooling::Mean,
        Pooling::Last,
    );
}
