//! The `lpcmon serve` command line refuses tokens that protect nothing (issue 9, findings 1
//! and 3), run as the real binary. Each case fails before anything is bound.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let port = dir.path().join("port/events.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpcmon"));
    cmd.arg("serve")
        .args(["--store", "memory", "--sensor", "none", "--port"])
        .arg(&port)
        .args(args)
        .env_remove("LPCMON_TOKEN")
        .env("RUST_BACKTRACE", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Every case here must fail at start; a server that started would be killed by the
    // timeout and the test would fail on its status.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn refused(out: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(stderr.contains(why), "expected {why:?} in: {stderr}");
}

#[test]
fn empty_and_blank_tokens_are_refused() {
    refused(
        &serve(&["--listen", "0.0.0.0:0", "--token", ""], &[]),
        "empty or only whitespace",
    );
    refused(
        &serve(&["--listen", "0.0.0.0:0"], &[("LPCMON_TOKEN", "   ")]),
        "empty or only whitespace",
    );
    refused(&serve(&["--token", " \t"], &[]), "empty or only whitespace");
}

#[test]
fn a_world_readable_token_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &serve(
            &["--listen", "0.0.0.0:0", "--token-file", file.to_str().unwrap()],
            &[],
        ),
        "lets every user read it",
    );
    // --token and --token-file together are ambiguous.
    refused(
        &serve(&["--token", "x", "--token-file", file.to_str().unwrap()], &[]),
        "not both",
    );
}

/// Finding 3: a token on the command line works but is warned about (anyone can read it in
/// `ps`); the same token from LPCMON_TOKEN is not.
#[test]
fn a_token_on_the_command_line_is_warned_about() {
    use std::io::{BufRead, BufReader};
    let started = |args: &[&str], env: Option<&str>| -> String {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpcmon"));
        cmd.args([
            "serve",
            "--store",
            "memory",
            "--sensor",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--port",
        ])
        .arg(dir.path().join("port/events.sock"))
        .args(args)
        .env_remove("LPCMON_TOKEN")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        if let Some(token) = env {
            cmd.env("LPCMON_TOKEN", token);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = String::new();
        // Bounded: the server logs "lpcmon serving" once it listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            log.push_str(&line);
            log.push('\n');
            if line.contains("lpcmon serving") {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(log.contains("lpcmon serving"), "did not start: {log}");
        log
    };
    let token = "0123456789abcdef0123456789abcdef";
    let log = started(&["--token", token], None);
    assert!(log.contains("visible to every local user"), "{log}");
    assert!(!log.contains(token), "the token itself was logged: {log}");
    let log = started(&[], Some(token));
    assert!(!log.contains("visible to every local user"), "{log}");
}
