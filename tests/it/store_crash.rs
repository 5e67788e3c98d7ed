//! Nothing acknowledged is lost when the process is killed with SIGKILL.
//!
//! The test runs its own binary again as a child process that appends to a SQLite store in a loop from
//! several tasks and prints a line for every acknowledged append. The parent kills the child at a random
//! moment, reopens the store, and checks that every acknowledged event is there byte for byte, that
//! positions are dense, that no append is visible in part, and that the stream index agrees with the log.
//! It does this for many rounds on the same store, so each round also recovers from the last one's crash.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;
use weft::store::sqlite::{Options, SqliteStore};
use weft_events::{Direction, EventRead, EventWrite, ExpectedVersion, NewEvent, StreamName};

/// Set in the child: the store to append to, and the round number.
const CHILD_STORE: &str = "WEFT_CRASH_CHILD_STORE";
const CHILD_ROUND: &str = "WEFT_CRASH_CHILD_ROUND";

const ROUNDS: u32 = 24;
const WRITERS: u32 = 6;
/// The most events in one append; each append has 1 to this many.
const MAX_EVENTS: u64 = 5;

/// The payload of event `index` of `count` in append `seq` of `writer` in `round`: unique, self-describing,
/// and of varying length so that records straddle pages.
fn payload(round: u32, writer: u32, seq: u64, index: u64, count: u64) -> Vec<u8> {
    let mut bytes = format!("r{round} w{writer} s{seq} i{index} n{count} ").into_bytes();
    let filler = ((seq * 7919 + index * 104_729) % 3000) as usize;
    bytes.extend((0..filler).map(|i| (i as u8).wrapping_mul(31).wrapping_add(writer as u8)));
    bytes
}

/// The (round, writer, seq, index, count) at the start of a payload.
fn parse(payload: &[u8]) -> (u32, u32, u64, u64, u64) {
    let f: Vec<u64> =
        payload.split(|b| *b == b' ').take(5).map(|t| std::str::from_utf8(&t[1..]).unwrap().parse().unwrap()).collect();
    (f[0] as u32, f[1] as u32, f[2], f[3], f[4])
}

fn stream(writer: u32) -> StreamName {
    StreamName::new(format!("crash-{writer}")).unwrap()
}

/// The child: appends until killed, printing `ack ROUND WRITER SEQ COUNT FIRST_POSITION VERSION` per append.
fn child(path: &str, round: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(Options::new(path)).unwrap();
        println!("ready");
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let s = stream(writer);
                let mut version = store.stream_version(&s).await.unwrap();
                for seq in 0.. {
                    let count = 1 + (seq * 31 + u64::from(writer)) % MAX_EVENTS;
                    let events = (0..count)
                        .map(|i| NewEvent::new("crash.appended", payload(round, writer, seq, i, count)))
                        .collect();
                    let appended = store.append(&s, ExpectedVersion::Exact(version), events).await.unwrap();
                    version = appended.version;
                    let mut out = std::io::stdout().lock();
                    writeln!(
                        out,
                        "ack {round} {writer} {seq} {count} {} {}",
                        appended.first_position, appended.version
                    )
                    .unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    round: u32,
    writer: u32,
    seq: u64,
    count: u64,
    first_position: u64,
    version: u64,
}

impl Ack {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<u64> = line.strip_prefix("ack ")?.split(' ').map(|t| t.parse().unwrap()).collect();
        Some(Self {
            round: f[0] as u32,
            writer: f[1] as u32,
            seq: f[2],
            count: f[3],
            first_position: f[4],
            version: f[5],
        })
    }
}

