//! Anti-entropy by range digests: which parts of a table differ between two replicas, found
//! by comparing digests of key ranges from the top down (a Merkle tree over the key space,
//! built on demand), so a repair moves the differences rather than the table.
//!
//! Stored keys begin with a 32-bit partition hash, so the key space splits evenly by prefix.
//! A [`Range`] is a prefix of `depth` bits; its children add [`FANOUT_BITS`] more. A
//! [`Digest`] is the record count and the wrapping sum of per-record hashes (of key and version),
//! so it is independent of order and cheap to combine.
//!
//! The repairing side walks the tree: for each range it compares its digest with the peer's
//! ([`compare`]): equal ranges are done, small or one-sided ranges are pushed whole, large
//! differing ranges are split. Repair pushes this side's records only; the peer's own repair in
//! the other direction carries what only it has. Records apply by last writer wins, so pushing
//! a record the peer already holds, or holds newer, changes nothing.

/// Bits a child range adds to its parent's prefix (16 children).
pub const FANOUT_BITS: u8 = 4;
/// Most bits one descent adds: a large differing range goes straight to the depth where its
/// ranges hold about a leaf's records each (every level of the walk reads the whole range
/// again), at most 2^16 ranges at once (the walk's frontier).
pub const DESCENT_BITS_MAX: u8 = 16;
/// Bits of the stored keys' hash prefix: the deepest range is one partition hash.
pub const PREFIX_BITS: u8 = 32;

/// A range of stored keys: those whose 32-bit prefix starts with `index`'s `depth` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub depth: u8,
    pub index: u32,
}

impl Range {
    /// Every key.
    pub const ROOT: Range = Range { depth: 0, index: 0 };

    /// Checks a range received from a peer.
    pub fn new(depth: u8, index: u32) -> Option<Range> {
        (depth <= PREFIX_BITS && (depth == PREFIX_BITS || u64::from(index) < 1u64 << depth))
            .then_some(Range { depth, index })
    }

    /// The first prefix inside the range.
    pub fn start(self) -> u32 {
        if self.depth == 0 {
            0
        } else {
            self.index << (PREFIX_BITS - self.depth)
        }
    }

    /// The first prefix after the range, or `None` when it reaches the end of the key space.
    pub fn end(self) -> Option<u32> {
        let width = 1u64 << (PREFIX_BITS - self.depth);
        u32::try_from(u64::from(self.start()) + width).ok()
    }

    pub fn contains(self, prefix: u32) -> bool {
        prefix >= self.start() && self.end().is_none_or(|end| prefix < end)
    }

    /// One partition hash: cannot be split further.
    pub fn is_leaf(self) -> bool {
        self.depth >= PREFIX_BITS
    }

    pub fn children(self) -> impl Iterator<Item = Range> {
        self.descendants(FANOUT_BITS)
    }

    /// The ranges `bits` deeper (fewer at the deepest level), in key order.
    pub fn descendants(self, bits: u8) -> impl Iterator<Item = Range> {
        let depth = (self.depth + bits.min(DESCENT_BITS_MAX)).min(PREFIX_BITS);
        let added = depth - self.depth;
        (0..(1u32 << added)).map(move |child| Range {
            depth,
            index: (self.index << added) | child,
        })
    }
}

/// The 32-bit prefix of a stored key (zero-padded if the key is shorter).
pub fn prefix_of(key: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let len = key.len().min(4);
    bytes[..len].copy_from_slice(&key[..len]);
    u32::from_be_bytes(bytes)
}

/// Count and order-independent hash of a range's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub hash: u128,
}

impl Digest {
    /// Adds one record, given a strong hash of its key and version.
    pub fn add(&mut self, record_hash: u128) {
        self.count += 1;
        self.hash = self.hash.wrapping_add(record_hash);
    }
}

/// What to do with one range after comparing digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The replicas agree here, or this side has nothing to give.
    Done,
    /// Send every record of this side in the range.
    Push,
    /// Compare the range's children.
    Descend,
}

pub fn compare(range: Range, local: Digest, remote: Digest, leaf_records_max: u64) -> Step {
    if local == remote || local.count == 0 {
        Step::Done
    } else if remote.count == 0 || local.count <= leaf_records_max || range.is_leaf() {
        Step::Push
    } else {
        Step::Descend
    }
}

