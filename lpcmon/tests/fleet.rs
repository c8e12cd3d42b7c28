//! Many hosts on a real NATS JetStream (`nats-server -js`, started here on loopback with random
//! ports and temporary store directories): origin servers publish, a central server imports,
//! and the accounting holds per host across NATS node restarts, a `kill -9` of the central
//! server (mid-import, with its SQLite file) and an outage longer than an origin's retention
//! (the origin resuming from its SQLite file). Central servers always keep a real SQLite file;
//! origins use one or the in-memory store, as each test says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{clean_env, free_port};

/// Where a test server keeps its events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// `--store memory`.
    Memory,
    /// `--store DIR/NAME.db`, a real SQLite file that survives a restart.
    File,
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_tcp(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {port}");
}

/// One `nats-server -js`, alone or a node of a loopback cluster.
struct Nats {
    port: u16,
    cluster_port: u16,
    store: PathBuf,
    name: String,
    routes: Vec<u16>,
    proc: Option<Proc>,
}

impl Nats {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-n",
            &self.name,
            "-sd",
        ])
        .arg(&self.store)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args([
                "--cluster_name",
                "lpcmon-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
                "--routes",
                &routes.join(","),
            ]);
        }
        self.proc = Some(Proc(
            cmd.spawn().expect("start nats-server (apt install nats-server)"),
        ));
        wait_tcp(self.port, "nats-server");
    }

    fn stop(&mut self) {
        self.proc = None;
    }
}

