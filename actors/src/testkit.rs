//! Given/when/then for aggregates (feature `test-util`).
//!
//! ```
//! # use weft_actors::document::{Command, Document, Rejection};
//! # use weft_actors::testkit::given;
//! # use weft_events::Timestamp;
//! given::<Document>([])
//!     .when(Command::Delete { reason: "gone".into(), at: Timestamp(1) })
//!     .then_rejected(Rejection::NotRegistered);
//! ```
//!
//! Every event the kit sees is also stored and read back through its codec, so an event that does not
//! survive the store fails the test that produced it.

use std::fmt::Debug;

use weft_events::{DomainEvent, StreamName, Timestamp};

use crate::aggregate::Aggregate;

/// A history to decide from.
pub struct Given<A: Aggregate> {
    state: A,
}

/// The outcome of a command, to check.
pub struct Then<A: Aggregate> {
    outcome: Result<Vec<A::Event>, A::Rejection>,
}

/// Starts a test from these events.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A>
where
    A::Event: Debug + PartialEq,
{
    let state = events.into_iter().fold(A::default(), |state, event| state.evolve(&stored(&event)));
    Given { state }
}

impl<A: Aggregate> Given<A>
where
    A::Event: Debug + PartialEq,
{
    /// Decides `command` against the history.
    pub fn when(self, command: A::Command) -> Then<A> {
        let outcome = self.state.decide(&command);
        if let Ok(events) = &outcome {
            events.iter().for_each(|e| drop(stored(e)));
        }
        Then { outcome }
    }

    /// The state the history folds to, for tests that look at it.
    pub fn state(&self) -> &A {
        &self.state
    }
}

impl<A: Aggregate> Then<A>
where
    A::Event: Debug + PartialEq,
    A::Rejection: Debug,
{
    /// The command must produce exactly these events.
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => assert_eq!(events, expected, "the command produced other events"),
            Err(rejection) => panic!("the command was rejected: {rejection:?} ({rejection})"),
        }
    }

    /// The command must be refused for this reason.
    pub fn then_rejected(self, expected: A::Rejection) {
        match self.outcome {
            Ok(events) => panic!("the command was accepted with {events:?}, expected {expected:?}"),
            Err(rejection) => assert_eq!(rejection, expected),
        }
    }

    /// The produced events, for checks the two above cannot express.
    pub fn events(self) -> Vec<A::Event> {
        match self.outcome {
            Ok(events) => events,
            Err(rejection) => panic!("the command was rejected: {rejection:?} ({rejection})"),
        }
    }
}

/// A submission of a job with one step that reads the job's input and is not retried: the smallest job,
/// for tests of the layers that carry commands.
pub fn one_step_job() -> crate::job::Command {
    use weft_events::domain::ids::{AgentId, DocumentId, WorkflowId};
    use weft_events::domain::workflow::{Input, RetryPolicy, Step};
    crate::job::Command::Submit {
        workflow: WorkflowId::new(),
        workflow_version: 1,
        steps: vec![Step {
            name: "only".into(),
            agent: AgentId::new(),
            instruction: "work".into(),
            inputs: vec![Input::JobInputs],
            timeout_ms: 1000,
            retry: RetryPolicy { max_attempts: 1, base_delay_ms: 0, max_delay_ms: 0 },
        }],
        inputs: vec![DocumentId::new()],
        priority: 0,
        idempotency_key: None,
        at: Timestamp(1),
    }
}

/// Stores an event in an envelope and reads it back, as the store would.
fn stored<E: DomainEvent + Debug + PartialEq>(event: &E) -> E {
    let envelope = event.to_new_event().unwrap_or_else(|e| panic!("{event:?} does not encode: {e}")).into_envelope(
        StreamName::new("testkit").expect("a valid name"),
        1,
        1,
        Timestamp(0),
    );
    let back = E::from_envelope(&envelope).unwrap_or_else(|e| panic!("{event:?} does not decode: {e}"));
    assert_eq!(&back, event, "the event changed on its way through the store");
    back
}
