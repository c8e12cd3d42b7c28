//! The man page and shell completions, generated from the same clap definitions as `--help`
//! (with this OS's flags only), for packaging: `lpcmon man > lpcmon.1`,
//! `lpcmon completions bash > lpcmon.bash`.

use std::io::Write as _;

use anyhow::Context;
use clap::Command;
use clap_complete::Shell;

use crate::exit::EXIT_CODES;

/// The man page in roff: clap_mangen's page, with sections for the environment, the config
/// file and the exit status, which a packaged tool's man page is expected to have.
pub fn man(command: &Command) -> anyhow::Result<()> {
    let mut page = Vec::new();
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    let extra = [
        (
            "ENVIRONMENT",
            "Every flag can be set as LPCMON_<FLAG> (upper case, dashes as underscores), e.g. \
             LPCMON_RETAIN_BYTES=1GiB, LPCMON_TOKEN; a subcommand's flags as \
             LPCMON_<SUBCOMMAND>_<FLAG>, e.g. LPCMON_LOADGEN_RATE=500; LPCMON_URL for status and \
             tail. RUST_LOG sets the log filter (RUST_LOG=debug \
             also prints backtraces on failure). NO_COLOR turns colour off.",
        ),
        (
            "FILES",
            "/etc/lpcmon/lpcmon.toml: the config file, read if it exists (or the one --config \
             names). Keys are the long flag names (retain-bytes = \"64MiB\"); a subcommand's flags \
             go in a table named after it ([loadgen], [tail]). An unknown key is an error naming \
             its line. Flags win over the environment, which wins over the file, which wins over \
             the defaults; `lpcmon config show` prints the effective configuration and where each \
             value came from. Sizes take units (64KiB, 64MiB, 1GiB), durations too (500ms, 30s, 30d).",
        ),
        ("EXIT STATUS", EXIT_CODES),
    ];
    for (title, text) in extra {
        writeln!(page, ".SH \"{title}\"\n{}", roff_escape(text))?;
    }
    man.render_version_section(&mut page)?;
    std::io::stdout()
        .write_all(&page)
        .context("cannot write the man page")?;
    Ok(())
}

/// Text safe in a roff paragraph: backslashes doubled, no line starting with a control dot.
fn roff_escape(text: &str) -> String {
    let text = text.replace('\\', "\\\\");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

pub fn completions(command: &Command, shell: Shell) -> anyhow::Result<()> {
    let mut command = command.clone();
    clap_complete::generate(shell, &mut command, "lpcmon", &mut std::io::stdout());
    Ok(())
}
