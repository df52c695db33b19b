//! Adversarial tests of the control plane (issue 16): a rogue client written
//! against `proto/` and the REST API, as an attacker holding one bootstrap
//! token, one enrolled node's credential or one API token would act, against
//! the real `flotilla-controller` binary. Each attack here succeeded on the
//! controller before issue 16 and must now fail:
//!
//! - taking over an enrolled node's name with any bootstrap token (and
//!   racing replays of one), keeping the old credential alive after a
//!   replacement, un-cordoning a node by replacing it;
//! - enrolling a name a bound token was not made for;
//! - using a removed node's credential, a revoked API token or a revoked
//!   bootstrap token;
//! - reading the routing directory while pending approval;
//! - hostile inventories and a hostile GGUF upload (memory amplification);
//! - a role check after body parsing, a year-long first admin token, a
//!   world-readable database, a token in a query string reaching the log.

use std::collections::HashMap;
use std::time::Duration;

use flotilla_proto::fleet::v1 as pb;
use flotilla_proto::fleet::v1::fleet_client::FleetClient;
use flotilla_tests::{ControllerProcess, memory_mib, wait_until};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// How long a test waits for anything to happen.
const DEADLINE: Duration = Duration::from_secs(30);

/// The attacker's and the operator's view of one controller.
struct Fleet {
    controller: ControllerProcess,
    http: reqwest::Client,
    grpc: FleetClient<Channel>,
    admin: String,
    _data: tempfile::TempDir,
}

impl Fleet {
    async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_logged(extra, None).await
    }

    async fn start_logged(
        extra: &[&str],
        log_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let controller = ControllerProcess::start_with_env(
            data.path(),
            extra,
            &[("RUST_LOG", "info")],
            log_file,
        )
        .await?;
        let grpc = FleetClient::connect(format!("http://{}", controller.grpc_addr)).await?;
        let admin = controller.admin_token()?;
        Ok(Self {
            controller,
            http: reqwest::Client::new(),
            grpc,
            admin,
            _data: data,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.controller.rest_url)
    }

    async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A bootstrap token as an operator creates it; `extra` adds fields.
    async fn bootstrap_token(&self, uses: u32, extra: Value) -> anyhow::Result<Value> {
        let mut body = json!({"ttl_seconds": 600, "uses": uses});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (status, token) = self
            .rest(
                reqwest::Method::POST,
                "/api/v1/nodes/tokens",
                &self.admin,
                Some(body),
            )
            .await?;
        anyhow::ensure!(status == 201, "token create: {status} {token}");
        Ok(token)
    }

    async fn enroll(
        &self,
        token: &str,
        name: &str,
        replace: bool,
        labels: &[(&str, &str)],
    ) -> Result<pb::EnrollResponse, tonic::Status> {
        self.enroll_with(token, name, replace, labels, inventory())
            .await
    }

    async fn enroll_with(
        &self,
        token: &str,
        name: &str,
        replace: bool,
        labels: &[(&str, &str)],
        inventory: pb::Inventory,
    ) -> Result<pb::EnrollResponse, tonic::Status> {
        let request = pb::EnrollRequest {
            bootstrap_token: token.to_owned(),
            node_name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            inventory: Some(inventory),
            agent_version: "rogue-1".to_owned(),
            replace_existing: replace,
            certificate_signing_request: String::new(),
        };
        self.grpc
            .clone()
            .enroll(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Opens a `Sync` stream as `name` with `credential`; the stream is open
    /// when this returns `Ok`.
    async fn sync(&self, name: &str, credential: &str) -> Result<Stream, tonic::Status> {
        let (outbound, receiver) = mpsc::channel(16);
        outbound
            .send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Hello(pb::Hello {
                    node_name: name.to_owned(),
                    agent_version: "rogue-1".to_owned(),
                    ..pb::Hello::default()
                })),
            })
            .await
            .map_err(|_| tonic::Status::internal("test channel closed"))?;
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {credential}")
                .parse()
                .map_err(|_| tonic::Status::internal("bad header"))?,
        );
        let inbound = self.grpc.clone().sync(request).await?.into_inner();
        Ok(Stream {
            outbound,
            inbound,
            sequence: 0,
        })
    }

    async fn node(&self, name: &str) -> anyhow::Result<Value> {
        let (status, node) = self
            .rest(
                reqwest::Method::GET,
                &format!("/api/v1/nodes/{name}"),
                &self.admin,
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "node {name}: {status} {node}");
        Ok(node)
    }
}

