//! Layered settings: flags, then environment, then the config file, then built-in defaults.
//!
//! Nothing here names a flag. At start-up the `clap::Command` derived from `cli.rs` is walked,
//! and every argument with a long name gets:
//!
//! - an environment variable, `LPCMON_<LONG_NAME>` for the global and `serve` flags
//!   (`--retain-bytes` → `LPCMON_RETAIN_BYTES`) and `LPCMON_<SUBCOMMAND>_<LONG_NAME>` for a
//!   subcommand's (`loadgen --rate` → `LPCMON_LOADGEN_RATE`), unless it declares its own
//!   (`--token` has `LPCMON_TOKEN`, `status`/`tail --url` share `LPCMON_URL`);
//! - a config-file key, its long name: at the top level for the global flags and those of
//!   `serve` (a `[serve]` table is accepted too), in a table named after the subcommand for
//!   the others (`[loadgen]`, `[tail]`, …). A file value becomes the argument's *default*, which
//!   is precisely the layer between the environment and the built-in default in clap's own
//!   order, so clap does the layering and `ArgMatches::value_source` tells where a value came
//!   from; this module only remembers which defaults the file supplied, and on which line.
//!
//! So a flag added to `cli.rs` gets its file key and its variable with no code here. Flags that
//! do nothing on this OS ([`cli::OS_ONLY`]) are hidden from help and refused wherever they are
//! given.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::cli::{self, Cli};
use crate::exit::{Advise, Kind, fail};

/// Where the file's values went: (subcommand, or "" for the top level; argument id) → line.
type Origins = BTreeMap<(String, String), usize>;

/// The parsed command line with everything needed to explain it.
pub struct Layered {
    pub cli: Cli,
    /// The decorated command (with file defaults), for `config show`.
    pub command: Command,
    pub matches: ArgMatches,
    /// The config file in force, if any.
    pub file: Option<PathBuf>,
    origins: Origins,
}

/// The default config file: `/etc/lpcmon/lpcmon.toml` (Windows: `%ProgramData%\lpcmon\lpcmon.toml`),
/// used only if it exists.
pub fn default_path() -> PathBuf {
    #[cfg(windows)]
    {
        let base = std::env::var_os("ProgramData").unwrap_or_else(|| r"C:\ProgramData".into());
        PathBuf::from(base).join(r"lpcmon\lpcmon.toml")
    }
    #[cfg(not(windows))]
    {
        PathBuf::from("/etc/lpcmon/lpcmon.toml")
    }
}

/// The environment variable of a long flag: `LPCMON_<FLAG>` for the global and `serve` flags,
/// `LPCMON_<SUBCOMMAND>_<FLAG>` for a subcommand's, as the file has top-level keys and tables.
pub fn env_name(subcommand: &str, long: &str) -> String {
    let name = match subcommand {
        "" | "serve" => format!("LPCMON_{long}"),
        sub => format!("LPCMON_{sub}_{long}"),
    };
    name.to_ascii_uppercase().replace('-', "_")
}

/// The OS an argument is limited to, if it is limited and this is not that OS.
fn foreign_os(id: &str) -> Option<&'static str> {
    cli::OS_ONLY
        .iter()
        .find(|(arg, _)| *arg == id)
        .map(|(_, os)| *os)
        .filter(|os| *os != cli::THIS_OS)
}

fn is_builtin(arg: &Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version")
}

/// Adds the environment variables and hides other OSes' flags, for the whole tree.
fn decorate(cmd: Command) -> Command {
    decorate_under(cmd, "")
}

