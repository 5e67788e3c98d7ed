//! The query API of a real `weft serve` process on a free port: every route, read-your-writes with `?after=`,
//! ETags, lists paged over 10,000 documents while more arrive, live updates of a job, the same reads over NATS,
//! and bad input on every route answered with a JSON error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::bus::nats::NatsBus;
use weft::bus::{Bus, CONTENT_TYPE, JSON, Message};
use weft::nats;
use weft_events::domain::ids::Uuid;
use weft_harness::NatsServer;

use crate::serve::{Serve, command, get, http, register, submit_job};

/// A one-step job's `submit` payload for `agent` over `input`.
pub fn one_step_job(agent: &str, input: &str) -> Value {
    let step = json!({"name": "extract", "agent": agent, "instruction": "extract it",
        "inputs": [{"from": "job_inputs"}], "timeout_ms": 5000,
        "retry": {"max_attempts": 3, "base_delay_ms": 10, "max_delay_ms": 100}});
    json!({"workflow": Uuid::now_v7().to_string(), "workflow_version": 1, "steps": [step], "inputs": [input],
           "priority": 0})
}

/// Drives a submitted one-step job through a failed attempt, a retry and a success, with a log line; returns
/// the last reply.
pub fn drive_job(addr: &str, job: &str) -> Value {
    let output = Uuid::now_v7().to_string();
    let mut last = Value::Null;
    for (kind, payload) in [
        ("start_step", json!({"step": "extract", "attempt": 1})),
        ("fail_step", json!({"step": "extract", "attempt": 1, "error": "boom", "retryable": true, "jitter": 0.5})),
        ("retry_due", json!({"step": "extract", "attempt": 2})),
        ("start_step", json!({"step": "extract", "attempt": 2})),
        ("append_log", json!({"level": "info", "message": "read 3 pages"})),
        ("complete_step", json!({"step": "extract", "attempt": 2, "output": output})),
    ] {
        if kind == "retry_due" {
            // The retry policy's longest delay is 100 ms.
            std::thread::sleep(Duration::from_millis(150));
        }
        let (status, reply) = command(addr, "job", job, kind, payload);
        assert_eq!(status, 200, "{kind}: {reply}");
        last = reply;
    }
    last
}

