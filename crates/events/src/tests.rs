//! Unit tests: the spec's signing vectors, event and room IDs per room
//! version, redaction, the auth rules and state resolution on built DAGs.

use std::collections::HashMap;

use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomVersionId, ServerName, UInt,
    UserId,
    events::{StateEventType, TimelineEventType},
    signatures,
    state_res::StateMap,
};
use serde_json::json;

use crate::{
    Pdu, PduTemplate, ServerSigningKey, auth,
    builder::{BuildContext, BuildError, EventRef, build_pdu},
    resolve,
};

/// The spec's test signing key (appendices, "Cryptographic Test Vectors").
fn spec_key() -> ServerSigningKey {
    use ruma::serde::Base64;
    let seed = Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(
        "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
    )
    .unwrap()
    .into_inner();
    // PKCS#8 v1 wrapping of an ed25519 seed.
    let mut der =
        vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(&seed);
    ServerSigningKey::from_pkcs8(der, "1").unwrap()
}

fn object(value: serde_json::Value) -> CanonicalJsonObject {
    serde_json::from_value(value).unwrap()
}

#[test]
fn spec_json_signing_vector() {
    let key = spec_key();
    let mut obj = object(json!({}));
    signatures::sign_json("domain", &key.keypair, &mut obj).unwrap();
    assert_eq!(
        serde_json::to_value(&obj).unwrap()["signatures"]["domain"]["ed25519:1"],
        "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
    );
}

#[test]
fn spec_event_signing_vectors() {
    let key = spec_key();
    let rules = RoomVersionId::V1.rules().unwrap();
    let mut minimal = object(json!({
        "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain", "origin_server_ts": 1000000,
        "signatures": {}, "hashes": {}, "type": "X", "content": {}, "prev_events": [], "auth_events": [],
        "depth": 3, "unsigned": {"age_ts": 1000000}
    }));
    signatures::hash_and_sign_event("domain", &key.keypair, &mut minimal, &rules.redaction).unwrap();
    let signed = serde_json::to_value(&minimal).unwrap();
    assert_eq!(signed["hashes"]["sha256"], "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos");
    assert_eq!(
        signed["signatures"]["domain"]["ed25519:1"],
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
    );

    let mut message = object(json!({
        "content": {"body": "Here is the message content"}, "event_id": "$0:domain", "origin": "domain",
        "origin_server_ts": 1000000, "type": "m.room.message", "room_id": "!r:domain", "sender": "@u:domain",
        "signatures": {}, "unsigned": {"age_ts": 1000000}
    }));
    signatures::hash_and_sign_event("domain", &key.keypair, &mut message, &rules.redaction).unwrap();
    let signed = serde_json::to_value(&message).unwrap();
    assert_eq!(signed["hashes"]["sha256"], "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g");
    assert_eq!(
        signed["signatures"]["domain"]["ed25519:1"],
        "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
    );
}

/// A room built event by event, with its state, for tests.
struct TestRoom {
    version: RoomVersionId,
    key: ServerSigningKey,
    events: HashMap<OwnedEventId, Pdu>,
    state: StateMap<OwnedEventId>,
    room_id: Option<ruma::OwnedRoomId>,
    head: Vec<OwnedEventId>,
    depth: u64,
    ts: u64,
}

fn server() -> &'static ServerName {
    "example.org".try_into().unwrap()
}

fn user(name: &str) -> ruma::OwnedUserId {
    UserId::parse(format!("@{name}:example.org")).unwrap()
}

struct ForkPoint {
    state: StateMap<OwnedEventId>,
    head: Vec<OwnedEventId>,
    depth: u64,
    ts: u64,
}

