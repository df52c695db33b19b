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
//!
//! Node identity (the controller as the fleet's node CA): in a fleet with
//! TLS and `--tls-node-cert`, a node holding a valid certificate of its own
//! cannot answer for another node, cannot get a certificate naming another
//! node, and is listed only while the certificate issued on its stream is
//! valid.

use std::time::Duration;

use flotilla_gguf::GgufBuilder;
use flotilla_tests::rogue::{INJECTED, RogueListener, RogueNode, RogueTlsListener, key_and_csr};
use flotilla_tests::serving::cli;
use flotilla_tests::tls::{AGENT_NAME, TestTls};
use flotilla_tests::{AgentProcess, ControllerProcess, wait_until};
use serde_json::{Value, json};

const MODEL: &str = "tiny";
const KEY: &str = "client-key-0123456789abcdef";
/// Enrolment and directory propagation on loopback (no model is loaded).
const WAIT: Duration = Duration::from_secs(60);

/// A tiny servable GGUF: the registry accepts it, and nobody loads it (the
/// rogue only claims to serve it).
fn tiny_gguf() -> Vec<u8> {
    GgufBuilder::tiny_llama(3, 0)
}

/// How the fleet is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// No TLS anywhere.
    Plain,
    /// The controller serves TLS; the victim serves the operator's
    /// fleet-wide certificate and verifies peers by the fleet-wide name.
    FleetCertificate,
    /// The controller serves TLS; the victim uses its node certificate
    /// (`--tls-node-cert`) and verifies peers by node name.
    NodeIdentity,
}

