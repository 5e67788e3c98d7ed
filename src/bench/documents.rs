//! `weft bench documents`: registering documents and the way from an upload to `uploaded`, through a node's
//! HTTP API, on the local folder store and on a SeaweedFS S3 server.
//!
//! | case | what runs | an op | baseline |
//! | --- | --- | --- | --- |
//! | `register` | `POST /documents` (the command, the signed upload URL) from `--concurrency` clients | a registration | the same `register` command through `POST /commands/document/{id}`, no URL |
//! | `upload-to-uploaded-local` | register, `PUT` 1 KiB to the signed URL, poll `GET /documents/{id}` until `uploaded`; one client | an upload; the latency is from the end of the `PUT` to the first read showing `uploaded` | - |
//! | `upload-to-uploaded-s3` | the same against SeaweedFS (`weed mini`, started by the bench); after the `PUT` the bench publishes the S3 notification MinIO would, on the node's bus | the same | - |
//!
//! The node runs in this process on the embedded defaults (SQLite with `synchronous=FULL`, the in-process bus),
//! in a scratch folder. Polls are 1 ms apart, so latencies are at least that coarse.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use serde_json::{Value, json};

use super::{Latencies, Report, rate};
use crate::node::Node;
use crate::objects::notification::{self, Change};
use crate::objects::s3::{S3Options, S3Store};
use crate::objects::{ObjectInfo, ObjectStore};
use weft_harness::Seaweed;

/// Options of `weft bench documents`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Folder to make the benchmark's files in (a fresh sub-folder, removed afterwards).
    #[arg(long)]
    pub path: Option<std::path::PathBuf>,
    /// Registrations of the `register` case (and of its baseline).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub documents: u64,
    /// Uploads of each `upload-to-uploaded` case.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    pub uploads: u64,
    /// Clients registering at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
}

/// The body each upload puts.
const UPLOAD_BYTES: usize = 1024;

/// How often a client asks whether the document is uploaded.
const POLL_EVERY: Duration = Duration::from_millis(1);

/// Runs every case and prints the reports.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let path = options.path.clone();
    super::in_scratch_folder(path.as_deref(), |dir| async move { run_in(&dir, &options).await }).await
}

async fn run_in(dir: &Path, options: &Options) -> anyhow::Result<Vec<Report>> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    let mut reports = Vec::new();

    let local_dir = dir.join("local");
    std::fs::create_dir_all(&local_dir)?;
    // Measured without authentication (the same for both stores); see issue 22 for the cases with it.
    let node = Node::start_in(&local_dir, &["--insecure-no-auth"]).await?;
    let base = format!("http://{}", node.http_addr());
    reports.push(register(&http, &base, options).await?);
    reports.push(uploads(&http, &base, options.uploads, "upload-to-uploaded-local", None).await?);
    node.stop().await?;

    match Seaweed::start() {
        Ok(seaweed) => {
            let s3 =
                S3Store::connect(&S3Options::on_server(&seaweed.endpoint(), "weft-bench", seaweed.credentials())).await;
            s3.create_bucket_within(Duration::from_secs(60)).await?;
            let s3_dir = dir.join("s3");
            std::fs::create_dir_all(&s3_dir)?;
            let args = seaweed.node_args("weft-bench");
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.push("--insecure-no-auth");
            let node = Node::start_in(&s3_dir, &args).await?;
            let base = format!("http://{}", node.http_addr());
            let notify = Notify { node: &node, s3: &s3 };
            reports.push(uploads(&http, &base, options.uploads, "upload-to-uploaded-s3", Some(notify)).await?);
            node.stop().await?;
        }
        Err(error) => eprintln!("upload-to-uploaded-s3 skipped: {error}"),
    }
    Ok(reports)
}

