//! S3 event notifications: the JSON AWS S3 and MinIO send when an object is created or removed.
//!
//! Weft takes them on the NATS subject [`SUBJECT`] (MinIO's NATS target can publish there directly) and on the
//! HTTP webhook `POST /objects/events`. Only the fields Weft uses are read: `eventName` (`ObjectCreated:*`
//! or `ObjectRemoved:*`, with or without MinIO's `s3:` prefix; other events are skipped), the bucket's name,
//! and the object's key (URL-encoded, as both send it), `size` and `eTag`. What a record does to its document
//! is decided in [`super::documents`], against what storage says about the object now.

use serde::Deserialize;

use super::ObjectInfo;

/// The subject notifications arrive on.
pub const SUBJECT: &str = "weft.objects.events";

/// The largest notification body, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most records one notification may hold (AWS sends one; MinIO one; a batch of a thousand is plenty).
pub const MAX_RECORDS: usize = 1000;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `ObjectCreated:*`.
    Created,
    /// `ObjectRemoved:*`.
    Removed,
}

/// One record of a notification, as far as Weft reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What happened.
    pub change: Change,
    /// The bucket.
    pub bucket: String,
    /// The object's key, decoded.
    pub key: String,
    /// The object's size, when the notification names it (created objects).
    pub size_bytes: Option<u64>,
    /// The object's entity tag, without quotes, when named.
    pub etag: Option<String>,
}

/// Why a notification was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The body is over [`MAX_BODY_BYTES`].
    #[error("a notification of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body is not an S3 notification in JSON.
    #[error("the notification is not S3 event JSON: {0}")]
    NotJson(String),
    /// It holds no records.
    #[error("the notification has no records")]
    NoRecords,
    /// It holds more than [`MAX_RECORDS`].
    #[error("the notification has {count} records, over the limit of {limit}")]
    TooManyRecords {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A record lacks a field or holds a malformed one.
    #[error("record {index}: {reason}")]
    BadRecord {
        /// Its index, from 0.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "Records")]
    records: Option<Vec<RawRecord>>,
    /// `s3:TestEvent` in the message AWS sends when a notification target is configured (no records).
    #[serde(rename = "Event")]
    event: Option<String>,
}

/// The `Event` of the message AWS sends to a notification target when it is configured.
pub const TEST_EVENT: &str = "s3:TestEvent";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRecord {
    event_name: Option<String>,
    s3: Option<RawS3>,
}

#[derive(Deserialize)]
struct RawS3 {
    bucket: Option<RawBucket>,
    object: Option<RawObject>,
}

#[derive(Deserialize)]
struct RawBucket {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    key: Option<String>,
    size: Option<u64>,
    e_tag: Option<String>,
}

/// Reads a notification: its records of created and removed objects, in order, each with its index in the
/// notification (records of other events are skipped). AWS's test message ([`TEST_EVENT`], no `Records`)
/// reads as no records: there is nothing to record, and the sender must not see an error.
pub fn parse(body: &[u8]) -> Result<Vec<(usize, Record)>, Error> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Error::TooLarge { size: body.len(), limit: MAX_BODY_BYTES });
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|e| Error::NotJson(e.to_string()))?;
    if parsed.records.is_none() && parsed.event.as_deref() == Some(TEST_EVENT) {
        return Ok(Vec::new());
    }
    let raw = parsed.records.unwrap_or_default();
    if raw.is_empty() {
        return Err(Error::NoRecords);
    }
    if raw.len() > MAX_RECORDS {
        return Err(Error::TooManyRecords { count: raw.len(), limit: MAX_RECORDS });
    }
    let mut records = Vec::with_capacity(raw.len());
    for (index, record) in raw.into_iter().enumerate() {
        let bad = |reason: &str| Error::BadRecord { index, reason: reason.to_owned() };
        let name = record.event_name.ok_or_else(|| bad("`eventName` is missing"))?;
        let name = name.strip_prefix("s3:").unwrap_or(&name);
        let change = if name.starts_with("ObjectCreated:") {
            Change::Created
        } else if name.starts_with("ObjectRemoved:") {
            Change::Removed
        } else {
            continue;
        };
        let s3 = record.s3.ok_or_else(|| bad("`s3` is missing"))?;
        let bucket = s3.bucket.and_then(|b| b.name).ok_or_else(|| bad("`s3.bucket.name` is missing"))?;
        let object = s3.object.ok_or_else(|| bad("`s3.object` is missing"))?;
        let key = object.key.ok_or_else(|| bad("`s3.object.key` is missing"))?;
        let key = decode_key(&key).ok_or_else(|| bad("`s3.object.key` is not URL-encoded UTF-8"))?;
        let etag = object.e_tag.map(|t| t.trim_matches('"').to_owned()).filter(|t| !t.is_empty());
        records.push((index, Record { change, bucket, key, size_bytes: object.size, etag }));
    }
    Ok(records)
}

/// Decodes a key as S3 and MinIO encode it in notifications (form encoding: `+` is a space).
fn decode_key(key: &str) -> Option<String> {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|k| k.into_owned())
}

