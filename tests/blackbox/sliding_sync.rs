//! Simplified sliding sync (MSC4186,
//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`):
//! lists ordered by `bump_stamp` with ranges, counts and filters; each
//! room's required state (wildcards, `$ME`, `$LAZY`, deltas), timeline and
//! counts; invites, leaves and kicks; room subscriptions; positions (replay,
//! unknown, long-polling); the extensions (to-device, E2EE, account data,
//! receipts, typing); bad input.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    harness::{PASSWORD, TestServer, User, assert_error, encode, password_auth},
    rooms::{create_room, send_text},
};

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

fn sliding_path(pos: Option<&str>, timeout_ms: Option<u64>) -> String {
    let mut query = Vec::new();
    if let Some(pos) = pos {
        query.push(format!("pos={}", encode(pos)));
    }
    if let Some(timeout) = timeout_ms {
        query.push(format!("timeout={timeout}"));
    }
    if query.is_empty() { SLIDING.to_owned() } else { format!("{SLIDING}?{}", query.join("&")) }
}

async fn sliding_status(
    server: &TestServer,
    user: &User,
    pos: Option<&str>,
    timeout_ms: Option<u64>,
    body: Value,
) -> (StatusCode, Value) {
    server.post(&sliding_path(pos, timeout_ms), Some(&user.token), body).await
}

async fn sliding(
    server: &TestServer,
    user: &User,
    pos: Option<&str>,
    timeout_ms: Option<u64>,
    body: Value,
) -> Value {
    let (status, response) = sliding_status(server, user, pos, timeout_ms, body).await;
    assert_eq!(status, 200, "{response}");
    response
}

/// A request on connection `conn_id` with one list, `all`, over `[0, end]`.
fn one_list(conn_id: &str, end: u64, required_state: Value, timeline_limit: u64) -> Value {
    json!({"conn_id": conn_id, "lists": {"all": {
        "ranges": [[0, end]], "required_state": required_state, "timeline_limit": timeline_limit
    }}})
}

#[track_caller]
fn pos(body: &Value) -> String {
    body["pos"].as_str().unwrap_or_else(|| panic!("no pos: {body}")).to_owned()
}

#[track_caller]
fn count(body: &Value, list: &str) -> u64 {
    body["lists"][list]["count"].as_u64().unwrap_or_else(|| panic!("no count for {list}: {body}"))
}

/// The IDs of the rooms in an answer, sorted.
fn room_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> =
        body["rooms"].as_object().map(|rooms| rooms.keys().cloned().collect()).unwrap_or_default();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// The bodies of the messages in a room's timeline, oldest first.
fn bodies(room: &Value) -> Vec<&str> {
    room["timeline"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["content"]["body"].as_str()).collect())
        .unwrap_or_default()
}

fn pair(kind: &str, state_key: &str) -> (String, String) {
    (kind.to_owned(), state_key.to_owned())
}

/// (type, state key) of each event of a list, sorted.
fn state_pairs(events: &Value) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = events
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| pair(e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    pairs
}

fn required(room: &Value) -> Vec<(String, String)> {
    state_pairs(&room["required_state"])
}

/// The user's membership according to the member event in `required_state`.
fn own_membership<'a>(room: &'a Value, user: &User) -> Option<&'a str> {
    let events = room["required_state"].as_array()?;
    let member =
        events.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == user.user_id.as_str())?;
    member["content"]["membership"].as_str()
}

fn is_initial(room: &Value) -> bool {
    room["initial"] == true
}

async fn join(server: &TestServer, user: &User, room: &str) {
    let (status, body) =
        server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&user.token), json!({})).await;
    assert_eq!(status, 200, "join {room}: {body}");
}

async fn send_event(
    server: &TestServer,
    user: &User,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}");
    let (status, body) = server.put(&path, Some(&user.token), content).await;
    assert_eq!(status, 200, "send {kind}: {body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn set_state(server: &TestServer, user: &User, room: &str, kind: &str, content: Value) {
    let path = format!("/_matrix/client/v3/rooms/{room}/state/{kind}");
    let (status, body) = server.put(&path, Some(&user.token), content).await;
    assert_eq!(status, 200, "set {kind}: {body}");
}

async fn put_ok(server: &TestServer, user: &User, path: &str, content: Value) {
    let (status, body) = server.put(path, Some(&user.token), content).await;
    assert_eq!(status, 200, "PUT {path}: {body}");
}

async fn post_ok(server: &TestServer, user: &User, path: &str, content: Value) {
    let (status, body) = server.post(path, Some(&user.token), content).await;
    assert_eq!(status, 200, "POST {path}: {body}");
}

/// The room at `index` of the user's rooms, on a new connection.
async fn room_at(server: &TestServer, user: &User, index: u64) -> String {
    let body =
        json!({"conn_id": "probe", "lists": {"one": {"ranges": [[index, index]], "timeline_limit": 0}}});
    let response = sliding(server, user, None, None, body).await;
    let rooms = room_ids(&response);
    assert_eq!(rooms.len(), 1, "one room at {index}: {response}");
    rooms[0].clone()
}

/// The user's `n` rooms in list order, probed one range at a time, checked
/// against the `bump_stamp`s of one answer over them all.
async fn list_order(server: &TestServer, user: &User, n: u64) -> Vec<String> {
    let mut order = Vec::new();
    for index in 0..n {
        order.push(room_at(server, user, index).await);
    }
    let body = json!({"conn_id": "probe", "lists": {"all": {"ranges": [[0, n - 1]], "timeline_limit": 0}}});
    let all = sliding(server, user, None, None, body).await;
    assert_eq!(count(&all, "all"), n, "{all}");
    let mut by_stamp: Vec<(u64, String)> = all["rooms"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, room)| {
            let stamp = room["bump_stamp"].as_u64().unwrap_or_else(|| panic!("bump_stamp of {id}: {all}"));
            (stamp, id.clone())
        })
        .collect();
    by_stamp.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let by_stamp: Vec<String> = by_stamp.into_iter().map(|(_, id)| id).collect();
    assert_eq!(by_stamp, order, "list order is bump_stamp order, newest first: {all}");
    order
}

fn device_keys(user: &User) -> Value {
    json!({
        "user_id": user.user_id, "device_id": user.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {format!("curve25519:{}", user.device_id): "curvekey", format!("ed25519:{}", user.device_id): "edkey"},
        "signatures": {user.user_id.clone(): {format!("ed25519:{}", user.device_id): "sig"}}
    })
}

