//! `weft bench jobs`: jobs run to the end, through a node's HTTP API.
//!
//! | case | what runs | an op | baseline |
//! | --- | --- | --- | --- |
//! | `builtin-embedded` | `--jobs` one-step jobs of the built-in `summarize` workflow (builtin provider) over small uploaded documents, submitted by `--concurrency` clients, on the embedded defaults (SQLite, in-process bus, local object store) | a job done; latency from `submitted_at` to `finished_at` in the jobs read model | the raw work |
//! | `builtin-embedded-1` | up to 200 of the same jobs from one client, each submitted when the one before has ended (read back from the jobs read model every 0.5 ms), on the same node after the first case | the same | the raw work one at a time |
//! | `dag3-embedded-1` | up to 200 jobs of three builtin steps from one client, one after another as in `builtin-embedded-1`: `first` summarises the input, then `left` and `right` each summarise `first`'s output, at once | the same | the raw work of the same three tasks (the last two at once), one job at a time |
//! | `trigger-embedded` | `--jobs` uploads of a small text document from `--concurrency` clients, each run by a trigger on their label as a job of the built-in `summarize` workflow, on the same node (see [`super::uploads`]) | an upload whose job has finished; latency from the upload's end to the job's `finished_at` | the same uploads, each followed by its client's direct submission of the same job, in the same run |
//! | `builtin-nats` | the same with the node on NATS and its events in JetStream (a local `nats-server`, started by the bench) | the same | the raw work |
//!
//! The baseline is the raw work of the same jobs without the platform, in the same run: read the input
//! object, summarise it with the builtin provider, write the output object (fsynced, as the local store
//! does), 4 at a time (the agent's concurrency limit), against a local object store of its own.
//!
//! Where the time goes is printed on stderr: the mean time of each raw part (object read, provider, object
//! write), the mean task time the agent recorded (the parts plus the output document's three commands), and
//! the job's whole latency; the rest is the store's fsynced appends, the bus and the process managers turning
//! the job's events into commands. Then the timeline of the job whose latency is the case's p50: its events,
//! its output's and its task's records on the agent, each with its recording time after the job's first.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use serde_json::{Value, json};

use super::{Latencies, Report};
use crate::node::Node;
use weft_harness::NatsServer;

/// Options of `weft bench jobs`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Folder to make the benchmark's files in (a fresh sub-folder, removed afterwards).
    #[arg(long)]
    pub path: Option<std::path::PathBuf>,
    /// Jobs per case.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub jobs: u64,
    /// Clients submitting at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
}

/// Input documents the jobs share.
const DOCUMENTS: u64 = 20;

/// The most jobs of a `-1` case (one at a time).
const SEQUENTIAL_JOBS: u64 = 200;

/// How long the jobs of a case may take in all.
const CASE_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs every case and prints the reports.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let path = options.path.clone();
    super::in_scratch_folder(path.as_deref(), |dir| async move { run_in(&dir, &options).await }).await
}

async fn run_in(dir: &Path, options: &Options) -> anyhow::Result<Vec<Report>> {
    let embedded = dir.join("embedded");
    std::fs::create_dir_all(&embedded)?;
    // Measured without authentication, as Celery on Redis runs here.
    let node = Node::start_in(&embedded, &["--insecure-no-auth"]).await?;
    let mut reports = vec![case(&node, &embedded, "builtin-embedded", (Clients::Many, Shape::One), options).await?];
    reports.push(case(&node, &embedded, "builtin-embedded-1", (Clients::OneByOne, Shape::One), options).await?);
    reports.push(case(&node, &embedded, "dag3-embedded-1", (Clients::OneByOne, Shape::Dag3), options).await?);
    reports.push(super::uploads::case(&node, options.jobs, options.concurrency).await?);
    node.stop().await?;

    let server = NatsServer::start()?;
    let nats = dir.join("nats");
    std::fs::create_dir_all(&nats)?;
    let url = server.url();
    let node = Node::start_in(&nats, &["--nats", &url, "--jetstream", "--insecure-no-auth"]).await?;
    reports.push(case(&node, &nats, "builtin-nats", (Clients::Many, Shape::One), options).await?);
    node.stop().await?;
    Ok(reports)
}

/// The raw work's parts, each a mean in milliseconds, and its rate.
struct Raw {
    ops_per_s: f64,
    read_ms: f64,
    provider_ms: f64,
    write_ms: f64,
}

