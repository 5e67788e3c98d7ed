//! The store contract suite: one set of tests every backend runs, so that all backends keep the promises of
//! [`crate::store`] in the same way.
//!
//! A backend's tests call [`store_contract_tests!`](crate::store_contract_tests) with a factory that makes a
//! fresh, empty store plus a guard that keeps whatever backs it (a temporary folder, a server) alive for the
//! test; the in-memory store's tests, at the end of `memory.rs`, are the shortest example:
//! `store_contract_tests!(|| async { (MemoryStore::default(), ()) })`.
//!
//! Every case assumes the default [`Limits`](crate::Limits).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use uuid::Uuid;

use crate::envelope::{Envelope, NewEvent, StreamName};
use crate::partition::Partition;
use crate::store::{DEFAULT_MAX_PAYLOAD_BYTES, Direction, Error, EventStore, ExpectedVersion};

mod saved;
pub use saved::{checkpoints_keep_the_furthest, snapshots_keep_the_latest};

/// Generates one `#[tokio::test]` per contract case, each with a fresh store from `$make`, an expression
/// of type `Fn() -> impl Future<Output = (impl EventStore + Clone, impl Any)>`.
#[macro_export]
macro_rules! store_contract_tests {
    // `#[attr]` goes on every case: `#[cfg_attr(not(server), ignore = "...")]` for a backend whose server the
    // machine may not have, so that its cases are reported as ignored rather than passed.
    (#[$attr:meta] $make:expr) => {
        $crate::store_contract_tests!(@cases #[$attr] $make;
            expected_versions_are_enforced,
            a_rejected_append_stores_nothing,
            concurrent_appends_to_one_stream_have_one_winner_per_version,
            appends_to_many_streams_at_once_each_get_their_own_outcome,
            streams_read_forwards_and_backwards_in_pages,
            read_all_order_is_commit_order,
            subscriptions_started_during_a_write_storm_see_every_event_once_in_order,
            a_subscription_catches_up_then_follows_live_appends,
            a_stalled_subscriber_does_not_hold_back_writers,
            a_partition_subscription_yields_its_streams_events_only,
            a_maximal_payload_round_trips_and_limits_are_typed_errors,
            metadata_round_trips,
            snapshots_keep_the_latest,
            checkpoints_keep_the_furthest,
        );
    };
    (@cases #[$attr:meta] $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[$attr]
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let (store, _guard) = ($make)().await;
                $crate::contract::$case(store).await;
            }
        )*
    };
    ($make:expr) => {
        $crate::store_contract_tests!(#[cfg(all())] $make);
    };
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("test stream names are valid")
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("test.happened", n.to_be_bytes().to_vec())
}

