//! How `lpcmon` fails: exit codes, and errors a person can read.
//!
//! A user error prints two lines, the cause and what to do about it; never a stack trace,
//! whatever `RUST_BACKTRACE` says, because a busy port is not a bug. `--debug` (or
//! `RUST_LOG=debug`) prints the whole error chain with its backtrace for the cases that are.
//!
//! Exit codes (documented in the man page, see [`EXIT_CODES`]):
//! 0 ok, 1 runtime failure, 2 usage (bad flag, value or config file), 3 could not connect.

use std::fmt;
use std::io;
use std::process::ExitCode;

/// What went wrong, as far as a calling script needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something failed while running.
    Runtime,
    /// The command line, the environment or the config file asked for something invalid.
    Usage,
    /// The server (its HTTP address or its event port) could not be reached.
    Connect,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::Runtime => 1,
            Kind::Usage => 2,
            Kind::Connect => 3,
        }
    }
}

/// The exit codes, for the man page and `--help`.
pub const EXIT_CODES: &str = "Exit status: 0 success; 1 runtime failure; \
    2 usage error (a bad flag, environment variable or config file); \
    3 could not connect (no server at the HTTP address or the event port).";

/// An error with its exit kind and a remedy: what the user can do about it.
#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    pub remedy: String,
    pub cause: anyhow::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.cause)
    }
}

impl std::error::Error for Failure {}

/// A failure built from a message, for checks that have no underlying error.
pub fn fail(kind: Kind, cause: impl fmt::Display, remedy: impl Into<String>) -> anyhow::Error {
    Failure {
        kind,
        remedy: remedy.into(),
        cause: anyhow::anyhow!("{cause}"),
    }
    .into()
}

/// Attaches an exit kind and a remedy to any error.
pub trait Advise<T> {
    fn advise(self, kind: Kind, remedy: impl Into<String>) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Advise<T> for Result<T, E> {
    fn advise(self, kind: Kind, remedy: impl Into<String>) -> anyhow::Result<T> {
        self.map_err(|e| {
            Failure {
                kind,
                remedy: remedy.into(),
                cause: e.into(),
            }
            .into()
        })
    }
}

/// Whether to show backtraces and full chains: `--debug`, or `RUST_LOG` asking for debug.
pub fn debug_requested(flag: bool) -> bool {
    flag || std::env::var("RUST_LOG").is_ok_and(|v| v.contains("debug") || v.contains("trace"))
}

/// The kind and remedy of an error: its own [`Failure`] if it has one, else a guess from the
/// I/O error at its root, else a runtime failure.
fn classify(err: &anyhow::Error) -> (Kind, String) {
    if let Some(f) = err.chain().find_map(|e| e.downcast_ref::<Failure>()) {
        return (f.kind, f.remedy.clone());
    }
    let io_kind = err
        .chain()
        .find_map(|e| e.downcast_ref::<io::Error>())
        .map(io::Error::kind);
    match io_kind {
        Some(io::ErrorKind::AddrInUse) => (
            Kind::Runtime,
            "another program is using that address: stop it, or choose another with --listen \
             (or --port for the event port)"
                .into(),
        ),
        Some(io::ErrorKind::PermissionDenied) => (
            Kind::Runtime,
            "run as a user allowed to do this (root, or with the capability it needs), or choose \
             a path or port you own"
                .into(),
        ),
        Some(io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => (
            Kind::Connect,
            "is `lpcmon serve` running? start it, or point --connect/--url at it".into(),
        ),
        _ => (
            Kind::Runtime,
            "run again with --debug for the details; if it looks like a bug, report it with that output"
                .into(),
        ),
    }
}

/// Prints `err` for a person and returns the exit code it earns.
pub fn report(err: &anyhow::Error, debug: bool) -> ExitCode {
    let (kind, remedy) = classify(err);
    if debug {
        // `{:?}` is anyhow's chain plus the backtrace it captured (RUST_LIB_BACKTRACE is set
        // when --debug is given, see main).
        eprintln!("error: {err:?}");
    } else {
        eprintln!("error: {}", one_line(err));
    }
    eprintln!("  hint: {remedy}");
    ExitCode::from(kind.code())
}

/// The error chain on one line (a [`Failure`] shows its cause's chain, not itself).
fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn advised_errors_keep_their_kind_and_remedy_under_more_context() {
        let err = Err::<(), _>(io::Error::other("boom"))
            .advise(Kind::Connect, "start the server")
            .context("status failed")
            .unwrap_err();
        assert_eq!(classify(&err), (Kind::Connect, "start the server".into()));
        assert_eq!(one_line(&err), "status failed: boom");
    }

    #[test]
    fn io_errors_at_the_root_are_classified() {
        let busy = anyhow::Error::from(io::Error::from(io::ErrorKind::AddrInUse)).context("cannot listen");
        assert_eq!(classify(&busy).0, Kind::Runtime);
        assert!(classify(&busy).1.contains("--listen"));
        let refused = anyhow::Error::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&refused).0, Kind::Connect);
        assert_eq!(classify(&anyhow::anyhow!("odd")).0, Kind::Runtime);
    }

    #[test]
    fn codes_are_distinct_and_documented() {
        let codes = [Kind::Runtime.code(), Kind::Usage.code(), Kind::Connect.code()];
        assert_eq!(codes, [1, 2, 3]);
        for code in codes {
            assert!(EXIT_CODES.contains(&format!("{code} ")), "{code}");
        }
    }
}
