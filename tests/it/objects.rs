//! The object-storage contract suite, run against the local folder store and a real SeaweedFS S3 server
//! (`weed mini` on free loopback ports), and the S3 store's pre-signed URLs used over HTTP.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use weft::objects::local::{Expect, LocalStore};
use weft::objects::{Body, Error, ObjectStore, Upload};
use weft_harness::Seaweed;

fn body(chunks: Vec<Vec<u8>>) -> Body {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed()
}

async fn read(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let chunks: Vec<Bytes> = store.get(key).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// What every object store does.
async fn contract(store: &dyn ObjectStore) {
    let key = "acme/0192f0c4-0000-7000-8000-000000000001";
    assert!(matches!(store.head(key).await, Err(Error::NotFound { .. })));
    assert!(matches!(store.get(key).await, Err(Error::NotFound { .. })));
    store.delete(key).await.expect("removing a missing object is not an error");

    let written = store.put(key, "text/plain", body(vec![b"hello ".to_vec(), b"world".to_vec()])).await.unwrap();
    assert_eq!(written.size_bytes, 11);
    assert!(!written.etag.is_empty());
    let head = store.head(key).await.unwrap();
    assert_eq!((head.size_bytes, &head.etag), (11, &written.etag));
    assert_eq!(head.content_type.as_deref(), Some("text/plain"));
    assert_eq!(read(store, key).await, b"hello world");

    let replaced = store.put(key, "text/plain", body(vec![b"goodbye world".to_vec()])).await.unwrap();
    assert_ne!(replaced.etag, written.etag, "another content has another etag");
    assert_eq!(store.head(key).await.unwrap().size_bytes, 13);

    // Larger than one part of a multipart write (8 MiB), in 1 MiB chunks.
    let large: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; 1024 * 1024]).collect();
    let expected = large.concat();
    let big = "acme/0192f0c4-0000-7000-8000-000000000002";
    let info = store.put(big, "application/octet-stream", body(large)).await.unwrap();
    assert_eq!(info.size_bytes, 9 * 1024 * 1024);
    assert_eq!(store.head(big).await.unwrap().size_bytes, 9 * 1024 * 1024);
    assert!(read(store, big).await == expected, "a large object reads back as written");

    let expiry = Duration::from_secs(60);
    let upload = Upload { key, content_type: "text/plain", max_bytes: 100, expiry, replaces: None };
    let put = store.presign_put(upload).await.unwrap();
    assert_eq!(put.method, "PUT");
    assert!(put.url.starts_with("http://"), "{}", put.url);
    assert!(put.expires_at > now() && put.expires_at <= now() + 61, "{put:?}");
    let get = store.presign_get(key, expiry).await.unwrap();
    assert_eq!(get.method, "GET");
    assert_ne!(get.url, put.url);

    for bad in ["../etc/passwd", "/abs", "acme//x", ".hidden/x", "acme/a b", "acme/x/..", ""] {
        assert!(matches!(store.head(bad).await, Err(Error::InvalidKey { .. })), "{bad:?}");
        assert!(matches!(store.put(bad, "text/plain", body(vec![])).await, Err(Error::InvalidKey { .. })), "{bad:?}");
        let upload = Upload { key: bad, content_type: "text/plain", max_bytes: 1, expiry, replaces: None };
        assert!(matches!(store.presign_put(upload).await, Err(Error::InvalidKey { .. })), "{bad:?}");
    }

    // A tenant's objects go all at once (erasure); the others stay.
    let theirs = ["umbrella/0192f0c4-0000-7000-8000-000000000003", "umbrella/0192f0c4-0000-7000-8000-000000000004"];
    for other in theirs {
        store.put(other, "text/plain", body(vec![b"theirs".to_vec()])).await.unwrap();
    }
    assert_eq!(store.delete_tenant("umbrella").await.unwrap(), 2);
    for other in theirs {
        assert!(matches!(store.head(other).await, Err(Error::NotFound { .. })), "{other}");
    }
    assert_eq!(store.head(key).await.unwrap().size_bytes, 13, "another tenant's object stayed");
    assert_eq!(store.delete_tenant("umbrella").await.unwrap(), 0);
    assert_eq!(store.delete_tenant("nobody").await.unwrap(), 0);
    assert!(matches!(store.delete_tenant("../acme").await, Err(Error::InvalidKey { .. })));

    store.delete(key).await.unwrap();
    store.delete(big).await.unwrap();
    assert!(matches!(store.head(key).await, Err(Error::NotFound { .. })));
    assert!(matches!(store.get(big).await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn the_local_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), "http://127.0.0.1:1", None).unwrap();
    contract(&store).await;
    let leftovers = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "no temporary file is left behind");
}

