//! Clock offsets between regions, measured from the signing times of their requests.
//!
//! Every replication request carries the time its sender signed it (its wall clock, Unix ms).
//! A sample `sent - arrived` is the sender's offset minus the one-way delay, so it
//! underestimates the offset by the delay; the largest of the last few samples is the best
//! estimate (the one that waited least). A replayed request carries an old signing time and is
//! not a sample: only a request signed later than every one before counts — except after
//! [`OFFSET_STALE_MS`] without a sample, when the peer's clock may have been stepped back (NTP
//! fixed it) and sampling starts over.
//!
//! Sans-IO: times come in as arguments. The store feeds it from every authenticated request
//! (also those refused for skew) and shows the result in `/health` and `/metrics`.

use std::collections::{BTreeMap, VecDeque};

/// Samples kept per peer; the estimate is their maximum.
pub const OFFSET_SAMPLES_MAX: usize = 8;
/// An offset measured longer ago than this (the peer is down or silent) raises no alarm.
pub const OFFSET_STALE_MS: u64 = 30_000;
/// Alarm threshold by default, like CockroachDB's maximum clock offset.
pub const CLOCK_OFFSET_ALARM_MS_DEFAULT: u64 = 500;

#[derive(Clone, Debug, Default)]
struct PeerClock {
    last_signed_ms: u64,
    samples: VecDeque<i64>,
    measured_at_ms: u64,
}

/// One peer's clock as this region sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerOffset {
    pub peer: String,
    /// How far the peer's clock runs ahead of this region's (negative: behind).
    pub offset_ms: i64,
    /// Milliseconds since the last sample.
    pub age_ms: u64,
    /// Fresh and beyond the alarm threshold.
    pub alarm: bool,
    /// Fresh and beyond the signing window: the regions refuse each other's requests.
    pub beyond_window: bool,
}

/// Per-peer clock offsets.
#[derive(Clone, Debug, Default)]
pub struct PeerClocks {
    peers: BTreeMap<String, PeerClock>,
}

impl PeerClocks {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(peers: I) -> PeerClocks {
        PeerClocks {
            peers: peers.into_iter().map(|p| (p.into(), PeerClock::default())).collect(),
        }
    }

    /// A request from `peer`, signed at `signed_ms` by its clock, arrived at `now_ms` by ours.
    /// Returns the new estimate, or `None` when the request was not a sample (an unknown peer,
    /// or not signed later than an earlier request: a replay or a reordering).
    pub fn on_request(&mut self, peer: &str, signed_ms: u64, now_ms: u64) -> Option<i64> {
        let clock = self.peers.get_mut(peer)?;
        if signed_ms <= clock.last_signed_ms {
            if now_ms.saturating_sub(clock.measured_at_ms) <= OFFSET_STALE_MS {
                return None;
            }
            clock.samples.clear();
        }
        clock.last_signed_ms = signed_ms;
        let sample = i64::try_from(i128::from(signed_ms) - i128::from(now_ms)).unwrap_or(i64::MAX);
        if clock.samples.len() >= OFFSET_SAMPLES_MAX {
            clock.samples.pop_front();
        }
        clock.samples.push_back(sample);
        clock.measured_at_ms = now_ms;
        clock.samples.iter().copied().max()
    }

    /// How far the clock of the peer furthest behind this region runs behind it (0 when none
    /// does), over peers measured within the last `memory_ms`. The sweeps that delete for good
    /// by the wall clock (TTL expiry, stream and undo-log retention) hold back by this much, so a
    /// region whose clock jumps ahead deletes nothing the other regions' clocks do not agree is
    /// due. A peer's estimate underestimates how far it is ahead by the request's one-way delay,
    /// so for a peer in step this is that delay: milliseconds. Each peer counts by the most
    /// behind of its recent samples, not by the estimate (their maximum): when this region's
    /// clock jumps ahead, the first sample after the jump holds the sweeps back at once, before
    /// the samples from before it have left the window.
    pub fn furthest_behind_ms(&self, now_ms: u64, memory_ms: u64) -> u64 {
        self.peers
            .values()
            .filter(|clock| now_ms.saturating_sub(clock.measured_at_ms) <= memory_ms)
            .filter_map(|clock| clock.samples.iter().copied().min())
            .map(|offset| if offset < 0 { offset.unsigned_abs() } else { 0 })
            .max()
            .unwrap_or(0)
    }

