//! The checks that turn a pattern match into a finding: checksums for the
//! types that have one (payment cards, IBANs), the issuing rules of US
//! social security numbers, and the entropy of a would-be secret. A match
//! that fails its check is ordinary text, which is what keeps precision up
//! on the digit-heavy types.

/// The Luhn checksum of a payment card number (digits only, 12–19 of them).
pub(crate) fn luhn(digits: &[u8]) -> bool {
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let mut sum = 0u32;
    for (position, digit) in digits.iter().rev().enumerate() {
        let mut value = u32::from(*digit);
        if position % 2 == 1 {
            value *= 2;
            if value > 9 {
                value -= 9;
            }
        }
        sum += value;
    }
    sum.is_multiple_of(10)
}

/// Whether the digits start in an issuer's range: Amex, Diners and JCB 3;
/// Visa 4; Mastercard 2 and 5; Discover and UnionPay 6; and Maestro, whose
/// cards may be 12 digits long, 50 and 56–69 (and the old UK range 0604).
pub(crate) fn issued_card(digits: &[u8]) -> bool {
    match digits {
        [2..=4, ..] => digits.len() >= 13,
        [5, 0 | 6..=9, ..] | [6, ..] => true,
        [5, ..] => digits.len() >= 13,
        [0, 6, 0, 4, ..] => true,
        _ => false,
    }
}

/// The EAN-13 check digit (weights 1 and 3), which barcodes carry.
pub(crate) fn ean13(digits: &[u8]) -> bool {
    if digits.len() != 13 {
        return false;
    }
    let sum: u32 = digits[..12]
        .iter()
        .enumerate()
        .map(|(position, digit)| u32::from(*digit) * if position % 2 == 0 { 1 } else { 3 })
        .sum();
    (10 - sum % 10) % 10 == u32::from(digits[12])
}

/// An ISBN-13: 978 or 979, then the EAN-13 check digit.
pub(crate) fn isbn13(digits: &[u8]) -> bool {
    matches!(digits, [9, 7, 8 | 9, ..]) && ean13(digits)
}

/// The lengths of the IBANs of the countries that issue them (the SWIFT
/// registry's), so that a string of the right shape from a country without
/// IBANs, or of the wrong length, is not taken for one.
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "FO" | "GL" | "NL" => 18,
        "MK" | "SI" => 19,
        "AT" | "BA" | "EE" | "KZ" | "LT" | "LU" | "XK" => 20,
        "CH" | "CR" | "HR" | "LI" | "LV" => 21,
        "BG" | "BH" | "DE" | "GB" | "GE" | "IE" | "ME" | "RS" => 22,
        "AE" | "GI" | "IL" | "IQ" | "TL" => 23,
        "AD" | "CZ" | "ES" | "MD" | "PK" | "RO" | "SA" | "SE" | "SK" | "TN" | "VG" => 24,
        "PT" | "ST" => 25,
        "IS" | "TR" => 26,
        "FR" | "GR" | "IT" | "MC" | "MR" | "SM" => 27,
        "AL" | "AZ" | "BY" | "CY" | "DO" | "GT" | "HU" | "LB" | "PL" | "SV" => 28,
        "BR" | "EG" | "PS" | "QA" | "UA" => 29,
        "JO" | "KW" | "MU" => 30,
        "MT" | "SC" => 31,
        "LC" => 32,
        _ => return None,
    })
}

