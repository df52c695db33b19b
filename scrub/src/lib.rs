//! Finds personal data and secrets in text and swaps each for a stable
//! placeholder (`<EMAIL_1>`), so that a request can leave the box without
//! them; the placeholders in the answer are swapped back on the way in,
//! whole or as a stream ([`Restorer`]). Issue 20's hybrid routing builds on
//! it, and `/v1/flotilla/scrub` offers it on its own.
//!
//! What is found here is found by pattern and proved by a check where the
//! type has one: payment cards by Luhn, IBANs by their country's length and
//! mod 97, US social security numbers by the issuing rules, secrets by known
//! token shapes or by entropy. Names of people and organisations and street
//! addresses have no pattern; they need the local model (a later step).
//!
//! Hand-written over `regex` rather than a library: no maintained Rust
//! crate covers this set of detectors (Microsoft Presidio, the reference
//! the issue compares against, is Python), and each detector is a pattern
//! plus a checksum that is short to state and to test.

mod checks;
mod detect;
mod restore;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;

pub use restore::Restorer;

/// A kind of personal data or secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Email,
    Phone,
    PaymentCard,
    Iban,
    UsSsn,
    IpAddress,
    Secret,
    /// A person's name: no pattern finds it; the caller's model lists
    /// them ([`Scrubber::scrub_with_names`]).
    Person,
    /// An organisation's name (found as [`Kind::Person`]).
    Organisation,
    /// A street address (found as [`Kind::Person`]).
    Address,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Email,
        Kind::Phone,
        Kind::PaymentCard,
        Kind::Iban,
        Kind::UsSsn,
        Kind::IpAddress,
        Kind::Secret,
        Kind::Person,
        Kind::Organisation,
        Kind::Address,
    ];

    /// The kinds found by pattern and check, in this crate: the default.
    pub const PATTERNS: [Kind; 7] = [
        Kind::Email,
        Kind::Phone,
        Kind::PaymentCard,
        Kind::Iban,
        Kind::UsSsn,
        Kind::IpAddress,
        Kind::Secret,
    ];

    /// The kinds a language model has to find (names have no pattern).
    pub const NAMES: [Kind; 3] = [Kind::Person, Kind::Organisation, Kind::Address];

    /// Whether this kind is found by a model rather than a pattern.
    pub fn needs_model(self) -> bool {
        Kind::NAMES.contains(&self)
    }

    /// The name used in configuration and APIs (`email`, `payment_card`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::PaymentCard => "payment_card",
            Kind::Iban => "iban",
            Kind::UsSsn => "us_ssn",
            Kind::IpAddress => "ip_address",
            Kind::Secret => "secret",
            Kind::Person => "person",
            Kind::Organisation => "organisation",
            Kind::Address => "address",
        }
    }

    /// The word inside its placeholders (`<CARD_1>`).
    fn placeholder_tag(self) -> &'static str {
        match self {
            Kind::Email => "EMAIL",
            Kind::Phone => "PHONE",
            Kind::PaymentCard => "CARD",
            Kind::Iban => "IBAN",
            Kind::UsSsn => "SSN",
            Kind::IpAddress => "IP",
            Kind::Secret => "SECRET",
            Kind::Person => "PERSON",
            Kind::Organisation => "ORG",
            Kind::Address => "ADDRESS",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`Kind`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKind(pub String);

impl fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<&str> = Kind::ALL.iter().map(|kind| kind.as_str()).collect();
        write!(
            f,
            "unknown kind of personal data {:?} (known: {})",
            self.0,
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownKind {}

impl std::str::FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownKind(text.chars().take(40).collect()))
    }
}

/// One piece of personal data or secret in a text: its kind and byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub range: Range<usize>,
}

/// Finds and replaces the kinds it was made for.
#[derive(Debug, Clone)]
pub struct Scrubber {
    kinds: Vec<Kind>,
}

/// The pattern kinds ([`Kind::PATTERNS`]): the names need a model.
impl Default for Scrubber {
    fn default() -> Self {
        Self::new(Kind::PATTERNS)
    }
}

impl Scrubber {
    pub fn new(kinds: impl IntoIterator<Item = Kind>) -> Self {
        let mut kinds: Vec<Kind> = kinds.into_iter().collect();
        kinds.sort_unstable();
        kinds.dedup();
        Self { kinds }
    }

    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// The kinds a model has to find for this scrubber (names), which the
    /// caller passes to [`Scrubber::scrub_with_names`].
    pub fn model_kinds(&self) -> Vec<Kind> {
        self.kinds
            .iter()
            .copied()
            .filter(|kind| kind.needs_model())
            .collect()
    }

