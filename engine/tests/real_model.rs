//! End-to-end checks on the real SmolLM2-135M-Instruct Q4_1: a chat answer through the
//! library API and through the `flotilla-engine run` CLI, memory staying quantized, and
//! concurrent requests through the scheduler.

mod common;

use std::sync::Arc;

use flotilla_engine::chat::single_turn;
use flotilla_engine::{
    Engine, EngineOptions, FinishReason, GenerationRequest, Prompt, SamplingParams, Scheduler,
    SchedulerConfig,
};

fn ask(question: &str) -> GenerationRequest {
    let mut request = GenerationRequest::new(Prompt::Chat(single_turn(None, question)));
    request.sampling = SamplingParams::greedy();
    request.max_tokens = 48;
    request
}

#[test]
fn answers_a_chat_question_coherently() {
    let Some(model) = common::test_model("answers_a_chat_question_coherently") else {
        return;
    };
    let engine = Engine::load(
        &model,
        EngineOptions {
            threads: Some(2),
            ..EngineOptions::default()
        },
    )
    .expect("load");
    let weights = engine.model().weight_bytes() as u64;
    let file = engine.model().file().file_size();
    assert!(
        weights <= file * 3 / 2,
        "resident weights {weights} exceed 1.5x the file size {file}"
    );

    let output = engine
        .generate(&ask("What is the capital of Germany?"), |_| {})
        .expect("generate");
    eprintln!("answer: {:?}", output.text);
    assert!(
        output.text.contains("Berlin"),
        "unexpected answer {:?}",
        output.text
    );
    assert_eq!(output.finish_reason, FinishReason::EndOfSequence);
}

#[test]
fn scheduler_serves_concurrent_chats() {
    let Some(model) = common::test_model("scheduler_serves_concurrent_chats") else {
        return;
    };
    let engine = Arc::new(
        Engine::load(
            &model,
            EngineOptions {
                threads: Some(2),
                ..EngineOptions::default()
            },
        )
        .expect("load"),
    );
    let questions = [
        "What is the capital of Germany?",
        "How many days are in a week?",
    ];
    let alone: Vec<_> = questions
        .iter()
        .map(|question| engine.generate(&ask(question), |_| {}).expect("alone").text)
        .collect();
    let scheduler =
        Scheduler::start(Arc::clone(&engine), SchedulerConfig::default()).expect("start");
    let handles: Vec<_> = questions
        .iter()
        .map(|question| scheduler.submit(ask(question)).expect("submit"))
        .collect();
    for (handle, alone) in handles.into_iter().zip(alone) {
        let batched = handle.wait().expect("finished").text;
        assert_eq!(batched, alone);
    }
}

#[test]
fn cli_run_prints_the_answer() {
    let Some(model) = common::test_model("cli_run_prints_the_answer") else {
        return;
    };
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-engine"))
        .arg("run")
        .arg(&model)
        .args([
            "--prompt",
            "What is the capital of Germany?",
            "--chat",
            "--temperature",
            "0",
        ])
        .args(["--max-tokens", "32", "--threads", "2"])
        .output()
        .expect("run the cli");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Berlin"), "stdout: {stdout:?}");
    assert!(!stdout.contains("loaded"), "diagnostics belong on stderr");
}
