//! What a node runs and how each part is doing: the board `GET /readyz` reads.
//!
//! Each long-lived task of a node (projection runners, process managers, the publisher, the lease, the bus
//! services) is put on the board under its name with its [`Health`]. The node is ready when every task on
//! the board is running and no read model is more than [`MAX_READY_LAG_SECS`] behind the log; otherwise
//! `/readyz` answers 503 and names each part that is not running or is behind, and why.

use std::sync::{Arc, Mutex};

use weft_events::Health;
use weft_events::health::{Report, State};

/// A read model further behind the log than this (the age of the first event it has not applied) makes the
/// node not ready.
pub const MAX_READY_LAG_SECS: f64 = 60.0;

/// See the module doc. Cheap to clone; clones share the board.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<Vec<(String, Health)>>>);

impl Board {
    /// Puts `health` on the board as `name`, in place of what was there under that name.
    pub fn watch(&self, name: impl Into<String>, health: Health) {
        let name = name.into();
        let mut tasks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|(n, _)| *n != name);
        tasks.push((name, health));
    }

    /// Takes `name` off the board (a task this node no longer runs, such as the managers of a lease lost).
    pub fn forget(&self, name: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, _)| n != name);
    }

    /// Every task's name and report, in the order they were put on the board.
    pub fn reports(&self) -> Vec<(String, Report)> {
        let tasks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().map(|(name, health)| (name.clone(), health.report())).collect()
    }

    /// What is not running, each as `name: state (why)`.
    pub fn not_running(&self) -> Vec<String> {
        self.reports()
            .into_iter()
            .filter(|(_, report)| report.state != State::Running)
            .map(|(name, report)| {
                let state = report.state.name();
                match report.error {
                    Some(error) => format!("{name}: {state} ({error})"),
                    None => format!("{name}: {state}"),
                }
            })
            .collect()
    }
}

/// Runs `task` as `name` on the board: running while it runs, stopped (and logged) if it ever ends, which a
/// bus service does only when its connection is gone for good.
pub fn watched<F>(board: &Board, name: &'static str, task: F) -> impl Future<Output = ()> + use<F>
where
    F: Future<Output = ()>,
{
    let health = Health::default();
    board.watch(name, health.clone());
    async move {
        health.running();
        let _stopped = StoppedOnDrop(health);
        task.await;
        tracing::error!(task = name, "a bus service ended; restart the node to serve it again");
    }
}

/// Marks a task stopped when it ends, however it ends (its subscription closed, or aborted).
pub struct StoppedOnDrop(pub Health);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stopped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_names_what_is_not_running_and_why() {
        let board = Board::default();
        let (a, b) = (Health::default(), Health::default());
        board.watch("projection jobs", a.clone());
        board.watch("publisher", b.clone());
        a.running();
        b.retrying("reading the log: timed out");
        assert_eq!(board.not_running(), vec!["publisher: retrying (reading the log: timed out)".to_owned()]);
        b.running();
        assert!(board.not_running().is_empty());
        board.forget("publisher");
        assert_eq!(board.reports().len(), 1);
    }
}
