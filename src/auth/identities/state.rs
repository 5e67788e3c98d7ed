//! A user or an API key as its stream's events say: what a check of a password or a key reads.

use std::sync::Arc;

use weft_events::domain::DomainEvent;
use weft_events::domain::identity::{apikey, user};
use weft_events::{Envelope, Timestamp};

use crate::auth::Role;

/// A user, as its stream says.
#[derive(Debug, Clone)]
pub(super) struct UserState {
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) tenants: Vec<String>,
    pub(super) password_hash: String,
    pub(super) disabled: bool,
    /// Its stream's version: a login token holds for the version it was issued at.
    pub(super) version: u64,
}

/// An API key, as its stream says.
#[derive(Debug, Clone)]
pub(super) struct KeyState {
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) tenants: Vec<String>,
    pub(super) secret_sha256: String,
    pub(super) expires_at: Option<Timestamp>,
    pub(super) revoked: bool,
    pub(super) version: u64,
}

/// What a stream holds.
#[derive(Debug, Clone)]
pub(super) enum Known {
    User(Arc<UserState>),
    Key(Arc<KeyState>),
}

fn role(name: &str) -> Result<Role, String> {
    Role::parse(name).ok_or_else(|| format!("no role {name:?}"))
}

/// The user `events` (its stream's, in order) make, if any; why not, for events out of order.
pub(super) fn user(events: &[Envelope]) -> Result<Option<UserState>, String> {
    let mut state: Option<UserState> = None;
    for event in events {
        match (user::Event::from_envelope(event).map_err(|e| e.to_string())?, &mut state) {
            (user::Event::Added(e), None) => {
                state = Some(UserState {
                    name: e.name,
                    role: role(&e.role)?,
                    tenants: e.tenants,
                    password_hash: e.password_hash,
                    disabled: false,
                    version: 0,
                });
            }
            (user::Event::PasswordChanged(e), Some(s)) => s.password_hash = e.password_hash,
            (user::Event::Disabled(_), Some(s)) => s.disabled = true,
            _ => return Err("a user's events out of order".into()),
        }
        if let Some(s) = &mut state {
            s.version = event.version;
        }
    }
    Ok(state)
}

/// The API key `events` (its stream's, in order) make, if any; why not, for events out of order.
pub(super) fn key(events: &[Envelope]) -> Result<Option<KeyState>, String> {
    let mut state: Option<KeyState> = None;
    for event in events {
        match (apikey::Event::from_envelope(event).map_err(|e| e.to_string())?, &mut state) {
            (apikey::Event::Created(e), None) => {
                state = Some(KeyState {
                    name: e.name,
                    role: role(&e.role)?,
                    tenants: e.tenants,
                    secret_sha256: e.secret_sha256,
                    expires_at: e.expires_at,
                    revoked: false,
                    version: 0,
                });
            }
            (apikey::Event::Revoked(_), Some(s)) => s.revoked = true,
            _ => return Err("a key's events out of order".into()),
        }
        if let Some(s) = &mut state {
            s.version = event.version;
        }
    }
    Ok(state)
}
