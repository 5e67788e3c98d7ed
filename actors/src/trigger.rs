//! The trigger aggregate: "when a document matching this selector is uploaded, or gets a new version, run this
//! workflow on it".
//!
//! The trigger holds its definition and whether it is active; the firing is the trigger process's
//! ([`crate::process::triggers`]), which submits one job per matching upload, with an id derived from the
//! trigger and the upload's event, so the job is its record: a trigger's stream does not grow with its
//! firings, and uploads fire at once on many documents without waiting on one another.
//!
//! A trigger's workflow must be defined and not archived when it is created: the command intake checks that,
//! since the trigger cannot see the workflow.

use std::collections::BTreeMap;

use weft_events::Timestamp;
use weft_events::domain::ids::WorkflowId;
use weft_events::domain::trigger::{Created, Deleted, Event, Paused, Resumed, Selector};

use crate::aggregate::Aggregate;

/// Longest selector field (content type, name prefix, tenant), in bytes.
pub const MAX_TEXT_BYTES: usize = 200;

/// What can be asked of a trigger.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, strum::IntoStaticStr,
)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
pub enum Command {
    /// Create the trigger, active.
    Create {
        /// The workflow its jobs run, at its latest version when each fires.
        workflow: WorkflowId,
        /// The documents it fires on: at least one field.
        selector: Selector,
        /// The parameters of its jobs.
        #[serde(default)]
        parameters: BTreeMap<String, String>,
        /// The priority of its jobs.
        #[serde(default)]
        priority: i32,
        /// Whether it also fires on new versions of a document (the default), not only on its first upload.
        #[serde(default = "yes")]
        on_versions: bool,
        /// Whether it fires on the outputs of its own jobs (not unless asked: that is a loop unless the
        /// workflow's outputs stop matching).
        #[serde(default)]
        own_outputs: bool,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Stop firing: uploads recorded from now on fire nothing, also after it is resumed.
    Pause {
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Fire again, on uploads recorded from now on.
    Resume {
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Delete the trigger.
    Delete {
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
}

fn yes() -> bool {
    true
}

/// Why a trigger refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum Rejection {
    /// The trigger does not exist.
    #[error("the trigger does not exist")]
    NotCreated,
    /// The trigger exists already.
    #[error("the trigger exists already")]
    AlreadyCreated,
    /// The trigger is deleted.
    #[error("the trigger is deleted")]
    Deleted,
    /// The selector names no field, or a field is empty, too long or malformed.
    #[error("selector: {0}")]
    InvalidSelector(String),
    /// The parameters are too many, or one has a bad name or value.
    #[error("parameters: {0}")]
    InvalidParameters(String),
    /// The workflow is not defined (checked by the command intake).
    #[error("workflow {0} is not defined")]
    UnknownWorkflow(WorkflowId),
    /// The workflow is archived (checked by the command intake).
    #[error("workflow {0} is archived: restore it first")]
    WorkflowArchived(WorkflowId),
}

/// Where a trigger is: as a schedule (not created, active, paused, deleted).
pub use crate::schedule::Status;

/// The state of a trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Trigger {
    /// Where it is.
    pub status: Status,
    /// What it was created with.
    pub definition: Option<Created>,
}

/// Checks a selector: at least one field, each field within its limits, labels as a document's.
pub fn check_selector(selector: &Selector) -> Result<(), String> {
    let Selector { tenant, content_type, name_prefix, labels } = selector;
    check_selector_fields([tenant, content_type, name_prefix], labels)
}

/// Checks the fields of a document selector (a trigger's, a schedule's): at least one, the text ones 1 to
/// [`MAX_TEXT_BYTES`] bytes without control characters, the labels as a document's.
pub fn check_selector_fields(
    fields: [&Option<String>; 3],
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    if fields.iter().all(|f| f.is_none()) && labels.is_empty() {
        return Err("a selector needs at least one field".into());
    }
    crate::document::check_labels(labels)?;
    if fields
        .iter()
        .flat_map(|f| f.as_deref())
        .any(|f| f.trim().is_empty() || f.len() > MAX_TEXT_BYTES || f.chars().any(char::is_control))
    {
        return Err(format!("selector fields must be 1 to {MAX_TEXT_BYTES} bytes, without control characters"));
    }
    Ok(())
}

impl Trigger {
    fn existing(&self) -> Result<(), Rejection> {
        match self.status {
            Status::Uncreated => Err(Rejection::NotCreated),
            Status::Deleted => Err(Rejection::Deleted),
            Status::Active | Status::Paused => Ok(()),
        }
    }
}

impl Aggregate for Trigger {
    const KIND: &'static str = "trigger";
    type Command = Command;
    type Event = Event;
    type Rejection = Rejection;

    fn command_name(command: &Command) -> &'static str {
        command.into()
    }

    fn decide(&self, command: &Command) -> Result<Vec<Event>, Rejection> {
        match command {
            Command::Create { workflow, selector, parameters, priority, on_versions, own_outputs, at } => {
                if self.status != Status::Uncreated {
                    return Err(Rejection::AlreadyCreated);
                }
                check_selector(selector).map_err(Rejection::InvalidSelector)?;
                crate::job::check_parameters(parameters).map_err(|rejection| match rejection {
                    crate::job::Rejection::InvalidParameters(why) => Rejection::InvalidParameters(why),
                    other => Rejection::InvalidParameters(other.to_string()),
                })?;
                Ok(vec![
                    Created {
                        workflow: *workflow,
                        selector: selector.clone(),
                        parameters: parameters.clone(),
                        priority: *priority,
                        on_versions: *on_versions,
                        own_outputs: *own_outputs,
                        at: *at,
                    }
                    .into(),
                ])
            }
            Command::Pause { at } => {
                self.existing()?;
                if self.status == Status::Paused {
                    return Ok(vec![]);
                }
                Ok(vec![Paused { at: *at }.into()])
            }
            Command::Resume { at } => {
                self.existing()?;
                if self.status == Status::Active {
                    return Ok(vec![]);
                }
                Ok(vec![Resumed { at: *at }.into()])
            }
            Command::Delete { at } => {
                self.existing()?;
                Ok(vec![Deleted { at: *at }.into()])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::Created(e) => {
                self.status = Status::Active;
                self.definition = Some(e.clone());
            }
            Event::Paused(_) => self.status = Status::Paused,
            Event::Resumed(_) => self.status = Status::Active,
            Event::Deleted(_) => self.status = Status::Deleted,
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use weft_events::domain::ids::Uuid;

    use super::*;
    use crate::testkit::given;

    fn selector() -> Selector {
        Selector { content_type: Some("text/plain".into()), ..Selector::default() }
    }

    fn create(selector: Selector) -> Command {
        Command::Create {
            workflow: WorkflowId(Uuid::from_u128(3)),
            selector,
            parameters: [("tone".to_owned(), "dry".to_owned())].into(),
            priority: 1,
            on_versions: true,
            own_outputs: false,
            at: Timestamp(5),
        }
    }

    fn created() -> Event {
        Created {
            workflow: WorkflowId(Uuid::from_u128(3)),
            selector: selector(),
            parameters: [("tone".to_owned(), "dry".to_owned())].into(),
            priority: 1,
            on_versions: true,
            own_outputs: false,
            at: Timestamp(5),
        }
        .into()
    }

    #[test]
    fn creating_a_trigger_records_its_definition_once() {
        given::<Trigger>([]).when(create(selector())).then([created()]);
        given::<Trigger>([created()]).when(create(selector())).then_rejected(Rejection::AlreadyCreated);
        assert_eq!(Trigger::replay(&[created()]).status, Status::Active);
    }

    #[test]
    fn a_selector_with_no_field_or_a_bad_one_and_bad_parameters_are_rejected() {
        let bad = |selector: Selector| {
            assert!(
                matches!(Trigger::default().decide(&create(selector.clone())), Err(Rejection::InvalidSelector(_))),
                "{selector:?}"
            );
        };
        bad(Selector::default());
        bad(Selector { name_prefix: Some(" ".into()), ..Selector::default() });
        bad(Selector { content_type: Some("x".repeat(MAX_TEXT_BYTES + 1)), ..Selector::default() });
        bad(Selector { labels: [("bad key".to_owned(), "v".to_owned())].into(), ..Selector::default() });
        let Command::Create { workflow, selector, priority, on_versions, own_outputs, at, .. } = create(selector())
        else {
            unreachable!()
        };
        let parameters = [("bad name".to_owned(), "v".to_owned())].into();
        let command = Command::Create { workflow, selector, parameters, priority, on_versions, own_outputs, at };
        assert!(matches!(Trigger::default().decide(&command), Err(Rejection::InvalidParameters(_))));
    }

    #[test]
    fn pausing_resuming_and_deleting_are_recorded_and_repeats_change_nothing() {
        let paused: Event = Paused { at: Timestamp(6) }.into();
        given::<Trigger>([created()]).when(Command::Pause { at: Timestamp(6) }).then([paused.clone()]);
        given::<Trigger>([created(), paused.clone()]).when(Command::Pause { at: Timestamp(7) }).then([]);
        given::<Trigger>([created(), paused.clone()])
            .when(Command::Resume { at: Timestamp(7) })
            .then([Resumed { at: Timestamp(7) }.into()]);
        given::<Trigger>([created()]).when(Command::Resume { at: Timestamp(7) }).then([]);
        let deleted: Event = Deleted { at: Timestamp(8) }.into();
        given::<Trigger>([created(), paused]).when(Command::Delete { at: Timestamp(8) }).then([deleted.clone()]);
        given::<Trigger>([created(), deleted])
            .when(Command::Resume { at: Timestamp(9) })
            .then_rejected(Rejection::Deleted);
        given::<Trigger>([]).when(Command::Pause { at: Timestamp(9) }).then_rejected(Rejection::NotCreated);
    }
}
