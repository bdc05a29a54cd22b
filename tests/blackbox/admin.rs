//! Synapse's admin API as admin tools call it: users, devices, account
//! restrictions, registration tokens and reports, with the shapes Synapse's
//! documentation gives.

use serde_json::{Value, json};

use crate::{
    harness::{PASSWORD, TestServer, User, assert_error, encode},
    rooms::{create_room, send_text},
};

const ADMIN: &str = "/_synapse/admin";

fn user_path(version: &str, user: &User, rest: &str) -> String {
    format!("{ADMIN}/{version}/users/{}{rest}", encode(&user.user_id))
}

/// An admin (the first account) and two other users.
async fn server_with_users() -> (TestServer, User, User, User) {
    let server = TestServer::start().await;
    let admin = server.register("admin").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    (server, admin, alice, bob)
}

#[tokio::test]
async fn admin_endpoints_answer_only_server_admins() {
    let (server, _admin, alice, _) = server_with_users().await;
    let paths = [
        format!("{ADMIN}/v2/users"),
        format!("{ADMIN}/v3/users"),
        user_path("v2", &alice, ""),
        user_path("v2", &alice, "/devices"),
        format!("{ADMIN}/v1/registration_tokens"),
        format!("{ADMIN}/v1/event_reports"),
        format!("{ADMIN}/v1/whois/{}", encode(&alice.user_id)),
    ];
    for path in &paths {
        let refused = server.get(path, Some(&alice.token)).await;
        assert_error(&refused, 403, "M_FORBIDDEN");
        assert_eq!(refused.1["error"], "You are not a server admin", "{path}");
        assert_error(&server.get(path, None).await, 401, "M_MISSING_TOKEN");
    }
    let deactivate = format!("{ADMIN}/v1/deactivate/{}", encode(&alice.user_id));
    assert_error(&server.post(&deactivate, Some(&alice.token), json!({})).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn users_are_listed_with_synapse_fields_and_paging() {
    let (server, admin, alice, bob) = server_with_users().await;
    let (status, page) = server.get(&format!("{ADMIN}/v2/users?from=0&limit=2"), Some(&admin.token)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 3);
    assert_eq!(page["next_token"], "2", "next_token is a string in the user list");
    let users = page["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["name"], admin.user_id, "ordered by name");
    assert_eq!(users[1]["name"], alice.user_id);
    for field in [
        "name",
        "user_type",
        "is_guest",
        "admin",
        "deactivated",
        "shadow_banned",
        "displayname",
        "avatar_url",
        "creation_ts",
        "approved",
        "erased",
        "last_seen_ts",
        "locked",
    ] {
        assert!(users[0].get(field).is_some(), "{field} missing from {}", users[0]);
    }
    assert_eq!(users[0]["admin"], true);
    assert_eq!(users[1]["admin"], false);
    assert_eq!(users[1]["displayname"], "alice");
    assert!(users[0]["creation_ts"].as_u64().unwrap() > 1_000_000_000_000, "the list gives ms");

    let (_, rest) = server.get(&format!("{ADMIN}/v2/users?from=2&limit=2"), Some(&admin.token)).await;
    assert_eq!(rest["users"][0]["name"], bob.user_id);
    assert!(rest.get("next_token").is_none(), "the last page has no next_token: {rest}");

    let (_, backwards) =
        server.get(&format!("{ADMIN}/v2/users?order_by=name&dir=b"), Some(&admin.token)).await;
    assert_eq!(backwards["users"][0]["name"], bob.user_id);
    let (_, named) = server.get(&format!("{ADMIN}/v2/users?name=ALI"), Some(&admin.token)).await;
    assert_eq!(named["total"], 1, "name matches the localpart, case-insensitively: {named}");
    let (_, admins) = server.get(&format!("{ADMIN}/v2/users?admins=true"), Some(&admin.token)).await;
    assert_eq!(admins["total"], 1);
    assert_error(
        &server.get(&format!("{ADMIN}/v2/users?order_by=id"), Some(&admin.token)).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server.get(&format!("{ADMIN}/v2/users?limit=x"), Some(&admin.token)).await,
        400,
        "M_INVALID_PARAM",
    );

    // v2 hides deactivated users unless asked; v3 filters only when asked.
    let path = format!("{ADMIN}/v1/deactivate/{}", encode(&bob.user_id));
    assert_eq!(server.post(&path, Some(&admin.token), json!({})).await.0, 200);
    let (_, v2) = server.get(&format!("{ADMIN}/v2/users"), Some(&admin.token)).await;
    assert_eq!(v2["total"], 2);
    let (_, v2_all) = server.get(&format!("{ADMIN}/v2/users?deactivated=true"), Some(&admin.token)).await;
    assert_eq!(v2_all["total"], 3);
    let (_, v3) = server.get(&format!("{ADMIN}/v3/users"), Some(&admin.token)).await;
    assert_eq!(v3["total"], 3);
    let (_, v3_only) = server.get(&format!("{ADMIN}/v3/users?deactivated=true"), Some(&admin.token)).await;
    assert_eq!(v3_only["total"], 1);
    assert_eq!(v3_only["users"][0]["name"], bob.user_id);
}

#[tokio::test]
async fn admins_create_change_and_deactivate_users() {
    let (server, admin, alice, _) = server_with_users().await;
    let carol = format!("{ADMIN}/v2/users/{}", encode("@carol:localhost"));
    let (status, created) = server
        .put(
            &carol,
            Some(&admin.token),
            json!({"password": "carol's secret", "displayname": "Carol", "admin": false}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "@carol:localhost");
    assert_eq!(created["displayname"], "Carol");
    assert!(
        created["creation_ts"].as_u64().unwrap() < 10_000_000_000,
        "one user's creation_ts is in seconds"
    );
    for field in ["threepids", "external_ids", "suspended", "appservice_id", "is_guest", "user_type"] {
        assert!(created.get(field).is_some(), "{field} missing from {created}");
    }
    assert_eq!(server.login("carol", "carol's secret").await.0, 200);

    // Changing: the UIs send the whole record back, extra fields included.
    let mut record = created.clone();
    record["displayname"] = json!("Carol C.");
    record["admin"] = json!(true);
    record["creation_ts_ms"] = json!(1);
    let (status, changed) = server.put(&carol, Some(&admin.token), record).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["displayname"], "Carol C.");
    assert_eq!(changed["admin"], true);
    let (_, profile) = server.get("/_matrix/client/v3/profile/@carol:localhost", None).await;
    assert_eq!(profile["displayname"], "Carol C.");

    let remote = format!("{ADMIN}/v2/users/{}", encode("@x:elsewhere.example"));
    assert_error(&server.put(&remote, Some(&admin.token), json!({})).await, 400, "M_INVALID_PARAM");
    assert_error(
        &server.get(&format!("{ADMIN}/v2/users/{}", encode("@nobody:localhost")), Some(&admin.token)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &server.get(&format!("{ADMIN}/v2/users/not-a-user"), Some(&admin.token)).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&server.put(&carol, Some(&admin.token), json!({"admin": "yes"})).await, 400, "M_BAD_JSON");
    let bad_json = server.raw(reqwest::Method::PUT, &carol, Some(&admin.token), b"{not json".to_vec()).await;
    assert_error(&bad_json, 400, "M_NOT_JSON");
    let self_demotion =
        server.put(&user_path("v2", &admin, ""), Some(&admin.token), json!({"admin": false})).await;
    assert_error(&self_demotion, 400, "M_INVALID_PARAM");

    // A password reset logs the user out unless told not to.
    let reset = format!("{ADMIN}/v1/reset_password/{}", encode(&alice.user_id));
    let (status, _) = server.post(&reset, Some(&admin.token), json!({"new_password": "new secret"})).await;
    assert_eq!(status, 200);
    assert_error(
        &server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(server.login("alice", "new secret").await.0, 200);
    assert_eq!(server.login("alice", PASSWORD).await.0, 403);

    // Deactivation leaves the user's rooms and ends every session.
    let (_, session) = server.login("alice", "new secret").await;
    let alice_token = session["access_token"].as_str().unwrap().to_owned();
    let alice = User { token: alice_token, ..alice };
    let room = create_room(&server, &admin, json!({"preset": "public_chat"})).await;
    let join = format!("/_matrix/client/v3/join/{room}");
    assert_eq!(server.post(&join, Some(&alice.token), json!({})).await.0, 200);
    let deactivate = format!("{ADMIN}/v1/deactivate/{}", encode(&alice.user_id));
    let (status, body) = server.post(&deactivate, Some(&admin.token), json!({"erase": true})).await;
    assert_eq!((status.as_u16(), &body["id_server_unbind_result"]), (200, &json!("success")), "{body}");
    let (_, members) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), Some(&admin.token)).await;
    assert!(
        members["joined"].get(&alice.user_id).is_none(),
        "a deactivated user leaves their rooms: {members}"
    );
    assert_eq!(server.login("alice", "new secret").await.0, 403);
    let (_, record) = server.get(&user_path("v2", &alice, ""), Some(&admin.token)).await;
    assert_eq!((record["deactivated"].clone(), record["erased"].clone()), (json!(true), json!(true)));

    // Reactivation needs a password.
    let (status, _) =
        server.put(&user_path("v2", &alice, ""), Some(&admin.token), json!({"deactivated": false})).await;
    assert_eq!(status, 400);
    let reactivate = json!({"deactivated": false, "password": "back again"});
    let (status, record) = server.put(&user_path("v2", &alice, ""), Some(&admin.token), reactivate).await;
    assert_eq!((status.as_u16(), record["deactivated"].clone()), (200, json!(false)), "{record}");
    assert_eq!(server.login("alice", "back again").await.0, 200);
}

#[tokio::test]
async fn admins_see_and_manage_a_users_devices_rooms_and_sessions() {
    let (server, admin, alice, _) = server_with_users().await;
    let (status, devices) = server.get(&user_path("v2", &alice, "/devices"), Some(&admin.token)).await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["total"], 1);
    let device = &devices["devices"][0];
    assert_eq!(device["device_id"], alice.device_id);
    assert_eq!(device["user_id"], alice.user_id);
    for field in ["display_name", "last_seen_ip", "last_seen_ts", "last_seen_user_agent"] {
        assert!(device.get(field).is_some(), "{field} missing from {device}");
    }
    let one = user_path("v2", &alice, &format!("/devices/{}", alice.device_id));
    let (status, _) = server.put(&one, Some(&admin.token), json!({"display_name": "Alice's phone"})).await;
    assert_eq!(status, 200);
    let (_, renamed) = server.get(&one, Some(&admin.token)).await;
    assert_eq!(renamed["display_name"], "Alice's phone");
    assert_error(
        &server.get(&user_path("v2", &alice, "/devices/NOPE"), Some(&admin.token)).await,
        404,
        "M_NOT_FOUND",
    );

    let (status, _) = server
        .post(&user_path("v2", &alice, "/devices"), Some(&admin.token), json!({"device_id": "SPARE"}))
        .await;
    assert_eq!(status, 201);
    let (_, whois) =
        server.get(&format!("{ADMIN}/v1/whois/{}", encode(&alice.user_id)), Some(&admin.token)).await;
    assert_eq!(whois["user_id"], alice.user_id);
    assert!(whois["devices"][&alice.device_id]["sessions"][0]["connections"].is_array(), "{whois}");
    let delete = json!({"devices": ["SPARE"]});
    assert_eq!(
        server.post(&user_path("v2", &alice, "/delete_devices"), Some(&admin.token), delete).await.0,
        200
    );
    assert_eq!(server.get(&user_path("v2", &alice, "/devices"), Some(&admin.token)).await.1["total"], 1);

    // Rooms and memberships.
    let room = create_room(&server, &alice, json!({})).await;
    let (_, joined) = server.get(&user_path("v1", &alice, "/joined_rooms"), Some(&admin.token)).await;
    assert_eq!(joined, json!({"joined_rooms": [room], "total": 1}));
    let (_, memberships) = server.get(&user_path("v1", &alice, "/memberships"), Some(&admin.token)).await;
    assert_eq!(memberships["memberships"][&room], "join");
    let (_, pushers) = server.get(&user_path("v1", &alice, "/pushers"), Some(&admin.token)).await;
    assert_eq!(pushers, json!({"pushers": [], "total": 0}));

    // Logging in as the user, for support.
    let (status, login) =
        server.post(&user_path("v1", &alice, "/login"), Some(&admin.token), json!({})).await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap();
    let (_, whoami) = server.get("/_matrix/client/v3/account/whoami", Some(token)).await;
    assert_eq!(whoami["user_id"], alice.user_id);
    assert_error(
        &server.post(&user_path("v1", &admin, "/login"), Some(&admin.token), json!({})).await,
        400,
        "M_INVALID_PARAM",
    );

    // Deleting the device ends its session.
    assert_eq!(server.delete(&one, Some(&admin.token)).await.0, 200);
    assert_error(
        &server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
}

#[tokio::test]
async fn locked_suspended_and_shadow_banned_users() {
    let (server, admin, alice, bob) = server_with_users().await;
    let room = create_room(&server, &admin, json!({"preset": "public_chat"})).await;
    for user in [&alice, &bob] {
        assert_eq!(
            server.post(&format!("/_matrix/client/v3/join/{room}"), Some(&user.token), json!({})).await.0,
            200
        );
    }

    // Suspended: reads, leaves and redacts its own events, but sends nothing.
    let (_, sent) = send_text(&server, &alice, &room, "before", "hello").await;
    let suspend = format!("{ADMIN}/v1/suspend/{}", encode(&alice.user_id));
    let (status, body) = server.put(&suspend, Some(&admin.token), json!({"suspend": true})).await;
    assert_eq!(status, 200);
    assert_eq!(body[format!("user_{}_suspended", alice.user_id)], true, "{body}");
    assert_error(&send_text(&server, &alice, &room, "t1", "hi").await, 403, "M_USER_SUSPENDED");
    let redact = format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", sent["event_id"].as_str().unwrap());
    assert_eq!(server.put(&redact, Some(&alice.token), json!({})).await.0, 200, "own events may be redacted");
    let displayname = format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id);
    assert_error(
        &server.put(&displayname, Some(&alice.token), json!({"displayname": "x"})).await,
        403,
        "M_USER_SUSPENDED",
    );
    assert_eq!(
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&alice.token)).await.0,
        200
    );
    // The spec's endpoint reads and lifts it.
    let spec_path = format!("/_matrix/client/v1/admin/suspend/{}", encode(&alice.user_id));
    assert_eq!(server.get(&spec_path, Some(&admin.token)).await.1, json!({"suspended": true}));
    assert_error(&server.get(&spec_path, Some(&bob.token)).await, 403, "M_FORBIDDEN");
    assert_eq!(
        server.put(&spec_path, Some(&admin.token), json!({"suspended": false})).await.1,
        json!({"suspended": false})
    );
    assert_eq!(send_text(&server, &alice, &room, "t2", "back").await.0, 200);

    // Locked: 401 M_USER_LOCKED with soft_logout on everything but logout;
    // the session survives the lock.
    let lock = user_path("v2", &alice, "");
    assert_eq!(server.put(&lock, Some(&admin.token), json!({"locked": true})).await.1["locked"], true);
    let refused = server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
    assert_error(&refused, 401, "M_USER_LOCKED");
    assert_eq!(refused.1["soft_logout"], true);
    let (_, listed) = server.get(&format!("{ADMIN}/v2/users"), Some(&admin.token)).await;
    assert_eq!(listed["total"], 2, "locked users are listed only with locked=true");
    let (_, listed) = server.get(&format!("{ADMIN}/v2/users?locked=true"), Some(&admin.token)).await;
    assert_eq!(listed["total"], 3);
    let spec_lock = format!("/_matrix/client/v1/admin/lock/{}", encode(&alice.user_id));
    assert_eq!(server.get(&spec_lock, Some(&admin.token)).await.1, json!({"locked": true}));
    assert_eq!(server.put(&spec_lock, Some(&admin.token), json!({"locked": false})).await.0, 200);
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200);

    // Shadow-banned: sending looks accepted, and no one receives it.
    let ban = user_path("v1", &alice, "/shadow_ban");
    assert_eq!(server.post(&ban, Some(&admin.token), json!({})).await.0, 200);
    let (status, ghost) = send_text(&server, &alice, &room, "t3", "nobody sees this").await;
    assert_eq!(status, 200, "{ghost}");
    assert!(ghost["event_id"].as_str().unwrap().starts_with('$'));
    let (_, record) = server.get(&user_path("v2", &alice, ""), Some(&admin.token)).await;
    assert_eq!(record["shadow_banned"], true);
    let (_, messages) = server
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"), Some(&bob.token))
        .await;
    let bodies: Vec<&Value> =
        messages["chunk"].as_array().unwrap().iter().map(|e| &e["content"]["body"]).collect();
    assert!(!bodies.contains(&&json!("nobody sees this")), "{bodies:?}");
    assert!(bodies.contains(&&json!("back")));
    assert_eq!(server.delete(&ban, Some(&admin.token)).await.0, 200);
    assert_eq!(server.get(&user_path("v2", &alice, ""), Some(&admin.token)).await.1["shadow_banned"], false);
}

