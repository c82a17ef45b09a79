//! `.env.example` and `docs/configuration.md`, generated from the rows so they cannot drift
//! from what the code accepts. A test fails when the committed files differ; [`REGENERATE`]
//! rewrites them.

use std::fmt::Write as _;

use super::variables::{row, Kind, Variable, When, ROWS};

/// The command that rewrites every generated file from the rows.
pub const REGENERATE: &str = "cargo run -p pipeline-core --example config-docs";

/// Each generated file, as a path relative to the repository root, with its content.
pub fn generated_files() -> [(&'static str, String); 2] {
    [
        (".env.example", env_example()),
        ("docs/configuration.md", markdown()),
    ]
}

/// Every variable with its default and its doc as a comment, in sections.
pub fn env_example() -> String {
    let mut out = String::from(
        "# Copy to config/.env and edit. Precedence: command-line flag > process environment >\n\
         # config/.env (or --env-file PATH) > the defaults shown here; empty means unset.\n",
    );
    let _ = writeln!(
        out,
        "# Generated from crates/core/src/config/variables.rs: edit the rows there, then run\n\
         # `{REGENERATE}`."
    );
    let mut group = None;
    for r in ROWS {
        if group != Some(r.group) {
            group = Some(r.group);
            let _ = writeln!(out, "\n# --- {} ---", r.group.title());
        }
        let _ = writeln!(out, "# {}", r.doc);
        let _ = writeln!(out, "{}={}", r.name, r.default.unwrap_or(""));
    }
    out
}

/// The reference page: precedence, what happens on a bad value, then one table of every
/// variable.
pub fn markdown() -> String {
    let port = row("DAY15_WEBHOOK_PORT").map(|r| r.kind.allowed());
    let batch = row("DAY15_BATCH_SIZE").map(|r| r.kind.allowed());
    let mut out = String::new();
    let _ = write!(
        out,
        "# Configuration\n\n\
         <!-- Generated from crates/core/src/config/variables.rs by `{REGENERATE}`: \
         edit the rows there, not this file. -->\n\n\
         Every variable keeps the `DAY15_` prefix of the original system. Each one is taken \
         from the first of these that sets it:\n\n\
         1. its command-line flag, or `--set NAME=VALUE` (which sets any variable);\n\
         2. the process environment;\n\
         3. `config/.env`, or the file named by `--env-file PATH`;\n\
         4. its default below.\n\n\
         An empty value counts as unset. Every binary validates the whole configuration at \
         start; when something is wrong it lists every problem at once, in the order of the \
         table, and exits with code 2:\n\n\
         ```\n\
         $ DAY15_BATCH_SIZE=0 DAY15_WEBHOOK_PORT=abc orchestrator --check\n\
         invalid configuration (2 problems):\n  \
         - DAY15_WEBHOOK_PORT=\"abc\": {}\n  \
         - DAY15_BATCH_SIZE=\"0\": {}\n\
         ```\n\n\
         [`.env.example`](../.env.example) lists the same variables with their defaults, \
         ready to copy to `config/.env`.\n\n\
         | variable | default | allowed | flag | meaning |\n\
         |---|---|---|---|---|\n",
        port.unwrap_or_default(),
        batch.unwrap_or_default(),
    );
    for r in ROWS {
        let default = match r.default {
            Some(d) => format!("`{d}`"),
            None => "(unset)".into(),
        };
        let flag = match r.flag {
            Some(f) => format!("`--{}`", f.long),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "| `{}` | {default} | {} | {flag} | {} |",
            r.name,
            cell(&allowed(r)),
            cell(r.doc),
        );
    }
    out
}

/// The problem message of the row, plus the unit, aliases and condition it leaves implicit.
fn allowed(r: &Variable) -> String {
    let mut text = r.kind.allowed();
    match r.kind {
        Kind::Duration { unit, .. } => {
            let _ = write!(text, " ({})", unit.name());
        }
        Kind::OneOf { aliases, .. } if !aliases.is_empty() => {
            let names: Vec<_> = aliases.iter().map(|(a, c)| format!("{a} = {c}")).collect();
            let _ = write!(text, " (any case; also {})", names.join(", "));
        }
        Kind::OneOf { .. } => text.push_str(" (any case)"),
        Kind::Bool => text.push_str(" (also 1/0, yes/no, on/off)"),
        Kind::Int { .. } | Kind::Text { .. } => {}
    }
    match r.when {
        Some(When::Unset(name)) => {
            let _ = write!(text, "; checked only when {name} is unset");
        }
        Some(When::Enabled(name)) => {
            let _ = write!(text, "; checked only when {name} is true");
        }
        None => {}
    }
    text
}

/// Text safe inside a Markdown table cell (no column break, no HTML tag).
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('<', "&lt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_generated_files_match_the_rows() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for (path, expected) in generated_files() {
            let committed = std::fs::read_to_string(root.join(path)).unwrap_or_default();
            assert!(
                committed == expected,
                "{path} differs from what crates/core/src/config/variables.rs generates: \
                 run `{REGENERATE}` and commit the result"
            );
        }
    }

    #[test]
    fn env_example_has_every_variable_with_its_default() {
        let example = env_example();
        for r in ROWS {
            let line = format!("\n{}={}\n", r.name, r.default.unwrap_or(""));
            assert!(example.contains(&line), "{} missing", r.name);
        }
    }
}