/// Bits to descend from a differing range of `count` records: whole fan-out levels until a
/// range holds about `leaf_records_max` records (keys spread evenly over the hash prefix), at
/// least one level and at most [`DESCENT_BITS_MAX`].
pub fn descent_bits(count: u64, leaf_records_max: u64) -> u8 {
    let mut bits = FANOUT_BITS;
    while bits < DESCENT_BITS_MAX && (count >> bits) > leaf_records_max.max(1) {
        bits += FANOUT_BITS;
    }
    bits
}

/// The repairing side's walk over one table's ranges, depth first so the frontier stays small
/// (at most `FANOUT` ranges per level).
#[derive(Clone, Debug)]
pub struct Walk {
    frontier: Vec<Range>,
    leaf_records_max: u64,
    /// Ranges at most this deep have digests both sides keep up to date (cheap to read): the
    /// walk descends one level at a time down to it, comparing few ranges when few differ.
    kept_depth: u8,
    /// Ranges compared and records found to push, for the log.
    pub compared: u64,
}

impl Walk {
    /// A walk for digests computed from the records: a differing range descends straight to
    /// about a leaf per range (each level would read the range again).
    pub fn new(leaf_records_max: u64) -> Walk {
        Walk::with_kept_depth(leaf_records_max, 0)
    }

    /// A walk for digests kept by the writer down to ranges of `kept_depth` bits: above that
    /// it descends a level ([`FANOUT_BITS`]) at a time, below it as [`Walk::new`] does.
    pub fn with_kept_depth(leaf_records_max: u64, kept_depth: u8) -> Walk {
        Walk {
            frontier: vec![Range::ROOT],
            leaf_records_max,
            kept_depth,
            compared: 0,
        }
    }

    /// Bits a differing range of `count` records descends.
    fn descent(&self, range: Range, count: u64) -> u8 {
        if range.depth < self.kept_depth {
            FANOUT_BITS.min(self.kept_depth - range.depth)
        } else {
            descent_bits(count, self.leaf_records_max)
        }
    }

    pub fn is_done(&self) -> bool {
        self.frontier.is_empty()
    }

    /// The next ranges to compare, at most `ranges_max`.
    pub fn next_ranges(&mut self, ranges_max: usize) -> Vec<Range> {
        let keep = self.frontier.len().saturating_sub(ranges_max.max(1));
        self.frontier.split_off(keep)
    }

