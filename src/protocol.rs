//! The wire protocol (documented for users in `docs/protocol.md`).
//!
//! - Commands: request/reply on `weft.cmd.<aggregate>.<id>`. The body is MessagePack, or JSON when the header
//!   `Content-Type` is `application/json`: `{command_id, type, payload, expected_version?, id?}`. `id`, when
//!   given, must equal the subject's last token. The reply ([`Reply`]) is in the request's format.
//! - Events: `weft.evt.<tenant>.<aggregate>.<id>.<name>` where the event type is `<aggregate>.<name>`; the body is the
//!   [`WireEvent`], MessagePack, with the header `Nats-Msg-Id` set to the event id.
//!
//! Ids are UUID strings and times are microseconds since the Unix epoch, in both formats.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use weft_actors::Aggregate;
use weft_actors::host::{self, Outcome};
use weft_events::codec::{self, Limits};
use weft_events::domain::ids::Uuid;
use weft_events::{Envelope, StreamName, Timestamp};

/// The first tokens of command subjects.
pub const COMMANDS: &str = "weft.cmd";
/// The first tokens of event subjects.
pub const EVENTS: &str = "weft.evt";
/// The queue group command services share.
pub const QUEUE_GROUP: &str = "weft";
/// Default largest command body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Default deepest nesting of a command body.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// The subject of commands to instance `id` of aggregate `kind`.
pub fn command_subject(kind: &str, id: Uuid) -> String {
    format!("{COMMANDS}.{kind}.{id}")
}

/// The subject an event goes out on: `weft.evt.<tenant>.<aggregate>.<id>.<name>`, so that a NATS permission
/// on `weft.evt.<tenant>.>` confines a subscriber to one tenant's events ([`subject_token`] for the tenant).
pub fn event_subject(event: &Envelope) -> String {
    let (kind, id) = event.stream.as_str().split_once('-').unwrap_or((event.stream.as_str(), "-"));
    let name = event.event_type.strip_prefix(kind).and_then(|n| n.strip_prefix('.')).unwrap_or(&event.event_type);
    format!("{EVENTS}.{}.{kind}.{id}.{name}", subject_token(&event.tenant))
}

/// A tenant as one token of a subject: as it is, but with the characters NATS gives a meaning in subjects
/// (`.`, `*`, `>`) and `%` percent-encoded (`a.b` is `a%2Eb`). Tenants are printable ASCII without spaces.
pub fn subject_token(tenant: &str) -> std::borrow::Cow<'_, str> {
    if !tenant.contains(['.', '*', '>', '%']) {
        return std::borrow::Cow::Borrowed(tenant);
    }
    let mut token = String::with_capacity(tenant.len() + 8);
    for c in tenant.chars() {
        match c {
            '.' | '*' | '>' | '%' => token.push_str(&format!("%{:02X}", c as u32)),
            c => token.push(c),
        }
    }
    std::borrow::Cow::Owned(token)
}

/// What kind of error a reply reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed: it never reached the aggregate.
    Invalid,
    /// The aggregate refused the command; `rejection` says why.
    Rejected,
    /// The instance was not at the expected version, or kept changing.
    Conflict,
    /// No such thing.
    NotFound,
    /// No valid `Authorization: Bearer` token (missing, malformed, expired, badly signed).
    Unauthenticated,
    /// The caller's identity may not send this command, or not for this tenant.
    Forbidden,
    /// Weft or its store could not do it now; the same command (same `command_id`) may be retried.
    Unavailable,
    /// The command's tenant is erased (its personal data destroyed): nothing with personal data is accepted
    /// for it any more.
    Erased,
}

/// A failed command's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(bound(serialize = "R: Serialize", deserialize = "R: DeserializeOwned"))]
pub struct WireError<R> {
    /// What kind of error.
    pub kind: ErrorKind,
    /// For people.
    pub message: String,
    /// For `rejected`: the aggregate's reason, `{code, detail}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<R>,
    /// For `unavailable` because the caller is over its rate limit: how long to wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The reply to a command: `status` is `ok` (with the version and positions) or `error` (with `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(bound(serialize = "R: Serialize", deserialize = "R: DeserializeOwned"))]
pub struct Reply<R> {
    /// `ok` or `error`.
    pub status: Status,
    /// The instance's version after the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The position of the first event the command appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_position: Option<u64>,
    /// The position of the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_position: Option<u64>,
    /// Whether this is the remembered outcome of an earlier delivery of the same `command_id`.
    #[serde(default)]
    pub repeated: bool,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError<R>>,
}

/// `ok` or `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Done.
    Ok,
    /// Not done.
    Error,
}