/// Runs one child until a random moment after it started acknowledging, kills it with SIGKILL, and returns
/// what it acknowledged.
fn crash_round(path: &Path, round: u32) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store_crash::acknowledged_appends_survive_sigkill", "--nocapture", "--test-threads=1"])
        .env(CHILD_STORE, path)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait for the first acknowledgement, then kill at a random moment up to 300 ms later.
    let mut acks = Vec::new();
    let mut first = None;
    let kill_after = Duration::from_millis(rand::rng().random_range(0..300));
    loop {
        assert!(Instant::now() < deadline, "the child made no progress");
        if let Some(at) = first
            && Instant::now().duration_since(at) >= kill_after
        {
            break;
        }
        match lines.recv_timeout(Duration::from_millis(5)) {
            Ok(line) => {
                if let Some(ack) = Ack::parse(&line) {
                    acks.push(ack);
                    first.get_or_insert_with(Instant::now);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the child exited by itself: {:?}", child.wait()),
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    reader.join().unwrap();
    // Lines printed before the kill are acknowledgements too.
    acks.extend(lines.try_iter().filter_map(|line| Ack::parse(&line)));
    acks
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if let (Ok(path), Ok(round)) = (std::env::var(CHILD_STORE), std::env::var(CHILD_ROUND)) {
        child(&path, round.parse().unwrap());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("events.db");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut acked: Vec<Ack> = Vec::new();
    for round in 0..ROUNDS {
        let acks = crash_round(&path, round);
        assert!(!acks.is_empty(), "round {round} acknowledged nothing");
        acked.extend(acks);
        // The full cross-check of the stream index reads every event once per event; do it on the last round.
        runtime.block_on(check(&path, &acked, round + 1 == ROUNDS));
    }
    eprintln!("{} acknowledged appends over {ROUNDS} kills, all found", acked.len());
}

/// Reopens the store after a kill and checks it against every acknowledgement so far.
async fn check(path: &Path, acked: &[Ack], verify_index: bool) {
    let store = SqliteStore::open(Options::new(path)).unwrap();
    let head = store.head().await.unwrap();
    // Dense positions, and every event is part of a whole append.
    let mut all = Vec::new();
    loop {
        let page = store.read_all(all.len() as u64 + 1, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    assert_eq!(all.len() as u64, head);
    assert!(all.iter().enumerate().all(|(i, e)| e.position == i as u64 + 1), "positions are not dense");
    // (round, writer, seq, count) -> (index, position) of each of its events found.
    type AppendId = (u32, u32, u64, u64);
    let mut appends: BTreeMap<AppendId, Vec<(u64, u64)>> = BTreeMap::new();
    for e in &all {
        let (round, writer, seq, index, count) = parse(&e.payload);
        assert_eq!(e.payload, payload(round, writer, seq, index, count), "payload at {} differs", e.position);
        assert_eq!(e.stream, stream(writer));
        appends.entry((round, writer, seq, count)).or_default().push((index, e.position));
    }
    for ((round, writer, seq, count), events) in &appends {
        assert_eq!(events.len() as u64, *count, "append r{round} w{writer} s{seq} is visible in part");
        for (i, (index, position)) in events.iter().enumerate() {
            assert_eq!(*index, i as u64);
            assert_eq!(*position, events[0].1 + i as u64, "an append's events are not side by side");
        }
    }
    // Every acknowledged append is there, byte for byte, where it was acknowledged.
    for ack in acked {
        for i in 0..ack.count {
            let e = &all[(ack.first_position + i - 1) as usize];
            assert_eq!(e.payload, payload(ack.round, ack.writer, ack.seq, i, ack.count), "acknowledged event lost");
            assert_eq!(e.version, ack.version - ack.count + 1 + i);
        }
    }
    // The stream index, caught up after the crash, agrees with the log.
    if verify_index {
        assert_eq!(store.verify().await.unwrap(), head);
    }
    for writer in 0..WRITERS {
        let s = stream(writer);
        let version = store.stream_version(&s).await.unwrap();
        let last = store.read_stream(&s, u64::MAX, Direction::Backwards, 1).await.unwrap();
        assert_eq!(last.first().map_or(0, |e| e.version), version);
    }
    store.close().await.unwrap();
}