/// Reads the whole store with pages of `page` events.
pub async fn read_everything<S: EventStore>(store: &S, page: usize) -> Vec<Envelope> {
    let mut all = Vec::new();
    loop {
        let next = all.len() as u64 + 1;
        let got = store.read_all(next, page).await.expect("read_all");
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

/// NoStream, Any and Exact behave as documented, and a conflict reports the stream's actual version.
pub async fn expected_versions_are_enforced<S: EventStore + Clone>(store: S) {
    let s = stream("order-1");
    assert_eq!(store.stream_version(&s).await.unwrap(), 0);

    let first = store.append(&s, ExpectedVersion::NoStream, vec![event(1)]).await.unwrap();
    assert_eq!((first.version, first.first_position, first.last_position), (1, 1, 1));

    let err = store.append(&s, ExpectedVersion::NoStream, vec![event(2)]).await.unwrap_err();
    assert_eq!(err, Error::Conflict { stream: s.clone(), expected: ExpectedVersion::NoStream, actual: 1 });

    let second = store.append(&s, ExpectedVersion::Exact(1), vec![event(2), event(3)]).await.unwrap();
    assert_eq!((second.version, second.first_position, second.last_position), (3, 2, 3));

    for stale in [0, 1, 2, 4, 99] {
        let err = store.append(&s, ExpectedVersion::Exact(stale), vec![event(9)]).await.unwrap_err();
        assert_eq!(err, Error::Conflict { stream: s.clone(), expected: ExpectedVersion::Exact(stale), actual: 3 });
        assert!(!err.is_retryable());
    }

    let any = store.append(&s, ExpectedVersion::Any, vec![event(4)]).await.unwrap();
    assert_eq!(any.version, 4);

    let other = stream("order-2");
    let err = store.append(&other, ExpectedVersion::Exact(1), vec![event(1)]).await.unwrap_err();
    assert_eq!(err, Error::Conflict { stream: other.clone(), expected: ExpectedVersion::Exact(1), actual: 0 });
    let zero = store.append(&other, ExpectedVersion::Exact(0), vec![event(1)]).await.unwrap();
    assert_eq!((zero.version, zero.first_position), (1, 5));
    let any_new = store.append(&stream("order-3"), ExpectedVersion::Any, vec![event(1)]).await.unwrap();
    assert_eq!(any_new.version, 1);

    assert_eq!(store.stream_version(&s).await.unwrap(), 4);
    assert_eq!(store.head().await.unwrap(), 6);
    let versions: Vec<u64> =
        store.read_stream(&s, 1, Direction::Forwards, 100).await.unwrap().iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}

/// An append that breaks a limit or expects the wrong version stores none of its events.
pub async fn a_rejected_append_stores_nothing<S: EventStore + Clone>(store: S) {
    let s = stream("atomic-1");
    store.append(&s, ExpectedVersion::NoStream, vec![event(1)]).await.unwrap();

    let mut events: Vec<NewEvent> = (0..5).map(event).collect();
    events[3].payload = Bytes::from(vec![0u8; DEFAULT_MAX_PAYLOAD_BYTES + 1]);
    let err = store.append(&s, ExpectedVersion::Exact(1), events).await.unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { index: 3, .. }), "{err}");

    let mut events: Vec<NewEvent> = (0..5).map(event).collect();
    events[4].event_type = "not a type".into();
    let err = store.append(&s, ExpectedVersion::Exact(1), events).await.unwrap_err();
    assert!(matches!(err, Error::InvalidEvent { index: 4, .. }), "{err}");

    let err = store.append(&s, ExpectedVersion::Exact(7), (0..5).map(event).collect()).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 1, .. }), "{err}");

    assert_eq!(store.stream_version(&s).await.unwrap(), 1);
    assert_eq!(store.head().await.unwrap(), 1);
    assert_eq!(read_everything(&store, 100).await.len(), 1);
}

/// 100 tasks race to append to one stream, each reading the version and appending at exactly that version
/// until it has landed its share. The versions come out 1..=N with no gap, and each version has exactly
/// one winner.
pub async fn concurrent_appends_to_one_stream_have_one_winner_per_version<S: EventStore + Clone>(store: S) {
    const TASKS: u64 = 100;
    const PER_TASK: u64 = 5;
    let s = stream("contended");
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut conflicts = 0u64;
            while (won.len() as u64) < PER_TASK {
                let version = store.stream_version(&s).await.unwrap();
                let payload = (task * 1000 + won.len() as u64).to_be_bytes().to_vec();
                match store
                    .append(&s, ExpectedVersion::Exact(version), vec![NewEvent::new("test.raced", payload)])
                    .await
                {
                    Ok(appended) => {
                        assert_eq!(appended.version, version + 1);
                        won.push(appended.version);
                    }
                    Err(Error::Conflict { actual, .. }) => {
                        assert!(actual > version, "a conflict must mean someone else moved the stream");
                        conflicts += 1;
                    }
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
            (won, conflicts)
        }));
    }
    let mut winners = BTreeMap::new();
    for (task, handle) in tasks.into_iter().enumerate() {
        let (won, _conflicts) = handle.await.unwrap();
        for version in won {
            assert!(winners.insert(version, task).is_none(), "version {version} won twice");
        }
    }
    let n = TASKS * PER_TASK;
    assert_eq!(winners.keys().copied().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
    let events = store.read_stream(&s, 1, Direction::Forwards, 10_000).await.unwrap();
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
    // The payload of each version is the one its winner appended.
    for e in &events {
        let task = u64::from_be_bytes(e.payload[..8].try_into().unwrap()) / 1000;
        assert_eq!(winners[&e.version] as u64, task);
    }
}

