//! One contract for both buses: the in-process one and NATS (a real `nats-server` on a free loopback port).

use std::time::Duration;

use futures::StreamExt;
use weft::bus::memory::MemoryBus;
use weft::bus::nats::NatsBus;
use weft::bus::{Bus, BusError, Headers, Message, Subscription};
use weft_harness::NatsServer;

const WAIT: Duration = Duration::from_secs(5);

/// The messages up to and including the first whose payload is `end`: messages from one publisher reach a
/// subscriber in order, so the marker says everything before it has arrived.
async fn until_end(subscription: &mut Subscription) -> Vec<String> {
    let mut subjects = Vec::new();
    loop {
        let message = tokio::time::timeout(WAIT, subscription.next()).await.expect("the end marker in time").unwrap();
        if &message.payload[..] == b"end" {
            return subjects;
        }
        subjects.push(message.subject);
    }
}

/// Takes `count` items, failing after [`WAIT`]; then checks that no more come within a short while (the
/// only way to see that something did not happen).
async fn exactly<T>(stream: &mut (impl futures::Stream<Item = T> + Unpin), count: usize) -> Vec<T> {
    let mut got = Vec::new();
    while got.len() < count {
        got.push(tokio::time::timeout(WAIT, stream.next()).await.expect("the messages in time").unwrap());
    }
    let extra = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    assert!(extra.is_err(), "more than {count} messages arrived");
    got
}

async fn wildcards_match_tokens(bus: impl Bus) {
    let mut star = bus.subscribe("weft.evt.*.x", None).await.unwrap();
    let mut tail = bus.subscribe("weft.evt.>", None).await.unwrap();
    let mut exact = bus.subscribe("weft.evt.job.x", None).await.unwrap();
    bus.flush().await.unwrap();
    for subject in ["weft.evt.job.x", "weft.evt.job.x.y", "weft.evt.doc.x", "weft.other.job.x"] {
        bus.publish(Message::new(subject, "m")).await.unwrap();
    }
    // A marker every pattern matches.
    bus.publish(Message::new("weft.evt.job.x", "end")).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(until_end(&mut star).await, ["weft.evt.job.x", "weft.evt.doc.x"]);
    assert_eq!(until_end(&mut tail).await, ["weft.evt.job.x", "weft.evt.job.x.y", "weft.evt.doc.x"]);
    assert_eq!(until_end(&mut exact).await, ["weft.evt.job.x"]);
}

async fn a_queue_group_shares_messages_and_plain_subscribers_get_all(bus: impl Bus) {
    let a = bus.subscribe("work.*", Some("weft")).await.unwrap();
    let b = bus.subscribe("work.*", Some("weft")).await.unwrap();
    let mut all = bus.subscribe("work.*", None).await.unwrap();
    bus.flush().await.unwrap();
    for i in 0..100 {
        bus.publish(Message::new(format!("work.{i}"), "m")).await.unwrap();
    }
    bus.flush().await.unwrap();
    // Each message to exactly one member.
    let mut members = futures::stream::select(a.map(|_| 'a'), b.map(|_| 'b'));
    let got = exactly(&mut members, 100).await;
    let from_a = got.iter().filter(|m| **m == 'a').count();
    assert!(from_a > 0 && from_a < 100, "both members got work: {from_a} of 100 to one");
    assert_eq!(exactly(&mut all, 100).await.len(), 100);
}

async fn requests_get_replies_with_headers(bus: impl Bus + Clone) {
    let mut service = bus.subscribe("svc.echo", Some("weft")).await.unwrap();
    bus.flush().await.unwrap();
    let responder = bus.clone();
    tokio::spawn(async move {
        while let Some(request) = service.next().await {
            let mut headers = request.headers.clone();
            headers.insert("Echoed".into(), "yes".into());
            let reply = Message { subject: request.reply.unwrap(), reply: None, headers, payload: request.payload };
            responder.publish(reply).await.unwrap();
        }
    });
    let mut request = Message::new("svc.echo", "ping");
    request.headers = Headers::from([("Weft-Command-Id".to_owned(), "c-1".to_owned())]);
    let reply = bus.request(request, WAIT).await.unwrap();
    assert_eq!(&reply.payload[..], b"ping");
    assert_eq!(reply.headers.get("Weft-Command-Id").map(String::as_str), Some("c-1"));
    assert_eq!(reply.headers.get("Echoed").map(String::as_str), Some("yes"));
}

