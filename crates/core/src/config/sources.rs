//! Gathering the raw values: defaults, then the env file, then the process environment, then
//! the flags, each layer overriding the one before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::ConfigArgs;
use super::variables::{row, ROWS};
use super::{ConfigError, ConfigProblem};

/// The env file read when `--env-file` is not given; a missing default file is not an error.
pub const DEFAULT_ENV_FILE: &str = "config/.env";

/// The raw variable values after precedence was applied, before validation.
#[derive(Debug, Clone, Default)]
pub struct RawSettings {
    values: BTreeMap<String, String>,
}

impl RawSettings {
    /// Layers defaults, the env file, the given environment and the flags.
    pub fn gather(
        args: &ConfigArgs,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut values = Self::defaults().values;
        let (env_path, explicit) = match &args.env_file {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_ENV_FILE), false),
        };
        match read_env_file(&env_path) {
            Ok(Some(pairs)) => values.extend(pairs),
            Ok(None) if explicit => problems.push(ConfigProblem {
                name: "--env-file".into(),
                value: env_path.display().to_string(),
                allowed: "an existing, readable env file".into(),
            }),
            Ok(None) => {}
            Err(e) => problems.push(ConfigProblem {
                name: "--env-file".into(),
                value: env_path.display().to_string(),
                allowed: format!("a valid env file ({e})"),
            }),
        }
        values.extend(
            environment
                .into_iter()
                .filter(|(k, _)| k.starts_with("DAY15_")),
        );
        for (k, v) in args.overrides() {
            if row(&k).is_none() {
                problems.push(ConfigProblem {
                    name: k,
                    value: v,
                    allowed: "--set takes one of the DAY15_* variables listed in .env.example"
                        .into(),
                });
                continue;
            }
            values.insert(k, v);
        }
        if problems.is_empty() {
            Ok(RawSettings { values })
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The built-in defaults alone.
    pub(super) fn defaults() -> Self {
        RawSettings {
            values: ROWS
                .iter()
                .filter_map(|r| r.default.map(|d| (r.name.to_string(), d.to_string())))
                .collect(),
        }
    }

    /// The effective value of a variable (after precedence), if set and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }
}

fn read_env_file(path: &Path) -> Result<Option<Vec<(String, String)>>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let iter = dotenvy::from_path_iter(path).map_err(|e| e.to_string())?;
    let mut pairs = Vec::new();
    for item in iter {
        pairs.push(item.map_err(|e| e.to_string())?);
    }
    Ok(Some(pairs))
}
