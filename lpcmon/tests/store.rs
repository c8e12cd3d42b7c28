//! The durable store on real parts: the `lpcmon` binary as a child process, real SQLite files,
//! a real Unix SEQPACKET port with the real load generator, real HTTP and SSE on loopback, and
//! (as root) a real full file system on a small tmpfs.

#![cfg(target_os = "linux")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `lpcmon serve --store FILE` child process, killed when dropped.
struct Server {
    child: Child,
    base: String,
    stderr: PathBuf,
}

impl Server {
    fn spawn(db: &Path, socket: &Path, http: u16, extra: &[&str]) -> Server {
        // Beside the socket's directory: the database's may be a deliberately full tmpfs.
        let stderr = socket.with_file_name(format!("lpcmon-{}.log", unique()));
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lpcmon"))
            .args([
                "serve",
                "--sensor",
                "none",
                "--listen",
                &format!("127.0.0.1:{http}"),
            ])
            .arg("--port")
            .arg(socket)
            .arg("--store")
            .arg(db)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start lpcmon");
        Server {
            child,
            base: format!("http://127.0.0.1:{http}"),
            stderr,
        }
    }

    async fn start(db: &Path, socket: &Path, http: u16, extra: &[&str]) -> Server {
        let mut server = Server::spawn(db, socket, http, extra);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("{}/healthz", server.base)).await
                && r.status().is_success()
            {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("lpcmon exited with {status}: {}", server.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("lpcmon did not become healthy: {}", server.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "lpcmon exited with {status}: {}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lpcmon did not stop on SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn get_json(url: &str) -> Value {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn spawn_loadgen(socket: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lpcmon"))
        .arg("loadgen")
        .arg("--connect")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run loadgen")
}

/// Waits (bounded) for the load generator and returns its JSON report.
fn loadgen_report(child: Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the load generator did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "loadgen failed");
    serde_json::from_slice(&out.stdout).expect("loadgen prints one JSON line")
}

fn losses_sum(producer: &Value) -> u64 {
    producer["counters"]["losses"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

/// The loadgen producer's `/stats` entry once it is disconnected and its counters stop moving.
async fn settled_loadgen(base: &str) -> Value {
    settled_new_loadgen(base, &[]).await
}

async fn wait_for_events(base: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let stats = get_json(&format!("{base}/stats")).await;
        if stats["events_by_kind"]["process.exec"].as_u64().unwrap_or(0) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {at_least} events arrived");
}

/// One SSE message: its id, event name and data.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

/// Reads SSE messages until the stream ends, `until` says stop, or `limit` passes.
async fn read_sse(
    url: String,
    last_event_id: Option<u64>,
    limit: Duration,
    mut until: impl FnMut(&Sse) -> bool + Send,
) -> Vec<Sse> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let mut out = Vec::new();
    let Ok(response) = request.send().await else {
        return out;
    };
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            _ => return out,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut msg = Sse {
                id: None,
                event: None,
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    msg.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    msg.event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    msg.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if msg.data.is_empty() && msg.id.is_none() {
                continue; // keep-alive comment
            }
            let stop = until(&msg);
            out.push(msg);
            if stop {
                return out;
            }
        }
    }
}

fn open_db(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    db: PathBuf,
    socket: PathBuf,
    http: u16,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    Setup {
        db: dir.path().join("state/events.db"),
        socket: dir.path().join("run/events.sock"),
        http: free_port(),
        dir,
    }
}

