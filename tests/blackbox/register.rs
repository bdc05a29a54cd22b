use serde_json::json;

use crate::harness::{PASSWORD, TestServer, assert_error};

const REGISTER: &str = "/_matrix/client/v3/register";

#[tokio::test]
async fn dummy_auth_on_first_call_registers() {
    let server = TestServer::start().await;
    let user = server.register("alice").await;
    assert_eq!(user.user_id, "@alice:localhost");
    let (status, body) = server.get("/_matrix/client/v3/account/whoami", Some(&user.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], "@alice:localhost");
    assert_eq!(body["device_id"], user.device_id.as_str());
    assert_ne!(body["is_guest"], true);
}

#[tokio::test]
async fn uia_round_trip_with_session() {
    let server = TestServer::start().await;
    let (status, body) = server.post(REGISTER, None, json!({"username": "bob", "password": PASSWORD})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["flows"], json!([{"stages": ["m.login.dummy"]}]));
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            REGISTER,
            None,
            json!({"username": "bob", "password": PASSWORD, "device_id": "MYDEVICE",
                   "initial_device_display_name": "Bob's phone",
                   "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], "MYDEVICE");
    let token = body["access_token"].as_str().unwrap();
    let (_, device) = server.get("/_matrix/client/v3/devices/MYDEVICE", Some(token)).await;
    assert_eq!(device["display_name"], "Bob's phone");
    // An unknown session is refused.
    let result = server
        .post(
            REGISTER,
            None,
            json!({"username": "bob2", "auth": {"type": "m.login.dummy", "session": "nope"}}),
        )
        .await;
    assert_eq!(result.0, 400, "{}", result.1);
}

#[tokio::test]
async fn username_rules_and_availability() {
    let server = TestServer::start().await;
    server.register("carol").await;
    let taken = server
        .post(
            REGISTER,
            None,
            json!({"username": "carol", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_error(&taken, 400, "M_USER_IN_USE");
    let upper =
        server.post(REGISTER, None, json!({"username": "CAROL", "auth": {"type": "m.login.dummy"}})).await;
    assert_error(&upper, 400, "M_USER_IN_USE");
    for bad in ["car ol", "12345", "caröl"] {
        let result =
            server.post(REGISTER, None, json!({"username": bad, "auth": {"type": "m.login.dummy"}})).await;
        assert_error(&result, 400, "M_INVALID_USERNAME");
    }
    let available = server.get("/_matrix/client/v3/register/available?username=dave", None).await;
    assert_eq!(available.0, 200);
    assert_eq!(available.1["available"], true);
    assert_error(
        &server.get("/_matrix/client/v3/register/available?username=carol", None).await,
        400,
        "M_USER_IN_USE",
    );
    assert_error(
        &server.get("/_matrix/client/v3/register/available?username=Not%20Valid", None).await,
        400,
        "M_INVALID_USERNAME",
    );
    // No username: the server picks one.
    let (status, body) = server.post(REGISTER, None, json!({"auth": {"type": "m.login.dummy"}})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["user_id"].as_str().unwrap().ends_with(":localhost"));
}

#[tokio::test]
async fn inhibit_login_returns_no_token() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post(REGISTER, None, json!({"username": "quiet", "password": PASSWORD, "inhibit_login": true, "auth": {"type": "m.login.dummy"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@quiet:localhost");
    assert!(body["access_token"].is_null() && body["device_id"].is_null(), "{body}");
    assert_eq!(server.login("quiet", PASSWORD).await.0, 200);
}

#[tokio::test]
async fn closed_registration_is_forbidden() {
    let server = TestServer::start_with("allow_registration = false\n").await;
    // The first-run token exists, so register offers only the token stage ...
    let (status, body) =
        server.post(REGISTER, None, json!({"username": "eve", "auth": {"type": "m.login.dummy"}})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["flows"], json!([{"stages": ["m.login.registration_token"]}]));
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    // ... and once the first account exists, registration is simply closed.
    let token = first_run_token(&server.log());
    register_with_token(&server, "admin", &token).await;
    let result =
        server.post(REGISTER, None, json!({"username": "eve", "auth": {"type": "m.login.dummy"}})).await;
    assert_error(&result, 403, "M_FORBIDDEN");
    assert_error(
        &server.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=x", None).await,
        403,
        "M_FORBIDDEN",
    );
}

fn first_run_token(log: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains("registration token:"))
        .unwrap_or_else(|| panic!("no token in log:\n{log}"));
    line.rsplit("registration token: ").next().unwrap().trim().to_owned()
}

async fn register_with_token(server: &TestServer, username: &str, token: &str) -> serde_json::Value {
    let (status, body) = server
        .post(REGISTER, None, json!({"username": username, "password": PASSWORD, "auth": {"type": "m.login.registration_token", "token": token}}))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn first_run_token_registers_the_first_account_once() {
    let server = TestServer::start_with("allow_registration = false\n").await;
    let token = first_run_token(&server.log());
    let validity = server
        .get(&format!("/_matrix/client/v1/register/m.login.registration_token/validity?token={token}"), None)
        .await;
    assert_eq!(validity.1["valid"], true, "{}", validity.1);
    let wrong =
        server.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=wrong", None).await;
    assert_eq!(wrong.1["valid"], false);
    let (status, body) = server
        .post(REGISTER, None, json!({"username": "first", "password": PASSWORD, "auth": {"type": "m.login.registration_token", "token": "wrong"}}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    register_with_token(&server, "first", &token).await;
    let again = server
        .post(REGISTER, None, json!({"username": "second", "password": PASSWORD, "auth": {"type": "m.login.registration_token", "token": token}}))
        .await;
    assert_error(&again, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn configured_registration_token_is_required() {
    let server = TestServer::start_with("allow_registration = true\nregistration_token = \"s3cret\"\n").await;
    let result =
        server.post(REGISTER, None, json!({"username": "tok", "auth": {"type": "m.login.dummy"}})).await;
    assert_eq!(result.0, 401);
    assert_eq!(result.1["flows"], json!([{"stages": ["m.login.registration_token"]}]));
    let session = result.1["session"].as_str().unwrap();
    let valid = server
        .get("/_matrix/client/v1/register/m.login.registration_token/validity?token=s3cret", None)
        .await;
    assert_eq!(valid.1["valid"], true);
    let (status, body) = server
        .post(REGISTER, None, json!({"username": "tok", "password": PASSWORD, "auth": {"type": "m.login.registration_token", "token": "s3cret", "session": session}}))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn guests_refused_unless_enabled() {
    let server = TestServer::start().await;
    let result = server.post(&format!("{REGISTER}?kind=guest"), None, json!({})).await;
    assert_error(&result, 403, "M_GUEST_ACCESS_FORBIDDEN");

    let server = TestServer::start_with("allow_guest_access = true\n").await;
    let (status, body) = server.post(&format!("{REGISTER}?kind=guest"), None, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let (_, whoami) = server.get("/_matrix/client/v3/account/whoami", Some(token)).await;
    assert_eq!(whoami["is_guest"], true);

    // Guests registering at once each get their own user ID.
    let path = format!("{REGISTER}?kind=guest");
    let at_once = (0..8).map(|_| server.post(&path, None, json!({})));
    let mut ids = std::collections::BTreeSet::new();
    for (status, body) in futures::future::join_all(at_once).await {
        assert_eq!(status, 200, "{body}");
        ids.insert(body["user_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 8, "{ids:?}");
}

#[tokio::test]
async fn appservice_namespaces_are_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let registration = dir.path().join("bridge.yaml");
    std::fs::write(
        &registration,
        "id: bridge\nurl: null\nas_token: as_secret\nhs_token: hs_secret\nsender_localpart: bridgebot\n\
         namespaces:\n  users:\n    - exclusive: true\n      regex: \"@bridge_.*:localhost\"\n  aliases: []\n  rooms: []\n",
    )
    .unwrap();
    let server = TestServer::start_with(&format!(
        "allow_registration = true\nappservice_registrations = [\"{}\"]\n",
        registration.display()
    ))
    .await;
    let result = server
        .post(
            REGISTER,
            None,
            json!({"username": "bridge_alice", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_error(&result, 400, "M_EXCLUSIVE");

    let as_register = |username: &'static str, token: &'static str| {
        server.post(
            REGISTER,
            Some(token),
            json!({"username": username, "type": "m.login.application_service"}),
        )
    };
    let (status, body) = as_register("bridge_alice", "as_secret").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@bridge_alice:localhost");
    assert_error(&as_register("outsider", "as_secret").await, 400, "M_EXCLUSIVE");
    assert_error(&as_register("bridge_bob", "wrong").await, 401, "M_UNKNOWN_TOKEN");

    let login = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "bridge_alice"}});
    let (status, body) = server.post("/_matrix/client/v3/login", Some("as_secret"), login.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_error(&server.post("/_matrix/client/v3/login", None, login).await, 401, "M_MISSING_TOKEN");
}

/// A UIA registration remembers the first request's parameters (later
/// stages may send only `auth`), and the same completed session sent again
/// answers with the same account instead of "user in use".
#[tokio::test]
async fn uia_registration_remembers_parameters_and_is_idempotent() {
    let server = TestServer::start().await;
    let path = "/_matrix/client/v3/register";
    let first = json!({"username": "remy", "password": "sUp3rs3kr1t", "device_id": "xyzzy",
                       "initial_device_display_name": "display_name"});
    let (status, body) = server.post(path, None, first).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["completed"], json!([]), "the key is there even when empty");
    let session = body["session"].as_str().unwrap().to_owned();
    let stage = json!({"auth": {"type": "m.login.dummy", "session": session}});
    let (status, done) = server.post(path, None, stage.clone()).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["user_id"].as_str(), done["device_id"].as_str()),
        (Some("@remy:localhost"), Some("xyzzy"))
    );
    let token = done["access_token"].as_str().unwrap();
    let (_, device) = server.get("/_matrix/client/v3/devices/xyzzy", Some(token)).await;
    assert_eq!(device["display_name"], "display_name");
    assert_eq!(server.login("remy", "sUp3rs3kr1t").await.0, 200, "the remembered password");

    let (status, again) = server.post(path, None, stage).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user_id"], "@remy:localhost");

    // inhibit_login remembered from the first request.
    let (_, body) = server
        .post(path, None, json!({"username": "ina", "password": "pw-pw-pw-pw", "inhibit_login": true}))
        .await;
    let stage = json!({"auth": {"type": "m.login.dummy", "session": body["session"]}});
    let (status, done) = server.post(path, None, stage).await;
    assert_eq!(status, 200, "{done}");
    assert!(done.get("access_token").is_none() && done.get("device_id").is_none(), "{done}");
}

/// Guests join only rooms whose guest access is `can_join`, leave when it
/// is revoked, and can upgrade their own account (never another's).
#[tokio::test]
async fn guests_join_can_join_rooms_and_upgrade() {
    let server = TestServer::start_with("allow_registration = true\nallow_guest_access = true\n").await;
    let alice = server.register("alice").await;
    let (guest_id, guest_token) = register_guest(&server).await;
    let (_, other_token) = register_guest(&server).await;
    let (_, room) = server
        .post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"preset": "public_chat"}))
        .await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    let join = format!("/_matrix/client/v3/rooms/{room}/join");
    assert_error(&server.post(&join, Some(&guest_token), json!({})).await, 403, "M_FORBIDDEN");
    let access = format!("/_matrix/client/v3/rooms/{room}/state/m.room.guest_access/");
    server.put(&access, Some(&alice.token), json!({"guest_access": "can_join"})).await;
    assert_eq!(server.post(&join, Some(&guest_token), json!({})).await.0, 200);
    server.put(&access, Some(&alice.token), json!({"guest_access": "forbidden"})).await;
    let member = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{guest_id}");
    assert_eq!(server.get(&member, Some(&alice.token)).await.1["membership"], "leave");

    let localpart = guest_id.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let stolen = json!({"username": localpart, "password": "pw-upgrade", "guest_access_token": other_token,
                        "auth": {"type": "m.login.dummy"}});
    assert_error(&server.post(REGISTER, None, stolen).await, 403, "M_FORBIDDEN");
    let upgrade = json!({"username": localpart, "password": "pw-upgrade", "guest_access_token": guest_token,
                         "auth": {"type": "m.login.dummy"}});
    let (status, body) = server.post(REGISTER, None, upgrade).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], guest_id.as_str());
    let token = body["access_token"].as_str().unwrap();
    let (_, whoami) = server.get("/_matrix/client/v3/account/whoami", Some(token)).await;
    assert_ne!(whoami["is_guest"], true, "{whoami}");
    assert_eq!(server.post(&join, Some(token), json!({})).await.0, 200, "a full account joins anyway");
}

async fn register_guest(server: &TestServer) -> (String, String) {
    let (_, body) = server.post(&format!("{REGISTER}?kind=guest"), None, json!({})).await;
    (body["user_id"].as_str().unwrap().to_owned(), body["access_token"].as_str().unwrap().to_owned())
}
