//! The timer service: fires what the log says is due later.
//!
//! - a retry (`job.retry_scheduled`): at its due time the job is told the retry is due;
//! - a step's time-out (`job.step_scheduled` plus the step's `timeout_ms`): if the attempt has not finished
//!   by then, it fails as retryable;
//! - a schedule's next occurrence (after `schedule.created`, `resumed` or `fired`): the schedule's jobs are
//!   submitted and the firing recorded.
//!
//! Timers are derived from events, and the pending ones are kept in the checkpointed state; after a restart
//! the service resumes from its checkpoint, so every pending timer is re-armed, and the events since re-arm
//! the rest. A timer due while the service was down fires on start. Each fires a command with an id derived
//! from the timer, so a timer fired twice (fired, then a crash before the checkpoint) changes nothing.
//!
//! A schedule whose occurrences were missed (the service was down, or the occurrence came while the
//! previous one was being fired) fires once, for the latest missed occurrence, not once per occurrence
//! (`misfire: fire_once`, the default); with `misfire: skip`, an occurrence found more than
//! [`MISFIRE_THRESHOLD_MS`] late is not fired at all and the schedule waits for the next one.
//!
//! A schedule whose target is a document selector asks a [`Select`] (the node's documents read model, once
//! it has caught up with the log) for the uploaded documents that match; with `since_last_firing`, only
//! those whose latest upload is after the log position the last firing took them up to, which the firing
//! records, so each upload is taken by exactly one firing. Without a [`Select`] such schedules are skipped
//! with a warning. An occurrence with no documents to run over submits nothing and records no firing.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use weft_events::domain::ids::{DocumentId, JobId, ScheduleId, Uuid};
use weft_events::domain::schedule::{GroupBy, Misfire, Strategy, Target};
use weft_events::domain::{job as job_events, schedule as schedule_events};
use weft_events::{Envelope, Timestamp};

use super::{Gateway, Process, Retry, decode, derived_id, inspect, jitter_of, send};
use crate::document::Document;
use crate::job::{self, Job, Rejection as JobRejection};
use crate::schedule;
use crate::schedule::Schedule;
use crate::workflow::Workflow;

/// How late an occurrence may be found and still fire under `misfire: skip` (Quartz's default threshold).
pub const MISFIRE_THRESHOLD_MS: u64 = 60_000;

/// Documents a selector picked for one firing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selected {
    /// The uploaded documents that match, oldest upload first, at most the limit asked for.
    pub documents: Vec<DocumentId>,
    /// The log position the uploads were taken up to: the store's head when all that match were taken, the
    /// last one's position when the limit cut them short (the next firing takes the rest).
    pub through_position: u64,
}

/// Finds the uploaded documents a schedule's selector matches.
#[async_trait::async_trait(?Send)]
pub trait Select: 'static {
    /// The documents `target` (a [`Target::Selector`]) matches, at most `limit`; with `after_position`, only
    /// those whose latest upload is at a later log position. An error is retried with back-off.
    async fn select(&self, target: &Target, after_position: Option<u64>, limit: usize) -> Result<Selected, String>;
}

/// What a timer does when it fires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Timer {
    /// Tell the job a retry is due.
    Retry {
        /// The job.
        job: JobId,
        /// The step.
        step: String,
        /// The attempt that is due.
        attempt: u32,
    },
    /// Fail an attempt that has not finished in time.
    Timeout {
        /// The job.
        job: JobId,
        /// The step.
        step: String,
        /// The attempt.
        attempt: u32,
        /// The step's time-out.
        timeout_ms: u64,
    },
    /// Fire a schedule.
    Schedule {
        /// The schedule.
        schedule: ScheduleId,
    },
}

/// The pending timers, and the step time-outs of running jobs.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Timers {
    /// Pending timers by due time.
    pending: BTreeSet<(Timestamp, Timer)>,
    /// The due time of each pending timer.
    due: BTreeMap<Timer, Timestamp>,
    /// The time-out of each step of each running job.
    timeouts: BTreeMap<JobId, BTreeMap<String, u64>>,
}

