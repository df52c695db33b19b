//! Fleet domain types: nodes, their labels and inventory, and bootstrap
//! tokens. Plain Rust, validated on construction; no wire or SQL types.
//!
//! What is persisted (by `store/`): one row per node (name, labels,
//! inventory as JSON, agent version, status, enrolment time) and one row per
//! bootstrap token holding only a blake3 hash of its secret, never the
//! secret itself. Later slices add a node's last heartbeat and desired
//! generation to its row; [`NodeStatus`] already leaves room for cordoning.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::NodeName;
use super::{DesiredState, HealthSample, ObservedState};

/// Most labels a node may carry; selectors stay cheap and rows small.
pub const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY_LEN: usize = 63;
const MAX_LABEL_VALUE_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLabels {
    #[error(
        "invalid label key {0:?}: use 1 to 63 characters of a-z, A-Z, 0-9, '.', '_', '-' and '/', starting with a letter or digit"
    )]
    Key(String),
    #[error(
        "invalid value {value:?} of label {key}: use up to 128 characters of a-z, A-Z, 0-9, '.', '_' and '-'"
    )]
    Value { key: String, value: String },
    #[error("invalid label {0:?}: expected key=value")]
    Syntax(String),
    #[error("label {0} is given twice")]
    Duplicate(String),
    #[error("too many labels: at most {MAX_LABELS}")]
    TooMany,
}

/// A node's labels (`site=berlin`, `gpu=l4`), which rollouts select on.
/// Keys and values use a conservative alphabet because they appear in
/// selectors, CLI arguments and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn new(map: BTreeMap<String, String>) -> Result<Self, InvalidLabels> {
        if map.len() > MAX_LABELS {
            return Err(InvalidLabels::TooMany);
        }
        for (key, value) in &map {
            let key_ok = !key.is_empty()
                && key.len() <= MAX_LABEL_KEY_LEN
                && key.as_bytes()[0].is_ascii_alphanumeric()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
            if !key_ok {
                return Err(InvalidLabels::Key(key.chars().take(80).collect()));
            }
            let value_ok = value.len() <= MAX_LABEL_VALUE_LEN
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !value_ok {
                return Err(InvalidLabels::Value {
                    key: key.clone(),
                    value: value.chars().take(140).collect(),
                });
            }
        }
        Ok(Self(map))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = InvalidLabels;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        Self::new(map)
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

/// `k=v,k2=v2` as given on command lines; an empty string is no labels.
impl FromStr for Labels {
    type Err = InvalidLabels;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut map = BTreeMap::new();
        for pair in input.split(',').filter(|pair| !pair.trim().is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| InvalidLabels::Syntax(pair.chars().take(80).collect()))?;
            let key = key.trim().to_owned();
            if map.insert(key.clone(), value.trim().to_owned()).is_some() {
                return Err(InvalidLabels::Duplicate(key));
            }
        }
        Self::new(map)
    }
}

/// Where a node stands with the controller. Stored as its `as_str` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    /// Enrolled, waiting for an operator's approval (when the controller
    /// requires it). Receives no assignments.
    Pending,
    /// May sync and receive assignments.
    Active,
    /// Kept out of placement by an operator; keeps what it serves.
    Cordoned,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Cordoned => "cordoned",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node status {0:?}: expected pending, active or cordoned")]
pub struct InvalidNodeStatus(String);

impl FromStr for NodeStatus {
    type Err = InvalidNodeStatus;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "pending" => Ok(Self::Pending),
            "active" => Ok(Self::Active),
            "cordoned" => Ok(Self::Cordoned),
            other => Err(InvalidNodeStatus(other.chars().take(40).collect())),
        }
    }
}

pub use flotilla_contract::{NodeGpu, NodeInventory};