/// `/versions` advertises it; malformed requests and missing tokens are refused.
#[tokio::test]
async fn sliding_is_advertised_and_rejects_bad_input() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, versions) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    assert_eq!(versions["unstable_features"]["org.matrix.simplified_msc3575"], true, "{versions}");

    let path = sliding_path(None, None);
    assert_error(
        &server.raw(Method::POST, &path, Some(&alice.token), b"{not json".to_vec()).await,
        400,
        "M_NOT_JSON",
    );
    for body in [
        json!({"conn_id": "c", "lists": {"all": {"timeline_limit": 1}}}),
        json!({"conn_id": "c", "lists": {"all": {"ranges": [[0, 9]]}}}),
        json!({"conn_id": "c", "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": "ten"}}}),
        json!({"conn_id": "c", "lists": {"all": {"ranges": "0-9", "timeline_limit": 1}}}),
    ] {
        let result = server.post(&path, Some(&alice.token), body.clone()).await;
        assert_error(&result, 400, "M_BAD_JSON");
    }
    assert_error(&server.post(&path, None, json!({})).await, 401, "M_MISSING_TOKEN");
    // The same request, well formed, is fine.
    let ok = sliding(&server, &alice, None, None, one_list("c", 9, json!([]), 1)).await;
    assert_eq!(count(&ok, "all"), 0);
    assert!(ok["pos"].is_string(), "{ok}");
}

/// Rooms are listed newest first; `count` counts them all, inclusive
/// `ranges` pick which are sent; `txn_id` is echoed.
#[tokio::test]
async fn sliding_lists_are_ordered_by_recency_with_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let a = create_room(&server, &alice, json!({"name": "A"})).await;
    let b = create_room(&server, &alice, json!({"name": "B"})).await;
    let c = create_room(&server, &alice, json!({"name": "C"})).await;

    let top = json!({"conn_id": "top", "txn_id": "t1", "lists": {"top": {"ranges": [[0, 0]], "timeline_limit": 1}}});
    let first = sliding(&server, &alice, None, None, top.clone()).await;
    assert_eq!(first["txn_id"], "t1", "{first}");
    assert_eq!(count(&first, "top"), 3, "count covers rooms outside the range: {first}");
    assert_eq!(room_ids(&first), std::slice::from_ref(&c), "only the newest room is in [0, 0]: {first}");
    assert!(is_initial(&first["rooms"][&c]), "{first}");

    let rest = json!({"conn_id": "rest", "lists": {"rest": {"ranges": [[1, 2]], "timeline_limit": 1}}});
    let second = sliding(&server, &alice, None, None, rest).await;
    assert!(second.get("txn_id").is_none(), "no txn_id sent, none echoed: {second}");
    assert_eq!(count(&second, "rest"), 3);
    assert_eq!(room_ids(&second), sorted(vec![a.clone(), b.clone()]), "ranges are inclusive: {second}");

    let all = sliding(&server, &alice, None, None, one_list("all", 9, json!([]), 1)).await;
    assert_eq!(count(&all, "all"), 3);
    let stamp =
        |id: &String| all["rooms"][id]["bump_stamp"].as_u64().unwrap_or_else(|| panic!("{id}: {all}"));
    assert!(stamp(&c) > stamp(&b) && stamp(&b) > stamp(&a), "newest first: {all}");

    // A message moves A to the top: the [0, 0] connection now gets A.
    send_text(&server, &alice, &a, "m1", "A is back").await;
    let moved = sliding(&server, &alice, Some(&pos(&first)), Some(0), top.clone()).await;
    assert_eq!(count(&moved, "top"), 3);
    assert_eq!(room_ids(&moved), std::slice::from_ref(&a), "{moved}");
    let entry = &moved["rooms"][&a];
    assert!(is_initial(entry), "first time on this connection: {entry}");
    assert_eq!(bodies(entry), ["A is back"], "{entry}");
    assert!(entry["bump_stamp"].as_u64().unwrap() > stamp(&c), "{moved}");

    let quiet = sliding(&server, &alice, Some(&pos(&moved)), Some(0), top).await;
    assert_eq!(room_ids(&quiet), Vec::<String>::new(), "nothing new: {quiet}");
    assert_eq!(count(&quiet, "top"), 3);
}

/// Messages, encrypted events and the user's own join bump a room;
/// reactions, redactions, receipts, other state and others' joins do not.
#[tokio::test]
async fn sliding_bumping_and_non_bumping_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let d = create_room(&server, &bob, json!({"preset": "public_chat", "name": "D"})).await;
    let a = create_room(&server, &alice, json!({"preset": "public_chat", "name": "A"})).await;
    let b = create_room(&server, &alice, json!({"preset": "public_chat", "name": "B"})).await;
    let c = create_room(&server, &alice, json!({"preset": "public_chat", "name": "C"})).await;
    let named = [("A", &a), ("B", &b), ("C", &c), ("D", &d)];
    let labels = |order: Vec<String>| -> Vec<String> {
        let name = |id: &String| named.iter().find(|(_, room)| *room == id).map_or("?", |(label, _)| *label);
        order.iter().map(|id| name(id).to_owned()).collect()
    };
    assert_eq!(labels(list_order(&server, &alice, 3).await), ["C", "B", "A"], "creation bumps");

    let (_, sent) = send_text(&server, &alice, &b, "b1", "target").await;
    let target = sent["event_id"].as_str().unwrap().to_owned();
    send_text(&server, &alice, &a, "a1", "hello").await;
    assert_eq!(labels(list_order(&server, &alice, 3).await), ["A", "B", "C"], "messages bump");

    let reaction = send_event(
        &server,
        &alice,
        &b,
        "m.reaction",
        "r1",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "👍"}}),
    )
    .await;
    put_ok(&server, &alice, &format!("/_matrix/client/v3/rooms/{b}/redact/{reaction}/x1"), json!({})).await;
    post_ok(&server, &alice, &format!("/_matrix/client/v3/rooms/{b}/receipt/m.read/{target}"), json!({}))
        .await;
    set_state(&server, &alice, &b, "m.room.topic", json!({"topic": "not a bump"})).await;
    join(&server, &bob, &b).await;
    assert_eq!(
        labels(list_order(&server, &alice, 3).await),
        ["A", "B", "C"],
        "a reaction, a redaction, a receipt, a topic and another's join do not bump"
    );

    let encrypted = json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "sender_key": "key",
                           "device_id": "DEV", "session_id": "session"});
    send_event(&server, &alice, &c, "m.room.encrypted", "e1", encrypted).await;
    assert_eq!(labels(list_order(&server, &alice, 3).await), ["C", "A", "B"], "encrypted events bump");

    join(&server, &alice, &d).await;
    assert_eq!(
        labels(list_order(&server, &alice, 4).await),
        ["D", "C", "A", "B"],
        "the user's own join bumps"
    );
}

