//! The process managers and the publisher of a node: run always (its own store), under the lease of
//! `crate::lease` (nodes sharing a JetStream store run them one at a time), or not at all. With
//! `--partition-routing` on a store filed by partition, the orchestrator, the worker and the timers run per
//! partition on the partition's holder instead ([`Shares`]), each with the publisher of the partition's events,
//! and only the trigger process and the publisher of the streams in no partition stay under the lease.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use std::collections::BTreeMap;

use weft_actors::process::worker::Executor;
use weft_actors::process::{self, Lines, Processes, RunOptions, Running, Scope};
use weft_events::Partition;

use crate::cluster::ownership::Partitions;

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
    /// Starts them, each on `board` (the processes by name, the publisher as `publisher`); the processes (of
    /// `scope`: all, or those that read the whole log beside the partitions' sets) send their commands through
    /// `gateway`, the publisher publishes on its bus: every event, or with `rest_of` (the store's partition
    /// count, whose publishers run per partition) those of streams in no partition.
    fn start(gateway: &BusGateway, work: Option<Work>, scope: Scope, rest_of: Option<u32>, board: &Board) -> Self {
        let store = gateway.store();
        let processes = work.map(|(executor, select)| {
            let (gateway, options) = (gateway.clone(), RunOptions::default());
            Processes::of(scope, gateway, store.clone(), Some(executor), Some(select), options, Lines::default())
        });
        let bus = gateway.bus().clone();
        let publisher = match rest_of {
            Some(count) => Publisher::rest_of(bus, count),
            None => Publisher::new(bus),
        };
        let publisher = process::start(publisher, store.clone(), RunOptions::default());
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
    Elected {
        task: actix_rt::task::JoinHandle<()>,
        managers: Rc<RefCell<Option<Managers>>>,
        /// With partition routing on a store filed by partition: each held partition's processes.
        shares: Option<Shares>,
    },
    None,
}

impl Duty {
    /// Starts the managers as `options.processes` says: nodes sharing a JetStream store run them one at a time,
    /// under a lease (a node that runs no process managers does not run for it); a node with its own store
    /// runs them always (the publisher even with `--no-processes`).
    /// `partitions`: this node's, when it routes by partition over a store filed by partition; the
    /// orchestrator, the worker and the timers then run per partition it holds.
    pub(super) async fn start(
        options: &NodeOptions,
        store: &Opened,
        client: Option<async_nats::Client>,
        gateway: &BusGateway,
        work: Work,
        partitions: Option<Partitions>,
        board: &Board,
    ) -> Result<Self, Error> {
        Ok(match (store, client) {
            (Opened::JetStream(_), _) if options.processes.no_processes => Duty::None,
            (Opened::JetStream(_), Some(client)) => {
                let shares = partitions.map(|partitions| Shares::start(gateway, work.clone(), partitions, board));
                let (scope, rest_of) = match &shares {
                    Some(shares) => (Scope::Shared, Some(shares.partitions.count())),
                    None => (Scope::Whole, None),
                };
                let lease_options = options.processes.lease(options.store.jetstream_replicas.into())?;
                let lease = Lease::new(client, lease_options, holder_name()).await?;
                let managers = Rc::new(RefCell::new(None));
                let elected = Elected { gateway: gateway.clone(), work, scope, rest_of, board: board.clone() };
                let task = actix_rt::spawn(hold_lease(lease, elected, managers.clone()));
                Duty::Elected { task, managers, shares }
            }
            _ => {
                let work = (!options.processes.no_processes).then_some(work);
                Duty::Always(Managers::start(gateway, work, Scope::Whole, None, board))
            }
        })
    }

    /// Stops what runs, saving the checkpoints.
    pub(super) async fn stop(self) {
        match self {
            Duty::Always(managers) => managers.stop().await,
            Duty::Elected { task, managers, shares } => {
                task.abort();
                if let Some(shares) = shares {
                    shares.stop().await;
                }
                let running = managers.borrow_mut().take();
                if let Some(running) = running {
                    running.stop().await;
                }
            }
            Duty::None => {}
        }
    }
}

/// The processes and the publisher of each partition this node holds: started when it begins serving the
/// partition, stopped (their checkpoints saved) when it stops, before its lease is released: the router's drain
/// ([`Partitions::began`]) waits for them, so the next holder resumes from their checkpoints.
pub(super) struct Shares {
    task: actix_rt::task::JoinHandle<()>,
    running: Rc<RefCell<BTreeMap<u32, Share>>>,
    partitions: Partitions,
    board: Board,
}

