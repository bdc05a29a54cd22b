//! Interop with real third-party client software. `.ci/run` installs it
//! (scripts/setup-interop) and requires these tests; a plain `cargo test`
//! without it skips them with a note.

use std::{path::PathBuf, process::Stdio, time::Duration};

use crate::harness::TestServer;

/// `found`, or a skip note; under `.ci/run` (INTEROP_REQUIRED) a panic.
fn required<T>(found: Option<T>, what: &str) -> Option<T> {
    if found.is_none() {
        assert!(
            std::env::var_os("INTEROP_REQUIRED").is_none(),
            "interop tests are required but {what} is missing (run scripts/setup-interop)"
        );
        eprintln!("skipping interop test without {what}: run it through .ci/run");
    }
    found
}

/// A path `scripts/setup-interop` exported in `variable`, if it exists.
fn installed(variable: &str) -> Option<PathBuf> {
    required(std::env::var_os(variable).map(PathBuf::from).filter(|p| p.exists()), variable)
}

/// The interpreter of the venv with matrix-nio, if installed.
fn python() -> Option<PathBuf> {
    installed("INTEROP_PYTHON")
}

/// The interpreter of the venv with heisenbridge and mautrix-python, if installed.
fn bridge_python() -> Option<PathBuf> {
    installed("INTEROP_BRIDGE_PYTHON")
}

/// The node_modules with matrix-js-sdk, if installed.
fn node_modules() -> Option<PathBuf> {
    installed("INTEROP_NODE_MODULES")
}

/// A program on PATH, if installed.
fn program(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()));
    required(found, name)
}

