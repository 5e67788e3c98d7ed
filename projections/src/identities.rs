//! The identities read model: the users and API keys of the node's store, for `GET /auth/users` and
//! `GET /auth/keys` (admins only). It holds no hash: checking a password or a key reads the log itself
//! (`weft::auth::identities`), so a revocation never waits for this model.
//!
//! Tables `users (name, stream, role, tenants, status, created_at, updated_at, created_by, version)` and
//! `api_keys (id, name, role, tenants, status, expires_at, created_at, updated_at, created_by, version)`:
//! `status` is `active`, `disabled` (users) or `revoked` (keys); `tenants` is a JSON list.

use rusqlite::{Transaction, params};
use weft_events::Envelope;
use weft_events::domain::DomainEvent;
use weft_events::domain::identity::{apikey, user};

use crate::{ApplyError, Projection};

/// The projection's name.
pub const NAME: &str = "identities";

/// The identities projection.
#[derive(Debug, Default)]
pub struct Identities;

impl Projection for Identities {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users", "api_keys"]
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS users (
                 name TEXT PRIMARY KEY,
                 stream TEXT NOT NULL UNIQUE,
                 role TEXT NOT NULL,
                 tenants TEXT NOT NULL,
                 status TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 created_by TEXT NOT NULL,
                 version INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS api_keys (
                 id TEXT PRIMARY KEY,
                 name TEXT NOT NULL,
                 role TEXT NOT NULL,
                 tenants TEXT NOT NULL,
                 status TEXT NOT NULL,
                 expires_at INTEGER,
                 created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 created_by TEXT NOT NULL,
                 version INTEGER NOT NULL
             );",
        )
    }

    fn wants(&self, event: &Envelope) -> bool {
        crate::of_kind(event, user::AGGREGATE) || crate::of_kind(event, apikey::AGGREGATE)
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        let Some((kind, id)) = envelope.stream.as_str().split_once('-') else { return Ok(()) };
        let decode = |source| ApplyError::Decode { position: envelope.position, source };
        let (stream, version, actor) = (envelope.stream.as_str(), envelope.version as i64, &*envelope.actor);
        match kind {
            user::AGGREGATE => match user::Event::from_envelope(envelope).map_err(decode)? {
                user::Event::Added(e) => {
                    crate::exec(
                        tx,
                        "INSERT INTO users (name, stream, role, tenants, status, created_at, updated_at, created_by,
                                            version)
                         VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                        params![
                            e.name,
                            stream,
                            e.role,
                            serde_json::to_string(&e.tenants).unwrap_or_default(),
                            e.at.0,
                            actor,
                            version
                        ],
                    )?;
                }
                user::Event::PasswordChanged(e) => {
                    crate::exec(
                        tx,
                        "UPDATE users SET updated_at = ?2, version = ?3 WHERE stream = ?1",
                        params![stream, e.at.0, version],
                    )?;
                }
                user::Event::Disabled(e) => {
                    crate::exec(
                        tx,
                        "UPDATE users SET status = 'disabled', updated_at = ?2, version = ?3 WHERE stream = ?1",
                        params![stream, e.at.0, version],
                    )?;
                }
            },
            apikey::AGGREGATE => match apikey::Event::from_envelope(envelope).map_err(decode)? {
                apikey::Event::Created(e) => {
                    crate::exec(
                        tx,
                        "INSERT INTO api_keys (id, name, role, tenants, status, expires_at, created_at, updated_at,
                                               created_by, version)
                         VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?6, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                        params![
                            id,
                            e.name,
                            e.role,
                            serde_json::to_string(&e.tenants).unwrap_or_default(),
                            e.expires_at.map(|t| t.0),
                            e.at.0,
                            actor,
                            version
                        ],
                    )?;
                }
                apikey::Event::Revoked(e) => {
                    crate::exec(
                        tx,
                        "UPDATE api_keys SET status = 'revoked', updated_at = ?2, version = ?3 WHERE id = ?1",
                        params![id, e.at.0, version],
                    )?;
                }
            },
            _ => {}
        }
        Ok(())
    }
}
