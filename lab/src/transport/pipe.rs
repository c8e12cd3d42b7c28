//! `pipe`: a FIFO in a temporary directory, seed 004's named pipe on Linux.
//!
//! A pipe is a byte stream, so each message goes as one write of a 4-byte length and the
//! message. Writes of at most `PIPE_BUF` (4096) bytes are atomic, so the default limit is 4092:
//! larger events are fragmented the lpcmon way rather than relying on non-atomic writes.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};

use nix::sys::stat::Mode as FileMode;

use super::{Outcome, Transport, TransportError, TransportSpec};
use crate::measure::{Job, Losses, Receiver, produce};
use crate::plan::Mode;

pub struct Fifo {
    limit: usize,
}

impl Fifo {
    pub fn new(spec: &TransportSpec) -> Self {
        Fifo {
            limit: spec.number("limit"),
        }
    }
}

/// Reads one length-prefixed record; `None` at end of stream.
fn read_record(r: &mut impl Read, buf: &mut Vec<u8>, limit: usize) -> Option<usize> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return None;
    }
    buf.resize(len, 0);
    r.read_exact(&mut buf[..len]).ok()?;
    Some(len)
}

impl Transport for Fifo {
    fn limit(&self) -> usize {
        self.limit
    }

    fn run(&self, job: &Job, _mode: Mode) -> Result<Outcome, TransportError> {
        let dir = tempfile::Builder::new()
            .prefix("lpcmon-lab-fifo")
            .tempdir()
            .map_err(TransportError::io("temporary directory"))?;
        let path = dir.path().join("events.fifo");
        nix::unistd::mkfifo(&path, FileMode::S_IRUSR | FileMode::S_IWUSR)?;
        let limit = self.limit;
        std::thread::scope(|s| {
            // Opening a FIFO blocks until the other end opens, so each end opens in its thread.
            let consumer = s.spawn(|| -> Result<_, TransportError> {
                let file = File::open(&path).map_err(TransportError::io("open the FIFO for reading"))?;
                let mut r = BufReader::with_capacity(64 * 1024, file);
                let mut rx = Receiver::new(job, limit);
                let mut buf = Vec::with_capacity(limit);
                while let Some(len) = read_record(&mut r, &mut buf, limit) {
                    rx.on_message(&buf[..len]);
                }
                rx.stop_clock();
                Ok(rx)
            });
            let mut w = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(TransportError::io("open the FIFO for writing"))?;
            let mut frame = Vec::with_capacity(limit + 4);
            let tally = produce(job, limit, |m| {
                frame.clear();
                frame.extend_from_slice(&(m.len() as u32).to_le_bytes());
                frame.extend_from_slice(m);
                match w.write_all(&frame) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == ErrorKind::BrokenPipe => Err("reader_gone"),
                    Err(_) => Err("write_failed"),
                }
            });
            drop(w);
            let rx = consumer
                .join()
                .map_err(|_| TransportError::Other("consumer thread panicked".into()))??;
            Ok(Outcome::from_ends(tally, rx, Losses::default(), limit))
        })
    }
}
