//! The documents read model: one row per document with its status, size, versions and times, and its lineage
//! (the documents it was derived from and those derived from it).
//!
//! Tables:
//!
//! - `documents (id, tenant, owner, name, content_type, declared_size_bytes, status, size_bytes, etag,
//!   versions, deleted_reason, created_at, updated_at, version)`: `status` is `registered`, `uploaded` or
//!   `deleted`; `versions` counts the uploaded contents (the first upload and each added version); times are
//!   microseconds since the Unix epoch; `version` is the document stream's version the row reflects;
//!   `uploaded_position` is the log position of its latest upload (first or added version), by which a
//!   schedule selects "the documents uploaded since its last firing" exactly (a read model made before the
//!   column existed gains it on start, empty until `weft projection rebuild documents`); `labels` is its
//!   labels, as registered and changed since (`document.labels_changed`), a JSON object (likewise gained on
//!   start, empty for older rows until a rebuild); lists filter on them (`?label.project=q3`).
//! - `document_lineage (parent, child, job, step, version)`: one row per derivative recorded; `version` is the
//!   parent's version the step read (gained on start by an older read model, empty for its rows).
//! - `document_contents (document, version, size_bytes, etag, kept, own_object, uploaded_at)`: one row per
//!   version (the first upload is 1); `own_object` when its content has an object of its own, `kept` false
//!   for a content in the document's own key that a later version replaced (before versions were kept). A
//!   read model made before the table existed has it empty for older documents until a rebuild.
//!
//! On `tenant.erased` the tenant's rows lose their personal columns (`name`, `owner` become `[erased]`,
//! `labels` `{}`), as the events read from then on.

use rusqlite::{Transaction, params};
use weft_events::Envelope;
use weft_events::domain::DomainEvent;
use weft_events::domain::document::Event;
use weft_events::domain::ids::DocumentId;

use crate::model::{Model, parse_json_field, rows};
use crate::{ApplyError, Projection};
use serde_json::{Value, json};

/// The projection's name, as the runner, `/readyz` and `GET /projections/{name}` know it.
pub const NAME: &str = "documents";

/// The documents read model.
pub const MODEL: Model = Model {
    name: "documents",
    projection: NAME,
    kind: "document",
    table: "documents",
    columns: &[
        "id",
        "tenant",
        "owner",
        "name",
        "content_type",
        "declared_size_bytes",
        "status",
        "size_bytes",
        "etag",
        "versions",
        "deleted_reason",
        "created_at",
        "updated_at",
        "version",
        "labels",
    ],
    filters: &["status", "tenant", "owner", "content_type"],
    labels: Some("labels"),
    time: "created_at",
    details: document_details,
    shape: |item| parse_json_field(item, "labels"),
};

/// A document's lineage: the documents it came from and those made from it.
fn document_details(db: &rusqlite::Connection, id: &str, document: &mut Value) -> rusqlite::Result<()> {
    document["parents"] = json!(rows(
        db,
        "SELECT parent, job, step FROM document_lineage WHERE child = ?1",
        &[&id],
        &["id", "job", "step"]
    )?);
    document["derivatives"] = json!(rows(
        db,
        "SELECT child, job, step, version FROM document_lineage WHERE parent = ?1",
        &[&id],
        &["id", "job", "step", "version"]
    )?);
    let mut contents = rows(
        db,
        "SELECT version, size_bytes, etag, kept, uploaded_at FROM document_contents WHERE document = ?1
         ORDER BY version",
        &[&id],
        &["version", "size_bytes", "etag", "kept", "uploaded_at"],
    )?;
    for content in &mut contents {
        content["kept"] = json!(content["kept"] == 1);
    }
    document["contents"] = json!(contents);
    Ok(())
}

/// Most edges a lineage read returns.
pub const MAX_LINEAGE_EDGES: usize = 1000;

