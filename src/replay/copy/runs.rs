//! How a copy's positions map from the source to the target, and how far a copy got.

use serde::{Deserialize, Serialize};

/// A run of events whose positions follow on at both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The source's position of its first event.
    pub source_from: u64,
    /// The target's position of it.
    pub target_from: u64,
    /// How many events.
    pub events: u64,
}

/// How far a copy got, saved on the target as checkpoint [`PROGRESS`] (at the target's position of `through`:
/// a checkpoint is never ahead of its own log).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Progress {
    /// The source, as it was named.
    pub(super) source: String,
    /// The source's last position of which every event is on the target.
    pub(super) through: u64,
    /// The runs of positions so far.
    pub(super) runs: Vec<Run>,
}

impl Progress {
    /// Event `source` of the source is at `target` on the target.
    pub(super) fn placed(&mut self, source: u64, target: u64) {
        if let Some(last) = self.runs.last_mut()
            && last.source_from + last.events == source
            && last.target_from + last.events == target
        {
            last.events += 1;
            return;
        }
        self.runs.push(Run { source_from: source, target_from: target, events: 1 });
    }

    /// The target's position for a checkpoint at the source's `position`: a watermark, every target position
    /// at or below it holding an event at or before `position` in the source. Just below the first target
    /// position of an event after it (the last event at or before it when the target kept the source's order;
    /// lower where it did not), or the last position copied when no event comes after it. A process that
    /// resumes there may handle events again, never skip one.
    pub(super) fn translate(&self, position: u64) -> u64 {
        let mut first_after = None::<u64>;
        let mut last = 0;
        for run in &self.runs {
            if run.source_from > position {
                first_after = Some(first_after.map_or(run.target_from, |f| f.min(run.target_from)));
                continue;
            }
            let within = (position - run.source_from).min(run.events - 1);
            last = last.max(run.target_from + within);
            if within + 1 < run.events {
                let next = run.target_from + within + 1;
                first_after = Some(first_after.map_or(next, |f| f.min(next)));
            }
        }
        first_after.map_or(last, |first| first - 1)
    }

    /// Whether every position copied is the same at both ends.
    pub(super) fn kept(&self) -> bool {
        self.runs.iter().all(|run| run.source_from == run.target_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_map_as_runs_and_checkpoints_translate_to_the_last_event_at_or_before() {
        let mut state = Progress::default();
        // Source 1-3 and 5-6 (4 is a gap), copied to 1-5.
        for (source, target) in [(1, 1), (2, 2), (3, 3), (5, 4), (6, 5)] {
            state.placed(source, target);
        }
        assert_eq!(
            state.runs,
            [Run { source_from: 1, target_from: 1, events: 3 }, Run { source_from: 5, target_from: 4, events: 2 }]
        );
        assert!(!state.kept());
        assert_eq!([0, 1, 3, 4, 5, 6, 9].map(|p| state.translate(p)), [0, 1, 3, 3, 4, 5, 5]);
        // Stored out of order (source 2 at target 3, source 3 at target 2): a checkpoint at 2 may only say 1.
        let mut swapped = Progress::default();
        for (source, target) in [(1, 1), (2, 3), (3, 2), (4, 4)] {
            swapped.placed(source, target);
        }
        assert!(!swapped.kept());
        assert_eq!([1, 2, 3, 4].map(|p| swapped.translate(p)), [1, 1, 3, 4]);
        let mut dense = Progress::default();
        (1..=4).for_each(|p| dense.placed(p, p));
        assert!(dense.kept());
        assert_eq!(dense.runs.len(), 1);
    }
}
