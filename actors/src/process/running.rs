//! The process managers of a node, started and stopped together ([`Processes`]).

use std::sync::Arc;

use weft_events::domain::ids::AgentId;
use weft_events::{EventStore, Health};

use weft_events::Partition;

use super::{Gateway, Lines, RunOptions, Running, orchestrator, start, start_in, timers, triggers, worker};

/// Which process managers a set runs, over which events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// All of them over the whole log: a node alone, or the one node that runs them for nodes sharing a store.
    Whole,
    /// The orchestrator, the worker and the timers over one partition's events: what the owner of the
    /// partition runs when nodes share the work by partition.
    Partition(Partition),
    /// What reads the whole log whichever partitions a node holds (the trigger process: a trigger matches
    /// uploads of every partition), run by one node at a time beside the partitions' sets.
    Shared,
}

/// The orchestrator, the worker (when there is an executor), the trigger process and the timer service, running
/// together.
pub struct Processes {
    running: Vec<(&'static str, Running)>,
    lines: Lines,
}

impl Processes {
    /// Starts them over `store`, sending commands through `gateway`, with `executor` doing the tasks; without
    /// an executor there is no worker (tasks wait for a node that has one, or time out). Must be called on an
    /// actix system. Schedules over a document selector need a [`timers::Select`]: see [`Self::with_select`].
    pub fn start<G: Gateway>(
        gateway: G,
        store: Arc<dyn EventStore>,
        executor: Option<std::rc::Rc<dyn worker::Executor>>,
        options: RunOptions,
    ) -> Self {
        Self::with_select(gateway, store, executor, None, options)
    }

    /// As [`Self::start`], with the timers selecting documents for schedules through `select`.
    pub fn with_select<G: Gateway>(
        gateway: G,
        store: Arc<dyn EventStore>,
        executor: Option<std::rc::Rc<dyn worker::Executor>>,
        select: Option<std::rc::Rc<dyn timers::Select>>,
        options: RunOptions,
    ) -> Self {
        Self::of(Scope::Whole, gateway, store, executor, select, options, Lines::default())
    }

    /// The processes of `scope`, as [`Self::with_select`]; the orchestrator's steps waiting for busy agents
    /// join `lines`, which the orchestrators of one node share (one per partition it holds).
    pub fn of<G: Gateway>(
        scope: Scope,
        gateway: G,
        store: Arc<dyn EventStore>,
        executor: Option<std::rc::Rc<dyn worker::Executor>>,
        select: Option<std::rc::Rc<dyn timers::Select>>,
        options: RunOptions,
        lines: Lines,
    ) -> Self {
        let partition = match scope {
            Scope::Partition(partition) => Some(partition),
            Scope::Whole | Scope::Shared => None,
        };
        let mut running = Vec::new();
        if scope != Scope::Shared {
            let orchestrator = orchestrator::Orchestrator::new(gateway.clone(), lines.clone());
            running.push(("orchestrator", start_in(orchestrator, store.clone(), options.clone(), partition)));
            if let Some(executor) = executor {
                let worker = worker::Worker::new(gateway.clone(), executor);
                running.push(("worker", start_in(worker, store.clone(), options.clone(), partition)));
            }
        }
        if !matches!(scope, Scope::Partition(_)) {
            let triggers = triggers::TriggerProcess::new(gateway.clone(), store.clone());
            running.push(("triggers", start(triggers, store.clone(), options.clone())));
        }
        if scope != Scope::Shared {
            let timers = timers::TimerService::new(gateway, select);
            running.push(("timers", start_in(timers, store, options, partition)));
        }
        Self { running, lines }
    }

    /// How many steps wait on this node for a slot of a busy agent, by agent.
    pub fn waiting(&self) -> Vec<(AgentId, usize)> {
        self.lines.waiting()
    }

    /// Each one's name and health.
    pub fn health(&self) -> Vec<(&'static str, Health)> {
        self.running.iter().map(|(name, running)| (*name, running.health())).collect()
    }

    /// Stops them all, saving their checkpoints; the first error, if any.
    pub async fn stop(self) -> Result<(), String> {
        let mut result = Ok(());
        for (name, running) in self.running {
            if let Err(e) = running.stop().await {
                result = result.and(Err(format!("{name}: {e}")));
            }
        }
        result
    }
}