impl TestRoom {
    /// A room created by alice, who joins; power levels give bob 50.
    fn new(version: RoomVersionId) -> Self {
        let mut room = Self {
            version: version.clone(),
            key: ServerSigningKey::generate("test").unwrap(),
            events: HashMap::new(),
            state: StateMap::new(),
            // Before v12 the creating server picks the room ID.
            room_id: (!version.rules().unwrap().authorization.room_create_event_id_as_room_id)
                .then(|| ruma::RoomId::new_v1(server())),
            head: Vec::new(),
            depth: 0,
            ts: 1_000,
        };
        let mut create = json!({"room_version": version.as_str()});
        if !version.rules().unwrap().authorization.use_room_create_sender {
            create["creator"] = json!(user("alice"));
        }
        room.send("alice", PduTemplate::state("m.room.create", "", create)).unwrap();
        room.send("alice", member("alice", "join")).unwrap();
        let mut users = json!({"@bob:example.org": 50});
        if !version.rules().unwrap().authorization.explicitly_privilege_room_creators {
            users["@alice:example.org"] = json!(100);
        }
        room.send("alice", PduTemplate::state("m.room.power_levels", "", json!({"users": users}))).unwrap();
        room.send("alice", PduTemplate::state("m.room.join_rules", "", json!({"join_rule": "public"})))
            .unwrap();
        room
    }

    /// Where a fork starts: the state, head, depth and time now.
    fn fork_point(&self) -> ForkPoint {
        ForkPoint { state: self.state.clone(), head: self.head.clone(), depth: self.depth, ts: self.ts }
    }

    /// Build from `point` again (another fork), `later` ms after it.
    fn return_to(&mut self, point: &ForkPoint, later: u64) {
        self.state = point.state.clone();
        self.head = point.head.clone();
        self.depth = point.depth;
        self.ts = point.ts + later;
    }

    fn fetch(&self) -> impl Fn(&EventId) -> Option<Pdu> + '_ {
        |id| self.events.get(id).cloned()
    }

    fn build(&self, sender: &str, template: PduTemplate) -> Result<Pdu, BuildError> {
        let rules = self.version.rules().unwrap();
        let content = serde_json::value::to_raw_value(&template.content).unwrap();
        let keys = auth::auth_types(
            &template.kind,
            &user(sender),
            template.state_key.as_deref(),
            &content,
            &rules.authorization,
        )
        .map_err(BuildError::Invalid)?;
        let auth_events =
            auth::select_auth_events(&keys, |t, k| self.state.get(&(t.clone(), k.to_owned())).cloned());
        let refs = |ids: &[OwnedEventId]| {
            ids.iter()
                .map(|id| EventRef {
                    event_id: id.clone(),
                    sha256: crate::builder::reference_hash(&self.events[id], &self.version),
                })
                .collect()
        };
        build_pdu(
            template,
            BuildContext {
                room_id: self.room_id.as_deref(),
                room_version: &self.version,
                sender: user(sender),
                prev_events: refs(&self.head),
                auth_events: refs(&auth_events),
                depth: self.depth + 1,
                origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(self.ts).unwrap()),
                server_name: server(),
                key: &self.key,
            },
        )
    }

    /// Build, authorise against current state, and apply.
    fn send(&mut self, sender: &str, template: PduTemplate) -> Result<Pdu, String> {
        let pdu = self.build(sender, template).map_err(|e| e.to_string())?;
        let rules = self.version.rules().unwrap();
        auth::check(&pdu, &rules.authorization, self.fetch(), |t, k| {
            self.state.get(&(t.clone(), k.to_owned())).and_then(|id| self.events.get(id).cloned())
        })?;
        self.apply(pdu.clone());
        Ok(pdu)
    }

    fn apply(&mut self, pdu: Pdu) {
        if self.room_id.is_none() {
            self.room_id = Some(pdu.room_id.clone());
        }
        if let Some(key) = &pdu.state_key {
            self.state.insert((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone());
        }
        self.head = vec![pdu.event_id.clone()];
        self.depth += 1;
        self.ts += 1;
        self.events.insert(pdu.event_id.clone(), pdu);
    }
}

fn member(target: &str, membership: &str) -> PduTemplate {
    PduTemplate::state("m.room.member", user(target).to_string(), json!({"membership": membership}))
}

