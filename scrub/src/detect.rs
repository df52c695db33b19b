//! The detectors: a pattern per shape, then the check that proves it (see
//! `checks`), then one pass that keeps the best of overlapping findings.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;

use crate::checks;
use crate::{Finding, Kind};

/// A candidate before overlaps are settled: higher `rank` wins a tie.
struct Candidate {
    kind: Kind,
    start: usize,
    end: usize,
    rank: u8,
}

fn regex(pattern: &str) -> Regex {
    // The patterns are constants of this file, compiled by the tests.
    Regex::new(pattern).expect("a valid pattern")
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)\b[a-z0-9][a-z0-9._%+-]*@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,}\b",
    )
});
/// 12–19 digits (Maestro issues 12), single spaces or dashes allowed
/// between them.
static CARD: LazyLock<Regex> = LazyLock::new(|| regex(r"\b\d(?:[ -]?\d){11,18}\b"));
/// A country code, check digits, then 11–30 letters or digits, in groups.
static IBAN: LazyLock<Regex> = LazyLock::new(|| regex(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"));
static SSN: LazyLock<Regex> = LazyLock::new(|| regex(r"\b(\d{3})([- ])(\d{2})([- ])(\d{4})\b"));
/// Nine bare digits count as an SSN only right after words that say so.
static SSN_BARE: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\D{0,12}\b(\d{3})(\d{2})(\d{4})\b")
});
static IPV4: LazyLock<Regex> = LazyLock::new(|| regex(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"));
static IPV6: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)(?:\b|::)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}\b"));
/// A leading `+country`, an `(area)` (or the `(0)` of a trunk prefix),
/// then groups of digits; a group may be long (`+44 1314960229`).
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,12}(?:[ .-]\d{1,12}){0,5}")
});
/// Words that say the digits after them are a phone number, in the
/// languages of the corpus, so that a bare run such as `3520456288` counts
/// only where it is introduced as one.
static PHONE_CUE: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)\b(?:phone|mobile|cell|tel|call(?: me)?|ring|telefon\w*|handy|appel\w*|portable|bel(?: me)?|llám\w*|llam\w*|tel[ée]fono|m[óo]vil|chiam\w*|cellulare)\b[.:]?(?:\s+\w{1,5}){0,3}\s*:?\s*$",
    )
});
/// A date at the start of a would-be phone number ("03.07.1999 07", the
/// hour of the time after it).
static DATE_PREFIX: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4})\b"));
/// Words before a dotted quad that make it a version, not an address.
static VERSION_CUE: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)(?:\b(?:version|release|build|upgraded?|updated?|v)\b(?:[^.!?]|\.\w){0,30}|\bv)$")
});
/// Token shapes of well-known providers and formats.
static KNOWN_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    regex(concat!(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        r"|\bgh[pousr]_[A-Za-z0-9]{36,255}\b",
        r"|\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
        r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
        r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",
        r"|\bAIza[0-9A-Za-z_-]{35}\b",
        r"|\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}\b",
        r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    ))
});
/// `password: …`, `api_key=…`: the value, whatever it looks like.
/// The label may be in another language (`Passwort`, `mot de passe`); with
/// a bare "is" and no colon the value must look made up (see `secrets`).
static LABELLED_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r#"(?i)\b(?:password|passwort|kennwort|wachtwoord|mot de passe|contrase[ñn]a|passwd|pwd|passphrase|secret|api[_-]?key|access[_-]?token|auth[_-]?token|token)\s*(?:(is)\s+|(?:is\s*)?[:=]\s*)["']?([^\s"',;]{6,})"#,
    )
});
static TOKEN: LazyLock<Regex> = LazyLock::new(|| regex(r"[A-Za-z0-9+/_=-]{24,}"));
static SSN_SHAPE: LazyLock<Regex> = LazyLock::new(|| regex(r"^\d{3}-\d{2}-\d{4}$"));
static DATE: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(?:\d{4}[-.]\d{1,2}[-.]\d{1,2}|\d{1,2}[-.]\d{1,2}[-.]\d{4})$"));

pub(crate) fn find(text: &str, kinds: &[Kind]) -> Vec<Finding> {
    find_with_names(text, kinds, &[])
}