/// One open `Sync` stream of the rogue client.
struct Stream {
    outbound: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::ControllerMessage>,
    sequence: u64,
}

impl Stream {
    async fn heartbeat(&mut self) -> anyhow::Result<()> {
        self.sequence += 1;
        self.outbound
            .send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
                    sequence: self.sequence,
                    sample: None,
                })),
            })
            .await?;
        Ok(())
    }

    /// The next message, or the status the stream ended with.
    async fn next(
        &mut self,
    ) -> anyhow::Result<Result<pb::controller_message::Body, tonic::Status>> {
        match tokio::time::timeout(DEADLINE, self.inbound.message()).await? {
            Ok(Some(pb::ControllerMessage { body: Some(body) })) => Ok(Ok(body)),
            Ok(Some(_)) => anyhow::bail!("empty controller message"),
            Ok(None) => Ok(Err(tonic::Status::cancelled("stream ended"))),
            Err(status) => Ok(Err(status)),
        }
    }

    /// Reads until the ack of the heartbeat just sent; returns whether a
    /// routing directory came on the way.
    async fn directory_before_ack(&mut self) -> anyhow::Result<bool> {
        self.heartbeat().await?;
        let mut directory = false;
        loop {
            match self.next().await?? {
                pb::controller_message::Body::Directory(_) => directory = true,
                pb::controller_message::Body::HeartbeatAck(ack)
                    if ack.sequence == self.sequence =>
                {
                    return Ok(directory);
                }
                _ => {}
            }
        }
    }

    /// Reads until the stream ends; its final status.
    async fn ended(&mut self) -> anyhow::Result<tonic::Status> {
        loop {
            if let Err(status) = self.next().await? {
                return Ok(status);
            }
        }
    }
}

fn inventory() -> pb::Inventory {
    pb::Inventory {
        cpu_model: "rogue cpu".to_owned(),
        cpu_cores: 4,
        memory_total_bytes: 8 << 30,
        ..pb::Inventory::default()
    }
}

fn token_string(token: &Value) -> String {
    token["token"].as_str().unwrap_or_default().to_owned()
}

/// Attack: with any bootstrap token, enrol under an enrolled node's name
/// with `replace_existing`. Before: the node was overwritten (a cordoned
/// node came back active with the attacker's labels) and the genuine
/// agent's credential still worked. Now: refused, nothing changes, and the
/// token keeps its use.
#[tokio::test]
async fn any_bootstrap_token_cannot_take_over_an_enrolled_name() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let genuine_token = fleet.bootstrap_token(1, json!({})).await?;
    let genuine = fleet
        .enroll(
            &token_string(&genuine_token),
            "victim",
            false,
            &[("site", "berlin")],
        )
        .await?;
    let (status, _) = fleet
        .rest(
            reqwest::Method::POST,
            "/api/v1/nodes/victim/cordon",
            &fleet.admin,
            None,
        )
        .await?;
    assert_eq!(status, 200);

    let attacker_token = fleet.bootstrap_token(1, json!({})).await?;
    let refused = fleet
        .enroll(
            &token_string(&attacker_token),
            "victim",
            true,
            &[("site", "evil")],
        )
        .await
        .expect_err("a takeover must be refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("approve-replace victim"),
        "{refused:?}"
    );

    let node = fleet.node("victim").await?;
    assert_eq!(node["status"], "cordoned");
    assert_eq!(node["labels"]["site"], "berlin");
    // The genuine agent is still in, and the refused attempt kept the use.
    let mut stream = fleet.sync("victim", &genuine.credential).await?;
    assert!(matches!(
        stream.next().await??,
        pb::controller_message::Body::Desired(_)
    ));
    fleet
        .enroll(&token_string(&attacker_token), "bystander", false, &[])
        .await?;
    Ok(())
}

