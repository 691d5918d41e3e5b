//! The write-ahead log's reader on arbitrary bytes: `scan_wal` (records, checksums, numbering)
//! on a log image of a valid header followed by the input, and `parse_wal_payload` (a batch's
//! changes) on the input itself and on every record the scan accepts. Neither may panic; a
//! record the scan returns is numbered after `applied`, in order without gaps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::engine::{parse_wal_payload, scan_wal};

/// The log's header: magic, format version 1, salt 0, zeros to 4 KiB (`engine::wal`).
fn header() -> Vec<u8> {
    let mut out = vec![0u8; 4096];
    out[..16].copy_from_slice(b"SWITCHYARD-WAL\0\0");
    out[16..20].copy_from_slice(&1u32.to_le_bytes());
    out
}

fuzz_target!(|input: (u8, &[u8])| {
    let (applied, body) = input;
    let applied = u64::from(applied);
    let _ = parse_wal_payload(body);
    let mut image = header();
    image.extend_from_slice(body);
    if let Ok(records) = scan_wal(&image, applied) {
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.seq, applied + 1 + i as u64);
            let _ = parse_wal_payload(record.payload);
        }
    }
});
