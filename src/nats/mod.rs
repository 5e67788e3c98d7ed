//! NATS: connecting (the servers the tests and benchmarks start are in the `weft-harness` crate), with the
//! credentials and TLS of [`NatsAuth`].

use std::path::{Path, PathBuf};

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A URL of the list does not parse.
    #[error("NATS URL {url:?} is invalid: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A credentials or TLS option cannot be used: its file cannot be read, or options that exclude each other
    /// are given together. The message names the file, never what it holds.
    #[error("NATS credentials: {0}")]
    Credentials(String),
    /// No server of the list answered.
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Unreachable {
        /// The URLs.
        urls: String,
        /// Why.
        reason: String,
    },
}

/// How a node (or a tool) authenticates to NATS and secures the connection. At most one of: user and
/// password, token, NKey seed, `.creds` file. Secrets are read from files (owner-only, as the server's
/// operator hands them out), never taken on the command line, and never logged. (Global, so that the event
/// tools take them after their verb too.)
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct NatsAuth {
    /// The NATS user; its password is in --nats-password-file.
    #[arg(long, env = "WEFT_NATS_USER", global = true, requires = "nats_password_file")]
    pub nats_user: Option<String>,
    /// A file holding the NATS user's password.
    #[arg(long, env = "WEFT_NATS_PASSWORD_FILE", global = true, requires = "nats_user")]
    pub nats_password_file: Option<PathBuf>,
    /// A file holding a NATS authentication token.
    #[arg(long, env = "WEFT_NATS_TOKEN_FILE", global = true)]
    pub nats_token_file: Option<PathBuf>,
    /// A file holding an NKey seed (`SU...`), for a server that knows the user by its public key.
    #[arg(long, env = "WEFT_NATS_NKEY_FILE", global = true)]
    pub nats_nkey_file: Option<PathBuf>,
    /// A `.creds` file (a user JWT and its NKey seed, as `nsc` writes them), for decentralised auth.
    #[arg(long, env = "WEFT_NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// A PEM file of the CA certificates the server's certificate must chain to (instead of the system's); TLS
    /// is then required.
    #[arg(long, env = "WEFT_NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<PathBuf>,
    /// A PEM client certificate, for a server that verifies its clients' (with --nats-tls-key); TLS is then
    /// required.
    #[arg(long, env = "WEFT_NATS_TLS_CERT", global = true, requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The PEM private key of --nats-tls-cert.
    #[arg(long, env = "WEFT_NATS_TLS_KEY", global = true, requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Require TLS even without a CA or client certificate given (a `tls://` URL requires it too).
    #[arg(long, env = "WEFT_NATS_TLS", global = true)]
    pub nats_tls: bool,
}

/// A secret from `path`, without its trailing line break.
fn secret(path: &Path, what: &str) -> Result<String, ConnectError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConnectError::Credentials(format!("reading the {what} file {}: {e}", path.display())))?;
    let text = text.trim_end_matches(['\r', '\n']).to_owned();
    if text.is_empty() {
        return Err(ConnectError::Credentials(format!("the {what} file {} is empty", path.display())));
    }
    Ok(text)
}

/// A file that must exist.
fn existing(path: &Path, what: &str) -> Result<PathBuf, ConnectError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(path.to_owned()),
        Ok(_) => Err(ConnectError::Credentials(format!("the {what} {} is not a file", path.display()))),
        Err(e) => Err(ConnectError::Credentials(format!("the {what} {}: {e}", path.display()))),
    }
}

impl NatsAuth {
    /// The connect options these say, named `name`.
    pub async fn options(&self, name: &str) -> Result<async_nats::ConnectOptions, ConnectError> {
        let given = [
            self.nats_user.is_some(),
            self.nats_token_file.is_some(),
            self.nats_nkey_file.is_some(),
            self.nats_creds.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(ConnectError::Credentials(
                "give one of --nats-user, --nats-token-file, --nats-nkey-file and --nats-creds".into(),
            ));
        }
        let mut options = async_nats::ConnectOptions::new();
        if let (Some(user), Some(file)) = (&self.nats_user, &self.nats_password_file) {
            options = options.user_and_password(user.clone(), secret(file, "password")?);
        }
        if let Some(file) = &self.nats_token_file {
            options = options.token(secret(file, "token")?);
        }
        if let Some(file) = &self.nats_nkey_file {
            let seed = secret(file, "NKey seed")?;
            if !seed.starts_with("SU") {
                return Err(ConnectError::Credentials(format!("{} holds no user NKey seed (SU...)", file.display())));
            }
            options = options.nkey(seed);
        }
        if let Some(file) = &self.nats_creds {
            let creds = secret(file, "creds")?;
            options = options
                .credentials(&creds)
                .map_err(|_| ConnectError::Credentials(format!("{} is not a .creds file", file.display())))?;
        }
        let mut tls = self.nats_tls;
        // More than one crate of the tree enables a rustls crypto backend, so rustls cannot pick one by itself:
        // TLS to NATS uses ring, the backend async-nats is built with. Installing it again changes nothing.
        let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
        if let Some(ca) = &self.nats_tls_ca {
            options = options.add_root_certificates(existing(ca, "TLS CA file")?);
            tls = true;
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            options = options
                .add_client_certificate(existing(cert, "TLS client certificate")?, existing(key, "TLS client key")?);
            tls = true;
        }
        Ok(watched(options.require_tls(tls).name(name), name))
    }
}

