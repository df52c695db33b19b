//! The device graph (feature `burn`, on burn's CPU `flex` backend) on the real SmolLM2
//! model against the committed llama.cpp golden file: first-position logits and top-1
//! token.
#![cfg(feature = "burn")]

mod common;

use flotilla_engine::{Engine, EngineOptions};

#[test]
fn device_graph_matches_llama_cpp_first_positions() {
    let Some(model) = common::test_model("device_graph_matches_llama_cpp_first_positions") else {
        return;
    };
    let golden_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/golden-smollm2-135m-instruct-q4_1.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_path).expect("golden")).expect("json");
    let engine = Engine::load_on_burn_device(
        &model,
        EngineOptions::default(),
        burn::tensor::Device::flex(),
        "flex",
    )
    .expect("load on the flex device");
    let mut compared = 0;
    for case in golden["greedy"].as_array().expect("cases").iter().take(6) {
        let tokens: Vec<u32> = case["prompt_tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|token| token.as_u64().expect("id") as u32)
            .collect();
        let mut cache = engine.new_cache();
        let logits = engine.prefill(&mut cache, &tokens).expect("device forward");
        let top5 = case["first_top5"].as_array().expect("top5");
        for entry in top5 {
            let id = entry[0].as_u64().expect("id") as usize;
            let expected = entry[1].as_f64().expect("logit") as f32;
            assert!(
                (logits[id] - expected).abs() < 1.0,
                "logit {id}: burn {} vs llama.cpp {expected}",
                logits[id]
            );
        }
        let margin = case["top1_margins"][0].as_f64().expect("margin");
        if margin >= 0.5 {
            let top1 = top5[0][0].as_u64().expect("id") as u32;
            assert_eq!(flotilla_engine::sampling::argmax(&logits), top1);
            compared += 1;
        }
    }
    assert!(compared >= 2, "too few clear-cut first positions compared");
}
