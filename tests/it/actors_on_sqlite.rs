//! The actor host on the SQLite store: two hosts (two "nodes") hammering the same aggregates lose no update
//! and leave dense versions; a host on a reopened store remembers every command's outcome.

use std::sync::Arc;

use weft::store::sqlite::{Options as StoreOptions, SqliteStore};
use weft_actors::Aggregate;
use weft_actors::host::{Execute, Host, Metadata, Options};
use weft_actors::job::{Command, Job};
use weft_events::domain::ids::{JobId, Uuid};
use weft_events::domain::job::{Event, Level};
use weft_events::{Direction, EventRead, Timestamp};

fn execute(command: Command) -> Execute<Job> {
    Execute { command_id: Uuid::now_v7(), command, expected_version: None, metadata: Metadata::default() }
}

use weft_actors::testkit::one_step_job as submit;

#[actix_rt::test]
async fn two_hosts_on_one_sqlite_store_lose_no_update() {
    const JOBS: usize = 3;
    const LINES: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(StoreOptions::new(dir.path().join("events.db"))).unwrap();
    let options = Options { max_conflict_retries: 1000, ..Options::default() };
    let hosts = [
        Host::<Job>::new(Arc::new(store.clone()), options.clone()),
        Host::<Job>::new(Arc::new(store.clone()), options.clone()),
    ];
    let jobs: Vec<_> = (0..JOBS).map(|_| JobId::new().stream()).collect();
    for s in &jobs {
        hosts[0].execute(s, execute(submit())).await.unwrap();
    }
    let mut sends = Vec::new();
    let mut commands = Vec::new();
    for line in 0..LINES {
        for (j, s) in jobs.iter().enumerate() {
            let host = hosts[(line + j) % 2].clone();
            let command =
                execute(Command::AppendLog { level: Level::Info, message: format!("{j}:{line}"), at: Timestamp(2) });
            commands.push((s.clone(), command.clone()));
            let s = s.clone();
            sends.push(actix_rt::spawn(async move { host.execute(&s, command).await }));
        }
    }
    for send in sends {
        send.await.unwrap().unwrap();
    }
    for s in &jobs {
        let events = store.read_stream(s, 1, Direction::Forwards, 1000).await.unwrap();
        assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=events.len() as u64).collect::<Vec<_>>());
        let lines = weft_actors::host::load_events::<Job>(&store, s)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e, Event::LogAppended(_)))
            .count();
        assert_eq!(lines, LINES, "a log line was lost or doubled");
        let (held, _) = hosts[1].inspect(s).await.unwrap();
        assert_eq!(held.log_lines as usize, LINES);
    }
    // Reopened, a new host remembers the outcome of every command: none appends again.
    store.close().await.unwrap();
    let store = SqliteStore::open(StoreOptions::new(dir.path().join("events.db"))).unwrap();
    let head = store.head().await.unwrap();
    let host = Host::<Job>::new(Arc::new(store.clone()), options);
    for (s, command) in commands.iter().take(20) {
        assert!(host.execute(s, command.clone()).await.unwrap().repeated);
    }
    assert_eq!(store.head().await.unwrap(), head);
    let state = Job::replay(&weft_actors::host::load_events::<Job>(&store, &jobs[0]).await.unwrap());
    assert_eq!(state.log_lines as usize, LINES);
}
