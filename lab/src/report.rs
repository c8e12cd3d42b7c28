//! `lpcmon lab report DIR`: `report.html` (one self-contained file, charts inline as SVG) and
//! `report.md` (the same tables, charts as the SVG files beside it), and, with a baseline, the
//! ratios against it with regressions past the spread flagged.
//!
//! Charts are drawn with plotters' SVG backend. The document is built once as blocks and
//! rendered to both formats, so they cannot disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::results::CellResult;

/// Files `write` creates in the results directory.
pub const HTML: &str = "report.html";
pub const MD: &str = "report.md";

enum Block {
    Heading(String),
    Para(String),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Chart {
        file: String,
        title: String,
        svg: String,
    },
}

/// min, median, max.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Spread {
            min: v.first().copied().unwrap_or(0.0),
            median,
            max: v.last().copied().unwrap_or(0.0),
        }
    }

    fn show(&self, digits: usize) -> String {
        if (self.max - self.min).abs() < f64::EPSILON {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} ({:.digits$}–{:.digits$})",
                self.median, self.min, self.max
            )
        }
    }
}

/// The repeats of one cell.
pub struct Group<'a> {
    pub first: &'a CellResult,
    pub cells: Vec<&'a CellResult>,
}

impl Group<'_> {
    pub fn spread(&self, f: impl Fn(&CellResult) -> f64) -> Spread {
        Spread::of(self.cells.iter().map(|c| f(c)))
    }

    /// The series a chart draws this group in: the transport, and the mode if not datagram.
    fn series(&self) -> String {
        if self.first.mode == "datagram" {
            self.first.transport.clone()
        } else {
            format!("{} ({})", self.first.transport, self.first.mode)
        }
    }
}

/// Groups repeats, in first-seen order.
pub fn groups(results: &[CellResult]) -> Vec<Group<'_>> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, Vec<&CellResult>> = BTreeMap::new();
    for r in results {
        let g = r.group();
        if !map.contains_key(&g) {
            order.push(g.clone());
        }
        map.entry(g).or_default().push(r);
    }
    order
        .into_iter()
        .map(|g| {
            let cells = map.remove(&g).unwrap_or_default();
            Group {
                first: cells[0],
                cells,
            }
        })
        .collect()
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type Series = Vec<(String, Vec<(f64, f64)>)>;

/// One chart: lines with points per series. Log axes where asked; `max_x` labels the
/// stand-in x value of the `max` rate.
struct ChartSpec<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    log_x: bool,
    log_y: bool,
    max_x: Option<f64>,
    /// The legend's corner: upper left, else lower left (where the curves are not).
    legend_up: bool,
}

