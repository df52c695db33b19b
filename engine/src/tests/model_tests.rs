use super::fixture::tiny_engine;
use crate::kernels::KernelImpl;
use crate::model::{LlamaModel, SequenceInput};
use crate::{GenerationRequest, Prompt, SamplingParams};

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const TOKENS: [u32; 7] = [5, 17, 200, 3, 99, 268, 42];

#[test]
fn loads_with_expected_shapes() {
    let (_file, engine) = tiny_engine();
    let config = engine.model().config();
    assert_eq!(
        (config.block_count, config.head_dim, config.kv_dim()),
        (2, 16, 32)
    );
    assert_eq!(config.vocab_size, engine.tokenizer().vocab_size());
    let mut cache = engine.model().new_cache();
    let logits = engine.prefill(&mut cache, &TOKENS).expect("forward");
    assert_eq!(logits.len(), config.vocab_size);
    assert_eq!(cache.len(), TOKENS.len());
    assert!(logits.iter().all(|value| value.is_finite()));
}

#[test]
fn cached_decoding_equals_full_recompute() {
    let (_file, engine) = tiny_engine();
    let mut full_cache = engine.model().new_cache();
    let full = engine.prefill(&mut full_cache, &TOKENS).expect("full");
    let mut cache = engine.model().new_cache();
    let mut incremental = Vec::new();
    for token in TOKENS {
        incremental = engine.prefill(&mut cache, &[token]).expect("step");
    }
    assert!(max_difference(&full, &incremental) < 1e-4);
    // Rolling the cache back and replaying gives the same answer again.
    cache.truncate(3);
    let replayed = engine.prefill(&mut cache, &TOKENS[3..]).expect("replay");
    assert!(max_difference(&full, &replayed) < 1e-4);
}

#[test]
fn batched_sequences_equal_separate_runs() {
    let (_file, engine) = tiny_engine();
    let prompts: [&[u32]; 3] = [&TOKENS, &TOKENS[2..5], &[7]];
    let separate: Vec<Vec<f32>> = prompts
        .iter()
        .map(|prompt| {
            let mut cache = engine.model().new_cache();
            engine.prefill(&mut cache, prompt).expect("separate")
        })
        .collect();
    let mut caches: Vec<_> = prompts.iter().map(|_| engine.model().new_cache()).collect();
    let mut inputs: Vec<SequenceInput<'_>> = caches
        .iter_mut()
        .zip(prompts)
        .map(|(cache, tokens)| SequenceInput { cache, tokens })
        .collect();
    let batched = engine.forward(&mut inputs).expect("batched");
    for (a, b) in separate.iter().zip(&batched) {
        assert!(max_difference(a, b) < 1e-4);
    }
}

#[test]
fn scalar_and_simd_models_agree() {
    let (file, engine) = tiny_engine();
    let gguf = std::sync::Arc::new(flotilla_gguf::GgufFile::open(&file.path).expect("open"));
    let scalar = LlamaModel::load(gguf)
        .expect("load")
        .with_kernel(KernelImpl::Scalar);
    let mut cache = scalar.new_cache();
    let scalar_logits = scalar
        .forward(&mut [SequenceInput {
            cache: &mut cache,
            tokens: &TOKENS,
        }])
        .expect("scalar forward")
        .remove(0);
    let mut cache = engine.model().new_cache();
    let simd_logits = engine.prefill(&mut cache, &TOKENS).expect("simd forward");
    assert!(max_difference(&scalar_logits, &simd_logits) < 1e-2);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let (_file, engine) = tiny_engine();
    let run = |seed| {
        let mut request = GenerationRequest::new(Prompt::Text("hello world".into()));
        request.max_tokens = 24;
        request.sampling = SamplingParams {
            temperature: 1.2,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        engine.generate(&request, |_| {}).expect("generate").tokens
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn streamed_text_equals_final_text_and_stop_sequences_cut() {
    let (_file, engine) = tiny_engine();
    let mut request = GenerationRequest::new(Prompt::Text("hello".into()));
    request.max_tokens = 40;
    request.sampling = SamplingParams::greedy();
    let mut streamed = String::new();
    let output = engine
        .generate(&request, |event| streamed.push_str(&event.text))
        .expect("generate");
    assert_eq!(streamed, output.text);
    assert!(!output.tokens.is_empty());
    // Use a piece of the greedy output as a stop sequence: generation ends right before it.
    let characters: Vec<char> = output.text.chars().collect();
    assert!(
        characters.len() >= 6,
        "fixture output too short: {:?}",
        output.text
    );
    let stop: String = characters[3..5].iter().collect();
    let cut = output.text.find(&stop).expect("present");
    request.stop = vec![stop.clone()];
    let mut streamed = String::new();
    let stopped = engine
        .generate(&request, |event| streamed.push_str(&event.text))
        .expect("generate");
    assert_eq!(stopped.text, output.text[..cut]);
    assert_eq!(streamed, stopped.text);
    assert_eq!(stopped.finish_reason, crate::FinishReason::StopSequence);
}

#[test]
fn cancellation_stops_generation() {
    let (_file, engine) = tiny_engine();
    let mut request = GenerationRequest::new(Prompt::Text("hello".into()));
    request.max_tokens = 1000;
    request.sampling = SamplingParams::greedy();
    let cancel = request.cancel.clone();
    let mut seen = 0;
    let output = engine
        .generate(&request, |_| {
            seen += 1;
            if seen == 5 {
                cancel.cancel();
            }
        })
        .expect("generate");
    assert_eq!(output.finish_reason, crate::FinishReason::Cancelled);
    assert_eq!(output.tokens.len(), 5);
}

#[test]
fn corrupted_model_files_fail_cleanly() {
    use super::fixture::{TempModel, tiny_model_bytes};
    let original = tiny_model_bytes();
    let header_length = flotilla_gguf::read_header(&original[..])
        .expect("valid fixture")
        .data_offset as usize;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut loaded = 0;
    for round in 0..150 {
        let mut bytes = original.clone();
        for _ in 0..1 + next() % 4 {
            let position = (next() % header_length as u64) as usize;
            bytes[position] = next() as u8;
        }
        let file = TempModel {
            path: std::env::temp_dir().join(format!(
                "flotilla-engine-corrupt-{}-{round}.gguf",
                std::process::id()
            )),
        };
        std::fs::write(&file.path, &bytes).expect("write");
        // Either a clean error or a model that runs; never a panic.
        if let Ok(engine) = crate::Engine::load(
            &file.path,
            crate::EngineOptions {
                threads: Some(1),
                ..crate::EngineOptions::default()
            },
        ) {
            let mut cache = engine.model().new_cache();
            let _ = engine.prefill(&mut cache, &[1, 2, 3]);
            loaded += 1;
        }
    }
    assert!(loaded < 150, "no mutation was ever rejected");
}

#[test]
fn absurd_hyper_parameters_are_rejected() {
    let bytes = crate::tokenizer::tests::tiny_tokenizer_builder(flotilla_gguf::GgufBuilder::new())
        .metadata_str("general.architecture", "llama")
        .metadata_u64("llama.block_count", 1 << 40)
        .metadata_u32("llama.embedding_length", 64)
        .metadata_u32("llama.feed_forward_length", 128)
        .metadata_u32("llama.attention.head_count", 4)
        .build();
    let header = flotilla_gguf::read_header(&bytes[..]).expect("header");
    assert!(matches!(
        crate::LlamaConfig::from_header(&header),
        Err(crate::EngineError::InvalidModel(_))
    ));
}
