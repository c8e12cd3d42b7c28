//! The whole pipeline on real parts: the `lpcmon` binary or the same wiring in-process, a real
//! Unix SEQPACKET port, real HTTP on loopback, and (as root) the kernel's proc connector.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alpc_server::client::PortError;
use alpc_server::dispatch::Dispatcher;
use alpc_server::unix::{UnixPortConfig, UnixPortConnection, UnixPortServer};
use lpcmon_api::{ApiConfig, AppState};
use lpcmon_protocol::message::{Hello, HelloReply, Message};
use lpcmon_protocol::server::ServerConfig;
use lpcmon_protocol::{ProducerKind, RefuseReason};
use serde_json::Value;

mod common;
use common::free_port;

/// A `lpcmon serve` child process, killed when dropped.
struct Served {
    child: Child,
    base: String,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("port/events.sock");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_lpcmon"))
        .args([
            "serve",
            "--store",
            "memory",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--port",
        ])
        .arg(&socket)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start lpcmon");
    let served = Served {
        child,
        base: format!("http://127.0.0.1:{port}"),
        socket,
        _dir: dir,
    };
    wait_healthy(&served.base).await;
    served
}

async fn wait_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("lpcmon did not become healthy at {base}");
}

async fn get_json(url: &str) -> Value {
    serde_json::from_str(&reqwest::get(url).await.unwrap().text().await.unwrap()).unwrap()
}

fn producer<'a>(stats: &'a Value, kind: &str) -> Option<&'a Value> {
    stats["producers"].as_array()?.iter().find(|p| p["kind"] == kind)
}

