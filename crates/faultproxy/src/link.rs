//! The sans-IO core of one direction of one connection: which toxics hold, when each piece of
//! data may be delivered, when the link must close or reset.
//!
//! Time is microseconds since the connection started, passed in by the caller; randomness comes
//! from the [`Rng`] handed over at creation. The same seed, toxics and arrivals give the same
//! schedule, so jitter and slicing are reproducible.

use crate::toxic::{Stream, Toxic, ToxicKind};
use common::rng::Rng;

/// Bandwidth-limited data is released in slices of at most this much transmission time, so a
/// large read does not arrive as one late burst.
pub const BANDWIDTH_SLICE_MS: u64 = 100;

/// A contiguous piece of a chunk, deliverable at `at_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub at_us: u64,
    pub len: usize,
}

/// What to do with one chunk read from the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// In order; the lengths sum to at most the chunk length (limit_data may cut it short).
    pub pieces: Vec<Piece>,
    /// Close the connection once the pieces are delivered (a data limit was reached).
    pub close_after: bool,
}

/// A timed end of the connection, independent of data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// Close (FIN) at this time: a timeout toxic ran out.
    Close { at_us: u64 },
    /// Reset (RST) at this time: a reset_peer toxic.
    Reset { at_us: u64 },
}

impl Deadline {
    pub fn at_us(self) -> u64 {
        match self {
            Deadline::Close { at_us } | Deadline::Reset { at_us } => at_us,
        }
    }
}

#[derive(Clone, Debug)]
struct Active {
    name: String,
    kind: ToxicKind,
    toxicity: f64,
    /// Drawn once per connection from `toxicity`.
    applies: bool,
    /// When this link first saw the toxic: timers of timeout and reset_peer start here.
    since_us: u64,
    /// limit_data: bytes let through since the toxic took effect.
    passed_bytes: u64,
    /// bandwidth: when the simulated wire is free again.
    free_at_us: u64,
}

/// One direction of one connection.
#[derive(Clone, Debug)]
pub struct Link {
    stream: Stream,
    rng: Rng,
    toxics: Vec<Active>,
    /// Deliveries never go back in time: TCP keeps order.
    last_release_us: u64,
}

impl Link {
    pub fn new(stream: Stream, rng: Rng) -> Link {
        Link {
            stream,
            rng,
            toxics: Vec::new(),
            last_release_us: 0,
        }
    }

    /// Takes the proxy's current toxics (both streams; only this link's stream is kept).
    /// Toxics already known by name keep their timers and counters.
    pub fn set_toxics(&mut self, now_us: u64, toxics: &[Toxic]) {
        let mut next = Vec::with_capacity(toxics.len());
        for toxic in toxics.iter().filter(|t| t.stream == self.stream) {
            match self.toxics.iter().position(|a| a.name == toxic.name) {
                Some(index) => {
                    let mut active = self.toxics.swap_remove(index);
                    if active.toxicity != toxic.toxicity {
                        active.applies = self.rng.next_f64() < toxic.toxicity;
                        active.toxicity = toxic.toxicity;
                    }
                    if active.kind.type_name() != toxic.kind.type_name() {
                        active.since_us = now_us;
                        active.passed_bytes = 0;
                    }
                    active.kind = toxic.kind.clone();
                    next.push(active);
                }
                None => next.push(Active {
                    name: toxic.name.clone(),
                    kind: toxic.kind.clone(),
                    toxicity: toxic.toxicity,
                    applies: self.rng.next_f64() < toxic.toxicity,
                    since_us: now_us,
                    passed_bytes: 0,
                    free_at_us: now_us,
                }),
            }
        }
        self.toxics = next;
    }

    fn applying(&self) -> impl Iterator<Item = &Active> {
        self.toxics.iter().filter(|a| a.applies)
    }

    /// A timeout toxic holds the link: nothing is read, so nothing is forwarded.
    pub fn holding(&self) -> bool {
        self.applying().any(|a| matches!(a.kind, ToxicKind::Timeout { .. }))
    }