fn message(body: &str) -> PduTemplate {
    PduTemplate::message("m.room.message", json!({"msgtype": "m.text", "body": body}))
}

#[test]
fn v12_create_event_defines_the_room_id() {
    let room = TestRoom::new(RoomVersionId::V12);
    let create_id = &room.state[&(StateEventType::RoomCreate, String::new())];
    let create = &room.events[create_id];
    let room_id = room.room_id.as_ref().unwrap();
    assert_eq!(room_id.as_str().trim_start_matches('!'), create_id.as_str().trim_start_matches('$'));
    assert!(room_id.server_name().is_none(), "v12 room IDs have no server part");
    assert!(!create.json.contains_key("room_id"));
    // Every later event names the room and verifies with our key.
    let rules = RoomVersionId::V12.rules().unwrap();
    for pdu in room.events.values() {
        let verified = signatures::verify_event(&room.key.public_key_map("example.org"), &pdu.json, &rules);
        assert!(matches!(verified, Ok(signatures::Verified::All)), "{:?}", pdu.kind);
        if pdu.kind != TimelineEventType::RoomCreate {
            assert_eq!(pdu.json["room_id"].as_str(), Some(room_id.as_str()));
            assert!(!pdu.auth_events.contains(create_id), "v12 auth events never list the create event");
        }
    }
}

#[test]
fn event_id_formats_follow_the_room_version() {
    for (version, check) in [
        (RoomVersionId::V1, "v1"),
        (RoomVersionId::V3, "v3"),
        (RoomVersionId::V4, "v4"),
        (RoomVersionId::V10, "v4"),
        (RoomVersionId::V11, "v4"),
    ] {
        let room = TestRoom::new(version.clone());
        for pdu in room.events.values() {
            let id = pdu.event_id.as_str();
            match check {
                "v1" => assert!(id.ends_with(":example.org"), "{id}"),
                "v3" => {
                    assert_eq!(id.len(), 44, "{id}");
                    assert!(!id.contains('-') && !id.contains('_'), "standard base64: {id}");
                }
                _ => {
                    assert_eq!(id.len(), 44, "{id}");
                    assert!(!id.contains('+') && !id.contains('/'), "URL-safe base64: {id}");
                }
            }
            if check != "v1" {
                let hash = signatures::reference_hash(&pdu.json, &version.rules().unwrap()).unwrap();
                assert_eq!(&id[1..], hash);
                assert!(!pdu.json.contains_key("event_id"));
            }
        }
    }
}

#[test]
fn content_hash_covers_the_content() {
    let mut room = TestRoom::new(RoomVersionId::V11);
    let pdu = room.send("alice", message("hello")).unwrap();
    let expected = signatures::content_hash(&pdu.json).unwrap().encode();
    assert_eq!(pdu.json["hashes"].as_object().unwrap()["sha256"].as_str(), Some(expected.as_str()));
    let mut tampered = pdu.json.clone();
    tampered.insert("content".into(), object(json!({"body": "evil"})).into());
    let rules = RoomVersionId::V11.rules().unwrap();
    let verified =
        signatures::verify_event(&room.key.public_key_map("example.org"), &tampered, &rules).unwrap();
    assert_eq!(verified, signatures::Verified::Signatures, "content changes break only the hash");
}

#[test]
fn oversized_events_are_refused() {
    let room = TestRoom::new(RoomVersionId::V11);
    let err = room.build("alice", message(&"x".repeat(70_000))).unwrap_err();
    assert!(matches!(err, BuildError::TooLarge), "{err}");
}

