//! Tokens of an OpenID Connect provider (Keycloak, Auth0, Dex, ...): signed RS256/384/512, PS256/384/512,
//! ES256/384 or EdDSA with a key of the provider's JWKS, fetched from its URL (or read from a file) and cached.
//!
//! - A token whose `kid` the cache lacks makes the node fetch the set again (at most once per
//!   [`MIN_REFETCH`] unless configured, so that tokens naming made-up keys cannot make it hammer the provider), then verifies
//!   with what the provider now publishes: a rotated-in key is taken at once, a rotated-out one is refused
//!   from then on. The set is fetched again anyway once it is older than the configured refresh.
//! - The algorithm is the key's: a token whose header names another (`none`, HS256 signed with the public key
//!   as an HMAC secret) is refused, and HMAC keys in a JWKS are ignored.
//! - Checks: issuer and audience as configured, expiry, not-before when present, 30 s of leeway.
//! - Claims mapping ([`Claims`]): which claim holds the subject, which the roles (a dotted path such as
//!   Keycloak's `realm_access.roles`; the highest Weft role named there, after an optional prefix, is the
//!   identity's), and which the tenants (a string or a list). A token without a Weft role or a tenant is
//!   refused.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::token::{LEEWAY_SECS, Refused};
use super::{Identity, Role};

/// The shortest time between two fetches of the key set, unless configured.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

/// The options of `weft serve` that name an OIDC provider whose tokens the node takes besides its own.
#[derive(Debug, Clone, clap::Args)]
pub struct OidcOptions {
    /// The issuer (`iss`) of an OIDC provider whose tokens the node takes besides its own, e.g.
    /// `https://idp.example/realms/weft`.
    #[arg(long, env = "WEFT_OIDC_ISSUER", requires = "oidc_audience")]
    pub oidc_issuer: Option<String>,
    /// The audience (`aud`) its tokens must name (the client id Weft has there).
    #[arg(long, env = "WEFT_OIDC_AUDIENCE", requires = "oidc_issuer")]
    pub oidc_audience: Option<String>,
    /// Its JWKS URL (https, or http on a loopback address).
    #[arg(long, env = "WEFT_OIDC_JWKS_URL", requires = "oidc_issuer", conflicts_with = "oidc_jwks_file")]
    pub oidc_jwks_url: Option<String>,
    /// A JWKS file instead of a URL (read again when a token names a key it lacks).
    #[arg(long, env = "WEFT_OIDC_JWKS_FILE", requires = "oidc_issuer")]
    pub oidc_jwks_file: Option<PathBuf>,
    /// The claim holding the subject (a dotted path).
    #[arg(long, default_value = "sub", env = "WEFT_OIDC_SUBJECT_CLAIM")]
    pub oidc_subject_claim: String,
    /// The claim holding the roles (a dotted path: `realm_access.roles` for Keycloak); the highest Weft role
    /// named there is the identity's.
    #[arg(long, default_value = "roles", env = "WEFT_OIDC_ROLES_CLAIM")]
    pub oidc_roles_claim: String,
    /// A prefix the provider's role names carry (`weft-` for `weft-admin`).
    #[arg(long, default_value = "", env = "WEFT_OIDC_ROLE_PREFIX")]
    pub oidc_role_prefix: String,
    /// The claim holding the tenants (a string or a list; `*` for every tenant).
    #[arg(long, default_value = "tenants", env = "WEFT_OIDC_TENANTS_CLAIM")]
    pub oidc_tenants_claim: String,
    /// How long, in seconds, fetched keys are used before they are fetched again.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400), env = "WEFT_OIDC_JWKS_REFRESH_SECS")]
    pub oidc_jwks_refresh_secs: u64,
    /// The shortest time, in seconds, between two fetches of the keys (a token naming an unknown key fetches
    /// them again, at most this often).
    #[arg(long, default_value_t = MIN_REFETCH.as_secs(), value_parser = clap::value_parser!(u64).range(0..=3600), env = "WEFT_OIDC_MIN_REFETCH_SECS")]
    pub oidc_min_refetch_secs: u64,
}

