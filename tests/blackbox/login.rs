use serde_json::json;

use crate::harness::{PASSWORD, TestServer, assert_error, password_auth};

#[tokio::test]
async fn login_flows_are_advertised() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/client/v3/login", None).await;
    assert_eq!(status, 200);
    let types: Vec<&str> =
        body["flows"].as_array().unwrap().iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"m.login.password") && types.contains(&"m.login.token"), "{types:?}");
}

#[tokio::test]
async fn password_login_by_localpart_and_full_id() {
    let server = TestServer::start().await;
    server.register("frank").await;
    for name in ["frank", "@frank:localhost"] {
        let (status, body) = server.login(name, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user_id"], "@frank:localhost");
        // No configured client URL: no guess that would move clients away.
        assert!(body.get("well_known").is_none(), "{body}");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(token)).await.0, 200);
    }
    // The deprecated top-level `user` field.
    let (status, _) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "user": "frank", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200);
    assert_error(&server.login("frank", "wrong").await, 403, "M_FORBIDDEN");
    assert_error(&server.login("nobody", PASSWORD).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn third_party_and_unknown_login_types_are_refused_clearly() {
    let server = TestServer::start().await;
    let result = server
        .post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "a@b.c"}, "password": "x"}))
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");
    assert!(result.1["error"].as_str().unwrap().contains("third-party"));
    let result = server.post("/_matrix/client/v3/login", None, json!({"type": "m.login.bogus"})).await;
    assert_error(&result, 400, "M_UNKNOWN");
}

#[tokio::test]
async fn login_with_existing_device_id_replaces_its_token() {
    let server = TestServer::start().await;
    server.register("gina").await;
    let login = |device: &'static str| {
        server.post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "gina"}, "password": PASSWORD, "device_id": device}))
    };
    let (_, first) = login("LAPTOP").await;
    let (_, second) = login("LAPTOP").await;
    assert_eq!(second["device_id"], "LAPTOP");
    let old = first["access_token"].as_str().unwrap();
    assert_error(&server.get("/_matrix/client/v3/account/whoami", Some(old)).await, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn login_token_via_get_token_works_once() {
    let server = TestServer::start().await;
    let user = server.register("hank").await;
    let path = "/_matrix/client/v1/login/get_token";
    let (status, body) = server.post(path, Some(&user.token), json!({})).await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().unwrap();
    let (status, body) = server
        .post(path, Some(&user.token), json!({"auth": password_auth(&user.user_id, Some(session))}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_in_ms"].as_u64().unwrap() > 0);
    let token = body["login_token"].as_str().unwrap();
    let (status, body) =
        server.post("/_matrix/client/v3/login", None, json!({"type": "m.login.token", "token": token})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], user.user_id.as_str());
    let again =
        server.post("/_matrix/client/v3/login", None, json!({"type": "m.login.token", "token": token})).await;
    assert_error(&again, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn refresh_tokens_and_soft_logout() {
    let server =
        TestServer::start_with("allow_registration = true\nrefreshable_access_token_lifetime = 1\n").await;
    let (status, body) = server
        .post("/_matrix/client/v3/register", None, json!({"username": "ivy", "password": PASSWORD, "refresh_token": true, "auth": {"type": "m.login.dummy"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in_ms"], 1000);
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&access)).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let expired = server.get("/_matrix/client/v3/account/whoami", Some(&access)).await;
    assert_error(&expired, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(expired.1["soft_logout"], true);

    let (status, body) =
        server.post("/_matrix/client/v3/refresh", None, json!({"refresh_token": refresh})).await;
    assert_eq!(status, 200, "{body}");
    let new_access = body["access_token"].as_str().unwrap();
    assert!(body["refresh_token"].as_str().is_some());
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(new_access)).await.0, 200);
    // The old refresh token is used up.
    let reused = server.post("/_matrix/client/v3/refresh", None, json!({"refresh_token": refresh})).await;
    assert_error(&reused, 401, "M_UNKNOWN_TOKEN");
    // Without refresh, tokens do not expire.
    let (_, login) = server.login("ivy", PASSWORD).await;
    assert!(login.get("expires_in_ms").is_none() && login.get("refresh_token").is_none(), "{login}");
}

#[tokio::test]
async fn logout_and_logout_all() {
    let server = TestServer::start().await;
    let user = server.register("jack").await;
    let (_, second) = server.login("jack", PASSWORD).await;
    let second = second["access_token"].as_str().unwrap().to_owned();
    let (_, third) = server.login("jack", PASSWORD).await;
    let third = third["access_token"].as_str().unwrap().to_owned();

    assert_eq!(server.post("/_matrix/client/v3/logout", Some(&user.token), json!({})).await.0, 200);
    assert_error(
        &server.get("/_matrix/client/v3/account/whoami", Some(&user.token)).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&second)).await.0, 200);

    assert_eq!(server.post("/_matrix/client/v3/logout/all", Some(&second), json!({})).await.0, 200);
    for token in [&second, &third] {
        assert_error(
            &server.get("/_matrix/client/v3/account/whoami", Some(token)).await,
            401,
            "M_UNKNOWN_TOKEN",
        );
    }
}

/// matrix-nio logs in while still sending the token `/register` gave it, and
/// joins with no body at all; both are accepted as Synapse accepts them.
#[tokio::test]
async fn login_ignores_a_user_token_and_empty_bodies_read_as_empty_objects() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": PASSWORD});
    let (status, login) = server.post("/_matrix/client/v3/login", Some(&alice.token), body).await;
    assert_eq!(status, 200, "{login}");
    let bob = server.register("bob").await;
    let (_, created) = server
        .post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"preset": "public_chat"}))
        .await;
    let room = created["room_id"].as_str().unwrap();
    let (status, joined) = server
        .request(reqwest::Method::POST, &format!("/_matrix/client/v3/join/{room}"), Some(&bob.token), None)
        .await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["room_id"], room);
}
