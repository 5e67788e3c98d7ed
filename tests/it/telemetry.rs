//! Seeing inside a node: `GET /metrics` after the README's quick start, checked by value and by `promtool`;
//! one trace per job across two nodes, received by a real OTLP endpoint; JSON log lines with trace ids.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::serve::raw_http;

/// Every family the node reports, by name.
pub const FAMILIES: &[&str] = &[
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
    "weft_provider_cost_nanodollars_total",
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

/// A span as the OTLP receiver got it, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

/// A real OTLP/HTTP receiver on a free loopback port (`POST /v1/traces`, protobuf), decoding with the official
/// `opentelemetry-proto` definitions; it keeps every span.
struct Receiver {
    port: u16,
    spans: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start() -> Self {
        use actix_web::{App, HttpResponse, HttpServer, web};
        use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
        use prost::Message as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let receive = move |body: web::Bytes| {
                    let kept = kept.clone();
                    async move {
                        let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                            return HttpResponse::BadRequest().finish();
                        };
                        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
                        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| {
                            use opentelemetry_proto::tonic::common::v1::any_value::Value;
                            match v.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                Some(Value::IntValue(i)) => i.to_string(),
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            }
                        };
                        for resource in request.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .map(|a| text(&a.value))
                                .unwrap_or_default();
                            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                                kept.lock().unwrap().push(Received {
                                    service: service.clone(),
                                    name: span.name.clone(),
                                    trace: hex(&span.trace_id),
                                    id: hex(&span.span_id),
                                    parent: hex(&span.parent_span_id),
                                    attributes: span
                                        .attributes
                                        .iter()
                                        .map(|a| (a.key.clone(), text(&a.value)))
                                        .collect(),
                                });
                            }
                        }
                        HttpResponse::Ok()
                            .content_type("application/x-protobuf")
                            .body(ExportTraceServiceResponse::default().encode_to_vec())
                    }
                };
                HttpServer::new(move || App::new().route("/v1/traces", web::post().to(receive.clone())))
                    .workers(1)
                    .listen(listener)
                    .unwrap()
                    .run()
                    .await
                    .unwrap();
            });
        });
        Self { port, spans }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

