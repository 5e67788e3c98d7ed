//! Object storage: where documents' bytes live. Clients put them there themselves, through pre-signed URLs,
//! and the storage tells Weft when an object was created or removed ([`notification`]).
//!
//! Two backends pass one contract suite (`tests/it/objects.rs`): [`local::LocalStore`], a folder on this
//! machine whose pre-signed URLs `weft serve` answers itself (the embedded default), and [`s3::S3Store`],
//! any S3-compatible server through `aws-sdk-s3` (AWS S3, MinIO, SeaweedFS).
//!
//! Keys are `<tenant>/<document id>` ([`document_key`]): one object per document, whose current content is
//! the document's current version. Key segments hold ASCII letters, digits, `.`, `_` and `-`, never start
//! with `.`: no `..`, no absolute path, nothing a folder backend could be tricked with.

pub mod documents;
pub mod local;
pub mod notification;
pub mod s3;
pub mod sweep;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use weft_events::domain::ids::DocumentId;

/// The longest key, in bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;

/// How long a pre-signed URL is valid by default.
pub const DEFAULT_URL_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// The longest a pre-signed URL may be valid: S3's limit for SigV4, 7 days.
pub const MAX_URL_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// An object's bytes, as a stream of chunks.
pub type Body = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Why an object-storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No object under that key.
    #[error("no object {key:?}")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A key breaks the rules (see the module doc).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Which rule.
        reason: &'static str,
    },
    /// A body is over the limit it was given.
    #[error("the object is over {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The storage could not be reached or failed; the same request may succeed later.
    #[error("object storage is unavailable: {0}")]
    Unavailable(String),
    /// A conditional upload found another object than the one it was signed for (see [`Upload::replaces`]):
    /// its URL was used already, or another upload came first. Nothing was stored.
    #[error("the object under {key:?} changed since this upload URL was signed: an upload URL writes once")]
    Superseded {
        /// The key.
        key: String,
    },
    /// The upload's body could not be read: broken off, malformed, or stalled. The client's to fix; nothing
    /// was stored.
    #[error("the upload could not be read: {reason}")]
    Body {
        /// Why.
        reason: String,
        /// It stalled: no bytes for longer than the node waits.
        timed_out: bool,
    },
}

/// What storage says about an object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectInfo {
    /// Its size.
    pub size_bytes: u64,
    /// Its entity tag, without quotes: S3's (an MD5 for single-part uploads), or the local backend's SHA-256.
    pub etag: String,
    /// Its content type, when storage kept one.
    pub content_type: Option<String>,
}

/// A URL a client may use without credentials, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Presigned {
    /// The URL.
    pub url: String,
    /// `PUT` or `GET`.
    pub method: &'static str,
    /// Headers the request must carry as they are (they are part of the signature).
    pub headers: std::collections::BTreeMap<String, String>,
    /// When it stops working, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// What a pre-signed upload is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload<'a> {
    /// The key.
    pub key: &'a str,
    /// The content type the upload must declare.
    pub content_type: &'a str,
    /// The most bytes it may have (enforced where the backend can: the local one refuses more; S3 cannot
    /// bound a pre-signed PUT, so the size is checked when the upload is confirmed).
    pub max_bytes: u64,
    /// How long the URL is valid.
    pub expiry: Duration,
    /// The object the upload replaces, by etag; `None` when there must be no object yet. The URL writes only
    /// while storage still holds exactly that, so it writes once: its own upload changes what is there
    /// (S3's `If-None-Match: *` and `If-Match`, signed into the URL; the local store checks the same).
    pub replaces: Option<&'a str>,
}

