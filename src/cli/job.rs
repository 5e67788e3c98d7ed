//! `weft job`: run a workflow over documents and wait, cancel, retry, follow the logs, and the reads.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use super::reads::{Read, read};
use super::render::cell;
use super::{Client, Connection, FOLLOW_EVERY, Output, TIMEOUT, segment};

/// The verbs of jobs: those of every read model, and the log.
#[derive(Debug, Clone, Subcommand)]
pub enum JobVerb {
    /// `list` and `show`, as for every read model.
    #[command(flatten)]
    Read(Read),
    /// Submits a job of a workflow (by name or id, at its latest version unless `--version` names one) over
    /// documents; with `--wait`, prints its progress on stderr until it ends and its output documents' ids on
    /// stdout.
    Run(RunArgs),
    /// Runs a failed or dead-lettered job again from the steps that had not succeeded, each with a fresh set
    /// of attempts; with `--wait`, as `run --wait`.
    Retry {
        /// Its id.
        id: String,
        /// Why, for the job's history.
        #[arg(long, default_value = "retried by an operator")]
        reason: String,
        /// Wait until the job ends again; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Runs a job's workflow again as a new job over the same inputs, at the versions the job read: with
    /// `--recorded`, each provider call that asks what the job asked is answered from the job's recorded calls
    /// instead of the provider (to reproduce or debug a run without cost); with `--with-workflow VERSION`, at
    /// another version of the workflow. With `--wait`, waits for it and prints each step's output beside the
    /// job's, and whether their bytes are the same.
    Rerun {
        /// The job to run again.
        id: String,
        /// Answer from the job's recorded provider calls where the request is the same.
        #[arg(long)]
        recorded: bool,
        /// The workflow version to run (the job's without it).
        #[arg(long = "with-workflow", value_name = "VERSION")]
        with_workflow: Option<u32>,
        /// Wait until the new job ends, then compare the outputs; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Cancels a running job: its running provider calls are aborted.
    Cancel {
        /// Its id.
        id: String,
        /// Why, for the job's history.
        #[arg(long, default_value = "cancelled by an operator")]
        reason: String,
    },
    /// The job's log, oldest first.
    Logs {
        /// Its id.
        id: String,
        /// Keep printing new lines until the job ends.
        #[arg(long)]
        follow: bool,
    },
}

/// What every way of submitting a job takes: its inputs, how it runs, and whether to wait for it.
#[derive(Debug, Clone, Args)]
pub struct JobOptions {
    /// An input document's id (one or more).
    #[arg(long = "document", required = true)]
    pub documents: Vec<String>,
    /// Wait until the job ends; exit 1 unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// The tenant the job runs for (header `Weft-Tenant`).
    #[arg(long)]
    pub tenant: Option<String>,
    /// A job parameter for the steps' instructions (`{{param.NAME}}`), as `NAME=VALUE`; repeatable.
    #[arg(long = "param", value_parser = parameter)]
    pub parameters: Vec<(String, String)>,
}

/// What `weft job run` (and `weft workflow run`) runs.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The workflow's name (`redact-then-summarize`) or id.
    workflow: String,
    /// The workflow's version to run (its latest without it).
    #[arg(long)]
    version: Option<u32>,
    #[command(flatten)]
    job: JobOptions,
}

/// `weft job run` and `weft workflow run`: submits the job, prints its id (or, with `--wait`, its outputs).
pub async fn run_args(connection: Connection, args: RunArgs) -> anyhow::Result<()> {
    let RunArgs { workflow, version, job } = args;
    let client = connection.client()?;
    let run = JobRun {
        workflow: &workflow,
        version,
        documents: &job.documents,
        priority: job.priority,
        tenant: job.tenant.as_deref(),
    };
    let submitted = run_job(&client, run, &job.parameters.iter().cloned().collect(), job.wait).await?;
    print_submitted(submitted, job.wait);
    Ok(())
}

/// Prints what a submission came to: the job's id without waiting, each step's output document after.
pub(crate) fn print_submitted((job, outputs): (String, Vec<(String, String)>), waited: bool) {
    if !waited {
        println!("{job}");
    }
    for (step, output) in outputs {
        println!("{step}\t{output}");
    }
}

/// `weft job ...`.
pub async fn run(connection: Connection, verb: JobVerb) -> anyhow::Result<()> {
    match verb {
        JobVerb::Read(verb) => read(connection, "jobs", verb).await,
        JobVerb::Logs { id, follow } => logs(connection, &id, follow).await,
        JobVerb::Run(args) => run_args(connection, args).await,
        JobVerb::Retry { id, reason, wait } => {
            let client = connection.client()?;
            let after = job_command(&client, &id, "retry", &reason).await?;
            eprintln!("weft: job {id} retried");
            if wait {
                for (step, output) in wait_job(&client, &id, after).await? {
                    println!("{step}\t{output}");
                }
            }
            Ok(())
        }
        JobVerb::Rerun { id, recorded, with_workflow, wait } => {
            rerun(&connection.client()?, &id, recorded, with_workflow, wait).await
        }
        JobVerb::Cancel { id, reason } => {
            let client = connection.client()?;
            job_command(&client, &id, "cancel", &reason).await?;
            eprintln!("weft: job {id} cancelled");
            Ok(())
        }
    }
}

/// `weft job rerun`: see [`JobVerb::Rerun`].
async fn rerun(
    client: &Client,
    id: &str,
    recorded: bool,
    with_workflow: Option<u32>,
    wait: bool,
) -> anyhow::Result<()> {
    let history = client
        .get(&format!("/streams/job-{}/events", segment(id)), &[("limit".to_owned(), "1".to_owned())])
        .await
        .map_err(|e| anyhow::anyhow!("job {id} has no submission to run again: {e}"))?;
    let submitted = history["items"]
        .as_array()
        .and_then(|items| items.first())
        .filter(|first| first["type"] == "job.submitted")
        .map(|first| first["event"].clone())
        .ok_or_else(|| anyhow::anyhow!("job {id} has no submission to run again"))?;
    let inputs: Vec<String> =
        submitted["inputs"].as_array().into_iter().flatten().filter_map(|i| i.as_str().map(str::to_owned)).collect();
    // Each input at the version the job read (its derivatives say), else at the one it pinned.
    let mut versions = submitted["input_versions"].as_object().cloned().unwrap_or_default();
    for input in &inputs {
        let document = client.get(&format!("/documents/{}", segment(input)), &[]).await?;
        let read = document["derivatives"].as_array().into_iter().flatten().find(|d| d["job"] == id);
        if let Some(version) = read.and_then(|d| d["version"].as_u64()) {
            versions.insert(input.clone(), version.into());
        }
    }
    let version = with_workflow.map_or_else(|| submitted["workflow_version"].clone(), |v| v.into());
    let mut payload = json!({
        "workflow": submitted["workflow"],
        "workflow_version": version,
        "inputs": inputs,
        "priority": submitted["priority"],
        "parameters": submitted["parameters"].as_object().cloned().unwrap_or_default(),
        "input_versions": versions,
    });
    if recorded {
        payload["replay_of"] = json!(id);
    }
    let (job, outputs) = submit(client, payload, None, wait).await?;
    println!("{job}");
    if !wait {
        return Ok(());
    }
    // Each step's output beside the job's, and whether the bytes are the same.
    let original = client.get(&format!("/jobs/{}", segment(id)), &[]).await?;
    let before: BTreeMap<String, String> = original["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["step"].as_str()?.to_owned(), s["output"].as_str()?.to_owned())))
        .collect();
    for (step, output) in outputs {
        let same = match before.get(&step) {
            Some(earlier) => Some(content(client, earlier).await? == content(client, &output).await?),
            None => None,
        };
        let earlier = before.get(&step).map_or("-", String::as_str);
        let same = same.map_or("-", |same| if same { "same" } else { "differs" });
        println!("{step}\t{earlier}\t{output}\t{same}");
    }
    Ok(())
}

/// A document's current content.
async fn content(client: &Client, document: &str) -> anyhow::Result<Vec<u8>> {
    let download = client.get(&format!("/documents/{}/download", segment(document)), &[]).await?;
    let url = download["download"]["url"].as_str().ok_or_else(|| anyhow::anyhow!("no URL in {download}"))?;
    let answer = client.http.get(url).timeout(super::TRANSFER_TIMEOUT).send().await?;
    anyhow::ensure!(answer.status().is_success(), "downloading {document}: {}", answer.status());
    Ok(answer.bytes().await?.to_vec())
}

/// A `NAME=VALUE` job parameter from the command line.
pub(crate) fn parameter(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    Ok((name.to_owned(), value.to_owned()))
}

/// Sends a `retry` or `cancel` with its reason to a job; the position its events reached.
async fn job_command(client: &Client, id: &str, kind: &str, reason: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({"command_id": uuid::Uuid::now_v7(), "type": kind, "payload": {"reason": reason}});
    let reply = client.post(&format!("/commands/job/{}", segment(id)), Some(&body), &[], TIMEOUT).await?;
    Ok(reply["last_position"].as_u64().unwrap_or(0).to_string())
}

/// What `weft job run` submits.
#[derive(Debug, Clone, Copy)]
pub struct JobRun<'a> {
    /// The workflow's name or id.
    pub workflow: &'a str,
    /// Its version; the latest when `None`.
    pub version: Option<u32>,
    /// The input documents' ids.
    pub documents: &'a [String],
    /// Higher runs first.
    pub priority: i32,
    /// The tenant it runs for.
    pub tenant: Option<&'a str>,
}

/// How often `job run --wait` reads the job.
const WAIT_EVERY: Duration = Duration::from_millis(100);

/// Submits a job of `run.workflow` (a name or an id) over `run.documents`; with `wait`, prints its progress on
/// stderr until it ends. The job's id and, when it succeeded, each step's output document.
pub async fn run_job(
    client: &Client,
    run: JobRun<'_>,
    parameters: &BTreeMap<String, String>,
    wait: bool,
) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let JobRun { workflow, version, documents, priority, tenant } = run;
    let id = workflow_id(client, workflow).await?;
    let defined = client.get(&format!("/workflows/{}", segment(&id)), &[]).await?;
    let (version, steps) = match version {
        None => (defined["latest_version"].clone(), defined["steps"].clone()),
        Some(version) => {
            let versions = defined["versions"].as_array().map(Vec::as_slice).unwrap_or_default();
            let Some(found) = versions.iter().find(|v| v["workflow_version"].as_u64() == Some(u64::from(version)))
            else {
                anyhow::bail!(
                    "workflow {workflow:?} has no version {version} (it has 1 to {})",
                    defined["latest_version"]
                );
            };
            (json!(version), found["steps"].clone())
        }
    };
    let payload = serde_json::json!({
        "workflow": id, "workflow_version": version, "steps": steps,
        "inputs": documents, "priority": priority, "idempotency_key": null, "parameters": parameters,
    });
    submit(client, payload, tenant, wait).await
}

