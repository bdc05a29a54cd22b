//! Device keys, one-time and fallback keys, device-list changes.

use serde_json::{Value, json};

use crate::{
    harness::{TestServer, User, assert_error},
    rooms::create_room,
};

fn device_keys(user: &User) -> Value {
    json!({
        "user_id": user.user_id, "device_id": user.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {format!("curve25519:{}", user.device_id): "curvekey", format!("ed25519:{}", user.device_id): "edkey"},
        "signatures": {user.user_id.clone(): {format!("ed25519:{}", user.device_id): "sig"}}
    })
}

async fn sync(server: &TestServer, user: &User, query: &str) -> Value {
    server.get(&format!("/_matrix/client/v3/sync{query}"), Some(&user.token)).await.1
}

#[tokio::test]
async fn upload_query_and_claim() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let upload = json!({
        "device_keys": device_keys(&alice),
        "one_time_keys": {"signed_curve25519:AAA": {"key": "otk1"}, "signed_curve25519:AAB": {"key": "otk2"}},
        "fallback_keys": {"signed_curve25519:FFF": {"key": "fallback", "fallback": true}},
    });
    let (status, body) = server.post("/_matrix/client/v3/keys/upload", Some(&alice.token), upload).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2);
    let mine = sync(&server, &alice, "").await;
    assert_eq!(mine["device_one_time_keys_count"]["signed_curve25519"], 2);
    assert_eq!(mine["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    let mut wrong = device_keys(&alice);
    wrong["device_id"] = json!("OTHER");
    assert_error(
        &server
            .post("/_matrix/client/v3/keys/upload", Some(&alice.token), json!({"device_keys": wrong}))
            .await,
        400,
        "M_INVALID_PARAM",
    );

    let query = json!({"device_keys": {"@alice:localhost": []}});
    let (_, queried) = server.post("/_matrix/client/v3/keys/query", Some(&bob.token), query).await;
    let keys = &queried["device_keys"]["@alice:localhost"][&alice.device_id];
    assert_eq!(keys["keys"][format!("ed25519:{}", alice.device_id)], "edkey");
    assert!(
        keys["unsigned"]["device_display_name"].is_null()
            || keys["unsigned"]["device_display_name"].is_string()
    );

    let claim =
        json!({"one_time_keys": {"@alice:localhost": {alice.device_id.clone(): "signed_curve25519"}}});
    let mut claimed = Vec::new();
    for _ in 0..4 {
        let (_, body) = server.post("/_matrix/client/v3/keys/claim", Some(&bob.token), claim.clone()).await;
        let keys = body["one_time_keys"]["@alice:localhost"][&alice.device_id].as_object().unwrap().clone();
        claimed.push(keys.keys().next().unwrap().clone());
    }
    assert_eq!(
        claimed[0..2].iter().collect::<std::collections::BTreeSet<_>>().len(),
        2,
        "each one-time key once: {claimed:?}"
    );
    assert_eq!(claimed[2], "signed_curve25519:FFF", "then the fallback key");
    assert_eq!(claimed[3], "signed_curve25519:FFF", "the fallback key is reused");
    let mine = sync(&server, &alice, "").await;
    assert_eq!(mine["device_one_time_keys_count"], json!({}));
    assert_eq!(
        mine["device_unused_fallback_key_types"],
        json!([]),
        "a used fallback key is no longer unused"
    );
}

#[tokio::test]
async fn device_list_changes_reach_room_mates_only() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let stranger = server.register("carol").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let bob_since = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();
    let carol_since = sync(&server, &stranger, "").await["next_batch"].as_str().unwrap().to_owned();

    server
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({"device_keys": device_keys(&alice)}),
        )
        .await;
    let body = sync(&server, &bob, &format!("?since={bob_since}")).await;
    assert_eq!(body["device_lists"]["changed"], json!(["@alice:localhost"]), "{body}");
    let body = sync(&server, &stranger, &format!("?since={carol_since}&timeout=0")).await;
    assert_eq!(body["device_lists"]["changed"], json!([]));
    let next = sync(&server, &bob, "").await["next_batch"].as_str().unwrap().to_owned();
    let (status, changes) = server
        .get(&format!("/_matrix/client/v3/keys/changes?from={bob_since}&to={next}"), Some(&bob.token))
        .await;
    assert_eq!(status, 200, "{changes}");
    assert_eq!(changes["changed"], json!(["@alice:localhost"]));

    // Logging out a device removes its keys and is a device-list change too.
    let since = next;
    server.post("/_matrix/client/v3/logout", Some(&alice.token), json!({})).await;
    let body = sync(&server, &bob, &format!("?since={since}")).await;
    assert_eq!(body["device_lists"]["changed"], json!(["@alice:localhost"]));
    let (_, queried) = server
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({"device_keys": {"@alice:localhost": []}}),
        )
        .await;
    assert_eq!(queried["device_keys"]["@alice:localhost"], json!({}));
}

