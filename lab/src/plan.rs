//! The experiment plan: a TOML matrix of transports × modes × sizes × offered rates × load ×
//! repeats, expanded into cells.
//!
//! ```toml
//! [defaults]
//! duration_ms = 250
//! repeat = 3
//!
//! [[experiment]]
//! name = "sizes"
//! transports = ["unix", "unix-raw", "shm:slots=1"]
//! sizes = [32, 608, 65536]
//! rates = ["max", 10000]
//! ```
//!
//! Every error names the line and the key: `toml`'s own errors do for syntax and unknown keys,
//! and values are kept with their spans so the lab's checks (an unknown transport, a size out of
//! range) can say where too.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use crate::measure::{MAX_EVENT_SIZE, MAX_EVENTS_PER_CELL, min_event_size};
use crate::transport::{self, TransportSpec};

/// The default plan, also shipped as `examples/lab/default.toml`.
pub const DEFAULT_PLAN: &str = include_str!("../../examples/lab/default.toml");
/// `--quick`: a `max` cell at 200 B for every transport, and bursts that show the seed
/// designs' loss. Runs in CI.
pub const QUICK_PLAN: &str = include_str!("../../examples/lab/quick.toml");

/// Offered rate: as fast as the producer can send, or events per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rate {
    Max,
    PerSecond(u64),
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSecond(r) => write!(f, "{r}"),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rate::Max => s.serialize_str("max"),
            Rate::PerSecond(r) => s.serialize_u64(*r),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"max\" or a positive number of events per second")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                match v {
                    "max" => Ok(Rate::Max),
                    other => other
                        .parse::<u64>()
                        .ok()
                        .filter(|&r| r > 0)
                        .map(Rate::PerSecond)
                        .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Rate, E> {
                u64::try_from(v)
                    .ok()
                    .filter(|&r| r > 0)
                    .map(Rate::PerSecond)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Rate, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
        }
        d.deserialize_any(V)
    }
}

/// How much a cell sends: for a time, or a fixed number of events (a burst at `max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Load {
    Duration(Duration),
    Messages(u64),
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Load::Duration(d) => write!(f, "{}ms", d.as_millis()),
            Load::Messages(n) => write!(f, "{n}msgs"),
        }
    }
}

/// How the producer hands over a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Fire and forget: the producer never waits for the consumer.
    Datagram,
    /// The producer waits for the consumer's reply to each message.
    Request,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Datagram => "datagram",
            Mode::Request => "request",
        }
    }
}

/// One cell of the matrix: everything that decides what is measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellSpec {
    pub experiment: String,
    pub transport: TransportSpec,
    pub mode: Mode,
    pub size: usize,
    pub rate: Rate,
    pub load: Load,
    /// 1-based repeat index.
    pub repeat: u32,
}

impl CellSpec {
    /// A stable name for the cell, used by `--resume` to skip what is done.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.experiment,
            self.transport,
            self.mode.name(),
            self.size,
            self.rate,
            self.load,
            self.repeat
        )
    }
}

