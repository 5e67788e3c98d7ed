//! The workflow aggregate: a versioned template of named steps whose inputs form a DAG.

use std::collections::{HashMap, HashSet};

use weft_events::Timestamp;
use weft_events::domain::workflow::{Archived, Defined, Deleted, Event, Input, Restored, Step};

use crate::aggregate::Aggregate;

/// Most steps in one workflow.
pub const MAX_STEPS: usize = 100;

/// Longest name or instruction, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// Longest instruction, in bytes.
pub const MAX_INSTRUCTION_BYTES: usize = 16 * 1024;

/// Longest time-out of one attempt: a day.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// Most attempts of one step.
pub const MAX_ATTEMPTS: u32 = 100;

/// What can be asked of a workflow.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, strum::IntoStaticStr,
)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
pub enum Command {
    /// Define the first version.
    Define {
        /// Human name.
        name: String,
        /// The steps.
        steps: Vec<Step>,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Define the next version.
    Redefine {
        /// Human name.
        name: String,
        /// The steps.
        steps: Vec<Step>,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Archive the workflow: no new job may run it (jobs running it go on) until it is restored. Archiving
    /// an archived workflow records nothing.
    Archive {
        /// Why.
        reason: String,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Take the workflow out of the archive. Restoring one not archived records nothing.
    Restore {
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Delete the workflow, which must be archived (so that no new job starts it) and, as the command
    /// intake checks against the jobs read model, run by no job. Deleting it again records nothing.
    Delete {
        /// Why.
        reason: String,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
}

/// Why a workflow refuses a definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum Rejection {
    /// `Define` of a workflow that exists.
    #[error("the workflow is defined already; redefine it instead")]
    AlreadyDefined,
    /// `Redefine` of a workflow that does not exist.
    #[error("the workflow is not defined")]
    NotDefined,
    /// The workflow is archived: restore it first.
    #[error("the workflow is archived; restore it first")]
    Archived,
    /// Only an archived workflow is deleted: archive it first, so that no new job starts it.
    #[error("the workflow is not archived; archive it first, so that no new job starts it")]
    NotArchived,
    /// The workflow is deleted.
    #[error("the workflow is deleted")]
    Deleted,
    /// Jobs still run the workflow (checked by the command intake).
    #[error("{running} jobs still run the workflow; wait for them, or cancel them, then delete it")]
    JobsRunning {
        /// How many.
        running: u64,
    },
    /// An archive's reason is empty, too long or holds control characters.
    #[error("reason: {0}")]
    InvalidReason(String),
    /// No steps.
    #[error("a workflow needs at least one step")]
    NoSteps,
    /// Too many steps.
    #[error("{count} steps, over the limit of {limit}")]
    TooManySteps {
        /// Steps given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Two steps share a name.
    #[error("two steps are named {0:?}")]
    DuplicateStep(String),
    /// A step reads from a step that does not exist.
    #[error("step {step:?} reads from {input:?}, which is not a step")]
    DanglingInput {
        /// The step.
        step: String,
        /// The missing step it names.
        input: String,
    },
    /// The steps' inputs form a cycle.
    #[error("steps {0:?} depend on each other in a cycle")]
    Cycle(Vec<String>),
    /// A step reads nothing.
    #[error("step {0:?} has no inputs")]
    NoInputs(String),
    /// A field of a step is out of bounds.
    #[error("step {step:?}: {reason}")]
    InvalidStep {
        /// The step.
        step: String,
        /// What is wrong.
        reason: String,
    },
}

/// Checks a set of steps: names unique and sane, inputs naming existing steps, no cycle, sane time-outs and
/// retry policies. Jobs check the steps they are given with it too.
pub fn check_steps(steps: &[Step]) -> Result<(), Rejection> {
    if steps.is_empty() {
        return Err(Rejection::NoSteps);
    }
    if steps.len() > MAX_STEPS {
        return Err(Rejection::TooManySteps { count: steps.len(), limit: MAX_STEPS });
    }
    let mut names = HashSet::new();
    for step in steps {
        let invalid = |reason: String| Rejection::InvalidStep { step: step.name.clone(), reason };
        if step.name.is_empty() || step.name.len() > MAX_NAME_BYTES || step.name.chars().any(char::is_control) {
            return Err(invalid(format!("a name must be 1 to {MAX_NAME_BYTES} bytes without control characters")));
        }
        if !names.insert(step.name.as_str()) {
            return Err(Rejection::DuplicateStep(step.name.clone()));
        }
        if step.instruction.trim().is_empty() || step.instruction.len() > MAX_INSTRUCTION_BYTES {
            return Err(invalid(format!("an instruction must be 1 to {MAX_INSTRUCTION_BYTES} bytes")));
        }
        if step.timeout_ms == 0 || step.timeout_ms > MAX_TIMEOUT_MS {
            return Err(invalid(format!("a time-out must be 1 to {MAX_TIMEOUT_MS} ms")));
        }
        let retry = step.retry;
        if retry.max_attempts == 0 || retry.max_attempts > MAX_ATTEMPTS {
            return Err(invalid(format!("max attempts must be 1 to {MAX_ATTEMPTS}")));
        }
        if retry.base_delay_ms > retry.max_delay_ms || retry.max_delay_ms > MAX_TIMEOUT_MS {
            return Err(invalid(format!("retry delays must satisfy base <= max <= {MAX_TIMEOUT_MS} ms")));
        }
        if step.inputs.is_empty() {
            return Err(Rejection::NoInputs(step.name.clone()));
        }
    }
    for step in steps {
        for name in dependencies(step) {
            if !names.contains(name) {
                return Err(Rejection::DanglingInput { step: step.name.clone(), input: name.to_owned() });
            }
        }
    }
    topological_order(steps).map(|_| ())
}

/// The steps in an order where every step comes after the steps it reads from (Kahn's algorithm), or the
/// steps caught in a cycle.
pub fn topological_order(steps: &[Step]) -> Result<Vec<&Step>, Rejection> {
    let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut waiting_on = vec![0usize; steps.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, step) in steps.iter().enumerate() {
        for dependency in dependencies(step) {
            if let Some(&d) = index.get(dependency) {
                waiting_on[i] += 1;
                readers[d].push(i);
            }
        }
    }
    let mut ready: Vec<usize> = (0..steps.len()).filter(|i| waiting_on[*i] == 0).collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some(i) = ready.pop() {
        order.push(&steps[i]);
        for &r in &readers[i] {
            waiting_on[r] -= 1;
            if waiting_on[r] == 0 {
                ready.push(r);
            }
        }
    }
    if order.len() < steps.len() {
        let mut cycle: Vec<String> =
            (0..steps.len()).filter(|i| waiting_on[*i] > 0).map(|i| steps[i].name.clone()).collect();
        cycle.sort();
        return Err(Rejection::Cycle(cycle));
    }
    Ok(order)
}

/// The names of the steps `step` reads from, each once: those among its inputs, and those whose output its
/// instruction names (`{{output.STEP}}`), which it must wait for too.
pub fn dependencies(step: &Step) -> impl Iterator<Item = &str> {
    let mut seen = HashSet::new();
    let inputs = step.inputs.iter().filter_map(|input| match input {
        Input::Step(name) => Some(name.as_str()),
        Input::JobInputs => None,
    });
    inputs.chain(outputs_named(&step.instruction)).filter(move |name| seen.insert(*name))
}

/// The steps whose output an instruction names with `{{output.STEP}}` (spaces inside the braces allowed), in
/// the order they appear.
pub fn outputs_named(instruction: &str) -> impl Iterator<Item = &str> {
    let mut rest = instruction;
    std::iter::from_fn(move || {
        loop {
            let open = rest.find("{{")?;
            let after = &rest[open + 2..];
            let close = after.find("}}")?;
            rest = &after[close + 2..];
            if let Some(step) = after[..close].trim().strip_prefix("output.") {
                return Some(step);
            }
        }
    })
}

/// The state of a workflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Workflow {
    /// The current version; 0 when not defined.
    pub version: u32,
    /// Its name.
    pub name: String,
    /// The current version's steps.
    pub steps: Vec<Step>,
    /// Whether it is archived: no new job may run it.
    #[serde(default)]
    pub archived: bool,
    /// Whether it is deleted.
    #[serde(default)]
    pub deleted: bool,
}

impl Aggregate for Workflow {
    const KIND: &'static str = "workflow";
    type Command = Command;
    type Event = Event;
    type Rejection = Rejection;

    fn command_name(command: &Command) -> &'static str {
        command.into()
    }

    fn decide(&self, command: &Command) -> Result<Vec<Event>, Rejection> {
        if self.deleted {
            return match command {
                Command::Delete { .. } => Ok(vec![]),
                _ => Err(Rejection::Deleted),
            };
        }
        let (name, steps, at) = match command {
            Command::Define { name, steps, at } => {
                if self.version > 0 {
                    return Err(Rejection::AlreadyDefined);
                }
                (name, steps, at)
            }
            Command::Redefine { name, steps, at } => {
                if self.version == 0 {
                    return Err(Rejection::NotDefined);
                }
                if self.archived {
                    return Err(Rejection::Archived);
                }
                (name, steps, at)
            }
            Command::Archive { reason, at } => {
                if self.version == 0 {
                    return Err(Rejection::NotDefined);
                }
                check_reason(reason)?;
                if self.archived {
                    return Ok(vec![]);
                }
                return Ok(vec![Archived { reason: reason.clone(), at: *at }.into()]);
            }
            Command::Delete { reason, at } => {
                if self.version == 0 {
                    return Err(Rejection::NotDefined);
                }
                check_reason(reason)?;
                if !self.archived {
                    return Err(Rejection::NotArchived);
                }
                return Ok(vec![Deleted { reason: reason.clone(), at: *at }.into()]);
            }
            Command::Restore { at } => {
                if self.version == 0 {
                    return Err(Rejection::NotDefined);
                }
                if !self.archived {
                    return Ok(vec![]);
                }
                return Ok(vec![Restored { at: *at }.into()]);
            }
        };
        if name.trim().is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(Rejection::InvalidStep { step: String::new(), reason: "the workflow needs a name".into() });
        }
        check_steps(steps)?;
        Ok(vec![Defined { version: self.version + 1, name: name.clone(), steps: steps.clone(), at: *at }.into()])
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::Defined(e) => {
                self.version = e.version;
                self.name = e.name.clone();
                self.steps = e.steps.clone();
            }
            Event::Archived(_) => self.archived = true,
            Event::Restored(_) => self.archived = false,
            Event::Deleted(_) => self.deleted = true,
        }
        self
    }
}

/// An archive's or a deletion's reason: 1 to [`MAX_NAME_BYTES`] bytes without control characters.
fn check_reason(reason: &str) -> Result<(), Rejection> {
    if reason.trim().is_empty() || reason.len() > MAX_NAME_BYTES || reason.chars().any(char::is_control) {
        return Err(Rejection::InvalidReason(format!(
            "a reason must be 1 to {MAX_NAME_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use weft_events::domain::ids::AgentId;
    use weft_events::domain::workflow::RetryPolicy;

    use super::*;
    use crate::testkit::given;

    const AT: Timestamp = Timestamp(5);

    /// A step reading `inputs` (step names; empty means the job's inputs).
    pub(crate) fn step(name: &str, inputs: &[&str]) -> Step {
        Step {
            name: name.into(),
            agent: AgentId(uuid_of(name)),
            instruction: format!("do {name}"),
            inputs: if inputs.is_empty() {
                vec![Input::JobInputs]
            } else {
                inputs.iter().map(|i| Input::Step((*i).into())).collect()
            },
            timeout_ms: 60_000,
            retry: RetryPolicy { max_attempts: 3, base_delay_ms: 1_000, max_delay_ms: 10_000 },
        }
    }

    fn uuid_of(name: &str) -> weft_events::domain::ids::Uuid {
        weft_events::domain::ids::Uuid::from_u128(name.bytes().fold(0u128, |a, b| a * 31 + u128::from(b)))
    }

    fn defined(version: u32, steps: Vec<Step>) -> Event {
        Defined { version, name: "summarise".into(), steps, at: AT }.into()
    }

    fn define(steps: Vec<Step>) -> Command {
        Command::Define { name: "summarise".into(), steps, at: AT }
    }

    #[test]
    fn defining_a_dag_records_version_one() {
        let steps =
            vec![step("extract", &[]), step("summarise", &["extract"]), step("redact", &["extract", "summarise"])];
        given::<Workflow>([]).when(define(steps.clone())).then([defined(1, steps)]);
    }

    #[test]
    fn defining_twice_is_rejected() {
        given::<Workflow>([defined(1, vec![step("a", &[])])])
            .when(define(vec![step("a", &[])]))
            .then_rejected(Rejection::AlreadyDefined);
    }

    #[test]
    fn redefining_records_the_next_version() {
        let steps = vec![step("a", &[]), step("b", &["a"])];
        given::<Workflow>([defined(1, vec![step("a", &[])])])
            .when(Command::Redefine { name: "summarise".into(), steps: steps.clone(), at: AT })
            .then([defined(2, steps)]);
    }

    #[test]
    fn redefining_an_undefined_workflow_is_rejected() {
        given::<Workflow>([])
            .when(Command::Redefine { name: "x".into(), steps: vec![step("a", &[])], at: AT })
            .then_rejected(Rejection::NotDefined);
    }

    #[test]
    fn a_cycle_is_rejected_naming_its_steps() {
        let steps = vec![step("a", &[]), step("b", &["a", "d"]), step("c", &["b"]), step("d", &["c"])];
        given::<Workflow>([]).when(define(steps)).then_rejected(Rejection::Cycle(vec![
            "b".into(),
            "c".into(),
            "d".into(),
        ]));
        given::<Workflow>([])
            .when(define(vec![step("self", &["self"])]))
            .then_rejected(Rejection::Cycle(vec!["self".into()]));
    }

    #[test]
    fn a_step_waits_for_the_outputs_its_instruction_names_and_a_name_of_no_step_is_rejected() {
        let mut brief = step("brief", &[]);
        brief.instruction = "Brief on {{input}} using {{ output.title }} and {{output.title}}; {{param.x}}".into();
        assert_eq!(dependencies(&brief).collect::<Vec<_>>(), ["title"]);
        let steps = vec![brief.clone(), step("title", &[])];
        let order: Vec<&str> = topological_order(&steps).unwrap().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["title", "brief"]);
        given::<Workflow>([])
            .when(define(vec![brief]))
            .then_rejected(Rejection::DanglingInput { step: "brief".into(), input: "title".into() });
    }

    #[test]
    fn a_dangling_reference_is_rejected() {
        given::<Workflow>([])
            .when(define(vec![step("a", &[]), step("b", &["ghost"])]))
            .then_rejected(Rejection::DanglingInput { step: "b".into(), input: "ghost".into() });
    }

    #[test]
    fn empty_duplicate_and_oversized_definitions_are_rejected() {
        given::<Workflow>([]).when(define(vec![])).then_rejected(Rejection::NoSteps);
        given::<Workflow>([])
            .when(define(vec![step("a", &[]), step("a", &[])]))
            .then_rejected(Rejection::DuplicateStep("a".into()));
        let many: Vec<Step> = (0..=MAX_STEPS).map(|i| step(&format!("s{i}"), &[])).collect();
        given::<Workflow>([])
            .when(define(many))
            .then_rejected(Rejection::TooManySteps { count: MAX_STEPS + 1, limit: MAX_STEPS });
        let mut no_inputs = step("a", &[]);
        no_inputs.inputs.clear();
        given::<Workflow>([]).when(define(vec![no_inputs])).then_rejected(Rejection::NoInputs("a".into()));
        let mut bad_retry = step("a", &[]);
        bad_retry.retry.max_attempts = 0;
        assert!(matches!(Workflow::default().decide(&define(vec![bad_retry])), Err(Rejection::InvalidStep { .. })));
        let mut bad_timeout = step("a", &[]);
        bad_timeout.timeout_ms = 0;
        assert!(matches!(Workflow::default().decide(&define(vec![bad_timeout])), Err(Rejection::InvalidStep { .. })));
    }

    #[test]
    fn the_topological_order_puts_every_step_after_its_inputs() {
        let steps = vec![step("d", &["b", "c"]), step("c", &["a"]), step("b", &["a"]), step("a", &[])];
        let order: Vec<&str> = topological_order(&steps).unwrap().iter().map(|s| s.name.as_str()).collect();
        let at = |n: &str| order.iter().position(|o| *o == n).unwrap();
        assert!(at("a") < at("b") && at("a") < at("c") && at("b") < at("d") && at("c") < at("d"));
    }

    #[test]
    fn an_archived_workflow_is_not_redefined_until_restored_and_repeats_record_nothing() {
        let archive = |reason: &str| Command::Archive { reason: reason.into(), at: AT };
        let archived: Event = Archived { reason: "replaced".into(), at: AT }.into();
        let restored: Event = Restored { at: AT }.into();
        let one = || vec![step("a", &[])];
        given::<Workflow>([defined(1, one())]).when(archive("replaced")).then([archived.clone()]);
        given::<Workflow>([defined(1, one()), archived.clone()]).when(archive("again")).then([]);
        given::<Workflow>([defined(1, one()), archived.clone()])
            .when(Command::Redefine { name: "summarise".into(), steps: one(), at: AT })
            .then_rejected(Rejection::Archived);
        given::<Workflow>([defined(1, one()), archived.clone()])
            .when(Command::Restore { at: AT })
            .then([restored.clone()]);
        given::<Workflow>([defined(1, one())]).when(Command::Restore { at: AT }).then([]);
        given::<Workflow>([]).when(archive("x")).then_rejected(Rejection::NotDefined);
        given::<Workflow>([]).when(Command::Restore { at: AT }).then_rejected(Rejection::NotDefined);
        for bad in ["", " ", "line\nbreak"] {
            assert!(matches!(
                Workflow::replay(&[defined(1, one())]).decide(&archive(bad)),
                Err(Rejection::InvalidReason(_))
            ));
        }
        let state = Workflow::replay(&[defined(1, one()), archived, restored]);
        assert!(!state.archived);
    }

    #[test]
    fn only_an_archived_workflow_is_deleted_and_a_deleted_one_refuses_everything_but_its_deletion() {
        let defined: Event = Defined { version: 1, name: "w".into(), steps: vec![step("a", &[])], at: AT }.into();
        let archived: Event = Archived { reason: "old".into(), at: AT }.into();
        let delete = || Command::Delete { reason: "gone".into(), at: AT };
        given::<Workflow>([defined.clone()]).when(delete()).then_rejected(Rejection::NotArchived);
        given::<Workflow>([]).when(delete()).then_rejected(Rejection::NotDefined);
        let deleted: Event = Deleted { reason: "gone".into(), at: AT }.into();
        given::<Workflow>([defined.clone(), archived.clone()]).when(delete()).then([deleted.clone()]);
        let history = [defined, archived, deleted];
        given::<Workflow>(history.clone()).when(delete()).then([]);
        given::<Workflow>(history.clone()).when(Command::Restore { at: AT }).then_rejected(Rejection::Deleted);
        given::<Workflow>(history.clone())
            .when(Command::Redefine { name: "w".into(), steps: vec![step("a", &[])], at: AT })
            .then_rejected(Rejection::Deleted);
        assert!(Workflow::replay(&history).deleted);
        assert!(matches!(
            given::<Workflow>([]).state().decide(&Command::Delete { reason: " ".into(), at: AT }),
            Err(Rejection::NotDefined)
        ));
    }
}
