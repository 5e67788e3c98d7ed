//! The JSON Schemas in `schemas/` are the ones the code generates: a change to a command, an event or a reply
//! that is not reflected there fails here. To regenerate after a deliberate change:
//! `WEFT_UPDATE_SCHEMAS=1 cargo test --test it schemas`.

use std::path::Path;

#[test]
fn the_schemas_in_the_repository_match_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let update = std::env::var_os("WEFT_UPDATE_SCHEMAS").is_some();
    let mut drift = Vec::new();
    let generated = weft::protocol::schemas();
    for (name, schema) in &generated {
        let path = root.join(name);
        let text = serde_json::to_string_pretty(schema).unwrap() + "\n";
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drift.push(name.clone());
        }
    }
    assert!(
        drift.is_empty(),
        "schemas out of date: {drift:?}; regenerate with WEFT_UPDATE_SCHEMAS=1 cargo test --test it schemas"
    );
    assert_eq!(generated.len(), 6 * 3 + 1);
}

/// The paths of the objects in `schema` that allow fields they do not name.
fn open_objects(schema: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    match schema {
        serde_json::Value::Object(map) => {
            let closed = map.get("additionalProperties") == Some(&serde_json::Value::Bool(false))
                || map.get("unevaluatedProperties") == Some(&serde_json::Value::Bool(false));
            // A command's branch (`type` + `payload`) is closed by the request's `unevaluatedProperties`.
            let branch = at.contains("/oneOf/") && map.get("properties").is_some_and(|p| p.get("payload").is_some());
            if map.contains_key("properties") && !closed && !branch {
                out.push(at.to_owned());
            }
            for (key, value) in map {
                open_objects(value, &format!("{at}/{key}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                open_objects(item, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn command_schemas_refuse_unknown_fields_at_every_depth_as_the_intake_does() {
    for (name, schema) in weft::protocol::schemas().into_iter().filter(|(name, _)| name.starts_with("commands/")) {
        let mut open = Vec::new();
        open_objects(&schema, "", &mut open);
        assert!(open.is_empty(), "{name}: objects that take unknown fields, which the intake refuses: {open:?}");
    }
}

#[test]
fn a_command_schema_names_every_command_type() {
    let (_, job) = weft::protocol::schemas().into_iter().find(|(name, _)| name == "commands/job.json").unwrap();
    let text = job.to_string();
    for command in ["submit", "start_step", "complete_step", "fail_step", "retry_due", "append_log", "cancel"] {
        assert!(text.contains(&format!("\"{command}\"")), "{command} missing from the job's command schema");
    }
}