#[tokio::test]
async fn registration_tokens_are_managed_and_consumed() {
    let server =
        TestServer::start_with("allow_registration = true\nregistration_requires_token = true\n").await;
    let admin_token = first_admin(&server).await;
    let tokens = format!("{ADMIN}/v1/registration_tokens");

    let (status, token) = server
        .post(&format!("{tokens}/new"), Some(&admin_token), json!({"token": "one-use", "uses_allowed": 1}))
        .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(
        token,
        json!({"token": "one-use", "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": null})
    );
    let (_, generated) =
        server.post(&format!("{tokens}/new"), Some(&admin_token), json!({"length": 10})).await;
    assert_eq!(generated["token"].as_str().unwrap().len(), 10);
    assert_eq!(generated["uses_allowed"], Value::Null);
    let duplicate =
        server.post(&format!("{tokens}/new"), Some(&admin_token), json!({"token": "one-use"})).await;
    assert_error(&duplicate, 400, "M_INVALID_PARAM");
    let bad = server.post(&format!("{tokens}/new"), Some(&admin_token), json!({"token": "no spaces"})).await;
    assert_error(&bad, 400, "M_INVALID_PARAM");
    let past = server.post(&format!("{tokens}/new"), Some(&admin_token), json!({"expiry_time": 1000})).await;
    assert_error(&past, 400, "M_INVALID_PARAM");

    // The validity endpoint and a registration through the token's stage.
    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity?token=one-use";
    assert_eq!(server.get(validity, None).await.1, json!({"valid": true}));
    let register = |username: &str, session: Option<&str>| {
        let mut auth = json!({"type": "m.login.registration_token", "token": "one-use"});
        if let Some(session) = session {
            auth["session"] = json!(session);
        }
        json!({"username": username, "password": PASSWORD, "auth": auth})
    };
    let (status, first) = server.post("/_matrix/client/v3/register", None, json!({"username": "dave"})).await;
    assert_eq!(status, 401);
    let session = first["session"].as_str().unwrap().to_owned();
    let (status, registered) =
        server.post("/_matrix/client/v3/register", None, register("dave", Some(&session))).await;
    assert_eq!(status, 200, "{registered}");
    let (_, used) = server.get(&format!("{tokens}/one-use"), Some(&admin_token)).await;
    assert_eq!((used["pending"].clone(), used["completed"].clone()), (json!(0), json!(1)), "{used}");
    assert_eq!(server.get(validity, None).await.1, json!({"valid": false}));
    let (status, refused) = server.post("/_matrix/client/v3/register", None, register("erin", None)).await;
    assert_eq!(status, 401, "a used-up token lets no one else register: {refused}");
    assert_eq!(refused["errcode"], "M_UNAUTHORIZED");

    // Listing with the `valid` filter, changing and deleting.
    let (_, valid) = server
        .get(&format!("{tokens}?valid=true&from=0&limit=500&order_by=id&dir=f"), Some(&admin_token))
        .await;
    assert_eq!(valid["registration_tokens"].as_array().unwrap().len(), 1, "{valid}");
    let (_, used_up) = server.get(&format!("{tokens}?valid=false"), Some(&admin_token)).await;
    assert_eq!(used_up["registration_tokens"][0]["token"], "one-use");
    let (status, changed) =
        server.put(&format!("{tokens}/one-use"), Some(&admin_token), json!({"uses_allowed": null})).await;
    assert_eq!((status.as_u16(), changed["uses_allowed"].clone()), (200, Value::Null), "{changed}");
    assert_eq!(server.get(validity, None).await.1, json!({"valid": true}));
    assert_eq!(server.delete(&format!("{tokens}/one-use"), Some(&admin_token)).await.0, 200);
    assert_error(&server.get(&format!("{tokens}/one-use"), Some(&admin_token)).await, 404, "M_NOT_FOUND");
    assert_error(&server.delete(&format!("{tokens}/one-use"), Some(&admin_token)).await, 404, "M_NOT_FOUND");
    assert_error(
        &server.put(&format!("{tokens}/one-use"), Some(&admin_token), json!({})).await,
        404,
        "M_NOT_FOUND",
    );
}

