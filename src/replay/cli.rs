//! `weft events <verb>`: the verbs, their flags, and how each prints.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use serde_json::{Value, json};
use weft_events::StreamName;

use super::copy::{self, Place};
use super::export::{self, OnConflict};
use super::inspect::{self, Bound, StreamFilter, TailFilter};
use super::progress::Progress;
use super::{Source, event_json, verify};

/// What `weft events` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Verb {
    /// Lists the streams: type, version, tenant, last event and when it was recorded.
    Streams {
        #[command(flatten)]
        filter: StreamFilter,
    },
    /// A stream's events, oldest first, payloads decoded.
    Cat {
        /// The stream, such as `job-<uuid>`.
        stream: String,
        /// From this version, or from this time (RFC 3339).
        #[arg(long)]
        from: Option<Bound>,
        /// Through this version, or through this time (RFC 3339).
        #[arg(long)]
        to: Option<Bound>,
    },
    /// One event, by position or event id.
    Show {
        /// A position (a whole number) or an event id (a UUID).
        key: String,
    },
    /// Follows the whole log as events commit, like `tail -f`.
    Tail {
        #[command(flatten)]
        filter: TailFilter,
    },
    /// An aggregate's state after its stream's events, or as of a version or a time, as JSON.
    State {
        /// The stream, such as `document-<uuid>`.
        stream: String,
        /// As of this version, or as of this time (RFC 3339).
        #[arg(long)]
        at: Option<Bound>,
    },
    /// What changed in an aggregate's state between two versions.
    Diff {
        /// The stream.
        stream: String,
        /// The earlier version (0: before the first event).
        from: u64,
        /// The later version.
        to: u64,
    },
    /// Writes the log (or some streams of it) in the export format, to stdout or to --file.
    Export {
        /// From this position.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Only this stream (may be repeated).
        #[arg(long = "stream")]
        streams: Vec<String>,
        /// Write to this file instead of stdout; if it holds an export already, continue it.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Appends an export file's events to the store, keeping their ids and times.
    Import {
        /// The export file.
        file: PathBuf,
        /// What to do with a stream that holds other events in the store.
        #[arg(long, value_enum, default_value_t = OnConflict::Fail)]
        on_conflict: OnConflict,
    },
    /// Checks the whole store: positions, versions, checksums, payloads. Exit status 1 on any fault. Prints
    /// the log's digest, which another store holding the same events (a copy) shares.
    Verify {
        /// List each stream's events and digest too, to find which streams two stores disagree on.
        #[arg(long)]
        streams: bool,
    },
    /// Copies the whole log, with the tenants' keys and the process managers' checkpoints, into another store
    /// (of either backend), then digests both ends and fails unless they agree.
    Copy {
        /// The store to copy: sqlite:PATH, jetstream:NATS_URLS/STREAM or kurrentdb:CONNECTION[#NAMESPACE].
        #[arg(long)]
        from: Place,
        /// The store to copy into: empty, unless --resume.
        #[arg(long)]
        to: Place,
        /// The source's tenants' keys: a KurrentDB store's file (its node's --keys), or a SQLite store's when
        /// not `keys.db` beside it.
        #[arg(long)]
        from_keys: Option<std::path::PathBuf>,
        /// The target's tenants' keys, likewise (made when missing).
        #[arg(long)]
        to_keys: Option<std::path::PathBuf>,
        /// Go on with a copy into a target that holds events already (a copy cut short, or one made while the
        /// source was still written to): the events there are checked against the source's.
        #[arg(long)]
        resume: bool,
    },
}

/// How the verbs print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// JSON: one line per event (or one document).
    Json,
    /// Columns for people.
    Table,
}

/// The verb, where it works, and how it prints.
#[derive(Debug, Clone, clap::Args)]
pub struct Events {
    #[command(subcommand)]
    verb: Verb,
    #[command(flatten)]
    source: Source,
    /// How to print: a table on a terminal, JSON otherwise, unless told.
    #[arg(long, value_enum, global = true)]
    output: Option<Format>,
}

