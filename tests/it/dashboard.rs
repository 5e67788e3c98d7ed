//! The dashboard (`/ui`) in a real headless Chromium against a real `weft serve`: sign in, upload through the
//! page, run a workflow from its page and watch the job succeed without reloading, cancel a running job and
//! retry a dead-lettered one from their pages, page through 1,000 jobs, read a stream's events and an earlier
//! state; a guest sees no button that changes anything. Each test saves screenshots in
//! `target/screenshots/`. Who may open which page, and bad input, are checked over plain HTTP.

use std::time::Duration;

use serde_json::{Value, json};

use crate::agents::{openai_job, wait_job};
use crate::browser::Browser;
use crate::serve::{Serve, command, get, http, raw_http, weft};

const PASSWORD: &str = "a long password";

/// Adds user `name` with `role` and `tenants` (as the node's admin).
fn add_user(addr: &str, name: &str, role: &str, tenants: &[&str]) {
    let body = json!({"name": name, "role": role, "tenants": tenants, "password": PASSWORD});
    let headers = [("Content-Type", "application/json")];
    let answer = http(addr, "POST", "/auth/users", &headers, body.to_string().as_bytes());
    assert_eq!(answer.status, 201, "{}", answer.body);
}

/// The id of the workflow named `name`.
fn workflow_named(addr: &str, name: &str) -> String {
    let (_, found) = get(addr, &format!("/workflows?name={name}"));
    found["items"][0]["id"].as_str().unwrap_or_else(|| panic!("no workflow {name}: {found}")).to_owned()
}

/// Waits until the job page shows `status` (the badge in its facts).
async fn until_status(browser: &Browser, status: &str) {
    browser
        .until(
            &format!("the job shows {status}"),
            &format!("return document.querySelector('#job dl.facts .badge').textContent === {status:?}"),
        )
        .await;
}

/// Marks the page, so that a later check can tell it was never reloaded.
async fn mark(browser: &Browser) {
    browser.run("window.weftTestMark = 'same page'", vec![]).await;
}

async fn still_marked(browser: &Browser) {
    let mark = browser.run("return window.weftTestMark || null", vec![]).await;
    assert_eq!(mark, json!("same page"), "the page was reloaded");
}

