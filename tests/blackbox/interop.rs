//! Interop with real third-party client software. `.ci/run` installs it
//! (scripts/setup-interop) and requires these tests; a plain `cargo test`
//! without it skips them with a note.

use std::{path::PathBuf, process::Stdio, time::Duration};

use crate::harness::TestServer;

/// The interpreter of the venv with matrix-nio, if installed.
fn python() -> Option<PathBuf> {
    let found = std::env::var_os("INTEROP_PYTHON").map(PathBuf::from).filter(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("INTEROP_REQUIRED").is_none(),
            "interop tests are required but INTEROP_PYTHON is not set up (run scripts/setup-interop)"
        );
        eprintln!("skipping interop test: run it through .ci/run");
    }
    found
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
