//! The process managers drive jobs and schedules end to end over an in-memory store: the orchestrator, the
//! worker with the scripted test executor, and the timer service.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_actors::agent;
use weft_actors::host::{Execute, Host, Metadata, Options};
use weft_actors::job::{self, Job, Status, StepState};
use weft_actors::process::timers::{Timer, Timers};
use weft_actors::process::{Hosts, Processes, RunOptions, checkpoint_name, checkpoint_name_in};
use weft_actors::testkit::{Scripted, ScriptedExecutor, agent_profile, three_step_dag};
use weft_actors::{Aggregate, document, schedule, workflow};
use weft_events::domain::ids::{AgentId, DocumentId, JobId, ScheduleId, Uuid, WorkflowId};
use weft_events::domain::schedule::{GroupBy, Misfire, Strategy, Target};
use weft_events::domain::workflow::Step;
use weft_events::{EventStore, MemoryStore, StreamName, Timestamp, codec};

fn fast() -> RunOptions {
    RunOptions { checkpoint_every_events: 100, checkpoint_every_ms: 20, retry_min_ms: 5, retry_max_ms: 100 }
}

async fn run<A: Aggregate>(host: &Host<A>, stream: &StreamName, command: A::Command)
where
    A::Rejection: std::fmt::Debug,
{
    let execute =
        Execute { command_id: Uuid::now_v7(), command, expected_version: None, metadata: Metadata::default() };
    host.execute(stream, execute).await.expect("the set-up command goes through");
}

struct World {
    store: Arc<dyn EventStore>,
    hosts: Hosts,
    agent: AgentId,
}

async fn world() -> World {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::default());
    let hosts = Hosts::new(store.clone(), Options::default());
    let agent = AgentId::new();
    run(&hosts.agent, &agent.stream(), agent::Command::Register { profile: agent_profile(8), at: Timestamp::now() })
        .await;
    World { store, hosts, agent }
}

async fn submit(world: &World, steps: Vec<Step>) -> (JobId, DocumentId) {
    let (job, input) = (JobId::new(), DocumentId::new());
    let submit = job::Command::Submit {
        workflow: WorkflowId::new(),
        workflow_version: 1,
        steps,
        inputs: vec![input],
        priority: 0,
        idempotency_key: None,
        parameters: Default::default(),
        input_versions: Default::default(),
        replay_of: None,
        at: Timestamp::now(),
    };
    run(&world.hosts.job, &job.stream(), submit).await;
    (job, input)
}

/// Polls `check` until it gives something or the deadline passes.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn finished(hosts: &Hosts, job: JobId) -> Job {
    eventually("the job finishes", async || {
        let (state, _) = hosts.job.inspect(&job.stream()).await.unwrap();
        (state.status != Status::Running).then_some(state)
    })
    .await
}

fn output(job: &Job, step: &str) -> DocumentId {
    match job.progress[step] {
        StepState::Succeeded { output, .. } => output,
        other => panic!("{step} did not succeed: {other:?}"),
    }
}

fn runs_of(executor: &ScriptedExecutor) -> Vec<(String, u32)> {
    executor.runs().into_iter().map(|r| (r.step, r.attempt)).collect()
}

fn pair(step: &str, attempt: u32) -> (String, u32) {
    (step.to_owned(), attempt)
}

#[actix_rt::test]
async fn a_three_step_dag_with_a_failing_then_succeeding_step_runs_to_success() {
    let world = world().await;
    let executor = Rc::new(ScriptedExecutor::new().on("summarise", 1, Scripted::Fail { retryable: true }));
    let processes = Processes::start(world.hosts.clone(), world.store.clone(), Some(executor.clone()), fast());
    let (job, input) = submit(&world, three_step_dag(world.agent, 3, 20, 5_000)).await;

    let done = finished(&world.hosts, job).await;
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.progress["summarise"], StepState::Succeeded { attempt: 2, output: output(&done, "summarise") });
    assert_eq!(runs_of(&executor), [pair("extract", 1), pair("summarise", 1), pair("summarise", 2), pair("report", 1)]);
    // Each step read what its definition names.
    let runs = executor.runs();
    assert_eq!(runs[0].inputs, [input]);
    assert_eq!(runs[2].inputs, [output(&done, "extract")]);
    assert_eq!(runs[3].inputs, [output(&done, "extract"), output(&done, "summarise")]);
    let (agent, _) = world.hosts.agent.inspect(&world.agent.stream()).await.unwrap();
    assert_eq!((agent.finished_tasks, agent.open_tasks.len()), (4, 0));
    processes.stop().await.unwrap();
}