/// `kill -9` of the server mid-load, a restart, and the producer reconnecting: every event the
/// load generator produced is stored or counted lost, no id is reused, and an SSE client
/// resuming from before the crash is told exactly which ids the crash took.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_load_keeps_ids_and_exact_accounting() {
    let s = setup();
    let mut server = Server::start(&s.db, &s.socket, s.http, &[]).await;
    let live = tokio::spawn(read_sse(
        format!("{}/events/stream", server.base),
        None,
        Duration::from_secs(60),
        |_| false,
    ));
    // The load must outlast the kill: the accounting is exact for a producer that reconnects,
    // and a loadgen that had sent everything and exited before the kill never does (under load
    // the debug server can be seconds behind what the loadgen sent). 10 s of sending against a
    // kill after 8,000 stored events.
    let mut load = spawn_loadgen(
        &s.socket,
        &["--rate", "10000", "--count", "100000", "--queue", "65536"],
    );
    wait_for_events(&server.base, 8000).await;
    server.kill_9();
    assert!(
        load.try_wait().unwrap().is_none(),
        "the loadgen finished before the kill, so it cannot reconnect: the test proves nothing"
    );
    let seen: Vec<Sse> = live
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.event.as_deref() != Some("gap") && m.id.is_some())
        .collect();
    let last_seen = seen.last().and_then(|m| m.id).expect("the stream carried events");

    let server = Server::start(&s.db, &s.socket, s.http, &[]).await;
    let report = loadgen_report(load);
    let produced = report["produced"].as_u64().unwrap();
    let p = settled_loadgen(&server.base).await;
    let events = p["counters"]["events"].as_u64().unwrap();
    assert_eq!(
        events + losses_sum(&p),
        produced,
        "produced = stored + losses across kill -9: {p}\n{report}"
    );
    assert!(
        p["counters"]["losses"]["transport"].as_u64().unwrap() > 0,
        "what the crash took shows as a gap: {p}"
    );

    // The database agrees with the counters: each counted event is a row.
    let conn = open_db(&s.db);
    let instance = p["instance"].as_str().unwrap();
    let rows: u64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'process.exec' AND producer = ?1",
            [instance],
            |r| r.get::<_, i64>(0).map(|v| v as u64),
        )
        .unwrap();
    assert_eq!(rows, events);
    let (first, last): (u64, u64) = conn
        .query_row(
            "SELECT first, last FROM id_gaps WHERE reason = 'restart'",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap();

    // No id a client saw names a different event: it is the same event, or gone in the gap.
    for m in seen.iter().rev().take(300).chain(seen.iter().take(300)) {
        let id = m.id.unwrap();
        let (status, body) = get_text(&format!("{}/events/{id}", server.base)).await;
        if status == 200 {
            assert_eq!(body, m.data, "id {id} names the same event after the restart");
        } else {
            assert_eq!(status, 404);
            assert!(
                (first..=last).contains(&id),
                "id {id} is missing but not in the restart gap {first}..={last}"
            );
        }
    }

    // A client resuming from the last id it saw gets what was committed after it, then the gap.
    let resumed = read_sse(
        format!("{}/events/stream", server.base),
        Some(last_seen),
        Duration::from_secs(30),
        |m| m.event.as_deref() == Some("gap"),
    )
    .await;
    let gap = resumed.last().expect("a gap after resuming");
    assert_eq!(gap.event.as_deref(), Some("gap"), "{resumed:?}");
    let data: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(data["reason"], "restart");
    assert_eq!(data["missed"].as_u64().unwrap(), last - last_seen.max(first - 1));
    assert_eq!(gap.id, Some(last));
    let replayed: Vec<u64> = resumed[..resumed.len() - 1].iter().filter_map(|m| m.id).collect();
    assert_eq!(replayed, (last_seen + 1..first).collect::<Vec<_>>());
    // And then the live part of the new run continues after the gap.
    let after = read_sse(
        format!("{}/events/stream", server.base),
        Some(last),
        Duration::from_secs(10),
        |_| true,
    )
    .await;
    assert_eq!(after.first().and_then(|m| m.id), Some(last + 1));
    drop(s.dir);
}