/// With tokens required and no token yet, the first account is registered
/// with the first-run token the server logs (and becomes the admin).
async fn first_admin(server: &TestServer) -> String {
    let log = server.log();
    let first_run = log
        .split("registration token: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned);
    let Some(token) = first_run else {
        panic!("no first-run token in the log:\n{log}");
    };
    let auth = json!({"type": "m.login.registration_token", "token": token});
    let body = json!({"username": "admin", "password": PASSWORD, "auth": auth});
    let (status, registered) = server.post("/_matrix/client/v3/register", None, body).await;
    assert_eq!(status, 200, "{registered}");
    registered["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn reports_are_listed_shown_and_resolved() {
    let (server, admin, alice, bob) = server_with_users().await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat", "name": "Reported room"})).await;
    assert_eq!(
        server.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bob.token), json!({})).await.0,
        200
    );
    let (_, sent) = send_text(&server, &alice, &room, "t1", "rude").await;
    let event_id = sent["event_id"].as_str().unwrap();
    let report_event = format!("/_matrix/client/v3/rooms/{room}/report/{event_id}");
    assert_eq!(server.post(&report_event, Some(&bob.token), json!({"reason": "rude"})).await.0, 200);
    let report_room = format!("/_matrix/client/v3/rooms/{room}/report");
    assert_eq!(server.post(&report_room, Some(&bob.token), json!({"reason": "whole room"})).await.0, 200);
    let report_user = format!("/_matrix/client/v3/users/{}/report", encode(&alice.user_id));
    assert_eq!(server.post(&report_user, Some(&bob.token), json!({"reason": "spam"})).await.0, 200);
    let unknown = format!("/_matrix/client/v3/users/{}/report", encode("@ghost:localhost"));
    assert_error(&server.post(&unknown, Some(&bob.token), json!({"reason": "?"})).await, 404, "M_NOT_FOUND");

    let reports = format!("{ADMIN}/v1/event_reports");
    let (status, listed) =
        server.get(&format!("{reports}?from=0&limit=2&order_by=received_ts&dir=b"), Some(&admin.token)).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["total"], 3);
    assert_eq!(listed["next_token"], 2, "next_token is a number in the reports list");
    let newest = &listed["event_reports"][0];
    assert_eq!(newest["reason"], "spam", "newest first: {listed}");
    assert_eq!(newest["sender"], alice.user_id, "a user report names the reported user");
    let (_, oldest_first) = server.get(&format!("{reports}?dir=f"), Some(&admin.token)).await;
    let event_report = &oldest_first["event_reports"][0];
    for field in [
        "id",
        "received_ts",
        "room_id",
        "name",
        "event_id",
        "user_id",
        "reason",
        "score",
        "sender",
        "canonical_alias",
    ] {
        assert!(event_report.get(field).is_some(), "{field} missing from {event_report}");
    }
    assert_eq!(event_report["event_id"], event_id);
    assert_eq!(event_report["user_id"], bob.user_id);
    assert_eq!(event_report["sender"], alice.user_id);
    assert_eq!(event_report["name"], "Reported room");
    let (_, filtered) = server
        .get(&format!("{reports}?event_sender_user_id={}", encode(&alice.user_id)), Some(&admin.token))
        .await;
    assert_eq!(filtered["total"], 2, "the event report and the user report: {filtered}");

    let one = format!("{reports}/{}", event_report["id"]);
    let (_, shown) = server.get(&one, Some(&admin.token)).await;
    assert_eq!(shown["event_json"]["content"]["body"], "rude");
    assert_eq!(shown["event_json"]["event_id"].as_str().unwrap_or(event_id), event_id);
    assert!(shown["event_json"]["signatures"].is_object(), "the event as a PDU: {shown}");
    assert_eq!(server.delete(&one, Some(&admin.token)).await.0, 200);
    assert_error(&server.get(&one, Some(&admin.token)).await, 404, "M_NOT_FOUND");
    assert_error(&server.delete(&one, Some(&admin.token)).await, 404, "M_NOT_FOUND");
    assert_error(&server.get(&format!("{reports}/x"), Some(&admin.token)).await, 400, "M_INVALID_PARAM");
    assert_eq!(server.get(&reports, Some(&admin.token)).await.1["total"], 2);
}

