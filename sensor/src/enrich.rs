//! Reading a process's details from `/proc` after the kernel announced it.
//!
//! The proc connector's messages carry only pids, so the executable, command line and uid of an
//! `exec` come from `/proc/<pid>`. A short-lived process may be gone (or a zombie, whose
//! `exe` link and `cmdline` are already empty) by the time we look: then whatever could be read
//! is returned and [`ProcInfo::is_complete`] is false, so the caller keeps the event and flags
//! it instead of dropping it.
//!
//! This runs once per exec on the sensor's hot path, so a [`ProcReader`] keeps its buffers from
//! one process to the next and an exec costs its system calls (one `readlink`, two
//! open/read/close) and no allocation. `status` is the one file that has the real uid, and it
//! also gives the name and parent; but the kernel builds all of its ~1.5 KiB of text (memory
//! figures included) for every read, several times the cost of `comm`. So when the caller
//! already knows the parent and uid (from kernel events, see [`crate::process_table`]),
//! [`ProcReader::read_known`] reads the name from `comm` instead.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tracing::trace;

/// The default bound on how much of `/proc/<pid>/cmdline` is read.
pub const DEFAULT_CMDLINE_CAP: usize = 32 * 1024;
/// `/proc/<pid>/status` is about 1.5 KiB; this bounds the read should a kernel grow it.
const STATUS_CAP: usize = 16 * 1024;
/// Room for the `exe` link's target: `PATH_MAX`, the longest path the kernel returns.
const EXE_CAP: usize = libc::PATH_MAX as usize;

/// What `/proc/<pid>` told us, borrowed from the [`ProcReader`] that read it. A field is `None`
/// when it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcInfo<'a> {
    /// The target of `/proc/<pid>/exe` (may end in ` (deleted)`).
    pub executable: Option<&'a str>,
    /// The arguments joined by spaces.
    pub command_line: Option<&'a str>,
    /// The command line was longer than the cap and was cut.
    pub command_line_truncated: bool,
    /// `Name:` from `status`, the kernel's `comm`.
    pub name: Option<&'a str>,
    /// The real uid (first value of `Uid:`).
    pub uid: Option<u32>,
    pub ppid: Option<u32>,
}

impl ProcInfo<'_> {
    /// True when everything an exec event carries was read.
    pub fn is_complete(&self) -> bool {
        self.executable.is_some() && self.command_line.is_some() && self.uid.is_some() && self.ppid.is_some()
    }
}

/// Reads `/proc/<pid>` into buffers it keeps, so reading a process allocates nothing.
#[derive(Debug)]
pub struct ProcReader {
    /// `<proc_root>/`, then the pid and file name of the current read, NUL-terminated.
    path: Vec<u8>,
    root_len: usize,
    /// What a file read returned: room for the larger of a capped `cmdline` (plus the one
    /// byte that tells a cut line) and `status`.
    raw: Box<[u8]>,
    cmdline_cap: usize,
    exe: String,
    cmdline: String,
    name: String,
}

/// What `status` said; the name goes to [`ProcReader::name`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    has_name: bool,
    uid: Option<u32>,
    ppid: Option<u32>,
}

impl ProcReader {
    /// A reader of `proc_root` (normally `/proc`) that reads at most `cmdline_cap` bytes of a
    /// command line.
    pub fn new(proc_root: &Path, cmdline_cap: usize) -> Self {
        let mut path = proc_root.as_os_str().as_bytes().to_vec();
        path.push(b'/');
        let root_len = path.len();
        ProcReader {
            path,
            root_len,
            raw: vec![0; (cmdline_cap + 1).max(STATUS_CAP)].into_boxed_slice(),
            cmdline_cap,
            exe: String::new(),
            cmdline: String::new(),
            name: String::new(),
        }
    }