/// Attack: replay one token many times at once to replace a node (the
/// reconnect loop that stole 11 of 12 requests). Now every attempt is
/// refused. A one-use token raced for fresh names still enrols once.
#[tokio::test]
async fn racing_replays_of_a_token_take_no_name() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let genuine = fleet.bootstrap_token(1, json!({})).await?;
    fleet
        .enroll(&token_string(&genuine), "victim", false, &[])
        .await?;
    let replayed = token_string(&fleet.bootstrap_token(20, json!({})).await?);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        spawn_enroll(&mut tasks, &fleet.grpc, &replayed, "victim", true);
    }
    let replays = outcomes(tasks).await?;
    assert!(
        replays.iter().all(|outcome| outcome
            .as_ref()
            .is_err_and(|status| status.code() == Code::PermissionDenied)),
        "{replays:?}"
    );

    let single = token_string(&fleet.bootstrap_token(1, json!({})).await?);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..8 {
        spawn_enroll(
            &mut tasks,
            &fleet.grpc,
            &single,
            &format!("racer-{index}"),
            false,
        );
    }
    let races = outcomes(tasks).await?;
    assert_eq!(
        races.iter().filter(|outcome| outcome.is_ok()).count(),
        1,
        "{races:?}"
    );
    Ok(())
}

/// Enrols from a task of its own, so that attempts race for real.
fn spawn_enroll(
    tasks: &mut tokio::task::JoinSet<Result<pb::EnrollResponse, tonic::Status>>,
    grpc: &FleetClient<Channel>,
    token: &str,
    name: &str,
    replace: bool,
) {
    let mut grpc = grpc.clone();
    let request = pb::EnrollRequest {
        bootstrap_token: token.to_owned(),
        node_name: name.to_owned(),
        inventory: Some(inventory()),
        replace_existing: replace,
        ..pb::EnrollRequest::default()
    };
    tasks.spawn(async move { grpc.enroll(request).await.map(tonic::Response::into_inner) });
}

async fn outcomes(
    mut tasks: tokio::task::JoinSet<Result<pb::EnrollResponse, tonic::Status>>,
) -> anyhow::Result<Vec<Result<pb::EnrollResponse, tonic::Status>>> {
    let mut outcomes = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        outcomes.push(outcome?);
    }
    Ok(outcomes)
}

