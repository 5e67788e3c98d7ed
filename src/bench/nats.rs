//! `weft bench nats`: the command round trip over NATS — client -> NATS -> Weft's intake -> actor -> store ->
//! reply — at 1, 16 and 256 requests in flight, next to a raw NATS request/reply to a responder that does
//! nothing, at the same concurrency, in the same run; then the same with the JetStream store, next to raw
//! JetStream publishes to a file stream. Starts its own `nats-server` (JetStream with `sync_interval:
//! always`) unless given `--nats`; there it makes streams and buckets of its own and removes them after.
//!
//! `command-sqlite-16-auth` is `command-sqlite-16` with authentication on: every command carries an
//! operator's bearer token, which the intake verifies and checks (role, tenant, the instance's tenant) as a
//! node does; its baseline is the same case without authentication, run in turns with it.
//!
//! `command-sqlite-16-telemetry` is `command-sqlite-16` with metrics recorded and traces exported over OTLP to
//! a local receiver ([`TraceSink`], started before the bench's tracing), in turns with the same case with
//! both off (its baseline). The other cases run with both off.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use weft_actors::document::Document;
use weft_actors::host::{Host, Options as HostOptions};
use weft_actors::process::Hosts;
use weft_events::domain::ids::Uuid;

use super::{Latencies, Report, rate};
use crate::bus::Bus;
use crate::bus::nats::NatsBus;
use crate::intake::{Intake, IntakeOptions};
use crate::store::jetstream::{JetStreamConfig, JetStreamStore};
use crate::store::sqlite::{Options as StoreOptions, SqliteStore, Synchronous};
use weft_harness::NatsServer;

/// Options of `weft bench nats`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// A NATS server to use (comma-separated URLs); without it the bench starts its own.
    #[arg(long)]
    pub nats: Option<String>,
    /// Folder to make the store in (a fresh sub-folder, removed afterwards).
    #[arg(long)]
    pub path: Option<std::path::PathBuf>,
    /// Commands in the 256-in-flight case; the others send a fraction.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(256..=10_000_000))]
    pub commands: u64,
    /// Durability of every store commit.
    #[arg(long, value_enum, default_value_t = Synchronous::Full)]
    pub synchronous: Synchronous,
}

/// Documents the commands go to.
const DOCUMENTS: usize = 1000;

/// Runs every case and prints the reports. Must run on an actix system.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let _server;
    let url = match &options.nats {
        Some(url) => url.clone(),
        None => {
            _server = NatsServer::start()?;
            _server.url()
        }
    };
    // Metrics and traces are off but for the telemetry case's halves that measure them.
    crate::telemetry::metrics::install();
    crate::telemetry::set_enabled(false);
    let path = options.path.clone();
    super::in_scratch_folder(path.as_deref(), |dir| async move { run_in(&dir, &url, &options).await }).await
}

async fn run_in(dir: &std::path::Path, url: &str, options: &Options) -> anyhow::Result<Vec<Report>> {
    let node = crate::nats::connect(url, "weft-bench-node").await?;
    let bus: Arc<dyn Bus> = Arc::new(NatsBus::new(node.clone()));
    // The baseline's responder: answers every request with an empty body, on the node's connection.
    let mut echo = node.subscribe("weft.bench.echo").await?;
    let responder = node.clone();
    let echo_task = actix_rt::spawn(async move {
        while let Some(request) = echo.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, Bytes::new()).await;
            }
        }
    });
    node.flush().await?;
    let client = crate::nats::connect(url, "weft-bench-client").await?;

    let mut store_options = StoreOptions::new(dir.join("events.db"));
    store_options.synchronous = options.synchronous;
    let sqlite = SqliteStore::open(store_options)?;
    let mut reports =
        store_cases("sqlite", Arc::new(sqlite.clone()), &bus, &client, options, Baseline::RequestReply).await?;
    sqlite.close().await?;

    // Streams and buckets of the bench's own, removed afterwards, so that a server given with `--nats`
    // keeps its real ones untouched.
    let config = JetStreamConfig {
        stream: "WEFT_BENCH".into(),
        subject_prefix: "weft.bench.store".into(),
        snapshots_bucket: "weft_bench_snapshots".into(),
        checkpoints_bucket: "weft_bench_checkpoints".into(),
        ..JetStreamConfig::default()
    };
    let js = async_nats::jetstream::new(node.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "WEFT_BENCH_RAW".into(),
        subjects: vec!["weft.bench.raw.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the raw baseline's stream: {e}"))?;
    let result = async {
        let store = JetStreamStore::open(node.clone(), config.clone()).await?;
        store_cases("jetstream", Arc::new(store), &bus, &client, options, Baseline::JetStreamPublish).await
    }
    .await;
    for stream in ["WEFT_BENCH", "WEFT_BENCH_RAW", "KV_weft_bench_snapshots", "KV_weft_bench_checkpoints"] {
        let _ = js.delete_stream(stream).await;
    }
    reports.extend(result?);
    echo_task.abort();
    Ok(reports)
}

