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

use tonic::transport::Channel;

use crate::tls::CaTrust;

/// The HTTP header (and gRPC metadata key) counting how many times a request
/// was forwarded. A request that arrives with one or more hops is answered
/// locally or refused, never forwarded again.
pub const HOPS_HEADER: &str = "x-flotilla-hops";

/// How many times a request may be forwarded in all: once, from the node
/// a client asked to one that serves the model.
pub const MAX_HOPS: u32 = 1;

/// One ready peer serving one model.
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
    /// Other names the peer answers to for the model.
    pub aliases: Vec<String>,
    /// The artifact it serves (blake3 hex; empty from a controller too old
    /// to say), its size in bytes and quantization.
    pub digest: String,
    pub size_bytes: u64,
    pub quantization: String,
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
}

/// How long connecting to a peer may take before the call fails over to
/// the next one.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Routes {
    /// An empty directory whose peers' `https://` URLs are trusted by
    /// `trust`.
    pub fn new(trust: CaTrust) -> Self {
        Self {
            trust,
            ..Self::default()
        }
    }

    /// Replaces the directory; channels to peers no longer in it close.
    pub fn replace(&self, peers: Vec<Peer>) {
        lock(&self.grpc_channels).retain(|url, _| peers.iter().any(|peer| &peer.grpc_url == url));
        *self
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(peers);
    }

    /// The channel to the peer gRPC API at `url`, made on first use. It
    /// connects lazily and reconnects by itself after a failure, which
    /// calls see as UNAVAILABLE.
    pub fn grpc_channel(&self, url: &str) -> Result<Channel, String> {
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
