//! The jobs read model equals a plain fold of random job histories (steps scheduled, started, succeeded,
//! failed and retried in any order, logs, ends), interleaved across jobs, across a stop and restart of the
//! projection.

use std::collections::BTreeMap;

use proptest::prelude::*;
use weft_actors::testkit::three_step_dag;
use weft_events::domain::DomainEvent;
use weft_events::domain::ids::{AgentId, DocumentId, JobId, Uuid, WorkflowId};
use weft_events::domain::job::{
    Cancelled, DeadLettered, Event, Failed, Level, LogAppended, Retried, RetryScheduled, StepFailed, StepScheduled,
    StepStarted, StepSucceeded, Submitted, Succeeded,
};
use weft_events::{EventWrite, ExpectedVersion, MemoryStore, Timestamp};
use weft_projections::jobs::Jobs;

mod support;

/// One event of a job's history after its submission, for step `s % 3`.
#[derive(Debug, Clone)]
enum Step {
    Scheduled(u8, u8),
    Started(u8, u8),
    Succeeded(u8, u8),
    Failed(u8, u8),
    Retry(u8, u8),
    Log(u8),
    Succeed,
    Fail(u8),
    DeadLetter(u8, u8),
    RetryJob(u8),
    Cancel,
}

fn step() -> impl Strategy<Value = Step> {
    let s = 0u8..3;
    let a = 1u8..4;
    prop_oneof![
        (s.clone(), a.clone()).prop_map(|(s, a)| Step::Scheduled(s, a)),
        (s.clone(), a.clone()).prop_map(|(s, a)| Step::Started(s, a)),
        (s.clone(), a.clone()).prop_map(|(s, a)| Step::Succeeded(s, a)),
        (s.clone(), a.clone()).prop_map(|(s, a)| Step::Failed(s, a)),
        (s.clone(), a).prop_map(|(s, a)| Step::Retry(s, a)),
        any::<u8>().prop_map(Step::Log),
        Just(Step::Succeed),
        s.clone().prop_map(Step::Fail),
        (s.clone(), 1u8..4).prop_map(|(s, a)| Step::DeadLetter(s, a)),
        s.prop_map(Step::RetryJob),
        Just(Step::Cancel),
    ]
}

const STEPS: [&str; 3] = ["extract", "summarise", "report"];

/// A step row: status, attempts, output, error, retry time, updated_at.
type StepRow = (String, i64, Option<String>, Option<String>, Option<i64>, i64);

/// A job row: status, steps done, error, finished_at, updated_at, version; its steps; its log (seq, message).
#[derive(Debug, Clone, PartialEq, Default)]
struct Row {
    job: (String, i64, Option<String>, Option<i64>, i64, i64),
    steps: Vec<StepRow>,
    logs: Vec<(i64, String)>,
}

struct Writer {
    histories: Vec<Vec<Step>>,
    ids: Vec<JobId>,
    next: Vec<usize>,
    clock: i64,
    rows: BTreeMap<String, Row>,
}

impl Writer {
    fn new(histories: Vec<Vec<Step>>) -> Self {
        let ids = (0..histories.len()).map(|_| JobId::new()).collect();
        Self { next: vec![0; histories.len()], histories, ids, clock: 1_000_000, rows: BTreeMap::new() }
    }

    async fn append(&mut self, store: &MemoryStore, order: &[usize]) {
        for pick in order {
            let j = pick % self.histories.len();
            let id = self.ids[j];
            let key = id.to_string();
            self.clock += 1;
            let at = Timestamp(self.clock);
            let name = |s: &u8| STEPS[*s as usize % 3].to_owned();
            let event: Event = if !self.rows.contains_key(&key) {
                Submitted {
                    workflow: WorkflowId::new(),
                    workflow_version: 1,
                    steps: three_step_dag(AgentId::new(), 3, 10, 1000),
                    inputs: vec![DocumentId::new()],
                    priority: 0,
                    idempotency_key: None,
                    parameters: Default::default(),
                    input_versions: Default::default(),
                    replay_of: None,
                    at,
                }
                .into()
            } else {
                let Some(step) = self.histories[j].get(self.next[j]) else { continue };
                self.next[j] += 1;
                match step {
                    Step::Scheduled(s, a) => StepScheduled { step: name(s), attempt: *a as u32, at }.into(),
                    Step::Started(s, a) => StepStarted { step: name(s), attempt: *a as u32, at }.into(),
                    Step::Succeeded(s, a) => StepSucceeded {
                        step: name(s),
                        attempt: *a as u32,
                        output: DocumentId(Uuid::from_u128(*s as u128 + 1)),
                        at,
                    }
                    .into(),
                    Step::Failed(s, a) => {
                        StepFailed { step: name(s), attempt: *a as u32, error: format!("e{a}"), retryable: true, at }
                            .into()
                    }
                    Step::Retry(s, a) => {
                        RetryScheduled { step: name(s), attempt: *a as u32, due_at: Timestamp(self.clock + 500) }.into()
                    }
                    Step::Log(n) => LogAppended { level: Level::Info, message: format!("line {n}"), at }.into(),
                    Step::Succeed => Succeeded { at }.into(),
                    Step::Fail(s) => Failed { step: name(s), reason: "broke".into(), at }.into(),
                    Step::DeadLetter(s, a) => {
                        DeadLettered { step: name(s), attempts: *a as u32, last_error: format!("e{a}"), at }.into()
                    }
                    Step::RetryJob(s) => Retried { steps: vec![name(s)], reason: "again".into(), at }.into(),
                    Step::Cancel => Cancelled { reason: "stop".into(), at }.into(),
                }
            };
            let new = event.to_new_event().unwrap();
            let version = store.append(&id.stream(), ExpectedVersion::Any, vec![new]).await.unwrap().version as i64;
            self.fold(&key, event, version);
        }
    }