    /// Both sides' digests of `ranges` (as returned by [`Walk::next_ranges`]); returns the
    /// ranges whose records must be pushed.
    pub fn on_digests(&mut self, ranges: &[Range], local: &[Digest], remote: &[Digest]) -> Vec<Range> {
        let mut push = Vec::new();
        for ((range, local), remote) in ranges.iter().zip(local).zip(remote) {
            self.compared += 1;
            match compare(*range, *local, *remote, self.leaf_records_max) {
                Step::Done => {}
                Step::Push => push.push(*range),
                Step::Descend => {
                    let bits = self.descent(*range, local.count);
                    self.frontier.extend(range.descendants(bits));
                }
            }
        }
        push
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn ranges_tile_the_key_space() {
        assert_eq!(Range::ROOT.start(), 0);
        assert_eq!(Range::ROOT.end(), None);
        let children: Vec<Range> = Range::ROOT.children().collect();
        assert_eq!(children.len(), 16);
        assert_eq!(children[1].start(), 0x1000_0000);
        assert_eq!(children[15].end(), None);
        for pair in children.windows(2) {
            assert_eq!(pair[0].end(), Some(pair[1].start()));
        }
        let leaf = Range::new(32, 0xdead_beef).expect("valid");
        assert!(leaf.is_leaf() && leaf.contains(0xdead_beef) && !leaf.contains(0xdead_bef0));
        assert_eq!(leaf.children().collect::<Vec<_>>(), vec![leaf]);
        assert_eq!(Range::new(4, 16), None, "index beyond the depth");
        assert_eq!(Range::new(33, 0), None);
        assert_eq!(prefix_of(&[1, 2]), 0x0102_0000);
    }

    /// A replica: key → version; a record's hash mixes both.
    type Replica = BTreeMap<u32, u64>;

    fn record_hash(key: u32, version: u64) -> u128 {
        let mut x =
            (u128::from(key) << 64 | u128::from(version)).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        x ^= x >> 67;
        x.wrapping_mul(0xbf58_476d_1ce4_e5b9_94d0_49bb_1331_11eb)
    }

    /// The records of `replica` inside `range`.
    fn inside(replica: &Replica, range: Range) -> impl Iterator<Item = (&u32, &u64)> {
        match range.end() {
            Some(end) => replica.range(range.start()..end),
            None => replica.range(range.start()..),
        }
    }

    fn digest(replica: &Replica, range: Range) -> Digest {
        let mut digest = Digest::default();
        for (key, version) in inside(replica, range) {
            digest.add(record_hash(*key, *version));
        }
        digest
    }

    /// Repairs `remote` from `local`; returns the records pushed.
    fn repair(local: &Replica, remote: &mut Replica) -> usize {
        repair_with(Walk::new(8), local, remote)
    }

    fn repair_with(mut walk: Walk, local: &Replica, remote: &mut Replica) -> usize {
        let mut pushed = 0;
        while !walk.is_done() {
            let ranges = walk.next_ranges(64);
            let ours: Vec<Digest> = ranges.iter().map(|r| digest(local, *r)).collect();
            let theirs: Vec<Digest> = ranges.iter().map(|r| digest(remote, *r)).collect();
            for range in walk.on_digests(&ranges, &ours, &theirs) {
                for (key, version) in inside(local, range) {
                    pushed += 1;
                    let held = remote.entry(*key).or_insert(*version);
                    *held = (*held).max(*version);
                }
            }
        }
        pushed
    }

    proptest! {
        /// After a repair the peer holds every key of this side at the same or a newer version.
        #[test]
        fn a_repair_leaves_nothing_behind(
            shared in proptest::collection::btree_map(any::<u32>(), 0u64..4, 0..400),
            only_local in proptest::collection::btree_map(any::<u32>(), 0u64..4, 0..20),
            newer_remote in proptest::collection::btree_map(any::<u32>(), 4u64..8, 0..20),
        ) {
            let mut local = shared.clone();
            local.extend(only_local);
            let mut remote = shared;
            remote.extend(newer_remote);
            let mut kept = remote.clone();
            repair(&local, &mut remote);
            repair_with(Walk::with_kept_depth(8, 16), &local, &mut kept);
            for (key, version) in &local {
                prop_assert!(remote.get(key).is_some_and(|held| held >= version), "key {key:#x} left behind");
                prop_assert!(kept.get(key).is_some_and(|held| held >= version), "key {key:#x} left behind (kept digests)");
            }
        }
    }

    #[test]
    fn a_large_range_descends_to_about_a_leaf_per_range_at_once() {
        assert_eq!(descent_bits(200, 128), 4);
        assert_eq!(descent_bits(1_000_000, 128), 16, "1M / 2^16 = 15 records a range");
        assert_eq!(descent_bits(5_000, 128), 8, "5,000 / 2^8 = 19");
        assert_eq!(descent_bits(u64::MAX, 128), DESCENT_BITS_MAX);
        assert_eq!(descent_bits(10, 0), 4);
        let root: Vec<Range> = Range::ROOT.descendants(8).collect();
        assert_eq!(root.len(), 256);
        assert_eq!(root[255].end(), None);
        let deep = Range::new(28, 5).expect("valid");
        assert_eq!(deep.descendants(16).count(), 16, "no deeper than one partition hash");
    }

    /// The records a walk reads (both sides), and those it pushes.
    fn walk_cost(local: &Replica, remote: &Replica) -> (usize, usize) {
        let mut walk = Walk::new(8);
        let (mut read, mut pushed) = (0, 0);
        while !walk.is_done() {
            let ranges = walk.next_ranges(64);
            let ours: Vec<Digest> = ranges.iter().map(|r| digest(local, *r)).collect();
            let theirs: Vec<Digest> = ranges.iter().map(|r| digest(remote, *r)).collect();
            read += ours.iter().chain(&theirs).map(|d| d.count as usize).sum::<usize>();
            for range in walk.on_digests(&ranges, &ours, &theirs) {
                pushed += inside(local, range).count();
            }
        }
        (read, pushed)
    }

    #[test]
    fn many_spread_differences_read_the_table_a_few_times_not_once_a_level() {
        let local: Replica = (0..50_000u32).map(|i| (i.wrapping_mul(0x9e37_79b9), 1)).collect();
        let mut remote = local.clone();
        for key in local.keys().copied().step_by(100) {
            remote.insert(key, 0);
        }
        let (read, pushed) = walk_cost(&local, &remote);
        // One level at a time reads both replicas once per level (4 levels here); descending
        // to about a leaf per range at once reads them about twice.
        assert!(
            read <= 3 * 2 * local.len(),
            "{read} records read for {} items",
            local.len()
        );
        assert!(pushed <= 500 * 8, "{pushed} records pushed for 500 differences");
    }

    /// Ranges compared by a walk with digests kept down to `kept_depth`.
    fn ranges_compared(local: &Replica, remote: &Replica, kept_depth: u8) -> u64 {
        let mut walk = Walk::with_kept_depth(8, kept_depth);
        while !walk.is_done() {
            let ranges = walk.next_ranges(64);
            let ours: Vec<Digest> = ranges.iter().map(|r| digest(local, *r)).collect();
            let theirs: Vec<Digest> = ranges.iter().map(|r| digest(remote, *r)).collect();
            walk.on_digests(&ranges, &ours, &theirs);
        }
        walk.compared
    }

    #[test]
    fn with_kept_digests_a_few_differences_compare_a_few_ranges() {
        let local: Replica = (0..200_000u32).map(|i| (i.wrapping_mul(0x9e37_79b9), 1)).collect();
        let mut remote = local.clone();
        for key in local.keys().copied().step_by(40_000) {
            remote.insert(key, 0);
        }
        // Straight to ~8 records a range: 2^16 ranges, then 2^4 more under each that differs.
        let straight = ranges_compared(&local, &remote, 0);
        assert!(straight > 65_536, "{straight}");
        // A level at a time down to 16 bits: 1 + 16 + 256 + 4096 + 16 per differing range below.
        let levels = ranges_compared(&local, &remote, 16);
        assert!(
            levels < 4_369 + 5 * 16 * 3,
            "{levels} ranges compared for 5 differences"
        );
        let mut walk = Walk::with_kept_depth(8, 16);
        walk.frontier = vec![Range::new(14, 3).expect("valid")];
        let ranges = walk.next_ranges(1);
        walk.on_digests(
            &ranges,
            &[Digest { count: 50, hash: 1 }],
            &[Digest { count: 50, hash: 2 }],
        );
        assert_eq!(walk.frontier.len(), 4, "two bits down to the kept depth, not four");
        let empty = Replica::new();
        let mut walk = Walk::with_kept_depth(8, 16);
        let mut pushed = 0;
        while !walk.is_done() {
            let ranges = walk.next_ranges(64);
            let ours: Vec<Digest> = ranges.iter().map(|r| digest(&local, *r)).collect();
            let theirs: Vec<Digest> = ranges.iter().map(|r| digest(&empty, *r)).collect();
            for range in walk.on_digests(&ranges, &ours, &theirs) {
                pushed += inside(&local, range).count();
            }
        }
        assert_eq!(pushed, local.len(), "an empty peer gets everything once");
    }

    #[test]
    fn a_few_differences_move_a_few_records() {
        let local: Replica = (0..20_000u32).map(|i| (i.wrapping_mul(0x9e37_79b9), 1)).collect();
        let mut remote = local.clone();
        let stale: Vec<u32> = local.keys().copied().step_by(4_000).collect();
        for key in &stale {
            remote.insert(*key, 0);
        }
        let pushed = repair(&local, &mut remote);
        assert_eq!(remote, local);
        assert!(
            pushed <= stale.len() * 8,
            "{pushed} records pushed to repair {} keys",
            stale.len()
        );
        let mut empty = Replica::new();
        assert_eq!(
            repair(&local, &mut empty),
            local.len(),
            "an empty peer gets everything once"
        );
        assert_eq!(repair(&local, &mut empty), 0, "equal replicas exchange digests only");
    }
}
