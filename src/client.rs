//! The command line's client of a running node: `weft document|job|agent|workflow|schedule list|show`,
//! `weft job logs [--follow]`, `weft projection rebuild`, `weft status`. Each reads the node's query API over
//! HTTP (`--url`, or `WEFT_URL`; the default is `weft serve`'s default address).
//!
//! Data goes to stdout, as the API's JSON (`--output json`) or as a table (`--output table`, the default);
//! diagnostics go to stderr. An error answer of the node is printed with its kind and message, and the command
//! exits non-zero.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

/// How long one request may take (a rebuild can take long: it has its own).
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a rebuild may take.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often `job logs --follow` asks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Where the node is and how to print.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The node's query API.
    #[arg(long, env = "WEFT_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// How to print the data.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// How the data is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The API's JSON, one document.
    Json,
    /// Columns for people.
    Table,
}

/// What a list asks for.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// `name=value` filters, as the API's query parameters: `status=running`, `tenant=acme`, `since=<µs>`.
    #[arg(long = "where", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub filters: Vec<(String, String)>,
    /// Items per page (the API's limit, at most 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this id (a previous page's next cursor).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Every page, not just the first.
    #[arg(long)]
    pub all: bool,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// The verbs of a read model.
#[derive(Debug, Clone, Subcommand)]
pub enum Read {
    /// A page of the list (or every page with --all), ordered by id.
    List(ListArgs),
    /// One item, with its details.
    Show {
        /// Its id.
        id: String,
    },
}

/// The verbs of documents: those of every read model, and their content.
#[derive(Debug, Clone, Subcommand)]
pub enum DocumentVerb {
    /// `list` and `show`, as for every read model.
    #[command(flatten)]
    Read(Read),
    /// Registers a file as a document, uploads it through its signed URL, waits until the node has it, and
    /// prints its id.
    Upload {
        /// The file.
        file: std::path::PathBuf,
        /// Its MIME type; guessed from the file's extension without it.
        #[arg(long)]
        content_type: Option<String>,
        /// Its name; the file's name without it.
        #[arg(long)]
        name: Option<String>,
        /// The tenant it belongs to (header `Weft-Tenant`; `default` without it).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Writes a document's current content to a file (`-` for stdout).
    Download {
        /// Its id.
        id: String,
        /// Where to write it; the document's name in this folder without it.
        #[arg(long, short)]
        out: Option<std::path::PathBuf>,
    },
    /// Deletes a document and its content (its history stays).
    Delete {
        /// Its id.
        id: String,
    },
}

/// The verbs of jobs: those of every read model, and the log.
#[derive(Debug, Clone, Subcommand)]
pub enum JobVerb {
    /// `list` and `show`, as for every read model.
    #[command(flatten)]
    Read(Read),
    /// Submits a job of a workflow (by name or id, at its latest version) over documents; with `--wait`, prints
    /// its progress on stderr until it ends and its output documents' ids on stdout.
    Run {
        /// The workflow's name (`redact-then-summarize`) or id.
        workflow: String,
        /// An input document's id (one or more).
        #[arg(long = "document", required = true)]
        documents: Vec<String>,
        /// Wait until the job ends; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// Higher runs first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// The tenant the job runs for (header `Weft-Tenant`).
        #[arg(long)]
        tenant: Option<String>,
        /// A job parameter for the steps' instructions (`{{param.NAME}}`), as `NAME=VALUE`; repeatable.
        #[arg(long = "param", value_parser = parameter)]
        parameters: Vec<(String, String)>,
    },
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

/// The verbs of tenants.
#[derive(Debug, Clone, Subcommand)]
pub enum TenantVerb {
    /// Erases a tenant (crypto-shredding): destroys its key, so the personal fields of all its events (file
    /// names, owners, labels) read as `[erased]` everywhere from now on, in every copy of the log; the read
    /// models are scrubbed, and no new document is accepted for it. Cannot be undone.
    Erase {
        /// The tenant.
        tenant: String,
        /// Why, for the record (a ticket number; not personal data).
        #[arg(long)]
        reason: String,
        /// The tenant's name again: erasing cannot be undone.
        #[arg(long)]
        confirm: String,
    },
}

/// `weft tenant ...`.
pub async fn tenant(connection: Connection, verb: TenantVerb) -> anyhow::Result<()> {
    let client = Client::new(&connection.url)?;
    match verb {
        TenantVerb::Erase { tenant, reason, confirm } => {
            let path = format!("/tenants/{}/erase", segment(&tenant));
            let body = serde_json::json!({ "reason": reason, "confirm": confirm });
            let done = client.post(&path, Some(&body), &[], Duration::from_secs(30)).await?;
            print(connection.output, &done, item);
        }
    }
    Ok(())
}

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

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node could not be reached.
    #[error("cannot reach the node at {url} (is `weft serve` running there? set --url or WEFT_URL): {source}")]
    Unreachable {
        /// The address tried.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("{status} {kind}: {message}")]
    Answer {
        /// The HTTP status.
        status: u16,
        /// The error's kind (`invalid`, `not_found`, ...).
        kind: String,
        /// For people.
        message: String,
    },
    /// The node's answer was not the JSON expected.
    #[error("the node at {url} answered something that is not Weft's JSON: {detail}")]
    Garbled {
        /// The address asked.
        url: String,
        /// What was wrong.
        detail: String,
    },
}

/// The HTTP client of one node.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the node at `url`.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "--url must start with http:// or https://, not {url:?}"
        );
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
        Ok(Self { base, http })
    }

    async fn send(&self, request: reqwest::RequestBuilder, url: String) -> Result<Value, Error> {
        let response = request.send().await.map_err(|source| Error::Unreachable { url: url.clone(), source })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|source| Error::Unreachable { url: url.clone(), source })?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::Garbled { url: url.clone(), detail: format!("{status}: {e}") })?;
        if status.is_success() {
            return Ok(value);
        }
        let text = |field: &str| value["error"][field].as_str().map(str::to_owned);
        match (text("kind"), text("message")) {
            (Some(kind), Some(message)) => Err(Error::Answer { status: status.as_u16(), kind, message }),
            _ => Err(Error::Garbled { url, detail: format!("{status} without an error object") }),
        }
    }

    /// `GET path?query`.
    pub async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url).query(query).timeout(TIMEOUT), url).await
    }

    /// The body of `GET url` as text: a signed download URL, which is not the node's.
    pub async fn text(&self, url: &str) -> Result<String, Error> {
        let unreachable = |source| Error::Unreachable { url: url.to_owned(), source };
        let answer = self.http.get(url).timeout(TRANSFER_TIMEOUT).send().await.map_err(unreachable)?;
        let status = answer.status();
        let text = answer.text().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(Error::Garbled { url: url.to_owned(), detail: format!("{status}: {text}") });
        }
        Ok(text)
    }

    /// `POST path` with a JSON body, or none.
    pub async fn post(
        &self,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Value, Error> {
        self.request(reqwest::Method::POST, path, body, headers, timeout).await
    }

    /// `method path` with a JSON body, or none.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).timeout(timeout);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        self.send(request, url).await
    }
}

