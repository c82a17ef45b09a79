//! The command-line flags common to every binary, built from the rows: each row with a
//! [`Flag`](super::variables::Flag) gets one, whose `--help` line is the row's doc followed by
//! `[VARIABLE]`. Implemented by hand because clap's derive needs its help texts as literals.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::variables::ROWS;

const ENV_FILE: &str = "env-file";
const SET: &str = "set";

/// Command-line flags common to every binary; use it with `#[command(flatten)]`. Each flag
/// overrides one `DAY15_*` variable.
#[derive(Debug, Clone, Default)]
pub struct ConfigArgs {
    /// `--env-file PATH`: read variables from this file instead of `config/.env`.
    pub env_file: Option<PathBuf>,
    /// The variables' own flags as `(variable, value)`, e.g. `--port 8080` gives
    /// `("DAY15_WEBHOOK_PORT", "8080")`, and a switch gives `"true"`.
    pub flags: Vec<(&'static str, String)>,
    /// `--set NAME=VALUE` pairs (repeatable), applied after `flags`.
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// The flag values as `(variable, value)` pairs, in the order they apply.
    pub(super) fn overrides(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        for pair in &self.set {
            match pair.split_once('=') {
                Some((k, v)) => out.push((k.trim().to_string(), v.to_string())),
                None => out.push((pair.clone(), String::new())),
            }
        }
        out
    }

    fn set_flag(&mut self, name: &'static str, value: String) {
        self.flags.retain(|(k, _)| *k != name);
        self.flags.push((name, value));
    }
}

impl clap::Args for ConfigArgs {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = cmd.arg(
            Arg::new(ENV_FILE)
                .long(ENV_FILE)
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .global(true)
                .help(
                    "Read variables from this file instead of config/.env \
                     (process environment still wins)",
                ),
        );
        for row in ROWS {
            let Some(flag) = row.flag else { continue };
            let arg = Arg::new(flag.long)
                .long(flag.long)
                .global(true)
                .help(format!("{} [{}]", row.doc, row.name));
            cmd = cmd.arg(match flag.value_name {
                Some(placeholder) => arg
                    .value_name(placeholder)
                    .value_parser(clap::value_parser!(String))
                    .action(ArgAction::Set),
                None => arg.action(ArgAction::SetTrue),
            });
        }
        cmd.arg(
            Arg::new(SET)
                .long(SET)
                .value_name("NAME=VALUE")
                .value_parser(clap::value_parser!(String))
                .action(ArgAction::Append)
                .global(true)
                .help("Set any variable, e.g. --set DAY15_MAX_RETRIES=5 (repeatable)"),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ConfigArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = one::<PathBuf>(matches, ENV_FILE)? {
            self.env_file = Some(path.clone());
        }
        for row in ROWS {
            let Some(flag) = row.flag else { continue };
            if flag.value_name.is_some() {
                if let Some(value) = one::<String>(matches, flag.long)? {
                    self.set_flag(row.name, value.clone());
                }
            } else if one::<bool>(matches, flag.long)? == Some(&true) {
                self.set_flag(row.name, "true".into());
            }
        }
        let set = matches
            .try_get_many::<String>(SET)
            .map_err(|e| mismatch(SET, e))?;
        self.set.extend(set.into_iter().flatten().cloned());
        Ok(())
    }
}

fn one<'a, T: Clone + Send + Sync + 'static>(
    matches: &'a ArgMatches,
    id: &str,
) -> Result<Option<&'a T>, clap::Error> {
    matches.try_get_one::<T>(id).map_err(|e| mismatch(id, e))
}

/// Only reachable when the matches were not built by [`clap::Args::augment_args`] above.
fn mismatch(id: &str, e: clap::parser::MatchesError) -> clap::Error {
    clap::Error::raw(
        clap::error::ErrorKind::ArgumentConflict,
        format!("--{id}: {e}\n"),
    )
}
