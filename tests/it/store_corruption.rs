//! A damaged store file is reported, never served.
//!
//! Each case copies a closed, known store, damages the copy (truncates it, or flips a byte), opens it and reads
//! everything every way there is. Whatever happens, the store must not panic, every event it does serve must
//! be the original byte for byte, and every error must be [`Error::Corrupt`] naming the damaged file. Damage
//! the store cannot notice (a flipped byte in unused space) is allowed to read as the original.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use weft::store::sqlite::{Options, SqliteStore};
use weft_events::{
    Checkpoint, Direction, Envelope, Error, EventRead, EventWrite, ExpectedVersion, NewEvent, StreamName,
};

const STREAMS: u64 = 8;
const EVENTS: u64 = 400;

fn stream(n: u64) -> StreamName {
    StreamName::new(format!("damage-{n}")).unwrap()
}

/// A payload that can be found in the file: `MARK-<position>-` and a filler.
fn payload(position: u64) -> Vec<u8> {
    let mut bytes = format!("MARK-{position:06}-").into_bytes();
    bytes.extend((0..(position * 37 % 600)).map(|i| (i % 251) as u8));
    bytes
}

/// Builds and closes the store every case starts from; returns its folder and its events.
async fn pristine() -> (tempfile::TempDir, Vec<Envelope>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(Options::new(dir.path().join("events.db"))).unwrap();
    for position in 1..=EVENTS {
        let event = NewEvent::new("damage.done", payload(position)).actor("user:test");
        store.append(&stream(position % STREAMS), ExpectedVersion::Any, vec![event]).await.unwrap();
    }
    let all = store.read_all(1, EVENTS as usize).await.unwrap();
    store.close().await.unwrap();
    (dir, all)
}

/// Copies the pristine files into a fresh folder and returns it with the log's path.
fn copy(from: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["events.db", "events.db-index"] {
        std::fs::copy(from.join(name), dir.path().join(name)).unwrap();
    }
    let log = dir.path().join("events.db");
    (dir, log)
}

/// What opening and reading a damaged copy came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Everything read as the original.
    Intact,
    /// The damage was reported (at open or at a read), and nothing wrong was served.
    Detected,
}

/// An error must be `Corrupt` and name one of the store's files.
fn assert_reported(error: &Error, dir: &Path, case: &str) {
    match error {
        Error::Corrupt { location, .. } if location.starts_with(dir.to_str().unwrap()) => {}
        other => panic!("{case}: expected a corruption error naming the file, got {other:?}"),
    }
}

/// Panics, briefly, unless `got` is exactly `want`.
fn assert_same(got: &[Envelope], want: &[&Envelope], case: &str) {
    if got.len() != want.len() || got.iter().zip(want).any(|(g, w)| g != *w) {
        let positions = |events: Vec<&Envelope>| events.iter().map(|e| e.position).collect::<Vec<_>>();
        panic!("{case}: served {:?} instead of {:?}", positions(got.iter().collect()), positions(want.to_vec()));
    }
}