/// Submits a job with the `submit` command's `payload` as a fresh job; with `wait`, prints its progress on
/// stderr until it ends. The job's id and, when it succeeded, each step's output document.
pub(crate) async fn submit(
    client: &Client,
    payload: serde_json::Value,
    tenant: Option<&str>,
    wait: bool,
) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let job = uuid::Uuid::now_v7().to_string();
    let steps = payload["steps"].as_array().map_or(0, Vec::len);
    let body = serde_json::json!({"command_id": uuid::Uuid::now_v7(), "type": "submit", "payload": payload});
    let headers: Vec<(&str, &str)> = tenant.map(|t| (crate::bus::TENANT, t)).into_iter().collect();
    let reply = client.post(&format!("/commands/job/{job}"), Some(&body), &headers, TIMEOUT).await?;
    // The first read waits until the read model has the submission.
    let after = reply["last_position"].as_u64().unwrap_or(0).to_string();
    eprintln!("weft: job {job} submitted ({steps} steps)");
    if !wait {
        return Ok((job, vec![]));
    }
    let outputs = wait_job(client, &job, after).await?;
    Ok((job, outputs))
}

/// The id of the workflow `workflow` names: an id, or a name exactly one workflow has.
pub(crate) async fn workflow_id(client: &Client, workflow: &str) -> anyhow::Result<String> {
    if let Ok(id) = uuid::Uuid::parse_str(workflow) {
        return Ok(id.to_string());
    }
    let query = [("name".to_owned(), workflow.to_owned()), ("limit".to_owned(), "2".to_owned())];
    let page = client.get("/workflows", &query).await?;
    match page["items"].as_array().map(Vec::as_slice) {
        Some([one]) => Ok(one["id"].as_str().unwrap_or_default().to_owned()),
        Some([]) => anyhow::bail!("no workflow named {workflow:?} (weft workflow list shows them)"),
        _ => anyhow::bail!("more than one workflow is named {workflow:?}: name it by id"),
    }
}

