//! `weft projection status|rebuild|reset`, with progress while a rebuild runs.

use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use super::render::{item, table};
use super::{Client, Connection, Error, REBUILD_TIMEOUT, print, segment};

/// The verbs of projections.
#[derive(Debug, Clone, Subcommand)]
pub enum ProjectionVerb {
    /// Each projection's position and lag behind the store.
    List,
    /// One projection: its position, lag, and latest rebuild or reset.
    Status {
        /// The projection: documents, jobs, agents, workflows, schedules, history.
        name: String,
    },
    /// Rebuilds a read model from the log and swaps it in; the old one serves meanwhile. Shows its progress
    /// (a bar with rate and ETA on a terminal, a line every few seconds otherwise).
    Rebuild {
        /// The projection: documents, jobs, agents, workflows, schedules, history.
        name: String,
    },
    /// Empties a read model and has it apply the log again in place (no second copy: reads see it fill up).
    /// Shows its progress until it has caught up.
    Reset {
        /// The projection: documents, jobs, agents, workflows, schedules, history.
        name: String,
    },
}

/// `weft projection ...`.
pub async fn run(connection: Connection, verb: ProjectionVerb) -> anyhow::Result<()> {
    let client = connection.client()?;
    match verb {
        ProjectionVerb::List => {
            let ready = client.get("/readyz", &[]).await?;
            print(connection.output, &ready, |ready| {
                let rows: Vec<Value> = ready["projections"]
                    .as_object()
                    .map(|projections| {
                        projections
                            .iter()
                            .map(|(name, p)| {
                                let mut row = p.clone();
                                row["name"] = Value::String(name.clone());
                                row
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["name", "position", "lag_events", "lag_seconds"], &rows)
            });
        }
        ProjectionVerb::Status { name } => {
            let status = client.get(&format!("/projections/{}", segment(&name)), &[]).await?;
            print(connection.output, &status, item);
        }
        ProjectionVerb::Rebuild { name } => {
            eprintln!("rebuilding {name}; the old read model serves until the new one is swapped in");
            let path = format!("/projections/{}/rebuild", segment(&name));
            let done = with_progress(&client, &name, "rebuild", client.post(&path, None, &[], REBUILD_TIMEOUT)).await?;
            print(connection.output, &done, item);
        }
        ProjectionVerb::Reset { name } => {
            let path = format!("/projections/{}/reset", segment(&name));
            let done = client.post(&path, None, &[], REBUILD_TIMEOUT).await?;
            eprintln!("{name} emptied; it applies the log again from position 0");
            // Until it has caught up with the head it had then.
            let mut progress = crate::replay::progress::Progress::new("reset", 0);
            loop {
                let status = client.get(&format!("/projections/{}", segment(&name)), &[]).await?;
                let (position, head) = (status["position"].as_u64().unwrap_or(0), status["head"].as_u64().unwrap_or(0));
                progress.update(position, head);
                if position >= head {
                    break;
                }
                tokio::time::sleep(PROGRESS_EVERY).await;
            }
            progress.finish();
            print(connection.output, &done, item);
        }
    }
    Ok(())
}

/// How often a rebuild's or reset's progress is asked for.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Runs `work` (a rebuild's request), showing the rebuild's progress from `GET /projections/{name}` meanwhile.
async fn with_progress(
    client: &Client,
    name: &str,
    label: &'static str,
    work: impl std::future::Future<Output = Result<Value, Error>>,
) -> Result<Value, Error> {
    let mut progress = crate::replay::progress::Progress::new(label, 0);
    let mut work = std::pin::pin!(work);
    let status_path = format!("/projections/{}", segment(name));
    let result = loop {
        tokio::select! {
            done = &mut work => break done,
            () = tokio::time::sleep(PROGRESS_EVERY) => {
                // Progress is a courtesy: a failed status read does not stop the rebuild.
                if let Ok(status) = client.get(&status_path, &[]).await
                    && status["rebuild"]["state"] == "running"
                    && let (Some(position), Some(target)) =
                        (status["rebuild"]["position"].as_u64(), status["rebuild"]["target"].as_u64())
                    && target > 0
                {
                    progress.update(position.min(target), target);
                }
            }
        }
    };
    progress.finish();
    result
}
