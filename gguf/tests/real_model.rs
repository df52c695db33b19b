//! Reads the real SmolLM2 GGUF when it is present (CI fetches it; locally it is optional).

use std::path::PathBuf;

fn model_path() -> PathBuf {
    std::env::var_os("FLOTILLA_TEST_MODEL").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    )
}

#[test]
fn smollm2_header_is_understood() {
    let path = model_path();
    if !path.exists() {
        eprintln!(
            "SKIP: real model not found at {} (set FLOTILLA_TEST_MODEL)",
            path.display()
        );
        return;
    }
    let file = std::fs::File::open(&path).expect("open model");
    let header = flotilla_gguf::read_header(std::io::BufReader::new(file)).expect("parse header");
    assert_eq!(header.architecture(), Some("llama"));
    assert_eq!(header.quantization().as_deref(), Some("Q4_1"));
    assert_eq!(header.context_length(), Some(8192));
    let parameters = header.parameter_count();
    assert!(
        (130_000_000..140_000_000).contains(&parameters),
        "{parameters}"
    );
    assert_eq!(
        header.required_file_size(),
        std::fs::metadata(&path).expect("stat").len()
    );
    let mapped = flotilla_gguf::GgufFile::open(&path).expect("map model");
    for tensor in &mapped.header().tensors {
        assert_eq!(
            mapped.tensor_data(tensor).expect("in bounds").len() as u64,
            tensor.byte_size()
        );
    }
}
