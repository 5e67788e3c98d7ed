//! How far each process manager running in this (OS) process has got, for the node's metrics.

/// The position of each process that runs in this process (the OS one), by name and partition, for the
/// node's metrics.
type Positions = std::collections::BTreeMap<(&'static str, Option<u32>), u64>;
static POSITIONS: std::sync::Mutex<Positions> = std::sync::Mutex::new(std::collections::BTreeMap::new());

/// A process (of one partition, or of the whole log) has handled everything up to `position`.
pub(super) fn moved(process: &'static str, partition: Option<u32>, position: u64) {
    POSITIONS.lock().unwrap_or_else(|p| p.into_inner()).insert((process, partition), position);
    match partition {
        None => metrics::gauge!("weft_process_position", "process" => process).set(position as f64),
        Some(p) => metrics::gauge!("weft_process_position", "process" => process, "partition" => p.to_string())
            .set(position as f64),
    }
}

/// A process of one partition stopped here (its partition moved): it has no position on this node any more.
pub(super) fn forget(process: &'static str, partition: u32) {
    POSITIONS.lock().unwrap_or_else(|p| p.into_inner()).remove(&(process, Some(partition)));
}

/// Each process manager's position (the last event it has handled with every one before it), by name and
/// partition (`None`: it reads the whole log).
pub fn positions() -> Vec<(&'static str, Option<u32>, u64)> {
    POSITIONS.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|((k, p), v)| (*k, *p, *v)).collect()
}
