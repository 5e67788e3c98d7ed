//! Command intake: one bus service per aggregate type, in queue group `weft` so that several nodes share
//! the load. Each decodes and checks a command (see [`crate::protocol`]), runs it on the local actor host and
//! replies. Bad input gets an `invalid` reply and never reaches an aggregate; nothing in here panics on input.
//!
//! A job's `submit` is checked against the workflow it names before the job sees it (`Workflows`): the
//! job runs that version's steps, taken from the workflow when the submission sends none, and a submission of
//! a version never defined, or of other steps, is rejected (`unknown_workflow`, `steps_differ`), as is one of
//! an archived workflow (`workflow_archived`: the workflow's stream version is read on every submission, so
//! an archive on any node holds for the next one). A submission naming no tenant (from a caller of every
//! tenant) is for its first input document's tenant.
//!
//! A workflow's `delete` is checked against the jobs read model (`RunningJobs`, once it has applied the store's
//! head): refused (`jobs_running`) while a job of the workflow has not ended. The workflow must be archived
//! first, so no new job starts it meanwhile (a submission checked just before the archive and stored just after
//! the count is the one gap: such a job still runs, on the steps it carries).
//!
//! A trigger's `create` is checked the same way: its workflow must be defined and not archived
//! (`unknown_workflow`, `workflow_archived`).
//!
//! A document's `mark_uploaded` and `add_version` are checked against the object store when the node has one
//! (`Uploads`): the size and etag a client claims must be what storage holds under the document's key (a new
//! version's: the key it names, which must be one of the document's version objects).
//! Otherwise the command is rejected (`invalid`, naming what storage holds) and nothing is recorded. Weft's
//! own object-storage handling and agents check storage themselves, on the node that holds the object.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::future::LocalBoxFuture;
use tokio::sync::Semaphore;
use weft_actors::Aggregate;
use weft_actors::document::{self, Document};
use weft_actors::host::{self, Execute, Host};
use weft_actors::job::{self, Job};
use weft_actors::process::Hosts;
use weft_actors::trigger::{self, Trigger};
use weft_actors::workflow::{self, Workflow};
use weft_events::domain::ids::{DocumentId, WorkflowId};
use weft_events::domain::workflow::{Event as WorkflowEvent, Step};
use weft_events::{EventStore, Health, StreamName};

pub mod caller;

use self::caller::Confined;
use crate::auth::token::Verifier;
use crate::bus::{Bus, BusError, CONTENT_TYPE, Headers, JSON, Message, Subscription};
use crate::objects::ObjectStore;
use crate::protocol::{self, BodyLimits, Reply};

/// Options of the intake.
#[derive(Debug, Clone)]
pub struct IntakeOptions {
    /// Limits on command bodies.
    pub limits: BodyLimits,
    /// The queue group the services join.
    pub queue_group: String,
    /// Most commands being handled at once on this node; past it the node stops taking commands off the bus
    /// until some finish (NATS then holds them, or drops them for a slow consumer and the clients retry).
    pub max_in_flight: usize,
    /// The verifier of callers' tokens; `None`: no authentication (see [`caller`]).
    pub verifier: Option<Arc<Verifier>>,
    /// Where a workflow's deletion learns how many jobs still run it; `None`: deletions are refused as
    /// `unavailable` (a node without read models cannot tell).
    pub running_jobs: Option<Arc<dyn RunningJobs>>,
    /// With partition routing, where the router hands each service the commands of the partitions this node
    /// holds (`crate::cluster::routing`) instead of the service subscribing to its aggregate's subjects.
    pub inboxes: Option<crate::cluster::routing::Inboxes>,
}

/// How many jobs run a workflow, as of everything stored when asked (the jobs read model, once it has
/// applied the store's head).
#[async_trait::async_trait]
pub trait RunningJobs: Send + Sync {
    /// The jobs of `workflow` that have not ended.
    async fn running(&self, workflow: WorkflowId) -> Result<u64, String>;
}

impl std::fmt::Debug for dyn RunningJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunningJobs")
    }
}

impl Default for IntakeOptions {
    fn default() -> Self {
        Self {
            limits: BodyLimits::default(),
            queue_group: protocol::QUEUE_GROUP.into(),
            max_in_flight: 4096,
            verifier: None,
            running_jobs: None,
            inboxes: None,
        }
    }
}

/// The running services; dropping it unsubscribes them (commands being handled still get their replies).
pub struct Intake {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    handled: Arc<AtomicU64>,
    health: Vec<(String, Health)>,
}