/// Appends to many streams at once (which a store may commit together) each get their own outcome: a stale
/// one its conflict and nothing stored, the others their versions and the positions their events are read at.
pub async fn appends_to_many_streams_at_once_each_get_their_own_outcome<S: EventStore + Clone>(store: S) {
    const STREAMS: u64 = 64;
    const ROUNDS: u64 = 5;
    let name = |i: u64| stream(&format!("many-{i}"));
    for i in 0..STREAMS {
        store.append(&name(i), ExpectedVersion::NoStream, vec![event(i)]).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = name(i);
            let mut outcomes = Vec::new();
            let mut version = 1;
            for round in 0..ROUNDS {
                // Every seventh append is decided on a stale version; sizes vary from one to three events.
                let stale = (i + round) % 7 == 0;
                let expected = if stale { version - 1 } else { version };
                let events: Vec<NewEvent> =
                    (0..1 + (i + round) % 3).map(|k| event(i * 1000 + round * 10 + k)).collect();
                let count = events.len() as u64;
                match store.append(&s, ExpectedVersion::Exact(expected), events).await {
                    Ok(appended) => {
                        assert!(!stale, "{s}: a stale append at {expected} went through");
                        assert_eq!(appended.version, version + count);
                        assert_eq!(appended.last_position + 1 - appended.first_position, count);
                        outcomes.push((round, version + 1, appended));
                        version += count;
                    }
                    Err(Error::Conflict { actual, .. }) => {
                        assert!(stale, "{s}: an append at the stream's version {expected} conflicted");
                        assert_eq!(actual, version);
                    }
                    Err(other) => panic!("{s}: unexpected error: {other}"),
                }
            }
            (s, version, outcomes)
        }));
    }
    let mut at_position = BTreeMap::new();
    for task in tasks {
        let (s, version, outcomes) = task.await.unwrap();
        let events = store.read_stream(&s, 1, Direction::Forwards, 1000).await.unwrap();
        assert_eq!(events.len() as u64, version, "{s}: only what was acknowledged is stored");
        for (round, first_version, appended) in outcomes {
            for (k, position) in (appended.first_position..=appended.last_position).enumerate() {
                let e = &events[(first_version - 1) as usize + k];
                assert_eq!((e.version, e.position), (first_version + k as u64, position), "{s}");
                let i: u64 = s.as_str().trim_start_matches("many-").parse().unwrap();
                assert_eq!(e.payload.as_ref(), (i * 1000 + round * 10 + k as u64).to_be_bytes());
                assert!(at_position.insert(position, s.clone()).is_none(), "position {position} given twice");
            }
        }
    }
    let all = read_everything(&store, 500).await;
    for e in &all {
        if let Some(s) = at_position.get(&e.position) {
            assert_eq!(*s, e.stream);
        }
    }
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=all.len() as u64).collect::<Vec<_>>());
}

