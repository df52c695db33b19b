//! The routing index's tests: the directory it publishes, and that its
//! incremental upkeep lists what a walk over every node would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::super::fixtures::{assigned, digest_of, observed, sample};
use super::super::{Endpoints, ModelLoad, NodeRuntime, PushedState, Session, SyncHub};
use super::*;
use crate::domain::{DirectoryEntry, NodeName, NodeStatus};

#[test]
fn pending_and_evicted_nodes_are_no_peers() {
    let hub = SyncHub::new(Duration::from_secs(5));
    let now = OffsetDateTime::now_utc();
    let a: NodeName = "a".parse().expect("valid");
    let pending = PushedState {
        status: NodeStatus::Pending,
        ..assigned(1, "smollm2", "aa")
    };
    let session = hub.connect(&a, pending);
    hub.advertise(
        &a,
        Endpoints {
            http_url: "http://127.0.0.1:1000".to_owned(),
            grpc_url: String::new(),
        },
    );
    hub.observe(&a, observed("aa", AssignmentPhase::Ready));
    hub.heartbeat(&a, sample(now, 1.0), now);
    // Claims READY with a matching digest, but is not approved.
    assert!(hub.local_routes().is_empty());
    hub.offer(
        &session,
        PushedState {
            status: NodeStatus::Active,
            ..assigned(2, "smollm2", "aa")
        },
    );
    assert_eq!(hub.local_routes().len(), 1);
    // Replaced or removed: gone, and its stream's watch is closed.
    hub.evict(&a);
    assert!(hub.local_routes().is_empty());
    assert!(session.desired.has_changed().is_err());
}

#[test]
fn where_certificates_are_required_a_node_is_listed_only_while_its_certificate_is_valid() {
    let hub = SyncHub::new(Duration::from_secs(5));
    hub.set_require_certificates(true);
    let now = OffsetDateTime::now_utc();
    let a: NodeName = "a".parse().expect("valid");
    let session = hub.connect(&a, assigned(1, "smollm2", "aa"));
    hub.advertise(
        &a,
        Endpoints {
            http_url: "https://127.0.0.1:1000".to_owned(),
            grpc_url: String::new(),
        },
    );
    hub.observe(&a, observed("aa", AssignmentPhase::Ready));
    hub.heartbeat(&a, sample(now, 1.0), now);
    // Ready and heartbeating, but never issued a certificate.
    assert!(hub.local_routes().is_empty());
    hub.certify(&session, now + time::Duration::hours(1));
    assert_eq!(hub.local_routes().len(), 1);
    // Expired: gone until a renewal certifies it again.
    hub.certify(&session, now - time::Duration::seconds(1));
    assert!(hub.local_routes().is_empty());
    assert!(hub.model_load().is_empty());
    hub.certify(&session, now + time::Duration::hours(1));
    assert_eq!(hub.local_routes().len(), 1);
    // A new stream of the node (a replacement, say) starts uncertified,
    // and an older session cannot certify it.
    let newer = hub.connect(&a, assigned(1, "smollm2", "aa"));
    hub.observe(&a, observed("aa", AssignmentPhase::Ready));
    hub.certify(&session, now + time::Duration::hours(1));
    assert!(hub.local_routes().is_empty());
    hub.certify(&newer, now + time::Duration::hours(1));
    assert_eq!(hub.local_routes().len(), 1);
}

