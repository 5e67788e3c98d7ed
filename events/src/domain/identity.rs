//! Events of the identities a node knows besides tokens: users with passwords (`user-<hash of the name>`) and
//! API keys for services (`apikey-<id>`). Like the tenants' erasures they are no aggregate's: the node's auth
//! service appends them (with the stream's version expected, so two nodes adding one user cannot both win)
//! and reads a stream back to check a password or a key.
//!
//! They hold secrets' hashes only (a password's Argon2id or imported bcrypt hash, a key's SHA-256), never a
//! secret; they are not published on the bus, and the history read model keeps them without the hashes.
//! Their envelopes' tenant is [`TENANT`], which only an identity of every tenant reaches.

use serde::{Deserialize, Serialize};

use crate::envelope::{StreamName, Timestamp};

/// The envelope tenant of identity events: what only an identity of every tenant (`*`) reads.
pub const TENANT: &str = "*";

/// The payload fields holding a hash, which readers other than the auth service drop.
pub const HASH_FIELDS: [&str; 2] = ["password_hash", "secret_sha256"];

/// Longest user name, in bytes.
pub const MAX_USER_NAME_BYTES: usize = 64;

/// The stream of the user named `name` (at most [`MAX_USER_NAME_BYTES`]): names may hold characters stream
/// names may not (`@`, `.`), so the stream is named by the name's bytes in hex; `None` for a longer name.
pub fn user_stream(name: &str) -> Option<StreamName> {
    if name.is_empty() || name.len() > MAX_USER_NAME_BYTES {
        return None;
    }
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    Some(StreamName::from_stored(&format!("{}-{hex}", user::AGGREGATE)))
}

/// The stream of the API key `id` (32 hex digits).
pub fn key_stream(id: &str) -> Option<StreamName> {
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| StreamName::from_stored(&format!("{}-{id}", apikey::AGGREGATE)))
}

/// The users' events.
pub mod user {
    use super::*;

    /// The users' stream kind.
    pub const AGGREGATE: &str = "user";

    /// A user was added.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Added {
        /// The name it logs in with, the subject of its tokens.
        pub name: String,
        /// Its role (`admin`, `operator`, `user`, `guest`).
        pub role: String,
        /// Its tenants (`*`: every tenant).
        pub tenants: Vec<String>,
        /// Its password's hash (PHC string: Argon2id, or bcrypt as imported).
        pub password_hash: String,
        /// When.
        pub at: Timestamp,
    }

    /// A user's password was changed: tokens it got before are refused from now on.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct PasswordChanged {
        /// The new password's hash.
        pub password_hash: String,
        /// When.
        pub at: Timestamp,
    }

    /// A user may no longer log in; tokens it got before are refused from now on.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Disabled {
        /// Why, as the operator gave it.
        pub reason: String,
        /// When.
        pub at: Timestamp,
    }

    crate::domain::domain_events! { "user";
        /// See [`Added`].
        Added(Added) = "user.added", v 1,
        /// See [`PasswordChanged`].
        PasswordChanged(PasswordChanged) = "user.password_changed", v 1,
        /// See [`Disabled`].
        Disabled(Disabled) = "user.disabled", v 1,
    }
}

/// The API keys' events.
pub mod apikey {
    use super::*;

    /// The API keys' stream kind.
    pub const AGGREGATE: &str = "apikey";

    /// An API key was made. Its secret was shown once, to whoever made it; only its hash is kept.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Created {
        /// What it is for (a service's name): the subject of its requests is `key:<name>`.
        pub name: String,
        /// Its role.
        pub role: String,
        /// Its tenants (`*`: every tenant).
        pub tenants: Vec<String>,
        /// The SHA-256 of its secret, in hex (the secret is 256 random bits: no slow hash is needed).
        pub secret_sha256: String,
        /// When it stops working, if ever.
        #[serde(default)]
        pub expires_at: Option<Timestamp>,
        /// When.
        pub at: Timestamp,
    }

    /// An API key was revoked: it is refused from now on.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
    pub struct Revoked {
        /// Why.
        pub reason: String,
        /// When.
        pub at: Timestamp,
    }

    crate::domain::domain_events! { "apikey";
        /// See [`Created`].
        Created(Created) = "apikey.created", v 1,
        /// See [`Revoked`].
        Revoked(Revoked) = "apikey.revoked", v 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainEvent;
    use crate::domain::tests::round_trip;

    #[test]
    fn identity_events_round_trip_and_their_streams_are_valid_names() {
        let added: user::Event = user::Added {
            name: "alice@acme.example".into(),
            role: "user".into(),
            tenants: vec!["acme".into()],
            password_hash: "$argon2id$...".into(),
            at: Timestamp(1),
        }
        .into();
        assert_eq!(added.event_type(), "user.added");
        assert_eq!(round_trip(&added), added);
        let revoked: apikey::Event = apikey::Revoked { reason: "leaked".into(), at: Timestamp(2) }.into();
        assert_eq!(round_trip(&revoked), revoked);
        let stream = user_stream("alice@acme.example").unwrap();
        assert!(StreamName::new(stream.as_str()).is_ok());
        assert_ne!(Some(stream), user_stream("bob@acme.example"));
        assert!(StreamName::new(user_stream(&"x".repeat(MAX_USER_NAME_BYTES)).unwrap().as_str()).is_ok());
        assert!(user_stream(&"x".repeat(MAX_USER_NAME_BYTES + 1)).is_none());
        assert!(key_stream("0123456789abcdef0123456789abcdef").is_some());
        assert!(key_stream("0123456789ABCDEF0123456789abcdef").is_none());
        assert!(key_stream("../x").is_none());
    }
}
