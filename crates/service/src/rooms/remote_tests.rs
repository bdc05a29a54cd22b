//! Events from another server through `Rooms::receive`: accepted, rejected
//! (and not stored), missing `prev_events` reported, auth events from
//! another room refused, soft failure against the current state, and a
//! forked DAG resolved.

use std::sync::Arc;

use estuary_core::Config;
use estuary_events::{
    Pdu, PduTemplate, ServerSigningKey, auth,
    builder::{BuildContext, EventRef, build_pdu},
};
use estuary_storage::Db;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, ServerName, UInt,
    UserId,
};
use serde_json::json;

use super::{CreateRoom, FanOut, Preset, Received, Rooms};
use crate::Services;

struct Remote {
    key: ServerSigningKey,
    name: &'static ServerName,
    /// The last timestamp given: each event gets a later one, as on a real
    /// server, so state resolution never falls back to comparing event IDs
    /// (two events built in one millisecond would resolve at random).
    last_ts: std::sync::atomic::AtomicU64,
}

impl Remote {
    fn new() -> Self {
        Self {
            key: ServerSigningKey::generate("r").unwrap(),
            name: "remote.test".try_into().unwrap(),
            last_ts: Default::default(),
        }
    }

    fn next_ts(&self) -> u64 {
        let now = estuary_core::time::now_millis();
        let ordering = std::sync::atomic::Ordering::SeqCst;
        let previous = self.last_ts.fetch_update(ordering, ordering, |last| Some(now.max(last + 1))).unwrap();
        now.max(previous + 1)
    }

    /// bob's invite of `target` to a room of the remote server's that this
    /// server is not in.
    fn invite_elsewhere(&self, room_id: &RoomId, version: &ruma::RoomVersionId, target: &str) -> Pdu {
        let ctx = BuildContext {
            room_id: Some(room_id),
            room_version: version,
            sender: UserId::parse(BOB).unwrap(),
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            depth: 3,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(1).unwrap()),
            server_name: self.name,
            key: &self.key,
        };
        build_pdu(member(target, "invite"), ctx).unwrap()
    }

    /// An event of the remote server on top of `prev`, with auth events
    /// chosen from the room's current state here.
    fn event(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        sender: &str,
        template: PduTemplate,
        prev: &[OwnedEventId],
    ) -> Pdu {
        let room = rooms.require_room(room_id).unwrap();
        let state = rooms.current_state(&room).unwrap();
        let sender = UserId::parse(sender).unwrap();
        let rules = room.room_version.rules().unwrap();
        let content = serde_json::value::to_raw_value(&template.content).unwrap();
        let keys = auth::auth_types(
            &template.kind,
            &sender,
            template.state_key.as_deref(),
            &content,
            &rules.authorization,
        )
        .unwrap();
        let auth_events =
            auth::select_auth_events(&keys, |t, k| rooms.state_event_id(&state, t, k).ok().flatten());
        self.event_with(rooms, room_id, &sender, template, prev, &auth_events)
    }

    fn event_with(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        sender: &UserId,
        template: PduTemplate,
        prev: &[OwnedEventId],
        auth_events: &[OwnedEventId],
    ) -> Pdu {
        let room = rooms.require_room(room_id).unwrap();
        let depth =
            prev.iter().filter_map(|id| rooms.pdu(id).ok().flatten()).map(|p| p.depth).max().unwrap_or(0);
        let refs = |ids: &[OwnedEventId]| {
            ids.iter().map(|id| EventRef { event_id: id.clone(), sha256: None }).collect()
        };
        build_pdu(
            template,
            BuildContext {
                room_id: Some(room_id),
                room_version: &room.room_version,
                sender: sender.to_owned(),
                prev_events: refs(prev),
                auth_events: refs(auth_events),
                depth: depth + 1,
                origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(self.next_ts()).unwrap()),
                server_name: self.name,
                key: &self.key,
            },
        )
        .unwrap()
    }
}

const BOB: &str = "@bob:remote.test";

fn member(user: &str, membership: &str) -> PduTemplate {
    PduTemplate::state("m.room.member", user, json!({"membership": membership}))
}

fn text(body: &str) -> PduTemplate {
    PduTemplate::message("m.room.message", json!({"msgtype": "m.text", "body": body}))
}

async fn setup() -> (tempfile::TempDir, Services, OwnedRoomId, OwnedUserId) {
    setup_version(None).await
}

/// alice's public room, of `version` (the default when `None`).
async fn setup_version(
    version: Option<ruma::RoomVersionId>,
) -> (tempfile::TempDir, Services, OwnedRoomId, OwnedUserId) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), &Default::default()).unwrap();
    let services = Services::build(Arc::new(Config::default()), db).unwrap();
    let alice = UserId::parse("@alice:localhost").unwrap();
    let create = CreateRoom { preset: Some(Preset::PublicChat), room_version: version, ..Default::default() };
    let room_id = services.rooms.create_room(&alice, create).await.unwrap();
    (dir, services, room_id, alice)
}

async fn receive(rooms: &Rooms, room_id: &RoomId, pdu: Pdu) -> Received {
    let outcome = rooms.receive(room_id, vec![pdu], FanOut::None).await.unwrap();
    outcome.into_iter().next().unwrap().1
}

fn extremities(rooms: &Rooms, room_id: &RoomId) -> Vec<OwnedEventId> {
    rooms.require_room(room_id).unwrap().extremities
}

/// bob of remote.test joins through the append path; returns his join.
async fn bob_joins(rooms: &Rooms, remote: &Remote, room_id: &RoomId) -> Pdu {
    let join = remote.event(rooms, room_id, BOB, member(BOB, "join"), &extremities(rooms, room_id));
    assert_eq!(receive(rooms, room_id, join.clone()).await, Received::Accepted);
    join
}

/// bob joins and says hello; returns the hello and the state before it.
async fn bob_says_hello(rooms: &Rooms, remote: &Remote, room_id: &RoomId) -> (Pdu, Vec<Pdu>) {
    bob_joins(rooms, remote, room_id).await;
    let hello = remote.event(rooms, room_id, BOB, text("hello"), &extremities(rooms, room_id));
    assert_eq!(receive(rooms, room_id, hello.clone()).await, Received::Accepted);
    let (state, _) = rooms.state_and_auth_chain(&hello.event_id).unwrap();
    (hello, state)
}

