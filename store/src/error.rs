//! Errors: why a file cannot be used (with the way out), and why a read failed.

use std::path::PathBuf;

/// Why [`Database::open`](crate::Database::open) refused a file. Every message names the file
/// and what the user can do; nothing is ever deleted to get past one of these.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "{path} is not an lpcmon database ({detail}). lpcmon never overwrites it: move it aside \
         (`mv {path} {path}.bad`) to start a new history, choose another file with --store PATH, \
         or run with --store memory"
    )]
    Foreign { path: PathBuf, detail: String },
    #[error(
        "{path} is corrupt ({detail}). lpcmon never repairs or overwrites history by itself: move \
         it aside (`mv {path} {path}.bad`, then try `sqlite3 {path}.bad .recover`) to start a new \
         history, or run with --store memory"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{path} was written by a newer lpcmon (schema version {found}; this lpcmon knows versions \
         up to {known}). Upgrade lpcmon, or run this one with another --store PATH or --store memory"
    )]
    Newer { path: PathBuf, found: i64, known: i64 },
    #[error(
        "{path} is in use by another lpcmon (lock file {lock}{holder}). Stop that server first, \
         give this one another --store PATH, or run with --store memory"
    )]
    Locked {
        path: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("cannot open {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot open {path}: {detail}")]
    Sqlite { path: PathBuf, detail: String },
}

/// A failed read or write of an open database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("SQLite value: {0}")]
    Value(#[from] rusqlite::types::FromSqlError),
    #[error("the database is damaged: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
