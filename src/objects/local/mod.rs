//! The local object store: a folder on this machine, the embedded default.
//!
//! Objects live under `<root>/data/<key>`, each with a small record of its size, SHA-256 and content type
//! under `<root>/meta/<key>.json`. Writes go to a temporary file in `<root>/tmp`, are synced, and are renamed
//! into place, so a half-written object is never visible; the record names the file's inode, so a record
//! left over from an older content is recognised and recomputed rather than believed.
//!
//! Pre-signed URLs point at `weft serve`'s own HTTP server (`/objects/<key>`), signed with HMAC-SHA256 over
//! the method, the key, the expiry, the size limit, the content type and (uploads) the object the upload
//! replaces, with a key kept in `<root>/signing-key` (made on first start, mode 0600): an expired URL, a
//! changed parameter or a URL used for another key or method fails verification. An upload URL writes once:
//! it names the object it replaces (`replaces=<etag>`, or `replaces=none` for the first upload), and the write
//! goes ahead only while that is what the key holds, checked and installed under the key's lock (S3's
//! `If-Match` / `If-None-Match: *`). After each write and removal the store publishes the S3
//! notification AWS would (see [`super::notification`]) on the bus, so both backends feed the same path.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::notification::{self, Change};
use super::{
    Body, Error, ObjectInfo, ObjectStore, Presigned, READ_CHUNK_BYTES, Upload, check_key, check_segment, expires_at,
};
use crate::bus::{Bus, Message};

/// The bucket name the local store answers to in notifications.
pub const BUCKET: &str = "local";

type HmacSha256 = hmac::Hmac<Sha256>;

/// See the module doc. Cheap to clone.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    signing_key: [u8; 32],
    base_url: String,
    bus: Option<Arc<dyn Bus>>,
    /// Installs of keys hashing alike go one at a time: a conditional write's check and its rename are one step.
    installs: Vec<std::sync::Mutex<()>>,
}

/// How many locks the keys' installs are spread over.
const INSTALL_LOCKS: usize = 64;

/// What a write expects under its key (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// Whatever is there (Weft's own writes).
    Anything,
    /// No object.
    Nothing,
    /// The object with this etag.
    Etag(&'a str),
}

impl<'a> Expect<'a> {
    /// The condition of an upload URL: `none`, or the etag it replaces.
    fn parse(text: &'a str) -> Self {
        if text == "none" { Self::Nothing } else { Self::Etag(text) }
    }

    fn text(replaces: Option<&str>) -> &str {
        replaces.unwrap_or("none")
    }
}

/// Why a request with a pre-signed URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A parameter of the signature is missing or malformed.
    #[error("the URL is not a signed URL: {0}")]
    Malformed(&'static str),
    /// The URL's time is up.
    #[error("the URL expired {0} s ago")]
    Expired(u64),
    /// The signature does not match the request (another key, method, limit or content type, or tampered).
    #[error("the signature does not match this request (its key, method, size limit or Content-Type)")]
    BadSignature,
}

/// The parameters of a pre-signed URL, from its query string.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Signed {
    /// Expiry, seconds since the Unix epoch.
    pub expires: Option<u64>,
    /// The size limit; 0 for a download.
    pub max: Option<u64>,
    /// The signature, hex.
    pub sig: Option<String>,
    /// Uploads: the etag of the object the upload replaces, or `none` (see the module doc).
    pub replaces: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn unavailable(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Unavailable(format!("{what} {}: {e}", path.display()))
}

/// What the store records beside an object.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Record {
    inode: u64,
    size_bytes: u64,
    sha256: String,
    content_type: String,
}

/// A temporary file untouched this long belongs to a write that will never finish (an upload writes it
/// continuously, or it stalls and is cut off after the body time-out).
pub const STALE_TMP: Duration = Duration::from_secs(600);

/// A temporary file removed when dropped, unless disarmed (it became the object).
///
/// The file is created on a blocking thread, which may finish after the guard has dropped (the request
/// dropped meanwhile): the guard's `dropped` flag tells that thread to remove what it made.
struct RemoveOnDrop {
    path: Option<PathBuf>,
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

impl RemoveOnDrop {
    fn new(path: PathBuf) -> Self {
        Self { path: Some(path), dropped: Arc::default() }
    }

