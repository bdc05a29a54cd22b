use serde_json::json;

use crate::harness::{PASSWORD, TestServer, assert_error, password_auth};

#[tokio::test]
async fn change_password_logs_out_other_devices() {
    let server = TestServer::start().await;
    let user = server.register("olga").await;
    let (_, other) = server.login("olga", PASSWORD).await;
    let other_token = other["access_token"].as_str().unwrap().to_owned();

    let path = "/_matrix/client/v3/account/password";
    let (status, body) = server.post(path, Some(&user.token), json!({"new_password": "new-pass"})).await;
    assert_eq!(status, 401, "{body}");
    let request =
        json!({"new_password": "new-pass", "auth": password_auth("olga", body["session"].as_str())});
    let (status, body) = server.post(path, Some(&user.token), request).await;
    assert_eq!(status, 200, "{body}");

    assert_eq!(
        server.get("/_matrix/client/v3/account/whoami", Some(&user.token)).await.0,
        200,
        "current device stays"
    );
    assert_error(
        &server.get("/_matrix/client/v3/account/whoami", Some(&other_token)).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(&server.login("olga", PASSWORD).await, 403, "M_FORBIDDEN");
    assert_eq!(server.login("olga", "new-pass").await.0, 200);
}

#[tokio::test]
async fn change_password_can_keep_other_devices() {
    let server = TestServer::start().await;
    let user = server.register("pia").await;
    let (_, other) = server.login("pia", PASSWORD).await;
    let other_token = other["access_token"].as_str().unwrap().to_owned();
    let request =
        json!({"new_password": "next", "logout_devices": false, "auth": password_auth("pia", None)});
    let (status, body) = server.post("/_matrix/client/v3/account/password", Some(&user.token), request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&other_token)).await.0, 200);
}

#[tokio::test]
async fn deactivated_accounts_cannot_log_in() {
    let server = TestServer::start().await;
    let user = server.register("quinn").await;
    server
        .put(
            "/_matrix/client/v3/profile/@quinn:localhost/displayname",
            Some(&user.token),
            json!({"displayname": "Q"}),
        )
        .await;
    let path = "/_matrix/client/v3/account/deactivate";
    let (status, body) = server.post(path, Some(&user.token), json!({})).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = server
        .post(path, Some(&user.token), json!({"auth": password_auth("quinn", body["session"].as_str())}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");

    assert_error(
        &server.get("/_matrix/client/v3/account/whoami", Some(&user.token)).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(&server.login("quinn", PASSWORD).await, 403, "M_USER_DEACTIVATED");
    let again = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "quinn", "password": PASSWORD, "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_error(&again, 400, "M_USER_IN_USE");
    let (_, profile) = server.get("/_matrix/client/v3/profile/@quinn:localhost", None).await;
    assert!(profile.get("displayname").is_none(), "{profile}");
}

#[tokio::test]
async fn uia_sessions_are_bound_to_their_request() {
    let server = TestServer::start().await;
    let user = server.register("ruth").await;
    let (_, body) = server.post("/_matrix/client/v3/account/deactivate", Some(&user.token), json!({})).await;
    let session = body["session"].as_str().unwrap();
    // A session started for deactivation cannot authorise a password change.
    let request = json!({"new_password": "x", "auth": password_auth("ruth", Some(session))});
    let result = server.post("/_matrix/client/v3/account/password", Some(&user.token), request).await;
    assert_error(&result, 403, "M_FORBIDDEN");
    // Someone else's (correct) credentials are refused outright.
    server.register("sam").await;
    let request = json!({"new_password": "x", "auth": password_auth("sam", None)});
    let result = server.post("/_matrix/client/v3/account/password", Some(&user.token), request).await;
    assert_error(&result, 403, "M_FORBIDDEN");
    assert_eq!(server.login("ruth", PASSWORD).await.0, 200, "password unchanged");
}

/// OpenID tokens: a user asks for one, another service checks it with the
/// server's `/openid/userinfo` (no server signature); wrong or missing
/// tokens are 401.
#[tokio::test]
async fn openid_tokens_prove_who_the_user_is() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", alice.user_id);
    let (status, token) = server.post(&path, Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!((&token["token_type"], &token["matrix_server_name"]), (&json!("Bearer"), &json!("localhost")));
    assert!(token["expires_in"].as_u64().is_some_and(|s| s > 0));
    assert_error(&server.post(&path, Some(&bob.token), json!({})).await, 403, "M_FORBIDDEN");

    let userinfo = "/_matrix/federation/v1/openid/userinfo";
    let access = token["access_token"].as_str().unwrap();
    let (status, info) = server.get(&format!("{userinfo}?access_token={access}"), None).await;
    assert_eq!((status.as_u16(), &info["sub"]), (200, &json!(alice.user_id)), "{info}");
    assert_error(&server.get(&format!("{userinfo}?access_token=nope"), None).await, 401, "M_UNKNOWN_TOKEN");
    assert_error(&server.get(userinfo, None).await, 401, "M_MISSING_TOKEN");
}

/// `/admin/whois`: a user's devices, for the user and server admins only.
#[tokio::test]
async fn whois_lists_devices_for_the_user_and_admins() {
    let server = TestServer::start().await;
    let admin = server.register("admin").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let path = format!("/_matrix/client/v3/admin/whois/{}", alice.user_id);
    for asker in [&alice, &admin] {
        let (status, body) = server.get(&path, Some(&asker.token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user_id"], alice.user_id);
        assert!(body["devices"][&alice.device_id]["sessions"][0]["connections"].is_array(), "{body}");
    }
    assert_error(&server.get(&path, Some(&bob.token)).await, 403, "M_FORBIDDEN");
}

/// Erasure: members who joined after it see the erased user's events
/// redacted; members from before keep the originals (the spec's rule).
#[tokio::test]
async fn erased_users_content_is_hidden_from_later_members() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let (_, room) = server
        .post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"preset": "public_chat"}))
        .await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob.token), json!({})).await;
    let (_, sent) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/e1"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "body1"}),
        )
        .await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let deactivate = json!({"erase": true, "auth": password_auth("alice", None)});
    assert_eq!(
        server.post("/_matrix/client/v3/account/deactivate", Some(&alice.token), deactivate).await.0,
        200
    );
    server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&carol.token), json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/event/{event}");
    assert_eq!(server.get(&path, Some(&bob.token)).await.1["content"]["body"], "body1");
    let (status, seen) = server.get(&path, Some(&carol.token)).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!((seen["type"].clone(), seen["content"].clone()), (json!("m.room.message"), json!({})));
}