/// The lineage of document `id` to `depth` derivations: its ancestors (`up`: the documents it was derived
/// from, theirs, ...) or its descendants, each edge as `{id, of, job, step, version, depth}` (`id` derived
/// from or into `of` by `job`'s `step`, which read `version` of the parent; `depth` 1 for the document's own
/// parents or derivatives), nearest first, at most [`MAX_LINEAGE_EDGES`]; and whether there were more.
pub fn lineage(db: &rusqlite::Connection, id: &str, depth: u32, up: bool) -> rusqlite::Result<(Vec<Value>, bool)> {
    // `near` is the document an edge leads from (the child going up, the parent going down), `far` the one it
    // leads to; the walk goes on from `far`.
    let (near, far) = if up { ("child", "parent") } else { ("parent", "child") };
    let sql = format!(
        "WITH RECURSIVE walk(far, near, job, step, version, depth) AS (
             SELECT {far}, {near}, job, step, version, 1 FROM document_lineage WHERE {near} = ?1
             UNION
             SELECT l.{far}, l.{near}, l.job, l.step, l.version, walk.depth + 1
             FROM document_lineage l JOIN walk ON l.{near} = walk.far WHERE walk.depth < ?2
         )
         SELECT far, near, job, step, version, min(depth) AS depth FROM walk
         GROUP BY far, near ORDER BY depth, far LIMIT ?3"
    );
    let limit = (MAX_LINEAGE_EDGES + 1) as i64;
    let mut edges = rows(db, &sql, &[&id, &depth, &limit], &["id", "of", "job", "step", "version", "depth"])?;
    let more = edges.len() > MAX_LINEAGE_EDGES;
    edges.truncate(MAX_LINEAGE_EDGES);
    Ok((edges, more))
}

/// The documents projection.
#[derive(Debug, Default)]
pub struct Documents;

