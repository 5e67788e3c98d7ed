//! What the intake does with a decoded command before its host runs it (see the module doc of
//! [`super`]): a job's submission and a trigger's creation checked against their workflow, a workflow's
//! deletion against the jobs still running it, an upload's record against the object store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::LocalBoxFuture;
use weft_actors::Aggregate;
use weft_actors::document::{self, Document};
use weft_actors::host::{self, Execute};
use weft_actors::job::{self, Job};
use weft_actors::trigger::{self, Trigger};
use weft_actors::workflow::{self, Workflow};
use weft_events::domain::ids::{DocumentId, WorkflowId};
use weft_events::domain::workflow::{Event as WorkflowEvent, Step};
use weft_events::{EventStore, StreamName};

use super::RunningJobs;
use crate::objects::ObjectStore;

/// What the intake does with a decoded command before its host runs it: checks it against the state of other
/// aggregates, or completes it from there.
pub(super) trait Prepare<A: Aggregate>: Clone + 'static {
    fn prepare(
        &self,
        stream: &StreamName,
        execute: Execute<A>,
    ) -> LocalBoxFuture<'static, Result<Execute<A>, host::Error<A::Rejection>>>;
}

/// Commands run as they came.
#[derive(Clone)]
pub(super) struct AsIs;

impl<A: Aggregate> Prepare<A> for AsIs {
    fn prepare(
        &self,
        _: &StreamName,
        execute: Execute<A>,
    ) -> LocalBoxFuture<'static, Result<Execute<A>, host::Error<A::Rejection>>> {
        Box::pin(futures::future::ready(Ok(execute)))
    }
}

/// Whether the intake runs `execute` as it came: nothing in it is checked against, or completed from, other
/// aggregates' state or the object store. A node's own process managers run such commands on the node's
/// hosts directly (`crate::gateway`); the rest go through an intake, which prepares them.
pub(crate) fn runs_as_is<A: Aggregate>(execute: &Execute<A>) -> bool {
    let command: &dyn std::any::Any = &execute.command;
    match A::KIND {
        weft_actors::agent::Agent::KIND | weft_actors::schedule::Schedule::KIND => true,
        Workflow::KIND => {
            command.downcast_ref::<workflow::Command>().is_some_and(|c| !matches!(c, workflow::Command::Delete { .. }))
        }
        Job::KIND => command.downcast_ref::<job::Command>().is_some_and(|c| !matches!(c, job::Command::Submit { .. })),
        Trigger::KIND => {
            command.downcast_ref::<trigger::Command>().is_some_and(|c| !matches!(c, trigger::Command::Create { .. }))
        }
        Document::KIND => command.downcast_ref::<document::Command>().is_some_and(|c| {
            !matches!(c, document::Command::MarkUploaded { .. } | document::Command::AddVersion { .. })
                || own_component(&execute.metadata)
        }),
        _ => false,
    }
}

/// Whether a command comes from Weft's own components that head storage themselves before they send an
/// upload's record (the object-storage handling, an agent writing its output), on the node that holds the
/// object: a node's local folder is its own, so another node's intake must not judge them by its folder.
/// (With authentication on, only the node's own token may name such an actor; without it, the actor is
/// what the sender says.)
fn own_component(metadata: &host::Metadata) -> bool {
    metadata
        .actor
        .as_deref()
        .is_some_and(|actor| actor == crate::objects::documents::STORAGE_ACTOR || actor.starts_with("agent:"))
}

/// Workflows kept in memory. Past this many the memory is cleared.
const KNOWN_WORKFLOWS: usize = 4096;

/// Checks a job's submission against the workflow version it names, read from the store (see the module doc).
#[derive(Clone)]
pub(super) struct Workflows {
    store: Arc<dyn EventStore>,
    known: Arc<Mutex<Known>>,
}

/// What is known of a workflow, as of a version of its stream.
struct KnownWorkflow {
    /// The stream's version this was read at.
    read_at: u64,
    /// Whether it was archived then.
    archived: bool,
    /// Whether it was deleted then.
    deleted: bool,
    /// The steps of each version defined then (a defined version never changes).
    versions: HashMap<u32, Arc<Vec<Step>>>,
}

/// Workflows by id.
type Known = HashMap<WorkflowId, Arc<KnownWorkflow>>;

