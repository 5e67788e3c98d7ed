//! The job aggregate's given/when/then tests.
use super::*;
use crate::testkit::given;
use crate::workflow::tests::step;
use weft_events::domain::ids::WorkflowId;
use weft_events::domain::job::Level;

const AT: Timestamp = Timestamp(1_000_000);

fn wf() -> WorkflowId {
    WorkflowId(weft_events::domain::ids::Uuid::from_u128(7))
}

fn input() -> DocumentId {
    DocumentId(weft_events::domain::ids::Uuid::from_u128(8))
}

fn out(n: u128) -> DocumentId {
    DocumentId(weft_events::domain::ids::Uuid::from_u128(100 + n))
}

/// extract -> (summarise, keywords) -> report
fn steps() -> Vec<Step> {
    vec![
        step("extract", &[]),
        step("summarise", &["extract"]),
        step("keywords", &["extract"]),
        step("report", &["summarise", "keywords"]),
    ]
}

fn submit() -> Command {
    Command::Submit {
        workflow: wf(),
        workflow_version: 1,
        steps: steps(),
        inputs: vec![input()],
        priority: 0,
        idempotency_key: Some("k1".into()),
        parameters: BTreeMap::new(),
        input_versions: Default::default(),
        replay_of: None,
        at: AT,
    }
}

fn submitted() -> Event {
    Submitted {
        workflow: wf(),
        workflow_version: 1,
        steps: steps(),
        inputs: vec![input()],
        priority: 0,
        idempotency_key: Some("k1".into()),
        parameters: BTreeMap::new(),
        input_versions: Default::default(),
        replay_of: None,
        at: AT,
    }
    .into()
}

fn scheduled(step: &str, attempt: u32) -> Event {
    StepScheduled { step: step.into(), attempt, at: AT }.into()
}

fn started(step: &str, attempt: u32) -> Event {
    StepStarted { step: step.into(), attempt, at: AT }.into()
}

fn succeeded(step: &str, attempt: u32, n: u128) -> Event {
    StepSucceeded { step: step.into(), attempt, output: out(n), at: AT }.into()
}

fn complete(step: &str, attempt: u32, n: u128) -> Command {
    Command::CompleteStep { step: step.into(), attempt, output: out(n), at: AT }
}

fn fail(step: &str, attempt: u32, retryable: bool, jitter: f64) -> Command {
    Command::FailStep { step: step.into(), attempt, error: "boom".into(), retryable, jitter, at: AT }
}

/// A job whose `extract` step is running.
fn running() -> Vec<Event> {
    vec![submitted(), scheduled("extract", 1), started("extract", 1)]
}

#[test]
fn submitting_a_job_schedules_the_steps_that_read_only_its_inputs() {
    given::<Job>([]).when(submit()).then([submitted(), scheduled("extract", 1)]);
}

#[test]
fn submitting_twice_is_rejected() {
    given::<Job>([submitted()]).when(submit()).then_rejected(Rejection::AlreadySubmitted);
}

#[test]
fn submitting_an_invalid_workflow_or_bad_inputs_is_rejected() {
    let mut cyclic = submit();
    if let Command::Submit { steps, .. } = &mut cyclic {
        *steps = vec![step("a", &["b"]), step("b", &["a"])];
    }
    given::<Job>([])
        .when(cyclic)
        .then_rejected(Rejection::InvalidWorkflow(workflow::Rejection::Cycle(vec!["a".into(), "b".into()])));
    let mut no_inputs = submit();
    if let Command::Submit { inputs, .. } = &mut no_inputs {
        inputs.clear();
    }
    assert!(matches!(Job::default().decide(&no_inputs), Err(Rejection::InvalidInputs(_))));
    let mut twice = submit();
    if let Command::Submit { inputs, .. } = &mut twice {
        *inputs = vec![input(), input()];
    }
    assert!(matches!(Job::default().decide(&twice), Err(Rejection::InvalidInputs(_))));
}

#[test]
fn starting_a_scheduled_step_records_it() {
    given::<Job>([submitted(), scheduled("extract", 1)])
        .when(Command::StartStep { step: "extract".into(), attempt: 1, at: AT })
        .then([started("extract", 1)]);
}

