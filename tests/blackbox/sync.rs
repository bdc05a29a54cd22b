//! `/sync`: initial and incremental, long-polling, gaps, lazy members,
//! invites and leaves, account data, bad input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    harness::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

async fn sync(server: &TestServer, user: &User, query: &str) -> Value {
    let (status, body) = server.get(&format!("/_matrix/client/v3/sync{query}"), Some(&user.token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn bodies(room: &Value) -> Vec<&str> {
    room["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect()
}

#[tokio::test]
async fn initial_and_incremental_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({"name": "Sync room"})).await;
    send_text(&server, &alice, &room, "1", "first").await;
    let initial = sync(&server, &alice, "").await;
    let joined = &initial["rooms"]["join"][&room];
    assert_eq!(bodies(joined), ["first"]);
    let types: Vec<&str> = joined["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types[0], "m.room.create", "the whole short history fits in the timeline: {types:?}");
    assert_eq!(joined["timeline"]["limited"], false);
    assert_eq!(joined["state"]["events"], json!([]), "state before the timeline start is empty");
    assert_eq!(joined["summary"]["m.joined_member_count"], 1);
    for key in ["to_device", "device_lists", "device_one_time_keys_count", "account_data", "presence"] {
        assert!(initial.get(key).is_some(), "{key} missing");
    }
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    send_text(&server, &alice, &room, "2", "second").await;
    let incremental = sync(&server, &alice, &format!("?since={since}")).await;
    assert_eq!(bodies(&incremental["rooms"]["join"][&room]), ["second"]);
    let next = incremental["next_batch"].as_str().unwrap();
    let nothing = sync(&server, &alice, &format!("?since={next}&timeout=0")).await;
    assert_eq!(nothing["rooms"]["join"], json!({}), "nothing new");

    // The `next_batch` token works as a /messages token.
    let (_, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={next}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(page["chunk"][0]["content"]["body"], "second");
}

#[tokio::test]
async fn long_poll_wakes_on_a_message() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let since = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();

    let url = format!("{}/_matrix/client/v3/sync?since={since}&timeout=20000", server.base);
    let http = server.http().clone();
    let token = bob.token.clone();
    let waiting = tokio::spawn(async move {
        let response = http.get(url).bearer_auth(token).send().await.unwrap();
        (Instant::now(), response.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the sync waits while nothing happens");
    let (status, _) = send_text(&server, &alice, &room, "wake", "wake up").await;
    let sent = Instant::now();
    assert_eq!(status, 200);
    let (arrived, body) = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    let delay = arrived.saturating_duration_since(sent);
    assert!(delay < Duration::from_millis(500), "woke after {delay:?}");
    assert_eq!(bodies(&body["rooms"]["join"][&room]), ["wake up"]);

    // With nothing to report, the timeout is honoured.
    let next = body["next_batch"].as_str().unwrap();
    let started = Instant::now();
    let empty = sync(&server, &bob, &format!("?since={next}&timeout=300")).await;
    assert!(started.elapsed() >= Duration::from_millis(290), "returned early: {:?}", started.elapsed());
    assert_eq!(empty["rooms"]["join"], json!({}));
}

#[tokio::test]
async fn gappy_sync_is_limited_with_the_state_in_the_gap() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let since = sync(&server, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    send_text(&server, &alice, &room, "a", "early").await;
    server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
            Some(&alice.token),
            json!({"topic": "changed in the gap"}),
        )
        .await;
    for i in 0..8 {
        send_text(&server, &alice, &room, &format!("m{i}"), &format!("late {i}")).await;
    }
    let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A3%7D%7D%7D";
    let body = sync(&server, &alice, &format!("?since={since}&filter={filter}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    assert_eq!(bodies(joined), ["late 5", "late 6", "late 7"]);
    let state: Vec<&str> =
        joined["state"]["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(state, ["m.room.topic"], "only what changed in the gap");
    // prev_batch continues the timeline backwards.
    let prev = joined["timeline"]["prev_batch"].as_str().unwrap();
    let (_, page) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={prev}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(page["chunk"][0]["content"]["body"], "late 4");
}

#[tokio::test]
async fn lazy_loaded_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let mut users = Vec::new();
    for name in ["bob", "carol", "dan"] {
        let user = server.register(name).await;
        server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&user.token), json!({})).await;
        users.push(user);
    }
    for i in 0..12 {
        send_text(&server, &alice, &room, &format!("x{i}"), "filler").await;
    }
    send_text(&server, &users[1], &room, "c", "carol speaks").await;
    let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A2%7D%2C%22state%22%3A%7B%22lazy_load_members%22%3Atrue%7D%7D%7D";
    let body = sync(&server, &users[2], &format!("?filter={filter}")).await;
    let joined = &body["rooms"]["join"][&room];
    let mut members: Vec<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(
        members,
        ["@alice:localhost", "@carol:localhost", "@dan:localhost"],
        "senders and the user only"
    );
    assert_eq!(joined["summary"]["m.joined_member_count"], 4);
}

#[tokio::test]
async fn invites_leaves_and_account_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"name": "Secret"})).await;
    let since = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();
    server
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice.token),
            json!({"user_id": "@bob:localhost"}),
        )
        .await;
    let body = sync(&server, &bob, &format!("?since={since}")).await;
    let invite_state = &body["rooms"]["invite"][&room]["invite_state"]["events"];
    let types: Vec<&str> =
        invite_state.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"m.room.name") && types.contains(&"m.room.member"), "{types:?}");
    assert!(invite_state[0].get("event_id").is_none(), "stripped state");

    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let next = body["next_batch"].as_str().unwrap();
    let body = sync(&server, &bob, &format!("?since={next}")).await;
    assert!(
        body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().len() > 3,
        "joined rooms come with their history"
    );

    let next = body["next_batch"].as_str().unwrap().to_owned();
    server
        .put(
            "/_matrix/client/v3/user/@bob:localhost/account_data/org.example.theme",
            Some(&bob.token),
            json!({"dark": true}),
        )
        .await;
    server
        .put(
            &format!("/_matrix/client/v3/user/@bob:localhost/rooms/{room}/account_data/org.example.note"),
            Some(&bob.token),
            json!({"n": 1}),
        )
        .await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    let body = sync(&server, &bob, &format!("?since={next}")).await;
    assert_eq!(
        body["account_data"]["events"],
        json!([{"type": "org.example.theme", "content": {"dark": true}}])
    );
    let left = &body["rooms"]["leave"][&room];
    let last = left["timeline"]["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["type"].as_str(), last["content"]["membership"].as_str()),
        (Some("m.room.member"), Some("leave"))
    );
    assert_eq!(left["account_data"]["events"][0]["type"], "org.example.note");
    assert!(body["rooms"]["join"].get(&room).is_none());
}

