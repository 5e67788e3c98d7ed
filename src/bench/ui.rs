//! `weft bench ui`: the dashboard's pages over read models of `--jobs` jobs (and twice as many documents),
//! served by the node's HTTP edge behind authentication (an admin's bearer token, verified on every request).
//!
//! - `jobs-page`, `documents-page`: `GET /ui/jobs` and `GET /ui/documents` (the first page, fifty rows, newest
//!   first), one keep-alive client; baseline: the JSON list the page is made from (`GET /jobs?order=desc&
//!   limit=50`), alternating with it.
//! - `job-page`: `GET /ui/jobs/{id}` of random jobs; baseline: `GET /jobs/{id}`.
//! - `job-live`: a job's page's live feed (`GET /jobs/{id}/live`, what the page's script follows): from an
//!   event's append being acknowledged by the store to the job's new state arriving on the feed. Each job is
//!   submitted, its feed opened, then its 11 changes appended one at a time (steps scheduled, started,
//!   succeeded; its log; its end). Baseline: the same changes' time to being applied by the history read model
//!   alone (the feed's source), as a serial rate.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_events::domain::ids::{DocumentId, JobId};
use weft_events::{EventRead, EventWrite, ExpectedVersion, Timestamp};

use super::projections::{fill, job_events, read_answer, start};
use super::{Latencies, Report};
use crate::http::HttpApi;
use crate::query::read::Reads;
use crate::store::sqlite::{Options as StoreOptions, SqliteStore};

/// Options of `weft bench ui`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Folder to make the benchmark's files in (a fresh sub-folder, removed afterwards).
    #[arg(long)]
    pub path: Option<std::path::PathBuf>,
    /// Jobs in the read models (with twice as many documents).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    pub jobs: u64,
    /// Page requests per case.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub requests: u64,
    /// Jobs followed live (11 changes each).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub live_jobs: u64,
}

/// Runs every case and prints the reports.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let path = options.path.clone();
    super::in_scratch_folder(path.as_deref(), |dir| async move { run_in(&dir, &options).await }).await
}

async fn run_in(dir: &Path, options: &Options) -> anyhow::Result<Vec<Report>> {
    let store = SqliteStore::open(StoreOptions::new(dir.join("events.db")))?;
    let jobs = fill(&store, options.jobs * 20, |_, _| {}).await?;
    let head = store.head().await?;
    eprintln!("log: {head} events, {} jobs, {} documents", jobs.len(), jobs.len() * 2);
    let reader: Arc<dyn EventRead> = Arc::new(store.clone());
    let read_models = dir.join("read.db");
    let running = start("rebuild", &read_models, &reader)?;
    for projection in &running {
        anyhow::ensure!(projection.reached(head).await, "{} stopped before the head", projection.name());
    }
    let positions: Vec<_> = running.iter().map(|p| (p.name(), p.watch())).collect();
    let reads = Reads {
        read_models: read_models.clone(),
        positions: positions.clone(),
        store: reader.clone(),
        maintenance: Default::default(),
        health: Default::default(),
    };
    let secret = crate::auth::token::Secret::from_bytes(&rand::random::<[u8; 32]>());
    let token = crate::auth::token::issue(
        &secret,
        "bench",
        crate::auth::Role::Admin,
        &["*".to_owned()],
        Duration::from_secs(3600),
    );
    let verifier = Arc::new(crate::auth::token::Verifier::new(&secret));
    let parts = crate::http::Parts {
        admin: Default::default(),
        limits: crate::http::HttpLimits {
            max_body_bytes: 1 << 20,
            body_idle_timeout: crate::http::DEFAULT_BODY_IDLE_TIMEOUT,
            max_connections_per_client: crate::http::middleware::DEFAULT_MAX_PER_CLIENT,
        },
        objects: None,
        providers: vec![],
        auth: Some(verifier),
        origins: vec![],
        cluster: None,
    };
    let bus: Arc<dyn crate::bus::Bus> = Arc::new(crate::bus::memory::MemoryBus::default());
    let api = HttpApi::start(std::net::TcpListener::bind("127.0.0.1:0")?, reads, bus, parts)?;
    let addr = api.addr();
    let authorization = format!("Authorization: Bearer {token}\r\n");

    let mut reports = Vec::new();
    let requests = options.requests;
    let ids: Vec<String> = jobs.iter().map(|j| j.0.to_string()).collect();
    let cases: [(&str, &str, &str); 2] = [
        ("jobs-page", "/ui/jobs", "/jobs?order=desc&limit=50"),
        ("documents-page", "/ui/documents", "/documents?order=desc&limit=50"),
    ];
    for (case, page, list) in cases {
        let (page, list, authorization) = (page.to_owned(), list.to_owned(), authorization.clone());
        let (mut pages, lists) = tokio::task::spawn_blocking(move || {
            alternate(addr, &authorization, requests, |_| page.clone(), |_| list.clone())
        })
        .await??;
        reports.push(Report {
            bench: "ui",
            case: case.into(),
            ops_per_s: pages.serial_rate(),
            p50_ms: pages.percentile_ms(50.0),
            p99_ms: pages.percentile_ms(99.0),
            baseline_ops_per_s: lists.serial_rate(),
            bytes: None,
            shares: None,
            note: "the page, one keep-alive client; baseline: its JSON list, alternating".into(),
        });
        eprintln!("{case}: done");
    }
    let authorization_job = authorization.clone();
    let (mut pages, items) = tokio::task::spawn_blocking(move || {
        let pick = |n: u64| &ids[(n.wrapping_mul(6364136223846793005) >> 33) as usize % ids.len()];
        alternate(
            addr,
            &authorization_job,
            requests,
            |n| format!("/ui/jobs/{}", pick(n)),
            |n| format!("/jobs/{}", pick(n)),
        )
    })
    .await??;
    reports.push(Report {
        bench: "ui",
        case: "job-page".into(),
        ops_per_s: pages.serial_rate(),
        p50_ms: pages.percentile_ms(50.0),
        p99_ms: pages.percentile_ms(99.0),
        baseline_ops_per_s: items.serial_rate(),
        bytes: None,
        shares: None,
        note: "a random job's page; baseline: GET /jobs/{id}, alternating".into(),
    });
    eprintln!("job-page: done");

    let history = positions
        .iter()
        .find(|(name, _)| *name == crate::query::read::HISTORY)
        .map(|(_, watch)| watch.clone())
        .ok_or_else(|| anyhow::anyhow!("no history projection"))?;
    let (mut feed, applied, changes) = live(&store, history, addr, &authorization, options.live_jobs).await?;
    reports.push(Report {
        bench: "ui",
        case: "job-live".into(),
        ops_per_s: feed.serial_rate(),
        p50_ms: feed.percentile_ms(50.0),
        p99_ms: feed.percentile_ms(99.0),
        baseline_ops_per_s: applied.serial_rate(),
        bytes: None,
        shares: None,
        note: format!(
            "{changes} changes: append acknowledged -> the job's state on its page's feed; baseline: -> applied \
             by the history model"
        ),
    });
    api.stop().await;
    for projection in running {
        projection.stop()?;
    }
    store.close().await?;
    Ok(reports)
}

