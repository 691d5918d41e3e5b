//! Test support for other crates' tests (feature `testing`): a store engine on a disk that
//! fills up on demand, as the shop's and the health probes' tests use it.

use std::path::Path;
use std::sync::Arc;

use crate::disk::{DiskSettings, FaultyDisk};
use crate::engine::{Engine, EngineOptions, SystemClock};

/// The free space below which [`faulty_engine`]'s engine refuses writes.
pub const FREE_BYTES_MIN: u64 = 1 << 20;

/// An engine of `region` in `dir` on a fault-injecting disk (free-space watermark
/// [`FREE_BYTES_MIN`], no reserve file), and that disk.
pub fn faulty_engine(dir: &Path, region: &str) -> (Engine, Arc<FaultyDisk>) {
    let faults = FaultyDisk::new();
    let disk = DiskSettings {
        free_bytes_min: Some(FREE_BYTES_MIN),
        reserve_bytes: 0,
    };
    let options = EngineOptions::on_faulty_disk(&faults, disk);
    let engine = Engine::open_with(dir, region, Arc::new(SystemClock), options).expect("open engine");
    (engine, faults)
}

/// Shrinks `faults` so that only `free_bytes` stay free beyond what `dir` holds now: below
/// [`FREE_BYTES_MIN`], the engine stops taking writes and still reads.
pub fn leave_free(faults: &FaultyDisk, dir: &Path, free_bytes: u64) {
    let used: u64 = std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    faults.set_capacity_bytes(used + free_bytes);
}
