//! Bearer tokens: JWTs signed with the node's secret (HS256), verified with the algorithm pinned, issuer,
//! audience, expiry and not-before checked with a small leeway.
//!
//! The secret is 32 random bytes in a file of the node's data folder (`auth.secret`, owner-only), made on the
//! first start; nodes that share a store share the file (or `--auth-secret-file`). On start a node also writes
//! an admin token to `admin.token` beside it, which the `weft` CLI on the same machine reads by itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Identity, Role};

/// The issuer and audience of the node's own tokens.
pub const ISSUER: &str = "weft";

/// The audience of the node's own tokens.
pub const AUDIENCE: &str = "weft";

/// The clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// The longest token taken; longer ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How long the admin token a node writes at start lives.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject.
    pub sub: String,
    /// Its role.
    pub role: Role,
    /// Its tenants (`*`: all).
    pub tenants: Vec<String>,
    /// The issuer.
    pub iss: String,
    /// The audience.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    pub nbf: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Whether the subject acts for others: only the node's own token ([`NodeToken`]) says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delegate: bool,
    /// For a token a user got by logging in (`POST /auth/token`), the version of the user's stream then: it
    /// holds only while the user is unchanged, not disabled and with the same password
    /// ([`super::identities::Identities::login_holds`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<u64>,
}

/// Why a token was refused. The message says what was wrong with it, never the token or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No `Authorization: Bearer` header.
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("the token is over {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not a token this node accepts (shape, algorithm, signature, issuer, audience, claims).
    #[error("the token is not valid: {0}")]
    Invalid(&'static str),
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
    /// Before its not-before time.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Its API key was revoked, or its user disabled or given a new password since it was issued.
    #[error("the token has been revoked")]
    Revoked,
}

/// Why the node's secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read or made.
    #[error("the auth secret {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It holds too little to sign with.
    #[error("the auth secret {path} holds {bytes} bytes; at least 32 are needed")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// What it holds.
        bytes: usize,
    },
}

/// The node's signing secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    /// The secret in `path`, made (32 random bytes, base64, mode 0600) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let io = |source| SecretError::Io { path: path.to_owned(), source };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
                    std::fs::create_dir_all(folder).map_err(io)?;
                }
                let bytes: [u8; 32] = rand::random();
                let text = base64::engine::general_purpose::STANDARD.encode(bytes);
                write_private(path, text.as_bytes(), true).map_err(io)?;
                // Another process may have made it first: what is in the file is the secret.
                Self::load(path)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The secret in `path`, which must exist.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Io { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_else(|_| text.as_bytes().to_vec());
        if bytes.len() < 32 {
            return Err(SecretError::TooShort { path: path.to_owned(), bytes: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// Its bytes, to key an HMAC with (never to show).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// A secret of these bytes (tests, benchmarks).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

/// Writes `bytes` to `path` readable by its owner only; `new` refuses to replace an existing file.
pub fn write_private(path: &Path, bytes: &[u8], new: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(bytes)?;
            file.sync_all()
        }
        Err(e) if new && e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Issues tokens signed with the node's secret.
pub fn issue(secret: &Secret, subject: &str, role: Role, tenants: &[String], ttl: Duration) -> String {
    sign(secret, subject, role, tenants, ttl, Kind::Plain)
}

/// A token for a user that logged in with its password, its stream at `version`: it holds while the user
/// stays so (see [`Claims::login`]).
pub fn issue_login(secret: &Secret, identity: &Identity, version: u64, ttl: Duration) -> String {
    sign(secret, &identity.subject, identity.role, &identity.tenants, ttl, Kind::Login(version))
}

/// What a token is besides its claims.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `weft token issue`'s, the admin token.
    Plain,
    /// A node's own: it acts for others.
    Delegate,
    /// A user's login, at this version of its stream.
    Login(u64),
}

fn sign(secret: &Secret, subject: &str, role: Role, tenants: &[String], ttl: Duration, kind: Kind) -> String {
    let iat = now();
    let claims = Claims {
        sub: subject.to_owned(),
        role,
        tenants: tenants.to_vec(),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        exp: iat + ttl.as_secs(),
        nbf: iat,
        iat,
        delegate: kind == Kind::Delegate,
        login: match kind {
            Kind::Login(version) => Some(version),
            _ => None,
        },
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&secret.0))
        .expect("HS256 signs with any secret")
}

/// Verifies tokens signed with the node's secret and, when one is configured, an OIDC provider's.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    oidc: Option<super::oidc::Provider>,
    verified: std::sync::Arc<std::sync::Mutex<Verified>>,
    limits: Option<std::sync::Arc<super::limits::RateLimits>>,
    identities: Option<std::sync::Arc<super::identities::Identities>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.oidc {
            Some(provider) => write!(f, "Verifier(HS256, OIDC {})", provider.issuer()),
            None => f.write_str("Verifier(HS256)"),
        }
    }
}

