//! Pushers deliver to a push gateway (a small one started by the test).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    harness::{PASSWORD, TestServer, assert_error, password_auth},
    rooms::{create_room, send_text},
};

/// A push gateway on loopback: records notifications; rejects pushkey "bad";
/// fails the first `failures` requests with 500.
struct Gateway {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

async fn start_gateway(failures: usize) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/_matrix/push/v1/notify", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    let remaining = Arc::new(Mutex::new(failures));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let log = log.clone();
            let remaining = remaining.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buffer.len() >= end + 4 + length {
                            break buffer[end + 4..end + 4 + length].to_vec();
                        }
                    }
                };
                let fail = {
                    let mut remaining = remaining.lock().unwrap();
                    let fail = *remaining > 0;
                    *remaining = remaining.saturating_sub(1);
                    fail
                };
                let (status, reply) = if fail {
                    ("500 Internal Server Error", json!({}))
                } else {
                    let notification: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let pushkey = notification["notification"]["devices"][0]["pushkey"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    log.lock().unwrap().push(notification);
                    let rejected: Vec<String> = if pushkey == "bad" { vec![pushkey] } else { vec![] };
                    ("200 OK", json!({"rejected": rejected}))
                };
                let reply = reply.to_string();
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Gateway { url, received }
}

async fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(value) = check() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting");
}

fn pusher(url: &str, pushkey: &str) -> Value {
    json!({"kind": "http", "app_id": "org.example.app", "pushkey": pushkey, "app_display_name": "Example",
           "device_display_name": "Phone", "lang": "en", "data": {"url": url}})
}

#[tokio::test]
async fn pushers_deliver_to_the_gateway() {
    let gateway = start_gateway(0).await;
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let set = "/_matrix/client/v3/pushers/set";
    assert_eq!(server.post(set, Some(&bob.token), pusher(&gateway.url, "good")).await.0, 200);
    let bad_url = pusher("http://127.0.0.1:1/somewhere", "x");
    assert_error(&server.post(set, Some(&bob.token), bad_url).await, 400, "M_INVALID_PARAM");
    let (_, list) = server.get("/_matrix/client/v3/pushers", Some(&bob.token)).await;
    assert_eq!(list["pushers"][0]["pushkey"], "good", "{list}");

    let dm = create_room(
        &server,
        &alice,
        json!({"preset": "trusted_private_chat", "invite": ["@bob:localhost"], "name": "Chat"}),
    )
    .await;
    server.post(&format!("/_matrix/client/v3/rooms/{dm}/join"), Some(&bob.token), json!({})).await;
    let (_, sent) = send_text(&server, &alice, &dm, "p1", "ping").await;
    let notification = wait_for(|| {
        gateway
            .received
            .lock()
            .unwrap()
            .iter()
            .find(|n| n["notification"]["event_id"] == sent["event_id"])
            .cloned()
    })
    .await;
    let n = &notification["notification"];
    assert_eq!(n["room_id"], dm.as_str());
    assert_eq!(n["sender"], "@alice:localhost");
    assert_eq!(n["content"]["body"], "ping");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["room_name"], "Chat");
    assert_eq!(n["devices"][0]["pushkey"], "good");
    assert_eq!(n["devices"][0]["app_id"], "org.example.app");
    assert!(n["devices"][0]["data"].get("url").is_none(), "the URL stays with the server");

    // A pushkey the gateway rejects removes the pusher.
    assert_eq!(server.post(set, Some(&bob.token), pusher(&gateway.url, "bad")).await.0, 200);
    send_text(&server, &alice, &dm, "p2", "again").await;
    wait_for(|| {
        let received = gateway.received.lock().unwrap();
        received.iter().any(|n| n["notification"]["devices"][0]["pushkey"] == "bad").then_some(())
    })
    .await;
    for _ in 0..50 {
        let (_, list) = server.get("/_matrix/client/v3/pushers", Some(&bob.token)).await;
        if list["pushers"].as_array().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, list) = server.get("/_matrix/client/v3/pushers", Some(&bob.token)).await;
    let keys: Vec<&str> =
        list["pushers"].as_array().unwrap().iter().map(|p| p["pushkey"].as_str().unwrap()).collect();
    assert_eq!(keys, ["good"]);

    // Deleting a pusher: kind null.
    let delete = json!({"kind": null, "app_id": "org.example.app", "pushkey": "good"});
    assert_eq!(server.post(set, Some(&bob.token), delete).await.0, 200);
    let (_, list) = server.get("/_matrix/client/v3/pushers", Some(&bob.token)).await;
    assert_eq!(list["pushers"], json!([]));
}

