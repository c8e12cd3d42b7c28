//! Every example in `examples/` against a real `lpcmon serve` on loopback, fed by the real load
//! generator: `curl.sh` (the README's tour), `follow.py` (the standard-library SSE client,
//! across a server restart and a gap), and the Rust `follow` example (its code, included here,
//! and its binary when cargo has built it).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../../examples/follow.rs"]
mod follow_example;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A running `lpcmon serve` with no sensor; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    socket: PathBuf,
}

impl Server {
    fn start(dir: &Path, addr: Option<SocketAddr>, retain: usize) -> Server {
        let addr = addr.unwrap_or_else(|| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        });
        let socket = dir.join("events.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_lpcmon"))
            .args([
                "serve",
                "--store",
                "memory",
                "--sensor",
                "none",
                "--retain",
                &retain.to_string(),
            ])
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--port")
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() || !socket.exists() {
            assert!(Instant::now() < deadline, "lpcmon serve did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, addr, socket }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs the load generator to completion: `count` process.exec events.
    fn load(&self, count: u64) {
        let status = Command::new(env!("CARGO_BIN_EXE_lpcmon"))
            .args([
                "loadgen",
                "--rate",
                "0",
                "--size",
                "200",
                "--count",
                &count.to_string(),
            ])
            .arg("--connect")
            .arg(&self.socket)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The newest stored id, once it stops changing (the producer's disconnect is stored too).
    fn settled_newest(&self) -> u64 {
        let mut last = (u64::MAX, Instant::now());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let body = http_get(self.addr, "/events?limit=1");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let newest = v["newest_id"].as_u64().unwrap_or(0);
            if newest != last.0 {
                last = (newest, Instant::now());
            } else if last.1.elapsed() > Duration::from_millis(300) && newest > 0 {
                return newest;
            }
            assert!(Instant::now() < deadline, "the store did not settle");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback, the body as text.
fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[test]
fn curl_tour_pages_filters_follows_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, 100_000);
    server.load(25);
    let newest = server.settled_newest();
    let out = Command::new("bash")
        .arg(root().join("examples/curl.sh"))
        .arg(server.url())
        .output()
        .expect("bash examples/curl.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 25 exec events plus the producer's connect and disconnect records, 10 a page.
    assert!(
        text.contains(&format!("paged {newest} events in {} pages", newest.div_ceil(10))),
        "{text}"
    );
    assert!(text.contains("\"kind\":\"process.exec\""), "{text}");
    assert!(text.contains(&format!("last id seen: {newest}")), "{text}");
    assert!(
        text.contains(&format!("resuming after id {newest} with Last-Event-ID")),
        "{text}"
    );
}

/// Lines a child prints, as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn expect_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, what: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = what(&line);
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(_) => panic!("the expected line never came; saw:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn python_follower_prints_gaps_and_survives_a_restart() {
    let dir_a = tempfile::tempdir().unwrap();
    let server = Server::start(dir_a.path(), None, 5);
    server.load(30);
    let newest = server.settled_newest();
    let addr = server.addr;

    // From event 3, with only the last 5 kept: a gap of the evicted ones, then those 5.
    let mut child = Command::new("python3")
        .arg(root().join("examples/follow.py"))
        .args([
            "--url",
            &server.url(),
            "--last-event-id",
            "3",
            "--max-events",
            "8",
            "--retry",
            "0.2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 examples/follow.py");
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    let missed = newest - 5 - 3;
    expect_line(&rx, &mut seen, |l| {
        l == format!("gap missed={missed} reason=evicted")
    });
    expect_line(&rx, &mut seen, |l| l.starts_with(&format!("event {newest} ")));

    // The server goes away and comes back (empty: ids start again) on the same address.
    drop(server);
    expect_line(&rx, &mut seen, |l| l.starts_with("# disconnected"));
    let dir_b = tempfile::tempdir().unwrap();
    let server = Server::start(dir_b.path(), Some(addr), 5);
    expect_line(&rx, &mut seen, |l| l.contains(&format!("Last-Event-ID={newest}")));
    server.load(2);
    // Three more events (connect and 2 execs) make 8; the follower exits on its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("follow.py did not finish; saw:\n{}", seen.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    seen.extend(rx.try_iter());
    assert!(status.success(), "{}", seen.join("\n"));
    assert!(
        seen.iter().any(|l| l.starts_with("event 2 process.exec")),
        "events of the restarted server arrive: {}",
        seen.join("\n")
    );
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("event ")).count(),
        8,
        "{}",
        seen.join("\n")
    );
}

#[test]
fn rust_follower_prints_events_and_stops_on_a_gap_when_strict() {
    use clap::Parser;
    use follow_example::{End, Options, follow};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, 5);
    server.load(30);
    let newest = server.settled_newest();
    let missed = newest - 5 - 3;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let url = server.url();
    let opts = Options::parse_from(["follow", "--url", &url, "--after", "3", "--max-events", "5"]);
    let mut out = Vec::new();
    let end = rt.block_on(follow(&opts, &mut out)).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(end, End::Done { events: 5, gaps: 1 }, "{text}");
    assert!(
        text.contains(&format!("gap missed={missed} reason=evicted")),
        "{text}"
    );
    assert!(
        text.contains(&format!("event {newest} producer.disconnect")),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("event ")).count(),
        5,
        "one line per event: {text}"
    );

    let strict = Options::parse_from(["follow", "--url", &url, "--after", "3", "--strict"]);
    let end = rt.block_on(follow(&strict, &mut Vec::new())).unwrap();
    assert_eq!(end, End::Gap { missed });

    // The example's binary, when cargo has built it (`cargo test` builds examples): --strict
    // exits non-zero on the gap.
    let exe = Path::new(env!("CARGO_BIN_EXE_lpcmon"))
        .parent()
        .unwrap()
        .join("examples/follow");
    if exe.exists() {
        let out = Command::new(&exe)
            .args(["--url", &url, "--after", "3", "--strict"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("gap missed={missed}")));
    } else {
        eprintln!(
            "{} not built (run `cargo test` without --test to build examples)",
            exe.display()
        );
    }
}
