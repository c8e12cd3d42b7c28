//! lpcmon-lab: `lpcmon lab`, reproducible experiments on the channels a kernel producer can use
//! to reach user mode, measured side by side on the same encoded lpcmon events, with exact loss.
//!
//! A plan ([`plan`]) is a TOML matrix of transports × modes × sizes × offered rates × load ×
//! repeats. The runner ([`runner`]) runs each cell through one [`transport::Transport`] (on
//! Linux: lpcmon's production path, a bare SEQPACKET socketpair, a FIFO, a shared-memory ring and
//! the inverted call; on Windows: ALPC, LPC, a named pipe and a section) and records what the
//! issue asks for ([`results`]): sent = received + lost by cause exactly, reordering,
//! throughput, latency percentiles, CPU per event on each side, fragments per event and the
//! machine. The report ([`report`]) draws it.
//!
//! The binary hooks [`LabArgs`] in as `lpcmon lab` and calls [`run`].

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

pub mod measure;
pub mod plan;
pub mod report;
pub mod results;
pub mod runner;
pub mod transport;

/// `lpcmon lab`: run experiments on LPC-like channels and draw them.
#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Run a plan (the default plan, --quick, or --plan FILE) into a results directory.
    Run(RunArgs),
    /// Write DIR/report.html and DIR/report.md from DIR/results.jsonl.
    Report(ReportArgs),
    /// The transports this OS has, with what each models and the keys it takes.
    List,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plan, a TOML file (see examples/lab/). Default: the built-in default plan.
    #[arg(long, value_name = "FILE.toml", conflicts_with = "quick")]
    pub plan: Option<PathBuf>,
    /// A short plan for CI: a max-rate cell at 200 B per transport and the seed designs' bursts.
    #[arg(long)]
    pub quick: bool,
    /// Where results.jsonl, results.csv and the report go.
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Run every cell N times (overrides the plan's repeat).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: Option<u32>,
    /// Continue an interrupted run: skip the cells DIR already holds (DIR defaults to --out).
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub resume: Option<Option<PathBuf>>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A results directory.
    pub dir: PathBuf,
    /// Another results directory to compare with: ratios, and regressions past the spread.
    #[arg(long, value_name = "DIR2")]
    pub baseline: Option<PathBuf>,
}

/// The plan file a run keeps beside its results, so `--resume` runs the same plan.
const PLAN_COPY: &str = "plan.toml";

/// Runs `lpcmon lab …`.
pub fn run(args: LabArgs) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Run(a) => run_plan(a),
        LabCommand::Report(a) => report_dir(&a.dir, a.baseline.as_deref()),
        LabCommand::List => {
            print!("{}", list());
            Ok(())
        }
    }
}

/// The text `lpcmon lab list` prints.
pub fn list() -> String {
    let mut out = format!("transports on {}:\n", transport::THIS_OS);
    for t in transport::available() {
        let modes: Vec<&str> = t.modes.iter().map(|m| m.name()).collect();
        out.push_str(&format!("\n  {:<13} modes: {}\n", t.name, modes.join(", ")));
        out.push_str(&format!("  {:<13} {}\n", "", t.models));
        for p in t.params {
            out.push_str(&format!("  {:<13}   {}={} ({})\n", "", p.key, p.default, p.help));
        }
    }
    let elsewhere: Vec<String> = transport::ALL
        .iter()
        .filter(|t| t.os != transport::THIS_OS)
        .map(|t| format!("{} ({})", t.name, t.os))
        .collect();
    if !elsewhere.is_empty() {
        out.push_str(&format!("\nother OSes: {}\n", elsewhere.join(", ")));
    }
    out
}

fn run_plan(a: RunArgs) -> anyhow::Result<()> {
    let (out, resume) = match (&a.resume, &a.out) {
        (Some(Some(dir)), _) => (dir.clone(), true),
        (Some(None), Some(out)) => (out.clone(), true),
        (None, Some(out)) => (out.clone(), false),
        (Some(None), None) | (None, None) => bail!("say where results go: --out DIR (or --resume DIR)"),
    };
    let kept = out.join(PLAN_COPY);
    let (name, text) = match (&a.plan, a.quick) {
        (Some(path), _) => (
            path.display().to_string(),
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the plan {}", path.display()))?,
        ),
        (None, true) => ("--quick".to_owned(), plan::QUICK_PLAN.to_owned()),
        (None, false) if resume && kept.exists() => (
            kept.display().to_string(),
            std::fs::read_to_string(&kept).with_context(|| format!("cannot read {}", kept.display()))?,
        ),
        (None, false) => ("the default plan".to_owned(), plan::DEFAULT_PLAN.to_owned()),
    };
    let cells = plan::parse(&name, &text, a.repeat)?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    runner::install_ctrl_c();
    let summary = runner::run_cells(&cells, &out, resume, &runner::CANCEL, !a.no_progress)?;
    if !kept.exists() {
        std::fs::write(&kept, &text).with_context(|| format!("cannot write {}", kept.display()))?;
    }
    report_dir(&out, None)?;
    eprintln!(
        "{} cells run, {} already done, {} failed{}; results in {}",
        summary.ran,
        summary.skipped,
        summary.failed.len(),
        if summary.interrupted {
            " (interrupted: finish with --resume)"
        } else {
            ""
        },
        out.display()
    );
    if !summary.failed.is_empty() {
        let names: Vec<String> = summary.failed.iter().map(|(k, e)| format!("{k}: {e}")).collect();
        bail!("{} cells failed:\n  {}", names.len(), names.join("\n  "));
    }
    Ok(())
}

/// Writes the CSV and the report for `dir`, comparing with `baseline` if given.
pub fn report_dir(dir: &Path, baseline: Option<&Path>) -> anyhow::Result<()> {
    let results = results::read(dir)?;
    if results.is_empty() {
        bail!(
            "{} holds no results (run `lpcmon lab run --out {}` first)",
            dir.display(),
            dir.display()
        );
    }
    let base = match baseline {
        Some(b) => {
            let r = results::read(b)?;
            if r.is_empty() {
                bail!("the baseline {} holds no results", b.display());
            }
            Some(r)
        }
        None => None,
    };
    results::write_csv(dir, &results)?;
    let comparison = report::write(dir, &results, base.as_deref())?;
    if let Some((rows, regressions)) = comparison {
        println!("cell\tevents/s ratio\tp99 ratio\tCPU ratio\tlost base -> now\tverdict");
        for r in &rows {
            println!("{}", r.join("\t"));
        }
        println!(
            "{} cells compared with {}, {regressions} regressions past the spread",
            rows.len(),
            baseline.map(|b| b.display().to_string()).unwrap_or_default()
        );
    }
    eprintln!("report: {}", dir.join(report::HTML).display());
    Ok(())
}