#[test]
fn starting_a_step_that_is_not_scheduled_is_rejected() {
    given::<Job>([submitted(), scheduled("extract", 1)])
        .when(Command::StartStep { step: "report".into(), attempt: 1, at: AT })
        .then_rejected(Rejection::WrongStepState { step: "report".into(), state: StepState::Waiting });
    given::<Job>([submitted(), scheduled("extract", 1)])
        .when(Command::StartStep { step: "extract".into(), attempt: 2, at: AT })
        .then_rejected(Rejection::WrongStepState {
            step: "extract".into(),
            state: StepState::Scheduled { attempt: 1 },
        });
    given::<Job>([submitted()])
        .when(Command::StartStep { step: "nope".into(), attempt: 1, at: AT })
        .then_rejected(Rejection::UnknownStep("nope".into()));
    given::<Job>([])
        .when(Command::StartStep { step: "extract".into(), attempt: 1, at: AT })
        .then_rejected(Rejection::NotSubmitted);
}

#[test]
fn a_start_reported_twice_changes_nothing() {
    given::<Job>(running()).when(Command::StartStep { step: "extract".into(), attempt: 1, at: AT }).then([]);
}

#[test]
fn completing_a_step_schedules_the_steps_it_unblocks() {
    given::<Job>(running()).when(complete("extract", 1, 1)).then([
        succeeded("extract", 1, 1),
        scheduled("summarise", 1),
        scheduled("keywords", 1),
    ]);
}

#[test]
fn a_step_waits_until_every_step_it_reads_from_has_succeeded() {
    let mut history = running();
    history.extend([succeeded("extract", 1, 1), scheduled("summarise", 1), scheduled("keywords", 1)]);
    given::<Job>(history.clone()).when(complete("summarise", 1, 2)).then([succeeded("summarise", 1, 2)]);
    history.push(succeeded("summarise", 1, 2));
    given::<Job>(history).when(complete("keywords", 1, 3)).then([succeeded("keywords", 1, 3), scheduled("report", 1)]);
}

#[test]
fn completing_the_last_step_succeeds_the_job() {
    let mut history = running();
    history.extend([
        succeeded("extract", 1, 1),
        scheduled("summarise", 1),
        scheduled("keywords", 1),
        succeeded("summarise", 1, 2),
        succeeded("keywords", 1, 3),
        scheduled("report", 1),
    ]);
    given::<Job>(history).when(complete("report", 1, 4)).then([succeeded("report", 1, 4), Succeeded { at: AT }.into()]);
}

#[test]
fn completing_a_step_twice_changes_nothing_but_a_different_output_is_rejected() {
    let mut history = running();
    history.push(succeeded("extract", 1, 1));
    given::<Job>(history.clone()).when(complete("extract", 1, 1)).then([]);
    given::<Job>(history).when(complete("extract", 1, 9)).then_rejected(Rejection::WrongStepState {
        step: "extract".into(),
        state: StepState::Succeeded { attempt: 1, output: out(1) },
    });
}

#[test]
fn a_retryable_failure_schedules_a_retry_with_backoff() {
    // base 1 s: the retry of attempt 1 waits between 0.5 and 1 s; jitter 0.5 gives 0.75 s.
    given::<Job>(running()).when(fail("extract", 1, true, 0.5)).then([
        StepFailed { step: "extract".into(), attempt: 1, error: "boom".into(), retryable: true, at: AT }.into(),
        RetryScheduled { step: "extract".into(), attempt: 2, due_at: AT.plus_millis(750) }.into(),
    ]);
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let s = step("x", &[]); // base 1 s, max 10 s
    let delays: Vec<u64> = (2..=7).map(|next| retry_delay_ms(&s, next, 1.0)).collect();
    assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
    assert_eq!(retry_delay_ms(&s, 3, 0.0), 1_000);
    assert_eq!(retry_delay_ms(&s, 200, 1.0), 10_000);
}

#[test]
fn a_failure_without_attempts_left_or_not_retryable_fails_the_job() {
    given::<Job>(running()).when(fail("extract", 1, false, 0.0)).then([
        StepFailed { step: "extract".into(), attempt: 1, error: "boom".into(), retryable: false, at: AT }.into(),
        Failed { step: "extract".into(), reason: "boom".into(), at: AT }.into(),
    ]);
}

