//! Rooms: creation, sending, state, membership, power levels, history
//! visibility, redaction, pagination, aliases and the directory.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestServer, User, assert_error};

pub async fn create_room(server: &TestServer, user: &User, body: Value) -> String {
    let (status, response) = server.post("/_matrix/client/v3/createRoom", Some(&user.token), body).await;
    assert_eq!(status, 200, "createRoom: {response}");
    response["room_id"].as_str().unwrap().to_owned()
}

pub async fn send_text(
    server: &TestServer,
    user: &User,
    room: &str,
    txn: &str,
    body: &str,
) -> (StatusCode, Value) {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    server.put(&path, Some(&user.token), json!({"msgtype": "m.text", "body": body})).await
}

fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{room}/{rest}")
}

async fn state_types(server: &TestServer, user: &User, room: &str) -> Vec<String> {
    let (status, body) = server.get(&room_path(room, "state"), Some(&user.token)).await;
    assert_eq!(status, 200, "{body}");
    let mut types: Vec<String> =
        body.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    types.sort();
    types
}

#[tokio::test]
async fn create_room_v12_with_the_spec_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({"name": "Lounge", "topic": "Chat here"})).await;
    assert!(room.starts_with('!') && !room.contains(':'), "v12 room IDs have no server part: {room}");
    let types = state_types(&server, &alice, &room).await;
    for t in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
        "m.room.topic",
    ] {
        assert!(types.contains(&t.to_owned()), "{t} missing from {types:?}");
    }
    let (_, create) = server.get(&room_path(&room, "state/m.room.create"), Some(&alice.token)).await;
    assert_eq!(create["room_version"], "12");
    let (_, name) = server.get(&room_path(&room, "state/m.room.name/"), Some(&alice.token)).await;
    assert_eq!(name, json!({"name": "Lounge"}));
    let (_, event) = server
        .get(&room_path(&room, "state/m.room.member/@alice:localhost?format=event"), Some(&alice.token))
        .await;
    assert_eq!(event["content"]["membership"], "join");
    assert_eq!(event["sender"], "@alice:localhost");
    assert_eq!(event["room_id"], room.as_str());
    // v12: the creator is privileged by the create event, not listed in power levels.
    let (_, power) = server.get(&room_path(&room, "state/m.room.power_levels"), Some(&alice.token)).await;
    assert!(power["users"].get("@alice:localhost").is_none(), "{power}");

    let (_, joined) = server.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert_eq!(joined["joined_rooms"], json!([room]));
    let (_, members) = server.get(&room_path(&room, "joined_members"), Some(&alice.token)).await;
    assert!(members["joined"]["@alice:localhost"].is_object(), "{members}");
}