fn decorate_under(cmd: Command, subcommand: &str) -> Command {
    cmd.mut_args(|arg| {
        let Some(long) = arg.get_long().map(str::to_owned) else {
            return arg;
        };
        // Help shows the variable's name, not its current value: a value that changes with
        // the caller's environment is no default, and could be a secret.
        let arg = if arg.get_env().is_none() && !is_builtin(&arg) {
            arg.env(env_name(subcommand, &long)).hide_env_values(true)
        } else {
            arg
        };
        // A switch in the environment reads as people write it there: 1/0, yes/no, on/off.
        let arg = if matches!(arg.get_action(), ArgAction::SetTrue) {
            arg.value_parser(clap::builder::BoolishValueParser::new())
        } else {
            arg
        };
        if foreign_os(arg.get_id().as_str()).is_some() {
            arg.hide(true)
        } else {
            arg
        }
    })
    .mut_subcommands(|sub| {
        let name = if subcommand.is_empty() {
            sub.get_name().to_owned()
        } else {
            format!("{subcommand}_{}", sub.get_name())
        };
        decorate_under(sub, &name)
    })
}

/// Parses the process's own command line, exiting like clap on `--help`, `--version` and
/// usage errors (code 2).
pub fn parse() -> anyhow::Result<Layered> {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> anyhow::Result<Layered>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = decorate(Cli::command());
    // A first, forgiving pass only to learn `--config` (or LPCMON_CONFIG). It stops at
    // `--help` and `--version`, which must show the file's defaults too: then a plain scan.
    let explicit = match command.clone().ignore_errors(true).try_get_matches_from(&args) {
        Ok(early) => early.get_one::<PathBuf>("config").cloned(),
        Err(_) => scan_for_config(&args),
    };
    let file = match explicit {
        Some(path) => Some(path),
        None => Some(default_path()).filter(|p| p.exists()),
    };
    let (command, origins) = match &file {
        Some(path) => apply_file(command, path)?,
        None => (command, Origins::new()),
    };
    let matches = match command.clone().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    refuse_foreign(&command, &matches)?;
    let cli = Cli::from_arg_matches(&matches).advise(Kind::Usage, "see `lpcmon --help`")?;
    Ok(Layered {
        cli,
        command,
        matches,
        file,
        origins,
    })
}

/// `--config PATH`, `--config=PATH` or LPCMON_CONFIG, read without clap.
fn scan_for_config(args: &[OsString]) -> Option<PathBuf> {
    let mut words = args.iter().skip(1);
    while let Some(word) = words.next() {
        if word == "--" {
            break;
        }
        if word == "--config" {
            return words.next().map(PathBuf::from);
        }
        if let Some(path) = word.to_str().and_then(|w| w.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(env_name("", "config")).map(PathBuf::from)
}

/// Refuses flags (or variables) that do nothing on this OS, in the subcommand that runs.
fn refuse_foreign(command: &Command, matches: &ArgMatches) -> anyhow::Result<()> {
    let (mut cmd, mut m) = (command, matches);
    loop {
        for id in m.ids() {
            let Some(os) = foreign_os(id.as_str()) else {
                continue;
            };
            let given = match m.value_source(id.as_str()) {
                Some(ValueSource::CommandLine) => "remove it from the command line".to_owned(),
                Some(ValueSource::EnvVariable) => {
                    let env = cmd
                        .get_arguments()
                        .find(|a| a.get_id() == id)
                        .and_then(Arg::get_env);
                    format!("unset {}", env.map(|e| e.to_string_lossy()).unwrap_or_default())
                }
                _ => continue,
            };
            return Err(fail(
                Kind::Usage,
                format!(
                    "--{} applies only on {os}; this is {}, where it does nothing",
                    long_of(id.as_str()),
                    cli::THIS_OS
                ),
                given,
            ));
        }
        match m.subcommand() {
            Some((name, sub)) => {
                cmd = cmd.find_subcommand(name).expect("clap matched it");
                m = sub;
            }
            None => return Ok(()),
        }
    }
}

/// clap derives long names from field names by kebab-casing them.
fn long_of(id: &str) -> String {
    id.replace('_', "-")
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads the config file and makes its values the defaults of the arguments they name.
fn apply_file(command: Command, path: &Path) -> anyhow::Result<(Command, Origins)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))
        .advise(
            Kind::Usage,
            "pass an existing file with --config (or LPCMON_CONFIG), or leave it out",
        )?;
    let table = DeTable::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
        .with_context(|| format!("{} is not valid TOML", path.display()))
        .advise(
            Kind::Usage,
            "fix the file; `lpcmon config show` prints a valid one",
        )?;
    let mut file = FileLayer {
        path,
        text: &text,
        origins: Origins::new(),
    };
    let command = file.apply_table(command, "", table.get_ref())?;
    Ok((command, file.origins))
}

