//! What several test files share that is not a running node (that is `serve.rs`).

use std::time::Duration;

use weft::objects::s3::{S3Options, S3Store};
use weft_harness::Seaweed;

/// How to reach `bucket` on a SeaweedFS of the harness.
pub fn s3_options(seaweed: &Seaweed, bucket: &str) -> S3Options {
    S3Options::on_server(&seaweed.endpoint(), bucket, seaweed.credentials())
}

/// A client of `bucket` on a SeaweedFS of the harness, the bucket created once the server takes requests.
pub async fn bucket(seaweed: &Seaweed, bucket: &str) -> S3Store {
    let store = S3Store::connect(&s3_options(seaweed, bucket)).await;
    store.create_bucket_within(Duration::from_secs(60)).await.expect("creating the bucket on SeaweedFS");
    store
}

/// The admin token a node wrote in `folder` (beside its store, or its `--auth-secret-file`).
pub fn admin_token(folder: &std::path::Path) -> String {
    let file = folder.join("admin.token");
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).trim().to_owned()
}

/// The headers of a JSON command or query over NATS, authenticated with `token`.
pub fn json_headers(token: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    headers.insert("Authorization", format!("Bearer {token}").as_str());
    headers
}
