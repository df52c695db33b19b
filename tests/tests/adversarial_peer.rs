//! The peer path under attack (issue 16, items 1, 3, 4 and 6), with real
//! processes: a controller, a real agent (the victim, which serves nothing
//! itself and forwards), and a rogue node written against `proto/`
//! (`flotilla_tests::rogue`): it enrols with a real bootstrap token, is
//! assigned a model like any node, advertises a URL of its choosing and
//! claims READY, so that the victim forwards clients' requests to a
//! listener the test holds. Web-page-style requests hit the victim too.
//!
//! Each test states the attack and what must happen; on the code before
//! this suite every one of them succeeded (the assertions fail there).

use std::time::Duration;

use flotilla_gguf::{GgmlType, GgufBuilder};
use flotilla_tests::rogue::{INJECTED, RogueListener, RogueNode};
use flotilla_tests::serving::cli;
use flotilla_tests::tls::{AGENT_NAME, TestTls};
use flotilla_tests::{AgentProcess, ControllerProcess, wait_until};
use serde_json::{Value, json};

const MODEL: &str = "tiny";
const KEY: &str = "client-key-0123456789abcdef";
/// Enrolment and directory propagation on loopback (no model is loaded).
const WAIT: Duration = Duration::from_secs(60);

/// A tiny valid GGUF: the registry accepts it, and nobody loads it (the
/// rogue only claims to serve it).
fn tiny_gguf() -> Vec<u8> {
    let weights: Vec<u8> = (0..160u32).map(|i| (i as u8).wrapping_mul(31)).collect();
    GgufBuilder::new()
        .metadata_str("general.architecture", "llama")
        .metadata_u32("general.file_type", 3)
        .metadata_u32("llama.context_length", 2048)
        .tensor("blk.0.attn_q.weight", &[64, 4], GgmlType::Q4_1, &weights)
        .build()
}

/// A controller with the tiny model pushed and a bootstrap token; the
/// victim agent (API keys required) enrolled with it.
struct Fleet {
    controller: ControllerProcess,
    victim: AgentProcess,
    token: String,
    /// The controller's gRPC URL as agents reach it.
    grpc_url: String,
    /// `http(s)://host:port` of the victim's HTTP API.
    victim_url: String,
    /// Trusts the fleet's CA when there is one.
    client: reqwest::Client,
    tls: Option<TestTls>,
    home: tempfile::TempDir,
    _dirs: Vec<tempfile::TempDir>,
}