/// What a case's raw baseline measures.
#[derive(Debug, Clone, Copy)]
enum Baseline {
    /// A NATS request/reply to a responder that does nothing.
    RequestReply,
    /// A JetStream publish to a file stream on the same server, waiting for its acknowledgement.
    JetStreamPublish,
}

/// The three concurrency cases of one store, each next to its baseline.
async fn store_cases(
    name: &str,
    store: Arc<dyn weft_events::EventStore>,
    bus: &Arc<dyn Bus>,
    client: &async_nats::Client,
    options: &Options,
    baseline: Baseline,
) -> anyhow::Result<Vec<Report>> {
    let hosts = Hosts::new(store, HostOptions::default());
    let documents = Arc::new(super::actors::documents(&Host::<Document>::clone(&hosts.document), DOCUMENTS).await?);
    let intake = Intake::start(bus.clone(), hosts.clone(), IntakeOptions::default()).await?;
    let mut reports = Vec::new();
    let commands_at =
        |in_flight: usize| (options.commands * in_flight as u64 / 256).max(in_flight as u64 * 50).min(options.commands);
    for in_flight in [1usize, 16, 256] {
        let commands = commands_at(in_flight);
        let (ops, mut latencies) = commands_case(client, &documents, in_flight, commands, None).await?;
        let (baseline_ops, note) = match baseline {
            Baseline::RequestReply => (echo_case(client, in_flight, commands).await?, "no-op request/reply"),
            Baseline::JetStreamPublish => {
                (publish_case(client, in_flight, commands).await?, "JetStream publish to a file stream, acked")
            }
        };
        let case = format!("command-{name}-{in_flight}");
        eprintln!("{case}: done");
        reports.push(Report {
            bench: "nats",
            case,
            ops_per_s: ops,
            p50_ms: latencies.percentile_ms(50.0),
            p99_ms: latencies.percentile_ms(99.0),
            baseline_ops_per_s: baseline_ops,
            bytes: None,
            shares: None,
            note: format!("command over NATS, {name} store; baseline: {note}"),
        });
    }
    intake.stop().await;
    bus.confirm().await?;
    if matches!(baseline, Baseline::RequestReply) {
        // The full count at 16 in flight: the two runs compared must be long enough for their difference to
        // show above the noise of a shared machine.
        let target = Target { hosts: &hosts, bus, client, documents: &documents, commands: options.commands };
        reports.push(auth_case(name, &target).await?);
        reports.push(telemetry_case(name, &target).await?);
    }
    client.flush().await?;
    Ok(reports)
}

/// `command-<store>-16-auth`: the 16-in-flight case through an intake that authenticates, each command with an
/// operator's token of the documents' tenant, in turns with the same case without authentication (its
/// baseline).
async fn auth_case(name: &str, target: &Target<'_>) -> anyhow::Result<Report> {
    use crate::auth::{Role, token};
    let secret = token::Secret::from_bytes(&rand::random::<[u8; 32]>());
    let tenants = [crate::auth::DEFAULT_TENANT.to_owned()];
    let bearer = format!("Bearer {}", token::issue(&secret, "bench", Role::Operator, &tenants, token::ADMIN_TOKEN_TTL));
    let verifier = Arc::new(token::Verifier::new(&secret));
    let variant = |authenticated: bool| {
        let options = IntakeOptions { verifier: authenticated.then(|| verifier.clone()), ..IntakeOptions::default() };
        (options, authenticated.then(|| bearer.clone()))
    };
    let turns = in_turns(target, variant).await?;
    let note = format!("command over NATS with a bearer token checked, {name} store; baseline: the same without");
    Ok(turns.report(format!("command-{name}-16-auth"), note))
}

