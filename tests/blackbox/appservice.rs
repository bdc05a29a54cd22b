//! Application services (bridges): registrations from the config and from the
//! admin API, transactions to the appservice (interest, order, retries,
//! ephemeral data), masquerading, `ts`, exclusive namespaces, user and alias
//! queries, ping and third-party lookups. Each test runs a small appservice
//! double on loopback.

use std::{
    io::Read,
    process::{Command, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{
    harness::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

const ADMIN: &str = "/_estuary/admin/v1/appservices";
const WHOAMI: &str = "/_matrix/client/v3/account/whoami";
const APP: &str = "/_matrix/app/v1/";
/// The bot of the appservice `irc` (see `registration`).
const BOT: &str = "@ircbot:localhost";
const WAIT: Duration = Duration::from_secs(10);

/// A registration for appservice `id`: tokens `{id}_as` and `{id}_hs`, bot
/// `@{id}bot`, exclusive users `@{id}_.*` and aliases `#{id}_.*`, then the
/// YAML lines `extra`.
fn registration(id: &str, url: Option<&str>, extra: &str) -> String {
    let url = url.map_or_else(|| "null".to_owned(), |url| format!("\"{url}\""));
    format!(
        r##"id: {id}
url: {url}
as_token: {id}_as
hs_token: {id}_hs
sender_localpart: {id}bot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@{id}_.*:localhost"
  aliases:
    - exclusive: true
      regex: "#{id}_.*:localhost"
  rooms: []
{extra}"##
    )
}

/// A server directory with `registrations` as files in `appservices/`, and
/// the config lines that load that directory.
fn server_dir(registrations: &[String]) -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let appservices = dir.path().join("appservices");
    std::fs::create_dir(&appservices).unwrap();
    for (i, registration) in registrations.iter().enumerate() {
        std::fs::write(appservices.join(format!("{i}.yaml")), registration).unwrap();
    }
    let config =
        format!("allow_registration = true\nappservice_registrations = [\"{}\"]\n", appservices.display());
    (dir, config)
}

fn start_server(registrations: &[String]) -> TestServer {
    let (dir, config) = server_dir(registrations);
    TestServer::start_in(dir, &config)
}

/// `path` with `user_id={user}` added to its query.
fn acting_as(path: &str, user: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}user_id={user}")
}

/// Register `localpart` as a user of the appservice `irc`; returns its user ID.
async fn register_ghost(server: &TestServer, localpart: &str) -> String {
    let body = json!({"type": "m.login.application_service", "username": localpart});
    let (status, body) = server.post("/_matrix/client/v3/register", Some("irc_as"), body).await;
    assert_eq!(status, 200, "register {localpart}: {body}");
    body["user_id"].as_str().unwrap().to_owned()
}

/// A room created by the appservice `irc`: as `user`, or as its bot.
async fn appservice_room(server: &TestServer, user: Option<&str>) -> String {
    let path = "/_matrix/client/v3/createRoom";
    let path = user.map_or_else(|| path.to_owned(), |user| acting_as(path, user));
    let (status, body) = server.post(&path, Some("irc_as"), json!({})).await;
    assert_eq!(status, 200, "createRoom: {body}");
    body["room_id"].as_str().unwrap().to_owned()
}

/// A room of `user`'s that the bots of the appservices `ids` were invited to
/// and joined (each with its as_token).
async fn room_with_bots(server: &TestServer, user: &User, ids: &[&str]) -> String {
    let room = create_room(server, user, json!({})).await;
    for id in ids {
        let invite = json!({"user_id": format!("@{id}bot:localhost")});
        let (status, body) =
            server.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&user.token), invite).await;
        assert_eq!(status, 200, "invite {id}: {body}");
        let token = format!("{id}_as");
        let (status, body) =
            server.post(&format!("/_matrix/client/v3/rooms/{room}/join"), Some(&token), json!({})).await;
        assert_eq!(status, 200, "join {id}: {body}");
    }
    room
}

// The appservice double.

/// One request the double received, and the status it answered.
#[derive(Clone)]
struct Hit {
    method: Method,
    /// Percent-decoded.
    path: String,
    /// Percent-decoded query parameters, as a JSON object of strings.
    query: Value,
    authorization: Option<String>,
    body: Value,
    status: u16,
}

impl Hit {
    fn txn_id(&self) -> Option<&str> {
        self.path.strip_prefix("/_matrix/app/v1/transactions/")
    }
}

/// How the double answers; tests change it as they go.
#[derive(Default)]
struct Behaviour {
    /// Answer this many transactions (the next ones) with 500.
    fail_transactions: usize,
    /// Answer pings with 500.
    fail_ping: bool,
    /// Answer user and alias queries by creating the user (or a room with
    /// the alias, as the bot) on the homeserver at this base URL, then 200.
    /// Without one: 404.
    provision_on: Option<String>,
}

/// An appservice on loopback that records every request it receives.
#[derive(Clone)]
struct Double {
    id: String,
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    http: reqwest::Client,
}

