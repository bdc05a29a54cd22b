//! Calls: TURN credentials and MatrixRTC foci.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;

use crate::harness::TestServer;

const TURN: &str = "/_matrix/client/v3/voip/turnServer";

/// What coturn computes in shared-secret mode to check a password.
fn turn_password(secret: &str, username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn no_turn_configured_answers_empty_object() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, body) = server.get(TURN, Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({}));
}

#[tokio::test]
async fn shared_secret_credentials_verify_and_expire() {
    let server = TestServer::start_with(
        "allow_registration = true\nturn_uris = [\"turn:127.0.0.1:3478?transport=udp\"]\n\
         turn_shared_secret = \"s3cret\"\nturn_user_lifetime = 600\n",
    )
    .await;
    let alice = server.register("alice").await;
    let (status, body) = server.get(TURN, Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uris"], json!(["turn:127.0.0.1:3478?transport=udp"]));
    assert_eq!(body["ttl"], 600);
    let username = body["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "@alice:localhost");
    let expiry: u64 = expiry.parse().unwrap();
    let now = unix_now();
    assert!(expiry > now + 590 && expiry <= now + 601, "expires in the lifetime: {expiry} vs {now}");
    assert_eq!(body["password"], turn_password("s3cret", username), "the HMAC a TURN server computes");

    let (status, body) = server.get(TURN, None).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn static_credentials_and_guests() {
    let server = TestServer::start_with(
        "allow_registration = true\nallow_guest_access = true\nturn_uris = [\"turns:turn.example.org\"]\n\
         turn_username = \"estuary\"\nturn_password = \"pw\"\nturn_allow_guests = false\n",
    )
    .await;
    let alice = server.register("alice").await;
    let (_, body) = server.get(TURN, Some(&alice.token)).await;
    assert_eq!(body["username"], "estuary");
    assert_eq!(body["password"], "pw");
    let (status, guest) = server.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(status, 200, "{guest}");
    let (_, body) = server.get(TURN, guest["access_token"].as_str()).await;
    assert_eq!(body, json!({}), "no TURN for guests when turn_allow_guests is off");
}

#[tokio::test]
async fn rtc_foci_are_advertised() {
    let server = TestServer::start_with(
        "allow_registration = true\n\
         rtc_foci = [{ type = \"livekit\", livekit_service_url = \"https://livekit.example.org\" }]\n",
    )
    .await;
    let (status, body) = server.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, 200);
    let focus = json!({"type": "livekit", "livekit_service_url": "https://livekit.example.org"});
    assert_eq!(body["org.matrix.msc4143.rtc_foci"], json!([focus]), "{body}");
    let alice = server.register("alice").await;
    let (status, body) =
        server.get("/_matrix/client/unstable/org.matrix.msc4143/rtc/transports", Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rtc_transports"], json!([focus]));
}
