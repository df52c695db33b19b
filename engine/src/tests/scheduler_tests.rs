use std::sync::Arc;

use super::fixture::tiny_engine;
use crate::{
    EngineError, FinishReason, GenerationEvent, GenerationRequest, Prompt, SamplingParams,
    Scheduler, SchedulerConfig,
};

fn greedy(prompt: &str, max_tokens: usize) -> GenerationRequest {
    let mut request = GenerationRequest::new(Prompt::Text(prompt.into()));
    request.max_tokens = max_tokens;
    request.sampling = SamplingParams::greedy();
    request
}

#[test]
fn concurrent_requests_match_single_runs() {
    let (_file, engine) = tiny_engine();
    let engine = Arc::new(engine);
    let prompts = ["hello", "hello world", "world", "hell"];
    let expected: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            engine
                .generate(&greedy(prompt, 16), |_| {})
                .expect("single")
                .tokens
        })
        .collect();
    let scheduler = Scheduler::start(
        Arc::clone(&engine),
        SchedulerConfig {
            queue_capacity: 8,
            max_batch: 4,
        },
    )
    .expect("start");
    let handles: Vec<_> = prompts
        .iter()
        .map(|prompt| scheduler.submit(greedy(prompt, 16)).expect("submit"))
        .collect();
    for (handle, expected) in handles.into_iter().zip(expected) {
        assert_eq!(handle.wait().expect("finished").tokens, expected);
    }
    scheduler.shutdown();
}

#[test]
fn full_queue_is_reported_and_cancellation_frees_the_slot() {
    let (_file, engine) = tiny_engine();
    let scheduler = Scheduler::start(
        Arc::new(engine),
        SchedulerConfig {
            queue_capacity: 1,
            max_batch: 1,
        },
    )
    .expect("start");
    let mut long = greedy("hello", 3000);
    long.stop.clear();
    let first = scheduler.submit(long).expect("first");
    // Once the first token arrives the worker is busy with `first` (batch of one), so the
    // queue holds exactly one more request.
    match first.events.recv().expect("first event") {
        GenerationEvent::Token(_) => {}
        other => panic!("expected a token, got {other:?}"),
    }
    let second = scheduler
        .submit(greedy("world", 4))
        .expect("second fits in the queue");
    assert!(matches!(
        scheduler.submit(greedy("third", 4)),
        Err(EngineError::QueueFull { capacity: 1 })
    ));
    first.cancel.cancel();
    let cancelled = first.wait().expect("first ends");
    assert_eq!(cancelled.finish_reason, FinishReason::Cancelled);
    let output = second.wait().expect("second runs after the slot frees");
    assert!(output.tokens.len() <= 4);
    scheduler.shutdown();
}

#[test]
fn invalid_requests_fail_on_their_stream() {
    let (_file, engine) = tiny_engine();
    let scheduler = Scheduler::start(Arc::new(engine), SchedulerConfig::default()).expect("start");
    let mut request = greedy("hello", 4);
    request.sampling.temperature = -1.0;
    let handle = scheduler.submit(request).expect("submit");
    assert!(matches!(handle.wait(), Err(EngineError::InvalidRequest(_))));
}
