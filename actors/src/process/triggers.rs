//! The trigger process: submits one job for each upload (`document.uploaded`, and `document.version_added`
//! for triggers that fire on versions) that an active trigger's selector matches.
//!
//! **Which triggers.** The triggers are taken as they were at the upload's place in the log, not as they are
//! when the upload is handled: the process notes each trigger's changes by log position as it reads them
//! ([`Process::noticed`]) and keeps that history with its checkpoint, so an upload recorded before a pause
//! fires, one recorded after it does not, and handling an upload again after a crash decides as the first
//! time did.
//!
//! **Exactly one job.** The job's id is derived from the trigger and the upload's event id, and so is the id
//! of the command that submits it: handling the upload again (after a `kill -9` before the checkpoint) sends
//! the same command to the same job, which the host answers with its first outcome or the job refuses as
//! submitted already. The job is the firing's only record: its `correlation_id` is the trigger's id and its
//! idempotency key `trigger/<trigger>/<event>`.
//!
//! **Not on its own outputs.** An agent registers its output with the correlation id of the job it works for
//! (`weft::agents::executor`): a document registered by an agent (owner `agent:<id>`) whose registration's
//! correlation id is the trigger's own is the output of one of its jobs, and fires nothing unless the trigger
//! was created with `own_outputs`. The registration decides, not the upload: an output's upload may be
//! recorded by the storage notification or the upload sweep after a crash, without the job's correlation.
//! (Two triggers that each match the other's outputs still feed one another: each sees the other's jobs'
//! outputs, not its own.)
//!
//! The document's tenant, content type, name and labels are read from the document when the upload is
//! handled; its jobs run for the document's tenant, at the workflow's latest version then. A workflow that
//! is undefined or archived by then fires nothing (logged). Uploads of different documents are handled at
//! once ([`Process::OVERLAP`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weft_events::domain::document::Event as DocumentEvent;
use weft_events::domain::ids::{DocumentId, JobId, TriggerId};
use weft_events::domain::trigger::{Created, Event as TriggerEvent};
use weft_events::{Direction, Envelope, EventStore, Timestamp};

use super::{Gateway, Process, Retry, decode, derived_id, inspect};
use crate::document::{Document, Status as DocumentStatus};
use crate::host::{self, Execute, Metadata};
use crate::job::{self, Job, Rejection as JobRejection};
use crate::workflow::Workflow;

/// A trigger as a change left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// What it was created with.
    pub created: Created,
    /// Whether it fires.
    pub active: bool,
}

/// Each trigger's changes, by the log position of the event that made them: `None` from its deletion on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triggers {
    changes: BTreeMap<TriggerId, BTreeMap<u64, Option<Definition>>>,
}

impl Triggers {
    /// Notes the change `event` (at its log position) makes to its trigger. Noting it again changes nothing.
    fn note(&mut self, trigger: TriggerId, position: u64, event: TriggerEvent) {
        let changes = self.changes.entry(trigger).or_default();
        let before = changes.range(..position).next_back().and_then(|(_, d)| d.clone());
        let after = match (event, before) {
            (TriggerEvent::Created(created), _) => Some(Definition { created, active: true }),
            (TriggerEvent::Paused(_), Some(d)) => Some(Definition { active: false, ..d }),
            (TriggerEvent::Resumed(_), Some(d)) => Some(Definition { active: true, ..d }),
            (TriggerEvent::Deleted(_), _) | (_, None) => None,
        };
        changes.insert(position, after);
    }