fn dead_lettered() -> Vec<Event> {
    let mut history = vec![submitted(), scheduled("extract", 3), started("extract", 3)];
    history
        .push(StepFailed { step: "extract".into(), attempt: 3, error: "boom".into(), retryable: true, at: AT }.into());
    history.push(DeadLettered { step: "extract".into(), attempts: 3, last_error: "boom".into(), at: AT }.into());
    history
}

#[test]
fn a_retryable_failure_on_the_last_attempt_dead_letters_the_job_with_its_error() {
    let last = vec![submitted(), scheduled("extract", 3), started("extract", 3)];
    let history = dead_lettered();
    given::<Job>(last).when(fail("extract", 3, true, 0.0)).then(history[3..].to_vec());
    assert_eq!(Job::replay(&history).status, Status::DeadLettered);
}

#[test]
fn retrying_a_dead_lettered_job_runs_its_failed_step_again_with_a_fresh_set_of_attempts() {
    let retry = Command::Retry { reason: "the provider is back".into(), at: AT };
    let mut history = dead_lettered();
    given::<Job>(history.clone()).when(retry.clone()).then([
        Retried { steps: vec!["extract".into()], reason: "the provider is back".into(), at: AT }.into(),
        scheduled("extract", 4),
    ]);
    history.extend(Job::replay(&history).decide(&retry).unwrap());
    history.push(started("extract", 4));
    let job = Job::replay(&history);
    assert_eq!(job.status, Status::Running);
    // Attempt 4 is the first of the new round: its failure is retried (max 3 attempts per round) ...
    let events = given::<Job>(history.clone()).when(fail("extract", 4, true, 1.0)).events();
    assert_eq!(
        events[1],
        RetryScheduled { step: "extract".into(), attempt: 5, due_at: AT.plus_millis(1_000) }.into(),
        "{events:?}"
    );
    // ... and its success carries on with the job.
    given::<Job>(history).when(complete("extract", 4, 1)).then([
        succeeded("extract", 4, 1),
        scheduled("summarise", 1),
        scheduled("keywords", 1),
    ]);
}

#[test]
fn retrying_a_failed_job_keeps_the_outputs_of_its_steps_that_succeeded() {
    // extract succeeded; summarise failed for good while keywords was running.
    let mut history = running();
    history.extend([
        succeeded("extract", 1, 1),
        scheduled("summarise", 1),
        scheduled("keywords", 1),
        started("keywords", 1),
        StepFailed { step: "summarise".into(), attempt: 1, error: "bad".into(), retryable: false, at: AT }.into(),
        Failed { step: "summarise".into(), reason: "bad".into(), at: AT }.into(),
    ]);
    given::<Job>(history.clone()).when(Command::Retry { reason: "fixed the agent".into(), at: AT }).then([
        Retried { steps: vec!["summarise".into(), "keywords".into()], reason: "fixed the agent".into(), at: AT }.into(),
        scheduled("summarise", 2),
        scheduled("keywords", 2),
    ]);
    // The old attempt's late report is refused.
    history.extend(Job::replay(&history).decide(&Command::Retry { reason: "r".into(), at: AT }).unwrap());
    let job = Job::replay(&history);
    assert_eq!(job.progress["extract"], StepState::Succeeded { attempt: 1, output: out(1) });
    assert!(matches!(job.decide(&complete("keywords", 1, 3)), Err(Rejection::WrongStepState { .. })));
}

#[test]
fn retrying_a_job_that_has_not_failed_is_rejected() {
    let retry = Command::Retry { reason: "again".into(), at: AT };
    given::<Job>(running()).when(retry.clone()).then_rejected(Rejection::NotRetryable(Status::Running));
    given::<Job>([]).when(retry.clone()).then_rejected(Rejection::NotRetryable(Status::Unsubmitted));
    let mut cancelled = running();
    cancelled.push(Cancelled { reason: "x".into(), at: AT }.into());
    given::<Job>(cancelled).when(retry).then_rejected(Rejection::NotRetryable(Status::Cancelled));
    given::<Job>(dead_lettered())
        .when(Command::Retry { reason: " ".into(), at: AT })
        .then_rejected(Rejection::InvalidText { field: "reason".into(), limit: MAX_MESSAGE_BYTES });
}

