//! The S3 object store, through `aws-sdk-s3`: AWS S3, MinIO, SeaweedFS and other S3-compatible servers.
//!
//! Pre-signed URLs are SigV4 query-string URLs; a PUT URL signs its `Content-Type`, so an upload declaring
//! another fails. S3 cannot bound the size of a pre-signed PUT (only browser POST policies can), so the
//! registered size limit is enforced when the upload is confirmed (the document refuses an oversize object).
//! A PUT URL also signs `If-None-Match: *` (the first upload) or `If-Match: "<etag>"` (a new version), so it
//! writes once: S3 answers 412 to a second use, as to an upload that another one overtook.
//! Large writes from Weft itself go in parts of [`PART_BYTES`].

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{Body, Error, ObjectInfo, ObjectStore, Presigned, Upload, check_key, expires_at};

/// The size of each part of a multipart write, and the size past which a write is multipart (S3's smallest
/// part is 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// Where the bucket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// The bucket.
    pub bucket: String,
    /// A custom endpoint (MinIO, SeaweedFS); AWS's when `None`.
    pub endpoint: Option<String>,
    /// The endpoint clients reach the server at, for signed URLs, when it is not `endpoint` (a node inside a
    /// container network reaching `http://minio:9000`, clients outside reaching `http://localhost:9000`).
    pub public_endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// Path-style addressing, as MinIO and SeaweedFS need.
    pub path_style: bool,
    /// An access key id and secret; the AWS default chain (environment, profiles, instance roles) when `None`.
    pub credentials: Option<(String, String)>,
}

impl S3Options {
    /// A bucket on an S3-compatible server of our own (MinIO, SeaweedFS): path-style, region `us-east-1`, the
    /// given key pair.
    pub fn on_server(endpoint: &str, bucket: &str, credentials: (String, String)) -> Self {
        Self {
            bucket: bucket.to_owned(),
            endpoint: Some(endpoint.to_owned()),
            public_endpoint: None,
            region: "us-east-1".into(),
            path_style: true,
            credentials: Some(credentials),
        }
    }
}

/// See the module doc. Cheap to clone.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    /// The client that signs URLs: `client`, or one for the public endpoint.
    signer: Client,
    bucket: String,
}

fn unavailable<E, R>(what: &str, error: SdkError<E, R>) -> Error
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    Error::Unavailable(format!("{what}: {}", DisplayErrorContext(error)))
}

impl S3Store {
    /// A client of the bucket (no request is made).
    pub async fn connect(options: &S3Options) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(options.region.clone()));
        if let Some((id, secret)) = &options.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(id, secret, None, None, "weft"));
        }
        let shared = loader.load().await;
        let client = |endpoint: Option<&String>| {
            let mut config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(options.path_style);
            if let Some(endpoint) = endpoint {
                config = config.endpoint_url(endpoint);
            }
            Client::from_conf(config.build())
        };
        let signer = client(options.public_endpoint.as_ref().or(options.endpoint.as_ref()));
        Self { client: client(options.endpoint.as_ref()), signer, bucket: options.bucket.clone() }
    }

    /// Creates the bucket unless it exists.
    pub async fn create_bucket(&self) -> Result<(), Error> {
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_bucket_already_owned_by_you()) => Ok(()),
            Err(e) => Err(unavailable("creating the bucket", e)),
        }
    }

    /// Creates the bucket unless it exists, trying again for up to `patience` while the server is still
    /// starting (SeaweedFS opens its S3 port before its filer takes requests).
    pub async fn create_bucket_within(&self, patience: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.create_bucket().await {
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                result => return result,
            }
        }
    }

    fn presigning(expiry: Duration) -> Result<PresigningConfig, Error> {
        PresigningConfig::expires_in(expiry).map_err(|e| Error::Unavailable(format!("a URL's expiry: {e}")))
    }

    async fn put_multipart(&self, key: &str, content_type: &str, first: Bytes, mut body: Body) -> Result<(), Error> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| unavailable("starting a multipart upload", e))?;
        let id = upload.upload_id().unwrap_or_default().to_owned();
        let parts: Result<Vec<CompletedPart>, Error> = async {
            let mut parts = Vec::new();
            let mut pending = Some(first);
            while let Some(part) = pending.take() {
                let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
                let sent = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(number)
                    .body(ByteStream::from(part))
                    .send()
                    .await
                    .map_err(|e| unavailable("uploading a part", e))?;
                parts.push(CompletedPart::builder().part_number(number).set_e_tag(sent.e_tag).build());
                let next = fill(&mut body).await?;
                pending = (!next.is_empty()).then_some(next);
            }
            Ok(parts)
        }
        .await;
        let completed = match parts {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable("completing a multipart upload", e)),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&id).send().await;
        }
        completed
    }
}

