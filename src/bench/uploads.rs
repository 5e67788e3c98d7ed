//! `weft bench jobs`'s `trigger-embedded` case: uploads that become finished one-step jobs through a trigger,
//! against the same uploads each followed by a direct submission of the same job, in the same run.
//!
//! Both variants run `--jobs` uploads of a small text document from `--concurrency` clients on the embedded
//! node (each upload: register, `PUT` to the signed URL, `confirm`), with a label of their own:
//! - direct (the baseline): each client then submits the built-in `summarize` workflow's job over its document;
//! - trigger: a trigger on that label runs `summarize` on each upload; the clients only upload.
//!
//! An op is an upload whose job has finished. The rate is the uploads over the time from the first upload's
//! start to the last job's end; the latency of one is from the end of its upload (the `confirm` answered) to
//! its job's `finished_at` in the jobs read model (one clock: the bench and the node run on one machine).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures::StreamExt;
use serde_json::{Value, json};

use super::{Latencies, Report};
use crate::node::Node;

/// How long the jobs of a variant may take in all.
const TIMEOUT: Duration = Duration::from_secs(600);

/// The text each document holds.
const TEXT: &str = "Revenue rose in the third quarter. Costs were flat. Customers in Europe bought more licences. \
                    The weather was mild. Revenue per customer rose as well.\n";

/// Microseconds since the Unix epoch, as the read models keep times.
fn now_micros() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// What one variant measured.
struct Measured {
    ops_per_s: f64,
    latencies: Latencies,
}

/// Runs the direct variant, then the trigger variant; the `trigger-embedded` report, the direct one's rate
/// as its baseline.
pub(super) async fn case(node: &Node, jobs: u64, concurrency: u64) -> anyhow::Result<Report> {
    let base = format!("http://{}", node.http_addr());
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    let direct = variant(&http, &base, jobs, concurrency, false).await?;
    let mut triggered = variant(&http, &base, jobs, concurrency, true).await?;
    let mut direct_latencies = direct.latencies;
    eprintln!(
        "trigger-embedded: direct submission after each upload {:.0} uploads/s (p50 {:.2} ms, p99 {:.2} ms); \
         through the trigger {:.0} uploads/s",
        direct.ops_per_s,
        direct_latencies.percentile_ms(50.0),
        direct_latencies.percentile_ms(99.0),
        triggered.ops_per_s
    );
    Ok(Report {
        bench: "jobs",
        case: "trigger-embedded".into(),
        ops_per_s: triggered.ops_per_s,
        p50_ms: triggered.latencies.percentile_ms(50.0),
        p99_ms: triggered.latencies.percentile_ms(99.0),
        baseline_ops_per_s: direct.ops_per_s,
        bytes: None,
        shares: None,
        note: format!(
            "upload end to job done, one builtin step, {concurrency} clients; baseline: each upload then submitted"
        ),
    })
}

