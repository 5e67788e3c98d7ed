//! The process managers and the publisher of a node: run always (its own store), under the lease of
//! `crate::lease` (nodes sharing a JetStream store run them one at a time), or not at all.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use weft_actors::process::worker::Executor;
use weft_actors::process::{self, Processes, RunOptions, Running};

use crate::gateway::BusGateway;
use crate::health::Board;
use crate::lease::Lease;
use crate::publisher::Publisher;
use crate::store::open::Opened;

use super::{Error, NodeOptions};

/// What runs on one node at a time: the process managers (unless `--no-processes`) and the publisher.
pub(super) struct Managers {
    processes: Option<Processes>,
    publisher: Running,
    board: Board,
}

/// What a node's process managers work with: the executor of tasks, and the selector of documents for
/// schedules.
pub(super) type Work = (Rc<dyn Executor>, Rc<dyn weft_actors::process::timers::Select>);

impl Managers {
    /// Starts them, each on `board` (the processes by name, the publisher as `publisher`); the processes send
    /// their commands through `gateway`, the publisher publishes on its bus.
    fn start(gateway: &BusGateway, work: Option<Work>, board: &Board) -> Self {
        let store = gateway.store();
        let processes = work.map(|(executor, select)| {
            let gateway = gateway.clone();
            Processes::with_select(gateway, store.clone(), Some(executor), Some(select), RunOptions::default())
        });
        let publisher = process::start(Publisher::new(gateway.bus().clone()), store.clone(), RunOptions::default());
        for (name, health) in processes.iter().flat_map(Processes::health) {
            board.watch(name, health);
        }
        board.watch("publisher", publisher.health());
        Self { processes, publisher, board: board.clone() }
    }

    /// Stops them, saving their checkpoints, and takes them off the board. A failure to save is logged: the
    /// events since the last checkpoint are handled again on the next start, which is safe.
    pub(super) async fn stop(self) {
        for (name, _) in self.processes.iter().flat_map(Processes::health) {
            self.board.forget(name);
        }
        self.board.forget("publisher");
        if let Some(processes) = self.processes
            && let Err(error) = processes.stop().await
        {
            tracing::warn!(%error, "stopping the process managers");
        }
        if let Err(error) = self.publisher.stop().await {
            tracing::warn!(%error, "stopping the publisher");
        }
    }
}

/// How a node runs its managers: always (its own store), under a lease (a shared store), or not at all.
pub(super) enum Duty {
    Always(Managers),
    Elected { task: actix_rt::task::JoinHandle<()>, managers: Rc<RefCell<Option<Managers>>> },
    None,
}

impl Duty {
    /// Starts the managers as `options.processes` says: nodes sharing a JetStream store run them one at a time,
    /// under a lease (a node that runs no process managers does not run for it); a node with its own store
    /// runs them always (the publisher even with `--no-processes`).
    pub(super) async fn start(
        options: &NodeOptions,
        store: &Opened,
        client: Option<async_nats::Client>,
        gateway: &BusGateway,
        work: Work,
        board: &Board,
    ) -> Result<Self, Error> {
        Ok(match (store, client) {
            (Opened::JetStream(_), _) if options.processes.no_processes => Duty::None,
            (Opened::JetStream(_), Some(client)) => {
                let lease_options = options.processes.lease(options.store.jetstream_replicas.into())?;
                let lease = Lease::new(client, lease_options, holder_name()).await?;
                let managers = Rc::new(RefCell::new(None));
                let task = actix_rt::spawn(hold_lease(lease, gateway.clone(), work, managers.clone(), board.clone()));
                Duty::Elected { task, managers }
            }
            _ => Duty::Always(Managers::start(gateway, (!options.processes.no_processes).then_some(work), board)),
        })
    }
}

/// Who holds a lease, for operators: the host name and the process id.
fn holder_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}

/// Takes the lease when it is free and runs the managers while this node holds it; stops them when another
/// node has it, or when renewals have failed for longer than the lease can be trusted.
async fn hold_lease(
    mut lease: Lease,
    gateway: BusGateway,
    work: Work,
    managers: Rc<RefCell<Option<Managers>>>,
    board: Board,
) {
    let health = weft_events::Health::default();
    board.watch("lease", health.clone());
    let mut last_held = Instant::now();
    loop {
        let lost = match lease.try_hold().await {
            Ok(true) => {
                health.running();
                last_held = Instant::now();
                if managers.borrow().is_none() {
                    tracing::info!("took the process managers' lease; starting them");
                    *managers.borrow_mut() = Some(Managers::start(&gateway, Some(work.clone()), &board));
                }
                false
            }
            Ok(false) => {
                health.running();
                managers.borrow().is_some()
            }
            Err(error) => {
                tracing::warn!(%error, "renewing the process managers' lease failed");
                health.retrying(format!("renewing the lease: {error}"));
                lease.held() && last_held.elapsed() > lease.options().self_fence_after()
            }
        };
        if lost {
            tracing::warn!("lost the process managers' lease; stopping them");
            lease.forget();
            let running = managers.borrow_mut().take();
            if let Some(running) = running {
                running.stop().await;
            }
        }
        actix_rt::time::sleep(lease.options().renew_every).await;
    }
}