#[tokio::test]
async fn rooms_are_listed_shown_blocked_and_administered() {
    let (server, admin, alice, bob) = server_with_users().await;
    let named = create_room(&server, &alice, json!({"preset": "public_chat", "visibility": "public", "name": "Zebra talk", "room_alias_name": "zebra"})).await;
    let private = create_room(&server, &alice, json!({"name": "Aardvark corner", "topic": "Burrows"})).await;
    assert_eq!(
        server.post(&format!("/_matrix/client/v3/join/{named}"), Some(&bob.token), json!({})).await.0,
        200
    );

    let rooms = format!("{ADMIN}/v1/rooms");
    let (status, listed) =
        server.get(&format!("{rooms}?from=0&limit=1&order_by=name&dir=f"), Some(&admin.token)).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["total_rooms"], 2);
    assert_eq!(listed["offset"], 0);
    assert_eq!(listed["next_batch"], 1);
    let first = &listed["rooms"][0];
    assert_eq!(first["name"], "Aardvark corner", "ordered by name: {listed}");
    for field in [
        "room_id",
        "name",
        "canonical_alias",
        "joined_members",
        "joined_local_members",
        "version",
        "creator",
        "encryption",
        "federatable",
        "public",
        "join_rules",
        "guest_access",
        "history_visibility",
        "state_events",
        "room_type",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
    assert_eq!(first["creator"], alice.user_id);
    assert_eq!(first["join_rules"], "invite");
    let (_, second) = server.get(&format!("{rooms}?from=1&limit=1"), Some(&admin.token)).await;
    assert_eq!(second["prev_batch"], 0);
    assert!(second.get("next_batch").is_none());
    let (_, by_size) = server.get(&format!("{rooms}?order_by=joined_members"), Some(&admin.token)).await;
    assert_eq!(by_size["rooms"][0]["room_id"], named, "largest first: {by_size}");
    assert_eq!(by_size["rooms"][0]["joined_members"], 2);
    assert_eq!(by_size["rooms"][0]["public"], true);
    assert_eq!(by_size["rooms"][0]["canonical_alias"], "#zebra:localhost");
    let (_, found) = server.get(&format!("{rooms}?search_term=ZEBRA"), Some(&admin.token)).await;
    assert_eq!(found["total_rooms"], 1);
    assert_error(
        &server.get(&format!("{rooms}?order_by=nonsense"), Some(&admin.token)).await,
        400,
        "M_INVALID_PARAM",
    );

    let one = format!("{rooms}/{private}");
    let (_, details) = server.get(&one, Some(&admin.token)).await;
    assert_eq!(
        (details["topic"].clone(), details["joined_local_devices"].clone()),
        (json!("Burrows"), json!(1)),
        "{details}"
    );
    assert_eq!(details["tombstoned"], false);
    let (_, members) = server.get(&format!("{one}/members"), Some(&admin.token)).await;
    assert_eq!(members, json!({"members": [alice.user_id], "total": 1}));
    let (_, state) = server.get(&format!("{one}/state"), Some(&admin.token)).await;
    assert!(state["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"), "{state}");
    // The admin reads a room it is not in, whatever its history visibility.
    send_text(&server, &alice, &private, "secret", "between us").await;
    let (status, page) = server.get(&format!("{one}/messages?dir=b&limit=1"), Some(&admin.token)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "between us");
    assert!(page["start"].is_string() && page["end"].is_string(), "{page}");
    let filtered =
        format!("{one}/messages?dir=f&limit=50&filter={}", encode(r#"{"types":["m.room.create"]}"#));
    let (_, page) = server.get(&filtered, Some(&admin.token)).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1, "{page}");
    assert_error(
        &server.get(&format!("{one}/messages?filter=nope"), Some(&admin.token)).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server.get(&format!("{rooms}/!nope:localhost"), Some(&admin.token)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(&server.get(&format!("{rooms}/nope"), Some(&admin.token)).await, 400, "M_INVALID_PARAM");

    // The admin joins a user to the private room (invited by its admin first)
    // and makes the admin a room admin there.
    let join = json!({"user_id": bob.user_id});
    let (status, joined) = server.post(&format!("{ADMIN}/v1/join/{private}"), Some(&admin.token), join).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["room_id"], private);
    let (_, members) = server.get(&format!("{one}/members"), Some(&admin.token)).await;
    assert_eq!(members["total"], 2);
    let (status, made) = server
        .post(&format!("{one}/make_room_admin"), Some(&admin.token), json!({"user_id": bob.user_id}))
        .await;
    assert_eq!(status, 200, "{made}");
    let (_, levels) = server
        .get(&format!("/_matrix/client/v3/rooms/{private}/state/m.room.power_levels/"), Some(&bob.token))
        .await;
    // Room version 12: the creator is above every level, so the new room
    // admin gets the highest level there is, at least 100.
    assert_eq!(levels["users"][&bob.user_id], 100, "{levels}");

    // A blocked room cannot be joined by this server's users.
    let block = format!("{one}/block");
    assert_eq!(server.get(&block, Some(&admin.token)).await.1, json!({"block": false}));
    assert_eq!(
        server.put(&block, Some(&admin.token), json!({"block": true})).await.1,
        json!({"block": true})
    );
    assert_eq!(
        server.get(&block, Some(&admin.token)).await.1,
        json!({"block": true, "user_id": admin.user_id})
    );
    let carol = server.register("carol").await;
    let refused =
        server.post(&format!("/_matrix/client/v3/join/{private}"), Some(&carol.token), json!({})).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    assert_eq!(server.put(&block, Some(&admin.token), json!({"block": false})).await.0, 200);
    let unknown_block = format!("{rooms}/!elsewhere:example.org/block");
    assert_eq!(
        server.put(&unknown_block, Some(&admin.token), json!({"block": true})).await.0,
        200,
        "unknown rooms can be blocked"
    );
}

/// Poll a room deletion until it finishes (bounded).
async fn deletion_finished(server: &TestServer, admin: &User, delete_id: &str) -> Value {
    let path = format!("{ADMIN}/v2/rooms/delete_status/{delete_id}");
    for _ in 0..200 {
        let (status, task) = server.get(&path, Some(&admin.token)).await;
        assert_eq!(status, 200, "{task}");
        if task["status"] == "complete" || task["status"] == "failed" {
            return task;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the deletion of {delete_id} did not finish");
}

async fn search_hits(server: &TestServer, user: &User, term: &str) -> usize {
    let body = json!({"search_categories": {"room_events": {"search_term": term}}});
    let (status, found) = server.post("/_matrix/client/v3/search", Some(&user.token), body).await;
    assert_eq!(status, 200, "{found}");
    found["search_categories"]["room_events"]["results"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_deleted_room_loses_its_members_events_and_aliases() {
    let (server, admin, alice, bob) = server_with_users().await;
    let body = json!({"preset": "public_chat", "visibility": "public", "room_alias_name": "doomed"});
    let room = create_room(&server, &alice, body).await;
    assert_eq!(
        server.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bob.token), json!({})).await.0,
        200
    );
    for i in 0..5 {
        send_text(&server, &alice, &room, &format!("t{i}"), &format!("contraband number {i}")).await;
    }
    assert_eq!(search_hits(&server, &bob, "contraband").await, 5);

    let (_, before) = server.get("/_matrix/client/v3/sync", Some(&bob.token)).await;
    let since = before["next_batch"].as_str().unwrap().to_owned();
    let delete = json!({"block": true, "new_room_user_id": admin.user_id, "message": "Moved for moderation"});
    let (status, started) =
        server.delete_with_body(&format!("{ADMIN}/v2/rooms/{room}"), &admin.token, delete).await;
    assert_eq!(status, 200, "{started}");
    let delete_id = started["delete_id"].as_str().unwrap().to_owned();
    let task = deletion_finished(&server, &admin, &delete_id).await;
    assert_eq!(task["status"], "complete", "{task}");
    assert_eq!(task["room_id"], room);
    let shutdown = &task["shutdown_room"];
    let mut kicked: Vec<_> =
        shutdown["kicked_users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    kicked.sort();
    assert_eq!(kicked, vec![alice.user_id.as_str(), bob.user_id.as_str()], "{task}");
    assert_eq!(shutdown["failed_to_kick_users"], json!([]));
    assert_eq!(shutdown["local_aliases"], json!(["#doomed:localhost"]));
    let new_room = shutdown["new_room_id"].as_str().unwrap();

    // The members are in the new room, which has the alias and the message.
    let (_, joined) = server.get("/_matrix/client/v3/joined_rooms", Some(&bob.token)).await;
    assert_eq!(joined["joined_rooms"], json!([new_room]), "{joined}");
    let (_, alias) = server.get("/_matrix/client/v3/directory/room/%23doomed:localhost", None).await;
    assert_eq!(alias["room_id"], new_room);
    let (_, messages) =
        server.get(&format!("/_matrix/client/v3/rooms/{new_room}/messages?dir=b"), Some(&bob.token)).await;
    assert!(
        messages["chunk"].as_array().unwrap().iter().any(|e| e["content"]["body"] == "Moved for moderation")
    );

    // A client that syncs after the purge learns it left the old room.
    let (_, later) = server.get(&format!("/_matrix/client/v3/sync?since={since}"), Some(&bob.token)).await;
    let left = &later["rooms"]["leave"][&room]["timeline"]["events"];
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{later}");
    assert_eq!(left[0]["content"]["membership"], "leave");
    assert!(later["rooms"]["join"].get(new_room).is_some(), "{later}");

    // The old room's events are gone, from history and from search; the
    // room is blocked and unknown to the admin API.
    let history =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&alice.token)).await;
    assert!(history.0 == 403 || history.0 == 404, "{history:?}");
    assert_eq!(search_hits(&server, &bob, "contraband").await, 0);
    assert_error(
        &server.get(&format!("{ADMIN}/v1/rooms/{room}"), Some(&admin.token)).await,
        404,
        "M_NOT_FOUND",
    );
    let refused = server.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bob.token), json!({})).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    let (_, by_room) =
        server.get(&format!("{ADMIN}/v2/rooms/{room}/delete_status"), Some(&admin.token)).await;
    assert_eq!(by_room["results"][0]["delete_id"], delete_id);
    assert_error(
        &server.get(&format!("{ADMIN}/v2/rooms/delete_status/nope"), Some(&admin.token)).await,
        404,
        "M_NOT_FOUND",
    );
    let none =
        server.get(&format!("{ADMIN}/v2/rooms/!never:localhost/delete_status"), Some(&admin.token)).await;
    assert_error(&none, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn a_room_deletion_goes_on_after_a_kill() {
    let (server, admin, alice, _) = server_with_users().await;
    let room = create_room(&server, &alice, json!({})).await;
    for i in 0..50 {
        send_text(&server, &alice, &room, &format!("t{i}"), "to be purged").await;
    }
    let (status, started) =
        server.delete_with_body(&format!("{ADMIN}/v2/rooms/{room}"), &admin.token, json!({})).await;
    assert_eq!(status, 200, "{started}");
    let delete_id = started["delete_id"].as_str().unwrap().to_owned();
    // Killed at once: the deletion was stored before the answer, so the
    // restarted server finishes it from the step it reached.
    server.kill_9();
    let server = TestServer::start_in(server.kill(), "allow_registration = true\n");
    let task = deletion_finished(&server, &admin, &delete_id).await;
    assert_eq!(task["status"], "complete", "{task}");
    assert_error(
        &server.get(&format!("{ADMIN}/v1/rooms/{room}"), Some(&admin.token)).await,
        404,
        "M_NOT_FOUND",
    );
    let (_, joined) = server.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert_eq!(joined["joined_rooms"], json!([]));
}

#[tokio::test]
async fn server_notices_reach_a_users_notices_room() {
    let (server, admin, alice, _) = server_with_users().await;
    let notice =
        json!({"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": "Maintenance tonight"}});
    let path = format!("{ADMIN}/v1/send_server_notice");
    let (status, sent) = server.post(&path, Some(&admin.token), notice.clone()).await;
    assert_eq!(status, 200, "{sent}");
    assert!(sent["event_id"].as_str().unwrap().starts_with('$'));

    // Alice is invited to a room named for notices, tagged m.server_notice,
    // and cannot reject the invite.
    let (_, sync) = server.get("/_matrix/client/v3/sync", Some(&alice.token)).await;
    let invites = sync["rooms"]["invite"].as_object().expect("an invite");
    let (room, invite) = invites.iter().next().unwrap();
    let state = invite["invite_state"]["events"].as_array().unwrap();
    assert!(
        state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Server Notices"),
        "{invite}"
    );
    let (_, tags) = server
        .get(&format!("/_matrix/client/v3/user/{}/rooms/{room}/tags", alice.user_id), Some(&alice.token))
        .await;
    assert!(tags["tags"].get("m.server_notice").is_some(), "{tags}");
    let reject =
        server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&alice.token), json!({})).await;
    assert_error(&reject, 403, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM");

    // Joined, she reads the notices and cannot post; the next notice goes
    // to the same room, and a retried PUT sends nothing twice.
    assert_eq!(
        server.post(&format!("/_matrix/client/v3/join/{room}"), Some(&alice.token), json!({})).await.0,
        200
    );
    assert_error(&send_text(&server, &alice, room, "t1", "reply").await, 403, "M_FORBIDDEN");
    let put = format!("{ADMIN}/v1/send_server_notice/txn1");
    let second = json!({"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": "Done"}});
    let (_, first_put) = server.put(&put, Some(&admin.token), second.clone()).await;
    let (_, retried) = server.put(&put, Some(&admin.token), second).await;
    assert_eq!(first_put["event_id"], retried["event_id"]);
    let (_, messages) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&alice.token)).await;
    let bodies: Vec<_> =
        messages["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["Done", "Maintenance tonight"], "{messages}");

    // The system user's ID is reserved; unknown and remote users get errors.
    let taken = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "server", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_error(&taken, 400, "M_EXCLUSIVE");
    let unknown = json!({"user_id": "@ghost:localhost", "content": {"body": "?"}});
    assert_error(&server.post(&path, Some(&admin.token), unknown).await, 404, "M_NOT_FOUND");
    let remote = json!({"user_id": "@x:elsewhere.example", "content": {"body": "?"}});
    assert_error(&server.post(&path, Some(&admin.token), remote).await, 400, "M_INVALID_PARAM");
    assert_error(
        &server.post(&path, Some(&admin.token), json!({"user_id": alice.user_id})).await,
        400,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn admins_quarantine_protect_list_and_delete_media() {
    let (server, admin, alice, bob) = server_with_users().await;
    let mut uris = Vec::new();
    for (i, size) in [10usize, 2000, 30].iter().enumerate() {
        // Apart in time: "newest first" would otherwise fall back to the
        // (random) media IDs for uploads within one millisecond.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let (status, uploaded) = crate::media::upload(
            &server,
            &alice,
            vec![b'a' + i as u8; *size],
            "text/plain",
            &format!("f{i}.txt"),
        )
        .await;
        assert_eq!(status, 200, "{uploaded}");
        uris.push(uploaded["content_uri"].as_str().unwrap().to_owned());
    }
    crate::media::upload(&server, &bob, b"bob's".to_vec(), "text/plain", "b.txt").await;
    let id = |uri: &str| uri.rsplit('/').next().unwrap().to_owned();
    let download = |uri: &str| format!("/_matrix/client/v1/media/download/localhost/{}", id(uri));

    // A user's media, newest first by default, with Synapse's fields.
    let media = user_path("v1", &alice, "/media");
    let (status, listed) = server.get(&format!("{media}?limit=2"), Some(&admin.token)).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!((listed["total"].clone(), listed["next_token"].clone()), (json!(3), json!(2)));
    assert_eq!(listed["media"][0]["media_id"], id(&uris[2]));
    for field in [
        "media_id",
        "media_type",
        "media_length",
        "upload_name",
        "created_ts",
        "last_access_ts",
        "quarantined_by",
        "safe_from_quarantine",
    ] {
        assert!(listed["media"][0].get(field).is_some(), "{field} missing from {listed}");
    }
    let (_, by_size) = server.get(&format!("{media}?order_by=media_length&dir=b"), Some(&admin.token)).await;
    assert_eq!(by_size["media"][0]["media_length"], 2000);

    // Quarantined media is served to no one; protected media cannot be quarantined.
    let quarantine = |uri: &str| format!("{ADMIN}/v1/media/quarantine/localhost/{}", id(uri));
    assert_eq!(server.post(&quarantine(&uris[0]), Some(&admin.token), json!({})).await.0, 200);
    assert_eq!(crate::media::download(&server, Some(&bob), &download(&uris[0])).await.status(), 404);
    let unquarantine = format!("{ADMIN}/v1/media/unquarantine/localhost/{}", id(&uris[0]));
    assert_eq!(server.post(&unquarantine, Some(&admin.token), json!({})).await.0, 200);
    assert_eq!(crate::media::download(&server, Some(&bob), &download(&uris[0])).await.status(), 200);
    let protect = format!("{ADMIN}/v1/media/protect/{}", id(&uris[1]));
    assert_eq!(server.post(&protect, Some(&admin.token), json!({})).await.0, 200);
    let (_, counted) = server
        .post(
            &format!("{ADMIN}/v1/user/{}/media/quarantine", encode(&alice.user_id)),
            Some(&admin.token),
            json!({}),
        )
        .await;
    assert_eq!(counted["num_quarantined"], 2, "the protected item stays: {counted}");
    assert_eq!(crate::media::download(&server, Some(&bob), &download(&uris[1])).await.status(), 200);
    assert_error(
        &server
            .post(&format!("{ADMIN}/v1/media/quarantine/localhost/nope"), Some(&admin.token), json!({}))
            .await,
        404,
        "M_NOT_FOUND",
    );

    // A room's media, by the events that name it.
    let room = create_room(&server, &alice, json!({})).await;
    let image = json!({"msgtype": "m.image", "body": "pic", "url": uris[1]});
    server
        .put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/img"), Some(&alice.token), image)
        .await;
    let (_, in_room) = server.get(&format!("{ADMIN}/v1/room/{room}/media"), Some(&admin.token)).await;
    assert_eq!(in_room["local"], json!([uris[1]]), "{in_room}");
    assert_eq!(in_room["remote"], json!([]));

    // Statistics, then deletion in bulk (the legacy path too).
    let (_, stats) = server
        .get(&format!("{ADMIN}/v1/statistics/users/media?order_by=media_length&dir=b"), Some(&admin.token))
        .await;
    assert_eq!(stats["total"], 2, "{stats}");
    assert_eq!(stats["users"][0]["user_id"], alice.user_id);
    assert_eq!(stats["users"][0]["media_count"], 3);
    assert_eq!(stats["users"][0]["media_length"], 2040);
    let future = 99_999_999_999_999u64;
    let (status, deleted) = server
        .post(
            &format!("{ADMIN}/v1/media/delete?before_ts={future}&size_gt=20"),
            Some(&admin.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["total"], 1, "only the unprotected item above 20 bytes: {deleted}");
    assert_eq!(deleted["deleted_media"], json!([id(&uris[2])]));
    let seconds = server
        .post(&format!("{ADMIN}/v1/media/delete?before_ts=1700000000"), Some(&admin.token), json!({}))
        .await;
    assert_error(&seconds, 400, "M_INVALID_PARAM");
    let legacy = format!("{ADMIN}/v1/media/localhost/delete?before_ts={future}");
    assert_eq!(
        server.post(&legacy, Some(&admin.token), json!({})).await.1["total"],
        2,
        "alice's smallest and bob's"
    );
    let (_, remaining) = server.get(&media, Some(&admin.token)).await;
    assert_eq!(remaining["total"], 1, "the protected item: {remaining}");
    let (_, cleared) = server.delete(&media, Some(&admin.token)).await;
    assert_eq!(cleared["total"], 1);
}

/// Every field of `row` a page of the admin UI reads.
#[track_caller]
fn has_fields(row: &Value, fields: &[&str], page: &str) {
    for field in fields {
        assert!(row.get(*field).is_some(), "{page}: `{field}` missing from {row}");
    }
}

/// synapse-admin's own requests (method, path, query as the UI sends
/// them) at login and on its Users, Rooms, Media, Registration tokens and
/// Reports pages, with every field each page reads.
#[tokio::test]
async fn the_synapse_admin_ui_request_sequence_works() {
    let (server, _, alice, bob) = server_with_users().await;
    // Login page: three unauthenticated probes, then the login (r0 paths).
    let (status, version) = server.get(&format!("{ADMIN}/v1/server_version"), None).await;
    assert_eq!(status, 200);
    has_fields(&version, &["server_version"], "login");
    let (_, versions) = server.get("/_matrix/client/versions", None).await;
    has_fields(&versions, &["versions"], "login");
    let (_, flows) = server.get("/_matrix/client/r0/login", None).await;
    assert!(flows["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.password"), "{flows}");
    let login = json!({
        "device_id": null, "initial_device_display_name": "Synapse Admin", "type": "m.login.password",
        "user": "admin", "password": PASSWORD, "identifier": {"type": "m.id.user", "user": "admin"},
    });
    let (status, session) = server.post("/_matrix/client/r0/login", None, login).await;
    assert_eq!(status, 200, "{session}");
    has_fields(&session, &["home_server", "user_id", "access_token", "device_id"], "login");
    let token = session["access_token"].as_str().unwrap();
    let get = |path: String| {
        let server = &server;
        async move {
            let (status, body) = server.get(&path, Some(token)).await;
            assert_eq!(status, 200, "GET {path}: {body}");
            body
        }
    };

    // Users list and one user's tabs.
    let room = create_room(&server, &alice, json!({"name": "Shown", "preset": "public_chat"})).await;
    send_text(&server, &alice, &room, "t1", "hello").await;
    let report = format!("/_matrix/client/v3/rooms/{room}/report/{}", {
        let (_, sent) = send_text(&server, &alice, &room, "t2", "rude").await;
        sent["event_id"].as_str().unwrap().to_owned()
    });
    server.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bob.token), json!({})).await;
    server.post(&report, Some(&bob.token), json!({"reason": "rude", "score": -100})).await;
    let users = get(format!(
        "{ADMIN}/v2/users?from=0&limit=10&guests=true&deactivated=false&locked=false&order_by=name&dir=f"
    ))
    .await;
    has_fields(&users, &["users", "total"], "users");
    for user in users["users"].as_array().unwrap() {
        has_fields(
            user,
            &[
                "name",
                "displayname",
                "avatar_url",
                "is_guest",
                "admin",
                "deactivated",
                "locked",
                "erased",
                "creation_ts",
            ],
            "users",
        );
    }
    let alice_id = encode(&alice.user_id);
    let record = get(format!("{ADMIN}/v2/users/{alice_id}")).await;
    has_fields(
        &record,
        &[
            "name",
            "displayname",
            "admin",
            "deactivated",
            "creation_ts",
            "threepids",
            "external_ids",
            "user_type",
        ],
        "user",
    );
    let devices =
        get(format!("{ADMIN}/v2/users/{alice_id}/devices?from=0&limit=10&order_by=device_id&dir=f")).await;
    has_fields(
        &devices["devices"][0],
        &["device_id", "display_name", "last_seen_ip", "last_seen_ts"],
        "devices",
    );
    let whois = get(format!("{ADMIN}/v1/whois/{alice_id}")).await;
    has_fields(
        &whois["devices"][&alice.device_id]["sessions"][0]["connections"][0],
        &["ip", "last_seen", "user_agent"],
        "connections",
    );
    let media =
        get(format!("{ADMIN}/v1/users/{alice_id}/media?from=0&limit=50&order_by=created_ts&dir=b")).await;
    has_fields(&media, &["media", "total"], "user media");
    let joined = get(format!("{ADMIN}/v1/users/{alice_id}/joined_rooms")).await;
    has_fields(&joined, &["joined_rooms", "total"], "user rooms");
    has_fields(&get(format!("{ADMIN}/v1/rooms/{room}")).await, &["name"], "user rooms");
    has_fields(&get(format!("{ADMIN}/v1/users/{alice_id}/pushers")).await, &["pushers", "total"], "pushers");

    // Rooms list and a room's page.
    let rooms = get(format!("{ADMIN}/v1/rooms?from=0&limit=10&order_by=name&dir=f")).await;
    has_fields(&rooms, &["rooms", "total_rooms"], "rooms");
    has_fields(
        &rooms["rooms"][0],
        &[
            "room_id",
            "name",
            "canonical_alias",
            "encryption",
            "joined_members",
            "joined_local_members",
            "state_events",
            "version",
            "federatable",
            "public",
        ],
        "rooms",
    );
    let shown = get(format!("{ADMIN}/v1/rooms/{room}")).await;
    has_fields(
        &shown,
        &["topic", "joined_local_devices", "creator", "join_rules", "guest_access", "history_visibility"],
        "room",
    );
    let members = get(format!("{ADMIN}/v1/rooms/{room}/members")).await;
    assert_eq!(members["total"], 2);
    let state = get(format!("{ADMIN}/v1/rooms/{room}/state")).await;
    has_fields(&state["state"][0], &["type", "origin_server_ts", "content", "sender"], "room state");
    let extremities = get(format!("{ADMIN}/v1/rooms/{room}/forward_extremities")).await;
    has_fields(
        &extremities["results"][0],
        &["event_id", "state_group", "depth", "received_ts"],
        "extremities",
    );

    // Media statistics, registration tokens and reports pages.
    let stats =
        get(format!("{ADMIN}/v1/statistics/users/media?from=0&limit=10&order_by=media_length&dir=b")).await;
    has_fields(&stats, &["users", "total"], "media");
    let (status, created) = server
        .post(&format!("{ADMIN}/v1/registration_tokens/new"), Some(token), json!({"uses_allowed": 3}))
        .await;
    assert_eq!(status, 200, "{created}");
    let tokens =
        get(format!("{ADMIN}/v1/registration_tokens?from=0&limit=500&valid=true&order_by=id&dir=f")).await;
    has_fields(
        &tokens["registration_tokens"][0],
        &["token", "uses_allowed", "pending", "completed", "expiry_time"],
        "tokens",
    );
    let reports = get(format!("{ADMIN}/v1/event_reports?from=0&limit=10&order_by=received_ts&dir=b")).await;
    has_fields(&reports, &["event_reports", "total"], "reports");
    let listed = &reports["event_reports"][0];
    has_fields(listed, &["id", "received_ts", "user_id", "score", "name"], "reports");
    let shown = get(format!("{ADMIN}/v1/event_reports/{}", listed["id"])).await;
    has_fields(
        &shown,
        &["reason", "canonical_alias", "room_id", "sender", "event_id", "event_json"],
        "report",
    );
    has_fields(&shown["event_json"], &["origin_server_ts", "type", "content"], "report event");
}

