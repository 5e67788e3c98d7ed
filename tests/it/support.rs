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