#[tokio::test]
async fn an_upload_over_its_limit_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), "http://127.0.0.1:1", None).unwrap();
    let key = "acme/0192f0c4-0000-7000-8000-000000000003";
    let result = store.write(key, "text/plain", body(vec![vec![1; 10], vec![2; 10]]), 15, Expect::Anything).await;
    assert!(matches!(result, Err(Error::TooLarge { limit: 15 })), "{result:?}");
    assert!(matches!(store.head(key).await, Err(Error::NotFound { .. })));
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn a_conditional_local_write_goes_ahead_only_over_what_it_expects() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), "http://127.0.0.1:1", None).unwrap();
    let key = "acme/0192f0c4-0000-7000-8000-000000000007";
    let write = |text: &'static str, expect| store.write(key, "text/plain", body(vec![text.into()]), 100, expect);
    let first = write("first", Expect::Nothing).await.unwrap();
    assert!(matches!(write("again", Expect::Nothing).await, Err(Error::Superseded { .. })));
    let second = write("second", Expect::Etag(&first.etag)).await.unwrap();
    assert!(matches!(write("stale", Expect::Etag(&first.etag)).await, Err(Error::Superseded { .. })));
    assert_eq!(store.head(key).await.unwrap().etag, second.etag);
    assert_eq!(read(&store, key).await, b"second");
    store.delete(key).await.unwrap();
    assert!(matches!(write("back", Expect::Etag(&second.etag)).await, Err(Error::Superseded { .. })));
    assert!(matches!(store.head(key).await, Err(Error::NotFound { .. })));
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "refused writes leave no file");

    // Of two writes racing with the same condition, one wins.
    let racing = futures::future::join_all((0..8).map(|i| {
        let text = format!("racer {i}");
        store.write(key, "text/plain", body(vec![text.into_bytes()]), 100, Expect::Nothing)
    }))
    .await;
    assert_eq!(racing.iter().filter(|r| r.is_ok()).count(), 1, "{racing:?}");
}

#[tokio::test]
async fn seaweedfs_keeps_the_contract_and_its_urls_work_over_http() {
    let server = Seaweed::start().unwrap();
    let store = crate::support::bucket(&server, "contract").await;
    contract(&store).await;

    // A pre-signed PUT as a client sends it: the signed Content-Type, no credentials.
    let http = reqwest::Client::new();
    let key = "acme/0192f0c4-0000-7000-8000-000000000004";
    let expiry = Duration::from_secs(60);
    let upload = Upload { key, content_type: "text/plain", max_bytes: 100, expiry, replaces: None };
    let put = store.presign_put(upload.clone()).await.unwrap();
    let send = |put: &weft::objects::Presigned, body: &'static str| {
        let mut request = http.put(&put.url).body(body);
        for (name, value) in &put.headers {
            request = request.header(name, value);
        }
        if !put.headers.keys().any(|h| h.eq_ignore_ascii_case("content-type")) {
            request = request.header("Content-Type", "text/plain");
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(&put, "via a signed URL").await, 200);
    let first = store.head(key).await.unwrap();
    assert_eq!(first.size_bytes, 16);

    // An upload URL writes once: again, it is refused and the object stays as it was.
    assert_eq!(send(&put, "again, other bytes").await, 412);
    // A URL for the next version writes over the content it was signed for, once.
    let next = store.presign_put(Upload { replaces: Some(&first.etag), ..upload.clone() }).await.unwrap();
    let stale = next.clone();
    assert_eq!(send(&next, "the second version").await, 200);
    let second = store.head(key).await.unwrap();
    assert_eq!(second.size_bytes, 18);
    assert_eq!(send(&next, "a third, with the same URL").await, 412);
    assert_eq!(send(&stale, "overtaken").await, 412);
    assert_eq!(store.head(key).await.unwrap(), second);
    // A version URL after the object is gone writes nothing either.
    let gone = "acme/0192f0c4-0000-7000-8000-000000000006";
    store.put(gone, "text/plain", body(vec![b"short-lived".to_vec()])).await.unwrap();
    let etag = store.head(gone).await.unwrap().etag;
    let late = store.presign_put(Upload { key: gone, replaces: Some(&etag), ..upload.clone() }).await.unwrap();
    store.delete(gone).await.unwrap();
    assert_eq!(send(&late, "written back").await, 412);
    assert!(matches!(store.head(gone).await, Err(Error::NotFound { .. })));

    // Another content type than the signed one, a tampered signature, or the URL used for another key: 403.
    let answer = http.put(&put.url).header("Content-Type", "text/html").body("x").send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    let tampered = tamper(&put.url);
    let answer = http.put(&tampered).header("Content-Type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    let elsewhere = put.url.replace("000000000004", "000000000005");
    let answer = http.put(&elsewhere).header("Content-Type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    assert!(matches!(store.head("acme/0192f0c4-0000-7000-8000-000000000005").await, Err(Error::NotFound { .. })));

    let get = store.presign_get(key, expiry).await.unwrap();
    let answer = http.get(&get.url).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.text().await.unwrap(), "the second version");
    let answer = http.get(tamper(&get.url)).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 403);

    // Wrong credentials get nowhere.
    let mut options = crate::support::s3_options(&server, "contract");
    options.credentials = Some((weft_harness::ACCESS_KEY_ID.into(), "not-the-secret".into()));
    let stranger = weft::objects::s3::S3Store::connect(&options).await;
    assert!(matches!(stranger.head(key).await, Err(Error::Unavailable(_))));
}

/// The URL with the last hex digit of its signature changed.
pub fn tamper(url: &str) -> String {
    let (at, name) =
        ["X-Amz-Signature=", "sig="].iter().find_map(|n| Some((url.find(n)?, n.len()))).expect("a signed URL");
    let at = at + name;
    let end = url[at..].find('&').map_or(url.len(), |i| at + i);
    let mut chars: Vec<char> = url.chars().collect();
    chars[end - 1] = if chars[end - 1] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}
