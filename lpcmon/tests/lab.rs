//! `lpcmon lab` end to end, through the real binary: `lab run --quick` (what CI runs), every
//! cell balanced (sent = received + lost), the report covering every cell, `--resume`, `lab
//! report --baseline`, `lab list`, and the errors for a bad plan and a missing transport.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::{Command, Output};

fn lpcmon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lpcmon"))
        .args(args)
        .output()
        .expect("run lpcmon")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "lpcmon failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn quick_run_balances_every_cell_and_the_report_covers_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("quick");
    let d = dir.to_str().unwrap();
    let started = std::time::Instant::now();
    ok(&lpcmon(&["lab", "run", "--quick", "--out", d, "--no-progress"]));
    eprintln!("lab run --quick took {:.1} s", started.elapsed().as_secs_f64());

    let cells = records(&dir);
    let transports = ["unix", "unix-raw", "pipe", "shm", "request"];
    for t in transports {
        assert!(
            cells
                .iter()
                .any(|c| c["transport"] == t && c["size"] == 200 && c["rate"] == "max"),
            "no max cell at 200 B for {t}"
        );
    }
    for c in &cells {
        let lost: u64 = c["lost"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        let (sent, received) = (c["sent"].as_u64().unwrap(), c["received"].as_u64().unwrap());
        assert!(sent > 0, "{c}");
        assert_eq!(sent, received + lost, "sent != received + lost: {c}");
        assert_eq!(c["lost_total"].as_u64().unwrap(), lost, "{c}");
        assert_eq!(c["accounted"], true, "{c}");
        assert!(c["machine"]["cpus"].as_u64().unwrap() > 0, "{c}");
    }

    // The report: one row per cell in the HTML's and the Markdown's every-cell tables, and
    // the CSV has a line per cell.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), cells.len() + 1);
    assert!(
        html.contains("<svg") && !html.contains("src=\"http"),
        "charts are inline"
    );
    assert!(
        md.contains("![Throughput vs event size") && dir.join("throughput.svg").exists(),
        "{md}"
    );
    let every = &md[md.find("## Every cell").expect("every-cell table")..];
    for c in &cells {
        let row = format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            c["experiment"].as_str().unwrap(),
            c["transport"].as_str().unwrap(),
            c["mode"].as_str().unwrap(),
            c["size"],
            c["rate"].as_str().unwrap(),
            c["load"].as_str().unwrap(),
            c["repeat"]
        );
        assert!(every.contains(&row), "the report lacks {row}");
        assert!(html.contains(&format!("<td>{}</td>", c["transport"].as_str().unwrap())));
    }

    // Resuming a finished run runs nothing more; a fresh run into it is refused.
    let out = lpcmon(&["lab", "run", "--quick", "--resume", d, "--no-progress"]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("0 cells run, {} already done", cells.len()))
    );
    assert_eq!(records(&dir).len(), cells.len());
    let out = lpcmon(&["lab", "run", "--quick", "--out", d, "--no-progress"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    // A report against itself as the baseline: every ratio 1, no regression.
    let table = ok(&lpcmon(&["lab", "report", d, "--baseline", d]));
    assert!(
        table.contains(&format!("{} cells compared", cells.len())),
        "{table}"
    );
    assert!(table.contains(", 0 regressions"), "{table}");
    assert!(!table.contains("REGRESSION"), "{table}");
}

#[test]
fn list_and_plan_errors() {
    let list = ok(&lpcmon(&["lab", "list"]));
    for t in [
        "unix",
        "unix-raw",
        "pipe",
        "shm",
        "request",
        "slots=1024",
        "pending=64",
    ] {
        assert!(list.contains(t), "{list}");
    }
    assert!(list.contains("alpc (windows)"), "{list}");

    // A plan the lab refuses: its error, which must name the line and the key.
    let refused = |plan: &str| -> String {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bad.toml");
        std::fs::write(&path, plan).unwrap();
        let out = tmp.path().join("out");
        let out = lpcmon(&[
            "lab",
            "run",
            "--plan",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(
        "[[experiment]]\nname = \"x\"\ntransports = [\"lpc\"]\nsizes = [64]\nrates = [\"max\"]\nmessages = 10\n",
    );
    assert!(
        err.contains("line 3") && err.contains("transports") && err.contains("runs on windows"),
        "{err}"
    );
    assert!(err.contains("unix, unix-raw, pipe, shm, request"), "{err}");
    let err = refused("[[experiment]]\nname = \"x\"\nsize = [64]\n");
    assert!(err.contains("line 3") && err.contains("size"), "{err}");
}