/// See the module doc.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// The bucket (S3) or `local`: notifications naming another are refused.
    fn bucket(&self) -> &str;

    /// A URL to upload one object with `PUT`.
    async fn presign_put(&self, upload: Upload<'_>) -> Result<Presigned, Error>;

    /// A URL to download one object with `GET`.
    async fn presign_get(&self, key: &str, expiry: Duration) -> Result<Presigned, Error>;

    /// What storage says about an object.
    async fn head(&self, key: &str) -> Result<ObjectInfo, Error>;

    /// The object's bytes.
    async fn get(&self, key: &str) -> Result<Body, Error>;

    /// Writes an object whole (S3: in parts when large); it is visible only once complete.
    async fn put(&self, key: &str, content_type: &str, body: Body) -> Result<ObjectInfo, Error>;

    /// Removes an object; removing a missing one is not an error.
    async fn delete(&self, key: &str) -> Result<(), Error>;

    /// Removes every object of `tenant` (the keys under `<tenant>/`), one by one, each as [`Self::delete`]
    /// does; how many. What erasing a tenant does to its documents' bytes.
    async fn delete_tenant(&self, tenant: &str) -> Result<u64, Error>;
}

/// Bytes read from a file at a time when streaming it.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A file's bytes as a [`Body`], read in chunks.
pub fn file_body(file: tokio::fs::File) -> Body {
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buffer = vec![0; READ_CHUNK_BYTES];
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.truncate(read);
        Ok(Some((Bytes::from(buffer), file)))
    })
    .boxed()
}