/// `is_dm`, `is_encrypted`, `is_invite`, `room_types` and `not_room_types`.
#[tokio::test]
async fn sliding_filters() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let plain = create_room(&server, &alice, json!({"name": "Plain"})).await;
    let encrypted = create_room(
        &server,
        &alice,
        json!({"initial_state": [{"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    )
    .await;
    let space = create_room(&server, &alice, json!({"creation_content": {"type": "m.space"}})).await;
    let dm = create_room(&server, &alice, json!({"invite": [bob.user_id], "is_direct": true})).await;
    put_ok(
        &server,
        &alice,
        "/_matrix/client/v3/user/@alice:localhost/account_data/m.direct",
        json!({"@bob:localhost": [dm]}),
    )
    .await;
    let invite = create_room(&server, &bob, json!({"invite": [alice.user_id]})).await;

    let everything = sliding(&server, &alice, None, None, one_list("f", 9, json!([]), 0)).await;
    assert_eq!(count(&everything, "all"), 5, "{everything}");
    assert_eq!(
        room_ids(&everything),
        sorted(vec![plain.clone(), encrypted.clone(), space.clone(), dm.clone(), invite.clone()])
    );
    assert_eq!(everything["rooms"][&dm]["is_dm"], true, "{everything}");
    assert_eq!(everything["rooms"][&plain]["is_dm"], false, "{everything}");

    let cases = [
        (json!({"is_dm": true}), vec![&dm]),
        (json!({"is_dm": false}), vec![&plain, &encrypted, &space, &invite]),
        (json!({"is_encrypted": true}), vec![&encrypted]),
        (json!({"is_encrypted": false}), vec![&plain, &space, &dm, &invite]),
        (json!({"is_invite": true}), vec![&invite]),
        (json!({"is_invite": false}), vec![&plain, &encrypted, &space, &dm]),
        (json!({"room_types": ["m.space"]}), vec![&space]),
        (json!({"not_room_types": ["m.space"]}), vec![&plain, &encrypted, &dm, &invite]),
        (json!({"room_types": [null]}), vec![&plain, &encrypted, &dm, &invite]),
        (json!({"is_invite": false, "not_room_types": ["m.space"]}), vec![&plain, &encrypted, &dm]),
    ];
    for (filters, expected) in cases {
        let body = json!({"conn_id": "f", "lists": {"filtered": {
            "ranges": [[0, 9]], "timeline_limit": 0, "filters": filters
        }}});
        let response = sliding(&server, &alice, None, None, body).await;
        let expected = sorted(expected.into_iter().cloned().collect());
        assert_eq!(count(&response, "filtered"), expected.len() as u64, "count with {filters}: {response}");
        assert_eq!(room_ids(&response), expected, "rooms with {filters}: {response}");
    }
}

/// A room's first appearance: `initial`, names or heroes, member counts,
/// timeline with `limited`, `bump_stamp` and unread counts; later, only
/// what is new, with `num_live`.
#[tokio::test]
async fn sliding_room_fields_names_heroes_and_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    put_ok(
        &server,
        &bob,
        "/_matrix/client/v3/profile/@bob:localhost/displayname",
        json!({"displayname": "Bob"}),
    )
    .await;
    let unnamed = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let named = create_room(
        &server,
        &alice,
        json!({"preset": "public_chat", "name": "Named", "invite": [carol.user_id]}),
    )
    .await;
    join(&server, &bob, &unnamed).await;
    join(&server, &bob, &named).await;

    let body = one_list("main", 9, json!([]), 3);
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    assert_eq!(count(&first, "all"), 2, "{first}");
    for room in [&unnamed, &named] {
        let entry = &first["rooms"][room];
        assert!(is_initial(entry), "{entry}");
        assert_eq!(entry["is_dm"], false, "{entry}");
        assert!(entry["bump_stamp"].is_u64(), "{entry}");
        assert_eq!(entry["timeline"].as_array().map(Vec::len), Some(3), "timeline_limit 3: {entry}");
        assert_eq!(entry["limited"], true, "more than 3 events: {entry}");
        assert!(entry["num_live"].is_u64(), "{entry}");
        assert_eq!(
            (entry["notification_count"].as_u64(), entry["highlight_count"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(entry["joined_count"], 2, "{entry}");
    }
    let named_entry = &first["rooms"][&named];
    assert_eq!(named_entry["name"], "Named", "{named_entry}");
    assert_eq!(named_entry["invited_count"], 1, "{named_entry}");
    assert!(named_entry.get("heroes").is_none(), "a named room has no heroes: {named_entry}");
    let unnamed_entry = &first["rooms"][&unnamed];
    assert!(unnamed_entry.get("name").is_none(), "{unnamed_entry}");
    assert_eq!(unnamed_entry["invited_count"], 0, "{unnamed_entry}");
    assert_eq!(
        unnamed_entry["heroes"],
        json!([{"user_id": "@bob:localhost", "displayname": "Bob"}]),
        "heroes for an unnamed room: {unnamed_entry}"
    );

    send_text(&server, &bob, &unnamed, "hi", "hi alice").await;
    let next = sliding(&server, &alice, Some(&pos(&first)), Some(0), body).await;
    assert_eq!(room_ids(&next), std::slice::from_ref(&unnamed), "only the room with news: {next}");
    let entry = &next["rooms"][&unnamed];
    assert!(!is_initial(entry), "{entry}");
    assert_eq!(bodies(entry), ["hi alice"], "{entry}");
    assert_eq!(entry["timeline"].as_array().unwrap().len(), 1, "only the new event: {entry}");
    assert_eq!(entry["limited"], false, "{entry}");
    assert_eq!(entry["num_live"], 1, "{entry}");
    assert!(
        entry["bump_stamp"].as_u64().unwrap() > unnamed_entry["bump_stamp"].as_u64().unwrap(),
        "the message bumped the room: {entry}"
    );
}

/// `required_state`: exact pairs, `*` for types and state keys, `$ME`, and
/// `$LAZY` members (each sender's member event once per connection).
#[tokio::test]
async fn sliding_required_state_wildcards_me_and_lazy() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room =
        create_room(&server, &alice, json!({"preset": "public_chat", "name": "Wild", "topic": "Cards"}))
            .await;
    join(&server, &bob, &room).await;
    join(&server, &carol, &room).await;
    send_text(&server, &bob, &room, "b1", "bob speaks").await;

    let (status, state) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&alice.token)).await;
    assert_eq!(status, 200, "{state}");
    let all = state_pairs(&state);
    let empty_keys: Vec<(String, String)> = all.iter().filter(|(_, key)| key.is_empty()).cloned().collect();
    let member = |user: &User| pair("m.room.member", &user.user_id);
    let cases = [
        (json!([["m.room.name", ""]]), vec![pair("m.room.name", "")]),
        (
            json!([["m.room.name", ""], ["m.room.topic", ""]]),
            vec![pair("m.room.name", ""), pair("m.room.topic", "")],
        ),
        (json!([["*", "*"]]), all.clone()),
        (json!([["*", ""]]), empty_keys),
        (json!([["m.room.member", "*"]]), vec![member(&alice), member(&bob), member(&carol)]),
        (json!([["m.room.member", "$ME"]]), vec![member(&alice)]),
        (
            json!([["m.room.topic", ""], ["m.room.member", "$ME"]]),
            vec![member(&alice), pair("m.room.topic", "")],
        ),
        (json!([["org.example.absent", ""]]), vec![]),
    ];
    for (wanted, expected) in cases {
        let response = sliding(&server, &alice, None, None, one_list("rs", 0, wanted.clone(), 1)).await;
        let entry = &response["rooms"][&room];
        assert_eq!(required(entry), expected, "required_state {wanted}: {entry}");
    }

    // `$LAZY`: the timeline's senders only, each once per connection.
    let lazy = one_list("lazy", 0, json!([["m.room.member", "$LAZY"]]), 1);
    let first = sliding(&server, &alice, None, None, lazy.clone()).await;
    let entry = &first["rooms"][&room];
    assert_eq!(bodies(entry), ["bob speaks"], "{entry}");
    assert_eq!(required(entry), [member(&bob)], "the sender's member event: {entry}");
    send_text(&server, &bob, &room, "b2", "bob again").await;
    let second = sliding(&server, &alice, Some(&pos(&first)), Some(0), lazy.clone()).await;
    let entry = &second["rooms"][&room];
    assert_eq!(bodies(entry), ["bob again"], "{entry}");
    assert_eq!(
        required(entry),
        Vec::<(String, String)>::new(),
        "bob's member event was sent already: {entry}"
    );
    send_text(&server, &carol, &room, "c1", "carol speaks").await;
    let third = sliding(&server, &alice, Some(&pos(&second)), Some(0), lazy).await;
    let entry = &third["rooms"][&room];
    assert_eq!(bodies(entry), ["carol speaks"], "{entry}");
    assert_eq!(required(entry), [member(&carol)], "a new sender's member event: {entry}");
}

/// After the first answer, `required_state` holds only the wanted state
/// that changed; other state changes show in the timeline only.
#[tokio::test]
async fn sliding_required_state_deltas() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({"name": "One", "topic": "First topic"})).await;
    let body = one_list("main", 0, json!([["m.room.name", ""], ["m.room.power_levels", ""]]), 5);
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    let entry = &first["rooms"][&room];
    assert_eq!(required(entry), [pair("m.room.name", ""), pair("m.room.power_levels", "")], "{entry}");
    assert_eq!(entry["name"], "One", "{entry}");

    set_state(&server, &alice, &room, "m.room.name", json!({"name": "Two"})).await;
    let renamed = sliding(&server, &alice, Some(&pos(&first)), Some(0), body.clone()).await;
    let entry = &renamed["rooms"][&room];
    assert!(!is_initial(entry), "{entry}");
    assert_eq!(required(entry), [pair("m.room.name", "")], "only the changed state: {entry}");
    assert_eq!(entry["required_state"][0]["content"]["name"], "Two", "{entry}");
    assert_eq!(entry["name"], "Two", "{entry}");

    set_state(&server, &alice, &room, "m.room.topic", json!({"topic": "Second topic"})).await;
    let topic = sliding(&server, &alice, Some(&pos(&renamed)), Some(0), body.clone()).await;
    let entry = &topic["rooms"][&room];
    assert_eq!(required(entry), Vec::<(String, String)>::new(), "the topic is not required state: {entry}");
    let timeline = entry["timeline"].as_array().unwrap();
    assert!(
        timeline.iter().any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "Second topic"),
        "the topic change is in the timeline: {entry}"
    );

    let quiet = sliding(&server, &alice, Some(&pos(&topic)), Some(0), body).await;
    assert_eq!(room_ids(&quiet), Vec::<String>::new(), "{quiet}");
}