/// Waits for the page's live feeds to be connected.
async fn until_live(browser: &Browser) {
    browser.until("the live feed connected", "return document.body.dataset.live === 'open'").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_uploads_from_the_page_runs_a_workflow_on_it_and_reads_its_job_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let addr = serve.addr.clone();
    // The built-in workflows are the `default` tenant's; Ann, a user, works in acme and may read those. She sees
    // the documents she owns and those her jobs wrote.
    add_user(&addr, "ann", "user", &["acme", "default"]);
    add_user(&addr, "gus", "guest", &["acme", "default"]);
    let browser = Browser::start(1280, 1000).await;

    // A page without a session goes to the login page, and back after signing in.
    browser.open(&format!("http://{addr}/ui/documents")).await;
    browser.find("form#login").await;
    browser.screenshot("dashboard-login").await;
    browser.sign_in(&addr, "/ui/documents", "ann", PASSWORD).await;

    // Upload through the page: straight to the signed URL, then the document's page.
    let file = dir.path().join("report.txt");
    let report = "Write to ann@example.com. Revenue rose 12% in the third quarter.\nCosts were flat.\n";
    std::fs::write(&file, report).unwrap();
    browser.find("#upload input[type=file]").await.send_keys(file.to_str().unwrap()).await.unwrap();
    browser.find("#upload input[name=labels]").await.send_keys("project=q3").await.unwrap();
    browser.find("#upload button").await.click().await.unwrap();
    browser
        .until(
            "the uploaded document's page",
            "return location.pathname.startsWith('/ui/documents/') && \
             document.querySelector('#document dl.facts .badge')?.textContent === 'uploaded'",
        )
        .await;
    browser.screenshot("dashboard-document-uploaded").await;
    let url = browser.client.current_url().await.unwrap();
    let document = url.path().rsplit('/').next().unwrap().to_owned();
    let (_, stored) = get(&addr, &format!("/documents/{document}"));
    assert_eq!((stored["name"].as_str(), stored["owner"].as_str()), (Some("report.txt"), Some("ann")), "{stored}");
    assert_eq!(stored["labels"], json!({"project": "q3"}));
    assert_eq!(stored["size_bytes"], report.len());

    // Run redact-then-summarize on it from the workflow's page.
    let workflow = workflow_named(&addr, "redact-then-summarize");
    browser.open(&format!("http://{addr}/ui/workflows/{workflow}?document={document}")).await;
    assert!(browser.text().await.contains("redact"), "the steps are listed");
    assert!(browser.has("figure.graph g[data-node=summarize]").await, "the DAG is drawn");
    browser.screenshot("dashboard-workflow").await;
    browser.find("#run button[type=submit]").await.click().await.unwrap();
    browser.until("the job's page", "return location.pathname.startsWith('/ui/jobs/')").await;
    mark(&browser).await;
    until_status(&browser, "succeeded").await;
    browser
        .until("the summary", "return !!document.querySelector('#steps tr[data-step=summarize] [data-field=output] a')")
        .await;
    still_marked(&browser).await;
    let job = browser.client.current_url().await.unwrap().path().rsplit('/').next().unwrap().to_owned();
    let summary = browser.find("#steps tr[data-step=summarize] [data-field=output] a").await;
    let href = summary.attr("href").await.unwrap().unwrap();
    let summary_id = href.trim_start_matches("/ui/documents/").to_owned();
    let (_, state) = get(&addr, &format!("/jobs/{job}"));
    assert_eq!(state["steps"][1]["output"], json!(summary_id), "{state}");
    assert!(browser.text().await.contains("wrote document"), "the log is shown");
    for step in ["redact", "summarize"] {
        let class = browser.find(&format!("g[data-node={step}]")).await.attr("class").await.unwrap();
        assert_eq!(class.as_deref(), Some("node s-succeeded"), "{step}");
    }
    browser.screenshot("dashboard-job-succeeded").await;

    // The summary's page: its lineage reaches back to the upload.
    summary.click().await.unwrap();
    browser.until("the summary's page", &format!("return location.pathname === '/ui/documents/{summary_id}'")).await;
    browser.find(&format!("figure.graph a[href='/ui/documents/{document}']")).await;
    browser.screenshot("dashboard-lineage").await;

    // The job's history: its events, and its state at version 1 (submitted, nothing run yet).
    browser.open(&format!("http://{addr}/ui/jobs/{job}")).await;
    browser.find("a[href^='/ui/streams/job-']").await.click().await.unwrap();
    browser.until("the job's events", "return document.querySelectorAll('#events tbody tr').length > 5").await;
    assert!(browser.text().await.contains("job.succeeded"), "{}", browser.text().await);
    browser.find("#events tbody tr[data-version='1'] a").await.click().await.unwrap();
    let state = browser.find("#state pre.json").await.text().await.unwrap();
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["status"], "Running", "{state}");
    browser.screenshot("dashboard-stream-state").await;

    // The live tail: a document's stream page shows a new event without reloading.
    browser.open(&format!("http://{addr}/ui/streams/document-{document}")).await;
    until_live(&browser).await;
    mark(&browser).await;
    let rows = browser.run("return document.querySelectorAll('#events tbody tr').length", vec![]).await;
    let label = json!({"set": {"stage": "final"}, "remove": []});
    assert_eq!(command(&addr, "document", &document, "label", label).0, 200);
    browser
        .until("the new event", &format!("return document.querySelectorAll('#events tbody tr').length > {rows}"))
        .await;
    let payloads =
        browser.run("return document.querySelector('#events tbody tr:last-child pre.json').textContent", vec![]).await;
    assert!(payloads.as_str().unwrap().contains("\"stage\": \"final\""), "the payload is decoded: {payloads}");
    still_marked(&browser).await;
    browser.screenshot("dashboard-stream-tail").await;

    // A guest sees the same job, and no button that changes anything, on any page.
    browser.find("#logout").await.click().await.unwrap();
    browser.find("form#login").await;
    browser.sign_in(&addr, &format!("/ui/jobs/{job}"), "gus", PASSWORD).await;
    for page in [
        "/ui",
        "/ui/jobs",
        "/ui/documents",
        &format!("/ui/documents/{document}"),
        &format!("/ui/jobs/{job}"),
        "/ui/agents",
        "/ui/workflows",
        &format!("/ui/workflows/{workflow}"),
        "/ui/schedules",
        &format!("/ui/streams/job-{job}"),
    ] {
        browser.open(&format!("http://{addr}{page}")).await;
        browser.find("main h1").await;
        let changes = browser.run("return document.querySelectorAll('main button:not(form.filters button), main form:not(.filters)').length", vec![]).await;
        assert_eq!(changes, json!(0), "{page} offers a guest something to change");
    }
    browser.open(&format!("http://{addr}/ui/jobs/{job}")).await;
    browser.screenshot("dashboard-guest-job").await;
    browser.open(&format!("http://{addr}/ui/projections")).await;
    assert!(browser.text().await.contains("may not open this page"));
    browser.close().await;
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_a_running_job_and_retries_a_dead_lettered_one_from_their_pages() {
    use crate::providers::{Answer, Fake, OPENAI_OK, answer};
    // The first call hangs (the job to cancel); then two attempts' worth of 503s (the provider tries each call
    // four times) dead-letter the second job, whose retry meets an answer.
    let hang = Answer { delay: Duration::from_secs(60), ..answer(200, OPENAI_OK) };
    let mut script = vec![hang];
    script.extend((0..8).map(|_| answer(503, r#"{"error":{"message":"busy"}}"#)));
    script.push(answer(200, OPENAI_OK));
    let fake = Fake::start(script);
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--openai-base-url", &fake.url]);
    let addr = serve.addr.clone();
    add_user(&addr, "olga", "operator", &["default"]);
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "Say hello.").unwrap();
    let (ok, stdout, stderr) = weft(&addr, &["document", "upload", input.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let document = stdout.trim().to_owned();
    let browser = Browser::start(1280, 900).await;
    browser.sign_in(&addr, "/ui/jobs", "olga", PASSWORD).await;

    // Cancel: the job waits on its provider; its page offers Cancel, not Retry.
    let running = openai_job(&addr, &document, 3);
    wait_job(&addr, &running, |s| s["steps"][0]["status"] == "running");
    browser.open(&format!("http://{addr}/ui/jobs/{running}")).await;
    until_live(&browser).await;
    mark(&browser).await;
    assert!(browser.find("button[data-type=retry]").await.attr("hidden").await.unwrap().is_some());
    browser.find("button[data-type=cancel]:not([hidden])").await.click().await.unwrap();
    browser.client.accept_alert().await.unwrap();
    until_status(&browser, "cancelled").await;
    browser.until("cancel hidden", "return document.querySelector('button[data-type=cancel]').hidden").await;
    still_marked(&browser).await;
    browser.screenshot("dashboard-job-cancelled").await;
    assert_eq!(wait_job(&addr, &running, |_| true)["status"], "cancelled");

    // Retry: the job dead-letters; its page offers Retry; after it the job runs again and succeeds, live.
    let failing = openai_job(&addr, &document, 2);
    wait_job(&addr, &failing, |s| s["status"] == "dead_lettered");
    browser.open(&format!("http://{addr}/ui/jobs/{failing}")).await;
    until_live(&browser).await;
    mark(&browser).await;
    assert!(browser.text().await.contains("openai answered 503: busy"), "the error is shown");
    browser.screenshot("dashboard-job-dead-lettered").await;
    browser.find("button[data-type=retry]:not([hidden])").await.click().await.unwrap();
    until_status(&browser, "succeeded").await;
    browser
        .until("the output", "return !!document.querySelector('#steps tr[data-step=ask] [data-field=output] a')")
        .await;
    let attempts = browser.find("#steps tr[data-step=ask] [data-field=attempts]").await.text().await.unwrap();
    assert_eq!(attempts, "3");
    still_marked(&browser).await;
    browser.screenshot("dashboard-job-retried").await;

    // A schedule: paused and resumed from its page.
    let schedule = uuid::Uuid::now_v7().to_string();
    let create = json!({"cron": "0 0 0 1 1 *", "time_zone": "UTC", "workflow": workflow_named(&addr, "summarize"),
        "target": {"documents": [document]}, "strategy": "per_document"});
    assert_eq!(command(&addr, "schedule", &schedule, "create", create).0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while get(&addr, &format!("/schedules/{schedule}")).0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the schedule never showed");
        std::thread::sleep(Duration::from_millis(20));
    }
    browser.open(&format!("http://{addr}/ui/schedules")).await;
    let row = format!("#schedules tr[data-id='{schedule}']");
    assert!(browser.text().await.contains("-01-01 00:00:00"), "the next firing is shown");
    browser.find(&format!("{row} button[data-type=pause]")).await.click().await.unwrap();
    browser
        .until("paused", &format!("return document.querySelector(\"{row} .badge\")?.textContent === 'paused'"))
        .await;
    browser.screenshot("dashboard-schedule-paused").await;
    browser.find(&format!("{row} button[data-type=resume]")).await.click().await.unwrap();
    browser
        .until("resumed", &format!("return document.querySelector(\"{row} .badge\")?.textContent === 'active'"))
        .await;
    assert_eq!(get(&addr, &format!("/schedules/{schedule}")).1["status"], "active");
    browser.close().await;
    serve.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_page_newest_first_and_the_pages_fit_a_phone() {
    let dir = tempfile::tempdir().unwrap();
    // No process managers: the jobs stay as submitted; no rate limit on the admin's thousand submissions.
    let serve = Serve::start(dir.path(), &["--no-processes", "--rate-limit-identity", "0", "--rate-limit-tenant", "0"]);
    let addr = serve.addr.clone();
    add_user(&addr, "root", "admin", &["*"]);
    let workflow = uuid::Uuid::now_v7().to_string();
    let step = json!([{"name": "only", "agent": uuid::Uuid::now_v7().to_string(), "instruction": "x",
        "inputs": [{"from": "job_inputs"}], "timeout_ms": 1000, "retry": {"max_attempts": 1, "base_delay_ms": 1, "max_delay_ms": 1}}]);
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "Say hello.").unwrap();
    let (ok, stdout, stderr) = weft(&addr, &["document", "upload", input.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let document = stdout.trim().to_owned();
    let first = uuid::Uuid::now_v7().to_string();
    let submit =
        json!({"workflow": workflow, "workflow_version": 1, "inputs": [document], "priority": 0, "steps": step});
    assert_eq!(crate::serve::submit_job(&addr, &first, submit).0, 200);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (addr, workflow, document) = (addr.clone(), workflow.clone(), document.clone());
            std::thread::spawn(move || {
                for _ in 0..(999 / 4 + 1) {
                    let payload =
                        json!({"workflow": workflow, "workflow_version": 1, "inputs": [document], "priority": 0});
                    let (status, reply) = command(&addr, "job", &uuid::Uuid::now_v7().to_string(), "submit", payload);
                    assert_eq!(status, 200, "{reply}");
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let total = 1 + 4 * (999 / 4 + 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while get(&addr, "/jobs?limit=1000&cursor=00000000-0000-0000-0000-000000000000").1["items"]
        .as_array()
        .map_or(0, Vec::len)
        < 1000
    {
        assert!(std::time::Instant::now() < deadline, "the jobs never all showed");
        std::thread::sleep(Duration::from_millis(50));
    }

    let browser = Browser::start(1280, 900).await;
    browser.sign_in(&addr, "/ui/jobs", "root", PASSWORD).await;
    browser.screenshot("dashboard-jobs-page-1").await;
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let ids = browser
            .run("return Array.from(document.querySelectorAll('#jobs tbody tr'), r => r.dataset.id)", vec![])
            .await;
        let ids: Vec<String> = serde_json::from_value(ids).unwrap();
        assert!(ids.len() <= 50, "a page has fifty rows at most");
        seen.extend(ids);
        pages += 1;
        if !browser.has("a[rel=next]").await {
            break;
        }
        browser.find("a[rel=next]").await.click().await.unwrap();
        browser.find("#jobs").await;
    }
    browser.screenshot("dashboard-jobs-last-page").await;
    assert_eq!(seen.len(), total, "every job once");
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    newest_first.dedup();
    assert_eq!(seen, newest_first, "newest first, none twice");
    assert_eq!(pages, total.div_ceil(50));
    assert_eq!(seen.last(), Some(&first));

    // A projection rebuilt from its page, with its progress.
    browser.open(&format!("http://{addr}/ui/projections")).await;
    browser.find("button[data-rebuild=jobs]").await.click().await.unwrap();
    browser.client.accept_alert().await.unwrap();
    browser.until("rebuilt", "return document.getElementById('notice').textContent.startsWith('jobs rebuilt')").await;
    let progress =
        browser.run("return document.querySelector('tr[data-projection=jobs] progress').value", vec![]).await;
    assert_eq!(progress, json!(100));
    browser.screenshot("dashboard-projection-rebuilt").await;

    // A phone's width: the page does not scroll sideways (wide tables scroll inside themselves).
    browser.client.set_window_size(390, 844).await.unwrap();
    for page in ["/ui", "/ui/jobs", &format!("/ui/jobs/{first}"), "/ui/documents", "/ui/projections"] {
        browser.open(&format!("http://{addr}{page}")).await;
        browser.find("main h1").await;
        let wide = browser.run("return document.documentElement.scrollWidth - window.innerWidth", vec![]).await;
        assert!(wide.as_i64().unwrap() <= 0, "{page} is {wide} px wider than a phone");
    }
    browser.open(&format!("http://{addr}/ui/jobs")).await;
    browser.screenshot("dashboard-jobs-phone").await;
    browser.close().await;
    serve.stop();
}

/// A cookie header of a session of `user`.
fn session(addr: &str, user: &str) -> String {
    let body = json!({"user": user, "password": PASSWORD}).to_string();
    let answer = raw_http(addr, "POST", "/auth/session", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.body);
    let cookie = answer.headers.iter().find(|(n, _)| n == "set-cookie").map(|(_, v)| v.clone()).unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

#[test]
fn each_page_lets_in_only_the_roles_its_rule_names_and_bad_input_gets_an_error_page() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--no-processes"]);
    let addr = serve.addr.clone();
    for (name, role) in [("root", "admin"), ("olga", "operator"), ("ann", "user"), ("gus", "guest")] {
        add_user(&addr, name, role, &["default"]);
    }
    let users = [
        ("root", weft::auth::Role::Admin),
        ("olga", weft::auth::Role::Operator),
        ("ann", weft::auth::Role::User),
        ("gus", weft::auth::Role::Guest),
    ];
    let sessions: Vec<(&str, weft::auth::Role, String)> =
        users.iter().map(|(user, role)| (*user, *role, session(&addr, user))).collect();
    let job = uuid::Uuid::now_v7().to_string();
    let concrete = |page: &str| page.replace("{id}", &job).replace("{stream}", &format!("job-{job}"));
    for (page, permission) in weft::http::ui::PAGES {
        let url = concrete(page);
        // No session, or a forged one: to the login page, and back after it.
        for cookie in [None, Some("weft_session=forged")] {
            let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
            let answer = raw_http(&addr, "GET", &url, &headers, b"");
            assert_eq!(answer.status, 303, "{page}: {answer:?}");
            let location = answer.headers.iter().find(|(n, _)| n == "location").unwrap().1.clone();
            assert!(location.starts_with("/ui/login?next=%2Fui"), "{location}");
        }
        for (user, role, cookie) in &sessions {
            let answer = raw_http(&addr, "GET", &url, &[("Cookie", cookie)], b"");
            if role.may(*permission) {
                // 404 for the made-up job: the page answers, in HTML.
                assert!(matches!(answer.status, 200 | 404), "{page} as {user}: {answer:?}");
            } else {
                assert_eq!(answer.status, 403, "{page} let {user} in");
            }
            let kind = answer.headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.as_str());
            if answer.status != 303 {
                assert_eq!(kind, Some("text/html; charset=utf-8"), "{page}");
            }
        }
    }
    // Every page carries a policy that allows its own script and style only.
    let cookie = sessions[0].2.clone();
    let answer = raw_http(&addr, "GET", "/ui", &[("Cookie", &cookie)], b"");
    let policy = answer.headers.iter().find(|(n, _)| n == "content-security-policy").unwrap().1.clone();
    assert!(policy.contains("script-src 'sha256-") && policy.contains("default-src 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");

    // Bad input: a typed error page, and the node goes on.
    for (path, status) in [
        ("/ui/jobs/not-an-id", 400),
        ("/ui/documents/../../etc/passwd", 404),
        ("/ui/jobs?cursor=garbage", 400),
        ("/ui/documents?labels=%3D%3D%3D", 400),
        ("/ui/streams/job-1?at=minus", 400),
        ("/ui/streams/%00", 400),
        (&format!("/ui/streams/job-{job}"), 404),
        ("/ui/workflows/00000000-0000-0000-0000-000000000000", 404),
        ("/ui/login?next=https://evil.example", 200),
        ("/ui/login?next=//evil.example/x", 200),
        ("/ui/login?next=/%5Cevil.example", 200),
        ("/ui/streams?stream=job-1%2F..", 303),
        // The JSON API's parameters that came with the dashboard.
        ("/jobs?order=sideways", 400),
        ("/jobs/live?cursor=minus", 400),
        (&format!("/jobs/{job}/live?cursor=minus"), 400),
    ] {
        let answer = raw_http(&addr, "GET", path, &[("Cookie", &cookie)], b"");
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert!(!answer.body.contains("evil.example"), "{path} sends to another site");
    }
    assert_eq!(raw_http(&addr, "GET", "/healthz", &[], b"").status, 200);
    // The root goes to the dashboard.
    let root = raw_http(&addr, "GET", "/", &[], b"");
    assert_eq!(root.status, 303);
    serve.stop();
}
