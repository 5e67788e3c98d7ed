//! How a long-lived task that follows the log is doing: what a node's readiness check shows.
//!
//! The task (a projection runner, a process manager, the publisher) holds a [`Health`] and says where it is
//! as that changes: running, retrying after a failure it expects to pass (the store or the bus unavailable),
//! restarting after it ended, or stopped. Whoever shows readiness holds a clone and reads a [`Report`].
//! No I/O here: it is a shared cell.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::envelope::Timestamp;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Starting, not yet reading.
    Starting,
    /// Working: reading and handling events.
    Running,
    /// Waiting to try again after a failure it expects to pass; it holds its place in the log.
    Retrying,
    /// It ended on a failure and is being started again from its checkpoint.
    Restarting,
    /// Stopped, by a stop or for good.
    Stopped,
}

impl State {
    /// Its name, as serialised.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
        }
    }
}

/// A task's state, since when, why (when it is not running) and how often it was restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Where it is.
    pub state: State,
    /// Since when, in microseconds since the epoch.
    pub since: Timestamp,
    /// The last failure, while it is retrying or restarting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Restarts after it ended, since the node started.
    pub restarts: u32,
}

/// See the module doc. Cheap to clone; clones share the cell.
#[derive(Debug, Clone)]
pub struct Health(Arc<Mutex<Report>>);

impl Default for Health {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Report { state: State::Starting, since: Timestamp::now(), error: None, restarts: 0 })))
    }
}

impl Health {
    fn set(&self, state: State, error: Option<String>) {
        let mut report = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if report.state != state {
            report.since = Timestamp::now();
        }
        if state == State::Restarting {
            report.restarts += 1;
        }
        report.state = state;
        report.error = error;
    }

    /// It is working. Cheap when nothing changes: called once per batch.
    pub fn running(&self) {
        let mut report = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if report.state != State::Running {
            report.state = State::Running;
            report.since = Timestamp::now();
            report.error = None;
        }
    }

    /// It failed and will try again.
    pub fn retrying(&self, error: impl Into<String>) {
        self.set(State::Retrying, Some(error.into()));
    }

    /// It ended on `error` and starts again.
    pub fn restarting(&self, error: impl Into<String>) {
        self.set(State::Restarting, Some(error.into()));
    }

    /// It stopped.
    pub fn stopped(&self) {
        self.set(State::Stopped, None);
    }

    /// Where it is now.
    pub fn report(&self) -> Report {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_s_report_follows_what_it_says() {
        let health = Health::default();
        assert_eq!(health.report().state, State::Starting);
        health.running();
        let running_since = health.report().since;
        health.running();
        assert_eq!(health.report().since, running_since, "no change, no new time");
        health.retrying("the store is unavailable");
        assert_eq!(health.report().error.as_deref(), Some("the store is unavailable"));
        health.restarting("it ended");
        health.running();
        let report = health.report();
        assert_eq!((report.state, report.error, report.restarts), (State::Running, None, 1));
    }
}