#[tokio::test]
async fn device_lists_follow_joins_and_leaves() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let other = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{other}/join"), Some(&carol.token), json!({})).await;
    let since = sync(&server, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    let carol_since = sync(&server, &carol, "").await["next_batch"].as_str().unwrap().to_owned();

    // A new room-mate is a change: the client must now track their devices.
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&carol.token), json!({})).await;
    let body = sync(&server, &alice, &format!("?since={since}")).await;
    assert_eq!(body["device_lists"]["changed"], json!(["@carol:localhost"]), "{body}");
    let body = sync(&server, &carol, &format!("?since={carol_since}")).await;
    let changed = body["device_lists"]["changed"].as_array().unwrap();
    assert!(changed.contains(&json!("@bob:localhost")), "carol now shares a room with bob: {body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();

    // Bob leaving his only shared room with carol puts him in `left`.
    server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    let body = sync(&server, &carol, &format!("?since={since}")).await;
    assert_eq!(body["device_lists"]["left"], json!(["@bob:localhost"]), "{body}");
    assert_eq!(body["device_lists"]["changed"], json!([]));
    let next = body["next_batch"].as_str().unwrap().to_owned();
    let (_, changes) = server
        .get(&format!("/_matrix/client/v3/keys/changes?from={since}&to={next}"), Some(&carol.token))
        .await;
    assert_eq!(changes["left"], json!(["@bob:localhost"]), "{changes}");

    // Carol leaving one room still shares the other with alice: not `left`.
    server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&carol.token), json!({})).await;
    let body = sync(&server, &carol, &format!("?since={next}")).await;
    assert_eq!(body["device_lists"]["left"], json!([]), "alice still shares a room: {body}");
}

fn cross_key(user: &User, usage: &str, name: &str) -> Value {
    json!({"user_id": user.user_id, "usage": [usage], "keys": {format!("ed25519:{name}"): name}})
}

