//! Start a real server and talk to it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestServer {
    pub base: String,
    child: Child,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl TestServer {
    /// A server with open registration (the common case in tests).
    pub async fn start() -> Self {
        Self::start_with("allow_registration = true\n").await
    }

    /// A server with extra TOML configuration lines.
    pub async fn start_with(extra_config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra_config)
    }

    /// Start on an existing directory (for restart tests).
    pub fn start_in(dir: tempfile::TempDir, extra_config: &str) -> Self {
        let config = format!("server_name = \"localhost\"\nport = 0\n{extra_config}");
        Self::start_configured(dir, &config)
    }

    /// Start with `config` (which must set `server_name` and `port`) on
    /// `dir`; address, database and log settings are added. Rate limits are
    /// off unless `config` sets `rc_enabled` (tests register and send fast).
    pub fn start_configured(dir: tempfile::TempDir, config: &str) -> Self {
        let config_path = dir.path().join("estuary.toml");
        let rate_limits = if config.contains("rc_enabled") { "" } else { "rc_enabled = false\n" };
        let config = format!(
            "address = \"127.0.0.1\"\ndatabase_path = \"{}\"\nlog = \"info,estuary_api=debug\"\n{rate_limits}{config}",
            dir.path().join("db").display()
        );
        std::fs::write(&config_path, config).expect("write config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_estuary"));
        // The config file alone decides: no ESTUARY_* overrides from the caller.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ESTUARY_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn estuary");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(pos) = line.find("listening on http") {
                    let addr = line[pos + "listening on ".len()..].trim().to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        // Tests with TLS use a CA of their own; the harness's client only
        // checks the server's behaviour, not its certificate.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        Self { base: addr, child, dir, log, http }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Stop the server (SIGKILL) and hand back its directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// SIGKILL the server process now, even while requests are in flight;
    /// `kill` later hands back the directory.
    pub fn kill_9(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-9", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -9 {pid} failed");
    }

    /// Send a request and return the status and JSON body (`Null` when empty).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, token, Some(&body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(Method::PUT, path, token, Some(&body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.request(Method::DELETE, path, token, None).await
    }

    pub async fn delete_with_body(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::DELETE, path, Some(token), Some(&body)).await
    }

    /// Send raw bytes with a content type.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Register `username` with the dummy stage; returns (user_id, token, device_id).
    pub async fn register(&self, username: &str) -> User {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": username, "password": PASSWORD, "auth": {"type": "m.login.dummy"}}),
            )
            .await;
        assert_eq!(status, 200, "register {username}: {body}");
        User {
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn login(&self, user: &str, password: &str) -> (StatusCode, Value) {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
pub struct User {
    pub user_id: String,
    pub token: String,
    pub device_id: String,
}

/// Assert a Matrix error: status and errcode.
#[track_caller]
pub fn assert_error(result: &(StatusCode, Value), status: u16, errcode: &str) {
    assert_eq!(result.0.as_u16(), status, "unexpected status, body: {}", result.1);
    assert_eq!(result.1["errcode"], errcode, "unexpected errcode, body: {}", result.1);
}

/// The password UIA stage for `user`, within `session`.
pub fn password_auth(user: &str, session: Option<&str>) -> Value {
    let mut auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": PASSWORD});
    if let Some(session) = session {
        auth["session"] = json!(session);
    }
    auth
}

/// Percent-encode a path segment or query value (every byte but ASCII letters and digits).
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