    /// Creates the guarded file on a blocking thread.
    async fn create(&self) -> Result<std::fs::File, Error> {
        let path = self.path.clone().expect("armed until disarmed");
        let dropped = self.dropped.clone();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&path).map_err(|e| unavailable("cannot create", &path, e));
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = std::fs::remove_file(&path);
            }
            file
        })
        .await
        .map_err(|e| Error::Unavailable(format!("creating a temporary file: {e}")))?
    }

    fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            self.dropped.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl LocalStore {
    /// Opens (creating if needed) the store in `root`; URLs start with `base_url` (`http://host:port`);
    /// notifications go out on `bus` if given.
    pub fn open(root: &Path, base_url: &str, bus: Option<Arc<dyn Bus>>) -> Result<Self, Error> {
        for folder in ["data", "meta", "tmp"] {
            let path = root.join(folder);
            std::fs::create_dir_all(&path).map_err(|e| unavailable("cannot create", &path, e))?;
        }
        let signing_key = signing_key(&root.join("signing-key"))?;
        let base_url = base_url.trim_end_matches('/').to_owned();
        let installs = (0..INSTALL_LOCKS).map(|_| std::sync::Mutex::new(())).collect();
        let store = Self { inner: Arc::new(Inner { root: root.to_owned(), signing_key, base_url, bus, installs }) };
        store.sweep_tmp();
        Ok(store)
    }

    fn data(&self, key: &str) -> PathBuf {
        self.inner.root.join("data").join(key)
    }

    fn meta(&self, key: &str) -> PathBuf {
        self.inner.root.join("meta").join(format!("{key}.json"))
    }

    /// The signature of a request's fields; `replaces` is empty for a download.
    fn signature(
        &self,
        method: &str,
        key: &str,
        expires: u64,
        max: u64,
        content_type: &str,
        replaces: &str,
    ) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.inner.signing_key).expect("HMAC takes a key of any size");
        // Fields separated by a byte none of them can hold, so no two requests sign the same text.
        mac.update(format!("{method}\n{key}\n{expires}\n{max}\n{content_type}\n{replaces}").as_bytes());
        mac
    }

    fn url(
        &self,
        method: &'static str,
        key: &str,
        max: u64,
        content_type: &str,
        replaces: &str,
        expiry: Duration,
    ) -> Presigned {
        let expires = expires_at(expiry);
        let sig = hex(&self.signature(method, key, expires, max, content_type, replaces).finalize().into_bytes());
        let mut headers = std::collections::BTreeMap::new();
        let mut url = format!("{}/objects/{key}?expires={expires}&max={max}", self.inner.base_url);
        if method == "PUT" {
            headers.insert("Content-Type".to_owned(), content_type.to_owned());
            url.push_str(&format!("&replaces={replaces}"));
        }
        url.push_str(&format!("&sig={sig}"));
        Presigned { url, method, headers, expires_at: expires }
    }

    /// Checks a request made with a pre-signed URL: its method, key, content type (uploads) and the URL's
    /// parameters. Answers the upload's size limit and what it expects under its key ([`Expect::Anything`] for
    /// a download).
    pub fn verify<'s>(
        &self,
        method: &str,
        key: &str,
        content_type: &str,
        signed: &'s Signed,
    ) -> Result<(u64, Expect<'s>), Denied> {
        let expires = signed.expires.ok_or(Denied::Malformed("`expires` is missing"))?;
        let max = signed.max.ok_or(Denied::Malformed("`max` is missing"))?;
        let sig = signed.sig.as_deref().ok_or(Denied::Malformed("`sig` is missing"))?;
        let sig = unhex(sig).ok_or(Denied::Malformed("`sig` is not hex"))?;
        let (content_type, replaces) = if method == "PUT" {
            (content_type, signed.replaces.as_deref().ok_or(Denied::Malformed("`replaces` is missing"))?)
        } else {
            ("", "")
        };
        // The signature first, so a tampered expiry is reported as tampering.
        self.signature(method, key, expires, max, content_type, replaces)
            .verify_slice(&sig)
            .map_err(|_| Denied::BadSignature)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now > expires {
            return Err(Denied::Expired(now - expires));
        }
        let expect = if method == "PUT" { Expect::parse(replaces) } else { Expect::Anything };
        Ok((max, expect))
    }

    /// Writes an object from a stream, refusing it past `limit` bytes, if the key still holds what `expect`
    /// says when the body is in ([`Error::Superseded`] if not); and announces it.
    pub async fn write<S>(
        &self,
        key: &str,
        content_type: &str,
        mut body: S,
        limit: u64,
        expect: Expect<'_>,
    ) -> Result<ObjectInfo, Error>
    where
        S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
    {
        check_key(key)?;
        let tmp = self.inner.root.join("tmp").join(uuid::Uuid::now_v7().to_string());
        // Removed however this ends: an error, or the request dropped mid-way (a broken connection), even while
        // the file is being created. Not created on this thread: making an inode can take a while on a busy
        // file system, and this thread may be the one that runs the actors.
        let guard = RemoveOnDrop::new(tmp.clone());
        let file = guard.create().await?;
        let mut file = tokio::fs::File::from_std(file);
        let mut hash = Sha256::new();
        let mut size: u64 = 0;
        let written: Result<(), Error> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| Error::Body {
                    timed_out: e.kind() == std::io::ErrorKind::TimedOut,
                    reason: e.to_string(),
                })?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(Error::TooLarge { limit });
                }
                hash.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| unavailable("cannot write", &tmp, e))?;
            }
            file.sync_all().await.map_err(|e| unavailable("cannot sync", &tmp, e))
        }
        .await;
        drop(file);
        written?;
        let info =
            ObjectInfo { size_bytes: size, etag: hex(&hash.finalize()), content_type: Some(content_type.into()) };
        let result = tokio::task::spawn_blocking({
            let (store, key, tmp, info) = (self.clone(), key.to_owned(), tmp.clone(), info.clone());
            let expect = match expect {
                Expect::Anything => None,
                Expect::Nothing => Some(None),
                Expect::Etag(etag) => Some(Some(etag.to_owned())),
            };
            move || store.install(&key, &tmp, &info, expect)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("writing {key}: {e}")))?;
        result?;
        guard.disarm();
        self.announce(Change::Created, key, Some(&info)).await;
        Ok(info)
    }

    /// Installs a written object under its key's lock, after checking what the key holds (`None`: anything;
    /// `Some(None)`: nothing; `Some(Some(etag))`: that object).
    fn install(&self, key: &str, tmp: &Path, info: &ObjectInfo, expect: Option<Option<String>>) -> Result<(), Error> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let stripe = BuildHasherDefault::<DefaultHasher>::default().hash_one(key) as usize % INSTALL_LOCKS;
        let _installing = self.inner.installs[stripe].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(expected) = expect {
            let current = match self.record(key) {
                Ok(current) => Some(current.etag),
                Err(Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            if current != expected {
                return Err(Error::Superseded { key: key.to_owned() });
            }
        }
        install(tmp, &self.data(key), &self.meta(key), info)
    }

    /// Removes the temporary files of writes that never finished (the process was killed mid-upload) and have
    /// not changed for [`STALE_TMP`]; how many. Run at open, and periodically by the node.
    pub fn sweep_tmp(&self) -> usize {
        let folder = self.inner.root.join("tmp");
        let Ok(entries) = std::fs::read_dir(&folder) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age >= STALE_TMP));
            if stale && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, folder = %folder.display(), "removed the temporary files of unfinished uploads");
        }
        removed
    }

    async fn announce(&self, change: Change, key: &str, info: Option<&ObjectInfo>) {
        let Some(bus) = &self.inner.bus else { return };
        let body = notification::record_json(change, BUCKET, key, info);
        if let Err(error) = bus.publish(Message::new(notification::SUBJECT, body)).await {
            tracing::warn!(%error, key, "publishing an object notification failed; `confirm` recovers the upload");
        }
    }

    /// The record of an object, recomputed when it is missing or belongs to an older content.
    fn record(&self, key: &str) -> Result<ObjectInfo, Error> {
        let data = self.data(key);
        let found = match std::fs::metadata(&data) {
            Ok(found) if found.is_file() => found,
            Ok(_) => return Err(Error::NotFound { key: key.into() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotFound { key: key.into() }),
            Err(e) => return Err(unavailable("cannot read", &data, e)),
        };
        let meta = self.meta(key);
        let record = std::fs::read(&meta).ok().and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok());
        if let Some(record) = record.filter(|r| r.inode == found.ino() && r.size_bytes == found.len()) {
            return Ok(ObjectInfo {
                size_bytes: record.size_bytes,
                etag: record.sha256,
                content_type: Some(record.content_type),
            });
        }
        let mut file = std::fs::File::open(&data).map_err(|e| unavailable("cannot open", &data, e))?;
        let mut hash = Sha256::new();
        let mut buffer = vec![0; READ_CHUNK_BYTES];
        let mut size: u64 = 0;
        loop {
            let read = std::io::Read::read(&mut file, &mut buffer).map_err(|e| unavailable("cannot read", &data, e))?;
            if read == 0 {
                break;
            }
            hash.update(&buffer[..read]);
            size += read as u64;
        }
        Ok(ObjectInfo { size_bytes: size, etag: hex(&hash.finalize()), content_type: None })
    }
}