/// A path segment from user input: ids are percent-encoded so that they cannot reach another route.
fn segment(text: &str) -> String {
    let mut encoded = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The columns a table of each model shows.
fn columns(model: &str) -> &'static [&'static str] {
    match model {
        "documents" => &["id", "status", "name", "content_type", "size_bytes", "versions", "tenant", "updated_at"],
        "jobs" => &["id", "status", "steps_done", "steps_total", "workflow", "tenant", "submitted_at", "finished_at"],
        "agents" => &["id", "status", "name", "provider", "model", "tasks_done", "tasks_failed", "mean_latency_ms"],
        "workflows" => &["id", "name", "latest_version", "steps_count", "tenant", "updated_at"],
        "schedules" => &["id", "status", "cron", "time_zone", "workflow", "fires", "next_fire_at"],
        _ => &[],
    }
}

/// A cell: text as is, times (`*_at`, microseconds) as RFC 3339, null as `-`, the rest as JSON.
fn cell(column: &str, value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        Value::Number(n) if column.ends_with("_at") => n
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map_or_else(|| n.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// Rows under a header, columns padded to their widest cell.
pub(crate) fn table(columns: &[&str], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows.iter().map(|row| columns.iter().map(|c| cell(c, &row[*c])).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max(c.len()))
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, values: &mut dyn Iterator<Item = String>| {
        let padded: Vec<String> = values.zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut out, &mut columns.iter().map(|c| c.to_uppercase()));
    for row in cells {
        line(&mut out, &mut row.into_iter());
    }
    out
}

/// One item as `field  value` lines; a list of objects (steps, versions, lineage) as a table under its name.
fn item(value: &Value) -> String {
    let Some(object) = value.as_object() else { return format!("{value}\n") };
    let width = object.keys().map(String::len).max().unwrap_or(0);
    let mut out = String::new();
    let mut nested = Vec::new();
    for (field, value) in object {
        match value {
            Value::Array(rows) if rows.first().is_some_and(Value::is_object) => nested.push((field, rows)),
            _ => {
                let _ = writeln!(out, "{field:<width$}  {}", cell(field, value));
            }
        }
    }
    for (field, rows) in nested {
        let mut columns: Vec<&str> =
            rows[0].as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        // What names a row comes first.
        columns.sort_by_key(|c| !matches!(*c, "step" | "id" | "workflow_version" | "name"));
        let _ = write!(out, "\n{field}:\n{}", table(&columns, rows));
    }
    out
}

fn print(output: Output, value: &Value, as_table: impl FnOnce(&Value) -> String) {
    match output {
        Output::Json => println!("{value}"),
        Output::Table => print!("{}", as_table(value)),
    }
}

/// `weft <model> list|show`.
pub async fn read(connection: Connection, model: &'static str, verb: Read) -> anyhow::Result<()> {
    let client = Client::new(&connection.url)?;
    match verb {
        Read::Show { id } => {
            let found = client.get(&format!("/{model}/{}", segment(&id)), &[]).await?;
            print(connection.output, &found, item);
        }
        Read::List(args) => list(&client, connection.output, model, args).await?,
    }
    Ok(())
}

async fn list(client: &Client, output: Output, model: &'static str, args: ListArgs) -> anyhow::Result<()> {
    let mut query = args.filters.clone();
    if let Some(limit) = args.limit {
        query.push(("limit".into(), limit.to_string()));
    }
    let mut cursor = args.cursor.clone();
    let mut items = Vec::new();
    let next = loop {
        let mut page_query = query.clone();
        if let Some(cursor) = &cursor {
            page_query.push(("cursor".into(), cursor.clone()));
        }
        let page = client.get(&format!("/{model}"), &page_query).await?;
        let (Some(page_items), next) = (page["items"].as_array(), page["next_cursor"].as_str()) else {
            anyhow::bail!("the node answered a page without items: {page}");
        };
        items.extend(page_items.iter().cloned());
        match next {
            Some(next) if args.all => cursor = Some(next.to_owned()),
            next => break next.map(str::to_owned),
        }
    };
    let page = serde_json::json!({"items": items, "next_cursor": next});
    print(output, &page, |page| table(columns(model), page["items"].as_array().map_or(&[], Vec::as_slice)));
    if let (Output::Table, Some(next)) = (output, next) {
        eprintln!("more: --cursor {next} (or --all)");
    }
    Ok(())
}

/// How long `document upload` waits for the storage's notification before it asks the node to check the
/// object itself (`confirm`): S3 servers without notifications configured send none.
const NOTIFICATION_WAIT: Duration = Duration::from_secs(2);

/// How long an upload or a download may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// A MIME type from a file's extension (the common ones of documents); `application/octet-stream` otherwise.
fn guess_content_type(path: &std::path::Path) -> &'static str {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match extension.as_str() {
        "txt" | "text" | "log" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "xml" => "application/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        _ => "application/octet-stream",
    }
}