fn stream_name(text: &str) -> anyhow::Result<StreamName> {
    StreamName::new(text).map_err(|e| anyhow::anyhow!("{text:?} is not a stream name: {e}"))
}

/// Runs `weft events`. `Ok(false)`: it ran, and found a fault (verify).
pub async fn run(events: Events) -> anyhow::Result<bool> {
    let Events { verb, source, output } = events;
    let format = output.unwrap_or(if std::io::stdout().is_terminal() { Format::Table } else { Format::Json });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    match verb {
        Verb::Streams { filter } => {
            let reader = source.reader().await?;
            let (rows, left_out) = inspect::streams(&*reader, &filter).await?;
            match format {
                Format::Json => {
                    for row in &rows {
                        serde_json::to_writer(&mut out, row)?;
                        out.write_all(b"\n")?;
                    }
                }
                Format::Table => {
                    let rows: Vec<Value> = rows.iter().map(|r| serde_json::to_value(r).unwrap_or_default()).collect();
                    let columns = ["stream", "type", "version", "tenant", "last_event_type", "last_change"];
                    write!(out, "{}", crate::cli::table(&columns, &rows))?;
                }
            }
            if left_out > 0 {
                eprintln!("weft: {left_out} more streams not listed (narrow with --type, --tenant or --prefix)");
            }
        }
        Verb::Cat { stream, from, to } => {
            let stream = stream_name(&stream)?;
            let reader = source.reader().await?;
            if format == Format::Table {
                inspect::write_table_header(&mut out)?;
            }
            let count = inspect::stream_events(&*reader, &stream, from, to, |e| {
                match format {
                    Format::Json => inspect::write_json_line(&mut out, e)?,
                    Format::Table => inspect::write_table_line(&mut out, e)?,
                }
                Ok(())
            })
            .await?;
            if count == 0 && reader.stream_version(&stream).await? == 0 {
                anyhow::bail!("{stream} has no events");
            }
        }
        Verb::Show { key } => {
            let reader = source.reader().await?;
            let e = inspect::find(&*reader, &key).await?;
            serde_json::to_writer_pretty(&mut out, &event_json(&e))?;
            out.write_all(b"\n")?;
        }
        Verb::Tail { filter } => {
            let reader = source.reader().await?;
            if format == Format::Table {
                inspect::write_table_header(&mut out)?;
                out.flush()?;
            }
            inspect::tail(&*reader, &filter, |e| {
                match format {
                    Format::Json => inspect::write_json_line(&mut out, e)?,
                    Format::Table => inspect::write_table_line(&mut out, e)?,
                }
                // Live: each event as it comes.
                out.flush()?;
                Ok(())
            })
            .await?;
        }
        Verb::State { stream, at } => {
            let reader = source.reader().await?;
            let state = inspect::state(&*reader, &stream_name(&stream)?, at).await?;
            serde_json::to_writer_pretty(&mut out, &state)?;
            out.write_all(b"\n")?;
        }
        Verb::Diff { stream, from, to } => {
            let stream = stream_name(&stream)?;
            let reader = source.reader().await?;
            if from > to {
                anyhow::bail!("diff {from} {to}: the first version must not be after the second");
            }
            let before = match from {
                0 => json!({"state": null}),
                v => inspect::state(&*reader, &stream, Some(Bound::Version(v))).await?,
            };
            let after = inspect::state(&*reader, &stream, Some(Bound::Version(to))).await?;
            let changes = inspect::diff(&before["state"], &after["state"]);
            match format {
                Format::Json => {
                    serde_json::to_writer(
                        &mut out,
                        &json!({"stream": stream.as_str(), "from": from, "to": to, "changes": changes}),
                    )?;
                    out.write_all(b"\n")?;
                }
                Format::Table => {
                    write!(out, "{}", crate::cli::table(&["path", "before", "after"], &changes))?;
                }
            }
        }
        Verb::Export { from, streams, file } => {
            let streams = streams.iter().map(|s| stream_name(s)).collect::<anyhow::Result<Vec<_>>>()?;
            let reader = source.raw_reader().await?;
            let mut progress = Progress::new("export", reader.head().await?);
            let end = match file {
                Some(path) => {
                    export::export_to_file(&reader, from, &streams, &path, |d, t| progress.update(d, t)).await?
                }
                None => export::export(&reader, from, &streams, &mut out, |d, t| progress.update(d, t)).await?,
            };
            progress.finish();
            eprintln!(
                "weft: exported {} events from {}, through position {}",
                end.events,
                source.describe(),
                end.last_position
            );
        }
        Verb::Import { file, on_conflict } => {
            // The file first: a store is not made (or opened for writing) for a file that is not there.
            std::fs::File::open(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let writer = source.writer().await?;
            // SQLite: appends of other streams in flight together (the importer keeps each stream in order);
            // JetStream and KurrentDB may commit concurrent appends out of order, so one at a time.
            let window = if source.jetstream || source.kurrentdb.is_some() { 1 } else { export::IMPORT_WINDOW };
            let mut progress = Progress::new("import", 0);
            let result = export::import(&file, &*writer.store, on_conflict, window, |d, t| progress.update(d, t)).await;
            progress.finish();
            writer.close().await?;
            let imported = result?;
            serde_json::to_writer(&mut out, &imported)?;
            out.write_all(b"\n")?;
        }
        Verb::Copy { from, to, from_keys, to_keys, resume } => {
            let from = from.options(&source.nats_auth, from_keys).map_err(anyhow::Error::msg)?;
            let to = to.options(&source.nats_auth, to_keys).map_err(anyhow::Error::msg)?;
            let mut progress = Progress::new("copy", 0);
            let copied = copy::copy(&from, &to, resume, super::CLIENT, |d, t| progress.update(d, t)).await;
            progress.finish();
            let copied = copied?;
            serde_json::to_writer(&mut out, &copied)?;
            out.write_all(b"\n")?;
            let positions = if copied.positions_kept { "kept" } else { "mapped (see position_runs)" };
            eprintln!(
                "weft: copied {} events ({} there already) from {} to {} through position {}; positions {positions}; \
                 both ends digest to {}",
                copied.events, copied.already_there, copied.from, copied.to, copied.through, copied.verified.sha256
            );
        }
        Verb::Verify { streams } => {
            let reader = source.raw_reader().await?;
            let mut progress = Progress::new("verify", 0);
            let report = verify::verify(reader, source.describe(), streams, |d, t| progress.update(d, t)).await?;
            progress.finish();
            match format {
                Format::Json => {
                    serde_json::to_writer(&mut out, &report)?;
                    out.write_all(b"\n")?;
                }
                Format::Table => write_report(&mut out, &report)?,
            }
            out.flush()?;
            return Ok(report.ok);
        }
    }
    out.flush()?;
    Ok(true)
}

fn write_report(out: &mut impl Write, report: &verify::Report) -> std::io::Result<()> {
    writeln!(out, "store:   {}", report.store)?;
    writeln!(out, "events:  {} (head {})", report.events, report.head)?;
    writeln!(out, "streams: {}", report.streams)?;
    writeln!(out, "digest:  sha256 {}", report.digest.sha256)?;
    for stream in &report.per_stream {
        writeln!(out, "  {:<60} {:>8} events  sha256 {}", stream.stream, stream.events, stream.sha256)?;
    }
    if report.ok {
        return writeln!(out, "ok: no faults");
    }
    writeln!(out, "FAULTS:  {}", report.faults)?;
    for (kind, count) in &report.faults_by_kind {
        writeln!(out, "  {:<24} {count}", serde_json::to_value(kind).unwrap_or_default().as_str().unwrap_or(""))?;
    }
    for fault in &report.listed {
        writeln!(out, "  position {:<10} {}", fault.position, fault.detail)?;
    }
    if (report.listed.len() as u64) < report.faults {
        writeln!(out, "  ... and {} more", report.faults - report.listed.len() as u64)?;
    }
    Ok(())
}
