//! `weft bench cluster`: nodes routing commands by partition (`--partition-routing`), each a `weft serve`
//! process of this binary, on one `nats-server` with the command mapping (started by the bench) and a
//! JetStream store.
//!
//! | case | what | baseline |
//! |---|---|---|
//! | `commands-routed-N` | document registrations over NATS, `--concurrency` in flight, with N nodes | the same with N nodes that take any command, on a server without the mapping |
//! | `jobs-routed-N` | one-step jobs of the built-in `summarize` workflow, submitted over HTTP `--concurrency` at once, from submission to end, with N nodes (each running the orchestrator, the worker and the timers of the partitions it holds) | the same with N nodes that take any command |
//! | `shares-3` | each node's share of the partitions and of the commands it ran (from its `/metrics`), as fractions of an even share, in `shares` | - |
//! | `failover` | from a SIGKILL of one of three nodes to every partition held by a live node again, over `--kills` kills (the killed node started again after each) | - |
//!
//! The nodes share one machine (and its cores) with the server and the clients: `commands-routed-N` says how
//! the routing costs and spreads, not how N machines would scale.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use weft_harness::NatsServer;

use super::{Latencies, Report, rate};

/// Options of `weft bench cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Folder to make the nodes' files in (a fresh sub-folder, removed afterwards).
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Commands per `commands-routed-N` case.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub commands: u64,
    /// Commands in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// Jobs per `jobs-routed-N` case.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub jobs: u64,
    /// Kills in the `failover` case.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub kills: u64,
}

/// The server's mapping of command subjects into 64 partitions.
const MAPPING: &str =
    r#"mappings = { "weft.cmd.*.*": "weft.cmd.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(64,1,2)}}" }"#;

/// Longest wait for the partitions to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs every case and prints the reports.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let path = options.path.clone();
    super::in_scratch_folder(path.as_deref(), |dir| async move { run_in(&dir, &options).await }).await
}

/// One `weft serve` process.
struct Node {
    child: Child,
    addr: String,
    id: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts node number `n` with its files in `dir`, on the NATS server at `url`, routing by partition or not.
async fn spawn(dir: &Path, n: usize, url: &str, routing: bool) -> anyhow::Result<Node> {
    let folder = dir.join(format!("node-{n}"));
    std::fs::create_dir_all(&folder)?;
    let mut command = Command::new(std::env::current_exe()?);
    // The nodes of a mode share their documents' folder, as nodes on several machines share a bucket.
    let objects = dir.join(if routing { "objects-routed" } else { "objects-any" });
    command
        .args(["serve", "--http-addr", "127.0.0.1:0", "--insecure-no-auth", "--nats", url, "--jetstream"])
        .args(["--jetstream-stream", "BENCH_CLUSTER"])
        .arg("--objects-dir")
        .arg(objects);
    if routing {
        command.arg("--partition-routing");
    }
    let mut child = command
        .env("WEFT_LOG", "warn")
        .arg("--store")
        .arg(folder.join("events.db"))
        .arg("--read-models")
        .arg(folder.join("read.db"))
        .current_dir(&folder)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let line = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.find(|l| l.as_ref().map_or(true, |l| l.contains("http://")));
        // Keep draining its stderr so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        first
    })
    .await?;
    let line = line.and_then(Result::ok).unwrap_or_default();
    let Some((_, addr)) = line.trim().rsplit_once("http://") else {
        anyhow::bail!("node {n} did not start: {line}");
    };
    let addr = addr.to_owned();
    let id = cluster(&addr).await?["this_node"].as_str().unwrap_or_default().to_owned();
    Ok(Node { child, addr, id })
}

async fn cluster(addr: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(format!("http://{addr}/cluster")).await?.error_for_status()?.json().await?)
}

