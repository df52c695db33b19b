//! The routing directory's entries: which ready node serves which model,
//! and where its peers reach it. Each controller replica builds the entries
//! of the nodes streaming to it; replicas sharing a database exchange them
//! (`Store::exchange_routes`) so that the directory spans the replicas.
//!
//! An agent is not sent the whole directory: a fleet where hundreds of
//! nodes serve a model would otherwise send every agent hundreds of entries
//! whenever any node's load moved, i.e. O(nodes²) bytes a second. Each agent
//! gets a [`view_for`] it: per offering (model, version and aliases: what a
//! client can ask for), the [`PEERS_PER_OFFERING`] least busy peers, from a
//! pool of the [`POOL_PER_OFFERING`] least busy ones ([`pool`]), ties split by
//! a hash of both names so that agents spread over equally idle peers
//! instead of all picking the same ones.
//!
//! Which peers are least busy changes with every queued request, so a view
//! is sent at once only when the agent's would mislead it: an offering
//! appeared or went, or a peer it was sent is gone or moved. Any other
//! change (other loads, other peers now less busy) waits until
//! [`LOAD_RESEND_AFTER`] has passed since the last send ([`resend`]).
//!
//! Every agent advertises both its HTTP and gRPC URLs, so a peer chosen
//! for one API serves the other too.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use super::{ModelName, NodeName};

pub use flotilla_contract::DirectoryEntry;

/// Peers per offering in an agent's view: enough to fail over past a few
/// unreachable ones, few enough that a view stays small however many nodes
/// serve the model.
pub const PEERS_PER_OFFERING: usize = 4;

/// Least busy nodes per offering that views are chosen from, so that building
/// one view costs O(models × pool), not O(nodes).
pub const POOL_PER_OFFERING: usize = 32;

/// How long a view whose peers are the same as the last one sent, with
/// other loads, waits before it is sent: loads move all the time, and a
/// peer's place in the order matters only roughly.
pub const LOAD_RESEND_AFTER: Duration = Duration::from_secs(5);

/// Why an advertised inference URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?} is not a peer base URL: {reason}")]
pub struct InvalidPeerUrl {
    pub url: String,
    pub reason: String,
}

