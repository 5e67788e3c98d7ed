//! What a read model is to its readers: its table, the columns of an item, the columns a list may be
//! filtered on, its time column, and how an item is completed and shaped. Each projection declares its own
//! ([`crate::documents::MODEL`], ...) beside the tables it writes; the query side reads through these, and a
//! test checks every declared column against the table the projection creates.

use rusqlite::ToSql;
use serde_json::{Value, json};

/// One read model's list and item reads.
#[derive(Debug)]
pub struct Model {
    /// The path segment and NATS token: `documents`, `jobs`.
    pub name: &'static str,
    /// The projection that writes it.
    pub projection: &'static str,
    /// The aggregate whose streams it reads: `document`, `job`.
    pub kind: &'static str,
    /// Its table; `id` is the key.
    pub table: &'static str,
    /// The columns of an item.
    pub columns: &'static [&'static str],
    /// The columns a list may be filtered on by equality, named as the query parameters.
    pub filters: &'static [&'static str],
    /// The column holding the items' labels as a JSON object, which lists filter on by `label.<key>=<value>`;
    /// `None` for a model without labels.
    pub labels: Option<&'static str>,
    /// The time column `since`/`until` bound (microseconds since the Unix epoch).
    pub time: &'static str,
    /// Adds the item's parts from other tables (lineage, steps), when one item is read.
    pub details: fn(&rusqlite::Connection, &str, &mut Value) -> rusqlite::Result<()>,
    /// Turns a row into what is served, in lists and items alike (JSON columns parsed, figures derived).
    pub shape: fn(&mut Value),
}

/// Every model with list and item reads.
pub const MODELS: [&Model; 6] = [
    &crate::documents::MODEL,
    &crate::jobs::MODEL,
    &crate::agents::MODEL,
    &crate::workflows::MODEL,
    &crate::schedules::MODEL,
    &crate::triggers::MODEL,
];

/// Replaces the JSON text in `item[field]` by the value it holds.
pub fn parse_json_field(item: &mut Value, field: &str) {
    if let Some(text) = item[field].as_str()
        && let Ok(value) = serde_json::from_str::<Value>(text)
    {
        item[field] = value;
    }
}

/// An item with nothing to add.
pub fn no_details(_db: &rusqlite::Connection, _id: &str, _item: &mut Value) -> rusqlite::Result<()> {
    Ok(())
}

/// One row as a JSON object of `columns`: integers, reals and text as they are, anything else `null`.
pub fn row_to_json(row: &rusqlite::Row<'_>, columns: &[&str]) -> rusqlite::Result<Value> {
    let mut object = serde_json::Map::new();
    for (i, column) in columns.iter().enumerate() {
        let value = match row.get_ref(i)? {
            rusqlite::types::ValueRef::Null | rusqlite::types::ValueRef::Blob(_) => Value::Null,
            rusqlite::types::ValueRef::Integer(n) => json!(n),
            rusqlite::types::ValueRef::Real(x) => json!(x),
            rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        };
        object.insert((*column).to_owned(), value);
    }
    Ok(Value::Object(object))
}

/// The rows of `sql` with `params`, each as [`row_to_json`].
pub fn rows(
    db: &rusqlite::Connection,
    sql: &str,
    params: &[&dyn ToSql],
    columns: &[&str],
) -> rusqlite::Result<Vec<Value>> {
    let mut statement = db.prepare_cached(sql)?;
    let rows = statement.query_map(params, |row| row_to_json(row, columns))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::MODELS;
    use crate::{Name, Projection};

    #[test]
    fn every_declared_column_is_in_the_table_its_projection_creates() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        crate::documents::Documents.create(&db).unwrap();
        crate::jobs::Jobs.create(&db).unwrap();
        crate::agents::Agents.create(&db).unwrap();
        crate::workflows::Workflows.create(&db).unwrap();
        crate::schedules::Schedules.create(&db).unwrap();
        for model in MODELS {
            let mut statement = db.prepare(&format!("SELECT name FROM pragma_table_info('{}')", model.table)).unwrap();
            let columns: Vec<String> = statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect();
            for column in model.columns {
                assert!(columns.iter().any(|c| c == column), "{}: no column {column} in {columns:?}", model.name);
            }
            for filter in model.filters.iter().chain([&model.time]).chain(&model.labels) {
                assert!(model.columns.contains(filter), "{}: {filter} is not one of its columns", model.name);
            }
            assert!(Name::parse(model.projection).is_some(), "{}: no projection {}", model.name, model.projection);
        }
    }

    #[test]
    fn every_projection_is_named_once_and_an_unknown_name_is_none() {
        for name in Name::ALL {
            assert_eq!(Name::parse(name.as_str()), Some(name));
        }
        assert_eq!(Name::parse("planets"), None);
    }
}
