//! What the provider calls of jobs cost, by tenant: `GET /costs` and `weft.qry.costs.tenants` read it from the jobs
//! read model (each job's tokens and cost, from its agents' completed tasks at the prices of the node that ran
//! them; see `crate::agents::prices`).

use std::collections::BTreeMap;

use rusqlite::ToSql;
use serde_json::{Value, json};

use super::params::number;
use super::read::{Failure, Reads};
use super::scope::Scope;

impl Reads {
    /// Each tenant the caller sees (a `user`: its own jobs) with its jobs' count, tokens and cost, for the jobs
    /// submitted within `since`..`until` (microseconds, both optional); `tenant=` picks one.
    pub async fn costs(&self, params: &BTreeMap<String, String>, scope: &Scope) -> Result<Value, Failure> {
        if let Some(unknown) = params.keys().find(|k| !["since", "until", "tenant"].contains(&k.as_str())) {
            return Err(Failure::invalid(format!("unknown parameter {unknown:?} (since, until, tenant)")));
        }
        let (since, until) = (number::<i64>(params, "since")?, number::<i64>(params, "until")?);
        let mut sql = String::from(
            "SELECT tenant, count(*), sum(input_tokens), sum(output_tokens), sum(cost_nanos) FROM jobs WHERE 1",
        );
        let mut args: Vec<Box<dyn ToSql + Send>> = Vec::new();
        for (column, op, value) in [("submitted_at", ">=", since), ("submitted_at", "<", until)] {
            if let Some(value) = value {
                args.push(Box::new(value));
                sql.push_str(&format!(" AND {column} {op} ?{}", args.len()));
            }
        }
        if let Some(tenant) = params.get("tenant") {
            args.push(Box::new(tenant.clone()));
            sql.push_str(&format!(" AND tenant = ?{}", args.len()));
        }
        scope.restrict(&weft_projections::jobs::MODEL, &mut sql, &mut args);
        sql.push_str(" GROUP BY tenant ORDER BY tenant");
        let rows = self
            .query(move |db| {
                let mut statement = db.prepare(&sql)?;
                let args: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref() as &dyn ToSql).collect();
                let rows = statement.query_map(args.as_slice(), |row| {
                    let mut tenant = json!({
                        "tenant": row.get::<_, String>(0)?,
                        "jobs": row.get::<_, i64>(1)?,
                        "input_tokens": row.get::<_, i64>(2)?,
                        "output_tokens": row.get::<_, i64>(3)?,
                        "cost_nanos": row.get::<_, i64>(4)?,
                    });
                    weft_projections::with_cost_usd(&mut tenant);
                    Ok(tenant)
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(json!({"tenants": rows}))
    }
}
