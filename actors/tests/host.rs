//! The actor host on a real (in-memory) event store: replies after the append, idempotent commands across
//! passivation and hosts, conflicts between two hosts, supervision of panics, snapshots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_actors::Aggregate;
use weft_actors::host::{Error, Execute, Host, Metadata, Options};
use weft_actors::job::{Command as JobCommand, Job, Rejection as JobRejection};
use weft_events::domain::ids::{DocumentId, JobId, Uuid};
use weft_events::domain::job::Level;
use weft_events::domain::workflow::{Input, RetryPolicy, Step};
use weft_events::{
    DecodeError, Direction, DomainEvent, Envelope, EventRead, MemoryStore, NewEvent, StreamName, Timestamp, codec,
};

/// A counter, with a command that panics: the smallest aggregate that exercises the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CounterCommand {
    Add(u64),
    Poison,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Added {
    n: u64,
}

impl DomainEvent for Added {
    const AGGREGATE: &'static str = "counter";

    fn event_type(&self) -> &'static str {
        "counter.added"
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn to_new_event(&self) -> Result<NewEvent, codec::Error> {
        Ok(NewEvent::new("counter.added", codec::encode(self)?))
    }

    fn from_envelope(envelope: &Envelope) -> Result<Self, DecodeError> {
        codec::decode(&envelope.payload)
            .map_err(|source| DecodeError::Payload { event_type: envelope.event_type.to_string(), source })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const KIND: &'static str = "counter";
    type Command = CounterCommand;
    type Event = Added;
    type Rejection = Never;

    fn decide(&self, command: &CounterCommand) -> Result<Vec<Added>, Never> {
        match command {
            CounterCommand::Add(n) => Ok(vec![Added { n: *n }]),
            CounterCommand::Poison => panic!("poisoned command"),
        }
    }

    fn evolve(mut self, event: &Added) -> Self {
        self.total += event.n;
        self
    }
}

fn execute<A: Aggregate>(command: A::Command) -> Execute<A> {
    Execute { command_id: Uuid::now_v7(), command, expected_version: None, metadata: Metadata::default() }
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn total(store: &MemoryStore, s: &StreamName) -> u64 {
    let events = store.read_stream(s, 1, Direction::Forwards, 10_000).await.unwrap();
    events.iter().map(|e| Added::from_envelope(e).unwrap().n).sum()
}

use weft_actors::testkit::one_step_job as submit;

#[actix_rt::test]
async fn a_command_is_answered_after_its_events_are_stored_with_their_cause() {
    let store = MemoryStore::default();
    let host = Host::<Job>::new(Arc::new(store.clone()), Options::default());
    let s = JobId::new().stream();
    let mut command = execute::<Job>(submit());
    command.metadata = Metadata {
        tenant: Some("acme".into()),
        actor: Some("user:alice".into()),
        correlation_id: Some(Uuid::now_v7()),
        owner: None,
    };
    let outcome = host.execute(&s, command.clone()).await.unwrap();
    assert_eq!((outcome.version, outcome.positions, outcome.repeated), (2, Some((1, 2)), false));
    let stored = store.read_stream(&s, 1, Direction::Forwards, 10).await.unwrap();
    assert_eq!(stored.len(), 2);
    for e in &stored {
        assert_eq!(e.causation_id, Some(command.command_id));
        assert_eq!(e.correlation_id, command.metadata.correlation_id);
        assert_eq!((&*e.tenant, &*e.actor), ("acme", "user:alice"));
    }
}

#[actix_rt::test]
async fn a_rejected_command_appends_nothing() {
    let store = MemoryStore::default();
    let host = Host::<Job>::new(Arc::new(store.clone()), Options::default());
    let s = JobId::new().stream();
    let log = JobCommand::AppendLog { level: Level::Info, message: "too early".into(), at: Timestamp(1) };
    assert_eq!(host.execute(&s, execute::<Job>(log)).await, Err(Error::Rejected(JobRejection::NotSubmitted)));
    assert_eq!(store.head().await.unwrap(), 0);
}

#[actix_rt::test]
async fn a_repeated_command_returns_its_first_outcome_after_passivation_and_on_another_host() {
    let store = MemoryStore::default();
    let options = Options { idle_timeout_ms: 20, ..Options::default() };
    let host = Host::<Counter>::new(Arc::new(store.clone()), options.clone());
    let s = stream("counter-repeat");
    let command = execute::<Counter>(CounterCommand::Add(5));
    let first = host.execute(&s, command.clone()).await.unwrap();
    let again = host.execute(&s, command.clone()).await.unwrap();
    assert_eq!((again.version, again.positions, again.repeated), (first.version, first.positions, true));
    // Idle: the actor passivates; the next delivery rehydrates it from the store.
    eventually("the actor passivated", || host.live() == 0).await;
    let after_passivation = host.execute(&s, command.clone()).await.unwrap();
    assert_eq!((after_passivation.positions, after_passivation.repeated), (first.positions, true));
    // A host of another process, on the same store.
    let other = Host::<Counter>::new(Arc::new(store.clone()), options);
    assert!(other.execute(&s, command).await.unwrap().repeated);
    assert_eq!(total(&store, &s).await, 5);
}

#[actix_rt::test]
async fn past_the_cap_the_least_recently_used_actors_stop() {
    let store = MemoryStore::default();
    // A long idle time-out: only the cap can stop them.
    let options = Options { max_live: 10, idle_timeout_ms: 600_000, ..Options::default() };
    let host = Host::<Counter>::new(Arc::new(store.clone()), options);
    for i in 0..100 {
        host.execute(&stream(&format!("counter-cap{i}")), execute::<Counter>(CounterCommand::Add(1))).await.unwrap();
    }
    // `live` counts actors running (started, not stopped), not addresses the host keeps.
    eventually("the evicted actors stopped", || host.live() <= 10).await;
    // An evicted instance comes back from the store, with one actor, not a second beside the first.
    let s = stream("counter-cap0");
    assert_eq!(host.execute(&s, execute::<Counter>(CounterCommand::Add(1))).await.unwrap().version, 2);
    eventually("still at most the cap", || host.live() <= 10).await;
    assert_eq!(total(&store, &s).await, 2);
}

#[actix_rt::test]
async fn a_failed_activation_says_why() {
    let store = MemoryStore::default();
    let s = stream("counter-unreadable");
    // An event the counter cannot read: activation fails on it.
    let garbage = NewEvent::new("counter.added", b"\xc1 not msgpack".to_vec());
    weft_events::EventWrite::append(&store, &s, weft_events::ExpectedVersion::NoStream, vec![garbage]).await.unwrap();
    let host = Host::<Counter>::new(Arc::new(store), Options::default());
    let refused = host.execute(&s, execute::<Counter>(CounterCommand::Add(1))).await;
    let Err(Error::Unavailable(message)) = &refused else { panic!("{refused:?}") };
    assert!(message.contains("counter.added"), "the reason is missing: {message}");
}

#[actix_rt::test]
async fn a_command_for_another_version_is_a_conflict() {
    let store = MemoryStore::default();
    let host = Host::<Counter>::new(Arc::new(store.clone()), Options::default());
    let s = stream("counter-expected");
    host.execute(&s, execute::<Counter>(CounterCommand::Add(1))).await.unwrap();
    let mut stale = execute::<Counter>(CounterCommand::Add(1));
    stale.expected_version = Some(0);
    assert_eq!(host.execute(&s, stale).await, Err(Error::Conflict { expected: 0, actual: 1 }));
    let mut current = execute::<Counter>(CounterCommand::Add(1));
    current.expected_version = Some(1);
    assert_eq!(host.execute(&s, current).await.unwrap().version, 2);
}

#[actix_rt::test]
async fn a_panicking_command_restarts_the_actor_from_the_store_and_the_next_command_works() {
    let store = MemoryStore::default();
    let host = Host::<Counter>::new(Arc::new(store.clone()), Options::default());
    let s = stream("counter-poison");
    host.execute(&s, execute::<Counter>(CounterCommand::Add(2))).await.unwrap();
    let poisoned = host.execute(&s, execute::<Counter>(CounterCommand::Poison)).await;
    assert!(matches!(&poisoned, Err(Error::Unavailable(m)) if m.contains("poisoned command")), "{poisoned:?}");
    let next = host.execute(&s, execute::<Counter>(CounterCommand::Add(3))).await.unwrap();
    assert_eq!(next.version, 2, "the state survived the panic");
    assert_eq!(total(&store, &s).await, 5);
}

#[actix_rt::test]
async fn a_restart_storm_is_stopped_with_a_clear_error() {
    let store = MemoryStore::default();
    let options = Options { max_restarts: 2, restart_window_ms: 60_000, ..Options::default() };
    let host = Host::<Counter>::new(Arc::new(store), options);
    let s = stream("counter-storm");
    for _ in 0..3 {
        assert!(matches!(
            host.execute(&s, execute::<Counter>(CounterCommand::Poison)).await,
            Err(Error::Unavailable(_))
        ));
    }
    let refused = host.execute(&s, execute::<Counter>(CounterCommand::Add(1))).await;
    assert!(matches!(&refused, Err(Error::Unavailable(m)) if m.contains("panicked more than 2 times")), "{refused:?}");
    // Other instances are not affected.
    host.execute(&stream("counter-calm"), execute::<Counter>(CounterCommand::Add(1))).await.unwrap();
}

#[actix_rt::test]
async fn two_hosts_on_one_store_lose_no_update() {
    let store = MemoryStore::default();
    let hosts = [
        Host::<Counter>::new(Arc::new(store.clone()), Options { max_conflict_retries: 100, ..Options::default() }),
        Host::<Counter>::new(Arc::new(store.clone()), Options { max_conflict_retries: 100, ..Options::default() }),
    ];
    let s = stream("counter-contended");
    let mut sends = Vec::new();
    for i in 0..200u64 {
        let host = hosts[(i % 2) as usize].clone();
        let s = s.clone();
        sends.push(actix_rt::spawn(async move { host.execute(&s, execute::<Counter>(CounterCommand::Add(1))).await }));
    }
    for send in sends {
        send.await.unwrap().unwrap();
    }
    let events = store.read_stream(&s, 1, Direction::Forwards, 1000).await.unwrap();
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());
    assert_eq!(total(&store, &s).await, 200);
}

#[actix_rt::test]
async fn a_host_with_a_stale_actor_does_not_refuse_what_another_host_made_possible() {
    use weft_actors::agent::{Agent, Command as AgentCommand};
    let store = MemoryStore::default();
    let (a, b) = (
        Host::<Agent>::new(Arc::new(store.clone()), Options::default()),
        Host::<Agent>::new(Arc::new(store.clone()), Options::default()),
    );
    let agent = stream("agent-0190c2a0-0000-7000-8000-000000000001");
    let profile = weft_actors::testkit::agent_profile(2);
    b.execute(&agent, execute::<Agent>(AgentCommand::Register { profile, at: Timestamp(1) })).await.unwrap();
    // Host A assigns a task; host B's actor is live and has not seen it.
    let task = Uuid::from_u128(5);
    let assign = AgentCommand::AssignTask { task, job: JobId::new(), step: "s".into(), attempt: 1, at: Timestamp(2) };
    a.execute(&agent, execute::<Agent>(assign)).await.unwrap();
    let start = execute::<Agent>(AgentCommand::StartTask { task, at: Timestamp(3) });
    let outcome = b.execute(&agent, start.clone()).await.unwrap();
    assert_eq!(outcome.version, 3);
    // And a repeat on A, whose actor has not seen the start, answers the first outcome.
    let again = a.execute(&agent, start).await.unwrap();
    assert_eq!((again.version, again.repeated), (3, true));
}

#[actix_rt::test]
async fn snapshots_are_saved_and_activation_starts_from_them() {
    let store = MemoryStore::default();
    let options = Options { snapshot_every: 10, ..Options::default() };
    let host = Host::<Counter>::new(Arc::new(store.clone()), options.clone());
    let s = stream("counter-snap");
    let mut last = None;
    for n in 1..=25 {
        let command = execute::<Counter>(CounterCommand::Add(n));
        host.execute(&s, command.clone()).await.unwrap();
        last = Some(command);
    }
    let store_for_poll = store.clone();
    let s_for_poll = s.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = store_for_poll.load_snapshot(&s_for_poll).await.unwrap();
        if snapshot.as_ref().is_some_and(|s| s.version == 20) {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot at version 20: {snapshot:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A fresh host activates from the snapshot plus 5 events, and still knows the last command.
    let fresh = Host::<Counter>::new(Arc::new(store.clone()), options);
    assert!(fresh.execute(&s, last.unwrap()).await.unwrap().repeated);
    let next = fresh.execute(&s, execute::<Counter>(CounterCommand::Add(0))).await.unwrap();
    assert_eq!(next.version, 26);
    assert_eq!(total(&store, &s).await, (1..=25).sum::<u64>());
}

/// Random runs of a job through the host: the state the actor holds equals the events folded from scratch,
/// and a fresh host activating from the snapshots plus the events after them holds the same.
mod rehydration {
    use proptest::prelude::*;
    use weft_actors::job::StepState;

    use super::*;

    fn dag_steps(n: usize) -> Vec<Step> {
        (0..n)
            .map(|i| Step {
                name: format!("s{i}"),
                agent: weft_events::domain::ids::AgentId(Uuid::from_u128(i as u128)),
                instruction: "work".into(),
                inputs: if i == 0 { vec![Input::JobInputs] } else { vec![Input::Step(format!("s{}", i / 2))] },
                timeout_ms: 1000,
                retry: RetryPolicy { max_attempts: 3, base_delay_ms: 1, max_delay_ms: 4 },
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn the_actor_state_equals_the_replayed_state(steps in 1usize..6, choices in proptest::collection::vec(0u8..4, 40), snapshot_every in 1u64..5) {
            actix_rt::System::new().block_on(async move {
                let store = MemoryStore::default();
                let options = Options { snapshot_every, ..Options::default() };
                let host = Host::<Job>::new(Arc::new(store.clone()), options.clone());
                let s = JobId::new().stream();
                let mut command = submit();
                if let JobCommand::Submit { steps: definition, .. } = &mut command {
                    *definition = dag_steps(steps);
                }
                host.execute(&s, execute::<Job>(command)).await.unwrap();
                let mut now = Timestamp(10);
                for choice in choices {
                    let (state, _) = host.inspect(&s).await.unwrap();
                    if state.status != weft_actors::job::Status::Running {
                        break;
                    }
                    let Some((name, step)) = state.progress.iter().find(|(_, st)| !matches!(st, StepState::Waiting | StepState::Succeeded { .. } | StepState::Failed { .. })).map(|(n, st)| (n.clone(), *st)) else { break };
                    now = now.plus_millis(10);
                    let command = match (step, choice) {
                        (StepState::Scheduled { attempt }, _) => JobCommand::StartStep { step: name, attempt, at: now },
                        (StepState::Running { attempt }, 0) => JobCommand::FailStep { step: name, attempt, error: "x".into(), retryable: true, jitter: 0.5, at: now },
                        (StepState::Running { attempt }, 1) => JobCommand::AppendLog { level: Level::Info, message: format!("{name} {attempt}"), at: now },
                        (StepState::Running { attempt }, _) => JobCommand::CompleteStep { step: name, attempt, output: DocumentId::new(), at: now },
                        (StepState::RetryWaiting { attempt, due_at }, _) => { now = now.max(due_at); JobCommand::RetryDue { step: name, attempt, at: now } }
                        _ => unreachable!(),
                    };
                    host.execute(&s, execute::<Job>(command)).await.unwrap();
                }
                let (held, version) = host.inspect(&s).await.unwrap();
                let events = weft_actors::host::load_events::<Job>(&store, &s).await.unwrap();
                assert_eq!(version, events.len() as u64);
                assert_eq!(held, Job::replay(&events), "the actor's state differs from the replayed events");
                let fresh = Host::<Job>::new(Arc::new(store.clone()), options);
                let (rehydrated, fresh_version) = fresh.inspect(&s).await.unwrap();
                assert_eq!((rehydrated, fresh_version), (held, version), "rehydrating from snapshots differs");
            });
        }
    }
}

#[actix_rt::test]
async fn an_instance_answers_only_commands_of_its_own_tenant_even_after_a_snapshot_and_a_new_host() {
    let store = MemoryStore::default();
    let stream = StreamName::new("counter-tenanted").unwrap();
    let options = Options { snapshot_every: 2, idle_timeout_ms: 20, ..Options::default() };
    let of = |tenant: Option<&str>| Execute::<Counter> {
        command_id: Uuid::now_v7(),
        command: CounterCommand::Add(1),
        expected_version: None,
        metadata: Metadata { tenant: tenant.map(str::to_owned), actor: None, correlation_id: None, owner: None },
    };
    let host = Host::<Counter>::new(Arc::new(store.clone()), options.clone());
    host.execute(&stream, of(Some("acme"))).await.unwrap();
    assert_eq!(host.execute(&stream, of(Some("globex"))).await, Err(Error::OtherTenant));
    // The node's own commands (no tenant) and the instance's tenant's go through; snapshots are taken.
    for _ in 0..4 {
        host.execute(&stream, of(None)).await.unwrap();
        host.execute(&stream, of(Some("acme"))).await.unwrap();
    }
    // Another host activates it from its snapshot: it still knows whose it is.
    let other = Host::<Counter>::new(Arc::new(store.clone()), options);
    assert_eq!(other.execute(&stream, of(Some("globex"))).await, Err(Error::OtherTenant));
    other.execute(&stream, of(Some("acme"))).await.unwrap();
    let events = store.read_stream(&stream, 1, Direction::Forwards, 100).await.unwrap();
    assert_eq!(events.len(), 10, "the refused commands appended nothing");
    // The events of commands that named no tenant are the instance's tenant's too (sealed with its key).
    assert!(events.iter().all(|e| &*e.tenant == "acme"), "{:?}", events.iter().map(|e| &e.tenant).collect::<Vec<_>>());
    // So are those of commands combined into one append.
    let combined = futures::future::join_all((0..20).map(|_| other.execute(&stream, of(None)))).await;
    assert!(combined.iter().all(Result::is_ok), "{combined:?}");
    let events = store.read_stream(&stream, 1, Direction::Forwards, 100).await.unwrap();
    assert_eq!(events.len(), 30);
    assert!(events.iter().all(|e| &*e.tenant == "acme"));
}

/// A store that finds a multi-event append worth it only from eight events (as JetStream's single-server
/// stream does from twelve messages) gets commands that wait together one append each while fewer than eight
/// wait, and combined appends of at least eight events otherwise; no command is lost or stored twice.
#[actix_rt::test]
async fn commands_that_wait_together_are_combined_only_from_the_store_s_floor() {
    let store = MemoryStore::combining_from(8);
    let host = Host::<Counter>::new(Arc::new(store.clone()), Options::default());
    let s = stream("counter-floor");
    host.execute(&s, execute::<Counter>(CounterCommand::Add(0))).await.unwrap();
    // A few at once, then many at once, then a few again.
    let mut n = 0;
    for wave in [5, 150, 3] {
        let commands: Vec<_> = (0..wave)
            .map(|_| {
                n += 1;
                execute::<Counter>(CounterCommand::Add(n))
            })
            .collect();
        for answer in futures::future::join_all(commands.into_iter().map(|c| host.execute(&s, c))).await {
            answer.unwrap();
        }
    }
    let stored = store.read_stream(&s, 1, Direction::Forwards, 10_000).await.unwrap();
    assert_eq!(stored.len(), 1 + 158, "one event per command and the first");
    assert_eq!(total(&store, &s).await, (1..=158).sum::<u64>());
    // The events of one append share their time of recording.
    let mut sizes = std::collections::BTreeMap::<i64, usize>::new();
    for event in &stored[1..] {
        *sizes.entry(event.recorded_at.0).or_default() += 1;
    }
    assert!(sizes.values().all(|&size| size == 1 || size >= 8), "append sizes {:?}", sizes.values());
    assert!(sizes.values().any(|&size| size >= 8), "the 150 waited together at least in part: {:?}", sizes.values());
}

/// Commands sent to one instance at once: those that wait behind an append go to the store together, and
/// each is still decided in arrival order and answered with its own place. Repeats of a command id answer the
/// first outcome, a wrong expected version is a conflict, and nothing is stored twice or lost.
#[actix_rt::test]
async fn commands_that_wait_together_share_an_append_and_keep_their_own_outcomes() {
    let store = MemoryStore::default();
    let host = Host::<Counter>::new(Arc::new(store.clone()), Options::default());
    let s = stream("counter-batch");
    // The instance exists, so the commands after it can be combined.
    host.execute(&s, execute::<Counter>(CounterCommand::Add(0))).await.unwrap();
    let commands: Vec<Execute<Counter>> = (1..=150).map(|n| execute::<Counter>(CounterCommand::Add(n))).collect();
    let mut sent: Vec<(usize, Execute<Counter>)> = commands.iter().cloned().enumerate().collect();
    // Every fifth command is sent twice, the copy among the others.
    for i in (0..150).step_by(5) {
        sent.insert(i + 3, (i, commands[i].clone()));
    }
    let mut stale = execute::<Counter>(CounterCommand::Add(1_000_000));
    stale.expected_version = Some(1);
    let answers = futures::future::join_all(sent.into_iter().map(|(i, command)| {
        let (host, s) = (&host, &s);
        async move { (i, command.command_id, host.execute(s, command).await) }
    }));
    let (answers, stale_answer) = futures::join!(answers, host.execute(&s, stale));
    assert!(matches!(stale_answer, Err(Error::Conflict { expected: 1, .. })), "{stale_answer:?}");
    let stored = store.read_stream(&s, 1, Direction::Forwards, 10_000).await.unwrap();
    assert_eq!(stored.len(), 151, "one event per distinct command and the first");
    assert_eq!(total(&store, &s).await, (1..=150).sum::<u64>());
    // The events of one append share their time of recording: the commands went in a few appends (each copy
    // ends a run, as a repeat is answered alone; one at a time they would be 150).
    let appends: std::collections::BTreeSet<i64> = stored[1..].iter().map(|e| e.recorded_at.0).collect();
    assert!(appends.len() <= 40, "150 commands in {} appends", appends.len());
    let mut first_outcomes = std::collections::HashMap::new();
    for (i, id, answer) in &answers {
        let outcome = answer.as_ref().unwrap_or_else(|e| panic!("command {i}: {e:?}"));
        let (from, to) = outcome.positions.expect("positions");
        assert_eq!(from, to, "one event per command");
        let event = stored.iter().find(|e| e.position == from).expect("the event at the outcome's position");
        assert_eq!(event.causation_id, Some(*id));
        assert_eq!(event.version, outcome.version);
        assert_eq!(Added::from_envelope(event).unwrap().n, *i as u64 + 1);
        if let Some(previous) = first_outcomes.insert(*id, (outcome.version, outcome.positions)) {
            assert_eq!(previous, (outcome.version, outcome.positions), "a repeat answers the first outcome");
        }
    }
    let repeated = answers.iter().filter(|(_, _, a)| a.as_ref().unwrap().repeated).count();
    assert_eq!(repeated, 30, "each copy, and only the copies, answered as repeats");
    let mut versions: Vec<u64> = first_outcomes.values().map(|(v, _)| *v).collect();
    versions.sort_unstable();
    assert_eq!(versions, (2..=151).collect::<Vec<_>>());
}