/// Reads up to [`PART_BYTES`] from a body (fewer only at its end).
async fn fill(body: &mut Body) -> Result<Bytes, Error> {
    let mut part = BytesMut::new();
    while part.len() < PART_BYTES {
        match body.next().await {
            Some(Ok(chunk)) => part.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(Error::Unavailable(format!("reading the body: {e}"))),
            None => break,
        }
    }
    Ok(part.freeze())
}

#[async_trait]
impl ObjectStore for S3Store {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn presign_put(&self, upload: Upload<'_>) -> Result<Presigned, Error> {
        check_key(upload.key)?;
        let request = self
            .signer
            .put_object()
            .bucket(&self.bucket)
            .key(upload.key)
            .content_type(upload.content_type)
            // Signed headers: the upload writes only over what it was signed for, so the URL writes once.
            .set_if_none_match(upload.replaces.is_none().then(|| "*".to_owned()))
            .set_if_match(upload.replaces.map(|etag| format!("\"{etag}\"")))
            .presigned(Self::presigning(upload.expiry)?)
            .await
            .map_err(|e| unavailable("signing an upload URL", e))?;
        let headers = request.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Ok(Presigned { url: request.uri().to_owned(), method: "PUT", headers, expires_at: expires_at(upload.expiry) })
    }

    async fn presign_get(&self, key: &str, expiry: Duration) -> Result<Presigned, Error> {
        check_key(key)?;
        let request = self
            .signer
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            // Saved, never shown inline, whatever type the object was uploaded as.
            .response_content_disposition("attachment")
            .presigned(Self::presigning(expiry)?)
            .await
            .map_err(|e| unavailable("signing a download URL", e))?;
        let headers = request.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Ok(Presigned { url: request.uri().to_owned(), method: "GET", headers, expires_at: expires_at(expiry) })
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, Error> {
        check_key(key)?;
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(head) => Ok(ObjectInfo {
                size_bytes: head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                etag: head.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
                content_type: head.content_type().map(str::to_owned),
            }),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {
                Err(Error::NotFound { key: key.into() })
            }
            Err(e) => Err(unavailable("reading an object's head", e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Body, Error> {
        check_key(key)?;
        let object = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(object) => object,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Err(Error::NotFound { key: key.into() });
            }
            Err(e) => return Err(unavailable("reading an object", e)),
        };
        Ok(futures::stream::try_unfold(object.body, |mut body| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, body))),
                Ok(None) => Ok(None),
                Err(e) => Err(std::io::Error::other(e)),
            }
        })
        .boxed())
    }

    async fn put(&self, key: &str, content_type: &str, mut body: Body) -> Result<ObjectInfo, Error> {
        check_key(key)?;
        let first = fill(&mut body).await?;
        if first.len() < PART_BYTES {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(|e| unavailable("writing an object", e))?;
        } else {
            self.put_multipart(key, content_type, first, body).await?;
        }
        self.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        check_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("removing an object", e))
    }

    async fn delete_tenant(&self, tenant: &str) -> Result<u64, Error> {
        super::check_segment(tenant).map_err(|reason| Error::InvalidKey { key: tenant.into(), reason })?;
        let prefix = format!("{tenant}/");
        let mut removed = 0;
        // Listed page by page and removed as listed: the next page starts after the last key listed.
        let mut after: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_start_after(after.clone())
                .send()
                .await
                .map_err(|e| unavailable("listing a tenant's objects", e))?;
            let keys: Vec<String> = page.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
            if keys.is_empty() {
                return Ok(removed);
            }
            for key in &keys {
                self.delete(key).await?;
                removed += 1;
            }
            after = keys.last().cloned();
        }
    }
}