struct FileLayer<'a> {
    path: &'a Path,
    text: &'a str,
    origins: Origins,
}

impl FileLayer<'_> {
    fn error(
        &self,
        span: std::ops::Range<usize>,
        cause: impl std::fmt::Display,
        remedy: &str,
    ) -> anyhow::Error {
        fail(
            Kind::Usage,
            format!(
                "{}:{}: {cause}",
                self.path.display(),
                line_of(self.text, span.start)
            ),
            remedy,
        )
    }

    /// Applies one table: `section` is "" for the top level, else the subcommand's name.
    fn apply_table(
        &mut self,
        mut cmd: Command,
        section: &str,
        table: &DeTable<'_>,
    ) -> anyhow::Result<Command> {
        for (key, value) in table {
            let name = key.get_ref().as_ref();
            if let DeValue::Table(inner) = value.get_ref() {
                // `[serve]` is the top level spelled out; any other table is a subcommand's.
                if section.is_empty() && name == "serve" {
                    cmd = self.apply_table(cmd, "", inner)?;
                    continue;
                }
                if section.is_empty() && cmd.find_subcommand(name).is_some() {
                    let sub = cmd.find_subcommand(name).cloned().expect("just found");
                    let sub = self.apply_table(sub, name, inner)?;
                    cmd = cmd.mut_subcommand(name, |_| sub);
                    continue;
                }
            }
            let Some(arg) = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(name) && !is_builtin(a))
                .cloned()
            else {
                let where_ = if section.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in [{section}]")
                };
                return Err(self.error(
                    key.span(),
                    format!("unknown key `{name}` {where_}"),
                    "keys are the long flag names (`retain-bytes`, not `retain_bytes`), and a \
                     subcommand's go in its table ([loadgen], [tail], …): see `lpcmon config show`",
                ));
            };
            let id = arg.get_id().as_str().to_owned();
            if let Some(os) = foreign_os(&id) {
                return Err(self.error(
                    key.span(),
                    format!("`{name}` applies only on {os}; this is {}", cli::THIS_OS),
                    "remove it from the file",
                ));
            }
            let values = self.values_for(&arg, value)?;
            let apply = |a: Arg| a.default_values(values.clone());
            cmd = cmd.mut_arg(&id, apply);
            self.origins.insert(
                (section.to_owned(), id.clone()),
                line_of(self.text, key.span().start),
            );
            // The top level also configures an explicit `lpcmon serve`.
            if section.is_empty()
                && !arg.is_global_set()
                && let Some(serve) = cmd.find_subcommand("serve")
                && serve.get_arguments().any(|a| a.get_id() == id.as_str())
            {
                cmd = cmd.mut_subcommand("serve", |s| s.mut_arg(&id, apply));
                self.origins.insert(
                    ("serve".to_owned(), id.clone()),
                    line_of(self.text, key.span().start),
                );
            }
        }
        Ok(cmd)
    }

    /// The file value as the argument's text, checked with the argument's own parser now, so
    /// a bad value is reported with its line rather than later as if it were a default.
    fn values_for(&self, arg: &Arg, value: &Spanned<DeValue<'_>>) -> anyhow::Result<Vec<String>> {
        let long = arg.get_long().unwrap_or_default();
        let scalar = |v: &Spanned<DeValue<'_>>| -> anyhow::Result<String> {
            match v.get_ref() {
                DeValue::String(s) => Ok(s.to_string()),
                DeValue::Integer(i) if i.radix() == 10 => Ok(i.as_str().to_owned()),
                DeValue::Float(f) => Ok(f.as_str().to_owned()),
                DeValue::Boolean(b) => Ok(b.to_string()),
                other => Err(self.error(
                    v.span(),
                    format!("`{long}` cannot be a {}", other.type_str()),
                    "write a string, a decimal number or a boolean",
                )),
            }
        };
        let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
        let values = match value.get_ref() {
            DeValue::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
                items.iter().map(scalar).collect::<anyhow::Result<Vec<_>>>()?
            }
            DeValue::Boolean(_) if flag => vec![scalar(value)?],
            _ if flag => {
                return Err(self.error(
                    value.span(),
                    format!("`{long}` is a switch: write `{long} = true` or `{long} = false`"),
                    "use a boolean",
                ));
            }
            _ => vec![scalar(value)?],
        };
        if !flag {
            for v in &values {
                let probe = Command::new("lpcmon")
                    .no_binary_name(true)
                    .arg(arg.clone().global(false).required(false).env(None::<&str>));
                if let Err(e) = probe.try_get_matches_from([format!("--{long}={v}")]) {
                    let message = e.kind().as_str().map(str::to_owned).unwrap_or_default();
                    let detail = e.to_string();
                    let detail = detail
                        .lines()
                        .next()
                        .unwrap_or(&message)
                        .trim_start_matches("error: ");
                    return Err(self.error(
                        value.span(),
                        format!("`{long}`: {detail}"),
                        "fix the value in the file",
                    ));
                }
            }
        }
        Ok(values)
    }
}