#[tokio::test]
async fn a_rooms_history_is_purged_up_to_a_point() {
    let (server, admin, alice, _) = server_with_users().await;
    let room = create_room(&server, &alice, json!({"name": "Long history"})).await;
    let mut sent = Vec::new();
    for i in 0..4 {
        let (_, event) = send_text(&server, &alice, &room, &format!("t{i}"), &format!("old {i}")).await;
        sent.push(event["event_id"].as_str().unwrap().to_owned());
    }
    let purge = format!("{ADMIN}/v1/purge_history/{room}");
    assert_error(&server.post(&purge, Some(&admin.token), json!({})).await, 400, "M_BAD_JSON");
    let body = json!({"delete_local_events": true, "purge_up_to_event_id": sent[2]});
    let (status, started) = server.post(&purge, Some(&admin.token), body).await;
    assert_eq!(status, 200, "{started}");
    let status_path = format!("{ADMIN}/v1/purge_history_status/{}", started["purge_id"].as_str().unwrap());
    let mut done = Value::Null;
    for _ in 0..100 {
        done = server.get(&status_path, Some(&admin.token)).await.1;
        if done["status"] != "active" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(done["status"], "complete", "{done}");

    // The two oldest messages are gone; later ones and the room's state stay.
    let (_, page) = server
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&alice.token))
        .await;
    let bodies: Vec<_> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["old 3", "old 2"], "{page}");
    let (_, name) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), Some(&alice.token)).await;
    assert_eq!(name["name"], "Long history");
    assert_error(
        &server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", sent[0]), Some(&alice.token)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(send_text(&server, &alice, &room, "t9", "still works").await.0, 200);

    // Local events stay unless asked; a point in time with no event before it is 404.
    let by_ts = json!({"purge_up_to_ts": 1000});
    assert_error(&server.post(&purge, Some(&admin.token), by_ts).await, 404, "M_NOT_FOUND");
    assert_error(
        &server.get(&format!("{ADMIN}/v1/purge_history_status/nope"), Some(&admin.token)).await,
        404,
        "M_NOT_FOUND",
    );
}