/// Reports a connection's events in the node's metrics (`weft_nats_connected`, `weft_nats_reconnects_total`,
/// `weft_nats_slow_consumer_total`, by connection name) and its log.
fn watched(options: async_nats::ConnectOptions, name: &str) -> async_nats::ConnectOptions {
    use std::sync::atomic::{AtomicBool, Ordering};
    let connection: std::sync::Arc<str> = name.into();
    let before = std::sync::Arc::new(AtomicBool::new(false));
    options.event_callback(move |event| {
        let (connection, before) = (connection.clone(), before.clone());
        async move {
            let label = connection.to_string();
            match event {
                async_nats::Event::Connected => {
                    if before.swap(true, Ordering::Relaxed) {
                        metrics::counter!("weft_nats_reconnects_total", "connection" => label.clone()).increment(1);
                        tracing::info!(%connection, "reconnected to NATS");
                    }
                    metrics::gauge!("weft_nats_connected", "connection" => label).set(1.0);
                }
                async_nats::Event::Disconnected | async_nats::Event::Closed => {
                    tracing::warn!(%connection, "the NATS connection is {event}");
                    metrics::gauge!("weft_nats_connected", "connection" => label).set(0.0);
                }
                async_nats::Event::SlowConsumer(_) => {
                    tracing::warn!(%connection, "NATS dropped messages: {event}");
                    metrics::counter!("weft_nats_slow_consumer_total", "connection" => label).increment(1);
                }
                other => tracing::debug!(%connection, "NATS: {other}"),
            }
        }
    })
}

/// Connects to one of `urls` (comma separated), naming the connection `name` for the server's monitoring,
/// with no credentials.
pub async fn connect(urls: &str, name: &str) -> Result<async_nats::Client, ConnectError> {
    connect_with(urls, name, &NatsAuth::default()).await
}

/// [`connect`] with the credentials and TLS of `auth`.
pub async fn connect_with(urls: &str, name: &str, auth: &NatsAuth) -> Result<async_nats::Client, ConnectError> {
    let addresses = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| ConnectError::InvalidUrl { url: url.to_owned(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addresses.is_empty() {
        return Err(ConnectError::InvalidUrl { url: urls.to_owned(), reason: "no URL given".into() });
    }
    auth.options(name)
        .await?
        .connect(addresses)
        .await
        .map_err(|e| ConnectError::Unreachable { urls: urls.to_owned(), reason: e.to_string() })
}

/// The KV bucket `bucket`, created if missing with one entry per key whose entries the server drops `ttl` after
/// their last write (the leases' and the membership's buckets).
pub async fn expiring_bucket(
    client: async_nats::Client,
    bucket: &str,
    description: &str,
    ttl: std::time::Duration,
    replicas: usize,
) -> Result<async_nats::jetstream::kv::Store, String> {
    let js = async_nats::jetstream::new(client);
    if let Ok(kv) = js.get_key_value(bucket).await {
        // A bucket made with another time-to-live (an earlier default, another setting) takes this one: the
        // entries' time-to-live is what the leases and the membership count on.
        if let Ok(mut stream) = js.get_stream(format!("KV_{bucket}")).await
            && let Ok(info) = stream.info().await
            && info.config.max_age != ttl
        {
            let mut config = info.config.clone();
            config.max_age = ttl;
            config.duplicate_window = ttl.min(std::time::Duration::from_secs(120));
            js.update_stream(config).await.map_err(|e| format!("setting its time-to-live to {ttl:?}: {e}"))?;
        }
        return Ok(kv);
    }
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: bucket.to_owned(),
        description: description.to_owned(),
        history: 1,
        max_age: ttl,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}
