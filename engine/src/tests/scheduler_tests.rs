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

/// The real SmolLM2 (`FLOTILLA_TEST_MODEL`, else `models/` in the workspace).
fn real_model() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("FLOTILLA_TEST_MODEL").map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        std::path::PathBuf::from,
    );
    if path.exists() {
        return Some(path);
    }
    // Under scripts/test.sh the model is always there: a missing one is a failure.
    assert!(
        std::env::var_os("FLOTILLA_PYTHON").is_none(),
        "the real model is missing at {}",
        path.display()
    );
    eprintln!(
        "*** SKIP: model not found at {} (run scripts/test.sh) ***",
        path.display()
    );
    None
}

/// Fair prefill on the real SmolLM2: while a ~7,000-token prompt is being read, short
/// chats still get their first token promptly, and before the long prompt has
/// been read (the old scheduler read a prompt whole at admission, so every other request
/// waited for it: about two minutes on two cores).
#[test]
fn short_requests_are_answered_while_a_long_prompt_is_read() {
    use std::time::{Duration, Instant};

    use crate::{ChatMessage, Engine, EngineOptions};

    let Some(path) = real_model() else { return };
    let engine = Arc::new(Engine::load(&path, EngineOptions::default()).expect("load SmolLM2"));
    // Within SmolLM2's 8,192-token context, leaving room for the answer.
    const LONG_PROMPT_TOKENS: usize = 7_000;
    let filler = "The fleet controller assigns models to nodes, and the agents fetch, verify and serve them. ";
    let mut tokens = engine
        .prompt_tokens(&Prompt::Text(filler.repeat(LONG_PROMPT_TOKENS / 10)))
        .expect("tokenize");
    assert!(
        tokens.len() >= LONG_PROMPT_TOKENS,
        "{} tokens",
        tokens.len()
    );
    tokens.truncate(LONG_PROMPT_TOKENS);
    let mut long = GenerationRequest::new(Prompt::Tokens(tokens));
    long.max_tokens = 1;
    long.sampling = SamplingParams::greedy();

    let scheduler = Scheduler::start(
        Arc::clone(&engine),
        SchedulerConfig {
            queue_capacity: 8,
            max_batch: 4,
        },
    )
    .expect("start");
    // The same kind of chat alone first: the yardstick for "promptly" on
    // this machine under its current load.
    // A short greedy chat, submitted and waited on until its first token:
    // its handle and the time that took.
    let first_token_of = |question: &str| {
        let mut short =
            GenerationRequest::new(Prompt::Chat(vec![ChatMessage::new("user", question)]));
        short.max_tokens = 4;
        short.sampling = SamplingParams::greedy();
        let submitted = Instant::now();
        let short = scheduler.submit(short).expect("submit a short chat");
        match short.events.recv().expect("an event") {
            GenerationEvent::Token(_) => {}
            other => panic!("expected the first token, got {other:?}"),
        }
        (short, submitted.elapsed())
    };
    let alone = {
        let (short, alone) = first_token_of("What is the capital of Italy?");
        short.wait().expect("the short chat finishes");
        alone
    };
    let long_started = Instant::now();
    let long = scheduler.submit(long).expect("submit the long prompt");
    let mut first_tokens = Vec::new();
    for question in [
        "What is the capital of France?",
        "Name a colour.",
        "What is two plus two?",
    ] {
        let (short, time_to_first_token) = first_token_of(question);
        assert!(
            long.events.try_recv().is_err(),
            "the long prompt was read before the short chat's first token ({time_to_first_token:?})"
        );
        first_tokens.push(time_to_first_token);
        short.wait().expect("the short chat finishes");
    }
    let worst = first_tokens.iter().max().copied().unwrap_or_default();
    eprintln!(
        "fair prefill: short-chat time to first token {first_tokens:?} (worst {worst:?}; {alone:?} alone) while a {LONG_PROMPT_TOKENS}-token prompt was read ({:?} in)",
        long_started.elapsed()
    );
    // Cancelled before any assertion: a failing test must not wait minutes for
    // the scheduler to finish reading the long prompt on drop.
    long.cancel.cancel();
    let cancelled = long.wait().expect("the long request ends");
    assert_eq!(cancelled.finish_reason, FinishReason::Cancelled);
    scheduler.shutdown();
    // Under a second, as the issue asks, or (when this machine is so
    // loaded that a chat alone takes a quarter of that) within four times
    // the time alone: the old scheduler made them wait about two minutes.
    let bound = Duration::from_secs(1).max(alone * 4);
    assert!(
        worst < bound,
        "time to first token {worst:?} while a long prompt is read ({alone:?} alone)"
    );
}
