//! Jobs survive SIGKILL of the process running them, and no step runs more often than its recorded attempts.
//!
//! The test runs its own binary again as a child process: a node with the SQLite store, the actor hosts,
//! the orchestrator, the worker (with the scripted test executor, which appends `step attempt` to a run log,
//! flushed to disk, as each run begins) and the timer service. The child submits one job of a 3-step DAG whose
//! last two steps fail once each, then runs until the job is finished. The parent kills the child with SIGKILL just
//! as a step begins to run, several times, then lets one child finish. It checks that the job succeeded, that
//! no attempt of a step ran twice, and that every run is an attempt the job recorded as started.
//!
//! The second test does the same with 200 jobs at once on an agent of 16 slots (the process managers overlap
//! them), scripted to end four ways, and also checks each job's end and the order of its steps' runs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use weft::store::sqlite::{Options, SqliteStore};
use weft_actors::host::{self, Execute, Metadata};
use weft_actors::job::{self, Job, Status};
use weft_actors::process::{Hosts, Processes, RunOptions};
use weft_actors::testkit::{Scripted, ScriptedExecutor, agent_profile, three_step_dag};
use weft_actors::{Aggregate, agent};
use weft_events::domain::ids::{AgentId, DocumentId, JobId, Uuid, WorkflowId};
use weft_events::domain::job::Event;
use weft_events::{EventStore, Timestamp};

const CHILD_DIR: &str = "WEFT_JOB_CRASH_DIR";

/// Kills at most, before a child may finish.
const KILLS: usize = 4;

fn ids() -> (AgentId, JobId, DocumentId) {
    (AgentId(Uuid::from_u128(1)), JobId(Uuid::from_u128(2)), DocumentId(Uuid::from_u128(3)))
}

/// Sends a set-up command with a fixed id, so that every child sends it and only the first takes effect.
async fn once<A: Aggregate>(host: &host::Host<A>, stream: &weft_events::StreamName, n: u128, command: A::Command)
where
    A::Rejection: std::fmt::Debug,
{
    let execute =
        Execute { command_id: Uuid::from_u128(n), command, expected_version: None, metadata: Metadata::default() };
    host.execute(stream, execute).await.expect("the set-up command goes through");
}

/// The child: a node that runs the job until it is finished, then prints `finished`.
fn child(dir: &Path) {
    actix_rt::System::new().block_on(async {
        let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(Options::new(dir.join("events.db"))).unwrap());
        let hosts = Hosts::new(store.clone(), host::Options::default());
        let (agent, job, input) = ids();
        once(
            &hosts.agent,
            &agent.stream(),
            1,
            agent::Command::Register { profile: agent_profile(4), at: Timestamp::now() },
        )
        .await;
        let submit = job::Command::Submit {
            workflow: WorkflowId(Uuid::from_u128(4)),
            workflow_version: 1,
            steps: three_step_dag(agent, 8, 20, 10_000),
            inputs: vec![input],
            priority: 0,
            idempotency_key: None,
            parameters: Default::default(),
            input_versions: Default::default(),
            replay_of: None,
            at: Timestamp::now(),
        };
        once(&hosts.job, &job.stream(), 2, submit).await;
        let executor = ScriptedExecutor::new()
            .on("summarise", 1, Scripted::Fail { retryable: true })
            .on("report", 1, Scripted::Fail { retryable: true })
            .delay_ms(150)
            .log_to(dir.join("runs"));
        let options = RunOptions { checkpoint_every_ms: 50, ..RunOptions::default() };
        let processes = Processes::start(hosts.clone(), store.clone(), Some(Rc::new(executor)), options);
        println!("ready");
        loop {
            let (state, _) = hosts.job.inspect(&job.stream()).await.unwrap();
            if state.status != Status::Running {
                processes.stop().await.unwrap();
                println!("finished {:?}", state.status);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// This test binary again, running only the test `name` (which runs its child in `dir`).
fn spawn(dir: &Path, name: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &format!("job_crash::{name}"), "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The attempts a job recorded as started: (step, attempt).
fn started(events: &[Event]) -> BTreeSet<(String, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted(s) => Some((s.step.clone(), s.attempt)),
            _ => None,
        })
        .collect()
}

/// The runs the child's executor began, in order: (job, step, attempt).
fn runs_of_jobs(dir: &Path) -> Vec<(JobId, String, u32)> {
    let text = std::fs::read_to_string(dir.join("runs")).unwrap_or_default();
    // Only whole lines: the child may be writing the last one as we read.
    let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    whole
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let mut next = || parts.next().expect("a run is `job step attempt`");
            (next().parse().unwrap(), next().to_owned(), next().parse().unwrap())
        })
        .collect()
}

/// The runs of the one job of the first test: (step, attempt).
fn runs(dir: &Path) -> Vec<(String, u32)> {
    runs_of_jobs(dir).into_iter().map(|(_, step, attempt)| (step, attempt)).collect()
}

/// Runs children in `dir` one after another (each by `spawn`), killing `kills` of them with SIGKILL, each
/// as one of the next `1..=kill_within` runs begins or a little after, and letting the last one finish.
/// Returns the kills done (fewer when the work finished first) and the last child's `finished` line.
fn kill_until_finished(dir: &Path, spawn: impl Fn() -> Child, kills: usize, kill_within: usize) -> (usize, String) {
    let mut killed = 0;
    loop {
        let mut child = spawn();
        if killed < kills {
            let kill_at = runs(dir).len() + rand::rng().random_range(1..=kill_within);
            let deadline = Instant::now() + Duration::from_secs(60);
            while runs(dir).len() < kill_at && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "kill {killed}: no step began to run");
                std::thread::sleep(Duration::from_millis(2));
            }
            if child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..60)));
                child.kill().unwrap(); // SIGKILL on Unix
                child.wait().unwrap();
                killed += 1;
                continue;
            }
        }
        // A child that never finishes fails the test instead of hanging it.
        let pid = child.id().to_string();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(120));
            let _ = Command::new("kill").args(["-9", &pid]).status();
        });
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let lines: Vec<String> = stdout.lines().map(Result::unwrap).collect();
        assert!(child.wait().unwrap().success());
        let finished = lines.into_iter().find(|line| line.starts_with("finished")).expect("the last child finished");
        return (killed, finished);
    }
}