#[test]
fn the_directory_lists_ready_streaming_nodes_and_publishes_only_changes() {
    let hub = SyncHub::new(Duration::from_secs(5));
    let mut directory = hub.subscribe_directory();
    assert!(directory.has_changed().expect("open"));
    directory.borrow_and_update();
    let now = OffsetDateTime::now_utc();
    let endpoints = |port: u16| Endpoints {
        http_url: format!("http://127.0.0.1:{port}"),
        grpc_url: format!("http://127.0.0.1:{}", port + 1),
    };
    let a: NodeName = "a".parse().expect("valid");
    let b: NodeName = "b".parse().expect("valid");
    let c: NodeName = "c".parse().expect("valid");
    let _a = hub.connect(&a, assigned(1, "smollm2", "aa"));
    hub.advertise(&a, endpoints(1000));
    hub.observe(&a, observed("aa", AssignmentPhase::Ready));
    hub.heartbeat(&a, sample(now, 37.5), now);
    // Still loading: not listed.
    let _b = hub.connect(&b, assigned(1, "smollm2", "bb"));
    hub.advertise(&b, endpoints(2000));
    hub.observe(&b, observed("bb", AssignmentPhase::Loading));
    hub.heartbeat(&b, sample(now, 1.0), now);
    // Ready but never heartbeated: not listed.
    let _c = hub.connect(&c, assigned(1, "smollm2", "cc"));
    hub.advertise(&c, endpoints(3000));
    hub.observe(&c, observed("cc", AssignmentPhase::Ready));

    hub.refresh_directory();
    assert!(directory.has_changed().expect("open"));
    let listed = directory.borrow_and_update().clone();
    assert_eq!(
        listed.entries,
        vec![DirectoryEntry {
            model: "smollm2".parse().expect("valid"),
            version: "v1".to_owned(),
            node: a.clone(),
            http_url: "http://127.0.0.1:1000".to_owned(),
            grpc_url: "http://127.0.0.1:1001".to_owned(),
            load: 30,
            queue_depth: 3,
            queue_capacity: 20,
            aliases: vec!["chat".parse().expect("valid")],
            digest: Some(digest_of("aa")),
            size_bytes: 1,
            quantization: "Q4_1".to_owned(),
        }]
    );
    // Nothing changed (a load wobble within one step): nothing is sent.
    hub.heartbeat(&a, sample(now, 39.0), now);
    hub.refresh_directory();
    assert!(!directory.has_changed().expect("open"));

    hub.observe(&b, observed("bb", AssignmentPhase::Ready));
    hub.refresh_directory();
    assert!(directory.has_changed().expect("open"));
    let nodes: Vec<_> = directory
        .borrow_and_update()
        .entries
        .iter()
        .map(|entry| entry.node.to_string())
        .collect();
    assert_eq!(nodes, ["a", "b"]);
    // The per-model figures sum the listed nodes (c is not listed).
    assert_eq!(
        hub.model_load().into_iter().collect::<Vec<_>>(),
        [(
            "smollm2".to_owned(),
            ModelLoad {
                nodes: 2,
                queue_depth: 6,
                queue_capacity: 40,
                tokens_per_second: 0.0,
                time_to_first_token_max_ms: None,
            }
        )]
    );

    // A closed stream drops the node.
    hub.disconnect(&_a);
    hub.refresh_directory();
    let nodes: Vec<_> = directory
        .borrow_and_update()
        .entries
        .iter()
        .map(|entry| entry.node.to_string())
        .collect();
    assert_eq!(nodes, ["b"]);
}

/// An index fed by hand, at times the test chooses.
fn bare_index(window: time::Duration) -> (RouteChanges, Index) {
    let (changes, queued) = route_changes(1024);
    (changes, Index::new(queued.receiver, window))
}

fn name(raw: &str) -> NodeName {
    raw.parse().expect("valid")
}

/// What a walk over every node's facts would list at `now`: the index
/// as rebuilt from scratch.
fn walked(index: &Index, now: OffsetDateTime) -> Vec<DirectoryEntry> {
    let mut entries: Vec<DirectoryEntry> = index
        .nodes
        .iter()
        .filter(|(_, route)| {
            route
                .facts
                .lapse(now, index.window, index.require_certificates)
                .is_some()
        })
        .filter_map(|(node, route)| route.facts.entry(node))
        .collect();
    entries.sort();
    entries
}

fn listed_entry(index: &Index, node: &str) -> Option<Arc<DirectoryEntry>> {
    index
        .nodes
        .get(&name(node))?
        .listed
        .as_ref()
        .map(|listed| listed.entry.clone())
}

