//! Delayed events (MSC4140): scheduled, cancelled, restarted, sent now,
//! kept across a restart, dropped when others change the state, limited.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{
    harness::{TestServer, User, assert_error},
    rooms::create_room,
};

const DELAYED: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";

async fn schedule(
    server: &TestServer,
    user: &User,
    room: &str,
    txn: &str,
    body: &str,
    delay_ms: u64,
) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}?org.matrix.msc4140.delay={delay_ms}"
    );
    let (status, response) =
        server.put(&path, Some(&user.token), json!({"msgtype": "m.text", "body": body})).await;
    assert_eq!(status, 200, "{response}");
    response["delay_id"].as_str().expect("delay_id").to_owned()
}

async fn bodies(server: &TestServer, user: &User, room: &str) -> Vec<String> {
    let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50");
    let (_, page) = server.get(&path, Some(&user.token)).await;
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Poll until `body` is in the room; returns when it appeared, or none by `within`.
async fn appears(
    server: &TestServer,
    user: &User,
    room: &str,
    body: &str,
    within: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if bodies(server, user, room).await.iter().any(|b| b == body) {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn delayed_message_is_sent_at_its_time_and_listed_until_then() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let start = Instant::now();
    let delay_id = schedule(&server, &alice, &room, "t1", "later", 1000).await;
    assert_eq!(schedule(&server, &alice, &room, "t1", "later", 1000).await, delay_id, "same transaction");
    let (_, listed) = server.get(DELAYED, Some(&alice.token)).await;
    let listed = &listed["delayed_events"];
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["delay_id"], delay_id);
    assert_eq!(listed[0]["delay"], 1000);
    assert_eq!(listed[0]["content"]["body"], "later");
    assert!(!bodies(&server, &alice, &room).await.contains(&"later".to_owned()), "not before its time");
    let sent = appears(&server, &alice, &room, "later", Duration::from_secs(5)).await.expect("sent");
    let elapsed = sent - start;
    assert!(elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(2000), "{elapsed:?}");
    let (_, listed) = server.get(DELAYED, Some(&alice.token)).await;
    assert_eq!(listed["delayed_events"], json!([]));
    assert_error(
        &server.post(&format!("{DELAYED}/{delay_id}"), Some(&alice.token), json!({"action": "cancel"})).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn cancelled_never_restarted_later_and_sent_now() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let start = Instant::now();
    let cancelled = schedule(&server, &alice, &room, "c", "cancelled", 600).await;
    let restarted = schedule(&server, &alice, &room, "r", "restarted", 1000).await;
    let now = schedule(&server, &alice, &room, "n", "right away", 60_000).await;
    // Both update forms: the action in the body and in the path.
    let (status, body) =
        server.post(&format!("{DELAYED}/{cancelled}"), Some(&alice.token), json!({"action": "cancel"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.post(&format!("{DELAYED}/{now}/send"), None, json!({})).await;
    assert_eq!(status, 200, "the delay ID alone authorises an update");
    assert!(bodies(&server, &alice, &room).await.contains(&"right away".to_owned()));
    assert_error(
        &server.post(&format!("{DELAYED}/{now}/bogus"), None, json!({})).await,
        400,
        "M_INVALID_PARAM",
    );

    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _) =
        server.post(&format!("{DELAYED}/{restarted}/restart"), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200);
    let sent = appears(&server, &alice, &room, "restarted", Duration::from_secs(5)).await.expect("sent");
    assert!(
        sent - start >= Duration::from_millis(1550),
        "restarted timer runs from the restart: {:?}",
        sent - start
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !bodies(&server, &alice, &room).await.contains(&"cancelled".to_owned()),
        "cancelled is never sent"
    );
}

#[tokio::test]
async fn a_delayed_event_scheduled_before_a_restart_fires_after_it() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    schedule(&server, &alice, &room, "t", "survivor", 1500).await;
    let dir = server.kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let restarted_at = Instant::now();
    let server = TestServer::start_in(dir, "allow_registration = true\n");
    let sent = appears(&server, &alice, &room, "survivor", Duration::from_secs(5))
        .await
        .expect("fired after restart");
    assert!(sent - restarted_at < Duration::from_secs(2), "overdue timers fire at startup");
}

#[tokio::test]
async fn delayed_state_is_dropped_when_someone_else_changes_it() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let body = json!({"preset": "public_chat", "power_level_content_override": {"users": {"@alice:localhost": 100, "@bob:localhost": 100}}});
    let room = create_room(&server, &alice, body).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let topic_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/");
    let delayed_topic =
        |topic: &str| (format!("{topic_path}?org.matrix.msc4140.delay=700"), json!({"topic": topic}));

    // Alice's own change in between does not cancel her delayed state.
    let (path, body) = delayed_topic("alice later");
    let (status, scheduled) = server.put(&path, Some(&alice.token), body).await;
    assert_eq!(status, 200, "{scheduled}");
    assert!(scheduled["delay_id"].is_string());
    server.put(&topic_path, Some(&alice.token), json!({"topic": "alice now"})).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, topic) = server.get(&topic_path, Some(&alice.token)).await;
    assert_eq!(topic["topic"], "alice later");

    // Bob's change drops it.
    let (path, body) = delayed_topic("alice again");
    server.put(&path, Some(&alice.token), body).await;
    server.put(&topic_path, Some(&bob.token), json!({"topic": "bob's"})).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, topic) = server.get(&topic_path, Some(&alice.token)).await;
    assert_eq!(topic["topic"], "bob's", "the delayed state was dropped");
    let (_, listed) = server.get(DELAYED, Some(&alice.token)).await;
    assert_eq!(listed["delayed_events"], json!([]));
}

#[tokio::test]
async fn limits_on_delay_and_count() {
    let server = TestServer::start_with(
        "allow_registration = true\nmax_event_delay = 10\nmax_delayed_events_per_user = 2\n",
    )
    .await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let send = |txn: &str, delay: &str| {
        format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}?org.matrix.msc4140.delay={delay}")
    };
    let content = json!({"msgtype": "m.text", "body": "x"});
    assert_error(
        &server.put(&send("a", "10001"), Some(&alice.token), content.clone()).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.put(&send("b", "soon"), Some(&alice.token), content.clone()).await,
        400,
        "M_INVALID_PARAM",
    );
    for txn in ["c", "d"] {
        let (status, _) = server.put(&send(txn, "9000"), Some(&alice.token), content.clone()).await;
        assert_eq!(status, 200);
    }
    let result = server.put(&send("e", "9000"), Some(&alice.token), content.clone()).await;
    assert_error(&result, 429, "M_LIMIT_EXCEEDED");
    assert!(result.1["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 9000), "{}", result.1);
    let (_, capabilities) = server.get("/_matrix/client/v3/capabilities", Some(&alice.token)).await;
    let advertised = &capabilities["capabilities"]["org.matrix.msc4140.delayed_events"];
    assert_eq!(advertised, &json!({"max_delay_ms": 10000, "max_scheduled": 2}));
    let other = create_room(&server, &server.register("bob").await, json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{other}/send/m.room.message/f?org.matrix.msc4140.delay=10");
    assert_error(&server.put(&path, Some(&alice.token), content).await, 403, "M_FORBIDDEN");
}
