//! What a reader may see: all tenants, or some; and, for documents, only those it owns. The HTTP and NATS
//! edges make one from the caller's identity (`crate::auth`); the reads apply it in SQL (lists) or to the
//! item found (items), and an item out of scope answers `not_found` exactly as a missing one does.

use rusqlite::ToSql;
use serde_json::Value;

use weft_projections::model::Model;

/// See the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The tenants it sees; every tenant when `None`.
    pub tenants: Option<Vec<String>>,
    /// The owner whose documents alone it sees (lists and items of models with an `owner` column).
    pub owner: Option<String>,
}

/// The documents model's name.
const DOCUMENTS: &str = "documents";

/// The documents the steps of `?1`'s jobs wrote: a reader confined to what it owns reads them too.
const OUTPUTS_OF_OWN_JOBS: &str =
    "SELECT l.child FROM document_lineage l JOIN jobs j ON j.id = l.job WHERE j.owner = ?1";

impl Scope {
    /// Everything: a node without authentication, an admin, the node's own reads.
    pub const ALL: Scope = Scope { tenants: None, owner: None };

    /// What `identity` may read: everything without one (no authentication) or for an identity of every
    /// tenant; else its tenants, and a `user` only its own documents and its jobs' outputs.
    pub fn of(identity: Option<&crate::auth::Identity>) -> Scope {
        match identity {
            None => Scope::ALL,
            Some(identity) => Scope {
                tenants: (!identity.reaches_all()).then(|| identity.tenants.clone()),
                owner: identity.owns_only().then(|| identity.subject.clone()),
            },
        }
    }

    /// Whether it sees a row of `model` holding `item`'s `tenant` and `owner`.
    pub fn admits(&self, model: &Model, item: &Value) -> bool {
        let tenant_ok = self.tenant_ok(item["tenant"].as_str().unwrap_or(""));
        let owner_ok = match &self.owner {
            Some(owner) if model.columns.contains(&"owner") => item["owner"].as_str() == Some(owner),
            _ => true,
        };
        tenant_ok && owner_ok
    }

    /// [`Scope::admits`], and for a reader confined to what it owns, a document it does not own but one of its
    /// own jobs wrote (a step's output: its owner is the agent that wrote it), read from `db`.
    pub fn admits_in(&self, db: &rusqlite::Connection, model: &Model, item: &Value) -> rusqlite::Result<bool> {
        if self.admits(model, item) {
            return Ok(true);
        }
        let (Some(owner), true) = (&self.owner, model.name == DOCUMENTS) else { return Ok(false) };
        if !self.tenant_ok(item["tenant"].as_str().unwrap_or("")) {
            return Ok(false);
        }
        let id = item["id"].as_str().unwrap_or("");
        db.prepare_cached(&format!("SELECT EXISTS({OUTPUTS_OF_OWN_JOBS} AND l.child = ?2)"))?
            .query_row(rusqlite::params![owner, id], |row| row.get(0))
    }

    /// Whether it sees `tenant`'s rows.
    pub fn tenant_ok(&self, tenant: &str) -> bool {
        self.tenants.as_ref().is_none_or(|tenants| tenants.iter().any(|t| t == tenant))
    }

    /// Appends its conditions on `model`'s rows to `sql`, their values to `args`.
    pub fn restrict(&self, model: &Model, sql: &mut String, args: &mut Vec<Box<dyn ToSql + Send>>) {
        if let Some(tenants) = &self.tenants {
            if tenants.is_empty() {
                sql.push_str(" AND 0");
            } else {
                let mut marks = Vec::new();
                for tenant in tenants {
                    args.push(Box::new(tenant.clone()));
                    marks.push(format!("?{}", args.len()));
                }
                sql.push_str(&format!(" AND tenant IN ({})", marks.join(", ")));
            }
        }
        if let Some(owner) = &self.owner
            && model.columns.contains(&"owner")
        {
            args.push(Box::new(owner.clone()));
            let n = args.len();
            if model.name == DOCUMENTS {
                let outputs = OUTPUTS_OF_OWN_JOBS.replace("?1", &format!("?{n}"));
                sql.push_str(&format!(" AND (owner = ?{n} OR id IN ({outputs}))"));
            } else {
                sql.push_str(&format!(" AND owner = ?{n}"));
            }
        }
    }
}