#[tokio::test]
async fn cross_signing_and_signatures() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    server
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({"device_keys": device_keys(&alice)}),
        )
        .await;
    let path = "/_matrix/client/v3/keys/device_signing/upload";
    let first = json!({"master_key": cross_key(&alice, "master", "MASTER"), "self_signing_key": cross_key(&alice, "self_signing", "SELF"),
                       "user_signing_key": cross_key(&alice, "user_signing", "USER")});
    let (status, body) = server.post(path, Some(&alice.token), first.clone()).await;
    assert_eq!(status, 200, "the first upload needs no UIA: {body}");
    assert_eq!(
        server.post(path, Some(&alice.token), first).await.0,
        200,
        "an identical upload needs none either"
    );
    let replace = json!({"master_key": cross_key(&alice, "master", "MASTER2")});
    let (status, body) = server.post(path, Some(&alice.token), replace.clone()).await;
    assert_eq!(status, 401, "replacing keys needs UIA: {body}");
    let mut with_auth = replace;
    with_auth["auth"] = crate::harness::password_auth("alice", body["session"].as_str());
    assert_eq!(server.post(path, Some(&alice.token), with_auth).await.0, 200);
    // Element still calls the unstable path.
    let (status, _) = server
        .post("/_matrix/client/unstable/keys/device_signing/upload", Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, 200);

    let query = json!({"device_keys": {"@alice:localhost": []}});
    let (_, theirs) = server.post("/_matrix/client/v3/keys/query", Some(&bob.token), query.clone()).await;
    assert_eq!(theirs["master_keys"]["@alice:localhost"]["keys"]["ed25519:MASTER2"], "MASTER2");
    assert!(theirs["self_signing_keys"]["@alice:localhost"].is_object());
    assert!(theirs["user_signing_keys"].get("@alice:localhost").is_none(), "user-signing keys are private");
    let (_, mine) = server.post("/_matrix/client/v3/keys/query", Some(&alice.token), query.clone()).await;
    assert!(mine["user_signing_keys"]["@alice:localhost"].is_object());

    let mut signed = device_keys(&alice);
    signed["signatures"] = json!({"@alice:localhost": {"ed25519:SELF": "self-signature"}});
    let upload = json!({"@alice:localhost": {alice.device_id.clone(): signed}});
    let (status, body) =
        server.post("/_matrix/client/v3/keys/signatures/upload", Some(&alice.token), upload).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failures"], json!({}));
    let (_, after) = server.post("/_matrix/client/v3/keys/query", Some(&bob.token), query).await;
    let signatures =
        &after["device_keys"]["@alice:localhost"][&alice.device_id]["signatures"]["@alice:localhost"];
    assert_eq!(signatures["ed25519:SELF"], "self-signature");
    assert_eq!(signatures[format!("ed25519:{}", alice.device_id)], "sig", "existing signatures are kept");
    let unknown =
        json!({"@alice:localhost": {"NOPE": {"signatures": {"@alice:localhost": {"ed25519:SELF": "x"}}}}});
    let (_, body) =
        server.post("/_matrix/client/v3/keys/signatures/upload", Some(&alice.token), unknown).await;
    assert!(body["failures"]["@alice:localhost"]["NOPE"].is_object(), "{body}");
}