/// [`find`], plus every occurrence of each of `names` (literal values a
/// model found), ranked below every pattern.
pub(crate) fn find_with_names(text: &str, kinds: &[Kind], names: &[(Kind, &str)]) -> Vec<Finding> {
    let mut candidates = Vec::new();
    for (kind, name) in names {
        for (start, found) in text.match_indices(name) {
            push(&mut candidates, *kind, start, start + found.len(), 0);
        }
    }
    for kind in kinds {
        match kind {
            Kind::Email => emails(text, &mut candidates),
            Kind::PaymentCard => cards(text, &mut candidates),
            Kind::Iban => ibans(text, &mut candidates),
            Kind::UsSsn => ssns(text, &mut candidates),
            Kind::IpAddress => ips(text, &mut candidates),
            Kind::Phone => phones(text, &mut candidates),
            Kind::Secret => secrets(text, &mut candidates),
            // Found by a model: passed in as `names`.
            Kind::Person | Kind::Organisation | Kind::Address => {}
        }
    }
    settle(candidates)
}

/// Keeps non-overlapping findings: earliest first; where several start
/// together or overlap, the higher rank, then the longer, wins.
fn settle(mut candidates: Vec<Candidate>) -> Vec<Finding> {
    candidates.sort_by(|a, b| {
        b.rank
            .cmp(&a.rank)
            .then((b.end - b.start).cmp(&(a.end - a.start)))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: Vec<Candidate> = Vec::new();
    for candidate in candidates {
        if kept
            .iter()
            .all(|k| candidate.end <= k.start || k.end <= candidate.start)
        {
            kept.push(candidate);
        }
    }
    kept.sort_by_key(|k| k.start);
    kept.into_iter()
        .map(|k| Finding {
            kind: k.kind,
            range: k.start..k.end,
        })
        .collect()
}

fn push(candidates: &mut Vec<Candidate>, kind: Kind, start: usize, end: usize, rank: u8) {
    candidates.push(Candidate {
        kind,
        start,
        end,
        rank,
    });
}

fn emails(text: &str, candidates: &mut Vec<Candidate>) {
    for found in EMAIL.find_iter(text) {
        push(candidates, Kind::Email, found.start(), found.end(), 6);
    }
}

fn cards(text: &str, candidates: &mut Vec<Candidate>) {
    for found in CARD.find_iter(text) {
        let digits: Vec<u8> = found
            .as_str()
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        // Issuers' ranges (Amex, Diners, JCB: 3; Visa: 4; Mastercard: 2, 5;
        // Discover, UnionPay: 6), so that an order number that happens to
        // pass Luhn is not a card.
        if !checks::issued_card(&digits) || !checks::luhn(&digits) {
            continue;
        }
        // "+39 07650459129" is a phone number whose digits pass Luhn.
        let after_plus = text[..found.start()].ends_with('+');
        // A 13-digit EAN barcode passes Luhn one time in ten; cards of 13
        // digits are Visa's, which start with 4.
        let barcode = digits.len() == 13 && digits[0] != 4 && checks::ean13(&digits);
        if !after_plus && !barcode {
            push(candidates, Kind::PaymentCard, found.start(), found.end(), 5);
        }
    }
}

fn ibans(text: &str, candidates: &mut Vec<Candidate>) {
    for found in IBAN.find_iter(text) {
        // The pattern may run on into the next group of capitals or digits
        // ("… 3000 AND"): take as many characters as the country's IBANs
        // have, and end the finding there.
        let mut compact = String::new();
        for (offset, c) in found.as_str().char_indices() {
            if c == ' ' {
                continue;
            }
            compact.push(c);
            if compact.len() >= 15 && checks::iban(&compact) {
                let end = found.start() + offset + c.len_utf8();
                let at_boundary = text[end..]
                    .chars()
                    .next()
                    .is_none_or(|next| !next.is_ascii_alphanumeric() || next == ' ');
                if at_boundary {
                    push(candidates, Kind::Iban, found.start(), end, 5);
                    break;
                }
            }
        }
    }
}

fn ssns(text: &str, candidates: &mut Vec<Candidate>) {
    for captures in SSN.captures_iter(text) {
        let (Some(whole), Some(area), Some(dash1), Some(group), Some(dash2), Some(serial)) = (
            captures.get(0),
            captures.get(1),
            captures.get(2),
            captures.get(3),
            captures.get(4),
            captures.get(5),
        ) else {
            continue;
        };
        if dash1.as_str() != dash2.as_str() {
            continue;
        }
        if issued_ssn(area.as_str(), group.as_str(), serial.as_str()) {
            push(candidates, Kind::UsSsn, whole.start(), whole.end(), 4);
        }
    }
    for captures in SSN_BARE.captures_iter(text) {
        let (Some(area), Some(group), Some(serial)) =
            (captures.get(1), captures.get(2), captures.get(3))
        else {
            continue;
        };
        if issued_ssn(area.as_str(), group.as_str(), serial.as_str()) {
            push(candidates, Kind::UsSsn, area.start(), serial.end(), 4);
        }
    }
}

fn issued_ssn(area: &str, group: &str, serial: &str) -> bool {
    match (area.parse(), group.parse(), serial.parse()) {
        (Ok(area), Ok(group), Ok(serial)) => checks::ssn(area, group, serial),
        _ => false,
    }
}

fn ips(text: &str, candidates: &mut Vec<Candidate>) {
    for found in IPV4.find_iter(text) {
        // Not part of a longer dotted run (a version such as 1.2.3.4.5).
        let before = text[..found.start()].chars().next_back();
        let after = text[found.end()..].chars().next();
        let dotted = |c: Option<char>| c.is_some_and(|c| c == '.' || c.is_ascii_digit());
        let dotted_after = after == Some('.')
            && text[found.end() + 1..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit());
        if dotted(before) || dotted_after {
            continue;
        }
        // 0.0.0.0/8 is "this network", never a host's address; a dotted
        // quad after "version" or "upgraded to" is a version string.
        let version = VERSION_CUE.is_match(&text[..found.start()]);
        match found.as_str().parse::<Ipv4Addr>() {
            Ok(address) if address.octets()[0] != 0 && !version => {
                push(candidates, Kind::IpAddress, found.start(), found.end(), 3);
            }
            _ => {}
        }
    }
    for found in IPV6.find_iter(text) {
        let trimmed = found.as_str();
        if trimmed.matches(':').count() >= 2
            && trimmed.chars().any(|c| c.is_ascii_hexdigit())
            && trimmed.parse::<Ipv6Addr>().is_ok()
        {
            push(candidates, Kind::IpAddress, found.start(), found.end(), 3);
        }
    }
}

fn phones(text: &str, candidates: &mut Vec<Candidate>) {
    for found in PHONE.find_iter(text) {
        let number = found.as_str().trim_end_matches(['.', '-', ' ']);
        let start = found.start();
        let end = start + number.len();
        // Glued to letters or other digits ("A1234567", "x12.34"), it is
        // an identifier or a figure, not a phone number.
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        // Followed by a colon, the last group is the hour of a time.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '.' || c == ',' || c == '/')
            || after.is_some_and(|c| c.is_alphanumeric() || c == '/' || c == ':')
        {
            continue;
        }
        let digit_values: Vec<u8> = number
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        let digits = digit_values.len();
        // Shaped as a social security number: that detector's to judge.
        if !(7..=15).contains(&digits)
            || DATE.is_match(number)
            || DATE_PREFIX.is_match(number)
            || SSN_SHAPE.is_match(number)
            || checks::isbn13(&digit_values)
        {
            continue;
        }
        let international = number.starts_with('+');
        let area = number.contains('(');
        let groups = number
            .split([' ', '.', '-'])
            .filter(|group| !group.is_empty())
            .count();
        // A national number starts with its trunk prefix, a single 0
        // ("0221446579", "05376 863488").
        let trunk = number.starts_with('0') && !number.starts_with("00") && digits >= 9;
        let introduced = PHONE_CUE.is_match(&text[..start]) && digits >= 9;
        // Plain digit runs and figures with one separator are mostly other
        // numbers; a phone number is written with a country code, an area
        // code in brackets, in three or more groups, with a trunk prefix, or
        // right after a word that says it is one.
        if international || area || groups >= 3 || (trunk && groups <= 2) || introduced {
            push(candidates, Kind::Phone, start, end, 2);
        }
    }
}

fn secrets(text: &str, candidates: &mut Vec<Candidate>) {
    for found in KNOWN_SECRET.find_iter(text) {
        push(candidates, Kind::Secret, found.start(), found.end(), 7);
    }
    for captures in LABELLED_SECRET.captures_iter(text) {
        let Some(value) = captures.get(2) else {
            continue;
        };
        // "The password is stored in the vault": after a bare "is", only a
        // value with a digit or a capital inside it is taken for one.
        let bare_is = captures.get(1).is_some();
        let made_up = value
            .as_str()
            .chars()
            .skip(1)
            .any(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            || value.as_str().starts_with(|c: char| c.is_ascii_digit());
        if !bare_is || made_up {
            push(candidates, Kind::Secret, value.start(), value.end(), 7);
        }
    }
    for found in TOKEN.find_iter(text) {
        if checks::random_secret(found.as_str()) {
            push(candidates, Kind::Secret, found.start(), found.end(), 1);
        }
    }
}