impl OidcOptions {
    /// The provider these name, if any; the error says which option is wrong.
    pub fn provider(&self) -> Result<Option<Provider>, String> {
        let (Some(issuer), Some(audience)) = (&self.oidc_issuer, &self.oidc_audience) else { return Ok(None) };
        let keys = match (&self.oidc_jwks_url, &self.oidc_jwks_file) {
            (Some(url), _) => {
                let parsed = reqwest::Url::parse(url).map_err(|e| format!("--oidc-jwks-url {url:?}: {e}"))?;
                let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
                    return Err(format!("--oidc-jwks-url {url:?}: keys are fetched over https (or http on loopback)"));
                }
                KeySource::Url(url.clone())
            }
            (None, Some(file)) => KeySource::File(file.clone()),
            (None, None) => return Err("--oidc-issuer needs --oidc-jwks-url or --oidc-jwks-file".into()),
        };
        Ok(Some(Provider::new(Settings {
            issuer: issuer.clone(),
            audience: audience.clone(),
            keys,
            claims: Claims {
                subject: self.oidc_subject_claim.clone(),
                roles: self.oidc_roles_claim.clone(),
                role_prefix: self.oidc_role_prefix.clone(),
                tenants: self.oidc_tenants_claim.clone(),
            },
            refresh: Duration::from_secs(self.oidc_jwks_refresh_secs),
            min_refetch: Duration::from_secs(self.oidc_min_refetch_secs),
        })))
    }
}

/// The longest a key set document may be.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where the provider's keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Its JWKS URL (`https://idp/.../certs`).
    Url(String),
    /// A JWKS file, read again as a URL would be fetched.
    File(PathBuf),
}

/// Which claims carry what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The subject's claim (`sub`).
    pub subject: String,
    /// The roles' claim, a dotted path (`roles`, `realm_access.roles`).
    pub roles: String,
    /// A prefix the provider's role names carry (`weft-` for `weft-admin`); empty for none.
    pub role_prefix: String,
    /// The tenants' claim, a dotted path (`tenants`).
    pub tenants: String,
}

/// How tokens of the provider are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The issuer tokens must name.
    pub issuer: String,
    /// The audience tokens must name.
    pub audience: String,
    /// Where its keys are.
    pub keys: KeySource,
    /// Which claims carry what.
    pub claims: Claims,
    /// How long a fetched key set is used before it is fetched again.
    pub refresh: Duration,
    /// The shortest time between two fetches.
    pub min_refetch: Duration,
}

/// Why the key set could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or file could not be read.
    #[error("reading the JWKS at {source_name}: {reason}")]
    Unreadable {
        /// The URL or file.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// It is no JWKS.
    #[error("the JWKS at {source_name} is not a key set: {reason}")]
    Invalid {
        /// The URL or file.
        source_name: String,
        /// Why.
        reason: String,
    },
}

/// A key of the set, ready to verify with.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The cached key set.
#[derive(Default)]
struct Cache {
    keys: Vec<Arc<Key>>,
    fetched: Option<Instant>,
}

/// Verifies tokens of one provider. Cheap to clone.
#[derive(Clone)]
pub struct Provider {
    settings: Arc<Settings>,
    http: reqwest::Client,
    cache: Arc<tokio::sync::RwLock<Cache>>,
    /// Held while fetching, so that concurrent misses fetch once.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("issuer", &self.settings.issuer).finish_non_exhaustive()
    }
}

/// The keys of `set` this node can verify with: asymmetric keys with a known algorithm.
fn usable(set: JwkSet) -> Vec<Arc<Key>> {
    set.keys
        .iter()
        .filter(|jwk| !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)))
        .filter_map(|jwk| {
            let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(alg), _) => alg.to_string().parse::<Algorithm>().ok()?,
                // Keys without `alg` (some providers leave it out): the family's usual one.
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, AlgorithmParameters::EllipticCurve(_)) => Algorithm::ES256,
                (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
                (None, AlgorithmParameters::OctetKey(_)) => return None,
            };
            if matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return None;
            }
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(Arc::new(Key { kid: jwk.common.key_id.clone(), algorithm, key }))
        })
        .collect()
}