/// An operator-approved replacement works, keeps the cordon, and revokes
/// the replaced node's credential at once: its stream ends, it cannot open
/// a new one, and its refresh secret renews nothing. Before: there was no
/// approval, the cordon was lost and the old credential kept working.
#[tokio::test]
async fn an_approved_replacement_revokes_the_old_credential_and_keeps_the_cordon()
-> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let first = fleet.bootstrap_token(1, json!({})).await?;
    let old = fleet
        .enroll(&token_string(&first), "edge-1", false, &[])
        .await?;
    let mut old_stream = fleet.sync("edge-1", &old.credential).await?;
    assert!(matches!(
        old_stream.next().await??,
        pb::controller_message::Body::Desired(_)
    ));
    let (status, _) = fleet
        .rest(
            reqwest::Method::POST,
            "/api/v1/nodes/edge-1/cordon",
            &fleet.admin,
            None,
        )
        .await?;
    assert_eq!(status, 200);

    let (status, body) = fleet
        .rest(
            reqwest::Method::POST,
            "/api/v1/nodes/edge-1/approve-replace",
            &fleet.admin,
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let second = fleet.bootstrap_token(1, json!({})).await?;
    let new = fleet
        .enroll(&token_string(&second), "edge-1", true, &[])
        .await?;
    assert_eq!(new.status(), pb::NodeStatus::Cordoned);
    assert_eq!(fleet.node("edge-1").await?["status"], "cordoned");

    // The old stream is ended, and the old credential opens no new one.
    let ended = old_stream.ended().await?;
    assert_ne!(ended.code(), Code::Ok);
    let refused = fleet
        .sync("edge-1", &old.credential)
        .await
        .err()
        .expect("the replaced credential must be refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let renewal = fleet
        .grpc
        .clone()
        .renew_credential(pb::RenewCredentialRequest {
            node_name: "edge-1".to_owned(),
            refresh_secret: old.refresh_secret.clone(),
            certificate_signing_request: String::new(),
        })
        .await
        .expect_err("the replaced refresh secret must be refused");
    assert_eq!(renewal.code(), Code::Unauthenticated);
    fleet.sync("edge-1", &new.credential).await?;

    // The approval was used up: a second replacement needs another.
    let third = fleet.bootstrap_token(1, json!({})).await?;
    let again = fleet
        .enroll(&token_string(&third), "edge-1", true, &[])
        .await
        .expect_err("one approval, one replacement");
    assert_eq!(again.code(), Code::PermissionDenied);
    // A token made to replace exactly this node is an approval too.
    let replacing = fleet
        .bootstrap_token(1, json!({"replace": "edge-1"}))
        .await?;
    fleet
        .enroll(&token_string(&replacing), "edge-1", true, &[])
        .await?;
    Ok(())
}

/// Attack: enrol a name the token was not made for. Now a token bound to
/// `rack7-*` enrols only matching names.
#[tokio::test]
async fn a_bound_token_enrols_only_matching_names() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let token = token_string(&fleet.bootstrap_token(2, json!({"node": "rack7-*"})).await?);
    let refused = fleet
        .enroll(&token, "evil", false, &[])
        .await
        .expect_err("a name outside the pattern must be refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    fleet.enroll(&token, "rack7-01", false, &[]).await?;
    Ok(())
}

/// Attack: keep using a removed node's credential. `node rm` (admin)
/// removes it and its credential fails at once.
#[tokio::test]
async fn a_removed_node_loses_its_credentials() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let token = fleet.bootstrap_token(1, json!({})).await?;
    let node = fleet
        .enroll(&token_string(&token), "gone", false, &[])
        .await?;
    let mut stream = fleet.sync("gone", &node.credential).await?;
    assert!(matches!(
        stream.next().await??,
        pb::controller_message::Body::Desired(_)
    ));

    // An operator may not remove nodes; an admin may.
    let operator = mint(&fleet, "ops", "operator").await?;
    let (status, _) = fleet
        .rest(
            reqwest::Method::DELETE,
            "/api/v1/nodes/gone",
            &operator,
            None,
        )
        .await?;
    assert_eq!(status, 403);
    let (status, body) = fleet
        .rest(
            reqwest::Method::DELETE,
            "/api/v1/nodes/gone",
            &fleet.admin,
            None,
        )
        .await?;
    assert_eq!(status, 204, "{body}");

    assert_ne!(stream.ended().await?.code(), Code::Ok);
    let refused = fleet
        .sync("gone", &node.credential)
        .await
        .err()
        .expect("a removed node's credential must be refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let (status, _) = fleet
        .rest(
            reqwest::Method::GET,
            "/api/v1/nodes/gone",
            &fleet.admin,
            None,
        )
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

async fn mint(fleet: &Fleet, subject: &str, role: &str) -> anyhow::Result<String> {
    let (status, minted) = fleet
        .rest(
            reqwest::Method::POST,
            "/api/v1/tokens",
            &fleet.admin,
            Some(json!({"subject": subject, "role": role, "ttl_seconds": 3600})),
        )
        .await?;
    anyhow::ensure!(status == 201, "mint: {status} {minted}");
    Ok(minted["token"].as_str().unwrap_or_default().to_owned())
}

/// Revokes API token `id` as the admin; the revocation must be accepted.
async fn revoke_api_token(fleet: &Fleet, id: &str) -> anyhow::Result<()> {
    let (status, body) = fleet
        .rest(
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &fleet.admin,
            None,
        )
        .await?;
    anyhow::ensure!(status == 200, "revoking token {id}: {status} {body}");
    Ok(())
}

/// Attack: keep using an API token or a bootstrap token after an operator
/// revoked it. Before: no token could be revoked short of rotating the key.
#[tokio::test]
async fn revoked_tokens_are_refused() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let leaked = mint(&fleet, "ci", "operator").await?;
    let (status, _) = fleet
        .rest(reqwest::Method::GET, "/api/v1/nodes", &leaked, None)
        .await?;
    assert_eq!(status, 200);
    let (status, listed) = fleet
        .rest(reqwest::Method::GET, "/api/v1/tokens", &fleet.admin, None)
        .await?;
    assert_eq!(status, 200, "{listed}");
    let id = listed
        .as_array()
        .and_then(|tokens| tokens.iter().find(|token| token["subject"] == "ci"))
        .and_then(|token| token["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "{listed}");
    revoke_api_token(&fleet, &id).await?;
    let (status, body) = fleet
        .rest(reqwest::Method::GET, "/api/v1/nodes", &leaked, None)
        .await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("revoked"), "{body}");

    let bootstrap = fleet.bootstrap_token(5, json!({})).await?;
    let id = bootstrap["id"].as_str().unwrap_or_default();
    let (status, body) = fleet
        .rest(
            reqwest::Method::DELETE,
            &format!("/api/v1/nodes/tokens/{id}"),
            &fleet.admin,
            None,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let refused = fleet
        .enroll(&token_string(&bootstrap), "late", false, &[])
        .await
        .expect_err("a revoked bootstrap token must be refused");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("revoked"), "{refused:?}");
    Ok(())
}

/// An admin token minted offline (`flotilla-controller mint-token`) was
/// valid but recorded nowhere: no listing showed it and it could not be
/// revoked. Now it is recorded like any other.
#[tokio::test]
async fn an_offline_minted_token_is_listed_and_revocable() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let mint_offline = |role: &str| {
        std::process::Command::new(flotilla_tests::binary("flotilla-controller")?)
            .arg("--data-dir")
            .arg(&fleet.controller.data_dir)
            .args(["mint-token", "--subject", "rescue", "--role", role])
            .args(["--ttl-seconds", "600"])
            .env("RUST_LOG", "warn")
            .output()
            .map_err(anyhow::Error::from)
    };
    let refused = mint_offline("node")?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("enrolment"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let minted = mint_offline("admin")?;
    anyhow::ensure!(
        minted.status.success(),
        "mint-token: {}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let rescue = String::from_utf8(minted.stdout)?.trim().to_owned();
    let (status, _) = fleet
        .rest(reqwest::Method::GET, "/api/v1/nodes", &rescue, None)
        .await?;
    assert_eq!(status, 200);
    let (status, listed) = fleet
        .rest(reqwest::Method::GET, "/api/v1/tokens", &fleet.admin, None)
        .await?;
    assert_eq!(status, 200, "{listed}");
    let recorded = listed
        .as_array()
        .and_then(|tokens| tokens.iter().find(|token| token["subject"] == "rescue"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        recorded["created_by"], "flotilla-controller mint-token",
        "{listed}"
    );
    let id = recorded["id"].as_str().unwrap_or_default();
    revoke_api_token(&fleet, id).await?;
    let (status, body) = fleet
        .rest(reqwest::Method::GET, "/api/v1/nodes", &rescue, None)
        .await?;
    assert_eq!(status, 401, "{body}");
    Ok(())
}

/// Attack: enrol (pending approval) and read the routing directory: peer
/// names and internal URLs. Now a pending node gets none until approved.
#[tokio::test]
async fn a_pending_node_reads_no_directory() -> anyhow::Result<()> {
    let fleet = Fleet::start(&["--require-node-approval"]).await?;
    let token = fleet.bootstrap_token(1, json!({})).await?;
    let node = fleet
        .enroll(&token_string(&token), "newcomer", false, &[])
        .await?;
    assert_eq!(node.status(), pb::NodeStatus::Pending);
    let mut stream = fleet.sync("newcomer", &node.credential).await?;
    for _ in 0..3 {
        assert!(
            !stream.directory_before_ack().await?,
            "a pending node received the routing directory"
        );
    }
    let (status, _) = fleet
        .rest(
            reqwest::Method::POST,
            "/api/v1/nodes/newcomer/approve",
            &fleet.admin,
            None,
        )
        .await?;
    assert_eq!(status, 200);
    let mut approved = false;
    for _ in 0..20 {
        if stream.directory_before_ack().await? {
            approved = true;
            break;
        }
    }
    assert!(approved, "the approved node never received the directory");
    Ok(())
}

/// Attack: enrol with an inventory that every `GET /nodes` then returns
/// (a 3 MiB CPU name, 20,000 GPUs). Now refused, naming the field, and the
/// token keeps its use.
#[tokio::test]
async fn hostile_inventories_are_refused() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let token = token_string(&fleet.bootstrap_token(1, json!({})).await?);
    let huge_name = pb::Inventory {
        cpu_model: "x".repeat(3 << 20),
        ..inventory()
    };
    let refused = fleet
        .enroll_with(&token, "fat", false, &[], huge_name)
        .await
        .expect_err("a 3 MiB CPU name must be refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("inventory.cpu_model"),
        "{refused:?}"
    );
    let many_gpus = pb::Inventory {
        gpus: (0..20_000)
            .map(|index| pb::Gpu {
                index,
                name: "gpu".to_owned(),
                ..pb::Gpu::default()
            })
            .collect(),
        ..inventory()
    };
    let refused = fleet
        .enroll_with(&token, "fat", false, &[], many_gpus)
        .await
        .expect_err("20,000 GPUs must be refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("inventory.gpus"), "{refused:?}");
    // Neither spent the token.
    fleet.enroll(&token, "lean", false, &[]).await?;
    Ok(())
}

/// A GGUF header of one metadata entry: an array of `count` u8.
fn hostile_gguf(count: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"GGUF");
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    let key = b"hostile.array";
    bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&9u32.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    bytes.resize(bytes.len() + count as usize, 1);
    bytes
}

/// Attack: upload an 8 MiB GGUF holding one u8 array. Before: the
/// controller's inspection took over 300 MB for it. Now it is refused
/// early and costs little.
#[tokio::test]
async fn a_hostile_gguf_upload_costs_little_memory() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let (status, _) = fleet
        .rest(
            reqwest::Method::POST,
            "/api/v1/models",
            &fleet.admin,
            Some(json!({"name": "hostile"})),
        )
        .await?;
    assert_eq!(status, 201);
    let (status, _) = fleet
        .rest(
            reqwest::Method::POST,
            "/api/v1/models/hostile/versions",
            &fleet.admin,
            Some(json!({"version": "1.0.0"})),
        )
        .await?;
    assert_eq!(status, 201);
    let pid = fleet.controller.process.id();
    let (_, peak_before) = memory_mib(pid)?;
    let response = fleet
        .http
        .post(fleet.url("/api/v1/models/hostile/versions/1.0.0/artifacts"))
        .bearer_auth(&fleet.admin)
        .header("content-type", "application/octet-stream")
        .body(hostile_gguf(8 << 20))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    let (_, peak_after) = memory_mib(pid)?;
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(
        peak_after - peak_before < 100.0,
        "the controller's peak memory grew by {:.0} MiB for an 8 MiB upload ({status} {body})",
        peak_after - peak_before
    );
    Ok(())
}

/// A viewer's write is refused for its role before its body is parsed:
/// the answer does not depend on the body. Before: a malformed body got a
/// 400 that described the body.
#[tokio::test]
async fn the_role_is_checked_before_the_body() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let viewer = mint(&fleet, "vera", "viewer").await?;
    for path in ["/api/v1/tokens", "/api/v1/models", "/api/v1/nodes/tokens"] {
        let response = fleet
            .http
            .post(fleet.url(path))
            .bearer_auth(&viewer)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 403, "{path}");
    }
    Ok(())
}

