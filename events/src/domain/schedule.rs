//! Events of a schedule: a cron rule, in a time zone, that submits jobs of a workflow.

use serde::{Deserialize, Serialize};

use super::ids::{DocumentId, JobId, WorkflowId};
use crate::envelope::Timestamp;

/// Which documents a firing runs over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
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
    },
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
    /// When.
    pub at: Timestamp,
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
                target: Target::Selector { tenant: Some("acme".into()), content_type: None, name_prefix: None },
                strategy: Strategy::PerGroup(GroupBy::ContentType),
                at,
            }
            .into(),
            Created {
                cron: "@hourly".into(),
                time_zone: "UTC".into(),
                workflow: WorkflowId::new(),
                target: Target::Documents(vec![DocumentId::new()]),
                strategy: Strategy::Combined,
                at,
            }
            .into(),
            Paused { at }.into(),
            Resumed { at }.into(),
            Fired { due_at: at, jobs: vec![JobId::new()], at }.into(),
            Deleted { at }.into(),
        ];
        for event in events {
            assert_eq!(round_trip(&event), event);
        }
    }
}
