//! `weft stream events`: a stream's events read from a running node (the local store's own tools are
//! `weft events`).

use serde_json::Value;

use super::render::table;
use super::{Connection, print, segment};

/// `weft stream events <stream>`: a stream's events, oldest first, every page.
pub async fn stream_events(connection: Connection, stream: &str) -> anyhow::Result<()> {
    let client = connection.client()?;
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
