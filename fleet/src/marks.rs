//! The central server's high-water marks: per origin server instance, the highest origin id
//! stored. Origin ids only grow, so anything at or below the mark is a redelivery.
//!
//! The marks must be exactly as durable as the store they guard: kept with an in-memory store
//! they are in memory too ([`MemoryMarks`]), and an empty set of marks makes the subscriber
//! read the stream from its start again. [`FileMarks`] keeps them in a small JSON file, for a
//! store that outlives the process.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

pub trait Marks: Send + 'static {
    /// The highest origin id stored for `server_instance`, 0 if none.
    fn get(&self, server_instance: &str) -> u64;
    /// Whether nothing has been stored yet (the subscriber then reads the stream from its start).
    fn is_empty(&self) -> bool;
    /// Raises marks after a batch is stored; durable before it returns.
    fn advance(&mut self, marks: &BTreeMap<String, u64>) -> std::io::Result<()>;
}

#[derive(Debug, Default)]
pub struct MemoryMarks(BTreeMap<String, u64>);

impl Marks for MemoryMarks {
    fn get(&self, server_instance: &str) -> u64 {
        self.0.get(server_instance).copied().unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn advance(&mut self, marks: &BTreeMap<String, u64>) -> std::io::Result<()> {
        for (instance, id) in marks {
            let mark = self.0.entry(instance.clone()).or_default();
            *mark = (*mark).max(*id);
        }
        Ok(())
    }
}

/// Marks in a JSON file, replaced atomically (written beside it, synced, renamed).
#[derive(Debug)]
pub struct FileMarks {
    path: PathBuf,
    marks: MemoryMarks,
}

impl FileMarks {
    /// Loads the file, or starts empty if it does not exist.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        let marks = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a marks file: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(FileMarks {
            path,
            marks: MemoryMarks(marks),
        })
    }
}

impl Marks for FileMarks {
    fn get(&self, server_instance: &str) -> u64 {
        self.marks.get(server_instance)
    }

    fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    fn advance(&mut self, marks: &BTreeMap<String, u64>) -> std::io::Result<()> {
        self.marks.advance(marks)?;
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(&self.marks.0)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_marks_only_rise_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("marks.json");
        let mut m = FileMarks::open(&path).unwrap();
        assert!(m.is_empty());
        m.advance(&BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 2)]))
            .unwrap();
        m.advance(&BTreeMap::from([("a".to_owned(), 3)])).unwrap();
        let m = FileMarks::open(&path).unwrap();
        assert_eq!((m.get("a"), m.get("b"), m.get("c")), (5, 2, 0));
        assert!(!m.is_empty());
        std::fs::write(&path, b"nope").unwrap();
        assert!(
            FileMarks::open(&path)
                .unwrap_err()
                .to_string()
                .contains("not a marks file")
        );
    }
}