fn draw(spec: &ChartSpec<'_>, series: &Series) -> anyhow::Result<String> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .filter(|&(x, y)| (!spec.log_x || x > 0.0) && (!spec.log_y || y > 0.0))
        .collect();
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &(x, _)| (a.min(x), b.max(x)));
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &(_, y)| (a.min(y), b.max(y)));
    if pts.is_empty() {
        (x0, x1, y0, y1) = (1.0, 10.0, 1.0, 10.0);
    }
    if spec.log_x {
        (x0, x1) = (x0 / 1.5, x1 * 1.5);
    } else {
        let pad = ((x1 - x0) * 0.05).max(1.0);
        (x0, x1) = (x0 - pad, x1 + pad);
    }
    if spec.log_y {
        (y0, y1) = (y0 / 2.0, y1 * 2.0);
    } else {
        (y0, y1) = (0.0f64.min(y0), (y1 * 1.1).max(1.0));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(spec.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(72);
        let max_x = spec.max_x;
        let x_fmt = move |x: &f64| match max_x {
            Some(m) if (x / m - 1.0).abs() < 0.01 => "max".to_owned(),
            _ => human(*x),
        };
        let y_fmt = |y: &f64| human(*y);
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(spec.x_desc)
                    .y_desc(spec.y_desc)
                    .x_label_formatter(&x_fmt)
                    .y_label_formatter(&y_fmt)
                    .light_line_style(WHITE.mix(0.0))
                    .draw()
                    .map_err(plot_err)?;
                for (i, (name, points)) in series.iter().enumerate() {
                    let color = COLORS[i % COLORS.len()];
                    let points: Vec<(f64, f64)> = points
                        .iter()
                        .copied()
                        .filter(|&(x, y)| (!spec.log_x || x > 0.0) && (!spec.log_y || y > 0.0))
                        .collect();
                    chart
                        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                        .map_err(plot_err)?
                        .label(name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(plot_err)?;
                }
                // The `max` rate has no number; name its column where the points are.
                if let Some(m) = spec.max_x {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            "max",
                            (m, y0 + (y1 - y0) * 0.03),
                            ("sans-serif", 13).into_font().color(&BLACK),
                        )))
                        .map_err(plot_err)?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .position(if spec.legend_up {
                        SeriesLabelPosition::UpperLeft
                    } else {
                        SeriesLabelPosition::LowerLeft
                    })
                    .draw()
                    .map_err(plot_err)?;
            }};
        }
        match (spec.log_x, spec.log_y) {
            (true, true) => body!(
                builder
                    .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                    .map_err(plot_err)?
            ),
            (true, false) => body!(
                builder
                    .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                    .map_err(plot_err)?
            ),
            (false, true) => body!(
                builder
                    .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                    .map_err(plot_err)?
            ),
            (false, false) => body!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(plot_err)?),
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart failed: {e}")
}