/// A node that enrolled, with what it should serve and, as last persisted,
/// what its agent reported. The controller serving the node's stream holds
/// fresher observed state and health in memory (`fleet::hub`).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: NodeName,
    pub labels: Labels,
    pub status: NodeStatus,
    pub inventory: NodeInventory,
    pub agent_version: String,
    pub enrolled_at: OffsetDateTime,
    pub desired: DesiredState,
    pub observed: Option<ObservedState>,
    pub health: Option<HealthSample>,
    pub last_heartbeat_at: Option<OffsetDateTime>,
    /// Written into every credential minted for the node (`gen`); a
    /// replacement or removal takes a new value, so that every earlier
    /// credential stops working at once. Taken from the fleet's generation
    /// sequence: it only grows and never repeats, even across a removal.
    pub credential_generation: u64,
}

/// An operator's change to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// Approve (`Active`), cordon or uncordon.
    Status(NodeStatus),
    /// Cordon and empty the node's desired state, so that it unloads.
    Drain,
    /// Set and remove labels in one step (removals first).
    Labels {
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
}

/// What an enrolling agent says about itself, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub name: NodeName,
    pub labels: Labels,
    pub inventory: NodeInventory,
    pub agent_version: String,
}

/// A bootstrap token as persisted: no secret, only what an operator may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub expires_at: OffsetDateTime,
    pub uses_left: u32,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    /// The node names it may enrol (`None`: any).
    pub node_pattern: Option<NodePattern>,
    /// Whether it may replace the enrolled node named by `node_pattern`.
    pub may_replace: bool,
    /// Revoked by an operator: it enrols nothing.
    pub revoked: bool,
}

/// The node names a bootstrap token may enrol: one name (`edge-7`) or a
/// glob of `*` and `?` over the node-name alphabet (`rack7-*`). Matching is
/// `glob::Pattern`'s; `[` classes are refused so that the pattern reads the
/// same to operators as to the controller.
#[derive(Clone, PartialEq, Eq)]
pub struct NodePattern {
    text: String,
    pattern: glob::Pattern,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid node pattern {0:?}: use 1 to 128 characters of a-z, 0-9, '.', '_', '-' and the wildcards '*' and '?'"
)]
pub struct InvalidNodePattern(String);

impl NodePattern {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern names exactly one node (no wildcard).
    pub fn is_exact(&self) -> bool {
        !self.text.contains(['*', '?'])
    }

    pub fn matches(&self, name: &NodeName) -> bool {
        self.pattern.matches(name.as_str())
    }
}

impl FromStr for NodePattern {
    type Err = InvalidNodePattern;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidNodePattern(input.chars().take(140).collect());
        let alphabet_ok = !input.is_empty()
            && input.len() <= 128
            && input.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'-' | b'*' | b'?')
            });
        if !alphabet_ok {
            return Err(invalid());
        }
        let pattern = glob::Pattern::new(input).map_err(|_| invalid())?;
        Ok(Self {
            text: input.to_owned(),
            pattern,
        })
    }
}

impl fmt::Debug for NodePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodePattern({:?})", self.text)
    }
}

impl fmt::Display for NodePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a bootstrap token was refused. Unknown ids and wrong secrets read
/// the same, so a caller cannot probe which token ids exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("bootstrap token is not valid: unknown or forged")]
    Unknown,
    #[error("bootstrap token has expired")]
    Expired,
    #[error("bootstrap token is used up: it has no uses left")]
    UsedUp,
    #[error("bootstrap token was revoked by an operator")]
    Revoked,
    #[error("bootstrap token is bound to other node names")]
    WrongNode,
    /// The name is enrolled and nobody approved its replacement.
    #[error(
        "the node name is enrolled; replacing it needs an operator's approval (`flotilla node approve-replace NAME`, or a bootstrap token created with `--replace NAME`)"
    )]
    ReplacementNotApproved,
}

/// The prefix of every bootstrap token string.
const BOOTSTRAP_PREFIX: &str = "flt_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A bootstrap token as an operator hands it to an agent:
/// `flt_<id hex>_<secret hex>`. The id finds the row; the secret is
/// compared by hash. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapSecret {
    id: String,
    secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed bootstrap token: expected flt_<id>_<secret> as printed by `flotilla node token create`"
)]
pub struct MalformedBootstrapToken;

