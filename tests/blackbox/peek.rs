//! Peeking: `/rooms/{roomId}/initialSync` and `/events?room_id=`.

use std::time::Duration;

use serde_json::json;

use crate::{
    harness::{TestServer, assert_error},
    rooms::{create_room, send_text},
};

#[tokio::test]
async fn peeking_a_world_readable_room_and_refusal_elsewhere() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let open = create_room(&server, &alice, json!({"preset": "public_chat", "name": "Open"})).await;
    let path = format!("/_matrix/client/v3/rooms/{open}/state/m.room.history_visibility/");
    server.put(&path, Some(&alice.token), json!({"history_visibility": "world_readable"})).await;
    send_text(&server, &alice, &open, "t1", "hello peekers").await;
    let closed = create_room(&server, &alice, json!({"preset": "private_chat"})).await;
    send_text(&server, &alice, &closed, "t2", "secret").await;

    // Bob is in neither room: the world-readable one can be previewed.
    let (status, body) =
        server.get(&format!("/_matrix/client/v3/rooms/{open}/initialSync"), Some(&bob.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], open);
    let chunk = body["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk.last().unwrap()["content"]["body"], "hello peekers", "newest last: {body}");
    assert!(body["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"));
    assert!(body.get("membership").is_none(), "bob has no membership: {body}");
    let (_, mine) =
        server.get(&format!("/_matrix/client/v3/rooms/{open}/initialSync"), Some(&alice.token)).await;
    assert_eq!(mine["membership"], "join");

    for path in [
        format!("/_matrix/client/v3/rooms/{closed}/initialSync"),
        format!("/_matrix/client/v3/events?room_id={closed}&timeout=0"),
        "/_matrix/client/v3/rooms/!nowhere:localhost/initialSync".to_owned(),
    ] {
        assert_error(&server.get(&path, Some(&bob.token)).await, 403, "M_FORBIDDEN");
    }

    // `/events` waits for the next event and continues from `end`.
    let end = body["messages"]["end"].as_str().unwrap().to_owned();
    let events_path = format!("/_matrix/client/v3/events?room_id={open}&from={end}&timeout=10000");
    let waiting = {
        let server = &server;
        let token = bob.token.clone();
        let events_path = events_path.clone();
        async move { server.get(&events_path, Some(&token)).await }
    };
    let send = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_text(&server, &alice, &open, "t3", "live").await
    };
    let ((status, events), _) = tokio::join!(waiting, send);
    assert_eq!(status, 200, "{events}");
    let bodies: Vec<&str> =
        events["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["live"], "{events}");
    let next = events["end"].as_str().unwrap();
    let (_, empty) = server
        .get(&format!("/_matrix/client/v3/events?room_id={open}&from={next}&timeout=0"), Some(&bob.token))
        .await;
    assert_eq!(empty["chunk"], json!([]));
}

/// MSC2753: a device peeks into a world-readable room (by ID or alias) and
/// follows it in its own sync only; other rooms refuse the peek.
#[tokio::test]
async fn a_device_peeks_into_world_readable_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (_, other) = server.login("bob", crate::harness::PASSWORD).await;
    let other_token = other["access_token"].as_str().unwrap().to_owned();
    let room =
        create_room(&server, &alice, json!({"preset": "public_chat", "room_alias_name": "lookin"})).await;
    let visibility = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/");
    let shared = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    assert_error(
        &server.post(&format!("/_matrix/client/v3/peek/{shared}"), Some(&bob.token), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    let bad = server.post("/_matrix/client/v3/peek/not-a-room", Some(&bob.token), json!({})).await;
    assert_error(&bad, 400, "M_INVALID_PARAM");
    let bad = server.post("/_matrix/client/v3/unpeek/not-a-room", Some(&bob.token), json!({})).await;
    assert_error(&bad, 400, "M_INVALID_PARAM");
    let anonymous = server.post(&format!("/_matrix/client/v3/peek/{shared}"), None, json!({})).await;
    assert_error(&anonymous, 401, "M_MISSING_TOKEN");
    server.put(&visibility, Some(&alice.token), json!({"history_visibility": "world_readable"})).await;
    let (_, first) = server.get("/_matrix/client/v3/sync", Some(&bob.token)).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let (status, body) =
        server.post("/_matrix/client/v3/peek/%23lookin:localhost", Some(&bob.token), json!({})).await;
    assert_eq!((status.as_u16(), body["room_id"].as_str()), (200, Some(room.as_str())), "{body}");
    send_text(&server, &alice, &room, "p1", "something to peek").await;

    let (_, body) = server.get(&format!("/_matrix/client/v3/sync?since={since}"), Some(&bob.token)).await;
    let peeked = &body["rooms"]["peek"][&room];
    let events = peeked["timeline"]["events"].as_array().unwrap_or_else(|| panic!("no peek: {body}"));
    assert!(events.len() > 1 && peeked["timeline"]["prev_batch"].is_string(), "the room's latest events");
    assert_eq!(events.last().unwrap()["content"]["body"], "something to peek");
    assert_eq!(body["rooms"]["join"], json!({}));
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let (_, quiet) =
        server.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=0"), Some(&bob.token)).await;
    assert!(quiet["rooms"]["peek"].get(&room).is_none(), "unchanged rooms stay out: {quiet}");

    // A new message wakes the peeking device's waiting sync.
    let wait_path = format!("/_matrix/client/v3/sync?since={since}&timeout=10000");
    let waiting = server.get(&wait_path, Some(&bob.token));
    let send = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        send_text(&server, &alice, &room, "p2", "more").await;
    };
    let started = std::time::Instant::now();
    let ((_, woke), _) = tokio::join!(waiting, send);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "the peek woke the sync");
    assert_eq!(woke["rooms"]["peek"][&room]["timeline"]["events"][0]["content"]["body"], "more");

    let (_, elsewhere) = server.get("/_matrix/client/v3/sync", Some(&other_token)).await;
    assert_eq!(elsewhere["rooms"]["peek"], json!({}), "only the device that peeked");
    assert_eq!(
        server.post(&format!("/_matrix/client/v3/unpeek/{room}"), Some(&bob.token), json!({})).await.0,
        200
    );
    let (_, after) = server.get("/_matrix/client/v3/sync", Some(&bob.token)).await;
    assert_eq!(after["rooms"]["peek"], json!({}));
}
