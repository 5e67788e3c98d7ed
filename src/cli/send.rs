//! `weft send`: one command to an aggregate, as JSON, through the node's intake; it waits until the read
//! models show it.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::render::item;
use super::{Client, Connection, TIMEOUT, print, segment};

/// What `weft send` sends.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// The aggregate: document, workflow, job, agent, schedule.
    pub aggregate: String,
    /// The instance's id (a UUID; `weft id` makes one).
    pub id: String,
    /// The command's type, such as `register` or `submit` (see `schemas/commands/`).
    pub kind: String,
    /// The command's payload, a JSON object (`{}` when left out).
    pub payload: Option<String>,
    /// The command's id, for a retry that must not act twice (a fresh one when left out).
    #[arg(long)]
    pub command_id: Option<String>,
    /// The tenant the command acts for (header `Weft-Tenant`; `default` without it).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Return as soon as the command is answered, before the read models show its events (by default `send`
    /// waits, up to 5 s, so that the next read sees them).
    #[arg(long)]
    pub no_wait: bool,
}

/// `weft send`: one command through the node's command intake; prints the reply (with the positions its events
/// took, for `?after=` reads).
pub async fn run(connection: Connection, args: SendArgs) -> anyhow::Result<()> {
    let client = connection.client()?;
    let payload: Value = match &args.payload {
        Some(text) => serde_json::from_str(text).map_err(|e| anyhow::anyhow!("the payload is not JSON: {e}"))?,
        None => Value::Object(Default::default()),
    };
    let command_id = args.command_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let body = serde_json::json!({"command_id": command_id, "type": args.kind, "payload": payload});
    let path = format!("/commands/{}/{}", segment(&args.aggregate), segment(&args.id));
    let headers: Vec<(&str, &str)> = args.tenant.as_deref().map(|t| (crate::bus::TENANT, t)).into_iter().collect();
    let reply = client.post(&path, Some(&body), &headers, TIMEOUT).await?;
    if let (false, Some(position)) = (args.no_wait, reply["last_position"].as_u64()) {
        caught_up(&client, position).await?;
    }
    print(connection.output, &reply, item);
    Ok(())
}

/// Waits (up to 5 s) until every projection of the node applied `position`.
async fn caught_up(client: &Client, position: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ready = client.get("/readyz", &[]).await?;
        let lowest = ready["projections"].as_object().and_then(|p| p.values().map(|p| p["position"].as_u64()).min());
        if lowest.flatten().is_some_and(|lowest| lowest >= position) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("weft: the read models have not reached position {position} yet; reads may not show it");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
