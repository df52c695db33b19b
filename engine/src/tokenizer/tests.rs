//! Tokenizer behaviour on a tiny hand-made vocabulary.

use flotilla_gguf::{GgufBuilder, read_header};

use super::*;

pub(crate) use crate::testing::tiny_tokenizer_builder;

fn tiny() -> Tokenizer {
    let bytes = tiny_tokenizer_builder(GgufBuilder::new()).build();
    Tokenizer::from_gguf(&read_header(&bytes[..]).expect("header")).expect("tokenizer")
}

#[test]
fn merges_apply_by_rank() {
    let tokenizer = tiny();
    let ids = tokenizer.encode("hello world", false, Some(false));
    let texts: Vec<&str> = ids
        .iter()
        .map(|&id| tokenizer.token_text(id).expect("id"))
        .collect();
    assert_eq!(texts, ["hello", "Ġworld"]);
}

#[test]
fn special_tokens_only_when_parsing_specials() {
    let tokenizer = tiny();
    let parsed = tokenizer.encode("<|im_start|>hello", true, Some(false));
    assert_eq!(parsed[0], 1);
    let literal = tokenizer.encode("<|im_start|>hello", false, Some(false));
    assert!(literal.len() > 2 && !literal.contains(&1));
    assert_eq!(tokenizer.encode("hi", true, Some(true))[0], 1);
}

#[test]
fn round_trips_arbitrary_unicode() {
    let tokenizer = tiny();
    for text in [
        "héllo wörld",
        "  spaces\t\ttabs\n\n",
        "emoji 🦀 and 中文",
        "a'll 123",
    ] {
        let ids = tokenizer.encode(text, false, Some(false));
        assert_eq!(tokenizer.decode(&ids, false), text);
    }
}

#[test]
fn utf8_stream_holds_back_partial_characters() {
    let mut stream = Utf8Stream::default();
    let crab = "🦀".as_bytes();
    assert_eq!(stream.push(&crab[..2]), "");
    assert_eq!(stream.push(&crab[2..]), "🦀");
    assert_eq!(stream.finish(), "");
}

/// A byte-level vocabulary of `<|begin_of_text|>`, `h`, `i` and `hi` with pre-tokenizer `pre`.
fn byte_level(pre: &str, add_bos: Option<bool>) -> Tokenizer {
    let tokens = ["<|begin_of_text|>", "h", "i", "hi"].map(String::from);
    let mut builder = GgufBuilder::new()
        .metadata_str("tokenizer.ggml.model", "gpt2")
        .metadata_str("tokenizer.ggml.pre", pre)
        .metadata_str_array("tokenizer.ggml.tokens", &tokens)
        .metadata_i32_array("tokenizer.ggml.token_type", &[3, 1, 1, 1])
        .metadata_str_array("tokenizer.ggml.merges", &["h i".to_string()])
        .metadata_u32("tokenizer.ggml.bos_token_id", 0);
    if let Some(add_bos) = add_bos {
        builder = builder.metadata_bool("tokenizer.ggml.add_bos_token", add_bos);
    }
    let bytes = builder.build();
    Tokenizer::from_gguf(&read_header(&bytes[..]).expect("header")).expect("tokenizer")
}

#[test]
fn llama3_vocabularies_add_bos_unless_told_otherwise() {
    // llama.cpp's default for Llama 3's pre-tokenizer; its own ggml-vocab-llama-bpe.gguf and
    // early Llama 3 conversions carry no add_bos_token.
    assert_eq!(
        byte_level("llama-bpe", None).encode("hi", true, None),
        [0, 3]
    );
    assert_eq!(
        byte_level("llama-bpe", Some(false)).encode("hi", true, None),
        [3]
    );
    assert_eq!(byte_level("qwen2", None).encode("hi", true, None), [3]);
}

#[test]
fn phi3_special_tokens_drop_the_whitespace_after_them() {
    let bytes =
        tiny_tokenizer_builder(GgufBuilder::new().metadata_str("general.name", "Phi3")).build();
    let phi3 = Tokenizer::from_gguf(&read_header(&bytes[..]).expect("header")).expect("tokenizer");
    let encode = |tokenizer: &Tokenizer, text| tokenizer.encode(text, true, Some(false));
    assert_eq!(
        encode(&phi3, "<|im_start|>\n\t\u{b} hello<|im_end|>\n"),
        encode(&phi3, "<|im_start|>hello<|im_end|>")
    );
    // Not after <|endoftext|>, and not in models that are not named Phi-3.
    assert_ne!(
        encode(&phi3, "<|endoftext|> hello"),
        encode(&phi3, "<|endoftext|>hello")
    );
    assert_ne!(
        encode(&tiny(), "<|im_start|>\nhello"),
        encode(&tiny(), "<|im_start|>hello")
    );
}