#[actix_rt::test]
async fn an_attempt_that_outlives_its_time_out_fails_and_is_retried() {
    let world = world().await;
    let executor = Rc::new(ScriptedExecutor::new().on("extract", 1, Scripted::Sleep { ms: 2_000 }));
    let processes = Processes::start(world.hosts.clone(), world.store.clone(), Some(executor.clone()), fast());
    let (job, _) = submit(&world, three_step_dag(world.agent, 2, 10, 200)).await;

    let done = finished(&world.hosts, job).await;
    assert_eq!(done.status, Status::Succeeded);
    assert!(matches!(done.progress["extract"], StepState::Succeeded { attempt: 2, .. }));
    let events = weft_actors::host::load_events::<Job>(&*world.store, &job.stream()).await.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, weft_events::domain::job::Event::StepFailed(f)
            if f.step == "extract" && f.attempt == 1 && f.retryable && f.error.contains("timed out"))),
        "{events:#?}"
    );
    processes.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_step_whose_agent_is_disabled_fails_the_job() {
    let world = world().await;
    let disable = agent::Command::Disable { reason: "retired".into(), at: Timestamp::now() };
    run(&world.hosts.agent, &world.agent.stream(), disable).await;
    let executor = Rc::new(ScriptedExecutor::new());
    let processes = Processes::start(world.hosts.clone(), world.store.clone(), Some(executor.clone()), fast());
    let (job, _) = submit(&world, three_step_dag(world.agent, 3, 10, 5_000)).await;

    let done = finished(&world.hosts, job).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.progress["extract"], StepState::Failed { attempt: 1 });
    assert!(executor.runs().is_empty());
    processes.stop().await.unwrap();
}

#[actix_rt::test]
async fn a_pending_retry_fires_after_the_processes_restart_from_their_checkpoints() {
    let world = world().await;
    let executor = Rc::new(ScriptedExecutor::new().on("extract", 1, Scripted::Fail { retryable: true }));
    let processes = Processes::start(world.hosts.clone(), world.store.clone(), Some(executor.clone()), fast());
    // A retry far enough out that the processes are stopped before it is due.
    let (job, _) = submit(&world, three_step_dag(world.agent, 2, 1_500, 5_000)).await;
    eventually("the retry is scheduled", async || {
        let (state, _) = world.hosts.job.inspect(&job.stream()).await.unwrap();
        matches!(state.progress["extract"], StepState::RetryWaiting { .. }).then_some(())
    })
    .await;
    // The timer service saves the pending retry with its checkpoint.
    eventually("the timer checkpoint holds the retry", async || {
        let saved = world.store.load_checkpoint(&checkpoint_name("timers")).await.unwrap()?;
        let timers: Timers = codec::decode(&saved.state).unwrap();
        timers.pending().any(|(_, t)| matches!(t, Timer::Retry { attempt: 2, .. })).then_some(())
    })
    .await;
    processes.stop().await.unwrap();

    // A new node: new hosts over the same store, new processes resuming from the checkpoints.
    let hosts = Hosts::new(world.store.clone(), Options::default());
    let processes = Processes::start(hosts.clone(), world.store.clone(), Some(executor.clone()), fast());
    let done = finished(&hosts, job).await;
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(runs_of(&executor)[..2], [pair("extract", 1), pair("extract", 2)]);
    processes.stop().await.unwrap();
}

/// Defines a workflow `digest` of three steps, one attempt each, for schedules to run.
async fn digest(world: &World) -> WorkflowId {
    let workflow = WorkflowId::new();
    let steps = three_step_dag(world.agent, 1, 10, 5_000);
    run(
        &world.hosts.workflow,
        &workflow.stream(),
        workflow::Command::Define { name: "digest".into(), steps, at: Timestamp::now() },
    )
    .await;
    workflow
}