/// 1234567 → "1.2M", 0.5 → "0.5".
fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Series of `y` against size, one per transport, from the groups `keep` selects.
fn by_size(
    groups: &[Group<'_>],
    keep: impl Fn(&CellResult) -> bool,
    y: impl Fn(&Group<'_>) -> f64,
) -> Series {
    // series -> experiment -> points; a series is drawn from the experiment that swept the
    // most sizes, so a single-size cell of another experiment does not bend its curve.
    type Points = Vec<(f64, f64)>;
    let mut map: BTreeMap<String, BTreeMap<&str, Points>> = BTreeMap::new();
    for g in groups.iter().filter(|g| keep(g.first)) {
        map.entry(g.series())
            .or_default()
            .entry(g.first.experiment.as_str())
            .or_default()
            .push((g.first.size as f64, y(g)));
    }
    map.into_iter()
        .filter_map(|(name, experiments)| {
            let mut pts = experiments.into_values().max_by_key(|p| p.len())?;
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            pts.dedup_by(|a, b| a.0 == b.0);
            (pts.len() >= 2).then_some((name, pts))
        })
        .collect()
}

/// Cells that measure a ceiling: `max` rate for a duration.
fn is_ceiling(c: &CellResult) -> bool {
    c.is_max_rate() && !c.is_burst()
}

/// Cells paced at a rate for a duration (latency without queueing behind `max`).
fn is_paced(c: &CellResult) -> bool {
    !c.is_max_rate() && !c.is_burst()
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Loss and reordering against offered rate at one size: the seed designs against the port.
fn rate_series(groups: &[Group<'_>]) -> Option<(Series, Series, f64, usize)> {
    // The experiment that offered the most distinct rates (for a time, not a burst).
    let mut rates: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for g in groups.iter().filter(|g| !g.first.is_burst()) {
        rates
            .entry(g.first.experiment.as_str())
            .or_default()
            .insert(g.first.rate.as_str());
    }
    let (experiment, offered) = rates.into_iter().max_by_key(|(_, r)| r.len())?;
    if offered.len() < 2 {
        return None;
    }
    let rated: Vec<&Group<'_>> = groups
        .iter()
        .filter(|g| !g.first.is_burst() && g.first.experiment == experiment)
        .collect();
    let size = rated.first()?.first.size;
    let top = rated
        .iter()
        .filter_map(|g| g.first.rate_value())
        .max()
        .unwrap_or(1000) as f64;
    let max_x = top * 3.0;
    let mut loss: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut reorder: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for g in rated.iter().filter(|g| g.first.size == size) {
        let x = g.first.rate_value().map_or(max_x, |r| r as f64);
        let l = g.spread(|c| pct(c.lost_total, c.sent)).median;
        let r = g.spread(|c| pct(c.reordered, c.received)).median;
        loss.entry(g.series()).or_default().push((x, l));
        reorder.entry(g.series()).or_default().push((x, r));
    }
    let sort = |m: BTreeMap<String, Vec<(f64, f64)>>| -> Series {
        m.into_iter()
            .map(|(k, mut v)| {
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                (k, v)
            })
            .collect()
    };
    Some((sort(loss), sort(reorder), max_x, size))
}

/// The columns that name a cell, first in every table of cells.
const CELL_COLUMNS: [&str; 6] = ["experiment", "transport", "mode", "size", "rate", "load"];

fn cell_columns(c: &CellResult) -> Vec<String> {
    vec![
        c.experiment.clone(),
        c.transport.clone(),
        c.mode.clone(),
        c.size.to_string(),
        c.rate.clone(),
        c.load.clone(),
    ]
}

/// `CELL_COLUMNS` followed by `rest`.
fn header(rest: &[&str]) -> Vec<String> {
    CELL_COLUMNS.iter().chain(rest).map(|h| (*h).to_owned()).collect()
}

fn lost_causes(c: &CellResult) -> String {
    if c.lost.is_empty() {
        "0".into()
    } else {
        c.lost
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Builds the report's blocks.
fn build(results: &[CellResult], baseline: Option<&[CellResult]>) -> anyhow::Result<Vec<Block>> {
    let groups = groups(results);
    let mut doc = vec![
        Block::Heading("lpcmon lab report".into()),
        Block::Para(format!(
            "{} cells ({} distinct, repeats give min–median–max). Every figure is from `results.jsonl`; \
             a cell's events satisfy sent = received + lost exactly unless its `accounted` column says no.",
            results.len(),
            groups.len()
        )),
    ];
    let unaccounted = results.iter().filter(|r| !r.accounted).count();
    doc.push(Block::Para(if unaccounted == 0 {
        "Accounting: every cell has sent = received + lost by cause.".into()
    } else {
        format!("Accounting: {unaccounted} cells do NOT balance (see the table).")
    }));

    // Charts against size, log-log.
    let paced_any = groups.iter().any(|g| is_paced(g.first));
    let lat_keep = |c: &CellResult| if paced_any { is_paced(c) } else { is_ceiling(c) };
    let lat_note = if paced_any { "paced" } else { "max rate" };
    type Metric = fn(&CellResult) -> f64;
    type Keep<'k> = &'k dyn Fn(&CellResult) -> bool;
    /// File, title, y axis, which cells, what value.
    type SizeChart<'k> = (&'static str, String, String, Keep<'k>, Metric);
    let charts: [SizeChart<'_>; 5] = [
        (
            "throughput.svg",
            "Throughput vs event size, offered rate max".into(),
            "events delivered / s".into(),
            &is_ceiling,
            |c| c.msgs_per_sec,
        ),
        (
            "latency-p50.svg",
            format!("Latency p50 vs size ({lat_note})"),
            "p50 latency (µs)".into(),
            &lat_keep,
            |c| c.latency_us.p50,
        ),
        (
            "latency-p99.svg",
            format!("Latency p99 vs size ({lat_note})"),
            "p99 latency (µs)".into(),
            &lat_keep,
            |c| c.latency_us.p99,
        ),
        (
            "cpu-producer.svg",
            "CPU per event, producer side (max rate)".into(),
            "CPU µs per event".into(),
            &is_ceiling,
            |c| c.cpu_us_per_msg_producer,
        ),
        (
            "cpu-consumer.svg",
            "CPU per event, consumer side (max rate)".into(),
            "CPU µs per event".into(),
            &is_ceiling,
            |c| c.cpu_us_per_msg_consumer,
        ),
    ];
    for (file, title, y_desc, keep, metric) in charts {
        let series = by_size(&groups, keep, |g| g.spread(metric).median);
        if series.is_empty() {
            continue;
        }
        let svg = draw(
            &ChartSpec {
                title: &title,
                x_desc: "event size (bytes)",
                y_desc: &y_desc,
                log_x: true,
                log_y: true,
                max_x: None,
                legend_up: false,
            },
            &series,
        )?;
        doc.push(Block::Chart {
            file: file.into(),
            title,
            svg,
        });
    }
    if let Some((loss, reorder, max_x, size)) = rate_series(&groups) {
        for (what, file, s) in [
            ("lost", "loss.svg", &loss),
            ("reordered", "reorder.svg", &reorder),
        ] {
            let title = format!("Events {what} vs offered rate ({size} B)");
            doc.push(Block::Chart {
                file: file.into(),
                title: title.clone(),
                svg: draw(
                    &ChartSpec {
                        title: &title,
                        x_desc: "offered rate (events/s)",
                        y_desc: &format!("% of events {what}"),
                        log_x: true,
                        log_y: false,
                        max_x: Some(max_x),
                        legend_up: true,
                    },
                    s,
                )?,
            });
        }
    }

    // Bursts: the seed designs' loss, exactly.
    let bursts: Vec<&Group<'_>> = groups.iter().filter(|g| g.first.is_burst()).collect();
    if !bursts.is_empty() {
        doc.push(Block::Heading("Bursts".into()));
        doc.push(Block::Para(
            "Each burst sends its events back to back (offered rate max). Lost and reordered are exact counts; \
             with repeats, the median and the spread."
                .into(),
        ));
        doc.push(Block::Table {
            header: [
                "transport",
                "mode",
                "size",
                "burst",
                "sent",
                "received",
                "lost",
                "lost by cause (first run)",
                "reordered",
            ]
            .map(String::from)
            .to_vec(),
            rows: bursts
                .iter()
                .map(|g| {
                    vec![
                        g.first.transport.clone(),
                        g.first.mode.clone(),
                        g.first.size.to_string(),
                        g.first.load.clone(),
                        g.spread(|c| c.sent as f64).show(0),
                        g.spread(|c| c.received as f64).show(0),
                        g.spread(|c| c.lost_total as f64).show(0),
                        lost_causes(g.first),
                        g.spread(|c| c.reordered as f64).show(0),
                    ]
                })
                .collect(),
        });
    }

    // Summary per cell group.
    doc.push(Block::Heading("Cells (median, min–max over repeats)".into()));
    doc.push(Block::Table {
        header: header(&[
            "runs",
            "frag/msg",
            "events/s",
            "MB/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "CPU µs/ev prod",
            "CPU µs/ev cons",
            "lost",
            "reordered",
        ]),
        rows: groups
            .iter()
            .map(|g| {
                let f = g.first;
                let mut row = cell_columns(f);
                row.extend([
                    g.cells.len().to_string(),
                    f.fragments_per_message.to_string(),
                    g.spread(|c| c.msgs_per_sec).show(0),
                    g.spread(|c| c.mb_per_sec).show(1),
                    g.spread(|c| c.latency_us.p50).show(1),
                    g.spread(|c| c.latency_us.p99).show(1),
                    g.spread(|c| c.latency_us.p999).show(1),
                    g.spread(|c| c.latency_us.max).show(0),
                    g.spread(|c| c.cpu_us_per_msg_producer).show(2),
                    g.spread(|c| c.cpu_us_per_msg_consumer).show(2),
                    g.spread(|c| c.lost_total as f64).show(0),
                    g.spread(|c| c.reordered as f64).show(0),
                ]);
                row
            })
            .collect(),
    });

    if let Some(base) = baseline {
        doc.push(Block::Heading("Against the baseline".into()));
        let (rows, regressions) = compare(results, base);
        doc.push(Block::Para(format!(
            "Ratios are this run's median over the baseline's. A regression is flagged only when the whole spread \
             is worse: this run's best is worse than the baseline's worst. {regressions} regressions."
        )));
        doc.push(Block::Table {
            header: [
                "cell",
                "events/s ratio",
                "p99 ratio",
                "CPU/ev ratio",
                "lost (base → now)",
                "verdict",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        });
    }

    // Every cell, then the machine.
    doc.push(Block::Heading("Every cell".into()));
    doc.push(Block::Table {
        header: header(&[
            "repeat",
            "limit",
            "frag/msg",
            "sent",
            "received",
            "lost",
            "lost by cause",
            "accounted",
            "reordered",
            "dup",
            "s",
            "events/s",
            "MB/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max µs",
            "CPU prod",
            "CPU cons",
            "load before → after",
        ]),
        rows: results
            .iter()
            .map(|r| {
                let l = &r.latency_us;
                let mut row = cell_columns(r);
                row.extend([
                    r.repeat.to_string(),
                    r.limit.to_string(),
                    r.fragments_per_message.to_string(),
                    r.sent.to_string(),
                    r.received.to_string(),
                    r.lost_total.to_string(),
                    lost_causes(r),
                    if r.accounted { "yes".into() } else { "NO".into() },
                    r.reordered.to_string(),
                    r.duplicates.to_string(),
                    format!("{:.3}", r.seconds),
                    format!("{:.0}", r.msgs_per_sec),
                    format!("{:.1}", r.mb_per_sec),
                    format!("{:.1}", l.p50),
                    format!("{:.1}", l.p90),
                    format!("{:.1}", l.p99),
                    format!("{:.1}", l.p999),
                    format!("{:.0}", l.max),
                    format!("{:.2}", r.cpu_us_per_msg_producer),
                    format!("{:.2}", r.cpu_us_per_msg_consumer),
                    format!("{:.2} → {:.2}", r.machine.load_before[0], r.machine.load_after[0]),
                ]);
                row
            })
            .collect(),
    });
    doc.push(Block::Heading("Machine".into()));
    let mut machines: Vec<String> = results
        .iter()
        .map(|r| format!("{} {}, {} CPUs", r.machine.os, r.machine.kernel, r.machine.cpus))
        .collect();
    machines.sort();
    machines.dedup();
    let loads = Spread::of(results.iter().map(|r| r.machine.load_before[0]));
    doc.push(Block::Para(format!(
        "{}. 1-minute load average before the cells: {} (median, min–max).",
        machines.join("; "),
        loads.show(2)
    )));
    Ok(doc)
}

/// Rows comparing each cell group with the baseline's group of the same name, and how many
/// regressed past the spread.
pub fn compare(results: &[CellResult], baseline: &[CellResult]) -> (Vec<Vec<String>>, usize) {
    let now = groups(results);
    let base = groups(baseline);
    let base: BTreeMap<String, &Group<'_>> = base.iter().map(|g| (g.first.group(), g)).collect();
    let mut rows = Vec::new();
    let mut regressions = 0;
    for g in &now {
        let Some(b) = base.get(&g.first.group()) else {
            continue;
        };
        let tput = (g.spread(|c| c.msgs_per_sec), b.spread(|c| c.msgs_per_sec));
        let p99 = (g.spread(|c| c.latency_us.p99), b.spread(|c| c.latency_us.p99));
        let cpu_of = |c: &CellResult| c.cpu_us_per_msg_producer + c.cpu_us_per_msg_consumer;
        let cpu = (g.spread(cpu_of), b.spread(cpu_of));
        let lost = (
            g.spread(|c| c.lost_total as f64),
            b.spread(|c| c.lost_total as f64),
        );
        let ratio = |(n, b): (Spread, Spread)| {
            if b.median > 0.0 {
                n.median / b.median
            } else {
                f64::NAN
            }
        };
        let mut worse = Vec::new();
        if tput.0.max < tput.1.min {
            worse.push("throughput");
        }
        if p99.0.min > p99.1.max {
            worse.push("p99");
        }
        if cpu.0.min > cpu.1.max {
            worse.push("CPU");
        }
        if lost.0.min > lost.1.max {
            worse.push("loss");
        }
        if !worse.is_empty() {
            regressions += 1;
        }
        rows.push(vec![
            g.first.group(),
            format!("{:.2}", ratio(tput)),
            format!("{:.2}", ratio(p99)),
            format!("{:.2}", ratio(cpu)),
            format!("{:.0} → {:.0}", lost.1.median, lost.0.median),
            if worse.is_empty() {
                "ok".into()
            } else {
                format!("REGRESSION: {}", worse.join(", "))
            },
        ]);
    }
    (rows, regressions)
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn render_md(doc: &[Block]) -> String {
    let mut out = String::new();
    let mut first = true;
    for b in doc {
        match b {
            Block::Heading(h) => {
                let _ = writeln!(out, "{} {h}\n", if first { "#" } else { "##" });
                first = false;
            }
            Block::Para(p) => {
                let _ = writeln!(out, "{p}\n");
            }
            Block::Table { header, rows } => {
                let _ = writeln!(
                    out,
                    "| {} |",
                    header
                        .iter()
                        .map(|h| md_escape(h))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
                let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
                for r in rows {
                    let _ = writeln!(
                        out,
                        "| {} |",
                        r.iter().map(|c| md_escape(c)).collect::<Vec<_>>().join(" | ")
                    );
                }
                out.push('\n');
            }
            Block::Chart { file, title, .. } => {
                let _ = writeln!(out, "![{title}]({file})\n");
            }
        }
    }
    out
}

fn render_html(doc: &[Block]) -> String {
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>lpcmon lab report</title>\n<style>\
         body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;font-size:12px;margin:1em 0}\
         td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}\
         th{background:#f3f3f3}td:nth-child(-n+3){text-align:left}\
         figure{display:inline-block;margin:0.5em}figcaption{font-size:13px;color:#555}\
         </style></head><body>\n",
    );
    let mut first = true;
    for b in doc {
        match b {
            Block::Heading(h) => {
                let tag = if first { "h1" } else { "h2" };
                first = false;
                let _ = writeln!(out, "<{tag}>{}</{tag}>", html_escape(h));
            }
            Block::Para(p) => {
                let _ = writeln!(out, "<p>{}</p>", html_escape(p));
            }
            Block::Table { header, rows } => {
                out.push_str("<table><thead><tr>");
                for h in header {
                    let _ = write!(out, "<th>{}</th>", html_escape(h));
                }
                out.push_str("</tr></thead><tbody>\n");
                for r in rows {
                    out.push_str("<tr>");
                    for c in r {
                        let _ = write!(out, "<td>{}</td>", html_escape(c));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody></table>\n");
            }
            Block::Chart { title, svg, .. } => {
                let _ = writeln!(
                    out,
                    "<figure>{svg}<figcaption>{}</figcaption></figure>",
                    html_escape(title)
                );
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

/// Writes `report.html`, `report.md` and the charts' SVG files into `dir`. Returns the
/// baseline comparison's rows and regression count when a baseline is given.
pub fn write(
    dir: &Path,
    results: &[CellResult],
    baseline: Option<&[CellResult]>,
) -> anyhow::Result<Option<(Vec<Vec<String>>, usize)>> {
    let doc = build(results, baseline)?;
    for b in &doc {
        if let Block::Chart { file, svg, .. } = b {
            let path = dir.join(file);
            std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    let html = dir.join(HTML);
    std::fs::write(&html, render_html(&doc)).with_context(|| format!("cannot write {}", html.display()))?;
    let md = dir.join(MD);
    std::fs::write(&md, render_md(&doc)).with_context(|| format!("cannot write {}", md.display()))?;
    Ok(baseline.map(|b| compare(results, b)))
}