impl Workflows {
    pub(super) fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, known: Arc::default() }
    }

    /// The workflow as it is now: the stream's version is read on every call (an archive on any node is seen
    /// by the next submission), its events only when that version moved.
    async fn current(&self, workflow: WorkflowId) -> Result<Arc<KnownWorkflow>, String> {
        let stream = workflow.stream();
        let now = self.store.stream_version(&stream).await.map_err(|e| e.to_string())?;
        if let Some(known) = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(&workflow)
            && known.read_at == now
        {
            return Ok(known.clone());
        }
        let events = host::load_events::<Workflow>(&*self.store, &stream).await?;
        let mut read =
            KnownWorkflow { read_at: events.len() as u64, archived: false, deleted: false, versions: HashMap::new() };
        for event in events {
            match event {
                WorkflowEvent::Defined(defined) => {
                    read.versions.insert(defined.version, Arc::new(defined.steps));
                }
                WorkflowEvent::Archived(_) => read.archived = true,
                WorkflowEvent::Restored(_) => read.archived = false,
                WorkflowEvent::Deleted(_) => read.deleted = true,
            }
        }
        let read = Arc::new(read);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= KNOWN_WORKFLOWS {
            known.clear();
        }
        known.insert(workflow, read.clone());
        Ok(read)
    }
}

impl Prepare<Job> for Workflows {
    fn prepare(
        &self,
        _: &StreamName,
        mut execute: Execute<Job>,
    ) -> LocalBoxFuture<'static, Result<Execute<Job>, host::Error<job::Rejection>>> {
        let workflows = self.clone();
        Box::pin(async move {
            let job::Command::Submit { workflow, workflow_version, steps, inputs, .. } = &mut execute.command else {
                return Ok(execute);
            };
            // A job whose caller named no tenant (one of every tenant) is its first input's tenant's: a job
            // reads only documents of its own tenant (`crate::agents::executor`).
            if execute.metadata.tenant.is_none()
                && let Some(first) = inputs.first()
            {
                let (input, _) = host::load_state::<Document>(&*workflows.store, &first.stream())
                    .await
                    .map_err(|e| host::Error::Unavailable(format!("reading input {first}: {e}")))?;
                if input.status != document::Status::Unregistered {
                    execute.metadata.tenant = Some(input.tenant);
                }
            }
            let (workflow, version) = (*workflow, *workflow_version);
            if workflow == WorkflowId::ONE_OFF {
                // A one-off request: its one step comes with it (the job aggregate checks the step itself).
                let rejected = match (version, steps.len()) {
                    (0, 1) => return Ok(execute),
                    (0, 0) => job::Rejection::InvalidWorkflow(workflow::Rejection::NoSteps),
                    (0, count) => {
                        job::Rejection::InvalidWorkflow(workflow::Rejection::TooManySteps { count, limit: 1 })
                    }
                    _ => job::Rejection::UnknownWorkflow { workflow, version },
                };
                return Err(host::Error::Rejected(rejected));
            }
            let known = workflows.current(workflow).await.map_err(host::Error::Unavailable)?;
            if known.deleted {
                return Err(host::Error::Rejected(job::Rejection::UnknownWorkflow { workflow, version }));
            }
            if known.archived {
                return Err(host::Error::Rejected(job::Rejection::WorkflowArchived(workflow)));
            }
            match known.versions.get(&version) {
                None => Err(host::Error::Rejected(job::Rejection::UnknownWorkflow { workflow, version })),
                Some(defined) if steps.is_empty() => {
                    *steps = defined.as_ref().clone();
                    Ok(execute)
                }
                Some(defined) if *steps == **defined => Ok(execute),
                Some(_) => Err(host::Error::Rejected(job::Rejection::StepsDiffer { workflow, version })),
            }
        })
    }
}

impl Prepare<Trigger> for Workflows {
    /// A trigger is created for a workflow that is defined and not archived.
    fn prepare(
        &self,
        _: &StreamName,
        execute: Execute<Trigger>,
    ) -> LocalBoxFuture<'static, Result<Execute<Trigger>, host::Error<trigger::Rejection>>> {
        let workflows = self.clone();
        Box::pin(async move {
            let trigger::Command::Create { workflow, .. } = &execute.command else { return Ok(execute) };
            let workflow = *workflow;
            let known = workflows.current(workflow).await.map_err(host::Error::Unavailable)?;
            if known.versions.is_empty() || known.deleted {
                return Err(host::Error::Rejected(trigger::Rejection::UnknownWorkflow(workflow)));
            }
            if known.archived {
                return Err(host::Error::Rejected(trigger::Rejection::WorkflowArchived(workflow)));
            }
            Ok(execute)
        })
    }
}

