//! The steps waiting for a slot of a busy agent, in the order they take free slots: the higher
//! [`priority`](weft_events::domain::job::Submitted::priority) first; within one priority the tenants in
//! turn, one step each, so one tenant's burst does not starve another; within one tenant the steps in log
//! order.
//!
//! The orchestrator keeps one line per agent on its node ([`Lines`]); the step next in line is woken when a
//! task of that agent has finished. A step keeps its place while it asks for the slot, and leaves the line
//! only when it has one (its tenant's turn then passes to the next tenant). A slot freed while the step next
//! in line is already asking is noted, and the step asks again at once if its answer was "no slot": the
//! freed slot is its, not the next step's.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use weft_events::domain::ids::AgentId;

/// One step in a line.
struct Entry {
    /// The log position of its `step_scheduled` event: its place within its tenant, and its name in the line.
    position: u64,
    /// Wakes it; gone when its handler has gone (a process stopping), which drops it from the line.
    wake: Weak<Notify>,
    /// Asking for the slot now.
    trying: bool,
}

/// The steps of one priority: the tenants in turn, each with its steps in log order.
#[derive(Default)]
struct Level {
    turn: VecDeque<Arc<str>>,
    steps: HashMap<Arc<str>, VecDeque<Entry>>,
}

impl Level {
    /// Drops the steps whose handlers have gone, and the tenants left with none.
    fn prune(&mut self) {
        self.steps.retain(|_, steps| {
            steps.retain(|e| e.wake.strong_count() > 0);
            !steps.is_empty()
        });
        let steps = &self.steps;
        self.turn.retain(|tenant| steps.contains_key(tenant));
    }

    fn head(&mut self) -> Option<&mut Entry> {
        let tenant = self.turn.front()?;
        self.steps.get_mut(tenant)?.front_mut()
    }

    fn find(&mut self, position: u64) -> Option<&mut Entry> {
        self.steps.values_mut().flat_map(|steps| steps.iter_mut()).find(|e| e.position == position)
    }

    /// Adds a step in log order within its tenant; a new tenant takes its turn after the others.
    fn join(&mut self, tenant: Arc<str>, entry: Entry) {
        if !self.steps.contains_key(&tenant) {
            self.turn.push_back(tenant.clone());
        }
        let steps = self.steps.entry(tenant).or_default();
        let at = steps.partition_point(|e| e.position < entry.position);
        steps.insert(at, entry);
    }

    /// Takes the step at `position` out; its tenant, having been served, takes its next turn after the
    /// others. False when it is not in this level.
    fn leave(&mut self, position: u64) -> bool {
        let Some(tenant) =
            self.steps.iter().find(|(_, steps)| steps.iter().any(|e| e.position == position)).map(|(t, _)| t.clone())
        else {
            return false;
        };
        let steps = self.steps.get_mut(&tenant).expect("found");
        steps.retain(|e| e.position != position);
        let more = !steps.is_empty();
        if !more {
            self.steps.remove(&tenant);
        }
        self.turn.retain(|t| *t != tenant);
        if more {
            self.turn.push_back(tenant);
        }
        true
    }
}

/// The line of one agent: the levels by priority, highest first.
#[derive(Default)]
pub(crate) struct Line {
    levels: BTreeMap<Reverse<i32>, Level>,
    /// Slots freed while the step next in line was already asking: it asks again at once on a "no slot".
    missed: u32,
}

impl Line {
    fn prune(&mut self) {
        self.levels.values_mut().for_each(Level::prune);
        self.levels.retain(|_, level| !level.turn.is_empty());
    }

    /// Drops the steps whose handlers have gone from the front of the line, until the step next in line is
    /// one that waits (only the front: a full prune on every look would cost the whole line each time).
    fn drop_gone_head(&mut self) {
        while let Some(mut top) = self.levels.first_entry() {
            let level = top.get_mut();
            let Some(tenant) = level.turn.front().cloned() else {
                top.remove();
                continue;
            };
            let steps = level.steps.get_mut(&tenant).expect("a tenant in turn has steps");
            if steps.front().is_some_and(|e| e.wake.strong_count() > 0) {
                return;
            }
            steps.pop_front();
            if steps.is_empty() {
                level.steps.remove(&tenant);
                level.turn.pop_front();
            }
        }
    }

    /// The step whose turn is next, and its priority.
    fn head(&mut self) -> Option<(i32, &mut Entry)> {
        self.drop_gone_head();
        let (Reverse(priority), level) = self.levels.iter_mut().next()?;
        level.head().map(|entry| (*priority, entry))
    }

    fn find(&mut self, position: u64) -> Option<&mut Entry> {
        self.levels.values_mut().find_map(|level| level.find(position))
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
        metrics::gauge!("weft_agent_queue_depth", "agent" => agent.to_string()).set(line.len() as f64);
        if line.levels.is_empty() {
            lines.remove(&agent);
        }
        result
    }

    /// Whether a newcomer of `priority` for `agent` must go behind a step already waiting.
    pub(crate) fn waits_at_or_above(&self, agent: AgentId, priority: i32) -> bool {
        self.with(agent, |line| line.head().is_some_and(|(head, _)| head >= priority))
    }

