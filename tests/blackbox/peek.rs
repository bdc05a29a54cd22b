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