    /// The plain fold: what each event does to the row, written out once more without SQL.
    fn fold(&mut self, key: &str, event: Event, version: i64) {
        let row = self.rows.entry(key.to_owned()).or_default();
        let index = |step: &str| STEPS.iter().position(|s| *s == step).unwrap();
        let touch = |row: &mut Row, step: &str, status: &str, attempt: u32, at: i64| {
            let s = &mut row.steps[index(step)];
            s.0 = status.into();
            s.1 = s.1.max(attempt as i64);
            s.5 = at;
        };
        let at = match event {
            Event::Submitted(e) => {
                row.job = ("running".into(), 0, None, None, e.at.0, version);
                row.steps = STEPS.iter().map(|_| ("pending".into(), 0, None, None, None, e.at.0)).collect();
                e.at.0
            }
            Event::StepScheduled(e) => {
                touch(row, &e.step, "scheduled", e.attempt, e.at.0);
                e.at.0
            }
            Event::StepStarted(e) => {
                touch(row, &e.step, "running", e.attempt, e.at.0);
                e.at.0
            }
            Event::StepSucceeded(e) => {
                touch(row, &e.step, "succeeded", e.attempt, e.at.0);
                row.steps[index(&e.step)].2 = Some(e.output.to_string());
                row.job.1 += 1;
                e.at.0
            }
            Event::StepFailed(e) => {
                touch(row, &e.step, "failed", e.attempt, e.at.0);
                row.steps[index(&e.step)].3 = Some(e.error);
                e.at.0
            }
            Event::RetryScheduled(e) => {
                let s = &mut row.steps[index(&e.step)];
                s.0 = "retrying".into();
                s.4 = Some(e.due_at.0);
                i64::MIN
            }
            Event::LogAppended(e) => {
                row.logs.push((version, e.message));
                e.at.0
            }
            Event::Succeeded(e) => {
                (row.job.0, row.job.3) = ("succeeded".into(), Some(e.at.0));
                e.at.0
            }
            Event::Failed(e) => {
                (row.job.0, row.job.3, row.job.2) =
                    ("failed".into(), Some(e.at.0), Some(format!("step {}: {}", e.step, e.reason)));
                e.at.0
            }
            Event::DeadLettered(e) => {
                (row.job.0, row.job.3, row.job.2) = (
                    "dead_lettered".into(),
                    Some(e.at.0),
                    Some(format!("step {}: failed {} attempts, the last with: {}", e.step, e.attempts, e.last_error)),
                );
                e.at.0
            }
            Event::Retried(e) => {
                (row.job.0, row.job.3, row.job.2) = ("running".into(), None, None);
                e.at.0
            }
            Event::Cancelled(e) => {
                (row.job.0, row.job.3, row.job.2) = ("cancelled".into(), Some(e.at.0), Some(e.reason));
                e.at.0
            }
        };
        row.job.4 = row.job.4.max(at);
        row.job.5 = version;
    }
}

fn read_model(path: &std::path::Path) -> BTreeMap<String, Row> {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut rows = BTreeMap::new();
    let mut jobs =
        db.prepare("SELECT id, status, steps_done, error, finished_at, updated_at, version FROM jobs").unwrap();
    for found in jobs
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        })
        .unwrap()
    {
        let (id, job) = found.unwrap();
        rows.insert(id, Row { job, ..Row::default() });
    }
    let mut steps = db
        .prepare(
            "SELECT job, status, attempts, output, error, retry_at, updated_at FROM job_steps ORDER BY job, ordinal",
        )
        .unwrap();
    for found in steps
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        })
        .unwrap()
    {
        let (job, step) = found.unwrap();
        rows.get_mut(&job).unwrap().steps.push(step);
    }
    let mut logs = db.prepare("SELECT job, seq, message FROM job_logs ORDER BY job, seq").unwrap();
    for found in logs.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))).unwrap() {
        let (job, seq, message) = found.unwrap();
        rows.get_mut(&job).unwrap().logs.push((seq, message));
    }
    rows
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_jobs_read_model_is_the_fold_of_the_events_across_restarts(
        histories in proptest::collection::vec(proptest::collection::vec(step(), 0..16), 1..6),
        order in proptest::collection::vec(0usize..6, 0..90),
        split in 0usize..90,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("read.db");
            let store = MemoryStore::default();
            let mut writer = Writer::new(histories);
            let split = split.min(order.len());
            writer.append(&store, &order[..split]).await;
            support::catch_up(Jobs, &path, &store).await;
            writer.append(&store, &order[split..]).await;
            support::catch_up(Jobs, &path, &store).await;
            assert_eq!(read_model(&path), writer.rows);
        });
    }
}