/// `requests` GETs of `page(n)` and of `baseline(n)`, in turn, on one keep-alive connection each: their
/// latencies.
fn alternate(
    addr: std::net::SocketAddr,
    authorization: &str,
    requests: u64,
    page: impl Fn(u64) -> String,
    baseline: impl Fn(u64) -> String,
) -> anyhow::Result<(Latencies, Latencies)> {
    let mut connections = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        connections.push((stream.try_clone()?, BufReader::new(stream)));
    }
    let (mut pages, mut baselines) = (Latencies::default(), Latencies::default());
    for n in 0..requests {
        for (i, (writer, reader)) in connections.iter_mut().enumerate() {
            let path = if i == 0 { page(n) } else { baseline(n) };
            let t = Instant::now();
            write!(writer, "GET {path} HTTP/1.1\r\nHost: bench\r\n{authorization}\r\n")?;
            read_answer(reader, &path)?;
            if i == 0 { pages.record(t.elapsed()) } else { baselines.record(t.elapsed()) }
        }
    }
    Ok((pages, baselines))
}

/// The live case: for each of `jobs` new jobs, its submission, its feed opened after it, then each further
/// change appended and timed to its state on the feed and to the history model's applying it.
async fn live(
    store: &SqliteStore,
    mut history: tokio::sync::watch::Receiver<u64>,
    addr: std::net::SocketAddr,
    authorization: &str,
    jobs: u64,
) -> anyhow::Result<(Latencies, Latencies, u64)> {
    let (mut feed, mut applied) = (Latencies::default(), Latencies::default());
    let mut changes = 0;
    for _ in 0..jobs {
        let job = JobId::new();
        let mut events = job_events(DocumentId::new(), Timestamp::now())?.into_iter();
        let submitted = events.next().ok_or_else(|| anyhow::anyhow!("a job has events"))?;
        let first = store.append(&job.stream(), ExpectedVersion::NoStream, vec![submitted]).await?;
        while *history.borrow_and_update() < first.last_position {
            history.changed().await?;
        }
        // The page's feed, read on a thread of its own: each `state` event's version and when it came.
        let (states, mut arrived) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        write!(stream, "GET /jobs/{}/live?cursor=1 HTTP/1.1\r\nHost: bench\r\n{authorization}\r\n", job.0)?;
        let reader = BufReader::new(stream.try_clone()?);
        let follower = std::thread::spawn(move || follow(reader, states));
        let mut version = 1;
        for event in events {
            let appended = store.append(&job.stream(), ExpectedVersion::Exact(version), vec![event]).await?;
            let acked = Instant::now();
            version = appended.version;
            while *history.borrow_and_update() < appended.last_position {
                history.changed().await?;
            }
            applied.record(acked.elapsed());
            loop {
                let next = tokio::time::timeout(Duration::from_secs(10), arrived.recv()).await;
                let Ok(Some((seen, at))) = next else {
                    anyhow::bail!("job {} version {version}: no state on its feed in 10 s", job.0);
                };
                if seen >= version {
                    feed.record(at.saturating_duration_since(acked));
                    break;
                }
            }
            changes += 1;
        }
        stream.shutdown(std::net::Shutdown::Both)?;
        let _ = follower.join();
    }
    Ok((feed, applied, changes))
}

/// Reads a feed's answer: each `state` event's `version`, with the time it came, until the connection ends.
fn follow(mut reader: BufReader<TcpStream>, states: tokio::sync::mpsc::UnboundedSender<(u64, Instant)>) {
    let mut line = String::new();
    let mut state = false;
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        let text = line.trim_end();
        if text == "event: state" {
            state = true;
        } else if let Some(data) = text.strip_prefix("data: ")
            && state
        {
            let at = Instant::now();
            let version = serde_json::from_str::<serde_json::Value>(data).ok().and_then(|v| v["version"].as_u64());
            if states.send((version.unwrap_or(0), at)).is_err() {
                return;
            }
            state = false;
        }
        line.clear();
    }
}
