//! `weft tenant erase`.

use std::time::Duration;

use clap::Subcommand;

use super::render::item;
use super::{Connection, print, segment};

/// The verbs of tenants.
#[derive(Debug, Clone, Subcommand)]
pub enum TenantVerb {
    /// Erases a tenant (crypto-shredding): destroys its key, so the personal fields of all its events (file
    /// names, owners, labels) read as `[erased]` everywhere from now on, in every copy of the log; the read
    /// models are scrubbed, and no new document is accepted for it. Cannot be undone.
    Erase {
        /// The tenant.
        tenant: String,
        /// Why, for the record (a ticket number; not personal data).
        #[arg(long)]
        reason: String,
        /// The tenant's name again: erasing cannot be undone.
        #[arg(long)]
        confirm: String,
    },
}

/// `weft tenant ...`.
pub async fn run(connection: Connection, verb: TenantVerb) -> anyhow::Result<()> {
    let client = connection.client()?;
    match verb {
        TenantVerb::Erase { tenant, reason, confirm } => {
            let path = format!("/tenants/{}/erase", segment(&tenant));
            let body = serde_json::json!({ "reason": reason, "confirm": confirm });
            let done = client.post(&path, Some(&body), &[], Duration::from_secs(30)).await?;
            print(connection.output, &done, item);
        }
    }
    Ok(())
}
