//! The proc-connector sensor against the real kernel. Needs root (or CAP_NET_ADMIN); without
//! it each test says so and passes without checking anything.
#![cfg(target_os = "linux")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use lpcmon_protocol::event::{Event, flags, patch_seq};
use lpcmon_protocol::{EventKind, FieldType, Message};
use lpcmon_sensor::proc_connector::{ConnectorConfig, ProcConnector, Recv};
use lpcmon_sensor::proc_event::ProcMessage;
use lpcmon_sensor::{ProcConnectorSource, SensorEvent, SourceConfig, SourceItem, encode_event, is_permitted};

/// The tests here start processes and watch every process on the machine, so they run one at a
/// time: each then sees its own processes and little else (a quiet storm is not quiet beside
/// the fork storm).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `Some` (holding the one-at-a-time lock) when the test can run.
fn privileged(test: &str) -> Option<MutexGuard<'static, ()>> {
    if nix::unistd::geteuid().is_root() {
        return Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()));
    }
    eprintln!("skipping {test}: the proc connector needs root or CAP_NET_ADMIN");
    None
}

fn spawn_true() -> Child {
    Command::new("/bin/true").spawn().expect("spawn /bin/true")
}

fn decode(ev: &SensorEvent<'_>) -> Event {
    let mut buf = [0u8; 4096];
    let len = encode_event(ev, &mut buf, 1024).unwrap();
    patch_seq(&mut buf[..len], 1).unwrap();
    match Message::decode(&buf[..len], usize::MAX).unwrap() {
        Message::Event(view) => Event::from(&view),
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn root_is_permitted() {
    if let Some(_one_at_a_time) = privileged("root_is_permitted") {
        assert!(is_permitted());
    }
}

#[test]
fn a_short_process_is_seen_starting_executing_and_exiting() {
    let Some(_one_at_a_time) = privileged("a_short_process_is_seen_starting_executing_and_exiting") else {
        return;
    };
    let mut source = ProcConnectorSource::open(SourceConfig::default()).unwrap();
    let mut child = spawn_true();
    let pid = child.id();
    assert!(child.wait().unwrap().success());

    let (mut start, mut exec, mut exit) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && (start.is_none() || exec.is_none() || exit.is_none()) {
        let Some(SourceItem::Event(ev)) = source.next_item().unwrap() else {
            continue;
        };
        if ev.pid != pid {
            continue;
        }
        // An event borrows the source's buffers: keep it decoded.
        match ev.kind {
            EventKind::ProcessStart => start = Some(decode(&ev)),
            EventKind::ProcessExec => exec = Some(decode(&ev)),
            EventKind::ProcessExit => exit = Some(decode(&ev)),
            _ => {}
        }
    }
    let start = start.expect("no process.start for the child");
    assert_eq!(start.header.ppid, std::process::id());
    assert_eq!(start.header.tid, pid);

    let exec = exec.expect("no process.exec for the child");
    assert_eq!(exec.header.pid, pid);
    assert_eq!(
        exec.header.ppid,
        std::process::id(),
        "the parent comes from the fork"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(now - exec.header.time_ns < 10_000_000_000, "time is UTC, recent");
    match exec.text(FieldType::EXECUTABLE) {
        Some(exe) => assert!(exe.ends_with("/true"), "{exe}"),
        None => assert_ne!(
            exec.header.flags & flags::ENRICH_FAILED,
            0,
            "no exe and not flagged"
        ),
    }

    let exit = exit.expect("no process.exit for the child");
    assert_eq!(exit.i32(FieldType::EXIT_CODE), Some(0));
    assert_eq!(exit.header.ppid, std::process::id());
}

#[test]
fn a_fork_storm_is_seen_whole_or_its_loss_is_reported() {
    let Some(_one_at_a_time) = privileged("a_fork_storm_is_seen_whole_or_its_loss_is_reported") else {
        return;
    };
    const CHILDREN: usize = 500;
    let mut source = ProcConnectorSource::open(SourceConfig::default()).unwrap();
    let seen = Arc::new(Mutex::new((HashSet::new(), HashSet::new())));
    let lossy = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (seen, lossy, stop) = (seen.clone(), lossy.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match source.next_item().unwrap() {
                    Some(SourceItem::Event(ev)) => {
                        let mut seen = seen.lock().unwrap();
                        match ev.kind {
                            EventKind::ProcessStart => seen.0.insert(ev.pid),
                            EventKind::ProcessExec => seen.1.insert(ev.pid),
                            _ => false,
                        };
                    }
                    Some(SourceItem::Overrun | SourceItem::Lost { .. }) => {
                        lossy.store(true, Ordering::Relaxed)
                    }
                    None => {}
                }
            }
            source.stats()
        })
    };

    let mut pids = Vec::with_capacity(CHILDREN);
    for _ in 0..CHILDREN / 50 {
        let batch: Vec<Child> = (0..50).map(|_| spawn_true()).collect();
        for mut child in batch {
            pids.push(child.id());
            child.wait().unwrap();
        }
    }

    let all_seen = || {
        let seen = seen.lock().unwrap();
        pids.iter().all(|p| seen.0.contains(p) && seen.1.contains(p))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !all_seen() && !lossy.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let stats = reader.join().unwrap();
    let seen = seen.lock().unwrap();
    let missing: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| !(seen.0.contains(p) && seen.1.contains(p)))
        .collect();
    eprintln!(
        "fork storm: {} children, {} not seen, {stats:?}",
        pids.len(),
        missing.len()
    );
    assert!(
        missing.is_empty() || stats.connector.overruns > 0 || stats.connector.lost_messages > 0,
        "children missed silently: {missing:?}"
    );
    assert_eq!(stats.connector.malformed, 0);
}