/// Streams read forwards and backwards from any version with any page size.
pub async fn streams_read_forwards_and_backwards_in_pages<S: EventStore + Clone>(store: S) {
    let a = stream("paged-a");
    let b = stream("paged-b");
    for n in 1..=25 {
        store.append(&a, ExpectedVersion::Exact(n - 1), vec![event(n)]).await.unwrap();
        store.append(&b, ExpectedVersion::Any, vec![event(100 + n)]).await.unwrap();
    }
    let versions = |events: Vec<Envelope>| events.iter().map(|e| e.version).collect::<Vec<_>>();
    assert_eq!(
        versions(store.read_stream(&a, 1, Direction::Forwards, 10).await.unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        versions(store.read_stream(&a, 21, Direction::Forwards, 10).await.unwrap()),
        (21..=25).collect::<Vec<_>>()
    );
    assert!(store.read_stream(&a, 26, Direction::Forwards, 10).await.unwrap().is_empty());
    assert_eq!(versions(store.read_stream(&a, u64::MAX, Direction::Backwards, 3).await.unwrap()), [25, 24, 23]);
    assert_eq!(versions(store.read_stream(&a, 2, Direction::Backwards, 10).await.unwrap()), [2, 1]);
    assert!(store.read_stream(&a, 0, Direction::Backwards, 10).await.unwrap().is_empty());
    assert!(store.read_stream(&stream("nothing"), 1, Direction::Forwards, 10).await.unwrap().is_empty());
    assert!(store.read_stream(&a, 1, Direction::Forwards, 0).await.unwrap().is_empty());

    // Paging through the stream forwards gives every event once, each belonging to the stream.
    let mut from = 1;
    let mut seen = Vec::new();
    loop {
        let page = store.read_stream(&b, from, Direction::Forwards, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.version + 1;
        assert!(page.iter().all(|e| e.stream == b));
        seen.extend(page.iter().map(|e| u64::from_be_bytes(e.payload[..8].try_into().unwrap())));
    }
    assert_eq!(seen, (101..=125).collect::<Vec<_>>());
}

/// Appends from many tasks to many streams: read-all returns every acknowledged event once, positions
/// 1..=N dense, each append's events side by side in the order given, and an append acknowledged before
/// another started is before it.
pub async fn read_all_order_is_commit_order<S: EventStore + Clone>(store: S) {
    const TASKS: u64 = 16;
    const APPENDS: u64 = 30;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(&format!("order-{task}"));
            let mut acks = Vec::new();
            for n in 0..APPENDS {
                let count = 1 + (n % 4);
                let events = (0..count).map(|i| event(task << 32 | n << 8 | i)).collect();
                let appended = store.append(&s, ExpectedVersion::Any, events).await.unwrap();
                assert_eq!(appended.last_position - appended.first_position + 1, count);
                acks.push((appended, task << 32 | n << 8));
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for handle in tasks {
        let mine = handle.await.unwrap();
        // Within one task appends are sequential, so their positions must rise.
        assert!(mine.windows(2).all(|w| w[0].0.last_position < w[1].0.first_position));
        acks.extend(mine);
    }
    let all = read_everything(&store, 37).await;
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=all.len() as u64).collect::<Vec<_>>());
    let total: u64 = acks.iter().map(|(a, _)| a.last_position - a.first_position + 1).sum();
    assert_eq!(all.len() as u64, total);
    for (appended, base) in acks {
        for (i, position) in (appended.first_position..=appended.last_position).enumerate() {
            let e = &all[(position - 1) as usize];
            assert_eq!(u64::from_be_bytes(e.payload[..8].try_into().unwrap()), base | i as u64);
        }
    }
}

/// Subscriptions started at random moments, from random positions, while writers append: each sees every
/// event from its start position exactly once, in order, the same as read-all.
pub async fn subscriptions_started_during_a_write_storm_see_every_event_once_in_order<S: EventStore + Clone>(store: S) {
    const WRITERS: u64 = 8;
    const APPENDS: u64 = 150;
    const SUBSCRIBERS: usize = 12;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let s = stream(&format!("storm-{w}"));
            for n in 0..APPENDS {
                let events = (0..=(n % 3)).map(|i| event(w << 32 | n << 8 | i)).collect();
                store.append(&s, ExpectedVersion::Any, events).await.unwrap();
                if n % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let total = WRITERS * (0..APPENDS).map(|n| n % 3 + 1).sum::<u64>();
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (delay_us, from_fraction) = {
            let mut rng = rand::rng();
            (rng.random_range(0..20_000u64), rng.random_range(0.0..1.0f64))
        };
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        let head = store.head().await.unwrap();
        let from = 1 + (head as f64 * from_fraction) as u64;
        let mut subscription = store.subscribe_all(from);
        subscribers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut expected = from;
            while expected <= total {
                let event = tokio::time::timeout(Duration::from_secs(30), subscription.next())
                    .await
                    .expect("a subscription stalled")
                    .unwrap();
                assert_eq!(event.position, expected, "gap or duplicate");
                expected += 1;
                seen.push(event);
            }
            (from, seen)
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let all = read_everything(&store, 1000).await;
    assert_eq!(all.len() as u64, total);
    for subscriber in subscribers {
        let (from, seen) = subscriber.await.unwrap();
        assert_eq!(seen.as_slice(), &all[(from - 1) as usize..]);
    }
}

/// A subscription from the start reads what is stored, then waits, then yields new appends as they commit.
pub async fn a_subscription_catches_up_then_follows_live_appends<S: EventStore + Clone>(store: S) {
    let s = stream("live");
    for n in 1..=10 {
        store.append(&s, ExpectedVersion::Any, vec![event(n)]).await.unwrap();
    }
    let mut subscription = store.subscribe_all(1);
    let batch = subscription.next_batch().await.unwrap();
    assert_eq!(batch.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    // Caught up: the next read waits.
    assert!(tokio::time::timeout(Duration::from_millis(50), subscription.next()).await.is_err());
    let waiter = tokio::spawn(async move {
        let e = subscription.next().await.unwrap();
        (e, subscription)
    });
    store.append(&s, ExpectedVersion::Exact(10), vec![event(11), event(12)]).await.unwrap();
    let (e, mut subscription) = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert_eq!(e.position, 11);
    assert_eq!(subscription.next().await.unwrap().position, 12);
    // A subscription from beyond the head starts there.
    let mut late = store.subscribe_all(13);
    store.append(&s, ExpectedVersion::Any, vec![event(13)]).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), late.next()).await.unwrap().unwrap().position, 13);
}