impl Timers {
    fn arm(&mut self, at: Timestamp, timer: Timer) {
        self.disarm(&timer);
        self.pending.insert((at, timer.clone()));
        self.due.insert(timer, at);
    }

    fn disarm(&mut self, timer: &Timer) {
        if let Some(at) = self.due.remove(timer) {
            self.pending.remove(&(at, timer.clone()));
        }
    }

    /// Pending timers, earliest first.
    pub fn pending(&self) -> impl Iterator<Item = &(Timestamp, Timer)> {
        self.pending.iter()
    }
}

/// See the module doc.
pub struct TimerService<G> {
    gateway: G,
    select: Option<Rc<dyn Select>>,
}

impl<G: Gateway> TimerService<G> {
    /// A timer service sending its commands through `gateway`, selecting documents with `select`.
    pub fn new(gateway: G, select: Option<Rc<dyn Select>>) -> Self {
        Self { gateway, select }
    }

    fn job_event(timers: &mut Timers, job: JobId, event: job_events::Event) {
        use job_events::Event as E;
        match event {
            E::Submitted(e) => {
                let steps = e.steps.into_iter().map(|s| (s.name, s.timeout_ms)).collect();
                timers.timeouts.insert(job, steps);
            }
            E::StepScheduled(e) => {
                timers.disarm(&Timer::Retry { job, step: e.step.clone(), attempt: e.attempt });
                if let Some(&timeout_ms) = timers.timeouts.get(&job).and_then(|steps| steps.get(&e.step)) {
                    let timer = Timer::Timeout { job, step: e.step, attempt: e.attempt, timeout_ms };
                    timers.arm(e.at.plus_millis(timeout_ms), timer);
                }
            }
            E::RetryScheduled(e) => timers.arm(e.due_at, Timer::Retry { job, step: e.step, attempt: e.attempt }),
            E::StepSucceeded(job_events::StepSucceeded { step, attempt, .. })
            | E::StepFailed(job_events::StepFailed { step, attempt, .. }) => {
                let timeout_ms = timers.timeouts.get(&job).and_then(|steps| steps.get(&step)).copied();
                if let Some(timeout_ms) = timeout_ms {
                    timers.disarm(&Timer::Timeout { job, step, attempt, timeout_ms });
                }
            }
            E::Succeeded(_) | E::Failed(_) | E::DeadLettered(_) | E::Cancelled(_) => {
                timers.timeouts.remove(&job);
            }
            // Handled in `handle`: the time-outs come back from the job's state.
            E::Retried(_) => {}
            E::StepStarted(_) | E::LogAppended(_) => {}
        }
    }

    /// Arms the schedule's timer for its next occurrence, or disarms it when it has none (paused, deleted).
    async fn rearm_schedule(&self, timers: &mut Timers, schedule: ScheduleId) -> Result<(), Retry> {
        let state = inspect::<Schedule, _>(&self.gateway, &schedule.stream()).await?;
        match state.next_due() {
            Some(due) => timers.arm(due, Timer::Schedule { schedule }),
            None => timers.disarm(&Timer::Schedule { schedule }),
        }
        Ok(())
    }

    async fn fire_one(&self, timers: &mut Timers, at: Timestamp, timer: &Timer, now: Timestamp) -> Result<(), Retry> {
        match timer {
            Timer::Retry { job, step, attempt } => {
                let command = job::Command::RetryDue { step: step.clone(), attempt: *attempt, at: now };
                let id = derived_id(job.0, &format!("retry/{step}/{attempt}"));
                match send::<Job, _>(&self.gateway, &job.stream(), id, command, Self::NAME, None).await? {
                    // This clock is behind the one that scheduled the retry: wait for it.
                    Err(JobRejection::RetryNotDue { due_at }) => {
                        timers.arm(due_at.max(at.plus_millis(1)), timer.clone())
                    }
                    _ => timers.disarm(timer),
                }
            }
            Timer::Timeout { job, step, attempt, timeout_ms } => {
                let id = derived_id(job.0, &format!("timeout/{step}/{attempt}"));
                let command = job::Command::FailStep {
                    step: step.clone(),
                    attempt: *attempt,
                    error: format!("timed out after {timeout_ms} ms"),
                    retryable: true,
                    jitter: jitter_of(id),
                    at: now,
                };
                // A rejection means the attempt finished in time after all.
                send::<Job, _>(&self.gateway, &job.stream(), id, command, Self::NAME, None).await?.ok();
                timers.disarm(timer);
            }
            Timer::Schedule { schedule } => match self.fire_schedule(*schedule, at, now).await? {
                Some(next) => timers.arm(next, timer.clone()),
                None => timers.disarm(timer),
            },
        }
        Ok(())
    }