/// A workflow's deletion, checked against the jobs that still run it: refused while any does.
#[derive(Clone)]
pub(super) struct Deletions {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) running_jobs: Option<Arc<dyn RunningJobs>>,
}

impl Prepare<Workflow> for Deletions {
    fn prepare(
        &self,
        stream: &StreamName,
        execute: Execute<Workflow>,
    ) -> LocalBoxFuture<'static, Result<Execute<Workflow>, host::Error<workflow::Rejection>>> {
        let (store, running_jobs, stream) = (self.store.clone(), self.running_jobs.clone(), stream.clone());
        Box::pin(async move {
            if !matches!(execute.command, workflow::Command::Delete { .. }) {
                return Ok(execute);
            }
            let Some(workflow) = WorkflowId::from_stream(&stream) else { return Ok(execute) };
            // What the workflow refuses by itself (not defined, not archived, deleted already) it refuses with
            // its own reason.
            let (state, _) = host::load_state::<Workflow>(&*store, &stream).await?;
            if state.version == 0 || !state.archived || state.deleted {
                return Ok(execute);
            }
            let Some(running_jobs) = running_jobs else {
                return Err(host::Error::Unavailable(
                    "this node keeps no jobs read model to count running jobs".into(),
                ));
            };
            match running_jobs.running(workflow).await.map_err(host::Error::Unavailable)? {
                0 => Ok(execute),
                running => Err(host::Error::Rejected(workflow::Rejection::JobsRunning { running })),
            }
        })
    }
}

/// Checks what a document's upload commands claim against the object store (see the module doc).
#[derive(Clone)]
pub(super) struct Uploads {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) objects: Arc<dyn ObjectStore>,
}

impl Prepare<Document> for Uploads {
    fn prepare(
        &self,
        stream: &StreamName,
        execute: Execute<Document>,
    ) -> LocalBoxFuture<'static, Result<Execute<Document>, host::Error<document::Rejection>>> {
        let (store, objects, stream) = (self.store.clone(), self.objects.clone(), stream.clone());
        Box::pin(async move {
            let (size, etag, version_key) = match &execute.command {
                document::Command::MarkUploaded { size_bytes, etag, .. } => (*size_bytes, etag.clone(), None),
                document::Command::AddVersion { size_bytes, etag, key, .. } => (*size_bytes, etag.clone(), key.clone()),
                _ => return Ok(execute),
            };
            if own_component(&execute.metadata) {
                return Ok(execute);
            }
            let (state, _) = host::load_state::<Document>(&*store, &stream).await?;
            // What the document refuses by itself (not registered, deleted, over the declared size) it refuses
            // with its own reason; a repeat of what it recorded changes nothing.
            let own = matches!(state.status, document::Status::Unregistered | document::Status::Deleted)
                || size > state.declared_size_bytes
                || (state.status == document::Status::Uploaded && state.size_bytes == size && state.etag == etag);
            let Some(id) = DocumentId::from_stream(&stream).filter(|_| !own) else { return Ok(execute) };
            let key = match version_key {
                // A new version's object: one of this document's, as its upload URL named it.
                Some(key) => {
                    let ours = crate::objects::is_version_key(&key)
                        && crate::objects::parse_document_key(&key) == Some((state.tenant.as_str(), id));
                    if !ours {
                        let reason = format!("{key:?} is not a version's object of document {id}");
                        return Err(host::Error::Rejected(document::Rejection::Invalid {
                            field: "key".into(),
                            reason,
                        }));
                    }
                    key
                }
                None => crate::objects::document_key(&state.tenant, id),
            };
            let refused =
                |reason: String| host::Error::Rejected(document::Rejection::Invalid { field: "etag".into(), reason });
            match objects.head(&key).await {
                Ok(info) if info.size_bytes == size && info.etag == etag => Ok(execute),
                Ok(info) => Err(refused(format!(
                    "storage holds {} bytes with etag {:?} under {key}, not {size} bytes with etag {etag:?}",
                    info.size_bytes, info.etag
                ))),
                Err(crate::objects::Error::NotFound { .. }) => {
                    Err(refused(format!("storage holds no object under {key}: upload it first")))
                }
                Err(e) => Err(host::Error::Unavailable(e.to_string())),
            }
        })
    }
}
