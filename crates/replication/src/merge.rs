//! Last writer wins per item, on versions `(hlc, origin)`.
//!
//! The order is total: equal HLCs (possible when two regions' clocks agree to the
//! millisecond and counter) are broken by the origin region's name, so every replica picks the
//! same winner. Deletes are versions too (tombstones), which is why a delete is not lost to an
//! older write that arrives later.

use crate::hlc::Hlc;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub hlc: Hlc,
    pub origin: String,
}

impl Version {
    pub fn new(hlc: Hlc, origin: impl Into<String>) -> Version {
        Version {
            hlc,
            origin: origin.into(),
        }
    }
}

/// Whether an incoming change replaces the stored one. Strictly newer only: re-applying the
/// same change is a no-op, which makes delivery idempotent.
pub fn wins(incoming: &Version, existing: Option<&Version>) -> bool {
    existing.is_none_or(|existing| incoming > existing)
}

/// Whether a received change (from a peer's log or from a repair) applies to a key that
/// holds `existing`, in a table whose tombstones were purged here below `purged_below`.
///
/// [`wins`] alone is not enough once tombstones are purged: a purged delete leaves the key
/// absent, and a copy of an older write arriving afterwards (a repair computed before the
/// delete reached its sender, or a captured request replayed by an attacker) would resurrect
/// the item in this region only. Below the purge watermark every write to the table has been
/// received here already (see [`crate::watermark`]), so a change below it for an absent key is
/// one this region has seen and superseded: it is refused. The watermark must be durable
/// (it survives restarts with the purge it describes) and per table (a table this region
/// joins later starts without one, so its backfill brings older items).
pub fn applies(incoming: &Version, existing: Option<&Version>, purged_below: u64) -> bool {
    match existing {
        Some(existing) => incoming > existing,
        None => incoming.hlc.0 >= purged_below,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Applies changes `(key, version, value)` to an empty replica.
    fn replay(changes: &[(u8, Version, Option<u32>)]) -> BTreeMap<u8, (Version, Option<u32>)> {
        let mut state: BTreeMap<u8, (Version, Option<u32>)> = BTreeMap::new();
        for (key, version, value) in changes {
            if wins(version, state.get(key).map(|(v, _)| v)) {
                state.insert(*key, (version.clone(), *value));
            }
        }
        state
    }

    fn change() -> impl Strategy<Value = (u8, Version, Option<u32>)> {
        (
            0u8..6,
            0u64..8,
            proptest::sample::select(vec!["ap-south-1", "eu-west-1", "us-east-1"]),
            proptest::option::of(0u32..100),
        )
            .prop_map(|(key, hlc, origin, value)| (key, Version::new(Hlc(hlc), origin), value))
    }

    #[test]
    fn a_change_below_the_purge_watermark_does_not_resurrect_an_absent_key() {
        let old = Version::new(Hlc(10), "eu-west-1");
        assert!(!applies(&old, None, 11), "older than the purge watermark: refused");
        assert!(applies(&old, None, 10), "at the watermark: applies");
        assert!(applies(&old, None, 0), "no purge yet: applies");
        let stored = Version::new(Hlc(5), "us-east-1");
        assert!(
            applies(&old, Some(&stored), 100),
            "a present key follows last writer wins"
        );
        assert!(!applies(&stored, Some(&old), 0));
    }

    proptest! {
        /// With purges, replays of any earlier change never bring back a purged delete: the
        /// replica ends where it would without the replays.
        #[test]
        fn replays_after_a_purge_change_nothing(
            changes in proptest::collection::vec(change(), 1..30),
            replays in proptest::collection::vec(0usize..30, 0..30),
        ) {
            let mut state: BTreeMap<u8, (Version, Option<u32>)> = BTreeMap::new();
            for (key, version, value) in &changes {
                if applies(version, state.get(key).map(|(v, _)| v), 0) {
                    state.insert(*key, (version.clone(), *value));
                }
            }
            // Purge every tombstone: the watermark is above every change seen.
            let purged_below = changes.iter().map(|(_, v, _)| v.hlc.0 + 1).max().unwrap_or(0);
            state.retain(|_, (_, value)| value.is_some());
            let before = state.clone();
            for index in replays {
                let (key, version, value) = &changes[index % changes.len()];
                if applies(version, state.get(key).map(|(v, _)| v), purged_below) {
                    state.insert(*key, (version.clone(), *value));
                }
            }
            prop_assert_eq!(state, before);
        }

        /// Any order, any duplication: the same final state (commutative, idempotent).
        #[test]
        fn replicas_converge_whatever_the_delivery_order(
            changes in proptest::collection::vec(change(), 0..40),
            seed in any::<u64>(),
        ) {
            // A unique version per change, as real regions produce (one HLC per write per origin).
            let mut unique = BTreeMap::new();
            for (key, version, value) in changes {
                unique.entry(version.clone()).or_insert((key, version, value));
            }
            let changes: Vec<_> = unique.into_values().collect();
            let mut shuffled = changes.clone();
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut duplicated = shuffled.clone();
            duplicated.extend(changes.iter().cloned());
            prop_assert_eq!(replay(&changes), replay(&shuffled));
            prop_assert_eq!(replay(&changes), replay(&duplicated));
        }
    }

    #[test]
    fn ties_break_by_origin_and_equal_versions_do_not_reapply() {
        let a = Version::new(Hlc(5), "eu-west-1");
        let b = Version::new(Hlc(5), "us-east-1");
        assert!(wins(&b, Some(&a)));
        assert!(!wins(&a, Some(&b)));
        assert!(!wins(&a, Some(&a)));
        assert!(wins(&a, None));
    }
}