/// A subscription to one partition yields exactly the events of that partition's streams, in position order,
/// catching up and then following live appends, and resumes after any position; streams of no partition are in
/// none.
pub async fn a_partition_subscription_yields_its_streams_events_only<S: EventStore + Clone>(store: S) {
    const COUNT: u32 = 4;
    let streams: Vec<StreamName> = (0..12)
        .map(|i| stream(&format!("{}-{}", ["job", "document", "agent"][i % 3], Uuid::now_v7())))
        .chain([stream("user-alice")])
        .collect();
    for round in 0..5u64 {
        for s in &streams {
            store.append(s, ExpectedVersion::Any, vec![event(round)]).await.unwrap();
        }
    }
    let of = |all: &[Envelope], p: Partition| {
        all.iter().filter(|e| p.contains(&e.stream)).map(|e| e.position).collect::<Vec<_>>()
    };
    let before = read_everything(&store, 1000).await;
    let seen: usize = (0..COUNT).map(|index| of(&before, Partition { index, count: COUNT }).len()).sum();
    for index in 0..COUNT {
        let partition = Partition { index, count: COUNT };
        // Fresh each time: the live appends below add to the partitions.
        let expected = of(&read_everything(&store, 1000).await, partition);
        let mut subscription = store.subscribe_partition(partition, 1).page_size(7);
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next_batch())
                .await
                .expect("a partition's stored events come")
                .unwrap();
            got.extend(batch.iter().map(|e| e.position));
        }
        assert_eq!(got, expected, "partition {partition}");
        // Resumed after its third event, it yields the rest only.
        if expected.len() > 3 {
            let mut resumed = store.subscribe_partition(partition, expected[2] + 1);
            assert_eq!(resumed.next().await.unwrap().position, expected[3]);
        }
        // Live: an append to one of its streams comes; others' do not.
        let mine = streams.iter().find(|s| partition.contains(s));
        let other = streams.iter().find(|s| !partition.contains(s)).unwrap();
        store.append(other, ExpectedVersion::Any, vec![event(99)]).await.unwrap();
        if let Some(mine) = mine {
            let appended = store.append(mine, ExpectedVersion::Any, vec![event(100)]).await.unwrap();
            let live = tokio::time::timeout(Duration::from_secs(10), subscription.next()).await.unwrap().unwrap();
            assert_eq!((live.position, &live.stream), (appended.first_position, mine));
        } else {
            assert!(tokio::time::timeout(Duration::from_millis(100), subscription.next()).await.is_err());
        }
    }
    assert_eq!(seen, 60, "every partitioned stream's events are in exactly one partition, user-alice's in none");
}

/// A subscriber that stops reading does not slow writers or make the store buffer for it; when it reads
/// again it catches up from storage.
pub async fn a_stalled_subscriber_does_not_hold_back_writers<S: EventStore + Clone>(store: S) {
    let mut stalled = store.subscribe_all(1);
    let s = stream("stall");
    store.append(&s, ExpectedVersion::Any, vec![event(0)]).await.unwrap();
    assert_eq!(stalled.next().await.unwrap().position, 1);
    // 5,000 events while the subscriber reads nothing.
    for chunk in 0..50u64 {
        let events = (0..100).map(|i| event(chunk * 100 + i)).collect();
        tokio::time::timeout(Duration::from_secs(30), store.append(&s, ExpectedVersion::Any, events))
            .await
            .expect("a writer waited for a stalled subscriber")
            .unwrap();
    }
    let mut expected = 2;
    while expected <= 5001 {
        let batch = stalled.next_batch().await.unwrap();
        assert!(!batch.is_empty());
        for e in batch {
            assert_eq!(e.position, expected);
            expected += 1;
        }
    }
}

