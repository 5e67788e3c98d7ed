//! Users with passwords and API keys for services, kept as events ([`weft_events::domain::identity`]) in the
//! node's store, so every node sharing the store knows them and a revocation is in the log like any change.
//!
//! - **Users** log in with `POST /auth/token` (name and password) and get a short-lived token of the node's
//!   own ([`super::token::issue_login`]). Passwords are hashed with Argon2id; a bcrypt hash imported from
//!   another system is taken as it is and checked with bcrypt. A login token is refused once its user is
//!   disabled or changes its password after the token was issued.
//! - **API keys** are `weft_<id>_<secret>`: a 128-bit id that names the key's stream and 256 random bits of
//!   secret, shown once when made. The log keeps the secret's SHA-256 only. A key is sent as a bearer token;
//!   its subject (the actor its commands record) is `key:<name>`, so a key made afresh under the same name
//!   (rotation) owns what the old one made.
//!
//! Checks read the user's or key's stream from the store: the log is the truth, not a read model that may
//! lag. What was read is kept for [`RECHECK`], so a revocation on one node is refused by every other node
//! within that time (at once on the node that made it); the lists (`GET /auth/users`, `GET /auth/keys`) are the
//! `identities` read model's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use weft_events::domain::DomainEvent;
use weft_events::domain::identity::{self, apikey, key_stream, user, user_stream};
use weft_events::{Direction, EventStore, ExpectedVersion, StreamName, Timestamp};

use self::state::{Known, UserState};
use super::token::Refused;
use super::{Identity, Role};

/// How long what a check read of a user or key is trusted before it is read again.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Shortest password, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;

/// Longest password, in bytes (hashing is deliberately slow; unbounded input would make it slower).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Longest reason, key name or tenant, in bytes.
const MAX_TEXT_BYTES: usize = 200;

/// Most tenants of one user or key.
const MAX_TENANTS: usize = 100;

/// How many password hashes run at once: each takes tens of milliseconds of a core and 19 MiB, so logins
/// cannot take the node's cores from everything else.
const HASHING_AT_ONCE: usize = 2;

/// The prefix of every API key.
pub const KEY_PREFIX: &str = "weft_";

/// Why a change to the users or keys was refused. Never holds a password, a key or a hash.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// It exists already.
    #[error("{0}")]
    Exists(String),
    /// No such user or key.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error("the store: {0}")]
    Store(#[from] weft_events::Error),
}

/// A password as given: in the clear (hashed here), or a hash imported from another system.
pub enum Password {
    /// In the clear.
    Clear(String),
    /// An Argon2 PHC string or a bcrypt hash (`$2a$`, `$2b$`, `$2y$`).
    Hash(String),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// A wrong name or password, or a disabled user: the same answer for all.
    Refused(Refused),
    /// Too many attempts for this user name: how long to wait.
    TooMany(Duration),
}

/// A user that logged in: who it is, and its stream's version then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Who.
    pub identity: Identity,
    /// The version its token holds for.
    pub version: u64,
}

/// Login attempts per minute one user name may have, right or wrong.
pub const LOGIN_ATTEMPTS_PER_MINUTE: u32 = 10;

/// A new API key: its id, the key itself (shown once), and what it may do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewKey {
    /// Its id (what `weft key revoke` takes).
    pub id: String,
    /// The key, to send as `Authorization: Bearer <key>`. Not kept: it cannot be shown again.
    pub key: String,
    /// Its name; requests with it act as `key:<name>`.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its tenants.
    pub tenants: Vec<String>,
    /// When it stops working (microseconds since the epoch), if ever.
    pub expires_at: Option<i64>,
}

/// The users and API keys of a store.
pub struct Identities {
    store: Arc<dyn EventStore>,
    secret: super::token::Secret,
    known: Mutex<HashMap<StreamName, (Instant, Option<Known>)>>,
    hashing: tokio::sync::Semaphore,
    attempts: governor::DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identities")
    }
}

