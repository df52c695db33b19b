use super::*;

fn document(json: &str) -> PolicyDocument {
    serde_json::from_str(json).expect("a well-formed document")
}

fn allowed(credential: &str) -> PolicyDocument {
    PolicyDocument {
        egress: "allowed".to_owned(),
        upstream: Some(UpstreamDocument {
            base_url: "https://api.openai.com/v1/".to_owned(),
            model: "gpt-4o-mini".to_owned(),
            credential: credential.to_owned(),
        }),
        triggers: TriggersDocument {
            model_names: vec!["auto".to_owned(), "frontier".to_owned()],
            header: true,
            features: vec!["tools".to_owned()],
            self_check_threshold_percent: Some(40),
            ..TriggersDocument::default()
        },
        scrub: None,
    }
}

fn refusal(document: PolicyDocument) -> String {
    PolicySpec::try_from(document)
        .expect_err("the document should be refused")
        .to_string()
}

#[test]
fn a_full_policy_validates_and_defaults_to_scrubbing_every_pattern_kind() {
    let spec = PolicySpec::try_from(allowed("env:OPENAI_API_KEY")).expect("valid");
    let upstream = spec.upstream().expect("egress allowed");
    assert_eq!(upstream.base_url, "https://api.openai.com/v1");
    assert_eq!(
        upstream.credential,
        SecretRef::Env("OPENAI_API_KEY".to_owned())
    );
    assert_eq!(spec.scrub.len(), Kind::PATTERNS.len());
    assert_eq!(spec.triggers.features, BTreeSet::from([Feature::Tools]));
    assert_eq!(spec.triggers.self_check_threshold_percent, Some(40));
}

#[test]
fn references_to_files_and_variables_are_accepted() {
    for reference in [
        "env:OPENAI_API_KEY",
        "env:_KEY",
        "file:/etc/flotilla/upstream.key",
        "file:/run/secrets/openai",
    ] {
        let parsed = reference
            .parse::<SecretRef>()
            .unwrap_or_else(|error| panic!("{reference}: {error}"));
        assert_eq!(parsed.to_string(), reference);
    }
}

#[test]
fn literal_keys_are_refused_without_being_repeated() {
    let keys = [
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
        "sk-abcdefghijklmnopqrstuvwxyz0123456789",
        "Bearer abcdefghij0123456789",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "AKIAIOSFODNN7EXAMPLE",
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    ];
    for key in keys {
        let message = refusal(allowed(key));
        assert!(
            message.contains("looks like a literal key"),
            "{key}: {message}"
        );
        assert!(
            !message.contains(key),
            "the refusal repeats the key: {message}"
        );
    }
    // A reference whose name is a key in disguise is refused too.
    let message = refusal(allowed("env:AKIAIOSFODNN7EXAMPLE"));
    assert!(message.contains("looks like a key"), "{message}");
    assert!(!message.contains("AKIAIOSFODNN7EXAMPLE"), "{message}");
}

#[test]
fn other_credentials_are_refused_as_not_a_reference() {
    for credential in [
        "",
        "hunter2",
        "OPENAI_API_KEY",
        "env:",
        "env:1BAD",
        "env:A-B",
        "file:relative/path",
    ] {
        let message = refusal(allowed(credential));
        assert!(
            message.contains("upstream.credential"),
            "{credential}: {message}"
        );
        assert!(!message.contains("literal key"), "{credential}: {message}");
    }
}

#[test]
fn a_key_hidden_elsewhere_is_refused() {
    let mut in_url = allowed("env:KEY");
    if let Some(upstream) = &mut in_url.upstream {
        upstream.base_url = "https://user:pass@api.example.com/v1".to_owned();
    }
    assert!(refusal(in_url).contains("user or password"));
    let mut in_query = allowed("env:KEY");
    if let Some(upstream) = &mut in_query.upstream {
        upstream.base_url = "https://api.example.com/v1?key=abc".to_owned();
    }
    assert!(refusal(in_query).contains("query"));
    let mut in_model = allowed("env:KEY");
    if let Some(upstream) = &mut in_model.upstream {
        upstream.model = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD".to_owned();
    }
    assert!(refusal(in_model).contains("upstream.model"));
}

