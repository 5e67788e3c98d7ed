//! Seeing inside a node: `GET /metrics` after the README's quick start, checked by value and by `promtool`;
//! one trace per job across two nodes, received by a real OTLP endpoint; JSON log lines with trace ids.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::serve::raw_http;

/// Every family the node reports, by name.
const FAMILIES: &[&str] = &[
    "weft_commands_total",
    "weft_command_duration_seconds",
    "weft_events_appended_total",
    "weft_store_appends_total",
    "weft_store_commit_events",
    "weft_store_commit_duration_seconds",
    "weft_store_fsyncs_total",
    "weft_store_head_position",
    "weft_projection_position",
    "weft_projection_lag_events",
    "weft_projection_lag_seconds",
    "weft_projection_batch_events",
    "weft_projection_batch_duration_seconds",
    "weft_process_position",
    "weft_process_lag_events",
    "weft_process_retries_total",
    "weft_jobs",
    "weft_tasks_total",
    "weft_task_duration_seconds",
    "weft_job_retries_total",
    "weft_job_dead_letters_total",
    "weft_agent_busy_slots",
    "weft_agent_queue_depth",
    "weft_provider_calls_total",
    "weft_provider_call_duration_seconds",
    "weft_provider_errors_total",
    "weft_provider_circuit_open",
    "weft_provider_input_tokens_total",
    "weft_provider_output_tokens_total",
    "weft_actors_live",
    "weft_actor_activations_total",
    "weft_actor_passivations_total",
    "weft_actor_restarts_total",
    "weft_nats_reconnects_total",
    "weft_nats_slow_consumer_total",
    "weft_http_requests_total",
    "weft_http_request_duration_seconds",
    "weft_denials_total",
];

/// A page's samples: `name{labels}` (labels as printed) to value.
fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN))))
        .collect()
}

/// The sum of the samples of `name` whose labels hold every one of `labels` (`key="value"`).
fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

fn metrics(addr: &str, token: Option<&str>) -> crate::serve::Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    raw_http(addr, "GET", "/metrics", &headers, b"")
}

#[test]
fn a_node_that_ran_the_quick_start_reports_every_family_with_the_values_of_the_run_and_promtool_agrees() {
    let script = crate::quickstart::script();
    let ending = "kill \"$serve\"; wait \"$serve\"";
    assert!(script.contains(ending), "the quick start ends by stopping the node");
    let script = script.replace(ending, "touch ran; wait \"$serve\"");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _shell = crate::quickstart::run(&script, dir.path(), port);
    let started = Instant::now();
    while !dir.path().join("ran").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "the quick start did not get through");
        std::thread::sleep(Duration::from_millis(200));
    }
    let addr = format!("127.0.0.1:{port}");
    let token = crate::support::admin_token(&dir.path().join("weft-data"));

    // Only operators and admins read it (the other roles: tests/it/auth.rs, over every route).
    assert_eq!(metrics(&addr, None).status, 401);
    assert_eq!(metrics(&addr, Some("not.a.token")).status, 401);

    // The quick start's second job may still run: wait until every job has ended and the models caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        let response = metrics(&addr, Some(&token));
        assert_eq!(response.status, 200, "{response:?}");
        assert!(response.header("content-type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
        let s = samples(&response.body);
        let head = sum(&s, "weft_store_head_position", &[]);
        let settled = sum(&s, "weft_jobs", &["status=\"running\""]) == 0.0
            && sum(&s, "weft_projection_lag_events", &[]) == 0.0
            && head > 0.0;
        if settled {
            break response.body;
        }
        assert!(Instant::now() < deadline, "the node did not settle:\n{}", response.body);
        std::thread::sleep(Duration::from_millis(200));
    };
    let s = samples(&page);
    for family in FAMILIES {
        assert!(page.contains(&format!("# TYPE {family} ")), "{family} is missing:\n{page}");
    }
    // What the run implies: two jobs (one run, one sent), both succeeded; three steps, each one builtin call.
    let jobs =
        crate::serve::http(&addr, "GET", "/jobs?limit=100", &[("Authorization", &format!("Bearer {token}"))], b"");
    let listed = jobs.json()["items"].as_array().unwrap().len() as f64;
    assert_eq!(listed, 2.0, "{}", jobs.body);
    assert_eq!(sum(&s, "weft_jobs", &["status=\"succeeded\""]), listed, "{page}");
    assert_eq!(sum(&s, "weft_commands_total", &["aggregate=\"job\"", "command=\"submit\"", "outcome=\"ok\""]), listed);
    assert_eq!(sum(&s, "weft_events_appended_total", &["type=\"job.succeeded\""]), listed);
    assert_eq!(sum(&s, "weft_tasks_total", &["outcome=\"ok\""]), 3.0, "{page}");
    assert_eq!(sum(&s, "weft_task_duration_seconds_count", &[]), 3.0);
    assert_eq!(sum(&s, "weft_provider_calls_total", &["provider=\"builtin\"", "outcome=\"ok\""]), 3.0);
    assert_eq!(sum(&s, "weft_provider_errors_total", &[]), 0.0);
    assert_eq!(sum(&s, "weft_job_retries_total", &[]), 0.0);
    assert_eq!(sum(&s, "weft_agent_busy_slots", &[]), 0.0);
    assert!(sum(&s, "weft_provider_input_tokens_total", &[]) > 0.0);
    // Every event appended is in the log; the store committed them; each projection is at the head.
    let head = sum(&s, "weft_store_head_position", &[]);
    assert_eq!(sum(&s, "weft_events_appended_total", &[]), head, "{page}");
    assert!(sum(&s, "weft_store_appends_total", &[]) >= sum(&s, "weft_commands_total", &["outcome=\"ok\""]) - 1.0);
    assert_eq!(sum(&s, "weft_projection_position", &["projection=\"jobs\""]), head);
    assert_eq!(sum(&s, "weft_process_position", &["process=\"orchestrator\""]), head);
    assert_eq!(sum(&s, "weft_process_lag_events", &["process=\"orchestrator\""]), 0.0);
    // Requests by route pattern, the refusals above among the denials.
    assert!(sum(&s, "weft_http_requests_total", &["route=\"/jobs/{id}\"", "status=\"200\""]) >= 1.0, "{page}");
    assert!(sum(&s, "weft_http_requests_total", &["route=\"/metrics\"", "status=\"401\""]) >= 2.0);
    assert_eq!(sum(&s, "weft_denials_total", &["surface=\"http\"", "reason=\"unauthenticated\""]), 2.0);

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is on PATH (scripts/test unpacks Debian's prometheus package)");
    use std::io::Write as _;
    promtool.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
}