impl Fleet {
    /// `tls`: the controller and the victim serve TLS from a private CA,
    /// and the victim verifies peers by the fleet-wide name.
    async fn start(tls: bool, victim_flags: &[&str]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let home = tempfile::tempdir()?;
        let victim_dir = tempfile::tempdir()?;
        let files = tempfile::tempdir()?;
        let certificates = tls.then(|| TestTls::generate(files.path())).transpose()?;
        let controller = match &certificates {
            Some(certificates) => ControllerProcess::start_tls(data.path(), certificates).await?,
            None => {
                ControllerProcess::start(data.path(), &["--heartbeat-interval-ms", "500"]).await?
            }
        };
        let gguf = files.path().join("tiny.gguf");
        std::fs::write(&gguf, tiny_gguf())?;
        cli(
            &controller,
            home.path(),
            &[
                "model",
                "push",
                &gguf.to_string_lossy(),
                "--name",
                MODEL,
                "--version",
                "1.0.0",
            ],
        )?;
        let token = cli(
            &controller,
            home.path(),
            &["node", "token", "create", "--ttl", "10m", "--uses", "5"],
        )?
        .trim()
        .to_owned();
        let keys = files.path().join("keys");
        std::fs::write(&keys, format!("{KEY}\n"))?;
        let keys = keys.to_string_lossy().into_owned();
        let grpc_url = if tls {
            format!("https://localhost:{}", controller.grpc_addr.port())
        } else {
            format!("http://{}", controller.grpc_addr)
        };
        let mut flags: Vec<String> = [
            "--controller",
            grpc_url.as_str(),
            "--bootstrap-token",
            token.as_str(),
            "--name",
            "victim",
            "--api-keys-file",
            keys.as_str(),
        ]
        .iter()
        .map(|flag| (*flag).to_owned())
        .collect();
        if let Some(certificates) = &certificates {
            for (flag, path) in [
                ("--controller-ca", &certificates.ca),
                ("--tls-cert", &certificates.agent_cert),
                ("--tls-key", &certificates.agent_key),
            ] {
                flags.extend([flag.to_owned(), path.to_string_lossy().into_owned()]);
            }
            flags.extend(["--peer-tls-name".to_owned(), AGENT_NAME.to_owned()]);
        }
        flags.extend(victim_flags.iter().map(|flag| (*flag).to_owned()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let victim = AgentProcess::start(victim_dir.path(), &flags)?;
        let port = victim
            .http_addr
            .ok_or_else(|| anyhow::anyhow!("no --http address"))?
            .port();
        let (victim_url, client) = match &certificates {
            Some(certificates) => (
                format!("https://localhost:{port}"),
                reqwest::Client::builder()
                    .add_root_certificate(certificates.ca_certificate()?)
                    .build()?,
            ),
            None => (format!("http://127.0.0.1:{port}"), reqwest::Client::new()),
        };
        let fleet = Self {
            controller,
            victim,
            token,
            grpc_url,
            victim_url,
            client,
            tls: certificates,
            home,
            _dirs: vec![data, victim_dir, files],
        };
        let enrolled = wait_until("the victim to enrol", WAIT, || async {
            cli(
                &fleet.controller,
                fleet.home.path(),
                &["node", "ls", "--output", "json"],
            )
            .is_ok_and(|listed| listed.contains("\"victim\""))
        })
        .await;
        if let Err(error) = enrolled {
            eprintln!("--- victim log ---\n{}", fleet.victim.log());
            return Err(error);
        }
        Ok(fleet)
    }

    /// Enrols the rogue node with the fleet's own token and has the
    /// operator assign it the model, as any node would be.
    async fn rogue(&self, name: &str) -> anyhow::Result<RogueNode> {
        let ca = self
            .tls
            .as_ref()
            .map(|tls| std::fs::read(&tls.ca))
            .transpose()?;
        let rogue = RogueNode::enrol(&self.grpc_url, ca.as_deref(), &self.token, name).await?;
        cli(
            &self.controller,
            self.home.path(),
            &[
                "assign",
                "--node",
                name,
                "--model",
                MODEL,
                "--version",
                "1.0.0",
            ],
        )?;
        Ok(rogue)
    }

    /// A client's chat for the model, with the client's key.
    async fn chat(&self) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let response = self
            .client
            .post(format!("{}/v1/chat/completions", self.victim_url))
            .bearer_auth(KEY)
            .json(&json!({
                "model": MODEL,
                "messages": [{"role": "user", "content": "my secret prompt"}],
            }))
            .send()
            .await?;
        let status = response.status();
        Ok((status, response.text().await?))
    }

    /// Waits until the victim's directory lists the model (served by the
    /// rogue, the only node that claims it).
    async fn wait_for_route(&self) -> anyhow::Result<()> {
        let listed = wait_until("the victim to list the rogue's model", WAIT, || async {
            let Ok(response) = self
                .client
                .get(format!("{}/v1/models", self.victim_url))
                .bearer_auth(KEY)
                .send()
                .await
            else {
                return false;
            };
            response.json::<Value>().await.is_ok_and(|models| {
                models["data"]
                    .as_array()
                    .is_some_and(|data| data.iter().any(|model| model["id"] == MODEL))
            })
        })
        .await;
        if listed.is_err() {
            eprintln!("--- victim log ---\n{}", self.victim.log());
        }
        listed
    }
}

/// Item 1: a node that advertises its own listener as a peer must never
/// receive a client's credential; and its answer, naming an artifact other
/// than the one it is listed with, must not reach the client.
#[tokio::test]
async fn a_rogue_peer_never_receives_the_clients_key_nor_answers_for_the_model()
-> anyhow::Result<()> {
    let fleet = Fleet::start(false, &[]).await?;
    let listener = RogueListener::start(&"0".repeat(64)).await?;
    let rogue = fleet.rogue("rogue").await?;
    let stream = rogue
        .sync(&format!("http://{}", listener.addr))
        .await
        .map_err(|status| anyhow::anyhow!("a plain URL is accepted: {status}"))?;
    tokio::spawn(stream.claim_ready());
    fleet.wait_for_route().await?;

    let (status, body) = fleet.chat().await?;
    let received = listener.requests();
    assert!(
        !received.is_empty(),
        "the victim forwarded to the rogue (it is the only peer): {status} {body}"
    );
    for request in &received {
        let lower = request.to_lowercase();
        assert!(
            !lower.contains("\r\nauthorization:") && !request.contains(KEY),
            "the rogue received the client's credential:\n{request}"
        );
    }
    assert!(
        !body.contains(INJECTED),
        "the rogue's answer reached the client: {status} {body}"
    );
    assert_eq!(status, reqwest::StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("artifact"), "{body}");
    Ok(())
}

/// Item 4 (and item 3 with `tls`): an advertised URL that is not a plain
/// `scheme://host:port` of the fleet's scheme. The controller refuses the
/// hello; were it listed anyway, the victim must never send the client's
/// request to a path of the rogue's choosing, or in the clear.
async fn hostile_advertisement(
    tls: bool,
    url: impl Fn(std::net::SocketAddr) -> String,
) -> anyhow::Result<()> {
    let fleet = Fleet::start(tls, &[]).await?;
    let listener = RogueListener::start(&"0".repeat(64)).await?;
    let rogue = fleet.rogue("rogue").await?;
    let advertised = url(listener.addr);
    match rogue.sync(&advertised).await {
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{advertised}: {status}"
            );
            assert!(
                status.message().contains("inference_http_url"),
                "{}",
                status.message()
            );
        }
        Ok(stream) => {
            // Accepted: then the victim must not use it.
            tokio::spawn(stream.claim_ready());
            if fleet.wait_for_route().await.is_ok() {
                let _ = fleet.chat().await?;
            }
        }
    }
    let (status, body) = fleet.chat().await?;
    let received = listener.requests();
    assert!(
        received.is_empty(),
        "the victim forwarded to {advertised}; it answered {status} {body}\n{}",
        received.join("\n---\n")
    );
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{body}");
    Ok(())
}