#[test]
fn redaction_follows_the_room_version() {
    for version in [RoomVersionId::V6, RoomVersionId::V9, RoomVersionId::V11] {
        let mut room = TestRoom::new(version.clone());
        let msg = room.send("alice", message("secret")).unwrap();
        let mut redaction = PduTemplate::message("m.room.redaction", json!({"reason": "oops"}));
        redaction.redacts = Some(msg.event_id.clone());
        let because = room.send("alice", redaction).unwrap();
        assert_eq!(because.redacts.as_ref(), Some(&msg.event_id));
        let redacted = msg.redact(&version, &because).unwrap();
        assert_eq!(redacted.content_value(), json!({}), "{version}");
        assert!(redacted.is_redacted());
        let unsigned = redacted.to_client_json()["unsigned"].clone();
        assert_eq!(unsigned["redacted_because"]["event_id"], because.event_id.as_str());

        // Membership keeps `membership`; v9+ also keeps join_authorised_via_users_server.
        let join = room
            .send(
                "bob",
                PduTemplate::state(
                    "m.room.member",
                    "@bob:example.org",
                    json!({"membership": "join", "displayname": "Bob", "join_authorised_via_users_server": "@alice:example.org"}),
                ),
            )
            .unwrap();
        let redacted = join.redact(&version, &because).unwrap().content_value();
        assert_eq!(redacted["membership"], "join");
        assert!(redacted.get("displayname").is_none());
        assert_eq!(redacted.get("join_authorised_via_users_server").is_some(), version != RoomVersionId::V6);

        // v11 keeps the whole create content and power levels' `invite`.
        let create = &room.events[&room.state[&(StateEventType::RoomCreate, String::new())]];
        let kept = create.redact(&version, &because).unwrap().content_value();
        assert_eq!(kept.get("room_version").is_some(), version == RoomVersionId::V11, "{version}: {kept}");
    }
}

#[test]
fn auth_rules_allow_members_and_refuse_strangers() {
    let mut room = TestRoom::new(RoomVersionId::V12);
    room.send("alice", message("hi")).unwrap();
    let err = room.send("carol", message("not a member")).unwrap_err();
    assert!(!err.is_empty());
    room.send("bob", member("bob", "join")).unwrap();
    room.send("bob", message("member now")).unwrap();
    // Bob (power 50) may not change power levels (state_default 50 but power_levels needs 100).
    let err = room
        .send(
            "bob",
            PduTemplate::state("m.room.power_levels", "", json!({"users": {"@bob:example.org": 100}})),
        )
        .unwrap_err();
    assert!(!err.is_empty());
    // Carol cannot join an invite-only room.
    room.send("alice", PduTemplate::state("m.room.join_rules", "", json!({"join_rule": "invite"}))).unwrap();
    assert!(room.send("carol", member("carol", "join")).is_err());
    room.send("alice", member("carol", "invite")).unwrap();
    room.send("carol", member("carol", "join")).unwrap();
    // Bob can kick carol (kick 50) but not alice; banned users cannot rejoin.
    assert!(room.send("bob", member("alice", "leave")).is_err());
    room.send("alice", member("carol", "ban")).unwrap();
    assert!(room.send("carol", member("carol", "join")).is_err());
}

#[test]
fn state_resolution_applies_power_changes_first() {
    for version in [RoomVersionId::V1, RoomVersionId::V10, RoomVersionId::V12] {
        let mut base = TestRoom::new(version.clone());
        base.send("bob", member("bob", "join")).unwrap();
        base.send("alice", PduTemplate::state("m.room.topic", "", json!({"topic": "base"}))).unwrap();
        let fork_point = base.fork_point();

        // Fork A: alice demotes bob.
        let mut users = json!({"@bob:example.org": 0});
        if !version.rules().unwrap().authorization.explicitly_privilege_room_creators {
            users["@alice:example.org"] = json!(100);
        }
        let demote = base
            .send("alice", PduTemplate::state("m.room.power_levels", "", json!({"users": users})))
            .unwrap();
        let state_a = base.state.clone();

        // Fork B (from the fork point, later in time): bob changes the topic.
        base.return_to(&fork_point, 10);
        let topic =
            base.send("bob", PduTemplate::state("m.room.topic", "", json!({"topic": "bob's"}))).unwrap();
        let state_b = base.state.clone();

        let resolved = resolve::resolve(&version, &[state_a, state_b], base.fetch()).unwrap();
        assert_eq!(resolved[&(StateEventType::RoomPowerLevels, String::new())], demote.event_id);
        assert_ne!(
            resolved[&(StateEventType::RoomTopic, String::new())],
            topic.event_id,
            "{version}: bob's topic fails auth against the resolved power levels"
        );
    }
}

