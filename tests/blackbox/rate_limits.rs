//! Rate limits: a burst beyond a bucket gets 429 with both retry hints and
//! succeeds after the wait; failed logins lock the account out for a while;
//! an admin's override exempts a user.

use std::time::Duration;

use serde_json::json;

use crate::{
    harness::{PASSWORD, TestServer, assert_error, encode},
    rooms::create_room,
};

const LIMITED: &str = "allow_registration = true\nrc_enabled = true\n\
    rc_message = { per_second = 1.0, burst_count = 3 }\n\
    rc_login = { failed_attempts = { per_second = 0.01, burst_count = 2 } }\n";

async fn send(server: &TestServer, token: &str, room: &str, txn: &str) -> reqwest::Response {
    let url = format!("{}/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}", server.base);
    let body = json!({"msgtype": "m.text", "body": txn});
    server.http().put(url).bearer_auth(token).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn a_burst_beyond_rc_message_waits_as_told() {
    let server = TestServer::start_with(LIMITED).await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    for i in 0..3 {
        assert_eq!(send(&server, &alice.token, &room, &format!("ok{i}")).await.status(), 200);
    }
    let refused = send(&server, &alice.token, &room, "over").await;
    assert_eq!(refused.status(), 429);
    let retry_header: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    let retry_ms = body["retry_after_ms"].as_u64().unwrap();
    assert!((1..=2).contains(&retry_header), "Retry-After in whole seconds, rounded up: {retry_header}");
    assert_eq!(retry_ms, retry_header * 1000, "{body}");
    tokio::time::sleep(Duration::from_millis(retry_ms)).await;
    assert_eq!(send(&server, &alice.token, &room, "after").await.status(), 200);
}

#[tokio::test]
async fn failed_logins_beyond_the_limit_lock_the_account_out() {
    let server = TestServer::start_with(LIMITED).await;
    server.register("alice").await;
    for _ in 0..2 {
        assert_error(&server.login("alice", "wrong").await, 403, "M_FORBIDDEN");
    }
    let refused = server.login("alice", "wrong").await;
    assert_error(&refused, 429, "M_LIMIT_EXCEEDED");
    assert!(refused.1["retry_after_ms"].as_u64().unwrap() > 1000);
    assert_error(&server.login("alice", PASSWORD).await, 429, "M_LIMIT_EXCEEDED");
    server.register("bob").await;
    assert_eq!(server.login("bob", PASSWORD).await.0, 200, "other accounts are not locked out");
}

#[tokio::test]
async fn an_admin_override_exempts_a_user() {
    let server = TestServer::start_with(LIMITED).await;
    let admin = server.register("admin").await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let path = format!("/_synapse/admin/v1/users/{}/override_ratelimit", encode(&alice.user_id));
    assert_eq!(server.get(&path, Some(&admin.token)).await.1, json!({}));
    let exempt = json!({"messages_per_second": 0, "burst_count": 0});
    assert_eq!(server.post(&path, Some(&admin.token), exempt.clone()).await.1, exempt);
    assert_eq!(server.get(&path, Some(&admin.token)).await.1, exempt);
    for i in 0..8 {
        assert_eq!(send(&server, &alice.token, &room, &format!("m{i}")).await.status(), 200, "message {i}");
    }
    // A limit of the admin's choosing, then back to the configured one.
    let custom = json!({"messages_per_second": 1, "burst_count": 1});
    assert_eq!(server.post(&path, Some(&admin.token), custom).await.0, 200);
    assert_eq!(send(&server, &alice.token, &room, "c1").await.status(), 200);
    assert_eq!(send(&server, &alice.token, &room, "c2").await.status(), 429);
    assert_eq!(server.delete(&path, Some(&admin.token)).await.0, 200);
    assert_eq!(server.get(&path, Some(&admin.token)).await.1, json!({}));
    let bad = server.post(&path, Some(&admin.token), json!({"messages_per_second": -1})).await;
    assert_error(&bad, 400, "M_BAD_JSON");
}
