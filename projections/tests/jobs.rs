//! The jobs read model through one job's whole life: steps scheduled, started, failed, retried and
//! succeeded, logs in order, the job's end.

use std::sync::Arc;
use std::time::Duration;

use weft_actors::testkit::three_step_dag;
use weft_events::domain::DomainEvent;
use weft_events::domain::ids::{AgentId, DocumentId, JobId, WorkflowId};
use weft_events::domain::job::{
    Event, Level, LogAppended, RetryScheduled, StepFailed, StepScheduled, StepStarted, StepSucceeded, Submitted,
    Succeeded,
};
use weft_events::{EventRead, EventWrite, ExpectedVersion, MemoryStore, Timestamp};
use weft_projections::jobs::Jobs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_s_status_steps_and_logs_follow_its_events() {
    let store = MemoryStore::default();
    let job = JobId::new();
    let (out1, out2, out3) = (DocumentId::new(), DocumentId::new(), DocumentId::new());
    let t = Timestamp;
    let events: Vec<Event> = vec![
        Submitted {
            workflow: WorkflowId::new(),
            workflow_version: 2,
            steps: three_step_dag(AgentId::new(), 3, 10, 1000),
            inputs: vec![DocumentId::new()],
            priority: 5,
            idempotency_key: None,
            parameters: Default::default(),
            input_versions: Default::default(),
            replay_of: None,
            at: t(10),
        }
        .into(),
        StepScheduled { step: "extract".into(), attempt: 1, at: t(11) }.into(),
        StepStarted { step: "extract".into(), attempt: 1, at: t(12) }.into(),
        StepSucceeded { step: "extract".into(), attempt: 1, output: out1, at: t(13) }.into(),
        LogAppended { level: Level::Info, message: "extracted".into(), at: t(14) }.into(),
        StepScheduled { step: "summarise".into(), attempt: 1, at: t(15) }.into(),
        StepStarted { step: "summarise".into(), attempt: 1, at: t(16) }.into(),
        StepFailed { step: "summarise".into(), attempt: 1, error: "rate limited".into(), retryable: true, at: t(17) }
            .into(),
        RetryScheduled { step: "summarise".into(), attempt: 2, due_at: t(30) }.into(),
        LogAppended { level: Level::Warn, message: "retrying summarise".into(), at: t(18) }.into(),
    ];
    let new: Vec<_> = events.iter().map(|e| e.to_new_event().unwrap()).collect();
    store.append(&job.stream(), ExpectedVersion::NoStream, new).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.db");
    let running = weft_projections::start(Jobs, &path, Arc::new(store.clone())).unwrap();
    let reached = |n: u64| {
        let running = &running;
        async move { tokio::time::timeout(Duration::from_secs(10), running.reached(n)).await.unwrap() }
    };
    assert!(reached(10).await);
    let db = rusqlite::Connection::open(&path).unwrap();
    let job_row = |db: &rusqlite::Connection| {
        db.query_row(
            "SELECT status, steps_total, steps_done, priority, finished_at, updated_at, version FROM jobs WHERE id = ?1",
            [job.to_string()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            },
        )
        .unwrap()
    };
    let steps = |db: &rusqlite::Connection| {
        let mut q = db
            .prepare("SELECT step, status, attempts, output, error FROM job_steps WHERE job = ?1 ORDER BY ordinal")
            .unwrap();
        q.query_map([job.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
    };
    assert_eq!(job_row(&db), ("running".into(), 3, 1, 5, None, 18, 10));
    assert_eq!(
        steps(&db),
        vec![
            ("extract".into(), "succeeded".into(), 1, Some(out1.to_string()), None),
            ("summarise".into(), "retrying".into(), 1, None, Some("rate limited".into())),
            ("report".into(), "pending".into(), 0, None, None),
        ]
    );

    let rest: Vec<Event> = vec![
        StepScheduled { step: "summarise".into(), attempt: 2, at: t(31) }.into(),
        StepStarted { step: "summarise".into(), attempt: 2, at: t(32) }.into(),
        StepSucceeded { step: "summarise".into(), attempt: 2, output: out2, at: t(33) }.into(),
        StepScheduled { step: "report".into(), attempt: 1, at: t(34) }.into(),
        StepStarted { step: "report".into(), attempt: 1, at: t(35) }.into(),
        StepSucceeded { step: "report".into(), attempt: 1, output: out3, at: t(36) }.into(),
        Succeeded { at: t(37) }.into(),
    ];
    let new: Vec<_> = rest.iter().map(|e| e.to_new_event().unwrap()).collect();
    store.append(&job.stream(), ExpectedVersion::Exact(10), new).await.unwrap();
    assert!(reached(17).await);
    assert_eq!(job_row(&db), ("succeeded".into(), 3, 3, 5, Some(37), 37, 17));
    assert_eq!(
        steps(&db)[1],
        ("summarise".into(), "succeeded".into(), 2, Some(out2.to_string()), Some("rate limited".into()))
    );
    let logs: Vec<(i64, String, String)> = db
        .prepare("SELECT seq, level, message FROM job_logs WHERE job = ?1 ORDER BY seq")
        .unwrap()
        .query_map([job.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(logs, vec![(5, "info".into(), "extracted".into()), (10, "warn".into(), "retrying summarise".into())]);
    assert_eq!(store.head().await.unwrap(), running.position());
    running.stop().unwrap();
}