#[tokio::test]
async fn bad_tokens_and_filters() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    assert_error(
        &server.get("/_matrix/client/v3/sync?since=garbage", Some(&alice.token)).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server.get("/_matrix/client/v3/sync?filter=12345", Some(&alice.token)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &server.get("/_matrix/client/v3/sync?filter=%7Bbroken", Some(&alice.token)).await,
        400,
        "M_BAD_JSON",
    );
    assert_error(&server.get("/_matrix/client/v3/sync", None).await, 401, "M_MISSING_TOKEN");
    let (_, created) = server
        .post(
            "/_matrix/client/v3/user/@alice:localhost/filter",
            Some(&alice.token),
            json!({"room": {"timeline": {"limit": 1}}}),
        )
        .await;
    let room = create_room(&server, &alice, json!({})).await;
    let body = sync(&server, &alice, &format!("?filter={}", created["filter_id"].as_str().unwrap())).await;
    assert_eq!(body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().len(), 1);
    assert_eq!(body["rooms"]["join"][&room]["timeline"]["limited"], true);
}

#[tokio::test]
async fn sync_tokens_survive_restarts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let since = sync(&server, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    let dir = server.kill();
    let server = TestServer::start_in(dir, "allow_registration = true\n");
    send_text(&server, &alice, &room, "after", "after restart").await;
    let body = sync(&server, &alice, &format!("?since={since}")).await;
    assert_eq!(bodies(&body["rooms"]["join"][&room]), ["after restart"]);
}

fn ephemeral<'a>(body: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    body["rooms"]["join"][room]["ephemeral"]["events"].as_array()?.iter().find(|e| e["type"] == kind)
}

