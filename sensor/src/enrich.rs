//! Reading a process's details from `/proc` after the kernel announced it.
//!
//! The proc connector's messages carry only pids, so the executable, command line and uid of an
//! `exec` come from `/proc/<pid>`. A short-lived process may be gone (or a zombie, whose
//! `exe` link and `cmdline` are already empty) by the time we look: then whatever could be read
//! is returned and [`ProcInfo::is_complete`] is false, so the caller keeps the event and flags
//! it instead of dropping it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use tracing::trace;

/// The default bound on how much of `/proc/<pid>/cmdline` is read.
pub const DEFAULT_CMDLINE_CAP: usize = 32 * 1024;
/// `/proc/<pid>/status` is about 1.5 KiB; this bounds the read should a kernel grow it.
const STATUS_CAP: u64 = 16 * 1024;

/// What `/proc/<pid>` told us. A field is `None` when it could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// The target of `/proc/<pid>/exe` (may end in ` (deleted)`).
    pub executable: Option<String>,
    /// The arguments joined by spaces.
    pub command_line: Option<String>,
    /// The command line was longer than the cap and was cut.
    pub command_line_truncated: bool,
    /// `Name:` from `status`, the kernel's `comm`.
    pub name: Option<String>,
    /// The real uid (first value of `Uid:`).
    pub uid: Option<u32>,
    pub ppid: Option<u32>,
}

impl ProcInfo {
    /// True when everything an exec event carries was read.
    pub fn is_complete(&self) -> bool {
        self.executable.is_some() && self.command_line.is_some() && self.uid.is_some() && self.ppid.is_some()
    }
}

/// Reads what `/proc` still holds about `pid`. `proc_root` is normally `/proc`.
pub fn read_process(proc_root: &Path, pid: u32, cmdline_cap: usize) -> ProcInfo {
    let dir = proc_root.join(pid.to_string());
    let mut info = ProcInfo::default();
    match std::fs::read_link(dir.join("exe")) {
        Ok(path) => info.executable = Some(path.to_string_lossy().into_owned()),
        Err(e) => trace!(pid, error = %e, "reading exe failed"),
    }
    match read_cmdline(&dir.join("cmdline"), cmdline_cap) {
        Ok(Some((line, truncated))) => {
            info.command_line = Some(line);
            info.command_line_truncated = truncated;
        }
        // A zombie's or a kernel thread's cmdline is empty: nothing to report.
        Ok(None) => trace!(pid, "cmdline empty"),
        Err(e) => trace!(pid, error = %e, "reading cmdline failed"),
    }
    match read_bounded(&dir.join("status"), STATUS_CAP) {
        Ok(status) => {
            let status = parse_status(&String::from_utf8_lossy(&status));
            info.name = status.name;
            info.uid = status.uid;
            info.ppid = status.ppid;
        }
        Err(e) => trace!(pid, error = %e, "reading status failed"),
    }
    info
}

fn read_bounded(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)?.take(cap).read_to_end(&mut out)?;
    Ok(out)
}

/// Reads `cmdline` up to `cap` bytes and joins the NUL-separated arguments with spaces.
/// Returns the line and whether it was cut, or `None` when it is empty.
fn read_cmdline(path: &Path, cap: usize) -> io::Result<Option<(String, bool)>> {
    // One byte past the cap tells a cut line from one of exactly `cap` bytes.
    let mut raw = read_bounded(path, cap as u64 + 1)?;
    let truncated = raw.len() > cap;
    raw.truncate(cap);
    Ok(format_cmdline(&raw).map(|line| (line, truncated)))
}

fn format_cmdline(raw: &[u8]) -> Option<String> {
    let end = raw.iter().rposition(|&b| b != 0)? + 1;
    let joined: Vec<u8> = raw[..end]
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    Some(String::from_utf8_lossy(&joined).into_owned())
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    name: Option<String>,
    uid: Option<u32>,
    ppid: Option<u32>,
}

fn parse_status(text: &str) -> Status {
    let mut status = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim_start_matches([' ', '\t']);
        match key {
            "Name" => status.name = Some(value.to_owned()),
            "PPid" => status.ppid = value.trim().parse().ok(),
            "Uid" => status.uid = value.split_whitespace().next().and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    status
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
        let info = read_process(&root.0, 42, DEFAULT_CMDLINE_CAP);
        assert_eq!(
            info,
            ProcInfo {
                executable: Some("/usr/bin/bash".into()),
                command_line: Some("bash -c echo hi".into()),
                command_line_truncated: false,
                name: Some("bash".into()),
                uid: Some(1000),
                ppid: Some(7),
            }
        );
        assert!(info.is_complete());
    }

    #[test]
    fn a_gone_process_gives_an_incomplete_result() {
        let root = FakeProc::new("gone");
        let info = read_process(&root.0, 43, DEFAULT_CMDLINE_CAP);
        assert_eq!(info, ProcInfo::default());
        assert!(!info.is_complete());
    }

    #[test]
    fn a_zombie_keeps_its_status_but_is_incomplete() {
        let root = FakeProc::new("zombie");
        let dir = root.0.join("42");
        fs::write(dir.join("cmdline"), b"").unwrap();
        fs::write(dir.join("status"), STATUS).unwrap();
        let info = read_process(&root.0, 42, DEFAULT_CMDLINE_CAP);
        assert_eq!(info.command_line, None);
        assert_eq!(info.ppid, Some(7));
        assert!(!info.is_complete());
    }

    #[test]
    fn a_long_command_line_is_cut_at_the_cap() {
        let root = FakeProc::new("long");
        let path = root.0.join("42").join("cmdline");
        fs::write(&path, b"abcdefgh\0ijk\0").unwrap();
        assert_eq!(
            read_cmdline(&path, 10).unwrap(),
            Some(("abcdefgh i".into(), true))
        );
        assert_eq!(
            read_cmdline(&path, 13).unwrap(),
            Some(("abcdefgh ijk".into(), false))
        );
    }

    #[test]
    fn status_parsing_tolerates_odd_input() {
        assert_eq!(parse_status(""), Status::default());
        assert_eq!(
            parse_status("Uid:\tnope\nPPid:\t\nName:\ta:b\n"),
            Status {
                name: Some("a:b".into()),
                uid: None,
                ppid: None,
            }
        );
    }

    #[test]
    fn our_own_process_is_readable() {
        let info = read_process(Path::new("/proc"), std::process::id(), DEFAULT_CMDLINE_CAP);
        assert!(info.is_complete(), "{info:?}");
        assert_eq!(
            info.executable,
            std::env::current_exe()
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        );
    }
}
