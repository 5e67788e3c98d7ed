//! `weft serve --config FILE` (or `WEFT_CONFIG`): a node's options from a TOML file.
//!
//! The file's keys are the long options of `weft serve`, with `-` or `_`:
//!
//! ```toml
//! http-addr = "0.0.0.0:8080"
//! nats = ["nats://a:4222", "nats://b:4222"]
//! jetstream = true
//! jetstream_replicas = 3
//! ```
//!
//! or, the same, in the tables of `weft serve`'s sections (`store`, `bus`, `http`, `host`, `intake`,
//! `processes`, `objects`, `providers`), where a key may leave out its section's name:
//!
//! ```toml
//! [bus]
//! nats = ["nats://a:4222", "nats://b:4222"]
//! [store]
//! jetstream = true
//! jetstream-replicas = 3
//! [http]
//! addr = "0.0.0.0:8080"    # http-addr
//! ```
//!
//! Precedence: the command line, then the `WEFT_*` environment variables, then the file, then the defaults. The
//! file works through the command line, never the process's environment: each key it sets that neither the
//! command line nor its variable gave is added to the arguments as its long option ([`with_file`]), and the
//! arguments are read again, so one parser (clap's) checks every value whatever its source. An unknown key, a
//! value of the wrong shape or an unreadable file is an error naming the file and the key.

use std::path::Path;

/// The most a config file may hold.
const MAX_BYTES: u64 = 1 << 20;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is too large to be a config file.
    #[error("config {path}: over {MAX_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// It is not TOML.
    #[error("config {path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// Where and why, from the TOML parser.
        message: String,
    },
    /// A key names no option.
    #[error("config {path}: unknown key {key:?}; known: {known}")]
    UnknownKey {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// The keys it may hold.
        known: String,
    },
    /// A table names no section, or a key in it is none of the section's options.
    #[error("config {path}: [{section}] has no key {key:?}; known: {known}")]
    UnknownSectionKey {
        /// The file.
        path: String,
        /// The table.
        section: String,
        /// The key.
        key: String,
        /// The keys it may hold (or the sections, when the table names none).
        known: String,
    },
    /// An option is set twice (at the top and in its section).
    #[error("config {path}: {key} sets --{long}, which another key sets too")]
    Twice {
        /// The file.
        path: String,
        /// The second key.
        key: String,
        /// The option.
        long: String,
    },
    /// A value is a table, a date or a list of something other than text.
    #[error(
        "config {path}: {key} must be text, a number, true/false or a list (nats, and options that take several values)"
    )]
    Shape {
        /// The file.
        path: String,
        /// The key.
        key: String,
    },
}

/// One option the file sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The option's id (its field's name).
    pub id: String,
    /// Its long name.
    pub long: String,
    /// Its value, as text; `true`/`false` for a flag.
    pub value: String,
    /// Whether it is a flag (takes no value).
    pub flag: bool,
}

/// The options `file` sets for `command`, as read from it, for the keys whose variable is not set already.
/// `sections` names the tables the file may hold and the long options of each.
pub fn settings(file: &Path, command: &clap::Command, sections: &[(&str, Vec<String>)]) -> Result<Vec<Setting>, Error> {
    let path = file.display().to_string();
    let metadata = std::fs::metadata(file).map_err(|source| Error::Read { path: path.clone(), source })?;
    if metadata.len() > MAX_BYTES {
        return Err(Error::TooLarge { path });
    }
    let text = std::fs::read_to_string(file).map_err(|source| Error::Read { path: path.clone(), source })?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| Error::Syntax { path: path.clone(), message: e.to_string() })?;
    let options: Vec<(String, String, &clap::Arg)> = command
        .get_arguments()
        .filter_map(|arg| Some((arg.get_long()?.to_owned(), arg.get_env()?.to_string_lossy().into_owned(), arg)))
        .filter(|(long, _, _)| long != "config")
        .collect();
    // Each key with the long option it names: top-level keys name any option, a section's only its own.
    let mut keyed = Vec::new();
    for (key, value) in table {
        let toml::Value::Table(entries) = value else {
            let long = key.replace('_', "-");
            if !options.iter().any(|(option, _, _)| *option == long) {
                let known = options.iter().map(|(option, _, _)| option.as_str()).collect::<Vec<_>>().join(", ");
                return Err(Error::UnknownKey { path, key, known });
            }
            keyed.push((key, long, value));
            continue;
        };
        let Some((_, longs)) = sections.iter().find(|(name, _)| *name == key) else {
            let known = sections.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ");
            return Err(Error::UnknownSectionKey { path, section: key, key: String::new(), known });
        };
        for (entry, value) in entries {
            let short = entry.replace('_', "-");
            let prefixed = format!("{key}-{short}");
            let Some(long) = [short, prefixed].into_iter().find(|l| longs.contains(l)) else {
                return Err(Error::UnknownSectionKey { path, section: key, key: entry, known: longs.join(", ") });
            };
            keyed.push((format!("{key}.{entry}"), long, value));
        }
    }
    let mut settings: Vec<Setting> = Vec::new();
    for (i, (key, long, _)) in keyed.iter().enumerate() {
        if keyed[..i].iter().any(|(_, other, _)| other == long) {
            return Err(Error::Twice { path, key: key.clone(), long: long.clone() });
        }
    }
    for (key, long, value) in keyed {
        let (_, variable, arg) = options.iter().find(|(option, _, _)| *option == long).expect("checked above");
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A list is the option's comma-separated form (`nats`, and options that take several values).
            toml::Value::Array(items) if long == "nats" || arg.get_value_delimiter() == Some(',') => {
                let urls: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
                urls.ok_or_else(|| Error::Shape { path: path.clone(), key: key.clone() })?.join(",")
            }
            _ => return Err(Error::Shape { path, key }),
        };
        if std::env::var_os(variable).is_none() {
            let flag = !arg.get_action().takes_values();
            settings.push(Setting { id: arg.get_id().to_string(), long, value: text, flag });
        }
    }
    Ok(settings)
}

/// `args` (a whole command line, program first) with the file's `settings` added as long options, but for
/// those `matches` (of the subcommand the file is for) got from the command line.
pub fn with_file(
    args: Vec<std::ffi::OsString>,
    settings: &[Setting],
    matches: &clap::ArgMatches,
) -> Vec<std::ffi::OsString> {
    let mut args = args;
    for setting in settings {
        if matches.value_source(&setting.id) == Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        if setting.flag {
            // A flag is given or not: `true` gives it, anything else leaves its default (off).
            if matches!(setting.value.as_str(), "true" | "1" | "yes" | "on") {
                args.push(format!("--{}", setting.long).into());
            }
        } else {
            args.push(format!("--{}={}", setting.long, setting.value).into());
        }
    }
    args
}