fn losses_sum(producer: &Value) -> u64 {
    producer["counters"]["losses"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// Waits until a producer has disconnected and its counters stop moving, then returns them.
async fn settled_producer(base: &str, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: Option<Value> = None;
    while Instant::now() < deadline {
        let stats = get_json(&format!("{base}/stats")).await;
        if let Some(p) = producer(&stats, kind)
            && p["connected"] == false
        {
            if last.as_ref() == Some(&p["counters"]) {
                return p.clone();
            }
            last = Some(p["counters"].clone());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("producer {kind} did not settle: {last:?}");
}

fn loadgen(socket: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_lpcmon"))
        .arg("loadgen")
        .arg("--connect")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("loadgen prints one JSON line")
}

/// Invariant 1 (`docs/design.md`) under overload: a tiny producer queue, a tiny ingest channel and a tiny
/// store, with the load generator pushing as fast as it can.
#[tokio::test(flavor = "multi_thread")]
async fn loadgen_past_capacity_accounts_for_every_event_by_stage() {
    let served = serve(&["--sensor", "none", "--ingest-capacity", "1", "--retain", "100"]).await;
    let socket = served.socket.clone();
    let report = tokio::task::spawn_blocking(move || {
        loadgen(
            &socket,
            &[
                "--rate", "20000", "--count", "20000", "--size", "300", "--queue", "8",
            ],
        )
    })
    .await
    .unwrap();
    let p = settled_producer(&served.base, "loadgen").await;
    let produced = report["produced"].as_u64().unwrap();
    let stored = p["counters"]["events"].as_u64().unwrap();
    let losses = &p["counters"]["losses"];
    eprintln!("loadgen {report}\nstored {stored}, losses {losses}");

    assert_eq!(produced, 20_000);
    assert_eq!(produced, stored + losses_sum(&p), "produced = stored + losses");
    // Each stage is accounted where it happened.
    assert_eq!(
        losses["producer_queue"], report["dropped"],
        "queue drops reported exactly"
    );
    assert!(
        report["dropped"].as_u64().unwrap() > 0,
        "an 8-slot queue at full speed must overflow"
    );
    assert!(
        losses["server_ingest"].as_u64().unwrap() > 0,
        "a 1-slot ingest channel must overflow"
    );
    assert_eq!(report["unreported"], 0);
    assert_eq!(losses["transport"], 0);
    assert_eq!(losses["reassembly"], 0);
    // The store is tiny, yet every stored event counted: eviction is not loss.
    let page = get_json(&format!("{}/events?limit=1000", served.base)).await;
    assert!(page["events"].as_array().unwrap().len() <= 100);
    // Losses are events too, naming their producer (invariant 6).
    let loss_events = get_json(&format!("{}/events?kind=loss&limit=1000", served.base)).await;
    for e in loss_events["events"].as_array().unwrap() {
        assert_eq!(e["producer"]["kind"], "loadgen");
        assert!(e["loss"]["count"].as_u64().unwrap() > 0);
    }
}

/// Fragmentation end to end: a 608-byte port limit (legacy LPC on x64) and 3000-byte events.
#[tokio::test(flavor = "multi_thread")]
async fn events_larger_than_the_port_limit_arrive_in_fragments() {
    let served = serve(&["--sensor", "none", "--max-message", "608"]).await;
    let socket = served.socket.clone();
    let report = tokio::task::spawn_blocking(move || {
        loadgen(
            &socket,
            &[
                "--rate",
                "2000",
                "--count",
                "300",
                "--size",
                "3000",
                "--max-message",
                "608",
            ],
        )
    })
    .await
    .unwrap();
    let p = settled_producer(&served.base, "loadgen").await;
    assert_eq!(report["produced"], 300);
    assert_eq!(p["counters"]["events"], 300, "{p}");
    let page = get_json(&format!("{}/events?kind=process.exec&limit=1", served.base)).await;
    let e = &page["events"][0];
    assert_eq!(e["transport"]["fragments"], 3000usize.div_ceil(608 - 24));
    assert_eq!(e["transport"]["bytes"], 3000);
    assert_eq!(
        e["process"]["command_line"].as_str().unwrap().len(),
        3000 - 48 - 7
    );
}

/// The same wiring as the binary, in-process, so a test can widen the socket's modes and reach
/// the `SO_PEERCRED` check with a foreign uid.
struct InProcess {
    base: String,
    socket: PathBuf,
    port: Option<UnixPortServer>,
    _dir: tempfile::TempDir,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(p) = self.port.take() {
            p.shutdown();
        }
    }
}

async fn in_process() -> InProcess {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("port/events.sock");
    let state = AppState::new(ApiConfig::default());
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    lpcmon_api::spawn_ingest(state.clone(), rx);
    let dispatcher = Arc::new(Dispatcher::new(ServerConfig::default(), tx));
    // Open to every user at the file level, so only SO_PEERCRED stands in the way.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = UnixPortConfig {
        socket_mode: 0o666,
        dir_mode: 0o755,
        ..UnixPortConfig::new(&socket)
    };
    let port = UnixPortServer::start(config, dispatcher).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(lpcmon_api::serve(listener, state, std::future::pending()));
    wait_healthy(&base).await;
    InProcess {
        base,
        socket,
        port: Some(port),
        _dir: dir,
    }
}

fn hello(min_version: u8, max_version: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let len = Hello {
        min_version,
        max_version,
        kind: ProducerKind::Loadgen,
        instance: [7; 16],
        max_message: 4096,
        next_seq: 1,
        os_build: 0,
        os: "test",
    }
    .encode(&mut buf)
    .unwrap();
    buf.truncate(len);
    buf
}

/// Sends one raw first datagram and returns the server's reply, if any.
fn raw_first_datagram(socket: &Path, data: &[u8]) -> Option<Vec<u8>> {
    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(socket).unwrap()).unwrap();
    socket::send(fd.as_raw_fd(), data, MsgFlags::empty()).unwrap();
    socket::setsockopt(
        &fd,
        socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(5, 0),
    )
    .unwrap();
    let mut reply = [0u8; 256];
    match socket::recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty()) {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(reply[..n].to_vec()),
    }
}