    /// Submits the jobs of the schedule's latest occurrence due by `now` (from `armed` on) and records the
    /// firing. Returns when the schedule's timer is next due; `None` when it is not active.
    async fn fire_schedule(
        &self,
        id: ScheduleId,
        armed: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, Retry> {
        let stream = id.stream();
        let schedule = inspect::<Schedule, _>(&self.gateway, &stream).await?;
        let (Some(rule), Some(workflow_id), Some(target), Some(strategy)) =
            (schedule.rule(), schedule.workflow, schedule.target.clone(), schedule.strategy)
        else {
            return Ok(None);
        };
        let Some(next_due) = schedule.next_due() else { return Ok(None) };
        // The latest occurrence due by now.
        let mut due_at = armed.max(next_due);
        while let Some(next) = rule.next_after(due_at).filter(|next| *next <= now) {
            due_at = next;
        }
        if due_at > now {
            return Ok(Some(due_at));
        }
        let after = rule.next_after(due_at);
        let late_ms = u64::try_from(now.as_micros().saturating_sub(due_at.as_micros()) / 1000).unwrap_or(u64::MAX);
        if schedule.misfire == Misfire::Skip && late_ms > MISFIRE_THRESHOLD_MS {
            tracing::info!(schedule = %id, late_ms, "an occurrence was missed; skipping it (misfire: skip)");
            return Ok(after);
        }
        let workflow = inspect::<Workflow, _>(&self.gateway, &workflow_id.stream()).await?;
        if workflow.version == 0 {
            tracing::warn!(schedule = %id, workflow = %workflow_id, "the schedule's workflow is not defined; skipping the occurrence");
            return Ok(after);
        }
        if workflow.archived || workflow.deleted {
            tracing::warn!(schedule = %id, workflow = %workflow_id, "the schedule's workflow is archived or deleted; skipping the occurrence");
            return Ok(after);
        }
        let (documents, through_position) = match &target {
            Target::Documents(documents) => (documents.clone(), None),
            Target::Selector { since_last_firing, .. } => {
                let Some(select) = &self.select else {
                    tracing::warn!(schedule = %id, "this node cannot select documents; skipping the occurrence");
                    return Ok(after);
                };
                let since = since_last_firing.then(|| schedule.through_position.unwrap_or(0));
                let selected = select
                    .select(&target, since, schedule::MAX_ITEMS)
                    .await
                    .map_err(|e| Retry(format!("selecting the documents of schedule {id}: {e}")))?;
                (selected.documents, since_last_firing.then_some(selected.through_position))
            }
        };
        if documents.is_empty() {
            tracing::debug!(schedule = %id, "no documents to run over this time");
            return Ok(after);
        }
        let groups = self.groups(documents, strategy).await?;
        let mut jobs = Vec::with_capacity(groups.len());
        for (index, inputs) in groups.into_iter().enumerate() {
            let job = JobId(Uuid::new_v5(&id.0, format!("{}/{index}", due_at.as_micros()).as_bytes()));
            let submit = job::Command::Submit {
                workflow: workflow_id,
                workflow_version: workflow.version,
                steps: workflow.steps.clone(),
                inputs,
                priority: 0,
                idempotency_key: Some(format!("schedule/{id}/{}/{index}", due_at.as_micros())),
                parameters: Default::default(),
                input_versions: Default::default(),
                replay_of: None,
                at: now,
            };
            match send::<Job, _>(
                &self.gateway,
                &job.stream(),
                derived_id(job.0, "submit"),
                submit,
                Self::NAME,
                Some(id.0),
            )
            .await?
            {
                Ok(_) | Err(JobRejection::AlreadySubmitted) => jobs.push(job),
                Err(rejection) => tracing::warn!(schedule = %id, %job, %rejection, "a scheduled job was refused"),
            }
        }
        if jobs.is_empty() {
            return Ok(after);
        }
        let fire = schedule::Command::Fire { due_at, jobs, through_position, at: now };
        let fire_id = derived_id(id.0, &format!("fire/{}", due_at.as_micros()));
        if let Err(rejection) =
            send::<Schedule, _>(&self.gateway, &stream, fire_id, fire, Self::NAME, Some(id.0)).await?
        {
            tracing::warn!(schedule = %id, %rejection, "the schedule did not record its firing");
        }
        Ok(after)
    }

    /// The inputs of each job of a firing.
    async fn groups(&self, documents: Vec<DocumentId>, strategy: Strategy) -> Result<Vec<Vec<DocumentId>>, Retry> {
        Ok(match strategy {
            Strategy::PerDocument => documents.into_iter().map(|d| vec![d]).collect(),
            Strategy::Combined => vec![documents],
            Strategy::PerGroup(by) => {
                let mut groups: BTreeMap<String, Vec<DocumentId>> = BTreeMap::new();
                for document in documents {
                    let state = inspect::<Document, _>(&self.gateway, &document.stream()).await?;
                    let key = match by {
                        GroupBy::Tenant => state.tenant,
                        GroupBy::ContentType => state.content_type,
                        GroupBy::Owner => state.owner,
                    };
                    groups.entry(key).or_default().push(document);
                }
                groups.into_values().collect()
            }
        })
    }
}

#[async_trait::async_trait(?Send)]
impl<G: Gateway> Process for TimerService<G> {
    const NAME: &'static str = "timers";
    type State = Timers;