/// Jobs run through two nodes on one NATS server and JetStream store: node A takes commands only, node B
/// also runs the process managers and the agents. A job whose submit node A ran is one trace: A's `command`
/// span and its `append`, then B's `process` spans (children of the command that appended the event they
/// handle), B's commands within them, the `task` and its `provider_call`; no span names a parent the trace
/// lacks.
#[test]
fn a_job_run_across_two_nodes_over_nats_is_one_trace_with_its_spans_parented() {
    let receiver = Receiver::start();
    let server = weft_harness::NatsServer::start().expect("nats-server");
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("auth.secret");
    let objects = shared.path().join("objects");
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let common =
        ["--nats", &server.url(), "--jetstream", "--auth-secret-file", secret.to_str().unwrap(), "--objects-dir"];
    let env = |service: &'static str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
    };
    let a_env = env("node-a");
    let a_env: Vec<(&str, &str)> = a_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b_env = env("node-b");
    let b_env: Vec<(&str, &str)> = b_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a_args = common.to_vec();
    a_args.extend([objects.to_str().unwrap(), "--no-processes"]);
    let mut b_args = common.to_vec();
    b_args.push(objects.to_str().unwrap());
    let node_b = crate::serve::Serve::start_with_env(b_dir.path(), &b_args, &b_env);
    let node_a = crate::serve::Serve::start_with_env(a_dir.path(), &a_args, &a_env);
    let addr = node_a.addr.clone();

    // Each submit goes to one of the two intakes (a queue group): with eight jobs, some land on node A.
    let file = shared.path().join("report.txt");
    std::fs::write(&file, "Write to ann@example.com. Revenue rose 12% in the third quarter.\n").unwrap();
    for _ in 0..8 {
        let (ok, document, err) =
            crate::serve::weft(&addr, &["document", "upload", file.to_str().unwrap(), "--tenant", "acme"]);
        assert!(ok, "{err}");
        let (ok, _, err) = crate::serve::weft(
            &addr,
            &["job", "run", "redact-then-summarize", "--document", document.trim(), "--wait"],
        );
        assert!(ok, "{err}");
    }
    let jobs = crate::serve::http(&addr, "GET", "/jobs?limit=100", &[], b"").json();
    let jobs: Vec<String> =
        jobs["items"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(jobs.len(), 8);

    let mut across = 0;
    for job in &jobs {
        let events = crate::serve::http(&addr, "GET", &format!("/streams/job-{job}/events"), &[], b"").json();
        let first = &events["items"][0];
        let (flow, submit) = (first["correlation_id"].as_str().unwrap(), first["causation_id"].as_str().unwrap());
        let trace = flow.replace('-', "");
        let submit_span = format!("{:016x}", uuid::Uuid::parse_str(submit).unwrap().as_u128() as u64);
        // Spans are exported as they end, in batches every 100 ms from each node: wait until the trace holds
        // both tasks and their calls, and every parent a span names.
        let deadline = Instant::now() + Duration::from_secs(30);
        let spans = loop {
            let spans: Vec<Received> = receiver.spans().into_iter().filter(|s| s.trace == trace).collect();
            let count = |name: &str| spans.iter().filter(|s| s.name == name).count();
            let whole = spans.iter().all(|s| s.parent.is_empty() || spans.iter().any(|p| p.id == s.parent));
            if (count("provider_call") >= 2 && count("task") >= 2 && whole) || Instant::now() > deadline {
                break spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let named = |name: &'static str| spans.iter().filter(move |s| s.name == name);
        let by_id = |id: &str| spans.iter().find(|s| s.id == id);
        let command = by_id(&submit_span).unwrap_or_else(|| panic!("no span of the submit {submit}: {spans:#?}"));
        assert_eq!(command.name, "command");
        assert_eq!(command.attributes["aggregate"], "job");
        assert_eq!(command.attributes["command"], "submit");
        assert!(command.parent.is_empty(), "the submit starts the trace: {command:?}");
        assert!(named("append").any(|s| s.parent == command.id && s.service == command.service), "{spans:#?}");
        // The orchestrator's step, on node B, is a child of the command that scheduled the step.
        let scheduled = named("process")
            .find(|s| {
                s.parent == command.id
                    && s.attributes["process"] == "orchestrator"
                    && s.attributes["event_type"] == "job.step_scheduled"
            })
            .unwrap_or_else(|| panic!("no process span under the submit: {spans:#?}"));
        assert_eq!(scheduled.service, "node-b");
        assert!(named("command").any(|s| s.parent == scheduled.id), "the orchestrator's commands: {spans:#?}");
        // Both steps' tasks, each with its provider call inside.
        let calls: Vec<_> = named("provider_call").collect();
        assert_eq!(calls.len(), 2, "{spans:#?}");
        for call in calls {
            let task = by_id(&call.parent).unwrap_or_else(|| panic!("the call's parent: {spans:#?}"));
            assert_eq!(task.name, "task");
            let worker = by_id(&task.parent).unwrap_or_else(|| panic!("the task's parent: {spans:#?}"));
            assert_eq!((worker.name.as_str(), worker.attributes["process"].as_str()), ("process", "worker"));
            assert_eq!(call.attributes["provider"], "builtin");
        }
        for span in &spans {
            assert!(span.parent.is_empty() || by_id(&span.parent).is_some(), "a parent outside the trace: {span:?}");
        }
        across += usize::from(command.service == "node-a");
    }
    assert!(across > 0, "no submit ran on node A");
    // Each of node A's NATS connections is up.
    let page = crate::serve::http(&addr, "GET", "/metrics", &[], b"").body;
    let connected = samples(&page);
    let connections: Vec<_> = connected.iter().filter(|(k, _)| k.starts_with("weft_nats_connected{")).collect();
    assert!(!connections.is_empty() && connections.iter().all(|(_, v)| **v == 1.0), "{page}");
    node_a.stop();
    node_b.stop();
}

/// `--log-format json`: one JSON object per line, and the lines within a command's span name its trace, here
/// the caller's (its `traceparent` names the flow).
#[test]
fn json_log_lines_carry_the_trace_and_span_of_the_command_they_are_about() {
    let dir = tempfile::tempdir().unwrap();
    let node = crate::serve::Serve::start_with_env(
        dir.path(),
        &["--log-format", "json"],
        &[("WEFT_LOG", "warn,weft_actors::host=debug")],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = serde_json::json!({"command_id": uuid::Uuid::now_v7(), "type": "register",
        "payload": {"name": "a.txt", "content_type": "text/plain", "declared_size_bytes": 10, "tenant": "acme", "owner": "ann"}});
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let path = format!("/commands/document/{}", uuid::Uuid::now_v7());
    let headers = [("Content-Type", "application/json"), ("traceparent", traceparent.as_str())];
    let response = crate::serve::http(&node.addr, "POST", &path, &headers, body.to_string().as_bytes());
    assert_eq!(response.status, 200, "{response:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = node.log();
        if let Some(line) = log.lines().find(|l| l.contains("command run") && l.contains(trace)) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no line of the command:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["level"], "DEBUG");
    assert_eq!(line["span"], "command");
    assert_eq!(line["trace_id"], trace);
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16));
    assert_eq!(line["fields"]["outcome"], "ok");
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    let (status, log) = node.terminate();
    assert!(status.success(), "{log}");
    // A log format or an OTLP protocol Weft does not have stops the node at start, saying so.
    for (args, env, expected) in [
        (vec!["--log-format", "xml"], vec![], "--log-format"),
        (
            vec![],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            "http/protobuf",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--http-addr", "127.0.0.1:0"])
            .args(&args)
            .envs(env)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && said.contains(expected), "{args:?}: {said}");
    }
    for line in log.lines().filter(|l| !l.starts_with("weft: ")) {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(parsed["level"].is_string() && parsed["message"].is_string() && parsed["target"].is_string(), "{line}");
    }
}

/// A job's cost on a local OpenAI-compatible server is its calls' tokens times the configured prices (an exact
/// model's price, and a provider's `*`), shown per step, job, agent and tenant, and in the metrics.
#[test]
fn a_job_costs_its_tokens_times_the_configured_prices_per_step_job_agent_and_tenant() {
    use crate::providers::{Fake, OPENAI_OK, answer};
    use crate::serve::{Serve, command, get, weft};
    use serde_json::json;
    // Each answer read 9 tokens and wrote 12.
    let fake = Fake::start(vec![answer(200, OPENAI_OK), answer(200, OPENAI_OK)]);
    let dir = tempfile::tempdir().unwrap();
    let prices = ["--price", "openai/gpt-4o-mini=0.15:0.6", "--price", "openai/*=2.5:10"];
    let mut args = vec!["--openai-base-url", fake.url.as_str()];
    args.extend(prices);
    let serve = Serve::start(dir.path(), &args);
    let addr = serve.addr.as_str();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "Say hello.").unwrap();
    let (ok, document, err) = weft(addr, &["document", "upload", file.to_str().unwrap(), "--tenant", "acme"]);
    assert!(ok, "{err}");
    let mut agents = Vec::new();
    for model in ["gpt-4o-mini", "gpt-4o"] {
        let agent = uuid::Uuid::now_v7().to_string();
        let profile = json!({"profile": {"name": model, "role": "r", "goal": "g", "instructions": "i",
            "provider": "openai", "model": model, "parameters": {}, "concurrency_limit": 1}});
        assert_eq!(command(addr, "agent", &agent, "register", profile).0, 200);
        agents.push(agent);
    }
    let step = |name: &str, agent: &str, from: serde_json::Value| {
        json!({"name": name, "agent": agent, "instruction": "{{input}}", "inputs": [from], "timeout_ms": 10000,
               "retry": {"max_attempts": 1, "base_delay_ms": 10, "max_delay_ms": 10}})
    };
    let workflow = uuid::Uuid::now_v7().to_string();
    let steps = json!({"name": "priced", "steps": [step("first", &agents[0], json!({"from": "job_inputs"})),
        step("second", &agents[1], json!({"from": "step", "name": "first"}))]});
    assert_eq!(command(addr, "workflow", &workflow, "define", steps).0, 200);
    let (ok, _, err) = weft(addr, &["job", "run", &workflow, "--document", document.trim(), "--wait"]);
    assert!(ok, "{err}");

    // 9 tokens at $0.15 and 12 at $0.60 per million: 1,350 + 7,200 nano-dollars; at $2.50 and $10: 22,500 + 120,000.
    let (first, second) = (8_550, 142_500);
    let (_, jobs) = get(addr, "/jobs?tenant=acme");
    let job = jobs["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, job) = get(addr, &format!("/jobs/{job}"));
    assert_eq!(job["cost_nanos"], first + second, "{job}");
    assert_eq!(job["cost_usd"], json!((first + second) as f64 / 1e9));
    assert_eq!((job["input_tokens"].as_u64(), job["output_tokens"].as_u64()), (Some(18), Some(24)));
    let steps: Vec<_> = job["steps"].as_array().unwrap().iter().map(|s| s["cost_nanos"].as_u64().unwrap()).collect();
    assert_eq!(steps, [first, second]);
    for (agent, cost) in agents.iter().zip([first, second]) {
        let (_, agent) = get(addr, &format!("/agents/{agent}"));
        assert_eq!(agent["cost_nanos"], cost, "{agent}");
    }
    let (status, costs) = get(addr, "/costs");
    assert_eq!(status, 200, "{costs}");
    assert_eq!(
        costs["tenants"],
        json!([{"tenant": "acme", "jobs": 1, "input_tokens": 18, "output_tokens": 24, "cost_nanos": first + second,
                "cost_usd": (first + second) as f64 / 1e9}])
    );
    assert_eq!(get(addr, "/costs?tenant=other").1["tenants"], json!([]));
    assert_eq!(get(addr, "/costs?since=x").0, 400);
    assert_eq!(get(addr, "/costs?color=red").0, 400);
    let page = crate::serve::http(addr, "GET", "/metrics", &[], b"").body;
    let s = samples(&page);
    assert_eq!(sum(&s, "weft_provider_cost_nanodollars_total", &["model=\"gpt-4o-mini\""]), first as f64);
    assert_eq!(sum(&s, "weft_provider_cost_nanodollars_total", &["model=\"gpt-4o\""]), second as f64);
    serve.stop();

    // A price that is not one is refused at start, saying the shape it expects.
    for bad in ["openai", "openai/gpt=1", "openai/gpt=-1:2", "openai/gpt=1:2e9"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--http-addr", "127.0.0.1:0", "--price", bad])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && said.contains("--price"), "{bad}: {said}");
    }
}