#[test]
fn a_stale_heartbeat_or_an_expired_certificate_unlists_that_node_alone_when_its_time_comes() {
    let window = time::Duration::seconds(15);
    let (changes, mut index) = bare_index(window);
    let t0 = OffsetDateTime::now_utc();
    index.set_require_certificates(true, t0);
    for (node, heard_at, certified_until) in [
        (
            "a",
            t0 - time::Duration::seconds(5),
            t0 + time::Duration::hours(1),
        ),
        ("b", t0, t0 + time::Duration::hours(1)),
        ("c", t0, t0 + time::Duration::seconds(5)),
    ] {
        changes.send(RouteChange::Stream {
            node: name(node),
            stream: Some(StreamRoute {
                pushed: Arc::new(assigned(1, "smollm2", "aa")),
                endpoints: Some(Arc::new(Endpoints {
                    http_url: format!("https://{node}:1000"),
                    grpc_url: String::new(),
                })),
                certificate_expires_at: Some(certified_until),
            }),
        });
        changes.send(RouteChange::Observed {
            node: name(node),
            observed: Some(ObservedRoute::of(&observed("aa", AssignmentPhase::Ready))),
        });
        changes.send(RouteChange::Heartbeat {
            node: name(node),
            liveness: Some(Liveness::of(heard_at, &sample(heard_at, 20.0))),
        });
    }
    index.apply_queued(t0);
    index.expire(t0);
    let nodes = |index: &Index| -> Vec<String> {
        index
            .local_routes()
            .iter()
            .map(|entry| entry.node.to_string())
            .collect()
    };
    assert_eq!(nodes(&index), ["a", "b", "c"]);
    assert_eq!(index.local_routes(), walked(&index, t0));
    let b = listed_entry(&index, "b").expect("listed");
    let version = index.listing.version;

    // c's certificate expires: c goes, by its timer; nothing else is
    // rebuilt.
    let at = t0 + time::Duration::seconds(5);
    index.expire(at);
    assert_eq!(nodes(&index), ["a", "b"]);
    assert_eq!(index.listing.version, version + 1);
    assert!(Arc::ptr_eq(&b, &listed_entry(&index, "b").expect("listed")));
    assert_eq!(index.local_routes(), walked(&index, at));

    // a was last heard 15 s before t0 + 10 s: listed up to that instant
    // and gone a nanosecond later.
    let at = t0 + time::Duration::seconds(10);
    index.expire(at);
    assert_eq!(nodes(&index), ["a", "b"]);
    let at = at + time::Duration::NANOSECOND;
    index.expire(at);
    assert_eq!(nodes(&index), ["b"]);
    assert_eq!(index.local_routes(), walked(&index, at));

    // A heartbeat with the same loads keeps b's entry as it is (no
    // rebuild, no new version) and moves its lapse: its first timer
    // finds it fresh and re-arms.
    let heard_at = t0 + time::Duration::seconds(12);
    changes.send(RouteChange::Heartbeat {
        node: name("b"),
        liveness: Some(Liveness::of(heard_at, &sample(heard_at, 21.0))),
    });
    index.apply_queued(heard_at);
    let version = index.listing.version;
    let at = t0 + window + time::Duration::NANOSECOND;
    index.expire(at);
    assert_eq!(nodes(&index), ["b"]);
    assert_eq!(index.listing.version, version);
    assert!(Arc::ptr_eq(&b, &listed_entry(&index, "b").expect("listed")));
    let at = heard_at + window + time::Duration::NANOSECOND;
    index.expire(at);
    assert!(nodes(&index).is_empty());
    assert_eq!(index.local_routes(), walked(&index, at));
    // Nothing listed, but the nodes are still known (their streams
    // are open).
    assert_eq!(index.nodes.len(), 3);
    assert!(index.listing.offerings.is_empty());
}

#[test]
fn a_load_change_refiles_the_node_in_its_offering() {
    let (changes, mut index) = bare_index(time::Duration::seconds(15));
    let now = OffsetDateTime::now_utc();
    for (node, cpu) in [("a", 50.0), ("b", 20.0)] {
        changes.send(RouteChange::Stream {
            node: name(node),
            stream: Some(StreamRoute {
                pushed: Arc::new(assigned(1, "smollm2", "aa")),
                endpoints: Some(Arc::new(Endpoints {
                    http_url: format!("http://{node}:1000"),
                    grpc_url: String::new(),
                })),
                certificate_expires_at: None,
            }),
        });
        changes.send(RouteChange::Observed {
            node: name(node),
            observed: Some(ObservedRoute::of(&observed("aa", AssignmentPhase::Ready))),
        });
        changes.send(RouteChange::Heartbeat {
            node: name(node),
            liveness: Some(Liveness::of(now, &sample(now, cpu))),
        });
    }
    index.apply_queued(now);
    let order = |index: &Index| -> Vec<String> {
        index
            .listing
            .offerings
            .values()
            .flat_map(|ranks| ranks.iter().map(|rank| rank.node.to_string()))
            .collect()
    };
    assert_eq!(order(&index), ["b", "a"]);
    changes.send(RouteChange::Heartbeat {
        node: name("a"),
        liveness: Some(Liveness::of(now, &sample(now, 5.0))),
    });
    index.apply_queued(now);
    assert_eq!(order(&index), ["a", "b"]);
    assert_eq!(
        listed_entry(&index, "a").expect("listed").load,
        0,
        "the entry shows the new load"
    );
    assert_eq!(index.local_routes(), walked(&index, now));
}

/// A small deterministic generator (xorshift), so that a failing
/// sequence can be replayed from its seed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.roll(from.len())].clone()
    }
}

