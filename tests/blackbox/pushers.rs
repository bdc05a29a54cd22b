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
    harness::{TestServer, assert_error},
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
