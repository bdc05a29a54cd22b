//! Profile, filters and account data.

use serde_json::json;

use crate::harness::{TestServer, assert_error};

#[tokio::test]
async fn profile_fields() {
    let server = TestServer::start().await;
    let user = server.register("tara").await;
    let base = "/_matrix/client/v3/profile/@tara:localhost";
    let (_, initial) = server.get(&format!("{base}/displayname"), None).await;
    assert_eq!(initial, json!({"displayname": "tara"}), "registration starts with the localpart");
    assert_error(&server.get(&format!("{base}/m.tz"), None).await, 404, "M_NOT_FOUND");
    let (status, _) =
        server.put(&format!("{base}/displayname"), Some(&user.token), json!({"displayname": "Tara"})).await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put(&format!("{base}/avatar_url"), Some(&user.token), json!({"avatar_url": "mxc://localhost/abc"}))
        .await;
    assert_eq!(status, 200);
    let (status, _) =
        server.put(&format!("{base}/m.tz"), Some(&user.token), json!({"m.tz": "Europe/Paris"})).await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put(
            &format!("{base}/org.example.pronouns"),
            Some(&user.token),
            json!({"org.example.pronouns": "she/her"}),
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = server.get(&format!("{base}/displayname"), None).await;
    assert_eq!((status.as_u16(), body), (200, json!({"displayname": "Tara"})));
    let (_, body) = server.get(&format!("{base}/avatar_url"), None).await;
    assert_eq!(body, json!({"avatar_url": "mxc://localhost/abc"}));
    let (_, body) = server.get(base, None).await;
    assert_eq!(body["displayname"], "Tara");
    assert_eq!(body["m.tz"], "Europe/Paris");
    assert_eq!(body["org.example.pronouns"], "she/her");

    let (status, _) = server.delete(&format!("{base}/org.example.pronouns"), Some(&user.token)).await;
    assert_eq!(status, 200);
    assert_error(&server.get(&format!("{base}/org.example.pronouns"), None).await, 404, "M_NOT_FOUND");

    let other = server.register("uma").await;
    let result = server
        .put(&format!("{base}/displayname"), Some(&other.token), json!({"displayname": "Hacked"}))
        .await;
    assert_error(&result, 403, "M_FORBIDDEN");
    assert_error(
        &server.put(&format!("{base}/displayname"), None, json!({"displayname": "x"})).await,
        401,
        "M_MISSING_TOKEN",
    );
    assert_error(&server.get("/_matrix/client/v3/profile/@nobody:localhost", None).await, 404, "M_NOT_FOUND");
    let too_big = json!({"org.example.big": "x".repeat(70_000)});
    let result = server.put(&format!("{base}/org.example.big"), Some(&user.token), too_big).await;
    assert_error(&result, 400, "M_PROFILE_TOO_LARGE");
}

#[tokio::test]
async fn filters() {
    let server = TestServer::start().await;
    let user = server.register("vic").await;
    let path = format!("/_matrix/client/v3/user/{}/filter", user.user_id);
    let filter = json!({"room": {"timeline": {"limit": 10, "types": ["m.room.message"]}}, "presence": {"not_types": ["*"]}});
    let (status, body) = server.post(&path, Some(&user.token), filter).await;
    assert_eq!(status, 200, "{body}");
    let id = body["filter_id"].as_str().unwrap();
    let (status, body) = server.get(&format!("{path}/{id}"), Some(&user.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["room"]["timeline"]["limit"], 10);
    assert_eq!(body["presence"]["not_types"], json!(["*"]));
    let (_, second) = server.post(&path, Some(&user.token), json!({})).await;
    assert_ne!(second["filter_id"], id, "each filter gets its own ID");

    assert_error(&server.get(&format!("{path}/999"), Some(&user.token)).await, 404, "M_NOT_FOUND");
    let other = server.register("wes").await;
    assert_error(&server.get(&format!("{path}/{id}"), Some(&other.token)).await, 403, "M_FORBIDDEN");
    assert_error(&server.post(&path, Some(&other.token), json!({})).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn account_data_global_and_per_room() {
    let server = TestServer::start().await;
    let user = server.register("xena").await;
    let global = format!("/_matrix/client/v3/user/{}/account_data/org.example.settings", user.user_id);
    assert_error(&server.get(&global, Some(&user.token)).await, 404, "M_NOT_FOUND");
    let (status, _) = server.put(&global, Some(&user.token), json!({"theme": "dark"})).await;
    assert_eq!(status, 200);
    let (status, body) = server.get(&global, Some(&user.token)).await;
    assert_eq!((status.as_u16(), body), (200, json!({"theme": "dark"})));

    let room = format!(
        "/_matrix/client/v3/user/{}/rooms/!room:localhost/account_data/org.example.note",
        user.user_id
    );
    let (status, _) = server.put(&room, Some(&user.token), json!({"note": "hi"})).await;
    assert_eq!(status, 200);
    let (_, body) = server.get(&room, Some(&user.token)).await;
    assert_eq!(body, json!({"note": "hi"}));
    let other_room = room.replace("!room", "!other");
    assert_error(&server.get(&other_room, Some(&user.token)).await, 404, "M_NOT_FOUND");

    let fully_read =
        format!("/_matrix/client/v3/user/{}/rooms/!room:localhost/account_data/m.fully_read", user.user_id);
    assert_error(
        &server.put(&fully_read, Some(&user.token), json!({"event_id": "$x"})).await,
        405,
        "M_BAD_JSON",
    );
    let push_rules = format!("/_matrix/client/v3/user/{}/account_data/m.push_rules", user.user_id);
    assert_error(&server.put(&push_rules, Some(&user.token), json!({})).await, 405, "M_BAD_JSON");
    assert_error(&server.put(&global, Some(&user.token), json!([1, 2])).await, 400, "M_BAD_JSON");

    let other = server.register("yuri").await;
    assert_error(&server.get(&global, Some(&other.token)).await, 403, "M_FORBIDDEN");
    assert_error(&server.put(&global, Some(&other.token), json!({})).await, 403, "M_FORBIDDEN");
}