/// A payload of exactly the limit round-trips byte for byte; over-limit payloads, empty appends, too many
/// events and too large pages are typed errors naming both numbers.
pub async fn a_maximal_payload_round_trips_and_limits_are_typed_errors<S: EventStore + Clone>(store: S) {
    let limits = store.limits();
    let s = stream("big");
    let mut payload = vec![0u8; limits.max_payload_bytes];
    rand::rng().fill(payload.as_mut_slice());
    let payload = Bytes::from(payload);
    store.append(&s, ExpectedVersion::NoStream, vec![NewEvent::new("test.big", payload.clone())]).await.unwrap();
    let back = store.read_stream(&s, 1, Direction::Forwards, 1).await.unwrap();
    assert_eq!(back[0].payload, payload);
    assert_eq!(store.read_all(1, 1).await.unwrap()[0].payload, payload);

    let over = vec![NewEvent::new("test.big", vec![1u8; limits.max_payload_bytes + 1])];
    assert_eq!(
        store.append(&s, ExpectedVersion::Any, over).await.unwrap_err(),
        Error::PayloadTooLarge { index: 0, size: limits.max_payload_bytes + 1, limit: limits.max_payload_bytes }
    );
    assert_eq!(store.append(&s, ExpectedVersion::Any, vec![]).await.unwrap_err(), Error::EmptyAppend);
    let many: Vec<NewEvent> = (0..=limits.max_events_per_append as u64).map(event).collect();
    assert_eq!(
        store.append(&s, ExpectedVersion::Any, many).await.unwrap_err(),
        Error::TooManyEvents { count: limits.max_events_per_append + 1, limit: limits.max_events_per_append }
    );
    let heavy: Vec<NewEvent> = (0..limits.max_append_bytes / limits.max_payload_bytes + 1)
        .map(|_| NewEvent::new("test.big", payload.clone()))
        .collect();
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, heavy).await.unwrap_err(),
        Error::AppendTooLarge { limit, .. } if limit == limits.max_append_bytes
    ));
    let page = limits.max_page_size + 1;
    let expected = Error::PageTooLarge { size: page, limit: limits.max_page_size };
    assert_eq!(store.read_all(1, page).await.unwrap_err(), expected);
    assert_eq!(store.read_stream(&s, 1, Direction::Forwards, page).await.unwrap_err(), expected);
    assert_eq!(store.stream_version(&s).await.unwrap(), 1);
}

/// Every field of the envelope survives the store as given, and the store fills in the rest.
pub async fn metadata_round_trips<S: EventStore + Clone>(store: S) {
    let s = stream("meta");
    let correlation = Uuid::now_v7();
    let causation = Uuid::now_v7();
    let given = NewEvent::new("document.uploaded", Bytes::from_static(b"\x81\xa4size\x07"))
        .schema_version(3)
        .tenant("acme")
        .actor("user:alice")
        .correlation_id(correlation)
        .causation_id(causation);
    let plain = NewEvent::new("document.deleted", Bytes::new());
    store.append(&s, ExpectedVersion::NoStream, vec![given.clone(), plain.clone()]).await.unwrap();
    let back = store.read_stream(&s, 1, Direction::Forwards, 10).await.unwrap();
    assert_eq!(back.len(), 2);
    let e = &back[0];
    assert_eq!(
        (e.event_id, &*e.event_type, e.schema_version, &*e.tenant, &*e.actor),
        (given.event_id, "document.uploaded", 3, "acme", "user:alice")
    );
    assert_eq!((e.correlation_id, e.causation_id), (Some(correlation), Some(causation)));
    assert_eq!(e.payload, given.payload);
    assert_eq!((e.stream.as_str(), e.version, e.position), ("meta", 1, 1));
    assert!(e.recorded_at.as_micros() > 0);
    let p = &back[1];
    assert_eq!((p.event_id, p.correlation_id, p.causation_id), (plain.event_id, None, None));
    assert_eq!(p.payload.len(), 0);
    assert_eq!(p.recorded_at, e.recorded_at, "one append is one commit");
    assert_eq!(store.read_all(1, 10).await.unwrap(), back);
    let ids: HashSet<Uuid> = back.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 2);
    // An imported event keeps the time it was first recorded.
    let imported = NewEvent::new("document.deleted", Bytes::new()).recorded_at(crate::Timestamp(1_234_567));
    store.append(&s, ExpectedVersion::Exact(2), vec![imported]).await.unwrap();
    let back = store.read_stream(&s, 3, Direction::Forwards, 1).await.unwrap();
    assert_eq!(back[0].recorded_at, crate::Timestamp(1_234_567));
}