impl Projection for Documents {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["documents", "document_lineage", "document_contents"]
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS documents (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 owner TEXT NOT NULL,
                 name TEXT NOT NULL,
                 content_type TEXT NOT NULL,
                 declared_size_bytes INTEGER NOT NULL,
                 status TEXT NOT NULL,
                 size_bytes INTEGER,
                 etag TEXT,
                 versions INTEGER NOT NULL DEFAULT 0,
                 deleted_reason TEXT,
                 created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 version INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS documents_by_tenant_status ON documents (tenant, status, id);
             CREATE TABLE IF NOT EXISTS document_lineage (
                 parent TEXT NOT NULL,
                 child TEXT NOT NULL,
                 job TEXT NOT NULL,
                 step TEXT NOT NULL,
                 PRIMARY KEY (parent, child)
             );
             CREATE INDEX IF NOT EXISTS document_lineage_by_child ON document_lineage (child);
             CREATE TABLE IF NOT EXISTS document_contents (
                 document TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 size_bytes INTEGER NOT NULL,
                 etag TEXT NOT NULL,
                 kept INTEGER NOT NULL,
                 own_object INTEGER NOT NULL,
                 uploaded_at INTEGER NOT NULL,
                 PRIMARY KEY (document, version)
             );",
        )?;
        crate::add_column(db, "document_lineage", "version INTEGER")?;
        crate::add_column(db, "documents", "uploaded_position INTEGER")?;
        crate::add_column(db, "documents", "labels TEXT")?;
        db.execute_batch(
            "CREATE INDEX IF NOT EXISTS documents_by_upload ON documents (uploaded_position)
             WHERE uploaded_position IS NOT NULL",
        )
    }

    fn wants(&self, event: &Envelope) -> bool {
        crate::of_kind(event, DocumentId::KIND) || crate::of_kind(event, crate::TENANT_KIND)
    }

    fn apply(&mut self, tx: &Transaction<'_>, envelope: &Envelope) -> Result<(), ApplyError> {
        if let Some(tenant) = crate::erased_tenant(envelope)? {
            // The personal columns of the tenant's documents, as its events now read.
            crate::exec(
                tx,
                "UPDATE documents SET name = ?2, owner = ?2, labels = '{}' WHERE tenant = ?1",
                params![tenant, weft_events::seal::ERASED],
            )?;
            return Ok(());
        }
        let Some(id) = DocumentId::from_stream(&envelope.stream) else { return Ok(()) };
        let event = Event::from_envelope(envelope)
            .map_err(|source| ApplyError::Decode { position: envelope.position, source })?;
        let (id, version) = (id.to_string(), envelope.version as i64);
        match event {
            Event::Registered(e) => {
                crate::exec(
                    tx,
                    "INSERT INTO documents (id, tenant, owner, name, content_type, declared_size_bytes, status,
                                            created_at, updated_at, version, labels)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'registered', ?7, ?7, ?8, ?9)
                     ON CONFLICT (id) DO NOTHING",
                    params![
                        id,
                        e.tenant,
                        e.owner,
                        e.name,
                        e.content_type,
                        e.declared_size_bytes as i64,
                        e.at.0,
                        version,
                        serde_json::to_string(&e.labels).unwrap_or_else(|_| "{}".to_owned())
                    ],
                )?;
            }
            Event::Uploaded(e) => {
                crate::exec(
                    tx,
                    "UPDATE documents SET status = 'uploaded', size_bytes = ?2, etag = ?3, versions = versions + 1,
                                          updated_at = ?4, version = ?5, uploaded_position = ?6 WHERE id = ?1",
                    params![id, e.size_bytes as i64, e.etag, e.at.0, version, envelope.position as i64],
                )?;
                crate::exec(
                    tx,
                    "INSERT INTO document_contents (document, version, size_bytes, etag, kept, own_object, uploaded_at)
                     VALUES (?1, 1, ?2, ?3, 1, 0, ?4) ON CONFLICT DO NOTHING",
                    params![id, e.size_bytes as i64, e.etag, e.at.0],
                )?;
            }
            Event::VersionAdded(e) => {
                crate::exec(
                    tx,
                    "UPDATE documents SET size_bytes = ?2, etag = ?3, versions = versions + 1, updated_at = ?4,
                                          version = ?5, uploaded_position = ?6 WHERE id = ?1",
                    params![id, e.size_bytes as i64, e.etag, e.at.0, version, envelope.position as i64],
                )?;
                if e.key.is_none() {
                    crate::exec(
                        tx,
                        "UPDATE document_contents SET kept = 0 WHERE document = ?1 AND own_object = 0",
                        params![id],
                    )?;
                }
                crate::exec(
                    tx,
                    "INSERT INTO document_contents (document, version, size_bytes, etag, kept, own_object, uploaded_at)
                     SELECT id, versions, ?2, ?3, 1, ?4, ?5 FROM documents WHERE id = ?1
                     ON CONFLICT DO NOTHING",
                    params![id, e.size_bytes as i64, e.etag, e.key.is_some(), e.at.0],
                )?;
            }
            Event::DerivativeRecorded(e) => {
                crate::exec(
                    tx,
                    "INSERT INTO document_lineage (parent, child, job, step, version) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT DO NOTHING",
                    params![id, e.child.to_string(), e.job.to_string(), e.step, e.version],
                )?;
                crate::exec(
                    tx,
                    "UPDATE documents SET updated_at = ?2, version = ?3 WHERE id = ?1",
                    params![id, e.at.0, version],
                )?;
            }
            Event::LabelsChanged(e) => {
                crate::exec(
                    tx,
                    "UPDATE documents SET labels = ?2, updated_at = ?3, version = ?4 WHERE id = ?1",
                    params![id, serde_json::to_string(&e.labels).unwrap_or_else(|_| "{}".to_owned()), e.at.0, version],
                )?;
            }
            Event::Deleted(e) => {
                crate::exec(
                    tx,
                    "UPDATE documents SET status = 'deleted', deleted_reason = ?2, updated_at = ?3, version = ?4
                     WHERE id = ?1",
                    params![id, e.reason, e.at.0, version],
                )?;
            }
        }
        Ok(())
    }
}
