//! The store's files: where the index lives, the connections' settings, the lock, and the checks made on
//! opening (SQLite header, schema, size, a dense tail).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use weft_events::Error;

use super::read::select_all;
use super::{APPLICATION_ID, BUSY_TIMEOUT_MS, Synchronous, corrupt, from_sql, sql_error};

/// `PATH-index`: the stream index beside the log.
pub(super) fn index_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-index");
    PathBuf::from(name)
}

pub fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    stable_plans(conn)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!("journal_mode is {mode}, not wal")));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA cell_size_check = ON; PRAGMA foreign_keys = OFF;",
        synchronous.pragma()
    ))
}

/// Keeps `conn`'s cached statements prepared once (SQLite's query planner stability guarantee). Without it,
/// SQLite prepares a statement again whenever a value bound to a `LIMIT ?` or compared in a `max(..)` look-up
/// changes, which measured as most of the cost of a cached read (4% of a node's time running jobs); with no
/// `ANALYZE` statistics the plan is the same either way.
pub fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map(drop)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Takes the exclusive lock on `PATH.lock`, so that a second process cannot open the same store for writing.
pub(super) fn lock_file(path: &Path) -> Result<File, String> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    // A lock is held by its open file, which a process forked in this one shares until it executes its
    // program: a store reopened just after closing can find its own lock held for that moment. So a held
    // lock is tried again for a short while before it is taken for another process's.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!("another process has it open (it holds the lock on {})", lock_path.display()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("cannot lock {}: {e}", lock_path.display())),
        }
    }
}

/// How long a held lock is tried again before the store is taken for open elsewhere.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// The size of a database file according to its header: (page size, pages), or `None` where the header's
/// page count is not valid (SQLite then goes by the file size).
pub(super) fn header_size(header: &[u8; 100]) -> (u64, Option<u64>) {
    let raw = u16::from_be_bytes([header[16], header[17]]);
    let page_size = if raw == 1 { 65_536 } else { u64::from(raw) };
    let change_counter = &header[24..28];
    let valid_for = &header[92..96];
    let pages = u64::from(u32::from_be_bytes([header[28], header[29], header[30], header[31]]));
    (page_size, (change_counter == valid_for && pages > 0).then_some(pages))
}

/// Checks the first 100 bytes of an existing file before SQLite touches it: SQLite's magic, a sane page size,
/// and our application id.
pub(super) fn check_header(path: &Path, location: &str) -> Result<(), Error> {
    let Ok(mut file) = File::open(path) else { return Ok(()) }; // a new store
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Ok(());
    }
    let mut header = [0u8; 100];
    if len < 100 || file.read_exact(&mut header).is_err() {
        return Err(corrupt(location, format!("the file is {len} bytes, shorter than a SQLite header")));
    }
    if &header[..16] != b"SQLite format 3\0" {
        return Err(corrupt(location, "the file does not start with SQLite's header".into()));
    }
    let (page_size, _) = header_size(&header);
    if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(corrupt(location, format!("the header gives a page size of {page_size}")));
    }
    let app = i32::from_be_bytes([header[68], header[69], header[70], header[71]]);
    if app != APPLICATION_ID && app != 0 {
        return Err(corrupt(location, format!("the file is a SQLite database of another application (id {app:#x})")));
    }
    Ok(())
}

/// The tables must be exactly the ones `schema` creates: a damaged schema text in a file would otherwise
/// surface later as baffling "no such column" errors.
pub fn check_schema(conn: &Connection, schema: &str) -> Result<(), String> {
    let mut expected: Vec<String> = schema
        .split(';')
        .map(str::trim)
        .filter(|statement| statement.starts_with("CREATE"))
        .map(|statement| statement.replacen(" IF NOT EXISTS", "", 1))
        .collect();
    expected.sort();
    let mut found: Vec<String> = conn
        .prepare("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| format!("cannot read the schema: {e}"))?;
    found.sort();
    if found != expected {
        return Err(format!("its schema is not Weft's: found {found:?}"));
    }
    Ok(())
}

/// After the WAL has been folded into the file, the file must hold every page its header counts: a shorter
/// file has been truncated.
pub(super) fn check_size(conn: &Connection, path: &Path, location: &str) -> Result<(), Error> {
    // SQLite writes whole pages, to the file and in checkpoints: a file of part of a page was cut short,
    // whatever the WAL holds.
    let whole_pages = || -> Result<(u64, [u8; 100]), Error> {
        let mut file = File::open(path).map_err(|e| corrupt(location, format!("cannot reopen: {e}")))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut header = [0u8; 100];
        file.read_exact(&mut header).map_err(|e| corrupt(location, format!("cannot read the header: {e}")))?;
        let (page_size, _) = header_size(&header);
        if len % page_size != 0 {
            return Err(corrupt(
                location,
                format!("the file is {len} bytes, not a whole number of {page_size}-byte pages"),
            ));
        }
        Ok((len, header))
    };
    whole_pages()?;
    // A reader of another connection can hold the checkpoint back for a moment; it is tried a few times.
    let mut busy: i64 = 1;
    for _ in 0..20 {
        busy = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0))
            .map_err(|e| sql_error(location, e))?;
        if busy == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if busy != 0 {
        // Another process is reading; the file may legitimately lag the WAL. Reads still check every row.
        return Ok(());
    }
    let (len, header) = whole_pages()?;
    let (page_size, pages) = header_size(&header);
    if let Some(pages) = pages
        && len < pages * page_size
    {
        return Err(corrupt(
            location,
            format!(
                "truncated: the header counts {pages} pages ({} bytes) but the file has {len} bytes",
                pages * page_size
            ),
        ));
    }
    Ok(())
}

/// Reads the last event and checks it, and that positions start at 1. Returns the head position.
pub(super) fn check_tail(conn: &Connection, location: &str) -> Result<u64, Error> {
    // Two queries: SQLite answers min() or max() alone from the end of the B-tree, but both in one query
    // with a scan of the whole table.
    let ends = ["SELECT min(position) FROM events", "SELECT max(position) FROM events"]
        .map(|sql| conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0)).map_err(|e| sql_error(location, e)));
    let [min, max] = ends;
    let (min, max) = (min?, max?);
    let (Some(min), Some(max)) = (min, max) else { return Ok(0) };
    if min != 1 || max < 1 {
        return Err(corrupt(location, format!("positions run from {min} to {max}, not from 1")));
    }
    let head = from_sql(max);
    let last = select_all(conn, location, head, 1)?;
    if last.len() != 1 {
        return Err(corrupt(location, format!("the last event, at position {head}, cannot be read")));
    }
    Ok(head)
}