/// One raw task: read the object `input`, summarise it with the builtin provider, write the summary to
/// `output`. Returns the time of each part.
async fn raw_task(
    objects: &crate::objects::local::LocalStore,
    input: &str,
    output: &str,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    use crate::agents::Provider as _;
    use crate::objects::ObjectStore as _;
    let t0 = Instant::now();
    let mut read = Vec::new();
    let mut stream = objects.get(input).await?;
    while let Some(chunk) = stream.next().await {
        read.extend_from_slice(&chunk?);
    }
    let t1 = Instant::now();
    let request = crate::agents::Request {
        model: "summarize".into(),
        instructions: String::new(),
        prompt: String::new(),
        input: String::from_utf8(read)?,
        input_content_type: "text/plain".into(),
        parameters: Default::default(),
    };
    let completion = crate::agents::builtin::Builtin.complete(request).await?;
    let t2 = Instant::now();
    let body = futures::stream::iter([Ok(bytes::Bytes::from(completion.text))]).boxed();
    objects.put(output, "text/plain", body).await?;
    Ok((t1 - t0, t2 - t1, t2.elapsed()))
}

/// The raw work of `jobs` jobs of `shape` over `text`, `at_once` jobs at a time: see the module doc.
async fn raw_work(dir: &Path, jobs: u64, at_once: usize, shape: Shape, text: &'static str) -> anyhow::Result<Raw> {
    use crate::objects::ObjectStore as _;
    let root = dir.join("raw-objects");
    let objects = crate::objects::local::LocalStore::open(&root, "http://127.0.0.1:1", None)?;
    let input = "bench/input".to_owned();
    objects.put(&input, "text/plain", futures::stream::iter([Ok(bytes::Bytes::from(text))]).boxed()).await?;
    let started = Instant::now();
    let parts: Vec<anyhow::Result<Vec<(Duration, Duration, Duration)>>> = futures::stream::iter(0..jobs)
        .map(|i| {
            let (objects, input) = (objects.clone(), input.clone());
            async move {
                let out = format!("bench/out-{i}");
                let first = raw_task(&objects, &input, &out).await?;
                match shape {
                    Shape::One => Ok(vec![first]),
                    Shape::Dag3 => {
                        let (left, right) = (format!("{out}-left"), format!("{out}-right"));
                        let (left, right) =
                            futures::join!(raw_task(&objects, &out, &left), raw_task(&objects, &out, &right));
                        Ok(vec![first, left?, right?])
                    }
                }
            }
        })
        .buffer_unordered(at_once)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let (mut read, mut provider, mut write, mut tasks) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0u64);
    for job in parts {
        for (r, p, w) in job? {
            (read, provider, write, tasks) = (read + r, provider + p, write + w, tasks + 1);
        }
    }
    let mean = |d: Duration| d.as_secs_f64() * 1000.0 / tasks.max(1) as f64;
    Ok(Raw {
        ops_per_s: jobs as f64 / elapsed.as_secs_f64(),
        read_ms: mean(read),
        provider_ms: mean(provider),
        write_ms: mean(write),
    })
}

/// What a case's jobs run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The built-in `summarize` workflow's one step.
    One,
    /// Three steps of that kind: `first`, then `left` and `right` at once, each reading `first`'s output.
    Dag3,
}

/// The steps of a [`Shape::Dag3`] job, each made from the one-step workflow's `template` step.
fn dag3(template: &Value) -> Value {
    let step = |name: &str, input: Value| {
        let mut step = template.clone();
        step["name"] = name.into();
        step["inputs"] = json!([input]);
        step
    };
    let first = json!({"from": "step", "name": "first"});
    json!([step("first", json!({"from": "job_inputs"})), step("left", first.clone()), step("right", first)])
}

/// How a case submits its jobs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// `--concurrency` clients, none waiting for its jobs to end.
    Many,
    /// One client, each job submitted when the one before has ended.
    OneByOne,
}