/// A position can be used twice with the same answer; unknown or garbage
/// positions, another connection's or user's, and a deleted device's are
/// refused with `M_UNKNOWN_POS`.
#[tokio::test]
async fn sliding_pos_replay_and_unknown_pos() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({})).await;
    let body = one_list("main", 9, json!([]), 5);
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    let p1 = pos(&first);

    send_text(&server, &alice, &room, "m1", "again and again").await;
    let second = sliding(&server, &alice, Some(&p1), Some(0), body.clone()).await;
    assert_eq!(bodies(&second["rooms"][&room]), ["again and again"], "{second}");
    let replay = sliding(&server, &alice, Some(&p1), Some(0), body.clone()).await;
    assert_eq!(room_ids(&replay), room_ids(&second), "{replay}");
    assert_eq!(
        bodies(&replay["rooms"][&room]),
        ["again and again"],
        "the replay has the message too: {replay}"
    );
    let after = sliding(&server, &alice, Some(&pos(&replay)), Some(0), body.clone()).await;
    assert_eq!(room_ids(&after), Vec::<String>::new(), "{after}");
    let p_after = pos(&after);

    for bad in ["garbage", "999999999999999"] {
        let result = sliding_status(&server, &alice, Some(bad), Some(0), body.clone()).await;
        assert_error(&result, 400, "M_UNKNOWN_POS");
    }
    let other_conn =
        sliding_status(&server, &alice, Some(&p_after), Some(0), one_list("other", 9, json!([]), 5)).await;
    assert_error(&other_conn, 400, "M_UNKNOWN_POS");
    let other_user = sliding_status(&server, &bob, Some(&p_after), Some(0), body.clone()).await;
    assert_error(&other_user, 400, "M_UNKNOWN_POS");
    // Still known to its own connection.
    sliding(&server, &alice, Some(&p_after), Some(0), body.clone()).await;

    // A deleted device's connections go with it, even if a device of the
    // same ID comes back.
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                       "password": PASSWORD, "device_id": "PHONE"});
    let (status, phone) = server.post("/_matrix/client/v3/login", None, login.clone()).await;
    assert_eq!(status, 200, "{phone}");
    let phone = User {
        user_id: alice.user_id.clone(),
        token: phone["access_token"].as_str().unwrap().to_owned(),
        device_id: "PHONE".to_owned(),
    };
    let phone_pos = pos(&sliding(&server, &phone, None, None, body.clone()).await);
    sliding(&server, &phone, Some(&phone_pos), Some(0), body.clone()).await;
    let device = "/_matrix/client/v3/devices/PHONE";
    let (status, challenge) = server.delete_with_body(device, &alice.token, json!({})).await;
    assert_eq!(status, 401, "{challenge}");
    let auth = json!({"auth": password_auth(&alice.user_id, challenge["session"].as_str())});
    let (status, deleted) = server.delete_with_body(device, &alice.token, auth).await;
    assert_eq!(status, 200, "{deleted}");
    let (status, again) = server.post("/_matrix/client/v3/login", None, login).await;
    assert_eq!(status, 200, "{again}");
    let phone_again = User { token: again["access_token"].as_str().unwrap().to_owned(), ..phone };
    let result = sliding_status(&server, &phone_again, Some(&phone_pos), Some(0), body).await;
    assert_error(&result, 400, "M_UNKNOWN_POS");
}

