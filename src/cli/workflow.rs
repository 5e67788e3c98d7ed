//! `weft workflow`: run a workflow at a version, its versions, archive and restore it, and the reads.

use clap::Subcommand;
use serde_json::{Value, json};

use super::job::{RunArgs, run_args};
use super::reads::{Read, read};
use super::render::{item, table};
use super::{Connection, TIMEOUT, print, segment};

/// The verbs of workflows: those of every read model, a run, and the versions.
#[derive(Debug, Clone, Subcommand)]
pub enum WorkflowVerb {
    /// `list` and `show`, as for every read model.
    #[command(flatten)]
    Read(Read),
    /// Submits a job of the workflow (by name or id) at its latest version, or at `--version`; as `weft job
    /// run`.
    Run(RunArgs),
    /// Every version the workflow has had, oldest first, with its steps.
    Versions {
        /// The workflow's name or id.
        workflow: String,
    },
    /// Archives the workflow: no new job may run it (jobs running it go on, its schedules skip their
    /// occurrences) until it is restored.
    Archive {
        /// The workflow's name or id.
        workflow: String,
        /// Why, for its history.
        #[arg(long)]
        reason: String,
    },
    /// Takes the workflow out of the archive.
    Restore {
        /// The workflow's name or id.
        workflow: String,
    },
    /// Deletes an archived workflow that no job runs any more: it never runs, is redefined or restored again
    /// (its history stays).
    Delete {
        /// The workflow's name or id.
        workflow: String,
        /// Why, for its history.
        #[arg(long)]
        reason: String,
    },
}

/// `weft workflow ...`.
pub async fn run(connection: Connection, verb: WorkflowVerb) -> anyhow::Result<()> {
    match verb {
        WorkflowVerb::Read(verb) => read(connection, "workflows", verb).await,
        WorkflowVerb::Run(args) => run_args(connection, args).await,
        WorkflowVerb::Archive { workflow, reason } => {
            lifecycle(connection, &workflow, "archive", json!({"reason": reason})).await
        }
        WorkflowVerb::Restore { workflow } => lifecycle(connection, &workflow, "restore", json!({})).await,
        WorkflowVerb::Delete { workflow, reason } => {
            lifecycle(connection, &workflow, "delete", json!({"reason": reason})).await
        }
        WorkflowVerb::Versions { workflow } => {
            let client = connection.client()?;
            let id = super::job::workflow_id(&client, &workflow).await?;
            let defined = client.get(&format!("/workflows/{}", segment(&id)), &[]).await?;
            let versions = defined["versions"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let steps: Vec<&str> =
                        v["steps"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect();
                    json!({"version": v["workflow_version"], "name": v["name"], "steps": steps.join(", "),
                        "defined_at": v["defined_at"]})
                })
                .collect();
            print(connection.output, &Value::Array(versions), |_| {
                table(&["version", "name", "steps", "defined_at"], &rows)
            });
            Ok(())
        }
    }
}

/// Sends `kind` with `payload` to the workflow `workflow` names; prints the reply.
async fn lifecycle(connection: Connection, workflow: &str, kind: &str, payload: Value) -> anyhow::Result<()> {
    let client = connection.client()?;
    let id = super::job::workflow_id(&client, workflow).await?;
    let body = json!({"command_id": uuid::Uuid::now_v7(), "type": kind, "payload": payload});
    let reply = client.post(&format!("/commands/workflow/{}", segment(&id)), Some(&body), &[], TIMEOUT).await?;
    print(connection.output, &reply, item);
    Ok(())
}