async fn open_and_read(log: &Path, original: &[Envelope], case: &str) -> Outcome {
    let dir = log.parent().unwrap();
    let store = match SqliteStore::open(Options::new(log)) {
        Ok(store) => store,
        Err(error) => {
            assert_reported(&error, dir, case);
            return Outcome::Detected;
        }
    };
    let mut detected = false;
    let mut note = |result: Result<(), Error>| {
        if let Err(error) = result {
            assert_reported(&error, dir, case);
            detected = true;
        }
    };
    // Read-all, in small pages.
    note(
        async {
            let mut next = 1;
            loop {
                let page = store.read_all(next, 37).await?;
                let Some(last) = page.last() else { break };
                let want: Vec<&Envelope> = page.iter().filter_map(|e| original.get(e.position as usize - 1)).collect();
                assert_same(&page, &want, case);
                next = last.position + 1;
            }
            assert_eq!(next - 1, original.len() as u64, "{case}: read-all ended early without an error");
            Ok(())
        }
        .await,
    );
    // Every stream, forwards and backwards, and its version.
    for n in 0..STREAMS {
        let s = stream(n);
        let expected: Vec<&Envelope> = original.iter().filter(|e| e.stream == s).collect();
        note(
            async {
                let forwards = store.read_stream(&s, 1, Direction::Forwards, 1000).await?;
                assert_same(&forwards, &expected, case);
                let mut backwards = store.read_stream(&s, u64::MAX, Direction::Backwards, 1000).await?;
                backwards.reverse();
                assert_same(&backwards, &expected, case);
                assert_eq!(store.stream_version(&s).await?, expected.len() as u64, "{case}: wrong version");
                Ok(())
            }
            .await,
        );
    }
    note(store.verify().await.map(|_| ()));
    store.close().await.unwrap();
    if detected { Outcome::Detected } else { Outcome::Intact }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_log_is_reported_naming_the_file() {
    let (base, original) = pristine().await;
    let len = std::fs::metadata(base.path().join("events.db")).unwrap().len();
    for cut in [len - 1, len - 4096, len - 4096 - 100, len / 2, 4096, 99] {
        let (_dir, log) = copy(base.path());
        std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(cut).unwrap();
        let case = format!("log truncated from {len} to {cut} bytes");
        assert_eq!(open_and_read(&log, &original, &case).await, Outcome::Detected, "{case}: not detected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_payload_is_reported() {
    let (base, original) = pristine().await;
    let bytes = std::fs::read(base.path().join("events.db")).unwrap();
    for position in [1, 200, 400] {
        let marker = format!("MARK-{position:06}-").into_bytes();
        let at = bytes.windows(marker.len()).position(|w| w == marker).expect("the payload is in the file");
        let (_dir, log) = copy(base.path());
        let mut damaged = bytes.clone();
        damaged[at + 5] ^= 0x01;
        std::fs::write(&log, damaged).unwrap();
        let case = format!("a bit flipped in the payload of event {position}");
        assert_eq!(open_and_read(&log, &original, &case).await, Outcome::Detected, "{case}: not detected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_flipped_bytes_are_reported_or_harmless() {
    let (base, original) = pristine().await;
    let seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut detected = 0;
    for file in ["events.db", "events.db-index"] {
        let bytes = std::fs::read(base.path().join(file)).unwrap();
        for _ in 0..30 {
            let at = rng.random_range(0..bytes.len());
            let (dir, log) = copy(base.path());
            let mut damaged = bytes.clone();
            damaged[at] ^= rng.random_range(1..=255u8);
            std::fs::write(dir.path().join(file), damaged).unwrap();
            let case = format!("{file}: byte {at} of {} flipped (seed {seed})", bytes.len());
            if open_and_read(&log, &original, &case).await == Outcome::Detected {
                detected += 1;
            }
        }
    }
    // Most bytes of a small store are events, index entries or B-tree structure; if almost nothing is
    // noticed, the checks are not running.
    assert!(detected >= 10, "only {detected} of 60 flipped bytes were noticed (seed {seed})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_damaged_index_is_rebuilt_from_the_log() {
    let (base, original) = pristine().await;
    // Missing.
    let (dir, log) = copy(base.path());
    std::fs::remove_file(dir.path().join("events.db-index")).unwrap();
    assert_eq!(open_and_read(&log, &original, "index removed").await, Outcome::Intact);
    // Garbage.
    let (dir, log) = copy(base.path());
    std::fs::write(dir.path().join("events.db-index"), vec![0x5a; 8192]).unwrap();
    assert_eq!(open_and_read(&log, &original, "index overwritten").await, Outcome::Intact);
    // Truncated.
    let (dir, log) = copy(base.path());
    let index = dir.path().join("events.db-index");
    let len = std::fs::metadata(&index).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&index).unwrap().set_len(len / 2).unwrap();
    assert_eq!(open_and_read(&log, &original, "index truncated").await, Outcome::Intact);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_ahead_of_its_log_is_rebuilt() {
    // An older copy of the log beside a newer index, as after restoring the log alone from a backup.
    let (base, _) = pristine().await;
    let (_dir, log) = copy(base.path());
    let old_log = std::fs::read(&log).unwrap();
    let store = SqliteStore::open(Options::new(&log)).unwrap();
    store.append(&stream(0), ExpectedVersion::Any, vec![NewEvent::new("damage.more", vec![1])]).await.unwrap();
    store.close().await.unwrap();
    std::fs::write(&log, old_log).unwrap();
    let store = SqliteStore::open(Options::new(&log)).unwrap();
    let original = store.read_all(1, EVENTS as usize + 1).await.unwrap();
    store.close().await.unwrap();
    assert_eq!(original.len() as u64, EVENTS);
    assert_eq!(open_and_read(&log, &original, "index ahead of the log").await, Outcome::Intact);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_is_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.db");
    let store = SqliteStore::open(Options::new(&log)).unwrap();
    store.append(&stream(1), ExpectedVersion::Any, vec![NewEvent::new("damage.done", payload(1))]).await.unwrap();
    let name = StreamName::new("process-timers").unwrap();
    let state = bytes::Bytes::from_static(b"CHECKPOINT-STATE-MARKER");
    store.save_checkpoint(Checkpoint { name: name.clone(), position: 1, state }).await.unwrap();
    store.close().await.unwrap();

    let mut bytes = std::fs::read(&log).unwrap();
    let marker = b"CHECKPOINT-STATE-MARKER";
    let at = bytes.windows(marker.len()).position(|w| w == marker).expect("the state is in the file");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&log, bytes).unwrap();
    let store = SqliteStore::open(Options::new(&log)).unwrap();
    let error = store.load_checkpoint(&name).await.unwrap_err();
    assert_reported(&error, dir.path(), "a bit flipped in a checkpoint's state");
}