impl Double {
    /// The double of appservice `id`, with the tokens `registration` gives it.
    async fn start(id: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let double = Self {
            id: id.to_owned(),
            url: format!("http://{}", listener.local_addr().unwrap()),
            hits: Arc::default(),
            behaviour: Arc::default(),
            http: reqwest::Client::new(),
        };
        let app = Router::new().fallback(serve).with_state(double.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        double
    }

    fn registration(&self, extra: &str) -> String {
        registration(&self.id, Some(&self.url), extra)
    }

    fn behave(&self) -> MutexGuard<'_, Behaviour> {
        self.behaviour.lock().unwrap()
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Poll (every 50 ms) until `check` holds for what the double received;
    /// returns that. Panics with everything received after `timeout`.
    async fn wait_for(&self, check: impl Fn(&[Hit]) -> bool, timeout: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + timeout;
        loop {
            let hits = self.hits();
            if check(&hits) {
                return hits;
            }
            if Instant::now() >= deadline {
                let lines: Vec<String> = hits
                    .iter()
                    .map(|h| format!("{} {} {} -> {}", h.method, h.path, h.body, h.status))
                    .collect();
                panic!("timed out; appservice {} received:\n{}", self.id, lines.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn take_failure(&self) -> bool {
        let mut behaviour = self.behave();
        let fail = behaviour.fail_transactions > 0;
        behaviour.fail_transactions = behaviour.fail_transactions.saturating_sub(1);
        fail
    }

    async fn answer(&self, method: &Method, path: &str, query: &Value) -> (u16, Value) {
        let unrecognized = (404, json!({"errcode": "M_UNRECOGNIZED"}));
        let Some(route) = path.strip_prefix(APP) else { return unrecognized };
        let segments: Vec<&str> = route.split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("PUT", ["transactions", _]) => match self.take_failure() {
                true => (500, json!({"errcode": "M_UNKNOWN", "error": "try again"})),
                false => (200, json!({})),
            },
            ("GET", ["users", id] | ["rooms", id]) => self.provision(id).await,
            ("POST", ["ping"]) => {
                let fail = self.behave().fail_ping;
                match fail {
                    true => (500, json!({"errcode": "M_UNKNOWN", "error": "ping failed"})),
                    false => (200, json!({})),
                }
            }
            ("GET", ["thirdparty", "protocol", protocol]) => (200, protocol_metadata(protocol)),
            ("GET", ["thirdparty", "location", protocol]) => {
                (200, json!([{"alias": "#irc_matrix:localhost", "protocol": protocol, "fields": query}]))
            }
            ("GET", ["thirdparty", "user", protocol]) => {
                (200, json!([{"userid": "@irc_jim:localhost", "protocol": protocol, "fields": query}]))
            }
            ("GET", ["thirdparty", "location"]) => {
                (200, json!([{"alias": query["alias"], "protocol": "irc", "fields": {"channel": "#matrix"}}]))
            }
            ("GET", ["thirdparty", "user"]) => {
                (200, json!([{"userid": query["userid"], "protocol": "irc", "fields": {"nick": "jim"}}]))
            }
            _ => unrecognized,
        }
    }

    /// A user (`@…`) or alias (`#…`) query: create it, as a bridge does, or 404.
    async fn provision(&self, id: &str) -> (u16, Value) {
        let base = self.behave().provision_on.clone();
        let Some(base) = base else { return (404, json!({"errcode": "M_NOT_FOUND"})) };
        let localpart = id[1..].split(':').next().unwrap();
        let (endpoint, body) = match id.starts_with('@') {
            true => ("register", json!({"type": "m.login.application_service", "username": localpart})),
            false => ("createRoom", json!({"room_alias_name": localpart})),
        };
        let response = self
            .http
            .post(format!("{base}/_matrix/client/v3/{endpoint}"))
            .bearer_auth(format!("{}_as", self.id))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match status {
            200 => (200, json!({})),
            _ => (500, json!({"errcode": "M_UNKNOWN", "error": format!("{endpoint}: {status} {text}")})),
        }
    }
}

async fn serve(
    State(double): State<Double>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<Value>) {
    let path = percent_decode(uri.path());
    let query = Value::Object(
        uri.query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (percent_decode(k), Value::String(percent_decode(&v.replace('+', " ")))))
            .collect(),
    );
    let (status, reply) = double.answer(&method, &path, &query).await;
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    double.hits.lock().unwrap().push(Hit { method, path, query, authorization, body, status });
    (StatusCode::from_u16(status).unwrap(), Json(reply))
}

fn percent_decode(text: &str) -> String {
    let mut bytes = Vec::new();
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let hex = tail.get(..2).and_then(|h| std::str::from_utf8(h).ok());
        match (first, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                bytes.push(byte);
                rest = &tail[2..];
            }
            _ => {
                bytes.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The double's metadata for `protocol`.
fn protocol_metadata(protocol: &str) -> Value {
    json!({
        "user_fields": ["nick"],
        "location_fields": ["channel"],
        "icon": format!("mxc://localhost/{protocol}"),
        "field_types": {
            "nick": {"regexp": "[^\\s]+", "placeholder": "jim"},
            "channel": {"regexp": "#[^\\s]+", "placeholder": "#matrix"}
        },
        // The second instance as some bridges describe one: no fields, no
        // network (passed on as written, without an instance ID).
        "instances": [{"desc": protocol, "fields": {}, "network_id": protocol}, {"desc": "bare"}]
    })
}

/// The `field` arrays ("events" or "ephemeral") of the transactions the
/// double accepted, in the order it accepted them.
fn accepted(hits: &[Hit], field: &str) -> Vec<Value> {
    hits.iter()
        .filter(|h| h.txn_id().is_some() && h.status == 200)
        .flat_map(|h| h.body[field].as_array().cloned().unwrap_or_default())
        .collect()
}

/// An event in short: "state_key membership" for members, the body for
/// messages, else the type.
fn summary(event: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match event["type"].as_str().unwrap_or_default() {
        "m.room.member" => format!("{} {}", text(&event["state_key"]), text(&event["content"]["membership"])),
        "m.room.message" => text(&event["content"]["body"]),
        other => other.to_owned(),
    }
}

/// The accepted events of `room`, in short, in order.
fn room_log(hits: &[Hit], room: &str) -> Vec<String> {
    accepted(hits, "events").iter().filter(|e| e["room_id"] == room).map(summary).collect()
}

fn logged(hits: &[Hit], room: &str, entry: &str) -> bool {
    room_log(hits, room).iter().any(|s| s == entry)
}

/// A transaction ID always carries the same events, and no event is
/// accepted twice.
fn check_transactions(hits: &[Hit]) {
    let transactions: Vec<&Hit> = hits.iter().filter(|h| h.txn_id().is_some()).collect();
    for a in &transactions {
        for b in transactions.iter().filter(|b| b.txn_id() == a.txn_id()) {
            assert_eq!(a.body["events"], b.body["events"], "transaction {:?} changed", a.txn_id());
        }
    }
    let events = accepted(hits, "events");
    let mut ids: Vec<&str> = events.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "an event was accepted twice: {events:?}");
}

// Registrations.

/// A server on `dir` with `config`, and its admin: the first account
/// registered (the bots, created at startup, do not count).
async fn start_with_admin(dir: TempDir, config: &str) -> (TestServer, User) {
    let server = TestServer::start_in(dir, config);
    let admin = server.register("admin").await;
    (server, admin)
}

/// The admin API's list as sorted "id source url" lines, checked to show no
/// token.
async fn listed(server: &TestServer, admin: &User) -> Vec<String> {
    let (status, body) = server.get(ADMIN, Some(&admin.token)).await;
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    let mut lines: Vec<String> = body["appservices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let id = a["id"].as_str().unwrap();
            assert!(!text.contains(&format!("{id}_as")) && !text.contains(&format!("{id}_hs")), "{body}");
            assert_eq!(a["sender_localpart"], format!("{id}bot"), "{body}");
            format!("{id} {} {}", a["source"].as_str().unwrap_or_default(), a["url"])
        })
        .collect();
    lines.sort();
    lines
}

async fn post_yaml(server: &TestServer, user: &User, yaml: &str) -> (StatusCode, Value) {
    let response = server
        .http()
        .post(format!("{}{ADMIN}", server.base))
        .bearer_auth(&user.token)
        .header("Content-Type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn registrations_load_from_a_directory() {
    let (dir, config) = server_dir(&[registration("irc", Some("http://127.0.0.1:9"), "")]);
    let appservices = dir.path().join("appservices");
    std::fs::write(appservices.join("slack.yml"), registration("slack", None, "")).unwrap();
    std::fs::write(appservices.join("notes.txt"), "not a registration: [").unwrap();
    let (server, admin) = start_with_admin(dir, &config).await;
    for bot in [BOT, "@slackbot:localhost"] {
        let (status, body) =
            server.get(&format!("/_matrix/client/v3/profile/{bot}"), Some(&admin.token)).await;
        assert_eq!(status, 200, "{bot} exists: {body}");
    }
    assert_eq!(listed(&server, &admin).await, ["irc config \"http://127.0.0.1:9\"", "slack config null"]);
    assert_eq!(server.get(WHOAMI, Some("slack_as")).await.1["user_id"], "@slackbot:localhost");
}

/// Start the binary on `registrations`: it must exit, unsuccessfully, within
/// 30 s. Returns its stderr.
fn startup_refused(registrations: &[String]) -> String {
    let (dir, config) = server_dir(registrations);
    let path = dir.path().join("estuary.toml");
    let db = dir.path().join("db");
    let config = format!(
        "server_name = \"localhost\"\nport = 0\naddress = \"127.0.0.1\"\ndatabase_path = \"{}\"\n{config}",
        db.display()
    );
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started despite conflicting registrations");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

#[test]
fn duplicate_registrations_stop_startup() {
    let twin = registration("twin", None, "");
    let stderr = startup_refused(&[twin.clone(), twin.replace("twin_as", "other_as")]);
    assert!(stderr.contains("twin"), "the duplicate id is named: {stderr}");

    let alpha = registration("alpha", None, "");
    let stderr = startup_refused(&[alpha, registration("beta", None, "").replace("beta_as", "alpha_as")]);
    assert!(
        stderr.contains("as_token") || (stderr.contains("alpha") && stderr.contains("beta")),
        "the duplicate as_token is named: {stderr}"
    );
}

#[tokio::test]
async fn runtime_registration_through_the_admin_api() {
    let (dir, config) = server_dir(&[registration("irc", None, "")]);
    let (server, admin) = start_with_admin(dir, &config).await;
    let alice = server.register("alice").await;
    let slack = registration("slack", None, "");
    let telegram = json!({
        "id": "tg", "url": null, "as_token": "tg_as", "hs_token": "tg_hs", "sender_localpart": "tgbot",
        "namespaces": {
            "users": [{"exclusive": true, "regex": "@tg_.*:localhost"}], "aliases": [], "rooms": []
        }
    });

    assert_error(&post_yaml(&server, &alice, &slack).await, 403, "M_FORBIDDEN");
    assert_error(&server.post(ADMIN, Some(&alice.token), telegram.clone()).await, 403, "M_FORBIDDEN");
    assert_error(&server.get(ADMIN, Some(&alice.token)).await, 403, "M_FORBIDDEN");
    let (status, body) = post_yaml(&server, &admin, &slack).await;
    assert_eq!((status.as_u16(), body), (200, json!({"id": "slack"})));
    let (status, body) = server.post(ADMIN, Some(&admin.token), telegram).await;
    assert_eq!((status.as_u16(), body), (200, json!({"id": "tg"})));
    for (token, bot) in [("slack_as", "@slackbot:localhost"), ("tg_as", "@tgbot:localhost")] {
        let (status, body) = server.get(WHOAMI, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user_id"], bot);
        let (status, body) =
            server.get(&format!("/_matrix/client/v3/profile/{bot}"), Some(&admin.token)).await;
        assert_eq!(status, 200, "{bot} exists: {body}");
    }

    // The id of the config's appservice, the as_token of a runtime one.
    let irc_again = registration("irc", None, "").replace("irc_as", "irc2_as").replace("irc_hs", "irc2_hs");
    assert_error(&post_yaml(&server, &admin, &irc_again).await, 400, "M_INVALID_PARAM");
    let token_again = registration("discord", None, "").replace("discord_as", "slack_as");
    assert_error(&post_yaml(&server, &admin, &token_again).await, 400, "M_INVALID_PARAM");
    assert_error(&server.post(ADMIN, Some(&admin.token), json!({"id": "broken"})).await, 400, "M_BAD_JSON");
    assert_error(&post_yaml(&server, &admin, "id: [unclosed").await, 400, "M_BAD_JSON");
    assert_eq!(listed(&server, &admin).await, ["irc config null", "slack database null", "tg database null"]);

    assert_error(&server.delete(&format!("{ADMIN}/irc"), Some(&admin.token)).await, 400, "M_INVALID_PARAM");
    assert_error(&server.delete(&format!("{ADMIN}/nope"), Some(&admin.token)).await, 404, "M_NOT_FOUND");
    assert_error(&server.delete(&format!("{ADMIN}/tg"), Some(&alice.token)).await, 403, "M_FORBIDDEN");
    let (status, body) = server.delete(&format!("{ADMIN}/tg"), Some(&admin.token)).await;
    assert_eq!((status.as_u16(), body), (200, json!({})));
    assert_error(&server.get(WHOAMI, Some("tg_as")).await, 401, "M_UNKNOWN_TOKEN");

    let server = TestServer::start_in(server.kill(), &config);
    assert_eq!(listed(&server, &admin).await, ["irc config null", "slack database null"]);
    assert_eq!(server.get(WHOAMI, Some("slack_as")).await.1["user_id"], "@slackbot:localhost");
    assert_error(&server.get(WHOAMI, Some("tg_as")).await, 401, "M_UNKNOWN_TOKEN");
}

// Transactions.

#[tokio::test]
async fn transactions_carry_the_events_of_interest_in_order() {
    let double = Double::start("irc").await;
    let server = start_server(&[double.registration("")]);
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;

    // First a room the appservice has no interest in.
    let unrelated = create_room(&server, &carol, json!({"preset": "public_chat"})).await;
    assert_eq!(send_text(&server, &carol, &unrelated, "s1", "secret").await.0, 200);

    let room = room_with_bots(&server, &alice, &["irc"]).await;
    for (txn, text) in [("t1", "one"), ("t2", "two"), ("t3", "three")] {
        assert_eq!(send_text(&server, &alice, &room, txn, text).await.0, 200);
    }
    // A namespaced sender in a room no user of the appservice was in ...
    let ghost = register_ghost(&server, "irc_ghost").await;
    let lobby = create_room(&server, &bob, json!({"preset": "public_chat"})).await;
    let join = acting_as(&format!("/_matrix/client/v3/rooms/{lobby}/join"), &ghost);
    assert_eq!(server.post(&join, Some("irc_as"), json!({})).await.0, 200);
    assert_eq!(send_text(&server, &bob, &lobby, "b1", "hello ghost").await.0, 200);
    // ... and a namespaced state_key (an invite) in another.
    let invited = register_ghost(&server, "irc_invited").await;
    let private = create_room(&server, &bob, json!({})).await;
    let invite = format!("/_matrix/client/v3/rooms/{private}/invite");
    assert_eq!(server.post(&invite, Some(&bob.token), json!({"user_id": invited})).await.0, 200);

    let invited_entry = format!("{invited} invite");
    let hits = double
        .wait_for(
            |hits| {
                logged(hits, &room, "three")
                    && logged(hits, &lobby, "hello ghost")
                    && logged(hits, &private, &invited_entry)
            },
            WAIT,
        )
        .await;
    let log = room_log(&hits, &room);
    let invite_at = log.iter().position(|s| s == "@ircbot:localhost invite").expect("the bot's invite");
    assert_eq!(
        log[invite_at..].to_vec(),
        ["@ircbot:localhost invite", "@ircbot:localhost join", "one", "two", "three"]
    );
    assert!(logged(&hits, &lobby, &format!("{ghost} join")), "{:?}", room_log(&hits, &lobby));
    assert!(room_log(&hits, &unrelated).is_empty(), "{:?}", room_log(&hits, &unrelated));
    for hit in hits.iter().filter(|h| h.txn_id().is_some()) {
        assert_eq!(hit.method, Method::PUT);
        assert_eq!(hit.authorization.as_deref(), Some("Bearer irc_hs"));
    }
    check_transactions(&hits);

    let events = accepted(&hits, "events");
    let one = events.iter().find(|e| e["content"]["body"] == "one").unwrap();
    assert_eq!(one["type"], "m.room.message");
    assert_eq!(one["sender"], alice.user_id);
    assert!(one["event_id"].is_string() && one["origin_server_ts"].is_u64(), "{one}");
    assert!(one.get("state_key").is_none(), "{one}");
    let join =
        events.iter().find(|e| e["room_id"] == room && summary(e) == "@ircbot:localhost join").unwrap();
    assert_eq!(join["sender"], BOT);
    assert!(join["event_id"].is_string() && join["origin_server_ts"].is_u64(), "{join}");
}

#[tokio::test]
async fn failed_transactions_are_retried_unchanged() {
    let double = Double::start("irc").await;
    let server = start_server(&[double.registration("")]);
    let alice = server.register("alice").await;
    let room = room_with_bots(&server, &alice, &["irc"]).await;
    double.wait_for(|hits| logged(hits, &room, "@ircbot:localhost join"), WAIT).await;

    double.behave().fail_transactions = 2;
    for (txn, text) in [("t1", "one"), ("t2", "two"), ("t3", "three")] {
        assert_eq!(send_text(&server, &alice, &room, txn, text).await.0, 200);
    }
    let hits = double.wait_for(|hits| logged(hits, &room, "three"), WAIT).await;
    let messages: Vec<String> = room_log(&hits, &room)
        .into_iter()
        .filter(|s| ["one", "two", "three"].contains(&s.as_str()))
        .collect();
    assert_eq!(messages, ["one", "two", "three"]);
    let failed: Vec<&Hit> = hits.iter().filter(|h| h.txn_id().is_some() && h.status != 200).collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0].txn_id(), failed[1].txn_id(), "the failed transaction is retried under its txnId");
    assert!(hits.iter().any(|h| h.status == 200 && h.txn_id() == failed[0].txn_id()), "then accepted");
    check_transactions(&hits);

    // While retries back off (1 s, 2 s, then 4 s), the appservice calling the
    // homeserver shows it is up: the retry comes at once.
    double.behave().fail_transactions = 3;
    assert_eq!(send_text(&server, &alice, &room, "t4", "four").await.0, 200);
    let failures = |hits: &[Hit]| hits.iter().filter(|h| h.txn_id().is_some() && h.status != 200).count();
    double.wait_for(|hits| failures(hits) >= 5, WAIT).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !logged(&double.hits(), &room, "four") {
        assert!(Instant::now() < deadline, "the retry waited out its backoff although the appservice called");
        assert_eq!(server.get(WHOAMI, Some("irc_as")).await.0, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_transactions(&double.hits());
}

#[tokio::test]
async fn ephemeral_data_only_when_asked_for() {
    let irc = Double::start("irc").await;
    let slack = Double::start("slack").await;
    let server = start_server(&[irc.registration("receive_ephemeral: true\n"), slack.registration("")]);
    let alice = server.register("alice").await;
    let room = room_with_bots(&server, &alice, &["irc", "slack"]).await;
    let (status, sent) = send_text(&server, &alice, &room, "t1", "read me").await;
    assert_eq!(status, 200, "{sent}");
    let event_id = sent["event_id"].as_str().unwrap();
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    assert_eq!(
        server.put(&typing, Some(&alice.token), json!({"typing": true, "timeout": 30000})).await.0,
        200
    );
    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event_id}");
    assert_eq!(server.post(&receipt, Some(&alice.token), json!({})).await.0, 200);
    assert_eq!(send_text(&server, &alice, &room, "t2", "after").await.0, 200);

    let is_typing = |e: &Value| {
        e["type"] == "m.typing"
            && e["room_id"] == room
            && e["content"]["user_ids"].as_array().is_some_and(|ids| ids.contains(&json!(alice.user_id)))
    };
    let is_receipt = |e: &Value| {
        e["type"] == "m.receipt"
            && e["room_id"] == room
            && e["content"][event_id]["m.read"][&alice.user_id]["ts"].is_u64()
    };
    irc.wait_for(
        |hits| {
            let ephemeral = accepted(hits, "ephemeral");
            ephemeral.iter().any(is_typing) && ephemeral.iter().any(is_receipt)
        },
        WAIT,
    )
    .await;
    let hits = slack.wait_for(|hits| logged(hits, &room, "after"), WAIT).await;
    assert!(logged(&hits, &room, "read me"));
    assert_eq!(accepted(&hits, "ephemeral"), Vec::<Value>::new(), "slack did not ask for ephemeral data");
}

// The client-server API for appservices.

#[tokio::test]
async fn appservices_act_as_their_users() {
    let server = start_server(&[registration("irc", None, "")]);
    let alice = server.register("alice").await;
    let ghost = register_ghost(&server, "irc_ghost").await;

    let (status, me) = server.get(WHOAMI, Some("irc_as")).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user_id"], BOT);
    assert!(me.get("device_id").is_none(), "{me}");
    let (status, me) = server.get(&acting_as(WHOAMI, &ghost), Some("irc_as")).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user_id"], ghost);
    assert!(me.get("device_id").is_none(), "{me}");
    let (status, me) = server.get(&acting_as(&format!("{WHOAMI}?access_token=irc_as"), &ghost), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user_id"], ghost);

    assert_error(&server.get(&acting_as(WHOAMI, &alice.user_id), Some("irc_as")).await, 403, "M_EXCLUSIVE");
    let unborn = acting_as(WHOAMI, "@irc_unborn:localhost");
    assert_error(&server.get(&unborn, Some("irc_as")).await, 403, "M_FORBIDDEN");

    let identifier = json!({"type": "m.id.user", "user": "irc_ghost"});
    let login = json!({"type": "m.login.application_service", "identifier": identifier});
    let (status, login) = server.post("/_matrix/client/v3/login", Some("irc_as"), login).await;
    assert_eq!(status, 200, "{login}");
    let device = login["device_id"].as_str().unwrap();
    let (status, me) =
        server.get(&acting_as(&format!("{WHOAMI}?device_id={device}"), &ghost), Some("irc_as")).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!((&me["user_id"], &me["device_id"]), (&json!(ghost), &json!(device)));
    for other in ["NOSUCHDEVICE", alice.device_id.as_str()] {
        let path = acting_as(&format!("{WHOAMI}?device_id={other}"), &ghost);
        assert_error(&server.get(&path, Some("irc_as")).await, 400, "M_UNKNOWN_DEVICE");
    }

    // What a masquerading appservice does, the user does.
    let room = appservice_room(&server, Some(&ghost)).await;
    let joined = "/_matrix/client/v3/joined_rooms";
    assert_eq!(server.get(&acting_as(joined, &ghost), Some("irc_as")).await.1["joined_rooms"], json!([room]));
    assert_eq!(server.get(joined, Some("irc_as")).await.1["joined_rooms"], json!([]));
}

#[tokio::test]
async fn appservices_set_the_timestamp() {
    let server = start_server(&[registration("irc", None, "")]);
    let alice = server.register("alice").await;
    let ghost = register_ghost(&server, "irc_ghost").await;
    let room = appservice_room(&server, Some(&ghost)).await;
    let past = 1_000_000_000_000u64;
    let send =
        acting_as(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1?ts={past}"), &ghost);
    let (status, sent) = server.put(&send, Some("irc_as"), json!({"msgtype": "m.text", "body": "old"})).await;
    assert_eq!(status, 200, "{sent}");
    let state = format!("/_matrix/client/v3/rooms/{room}/state/org.example.bridge/key?ts={}", past + 1000);
    let (status, set) = server.put(&acting_as(&state, &ghost), Some("irc_as"), json!({"v": 1})).await;
    assert_eq!(status, 200, "{set}");
    for (response, ts) in [(sent, past), (set, past + 1000)] {
        let event =
            format!("/_matrix/client/v3/rooms/{room}/event/{}", response["event_id"].as_str().unwrap());
        let (status, event) = server.get(&acting_as(&event, &ghost), Some("irc_as")).await;
        assert_eq!(status, 200, "{event}");
        assert_eq!(event["origin_server_ts"], ts, "{event}");
    }
    for path in ["send/m.room.message/t2", "state/org.example.bridge/key"] {
        let path = acting_as(&format!("/_matrix/client/v3/rooms/{room}/{path}?ts=yesterday"), &ghost);
        assert_error(&server.put(&path, Some("irc_as"), json!({"body": "x"})).await, 400, "M_INVALID_PARAM");
    }

    // A user's ts is ignored.
    let own = create_room(&server, &alice, json!({})).await;
    let send = format!("/_matrix/client/v3/rooms/{own}/send/m.room.message/t1?ts={past}");
    let (status, sent) =
        server.put(&send, Some(&alice.token), json!({"msgtype": "m.text", "body": "now"})).await;
    assert_eq!(status, 200, "{sent}");
    let event = format!("/_matrix/client/v3/rooms/{own}/event/{}", sent["event_id"].as_str().unwrap());
    let (_, event) = server.get(&event, Some(&alice.token)).await;
    assert!(event["origin_server_ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000), "{event}");
}

#[tokio::test]
async fn exclusive_alias_namespaces() {
    let server = start_server(&[registration("irc", None, "")]);
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({})).await;
    let claimed = "/_matrix/client/v3/directory/room/%23irc_lobby:localhost";
    assert_error(
        &server.put(claimed, Some(&alice.token), json!({"room_id": room})).await,
        400,
        "M_EXCLUSIVE",
    );
    let free = "/_matrix/client/v3/directory/room/%23lobby:localhost";
    assert_eq!(server.put(free, Some(&alice.token), json!({"room_id": room})).await.0, 200);

    let bridged = appservice_room(&server, None).await;
    let (status, body) = server.put(claimed, Some("irc_as"), json!({"room_id": bridged})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get(claimed, Some(&alice.token)).await.1["room_id"], bridged);
}

#[tokio::test]
async fn user_and_alias_queries() {
    let double = Double::start("irc").await;
    let server = start_server(&[double.registration("")]);
    let alice = server.register("alice").await;
    let profile = |user: &str| format!("/_matrix/client/v3/profile/{user}");
    let alias = |alias: &str| format!("/_matrix/client/v3/directory/room/%23{alias}:localhost");

    // The appservice does not know them: not found.
    assert_error(
        &server.get(&profile("@irc_nobody:localhost"), Some(&alice.token)).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(&server.get(&alias("irc_nowhere"), Some(&alice.token)).await, 404, "M_NOT_FOUND");
    // The appservice creates them while the homeserver waits.
    double.behave().provision_on = Some(server.base.clone());
    let (status, body) = server.get(&profile("@irc_jim:localhost"), Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get(&alias("irc_lobby"), Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["room_id"].as_str().is_some_and(|r| r.starts_with('!')), "{body}");
    // Known ones, and ones outside the namespaces, are not asked about.
    assert_eq!(server.get(&profile("@irc_jim:localhost"), Some(&alice.token)).await.0, 200);
    assert_eq!(server.get(&alias("irc_lobby"), Some(&alice.token)).await.0, 200);
    assert_error(&server.get(&profile("@stranger:localhost"), Some(&alice.token)).await, 404, "M_NOT_FOUND");
    assert_error(&server.get(&alias("elsewhere"), Some(&alice.token)).await, 404, "M_NOT_FOUND");

    let queries: Vec<String> = double
        .hits()
        .iter()
        .filter_map(|h| {
            let route = h.path.strip_prefix(APP)?;
            (route.starts_with("users/") || route.starts_with("rooms/")).then(|| {
                assert_eq!((&h.method, h.authorization.as_deref()), (&Method::GET, Some("Bearer irc_hs")));
                format!("{route} {}", h.status)
            })
        })
        .collect();
    assert_eq!(
        queries,
        [
            "users/@irc_nobody:localhost 404",
            "rooms/#irc_nowhere:localhost 404",
            "users/@irc_jim:localhost 200",
            "rooms/#irc_lobby:localhost 200",
        ]
    );
}

/// A loopback URL nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn ping() {
    let double = Double::start("irc").await;
    let dead = closed_port_url();
    let server = start_server(&[
        double.registration(""),
        registration("nourl", None, ""),
        registration("dead", Some(&dead), ""),
    ]);
    let ping = |id: &str| format!("/_matrix/client/v1/appservice/{id}/ping");
    let (status, body) = server.post(&ping("irc"), Some("irc_as"), json!({"transaction_id": "meow"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["duration_ms"].is_u64(), "{body}");
    let hits = double.hits();
    let pinged = hits.iter().find(|h| h.path == "/_matrix/app/v1/ping").expect("the appservice was pinged");
    assert_eq!(pinged.method, Method::POST);
    assert_eq!(pinged.body["transaction_id"], "meow");
    assert_eq!(pinged.authorization.as_deref(), Some("Bearer irc_hs"));

    assert_error(&server.post(&ping("nourl"), Some("irc_as"), json!({})).await, 403, "M_FORBIDDEN");
    let alice = server.register("alice").await;
    assert_error(&server.post(&ping("irc"), Some(&alice.token), json!({})).await, 403, "M_FORBIDDEN");
    assert_error(&server.post(&ping("nourl"), Some("nourl_as"), json!({})).await, 400, "M_URL_NOT_SET");
    double.behave().fail_ping = true;
    let failed = server.post(&ping("irc"), Some("irc_as"), json!({"transaction_id": "woof"})).await;
    assert_error(&failed, 502, "M_BAD_STATUS");
    assert_eq!(failed.1["status"], 500);
    assert!(failed.1["body"].as_str().is_some_and(|b| b.contains("ping failed")), "{}", failed.1);
    assert_error(&server.post(&ping("dead"), Some("dead_as"), json!({})).await, 502, "M_CONNECTION_FAILED");
}

async fn thirdparty(server: &TestServer, user: &User, path: &str) -> (StatusCode, Value) {
    server.get(&format!("/_matrix/client/v3/thirdparty/{path}"), Some(&user.token)).await
}

#[tokio::test]
async fn third_party_lookups_go_to_the_appservice() {
    let double = Double::start("irc").await;
    let server = start_server(&[double.registration("protocols: [irc, gitter]\n")]);
    let alice = server.register("alice").await;

    let (status, protocols) = thirdparty(&server, &alice, "protocols").await;
    assert_eq!(status, 200, "{protocols}");
    let mut names: Vec<String> = protocols.as_object().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["gitter", "irc"]);
    for name in ["gitter", "irc"] {
        let protocol = &protocols[name];
        assert_eq!(protocol["user_fields"], json!(["nick"]), "{protocols}");
        assert_eq!(protocol["icon"], format!("mxc://localhost/{name}"), "{protocols}");
        assert_eq!(protocol["instances"][0]["network_id"], name, "{protocols}");
        let instance_id = format!("irc|{name}");
        assert_eq!(protocol["instances"][0]["instance_id"], instance_id, "{protocols}");
        assert_eq!(protocol["instances"][1], json!({"desc": "bare"}), "{protocols}");
    }
    let (status, irc) = thirdparty(&server, &alice, "protocol/irc").await;
    assert_eq!(status, 200, "{irc}");
    assert_eq!(irc["location_fields"], json!(["channel"]));
    assert_error(&thirdparty(&server, &alice, "protocol/nope").await, 404, "M_NOT_FOUND");
    assert_error(&server.get("/_matrix/client/v3/thirdparty/protocols", None).await, 401, "M_MISSING_TOKEN");

    let (status, found) = thirdparty(&server, &alice, "location/irc?channel=%23matrix&network=libera").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found[0]["alias"], "#irc_matrix:localhost", "{found}");
    assert_eq!(found[0]["protocol"], "irc", "{found}");
    assert_eq!(found[0]["fields"]["channel"], "#matrix", "{found}");
    assert_eq!(found[0]["fields"]["network"], "libera", "{found}");
    // The token in the query (as older clients send it) is not a search
    // field: it never reaches the bridge.
    let path = format!("/_matrix/client/v3/thirdparty/user/irc?nick=kim&access_token={}", alice.token);
    assert_eq!(server.get(&path, None).await.0, 200);
    let kim = double.hits().into_iter().find(|h| h.query["nick"] == "kim").expect("asked about kim");
    assert!(kim.query.get("access_token").is_none(), "{:?}", kim.query);
    let (status, found) = thirdparty(&server, &alice, "user/irc?nick=jim").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found[0]["userid"], "@irc_jim:localhost", "{found}");
    assert_eq!(found[0]["fields"]["nick"], "jim", "{found}");
    let (status, found) = thirdparty(&server, &alice, "location?alias=%23irc_matrix:localhost").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found[0]["alias"], "#irc_matrix:localhost", "{found}");
    assert_eq!(found[0]["fields"]["channel"], "#matrix", "{found}");
    let (status, found) = thirdparty(&server, &alice, "user?userid=@irc_jim:localhost").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found[0]["userid"], "@irc_jim:localhost", "{found}");
    assert_eq!(found[0]["protocol"], "irc", "{found}");

    let hits = double.hits();
    let asked = |path: &str, key: &str| {
        let hit = hits.iter().rev().find(|h| h.path == format!("{APP}thirdparty/{path}"));
        hit.unwrap_or_else(|| panic!("{path} not asked")).query[key].clone()
    };
    assert_eq!(asked("location/irc", "channel"), "#matrix");
    assert_eq!(asked("user/irc", "nick"), "jim");
    assert_eq!(asked("location", "alias"), "#irc_matrix:localhost");
    assert_eq!(asked("user", "userid"), "@irc_jim:localhost");
    assert!(
        hits.iter().all(|h| h.authorization.as_deref() == Some("Bearer irc_hs")),
        "hs_token on every request"
    );
}

/// A bridge that encrypts through its transactions (`org.matrix.msc3202`):
/// it creates its ghost's device without logging in (spec v1.17), and gets
/// that device's to-device messages (MSC2409), device list changes of the
/// users it shares rooms with and its one-time-key counts (MSC3202) in its
/// transactions; presence comes with `receive_ephemeral`.
#[tokio::test]
async fn encrypting_bridges_get_device_data_in_transactions() {
    let double = Double::start("irc").await;
    let extra = "receive_ephemeral: true\norg.matrix.msc3202: true\n";
    let server = start_server(&[double.registration(extra)]);
    let alice = server.register("alice").await;
    let ghost = register_ghost(&server, "irc_ghost").await;

    let device_path = acting_as("/_matrix/client/v3/devices/GHOSTDEV", &ghost);
    let created = server.put(&device_path, Some("irc_as"), json!({"display_name": "bridge"})).await;
    assert_eq!(created.0, 201, "an appservice creates its user's device: {}", created.1);
    assert_eq!(server.put(&device_path, Some("irc_as"), json!({"display_name": "b"})).await.0, 200);
    let not_ours = "/_matrix/client/v3/devices/NEWDEVICE";
    assert_error(&server.put(not_ours, Some(&alice.token), json!({})).await, 404, "M_NOT_FOUND");
    let as_device = |path: &str| acting_as(&format!("{path}?device_id=GHOSTDEV"), &ghost);
    assert_eq!(server.get(&as_device(WHOAMI), Some("irc_as")).await.1["device_id"], "GHOSTDEV");

    let keys = json!({"one_time_keys": {"signed_curve25519:AAAA": {"key": "k1"}, "signed_curve25519:AAAB": {"key": "k2"}}});
    let uploaded = server.post(&as_device("/_matrix/client/v3/keys/upload"), Some("irc_as"), keys).await;
    assert_eq!(uploaded.0, 200, "{}", uploaded.1);
    let counts = |hits: &[Hit], n: u64| {
        hits.iter().filter(|h| h.status == 200).any(|h| {
            h.body["org.matrix.msc3202.device_one_time_keys_count"][&ghost]["GHOSTDEV"]["signed_curve25519"]
                == n
        })
    };
    double.wait_for(|hits| counts(hits, 2), WAIT).await;
    let claim = json!({"one_time_keys": {&ghost: {"GHOSTDEV": "signed_curve25519"}}});
    assert_eq!(server.post("/_matrix/client/v3/keys/claim", Some(&alice.token), claim).await.0, 200);
    double.wait_for(|hits| counts(hits, 1), WAIT).await;

    let message = json!({"messages": {&ghost: {"GHOSTDEV": {"ciphertext": "for the bridge"}}}});
    let path = "/_matrix/client/v3/sendToDevice/m.room.encrypted/td1";
    assert_eq!(server.put(path, Some(&alice.token), message).await.0, 200);
    let to_device = |hits: &[Hit]| {
        hits.iter().filter(|h| h.status == 200).any(|h| {
            h.body["de.sorunome.msc2409.to_device"].as_array().into_iter().flatten().any(|m| {
                m["to_user_id"] == ghost
                    && m["to_device_id"] == "GHOSTDEV"
                    && m["sender"] == alice.user_id
                    && m["type"] == "m.room.encrypted"
                    && m["content"]["ciphertext"] == "for the bridge"
            })
        })
    };
    double.wait_for(to_device, WAIT).await;
    let sync = server.get(&as_device("/_matrix/client/v3/sync"), Some("irc_as")).await;
    assert_eq!(sync.0, 200, "{}", sync.1);
    assert!(
        sync.1["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()),
        "went to the bridge: {}",
        sync.1
    );

    // Alice shares a room with the ghost: her device list changes and her
    // presence reach the bridge.
    let room = create_room(&server, &alice, json!({"invite": [ghost]})).await;
    let join = acting_as(&format!("/_matrix/client/v3/rooms/{room}/join"), &ghost);
    assert_eq!(server.post(&join, Some("irc_as"), json!({})).await.0, 200);
    let rename = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    assert_eq!(server.put(&rename, Some(&alice.token), json!({"display_name": "phone"})).await.0, 200);
    let changed = |hits: &[Hit]| {
        hits.iter().any(|h| {
            h.status == 200
                && h.body["org.matrix.msc3202.device_lists"]["changed"]
                    .as_array()
                    .is_some_and(|users| users.contains(&json!(alice.user_id)))
        })
    };
    double.wait_for(changed, WAIT).await;
    let presence = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    let status = json!({"presence": "online", "status_msg": "bridging"});
    assert_eq!(server.put(&presence, Some(&alice.token), status).await.0, 200);
    double
        .wait_for(
            |hits| {
                accepted(hits, "ephemeral").iter().any(|e| {
                    e["type"] == "m.presence"
                        && e["sender"] == alice.user_id
                        && e["content"]["status_msg"] == "bridging"
                })
            },
            WAIT,
        )
        .await;

    let delete = acting_as("/_matrix/client/v3/devices/GHOSTDEV", &ghost);
    assert_eq!(server.delete(&delete, Some("irc_as")).await.0, 200, "no UIA for an appservice");
    assert_error(&server.get(&as_device(WHOAMI), Some("irc_as")).await, 400, "M_UNKNOWN_DEVICE");

    // Nor to deactivate its user.
    let deactivate = acting_as("/_matrix/client/v3/account/deactivate", &ghost);
    assert_eq!(server.post(&deactivate, Some("irc_as"), json!({})).await.0, 200);
    let login = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "irc_ghost"}});
    assert_error(
        &server.post("/_matrix/client/v3/login", Some("irc_as"), login).await,
        403,
        "M_USER_DEACTIVATED",
    );
}

/// What waits for an appservice that is down survives a `kill -9` of the
/// server: after the restart the same transaction is retried and delivered.
#[tokio::test]
async fn queued_transactions_survive_a_restart() {
    let double = Double::start("irc").await;
    let (dir, config) = server_dir(&[double.registration("")]);
    let server = TestServer::start_in(dir, &config);
    let alice = server.register("alice").await;
    let room = room_with_bots(&server, &alice, &["irc"]).await;
    double.wait_for(|hits| logged(hits, &room, "@ircbot:localhost join"), WAIT).await;

    double.behave().fail_transactions = usize::MAX;
    assert_eq!(send_text(&server, &alice, &room, "t1", "while down").await.0, 200);
    let failed = |hits: &[Hit]| hits.iter().any(|h| h.txn_id().is_some() && h.status != 200);
    double.wait_for(failed, WAIT).await;
    server.kill_9();
    let dir = server.kill();

    double.behave().fail_transactions = 0;
    let server = TestServer::start_in(dir, &config);
    let hits = double.wait_for(|hits| logged(hits, &room, "while down"), WAIT).await;
    check_transactions(&hits);
    let failed_id = hits.iter().find(|h| h.txn_id().is_some() && h.status != 200).unwrap().txn_id();
    assert!(
        hits.iter().any(|h| h.status == 200 && h.txn_id() == failed_id),
        "the retry after the restart is the same transaction"
    );
    drop(server);
}

/// Registration closed to the public does not stop an appservice
/// registering its users, and they do not count as the first account.
#[tokio::test]
async fn appservices_register_users_when_registration_is_closed() {
    let (dir, _) = server_dir(&[registration("irc", None, "")]);
    let config = format!("appservice_registrations = [\"{}\"]\n", dir.path().join("appservices").display());
    let server = TestServer::start_in(dir, &config);
    register_ghost(&server, "irc_ghost").await;
    // The bot and the ghost are not the server's first account: the
    // first-run registration token (for its admin) is still the only way in.
    let closed = json!({"username": "someone", "password": "a password", "auth": {"type": "m.login.dummy"}});
    let (status, body) = server.post("/_matrix/client/v3/register", None, closed).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["flows"], json!([{"stages": ["m.login.registration_token"]}]));
}

/// An appservice publishes rooms in its own network's directory: not in
/// the server's list, found with `third_party_instance_id` ("id|network")
/// or `include_all_networks`, and taken out again with DELETE.
#[tokio::test]
async fn appservices_publish_rooms_in_their_network_directory() {
    let server = start_server(&[registration("irc", None, "")]);
    let alice = server.register("alice").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat", "name": "Bridged"})).await;
    let listing = format!("/_matrix/client/v3/directory/list/appservice/libera/{room}");
    assert_error(
        &server.put(&listing, Some(&alice.token), json!({"visibility": "public"})).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(server.put(&listing, Some("irc_as"), json!({"visibility": "public"})).await.0, 200);
    assert!(!in_directory(&server, &alice, &room, json!({})).await, "not in the server's own list");
    assert!(in_directory(&server, &alice, &room, json!({"third_party_instance_id": "irc|libera"})).await);
    assert!(!in_directory(&server, &alice, &room, json!({"third_party_instance_id": "irc|oftc"})).await);
    assert!(in_directory(&server, &alice, &room, json!({"include_all_networks": true})).await);
    assert_eq!(server.delete(&listing, Some("irc_as")).await.0, 200);
    assert!(!in_directory(&server, &alice, &room, json!({"third_party_instance_id": "irc|libera"})).await);
}

/// Whether `room` is in the `/publicRooms` answer to `body`.
async fn in_directory(server: &TestServer, user: &User, room: &str, body: Value) -> bool {
    let (status, page) = server.post("/_matrix/client/v3/publicRooms", Some(&user.token), body).await;
    assert_eq!(status, 200, "{page}");
    page["chunk"].as_array().unwrap().iter().any(|r| r["room_id"] == room)
}
