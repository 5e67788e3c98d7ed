//! A rebuild under live load: while commands keep appending and readers keep reading, each projection is
//! rebuilt from position 0 and swapped in; readers never see a table emptied or shrunk by the swap, the
//! position watch taken before the rebuild keeps following the projection after it, and once the load stops
//! the swapped-in models equal models built from scratch by a fresh projection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weft_actors::testkit::three_step_dag;
use weft_events::domain::DomainEvent;
use weft_events::domain::document::{self, UploadSource};
use weft_events::domain::ids::{AgentId, DocumentId, JobId, WorkflowId};
use weft_events::domain::job;
use weft_events::{EventRead, EventWrite, ExpectedVersion, MemoryStore, NewEvent, Timestamp};
use weft_projections::documents::Documents;
use weft_projections::jobs::Jobs;

fn encode<E: DomainEvent>(events: impl IntoIterator<Item = E>) -> Vec<NewEvent> {
    events.into_iter().map(|e| e.to_new_event().unwrap()).collect()
}

/// Appends one round: a document registered and uploaded, a version added to an earlier one, and a job
/// submitted with a step scheduled and a log line.
async fn round(store: &MemoryStore, n: u64, documents: &mut Vec<DocumentId>) {
    let at = Timestamp(n as i64 + 1);
    let id = DocumentId::new();
    let registered = document::Registered {
        name: format!("doc-{n}"),
        content_type: "text/plain".into(),
        declared_size_bytes: 100,
        tenant: "t".into(),
        owner: "o".into(),
        labels: Default::default(),
        at,
    };
    let uploaded = document::Uploaded { size_bytes: n, etag: format!("e{n}"), source: UploadSource::Notification, at };
    store
        .append(
            &id.stream(),
            ExpectedVersion::NoStream,
            encode([registered.into(), uploaded.into()] as [document::Event; 2]),
        )
        .await
        .unwrap();
    if let Some(earlier) = documents.get((n as usize * 7) % documents.len().max(1)) {
        let added = document::VersionAdded { size_bytes: n + 1, etag: format!("v{n}"), key: None, at };
        store.append(&earlier.stream(), ExpectedVersion::Any, encode([document::Event::from(added)])).await.unwrap();
    }
    documents.push(id);
    let submitted = job::Submitted {
        workflow: WorkflowId::new(),
        workflow_version: 1,
        steps: three_step_dag(AgentId::new(), 3, 10, 1000),
        inputs: vec![id],
        priority: 0,
        idempotency_key: None,
        parameters: Default::default(),
        input_versions: Default::default(),
        replay_of: None,
        at,
    };
    let events: Vec<job::Event> = vec![
        submitted.into(),
        job::StepScheduled { step: "extract".into(), attempt: 1, at }.into(),
        job::LogAppended { level: job::Level::Info, message: format!("round {n}"), at }.into(),
    ];
    store.append(&JobId::new().stream(), ExpectedVersion::NoStream, encode(events)).await.unwrap();
}

/// Every row of `table`, as text, in a stable order.
fn dump(path: &std::path::Path, table: &str) -> Vec<String> {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut statement = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
    let columns = statement.column_count();
    let mut rows: Vec<String> = statement
        .query_map([], |row| {
            let values: Vec<String> = (0..columns).map(|i| format!("{:?}", row.get_ref(i).unwrap())).collect();
            Ok(values.join("|"))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_live_load_swaps_in_atomically_and_ends_equal_to_a_fresh_build() {
    let store = MemoryStore::default();
    let mut documents = Vec::new();
    for n in 0..2_000 {
        round(&store, n, &mut documents).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.db");
    let reader: Arc<dyn EventRead> = Arc::new(store.clone());
    let mut live_documents = weft_projections::start(Documents, &path, reader.clone()).unwrap();
    let mut live_jobs = weft_projections::start(Jobs, &path, reader.clone()).unwrap();
    let watched = live_documents.watch();

    // The load: more rounds until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 2_000;
            while !stop.load(Ordering::Relaxed) {
                round(&store, n, &mut documents).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            n
        })
    };
    // The readers: a count that only ever grows, whatever the swap does.
    let reading = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let db = rusqlite::Connection::open(&path).unwrap();
            db.busy_timeout(Duration::from_secs(10)).unwrap();
            let (mut documents, mut logs, mut reads) = (0i64, 0i64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let now: (i64, i64) = db
                    .query_row("SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM job_logs)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .unwrap();
                assert!(
                    now.0 >= documents && now.1 >= logs,
                    "a read saw the model shrink: {now:?} after {documents}, {logs}"
                );
                (documents, logs) = now;
                reads += 1;
            }
            reads
        })
    };

    // The load is on: more rounds are appended before, during and after the rebuilds.
    let more_rounds = |store: MemoryStore| async move {
        let from = store.head().await.unwrap();
        let mut head = from;
        while head < from + 50 * 7 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            head = store.head().await.unwrap();
        }
    };
    more_rounds(store.clone()).await;
    let rebuilt = weft_projections::rebuild::<Documents>(&mut live_documents).await.unwrap();
    assert!(rebuilt >= 2_000 * 4, "the rebuild reached {rebuilt}");
    let rebuilt = weft_projections::rebuild::<Jobs>(&mut live_jobs).await.unwrap();
    assert!(rebuilt >= 2_000 * 4);
    more_rounds(store.clone()).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    let reads = reading.join().unwrap();
    assert!(reads > 0);

    let head = store.head().await.unwrap();
    let wait = |running: &weft_projections::Running| {
        let running = running.watch();
        async move {
            let mut running = running;
            tokio::time::timeout(Duration::from_secs(30), running.wait_for(|p| *p >= head)).await.unwrap().unwrap();
        }
    };
    wait(&live_documents).await;
    wait(&live_jobs).await;
    let mut watched = watched;
    tokio::time::timeout(Duration::from_secs(30), watched.wait_for(|p| *p >= head)).await.unwrap().unwrap();
    live_documents.stop().unwrap();
    live_jobs.stop().unwrap();

    let fresh_path = dir.path().join("fresh.db");
    let fresh = [
        weft_projections::start(Documents, &fresh_path, reader.clone()).unwrap(),
        weft_projections::start(Jobs, &fresh_path, reader.clone()).unwrap(),
    ];
    for projection in fresh {
        assert!(tokio::time::timeout(Duration::from_secs(30), projection.reached(head)).await.unwrap());
        projection.stop().unwrap();
    }
    for table in ["documents", "document_lineage", "jobs", "job_steps", "job_logs"] {
        let (live, fresh) = (dump(&path, table), dump(&fresh_path, table));
        assert_eq!(live.len(), fresh.len(), "{table}");
        assert!(live == fresh, "{table} differs from a fresh build");
    }
    assert_eq!(dump(&path, "documents").len() as u64, rounds);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.contains("rebuild"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new(), "scratch files were left");
}