/// The hub's directory entry for a node as the hub built it before the
/// index (a walk over every node, once a second), from what the hub
/// shows of it and the state its stream was last pushed.
fn entry_as_walked(
    node: &NodeName,
    runtime: &NodeRuntime,
    pushed: &PushedState,
    certificate_expires_at: Option<OffsetDateTime>,
    require_certificate: bool,
    now: OffsetDateTime,
) -> Option<DirectoryEntry> {
    if !runtime.connected {
        return None;
    }
    if require_certificate && certificate_expires_at.is_none_or(|at| at <= now) {
        return None;
    }
    let window = time::Duration::seconds(15);
    let recent = runtime
        .last_heartbeat_at
        .is_some_and(|at| now - at <= window);
    let observed = runtime.observed.as_ref()?;
    let endpoints = runtime.endpoints.as_ref()?;
    if !recent
        || observed.phase != AssignmentPhase::Ready
        || observed.serving_digest.is_none()
        || (endpoints.http_url.is_empty() && endpoints.grpc_url.is_empty())
    {
        return None;
    }
    if pushed.status == NodeStatus::Pending {
        return None;
    }
    let assignment = pushed.desired.assignment.as_ref()?;
    if observed.digest.as_deref() != Some(assignment.digest.as_str()) {
        return None;
    }
    let health = runtime.health.as_ref();
    let percent = health.map_or(0, |health| {
        health.cpu_utilisation_percent.clamp(0.0, 100.0) as u32
    });
    directory_entry(
        node,
        assignment,
        endpoints,
        percent - percent % LOAD_STEP,
        health
            .and_then(|health| health.inference.as_ref())
            .map_or(0, |inference| inference.queue_depth),
        health
            .and_then(|health| health.inference.as_ref())
            .map_or(0, |inference| inference.queue_capacity),
    )
}