impl Verifier {
    /// A verifier of the node's own tokens.
    pub fn new(secret: &Secret) -> Self {
        // The algorithm is pinned: a token saying `none`, or RS256/ES256 with whatever key, is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let verified = Default::default();
        let key = DecodingKey::from_secret(&secret.0);
        Self { key, validation, oidc: None, verified, limits: None, identities: None }
    }

    /// The same verifier, also taking the API keys of `identities` and checking that its users' login tokens
    /// still hold.
    pub fn with_identities(self, identities: std::sync::Arc<super::identities::Identities>) -> Self {
        Self { identities: Some(identities), ..self }
    }

    /// The users and API keys it checks against, if any.
    pub fn identities(&self) -> Option<&std::sync::Arc<super::identities::Identities>> {
        self.identities.as_ref()
    }

    /// The same verifier, with these rate limits for the identities it verifies ([`Verifier::spend`]).
    pub fn with_limits(self, limits: super::limits::RateLimits) -> Self {
        Self { limits: Some(std::sync::Arc::new(limits)), ..self }
    }

    /// Spends one request of `identity` for `tenant` (see [`super::limits`]); when its budget is spent, how long
    /// until it has one again.
    pub fn spend(&self, identity: &Identity, tenant: Option<&str>) -> Result<(), Duration> {
        self.limits.as_ref().map_or(Ok(()), |limits| limits.check(identity, tenant))
    }

    /// The same verifier, also taking the tokens of `provider`.
    pub fn with_oidc(self, provider: Option<super::oidc::Provider>) -> Self {
        Self { oidc: provider, ..self }
    }

    /// The identity an `Authorization` header's value (`Bearer <token>`) carries, or why it is refused: what
    /// every edge (HTTP routes, NATS commands and queries) asks.
    pub async fn authorization(&self, header: Option<&str>) -> Result<Identity, Refused> {
        match header.and_then(bearer) {
            Some(token) => self.identify(token).await,
            None => Err(Refused::Missing),
        }
    }