impl BootstrapSecret {
    /// A fresh random token.
    pub fn generate() -> Self {
        let id: [u8; ID_BYTES] = rand::random();
        let secret: [u8; SECRET_BYTES] = rand::random();
        Self {
            id: hex::encode(id),
            secret: hex::encode(secret),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The hash stored in place of the secret.
    pub fn secret_hash(&self) -> SecretHash {
        SecretHash(*blake3::hash(self.secret.as_bytes()).as_bytes())
    }

    /// The full token string, to show once to the operator who created it.
    pub fn expose(&self) -> String {
        format!("{BOOTSTRAP_PREFIX}{}_{}", self.id, self.secret)
    }
}

impl fmt::Debug for BootstrapSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapSecret({}, <redacted>)", self.id)
    }
}

impl FromStr for BootstrapSecret {
    type Err = MalformedBootstrapToken;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        let rest = token
            .trim()
            .strip_prefix(BOOTSTRAP_PREFIX)
            .ok_or(MalformedBootstrapToken)?;
        let (id, secret) = rest.split_once('_').ok_or(MalformedBootstrapToken)?;
        let is_hex = |s: &str, bytes: usize| {
            s.len() == bytes * 2
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !is_hex(id, ID_BYTES) || !is_hex(secret, SECRET_BYTES) {
            return Err(MalformedBootstrapToken);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// blake3 of a bootstrap secret: what the database holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Compares in constant time, so that timing does not reveal how much
    /// of a guessed secret was right.
    pub fn matches(&self, stored: &[u8]) -> bool {
        blake3::Hash::from_bytes(self.0) == stored_hash(stored)
    }
}

/// A stored hash of the wrong length compares unequal (to an all-zero hash
/// that no secret produces in practice) rather than panicking.
fn stored_hash(stored: &[u8]) -> blake3::Hash {
    let bytes: [u8; 32] = stored.try_into().unwrap_or([0; 32]);
    blake3::Hash::from_bytes(bytes)
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_validate() {
        let labels: Labels = "site=berlin, gpu=l4".parse().expect("valid");
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            [("gpu", "l4"), ("site", "berlin")]
        );
        assert!("".parse::<Labels>().expect("empty").is_empty());
        for bad in ["site", "=x", "a=b,a=c", "si te=x", "k=v v", "k=ü", "-k=v"] {
            assert!(bad.parse::<Labels>().is_err(), "{bad}");
        }
        let too_long = format!("k={}", "v".repeat(129));
        assert!(too_long.parse::<Labels>().is_err());
    }

    #[test]
    fn status_round_trips() {
        for status in [
            NodeStatus::Pending,
            NodeStatus::Active,
            NodeStatus::Cordoned,
        ] {
            assert_eq!(status.as_str().parse::<NodeStatus>(), Ok(status));
        }
        assert!("ready".parse::<NodeStatus>().is_err());
    }

    #[test]
    fn bootstrap_tokens_round_trip_and_hash() {
        let token = BootstrapSecret::generate();
        let parsed: BootstrapSecret = token.expose().parse().expect("parses");
        assert_eq!(parsed, token);
        assert!(parsed.secret_hash().matches(&token.secret_hash().0));
        let other = BootstrapSecret::generate();
        assert!(!other.secret_hash().matches(&token.secret_hash().0));
        assert!(!token.secret_hash().matches(&[1, 2, 3]));
        assert!(!format!("{token:?}").contains(&token.secret));
        for bad in [
            "",
            "flt_",
            "flt_abc_def",
            "xyz_0011223344556677_00",
            "flt_ZZ_ZZ",
        ] {
            assert!(bad.parse::<BootstrapSecret>().is_err(), "{bad}");
        }
    }
}
