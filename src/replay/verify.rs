//! `weft events verify`: reads the whole log and checks every promise the store makes about it.
//!
//! - positions are dense from 1 through the head;
//! - each stream's versions are dense from 1, in position order;
//! - every record passes the backend's own checks (SQLite: each record's CRC-32 over position, stream,
//!   version and body; JetStream: the message's envelope);
//! - every payload decodes as its type says, under this build's upcasters, for a stream of a known aggregate.
//!
//! A fault does not stop the scan: a page that fails to read is read again an event at a time, so the report
//! names each bad position and the scan goes on past it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use weft_events::domain::{Any, DecodeError};
use weft_events::seal::{Opening, SEALED};
use weft_events::{Envelope, EventRead, StreamName};

use super::digest::{Digest, Digester, StreamDigest};
use super::read_ahead;

/// Most faults the report lists one by one; past it, they are only counted.
pub const MAX_LISTED_FAULTS: usize = 1000;

/// What kind of promise an event broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A position between 1 and the head holds no event.
    MissingPosition,
    /// A stream skips a version (or repeats one).
    MissingVersion,
    /// The backend refused the record: a failed checksum, a damaged envelope.
    CorruptRecord,
    /// The event's type is not one its aggregate has.
    UnknownEventType,
    /// The stream's name is not the stream of any aggregate.
    UnknownStream,
    /// The payload's schema version is newer than this build reads.
    UnknownSchemaVersion,
    /// The payload does not decode as its type says.
    CorruptPayload,
}

impl FaultKind {
    fn of_decode(error: &DecodeError) -> Self {
        match error {
            DecodeError::UnknownType { .. } => Self::UnknownEventType,
            DecodeError::UnknownStream { .. } => Self::UnknownStream,
            DecodeError::UnknownVersion { .. } => Self::UnknownSchemaVersion,
            DecodeError::Payload { .. } => Self::CorruptPayload,
        }
    }
}

/// One broken promise.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Which.
    pub kind: FaultKind,
    /// Where in the log.
    pub position: u64,
    /// The stream, when the event could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The version, when the event could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// What is wrong, in words.
    pub detail: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The store.
    pub store: String,
    /// The log's last position when the scan began.
    pub head: u64,
    /// Events read and checked.
    pub events: u64,
    /// Streams seen.
    pub streams: u64,
    /// Faults found, in all.
    pub faults: u64,
    /// Faults found, by kind.
    pub faults_by_kind: BTreeMap<FaultKind, u64>,
    /// The first [`MAX_LISTED_FAULTS`] faults, in position order.
    pub listed: Vec<Fault>,
    /// Whether the store kept every promise.
    pub ok: bool,
    /// The digest of the events read (`weft events copy` compares it at both ends; see [`super::digest`]).
    pub digest: Digest,
    /// Each stream's part of it, when asked for (`--streams`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_stream: Vec<StreamDigest>,
}

/// The checks' running state.
struct Checks {
    report: Report,
    versions: HashMap<StreamName, u64>,
    next_position: u64,
    /// Positions of records that could not be read (the first few): a version missing later may be one.
    unreadable: Vec<u64>,
    digester: Digester,
}

impl Checks {
    fn fault(&mut self, fault: Fault) {
        self.report.faults += 1;
        *self.report.faults_by_kind.entry(fault.kind).or_default() += 1;
        if self.report.listed.len() < MAX_LISTED_FAULTS {
            self.report.listed.push(fault);
        }
    }

    fn unreadable_before(&self, position: u64) -> Option<String> {
        let before: Vec<String> = self
            .unreadable
            .iter()
            .filter(|p| **p < position)
            .take(3)
            .map(|p| format!("event at position {p}"))
            .collect();
        (!before.is_empty()).then(|| before.join(", "))
    }

    fn missing_positions(&mut self, through: u64) {
        if through < self.next_position {
            return;
        }
        let (first, last) = (self.next_position, through);
        for position in first..=last.min(first + MAX_LISTED_FAULTS as u64) {
            self.fault(Fault {
                kind: FaultKind::MissingPosition,
                position,
                stream: None,
                version: None,
                detail: format!("no event at position {position} (positions {first} through {last} are missing)"),
            });
        }
        // Past the listed ones, only counted.
        let unlisted = (last - first + 1).saturating_sub(MAX_LISTED_FAULTS as u64 + 1);
        self.report.faults += unlisted;
        *self.report.faults_by_kind.entry(FaultKind::MissingPosition).or_default() += unlisted;
        self.next_position = through + 1;
    }

