//! `lpcmon export`: every stored event after an id, as NDJSON or CSV, in id order.
//!
//! It reads through its own read-only connection in chunks of ids, each its own short read
//! transaction, so a server writing the same file is never held up and the export sees every
//! event committed before it reached that part of the file.

use std::io::Write;
use std::path::Path;

use crate::error::{OpenError, StoreError};
use crate::read::{self, Filter, Order, PageQuery};
use crate::schema;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One event's JSON per line, exactly as the HTTP API serves it.
    Ndjson,
    /// `id,time_ns,kind,pid,producer_kind,producer,json` with a header line (RFC 4180 quoting).
    Csv,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Read(#[from] StoreError),
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        ExportError::Read(StoreError::Io(e))
    }
}

const CHUNK: usize = 2048;

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(out: &mut impl Write, field: &str) -> std::io::Result<()> {
    if field.contains([',', '"', '\n', '\r']) {
        write!(out, "\"{}\"", field.replace('"', "\"\""))
    } else {
        out.write_all(field.as_bytes())
    }
}

/// Writes the events of `path` with ids above `after` matching `filter`; returns how many.
pub fn export(
    path: &Path,
    after: u64,
    filter: &Filter,
    format: ExportFormat,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    let conn = schema::open_for_reading(path)?;
    if format == ExportFormat::Csv {
        out.write_all(b"id,time_ns,kind,pid,producer_kind,producer,json\n")?;
    }
    let mut cursor = after;
    let mut written = 0;
    loop {
        let rows = read::page(
            &conn,
            &PageQuery {
                after: cursor,
                through: i64::MAX as u64,
                filter,
                limit: CHUNK,
                order: Order::Ascending,
            },
        )?;
        let Some(last) = rows.last() else { break };
        cursor = last.id;
        for r in &rows {
            match format {
                ExportFormat::Ndjson => {
                    out.write_all(r.json.as_bytes())?;
                    out.write_all(b"\n")?;
                }
                ExportFormat::Csv => {
                    write!(out, "{},{},", r.id, r.time_ns)?;
                    csv_field(out, &r.kind)?;
                    out.write_all(b",")?;
                    if let Some(pid) = r.pid {
                        write!(out, "{pid}")?;
                    }
                    out.write_all(b",")?;
                    csv_field(out, &r.producer_kind)?;
                    out.write_all(b",")?;
                    csv_field(out, &r.producer)?;
                    out.write_all(b",")?;
                    csv_field(out, &r.json)?;
                    out.write_all(b"\n")?;
                }
            }
        }
        written += rows.len() as u64;
        if rows.len() < CHUNK {
            break;
        }
    }
    out.flush()?;
    Ok(written)
}