/// The victim's name, and the DNS name its node certificate carries.
const VICTIM: &str = "victim";
const VICTIM_DNS: &str = "victim.node.flotilla.internal";

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
    async fn start(security: Security, victim_flags: &[&str]) -> anyhow::Result<Self> {
        let tls = security != Security::Plain;
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
            VICTIM,
            "--api-keys-file",
            keys.as_str(),
        ]
        .iter()
        .map(|flag| (*flag).to_owned())
        .collect();
        if let Some(certificates) = &certificates {
            flags.extend([
                "--controller-ca".to_owned(),
                certificates.ca.to_string_lossy().into_owned(),
            ]);
        }
        match (security, &certificates) {
            (Security::FleetCertificate, Some(certificates)) => {
                for (flag, path) in [
                    ("--tls-cert", &certificates.agent_cert),
                    ("--tls-key", &certificates.agent_key),
                ] {
                    flags.extend([flag.to_owned(), path.to_string_lossy().into_owned()]);
                }
                flags.extend(["--peer-tls-name".to_owned(), AGENT_NAME.to_owned()]);
            }
            (Security::NodeIdentity, _) => {
                flags.extend([
                    "--tls-node-cert".to_owned(),
                    // Clients below reach it by the name its certificate carries.
                    "--allowed-host".to_owned(),
                    VICTIM_DNS.to_owned(),
                ]);
            }
            _ => {}
        }
        flags.extend(victim_flags.iter().map(|flag| (*flag).to_owned()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let victim = AgentProcess::start(victim_dir.path(), &flags)?;
        let port = victim
            .http_addr
            .ok_or_else(|| anyhow::anyhow!("no --http address"))?
            .port();
        let (victim_url, client) = match (security, &certificates) {
            // The victim serves its node certificate: trusted through the
            // node CA the controller made, reached by the node's name.
            (Security::NodeIdentity, _) => (
                format!("https://{VICTIM_DNS}:{port}"),
                reqwest::Client::builder()
                    .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
                        data.path().join("node-ca.pem"),
                    )?)?)
                    .resolve(VICTIM_DNS, ([127, 0, 0, 1], port).into())
                    .build()?,
            ),
            (_, Some(certificates)) => (
                format!("https://localhost:{port}"),
                reqwest::Client::builder()
                    .add_root_certificate(certificates.ca_certificate()?)
                    .build()?,
            ),
            (_, None) => (format!("http://127.0.0.1:{port}"), reqwest::Client::new()),
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
        self.rogue_with_csr(name, None).await
    }

    /// [`Fleet::rogue`], asking for a node certificate with `csr`.
    async fn rogue_with_csr(&self, name: &str, csr: Option<&str>) -> anyhow::Result<RogueNode> {
        let rogue = self.enrol(name, csr).await?;
        self.assign(name)?;
        Ok(rogue)
    }

    /// Enrols a node through `proto/` with the fleet's token, nothing assigned.
    async fn enrol(&self, name: &str, csr: Option<&str>) -> anyhow::Result<RogueNode> {
        let ca = self
            .tls
            .as_ref()
            .map(|tls| std::fs::read(&tls.ca))
            .transpose()?;
        RogueNode::enrol_with_csr(&self.grpc_url, ca.as_deref(), &self.token, name, csr).await
    }

    /// The node CA's certificate (PEM), from the controller's data dir.
    fn node_ca(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(
            self.controller.data_dir.join("node-ca.pem"),
        )?)
    }

    fn assign(&self, name: &str) -> anyhow::Result<()> {
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
        Ok(())
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
    let fleet = Fleet::start(Security::Plain, &[]).await?;
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
    let security = if tls {
        Security::FleetCertificate
    } else {
        Security::Plain
    };
    let fleet = Fleet::start(security, &[]).await?;
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
    let fleet = Fleet::start(
        Security::Plain,
        &["--cors-origin", "https://app.example.com"],
    )
    .await?;
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

/// The blake3 digest the registry lists the tiny model under.
fn tiny_digest() -> String {
    blake3::hash(&tiny_gguf()).to_hex().to_string()
}

/// Node identity (a): the directory lists `victim-peer` for the model, but
/// the address it advertised is held by `rogue`, another enrolled node
/// presenting its own, perfectly valid node certificate (and answering
/// with the right artifact digest). The victim must refuse the handshake:
/// the certificate does not name the node the directory lists. The same
/// listener presenting victim-peer's own certificate is then accepted,
/// so the refusal is the name check and nothing else.
#[tokio::test]
async fn a_peer_presenting_another_nodes_certificate_cannot_answer_in_its_place()
-> anyhow::Result<()> {
    let fleet = Fleet::start(Security::NodeIdentity, &[]).await?;
    // The rogue even asks for victim-peer's name: it gets its own.
    let (rogue_key, rogue_csr) = key_and_csr(&["victim-peer.node.flotilla.internal"])?;
    let rogue = fleet.enrol("rogue", Some(rogue_csr.as_str())).await?;
    let rogue_certificate = rogue
        .certificate
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the rogue was issued no certificate"))?;
    let listener =
        RogueTlsListener::start(&rogue_certificate.chain_pem, &rogue_key, &tiny_digest()).await?;

    let (peer_key, peer_csr) = key_and_csr(&[])?;
    let victim_peer = fleet
        .rogue_with_csr("victim-peer", Some(peer_csr.as_str()))
        .await?;
    let peer_certificate = victim_peer
        .certificate
        .clone()
        .ok_or_else(|| anyhow::anyhow!("victim-peer was issued no certificate"))?;
    let stream = victim_peer
        .sync_with_csr(
            &format!("https://127.0.0.1:{}", listener.addr.port()),
            Some(peer_csr.as_str()),
        )
        .await
        .map_err(|status| anyhow::anyhow!("victim-peer's hello was refused: {status}"))?;
    tokio::spawn(stream.claim_ready());
    fleet.wait_for_route().await?;

    let (status, body) = fleet.chat().await?;
    assert!(
        !body.contains(INJECTED),
        "another node's certificate answered for victim-peer: {status} {body}"
    );
    assert_eq!(status, reqwest::StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("victim-peer"), "{body}");
    assert!(
        listener.requests().is_empty(),
        "the request reached the impostor:\n{}",
        listener.requests().join("\n---\n")
    );
    let metrics = fleet
        .client
        .get(format!("{}/metrics", fleet.victim_url))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        flotilla_tests::metric_value(&metrics, "flotilla_inference_peer_identity_refused_total")
            .is_some_and(|refused| refused >= 1.0),
        "the refusal is counted:\n{metrics}"
    );

    // Control: the node the directory lists, with its own certificate.
    listener.present(&peer_certificate.chain_pem, &peer_key)?;
    let (status, body) = fleet.chat().await?;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert!(body.contains(INJECTED), "victim-peer's own answer: {body}");
    let forwarded = listener.requests();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert!(
        !forwarded[0].contains(KEY),
        "the client's key stays with the victim: {}",
        forwarded[0]
    );
    Ok(())
}