    /// The triggers active just before log position `position`.
    pub fn active_at(&self, position: u64) -> Vec<(TriggerId, Definition)> {
        self.changes
            .iter()
            .filter_map(|(id, changes)| {
                let (_, definition) = changes.range(..position).next_back()?;
                definition.clone().filter(|d| d.active).map(|d| (*id, d))
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// See the module doc.
pub struct TriggerProcess<G> {
    gateway: G,
    store: Arc<dyn EventStore>,
    triggers: Rc<RefCell<Triggers>>,
}

impl<G: Gateway> TriggerProcess<G> {
    /// A trigger process sending its commands through `gateway`, reading documents' registrations in `store`.
    pub fn new(gateway: G, store: Arc<dyn EventStore>) -> Self {
        Self { gateway, store, triggers: Rc::default() }
    }

    /// The correlation id of the document's registration: the job whose output it is, for an agent's output.
    async fn registered_for(
        &self,
        stream: &weft_events::StreamName,
    ) -> Result<Option<weft_events::domain::ids::Uuid>, Retry> {
        let first = self.store.read_stream(stream, 1, Direction::Forwards, 1).await;
        let first = first.map_err(|e| Retry(format!("reading {stream}: {e}")))?;
        Ok(first.first().and_then(|event| event.correlation_id))
    }

    /// Submits the job of trigger `id` over `document`, for the upload `event`.
    async fn fire(
        &self,
        id: TriggerId,
        definition: &Definition,
        document: DocumentId,
        tenant: &str,
        event: &Envelope,
    ) -> Result<(), Retry> {
        let workflow_id = definition.created.workflow;
        let workflow = inspect::<Workflow, _>(&self.gateway, &workflow_id.stream()).await?;
        if workflow.version == 0 || workflow.archived || workflow.deleted {
            tracing::warn!(trigger = %id, workflow = %workflow_id, %document,
                "the trigger's workflow is not defined, archived or deleted; the upload fires nothing");
            return Ok(());
        }
        let job = JobId(derived_id(id.0, &format!("job/{}", event.event_id)));
        let submit = job::Command::Submit {
            workflow: workflow_id,
            workflow_version: workflow.version,
            steps: workflow.steps.clone(),
            inputs: vec![document],
            priority: definition.created.priority,
            idempotency_key: Some(format!("trigger/{id}/{}", event.event_id)),
            parameters: definition.created.parameters.clone(),
            input_versions: Default::default(),
            replay_of: None,
            at: Timestamp::now(),
        };
        let metadata = Metadata {
            tenant: Some(tenant.to_owned()),
            actor: Some(format!("system:{}", Self::NAME)),
            correlation_id: Some(id.0),
            owner: None,
        };
        let execute = Execute::<Job> {
            command_id: derived_id(job.0, "submit"),
            command: submit,
            expected_version: None,
            metadata,
        };
        match self.gateway.execute(&job.stream(), execute).await {
            Ok(_) | Err(host::Error::Rejected(JobRejection::AlreadySubmitted)) => Ok(()),
            Err(host::Error::Rejected(rejection)) => {
                tracing::warn!(trigger = %id, %job, %rejection, "a trigger's job was refused");
                Ok(())
            }
            Err(e) => Err(Retry(format!("{}: {e}", job.stream()))),
        }
    }
}

/// Whether `event_type` is an upload a trigger may fire on.
fn is_upload(event_type: &str) -> bool {
    matches!(event_type, "document.uploaded" | "document.version_added")
}

#[async_trait::async_trait(?Send)]
impl<G: Gateway> Process for TriggerProcess<G> {
    const NAME: &'static str = "triggers";
    type State = Triggers;
    const OVERLAP: usize = 256;

    fn noticed(&self, event: &Envelope) {
        if !event.event_type.starts_with("trigger.") {
            return;
        }
        let (Some(trigger), Some(decoded)) = (TriggerId::from_stream(&event.stream), decode::<TriggerEvent>(event))
        else {
            return;
        };
        self.triggers.borrow_mut().note(trigger, event.position, decoded);
    }

    fn instance(&self, event: &Envelope) -> Option<String> {
        (is_upload(&event.event_type) && !self.triggers.borrow().is_empty()).then(|| event.stream.as_str().to_owned())
    }

    fn kept(&self) -> Option<Triggers> {
        Some(self.triggers.borrow().clone())
    }

    async fn resume(&self, triggers: &mut Triggers) -> Result<(), Retry> {
        *self.triggers.borrow_mut() = triggers.clone();
        Ok(())
    }

    fn traced(&self, event: &Envelope) -> bool {
        matches!(&*event.event_type, "document.uploaded" | "document.version_added")
    }

    async fn handle(&self, _fresh: &mut Triggers, event: &Envelope) -> Result<(), Retry> {
        let Some(document) = DocumentId::from_stream(&event.stream) else { return Ok(()) };
        let version = match decode::<DocumentEvent>(event) {
            Some(DocumentEvent::Uploaded(_)) => false,
            Some(DocumentEvent::VersionAdded(_)) => true,
            _ => return Ok(()),
        };
        let candidates: Vec<_> = self
            .triggers
            .borrow()
            .active_at(event.position)
            .into_iter()
            .filter(|(_, d)| !version || d.created.on_versions)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let state = inspect::<Document, _>(&self.gateway, &event.stream).await?;
        // Weft's own records (a provider call's, labelled `weft.*`) set off nothing.
        if state.status != DocumentStatus::Uploaded || state.labels.keys().any(|key| key.starts_with("weft.")) {
            return Ok(());
        }
        let output_of = match state.owner.starts_with("agent:") {
            true if candidates.iter().any(|(_, d)| !d.created.own_outputs) => {
                self.registered_for(&event.stream).await?
            }
            _ => None,
        };
        for (id, definition) in candidates {
            let own = output_of == Some(id.0) && !definition.created.own_outputs;
            if !own
                && definition.created.selector.matches(&state.tenant, &state.content_type, &state.name, &state.labels)
            {
                self.fire(id, &definition, document, &state.tenant, event).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weft_events::domain::ids::{Uuid, WorkflowId};
    use weft_events::domain::trigger::{Deleted, Paused, Resumed, Selector};

    use super::*;

    fn created() -> Created {
        Created {
            workflow: WorkflowId(Uuid::from_u128(1)),
            selector: Selector { content_type: Some("text/plain".into()), ..Selector::default() },
            parameters: BTreeMap::new(),
            priority: 0,
            on_versions: true,
            own_outputs: false,
            at: Timestamp(1),
        }
    }

    #[test]
    fn triggers_are_taken_as_they_were_at_the_uploads_place_in_the_log() {
        let (one, two) = (TriggerId(Uuid::from_u128(1)), TriggerId(Uuid::from_u128(2)));
        let mut triggers = Triggers::default();
        triggers.note(one, 10, created().into());
        triggers.note(one, 20, Paused { at: Timestamp(2) }.into());
        triggers.note(two, 25, created().into());
        triggers.note(one, 30, Resumed { at: Timestamp(3) }.into());
        triggers.note(two, 40, Deleted { at: Timestamp(4) }.into());
        let active = |position| triggers.active_at(position).into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(active(10), vec![]);
        assert_eq!(active(11), vec![one]);
        assert_eq!(active(21), vec![]);
        assert_eq!(active(26), vec![two]);
        assert_eq!(active(31), vec![one, two]);
        assert_eq!(active(41), vec![one]);
        // Noting a change again (after a restart from an earlier checkpoint) changes nothing, also when later
        // changes are noted already.
        let before = triggers.clone();
        triggers.note(one, 20, Paused { at: Timestamp(2) }.into());
        triggers.note(one, 30, Resumed { at: Timestamp(3) }.into());
        assert_eq!(triggers, before);
    }
}
