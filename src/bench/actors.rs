//! `weft bench actors`: commands through the actor host on the SQLite store, activation, memory per actor.
//!
//! | case | what runs | an op | baseline |
//! | --- | --- | --- | --- |
//! | `commands-1`, `commands-100`, `commands-10000` | `AddVersion` commands to that many document aggregates, from 16 to 256 concurrent senders | a command | the same events appended straight to the store, one writer per aggregate (at most one per sender) |
//! | `activation-replay`, `activation-snapshot` | a fresh host answering its first question about a document with 10,000 events, without and with a snapshot | an activation | - |
//! | `memory-per-actor` | 10,000 idle live actors; `bytes` is the growth of the resident set per actor | - | - |
//! | `touch-1m` | one `Register` to each of `--touch` (1,000,000) fresh documents from 256 senders, with `max_live` 10,000; `bytes` is the peak resident set of the process during the case | a command | - |
//!
//! All actors run on one actix arbiter (one thread), as a node runs them today.

use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;
use weft_actors::document::{Command, Document};
use weft_actors::host::{Execute, Host, Metadata, Options as HostOptions};
use weft_events::domain::document::UploadSource;
use weft_events::domain::ids::DocumentId;
use weft_events::{DomainEvent, EventWrite, ExpectedVersion, StreamName, Timestamp};

use super::{Latencies, Report, rate};
use crate::store::sqlite::{Options as StoreOptions, SqliteStore, Synchronous};

/// Options of `weft bench actors`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Folder to make the benchmark's files in (a fresh sub-folder, removed afterwards).
    #[arg(long)]
    pub path: Option<std::path::PathBuf>,
    /// Commands in each `commands-*` case.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub commands: u64,
    /// Distinct documents the `touch-1m` case sends one command each.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1_000..=10_000_000))]
    pub touch: u64,
    /// Durability of every commit.
    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    pub synchronous: Synchronous,
}

/// Most concurrent senders.
const MAX_SENDERS: usize = 256;

/// Events of the aggregate whose activation is measured.
const ACTIVATION_EVENTS: u64 = 10_000;

/// Activations measured per case.
const ACTIVATIONS: usize = 50;

/// Idle actors for the memory case.
const IDLE_ACTORS: usize = 10_000;

/// Most live actors in the `touch-1m` case.
const TOUCH_MAX_LIVE: usize = 10_000;

fn execute(command: Command) -> Execute<Document> {
    Execute { command_id: Uuid::now_v7(), command, expected_version: None, metadata: Metadata::default() }
}

fn register() -> Command {
    Command::Register {
        name: "bench.txt".into(),
        content_type: "text/plain".into(),
        declared_size_bytes: 1 << 20,
        tenant: "bench".into(),
        owner: "user:bench".into(),
        labels: Default::default(),
        at: Timestamp::now(),
    }
}

fn uploaded() -> Command {
    Command::MarkUploaded { size_bytes: 10, etag: "e0".into(), source: UploadSource::Client, at: Timestamp::now() }
}

fn add_version(n: u64) -> Command {
    Command::AddVersion { size_bytes: 10 + n % 100, etag: format!("e{n}"), key: None, at: Timestamp::now() }
}

/// Registers and uploads `count` documents; returns their streams.
pub(crate) async fn documents(host: &Host<Document>, count: usize) -> anyhow::Result<Vec<StreamName>> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let stream = DocumentId::new().stream();
        host.execute(&stream, execute(register())).await?;
        host.execute(&stream, execute(uploaded())).await?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Runs every case and prints the reports.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let path = options.path.clone();
    super::in_scratch_folder(path.as_deref(), |dir| async move { run_in(&dir, &options).await }).await
}

