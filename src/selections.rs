//! The read models serving the write side: documents for schedules over a selector (the timer service's
//! [`Select`]), documents still waiting for their upload (the upload sweep's [`Pending`]), and the jobs still
//! running a workflow that is to be deleted (the intake's [`crate::intake::RunningJobs`]).
//!
//! A selection first waits until the documents read model has applied the store's head (as of the firing),
//! so that every upload recorded before the occurrence fired is seen; it then takes the `uploaded` documents
//! that match every field given (each label a selector names, as the document's labels are then), oldest
//! upload first, by their latest upload's log position. Agents' outputs (owner `agent:<id>`) are never
//! selected: a schedule over "the new text documents" would otherwise take its own jobs' outputs as new
//! work, without end.

use weft_actors::process::timers::{Select, Selected};
use weft_events::domain::ids::{DocumentId, Uuid};
use weft_events::domain::schedule::Target;

use crate::objects::documents::Error;
use crate::objects::sweep::Pending;
use crate::query::read::{DOCUMENTS, Reads};

#[async_trait::async_trait(?Send)]
impl Select for Reads {
    async fn select(&self, target: &Target, after_position: Option<u64>, limit: usize) -> Result<Selected, String> {
        let Target::Selector { tenant, content_type, name_prefix, labels, .. } = target.clone() else {
            return Err("not a selector".into());
        };
        let head = self.store.head().await.map_err(|e| e.to_string())?;
        self.caught_up("documents", Some(head)).await.map_err(|e| e.message)?;
        let after = after_position.map_or(-1, |p| i64::try_from(p).unwrap_or(i64::MAX));
        let head_i64 = i64::try_from(head).unwrap_or(i64::MAX);
        let rows = self
            .query(move |db| {
                // `name_prefix` is matched by substr, not LIKE, so `%` and `_` in it mean themselves.
                let mut sql = "SELECT id, uploaded_position FROM documents
                     WHERE status = 'uploaded' AND uploaded_position > ?1 AND uploaded_position <= ?2
                       AND substr(owner, 1, 6) != 'agent:'
                       AND (?3 IS NULL OR tenant = ?3) AND (?4 IS NULL OR content_type = ?4)
                       AND (?5 IS NULL OR substr(name, 1, length(?5)) = ?5)"
                    .to_owned();
                let mut args: Vec<Box<dyn rusqlite::ToSql + Send>> = vec![
                    Box::new(after),
                    Box::new(head_i64),
                    Box::new(tenant),
                    Box::new(content_type),
                    Box::new(name_prefix),
                    Box::new(limit as i64),
                ];
                let labels: Vec<(String, String)> = labels.into_iter().collect();
                crate::query::read::label_conditions("labels", &labels, &mut sql, &mut args);
                sql.push_str(" ORDER BY uploaded_position LIMIT ?6");
                let mut statement = db.prepare_cached(&sql)?;
                let params: Vec<&dyn rusqlite::ToSql> =
                    args.iter().map(|a| a.as_ref() as &dyn rusqlite::ToSql).collect();
                let rows = statement
                    .query_map(params.as_slice(), |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .map_err(|e| e.message)?;
        // Cut short by the limit: the next firing goes on after the last one taken.
        let through_position = match rows.last() {
            Some((_, position)) if rows.len() >= limit => u64::try_from(*position).unwrap_or(head),
            _ => head,
        };
        let documents = rows
            .into_iter()
            .map(|(id, _)| Uuid::parse_str(&id).map(DocumentId).map_err(|e| format!("document id {id:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Selected { documents, through_position })
    }
}

#[async_trait::async_trait]
impl crate::intake::RunningJobs for Reads {
    async fn running(&self, workflow: weft_events::domain::ids::WorkflowId) -> Result<u64, String> {
        // Every job stored so far, the ones submitted just before the workflow was archived among them.
        let head = self.store.head().await.map_err(|e| e.to_string())?;
        self.caught_up(weft_projections::jobs::NAME, Some(head)).await.map_err(|e| e.message)?;
        let workflow = workflow.to_string();
        self.query(move |db| {
            db.prepare_cached("SELECT count(*) FROM jobs WHERE workflow = ?1 AND status = 'running'")?
                .query_row([&workflow], |row| row.get::<_, i64>(0))
        })
        .await
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(|e| e.message)
    }
}

#[async_trait::async_trait]
impl Pending for Reads {
    async fn pending(&self, since: i64, cursor: Option<String>) -> Result<(Vec<DocumentId>, Option<String>), Error> {
        let head = self.store.head().await.map_err(|e| Error::Unavailable(format!("event store: {e}")))?;
        let mut params = std::collections::BTreeMap::from([
            ("status".to_owned(), "registered".to_owned()),
            ("since".to_owned(), since.to_string()),
            ("limit".to_owned(), "200".to_owned()),
            // The read model must have applied everything stored so far, or a document registered just before
            // a crash would be missed.
            ("after".to_owned(), head.to_string()),
        ]);
        if let Some(cursor) = cursor {
            params.insert("cursor".into(), cursor);
        }
        let page = self
            .list(&DOCUMENTS, &params, &crate::query::Scope::ALL)
            .await
            .map_err(|f| Error::Unavailable(f.message))?;
        let ids = page["items"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_str()?.parse().ok());
        Ok((ids.collect(), page["next_cursor"].as_str().map(str::to_owned)))
    }
}
