//! The steps waiting for a slot of a busy agent, in the order they take free slots: the higher
//! [`priority`](weft_events::domain::job::Submitted::priority) first; within one priority the tenants in
//! turn, one step each, so one tenant's burst does not starve another; within one tenant the steps in log
//! order.
//!
//! The orchestrator keeps one line per agent on its node ([`Lines`]); a step is woken when it is its turn and
//! a task of that agent has finished. A step woken that finds the slot taken after all (by a step that came
//! through another node, or one that tried before anyone waited) goes back to where it was, and its tenant
//! keeps its turn.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use weft_events::domain::ids::AgentId;

/// One waiting step.
struct Waiter {
    /// The log position of its `step_scheduled` event: its place within its tenant, and its name in the line.
    position: u64,
    wake: oneshot::Sender<()>,
}

/// The steps of one priority: the tenants in turn, each with its steps in log order.
#[derive(Default)]
struct Level {
    turn: VecDeque<Arc<str>>,
    steps: HashMap<Arc<str>, VecDeque<Waiter>>,
}

impl Level {
    /// Drops the steps whose handlers have gone (a process stopping), and the tenants left with none.
    fn prune(&mut self) {
        self.steps.retain(|_, steps| {
            steps.retain(|w| !w.wake.is_closed());
            !steps.is_empty()
        });
        let steps = &self.steps;
        self.turn.retain(|tenant| steps.contains_key(tenant));
    }

    fn head(&self) -> Option<u64> {
        let tenant = self.turn.front()?;
        self.steps.get(tenant)?.front().map(|w| w.position)
    }

    /// Takes the first step of the tenant whose turn it is; that tenant goes to the back of the turn.
    fn pop(&mut self) -> Option<Waiter> {
        let tenant = self.turn.pop_front()?;
        let steps = self.steps.get_mut(&tenant)?;
        let waiter = steps.pop_front();
        if steps.is_empty() {
            self.steps.remove(&tenant);
        } else {
            self.turn.push_back(tenant);
        }
        waiter
    }

    /// Adds a step in log order within its tenant; `again` gives its tenant the next turn back (it had taken
    /// its turn and found no slot).
    fn join(&mut self, tenant: Arc<str>, waiter: Waiter, again: bool) {
        let steps = self.steps.entry(tenant.clone()).or_default();
        let at = steps.partition_point(|w| w.position < waiter.position);
        steps.insert(at, waiter);
        if let Some(i) = self.turn.iter().position(|t| *t == tenant) {
            if again {
                self.turn.remove(i);
                self.turn.push_front(tenant);
            }
        } else if again {
            self.turn.push_front(tenant);
        } else {
            self.turn.push_back(tenant);
        }
    }
}

/// The line of one agent: the levels by priority, highest first.
#[derive(Default)]
pub(crate) struct Line {
    levels: BTreeMap<Reverse<i32>, Level>,
}

impl Line {
    fn prune(&mut self) {
        self.levels.values_mut().for_each(Level::prune);
        self.levels.retain(|_, level| !level.turn.is_empty());
    }

    /// The position of the step whose turn is next.
    fn head(&mut self) -> Option<u64> {
        self.prune();
        self.levels.values().next().and_then(Level::head)
    }

    /// Whether a step of `priority` or higher waits: a newcomer of `priority` then goes behind it.
    fn waits_at_or_above(&mut self, priority: i32) -> bool {
        self.prune();
        self.levels.keys().next().is_some_and(|Reverse(p)| *p >= priority)
    }

    /// Takes the step whose turn is next, if it is the one at `position`.
    fn take_if_head(&mut self, position: u64) -> bool {
        if self.head() != Some(position) {
            return false;
        }
        self.pop().is_some()
    }

    fn pop(&mut self) -> Option<Waiter> {
        let mut first = self.levels.first_entry()?;
        let waiter = first.get_mut().pop();
        if first.get().turn.is_empty() {
            first.remove();
        }
        waiter
    }

    fn len(&self) -> usize {
        self.levels.values().flat_map(|l| l.steps.values()).map(VecDeque::len).sum()
    }
}

/// Every agent's line on this node. Cheap to clone: the clones share the lines (the orchestrator holds one,
/// [`super::Processes::waiting`] another).
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<HashMap<AgentId, Line>>>);

impl Lines {
    fn with<T>(&self, agent: AgentId, f: impl FnOnce(&mut Line) -> T) -> T {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let line = lines.entry(agent).or_default();
        let result = f(line);
        if line.levels.is_empty() {
            lines.remove(&agent);
        }
        result
    }