/// Renames a synced temporary file into place, then its record (a cache, unsynced), and syncs the object's folder.
fn install(tmp: &Path, data: &Path, meta: &Path, info: &ObjectInfo) -> Result<(), Error> {
    for path in [data, meta] {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(|e| unavailable("cannot create", folder, e))?;
        }
    }
    let inode = std::fs::metadata(tmp).map_err(|e| unavailable("cannot read", tmp, e))?.ino();
    std::fs::rename(tmp, data).map_err(|e| unavailable("cannot rename into", data, e))?;
    let record = Record {
        inode,
        size_bytes: info.size_bytes,
        sha256: info.etag.clone(),
        content_type: info.content_type.clone().unwrap_or_default(),
    };
    let meta_tmp = meta.with_extension("json.tmp");
    // The record is a cache: without it (or with a torn one, after a crash) the object is hashed again on its
    // next head. So it is not synced: its folder never was, and a sync of its own cost each put a third of
    // its time.
    let written = std::fs::File::create(&meta_tmp)
        .and_then(|mut file| file.write_all(&serde_json::to_vec(&record).expect("a record serialises")));
    if written.is_ok() {
        let _ = std::fs::rename(&meta_tmp, meta);
    }
    if let Some(folder) = data.parent() {
        std::fs::File::open(folder).and_then(|f| f.sync_all()).map_err(|e| unavailable("cannot sync", folder, e))?;
    }
    Ok(())
}

