//! Prometheus metrics: the `metrics` facade, recorded into by every crate of the node, and rendered in the
//! Prometheus text format at `GET /metrics` (see [`render`]).
//!
//! Counters and histograms are recorded where things happen (commands in the actor hosts, appends in the
//! stores, provider calls in the agents, requests in the HTTP middleware). What is a level rather than an
//! event (the store's head, each projection's and process manager's position and lag, jobs by status,
//! agents' busy slots and queue depth, the NATS connection) is read when the page is asked for.
//!
//! Names start with `weft_` and follow the Prometheus conventions: base units (`_seconds`, `_bytes`),
//! `_total` on counters. The families are listed in `docs/operations.md`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Buckets of the latency histograms, in seconds: 100 µs to 60 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of the size histograms (events per append or batch).
const COUNTS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder, once per process: later calls return the same handle. `None` when another
/// recorder was installed first (a test harness's): metrics then go there.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_events".into()), COUNTS)
                })
                .expect("the buckets are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(Switched(recorder)) {
                tracing::warn!(%error, "a metrics recorder is installed already; /metrics serves nothing");
                return None;
            }
            describe();
            zero();
            // Histograms keep their samples in buckets that upkeep folds; without it they grow.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            if let Err(error) = spawned {
                tracing::warn!(%error, "the metrics upkeep thread did not start");
            }
            Some(handle)
        })
        .as_ref()
}

/// Whether metrics are recorded: on, but for the halves of a benchmark that measure their cost.
static RECORDING: AtomicBool = AtomicBool::new(true);

/// Turns recording on or off (`weft bench nats`'s telemetry case; a node always records).
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// The Prometheus recorder, recording only while [`RECORDING`] is on. The `metrics` macros ask the recorder
/// for a handle at each use, so the switch takes effect at once.
struct Switched(metrics_exporter_prometheus::PrometheusRecorder);

impl metrics::Recorder for Switched {
    fn describe_counter(&self, key: metrics::KeyName, unit: Option<Unit>, description: metrics::SharedString) {
        self.0.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: metrics::KeyName, unit: Option<Unit>, description: metrics::SharedString) {
        self.0.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: metrics::KeyName, unit: Option<Unit>, description: metrics::SharedString) {
        self.0.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &metrics::Key, metadata: &metrics::Metadata<'_>) -> metrics::Counter {
        if RECORDING.load(Ordering::Relaxed) {
            self.0.register_counter(key, metadata)
        } else {
            metrics::Counter::noop()
        }
    }

    fn register_gauge(&self, key: &metrics::Key, metadata: &metrics::Metadata<'_>) -> metrics::Gauge {
        if RECORDING.load(Ordering::Relaxed) { self.0.register_gauge(key, metadata) } else { metrics::Gauge::noop() }
    }

    fn register_histogram(&self, key: &metrics::Key, metadata: &metrics::Metadata<'_>) -> metrics::Histogram {
        if RECORDING.load(Ordering::Relaxed) {
            self.0.register_histogram(key, metadata)
        } else {
            metrics::Histogram::noop()
        }
    }
}

/// The page in the Prometheus text format (version 0.0.4), after `levels` set the gauges read on demand.
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

/// Counts a request or command refused, by where it came (`http`, `nats`) and why (`unauthenticated`,
/// `forbidden`, `rate_limited`, `csrf`): never by who.
pub fn denied(surface: &'static str, reason: &'static str) {
    metrics::counter!("weft_denials_total", "surface" => surface, "reason" => reason).increment(1);
}

/// Counters that exist from the start at zero, so that a rate over them is defined before the first one.
fn zero() {
    metrics::counter!("weft_job_retries_total").absolute(0);
    metrics::counter!("weft_job_dead_letters_total").absolute(0);
    metrics::counter!("weft_nats_reconnects_total").absolute(0);
    metrics::counter!("weft_nats_slow_consumer_total").absolute(0);
    metrics::counter!("weft_store_fsyncs_total").absolute(0);
}