/// Checks a URL a node advertises for its inference APIs and returns it as
/// `scheme://host[:port]`. Peers forward clients' requests to it, so it may
/// name nothing but where to connect: `http` or `https` (only `https` when
/// `require_https`, i.e. the fleet has TLS), a host and a port, and no
/// user, path, query or fragment that would steer a forwarded request
/// somewhere else on that host (issue 16, item 4). Parsed by the `url`
/// crate, which normalises what browsers and HTTP clients normalise.
pub fn peer_base_url(raw: &str, require_https: bool) -> Result<String, InvalidPeerUrl> {
    let refuse = |reason: &str| InvalidPeerUrl {
        url: raw.chars().take(80).collect(),
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(raw).map_err(|error| refuse(&error.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if !require_https => {}
        "http" => {
            return Err(refuse(
                "the fleet has TLS, so peers are reached over https only",
            ));
        }
        _ => return Err(refuse("the scheme must be http or https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(refuse("a user or password is not allowed"));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(refuse("a path is not allowed: host and port only"));
    }
    if url.query().is_some() {
        return Err(refuse("a query is not allowed: host and port only"));
    }
    if url.fragment().is_some() {
        return Err(refuse("a fragment is not allowed: host and port only"));
    }
    Ok(url.origin().ascii_serialization())
}

/// What a client can ask a node for: entries with the same offering are
/// interchangeable.
type Offering<'a> = (&'a ModelName, &'a str, &'a [ModelName]);

fn offering(entry: &DirectoryEntry) -> Offering<'_> {
    (&entry.model, &entry.version, &entry.aliases)
}

/// `entries` grouped by offering, in a stable order.
fn by_offering<'a>(
    entries: impl Iterator<Item = &'a DirectoryEntry>,
) -> BTreeMap<Offering<'a>, Vec<&'a DirectoryEntry>> {
    let mut groups: BTreeMap<Offering<'a>, Vec<&'a DirectoryEntry>> = BTreeMap::new();
    for entry in entries {
        groups.entry(offering(entry)).or_default().push(entry);
    }
    groups
}

/// `entries` cut to the `per_offering` least busy nodes of each offering;
/// equally busy ones by a hash of the node name, so the cut does not favour
/// early names. Sorted by model then node.
pub fn pool(entries: Vec<DirectoryEntry>, per_offering: usize) -> Vec<DirectoryEntry> {
    let mut pooled = Vec::new();
    for group in by_offering(entries.iter()).into_values() {
        pooled.extend(least_busy(group, per_offering, |entry| {
            stable_hash(&[entry.node.as_str()])
        }));
    }
    pooled.sort();
    pooled
}

/// What `viewer` is told: per offering of `pooled` (see [`pool`]), up to
/// `per_offering` of the least busy nodes other than `viewer` itself,
/// equally busy ones picked by a hash of both names. Sorted by model then
/// node.
pub fn view_for(
    viewer: &NodeName,
    pooled: &[DirectoryEntry],
    per_offering: usize,
) -> Vec<DirectoryEntry> {
    let peers = pooled.iter().filter(|entry| entry.node != *viewer);
    let mut view = Vec::new();
    for group in by_offering(peers).into_values() {
        view.extend(least_busy(group, per_offering, |entry| {
            stable_hash(&[viewer.as_str(), entry.node.as_str()])
        }));
    }
    view.sort();
    view
}

/// The `count` least busy of `entries`, ties by `tie`.
fn least_busy(
    entries: Vec<&DirectoryEntry>,
    count: usize,
    tie: impl Fn(&DirectoryEntry) -> u64,
) -> impl Iterator<Item = DirectoryEntry> {
    let mut keyed: Vec<((u32, u32), u64, &DirectoryEntry)> = entries
        .into_iter()
        .map(|entry| (entry.busyness(), tie(entry), entry))
        .collect();
    if keyed.len() > count {
        keyed.select_nth_unstable_by_key(count, |(busyness, tie, _)| (*busyness, *tie));
        keyed.truncate(count);
    }
    keyed.into_iter().map(|(_, _, entry)| entry.clone())
}

/// The same for every call in this build (`DefaultHasher::new` has fixed
/// keys), so an agent's view does not change by itself.
fn stable_hash(parts: &[&str]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

/// What to do with a freshly built view, given the last one sent and how
/// long ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Identical to what the agent has: nothing.
    Nothing,
    /// The first view, or the agent's would mislead it: send it now.
    Now,
    /// Only loads or the ranking moved: send it once `LOAD_RESEND_AFTER`
    /// has passed since the last send, this much from now.
    After(Duration),
}

/// See [`Resend`] and the module docs. `pooled` is the directory `view`
/// was built from.
pub fn resend(
    last_sent: Option<&[DirectoryEntry]>,
    view: &[DirectoryEntry],
    pooled: &[DirectoryEntry],
    since_last_send: Duration,
) -> Resend {
    let Some(last_sent) = last_sent else {
        return Resend::Now;
    };
    if last_sent == view {
        return Resend::Nothing;
    }
    fn offerings(entries: &[DirectoryEntry]) -> std::collections::BTreeSet<Offering<'_>> {
        entries.iter().map(offering).collect()
    }
    let misleading = offerings(last_sent) != offerings(view)
        || last_sent
            .iter()
            .any(|sent| !pooled.iter().any(|entry| entry.same_peer(sent)));
    if misleading || since_last_send >= LOAD_RESEND_AFTER {
        Resend::Now
    } else {
        Resend::After(LOAD_RESEND_AFTER - since_last_send)
    }
}