#[test]
fn egress_and_upstream_must_agree() {
    let forbidden = document(r#"{"egress": "forbidden"}"#);
    let spec = PolicySpec::try_from(forbidden).expect("a forbidding policy needs nothing else");
    assert_eq!(spec.egress, Egress::Forbidden);
    assert!(spec.upstream().is_none());

    let mut forbidden_with_upstream = allowed("env:KEY");
    forbidden_with_upstream.egress = "forbidden".to_owned();
    assert!(refusal(forbidden_with_upstream).contains("names no upstream"));

    let mut allowed_without = allowed("env:KEY");
    allowed_without.upstream = None;
    assert!(refusal(allowed_without).contains("no upstream"));

    let mut never_fires = allowed("env:KEY");
    never_fires.triggers = TriggersDocument::default();
    assert!(refusal(never_fires).contains("no trigger"));

    let mut unknown = allowed("env:KEY");
    unknown.egress = "sometimes".to_owned();
    assert!(refusal(unknown).contains("allowed or forbidden"));
}

#[test]
fn triggers_and_kinds_are_checked() {
    let mut threshold = allowed("env:KEY");
    threshold.triggers.self_check_threshold_percent = Some(100);
    assert!(refusal(threshold).contains("1 to 99"));
    let mut feature = allowed("env:KEY");
    feature.triggers.features = vec!["images".to_owned()];
    assert!(refusal(feature).contains("unknown feature"));
    let mut twice = allowed("env:KEY");
    twice.triggers.model_names = vec!["auto".to_owned(), "auto".to_owned()];
    assert!(refusal(twice).contains("twice"));
    let mut spaced = allowed("env:KEY");
    spaced.triggers.model_names = vec!["two words".to_owned()];
    assert!(refusal(spaced).contains("triggers.model_names"));
    let mut kinds = allowed("env:KEY");
    kinds.scrub = Some(vec!["email".to_owned(), "dna".to_owned()]);
    assert!(refusal(kinds).contains("scrub"));

    let mut some = allowed("env:KEY");
    some.scrub = Some(vec!["email".to_owned(), "iban".to_owned()]);
    let spec = PolicySpec::try_from(some).expect("valid");
    assert_eq!(spec.scrub, BTreeSet::from([Kind::Email, Kind::Iban]));
}

#[test]
fn misspelt_fields_are_refused() {
    assert!(serde_json::from_str::<PolicyDocument>(r#"{"egres": "forbidden"}"#).is_err());
    assert!(
        serde_json::from_str::<PolicyDocument>(
            r#"{"egress": "forbidden", "triggers": {"on_overlaod": true}}"#
        )
        .is_err()
    );
}

#[test]
fn policies_round_trip_through_json_and_the_wire() {
    let spec = PolicySpec::try_from(allowed("file:/etc/flotilla/key")).expect("valid");
    let json = serde_json::to_string(&spec).expect("serialise");
    assert!(json.contains("file:/etc/flotilla/key"));
    let back: PolicySpec = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, spec);

    let assigned = AssignedPolicy {
        name: "hybrid".to_owned(),
        version: 3,
        spec,
    };
    let wire = pb::EscalationPolicy::from(&assigned);
    assert_eq!(AssignedPolicy::try_from(wire.clone()), Ok(assigned.clone()));
    assert_eq!(assigned.to_string(), "hybrid@3");

    // Without its scrub settings the wire reads as "scrub everything".
    let mut no_scrub = wire.clone();
    no_scrub.scrub = None;
    let read = AssignedPolicy::try_from(no_scrub).expect("valid");
    assert_eq!(read.spec.scrub.len(), Kind::PATTERNS.len());

    // Invalid on the wire is refused as it is at the controller.
    let mut bad = wire;
    bad.egress = String::new();
    assert!(AssignedPolicy::try_from(bad).is_err());
}
