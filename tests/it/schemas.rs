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
    assert_eq!(generated.len(), 5 * 3 + 1);
}

#[test]
fn a_command_schema_names_every_command_type() {
    let (_, job) = weft::protocol::schemas().into_iter().find(|(name, _)| name == "commands/job.json").unwrap();
    let text = job.to_string();
    for command in ["submit", "start_step", "complete_step", "fail_step", "retry_due", "append_log", "cancel"] {
        assert!(text.contains(&format!("\"{command}\"")), "{command} missing from the job's command schema");
    }
}