/// Checks a role's name.
fn role(name: &str) -> Result<Role, IdentityError> {
    Role::parse(name).ok_or_else(|| IdentityError::Invalid(format!("no role {name:?}: admin, operator, user or guest")))
}

/// Checks a list of tenants.
fn tenants(tenants: &[String]) -> Result<(), IdentityError> {
    if tenants.is_empty() || tenants.len() > MAX_TENANTS {
        return Err(IdentityError::Invalid(format!("give 1 to {MAX_TENANTS} tenants (`*`: every tenant)")));
    }
    for tenant in tenants {
        weft_events::envelope::check_label("tenant", tenant).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        if tenant.len() > 128 {
            return Err(IdentityError::Invalid("a tenant is at most 128 bytes".into()));
        }
    }
    Ok(())
}

/// Checks a free text (a reason, a key's name).
fn text(what: &str, value: &str) -> Result<(), IdentityError> {
    if value.trim().is_empty() || value.len() > MAX_TEXT_BYTES || value.chars().any(char::is_control) {
        return Err(IdentityError::Invalid(format!(
            "{what} must be 1 to {MAX_TEXT_BYTES} bytes, no control characters"
        )));
    }
    Ok(())
}

/// The stream of the user `name`, or why the name is not one.
fn user_name(name: &str) -> Result<StreamName, IdentityError> {
    let shape = name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    match user_stream(name) {
        Some(stream) if shape => Ok(stream),
        _ => Err(IdentityError::Invalid(format!(
            "a user name is 1 to {} bytes of printable ASCII, without spaces or `:`",
            identity::MAX_USER_NAME_BYTES
        ))),
    }
}

/// Whether `hash` is a bcrypt hash (`$2a$`, `$2b$`, `$2y$`, as other systems export them).
fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60
}