impl Layered {
    /// Where the value of `id` in the subcommand `section` ("" = top level) came from.
    fn origin(&self, section: &str, matches: &ArgMatches, id: &str) -> String {
        match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "command line".to_owned(),
            Some(ValueSource::EnvVariable) => {
                let env = self
                    .arg(section, id)
                    .and_then(|a| a.get_env())
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("environment {env}")
            }
            Some(ValueSource::DefaultValue) => {
                match (&self.file, self.origins.get(&(section.to_owned(), id.to_owned()))) {
                    (Some(path), Some(line)) => format!("file {}:{line}", path.display()),
                    _ => "default".to_owned(),
                }
            }
            _ => "unset".to_owned(),
        }
    }

    fn arg(&self, section: &str, id: &str) -> Option<&Arg> {
        let cmd = if section.is_empty() {
            Some(&self.command)
        } else {
            self.command.find_subcommand(section)
        };
        cmd?.get_arguments().find(|a| a.get_id() == id)
    }

    /// The effective configuration as a TOML file a person could keep, each value with where
    /// it came from. Secrets ([`cli::SECRETS`]) are not printed.
    pub fn show(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# lpcmon's effective configuration: flags > environment > file > defaults"
        );
        match &self.file {
            Some(path) => {
                let _ = writeln!(out, "# config file: {}", path.display());
            }
            None => {
                let _ = writeln!(
                    out,
                    "# config file: none ({} does not exist)",
                    default_path().display()
                );
            }
        }
        self.show_section(&mut out, "", &self.command, &self.matches);
        for sub in self.command.get_subcommands() {
            let name = sub.get_name();
            if name == "serve" || sub.is_hide_set() || !sub.get_arguments().any(|a| self.showable(a)) {
                continue;
            }
            // Each subcommand's settings as they would be if it ran now with no flags.
            let Ok(matches) = sub
                .clone()
                .no_binary_name(true)
                .try_get_matches_from(Vec::<OsString>::new())
            else {
                continue;
            };
            let _ = writeln!(out, "\n[{name}]");
            self.show_section(&mut out, name, sub, &matches);
        }
        out
    }

    fn showable(&self, arg: &Arg) -> bool {
        arg.get_long().is_some()
            && !is_builtin(arg)
            && !arg.is_global_set()
            && foreign_os(arg.get_id().as_str()).is_none()
    }

    fn show_section(&self, out: &mut String, section: &str, cmd: &Command, matches: &ArgMatches) {
        let mut rows = Vec::new();
        for arg in cmd.get_arguments() {
            let top_global = section.is_empty() && arg.is_global_set();
            if !(self.showable(arg) || top_global) || arg.get_long().is_none() || is_builtin(arg) {
                continue;
            }
            let id = arg.get_id().as_str();
            let long = arg.get_long().unwrap_or_default();
            let raw: Vec<String> = matches
                .get_raw(id)
                .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let value = if raw.is_empty() {
                "# (not set)".to_owned()
            } else if matches!(arg.get_action(), ArgAction::SetTrue) {
                // `1` or `yes` from the environment, as the file would need it.
                matches.get_flag(id).to_string()
            } else if cli::SECRETS.contains(&id) {
                "\"(secret, not shown)\"".to_owned()
            } else if matches!(arg.get_action(), ArgAction::Append) {
                format!(
                    "[{}]",
                    raw.iter().map(|v| toml_scalar(v)).collect::<Vec<_>>().join(", ")
                )
            } else {
                toml_scalar(&raw[0])
            };
            let line = if raw.is_empty() {
                format!("# {long}")
            } else {
                format!("{long} = {value}")
            };
            rows.push((line, self.origin(section, matches, id)));
        }
        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (line, origin) in rows {
            let _ = writeln!(out, "{line:width$}  # {origin}");
        }
    }
}

