//! Routing between agents: the directory of which ready peers serve which
//! model (pushed by the controller on the sync stream, DESIGN.md §7), the
//! choice of peer for a model this node does not serve, and the hop rule
//! that keeps forwarded requests from looping.
//!
//! The sync loop replaces the directory whenever the controller sends one
//! (this node's own entries left out); the inference servers read it per
//! request. In memory only: after a restart the agent routes nothing until
//! its first sync stream brings a directory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_contract::DirectoryEntry;
use tonic::transport::Channel;

use crate::tls::CaTrust;

/// The HTTP header (and gRPC metadata key) counting how many times a request
/// was forwarded. A request that arrives with one or more hops is answered
/// locally or refused, never forwarded again.
pub const HOPS_HEADER: &str = "x-flotilla-hops";

/// How many times a request may be forwarded in all: once, from the node
/// a client asked to one that serves the model.
pub const MAX_HOPS: u32 = 1;

/// Checks a peer's advertised base URL, as the controller did when the
/// node advertised it (checked again here: a controller of another version,
/// or another replica, must not be able to steer forwarded requests), and
/// returns it as `scheme://host[:port]`: `http` or `https` (`https` only
/// when `https_only`), a host and a port, no user, path, query or
/// fragment. The same rule as the controller's `domain::peer_base_url`;
/// written twice because the agent does not depend on the controller.
pub fn peer_base_url(raw: &str, https_only: bool) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|error| error.to_string())?;
    match url.scheme() {
        "https" => {}
        "http" if !https_only => {}
        "http" => {
            return Err(
                "this agent has TLS configured and never forwards over plain http".to_owned(),
            );
        }
        other => return Err(format!("scheme {other:?} is not http or https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a user or password is not allowed".to_owned());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err("a path, query or fragment is not allowed: host and port only".to_owned());
    }
    url::Url::parse(&url.origin().ascii_serialization()).map_err(|error| error.to_string())
}

/// The URL a request for `path` (an absolute path of one of this agent's
/// routes) is forwarded to on the peer at `base`: the base's scheme, host
/// and port with that path and nothing else. Built by the URL parser, never
/// by concatenating strings.
pub fn forward_url(base: &str, path: &str, https_only: bool) -> Result<url::Url, String> {
    let mut url = peer_base_url(base, https_only)?;
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    url.set_path(path);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// One ready peer serving one model: the directory's entry
/// ([`DirectoryEntry`], decoded and checked by the contract) as the
/// inference servers read it, in text, and with its URLs as
/// [`Routes::replace`] left them after checking them again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub model: String,
    pub version: String,
    pub node: String,
    /// `http://host:port` of its OpenAI/Ollama HTTP API (empty: none).
    pub http_url: String,
    /// `http://host:port` of its gRPC inference API (empty: none).
    pub grpc_url: String,
    /// Lower is less busy (CPU utilisation); compared after `queue_depth`.
    pub load: u32,
    /// Requests queued or decoding on the peer at its latest heartbeat.
    pub queue_depth: u32,
    /// How many requests it admits at once (0: unknown).
    pub queue_capacity: u32,
    /// Other names the peer answers to for the model.
    pub aliases: Vec<String>,
    /// The artifact it serves (blake3 hex; empty from a controller too old
    /// to say), its size in bytes and quantization.
    pub digest: String,
    pub size_bytes: u64,
    pub quantization: String,
}

impl From<DirectoryEntry> for Peer {
    fn from(entry: DirectoryEntry) -> Self {
        Self {
            model: entry.model.to_string(),
            version: entry.version,
            node: entry.node.to_string(),
            http_url: entry.http_url,
            grpc_url: entry.grpc_url,
            load: entry.load,
            queue_depth: entry.queue_depth,
            queue_capacity: entry.queue_capacity,
            aliases: entry.aliases.iter().map(ToString::to_string).collect(),
            digest: entry
                .digest
                .map(|digest| digest.to_hex())
                .unwrap_or_default(),
            size_bytes: entry.size_bytes,
            quantization: entry.quantization,
        }
    }
}

