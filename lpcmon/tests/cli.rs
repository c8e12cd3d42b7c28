//! The `lpcmon` command line as an operator meets it, through the real binary: config-file
//! layering, per-OS flags, exit codes and error text, the man page and completions, and the
//! README's command-line section, which must equal the real `--help`.
//!
//! Every child gets a clean environment for the variables lpcmon reads (no LPCMON_*, no
//! RUST_LOG) and an explicit `--config`, so neither the caller's shell nor an
//! /etc/lpcmon/lpcmon.toml on the machine changes the outcome.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::free_port;

fn lpcmon() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lpcmon"));
    common::clean_env(&mut cmd);
    cmd.stdin(Stdio::null());
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run lpcmon");
    (
        status.code().expect("exited, not killed"),
        text(&stdout),
        text(&stderr),
    )
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("lpcmon.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// `key = value  # origin` from `config show`, in `section` ("" = top level).
fn shown(show: &str, section: &str, key: &str) -> Option<(String, String)> {
    let mut current = String::new();
    for line in show.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
            continue;
        }
        if current != section {
            continue;
        }
        let Some((assignment, origin)) = line.split_once("  # ") else {
            continue;
        };
        if let Some((k, v)) = assignment.split_once(" = ")
            && k.trim() == key
        {
            return Some((v.trim().to_owned(), origin.trim().to_owned()));
        }
    }
    None
}

struct Case {
    what: &'static str,
    file: &'static str,
    env: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    section: &'static str,
    key: &'static str,
    value: &'static str,
    /// The origin's start; `file` becomes `file PATH:LINE`.
    origin: &'static str,
}