/// A value as TOML: numbers and booleans bare, everything else a quoted string.
fn toml_scalar(v: &str) -> String {
    if v == "true" || v == "false" || (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.len() < 19)
    {
        v.to_owned()
    } else {
        toml::Value::String(v.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each flag of another OS, given on the command line with a value its parser accepts.
    fn foreign_flags() -> Vec<Vec<String>> {
        let command = Cli::command();
        cli::OS_ONLY
            .iter()
            .filter(|(_, os)| *os != cli::THIS_OS)
            .map(|(id, _)| {
                let arg = command
                    .get_arguments()
                    .find(|a| a.get_id() == *id)
                    .unwrap_or_else(|| panic!("OS_ONLY names {id}, which is no argument"));
                let mut words = vec![format!("--{}", arg.get_long().unwrap())];
                if let Some(value) = arg.get_possible_values().first()
                    && arg.get_action().takes_values()
                {
                    words.push(value.get_name().to_owned());
                }
                words
            })
            .collect()
    }

    #[test]
    fn other_os_flags_are_hidden_and_refused_on_this_one() {
        let flags = foreign_flags();
        assert!(!flags.is_empty(), "every OS has another OS's flags to refuse");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        let help = decorate(Cli::command()).render_long_help().to_string();
        for words in flags {
            assert!(
                !help.contains(&format!("{} ", words[0])),
                "{} is in this OS's help",
                words[0]
            );
            let mut args = vec![
                "lpcmon".to_owned(),
                "--config".to_owned(),
                empty.display().to_string(),
                "serve".to_owned(),
            ];
            args.extend(words.iter().cloned());
            let err = parse_from(&args)
                .err()
                .unwrap_or_else(|| panic!("{words:?} was accepted"));
            let failure = err.downcast_ref::<crate::exit::Failure>().expect("a Failure");
            assert_eq!(failure.kind, Kind::Usage, "{err:#}");
            assert!(format!("{err:#}").contains("applies only on"), "{err:#}");
            // And in the file.
            let file = dir.path().join("foreign.toml");
            let key = words[0].trim_start_matches("--");
            let value = words.get(1).map_or("true".to_owned(), |v| format!("{v:?}"));
            std::fs::write(&file, format!("{key} = {value}\n")).unwrap();
            let err = parse_from(["lpcmon", "--config", &file.display().to_string(), "serve"])
                .err()
                .expect("refused");
            assert!(format!("{err:#}").contains(":1: "), "{err:#}");
        }
    }

    #[test]
    fn env_names_follow_the_file_layout() {
        assert_eq!(env_name("", "retain-bytes"), "LPCMON_RETAIN_BYTES");
        assert_eq!(env_name("serve", "retain-bytes"), "LPCMON_RETAIN_BYTES");
        assert_eq!(env_name("loadgen", "max-message"), "LPCMON_LOADGEN_MAX_MESSAGE");
    }
}
