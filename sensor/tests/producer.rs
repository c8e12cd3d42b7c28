//! The producer runtime's worker against a port that is not there: events it cannot send must
//! not keep it awake. Alone in its own test binary, so the process's CPU time is the worker's.
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use lpcmon_protocol::{EventHeader, EventKind};
use lpcmon_sensor::runtime::{Producer, ProducerConfig};

/// User + system CPU of this process, in clock ticks (`/proc/self/stat` fields 14 and 15).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_disconnected_worker_with_queued_events_sleeps() {
    for linger in [Duration::ZERO, Duration::from_millis(1)] {
        let dir = std::env::temp_dir().join(format!("lpcmon-producer-{}", std::process::id()));
        let producer = Producer::<256>::start(ProducerConfig {
            linger,
            // Nothing can be delivered: do not wait long for it at the stop.
            stop_grace: Duration::from_millis(100),
            ..ProducerConfig::new(
                dir.join("nobody-listens.sock"),
                lpcmon_protocol::ProducerKind::Loadgen,
            )
        })
        .unwrap();
        let header = EventHeader {
            seq: 0,
            kind: EventKind::ProcessStart,
            flags: 0,
            time_ns: 1,
            pid: 1,
            ppid: 0,
            tid: 1,
        };
        for _ in 0..100 {
            assert!(producer.push(|slot| {
                let _ = slot.encode(&header, 256, |_| Ok(()));
            }));
        }
        let (start, ticks) = (Instant::now(), cpu_ticks());
        std::thread::sleep(Duration::from_millis(500));
        let used = cpu_ticks() - ticks;
        let elapsed = start.elapsed();
        let report = producer.stop();
        eprintln!("linger {linger:?}: {used} ticks of CPU in {elapsed:?}, {report:?}");
        assert_eq!(report.worker.sent, 0, "nothing listens");
        // A worker that spins on its unsendable queue burns the whole half second (about 50
        // ticks at 100 Hz); one that sleeps between connection attempts next to nothing.
        assert!(used <= 5, "the worker stayed busy: {used} ticks in {elapsed:?}");
    }
}