/// Uploads `jobs` documents from `concurrency` clients and waits for their jobs: submitted by the clients,
/// or by a trigger when `via_trigger`.
async fn variant(
    http: &reqwest::Client,
    base: &str,
    jobs: u64,
    concurrency: u64,
    via_trigger: bool,
) -> anyhow::Result<Measured> {
    let batch = uuid::Uuid::now_v7().to_string();
    let workflow = crate::agents::catalog::workflow_id("summarize");
    let trigger = uuid::Uuid::now_v7();
    if via_trigger {
        let payload = json!({"workflow": workflow, "selector": {"labels": {"bench": batch}}});
        let body = json!({"command_id": uuid::Uuid::now_v7(), "type": "create", "payload": payload});
        let answer = http.post(format!("{base}/commands/trigger/{trigger}")).json(&body).send().await?;
        anyhow::ensure!(answer.status().is_success(), "creating the trigger: {}", answer.text().await?);
    }
    let defined: Value = http.get(format!("{base}/workflows/{workflow}")).send().await?.json().await?;
    let (steps, version) = (defined["steps"].clone(), defined["latest_version"].clone());
    let started = now_micros();
    let uploads: Vec<anyhow::Result<(String, Option<String>, i64)>> = futures::stream::iter(0..jobs)
        .map(|i| {
            let (http, base, batch) = (http.clone(), base.to_owned(), batch.clone());
            let (steps, version) = (steps.clone(), version.clone());
            async move {
                let body = json!({"name": format!("in-{i}.txt"), "content_type": "text/plain",
                                  "size_bytes": TEXT.len(), "labels": {"bench": batch}});
                let registered: Value = http.post(format!("{base}/documents")).json(&body).send().await?.json().await?;
                let put = crate::cli::signed_put(&http, &registered["upload"], "text/plain")?.body(TEXT);
                anyhow::ensure!(put.send().await?.status().is_success(), "an upload failed");
                let id = registered["id"].as_str().context("no id")?.to_owned();
                let confirmed = http.post(format!("{base}/documents/{id}/confirm")).send().await?;
                anyhow::ensure!(confirmed.status().is_success(), "confirm: {}", confirmed.text().await?);
                let uploaded = now_micros();
                if via_trigger {
                    return Ok((id, None, uploaded));
                }
                let job = uuid::Uuid::now_v7().to_string();
                let payload = json!({"workflow": workflow, "workflow_version": version,
                                     "steps": steps, "inputs": [id], "priority": 0});
                let body = json!({"command_id": uuid::Uuid::now_v7(), "type": "submit", "payload": payload});
                let answer = http.post(format!("{base}/commands/job/{job}")).json(&body).send().await?;
                anyhow::ensure!(answer.status().is_success(), "submit: {}", answer.text().await?);
                Ok((id, Some(job), uploaded))
            }
        })
        .buffer_unordered(usize::try_from(concurrency)?)
        .collect()
        .await;
    let uploads = uploads.into_iter().collect::<anyhow::Result<Vec<_>>>()?;

    // Every job ended: none running, and as many finished since the variant began as it uploaded.
    let deadline = Instant::now() + TIMEOUT;
    let finished: HashMap<String, (String, i64)> = loop {
        let running: Value = http.get(format!("{base}/jobs?status=running&limit=1")).send().await?.json().await?;
        if running["items"].as_array().is_some_and(Vec::is_empty) {
            let all = super::jobs::list_jobs(http, base).await?;
            let ours: HashMap<String, (String, i64)> = all
                .into_iter()
                .filter(|j| j["submitted_at"].as_i64().is_some_and(|at| at >= started))
                .filter_map(|j| {
                    let finished_at = j["finished_at"].as_i64()?;
                    Some((j["id"].as_str()?.to_owned(), (j["status"].as_str()?.to_owned(), finished_at)))
                })
                .collect();
            if ours.len() as u64 >= jobs {
                break ours;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the jobs of {jobs} uploads did not end within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some((job, (status, _))) = finished.iter().find(|(_, (status, _))| status != "succeeded") {
        anyhow::bail!("job {job} ended {status}");
    }
    let mut latencies = Latencies::default();
    let mut last = started;
    for (document, job, uploaded) in uploads {
        let job = match job {
            Some(job) => job,
            // The trigger's job is the one whose step wrote the document's output.
            None => {
                let item: Value = http.get(format!("{base}/documents/{document}")).send().await?.json().await?;
                item["derivatives"][0]["job"].as_str().context("an upload without its job's output")?.to_owned()
            }
        };
        let (_, finished_at) = finished.get(&job).with_context(|| format!("job {job} of {document} not found"))?;
        last = last.max(*finished_at);
        latencies.record(Duration::from_micros(u64::try_from(finished_at - uploaded).unwrap_or(0)));
    }
    if via_trigger {
        let state: Value = http.get(format!("{base}/triggers/{trigger}")).send().await?.json().await?;
        anyhow::ensure!(state["fires"].as_u64() == Some(jobs), "the trigger fired other than once an upload: {state}");
    }
    let span = Duration::from_micros(u64::try_from(last - started).unwrap_or(1).max(1));
    Ok(Measured { ops_per_s: jobs as f64 / span.as_secs_f64(), latencies })
}