#[tokio::test]
async fn key_backup() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let token = Some(alice.token.as_str());
    assert_error(&server.get("/_matrix/client/v3/room_keys/version", token).await, 404, "M_NOT_FOUND");
    let algorithm =
        json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}});
    let (status, created) =
        server.post("/_matrix/client/v3/room_keys/version", token, algorithm.clone()).await;
    assert_eq!(status, 200, "{created}");
    let version = created["version"].as_str().unwrap().to_owned();
    let (_, info) = server.get("/_matrix/client/v3/room_keys/version", token).await;
    assert_eq!((info["version"].as_str(), info["count"].as_u64()), (Some(version.as_str()), Some(0)));
    assert_eq!(info["auth_data"]["public_key"], "abc");
    let etag0 = info["etag"].as_str().unwrap().to_owned();

    let key = |index: u64, verified: bool, tag: &str| json!({"first_message_index": index, "forwarded_count": 0, "is_verified": verified, "session_data": {"tag": tag}});
    let session = format!("/_matrix/client/v3/room_keys/keys/!room:localhost/sess1?version={version}");
    let (status, body) = server.put(&session, token, key(5, false, "first")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1);
    assert_ne!(body["etag"].as_str().unwrap(), etag0, "the etag changes");
    server.put(&session, token, key(9, false, "worse")).await;
    let (_, stored) = server.get(&session, token).await;
    assert_eq!(stored["session_data"]["tag"], "first", "a worse key does not replace");
    server.put(&session, token, key(9, true, "verified")).await;
    let (_, stored) = server.get(&session, token).await;
    assert_eq!(stored["session_data"]["tag"], "verified", "a verified key does");

    let all = json!({"rooms": {"!other:localhost": {"sessions": {"s2": key(0, false, "x"), "s3": key(0, false, "y")}}}});
    let (_, body) =
        server.put(&format!("/_matrix/client/v3/room_keys/keys?version={version}"), token, all).await;
    assert_eq!(body["count"], 3);
    let (_, everything) =
        server.get(&format!("/_matrix/client/v3/room_keys/keys?version={version}"), token).await;
    assert_eq!(everything["rooms"]["!other:localhost"]["sessions"].as_object().unwrap().len(), 2);
    let (_, room) = server
        .get(&format!("/_matrix/client/v3/room_keys/keys/!other:localhost?version={version}"), token)
        .await;
    assert!(room["sessions"]["s3"].is_object());
    let (_, body) = server
        .delete(&format!("/_matrix/client/v3/room_keys/keys/!other:localhost?version={version}"), token)
        .await;
    assert_eq!(body["count"], 1);
    assert_error(
        &server
            .get(&format!("/_matrix/client/v3/room_keys/keys/!other:localhost/s2?version={version}"), token)
            .await,
        404,
        "M_NOT_FOUND",
    );

    let update = json!({"algorithm": "m.other", "auth_data": {}});
    assert_error(
        &server.put(&format!("/_matrix/client/v3/room_keys/version/{version}"), token, update).await,
        400,
        "M_INVALID_PARAM",
    );
    let (_, newer) = server.post("/_matrix/client/v3/room_keys/version", token, algorithm).await;
    let newer = newer["version"].as_str().unwrap().to_owned();
    let stale = server.put(&session, token, key(0, true, "late")).await;
    assert_error(&stale, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(stale.1["current_version"], newer.as_str());
    assert_eq!(server.delete(&format!("/_matrix/client/v3/room_keys/version/{version}"), token).await.0, 200);
    assert_error(
        &server.get(&format!("/_matrix/client/v3/room_keys/version/{version}"), token).await,
        404,
        "M_NOT_FOUND",
    );
    let (_, latest) = server.get("/_matrix/client/v3/room_keys/version", token).await;
    assert_eq!(latest["version"], newer.as_str());
}

const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

fn dehydrated_upload(user: &User, device_id: &str, pickle: &str) -> Value {
    let owner = User { device_id: device_id.to_owned(), ..user.clone() };
    let mut keys = device_keys(&owner);
    keys["dehydrated"] = json!(true);
    json!({
        "device_id": device_id,
        "initial_device_display_name": "Dehydrated device",
        "device_data": {"algorithm": "m.dehydration.v1.olm", "device_pickle": pickle, "nonce": "n"},
        "device_keys": keys,
        "one_time_keys": {"signed_curve25519:D1": {"key": "dotk"}},
        "fallback_keys": {"signed_curve25519:DF": {"key": "dfallback", "fallback": true}},
    })
}

