//! Where Weft's streams are in KurrentDB, and how a connection string is shown.
//!
//! A store is a **namespace** in one KurrentDB database (default `weft`), so that several Weft stores, and
//! other applications, can share a database:
//!
//! - events of the Weft stream `document-0192...` are in the KurrentDB stream `weft.document-0192...` (its
//!   KurrentDB category, everything before the first `-`, is then `weft.document`, so `$ce-weft.document`
//!   works as KurrentDB users expect);
//! - the stream's latest snapshot is in `weft-snapshot.document-0192...` (`$maxCount` 1);
//! - a checkpoint named `process-orchestrator` is in `weft-checkpoint.process-orchestrator` (`$maxCount` 1).
//!
//! Weft's stream names hold no `.` and a namespace holds neither `.` nor `-`, so the three kinds never
//! collide and the prefix `weft.` picks exactly the events out of `$all`.

use weft_events::StreamName;

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "weft";

/// Longest namespace, in bytes: it prefixes every stream name, and KurrentDB stream names should stay short.
pub const MAX_NAMESPACE_BYTES: usize = 32;

/// A namespace that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "KurrentDB namespace {name:?} is not valid: it must be 1 to {MAX_NAMESPACE_BYTES} ASCII letters, digits or '_'"
)]
pub struct NamespaceError {
    /// The namespace, as given.
    pub name: String,
}

/// The stream names of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: String,
    events: String,
    snapshots: String,
    checkpoints: String,
}

impl Names {
    /// The names of the store in `namespace`.
    pub fn new(namespace: &str) -> Result<Self, NamespaceError> {
        let ok = !namespace.is_empty()
            && namespace.len() <= MAX_NAMESPACE_BYTES
            && namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(NamespaceError { name: namespace.to_owned() });
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            events: format!("{namespace}."),
            snapshots: format!("{namespace}-snapshot."),
            checkpoints: format!("{namespace}-checkpoint."),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The prefix of every events stream: what `$all` is filtered on.
    pub fn events_prefix(&self) -> &str {
        &self.events
    }

    /// The prefix of every checkpoint stream.
    pub fn checkpoints_prefix(&self) -> &str {
        &self.checkpoints
    }

    /// The KurrentDB stream of a Weft stream's events.
    pub fn events(&self, stream: &StreamName) -> String {
        format!("{}{stream}", self.events)
    }

    /// The KurrentDB stream of a Weft stream's snapshots.
    pub fn snapshots(&self, stream: &StreamName) -> String {
        format!("{}{stream}", self.snapshots)
    }

    /// The KurrentDB stream of a checkpoint.
    pub fn checkpoint(&self, name: &StreamName) -> String {
        format!("{}{name}", self.checkpoints)
    }

    /// The Weft stream of a KurrentDB events stream; `None` for a stream that is not one of this store's
    /// (another namespace, another application, a system stream), whatever its prefix. Every node decides this
    /// the same way, which is what makes the positions they number agree.
    pub fn stream_of(&self, kurrent: &str) -> Option<StreamName> {
        StreamName::new(kurrent.strip_prefix(&self.events)?).ok()
    }

    /// The checkpoint name of a KurrentDB checkpoint stream, if it is one of this store's.
    pub fn checkpoint_of(&self, kurrent: &str) -> Option<StreamName> {
        StreamName::new(kurrent.strip_prefix(&self.checkpoints)?).ok()
    }
}

/// A connection string as it may be shown in logs and errors: the password (`esdb://user:password@...`),
/// wherever it appears, and the values of query options that name secrets are replaced by `***`.
pub fn redact(connection: &str) -> String {
    let (scheme, rest) = connection.split_once("://").unwrap_or(("", connection));
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = match authority_and_path.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{user}:***@{hosts}")
        }
        None => authority_and_path.to_owned(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret_option(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let scheme = if scheme.is_empty() { String::new() } else { format!("{scheme}://") };
    let shown = match query {
        Some(q) => format!("{scheme}{authority}?{q}"),
        None => format!("{scheme}{authority}"),
    };
    // The password may be an option's value too.
    hide(&shown, connection)
}

/// `text` with every appearance of the connection string's password replaced.
pub fn hide(text: &str, connection: &str) -> String {
    let password = connection
        .split_once("://")
        .and_then(|(_, rest)| rest.split('?').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    match password {
        Some(password) => text.replace(password, "***"),
        None => text.to_owned(),
    }
}

/// Query options of a connection string whose values are secrets (or paths to them).
fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "token", "userkeyfile", "secret"].iter().any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str) -> StreamName {
        StreamName::new(name).unwrap()
    }

    #[test]
    fn the_three_kinds_of_stream_never_collide() {
        let names = Names::new("weft").unwrap();
        let s = stream("document-0192f0c4");
        assert_eq!(names.events(&s), "weft.document-0192f0c4");
        assert_eq!(names.snapshots(&s), "weft-snapshot.document-0192f0c4");
        assert_eq!(names.checkpoint(&stream("process-orchestrator")), "weft-checkpoint.process-orchestrator");
        assert_eq!(names.stream_of("weft.document-0192f0c4"), Some(s.clone()));
        // Snapshots, checkpoints, system streams, other namespaces and other applications are not events.
        for other in [
            "weft-snapshot.document-0192f0c4",
            "weft-checkpoint.process-orchestrator",
            "$$weft.document-0192f0c4",
            "$ce-weft.document",
            "weftx.document-1",
            "weft.has.dots",
            "weft.",
            "orders-17",
        ] {
            assert_eq!(names.stream_of(other), None, "{other}");
        }
        assert_eq!(names.checkpoint_of("weft-checkpoint.process-orchestrator"), Some(stream("process-orchestrator")));
        assert_eq!(names.checkpoint_of("weft.process-orchestrator"), None);
    }

    #[test]
    fn namespaces_that_would_blur_the_prefixes_are_refused() {
        for bad in ["", "a.b", "a-b", "a b", "é", &"x".repeat(MAX_NAMESPACE_BYTES + 1)] {
            assert_eq!(Names::new(bad), Err(NamespaceError { name: bad.to_owned() }), "{bad:?}");
        }
        assert!(Names::new("tenant_7").is_ok());
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("esdb://admin:changeit@node1:2113,node2:2113?tls=true&nodePreference=leader"),
            "esdb://admin:***@node1:2113,node2:2113?tls=true&nodePreference=leader"
        );
        assert_eq!(redact("esdb+discover://cluster.local:2113"), "esdb+discover://cluster.local:2113");
        assert_eq!(
            redact("kurrentdb://u:p@h:2113?userKeyFile=/k.pem&tlsVerifyCert=false"),
            "kurrentdb://u:***@h:2113?userKeyFile=***&tlsVerifyCert=false"
        );
        // A password holding '@' is cut at the last one, so no part of it shows.
        assert!(!redact("esdb://u:p@ss@h:2113").contains("ss"));
    }

    #[test]
    fn the_password_is_hidden_from_client_messages() {
        let connection = "esdb://admin:s3cret-pw@node:2113?tls=false";
        assert_eq!(hide("cannot log in as admin with s3cret-pw", connection), "cannot log in as admin with ***");
        assert_eq!(hide("no password here", "esdb://node:2113"), "no password here");
    }
}
