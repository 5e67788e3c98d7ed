//! The process managers of a node, started and stopped together ([`Processes`]).

use std::sync::Arc;

use weft_events::domain::ids::AgentId;
use weft_events::{EventStore, Health};

use super::{Gateway, Lines, RunOptions, Running, orchestrator, start, timers, triggers, worker};

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
        let lines = Lines::default();
        let mut running = vec![(
            "orchestrator",
            start(orchestrator::Orchestrator::new(gateway.clone(), lines.clone()), store.clone(), options.clone()),
        )];
        if let Some(executor) = executor {
            running.push((
                "worker",
                start(worker::Worker::new(gateway.clone(), executor), store.clone(), options.clone()),
            ));
        }
        running.push((
            "triggers",
            start(triggers::TriggerProcess::new(gateway.clone(), store.clone()), store.clone(), options.clone()),
        ));
        running.push(("timers", start(timers::TimerService::new(gateway, select), store, options)));
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