    /// The earliest timed end of the connection, if any toxic sets one.
    pub fn deadline(&self) -> Option<Deadline> {
        self.applying()
            .filter_map(|a| match a.kind {
                ToxicKind::Timeout { timeout_ms } if timeout_ms > 0 => Some(Deadline::Close {
                    at_us: a.since_us.saturating_add(timeout_ms * 1000),
                }),
                ToxicKind::ResetPeer { timeout_ms } => Some(Deadline::Reset {
                    at_us: a.since_us.saturating_add(timeout_ms * 1000),
                }),
                _ => None,
            })
            .min_by_key(|d| d.at_us())
    }

    /// Schedules a chunk of `len` bytes read at `now_us`.
    pub fn on_data(&mut self, now_us: u64, len: usize) -> Plan {
        let mut pieces = vec![Piece { at_us: now_us, len }];
        let mut close_after = false;
        for active in self.toxics.iter_mut().filter(|a| a.applies) {
            match active.kind {
                ToxicKind::Latency { latency_ms, jitter_ms } => {
                    for piece in &mut pieces {
                        let delay_us = (latency_ms as i64 + self.rng.symmetric(jitter_ms)).max(0) as u64 * 1000;
                        piece.at_us = piece.at_us.saturating_add(delay_us);
                    }
                }
                ToxicKind::Bandwidth { rate_kbps } => {
                    let slice_bytes = (rate_kbps * BANDWIDTH_SLICE_MS).max(1) as usize;
                    let mut shaped = Vec::with_capacity(pieces.len());
                    for piece in pieces {
                        let mut left = piece.len;
                        while left > 0 {
                            let len = left.min(slice_bytes);
                            let start_us = active.free_at_us.max(piece.at_us);
                            // len bytes at rate × 1000 bytes/s take len × 1000 / rate µs.
                            active.free_at_us = start_us.saturating_add(len as u64 * 1000 / rate_kbps);
                            shaped.push(Piece {
                                at_us: active.free_at_us,
                                len,
                            });
                            left -= len;
                        }
                    }
                    pieces = shaped;
                }
                ToxicKind::Slicer {
                    average_size,
                    size_variation,
                    delay_us,
                } => {
                    let mut sliced = Vec::new();
                    for piece in pieces {
                        let mut left = piece.len;
                        let mut at_us = piece.at_us;
                        while left > 0 {
                            let size = (average_size as i64 + self.rng.symmetric(size_variation)).max(1) as usize;
                            let len = left.min(size);
                            sliced.push(Piece { at_us, len });
                            at_us = at_us.saturating_add(delay_us);
                            left -= len;
                        }
                    }
                    pieces = sliced;
                }
                ToxicKind::LimitData { bytes } => {
                    let mut allowance = bytes.saturating_sub(active.passed_bytes);
                    let mut kept = Vec::with_capacity(pieces.len());
                    for piece in pieces {
                        if allowance == 0 {
                            break;
                        }
                        let len = piece.len.min(allowance as usize);
                        allowance -= len as u64;
                        active.passed_bytes += len as u64;
                        kept.push(Piece {
                            at_us: piece.at_us,
                            len,
                        });
                    }
                    pieces = kept;
                    if active.passed_bytes >= bytes {
                        close_after = true;
                    }
                }
                ToxicKind::Timeout { .. } | ToxicKind::ResetPeer { .. } | ToxicKind::SlowClose { .. } => {}
            }
        }
        for piece in &mut pieces {
            piece.at_us = piece.at_us.max(self.last_release_us);
            self.last_release_us = piece.at_us;
        }
        Plan { pieces, close_after }
    }

