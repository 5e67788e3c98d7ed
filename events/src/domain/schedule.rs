//! Events of a schedule: a cron rule, in a time zone, that submits jobs of a workflow.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

use super::ids::{DocumentId, JobId, WorkflowId};
use crate::envelope::Timestamp;

/// Which documents a firing runs over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// These documents, every time.
    Documents(Vec<DocumentId>),
    /// The documents that match at firing time; every field given must match.
    Selector {
        /// Documents of this tenant.
        tenant: Option<String>,
        /// Documents of this content type.
        content_type: Option<String>,
        /// Documents whose name starts with this.
        name_prefix: Option<String>,
        /// Only the documents uploaded (or given a new version) since the last firing, so that each upload
        /// is taken by one firing; the first firing takes every match so far. Added after version 1 of
        /// `schedule.created` was first written: an event without it takes every match each time.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        since_last_firing: bool,
        /// Documents with each of these labels (`{"project": "q3"}`), as they are at firing time. Added after
        /// version 1 of `schedule.created` was first written: an event without it asks for none.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
    },
}

/// What a schedule does about occurrences it missed (the node was down, or busy past the next one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Fire once, for the latest missed occurrence, not once per occurrence missed.
    #[default]
    FireOnce,
    /// Fire nothing for an occurrence found more than the misfire threshold late; wait for the next one.
    Skip,
}

/// What documents are grouped by, for [`Strategy::PerGroup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// Their tenant.
    Tenant,
    /// Their content type.
    ContentType,
    /// Their owner.
    Owner,
}

/// How the target's documents become jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One job per document.
    PerDocument,
    /// One job per group of documents.
    PerGroup(GroupBy),
    /// One job over all of them.
    Combined,
}

/// The schedule was created, active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Created {
    /// The cron expression (5 fields, or 6 with seconds).
    pub cron: String,
    /// The IANA time zone the expression is read in, such as `Europe/Berlin`.
    pub time_zone: String,
    /// The workflow its jobs run.
    pub workflow: WorkflowId,
    /// The documents.
    pub target: Target,
    /// How documents become jobs.
    pub strategy: Strategy,
    /// What it does about missed occurrences. Added after version 1 was first written: an event without it
    /// fires once.
    #[serde(default, skip_serializing_if = "is_fire_once")]
    pub misfire: Misfire,
    /// When.
    pub at: Timestamp,
}

fn is_fire_once(misfire: &Misfire) -> bool {
    *misfire == Misfire::FireOnce
}

/// The schedule stopped firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Paused {
    /// When.
    pub at: Timestamp,
}

/// The schedule fires again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resumed {
    /// When.
    pub at: Timestamp,
}

/// The schedule fired for the occurrence at `due_at` and submitted `jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Fired {
    /// The occurrence.
    pub due_at: Timestamp,
    /// The jobs submitted.
    pub jobs: Vec<JobId>,
    /// For a selector of documents uploaded since the last firing: the log position up to which uploads were
    /// taken by this firing (the next takes those after it). Added after version 1 was first written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through_position: Option<u64>,
    /// When it fired.
    pub at: Timestamp,
}

/// The schedule was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deleted {
    /// When.
    pub at: Timestamp,
}