/// `local` (this replica's entries) with the entries of `remote` (other
/// replicas') for nodes not in `local`, sorted by model then node. A node
/// streaming here is described best here; a node that moved between two
/// other replicas may briefly appear in both of their slices, and `remote`
/// lists the most recently changed slice first, so its entry wins.
pub fn merge_routes(local: Vec<DirectoryEntry>, remote: &[DirectoryEntry]) -> Vec<DirectoryEntry> {
    let mut seen: std::collections::HashSet<NodeName> =
        local.iter().map(|entry| entry.node.clone()).collect();
    let mut merged = local;
    for entry in remote {
        if seen.insert(entry.node.clone()) {
            merged.push(entry.clone());
        }
    }
    merged.sort();
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_urls_name_a_host_and_port_and_nothing_else() {
        assert_eq!(
            peer_base_url("http://10.0.0.1:11434", false),
            Ok("http://10.0.0.1:11434".to_owned())
        );
        assert_eq!(
            peer_base_url("https://edge-7.example:11434/", true),
            Ok("https://edge-7.example:11434".to_owned())
        );
        for hostile in [
            "http://10.0.0.1:11434/internal/x?q=",
            "http://10.0.0.1:11434?q=1",
            "http://10.0.0.1:11434/#x",
            "http://user:pw@10.0.0.1:11434",
            "ftp://10.0.0.1",
            "file:///etc/passwd",
            "http://",
            "not a url",
        ] {
            assert!(peer_base_url(hostile, false).is_err(), "{hostile}");
        }
        let downgrade =
            peer_base_url("http://10.0.0.1:11434", true).expect_err("http in TLS fleet");
        assert!(downgrade.reason.contains("https only"), "{downgrade}");
    }

    fn entry(node: &str, model: &str, load: u32) -> DirectoryEntry {
        DirectoryEntry {
            model: model.parse().expect("valid name"),
            version: "1.0.0".to_owned(),
            node: node.parse().expect("valid name"),
            http_url: format!("http://{node}:11434"),
            grpc_url: String::new(),
            load,
            queue_depth: 0,
            queue_capacity: 20,
            aliases: Vec::new(),
            digest: None,
            size_bytes: 0,
            quantization: String::new(),
        }
    }

    fn busy(mut entry: DirectoryEntry, queue_depth: u32) -> DirectoryEntry {
        entry.queue_depth = queue_depth;
        entry
    }

    fn nodes(entries: &[DirectoryEntry]) -> Vec<&str> {
        entries.iter().map(|entry| entry.node.as_str()).collect()
    }

    #[test]
    fn a_view_holds_the_least_busy_peers_per_model_never_the_viewer() {
        let mut entries = vec![
            busy(entry("a1", "a", 0), 5),
            entry("a2", "a", 90),
            entry("a3", "a", 10),
            entry("a4", "a", 0),
            entry("a5", "a", 40),
            entry("a6", "a", 0),
            entry("b1", "b", 70),
        ];
        entries.sort();
        let viewer: NodeName = "a4".parse().expect("valid");
        let view = view_for(&viewer, &pool(entries, POOL_PER_OFFERING), 3);
        // a4 itself is out; a1's queue makes it the busiest of model a.
        assert_eq!(nodes(&view), ["a3", "a5", "a6", "b1"]);
        // Pooling cuts each model to its least busy nodes.
        let mut many: Vec<_> = (0..100)
            .map(|i| entry(&format!("n{i:03}"), "m", i))
            .collect();
        many.sort();
        let pooled = pool(many, 8);
        assert_eq!(pooled.len(), 8);
        assert!(pooled.iter().all(|entry| entry.load < 8), "{pooled:?}");
    }

    #[test]
    fn agents_spread_over_equally_idle_peers() {
        let mut entries: Vec<_> = (0..40)
            .map(|i| entry(&format!("peer-{i}"), "m", 0))
            .collect();
        entries.sort();
        let pooled = pool(entries, POOL_PER_OFFERING);
        assert_eq!(pooled.len(), POOL_PER_OFFERING);
        let mut chosen = std::collections::HashSet::new();
        for viewer in 0..50 {
            let viewer: NodeName = format!("edge-{viewer}").parse().expect("valid");
            let view = view_for(&viewer, &pooled, PEERS_PER_OFFERING);
            assert_eq!(view.len(), PEERS_PER_OFFERING);
            // The same viewer gets the same view every time.
            assert_eq!(view, view_for(&viewer, &pooled, PEERS_PER_OFFERING));
            chosen.extend(view.into_iter().map(|entry| entry.node));
        }
        // Not everyone on the same four.
        assert!(chosen.len() > 3 * PEERS_PER_OFFERING, "{}", chosen.len());
    }

    #[test]
    fn only_a_misleading_view_goes_at_once_the_rest_waits() {
        let sent = vec![entry("a", "m", 10), entry("b", "m", 20)];
        let pooled = vec![
            entry("a", "m", 10),
            entry("b", "m", 20),
            entry("c", "m", 90),
        ];
        let second = Duration::from_secs(1);
        let wait = Resend::After(LOAD_RESEND_AFTER - second);
        assert_eq!(resend(None, &sent, &pooled, second), Resend::Now);
        assert_eq!(resend(Some(&sent), &sent, &pooled, second), Resend::Nothing);

        // Loads moved: waits, then goes.
        let loads_moved = vec![entry("a", "m", 30), busy(entry("b", "m", 20), 2)];
        let pooled_now = [loads_moved.clone(), vec![entry("c", "m", 90)]].concat();
        assert_eq!(resend(Some(&sent), &loads_moved, &pooled_now, second), wait);
        assert_eq!(
            resend(Some(&sent), &loads_moved, &pooled_now, LOAD_RESEND_AFTER),
            Resend::Now
        );
        // c became less busy than b, and b still serves: waits too.
        let reranked = vec![entry("a", "m", 10), entry("c", "m", 0)];
        let pooled_now = vec![entry("a", "m", 10), entry("b", "m", 20), entry("c", "m", 0)];
        assert_eq!(resend(Some(&sent), &reranked, &pooled_now, second), wait);

        // b is gone: at once.
        let pooled_now = vec![entry("a", "m", 10), entry("c", "m", 90)];
        let without_b = vec![entry("a", "m", 10), entry("c", "m", 90)];
        assert_eq!(
            resend(Some(&sent), &without_b, &pooled_now, second),
            Resend::Now
        );
        // b moved to another address: at once.
        let mut moved = entry("b", "m", 20);
        moved.http_url = "http://b-new:11434".to_owned();
        let pooled_now = vec![entry("a", "m", 10), moved.clone()];
        let view = vec![entry("a", "m", 10), moved];
        assert_eq!(resend(Some(&sent), &view, &pooled_now, second), Resend::Now);
        // A new model: at once.
        let pooled_now = [pooled.clone(), vec![entry("d", "n", 50)]].concat();
        let view = [sent.clone(), vec![entry("d", "n", 50)]].concat();
        assert_eq!(resend(Some(&sent), &view, &pooled_now, second), Resend::Now);
    }

    #[test]
    fn offerings_with_other_aliases_or_versions_are_chosen_apart() {
        let mut aliased = entry("x", "m", 90);
        aliased.aliases = vec!["chat".parse().expect("valid name")];
        let mut newer = entry("y", "m", 90);
        newer.version = "2.0.0".to_owned();
        let mut entries = vec![entry("a", "m", 0), entry("b", "m", 0), aliased, newer];
        entries.sort();
        let viewer: NodeName = "v".parse().expect("valid");
        // One peer per offering: the busy aliased and newer nodes are kept,
        // since no idler node offers what they do.
        let view = view_for(&viewer, &pool(entries, POOL_PER_OFFERING), 1);
        assert_eq!(view.len(), 3, "{view:?}");
        assert!(
            nodes(&view).contains(&"x") && nodes(&view).contains(&"y"),
            "{view:?}"
        );
    }

    #[test]
    fn local_entries_win_and_a_node_in_two_remote_slices_appears_once() {
        let local = vec![entry("edge-2", "b", 10), entry("edge-1", "a", 0)];
        let remote = [
            entry("edge-1", "stale", 90),
            entry("edge-3", "c", 20),
            entry("edge-3", "older-slice", 50),
        ];
        let merged = merge_routes(local, &remote);
        let described: Vec<_> = merged
            .iter()
            .map(|entry| (entry.node.as_str(), entry.model.as_str()))
            .collect();
        assert_eq!(
            described,
            [("edge-1", "a"), ("edge-2", "b"), ("edge-3", "c")]
        );
    }
}
