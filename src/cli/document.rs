//! `weft document`: upload a file (register, PUT to the signed URL, confirm), download, label, delete, and
//! the reads.

use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use super::reads::{Read, read};
use super::render::item;
use super::{Client, Connection, TIMEOUT, print, segment};

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
        /// A label to register it with, `KEY=VALUE`; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = super::reads::parse_pair)]
        labels: Vec<(String, String)>,
    },
    /// Writes a document's current content, or that of `--version`, to a file (`-` for stdout).
    Download {
        /// Its id.
        id: String,
        /// Where to write it; the document's name in this folder without it.
        #[arg(long, short)]
        out: Option<std::path::PathBuf>,
        /// The version to download, from 1 (the first upload); the latest without it.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Uploads a file as the document's next version (an object of its own: the versions before keep their
    /// content), waits until the node has it, and prints the document's version count.
    AddVersion {
        /// Its id.
        id: String,
        /// The file.
        file: std::path::PathBuf,
    },
    /// Every version of the document's content, oldest first.
    Versions {
        /// Its id.
        id: String,
    },
    /// The documents it was derived from and those derived from it, to any depth, nearest first.
    Lineage {
        /// Its id.
        id: String,
        /// `ancestors`, `descendants` or `both`.
        #[arg(long, default_value = "both")]
        direction: String,
        /// How many derivations to follow, 1 to 64.
        #[arg(long, default_value_t = 64)]
        depth: u32,
    },
    /// Changes a document's labels: adds or replaces (`--set project=q3`) and removes (`--remove stage`)
    /// them, in one change; prints the reply.
    Label {
        /// Its id.
        id: String,
        /// A label to add or replace, `KEY=VALUE`; repeat for more.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::reads::parse_pair)]
        set: Vec<(String, String)>,
        /// The key of a label to take away; repeat for more.
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Deletes a document and its content (its history stays).
    Delete {
        /// Its id.
        id: String,
    },
}

/// How long `document upload` waits for the storage's notification before it asks the node to check the
/// object itself (`confirm`): S3 servers without notifications configured send none.
const NOTIFICATION_WAIT: Duration = Duration::from_secs(2);

/// How long an upload or a download may take.
pub(crate) const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

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
    labels: &std::collections::BTreeMap<String, String>,
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
    let body =
        serde_json::json!({"name": name, "content_type": content_type, "size_bytes": size_bytes, "labels": labels});
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
    // Until the read model shows it uploaded: asking the node to confirm it when no notification came in time,
    // then waiting for the read model to apply what the confirmation recorded.
    let started = tokio::time::Instant::now();
    let mut confirmed = false;
    while client.get(&path, &[]).await.ok().is_none_or(|d| d["status"] != "uploaded") {
        if !confirmed && started.elapsed() >= NOTIFICATION_WAIT {
            client.post(&format!("{path}/confirm"), None, &[], TIMEOUT).await?;
            confirmed = true;
        }
        anyhow::ensure!(started.elapsed() < TIMEOUT, "the node did not record the upload of {id} in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(id)
}

/// Uploads `file` as document `id`'s next version through a fresh upload URL, and waits until the node
/// records it (asking it to `confirm` the object when no notification came within 2 s); the document's
/// version count then.
pub async fn add_version(client: &Client, id: &str, file: &std::path::Path) -> anyhow::Result<u64> {
    let path = format!("/documents/{}", segment(id));
    let before = client.get(&path, &[]).await?;
    let versions = before["versions"].as_u64().unwrap_or(0);
    let content_type = before["content_type"].as_str().unwrap_or("application/octet-stream").to_owned();
    let opened =
        tokio::fs::File::open(file).await.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let size_bytes = opened.metadata().await?.len();
    anyhow::ensure!(size_bytes > 0, "{} is empty", file.display());
    let asked = client.post(&format!("{path}/upload-url"), None, &[], TIMEOUT).await?;
    let key = asked["key"].as_str().ok_or_else(|| anyhow::anyhow!("no key in {asked}"))?.to_owned();
    let put = signed_put(&client.http, &asked["upload"], &content_type)?
        .timeout(TRANSFER_TIMEOUT)
        .header("content-length", size_bytes);
    let answer = put.body(reqwest::Body::wrap_stream(crate::objects::file_body(opened))).send().await?;
    if !answer.status().is_success() {
        let status = answer.status();
        anyhow::bail!("the upload of {id}'s new version failed: {status} {}", answer.text().await.unwrap_or_default());
    }
    // Until the read model shows the new version: asking the node to confirm it when no notification came in
    // time, then waiting for the read model to apply what the confirmation recorded.
    let started = tokio::time::Instant::now();
    let mut confirmed = false;
    loop {
        let now = client.get(&path, &[]).await.ok().and_then(|d| d["versions"].as_u64()).unwrap_or(0);
        if now > versions {
            return Ok(now);
        }
        if !confirmed && started.elapsed() >= NOTIFICATION_WAIT {
            client.post(&format!("{path}/confirm?key={}", segment(&key)), None, &[], TIMEOUT).await?;
            confirmed = true;
        }
        anyhow::ensure!(started.elapsed() < TIMEOUT, "the node did not record the new version of {id} in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `weft document ...`.
pub async fn run(connection: Connection, verb: DocumentVerb) -> anyhow::Result<()> {
    let client = connection.client()?;
    match verb {
        DocumentVerb::Read(verb) => read(connection, "documents", verb).await,
        DocumentVerb::Upload { file, content_type, name, tenant, labels } => {
            let labels = labels.into_iter().collect();
            let id = upload(&client, &file, content_type, name, tenant.as_deref(), &labels).await?;
            println!("{id}");
            Ok(())
        }
        DocumentVerb::AddVersion { id, file } => {
            let versions = add_version(&client, &id, &file).await?;
            println!("{versions}");
            Ok(())
        }
        DocumentVerb::Versions { id } => {
            let document = client.get(&format!("/documents/{}", segment(&id)), &[]).await?;
            let contents = document["contents"].clone();
            print(connection.output, &contents, |contents| {
                super::table(
                    &["version", "size_bytes", "etag", "kept", "uploaded_at"],
                    contents.as_array().map_or(&[], Vec::as_slice),
                )
            });
            Ok(())
        }
        DocumentVerb::Lineage { id, direction, depth } => {
            let query = [("direction".to_owned(), direction), ("depth".to_owned(), depth.to_string())];
            let lineage = client.get(&format!("/documents/{}/lineage", segment(&id)), &query).await?;
            print(connection.output, &lineage, |lineage| {
                let mut rows = Vec::new();
                for (way, edges) in [("ancestor", &lineage["ancestors"]), ("descendant", &lineage["descendants"])] {
                    for edge in edges.as_array().into_iter().flatten() {
                        let mut row = edge.clone();
                        row["way"] = Value::String(way.into());
                        rows.push(row);
                    }
                }
                super::table(&["way", "depth", "id", "of", "job", "step", "version"], &rows)
            });
            Ok(())
        }
        DocumentVerb::Download { id, out, version } => {
            let path = format!("/documents/{}", segment(&id));
            let query: Vec<(String, String)> =
                version.map(|v| ("version".to_owned(), v.to_string())).into_iter().collect();
            let download = client.get(&format!("{path}/download"), &query).await?;
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
        DocumentVerb::Label { id, set, remove } => {
            anyhow::ensure!(!set.is_empty() || !remove.is_empty(), "give at least one --set KEY=VALUE or --remove KEY");
            let set: serde_json::Map<String, Value> = set.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let body = serde_json::json!({
                "command_id": uuid::Uuid::now_v7().to_string(),
                "type": "label",
                "payload": {"set": set, "remove": remove},
            });
            let path = format!("/commands/document/{}", segment(&id));
            let reply = client.post(&path, Some(&body), &[], TIMEOUT).await?;
            print(connection.output, &reply, item);
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
