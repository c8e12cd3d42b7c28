//! `lpcmon status` and `lpcmon tail` against a real `lpcmon serve` on loopback, fed by the real
//! load generator over a real Unix port; `tail` across a server restart.

#![cfg(unix)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

mod common;
use common::free_port;

fn lpcmon() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpcmon"));
    common::clean_env(&mut cmd);
    // An explicit, empty config file: a machine's /etc/lpcmon/lpcmon.toml must not matter.
    cmd.arg("--config").arg("/dev/null");
    cmd.env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// A child killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Served {
    _proc: Proc,
    url: String,
    socket: PathBuf,
}

fn serve(dir: &Path, http_port: u16, extra: &[&str]) -> Served {
    std::fs::create_dir_all(dir).unwrap();
    let socket = dir.join("events.sock");
    let proc = Proc(
        common::serve_args(&mut lpcmon(), http_port, &socket)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start lpcmon serve"),
    );
    let url = format!("http://127.0.0.1:{http_port}");
    let deadline = Instant::now() + WAIT;
    // `status` itself is the readiness probe: exit 0 once the server answers.
    while !lpcmon()
        .args(["status", "--url", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "lpcmon serve did not answer at {url}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Served {
        _proc: proc,
        url,
        socket,
    }
}

fn loadgen(socket: &Path, args: &[&str]) -> Value {
    let out = lpcmon()
        .args(["loadgen", "--connect"])
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn status_json(url: &str) -> Value {
    let out = lpcmon()
        .args(["status", "--json", "--url", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_json_summarises_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), free_port(), &["--retain", "1000"]);
    // A 2-slot queue pushed flat out loses events at producer_queue.
    let report = loadgen(&server.socket, &["--rate", "0", "--count", "300", "--queue", "2"]);
    let dropped = report["dropped"].as_u64().unwrap();
    let sent = report["sent"].as_u64().unwrap();
    assert!(dropped > 0, "{report}");
    // The server reports the loss once the producer's last message is in: poll, bounded.
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let s = status_json(&server.url);
        if s["losses_by_stage"]["producer_queue"] == dropped && s["producers"][0]["events"] == sent {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed the loss: {s}\nloadgen: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(s["url"], server.url.as_str());
    assert_eq!(s["lost_total"], dropped, "{s}");
    let p = &s["producers"][0];
    assert_eq!(
        (p["kind"].as_str(), p["lost"].as_u64()),
        (Some("loadgen"), Some(dropped)),
        "{s}"
    );
    assert_eq!(s["producers_connected"], 0, "{s}");
    // connect + sent events + one or more loss records + disconnect, all stored.
    let stored = s["store"]["events"].as_u64().unwrap();
    assert!(stored >= sent + 3 && stored <= 1000, "{s}");
    assert!(s["store_occupancy_percent"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["sse_clients"], 0, "{s}");
    assert!(s["notices"].is_array(), "{s}");

    // The screen says the same in words.
    let out = lpcmon().args(["status", "--url", &server.url]).output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        screen.contains(&format!("{dropped} lost: producer_queue {dropped}")),
        "{screen}"
    );
    assert!(
        screen.contains("loadgen") && screen.contains("disconnected"),
        "{screen}"
    );
    assert!(!screen.contains('\x1b'), "colour with NO_COLOR set: {screen:?}");

    // --watch --json: one object per refresh.
    let mut watch = Proc(
        lpcmon()
            .args([
                "status",
                "--watch",
                "--json",
                "--interval",
                "100ms",
                "--url",
                &server.url,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = watch.0.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.lines().count() < 3 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "status --watch stopped: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    for line in seen.lines().take(3) {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["lost_total"], dropped);
    }
}

/// Reads `tail`'s stdout on a thread, so the test can wait on it with a deadline.
fn spawn_tail(args: &[&str]) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut child = lpcmon()
        .arg("tail")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Proc(child), rx)
}

fn lines_until(
    rx: &std::sync::mpsc::Receiver<String>,
    lines: &mut Vec<String>,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(lines) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!(
                "timed out waiting for {what}; tail printed:\n{}",
                lines.join("\n")
            ),
        }
    }
}

fn event_ids(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| !l.starts_with("--"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn tail_follows_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(&dir.path().join("a"), port, &[]);
    let (tail, rx) = spawn_tail(&["--url", &server.url, "--reconnect", "100ms"]);
    // `tail` starts after the newest event; give it a moment to be connected (SSE clients: 1).
    let deadline = Instant::now() + WAIT;
    while status_json(&server.url)["sse_clients"] != 1 {
        assert!(Instant::now() < deadline, "tail never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    loadgen(&server.socket, &["--rate", "0", "--count", "5"]);
    let mut lines = Vec::new();
    // producer.connect, 5 × process.exec, producer.disconnect.
    lines_until(&rx, &mut lines, "the first server's 7 events", |l| {
        event_ids(l).len() >= 7
    });
    assert_eq!(event_ids(&lines), (1..=7).collect::<Vec<_>>(), "{lines:#?}");
    let exec: Vec<&String> = lines.iter().filter(|l| l.contains("process.exec")).collect();
    assert_eq!(exec.len(), 5, "{lines:#?}");
    // Aligned: the kind column starts at the same place on every event line.
    let columns: Vec<usize> = lines
        .iter()
        .filter(|l| !l.starts_with("--"))
        .map(|l| l.find("process.").or_else(|| l.find("producer.")).unwrap())
        .collect();
    assert!(columns.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");

    // Restart on the same address: a fresh in-memory store whose ids begin again.
    drop(server);
    lines_until(&rx, &mut lines, "the disconnect", |l| {
        l.iter().any(|x| x.starts_with("-- disconnected"))
    });
    let server = serve(&dir.path().join("b"), port, &[]);
    loadgen(&server.socket, &["--rate", "0", "--count", "3"]);
    lines_until(&rx, &mut lines, "the second server's 5 events", |l| {
        event_ids(l).len() >= 12
    });
    let restart = lines
        .iter()
        .position(|l| l.starts_with("-- server restarted"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(lines[restart].contains("began again"), "{lines:#?}");
    let after: Vec<u64> = event_ids(&lines[restart..]);
    assert_eq!(after, (1..=5).collect::<Vec<_>>(), "{lines:#?}");
    drop(tail);

    // Resuming from an id the store no longer holds prints the gap, with its exact size.
    let small = serve(&dir.path().join("c"), free_port(), &["--retain", "5"]);
    loadgen(&small.socket, &["--rate", "0", "--count", "20"]);
    // 22 events stored in all (connect, 20, disconnect), the newest 5 kept: ids 18..=22. The
    // load generator's exit says they were sent, not yet stored (ingest runs on its own
    // thread), so wait for the store before resuming from id 1.
    let deadline = Instant::now() + WAIT;
    while status_json(&small.url)["store"]["stored_total"] != 22 {
        assert!(Instant::now() < deadline, "the 22 events were never stored");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_tail, rx) = spawn_tail(&["--url", &small.url, "--after", "1", "--count", "5"]);
    let mut lines = Vec::new();
    lines_until(&rx, &mut lines, "the gap and the kept events", |l| {
        event_ids(l).len() >= 5
    });
    assert_eq!(lines[0], "-- gap: 16 events missed (evicted)", "{lines:#?}");
    assert_eq!(event_ids(&lines), (18..=22).collect::<Vec<_>>(), "{lines:#?}");
}