#[tokio::test]
async fn failed_pushes_are_retried() {
    let gateway = start_gateway(1).await;
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    server.post("/_matrix/client/v3/pushers/set", Some(&bob.token), pusher(&gateway.url, "retry")).await;
    let dm =
        create_room(&server, &alice, json!({"preset": "trusted_private_chat", "invite": ["@bob:localhost"]}))
            .await;
    server.post(&format!("/_matrix/client/v3/rooms/{dm}/join"), Some(&bob.token), json!({})).await;
    let (_, sent) = send_text(&server, &alice, &dm, "r1", "eventually").await;
    wait_for(|| {
        gateway
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|n| n["notification"]["event_id"] == sent["event_id"])
            .then_some(())
    })
    .await;
}

fn pushes_of(gateway: &Gateway, check: impl Fn(&Value) -> bool) -> Vec<Value> {
    gateway.received.lock().unwrap().iter().map(|n| n["notification"].clone()).filter(|n| check(n)).collect()
}

/// Invites reach the invitee's gateway; an unnamed room is named by its
/// alias; reading clears the badge with a count-only push; a muted room
/// pushes nothing; unknown actions are refused.
#[tokio::test]
async fn invites_badges_and_muted_rooms() {
    let gateway = start_gateway(0).await;
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let set = "/_matrix/client/v3/pushers/set";
    assert_eq!(server.post(set, Some(&bob.token), pusher(&gateway.url, "bobs")).await.0, 200);

    let room = create_room(&server, &alice, json!({"room_alias_name": "hangout"})).await;
    let invite = json!({"user_id": bob.user_id});
    server.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&alice.token), invite).await;
    let invited = wait_for(|| pushes_of(&gateway, |n| n["type"] == "m.room.member").pop()).await;
    assert_eq!(
        (invited["membership"].clone(), invited["user_is_target"].clone()),
        (json!("invite"), json!(true))
    );
    assert_eq!(invited["id"], invited["event_id"], "the old field name too");
    assert_eq!(invited["room_name"], "#hangout:localhost");
    assert_eq!(invited["room_alias"], "#hangout:localhost");

    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let (_, sent) = send_text(&server, &alice, &room, "m1", "hello").await;
    wait_for(|| pushes_of(&gateway, |n| n["event_id"] == sent["event_id"]).pop()).await;
    let receipt =
        format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", sent["event_id"].as_str().unwrap());
    assert_eq!(server.post(&receipt, Some(&bob.token), json!({})).await.0, 200);
    let badge = wait_for(|| pushes_of(&gateway, |n| n.get("event_id").is_none()).pop()).await;
    assert_eq!(badge["counts"]["unread"], 0, "{badge}");
    let bad = server
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{room}/receipt/not.m.read/{}",
                sent["event_id"].as_str().unwrap()
            ),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(bad.0, 400);

    // Muted: a room rule with no notify action; then unmuted again.
    let rule = format!("/_matrix/client/v3/pushrules/global/room/{room}");
    let bad = server.put(&rule, Some(&bob.token), json!({"actions": ["not_an_action"]})).await;
    assert_error(&bad, 400, "M_BAD_JSON");
    assert_eq!(server.put(&rule, Some(&bob.token), json!({"actions": ["dont_notify"]})).await.0, 200);
    let (_, muted) = send_text(&server, &alice, &room, "m2", "shh").await;
    assert_eq!(server.delete(&rule, Some(&bob.token)).await.0, 200);
    let (_, loud) = send_text(&server, &alice, &room, "m3", "again").await;
    wait_for(|| pushes_of(&gateway, |n| n["event_id"] == loud["event_id"]).pop()).await;
    assert!(pushes_of(&gateway, |n| n["event_id"] == muted["event_id"]).is_empty(), "a muted room pushed");
}

/// A password change that signs out the other devices removes the pushers
/// they created; the current device keeps its own.
#[tokio::test]
async fn pushers_of_signed_out_devices_are_removed() {
    let gateway = start_gateway(0).await;
    let server = TestServer::start().await;
    let user = server.register("pam").await;
    let (_, other) = server.login("pam", PASSWORD).await;
    let other_token = other["access_token"].as_str().unwrap();
    let set = "/_matrix/client/v3/pushers/set";
    assert_eq!(server.post(set, Some(other_token), pusher(&gateway.url, "other")).await.0, 200);
    assert_eq!(server.post(set, Some(&user.token), pusher(&gateway.url, "mine")).await.0, 200);
    let (_, list) = server.get("/_matrix/client/v3/pushers", Some(&user.token)).await;
    assert_eq!(list["pushers"].as_array().unwrap().len(), 2, "{list}");
    assert!(list["pushers"][0].get("estuary.device_id").is_none(), "internal fields stay hidden: {list}");
    let change = json!({"new_password": "new-pass", "auth": password_auth("pam", None)});
    assert_eq!(server.post("/_matrix/client/v3/account/password", Some(&user.token), change).await.0, 200);
    let (_, list) = server.get("/_matrix/client/v3/pushers", Some(&user.token)).await;
    let keys: Vec<&str> =
        list["pushers"].as_array().unwrap().iter().map(|p| p["pushkey"].as_str().unwrap()).collect();
    assert_eq!(keys, ["mine"]);
}