/// Help texts and units of every family.
fn describe() {
    describe_counter!("weft_commands_total", "Commands run by the actor hosts, by aggregate, command and outcome.");
    describe_histogram!("weft_command_duration_seconds", Unit::Seconds, "Time to run a command, decision and append.");
    describe_counter!("weft_events_appended_total", "Events appended by the actor hosts, by type.");
    describe_counter!("weft_store_appends_total", "Appends committed by the event store.");
    describe_histogram!("weft_store_commit_events", "Events per commit (one group commit takes many appends).");
    describe_histogram!("weft_store_commit_duration_seconds", Unit::Seconds, "Time of one commit, fsync included.");
    describe_counter!("weft_store_fsyncs_total", "Commits made durable (fsync, or JetStream's acknowledgement).");
    describe_gauge!("weft_store_head_position", "The position of the last event in the log.");
    describe_gauge!("weft_projection_position", "The last position a projection applied.");
    describe_gauge!("weft_projection_lag_events", "Events a projection has still to apply.");
    describe_gauge!(
        "weft_projection_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event a projection has not applied."
    );
    describe_histogram!("weft_projection_batch_events", "Events per batch the projections applied.");
    describe_histogram!("weft_projection_batch_duration_seconds", Unit::Seconds, "Time to apply and commit a batch.");
    describe_gauge!("weft_process_position", "The last position a process manager handled, with all before it.");
    describe_gauge!("weft_process_lag_events", "Events a process manager has still to handle.");
    describe_counter!("weft_process_retries_total", "Events a process manager handled again after a failure.");
    describe_gauge!("weft_jobs", "Jobs by status, in the read model.");
    describe_counter!("weft_tasks_total", "Tasks run by this node's worker, by outcome.");
    describe_histogram!("weft_task_duration_seconds", Unit::Seconds, "Time to run a task (a job step's attempt).");
    describe_counter!("weft_job_retries_total", "Retries of failed steps scheduled.");
    describe_counter!("weft_job_dead_letters_total", "Jobs dead-lettered.");
    describe_gauge!("weft_agent_busy_slots", "Tasks running on this node, by agent profile.");
    describe_gauge!("weft_agent_queue_depth", "Steps waiting on this node for a slot of a busy agent.");
    describe_counter!("weft_provider_calls_total", "Calls to LLM providers, by provider, model and outcome.");
    describe_histogram!("weft_provider_call_duration_seconds", Unit::Seconds, "Time of one provider call.");
    describe_counter!("weft_provider_errors_total", "Failed provider calls, by provider and kind.");
    describe_gauge!("weft_provider_circuit_open", "1 while a provider's circuit is open, 0 while closed.");
    describe_counter!("weft_provider_input_tokens_total", "Tokens read by providers.");
    describe_counter!("weft_provider_output_tokens_total", "Tokens written by providers.");
    describe_counter!(
        "weft_provider_cost_nanodollars_total",
        "Cost of provider calls at the configured prices (--price), in billionths of a US dollar (exact sums)."
    );
    describe_gauge!("weft_actors_live", "Actors running, by aggregate.");
    describe_counter!("weft_actor_activations_total", "Actors activated (state loaded from the store).");
    describe_counter!("weft_actor_passivations_total", "Actors stopped for being idle or least recently used.");
    describe_counter!("weft_actor_restarts_total", "Actors restarted after a panic.");
    describe_gauge!("weft_nats_connected", "1 while the node's NATS connection is up.");
    describe_counter!("weft_nats_reconnects_total", "Reconnections to NATS.");
    describe_counter!("weft_nats_slow_consumer_total", "Messages NATS dropped for this node being too slow.");
    describe_counter!("weft_http_requests_total", "HTTP requests, by route, method and status.");
    describe_histogram!("weft_http_request_duration_seconds", Unit::Seconds, "Time to answer an HTTP request.");
    describe_counter!("weft_denials_total", "Requests and commands refused, by surface and reason.");
}
