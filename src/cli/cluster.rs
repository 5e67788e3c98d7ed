//! `weft cluster status`: the nodes sharing the node's store and their share of the partitions.

use clap::Subcommand;
use serde_json::Value;

use super::render::table;
use super::{Connection, print};

/// The verbs of the cluster.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterVerb {
    /// The live nodes (each announced in JetStream KV, gone 3 s after its last heartbeat), where each serves,
    /// its heartbeat's age and its partitions, and with routing by partition each partition's holder and the
    /// age of its lease, as `GET /cluster` answers.
    Status,
}

/// `weft cluster ...`.
pub async fn run(connection: Connection, verb: ClusterVerb) -> anyhow::Result<()> {
    let client = connection.client()?;
    match verb {
        ClusterVerb::Status => {
            let cluster = client.get("/cluster", &[]).await?;
            print(connection.output, &cluster, |cluster| {
                let me = cluster["this_node"].as_str().unwrap_or("");
                let rows: Vec<Value> = cluster["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|node| {
                        let mut row = node.clone();
                        let partitions = node["partitions"].as_array().map_or(0, Vec::len);
                        row["partitions"] = Value::from(partitions);
                        row["asked"] = Value::from(if node["id"] == me { "yes" } else { "" });
                        row
                    })
                    .collect();
                let routing =
                    if cluster["partition_routing"] == true { "the holder of their partition" } else { "any node" };
                let mut text = format!(
                    "{}\n{} partitions; commands go to {routing}\n",
                    table(&["id", "http", "heartbeat_age_ms", "partitions", "version", "asked"], &rows).trim_end(),
                    cluster["partitions"]
                );
                if let Some(leases) = cluster["leases"].as_array() {
                    text.push('\n');
                    text.push_str(
                        table(&["partition", "owner", "revision", "held_ms", "renewed_ms_ago"], leases).trim_end(),
                    );
                    text.push('\n');
                }
                text
            });
        }
    }
    Ok(())
}
