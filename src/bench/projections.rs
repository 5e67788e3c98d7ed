//! `weft bench projections`: the read side: rebuilding the read models from the log, keeping them current
//! under a command load, and status reads through the query API under that load.
//!
//! | case | what runs | an op | baseline |
//! | --- | --- | --- | --- |
//! | `rebuild` | the six projections a node runs (documents, jobs, agents, workflows, schedules, history), from position 0 into one fresh file, at once | an event of the log | reading the same log with `read_all` pages, applying nothing |
//! | `rebuild-documents`, `rebuild-jobs`, `rebuild-history` | one projection alone, the same way | an event of the log | the same |
//! | `live` | `AddVersion` commands through the actor host at `--rate` per second (paced, 64 senders) while the projections run | an event applied by every projection | - |
//! | `lag` | the same run: from a command's reply to every projection having applied its event; p50/p99 | a command | - |
//! | `status-read` | `GET /jobs/{id}` over HTTP/1.1 keep-alive to the query API during the same run, random jobs | a read | the same row read with a prepared statement on an open rusqlite connection, alternating with the HTTP reads |
//! | `status-read-auth` | the same reads to a second query API over the same read models with authentication on: an operator's bearer token (HS256) verified on each read, its tenant applied | a read | `status-read`, alternating with these reads in the same run |
//!
//! The log is made up front (`--events`, about 40% documents with uploads and versions, 60% jobs of three
//! steps with logs), appended straight to the store.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;
use weft_actors::document::{Command, Document};
use weft_actors::host::{Execute, Host, Metadata, Options as HostOptions};
use weft_events::domain::document::{self, UploadSource};
use weft_events::domain::ids::{AgentId, DocumentId, JobId, WorkflowId};
use weft_events::domain::job::{self, Level};
use weft_events::domain::workflow::{Input, RetryPolicy, Step};
use weft_events::{DomainEvent, EventRead, EventWrite, ExpectedVersion, NewEvent, Timestamp};
use weft_projections::documents::Documents;
use weft_projections::history::History;
use weft_projections::jobs::Jobs;

use super::{Latencies, Report, rate};
use crate::bus::memory::MemoryBus;
use crate::http::HttpApi;
use crate::query::Reads;
use crate::store::sqlite::{Options as StoreOptions, SqliteStore, Synchronous};

/// Options of `weft bench projections`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Folder to make the benchmark's files in (a fresh sub-folder, removed afterwards).
    #[arg(long)]
    pub path: Option<std::path::PathBuf>,
    /// Events in the log the rebuilds read.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1_000..=50_000_000))]
    pub events: u64,
    /// Commands per second during the live run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: u64,
    /// Seconds the live run lasts.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
}

/// Senders of the live run's commands.
const SENDERS: u64 = 64;
/// Documents the live run's commands go to.
const LIVE_DOCUMENTS: usize = 1000;

/// Runs every case and prints the reports.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let path = options.path.clone();
    super::in_scratch_folder(path.as_deref(), |dir| async move { run_in(&dir, &options).await }).await
}

async fn run_in(dir: &Path, options: &Options) -> anyhow::Result<Vec<Report>> {
    let mut store_options = StoreOptions::new(dir.join("events.db"));
    store_options.synchronous = Synchronous::Full;
    let store = SqliteStore::open(store_options)?;
    let jobs = fill(&store, options.events, |_, _| {}).await?;
    let head = store.head().await?;
    eprintln!("log: {head} events");
    let baseline = read_all_rate(&store, head).await?;
    let reader: Arc<dyn EventRead> = Arc::new(store.clone());
    let mut reports = Vec::new();
    for case in ["rebuild-documents", "rebuild-jobs", "rebuild-history", "rebuild"] {
        let path = dir.join(format!("{case}.db"));
        let started = Instant::now();
        let running = start(case, &path, &reader)?;
        for projection in &running {
            anyhow::ensure!(projection.reached(head).await, "{} stopped before the head", projection.name());
        }
        let elapsed = started.elapsed();
        for projection in running {
            projection.stop()?;
        }
        reports.push(Report {
            bench: "projections",
            case: case.into(),
            ops_per_s: rate(head, elapsed),
            p50_ms: 0.0,
            p99_ms: 0.0,
            baseline_ops_per_s: baseline,
            bytes: None,
            shares: None,
            note: "events of the log; baseline: read_all alone".into(),
        });
        eprintln!("{case}: done");
    }
    // The live run keeps the read models of the full rebuild.
    reports.extend(live(&store, &dir.join("rebuild.db"), &reader, &jobs, options).await?);
    store.close().await?;
    Ok(reports)
}