/// A plan that failed to load, with where.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{file}: {message}")]
    Toml { file: String, message: String },
    #[error("{file} line {line}, key `{key}`: {message}")]
    Value {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{file}: the plan has no cells (add an [[experiment]] with transports, sizes and rates)")]
    Empty { file: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    duration_ms: Option<Spanned<u64>>,
    messages: Option<Spanned<u64>>,
    repeat: Option<Spanned<u32>>,
    modes: Option<Vec<Spanned<Mode>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Experiment {
    name: Spanned<String>,
    transports: Vec<Spanned<String>>,
    modes: Option<Vec<Spanned<Mode>>>,
    sizes: Vec<Spanned<i64>>,
    rates: Vec<Spanned<Rate>>,
    duration_ms: Option<Spanned<u64>>,
    messages: Option<Spanned<u64>>,
    repeat: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    experiment: Vec<Experiment>,
}

/// Parses a plan and expands it into cells, in plan order. `--repeat` overrides every
/// experiment's repeat count when given.
pub fn parse(file: &str, text: &str, repeat_override: Option<u32>) -> Result<Vec<CellSpec>, PlanError> {
    let plan: PlanFile = toml::from_str(text).map_err(|e| PlanError::Toml {
        file: file.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let err = |span: Range<usize>, key: &str, message: String| PlanError::Value {
        file: file.to_owned(),
        line: text[..span.start.min(text.len())].matches('\n').count() + 1,
        key: key.to_owned(),
        message,
    };
    let mut cells = Vec::new();
    for x in &plan.experiment {
        // The experiment's own load wins over the defaults; messages win over a duration.
        let load = match (
            &x.messages,
            &x.duration_ms,
            &plan.defaults.messages,
            &plan.defaults.duration_ms,
        ) {
            (Some(m), _, _, _) | (None, None, Some(m), _) => {
                if !(1..=MAX_EVENTS_PER_CELL).contains(m.get_ref()) {
                    return Err(err(
                        m.span(),
                        "messages",
                        format!("must be 1..={MAX_EVENTS_PER_CELL}"),
                    ));
                }
                Load::Messages(*m.get_ref())
            }
            (None, Some(d), _, _) | (None, None, None, Some(d)) => {
                if !(1..=600_000).contains(d.get_ref()) {
                    return Err(err(d.span(), "duration_ms", "must be 1..=600000".into()));
                }
                Load::Duration(Duration::from_millis(*d.get_ref()))
            }
            (None, None, None, None) => {
                return Err(err(
                    x.name.span(),
                    "duration_ms",
                    format!(
                        "experiment `{}` says neither duration_ms nor messages",
                        x.name.get_ref()
                    ),
                ));
            }
        };
        let repeat = match repeat_override {
            Some(r) => r,
            None => {
                let r = x.repeat.as_ref().or(plan.defaults.repeat.as_ref());
                match r {
                    Some(r) if *r.get_ref() == 0 => {
                        return Err(err(r.span(), "repeat", "must be at least 1".into()));
                    }
                    Some(r) => *r.get_ref(),
                    None => 1,
                }
            }
        }
        .max(1);
        let modes: Vec<Mode> = x
            .modes
            .as_ref()
            .or(plan.defaults.modes.as_ref())
            .map(|m| m.iter().map(|m| *m.get_ref()).collect())
            .unwrap_or_else(|| vec![Mode::Datagram]);
        let mut sizes = Vec::new();
        for s in &x.sizes {
            let v = *s.get_ref();
            let range = min_event_size() as i64..=MAX_EVENT_SIZE as i64;
            if !range.contains(&v) {
                return Err(err(
                    s.span(),
                    "sizes",
                    format!(
                        "{v} is out of range: events are {}..={} bytes",
                        range.start(),
                        range.end()
                    ),
                ));
            }
            sizes.push(v as usize);
        }
        let mut transports = Vec::new();
        for t in &x.transports {
            let spec = transport::parse_spec(t.get_ref()).map_err(|m| err(t.span(), "transports", m))?;
            if !modes.iter().any(|&m| spec.supports(m)) {
                let has: Vec<&str> = spec.info().modes.iter().map(|m| m.name()).collect();
                let asked: Vec<&str> = modes.iter().map(|m| m.name()).collect();
                return Err(err(
                    t.span(),
                    "transports",
                    format!(
                        "`{}` has none of the modes {} (it has: {}); set `modes`",
                        t.get_ref(),
                        asked.join(", "),
                        has.join(", ")
                    ),
                ));
            }
            transports.push(spec);
        }
        if transports.is_empty() || sizes.is_empty() || x.rates.is_empty() {
            return Err(err(
                x.name.span(),
                "experiment",
                format!(
                    "experiment `{}` needs at least one transport, size and rate",
                    x.name.get_ref()
                ),
            ));
        }
        for r in 1..=repeat {
            for t in &transports {
                for &mode in &modes {
                    if !t.supports(mode) {
                        continue;
                    }
                    for &size in &sizes {
                        for rate in &x.rates {
                            cells.push(CellSpec {
                                experiment: x.name.get_ref().clone(),
                                transport: t.clone(),
                                mode,
                                size,
                                rate: *rate.get_ref(),
                                load,
                                repeat: r,
                            });
                        }
                    }
                }
            }
        }
    }
    if cells.is_empty() {
        return Err(PlanError::Empty {
            file: file.to_owned(),
        });
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::THIS_OS;

    #[test]
    fn default_and_quick_plans_parse() {
        let cells = parse("default", DEFAULT_PLAN, None).unwrap();
        assert!(cells.len() > 50, "{}", cells.len());
        let quick = parse("quick", QUICK_PLAN, None).unwrap();
        for t in transport::available() {
            assert!(
                quick
                    .iter()
                    .any(|c| c.transport.name == t.name && c.size == 200 && c.rate == Rate::Max),
                "--quick lacks a max cell at 200 B for {}",
                t.name
            );
        }
    }

    #[test]
    fn every_example_plan_parses_on_its_os() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            seen += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.display().to_string();
            let windows_only = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("windows"));
            match parse(&name, &text, None) {
                Ok(cells) => assert!(
                    !windows_only || THIS_OS == "windows",
                    "{name}: {} cells",
                    cells.len()
                ),
                Err(e) => assert!(
                    windows_only && THIS_OS != "windows" && e.to_string().contains("runs on windows"),
                    "{name}: {e}"
                ),
            }
        }
        assert!(seen >= 6, "{seen} plans in {}", dir.display());
    }

    #[test]
    fn a_transport_without_the_asked_mode_is_an_error() {
        let text = "[[experiment]]\nname = \"x\"\nmodes = [\"request\"]\ntransports = [\"pipe\"]\nsizes = [64]\nrates = [\"max\"]\nmessages = 5\n";
        let e = parse("p.toml", text, None).unwrap_err().to_string();
        assert!(
            e.contains("line 4") && e.contains("has none of the modes request"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let text = "[[experiment]]\nname = \"x\"\ntransports = [\"unix\",\n \"nope\"]\nsizes = [64]\nrates = [\"max\"]\nduration_ms = 10\n";
        let e = parse("p.toml", text, None).unwrap_err().to_string();
        assert!(
            e.contains("line 4") && e.contains("`transports`") && e.contains("nope"),
            "{e}"
        );
        assert!(e.contains("unix-raw"), "lists the transports this OS has: {e}");

        let text = "[[experiment]]\nname = \"x\"\ntransports = [\"unix\"]\nsizes = [64, 999999]\nrates = [\"max\"]\nduration_ms = 10\n";
        let e = parse("p.toml", text, None).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("`sizes`"), "{e}");

        let text = "[[experiment]]\nname = \"x\"\ntransports = [\"unix\"]\nsizes = [64]\nrates = [\"fast\"]\nduration_ms = 10\n";
        let e = parse("p.toml", text, None).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("rates"), "{e}");

        let text = "[[experiment]]\nname = \"x\"\ntransport = [\"unix\"]\n";
        let e = parse("p.toml", text, None).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("transport"), "{e}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn windows_transport_on_linux_lists_what_there_is() {
        let text = "[[experiment]]\nname = \"x\"\ntransports = [\"alpc\"]\nsizes = [64]\nrates = [\"max\"]\nmessages = 10\n";
        let e = parse("p.toml", text, None).unwrap_err().to_string();
        assert!(
            e.contains("line 3") && e.contains("windows") && e.contains("unix, unix-raw, pipe, shm, request"),
            "{e}"
        );
    }
}
