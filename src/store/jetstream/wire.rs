//! The messages of the JetStream API the store speaks directly.

use async_nats::jetstream::stream;
use serde::{Deserialize, Serialize};

/// A direct get request (`JSApiMsgGetRequest`).
#[derive(Debug, Default, Serialize)]
pub(super) struct GetRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) last_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) next_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) batch: Option<usize>,
}

/// A JetStream API error.
#[derive(Debug, Deserialize)]
pub(super) struct ApiError {
    #[serde(default)]
    pub(super) code: u16,
    #[serde(default)]
    pub(super) err_code: u32,
    #[serde(default)]
    pub(super) description: String,
}

/// The answer to a publish: an acknowledgement or an error.
#[derive(Debug, Deserialize)]
pub(super) struct PubReply {
    #[serde(default)]
    pub(super) seq: u64,
    #[serde(default)]
    pub(super) count: Option<u64>,
    #[serde(default)]
    pub(super) error: Option<ApiError>,
}

/// The answer to a message get.
#[derive(Debug, Deserialize)]
pub(super) struct MsgGetReply {
    #[serde(default)]
    pub(super) message: Option<StoredMessage>,
    #[serde(default)]
    pub(super) error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
pub(super) struct StoredMessage {
    pub(super) subject: String,
    pub(super) seq: u64,
    /// The body, base64.
    #[serde(default)]
    pub(super) data: String,
}

/// The answer to a stream info request.
#[derive(Debug, Deserialize)]
pub(super) struct InfoReply {
    #[serde(default)]
    pub(super) config: Option<stream::Config>,
    #[serde(default)]
    pub(super) state: Option<InfoState>,
    #[serde(default)]
    pub(super) error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
pub(super) struct InfoState {
    #[serde(default)]
    pub(super) last_seq: u64,
}

/// JetStream's codes for a failed expected-sequence check: with the actual sequence in the description
/// (`wrong last sequence: 5`), and without it (a clustered stream can answer either).
pub(super) const WRONG_LAST_SEQUENCE: [u32; 2] = [10071, 10164];
/// JetStream's code for "stream not found".
pub(super) const STREAM_NOT_FOUND: u32 = 10059;

/// Why a publish failed.
#[derive(Debug)]
pub(super) enum PublishError {
    /// The expected-sequence check failed: another event of the stream came first.
    WrongLastSequence,
    /// No acknowledgement came: the publish may or may not have been stored.
    Ambiguous(String),
    /// Nothing answered: the stream has no leader now (being created, or electing one); nothing was stored.
    NoLeader,
    /// The server refused it for another reason; nothing was stored.
    Refused(String),
}
