//! Issue 9, finding 2, as it was found: with a file limit of 256, 300 idle connections took
//! `/healthz` down (both listeners hit EMFILE). Now the connection cap fits the file limit
//! and idle connections are dropped by the header-read timeout, so `/healthz` answers.
#![cfg(unix)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /healthz` on a fresh connection; the status line, or why there is none.
fn healthz(addr: &str, within: Duration) -> Result<String, String> {
    let mut tcp = TcpStream::connect_timeout(&addr.parse().unwrap(), within).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(within)).unwrap();
    write!(
        tcp,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

#[test]
fn idle_connections_beyond_the_file_limit_do_not_take_healthz_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpcmon"));
    cmd.args([
        "serve",
        "--store",
        "memory",
        "--sensor",
        "none",
        "--header-timeout",
        "1s",
        "--listen",
        &addr,
        "--port",
    ])
    .arg(dir.path().join("port/events.sock"))
    .env_remove("LPCMON_TOKEN")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches only the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _server = Server(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthz(&addr, Duration::from_secs(1)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 300 connections that never send a byte: more than the process has descriptors for.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).ok())
        .collect();
    assert!(idle.len() >= 250, "only {} connections opened", idle.len());
    // Beyond the cap they wait in the backlog; the header-read timeout frees slots within
    // about a second, so /healthz is answered well within the wait.
    let status = healthz(&addr, Duration::from_secs(10));
    assert_eq!(
        status.as_deref(),
        Ok("HTTP/1.1 200 OK"),
        "with {} idle connections",
        idle.len()
    );
    drop(idle);
}