/// `command-<store>-16-telemetry`: the 16-in-flight case with metrics recorded and traces exported, in turns
/// with the same case with both off (its baseline).
async fn telemetry_case(name: &str, target: &Target<'_>) -> anyhow::Result<Report> {
    let exported_before = TraceSink::received();
    let variant = |on: bool| {
        crate::telemetry::set_enabled(on);
        (IntakeOptions::default(), None)
    };
    let turns = in_turns(target, variant).await;
    crate::telemetry::set_enabled(false);
    let turns = turns?;
    // What the exporter had in hand when the case ended reaches the receiver within its batch delay.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let exported = TraceSink::received() - exported_before;
    let note = format!(
        "command over NATS with metrics on and traces exported over OTLP ({exported} bytes received), {name} \
         store; baseline: the same with both off"
    );
    Ok(turns.report(format!("command-{name}-16-telemetry"), note))
}

/// What the 16-in-flight cases run against: the store's hosts, the node's bus, the client, the documents, and
/// the full count of commands.
#[derive(Clone, Copy)]
struct Target<'a> {
    hosts: &'a Hosts,
    bus: &'a Arc<dyn Bus>,
    client: &'a async_nats::Client,
    documents: &'a Arc<Vec<weft_events::StreamName>>,
    commands: u64,
}

/// The rates of a variant of the 16-in-flight case and of the plain case, run in turns, and the variant's
/// latencies.
struct Turns {
    with: f64,
    without: f64,
    latencies: Latencies,
}

impl Turns {
    fn report(mut self, case: String, note: String) -> Report {
        eprintln!("{case}: done");
        Report {
            bench: "nats",
            case,
            ops_per_s: self.with,
            p50_ms: self.latencies.percentile_ms(50.0),
            p99_ms: self.latencies.percentile_ms(99.0),
            baseline_ops_per_s: self.without,
            bytes: None,
            shares: None,
            note,
        }
    }
}

/// Runs the 16-in-flight case without, with, with and without the variant, twice over (each an eighth of
/// `commands`), so that a store that slows as it grows, a machine that warms up, or a burst of other work (a
/// checkpoint of the store) weighs on both sides alike. `variant`
/// gives the intake's options and the commands' `Authorization` for each side (and may switch what else the
/// side measures).
async fn in_turns(
    target: &Target<'_>,
    variant: impl Fn(bool) -> (IntakeOptions, Option<String>),
) -> anyhow::Result<Turns> {
    let Target { hosts, bus, client, documents, commands } = *target;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut latencies = Latencies::default();
    for on in [false, true, true, false, false, true, true, false] {
        let (options, authorization) = variant(on);
        let intake = Intake::start(bus.clone(), hosts.clone(), options).await?;
        let result = commands_case(client, documents, 16, (commands / 8).max(16 * 50), authorization.as_deref()).await;
        intake.stop().await;
        let (ops, run) = result?;
        bus.confirm().await?;
        if on {
            with.push(ops);
            latencies.extend(run);
        } else {
            without.push(ops);
        }
    }
    let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len() as f64;
    Ok(Turns { with: mean(&with), without: mean(&without), latencies })
}

/// A local OTLP/HTTP receiver that takes every export and keeps only the count of bytes: where `weft bench
/// nats` sends its traces.
pub struct TraceSink;

