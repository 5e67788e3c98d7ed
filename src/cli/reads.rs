//! `weft agent|workflow|schedule|document|job list|show`: a model's pages and items.

use clap::{Args, Subcommand};

use super::render::{columns, item, table};
use super::{Client, Connection, Output, print, segment};

/// What a list asks for.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// `name=value` filters, as the API's query parameters: `status=running`, `tenant=acme`, `since=<µs>`,
    /// `label.project=q3` (documents).
    #[arg(long = "where", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub filters: Vec<(String, String)>,
    /// Items per page (the API's limit, at most 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this id (a previous page's next cursor).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Every page, not just the first.
    #[arg(long)]
    pub all: bool,
}

pub(crate) fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// The verbs of a read model.
#[derive(Debug, Clone, Subcommand)]
pub enum Read {
    /// A page of the list (or every page with --all), ordered by id.
    List(ListArgs),
    /// One item, with its details.
    Show {
        /// Its id.
        id: String,
    },
}

/// `weft <model> list|show`.
pub async fn read(connection: Connection, model: &'static str, verb: Read) -> anyhow::Result<()> {
    let client = connection.client()?;
    match verb {
        Read::Show { id } => {
            let found = client.get(&format!("/{model}/{}", segment(&id)), &[]).await?;
            print(connection.output, &found, item);
        }
        Read::List(args) => list(&client, connection.output, model, args).await?,
    }
    Ok(())
}

pub(crate) async fn list(client: &Client, output: Output, model: &'static str, args: ListArgs) -> anyhow::Result<()> {
    let mut query = args.filters.clone();
    if let Some(limit) = args.limit {
        query.push(("limit".into(), limit.to_string()));
    }
    let mut cursor = args.cursor.clone();
    let mut items = Vec::new();
    let next = loop {
        let mut page_query = query.clone();
        if let Some(cursor) = &cursor {
            page_query.push(("cursor".into(), cursor.clone()));
        }
        let page = client.get(&format!("/{model}"), &page_query).await?;
        let (Some(page_items), next) = (page["items"].as_array(), page["next_cursor"].as_str()) else {
            anyhow::bail!("the node answered a page without items: {page}");
        };
        items.extend(page_items.iter().cloned());
        match next {
            Some(next) if args.all => cursor = Some(next.to_owned()),
            next => break next.map(str::to_owned),
        }
    };
    let page = serde_json::json!({"items": items, "next_cursor": next});
    print(output, &page, |page| table(columns(model), page["items"].as_array().map_or(&[], Vec::as_slice)));
    if let (Output::Table, Some(next)) = (output, next) {
        eprintln!("more: --cursor {next} (or --all)");
    }
    Ok(())
}
