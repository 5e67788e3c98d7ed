//! The shape every aggregate has: commands in, events out, state folded from events.

use weft_events::DomainEvent;

/// An aggregate: the consistency boundary around one instance's state. Its state is serializable, so that
/// the actor host can snapshot it.
///
/// `decide` and `evolve` are pure: no I/O, no clock, no randomness. Time, ids and the outcome of side
/// effects come in with the command, so the same history and command always give the same answer.
pub trait Aggregate: Default + Clone + Send + Unpin + serde::Serialize + serde::de::DeserializeOwned + 'static {
    /// The name of the aggregate, the prefix of its streams: `document`.
    const KIND: &'static str;

    /// Version of the state's encoding in snapshots; bump it when the state changes shape, and old
    /// snapshots are ignored (the state is rebuilt from events).
    const SNAPSHOT_VERSION: u32 = 1;

    /// What can be asked of it; serializable, so that commands travel over the bus.
    type Command: Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static;
    /// What it records.
    type Event: DomainEvent + Clone;
    /// Why it refuses a command: the caller's to fix, never an infrastructure failure. Serializable, so that
    /// a caller over the bus gets it typed.
    type Rejection: std::error::Error
        + Clone
        + PartialEq
        + Send
        + serde::Serialize
        + serde::de::DeserializeOwned
        + 'static;

    /// The events that `command` produces from this state, or why it is refused. An empty list means the
    /// command changes nothing (it was already done).
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// The state after `event`.
    fn evolve(self, event: &Self::Event) -> Self;

    /// The name of a command's type (`submit`), for metrics: a fixed, small set per aggregate.
    fn command_name(_command: &Self::Command) -> &'static str {
        "command"
    }

    /// Whether the actor of an instance's first event owns it (a job: whoever submitted it), for commands
    /// confined to their owner's instances ([`crate::host::Metadata::owner`]) when [`Aggregate::owner`] says
    /// nobody.
    const OWNED_BY_CREATOR: bool = false;

    /// Who owns the instance, for commands confined to their owner's instances
    /// ([`crate::host::Metadata::owner`]); `None`: nobody does (yet), and any such command reaches it.
    fn owner(&self) -> Option<&str> {
        None
    }

    /// The state after a history of events.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::default(), Self::evolve)
    }
}
