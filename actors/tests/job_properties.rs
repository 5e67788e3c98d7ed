//! Properties of the job aggregate over random workflows and random step outcomes: a job always finishes;
//! a step is scheduled only when every step it reads from has succeeded, never beyond its attempts, and
//! succeeds at most once; the job succeeds exactly when every step did; and folding the emitted events
//! gives the same state as the one that decided them.

use proptest::prelude::*;
use weft_actors::Aggregate;
use weft_actors::job::{Command, Job, Status, StepState};
use weft_events::Timestamp;
use weft_events::domain::ids::{AgentId, DocumentId, Uuid, WorkflowId};
use weft_events::domain::job::Event;
use weft_events::domain::workflow::{Input, RetryPolicy, Step};

/// A workflow of `deps.len()` steps; step `i` reads from the earlier steps in `deps[i]` (or the job's inputs).
fn workflow(deps: &[Vec<usize>], attempts: &[u32]) -> Vec<Step> {
    deps.iter()
        .enumerate()
        .map(|(i, deps)| Step {
            name: format!("s{i}"),
            agent: AgentId(Uuid::from_u128(i as u128)),
            instruction: "work".into(),
            inputs: if deps.is_empty() {
                vec![Input::JobInputs]
            } else {
                deps.iter().map(|d| Input::Step(format!("s{d}"))).collect()
            },
            timeout_ms: 1_000,
            retry: RetryPolicy { max_attempts: attempts[i], base_delay_ms: 10, max_delay_ms: 100 },
        })
        .collect()
}

fn dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<u32>)> {
    (1usize..8).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| {
                if i == 0 {
                    Just(Vec::new()).boxed()
                } else {
                    proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3)).boxed()
                }
            })
            .collect::<Vec<_>>();
        (deps, proptest::collection::vec(1u32..4, n))
    })
}

/// What happens to one attempt: succeeds, or fails (retryable or not) with a jitter.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Failure { retryable: bool, jitter: f64 },
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Success),
        2 => (any::<bool>(), 0.0..=1.0f64).prop_map(|(retryable, jitter)| Outcome::Failure { retryable, jitter }),
    ]
}

proptest! {
    #[test]
    fn every_job_finishes_and_schedules_steps_only_when_ready((deps, attempts) in dag(), outcomes in proptest::collection::vec(outcome(), 64)) {
        let steps = workflow(&deps, &attempts);
        let mut now = Timestamp(1_000_000);
        let mut state = Job::default();
        let mut history: Vec<Event> = Vec::new();
        let apply = |state: &mut Job, history: &mut Vec<Event>, command: Command| {
            let events = state.decide(&command).unwrap_or_else(|r| panic!("{command:?} rejected: {r}"));
            for event in &events {
                if let Event::StepScheduled(s) = event {
                    let step = steps.iter().find(|x| x.name == s.step).unwrap();
                    assert!(s.attempt <= step.retry.max_attempts, "attempt {} of {}", s.attempt, s.step);
                    for dep in weft_actors::workflow::dependencies(step) {
                        assert!(matches!(state.progress.get(dep), Some(StepState::Succeeded { .. })) || events.iter().any(|e| matches!(e, Event::StepSucceeded(x) if x.step == dep)),
                            "{} scheduled before {dep} succeeded", s.step);
                    }
                }
                *state = std::mem::take(state).evolve(event);
            }
            history.extend(events);
        };
        apply(&mut state, &mut history, Command::Submit {
            workflow: WorkflowId(Uuid::from_u128(1)),
            workflow_version: 1,
            steps: steps.clone(),
            inputs: vec![DocumentId(Uuid::from_u128(2))],
            priority: 0,
            idempotency_key: None,
            parameters: Default::default(),
            input_versions: Default::default(),
            replay_of: None,
            at: now,
        });
        let mut next_outcome = outcomes.iter().cycle();
        for _ in 0..1_000 {
            if state.status != Status::Running {
                break;
            }
            now = now.plus_millis(1);
            // Act on the first step that can move.
            let (name, step_state) = state.progress.iter().find(|(_, s)| !matches!(s, StepState::Waiting | StepState::Succeeded { .. } | StepState::Failed { .. })).map(|(n, s)| (n.clone(), *s)).expect("a running job has a step that can move");
            let command = match step_state {
                StepState::Scheduled { attempt } => Command::StartStep { step: name, attempt, at: now },
                StepState::Running { attempt } => match next_outcome.next().unwrap() {
                    Outcome::Success => Command::CompleteStep { step: name, attempt, output: DocumentId(Uuid::from_u128(1000 + u128::from(attempt))), at: now },
                    Outcome::Failure { retryable, jitter } => Command::FailStep { step: name, attempt, error: "boom".into(), retryable: *retryable, jitter: *jitter, at: now },
                },
                StepState::RetryWaiting { attempt, due_at } => {
                    now = now.max(due_at);
                    Command::RetryDue { step: name, attempt, at: now }
                }
                _ => unreachable!(),
            };
            apply(&mut state, &mut history, command);
        }
        prop_assert_ne!(state.status, Status::Running, "the job did not finish");
        let all_succeeded = state.progress.values().all(|s| matches!(s, StepState::Succeeded { .. }));
        prop_assert_eq!(state.status == Status::Succeeded, all_succeeded);
        let successes = history.iter().filter(|e| matches!(e, Event::StepSucceeded(_))).count();
        prop_assert!(successes <= steps.len());
        prop_assert_eq!(Job::replay(&history), state);
    }
}
