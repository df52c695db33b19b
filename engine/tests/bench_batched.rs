//! `flotilla-engine bench --sequences N` on the real SmolLM2-135M-Instruct Q4_1: the batched
//! figure is reported, and decoding N sequences together gives every sequence the greedy
//! tokens of the single-sequence run, for us and (when llama-cpp-python is installed) for
//! the llama.cpp peer, whose batch-API script is otherwise only exercised by hand.

mod common;

#[test]
fn bench_batched_decode_keeps_every_sequence_greedy_tokens() {
    let Some(model) = common::test_model("bench_batched_decode_keeps_every_sequence_greedy_tokens")
    else {
        return;
    };
    let python = common::reference_python();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-engine"));
    command.arg("bench").arg(&model).args([
        "--threads",
        "2",
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "4",
        "--sequences",
        "3",
    ]);
    match &python {
        Some(python) => command.arg("--peer-python").arg(python),
        None => command.arg("--no-peer"),
    };
    let output = command.output().expect("run the bench");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the bench prints one json object");
    assert_eq!(result["sequences"], 3);
    let ours = &result["flotilla"];
    assert_eq!(ours["batched_consistent"], true, "{result}");
    assert!(
        ours["batched_decode_tokens_per_s"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0),
        "{result}"
    );
    if python.is_some() {
        assert_eq!(
            result["llama_cpp_error"],
            serde_json::Value::Null,
            "{result}"
        );
        assert_eq!(result["llama_cpp"]["batched_consistent"], true, "{result}");
        assert!(
            result["ratio_vs_llama_cpp"]["batched_decode_tokens_per_s"].is_f64(),
            "{result}"
        );
    } else {
        eprintln!("\n*** SKIP the llama.cpp half: no python with llama_cpp and numpy ***\n");
    }
}