impl<R> Reply<R> {
    /// The reply for an outcome.
    pub fn ok(outcome: Outcome) -> Self {
        Self {
            status: Status::Ok,
            version: Some(outcome.version),
            first_position: outcome.positions.map(|p| p.0),
            last_position: outcome.positions.map(|p| p.1),
            repeated: outcome.repeated,
            error: None,
        }
    }

    /// An error reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>, rejection: Option<R>) -> Self {
        Self {
            status: Status::Error,
            version: None,
            first_position: None,
            last_position: None,
            repeated: false,
            error: Some(WireError { kind, message: message.into(), rejection, retry_after_ms: None }),
        }
    }

    /// An `invalid` reply.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::error(ErrorKind::Invalid, message, None)
    }

    /// An `unauthenticated` reply.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::error(ErrorKind::Unauthenticated, message, None)
    }

    /// An `unavailable` reply to a caller over its rate limit, saying how long to wait.
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let mut reply = Self::error(ErrorKind::Unavailable, "over the request rate allowed; retry later", None);
        if let Some(error) = &mut reply.error {
            error.retry_after_ms = Some(crate::auth::limits::retry_after_ms(wait));
        }
        reply
    }

    /// A `forbidden` reply.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::error(ErrorKind::Forbidden, message, None)
    }

    /// The reply for what the host said.
    pub fn from_host(result: Result<Outcome, host::Error<R>>) -> Self
    where
        R: std::fmt::Display,
    {
        match result {
            Ok(outcome) => Self::ok(outcome),
            Err(host::Error::Rejected(rejection)) => {
                Self::error(ErrorKind::Rejected, rejection.to_string(), Some(rejection))
            }
            Err(e @ host::Error::Conflict { .. }) => Self::error(ErrorKind::Conflict, e.to_string(), None),
            Err(e @ host::Error::Unavailable(_)) => Self::error(ErrorKind::Unavailable, e.to_string(), None),
            Err(e @ host::Error::Erased(_)) => Self::error(ErrorKind::Erased, e.to_string(), None),
            Err(e @ host::Error::OtherTenant) => Self::error(ErrorKind::NotFound, e.to_string(), None),
        }
    }

    /// Back to what the host said, for a caller over the bus; `invalid` and the like become `Unavailable`
    /// with their message, since the caller's own request was at fault and retrying will not help either.
    pub fn into_host(self) -> Result<Outcome, host::Error<R>> {
        match (self.status, self.error) {
            (Status::Ok, _) => Ok(Outcome {
                version: self.version.unwrap_or(0),
                positions: self.first_position.zip(self.last_position),
                repeated: self.repeated,
            }),
            (Status::Error, Some(WireError { kind: ErrorKind::Rejected, rejection: Some(r), .. })) => {
                Err(host::Error::Rejected(r))
            }
            // The versions are in the message only; a caller over the bus retries or reports either way.
            (Status::Error, Some(WireError { kind: ErrorKind::Conflict, .. })) => {
                Err(host::Error::Conflict { expected: 0, actual: 0 })
            }
            (Status::Error, Some(WireError { kind: ErrorKind::Erased, message, .. })) => {
                Err(host::Error::Erased(message))
            }
            // The instance is another tenant's, answered as a missing one.
            (Status::Error, Some(WireError { kind: ErrorKind::NotFound, .. })) => Err(host::Error::OtherTenant),
            (Status::Error, error) => Err(host::Error::Unavailable(error.map_or_else(
                || "an error reply without an error".to_owned(),
                |e| format!("{:?}: {}", e.kind, e.message),
            ))),
        }
    }
}

/// A command as it arrives, before its type is known.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    command_id: Uuid,
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    expected_version: Option<u64>,
}

/// A command request's body: what [`decode_command`] accepts, and what callers over the bus send.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommandRequest<C> {
    /// Unique per command; the same id again returns the first outcome.
    pub command_id: Uuid,
    /// The instance; if given, it must equal the subject's last token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// The command: `type` and `payload`.
    #[serde(flatten)]
    pub command: C,
    /// Apply only at exactly this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// The JSON Schemas of the protocol, by file name under `schemas/`: each aggregate's command requests
