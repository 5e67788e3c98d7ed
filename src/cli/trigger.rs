//! `weft trigger`: create, pause, resume and delete triggers, and the reads.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::job::parameter;
use super::reads::{Read, read};
use super::render::item;
use super::{Connection, TIMEOUT, print, segment};

/// The verbs of triggers: those of every read model, and the commands.
#[derive(Debug, Clone, Subcommand)]
pub enum TriggerVerb {
    /// `list` and `show`, as for every read model.
    #[command(flatten)]
    Read(Read),
    /// Creates a trigger: each upload (and new version) of a document the selector matches runs the workflow
    /// on it, once.
    Create(CreateArgs),
    /// Stops firing: uploads from now on fire nothing.
    Pause {
        /// The trigger's id.
        id: String,
    },
    /// Fires again, on uploads from now on.
    Resume {
        /// The trigger's id.
        id: String,
    },
    /// Deletes the trigger.
    Delete {
        /// The trigger's id.
        id: String,
    },
}

/// What `weft trigger create` creates.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The workflow's name or id; its jobs run the latest version defined when they fire.
    #[arg(long)]
    workflow: String,
    /// What a document must match, as `FIELD=VALUE`: `content_type=text/plain`, `name_prefix=in/`,
    /// `label.project=q3` (labels match by equality); repeatable, at least one.
    #[arg(long = "where", value_name = "FIELD=VALUE", required = true, value_parser = condition)]
    conditions: Vec<Condition>,
    /// A parameter of its jobs, as `NAME=VALUE`; repeatable.
    #[arg(long = "param", value_parser = parameter)]
    parameters: Vec<(String, String)>,
    /// The priority of its jobs: higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Fire on a document's first upload only, not on its new versions.
    #[arg(long)]
    no_versions: bool,
    /// Fire on the outputs of its own jobs too (a loop unless the workflow's outputs stop matching).
    #[arg(long)]
    own_outputs: bool,
    /// The tenant it is for (header `Weft-Tenant`): it fires on that tenant's documents only.
    #[arg(long)]
    tenant: Option<String>,
    /// The trigger's id, for a retry that must not create it twice; a fresh one without it.
    #[arg(long)]
    id: Option<uuid::Uuid>,
}

/// One condition of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `content_type=...`.
    ContentType(String),
    /// `name_prefix=...`.
    NamePrefix(String),
    /// `label.<key>=<value>`.
    Label(String, String),
}

/// Parses `FIELD=VALUE`; an operator other than `=` (`!=`, `~=`, `>=`, `<=`, ...) is refused by name.
pub fn condition(text: &str) -> Result<Condition, String> {
    let (field, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not FIELD=VALUE"))?;
    if let Some(operator) = field.chars().last().filter(|c| "!~<>^$*".contains(*c)) {
        return Err(format!(
            "{text:?}: unknown operator {:?}; a selector matches by equality only (FIELD=VALUE)",
            format!("{operator}=")
        ));
    }
    match field {
        "content_type" => Ok(Condition::ContentType(value.to_owned())),
        "name_prefix" => Ok(Condition::NamePrefix(value.to_owned())),
        _ => match field.strip_prefix("label.") {
            Some(key) if weft_actors::document::is_label_key(key) => {
                Ok(Condition::Label(key.to_owned(), value.to_owned()))
            }
            Some(key) => Err(weft_actors::document::check_label_key(key).unwrap_err()),
            None => Err(format!("{field:?} is not a selector field: content_type, name_prefix or label.<key>")),
        },
    }
}

/// The selector the conditions make, as the `create` command's JSON.
fn selector(conditions: &[Condition]) -> Value {
    let (mut content_type, mut name_prefix, mut labels) = (None, None, BTreeMap::new());
    for condition in conditions {
        match condition {
            Condition::ContentType(value) => content_type = Some(value.clone()),
            Condition::NamePrefix(value) => name_prefix = Some(value.clone()),
            Condition::Label(key, value) => {
                labels.insert(key.clone(), value.clone());
            }
        }
    }
    json!({"content_type": content_type, "name_prefix": name_prefix, "labels": labels})
}

/// `weft trigger ...`.
pub async fn run(connection: Connection, verb: TriggerVerb) -> anyhow::Result<()> {
    let (id, kind, payload, tenant) = match verb {
        TriggerVerb::Read(verb) => return read(connection, "triggers", verb).await,
        TriggerVerb::Create(args) => {
            let client = connection.client()?;
            let workflow = super::job::workflow_id(&client, &args.workflow).await?;
            let parameters: BTreeMap<String, String> = args.parameters.into_iter().collect();
            let payload = json!({
                "workflow": workflow,
                "selector": selector(&args.conditions),
                "parameters": parameters,
                "priority": args.priority,
                "on_versions": !args.no_versions,
                "own_outputs": args.own_outputs,
            });
            let id = args.id.unwrap_or_else(uuid::Uuid::now_v7).to_string();
            (id, "create", payload, args.tenant)
        }
        TriggerVerb::Pause { id } => (id, "pause", json!({}), None),
        TriggerVerb::Resume { id } => (id, "resume", json!({}), None),
        TriggerVerb::Delete { id } => (id, "delete", json!({}), None),
    };
    let client = connection.client()?;
    let body = json!({"command_id": uuid::Uuid::now_v7(), "type": kind, "payload": payload});
    let headers: Vec<(&str, &str)> = tenant.as_deref().map(|t| (crate::bus::TENANT, t)).into_iter().collect();
    let mut reply = client.post(&format!("/commands/trigger/{}", segment(&id)), Some(&body), &headers, TIMEOUT).await?;
    reply["id"] = json!(id);
    print(connection.output, &reply, item);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_by_field_and_other_operators_are_refused_by_name() {
        assert_eq!(condition("content_type=text/plain"), Ok(Condition::ContentType("text/plain".into())));
        assert_eq!(condition("name_prefix=in/"), Ok(Condition::NamePrefix("in/".into())));
        assert_eq!(condition("label.project=q3=x"), Ok(Condition::Label("project".into(), "q3=x".into())));
        let refused = condition("label.project!=q3").unwrap_err();
        assert!(refused.contains("unknown operator \"!=\""), "{refused}");
        assert!(condition("label.project~=q").unwrap_err().contains("unknown operator"));
        assert!(condition("label.bad key=q").unwrap_err().contains("not a label key"));
        assert!(condition("colour=red").unwrap_err().contains("not a selector field"));
        assert!(condition("no-equals").is_err());
    }
}