/// Whether `password` matches `hash` (Argon2 PHC or bcrypt); a hash of neither kind matches nothing.
fn password_matches(password: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier as _;
    if is_bcrypt(hash) {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    argon2::Argon2::default().verify_password(password.as_bytes(), hash).is_ok()
}

/// The SHA-256 of `secret`, in hex.
fn sha256_hex(secret: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Identities {
    /// The users and keys of `store`; login tokens are signed with `secret`.
    pub fn new(store: Arc<dyn EventStore>, secret: super::token::Secret) -> Self {
        let per_minute = std::num::NonZeroU32::new(LOGIN_ATTEMPTS_PER_MINUTE).expect("not zero");
        Self {
            store,
            secret,
            known: Mutex::default(),
            hashing: tokio::sync::Semaphore::new(HASHING_AT_ONCE),
            attempts: governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute)),
        }
    }

    /// The CSRF token of a browser session whose cookie holds `token`: an HMAC of it with the node's secret,
    /// so any node sharing the secret checks it without keeping sessions.
    pub fn csrf(&self, token: &str) -> String {
        use hmac::{KeyInit as _, Mac as _};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.secret.bytes()).expect("HMAC takes any key");
        mac.update(b"weft csrf\0");
        mac.update(token.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Whether `given` is the CSRF token of the session `token`.
    pub fn csrf_matches(&self, token: &str, given: &str) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(self.csrf(token).as_bytes(), given.as_bytes()))
    }

    /// A login token of `login` (from [`Identities::login`]), valid for `ttl`.
    pub fn issue_login(&self, login: &Login, ttl: Duration) -> String {
        super::token::issue_login(&self.secret, &login.identity, login.version, ttl)
    }

    /// Folds `stream`: the user or key it holds, if any.
    async fn read(&self, stream: &StreamName) -> Result<Option<Known>, weft_events::Error> {
        let mut events = Vec::new();
        let mut from = 1;
        loop {
            let page = self.store.read_stream(stream, from, Direction::Forwards, 1000).await?;
            let Some(last) = page.last() else { break };
            from = last.version + 1;
            let full = page.len() == 1000;
            events.extend(page);
            if !full {
                break;
            }
        }
        let kind = stream.as_str().split_once('-').map_or("", |(kind, _)| kind);
        let folded = match kind {
            user::AGGREGATE => state::user(&events).map(|user| user.map(|u| Known::User(Arc::new(u)))),
            apikey::AGGREGATE => state::key(&events).map(|key| key.map(|k| Known::Key(Arc::new(k)))),
            _ => Ok(None),
        };
        folded.map_err(|detail| weft_events::Error::Corrupt { location: format!("stream {stream}"), detail })
    }

    /// The user or key of `stream`, as read within [`RECHECK`] or read now.
    async fn lookup(&self, stream: &StreamName) -> Result<Option<Known>, weft_events::Error> {
        if let Some((at, known)) = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(stream)
            && at.elapsed() < RECHECK
        {
            return Ok(known.clone());
        }
        let known = self.read(stream).await?;
        let mut cache = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(stream.clone(), (Instant::now(), known.clone()));
        Ok(known)
    }

    /// Appends `event` to `stream` at `expected`, and forgets what was read of it.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        event: weft_events::NewEvent,
        actor: &str,
    ) -> Result<u64, IdentityError> {
        let event = event.tenant(identity::TENANT).actor(actor);
        let result = self.store.append(stream, expected, vec![event]).await;
        self.known.lock().unwrap_or_else(|p| p.into_inner()).remove(stream);
        Ok(result?.last_position)
    }

    /// A hash of `password` to keep: Argon2id of a clear one, or an imported hash checked for its shape.
    async fn hash(&self, password: Password) -> Result<String, IdentityError> {
        match password {
            Password::Hash(hash) => {
                let argon = argon2::password_hash::phc::PasswordHash::new(&hash).is_ok() && hash.starts_with("$argon2");
                if !(argon || is_bcrypt(&hash)) {
                    return Err(IdentityError::Invalid(
                        "an imported password hash must be an Argon2 PHC string or a bcrypt hash ($2a$, $2b$, $2y$)"
                            .into(),
                    ));
                }
                Ok(hash)
            }
            Password::Clear(clear) => {
                if clear.len() < MIN_PASSWORD_BYTES || clear.len() > MAX_PASSWORD_BYTES {
                    return Err(IdentityError::Invalid(format!(
                        "a password is {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes"
                    )));
                }
                let _turn = self.hashing.acquire().await.map_err(|_| IdentityError::Invalid("stopping".into()))?;
                tokio::task::spawn_blocking(move || {
                    use argon2::password_hash::PasswordHasher as _;
                    argon2::Argon2::default().hash_password(clear.as_bytes()).map(|h| h.to_string())
                })
                .await
                .map_err(|e| IdentityError::Invalid(format!("hashing failed: {e}")))?
                .map_err(|e| IdentityError::Invalid(format!("hashing failed: {e}")))
            }
        }
    }

    /// Adds a user. Answers its position in the log.
    pub async fn add_user(
        &self,
        name: &str,
        role_name: &str,
        user_tenants: &[String],
        password: Password,
        actor: &str,
    ) -> Result<u64, IdentityError> {
        let stream = user_name(name)?;
        let role = role(role_name)?;
        tenants(user_tenants)?;
        let password_hash = self.hash(password).await?;
        let event = user::Event::from(user::Added {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            tenants: user_tenants.to_vec(),
            password_hash,
            at: Timestamp::now(),
        });
        match self.append(&stream, ExpectedVersion::NoStream, encode(&event)?, actor).await {
            Err(IdentityError::Store(weft_events::Error::Conflict { .. })) => {
                Err(IdentityError::Exists(format!("a user named {name:?} exists already")))
            }
            other => other,
        }
    }

    /// The user `name`, read now.
    async fn user(&self, name: &str) -> Result<(StreamName, Arc<UserState>), IdentityError> {
        let stream = user_name(name)?;
        match self.read(&stream).await? {
            Some(Known::User(state)) => Ok((stream, state)),
            _ => Err(IdentityError::NotFound(format!("no user named {name:?}"))),
        }
    }

    /// Changes a user's password; the tokens it got before are refused from now on.
    pub async fn set_password(&self, name: &str, password: Password, actor: &str) -> Result<u64, IdentityError> {
        let (stream, state) = self.user(name).await?;
        if state.disabled {
            return Err(IdentityError::Invalid(format!("the user {name:?} is disabled")));
        }
        let password_hash = self.hash(password).await?;
        let event = user::Event::from(user::PasswordChanged { password_hash, at: Timestamp::now() });
        self.append(&stream, ExpectedVersion::Exact(state.version), encode(&event)?, actor).await
    }

    /// Disables a user: it cannot log in, and its tokens are refused from now on.
    pub async fn disable_user(&self, name: &str, reason: &str, actor: &str) -> Result<u64, IdentityError> {
        text("the reason", reason)?;
        let (stream, state) = self.user(name).await?;
        if state.disabled {
            return Err(IdentityError::Exists(format!("the user {name:?} is disabled already")));
        }
        let event = user::Event::from(user::Disabled { reason: reason.to_owned(), at: Timestamp::now() });
        self.append(&stream, ExpectedVersion::Exact(state.version), encode(&event)?, actor).await
    }

    /// The identity of the user `name` if `password` is its password and it is not disabled. Every refusal is
    /// the same, so a caller cannot tell a wrong name from a wrong password; an unknown name costs a hash too.
    pub async fn login(&self, name: &str, password: &str) -> Result<Login, LoginError> {
        use governor::clock::{Clock as _, DefaultClock};
        const REFUSED: LoginError = LoginError::Refused(Refused::Invalid("wrong user name or password"));
        if name.len() > identity::MAX_USER_NAME_BYTES || password.len() > MAX_PASSWORD_BYTES {
            return Err(REFUSED);
        }
        if let Err(not_until) = self.attempts.check_key(&name.to_owned()) {
            return Err(LoginError::TooMany(not_until.wait_time_from(DefaultClock::default().now())));
        }
        if self.attempts.len() > 10_000 {
            self.attempts.retain_recent();
        }
        let state = match user_name(name) {
            Ok(stream) => match self.read(&stream).await {
                Ok(Some(Known::User(state))) => Some(state),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "a login could not read its user");
                    return Err(LoginError::Refused(Refused::Invalid("the user store cannot be read now")));
                }
            },
            Err(_) => None,
        };
        // An unknown user is checked against a hash of nothing, to take as long as a known one.
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let hash = match &state {
            Some(state) => state.password_hash.clone(),
            None => DUMMY
                .get_or_init(|| {
                    use argon2::password_hash::PasswordHasher as _;
                    argon2::Argon2::default().hash_password(b"no such user").map(|h| h.to_string()).unwrap_or_default()
                })
                .clone(),
        };
        let _turn = self.hashing.acquire().await.map_err(|_| REFUSED)?;
        let clear = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || password_matches(&clear, &hash)).await.unwrap_or(false);
        match state {
            Some(state) if matches && !state.disabled => Ok(Login {
                identity: Identity {
                    subject: state.name.clone(),
                    role: state.role,
                    tenants: state.tenants.clone(),
                    delegate: false,
                },
                version: state.version,
            }),
            _ => Err(REFUSED),
        }
    }

    /// Whether a login token of `subject` issued at its stream's `version` still holds: the user is as it was
    /// then (not disabled since, its password not changed).
    pub async fn login_holds(&self, subject: &str, version: u64) -> Result<(), Refused> {
        let stream = user_name(subject).map_err(|_| Refused::Invalid("claims"))?;
        match self.lookup(&stream).await {
            Ok(Some(Known::User(state))) if state.version == version && !state.disabled => Ok(()),
            Ok(_) => Err(Refused::Revoked),
            Err(e) => {
                tracing::warn!(error = %e, "a token's user could not be read");
                Err(Refused::Invalid("the user store cannot be read now"))
            }
        }
    }

    /// Makes an API key. The answer holds the key itself, which is not kept.
    pub async fn create_key(
        &self,
        name: &str,
        role_name: &str,
        key_tenants: &[String],
        ttl: Option<Duration>,
        actor: &str,
    ) -> Result<NewKey, IdentityError> {
        text("a key's name", name)?;
        weft_events::envelope::check_label("key name", name).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let role = role(role_name)?;
        tenants(key_tenants)?;
        let mut id = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut id);
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut bytes);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let expires_at = ttl.map(|ttl| Timestamp(Timestamp::now().0.saturating_add(ttl.as_micros() as i64)));
        let event = apikey::Event::from(apikey::Created {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            tenants: key_tenants.to_vec(),
            secret_sha256: sha256_hex(&secret),
            expires_at,
            at: Timestamp::now(),
        });
        let stream = key_stream(&id).expect("a fresh id names a stream");
        self.append(&stream, ExpectedVersion::NoStream, encode(&event)?, actor).await?;
        Ok(NewKey {
            key: format!("{KEY_PREFIX}{id}_{secret}"),
            id,
            name: name.to_owned(),
            role,
            tenants: key_tenants.to_vec(),
            expires_at: expires_at.map(|t| t.0),
        })
    }

    /// Revokes an API key: it is refused from now on (on other nodes within [`RECHECK`]).
    pub async fn revoke_key(&self, id: &str, reason: &str, actor: &str) -> Result<u64, IdentityError> {
        text("the reason", reason)?;
        let missing = || IdentityError::NotFound(format!("no API key {id:?}"));
        let stream = key_stream(id).ok_or_else(missing)?;
        let Some(Known::Key(state)) = self.read(&stream).await? else { return Err(missing()) };
        if state.revoked {
            return Err(IdentityError::Exists(format!("the API key {id} is revoked already")));
        }
        let event = apikey::Event::from(apikey::Revoked { reason: reason.to_owned(), at: Timestamp::now() });
        self.append(&stream, ExpectedVersion::Exact(state.version), encode(&event)?, actor).await
    }

    /// The identity an API key carries, or why it is refused.
    pub async fn key(&self, token: &str) -> Result<Identity, Refused> {
        const MALFORMED: Refused = Refused::Invalid("malformed API key");
        let rest = token.strip_prefix(KEY_PREFIX).ok_or(MALFORMED)?;
        let (id, secret) = (rest.get(..32).ok_or(MALFORMED)?, rest.get(33..).ok_or(MALFORMED)?);
        if rest.as_bytes().get(32) != Some(&b'_') || secret.len() != 43 {
            return Err(MALFORMED);
        }
        let stream = key_stream(id).ok_or(MALFORMED)?;
        let state = match self.lookup(&stream).await {
            Ok(Some(Known::Key(state))) => state,
            Ok(_) => return Err(Refused::Invalid("unknown API key")),
            Err(e) => {
                tracing::warn!(error = %e, "an API key could not be read");
                return Err(Refused::Invalid("the key store cannot be read now"));
            }
        };
        let given = sha256_hex(secret);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), state.secret_sha256.as_bytes())) {
            return Err(Refused::Invalid("unknown API key"));
        }
        if state.revoked {
            return Err(Refused::Revoked);
        }
        if state.expires_at.is_some_and(|at| at < Timestamp::now()) {
            return Err(Refused::Expired);
        }
        Ok(Identity {
            subject: format!("key:{}", state.name),
            role: state.role,
            tenants: state.tenants.clone(),
            delegate: false,
        })
    }
}

fn encode<E: DomainEvent>(event: &E) -> Result<weft_events::NewEvent, IdentityError> {
    event.to_new_event().map_err(|e| IdentityError::Invalid(e.to_string()))
}

mod state;
#[cfg(test)]
mod tests;