#[test]
fn a_job_survives_sigkill_and_runs_no_step_beyond_its_attempts() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = "a_job_survives_sigkill_and_runs_no_step_beyond_its_attempts";
    // Kill just as the next run or the one after begins (each takes 150 ms), or a little after. A kill can
    // interrupt an attempt that was scripted to fail anyway, so the job may finish first.
    let (kills, finished) = kill_until_finished(dir.path(), || spawn(dir.path(), name), KILLS, 2);
    assert!(kills >= 2, "the job finished after {kills} kills");
    assert_eq!(finished, "finished Succeeded");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let events = runtime.block_on(async {
        let store = SqliteStore::open(Options::new(dir.path().join("events.db"))).unwrap();
        host::load_events::<Job>(&store, &ids().1.stream()).await.unwrap()
    });
    let started = started(&events);
    let runs = runs(dir.path());
    let mut seen = BTreeSet::new();
    for run in &runs {
        assert!(seen.insert(run.clone()), "{run:?} ran twice; runs: {runs:?}");
        assert!(started.contains(run), "{run:?} ran but was never recorded as started; runs: {runs:?}");
    }
    let per_step = runs.iter().fold(BTreeMap::<&str, u32>::new(), |mut m, (step, _)| {
        *m.entry(step).or_default() += 1;
        m
    });
    assert_eq!(per_step.keys().copied().collect::<Vec<_>>(), ["extract", "report", "summarise"]);
    let state = Job::replay(&events);
    assert_eq!(state.status, Status::Succeeded);
    eprintln!("runs over {kills} kills: {runs:?}");
}

/// Jobs of the second test, all at once.
const MANY_JOBS: u128 = 200;

/// Attempts each step of the second test's jobs may take: enough that the kills (each may cost a running
/// step one attempt, by its time-out) never change how a job ends.
const MANY_ATTEMPTS: u32 = 8;

/// Job `i` of the second test.
fn many(i: u128) -> (JobId, DocumentId) {
    (JobId(Uuid::from_u128(1_000 + i)), DocumentId(Uuid::from_u128(100_000 + i)))
}