/// A new connection and `timeout=0` answer at once; a waiting request
/// wakes on a message; with nothing to report the timeout is honoured.
#[tokio::test]
async fn sliding_timeout_zero_and_long_poll() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    join(&server, &bob, &room).await;
    let body = one_list("main", 9, json!([]), 5);

    let started = Instant::now();
    let first = sliding(&server, &alice, None, Some(20_000), body.clone()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a new connection waits for nothing: {:?}",
        started.elapsed()
    );
    assert!(first["rooms"].get(&room).is_some(), "{first}");
    let started = Instant::now();
    let quiet = sliding(&server, &alice, Some(&pos(&first)), Some(0), body.clone()).await;
    assert!(started.elapsed() < Duration::from_secs(5), "timeout=0 answers at once: {:?}", started.elapsed());
    assert_eq!(room_ids(&quiet), Vec::<String>::new(), "{quiet}");

    let url = format!("{}{}", server.base, sliding_path(Some(&pos(&quiet)), Some(10_000)));
    let http = server.http().clone();
    let token = alice.token.clone();
    let request = body.clone();
    let waiting = tokio::spawn(async move {
        let response = http.post(url).bearer_auth(token).json(&request).send().await.unwrap();
        let status = response.status();
        (status, Instant::now(), response.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the request waits while nothing happens");
    let (status, _) = send_text(&server, &bob, &room, "wake", "wake up").await;
    assert_eq!(status, 200);
    let sent = Instant::now();
    let (status, arrived, woken) =
        tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the request answered").unwrap();
    assert_eq!(status, 200, "{woken}");
    let delay = arrived.saturating_duration_since(sent);
    assert!(delay < Duration::from_secs(5), "woke after {delay:?}");
    assert_eq!(bodies(&woken["rooms"][&room]), ["wake up"], "{woken}");

    let started = Instant::now();
    let empty = sliding(&server, &alice, Some(&pos(&woken)), Some(300), body).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "returned early: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "returned late: {elapsed:?}");
    assert_eq!(room_ids(&empty), Vec::<String>::new(), "{empty}");
    assert!(empty["pos"].is_string(), "{empty}");
}

/// An invite is listed with its stripped state and no timeline; once
/// joined, the room is sent again from scratch with its timeline.
#[tokio::test]
async fn sliding_invites_then_joins() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    create_room(&server, &alice, json!({"name": "Own"})).await;
    let body = one_list("main", 9, json!([["m.room.name", ""]]), 5);
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    assert_eq!(count(&first, "all"), 1, "{first}");

    let party = create_room(&server, &bob, json!({"name": "Party", "invite": [alice.user_id]})).await;
    let invited = sliding(&server, &alice, Some(&pos(&first)), Some(0), body.clone()).await;
    assert_eq!(count(&invited, "all"), 2, "the invite counts: {invited}");
    assert_eq!(room_ids(&invited), std::slice::from_ref(&party), "{invited}");
    let entry = &invited["rooms"][&party];
    assert!(is_initial(entry), "{entry}");
    assert!(entry["bump_stamp"].is_u64(), "{entry}");
    assert_eq!(entry["name"], "Party", "{entry}");
    assert!(
        entry.get("timeline").is_none_or(|t| t.as_array().is_some_and(Vec::is_empty)),
        "no timeline for an invite: {entry}"
    );
    let stripped = entry["invite_state"].as_array().unwrap_or_else(|| panic!("invite_state: {entry}"));
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == alice.user_id.as_str()
            && e["content"]["membership"] == "invite"),
        "the invite itself: {entry}"
    );
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Party"),
        "the room's name: {entry}"
    );

    let quiet = sliding(&server, &alice, Some(&pos(&invited)), Some(0), body.clone()).await;
    assert_eq!(room_ids(&quiet), Vec::<String>::new(), "the invite is not sent twice: {quiet}");

    join(&server, &alice, &party).await;
    let joined = sliding(&server, &alice, Some(&pos(&quiet)), Some(0), body).await;
    assert_eq!(count(&joined, "all"), 2, "{joined}");
    let entry = &joined["rooms"][&party];
    assert!(is_initial(entry), "joining starts the room over: {entry}");
    assert!(entry.get("invite_state").is_none(), "{entry}");
    let last =
        entry["timeline"].as_array().and_then(|t| t.last()).unwrap_or_else(|| panic!("timeline: {entry}"));
    assert_eq!(
        (last["type"].as_str(), last["state_key"].as_str(), last["content"]["membership"].as_str()),
        (Some("m.room.member"), Some(alice.user_id.as_str()), Some("join")),
        "{entry}"
    );
    assert!(required(entry).contains(&pair("m.room.name", "")), "{entry}");
}

/// A room the user leaves is sent once more (with their leave) and then
/// drops out of the lists; rooms they were kicked or banned from stay.
#[tokio::test]
async fn sliding_leaves_kicks_and_bans() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let stay = create_room(&server, &alice, json!({"name": "Stay"})).await;
    let left = create_room(&server, &alice, json!({"preset": "public_chat", "name": "Left"})).await;
    let kicked = create_room(&server, &bob, json!({"preset": "public_chat", "name": "Kicked"})).await;
    let banned = create_room(&server, &bob, json!({"preset": "public_chat", "name": "Banned"})).await;
    join(&server, &alice, &kicked).await;
    join(&server, &alice, &banned).await;
    let body = one_list("main", 9, json!([["m.room.name", ""]]), 5);
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    assert_eq!(count(&first, "all"), 4, "{first}");

    post_ok(&server, &alice, &format!("/_matrix/client/v3/rooms/{left}/leave"), json!({})).await;
    let leaving = sliding(&server, &alice, Some(&pos(&first)), Some(0), body.clone()).await;
    assert_eq!(room_ids(&leaving), std::slice::from_ref(&left), "{leaving}");
    assert_eq!(count(&leaving, "all"), 4, "listed once more: {leaving}");
    assert_eq!(own_membership(&leaving["rooms"][&left], &alice), Some("leave"), "{leaving}");
    let gone = sliding(&server, &alice, Some(&pos(&leaving)), Some(0), body.clone()).await;
    assert_eq!(count(&gone, "all"), 3, "then no longer listed: {gone}");
    assert!(gone["rooms"].get(&left).is_none(), "{gone}");
    let fresh = sliding(&server, &alice, None, None, one_list("fresh", 9, json!([]), 1)).await;
    assert_eq!(count(&fresh, "all"), 3, "a new connection does not list it: {fresh}");
    assert!(fresh["rooms"].get(&left).is_none(), "{fresh}");

    post_ok(
        &server,
        &bob,
        &format!("/_matrix/client/v3/rooms/{kicked}/kick"),
        json!({"user_id": alice.user_id}),
    )
    .await;
    post_ok(
        &server,
        &bob,
        &format!("/_matrix/client/v3/rooms/{banned}/ban"),
        json!({"user_id": alice.user_id}),
    )
    .await;
    let removed = sliding(&server, &alice, Some(&pos(&gone)), Some(0), body.clone()).await;
    assert_eq!(room_ids(&removed), sorted(vec![kicked.clone(), banned.clone()]), "{removed}");
    assert_eq!(own_membership(&removed["rooms"][&kicked], &alice), Some("leave"), "{removed}");
    assert_eq!(own_membership(&removed["rooms"][&banned], &alice), Some("ban"), "{removed}");
    assert_eq!(count(&removed, "all"), 3, "{removed}");
    let later = sliding(&server, &alice, Some(&pos(&removed)), Some(0), body.clone()).await;
    assert_eq!(count(&later, "all"), 3, "kicked and banned rooms stay listed: {later}");
    assert_eq!(room_ids(&later), Vec::<String>::new(), "{later}");
    let fresh = sliding(&server, &alice, None, None, one_list("fresh", 9, json!([]), 1)).await;
    assert_eq!(count(&fresh, "all"), 3, "{fresh}");
    assert_eq!(room_ids(&fresh), sorted(vec![stay, kicked, banned]), "{fresh}");

    // Rejoining the room she left, she gets it whole again.
    join(&server, &alice, &left).await;
    let rejoined = sliding(&server, &alice, Some(&pos(&later)), Some(0), body).await;
    assert_eq!(count(&rejoined, "all"), 4, "{rejoined}");
    let room = &rejoined["rooms"][&left];
    assert_eq!(room["initial"], true, "a rejoined room starts over: {rejoined}");
    assert_eq!(own_membership(room, &alice), Some("join"), "{rejoined}");
}