#[tokio::test]
async fn a_remote_join_and_message_enter_the_room() {
    let (_dir, services, room_id, _) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let join = bob_joins(rooms, &remote, &room_id).await;
    let bob = UserId::parse(BOB).unwrap();
    assert!(rooms.is_joined(&bob, &room_id).unwrap());
    let message = remote.event(rooms, &room_id, BOB, text("hello"), std::slice::from_ref(&join.event_id));
    assert_eq!(receive(rooms, &room_id, message.clone()).await, Received::Accepted);
    assert_eq!(extremities(rooms, &room_id), vec![message.event_id.clone()]);
    // The same event again (a retried transaction) is known, not doubled.
    assert_eq!(receive(rooms, &room_id, message).await, Received::Known);
    assert!(rooms.check_consistency().unwrap().is_clean());
}

/// Two replies to one thread in one transaction (one commit): the thread is
/// listed once, at the second reply, and the ordered index keeps one entry.
#[tokio::test]
async fn two_thread_replies_in_one_transaction_leave_one_index_entry() {
    let (_dir, services, room_id, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    bob_joins(rooms, &remote, &room_id).await;
    let root = rooms.send(&room_id, &alice, text("root"), None).await.unwrap().event_id;
    let reply = |body: &str| {
        PduTemplate::message(
            "m.room.message",
            json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
    };
    let first = remote.event(rooms, &room_id, BOB, reply("one"), &extremities(rooms, &room_id));
    let second = remote.event(rooms, &room_id, BOB, reply("two"), std::slice::from_ref(&first.event_id));
    let outcomes = rooms.receive(&room_id, vec![first, second], FanOut::None).await.unwrap();
    assert!(outcomes.iter().all(|(_, received)| *received == Received::Accepted), "{outcomes:?}");
    let index = rooms.roomidthreadlatest_root.scan_prefix(&(room_id.to_string(),)).unwrap();
    assert_eq!(index.len(), 1, "{index:?}");
    let latest = rooms.roomidthreadroot_latest.get(&(room_id.to_string(), root.to_string())).unwrap();
    assert_eq!(Some(index[0].0.1), latest);
}

/// Events the rules refuse are kept as rejected: outside the timeline and
/// every state, no state served at them, never an auth event; an event
/// after one of them is placed with the state before it.
#[tokio::test]
async fn events_the_rules_refuse_are_kept_as_rejected() {
    let (_dir, services, room_id, _) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    // mallory never joined: her message fails auth.
    let stranger =
        remote.event(rooms, &room_id, "@mallory:remote.test", text("hi"), &extremities(rooms, &room_id));
    assert!(matches!(receive(rooms, &room_id, stranger.clone()).await, Received::Rejected(_)));
    let kept = rooms.stored(&stranger.event_id).unwrap().expect("kept as rejected");
    assert!(kept.rejected && kept.stream == 0 && kept.state_after == kept.state_before);
    // A remote user cannot set the room's name (power level 50 needed).
    bob_joins(rooms, &remote, &room_id).await;
    let state_before = rooms.require_room(&room_id).unwrap().state;
    let name = PduTemplate::state("m.room.name", "", json!({"name": "mine"}));
    let renamed = remote.event(rooms, &room_id, BOB, name, &extremities(rooms, &room_id));
    assert!(matches!(receive(rooms, &room_id, renamed.clone()).await, Received::Rejected(_)));
    assert!(rooms.stored(&renamed.event_id).unwrap().unwrap().rejected);
    assert_eq!(rooms.require_room(&room_id).unwrap().state, state_before, "the room's state is unchanged");
    let refused = services.federation.state_at(remote.name, &room_id, &renamed.event_id);
    assert_eq!(refused.unwrap_err().errcode(), "M_NOT_FOUND", "no state is served at a rejected event");
    let served = services.federation.event(remote.name, &renamed.event_id);
    assert_eq!(served.unwrap_err().errcode(), "M_NOT_FOUND", "nor the event itself");
    // bob's next message follows the rejected rename: placed, with the state without it.
    let after = remote.event(rooms, &room_id, BOB, text("oops"), std::slice::from_ref(&renamed.event_id));
    assert_eq!(receive(rooms, &room_id, after.clone()).await, Received::Accepted);
    let stored = rooms.stored(&after.event_id).unwrap().unwrap();
    let state = rooms.load_state(stored.state_after).unwrap();
    assert!(rooms.state_event_id(&state, &"m.room.name".into(), "").unwrap().is_none());
    assert_eq!(extremities(rooms, &room_id), vec![after.event_id.clone()]);
    // The rejected rename authorises nothing.
    let bob = UserId::parse(BOB).unwrap();
    let mut auth = join_auth(rooms, &rooms.pdu(&after.event_id).unwrap().unwrap());
    auth.push(renamed.event_id.clone());
    let citing =
        remote.event_with(rooms, &room_id, &bob, text("see above"), &extremities(rooms, &room_id), &auth);
    match receive(rooms, &room_id, citing).await {
        Received::Rejected(reason) => assert!(reason.contains("rejected auth event"), "{reason}"),
        other => panic!("an event citing a rejected auth event was {other:?}"),
    }
    assert!(rooms.check_consistency().unwrap().is_clean());
}

#[tokio::test]
async fn unknown_prev_events_are_reported_for_fetching() {
    let (_dir, services, room_id, _) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    bob_joins(rooms, &remote, &room_id).await;
    let unknown = EventId::parse("$notseenhere0000000000000000000000000000000").unwrap();
    let message = remote.event(rooms, &room_id, BOB, text("after a gap"), std::slice::from_ref(&unknown));
    assert_eq!(receive(rooms, &room_id, message.clone()).await, Received::MissingPrevs(vec![unknown]));
    assert!(rooms.pdu(&message.event_id).unwrap().is_none());
}

#[tokio::test]
async fn auth_events_from_another_room_are_refused() {
    let (_dir, services, room_id, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let create = CreateRoom { preset: Some(Preset::PublicChat), ..Default::default() };
    let other = rooms.create_room(&alice, create).await.unwrap();
    // A join citing the other room's join rules and power levels.
    let other_state = rooms.current_state(&rooms.require_room(&other).unwrap()).unwrap();
    let foreign: Vec<OwnedEventId> = ["m.room.join_rules", "m.room.power_levels"]
        .iter()
        .filter_map(|t| rooms.state_event_id(&other_state, &(*t).into(), "").unwrap())
        .collect();
    let bob = UserId::parse(BOB).unwrap();
    let join = remote.event_with(
        rooms,
        &room_id,
        &bob,
        member(BOB, "join"),
        &extremities(rooms, &room_id),
        &foreign,
    );
    match receive(rooms, &room_id, join).await {
        Received::Rejected(reason) => assert!(reason.contains("another room"), "{reason}"),
        other => panic!("a join citing another room's auth events was {other:?}"),
    }
    assert!(!rooms.is_joined(&bob, &room_id).unwrap());
}

#[tokio::test]
async fn an_event_valid_before_a_ban_but_not_after_is_soft_failed() {
    let (_dir, services, room_id, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let join = bob_joins(rooms, &remote, &room_id).await;
    let ban = PduTemplate::state("m.room.member", BOB, json!({"membership": "ban"}));
    rooms.send(&room_id, &alice, ban, None).await.unwrap();
    // bob's message on top of his join (before the ban): allowed by the
    // state before it, refused by the current state.
    let message = remote.event_with(
        rooms,
        &room_id,
        &UserId::parse(BOB).unwrap(),
        text("sneaking in"),
        std::slice::from_ref(&join.event_id),
        &join_auth(rooms, &join),
    );
    assert!(matches!(receive(rooms, &room_id, message.clone()).await, Received::SoftFailed(_)));
    let kept = rooms.stored(&message.event_id).unwrap().expect("kept, outside the timeline");
    assert_eq!((kept.stream, kept.rejected), (0, false), "a soft-failed event is not in the timeline");
    assert_eq!(extremities(rooms, &room_id).len(), 1, "nor a forward extremity");
    // carol's event after both branches (bob's soft-failed message and the
    // ban) is placed, with their states resolved: bob stays banned.
    let carol = UserId::parse("@carol:remote.test").unwrap();
    let before_ban = extremities(rooms, &room_id);
    let mut prevs = before_ban.clone();
    prevs.push(message.event_id.clone());
    let joined = remote.event(rooms, &room_id, carol.as_str(), member(carol.as_str(), "join"), &before_ban);
    assert_eq!(receive(rooms, &room_id, joined.clone()).await, Received::Accepted);
    let prevs = vec![joined.event_id.clone(), message.event_id.clone()];
    let after = remote.event(rooms, &room_id, carol.as_str(), text("after both"), &prevs);
    assert_eq!(receive(rooms, &room_id, after.clone()).await, Received::Accepted);
    assert!(!rooms.is_joined(&UserId::parse(BOB).unwrap(), &room_id).unwrap());
}

/// The auth events a message of bob's would cite right after his join.
fn join_auth(rooms: &Rooms, join: &Pdu) -> Vec<OwnedEventId> {
    let stored = rooms.stored(&join.event_id).unwrap().unwrap();
    let state = rooms.state.load(stored.state_after).unwrap();
    let mut ids: Vec<OwnedEventId> = ["m.room.power_levels"]
        .iter()
        .filter_map(|t| rooms.state_event_id(&state, &(*t).into(), "").unwrap())
        .collect();
    ids.push(join.event_id.clone());
    ids.sort();
    ids
}

#[tokio::test]
async fn a_fork_keeps_both_branches_and_resolves_their_state() {
    let (_dir, services, room_id, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let join = bob_joins(rooms, &remote, &room_id).await;
    // Concurrently: alice sets the topic here, bob changes his display name
    // on his server on top of his join.
    let topic = PduTemplate::state("m.room.topic", "", json!({"topic": "forks"}));
    let topic = rooms.send(&room_id, &alice, topic, None).await.unwrap();
    let rename =
        PduTemplate::state("m.room.member", BOB, json!({"membership": "join", "displayname": "Bob B"}));
    let rename = remote.event(rooms, &room_id, BOB, rename, std::slice::from_ref(&join.event_id));
    assert_eq!(receive(rooms, &room_id, rename.clone()).await, Received::Accepted);
    let mut heads = extremities(rooms, &room_id);
    heads.sort();
    let mut expected = vec![topic.event_id.clone(), rename.event_id.clone()];
    expected.sort();
    assert_eq!(heads, expected, "both branches are forward extremities");
    // The room's state holds both changes.
    let state = rooms.current_state(&rooms.require_room(&room_id).unwrap()).unwrap();
    assert_eq!(
        rooms.state_event_id(&state, &"m.room.topic".into(), "").unwrap(),
        Some(topic.event_id.clone())
    );
    assert_eq!(
        rooms.state_event_id(&state, &"m.room.member".into(), BOB).unwrap(),
        Some(rename.event_id.clone())
    );
    // The next local event joins the branches.
    let next = rooms.send(&room_id, &alice, text("merged"), None).await.unwrap();
    let mut prevs = next.prev_events.clone();
    prevs.sort();
    assert_eq!(prevs, expected);
    assert_eq!(extremities(rooms, &room_id), vec![next.event_id]);
    assert!(rooms.check_consistency().unwrap().is_clean());
}

#[tokio::test]
async fn a_server_the_acl_bans_can_neither_join_nor_send() {
    let (_dir, services, room_id, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let join = bob_joins(rooms, &remote, &room_id).await;
    let acl = PduTemplate::state("m.room.server_acl", "", json!({"allow": ["*"], "deny": ["remote.test"]}));
    rooms.send(&room_id, &alice, acl, None).await.unwrap();
    let federation = &services.federation;
    assert!(!federation.acl_allows(remote.name, &room_id).unwrap());
    assert!(federation.acl_allows("other.test".try_into().unwrap(), &room_id).unwrap());
    let carol = UserId::parse("@carol:remote.test").unwrap();
    let refused = federation.make_join(remote.name, &room_id, &carol, &[ruma::RoomVersionId::V12]);
    assert_eq!(refused.unwrap_err().errcode(), "M_FORBIDDEN");
    // Nor invite into the room (refused before its signature is even fetched).
    let invite = remote.event(
        rooms,
        &room_id,
        BOB,
        member("@dave:localhost", "invite"),
        &extremities(rooms, &room_id),
    );
    let raw = serde_json::value::to_raw_value(&estuary_events::federation::outgoing_json(&invite)).unwrap();
    let version = rooms.require_room(&room_id).unwrap().room_version;
    let refused =
        federation.receive_invite(remote.name, &room_id, &invite.event_id, &version, &raw, Vec::new()).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.errcode(), "M_FORBIDDEN");
    assert!(refused.to_string().contains("server ACL"), "refused for another reason: {refused}");
    // bob's message arrives in a transaction from the banned server: refused
    // before anything else (no key is even fetched), and the answer says so.
    let message = remote.event(rooms, &room_id, BOB, text("still here"), &extremities(rooms, &room_id));
    let raw = serde_json::value::to_raw_value(&estuary_events::federation::outgoing_json(&message)).unwrap();
    let results = federation.receive_transaction(remote.name, &[raw], &[]).await;
    let refusal = results.get(&message.event_id).expect("the PDU is answered").clone().unwrap_err();
    assert!(refusal.contains("ACL"), "{refusal}");
    assert!(rooms.pdu(&message.event_id).unwrap().is_none());
    assert!(rooms.stored(&join.event_id).unwrap().is_some());
}

#[tokio::test]
async fn history_hidden_from_a_server_is_served_redacted() {
    let (_dir, services, room_id, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let joined_only =
        PduTemplate::state("m.room.history_visibility", "", json!({"history_visibility": "joined"}));
    rooms.send(&room_id, &alice, joined_only, None).await.unwrap();
    let before = rooms.send(&room_id, &alice, text("before bob"), None).await.unwrap();
    bob_joins(rooms, &remote, &room_id).await;
    let after = rooms.send(&room_id, &alice, text("after bob"), None).await.unwrap();
    let federation = &services.federation;
    let hidden = federation.event(remote.name, &before.event_id).unwrap();
    assert_eq!(hidden.event_id, before.event_id);
    assert_eq!(hidden.content_value(), json!({}), "sent before remote.test's users joined: redacted");
    let shown = federation.event(remote.name, &after.event_id).unwrap();
    assert_eq!(shown.content_value()["body"], "after bob");
    let page = federation.backfill(remote.name, &room_id, std::slice::from_ref(&after.event_id), 10).unwrap();
    let body_of =
        |id: &EventId| page.iter().find(|p| p.event_id == id).map(|p| p.content_value()["body"].clone());
    assert_eq!(body_of(&after.event_id), Some(json!("after bob")));
    assert_eq!(body_of(&before.event_id), Some(serde_json::Value::Null), "backfill redacts it too");
}

#[tokio::test]
async fn event_auth_serves_the_auth_chain_to_servers_in_the_room() {
    let (_dir, services, room_id, _) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let join = bob_joins(rooms, &remote, &room_id).await;
    let chain = services.federation.event_auth_chain(remote.name, &room_id, &join.event_id).unwrap();
    let kinds: Vec<String> = chain.iter().map(|p| p.kind.to_string()).collect();
    for kind in ["m.room.create", "m.room.join_rules", "m.room.power_levels"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
    }
    assert!(!chain.iter().any(|p| p.event_id == join.event_id), "the event itself is not its own auth");
    let stranger: &ServerName = "elsewhere.test".try_into().unwrap();
    assert!(services.federation.event_auth_chain(stranger, &room_id, &join.event_id).is_err());
}

/// An invite from another server to a bridge's user, for a room this
/// server is not in (kept as a stub, outside the append path), still
/// reaches the bridge, with the room's stripped state; an invite of
/// another user does not.
#[tokio::test]
async fn a_remote_invite_to_a_bridge_user_is_queued_for_the_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let registration = dir.path().join("bridge.yaml");
    let yaml = "id: bridge\nurl: http://127.0.0.1:9\nas_token: a\nhs_token: h\nsender_localpart: bridgebot\n\
                namespaces:\n  users:\n    - exclusive: true\n      regex: \"@bridge_.*:localhost\"\n";
    std::fs::write(&registration, yaml).unwrap();
    let config = Config { appservice_registrations: vec![registration], ..Config::default() };
    let db = Db::open(&dir.path().join("db"), &Default::default()).unwrap();
    let services = Services::build(Arc::new(config), db).unwrap();
    let remote = Remote::new();
    let room_id = RoomId::parse("!elsewhere:remote.test").unwrap();
    let version = ruma::RoomVersionId::V10;
    let invite = |target: &str| remote.invite_elsewhere(&room_id, &version, target);
    let stripped = vec![json!({"type": "m.room.name", "state_key": "", "content": {"name": "Elsewhere"}})];
    let rooms = &services.rooms;
    rooms.store_invite_stub(invite("@alice:localhost"), version.clone(), stripped.clone()).await.unwrap();
    assert!(services.outgoing.jobs_for("as bridge").unwrap().is_empty());
    let ghost_invite = invite("@bridge_ghost:localhost");
    rooms.store_invite_stub(ghost_invite.clone(), version, stripped).await.unwrap();
    let jobs = services.outgoing.jobs_for("as bridge").unwrap();
    let [crate::outgoing::Job::AppserviceEvent { as_event }] = jobs.as_slice() else { panic!("{jobs:?}") };
    assert_eq!(as_event["event_id"], ghost_invite.event_id.as_str());
    assert_eq!(as_event["state_key"], "@bridge_ghost:localhost");
    assert_eq!(as_event["unsigned"]["invite_room_state"][0]["content"]["name"], "Elsewhere");
}

/// Declining an invite to a room on a server that cannot be reached (here:
/// federation off) still declines it here: a leave built after the invite
/// takes its place, and the user's sync lists the room under `leave` with
/// that leave, once.
#[tokio::test]
async fn a_declined_remote_invite_shows_as_left_even_when_its_server_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { allow_federation: false, ..Config::default() };
    let db = Db::open(&dir.path().join("db"), &Default::default()).unwrap();
    let services = Services::build(Arc::new(config), db).unwrap();
    let (rooms, remote) = (&services.rooms, Remote::new());
    let alice = UserId::parse("@alice:localhost").unwrap();
    let room_id = RoomId::parse("!elsewhere:remote.test").unwrap();
    let version = ruma::RoomVersionId::V10;
    let invite = remote.invite_elsewhere(&room_id, &version, alice.as_str());
    rooms.store_invite_stub(invite.clone(), version, Vec::new()).await.unwrap();
    let sync = |since: Option<String>| {
        let request = crate::sync::SyncRequest {
            since,
            filter: Default::default(),
            full_state: false,
            timeout: std::time::Duration::ZERO,
            use_state_after: false,
            set_presence: "offline".into(),
        };
        async {
            serde_json::to_value(services.sync.sync(&alice, None, request).await?)
                .map_err(estuary_core::Error::internal)
        }
    };
    let first = sync(None).await.unwrap();
    assert!(first["rooms"]["invite"][room_id.as_str()].is_object(), "{first}");

    services.federation.decline_remote_membership(&room_id, &alice, Some("no thanks".into())).await.unwrap();
    assert_eq!(rooms.membership(&alice, &room_id).unwrap().as_deref(), Some("leave"));
    assert!(rooms.invite_stub(&alice, &room_id).unwrap().is_none(), "the invite is gone");
    let second = sync(first["next_batch"].as_str().map(str::to_owned)).await.unwrap();
    assert!(second["rooms"]["invite"].as_object().unwrap().is_empty(), "{second}");
    let events = &second["rooms"]["leave"][room_id.as_str()]["timeline"]["events"];
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{second}");
    let leave = &events[0];
    assert_eq!(
        (leave["type"].as_str(), leave["state_key"].as_str()),
        (Some("m.room.member"), Some(alice.as_str()))
    );
    assert_eq!(leave["content"], json!({"membership": "leave", "reason": "no thanks"}));
    let stored = rooms.pdu(&EventId::parse(leave["event_id"].as_str().unwrap()).unwrap()).unwrap().unwrap();
    assert_eq!(stored.prev_events, vec![invite.event_id.clone()], "the leave follows the invite");
    let third = sync(second["next_batch"].as_str().map(str::to_owned)).await.unwrap();
    assert!(third["rooms"]["leave"].as_object().unwrap().is_empty(), "shown once: {third}");
    // Declining again: there is no invite any more.
    let again = services.federation.decline_remote_membership(&room_id, &alice, None).await;
    assert_eq!(again.unwrap_err().errcode(), "M_NOT_FOUND");
}

/// A gap `/get_missing_events` did not fill: bob's profile change Y never
/// reached this server, and his message X follows it. With the state
/// before Y (as the remote server gives it) X is placed, and the room's
/// state takes Y in through resolution.
#[tokio::test]
async fn an_event_after_an_unfilled_gap_is_placed_with_the_state_given_for_it() {
    let (_dir, services, room_id, _) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    // hello is a message: the state before it is the state before Y too.
    let (hello, state_before_y) = bob_says_hello(rooms, &remote, &room_id).await;
    let renamed =
        PduTemplate::state("m.room.member", BOB, json!({"membership": "join", "displayname": "Bobby"}));
    let y = remote.event(rooms, &room_id, BOB, renamed, std::slice::from_ref(&hello.event_id));
    let x = remote.event(rooms, &room_id, BOB, text("after the gap"), std::slice::from_ref(&y.event_id));
    assert_eq!(receive(rooms, &room_id, x.clone()).await, Received::MissingPrevs(vec![y.event_id.clone()]));

    let prevs = vec![super::PrevWithState { prev: y.clone(), state: state_before_y }];
    assert_eq!(rooms.receive_across_gap(&room_id, x.clone(), prevs).await.unwrap(), Received::Accepted);
    assert_eq!(extremities(rooms, &room_id), vec![x.event_id.clone()]);
    let state = rooms.current_state(&rooms.require_room(&room_id).unwrap()).unwrap();
    let member = rooms.state_pdu(&state, &"m.room.member".into(), BOB).unwrap().unwrap();
    assert_eq!(member.event_id, y.event_id, "the missing event's state is the room's now");
    let kept = rooms.stored(&y.event_id).unwrap().unwrap();
    assert_eq!(kept.stream, 0, "the missing event itself stays outside the timeline");
    assert!(kept.state_from_peer, "its state is the other server's word: never served as the room's");
    assert!(rooms.check_consistency().unwrap().is_clean());
}

/// `/timestamp_to_event` for a server in the room: the closest event
/// before or after a time; a server with no member is refused.
#[tokio::test]
async fn timestamp_to_event_answers_servers_in_the_room() {
    let (_dir, services, room_id, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    bob_joins(rooms, &remote, &room_id).await;
    let message = rooms.send(&room_id, &alice, text("now"), None).await.unwrap();
    let ts = u64::from(message.origin_server_ts.0);
    let federation = &services.federation;
    let (found, found_ts) =
        federation.event_at_timestamp(remote.name, &room_id, ts + 1, super::Direction::Backward).unwrap();
    assert_eq!((found, found_ts), (message.event_id.clone(), ts));
    let after = federation.event_at_timestamp(remote.name, &room_id, ts + 1, super::Direction::Forward);
    assert_eq!(after.unwrap_err().errcode(), "M_NOT_FOUND", "nothing after the last event");
    let stranger: &ServerName = "elsewhere.test".try_into().unwrap();
    assert!(federation.event_at_timestamp(stranger, &room_id, ts, super::Direction::Backward).is_err());
}

/// A knock on a room of another server shows in the knocker's sync with the
/// stripped state that server answered, and is retracted with a leave.
#[tokio::test]
async fn a_knock_on_a_remote_room_shows_in_sync_and_is_retracted_with_a_leave() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { allow_federation: false, ..Config::default() };
    let db = Db::open(&dir.path().join("db"), &Default::default()).unwrap();
    let services = Services::build(Arc::new(config), db).unwrap();
    let alice = UserId::parse("@alice:localhost").unwrap();
    let room_id = RoomId::parse("!elsewhere:remote.test").unwrap();
    let version = ruma::RoomVersionId::V10;
    let ctx = BuildContext {
        room_id: Some(&room_id),
        room_version: &version,
        sender: alice.clone(),
        prev_events: Vec::new(),
        auth_events: Vec::new(),
        depth: 4,
        origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
        server_name: "localhost".try_into().unwrap(),
        key: services.federation.client.signing_key(),
    };
    let knock = build_pdu(member(alice.as_str(), "knock"), ctx).unwrap();
    let stripped = vec![json!({"type": "m.room.name", "state_key": "", "content": {"name": "Knock here"}})];
    let via: ruma::OwnedServerName = "remote.test".try_into().unwrap();
    services.rooms.store_knock(knock, version, stripped, via).await.unwrap();
    let request = || crate::sync::SyncRequest {
        since: None,
        filter: Default::default(),
        full_state: false,
        timeout: std::time::Duration::ZERO,
        use_state_after: false,
        set_presence: "offline".into(),
    };
    let first = serde_json::to_value(services.sync.sync(&alice, None, request()).await.unwrap()).unwrap();
    let knock_state = &first["rooms"]["knock"][room_id.as_str()]["knock_state"]["events"];
    assert!(knock_state.as_array().unwrap().iter().any(|e| e["content"]["name"] == "Knock here"), "{first}");
    services.federation.decline_remote_membership(&room_id, &alice, None).await.unwrap();
    assert_eq!(services.rooms.membership(&alice, &room_id).unwrap().as_deref(), Some("leave"));
    assert!(services.rooms.pending_out_of_band(&alice, &room_id).unwrap().is_none());
}

/// An invite of another server's user is not queued for that server (it
/// countersigned the invite and is not in the room); rescinding the invite
/// is, so the invitee's server hears of it.
#[tokio::test]
async fn an_invite_is_not_resent_to_the_invitees_server_but_its_rescinding_is() {
    let (_dir, services, room_id, alice) = setup().await;
    let rooms = &services.rooms;
    let dave = UserId::parse("@dave:remote.test").unwrap();
    let template = rooms.invite_template(&dave, None, false).unwrap();
    let countersigned = |pdu: Pdu, _, _| async move { Ok(pdu.json) };
    rooms.invite_remote(&room_id, &alice, template, countersigned).await.unwrap();
    let destination = crate::outgoing::server_destination("remote.test".try_into().unwrap());
    assert!(services.outgoing.jobs_for(&destination).unwrap().is_empty());
    rooms.kick(&room_id, &alice, &dave, None).await.unwrap();
    assert_eq!(services.outgoing.jobs_for(&destination).unwrap().len(), 1, "the rescinded invite is sent");
}

/// A remote user's cached devices answer key queries; when they leave and
/// join again (their server sent no updates meanwhile) the cache is dropped
/// so it is fetched anew, and room-mates see them in `device_lists.changed`
/// even though they are joined at both ends of the window.
#[tokio::test]
async fn a_remote_rejoin_drops_cached_devices_and_shows_in_device_lists() {
    let (_dir, services, room_id, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let join = bob_joins(rooms, &remote, &room_id).await;
    let bob = UserId::parse(BOB).unwrap();
    let keys = json!({"user_id": BOB, "device_id": "PHONE", "keys": {"ed25519:PHONE": "k"}});
    let list = crate::e2ee::RemoteDeviceList {
        stream_id: 4,
        devices: [("PHONE".to_owned(), keys.clone())].into(),
        ..Default::default()
    };
    services.e2ee.store_remote_device_list(&bob, Some(&list)).unwrap();
    let answer = services.e2ee.query(&alice, vec![(bob.clone(), Vec::new())]).unwrap();
    assert_eq!(answer["device_keys"][BOB]["PHONE"], keys);

    // A message changes nothing; a leave and a rejoin drop the cache.
    let message = remote.event(rooms, &room_id, BOB, text("hi"), std::slice::from_ref(&join.event_id));
    assert_eq!(receive(rooms, &room_id, message.clone()).await, Received::Accepted);
    assert!(services.e2ee.remote_device_list(&bob).unwrap().is_some());
    let since = services.streams.current();
    let leave =
        remote.event(rooms, &room_id, BOB, member(BOB, "leave"), std::slice::from_ref(&message.event_id));
    assert_eq!(receive(rooms, &room_id, leave.clone()).await, Received::Accepted);
    let rejoin =
        remote.event(rooms, &room_id, BOB, member(BOB, "join"), std::slice::from_ref(&leave.event_id));
    assert_eq!(receive(rooms, &room_id, rejoin).await, Received::Accepted);
    assert_eq!(services.e2ee.remote_device_list(&bob).unwrap(), None);
    let (changed, left) = services.sync.key_changes(&alice, since, services.streams.current()).unwrap();
    assert_eq!((changed, left), (vec![BOB.to_owned()], Vec::<String>::new()));
}

/// A redaction whose target is an event of another room is refused: no
/// server may redact across rooms, whatever the rules say of the redaction.
#[tokio::test]
async fn a_redaction_of_another_rooms_event_is_refused() {
    let (_dir, services, room_a, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let create = CreateRoom { preset: Some(Preset::PublicChat), ..Default::default() };
    let room_b = rooms.create_room(&alice, create).await.unwrap();
    let join_a = bob_joins(rooms, &remote, &room_a).await;
    bob_joins(rooms, &remote, &room_b).await;
    let message = remote.event(rooms, &room_a, BOB, text("mine"), std::slice::from_ref(&join_a.event_id));
    assert_eq!(receive(rooms, &room_a, message.clone()).await, Received::Accepted);
    let mut redaction = PduTemplate::message("m.room.redaction", json!({"redacts": message.event_id}));
    redaction.redacts = Some(message.event_id.clone());
    let redaction = remote.event(rooms, &room_b, BOB, redaction, &extremities(rooms, &room_b));
    let outcome = receive(rooms, &room_b, redaction).await;
    assert!(matches!(&outcome, Received::Rejected(r) if r.contains("another room")), "{outcome:?}");
    let kept = rooms.pdu(&message.event_id).unwrap().unwrap();
    assert_eq!(kept.content_value()["body"], "mine", "the target is untouched");
}

/// Auth events fetched from another server (`/event_auth`) are kept as
/// outliers when their own auth events allow them; one they do not allow,
/// and one of another room, are not kept.
#[tokio::test]
async fn fetched_auth_events_are_kept_as_outliers_when_their_auth_events_allow_them() {
    let (_dir, services, room_id, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let create = CreateRoom { preset: Some(Preset::PublicChat), ..Default::default() };
    let other_room = rooms.create_room(&alice, create).await.unwrap();
    let join = remote.event(rooms, &room_id, BOB, member(BOB, "join"), &extremities(rooms, &room_id));
    // bob's message before any join of his: his auth events do not allow it.
    let unjoined = remote.event(rooms, &room_id, BOB, text("early"), &extremities(rooms, &room_id));
    let elsewhere =
        remote.event(rooms, &other_room, BOB, member(BOB, "join"), &extremities(rooms, &other_room));
    let ids = [join.event_id.clone(), unjoined.event_id.clone(), elsewhere.event_id.clone()];
    assert_eq!(rooms.unknown_events(&ids).unwrap(), ids.to_vec());

    rooms.receive_auth_chain(&room_id, vec![unjoined, elsewhere, join.clone()]).await.unwrap();
    assert_eq!(rooms.unknown_events(&ids).unwrap(), ids[1..].to_vec(), "only the join is kept");
    let stored = rooms.stored(&join.event_id).unwrap().unwrap();
    assert_eq!((stored.stream, stored.state_after), (0, 0), "an outlier: no place in the timeline");
    let bob = UserId::parse(BOB).unwrap();
    assert!(!rooms.is_joined(&bob, &room_id).unwrap(), "an outlier changes no membership");
}

/// An event before a gap is placed with the state the other server gave
/// for it, but only if that state and its own auth events allow it: a
/// refused one changes no state for what follows.
#[tokio::test]
async fn an_event_before_a_gap_that_the_rules_refuse_changes_no_state() {
    let (_dir, services, room_id, _) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    // hello is a message: the state before it is the state before Y too.
    let (hello, state_before_y) = bob_says_hello(rooms, &remote, &room_id).await;
    // carol is no member: her topic is not allowed.
    let topic = PduTemplate::state("m.room.topic", "", json!({"topic": "forged"}));
    let y = remote.event(rooms, &room_id, "@carol:remote.test", topic, std::slice::from_ref(&hello.event_id));
    let x = remote.event(rooms, &room_id, BOB, text("after the gap"), std::slice::from_ref(&y.event_id));
    let prevs = vec![super::PrevWithState { prev: y.clone(), state: state_before_y }];
    assert_eq!(rooms.receive_across_gap(&room_id, x.clone(), prevs).await.unwrap(), Received::Accepted);
    let state = rooms.current_state(&rooms.require_room(&room_id).unwrap()).unwrap();
    let topic = rooms.state_pdu(&state, &"m.room.topic".into(), "").unwrap();
    assert!(topic.is_none_or(|t| t.event_id != y.event_id), "the refused event's state is not taken");
    assert!(rooms.stored(&y.event_id).unwrap().unwrap().rejected);
    assert!(rooms.check_consistency().unwrap().is_clean());
}

/// An event whose `prev_events` are one known event and one before a gap:
/// its state resolves both, so state only the given side holds (a key
/// this server never saw, read back before the batch commits) is the
/// room's after it. In room version 1 (v1 resolution) and the default.
#[tokio::test]
async fn a_gap_beside_a_known_event_resolves_both_states() {
    for version in [Some(ruma::RoomVersionId::V1), None] {
        let (_dir, services, room_id, _) = setup_version(version).await;
        let (rooms, remote) = (&services.rooms, Remote::new());
        let (hello, mut state_before_y) = bob_says_hello(rooms, &remote, &room_id).await;
        let t = PduTemplate::state("m.room.topic", "", json!({"topic": "given"}));
        let t = remote.event(rooms, &room_id, "@alice:localhost", t, std::slice::from_ref(&hello.event_id));
        state_before_y.push(t.clone());
        let renamed =
            PduTemplate::state("m.room.member", BOB, json!({"membership": "join", "displayname": "Bobby"}));
        let y = remote.event(rooms, &room_id, BOB, renamed, std::slice::from_ref(&hello.event_id));
        let prevs_of_x = [hello.event_id.clone(), y.event_id.clone()];
        let x = remote.event(rooms, &room_id, BOB, text("after the gap"), &prevs_of_x);
        let prevs = vec![super::PrevWithState { prev: y.clone(), state: state_before_y }];
        assert_eq!(rooms.receive_across_gap(&room_id, x.clone(), prevs).await.unwrap(), Received::Accepted);
        let state = rooms.current_state(&rooms.require_room(&room_id).unwrap()).unwrap();
        let topic = rooms.state_pdu(&state, &"m.room.topic".into(), "").unwrap().map(|p| p.event_id);
        assert_eq!(topic, Some(t.event_id.clone()), "the given state's topic");
        let member = rooms.state_pdu(&state, &"m.room.member".into(), BOB).unwrap().unwrap();
        assert_eq!(member.event_id, y.event_id);
        assert!(rooms.check_consistency().unwrap().is_clean());
    }
}

/// A state given for an event before a gap that slips in a forged power
/// level (bob, who has none, gives himself 100 and alice 0): its own auth
/// events refuse it, so the power levels it claimed to replace stand. In
/// a room of version 1, whose state resolution never checks an event
/// against its auth events, the forgery would otherwise win.
#[tokio::test]
async fn a_forged_power_level_in_a_given_state_counts_for_nothing() {
    // The forgery's auth events: the room's own (refused by them), or one
    // made up that is unknown here (it cannot be judged, and still counts
    // for nothing: the room's power levels stand).
    for made_up_auth_event in [false, true] {
        let (_dir, services, room_id, alice) = setup_version(Some(ruma::RoomVersionId::V1)).await;
        let (rooms, remote) = (&services.rooms, Remote::new());
        let (hello, mut state_before_y) = bob_says_hello(rooms, &remote, &room_id).await;
        let current = || rooms.current_state(&rooms.require_room(&room_id).unwrap()).unwrap();
        let real_power = rooms.state_pdu(&current(), &"m.room.power_levels".into(), "").unwrap().unwrap();
        let forged =
            PduTemplate::state("m.room.power_levels", "", json!({"users": {BOB: 100, alice.as_str(): 0}}));
        let forged = if made_up_auth_event {
            let bob = UserId::parse(BOB).unwrap();
            let unknown = OwnedEventId::try_from("$made-up:remote.test").unwrap();
            let create = rooms.state_event_id(&current(), &"m.room.create".into(), "").unwrap().unwrap();
            let prev = std::slice::from_ref(&hello.event_id);
            remote.event_with(rooms, &room_id, &bob, forged, prev, &[create, unknown])
        } else {
            remote.event(rooms, &room_id, BOB, forged, std::slice::from_ref(&hello.event_id))
        };
        state_before_y.retain(|pdu| pdu.event_id != real_power.event_id);
        state_before_y.push(forged.clone());
        let y =
            remote.event(rooms, &room_id, BOB, text("before the gap"), std::slice::from_ref(&hello.event_id));
        let x = remote.event(rooms, &room_id, BOB, text("after the gap"), std::slice::from_ref(&y.event_id));
        let prevs = vec![super::PrevWithState { prev: y.clone(), state: state_before_y }];
        assert_eq!(rooms.receive_across_gap(&room_id, x.clone(), prevs).await.unwrap(), Received::Accepted);
        let power = rooms.state_pdu(&current(), &"m.room.power_levels".into(), "").unwrap().unwrap();
        assert_eq!(power.event_id, real_power.event_id, "the forged power levels never count");
        assert!(rooms.check_consistency().unwrap().is_clean());
    }
}

/// Another server's user who is in a room a restricted room allows gets a
/// `make_join` template vouched for by one of our members who may invite,
/// and that join is accepted; one in no allowed room is refused a template.
#[tokio::test]
async fn a_restricted_room_admits_a_remote_member_of_an_allowed_room() {
    let (_dir, services, allowed_room, alice) = setup().await;
    let (rooms, remote) = (&services.rooms, Remote::new());
    let create = CreateRoom { preset: Some(Preset::PrivateChat), ..Default::default() };
    let restricted = rooms.create_room(&alice, create).await.unwrap();
    let rule =
        json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": allowed_room}]});
    rooms.send(&restricted, &alice, PduTemplate::state("m.room.join_rules", "", rule), None).await.unwrap();
    let bob = UserId::parse(BOB).unwrap();
    let refused = rooms.make_membership(&restricted, &bob, "join");
    assert!(refused.is_err(), "bob is in no allowed room yet");

    bob_joins(rooms, &remote, &allowed_room).await;
    let (_, template) = rooms.make_membership(&restricted, &bob, "join").unwrap();
    let content = template["content"].as_object().unwrap();
    assert_eq!(content["join_authorised_via_users_server"].as_str(), Some(alice.as_str()));
    let join = PduTemplate::state(
        "m.room.member",
        BOB,
        json!({"membership": "join", "join_authorised_via_users_server": alice}),
    );
    let join = remote.event(rooms, &restricted, BOB, join, &extremities(rooms, &restricted));
    assert_eq!(receive(rooms, &restricted, join).await, Received::Accepted);
    assert!(rooms.is_joined(&bob, &restricted).unwrap());
}

/// A change of another server's user's cached devices reaches a bridge that
/// sees them (MSC3202 device lists), as our own users' changes do.
#[tokio::test]
async fn a_remote_users_device_change_reaches_a_bridge_in_their_room() {
    let dir = tempfile::tempdir().unwrap();
    let registration = dir.path().join("bridge.yaml");
    let yaml = "id: bridge\nurl: http://127.0.0.1:9\nas_token: a\nhs_token: h\nsender_localpart: bridgebot\n\
                org.matrix.msc3202: true\nnamespaces:\n  users:\n    - exclusive: true\n      regex: \"@bridge_.*:localhost\"\n";
    std::fs::write(&registration, yaml).unwrap();
    let config = Config { appservice_registrations: vec![registration], ..Config::default() };
    let db = Db::open(&dir.path().join("db"), &Default::default()).unwrap();
    let services = Services::build(Arc::new(config), db).unwrap();
    let (rooms, remote) = (&services.rooms, Remote::new());
    let ghost = UserId::parse("@bridge_ghost:localhost").unwrap();
    let create = CreateRoom { preset: Some(Preset::PublicChat), ..Default::default() };
    let room_id = rooms.create_room(&ghost, create).await.unwrap();
    bob_joins(rooms, &remote, &room_id).await;
    let bob = UserId::parse(BOB).unwrap();
    services.e2ee.store_remote_device_list(&bob, Some(&Default::default())).unwrap();
    let jobs = services.outgoing.jobs_for("as bridge").unwrap();
    let told = jobs.iter().any(|job| {
        matches!(job, crate::outgoing::Job::AppserviceDeviceList { as_device_list_changed } if *as_device_list_changed == bob)
    });
    assert!(told, "{jobs:?}");
}

/// `/hierarchy` for another server: an unknown room and a private room
/// its users are not in are 404; a public space is served with the child
/// it may see and, by ID only, the one it may not.
#[tokio::test]
async fn a_space_is_served_to_servers_as_they_may_see_it() {
    let (_dir, services, public_child, alice) = setup().await;
    let rooms = &services.rooms;
    let private = CreateRoom { preset: Some(Preset::PrivateChat), ..Default::default() };
    let private_child = rooms.create_room(&alice, private.clone()).await.unwrap();
    let mut space = CreateRoom { preset: Some(Preset::PublicChat), ..Default::default() };
    space.creation_content = json!({"type": "m.space"}).as_object().cloned();
    let space = rooms.create_room(&alice, space).await.unwrap();
    for child in [&public_child, &private_child] {
        let content = json!({"via": ["localhost"]});
        rooms
            .send(&space, &alice, PduTemplate::state("m.space.child", child.as_str(), content), None)
            .await
            .unwrap();
    }
    let origin: &ServerName = "remote.test".try_into().unwrap();
    let federation = &services.federation;
    let unknown = RoomId::parse("!unknown:localhost").unwrap();
    for hidden in [&unknown, &private_child] {
        let refused = federation.serve_hierarchy(origin, hidden, false).unwrap_err();
        assert_eq!(refused.errcode(), "M_NOT_FOUND", "{hidden}");
    }
    let (room, children, inaccessible) = federation.serve_hierarchy(origin, &space, false).unwrap();
    assert_eq!(room["room_type"], "m.space");
    assert_eq!(room["children_state"].as_array().unwrap().len(), 2);
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["room_id"], public_child.as_str());
    assert_eq!(inaccessible, vec![private_child]);
}