    /// Puts the step at `position` in `agent`'s line; `wake` is notified when it is its turn.
    pub(crate) fn join(&self, agent: AgentId, priority: i32, tenant: Arc<str>, position: u64, wake: &Arc<Notify>) {
        let entry = Entry { position, wake: Arc::downgrade(wake), trying: false };
        self.with(agent, |line| line.levels.entry(Reverse(priority)).or_default().join(tenant, entry));
    }

    /// Whether the step at `position` is next in `agent`'s line.
    pub(crate) fn is_head(&self, agent: AgentId, position: u64) -> bool {
        self.with(agent, |line| line.head().is_some_and(|(_, e)| e.position == position))
    }

    /// Marks the step at `position` as asking for the slot if it is next in line (it asks on its own).
    pub(crate) fn try_if_head(&self, agent: AgentId, position: u64) -> bool {
        self.with(agent, |line| match line.head() {
            Some((_, head)) if head.position == position => {
                head.trying = true;
                true
            }
            _ => false,
        })
    }

    /// Marks the step at `position` as asking for the slot (woken).
    pub(crate) fn trying(&self, agent: AgentId, position: u64) {
        self.with(agent, |line| {
            if let Some(entry) = line.find(position) {
                entry.trying = true;
            }
        });
    }

    /// The step at `position` asked and found no slot: true when a slot was freed meanwhile (it asks again at
    /// once), otherwise it waits again in its place.
    pub(crate) fn no_slot(&self, agent: AgentId, position: u64) -> bool {
        self.with(agent, |line| {
            if line.missed > 0 {
                line.missed -= 1;
                return true;
            }
            if let Some(entry) = line.find(position) {
                entry.trying = false;
            }
            false
        })
    }

    /// Takes the step at `position` out of `agent`'s line (it has its slot, or will never have one), and wakes
    /// the next: a slot may be free for it too.
    pub(crate) fn leave(&self, agent: AgentId, position: u64) {
        self.with(agent, |line| {
            for level in line.levels.values_mut() {
                if level.leave(position) {
                    break;
                }
            }
            line.missed = 0;
        });
        self.wake(agent);
    }

    /// A slot of `agent` is free: wakes the step whose turn is next, or notes it for the one already asking.
    pub(crate) fn wake(&self, agent: AgentId) {
        self.with(agent, |line| match line.head() {
            None => {}
            Some((_, head)) if head.trying => line.missed += 1,
            Some((_, head)) => {
                if let Some(wake) = head.wake.upgrade() {
                    head.trying = true;
                    wake.notify_one();
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
    use futures::FutureExt as _;

    use super::*;

    /// Lines up `(priority, tenant, position)` steps, then serves them one at a time (each woken step takes
    /// the slot and leaves); the positions in the order served.
    fn order(steps: &[(i32, &str, u64)]) -> Vec<u64> {
        let (lines, agent) = (Lines::default(), AgentId::new());
        let mut waiting: Vec<(u64, Arc<Notify>)> = Vec::new();
        for (priority, tenant, position) in steps {
            let wake = Arc::new(Notify::new());
            lines.join(agent, *priority, Arc::from(*tenant), *position, &wake);
            waiting.push((*position, wake));
        }
        let mut order = Vec::new();
        lines.wake(agent);
        for _ in steps {
            let i = waiting.iter().position(|(_, w)| w.notified().now_or_never().is_some()).expect("one woke");
            let (position, _wake) = waiting.remove(i);
            order.push(position);
            lines.leave(agent, position);
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
    fn a_step_keeps_its_place_while_it_asks_and_a_slot_freed_meanwhile_is_its() {
        let (lines, agent) = (Lines::default(), AgentId::new());
        let (a1, b1, a2) = (Arc::new(Notify::new()), Arc::new(Notify::new()), Arc::new(Notify::new()));
        lines.join(agent, 0, "a".into(), 1, &a1);
        lines.join(agent, 0, "b".into(), 2, &b1);
        lines.join(agent, 0, "a".into(), 3, &a2);
        assert!(lines.is_head(agent, 1) && !lines.is_head(agent, 2));
        // a's first step asks on its own; a slot freed meanwhile does not wake b.
        assert!(lines.try_if_head(agent, 1));
        lines.wake(agent);
        assert!(b1.notified().now_or_never().is_none() && a2.notified().now_or_never().is_none());
        // Its answer was "no slot", but one was freed while it asked: it asks again.
        assert!(lines.no_slot(agent, 1));
        // This time nothing was freed: it waits in its place, still next.
        assert!(!lines.no_slot(agent, 1));
        assert!(lines.is_head(agent, 1));
        lines.wake(agent);
        assert!(a1.notified().now_or_never().is_some());
        // It gets the slot and leaves: b is next (a had its turn), and is woken in case a slot is free.
        lines.leave(agent, 1);
        assert!(b1.notified().now_or_never().is_some());
        // A step whose handler has gone is not woken.
        lines.no_slot(agent, 2);
        drop(a2);
        lines.leave(agent, 2);
        assert_eq!(lines.waiting(), []);
        assert!(!lines.waits_at_or_above(agent, i32::MIN));
    }
}