    fn check(&mut self, e: &Envelope) {
        if e.position > self.next_position {
            self.missing_positions(e.position - 1);
        }
        self.next_position = e.position + 1;
        self.report.events += 1;
        self.digester.add(e);
        let last = match self.versions.get_mut(&e.stream) {
            Some(last) => std::mem::replace(last, e.version),
            None => {
                self.versions.insert(e.stream.clone(), e.version);
                0
            }
        };
        if e.version != last + 1 {
            let detail = if e.version > last + 1 {
                let mut detail = format!(
                    "{} jumps from version {last} to {}: versions {} through {} are missing",
                    e.stream,
                    e.version,
                    last + 1,
                    e.version - 1
                );
                if let Some(positions) = self.unreadable_before(e.position) {
                    detail.push_str(&format!(" (perhaps as the {positions} reported above, missing or unreadable)"));
                }
                detail
            } else {
                format!("{} has version {} after version {last}", e.stream, e.version)
            };
            self.fault(Fault {
                kind: FaultKind::MissingVersion,
                position: e.position,
                stream: Some(e.stream.to_string()),
                version: Some(e.version),
                detail,
            });
        }
        // Sealed personal fields are checked for their form (the keys are not needed): each must read as a
        // value of its kind, so that the payload decodes with markers in their places.
        let opened;
        let e = match weft_events::seal::open(e.event_id, &e.tenant, &e.payload, Opening::Marker(SEALED)) {
            Ok(None) => e,
            Ok(Some(payload)) => {
                opened = Envelope { payload: payload.into(), ..e.clone() };
                &opened
            }
            Err(error) => {
                self.fault(Fault {
                    kind: FaultKind::CorruptPayload,
                    position: e.position,
                    stream: Some(e.stream.to_string()),
                    version: Some(e.version),
                    detail: error.to_string(),
                });
                return;
            }
        };
        if let Err(error) = Any::from_envelope(e) {
            self.fault(Fault {
                kind: FaultKind::of_decode(&error),
                position: e.position,
                stream: Some(e.stream.to_string()),
                version: Some(e.version),
                detail: error.to_string(),
            });
        }
    }
}

/// Checks the whole log of `reader`, reporting `progress(events_checked, head)` now and then; with
/// `per_stream`, lists each stream's digest.
pub async fn verify(
    reader: Arc<dyn EventRead>,
    store: String,
    per_stream: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, super::Error> {
    let head = reader.head().await?;
    let report = Report {
        store,
        head,
        events: 0,
        streams: 0,
        faults: 0,
        faults_by_kind: BTreeMap::new(),
        listed: Vec::new(),
        ok: true,
        digest: Digester::default().finish(),
        per_stream: Vec::new(),
    };
    let mut checks = Checks {
        report,
        versions: HashMap::new(),
        next_position: 1,
        unreadable: Vec::new(),
        digester: Digester::default(),
    };
    'scan: while checks.next_position <= head {
        let mut pages = read_ahead(Arc::clone(&reader), checks.next_position, head);
        while let Some(page) = pages.recv().await {
            match page {
                Ok(events) => {
                    for e in &events {
                        checks.check(e);
                    }
                    progress(checks.report.events, head);
                }
                Err(weft_events::Error::Corrupt { .. }) => {
                    // Somewhere in this page: step through it one event at a time.
                    let start = checks.next_position;
                    let end = (start + super::PAGE_EVENTS as u64 - 1).min(head);
                    for position in start..=end {
                        if position < checks.next_position {
                            continue;
                        }
                        match reader.read_all(position, 1).await {
                            Ok(one) => match one.first() {
                                Some(e) => checks.check(e),
                                None => break,
                            },
                            Err(weft_events::Error::Corrupt { detail, .. }) => {
                                if checks.unreadable.len() < MAX_LISTED_FAULTS {
                                    checks.unreadable.push(position);
                                }
                                let kind = if detail.starts_with(crate::store::sqlite::MISSING_POSITION) {
                                    FaultKind::MissingPosition
                                } else {
                                    FaultKind::CorruptRecord
                                };
                                checks.fault(Fault { kind, position, stream: None, version: None, detail });
                                checks.next_position = position + 1;
                            }
                            Err(other) => return Err(other.into()),
                        }
                    }
                    continue 'scan;
                }
                Err(other) => return Err(other.into()),
            }
        }
        break;
    }
    // Events the head promised that the log does not hold.
    if checks.next_position <= head {
        checks.missing_positions(head);
    }
    let mut report = checks.report;
    if per_stream {
        report.per_stream = checks.digester.streams();
    }
    report.digest = checks.digester.finish();
    report.streams = checks.versions.len() as u64;
    report.ok = report.faults == 0;
    Ok(report)
}