    /// When the end of stream read at `now_us` may be passed on: after the data before it,
    /// plus any slow_close delay.
    pub fn on_eof(&mut self, now_us: u64) -> u64 {
        let delay_ms: u64 = self
            .applying()
            .filter_map(|a| match a.kind {
                ToxicKind::SlowClose { delay_ms } => Some(delay_ms),
                _ => None,
            })
            .sum();
        let at_us = now_us.max(self.last_release_us).saturating_add(delay_ms * 1000);
        self.last_release_us = at_us;
        at_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toxic(name: &str, stream: Stream, toxicity: f64, kind: ToxicKind) -> Toxic {
        Toxic {
            name: name.to_string(),
            stream,
            toxicity,
            kind,
        }
    }

    /// A link of `stream` seeded with `seed`, with the one toxic `kind` on it since time 0.
    fn link_with(stream: Stream, seed: u64, kind: ToxicKind) -> Link {
        let mut link = Link::new(stream, Rng::new(seed));
        link.set_toxics(0, &[toxic("t", stream, 1.0, kind)]);
        link
    }

    fn seed() -> u64 {
        common::rng::seed_from_env("faultproxy link test")
    }

    #[test]
    fn no_toxics_passes_data_at_once() {
        let mut link = Link::new(Stream::Downstream, Rng::new(1));
        let plan = link.on_data(50, 10);
        assert_eq!(
            plan,
            Plan {
                pieces: vec![Piece { at_us: 50, len: 10 }],
                close_after: false
            }
        );
        assert_eq!(link.deadline(), None);
        assert!(!link.holding());
    }

    #[test]
    fn toxics_of_the_other_stream_do_nothing() {
        let mut link = Link::new(Stream::Upstream, Rng::new(1));
        link.set_toxics(
            0,
            &[toxic(
                "slow",
                Stream::Downstream,
                1.0,
                ToxicKind::Latency {
                    latency_ms: 100,
                    jitter_ms: 0,
                },
            )],
        );
        assert_eq!(link.on_data(0, 5).pieces, vec![Piece { at_us: 0, len: 5 }]);
    }

    #[test]
    fn latency_with_jitter_is_reproducible_ordered_and_bounded() {
        let seed = seed();
        let schedule = |seed| {
            let mut link = link_with(
                Stream::Downstream,
                seed,
                ToxicKind::Latency {
                    latency_ms: 100,
                    jitter_ms: 30,
                },
            );
            (0..200u64)
                .map(|i| link.on_data(i * 1000, 1).pieces[0].at_us)
                .collect::<Vec<_>>()
        };
        let first = schedule(seed);
        assert_eq!(first, schedule(seed), "same seed, same schedule");
        for (i, at_us) in first.iter().enumerate() {
            assert!(
                *at_us >= i as u64 * 1000 + 70_000,
                "never earlier than latency - jitter"
            );
        }
        assert!(first.windows(2).all(|w| w[0] <= w[1]), "order is kept");
        assert!(
            first.iter().enumerate().any(|(i, at)| *at != i as u64 * 1000 + 100_000),
            "jitter varies"
        );
    }

    #[test]
    fn bandwidth_spreads_bytes_over_time() {
        let mut link = link_with(Stream::Upstream, 3, ToxicKind::Bandwidth { rate_kbps: 10 });
        // 10 KB/s: 5000 bytes take half a second, released in 100 ms slices of 1000 bytes.
        let plan = link.on_data(0, 5000);
        assert_eq!(plan.pieces.len(), 5);
        assert_eq!(plan.pieces.iter().map(|p| p.len).sum::<usize>(), 5000);
        assert_eq!(plan.pieces.last().map(|p| p.at_us), Some(500_000));
        // The wire stays busy: the next chunk queues behind.
        assert_eq!(link.on_data(0, 1000).pieces[0].at_us, 600_000);
    }

    #[test]
    fn slicer_cuts_into_small_delayed_pieces() {
        let seed = seed();
        let mut link = link_with(
            Stream::Downstream,
            seed,
            ToxicKind::Slicer {
                average_size: 10,
                size_variation: 4,
                delay_us: 500,
            },
        );
        let plan = link.on_data(0, 1000);
        assert_eq!(plan.pieces.iter().map(|p| p.len).sum::<usize>(), 1000);
        assert!(plan.pieces.len() >= 1000 / 14);
        assert!(plan.pieces.iter().all(|p| p.len <= 14));
        assert!(plan.pieces.windows(2).all(|w| w[1].at_us == w[0].at_us + 500));
    }

    #[test]
    fn limit_data_truncates_then_closes() {
        let mut link = link_with(Stream::Downstream, 1, ToxicKind::LimitData { bytes: 15 });
        let plan = link.on_data(0, 10);
        assert_eq!((plan.pieces[0].len, plan.close_after), (10, false));
        let plan = link.on_data(0, 10);
        assert_eq!((plan.pieces[0].len, plan.close_after), (5, true));
    }

    #[test]
    fn timeout_holds_and_sets_a_close_deadline_from_when_it_took_effect() {
        let mut link = Link::new(Stream::Upstream, Rng::new(1));
        link.set_toxics(
            1_000,
            &[toxic(
                "hole",
                Stream::Upstream,
                1.0,
                ToxicKind::Timeout { timeout_ms: 0 },
            )],
        );
        assert!(link.holding());
        assert_eq!(link.deadline(), None, "timeout 0 holds forever");
        link.set_toxics(
            5_000,
            &[toxic(
                "hole",
                Stream::Upstream,
                1.0,
                ToxicKind::Timeout { timeout_ms: 20 },
            )],
        );
        assert_eq!(
            link.deadline(),
            Some(Deadline::Close { at_us: 21_000 }),
            "timer kept from 1 ms"
        );
        link.set_toxics(6_000, &[]);
        assert!(!link.holding());
        assert_eq!(link.deadline(), None);
    }

    #[test]
    fn reset_peer_deadline() {
        let mut link = Link::new(Stream::Downstream, Rng::new(1));
        link.set_toxics(
            2_000,
            &[toxic(
                "rst",
                Stream::Downstream,
                1.0,
                ToxicKind::ResetPeer { timeout_ms: 3 },
            )],
        );
        assert_eq!(link.deadline(), Some(Deadline::Reset { at_us: 5_000 }));
    }

    #[test]
    fn toxicity_zero_never_applies_and_the_draw_is_seeded() {
        let mut link = Link::new(Stream::Downstream, Rng::new(1));
        link.set_toxics(
            0,
            &[toxic(
                "rst",
                Stream::Downstream,
                0.0,
                ToxicKind::ResetPeer { timeout_ms: 0 },
            )],
        );
        assert_eq!(link.deadline(), None);
        let seed = seed();
        let affected = |seed| {
            let mut rng = Rng::new(seed);
            (0..100u64)
                .map(|i| {
                    let mut link = Link::new(Stream::Downstream, rng.fork(i));
                    link.set_toxics(
                        0,
                        &[toxic(
                            "t",
                            Stream::Downstream,
                            0.5,
                            ToxicKind::Timeout { timeout_ms: 0 },
                        )],
                    );
                    link.holding()
                })
                .collect::<Vec<_>>()
        };
        let first = affected(seed);
        assert_eq!(first, affected(seed));
        let count = first.iter().filter(|h| **h).count();
        assert!((10..=90).contains(&count), "about half the connections: {count}");
    }

    #[test]
    fn slow_close_delays_the_end_after_pending_data() {
        let mut link = Link::new(Stream::Downstream, Rng::new(1));
        link.set_toxics(
            0,
            &[
                toxic(
                    "slow",
                    Stream::Downstream,
                    1.0,
                    ToxicKind::Latency {
                        latency_ms: 10,
                        jitter_ms: 0,
                    },
                ),
                toxic("close", Stream::Downstream, 1.0, ToxicKind::SlowClose { delay_ms: 5 }),
            ],
        );
        link.on_data(0, 1);
        assert_eq!(link.on_eof(1_000), 15_000);
    }
}