    fn traced(&self, event: &Envelope) -> bool {
        &*event.event_type == "job.retried" || event.event_type.starts_with("schedule.")
    }

    async fn handle(&self, timers: &mut Timers, event: &Envelope) -> Result<(), Retry> {
        if event.event_type.starts_with("job.") {
            if matches!(&*event.event_type, "job.log_appended" | "job.step_started") {
                return Ok(());
            }
            if let (Some(job), Some(decoded)) = (JobId::from_stream(&event.stream), decode::<job_events::Event>(event))
            {
                if matches!(decoded, job_events::Event::Retried(_)) {
                    // A retried job runs again: its steps' time-outs, dropped when it ended, are needed again.
                    let state = inspect::<Job, _>(&self.gateway, &event.stream).await?;
                    let steps = state.steps.into_iter().map(|s| (s.name, s.timeout_ms)).collect();
                    timers.timeouts.insert(job, steps);
                }
                Self::job_event(timers, job, decoded);
            }
        } else if event.event_type.starts_with("schedule.") {
            let Some(schedule) = ScheduleId::from_stream(&event.stream) else { return Ok(()) };
            if decode::<schedule_events::Event>(event).is_some() {
                self.rearm_schedule(timers, schedule).await?;
            }
        }
        Ok(())
    }

    fn next_due(&self, timers: &Timers) -> Option<Timestamp> {
        timers.pending.first().map(|(at, _)| *at)
    }

    async fn fire(&self, timers: &mut Timers, now: Timestamp) -> Result<(), Retry> {
        while let Some((at, timer)) = timers.pending.first().cloned().filter(|(at, _)| *at <= now) {
            self.fire_one(timers, at, &timer, now).await?;
            // Whatever fire_one did, this timer at this time is done.
            if timers.due.get(&timer) == Some(&at) {
                timers.disarm(&timer);
            }
        }
        Ok(())
    }
}