/// SIGTERM mid-load flushes everything and loses nothing: after the restart nothing the server
/// received is missing, the event whose send failed as the port closed is delivered to the
/// restarted server (not counted as `producer_send` loss), and the accounting is exact.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_load_loses_nothing() {
    let s = setup();
    let mut server = Server::start(&s.db, &s.socket, s.http, &[]).await;
    let load = spawn_loadgen(
        &s.socket,
        &["--rate", "4000", "--count", "16000", "--queue", "65536"],
    );
    wait_for_events(&server.base, 3000).await;
    server.terminate();
    let log = server.log();
    assert!(log.contains("store closed"), "{log}");
    let conn = open_db(&s.db);
    let (last_id, reserved): (u64, u64) = conn
        .query_row(
            "SELECT (SELECT value FROM meta WHERE key = 'last_id'), \
                    (SELECT value FROM meta WHERE key = 'reserved_until')",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap();
    assert_eq!(reserved, last_id, "a graceful stop gives back the id reservation");
    drop(conn);

    let server = Server::start(&s.db, &s.socket, s.http, &[]).await;
    let report = loadgen_report(load);
    let p = settled_loadgen(&server.base).await;
    let produced = report["produced"].as_u64().unwrap();
    assert_eq!(
        p["counters"]["events"].as_u64().unwrap() + losses_sum(&p),
        produced,
        "{p}\n{report}"
    );
    for stage in [
        "producer_send",
        "transport",
        "reassembly",
        "server_ingest",
        "store",
    ] {
        assert_eq!(
            p["counters"]["losses"][stage], 0,
            "{stage} loss across SIGTERM: {p}"
        );
    }
    assert_eq!(
        losses_sum(&p),
        0,
        "no loss of any kind across SIGTERM: {p}\n{report}"
    );
    assert!(
        !server.log().contains("restart` gap"),
        "no crash gap after a clean stop"
    );
    let conn = open_db(&s.db);
    let gaps: u64 = conn
        .query_row("SELECT count(*) FROM id_gaps", [], |r| {
            r.get::<_, i64>(0).map(|v| v as u64)
        })
        .unwrap();
    assert_eq!(gaps, 0);
    // Ids continue where the first run stopped, without a hole.
    let next: u64 = conn
        .query_row(
            "SELECT min(id) FROM events WHERE id > ?1",
            [last_id as i64],
            |r| r.get::<_, i64>(0).map(|v| v as u64),
        )
        .unwrap();
    assert_eq!(next, last_id + 1);
}

