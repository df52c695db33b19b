use super::*;

fn found(text: &str) -> Vec<(Kind, &str)> {
    Scrubber::default()
        .find(text)
        .into_iter()
        .map(|finding| (finding.kind, &text[finding.range]))
        .collect()
}

#[test]
fn each_kind_is_found_in_a_sentence() {
    let cases = [
        (
            "Write to jane.doe+work@example.co.uk today.",
            Kind::Email,
            "jane.doe+work@example.co.uk",
        ),
        (
            "Call me on +44 20 7946 0958 after six.",
            Kind::Phone,
            "+44 20 7946 0958",
        ),
        (
            "Her number is (555) 123-4567, mobile.",
            Kind::Phone,
            "(555) 123-4567",
        ),
        ("Ruf an: 030 1234 5678.", Kind::Phone, "030 1234 5678"),
        ("or 555-123-4567, evenings", Kind::Phone, "555-123-4567"),
        (
            "Card 4111 1111 1111 1111 expires soon",
            Kind::PaymentCard,
            "4111 1111 1111 1111",
        ),
        (
            "amex 378282246310005.",
            Kind::PaymentCard,
            "378282246310005",
        ),
        (
            "IBAN DE89 3704 0044 0532 0130 00 for the rent",
            Kind::Iban,
            "DE89 3704 0044 0532 0130 00",
        ),
        (
            "Pay GB82WEST12345698765432.",
            Kind::Iban,
            "GB82WEST12345698765432",
        ),
        ("SSN: 123-45-6789", Kind::UsSsn, "123-45-6789"),
        (
            "my social security number is 123456789",
            Kind::UsSsn,
            "123456789",
        ),
        (
            "The server at 192.168.10.21 is down",
            Kind::IpAddress,
            "192.168.10.21",
        ),
        (
            "Reach 2001:db8::8a2e:370:7334 over v6",
            Kind::IpAddress,
            "2001:db8::8a2e:370:7334",
        ),
        (
            "key AKIAIOSFODNN7EXAMPLE here",
            Kind::Secret,
            "AKIAIOSFODNN7EXAMPLE",
        ),
        (
            "export OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz012345",
            Kind::Secret,
            "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        ),
        (
            "token ghp_0123456789abcdefghijABCDEFGHIJ012345 leaked",
            Kind::Secret,
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
        ),
        ("password: hunter2!x", Kind::Secret, "hunter2!x"),
        (
            "random aZ3kP9qL2mX7vB1nR8tY5wC4 string",
            Kind::Secret,
            "aZ3kP9qL2mX7vB1nR8tY5wC4",
        ),
    ];
    for (text, kind, value) in cases {
        assert_eq!(found(text), vec![(kind, value)], "{text}");
    }
}

/// Cases the labelled corpus (`eval/corpus.jsonl`) found missed.
#[test]
fn corpus_misses_are_found() {
    let cases = [
        // Maestro issues 12-digit cards.
        (
            "card 6763-8590-5184 please",
            Kind::PaymentCard,
            "6763-8590-5184",
        ),
        (
            "The card number is 560019623068.",
            Kind::PaymentCard,
            "560019623068",
        ),
        (
            "Use 0604 2204 3657 for it",
            Kind::PaymentCard,
            "0604 2204 3657",
        ),
        // Long groups, the (0) of a trunk prefix, compact international.
        (
            "My mobile is +31(0)37-4291763.",
            Kind::Phone,
            "+31(0)37-4291763",
        ),
        ("Bel op +441314960229 nu", Kind::Phone, "+441314960229"),
        ("Tel.: +39 07650459129", Kind::Phone, "+39 07650459129"),
        ("Ruf an: 0221446579, bitte", Kind::Phone, "0221446579"),
        ("Llámame al 05376 863488 hoy", Kind::Phone, "05376 863488"),
        // A bare run introduced as a phone number.
        (
            "Meine Telefonnummer ist 6636349339.",
            Kind::Phone,
            "6636349339",
        ),
        ("Bel me even op 3520456288 als", Kind::Phone, "3520456288"),
        // Labelled passwords in other words and languages.
        (
            "The wifi password is 3Mm4acuS1hWY",
            Kind::Secret,
            "3Mm4acuS1hWY",
        ),
        ("Passwort: G6qSQXRLAv", Kind::Secret, "G6qSQXRLAv"),
        ("mot de passe : uYlFzvaeu2", Kind::Secret, "uYlFzvaeu2"),
        // Random letters with no digit.
        (
            "The token aAUjecMUmbbLOavOdlkIDVfs expired",
            Kind::Secret,
            "aAUjecMUmbbLOavOdlkIDVfs",
        ),
    ];
    for (text, kind, value) in cases {
        assert_eq!(found(text), vec![(kind, value)], "{text}");
    }
}

/// Look-alikes the labelled corpus found taken for personal data.
#[test]
fn corpus_false_alarms_are_left_alone() {
    for text in [
        "ISBN 978-0-8443-2651-1 is the second edition.",
        "Flight KL6374 departs 03.07.1999 07:39:42 from gate D19.",
        "Flight IB7355 departs 2017-02-13 03:46 from gate A44.",
        "Barcode 6321163432861 is out of stock.", // EAN-13, passes Luhn
        "We upgraded from version 2.15.19 to 3.19.15.6 last night.",
        "Release 4.28.8.1 is out.",
        "The default route 0.13.5.4 is no host.",
        "Call the support line in the app, not by phone, and quote case 7626353660.",
        "The password is stored in the vault.",
        "InternationalBusinessMachinesCorporation",
    ] {
        assert_eq!(found(text), vec![], "{text}");
    }
}

#[test]
fn look_alikes_are_left_alone() {
    for text in [
        "Meet on 2024-05-17 at 10:30:45.",
        "Version 1.2.3.4.5 of the library, build 20240517.",
        "Order 1234567890123456 shipped.", // fails Luhn and issuer
        "Card-like 4111 1111 1111 1112 fails", // fails Luhn
        "SSN 000-12-3456 is never issued",
        "Invoice DE00 1234 5678 9012 3456 78.", // fails mod 97
        "The population grew to 8,123,456 in 2023.",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "internationalisation_and_localisation_matter",
        "Temperature 21.5 and 1234567 items.",
        "Room 4-12 on floor 3.",
    ] {
        assert_eq!(found(text), vec![], "{text}");
    }
}

#[test]
fn placeholders_are_stable_and_restored() {
    let scrubber = Scrubber::default();
    let mut placeholders = Placeholders::new();
    let text = "Mail a@b.io and c@d.io, then a@b.io again; card 4111111111111111.";
    let scrubbed = scrubber.scrub(text, &mut placeholders);
    assert_eq!(
        scrubbed,
        "Mail <EMAIL_1> and <EMAIL_2>, then <EMAIL_1> again; card <CARD_1>."
    );
    assert_eq!(
        placeholders.counts(),
        BTreeMap::from([(Kind::Email, 2), (Kind::PaymentCard, 1)])
    );
    // A second message of the same exchange keeps the numbering.
    assert_eq!(
        scrubber.scrub("reply to c@d.io", &mut placeholders),
        "reply to <EMAIL_2>"
    );
    let answer = "I wrote to <EMAIL_2> and charged <CARD_1>; <EMAIL_9> is unknown.";
    assert_eq!(
        placeholders.restore(answer),
        "I wrote to c@d.io and charged 4111111111111111; <EMAIL_9> is unknown."
    );
}

#[test]
fn a_placeholder_the_client_wrote_is_never_issued() {
    let mut placeholders = Placeholders::new();
    let scrubbed =
        Scrubber::default().scrub("literal <EMAIL_1> and real x@y.io", &mut placeholders);
    assert_eq!(scrubbed, "literal <EMAIL_1> and real <EMAIL_2>");
    assert_eq!(
        placeholders.restore(&scrubbed),
        "literal <EMAIL_1> and real x@y.io"
    );
}

#[test]
fn streamed_answers_are_restored_whatever_the_chunking() {
    let mut placeholders = Placeholders::new();
    Scrubber::default().scrub("x@y.io and +1 (555) 123-4567", &mut placeholders);
    let answer = "Sent <EMAIL_1> a text at <PHONE_1> < 3 times, <b>ok</b> <EMAIL_";
    let whole = placeholders.restore(answer);
    assert_eq!(
        whole,
        "Sent x@y.io a text at +1 (555) 123-4567 < 3 times, <b>ok</b> <EMAIL_"
    );
    // Every split into two chunks, and one character at a time.
    let boundaries: Vec<usize> = (0..=answer.len())
        .filter(|i| answer.is_char_boundary(*i))
        .collect();
    for split in &boundaries {
        let mut restorer = placeholders.restorer();
        let mut streamed = restorer.push(&answer[..*split]);
        streamed.push_str(&restorer.push(&answer[*split..]));
        streamed.push_str(&restorer.finish());
        assert_eq!(streamed, whole, "split at {split}");
    }
    let mut restorer = placeholders.restorer();
    let mut streamed = String::new();
    for c in answer.chars() {
        streamed.push_str(&restorer.push(&c.to_string()));
    }
    streamed.push_str(&restorer.finish());
    assert_eq!(streamed, whole);
}

#[test]
fn only_the_configured_kinds_are_scrubbed() {
    let scrubber = Scrubber::new(["email".parse::<Kind>().expect("a kind")]);
    let mut placeholders = Placeholders::new();
    assert_eq!(
        scrubber.scrub("a@b.io from 192.168.0.1", &mut placeholders),
        "<EMAIL_1> from 192.168.0.1"
    );
    let unknown = "names".parse::<Kind>().expect_err("not a kind");
    assert!(unknown.to_string().contains("payment_card"), "{unknown}");
}

#[test]
fn odd_input_never_panics() {
    let scrubber = Scrubber::default();
    for text in [
        "",
        "<",
        "<<<>>>",
        "é@ü.de ☃ 4111 1111 1111 1111 ☃",
        "::",
        ":::::::",
        "+",
        "(((1)))",
    ] {
        let mut placeholders = Placeholders::new();
        let scrubbed = scrubber.scrub(text, &mut placeholders);
        assert_eq!(placeholders.restore(&scrubbed), text);
    }
}

#[test]
fn names_a_model_found_are_replaced_wherever_they_occur_and_patterns_win() {
    let scrubber = Scrubber::new([Kind::Email, Kind::Person, Kind::Organisation]);
    let names = [
        (Kind::Person, "Jane Doe".to_owned()),
        (Kind::Organisation, "Acme".to_owned()),
        // Inside an e-mail address: the pattern's finding wins.
        (Kind::Person, "jane".to_owned()),
        // Not a kind this scrubber is for.
        (Kind::Address, "12 Baker Street".to_owned()),
    ];
    let mut placeholders = Placeholders::new();
    let text = "Jane Doe of Acme (jane@acme.test) lives at 12 Baker Street; ask Jane Doe.";
    let scrubbed = scrubber.scrub_with_names(text, &names, &mut placeholders);
    assert_eq!(
        scrubbed,
        "<PERSON_1> of <ORG_1> (<EMAIL_1>) lives at 12 Baker Street; ask <PERSON_1>."
    );
    assert_eq!(placeholders.restore(&scrubbed), text);
    // Names are never found without them: the default is the pattern kinds.
    assert_eq!(Scrubber::default().kinds(), Kind::PATTERNS);
    assert!(Kind::NAMES.iter().all(|kind| kind.needs_model()));
}
