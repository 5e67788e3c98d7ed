//! The query parameters of the reads: a list's filters (equality on a model's columns, `label.<key>` on its
//! labels), bounds and paging, each checked with a typed `invalid` failure.

use std::collections::BTreeMap;

use rusqlite::ToSql;
use weft_events::domain::ids::Uuid;
use weft_projections::model::Model;

use super::read::{DEFAULT_LIMIT, Failure, MAX_LIMIT};

/// Most `label.<key>` filters one list takes.
pub const MAX_LABEL_FILTERS: usize = 8;

/// The parsed query of a list.
pub(super) struct ListParams {
    pub(super) filters: Vec<(&'static str, String)>,
    /// `label.<key>=<value>`: the label's key and the value it must have.
    pub(super) labels: Vec<(String, String)>,
    pub(super) since: Option<i64>,
    pub(super) until: Option<i64>,
    pub(super) cursor: Option<String>,
    pub(super) limit: usize,
    pub(super) after: Option<u64>,
    /// `order=desc`: newest first (ids are time-ordered), the cursor paging on to older items.
    pub(super) descending: bool,
}

impl ListParams {
    pub(super) fn parse(model: &Model, params: &BTreeMap<String, String>) -> Result<Self, Failure> {
        let mut known = vec!["after", "cursor", "limit", "order", "since", "until"];
        known.extend(model.filters);
        let (labels, rest) = label_filters(model, params)?;
        if model.labels.is_some() {
            known.push("label.<key>");
        }
        check_keys(&rest, &known)?;
        let filters = model.filters.iter().filter_map(|f| params.get(*f).map(|v| (*f, v.clone()))).collect();
        let cursor = match params.get("cursor") {
            Some(c) => Some(parse_id(c).map_err(|_| Failure::invalid(format!("cursor {c:?} is not one we gave")))?),
            None => None,
        };
        Ok(Self {
            filters,
            labels,
            since: number(params, "since")?,
            until: number(params, "until")?,
            cursor: cursor.map(|c| c.to_string()),
            limit: limit(params)?,
            after: number(params, "after")?,
            descending: match params.get("order").map(String::as_str) {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => return Err(Failure::invalid(format!("order {other:?} is not `asc` or `desc`"))),
            },
        })
    }
}

/// A list's `label.<key>=<value>` filters, as (key, value).
pub type LabelFilters = Vec<(String, String)>;

/// The `label.<key>=<value>` parameters of a list of `model`, as (key, value), and the other parameters.
/// Refused: a label filter on a model without labels, a key that cannot be a label's, more than
/// [`MAX_LABEL_FILTERS`].
pub fn label_filters(
    model: &Model,
    params: &BTreeMap<String, String>,
) -> Result<(LabelFilters, BTreeMap<String, String>), Failure> {
    let mut labels = Vec::new();
    let mut rest = BTreeMap::new();
    for (key, value) in params {
        let Some(label) = key.strip_prefix("label.") else {
            rest.insert(key.clone(), value.clone());
            continue;
        };
        if model.labels.is_none() {
            return Err(Failure::invalid(format!("{} have no labels to filter on ({key:?})", model.name)));
        }
        weft_actors::document::check_label_key(label).map_err(|e| Failure::invalid(format!("{key:?}: {e}")))?;
        labels.push((label.to_owned(), value.clone()));
    }
    if labels.len() > MAX_LABEL_FILTERS {
        return Err(Failure::invalid(format!("{} label filters, over the limit of {MAX_LABEL_FILTERS}", labels.len())));
    }
    Ok((labels, rest))
}

/// Appends to `sql` one condition per label: the JSON object in `column` has that key with that value; the
/// conditions' parameters go to `args`, numbered after those there.
pub fn label_conditions(
    column: &str,
    labels: &[(String, String)],
    sql: &mut String,
    args: &mut Vec<Box<dyn ToSql + Send>>,
) {
    for (key, value) in labels {
        // A label key's characters (`is_label_key`) need no escaping inside the quotes of a JSON path.
        args.push(Box::new(format!("$.\"{key}\"")));
        args.push(Box::new(value.clone()));
        let (path, wanted) = (args.len() - 1, args.len());
        sql.push_str(&format!(" AND json_extract({column}, ?{path}) = ?{wanted}"));
    }
}

/// Refuses parameters other than `known`.
pub fn check_keys(params: &BTreeMap<String, String>, known: &[&str]) -> Result<(), Failure> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(Failure::invalid(format!("unknown parameter {unknown:?}; known: {}", known.join(", ")))),
        None => Ok(()),
    }
}

/// An optional number parameter.
pub fn number<T: std::str::FromStr>(params: &BTreeMap<String, String>, key: &str) -> Result<Option<T>, Failure> {
    params
        .get(key)
        .map(|v| v.parse().map_err(|_| Failure::invalid(format!("{key} {v:?} is not a number in range"))))
        .transpose()
}

pub(super) fn limit(params: &BTreeMap<String, String>) -> Result<usize, Failure> {
    match number::<usize>(params, "limit")? {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(Failure::invalid(format!("limit {n} is not within 1..={MAX_LIMIT}"))),
    }
}

/// An id parameter.
pub fn parse_id(id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id).map_err(|_| Failure::invalid(format!("{id:?} is not a UUID")))
}