fn refusal(db: &Path, socket: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lpcmon"))
        .args([
            "serve",
            "--sensor",
            "none",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--port")
        .arg(socket)
        .arg("--store")
        .arg(db)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run lpcmon");
    assert!(!out.status.success(), "lpcmon accepted {}", db.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A corrupt or foreign file, or one another lpcmon holds, is refused with the way out, and
/// left as it was.
#[tokio::test(flavor = "multi_thread")]
async fn unusable_files_are_refused_with_the_way_out() {
    let s = setup();
    std::fs::create_dir_all(s.db.parent().unwrap()).unwrap();
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&s.db, &garbage).unwrap();
    let m = refusal(&s.db, &s.socket);
    assert!(m.contains(&s.db.display().to_string()), "{m}");
    assert!(m.contains("--store memory") && m.contains("mv "), "{m}");
    assert_eq!(
        std::fs::read(&s.db).unwrap(),
        garbage,
        "the file is left as it was"
    );

    // A real database with its pages overwritten in the middle.
    std::fs::remove_file(&s.db).unwrap();
    let mut server = Server::start(&s.db, &s.socket, s.http, &[]).await;
    let load = spawn_loadgen(&s.socket, &["--rate", "0", "--count", "5000"]);
    loadgen_report(load);
    let m = refusal(&s.db, &s.dir.path().join("other.sock"));
    assert!(m.contains("in use by another lpcmon"), "{m}");
    server.terminate();
    let mut bytes = std::fs::read(&s.db).unwrap();
    let len = bytes.len();
    assert!(len > 64 * 1024, "the database has pages to damage");
    bytes[8192..len - 8192].fill(0xa5);
    std::fs::write(&s.db, &bytes).unwrap();
    let m = refusal(&s.db, &s.socket);
    assert!(m.contains("corrupt") && m.contains("--store memory"), "{m}");
    assert_eq!(std::fs::read(&s.db).unwrap(), bytes);
}

/// Pages that span the database and the in-memory tail are the pages memory alone served.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_spanning_the_database_and_the_tail_equals_the_memory_page() {
    let s = setup();
    let server = Server::start(&s.db, &s.socket, s.http, &["--tail-events", "200"]).await;
    let report = loadgen_report(spawn_loadgen(&s.socket, &["--rate", "0", "--count", "180"]));
    assert_eq!(report["produced"], 180);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = get_json(&format!("{}/stats", server.base)).await;
    assert_eq!(
        stats["store"]["oldest_id"], 1,
        "everything is still in memory: {stats}"
    );
    let queries = [
        "after=50&limit=100",
        "after=40&limit=100&kind=process.exec",
        "after=0&limit=200&kind=producer.connect,producer.disconnect,loss",
        "after=30&limit=120&q=XXXX",
        "after=60&limit=80&producer=loadgen",
    ];
    let mut from_memory = Vec::new();
    for q in queries {
        from_memory.push(get_text(&format!("{}/events?{q}", server.base)).await.1);
    }
    let one_from_memory = get_text(&format!("{}/events/70", server.base)).await.1;

    // More events push the first ones out of the tail; the database still has them.
    loadgen_report(spawn_loadgen(&s.socket, &["--rate", "0", "--count", "100"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = get_json(&format!("{}/stats", server.base)).await;
    let tail_oldest = stats["store"]["oldest_id"].as_u64().unwrap();
    assert!(
        (60..=140).contains(&tail_oldest),
        "the tail now starts mid-page: {stats}"
    );
    assert_eq!(stats["store"]["durable"]["oldest_id"], 1);
    for (q, memory) in queries.iter().zip(&from_memory) {
        let spanning = get_text(&format!("{}/events?{q}", server.base)).await.1;
        let a: Value = serde_json::from_str(memory).unwrap();
        let b: Value = serde_json::from_str(&spanning).unwrap();
        let (a, b) = (a["events"].as_array().unwrap(), b["events"].as_array().unwrap());
        assert!(!a.is_empty(), "{q} matches something");
        // A page memory filled is the same page now; one it did not fill has grown since,
        // by the second run's events only.
        assert_eq!(&b[..a.len()], &a[..], "{q}");
        let first = a[0]["id"].as_u64().unwrap();
        let last = b.last().unwrap()["id"].as_u64().unwrap();
        assert!(
            first < tail_oldest && last >= tail_oldest,
            "{q} spans the two: {first}..{last}, tail from {tail_oldest}"
        );
    }
    assert_eq!(
        get_text(&format!("{}/events/70", server.base)).await.1,
        one_from_memory
    );
    // The newest page with a filter that reaches back into the database.
    let newest: Value = get_json(&format!("{}/events?kind=producer.connect", server.base)).await;
    let ids: Vec<u64> = newest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{newest}");
    assert!(
        ids[0] < tail_oldest && ids[1] > tail_oldest,
        "{ids:?} spans {tail_oldest}"
    );
}

/// A 16 MiB tmpfs under the test's directory, unmounted when dropped; `None` (the test is
/// skipped, and says so) without root or where mounting fails.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(s: &Setup, test: &str) -> Option<SmallTmpfs> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED {test}: mounting a tmpfs needs root");
            return None;
        }
        let mount = s.dir.path().join("small");
        std::fs::create_dir_all(&mount).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "lpcmon-test"])
            .arg(&mount)
            .status()
            .expect("run mount");
        if !status.success() {
            eprintln!("SKIPPED {test}: cannot mount a tmpfs here");
            return None;
        }
        Some(SmallTmpfs(mount))
    }

    /// Fills the file system to its last page with a file `filler`, and returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stderr(Stdio::null())
            .status();
        filler
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk: the events that cannot be written are counted as `store` loss, the tail keeps
/// serving, a notice says why, and writing resumes by itself once space is freed. Needs root to
/// mount a small tmpfs.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_counted_and_writing_recovers() {
    let s = setup();
    let Some(mount) = SmallTmpfs::mount(&s, "a_full_disk_is_counted_and_writing_recovers") else {
        return;
    };
    let db = mount.0.join("events.db");
    let server = Server::start(&db, &s.socket, s.http, &[]).await;
    let filler = mount.fill();
    let first = loadgen_report(spawn_loadgen(&s.socket, &["--rate", "0", "--count", "20000"]));
    let p = settled_loadgen(&server.base).await;
    let stats = get_json(&format!("{}/stats", server.base)).await;
    let lost = p["counters"]["losses"]["store"].as_u64().unwrap();
    assert!(lost > 0, "events that could not be written are counted: {stats}");
    assert_eq!(stats["losses_by_stage"]["store"].as_u64().unwrap(), lost);
    assert_eq!(
        p["counters"]["events"].as_u64().unwrap() + losses_sum(&p),
        first["produced"].as_u64().unwrap(),
        "produced = stored + losses, the store stage included: {p}"
    );
    let notices = stats["notices"].to_string();
    assert!(
        notices.contains("disk is full") || notices.contains("cannot write"),
        "{stats}"
    );
    assert!(stats["store"]["durable"]["error"].is_string());
    // The tail keeps serving what could not be written.
    let newest = stats["store"]["newest_id"].as_u64().unwrap();
    let (code, _) = get_text(&format!("{}/events/{newest}", server.base)).await;
    assert_eq!(code, 200);

    std::fs::remove_file(&filler).unwrap();
    let second = loadgen_report(spawn_loadgen(&s.socket, &["--rate", "2000", "--count", "2000"]));
    assert_eq!(second["produced"], 2000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = get_json(&format!("{}/stats", server.base)).await;
        if stats["store"]["durable"]["error"].is_null()
            && stats["store"]["durable"]["newest_id"] == stats["store"]["newest_id"]
        {
            assert!(!stats["notices"].to_string().contains("cannot write"), "{stats}");
            break;
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
            panic!("writing did not resume: {stats}\nserver log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/stats` once the database has committed everything the tail holds and no write error
/// stands.
async fn all_committed(base: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = get_json(&format!("{base}/stats")).await;
        if stats["store"]["durable"]["error"].is_null()
            && stats["store"]["durable"]["newest_id"] == stats["store"]["newest_id"]
        {
            return stats;
        }
        assert!(Instant::now() < deadline, "the store did not commit: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The load generator's `/stats` entry, of an instance not in `known`, once it is
/// disconnected and its counters stop moving.
async fn settled_new_loadgen(base: &str, known: &[String]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<Value> = None;
    while Instant::now() < deadline {
        let stats = get_json(&format!("{base}/stats")).await;
        let p = stats["producers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["kind"] == "loadgen"
                    && p["connected"] == false
                    && !known.iter().any(|k| p["instance"] == **k)
            })
            .cloned();
        if let Some(p) = p {
            if last.as_ref() == Some(&p["counters"]) {
                return p;
            }
            last = Some(p["counters"].clone());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    panic!("the load generator's counters did not settle: {last:?}");
}

fn instance(p: &Value) -> String {
    p["instance"].as_str().unwrap().to_owned()
}

fn loss(p: &Value, stage: &str) -> u64 {
    p["counters"]["losses"][stage].as_u64().unwrap_or(0)
}

/// Asks `/healthz` and a page of `/events` every 100 ms until `stop`; returns how many rounds
/// were made and what failed (a status other than 200, or no answer within 5 s).
async fn probe(base: String, stop: Arc<AtomicBool>) -> (u32, Vec<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut rounds, mut failures) = (0, Vec::new());
    while !stop.load(Ordering::Acquire) {
        for path in ["/healthz", "/events?limit=20"] {
            match client.get(format!("{base}{path}")).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => failures.push(format!("{path}: {}", r.status())),
                Err(e) => failures.push(format!("{path}: {e}")),
            }
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (rounds, failures)
}

/// A disk full to the last page for longer than the reserved ids last: even the commit that
/// only moves the reservation on fails, so ingest runs out of ids. It does not wait for the
/// writer (that would fill its channel and lose events as `server_ingest`): what arrives is
/// counted as `store` loss without ids, a `loss` record says so once writing works again, the
/// server answers throughout, and afterwards events are stored with fresh ids. Needs root to
/// mount a small tmpfs.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_disk_full_loses_nothing_uncounted() {
    const TEST: &str = "a_long_disk_full_loses_nothing_uncounted";
    // Clearly more than the ids reserved ahead, at a rate a debug build ingests without
    // `server_ingest` loss beside the other tests of this file on two busy cores (at 10,000
    // a second it sometimes cannot, disk full or not).
    const OUTAGE_EVENTS: u64 = 80_000;
    const OUTAGE_RATE: &str = "5000";
    const { assert!(OUTAGE_EVENTS > lpcmon_store::ID_BLOCK + 10_000) };
    let s = setup();
    let Some(mount) = SmallTmpfs::mount(&s, TEST) else {
        return;
    };
    let db = mount.0.join("events.db");
    let mut server = Server::start(&db, &s.socket, s.http, &[]).await;
    let base = server.base.clone();
    // Warm: the file, its write-ahead log and the reservation exist and are committed.
    loadgen_report(spawn_loadgen(&s.socket, &["--rate", "0", "--count", "1000"]));
    let warm = settled_new_loadgen(&base, &[]).await;
    let before = all_committed(&base).await;
    let newest_before = before["store"]["newest_id"].as_u64().unwrap();
    // A reader holding a snapshot (an `lpcmon export` or an `sqlite3` shell would) keeps the
    // write-ahead log from starting over, so every commit appends to it: with the file system
    // full to its last page, even the one-page commit that moves the reservation on fails.
    let reader = open_db(&db);
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let filler = mount.fill();

    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe(base.clone(), stop.clone()));
    // Loss records only: the one that reports the events dropped without ids.
    let losses = tokio::spawn(read_sse(
        format!("{base}/events/stream?kind=loss"),
        None,
        Duration::from_secs(60),
        |m| m.data.contains(r#""stage":"store""#),
    ));
    let count = OUTAGE_EVENTS.to_string();
    let socket = s.socket.clone();
    let outage = tokio::task::spawn_blocking(move || {
        loadgen_report(spawn_loadgen(
            &socket,
            &["--rate", OUTAGE_RATE, "--count", &count],
        ))
    })
    .await
    .unwrap();
    let p = settled_new_loadgen(&base, &[instance(&warm)]).await;
    let stats = get_json(&format!("{base}/stats")).await;
    let produced = outage["produced"].as_u64().unwrap();
    assert_eq!(produced, OUTAGE_EVENTS);
    let stored = p["counters"]["events"].as_u64().unwrap();
    let store_loss = loss(&p, "store");
    assert_eq!(loss(&p, "server_ingest"), 0, "ingest never waited: {p}");
    assert_eq!(
        stored + losses_sum(&p),
        produced,
        "produced = stored + losses: {p}"
    );
    let elsewhere = losses_sum(&p) - store_loss;
    assert_eq!(
        elsewhere,
        loss(&p, "producer_queue"),
        "only the store and the producer's own queue lose events: {p}"
    );
    assert_eq!(stored, 0, "nothing could be written: {p}");
    assert_eq!(stats["losses_by_stage"]["server_ingest"], 0, "{stats}");
    assert!(stats["store"]["durable"]["error"].is_string(), "{stats}");
    let log = server.log();
    assert!(
        log.contains("cannot extend its id reservation either"),
        "the disk was full to the last page: {log}"
    );
    // Ids were given only within the reservation committed before the disk filled; the rest
    // of the events came without ids.
    let newest_during = stats["store"]["newest_id"].as_u64().unwrap();
    let ids_used = newest_during - newest_before;
    assert!(
        ids_used <= lpcmon_store::ID_BLOCK && ids_used < produced - elsewhere,
        "{ids_used} ids for {produced} events"
    );
    let (code, last) = get_text(&format!("{base}/events/{newest_during}")).await;
    assert_eq!(code, 200, "the tail serves what could not be written: {last}");

    // Space returns: writing resumes by itself, and a `loss` record reports what came
    // without ids.
    std::fs::remove_file(&filler).unwrap();
    drop(reader);
    let after = all_committed(&base).await;
    assert!(!after["notices"].to_string().contains("cannot write"), "{after}");
    let sse = losses.await.unwrap();
    let report = sse
        .iter()
        .find(|m| m.data.contains(r#""stage":"store""#))
        .unwrap_or_else(|| panic!("no store loss record: {sse:?}"));
    let record: Value = serde_json::from_str(&report.data).unwrap();
    assert_eq!(record["producer"]["instance"], p["instance"], "{record}");
    let reported = record["loss"]["count"].as_u64().unwrap();
    // Every id given during the outage named a record that could not be written: the
    // producer's connect record and its first events. The rest came without ids.
    assert_eq!(
        reported + (ids_used - 1),
        store_loss,
        "the loss record and the ids account for the store loss: {record}"
    );
    assert_eq!(
        record["loss"]["last_seq"].as_u64().unwrap() - record["loss"]["first_seq"].as_u64().unwrap() + 1,
        reported,
        "{record}"
    );
    let record_id = report.id.unwrap();
    assert!(
        record_id > newest_during,
        "a fresh id: {record_id} after {newest_during}"
    );
    // The ids of the failed records, and then the dropped ones and the producer's dropped
    // disconnect record.
    assert_eq!(
        after["store"]["durable"]["lost"].as_u64().unwrap(),
        ids_used + reported + 1,
        "{after}"
    );
    prober_ok(&stop, prober).await;

    // New events are stored and served with fresh ids.
    let next = loadgen_report(spawn_loadgen(&s.socket, &["--rate", "4000", "--count", "2000"]));
    assert_eq!(next["produced"], 2000);
    let p3 = settled_new_loadgen(&base, &[instance(&warm), instance(&p)]).await;
    assert_eq!(p3["counters"]["events"], 2000, "{p3}");
    assert_eq!(losses_sum(&p3), 0, "{p3}");
    all_committed(&base).await;
    let file = open_db(&db);
    let (n, first, last): (i64, i64, i64) = file
        .query_row(
            "SELECT count(*), min(id), max(id) FROM events WHERE producer = ?1 AND kind = 'process.exec'",
            [instance(&p3)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(n, 2000);
    assert!(
        first as u64 > record_id && last - first + 1 == 2000,
        "{first}..{last}"
    );
    let (code, _) = get_text(&format!("{base}/events/{last}")).await;
    assert_eq!(code, 200);
    // The outage's accounting was saved with the first commit that succeeded.
    drop(file);
    server.terminate();
    let server = Server::start(&db, &s.socket, s.http, &[]).await;
    let restarted = get_json(&format!("{}/stats", server.base)).await;
    let again = restarted["producers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["instance"] == p["instance"])
        .unwrap_or_else(|| panic!("{restarted}"));
    assert_eq!(again["counters"], p["counters"], "{restarted}");
    assert_eq!(
        restarted["store"]["durable"]["lost"], after["store"]["durable"]["lost"],
        "{restarted}"
    );
}

/// Stops [`probe`] and checks that every request it made was answered.
async fn prober_ok(stop: &AtomicBool, prober: tokio::task::JoinHandle<(u32, Vec<String>)>) {
    stop.store(true, Ordering::Release);
    let (rounds, failures) = prober.await.unwrap();
    assert!(rounds > 5, "{rounds} rounds");
    assert!(failures.is_empty(), "the server did not answer: {failures:?}");
}