/// The notification AWS would send for one change, as JSON (what the local store publishes).
pub fn record_json(change: Change, bucket: &str, key: &str, info: Option<&ObjectInfo>) -> Vec<u8> {
    let encoded = percent_encoding::utf8_percent_encode(key, KEY_ENCODE).to_string();
    let (event_name, object) = match (change, info) {
        (Change::Created, Some(info)) => {
            ("ObjectCreated:Put", serde_json::json!({"key": encoded, "size": info.size_bytes, "eTag": info.etag}))
        }
        _ => ("ObjectRemoved:Delete", serde_json::json!({"key": encoded})),
    };
    let at = chrono::DateTime::from_timestamp_micros(weft_events::Timestamp::now().as_micros())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    serde_json::to_vec(&serde_json::json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "weft:local",
        "eventTime": at,
        "eventName": event_name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": object},
    }]}))
    .expect("a notification serialises")
}

/// What a key keeps unencoded in a notification: what S3 keeps (`/` too, as AWS does).
const KEY_ENCODE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of AWS's documentation ("Event message structure"), abridged only in identities.
    const AWS: &str = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-west-2",
        "eventTime":"1970-01-01T00:00:00.000Z","eventName":"ObjectCreated:Put",
        "userIdentity":{"principalId":"AIDAJDPLRKLG7UEXAMPLE"},"requestParameters":{"sourceIPAddress":"127.0.0.1"},
        "responseElements":{"x-amz-request-id":"C3D13FE58DE4C810"},
        "s3":{"s3SchemaVersion":"1.0","configurationId":"testConfigRule",
          "bucket":{"name":"mybucket","ownerIdentity":{"principalId":"A3NL1KOZZKExample"},"arn":"arn:aws:s3:::mybucket"},
          "object":{"key":"acme/Happy+Face%281%29.jpg","size":1024,"eTag":"d41d8cd98f00b204e9800998ecf8427e",
            "versionId":"096fKKXTRTtl3on89fVO.nfljtsv6qko","sequencer":"0055AED6DCD90281E5"}}}]}"#;

    #[test]
    fn an_aws_notification_reads_with_its_key_decoded() {
        let records = parse(AWS.as_bytes()).unwrap();
        assert_eq!(
            records,
            vec![(
                0,
                Record {
                    change: Change::Created,
                    bucket: "mybucket".into(),
                    key: "acme/Happy Face(1).jpg".into(),
                    size_bytes: Some(1024),
                    etag: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
                }
            )]
        );
    }

    #[test]
    fn a_minio_removal_reads_and_other_events_are_skipped() {
        let body = r#"{"EventName":"s3:ObjectRemoved:Delete","Key":"docs/acme%2Fx","Records":[
            {"eventName":"s3:ObjectAccessed:Get","s3":{"bucket":{"name":"docs"},"object":{"key":"acme%2Fx"}}},
            {"eventName":"s3:ObjectRemoved:Delete","s3":{"bucket":{"name":"docs"},"object":{"key":"acme%2Fx","sequencer":"1"}}}]}"#;
        let records = parse(body.as_bytes()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, 1);
        assert_eq!(records[0].1.change, Change::Removed);
        assert_eq!(records[0].1.key, "acme/x");
        assert_eq!(records[0].1.size_bytes, None);
    }

    #[test]
    fn what_is_not_a_notification_is_refused_with_the_reason() {
        assert!(matches!(parse(b"not json"), Err(Error::NotJson(_))));
        assert_eq!(parse(b"{}"), Err(Error::NoRecords));
        assert_eq!(parse(br#"{"Records":[]}"#), Err(Error::NoRecords));
        assert!(matches!(parse(br#"{"Records":[{}]}"#), Err(Error::BadRecord { index: 0, .. })));
        let no_key = br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{}}}]}"#;
        assert!(matches!(parse(no_key), Err(Error::BadRecord { index: 0, reason }) if reason.contains("key")));
        let bad_utf8 =
            br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"%ff"}}}]}"#;
        assert!(matches!(parse(bad_utf8), Err(Error::BadRecord { .. })));
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(matches!(parse(&big), Err(Error::TooLarge { .. })));
        let many = format!(r#"{{"Records":[{}]}}"#, vec!["{}"; MAX_RECORDS + 1].join(","));
        assert!(matches!(parse(many.as_bytes()), Err(Error::TooManyRecords { .. })));
    }

    /// What AWS sends when a notification target is configured ("Event message structure").
    const AWS_TEST: &str = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2014-10-13T15:57:02.089Z",
        "Bucket":"bucketname","RequestId":"5582815E1AEA5ADF","HostId":"8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}"#;

    #[test]
    fn aws_test_event_reads_as_no_records() {
        assert_eq!(parse(AWS_TEST.as_bytes()), Ok(Vec::new()));
        // Another `Event` with no records is still not a notification.
        assert_eq!(parse(br#"{"Event":"s3:Other"}"#), Err(Error::NoRecords));
    }

    #[test]
    fn what_the_local_store_sends_reads_back() {
        let info = ObjectInfo { size_bytes: 3, etag: "abc".into(), content_type: None };
        let body = record_json(Change::Created, "local", "acme/a b", Some(&info));
        let records = parse(&body).unwrap();
        assert_eq!(records[0].1.key, "acme/a b");
        assert_eq!(records[0].1.size_bytes, Some(3));
        let body = record_json(Change::Removed, "local", "acme/x", None);
        assert_eq!(parse(&body).unwrap()[0].1.change, Change::Removed);
    }
}