async fn ask(bus: &NatsBus, token: &str, subject: &str, body: &str) -> Value {
    let mut message = Message::new(subject.to_owned(), body.to_owned());
    message.headers.insert(CONTENT_TYPE.into(), JSON.into());
    message.headers.insert("Authorization".into(), format!("Bearer {token}"));
    let reply = bus.request(message, Duration::from_secs(10)).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_over_http_and_nats_and_bad_input_gets_json_errors() {
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Serve::start(dir.path(), &["--nats", &server.url(), "--no-processes", "--max-body-bytes", "4096"]);
    let addr = node.addr.clone();
    let (document, job, agent) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string(), Uuid::now_v7());

    let (addr2, document2, job2) = (addr.clone(), document.clone(), job.clone());
    let position = tokio::task::spawn_blocking(move || {
        let (addr, document, job) = (addr2, document2, job2);
        let (status, reply) = command(&addr, "document", &document, "register", register("a.pdf", "acme"));
        assert_eq!(status, 200, "{reply}");
        let position = reply["last_position"].as_u64().unwrap();
        let (status, found) = get(&addr, &format!("/documents/{document}?after={position}"));
        assert_eq!(status, 200, "{found}");
        assert_eq!((found["status"].as_str(), found["name"].as_str()), (Some("registered"), Some("a.pdf")));
        assert_eq!((&found["parents"], &found["derivatives"]), (&json!([]), &json!([])));

        // ETag: the same answer has the same tag, and naming it answers 304 without a body.
        let first = http(&addr, "GET", &format!("/documents/{document}"), &[], b"");
        let tag = first.header("etag").unwrap().to_owned();
        let again = http(&addr, "GET", &format!("/documents/{document}"), &[("If-None-Match", &tag)], b"");
        assert_eq!((again.status, again.body.as_str()), (304, ""));
        let other = http(&addr, "GET", &format!("/documents/{document}"), &[("If-None-Match", "\"x\"")], b"");
        assert_eq!(other.status, 200);

        let (status, reply) = submit_job(&addr, &job, one_step_job(&agent.to_string(), &document));
        assert_eq!(status, 200, "{reply}");
        let reply = drive_job(&addr, &job);
        let position = reply["last_position"].as_u64().unwrap();
        let (status, found) = get(&addr, &format!("/jobs/{job}?after={position}"));
        assert_eq!(status, 200, "{found}");
        assert_eq!((found["status"].as_str(), found["progress"].as_f64()), (Some("succeeded"), Some(1.0)));
        assert_eq!(
            (found["steps"][0]["status"].as_str(), found["steps"][0]["attempts"].as_u64()),
            (Some("succeeded"), Some(2))
        );
        let (status, logs) = get(&addr, &format!("/jobs/{job}/logs"));
        assert_eq!(status, 200, "{logs}");
        assert_eq!(logs["items"][0]["message"], "read 3 pages");
        let (_, history) = get(&addr, &format!("/streams/job-{job}/events?after={position}"));
        let types: Vec<&str> =
            history["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "job.submitted",
                "job.step_scheduled",
                "job.step_started",
                "job.step_failed",
                "job.retry_scheduled",
                "job.step_scheduled",
                "job.step_started",
                "job.log_appended",
                "job.step_succeeded",
                "job.succeeded"
            ]
        );
        assert_eq!(history["items"][0]["event"]["inputs"], json!([document]));
        let (_, page) = get(&addr, &format!("/streams/job-{job}/events?cursor=8&limit=1"));
        assert_eq!((page["items"][0]["version"].as_u64(), page["next_cursor"].as_u64()), (Some(9), Some(9)));

        // Lists and their filters.
        for (path, expected) in [
            ("/documents?tenant=acme".to_owned(), 1),
            ("/documents?tenant=acme&status=uploaded".to_owned(), 0),
            ("/documents?owner=ann&since=0&until=99999999999999999".to_owned(), 1),
            ("/documents?until=0".to_owned(), 0),
            ("/jobs?status=succeeded".to_owned(), 1),
            (format!("/jobs?workflow={}", Uuid::now_v7()), 0),
        ] {
            let (status, page) = get(&addr, &path);
            assert_eq!((status, page["items"].as_array().map(Vec::len)), (200, Some(expected)), "{path}: {page}");
        }
        let (status, ready) = get(&addr, "/readyz");
        assert_eq!(status, 200);
        for name in ["documents", "jobs", "history"] {
            assert!(ready["projections"][name]["position"].as_u64().unwrap() >= position, "{ready}");
            assert!(ready["projections"][name]["lag_seconds"].is_number(), "{ready}");
        }
        assert!(ready["head"].as_u64().unwrap() >= position, "{ready}");
        assert_eq!(get(&addr, "/healthz").0, 200);

        // Every answer is as /openapi.json describes it.
        let (_, spec) = get(&addr, "/openapi.json");
        let workflow = get(&addr, &format!("/jobs/{job}")).1["workflow"].as_str().unwrap().to_owned();
        for (template, path) in [
            ("/documents", "/documents".to_owned()),
            ("/documents/{id}", format!("/documents/{document}")),
            ("/jobs", "/jobs".to_owned()),
            ("/jobs/{id}", format!("/jobs/{job}")),
            ("/jobs/{id}/logs", format!("/jobs/{job}/logs")),
            ("/workflows", "/workflows".to_owned()),
            ("/workflows/{id}", format!("/workflows/{workflow}")),
            ("/agents", "/agents".to_owned()),
            ("/schedules", "/schedules".to_owned()),
            ("/streams/{stream}/events", format!("/streams/job-{job}/events")),
            ("/readyz", "/readyz".to_owned()),
            ("/healthz", "/healthz".to_owned()),
        ] {
            let (status, body) = get(&addr, &path);
            crate::openapi::check(&spec, "get", template, status, &body);
        }
        let (status, reply) =
            command(&addr, "document", &Uuid::now_v7().to_string(), "register", register("b.pdf", "acme"));
        crate::openapi::check(&spec, "post", "/commands/{aggregate}/{id}", status, &reply);

        // Rebuilds: each read model is rebuilt from the log and swapped in, and reads the same afterwards.
        let before = get(&addr, &format!("/jobs/{job}")).1;
        for name in ["documents", "jobs", "agents", "workflows", "schedules", "history"] {
            let response = http(&addr, "POST", &format!("/projections/{name}/rebuild"), &[], b"");
            assert_eq!(response.status, 200, "{name}: {response:?}");
            assert!(response.json()["position"].as_u64().unwrap() >= position, "{name}: {response:?}");
        }
        assert_eq!(get(&addr, &format!("/jobs/{job}")).1, before);
        let (_, page) = get(&addr, &format!("/streams/job-{job}/events"));
        assert_eq!(page["items"].as_array().unwrap().len(), 10, "{page}");
        let response = http(&addr, "POST", "/projections/planets/rebuild", &[], b"");
        assert_eq!((response.status, response.json()["error"]["kind"].as_str()), (404, Some("not_found")));

        // Bad input, route by route: typed JSON errors.
        let unknown = Uuid::now_v7();
        for (path, expected) in [
            (format!("/documents/{unknown}"), 404),
            (format!("/jobs/{unknown}"), 404),
            (format!("/jobs/{unknown}/logs"), 404),
            (format!("/jobs/{unknown}/live"), 404),
            (format!("/streams/job-{unknown}/events"), 404),
            ("/streams/a%20b/events".to_owned(), 400),
            ("/documents/not-a-uuid".to_owned(), 400),
            ("/jobs/not-a-uuid/live".to_owned(), 400),
            (format!("/documents/{document}?after=soon"), 400),
            (format!("/documents/{document}?colour=red"), 400),
            ("/documents?limit=0".to_owned(), 400),
            ("/documents?limit=1001".to_owned(), 400),
            ("/documents?cursor=page-2".to_owned(), 400),
            ("/documents?since=yesterday".to_owned(), 400),
            ("/jobs?provider=builtin".to_owned(), 400),
            (format!("/jobs/{job}/logs?cursor=-x"), 400),
            ("/nowhere".to_owned(), 404),
            // A position the read model will not reach in time: 504, not a stale answer.
            (format!("/documents/{document}?after={}", position + 1000), 504),
        ] {
            let (status, body) = get(&addr, &path);
            assert_eq!(status, expected, "{path}: {body}");
            assert!(body["error"]["kind"].is_string() && body["error"]["message"].is_string(), "{path}: {body}");
        }
        let live = http(&addr, "GET", &format!("/jobs/{job}/live"), &[("Last-Event-ID", "x")], b"");
        assert_eq!(live.status, 400, "{live:?}");
        let id = Uuid::now_v7();
        for (path, body, expected, kind) in [
            (format!("/commands/document/{id}"), b"{not json".to_vec(), 400, "invalid"),
            (format!("/commands/document/{id}"), b"{\"command_id\": 1}".to_vec(), 400, "invalid"),
            (format!("/commands/document/{id}"), vec![b' '; 5000], 413, "too_large"),
            (format!("/commands/planet/{id}"), b"{}".to_vec(), 404, "not_found"),
            ("/commands/document/42".to_owned(), b"{}".to_vec(), 400, "invalid"),
        ] {
            let response = http(&addr, "POST", &path, &[], &body);
            assert_eq!(response.status, expected, "{path}: {response:?}");
            assert_eq!(response.json()["error"]["kind"], kind, "{path}: {response:?}");
        }
        // The aggregate's refusal is 422 with its reason; a command sent twice is answered as the first.
        let (status, reply) = command(&addr, "document", &document, "register", register("a.pdf", "acme"));
        assert_eq!((status, reply["error"]["kind"].as_str()), (422, Some("rejected")), "{reply}");
        position
    })
    .await
    .unwrap();

    // The same reads over NATS.
    let bus = NatsBus::new(nats::connect(&server.url(), "client").await.unwrap());
    let token = crate::support::admin_token(dir.path());
    let over_nats = ask(&bus, &token, "weft.qry.jobs.get", &json!({"id": job, "after": position}).to_string()).await;
    let (addr2, job2) = (addr.clone(), job.clone());
    let over_http = tokio::task::spawn_blocking(move || get(&addr2, &format!("/jobs/{job2}")).1).await.unwrap();
    assert_eq!(over_nats, over_http);
    let page = ask(&bus, &token, "weft.qry.documents.list", r#"{"tenant": "acme", "limit": 10}"#).await;
    assert_eq!(page["items"][0]["id"], json!(document));
    // Lists filter on labels over NATS as over HTTP.
    let (addr2, document2) = (addr.clone(), document.clone());
    let labelled = tokio::task::spawn_blocking(move || {
        command(&addr2, "document", &document2, "label", json!({"set": {"project": "q3"}}))
    })
    .await
    .unwrap();
    assert_eq!(labelled.0, 200, "{}", labelled.1);
    let after = labelled.1["last_position"].as_u64().unwrap();
    for (label, found) in [("q3", 1), ("q4", 0)] {
        let query = json!({"tenant": "acme", "label.project": label, "after": after}).to_string();
        let page = ask(&bus, &token, "weft.qry.documents.list", &query).await;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(found), "{label}: {page}");
    }
    assert_eq!(
        ask(&bus, &token, "weft.qry.jobs.logs", &json!({"id": job}).to_string()).await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let history =
        ask(&bus, &token, "weft.qry.streams.events", &json!({"stream": format!("document-{document}")}).to_string())
            .await;
    assert_eq!(history["items"][0]["type"], "document.registered");
    assert!(ask(&bus, &token, "weft.qry.status.lag", "").await["head"].as_u64().is_some());
    let ready = ask(&bus, &token, "weft.qry.status.ready", "").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["tasks"]["projection jobs"]["state"], "running", "{ready}");
    assert_eq!(ask(&bus, &token, "weft.qry.status.ready", "[1]").await["error"]["kind"], "invalid");
    for (subject, body, kind) in [
        ("weft.qry.jobs.get", "{}", "invalid"),
        ("weft.qry.jobs.get", "[]", "invalid"),
        ("weft.qry.jobs.get", r#"{"id": "x"}"#, "invalid"),
        ("weft.qry.jobs.get", &*json!({"id": Uuid::now_v7()}).to_string(), "not_found"),
        ("weft.qry.jobs.list", r#"{"limit": {"a": 1}}"#, "invalid"),
        ("weft.qry.jobs.list", r#"{"label.project": "q3"}"#, "invalid"),
        ("weft.qry.documents.list", r#"{"label.bad key": "q3"}"#, "invalid"),
        ("weft.qry.planets.list", "{}", "not_found"),
        ("weft.qry.jobs.delete", "{}", "not_found"),
    ] {
        let answer = ask(&bus, &token, subject, body).await;
        assert_eq!(answer["error"]["kind"], kind, "{subject} {body}: {answer}");
    }

    // The OpenAPI document names exactly the routes served, and each answers (no "no such route").
    let addr2 = addr.clone();
    tokio::task::spawn_blocking(move || {
        let (status, document) = get(&addr2, "/openapi.json");
        assert_eq!((status, document["openapi"].as_str()), (200, Some("3.1.0")));
        // It is an OpenAPI 3.1 document by a parser of that specification, not only by our reading of it.
        let spec = oas3::from_json(document.to_string()).expect("the document is OpenAPI 3.1");
        let mut broken = document.clone();
        broken["paths"]["/healthz"]["get"]["responses"]["200"] = json!(42);
        assert!(oas3::from_json(broken.to_string()).is_err(), "the parser checks what it reads");
        assert_eq!(spec.paths.as_ref().map(|p| p.len()), document["paths"].as_object().map(|p| p.len()));
        let paths = document["paths"].as_object().unwrap();
        let documented: BTreeSet<String> = paths
            .iter()
            .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| format!("{m} {p}")))
            .collect();
        let routes: BTreeSet<String> = weft::http::openapi::ROUTES.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
        assert_eq!(documented, routes);
        for (_, operations) in paths {
            for (_, operation) in operations.as_object().unwrap() {
                assert!(operation["responses"]["200"].is_object(), "{operation}");
            }
        }
        for (method, path, _) in weft::http::openapi::ROUTES {
            let path = path
                .replace("{id}", &Uuid::now_v7().to_string())
                .replace("{tenant}", "nobody")
                .replace("{stream}", "x-1")
                .replace("{aggregate}", "job");
            let response = http(&addr2, &method.to_uppercase(), &format!("{path}?limit=1"), &[], b"{}");
            assert!(!response.body.contains("no such route"), "{method} {path}: {response:?}");
        }
    })
    .await
    .unwrap();

    let (status, rest) = node.terminate();
    assert!(status.success(), "{status}: {rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_over_ten_thousand_documents_without_loss_or_repetition_while_more_arrive() {
    const DOCUMENTS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    // The documents are written to the store before the node starts, so the projections catch up on them.
    let ids: BTreeSet<String> = {
        use weft::store::sqlite::{Options, SqliteStore};
        use weft_events::domain::DomainEvent;
        use weft_events::domain::document::{Event, Registered};
        use weft_events::{EventWrite, ExpectedVersion};
        let store = SqliteStore::open(Options::new(dir.path().join("events.db"))).unwrap();
        let mut ids = BTreeSet::new();
        let mut appends = Vec::new();
        for i in 0..DOCUMENTS {
            // Random ids: documents added later land all over the id order, before and after the cursor.
            let id = weft_events::domain::ids::DocumentId(uuid::Builder::from_random_bytes(rand::random()).into_uuid());
            ids.insert(id.0.to_string());
            let event = Event::Registered(Registered {
                name: format!("{i}.pdf"),
                content_type: "application/pdf".into(),
                declared_size_bytes: 1,
                tenant: "acme".into(),
                owner: "ann".into(),
                labels: Default::default(),
                at: weft_events::envelope::Timestamp(i as i64),
            });
            let store = store.clone();
            appends.push(async move {
                store
                    .append(&id.stream(), ExpectedVersion::NoStream, vec![event.to_new_event().unwrap()])
                    .await
                    .unwrap()
            });
        }
        futures::future::join_all(appends).await;
        store.close().await.unwrap();
        ids
    };
    let node = Serve::start(dir.path(), &[]);
    let addr = node.addr.clone();
    tokio::task::spawn_blocking(move || {
        let (status, _) = get(&addr, &format!("/documents?after={DOCUMENTS}&limit=1"));
        assert_eq!(status, 200);
        for limit in [1000, 333] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            let mut added = 0;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/documents?tenant=acme&limit={limit}&cursor={c}"),
                    None => format!("/documents?tenant=acme&limit={limit}"),
                };
                let (status, page) = get(&addr, &path);
                assert_eq!(status, 200, "{page}");
                let items = page["items"].as_array().unwrap();
                assert!(items.len() <= limit);
                seen.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_owned()));
                // Between pages, more documents arrive.
                for _ in 0..3 {
                    let (status, reply) = command(
                        &addr,
                        "document",
                        &uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string(),
                        "register",
                        register("new.pdf", "acme"),
                    );
                    assert_eq!(status, 200, "{reply}");
                    added += 1;
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            let unique: BTreeSet<&String> = seen.iter().collect();
            assert_eq!(unique.len(), seen.len(), "an item was repeated");
            let mut sorted = seen.clone();
            sorted.sort();
            assert_eq!(sorted, seen, "pages are in id order");
            let seen: BTreeSet<String> = seen.into_iter().collect();
            assert!(ids.is_subset(&seen), "{} documents were lost", ids.difference(&seen).count());
            assert!(seen.len() <= ids.len() + added + 10_000);
        }

        // A reset: until the model has applied the log again, its reads answer 503, never a wrong 404 or a
        // short list; a second reset or rebuild meanwhile is refused, not queued.
        let known = ids.iter().next().unwrap().clone();
        let (_, before) = get(&addr, "/documents?tenant=acme&limit=1000");
        let full = before["items"].as_array().unwrap().len();
        let reset = http(&addr, "POST", "/projections/documents/reset", &[], b"");
        assert_eq!(reset.status, 200, "{reset:?}");
        let again = http(&addr, "POST", "/projections/documents/rebuild", &[], b"");
        assert!(again.status == 409 || again.status == 200, "{again:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, item) = get(&addr, &format!("/documents/{known}"));
            let (list_status, page) = get(&addr, "/documents?tenant=acme&limit=1000");
            assert!(status == 200 || status == 503, "a document read {status} during a reset: {item}");
            assert!(list_status == 200 || list_status == 503, "{page}");
            if list_status == 200 {
                assert_eq!(page["items"].as_array().unwrap().len(), full, "a short list during a reset");
            }
            if status == 503 {
                assert_eq!(item["error"]["kind"], "unavailable", "{item}");
            }
            if status == 200 && list_status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "the reset never finished");
        }
        if again.status == 409 {
            assert_eq!(again.json()["error"]["kind"], "conflict");
        }
    })
    .await
    .unwrap();
    let (status, rest) = node.terminate();
    assert!(status.success(), "{status}: {rest}");
}

