//! The device graph against the CPU kernels over the tiny model: prefill, cached
//! decoding, cache rollback, batching, and a 16-token greedy generation through the
//! scheduler. On a wgpu adapter with the `gpu` feature (the default), else on burn's
//! CPU `flex` backend.

use std::sync::Arc;

use super::fixture::{tiny_engine, tiny_model_file};
use crate::model::SequenceInput;
use crate::{
    Engine, EngineOptions, GenerationEvent, GenerationRequest, Prompt, SamplingParams, Scheduler,
    SchedulerConfig,
};

const TOKENS: [u32; 7] = [5, 17, 200, 3, 99, 268, 42];

/// The tiny model on burn's CPU `flex` backend, or, with the `gpu` feature, on
/// the first wgpu adapter (`--device gpu`; lavapipe in CI, where these tests
/// then prove the path on a real Vulkan implementation, shaders and all).
fn device_engine() -> (super::fixture::TempModel, Engine) {
    let file = tiny_model_file();
    #[cfg(feature = "gpu")]
    let engine = Engine::load(
        &file.path,
        EngineOptions {
            threads: Some(2),
            device: crate::DeviceRequest::Gpu(None),
        },
    )
    .expect("load on the first GPU adapter (scripts/ensure-vulkan.sh installs lavapipe)");
    #[cfg(not(feature = "gpu"))]
    let engine = Engine::load_on_burn_device(
        &file.path,
        EngineOptions::default(),
        burn::tensor::Device::flex(),
        "flex",
    )
    .expect("load on the flex device");
    (file, engine)
}

/// The largest difference relative to the largest logit: the kernel path quantizes
/// activations to 8 bits and keeps K/V in f16, the device graph is f32 throughout.
fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f32, |max, value| max.max(value.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

#[test]
fn device_graph_agrees_with_the_kernels_and_caches_on_the_device() {
    let (_cpu_file, cpu) = tiny_engine();
    let (_file, device) = device_engine();
    assert!(device.placement().is_gpu());
    let mut cpu_cache = cpu.new_cache();
    let expected = cpu.prefill(&mut cpu_cache, &TOKENS).expect("kernels");

    let mut cache = device.new_cache();
    assert!(!cache.is_on_host());
    let whole = device.prefill(&mut cache, &TOKENS).expect("device");
    assert_eq!(cache.len(), TOKENS.len());
    assert!(relative_difference(&expected, &whole) < 0.05);
    assert_eq!(
        crate::sampling::argmax(&expected),
        crate::sampling::argmax(&whole)
    );

    // Token by token through the device cache: the same as the whole prompt at once.
    let mut stepped_cache = device.new_cache();
    let mut stepped = Vec::new();
    for token in TOKENS {
        stepped = device.prefill(&mut stepped_cache, &[token]).expect("step");
    }
    assert!(relative_difference(&whole, &stepped) < 1e-4);

    // Rolled back and replayed, as prefix reuse does.
    stepped_cache.truncate(3);
    let replayed = device
        .prefill(&mut stepped_cache, &TOKENS[3..])
        .expect("replay");
    assert!(relative_difference(&whole, &replayed) < 1e-4);

    // A host cache is refused by the device, and a device cache by the kernels.
    let mut host = cpu.new_cache();
    assert!(device.prefill(&mut host, &TOKENS).is_err());
    let mut foreign = device.new_cache();
    assert!(cpu.prefill(&mut foreign, &TOKENS).is_err());
}

#[test]
fn device_batches_sequences_of_different_lengths() {
    let (_file, engine) = device_engine();
    let prompts: [&[u32]; 3] = [&TOKENS, &TOKENS[2..5], &[7]];
    let separate: Vec<Vec<f32>> = prompts
        .iter()
        .map(|prompt| {
            let mut cache = engine.new_cache();
            engine.prefill(&mut cache, prompt).expect("separate")
        })
        .collect();
    let mut caches: Vec<_> = prompts.iter().map(|_| engine.new_cache()).collect();
    let mut batch: Vec<SequenceInput<'_>> = caches
        .iter_mut()
        .zip(prompts)
        .map(|(cache, tokens)| SequenceInput { cache, tokens })
        .collect();
    let batched = engine.forward(&mut batch).expect("batched");
    for (alone, together) in separate.iter().zip(&batched) {
        assert!(relative_difference(alone, together) < 1e-4);
    }
    let hidden = {
        let mut cache = engine.new_cache();
        let mut batch = [SequenceInput {
            cache: &mut cache,
            tokens: &TOKENS,
        }];
        engine.forward_hidden(&mut batch).expect("hidden")
    };
    assert_eq!(
        hidden[0].len(),
        TOKENS.len() * engine.model().config().embedding_length
    );
}

#[test]
fn scheduler_generates_the_same_greedy_tokens_on_the_device() {
    let generate = |engine: Engine| {
        let scheduler = Scheduler::start(
            Arc::new(engine),
            SchedulerConfig {
                queue_capacity: 4,
                max_batch: 4,
            },
        )
        .expect("scheduler");
        let mut request = GenerationRequest::new(Prompt::Tokens(TOKENS.to_vec()));
        request.sampling = SamplingParams::greedy();
        request.max_tokens = 16;
        let handle = scheduler.submit(request).expect("submit");
        handle
            .events
            .iter()
            .find_map(|event| match event {
                GenerationEvent::Finished(output) => Some(Ok(output.tokens)),
                GenerationEvent::Failed(error) => Some(Err(error)),
                GenerationEvent::Token(_) => None,
            })
            .expect("an end")
            .expect("generated")
    };
    let (_cpu_file, cpu) = tiny_engine();
    let (_file, device) = device_engine();
    assert_eq!(generate(device), generate(cpu));
}
