//! Validated names of registry objects. Names appear in URLs, object keys and
//! CLI arguments, so they are restricted to a safe, unambiguous alphabet.
//! Here, in the contract, because the records both sides hold carry them
//! (the directory entry names a node and a model); the controller's domain
//! re-exports them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid {kind} name {name:?}: use 1 to 128 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
)]
pub struct InvalidName {
    kind: &'static str,
    name: String,
}

fn validate_name(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(InvalidName {
            kind,
            name: name.chars().take(140).collect(),
        })
    }
}

/// What kind of object a name type names (`"prompt"`), for messages that
/// speak of it generically.
pub trait NameKind {
    const KIND: &'static str;
}

macro_rules! name_type {
    ($(#[$doc:meta])* $type:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $type(String);

        impl $type {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl NameKind for $type {
            const KIND: &'static str = $kind;
        }

        impl FromStr for $type {
            type Err = InvalidName;

            fn from_str(name: &str) -> Result<Self, Self::Err> {
                validate_name($kind, name)?;
                Ok(Self(name.to_owned()))
            }
        }

        impl TryFrom<String> for $type {
            type Error = InvalidName;

            fn try_from(name: String) -> Result<Self, Self::Error> {
                validate_name($kind, &name)?;
                Ok(Self(name))
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($type), self.0)
            }
        }

        /// As the plain string, so a stored record reads the same as one
        /// that held a `String`.
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        /// Checked like [`FromStr`]: a stored or received name is input.
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = String::deserialize(deserializer)?;
                Self::try_from(name).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A model's registry name, e.g. `smollm2-135m-instruct`.
    ModelName,
    "model"
);
name_type!(
    /// A node's fleet name, e.g. `berlin-edge-01`: the subject of its
    /// credential.
    NodeName,
    "node"
);
name_type!(
    /// A system prompt's registry name, e.g. `support-agent`.
    PromptName,
    "prompt"
);
name_type!(
    /// An escalation policy's registry name, e.g. `hybrid-eu`.
    PolicyName,
    "policy"
);
name_type!(
    /// A rollout's name, e.g. `smollm2-1.3-berlin`.
    RolloutName,
    "rollout"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_registry_style_names() {
        for name in ["smollm2-135m-instruct", "a", "llama3.1_8b", "0model"] {
            assert!(name.parse::<ModelName>().is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_unsafe_names() {
        let too_long = "a".repeat(129);
        for name in [
            "",
            "Upper",
            "-lead",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            too_long.as_str(),
            "../x",
        ] {
            assert!(name.parse::<ModelName>().is_err(), "{name}");
        }
    }
}
