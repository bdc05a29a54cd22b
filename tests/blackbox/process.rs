//! The program itself: CLI, configuration errors, locking, durability.

use std::process::Command;

use crate::harness::{PASSWORD, TestServer};

fn estuary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_estuary"));
    cmd.env_remove("RUST_LOG");
    cmd
}

#[test]
fn help_and_version() {
    let out = estuary().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = estuary().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}

#[test]
fn unknown_keys_and_bad_values_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "server_name = \"localhost\"\nno_such_option = 1\n").unwrap();
    let out = estuary().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_option"));

    std::fs::write(&path, "port = \"eighty\"\n").unwrap();
    let out = estuary().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("port"));

    let out = estuary().env("ESTUARY_ALLOW_REGISTRATON", "true").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_registraton") && stderr.contains("ESTUARY_ALLOW_REGISTRATON"), "{stderr}");
}

#[tokio::test]
async fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("estuary.toml");
    std::fs::write(
        &config,
        format!(
            "port = 0\nallow_registration = false\ndatabase_path = \"{}\"\n",
            dir.path().join("db").display()
        ),
    )
    .unwrap();
    let mut child = estuary()
        .arg("--config")
        .arg(&config)
        .env("ESTUARY_SERVER_NAME", "env.example")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr).lines().map_while(Result::ok).find(|l| l.contains("starting Estuary"))
    })
    .join()
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.unwrap().contains("env.example"));
}

#[tokio::test]
async fn a_second_server_on_the_same_database_is_refused() {
    let server = TestServer::start().await;
    let config = server.dir.path().join("estuary.toml");
    let out = estuary().arg("--config").arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let server = TestServer::start().await;
    let user = server.register("zoe").await;
    let path = format!("/_matrix/client/v3/user/{}/account_data/org.example.k", user.user_id);
    assert_eq!(server.put(&path, Some(&user.token), serde_json::json!({"v": 1})).await.0, 200);
    let dir = server.kill();
    let server = TestServer::start_in(dir, "allow_registration = true\n");
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&user.token)).await.0, 200);
    assert_eq!(server.login("zoe", PASSWORD).await.0, 200);
    let (status, body) = server.get(&path, Some(&user.token)).await;
    assert_eq!((status.as_u16(), body), (200, serde_json::json!({"v": 1})));
}

#[test]
fn sigterm_shuts_down_gracefully_and_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("estuary.toml");
    std::fs::write(
        &config,
        format!("port = 0\nlog_format = \"json\"\ndatabase_path = \"{}\"\n", dir.path().join("db").display()),
    )
    .unwrap();
    let mut child =
        estuary().arg("--config").arg(&config).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    rx.recv_timeout(std::time::Duration::from_secs(30)).expect("server started");
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful exit, got {exit:?}");
    let lines = reader.join().unwrap();
    assert!(lines.iter().any(|l| l.contains("shutting down")), "{lines:?}");
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
}