#[tokio::test]
async fn dehydrated_device_lifecycle_and_its_messages() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (status, body) = server.get(DEHYDRATED, Some(&alice.token)).await;
    assert_error(&(status, body.clone()), 404, "M_NOT_FOUND");

    let (status, body) =
        server.put(DEHYDRATED, Some(&alice.token), dehydrated_upload(&alice, "DEHYD1", "p1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], "DEHYD1");
    let (status, body) = server.get(DEHYDRATED, Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], "DEHYD1");
    assert_eq!(body["device_data"]["device_pickle"], "p1");

    // Others see its keys and can claim its one-time key.
    let query = json!({"device_keys": {"@alice:localhost": []}});
    let (_, keys) = server.post("/_matrix/client/v3/keys/query", Some(&bob.token), query).await;
    assert_eq!(keys["device_keys"]["@alice:localhost"]["DEHYD1"]["dehydrated"], true, "{keys}");
    let claim = json!({"one_time_keys": {"@alice:localhost": {"DEHYD1": "signed_curve25519"}}});
    let (_, claimed) = server.post("/_matrix/client/v3/keys/claim", Some(&bob.token), claim).await;
    assert_eq!(claimed["one_time_keys"]["@alice:localhost"]["DEHYD1"]["signed_curve25519:D1"]["key"], "dotk");

    // Messages sent to it wait until the client rehydrates it and acknowledges them.
    for (txn, n) in [("t1", 1), ("t2", 2)] {
        let messages = json!({"messages": {"@alice:localhost": {"DEHYD1": {"n": n}}}});
        let path = format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/{txn}");
        let (status, _) = server.put(&path, Some(&bob.token), messages).await;
        assert_eq!(status, 200);
    }
    let events_path = format!("{DEHYDRATED}/DEHYD1/events");
    let (status, page) = server.post(&events_path, Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "{page}");
    let contents: Vec<&Value> =
        page["events"].as_array().unwrap().iter().map(|e| &e["content"]["n"]).collect();
    assert_eq!(contents, [&json!(1), &json!(2)], "{page}");
    assert_eq!(page["events"][0]["sender"], "@bob:localhost");
    let next = page["next_batch"].as_str().expect("next_batch").to_owned();
    let (_, page) = server.post(&events_path, Some(&alice.token), json!({"next_batch": next})).await;
    assert_eq!(page["events"], json!([]), "acknowledged messages are gone: {page}");
    let (status, body) =
        server.post(&format!("{DEHYDRATED}/{}/events", alice.device_id), Some(&alice.token), json!({})).await;
    assert_error(&(status, body.clone()), 403, "M_FORBIDDEN");

    // A new dehydrated device replaces the old one, which is deleted.
    let (status, _) =
        server.put(DEHYDRATED, Some(&alice.token), dehydrated_upload(&alice, "DEHYD2", "p2")).await;
    assert_eq!(status, 200);
    let (_, devices) = server.get("/_matrix/client/v3/devices", Some(&alice.token)).await;
    let ids: Vec<&str> =
        devices["devices"].as_array().unwrap().iter().filter_map(|d| d["device_id"].as_str()).collect();
    assert!(ids.contains(&"DEHYD2") && !ids.contains(&"DEHYD1"), "{devices}");
    let (status, body) = server.delete(DEHYDRATED, Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], "DEHYD2");
    let (status, body) = server.get(DEHYDRATED, Some(&alice.token)).await;
    assert_error(&(status, body.clone()), 404, "M_NOT_FOUND");
    let (_, keys) = server
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({"device_keys": {"@alice:localhost": []}}),
        )
        .await;
    assert!(keys["device_keys"]["@alice:localhost"].get("DEHYD2").is_none(), "{keys}");
}

/// A new device (a login) and a renamed device change what `/keys/query`
/// shows, so room-mates see them in `device_lists.changed`; devices always
/// carry `unsigned`.
#[tokio::test]
async fn new_and_renamed_devices_are_device_list_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let since = sync(&server, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server.login("bob", crate::harness::PASSWORD).await;
    assert_eq!(status, 200);
    let body = sync(&server, &alice, &format!("?since={since}")).await;
    assert_eq!(body["device_lists"]["changed"], json!(["@bob:localhost"]), "a login: {body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/devices/{}", bob.device_id);
    server.put(&path, Some(&bob.token), json!({"display_name": "phone"})).await;
    let body = sync(&server, &alice, &format!("?since={since}")).await;
    assert_eq!(body["device_lists"]["changed"], json!(["@bob:localhost"]), "a rename: {body}");

    server
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({"device_keys": device_keys(&alice)}),
        )
        .await;
    let (_, keys) = server
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({"device_keys": {"@alice:localhost": []}}),
        )
        .await;
    assert_eq!(keys["device_keys"]["@alice:localhost"][&alice.device_id]["unsigned"], json!({}), "{keys}");
}

#[tokio::test]
async fn self_signing_key_needs_a_master_key() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let body = json!({"self_signing_key": cross_key(&alice, "self_signing", "s")});
    let result = server.post("/_matrix/client/v3/keys/device_signing/upload", Some(&alice.token), body).await;
    assert_error(&result, 400, "M_MISSING_PARAM");
}

