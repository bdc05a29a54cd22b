use serde_json::json;

use crate::harness::{PASSWORD, TestServer, assert_error, password_auth};

#[tokio::test]
async fn list_get_and_rename_devices() {
    let server = TestServer::start().await;
    let user = server.register("kim").await;
    server.login("kim", PASSWORD).await;
    let (status, body) = server.get("/_matrix/client/v3/devices", Some(&user.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["devices"].as_array().unwrap().len(), 2, "{body}");

    let path = format!("/_matrix/client/v3/devices/{}", user.device_id);
    let (status, _) = server.put(&path, Some(&user.token), json!({"display_name": "Kim's laptop"})).await;
    assert_eq!(status, 200);
    let (status, device) = server.get(&path, Some(&user.token)).await;
    assert_eq!(status, 200);
    assert_eq!(device["display_name"], "Kim's laptop");
    assert_eq!(device["device_id"], user.device_id.as_str());
    assert!(device["last_seen_ts"].as_u64().is_some());

    assert_error(&server.get("/_matrix/client/v3/devices/NOPE", Some(&user.token)).await, 404, "M_NOT_FOUND");
    assert_error(
        &server.put("/_matrix/client/v3/devices/NOPE", Some(&user.token), json!({"display_name": "x"})).await,
        404,
        "M_NOT_FOUND",
    );
    // Another user cannot see these devices.
    let other = server.register("lee").await;
    assert_error(&server.get(&path, Some(&other.token)).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn deleting_a_device_needs_uia_and_ends_its_token() {
    let server = TestServer::start().await;
    let user = server.register("mia").await;
    let (_, other) = server.login("mia", PASSWORD).await;
    let other_token = other["access_token"].as_str().unwrap();
    let other_device = other["device_id"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/devices/{other_device}");

    let (status, body) =
        server.request(reqwest::Method::DELETE, &path, Some(&user.token), Some(&json!({}))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = body["session"].as_str().unwrap();

    let mut wrong = password_auth(&user.user_id, Some(session));
    wrong["password"] = json!("wrong");
    let (status, body) = server
        .request(reqwest::Method::DELETE, &path, Some(&user.token), Some(&json!({"auth": wrong})))
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");

    let auth = json!({"auth": password_auth(&user.user_id, Some(session))});
    let (status, body) = server.request(reqwest::Method::DELETE, &path, Some(&user.token), Some(&auth)).await;
    assert_eq!(status, 200, "{body}");
    assert_error(
        &server.get("/_matrix/client/v3/account/whoami", Some(other_token)).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(
        &server.delete("/_matrix/client/v3/devices/GONE", Some(&user.token)).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn delete_many_devices() {
    let server = TestServer::start().await;
    let user = server.register("ned").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, body) = server.login("ned", PASSWORD).await;
        ids.push(body["device_id"].as_str().unwrap().to_owned());
    }
    let request = json!({"devices": ids, "auth": password_auth("ned", None)});
    let (status, body) = server.post("/_matrix/client/v3/delete_devices", Some(&user.token), request).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server.get("/_matrix/client/v3/devices", Some(&user.token)).await;
    let remaining: Vec<&str> =
        body["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    assert_eq!(remaining, vec![user.device_id.as_str()]);
}