#[actix_rt::test]
async fn a_schedule_fires_its_latest_missed_occurrence_once_with_a_job_per_group() {
    let world = world().await;
    let workflow = digest(&world).await;
    let mut documents = Vec::new();
    for (name, content_type) in [("a.pdf", "application/pdf"), ("b.txt", "text/plain"), ("c.pdf", "application/pdf")] {
        let document = DocumentId::new();
        let register = document::Command::Register {
            name: name.into(),
            content_type: content_type.into(),
            declared_size_bytes: 1000,
            tenant: "acme".into(),
            owner: "ann".into(),
            labels: Default::default(),
            at: Timestamp::now(),
        };
        run(&world.hosts.document, &document.stream(), register).await;
        documents.push(document);
    }
    // Every minute, created five minutes ago: five occurrences are missed by now.
    let created = Timestamp(Timestamp::now().0 - 5 * 60 * 1_000_000);
    let schedule = ScheduleId::new();
    run(
        &world.hosts.schedule,
        &schedule.stream(),
        schedule::Command::Create {
            cron: "* * * * *".into(),
            time_zone: "UTC".into(),
            workflow,
            target: Target::Documents(documents.clone()),
            strategy: Strategy::PerGroup(GroupBy::ContentType),
            misfire: Misfire::FireOnce,
            at: created,
        },
    )
    .await;
    let executor = Rc::new(ScriptedExecutor::new());
    let processes = Processes::start(world.hosts.clone(), world.store.clone(), Some(executor.clone()), fast());

    let fired = eventually("the schedule fires", async || {
        let (state, _) = world.hosts.schedule.inspect(&schedule.stream()).await.unwrap();
        (state.firings > 0).then_some(state)
    })
    .await;
    // One firing, for the latest of the missed occurrences, not the first.
    assert_eq!(fired.firings, 1);
    let last_due = fired.last_due.unwrap();
    assert!(last_due.0 >= created.0 + 4 * 60 * 1_000_000, "fired {last_due:?} for a schedule created at {created:?}");
    let events = weft_actors::host::load_events::<schedule::Schedule>(&*world.store, &schedule.stream()).await.unwrap();
    let Some(weft_events::domain::schedule::Event::Fired(firing)) = events.last() else { panic!("{events:?}") };
    // One job for the two PDFs, one for the text file.
    assert_eq!(firing.jobs.len(), 2);
    let mut inputs = Vec::new();
    for job in &firing.jobs {
        let done = finished(&world.hosts, *job).await;
        assert_eq!(done.status, Status::Succeeded);
        inputs.push(done.inputs.clone());
    }
    inputs.sort_by_key(|i| i.len());
    assert_eq!(inputs, [vec![documents[1]], vec![documents[0], documents[2]]]);
    processes.stop().await.unwrap();
}

#[test]
fn derived_command_ids_are_stable_and_distinct() {
    let cause = Uuid::from_u128(42);
    let id = weft_actors::process::derived_id;
    assert_eq!(id(cause, "assign"), id(cause, "assign"));
    assert_ne!(id(cause, "assign"), id(cause, "start"));
    assert_ne!(id(cause, "assign"), id(Uuid::from_u128(43), "assign"));
}

#[actix_rt::test]
async fn a_schedule_that_skips_misfires_does_not_fire_an_occurrence_found_long_past() {
    let world = world().await;
    let workflow = digest(&world).await;
    let document = DocumentId::new();
    // Hourly, at the minute half an hour from now: its latest occurrence is half an hour past, far beyond
    // the misfire threshold; created two hours ago, so that occurrence was missed.
    let minute = (Timestamp::now().0 / 60_000_000 + 30) % 60;
    let created = Timestamp(Timestamp::now().0 - 2 * 3_600 * 1_000_000);
    // Ids that order the skipping schedule's timer before its twin's, for timers due at the same time.
    let (skipping, twin) = (ScheduleId(Uuid::from_u128(1)), ScheduleId(Uuid::from_u128(2)));
    for (schedule, misfire) in [(skipping, Misfire::Skip), (twin, Misfire::FireOnce)] {
        let create = schedule::Command::Create {
            cron: format!("{minute} * * * *"),
            time_zone: "UTC".into(),
            workflow,
            target: Target::Documents(vec![document]),
            strategy: Strategy::PerDocument,
            misfire,
            at: created,
        };
        run(&world.hosts.schedule, &schedule.stream(), create).await;
    }
    let executor = Rc::new(ScriptedExecutor::new());
    let processes = Processes::start(world.hosts.clone(), world.store.clone(), Some(executor.clone()), fast());
    // The twin fires its missed occurrence; the skipping one, handled just before it, fired none.
    eventually("the twin fires", async || {
        let (state, _) = world.hosts.schedule.inspect(&twin.stream()).await.unwrap();
        (state.firings == 1).then_some(())
    })
    .await;
    processes.stop().await.unwrap();
    let (state, _) = world.hosts.schedule.inspect(&skipping.stream()).await.unwrap();
    assert_eq!(state.firings, 0, "{state:?}");
}

