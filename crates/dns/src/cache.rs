//! Answers kept per UDP worker, so a repeated query costs a hash lookup and a send instead of
//! parsing, answering and encoding.
//!
//! A cached answer is keyed by the query's bytes after its 2-byte id (flags, question, EDNS
//! with its payload size and options: everything [`answer`](crate::answer::answer) reads), and
//! only [`cacheable`](crate::answer::Response::cacheable) answers are kept: those that depend on
//! nothing but those bytes, the zones and the health view. The worker empties its cache whenever
//! the zones or the view change (the state's epoch moves), so an answer is never older than the
//! view generation it was computed from. In effect the cache holds the wire answer per (name,
//! type, flags, view generation) for the names being asked.
//!
//! Invariants: at most [`ANSWER_CACHE_ENTRIES_MAX`] entries, keys at most
//! [`ANSWER_CACHE_QUERY_BYTES_MAX`] bytes; a hit allocates nothing.

use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::metrics::counter::Counter;

use crate::answer::Response;

/// Answers one worker keeps before starting over (bounds its memory to a few MiB).
pub const ANSWER_CACHE_ENTRIES_MAX: usize = 4_096;
/// Longer queries are answered without the cache (real ones are under 100 bytes).
pub const ANSWER_CACHE_QUERY_BYTES_MAX: usize = 512;
/// Bytes of a DNS message's id, the part of a query the cache key leaves out.
const ID_BYTES: usize = 2;

/// One cached answer and what the rate limiter and the metrics need to know about it.
pub struct Cached {
    /// The encoded response; its first two bytes are overwritten with each query's id.
    wire: Box<[u8]>,
    pub rcode: ResponseCode,
    /// Records in the answer section (the rate limiter tells answers from NODATA by it).
    pub answers: usize,
    pub name_label: Arc<str>,
    pub qtype: Option<RecordType>,
    /// The query counter of this answer's labels.
    pub counter: Counter,
}

impl Cached {
    /// The answer to `packet` (a query whose bytes after the id matched this entry's key).
    pub fn answer_to(&mut self, packet: &[u8]) -> &[u8] {
        self.wire[..ID_BYTES].copy_from_slice(&packet[..ID_BYTES]);
        &self.wire
    }

    /// Replaces `out` with the answer to `packet` (as [`answer_to`](Self::answer_to), without
    /// touching the entry); `out` keeps its capacity, so a reused buffer allocates nothing.
    pub fn write_answer_to(&self, packet: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.wire);
        out[..ID_BYTES].copy_from_slice(&packet[..ID_BYTES]);
    }
}

#[derive(Default)]
pub struct AnswerCache {
    entries: HashMap<Box<[u8]>, Cached>,
}

impl AnswerCache {
    /// Forgets every answer (the zones or the view changed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached answer for `packet`, if any.
    pub fn get(&mut self, packet: &[u8]) -> Option<&mut Cached> {
        let key = key(packet)?;
        self.entries.get_mut(key)
    }

    /// Keeps `response` (the answer to `packet`) when it is cacheable and a single message.
    pub fn insert(&mut self, packet: &[u8], response: &Response, counter: Counter) {
        let Some(key) = key(packet) else { return };
        let ([wire], [message], true) = (&response.wire[..], &response.messages[..], response.cacheable) else {
            return;
        };
        if wire.len() < ID_BYTES || wire[..ID_BYTES] != packet[..ID_BYTES] {
            return;
        }
        if self.entries.len() >= ANSWER_CACHE_ENTRIES_MAX {
            self.entries.clear();
        }
        self.entries.insert(
            key.into(),
            Cached {
                wire: wire.as_slice().into(),
                rcode: response.rcode,
                answers: message.answers().len(),
                name_label: Arc::clone(&response.name_label),
                qtype: response.qtype,
                counter,
            },
        );
    }
}

fn key(packet: &[u8]) -> Option<&[u8]> {
    (packet.len() > ID_BYTES && packet.len() <= ANSWER_CACHE_QUERY_BYTES_MAX).then(|| &packet[ID_BYTES..])
}
