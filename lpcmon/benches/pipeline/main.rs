//! The pipeline benchmark: raw SEQPACKET against lpcmon's ingest, send-to-SSE latency with ten
//! clients, fan-out to 1,000 clients, and resident memory. It prints figures and asserts none (see `linux.rs`).
//!
//! `cargo bench -p lpcmon --bench pipeline`

#[cfg(target_os = "linux")]
mod fanout;
#[cfg(target_os = "linux")]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    eprintln!("the pipeline benchmark measures the Linux pipeline (Unix SEQPACKET); nothing to run here");
}