#[tokio::test]
async fn typing_receipts_read_markers_and_tags() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let since = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();

    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/@alice:localhost");
    assert_eq!(server.put(&typing, Some(&alice.token), json!({"typing": true, "timeout": 400})).await.0, 200);
    let body = sync(&server, &bob, &format!("?since={since}")).await;
    assert_eq!(
        ephemeral(&body, &room, "m.typing").unwrap()["content"]["user_ids"],
        json!(["@alice:localhost"])
    );
    // The timeout ends typing, and the waiting sync hears about it.
    let next = body["next_batch"].as_str().unwrap();
    let body = sync(&server, &bob, &format!("?since={next}&timeout=5000")).await;
    assert_eq!(ephemeral(&body, &room, "m.typing").unwrap()["content"]["user_ids"], json!([]));
    assert_error(
        &server.put(&typing, Some(&bob.token), json!({"typing": true, "timeout": 1000})).await,
        403,
        "M_FORBIDDEN",
    );
    let carol_typing = format!("/_matrix/client/v3/rooms/{room}/typing/@carol:localhost");
    assert_error(
        &server.put(&carol_typing, Some(&carol.token), json!({"typing": true, "timeout": 1000})).await,
        403,
        "M_FORBIDDEN",
    );

    let (_, sent) = send_text(&server, &alice, &room, "r", "read me").await;
    let event_id = sent["event_id"].as_str().unwrap();
    let next = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();
    let receipt = |kind: &str| format!("/_matrix/client/v3/rooms/{room}/receipt/{kind}/{event_id}");
    assert_eq!(server.post(&receipt("m.read"), Some(&alice.token), json!({})).await.0, 200);
    assert_eq!(server.post(&receipt("m.read.private"), Some(&bob.token), json!({})).await.0, 200);
    assert_eq!(server.post(&receipt("m.read"), Some(&bob.token), json!({"thread_id": "main"})).await.0, 200);
    assert_error(&server.post(&receipt("m.read"), Some(&carol.token), json!({})).await, 403, "M_FORBIDDEN");
    let bob_view = sync(&server, &bob, &format!("?since={next}")).await;
    let receipts = &ephemeral(&bob_view, &room, "m.receipt").unwrap()["content"][event_id];
    assert!(receipts["m.read"]["@alice:localhost"]["ts"].is_u64());
    assert!(
        receipts["m.read.private"]["@bob:localhost"].is_object(),
        "own private receipt visible: {receipts}"
    );
    assert_eq!(receipts["m.read"]["@bob:localhost"]["thread_id"], "main");
    let alice_view = sync(&server, &alice, "").await;
    let receipts = &ephemeral(&alice_view, &room, "m.receipt").unwrap()["content"][event_id];
    assert!(receipts.get("m.read.private").is_none(), "others' private receipts are hidden: {receipts}");

    let markers = format!("/_matrix/client/v3/rooms/{room}/read_markers");
    assert_eq!(
        server
            .post(&markers, Some(&bob.token), json!({"m.fully_read": event_id, "m.read": event_id}))
            .await
            .0,
        200
    );
    let (_, fully_read) = server
        .get(
            &format!("/_matrix/client/v3/user/@bob:localhost/rooms/{room}/account_data/m.fully_read"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(fully_read["event_id"], event_id);

    let tags = format!("/_matrix/client/v3/user/@bob:localhost/rooms/{room}/tags");
    let before = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(
        server.put(&format!("{tags}/m.favourite"), Some(&bob.token), json!({"order": 0.5})).await.0,
        200
    );
    assert_eq!(server.put(&format!("{tags}/u.work"), Some(&bob.token), json!({})).await.0, 200);
    let (_, listed) = server.get(&tags, Some(&bob.token)).await;
    assert_eq!(listed["tags"]["m.favourite"]["order"], 0.5);
    assert!(listed["tags"]["u.work"].is_object());
    assert_eq!(server.delete(&format!("{tags}/u.work"), Some(&bob.token)).await.0, 200);
    let body = sync(&server, &bob, &format!("?since={before}")).await;
    let account_data = &body["rooms"]["join"][&room]["account_data"]["events"];
    let tag_event = account_data.as_array().unwrap().iter().find(|e| e["type"] == "m.tag").unwrap();
    assert_eq!(tag_event["content"]["tags"], json!({"m.favourite": {"order": 0.5}}));
    assert_error(&server.get(&tags, Some(&alice.token)).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn presence_reaches_room_mates_only() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let bob_since =
        sync(&server, &bob, "?set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();
    let carol_since =
        sync(&server, &carol, "?set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();

    let status = "/_matrix/client/v3/presence/@alice:localhost/status";
    assert_eq!(
        server.put(status, Some(&alice.token), json!({"presence": "online", "status_msg": "coding"})).await.0,
        200
    );
    assert_error(
        &server.put(status, Some(&bob.token), json!({"presence": "online"})).await,
        403,
        "M_FORBIDDEN",
    );
    let (status_code, body) = server.get(status, Some(&bob.token)).await;
    assert_eq!(status_code, 200);
    assert_eq!((body["presence"].as_str(), body["status_msg"].as_str()), (Some("online"), Some("coding")));
    assert_eq!(body["currently_active"], true);
    assert!(body["last_active_ago"].as_u64().unwrap() < 10_000);

    let body = sync(&server, &bob, &format!("?since={bob_since}&set_presence=offline")).await;
    let events = body["presence"]["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["sender"] == "@alice:localhost" && e["content"]["status_msg"] == "coding"),
        "{events:?}"
    );
    let body = sync(&server, &carol, &format!("?since={carol_since}&set_presence=offline&timeout=0")).await;
    assert!(
        body["presence"]["events"].as_array().unwrap().iter().all(|e| e["sender"] != "@alice:localhost"),
        "no shared room"
    );
    assert_error(
        &server.get("/_matrix/client/v3/presence/@nobody:localhost/status", Some(&bob.token)).await,
        404,
        "M_NOT_FOUND",
    );

    let quiet = TestServer::start_with("allow_registration = true\npresence = false\n").await;
    let dave = quiet.register("dave").await;
    quiet
        .put(
            "/_matrix/client/v3/presence/@dave:localhost/status",
            Some(&dave.token),
            json!({"presence": "online"}),
        )
        .await;
    let (_, body) = quiet.get("/_matrix/client/v3/presence/@dave:localhost/status", Some(&dave.token)).await;
    assert_eq!(body["presence"], "offline", "presence disabled");
}

#[tokio::test]
async fn a_profile_change_is_not_a_new_join() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({}));
    let room = room.await;
    for i in 0..5 {
        send_text(&server, &alice, &room, &format!("m{i}"), "chatter").await;
    }
    let since = sync(&server, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    server
        .put(
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            Some(&alice.token),
            json!({"displayname": "Alice"}),
        )
        .await;
    let body = sync(&server, &alice, &format!("?since={since}")).await;
    let joined = &body["rooms"]["join"][&room];
    let events = joined["timeline"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "only the new member event: {events:?}");
    assert_eq!(events[0]["content"]["displayname"], "Alice");
    assert_eq!(joined["state"]["events"], json!([]), "no full state");
}

#[tokio::test]
async fn redundant_members_only_when_asked() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let members_in = |body: &Value| -> Vec<String> {
        body["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["type"] == "m.room.member")
                    .map(|e| e["state_key"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (filter, redundant) in [
        (
            "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%2C%22state%22%3A%7B%22lazy_load_members%22%3Atrue%7D%7D%7D",
            false,
        ),
        (
            "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%2C%22state%22%3A%7B%22lazy_load_members%22%3Atrue%2C%22include_redundant_members%22%3Atrue%7D%7D%7D",
            true,
        ),
    ] {
        send_text(&server, &alice, &room, &format!("a{redundant}"), "first").await;
        let body = sync(&server, &bob, &format!("?filter={filter}")).await;
        assert!(members_in(&body).contains(&"@alice:localhost".to_owned()), "{body}");
        let since = body["next_batch"].as_str().unwrap().to_owned();
        send_text(&server, &alice, &room, &format!("b{redundant}"), "second").await;
        let body = sync(&server, &bob, &format!("?filter={filter}&since={since}")).await;
        assert_eq!(
            members_in(&body).contains(&"@alice:localhost".to_owned()),
            redundant,
            "redundant={redundant}: {body}"
        );
    }
}

#[tokio::test]
async fn to_device_messages_are_delivered_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (_, second) = server.login("bob", crate::harness::PASSWORD).await;
    let bob_laptop = User {
        user_id: bob.user_id.clone(),
        token: second["access_token"].as_str().unwrap().to_owned(),
        device_id: second["device_id"].as_str().unwrap().to_owned(),
    };
    let since = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();

    let path = "/_matrix/client/v3/sendToDevice/m.room_key_request/t1";
    let body = json!({"messages": {"@bob:localhost": {bob.device_id.clone(): {"n": 1}}}});
    assert_eq!(server.put(path, Some(&alice.token), body.clone()).await.0, 200);
    assert_eq!(
        server.put(path, Some(&alice.token), body).await.0,
        200,
        "same transaction: no second message"
    );
    let first = sync(&server, &bob, &format!("?since={since}")).await;
    let events = first["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{first}");
    assert_eq!(
        events[0],
        json!({"type": "m.room_key_request", "sender": "@alice:localhost", "content": {"n": 1}})
    );
    // Not acknowledged yet (same since): delivered again; acknowledged (next since): gone.
    let again = sync(&server, &bob, &format!("?since={since}")).await;
    assert_eq!(again["to_device"]["events"].as_array().unwrap().len(), 1);
    let next = first["next_batch"].as_str().unwrap();
    let after = sync(&server, &bob, &format!("?since={next}&timeout=0")).await;
    assert_eq!(after["to_device"]["events"], json!([]));
    let laptop_view = sync(&server, &bob_laptop, "").await;
    assert_eq!(laptop_view["to_device"]["events"], json!([]), "other devices get nothing");

    // `*` reaches every device, and wakes a waiting sync.
    let next = after["next_batch"].as_str().unwrap().to_owned();
    let url = format!("{}/_matrix/client/v3/sync?since={next}&timeout=10000", server.base);
    let http = server.http().clone();
    let token = bob_laptop.token.clone();
    let waiting = tokio::spawn(async move {
        http.get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = json!({"messages": {"@bob:localhost": {"*": {"n": 2}}}});
    server.put("/_matrix/client/v3/sendToDevice/m.test/t2", Some(&alice.token), all).await;
    let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(woken["to_device"]["events"][0]["content"]["n"], 2);
    let phone = sync(&server, &bob, &format!("?since={next}")).await;
    assert_eq!(phone["to_device"]["events"][0]["content"]["n"], 2);
}

/// `use_state_after` (v1.16) and its MSC4222 name: `state_after` holds the
/// state at the end of the timeline, including changes within it.
#[tokio::test]
async fn use_state_after_under_both_names() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let since = sync(&server, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/");
    server.put(&path, Some(&alice.token), json!({"topic": "after"})).await;
    for param in ["use_state_after", "org.matrix.msc4222.use_state_after"] {
        let body = sync(&server, &alice, &format!("?since={since}&{param}=true")).await;
        let entry = &body["rooms"]["join"][&room];
        assert!(entry.get("state").is_none(), "{param}: {entry}");
        let after = entry["state_after"]["events"].as_array().expect("state_after");
        assert!(after.iter().any(|e| e["content"]["topic"] == "after"), "{param}: {entry}");
    }
    let body = sync(&server, &alice, &format!("?since={since}")).await;
    assert!(body["rooms"]["join"][&room].get("state_after").is_none());
}

/// The room summary: member counts always; heroes (other members, by user
/// ID, at most five) only for a room without a name or canonical alias, so
/// clients can name it after them.
#[tokio::test]
async fn room_summary_heroes_only_for_unnamed_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut others = Vec::new();
    for name in ["frank", "bob", "erin", "carol", "dave", "gina"] {
        others.push(server.register(name).await);
    }
    let unnamed = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let named = create_room(&server, &alice, json!({"preset": "public_chat", "name": "Named"})).await;
    for user in &others[..2] {
        for room in [&unnamed, &named] {
            let (status, body) = server
                .post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&user.token), json!({}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let body = sync(&server, &alice, "").await;
    let summary = |body: &Value, room: &str| body["rooms"]["join"][room]["summary"].clone();
    assert_eq!(
        summary(&body, &unnamed),
        json!({"m.joined_member_count": 3, "m.invited_member_count": 0, "m.heroes": ["@bob:localhost", "@frank:localhost"]})
    );
    assert_eq!(summary(&body, &named), json!({"m.joined_member_count": 3, "m.invited_member_count": 0}));

    for user in &others[2..] {
        let path = format!("/_matrix/client/v3/rooms/{unnamed}/join");
        assert_eq!(server.post(&path, Some(&user.token), json!({})).await.0, 200);
    }
    let leave = format!("/_matrix/client/v3/rooms/{named}/leave");
    assert_eq!(server.post(&leave, Some(&others[0].token), json!({})).await.0, 200);
    let body = sync(&server, &alice, "").await;
    let heroes =
        ["@bob:localhost", "@carol:localhost", "@dave:localhost", "@erin:localhost", "@frank:localhost"];
    assert_eq!(summary(&body, &unnamed)["m.heroes"], json!(heroes), "five, in user ID order");
    assert_eq!(summary(&body, &unnamed)["m.joined_member_count"], 7);
    assert_eq!(summary(&body, &named)["m.joined_member_count"], 2, "counts follow leaves");
}

/// Users in `m.ignored_user_list` disappear from sync: their messages (not
/// their state) and their invites.
#[tokio::test]
async fn ignored_users_messages_and_invites_are_left_out() {
    let server = TestServer::start().await;
    let (alice, bob, carol) =
        (server.register("alice").await, server.register("bob").await, server.register("carol").await);
    let room = create_room(&server, &carol, json!({"preset": "public_chat"})).await;
    for user in [&alice, &bob] {
        let path = format!("/_matrix/client/v3/rooms/{room}/join");
        assert_eq!(server.post(&path, Some(&user.token), json!({})).await.0, 200);
    }
    let ignore = format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", alice.user_id);
    let list = json!({"ignored_users": {&bob.user_id: {}}});
    assert_eq!(server.put(&ignore, Some(&alice.token), list).await.0, 200);
    send_text(&server, &bob, &room, "b1", "from bob").await;
    send_text(&server, &carol, &room, "c1", "from carol").await;
    let initial = sync(&server, &alice, "").await;
    assert_eq!(bodies(&initial["rooms"]["join"][&room]), ["from carol"]);
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    send_text(&server, &bob, &room, "b2", "bob again").await;
    let quiet = sync(&server, &alice, &format!("?since={since}&timeout=0")).await;
    assert!(quiet["rooms"]["join"].get(&room).is_none(), "only an ignored message: {quiet}");

    let private = create_room(&server, &bob, json!({"invite": [alice.user_id]})).await;
    let body = sync(&server, &alice, "").await;
    assert!(body["rooms"]["invite"].get(&private).is_none(), "an ignored user's invite: {body}");
    let from_carol = create_room(&server, &carol, json!({"invite": [alice.user_id]})).await;
    let body = sync(&server, &alice, "").await;
    assert!(body["rooms"]["invite"].get(&from_carol).is_some(), "others' invites still show: {body}");
}

fn filter_query(filter: Value) -> String {
    format!("filter={}", crate::harness::encode(&filter.to_string()))
}

fn state_members(room: &Value, section: &str) -> Vec<String> {
    let mut members: Vec<String> = room[section]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.member")
                .map(|e| e["state_key"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    members
}

/// Lazy loading: an incremental sync across a gap keeps every membership
/// change of the gap (joins and leaves), and adds a speaker's member event
/// the client was never sent.
#[tokio::test]
async fn lazy_loading_keeps_the_gaps_membership_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let join = format!("/_matrix/client/v3/rooms/{room}/join");
    for user in [&bob, &carol] {
        server.post(&join, Some(&user.token), json!({})).await;
    }
    send_text(&server, &alice, &room, "a0", "hello").await;
    send_text(&server, &alice, &room, "a1", "hello again").await;
    let filter =
        filter_query(json!({"room": {"timeline": {"limit": 2}, "state": {"lazy_load_members": true}}}));
    let first = sync(&server, &alice, &format!("?{filter}")).await;
    assert_eq!(state_members(&first["rooms"]["join"][&room], "state"), ["@alice:localhost"]);
    let since = first["next_batch"].as_str().unwrap();

    // Bob (never sent: he did not speak) speaks; no gap.
    send_text(&server, &bob, &room, "b0", "bob here").await;
    let next = sync(&server, &alice, &format!("?{filter}&since={since}")).await;
    assert_eq!(state_members(&next["rooms"]["join"][&room], "state"), ["@bob:localhost"]);
    let since = next["next_batch"].as_str().unwrap();

    // A gap: Dave joins and Carol leaves, then many messages.
    server.post(&join, Some(&dave.token), json!({})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&carol.token), json!({})).await;
    for i in 0..5 {
        send_text(&server, &alice, &room, &format!("f{i}"), "filler").await;
    }
    let gapped = sync(&server, &alice, &format!("?{filter}&since={since}")).await;
    let joined = &gapped["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    assert_eq!(state_members(joined, "state"), ["@carol:localhost", "@dave:localhost"], "{joined}");
}

/// A room joined and left between two syncs arrives in `leave` with its
/// state; current state the user may not otherwise see (private history)
/// stays in a joined member's timeline.
#[tokio::test]
async fn join_then_leave_and_current_state_under_private_history() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat", "name": "Brief"})).await;
    // No timeline at all: what the client learns of the room is its state.
    let filter = filter_query(json!({"room": {"timeline": {"types": []}, "include_leave": true}}));
    let since = sync(&server, &bob, &format!("?{filter}")).await["next_batch"].as_str().unwrap().to_owned();
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    let body = sync(&server, &bob, &format!("?{filter}&since={since}")).await;
    let left = &body["rooms"]["leave"][&room];
    let state = left["state"]["events"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name"), "the room's state: {left}");

    // Private history: Bob's own rejoin, while Alice is away, stays visible
    // to him as current state.
    let private = create_room(&server, &alice, json!({"preset": "private_chat"})).await;
    let visibility = format!("/_matrix/client/v3/rooms/{private}/state/m.room.history_visibility/");
    server.put(&visibility, Some(&alice.token), json!({"history_visibility": "joined"})).await;
    let invite = json!({"user_id": bob.user_id});
    server.post(&format!("/_matrix/client/v3/rooms/{private}/invite"), Some(&alice.token), invite).await;
    server.post(&format!("/_matrix/client/v3/rooms/{private}/join"), Some(&bob.token), json!({})).await;
    let body = sync(&server, &alice, "").await;
    let timeline = body["rooms"]["join"][&private]["timeline"]["events"].as_array().unwrap().clone();
    let state = body["rooms"]["join"][&private]["state"]["events"].as_array().unwrap().clone();
    let bob_joined =
        |e: &Value| e["state_key"] == bob.user_id.as_str() && e["content"]["membership"] == "join";
    assert!(timeline.iter().chain(state.iter()).any(bob_joined), "{timeline:?}");
}

/// Filters: a timeline limit of 0, the federation event format, and
/// account data types (also for the push rules an initial sync adds).
#[tokio::test]
async fn sync_filter_limits_formats_and_account_data_types() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    send_text(&server, &alice, &room, "m", "hi").await;
    let none =
        sync(&server, &alice, &format!("?{}", filter_query(json!({"room": {"timeline": {"limit": 0}}}))))
            .await;
    let timeline = &none["rooms"]["join"][&room]["timeline"];
    assert_eq!((timeline["events"].as_array().unwrap().len(), timeline["limited"].clone()), (0, json!(true)));

    let federation =
        sync(&server, &alice, &format!("?{}", filter_query(json!({"event_format": "federation"})))).await;
    let events = federation["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().clone();
    assert!(
        events.iter().all(|e| e.get("prev_events").is_some() && e.get("event_id").is_some()),
        "{events:?}"
    );

    let path = format!("/_matrix/client/v3/user/{}/account_data/my.test.type", alice.user_id);
    server.put(&path, Some(&alice.token), json!({"a": 1})).await;
    let only = sync(
        &server,
        &alice,
        &format!("?{}", filter_query(json!({"account_data": {"types": ["my.test.type"]}}))),
    )
    .await;
    let types: Vec<&str> = only["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["my.test.type"]);
}

/// A room joined in an incremental sync is limited (its timeline continues
/// nothing the client has) and brings its members' presence.
#[tokio::test]
async fn newly_joined_room_is_limited_with_members_presence() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    for i in 0..12 {
        send_text(&server, &alice, &room, &format!("m{i}"), "before").await;
    }
    let since = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let body = sync(&server, &bob, &format!("?since={since}")).await;
    assert_eq!(body["rooms"]["join"][&room]["timeline"]["limited"], true);
    let senders: Vec<&str> =
        body["presence"]["events"].as_array().unwrap().iter().filter_map(|e| e["sender"].as_str()).collect();
    assert!(senders.contains(&"@alice:localhost"), "{}", body["presence"]);
}

/// `/context` with lazy loading: only the members who sent what it returns.
#[tokio::test]
async fn context_lazy_loads_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    for name in ["bob", "carol"] {
        let user = server.register(name).await;
        server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&user.token), json!({})).await;
    }
    let (_, sent) = send_text(&server, &alice, &room, "c", "context").await;
    let event = sent["event_id"].as_str().unwrap();
    let filter = filter_query(json!({"lazy_load_members": true}));
    let path = format!("/_matrix/client/v3/rooms/{room}/context/{event}?limit=0&{filter}");
    let (status, body) = server.get(&path, Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    let members: Vec<&str> = body["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["@alice:localhost"], "{body}");
}

/// More to-device messages than one sync carries: the sync ends at the last
/// one it carries, and the next sync delivers the rest (none is lost).
#[tokio::test]
async fn to_device_messages_beyond_one_sync_are_not_lost() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let since = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();
    for n in 0..150 {
        let path = format!("/_matrix/client/v3/sendToDevice/m.test/t{n}");
        let body = json!({"messages": {"@bob:localhost": {bob.device_id.clone(): {"n": n}}}});
        assert_eq!(server.put(&path, Some(&alice.token), body).await.0, 200);
    }
    let mut received = Vec::new();
    let mut since = since;
    for _ in 0..5 {
        let body = sync(&server, &bob, &format!("?since={since}&timeout=0")).await;
        let events = body["to_device"]["events"].as_array().unwrap();
        assert!(events.len() <= 100, "one sync carries at most 100");
        received.extend(events.iter().map(|e| e["content"]["n"].as_u64().unwrap()));
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
    assert_eq!(received, (0..150).collect::<Vec<u64>>(), "every message once, in order");
}

/// Device lists name only users the syncing user shares (or shared) a room
/// with: others joining rooms elsewhere on the server are not reported.
#[tokio::test]
async fn device_lists_leave_out_strangers() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let since = sync(&server, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    let room = create_room(&server, &bob, json!({"preset": "public_chat"})).await;
    let (status, _) =
        server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&carol.token), json!({})).await;
    assert_eq!(status, 200);
    let body = sync(&server, &alice, &format!("?since={since}&timeout=0")).await;
    assert_eq!(body["device_lists"]["changed"], json!([]), "{body}");
}

/// Sync's events are `ClientEventWithoutRoomID` (the room is their key),
/// and per-thread counts come only when the filter asks for them.
#[tokio::test]
async fn sync_events_carry_no_room_id_and_thread_counts_only_on_request() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat", "name": "Ids"})).await;
    let (status, body) =
        server.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    send_text(&server, &alice, &room, "1", "hello").await;

    let initial = sync(&server, &bob, "").await;
    let joined = &initial["rooms"]["join"][&room];
    let timeline = joined["timeline"]["events"].as_array().unwrap();
    assert!(!timeline.is_empty());
    for event in timeline.iter().chain(joined["state"]["events"].as_array().unwrap()) {
        assert!(event.get("room_id").is_none(), "room_id in a sync event: {event}");
        assert!(event["event_id"].is_string() && event["sender"].is_string(), "{event}");
    }
    assert_eq!(joined["unread_notifications"]["notification_count"], 1);
    assert!(joined.get("unread_thread_notifications").is_none(), "not asked for: {joined}");

    // {"room":{"timeline":{"unread_thread_notifications":true}}}
    let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22unread_thread_notifications%22%3Atrue%7D%7D%7D";
    let asked = sync(&server, &bob, &format!("?filter={filter}")).await;
    assert_eq!(asked["rooms"]["join"][&room]["unread_thread_notifications"], json!({}));

    // Other endpoints still name the room in each event.
    let (_, page) = server
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"), Some(&bob.token))
        .await;
    assert_eq!(page["chunk"][0]["room_id"], room.as_str(), "{page}");
}

/// A state event in the timeline says what it replaced (`replaces_state`,
/// `prev_content`, `prev_sender`) so a client can describe the change; in
/// the `state` section, the state a room starts from, only `replaces_state`
/// comes, as from Synapse.
#[tokio::test]
async fn replaced_content_only_in_the_timeline() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let member = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", alice.user_id);
    let (status, body) =
        server.put(&member, Some(&alice.token), json!({"membership": "join", "displayname": "Alice"})).await;
    assert_eq!(status, 200, "{body}");
    send_text(&server, &alice, &room, "1", "after the rename").await;

    let filter = r#"{"room":{"timeline":{"limit":1}}}"#;
    let initial = sync(&server, &alice, &format!("?filter={}", crate::harness::encode(filter))).await;
    let state = initial["rooms"]["join"][&room]["state"]["events"].as_array().unwrap();
    let renamed = state.iter().find(|e| e["type"] == "m.room.member").expect("member event in state");
    assert_eq!(renamed["content"]["displayname"], "Alice");
    assert!(renamed["unsigned"]["replaces_state"].is_string(), "{renamed}");
    assert!(renamed["unsigned"].get("prev_content").is_none(), "{renamed}");
    assert!(renamed["unsigned"].get("prev_sender").is_none(), "{renamed}");

    let since = initial["next_batch"].as_str().unwrap();
    let (status, body) =
        server.put(&member, Some(&alice.token), json!({"membership": "join", "displayname": "Alicia"})).await;
    assert_eq!(status, 200, "{body}");
    let incremental = sync(&server, &alice, &format!("?since={since}")).await;
    let events = incremental["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    let change = events.iter().find(|e| e["type"] == "m.room.member").expect("rename in the timeline");
    assert_eq!(change["unsigned"]["prev_content"]["displayname"], "Alice");
    assert_eq!(change["unsigned"]["prev_sender"], alice.user_id.as_str());
    assert_eq!(change["unsigned"]["replaces_state"], renamed["event_id"]);
}
