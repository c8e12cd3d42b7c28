//! The lock file that keeps two lpcmon servers off one database.
//!
//! SQLite's own locks serialise writers but would let a second server start and then fight the
//! first for every commit. An advisory lock on `PATH.lock`, held for the server's life, makes the
//! second one refuse at start instead. Readers (`lpcmon export`) do not take it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::OpenError;

/// Holds the lock until dropped (the OS also releases it when the process dies, even by kill -9).
#[derive(Debug)]
pub struct LockFile {
    _file: File,
}

pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

pub fn acquire(db: &Path) -> Result<LockFile, OpenError> {
    let path = lock_path(db);
    let io = |source| OpenError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(OpenError::Locked {
                path: db.to_owned(),
                lock: path.clone(),
                holder: if holder.is_empty() {
                    String::new()
                } else {
                    format!(", held by pid {holder}")
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    // Who holds it, for the message above; the lock, not this text, is what counts.
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(LockFile { _file: file })
}