#[tokio::test]
async fn an_advertised_url_with_a_path_and_query_forges_no_request() -> anyhow::Result<()> {
    hostile_advertisement(false, |addr| format!("http://{addr}/internal/x?q=")).await
}

#[tokio::test]
async fn an_http_peer_in_a_tls_fleet_gets_nothing_in_the_clear() -> anyhow::Result<()> {
    hostile_advertisement(true, |addr| format!("http://{addr}")).await
}

/// Item 6: requests a web page can make (a foreign `Host` after DNS
/// rebinding, a foreign `Origin`, a `text/plain` body that needs no CORS
/// preflight) are refused before anything else, in the API's error shape;
/// CORS is answered only for a configured origin.
#[tokio::test]
async fn web_pages_cannot_use_the_agent_unless_configured() -> anyhow::Result<()> {
    let fleet = Fleet::start(false, &["--cors-origin", "https://app.example.com"]).await?;
    let url = format!("{}/v1/chat/completions", fleet.victim_url);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let post = |host: Option<&str>, origin: Option<&str>, content_type: &str| {
        let mut request = fleet
            .client
            .post(&url)
            .bearer_auth(KEY)
            .header("content-type", content_type)
            .body(body.clone());
        if let Some(host) = host {
            request = request.header("host", host);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let cases = [
        (
            Some("attacker.example:11434"),
            None,
            "application/json",
            403,
        ),
        (
            None,
            Some("http://attacker.example"),
            "application/json",
            403,
        ),
        (None, None, "text/plain;charset=UTF-8", 415),
        (None, None, "application/x-www-form-urlencoded", 415),
    ];
    for (host, origin, content_type, expected) in cases {
        let response = post(host, origin, content_type).await?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status, expected,
            "Host {host:?}, Origin {origin:?}, {content_type}: {answer}"
        );
        assert!(
            answer["error"]["message"].is_string(),
            "the OpenAI error shape: {answer}"
        );
    }
    // The Ollama surface refuses in its own shape.
    let ollama = fleet
        .client
        .post(format!("{}/api/chat", fleet.victim_url))
        .bearer_auth(KEY)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await?;
    assert_eq!(ollama.status().as_u16(), 415);
    let answer: Value = ollama.json().await?;
    assert!(answer["error"].is_string(), "{answer}");

    // The configured origin: preflight answered, the request let through
    // (to the not-found of a model nobody serves).
    let preflight = fleet
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await?;
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .and_then(|value| value.to_str().ok()),
        Some("https://app.example.com")
    );
    let foreign_preflight = fleet
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://attacker.example")
        .header("access-control-request-method", "POST")
        .send()
        .await?;
    assert!(
        foreign_preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let allowed = post(None, Some("https://app.example.com"), "application/json").await?;
    assert_eq!(allowed.status().as_u16(), 404);
    // A program on loopback is served as before.
    let plain = post(None, None, "application/json").await?;
    assert_eq!(plain.status().as_u16(), 404);
    Ok(())
}
