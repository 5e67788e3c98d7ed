//! Drawing answers for people: a model's columns, cells (times as RFC 3339), tables, and one item as
//! `field  value` lines.

use std::fmt::Write as _;

use serde_json::Value;

/// The columns a table of each model shows.
pub(crate) fn columns(model: &str) -> &'static [&'static str] {
    match model {
        "documents" => &["id", "status", "name", "content_type", "size_bytes", "versions", "tenant", "updated_at"],
        "jobs" => &["id", "status", "steps_done", "steps_total", "workflow", "tenant", "submitted_at", "finished_at"],
        "agents" => &["id", "status", "name", "provider", "model", "tasks_done", "tasks_failed", "mean_latency_ms"],
        "workflows" => &["id", "status", "name", "latest_version", "steps_count", "tenant", "updated_at"],
        "schedules" => &["id", "status", "cron", "time_zone", "workflow", "fires", "next_fire_at"],
        "triggers" => &["id", "status", "workflow", "selector", "fires", "last_fired_at", "tenant", "created_at"],
        "auth/users" => &["name", "role", "tenants", "status", "created_at", "created_by"],
        "auth/keys" => &["id", "name", "role", "tenants", "status", "expires_at", "created_at"],
        _ => &[],
    }
}

/// A cell: text as is, times (`*_at`, microseconds) as RFC 3339, null as `-`, the rest as JSON.
pub(crate) fn cell(column: &str, value: &Value) -> String {
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
pub(crate) fn item(value: &Value) -> String {
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
