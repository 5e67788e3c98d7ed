//! A job survives SIGKILL of the process running it, and no step runs more often than its recorded attempts.
//!
//! The test runs its own binary again as a child process: a node with the SQLite store, the actor hosts,
//! the orchestrator, the worker (with the scripted test executor, which appends `step attempt` to a run log,
//! flushed to disk, as each run begins) and the timer service. The child submits one job of a 3-step DAG whose
//! last two steps fail once each, then runs until the job is finished. The parent kills the child with SIGKILL just
//! as a step begins to run, several times, then lets one child finish. It checks that the job succeeded, that
//! no attempt of a step ran twice, and that every run is an attempt the job recorded as started.

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

fn spawn(dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "job_crash::a_job_survives_sigkill_and_runs_no_step_beyond_its_attempts",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn runs(dir: &Path) -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(dir.join("runs")).unwrap_or_default();
    // Only whole lines: the child may be writing the last one as we read.
    let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    whole
        .lines()
        .map(|line| {
            let (step, attempt) = line.split_once(' ').unwrap();
            (step.to_owned(), attempt.parse().unwrap())
        })
        .collect()
}

#[test]
fn a_job_survives_sigkill_and_runs_no_step_beyond_its_attempts() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut kills = 0;
    let mut finished = None;
    while finished.is_none() {
        let mut child = spawn(dir.path());
        if kills < KILLS {
            // Kill just as the next run or the one after begins (each takes 150 ms), or a little after. A kill
            // can interrupt an attempt that was scripted to fail anyway, so the job may finish first.
            let kill_at = runs(dir.path()).len() + rand::rng().random_range(1..=2);
            let deadline = Instant::now() + Duration::from_secs(60);
            while runs(dir.path()).len() < kill_at && child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "kill {kills}: no step began to run");
                std::thread::sleep(Duration::from_millis(2));
            }
            if child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..60)));
                child.kill().unwrap(); // SIGKILL on Unix
                child.wait().unwrap();
                kills += 1;
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
        finished = Some(lines.into_iter().find(|line| line.starts_with("finished")));
    }
    assert!(kills >= 2, "the job finished after {kills} kills");
    assert_eq!(finished.flatten().as_deref(), Some("finished Succeeded"));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let events = runtime.block_on(async {
        let store = SqliteStore::open(Options::new(dir.path().join("events.db"))).unwrap();
        host::load_events::<Job>(&store, &ids().1.stream()).await.unwrap()
    });
    let started: BTreeSet<(String, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted(s) => Some((s.step.clone(), s.attempt)),
            _ => None,
        })
        .collect();
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
