//! Agents at work through a real `weft serve`: the built-in `redact-then-summarize` workflow over an uploaded
//! document, on the embedded defaults and on NATS + JetStream + SeaweedFS; steps that cannot succeed end the
//! job failed with their error visible.

use serde_json::{Value, json};
use weft_harness::NatsServer;
use weft_harness::Seaweed;

use crate::serve::{Serve, command, get, submit_job, weft};

const REPORT: &str = "Contact ann.lee@example.com or +44 20 7946 0958 about this report. Revenue rose in the \
    third quarter. Revenue growth came from new customers in Europe. The weather was mild. Customers in Europe \
    bought more licences.\n";

/// Uploads the report for `tenant` through the CLI; the document's id.
fn upload_report(addr: &str, dir: &std::path::Path, tenant: &str) -> String {
    let file = dir.join("report.txt");
    std::fs::write(&file, REPORT).unwrap();
    let (ok, stdout, stderr) = weft(addr, &["document", "upload", file.to_str().unwrap(), "--tenant", tenant]);
    assert!(ok, "{stderr}");
    stdout.trim().to_owned()
}

/// Uploads the report and runs `redact-then-summarize` on it; checks the outputs, their lineage and the job.
fn redact_then_summarize(addr: &str, dir: &std::path::Path) {
    let input = upload_report(addr, dir, "acme");

    let (ok, stdout, stderr) = weft(addr, &["job", "run", "redact-then-summarize", "--document", &input, "--wait"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("succeeded: redact succeeded (attempt 1), summarize succeeded (attempt 1)"), "{stderr}");
    let outputs: Vec<(&str, &str)> = stdout.lines().filter_map(|l| l.split_once('\t')).collect();
    let [("redact", redacted), ("summarize", summary)] = outputs[..] else { panic!("{stdout}") };

    let read = |id: &str| {
        let out = dir.join(format!("{id}.txt"));
        let (ok, _, stderr) = weft(addr, &["document", "download", id, "--out", out.to_str().unwrap()]);
        assert!(ok, "{stderr}");
        std::fs::read_to_string(out).unwrap()
    };
    assert_eq!(read(redacted), REPORT.replace("ann.lee@example.com", "[email]").replace("+44 20 7946 0958", "[phone]"));
    let text = read(summary);
    assert!(!text.contains('@') && !text.contains("7946"), "the summary reads the redacted text: {text}");
    assert_eq!(
        text,
        "Revenue rose in the third quarter. Revenue growth came from new customers in Europe. Customers in Europe bought more licences.\n"
    );

    // Lineage: input -> redacted -> summary, each output owned by its agent, in the input's tenant.
    let (_, item) = get(addr, &format!("/documents/{input}"));
    assert_eq!(item["derivatives"][0]["id"], redacted, "{item}");
    let (_, item) = get(addr, &format!("/documents/{redacted}"));
    assert_eq!((item["parents"][0]["id"].as_str(), item["tenant"].as_str()), (Some(input.as_str()), Some("acme")));
    assert_eq!(item["derivatives"][0]["id"], summary, "{item}");
    assert!(item["owner"].as_str().unwrap().starts_with("agent:"), "{item}");
    let (_, item) = get(addr, &format!("/documents/{summary}"));
    assert_eq!(item["status"], "uploaded");

    // Lineage to any depth: the summary's ancestors are the redacted text, then the input; the input's
    // descendants the other way round.
    let edges = |lineage: &Value, way: &str| -> Vec<(String, u64)> {
        lineage[way]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["id"].as_str().unwrap().to_owned(), e["depth"].as_u64().unwrap()))
            .collect()
    };
    let (status, lineage) = get(addr, &format!("/documents/{summary}/lineage?direction=ancestors"));
    assert_eq!(status, 200, "{lineage}");
    assert_eq!(edges(&lineage, "ancestors"), [(redacted.to_owned(), 1), (input.clone(), 2)], "{lineage}");
    assert_eq!(edges(&lineage, "descendants"), []);
    let (_, lineage) = get(addr, &format!("/documents/{input}/lineage"));
    assert_eq!(edges(&lineage, "descendants"), [(redacted.to_owned(), 1), (summary.to_owned(), 2)], "{lineage}");
    assert_eq!(lineage["descendants"][0]["version"], 1, "the step read version 1: {lineage}");
    let (_, lineage) = get(addr, &format!("/documents/{input}/lineage?depth=1"));
    assert_eq!(edges(&lineage, "descendants"), [(redacted.to_owned(), 1)], "{lineage}");
    for bad in ["direction=sideways", "depth=0", "depth=65", "colour=red"] {
        let (status, body) = get(addr, &format!("/documents/{input}/lineage?{bad}"));
        assert_eq!((status, body["error"]["kind"].as_str()), (400, Some("invalid")), "{bad}: {body}");
    }
    let (ok, stdout, stderr) = weft(addr, &["document", "lineage", summary, "--direction", "ancestors"]);
    assert!(ok && stdout.contains(&input) && stdout.contains(redacted), "{stdout}{stderr}");
}