/// Checks a key against the rules in the module doc.
pub fn check_key(key: &str) -> Result<(), Error> {
    let invalid = |reason| Err(Error::InvalidKey { key: key.into(), reason });
    if key.is_empty() {
        return invalid("it is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return invalid("it is over 1024 bytes");
    }
    for segment in key.split('/') {
        check_segment(segment).or_else(&invalid)?;
    }
    Ok(())
}

/// Checks one segment of a key: a tenant, a document id.
pub fn check_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("a segment is empty");
    }
    if segment.starts_with('.') {
        return Err("a segment starts with `.`");
    }
    if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err("a segment holds a character other than ASCII letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

/// The key of a document's object: `<tenant>/<id>`.
pub fn document_key(tenant: &str, id: DocumentId) -> String {
    format!("{tenant}/{id}")
}

/// The key of one version's object of document `id`, other than the first upload's: `<tenant>/v/<id>/<slot>`,
/// a fresh slot for each upload URL of a new version, so that no version overwrites another. (Not under the
/// document's own key, which is an object itself: a folder store could not hold both.)
pub fn version_key(tenant: &str, id: DocumentId, slot: uuid::Uuid) -> String {
    format!("{tenant}/v/{id}/{slot}")
}

/// The tenant and document of a key made by [`document_key`] or [`version_key`], or `None` for any other key.
pub fn parse_document_key(key: &str) -> Option<(&str, DocumentId)> {
    let (tenant, rest) = key.split_once('/')?;
    check_segment(tenant).ok()?;
    let id = match rest.strip_prefix("v/").and_then(|rest| rest.split_once('/')) {
        Some((id, slot)) => {
            slot.parse::<uuid::Uuid>().ok()?;
            id
        }
        None => rest,
    };
    Some((tenant, id.parse().ok()?))
}

/// Whether `key` is a version's object ([`version_key`]), not a document's own.
pub fn is_version_key(key: &str) -> bool {
    parse_document_key(key).is_some_and(|(tenant, _)| key[tenant.len()..].starts_with("/v/"))
}

/// Seconds since the Unix epoch, `expiry` from now.
fn expires_at(expiry: Duration) -> u64 {
    (SystemTime::now() + expiry).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A secret from the command line or the environment: printed as `***` by `Debug`, so a logged option set
/// does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

/// Where a node keeps documents.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("s3_secret").args(["s3_secret_access_key", "s3_secret_access_key_file"])))]
#[command(group(clap::ArgGroup::new("webhook").args(["webhook_secret", "webhook_secret_file"])))]
pub struct ObjectsOptions {
    /// The folder of the local object store (the default backend), created if missing; `objects` beside the
    /// store's file without it.
    #[arg(long, env = "WEFT_OBJECTS_DIR")]
    pub objects_dir: Option<PathBuf>,
    /// Keep documents in this S3 bucket instead of the folder (AWS S3, MinIO, SeaweedFS). Credentials come
    /// from the usual AWS chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, profiles, instance roles).
    #[arg(long, env = "WEFT_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// The S3 endpoint, for MinIO or SeaweedFS (`http://127.0.0.1:9000`); AWS's without it.
    #[arg(long, requires = "s3_bucket", env = "WEFT_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The S3 endpoint as clients reach it, for signed URLs, when not `--s3-endpoint` (a node in a container
    /// network reaching `http://minio:9000`, clients reaching `http://localhost:9000`).
    #[arg(long, requires = "s3_bucket", env = "WEFT_S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<String>,
    /// The S3 region.
    #[arg(long, default_value = "us-east-1", env = "WEFT_S3_REGION")]
    pub s3_region: String,
    /// The S3 access key id; the AWS chain's without it (with `--s3-secret-access-key`).
    #[arg(long, requires = "s3_secret", env = "WEFT_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// The S3 secret access key (never logged, never stored in an event). Prefer the environment or
    /// `--s3-secret-access-key-file`: a command line is readable by every user of the machine.
    #[arg(long, requires = "s3_access_key_id", env = "WEFT_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<Secret>,
    /// A file holding the S3 secret access key (its first line).
    #[arg(long, requires = "s3_access_key_id", env = "WEFT_S3_SECRET_ACCESS_KEY_FILE")]
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// Address buckets by path (`endpoint/bucket/key`), as MinIO and SeaweedFS need.
    #[arg(long, env = "WEFT_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// How long pre-signed URLs are valid, in seconds (at most 7 days).
    #[arg(long, default_value_t = DEFAULT_URL_EXPIRY.as_secs(), value_parser = clap::value_parser!(u64).range(1..=MAX_URL_EXPIRY.as_secs()), env = "WEFT_URL_EXPIRY_SECS")]
    pub url_expiry_secs: u64,
    /// The base URL clients reach this node's HTTP server at, for the local store's pre-signed URLs
    /// (`https://weft.example.com`); `http://<http-addr>` without it.
    #[arg(long, env = "WEFT_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Seconds between sweeps for uploads whose notification was lost (documents registered in the last day,
    /// still waiting, whose object is there); 0 turns them off. The first runs at start.
    #[arg(long, default_value_t = 60, env = "WEFT_SWEEP_EVERY_SECS")]
    pub sweep_every_secs: u64,
    /// The shared secret of the notification webhook (`POST /objects/events` with `Authorization: Bearer
    /// <secret>`); the webhook is off without it.
    /// Prefer the environment or `--webhook-secret-file`: a command line is readable by every user of the
    /// machine.
    #[arg(long, env = "WEFT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,
    /// A file holding the webhook's secret (its first line).
    #[arg(long, env = "WEFT_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
}

impl ObjectsOptions {
    /// The webhook's secret, from `--webhook-secret` or its file.
    pub fn webhook_secret(&self) -> Result<Option<Secret>, String> {
        secret(self.webhook_secret.as_ref(), self.webhook_secret_file.as_deref())
    }

    /// The S3 secret access key, from `--s3-secret-access-key` or its file.
    pub fn s3_secret_access_key(&self) -> Result<Option<Secret>, String> {
        secret(self.s3_secret_access_key.as_ref(), self.s3_secret_access_key_file.as_deref())
    }
}

/// A secret given as itself, or read from the first line of a file; an unreadable or empty file is an error
/// naming the file (never the secret).
pub fn secret(given: Option<&Secret>, file: Option<&std::path::Path>) -> Result<Option<Secret>, String> {
    if let Some(given) = given {
        return Ok(Some(given.clone()));
    }
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(file).map_err(|e| format!("the secret file {}: {e}", file.display()))?;
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        return Err(format!("the secret file {} is empty", file.display()));
    }
    Ok(Some(Secret(line.to_owned())))
}