#[test]
fn state_resolution_orders_plain_conflicts_by_time() {
    let mut base = TestRoom::new(RoomVersionId::V11);
    let fork_point = base.fork_point();
    let first = base.send("alice", PduTemplate::state("m.room.name", "", json!({"name": "first"}))).unwrap();
    let state_a = base.state.clone();
    base.return_to(&fork_point, 100);
    let later = base.send("alice", PduTemplate::state("m.room.name", "", json!({"name": "later"}))).unwrap();
    let state_b = base.state.clone();
    let resolved =
        resolve::resolve(&RoomVersionId::V11, &[state_a.clone(), state_b.clone()], base.fetch()).unwrap();
    assert_eq!(resolved[&(StateEventType::RoomName, String::new())], later.event_id);
    // The order of the inputs does not matter.
    let resolved = resolve::resolve(&RoomVersionId::V11, &[state_b, state_a], base.fetch()).unwrap();
    assert_eq!(resolved[&(StateEventType::RoomName, String::new())], later.event_id);
    assert_ne!(first.event_id, later.event_id);
}

/// Room version 1 (`resolve_v1`): a plain conflict takes the deepest event
/// that passes auth, whatever its time; a member's conflicting events are
/// replayed oldest first, so a ban after a join stands.
#[test]
fn state_resolution_v1_takes_the_deepest_event() {
    let mut base = TestRoom::new(RoomVersionId::V1);
    base.send("carol", member("carol", "join")).unwrap();
    let fork_point = base.fork_point();
    base.send("alice", PduTemplate::state("m.room.name", "", json!({"name": "a1"}))).unwrap();
    let deeper = base.send("alice", PduTemplate::state("m.room.name", "", json!({"name": "a2"}))).unwrap();
    let ban = base.send("alice", member("carol", "ban")).unwrap();
    let state_a = base.state.clone();
    base.return_to(&fork_point, 100);
    let later = base.send("alice", PduTemplate::state("m.room.name", "", json!({"name": "b"}))).unwrap();
    let state_b = base.state.clone();
    for states in [[state_a.clone(), state_b.clone()], [state_b, state_a]] {
        let resolved = resolve::resolve(&RoomVersionId::V1, &states, base.fetch()).unwrap();
        assert_eq!(resolved[&(StateEventType::RoomName, String::new())], deeper.event_id);
        assert_ne!(resolved[&(StateEventType::RoomName, String::new())], later.event_id);
        let carol = (StateEventType::RoomMember, user("carol").to_string());
        assert_eq!(resolved[&carol], ban.event_id);
    }
}

/// A PDU as another server would send it: its JSON, with an `unsigned`
/// field the receiver must ignore.
fn received(pdu: &Pdu) -> CanonicalJsonObject {
    let mut object = crate::federation::outgoing_json(pdu);
    object.insert("unsigned".into(), object_value(json!({"age": 5})));
    object
}

fn object_value(value: serde_json::Value) -> ruma::CanonicalJsonValue {
    serde_json::from_value(value).unwrap()
}

#[test]
fn received_pdus_verify_against_the_senders_key() {
    use crate::federation::{required_servers, verify};
    for version in [RoomVersionId::V1, RoomVersionId::V10, RoomVersionId::V12] {
        let mut room = TestRoom::new(version.clone());
        let pdu = room.send("alice", message("hello")).unwrap();
        let keys = room.key.public_key_map(server().as_str());
        let object = received(&pdu);
        let servers = required_servers(&object, &version).unwrap();
        assert_eq!(servers.into_iter().collect::<Vec<_>>(), vec![server().to_owned()], "{version}");
        let verified = verify(object.clone(), &version, &keys).unwrap();
        assert_eq!(verified.pdu.event_id, pdu.event_id, "{version}: the ID derives as the sender's did");
        assert!(!verified.redacted);
        assert!(!verified.pdu.json.contains_key("unsigned"), "the sender's unsigned data is dropped");

        // Another server's key does not verify it.
        let other = ServerSigningKey::generate("test").unwrap().public_key_map(server().as_str());
        assert!(verify(object.clone(), &version, &other).is_err(), "{version}: wrong key accepted");
        // Without any key for the sender's server it is refused.
        assert!(verify(object, &version, &Default::default()).is_err());
    }
}