/// A process whose handler panics on the first event it sees, once; it records what it handled.
struct Fragile {
    panicked: std::cell::Cell<bool>,
    handled: Rc<std::cell::RefCell<Vec<u64>>>,
}

#[async_trait::async_trait(?Send)]
impl weft_actors::process::Process for Fragile {
    const NAME: &'static str = "fragile";
    type State = ();

    async fn handle(&self, _: &mut (), event: &weft_events::Envelope) -> Result<(), weft_actors::process::Retry> {
        if !self.panicked.replace(true) {
            panic!("a bug in a handler");
        }
        self.handled.borrow_mut().push(event.position);
        Ok(())
    }
}

#[actix_rt::test]
async fn a_process_that_ends_is_restarted_from_its_checkpoint_and_says_so() {
    use weft_events::health::State;
    let world = world().await;
    let handled = Rc::new(std::cell::RefCell::new(Vec::new()));
    let fragile = Fragile { panicked: std::cell::Cell::new(false), handled: handled.clone() };
    let running = weft_actors::process::start(fragile, world.store.clone(), fast());
    let health = running.health();
    let head = world.store.head().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handled.borrow().last() != Some(&head) {
        assert!(Instant::now() < deadline, "the process never came back: {:?}", health.report());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Restarted once, from the start (nothing was checkpointed), and running again.
    assert_eq!(*handled.borrow(), (1..=head).collect::<Vec<_>>());
    let report = health.report();
    assert_eq!((report.state, report.restarts), (State::Running, 1), "{report:?}");
    running.stop().await.unwrap();
    assert_eq!(health.report().state, State::Stopped);
}

/// Submits a one-step job for `agent` as `tenant` with `priority`; its step is named `step`.
async fn submit_as(world: &World, agent: AgentId, tenant: &str, priority: i32, step: &str) -> DocumentId {
    let input = DocumentId::new();
    let mut steps = three_step_dag(agent, 1, 10, 30_000);
    steps.truncate(1);
    steps[0].name = step.into();
    let submit = job::Command::Submit {
        workflow: WorkflowId::new(),
        workflow_version: 1,
        steps,
        inputs: vec![input],
        priority,
        idempotency_key: None,
        parameters: Default::default(),
        input_versions: Default::default(),
        replay_of: None,
        at: Timestamp::now(),
    };
    let metadata = Metadata { tenant: Some(tenant.into()), ..Metadata::default() };
    let execute = Execute { command_id: Uuid::now_v7(), command: submit, expected_version: None, metadata };
    world.hosts.job.execute(&JobId::new().stream(), execute).await.expect("the job is submitted");
    input
}

#[actix_rt::test]
async fn a_saturated_agent_serves_higher_priorities_first_and_the_tenants_of_one_priority_in_turn() {
    let world = world().await;
    // One slot, held by a step that takes a while: everything after it waits in line.
    let agent = AgentId::new();
    run(
        &world.hosts.agent,
        &agent.stream(),
        agent::Command::Register { profile: agent_profile(1), at: Timestamp::now() },
    )
    .await;
    let executor = Rc::new(ScriptedExecutor::new().on("hold", 1, Scripted::Sleep { ms: 3_000 }));
    let processes = Processes::start(world.hosts.clone(), world.store.clone(), Some(executor.clone()), fast());
    submit_as(&world, agent, "a", 0, "hold").await;
    eventually("the first step holds the slot", async || (executor.runs().len() == 1).then_some(())).await;

    // Submitted in this order: (tenant, priority, name).
    let jobs = [
        ("a", 0, "a-low-1"),
        ("a", 0, "a-low-2"),
        ("b", 0, "b-low-1"),
        ("a", 0, "a-low-3"),
        ("a", 5, "a-high-1"),
        ("b", 0, "b-low-2"),
        ("b", 5, "b-high-1"),
        ("a", 5, "a-high-2"),
        ("a", 0, "a-low-4"),
    ];
    for (tenant, priority, name) in jobs {
        submit_as(&world, agent, tenant, priority, name).await;
    }
    eventually("every step waits in line", async || (processes.waiting() == [(agent, jobs.len())]).then_some(())).await;
    eventually("every step has run", async || (executor.runs().len() == 1 + jobs.len()).then_some(())).await;

    let served: Vec<String> = executor.runs().into_iter().skip(1).map(|r| r.step).collect();
    let level = |priority: i32| -> Vec<&str> {
        served.iter().map(String::as_str).filter(|s| jobs.iter().any(|(_, p, n)| n == s && *p == priority)).collect()
    };
    // Every high step before any low one.
    assert_eq!(served[..3].iter().filter(|s| s.contains("high")).count(), 3, "{served:?}");
    for priority in [5, 0] {
        let order = level(priority);
        for tenant in ["a", "b"] {
            let theirs: Vec<&str> = order.iter().copied().filter(|s| s.starts_with(tenant)).collect();
            let mut logged = theirs.clone();
            logged.sort();
            assert_eq!(theirs, logged, "{tenant}'s steps in log order: {served:?}");
        }
        // The tenants take turns while both have steps waiting: a tenant goes twice in a row only when the
        // other has none left.
        for (i, pair) in order.windows(2).enumerate() {
            if pair[0][..1] == pair[1][..1] {
                let other = if pair[0].starts_with('a') { "b" } else { "a" };
                assert!(!order[i + 1..].iter().any(|s| s.starts_with(other)), "{other} was passed over: {served:?}");
            }
        }
    }
    assert_eq!(processes.waiting(), []);
    processes.stop().await.unwrap();
}

/// A process that passes events on and keeps no state: one of a partition, with no checkpoint of its own,
/// takes over from the whole log's checkpoint of its name. It records what it handled.
struct Relay {
    handled: Rc<std::cell::RefCell<Vec<u64>>>,
}

#[async_trait::async_trait(?Send)]
impl weft_actors::process::Process for Relay {
    const NAME: &'static str = "relay";
    type State = ();

    async fn handle(&self, _: &mut (), event: &weft_events::Envelope) -> Result<(), weft_actors::process::Retry> {
        self.handled.borrow_mut().push(event.position);
        Ok(())
    }

    fn seed(&self, partition: Option<weft_events::Partition>) -> Option<StreamName> {
        partition.is_some().then(|| checkpoint_name(Self::NAME))
    }
}

#[actix_rt::test]
async fn a_partitions_process_with_no_checkpoint_starts_at_its_seed_and_then_from_its_own() {
    let world = world().await;
    let partition = weft_events::Partition { index: 1, count: 2 };
    // Submits jobs until `n` of them fell in the partition.
    let jobs_in = async |n: usize| {
        let mut fell = 0;
        while fell < n {
            let (job, _) = submit(&world, three_step_dag(world.agent, 3, 10, 5_000)).await;
            fell += usize::from(partition.contains(&job.stream()));
        }
    };
    // The partition's events past `from`, by position.
    let past = async |from: u64| -> Vec<u64> {
        let events = world.store.read_all(1, 10_000).await.unwrap().into_iter();
        events.filter(|e| e.position > from && partition.contains(&e.stream)).map(|e| e.position).collect()
    };
    let relay = |handled: &Rc<std::cell::RefCell<Vec<u64>>>| {
        let relay = Relay { handled: handled.clone() };
        weft_actors::process::start_in(relay, world.store.clone(), fast(), Some(partition))
    };

    jobs_in(2).await;
    // The whole log's relay had got this far.
    let seed = world.store.head().await.unwrap();
    let state = codec::encode(&()).unwrap().into();
    world
        .store
        .save_checkpoint(weft_events::Checkpoint { name: checkpoint_name("relay"), position: seed, state })
        .await
        .unwrap();
    jobs_in(3).await;
    let wanted = past(seed).await;

    let handled = Rc::new(std::cell::RefCell::new(Vec::new()));
    let running = relay(&handled);
    eventually("the relay reaches the partition's last event", async || {
        (handled.borrow().last() == wanted.last()).then_some(())
    })
    .await;
    running.stop().await.unwrap();
    // From the seed on, the partition's events only, each once.
    assert_eq!(*handled.borrow(), wanted);
    // It saved a checkpoint of its own, and resumes from it, not from the seed.
    let own = world.store.load_checkpoint(&checkpoint_name_in("relay", Some(partition))).await.unwrap().unwrap();
    assert_eq!(own.position, *wanted.last().unwrap());
    jobs_in(1).await;
    let wanted = past(own.position).await;
    let again = Rc::new(std::cell::RefCell::new(Vec::new()));
    let running = relay(&again);
    eventually("the relay reaches the new event", async || (again.borrow().last() == wanted.last()).then_some(()))
        .await;
    running.stop().await.unwrap();
    assert_eq!(*again.borrow(), wanted);
}