/// One case against `node`, whose files are in `dir` (the raw work's go there too).
async fn case(
    node: &Node,
    dir: &Path,
    name: &str,
    (clients, shape): (Clients, Shape),
    options: &Options,
) -> anyhow::Result<Report> {
    let one_by_one = clients == Clients::OneByOne;
    let (jobs_n, concurrency) =
        if one_by_one { (options.jobs.min(SEQUENTIAL_JOBS), 1) } else { (options.jobs, options.concurrency) };
    let base = format!("http://{}", node.http_addr());
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    const TEXT: &str = "Revenue rose in the third quarter. Costs were flat. Customers in Europe bought more licences. \
                The weather was mild. Revenue per customer rose as well.\n";
    let text = TEXT;
    let mut documents = Vec::new();
    for i in 0..DOCUMENTS {
        let body = json!({"name": format!("in-{i}.txt"), "content_type": "text/plain", "size_bytes": text.len()});
        let registered: Value = http.post(format!("{base}/documents")).json(&body).send().await?.json().await?;
        let upload = &registered["upload"];
        let put = crate::cli::signed_put(&http, upload, "text/plain")?.body(text);
        anyhow::ensure!(put.send().await?.status().is_success(), "an upload failed");
        let id = registered["id"].as_str().context("no id")?.to_owned();
        http.post(format!("{base}/documents/{id}/confirm")).send().await?;
        documents.push(id);
    }
    let workflow = crate::agents::catalog::workflow_id("summarize");
    let defined: Value = http.get(format!("{base}/workflows/{workflow}")).send().await?.json().await?;
    let (workflow, steps) = match (shape, &defined["steps"]) {
        (Shape::One, steps @ Value::Array(_)) => (workflow, steps.clone()),
        (Shape::Dag3, Value::Array(one)) if one.len() == 1 => {
            // A workflow of its own, whose steps the jobs then name.
            let (id, steps) = (uuid::Uuid::now_v7(), dag3(&one[0]));
            let body = json!({"command_id": uuid::Uuid::now_v7(), "type": "define",
                              "payload": {"name": format!("bench-dag3-{id}"), "steps": steps}});
            let answer = http.post(format!("{base}/commands/workflow/{id}")).json(&body).send().await?;
            anyhow::ensure!(answer.status().is_success(), "define: {}", answer.text().await?);
            (weft_events::domain::ids::WorkflowId(id), steps)
        }
        _ => anyhow::bail!("no built-in one-step summarize workflow: {defined}"),
    };

    let agent_tasks = |agent: &Value| {
        (agent["tasks_done"].as_f64().unwrap_or(0.0), agent["latency_total_ms"].as_f64().unwrap_or(0.0))
    };
    let agent_url = format!("{base}/agents/{}", crate::agents::catalog::agent_id("summarize"));
    let before = agent_tasks(&http.get(&agent_url).send().await?.json().await?);
    let started = Instant::now();
    let concurrency = usize::try_from(concurrency)?;
    let submitted: Vec<anyhow::Result<String>> = futures::stream::iter(0..jobs_n)
        .map(|i| {
            let (http, base, steps) = (http.clone(), base.clone(), steps.clone());
            let input = documents[(i % DOCUMENTS) as usize].clone();
            async move {
                let job = uuid::Uuid::now_v7().to_string();
                let payload = json!({"workflow": workflow, "workflow_version": 1, "steps": steps, "inputs": [input],
                                     "priority": 0, "idempotency_key": null});
                let body = json!({"command_id": uuid::Uuid::now_v7(), "type": "submit", "payload": payload});
                let answer = http.post(format!("{base}/commands/job/{job}")).json(&body).send().await?;
                anyhow::ensure!(answer.status().is_success(), "submit: {}", answer.text().await?);
                if one_by_one {
                    // Its end is read back at once; its latency is the read model's, not this loop's.
                    let deadline = Instant::now() + CASE_TIMEOUT;
                    loop {
                        let read = http.get(format!("{base}/jobs/{job}")).send().await?;
                        if read.status().is_success() {
                            let state: Value = read.json().await?;
                            if state["status"] != "running" {
                                break;
                            }
                        }
                        anyhow::ensure!(Instant::now() < deadline, "job {job} still running after {CASE_TIMEOUT:?}");
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                }
                Ok(job)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut ours = std::collections::HashSet::new();
    for job in submitted {
        ours.insert(job.map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    // Wait until every job has ended: asking whether one is still running is cheap; the whole list is read
    // only when none is (a job not yet in the read model is in neither).
    let deadline = Instant::now() + CASE_TIMEOUT;
    let mut done = 0;
    let jobs = loop {
        let running: Value = http.get(format!("{base}/jobs?status=running&limit=1")).send().await?.json().await?;
        if running["items"].as_array().is_some_and(Vec::is_empty) {
            // This case's jobs only: an earlier case's ran on the same node.
            let mut all = list_jobs(&http, &base).await?;
            all.retain(|j| j["id"].as_str().is_some_and(|id| ours.contains(id)));
            done = all.iter().filter(|j| j["status"] != "running").count() as u64;
            if done >= jobs_n {
                break all;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{done} of {jobs_n} jobs done after {CASE_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failed: Vec<&Value> = jobs.iter().filter(|j| j["status"] != "succeeded").collect();
    if let Some(first) = failed.first() {
        anyhow::bail!("{} jobs did not succeed; the first: {first}", failed.len());
    }
    let mut latencies = Latencies::default();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for job in &jobs {
        let (Some(submitted), Some(finished)) = (job["submitted_at"].as_i64(), job["finished_at"].as_i64()) else {
            anyhow::bail!("a job without its times: {job}");
        };
        first = first.min(submitted);
        last = last.max(finished);
        latencies.record(Duration::from_micros(u64::try_from(finished - submitted).unwrap_or(0)));
    }
    let span = Duration::from_micros(u64::try_from(last - first).unwrap_or(1).max(1));
    let after = agent_tasks(&http.get(&agent_url).send().await?.json().await?);
    let task_ms = (after.1 - before.1) / (after.0 - before.0).max(1.0);
    let p50 = latencies.percentile_ms(50.0);
    eprintln!(
        "{name}: {jobs_n} jobs in {:.2} s (wall {:.2} s); mean task {task_ms:.2} ms of a p50 job {p50:.2} ms",
        span.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{name}: the p50 job's events, ms after its submission: {}", timeline(&http, &base, &jobs, p50).await?);
    let raw = raw_work(dir, jobs_n, if one_by_one { 1 } else { 4 }, shape, TEXT).await?;
    eprintln!(
        "{name}: raw work {:.0} jobs/s: object read {:.3} ms, provider {:.3} ms, object write {:.3} ms; the task's \
         other {:.2} ms are the output document's commands",
        raw.ops_per_s,
        raw.read_ms,
        raw.provider_ms,
        raw.write_ms,
        (task_ms - raw.read_ms - raw.provider_ms - raw.write_ms).max(0.0)
    );
    Ok(Report {
        bench: "jobs",
        case: name.into(),
        ops_per_s: jobs_n as f64 / span.as_secs_f64(),
        p50_ms: p50,
        p99_ms: latencies.percentile_ms(99.0),
        baseline_ops_per_s: raw.ops_per_s,
        bytes: None,
        shares: None,
        note: match (shape, one_by_one) {
            (Shape::Dag3, _) => "submit to done, three builtin steps (two at once), 1 client, one job at a time".into(),
            (Shape::One, true) => "submit to done, one builtin step, 1 client, one job at a time".into(),
            (Shape::One, false) => format!("submit to done, one builtin step, {concurrency} clients"),
        },
    })
}

/// The events of the job whose latency is closest to `p50_ms`, of its output documents and of its tasks on the
/// agent, each as its type and
/// the milliseconds from the job's first event to its recording (read from the history read model): where a
/// job's time goes.
async fn timeline(http: &reqwest::Client, base: &str, jobs: &[Value], p50_ms: f64) -> anyhow::Result<String> {
    let latency = |job: &Value| job["finished_at"].as_i64().unwrap_or(0) - job["submitted_at"].as_i64().unwrap_or(0);
    let Some(job) = jobs.iter().min_by_key(|job| (latency(job) as f64 / 1e3 - p50_ms).abs() as i64) else {
        return Ok(String::new());
    };
    let id = job["id"].as_str().context("a job without its id")?;
    let page = |stream: String, cursor: i64| async move {
        let url = format!("{base}/streams/{stream}/events?limit=1000&cursor={cursor}");
        let history: Value = http.get(url).send().await?.json().await?;
        anyhow::Ok((history["items"].as_array().cloned().unwrap_or_default(), history["next_cursor"].as_i64()))
    };
    let mut items = page(format!("job-{id}"), 0).await?.0;
    let outputs: Vec<String> = items.iter().filter_map(|e| e["event"]["output"].as_str().map(str::to_owned)).collect();
    for output in outputs {
        items.extend(page(format!("document-{output}"), 0).await?.0);
    }
    // The agent's records of the job's tasks, from its whole history.
    let agent = format!("agent-{}", crate::agents::catalog::agent_id("summarize"));
    let mut tasks = std::collections::HashSet::new();
    let mut cursor = Some(0);
    while let Some(from) = cursor {
        let (events, next) = page(agent.clone(), from).await?;
        for event in events {
            let task = event["event"]["task"].as_str().map(str::to_owned);
            if event["event"]["job"].as_str() == Some(id) || task.as_ref().is_some_and(|t| tasks.contains(t)) {
                tasks.extend(task);
                items.push(event);
            }
        }
        cursor = next;
    }
    items.sort_by_key(|e| e["recorded_at"].as_i64().unwrap_or(0));
    let start = items.first().and_then(|e| e["recorded_at"].as_i64()).unwrap_or(0);
    let steps = items.iter().map(|e| {
        let at = e["recorded_at"].as_i64().unwrap_or(start) - start;
        format!("{} {:.2}", e["type"].as_str().unwrap_or("?"), at as f64 / 1e3)
    });
    Ok(steps.collect::<Vec<_>>().join(", "))
}

/// Every job of the node (the bench's only).
pub(super) async fn list_jobs(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/jobs?limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = http.get(url).send().await?.json().await?;
        all.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(all),
        }
    }
}
