//! `weft bench replay`: the operator's tools (`weft events`) over a log of `--events` events.
//!
//! | case | what runs | an op | baseline |
//! | --- | --- | --- | --- |
//! | `cat` | every event of the log read in pages through the read-only view and printed as `weft events cat` prints it (JSON, payload decoded from MessagePack) to `/dev/null` | an event | raw rusqlite: `SELECT position, stream, version, record FROM events ORDER BY position`, every row's columns read |
//! | `cat-sealed` | the same with the personal fields left sealed: against `cat`, what opening them costs | an event | the same raw scan |
//! | `export` | `weft events export --file`: the whole log into an export file, fsynced at the end | an event | the same raw scan |
//! | `import` | `weft events import`: that file into a new SQLite store (fsync on every commit), the file checked whole first | an event | raw rusqlite: the same rows (read from the log) inserted into a bare `events` table, 10,000 a transaction, `synchronous = FULL` |
//! | `verify` | `weft events verify`: positions, versions, checksums and every payload decoded | an event | the same raw scan |
//! | `rebuild` | the six projections a node runs, from position 0 into one fresh file, at once | an event of the log | the same raw scan |
//! | `rebuild-jobs` | the jobs projection alone (the costliest) | an event of the log | the same raw scan |
//! | `copy-sqlite-jetstream` | `weft events copy` of a log of `--copy-events` events (made by the same generator, with its keys) into a JetStream stream on a local `nats-server` (`sync_interval: always`: every ack after an fsync), the keys carried, both ends digested at the end | an event | raw JetStream: the events' stored payloads published to a file stream of their own in atomic batches of 256 (one fsync each), one batch at a time; the note gives raw single publishes, 256 unacknowledged at a time, too |
//!
//! The log is made up front by the same generator as `weft bench projections` (documents of 4 events and
//! jobs of 12), appended through the store sealed as a node writes it (each document's registration has its
//! personal fields sealed with the tenant's key): `cat` and the rebuilds open them with the keys, `export`
//! copies them sealed, `verify` checks their form.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use weft_events::{EventRead, EventStore};

use super::{Report, rate};
use crate::replay::export::{self, OnConflict};
use crate::replay::progress::Progress;
use crate::replay::{inspect, read_ahead, verify};
use crate::store::keys::Keys;
use crate::store::sealed::Sealed;
use crate::store::sqlite::view::View;
use crate::store::sqlite::{Options as StoreOptions, SqliteStore, Synchronous};

/// Options of `weft bench replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Folder to make the benchmark's files in (a fresh sub-folder, removed afterwards). The log, its export
    /// and the imported copy take about 1.2 KB an event.
    #[arg(long)]
    pub path: Option<std::path::PathBuf>,
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    pub events: u64,
    /// Events in the log `copy-sqlite-jetstream` copies (a log of its own: a copy into JetStream appends one
    /// stream's events at a time, each acknowledged after an fsync).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    pub copy_events: u64,
}

/// Runs every case and prints the reports.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let path = options.path.clone();
    super::in_scratch_folder(path.as_deref(), |dir| async move { run_in(&dir, &options).await }).await
}

fn report(case: &str, events: u64, started: Instant, baseline: f64, note: &str) -> Report {
    let ops_per_s = rate(events, started.elapsed());
    eprintln!("{case}: {ops_per_s:.0} events/s");
    Report {
        bench: "replay",
        case: case.into(),
        ops_per_s,
        p50_ms: 0.0,
        p99_ms: 0.0,
        baseline_ops_per_s: baseline,
        bytes: None,
        shares: None,
        note: note.into(),
    }
}