impl Intake {
    /// Subscribes a service per aggregate type and serves commands until stopped. Must be called on an actix
    /// system: the hosts start actors on it.
    pub async fn start(bus: Arc<dyn Bus>, hosts: Hosts, options: IntakeOptions) -> Result<Self, BusError> {
        Self::start_with_objects(bus, hosts, options, None).await
    }

    /// [`Intake::start`], checking documents' uploads against `objects` (see the module doc).
    pub async fn start_with_objects(
        bus: Arc<dyn Bus>,
        hosts: Hosts,
        options: IntakeOptions,
        objects: Option<Arc<dyn ObjectStore>>,
    ) -> Result<Self, BusError> {
        let handled = Arc::new(AtomicU64::new(0));
        let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
        let shared = Shared { handled: handled.clone(), slots };
        let workflows = Workflows::new(hosts.job.store().clone());
        let deletions = Deletions { store: hosts.workflow.store().clone(), running_jobs: options.running_jobs.clone() };
        let services = vec![
            match objects {
                Some(objects) => {
                    let uploads = Uploads { store: hosts.document.store().clone(), objects };
                    serve(bus.clone(), hosts.document, uploads, &options, shared.clone()).await?
                }
                None => serve(bus.clone(), hosts.document, AsIs, &options, shared.clone()).await?,
            },
            serve(bus.clone(), hosts.workflow, deletions, &options, shared.clone()).await?,
            serve(bus.clone(), hosts.job, workflows.clone(), &options, shared.clone()).await?,
            serve(bus.clone(), hosts.agent, AsIs, &options, shared.clone()).await?,
            serve(bus.clone(), hosts.schedule, AsIs, &options, shared.clone()).await?,
            serve(bus.clone(), hosts.trigger, workflows.clone(), &options, shared).await?,
        ];
        // A round trip, not a flush: when it returns the server has the subscriptions, so a command sent
        // from now on finds the services (a flush only writes them to the socket, and a command sent right
        // after could be answered `no responders`).
        bus.confirm().await?;
        let (tasks, health) = services.into_iter().map(|(task, name, health)| (task, (name, health))).unzip();
        Ok(Self { tasks, handled, health })
    }

    /// Each service's name (`commands <aggregate>`) and health: running while it takes commands off the bus,
    /// stopped if its subscription ended (the connection gone for good).
    pub fn health(&self) -> &[(String, Health)] {
        &self.health
    }

