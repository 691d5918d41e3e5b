//! The sans-IO parts of alerting: a bounded queue that merges an entry into a waiting one it
//! supersedes and drops its oldest entry only when still full (and counts it), a token bucket
//! for each channel's rate limit, and the open incidents with their dedup keys. Time comes in
//! as milliseconds.

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

    /// Adds `item` unless a waiting entry absorbs it. `merge` is asked about the waiting
    /// entries from the newest back: [`Merge::Absorbed`] (it took `item`'s content: nothing is
    /// added), [`Merge::Stop`] (look no further: `item` is added) or [`Merge::Next`]. Returns
    /// the entry dropped to make room, if any.
    pub fn push_merging(&mut self, item: T, mut merge: impl FnMut(&mut T, &T) -> Merge) -> Option<T> {
        for waiting in self.items.iter_mut().rev() {
            match merge(waiting, &item) {
                Merge::Absorbed => return None,
                Merge::Stop => break,
                Merge::Next => {}
            }
        }
        self.push(item)
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

/// What [`Queue::push_merging`] does with one waiting entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    Absorbed,
    Stop,
    Next,
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
/// groups the trigger, its updates and the resolve by it), when it opened and its last words.
///
/// The dedup key is `{group}/{key}`: it names the condition, not the controller member that
/// raised it nor when, so a restarted controller or a new leader of the same group raising the
/// same condition updates the same PagerDuty incident, and its resolve closes it. (PagerDuty
/// opens a new incident for a trigger once the previous one with that key is resolved.)
#[derive(Debug, Default)]
pub struct Incidents {
    open: BTreeMap<String, Open>,
    opened: u64,
    /// Incidents resolved whose resolve is not known delivered yet, by dedup key (at most
    /// [`INCIDENTS_MAX`], the oldest forgotten): a leader lists them for its successor.
    resolving: BTreeMap<String, (u64, OpenIncident)>,
}

#[derive(Debug, Clone)]
struct Open {
    order: u64,
    dedup: String,
    opened_at_ms: u64,
    message: String,
    /// Whether its trigger reached every channel it goes to (or was given up on).
    delivered: bool,
}

/// One open incident, as [`Incidents::open`] lists it (what a later resolve needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenIncident {
    pub key: String,
    pub incident: String,
    /// Wall-clock milliseconds since the Unix epoch.
    pub opened_at_ms: u64,
    /// The last raise's words.
    pub message: String,
    /// Whether its trigger was delivered (or given up on) on every channel it goes to: an
    /// incident not delivered when its controller died is paged again by the next.
    pub delivered: bool,
}

/// Open incidents remembered at most; the oldest is forgotten beyond.
pub const INCIDENTS_MAX: usize = 64;

/// The dedup key of condition `key` raised by the controllers of `group`.
pub fn dedup_key(group: &str, key: &str) -> String {
    format!("{group}/{key}")
}

impl Incidents {
    /// The dedup key of `key`'s incident, opening one (at `at_ms`) if none is open.
    pub fn raise(&mut self, group: &str, key: &str, at_ms: u64, message: &str) -> String {
        if let Some(open) = self.open.get_mut(key) {
            open.message = message.to_string();
            return open.dedup.clone();
        }
        let dedup = dedup_key(group, key);
        self.open_as(key, &dedup, at_ms, message, false);
        dedup
    }