fn refusal(reply: &[u8]) -> RefuseReason {
    match Message::decode(reply, reply.len()) {
        Ok(Message::HelloReply(HelloReply::Refuse { reason, .. })) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthorised_peers_are_refused_and_counted_while_others_keep_flowing() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to connect as another uid");
        return;
    }
    let server = in_process().await;
    let socket = server.socket.clone();
    // A legitimate producer runs throughout.
    let good = std::thread::spawn(move || {
        use lpcmon_sensor::loadgen::{LoadgenConfig, run};
        use lpcmon_sensor::runtime::ProducerConfig;
        run(&LoadgenConfig {
            producer: ProducerConfig::new(&socket, ProducerKind::Loadgen),
            rate: 2000,
            count: 2000,
            size: 200,
        })
        .unwrap()
    });

    // 1. Another uid: this thread alone drops to nobody (raw setresuid changes one thread's
    //    credentials on Linux), then connects; SO_PEERCRED carries its uid.
    let socket = server.socket.clone();
    let foreign = std::thread::spawn(move || {
        // SAFETY: a raw syscall with plain integer arguments; it only changes this thread's ids.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0, "setresuid");
        UnixPortConnection::connect(&socket, &hello(1, 1), Duration::from_secs(5))
    });
    let result = foreign.join().unwrap();
    assert!(
        matches!(
            result,
            Err(PortError::Refused {
                reason: "unauthorised",
                ..
            })
        ),
        "a foreign uid must be turned away, and told why: {:?}",
        result.err()
    );

    // 2. Garbage instead of a Hello.
    let reply = raw_first_datagram(&server.socket, b"GET / HTTP/1.1\r\n\r\n").expect("a refusal");
    assert_eq!(refusal(&reply), RefuseReason::Malformed);

    // 3. A Hello from a future version.
    let reply = raw_first_datagram(&server.socket, &hello(7, 9)).expect("a refusal");
    assert_eq!(refusal(&reply), RefuseReason::UnsupportedVersion);
    let err = UnixPortConnection::connect(&server.socket, &hello(7, 9), Duration::from_secs(5)).err();
    assert!(
        matches!(
            err,
            Some(PortError::Refused {
                reason: "unsupported_version",
                ..
            })
        ),
        "{err:?}"
    );

    let report = tokio::task::spawn_blocking(move || good.join().unwrap())
        .await
        .unwrap();
    let p = settled_producer(&server.base, "loadgen").await;
    assert_eq!(
        p["counters"]["events"].as_u64().unwrap() + losses_sum(&p),
        report.produced
    );
    assert_eq!(report.produced, 2000);
    let stats = get_json(&format!("{}/stats", server.base)).await;
    let refused = &stats["refused_connections"];
    assert_eq!(refused["unauthorised"], 1, "{stats}");
    assert_eq!(refused["malformed_hello"], 1, "{stats}");
    assert_eq!(refused["unsupported_version"], 2, "{stats}");
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lpcmon_refused_connections_total{reason=\"unsupported_version\"} 2"),
        "{metrics}"
    );
}

/// The quick start, as a user meets it: real kernel events, REST and SSE.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_exec_appears_in_rest_and_on_the_stream() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: the proc connector needs root here");
        return;
    }
    let served = serve(&["--sensor", "proc-connector"]).await;
    // Wait for the sensor to connect, so the exec below is seen.
    let deadline = Instant::now() + Duration::from_secs(20);
    while producer(&get_json(&format!("{}/stats", served.base)).await, "linux-sensor").is_none() {
        assert!(Instant::now() < deadline, "the sensor never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = reqwest::get(format!("{}/events/stream?kind=process.exec", served.base))
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");

    // Every exec must arrive. Its path is read from /proc before the process exits, which a
    // sensor on a loaded 2-core machine can miss for a process as short as /bin/true; then the
    // event must say so (`enrich_failed`), and within a few runs one must carry the path.
    let mut enriched = false;
    let mut needle = String::new();
    let mut started = Instant::now();
    let mut rest_seen = Duration::ZERO;
    for _ in 0..5 {
        started = Instant::now();
        let child = Command::new("/bin/true").spawn().unwrap().id();
        needle = format!("\"pid\":{child},");
        let event = loop {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "exec of /bin/true never appeared"
            );
            let page = get_json(&format!("{}/events?kind=process.exec&pid={child}", served.base)).await;
            if let Some(e) = page["events"].as_array().unwrap().first() {
                break e.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        rest_seen = started.elapsed();
        match event["process"]["executable"].as_str() {
            Some(exe) => {
                assert!(exe.ends_with("/true"), "{event}");
                enriched = true;
                break;
            }
            None => assert!(
                event["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "enrich_failed")),
                "an exec without its path must be flagged: {event}"
            ),
        }
    }
    assert!(enriched, "five runs of /bin/true and none kept its executable");
    let mut text = String::new();
    let stream_seen = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("the stream stalled")
            .unwrap()
            .expect("the stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
        if text.contains(&needle) {
            break started.elapsed();
        }
    };
    assert!(text.contains("event: process.exec"));
    eprintln!("/bin/true exec: in /events after {rest_seen:?}, on the stream after {stream_seen:?}");
}