/// Prints a job's progress on stderr until it ends, reading from the read model once it has reached `after`;
/// each step's output document when it succeeded, an error naming its status and error otherwise.
async fn wait_job(client: &Client, job: &str, after: String) -> anyhow::Result<Vec<(String, String)>> {
    let mut seen = String::new();
    loop {
        let state = client.get(&format!("/jobs/{}", segment(job)), &[("after".to_owned(), after.clone())]).await?;
        let steps: Vec<String> = state["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                format!(
                    "{} {} (attempt {})",
                    s["step"].as_str().unwrap_or("?"),
                    s["status"].as_str().unwrap_or("?"),
                    s["attempts"]
                )
            })
            .collect();
        let line = format!("{}: {}", state["status"].as_str().unwrap_or("?"), steps.join(", "));
        if line != seen {
            eprintln!("weft: {line}");
            seen = line;
        }
        match state["status"].as_str() {
            Some("succeeded") => {
                let outputs = state["steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        (s["step"].as_str().unwrap_or("?").to_owned(), s["output"].as_str().unwrap_or("-").to_owned())
                    })
                    .collect();
                return Ok(outputs);
            }
            Some(status @ ("failed" | "dead_lettered" | "cancelled")) => {
                anyhow::bail!("job {job} {status}: {}", state["error"].as_str().unwrap_or("no error recorded"));
            }
            _ => tokio::time::sleep(WAIT_EVERY).await,
        }
    }
}