#[test]
fn config_precedence_flags_then_environment_then_file_then_defaults() {
    let cases = [
        Case {
            what: "built-in default",
            file: "",
            env: &[],
            args: &[],
            section: "",
            key: "tail-bytes",
            value: "\"64MiB\"",
            origin: "default",
        },
        Case {
            what: "file over default",
            file: "retain = 5\nretain-bytes = \"1GiB\"\n",
            env: &[],
            args: &[],
            section: "",
            key: "retain-bytes",
            value: "\"1GiB\"",
            origin: "file:2",
        },
        Case {
            what: "a [serve] table is the top level",
            file: "[serve]\nretain-bytes = \"2GiB\"\n",
            env: &[],
            args: &[],
            section: "",
            key: "retain-bytes",
            value: "\"2GiB\"",
            origin: "file:2",
        },
        Case {
            what: "environment over file",
            file: "retain-bytes = \"1GiB\"\n",
            env: &[("LPCMON_RETAIN_BYTES", "3MiB")],
            args: &[],
            section: "",
            key: "retain-bytes",
            value: "\"3MiB\"",
            origin: "environment LPCMON_RETAIN_BYTES",
        },
        Case {
            what: "flag over environment and file",
            file: "retain-bytes = \"1GiB\"\n",
            env: &[("LPCMON_RETAIN_BYTES", "3MiB")],
            args: &["--retain-bytes", "7KiB"],
            section: "",
            key: "retain-bytes",
            value: "\"7KiB\"",
            origin: "command line",
        },
        Case {
            what: "a declared variable (LPCMON_TOKEN) layers too",
            file: "token = \"from-file\"\n",
            env: &[("LPCMON_TOKEN", "from-env")],
            args: &[],
            section: "",
            key: "token",
            value: "\"(secret, not shown)\"",
            origin: "environment LPCMON_TOKEN",
        },
        Case {
            what: "subcommand table",
            file: "[loadgen]\nrate = 5\nsize = \"1KiB\"\n",
            env: &[],
            args: &[],
            section: "loadgen",
            key: "size",
            value: "\"1KiB\"",
            origin: "file:3",
        },
        Case {
            what: "subcommand environment over its table",
            file: "[loadgen]\nrate = 5\n",
            env: &[("LPCMON_LOADGEN_RATE", "9")],
            args: &[],
            section: "loadgen",
            key: "rate",
            value: "9",
            origin: "environment LPCMON_LOADGEN_RATE",
        },
        Case {
            what: "a shared declared variable",
            file: "[tail]\nurl = \"http://127.0.0.1:1\"\n",
            env: &[("LPCMON_URL", "http://127.0.0.1:2")],
            args: &[],
            section: "tail",
            key: "url",
            value: "\"http://127.0.0.1:2\"",
            origin: "environment LPCMON_URL",
        },
        Case {
            what: "a switch from the environment",
            file: "[status]\njson = false\n",
            env: &[("LPCMON_STATUS_JSON", "yes")],
            args: &[],
            section: "status",
            key: "json",
            value: "true",
            origin: "environment LPCMON_STATUS_JSON",
        },
        Case {
            what: "durations from the file",
            file: "[status]\ninterval = \"500ms\"\n",
            env: &[],
            args: &[],
            section: "status",
            key: "interval",
            value: "\"500ms\"",
            origin: "file:2",
        },
        Case {
            what: "global switch from the file",
            file: "debug = false\nlog-format = \"json\"\n",
            env: &[],
            args: &[],
            section: "",
            key: "log-format",
            value: "\"json\"",
            origin: "file:2",
        },
        Case {
            what: "repeated flag as an array",
            file: "[tail]\nkind = [\"loss\", \"process.exec\"]\n",
            env: &[],
            args: &[],
            section: "tail",
            key: "kind",
            value: "[\"loss\", \"process.exec\"]",
            origin: "file:2",
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    for case in cases {
        let path = write_config(dir.path(), case.file);
        let mut cmd = lpcmon();
        cmd.arg("--config")
            .arg(&path)
            .args(case.args)
            .args(["config", "show"]);
        for (k, v) in case.env {
            cmd.env(k, v);
        }
        let (code, out, err) = run(&mut cmd);
        assert_eq!(code, 0, "{}: {err}", case.what);
        let (value, origin) = shown(&out, case.section, case.key)
            .unwrap_or_else(|| panic!("{}: no {} in\n{out}", case.what, case.key));
        let expected_origin = match case.origin.strip_prefix("file:") {
            Some(line) => format!("file {}:{line}", path.display()),
            None => case.origin.to_owned(),
        };
        assert_eq!(
            (value.as_str(), origin.as_str()),
            (case.value, expected_origin.as_str()),
            "{}:\n{out}",
            case.what
        );
        assert!(
            !out.contains("from-env") && !out.contains("from-file"),
            "a secret was printed:\n{out}"
        );
    }
}

#[test]
fn the_file_layer_reaches_the_running_command() {
    // `status` against a closed port fails to connect whatever the file says, but it must be
    // the file's URL it tried.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_config(
        dir.path(),
        &format!("[status]\nurl = \"http://127.0.0.1:{port}\"\n"),
    );
    let (code, _, err) = run(lpcmon().arg("--config").arg(&path).arg("status"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn help_shows_the_defaults_the_file_sets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "retain = 5\n[loadgen]\nrate = 7\n");
    let (code, out, _) = run(lpcmon().arg("--config").arg(&path).arg("--help"));
    assert_eq!(code, 0);
    assert!(out.contains("[default: 5]"), "{out}");
    let (code, out, _) = run(lpcmon().env("LPCMON_CONFIG", &path).args(["loadgen", "-h"]));
    assert_eq!(code, 0);
    assert!(out.contains("[default: 7]"), "{out}");
}

#[test]
fn bad_config_files_are_usage_errors_that_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "listen = \"127.0.0.1:7878\"\n\nretain_bytes = 5\n",
            ":3:",
            "unknown key `retain_bytes`",
        ),
        (
            "[loadgen]\nrate = 5\nlisten = \"x\"\n",
            ":3:",
            "unknown key `listen` in [loadgen]",
        ),
        ("retain-bytes = \"lots\"\n", ":1:", "is not a size"),
        ("[status]\ninterval = 30\n", ":2:", "is not a duration"),
        ("debug = \"yes\"\n", ":1:", "is a switch"),
        ("retain = [1, 2]\n", ":1:", "cannot be a array"),
        ("retain = \n", "TOML", ""),
    ];
    for (body, line, message) in cases {
        let path = write_config(dir.path(), body);
        let (code, _, err) = run(lpcmon().arg("--config").arg(&path).args(["config", "show"]));
        assert_eq!(code, 2, "{body:?}: {err}");
        assert!(err.contains(line) && err.contains(message), "{body:?}: {err}");
        assert!(
            err.lines()
                .nth(1)
                .is_some_and(|l| l.trim_start().starts_with("hint:")),
            "{err}"
        );
    }
    let (code, _, err) = run(lpcmon().args(["--config", "/nonexistent/lpcmon.toml", "config", "show"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/lpcmon.toml"), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn windows_only_flags_are_hidden_and_refused_on_linux() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_config(dir.path(), "");
    for help in [&["--help"][..], &["serve", "--help"]] {
        let (code, out, _) = run(lpcmon().arg("--config").arg(&empty).args(help));
        assert_eq!(code, 0);
        for flag in [
            "--port-api",
            "--allow-administrators",
            "--allow-user-mode-producers",
        ] {
            assert!(!out.contains(flag), "{help:?} lists {flag}");
        }
        assert!(out.contains("--sensor"), "{help:?} lacks the Linux --sensor");
    }
    // (arguments, environment, the remedy expected)
    type Refusal<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let refused: &[Refusal] = &[
        (
            &["serve", "--port-api", "lpc"],
            &[],
            "remove it from the command line",
        ),
        (&["--allow-administrators"], &[], "remove it"),
        (&["serve", "--allow-user-mode-producers"], &[], "remove it"),
        (
            &["serve"],
            &[("LPCMON_ALLOW_USER_MODE_PRODUCERS", "true")],
            "unset LPCMON_ALLOW_USER_MODE_PRODUCERS",
        ),
    ];
    for (args, env, remedy) in refused {
        let mut cmd = lpcmon();
        cmd.arg("--config").arg(&empty).args(*args);
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let (code, _, err) = run(&mut cmd);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("applies only on Windows") && err.contains(remedy),
            "{args:?}: {err}"
        );
    }
    let file = write_config(dir.path(), "port-api = \"lpc\"\n");
    let (code, _, err) = run(lpcmon().arg("--config").arg(&file).arg("serve"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":1:") && err.contains("applies only on Windows"),
        "{err}"
    );
}

#[test]
fn human_units_are_accepted_on_the_command_line_and_bad_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_config(dir.path(), "");
    let (code, out, err) = run(lpcmon().arg("--config").arg(&empty).args([
        "--retain-bytes",
        "1.5GiB",
        "--max-message",
        "608",
        "config",
        "show",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(shown(&out, "", "retain-bytes").unwrap().0, "\"1.5GiB\"");
    assert_eq!(shown(&out, "", "max-message").unwrap().0, "608");
    let (code, _, err) =
        run(lpcmon()
            .arg("--config")
            .arg(&empty)
            .args(["--retain-bytes", "64 parsecs", "config", "show"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a size"), "{err}");
    let (code, _, err) = run(lpcmon()
        .arg("--config")
        .arg(&empty)
        .args(["status", "--interval", "2"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a duration"), "{err}");
}

#[test]
fn exit_codes_say_what_kind_of_failure_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_config(dir.path(), "");
    // 0: success.
    assert_eq!(
        run(lpcmon().arg("--config").arg(&empty).args(["config", "show"])).0,
        0
    );
    assert_eq!(run(lpcmon().arg("--help")).0, 0);
    // 2: usage.
    assert_eq!(run(lpcmon().args(["--no-such-flag"])).0, 2);
    assert_eq!(
        run(lpcmon()
            .arg("--config")
            .arg(&empty)
            .args(["loadgen", "--size", "1"]))
        .0,
        2
    );
    // 3: could not connect, to HTTP or to the event port.
    let closed = format!("http://127.0.0.1:{}", free_port());
    for sub in ["status", "tail"] {
        let (code, _, err) = run(lpcmon().arg("--config").arg(&empty).args([sub, "--url", &closed]));
        assert_eq!(code, 3, "{sub}: {err}");
        assert!(err.contains("hint: is `lpcmon serve` running"), "{sub}: {err}");
    }
    let socket = dir.path().join("nobody-here.sock");
    let (code, out, err) = run(lpcmon()
        .arg("--config")
        .arg(&empty)
        .args(["loadgen", "--count", "3", "--connect"])
        .arg(&socket)
        .env("RUST_LOG", "error"));
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("\"sent\":0"), "the report is still printed: {out}");
    assert!(err.contains("sent none of 3 events"), "{err}");
}

#[test]
fn a_busy_address_is_two_lines_without_a_backtrace_unless_debug() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_config(dir.path(), "");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let serve = |debug: bool| {
        let mut cmd = lpcmon();
        cmd.arg("--config").arg(&empty).args([
            "serve", "--store", "memory", "--sensor", "none", "--listen", &addr, "--port",
        ]);
        cmd.arg(dir.path().join(if debug { "b.sock" } else { "a.sock" }));
        if debug {
            cmd.arg("--debug");
        }
        // Many shells set this; it must not turn a user error into a stack dump.
        cmd.env("RUST_BACKTRACE", "1").env("RUST_LOG", "error");
        run(&mut cmd)
    };
    let (code, _, err) = serve(false);
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("error: cannot listen on") && lines[0].contains(&addr),
        "{err}"
    );
    assert!(
        lines[1].contains("hint:") && lines[1].contains("--listen"),
        "{err}"
    );
    let (code, _, err) = serve(true);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("backtrace"), "--debug shows the backtrace: {err}");
}

#[test]
fn man_page_and_completions_come_from_the_same_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_config(dir.path(), "");
    let (code, man, err) = run(lpcmon().arg("--config").arg(&empty).arg("man"));
    assert_eq!(code, 0, "{err}");
    for needle in [
        ".TH lpcmon 1",
        "EXIT STATUS",
        "could not connect",
        "retain\\-bytes",
        "LPCMON_RETAIN_BYTES",
        "/etc/lpcmon/lpcmon.toml",
        "status",
        "tail",
    ] {
        assert!(man.contains(needle), "man page lacks {needle}");
    }
    #[cfg(target_os = "linux")]
    assert!(
        !man.contains("port\\-api"),
        "the Linux man page lists a Windows flag"
    );
    for (shell, needle) in [
        ("bash", "_lpcmon()"),
        ("zsh", "#compdef lpcmon"),
        ("fish", "complete -c lpcmon"),
    ] {
        let (code, out, err) = run(lpcmon().arg("--config").arg(&empty).args(["completions", shell]));
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains(needle) && out.contains("retain-bytes") && out.contains("tail"),
            "{shell}"
        );
    }
}

/// The README's command-line section is the real `-h` of each command. After changing a flag,
/// `LPCMON_BLESS=1 cargo test -p lpcmon --test cli readme` rewrites it.
#[cfg(target_os = "linux")]
#[test]
fn readme_command_line_section_is_the_real_help() {
    const BEGIN: &str = "<!-- generated from `lpcmon -h`: begin -->\n";
    const END: &str = "<!-- generated from `lpcmon -h`: end -->\n";
    let dir = tempfile::tempdir().unwrap();
    let empty = write_config(dir.path(), "");
    let mut generated = String::new();
    for sub in [&[][..], &["status"], &["tail"], &["loadgen"], &["sensor"]] {
        let (code, out, err) = run(lpcmon().arg("--config").arg(&empty).args(sub).arg("-h"));
        assert_eq!(code, 0, "{err}");
        let out = out.replace(&format!("{}", empty.display()), "PATH");
        generated.push_str(&format!(
            "```text\n$ lpcmon {}-h\n{}```\n",
            sub.iter().map(|s| format!("{s} ")).collect::<String>(),
            out
        ));
    }
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let start = readme
        .find(BEGIN)
        .expect("README lacks the generated-help begin marker")
        + BEGIN.len();
    let end = readme
        .find(END)
        .expect("README lacks the generated-help end marker");
    if std::env::var_os("LPCMON_BLESS").is_some() {
        std::fs::write(
            &readme_path,
            format!("{}{generated}{}", &readme[..start], &readme[end..]),
        )
        .unwrap();
        return;
    }
    assert!(
        readme[start..end] == generated,
        "README.md's command-line section differs from the real help; run \
         `LPCMON_BLESS=1 cargo test -p lpcmon --test cli readme` and commit README.md"
    );
}