/// The holder of each partition, as the node at `addr` lists the leases.
async fn holders(addr: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let seen = cluster(addr).await?;
    Ok(seen["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["partition"].as_u64()?, l["owner"].as_str()?.to_owned())))
        .collect())
}

/// Waits until the 64 partitions are held by exactly `ids`, as the node at `addr` sees them.
async fn settled(addr: &str, ids: &BTreeSet<String>) -> anyhow::Result<BTreeMap<u64, String>> {
    let started = Instant::now();
    loop {
        if let Ok(held) = holders(addr).await
            && held.len() == 64
            && held.values().cloned().collect::<BTreeSet<_>>() == *ids
        {
            return Ok(held);
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            anyhow::bail!("the partitions did not settle on {ids:?} within {SETTLE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Document commands the node at `addr` has run, from its metrics.
async fn commands_run(addr: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("weft_commands_total{") && l.contains("aggregate=\"document\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Sends `count` registrations over `client`, `concurrency` at once; the latencies and the elapsed time.
async fn load(client: &async_nats::Client, count: u64, concurrency: u64) -> anyhow::Result<(Latencies, Duration)> {
    let started = Instant::now();
    let sends = futures::stream::iter(0..count).map(|_| async {
        let (document, command_id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let body = json!({"command_id": command_id, "type": "register", "payload": {
            "name": "a.pdf", "content_type": "application/pdf", "declared_size_bytes": 1000,
            "tenant": "bench", "owner": "bench"}});
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        let sent = Instant::now();
        loop {
            let request = async_nats::Request::new()
                .headers(headers.clone())
                .payload(body.to_string().into())
                .timeout(Some(Duration::from_secs(10)));
            let reply = client.send_request(format!("weft.cmd.document.{document}"), request).await?;
            let reply: Value = serde_json::from_slice(&reply.payload)?;
            match reply["status"].as_str() {
                Some("ok") => return Ok::<_, anyhow::Error>(sent.elapsed()),
                _ if reply["error"]["kind"] == "unavailable" => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => anyhow::bail!("a registration was refused: {reply}"),
            }
        }
    });
    let mut latencies = Latencies::default();
    let mut done = sends.buffer_unordered(concurrency as usize);
    while let Some(latency) = done.next().await {
        latencies.record(latency?);
    }
    Ok((latencies, started.elapsed()))
}

/// Waits until the node at `addr` lists `n` live nodes.
async fn listed(addr: &str, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    while cluster(addr).await?["nodes"].as_array().map_or(0, Vec::len) != n {
        if started.elapsed() > SETTLE_TIMEOUT {
            anyhow::bail!("{n} nodes were not listed within {SETTLE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The baselines: the same commands and jobs with 1, 2 and 3 nodes that each take any command (a server
/// without the mapping); commands/s and jobs/s for each.
async fn any_node(dir: &Path, options: &Options) -> anyhow::Result<Vec<(f64, f64)>> {
    let server = NatsServer::start()?;
    let url = server.url();
    let client = async_nats::connect(&url).await?;
    let mut nodes: Vec<Node> = Vec::new();
    let mut rates = Vec::new();
    for n in 1..=3 {
        nodes.push(spawn(dir, 100 + n, &url, false).await?);
        listed(&nodes[0].addr, n).await?;
        let (_, elapsed) = load(&client, options.commands, options.concurrency).await?;
        let (_, span) = jobs(&nodes[0].addr, options.jobs, options.concurrency).await?;
        rates.push((rate(options.commands, elapsed), rate(options.jobs, span)));
    }
    Ok(rates)
}

async fn run_in(dir: &Path, options: &Options) -> anyhow::Result<Vec<Report>> {
    let baselines = any_node(dir, options).await?;
    let server = NatsServer::cluster_with(1, MAPPING)?;
    let url = server.url();
    let client = async_nats::connect(&url).await?;
    let mut nodes: Vec<Node> = Vec::new();
    let mut reports = Vec::new();
    for n in 1..=3 {
        nodes.push(spawn(dir, n, &url, true).await?);
        let ids: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
        settled(&nodes[0].addr, &ids).await?;
        let before: Vec<f64> = futures::future::try_join_all(nodes.iter().map(|n| commands_run(&n.addr))).await?;
        let (mut latencies, elapsed) = load(&client, options.commands, options.concurrency).await?;
        let ops_per_s = rate(options.commands, elapsed);
        reports.push(Report {
            bench: "cluster",
            case: format!("commands-routed-{n}"),
            ops_per_s,
            p50_ms: latencies.percentile_ms(50.0),
            p99_ms: latencies.percentile_ms(99.0),
            baseline_ops_per_s: baselines[n - 1].0,
            bytes: None,
            shares: None,
            note: format!("a registration, {} in flight, {n} node(s)", options.concurrency),
        });
        if n == 3 {
            let after: Vec<f64> = futures::future::try_join_all(nodes.iter().map(|n| commands_run(&n.addr))).await?;
            let held = holders(&nodes[0].addr).await?;
            let even_partitions = 64.0 / 3.0;
            let even_commands = options.commands as f64 / 3.0;
            let shares: Vec<Value> = nodes
                .iter()
                .zip(before.iter().zip(&after))
                .map(|(node, (before, after))| {
                    let partitions = held.values().filter(|h| **h == node.id).count() as f64;
                    json!({"node": node.id, "partitions": partitions / even_partitions,
                           "commands": (after - before) / even_commands})
                })
                .collect();
            reports.push(Report {
                bench: "cluster",
                case: "shares-3".into(),
                ops_per_s,
                p50_ms: 0.0,
                p99_ms: 0.0,
                baseline_ops_per_s: 0.0,
                bytes: None,
                shares: Some(Value::Array(shares)),
                note: "each node's share of partitions and commands, of an even share (JSON)".into(),
            });
        }
        let (mut job_latencies, span) = jobs(&nodes[0].addr, options.jobs, options.concurrency).await?;
        reports.push(Report {
            bench: "cluster",
            case: format!("jobs-routed-{n}"),
            ops_per_s: rate(options.jobs, span),
            p50_ms: job_latencies.percentile_ms(50.0),
            p99_ms: job_latencies.percentile_ms(99.0),
            baseline_ops_per_s: baselines[n - 1].1,
            bytes: None,
            shares: None,
            note: format!("a one-step builtin job, submitted to done, {n} node(s)"),
        });
    }
    reports.push(failover(dir, &url, &mut nodes, options.kills).await?);
    Ok(reports)
}

/// Kills one of the nodes at a time (not the first, which is asked) and measures until its partitions are held
/// by live nodes again; starts it again after each.
async fn failover(dir: &Path, url: &str, nodes: &mut Vec<Node>, kills: u64) -> anyhow::Result<Report> {
    let mut latencies = Latencies::default();
    let mut total = Duration::ZERO;
    for k in 0..kills as usize {
        let victim = 1 + k % (nodes.len() - 1);
        let mut killed = nodes.remove(victim);
        let live: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
        killed.child.kill()?;
        let started = Instant::now();
        killed.child.wait()?;
        settled(&nodes[0].addr, &live).await?;
        let took = started.elapsed();
        latencies.record(took);
        total += took;
        let fresh = spawn(dir, 10 + k, url, true).await?;
        nodes.insert(victim, fresh);
        let ids: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
        settled(&nodes[0].addr, &ids).await?;
    }
    Ok(Report {
        bench: "cluster",
        case: "failover".into(),
        ops_per_s: rate(kills, total),
        p50_ms: latencies.percentile_ms(50.0),
        p99_ms: latencies.percentile_ms(99.0),
        baseline_ops_per_s: 0.0,
        bytes: None,
        shares: None,
        note: "from a SIGKILL to every partition held again".into(),
    })
}

/// The text of the jobs' input document.
const TEXT: &str = "Revenue rose in the third quarter. Costs were flat. Customers in Europe bought more licences. \
                    The weather was mild. Revenue per customer rose as well.\n";

/// Uploads a document through the node at `addr` and submits `count` one-step jobs of the built-in
/// `summarize` workflow over it, `concurrency` at once, then waits until every one has ended: each job's time
/// from submission to its end (the read model's), and the time from the first submission to the last end.
async fn jobs(addr: &str, count: u64, concurrency: u64) -> anyhow::Result<(Latencies, Duration)> {
    use anyhow::Context as _;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let body = json!({"name": "in.txt", "content_type": "text/plain", "size_bytes": TEXT.len()});
    let registered: Value = http.post(format!("{base}/documents")).json(&body).send().await?.json().await?;
    let put = crate::cli::signed_put(&http, &registered["upload"], "text/plain")?.body(TEXT);
    anyhow::ensure!(put.send().await?.status().is_success(), "the upload failed");
    let document = registered["id"].as_str().context("no document id")?.to_owned();
    http.post(format!("{base}/documents/{document}/confirm")).send().await?.error_for_status()?;
    let workflow = crate::agents::catalog::workflow_id("summarize");
    let submitted: Vec<anyhow::Result<String>> = futures::stream::iter(0..count)
        .map(|_| {
            let (http, base, document) = (http.clone(), base.clone(), document.clone());
            async move {
                let job = uuid::Uuid::now_v7().to_string();
                let payload = json!({"workflow": workflow, "workflow_version": 1, "inputs": [document], "priority": 0});
                let body = json!({"command_id": uuid::Uuid::now_v7(), "type": "submit", "payload": payload});
                let answer = http.post(format!("{base}/commands/job/{job}")).json(&body).send().await?;
                anyhow::ensure!(answer.status().is_success(), "submit: {}", answer.text().await?);
                Ok(job)
            }
        })
        .buffer_unordered(concurrency as usize)
        .collect()
        .await;
    let mut waiting = submitted.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let (mut latencies, mut first, mut last) = (Latencies::default(), i64::MAX, i64::MIN);
    let deadline = Instant::now() + SETTLE_TIMEOUT * 10;
    while let Some(job) = waiting.pop() {
        let state: Value = http.get(format!("{base}/jobs/{job}")).send().await?.json().await?;
        match (state["status"].as_str(), state["submitted_at"].as_i64(), state["finished_at"].as_i64()) {
            (Some("succeeded"), Some(submitted), Some(finished)) => {
                first = first.min(submitted);
                last = last.max(finished);
                latencies.record(Duration::from_micros(u64::try_from(finished - submitted).unwrap_or(0)));
            }
            (Some(status), ..) if status != "running" => anyhow::bail!("a job did not succeed: {state}"),
            _ => {
                anyhow::ensure!(Instant::now() < deadline, "job {job} has not ended: {state}");
                waiting.insert(0, job);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    Ok((latencies, Duration::from_micros(u64::try_from(last - first).unwrap_or(1).max(1))))
}
