//! The schedule aggregate: a cron rule in a time zone that submits jobs of a workflow, fired once per
//! occurrence.
//!
//! Cron expressions are parsed by `croner` (5 fields, 6 with seconds, aliases such as `@hourly`, `L`, `#`,
//! `W`); time zones are IANA names read by `chrono-tz`. Both are pure computations, so `decide` checks that
//! a firing is for a real occurrence of the rule, after the last one fired.

use std::collections::HashSet;

use weft_events::Timestamp;
use weft_events::domain::ids::{JobId, WorkflowId};
use weft_events::domain::schedule::{Created, Deleted, Event, Fired, Misfire, Paused, Resumed, Strategy, Target};

use crate::aggregate::Aggregate;

/// Longest cron expression or time zone, in bytes (a selector's fields: [`crate::trigger::MAX_TEXT_BYTES`]).
pub const MAX_TEXT_BYTES: usize = 200;

/// Most documents a schedule names, and most jobs one firing submits.
pub const MAX_ITEMS: usize = 1000;

/// What can be asked of a schedule.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, strum::IntoStaticStr,
)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
pub enum Command {
    /// Create the schedule, active.
    Create {
        /// The cron expression.
        cron: String,
        /// The IANA time zone it is read in.
        time_zone: String,
        /// The workflow its jobs run.
        workflow: WorkflowId,
        /// The documents.
        target: Target,
        /// How documents become jobs.
        strategy: Strategy,
        /// What it does about missed occurrences (`fire_once` unless given).
        #[serde(default)]
        misfire: Misfire,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Stop firing.
    Pause {
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Fire again.
    Resume {
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Record a firing for the occurrence at `due_at`, which submitted `jobs`.
    Fire {
        /// The occurrence.
        due_at: Timestamp,
        /// The jobs submitted.
        jobs: Vec<JobId>,
        /// For a selector of documents uploaded since the last firing: the log position its uploads were
        /// taken up to.
        #[serde(default)]
        through_position: Option<u64>,
        /// Now.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Delete the schedule.
    Delete {
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
}

/// Why a schedule refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum Rejection {
    /// The schedule does not exist.
    #[error("the schedule does not exist")]
    NotCreated,
    /// The schedule exists already.
    #[error("the schedule exists already")]
    AlreadyCreated,
    /// The schedule is deleted.
    #[error("the schedule is deleted")]
    Deleted,
    /// The schedule is paused.
    #[error("the schedule is paused")]
    Paused,
    /// The cron expression does not parse.
    #[error("cron expression {cron:?}: {reason}")]
    InvalidCron {
        /// The expression.
        cron: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("{0:?} is not an IANA time zone")]
    InvalidTimeZone(String),
    /// The target names no documents or too many, or a selector selects nothing in particular.
    #[error("target: {0}")]
    InvalidTarget(String),
    /// The firing took uploads up to a log position before the one the last firing took them up to.
    #[error("the firing takes uploads through position {through}, before the last firing's {last}")]
    PositionBehind {
        /// The firing's.
        through: u64,
        /// The last firing's.
        last: u64,
    },
    /// The firing is not for an occurrence of the rule, is in the future, or is not after the last one.
    #[error("{due_at:?} is not a due occurrence: {reason}")]
    NotDue {
        /// The occurrence given.
        due_at: Timestamp,
        /// Why not.
        reason: String,
    },
    /// A firing submitted no jobs, too many, or one twice.
    #[error("jobs: {0}")]
    InvalidJobs(String),
}

/// Where a schedule is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub enum Status {
    /// Not created.
    #[default]
    Uncreated,
    /// Firing.
    Active,
    /// Not firing.
    Paused,
    /// Deleted.
    Deleted,
}

/// The state of a schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Schedule {
    /// Where it is.
    pub status: Status,
    /// The cron expression.
    pub cron: String,
    /// Its time zone.
    pub time_zone: String,
    /// The workflow its jobs run.
    pub workflow: Option<WorkflowId>,
    /// The documents they run over.
    pub target: Option<Target>,
    /// How documents become jobs.
    pub strategy: Option<Strategy>,
    /// What it does about missed occurrences.
    #[serde(default)]
    pub misfire: Misfire,
    /// When it was last paused: an occurrence due before then may still be recorded while it is paused (its
    /// jobs were submitted before the pause landed).
    #[serde(default)]
    pub paused_at: Option<Timestamp>,
    /// The log position the last firing over a selector took uploads up to.
    #[serde(default)]
    pub through_position: Option<u64>,
    /// When it was created: occurrences before this are never due.
    pub created_at: Timestamp,
    /// When it was last resumed: occurrences while it was paused are never due.
    pub resumed_at: Option<Timestamp>,
    /// The last occurrence fired.
    pub last_due: Option<Timestamp>,
    /// Firings so far.
    pub firings: u64,
}

/// A cron rule read in a time zone (one of the facts: the read side computes next fire times with it too).
pub use weft_events::domain::schedule::Rule;

impl From<weft_events::domain::schedule::RuleError> for Rejection {
    fn from(error: weft_events::domain::schedule::RuleError) -> Self {
        use weft_events::domain::schedule::RuleError;
        match error {
            RuleError::InvalidCron { cron, reason } => Self::InvalidCron { cron, reason },
            RuleError::InvalidTimeZone(zone) => Self::InvalidTimeZone(zone),
        }
    }
}

fn check_target(target: &Target) -> Result<(), Rejection> {
    match target {
        Target::Documents(documents) => {
            if documents.is_empty() || documents.len() > MAX_ITEMS {
                return Err(Rejection::InvalidTarget(format!("1 to {MAX_ITEMS} documents, not {}", documents.len())));
            }
            if documents.iter().collect::<HashSet<_>>().len() != documents.len() {
                return Err(Rejection::InvalidTarget("a document is named twice".into()));
            }
        }
        Target::Selector { tenant, content_type, name_prefix, labels, .. } => {
            crate::trigger::check_selector_fields([tenant, content_type, name_prefix], labels)
                .map_err(Rejection::InvalidTarget)?;
        }
    }
    Ok(())
}

impl Schedule {
    fn existing(&self) -> Result<(), Rejection> {
        match self.status {
            Status::Uncreated => Err(Rejection::NotCreated),
            Status::Deleted => Err(Rejection::Deleted),
            Status::Active | Status::Paused => Ok(()),
        }
    }

    /// The schedule's rule; `None` before it is created.
    pub fn rule(&self) -> Option<Rule> {
        Rule::parse(&self.cron, &self.time_zone).ok()
    }

    /// The next occurrence to fire: the first after the last fired, or after creation.
    pub fn next_due(&self) -> Option<Timestamp> {
        if self.status != Status::Active {
            return None;
        }
        self.rule()?.next_after(self.fired_up_to())
    }

    /// Occurrences up to this time are fired or skipped: the latest of its creation, its last resumption and
    /// its last firing.
    pub fn fired_up_to(&self) -> Timestamp {
        self.created_at.max(self.resumed_at.unwrap_or_default()).max(self.last_due.unwrap_or_default())
    }
}

impl Aggregate for Schedule {
    const KIND: &'static str = "schedule";
    type Command = Command;
    type Event = Event;
    type Rejection = Rejection;

    fn command_name(command: &Command) -> &'static str {
        command.into()
    }

    fn decide(&self, command: &Command) -> Result<Vec<Event>, Rejection> {
        match command {
            Command::Create { cron, time_zone, workflow, target, strategy, misfire, at } => {
                if self.status != Status::Uncreated {
                    return Err(Rejection::AlreadyCreated);
                }
                if cron.len() > MAX_TEXT_BYTES {
                    let reason = format!("over {MAX_TEXT_BYTES} bytes");
                    return Err(Rejection::InvalidCron { cron: cron.clone(), reason });
                }
                let rule = Rule::parse(cron, time_zone)?;
                if rule.next_after(*at).is_none() {
                    return Err(Rejection::InvalidCron { cron: cron.clone(), reason: "it never fires".into() });
                }
                check_target(target)?;
                Ok(vec![
                    Created {
                        cron: cron.clone(),
                        time_zone: time_zone.clone(),
                        workflow: *workflow,
                        target: target.clone(),
                        strategy: *strategy,
                        misfire: *misfire,
                        at: *at,
                    }
                    .into(),
                ])
            }
            Command::Pause { at } => {
                self.existing()?;
                if self.status == Status::Paused {
                    return Ok(vec![]);
                }
                Ok(vec![Paused { at: *at }.into()])
            }
            Command::Resume { at } => {
                self.existing()?;
                if self.status == Status::Active {
                    return Ok(vec![]);
                }
                Ok(vec![Resumed { at: *at }.into()])
            }
            Command::Fire { due_at, jobs, through_position, at } => {
                self.existing()?;
                // The timer fired twice for one occurrence: it was recorded the first time.
                if self.last_due == Some(*due_at) {
                    return Ok(vec![]);
                }
                // A pause that landed while the timer was submitting an earlier occurrence's jobs: those jobs
                // run, so their firing is recorded.
                if self.status == Status::Paused && self.paused_at.is_none_or(|paused_at| *due_at >= paused_at) {
                    return Err(Rejection::Paused);
                }
                if let (Some(through), Some(last)) = (*through_position, self.through_position)
                    && through < last
                {
                    return Err(Rejection::PositionBehind { through, last });
                }
                let not_due = |reason: &str| Rejection::NotDue { due_at: *due_at, reason: reason.into() };
                if due_at > at {
                    return Err(not_due("it is in the future"));
                }
                if *due_at <= self.fired_up_to() {
                    return Err(not_due("it is not after the last occurrence fired, the creation or the resumption"));
                }
                if !self.rule().is_some_and(|rule| rule.matches(*due_at)) {
                    return Err(not_due("the rule does not fire then"));
                }
                if jobs.is_empty() || jobs.len() > MAX_ITEMS {
                    return Err(Rejection::InvalidJobs(format!("1 to {MAX_ITEMS} jobs, not {}", jobs.len())));
                }
                if jobs.iter().collect::<HashSet<_>>().len() != jobs.len() {
                    return Err(Rejection::InvalidJobs("a job is named twice".into()));
                }
                Ok(vec![
                    Fired { due_at: *due_at, jobs: jobs.clone(), through_position: *through_position, at: *at }.into(),
                ])
            }
            Command::Delete { at } => {
                self.existing()?;
                Ok(vec![Deleted { at: *at }.into()])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::Created(e) => {
                self.status = Status::Active;
                self.cron = e.cron.clone();
                self.time_zone = e.time_zone.clone();
                self.workflow = Some(e.workflow);
                self.target = Some(e.target.clone());
                self.strategy = Some(e.strategy);
                self.misfire = e.misfire;
                self.created_at = e.at;
            }
            Event::Paused(e) => {
                self.status = Status::Paused;
                self.paused_at = Some(e.at);
            }
            Event::Resumed(e) => {
                self.status = Status::Active;
                self.resumed_at = Some(e.at);
            }
            Event::Fired(e) => {
                self.last_due = Some(e.due_at);
                self.through_position = e.through_position.or(self.through_position);
                self.firings += 1;
            }
            Event::Deleted(_) => self.status = Status::Deleted,
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use weft_events::domain::ids::{DocumentId, Uuid};

    use super::*;
    use crate::testkit::given;

    /// 2026-11-20 08:00:00 UTC, a Friday.
    const FRIDAY_8_UTC: i64 = 1_795_161_600_000_000;
    const HOUR: i64 = 3_600_000_000;

    fn at(hours: i64) -> Timestamp {
        Timestamp(FRIDAY_8_UTC + hours * HOUR)
    }

    fn workflow() -> WorkflowId {
        WorkflowId(Uuid::from_u128(3))
    }

    fn target() -> Target {
        Target::Documents(vec![DocumentId(Uuid::from_u128(4))])
    }

    /// Weekdays at 9:00 Berlin time (8:00 UTC in November).
    fn create() -> Command {
        Command::Create {
            cron: "0 9 * * MON-FRI".into(),
            time_zone: "Europe/Berlin".into(),
            workflow: workflow(),
            target: target(),
            strategy: Strategy::PerDocument,
            misfire: Misfire::FireOnce,
            at: at(-1),
        }
    }

    fn created() -> Event {
        Created {
            cron: "0 9 * * MON-FRI".into(),
            time_zone: "Europe/Berlin".into(),
            workflow: workflow(),
            target: target(),
            strategy: Strategy::PerDocument,
            misfire: Misfire::FireOnce,
            at: at(-1),
        }
        .into()
    }

    fn job(n: u128) -> JobId {
        JobId(Uuid::from_u128(n))
    }

    #[test]
    fn creating_a_schedule_records_its_rule() {
        given::<Schedule>([]).when(create()).then([created()]);
    }

    #[test]
    fn creating_twice_or_with_a_bad_rule_zone_or_target_is_rejected() {
        given::<Schedule>([created()]).when(create()).then_rejected(Rejection::AlreadyCreated);
        let with = |cron: &str, zone: &str, target: Target| Command::Create {
            cron: cron.into(),
            time_zone: zone.into(),
            workflow: workflow(),
            target,
            strategy: Strategy::Combined,
            misfire: Misfire::FireOnce,
            at: at(0),
        };
        assert!(matches!(
            Schedule::default().decide(&with("61 * * * *", "UTC", target())),
            Err(Rejection::InvalidCron { .. })
        ));
        assert!(matches!(
            Schedule::default().decide(&with("not cron", "UTC", target())),
            Err(Rejection::InvalidCron { .. })
        ));
        assert_eq!(
            Schedule::default().decide(&with("0 9 * * *", "Mars/Olympus", target())),
            Err(Rejection::InvalidTimeZone("Mars/Olympus".into()))
        );
        assert!(matches!(
            Schedule::default().decide(&with("0 9 * * *", "UTC", Target::Documents(vec![]))),
            Err(Rejection::InvalidTarget(_))
        ));
        let selector = |labels: &[(&str, &str)]| Target::Selector {
            tenant: None,
            content_type: None,
            name_prefix: None,
            since_last_firing: true,
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        let nothing = selector(&[]);
        for bad in [selector(&[("bad key", "x")]), selector(&[("k", "line\nbreak")])] {
            assert!(matches!(
                Schedule::default().decide(&with("0 9 * * *", "UTC", bad)),
                Err(Rejection::InvalidTarget(_))
            ));
        }
        assert!(Schedule::default().decide(&with("0 9 * * *", "UTC", selector(&[("project", "q3")]))).is_ok());
        assert!(matches!(
            Schedule::default().decide(&with("0 9 * * *", "UTC", nothing)),
            Err(Rejection::InvalidTarget(_))
        ));
    }

    #[test]
    fn the_next_occurrence_follows_the_time_zone() {
        let schedule = Schedule::replay(&[created()]);
        // Created Friday 7:00 UTC; next is Friday 9:00 Berlin = 8:00 UTC; after that, Monday.
        assert_eq!(schedule.next_due(), Some(at(0)));
        assert_eq!(schedule.rule().unwrap().next_after(at(0)), Some(at(72)));
    }

    #[test]
    fn firing_a_due_occurrence_records_its_jobs() {
        given::<Schedule>([created()])
            .when(Command::Fire { due_at: at(0), jobs: vec![job(1), job(2)], through_position: None, at: at(0) })
            .then([Fired { due_at: at(0), jobs: vec![job(1), job(2)], through_position: None, at: at(0) }.into()]);
    }

    #[test]
    fn occurrences_while_paused_are_not_due_after_resuming() {
        // Paused before Friday's occurrence, resumed after it: Monday's is next, Friday's is refused.
        let history = [created(), Paused { at: at(-1) }.into(), Resumed { at: at(1) }.into()];
        assert_eq!(Schedule::replay(&history).next_due(), Some(at(72)));
        given::<Schedule>(history)
            .when(Command::Fire { due_at: at(0), jobs: vec![job(1)], through_position: None, at: at(2) })
            .then_rejected(Rejection::NotDue {
                due_at: at(0),
                reason: "it is not after the last occurrence fired, the creation or the resumption".into(),
            });
    }

    #[test]
    fn firing_twice_for_one_occurrence_changes_nothing() {
        given::<Schedule>([
            created(),
            Fired { due_at: at(0), jobs: vec![job(1)], through_position: None, at: at(0) }.into(),
        ])
        .when(Command::Fire { due_at: at(0), jobs: vec![job(9)], through_position: None, at: at(1) })
        .then([]);
    }

    #[test]
    fn firing_early_off_the_rule_or_before_the_last_is_rejected() {
        let not_due = |command: Command| {
            let history =
                [created(), Fired { due_at: at(0), jobs: vec![job(1)], through_position: None, at: at(0) }.into()];
            assert!(
                matches!(Schedule::replay(&history).decide(&command), Err(Rejection::NotDue { .. })),
                "{command:?}"
            );
        };
        not_due(Command::Fire { due_at: at(72), jobs: vec![job(2)], through_position: None, at: at(71) }); // in the future
        not_due(Command::Fire { due_at: at(1), jobs: vec![job(2)], through_position: None, at: at(2) }); // 10:00 Berlin is not a firing
        not_due(Command::Fire { due_at: at(-24), jobs: vec![job(2)], through_position: None, at: at(2) }); // before the last
        given::<Schedule>([created()])
            .when(Command::Fire { due_at: at(0), jobs: vec![], through_position: None, at: at(0) })
            .then_rejected(Rejection::InvalidJobs(format!("1 to {MAX_ITEMS} jobs, not 0")));
    }

    #[test]
    fn pausing_stops_firing_and_resuming_starts_it_again() {
        let paused: Event = Paused { at: at(0) }.into();
        given::<Schedule>([created()]).when(Command::Pause { at: at(0) }).then([paused.clone()]);
        given::<Schedule>([created(), paused.clone()]).when(Command::Pause { at: at(0) }).then([]);
        given::<Schedule>([created(), paused.clone()])
            .when(Command::Fire { due_at: at(0), jobs: vec![job(1)], through_position: None, at: at(0) })
            .then_rejected(Rejection::Paused);
        assert_eq!(Schedule::replay(&[created(), paused.clone()]).next_due(), None);
        given::<Schedule>([created(), paused]).when(Command::Resume { at: at(1) }).then([Resumed { at: at(1) }.into()]);
    }

    #[test]
    fn an_occurrence_due_before_a_pause_is_still_recorded_but_none_after_it() {
        // The timer submitted Friday's jobs, then the pause landed, then it recorded the firing.
        let history = [created(), Paused { at: at(1) }.into()];
        given::<Schedule>(history.clone())
            .when(Command::Fire { due_at: at(0), jobs: vec![job(1)], through_position: None, at: at(1) })
            .then([Fired { due_at: at(0), jobs: vec![job(1)], through_position: None, at: at(1) }.into()]);
        given::<Schedule>(history)
            .when(Command::Fire { due_at: at(72), jobs: vec![job(2)], through_position: None, at: at(72) })
            .then_rejected(Rejection::Paused);
    }

    #[test]
    fn a_firing_taking_uploads_through_an_earlier_position_than_the_last_is_rejected() {
        let fired: Event = Fired { due_at: at(0), jobs: vec![job(1)], through_position: Some(50), at: at(0) }.into();
        let schedule = Schedule::replay(&[created(), fired.clone()]);
        assert_eq!(schedule.through_position, Some(50));
        given::<Schedule>([created(), fired.clone()])
            .when(Command::Fire { due_at: at(72), jobs: vec![job(2)], through_position: Some(49), at: at(72) })
            .then_rejected(Rejection::PositionBehind { through: 49, last: 50 });
        given::<Schedule>([created(), fired])
            .when(Command::Fire { due_at: at(72), jobs: vec![job(2)], through_position: Some(50), at: at(72) })
            .then([Fired { due_at: at(72), jobs: vec![job(2)], through_position: Some(50), at: at(72) }.into()]);
    }

    #[test]
    fn deleting_a_schedule_records_it_and_commands_after_are_rejected() {
        let deleted: Event = Deleted { at: at(0) }.into();
        given::<Schedule>([created()]).when(Command::Delete { at: at(0) }).then([deleted.clone()]);
        given::<Schedule>([created(), deleted]).when(Command::Resume { at: at(1) }).then_rejected(Rejection::Deleted);
        given::<Schedule>([]).when(Command::Pause { at: at(1) }).then_rejected(Rejection::NotCreated);
    }
}