/// `n` NATS servers (a cluster with routes when `n > 1`), each with its own store directory.
fn nats(dir: &Path, n: usize) -> Vec<Nats> {
    let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut nodes: Vec<Nats> = (0..n)
        .map(|i| Nats {
            port: free_port(),
            cluster_port: cluster_ports[i],
            store: dir.join(format!("nats{i}")),
            name: format!("n{i}"),
            routes: if n > 1 { cluster_ports.clone() } else { Vec::new() },
            proc: None,
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    nodes
}

fn urls(nodes: &[Nats]) -> String {
    nodes.iter().map(Nats::url).collect::<Vec<_>>().join(",")
}

/// A `lpcmon serve` with its own port socket and HTTP port; its log goes to a file.
struct Lpcmon {
    base: String,
    http: u16,
    socket: PathBuf,
    log: PathBuf,
    /// `memory` or the SQLite file.
    store: String,
    args: Vec<String>,
    proc: Option<Proc>,
}

impl Lpcmon {
    fn new(dir: &Path, name: &str, store: Store, args: &[&str]) -> Lpcmon {
        let http = free_port();
        let mut l = Lpcmon {
            base: format!("http://127.0.0.1:{http}"),
            http,
            socket: dir.join(format!("{name}.sock")),
            log: dir.join(format!("{name}.log")),
            store: match store {
                Store::Memory => "memory".into(),
                Store::File => dir.join(format!("{name}.db")).to_string_lossy().into_owned(),
            },
            args: args.iter().map(|s| s.to_string()).collect(),
            proc: None,
        };
        l.start();
        l
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpcmon"));
        clean_env(&mut cmd);
        cmd.args(["serve", "--store", &self.store, "--sensor", "none", "--listen"])
            .arg(format!("127.0.0.1:{}", self.http))
            .arg("--port")
            .arg(&self.socket)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        self.proc = Some(Proc(cmd.spawn().expect("start lpcmon")));
        wait_tcp(self.http, "lpcmon");
    }

    /// `kill -9`.
    fn kill(&mut self) {
        self.proc = None;
    }

    fn stats(&self) -> Value {
        get(&format!("{}/stats", self.base))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn get(url: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", url])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Runs `lpcmon loadgen` against a server's port to completion.
fn loadgen(socket: &Path, rate: u64, count: u64) -> std::thread::JoinHandle<()> {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpcmon"));
        clean_env(&mut cmd);
        let out = cmd
            .arg("loadgen")
            .arg("--connect")
            .arg(&socket)
            // A queue that holds a whole run: the figures measure the server, not producer drops.
            .args([
                "--rate",
                &rate.to_string(),
                "--count",
                &count.to_string(),
                "--queue",
                "131072",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run loadgen");
        assert!(
            out.status.success(),
            "loadgen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Every event of `host` the central server holds, by its `/events` pages.
fn central_events(central: &Lpcmon, host: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = get(&format!(
            "{}/events?host={host}&limit=1000&after={after}",
            central.base
        ));
        let batch = page["events"].as_array().cloned().unwrap_or_default();
        if batch.is_empty() {
            return events;
        }
        after = num(&batch.last().unwrap()["id"]);
        events.extend(batch);
    }
}

/// Waits until the origin has published everything and the central holds exactly what the
/// origin stored less its `publish` loss; then checks no duplicates and nothing missing.
fn assert_host_complete(origin: &Lpcmon, central: &Lpcmon, host: &str, deadline: Instant) -> (u64, u64) {
    let mut last = (Value::Null, Value::Null);
    while Instant::now() < deadline {
        let o = origin.stats();
        let c = central.stats();
        let stored = num(&o["store"]["stored_total"]);
        let lost = num(&o["losses_by_stage"]["publish"]);
        let published = &o["fleet"]["publish"];
        let imported = num(&c["fleet"]["hosts"][host]["events"]);
        if stored > 0
            && num(&published["lag_ids"]) == 0
            && num(&published["acked_id"]) == stored
            && imported == stored - lost
        {
            let events = central_events(central, host);
            assert_eq!(
                events.len() as u64,
                stored - lost,
                "{host}: events the central server lists"
            );
            let mut triples = BTreeSet::new();
            let mut origin_ids = BTreeSet::new();
            for e in &events {
                let o = &e["origin"];
                assert_eq!(o["host"], host);
                assert!(
                    triples.insert((
                        o["host"].to_string(),
                        o["server_instance"].to_string(),
                        num(&o["id"])
                    )),
                    "duplicate {o}"
                );
                origin_ids.insert(num(&o["id"]));
            }
            // Nothing missing: every origin id is there, except the ones counted lost.
            let missing = (1..=stored).filter(|id| !origin_ids.contains(id)).count() as u64;
            assert_eq!(
                missing, lost,
                "{host}: origin ids missing centrally vs the publish loss"
            );
            // The central server's own ids are dense and its own.
            let central_losses = num(&c["fleet"]["hosts"][host]["losses"]["publish"]);
            return (stored, central_losses);
        }
        last = (o, c);
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("{host} never complete:\norigin {}\ncentral {}", last.0, last.1);
}

#[test]
fn one_node_origin_to_central_with_host_filter_and_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = nats(dir.path(), 1);
    let origin = Lpcmon::new(
        dir.path(),
        "origin",
        Store::Memory,
        &["--publish", &urls(&nodes), "--host-name", "web-1"],
    );
    let central = Lpcmon::new(
        dir.path(),
        "central",
        Store::File,
        &["--subscribe", &urls(&nodes), "--host-name", "hub"],
    );
    loadgen(&origin.socket, 2000, 3000).join().unwrap();
    let (stored, _) = assert_host_complete(
        &origin,
        &central,
        "web-1",
        Instant::now() + Duration::from_secs(60),
    );
    assert!(stored >= 3000);
    // The central server's events are its own, dense; the host filter refuses a repeat.
    let c = central.stats();
    assert_eq!(num(&c["store"]["stored_total"]), stored);
    assert_eq!(num(&c["fleet"]["subscribe"]["refused_host_mismatch"]), 0);
    assert!(
        get(&format!("{}/events?host=nobody", central.base))["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let status = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{}/events?host=a&host=b", central.base),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "400",
        "a repeated host filter is refused"
    );
    // The origin's publish counters.
    let p = &origin.stats()["fleet"]["publish"];
    assert_eq!(p["nats_reachable"], true);
    assert!(num(&p["acks"]) >= stored);
    let metrics = Command::new("curl")
        .args(["-sf", &format!("{}/metrics", origin.base)])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(metrics.contains("lpcmon_publish_lag_ids 0"), "{metrics}");
    assert!(
        metrics.contains("lpcmon_events_lost_total{stage=\"publish\"} 0"),
        "{metrics}"
    );
    drop(nodes);
}

#[test]
fn three_node_cluster_survives_a_node_restart_and_a_killed_central() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = nats(dir.path(), 3);
    let all = urls(&nodes);
    // One origin with a file, one in memory.
    let a = Lpcmon::new(
        dir.path(),
        "a",
        Store::File,
        &["--publish", &all, "--host-name", "host-a", "--nats-replicas", "3"],
    );
    let b = Lpcmon::new(
        dir.path(),
        "b",
        Store::Memory,
        &["--publish", &all, "--host-name", "host-b", "--nats-replicas", "3"],
    );
    let mut central = Lpcmon::new(
        dir.path(),
        "central",
        Store::File,
        &["--subscribe", &all, "--host-name", "central"],
    );
    let feed_a = loadgen(&a.socket, 1000, 8000);
    let feed_b = loadgen(&b.socket, 1000, 8000);
    std::thread::sleep(Duration::from_secs(2));
    nodes[1].stop();
    std::thread::sleep(Duration::from_secs(2));
    nodes[1].start();
    std::thread::sleep(Duration::from_secs(1));
    central.kill();
    std::thread::sleep(Duration::from_millis(500));
    central.start();
    feed_a.join().unwrap();
    feed_b.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (origin, host) in [(&a, "host-a"), (&b, "host-b")] {
        let (stored, _) = assert_host_complete(origin, &central, host, deadline);
        assert!(stored >= 8000, "{host} stored {stored}");
    }
    let logs = central.log();
    assert!(!logs.contains("panicked"), "{logs}");
}

/// Waits until the origin's producer has gone (so nothing more is stored) and NATS has
/// acknowledged everything the origin stored; returns how many that is.
fn wait_published(origin: &Lpcmon, deadline: Instant) -> u64 {
    loop {
        let s = origin.stats();
        let stored = num(&s["store"]["stored_total"]);
        let p = &s["fleet"]["publish"];
        let gone = num(&s["events_by_kind"]["producer.disconnect"]) >= 1;
        if gone && num(&p["lag_ids"]) == 0 && num(&p["acked_id"]) == stored {
            return stored;
        }
        assert!(Instant::now() < deadline, "never all published: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn central_killed_mid_import_restarts_from_its_file_without_duplicates_or_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = nats(dir.path(), 1);
    let url = urls(&nodes);
    let origin = Lpcmon::new(
        dir.path(),
        "origin",
        Store::File,
        &["--publish", &url, "--host-name", "src"],
    );
    // The whole run is in the stream before the central server starts: it imports flat out.
    // (Unthrottled, the origin may count some as server_ingest loss: not this test's subject.)
    loadgen(&origin.socket, 0, 40_000).join().unwrap();
    let stored = wait_published(&origin, Instant::now() + Duration::from_secs(120));
    let mut central = Lpcmon::new(
        dir.path(),
        "central",
        Store::File,
        &["--subscribe", &url, "--host-name", "hub"],
    );
    // Twice: kill -9 as soon as the import has moved on, restart on the same file.
    let mut killed_mid_import = 0;
    let mut before = 0;
    for _ in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let imported = loop {
            let imported = num(&central.stats()["fleet"]["hosts"]["src"]["events"]);
            if imported > before {
                break imported;
            }
            assert!(Instant::now() < deadline, "the central server imports nothing");
            std::thread::sleep(Duration::from_millis(10));
        };
        central.kill();
        if imported < stored {
            killed_mid_import += 1;
        }
        central.start();
        // What was committed before the kill is counted again (the totals are committed with
        // the events); what was not is imported again.
        before = num(&central.stats()["fleet"]["hosts"]["src"]["events"]);
    }
    assert!(killed_mid_import > 0, "the import finished before any kill");
    let (complete, _) = assert_host_complete(
        &origin,
        &central,
        "src",
        Instant::now() + Duration::from_secs(120),
    );
    assert_eq!(complete, stored);
    // Once all is committed, a kill -9 restores the hosts panel's count exactly.
    std::thread::sleep(Duration::from_millis(200));
    central.kill();
    central.start();
    assert_eq!(
        num(&central.stats()["fleet"]["hosts"]["src"]["events"]),
        stored,
        "{}",
        central.log()
    );
    let log = central.log();
    assert!(
        log.contains("stopped without closing the store"),
        "the central server restarted after a crash on its file: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// Deletes a JetStream stream the way `nats stream rm` does: a request on the JetStream API
/// subject, over the plain NATS protocol (CONNECT, PUB, then PING/PONG so the server has read
/// the PUB before the connection closes).
fn delete_stream(nats: &Nats, stream: &str) {
    use std::io::{BufRead, BufReader, Write};
    let tcp = std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    write!(
        &tcp,
        "CONNECT {{\"verbose\":false}}\r\nPUB $JS.API.STREAM.DELETE.{stream} 0\r\n\r\nPING\r\n"
    )
    .unwrap();
    for _ in 0..10 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.starts_with("PONG") {
            return;
        }
        assert!(!line.starts_with("-ERR"), "{line}");
    }
    panic!("no PONG from nats-server");
}

/// The stream deleted under running servers: both log it and recover on their own, the
/// publisher makes the stream again, and a central server that had resumed after a restart
/// (at a start sequence of the old stream) reads the new stream from its start instead of
/// skipping its first messages. What the old stream held was all imported before the delete,
/// so the accounting is exact again at the end.
#[test]
fn a_stream_deleted_under_running_servers_is_made_again_and_nothing_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = nats(dir.path(), 1);
    let url = urls(&nodes);
    let origin = Lpcmon::new(
        dir.path(),
        "origin",
        Store::File,
        &["--publish", &url, "--host-name", "src"],
    );
    let mut central = Lpcmon::new(
        dir.path(),
        "central",
        Store::File,
        &["--subscribe", &url, "--host-name", "hub"],
    );
    loadgen(&origin.socket, 2000, 2000).join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (first, _) = assert_host_complete(&origin, &central, "src", deadline);
    // Restarted on its file, the central server resumes at a start sequence past 2,000.
    central.kill();
    central.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !central
        .log()
        .contains("resuming after the last acknowledged message")
    {
        assert!(Instant::now() < deadline, "{}", central.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    delete_stream(&nodes[0], "LPCMON");
    loadgen(&origin.socket, 2000, 500).join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (stored, _) = assert_host_complete(&origin, &central, "src", deadline);
    assert!(
        stored >= first + 500,
        "{stored} stored, {first} before the delete"
    );
    let (o, c) = (origin.log(), central.log());
    assert!(
        c.contains("the stream was deleted and created again"),
        "the central server says what happened: {c}"
    );
    assert!(
        o.matches("creating the NATS stream").count() >= 2,
        "the publisher made the stream again: {o}"
    );
    assert!(!o.contains("panicked") && !c.contains("panicked"), "{o}\n{c}");
}

/// A throwaway CA, and a server and a client certificate it signs, made with `openssl`.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=lpcmon test CA",
        ],
    ]
    .concat());
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        run(&[
            &["req"][..],
            &ec,
            &["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }
}

/// Mutual TLS against a real `nats-server --tlsverify`: an origin with the CA and its client
/// certificate publishes everything; one with the CA but no client certificate is refused by
/// the server, says so in `/stats` and its log, and keeps serving. No key material is logged.
#[test]
fn mutual_tls_publishes_and_a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d);
    let port = free_port();
    let _nats = Proc(
        Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(d.join("nats"))
            .args(["--tls", "--tlsverify"])
            .arg("--tlscert")
            .arg(d.join("server.pem"))
            .arg("--tlskey")
            .arg(d.join("server.key"))
            .arg("--tlscacert")
            .arg(d.join("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server"),
    );
    wait_tcp(port, "nats-server");
    let url = format!("nats://127.0.0.1:{port}");
    let path = |f: &str| d.join(f).to_string_lossy().into_owned();
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client.key"));
    let trusted = Lpcmon::new(
        d,
        "trusted",
        Store::Memory,
        &[
            "--publish",
            &url,
            "--host-name",
            "tls-ok",
            "--nats-tls-ca",
            &ca,
            "--nats-tls-cert",
            &cert,
            "--nats-tls-key",
            &key,
        ],
    );
    let anonymous = Lpcmon::new(
        d,
        "anonymous",
        Store::Memory,
        &["--publish", &url, "--host-name", "no-cert", "--nats-tls-ca", &ca],
    );
    loadgen(&trusted.socket, 2000, 300).join().unwrap();
    let stored = wait_published(&trusted, Instant::now() + Duration::from_secs(60));
    assert!(stored >= 300);
    assert_eq!(trusted.stats()["fleet"]["publish"]["nats_reachable"], true);

    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let s = anonymous.stats();
        let noticed = s["notices"].as_array().is_some_and(|n| !n.is_empty());
        if noticed && s["fleet"]["publish"]["nats_reachable"] == false {
            break s;
        }
        assert!(Instant::now() < deadline, "no notice of the refusal: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(num(&refused["fleet"]["publish"]["acks"]), 0, "{refused}");
    for server in [&trusted, &anonymous] {
        let log = server.log();
        assert!(!log.contains("PRIVATE KEY"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[test]
fn nats_down_past_retention_counts_publish_loss_exactly_and_centrally() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = nats(dir.path(), 1);
    let url = urls(&nodes);
    // The file keeps 300 events, the in-memory tail 100: after the outage the publisher
    // resumes from the file, and only what the file evicted is lost.
    let origin = Lpcmon::new(
        dir.path(),
        "origin",
        Store::File,
        &[
            "--publish",
            &url,
            "--host-name",
            "edge",
            "--retain",
            "300",
            "--tail-events",
            "100",
        ],
    );
    loadgen(&origin.socket, 2000, 200).join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while num(&origin.stats()["fleet"]["publish"]["lag_ids"]) != 0
        || num(&origin.stats()["fleet"]["publish"]["acked_id"]) == 0
    {
        assert!(
            Instant::now() < deadline,
            "never acknowledged: {}",
            origin.stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes[0].stop();
    // Far more than the store keeps while NATS is away.
    loadgen(&origin.socket, 5000, 3000).join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = origin.stats();
        if num(&s["losses_by_stage"]["publish"]) > 0 && s["fleet"]["publish"]["nats_reachable"] == false {
            assert!(
                s["notices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n.as_str().unwrap().contains("publish")),
                "{s}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no publish loss while NATS is down: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    nodes[0].start();
    let central = Lpcmon::new(
        dir.path(),
        "central",
        Store::File,
        &["--subscribe", &url, "--host-name", "hub"],
    );
    let (_, central_loss) = assert_host_complete(
        &origin,
        &central,
        "edge",
        Instant::now() + Duration::from_secs(60),
    );
    let origin_loss = num(&origin.stats()["losses_by_stage"]["publish"]);
    assert!(origin_loss > 2000, "publish loss {origin_loss}");
    assert_eq!(central_loss, origin_loss, "the publish loss is visible centrally");
    let by_stage: BTreeMap<String, u64> =
        serde_json::from_value(central.stats()["fleet"]["hosts"]["edge"]["losses"].clone()).unwrap();
    assert_eq!(by_stage.get("publish"), Some(&origin_loss));
}

/// Events per second an origin takes from an unthrottled loadgen: from the loadgen's start
/// until every produced event is accounted for (stored or counted lost) and, with
/// `--publish`, NATS has acknowledged all that was stored. Returns (stored/s, lost).
fn origin_ingest_rate(dir: &Path, name: &str, extra: &[&str], count: u64) -> (f64, u64) {
    let origin = Lpcmon::new(dir, name, Store::File, extra);
    let started = Instant::now();
    loadgen(&origin.socket, 0, count).join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = origin.stats();
        let stored = num(&s["events_by_kind"]["process.exec"]);
        let lost: u64 = s["losses_by_stage"]
            .as_object()
            .map_or(0, |m| m.values().map(num).sum());
        let publishing = !s["fleet"].is_null();
        let acked =
            !publishing || num(&s["fleet"]["publish"]["acked_id"]) >= num(&s["store"]["stored_total"]);
        if stored + lost >= count && acked {
            return (stored as f64 / started.elapsed().as_secs_f64(), lost);
        }
        assert!(Instant::now() < deadline, "origin never settled: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The figures of the README's "Many hosts" section. Prints, never asserts a speed:
/// `cargo test --release -p lpcmon --test fleet -- --ignored --nocapture fleet_figures`
#[test]
#[ignore = "a benchmark: run it on purpose, in release"]
fn fleet_figures() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let nodes = nats(dir.path(), 1);
    let url = urls(&nodes);
    let count = 50_000;
    let (off, off_lost) = origin_ingest_rate(dir.path(), "off", &["--retain", "200000"], count);
    let (on, on_lost) = origin_ingest_rate(
        dir.path(),
        "on",
        &["--retain", "200000", "--publish", &url, "--host-name", "bench"],
        count,
    );
    println!(
        "origin ingest, {count} events unthrottled: publishing off {off:.0} ev/s stored ({off_lost} counted lost), \
         on {on:.0} ev/s stored and acknowledged by NATS ({on_lost} counted lost), ratio {:.2}",
        on / off
    );

    // Latency at 5,000 events/s: origin `received` to the event's arrival on the central
    // server's SSE stream (so it includes the stream's own delivery, well under a millisecond
    // on loopback). Same machine, same clock. A nats-server of its own: on the ingest runs'
    // stream the central server would first import their backlog, and measure that.
    let lat_dir = dir.path().join("lat");
    std::fs::create_dir_all(&lat_dir).unwrap();
    let lat_nodes = nats(&lat_dir, 1);
    let url = urls(&lat_nodes);
    let origin = Lpcmon::new(
        dir.path(),
        "lat-origin",
        Store::File,
        &["--publish", &url, "--host-name", "lat"],
    );
    let central = Lpcmon::new(
        dir.path(),
        "lat-central",
        Store::File,
        &["--subscribe", &url, "--host-name", "hub"],
    );
    let mut curl = Proc(
        Command::new("curl")
            .args([
                "-sN",
                "--max-time",
                "120",
                &format!("{}/events/stream?host=lat&kind=process.exec", central.base),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = curl.0.stdout.take().unwrap();
    let n = 25_000u64;
    let reader = std::thread::spawn(move || {
        let mut latencies_us = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let now = time::OffsetDateTime::now_utc();
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let Some(received) = v["received"].as_str() else {
                continue;
            };
            let at = time::OffsetDateTime::parse(received, &time::format_description::well_known::Rfc3339)
                .unwrap();
            latencies_us.push((now - at).whole_microseconds().max(0) as u64);
            if latencies_us.len() as u64 == n {
                break;
            }
        }
        latencies_us
    });
    std::thread::sleep(Duration::from_millis(500));
    loadgen(&origin.socket, 5000, n).join().unwrap();
    let mut lat = reader.join().unwrap();
    drop(curl);
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "origin -> central latency at 5,000 events/s ({} events, one nats-server on loopback): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}