static SINK_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl TraceSink {
    /// Starts it on a free loopback port, on a thread of its own; its base URL.
    pub fn start() -> std::io::Result<String> {
        use actix_web::{App, HttpResponse, HttpServer, web};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        std::thread::Builder::new().name("otlp-sink".into()).spawn(move || {
            let server = HttpServer::new(|| {
                App::new().route(
                    "/v1/traces",
                    // The body is counted as it comes, not gathered: the receiver shares the machine with the
                    // node it measures.
                    web::post().to(|mut body: web::Payload| async move {
                        while let Some(chunk) = body.next().await {
                            let Ok(chunk) = chunk else { return HttpResponse::BadRequest().finish() };
                            SINK_BYTES.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                        // An empty ExportTraceServiceResponse: everything accepted.
                        HttpResponse::Ok().content_type("application/x-protobuf").finish()
                    }),
                )
            })
            .workers(1)
            .disable_signals();
            let served = actix_rt::System::new().block_on(async move { server.listen(listener)?.run().await });
            if let Err(error) = served {
                eprintln!("weft bench: the OTLP receiver stopped: {error}");
            }
        })?;
        Ok(url)
    }

    /// Bytes of exports received so far.
    pub fn received() -> u64 {
        SINK_BYTES.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Sends `commands` `add_version` commands, `in_flight` at a time, as a client would: MessagePack bodies.
async fn commands_case(
    client: &async_nats::Client,
    documents: &Arc<Vec<weft_events::StreamName>>,
    in_flight: usize,
    commands: u64,
    authorization: Option<&str>,
) -> anyhow::Result<(f64, Latencies)> {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(crate::bus::AUTHORIZATION, value);
    }
    let per_sender = commands.div_ceil(in_flight as u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..in_flight {
        let (client, documents, headers) = (client.clone(), documents.clone(), headers.clone());
        tasks.push(actix_rt::spawn(async move {
            let mut latencies = Latencies::default();
            for n in 0..per_sender {
                let stream = &documents[(sender + n as usize * in_flight) % documents.len()];
                let id = stream.as_str().trim_start_matches("document-");
                let body = json!({"command_id": Uuid::now_v7().to_string(), "type": "add_version",
                                  "payload": {"size_bytes": 10 + n % 100, "etag": format!("e{n}")}});
                let body = crate::protocol::encode(&body, false);
                let t = Instant::now();
                let subject = format!("weft.cmd.document.{id}");
                let reply = client.request_with_headers(subject, headers.clone(), body.into()).await?;
                latencies.record(t.elapsed());
                let reply: serde_json::Value =
                    crate::protocol::decode(&reply.payload, false).map_err(anyhow::Error::msg)?;
                anyhow::ensure!(reply["status"] == "ok", "a command failed: {reply}");
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((rate(per_sender * in_flight as u64, started.elapsed()), latencies))
}

/// The raw baseline: request/reply to the no-op responder at the same concurrency.
async fn echo_case(client: &async_nats::Client, in_flight: usize, requests: u64) -> anyhow::Result<f64> {
    let per_sender = requests.div_ceil(in_flight as u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let client = client.clone();
        tasks.push(actix_rt::spawn(async move {
            for _ in 0..per_sender {
                client.request("weft.bench.echo", Bytes::from_static(b"ping")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(rate(per_sender * in_flight as u64, started.elapsed()))
}

/// The raw JetStream baseline: publishes of a 100-byte message to a file stream on the same server (same
/// `sync_interval`), each awaiting its acknowledgement, at the same concurrency.
async fn publish_case(client: &async_nats::Client, in_flight: usize, publishes: u64) -> anyhow::Result<f64> {
    let js = async_nats::jetstream::new(client.clone());
    let per_sender = publishes.div_ceil(in_flight as u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for sender in 0..in_flight {
        let js = js.clone();
        tasks.push(actix_rt::spawn(async move {
            for _ in 0..per_sender {
                let ack = js
                    .publish(format!("weft.bench.raw.{sender}"), Bytes::from_static(&[7u8; 100]))
                    .await
                    .map_err(|e| anyhow::anyhow!("raw publish: {e}"))?;
                ack.await.map_err(|e| anyhow::anyhow!("raw publish ack: {e}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(rate(per_sender * in_flight as u64, started.elapsed()))
}