async fn requests_nobody_answers_fail_typed(bus: impl Bus) {
    assert_eq!(
        bus.request(Message::new("svc.nobody", "x"), WAIT).await.unwrap_err(),
        BusError::NoResponders("svc.nobody".into())
    );
    let _silent = bus.subscribe("svc.silent", None).await.unwrap();
    bus.flush().await.unwrap();
    assert_eq!(
        bus.request(Message::new("svc.silent", "x"), Duration::from_millis(100)).await.unwrap_err(),
        BusError::TimedOut { subject: "svc.silent".into(), timeout_ms: 100 }
    );
}

async fn bad_subjects_and_oversized_messages_are_refused(bus: impl Bus) {
    for subject in ["", "a..b", "a b", "a.*", "a.>"] {
        let error = bus.publish(Message::new(subject, "x")).await.unwrap_err();
        assert!(matches!(error, BusError::InvalidSubject { .. }), "{subject:?}: {error:?}");
        let error = bus.request(Message::new(subject, "x"), WAIT).await.unwrap_err();
        assert!(matches!(error, BusError::InvalidSubject { .. }), "{subject:?}: {error:?}");
    }
    assert!(matches!(bus.subscribe("a.>.b", None).await, Err(BusError::InvalidSubject { .. })));
    let huge = vec![0u8; bus.max_payload() + 1];
    assert!(matches!(bus.publish(Message::new("a.b", huge)).await.unwrap_err(), BusError::TooLarge { .. }));
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(MemoryBus::default()).await;
                }
            )*
        }
        mod nats {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let server = NatsServer::start().unwrap();
                    let client = weft::nats::connect(&server.url(), "bus-test").await.unwrap();
                    super::$case(NatsBus::new(client)).await;
                }
            )*
        }
    };
}

contract!(
    wildcards_match_tokens,
    a_queue_group_shares_messages_and_plain_subscribers_get_all,
    requests_get_replies_with_headers,
    requests_nobody_answers_fail_typed,
    bad_subjects_and_oversized_messages_are_refused,
);

/// Every request's reply inbox is gone when the request ends, answered, timed out or dropped, and dropped
/// subscriptions leave: before, each request left a subscriber behind that every later message was matched
/// against, so the in-process bus slowed with every command a node had taken.
#[tokio::test]
async fn the_memory_bus_keeps_no_inbox_or_dropped_subscription() {
    let bus = MemoryBus::default();
    let mut service = bus.subscribe("svc.echo", Some("weft")).await.unwrap();
    let _silent = bus.subscribe("svc.silent", None).await.unwrap();
    let responder = bus.clone();
    tokio::spawn(async move {
        while let Some(request) = service.next().await {
            let reply = Message::new(request.reply.unwrap(), request.payload);
            responder.publish(reply).await.unwrap();
        }
    });
    for i in 0..1_000 {
        let reply = bus.request(Message::new("svc.echo", format!("{i}")), WAIT).await.unwrap();
        assert_eq!(reply.payload, format!("{i}").as_bytes());
    }
    let silent = bus.request(Message::new("svc.silent", "x"), Duration::from_millis(20)).await;
    assert!(matches!(silent, Err(BusError::TimedOut { .. })), "{silent:?}");
    // A request given up before its reply (its future dropped).
    let gone = bus.request(Message::new("svc.silent", "y"), WAIT);
    assert!(tokio::time::timeout(Duration::from_millis(20), gone).await.is_err());
    for _ in 0..100 {
        drop(bus.subscribe("events.dropped", None).await.unwrap());
    }
    let _last = bus.subscribe("events.kept", None).await.unwrap();
    assert_eq!(bus.held(), (3, 0), "subscriptions (echo, silent, kept) and inboxes held");
}
