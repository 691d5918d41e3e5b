//! Stored stream records on arbitrary bytes: `render_stored_stream_entry` (a `stream_records`
//! entry: its header, CRC-32, region and each record's framing, then each compact record
//! rendered as GetRecords returns it) and `render_compact_record` on the input itself. Neither
//! may panic; an entry that reads holds at least one record, and a compact record that renders
//! is a complete JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use store::engine::render_stored_stream_entry;
use store::streams::render_compact_record;

fuzz_target!(|input: (u8, &[u8])| {
    let (first, body) = input;
    let mut out = Vec::new();
    if let Ok(count) = render_stored_stream_entry(7, 1, u64::from(first), body, &mut out) {
        assert!(count > 0);
    }
    let mut record = Vec::new();
    if render_compact_record(1, 2, "r", body, &mut record).is_ok() {
        assert_eq!(record.first(), Some(&b'{'));
        assert_eq!(record.last(), Some(&b'}'));
    }
});