#[tokio::test]
async fn create_room_options_and_errors() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(
        &server,
        &alice,
        json!({"room_version": "10", "preset": "public_chat", "visibility": "public", "room_alias_name": "town",
               "creation_content": {"room_version": "1", "m.federate": false},
               "initial_state": [{"type": "m.room.topic", "state_key": "", "content": {"topic": "initial"}}]}),
    )
    .await;
    assert!(room.ends_with(":localhost"), "{room}");
    let (_, create) = server.get(&room_path(&room, "state/m.room.create"), Some(&alice.token)).await;
    assert_eq!(create["room_version"], "10", "creation_content cannot override the version");
    assert_eq!(create["creator"], "@alice:localhost");
    assert_eq!(create["m.federate"], false);
    let (_, rules) = server.get(&room_path(&room, "state/m.room.join_rules"), Some(&alice.token)).await;
    assert_eq!(rules["join_rule"], "public");
    let (_, topic) = server.get(&room_path(&room, "state/m.room.topic"), Some(&alice.token)).await;
    assert_eq!(topic["topic"], "initial");
    let (_, power) = server.get(&room_path(&room, "state/m.room.power_levels"), Some(&alice.token)).await;
    assert_eq!(power["users"]["@alice:localhost"], 100);

    let (status, alias) = server.get("/_matrix/client/v3/directory/room/%23town:localhost", None).await;
    assert_eq!(status, 200);
    assert_eq!(alias["room_id"], room.as_str());
    let (_, canonical) =
        server.get(&room_path(&room, "state/m.room.canonical_alias"), Some(&alice.token)).await;
    assert_eq!(canonical["alias"], "#town:localhost");
    let (_, public) = server.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(public["chunk"][0]["room_id"], room.as_str(), "{public}");
    assert_eq!(public["chunk"][0]["canonical_alias"], "#town:localhost");
    assert_eq!(public["chunk"][0]["num_joined_members"], 1);
    let (_, visibility) = server.get(&format!("/_matrix/client/v3/directory/list/room/{room}"), None).await;
    assert_eq!(visibility["visibility"], "public");

    let create = |body: Value| server.post("/_matrix/client/v3/createRoom", Some(&alice.token), body);
    assert_error(&create(json!({"room_version": "99"})).await, 400, "M_UNSUPPORTED_ROOM_VERSION");
    assert_error(&create(json!({"room_alias_name": "town"})).await, 400, "M_ROOM_IN_USE");
    assert_error(&create(json!({"power_level_content_override": {"ban": "lots"}})).await, 400, "M_BAD_JSON");
    assert_error(
        &server.post("/_matrix/client/v3/createRoom", None, json!({})).await,
        401,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn sending_is_idempotent_and_checked() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({})).await;
    let (status, first) = send_text(&server, &alice, &room, "t1", "hello").await;
    assert_eq!(status, 200, "{first}");
    let (_, again) = send_text(&server, &alice, &room, "t1", "hello").await;
    assert_eq!(first["event_id"], again["event_id"], "same transaction, same event");
    let (_, other) = send_text(&server, &alice, &room, "t2", "hello").await;
    assert_ne!(first["event_id"], other["event_id"]);

    let event_id = first["event_id"].as_str().unwrap();
    let (status, event) =
        server.get(&room_path(&room, &format!("event/{event_id}")), Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(event["content"]["body"], "hello");
    assert_eq!(event["unsigned"]["transaction_id"], "t1", "echoed to the sending device");

    assert_error(&send_text(&server, &bob, &room, "t1", "intruder").await, 403, "M_FORBIDDEN");
    assert_error(
        &server.get(&room_path(&room, &format!("event/{event_id}")), Some(&bob.token)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(&send_text(&server, &alice, "!nope:localhost", "t3", "x").await, 404, "M_NOT_FOUND");
    assert_error(
        &server.get(&room_path(&room, "event/$unknown"), Some(&alice.token)).await,
        404,
        "M_NOT_FOUND",
    );
    let huge = "x".repeat(70_000);
    assert_error(&send_text(&server, &alice, &room, "t4", &huge).await, 413, "M_TOO_LARGE");
    let bad_id = server
        .put("/_matrix/client/v3/rooms/not-a-room/send/m.room.message/t5", Some(&alice.token), json!({}))
        .await;
    assert_error(&bad_id, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn membership_transitions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&server, &alice, json!({"preset": "private_chat"})).await;
    macro_rules! post {
        ($user:expr, $rest:expr, $body:expr) => {
            server.post(&room_path(&room, $rest), Some(&$user.token), $body).await
        };
    }

    assert_error(&post!(bob, "join", json!({})), 403, "M_FORBIDDEN");
    assert_eq!(post!(alice, "invite", json!({"user_id": "@bob:localhost"})).0, 200);
    let (_, member) =
        server.get(&room_path(&room, "state/m.room.member/@bob:localhost"), Some(&alice.token)).await;
    assert_eq!(member["membership"], "invite");
    assert_eq!(post!(bob, "join", json!({"reason": "hi"})).0, 200);
    assert_eq!(send_text(&server, &bob, &room, "b1", "I am in").await.0, 200);

    // Bob (power 0) may not kick, invite is allowed at 0 by default.
    assert_eq!(post!(alice, "invite", json!({"user_id": "@carol:localhost"})).0, 200);
    assert_eq!(post!(carol, "join", json!({})).0, 200);
    assert_error(&post!(bob, "kick", json!({"user_id": "@carol:localhost"})), 403, "M_FORBIDDEN");
    assert_eq!(post!(alice, "kick", json!({"user_id": "@carol:localhost", "reason": "bye"})).0, 200);
    let (_, member) =
        server.get(&room_path(&room, "state/m.room.member/@carol:localhost"), Some(&alice.token)).await;
    assert_eq!((member["membership"].as_str(), member["reason"].as_str()), (Some("leave"), Some("bye")));

    assert_error(&post!(bob, "ban", json!({"user_id": "@carol:localhost"})), 403, "M_FORBIDDEN");
    assert_eq!(post!(alice, "ban", json!({"user_id": "@carol:localhost"})).0, 200);
    assert_error(&post!(carol, "join", json!({})), 403, "M_FORBIDDEN");
    assert_eq!(
        post!(alice, "invite", json!({"user_id": "@carol:localhost"})).0,
        403,
        "banned users cannot be invited"
    );
    assert_eq!(post!(alice, "unban", json!({"user_id": "@carol:localhost"})).0, 200);
    assert_error(&post!(alice, "unban", json!({"user_id": "@carol:localhost"})), 403, "M_FORBIDDEN");

    let (_, members) = server.get(&room_path(&room, "members?membership=join"), Some(&alice.token)).await;
    let joined: Vec<&str> =
        members["chunk"].as_array().unwrap().iter().map(|e| e["state_key"].as_str().unwrap()).collect();
    assert_eq!(joined, ["@alice:localhost", "@bob:localhost"]);
    let (_, not_joined) =
        server.get(&room_path(&room, "members?not_membership=join"), Some(&alice.token)).await;
    assert_eq!(not_joined["chunk"].as_array().unwrap().len(), 1);

    assert_error(&post!(bob, "forget", json!({})), 400, "M_UNKNOWN");
    assert_eq!(post!(bob, "leave", json!({})).0, 200);
    assert_eq!(post!(bob, "forget", json!({})).0, 200);
    let (_, joined) = server.get("/_matrix/client/v3/joined_rooms", Some(&bob.token)).await;
    assert_eq!(joined["joined_rooms"], json!([]));
    assert_error(&send_text(&server, &bob, &room, "b2", "gone").await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn join_public_rooms_by_alias() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room =
        create_room(&server, &alice, json!({"preset": "public_chat", "room_alias_name": "plaza"})).await;
    let (status, body) =
        server.post("/_matrix/client/v3/join/%23plaza:localhost", Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_error(
        &server.post("/_matrix/client/v3/join/%23nowhere:localhost", Some(&bob.token), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    let (_, members) = server.get(&room_path(&room, "joined_members"), Some(&bob.token)).await;
    assert_eq!(members["joined"].as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn power_levels_and_state_validation() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&room_path(&room, "join"), Some(&bob.token), json!({})).await;
    macro_rules! put {
        ($user:expr, $rest:expr, $body:expr) => {
            server.put(&room_path(&room, $rest), Some(&$user.token), $body).await
        };
    }

    let denied = put!(bob, "state/m.room.name", json!({"name": "Bob's room"}));
    assert_error(&denied, 403, "M_FORBIDDEN");
    assert!(denied.1["error"].as_str().unwrap().len() > 10, "the reason is given");
    assert_eq!(put!(alice, "state/m.room.name", json!({"name": "Alice's room"})).0, 200);
    assert_eq!(put!(alice, "state/m.room.name/", json!({"name": "Trailing slash"})).0, 200);

    assert_error(&put!(alice, "state/m.room.join_rules", json!({"join_rule": 5})), 400, "M_BAD_JSON");
    assert_error(&put!(alice, "state/m.room.power_levels", json!({"users": "everyone"})), 400, "M_BAD_JSON");
    assert_error(
        &put!(alice, "state/m.room.member/@bob:localhost", json!({"membership": 1})),
        400,
        "M_BAD_JSON",
    );
    // Content the authorization rules do not read is stored as sent:
    // matrix-js-sdk and Element send `m.topic` in the MSC3765 array form.
    let topic = json!({"topic": "Plans", "m.topic": [{"body": "Plans", "mimetype": "text/plain"}]});
    assert_eq!(put!(alice, "state/m.room.topic", topic.clone()).0, 200);
    let (_, stored) = server.get(&room_path(&room, "state/m.room.topic"), Some(&alice.token)).await;
    assert_eq!(stored, topic);
    assert_eq!(
        put!(alice, "state/m.room.name", json!({"name": 7})).0,
        200,
        "a client's odd name is its own business"
    );
    assert_error(
        &put!(alice, "state/m.room.canonical_alias", json!({"alias": "#elsewhere:localhost"})),
        400,
        "M_BAD_ALIAS",
    );

    // Promote bob; now he can change the name.
    let (_, mut power) = server.get(&room_path(&room, "state/m.room.power_levels"), Some(&alice.token)).await;
    power["users"]["@bob:localhost"] = json!(50);
    assert_eq!(put!(alice, "state/m.room.power_levels", power).0, 200);
    assert_eq!(put!(bob, "state/m.room.name", json!({"name": "Bob's now"})).0, 200);
    let (_, name) = server.get(&room_path(&room, "state/m.room.name"), Some(&bob.token)).await;
    assert_eq!(name["name"], "Bob's now");
    assert_error(
        &server.get(&room_path(&room, "state/m.room.nothing"), Some(&bob.token)).await,
        404,
        "M_NOT_FOUND",
    );
}

async fn timeline_bodies(server: &TestServer, user: &User, room: &str) -> Vec<String> {
    message_bodies(server, user, room, "dir=b&limit=100").await
}

/// The message bodies of a `/messages` page (`query` its parameters).
pub async fn message_bodies(server: &TestServer, user: &User, room: &str, query: &str) -> Vec<String> {
    let (status, page) = server.get(&room_path(room, &format!("messages?{query}")), Some(&user.token)).await;
    assert_eq!(status, 200, "{page}");
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn history_visibility_is_enforced() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let joined_only = create_room(&server, &alice, json!({"preset": "public_chat",
        "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]})).await;
    send_text(&server, &alice, &joined_only, "a1", "before bob").await;
    server.post(&room_path(&joined_only, "join"), Some(&bob.token), json!({})).await;
    send_text(&server, &alice, &joined_only, "a2", "after bob").await;
    assert_eq!(timeline_bodies(&server, &bob, &joined_only).await, ["after bob"]);
    assert_eq!(timeline_bodies(&server, &alice, &joined_only).await, ["after bob", "before bob"]);

    let shared = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    send_text(&server, &alice, &shared, "s1", "old news").await;
    server.post(&room_path(&shared, "join"), Some(&bob.token), json!({})).await;
    assert_eq!(
        timeline_bodies(&server, &bob, &shared).await,
        ["old news"],
        "shared: history is visible to members"
    );
    server.post(&room_path(&shared, "leave"), Some(&bob.token), json!({})).await;
    send_text(&server, &alice, &shared, "s2", "after bob left").await;
    assert_eq!(timeline_bodies(&server, &bob, &shared).await, ["old news"], "nothing after leaving");
    let (_, state) =
        server.get(&room_path(&shared, "state/m.room.member/@bob:localhost"), Some(&bob.token)).await;
    assert_eq!(state["membership"], "leave", "state as of leaving");

    assert_error(
        &server.get(&room_path(&shared, "messages?dir=b"), Some(&carol.token)).await,
        403,
        "M_FORBIDDEN",
    );
    let readable = create_room(&server, &alice, json!({"preset": "public_chat",
        "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}]})).await;
    send_text(&server, &alice, &readable, "w1", "for everyone").await;
    assert_eq!(timeline_bodies(&server, &carol, &readable).await, ["for everyone"]);

    // A change of visibility is seen by those who may see events under the
    // old or the new setting: "joined" to "shared" is visible to later members.
    let boundary = create_room(&server, &alice, json!({"preset": "public_chat",
        "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]})).await;
    send_text(&server, &alice, &boundary, "b1", "private era").await;
    let visibility = room_path(&boundary, "state/m.room.history_visibility/");
    server.put(&visibility, Some(&alice.token), json!({"history_visibility": "shared"})).await;
    server.post(&room_path(&boundary, "join"), Some(&carol.token), json!({})).await;
    let (_, page) = server.get(&room_path(&boundary, "messages?dir=b&limit=50"), Some(&carol.token)).await;
    let seen: Vec<&Value> = page["chunk"].as_array().unwrap().iter().collect();
    assert!(
        seen.iter()
            .any(|e| e["type"] == "m.room.history_visibility"
                && e["content"]["history_visibility"] == "shared"),
        "{page}"
    );
    assert!(!seen.iter().any(|e| e["content"]["body"] == "private era"), "{page}");
}

#[tokio::test]
async fn redaction_strips_content_in_storage() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&room_path(&room, "join"), Some(&bob.token), json!({})).await;
    let (_, mine) = send_text(&server, &bob, &room, "b1", "oops").await;
    let (_, hers) = send_text(&server, &alice, &room, "a1", "important").await;
    macro_rules! redact {
        ($user:expr, $event:expr, $txn:expr) => {{
            let path = room_path(&room, &format!("redact/{}/{}", $event["event_id"].as_str().unwrap(), $txn));
            server.put(&path, Some(&$user.token), json!({"reason": "cleanup"})).await
        }};
    }
    assert_error(&redact!(bob, &hers, "r1"), 403, "M_FORBIDDEN");
    let (status, redaction) = redact!(bob, &mine, "r2");
    assert_eq!(status, 200, "{redaction}");
    let path = room_path(&room, &format!("event/{}", mine["event_id"].as_str().unwrap()));
    let (_, event) = server.get(&path, Some(&alice.token)).await;
    assert_eq!(event["content"], json!({}), "{event}");
    assert_eq!(event["unsigned"]["redacted_because"]["event_id"], redaction["event_id"]);
    assert_eq!(event["unsigned"]["redacted_by"], redaction["event_id"], "as Synapse names it too");
    let (_, redaction_event) = server
        .get(
            &room_path(&room, &format!("event/{}", redaction["event_id"].as_str().unwrap())),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        redaction_event["redacts"], mine["event_id"],
        "v12 carries redacts at the top level for clients too"
    );
    assert_eq!(redact!(alice, &hers, "r3").0, 200);
    assert_error(
        &server.put(&room_path(&room, "redact/$missing/r4"), Some(&alice.token), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    // The legacy POST without a transaction ID, which SyTest and old clients use.
    let (_, legacy) = send_text(&server, &bob, &room, "b2", "also oops").await;
    let legacy_path = room_path(&room, &format!("redact/{}", legacy["event_id"].as_str().unwrap()));
    assert_error(&server.post(&legacy_path, Some(&alice.token), json!([])).await, 400, "M_BAD_JSON");
    assert_error(&server.post(&legacy_path, None, json!({})).await, 401, "M_MISSING_TOKEN");
    let (status, redaction) = server.post(&legacy_path, Some(&bob.token), json!({"reason": "legacy"})).await;
    assert_eq!(status, 200, "{redaction}");
    let path = room_path(&room, &format!("event/{}", redaction["event_id"].as_str().unwrap()));
    let (_, redaction_event) = server.get(&path, Some(&alice.token)).await;
    assert_eq!(
        (&redaction_event["redacts"], &redaction_event["content"]["reason"]),
        (&legacy["event_id"], &json!("legacy"))
    );
}

#[tokio::test]
async fn messages_paginate_both_ways_with_filters() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&room_path(&room, "join"), Some(&bob.token), json!({})).await;
    for i in 0..12 {
        let sender = if i % 3 == 0 { &bob } else { &alice };
        send_text(&server, sender, &room, &format!("m{i}"), &format!("message {i}")).await;
    }
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let query = match &from {
            Some(token) => format!(
                "messages?dir=b&limit=5&from={token}&filter=%7B%22types%22%3A%5B%22m.room.message%22%5D%7D"
            ),
            None => "messages?dir=b&limit=5&filter=%7B%22types%22%3A%5B%22m.room.message%22%5D%7D".to_owned(),
        };
        let (status, page) = server.get(&room_path(&room, &query), Some(&alice.token)).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["content"]["body"].as_str().unwrap().to_owned()),
        );
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..12).rev().map(|i| format!("message {i}")).collect();
    assert_eq!(seen, expected);

    let (_, forward) = server.get(&room_path(&room, "messages?dir=f&limit=3"), Some(&alice.token)).await;
    assert_eq!(forward["chunk"][0]["type"], "m.room.create", "forward from the start");
    let filter = "%7B%22not_senders%22%3A%5B%22%40alice%3Alocalhost%22%5D%2C%22types%22%3A%5B%22m.room.message%22%5D%2C%22lazy_load_members%22%3Atrue%7D";
    let (_, bobs) = server
        .get(&room_path(&room, &format!("messages?dir=b&limit=50&filter={filter}")), Some(&alice.token))
        .await;
    let bodies: Vec<&str> =
        bobs["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["message 9", "message 6", "message 3", "message 0"]);
    let lazy: Vec<&str> =
        bobs["state"].as_array().unwrap().iter().map(|e| e["state_key"].as_str().unwrap()).collect();
    assert_eq!(lazy, ["@bob:localhost"], "lazy-loaded members are the senders on the page");
    assert_error(
        &server.get(&room_path(&room, "messages?dir=b&from=garbage"), Some(&alice.token)).await,
        400,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn aliases_and_directory_visibility() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({})).await;
    let alias_path = "/_matrix/client/v3/directory/room/%23hideout:localhost";
    assert_eq!(server.put(alias_path, Some(&alice.token), json!({"room_id": room})).await.0, 200);
    assert_eq!(server.put(alias_path, Some(&alice.token), json!({"room_id": room})).await.0, 409);
    assert_error(
        &server
            .put(
                "/_matrix/client/v3/directory/room/%23x:elsewhere.org",
                Some(&alice.token),
                json!({"room_id": room}),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );
    let (_, aliases) = server.get(&room_path(&room, "aliases"), Some(&alice.token)).await;
    assert_eq!(aliases["aliases"], json!(["#hideout:localhost"]));
    assert_error(&server.get(&room_path(&room, "aliases"), Some(&bob.token)).await, 403, "M_FORBIDDEN");
    assert_error(&server.delete(alias_path, Some(&bob.token)).await, 403, "M_FORBIDDEN");
    assert_eq!(server.delete(alias_path, Some(&alice.token)).await.0, 200);
    assert_error(&server.get(alias_path, None).await, 404, "M_NOT_FOUND");

    let list = format!("/_matrix/client/v3/directory/list/room/{room}");
    assert_eq!(server.get(&list, None).await.1["visibility"], "private");
    assert_error(
        &server.put(&list, Some(&bob.token), json!({"visibility": "public"})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(server.put(&list, Some(&alice.token), json!({"visibility": "public"})).await.0, 200);
    server
        .put(&room_path(&room, "state/m.room.name"), Some(&alice.token), json!({"name": "Secret Garden"}))
        .await;
    let (_, found) = server
        .post(
            "/_matrix/client/v3/publicRooms",
            Some(&alice.token),
            json!({"filter": {"generic_search_term": "garden"}}),
        )
        .await;
    assert_eq!(found["chunk"][0]["name"], "Secret Garden", "{found}");
    let (_, none) = server
        .post(
            "/_matrix/client/v3/publicRooms",
            Some(&alice.token),
            json!({"filter": {"generic_search_term": "desert"}}),
        )
        .await;
    assert_eq!(none["chunk"], json!([]));
    for i in 0..3 {
        let other =
            create_room(&server, &alice, json!({"visibility": "public", "name": format!("room {i}")})).await;
        assert!(!other.is_empty());
    }
    let (_, page1) = server.get("/_matrix/client/v3/publicRooms?limit=2", None).await;
    assert_eq!(page1["chunk"].as_array().unwrap().len(), 2);
    assert_eq!(page1["total_room_count_estimate"], 4);
    let next = page1["next_batch"].as_str().unwrap();
    let (_, page2) = server.get(&format!("/_matrix/client/v3/publicRooms?limit=2&since={next}"), None).await;
    assert_eq!(page2["chunk"].as_array().unwrap().len(), 2);
    assert_ne!(page1["chunk"][0]["room_id"], page2["chunk"][0]["room_id"]);
}

#[tokio::test]
async fn rooms_survive_kill_9_and_keep_working() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({"name": "Durable"})).await;
    send_text(&server, &alice, &room, "d1", "before crash").await;
    let dir = server.kill();
    let server = TestServer::start_in(dir, "allow_registration = true\n");
    assert_eq!(send_text(&server, &alice, &room, "d1", "before crash").await.0, 200, "txn remembered");
    assert_eq!(send_text(&server, &alice, &room, "d2", "after crash").await.0, 200);
    server
        .put(&room_path(&room, "state/m.room.topic"), Some(&alice.token), json!({"topic": "still here"}))
        .await;
    assert_eq!(timeline_bodies(&server, &alice, &room).await, ["after crash", "before crash"]);
    let (_, name) = server.get(&room_path(&room, "state/m.room.name"), Some(&alice.token)).await;
    assert_eq!(name["name"], "Durable");
    let second = create_room(&server, &alice, json!({})).await;
    assert_ne!(second, room);
}

#[tokio::test]
async fn every_room_version_works() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    for version in 1..=12 {
        let room = create_room(
            &server,
            &alice,
            json!({"room_version": version.to_string(), "preset": "public_chat"}),
        )
        .await;
        assert_eq!(
            server.post(&room_path(&room, "join"), Some(&bob.token), json!({})).await.0,
            200,
            "v{version}"
        );
        let (status, sent) = send_text(&server, &bob, &room, &format!("v{version}"), "hi").await;
        assert_eq!(status, 200, "v{version}: {sent}");
        let event_id = sent["event_id"].as_str().unwrap();
        if version <= 2 {
            assert!(event_id.ends_with(":localhost"), "v{version} event IDs name the server: {event_id}");
        } else {
            assert!(!event_id.contains(':'), "v{version} event IDs are hashes: {event_id}");
        }
        let put = server
            .put(
                &room_path(&room, "state/m.room.topic"),
                Some(&alice.token),
                json!({"topic": format!("v{version}")}),
            )
            .await;
        assert_eq!(put.0, 200, "v{version}: {}", put.1);
        let (_, create) = server.get(&room_path(&room, "state/m.room.create"), Some(&alice.token)).await;
        assert_eq!(create["room_version"], version.to_string());
    }
}

#[tokio::test]
async fn create_room_sends_events_in_the_spec_order() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    server.register("bob").await;
    let room = create_room(
        &server,
        &alice,
        json!({"preset": "private_chat", "room_alias_name": "ordered", "name": "N", "topic": "T",
        "invite": ["@bob:localhost"], "is_direct": true,
        "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    )
    .await;
    let (_, page) = server.get(&room_path(&room, "messages?dir=f&limit=20"), Some(&alice.token)).await;
    let types: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "m.room.create",
            "m.room.member",
            "m.room.power_levels",
            "m.room.canonical_alias",
            "m.room.join_rules",
            "m.room.history_visibility",
            "m.room.guest_access",
            "m.room.encryption",
            "m.room.name",
            "m.room.topic",
            "m.room.member"
        ]
    );
    let invite = &page["chunk"][10];
    assert_eq!(
        (invite["state_key"].as_str(), invite["content"]["membership"].as_str()),
        (Some("@bob:localhost"), Some("invite"))
    );
    assert_eq!(invite["content"]["is_direct"], true);
}

#[tokio::test]
async fn transactions_are_per_device_and_filters_and_tokens() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let (_, first) = send_text(&server, &alice, &room, "same", "one").await;
    let (_, login) = server.login("alice", crate::harness::PASSWORD).await;
    let laptop = User {
        user_id: alice.user_id.clone(),
        token: login["access_token"].as_str().unwrap().to_owned(),
        device_id: String::new(),
    };
    let (_, second) = send_text(&server, &laptop, &room, "same", "two").await;
    assert_ne!(first["event_id"], second["event_id"], "another device's transaction is another event");
    let (_, event) = server
        .get(
            &room_path(&room, &format!("event/{}", first["event_id"].as_str().unwrap())),
            Some(&laptop.token),
        )
        .await;
    assert!(
        event["unsigned"].get("transaction_id").is_none(),
        "transaction IDs are only echoed to their device"
    );

    let image = json!({"msgtype": "m.image", "body": "pic", "url": "mxc://localhost/abc"});
    server.put(&room_path(&room, "send/m.room.message/img"), Some(&alice.token), image).await;
    server.put(&room_path(&room, "send/m.reaction/r"), Some(&alice.token), json!({})).await;
    macro_rules! get {
        ($filter:expr) => {
            server
                .get(
                    &room_path(&room, &format!("messages?dir=b&limit=50&filter={}", $filter)),
                    Some(&alice.token),
                )
                .await
        };
    }
    let (_, with_url) = get!("%7B%22contains_url%22%3Atrue%7D");
    assert_eq!(with_url["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(with_url["chunk"][0]["content"]["body"], "pic");
    let (_, no_state) = get!("%7B%22not_types%22%3A%5B%22m.room.*%22%5D%7D");
    let types: Vec<&str> =
        no_state["chunk"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["m.reaction"]);

    // `to` bounds a page; `at` gives the member list as it was.
    let (_, newest) = server.get(&room_path(&room, "messages?dir=b&limit=2"), Some(&alice.token)).await;
    let stop = newest["end"].as_str().unwrap();
    let (_, bounded) = server
        .get(&room_path(&room, &format!("messages?dir=b&limit=50&to={stop}")), Some(&alice.token))
        .await;
    assert_eq!(bounded["chunk"].as_array().unwrap().len(), 2);
    let beyond = bounded["end"].as_str().unwrap();
    let (_, past) = server
        .get(
            &room_path(&room, &format!("messages?dir=b&limit=50&from={beyond}&to={stop}")),
            Some(&alice.token),
        )
        .await;
    assert_eq!(past["chunk"], json!([]), "nothing beyond `to`");
    assert!(past.get("end").is_none_or(|e| e.is_null()), "{past}");
    server.register("bob").await;
    server.post(&room_path(&room, "invite"), Some(&alice.token), json!({"user_id": "@bob:localhost"})).await;
    let (_, now) = server.get(&room_path(&room, "members"), Some(&alice.token)).await;
    assert_eq!(now["chunk"].as_array().unwrap().len(), 2);
    let (_, then) = server.get(&room_path(&room, &format!("members?at={stop}")), Some(&alice.token)).await;
    assert_eq!(then["chunk"].as_array().unwrap().len(), 1, "{then}");
}

#[tokio::test]
async fn invited_history_visibility() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "invited"}}]})).await;
    send_text(&server, &alice, &room, "1", "before invite").await;
    server.post(&room_path(&room, "invite"), Some(&alice.token), json!({"user_id": "@bob:localhost"})).await;
    send_text(&server, &alice, &room, "2", "while invited").await;
    server.post(&room_path(&room, "join"), Some(&bob.token), json!({})).await;
    send_text(&server, &alice, &room, "3", "after join").await;
    assert_eq!(timeline_bodies(&server, &bob, &room).await, ["after join", "while invited"]);
}
