//! A tiny random Llama (2 layers, width 64, GQA 4:2, vocabulary from the tokenizer
//! fixture) in a temporary GGUF file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Engine, EngineOptions};

pub use crate::testing::tiny_model_bytes;

/// A temporary file that is removed on drop.
pub struct TempModel {
    pub path: PathBuf,
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn tiny_model_file() -> TempModel {
    model_file(&tiny_model_bytes())
}

/// `bytes` in a temporary file of its own (tests run in parallel).
pub fn model_file(bytes: &[u8]) -> TempModel {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "flotilla-engine-tiny-{}-{}.gguf",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).expect("write the model file");
    TempModel { path }
}

pub fn tiny_engine() -> (TempModel, Engine) {
    let file = tiny_model_file();
    let engine = Engine::load(
        &file.path,
        EngineOptions {
            threads: Some(2),
            ..EngineOptions::default()
        },
    )
    .expect("load tiny model");
    (file, engine)
}