/// Reads server-sent events (over HTTP/1.0, so not chunked) until `until` says stop; returns them as
/// (event, id, data).
fn read_events(
    addr: &str,
    path: &str,
    last_event_id: Option<&str>,
    until: impl Fn(&str, &Value) -> bool,
) -> Vec<(String, Option<u64>, Value)> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    let bearer = crate::serve::token(addr).map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{resume}{bearer}\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    let mut events = Vec::new();
    let mut fields = BTreeMap::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended after {events:?}");
        let line = line.trim_end_matches('\n');
        if let Some((name, value)) = line.split_once(": ") {
            fields.insert(name.to_owned(), value.to_owned());
            continue;
        }
        if line.is_empty() && fields.contains_key("event") {
            let name = fields.remove("event").unwrap();
            let data: Value = serde_json::from_str(&fields.remove("data").unwrap()).unwrap();
            let id = fields.remove("id").map(|id| id.parse().unwrap());
            let stop = until(&name, &data);
            events.push((name, id, data));
            if stop {
                return events;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_carry_every_change_of_a_job_and_of_a_list_in_order_and_resume_after_the_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let node = Serve::start(dir.path(), &["--no-processes"]);
    let addr = node.addr.clone();
    tokio::task::spawn_blocking(move || {
        let (document, job) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
        assert_eq!(command(&addr, "document", &document, "register", register("a.pdf", "acme")).0, 200);
        let (status, submitted) = submit_job(&addr, &job, one_step_job(&Uuid::now_v7().to_string(), &document));
        assert_eq!(status, 200, "{submitted}");
        let (addr2, job2, after) = (addr.clone(), job.clone(), submitted["last_position"].clone());
        let watcher = std::thread::spawn(move || {
            read_events(&addr2, &format!("/jobs/{job2}/live?after={after}"), None, |name, data| {
                name == "state" && data["status"] == "succeeded"
            })
        });
        // The list of running jobs, from just after the submit: the job as it changes, then its leaving.
        let (addr3, from) = (addr.clone(), submitted["last_position"].to_string());
        let list_watcher = std::thread::spawn(move || {
            read_events(&addr3, "/jobs/live?status=running", Some(from.as_str()), |name, _| name == "left")
        });
        drive_job(&addr, &job);
        let events = watcher.join().unwrap();
        let listed = list_watcher.join().unwrap();
        let (last, items) = listed.split_last().unwrap();
        assert_eq!((last.0.as_str(), &last.2), ("left", &json!({"id": job})), "{listed:?}");
        assert!(!items.is_empty(), "{listed:?}");
        assert!(items.iter().all(|e| e.0 == "item" && e.2["id"] == json!(job) && e.2["status"] == "running"));
        let positions: Vec<u64> = listed.iter().map(|e| e.1.unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "log positions in order: {positions:?}");
        let changes: Vec<u64> = events.iter().filter(|e| e.0 == "change").map(|e| e.1.unwrap()).collect();
        assert_eq!(changes, (1..=10).collect::<Vec<_>>(), "{events:?}");
        let types: Vec<&str> =
            events.iter().filter(|e| e.0 == "change").map(|e| e.2["type"].as_str().unwrap()).collect();
        assert_eq!(types.last(), Some(&"job.succeeded"));
        // Each state follows the changes it reflects: its version is the last change before it.
        let mut last_change = 0;
        for (name, id, data) in &events {
            match name.as_str() {
                "change" => last_change = id.unwrap(),
                "state" => assert_eq!(data["version"].as_u64(), Some(last_change), "{events:?}"),
                other => panic!("unexpected event {other}"),
            }
        }
        // Reconnecting with Last-Event-ID resumes after it.
        let resumed = read_events(&addr, &format!("/jobs/{job}/live"), Some("8"), |name, _| name == "state");
        let resumed: Vec<u64> = resumed.iter().filter(|e| e.0 == "change").map(|e| e.1.unwrap()).collect();
        assert_eq!(resumed, [9, 10]);
        // A list on a label: the document enters it when labelled so, and leaves it when the label goes.
        let (status, reply) = command(&addr, "document", &document, "label", json!({"set": {"stage": "draft"}}));
        assert_eq!(status, 200, "{reply}");
        let (addr4, from) = (addr.clone(), reply["last_position"].to_string());
        let label_watcher = std::thread::spawn(move || {
            read_events(&addr4, "/documents/live?label.project=q3", Some(from.as_str()), |name, _| name == "left")
        });
        for change in [json!({"set": {"project": "q3"}}), json!({"remove": ["project"]})] {
            assert_eq!(command(&addr, "document", &document, "label", change).0, 200);
        }
        let labelled = label_watcher.join().unwrap();
        let names: Vec<&str> = labelled.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["item", "left"], "{labelled:?}");
        assert_eq!(labelled[0].2["labels"], json!({"stage": "draft", "project": "q3"}), "{labelled:?}");
        for (path, header) in [("/jobs/live?colour=red", None), ("/jobs/live", Some("soon"))] {
            let headers: Vec<(&str, &str)> = header.map(|h| ("Last-Event-ID", h)).into_iter().collect();
            let response = http(&addr, "GET", path, &headers, b"");
            assert_eq!((response.status, response.json()["error"]["kind"].as_str()), (400, Some("invalid")), "{path}");
        }
    })
    .await
    .unwrap();
    let (status, rest) = node.terminate();
    assert!(status.success(), "{status}: {rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_workflows_and_schedules_are_read_with_their_figures() {
    // 2023-11-14T22:13:20Z, and the next two 09:00 UTC after it, in microseconds.
    const CREATED: u64 = 1_700_000_000_000_000;
    const NINE: u64 = 1_700_038_800_000_000;
    const DAY: u64 = 86_400_000_000;
    let dir = tempfile::tempdir().unwrap();
    let node = Serve::start(dir.path(), &["--no-processes"]);
    let addr = node.addr.clone();
    tokio::task::spawn_blocking(move || {
        let id = || Uuid::now_v7().to_string();
        let (agent, workflow, schedule, job) = (id(), id(), id(), id());
        let ok = |aggregate: &str, id: &str, kind: &str, payload: Value| {
            let (status, reply) = command(&addr, aggregate, id, kind, payload);
            assert_eq!(status, 200, "{aggregate} {kind}: {reply}");
            reply["last_position"].as_u64().unwrap()
        };
        let read = |path: String| {
            let (status, body) = get(&addr, &path);
            assert_eq!(status, 200, "{path}: {body}");
            body
        };

        // An agent: two tasks done, one failed, then disabled.
        let mut profile = json!({"name": "summariser", "role": "summariser", "goal": "short summaries",
            "instructions": "Be brief.", "provider": "builtin", "model": "echo",
            "parameters": {"temperature": 0.25}, "concurrency_limit": 2});
        ok("agent", &agent, "register", json!({"profile": profile}));
        profile["model"] = json!("echo-2");
        ok("agent", &agent, "update", json!({"profile": profile}));
        for (latency, fails) in [(300, false), (500, false), (0, true)] {
            let task = id();
            ok("agent", &agent, "assign_task", json!({"task": task, "job": job, "step": "extract", "attempt": 1}));
            ok("agent", &agent, "start_task", json!({"task": task}));
            if fails {
                ok("agent", &agent, "fail_task", json!({"task": task, "error": "rate limited", "retryable": true}));
            } else {
                ok(
                    "agent",
                    &agent,
                    "complete_task",
                    json!({"task": task, "output": id(), "input_tokens": 100,
                    "output_tokens": 20, "latency_ms": latency}),
                );
            }
        }
        let position = ok("agent", &agent, "assign_task", json!({"task": id(), "job": job, "step": "x", "attempt": 1}));
        let found = read(format!("/agents/{agent}?after={position}"));
        assert_eq!(
            (found["status"].as_str(), found["model"].as_str(), &found["profile"]["parameters"]),
            (Some("active"), Some("echo-2"), &json!({"temperature": 0.25})),
            "{found}"
        );
        let counts: Vec<u64> = ["tasks_assigned", "tasks_running", "tasks_done", "tasks_failed", "input_tokens"]
            .iter()
            .map(|c| found[c].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [4, 1, 2, 1, 200], "{found}");
        assert_eq!(found["mean_latency_ms"].as_f64(), Some(400.0), "{found}");
        let position = ok("agent", &agent, "disable", json!({"reason": "retired"}));
        let page = read(format!("/agents?status=disabled&after={position}"));
        assert_eq!(page["items"][0]["disabled_reason"], "retired", "{page}");
        assert_eq!(page["items"][0]["profile"]["model"], "echo-2", "a list shows the parsed profile too: {page}");
        assert_eq!(read("/agents?provider=openai".into())["items"], json!([]));

        // A workflow defined, then redefined with a second step.
        let step = |name: &str, from: Value| {
            json!({"name": name, "agent": agent, "instruction": "do it", "inputs": [from], "timeout_ms": 1000,
                   "retry": {"max_attempts": 1, "base_delay_ms": 10, "max_delay_ms": 10}})
        };
        ok(
            "workflow",
            &workflow,
            "define",
            json!({"name": "digest", "steps": [step("extract", json!({"from": "job_inputs"}))]}),
        );
        let position = ok(
            "workflow",
            &workflow,
            "redefine",
            json!({"name": "digest-2", "steps": [step("extract", json!({"from": "job_inputs"})),
                                                 step("summarise", json!({"from": "step", "name": "extract"}))]}),
        );
        let found = read(format!("/workflows/{workflow}?after={position}"));
        assert_eq!(
            (found["name"].as_str(), found["latest_version"].as_u64(), found["steps_count"].as_u64()),
            (Some("digest-2"), Some(2), Some(2)),
            "{found}"
        );
        let versions: Vec<(u64, usize)> = found["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["workflow_version"].as_u64().unwrap(), v["steps"].as_array().unwrap().len()))
            .collect();
        assert_eq!(versions, [(1, 1), (2, 2)]);
        assert_eq!(found["steps"][1]["inputs"][0], json!({"from": "step", "name": "extract"}));
        assert_eq!(read("/workflows?name=digest-2".into())["items"].as_array().unwrap().len(), 1);

        // A schedule: its next fire time follows its firings, and a paused one has none.
        let position = ok(
            "schedule",
            &schedule,
            "create",
            json!({"cron": "0 9 * * *", "time_zone": "UTC", "workflow": workflow,
                   "target": {"documents": [id()]}, "strategy": "combined", "at": CREATED}),
        );
        let found = read(format!("/schedules/{schedule}?after={position}"));
        assert_eq!((found["status"].as_str(), found["next_fire_at"].as_u64()), (Some("active"), Some(NINE)), "{found}");
        assert_eq!(found["target"], json!({"documents": found["target"]["documents"].clone()}));
        let position = ok("schedule", &schedule, "fire", json!({"due_at": NINE, "jobs": [job], "at": NINE + 5}));
        let found = read(format!("/schedules/{schedule}?after={position}"));
        assert_eq!(
            (found["fires"].as_u64(), found["jobs_submitted"].as_u64(), found["next_fire_at"].as_u64()),
            (Some(1), Some(1), Some(NINE + DAY)),
            "{found}"
        );
        let position = ok("schedule", &schedule, "pause", json!({"at": NINE + 10}));
        let found = read(format!("/schedules/{schedule}?after={position}"));
        assert_eq!((found["status"].as_str(), &found["next_fire_at"]), (Some("paused"), &Value::Null), "{found}");
        // Resumed after two more nine o'clocks: those are skipped, as the schedule actor skips them.
        let position = ok("schedule", &schedule, "resume", json!({"at": NINE + 2 * DAY + 1}));
        let page = read(format!("/schedules?workflow={workflow}&after={position}"));
        assert_eq!(page["items"][0]["next_fire_at"].as_u64(), Some(NINE + 3 * DAY), "{page}");

        // Their bad input, as for the other models.
        for (path, expected) in [
            (format!("/agents/{}", id()), 404),
            (format!("/workflows/{}", id()), 404),
            (format!("/schedules/{}", id()), 404),
            ("/agents?owner=ann".to_owned(), 400),
            ("/schedules?cursor=x".to_owned(), 400),
            ("/workflows/x".to_owned(), 400),
        ] {
            let (status, body) = get(&addr, &path);
            assert_eq!((status, body["error"]["kind"].is_string()), (expected, true), "{path}: {body}");
        }
    })
    .await
    .unwrap();
    let (status, rest) = node.terminate();
    assert!(status.success(), "{status}: {rest}");
}