/// A subscribed room outside every range is sent with the subscription's
/// settings; subscriptions to rooms the user is not in are ignored.
#[tokio::test]
async fn sliding_room_subscriptions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = create_room(&server, &alice, json!({"name": "Old", "topic": "Old topic"})).await;
    for i in 0..3 {
        send_text(&server, &alice, &old, &format!("o{i}"), &format!("old {i}")).await;
    }
    let new = create_room(&server, &alice, json!({"name": "New"})).await;
    let private = create_room(&server, &bob, json!({"preset": "private_chat"})).await;
    let body = json!({
        "conn_id": "main",
        "lists": {"top": {"ranges": [[0, 0]], "timeline_limit": 1}},
        "room_subscriptions": {
            old.clone(): {"required_state": [["m.room.topic", ""]], "timeline_limit": 2},
            private.clone(): {"required_state": [["*", "*"]], "timeline_limit": 1},
            "!nowhere:localhost": {"timeline_limit": 1},
        },
    });
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    assert_eq!(count(&first, "top"), 2, "{first}");
    assert_eq!(room_ids(&first), sorted(vec![old.clone(), new.clone()]), "not bob's room: {first}");
    let entry = &first["rooms"][&old];
    assert!(is_initial(entry), "{entry}");
    assert_eq!(required(entry), [pair("m.room.topic", "")], "the subscription's required_state: {entry}");
    assert_eq!(bodies(entry), ["old 1", "old 2"], "the subscription's timeline_limit: {entry}");
    assert_eq!(first["rooms"][&new]["timeline"].as_array().map(Vec::len), Some(1), "{first}");
    assert_eq!(required(&first["rooms"][&new]), Vec::<(String, String)>::new(), "{first}");

    // The old room first: the new one stays on top, the old one is in no range.
    send_text(&server, &alice, &old, "o3", "old news").await;
    send_text(&server, &alice, &new, "n1", "news").await;
    let next = sliding(&server, &alice, Some(&pos(&first)), Some(0), body).await;
    assert_eq!(bodies(&next["rooms"][&new]), ["news"], "{next}");
    assert_eq!(bodies(&next["rooms"][&old]), ["old news"], "{next}");
    assert!(!is_initial(&next["rooms"][&old]), "{next}");
    assert!(next["rooms"].get(&private).is_none(), "{next}");
}

/// Asking for a room with different `required_state` or `timeline_limit`
/// sends it again from scratch.
#[tokio::test]
async fn sliding_changed_config_resends_the_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    for i in 0..5 {
        send_text(&server, &alice, &room, &format!("m{i}"), &format!("message {i}")).await;
    }
    let small = one_list("main", 9, json!([]), 1);
    let first = sliding(&server, &alice, None, None, small.clone()).await;
    assert_eq!(bodies(&first["rooms"][&room]), ["message 4"], "{first}");
    let same = sliding(&server, &alice, Some(&pos(&first)), Some(0), small).await;
    assert_eq!(room_ids(&same), Vec::<String>::new(), "same config, nothing new: {same}");

    let longer = one_list("main", 9, json!([]), 3);
    let resent = sliding(&server, &alice, Some(&pos(&same)), Some(0), longer).await;
    let entry = &resent["rooms"][&room];
    assert!(is_initial(entry), "a new timeline_limit: {resent}");
    assert_eq!(bodies(entry), ["message 2", "message 3", "message 4"], "{entry}");

    let with_state = one_list("main", 9, json!([["m.room.create", ""]]), 3);
    let resent = sliding(&server, &alice, Some(&pos(&resent)), Some(0), with_state.clone()).await;
    let entry = &resent["rooms"][&room];
    assert!(is_initial(entry), "a new required_state: {resent}");
    assert_eq!(required(entry), [pair("m.room.create", "")], "{entry}");
    let quiet = sliding(&server, &alice, Some(&pos(&resent)), Some(0), with_state).await;
    assert_eq!(room_ids(&quiet), Vec::<String>::new(), "{quiet}");
}

/// Message bodies of `/messages` backwards from `from`, newest first.
async fn page_back(server: &TestServer, user: &User, room: &str, from: &str, limit: u32) -> Vec<String> {
    crate::rooms::message_bodies(server, user, room, &format!("dir=b&limit={limit}&from={}", encode(from)))
        .await
}

/// `timeline_limit`, `limited` and `prev_batch`, a token `/messages`
/// continues back from.
#[tokio::test]
async fn sliding_prev_batch_pages_back() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    for i in 0..6 {
        send_text(&server, &alice, &room, &format!("m{i}"), &format!("m{i}")).await;
    }
    let body = one_list("main", 9, json!([]), 2);
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    let entry = &first["rooms"][&room];
    assert_eq!(bodies(entry), ["m4", "m5"], "oldest first: {entry}");
    assert_eq!(entry["limited"], true, "{entry}");
    let prev = entry["prev_batch"].as_str().unwrap_or_else(|| panic!("prev_batch: {entry}")).to_owned();
    assert_eq!(
        page_back(&server, &alice, &room, &prev, 3).await,
        ["m3", "m2", "m1"],
        "paging back continues before the timeline"
    );

    send_text(&server, &alice, &room, "m6", "m6").await;
    let next = sliding(&server, &alice, Some(&pos(&first)), Some(0), body).await;
    let entry = &next["rooms"][&room];
    assert_eq!(bodies(entry), ["m6"], "{entry}");
    assert_eq!(entry["limited"], false, "{entry}");
    let prev = entry["prev_batch"].as_str().unwrap_or_else(|| panic!("prev_batch: {entry}")).to_owned();
    assert_eq!(page_back(&server, &alice, &room, &prev, 1).await, ["m5"]);

    let whole = sliding(&server, &alice, None, None, one_list("whole", 9, json!([]), 50)).await;
    let entry = &whole["rooms"][&room];
    assert_eq!(entry["limited"], false, "everything fits: {entry}");
    assert_eq!(entry["timeline"][0]["type"], "m.room.create", "{entry}");

    let none = sliding(&server, &alice, None, None, one_list("none", 9, json!([]), 0)).await;
    let entry = &none["rooms"][&room];
    assert!(is_initial(entry), "{none}");
    assert!(
        entry.get("timeline").is_none_or(|t| t.as_array().is_some_and(Vec::is_empty)),
        "timeline_limit 0: no timeline: {entry}"
    );
}