#[test]
fn received_pdus_with_a_wrong_content_hash_are_kept_redacted() {
    use crate::federation::verify;
    let mut room = TestRoom::new(RoomVersionId::V10);
    let pdu = room.send("alice", message("original")).unwrap();
    let keys = room.key.public_key_map(server().as_str());
    let mut object = received(&pdu);
    // The content is outside the signed (redacted) form, so the signature
    // still holds but the content hash no longer matches.
    object.insert("content".into(), object_value(json!({"msgtype": "m.text", "body": "tampered"})));
    let verified = verify(object, &RoomVersionId::V10, &keys).unwrap();
    assert!(verified.redacted);
    assert_eq!(verified.pdu.event_id, pdu.event_id);
    assert_eq!(verified.pdu.content_value(), json!({}), "the tampered content is stripped");

    // A change to a signed field breaks the signature: refused.
    let mut object = received(&pdu);
    object.insert("sender".into(), "@mallory:example.org".into());
    assert!(verify(object, &RoomVersionId::V10, &keys).is_err());
}

#[test]
fn templates_signed_by_the_joining_server_get_its_signature_and_id() {
    use crate::builder::{event_object, sign_object};
    let room = TestRoom::new(RoomVersionId::V10);
    let joiner_key = ServerSigningKey::generate("j").unwrap();
    let joiner: &ServerName = "remote.test".try_into().unwrap();
    let ctx = BuildContext {
        room_id: room.room_id.as_deref(),
        room_version: &room.version,
        sender: UserId::parse("@carol:remote.test").unwrap(),
        prev_events: room.head.iter().map(|id| EventRef { event_id: id.clone(), sha256: None }).collect(),
        auth_events: Vec::new(),
        depth: room.depth + 1,
        origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(5_000).unwrap()),
        server_name: server(),
        key: &room.key,
    };
    let template = event_object(member("carol", "join"), &ctx).unwrap();
    assert!(!template.contains_key("signatures") && !template.contains_key("hashes"));
    let signed = sign_object(template, &room.version, None, joiner, &joiner_key).unwrap();
    let keys = joiner_key.public_key_map(joiner.as_str());
    let verified = crate::federation::verify(signed.json.clone(), &room.version, &keys).unwrap();
    assert_eq!(verified.pdu.event_id, signed.event_id);
    assert_eq!(Some(&signed.room_id), room.room_id.as_ref());
}

#[test]
fn x_matrix_requests_verify_only_for_their_destination() {
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    let key = ServerSigningKey::generate("k").unwrap();
    let origin = server().to_owned();
    let destination: ruma::OwnedServerName = "remote.test".try_into().unwrap();
    let request = http::Request::builder()
        .method("PUT")
        .uri("/_matrix/federation/v1/send/1")
        .body(br#"{"pdus":[]}"#.to_vec())
        .unwrap();
    let header = XMatrix::sign_http_request(
        &request,
        XMatrixSigningInput::new(origin.clone(), destination.clone(), &key.keypair),
    )
    .unwrap();
    let keys = key.public_key_map(origin.as_str());
    header.verify_http_request(&request, &destination, &keys).unwrap();
    let elsewhere: &ServerName = "third.test".try_into().unwrap();
    assert!(header.verify_http_request(&request, elsewhere, &keys).is_err(), "replayed to another server");
    let mut altered = request.clone();
    *altered.body_mut() = br#"{"pdus":[{}]}"#.to_vec();
    assert!(header.verify_http_request(&altered, &destination, &keys).is_err(), "body altered");
}
