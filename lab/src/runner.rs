//! Runs the cells of a plan one after another: a progress bar, each finished cell appended to
//! `results.jsonl` at once, Ctrl-C stopping between cells (the cell in flight is discarded, the
//! finished ones kept), and `--resume` skipping what a directory already holds.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::measure::Job;
use crate::plan::CellSpec;
use crate::results::{self, CellResult};
use crate::transport::Transport;

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub ran: usize,
    pub skipped: usize,
    pub failed: Vec<(String, String)>,
    pub interrupted: bool,
}

/// Set by Ctrl-C; the runner stops before the next cell.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

/// Makes the first Ctrl-C stop the run cleanly (the second one exits at once).
pub fn install_ctrl_c() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let spawned = std::thread::Builder::new().name("lab-ctrl-c".into()).spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nstopping after this cell (Ctrl-C again to quit at once); finished cells are kept"
                );
                CANCEL.store(true, Ordering::SeqCst);
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch for Ctrl-C");
    }
}

/// Runs `cells` into `out`. With `resume`, cells whose key is already recorded are skipped;
/// without it, a directory that already has results is refused rather than mixed into.
pub fn run_cells(
    cells: &[CellSpec],
    out: &Path,
    resume: bool,
    cancel: &'static AtomicBool,
    progress: bool,
) -> anyhow::Result<RunSummary> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let existing = results::read(out)?;
    if !resume && !existing.is_empty() {
        bail!(
            "{} already holds {} results; continue it with --resume, or choose another --out",
            out.display(),
            existing.len()
        );
    }
    let done: HashSet<String> = existing.into_iter().map(|r| r.key).collect();
    let todo: Vec<&CellSpec> = cells.iter().filter(|c| !done.contains(&c.key())).collect();
    let mut summary = RunSummary {
        skipped: cells.len() - todo.len(),
        ..RunSummary::default()
    };
    let bar = if progress {
        ProgressBar::with_draw_target(Some(todo.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} cells, eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    let mut open: BTreeMap<String, Box<dyn Transport>> = BTreeMap::new();
    for cell in todo {
        if cancel.load(Ordering::SeqCst) {
            summary.interrupted = true;
            break;
        }
        bar.set_message(cell.key());
        let name = cell.transport.to_string();
        let transport = open.entry(name).or_insert_with(|| cell.transport.open());
        let job = Job::new(cell.size, cell.rate, cell.load, cancel);
        let fragments = job.fragments(transport.limit());
        let mut machine = results::machine_now();
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let outcome = transport.run(&job, cell.mode);
        machine.load_after = results::load_average();
        if cancel.load(Ordering::SeqCst) {
            // The cell was cut short: its figures would mislead, so it is not kept.
            summary.interrupted = true;
            break;
        }
        match outcome {
            Ok(outcome) => {
                let result = CellResult::new(cell, &outcome, fragments, machine, started);
                if !result.accounted {
                    bar.println(format!(
                        "warning: {}: sent {} != received {} + lost {}",
                        result.key, result.sent, result.received, result.lost_total
                    ));
                }
                results::append(out, &result)?;
                summary.ran += 1;
            }
            Err(e) => {
                bar.println(format!("cell {} failed: {e}", cell.key()));
                summary.failed.push((cell.key(), e.to_string()));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(summary)
}
