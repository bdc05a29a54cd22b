//! History from another server (`Rooms::receive_history`): alice, of this
//! server, joins bob's room on remote.test after bob's messages; the
//! history remote.test serves (`/backfill`, `/state`) goes below her join,
//! `/messages` pages through both as one line, and nothing of the present
//! (membership, current state, the live stream) changes.

use std::sync::Arc;

use estuary_core::Config;
use estuary_events::builder::{BuildContext, EventRef, build_pdu};
use estuary_storage::Db;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, ServerName, UserId,
    api::client::filter::RoomEventFilter,
};
use serde_json::{Value as JsonValue, json};

use super::{CreateRoom, Direction, MessagesQuery, Preset, Received, StateAt};
use crate::Services;

fn services(dir: &tempfile::TempDir, name: &str) -> Services {
    let config = Config { server_name: name.try_into().unwrap(), ..Config::default() };
    let db = Db::open(&dir.path().join(name), &Default::default()).unwrap();
    Services::build(Arc::new(config), db).unwrap()
}

fn text(body: &str) -> estuary_events::PduTemplate {
    estuary_events::PduTemplate::message("m.room.message", json!({"msgtype": "m.text", "body": body}))
}

fn page(
    services: &Services,
    room_id: &RoomId,
    from: Option<String>,
    dir: Direction,
) -> (Vec<JsonValue>, Option<String>) {
    let alice = UserId::parse("@alice:localhost").unwrap();
    let query = MessagesQuery { from, to: None, dir, limit: 3, filter: RoomEventFilter::default() };
    let page = services.rooms.messages(&alice, None, room_id, query).unwrap();
    (page.chunk.into_iter().map(super::ClientEvent::into_json).collect(), page.end)
}

fn bodies(events: &[JsonValue]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or(e["type"].as_str().unwrap()).to_owned())
        .collect()
}

#[tokio::test]
async fn backfilled_history_goes_below_the_join_and_pages_as_one_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let (here, remote) = (services(&dir, "localhost"), services(&dir, "remote.test"));
    let (alice, bob) =
        (UserId::parse("@alice:localhost").unwrap(), UserId::parse("@bob:remote.test").unwrap());
    let create = CreateRoom { preset: Some(Preset::PublicChat), ..Default::default() };
    let room_id = remote.rooms.create_room(&bob, create).await.unwrap();
    for i in 1..=5 {
        remote.rooms.send(&room_id, &bob, text(&format!("m{i}")), None).await.unwrap();
    }
    // alice's join, signed here, on top of remote.test's room.
    let room = remote.rooms.require_room(&room_id).unwrap();
    let state = remote.rooms.current_state(&room).unwrap();
    // From room version 12 the room ID names the create event: no auth event.
    let create_is_auth = !room.room_version.rules().unwrap().authorization.room_create_event_id_as_room_id;
    let auth: Vec<OwnedEventId> = ["m.room.create", "m.room.join_rules", "m.room.power_levels"]
        .iter()
        .filter(|t| create_is_auth || **t != "m.room.create")
        .filter_map(|t| remote.rooms.state_event_id(&state, &(*t).into(), "").unwrap())
        .collect();
    let refs =
        |ids: &[OwnedEventId]| ids.iter().map(|id| EventRef { event_id: id.clone(), sha256: None }).collect();
    let join = build_pdu(
        estuary_events::PduTemplate::state("m.room.member", alice.as_str(), json!({"membership": "join"})),
        BuildContext {
            room_id: Some(&room_id),
            room_version: &room.room_version,
            sender: alice.clone(),
            prev_events: refs(&room.extremities),
            auth_events: refs(&auth),
            depth: room.depth + 1,
            origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
            server_name: "localhost".try_into().unwrap(),
            key: here.federation.client.signing_key(),
        },
    )
    .unwrap();
    let accepted = remote.rooms.receive(&room_id, vec![join.clone()], super::FanOut::None).await.unwrap();
    assert_eq!(accepted[0].1, Received::Accepted);
    let (state, chain) = remote.rooms.state_and_auth_chain(&join.event_id).unwrap();
    here.rooms.enter_remote_room(&room_id, &room.room_version, state, chain, join.clone()).await.unwrap();
    here.rooms.send(&room_id, &alice, text("after alice"), None).await.unwrap();

    // Only the join and alice's message here: history stops at the join.
    let (live, end) = page(&here, &room_id, None, Direction::Backward);
    assert_eq!(bodies(&live), ["after alice", "m.room.member"]);
    assert_eq!(end.as_deref().map(|t| t.starts_with('s')), Some(true));
    let point = here.rooms.backfill_point(&room_id).unwrap().expect("history is missing");
    assert_eq!(point.oldest, join.event_id);
    let localhost: &ServerName = "localhost".try_into().unwrap();
    let served = remote.federation.backfill(localhost, &room_id, &point.prev_events, 100).unwrap();
    let oldest = served.iter().min_by_key(|p| p.depth).unwrap().event_id.clone();
    let (state, auth_chain) = remote.rooms.state_and_auth_chain(&oldest).unwrap();
    // The create event is the oldest, with no state before it; a state
    // given for it anyway must not stand in for its empty past.
    let state_at = Some(StateAt { event_id: oldest, state, auth_chain });
    let stream_before = here.rooms.streams.current();
    let outcomes = here.rooms.receive_history(&room_id, served.clone(), state_at).await.unwrap();
    assert!(outcomes.iter().all(|(_, o)| *o == Received::Accepted), "{outcomes:?}");
    assert_eq!(here.rooms.streams.current(), stream_before, "history is not in the live stream");
    assert_eq!(here.rooms.membership(&alice, &room_id).unwrap().as_deref(), Some("join"));
    assert!(here.rooms.backfill_point(&room_id).unwrap().is_none(), "the history reaches the create event");
    // Served again: nothing new.
    let again = here.rooms.receive_history(&room_id, served, None).await.unwrap();
    assert!(again.iter().all(|(_, o)| *o == Received::Known), "{again:?}");

    // Backwards in pages of three, across the boundary, to the create event.
    let mut seen = Vec::new();
    let mut from = None;
    let mut tokens = Vec::new();
    for _ in 0..10 {
        let (chunk, end) = page(&here, &room_id, from, Direction::Backward);
        seen.extend(bodies(&chunk));
        let Some(end) = end else { break };
        tokens.push(end.clone());
        from = Some(end);
    }
    assert_eq!(seen[..7], ["after alice", "m.room.member", "m5", "m4", "m3", "m2", "m1"], "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("m.room.create"), "{seen:?}");
    assert!(tokens.iter().any(|t| t.starts_with('b')), "{tokens:?}");
    // Forwards from a token inside the history: older first, into the live timeline.
    let inside = tokens.iter().rev().find(|t| t.starts_with('b')).unwrap().clone();
    let mut forward = Vec::new();
    let mut from = Some(inside);
    for _ in 0..10 {
        let (chunk, end) = page(&here, &room_id, from, Direction::Forward);
        if chunk.is_empty() {
            break;
        }
        forward.extend(bodies(&chunk));
        from = end;
    }
    assert_eq!(forward[forward.len() - 2..], ["m.room.member", "after alice"], "{forward:?}");
    assert!(forward.windows(2).any(|w| w == ["m4", "m5"]), "{forward:?}");
}