async fn run_in(dir: &std::path::Path, options: &Options) -> anyhow::Result<Vec<Report>> {
    let mut store_options = StoreOptions::new(dir.join("events.db"));
    store_options.synchronous = options.synchronous;
    let store = SqliteStore::open(store_options)?;
    // First, so that its peak resident set is its own and not what the allocator kept of the other cases.
    let mut reports = vec![touch_case(&store, options.touch).await?];
    for aggregates in [1usize, 100, 10_000] {
        reports.push(commands_case(&store, aggregates, options.commands).await?);
        eprintln!("commands-{aggregates}: done");
    }
    reports.extend(activation_cases(&store).await?);
    reports.push(memory_case(&store).await?);
    store.close().await?;
    Ok(reports)
}

async fn commands_case(store: &SqliteStore, aggregates: usize, commands: u64) -> anyhow::Result<Report> {
    let host = Host::<Document>::new(Arc::new(store.clone()), HostOptions::default());
    let streams = Arc::new(documents(&host, aggregates).await?);
    let senders = aggregates.clamp(16, MAX_SENDERS);
    let per_sender = commands.div_ceil(senders as u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let (host, streams) = (host.clone(), streams.clone());
        tasks.push(actix_rt::spawn(async move {
            let mut latencies = Latencies::default();
            for n in 0..per_sender {
                let stream = &streams[(sender + n as usize * senders) % streams.len()];
                let t = Instant::now();
                host.execute(stream, execute(add_version(n))).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                latencies.record(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let done = per_sender * senders as u64;

    // The baseline: the same events appended straight to the store, one writer per aggregate (as many as
    // there are senders): an aggregate takes one command at a time, so one writer per stream is the most
    // the store could do for the same work.
    let event = weft_events::domain::document::Event::from(weft_events::domain::document::VersionAdded {
        size_bytes: 10,
        etag: "e1".into(),
        key: None,
        at: Timestamp::now(),
    })
    .to_new_event()?;
    let writers = senders.min(aggregates);
    let per_writer = done.div_ceil(writers as u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..writers {
        let store = store.clone();
        let event = event.clone();
        tasks.push(actix_rt::spawn(async move {
            let stream = StreamName::new(format!("baseline-{aggregates}-{sender}-{}", Uuid::now_v7().simple()))?;
            for _ in 0..per_writer {
                store.append(&stream, ExpectedVersion::Any, vec![event.clone()]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let baseline = started.elapsed();
    Ok(Report {
        bench: "actors",
        case: format!("commands-{aggregates}"),
        ops_per_s: rate(done, elapsed),
        p50_ms: latencies.percentile_ms(50.0),
        p99_ms: latencies.percentile_ms(99.0),
        baseline_ops_per_s: rate(per_writer * writers as u64, baseline),
        bytes: None,
        shares: None,
        note: format!("one command; {senders} senders; baseline: {writers} raw appenders"),
    })
}

async fn activation_cases(store: &SqliteStore) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for (case, snapshot_every) in [("activation-replay", 0), ("activation-snapshot", 1000)] {
        let writer =
            Host::<Document>::new(Arc::new(store.clone()), HostOptions { snapshot_every, ..HostOptions::default() });
        let stream = documents(&writer, 1).await?.remove(0);
        for n in 2..ACTIVATION_EVENTS {
            writer.execute(&stream, execute(add_version(n))).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // Snapshots are saved in the background: wait until the last one is there.
        if snapshot_every > 0 {
            let deadline = Instant::now() + std::time::Duration::from_secs(30);
            while weft_events::EventRead::load_snapshot(store, &stream).await?.is_none_or(|s| s.version < 9_000) {
                anyhow::ensure!(Instant::now() < deadline, "no snapshot was saved");
                actix_rt::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let mut latencies = Latencies::default();
        let started = Instant::now();
        for _ in 0..ACTIVATIONS {
            let fresh = Host::<Document>::new(Arc::new(store.clone()), HostOptions::default());
            let t = Instant::now();
            fresh.inspect(&stream).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            latencies.record(t.elapsed());
        }
        let elapsed = started.elapsed();
        reports.push(Report {
            bench: "actors",
            case: case.into(),
            ops_per_s: rate(ACTIVATIONS as u64, elapsed),
            p50_ms: latencies.percentile_ms(50.0),
            p99_ms: latencies.percentile_ms(99.0),
            baseline_ops_per_s: 0.0,
            bytes: None,
            shares: None,
            note: format!("one activation of {ACTIVATION_EVENTS} events"),
        });
    }
    Ok(reports)
}

/// The resident set of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

async fn memory_case(store: &SqliteStore) -> anyhow::Result<Report> {
    let host = Host::<Document>::new(Arc::new(store.clone()), HostOptions::default());
    // Registered documents, then a fresh host: its actors hold only what activation loads.
    let streams = documents(&host, IDLE_ACTORS).await?;
    drop(host);
    let fresh = Host::<Document>::new(Arc::new(store.clone()), HostOptions::default());
    let before = resident_bytes();
    let started = Instant::now();
    for stream in &streams {
        fresh.inspect(stream).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let elapsed = started.elapsed();
    let after = resident_bytes();
    anyhow::ensure!(fresh.live() == IDLE_ACTORS, "only {} actors are live", fresh.live());
    Ok(Report {
        bench: "actors",
        case: "memory-per-actor".into(),
        ops_per_s: rate(IDLE_ACTORS as u64, elapsed),
        p50_ms: 0.0,
        p99_ms: 0.0,
        baseline_ops_per_s: 0.0,
        bytes: Some(after.saturating_sub(before) / IDLE_ACTORS as u64),
        shares: None,
        note: format!("{IDLE_ACTORS} idle actors; ops: activations"),
    })
}

/// The peak resident set of this process since [`reset_peak`], in bytes (Linux's `VmHWM`).
fn peak_resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches("kB").trim().to_owned()))
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Starts the peak resident set again from the current one (Linux: `5` to `/proc/self/clear_refs`), so a case's
/// peak is its own and not an earlier case's; false when the kernel refuses.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

async fn touch_case(store: &SqliteStore, touch: u64) -> anyhow::Result<Report> {
    let options = HostOptions { max_live: TOUCH_MAX_LIVE, ..HostOptions::default() };
    let host = Host::<Document>::new(Arc::new(store.clone()), options);
    let reset = reset_peak();
    let senders = MAX_SENDERS as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let host = host.clone();
        tasks.push(actix_rt::spawn(async move {
            let mut latencies = Latencies::default();
            let mut most_live = 0;
            for _ in (sender..touch).step_by(senders as usize) {
                let stream = DocumentId::new().stream();
                let t = Instant::now();
                host.execute(&stream, execute(register())).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                latencies.record(t.elapsed());
                most_live = most_live.max(host.live());
            }
            anyhow::Ok((latencies, most_live))
        }));
    }
    let mut latencies = Latencies::default();
    let mut most_live = 0;
    for task in tasks {
        let (theirs, live) = task.await??;
        latencies.extend(theirs);
        most_live = most_live.max(live);
    }
    let elapsed = started.elapsed();
    let peak = peak_resident_bytes();
    eprintln!(
        "touch-1m: {touch} documents in {:.1} s; peak resident {} MiB{}; at most {most_live} actors running (passivated ones stop after their mailbox)",
        elapsed.as_secs_f64(),
        peak >> 20,
        if reset { "" } else { " (of the whole run: the kernel refused to reset the peak)" }
    );
    Ok(Report {
        bench: "actors",
        case: "touch-1m".into(),
        ops_per_s: rate(touch, elapsed),
        p50_ms: latencies.percentile_ms(50.0),
        p99_ms: latencies.percentile_ms(99.0),
        baseline_ops_per_s: 0.0,
        bytes: Some(peak),
        shares: None,
        note: format!("one command to each of {touch} documents, max_live {TOUCH_MAX_LIVE}; bytes: peak resident"),
    })
}