/// Run a command to completion (bounded), returning success and its output.
async fn run(command: &mut tokio::process::Command) -> (bool, String) {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start command");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("command timed out")
        .expect("command output");
    let text =
        format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Run `tests/interop/<script>` against the server; panics with its output on failure.
async fn run_script(interpreter: &PathBuf, script: &str, server: &TestServer) {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/").to_owned() + script;
    let child = tokio::process::Command::new(interpreter)
        .arg(&path)
        .arg(&server.base)
        .arg(scratch.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start interop script");
    let output = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("interop script timed out")
        .expect("interop script output");
    let text =
        format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script} failed:\n{text}\nserver log:\n{}", server.log());
    assert!(text.contains("interop ok"), "{script} did not finish:\n{text}");
}

#[tokio::test]
async fn matrix_nio_users_exchange_encrypted_messages() {
    let Some(python) = python() else { return };
    let server = TestServer::start().await;
    run_script(&python, "nio_e2ee.py", &server).await;
}

/// matrix-nio uploads an image, makes it its avatar, downloads it and a
/// thumbnail, and searches messages.
#[tokio::test]
async fn matrix_nio_media_avatar_thumbnail_and_search() {
    let Some(python) = python() else { return };
    let server = TestServer::start().await;
    run_script(&python, "nio_media_search.py", &server).await;
}

/// The IRC bridge heisenbridge, registered at runtime through the admin
/// API, bridges a channel of a real IRC server (ngircd) both ways.
#[tokio::test]
async fn heisenbridge_bridges_an_irc_channel_both_ways() {
    let Some(python) = bridge_python() else { return };
    let server = TestServer::start().await;
    run_script(&python, "heisenbridge_irc.py", &server).await;
}

/// mautrix-python, the library of the mautrix bridges, as a bridge author
/// uses it: ghosts, a portal room, timestamp massaging, transactions with
/// the user's replies, typing and receipts, user and alias queries, ping.
#[tokio::test]
async fn mautrix_python_appservice_bridges_a_portal_room() {
    let Some(python) = bridge_python() else { return };
    let server = TestServer::start().await;
    run_script(&python, "mautrix_appservice.py", &server).await;
}

/// matrix-js-sdk schedules a delayed message (MSC4140) and gets it through
/// its own sync when Estuary sends it.
#[tokio::test]
async fn matrix_js_sdk_receives_its_delayed_message_through_sync() {
    let (Some(node), Some(modules)) = (program("node"), node_modules()) else { return };
    let server = TestServer::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/js_delayed_events.mjs");
    let (success, output) =
        run(tokio::process::Command::new(node).arg(script).arg(&server.base).arg(modules)).await;
    assert!(
        success && output.contains("interop ok"),
        "matrix-js-sdk script failed:\n{output}\nserver log:\n{}",
        server.log()
    );
}

/// coturn in shared-secret mode on a loopback port; killed when dropped.
struct Coturn {
    port: u16,
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Coturn {
    async fn start(turnserver: &PathBuf, secret: &str) -> Self {
        let dir = tempfile::tempdir().expect("coturn dir");
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(dir.path().join("empty.conf"), "").unwrap();
        let log = std::fs::File::create(dir.path().join("turn.log")).unwrap();
        let child = tokio::process::Command::new(turnserver)
            .arg("-c")
            .arg(dir.path().join("empty.conf"))
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--realm=localhost",
            ])
            .args(["--use-auth-secret", &format!("--static-auth-secret={secret}")])
            .args(["--no-tls", "--no-dtls", "--no-cli", "--no-multicast-peers", "--allow-loopback-peers"])
            .arg(format!("--userdb={}", dir.path().join("turndb").display()))
            .arg(format!("--pidfile={}", dir.path().join("turn.pid").display()))
            .args(["--log-file=stdout", "--simple-log", "--verbose"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start turnserver");
        let coturn = Self { port, _child: child, dir };
        for _ in 0..100 {
            if coturn.log().contains("UDP listener opened") {
                return coturn;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("turnserver did not start:\n{}", coturn.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turn.log")).unwrap_or_default()
    }

    /// An allocation plus relayed data between two clients, as a caller makes.
    async fn allocate(&self, uclient: &PathBuf, username: &str, password: &str) -> (bool, String) {
        let port = self.port.to_string();
        run(tokio::process::Command::new(uclient).args([
            "-p",
            &port,
            "-u",
            username,
            "-w",
            password,
            "-y",
            "-c",
            "-n",
            "1",
            "-m",
            "1",
            "127.0.0.1",
        ]))
        .await
    }
}

async fn turn_credentials(secret: &str, port: u16, lifetime: u64) -> (String, String) {
    let config = format!(
        "allow_registration = true\nturn_uris = [\"turn:127.0.0.1:{port}?transport=udp\"]\n\
         turn_shared_secret = \"{secret}\"\nturn_user_lifetime = {lifetime}\n"
    );
    let server = TestServer::start_with(&config).await;
    let alice = server.register("alice").await;
    let (status, body) = server.get("/_matrix/client/v3/voip/turnServer", Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    (body["username"].as_str().unwrap().to_owned(), body["password"].as_str().unwrap().to_owned())
}

/// coturn, in the shared-secret mode Estuary's credentials are made for,
/// accepts an allocation with them and refuses them once expired.
#[tokio::test]
async fn coturn_accepts_issued_turn_credentials_and_refuses_expired_ones() {
    let (Some(turnserver), Some(uclient)) = (program("turnserver"), program("turnutils_uclient")) else {
        return;
    };
    let secret = "interop-turn-secret";
    let coturn = Coturn::start(&turnserver, secret).await;

    let (username, password) = turn_credentials(secret, coturn.port, 3600).await;
    let (success, output) = coturn.allocate(&uclient, &username, &password).await;
    let last_tally = output.lines().rfind(|l| l.contains("tot_recv_msgs=")).unwrap_or_default();
    assert!(
        success && !last_tally.is_empty() && !last_tally.contains("tot_recv_msgs=0,"),
        "valid credentials must allocate and relay:\n{output}\ncoturn:\n{}",
        coturn.log()
    );

    let (username, password) = turn_credentials(secret, coturn.port, 1).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (success, output) = coturn.allocate(&uclient, &username, &password).await;
    assert!(
        !success && output.contains("Cannot complete Allocation"),
        "expired credentials allocated:\n{output}"
    );
    assert!(
        coturn.log().contains(&format!("user <{username}>: incoming packet message processed, error 401"))
    );
}

/// The matrix-rust-sdk program (`tests/interop/rust-sdk`, built by `.ci/run`).
fn rust_sdk() -> Option<PathBuf> {
    installed("INTEROP_RUST_SDK")
}

/// Element X's sync, with the real matrix-rust-sdk: `SyncService` and
/// `RoomListService` over simplified sliding sync log in, list rooms as they
/// are created, renamed, joined and left, in recency order, get a message
/// within a second, exchange megolm messages both ways, and carry on after
/// the server restarts (on the same port, its connections lost).
#[tokio::test]
async fn matrix_rust_sdk_syncs_like_element_x() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let Some(program) = rust_sdk() else { return };
    let config = "allow_registration = true\n";
    let server = TestServer::start_with(config).await;
    let port = server.base.rsplit(':').next().expect("port").trim_end_matches('/').to_owned();
    let mut child = tokio::process::Command::new(program)
        .arg(&server.base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the matrix-rust-sdk program");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut output = String::new();
    let mut server = Some(server);
    let run = async {
        while let Some(line) = lines.next_line().await.expect("program output") {
            output.push_str(&line);
            output.push('\n');
            if line.trim() == "restart-now" {
                let dir = server.take().expect("one restart").kill();
                let config = format!("server_name = \"localhost\"\nport = {port}\n{config}");
                server = Some(TestServer::start_configured(dir, &config));
                stdin.write_all(b"restarted\n").await.expect("tell the program");
                stdin.flush().await.expect("flush");
            }
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(240), run).await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let errors = errors.await.unwrap_or_default();
    let log = server.as_ref().map(TestServer::log).unwrap_or_default();
    assert!(finished.is_ok(), "the program timed out:\n{output}\n{errors}\nserver log:\n{log}");
    let succeeded = matches!(status, Ok(Ok(status)) if status.success());
    assert!(
        succeeded && output.contains("interop ok"),
        "the program failed:\n{output}\n{errors}\nserver log:\n{log}"
    );
    // Each step the program proved, with its figures (shown with --nocapture).
    eprintln!("{output}");
}