/// Registers `documents` at `concurrency`, through the documents route and, as the baseline, the command route.
async fn register(http: &reqwest::Client, base: &str, options: &Options) -> anyhow::Result<Report> {
    let concurrency = usize::try_from(options.concurrency)?;
    let run = |route: &'static str| async move {
        let started = Instant::now();
        let latencies: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..options.documents)
            .map(|i| async move {
                let body = json!({"name": format!("doc-{i}.txt"), "content_type": "text/plain", "size_bytes": 4096});
                let sent = Instant::now();
                let request = if route == "documents" {
                    http.post(format!("{base}/documents")).json(&body)
                } else {
                    let mut payload = body.clone();
                    payload["declared_size_bytes"] = payload["size_bytes"].take();
                    payload.as_object_mut().map(|p| p.remove("size_bytes"));
                    payload["tenant"] = json!("default");
                    payload["owner"] = json!("bench");
                    let command = json!({"command_id": uuid::Uuid::now_v7(), "type": "register", "payload": payload});
                    http.post(format!("{base}/commands/document/{}", uuid::Uuid::now_v7())).json(&command)
                };
                let answer = request.send().await?;
                anyhow::ensure!(answer.status().is_success(), "{route}: {}", answer.text().await?);
                Ok(sent.elapsed())
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let elapsed = started.elapsed();
        let mut recorded = Latencies::default();
        for latency in latencies {
            recorded.record(latency?);
        }
        anyhow::Ok((rate(options.documents, elapsed), recorded))
    };
    // The first run warms the node up (its connections, SQLite's cache) and is not reported.
    run("commands").await?;
    let (ops, mut latencies) = run("documents").await?;
    let (baseline, _) = run("commands").await?;
    Ok(Report {
        bench: "documents",
        case: "register".into(),
        ops_per_s: ops,
        p50_ms: latencies.percentile_ms(50.0),
        p99_ms: latencies.percentile_ms(99.0),
        baseline_ops_per_s: baseline,
        bytes: None,
        shares: None,
        note: format!("POST /documents, {concurrency} clients"),
    })
}

/// What stands in for S3's notifications: SeaweedFS sends none.
struct Notify<'a> {
    node: &'a Node,
    s3: &'a crate::objects::s3::S3Store,
}

impl Notify<'_> {
    /// Publishes the notification MinIO would, from the object's head.
    async fn created(&self, key: &str) -> anyhow::Result<()> {
        let info: ObjectInfo = self.s3.head(key).await?;
        let body = notification::record_json(Change::Created, self.s3.bucket(), key, Some(&info));
        self.node.bus().publish(crate::bus::Message::new(notification::SUBJECT, body)).await?;
        Ok(())
    }
}

/// `count` uploads one after the other: register, PUT, wait until the read model shows `uploaded`.
async fn uploads(
    http: &reqwest::Client,
    base: &str,
    count: u64,
    case: &str,
    notify: Option<Notify<'_>>,
) -> anyhow::Result<Report> {
    let content = vec![b'x'; UPLOAD_BYTES];
    let mut latencies = Latencies::default();
    let started = Instant::now();
    for i in 0..count {
        let body = json!({"name": format!("up-{i}.txt"), "content_type": "text/plain", "size_bytes": UPLOAD_BYTES});
        let registered: Value = http.post(format!("{base}/documents")).json(&body).send().await?.json().await?;
        let id = registered["id"].as_str().with_context(|| format!("no id in {registered}"))?;
        let upload = &registered["upload"];
        let answer = crate::cli::signed_put(http, upload, "text/plain")?.body(content.clone()).send().await?;
        anyhow::ensure!(answer.status().is_success(), "PUT: {}", answer.text().await?);
        let put_done = Instant::now();
        if let Some(notify) = &notify {
            notify.created(registered["key"].as_str().context("no key")?).await?;
        }
        let deadline = put_done + Duration::from_secs(30);
        loop {
            let item: Value = http.get(format!("{base}/documents/{id}")).send().await?.json().await?;
            if item["status"] == "uploaded" {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "document {id} not uploaded after 30 s: {item}");
            tokio::time::sleep(POLL_EVERY).await;
        }
        latencies.record(put_done.elapsed());
    }
    Ok(Report {
        bench: "documents",
        case: case.into(),
        ops_per_s: rate(count, started.elapsed()),
        p50_ms: latencies.percentile_ms(50.0),
        p99_ms: latencies.percentile_ms(99.0),
        baseline_ops_per_s: 0.0,
        bytes: None,
        shares: None,
        note: "end of PUT to `uploaded` in the query API".into(),
    })
}
