//! The routing directory's entry: one ready node serving one model, and
//! where its peers reach it. The controller builds entries from what its
//! nodes report, exchanges them between replicas through its store (as
//! JSON, in this record's serde shape) and pushes each agent a view of them
//! (as protobuf); the agent decodes them here and routes by them.
//!
//! The serde shape is the one the store's `replica_routes` rows have held
//! since they were introduced, field for field: replicas of the previous
//! version read the rows this one writes, and the other way round, during
//! a rolling upgrade. Every field but the two that identify the entry has
//! a default, so that a row written by an older or newer replica still
//! reads; unknown fields are ignored.

use flotilla_digest::Digest;
use flotilla_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{ModelName, NodeName};

/// One ready node serving one model.
///
/// Ordered by model, then version, then node (the field order), which is
/// the order directories are sent and compared in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub model: ModelName,
    #[serde(default)]
    pub version: String,
    pub node: NodeName,
    /// `http://host:port` of its OpenAI/Ollama HTTP API (empty: none).
    #[serde(default)]
    pub http_url: String,
    /// `http://host:port` of its gRPC inference API (empty: none).
    #[serde(default)]
    pub grpc_url: String,
    /// CPU utilisation in percent, rounded down to a multiple of the hub's
    /// load step so that small wobbles do not republish the directory.
    #[serde(default)]
    pub load: u32,
    /// Requests queued or decoding on the node at its latest heartbeat;
    /// peers pick by this first.
    #[serde(default)]
    pub queue_depth: u32,
    /// How many requests the node admits at once (0: unknown), so that a
    /// node whose queue is full can overflow to a peer with room.
    #[serde(default)]
    pub queue_capacity: u32,
    /// The assignment's aliases of the model.
    #[serde(default)]
    pub aliases: Vec<ModelName>,
    /// The served artifact, for peers' model listings and to check that a
    /// peer answered with it; `None` from a controller too old to say.
    /// Stored and sent as its hex, or empty for `None`, as it always was.
    #[serde(default, with = "digest_text")]
    pub digest: Option<Digest>,
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub quantization: String,
}

impl DirectoryEntry {
    /// Busier sorts later: queued requests first, then CPU load. The one
    /// ranking both the controller's views and the agent's choice use.
    pub fn busyness(&self) -> (u32, u32) {
        (self.queue_depth, self.load)
    }

    /// Whether peers can reach the node at all: an entry without either
    /// URL routes nothing.
    pub fn has_address(&self) -> bool {
        !self.http_url.is_empty() || !self.grpc_url.is_empty()
    }

    /// Whether `other` describes the same peer serving the same artifact at
    /// the same addresses, whatever the loads.
    pub fn same_peer(&self, other: &DirectoryEntry) -> bool {
        self.model == other.model
            && self.version == other.version
            && self.node == other.node
            && self.http_url == other.http_url
            && self.grpc_url == other.grpc_url
            && self.aliases == other.aliases
            && self.digest == other.digest
            && self.size_bytes == other.size_bytes
            && self.quantization == other.quantization
    }
}

/// Why a received directory entry was refused: a field that no controller
/// of this version could have sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("directory entry for node {node:?}: invalid {field}: {reason}")]
pub struct InvalidDirectoryEntry {
    pub node: String,
    pub field: &'static str,
    pub reason: String,
}

impl From<&DirectoryEntry> for pb::DirectoryEntry {
    fn from(entry: &DirectoryEntry) -> Self {
        Self {
            model: entry.model.to_string(),
            version: entry.version.clone(),
            node: entry.node.to_string(),
            http_url: entry.http_url.clone(),
            grpc_url: entry.grpc_url.clone(),
            load: entry.load,
            aliases: entry.aliases.iter().map(ToString::to_string).collect(),
            queue_depth: entry.queue_depth,
            queue_capacity: entry.queue_capacity,
            digest: entry
                .digest
                .map(|digest| digest.to_hex())
                .unwrap_or_default(),
            size_bytes: entry.size_bytes,
            quantization: entry.quantization.clone(),
        }
    }
}

/// Names and the digest are checked; the URLs are not, since the agent
/// checks them against its own TLS setting when it takes the directory.
impl TryFrom<pb::DirectoryEntry> for DirectoryEntry {
    type Error = InvalidDirectoryEntry;

    fn try_from(entry: pb::DirectoryEntry) -> Result<Self, Self::Error> {
        let invalid = |field: &'static str, reason: String| InvalidDirectoryEntry {
            node: entry.node.chars().take(140).collect(),
            field,
            reason,
        };
        let node = entry
            .node
            .parse::<NodeName>()
            .map_err(|error| invalid("node", error.to_string()))?;
        let model = entry
            .model
            .parse::<ModelName>()
            .map_err(|error| invalid("model", error.to_string()))?;
        let aliases = entry
            .aliases
            .iter()
            .map(|alias| alias.parse::<ModelName>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| invalid("aliases", error.to_string()))?;
        let digest = digest_text::parse(&entry.digest)
            .map_err(|error| invalid("digest", error.to_string()))?;
        Ok(Self {
            model,
            version: entry.version,
            node,
            http_url: entry.http_url,
            grpc_url: entry.grpc_url,
            load: entry.load,
            queue_depth: entry.queue_depth,
            queue_capacity: entry.queue_capacity,
            aliases,
            digest,
            size_bytes: entry.size_bytes,
            quantization: entry.quantization,
        })
    }
}