/// The first admin token lives a day (configurable), not a year; tokens
/// carry an issuer and a not-before time; the SQLite file is private.
#[tokio::test]
async fn the_first_admin_token_is_short_lived_and_the_database_private() -> anyhow::Result<()> {
    let fleet = Fleet::start(&[]).await?;
    let (status, me) = fleet
        .rest(reqwest::Method::GET, "/api/v1/whoami", &fleet.admin, None)
        .await?;
    assert_eq!(status, 200);
    let expires_at = time::OffsetDateTime::parse(
        me["expires_at"].as_str().unwrap_or_default(),
        &time::format_description::well_known::Rfc3339,
    )?;
    let lifetime = expires_at - time::OffsetDateTime::now_utc();
    assert!(
        lifetime <= time::Duration::hours(24),
        "the first admin token lives {lifetime}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let database = fleet.controller.data_dir.join("flotilla.db");
        let mode = std::fs::metadata(&database)?.permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", database.display());
    }
    Ok(())
}

/// A token pasted into a query string never reaches the log.
#[tokio::test]
async fn a_token_in_a_query_string_is_not_logged() -> anyhow::Result<()> {
    let logs = tempfile::tempdir()?;
    let log_file = logs.path().join("controller.log");
    let fleet = Fleet::start_logged(&[], Some(&log_file)).await?;
    let secret = "querysecret0123456789";
    let response = fleet
        .http
        .post(fleet.url(&format!("/api/v1/tokens?access_token={secret}")))
        .bearer_auth(&fleet.admin)
        .json(&json!({"subject": "logged", "role": "viewer", "ttl_seconds": 60}))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 201);
    wait_until("the mint to be logged", DEADLINE, || async {
        std::fs::read_to_string(&log_file).is_ok_and(|log| log.contains("token minted"))
    })
    .await?;
    let log = std::fs::read_to_string(&log_file)?;
    assert!(!log.contains(secret), "the query string reached the log");
    Ok(())
}