    /// Whether a newcomer of `priority` for `agent` must go behind a step already waiting.
    pub(crate) fn waits_at_or_above(&self, agent: AgentId, priority: i32) -> bool {
        self.with(agent, |line| line.waits_at_or_above(priority))
    }

    /// Puts the step at `position` in `agent`'s line; `wake` is sent when it is its turn. `again`: it had its
    /// turn and found the slot taken, so its tenant keeps the turn.
    pub(crate) fn join(
        &self,
        agent: AgentId,
        priority: i32,
        tenant: Arc<str>,
        position: u64,
        wake: oneshot::Sender<()>,
        again: bool,
    ) {
        self.with(agent, |line| {
            line.levels.entry(Reverse(priority)).or_default().join(tenant, Waiter { position, wake }, again)
        });
    }

    /// Whether the step at `position` is next in `agent`'s line.
    pub(crate) fn is_head(&self, agent: AgentId, position: u64) -> bool {
        self.with(agent, |line| line.head() == Some(position))
    }

    /// Takes the step at `position` out of `agent`'s line if it is next (it asks for a slot on its own).
    pub(crate) fn take_if_head(&self, agent: AgentId, position: u64) -> bool {
        self.with(agent, |line| line.take_if_head(position))
    }

    /// Wakes the step whose turn is next in `agent`'s line, if any waits.
    pub(crate) fn wake(&self, agent: AgentId) {
        self.with(agent, |line| {
            while let Some(waiter) = line.pop() {
                if waiter.wake.send(()).is_ok() {
                    break;
                }
            }
        });
    }

    /// How many steps wait for a slot, by agent (the agents with none left out).
    pub fn waiting(&self) -> Vec<(AgentId, usize)> {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.values_mut().for_each(Line::prune);
        lines.retain(|_, line| !line.levels.is_empty());
        lines.iter().map(|(agent, line)| (*agent, line.len())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines up `(priority, tenant, position)` steps and wakes them all; the positions in the order woken.
    fn order(steps: &[(i32, &str, u64)]) -> Vec<u64> {
        let (lines, agent) = (Lines::default(), AgentId::new());
        let mut woken = Vec::new();
        for (priority, tenant, position) in steps {
            let (wake, rx) = oneshot::channel();
            lines.join(agent, *priority, Arc::from(*tenant), *position, wake, false);
            woken.push((*position, rx));
        }
        let mut order = Vec::new();
        for _ in steps {
            lines.wake(agent);
            let i = woken.iter_mut().position(|(_, rx)| rx.try_recv().is_ok()).expect("one woke");
            order.push(woken.remove(i).0);
        }
        assert!(lines.waiting().is_empty());
        order
    }

    #[test]
    fn higher_priorities_go_first_and_tenants_of_one_priority_take_turns() {
        let steps = [(0, "a", 1), (0, "a", 2), (0, "a", 3), (0, "b", 4), (5, "b", 5), (0, "b", 6), (5, "a", 7)];
        assert_eq!(order(&steps), [5, 7, 1, 4, 2, 6, 3]);
    }

    #[test]
    fn a_tenant_keeps_log_order_whatever_order_its_steps_join_in() {
        assert_eq!(order(&[(0, "a", 9), (0, "a", 3), (0, "a", 5)]), [3, 5, 9]);
    }

    #[test]
    fn a_step_back_in_line_keeps_its_tenants_turn_and_a_gone_step_is_skipped() {
        let (lines, agent) = (Lines::default(), AgentId::new());
        let (a1, _first_wait) = oneshot::channel();
        let (b1, mut b1_woken) = oneshot::channel();
        let (a2, a2_woken) = oneshot::channel();
        lines.join(agent, 0, "a".into(), 1, a1, false);
        lines.join(agent, 0, "b".into(), 2, b1, false);
        lines.join(agent, 0, "a".into(), 3, a2, false);
        assert!(lines.is_head(agent, 1) && !lines.is_head(agent, 2));
        // a's first step takes its turn, finds no slot and comes back: it is next again, before b.
        assert!(lines.take_if_head(agent, 1));
        assert!(!lines.take_if_head(agent, 1), "taken already");
        let (a1, mut a1_woken) = oneshot::channel();
        lines.join(agent, 0, "a".into(), 1, a1, true);
        assert!(lines.is_head(agent, 1));
        lines.wake(agent);
        assert!(a1_woken.try_recv().is_ok());
        // A step whose handler has gone is not woken: b's is, then nobody waits.
        drop(a2_woken);
        lines.wake(agent);
        assert!(b1_woken.try_recv().is_ok());
        assert_eq!(lines.waiting(), []);
        assert!(!lines.waits_at_or_above(agent, i32::MIN));
    }
}