    /// Marks `key`'s incident open under `dedup` (restored from the audit log), unless one is
    /// open already; `delivered` says whether its trigger was delivered.
    pub fn open_as(&mut self, key: &str, dedup: &str, opened_at_ms: u64, message: &str, delivered: bool) {
        if self.open.contains_key(key) {
            return;
        }
        // A trigger under the dedup key of a resolve still pending follows it on every
        // channel: that resolve must not be sent again after it.
        self.resolving.remove(dedup);
        if self.open.len() >= INCIDENTS_MAX
            && let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, open)| open.order)
                .map(|(key, _)| key.clone())
        {
            self.open.remove(&oldest);
        }
        self.opened += 1;
        self.open.insert(
            key.to_string(),
            Open {
                order: self.opened,
                dedup: dedup.to_string(),
                opened_at_ms,
                message: message.to_string(),
                delivered,
            },
        );
    }

    /// Marks `key`'s incident open under `dedup`, replacing the dedup key of one open under
    /// another (an incident adopted from the group's list: its original key is what the pager
    /// knows), `delivered` as the group's list says. Returns the dedup key replaced, if it
    /// differed.
    pub fn adopt(
        &mut self,
        key: &str,
        dedup: &str,
        opened_at_ms: u64,
        message: &str,
        delivered: bool,
    ) -> Option<String> {
        if let Some(open) = self.open.get_mut(key) {
            if open.dedup == dedup {
                open.delivered &= delivered;
                return None;
            }
            let replaced = std::mem::replace(&mut open.dedup, dedup.to_string());
            open.opened_at_ms = opened_at_ms;
            open.delivered = delivered;
            return Some(replaced);
        }
        self.open_as(key, dedup, opened_at_ms, message, delivered);
        None
    }

    /// Marks the incident open under `dedup` delivered; its condition key, if it was open and
    /// not delivered yet.
    pub fn mark_delivered(&mut self, dedup: &str) -> Option<String> {
        let (key, open) = self.open.iter_mut().find(|(_, open)| open.dedup == dedup)?;
        if open.delivered {
            return None;
        }
        open.delivered = true;
        Some(key.clone())
    }

    /// Closes `key`'s incident; its dedup key, or `None` when none was open. Its resolve is
    /// pending until [`Incidents::resolve_delivered`].
    pub fn resolve(&mut self, key: &str) -> Option<String> {
        let open = self.open.remove(key)?;
        self.resolving_as(OpenIncident {
            key: key.to_string(),
            incident: open.dedup.clone(),
            opened_at_ms: open.opened_at_ms,
            message: open.message,
            delivered: false,
        });
        Some(open.dedup)
    }

    /// Marks the resolve of `resolved.incident` pending (one sent again for a predecessor).
    pub fn resolving_as(&mut self, resolved: OpenIncident) {
        self.opened += 1;
        self.resolving
            .insert(resolved.incident.clone(), (self.opened, resolved));
        while self.resolving.len() > INCIDENTS_MAX {
            let oldest = self
                .resolving
                .iter()
                .min_by_key(|(_, (order, _))| *order)
                .map(|(dedup, _)| dedup.clone());
            let Some(oldest) = oldest else { break };
            self.resolving.remove(&oldest);
        }
    }

    /// The resolve of `dedup` finished on every channel: no longer pending. Whether it was.
    pub fn resolve_delivered(&mut self, dedup: &str) -> bool {
        self.resolving.remove(dedup).is_some()
    }

    /// The resolves pending, oldest first.
    pub fn resolving(&self) -> Vec<OpenIncident> {
        let mut pending: Vec<&(u64, OpenIncident)> = self.resolving.values().collect();
        pending.sort_by_key(|(order, _)| *order);
        pending.into_iter().map(|(_, resolved)| resolved.clone()).collect()
    }

    /// The dedup key of `key`'s open incident.
    pub fn incident(&self, key: &str) -> Option<String> {
        self.open.get(key).map(|open| open.dedup.clone())
    }

    /// The keys of the open incidents.
    pub fn keys(&self) -> Vec<String> {
        self.open.keys().cloned().collect()
    }

    /// The open incidents, by key.
    pub fn open(&self) -> Vec<OpenIncident> {
        self.open
            .iter()
            .map(|(key, open)| OpenIncident {
                key: key.clone(),
                incident: open.dedup.clone(),
                opened_at_ms: open.opened_at_ms,
                message: open.message.clone(),
                delivered: open.delivered,
            })
            .collect()
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
    fn an_incident_keeps_its_dedup_key_until_resolved_and_the_key_names_the_condition() {
        let mut incidents = Incidents::default();
        let first = incidents.raise("shop", "fenced", 1, "stale");
        assert_eq!(first, "shop/fenced");
        assert_eq!(incidents.raise("shop", "fenced", 2, "stale again"), first);
        assert_eq!(
            incidents.open()[0].opened_at_ms,
            1,
            "an update keeps the time it opened"
        );
        assert_eq!(incidents.open()[0].message, "stale again");
        assert_eq!(incidents.resolve("fenced"), Some(first.clone()));
        assert_eq!(incidents.resolve("fenced"), None);
        // Another member of the group (or this one after a restart) names it alike.
        assert_eq!(Incidents::default().raise("shop", "fenced", 0, ""), first);
        // A restored incident keeps the dedup key it was opened with.
        incidents.open_as("all_down", "ctl/all_down/g3-1000", 1000, "down", true);
        assert_eq!(
            incidents.raise("shop", "all_down", 2000, "down"),
            "ctl/all_down/g3-1000"
        );
        assert_eq!(incidents.keys(), vec!["all_down".to_string()]);
        // An adopted incident takes the group's dedup key over a restored one.
        assert_eq!(
            incidents.adopt("all_down", "shop/all_down", 900, "down", true),
            Some("ctl/all_down/g3-1000".to_string())
        );
        assert_eq!(incidents.incident("all_down").as_deref(), Some("shop/all_down"));
        assert_eq!(incidents.adopt("all_down", "shop/all_down", 900, "down", true), None);
    }

    #[test]
    fn a_resolve_is_pending_until_delivered_or_a_new_trigger_of_its_incident() {
        let mut incidents = Incidents::default();
        let fenced = incidents.raise("shop", "fenced", 1, "stale");
        incidents.raise("shop", "stuck", 2, "stuck");
        assert_eq!(incidents.mark_delivered(&fenced).as_deref(), Some("fenced"));
        assert_eq!(incidents.mark_delivered(&fenced), None);
        incidents.resolve("fenced");
        incidents.resolve("stuck");
        let pending: Vec<String> = incidents.resolving().into_iter().map(|r| r.key).collect();
        assert_eq!(pending, vec!["fenced", "stuck"]);
        assert!(incidents.resolve_delivered("shop/fenced"));
        assert!(!incidents.resolve_delivered("shop/fenced"));
        // Raised again before its resolve was delivered: the trigger follows the resolve.
        let again = incidents.raise("shop", "stuck", 3, "stuck again");
        assert!(incidents.resolving().is_empty());
        assert!(!incidents.open()[0].delivered, "a new incident: {again}");
    }

    #[test]
    fn a_merging_push_lets_a_waiting_entry_absorb_the_new_one() {
        // (incident, version): a newer version of a waiting incident replaces it in place.
        let merge = |waiting: &mut (u32, u32), new: &(u32, u32)| {
            if waiting.0 == new.0 {
                waiting.1 = new.1;
                Merge::Absorbed
            } else {
                Merge::Next
            }
        };
        let mut queue = Queue::new(2);
        assert_eq!(queue.push_merging((1, 1), merge), None);
        assert_eq!(queue.push_merging((2, 1), merge), None);
        for version in 2..50 {
            assert_eq!(queue.push_merging((1, version), merge), None);
        }
        assert_eq!(queue.dropped(), 0);
        assert_eq!(queue.pop(), Some((1, 49)));
        assert_eq!(queue.pop(), Some((2, 1)));
        let stop = |_: &mut (u32, u32), _: &(u32, u32)| Merge::Stop;
        queue.push_merging((1, 1), stop);
        queue.push_merging((1, 2), stop);
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn incidents_are_bounded() {
        let mut incidents = Incidents::default();
        for i in 0..(INCIDENTS_MAX as u64 + 5) {
            incidents.raise("s", &format!("k{i}"), i, "m");
        }
        assert_eq!(incidents.open.len(), INCIDENTS_MAX);
        assert_eq!(incidents.resolve("k0"), None);
        assert!(incidents.resolve(&format!("k{}", INCIDENTS_MAX + 4)).is_some());
    }
}