    /// Every peer measured so far, judged against `alarm_ms` and the signing window.
    pub fn offsets(&self, now_ms: u64, alarm_ms: u64, window_ms: u64) -> Vec<PeerOffset> {
        self.peers
            .iter()
            .filter_map(|(peer, clock)| {
                let offset_ms = clock.samples.iter().copied().max()?;
                let age_ms = now_ms.saturating_sub(clock.measured_at_ms);
                let fresh = age_ms <= OFFSET_STALE_MS;
                Some(PeerOffset {
                    peer: peer.clone(),
                    offset_ms,
                    age_ms,
                    alarm: fresh && offset_ms.unsigned_abs() > alarm_ms,
                    beyond_window: fresh && offset_ms.unsigned_abs() > window_ms,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_the_sample_that_waited_least() {
        let mut clocks = PeerClocks::new(["eu-west-1"]);
        // The peer runs 2000 ms ahead; requests take 30, 5 and 80 ms.
        assert_eq!(clocks.on_request("eu-west-1", 12_000, 10_030), Some(1_970));
        assert_eq!(clocks.on_request("eu-west-1", 13_000, 11_005), Some(1_995));
        assert_eq!(clocks.on_request("eu-west-1", 14_000, 12_080), Some(1_995));
        let offsets = clocks.offsets(12_100, 500, 300_000);
        assert_eq!(offsets.len(), 1);
        assert_eq!(offsets[0].offset_ms, 1_995);
        assert!(offsets[0].alarm && !offsets[0].beyond_window);
    }

    #[test]
    fn the_furthest_behind_peer_within_memory_sets_the_hold() {
        let now = 1_800_000_000_000;
        let mut clocks = PeerClocks::new(["eu-west-1", "ap-south-1", "us-west-2"]);
        assert_eq!(clocks.furthest_behind_ms(now, 60_000), 0, "nothing measured");
        // eu-west-1 runs 2 s ahead, ap-south-1 a week behind (this region's clock jumped ahead).
        clocks.on_request("eu-west-1", now + 2_000, now);
        let week_ms = 7 * 24 * 3_600_000;
        clocks.on_request("ap-south-1", now - week_ms, now + 10);
        assert_eq!(clocks.furthest_behind_ms(now + 20, 60_000), week_ms + 10);
        // Only a peer ahead: no hold.
        let mut ahead = PeerClocks::new(["eu-west-1"]);
        ahead.on_request("eu-west-1", now + 2_000, now);
        assert_eq!(ahead.furthest_behind_ms(now, 60_000), 0);
        // This region's clock jumps a day ahead: the next sample holds the sweeps back at once,
        // although the estimate (the samples' maximum) still says the peer is in step.
        let mut jumped = PeerClocks::new(["eu-west-1"]);
        for n in 0..OFFSET_SAMPLES_MAX as u64 {
            jumped.on_request("eu-west-1", now + n * 1_000, now + n * 1_000 + 5);
        }
        let later = now + 100_000;
        let day_ms = 24 * 3_600_000;
        assert_eq!(jumped.on_request("eu-west-1", later, later + day_ms), Some(-5));
        assert_eq!(jumped.furthest_behind_ms(later + day_ms, 60_000), day_ms);
        // A measurement older than the memory no longer holds anything back.
        assert_eq!(clocks.furthest_behind_ms(now + 10 + 60_001, 60_000), 0);
    }

    #[test]
    fn replays_and_unknown_peers_are_not_samples() {
        let mut clocks = PeerClocks::new(["eu-west-1"]);
        assert!(clocks.on_request("eu-west-1", 500_000, 500_010).is_some());
        // A request signed 400 s ago, replayed now, says nothing of the peer's clock today.
        assert_eq!(clocks.on_request("eu-west-1", 100_000, 500_020), None);
        assert_eq!(clocks.on_request("eu-west-1", 500_000, 500_020), None);
        assert_eq!(clocks.on_request("ap-south-1", 500_000, 500_020), None);
        let offsets = clocks.offsets(500_030, 500, 300_000);
        assert_eq!(offsets[0].offset_ms, -10);
        assert!(!offsets[0].alarm);
    }

    #[test]
    fn beyond_the_signing_window_and_stale_measurements() {
        let mut clocks = PeerClocks::new(["eu-west-1", "us-east-1"]);
        clocks.on_request("eu-west-1", 1_000_000, 1_400_000);
        let offsets = clocks.offsets(1_400_000, 500, 300_000);
        assert_eq!(offsets.len(), 1, "a peer never measured is not listed");
        assert_eq!(offsets[0].offset_ms, -400_000);
        assert!(offsets[0].alarm && offsets[0].beyond_window);
        let later = clocks.offsets(1_400_000 + OFFSET_STALE_MS + 1, 500, 300_000);
        assert!(
            !later[0].alarm && !later[0].beyond_window,
            "a stale offset raises nothing"
        );
    }

    #[test]
    fn a_clock_stepped_back_is_measured_again_once_the_old_estimate_is_stale() {
        let mut clocks = PeerClocks::new(["eu-west-1"]);
        // 400 s ahead, then NTP steps the peer's clock back: its next requests carry earlier
        // signing times, which look like replays while the estimate is fresh...
        clocks.on_request("eu-west-1", 1_400_000, 1_000_000);
        assert_eq!(clocks.on_request("eu-west-1", 1_000_010, 1_000_020), None);
        // ...and start a new estimate once it is stale.
        let later = 1_000_020 + OFFSET_STALE_MS + 1;
        assert_eq!(clocks.on_request("eu-west-1", later - 5, later), Some(-5));
        assert!(!clocks.offsets(later, 500, 300_000)[0].alarm);
    }
}