/// Whether a client asking for `requested` means the model `name` (with
/// `aliases`) at `version`: any of the names, optionally with Ollama's
/// `:latest` or `:<version>` tag. The one rule both the node's own model
/// and its peers are matched by.
pub fn names_match(requested: &str, name: &str, aliases: &[String], version: &str) -> bool {
    let (base, tag) = match requested.split_once(':') {
        None => (requested, None),
        Some((base, tag)) => (base, Some(tag)),
    };
    let named = base == name || aliases.iter().any(|alias| alias == base);
    named && tag.is_none_or(|tag| tag == "latest" || tag == version)
}

/// Which API a forwarded request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Http,
    Grpc,
}

impl Peer {
    /// Whether a client asking for `requested` means this peer's model: the
    /// name, optionally with Ollama's `:latest` or `:<version>` tag (as the
    /// node itself matches it).
    pub fn answers_to(&self, requested: &str) -> bool {
        names_match(requested, &self.model, &self.aliases, &self.version)
    }

    /// What peers are ranked by: queue first, then CPU.
    pub fn busyness(&self) -> (u32, u32) {
        (self.queue_depth, self.load)
    }

    /// Whether the peer had room for another request at its latest
    /// heartbeat; one that does not say its capacity (an older controller
    /// or agent) only when it was idle.
    pub fn has_room(&self) -> bool {
        if self.queue_capacity == 0 {
            self.queue_depth == 0
        } else {
            self.queue_depth < self.queue_capacity
        }
    }

    pub fn url(&self, surface: Surface) -> &str {
        match surface {
            Surface::Http => &self.http_url,
            Surface::Grpc => &self.grpc_url,
        }
    }
}

/// Why a hop count was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{HOPS_HEADER} must be a small non-negative integer, got {0:?}")]
pub struct InvalidHops(pub String);

/// Reads the hop count a request arrived with (absent: 0).
pub fn parse_hops(raw: Option<&[u8]>) -> Result<u32, InvalidHops> {
    let Some(raw) = raw else { return Ok(0) };
    std::str::from_utf8(raw)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| InvalidHops(String::from_utf8_lossy(raw).into_owned()))
}

/// Whether a request that arrived with `hops` may be forwarded.
pub fn may_forward(hops: u32) -> bool {
    hops < MAX_HOPS
}

/// The peers to try for `model` over `surface`, best first: shortest queue
/// first, then lowest CPU load; among equally busy peers the order rotates
/// with `turn` (round-robin), so that ties share the traffic.
pub fn candidates(peers: &[Peer], model: &str, surface: Surface, turn: usize) -> Vec<Peer> {
    let mut matching: Vec<&Peer> = peers
        .iter()
        .filter(|peer| peer.answers_to(model) && !peer.url(surface).is_empty())
        .collect();
    // Stable order first, so that the rotation is meaningful.
    matching.sort_by(|a, b| {
        a.busyness()
            .cmp(&b.busyness())
            .then_with(|| a.node.cmp(&b.node))
    });
    let mut ordered = Vec::with_capacity(matching.len());
    let mut start = 0;
    while start < matching.len() {
        let busyness = matching[start].busyness();
        let end = matching[start..]
            .iter()
            .position(|peer| peer.busyness() != busyness)
            .map_or(matching.len(), |offset| start + offset);
        let group = &matching[start..end];
        let shift = turn % group.len();
        ordered.extend(
            group[shift..]
                .iter()
                .chain(&group[..shift])
                .map(|peer| (*peer).clone()),
        );
        start = end;
    }
    ordered
}