    /// The identity `token` carries, or why it is refused: HS256 tokens are the node's own ([`Verifier::verify`]),
    /// others an OIDC provider's, checked with its keys (see [`super::oidc`]); without a provider they are
    /// refused.
    pub async fn identify(&self, token: &str) -> Result<Identity, Refused> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused::TooLarge);
        }
        if token.starts_with(super::identities::KEY_PREFIX) {
            return match &self.identities {
                Some(identities) => identities.key(token).await,
                None => Err(Refused::Invalid("API keys are not taken here")),
            };
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refused::Invalid("malformed"))?;
        match (header.alg, &self.oidc) {
            (Algorithm::HS256, _) => {
                let (identity, login_version) = self.verify_cached(token)?;
                match (login_version, &self.identities) {
                    (Some(at), Some(identities)) => identities.login_holds(&identity.subject, at).await?,
                    (Some(_), None) => return Err(Refused::Invalid("login tokens are not taken here")),
                    (None, _) => {}
                }
                Ok(identity)
            }
            (_, Some(provider)) => provider.verify(token, &header).await,
            (_, None) => Err(Refused::Invalid("wrong algorithm")),
        }
    }

    /// The identity `token` carries, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identity, Refused> {
        match self.verify_until(token)? {
            (identity, _, None) => Ok(identity),
            // A login token holds only while its user does, which takes a read of the store.
            (_, _, Some(_)) => Err(Refused::Invalid("a login token is checked against its user")),
        }
    }

    /// [`Verifier::verify`], with the token's expiry (seconds since the epoch) and, for a login token, the
    /// version of its user it holds for.
    fn verify_until(&self, token: &str) -> Result<(Identity, u64, Option<u64>), Refused> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused::TooLarge);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| refused(&e))?;
        let claims = data.claims;
        if claims.sub.is_empty()
            || claims.sub.len() > 256
            || claims.tenants.iter().any(|t| t.is_empty() || t.len() > 128)
        {
            return Err(Refused::Invalid("claims"));
        }
        if claims.login.is_some() && claims.delegate {
            return Err(Refused::Invalid("claims"));
        }
        let login_version = claims.login;
        let identity =
            Identity { subject: claims.sub, role: claims.role, tenants: claims.tenants, delegate: claims.delegate };
        Ok((identity, claims.exp, login_version))
    }

    /// The node's own token, from the cache of tokens verified before while they have not expired (a client
    /// sends the same token with every request; checking its signature and claims once is enough).
    fn verify_cached(&self, token: &str) -> Result<(Identity, Option<u64>), Refused> {
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((identity, exp, login_version)) = cache.get(token) {
                return if now() <= exp + LEEWAY_SECS {
                    Ok((identity.clone(), *login_version))
                } else {
                    Err(Refused::Expired)
                };
            }
        }
        let (identity, exp, login_version) = self.verify_until(token)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_VERIFIED {
            cache.clear();
        }
        cache.insert(token.to_owned(), (identity.clone(), exp, login_version));
        Ok((identity, login_version))
    }
}

/// Why `jsonwebtoken` refused a token, as the node says it: never the token itself.
pub(super) fn refused(error: &jsonwebtoken::errors::Error) -> Refused {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => Refused::Expired,
        ErrorKind::ImmatureSignature => Refused::NotYetValid,
        ErrorKind::InvalidSignature => Refused::Invalid("bad signature"),
        ErrorKind::InvalidIssuer => Refused::Invalid("wrong issuer"),
        ErrorKind::InvalidAudience => Refused::Invalid("wrong audience"),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Refused::Invalid("wrong algorithm"),
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => {
            Refused::Invalid("claims")
        }
        _ => Refused::Invalid("malformed"),
    }
}

/// How many verified tokens a verifier remembers; past it, it forgets them all.
const MAX_VERIFIED: usize = 10_000;

/// Verified tokens: the identity, the expiry and (for a login token) the user's version of each.
type Verified = std::collections::HashMap<String, (Identity, u64, Option<u64>)>;

/// The subject of the node's own token.
pub const NODE_SUBJECT: &str = "system:node";

/// How long a node token lives; it is signed afresh when half of that has passed.
const NODE_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The token a node's own components send their commands with over the bus (the process managers, the
/// documents routes, the object notifications, the agents): an admin of every tenant that acts for others, so
/// the intake takes the `Weft-Actor` and `Weft-Tenant` headers they set (they checked their callers
/// themselves). Every node sharing the secret accepts it. Cheap to clone.
#[derive(Clone)]
pub struct NodeToken {
    secret: Secret,
    current: std::sync::Arc<std::sync::Mutex<(String, u64)>>,
}

impl std::fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeToken([redacted])")
    }
}

impl NodeToken {
    /// A node token signed with `secret`.
    pub fn new(secret: &Secret) -> Self {
        let token = Self::sign(secret);
        Self { secret: secret.clone(), current: std::sync::Arc::new(std::sync::Mutex::new((token, now()))) }
    }

