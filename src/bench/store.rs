//! `weft bench store`: the event store's throughput and latency, against raw `rusqlite` on the same disk.
//!
//! Cases, all against one fresh store file in the chosen folder:
//!
//! | case | what runs | an op | latency of |
//! | --- | --- | --- | --- |
//! | `append-1`, `append-16`, `append-256` | that many writers, each appending one event at a time to its own stream with an exact expected version | an event | one append |
//! | `append-batch-100` | 16 writers, each appending 100 events at a time | an event | one append |
//! | `read-all` | `read_all` of the whole store in pages of 1000: every record checksummed and decoded into an envelope | an event | one page |
//! | `read-all-payloads` | the same, and each payload decoded from MessagePack into a struct, as a projection would | an event | one page |
//! | `catch-up` | a subscription from position 1 to the head | an event | one batch |
//!
//! The payload of every event is a MessagePack map of four fields (a UUID, a number, two strings), 112 bytes.
//!
//! The baseline of an append case inserts the same number of rows, of the same shape, into the same table
//! layout in a second file with the same `synchronous` setting, from one thread, in transactions of the size
//! the store's group commit actually made in that case (events / commits). The baseline of `read-all` and
//! `catch-up` selects every row of the store's own log file with a plain query into owned column values, without
//! checking or decoding the records.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_events::{EventRead, EventWrite, ExpectedVersion, NewEvent, StreamName, codec};

use super::{Latencies, Report, print_table, rate};
use crate::store::sqlite::{self, Options as StoreOptions, SqliteStore, Synchronous};

/// Options of `weft bench store`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Folder to make the benchmark's files in (a fresh sub-folder, removed afterwards unless --keep).
    /// Default: the system's temporary folder. Choose a folder on the disk you want to measure.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Events in the largest append cases; the others are sized from it. The default run ends within a
    /// minute on a 2-core machine.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    pub events: u64,
    /// Durability of every commit, for the store and the baseline alike.
    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    pub synchronous: Synchronous,
    /// Keep the benchmark's files.
    #[arg(long)]
    pub keep: bool,
}

/// The payload of every benchmark event: a small MessagePack map, about the size of a typical Weft event.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    document: Uuid,
    size_bytes: u64,
    checksum: String,
    note: String,
}

/// Distinct payloads the writers cycle through, made before the clock starts so that the cases measure the
/// store rather than the benchmark's own formatting.
const PAYLOADS: u64 = 1024;

fn payloads() -> Arc<Vec<Bytes>> {
    Arc::new((0..PAYLOADS).map(payload).collect())
}

fn payload(n: u64) -> Bytes {
    let p = Payload {
        document: Uuid::now_v7(),
        size_bytes: n,
        checksum: format!("{n:032x}"),
        note: "benchmark event payload".into(),
    };
    Bytes::from(codec::encode(&p).expect("the payload encodes"))
}

