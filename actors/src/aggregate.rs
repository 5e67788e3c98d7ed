//! The shape every aggregate has: commands in, events out, state folded from events.

use weft_events::DomainEvent;

/// An aggregate: the consistency boundary around one instance's state.
///
/// `decide` and `evolve` are pure: no I/O, no clock, no randomness. Time, ids and the outcome of side
/// effects come in with the command, so the same history and command always give the same answer.
pub trait Aggregate: Default + Clone + Send + 'static {
    /// What can be asked of it.
    type Command;
    /// What it records.
    type Event: DomainEvent + Clone;
    /// Why it refuses a command: the caller's to fix, never an infrastructure failure.
    type Rejection: std::error::Error + Clone + PartialEq;

    /// The events that `command` produces from this state, or why it is refused. An empty list means the
    /// command changes nothing (it was already done).
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// The state after `event`.
    fn evolve(self, event: &Self::Event) -> Self;

    /// The state after a history of events.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::default(), Self::evolve)
    }
}