/// An optional digest as text: its hex, or empty for none (the form the
/// wire and the stored rows have always used).
mod digest_text {
    use flotilla_digest::{Digest, DigestParseError};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn parse(text: &str) -> Result<Option<Digest>, DigestParseError> {
        if text.is_empty() {
            Ok(None)
        } else {
            text.parse().map(Some)
        }
    }

    pub(super) fn serialize<S: Serializer>(
        digest: &Option<Digest>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match digest {
            Some(digest) => serializer.serialize_str(&digest.to_hex()),
            None => serializer.serialize_str(""),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Digest>, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> DirectoryEntry {
        DirectoryEntry {
            model: "smollm2".parse().expect("valid"),
            version: "1.0.0".to_owned(),
            node: "edge-1".parse().expect("valid"),
            http_url: "http://edge-1:11434".to_owned(),
            grpc_url: "http://edge-1:50052".to_owned(),
            load: 30,
            queue_depth: 2,
            queue_capacity: 20,
            aliases: vec!["chat".parse().expect("valid")],
            digest: Some(Digest::of(b"weights")),
            size_bytes: 1234,
            quantization: "Q8_0".to_owned(),
        }
    }

    #[test]
    fn an_entry_survives_the_wire_and_a_bad_name_or_digest_is_refused() {
        let entry = entry();
        let wire = pb::DirectoryEntry::from(&entry);
        assert_eq!(wire.digest, Digest::of(b"weights").to_hex());
        assert_eq!(DirectoryEntry::try_from(wire.clone()), Ok(entry.clone()));

        // A controller too old to name the artifact sends it empty.
        let unnamed = pb::DirectoryEntry {
            digest: String::new(),
            ..wire.clone()
        };
        let decoded = DirectoryEntry::try_from(unnamed).expect("an empty digest is none");
        assert_eq!(decoded.digest, None);

        for (field, bad) in [
            (
                "node",
                pb::DirectoryEntry {
                    node: "../etc".to_owned(),
                    ..wire.clone()
                },
            ),
            (
                "model",
                pb::DirectoryEntry {
                    model: String::new(),
                    ..wire.clone()
                },
            ),
            (
                "aliases",
                pb::DirectoryEntry {
                    aliases: vec!["Not A Name".to_owned()],
                    ..wire.clone()
                },
            ),
            (
                "digest",
                pb::DirectoryEntry {
                    digest: "not-a-digest".to_owned(),
                    ..wire.clone()
                },
            ),
        ] {
            let error = DirectoryEntry::try_from(bad).expect_err(field);
            assert_eq!(error.field, field, "{error}");
        }
    }

    /// A row exactly as the previous version's `RouteRow` wrote it (every
    /// field, the digest as hex or empty).
    const ROW_OF_THE_PREVIOUS_VERSION: &str = r#"{
        "model": "smollm2", "version": "1.0.0", "node": "edge-1",
        "http_url": "http://edge-1:11434", "grpc_url": "http://edge-1:50052",
        "load": 30, "queue_depth": 2, "queue_capacity": 20,
        "aliases": ["chat"],
        "digest": "DIGEST",
        "size_bytes": 1234, "quantization": "Q8_0"
    }"#;

    #[test]
    fn a_stored_row_of_the_previous_version_still_reads_and_reads_back() {
        let old_row =
            ROW_OF_THE_PREVIOUS_VERSION.replace("DIGEST", &Digest::of(b"weights").to_hex());
        let decoded: DirectoryEntry = serde_json::from_str(&old_row).expect("an old row reads");
        assert_eq!(decoded, entry());
        // And this version writes the same JSON, so a replica of the
        // previous version reads its rows.
        let written = serde_json::to_value(&decoded).expect("serialises");
        let old: serde_json::Value = serde_json::from_str(&old_row).expect("json");
        assert_eq!(written, old);

        // Older rows lacked the later fields, and a row without a digest
        // held an empty one: both read.
        let sparse = r#"{"model": "smollm2", "node": "edge-1", "digest": "",
                         "http_url": "http://edge-1:11434", "from_a_newer_replica": 1}"#;
        let decoded: DirectoryEntry = serde_json::from_str(sparse).expect("a sparse row reads");
        assert_eq!(decoded.digest, None);
        assert_eq!(decoded.queue_capacity, 0);
        assert!(decoded.aliases.is_empty() && decoded.has_address());
        let written = serde_json::to_value(&decoded).expect("serialises");
        assert_eq!(written["digest"], "");

        // A row that names no node cannot be routed to: refused, as before.
        assert!(serde_json::from_str::<DirectoryEntry>(r#"{"model": "smollm2"}"#).is_err());
        assert!(
            serde_json::from_str::<DirectoryEntry>(r#"{"model": "smollm2", "node": ""}"#).is_err()
        );
    }
}