#[test]
fn submitting_with_bad_parameters_is_rejected() {
    for parameters in [
        BTreeMap::from([("has space".to_owned(), "v".to_owned())]),
        BTreeMap::from([(String::new(), "v".to_owned())]),
        BTreeMap::from([("long".to_owned(), "v".repeat(MAX_PARAMETER_VALUE_BYTES + 1))]),
        (0..=MAX_PARAMETERS).map(|n| (format!("p{n}"), String::new())).collect(),
    ] {
        let mut command = submit();
        if let Command::Submit { parameters: p, .. } = &mut command {
            *p = parameters;
        }
        assert!(matches!(Job::default().decide(&command), Err(Rejection::InvalidParameters(_))), "{command:?}");
    }
}

#[test]
fn a_failure_with_a_bad_jitter_or_of_another_attempt_is_rejected() {
    given::<Job>(running()).when(fail("extract", 1, true, 1.5)).then_rejected(Rejection::InvalidJitter(1.5));
    assert!(matches!(
        Job::replay(&running()).decide(&fail("extract", 1, true, f64::NAN)),
        Err(Rejection::InvalidJitter(_))
    ));
    given::<Job>(running())
        .when(fail("extract", 2, true, 0.0))
        .then_rejected(Rejection::WrongStepState { step: "extract".into(), state: StepState::Running { attempt: 1 } });
}

#[test]
fn a_due_retry_schedules_the_next_attempt() {
    let mut history = running();
    let due_at = AT.plus_millis(750);
    history.push(RetryScheduled { step: "extract".into(), attempt: 2, due_at }.into());
    given::<Job>(history.clone())
        .when(Command::RetryDue { step: "extract".into(), attempt: 2, at: due_at })
        .then([StepScheduled { step: "extract".into(), attempt: 2, at: due_at }.into()]);
    given::<Job>(history)
        .when(Command::RetryDue { step: "extract".into(), attempt: 2, at: AT })
        .then_rejected(Rejection::RetryNotDue { due_at });
}

#[test]
fn appending_to_the_log_records_the_line() {
    given::<Job>([submitted()])
        .when(Command::AppendLog { level: Level::Info, message: "started".into(), at: AT })
        .then([LogAppended { level: Level::Info, message: "started".into(), at: AT }.into()]);
}

#[test]
fn an_empty_or_oversized_log_line_or_a_full_log_is_rejected() {
    let line = |message: String| Command::AppendLog { level: Level::Info, message, at: AT };
    given::<Job>([submitted()])
        .when(line(String::new()))
        .then_rejected(Rejection::InvalidText { field: "message".into(), limit: MAX_MESSAGE_BYTES });
    given::<Job>([submitted()])
        .when(line("x".repeat(MAX_MESSAGE_BYTES + 1)))
        .then_rejected(Rejection::InvalidText { field: "message".into(), limit: MAX_MESSAGE_BYTES });
    let mut full = Job::replay(&[submitted()]);
    full.log_lines = MAX_LOG_LINES;
    assert_eq!(full.decide(&line("one more".into())), Err(Rejection::LogFull { limit: MAX_LOG_LINES }));
    given::<Job>([]).when(line("early".into())).then_rejected(Rejection::NotSubmitted);
}

#[test]
fn cancelling_a_running_job_records_why() {
    given::<Job>(running()).when(Command::Cancel { reason: "not needed".into(), at: AT }).then([Cancelled {
        reason: "not needed".into(),
        at: AT,
    }
    .into()]);
}

#[test]
fn commands_to_a_finished_job_are_rejected() {
    let mut history = running();
    history.push(Cancelled { reason: "x".into(), at: AT }.into());
    given::<Job>(history.clone())
        .when(Command::Cancel { reason: "again".into(), at: AT })
        .then_rejected(Rejection::Finished(Status::Cancelled));
    given::<Job>(history).when(complete("extract", 1, 1)).then_rejected(Rejection::Finished(Status::Cancelled));
}
