//! A rogue node for the adversarial tests, written against `proto/` the way
//! an attacker holding one bootstrap token would write it: it enrols with
//! the real token, opens a `Sync` stream advertising whatever URLs it likes,
//! and claims READY on whatever it is assigned, with heartbeats, so that
//! the controller lists it as a peer. Its "inference API" is a bare TCP
//! listener that records every request it receives ([`RogueListener`]) and
//! answers with text of its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::fleet::v1 as pb;
use pb::fleet_client::FleetClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// What the rogue listener answers every request with.
pub const INJECTED: &str = "INJECTED BY THE ROGUE NODE";

/// A listener that records the raw requests (head and body) sent to it.
pub struct RogueListener {
    pub addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RogueListener {
    /// Listens on a free loopback port. Each request is answered `200` with
    /// an OpenAI-shaped completion whose text is [`INJECTED`], claiming to
    /// be artifact `digest` (`x-flotilla-model-digest`).
    pub async fn start(digest: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let digest = digest.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let recorded = recorded.clone();
                let digest = digest.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else {
                        return;
                    };
                    lock(&recorded).push(request);
                    let body = format!(
                        "{{\"id\":\"x\",\"object\":\"chat.completion\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{INJECTED}\"}},\"finish_reason\":\"stop\"}}]}}"
                    );
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-flotilla-model-digest: {digest}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(Self {
            addr,
            requests,
            task,
        })
    }

    /// Every request received so far, head and body as text.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }
}

impl Drop for RogueListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads one HTTP/1.1 request: the head, then `content-length` bytes.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Some(String::from_utf8_lossy(&buffer).into_owned())
}

/// An HTTPS listener presenting a certificate the test chooses (and may
/// swap: a node's own, or another node's), recording what reaches it and
/// answering like [`RogueListener`]: [`INJECTED`], claiming artifact
/// `digest`. It stands at an address the directory lists for a node, as
/// one that took over the address would.
pub struct RogueTlsListener {
    pub addr: std::net::SocketAddr,
    certificate: Arc<flotilla_tls::SwappableCertificate>,
    requests: Arc<Mutex<Vec<String>>>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl RogueTlsListener {
    pub async fn start(chain_pem: &str, key_pem: &str, digest: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let certificate = Arc::new(flotilla_tls::SwappableCertificate::default());
        certificate.replace(chain_pem.as_bytes(), key_pem.as_bytes())?;
        let tls = flotilla_tls::ServerTls::from_memory(certificate.clone(), None)?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let digest = digest.to_owned();
        let router = axum::Router::new().fallback(
            move |request: axum::extract::Request| {
                let recorded = recorded.clone();
                let digest = digest.clone();
                async move {
                    let (head, body) = request.into_parts();
                    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                    lock(&recorded).push(format!(
                        "{} {}\n{:?}\n{}",
                        head.method,
                        head.uri,
                        head.headers,
                        String::from_utf8_lossy(&body)
                    ));
                    let answer = format!(
                        "{{\"id\":\"x\",\"object\":\"chat.completion\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{INJECTED}\"}},\"finish_reason\":\"stop\"}}]}}"
                    );
                    (
                        [
                            ("content-type", "application/json".to_owned()),
                            ("x-flotilla-model-digest", digest),
                        ],
                        answer,
                    )
                }
            },
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(flotilla_tls::serve_router(
            listener,
            router,
            Some(tls),
            shutdown.clone(),
            None,
        ));
        Ok(Self {
            addr,
            certificate,
            requests,
            shutdown,
        })
    }

    /// Presents another certificate to new connections.
    pub fn present(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        Ok(self
            .certificate
            .replace(chain_pem.as_bytes(), key_pem.as_bytes())?)
    }

    /// Every request received so far: method, URI, headers, body.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }
}

impl Drop for RogueTlsListener {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh ECDSA P-256 key (PEM) and a signing request for it asking for
/// `names` (DNS) and a CA's basic constraints: what a rogue would ask for.
pub fn key_and_csr(names: &[&str]) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(
        names
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>(),
    )?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, *first);
    }
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

/// A node enrolled through `Fleet/Enroll` with a real bootstrap token.
pub struct RogueNode {
    pub name: String,
    channel: Channel,
    credential: String,
    /// The certificate the controller issued for the enrolment's signing
    /// request, if it sent one.
    pub certificate: Option<pb::NodeCertificate>,
}

impl RogueNode {
    /// Enrols `name` at the controller's gRPC `url` (trusting `ca_pem` for
    /// an `https://` URL).
    pub async fn enrol(
        url: &str,
        ca_pem: Option<&[u8]>,
        token: &str,
        name: &str,
    ) -> anyhow::Result<Self> {
        Self::enrol_with_csr(url, ca_pem, token, name, None).await
    }

