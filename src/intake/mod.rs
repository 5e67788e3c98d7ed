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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use tokio::sync::Semaphore;
use weft_actors::host::{Execute, Host};
use weft_actors::process::Hosts;
use weft_events::domain::ids::WorkflowId;
use weft_events::{Health, StreamName};

pub mod caller;
mod prepare;

pub(crate) use self::prepare::runs_as_is;
use self::prepare::{AsIs, Deletions, Prepare, Uploads, Workflows};

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
