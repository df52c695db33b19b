//! `Engine::check`: what the controller asks at upload. It must accept what `Engine::load`
//! accepts and refuse what it refuses, with the same reason, from the header alone.

use flotilla_gguf::{GgmlType, GgufBuilder, GgufHeader, read_header};

use super::fixture::{model_file, tiny_model_bytes};
use crate::{Engine, EngineOptions};

fn header(bytes: &[u8]) -> GgufHeader {
    read_header(bytes).expect("a valid GGUF header")
}

/// `Engine::load`'s verdict on the same bytes, through a real file.
fn load_verdict(bytes: &[u8]) -> Result<(), String> {
    let file = model_file(bytes);
    Engine::load(
        &file.path,
        EngineOptions {
            threads: Some(1),
            ..EngineOptions::default()
        },
    )
    .map(drop)
    .map_err(|error| error.to_string())
}

#[test]
fn a_loadable_model_is_servable() {
    let bytes = tiny_model_bytes();
    assert_eq!(load_verdict(&bytes), Ok(()));
    Engine::check(header(&bytes)).expect("the tiny model is servable");
}

#[test]
fn the_registry_fixture_is_servable_in_every_type_it_writes() {
    for file_type in [0, 1, 3, 7] {
        let bytes = GgufBuilder::tiny_llama(file_type, 9);
        assert_eq!(load_verdict(&bytes), Ok(()), "file type {file_type}");
        Engine::check(header(&bytes))
            .unwrap_or_else(|error| panic!("file type {file_type}: {error}"));
    }
}

#[test]
fn refusals_name_the_same_reason_as_loading() {
    let unknown_architecture = GgufBuilder::new()
        .metadata_str("general.architecture", "bert")
        .tensor("w", &[32, 2], GgmlType::F32, &[0; 256])
        .build();
    let header_only_fixture = GgufBuilder::new()
        .metadata_str("general.architecture", "llama")
        .metadata_u32("llama.context_length", 2048)
        .tensor("blk.0.attn_q.weight", &[32, 2], GgmlType::Q4_1, &[0; 40])
        .build();
    // Every matrix of the loadable model retyped to a format the engine has no kernel for.
    let mut unsupported_type = read_header(&tiny_model_bytes()[..]).expect("header");
    for tensor in &mut unsupported_type.tensors {
        if tensor.name == "blk.1.ffn_down.weight" {
            tensor.ggml_type = GgmlType::IQ4_NL;
        }
    }
    let cases = [
        (
            header(&unknown_architecture),
            Some(&unknown_architecture),
            "architecture \"bert\"",
        ),
        (
            header(&header_only_fixture),
            Some(&header_only_fixture),
            "block_count",
        ),
        (unsupported_type, None, "IQ4_NL"),
    ];
    for (header, bytes, expected) in cases {
        let checked = Engine::check(header)
            .expect_err("an unservable header must be refused")
            .to_string();
        assert!(
            checked.contains(expected),
            "{checked:?} should name {expected}"
        );
        if let Some(bytes) = bytes {
            assert_eq!(load_verdict(bytes), Err(checked));
        }
    }
}