impl Shares {
    fn start(gateway: &BusGateway, work: Work, partitions: Partitions, board: &Board) -> Self {
        let running = Rc::new(RefCell::new(BTreeMap::new()));
        let follow = follow_serving(gateway.clone(), work, partitions.clone(), running.clone(), board.clone());
        Self { task: actix_rt::spawn(follow), running, partitions, board: board.clone() }
    }

    async fn stop(self) {
        self.task.abort();
        let running = std::mem::take(&mut *self.running.borrow_mut());
        for (partition, share) in running {
            share.stop(partition, &self.partitions, &self.board).await;
        }
    }
}

/// What runs for one partition on its holder.
struct Share {
    processes: Processes,
    publisher: Running,
}

impl Share {
    /// Starts them over `partition`'s events, on `board` as `<name>/<partition>`.
    fn start(
        gateway: &BusGateway,
        (executor, select): &Work,
        partition: Partition,
        lines: &Lines,
        board: &Board,
    ) -> Self {
        let store = gateway.store().clone();
        let processes = Processes::of(
            Scope::Partition(partition),
            gateway.clone(),
            store.clone(),
            Some(executor.clone()),
            Some(select.clone()),
            RunOptions::default(),
            lines.clone(),
        );
        let publisher = Publisher::new(gateway.bus().clone());
        let publisher = process::start_in(publisher, store, RunOptions::default(), Some(partition));
        for (name, health) in processes.health() {
            board.watch(share_name(name, partition.index), health);
        }
        board.watch(share_name("publisher", partition.index), publisher.health());
        Self { processes, publisher }
    }

    /// Stops them, saving their checkpoints, and lets the router's drain go on.
    async fn stop(self, partition: u32, partitions: &Partitions, board: &Board) {
        for (name, _) in self.processes.health() {
            board.forget(&share_name(name, partition));
        }
        board.forget(&share_name("publisher", partition));
        let (processes, publisher) = futures::join!(self.processes.stop(), self.publisher.stop());
        if let Err(error) = processes {
            tracing::warn!(partition, %error, "stopping a partition's process managers");
        }
        if let Err(error) = publisher {
            tracing::warn!(partition, %error, "stopping a partition's publisher");
        }
        partitions.ended(partition);
    }
}

/// The board's name of a partition's process: `orchestrator/17`.
fn share_name(name: &str, partition: u32) -> String {
    format!("{name}/{partition}")
}

/// Starts and stops the partitions' processes as the partitions served change.
async fn follow_serving(
    gateway: BusGateway,
    work: Work,
    partitions: Partitions,
    running: Rc<RefCell<BTreeMap<u32, Share>>>,
    board: Board,
) {
    let mut serving = partitions.serving();
    // The orchestrators of one node share the lines of steps waiting for busy agents.
    let lines = Lines::default();
    loop {
        let wanted = serving.borrow_and_update().clone();
        let gone: Vec<u32> = running.borrow().keys().filter(|p| !wanted.contains(p)).copied().collect();
        for partition in gone {
            let share = running.borrow_mut().remove(&partition);
            if let Some(share) = share {
                share.stop(partition, &partitions, &board).await;
            }
        }
        for &index in &wanted {
            if running.borrow().contains_key(&index) {
                continue;
            }
            partitions.began(index);
            let partition = Partition { index, count: partitions.count() };
            let share = Share::start(&gateway, &work, partition, &lines, &board);
            running.borrow_mut().insert(index, share);
        }
        if serving.changed().await.is_err() {
            return;
        }
    }
}

/// Who holds a lease, for operators: the host name and the process id.
fn holder_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}

/// What a node runs while it holds the process managers' lease.
struct Elected {
    gateway: BusGateway,
    work: Work,
    scope: Scope,
    /// With partitions: the count, whose publishers put out all but the streams in none.
    rest_of: Option<u32>,
    board: Board,
}

/// Takes the lease when it is free and runs the managers while this node holds it; stops them when another
/// node has it, or when renewals have failed for longer than the lease can be trusted.
async fn hold_lease(mut lease: Lease, elected: Elected, managers: Rc<RefCell<Option<Managers>>>) {
    let Elected { gateway, work, scope, rest_of, board } = elected;
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
                    *managers.borrow_mut() =
                        Some(Managers::start(&gateway, Some(work.clone()), scope, rest_of, &board));
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
