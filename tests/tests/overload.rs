//! Overload with real processes and the real SmolLM2: an agent whose queue
//! holds 4 requests (2 waiting, 2 decoding) gets bursts of 48 concurrent
//! chat requests. The excess get 429 with `Retry-After` in OpenAI's error
//! shape, every accepted request completes with a whole answer, and the
//! agent's resident memory stays bounded from burst to burst (refused
//! requests cost nothing that lingers). That refusals never wait for a
//! place is shown deterministically in `agent/tests/serve/load.rs`.

use std::time::{Duration, Instant};

use flotilla_tests::serving::{ServedModel, node_json};
use flotilla_tests::{memory_mib, test_model, wait_until};
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m-instruct";
const BURST: usize = 48;
const ROUNDS: usize = 4;
/// How much the agent's resident memory may grow between the end of the
/// first burst and the end of the last one.
const MAX_GROWTH_MIB: f64 = 48.0;

/// One request's fate: (status, whether it was well formed, latency).
type Fate = (u16, bool, Duration);

async fn one_request(client: reqwest::Client, http: String) -> anyhow::Result<Fate> {
    let sent = Instant::now();
    let response = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&json!({"model": MODEL, "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": "Name a colour."}]}))
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await?;
    let latency = sent.elapsed();
    let well_formed = match status {
        200 => {
            body["choices"][0]["finish_reason"].is_string()
                && body["choices"][0]["message"]["content"]
                    .as_str()
                    .is_some_and(|text| !text.is_empty())
        }
        429 => retry_after && body["error"]["type"] == "rate_limit_error",
        _ => false,
    };
    Ok((status, well_formed, latency))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

#[tokio::test]
async fn bursts_beyond_the_queue_are_refused_and_memory_stays_bounded() -> anyhow::Result<()> {
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let served = ServedModel::start_with(
        &model,
        MODEL,
        "edge-a",
        &["--inference-queue", "2", "--inference-batch", "2"],
    )
    .await?;
    let pid = served.agent.process.id();
    let client = reqwest::Client::new();
    let mut rss_after_rounds = Vec::new();
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let requests: Vec<_> = (0..BURST)
            .map(|_| tokio::spawn(one_request(client.clone(), served.http_url.clone())))
            .collect();
        for request in requests {
            let (status, well_formed, latency) = request.await??;
            assert!(well_formed, "a {status} answer was malformed");
            match status {
                200 => accepted.push(latency),
                _ => refused.push(latency),
            }
        }
        rss_after_rounds.push(memory_mib(pid)?.0);
    }
    eprintln!(
        "overload: {} accepted (median {:?}), {} refused (median {:?}); agent RSS after each burst {:?} MiB",
        accepted.len(),
        median(accepted.clone()),
        refused.len(),
        median(refused.clone()),
        rss_after_rounds
    );
    assert!(
        !refused.is_empty(),
        "{} concurrent requests against 4 places were all accepted",
        BURST
    );
    assert!(accepted.len() >= ROUNDS, "each burst has accepted requests");
    let growth = rss_after_rounds.last().copied().unwrap_or_default()
        - rss_after_rounds.first().copied().unwrap_or_default();
    assert!(
        growth < MAX_GROWTH_MIB,
        "agent RSS grew {growth:.1} MiB over {ROUNDS} bursts: {rss_after_rounds:?}"
    );

    // The refusals reach the controller with the next heartbeats.
    let expected = u64::try_from(refused.len())?;
    wait_until(
        "the refusals in a heartbeat",
        Duration::from_secs(60),
        || async {
            node_json(&served.controller, served.home.path(), "edge-a").is_some_and(|node| {
                node["health"]["inference"]["rejected_total"].as_u64() == Some(expected)
                    && node["health"]["inference"]["queue_depth"].as_u64() == Some(0)
            })
        },
    )
    .await?;
    Ok(())
}
