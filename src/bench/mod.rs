//! `weft bench`: benchmarks an operator can run against a path they choose.
//!
//! Every suite prints one JSON line per case on stdout, in the form other tools read:
//!
//! ```text
//! {"bench":"store","case":"append-256","ops_per_s":N,"p50_ms":N,"p99_ms":N,"baseline_ops_per_s":N}
//! ```
//!
//! and a readable table on stderr. An "op" is what the case counts (for the store, an event). The baseline
//! is the same work done the plainest way on the same machine in the same run, so the ratio says what Weft's
//! layers cost.
//!
//! - [`actors`]: commands through the actor host, activation and memory per actor.
//! - [`store`]: the event store: appends from many writers, batches, read-all and subscription catch-up.
//! - [`nats`]: commands over NATS.
//! - [`projections`]: rebuilding the read models, their lag under load, status reads.
//! - [`documents`]: registrations, and from an upload's end to `uploaded` on the local store and on S3.
//! - [`jobs`]: one-step builtin jobs from submit to done, embedded and on NATS + JetStream.
//! - [`replay`]: the operator's tools: cat, export, import, verify, rebuilds.
//! - [`cluster`]: nodes routing commands by partition: commands with 1, 2 and 3 nodes, shares, failover.
//! - [`ui`]: the dashboard's pages over 10,000 jobs, and a job's page's live feed.

use std::time::Duration;

use serde::Serialize;

pub mod actors;
pub mod cluster;
pub mod documents;
pub mod jobs;
pub mod nats;
pub mod projections;
pub mod replay;
pub mod store;
pub mod ui;
pub mod uploads;

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The suite, such as `store`.
    pub bench: &'static str,
    /// The case, such as `append-256`.
    pub case: String,
    /// Ops per second over the whole case.
    pub ops_per_s: f64,
    /// Median latency of one measured call, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// Ops per second of the raw baseline for the same work; 0 where a case has none.
    pub baseline_ops_per_s: f64,
    /// A size the case measures, such as memory per actor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Shares a case measures, such as each node's share of the partitions (`weft bench cluster`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shares: Option<serde_json::Value>,
    /// What one measured call is, for the table.
    #[serde(skip)]
    pub note: String,
}

impl Report {
    /// Prints the JSON line on stdout.
    pub fn print_json(&self) {
        println!("{}", serde_json::to_string(self).expect("a report always serialises"));
    }
}

/// Prints reports as a table on stderr.
pub fn print_table(reports: &[Report]) {
    eprintln!(
        "{:<26} {:>12} {:>10} {:>10} {:>16} {:>8}  latency of",
        "case", "ops/s", "p50 ms", "p99 ms", "baseline ops/s", "ratio"
    );
    for r in reports {
        let (baseline, ratio) = if r.baseline_ops_per_s > 0.0 {
            (format!("{:.0}", r.baseline_ops_per_s), format!("{:.2}", r.ops_per_s / r.baseline_ops_per_s))
        } else {
            ("-".to_owned(), "-".to_owned())
        };
        eprintln!(
            "{:<26} {:>12.0} {:>10.3} {:>10.3} {:>16} {:>8}  {}{}",
            r.case,
            r.ops_per_s,
            r.p50_ms,
            r.p99_ms,
            baseline,
            ratio,
            r.note,
            r.bytes.map(|b| format!("; {b} bytes")).unwrap_or_default()
        );
    }
}

/// Latencies of measured calls.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Records one.
    pub fn record(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Ops per second of one client doing the recorded operations back to back: their count over the sum of
    /// their times.
    pub fn serial_rate(&self) -> f64 {
        let busy: Duration = self.0.iter().sum();
        if busy.is_zero() { 0.0 } else { self.0.len() as f64 / busy.as_secs_f64() }
    }

    /// Adds another set.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// The `p`-th percentile (0..=100) in milliseconds; 0 when nothing was recorded.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[rank.min(self.0.len() - 1)].as_secs_f64() * 1000.0
    }
}

/// Runs `run` in a fresh folder under `path` (the temp folder when `None`), removes the folder whatever
/// happened, and prints the reports: the table on stderr, one JSON line each on stdout.
pub async fn in_scratch_folder<F>(
    path: Option<&std::path::Path>,
    run: impl FnOnce(std::path::PathBuf) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<Vec<Report>>>,
{
    use anyhow::Context as _;
    let parent = path.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
    let dir = parent.join(format!("weft-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = run(dir.clone()).await;
    let _ = std::fs::remove_dir_all(&dir);
    let reports = result?;
    print_table(&reports);
    for report in &reports {
        report.print_json();
    }
    Ok(())
}

/// Ops per second.
pub fn rate(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_by_rank() {
        let mut l = Latencies::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.percentile_ms(50.0), 51.0);
        assert_eq!(l.percentile_ms(99.0), 99.0);
        assert_eq!(Latencies::default().percentile_ms(99.0), 0.0);
    }
}
