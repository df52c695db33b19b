//! Roles of callers. The human roles include the ones below them:
//! admin ⊇ operator ⊇ viewer. `node` is apart: it is the role of an
//! enrolled agent's credential, includes no human role, and no human role
//! includes it, so a node's credential reads nothing an operator's would.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads everything: registry, fleet, rollouts.
    Viewer,
    /// Also changes the registry, fleet and rollouts.
    Operator,
    /// Also mints tokens and manages access.
    Admin,
    /// An enrolled agent (subject = node name): may later read its own
    /// desired state and blobs and report its own health, nothing else.
    Node,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
            Self::Node => "node",
        }
    }

    /// Whether a caller with this role may do what `required` may.
    pub fn includes(self, required: Role) -> bool {
        match (self, required) {
            (Self::Node, required) => required == Self::Node,
            (_, Self::Node) => false,
            (held, required) => held.rank() >= required.rank(),
        }
    }

    /// Whether this is an operator role (viewer, operator, admin), the only
    /// roles `/api/v1/tokens` may mint; node credentials come from enrolment.
    pub fn is_human(self) -> bool {
        self != Self::Node
    }

    fn rank(self) -> u8 {
        match self {
            Self::Viewer => 1,
            Self::Operator => 2,
            Self::Admin => 3,
            Self::Node => 0,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid role {0:?}: expected admin, operator, viewer or node")]
pub struct InvalidRole(String);

impl FromStr for Role {
    type Err = InvalidRole;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            "node" => Ok(Self::Node),
            other => Err(InvalidRole(other.chars().take(40).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_roles_nest_and_node_stands_apart() {
        use Role::*;
        for (held, required, expected) in [
            (Admin, Operator, true),
            (Operator, Viewer, true),
            (Viewer, Operator, false),
            (Node, Viewer, false),
            (Node, Node, true),
            (Admin, Node, false),
            (Viewer, Node, false),
        ] {
            assert_eq!(
                held.includes(required),
                expected,
                "{held} includes {required}"
            );
        }
        assert_eq!("node".parse::<Role>(), Ok(Node));
        assert!(!Node.is_human());
        assert!(Admin.is_human());
    }
}