    /// Reads what `/proc` still holds about `pid`: the executable, the command line, and from
    /// `status` the name, real uid and parent.
    pub fn read(&mut self, pid: u32) -> ProcInfo<'_> {
        self.read_with(pid, true)
    }

    /// Like [`ProcReader::read`] for a process whose parent and real uid the caller knows: the
    /// name comes from the cheaper `comm`, and `uid` and `ppid` are left `None`.
    pub fn read_known(&mut self, pid: u32) -> ProcInfo<'_> {
        self.read_with(pid, false)
    }

    fn read_with(&mut self, pid: u32, with_status: bool) -> ProcInfo<'_> {
        let has_exe = match self.read_exe(pid) {
            Ok(()) => true,
            Err(e) => {
                trace!(pid, error = %e, "reading exe failed");
                false
            }
        };
        let cmdline = match self.read_cmdline(pid) {
            Ok(line) => line,
            Err(e) => {
                trace!(pid, error = %e, "reading cmdline failed");
                None
            }
        };
        let status = if with_status {
            self.read_status(pid)
        } else {
            self.read_comm(pid).map(|()| Status {
                has_name: true,
                ..Status::default()
            })
        };
        let status = status.unwrap_or_else(|e| {
            trace!(pid, error = %e, with_status, "reading status or comm failed");
            Status::default()
        });
        ProcInfo {
            executable: has_exe.then_some(self.exe.as_str()),
            command_line: cmdline.map(|_| self.cmdline.as_str()),
            command_line_truncated: cmdline.unwrap_or(false),
            name: status.has_name.then_some(self.name.as_str()),
            uid: status.uid,
            ppid: status.ppid,
        }
    }

    /// Sets `path` to `<root>/<pid>/<file>` with a terminating NUL.
    fn set_path(&mut self, pid: u32, file: &str) {
        self.path.truncate(self.root_len);
        // Writing into a Vec cannot fail.
        let _ = write!(self.path, "{pid}/{file}\0");
    }

    /// The current path without its NUL, for std's file API.
    fn path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.path[..self.path.len() - 1]))
    }

    fn read_exe(&mut self, pid: u32) -> io::Result<()> {
        self.set_path(pid, "exe");
        let path = CStr::from_bytes_with_nul(&self.path).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut target = [0u8; EXE_CAP];
        // SAFETY: `path` is NUL-terminated and `target` is writable for its whole length; the
        // kernel writes at most that many bytes and returns how many.
        let len = unsafe { libc::readlink(path.as_ptr(), target.as_mut_ptr().cast(), target.len()) };
        let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
        self.exe.clear();
        self.exe.push_str(&String::from_utf8_lossy(&target[..len]));
        Ok(())
    }

    /// Reads `file` of `pid` into `raw`, up to `cap` bytes, and returns how many were read.
    ///
    /// One `read`: `cmdline` and the seq_file behind `status` fill the buffer as far as the
    /// file goes, so a read that returns less than asked has all of it, and one that fills the
    /// buffer has hit the cap. That saves the read that would return 0.
    fn read_file(&mut self, pid: u32, file: &str, cap: usize) -> io::Result<usize> {
        self.set_path(pid, file);
        let mut f = File::open(self.path())?;
        loop {
            match f.read(&mut self.raw[..cap]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Reads `cmdline` up to the cap and joins the NUL-separated arguments with spaces into
    /// `cmdline`. Returns whether the line was cut, or `None` when it is empty (a zombie's or a
    /// kernel thread's).
    fn read_cmdline(&mut self, pid: u32) -> io::Result<Option<bool>> {
        // One byte past the cap tells a cut line from one of exactly `cap` bytes.
        let read = self.read_file(pid, "cmdline", self.cmdline_cap + 1)?;
        let truncated = read > self.cmdline_cap;
        let raw = &mut self.raw[..read.min(self.cmdline_cap)];
        Ok(join_arguments(raw, &mut self.cmdline).then_some(truncated))
    }

    /// Reads `comm` (the name and a newline) into `name`.
    fn read_comm(&mut self, pid: u32) -> io::Result<()> {
        // The kernel's TASK_COMM_LEN is 16, escapes included; room to spare.
        let read = self.read_file(pid, "comm", 256)?;
        let raw = &self.raw[..read];
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        self.name.clear();
        self.name.push_str(&String::from_utf8_lossy(raw));
        Ok(())
    }

    fn read_status(&mut self, pid: u32) -> io::Result<Status> {
        let read = self.read_file(pid, "status", STATUS_CAP)?;
        Ok(parse_status(&self.raw[..read], &mut self.name))
    }
}

/// Turns the NUL-separated arguments in `raw` into one space-separated line in `out`, dropping
/// trailing NULs. Returns false (and leaves `out` empty) when there is nothing but NULs.
fn join_arguments(raw: &mut [u8], out: &mut String) -> bool {
    out.clear();
    let Some(last) = raw.iter().rposition(|&b| b != 0) else {
        return false;
    };
    let line = &mut raw[..=last];
    for b in line.iter_mut().filter(|b| **b == 0) {
        *b = b' ';
    }
    out.push_str(&String::from_utf8_lossy(line));
    true
}

/// Picks `Name:` (into `name`), `PPid:` and the first `Uid:` value out of a `status` file.
fn parse_status(text: &[u8], name: &mut String) -> Status {
    let mut status = Status::default();
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.trim_ascii_start();
        match key {
            b"Name" => {
                name.clear();
                name.push_str(&String::from_utf8_lossy(value));
                status.has_name = true;
            }
            b"PPid" => status.ppid = parse_u32(value.trim_ascii_end()),
            b"Uid" => status.uid = value.split(u8::is_ascii_whitespace).next().and_then(parse_u32),
            _ => continue,
        }
        if status.has_name && status.uid.is_some() && status.ppid.is_some() {
            break;
        }
    }
    status
}

fn parse_u32(digits: &[u8]) -> Option<u32> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("lpcmon-enrich-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("42")).unwrap();
            FakeProc(dir)
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const STATUS: &str = "Name:\tbash\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\n\
                          PPid:\t7\nUid:\t1000\t0\t1000\t1000\nGid:\t100\t100\t100\t100\n";

    #[test]
    fn a_live_process_is_read_completely() {
        let root = FakeProc::new("live");
        let dir = root.0.join("42");
        std::os::unix::fs::symlink("/usr/bin/bash", dir.join("exe")).unwrap();
        fs::write(dir.join("cmdline"), b"bash\0-c\0echo hi\0").unwrap();
        fs::write(dir.join("status"), STATUS).unwrap();
        let mut reader = ProcReader::new(&root.0, DEFAULT_CMDLINE_CAP);
        let info = reader.read(42);
        assert_eq!(
            info,
            ProcInfo {
                executable: Some("/usr/bin/bash"),
                command_line: Some("bash -c echo hi"),
                command_line_truncated: false,
                name: Some("bash"),
                uid: Some(1000),
                ppid: Some(7),
            }
        );
        assert!(info.is_complete());
    }

    #[test]
    fn a_known_process_is_named_from_comm() {
        let root = FakeProc::new("known");
        let dir = root.0.join("42");
        std::os::unix::fs::symlink("/usr/bin/true", dir.join("exe")).unwrap();
        fs::write(dir.join("cmdline"), b"true\0").unwrap();
        fs::write(dir.join("comm"), b"true\n").unwrap();
        // A status that would say otherwise is not read.
        fs::write(dir.join("status"), STATUS).unwrap();
        let mut reader = ProcReader::new(&root.0, DEFAULT_CMDLINE_CAP);
        assert_eq!(
            reader.read_known(42),
            ProcInfo {
                executable: Some("/usr/bin/true"),
                command_line: Some("true"),
                command_line_truncated: false,
                name: Some("true"),
                uid: None,
                ppid: None,
            }
        );
    }

    #[test]
    fn a_gone_process_gives_an_incomplete_result() {
        let root = FakeProc::new("gone");
        let mut reader = ProcReader::new(&root.0, DEFAULT_CMDLINE_CAP);
        let info = reader.read(43);
        assert_eq!(info, ProcInfo::default());
        assert!(!info.is_complete());
    }

    #[test]
    fn a_zombie_keeps_its_status_but_is_incomplete() {
        let root = FakeProc::new("zombie");
        let dir = root.0.join("42");
        fs::write(dir.join("cmdline"), b"").unwrap();
        fs::write(dir.join("status"), STATUS).unwrap();
        let mut reader = ProcReader::new(&root.0, DEFAULT_CMDLINE_CAP);
        let info = reader.read(42);
        assert_eq!(info.command_line, None);
        assert_eq!(info.ppid, Some(7));
        assert!(!info.is_complete());
    }

    #[test]
    fn a_long_command_line_is_cut_at_the_cap() {
        let root = FakeProc::new("long");
        fs::write(root.0.join("42").join("cmdline"), b"abcdefgh\0ijk\0").unwrap();
        let mut reader = ProcReader::new(&root.0, 10);
        assert_eq!(reader.read_cmdline(42).unwrap(), Some(true));
        assert_eq!(reader.cmdline, "abcdefgh i");
        let mut reader = ProcReader::new(&root.0, 13);
        assert_eq!(reader.read_cmdline(42).unwrap(), Some(false));
        assert_eq!(reader.cmdline, "abcdefgh ijk");
    }

    #[test]
    fn one_reader_reads_many_processes_without_mixing_them_up() {
        let root = FakeProc::new("many");
        fs::create_dir_all(root.0.join("7")).unwrap();
        fs::write(root.0.join("42").join("cmdline"), b"a-long-first-command\0x\0").unwrap();
        fs::write(root.0.join("42").join("status"), STATUS).unwrap();
        fs::write(root.0.join("7").join("cmdline"), b"sh\0").unwrap();
        fs::write(
            root.0.join("7").join("status"),
            "Name:\tsh\nPPid:\t1\nUid:\t0\t0\t0\t0\n",
        )
        .unwrap();
        let mut reader = ProcReader::new(&root.0, DEFAULT_CMDLINE_CAP);
        assert_eq!(reader.read(42).command_line, Some("a-long-first-command x"));
        let second = reader.read(7);
        assert_eq!(
            (second.command_line, second.name, second.uid, second.ppid),
            (Some("sh"), Some("sh"), Some(0), Some(1))
        );
        // A process gone since leaves nothing of the previous one behind.
        assert_eq!(reader.read(9), ProcInfo::default());
    }

    #[test]
    fn status_parsing_tolerates_odd_input() {
        let mut name = String::new();
        assert_eq!(parse_status(b"", &mut name), Status::default());
        assert_eq!(
            parse_status(b"Uid:\tnope\nPPid:\t\nName:\ta:b\n", &mut name),
            Status {
                has_name: true,
                uid: None,
                ppid: None,
            }
        );
        assert_eq!(name, "a:b");
        assert_eq!(
            parse_status(b"\xff\xfe:\x00\nPPid:\t12 \n", &mut name).ppid,
            Some(12)
        );
    }

    #[test]
    fn arguments_join_with_spaces_and_an_empty_line_is_none() {
        let mut out = String::from("stale");
        assert!(!join_arguments(&mut [0, 0], &mut out));
        assert_eq!(out, "");
        assert!(join_arguments(&mut b"a\0b\0\0".to_vec(), &mut out));
        assert_eq!(out, "a b");
    }

    #[test]
    fn our_own_process_is_readable() {
        let mut reader = ProcReader::new(Path::new("/proc"), DEFAULT_CMDLINE_CAP);
        let name = reader.read_known(std::process::id()).name.map(str::to_owned);
        let info = reader.read(std::process::id());
        assert_eq!(info.name.map(str::to_owned), name, "comm and status agree");
        assert!(info.is_complete(), "{info:?}");
        assert_eq!(
            info.executable.map(str::to_owned),
            std::env::current_exe()
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        );
    }
}
