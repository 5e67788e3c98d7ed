//! Where a copy's stores are, as `--from` and `--to` name them.

use crate::store::open as store;

/// A place a store is, as `--from` and `--to` name it: `sqlite:PATH` or `jetstream:URLS/STREAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A SQLite log file (its keys in `keys.db` beside it).
    Sqlite(std::path::PathBuf),
    /// A JetStream stream on these servers (its keys in `<STREAM>_KEYS`).
    JetStream {
        /// NATS server URLs, comma separated.
        nats: String,
        /// The events' stream.
        stream: String,
    },
}

impl std::str::FromStr for Place {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage =
            "a store is sqlite:PATH or jetstream:NATS_URLS/STREAM (jetstream:nats://127.0.0.1:4222/WEFT_EVENTS)";
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(format!("{text:?}: no path; {usage}"));
            }
            return Ok(Place::Sqlite(path.into()));
        }
        if let Some(rest) = text.strip_prefix("jetstream:") {
            let Some((nats, stream)) = rest.rsplit_once('/') else {
                return Err(format!("{text:?}: no stream; {usage}"));
            };
            let stream_ok = !stream.is_empty()
                && stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                && nats.contains("://");
            if !stream_ok {
                return Err(format!("{text:?}: {stream:?} is not a stream name after the servers' URLs; {usage}"));
            }
            return Ok(Place::JetStream { nats: nats.to_owned(), stream: stream.to_owned() });
        }
        Err(format!("{text:?}: {usage}"))
    }
}

impl Place {
    /// Where the store is, as [`store::open`] takes it; `auth` for a JetStream one.
    pub fn options(&self, auth: &crate::nats::NatsAuth) -> store::Options {
        let (sqlite, jetstream) = match self {
            Place::Sqlite(path) => (path.clone(), None),
            Place::JetStream { nats, stream } => {
                (std::path::PathBuf::new(), Some(store::JetStream::new(nats, stream, auth)))
            }
        };
        store::Options { sqlite, jetstream, keys: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse_and_bad_ones_say_what_a_place_is() {
        assert_eq!("sqlite:data/events.db".parse(), Ok(Place::Sqlite("data/events.db".into())));
        assert_eq!(
            "jetstream:nats://a:4222,nats://b:4222/WEFT_EVENTS".parse(),
            Ok(Place::JetStream { nats: "nats://a:4222,nats://b:4222".into(), stream: "WEFT_EVENTS".into() })
        );
        for bad in ["", "sqlite:", "events.db", "jetstream:nats://a:4222", "jetstream:WEFT", "jetstream:nats://a/b.c"] {
            let error = bad.parse::<Place>().unwrap_err();
            assert!(error.contains("sqlite:PATH or jetstream:"), "{bad}: {error}");
        }
    }
}
