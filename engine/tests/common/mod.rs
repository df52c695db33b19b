//! Shared helpers for the real-model integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace root (tests run with the crate directory as working directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The real model, or `None` after printing a loud SKIP line.
pub fn test_model(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("FLOTILLA_TEST_MODEL").map_or_else(
        || workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        PathBuf::from,
    );
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "\n*** SKIP {test}: model not found at {} (run shared/fetch-smollm2.sh or set FLOTILLA_TEST_MODEL) ***\n",
            path.display()
        );
        None
    }
}

/// The Python interpreter with llama-cpp-python, if one is usable.
pub fn reference_python() -> Option<PathBuf> {
    let python = std::env::var_os("FLOTILLA_PYTHON")
        .map_or_else(|| workspace_root().join(".venv/bin/python"), PathBuf::from);
    let usable = std::process::Command::new(&python)
        .args(["-c", "import llama_cpp, numpy"])
        .output()
        .is_ok_and(|output| output.status.success());
    usable.then_some(python)
}