#[test]
fn a_two_step_workflow_redacts_then_summarises_an_uploaded_document_on_the_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    redact_then_summarize(&serve.addr, dir.path());
    // The built-in agents recorded the tasks.
    let summarize = weft::agents::catalog::agent_id("summarize");
    let (_, agent) = get(&serve.addr, &format!("/agents/{summarize}"));
    assert_eq!(agent["tasks_done"], 1, "{agent}");
    assert!(agent["input_tokens"].as_u64().unwrap() > 0, "{agent}");
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_step_workflow_runs_on_nats_jetstream_and_seaweedfs() {
    let nats = NatsServer::start().unwrap();
    let seaweed = Seaweed::start().unwrap();
    crate::support::bucket(&seaweed, "docs").await;
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let mut args = vec!["--nats".to_owned(), url, "--jetstream".to_owned()];
    args.extend(seaweed.node_args("docs"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serve = Serve::start(dir.path(), &args);
    let addr = serve.addr.clone();
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || redact_then_summarize(&addr, &path)).await.unwrap();
    serve.stop();
}

#[test]
fn a_step_that_cannot_succeed_fails_the_job_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "Some text.").unwrap();
    let (_, stdout, _) = weft(addr, &["document", "upload", file.to_str().unwrap()]);
    let document = stdout.trim().to_owned();

    // `weft job run` with a workflow that does not exist, or an input that is not a document id.
    let (ok, _, stderr) = weft(addr, &["job", "run", "no-such-workflow", "--document", &document]);
    assert!(!ok && stderr.contains("no workflow named \"no-such-workflow\""), "{stderr}");
    let (ok, _, stderr) = weft(addr, &["job", "run", "summarize", "--document", "not-a-uuid", "--wait"]);
    assert!(!ok && stderr.contains("400 invalid"), "{stderr}");

    // An agent whose model needs a parameter it was not given, and one on a provider this node does not have.
    for (provider, model, expected) in [
        ("builtin", "convert", "`convert` needs the parameter `to`"),
        ("openai", "gpt-4o-mini", "no provider \"openai\" on this node"),
    ] {
        let agent = uuid::Uuid::now_v7().to_string();
        let profile = json!({"profile": {"name": model, "role": "r", "goal": "g", "instructions": "i",
            "provider": provider, "model": model, "parameters": {}, "concurrency_limit": 1}});
        assert_eq!(command(addr, "agent", &agent, "register", profile).0, 200);
        let job = uuid::Uuid::now_v7().to_string();
        let submit = json!({"workflow": uuid::Uuid::now_v7().to_string(), "workflow_version": 1, "inputs": [document],
            "priority": 0, "steps": [{"name": "only", "agent": agent, "instruction": "do it",
            "inputs": [{"from": "job_inputs"}], "timeout_ms": 10000,
            "retry": {"max_attempts": 3, "base_delay_ms": 10, "max_delay_ms": 10}}]});
        let (status, reply) = submit_job(addr, &job, submit);
        assert_eq!(status, 200, "{reply}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let state: Value = loop {
            let (_, state) = get(addr, &format!("/jobs/{job}"));
            if state["status"] == "failed" {
                break state;
            }
            assert!(std::time::Instant::now() < deadline, "{state}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Not retryable: one attempt, and the error is the provider's.
        assert_eq!(state["steps"][0]["attempts"], 1, "{state}");
        assert!(state["error"].as_str().unwrap_or("").contains(expected), "{state}");
    }
    serve.stop();
}

#[test]
fn an_agent_on_an_openai_compatible_server_writes_its_answer_as_the_output_document() {
    use crate::providers::{Fake, OPENAI_OK, answer};
    let fake = Fake::start(vec![answer(200, OPENAI_OK)]);
    let dir = tempfile::tempdir().unwrap();
    // A base URL other than OpenAI's: a local server, which needs no key.
    let serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let addr = serve.addr.as_str();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "Say hello.").unwrap();
    let (_, stdout, _) = weft(addr, &["document", "upload", file.to_str().unwrap()]);
    let document = stdout.trim().to_owned();
    let agent = uuid::Uuid::now_v7().to_string();
    let profile = json!({"profile": {"name": "greeter", "role": "r", "goal": "g", "instructions": "Be kind.",
        "provider": "openai", "model": "gpt-4o-mini", "parameters": {}, "concurrency_limit": 1}});
    assert_eq!(command(addr, "agent", &agent, "register", profile).0, 200);
    let workflow = uuid::Uuid::now_v7().to_string();
    let steps = json!({"name": "greet", "steps": [{"name": "greet", "agent": agent, "instruction": "Answer: {{input}}",
        "inputs": [{"from": "job_inputs"}], "timeout_ms": 10000,
        "retry": {"max_attempts": 1, "base_delay_ms": 10, "max_delay_ms": 10}}]});
    assert_eq!(command(addr, "workflow", &workflow, "define", steps).0, 200);
    let (ok, stdout, stderr) = weft(addr, &["job", "run", &workflow, "--document", &document, "--wait"]);
    assert!(ok, "{stderr}");
    let output = stdout.trim().split_once('\t').unwrap().1.to_owned();
    let out = dir.path().join("out.txt");
    assert!(weft(addr, &["document", "download", &output, "--out", out.to_str().unwrap()]).0);
    assert_eq!(std::fs::read_to_string(out).unwrap(), "Hello there, how may I assist you today?");
    let seen = fake.seen();
    assert_eq!(seen[0].body["messages"][1]["content"], "Answer: Say hello.");
    let (_, agent) = get(addr, &format!("/agents/{agent}"));
    assert_eq!((agent["input_tokens"].as_u64(), agent["output_tokens"].as_u64()), (Some(9), Some(12)), "{agent}");
    // The providers and their circuits, for operators.
    let (status, providers) = get(addr, "/providers");
    assert_eq!(status, 200);
    assert_eq!(
        providers["providers"],
        json!([{"name": "builtin", "circuit": "closed", "consecutive_failures": 0},
               {"name": "openai", "circuit": "closed", "consecutive_failures": 0}])
    );
    serve.stop();
}