/// A notification raises `notification_count` (a mention also
/// `highlight_count`); a read receipt clears them.
#[tokio::test]
async fn sliding_unread_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    join(&server, &bob, &room).await;
    let body = one_list("main", 9, json!([]), 5);
    let counts = |room: &Value| (room["notification_count"].as_u64(), room["highlight_count"].as_u64());
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    assert_eq!(counts(&first["rooms"][&room]), (Some(0), Some(0)), "{first}");

    send_text(&server, &bob, &room, "b1", "hello").await;
    let mention =
        json!({"msgtype": "m.text", "body": "alice: look", "m.mentions": {"user_ids": [alice.user_id]}});
    let mentioned = send_event(&server, &bob, &room, "m.room.message", "b2", mention).await;
    let unread = sliding(&server, &alice, Some(&pos(&first)), Some(0), body.clone()).await;
    assert_eq!(counts(&unread["rooms"][&room]), (Some(2), Some(1)), "{unread}");

    post_ok(
        &server,
        &alice,
        &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{mentioned}"),
        json!({}),
    )
    .await;
    let read = sliding(&server, &alice, Some(&pos(&unread)), Some(0), body.clone()).await;
    let entry = read["rooms"].get(&room).unwrap_or_else(|| panic!("new counts are news: {read}"));
    assert_eq!(counts(entry), (Some(0), Some(0)), "{entry}");
    let quiet = sliding(&server, &alice, Some(&pos(&read)), Some(0), body).await;
    assert_eq!(room_ids(&quiet), Vec::<String>::new(), "{quiet}");
}

/// `to_device`: messages until acknowledged by `since`; extensions not
/// enabled are left out.
#[tokio::test]
async fn sliding_extension_to_device() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bare = sliding(&server, &bob, None, None, one_list("bare", 9, json!([]), 1)).await;
    for key in ["to_device", "e2ee", "account_data", "receipts", "typing"] {
        assert!(bare["extensions"].get(key).is_none(), "{key} not enabled: {bare}");
    }

    let request = |since: Option<&str>| {
        let mut to_device = json!({"enabled": true});
        if let Some(since) = since {
            to_device["since"] = json!(since);
        }
        json!({"conn_id": "main", "extensions": {"to_device": to_device}})
    };
    let next_batch = |body: &Value| {
        body["extensions"]["to_device"]["next_batch"]
            .as_str()
            .unwrap_or_else(|| panic!("next_batch: {body}"))
            .to_owned()
    };
    let events =
        |body: &Value| body["extensions"]["to_device"]["events"].as_array().cloned().unwrap_or_default();
    let first = sliding(&server, &bob, None, None, request(None)).await;
    assert_eq!(events(&first), Vec::<Value>::new(), "{first}");
    for key in ["e2ee", "account_data", "receipts", "typing"] {
        assert!(first["extensions"].get(key).is_none(), "{key} not enabled: {first}");
    }
    let since = next_batch(&first);

    let message = json!({"messages": {"@bob:localhost": {bob.device_id.clone(): {"n": 1}}}});
    put_ok(&server, &alice, "/_matrix/client/v3/sendToDevice/org.example.ping/t1", message).await;
    let delivered = sliding(&server, &bob, Some(&pos(&first)), Some(0), request(Some(&since))).await;
    assert_eq!(
        events(&delivered),
        [json!({"type": "org.example.ping", "sender": "@alice:localhost", "content": {"n": 1}})],
        "{delivered}"
    );
    // Not acknowledged (the same `since`): sent again.
    let again = sliding(&server, &bob, Some(&pos(&delivered)), Some(0), request(Some(&since))).await;
    assert_eq!(events(&again).len(), 1, "{again}");
    // Acknowledged: gone.
    let acked = sliding(&server, &bob, Some(&pos(&again)), Some(0), request(Some(&next_batch(&again)))).await;
    assert_eq!(events(&acked), Vec::<Value>::new(), "{acked}");
}

