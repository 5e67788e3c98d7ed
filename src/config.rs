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
//! Precedence: the command line, then the `WEFT_*` environment variables, then the file, then the defaults. The
//! file works through the environment: each key it sets whose variable is not set already is put there before
//! the command line is read again, so one parser (clap's) checks every value whatever its source. An unknown
//! key, a value of the wrong shape or an unreadable file is an error naming the file and the key.

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
    /// A value is a table, a date or a list of something other than text.
    #[error("config {path}: {key} must be text, a number, true/false or (nats) a list of URLs")]
    Shape {
        /// The file.
        path: String,
        /// The key.
        key: String,
    },
}

/// The environment variables `file` sets for the options of `command`, as (variable, value), for the keys whose
/// variable is not set already.
pub fn settings(file: &Path, command: &clap::Command) -> Result<Vec<(String, String)>, Error> {
    let path = file.display().to_string();
    let metadata = std::fs::metadata(file).map_err(|source| Error::Read { path: path.clone(), source })?;
    if metadata.len() > MAX_BYTES {
        return Err(Error::TooLarge { path });
    }
    let text = std::fs::read_to_string(file).map_err(|source| Error::Read { path: path.clone(), source })?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| Error::Syntax { path: path.clone(), message: e.to_string() })?;
    let options: Vec<(String, String)> = command
        .get_arguments()
        .filter_map(|arg| Some((arg.get_long()?.to_owned(), arg.get_env()?.to_string_lossy().into_owned())))
        .filter(|(long, _)| long != "config")
        .collect();
    let mut settings = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some((_, variable)) = options.iter().find(|(option, _)| *option == long) else {
            let known = options.iter().map(|(option, _)| option.as_str()).collect::<Vec<_>>().join(", ");
            return Err(Error::UnknownKey { path, key, known });
        };
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) if long == "nats" => {
                let urls: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
                urls.ok_or_else(|| Error::Shape { path: path.clone(), key: key.clone() })?.join(",")
            }
            _ => return Err(Error::Shape { path, key }),
        };
        if std::env::var_os(variable).is_none() {
            settings.push((variable.clone(), text));
        }
    }
    Ok(settings)
}