/// Reads the signing key, or makes one (32 random bytes, readable by this user only).
fn signing_key(path: &Path) -> Result<[u8; 32], Error> {
    match std::fs::read(path) {
        Ok(bytes) => {
            return bytes.try_into().map_err(|_| {
                Error::Unavailable(format!(
                    "{} is not a 32-byte signing key; remove it to make a new one",
                    path.display()
                ))
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(unavailable("cannot read", path, e)),
    }
    let key: [u8; 32] = rand::random();
    let tmp = path.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(&key)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| unavailable("cannot write", path, e))?;
    Ok(key)
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn bucket(&self) -> &str {
        BUCKET
    }

    async fn presign_put(&self, upload: Upload<'_>) -> Result<Presigned, Error> {
        check_key(upload.key)?;
        let replaces = Expect::text(upload.replaces);
        Ok(self.url("PUT", upload.key, upload.max_bytes, upload.content_type, replaces, upload.expiry))
    }

    async fn presign_get(&self, key: &str, expiry: Duration) -> Result<Presigned, Error> {
        check_key(key)?;
        Ok(self.url("GET", key, 0, "", "", expiry))
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, Error> {
        check_key(key)?;
        let store = self.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || store.record(&key))
            .await
            .map_err(|e| Error::Unavailable(format!("reading an object's record: {e}")))?
    }

    async fn get(&self, key: &str) -> Result<Body, Error> {
        check_key(key)?;
        let data = self.data(key);
        match tokio::fs::File::open(&data).await {
            Ok(file) => Ok(super::file_body(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound { key: key.into() }),
            Err(e) => Err(unavailable("cannot open", &data, e)),
        }
    }

    async fn put(&self, key: &str, content_type: &str, body: Body) -> Result<ObjectInfo, Error> {
        self.write(key, content_type, body, weft_actors::document::MAX_DOCUMENT_BYTES, Expect::Anything).await
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        check_key(key)?;
        let data = self.data(key);
        match tokio::fs::remove_file(&data).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(unavailable("cannot remove", &data, e)),
        }
        let _ = tokio::fs::remove_file(self.meta(key)).await;
        self.announce(Change::Removed, key, None).await;
        Ok(())
    }

    async fn delete_tenant(&self, tenant: &str) -> Result<u64, Error> {
        check_segment(tenant).map_err(|reason| Error::InvalidKey { key: tenant.into(), reason })?;
        let folder = self.inner.root.join("data").join(tenant);
        let mut entries = match tokio::fs::read_dir(&folder).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(unavailable("cannot list", &folder, e)),
        };
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await.map_err(|e| unavailable("cannot list", &folder, e))? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            self.delete(&format!("{tenant}/{name}")).await?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests;