/// `e2ee`: one-time key counts, unused fallback key types and the device
/// list changes of users sharing a room.
#[tokio::test]
async fn sliding_extension_e2ee() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    join(&server, &bob, &room).await;
    let body = json!({"conn_id": "main", "extensions": {"e2ee": {"enabled": true}}});
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    let e2ee = &first["extensions"]["e2ee"];
    assert!(e2ee["device_one_time_keys_count"].is_object(), "{first}");
    assert!(e2ee["device_unused_fallback_key_types"].is_array(), "{first}");
    let changed = e2ee["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
    assert!(!changed.contains(&json!(bob.user_id)), "{first}");

    let upload = json!({
        "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "otk1"}},
        "fallback_keys": {"signed_curve25519:AAAAAg": {"key": "fallback", "fallback": true}},
    });
    let (status, uploaded) = server.post("/_matrix/client/v3/keys/upload", Some(&alice.token), upload).await;
    assert_eq!(status, 200, "{uploaded}");
    let (status, uploaded) = server
        .post("/_matrix/client/v3/keys/upload", Some(&bob.token), json!({"device_keys": device_keys(&bob)}))
        .await;
    assert_eq!(status, 200, "{uploaded}");

    let next = sliding(&server, &alice, Some(&pos(&first)), Some(0), body.clone()).await;
    let e2ee = &next["extensions"]["e2ee"];
    assert_eq!(e2ee["device_one_time_keys_count"]["signed_curve25519"], 1, "{next}");
    assert_eq!(e2ee["device_unused_fallback_key_types"], json!(["signed_curve25519"]), "{next}");
    let changed = e2ee["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
    assert!(changed.contains(&json!(bob.user_id)), "bob's new keys: {next}");
    assert!(e2ee["device_lists"]["left"].is_array(), "{next}");

    let later = sliding(&server, &alice, Some(&pos(&next)), Some(0), body).await;
    let changed =
        later["extensions"]["e2ee"]["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
    assert!(!changed.contains(&json!(bob.user_id)), "reported once: {later}");
}

/// `account_data`: everything global on a new connection, then what
/// changed; room account data for rooms in range.
#[tokio::test]
async fn sliding_extension_account_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let outside = create_room(&server, &alice, json!({})).await;
    let inside = create_room(&server, &alice, json!({})).await;
    for (room, n) in [(&outside, "outside"), (&inside, "inside")] {
        let path =
            format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room}/account_data/org.example.note");
        put_ok(&server, &alice, &path, json!({"n": n})).await;
    }
    let body = json!({
        "conn_id": "main",
        "lists": {"top": {"ranges": [[0, 0]], "timeline_limit": 1}},
        "extensions": {"account_data": {"enabled": true}},
    });
    let types = |events: &Value| -> Vec<String> {
        events
            .as_array()
            .map(|e| e.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    let data = &first["extensions"]["account_data"];
    assert!(types(&data["global"]).contains(&"m.push_rules".to_owned()), "{first}");
    assert_eq!(
        data["rooms"][&inside],
        json!([{"type": "org.example.note", "content": {"n": "inside"}}]),
        "{first}"
    );
    assert!(data["rooms"].get(&outside).is_none(), "a room out of range: {first}");

    put_ok(
        &server,
        &alice,
        "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.theme",
        json!({"dark": true}),
    )
    .await;
    let path =
        format!("/_matrix/client/v3/user/@alice:localhost/rooms/{inside}/account_data/org.example.note");
    put_ok(&server, &alice, &path, json!({"n": "changed"})).await;
    let next = sliding(&server, &alice, Some(&pos(&first)), Some(0), body.clone()).await;
    let data = &next["extensions"]["account_data"];
    assert_eq!(data["global"], json!([{"type": "org.example.theme", "content": {"dark": true}}]), "{next}");
    assert_eq!(
        data["rooms"][&inside],
        json!([{"type": "org.example.note", "content": {"n": "changed"}}]),
        "{next}"
    );

    let quiet = sliding(&server, &alice, Some(&pos(&next)), Some(0), body).await;
    let data = &quiet["extensions"]["account_data"];
    assert_eq!(types(&data["global"]), Vec::<String>::new(), "{quiet}");
    assert!(data["rooms"].get(&inside).is_none(), "{quiet}");
}

/// `receipts` and `typing` for rooms in range.
#[tokio::test]
async fn sliding_extension_receipts_and_typing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    join(&server, &bob, &room).await;
    let body = json!({
        "conn_id": "main",
        "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 5}},
        "extensions": {"receipts": {"enabled": true}, "typing": {"enabled": true}},
    });
    let first = sliding(&server, &alice, None, None, body.clone()).await;
    assert!(first["extensions"]["receipts"].is_object(), "{first}");
    assert!(first["extensions"]["typing"].is_object(), "{first}");

    let (_, sent) = send_text(&server, &alice, &room, "r", "read me").await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    post_ok(&server, &bob, &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event_id}"), json!({}))
        .await;
    let receipts = sliding(&server, &alice, Some(&pos(&first)), Some(0), body.clone()).await;
    let event = &receipts["extensions"]["receipts"]["rooms"][&room];
    assert_eq!(event["type"], "m.receipt", "{receipts}");
    assert!(
        event["content"][&event_id]["m.read"]["@bob:localhost"]["ts"].is_u64(),
        "bob's receipt: {receipts}"
    );

    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/@bob:localhost");
    put_ok(&server, &bob, &typing, json!({"typing": true, "timeout": 30000})).await;
    let typed = sliding(&server, &alice, Some(&pos(&receipts)), Some(0), body).await;
    let event = &typed["extensions"]["typing"]["rooms"][&room];
    assert_eq!(event["type"], "m.typing", "{typed}");
    assert_eq!(event["content"]["user_ids"], json!(["@bob:localhost"]), "{typed}");
}

/// The bump stamps of the user's rooms on a new connection, by room.
async fn stamps(server: &TestServer, user: &User) -> std::collections::BTreeMap<String, u64> {
    let all = sliding(server, user, None, None, one_list("stamps", 99, json!([]), 0)).await;
    let rooms = all["rooms"].as_object().unwrap();
    rooms.iter().map(|(id, room)| (id.clone(), room["bump_stamp"].as_u64().unwrap())).collect()
}

/// A profile change writes a member event into every room without moving
/// any: after a restart (recency read back from storage) the stamps are
/// those from before, not the profile change's.
#[tokio::test]
async fn sliding_recency_survives_a_profile_change_and_a_restart() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for name in ["One", "Two", "Three"] {
        create_room(&server, &alice, json!({"name": name})).await;
    }
    let before = stamps(&server, &alice).await;
    assert_eq!(before.len(), 3, "{before:?}");
    let profile = json!({"displayname": "Alice Renamed"});
    let path = format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id);
    assert_eq!(server.put(&path, Some(&alice.token), profile).await.0, 200);
    assert_eq!(stamps(&server, &alice).await, before, "a profile change bumps nothing");
    let dir = server.kill();
    let server = TestServer::start_in(dir, "allow_registration = true\n");
    assert_eq!(stamps(&server, &alice).await, before, "the same recency after a restart");
}

/// Kicked from a world-readable room, the user's timeline ends at the kick.
#[tokio::test]
async fn sliding_timeline_of_a_kicked_user_ends_at_the_kick() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(
        &server,
        &bob,
        json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
               "content": {"history_visibility": "world_readable"}}]}),
    )
    .await;
    join(&server, &alice, &room).await;
    send_text(&server, &bob, &room, "b1", "before the kick").await;
    post_ok(
        &server,
        &bob,
        &format!("/_matrix/client/v3/rooms/{room}/kick"),
        json!({"user_id": alice.user_id}),
    )
    .await;
    send_text(&server, &bob, &room, "b2", "after the kick").await;
    let body = sliding(&server, &alice, None, None, one_list("main", 9, json!([]), 10)).await;
    let timeline = body["rooms"][&room]["timeline"].as_array().unwrap();
    assert_eq!(bodies(&body["rooms"][&room]), ["before the kick"], "{body}");
    assert_eq!(timeline.last().unwrap()["content"]["membership"], "leave", "ends at the kick: {body}");
    // Later messages are not news for her.
    send_text(&server, &bob, &room, "b3", "later still").await;
    let next = sliding(&server, &alice, Some(&pos(&body)), Some(0), one_list("main", 9, json!([]), 10)).await;
    assert!(next["rooms"].get(&room).is_none(), "{next}");
}

/// Oversized requests are refused before any work.
#[tokio::test]
async fn sliding_request_size_is_bounded() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let lists: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("l{i}"), json!({"ranges": [[0, 1]], "timeline_limit": 1}))).collect();
    let result = sliding_status(&server, &alice, None, None, json!({"lists": lists})).await;
    assert_error(&result, 400, "M_INVALID_PARAM");
    let ranges: Vec<Value> = (0..101).map(|_| json!([0, 1_000_000_000_000u64])).collect();
    let body = json!({"lists": {"all": {"ranges": ranges, "timeline_limit": 1}}});
    assert_error(&sliding_status(&server, &alice, None, None, body).await, 400, "M_INVALID_PARAM");
    // Huge, overlapping ranges within the limits are fine.
    let body =
        json!({"lists": {"all": {"ranges": [[0, 1_000_000_000_000u64], [0, 5]], "timeline_limit": 1}}});
    assert_eq!(sliding_status(&server, &alice, None, None, body).await.0, 200);
}
