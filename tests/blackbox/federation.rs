//! Federation with a real Synapse from PyPI (installed by
//! scripts/setup-interop): both servers on loopback over TLS from a CA the
//! test makes, driven through their client APIs by
//! tests/interop/synapse_federation.py.

use std::{path::Path, process::Stdio, time::Duration};

use crate::harness::TestServer;

/// The Python of the venv with Synapse, if installed (required under .ci/run).
fn synapse_python() -> Option<std::path::PathBuf> {
    let found =
        std::env::var_os("INTEROP_SYNAPSE_PYTHON").map(std::path::PathBuf::from).filter(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("INTEROP_REQUIRED").is_none(),
            "the Synapse interop test is required but INTEROP_SYNAPSE_PYTHON is missing (run scripts/setup-interop)"
        );
        eprintln!("skipping the Synapse federation test: run it through .ci/run");
    }
    found
}

fn script(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/").to_owned() + name
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Run a helper command to completion (bounded); panics with its output.
async fn run_env(python: &Path, args: &[&str]) {
    let child = tokio::process::Command::new(python)
        .arg(script("federation_env.py"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start federation_env.py");
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("federation_env.py timed out")
        .expect("federation_env.py output");
    assert!(
        output.status.success(),
        "federation_env.py {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Synapse on a loopback port; killed when dropped.
struct Synapse {
    url: String,
    server_name: String,
    log: std::path::PathBuf,
    _child: tokio::process::Child,
}

impl Synapse {
    async fn start(python: &Path, dir: &Path, ca: &Path) -> Self {
        let port = free_port();
        let data = dir.join("synapse");
        let (ca_pem, cert, key) = (ca.join("ca.pem"), ca.join("localhost.pem"), ca.join("localhost.key"));
        let port_text = port.to_string();
        let config_args = [
            "synapse-config",
            "--dir",
            data.to_str().unwrap(),
            "--port",
            &port_text,
            "--ca",
            ca_pem.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        run_env(python, &config_args).await;
        let child = tokio::process::Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(data.join("homeserver.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start synapse");
        let url = format!("https://localhost:{port}");
        run_env(python, &["wait-ready", "--url", &url, "--ca", ca_pem.to_str().unwrap()]).await;
        Self {
            url,
            server_name: format!("localhost:{port}"),
            log: data.join("homeserver.log"),
            _child: child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Estuary with TLS from the test CA, named `localhost:<port>`, trusting
/// the CA for outgoing federation and allowed to reach loopback.
fn start_estuary(dir: tempfile::TempDir, ca: &Path) -> (TestServer, String) {
    let (config, name) = estuary_config(ca);
    (TestServer::start_configured(dir, &config), name)
}

/// Estuary's configuration for these tests, and its server name.
fn estuary_config(ca: &Path) -> (String, String) {
    let port = free_port();
    let config = format!(
        "server_name = \"localhost:{port}\"\nport = {port}\nallow_registration = true\n\
         tls_certificate_path = \"{cert}\"\ntls_private_key_path = \"{key}\"\n\
         federation_port = 0\ntrusted_key_servers = []\nallow_guest_access = true\n\
         federation_trusted_ca_paths = [\"{ca}\"]\nfederation_allow_private_addresses = true\n",
        cert = ca.join("localhost.pem").display(),
        key = ca.join("localhost.key").display(),
        ca = ca.join("ca.pem").display(),
    );
    (config, format!("localhost:{port}"))
}

/// The scenario's steps (tests/interop/synapse_federation.py) that pass;
/// FEDERATION_STEPS overrides them while developing.
const STEPS: &str = "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t,u,v,w";

/// A Synapse user joins a room on Estuary; messages, topic and power
/// levels, typing and receipts flow both ways; a late joiner on Synapse
/// backfills the history; a leave is seen; an Estuary user accepts an
/// invite to a room on Synapse and joins it through make_join/send_join;
/// a Synapse user accepts an Estuary invite; an alias and a profile on
/// Synapse are read from Estuary; Estuary is killed (kill -9) and
/// restarted mid-conversation and nothing sent to it or by it is lost;
/// an Estuary user joins a Synapse room with history, leaves and rejoins;
/// presence and status messages cross both ways; users join restricted
/// rooms through membership of an allowed room, and list the other
/// server's spaces (`/hierarchy` over federation), both ways; a guest on
/// Estuary leaves when a Synapse user revokes guest access; a room
/// upgraded on Synapse takes Estuary's alias, directory entry and tags.
#[tokio::test]
async fn synapse_and_estuary_federate_both_ways() {
    let Some(python) = synapse_python() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let ca = scratch.path().join("ca");
    run_env(&python, &["ca", ca.to_str().unwrap()]).await;
    let (config, estuary_name) = estuary_config(&ca);
    let mut estuary = TestServer::start_configured(tempfile::tempdir().unwrap(), &config);
    let synapse = Synapse::start(&python, scratch.path(), &ca).await;
    let restart_dir = scratch.path().join("restart");
    std::fs::create_dir_all(&restart_dir).unwrap();
    let estuary_url = format!("https://{estuary_name}");
    let steps = std::env::var("FEDERATION_STEPS").unwrap_or_else(|_| STEPS.to_owned());
    let mut child = tokio::process::Command::new(&python)
        .arg(script("synapse_federation.py"))
        .args([&estuary_url, &estuary_name, &synapse.url, &synapse.server_name])
        .arg(ca.join("ca.pem"))
        .args(["--only", &steps, "--timeout", "160"])
        .arg("--restart-dir")
        .arg(&restart_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start synapse_federation.py");
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let output = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        format!("{}\n{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err))
    });
    // The scenario asks for a restart through a file; answer it until the
    // scenario ends (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(200);
    let status = loop {
        if let Ok(status) = tokio::time::timeout(Duration::from_millis(100), child.wait()).await {
            break status.expect("scenario status");
        }
        assert!(tokio::time::Instant::now() < deadline, "synapse_federation.py timed out");
        if restart_dir.join("restart-now").exists() && !restart_dir.join("restarted").exists() {
            estuary.kill_9();
            let dir = estuary.kill();
            estuary = TestServer::start_configured(dir, &config);
            std::fs::write(restart_dir.join("restarted"), "yes").unwrap();
        }
    };
    let text = output.await.unwrap();
    // Shown with --nocapture: one line per step.
    eprintln!("{text}");
    assert!(
        status.success() && text.contains("interop ok"),
        "federation scenario failed:\n{text}\nEstuary log:\n{}\nSynapse log (tail):\n{}",
        estuary.log(),
        tail(&synapse.log(), 150)
    );
}

/// Two matrix-nio clients, on Estuary and on Synapse, exchange encrypted
/// messages: device lists, key queries and claims, and to-device room keys
/// cross the servers; a second device of the Synapse user reaches Estuary
/// as a device list update.
#[tokio::test]
async fn matrix_nio_users_on_estuary_and_synapse_exchange_encrypted_messages() {
    let Some(python) = synapse_python() else { return };
    let nio = std::env::var_os("INTEROP_PYTHON").map(std::path::PathBuf::from).filter(|p| p.exists());
    let Some(nio) = nio else {
        assert!(std::env::var_os("INTEROP_REQUIRED").is_none(), "INTEROP_PYTHON (matrix-nio) is missing");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let ca = scratch.path().join("ca");
    run_env(&python, &["ca", ca.to_str().unwrap()]).await;
    let (estuary, estuary_name) = start_estuary(tempfile::tempdir().unwrap(), &ca);
    let synapse = Synapse::start(&python, scratch.path(), &ca).await;
    let nio_scratch = scratch.path().join("nio");
    std::fs::create_dir_all(&nio_scratch).unwrap();
    let child = tokio::process::Command::new(&nio)
        .arg(script("nio_federation_e2ee.py"))
        .args([&format!("https://{estuary_name}"), &estuary_name, &synapse.url, &synapse.server_name])
        .arg(ca.join("ca.pem"))
        .arg(&nio_scratch)
        .arg("--extended")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start nio_federation_e2ee.py");
    let output = tokio::time::timeout(Duration::from_secs(200), child.wait_with_output())
        .await
        .expect("nio_federation_e2ee.py timed out")
        .expect("nio_federation_e2ee.py output");
    let text =
        format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && text.contains("interop ok"),
        "encrypted messaging across servers failed:\n{text}\nEstuary log:\n{}\nSynapse log (tail):\n{}",
        estuary.log(),
        tail(&synapse.log(), 150)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The key server answers with our self-signed key; the federation version
/// endpoint needs no signature; every other Server-Server endpoint refuses
/// requests without a valid X-Matrix signature, and a server that cannot
/// be reached for its key is refused too (contained: a 401, quickly).
#[tokio::test]
async fn server_server_requests_need_a_valid_signature() {
    let server = TestServer::start().await;
    let (status, keys) = server.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys["server_name"], "localhost");
    let key_id =
        keys["verify_keys"].as_object().and_then(|k| k.keys().next().cloned()).expect("a verify key");
    assert!(keys["signatures"]["localhost"][&key_id].is_string(), "the response is self-signed: {keys}");
    assert!(keys["valid_until_ts"].as_u64().unwrap() > 0);
    let (status, version) = server.get("/_matrix/federation/v1/version", None).await;
    assert_eq!((status.as_u16(), version["server"]["name"].as_str()), (200, Some("Estuary")));

    let (status, body) =
        server.raw(reqwest::Method::PUT, "/_matrix/federation/v1/send/1", None, b"{}".to_vec()).await;
    assert_eq!((status.as_u16(), body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{body}");
    let forged =
        r#"X-Matrix origin="unreachable.invalid",destination="localhost",key="ed25519:x",sig="AAAA""#;
    let started = std::time::Instant::now();
    let response = server
        .http()
        .put(format!("{}/_matrix/federation/v1/send/2", server.base))
        .header("Authorization", forged)
        .header("Content-Type", "application/json")
        .body(r#"{"origin":"unreachable.invalid","origin_server_ts":1,"pdus":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    assert!(started.elapsed() < Duration::from_secs(20), "refusing took {:?}", started.elapsed());
    // An origin that is no server name (a port that is not a number):
    // the header itself is malformed, a bad request.
    let malformed = r#"X-Matrix origin="localhost:http",destination="localhost",key="ed25519:1",sig="AAAA""#;
    let response = server
        .http()
        .get(format!("{}/_matrix/federation/v1/query/profile?user_id=@a:localhost", server.base))
        .header("Authorization", malformed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // The v1 invite (its body is the bare event), unsigned: 401, not 404.
    let (status, body) = server
        .raw(reqwest::Method::PUT, "/_matrix/federation/v1/invite/!r:remote.test/$e", None, b"{}".to_vec())
        .await;
    assert_eq!((status.as_u16(), body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{body}");
    // A join template for a room that does not exist, unsigned: 401, not 404.
    let (status, _) =
        server.get("/_matrix/federation/v1/make_join/!nope:localhost/@a:remote.test", None).await;
    assert_eq!(status.as_u16(), 401);
}

/// `estuary rotate-signing-key` on a stopped server: the key response then
/// names the new key, signs with it, and keeps the old one in
/// `old_verify_keys` with the time it expired.
#[tokio::test]
async fn a_rotated_signing_key_stays_as_an_old_verify_key() {
    let server = TestServer::start().await;
    let (_, before) = server.get("/_matrix/key/v2/server", None).await;
    let old_id = before["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    let old_key = before["verify_keys"][&old_id]["key"].clone();
    let dir = server.kill();
    let rotate = std::process::Command::new(env!("CARGO_BIN_EXE_estuary"))
        .arg("--config")
        .arg(dir.path().join("estuary.toml"))
        .arg("rotate-signing-key")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{}", String::from_utf8_lossy(&rotate.stderr));

    let server = TestServer::start_in(dir, "");
    let (status, after) = server.get("/_matrix/key/v2/server", None).await;
    assert_eq!(status, 200, "{after}");
    let new_id = after["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    assert_ne!(new_id, old_id, "{after}");
    assert!(after["signatures"]["localhost"][&new_id].is_string(), "signed with the new key: {after}");
    assert_eq!(after["old_verify_keys"][&old_id]["key"], old_key, "{after}");
    assert!(after["old_verify_keys"][&old_id]["expired_ts"].as_u64().unwrap() > 0);
}