/// Runs every case and prints the reports.
pub async fn run(options: Options) -> anyhow::Result<Vec<Report>> {
    let parent = options.path.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("weft-bench-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run_in(&dir, &options).await;
    if options.keep {
        eprintln!("kept the benchmark's files in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let reports = result?;
    print_table(&reports);
    Ok(reports)
}

async fn run_in(dir: &std::path::Path, options: &Options) -> anyhow::Result<Vec<Report>> {
    let mut store_options = StoreOptions::new(dir.join("events.db"));
    store_options.synchronous = options.synchronous;
    let store_options_for_open = store_options.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(store_options_for_open)).await??;
    let n = options.events;
    let mut reports = Vec::new();
    let appends = [
        ("append-1", 1usize, 1usize, (n / 50).max(100)),
        ("append-16", 16, 1, (n / 5).max(1_600)),
        ("append-256", 256, 1, n),
        ("append-batch-100", 16, 100, n),
    ];
    for (case, writers, per_append, events) in appends {
        let report = append_case(&store, dir, options.synchronous, case, writers, per_append, events).await?;
        eprintln!("{case}: done");
        reports.push(report);
    }
    reports.push(read_all_case(&store, &store_options, n, false).await?);
    reports.push(read_all_case(&store, &store_options, n, true).await?);
    reports.push(catch_up_case(&store, &store_options, n).await?);
    store.close().await?;
    Ok(reports)
}

async fn append_case(
    store: &SqliteStore,
    dir: &std::path::Path,
    synchronous: Synchronous,
    case: &'static str,
    writers: usize,
    per_append: usize,
    events: u64,
) -> anyhow::Result<Report> {
    let appends_per_writer = (events / (writers * per_append) as u64).max(1);
    let payloads = payloads();
    let before = store.stats();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let payloads = payloads.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamName::new(format!("bench-{case}-{w}")).expect("valid stream name");
            let mut latencies = Latencies::default();
            let mut version = 0;
            for a in 0..appends_per_writer {
                let batch: Vec<NewEvent> = (0..per_append as u64)
                    .map(|i| NewEvent::new("bench.appended", payloads[((a * 100 + i) % PAYLOADS) as usize].clone()))
                    .collect();
                let t = Instant::now();
                let appended = store.append(&stream, ExpectedVersion::Exact(version), batch).await?;
                latencies.record(t.elapsed());
                version = appended.version;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let after = store.stats();
    let appended = after.events - before.events;
    let commits = (after.commits - before.commits).max(1);
    let txn_size = (appended / commits).max(1);

    let path = dir.join(format!("baseline-{case}.db"));
    let baseline =
        tokio::task::spawn_blocking(move || baseline_inserts(&path, synchronous, appended, txn_size, writers))
            .await??;
    Ok(Report {
        bench: "store",
        case: case.into(),
        ops_per_s: rate(appended, elapsed),
        p50_ms: latencies.percentile_ms(50.0),
        p99_ms: latencies.percentile_ms(99.0),
        baseline_ops_per_s: rate(appended, baseline),
        bytes: None,
        shares: None,
        note: format!("one append of {per_append}; {txn_size} events per commit"),
    })
}

/// Inserts `rows` event rows in transactions of `txn_size` into a fresh file with the store's layout and the
/// same durability: what SQLite itself costs for the same writes.
fn baseline_inserts(
    path: &std::path::Path,
    synchronous: Synchronous,
    rows: u64,
    txn_size: u64,
    streams: usize,
) -> anyhow::Result<Duration> {
    let mut conn = Connection::open(path)?;
    sqlite::configure(&conn, synchronous)?;
    conn.execute_batch(sqlite::SCHEMA)?;
    // Records of the same size as the store's: an encoded envelope around the same payloads.
    let records: Vec<Vec<u8>> = (0..rows.min(10_000))
        .map(|n| {
            let mut record = Vec::new();
            let stream = StreamName::new("bench-baseline").expect("valid stream name");
            let event = NewEvent::new("bench.appended", payload(n));
            crate::store::record::encode(&mut record, &event, &stream, 1, 1, weft_events::Timestamp::now());
            record
        })
        .collect();
    let stream_names: Vec<String> = (0..streams).map(|s| format!("bench-baseline-{s}")).collect();
    let started = Instant::now();
    let mut position = 0u64;
    while position < rows {
        let tx = conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO events (position, stream, version, record) VALUES (?1, ?2, ?3, ?4)")?;
            for _ in 0..txn_size.min(rows - position) {
                position += 1;
                let stream = &stream_names[(position % streams as u64) as usize];
                insert.execute(params![
                    position as i64,
                    stream,
                    (position / streams as u64 + 1) as i64,
                    records[(position % records.len() as u64) as usize],
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed())
}

/// Most events a read case reads, going over the store as many times as it takes to read ten times
/// `--events`, so that the default run reads a million and runs long enough (about a second) to be measured
/// steadily.
const READ_EVENTS: u64 = 1_000_000;

/// Passes over a store of `head` events that read `10 * events` (at most [`READ_EVENTS`]), and at least one.
fn read_rounds(head: u64, events: u64) -> u64 {
    (events.saturating_mul(10)).min(READ_EVENTS).div_ceil(head.max(1)).max(1)
}

async fn read_all_case(
    store: &SqliteStore,
    options: &StoreOptions,
    events_option: u64,
    decode_payloads: bool,
) -> anyhow::Result<Report> {
    const PAGE: usize = 1000;
    let rounds = read_rounds(store.head().await?, events_option);
    let mut latencies = Latencies::default();
    let started = Instant::now();
    let mut events = 0u64;
    for _ in 0..rounds {
        let mut next = 1;
        loop {
            let t = Instant::now();
            let page = store.read_all(next, PAGE).await?;
            let Some(last) = page.last() else { break };
            next = last.position + 1;
            if decode_payloads {
                for e in &page {
                    let p: Payload = codec::decode(&e.payload)?;
                    std::hint::black_box(p);
                }
            }
            std::hint::black_box(&page);
            events += page.len() as u64;
            latencies.record(t.elapsed());
        }
    }
    let elapsed = started.elapsed();
    let baseline = raw_select(options, rounds).await?;
    Ok(Report {
        bench: "store",
        case: if decode_payloads { "read-all-payloads" } else { "read-all" }.into(),
        ops_per_s: rate(events, elapsed),
        p50_ms: latencies.percentile_ms(50.0),
        p99_ms: latencies.percentile_ms(99.0),
        baseline_ops_per_s: rate(events, baseline),
        bytes: None,
        shares: None,
        note: format!(
            "one page of {PAGE}{}; {events} events",
            if decode_payloads { ", payloads decoded" } else { ", envelopes checked and decoded" }
        ),
    })
}

async fn catch_up_case(store: &SqliteStore, options: &StoreOptions, events_option: u64) -> anyhow::Result<Report> {
    let head = store.head().await?;
    let rounds = read_rounds(head, events_option);
    let mut latencies = Latencies::default();
    let started = Instant::now();
    let mut seen = 0u64;
    for _ in 0..rounds {
        let mut subscription = store.subscribe_all(1);
        let mut round = 0;
        while round < head {
            let t = Instant::now();
            let batch = subscription.next_batch().await?;
            round += batch.len() as u64;
            std::hint::black_box(&batch);
            latencies.record(t.elapsed());
        }
        seen += round;
    }
    let elapsed = started.elapsed();
    let baseline = raw_select(options, rounds).await?;
    Ok(Report {
        bench: "store",
        case: "catch-up".into(),
        ops_per_s: rate(seen, elapsed),
        p50_ms: latencies.percentile_ms(50.0),
        p99_ms: latencies.percentile_ms(99.0),
        baseline_ops_per_s: rate(seen, baseline),
        bytes: None,
        shares: None,
        note: format!("one batch; {seen} events"),
    })
}

/// Selects every row of the store's file into owned column values, with a plain rusqlite query, `rounds`
/// times.
async fn raw_select(options: &StoreOptions, rounds: u64) -> anyhow::Result<Duration> {
    let path = options.path.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let conn = Connection::open(&path)?;
        let started = Instant::now();
        for _ in 0..rounds {
            let mut statement =
                conn.prepare("SELECT position, stream, version, record FROM events ORDER BY position")?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                let owned =
                    (row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?, row.get::<_, Vec<u8>>(3)?);
                std::hint::black_box(owned);
            }
        }
        Ok(started.elapsed())
    })
    .await?
}

/// Prints the reports as JSON lines after running; what `weft bench store` does.
pub async fn main(options: Options) -> anyhow::Result<()> {
    for report in run(options).await? {
        report.print_json();
    }
    Ok(())
}