/// How job `i` of the second test is scripted to end: `report` fails for good on every attempt, `summarise`
/// fails once and then succeeds, `extract` fails every attempt (dead-lettering the job), or all succeed.
fn fate(i: u128) -> (Status, Option<(&'static str, Scripted)>) {
    match i % 4 {
        0 => (Status::Failed, Some(("report", Scripted::Fail { retryable: false }))),
        1 => (Status::Succeeded, None),
        2 => (Status::DeadLettered, Some(("extract", Scripted::Fail { retryable: true }))),
        _ => (Status::Succeeded, None),
    }
}

/// The second test's child: a node running all the jobs until every one has ended.
fn many_jobs_child(dir: &Path) {
    actix_rt::System::new().block_on(async {
        let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(Options::new(dir.join("events.db"))).unwrap());
        let hosts = Hosts::new(store.clone(), host::Options::default());
        let agent = AgentId(Uuid::from_u128(1));
        let register = Execute {
            command_id: Uuid::from_u128(1),
            command: agent::Command::Register { profile: agent_profile(16), at: Timestamp::now() },
            expected_version: None,
            metadata: Metadata::default(),
        };
        // The agent forgets the command's id behind a thousand others: then it says it is registered already.
        match hosts.agent.execute(&agent.stream(), register).await {
            Ok(_) | Err(host::Error::Rejected(agent::Rejection::AlreadyRegistered)) => {}
            Err(e) => panic!("the agent is not registered: {e:?}"),
        }
        let mut executor = ScriptedExecutor::new().delay_ms(10).log_to(dir.join("runs"));
        for i in 0..MANY_JOBS {
            let (job, input) = many(i);
            if i % 4 == 1 {
                executor = executor.on_job(job, "summarise", 1, Scripted::Fail { retryable: true });
            }
            if let (_, Some((step, what))) = fate(i) {
                for attempt in 1..=MANY_ATTEMPTS {
                    executor = executor.on_job(job, step, attempt, what.clone());
                }
            }
            let submit = job::Command::Submit {
                workflow: WorkflowId(Uuid::from_u128(4)),
                workflow_version: 1,
                steps: three_step_dag(agent, MANY_ATTEMPTS, 20, 3_000),
                inputs: vec![input],
                priority: 0,
                idempotency_key: None,
                parameters: Default::default(),
                input_versions: Default::default(),
                replay_of: None,
                at: Timestamp::now(),
            };
            once(&hosts.job, &job.stream(), 10_000 + i, submit).await;
        }
        let options = RunOptions { checkpoint_every_ms: 50, ..RunOptions::default() };
        let processes = Processes::start(hosts.clone(), store.clone(), Some(Rc::new(executor)), options);
        println!("ready");
        let mut left: Vec<u128> = (0..MANY_JOBS).collect();
        while !left.is_empty() {
            let mut still = Vec::new();
            for i in left {
                let (state, _) = hosts.job.inspect(&many(i).0.stream()).await.unwrap();
                if state.status == Status::Running {
                    still.push(i);
                }
            }
            left = still;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        processes.stop().await.unwrap();
        println!("finished");
    });
}

/// Hundreds of jobs overlap in the process managers while the node is killed again and again: every job
/// ends as its script says and as its events say, no attempt of a step runs twice or beyond the step's
/// attempts, every run is an attempt its job recorded as started, and each job's steps ran in its order (a
/// step only after the steps it reads from had ended their last run).
#[test]
fn hundreds_of_overlapping_jobs_survive_sigkill_each_ending_as_its_events_say() {
    let name = "hundreds_of_overlapping_jobs_survive_sigkill_each_ending_as_its_events_say";
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        many_jobs_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (kills, finished) = kill_until_finished(dir.path(), || spawn(dir.path(), name), KILLS, 120);
    assert!(kills >= 2, "the jobs finished after {kills} kills");
    assert_eq!(finished, "finished");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = SqliteStore::open(Options::new(dir.path().join("events.db"))).unwrap();
    let runs = runs_of_jobs(dir.path());
    let mut seen = BTreeSet::new();
    for run in &runs {
        assert!(seen.insert(run.clone()), "{run:?} ran twice");
        assert!((1..=MANY_ATTEMPTS).contains(&run.2), "{run:?} is beyond the step's attempts");
    }
    for i in 0..MANY_JOBS {
        let (job, _) = many(i);
        let events = runtime.block_on(host::load_events::<Job>(&store, &job.stream())).unwrap();
        let state = Job::replay(&events);
        assert_eq!(state.status, fate(i).0, "job {i} ended otherwise than scripted; its events: {events:#?}");
        let started = started(&events);
        // The job's runs, each with its place in the run log.
        let mine: Vec<(usize, &str, u32)> = runs
            .iter()
            .enumerate()
            .filter(|(_, (j, _, _))| *j == job)
            .map(|(at, (_, step, attempt))| (at, step.as_str(), *attempt))
            .collect();
        for (_, step, attempt) in &mine {
            let run = (step.to_string(), *attempt);
            assert!(started.contains(&run), "job {i}: {run:?} ran but was never recorded as started");
        }
        // Every succeeded step's attempt ran.
        for e in &events {
            if let Event::StepSucceeded(s) = e {
                assert!(mine.iter().any(|(_, step, a)| *step == s.step && *a == s.attempt), "job {i}: {s:?} never ran");
            }
        }
        // In the job's order: each step's first run comes after the last run of every step it reads from.
        let first = |step: &str| mine.iter().find(|(_, s, _)| *s == step).map(|(at, _, _)| *at);
        let last = |step: &str| mine.iter().rev().find(|(_, s, _)| *s == step).map(|(at, _, _)| *at);
        for (step, reads) in [("summarise", &["extract"][..]), ("report", &["extract", "summarise"][..])] {
            if let Some(begun) = first(step) {
                for before in reads {
                    assert!(last(before) < Some(begun), "job {i}: {step} ran before {before} had ended");
                }
            }
        }
    }
    eprintln!("{} runs of {MANY_JOBS} jobs over {kills} kills", runs.len());
}