    /// Commands this node has taken off the bus so far.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Unsubscribes the services and waits until they are gone, so that a bus flush after it has the server
    /// know: no command is routed to this intake any more (a dropped one may still be, briefly, and such a
    /// command is lost until its sender retries).
    pub async fn stop(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the services of one node share.
#[derive(Clone)]
struct Shared {
    handled: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
}

/// What the intake does with a decoded command before its host runs it: checks it against the state of other
/// aggregates, or completes it from there.
trait Prepare<A: Aggregate>: Clone + 'static {
    fn prepare(
        &self,
        stream: &StreamName,
        execute: Execute<A>,
    ) -> LocalBoxFuture<'static, Result<Execute<A>, host::Error<A::Rejection>>>;
}

/// Commands run as they came.
#[derive(Clone)]
struct AsIs;

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
struct Workflows {
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
    fn new(store: Arc<dyn EventStore>) -> Self {
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
struct Deletions {
    store: Arc<dyn EventStore>,
    running_jobs: Option<Arc<dyn RunningJobs>>,
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
struct Uploads {
    store: Arc<dyn EventStore>,
    objects: Arc<dyn ObjectStore>,
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

async fn serve<A: Confined, P: Prepare<A>>(
    bus: Arc<dyn Bus>,
    host: Host<A>,
    prepare: P,
    options: &IntakeOptions,
    shared: Shared,
) -> Result<(tokio::task::JoinHandle<()>, String, Health), BusError> {
    let inboxes = options.inboxes.clone();
    let subscription: Subscription = match inboxes.as_ref().and_then(|i| i.take(A::KIND)) {
        Some(inbox) => {
            futures::stream::unfold(inbox, |mut inbox| async { inbox.recv().await.map(|m| (m, inbox)) }).boxed()
        }
        None => {
            let subject = format!("{}.{}.*", protocol::COMMANDS, A::KIND);
            bus.subscribe(&subject, Some(&options.queue_group)).await?
        }
    };
    let (limits, verifier) = (options.limits, options.verifier.clone());
    let health = Health::default();
    health.running();
    let watched = health.clone();
    let task = actix_rt::spawn(async move {
        let mut subscription = subscription;
        let _stopped = crate::health::StoppedOnDrop(watched);
        while let Some(message) = subscription.next().await {
            shared.handled.fetch_add(1, Ordering::Relaxed);
            let Ok(slot) = shared.slots.clone().acquire_owned().await else { return };
            let (bus, host, prepare, verifier) = (bus.clone(), host.clone(), prepare.clone(), verifier.clone());
            let inboxes = inboxes.clone();
            actix_rt::spawn(async move {
                let subject = message.subject.clone();
                handle(message, bus, host, prepare, limits, verifier).await;
                if let Some(inboxes) = inboxes {
                    inboxes.answered(&subject);
                }
                drop(slot);
            });
        }
        tracing::error!(
            aggregate = A::KIND,
            "the command service's subscription ended; restart the node to serve it again"
        );
    });
    Ok((task, format!("commands {}", A::KIND), health))
}

/// Handles one command, within the trace context its message carries (W3C `traceparent`, see
/// [`crate::telemetry::traces`]): the host's `command` span joins it.
async fn handle<A: Confined, P: Prepare<A>>(
    message: Message,
    bus: Arc<dyn Bus>,
    host: Host<A>,
    prepare: P,
    limits: BodyLimits,
    verifier: Option<Arc<Verifier>>,
) {
    let context = crate::telemetry::traces::extract(&message.headers);
    let handling = async move {
        let Some(reply_to) = message.reply.clone() else {
            tracing::debug!(subject = %message.subject, "a command without a reply subject; dropped");
            return;
        };
        let json = message.is_json();
        let reply: Reply<A::Rejection> = match decode(&message, json, limits, verifier.as_deref()).await {
            Err(refused) => {
                let (kind, why) = refused.error.as_ref().map_or((None, ""), |e| (Some(e.kind), e.message.as_str()));
                match kind {
                    Some(protocol::ErrorKind::Unauthenticated) => {
                        crate::telemetry::metrics::denied("nats", "unauthenticated")
                    }
                    Some(protocol::ErrorKind::Forbidden) => crate::telemetry::metrics::denied("nats", "forbidden"),
                    Some(protocol::ErrorKind::Unavailable)
                        if refused.error.as_ref().is_some_and(|e| e.retry_after_ms.is_some()) =>
                    {
                        crate::telemetry::metrics::denied("nats", "rate_limited")
                    }
                    _ => {}
                }
                if kind == Some(protocol::ErrorKind::Invalid) {
                    tracing::debug!(subject = %message.subject, %why, "an invalid command");
                } else {
                    tracing::debug!(subject = %message.subject, %why, "a command refused: {kind:?}");
                }
                refused
            }
            Ok((stream, execute)) => match prepare.prepare(&stream, execute).await {
                Ok(execute) => Reply::from_host(host.execute(&stream, execute).await),
                Err(error) => Reply::from_host(Err(error)),
            },
        };
        let mut headers = Headers::new();
        if json {
            headers.insert(CONTENT_TYPE.into(), JSON.into());
        }
        let answer =
            Message { subject: reply_to, reply: None, headers, payload: protocol::encode(&reply, json).into() };
        if let Err(error) = bus.publish(answer).await {
            tracing::warn!(subject = %message.subject, %error, "replying to a command failed");
        }
    };
    crate::telemetry::traces::within(context, handling).await
}

/// Decodes a command and checks its caller (see [`caller`]); the error is the reply refusing it.
async fn decode<A: Confined>(
    message: &Message,
    json: bool,
    limits: BodyLimits,
    verifier: Option<&Verifier>,
) -> Result<(StreamName, Execute<A>), Reply<A::Rejection>> {
    let identity = caller::identify::<A>(&message.headers, verifier).await?;
    let mut decoded =
        protocol::decode_command::<A>(&message.subject, &message.payload, json, limits).map_err(Reply::invalid)?;
    let mut metadata =
        caller::metadata::<A>(&message.headers, &decoded.kind, &mut decoded.command, verifier, identity)?;
    // A caller's trace that names no flow is the flow: the command's events carry its trace id as their
    // correlation id, and everything they set off joins the caller's trace.
    if metadata.correlation_id.is_none() {
        metadata.correlation_id = crate::telemetry::traces::trace_of(&message.headers);
    }
    let execute = Execute {
        command_id: decoded.command_id,
        command: decoded.command,
        expected_version: decoded.expected_version,
        metadata,
    };
    Ok((decoded.stream, execute))
}
