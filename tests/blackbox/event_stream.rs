//! The legacy event stream (`GET /events` without a room), the global
//! `GET /initialSync`, room `initialSync` of a departed room, and the other
//! legacy forms older clients (and SyTest) still use.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    harness::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

/// `GET /events` (`query` appended); panics unless 200.
async fn events(server: &TestServer, user: &User, query: &str) -> Value {
    let (status, body) = server.get(&format!("/_matrix/client/r0/events?{query}"), Some(&user.token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Read the stream from `from` until `done` holds for what arrived (bounded).
async fn read_until(
    server: &TestServer,
    user: &User,
    from: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let (mut token, mut seen) = (from.to_owned(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&seen) {
        assert!(Instant::now() < deadline, "the stream did not deliver; got {seen:?}");
        let body = events(server, user, &format!("from={token}&timeout=1000")).await;
        seen.extend(body["chunk"].as_array().unwrap().iter().cloned());
        token = body["end"].as_str().unwrap().to_owned();
    }
    seen
}

#[tokio::test]
async fn the_event_stream_carries_everything_of_the_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let elsewhere = server.register("eve").await;
    let room = create_room(&server, &alice, json!({})).await;
    let other = create_room(&server, &elsewhere, json!({})).await;
    let initial = events(&server, &alice, "timeout=0").await;
    for key in ["start", "end", "chunk"] {
        assert!(initial.get(key).is_some(), "{key}: {initial}");
    }
    let from = initial["end"].as_str().unwrap().to_owned();
    let started = Instant::now();
    events(&server, &alice, &format!("from={from}")).await;
    assert!(started.elapsed() < Duration::from_secs(5), "without a timeout it answers at once");

    let (_, sent) = send_text(&server, &alice, &room, "t1", "hello stream").await;
    send_text(&server, &elsewhere, &other, "t1", "not for alice").await;
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    assert_eq!(
        server.put(&typing, Some(&alice.token), json!({"typing": true})).await.0,
        200,
        "timeout is optional"
    );
    let tag = format!("/_matrix/client/v3/user/{}/rooms/{room}/tags/work", alice.user_id);
    assert_eq!(server.put(&tag, Some(&alice.token), json!({"order": 1})).await.0, 200);
    let global = format!("/_matrix/client/v3/user/{}/account_data/my.test.type", alice.user_id);
    assert_eq!(server.put(&global, Some(&alice.token), json!({"cats_or_rats": "cats"})).await.0, 200);

    let all = |seen: &[Value]| {
        let has = |check: &dyn Fn(&Value) -> bool| seen.iter().any(check);
        has(&|e| e["event_id"] == sent["event_id"] && e["room_id"] == room && e["user_id"] == alice.user_id)
            && has(&|e| {
                e["type"] == "m.typing"
                    && e["room_id"] == room
                    && e["content"]["user_ids"][0] == alice.user_id
            })
            && has(&|e| {
                e["type"] == "m.tag"
                    && e["room_id"] == room
                    && e["content"]["tags"]["work"]["order"].as_f64() == Some(1.0)
            })
            && has(&|e| e["type"] == "my.test.type" && e.get("room_id").is_none())
    };
    let seen = read_until(&server, &alice, &from, all).await;
    assert!(!seen.iter().any(|e| e["content"]["body"] == "not for alice"), "{seen:?}");
}

#[tokio::test]
async fn the_event_stream_pages_with_a_limit_without_losing_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let from = events(&server, &alice, "timeout=0").await["end"].as_str().unwrap().to_owned();
    let mut sent = Vec::new();
    for n in 0..12 {
        sent.push(
            send_text(&server, &alice, &room, &format!("t{n}"), &format!("m{n}")).await.1["event_id"].clone(),
        );
    }
    let (mut token, mut got) = (from, Vec::new());
    for _ in 0..10 {
        let body = events(&server, &alice, &format!("from={token}&timeout=0&limit=5")).await;
        let chunk = body["chunk"].as_array().unwrap();
        assert!(chunk.len() <= 5, "{body}");
        got.extend(chunk.iter().filter(|e| e["type"] == "m.room.message").map(|e| e["event_id"].clone()));
        token = body["end"].as_str().unwrap().to_owned();
    }
    assert_eq!(got, sent, "every message once, in order");
}

#[tokio::test]
async fn initial_sync_shows_joined_and_departed_rooms() {
    let server = TestServer::start().await;
    let (alice, bob) = (server.register("alice").await, server.register("bob").await);
    let room = create_room(&server, &bob, json!({"preset": "public_chat", "name": "Left behind"})).await;
    let join = format!("/_matrix/client/v3/rooms/{room}/join");
    assert_eq!(server.post(&join, Some(&alice.token), json!({})).await.0, 200);
    send_text(&server, &bob, &room, "m1", "M1").await;
    send_text(&server, &bob, &room, "m2", "M2").await;
    let leave = format!("/_matrix/client/v3/rooms/{room}/leave");
    assert_eq!(server.post(&leave, Some(&alice.token), json!({})).await.0, 200);
    send_text(&server, &bob, &room, "m3", "M3").await;
    let kept = create_room(&server, &alice, json!({"topic": "kept"})).await;
    let tag = format!("/_matrix/client/v3/user/{}/rooms/{kept}/tags/fav", alice.user_id);
    assert_eq!(server.put(&tag, Some(&alice.token), json!({})).await.0, 200);

    let (status, body) =
        server.get("/_matrix/client/v3/initialSync?limit=2&archived=true", Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["end"].is_string() && body["presence"].is_array(), "{body}");
    let entry =
        |id: &str| body["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == id).cloned().unwrap();
    let departed = entry(&room);
    assert_eq!(departed["membership"], "leave");
    let chunk = departed["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk[0]["content"]["body"], "M2", "messages end at the leave: {chunk:?}");
    assert_eq!(chunk[1]["content"]["membership"], "leave");
    let joined = entry(&kept);
    assert_eq!(joined["membership"], "join");
    assert_eq!(joined["account_data"][0]["type"], "m.tag");
    assert!(
        joined["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.topic" && e["user_id"] == alice.user_id)
    );
    let without_archived = server.get("/_matrix/client/v3/initialSync", Some(&alice.token)).await.1;
    assert!(!without_archived["rooms"].as_array().unwrap().iter().any(|r| r["room_id"] == room));

    let path = format!("/_matrix/client/v3/rooms/{room}/initialSync?limit=2");
    let (status, room_sync) = server.get(&path, Some(&alice.token)).await;
    assert_eq!(status, 200, "{room_sync}");
    assert_eq!(room_sync["messages"]["chunk"][0]["content"]["body"], "M2");
    assert_eq!((&room_sync["presence"], &room_sync["receipts"]), (&json!([]), &json!([])));
    let path = format!("/_matrix/client/v3/rooms/{kept}/initialSync");
    let presence = server.get(&path, Some(&alice.token)).await.1["presence"].clone();
    assert_eq!(presence[0]["content"]["user_id"], alice.user_id, "members' presence: {presence}");
}

#[tokio::test]
async fn legacy_forms_older_clients_send() {
    let server = TestServer::start_with("allow_registration = true\nallow_guest_access = true\n").await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let send = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message");
    let (status, body) =
        server.post(&send, Some(&alice.token), json!({"msgtype": "m.text", "body": "no txn"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["event_id"].as_str().is_some_and(|id| id.starts_with('$')));
    let big = json!({"msgtype": "m.text", "body": "x".repeat(70_000)});
    assert_error(&server.post(&send, Some(&alice.token), big).await, 413, "M_TOO_LARGE");

    // Fields of a join body beyond the spec's go into the member event.
    let bob = server.register("bob").await;
    let public = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let join = format!("/_matrix/client/v3/join/{public}");
    assert_eq!(
        server.post(&join, Some(&bob.token), json!({"foo": "bar", "membership": "leave"})).await.0,
        200
    );
    let member = format!("/_matrix/client/v3/rooms/{public}/state/m.room.member/{}", bob.user_id);
    let content = server.get(&member, Some(&bob.token)).await.1;
    assert_eq!((&content["foo"], &content["membership"]), (&json!("bar"), &json!("join")), "{content}");

    let (status, guest) = server.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(status, 200, "{guest}");
    let token = guest["access_token"].as_str().unwrap();
    assert_error(
        &server.get("/_matrix/client/r0/events?timeout=0", Some(token)).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&events_bad(&server, &alice, "timeout=soon").await, 400, "M_INVALID_PARAM");
}

async fn events_bad(server: &TestServer, user: &User, query: &str) -> (reqwest::StatusCode, Value) {
    server.get(&format!("/_matrix/client/r0/events?{query}"), Some(&user.token)).await
}

/// Receipts only move forward: one on an earlier event is accepted and
/// ignored, and `/initialSync` shows the latest.
#[tokio::test]
async fn receipts_move_forward_only() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let first =
        send_text(&server, &alice, &room, "m1", "first").await.1["event_id"].as_str().unwrap().to_owned();
    let second =
        send_text(&server, &alice, &room, "m2", "second").await.1["event_id"].as_str().unwrap().to_owned();
    for event in [&second, &first] {
        let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}");
        assert_eq!(server.post(&path, Some(&alice.token), json!({})).await.0, 200);
    }
    let (status, body) = server.get("/_matrix/client/v3/initialSync", Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    let receipts =
        body["receipts"].as_array().unwrap().iter().find(|r| r["room_id"] == room).cloned().unwrap();
    assert!(receipts["content"][&second]["m.read"][&alice.user_id]["ts"].is_u64(), "{receipts}");
    assert!(receipts["content"].get(&first).is_none(), "{receipts}");
}