async fn run_in(dir: &Path, options: &Options) -> anyhow::Result<Vec<Report>> {
    let log = dir.join("events.db");
    let mut store_options = StoreOptions::new(&log);
    store_options.synchronous = Synchronous::Full;
    let store = SqliteStore::open(store_options)?;
    // Sealed as a node writes it: the documents' personal fields under their tenant's key.
    let keys = Keys::sqlite(&dir.join("keys.db"))?;
    let sealed = Sealed::new(store.clone(), keys.clone());
    let mut progress = Progress::new("fill", options.events);
    super::projections::fill(&sealed, options.events, |d, t| progress.update(d, t)).await?;
    progress.finish();
    let head = store.head().await?;
    eprintln!("log: {head} events");
    let scan = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || raw_scan(&log, head)).await??
    };
    let view: Arc<dyn EventRead> = {
        let log = log.clone();
        Arc::new(tokio::task::spawn_blocking(move || View::open(&log)).await??)
    };
    let mut reports = Vec::new();

    // cat: the whole log as `weft events cat` prints it, personal fields opened with the keys; and the same
    // with them left sealed, which is what opening costs.
    let opened: Arc<dyn EventRead> = {
        let log = log.clone();
        let view = tokio::task::spawn_blocking(move || View::open(&log)).await??;
        Arc::new(Sealed::new(view, Keys::sqlite_read_only(&dir.join("keys.db"))?))
    };
    for (case, reader, note) in [
        ("cat", opened, "JSON lines, payloads decoded, personal fields opened, to /dev/null; baseline: raw scan"),
        ("cat-sealed", view.clone(), "the same, personal fields left sealed (not opened); baseline: raw scan"),
    ] {
        let started = Instant::now();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(null_device())?);
        let mut pages = read_ahead(reader, 1, head);
        let mut printed = 0u64;
        while let Some(page) = pages.recv().await {
            for e in &page? {
                inspect::write_json_line(&mut out, e)?;
                printed += 1;
            }
        }
        out.flush()?;
        anyhow::ensure!(printed == head, "{case} printed {printed} of {head} events");
        reports.push(report(case, head, started, scan, note));
    }

    // export, into the file the import reads.
    let file = dir.join("export.jsonl");
    let started = Instant::now();
    let end = export::export_to_file(&view, 1, &[], &file, |_, _| {}).await?;
    anyhow::ensure!(end.events == head, "export wrote {} of {head} events", end.events);
    let mut exported = report("export", head, started, scan, "into a file, fsynced; baseline: raw scan");
    exported.bytes = Some(std::fs::metadata(&file)?.len());
    reports.push(exported);

    // verify.
    let started = Instant::now();
    let checked = verify::verify(view.clone(), log.display().to_string(), false, |_, _| {}).await?;
    anyhow::ensure!(checked.ok && checked.events == head, "verify: {:?}", checked.faults_by_kind);
    reports.push(report("verify", head, started, scan, "every check; baseline: raw scan"));

    // rebuilds, on the store a node would have open.
    let reader: Arc<dyn EventRead> = Arc::new(sealed.clone());
    for (case, projections) in [("rebuild", "rebuild"), ("rebuild-jobs", "rebuild-jobs")] {
        let path = dir.join(format!("{case}.db"));
        let started = Instant::now();
        let running = super::projections::start(projections, &path, &reader)?;
        for projection in &running {
            anyhow::ensure!(projection.reached(head).await, "{} stopped before the head", projection.name());
        }
        let finished = report(case, head, started, scan, "from position 0 into a fresh file; baseline: raw scan");
        for projection in running {
            projection.stop()?;
        }
        reports.push(finished);
        let _ = std::fs::remove_file(&path);
    }
    store.close().await?;

    // import: the export into a new store, against raw inserts of the same rows.
    let copy = dir.join("copy.db");
    let inserts = {
        let (log, raw) = (log.clone(), dir.join("raw.db"));
        tokio::task::spawn_blocking(move || raw_insert(&log, &raw)).await??
    };
    let target = SqliteStore::open(StoreOptions::new(&copy))?;
    let started = Instant::now();
    let writer: Arc<dyn EventStore> = Arc::new(target.clone());
    let imported = export::import(&file, &*writer, OnConflict::Fail, export::IMPORT_WINDOW, |_, _| {}).await?;
    anyhow::ensure!(imported.events == head, "import appended {} of {head} events", imported.events);
    reports.push(report("import", head, started, inserts, "a new store, fsync each commit; baseline: raw inserts"));
    target.close().await?;
    reports.push(copy_to_jetstream(dir, options.copy_events).await?);
    Ok(reports)
}