/// Random changes to 96 nodes (more than a pool per offering), after
/// each of which the index lists what a walk over all nodes would, and
/// publishes the directory such a walk would build.
fn matches_a_walk(seed: u64, require_certificates: bool, route_queue: usize) {
    let hub = SyncHub::with_route_queue(Duration::from_secs(5), route_queue);
    hub.set_require_certificates(require_certificates);
    let mut directory = hub.subscribe_directory();
    let mut dice = Dice(seed);
    let nodes: Vec<NodeName> = (0..96).map(|n| name(&format!("n{n:02}"))).collect();
    let mut sessions: HashMap<NodeName, Session> = HashMap::new();
    let mut replaced: Vec<Session> = Vec::new();
    let mut certificates: HashMap<NodeName, OffsetDateTime> = HashMap::new();
    let mut generation = 1;
    let mut remote: Vec<DirectoryEntry> = Vec::new();
    // Biased so that many nodes stay listed, and one offering has more
    // of them than a pool holds.
    let pushed_state = |dice: &mut Dice, generation: u64| -> PushedState {
        let model = if dice.roll(5) == 0 { "beta" } else { "alpha" };
        let mut state = assigned(generation, model, "aa");
        if let Some(assignment) = &mut state.desired.assignment {
            if dice.roll(10) == 0 {
                assignment.digest = digest_of("bb").to_hex();
            }
            if dice.roll(10) == 0 {
                assignment.aliases = vec!["other".to_owned()];
            }
        }
        if dice.roll(10) == 0 {
            state.status = NodeStatus::Pending;
        }
        state
    };
    // Every node starts listed.
    for node in &nodes {
        let now = OffsetDateTime::now_utc();
        generation += 1;
        let session = hub.connect(node, assigned(generation, "alpha", "aa"));
        hub.advertise(
            node,
            Endpoints {
                http_url: format!("https://{node}:1000"),
                grpc_url: format!("https://{node}:1001"),
            },
        );
        hub.observe(node, observed("aa", AssignmentPhase::Ready));
        hub.heartbeat(node, sample(now, dice.pick(&[5.0, 12.5, 25.0])), now);
        hub.certify(&session, now + time::Duration::hours(1));
        certificates.insert(node.clone(), now + time::Duration::hours(1));
        sessions.insert(node.clone(), session);
    }
    for step in 0..3000 {
        let now = OffsetDateTime::now_utc();
        let node = dice.pick(&nodes);
        match dice.roll(20) {
            0 | 1 => {
                generation += 1;
                let session = hub.connect(&node, pushed_state(&mut dice, generation));
                certificates.remove(&node);
                if let Some(old) = sessions.insert(node.clone(), session) {
                    replaced.push(old);
                }
            }
            2 => {
                if dice.roll(3) == 0
                    && let Some(old) = replaced.pop()
                {
                    // Ended after a newer stream replaced it: no effect.
                    hub.disconnect(&old);
                } else if dice.roll(2) == 0 {
                    hub.evict(&node);
                    sessions.remove(&node);
                } else if let Some(session) = sessions.remove(&node) {
                    hub.disconnect(&session);
                }
            }
            3..=5 => {
                let port = 1000 + dice.roll(3);
                let endpoints = match dice.roll(8) {
                    0 => Endpoints::default(),
                    1 => Endpoints {
                        http_url: String::new(),
                        grpc_url: format!("https://{node}:{port}"),
                    },
                    _ => Endpoints {
                        http_url: format!("https://{node}:{port}"),
                        grpc_url: format!("https://{node}:{}", port + 1),
                    },
                };
                hub.advertise(&node, endpoints);
            }
            6..=8 => {
                let (digest, phase) = match dice.roll(8) {
                    0 => ("aa", AssignmentPhase::Loading),
                    1 => ("bb", AssignmentPhase::Ready),
                    _ => ("aa", AssignmentPhase::Ready),
                };
                hub.observe(&node, observed(digest, phase));
            }
            9..=13 => {
                let age = dice.pick(&[0, 0, 0, 3, 20]);
                let at = now - time::Duration::seconds(age);
                let mut health = sample(at, dice.pick(&[5.0, 12.5, 25.0, 37.0, 55.0]));
                if let Some(inference) = &mut health.inference {
                    inference.queue_depth = dice.pick(&[0, 1, 3]);
                }
                hub.heartbeat(&node, health, at);
            }
            14 | 15 => {
                if let Some(session) = sessions.get(&node) {
                    let valid_for = if dice.roll(6) == 0 {
                        -time::Duration::seconds(1)
                    } else {
                        time::Duration::hours(1)
                    };
                    hub.certify(session, now + valid_for);
                    certificates.insert(node.clone(), now + valid_for);
                }
            }
            16 => {
                generation += 1;
                let state = pushed_state(&mut dice, generation);
                hub.publish(&[crate::domain::NodeDesired {
                    name: node.clone(),
                    status: state.status,
                    desired: state.desired,
                }]);
            }
            _ => {
                if dice.roll(2) == 0 {
                    // A flush: reports of nodes that left are dropped.
                    drop(hub.take_dirty(|_| true));
                } else {
                    let other = dice.pick(&nodes);
                    remote.push(DirectoryEntry {
                        model: "alpha".parse().expect("valid"),
                        version: "v1".to_owned(),
                        node: other.clone(),
                        http_url: format!("https://{other}.elsewhere:1"),
                        grpc_url: String::new(),
                        load: 10 * dice.roll(6) as u32,
                        queue_depth: dice.roll(3) as u32,
                        queue_capacity: 20,
                        aliases: vec!["chat".parse().expect("valid")],
                        digest: Some(digest_of("aa")),
                        size_bytes: 1,
                        quantization: "Q4_1".to_owned(),
                    });
                    if remote.len() > 40 {
                        remote.drain(..10);
                    }
                    hub.set_remote_routes(remote.clone());
                }
            }
        }

        let local = hub.local_routes();
        let now = OffsetDateTime::now_utc();
        let mut walked: Vec<DirectoryEntry> = sessions
            .iter()
            .filter_map(|(node, session)| {
                entry_as_walked(
                    node,
                    &hub.runtime(node)?,
                    &session.desired.borrow(),
                    certificates.get(node).copied(),
                    require_certificates,
                    now,
                )
            })
            .collect();
        walked.sort();
        assert_eq!(local, walked, "seed {seed}, step {step}");
        if step % 7 == 0 {
            hub.refresh_directory();
            let expected = pool(merge_routes(walked, &remote), POOL_PER_OFFERING);
            assert_eq!(
                directory.borrow_and_update().entries,
                expected,
                "seed {seed}, step {step}"
            );
        }
    }
}

#[test]
fn the_index_lists_what_a_walk_over_every_node_would() {
    for seed in [1, 2, 3] {
        matches_a_walk(seed, false, ROUTE_CHANGES_QUEUED_AT_MOST);
        matches_a_walk(seed + 100, true, ROUTE_CHANGES_QUEUED_AT_MOST);
    }
}

#[test]
fn an_index_that_lost_changes_rebuilds_itself_from_the_streams_and_reports() {
    // A queue of 3 overflows all the time.
    matches_a_walk(7, true, 3);
    matches_a_walk(8, false, 3);
}