/// The `PUT` of a signed upload (`{url, headers}` as `POST /documents` answers it) with its signed headers, and
/// `content_type` when they do not name one; the body is the caller's.
pub fn signed_put(
    http: &reqwest::Client,
    upload: &Value,
    content_type: &str,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let url = upload["url"].as_str().ok_or_else(|| anyhow::anyhow!("no upload URL in {upload}"))?;
    let mut put = http.put(url);
    let headers = upload["headers"].as_object();
    for (header, value) in headers.into_iter().flatten() {
        put = put.header(header, value.as_str().unwrap_or_default());
    }
    if !headers.is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("content-type"))) {
        put = put.header("content-type", content_type);
    }
    Ok(put)
}

/// Registers `file` as a document, streams it to its signed URL and waits until the node records it (asking it
/// to `confirm` when no notification came within 2 s); the document's id.
pub async fn upload(
    client: &Client,
    file: &std::path::Path,
    content_type: Option<String>,
    name: Option<String>,
    tenant: Option<&str>,
) -> anyhow::Result<String> {
    let content_type = content_type.unwrap_or_else(|| guess_content_type(file).to_owned());
    let name = match name {
        Some(name) => name,
        None => file.file_name().and_then(|n| n.to_str()).unwrap_or("document").to_owned(),
    };
    let opened =
        tokio::fs::File::open(file).await.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let size_bytes = opened.metadata().await?.len();
    anyhow::ensure!(size_bytes > 0, "{} is empty", file.display());
    let body = serde_json::json!({"name": name, "content_type": content_type, "size_bytes": size_bytes});
    let headers: Vec<(&str, &str)> = tenant.map(|t| (crate::bus::TENANT, t)).into_iter().collect();
    let registered = client.post("/documents", Some(&body), &headers, TIMEOUT).await?;
    let id = registered["id"].as_str().ok_or_else(|| anyhow::anyhow!("no id in {registered}"))?.to_owned();
    let upload = &registered["upload"];
    let put =
        signed_put(&client.http, upload, &content_type)?.timeout(TRANSFER_TIMEOUT).header("content-length", size_bytes);
    let stream = crate::objects::file_body(opened);
    let answer = put.body(reqwest::Body::wrap_stream(stream)).send().await?;
    if !answer.status().is_success() {
        let status = answer.status();
        anyhow::bail!("the upload of {id} failed: {status} {}", answer.text().await.unwrap_or_default());
    }
    eprintln!("weft: uploaded {size_bytes} bytes; waiting for the node to have them");
    let path = format!("/documents/{}", segment(&id));
    let deadline = tokio::time::Instant::now() + NOTIFICATION_WAIT;
    while client.get(&path, &[]).await.ok().is_none_or(|d| d["status"] != "uploaded") {
        if tokio::time::Instant::now() >= deadline {
            client.post(&format!("{path}/confirm"), None, &[], TIMEOUT).await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(id)
}

/// `weft document ...`.
pub async fn document(connection: Connection, verb: DocumentVerb) -> anyhow::Result<()> {
    let client = Client::new(&connection.url)?;
    match verb {
        DocumentVerb::Read(verb) => read(connection, "documents", verb).await,
        DocumentVerb::Upload { file, content_type, name, tenant } => {
            let id = upload(&client, &file, content_type, name, tenant.as_deref()).await?;
            println!("{id}");
            Ok(())
        }
        DocumentVerb::Download { id, out } => {
            let path = format!("/documents/{}", segment(&id));
            let download = client.get(&format!("{path}/download"), &[]).await?;
            let url = download["download"]["url"].as_str().ok_or_else(|| anyhow::anyhow!("no URL in {download}"))?;
            let out = match out {
                Some(out) => out,
                None => {
                    let name = client.get(&path, &[]).await?["name"].as_str().unwrap_or(&id).to_owned();
                    // Only the last component of a name a client chose: never a path elsewhere.
                    let name = std::path::Path::new(&name).file_name().map(|n| n.to_owned()).unwrap_or(id.into());
                    std::path::PathBuf::from(name)
                }
            };
            let mut answer = client.http.get(url).timeout(TRANSFER_TIMEOUT).send().await?;
            anyhow::ensure!(answer.status().is_success(), "the download failed: {}", answer.status());
            let mut sink: Box<dyn std::io::Write> = if out.as_os_str() == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(
                    std::fs::File::create(&out).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?,
                )
            };
            let mut size: u64 = 0;
            while let Some(chunk) = answer.chunk().await? {
                size += chunk.len() as u64;
                sink.write_all(&chunk)?;
            }
            sink.flush()?;
            if out.as_os_str() != "-" {
                eprintln!("weft: wrote {size} bytes to {}", out.display());
            }
            Ok(())
        }
        DocumentVerb::Delete { id } => {
            let path = format!("/documents/{}", segment(&id));
            let answer = client.request(reqwest::Method::DELETE, &path, None, &[], TIMEOUT).await?;
            print(connection.output, &answer, item);
            Ok(())
        }
    }
}

/// `weft job ...`.
pub async fn job(connection: Connection, verb: JobVerb) -> anyhow::Result<()> {
    match verb {
        JobVerb::Read(verb) => read(connection, "jobs", verb).await,
        JobVerb::Logs { id, follow } => logs(connection, &id, follow).await,
        JobVerb::Run { workflow, documents, wait, priority, tenant, parameters } => {
            let client = Client::new(&connection.url)?;
            let run = JobRun { workflow: &workflow, documents: &documents, priority, tenant: tenant.as_deref() };
            let (job, outputs) = run_job(&client, run, &parameters.into_iter().collect(), wait).await?;
            if !wait {
                println!("{job}");
            }
            for (step, output) in outputs {
                println!("{step}\t{output}");
            }
            Ok(())
        }
        JobVerb::Retry { id, reason, wait } => {
            let client = Client::new(&connection.url)?;
            let after = job_command(&client, &id, "retry", &reason).await?;
            eprintln!("weft: job {id} retried");
            if wait {
                for (step, output) in wait_job(&client, &id, after).await? {
                    println!("{step}\t{output}");
                }
            }
            Ok(())
        }
        JobVerb::Cancel { id, reason } => {
            let client = Client::new(&connection.url)?;
            job_command(&client, &id, "cancel", &reason).await?;
            eprintln!("weft: job {id} cancelled");
            Ok(())
        }
    }
}

/// A `NAME=VALUE` job parameter from the command line.
fn parameter(text: &str) -> Result<(String, String), String> {
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
    let JobRun { workflow, documents, priority, tenant } = run;
    let id = match uuid::Uuid::parse_str(workflow) {
        Ok(id) => id.to_string(),
        Err(_) => {
            let query = [("name".to_owned(), workflow.to_owned()), ("limit".to_owned(), "2".to_owned())];
            let page = client.get("/workflows", &query).await?;
            match page["items"].as_array().map(Vec::as_slice) {
                Some([one]) => one["id"].as_str().unwrap_or_default().to_owned(),
                Some([]) => anyhow::bail!("no workflow named {workflow:?} (weft workflow list shows them)"),
                _ => anyhow::bail!("more than one workflow is named {workflow:?}: name it by id"),
            }
        }
    };
    let defined = client.get(&format!("/workflows/{}", segment(&id)), &[]).await?;
    let job = uuid::Uuid::now_v7().to_string();
    let payload = serde_json::json!({
        "workflow": id, "workflow_version": defined["latest_version"], "steps": defined["steps"],
        "inputs": documents, "priority": priority, "idempotency_key": null, "parameters": parameters,
    });
    let body = serde_json::json!({"command_id": uuid::Uuid::now_v7(), "type": "submit", "payload": payload});
    let headers: Vec<(&str, &str)> = tenant.map(|t| (crate::bus::TENANT, t)).into_iter().collect();
    let reply = client.post(&format!("/commands/job/{job}"), Some(&body), &headers, TIMEOUT).await?;
    // The first read waits until the read model has the submission.
    let after = reply["last_position"].as_u64().unwrap_or(0).to_string();
    eprintln!("weft: job {job} submitted ({} steps)", defined["steps"].as_array().map_or(0, Vec::len));
    if !wait {
        return Ok((job, vec![]));
    }
    let outputs = wait_job(client, &job, after).await?;
    Ok((job, outputs))
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
    let client = Client::new(&connection.url)?;
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

/// `weft projection ...`.
pub async fn projection(connection: Connection, verb: ProjectionVerb) -> anyhow::Result<()> {
    let client = Client::new(&connection.url)?;
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

/// `weft send`: one command through the node's command intake; prints the reply (with the positions its events
/// took, for `?after=` reads).
pub async fn send(connection: Connection, args: SendArgs) -> anyhow::Result<()> {
    let client = Client::new(&connection.url)?;
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

/// `weft stream events <stream>`: a stream's events, oldest first, every page.
pub async fn stream_events(connection: Connection, stream: &str) -> anyhow::Result<()> {
    let client = Client::new(&connection.url)?;
    let path = format!("/streams/{}/events", segment(stream));
    let mut cursor = 0u64;
    let mut events = Vec::new();
    loop {
        let page = client.get(&path, &[("cursor".into(), cursor.to_string())]).await?;
        let Some(items) = page["items"].as_array() else { anyhow::bail!("the node answered a page without items") };
        events.extend(items.iter().cloned());
        match page["next_cursor"].as_u64() {
            Some(next) => cursor = next,
            None => break,
        }
    }
    let events = Value::Array(events);
    print(connection.output, &events, |events| {
        table(&["version", "position", "type", "recorded_at", "actor"], events.as_array().map_or(&[], Vec::as_slice))
    });
    Ok(())
}
