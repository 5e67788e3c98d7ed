//! Identity, roles and tenant boundaries over NATS, on a real `weft serve --nats` with authentication on:
//! commands and queries carry `Authorization: Bearer`, are checked as HTTP requests are, and events go out on
//! `weft.evt.<tenant>.…`.

use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::{Value, json};
use weft::auth::Role;
use weft::auth::token::Secret;
use weft_harness::NatsServer;

use crate::auth::token_of;
use crate::serve::Serve;

/// Sends `body` (JSON) on `subject` with `token` and these extra headers; the reply as JSON.
async fn ask(
    client: &async_nats::Client,
    subject: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &Value,
) -> Value {
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    if let Some(token) = token {
        headers.insert("Authorization", format!("Bearer {token}").as_str());
    }
    for (name, value) in extra {
        headers.insert(*name, *value);
    }
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(body.to_string().into())
        .timeout(Some(Duration::from_secs(10)));
    let reply = client.send_request(subject.to_owned(), request).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

fn command(kind: &str, payload: Value) -> Value {
    json!({"command_id": uuid::Uuid::now_v7(), "type": kind, "payload": payload})
}

fn register(tenant: &str, owner: &str) -> Value {
    command(
        "register",
        json!({"name": "a.txt", "content_type": "text/plain", "declared_size_bytes": 10,
                               "tenant": tenant, "owner": owner}),
    )
}

fn kind(reply: &Value) -> &str {
    reply["error"]["kind"].as_str().unwrap_or("ok")
}

/// The subjects of the messages `subscription` has received so far.
async fn subjects(subscription: &mut async_nats::Subscriber) -> Vec<String> {
    use futures::StreamExt as _;
    let mut seen = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await {
        seen.push(message.subject.to_string());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_queries_over_nats_are_checked_like_http_and_events_carry_their_tenant() {
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Serve::start(dir.path(), &["--nats", &server.url()]);
    let secret = Secret::load(&dir.path().join("auth.secret")).unwrap();
    let client = weft::nats::connect(&server.url(), "client").await.unwrap();
    let mut acme_events = client.subscribe("weft.evt.acme.>").await.unwrap();
    let mut globex_events = client.subscribe("weft.evt.globex.>").await.unwrap();
    client.flush().await.unwrap();

    let admin = token_of(&secret, "root", Role::Admin, &["*"]);
    let olga = token_of(&secret, "olga", Role::Operator, &["acme"]);
    let ann = token_of(&secret, "ann", Role::User, &["acme"]);
    let bob = token_of(&secret, "bob", Role::User, &["acme"]);
    let gus = token_of(&secret, "gus", Role::Guest, &["acme"]);
    let globex = token_of(&secret, "gil", Role::Operator, &["globex"]);
    let other_secret = token_of(&Secret::from_bytes(&[9; 32]), "root", Role::Admin, &["*"]);
    let (doc, missing) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let on = |id: uuid::Uuid| format!("weft.cmd.document.{id}");

    // Who may not send a command at all.
    for (why, token) in
        [("no token", None), ("another node's secret", Some(&*other_secret)), ("garbage", Some("x.y.z"))]
    {
        let reply = ask(&client, &on(doc), token, &[], &register("acme", "ann")).await;
        assert_eq!(kind(&reply), "unauthenticated", "{why}: {reply}");
    }
    let reply = ask(&client, &on(doc), Some(&gus), &[], &register("acme", "gus")).await;
    assert_eq!(kind(&reply), "forbidden", "a guest registers: {reply}");
    let define = command("define", json!({"name": "w", "steps": []}));
    let reply = ask(&client, &format!("weft.cmd.workflow.{doc}"), Some(&ann), &[], &define).await;
    assert_eq!(kind(&reply), "forbidden", "a user defines a workflow: {reply}");
    // A user registers only as the owner, only in its tenants, and a payload must name the command's tenant.
    let reply = ask(&client, &on(doc), Some(&ann), &[], &register("acme", "bob")).await;
    assert_eq!(kind(&reply), "forbidden", "ann registers for bob: {reply}");
    let reply = ask(&client, &on(doc), Some(&ann), &[], &register("globex", "ann")).await;
    assert_eq!(kind(&reply), "forbidden", "ann registers in globex: {reply}");
    let reply = ask(&client, &on(doc), Some(&ann), &[("Weft-Tenant", "acme")], &register("globex", "ann")).await;
    assert_eq!(kind(&reply), "forbidden", "a payload naming another tenant: {reply}");

    // Ann's own registration, sent with a Weft-Actor that claims to be someone else: the token decides.
    let reply = ask(&client, &on(doc), Some(&ann), &[("Weft-Actor", "user:root")], &register("acme", "ann")).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let position = reply["last_position"].as_u64().unwrap();

    // Another tenant, another user, and a guest of the right tenant cannot touch it; each answer is a missing
    // document's, except the guest's (its role sends no command at all).
    let delete = || command("delete", json!({"reason": "mine now"}));
    for (who, token) in [("globex's operator", &globex), ("bob", &bob)] {
        let reply = ask(&client, &on(doc), Some(token), &[], &delete()).await;
        assert_eq!(kind(&reply), "not_found", "{who} deletes ann's document: {reply}");
    }
    let reply = ask(&client, &on(doc), Some(&globex), &[("Weft-Tenant", "acme")], &delete()).await;
    assert_eq!(kind(&reply), "forbidden", "globex names acme: {reply}");
    let reply = ask(&client, &on(missing), Some(&bob), &[], &delete()).await;
    assert_eq!(kind(&reply), "rejected", "a missing document is rejected by the document itself: {reply}");

    // Queries: confined to the token's reach; status queries are open.
    let get = json!({"id": doc, "after": position});
    let reply = ask(&client, "weft.qry.documents.get", None, &[], &get).await;
    assert_eq!(kind(&reply), "unauthenticated", "{reply}");
    let reply = ask(&client, "weft.qry.documents.get", Some(&ann), &[], &get).await;
    assert_eq!(reply["owner"], "ann", "{reply}");
    for (who, token) in [("globex's operator", &globex), ("bob", &bob)] {
        let reply = ask(&client, "weft.qry.documents.get", Some(token), &[], &get).await;
        assert_eq!(kind(&reply), "not_found", "{who} reads ann's document: {reply}");
        let history = json!({"stream": format!("document-{doc}")});
        let reply = ask(&client, "weft.qry.streams.events", Some(token), &[], &history).await;
        assert!(
            kind(&reply) == "not_found" || reply["items"].as_array().is_some_and(Vec::is_empty),
            "{who} reads ann's document's history: {reply}"
        );
    }
    let list = ask(&client, "weft.qry.documents.list", Some(&globex), &[], &json!({})).await;
    assert_eq!(list["items"], json!([]), "globex lists acme's documents: {list}");
    let list = ask(&client, "weft.qry.documents.list", Some(&olga), &[], &json!({})).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let reply = ask(&client, "weft.qry.status.lag", None, &[], &json!({})).await;
    assert!(reply["head"].as_u64().is_some(), "{reply}");

    // The recorded actor is ann, whatever her Weft-Actor said.
    let history = json!({"stream": format!("document-{doc}")});
    let reply = ask(&client, "weft.qry.streams.events", Some(&admin), &[], &history).await;
    assert_eq!(reply["items"][0]["actor"], "ann", "{reply}");

    // A schedule's selector is confined to its tenant: naming another is refused.
    let create = |tenant: Option<&str>| {
        command(
            "create",
            json!({"cron": "0 0 * * *", "time_zone": "UTC", "workflow": uuid::Uuid::now_v7(),
            "target": {"selector": {"tenant": tenant}}, "strategy": "per_document"}),
        )
    };
    let schedule = format!("weft.cmd.schedule.{}", uuid::Uuid::now_v7());
    let reply = ask(&client, &schedule, Some(&olga), &[], &create(Some("globex"))).await;
    assert_eq!(kind(&reply), "forbidden", "{reply}");

    // A user's jobs are its own: another user of the tenant neither sees nor cancels them; an operator sees them.
    let anns_job = uuid::Uuid::now_v7();
    let submit_anns = command(
        "submit",
        json!({"workflow": weft::agents::catalog::workflow_id("summarize"),
        "workflow_version": 1, "inputs": [doc], "priority": 0}),
    );
    let reply = ask(&client, &format!("weft.cmd.job.{anns_job}"), Some(&ann), &[], &submit_anns).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let after = reply["last_position"].as_u64().unwrap();
    let get = json!({"id": anns_job, "after": after});
    let reply = ask(&client, "weft.qry.jobs.get", Some(&ann), &[], &get).await;
    assert_eq!(reply["owner"], "ann", "{reply}");
    let reply = ask(&client, "weft.qry.jobs.get", Some(&olga), &[], &get).await;
    assert_eq!(reply["owner"], "ann", "{reply}");
    let reply = ask(&client, "weft.qry.jobs.get", Some(&bob), &[], &get).await;
    assert_eq!(kind(&reply), "not_found", "bob reads ann's job: {reply}");
    let list = ask(&client, "weft.qry.jobs.list", Some(&bob), &[], &json!({})).await;
    assert_eq!(list["items"], json!([]), "bob lists ann's job: {list}");
    let logs = ask(&client, "weft.qry.jobs.logs", Some(&bob), &[], &json!({"id": anns_job})).await;
    assert_eq!(kind(&logs), "not_found", "bob reads ann's job's log: {logs}");
    // A document's lineage answers as its item does: the tenant's operator reads it, another tenant does not.
    let lineage = ask(&client, "weft.qry.documents.lineage", Some(&olga), &[], &json!({"id": doc})).await;
    assert!(lineage["descendants"].is_array(), "{lineage}");
    let lineage = ask(&client, "weft.qry.documents.lineage", Some(&globex), &[], &json!({"id": doc})).await;
    assert_eq!(kind(&lineage), "not_found", "another tenant reads the lineage: {lineage}");
    for bad in
        [json!({}), json!({"id": doc, "depth": 0}), json!({"id": doc, "direction": "sideways"}), json!({"id": "x"})]
    {
        let reply = ask(&client, "weft.qry.documents.lineage", Some(&olga), &[], &bad).await;
        assert_eq!(kind(&reply), "invalid", "{bad}: {reply}");
    }
    // Costs by tenant: bob (a user) sees only his own jobs, another tenant's caller none of acme's; bad
    // parameters are `invalid`.
    let costs = ask(&client, "weft.qry.costs.tenants", Some(&bob), &[], &json!({})).await;
    assert_eq!(costs["tenants"], json!([]), "bob sees ann's job's cost: {costs}");
    let costs = ask(&client, "weft.qry.costs.tenants", Some(&globex), &[], &json!({"tenant": "acme"})).await;
    assert_eq!(costs["tenants"], json!([]), "another tenant sees acme's costs: {costs}");
    let costs = ask(&client, "weft.qry.costs.tenants", Some(&olga), &[], &json!({})).await;
    assert_eq!(costs["tenants"][0]["tenant"], "acme", "{costs}");
    for bad in [json!({"since": "x"}), json!({"until": -1.5}), json!({"color": "red"})] {
        let reply = ask(&client, "weft.qry.costs.tenants", Some(&olga), &[], &bad).await;
        assert_eq!(kind(&reply), "invalid", "{bad}: {reply}");
    }
    let cancel = command("cancel", json!({"reason": "not yours"}));
    let reply = ask(&client, &format!("weft.cmd.job.{anns_job}"), Some(&bob), &[], &cancel).await;
    assert_eq!(kind(&reply), "not_found", "bob cancels ann's job: {reply}");

    // A job of globex naming acme's document as its input: the step refuses to read it.
    let job = uuid::Uuid::now_v7();
    let submit = command(
        "submit",
        json!({"workflow": weft::agents::catalog::workflow_id("summarize"),
        "workflow_version": 1, "inputs": [doc], "priority": 0}),
    );
    let reply = ask(&client, &format!("weft.cmd.job.{job}"), Some(&globex), &[], &submit).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let reply = ask(&client, "weft.qry.jobs.get", Some(&globex), &[], &json!({"id": job})).await;
        if reply["status"] == "failed" {
            break reply;
        }
        assert!(std::time::Instant::now() < deadline, "the job did not fail: {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("input {doc} is no document of tenant \"globex\"")), "{failed}");

    // Events go out under their tenant: acme's subscriber has ann's registration, globex's only
    // its job's events.
    let acme = subjects(&mut acme_events).await;
    assert!(acme.contains(&format!("weft.evt.acme.document.{doc}.registered")), "{acme:?}");
    let globex = subjects(&mut globex_events).await;
    assert!(globex.iter().all(|s| s.starts_with(&format!("weft.evt.globex.job.{job}."))), "{globex:?}");
    assert!(!globex.is_empty());
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_over_its_rate_is_told_when_to_retry_on_http_and_nats() {
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Serve::start(dir.path(), &["--nats", &server.url(), "--rate-limit-identity", "1"]);
    let secret = Secret::load(&dir.path().join("auth.secret")).unwrap();
    let client = weft::nats::connect(&server.url(), "client").await.unwrap();
    let ann = token_of(&secret, "ann", Role::User, &["acme"]);
    let bob = token_of(&secret, "bob", Role::User, &["acme"]);

    // Commands over NATS: a burst of two, then `unavailable` with a retry hint.
    let mut kinds = Vec::new();
    let mut hint = None;
    for _ in 0..4 {
        let reply = ask(
            &client,
            &format!("weft.cmd.document.{}", uuid::Uuid::now_v7()),
            Some(&ann),
            &[],
            &register("acme", "ann"),
        )
        .await;
        kinds.push(kind(&reply).to_owned());
        hint = hint.or(reply["error"]["retry_after_ms"].as_u64());
    }
    assert_eq!(kinds[..2], ["ok", "ok"], "{kinds:?}");
    assert!(kinds.contains(&"unavailable".to_owned()), "{kinds:?}");
    assert!(hint.is_some_and(|ms| ms > 0 && ms <= 1000), "{hint:?}");
    // Queries too, while another identity still has its budget.
    let reply = ask(&client, "weft.qry.documents.list", Some(&ann), &[], &json!({})).await;
    assert_eq!(kind(&reply), "unavailable", "{reply}");
    assert!(reply["error"]["retry_after_ms"].as_u64().is_some(), "{reply}");
    let reply = ask(&client, "weft.qry.documents.list", Some(&bob), &[], &json!({})).await;
    assert!(reply["items"].is_array(), "{reply}");

    // HTTP: 429 with Retry-After.
    let addr = node.addr.clone();
    let statuses = tokio::task::spawn_blocking(move || {
        let bearer = format!("Bearer {ann}");
        (0..4)
            .map(|_| {
                let response = crate::serve::raw_http(&addr, "GET", "/documents", &[("Authorization", &bearer)], b"");
                (response.status, response.header("retry-after").map(str::to_owned), response.body)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let limited = statuses.iter().find(|(status, _, _)| *status == 429).expect("a 429");
    assert_eq!(limited.1.as_deref(), Some("1"), "{limited:?}");
    assert!(limited.2.contains("rate_limited"), "{limited:?}");
    node.stop();
}

/// Every command and query subject of the protocol against every kind of bad credential and every role (the
/// node's tokens, an API key, a user's login): bad credentials answer `unauthenticated`, a role without the
/// permission `forbidden`, the others are let through to the command or the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subject_refuses_bad_credentials_and_lets_in_only_the_roles_that_may() {
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Serve::start(dir.path(), &["--nats", &server.url()]);
    let secret = Secret::load(&dir.path().join("auth.secret")).unwrap();
    let client = weft::nats::connect(&server.url(), "client").await.unwrap();
    let mut events = client.subscribe("weft.evt.>").await.unwrap();
    client.flush().await.unwrap();
    let admin = token_of(&secret, "root", Role::Admin, &["*"]);
    let (addr, secret_file) = (node.addr.clone(), dir.path().join("auth.secret"));
    let (bad, key, login) = tokio::task::spawn_blocking(move || {
        let bad = crate::auth::bad_tokens(&secret_file, &addr, &token_of(&secret, "root", Role::Admin, &["*"]));
        let key = crate::auth::api_key(&addr, &token_of(&secret, "root", Role::Admin, &["*"]), "operator");
        let login = crate::auth::user_login(&addr, &token_of(&secret, "root", Role::Admin, &["*"]), "user");
        (bad, key, login)
    })
    .await
    .unwrap();
    let secret = Secret::load(&dir.path().join("auth.secret")).unwrap();
    let roles = [
        ("admin", Role::Admin, admin.clone()),
        ("operator", Role::Operator, token_of(&secret, "olga", Role::Operator, &["acme"])),
        ("user", Role::User, token_of(&secret, "ann", Role::User, &["acme"])),
        ("guest", Role::Guest, token_of(&secret, "gus", Role::Guest, &["acme"])),
        ("operator's API key", Role::Operator, key),
        ("user's login", Role::User, login),
    ];
    let id = uuid::Uuid::now_v7();
    let mut cases: Vec<(String, Value, Option<weft::auth::Permission>)> = Vec::new();
    for aggregate in weft::http::commands::AGGREGATES {
        // A well-formed command of each aggregate: a malformed one is `invalid` to any caller that may send
        // commands at all, before its type is known.
        let (kind, payload) = match aggregate {
            "document" => ("delete", json!({"reason": "matrix"})),
            "workflow" => ("define", json!({"name": "w", "steps": []})),
            "job" => ("cancel", json!({"reason": "matrix"})),
            "agent" => ("disable", json!({"reason": "matrix"})),
            "schedule" | "trigger" => ("pause", json!({})),
            other => panic!("a command of {other} for the matrix"),
        };
        let body = command(kind, payload);
        let permission = weft::auth::command_permission(aggregate, kind);
        cases.push((format!("weft.cmd.{aggregate}.{id}"), body, Some(permission)));
    }
    for model in weft::query::read::MODELS {
        cases.push((format!("weft.qry.{}.get", model.name), json!({"id": id}), None));
        cases.push((format!("weft.qry.{}.list", model.name), json!({}), None));
    }
    cases.push(("weft.qry.jobs.logs".into(), json!({"id": id}), None));
    cases.push(("weft.qry.documents.lineage".into(), json!({"id": id}), None));
    cases.push(("weft.qry.streams.events".into(), json!({"stream": format!("job-{id}")}), None));
    for (subject, body, permission) in &cases {
        for (why, token) in &bad {
            let reply = ask(&client, subject, token.as_deref(), &[], body).await;
            assert_eq!(kind(&reply), "unauthenticated", "{subject} with {why}: {reply}");
        }
        for (name, role, token) in &roles {
            let reply = ask(&client, subject, Some(token), &[("Weft-Tenant", "acme")], body).await;
            let allowed = role.may(permission.unwrap_or(weft::auth::Permission::Read));
            if allowed {
                assert!(
                    !matches!(kind(&reply), "unauthenticated" | "forbidden"),
                    "{subject} refused a {name}: {reply}"
                );
            } else {
                assert_eq!(kind(&reply), "forbidden", "{subject} let a {name} in: {reply}");
            }
        }
    }
    // No user's or key's event is published: a subscriber of every event gets a document's registration,
    // made after them, and none of theirs.
    let reply = ask(&client, &format!("weft.cmd.document.{id}"), Some(&admin), &[], &register("acme", "ann")).await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let seen = subjects(&mut events).await;
    assert!(seen.iter().any(|s| s.contains(".document.")), "{seen:?}");
    assert!(seen.iter().all(|s| !s.contains(".user.") && !s.contains(".apikey.")), "{seen:?}");
    node.stop();
}
