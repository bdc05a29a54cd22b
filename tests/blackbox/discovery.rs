use serde_json::json;

use crate::harness::{TestServer, assert_error};

#[tokio::test]
async fn versions_lists_spec_versions() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    let versions: Vec<&str> =
        body["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(versions.contains(&"v1.1") && versions.contains(&"r0.6.1"), "{versions:?}");
}

/// What load balancers and admin tools ask without a token: the health
/// check (a write to the database) and the server version.
#[tokio::test]
async fn health_and_server_version_answer_without_a_token() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/health", None).await;
    assert_eq!((status.as_u16(), body), (200, serde_json::Value::String("OK".into())));
    let (status, body) = server.get("/_synapse/admin/v1/server_version", None).await;
    assert_eq!(status, 200);
    let version = body["server_version"].as_str().unwrap_or_default();
    assert!(version.starts_with("Estuary "), "{body}");
}

/// The text of `/_synapse/metrics`.
async fn scrape(server: &TestServer) -> String {
    let response = server.http().get(format!("{}/_synapse/metrics", server.base)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of the first sample of `metric` whose labels contain `labels`.
fn sample(text: &str, metric: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(metric) && line.contains(labels))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Prometheus metrics on the main listener: the names admins' dashboards
/// read, and counters that move with requests.
#[tokio::test]
async fn metrics_name_what_dashboards_read_and_count_requests() {
    let server = TestServer::start_with("allow_registration = true\nmetrics_enabled = true\n").await;
    let alice = server.register("alice").await;
    let room = crate::rooms::create_room(&server, &alice, json!({})).await;
    crate::rooms::send_text(&server, &alice, &room, "t1", "hello").await;
    let first = scrape(&server).await;
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
        "synapse_http_server_requests_received_total",
        "synapse_http_server_response_time_seconds_bucket",
        "synapse_storage_events_persisted_events_total",
        "synapse_build_info",
        "estuary_build_info",
        "estuary_rocksdb_block_cache_usage_bytes",
        "estuary_rocksdb_memtable_bytes",
        "estuary_rocksdb_pending_compaction_bytes",
        "estuary_rocksdb_sst_file_bytes",
        "estuary_rocksdb_table_readers_bytes",
        "estuary_outgoing_queue_jobs",
        "estuary_state_cache_bytes",
        "estuary_event_cache_bytes",
        "estuary_rate_limit_rejections_total",
    ] {
        assert!(first.lines().any(|l| l.starts_with(name)), "{name} missing from:\n{first}");
    }
    let sends = r#"servlet="RoomSendEventRestServlet""#;
    assert_eq!(sample(&first, "synapse_http_server_requests_received_total", sends), Some(1.0), "{first}");
    let persisted = sample(&first, "synapse_storage_events_persisted_events_total", "").unwrap();
    crate::rooms::send_text(&server, &alice, &room, "t2", "again").await;
    let second = scrape(&server).await;
    assert_eq!(sample(&second, "synapse_http_server_requests_received_total", sends), Some(2.0));
    assert_eq!(sample(&second, "synapse_storage_events_persisted_events_total", ""), Some(persisted + 1.0));
    let timed = sample(&second, "synapse_http_server_response_time_seconds_count", sends).unwrap();
    assert_eq!(timed, 2.0, "{second}");

    let off = TestServer::start().await;
    assert_error(&off.get("/_synapse/metrics", None).await, 404, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn well_known_client_and_server() {
    let server = TestServer::start_with("allow_registration = true\nwell_known_server = \"matrix.example.org:443\"\nwell_known_client = \"https://matrix.example.org\"\n").await;
    let (status, body) = server.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["m.homeserver"]["base_url"], "https://matrix.example.org");
    let (status, body) = server.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["m.server"], "matrix.example.org:443");
    // Login hands a configured client URL on.
    server.register("wellknown").await;
    let (_, login) = server.login("wellknown", crate::harness::PASSWORD).await;
    assert_eq!(login["well_known"]["m.homeserver"]["base_url"], "https://matrix.example.org", "{login}");

    let plain = TestServer::start().await;
    let (_, body) = plain.get("/.well-known/matrix/client", None).await;
    assert_eq!(body["m.homeserver"]["base_url"], "http://localhost:0", "derived from server name and port");
    assert_error(&plain.get("/.well-known/matrix/server", None).await, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn capabilities_describe_the_server() {
    let server = TestServer::start().await;
    assert_error(&server.get("/_matrix/client/v3/capabilities", None).await, 401, "M_MISSING_TOKEN");
    let user = server.register("cap").await;
    let (status, body) = server.get("/_matrix/client/v3/capabilities", Some(&user.token)).await;
    assert_eq!(status, 200, "{body}");
    let caps = &body["capabilities"];
    assert_eq!(caps["m.room_versions"]["default"], "12");
    assert_eq!(caps["m.room_versions"]["available"]["1"], "stable");
    assert_eq!(caps["m.room_versions"]["available"]["12"], "stable");
    assert_eq!(caps["m.change_password"]["enabled"], true, "{caps}");
    assert_eq!(caps["m.set_displayname"]["enabled"], true, "{caps}");
    assert_eq!(caps["m.get_login_token"]["enabled"], true);
    assert_eq!(caps["m.3pid_changes"]["enabled"], false);
}

#[tokio::test]
async fn root_page_says_estuary_runs() {
    let server = TestServer::start().await;
    let response = server.http().get(format!("{}/", server.base)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let text = response.text().await.unwrap();
    assert!(text.contains("Estuary is running") && text.contains("localhost"), "{text}");
    assert!(text.contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn cors_preflight_without_token_and_headers_everywhere() {
    let server = TestServer::start().await;
    let response = server
        .http()
        .request(reqwest::Method::OPTIONS, format!("{}/_matrix/client/v3/account/whoami", server.base))
        .header("Origin", "https://app.element.io")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    for h in ["Authorization", "Content-Type", "X-Requested-With"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("PUT"));
    // Error responses carry CORS headers too.
    let response = server.http().get(format!("{}/_matrix/client/v3/nope", server.base)).send().await.unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let _ = json!({});
}

#[tokio::test]
async fn unstable_features_list_exactly_what_is_implemented() {
    let server = TestServer::start().await;
    let (_, body) = server.get("/_matrix/client/versions", None).await;
    let mut features: Vec<&String> = body["unstable_features"].as_object().unwrap().keys().collect();
    features.sort();
    assert_eq!(
        features,
        [
            "org.matrix.e2e_cross_signing",
            "org.matrix.msc3440.stable",
            "org.matrix.msc3814",
            "org.matrix.msc4140",
            "org.matrix.simplified_msc3575"
        ],
        "{body}"
    );
    assert!(body["unstable_features"].as_object().unwrap().values().all(|v| v == true));
}

/// Element accepts only 404 M_UNRECOGNIZED as "no OAuth, use password login".
#[tokio::test]
async fn oauth_discovery_is_unrecognized_and_thirdparty_protocols_empty() {
    let server = TestServer::start().await;
    for path in
        ["/_matrix/client/v1/auth_metadata", "/_matrix/client/unstable/org.matrix.msc2965/auth_issuer"]
    {
        assert_error(&server.get(path, None).await, 404, "M_UNRECOGNIZED");
    }
    let alice = server.register("alice").await;
    let (status, body) = server.get("/_matrix/client/v3/thirdparty/protocols", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({}));
}

/// Historical path prefixes that ruma lists are served too.
#[tokio::test]
async fn r0_and_unstable_aliases_are_routed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (status, body) = server.get("/_matrix/client/r0/account/whoami", Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
    let keys =
        json!({"master_key": {"user_id": alice.user_id, "usage": ["master"], "keys": {"ed25519:m": "m"}}});
    let (status, body) =
        server.post("/_matrix/client/unstable/keys/device_signing/upload", Some(&alice.token), keys).await;
    assert_eq!(status, 200, "{body}");
}
