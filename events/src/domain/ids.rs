//! Typed ids of aggregate instances, and the stream each one's events live in (`document-<uuid>`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
pub use uuid::Uuid;

use crate::envelope::StreamName;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The aggregate kind, and the prefix of the stream name.
            pub const KIND: &'static str = $kind;

            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The stream holding this instance's events.
            pub fn stream(&self) -> StreamName {
                StreamName::new(format!("{}-{}", $kind, self.0)).expect("a kind and a UUID make a valid name")
            }

            /// The instance whose events `stream` holds, if it is a stream of this kind.
            pub fn from_stream(stream: &StreamName) -> Option<Self> {
                let id = stream.as_str().strip_prefix($kind)?.strip_prefix('-')?;
                Uuid::parse_str(id).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id!(
    /// A document: a file in object storage and its history.
    DocumentId,
    "document"
);
id!(
    /// A job: one run of a workflow.
    JobId,
    "job"
);
id!(
    /// A workflow: a versioned template of steps.
    WorkflowId,
    "workflow"
);
impl WorkflowId {
    /// The workflow of one-off jobs (the nil UUID, at version 0): one step, given with the job, on no defined
    /// workflow (`weft agent run`). No workflow is ever defined under it.
    pub const ONE_OFF: WorkflowId = WorkflowId(Uuid::nil());
}

id!(
    /// An agent: a configured worker that does steps.
    AgentId,
    "agent"
);
id!(
    /// A schedule: a cron rule that submits jobs.
    ScheduleId,
    "schedule"
);
id!(
    /// A trigger: a selector of uploads that submits jobs.
    TriggerId,
    "trigger"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_stream() {
        let id = DocumentId(Uuid::from_u128(1));
        assert_eq!(id.stream().as_str(), "document-00000000-0000-0000-0000-000000000001");
        assert_eq!(id.to_string().parse::<DocumentId>().unwrap(), id);
        assert_eq!(DocumentId::from_stream(&id.stream()), Some(id));
        assert_eq!(JobId::from_stream(&id.stream()), None);
        assert_eq!(DocumentId::from_stream(&StreamName::new("document-x").unwrap()), None);
    }
}
