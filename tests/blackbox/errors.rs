use reqwest::Method;
use serde_json::json;

use crate::harness::{TestServer, assert_error};

#[tokio::test]
async fn unknown_endpoint_is_404_unrecognized() {
    let server = TestServer::start().await;
    assert_error(&server.get("/_matrix/client/v3/no/such/endpoint", None).await, 404, "M_UNRECOGNIZED");
    assert_error(&server.get("/nothing-here", None).await, 404, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn wrong_method_is_405_unrecognized() {
    let server = TestServer::start().await;
    let result = server.request(Method::DELETE, "/_matrix/client/versions", None, None).await;
    assert_error(&result, 405, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn body_that_is_not_json() {
    let server = TestServer::start().await;
    let result = server.raw(Method::POST, "/_matrix/client/v3/register", None, b"{not json".to_vec()).await;
    assert_error(&result, 400, "M_NOT_JSON");
    let invalid_utf8 = b"{\"username\": \"a\x81\"}".to_vec();
    let result = server.raw(Method::POST, "/_matrix/client/v3/register", None, invalid_utf8).await;
    assert_error(&result, 400, "M_NOT_JSON");
}

#[tokio::test]
async fn json_of_the_wrong_shape() {
    let server = TestServer::start().await;
    let result = server
        .post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "password": 5}))
        .await;
    assert_error(&result, 400, "M_BAD_JSON");
    let user = server.register("shape").await;
    let result = server
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", user.user_id),
            Some(&user.token),
            json!({"room": "nope"}),
        )
        .await;
    assert_error(&result, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn missing_and_unknown_tokens() {
    let server = TestServer::start().await;
    assert_error(&server.get("/_matrix/client/v3/account/whoami", None).await, 401, "M_MISSING_TOKEN");
    let result = server.get("/_matrix/client/v3/account/whoami", Some("not-a-token")).await;
    assert_error(&result, 401, "M_UNKNOWN_TOKEN");
    assert_ne!(result.1["soft_logout"], true, "an unknown token is a hard logout");
    // The deprecated query parameter works too.
    let user = server.register("querytoken").await;
    let (status, body) =
        server.get(&format!("/_matrix/client/v3/account/whoami?access_token={}", user.token), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let server = TestServer::start_with("allow_registration = true\nmax_request_size = 4096\n").await;
    let big = json!({"username": "x".repeat(10_000)});
    assert_error(&server.post("/_matrix/client/v3/register", None, big).await, 413, "M_TOO_LARGE");
    // Chunked bodies without a Content-Length are cut off as well.
    let chunks = vec![vec![b' '; 3000], vec![b' '; 3000]];
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let response = server
        .http()
        .post(format!("{}/_matrix/client/v3/register", server.base))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn invalid_path_identifiers_are_400() {
    let server = TestServer::start().await;
    let user = server.register("ident").await;
    let result = server.get("/_matrix/client/v3/user/not-a-user-id/filter/0", Some(&user.token)).await;
    assert_eq!(result.0, 400, "{}", result.1);
    assert_eq!(result.1["errcode"], "M_INVALID_PARAM");
}

/// Found by schema fuzzing (scripts/fuzz-api): inputs that used to panic a
/// handler now get 400 `M_BAD_JSON`.
#[tokio::test]
async fn fuzzed_inputs_get_bad_json_not_500() {
    let server = TestServer::start().await;
    for body in [json!({}), json!({"identifier": {"type": "m.id.user", "user": "x"}, "password": "x"})] {
        assert_error(&server.post("/_matrix/client/v3/login", None, body).await, 400, "M_BAD_JSON");
    }
    let alice = server.register("alice").await;
    let token = Some(alice.token.as_str());
    for body in [json!(0), json!("x"), json!([]), json!({}), json!({"algorithm": "m.megolm_backup.v1"})] {
        let result = server.post("/_matrix/client/v3/room_keys/version", token, body).await;
        assert_error(&result, 400, "M_BAD_JSON");
    }
    assert_error(&server.get("/_matrix/client/v3/room_keys/version", token).await, 404, "M_NOT_FOUND");
}