/// (`commands/<aggregate>.json`), replies (`replies/<aggregate>.json`) and event payloads
/// (`events/<aggregate>.json`), and the published event envelope (`event.json`).
pub fn schemas() -> Vec<(String, serde_json::Value)> {
    fn aggregate<A: Aggregate>(
        events: Vec<(&'static str, u32, schemars::Schema)>,
        out: &mut Vec<(String, serde_json::Value)>,
    ) where
        A::Command: schemars::JsonSchema,
        A::Rejection: schemars::JsonSchema,
    {
        let kind = A::KIND;
        let mut commands = schemars::schema_for!(CommandRequest<A::Command>).to_value();
        without_clock_defaults(&mut commands);
        // The request refuses fields beside `command_id`, `id`, `expected_version`, `type` and `payload`; the
        // last two come from the command's `oneOf`, so in JSON Schema 2020-12 terms: none left unevaluated.
        commands["unevaluatedProperties"] = serde_json::Value::Bool(false);
        out.push((format!("commands/{kind}.json"), commands));
        out.push((format!("replies/{kind}.json"), schemars::schema_for!(Reply<A::Rejection>).to_value()));
        let events: serde_json::Map<String, serde_json::Value> = events
            .into_iter()
            .map(|(name, version, schema)| {
                (name.to_owned(), serde_json::json!({"schema_version": version, "payload": schema.to_value()}))
            })
            .collect();
        out.push((format!("events/{kind}.json"), serde_json::Value::Object(events)));
    }
    use weft_events::domain::{agent, document, job, schedule, trigger, workflow};
    let mut out = Vec::new();
    aggregate::<weft_actors::document::Document>(document::Event::payload_schemas(), &mut out);
    aggregate::<weft_actors::workflow::Workflow>(workflow::Event::payload_schemas(), &mut out);
    aggregate::<weft_actors::job::Job>(job::Event::payload_schemas(), &mut out);
    aggregate::<weft_actors::agent::Agent>(agent::Event::payload_schemas(), &mut out);
    aggregate::<weft_actors::schedule::Schedule>(schedule::Event::payload_schemas(), &mut out);
    aggregate::<weft_actors::trigger::Trigger>(trigger::Event::payload_schemas(), &mut out);
    out.push(("event.json".into(), schemars::schema_for!(WireEvent).to_value()));
    out
}

/// Drops the default of every `at` property: it is the clock at the time of generation ("now" when left
/// out), not a value, and would make the schemas differ from run to run.
fn without_clock_defaults(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(at)) =
                map.get_mut("properties").and_then(|p| p.as_object_mut()).and_then(|p| p.get_mut("at"))
                && at.remove("default").is_some()
            {
                at.insert("description".into(), "When; the node's clock when left out.".into());
            }
            map.values_mut().for_each(without_clock_defaults);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_clock_defaults),
        _ => {}
    }
}

/// A decoded, checked command.
#[derive(Debug)]
pub struct Decoded<C> {
    /// The instance's stream.
    pub stream: StreamName,
    /// Its id.
    pub id: Uuid,
    /// The command's id.
    pub command_id: Uuid,
    /// Its type, as sent (`register`).
    pub kind: String,
    /// The command.
    pub command: C,
    /// The version it applies at.
    pub expected_version: Option<u64>,
}

/// Limits on command bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body.
    pub max_bytes: usize,
    /// Deepest nesting.
    pub max_depth: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self { max_bytes: DEFAULT_MAX_BODY_BYTES, max_depth: DEFAULT_MAX_DEPTH }
    }
}