/// The value at a dotted `path` of the claims.
fn at<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |value, part| value.get(part))
}

/// Strings of a claim that is a string or a list of them.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

impl Provider {
    /// A provider with these settings; its keys are fetched when first needed.
    pub fn new(settings: Settings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .expect("a plain HTTP client builds");
        Self { settings: Arc::new(settings), http, cache: Arc::default(), fetching: Arc::default() }
    }

    /// The issuer it checks.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    fn source_name(&self) -> String {
        match &self.settings.keys {
            KeySource::Url(url) => url.clone(),
            KeySource::File(path) => path.display().to_string(),
        }
    }

    /// Reads the key set from its source.
    async fn read(&self) -> Result<JwkSet, FetchError> {
        let unreadable = |reason: String| FetchError::Unreadable { source_name: self.source_name(), reason };
        let bytes = match &self.settings.keys {
            KeySource::File(path) => tokio::fs::read(path).await.map_err(|e| unreadable(e.to_string()))?,
            KeySource::Url(url) => {
                let response = self.http.get(url).send().await.map_err(|e| unreadable(e.to_string()))?;
                if !response.status().is_success() {
                    return Err(unreadable(format!("answered {}", response.status())));
                }
                if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
                    return Err(unreadable(format!("over {MAX_JWKS_BYTES} bytes")));
                }
                response.bytes().await.map_err(|e| unreadable(e.to_string()))?.to_vec()
            }
        };
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(unreadable(format!("over {MAX_JWKS_BYTES} bytes")));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| FetchError::Invalid { source_name: self.source_name(), reason: e.to_string() })
    }

    /// Fetches the key set again unless another fetch was done within the shortest time between fetches (or
    /// is under way).
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let _fetching = self.fetching.lock().await;
        if self.cache.read().await.fetched.is_some_and(|at| at.elapsed() < self.settings.min_refetch) {
            return Ok(());
        }
        let result = self.read().await;
        let mut cache = self.cache.write().await;
        // A failed fetch counts too: a provider that is down is asked again after MIN_REFETCH, not per token.
        cache.fetched = Some(Instant::now());
        let set = result?;
        cache.keys = usable(set);
        tracing::info!(issuer = %self.settings.issuer, keys = cache.keys.len(), "fetched the OIDC provider's keys");
        Ok(())
    }

    /// The key for a token's `kid` (and algorithm), fetching the set again when it is unknown or stale.
    async fn key(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<Arc<Key>, Refused> {
        let find = |cache: &Cache| {
            cache.keys.iter().find(|k| k.algorithm == algorithm && (kid.is_none() || k.kid.as_deref() == kid)).cloned()
        };
        let stale = {
            let cache = self.cache.read().await;
            let stale = cache.fetched.is_none_or(|at| at.elapsed() >= self.settings.refresh);
            if !stale && let Some(key) = find(&cache) {
                return Ok(key);
            }
            stale
        };
        if let Err(error) = self.refresh().await {
            tracing::warn!(%error, stale, "the OIDC provider's keys could not be fetched");
        }
        find(&*self.cache.read().await).ok_or(Refused::Invalid("unknown signing key"))
    }

    /// The identity a token of this provider carries.
    pub async fn verify(&self, token: &str, header: &jsonwebtoken::Header) -> Result<Identity, Refused> {
        let key = self.key(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let data =
            jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| super::token::refused(&e))?;
        self.identity(&data.claims)
    }

    /// The identity the claims map to.
    fn identity(&self, claims: &Value) -> Result<Identity, Refused> {
        let mapping = &self.settings.claims;
        let subject = at(claims, &mapping.subject).and_then(Value::as_str).unwrap_or_default();
        if subject.is_empty() || subject.len() > 256 {
            return Err(Refused::Invalid("claims"));
        }
        let named = strings(at(claims, &mapping.roles));
        let role = [Role::Admin, Role::Operator, Role::User, Role::Guest]
            .into_iter()
            .find(|role| named.iter().any(|n| n.strip_prefix(&*mapping.role_prefix) == Some(role.as_str())))
            .ok_or(Refused::Invalid("no Weft role among the token's roles"))?;
        let tenants = strings(at(claims, &mapping.tenants));
        if tenants.is_empty() || tenants.iter().any(|t| t.is_empty() || t.len() > 128) {
            return Err(Refused::Invalid("no tenants in the token"));
        }
        Ok(Identity { subject: subject.to_owned(), role, tenants, delegate: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(roles: &str, prefix: &str) -> Provider {
        Provider::new(Settings {
            issuer: "https://idp".into(),
            audience: "weft".into(),
            keys: KeySource::File("/nonexistent".into()),
            claims: Claims {
                subject: "preferred_username".into(),
                roles: roles.into(),
                role_prefix: prefix.into(),
                tenants: "weft_tenants".into(),
            },
            refresh: Duration::from_secs(300),
            min_refetch: MIN_REFETCH,
        })
    }

    #[tokio::test]
    async fn a_jwks_file_is_read_again_when_a_token_names_a_key_it_lacks() {
        use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let key = |kid: &str| {
            let pair = rcgen::KeyPair::generate().unwrap();
            let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
            let mut public = Jwk::from_encoding_key(&private, Algorithm::ES256).unwrap();
            public.common.key_id = Some(kid.to_owned());
            (private, public)
        };
        let ((a, a_public), (b, b_public)) = (key("a"), key("b"));
        std::fs::write(&file, serde_json::to_vec(&JwkSet { keys: vec![a_public] }).unwrap()).unwrap();
        let mut settings = provider("roles", "").settings.as_ref().clone();
        settings.keys = KeySource::File(file.clone());
        settings.min_refetch = Duration::ZERO;
        let provider = Provider::new(settings);
        let claims = serde_json::json!({"iss": "https://idp", "aud": "weft", "exp": u64::MAX / 2,
            "preferred_username": "ann", "roles": ["guest"], "weft_tenants": ["acme"]});
        let sign = |key: &EncodingKey, kid: &str| {
            let header = Header { kid: Some(kid.into()), ..Header::new(Algorithm::ES256) };
            let token = jsonwebtoken::encode(&header, &claims, key).unwrap();
            (token, header)
        };
        let (token, header) = sign(&a, "a");
        assert_eq!(provider.verify(&token, &header).await.unwrap().role, Role::Guest);
        let (token, header) = sign(&b, "b");
        assert!(provider.verify(&token, &header).await.is_err(), "key b is not in the file yet");
        std::fs::write(&file, serde_json::to_vec(&JwkSet { keys: vec![b_public] }).unwrap()).unwrap();
        assert_eq!(provider.verify(&token, &header).await.unwrap().subject, "ann");
        let (token, header) = sign(&a, "a");
        assert!(provider.verify(&token, &header).await.is_err(), "key a left the file");
    }

    #[test]
    fn claims_map_to_an_identity_with_the_highest_weft_role_named() {
        let keycloak = provider("realm_access.roles", "weft-");
        let claims = serde_json::json!({"preferred_username": "ann", "weft_tenants": "acme",
            "realm_access": {"roles": ["offline_access", "weft-user", "weft-operator"]}});
        let identity = keycloak.identity(&claims).unwrap();
        assert_eq!((identity.subject.as_str(), identity.role), ("ann", Role::Operator));
        assert_eq!(identity.tenants, vec!["acme"]);
        assert!(!identity.delegate);
        // An unprefixed `admin` is not a Weft role for this provider; no tenants or no subject is refused.
        let other =
            serde_json::json!({"preferred_username": "x", "weft_tenants": ["a"], "realm_access": {"roles": ["admin"]}});
        assert!(keycloak.identity(&other).is_err());
        let no_tenants = serde_json::json!({"preferred_username": "x", "realm_access": {"roles": ["weft-guest"]}});
        assert!(keycloak.identity(&no_tenants).is_err());
        let no_subject = serde_json::json!({"weft_tenants": "a", "realm_access": {"roles": ["weft-guest"]}});
        assert!(keycloak.identity(&no_subject).is_err());
    }
}