/// Starts the projection named `case` (`rebuild-documents`, ...), or all of them for `rebuild`.
pub(super) fn start(
    case: &str,
    path: &Path,
    reader: &Arc<dyn EventRead>,
) -> anyhow::Result<Vec<weft_projections::Running>> {
    let reader = reader.clone();
    Ok(match case {
        "rebuild-documents" => vec![weft_projections::start(Documents, path, reader)?],
        "rebuild-jobs" => vec![weft_projections::start(Jobs, path, reader)?],
        "rebuild-history" => vec![weft_projections::start(History, path, reader)?],
        _ => weft_projections::start_all(path, reader)?,
    })
}

fn encode<E: DomainEvent>(events: impl IntoIterator<Item = E>) -> anyhow::Result<Vec<NewEvent>> {
    events.into_iter().map(|e| e.to_new_event().map_err(anyhow::Error::from)).collect()
}

/// A document's events: registered, uploaded, two versions.
fn document_events(at: Timestamp) -> anyhow::Result<Vec<NewEvent>> {
    encode([
        document::Event::Registered(document::Registered {
            name: "report.pdf".into(),
            content_type: "application/pdf".into(),
            declared_size_bytes: 1 << 20,
            tenant: "bench".into(),
            owner: "user:bench".into(),
            labels: Default::default(),
            at,
        }),
        document::Uploaded { size_bytes: 1000, etag: "e1".into(), source: UploadSource::Notification, at }.into(),
        document::VersionAdded { size_bytes: 1100, etag: "e2".into(), key: None, at }.into(),
        document::VersionAdded { size_bytes: 1200, etag: "e3".into(), key: None, at }.into(),
    ])
}

/// A three-step job's events, all steps done: 12 events.
pub(super) fn job_events(input: DocumentId, at: Timestamp) -> anyhow::Result<Vec<NewEvent>> {
    let agent = AgentId::new();
    let retry = RetryPolicy { max_attempts: 3, base_delay_ms: 100, max_delay_ms: 1000 };
    let names = ["extract", "summarise", "report"];
    let steps = names
        .iter()
        .map(|name| Step {
            name: (*name).into(),
            agent,
            instruction: format!("{name} the document"),
            inputs: vec![Input::JobInputs],
            timeout_ms: 30_000,
            retry,
        })
        .collect();
    let mut events = vec![job::Event::Submitted(job::Submitted {
        workflow: WorkflowId::new(),
        workflow_version: 1,
        steps,
        inputs: vec![input],
        priority: 0,
        idempotency_key: None,
        parameters: Default::default(),
        input_versions: Default::default(),
        replay_of: None,
        at,
    })];
    for name in names {
        let step = name.to_owned();
        events.push(job::StepScheduled { step: step.clone(), attempt: 1, at }.into());
        events.push(job::StepStarted { step: step.clone(), attempt: 1, at }.into());
        events.push(job::StepSucceeded { step, attempt: 1, output: DocumentId::new(), at }.into());
    }
    events.push(job::LogAppended { level: Level::Info, message: "three steps done".into(), at }.into());
    events.push(job::Succeeded { at }.into());
    encode(events)
}