/// `auth_data` belongs to the algorithm: any JSON is kept as sent (SyTest
/// sends a string); a body without `algorithm` or `auth_data` is refused.
#[tokio::test]
async fn backup_auth_data_is_kept_as_sent() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let token = Some(alice.token.as_str());
    let (status, created) = server
        .post(
            "/_matrix/client/v3/room_keys/version",
            token,
            json!({"algorithm": "m.megolm_backup.v1", "auth_data": "opaque"}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let (_, info) = server.get("/_matrix/client/v3/room_keys/version", token).await;
    assert_eq!(info["auth_data"], "opaque");
    for body in
        [json!({"algorithm": "m.megolm_backup.v1"}), json!({"auth_data": {}}), json!(["not", "an", "object"])]
    {
        assert_error(
            &server.post("/_matrix/client/v3/room_keys/version", token, body).await,
            400,
            "M_BAD_JSON",
        );
    }
}

/// A user-signing key, and another user's key signed with it, are their
/// owner's alone: nobody else sees them in `device_lists` nor in a key query.
/// An invited user is a device-list change (one may encrypt for them), and
/// a UIA password stage may name the user the legacy way (`user`).
#[tokio::test]
async fn user_signing_keys_and_their_signatures_stay_private() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let path = "/_matrix/client/v3/keys/device_signing/upload";
    for (user, name) in [(&alice, "ALICEMASTER"), (&bob, "BOBMASTER")] {
        let keys = json!({"master_key": cross_key(user, "master", name)});
        assert_eq!(server.post(path, Some(&user.token), keys).await.0, 200);
    }
    let next_batch = |body: Value| body["next_batch"].as_str().unwrap().to_owned();
    let alice_since = next_batch(sync(&server, &alice, "").await);
    let bob_since = next_batch(sync(&server, &bob, "").await);

    let user_signing = json!({"user_signing_key": cross_key(&alice, "user_signing", "USK"),
        "auth": {"type": "m.login.password", "user": alice.user_id, "password": crate::harness::PASSWORD}});
    let (status, body) = server.post(path, Some(&alice.token), user_signing).await;
    assert_eq!(status, 200, "a legacy `user` in the password stage is accepted: {body}");
    let bob_id = bob.user_id.clone();
    let mut signed = cross_key(&bob, "master", "BOBMASTER");
    signed["signatures"] = json!({alice.user_id.clone(): {"ed25519:USK": "cross-signature"}});
    let upload = json!({bob_id.clone(): {"BOBMASTER": signed}});
    let (status, body) =
        server.post("/_matrix/client/v3/keys/signatures/upload", Some(&alice.token), upload).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failures"], json!({}));

    let body = sync(&server, &bob, &format!("?since={bob_since}&timeout=0")).await;
    assert_eq!(body["device_lists"]["changed"], json!([]), "bob hears of neither: {body}");
    let body = sync(&server, &alice, &format!("?since={alice_since}")).await;
    let changed = body["device_lists"]["changed"].as_array().unwrap().clone();
    assert!(changed.contains(&json!(alice.user_id)) && changed.contains(&json!(bob_id)), "{body}");
    let query = json!({"device_keys": {bob_id.clone(): []}});
    let (_, theirs) = server.post("/_matrix/client/v3/keys/query", Some(&bob.token), query.clone()).await;
    assert!(theirs["master_keys"][&bob_id]["signatures"].get(&alice.user_id).is_none(), "{theirs}");
    let (_, mine) = server.post("/_matrix/client/v3/keys/query", Some(&alice.token), query).await;
    assert_eq!(mine["master_keys"][&bob_id]["signatures"][&alice.user_id]["ed25519:USK"], "cross-signature");

    let next = sync(&server, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    let invite = json!({"user_id": carol.user_id});
    server.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&alice.token), invite).await;
    let body = sync(&server, &alice, &format!("?since={next}")).await;
    assert_eq!(body["device_lists"]["changed"], json!([carol.user_id]), "{body}");
}