/// The sensor's reader runs `SCHED_FIFO` so that an exec's `/proc` is read before even
/// `/bin/true` exits: at normal priority 75 of 100 such execs lost their executable here. In a
/// quiet storm, one short process at a time, (almost) every exec must name its executable. Not
/// quite every one: on this shared 2-vCPU VM at load 10, 0 to 2 of 200 were missed in about one
/// run in six, and a CI run beside a full test suite missed 4, with this code and with the code
/// before it alike (the vCPU itself is not always running). The bound is 5 %: what the test
/// guards is that the reader still runs ahead of the exits (75 % missed without it), not a
/// timing figure on a shared machine.
#[test]
fn a_quiet_storm_names_every_executable() {
    let Some(_one_at_a_time) = privileged("a_quiet_storm_names_every_executable") else {
        return;
    };
    const CHILDREN: usize = 200;
    let mut source = ProcConnectorSource::open(SourceConfig::default()).unwrap();
    let execs = Arc::new(Mutex::new(HashMap::new()));
    let lossy = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (execs, lossy, stop) = (execs.clone(), lossy.clone(), stop.clone());
        thread::spawn(move || {
            let realtime = lpcmon_sensor::linux_sensor::prefer_realtime();
            while !stop.load(Ordering::Relaxed) {
                match source.next_item().unwrap() {
                    Some(SourceItem::Event(ev)) if ev.kind == EventKind::ProcessExec => {
                        execs
                            .lock()
                            .unwrap()
                            .insert(ev.pid, ev.executable.map(str::to_owned));
                    }
                    Some(SourceItem::Overrun | SourceItem::Lost { .. }) => {
                        lossy.store(true, Ordering::Relaxed)
                    }
                    _ => {}
                }
            }
            realtime
        })
    };
    let pids: Vec<u32> = (0..CHILDREN)
        .map(|_| {
            let mut child = spawn_true();
            child.wait().unwrap();
            child.id()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !pids.iter().all(|p| execs.lock().unwrap().contains_key(p)) {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let realtime = reader.join().unwrap();
    let execs = execs.lock().unwrap();
    let unseen = pids.iter().filter(|p| !execs.contains_key(p)).count();
    let unnamed: Vec<(u32, Option<String>)> = pids
        .iter()
        .filter_map(|p| match execs.get(p) {
            Some(Some(exe)) if exe.ends_with("/true") => None,
            Some(other) => Some((*p, other.clone())),
            None => None,
        })
        .collect();
    eprintln!(
        "quiet storm: {CHILDREN} execs, {unseen} unseen, {} without their executable (SCHED_FIFO: {realtime})",
        unnamed.len()
    );
    assert!(
        unseen == 0 || lossy.load(Ordering::Relaxed),
        "{unseen} execs missed silently"
    );
    if realtime {
        assert!(
            unnamed.len() <= CHILDREN / 20,
            "execs without their executable: {unnamed:?}"
        );
    }
}

/// A shell's children are forked after the sensor saw the shell: their exec takes its parent and
/// real uid from what the sensor learnt (the fork and the shell's own exec), not from `status`.
#[test]
fn a_grandchild_exec_carries_the_uid_and_parent_it_inherited() {
    let Some(_one_at_a_time) = privileged("a_grandchild_exec_carries_the_uid_and_parent_it_inherited") else {
        return;
    };
    let mut source = ProcConnectorSource::open(SourceConfig::default()).unwrap();
    // The reader runs as the sensor's does (real-time, reading while the processes live).
    let execs = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (execs, stop) = (execs.clone(), stop.clone());
        thread::spawn(move || {
            lpcmon_sensor::linux_sensor::prefer_realtime();
            while !stop.load(Ordering::Relaxed) {
                if let Some(SourceItem::Event(ev)) = source.next_item().unwrap()
                    && ev.kind == EventKind::ProcessExec
                {
                    let exe = ev.executable.map(str::to_owned);
                    execs.lock().unwrap().push((ev.pid, ev.ppid, ev.user_id, exe));
                }
            }
        })
    };
    let mut sh = Command::new("/bin/sh")
        .args(["-c", "/bin/true; /bin/true; exit 0"])
        .spawn()
        .unwrap();
    let sh_pid = sh.id();
    assert!(sh.wait().unwrap().success());
    let children = || {
        let execs = execs.lock().unwrap();
        execs
            .iter()
            .filter(|e| e.1 == sh_pid)
            .map(|(pid, _, uid, exe)| (*pid, *uid, exe.clone()))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && children().len() < 2 {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let execs = children();
    assert_eq!(execs.len(), 2, "the shell's two children: {execs:?}");
    let uid = nix::unistd::getuid().as_raw();
    for (pid, user_id, exe) in execs {
        assert_eq!(user_id, Some(uid), "pid {pid}");
        assert!(exe.is_some_and(|e| e.ends_with("/true")), "pid {pid}");
    }
}

#[test]
fn an_overflowing_buffer_is_reported_with_an_exact_count() {
    let Some(_one_at_a_time) = privileged("an_overflowing_buffer_is_reported_with_an_exact_count") else {
        return;
    };
    let config = SourceConfig {
        connector: ConnectorConfig {
            recv_buffer_bytes: 4096,
            ..ConnectorConfig::default()
        },
        ..SourceConfig::default()
    };
    let mut source = ProcConnectorSource::open(config).unwrap();
    // Nobody reads while 200 processes come and go: a few kilobytes hold a handful of messages.
    for _ in 0..200 {
        spawn_true().wait().unwrap();
    }
    let (mut overruns, mut lost, mut events) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && (overruns == 0 || lost == 0) {
        match source.next_item().unwrap() {
            Some(SourceItem::Overrun) => overruns += 1,
            Some(SourceItem::Lost { messages }) => lost += messages,
            Some(SourceItem::Event(_)) => events += 1,
            // The gap shows when a CPU that dropped messages sends again: make it send.
            None => drop(spawn_true().wait()),
        }
    }
    let stats = source.stats();
    eprintln!("overflow: {overruns} overruns, {lost} lost, {events} events, {stats:?}");
    assert!(overruns > 0, "ENOBUFS was not reported");
    assert!(lost > 0, "the lost messages were not counted");
    assert_eq!(stats.connector.lost_messages, lost);
}

/// Reads until the socket stays quiet for one receive timeout, `done` holds, or `limit`
/// passes (a busy machine may never be quiet). Returns the messages, lost count and overruns.
fn drain(
    conn: &mut ProcConnector,
    limit: Duration,
    done: impl Fn(&[ProcMessage]) -> bool,
) -> (Vec<ProcMessage>, u64, u64) {
    let (mut msgs, mut lost, mut overruns) = (Vec::new(), 0, 0);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !done(&msgs) {
        match conn.recv(&mut msgs).unwrap() {
            Recv::Messages { lost: l, .. } => lost += l,
            Recv::Overrun => overruns += 1,
            Recv::Timeout => break,
        }
    }
    (msgs, lost, overruns)
}

#[test]
fn kernel_loss_counts_are_exact() {
    let Some(_one_at_a_time) = privileged("kernel_loss_counts_are_exact") else {
        return;
    };
    // A large-buffer socket sees every message; a tiny one drops most. The tiny one's count of
    // lost messages must equal the messages the large one saw within the tiny one's sequence
    // ranges that the tiny one did not.
    let mut whole = ProcConnector::open(&ConnectorConfig::default()).unwrap();
    let mut tiny = ProcConnector::open(&ConnectorConfig {
        recv_buffer_bytes: 4096,
        ..ConnectorConfig::default()
    })
    .unwrap();
    for _ in 0..150 {
        spawn_true().wait().unwrap();
    }
    let quick = Duration::from_millis(300);
    let (mut tiny_msgs, mut tiny_lost, mut tiny_overruns) = drain(&mut tiny, quick, |_| false);
    // A gap shows when a CPU that dropped messages sends again: a few more processes, each
    // read before the next, make every CPU send something the tiny socket has room for.
    for _ in 0..10 {
        spawn_true().wait().unwrap();
        let (msgs, lost, overruns) = drain(&mut tiny, quick, |_| false);
        tiny_msgs.extend(msgs);
        tiny_lost += lost;
        tiny_overruns += overruns;
    }
    assert!(
        tiny_overruns > 0 && tiny_lost > 0,
        "the tiny socket did not overflow"
    );

    let mut ranges: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    let mut tiny_seen = HashSet::new();
    for m in &tiny_msgs {
        let r = ranges.entry(m.cpu).or_insert((m.seq, m.seq));
        r.0 = r.0.min(m.seq);
        r.1 = r.1.max(m.seq);
        tiny_seen.insert((m.cpu, m.seq));
    }
    // Every message the tiny socket got was queued to the large one too: read that far.
    let covered = |msgs: &[ProcMessage]| {
        ranges
            .iter()
            .all(|(cpu, &(_, hi))| msgs.iter().any(|m| m.cpu == *cpu && m.seq >= hi))
    };
    let (whole_msgs, whole_lost, whole_overruns) = drain(&mut whole, Duration::from_secs(10), covered);
    assert_eq!(
        (whole_lost, whole_overruns),
        (0, 0),
        "the reference socket lost messages"
    );
    assert!(
        covered(&whole_msgs),
        "the reference socket did not see the tiny one's range"
    );

    let missed = whole_msgs
        .iter()
        .filter(|m| {
            ranges
                .get(&m.cpu)
                .is_some_and(|&(lo, hi)| (lo..=hi).contains(&m.seq))
        })
        .filter(|m| !tiny_seen.contains(&(m.cpu, m.seq)))
        .count() as u64;
    eprintln!(
        "tiny socket: {} seen, {tiny_lost} counted lost, {missed} actually missed",
        tiny_msgs.len()
    );
    assert_eq!(tiny_lost, missed);
}