/// Appends about `events` events: documents of 4 events and jobs of 12 in a 2:1 ratio, 512 appends at a time
/// (made as they go, so a log of millions is never held in memory). Returns the jobs.
pub(super) async fn fill<S: EventWrite + Clone>(
    store: &S,
    events: u64,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Vec<JobId>> {
    const UNITS_PER_ROUND: u64 = 512 / 3;
    let units = events.div_ceil(4 * 2 + 12);
    let mut jobs = Vec::new();
    let mut done = 0;
    while done < units {
        let round = (units - done).min(UNITS_PER_ROUND);
        let mut appends = Vec::with_capacity(round as usize * 3);
        for _ in 0..round {
            let at = Timestamp::now();
            let documents = [DocumentId::new(), DocumentId::new()];
            for document in documents {
                appends.push((document.stream(), document_events(at)?));
            }
            let job = JobId::new();
            appends.push((job.stream(), job_events(documents[0], at)?));
            jobs.push(job);
        }
        let writes = appends.into_iter().map(|(stream, events)| {
            let store = store.clone();
            async move { store.append(&stream, ExpectedVersion::NoStream, events).await }
        });
        for result in futures::future::join_all(writes).await {
            result?;
        }
        done += round;
        progress(done * 20, units * 20);
    }
    Ok(jobs)
}

/// Events per second of reading the whole log in pages, applying nothing.
async fn read_all_rate(store: &SqliteStore, head: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut next = 1;
    while next <= head {
        let page = store.read_all(next, 1000).await?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
    }
    Ok(rate(head, started.elapsed()))
}

fn execute(command: Command) -> Execute<Document> {
    Execute { command_id: Uuid::now_v7(), command, expected_version: None, metadata: Metadata::default() }
}

/// The live run: paced commands, lag to every projection, and status reads over HTTP.
async fn live(
    store: &SqliteStore,
    read_models: &Path,
    reader: &Arc<dyn EventRead>,
    jobs: &[JobId],
    options: &Options,
) -> anyhow::Result<Vec<Report>> {
    let running = start("rebuild", read_models, reader)?;
    let head = store.head().await?;
    for projection in &running {
        anyhow::ensure!(projection.reached(head).await, "{} stopped before the head", projection.name());
    }
    let host = Host::<Document>::new(Arc::new(store.clone()), HostOptions::default());
    let streams = Arc::new(super::actors::documents(&host, LIVE_DOCUMENTS).await?);
    let positions: Vec<_> = running.iter().map(|p| (p.name(), p.watch())).collect();
    let reads = Reads {
        read_models: read_models.to_owned(),
        positions: positions.clone(),
        store: reader.clone(),
        maintenance: Default::default(),
        health: Default::default(),
    };
    let limits = crate::http::HttpLimits {
        max_body_bytes: 1 << 20,
        body_idle_timeout: crate::http::DEFAULT_BODY_IDLE_TIMEOUT,
        max_connections_per_client: crate::http::middleware::DEFAULT_MAX_PER_CLIENT,
    };
    let parts = |auth| crate::http::Parts {
        admin: Default::default(),
        limits,
        objects: None,
        providers: vec![],
        auth,
        origins: vec![],
        cluster: None,
    };
    let bus: Arc<dyn crate::bus::Bus> = Arc::new(MemoryBus::default());
    let api = HttpApi::start(std::net::TcpListener::bind("127.0.0.1:0")?, reads.clone(), bus.clone(), parts(None))?;
    // The same reads behind authentication: an operator of the jobs' tenant, its token verified on every read
    // and its tenant applied to every item.
    let secret = crate::auth::token::Secret::from_bytes(&rand::random::<[u8; 32]>());
    let token = crate::auth::token::issue(
        &secret,
        "bench",
        crate::auth::Role::Operator,
        &[weft_events::envelope::DEFAULT_TENANT.to_owned()],
        Duration::from_secs(3600),
    );
    let verifier = Some(crate::auth::token::Verifier::new(&secret));
    let api_auth = HttpApi::start(
        std::net::TcpListener::bind("127.0.0.1:0")?,
        reads,
        bus,
        parts(verifier.map(std::sync::Arc::new)),
    )?;
    let start_position = store.head().await?;

    // Lag: each acknowledged command's position and time, resolved when every projection passed it.
    let pending: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let tracker = {
        let pending = pending.clone();
        let mut watches: Vec<_> = positions.iter().map(|(_, w)| w.clone()).collect();
        actix_rt::spawn(async move {
            let mut lags = Latencies::default();
            let mut applied = 0u64;
            loop {
                let low = watches.iter_mut().map(|w| *w.borrow_and_update()).min().unwrap_or(0);
                let now = Instant::now();
                {
                    let mut pending = pending.lock().expect("not poisoned");
                    let rest = pending.split_off(&(low + 1));
                    for (_, acked) in std::mem::replace(&mut *pending, rest) {
                        lags.record(now.saturating_duration_since(acked));
                        applied += 1;
                    }
                }
                if *done_rx.borrow() && pending.lock().expect("not poisoned").is_empty() {
                    return (lags, applied);
                }
                let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
                tokio::select! {
                    _ = changed => {}
                    _ = done_rx.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
    };

    // Status reads over HTTP, alternating with the raw baseline, on a thread of their own.
    let stop_reads = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_thread = {
        let (path, stop) = (read_models.to_owned(), stop_reads.clone());
        let targets = [(api.addr(), None), (api_auth.addr(), Some(token))];
        let ids: Vec<String> = jobs.iter().map(|j| j.0.to_string()).collect();
        std::thread::spawn(move || status_reads(targets, &path, &ids, &stop))
    };

    let total = options.rate * options.seconds;
    let per_sender = total.div_ceil(SENDERS);
    let interval = Duration::from_secs_f64(SENDERS as f64 / options.rate as f64);
    let started = Instant::now();
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (host, streams, pending) = (host.clone(), streams.clone(), pending.clone());
        senders.push(actix_rt::spawn(async move {
            let mut next = started + interval.mul_f64(sender as f64 / SENDERS as f64);
            for n in 0..per_sender {
                actix_rt::time::sleep_until(next.into()).await;
                next += interval;
                let stream = &streams[((sender + n * SENDERS) as usize) % streams.len()];
                let command = Command::AddVersion {
                    size_bytes: 10 + n % 100,
                    etag: format!("e{n}"),
                    key: None,
                    at: Timestamp::now(),
                };
                let outcome = host.execute(stream, execute(command)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                if let Some((_, position)) = outcome.positions {
                    pending.lock().expect("not poisoned").insert(position, Instant::now());
                }
            }
            anyhow::Ok(())
        }));
    }
    for sender in senders {
        sender.await??;
    }
    let sent = started.elapsed();
    done_tx.send_replace(true);
    let (mut lags, applied) = tracker.await?;
    let elapsed = started.elapsed();
    let end = store.head().await?;
    stop_reads.store(true, std::sync::atomic::Ordering::Relaxed);
    let ([mut http, mut http_auth], raw) =
        reader_thread.join().map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    api.stop().await;
    api_auth.stop().await;
    for projection in running {
        projection.stop()?;
    }
    let events = end - start_position;
    Ok(vec![
        Report {
            bench: "projections",
            case: "live".into(),
            ops_per_s: rate(events, elapsed),
            p50_ms: 0.0,
            p99_ms: 0.0,
            baseline_ops_per_s: rate(events, sent),
            bytes: None,
            shares: None,
            note: format!(
                "events applied by all {} projections; baseline: the commands' own rate ({} offered)",
                weft_projections::Name::ALL.len(),
                options.rate
            ),
        },
        Report {
            bench: "projections",
            case: "lag".into(),
            ops_per_s: rate(applied, elapsed),
            p50_ms: lags.percentile_ms(50.0),
            p99_ms: lags.percentile_ms(99.0),
            baseline_ops_per_s: 0.0,
            bytes: None,
            shares: None,
            note: "command reply -> applied by every projection".into(),
        },
        Report {
            bench: "projections",
            case: "status-read".into(),
            ops_per_s: http.serial_rate(),
            p50_ms: http.percentile_ms(50.0),
            p99_ms: http.percentile_ms(99.0),
            baseline_ops_per_s: raw.serial_rate(),
            bytes: None,
            shares: None,
            note: "GET /jobs/{id}, one keep-alive HTTP client; baseline: prepared rusqlite read".into(),
        },
        Report {
            bench: "projections",
            case: "status-read-auth".into(),
            ops_per_s: http_auth.serial_rate(),
            p50_ms: http_auth.percentile_ms(50.0),
            p99_ms: http_auth.percentile_ms(99.0),
            baseline_ops_per_s: http.serial_rate(),
            bytes: None,
            shares: None,
            note: "the same with a bearer token (HS256) and the tenant checked; baseline: status-read, alternating"
                .into(),
        },
    ])
}

/// Reads random jobs' status over HTTP from each target (its address, and a token to send) and straight from
/// SQLite, in turn, until `stop`.
fn status_reads(
    targets: [(std::net::SocketAddr, Option<String>); 2],
    read_models: &Path,
    ids: &[String],
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<([Latencies; 2], Latencies)> {
    let mut http = [Latencies::default(), Latencies::default()];
    let mut raw = Latencies::default();
    let mut connections = Vec::new();
    for (addr, token) in &targets {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let authorization = token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        connections.push((stream.try_clone()?, BufReader::new(stream), authorization));
    }
    let db = rusqlite::Connection::open_with_flags(read_models, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut statement = db.prepare("SELECT id, status, steps_done, steps_total, version FROM jobs WHERE id = ?1")?;
    let mut n = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let id = &ids[(n >> 33) % ids.len()];
        for ((writer, reader, authorization), latencies) in connections.iter_mut().zip(http.iter_mut()) {
            let t = Instant::now();
            write!(writer, "GET /jobs/{id} HTTP/1.1\r\nHost: bench\r\n{authorization}\r\n")?;
            read_answer(reader, &format!("/jobs/{id}"))?;
            latencies.record(t.elapsed());
        }
        let t = Instant::now();
        let _: (String, String, i64, i64, i64) =
            statement.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
        raw.record(t.elapsed());
    }
    Ok((http, raw))
}

/// Reads one 200 answer with a `Content-Length` body to `GET {path}`.
pub(super) fn read_answer(reader: &mut BufReader<TcpStream>, path: &str) -> anyhow::Result<()> {
    let mut length = 0usize;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    anyhow::ensure!(line.contains(" 200 "), "GET {path} answered {line:?}");
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(())
}