/// The directory this node routes by, shared by the sync loop (writer) and
/// the inference servers (readers), with one gRPC channel per peer so that
/// forwarded calls share a connection instead of opening one each.
#[derive(Debug, Default)]
pub struct Routes {
    peers: RwLock<Arc<Vec<Peer>>>,
    turn: AtomicUsize,
    grpc_channels: Mutex<HashMap<String, Channel>>,
    /// For peers' `https://` URLs.
    trust: CaTrust,
    /// Peers reached over plain `http://` are dropped from the directory:
    /// this agent has TLS configured (issue 16, item 3).
    https_only: bool,
    /// With node identity (`CaTrust::with_node_identity`): one HTTP client
    /// per peer node, verified for that node's name, and one gRPC channel
    /// per peer node and URL; each with the version of this node's
    /// certificate it was built with, rebuilt when a renewal changes it.
    node_http_clients: Mutex<HashMap<String, (u64, reqwest::Client)>>,
    node_grpc_channels: Mutex<HashMap<(String, String), (u64, Channel)>>,
}

/// How long connecting to a peer may take before the call fails over to
/// the next one.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Routes {
    /// An empty directory whose peers' `https://` URLs are trusted by
    /// `trust`; with `https_only`, peers advertising `http://` are never
    /// used.
    pub fn new(trust: CaTrust, https_only: bool) -> Self {
        Self {
            trust,
            https_only,
            ..Self::default()
        }
    }

    /// Whether this agent forwards over `https://` only.
    pub fn https_only(&self) -> bool {
        self.https_only
    }

    /// Replaces the directory; channels to peers no longer in it close.
    /// A peer URL that does not pass [`peer_base_url`] is dropped (the peer
    /// keeps its other surface if that one passes) and logged.
    pub fn replace(&self, mut peers: Vec<Peer>) {
        for peer in &mut peers {
            for (surface, url) in [("http", &mut peer.http_url), ("grpc", &mut peer.grpc_url)] {
                if url.is_empty() {
                    continue;
                }
                match peer_base_url(url, self.https_only) {
                    Ok(base) => *url = base.as_str().trim_end_matches('/').to_owned(),
                    Err(reason) => {
                        tracing::warn!(peer = %peer.node, surface, url = %url, %reason,
                            "ignoring a peer's advertised URL");
                        url.clear();
                    }
                }
            }
        }
        lock(&self.grpc_channels).retain(|url, _| peers.iter().any(|peer| &peer.grpc_url == url));
        lock(&self.node_http_clients).retain(|node, _| peers.iter().any(|peer| &peer.node == node));
        lock(&self.node_grpc_channels).retain(|(node, url), _| {
            peers
                .iter()
                .any(|peer| &peer.node == node && &peer.grpc_url == url)
        });
        *self
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(peers);
    }

    /// The channel to the peer gRPC API at `url`, made on first use. It
    /// connects lazily and reconnects by itself after a failure, which
    /// calls see as UNAVAILABLE.
    pub fn grpc_channel(&self, url: &str) -> Result<Channel, String> {
        let url = peer_base_url(url, self.https_only)?;
        let url = url.as_str().trim_end_matches('/');
        let mut channels = lock(&self.grpc_channels);
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let channel = self
            .trust
            .endpoint(url)
            .map_err(|error| error.to_string())?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .connect_lazy();
        channels.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }

    /// With node identity, the HTTP client for `peer` (see the field);
    /// `None` without: the caller's shared client serves every peer.
    pub fn peer_http_client(&self, peer: &Peer) -> Result<Option<reqwest::Client>, String> {
        let Some(certificates) = self.trust.node_identity() else {
            return Ok(None);
        };
        let version = certificates.version();
        let mut clients = lock(&self.node_http_clients);
        if let Some((built_with, client)) = clients.get(&peer.node)
            && *built_with == version
        {
            return Ok(Some(client.clone()));
        }
        let client = self
            .trust
            .node_peer_http_client(
                &peer.node,
                reqwest::Client::builder().connect_timeout(PEER_CONNECT_TIMEOUT),
            )
            .map_err(|error| error.to_string())?;
        clients.insert(peer.node.clone(), (version, client.clone()));
        Ok(Some(client))
    }

    /// The gRPC channel to `peer`: with node identity, verified for the
    /// peer's node name (see the field); without, [`Routes::grpc_channel`].
    pub fn peer_grpc_channel(&self, peer: &Peer) -> Result<Channel, String> {
        let Some(certificates) = self.trust.node_identity() else {
            return self.grpc_channel(&peer.grpc_url);
        };
        let url = peer_base_url(&peer.grpc_url, self.https_only)?;
        let url = url.as_str().trim_end_matches('/').to_owned();
        let version = certificates.version();
        let key = (peer.node.clone(), url);
        let mut channels = lock(&self.node_grpc_channels);
        if let Some((built_with, channel)) = channels.get(&key)
            && *built_with == version
        {
            return Ok(channel.clone());
        }
        let channel = self
            .trust
            .node_peer_endpoint(&key.1, &peer.node)
            .map_err(|error| error.to_string())?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .connect_lazy();
        channels.insert(key, (version, channel.clone()));
        Ok(channel)
    }

    /// The directory as it is now.
    pub fn peers(&self) -> Arc<Vec<Peer>> {
        self.peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The peers to try for `model`, best first (see [`candidates`]).
    pub fn candidates(&self, model: &str, surface: Surface) -> Vec<Peer> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        candidates(&self.peers(), model, surface, turn)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str, model: &str, load: u32) -> Peer {
        Peer {
            model: model.to_owned(),
            version: "1".to_owned(),
            node: node.to_owned(),
            http_url: format!("http://{node}:11434"),
            grpc_url: format!("http://{node}:50052"),
            load,
            ..Peer::default()
        }
    }

    fn nodes(peers: &[Peer]) -> Vec<&str> {
        peers.iter().map(|peer| peer.node.as_str()).collect()
    }

    #[test]
    fn the_least_loaded_peer_serving_the_model_comes_first() {
        let peers = [
            peer("a", "smollm2", 50),
            peer("b", "smollm2", 10),
            peer("c", "llama", 0),
            peer("d", "smollm2", 90),
        ];
        assert_eq!(
            nodes(&candidates(&peers, "smollm2", Surface::Http, 0)),
            ["b", "a", "d"]
        );
        assert!(candidates(&peers, "mistral", Surface::Grpc, 0).is_empty());
        assert_eq!(
            nodes(&candidates(&peers, "llama:latest", Surface::Grpc, 0)),
            ["c"]
        );
    }

    #[test]
    fn a_shorter_queue_beats_a_lower_cpu_load_and_aliases_match() {
        let mut peers = [peer("a", "smollm2", 10), peer("b", "smollm2", 80)];
        peers[0].queue_depth = 4;
        peers[1].queue_depth = 1;
        peers[1].aliases = vec!["chat".to_owned()];
        assert_eq!(
            nodes(&candidates(&peers, "smollm2", Surface::Http, 0)),
            ["b", "a"]
        );
        assert_eq!(nodes(&candidates(&peers, "chat", Surface::Http, 0)), ["b"]);
        assert_eq!(
            nodes(&candidates(&peers, "chat:1", Surface::Http, 0)),
            ["b"]
        );
        assert!(candidates(&peers, "chat:2", Surface::Http, 0).is_empty());
        assert!(names_match("smollm2:latest", "smollm2", &[], "1"));
        assert!(!names_match("smollm", "smollm2", &[], "1"));
    }

    #[test]
    fn ties_rotate_and_peers_without_the_surface_are_skipped() {
        let mut peers = vec![
            peer("a", "smollm2", 10),
            peer("b", "smollm2", 10),
            peer("c", "smollm2", 20),
        ];
        assert_eq!(
            nodes(&candidates(&peers, "smollm2", Surface::Http, 0)),
            ["a", "b", "c"]
        );
        assert_eq!(
            nodes(&candidates(&peers, "smollm2", Surface::Http, 1)),
            ["b", "a", "c"]
        );
        peers[0].grpc_url.clear();
        assert_eq!(
            nodes(&candidates(&peers, "smollm2", Surface::Grpc, 1)),
            ["b", "c"]
        );
    }

    #[tokio::test]
    async fn one_grpc_channel_per_peer_until_it_leaves_the_directory() {
        let routes = Routes::default();
        let a = peer("a", "smollm2", 0);
        routes.replace(vec![a.clone(), peer("b", "smollm2", 0)]);
        let count = || lock(&routes.grpc_channels).len();
        routes.grpc_channel(&a.grpc_url).expect("valid");
        routes.grpc_channel(&a.grpc_url).expect("valid");
        assert_eq!(count(), 1, "the second call reuses the channel");
        routes.grpc_channel("http://b:50052").expect("valid");
        assert_eq!(count(), 2);
        assert!(routes.grpc_channel("not a url").is_err());
        routes.replace(vec![a.clone()]);
        assert_eq!(count(), 1, "b left the directory");
        routes.replace(Vec::new());
        assert_eq!(count(), 0);
    }

    #[test]
    fn peer_urls_are_host_and_port_and_joined_by_the_url_parser() {
        assert_eq!(
            forward_url("http://10.0.0.1:11434", "/v1/chat/completions", false).map(String::from),
            Ok("http://10.0.0.1:11434/v1/chat/completions".to_owned())
        );
        for hostile in [
            "http://10.0.0.1:11434/internal/x?q=",
            "http://10.0.0.1:11434?q=",
            "http://user@10.0.0.1:11434",
            "unix:///run/x.sock",
        ] {
            assert!(
                forward_url(hostile, "/v1/completions", false).is_err(),
                "{hostile}"
            );
        }
        assert!(forward_url("http://10.0.0.1:11434", "/api/chat", true).is_err());
        assert!(forward_url("https://10.0.0.1:11434", "/api/chat", true).is_ok());
        assert!(forward_url("http://10.0.0.1:11434", "api/chat", false).is_err());
    }

    #[test]
    fn a_directory_loses_the_urls_an_agent_with_tls_must_not_use() {
        let routes = Routes::new(CaTrust::system(), true);
        let mut plain = peer("a", "smollm2", 0);
        let mut secure = peer("b", "smollm2", 0);
        secure.http_url = "https://b:11434/".to_owned();
        secure.grpc_url = "https://b:50052/v1?x=1".to_owned();
        plain.http_url = "http://a:11434".to_owned();
        routes.replace(vec![plain, secure]);
        assert_eq!(
            nodes(&routes.candidates("smollm2", Surface::Http)),
            ["b"],
            "http peers are dropped"
        );
        assert!(routes.candidates("smollm2", Surface::Grpc).is_empty());
        assert_eq!(routes.peers()[1].http_url, "https://b:11434");
    }

    #[test]
    fn a_peer_is_the_checked_entry_in_text() {
        use flotilla_proto::fleet::v1 as pb;
        let digest = flotilla_digest::Digest::of(b"weights").to_hex();
        let wire = pb::DirectoryEntry {
            model: "smollm2".to_owned(),
            version: "1".to_owned(),
            node: "a".to_owned(),
            http_url: "http://a:11434".to_owned(),
            aliases: vec!["chat".to_owned()],
            digest: digest.clone(),
            queue_capacity: 20,
            ..pb::DirectoryEntry::default()
        };
        let entry = DirectoryEntry::try_from(wire.clone()).expect("a valid entry");
        let converted = Peer::from(entry);
        assert_eq!(
            converted,
            Peer {
                aliases: vec!["chat".to_owned()],
                digest,
                queue_capacity: 20,
                grpc_url: String::new(),
                ..peer("a", "smollm2", 0)
            }
        );
        // From a controller too old to name the artifact: no digest to check.
        let unnamed = pb::DirectoryEntry {
            digest: String::new(),
            ..wire
        };
        let entry = DirectoryEntry::try_from(unnamed).expect("a valid entry");
        assert_eq!(Peer::from(entry).digest, "");
    }

    #[test]
    fn a_forwarded_request_is_never_forwarded_again() {
        assert_eq!(parse_hops(None), Ok(0));
        assert!(may_forward(parse_hops(None).expect("absent is zero")));
        assert_eq!(parse_hops(Some(b"1")), Ok(1));
        assert!(!may_forward(1));
        assert!(!may_forward(7));
        assert!(parse_hops(Some(b"-1")).is_err());
        assert!(parse_hops(Some(b"many")).is_err());
    }
}
