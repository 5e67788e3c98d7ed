//! The local store's own tests (the object-store contract runs in `tests/it/objects.rs`).
use super::*;
use crate::objects::DEFAULT_URL_EXPIRY;

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), "http://127.0.0.1:1/", None).unwrap();
    (dir, store)
}

fn signed(url: &str) -> Signed {
    let query = url.split_once('?').unwrap().1;
    let get = |name: &str| query.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).map(str::to_owned);
    Signed {
        expires: get("expires").map(|v| v.parse().unwrap()),
        max: get("max").map(|v| v.parse().unwrap()),
        sig: get("sig"),
        replaces: get("replaces"),
    }
}

#[tokio::test]
async fn a_signed_url_is_bound_to_its_key_method_limit_and_content_type() {
    let (_dir, store) = store();
    let upload =
        Upload { key: "acme/a", content_type: "text/plain", max_bytes: 10, expiry: DEFAULT_URL_EXPIRY, replaces: None };
    let url = store.presign_put(upload).await.unwrap();
    assert!(url.url.starts_with("http://127.0.0.1:1/objects/acme/a?"), "{}", url.url);
    let params = signed(&url.url);
    assert_eq!(store.verify("PUT", "acme/a", "text/plain", &params), Ok((10, Expect::Nothing)));
    assert_eq!(store.verify("PUT", "acme/b", "text/plain", &params), Err(Denied::BadSignature));
    assert_eq!(store.verify("GET", "acme/a", "", &params), Err(Denied::BadSignature));
    assert_eq!(store.verify("PUT", "acme/a", "text/html", &params), Err(Denied::BadSignature));
    let bigger = Signed { max: Some(11), ..params.clone() };
    assert_eq!(store.verify("PUT", "acme/a", "text/plain", &bigger), Err(Denied::BadSignature));
    let later = Signed { expires: params.expires.map(|e| e + 1), ..params.clone() };
    assert_eq!(store.verify("PUT", "acme/a", "text/plain", &later), Err(Denied::BadSignature));
    let elsewhere = Signed { replaces: Some("abc".into()), ..params.clone() };
    assert_eq!(store.verify("PUT", "acme/a", "text/plain", &elsewhere), Err(Denied::BadSignature));
    let unconditional = Signed { replaces: None, ..params.clone() };
    assert!(matches!(store.verify("PUT", "acme/a", "text/plain", &unconditional), Err(Denied::Malformed(_))));
    let garbled = Signed { sig: Some("zz".into()), ..params.clone() };
    assert_eq!(store.verify("PUT", "acme/a", "text/plain", &garbled), Err(Denied::Malformed("`sig` is not hex")));
    let bare = Signed { expires: None, max: None, sig: None, replaces: None };
    assert!(matches!(store.verify("PUT", "acme/a", "text/plain", &bare), Err(Denied::Malformed(_))));
}

#[tokio::test]
async fn an_expired_url_is_refused() {
    let (_dir, store) = store();
    let expires = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 5;
    let sig = hex(&store.signature("GET", "acme/a", expires, 0, "", "").finalize().into_bytes());
    let params = Signed { expires: Some(expires), max: Some(0), sig: Some(sig), replaces: None };
    assert!(matches!(store.verify("GET", "acme/a", "", &params), Err(Denied::Expired(s)) if s >= 5));
}

#[tokio::test]
async fn the_signing_key_survives_a_reopen() {
    let (dir, store) = store();
    let url = store.presign_get("acme/a", DEFAULT_URL_EXPIRY).await.unwrap();
    let reopened = LocalStore::open(dir.path(), "http://127.0.0.1:1", None).unwrap();
    assert_eq!(reopened.verify("GET", "acme/a", "", &signed(&url.url)), Ok((0, Expect::Anything)));
    let other = tempfile::tempdir().unwrap();
    let stranger = LocalStore::open(other.path(), "http://127.0.0.1:1", None).unwrap();
    assert_eq!(stranger.verify("GET", "acme/a", "", &signed(&url.url)), Err(Denied::BadSignature));
}

#[tokio::test]
async fn a_stale_record_is_recomputed_from_the_bytes() {
    let (_dir, store) = store();
    let body = |text: &'static str| futures::stream::iter([Ok(Bytes::from_static(text.as_bytes()))]).boxed();
    let first = store.put("acme/a", "text/plain", body("abc")).await.unwrap();
    // Another content of the same size slipped in behind the store's back (a crash between the renames).
    std::fs::write(store.data("acme/a.new"), "xyz").unwrap();
    std::fs::rename(store.data("acme/a.new"), store.data("acme/a")).unwrap();
    let head = store.head("acme/a").await.unwrap();
    assert_eq!(head.size_bytes, 3);
    assert_ne!(head.etag, first.etag);
    assert_eq!(head.etag, hex(&Sha256::digest(b"xyz")));
}