/// `copy-sqlite-jetstream`: a log of `events` events copied into JetStream, against raw acknowledged
/// publishes of the same payloads.
async fn copy_to_jetstream(dir: &Path, events: u64) -> anyhow::Result<Report> {
    use crate::replay::copy::{self, Place};
    let folder = dir.join("copy-source");
    std::fs::create_dir_all(&folder)?;
    let log = folder.join("events.db");
    let mut store_options = StoreOptions::new(&log);
    store_options.synchronous = Synchronous::Full;
    let store = SqliteStore::open(store_options)?;
    let sealed = Sealed::new(store.clone(), Keys::sqlite(&folder.join("keys.db"))?);
    super::projections::fill(&sealed, events, |_, _| {}).await?;
    let head = store.head().await?;
    store.close().await?;
    let server = weft_harness::NatsServer::start()?;

    // Raw: the same payloads, published 256 at a time.
    let client = async_nats::connect(server.url()).await?;
    let js_client = client.clone();
    let js = async_nats::jetstream::new(client);
    for (name, subjects) in [("RAW_COPY", "raw.>"), ("RAW_BATCHES", "batched.>")] {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subjects.into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await?;
    }
    let view: Arc<dyn EventRead> = {
        let log = log.clone();
        Arc::new(tokio::task::spawn_blocking(move || View::open(&log)).await??)
    };
    let mut rows = Vec::with_capacity(head as usize);
    let mut pages = read_ahead(view, 1, head);
    while let Some(page) = pages.recv().await {
        rows.extend(page?.into_iter().map(|e| (e.stream.to_string(), e.payload)));
    }
    let started = Instant::now();
    for batch in rows.chunks(256) {
        let mut acks = Vec::with_capacity(batch.len());
        for (stream, payload) in batch {
            acks.push(js.publish(format!("raw.{stream}"), payload.clone()).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
    let singles = rate(head, started.elapsed());
    let started = Instant::now();
    for batch in rows.chunks(256) {
        let id = uuid::Uuid::now_v7().to_string();
        for (n, (stream, payload)) in batch.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Batch-Id", id.as_str());
            headers.insert("Nats-Batch-Sequence", (n + 1).to_string().as_str());
            let subject = format!("batched.{stream}");
            if n + 1 < batch.len() {
                js_client.publish_with_headers(subject, headers, payload.clone()).await?;
                continue;
            }
            headers.insert("Nats-Batch-Commit", "1");
            let reply = js_client.request_with_headers(subject, headers, payload.clone()).await?;
            let ack: serde_json::Value = serde_json::from_slice(&reply.payload)?;
            anyhow::ensure!(ack.get("error").is_none(), "a raw batch was refused: {ack}");
        }
    }
    let raw = rate(head, started.elapsed());

    let auth = crate::nats::NatsAuth::default();
    let from = Place::Sqlite(log).options(&auth, None).map_err(anyhow::Error::msg)?;
    let to = Place::JetStream { nats: server.url(), stream: "COPY".into() }
        .options(&auth, None)
        .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let copied = copy::copy(&from, &to, false, "weft-bench", |_, _| {}).await?;
    anyhow::ensure!(copied.events == head, "the copy appended {} of {head} events", copied.events);
    let note = format!(
        "weft events copy into JetStream (fsync each ack), keys carried, both ends digested; baseline: raw atomic \
         batches of 256 (raw single publishes, 256 in flight: {singles:.0}/s)"
    );
    Ok(report("copy-sqlite-jetstream", head, started, raw, &note))
}

fn null_device() -> &'static str {
    if cfg!(windows) { "NUL" } else { "/dev/null" }
}

/// Events per second of the plainest full read of the log: one ordered `SELECT`, each row's columns read.
fn raw_scan(log: &Path, head: u64) -> anyhow::Result<f64> {
    let conn = rusqlite::Connection::open_with_flags(log, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let started = Instant::now();
    let mut statement = conn.prepare("SELECT position, stream, version, record FROM events ORDER BY position")?;
    let mut rows = statement.query([])?;
    let (mut count, mut bytes) = (0u64, 0usize);
    while let Some(row) = rows.next()? {
        let _position: i64 = row.get(0)?;
        bytes += row.get_ref(1)?.as_str()?.len();
        let _version: i64 = row.get(2)?;
        bytes += row.get_ref(3)?.as_blob()?.len();
        count += 1;
    }
    anyhow::ensure!(count == head && bytes > 0, "the raw scan read {count} of {head} rows");
    Ok(rate(count, started.elapsed()))
}

/// Rows per second of copying the log's rows into a bare table of a new file with plain inserts.
fn raw_insert(log: &Path, raw: &Path) -> anyhow::Result<f64> {
    const ROWS_PER_TRANSACTION: usize = 10_000;
    let from = rusqlite::Connection::open_with_flags(log, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut to = rusqlite::Connection::open(raw)?;
    to.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE events (position INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
                              record BLOB NOT NULL) STRICT;",
    )?;
    let mut select = from.prepare("SELECT position, stream, version, record FROM events ORDER BY position")?;
    let mut rows = select.query([])?;
    let started = Instant::now();
    let mut count = 0u64;
    let mut done = false;
    while !done {
        let transaction = to.transaction()?;
        {
            let mut insert = transaction.prepare_cached("INSERT INTO events VALUES (?1, ?2, ?3, ?4)")?;
            for _ in 0..ROWS_PER_TRANSACTION {
                let Some(row) = rows.next()? else {
                    done = true;
                    break;
                };
                insert.execute(rusqlite::params![
                    row.get::<_, i64>(0)?,
                    row.get_ref(1)?.as_str()?,
                    row.get::<_, i64>(2)?,
                    row.get_ref(3)?.as_blob()?
                ])?;
                count += 1;
            }
        }
        transaction.commit()?;
    }
    let elapsed = started.elapsed();
    drop(to);
    let _ = std::fs::remove_file(raw);
    Ok(rate(count, elapsed))
}
