//! `weft agent`: one agent run over documents without a workflow (a one-off job), and the reads.

use clap::{Args, Subcommand};
use serde_json::json;
use weft_events::domain::ids::WorkflowId;

use super::job::{JobOptions, print_submitted, submit};
use super::reads::{Read, read};
use super::{Connection, segment};

/// The verbs of agents: those of every read model, and a one-off run.
#[derive(Debug, Clone, Subcommand)]
pub enum AgentVerb {
    /// `list` and `show`, as for every read model.
    #[command(flatten)]
    Read(Read),
    /// Runs one agent over documents with an instruction, without defining a workflow: a one-off job of one
    /// step named `request` (workflow `00000000-0000-0000-0000-000000000000`, version 0), recorded, retried
    /// and read like any other job. With `--wait`, prints its progress on stderr until it ends and its output
    /// document's id on stdout; without, the job's id.
    Run(RunArgs),
}

/// What `weft agent run` runs.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The agent's name (`builtin`) or id.
    agent: String,
    /// What the agent is to do (`{{param.NAME}}` takes a `--param`).
    #[arg(long)]
    instruction: String,
    /// How long one attempt may take, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// Attempts before the job fails.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    #[command(flatten)]
    job: JobOptions,
}

/// `weft agent ...`.
pub async fn run(connection: Connection, verb: AgentVerb) -> anyhow::Result<()> {
    match verb {
        AgentVerb::Read(verb) => read(connection, "agents", verb).await,
        AgentVerb::Run(args) => one_off(connection, args).await,
    }
}

/// `weft agent run`.
async fn one_off(connection: Connection, args: RunArgs) -> anyhow::Result<()> {
    let RunArgs { agent, instruction, timeout_ms, attempts, job } = args;
    let client = connection.client()?;
    let agent = match uuid::Uuid::parse_str(&agent) {
        Ok(id) => id.to_string(),
        Err(_) => {
            let query = [("name".to_owned(), agent.clone()), ("limit".to_owned(), "2".to_owned())];
            let page = client.get("/agents", &query).await?;
            match page["items"].as_array().map(Vec::as_slice) {
                Some([one]) => one["id"].as_str().unwrap_or_default().to_owned(),
                Some([]) => anyhow::bail!("no agent named {agent:?} (weft agent list shows them)"),
                _ => anyhow::bail!("more than one agent is named {agent:?}: name it by id"),
            }
        }
    };
    // Checked here for a clear message; the node checks the step again as any job's.
    client.get(&format!("/agents/{}", segment(&agent)), &[]).await?;
    let step = json!({
        "name": "request", "agent": agent, "instruction": instruction, "inputs": [{"from": "job_inputs"}],
        "timeout_ms": timeout_ms,
        "retry": {"max_attempts": attempts, "base_delay_ms": 1000, "max_delay_ms": 30_000},
    });
    let parameters: std::collections::BTreeMap<&String, &String> = job.parameters.iter().map(|(k, v)| (k, v)).collect();
    let payload = json!({
        "workflow": WorkflowId::ONE_OFF, "workflow_version": 0, "steps": [step], "inputs": job.documents,
        "priority": job.priority, "idempotency_key": null, "parameters": parameters,
    });
    print_submitted(submit(&client, payload, job.tenant.as_deref(), job.wait).await?, job.wait);
    Ok(())
}
