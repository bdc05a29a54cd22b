//! Message search and the user directory.

use serde_json::{Value, json};

use crate::{
    harness::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

async fn search(server: &TestServer, user: &User, criteria: Value, next_batch: Option<&str>) -> Value {
    let path = match next_batch {
        Some(token) => format!("/_matrix/client/v3/search?next_batch={token}"),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    let (status, body) =
        server.post(&path, Some(&user.token), json!({"search_categories": {"room_events": criteria}})).await;
    assert_eq!(status, 200, "{body}");
    body["search_categories"]["room_events"].clone()
}

fn bodies(results: &Value) -> Vec<String> {
    results["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["result"]["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn finds_words_by_stem_and_per_character_scripts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({"name": "Gardening club"})).await;
    send_text(&server, &alice, &room, "1", "I am running late for the meeting").await;
    send_text(&server, &alice, &room, "2", "東京タワーで会いましょう").await;
    send_text(&server, &alice, &room, "3", "nothing relevant").await;
    let found = search(&server, &alice, json!({"search_term": "RUNS"}), None).await;
    assert_eq!(bodies(&found), ["I am running late for the meeting"], "{found}");
    assert_eq!(found["count"], 1);
    assert_eq!(found["highlights"], json!(["runs"]));
    let found = search(&server, &alice, json!({"search_term": "東京"}), None).await;
    assert_eq!(bodies(&found), ["東京タワーで会いましょう"]);
    let found = search(&server, &alice, json!({"search_term": "late meeting"}), None).await;
    assert_eq!(found["count"], 1, "every word must match");
    let found = search(&server, &alice, json!({"search_term": "late zebra"}), None).await;
    assert_eq!(found["count"], 0);
    let found =
        search(&server, &alice, json!({"search_term": "gardening", "keys": ["content.name"]}), None).await;
    assert_eq!(found["results"][0]["result"]["type"], "m.room.name", "{found}");
    let found =
        search(&server, &alice, json!({"search_term": "gardening", "keys": ["content.body"]}), None).await;
    assert_eq!(found["count"], 0);
    let (status, body) = server
        .post(
            "/_matrix/client/v3/search",
            Some(&alice.token),
            json!({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.nope"]}}}),
        )
        .await;
    assert!(status == 400, "{body}");
}

#[tokio::test]
async fn redacted_and_invisible_messages_are_not_found() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let (_, sent) = send_text(&server, &alice, &room, "1", "secret pineapple plan").await;
    let event_id = sent["event_id"].as_str().unwrap();
    assert_eq!(search(&server, &alice, json!({"search_term": "pineapple"}), None).await["count"], 1);
    let path = format!("/_matrix/client/v3/rooms/{room}/redact/{event_id}/r1");
    let (status, _) = server.put(&path, Some(&alice.token), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        search(&server, &alice, json!({"search_term": "pineapple"}), None).await["count"],
        0,
        "redacted"
    );

    // Bob is not in the room: nothing. After joining a room with `joined`
    // history, he finds what was said after his join only.
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/");
    server.put(&path, Some(&alice.token), json!({"history_visibility": "joined"})).await;
    send_text(&server, &alice, &room, "2", "mango before bob").await;
    assert_eq!(search(&server, &bob, json!({"search_term": "mango"}), None).await["count"], 0);
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    send_text(&server, &alice, &room, "3", "mango after bob").await;
    let found = search(&server, &bob, json!({"search_term": "mango"}), None).await;
    assert_eq!(bodies(&found), ["mango after bob"], "{found}");
}

#[tokio::test]
async fn pagination_ordering_context_state_and_groups() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({"name": "Fruit"})).await;
    send_text(&server, &alice, &room, "rank", "apple apple apple pie").await;
    for i in 0..14 {
        send_text(&server, &alice, &room, &format!("t{i}"), &format!("apple number {i}")).await;
    }
    let recent = search(&server, &alice, json!({"search_term": "apple", "order_by": "recent"}), None).await;
    assert_eq!(recent["count"], 15);
    let first_page = bodies(&recent);
    assert_eq!(first_page.len(), 10);
    assert_eq!(first_page[0], "apple number 13", "newest first");
    let next = recent["next_batch"].as_str().expect("next_batch").to_owned();
    let rest =
        search(&server, &alice, json!({"search_term": "apple", "order_by": "recent"}), Some(&next)).await;
    assert_eq!(bodies(&rest).len(), 5);
    assert!(rest.get("next_batch").is_none(), "{rest}");
    assert_eq!(bodies(&rest).last().unwrap(), "apple apple apple pie");

    let ranked = search(&server, &alice, json!({"search_term": "apple", "order_by": "rank"}), None).await;
    assert_eq!(bodies(&ranked)[0], "apple apple apple pie", "most occurrences first");

    let criteria = json!({
        "search_term": "apple", "order_by": "recent", "filter": {"limit": 1},
        "event_context": {"before_limit": 2, "after_limit": 1, "include_profile": true},
        "include_state": true,
        "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
    });
    let found = search(&server, &alice, criteria, None).await;
    let context = &found["results"][0]["context"];
    assert_eq!(context["events_before"].as_array().unwrap().len(), 2, "{context}");
    assert_eq!(context["events_before"][0]["content"]["body"], "apple number 12");
    assert_eq!(context["profile_info"]["@alice:localhost"]["displayname"], "alice", "{context}");
    assert!(found["state"][&room].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"));
    assert_eq!(found["groups"]["room_id"][&room]["results"].as_array().unwrap().len(), 1);
    assert!(found["groups"]["sender"]["@alice:localhost"].is_object(), "{found}");
}

#[tokio::test]
async fn user_directory_finds_room_mates_and_public_room_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    server.register("erin").await;
    let shared =
        create_room(&server, &alice, json!({"preset": "private_chat", "invite": ["@carol:localhost"]})).await;
    server.post(&format!("/_matrix/client/v3/join/{shared}"), Some(&carol.token), json!({})).await;
    create_room(&server, &dave, json!({"preset": "public_chat", "visibility": "public"})).await;
    let path = "/_matrix/client/v3/profile/@carol:localhost/displayname";
    server.put(path, Some(&carol.token), json!({"displayname": "Carol Danvers"})).await;

    let find = |term: &str| {
        let body = json!({"search_term": term, "limit": 10});
        let token = alice.token.clone();
        let server = &server;
        async move { server.post("/_matrix/client/v3/user_directory/search", Some(&token), body).await.1 }
    };
    let found = find("danv").await;
    assert_eq!(
        found["results"],
        json!([{"user_id": "@carol:localhost", "display_name": "Carol Danvers"}]),
        "{found}"
    );
    assert_eq!(found["limited"], false);
    let found = find("dave").await;
    assert_eq!(found["results"][0]["user_id"], "@dave:localhost", "in a public room: {found}");
    let found = find("erin").await;
    assert_eq!(found["results"], json!([]), "a stranger is not listed");
    assert_eq!(find("alice").await["results"], json!([]), "nor the searcher, in private rooms only");

    // Open rooms, published or not: a public join rule or world-readable
    // history; members go when the room closes.
    let erin =
        server.login("erin", crate::harness::PASSWORD).await.1["access_token"].as_str().unwrap().to_owned();
    let unpublished = create_room(&server, &dave, json!({"preset": "private_chat"})).await;
    let rules = format!("/_matrix/client/v3/rooms/{unpublished}/state/m.room.join_rules/");
    server.put(&rules, Some(&dave.token), json!({"join_rule": "public"})).await;
    server.post(&format!("/_matrix/client/v3/join/{unpublished}"), Some(&erin), json!({})).await;
    assert_eq!(find("erin").await["results"][0]["user_id"], "@erin:localhost");
    server.put(&rules, Some(&dave.token), json!({"join_rule": "invite"})).await;
    assert_eq!(find("erin").await["results"], json!([]), "the room closed");
    let visibility = format!("/_matrix/client/v3/rooms/{unpublished}/state/m.room.history_visibility/");
    server.put(&visibility, Some(&dave.token), json!({"history_visibility": "world_readable"})).await;
    assert_eq!(find("erin").await["results"][0]["user_id"], "@erin:localhost", "world readable");
    assert_error(
        &server.post("/_matrix/client/v3/user_directory/search", None, json!({"search_term": "x"})).await,
        401,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn user_directory_can_list_every_local_user() {
    let server =
        TestServer::start_with("allow_registration = true\nuser_directory_search_all_users = true\n").await;
    let alice = server.register("alice").await;
    server.register("erin").await;
    let (status, found) = server
        .post("/_matrix/client/v3/user_directory/search", Some(&alice.token), json!({"search_term": "eri"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["results"][0]["user_id"], "@erin:localhost", "{found}");
}