super::domain_events! { "schedule";
    /// See [`Created`].
    Created(Created) = "schedule.created", v 1,
    /// See [`Paused`].
    Paused(Paused) = "schedule.paused", v 1,
    /// See [`Resumed`].
    Resumed(Resumed) = "schedule.resumed", v 1,
    /// See [`Fired`].
    Fired(Fired) = "schedule.fired", v 1,
    /// See [`Deleted`].
    Deleted(Deleted) = "schedule.deleted", v 1,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::round_trip;

    #[test]
    fn every_schedule_event_round_trips() {
        let at = Timestamp(11);
        let events: Vec<Event> = vec![
            Created {
                cron: "0 9 * * MON-FRI".into(),
                time_zone: "Europe/Berlin".into(),
                workflow: WorkflowId::new(),
                target: Target::Selector {
                    tenant: Some("acme".into()),
                    content_type: None,
                    name_prefix: None,
                    since_last_firing: true,
                    labels: [("project".to_owned(), "q3".to_owned())].into(),
                },
                strategy: Strategy::PerGroup(GroupBy::ContentType),
                misfire: Misfire::Skip,
                at,
            }
            .into(),
            Created {
                cron: "@hourly".into(),
                time_zone: "UTC".into(),
                workflow: WorkflowId::new(),
                target: Target::Documents(vec![DocumentId::new()]),
                strategy: Strategy::Combined,
                misfire: Misfire::FireOnce,
                at,
            }
            .into(),
            Paused { at }.into(),
            Resumed { at }.into(),
            Fired { due_at: at, jobs: vec![JobId::new()], through_position: None, at }.into(),
            Fired { due_at: at, jobs: vec![JobId::new()], through_position: Some(42), at }.into(),
            Deleted { at }.into(),
        ];
        for event in events {
            assert_eq!(round_trip(&event), event);
        }
    }

    #[test]
    fn events_written_before_the_misfire_selector_and_position_fields_read_with_their_defaults() {
        // `schedule.created` and `schedule.fired` as version 1 wrote them before those fields existed.
        #[derive(Serialize)]
        struct OldSelector {
            tenant: Option<String>,
            content_type: Option<String>,
            name_prefix: Option<String>,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum OldTarget {
            Selector(OldSelector),
        }
        #[derive(Serialize)]
        struct OldCreated {
            cron: String,
            time_zone: String,
            workflow: WorkflowId,
            target: OldTarget,
            strategy: Strategy,
            at: Timestamp,
        }
        let workflow = WorkflowId::new();
        let old = OldCreated {
            cron: "@daily".into(),
            time_zone: "UTC".into(),
            workflow,
            target: OldTarget::Selector(OldSelector {
                tenant: Some("acme".into()),
                content_type: None,
                name_prefix: None,
            }),
            strategy: Strategy::Combined,
            at: Timestamp(1),
        };
        let created: Created = crate::codec::decode(&crate::codec::encode(&old).unwrap()).unwrap();
        assert_eq!(created.misfire, Misfire::FireOnce);
        assert!(
            matches!(created.target, Target::Selector { since_last_firing: false, ref labels, .. } if labels.is_empty())
        );
        #[derive(Serialize)]
        struct OldFired {
            due_at: Timestamp,
            jobs: Vec<JobId>,
            at: Timestamp,
        }
        let old = OldFired { due_at: Timestamp(5), jobs: vec![JobId::new()], at: Timestamp(6) };
        let fired: Fired = crate::codec::decode(&crate::codec::encode(&old).unwrap()).unwrap();
        assert_eq!(fired.through_position, None);
    }
}

/// Why a cron rule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The expression does not parse.
    #[error("invalid cron expression {cron:?}: {reason}")]
    InvalidCron {
        /// The expression.
        cron: String,
        /// The parser's complaint.
        reason: String,
    },
    /// No such IANA time zone.
    #[error("unknown time zone {0:?}")]
    InvalidTimeZone(String),
}

/// A cron rule read in a time zone: when a schedule fires.
#[derive(Debug, Clone)]
pub struct Rule {
    cron: Cron,
    zone: Tz,
}

impl Rule {
    /// Parses an expression and an IANA time zone.
    pub fn parse(cron: &str, time_zone: &str) -> Result<Self, RuleError> {
        let parsed =
            Cron::from_str(cron).map_err(|e| RuleError::InvalidCron { cron: cron.into(), reason: e.to_string() })?;
        let zone = Tz::from_str(time_zone).map_err(|_| RuleError::InvalidTimeZone(time_zone.into()))?;
        Ok(Self { cron: parsed, zone })
    }

    fn local(&self, at: Timestamp) -> Option<DateTime<Tz>> {
        DateTime::<Utc>::from_timestamp_micros(at.as_micros()).map(|t| t.with_timezone(&self.zone))
    }

    /// Whether `at` is an occurrence of the rule.
    pub fn matches(&self, at: Timestamp) -> bool {
        self.local(at).is_some_and(|t| self.cron.is_time_matching(&t).unwrap_or(false))
    }

    /// The first occurrence strictly after `after`, if the rule has one.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = self.local(after)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(Timestamp(next.timestamp_micros()))
    }
}