/// Decodes and checks a command for aggregate `A` that arrived on `subject`. The error is the message of an
/// `invalid` reply.
pub fn decode_command<A: Aggregate>(
    subject: &str,
    body: &[u8],
    json: bool,
    limits: BodyLimits,
) -> Result<Decoded<A::Command>, String> {
    let id = subject
        .strip_prefix(COMMANDS)
        .and_then(|s| s.strip_prefix('.'))
        .and_then(|s| s.strip_prefix(A::KIND))
        .and_then(|s| s.strip_prefix('.'))
        .ok_or_else(|| format!("subject {subject:?} is not {COMMANDS}.{}.<id>", A::KIND))?;
    // Routed by partition (`crate::cluster::routing`), the server appended the partition's number.
    let id = match id.split_once('.') {
        Some((id, partition)) if !partition.is_empty() && partition.bytes().all(|b| b.is_ascii_digit()) => id,
        _ => id,
    };
    let id = Uuid::parse_str(id).map_err(|_| format!("the subject's last token {id:?} is not a UUID"))?;
    if body.len() > limits.max_bytes {
        return Err(format!("the body is {} bytes, over the limit of {}", body.len(), limits.max_bytes));
    }
    let raw: RawCommand = if json {
        if json_depth(body) > limits.max_depth {
            return Err(format!("the body nests deeper than {}", limits.max_depth));
        }
        serde_json::from_slice(body).map_err(|e| format!("the JSON body does not decode: {e}"))?
    } else {
        codec::decode_readable_with(body, Limits { max_input_bytes: limits.max_bytes, max_depth: limits.max_depth })
            .map_err(|e| format!("the MessagePack body does not decode: {e}"))?
    };
    if let Some(body_id) = raw.id
        && body_id != id
    {
        return Err(format!("the body's id {body_id} differs from the subject's {id}"));
    }
    let mut tagged = serde_json::Map::new();
    tagged.insert("type".into(), serde_json::Value::String(raw.kind.clone()));
    tagged.insert("payload".into(), raw.payload.unwrap_or_else(|| serde_json::Value::Object(Default::default())));
    let command = serde_json::from_value(serde_json::Value::Object(tagged))
        .map_err(|e| format!("command {:?} of a {}: {e}", raw.kind, A::KIND))?;
    let stream = StreamName::new(format!("{}-{id}", A::KIND)).map_err(|e| e.to_string())?;
    let (command_id, kind, expected_version) = (raw.command_id, raw.kind, raw.expected_version);
    Ok(Decoded { stream, id, command_id, kind, command, expected_version })
}

/// The deepest nesting of arrays and objects in a JSON text, counted without parsing it (strings are
/// skipped), so that a deeply nested body is refused before a parser recurses into it.
fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Encodes a value in the format of the request: JSON, or readable MessagePack.
pub fn encode<T: Serialize>(value: &T, json: bool) -> Vec<u8> {
    if json {
        serde_json::to_vec(value).expect("replies encode as JSON")
    } else {
        codec::encode_readable(value).expect("replies encode as MessagePack")
    }
}

/// Decodes a reply (for callers over the bus).
pub fn decode<T: DeserializeOwned>(body: &[u8], json: bool) -> Result<T, String> {
    if json {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    } else {
        codec::decode_readable_with(body, Limits::default()).map_err(|e| e.to_string())
    }
}

/// An event as published on its subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WireEvent {
    /// Unique id; also the `Nats-Msg-Id` header.
    pub event_id: Uuid,
    /// The stream: `<aggregate>-<id>`.
    pub stream: String,
    /// Place in its stream.
    pub version: u64,
    /// Place in the whole store.
    pub position: u64,
    /// `<aggregate>.<name>`.
    pub event_type: String,
    /// Version of the payload's schema.
    pub schema_version: u32,
    /// When it was stored, µs since the epoch.
    pub recorded_at: Timestamp,
    /// Its tenant.
    pub tenant: String,
    /// The flow it belongs to.
    pub correlation_id: Option<Uuid>,
    /// The command or event that caused it.
    pub causation_id: Option<Uuid>,
    /// Who caused it.
    pub actor: String,
    /// The payload, MessagePack as stored.
    #[serde(with = "serde_bytes_compat")]
    #[schemars(with = "Vec<u8>", description = "The payload, MessagePack as stored (a `bin`).")]
    pub payload: Vec<u8>,
}

impl From<&Envelope> for WireEvent {
    fn from(e: &Envelope) -> Self {
        Self {
            event_id: e.event_id,
            stream: e.stream.to_string(),
            version: e.version,
            position: e.position,
            event_type: e.event_type.to_string(),
            schema_version: e.schema_version,
            recorded_at: e.recorded_at,
            tenant: e.tenant.to_string(),
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            actor: e.actor.to_string(),
            payload: e.payload.to_vec(),
        }
    }
}

/// Bytes as a MessagePack `bin`, not an array of numbers.
mod serde_bytes_compat {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let bytes: bytes::Bytes = serde::Deserialize::deserialize(d)?;
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_one_subject_token_whatever_it_holds() {
        assert_eq!(subject_token("acme"), "acme");
        assert_eq!(subject_token("user:ann"), "user:ann");
        assert_eq!(subject_token("a.b*c>d%e"), "a%2Eb%2Ac%3Ed%25e");
        // Encoded tenants never collide with plain ones: `%` itself is encoded.
        assert_ne!(subject_token("a%2Eb"), subject_token("a.b"));
    }

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(br#"{"a":"[[[[\"]]]"}"#), 1);
        assert_eq!(json_depth(b"1"), 0);
    }
}
