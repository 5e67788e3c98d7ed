//! Events of a trigger: "when a document matching this selector is uploaded, or gets a new version, run this
//! workflow on it".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::WorkflowId;
use crate::envelope::Timestamp;

/// Which documents a trigger fires on: every field given must match (a document's labels must hold every
/// label named, with the value named). Documents are of the selector's tenant only; one naming none (set by
/// an identity of every tenant) takes documents of any tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The documents' tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Their MIME type, exactly.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The start of their file name.
    #[serde(default)]
    pub name_prefix: Option<String>,
    /// Labels they must have, with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    /// Whether a document with these fields matches.
    pub fn matches(&self, tenant: &str, content_type: &str, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
            && self.content_type.as_deref().is_none_or(|c| c == content_type)
            && self.name_prefix.as_deref().is_none_or(|p| name.starts_with(p))
            && self.labels.iter().all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// A trigger was created, active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Created {
    /// The workflow its jobs run, at the latest version defined when each fires.
    pub workflow: WorkflowId,
    /// The documents it fires on.
    pub selector: Selector,
    /// The parameters of its jobs.
    pub parameters: BTreeMap<String, String>,
    /// The priority of its jobs.
    pub priority: i32,
    /// Whether it also fires on a document's new versions, not only on its first upload.
    pub on_versions: bool,
    /// Whether it fires on the outputs of its own jobs (a loop, unless the workflow's outputs stop matching).
    pub own_outputs: bool,
    /// When.
    pub at: Timestamp,
}

/// The trigger stopped firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Paused {
    /// When.
    pub at: Timestamp,
}

/// The trigger fires again (on uploads from now on: none recorded while it was paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resumed {
    /// When.
    pub at: Timestamp,
}

/// The trigger was deleted; it never fires again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deleted {
    /// When.
    pub at: Timestamp,
}

super::domain_events! { "trigger";
    /// See [`Created`].
    Created(Created) = "trigger.created", v 1,
    /// See [`Paused`].
    Paused(Paused) = "trigger.paused", v 1,
    /// See [`Resumed`].
    Resumed(Resumed) = "trigger.resumed", v 1,
    /// See [`Deleted`].
    Deleted(Deleted) = "trigger.deleted", v 1,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainEvent;
    use crate::domain::ids::Uuid;
    use crate::domain::tests::round_trip;

    #[test]
    fn every_trigger_event_round_trips_with_its_stable_name() {
        let at = Timestamp(7);
        let selector = Selector {
            tenant: Some("acme".into()),
            content_type: Some("text/plain".into()),
            name_prefix: Some("in/".into()),
            labels: [("project".to_owned(), "q3".to_owned())].into(),
        };
        let events: Vec<Event> = vec![
            Created {
                workflow: WorkflowId(Uuid::from_u128(1)),
                selector,
                parameters: [("tone".to_owned(), "dry".to_owned())].into(),
                priority: 2,
                on_versions: true,
                own_outputs: false,
                at,
            }
            .into(),
            Paused { at }.into(),
            Resumed { at }.into(),
            Deleted { at }.into(),
        ];
        let names: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
        assert_eq!(names, ["trigger.created", "trigger.paused", "trigger.resumed", "trigger.deleted"]);
        for event in events {
            assert_eq!(round_trip(&event), event);
        }
    }

    #[test]
    fn a_selector_matches_when_every_field_it_names_does() {
        let labels: BTreeMap<String, String> = [("project".to_owned(), "q3".to_owned())].into();
        let selector = Selector {
            tenant: Some("acme".into()),
            name_prefix: Some("in/".into()),
            labels: labels.clone(),
            ..Selector::default()
        };
        assert!(selector.matches("acme", "text/plain", "in/a.txt", &labels));
        assert!(!selector.matches("other", "text/plain", "in/a.txt", &labels));
        assert!(!selector.matches("acme", "text/plain", "out/a.txt", &labels));
        assert!(!selector.matches("acme", "text/plain", "in/a.txt", &BTreeMap::new()));
        let q4 = [("project".to_owned(), "q4".to_owned())].into();
        assert!(!selector.matches("acme", "text/plain", "in/a.txt", &q4));
        assert!(Selector::default().matches("any", "any/thing", "", &BTreeMap::new()));
    }
}
