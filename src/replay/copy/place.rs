//! Where a copy's stores are, as `--from` and `--to` name them.

use crate::store::open as store;

/// A place a store is, as `--from` and `--to` name it: `sqlite:PATH`, `jetstream:URLS/STREAM` or
/// `kurrentdb:CONNECTION[#NAMESPACE]`.
#[derive(Clone, PartialEq, Eq)]
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
    /// A KurrentDB store (its keys in the file `--from-keys` or `--to-keys` names).
    KurrentDb(store::KurrentDb),
}

/// Never a KurrentDB connection string: it may hold a password.
impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Place::JetStream { nats, stream } => write!(f, "jetstream:{nats}/{stream}"),
            Place::KurrentDb(at) => write!(f, "{at:?}"),
        }
    }
}

impl std::str::FromStr for Place {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "a store is sqlite:PATH, jetstream:NATS_URLS/STREAM (jetstream:nats://127.0.0.1:4222/WEFT_EVENTS) \
                     or kurrentdb:CONNECTION[#NAMESPACE] (kurrentdb:esdb://127.0.0.1:2113?tls=false#weft)";
        if let Some(rest) = text.strip_prefix("kurrentdb:") {
            let (connection, namespace) = rest.rsplit_once('#').unwrap_or((rest, "weft"));
            let namespace_ok = !namespace.is_empty()
                && namespace.len() <= 32
                && namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            // Not the text itself in the message: a connection string may hold a password.
            if !connection.contains("://") {
                return Err(format!("kurrentdb: no connection string; {usage}"));
            }
            if !namespace_ok {
                return Err(format!(
                    "kurrentdb: {namespace:?} is not a namespace (1 to 32 letters, digits, '_'); {usage}"
                ));
            }
            let connection = connection.to_owned();
            return Ok(Place::KurrentDb(store::KurrentDb { connection, namespace: namespace.to_owned() }));
        }
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
    /// Where the store is, as [`store::open`] takes it; `auth` for a JetStream one; `keys`, the keys' file
    /// of a SQLite store (beside it by default) or a KurrentDB one (which has no default).
    pub fn options(
        &self,
        auth: &crate::nats::NatsAuth,
        keys: Option<std::path::PathBuf>,
    ) -> Result<store::Options, String> {
        let none = std::path::PathBuf::new();
        Ok(match self {
            Place::Sqlite(path) => store::Options { sqlite: path.clone(), jetstream: None, kurrentdb: None, keys },
            Place::JetStream { nats, stream } => {
                if keys.is_some() {
                    return Err(format!("{self:?} keeps its keys in JetStream: it takes no keys' file"));
                }
                let jetstream = Some(store::JetStream::new(nats, stream, auth));
                store::Options { sqlite: none, jetstream, kurrentdb: None, keys: None }
            }
            Place::KurrentDb(at) => {
                let Some(keys) = keys else {
                    return Err(format!(
                        "{self:?}: a KurrentDB store's tenants' keys are a file of its node's (its --keys); name it \
                         with --from-keys or --to-keys"
                    ));
                };
                store::Options { sqlite: none, jetstream: None, kurrentdb: Some(at.clone()), keys: Some(keys) }
            }
        })
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
        for bad in [
            "",
            "sqlite:",
            "events.db",
            "jetstream:nats://a:4222",
            "jetstream:WEFT",
            "jetstream:nats://a/b.c",
            "kurrentdb:",
            "kurrentdb:admin:s3cret@host",
            "kurrentdb:esdb://admin:s3cret@host:2113#a.b",
        ] {
            let error = bad.parse::<Place>().unwrap_err();
            assert!(
                error.contains("sqlite:PATH, jetstream:") && error.contains("kurrentdb:CONNECTION"),
                "{bad}: {error}"
            );
            assert!(!error.contains("s3cret"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_kurrentdb_place_takes_a_namespace_and_needs_its_keys_file() {
        let place: Place = "kurrentdb:esdb://admin:s3cret@h:2113?tls=false#orders".parse().unwrap();
        let Place::KurrentDb(at) = &place else { panic!("{place:?}") };
        assert_eq!((at.connection.as_str(), at.namespace.as_str()), ("esdb://admin:s3cret@h:2113?tls=false", "orders"));
        assert_eq!(format!("{place:?}"), "kurrentdb:esdb://h:2113#orders", "no credentials shown");
        let plain: Place = "kurrentdb:esdb://h:2113".parse().unwrap();
        assert!(matches!(&plain, Place::KurrentDb(at) if at.namespace == "weft"));
        let auth = crate::nats::NatsAuth::default();
        let error = place.options(&auth, None).unwrap_err();
        assert!(error.contains("--from-keys or --to-keys") && !error.contains("s3cret"), "{error}");
        let options = place.options(&auth, Some("k/keys.db".into())).unwrap();
        assert_eq!(options.keys, Some("k/keys.db".into()));
        let jetstream: Place = "jetstream:nats://a:4222/WEFT_EVENTS".parse().unwrap();
        assert!(jetstream.options(&auth, Some("keys.db".into())).is_err());
    }
}