#[test]
fn jobs_wait_for_a_busy_agent_instead_of_spending_their_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, REPORT).unwrap();
    let (_, stdout, _) = weft(addr, &["document", "upload", file.to_str().unwrap()]);
    let document = stdout.trim().to_owned();
    // One task at a time, and a single attempt per step: a refusal would fail the job.
    let agent = uuid::Uuid::now_v7().to_string();
    let profile = json!({"profile": {"name": "one-at-a-time", "role": "r", "goal": "g", "instructions": "i",
        "provider": "builtin", "model": "summarize", "parameters": {}, "concurrency_limit": 1}});
    assert_eq!(command(addr, "agent", &agent, "register", profile).0, 200);
    let jobs: Vec<String> = (0..12)
        .map(|_| {
            let job = uuid::Uuid::now_v7().to_string();
            let submit = json!({"workflow": uuid::Uuid::now_v7().to_string(), "workflow_version": 1, "inputs": [document],
                "priority": 0, "steps": [{"name": "only", "agent": agent, "instruction": "sum up",
                "inputs": [{"from": "job_inputs"}], "timeout_ms": 30000,
                "retry": {"max_attempts": 1, "base_delay_ms": 10, "max_delay_ms": 10}}]});
            assert_eq!(submit_job(addr, &job, submit).0, 200);
            job
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for job in &jobs {
        let state = loop {
            let (_, state) = get(addr, &format!("/jobs/{job}"));
            if state["status"].is_string() && state["status"] != "running" {
                break state;
            }
            assert!(std::time::Instant::now() < deadline, "{state}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(state["status"], "succeeded", "{state}");
        assert_eq!(state["steps"][0]["attempts"], 1, "{state}");
    }
    serve.stop();
}

/// Registers an agent on the `openai` provider and submits a one-step job over `document` with `attempts`
/// attempts; the job's id.
pub fn openai_job(addr: &str, document: &str, attempts: u32) -> String {
    let agent = uuid::Uuid::now_v7().to_string();
    let profile = json!({"profile": {"name": "remote", "role": "r", "goal": "g", "instructions": "i",
        "provider": "openai", "model": "gpt-4o-mini", "parameters": {}, "concurrency_limit": 2}});
    assert_eq!(command(addr, "agent", &agent, "register", profile).0, 200);
    let job = uuid::Uuid::now_v7().to_string();
    let submit = json!({"workflow": uuid::Uuid::now_v7().to_string(), "workflow_version": 1, "inputs": [document],
        "priority": 0, "steps": [{"name": "ask", "agent": agent, "instruction": "{{input}}",
        "inputs": [{"from": "job_inputs"}], "timeout_ms": 30000,
        "retry": {"max_attempts": attempts, "base_delay_ms": 10, "max_delay_ms": 10}}]});
    assert_eq!(submit_job(addr, &job, submit).0, 200);
    job
}

/// Polls a job until `done` holds of it; its state.
pub fn wait_job(addr: &str, job: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, state) = get(addr, &format!("/jobs/{job}"));
        // Until the read model has the submission, the answer is "no such job", which nothing waits for.
        if state["status"].is_string() && done(&state) {
            return state;
        }
        assert!(std::time::Instant::now() < deadline, "{state}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn upload(addr: &str, dir: &std::path::Path) -> String {
    let file = dir.join("input.txt");
    std::fs::write(&file, "Say hello.").unwrap();
    let (ok, stdout, stderr) = weft(addr, &["document", "upload", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    stdout.trim().to_owned()
}

/// A fake OpenAI server answering two attempts' worth of 503s (four requests each, the provider's own
/// retries), then an answer.
fn two_busy_attempts_then_an_answer() -> crate::providers::Fake {
    use crate::providers::{Fake, OPENAI_OK, answer};
    let mut script: Vec<_> = (0..8).map(|_| answer(503, r#"{"error":{"message":"busy"}}"#)).collect();
    script.push(answer(200, OPENAI_OK));
    Fake::start(script)
}

#[test]
fn a_flaky_step_that_fails_twice_then_succeeds_ends_the_job_succeeded_on_its_third_attempt() {
    // Each attempt's call is tried 4 times by the provider: two attempts' worth of 503s, then an answer.
    let fake = two_busy_attempts_then_an_answer();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let document = upload(&serve.addr, dir.path());
    let job = openai_job(&serve.addr, &document, 3);
    let state = wait_job(&serve.addr, &job, |s| s["status"] != "running");
    assert_eq!(
        (state["status"].as_str(), state["steps"][0]["attempts"].as_u64()),
        (Some("succeeded"), Some(3)),
        "{state}"
    );
    assert_eq!(fake.seen().len(), 9);
    let (_, logs) = get(&serve.addr, &format!("/jobs/{job}/logs"));
    let lines: Vec<&str> = logs["items"].as_array().unwrap().iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(lines.contains(&"step ask attempt 1 failed: openai answered 503: busy"), "{logs}");
    assert!(lines.iter().any(|l| l.starts_with("step ask attempt 3: wrote document")), "{logs}");
    serve.stop();
}

#[test]
fn a_node_killed_in_the_middle_of_a_provider_call_finishes_the_job_after_a_restart() {
    use crate::providers::{Answer, Fake, OPENAI_OK, answer};
    // The first call hangs past the kill; the second, after the restart, answers.
    let hang = Answer { delay: std::time::Duration::from_secs(20), ..answer(200, OPENAI_OK) };
    let fake = Fake::start(vec![hang, answer(200, OPENAI_OK)]);
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let document = upload(&serve.addr, dir.path());
    let job = openai_job(&serve.addr, &document, 3);
    wait_job(&serve.addr, &job, |s| s["steps"][0]["status"] == "running");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fake.seen().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the provider was never called");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();

    let serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let state = wait_job(&serve.addr, &job, |s| s["status"] != "running");
    // The interrupted call is an attempt of its own: the task is retried as a new one.
    assert_eq!(
        (state["status"].as_str(), state["steps"][0]["attempts"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{state}"
    );
    assert_eq!(fake.seen().len(), 2);
    serve.stop();
}

#[test]
fn a_one_second_schedule_fires_jobs_that_run_and_a_paused_or_restarted_one_does_not_fire_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path(), &[]);
    let document = upload(&serve.addr, dir.path());
    let workflow = weft::agents::catalog::workflow_id("summarize").to_string();
    let schedule = uuid::Uuid::now_v7().to_string();
    let create = json!({"cron": "* * * * * *", "time_zone": "UTC", "workflow": workflow,
        "target": {"documents": [document]}, "strategy": "per_document"});
    let (status, reply) = command(&serve.addr, "schedule", &schedule, "create", create);
    assert_eq!(status, 200, "{reply}");
    let jobs = |addr: &str| -> Vec<Value> {
        let (_, page) = get(addr, &format!("/jobs?workflow={workflow}&limit=1000"));
        page["items"].as_array().cloned().unwrap_or_default()
    };
    let wait_jobs = |addr: &str, at_least: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while jobs(addr).iter().filter(|j| j["status"] == "succeeded").count() < at_least {
            assert!(std::time::Instant::now() < deadline, "fewer than {at_least} jobs ran: {:?}", jobs(addr));
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_jobs(&serve.addr, 2);
    // A crash and a restart: the schedule goes on, and no occurrence fires twice.
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    serve = Serve::start(dir.path(), &[]);
    let before = jobs(&serve.addr).len();
    wait_jobs(&serve.addr, before + 2);
    assert_eq!(command(&serve.addr, "schedule", &schedule, "pause", json!({})).0, 200);
    // Paused: besides a firing in flight when the pause landed (recorded all the same: its occurrence was
    // due before the pause), no more jobs come. Two seconds of a one-second cron, twice: nothing to poll
    // for, so the test waits.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let settled = jobs(&serve.addr).len();
    let fired = firings(&serve.addr, &schedule);
    let occurrences: std::collections::BTreeSet<i64> =
        fired.iter().map(|(e, _)| e["event"]["due_at"].as_i64().unwrap()).collect();
    assert_eq!(occurrences.len(), fired.len(), "an occurrence fired twice");
    let submitted: usize = fired.iter().map(|(e, _)| e["event"]["jobs"].as_array().unwrap().len()).sum();
    assert_eq!(settled, submitted, "every job is one a firing recorded");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(jobs(&serve.addr).len(), settled, "a paused schedule fired");
    serve.stop();
}

#[test]
fn cancelling_a_job_mid_step_aborts_the_provider_call_and_frees_the_agent() {
    use crate::providers::{Answer, Fake, OPENAI_OK, answer};
    let hang = Answer { delay: std::time::Duration::from_secs(20), ..answer(200, OPENAI_OK) };
    let fake = Fake::start(vec![hang]);
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let addr = serve.addr.as_str();
    let document = upload(addr, dir.path());
    let job = openai_job(addr, &document, 3);
    wait_job(addr, &job, |s| s["steps"][0]["status"] == "running");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fake.seen().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the provider was never called");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (status, reply) = command(addr, "job", &job, "cancel", json!({"reason": "not needed after all"}));
    assert_eq!(status, 200, "{reply}");
    let state = wait_job(addr, &job, |s| s["status"] != "running");
    assert_eq!(state["status"], "cancelled", "{state}");
    // The agent's slot is free again: its task failed (cancelled), none is running, and nothing was retried.
    let (_, agents) = get(addr, "/agents?provider=openai");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut agent = agents["items"][0].clone();
    while agent["tasks_running"] != 0 || agent["tasks_failed"] != 1 {
        assert!(std::time::Instant::now() < deadline, "{agent}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        agent = get(addr, "/agents?provider=openai").1["items"][0].clone();
    }
    assert_eq!(fake.seen().len(), 1, "a cancelled job's step is not tried again");
    let (_, logs) = get(addr, &format!("/jobs/{job}/logs"));
    assert!(!logs.to_string().contains("wrote document"), "{logs}");
    serve.stop();
}

#[test]
fn a_step_that_always_fails_dead_letters_the_job_and_a_retry_runs_it_again_from_that_step() {
    // Two attempts meet 503s; the retry of the job meets an answer.
    let fake = two_busy_attempts_then_an_answer();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let addr = serve.addr.as_str();
    let document = upload(addr, dir.path());
    let job = openai_job(addr, &document, 2);
    let state = wait_job(addr, &job, |s| s["status"] != "running");
    assert_eq!(state["status"], "dead_lettered", "{state}");
    assert_eq!(state["steps"][0]["attempts"], 2, "{state}");
    assert_eq!(
        state["error"], "step ask: failed 2 attempts, the last with: openai answered 503: busy",
        "the last error is visible: {state}"
    );
    let (_, page) = get(addr, "/jobs?status=dead_lettered");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");

    // Retrying a job that has not failed is refused with the reason; the dead-lettered one runs again.
    let (ok, _, stderr) = weft(addr, &["job", "retry", &uuid::Uuid::now_v7().to_string()]);
    assert!(!ok && stderr.contains("only a failed or dead-lettered job can be retried"), "{stderr}");
    let (ok, stdout, stderr) = weft(addr, &["job", "retry", &job, "--reason", "the provider is back", "--wait"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("succeeded: ask succeeded (attempt 3)"), "{stderr}");
    assert!(stdout.starts_with("ask\t"), "{stdout}");
    let (_, state) = get(addr, &format!("/jobs/{job}"));
    assert_eq!((state["status"].as_str(), state["error"].as_str()), (Some("succeeded"), None), "{state}");
    assert_eq!(fake.seen().len(), 9);
    let (_, history) = get(addr, &format!("/streams/job-{job}/events?limit=1000"));
    let types: Vec<&str> = history["items"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    let at = types.iter().position(|t| *t == "job.dead_lettered").expect("dead-lettered");
    assert_eq!(types[at + 1..at + 3], ["job.retried", "job.step_scheduled"], "{types:?}");
    assert_eq!(types.last(), Some(&"job.succeeded"));
    // A succeeded job cannot be retried.
    let (ok, _, stderr) = weft(addr, &["job", "retry", &job]);
    assert!(!ok && stderr.contains("it is Succeeded"), "{stderr}");
    serve.stop();
}

#[test]
fn instructions_read_earlier_outputs_and_job_parameters_and_a_large_input_is_asked_in_chunks() {
    use crate::providers::{Fake, OPENAI_OK, answer};
    let fake = Fake::start((0..3).map(|_| answer(200, OPENAI_OK)).collect());
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let addr = serve.addr.as_str();
    // Three paragraphs of about 250 bytes: three chunks of at most 300 bytes.
    let paragraph = |n: usize| format!("Paragraph {n}. {}", "Revenue rose again this quarter. ".repeat(7));
    let text = format!("{}\n\n{}\n\n{}", paragraph(1), paragraph(2), paragraph(3));
    let file = dir.path().join("long.txt");
    std::fs::write(&file, &text).unwrap();
    let (ok, stdout, stderr) = weft(addr, &["document", "upload", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let document = stdout.trim().to_owned();

    let keywords = weft::agents::catalog::agent_id("keywords").to_string();
    let remote = uuid::Uuid::now_v7().to_string();
    let profile = json!({"profile": {"name": "remote", "role": "r", "goal": "g", "instructions": "i",
        "provider": "openai", "model": "gpt-4o-mini", "parameters": {"chunk_bytes": 300}, "concurrency_limit": 1}});
    assert_eq!(command(addr, "agent", &remote, "register", profile).0, 200);
    let retry = json!({"max_attempts": 1, "base_delay_ms": 10, "max_delay_ms": 10});
    let job = uuid::Uuid::now_v7().to_string();
    // `brief` reads only the job's input, but its instruction names `title`'s output: it waits for it.
    let submit = json!({"workflow": uuid::Uuid::now_v7().to_string(), "workflow_version": 1, "inputs": [document],
        "priority": 0, "parameters": {"audience": "the board"}, "steps": [
            {"name": "brief", "agent": remote, "inputs": [{"from": "job_inputs"}],
             "instruction": "For {{param.audience}} on {{output.title}}, part {{chunk}} of {{chunks}}: {{input}}",
             "timeout_ms": 30000, "retry": retry},
            {"name": "title", "agent": keywords, "instruction": "Keywords.", "inputs": [{"from": "job_inputs"}],
             "timeout_ms": 30000, "retry": retry}]});
    let (status, reply) = submit_job(addr, &job, submit);
    assert_eq!(status, 200, "{reply}");
    let state = wait_job(addr, &job, |s| s["status"] != "running");
    assert_eq!(state["status"], "succeeded", "{state}");
    let read = |id: &str| {
        let out = dir.path().join(format!("{id}.txt"));
        let (ok, _, stderr) = weft(addr, &["document", "download", id, "--out", out.to_str().unwrap()]);
        assert!(ok, "{stderr}");
        std::fs::read_to_string(out).unwrap()
    };
    let output = |name: &str| {
        let step = state["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap();
        step["output"].as_str().unwrap().to_owned()
    };
    let title = read(&output("title"));
    assert!(title.contains("revenue"), "{title}");

    // Three chunks of at most 300 bytes, cut at the paragraphs, each asked with the filled-in instruction.
    let prompts: Vec<String> =
        fake.seen().iter().map(|s| s.body["messages"][1]["content"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(prompts.len(), 3, "{prompts:?}");
    let asked: Vec<&str> = prompts
        .iter()
        .enumerate()
        .map(|(n, prompt)| {
            let prefix = format!("For the board on {title}, part {} of 3: ", n + 1);
            prompt.strip_prefix(&prefix).unwrap_or_else(|| panic!("{prompt:?} does not start with {prefix:?}"))
        })
        .collect();
    assert!(asked.iter().all(|chunk| chunk.len() <= 300), "{asked:?}");
    assert_eq!(asked.concat(), text, "the chunks are the whole input, in order");
    assert!(asked[0].starts_with("Paragraph 1.") && asked[1].starts_with("Paragraph 2."), "{asked:?}");
    let answers = ["Hello there, how may I assist you today?"; 3].join("\n\n");
    assert_eq!(read(&output("brief")), answers, "the answers are joined");
    let (_, agent) = get(addr, &format!("/agents/{remote}"));
    assert_eq!(agent["input_tokens"], 27, "the chunks' tokens add up: {agent}");
    let chunks = 3;
    let (_, logs) = get(addr, &format!("/jobs/{job}/logs"));
    assert!(logs.to_string().contains(&format!("split into {chunks} chunks of at most 300 bytes")), "{logs}");
    serve.stop();
}

#[test]
fn an_instruction_naming_a_parameter_the_job_lacks_fails_the_step_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let document = upload(addr, dir.path());
    let job = uuid::Uuid::now_v7().to_string();
    let submit = json!({"workflow": uuid::Uuid::now_v7().to_string(), "workflow_version": 1, "inputs": [document],
        "priority": 0, "steps": [{"name": "only", "agent": weft::agents::catalog::agent_id("summarize"),
        "instruction": "For {{param.audience}}: {{input}}", "inputs": [{"from": "job_inputs"}],
        "timeout_ms": 10000, "retry": {"max_attempts": 3, "base_delay_ms": 10, "max_delay_ms": 10}}]});
    assert_eq!(submit_job(addr, &job, submit.clone()).0, 200);
    let state = wait_job(addr, &job, |s| s["status"] != "running");
    assert_eq!((state["status"].as_str(), state["steps"][0]["attempts"].as_u64()), (Some("failed"), Some(1)));
    assert!(
        state["error"]
            .as_str()
            .unwrap()
            .contains("the instruction names {{param.audience}}, which this job does not have"),
        "{state}"
    );
    // Parameters that break the limits, and an instruction naming the output of a step the job does not have,
    // are refused at submission, and nothing is stored.
    let mut bad_parameters = submit.clone();
    bad_parameters["parameters"] = json!({"no spaces": "x"});
    let mut dangling = submit.clone();
    dangling["steps"][0]["instruction"] = json!("Use {{output.earlier}}.");
    dangling["workflow"] = json!(uuid::Uuid::now_v7().to_string());
    for (submit, expected) in [(bad_parameters, "parameters: name \"no spaces\""), (dangling, "earlier")] {
        let bad = uuid::Uuid::now_v7().to_string();
        let (status, reply) = submit_job(addr, &bad, submit);
        assert_eq!(status, 422, "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap_or_default().contains(expected), "{reply}");
        let (_, events) = get(addr, &format!("/streams/job-{bad}/events"));
        assert_eq!(events["items"].as_array().map_or(0, Vec::len), 0, "{events}");
    }
    let (ok, _, stderr) = weft(addr, &["job", "run", "summarize", "--document", &document, "--param", "novalue"]);
    assert!(!ok && stderr.contains("is not NAME=VALUE"), "{stderr}");
    // An agent whose chunk size is below the least, or not a number: its step fails for good, naming why.
    for chunk_bytes in [json!(10), json!("big")] {
        let agent = uuid::Uuid::now_v7().to_string();
        let profile = json!({"profile": {"name": "tiny", "role": "r", "goal": "g", "instructions": "i",
            "provider": "builtin", "model": "echo", "parameters": {"chunk_bytes": chunk_bytes}, "concurrency_limit": 1}});
        assert_eq!(command(addr, "agent", &agent, "register", profile).0, 200);
        let mut tiny = submit.clone();
        tiny["steps"][0]["agent"] = json!(agent);
        tiny["steps"][0]["instruction"] = json!("{{input}}");
        tiny["workflow"] = json!(uuid::Uuid::now_v7().to_string());
        let job = uuid::Uuid::now_v7().to_string();
        assert_eq!(submit_job(addr, &job, tiny).0, 200);
        let state = wait_job(addr, &job, |s| s["status"] != "running");
        assert_eq!((state["status"].as_str(), state["steps"][0]["attempts"].as_u64()), (Some("failed"), Some(1)));
        assert!(
            state["error"].as_str().unwrap().contains("chunk_bytes must be a whole number of at least 256"),
            "{state}"
        );
    }
    let (ok, _, stderr) = weft(addr, &["job", "retry", "not-a-uuid"]);
    assert!(!ok && stderr.contains("400 invalid"), "{stderr}");
    // Schedules with a misfire policy or a selector flag that is not one are refused as invalid.
    let workflow = weft::agents::catalog::workflow_id("summarize");
    for (target, misfire) in [
        (json!({"selector": {"tenant": "acme"}}), json!("sometimes")),
        (json!({"selector": {"tenant": "acme", "since_last_firing": "yes"}}), json!("skip")),
    ] {
        let schedule = uuid::Uuid::now_v7().to_string();
        let body = json!({"cron": "* * * * *", "time_zone": "UTC", "workflow": workflow, "target": target,
            "strategy": "combined", "misfire": misfire});
        let (status, reply) = command(addr, "schedule", &schedule, "create", body);
        assert_eq!((status, reply["error"]["kind"].as_str()), (400, Some("invalid")), "{reply}");
    }
    serve.stop();
}

/// The `schedule.fired` events of a schedule, and for each the inputs of each job it submitted.
fn firings(addr: &str, schedule: &str) -> Vec<(Value, Vec<Vec<String>>)> {
    let (_, history) = get(addr, &format!("/streams/schedule-{schedule}/events?limit=1000"));
    let fired: Vec<Value> =
        history["items"].as_array().unwrap().iter().filter(|e| e["type"] == "schedule.fired").cloned().collect();
    fired
        .into_iter()
        .map(|firing| {
            let inputs = firing["event"]["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|job| {
                    let (_, events) = get(addr, &format!("/streams/job-{}/events", job.as_str().unwrap()));
                    let mut inputs: Vec<String> = events["items"][0]["event"]["inputs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_str().unwrap().to_owned())
                        .collect();
                    inputs.sort();
                    inputs
                })
                .collect();
            (firing, inputs)
        })
        .collect()
}

#[test]
fn schedules_over_selectors_take_each_new_upload_once_and_group_the_matches_per_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let upload_as = |tenant: &str, name: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, format!("A note from {tenant}. It says little.")).unwrap();
        let (ok, stdout, stderr) = weft(
            addr,
            &["document", "upload", file.to_str().unwrap(), "--tenant", tenant, "--content-type", "text/plain"],
        );
        assert!(ok, "{stderr}");
        stdout.trim().to_owned()
    };
    let mut acme = vec![upload_as("acme", "a1.txt"), upload_as("acme", "a2.txt")];
    let beta = upload_as("beta", "b1.txt");
    // One of them is labelled after its upload.
    let q3 = acme[0].clone();
    let (ok, _, stderr) = weft(addr, &["document", "label", &q3, "--set", "project=q3"]);
    assert!(ok, "{stderr}");
    acme.sort();
    let workflow = weft::agents::catalog::workflow_id("summarize").to_string();
    let create = |target: Value, strategy: Value| {
        let schedule = uuid::Uuid::now_v7().to_string();
        let body = json!({"cron": "* * * * * *", "time_zone": "UTC", "workflow": workflow, "target": target,
            "strategy": strategy});
        let (status, reply) = command(addr, "schedule", &schedule, "create", body);
        assert_eq!(status, 200, "{reply}");
        schedule
    };
    // New uploads of acme, all in one job each time; every text document, a job per tenant each time.
    let fresh = create(json!({"selector": {"tenant": "acme", "since_last_firing": true}}), json!("combined"));
    let grouped = create(json!({"selector": {"content_type": "text/plain"}}), json!({"per_group": "tenant"}));
    // The documents labelled project=q3, as their labels are at firing time.
    let labelled =
        create(json!({"selector": {"labels": {"project": "q3"}, "since_last_firing": true}}), json!("combined"));
    let wait = |schedule: &str, count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let found = firings(addr, schedule);
            if found.len() >= count {
                return found;
            }
            assert!(std::time::Instant::now() < deadline, "{schedule} fired {} times", found.len());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let first = wait(&fresh, 1);
    assert_eq!(first[0].1, [acme.clone()], "the first firing takes both acme uploads in one job");
    let grouped_firings = wait(&grouped, 2);
    for (firing, inputs) in &grouped_firings {
        let mut inputs = inputs.clone();
        inputs.sort();
        assert_eq!(inputs, [acme.clone(), vec![beta.clone()]], "{firing}");
    }
    assert_eq!(command(addr, "schedule", &grouped, "pause", json!({})).0, 200);
    assert_eq!(wait(&labelled, 1)[0].1, [vec![q3.clone()]], "the labelled schedule takes the labelled upload");
    assert_eq!(command(addr, "schedule", &labelled, "pause", json!({})).0, 200);
    // A selector's labels are checked like a document's.
    let bad = json!({"cron": "* * * * * *", "time_zone": "UTC", "workflow": workflow,
        "target": {"selector": {"labels": {"bad key": "x"}}}, "strategy": "combined"});
    let (status, reply) = command(addr, "schedule", &uuid::Uuid::now_v7().to_string(), "create", bad);
    assert_eq!(status, 422, "{reply}");

    // A later upload is taken by the next firing, alone; the earlier ones by none again.
    let later = upload_as("acme", "a3.txt");
    let found = wait(&fresh, 2);
    assert_eq!(found.len(), 2, "no firing without new uploads: {:?}", found.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert_eq!(found[1].1, [vec![later.clone()]]);
    let (first_through, second_through) = (
        found[0].0["event"]["through_position"].as_u64().unwrap(),
        found[1].0["event"]["through_position"].as_u64().unwrap(),
    );
    assert!(first_through < second_through, "{first_through} {second_through}");
    // The jobs run: every job of the firings succeeds.
    for (firing, _) in found {
        for job in firing["event"]["jobs"].as_array().unwrap() {
            let state = wait_job(addr, job.as_str().unwrap(), |s| s["status"] != "running");
            assert_eq!(state["status"], "succeeded", "{state}");
        }
    }
    // The paused schedule's jobs are exactly those its firings recorded.
    let recorded: usize = [&grouped, &labelled]
        .into_iter()
        .flat_map(|schedule| firings(addr, schedule))
        .map(|(f, _)| f["event"]["jobs"].as_array().unwrap().len())
        .sum();
    let (_, jobs) = get(addr, &format!("/jobs?workflow={workflow}&limit=1000"));
    let all = jobs["items"].as_array().unwrap().len();
    let fresh_jobs = 2;
    assert_eq!(all, recorded + fresh_jobs, "{jobs}");
    serve.stop();
}

#[test]
fn one_agent_runs_over_a_document_without_a_workflow_as_a_one_off_job() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let input = upload_report(addr, dir.path(), "acme");

    let (ok, stdout, stderr) =
        weft(addr, &["agent", "run", "redact", "--document", &input, "--instruction", "Redact it.", "--wait"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("succeeded: request succeeded (attempt 1)"), "{stderr}");
    let Some(("request", output)) = stdout.trim().split_once('\t') else { panic!("{stdout}") };
    let out = dir.path().join("redacted.txt");
    let (ok, _, stderr) = weft(addr, &["document", "download", output, "--out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        REPORT.replace("ann.lee@example.com", "[email]").replace("+44 20 7946 0958", "[phone]")
    );
    // Recorded as a job like any other: its one step, on the one-off workflow at version 0, and the lineage.
    let one_off = weft_events::domain::ids::WorkflowId::ONE_OFF.to_string();
    let (_, jobs) = get(addr, &format!("/jobs?workflow={one_off}"));
    let [job] = jobs["items"].as_array().unwrap().as_slice() else { panic!("{jobs}") };
    assert_eq!((job["status"].as_str(), job["workflow_version"].as_u64()), (Some("succeeded"), Some(0)), "{job}");
    assert_eq!(job["tenant"], "acme", "{job}");
    let (_, item) = get(addr, &format!("/documents/{output}"));
    assert_eq!(item["parents"][0]["id"], json!(input), "{item}");

    // Bad requests: a typed rejection each, no job recorded.
    let step = json!({"name": "request", "agent": weft::agents::catalog::agent_id("redact"), "instruction": "x",
        "inputs": [{"from": "job_inputs"}], "timeout_ms": 1000,
        "retry": {"max_attempts": 1, "base_delay_ms": 10, "max_delay_ms": 10}});
    let mut second = step.clone();
    second["name"] = json!("again");
    for (version, steps, code) in [
        (0, json!([step, second]), "too_many_steps"),
        (0, json!([]), "no_steps"),
        (1, json!([step]), "unknown_workflow"),
    ] {
        let submit = json!({"workflow": one_off, "workflow_version": version, "steps": steps, "inputs": [input],
            "priority": 0, "idempotency_key": null});
        let (status, reply) = command(addr, "job", &uuid::Uuid::now_v7().to_string(), "submit", submit);
        assert_eq!(status, 422, "{reply}");
        assert!(reply.to_string().contains(code), "{code}: {reply}");
    }
    let (ok, _, stderr) = weft(addr, &["agent", "run", "no-such-agent", "--document", &input, "--instruction", "x"]);
    assert!(!ok && stderr.contains("no agent named \"no-such-agent\""), "{stderr}");
    let (ok, _, stderr) = weft(addr, &["agent", "run", "redact", "--document", &input]);
    assert!(!ok && stderr.contains("--instruction"), "{stderr}");
    let (_, jobs) = get(addr, &format!("/jobs?workflow={one_off}"));
    assert_eq!(jobs["items"].as_array().map(Vec::len), Some(1), "{jobs}");
    serve.stop();
}

#[test]
fn a_workflow_runs_at_the_version_named_and_lists_its_versions() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.as_str();
    let input = upload_report(addr, dir.path(), "default");
    let step = |name: &str| {
        json!({"name": name, "agent": weft::agents::catalog::agent_id(name), "instruction": format!("{name} it"),
            "inputs": [{"from": "job_inputs"}], "timeout_ms": 10_000,
            "retry": {"max_attempts": 1, "base_delay_ms": 10, "max_delay_ms": 10}})
    };
    let workflow = uuid::Uuid::now_v7().to_string();
    let (status, reply) =
        command(addr, "workflow", &workflow, "define", json!({"name": "tidy", "steps": [step("summarize")]}));
    assert_eq!(status, 200, "{reply}");
    let (status, reply) =
        command(addr, "workflow", &workflow, "redefine", json!({"name": "tidy", "steps": [step("redact")]}));
    assert_eq!(status, 200, "{reply}");

    let (ok, stdout, stderr) = weft(addr, &["workflow", "versions", "tidy", "--output", "json"]);
    assert!(ok, "{stderr}");
    let versions: Value = serde_json::from_str(&stdout).unwrap();
    let listed: Vec<(u64, &str)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["workflow_version"].as_u64().unwrap(), v["steps"][0]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [(1, "summarize"), (2, "redact")]);
    let (ok, stdout, stderr) = weft(addr, &["workflow", "versions", "tidy"]);
    assert!(ok && stdout.contains("summarize") && stdout.contains("redact"), "{stdout}{stderr}");

    // The version named runs, not the latest; without one, the latest.
    let (ok, stdout, stderr) =
        weft(addr, &["workflow", "run", "tidy", "--version", "1", "--document", &input, "--wait"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("summarize\t"), "{stdout}");
    let (ok, stdout, stderr) = weft(addr, &["job", "run", "tidy", "--document", &input, "--wait"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("redact\t"), "{stdout}");
    let (_, jobs) = get(addr, &format!("/jobs?workflow={workflow}"));
    let mut ran: Vec<u64> =
        jobs["items"].as_array().unwrap().iter().map(|j| j["workflow_version"].as_u64().unwrap()).collect();
    ran.sort();
    assert_eq!(ran, [1, 2], "{jobs}");

    // A version it never had: refused before anything is sent, and by the node when sent anyway.
    let (ok, _, stderr) = weft(addr, &["workflow", "run", "tidy", "--version", "3", "--document", &input]);
    assert!(!ok && stderr.contains("has no version 3"), "{stderr}");
    let submit = json!({"workflow": workflow, "workflow_version": 3, "inputs": [input], "priority": 0,
        "idempotency_key": null});
    let (status, reply) = command(addr, "job", &uuid::Uuid::now_v7().to_string(), "submit", submit);
    assert_eq!(status, 422, "{reply}");
    assert!(reply.to_string().contains("unknown_workflow"), "{reply}");
    let (ok, _, stderr) = weft(addr, &["workflow", "versions", "no-such-workflow"]);
    assert!(!ok && stderr.contains("no workflow named"), "{stderr}");

    // Archived: no new job runs it, it cannot be redefined, and the list says so; restored, it runs again.
    let (ok, _, stderr) = weft(addr, &["workflow", "archive", "tidy", "--reason", "replaced by tidy-2"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = weft(addr, &["workflow", "run", "tidy", "--document", &input]);
    assert!(!ok && stderr.contains("422 rejected") && stderr.contains("is archived"), "{stderr}");
    let submit = json!({"workflow": workflow, "workflow_version": 1, "inputs": [input], "priority": 0,
        "idempotency_key": null});
    let (status, reply) = command(addr, "job", &uuid::Uuid::now_v7().to_string(), "submit", submit.clone());
    assert_eq!(status, 422, "{reply}");
    assert!(reply.to_string().contains("workflow_archived"), "{reply}");
    let (status, reply) =
        command(addr, "workflow", &workflow, "redefine", json!({"name": "tidy", "steps": [step("keywords")]}));
    assert_eq!(status, 422, "{reply}");
    assert!(reply.to_string().contains("archived"), "{reply}");
    let (status, reply) = command(addr, "workflow", &workflow, "archive", json!({"reason": ""}));
    assert_eq!(status, 422, "{reply}");
    let (_, archived) = get(addr, "/workflows?status=archived");
    assert_eq!(archived["items"][0]["id"], json!(workflow), "{archived}");
    // A guest may read it but not restore it.
    let guest = crate::serve::bearer(dir.path(), "guest:gil", weft::auth::Role::Guest);
    let body = json!({"command_id": uuid::Uuid::now_v7(), "type": "restore", "payload": {}});
    let path = format!("/commands/workflow/{workflow}");
    let answer = crate::serve::http(addr, "POST", &path, &[("Authorization", &guest)], body.to_string().as_bytes());
    assert_eq!(answer.status, 403, "{}", answer.json());
    let (ok, _, stderr) = weft(addr, &["workflow", "restore", "tidy"]);
    assert!(ok, "{stderr}");
    let (status, reply) = command(addr, "job", &uuid::Uuid::now_v7().to_string(), "submit", submit);
    assert_eq!(status, 200, "{reply}");
    let (_, active) = get(addr, &format!("/workflows/{workflow}"));
    assert_eq!(active["status"], "active", "{active}");
    serve.stop();
}

#[test]
fn a_workflow_is_deleted_only_once_archived_and_run_by_no_job() {
    use crate::providers::{Answer, Fake, OPENAI_OK, answer};
    // The job's one call hangs: the job runs while the deletion is asked for.
    let hang = Answer { delay: std::time::Duration::from_secs(30), ..answer(200, OPENAI_OK) };
    let fake = Fake::start(vec![hang]);
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let addr = serve.addr.as_str();
    let document = upload(addr, dir.path());
    let job = openai_job(addr, &document, 1);
    let state = wait_job(addr, &job, |s| s["steps"][0]["status"] == "running");
    let workflow = state["workflow"].as_str().unwrap().to_owned();
    let code = |reply: &Value| reply["error"]["rejection"]["code"].as_str().map(str::to_owned);

    let delete = json!({"reason": "retired"});
    let (status, reply) = command(addr, "workflow", &workflow, "delete", delete.clone());
    assert_eq!((status, code(&reply).as_deref()), (422, Some("not_archived")), "{reply}");
    let (status, reply) = command(addr, "workflow", &workflow, "archive", json!({"reason": "retiring"}));
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = command(addr, "workflow", &workflow, "delete", delete.clone());
    assert_eq!((status, code(&reply).as_deref()), (422, Some("jobs_running")), "{reply}");
    assert_eq!(reply["error"]["rejection"]["detail"]["running"], 1, "{reply}");
    let (_, item) = get(addr, &format!("/workflows/{workflow}"));
    assert_eq!(item["status"], "archived", "nothing recorded: {item}");

    // Once the job has ended, the deletion goes through; a repeat records nothing.
    let (status, reply) = command(addr, "job", &job, "cancel", json!({"reason": "make way"}));
    assert_eq!(status, 200, "{reply}");
    wait_job(addr, &job, |s| s["status"] == "cancelled");
    let (ok, _, stderr) = weft(addr, &["workflow", "delete", &workflow, "--reason", "retired"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = weft(addr, &["workflow", "delete", &workflow, "--reason", "retired"]);
    assert!(ok, "{stderr}");
    let (_, deleted) = get(addr, "/workflows?status=deleted");
    assert_eq!(deleted["items"][0]["id"], json!(workflow), "{deleted}");

    // Deleted: it is never restored, redefined or run again, and triggers cannot take it.
    let (status, reply) = command(addr, "workflow", &workflow, "restore", json!({}));
    assert_eq!((status, code(&reply).as_deref()), (422, Some("deleted")), "{reply}");
    let submit = json!({"workflow": workflow, "workflow_version": 1, "inputs": [document], "priority": 0,
        "idempotency_key": null});
    let (status, reply) = command(addr, "job", &uuid::Uuid::now_v7().to_string(), "submit", submit);
    assert_eq!((status, code(&reply).as_deref()), (422, Some("unknown_workflow")), "{reply}");
    let trigger = json!({"workflow": workflow, "selector": {"content_type": "text/plain"}});
    let (status, reply) = command(addr, "trigger", &uuid::Uuid::now_v7().to_string(), "create", trigger);
    assert_eq!((status, code(&reply).as_deref()), (422, Some("unknown_workflow")), "{reply}");
    // Only a role that may send commands deletes one.
    let user = crate::serve::bearer(dir.path(), "ann", weft::auth::Role::User);
    let body = json!({"command_id": uuid::Uuid::now_v7(), "type": "delete", "payload": {"reason": "x"}});
    let path = format!("/commands/workflow/{workflow}");
    let answer = crate::serve::http(addr, "POST", &path, &[("Authorization", &user)], body.to_string().as_bytes());
    assert_eq!(answer.status, 403, "{}", answer.json());
    serve.stop();
}

#[test]
fn a_rerun_with_recorded_answers_calls_no_provider_and_writes_the_same_bytes() {
    use crate::providers::{Fake, OPENAI_OK, answer};
    let fake = Fake::start(vec![answer(200, OPENAI_OK), answer(200, OPENAI_OK), answer(200, OPENAI_OK)]);
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let addr = serve.addr.as_str();
    let document = upload(addr, dir.path());
    let job = openai_job(addr, &document, 1);
    let state = wait_job(addr, &job, |s| s["status"] != "running");
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(fake.seen().len(), 1);

    // The call is kept as a document of the job's tenant: the request and the answer.
    let (_, calls) = get(addr, &format!("/documents?label.weft.call.job={job}"));
    let calls = calls["items"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0]["owner"].as_str().unwrap().starts_with("agent:"), "{calls:?}");
    let call = calls[0]["id"].as_str().unwrap();
    let out = dir.path().join("call.json");
    let (ok, _, stderr) = weft(addr, &["document", "download", call, "--out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let recorded: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(recorded["request"]["input"], "Say hello.", "{recorded}");
    assert_eq!(recorded["answer"]["text"], "Hello there, how may I assist you today?", "{recorded}");

    // Run again from the recording: no provider call, the same bytes.
    let (ok, stdout, stderr) = weft(addr, &["job", "rerun", &job, "--recorded", "--wait"]);
    assert!(ok, "{stderr}");
    assert_eq!(fake.seen().len(), 1, "a recorded rerun asks no provider");
    let line = stdout.lines().last().unwrap();
    assert!(line.starts_with("ask\t") && line.ends_with("\tsame"), "{stdout}");

    // At a newer workflow version the request differs: the provider is asked, and the outputs compared.
    let workflow = state["workflow"].as_str().unwrap().to_owned();
    let (_, defined) = get(addr, &format!("/workflows/{workflow}"));
    let mut steps = defined["steps"].clone();
    steps[0]["instruction"] = json!("Answer briefly: {{input}}");
    let (status, reply) = command(addr, "workflow", &workflow, "redefine", json!({"name": "made-up", "steps": steps}));
    assert_eq!(status, 200, "{reply}");
    let (ok, stdout, stderr) = weft(addr, &["job", "rerun", &job, "--recorded", "--with-workflow", "2", "--wait"]);
    assert!(ok, "{stderr}");
    assert_eq!(fake.seen().len(), 2, "a changed request is asked of the provider");
    assert!(stdout.lines().last().unwrap().starts_with("ask\t"), "{stdout}");
    let (_, jobs) = get(addr, &format!("/jobs?workflow={workflow}"));
    let mut ran: Vec<u64> =
        jobs["items"].as_array().unwrap().iter().map(|j| j["workflow_version"].as_u64().unwrap()).collect();
    ran.sort();
    assert_eq!(ran, [1, 1, 2], "{jobs}");

    // A job that does not exist cannot be run again.
    let (ok, _, stderr) = weft(addr, &["job", "rerun", &uuid::Uuid::now_v7().to_string(), "--recorded"]);
    assert!(!ok && stderr.contains("no submission"), "{stderr}");
    serve.stop();
}
