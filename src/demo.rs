//! `weft demo`: the platform at work in one command, with nothing to set up. It runs a node on the embedded
//! defaults in a temporary folder, uploads a sample document (registration, a `PUT` to its signed URL, the
//! store's notification), runs the built-in `redact-then-summarize` workflow on it while printing the job's
//! progress, prints each step's output document, then the job's event history, and stops the node.

use crate::cli::{self, Client, Connection, Output};
use crate::node::Node;

/// The sample document.
const SAMPLE: &str = "Quarterly report, third quarter.\n\n\
Please send questions to ann.lee@example.com or call +44 20 7946 0958.\n\n\
Revenue rose by twelve percent in the third quarter. Revenue growth came from new customers in Europe, \
where the sales team opened two offices. The weather was mild for the season. Customers in Europe bought \
more licences than in any quarter before, and revenue per customer rose as well. Costs were flat. \
The refund to card 4111 1111 1111 1111 was processed on the first of October.\n";

/// Runs the demo.
pub async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    eprintln!("weft demo: starting a node in {} (SQLite, in-process bus, local object store)", dir.path().display());
    let node = Node::start_in(dir.path(), &[]).await?;
    let result = run(&node, dir.path()).await;
    node.stop().await?;
    result
}

async fn run(node: &Node, dir: &std::path::Path) -> anyhow::Result<()> {
    let url = format!("http://{}", node.http_addr());
    // The node's admin token, written beside its store.
    let token = std::fs::read_to_string(dir.join(crate::node::ADMIN_TOKEN_FILE))?;
    let client = Client::new(&url, Some(token.trim()))?;
    let file = dir.join("quarterly-report.txt");
    std::fs::write(&file, SAMPLE)?;
    println!("== the input document\n{SAMPLE}");
    let document = cli::upload(&client, &file, None, None, Some("demo"), &Default::default()).await?;
    println!("== uploaded as document {document}\n");
    println!("== running redact-then-summarize (progress on stderr)");
    let (job, outputs) = cli::run_job(
        &client,
        cli::JobRun {
            workflow: "redact-then-summarize",
            version: None,
            documents: &[document],
            priority: 0,
            tenant: Some("demo"),
        },
        &Default::default(),
        true,
    )
    .await?;
    for (step, output) in &outputs {
        let download = client.get(&format!("/documents/{output}/download"), &[]).await?;
        let link = download["download"]["url"].as_str().ok_or_else(|| anyhow::anyhow!("no URL in {download}"))?;
        let text = client.text(link).await?;
        println!("\n== step {step} wrote document {output}\n{text}");
    }
    println!("== the job's history (job-{job})");
    let connection = Connection { url, output: Output::Table, token: Some(token), token_file: None };
    cli::stream_events(connection, &format!("job-{job}")).await
}