/// Whether `compact` (an IBAN without spaces, upper case) has its
/// country's length and passes the ISO 13616 mod-97 check.
pub(crate) fn iban(compact: &str) -> bool {
    let bytes = compact.as_bytes();
    if bytes.len() < 15 || !bytes.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let Some(length) = compact.get(..2).and_then(iban_length) else {
        return false;
    };
    if bytes.len() != length || !bytes[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    // The first four characters move to the end; letters count as 10–35.
    let mut remainder = 0u32;
    for byte in bytes[4..].iter().chain(&bytes[..4]) {
        let value = match byte {
            b'0'..=b'9' => u32::from(byte - b'0'),
            b'A'..=b'Z' => u32::from(byte - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// Whether `area`-`group`-`serial` could have been issued as a US social
/// security number: no area 000, 666 or 900–999, no group 00, no serial
/// 0000.
pub(crate) fn ssn(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Shannon entropy in bits per character.
pub(crate) fn entropy(text: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut total = 0u32;
    for byte in text.bytes() {
        counts[usize::from(byte)] += 1;
        total += 1;
    }
    if total == 0 {
        return 0.0;
    }
    let total = f64::from(total);
    counts
        .iter()
        .filter(|count| **count > 0)
        .map(|count| {
            let p = f64::from(*count) / total;
            -p * p.log2()
        })
        .sum()
}

/// Whether a token with no known prefix looks like a generated secret: long,
/// high in entropy, and mixing letter cases and digits the way keys do and
/// words, paths, version strings and hex digests of public data rarely do.
pub(crate) fn random_secret(token: &str) -> bool {
    let length = token.chars().count();
    if length < 24 {
        return false;
    }
    let has = |test: fn(&char) -> bool| token.chars().any(|c| test(&c));
    let upper = has(char::is_ascii_uppercase);
    let lower = has(char::is_ascii_lowercase);
    let digit = has(char::is_ascii_digit);
    if !(upper && lower) || entropy(token) < 4.0 {
        return false;
    }
    // Without digits, letters whose case flips as often as a coin's
    // ("aAUjecMUmbbLOavOdlkIDVfs"), not the humps of a CamelCase name.
    digit || case_flips(token) * 3 >= length
}

/// How many neighbouring letters differ in case.
fn case_flips(token: &str) -> usize {
    let letters: Vec<bool> = token
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.is_ascii_uppercase())
        .collect();
    letters.windows(2).filter(|pair| pair[0] != pair[1]).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(text: &str) -> Vec<u8> {
        text.bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect()
    }

    #[test]
    fn luhn_accepts_real_test_cards_and_refuses_one_digit_off() {
        for card in ["4111 1111 1111 1111", "5555555555554444", "378282246310005"] {
            assert!(luhn(&digits(card)), "{card}");
        }
        assert!(!luhn(&digits("4111 1111 1111 1112")));
        assert!(!luhn(&digits("4111")), "too short");
    }

    #[test]
    fn iban_checks_country_length_and_mod_97() {
        for valid in [
            "GB82WEST12345698765432",
            "DE89370400440532013000",
            "FR1420041010050500013M02606",
        ] {
            assert!(iban(valid), "{valid}");
        }
        assert!(!iban("GB82WEST12345698765433"), "checksum");
        assert!(!iban("DE8937040044053201300"), "length");
        assert!(!iban("ZZ89370400440532013000"), "country");
    }

    #[test]
    fn issuers_ranges_and_barcodes() {
        assert!(issued_card(&digits("6759 6332 1624")), "maestro, 12 digits");
        assert!(issued_card(&digits("0604 2204 3657")), "maestro uk");
        assert!(
            !issued_card(&digits("4111 1111 1111")),
            "visa has no 12-digit cards"
        );
        assert!(!issued_card(&digits("1234 5678 9012 3456")));
        assert!(ean13(&digits("6321163432861")));
        assert!(isbn13(&digits("978-0-8443-2651-1")));
        assert!(!isbn13(&digits("978-0-8443-2651-2")), "check digit");
        assert!(!isbn13(&digits("6321163432861")), "not 978/979");
    }

    #[test]
    fn ssn_rules() {
        assert!(ssn(123, 45, 6789));
        for (area, group, serial) in [
            (0, 45, 6789),
            (666, 45, 6789),
            (900, 45, 6789),
            (123, 0, 6789),
            (123, 45, 0),
        ] {
            assert!(!ssn(area, group, serial));
        }
    }

    #[test]
    fn secrets_are_told_from_words_and_hex() {
        assert!(random_secret("aZ3kP9qL2mX7vB1nR8tY5wC4"));
        assert!(!random_secret("internationalisation_matters_a_lot"));
        assert!(!random_secret("0123456789abcdef0123456789abcdef"));
        assert!(!random_secret("short1A"));
        assert!(
            random_secret("aAUjecMUmbbLOavOdlkIDVfs"),
            "no digit, case flips"
        );
        assert!(
            !random_secret("InternationalBusinessMachines"),
            "camel case"
        );
    }
}
