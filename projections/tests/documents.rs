//! The documents read model equals a plain fold of the events, for random histories, across restarts of
//! the projection (nothing applied twice, nothing skipped).

use std::collections::BTreeMap;

use proptest::prelude::*;
use weft_events::domain::DomainEvent;
use weft_events::domain::document::{
    Deleted, DerivativeRecorded, Event, LabelsChanged, Registered, UploadSource, Uploaded, VersionAdded,
};
use weft_events::domain::ids::{DocumentId, JobId, Uuid};
use weft_events::{EventWrite, ExpectedVersion, MemoryStore, Timestamp};
use weft_projections::documents::Documents;

mod support;

/// What a row should hold: (status, size, etag, versions, deleted reason, updated_at, version, lineage children).
#[derive(Debug, Clone, PartialEq, Default)]
struct Row {
    name: String,
    status: String,
    size: Option<i64>,
    etag: Option<String>,
    versions: i64,
    reason: Option<String>,
    updated_at: i64,
    version: i64,
    children: Vec<String>,
    labels: String,
}

/// One step of a document's history, after its registration.
#[derive(Debug, Clone)]
enum Step {
    Upload(u64),
    AddVersion(u64),
    Derive(u8),
    Label(u8),
    Delete,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u64..10_000).prop_map(Step::Upload),
        (1u64..10_000).prop_map(Step::AddVersion),
        any::<u8>().prop_map(Step::Derive),
        any::<u8>().prop_map(Step::Label),
        Just(Step::Delete),
    ]
}

/// Appends documents' histories to a store, interleaved, and folds what it appended the plain way.
struct Writer {
    histories: Vec<Vec<Step>>,
    ids: Vec<DocumentId>,
    next: Vec<usize>,
    clock: i64,
    rows: BTreeMap<String, Row>,
}

impl Writer {
    fn new(histories: Vec<Vec<Step>>) -> Self {
        let ids = (0..histories.len()).map(|_| DocumentId::new()).collect();
        Self { next: vec![0; histories.len()], histories, ids, clock: 1_000_000, rows: BTreeMap::new() }
    }

    /// Appends the next event of each document `order` picks.
    async fn append(&mut self, store: &MemoryStore, order: &[usize]) {
        for pick in order {
            let d = pick % self.histories.len();
            let id = self.ids[d];
            let key = id.to_string();
            self.clock += 1;
            let at = Timestamp(self.clock);
            let event: Event = if !self.rows.contains_key(&key) {
                Registered {
                    name: format!("{d}.pdf"),
                    content_type: "application/pdf".into(),
                    declared_size_bytes: 1,
                    tenant: "acme".into(),
                    owner: "ann".into(),
                    labels: [("n".to_owned(), d.to_string())].into(),
                    at,
                }
                .into()
            } else {
                let Some(step) = self.histories[d].get(self.next[d]) else { continue };
                self.next[d] += 1;
                match step {
                    Step::Upload(size) => {
                        Uploaded { size_bytes: *size, etag: format!("e{size}"), source: UploadSource::Client, at }
                            .into()
                    }
                    Step::AddVersion(size) => {
                        VersionAdded { size_bytes: *size, etag: format!("v{size}"), key: None, at }.into()
                    }
                    Step::Derive(n) => DerivativeRecorded {
                        child: DocumentId(Uuid::from_u128(*n as u128 + 1)),
                        job: JobId(Uuid::from_u128(7)),
                        step: "summarise".into(),
                        version: Some(1),
                        at,
                    }
                    .into(),
                    Step::Label(n) => {
                        let labels = (0..n % 3).map(|i| (format!("k{i}"), format!("{n}"))).collect();
                        LabelsChanged { labels, at }.into()
                    }
                    Step::Delete => Deleted { reason: "gone".into(), at }.into(),
                }
            };
            let new = event.to_new_event().unwrap();
            let appended = store.append(&id.stream(), ExpectedVersion::Any, vec![new]).await.unwrap();
            let row = self.rows.entry(key).or_default();
            row.updated_at = self.clock;
            row.version = appended.version as i64;
            match event {
                Event::Registered(e) => {
                    row.name = e.name;
                    row.status = "registered".into();
                    row.labels = serde_json::to_string(&e.labels).unwrap();
                }
                Event::LabelsChanged(e) => row.labels = serde_json::to_string(&e.labels).unwrap(),
                Event::Uploaded(e) => {
                    row.status = "uploaded".into();
                    row.size = Some(e.size_bytes as i64);
                    row.etag = Some(e.etag);
                    row.versions += 1;
                }
                Event::VersionAdded(e) => {
                    row.size = Some(e.size_bytes as i64);
                    row.etag = Some(e.etag);
                    row.versions += 1;
                }
                Event::DerivativeRecorded(e) => {
                    let child = e.child.to_string();
                    if !row.children.contains(&child) {
                        row.children.push(child);
                        row.children.sort();
                    }
                }
                Event::Deleted(e) => {
                    row.status = "deleted".into();
                    row.reason = Some(e.reason);
                }
            }
        }
    }
}

fn read_model(path: &std::path::Path) -> BTreeMap<String, Row> {
    let db = rusqlite::Connection::open(path).unwrap();
    let mut rows = BTreeMap::new();
    let mut query = db
        .prepare(
            "SELECT id, name, status, size_bytes, etag, versions, deleted_reason, updated_at, version, labels
             FROM documents",
        )
        .unwrap();
    let found = query
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Row {
                    name: r.get(1)?,
                    status: r.get(2)?,
                    size: r.get(3)?,
                    etag: r.get(4)?,
                    versions: r.get(5)?,
                    reason: r.get(6)?,
                    updated_at: r.get(7)?,
                    version: r.get(8)?,
                    children: Vec::new(),
                    labels: r.get(9)?,
                },
            ))
        })
        .unwrap();
    for row in found {
        let (id, row) = row.unwrap();
        rows.insert(id, row);
    }
    let mut lineage = db.prepare("SELECT parent, child FROM document_lineage ORDER BY parent, child").unwrap();
    for pair in lineage.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).unwrap() {
        let (parent, child) = pair.unwrap();
        rows.get_mut(&parent).unwrap().children.push(child);
    }
    rows
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_read_model_is_the_fold_of_the_events_across_restarts(
        histories in proptest::collection::vec(proptest::collection::vec(step(), 0..12), 1..8),
        order in proptest::collection::vec(0usize..8, 0..80),
        split in 0usize..80,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("read.db");
            let store = MemoryStore::default();
            let mut writer = Writer::new(histories);
            let split = split.min(order.len());
            // Part of the log, a projection run, a stop; the rest of the log, a restart from its position.
            writer.append(&store, &order[..split]).await;
            support::catch_up(Documents, &path, &store).await;
            writer.append(&store, &order[split..]).await;
            support::catch_up(Documents, &path, &store).await;
            assert_eq!(read_model(&path), writer.rows);
        });
    }
}
