//! Knocking, restricted joins, profile propagation, upgrades and spaces.

use serde_json::{Value, json};

use crate::{
    harness::{TestServer, assert_error},
    rooms::{create_room, send_text},
};

fn path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{room}/{rest}")
}

#[tokio::test]
async fn knocking_and_restricted_joins() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let knock_room = create_room(
        &server,
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/knock/{knock_room}"),
            Some(&bob.token),
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, member) =
        server.get(&path(&knock_room, "state/m.room.member/@bob:localhost"), Some(&alice.token)).await;
    assert_eq!(member["membership"], "knock");
    assert_eq!(
        server
            .post(&path(&knock_room, "invite"), Some(&alice.token), json!({"user_id": "@bob:localhost"}))
            .await
            .0,
        200
    );
    assert_eq!(server.post(&path(&knock_room, "join"), Some(&bob.token), json!({})).await.0, 200);
    let invite_only = create_room(&server, &alice, json!({})).await;
    assert_error(
        &server.post(&format!("/_matrix/client/v3/knock/{invite_only}"), Some(&bob.token), json!({})).await,
        403,
        "M_FORBIDDEN",
    );

    // Restricted: members of the space may join without an invite.
    let space = create_room(&server, &alice, json!({"creation_content": {"type": "m.space"}})).await;
    let rules =
        json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]});
    let restricted = create_room(
        &server,
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "content": rules}]}),
    )
    .await;
    assert_error(
        &server.post(&path(&restricted, "join"), Some(&bob.token), json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    server.post(&path(&space, "invite"), Some(&alice.token), json!({"user_id": "@bob:localhost"})).await;
    assert_eq!(server.post(&path(&space, "join"), Some(&bob.token), json!({})).await.0, 200);
    let (status, body) = server.post(&path(&restricted, "join"), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (_, member) =
        server.get(&path(&restricted, "state/m.room.member/@bob:localhost"), Some(&alice.token)).await;
    assert_eq!(member["join_authorised_via_users_server"], "@alice:localhost");
}

#[tokio::test]
async fn profile_changes_reach_member_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let (status, _) = server
        .put(
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            Some(&alice.token),
            json!({"displayname": "Alice A."}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, member) =
        server.get(&path(&room, "state/m.room.member/@alice:localhost"), Some(&alice.token)).await;
    assert_eq!(member["displayname"], "Alice A.");
    assert_eq!(member["membership"], "join");
    let second = create_room(&server, &alice, json!({})).await;
    let (_, member) =
        server.get(&path(&second, "state/m.room.member/@alice:localhost"), Some(&alice.token)).await;
    assert_eq!(member["displayname"], "Alice A.", "new joins carry the profile");
}

#[tokio::test]
async fn upgrading_a_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = create_room(
        &server,
        &alice,
        json!({"room_version": "10", "preset": "public_chat", "visibility": "public",
        "room_alias_name": "hall", "name": "Hall", "topic": "Old topic"}),
    )
    .await;
    server.post(&path(&old, "join"), Some(&bob.token), json!({})).await;
    assert_error(
        &server.post(&path(&old, "upgrade"), Some(&bob.token), json!({"new_version": "12"})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.post(&path(&old, "upgrade"), Some(&alice.token), json!({"new_version": "77"})).await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    let (status, body) =
        server.post(&path(&old, "upgrade"), Some(&alice.token), json!({"new_version": "12"})).await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();

    let (_, create) = server.get(&path(&new, "state/m.room.create"), Some(&alice.token)).await;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    for (kind, field, value) in [
        ("m.room.name", "name", "Hall"),
        ("m.room.topic", "topic", "Old topic"),
        ("m.room.join_rules", "join_rule", "public"),
    ] {
        let (_, content) = server.get(&path(&new, &format!("state/{kind}")), Some(&alice.token)).await;
        assert_eq!(content[field], value, "{kind}");
    }
    let (_, tombstone) = server.get(&path(&old, "state/m.room.tombstone"), Some(&alice.token)).await;
    assert_eq!(tombstone["replacement_room"], new.as_str());
    let (_, alias) = server.get("/_matrix/client/v3/directory/room/%23hall:localhost", None).await;
    assert_eq!(alias["room_id"], new.as_str(), "aliases move");
    let (_, public) = server.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(public["chunk"][0]["room_id"], new.as_str());
    assert_error(&send_text(&server, &bob, &old, "late", "hello?").await, 403, "M_FORBIDDEN");
    assert_eq!(server.post(&path(&new, "join"), Some(&bob.token), json!({})).await.0, 200);

    // Before v12 the new room's `predecessor` names the old room's last
    // event: its tombstone.
    let older = create_room(&server, &alice, json!({"room_version": "10"})).await;
    let (status, body) =
        server.post(&path(&older, "upgrade"), Some(&alice.token), json!({"new_version": "11"})).await;
    assert_eq!(status, 200, "{body}");
    let newer = body["replacement_room"].as_str().unwrap();
    let (_, create) = server.get(&path(newer, "state/m.room.create"), Some(&alice.token)).await;
    let state = server.get(&path(&older, "state"), Some(&alice.token)).await.1;
    let tombstone =
        state.as_array().unwrap().iter().find(|e| e["type"] == "m.room.tombstone").unwrap().clone();
    assert_eq!(tombstone["content"]["replacement_room"], newer);
    assert_eq!(create["predecessor"]["event_id"], tombstone["event_id"]);
}

/// What an upgrade carries over: bans, `m.federate`, state set by
/// `initial_state` over the preset's (one event, not two), and each user's
/// tags, `m.direct` entry and room push rule once they join the new room.
#[tokio::test]
async fn upgrades_carry_bans_flags_and_user_data() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = create_room(
        &server,
        &alice,
        json!({"room_version": "10", "preset": "public_chat", "creation_content": {"m.federate": false}}),
    )
    .await;
    server
        .put(
            &path(&old, "state/m.room.history_visibility/"),
            Some(&alice.token),
            json!({"history_visibility": "joined"}),
        )
        .await;
    server.post(&path(&old, "join"), Some(&bob.token), json!({})).await;
    server
        .put(
            &path(&old, "state/m.room.member/@mallory:example.org"),
            Some(&alice.token),
            json!({"membership": "ban"}),
        )
        .await;
    let tag = format!("/_matrix/client/v3/user/{}/rooms/{old}/tags/test_tag", bob.user_id);
    server.put(&tag, Some(&bob.token), json!({})).await;
    let direct = format!("/_matrix/client/v3/user/{}/account_data/m.direct", bob.user_id);
    server.put(&direct, Some(&bob.token), json!({"@alice:localhost": [old]})).await;
    server
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{old}"),
            Some(&bob.token),
            json!({"actions": ["dont_notify"]}),
        )
        .await;

    let bad = server
        .post(&path(&old, "upgrade"), Some(&alice.token), json!({"new_version": "my_bad_version"}))
        .await;
    assert_error(&bad, 400, "M_UNSUPPORTED_ROOM_VERSION");
    let missing = server.post(&path(&old, "upgrade"), Some(&alice.token), json!({})).await;
    assert_error(&missing, 400, "M_BAD_JSON");
    let (status, not_json) =
        server.raw(reqwest::Method::POST, &path(&old, "upgrade"), Some(&alice.token), b"nope".to_vec()).await;
    assert_eq!((status.as_u16(), not_json["errcode"].as_str()), (400, Some("M_NOT_JSON")), "{not_json}");
    let (status, body) =
        server.post(&path(&old, "upgrade"), Some(&alice.token), json!({"new_version": "11"})).await;
    assert_eq!(status, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let (_, create) = server.get(&path(&new, "state/m.room.create"), Some(&alice.token)).await;
    assert_eq!(create["m.federate"], false);
    let (_, ban) =
        server.get(&path(&new, "state/m.room.member/@mallory:example.org"), Some(&alice.token)).await;
    assert_eq!(ban["membership"], "ban");
    let (_, page) = server.get(&path(&new, "messages?dir=f&limit=50"), Some(&alice.token)).await;
    let visibility: Vec<&Value> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.history_visibility")
        .collect();
    assert_eq!(visibility.len(), 1, "{visibility:?}");
    assert_eq!(visibility[0]["content"]["history_visibility"], "joined");

    assert_eq!(server.post(&path(&new, "join"), Some(&bob.token), json!({})).await.0, 200);
    let (_, tags) = server
        .get(&format!("/_matrix/client/v3/user/{}/rooms/{new}/tags", bob.user_id), Some(&bob.token))
        .await;
    assert!(tags["tags"].get("test_tag").is_some(), "{tags}");
    let (_, direct) = server.get(&direct, Some(&bob.token)).await;
    assert_eq!(direct["@alice:localhost"], json!([old, new]));
    let (status, rule) =
        server.get(&format!("/_matrix/client/v3/pushrules/global/room/{new}"), Some(&bob.token)).await;
    assert_eq!(status, 200, "{rule}");
}

#[tokio::test]
async fn space_hierarchy() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let space = create_room(
        &server,
        &alice,
        json!({"preset": "public_chat", "name": "Space", "creation_content": {"type": "m.space"}}),
    )
    .await;
    let child_a = create_room(&server, &alice, json!({"preset": "public_chat", "name": "A"})).await;
    let child_b = create_room(&server, &alice, json!({"preset": "public_chat", "name": "B"})).await;
    let private = create_room(&server, &alice, json!({"name": "Private"})).await;
    for (child, suggested) in [(&child_a, true), (&child_b, false), (&private, false)] {
        let content = json!({"via": ["localhost"], "suggested": suggested});
        assert_eq!(
            server
                .put(&path(&space, &format!("state/m.space.child/{child}")), Some(&alice.token), content)
                .await
                .0,
            200
        );
    }
    let hierarchy = format!("/_matrix/client/v1/rooms/{space}/hierarchy");
    let (status, body) = server.get(&hierarchy, Some(&bob.token)).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> =
        body["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "private room hidden from non-members: {names:?}");
    assert_eq!(names[0], "Space");
    assert_eq!(body["rooms"][0]["room_type"], "m.space");
    assert_eq!(body["rooms"][0]["children_state"].as_array().unwrap().len(), 3);
    let (_, suggested) = server.get(&format!("{hierarchy}?suggested_only=true"), Some(&bob.token)).await;
    assert_eq!(suggested["rooms"].as_array().unwrap().len(), 2);
    let (_, shallow) = server.get(&format!("{hierarchy}?max_depth=0"), Some(&bob.token)).await;
    assert_eq!(shallow["rooms"].as_array().unwrap().len(), 1);
    let (_, paged) = server.get(&format!("{hierarchy}?limit=1"), Some(&alice.token)).await;
    assert_eq!(paged["rooms"].as_array().unwrap().len(), 1);
    assert!(paged["next_batch"].is_string());
    assert_error(
        &server.get(&format!("/_matrix/client/v1/rooms/{private}/hierarchy"), Some(&bob.token)).await,
        403,
        "M_FORBIDDEN",
    );
}
