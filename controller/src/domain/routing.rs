//! The routing directory's entries: which ready node serves which model,
//! and where its peers reach it. Each controller replica builds the entries
//! of the nodes streaming to it; replicas sharing a database exchange them
//! (`Store::exchange_routes`) so that every agent learns of every peer.

use super::NodeName;

/// One ready node serving one model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirectoryEntry {
    pub model: String,
    pub version: String,
    pub node: NodeName,
    pub http_url: String,
    pub grpc_url: String,
    /// CPU utilisation in percent, rounded down to a multiple of the hub's
    /// load step so that small wobbles do not republish the directory.
    pub load: u32,
    /// Requests queued or decoding on the node at its latest heartbeat;
    /// peers pick by this first.
    pub queue_depth: u32,
    /// The assignment's aliases of the model.
    pub aliases: Vec<String>,
    /// The served artifact (blake3 hex), its size and quantization, for
    /// peers' model listings.
    pub digest: String,
    pub size_bytes: u64,
    pub quantization: String,
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

    fn entry(node: &str, model: &str, load: u32) -> DirectoryEntry {
        DirectoryEntry {
            model: model.to_owned(),
            version: "1.0.0".to_owned(),
            node: node.parse().expect("valid name"),
            http_url: format!("http://{node}:11434"),
            grpc_url: String::new(),
            load,
            queue_depth: 0,
            aliases: Vec::new(),
            digest: String::new(),
            size_bytes: 0,
            quantization: String::new(),
        }
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