/// The HMAC `register_new_matrix_user` sends.
fn registration_mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let message = format!("{nonce}\0{user}\0{password}\0{}", if admin { "admin" } else { "notadmin" });
    ring::hmac::sign(&key, message.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn shared_secret_registration_creates_admins() {
    let server =
        TestServer::start_with("allow_registration = true\nregistration_shared_secret = \"s3cret\"\n").await;
    let path = format!("{ADMIN}/v1/register");
    let (status, issued) = server.get(&path, None).await;
    assert_eq!(status, 200, "{issued}");
    let nonce = issued["nonce"].as_str().unwrap().to_owned();
    let mac = registration_mac("s3cret", &nonce, "root", "pw", true);
    let body = json!({"nonce": nonce, "username": "root", "password": "pw", "admin": true, "mac": mac});
    let (status, created) = server.post(&path, None, body.clone()).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["user_id"], "@root:localhost");
    let token = created["access_token"].as_str().unwrap();
    assert_eq!(
        server.get(&format!("{ADMIN}/v2/users"), Some(token)).await.0,
        200,
        "the new account is an admin"
    );
    let later = server.register("later").await;
    assert_error(&server.get(&format!("{ADMIN}/v2/users"), Some(&later.token)).await, 403, "M_FORBIDDEN");

    // A nonce serves once; a wrong secret's MAC is refused.
    assert_error(&server.post(&path, None, body).await, 400, "M_INVALID_PARAM");
    let nonce = server.get(&path, None).await.1["nonce"].as_str().unwrap().to_owned();
    let forged = registration_mac("guess", &nonce, "eve", "pw", true);
    let forged = json!({"nonce": nonce, "username": "eve", "password": "pw", "admin": true, "mac": forged});
    assert_error(&server.post(&path, None, forged).await, 403, "M_FORBIDDEN");

    let off = TestServer::start().await;
    assert_error(&off.get(&path, None).await, 400, "M_INVALID_PARAM");
}