    /// [`RogueNode::enrol`], sending `csr` (PEM) for a node certificate.
    pub async fn enrol_with_csr(
        url: &str,
        ca_pem: Option<&[u8]>,
        token: &str,
        name: &str,
        csr: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?;
        if let Some(pem) = ca_pem {
            endpoint = endpoint.tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(pem))
                    .domain_name("localhost"),
            )?;
        }
        let channel = endpoint.connect().await?;
        let enrolled = FleetClient::new(channel.clone())
            .enroll(pb::EnrollRequest {
                bootstrap_token: token.to_owned(),
                node_name: name.to_owned(),
                agent_version: "rogue".to_owned(),
                certificate_signing_request: csr.unwrap_or_default().to_owned(),
                ..pb::EnrollRequest::default()
            })
            .await?
            .into_inner();
        Ok(Self {
            name: name.to_owned(),
            channel,
            credential: enrolled.credential,
            certificate: enrolled.certificate,
        })
    }

    /// Opens a `Sync` stream whose hello advertises `http_url` for the
    /// HTTP API (and nothing for gRPC). Errors with the controller's status
    /// when it refuses the hello.
    pub async fn sync(&self, http_url: &str) -> Result<RogueStream, tonic::Status> {
        self.sync_with_csr(http_url, None).await
    }

    /// [`RogueNode::sync`] with a signing request in the hello, so that
    /// the stream is issued a certificate (and the node can be listed in a
    /// fleet with TLS).
    pub async fn sync_with_csr(
        &self,
        http_url: &str,
        csr: Option<&str>,
    ) -> Result<RogueStream, tonic::Status> {
        let (sender, receiver) = mpsc::channel(16);
        let hello = pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(pb::Hello {
                node_name: self.name.clone(),
                inference_http_url: http_url.to_owned(),
                agent_version: "rogue".to_owned(),
                certificate_signing_request: csr.unwrap_or_default().to_owned(),
                ..pb::Hello::default()
            })),
        };
        sender
            .send(hello)
            .await
            .map_err(|_| tonic::Status::internal("cannot queue the hello"))?;
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let bearer = format!("Bearer {}", self.credential)
            .parse()
            .map_err(|_| tonic::Status::internal("credential is not a header value"))?;
        request.metadata_mut().insert("authorization", bearer);
        let inbound = FleetClient::new(self.channel.clone())
            .sync(request)
            .await?
            .into_inner();
        Ok(RogueStream {
            sender,
            inbound,
            directory: Arc::new(Mutex::new(None)),
        })
    }
}

/// An open `Sync` stream of a rogue node.
pub struct RogueStream {
    sender: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::ControllerMessage>,
    directory: Arc<Mutex<Option<pb::Directory>>>,
}

/// The latest directory a rogue stream received.
#[derive(Clone)]
pub struct SeenDirectory(Arc<Mutex<Option<pb::Directory>>>);

impl SeenDirectory {
    /// The nodes listed in the latest directory (none before the first).
    pub fn nodes(&self) -> Vec<String> {
        lock(&self.0)
            .as_ref()
            .map(|directory| {
                directory
                    .entries
                    .iter()
                    .map(|entry| entry.node.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl RogueStream {
    /// Where [`RogueStream::claim_ready`] keeps the latest directory.
    pub fn directory(&self) -> SeenDirectory {
        SeenDirectory(self.directory.clone())
    }

    /// Claims READY on every desired state it is sent and heartbeats (one
    /// per message received, at least every 200 ms), until the stream ends.
    /// Run it in a task.
    pub async fn claim_ready(mut self) {
        let mut sequence = 0;
        let mut ticks = tokio::time::interval(Duration::from_millis(200));
        loop {
            let message = tokio::select! {
                message = self.inbound.message() => message,
                _ = ticks.tick() => {
                    sequence += 1;
                    if self.sender.send(heartbeat(sequence)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Ok(Some(message)) = message else { return };
            if let Some(pb::controller_message::Body::Directory(directory)) = &message.body {
                *lock(&self.directory) = Some(directory.clone());
            }
            if let Some(pb::controller_message::Body::Desired(desired)) = message.body {
                let digest = desired
                    .assignment
                    .as_ref()
                    .map(|assignment| assignment.digest.clone())
                    .unwrap_or_default();
                let observed = pb::AgentMessage {
                    body: Some(pb::agent_message::Body::Observed(pb::ObservedState {
                        generation: desired.generation,
                        phase: if digest.is_empty() {
                            pb::AssignmentPhase::Idle
                        } else {
                            pb::AssignmentPhase::Ready
                        }
                        .into(),
                        serving_digest: digest.clone(),
                        digest,
                        ..pb::ObservedState::default()
                    })),
                };
                if self.sender.send(observed).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn heartbeat(sequence: u64) -> pb::AgentMessage {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64);
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
            sequence,
            sample: Some(pb::HealthSample {
                taken_at_unix_ms: now_ms,
                ..pb::HealthSample::default()
            }),
        })),
    }
}
