//! A process that overlaps ([`Process::OVERLAP`]) handles the events of different instances at once and each
//! instance's in log order; its checkpoint never passes an event it has not handled, so a process stopped at
//! any moment and started again handles every event at least once, in order per instance.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use weft_actors::process::{Process, Retry, RunOptions, checkpoint_name, start};
use weft_events::{Envelope, EventStore, EventWrite, ExpectedVersion, MemoryStore, NewEvent, StreamName};

/// Records what it handles; sleeps a time taken from the event, fails the first try of some.
struct Recorder {
    handled: Handled,
    in_hand: Rc<RefCell<HashMap<String, u64>>>,
    most_at_once: Rc<RefCell<usize>>,
    failed_once: Rc<RefCell<std::collections::HashSet<u64>>>,
}

#[async_trait::async_trait(?Send)]
impl Process for Recorder {
    const NAME: &'static str = "recorder";
    const OVERLAP: usize = 8;
    type State = ();

    fn instance(&self, event: &Envelope) -> Option<String> {
        // Events of type `skip` are none of this process's business.
        (&*event.event_type != "test.skip").then(|| event.stream.as_str().to_owned())
    }

    async fn handle(&self, _state: &mut (), event: &Envelope) -> Result<(), Retry> {
        let instance = event.stream.as_str().to_owned();
        {
            let mut in_hand = self.in_hand.borrow_mut();
            assert!(!in_hand.contains_key(&instance), "two events of {instance} at once");
            in_hand.insert(instance.clone(), event.position);
            let mut most = self.most_at_once.borrow_mut();
            *most = (*most).max(in_hand.len());
        }
        let wait = u64::from(event.payload.first().copied().unwrap_or(0) % 4);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        self.in_hand.borrow_mut().remove(&instance);
        if event.position.is_multiple_of(7) && self.failed_once.borrow_mut().insert(event.position) {
            return Err(Retry("the first try of every seventh event fails".into()));
        }
        self.handled.borrow_mut().push((instance, event.position));
        Ok(())
    }
}

/// What a recorder handled, in order.
type Handled = Rc<RefCell<Vec<(String, u64)>>>;

fn recorder() -> (Recorder, Handled, Rc<RefCell<usize>>) {
    let handled = Rc::new(RefCell::new(Vec::new()));
    let most = Rc::new(RefCell::new(0));
    let recorder = Recorder {
        handled: handled.clone(),
        in_hand: Default::default(),
        most_at_once: most.clone(),
        failed_once: Default::default(),
    };
    (recorder, handled, most)
}

fn options() -> RunOptions {
    RunOptions { checkpoint_every_events: 5, checkpoint_every_ms: 5, retry_min_ms: 1, retry_max_ms: 5 }
}

/// Appends one event per entry of `plan` (instance, wait, skipped) in order; their positions by instance.
async fn append(store: &MemoryStore, plan: &[(u8, u8, bool)]) -> BTreeMap<String, Vec<u64>> {
    let mut positions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (instance, wait, skipped) in plan {
        let stream = StreamName::new(format!("thing-{instance}")).unwrap();
        let kind = if *skipped { "test.skip" } else { "test.happened" };
        let appended =
            store.append(&stream, ExpectedVersion::Any, vec![NewEvent::new(kind, vec![*wait])]).await.unwrap();
        if !skipped {
            positions.entry(stream.as_str().to_owned()).or_default().push(appended.last_position);
        }
    }
    positions
}

/// Every instance's events, handled in log order (repeats after a restart allowed, never a step back within
/// one run).
fn check_order(handled: &[(String, u64)], expected: &BTreeMap<String, Vec<u64>>) {
    let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (instance, position) in handled {
        seen.entry(instance).or_default().push(*position);
    }
    for (instance, positions) in expected {
        let got = seen.get(instance.as_str()).cloned().unwrap_or_default();
        let mut unique = got.clone();
        unique.dedup();
        assert_eq!(&unique, positions, "{instance}: handled {got:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn each_instance_is_handled_in_order_and_a_restart_misses_nothing(
        plan in proptest::collection::vec((0u8..6, any::<u8>(), proptest::bool::weighted(0.2)), 1..120),
        stop_after_ms in 0u64..40,
    ) {
        actix_rt::System::new().block_on(async move {
            let memory = MemoryStore::default();
            let store: Arc<dyn EventStore> = Arc::new(memory.clone());
            let expected = append(&memory, &plan).await;
            let total: usize = expected.values().map(Vec::len).sum();
            // A first run, stopped at a random moment.
            let (first, handled_first, most) = recorder();
            let running = start(first, store.clone(), options());
            tokio::time::sleep(Duration::from_millis(stop_after_ms)).await;
            running.stop().await.unwrap();
            let checkpoint = store.load_checkpoint(&checkpoint_name("recorder")).await.unwrap();
            let saved = checkpoint.map_or(0, |c| c.position);
            // Nothing at or below the checkpoint was left unhandled.
            for positions in expected.values() {
                for p in positions.iter().filter(|p| **p <= saved) {
                    assert!(handled_first.borrow().iter().any(|(_, h)| h == p), "{p} ≤ checkpoint {saved} not handled");
                }
            }
            check_order(&handled_first.borrow().clone(), &expected.iter().map(|(i, ps)| {
                let got: Vec<u64> = handled_first.borrow().iter().filter(|(h, _)| h == i).map(|(_, p)| *p).collect();
                (i.clone(), ps.iter().copied().filter(|p| got.contains(p)).collect())
            }).collect());
            // The second run handles everything after the checkpoint, each instance in order.
            let (second, handled_second, _) = recorder();
            let running = start(second, store.clone(), options());
            let expected_second: BTreeMap<String, Vec<u64>> =
                expected.iter().map(|(i, ps)| (i.clone(), ps.iter().copied().filter(|p| *p > saved).collect())).collect();
            let rest: usize = expected_second.values().map(Vec::len).sum();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while handled_second.borrow().len() < rest {
                assert!(std::time::Instant::now() < deadline, "only {} of {rest} handled", handled_second.borrow().len());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            running.stop().await.unwrap();
            assert!(total >= rest);
            check_order(&handled_second.borrow().clone(), &expected_second);
            assert!(*most.borrow() <= 8);
        });
    }
}

#[actix_rt::test]
async fn events_of_different_instances_are_handled_at_once() {
    let memory = MemoryStore::default();
    let store: Arc<dyn EventStore> = Arc::new(memory.clone());
    // Eight instances, five events each, every handler waiting 3 ms.
    let plan: Vec<(u8, u8, bool)> = (0..40).map(|i| (i % 8, 3, false)).collect();
    let expected = append(&memory, &plan).await;
    let (recorder, handled, most) = recorder();
    let running = start(recorder, store.clone(), options());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while handled.borrow().len() < 40 {
        assert!(std::time::Instant::now() < deadline, "only {} of 40 handled", handled.borrow().len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop().await.unwrap();
    check_order(&handled.borrow().clone(), &expected);
    assert!(*most.borrow() > 1, "one event at a time");
    let saved = store.load_checkpoint(&checkpoint_name("recorder")).await.unwrap().unwrap();
    assert_eq!(saved.position, 40, "the checkpoint reaches the last event once all are handled");
}