    fn sign(secret: &Secret) -> String {
        sign(secret, NODE_SUBJECT, Role::Admin, &["*".to_owned()], NODE_TOKEN_TTL, Kind::Delegate)
    }

    /// The `Authorization` header's value to send.
    pub fn header(&self) -> String {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if now().saturating_sub(current.1) >= NODE_TOKEN_TTL.as_secs() / 2 {
            *current = (Self::sign(&self.secret), now());
        }
        format!("Bearer {}", current.0)
    }
}

/// The bearer token of an `Authorization` header's value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_bytes(&[7; 32])
    }

    fn signed(claims: &serde_json::Value, header: Header, key: &[u8]) -> String {
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn claims(exp: i64, nbf: i64, iss: &str, aud: &str) -> serde_json::Value {
        let now = now() as i64;
        serde_json::json!({"sub": "ann", "role": "user", "tenants": ["acme"], "iss": iss, "aud": aud,
                           "exp": now + exp, "nbf": now + nbf, "iat": now})
    }

    #[test]
    fn a_token_of_the_node_carries_its_identity() {
        let token = issue(&secret(), "ann", Role::Operator, &["acme".into()], Duration::from_secs(60));
        let identity = Verifier::new(&secret()).verify(&token).unwrap();
        assert_eq!(
            identity,
            Identity { subject: "ann".into(), role: Role::Operator, tenants: vec!["acme".into()], delegate: false }
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason_and_never_panic() {
        let verifier = Verifier::new(&secret());
        let hs = || Header::new(Algorithm::HS256);
        let key = [7u8; 32];
        let cases = [
            (signed(&claims(-120, -200, ISSUER, AUDIENCE), hs(), &key), Refused::Expired),
            (signed(&claims(600, 120, ISSUER, AUDIENCE), hs(), &key), Refused::NotYetValid),
            (signed(&claims(600, 0, ISSUER, AUDIENCE), hs(), &[8; 32]), Refused::Invalid("bad signature")),
            (signed(&claims(600, 0, "someone", AUDIENCE), hs(), &key), Refused::Invalid("wrong issuer")),
            (signed(&claims(600, 0, ISSUER, "other"), hs(), &key), Refused::Invalid("wrong audience")),
            (
                signed(&claims(600, 0, ISSUER, AUDIENCE), Header::new(Algorithm::HS512), &key),
                Refused::Invalid("wrong algorithm"),
            ),
            ("x".repeat(MAX_TOKEN_BYTES + 1), Refused::TooLarge),
        ];
        for (token, expected) in cases {
            assert_eq!(verifier.verify(&token), Err(expected));
        }
        // `alg: none`, garbage, a role that is none, missing claims.
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let unsigned =
            format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims(600, 0, ISSUER, AUDIENCE).to_string()));
        let mut bad_role = claims(600, 0, ISSUER, AUDIENCE);
        bad_role["role"] = "root".into();
        let mut no_sub = claims(600, 0, ISSUER, AUDIENCE);
        no_sub.as_object_mut().unwrap().remove("sub");
        for token in [
            unsigned,
            "".into(),
            "a.b.c".into(),
            "not a token".into(),
            "\u{0}.\u{ff}.\u{1}".into(),
            signed(&bad_role, hs(), &key),
            signed(&no_sub, hs(), &key),
        ] {
            assert!(matches!(verifier.verify(&token), Err(Refused::Invalid(_))), "{token:?} was not refused");
        }
    }

    #[test]
    fn the_secret_is_made_once_owner_only_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/auth.secret");
        let first = Secret::load_or_create(&path).unwrap();
        let again = Secret::load_or_create(&path).unwrap();
        assert_eq!(first.0, again.0);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(format!("{first:?}"), "Secret([redacted])");
        std::fs::write(&path, "short").unwrap();
        assert!(matches!(Secret::load(&path), Err(SecretError::TooShort { .. })));
    }

    #[test]
    fn a_bearer_header_gives_its_token() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