    /// Every finding of the scrubber's kinds, in text order, none
    /// overlapping (where two detectors claim the same characters, the
    /// checked one or the longer one wins).
    pub fn find(&self, text: &str) -> Vec<Finding> {
        detect::find(text, &self.kinds)
    }

    /// `text` with every finding replaced by its placeholder from
    /// `placeholders`, which remembers the originals for [`Placeholders::restore`].
    /// The same value gets the same placeholder every time.
    pub fn scrub(&self, text: &str, placeholders: &mut Placeholders) -> String {
        self.scrub_with_names(text, &[], placeholders)
    }

    /// [`Scrubber::scrub`], also replacing every occurrence of `names`
    /// (values of the [`Kind::NAMES`] kinds a model found, for those kinds
    /// this scrubber was made for). A pattern's finding wins where the two
    /// overlap.
    pub fn scrub_with_names(
        &self,
        text: &str,
        names: &[(Kind, String)],
        placeholders: &mut Placeholders,
    ) -> String {
        placeholders.reserve_from(text);
        let names: Vec<(Kind, &str)> = names
            .iter()
            .filter(|(kind, name)| {
                kind.needs_model() && self.kinds.contains(kind) && !name.is_empty()
            })
            .map(|(kind, name)| (*kind, name.as_str()))
            .collect();
        let mut scrubbed = String::with_capacity(text.len());
        let mut copied = 0;
        for finding in detect::find_with_names(text, &self.kinds, &names) {
            scrubbed.push_str(&text[copied..finding.range.start]);
            scrubbed
                .push_str(placeholders.placeholder_for(finding.kind, &text[finding.range.clone()]));
            copied = finding.range.end;
        }
        scrubbed.push_str(&text[copied..]);
        scrubbed
    }
}

/// The placeholders of one exchange (a request and its answer): which
/// original each stands for, numbered per kind in order of appearance.
#[derive(Debug, Clone, Default)]
pub struct Placeholders {
    by_value: HashMap<(Kind, String), String>,
    originals: HashMap<String, (Kind, String)>,
    next: HashMap<Kind, u32>,
    /// Placeholder-shaped text the client wrote itself: never issued, so
    /// that restoring cannot turn the client's own text into someone's data.
    reserved: Vec<String>,
}

impl Placeholders {
    pub fn new() -> Self {
        Self::default()
    }

    fn reserve_from(&mut self, text: &str) {
        for found in restore::placeholder_shapes(text) {
            if !self.originals.contains_key(found) && !self.reserved.iter().any(|r| r == found) {
                self.reserved.push(found.to_owned());
            }
        }
    }

    fn placeholder_for(&mut self, kind: Kind, value: &str) -> &str {
        let key = (kind, value.to_owned());
        if !self.by_value.contains_key(&key) {
            let placeholder = loop {
                let number = self.next.entry(kind).or_insert(0);
                *number += 1;
                let candidate = format!("<{}_{}>", kind.placeholder_tag(), number);
                if !self.reserved.contains(&candidate) {
                    break candidate;
                }
            };
            self.originals
                .insert(placeholder.clone(), (kind, value.to_owned()));
            self.by_value.insert(key.clone(), placeholder);
        }
        self.by_value.get(&key).map_or("", String::as_str)
    }

    /// The original a placeholder stands for.
    pub fn original(&self, placeholder: &str) -> Option<&str> {
        self.originals
            .get(placeholder)
            .map(|(_, value)| value.as_str())
    }

    /// `text` with every placeholder this exchange issued put back.
    pub fn restore(&self, text: &str) -> String {
        let mut restorer = self.restorer();
        let mut restored = restorer.push(text);
        restored.push_str(&restorer.finish());
        restored
    }

    /// Restores a stream of chunks, holding back only what may be the
    /// start of a placeholder split between two chunks.
    pub fn restorer(&self) -> Restorer<'_> {
        Restorer::new(self)
    }

    /// How many distinct values of each kind were replaced.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut counts = BTreeMap::new();
        for (kind, _) in self.originals.values() {
            *counts.entry(*kind).or_insert(0) += 1;
        }
        counts
    }

    /// Each placeholder with its kind and original, in no fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Kind, &str)> {
        self.originals
            .iter()
            .map(|(placeholder, (kind, value))| (placeholder.as_str(), *kind, value.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }
}

#[cfg(test)]
mod tests;
