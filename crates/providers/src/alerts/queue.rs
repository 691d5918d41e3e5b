//! The sans-IO parts of alerting: a bounded queue that drops its oldest entry when full (and
//! counts it), a token bucket for each channel's rate limit, and the open incidents with
//! their dedup keys. Time comes in as milliseconds.

use std::collections::{BTreeMap, VecDeque};

/// A bounded FIFO: pushing onto a full queue drops the oldest entry, so the newest state of
/// things always gets through, and a stuck channel costs memory only up to the bound.
#[derive(Debug)]
pub struct Queue<T> {
    items: VecDeque<T>,
    capacity: usize,
    dropped: u64,
}

impl<T> Queue<T> {
    pub fn new(capacity: usize) -> Queue<T> {
        assert!(capacity > 0, "a queue holds at least one entry");
        Queue {
            items: VecDeque::with_capacity(capacity),
            capacity,
            dropped: 0,
        }
    }

    /// Adds `item`; returns the entry dropped to make room, if any.
    pub fn push(&mut self, item: T) -> Option<T> {
        let dropped = if self.items.len() >= self.capacity {
            self.dropped += 1;
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(item);
        dropped
    }

    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Entries dropped since the queue was made.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A token bucket: at most `per_minute` sends in any minute after a burst of as many.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_minute: u32,
    /// Tokens in thousandths, so refills of less than one token are kept.
    millitokens: u64,
    last_ms: u64,
}

const MINUTE_MS: u64 = 60_000;

impl TokenBucket {
    pub fn new(per_minute: u32, now_ms: u64) -> TokenBucket {
        assert!(per_minute > 0, "a rate of 0 would never send");
        TokenBucket {
            per_minute,
            millitokens: u64::from(per_minute) * 1000,
            last_ms: now_ms,
        }
    }

    /// Takes a token, or says how many milliseconds until one is available.
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let full = u64::from(self.per_minute) * 1000;
        // per_minute tokens per 60_000 ms = per_minute / 60 millitokens per ms.
        let refill = elapsed.saturating_mul(u64::from(self.per_minute)) / 60;
        self.millitokens = self.millitokens.saturating_add(refill).min(full);
        if self.millitokens >= 1000 {
            self.millitokens -= 1000;
            return Ok(());
        }
        let missing = 1000 - self.millitokens;
        // Milliseconds for `missing` millitokens, rounded up.
        Err((missing * 60).div_ceil(u64::from(self.per_minute)).clamp(1, MINUTE_MS))
    }
}

/// The open incidents: per alert key, the dedup key every channel uses for it (PagerDuty
/// groups the trigger, its updates and the resolve by it).
#[derive(Debug, Default)]
pub struct Incidents {
    open: BTreeMap<String, (u64, String)>,
    opened: u64,
}

/// Open incidents remembered at most; the oldest is forgotten beyond.
pub const INCIDENTS_MAX: usize = 64;

impl Incidents {
    /// The dedup key of `key`'s incident, opening one (named after `source`, the key and the
    /// generation and time it opened) if none is open.
    pub fn raise(&mut self, source: &str, key: &str, generation: u64, at_ms: u64) -> String {
        if let Some((_, dedup)) = self.open.get(key) {
            return dedup.clone();
        }
        if self.open.len() >= INCIDENTS_MAX
            && let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, (order, _))| *order)
                .map(|(key, _)| key.clone())
        {
            self.open.remove(&oldest);
        }
        self.opened += 1;
        let dedup = format!("{source}/{key}/g{generation}-{at_ms}");
        self.open.insert(key.to_string(), (self.opened, dedup.clone()));
        dedup
    }

    /// Closes `key`'s incident; its dedup key, or `None` when none was open.
    pub fn resolve(&mut self, key: &str) -> Option<String> {
        self.open.remove(key).map(|(_, dedup)| dedup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_its_oldest_entry_and_counts_it() {
        let mut queue = Queue::new(2);
        assert_eq!(queue.push(1), None);
        assert_eq!(queue.push(2), None);
        assert_eq!(queue.push(3), Some(1));
        assert_eq!(queue.dropped(), 1);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(3));
        assert!(queue.is_empty());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_interval() {
        let mut bucket = TokenBucket::new(6, 0);
        for _ in 0..6 {
            assert_eq!(bucket.take(0), Ok(()));
        }
        // 6 per minute: one every 10 s.
        assert_eq!(bucket.take(0), Err(10_000));
        assert_eq!(bucket.take(4_000), Err(6_000));
        assert_eq!(bucket.take(10_000), Ok(()));
        assert_eq!(bucket.take(10_000), Err(10_000));
        // A long pause refills to the burst, not beyond.
        for _ in 0..6 {
            assert_eq!(bucket.take(3_600_000), Ok(()));
        }
        assert!(bucket.take(3_600_000).is_err());
        // Time going backwards never adds tokens.
        assert!(bucket.take(0).is_err());
    }

    #[test]
    fn an_incident_keeps_its_dedup_key_until_resolved() {
        let mut incidents = Incidents::default();
        let first = incidents.raise("ctl", "fenced", 7, 1000);
        assert_eq!(first, "ctl/fenced/g7-1000");
        assert_eq!(incidents.raise("ctl", "fenced", 8, 2000), first);
        assert_eq!(incidents.resolve("fenced"), Some(first.clone()));
        assert_eq!(incidents.resolve("fenced"), None);
        let second = incidents.raise("ctl", "fenced", 9, 3000);
        assert_ne!(second, first);
    }

    #[test]
    fn incidents_are_bounded() {
        let mut incidents = Incidents::default();
        for i in 0..(INCIDENTS_MAX as u64 + 5) {
            incidents.raise("s", &format!("k{i}"), i, i);
        }
        assert_eq!(incidents.open.len(), INCIDENTS_MAX);
        assert_eq!(incidents.resolve("k0"), None);
        assert!(incidents.resolve(&format!("k{}", INCIDENTS_MAX + 4)).is_some());
    }
}