/// Node identity (b): a node's signing request asking for another node's
/// name, a wildcard and a CA's powers gets a certificate for its own name
/// alone; an oversized or forged request is refused before the bootstrap
/// token is spent.
#[tokio::test]
async fn a_node_certificate_names_only_the_enrolled_node() -> anyhow::Result<()> {
    let fleet = Fleet::start(Security::NodeIdentity, &[]).await?;
    let (_key, csr) = key_and_csr(&[
        "victim.node.flotilla.internal",
        "*.node.flotilla.internal",
        "localhost",
    ])?;
    let rogue = fleet.enrol("rogue", Some(csr.as_str())).await?;
    let issued = rogue
        .certificate
        .ok_or_else(|| anyhow::anyhow!("no certificate issued"))?;
    let ca = fleet.node_ca()?;
    assert_eq!(issued.ca_pem, ca);
    flotilla_agent::tls::verify_node_certificate(
        ca.as_bytes(),
        issued.chain_pem.as_bytes(),
        "rogue",
    )
    .map_err(|error| anyhow::anyhow!("not valid for its own node: {error}"))?;
    for other in [VICTIM, "victim-peer", "anything"] {
        assert!(
            flotilla_agent::tls::verify_node_certificate(
                ca.as_bytes(),
                issued.chain_pem.as_bytes(),
                other
            )
            .is_err(),
            "the rogue's certificate passes for {other}"
        );
    }
    for (csr, why) in [
        ("A".repeat(9 * 1024), "at most"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                .to_owned(),
            "PKCS#10",
        ),
    ] {
        let refused = fleet
            .enrol("rogue-2", Some(csr.as_str()))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a bad request was accepted"))?;
        let status = refused
            .downcast_ref::<tonic::Status>()
            .ok_or_else(|| anyhow::anyhow!("{refused:#}"))?;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains(why), "{status}");
    }
    // Refused before the token was spent: it still enrols (5 uses: the
    // victim, rogue, and this one).
    fleet.enrol("rogue-2", None).await?;
    Ok(())
}

/// Node identity (c): in a fleet with TLS a node is listed only while a
/// certificate issued on its stream is valid: one that asks for none is
/// never a peer, however READY it claims to be, and a removed node leaves
/// the directory. (Expiry itself: `fleet::hub`'s unit test.)
#[tokio::test]
async fn only_nodes_with_a_valid_certificate_are_listed() -> anyhow::Result<()> {
    let fleet = Fleet::start(Security::NodeIdentity, &[]).await?;
    let observer = fleet.enrol("observer", None).await?;
    let observing = observer
        .sync("")
        .await
        .map_err(|status| anyhow::anyhow!("observer: {status}"))?;
    let seen = observing.directory();
    tokio::spawn(observing.claim_ready());

    let uncertified = fleet.rogue("uncertified").await?;
    let stream = uncertified
        .sync("https://127.0.0.1:9")
        .await
        .map_err(|status| anyhow::anyhow!("uncertified: {status}"))?;
    tokio::spawn(stream.claim_ready());
    let (_key, csr) = key_and_csr(&[])?;
    let certified = fleet
        .rogue_with_csr("certified", Some(csr.as_str()))
        .await?;
    let stream = certified
        .sync_with_csr("https://127.0.0.1:10", Some(csr.as_str()))
        .await
        .map_err(|status| anyhow::anyhow!("certified: {status}"))?;
    tokio::spawn(stream.claim_ready());

    wait_until("the certified node to be listed", WAIT, || async {
        seen.nodes().contains(&"certified".to_owned())
    })
    .await?;
    // Both claim READY and heartbeat alike; one has no certificate.
    assert_eq!(seen.nodes(), ["certified"]);

    cli(
        &fleet.controller,
        fleet.home.path(),
        &["node", "rm", "certified"],
    )?;
    wait_until("the removed node to leave the directory", WAIT, || async {
        seen.nodes().is_empty()
    })
    .await?;
    Ok(())
}
