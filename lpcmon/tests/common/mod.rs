//! Helpers the test binaries share (each `tests/*.rs` is its own crate and uses a part).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// A loopback port nobody listens on at the moment of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `serve --sensor none --listen 127.0.0.1:PORT --port SOCKET`: the server a test feeds itself.
pub fn serve_args<'a>(cmd: &'a mut Command, http_port: u16, socket: &Path) -> &'a mut Command {
    cmd.args([
        "serve",
        // Tests never write to the machine's real store (/var/lib/lpcmon as root).
        "--store",
        "memory",
        "--sensor",
        "none",
        "--listen",
        &format!("127.0.0.1:{http_port}"),
        "--port",
    ])
    .arg(socket)
}

/// Removes what lpcmon reads from the caller's environment (LPCMON_*, RUST_LOG, backtrace
/// switches), so a developer's shell cannot change a test's outcome.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LPCMON_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
}