/// Prints a job's log lines from the start; with `follow`, goes on until the job has ended and every line of
/// it is printed.
async fn logs(connection: Connection, id: &str, follow: bool) -> anyhow::Result<()> {
    let client = connection.client()?;
    let path = format!("/jobs/{}/logs", segment(id));
    let mut cursor = 0u64;
    loop {
        // Whether the job had ended before this page was read: then the page holds its last lines.
        let ended = follow && {
            let job = client.get(&format!("/jobs/{}", segment(id)), &[]).await?;
            job["status"].as_str().is_some_and(|s| s != "running")
        };
        let page = client.get(&path, &[("cursor".into(), cursor.to_string())]).await?;
        let Some(lines) = page["items"].as_array() else { anyhow::bail!("the node answered a page without items") };
        for line in lines {
            match connection.output {
                Output::Json => println!("{line}"),
                Output::Table => {
                    println!(
                        "{}  {:<5}  {}",
                        cell("at", &line["at"]),
                        cell("", &line["level"]),
                        cell("", &line["message"])
                    )
                }
            }
            cursor = line["seq"].as_u64().unwrap_or(cursor);
        }
        if page["next_cursor"].is_null() && (!follow || ended) {
            return Ok(());
        }
        if page["next_cursor"].is_null() {
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}
