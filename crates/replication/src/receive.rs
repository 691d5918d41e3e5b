//! The receiving side of global tables: every rule that decides what a region does with what
//! its peers send, in one place, over a storage trait.
//!
//! The store implements [`ReplicaStorage`] (and [`PurgeStorage`]) over its redb write
//! transaction and the deterministic simulation (`tests/it`) implements them over memory; both
//! call the functions below, so the simulation exercises the store's real decisions:
//!
//! - [`receive_batch`]: a batch of a peer's log applies once, in order ([`crate::accept`]);
//!   each change then goes through [`apply_change`];
//! - [`apply_change`]: a change applies when this region holds a replica of its table, it is
//!   newer than the join barrier (log changes only: the backfill brings older ones), it wins
//!   last-writer-wins on `(hlc, origin)` against what the key holds, and, for an absent key,
//!   it is not below the table's purged-tombstone watermark ([`crate::merge::applies`]);
//! - [`receive_repair`]: records of an anti-entropy transfer or backfill follow the same rule
//!   (without the join barrier); the last request moves the source's applied position and
//!   ends the backfills the repair covered;
//! - replica definitions: [`check_definition`] refuses any sequence not newer than the last one
//!   applied from that source (durable, so replays fail after any number of restarts);
//!   [`join_replica`], [`hand_over_backfill`] and [`complete_backfills`] keep the join state;
//!   [`setting_applies`]: whether a table setting the definition carries (the TTL, a global
//!   index's creation or deletion) replaces the one held here;
//! - [`backfill_ready`]: when a sender may start the backfill of a peer that joined;
//! - [`purge_tombstones`]: which tombstones go, and the per-table watermark that stands in for
//!   them, raised in the same transaction.
//!
//! Nothing here does I/O: a storage call is a read or a write inside the caller's transaction,
//! and a function's error is the storage's own.

use std::collections::BTreeSet;

use crate::merge::{Version, applies};
use crate::shipper::{Acceptance, accept};

/// This region's replica of a table, as the receiving rules need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The storage's id of the table (stable while the table exists here).
    pub id: u64,
    /// The join barrier: this region created its replica at a peer's request when its clock
    /// stood here, and its backfill brings every change at or below it; logged changes at or
    /// below it are skipped (0: created here, or with the global table).
    pub joined_below: u64,
}

/// A change received from a peer (from its log or from a repair), decoded and checked.
pub trait Received {
    /// The table's name (the same in every region).
    fn table(&self) -> &str;
    /// The stored key.
    fn key(&self) -> &[u8];
    /// The change's version `(hlc, origin)`.
    fn version(&self) -> Version;
    /// A delete (a tombstone record).
    fn is_tombstone(&self) -> bool;
}

/// A replica this region joined whose backfill from `source` has not completed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Awaited {
    pub table_id: u64,
    pub source: String,
    /// The join barrier (see [`Replica::joined_below`]).
    pub barrier: u64,
}

/// What the receiving rules read and write, all inside one transaction of the caller's.
/// Everything but [`ReplicaStorage::purge_horizon`] is durable.
pub trait ReplicaStorage {
    type Error;
    type Change: Received;

    /// This region's replica of `table`, `None` when it holds none.
    fn replica(&mut self, table: &str) -> Result<Option<Replica>, Self::Error>;
    /// The version stored under `key` (an item or a tombstone), `None` when the key is absent.
    fn stored_version(&mut self, replica: &Replica, key: &[u8]) -> Result<Option<Version>, Self::Error>;
    /// The table's purged-tombstone watermark: tombstones of it were purged here below this.
    fn purged_below(&mut self, table_id: u64) -> Result<u64, Self::Error>;
    fn set_purged_below(&mut self, table_id: u64, below: u64) -> Result<(), Self::Error>;
    /// The purge point of the current round (in memory, 0 after a restart): a tombstone below
    /// it would be purged again at once.
    fn purge_horizon(&self) -> u64;
    /// Stores `change` (the item, or the tombstone) under its key, appends it to this region's
    /// replication log (peers get what this region applied) and lets this region's clock
    /// observe its HLC. May refuse (e.g. a full disk); the caller's transaction then fails.
    fn store(&mut self, replica: &Replica, change: &Self::Change) -> Result<(), Self::Error>;
    /// Stores changes the rules let apply ([`receive_repair`]'s runs): items, no tombstone, of
    /// `replica`, at keys that held nothing when the rules read them, in strictly ascending key
    /// order, each as [`ReplicaStorage::store`] would. A storage that can write such a run in
    /// one pass (a B-tree's leaves filled instead of split in half) overrides this; by default
    /// each change is stored on its own, in order.
    fn store_absent(&mut self, replica: &Replica, changes: &[&Self::Change]) -> Result<(), Self::Error> {
        changes.iter().try_for_each(|change| self.store(replica, change))
    }
    /// The position through which this region applied `source`'s log (0: nothing yet).
    fn applied_from(&mut self, source: &str) -> Result<u64, Self::Error>;
    fn set_applied_from(&mut self, source: &str, seq: u64) -> Result<(), Self::Error>;
    /// Every replica joined here still waiting for its backfill.
    fn awaited_backfills(&mut self) -> Result<Vec<Awaited>, Self::Error>;
    /// Records a wait (`barrier` > 0) or ends it (`barrier` = 0).
    fn set_awaited_backfill(&mut self, table_id: u64, source: &str, barrier: u64) -> Result<(), Self::Error>;
    /// The highest replica-definition sequence applied from `source` (0: none).
    fn definition_received(&mut self, source: &str) -> Result<u64, Self::Error>;
    fn set_definition_received(&mut self, source: &str, sequence: u64) -> Result<(), Self::Error>;
}

/// Why a received change did not apply (or that it did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// This region holds no replica of the change's table.
    NoReplica,
    /// A logged change at or below the replica's join barrier: the backfill brings it. Or a
    /// repair's record at or below it for an absent key, from a repair that is not a backfill
    /// of the replica: the backfill brings (or brought) the newest state at the barrier, and a
    /// key it leaves absent was deleted and purged where it came from (an anti-entropy push
    /// from a peer that lags behind that delete, or a replayed repair, would resurrect it).
    BeforeJoin,
    /// Not newer than what the key holds (a duplicate, a relayed copy, or an older write).
    Superseded,
    /// The key is absent and the change is below the table's purged-tombstone watermark:
    /// this region has received it before and purged what superseded it (a replay).
    BelowPurge,
    /// A tombstone for an absent key below this round's purge point: storing it would only
    /// re-log it before it is purged.
    PurgedAtOnce,
}

/// Where a received change comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path<'a> {
    /// A peer's replication log (a batch): subject to the join barrier.
    Log,
    /// A repair or backfill: the sender's current state of the key. `backfills`: the tables
    /// awaiting a backfill here that this repair is a backfill of (see [`receive_repair`]).
    Repair { backfills: &'a [u64] },
}

/// Applies one received change if the rules say so (see the module's documentation).
pub fn apply_change<S: ReplicaStorage>(storage: &mut S, change: &S::Change, path: Path) -> Result<Applied, S::Error> {
    match decide(storage, change, path)? {
        Decision::Store { replica, .. } => {
            storage.store(&replica, change)?;
            Ok(Applied::Yes)
        }
        Decision::Skip(why) => Ok(why),
    }
}

/// What the rules decided for one received change, before anything is stored.
enum Decision {
    /// Store it; `absent`: its key holds nothing (no item, no tombstone).
    Store {
        replica: Replica,
        absent: bool,
    },
    Skip(Applied),
}

fn decide<S: ReplicaStorage>(storage: &mut S, change: &S::Change, path: Path) -> Result<Decision, S::Error> {
    let Some(replica) = storage.replica(change.table())? else {
        return Ok(Decision::Skip(Applied::NoReplica));
    };
    let version = change.version();
    let before_join = version.hlc.0 <= replica.joined_below;
    if path == Path::Log && before_join {
        return Ok(Decision::Skip(Applied::BeforeJoin));
    }
    let existing = storage.stored_version(&replica, change.key())?;
    if let Path::Repair { backfills } = path
        && before_join
        && existing.is_none()
        && !backfills.contains(&replica.id)
    {
        return Ok(Decision::Skip(Applied::BeforeJoin));
    }
    // The durable per-table watermark is read only for an absent key.
    let purged_below = match existing {
        Some(_) => 0,
        None => storage.purged_below(replica.id)?,
    };
    if !applies(&version, existing.as_ref(), purged_below) {
        return Ok(Decision::Skip(match existing {
            Some(_) => Applied::Superseded,
            None => Applied::BelowPurge,
        }));
    }
    if existing.is_none() && change.is_tombstone() && version.hlc.0 < storage.purge_horizon() {
        return Ok(Decision::Skip(Applied::PurgedAtOnce));
    }
    Ok(Decision::Store {
        replica,
        absent: existing.is_none(),
    })
}

/// Items to absent keys that a repair request applies, held back to be stored together
/// ([`ReplicaStorage::store_absent`]).
struct Run<'c, C> {
    replica: Option<Replica>,
    changes: Vec<&'c C>,
}

impl<'c, C: Received> Run<'c, C> {
    /// Whether `change` comes after every held change: the same table, a greater key. Its key
    /// is then not one the held changes will store at, so the rules may read it before they are
    /// stored.
    fn follows(&self, change: &C) -> bool {
        self.changes
            .last()
            .is_none_or(|last| last.table() == change.table() && change.key() > last.key())
    }

    fn store<S: ReplicaStorage<Change = C>>(&mut self, storage: &mut S) -> Result<(), S::Error> {
        if let Some(replica) = self.replica.take()
            && !self.changes.is_empty()
        {
            storage.store_absent(&replica, &self.changes)?;
        }
        self.changes.clear();
        Ok(())
    }
}

/// What a batch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Everything in it was applied before (a retry or a replay): nothing changed; the
    /// sender may count the answer as an acknowledgement through `through`.
    Duplicate { through: u64 },
    /// It starts after a change this region has not applied: nothing changed.
    Gap { expected_from: u64 },
    Applied {
        through: u64,
        /// Changes that applied.
        applied: u64,
        /// Tables of changes skipped because this region holds no replica of them.
        no_replica: BTreeSet<String>,
    },
}

/// A batch of `source`'s log: `changes[i]` is its change `from_seq + i` (`None`: left out by
/// the sender, which still counts in the numbering). Applies the changes not applied before,
/// and records the new position in the same transaction.
pub fn receive_batch<S: ReplicaStorage>(
    storage: &mut S,
    source: &str,
    from_seq: u64,
    changes: &[Option<S::Change>],
) -> Result<BatchOutcome, S::Error> {
    let to_seq = (from_seq + changes.len() as u64).saturating_sub(1);
    let applied = storage.applied_from(source)?;
    match accept(applied, from_seq, to_seq) {
        Acceptance::Duplicate => Ok(BatchOutcome::Duplicate { through: applied }),
        Acceptance::Gap { expected_from } => Ok(BatchOutcome::Gap { expected_from }),
        Acceptance::Apply { skip_through } => {
            let mut count = 0;
            let mut no_replica = BTreeSet::new();
            for (offset, change) in changes.iter().enumerate() {
                let Some(change) = change else { continue };
                if from_seq + offset as u64 <= skip_through {
                    continue;
                }
                match apply_change(storage, change, Path::Log)? {
                    Applied::Yes => count += 1,
                    Applied::NoReplica => {
                        no_replica.insert(change.table().to_string());
                    }
                    _ => {}
                }
            }
            storage.set_applied_from(source, to_seq)?;
            Ok(BatchOutcome::Applied {
                through: to_seq,
                applied: count,
                no_replica,
            })
        }
    }
}

/// What one repair request did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairOutcome {
    pub applied: u64,
    pub no_replica: BTreeSet<String>,
    /// On the last request of a repair: the position through which this region now holds
    /// `source`'s log (for the watermarks).
    pub through: Option<u64>,
    /// Tables whose backfill wait this repair ended.
    pub backfilled: Vec<u64>,
}

/// Records of an anti-entropy transfer (or backfill) from `source`. `complete_through` is set
/// on its last request: the sender's log head when the repair began, so this region holds
/// that log through it. `backfill_barrier`, on every request of a repair that backfills this
/// region (0 otherwise): the sender's pending backfill of this region, read before the repair
/// began; the sender had then received every write up to it. The repair is the backfill of
/// every replica joined here with a barrier at or below it, whoever asked for the join (a
/// retried `UpdateTable` may have come from another region, or an old definition been
/// replayed), and its last request ends their waits.
pub fn receive_repair<S: ReplicaStorage>(
    storage: &mut S,
    source: &str,
    changes: &[Option<S::Change>],
    complete_through: Option<u64>,
    backfill_barrier: u64,
) -> Result<RepairOutcome, S::Error> {
    let mut outcome = RepairOutcome::default();
    let backfills: Vec<u64> = if backfill_barrier != 0 && changes.iter().any(Option::is_some) {
        storage
            .awaited_backfills()?
            .into_iter()
            .filter(|a| a.barrier <= backfill_barrier)
            .map(|a| a.table_id)
            .collect()
    } else {
        Vec::new()
    };
    // A repair sends each table's records in key order: the items it brings to absent keys
    // (all of a backfill's) are stored in runs. Anything else stores the run first, so the
    // stored changes keep the request's order and the rules read what the run stored.
    let mut run = Run {
        replica: None,
        changes: Vec::new(),
    };
    for change in changes.iter().flatten() {
        if !run.follows(change) {
            run.store(storage)?;
        }
        match decide(storage, change, Path::Repair { backfills: &backfills })? {
            Decision::Store { replica, absent } => {
                if absent && !change.is_tombstone() {
                    run.replica = Some(replica);
                    run.changes.push(change);
                } else {
                    run.store(storage)?;
                    storage.store(&replica, change)?;
                }
                outcome.applied += 1;
            }
            Decision::Skip(Applied::NoReplica) => {
                outcome.no_replica.insert(change.table().to_string());
            }
            Decision::Skip(_) => {}
        }
    }
    run.store(storage)?;
    if let Some(complete) = complete_through {
        let applied = storage.applied_from(source)?.max(complete);
        storage.set_applied_from(source, applied)?;
        outcome.through = Some(applied);
        if backfill_barrier != 0 {
            outcome.backfilled = complete_backfills(storage, backfill_barrier)?;
        }
    }
    Ok(outcome)
}

/// A replica-definition request refused as not newer than the last one applied from its
/// source: replayed, or sent by an older build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    pub sequence: u64,
    pub last: u64,
}

/// Checks a replica-definition request's sequence before anything changes; the caller records
/// it with [`record_definition`] in the same transaction as the change it makes.
pub fn check_definition<S: ReplicaStorage>(
    storage: &mut S,
    source: &str,
    sequence: u64,
) -> Result<Result<(), Replayed>, S::Error> {
    let last = storage.definition_received(source)?;
    Ok(if sequence <= last {
        Err(Replayed { sequence, last })
    } else {
        Ok(())
    })
}

pub fn record_definition<S: ReplicaStorage>(storage: &mut S, source: &str, sequence: u64) -> Result<(), S::Error> {
    storage.set_definition_received(source, sequence)
}

/// Whether a table setting that follows a global table across its replicas (its TTL; each of
/// its global indexes, judged name by name: its creation or deletion; its billing mode and
/// write capacity, judged together), carried
/// by a peer's replica definition with the `incoming` version of the change that set it,
/// replaces the setting held here (set by the `held` version's change). A replica being created
/// takes the peer's setting as it is (a build before versioned settings sends its own one,
/// unversioned). An existing replica takes it only when it is versioned and newer by last
/// writer wins on `(hlc, origin)`, as items are: concurrent changes in two regions end the
/// same everywhere, a stale definition (read before a newer change committed) or one repeated
/// changes nothing, and an unversioned one, from a previous build that keeps each replica's
/// setting its own, never undoes a change made here.
pub fn setting_applies(incoming: Option<&Version>, held: Option<&Version>, creating: bool) -> bool {
    creating || incoming.is_some_and(|incoming| crate::merge::wins(incoming, held))
}

/// This region creates its replica of a table at `source`'s request: the join barrier is
/// everything it may have vouched for in its marks so far (`vouched`, see
/// [`crate::Watermarks::max_direct`]) or its clock now, whichever is higher; purging waits
/// until `source`'s backfill completes. Returns the barrier (the replica's `joined_below`).
pub fn join_replica<S: ReplicaStorage>(
    storage: &mut S,
    table_id: u64,
    source: &str,
    vouched: u64,
    clock: u64,
) -> Result<u64, S::Error> {
    let barrier = vouched.max(clock);
    storage.set_awaited_backfill(table_id, source, barrier)?;
    Ok(barrier)
}

/// A definition for a replica joined here and still awaiting its backfill arrived again from
/// `source` (an `UpdateTable` retried, perhaps by another region after the first requester
/// failed): the wait is now for `source`'s backfill, at the highest barrier recorded. Returns
/// that barrier, `None` when nothing is awaited.
pub fn hand_over_backfill<S: ReplicaStorage>(
    storage: &mut S,
    table_id: u64,
    source: &str,
) -> Result<Option<u64>, S::Error> {
    let waiting: Vec<Awaited> = storage
        .awaited_backfills()?
        .into_iter()
        .filter(|a| a.table_id == table_id)
        .collect();
    let Some(barrier) = waiting.iter().map(|a| a.barrier).max() else {
        return Ok(None);
    };
    for awaited in &waiting {
        storage.set_awaited_backfill(awaited.table_id, &awaited.source, 0)?;
    }
    storage.set_awaited_backfill(table_id, source, barrier)?;
    Ok(Some(barrier))
}

/// A backfill repair that began with the sender's pending barrier at `started_at` completed:
/// every replica joined here at or below that point is backfilled, whichever region the wait
/// names (the sender had received every write up to it and pushed its state). Returns the
/// tables whose wait ended.
pub fn complete_backfills<S: ReplicaStorage>(storage: &mut S, started_at: u64) -> Result<Vec<u64>, S::Error> {
    let done: Vec<Awaited> = storage
        .awaited_backfills()?
        .into_iter()
        .filter(|a| a.barrier <= started_at)
        .collect();
    for awaited in &done {
        storage.set_awaited_backfill(awaited.table_id, &awaited.source, 0)?;
    }
    Ok(done.into_iter().map(|a| a.table_id).collect())
}

/// Why a backfill cannot start yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackfillWait {
    /// This region has not received every write up to the peer's join barrier.
    Received { barrier: u64, received: u64 },
    /// This region's clock has not passed the barrier (its later writes must be newer).
    Clock { barrier: u64, clock: u64 },
}

/// Whether the sender may start backfilling a peer that joined at `barrier` (0: no backfill
/// pending). `received`: this region's received watermark; `clock`: its clock after it
/// observed the barrier. Its backfill, read now, must hold everything the peer skipped
/// before joining, and its own later writes must be newer than the barrier, or the peer
/// would skip them in the log while the backfill lacks them.
pub fn backfill_ready(barrier: u64, received: u64, clock: u64) -> Result<(), BackfillWait> {
    if received < barrier {
        return Err(BackfillWait::Received { barrier, received });
    }
    if clock < barrier {
        return Err(BackfillWait::Clock { barrier, clock });
    }
    Ok(())
}

/// Whether a finished backfill clears the sender's pending record: only if no newer join
/// raised it meanwhile (then another repair runs).
pub fn backfill_cleared(pending_now: u64, barrier_at_start: u64) -> bool {
    pending_now == barrier_at_start
}

/// A tombstone the purge index lists (possibly stale: a newer write replaced it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueTombstone {
    pub table_id: u64,
    pub key: Vec<u8>,
    pub hlc: u64,
}

/// What purging reads and writes, inside one transaction.
pub trait PurgeStorage: ReplicaStorage {
    /// Whether the table with this id still exists here.
    fn table_exists(&mut self, table_id: u64) -> Result<bool, Self::Error>;
    /// Up to `limit` tombstone index entries below `below`, oldest first.
    fn tombstones_below(&mut self, below: u64, limit: usize) -> Result<Vec<DueTombstone>, Self::Error>;
    /// Drops the index entry, and the record under its key if it is still that tombstone;
    /// returns whether a record was removed.
    fn remove_tombstone(&mut self, due: &DueTombstone) -> Result<bool, Self::Error>;
}

/// Purges tombstones below `below` (the watermark, see [`crate::watermark`]): at most `limit`
/// index entries. Nothing is purged while a replica joined here awaits its backfill (it may
/// still bring writes older than the watermark). Each table that lost a tombstone records
/// `below` as its purged watermark in the same transaction, so a restart cannot forget what
/// stands in for them. Returns `(entries visited, tombstones removed)`.
pub fn purge_tombstones<S: PurgeStorage>(
    storage: &mut S,
    below: u64,
    limit: usize,
) -> Result<(usize, usize), S::Error> {
    for awaited in storage.awaited_backfills()? {
        if storage.table_exists(awaited.table_id)? {
            return Ok((0, 0));
        }
    }
    let due = storage.tombstones_below(below, limit)?;
    let mut removed = 0;
    let mut tables = BTreeSet::new();
    for entry in &due {
        if storage.remove_tombstone(entry)? {
            removed += 1;
            tables.insert(entry.table_id);
        }
    }
    for table_id in tables {
        let current = storage.purged_below(table_id)?;
        storage.set_purged_below(table_id, current.max(below))?;
    }
    Ok((due.len(), removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    struct Put {
        table: &'static str,
        key: Vec<u8>,
        version: Version,
        value: Option<u32>,
    }

    impl Received for Put {
        fn table(&self) -> &str {
            self.table
        }
        fn key(&self) -> &[u8] {
            &self.key
        }
        fn version(&self) -> Version {
            self.version.clone()
        }
        fn is_tombstone(&self) -> bool {
            self.value.is_none()
        }
    }

    #[test]
    fn a_versioned_setting_applies_only_when_newer_and_a_new_replica_takes_any() {
        let at = |hlc: u64, origin: &str| Version::new(Hlc(hlc), origin);
        // A replica being created takes the peer's setting, versioned or not.
        assert!(setting_applies(None, None, true));
        assert!(setting_applies(Some(&at(5, "a")), None, true));
        // An unversioned definition (a previous build's) never changes an existing replica's.
        assert!(!setting_applies(None, None, false));
        assert!(!setting_applies(None, Some(&at(5, "a")), false));
        // Versioned: newer wins, the same or older changes nothing, ties broken by region.
        assert!(setting_applies(Some(&at(5, "a")), None, false));
        assert!(setting_applies(Some(&at(6, "a")), Some(&at(5, "b")), false));
        assert!(!setting_applies(Some(&at(5, "a")), Some(&at(5, "a")), false));
        assert!(!setting_applies(Some(&at(4, "b")), Some(&at(5, "a")), false));
        assert!(setting_applies(Some(&at(5, "b")), Some(&at(5, "a")), false));
        assert!(!setting_applies(Some(&at(5, "a")), Some(&at(5, "b")), false));
    }

    fn put(key: u8, hlc: u64, origin: &str, value: Option<u32>) -> Option<Put> {
        Some(Put {
            table: "t",
            key: vec![key],
            version: Version::new(Hlc(hlc), origin),
            value,
        })
    }

    /// One table `t` (id 1) in memory, with everything the rules keep.
    #[derive(Default)]
    struct Memory {
        joined_below: u64,
        items: BTreeMap<Vec<u8>, (Version, Option<u32>)>,
        settings: BTreeMap<String, u64>,
        awaited: Vec<Awaited>,
        horizon: u64,
        /// The keys of every `store_absent` call, in order.
        runs: Vec<Vec<u8>>,
    }

    impl ReplicaStorage for Memory {
        type Error = std::convert::Infallible;
        type Change = Put;
        fn replica(&mut self, table: &str) -> Result<Option<Replica>, Self::Error> {
            Ok((table == "t").then_some(Replica {
                id: 1,
                joined_below: self.joined_below,
            }))
        }
        fn stored_version(&mut self, _: &Replica, key: &[u8]) -> Result<Option<Version>, Self::Error> {
            Ok(self.items.get(key).map(|(v, _)| v.clone()))
        }
        fn purged_below(&mut self, id: u64) -> Result<u64, Self::Error> {
            Ok(self.settings.get(&format!("purged/{id}")).copied().unwrap_or(0))
        }
        fn set_purged_below(&mut self, id: u64, below: u64) -> Result<(), Self::Error> {
            self.settings.insert(format!("purged/{id}"), below);
            Ok(())
        }
        fn purge_horizon(&self) -> u64 {
            self.horizon
        }
        fn store(&mut self, _: &Replica, change: &Put) -> Result<(), Self::Error> {
            self.items
                .insert(change.key.clone(), (change.version.clone(), change.value));
            Ok(())
        }
        fn store_absent(&mut self, replica: &Replica, changes: &[&Put]) -> Result<(), Self::Error> {
            assert!(changes.windows(2).all(|w| w[0].key < w[1].key), "keys ascend");
            for change in changes {
                assert!(!self.items.contains_key(&change.key), "{:?} is absent", change.key);
                assert!(!change.is_tombstone(), "an item");
                self.store(replica, change)?;
            }
            self.runs.push(changes.iter().map(|c| c.key[0]).collect());
            Ok(())
        }
        fn applied_from(&mut self, source: &str) -> Result<u64, Self::Error> {
            Ok(self.settings.get(&format!("applied/{source}")).copied().unwrap_or(0))
        }
        fn set_applied_from(&mut self, source: &str, seq: u64) -> Result<(), Self::Error> {
            self.settings.insert(format!("applied/{source}"), seq);
            Ok(())
        }
        fn awaited_backfills(&mut self) -> Result<Vec<Awaited>, Self::Error> {
            Ok(self.awaited.clone())
        }
        fn set_awaited_backfill(&mut self, table_id: u64, source: &str, barrier: u64) -> Result<(), Self::Error> {
            self.awaited.retain(|a| !(a.table_id == table_id && a.source == source));
            if barrier != 0 {
                self.awaited.push(Awaited {
                    table_id,
                    source: source.to_string(),
                    barrier,
                });
            }
            Ok(())
        }
        fn definition_received(&mut self, source: &str) -> Result<u64, Self::Error> {
            Ok(self.settings.get(&format!("definition/{source}")).copied().unwrap_or(0))
        }
        fn set_definition_received(&mut self, source: &str, sequence: u64) -> Result<(), Self::Error> {
            self.settings.insert(format!("definition/{source}"), sequence);
            Ok(())
        }
    }

    impl PurgeStorage for Memory {
        fn table_exists(&mut self, table_id: u64) -> Result<bool, Self::Error> {
            Ok(table_id == 1)
        }
        fn tombstones_below(&mut self, below: u64, limit: usize) -> Result<Vec<DueTombstone>, Self::Error> {
            Ok(self
                .items
                .iter()
                .filter(|(_, (v, value))| value.is_none() && v.hlc.0 < below)
                .take(limit)
                .map(|(key, (v, _))| DueTombstone {
                    table_id: 1,
                    key: key.clone(),
                    hlc: v.hlc.0,
                })
                .collect())
        }
        fn remove_tombstone(&mut self, due: &DueTombstone) -> Result<bool, Self::Error> {
            Ok(self.items.remove(&due.key).is_some())
        }
    }

    fn ok<T>(result: Result<T, std::convert::Infallible>) -> T {
        match result {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    #[test]
    fn a_batch_applies_once_and_a_replay_changes_nothing() {
        let mut memory = Memory::default();
        let batch = [put(1, 10, "eu", Some(1)), None, put(2, 11, "eu", Some(2))];
        let first = ok(receive_batch(&mut memory, "eu", 1, &batch));
        assert!(matches!(
            first,
            BatchOutcome::Applied {
                through: 3,
                applied: 2,
                ..
            }
        ));
        memory.items.insert(vec![1], (Version::new(Hlc(20), "us"), Some(9)));
        assert_eq!(
            ok(receive_batch(&mut memory, "eu", 1, &batch)),
            BatchOutcome::Duplicate { through: 3 }
        );
        assert_eq!(memory.items[&vec![1]].1, Some(9), "the replay did not overwrite");
        assert_eq!(
            ok(receive_batch(&mut memory, "eu", 5, &batch)),
            BatchOutcome::Gap { expected_from: 4 }
        );
    }

    #[test]
    fn a_repair_stores_its_items_to_absent_keys_in_runs_and_ends_up_as_one_by_one() {
        let start = || {
            let mut memory = Memory::default();
            memory.items.insert(vec![5], (Version::new(Hlc(10), "us"), Some(50)));
            memory.items.insert(vec![9], (Version::new(Hlc(90), "us"), Some(90)));
            memory
        };
        let other = |key: u8, hlc: u64, value: Option<u32>| {
            Some(Put {
                table: "other",
                ..put(key, hlc, "eu", value).expect("change")
            })
        };
        let changes = [
            put(1, 20, "eu", Some(1)),
            put(2, 20, "eu", Some(2)),
            put(2, 30, "eu", Some(22)), // the same key again: stored after the run it ended
            put(3, 20, "eu", Some(3)),
            put(5, 20, "eu", Some(55)), // a present key, replaced: on its own
            put(6, 20, "eu", Some(6)),
            other(7, 20, Some(7)),  // no replica here: skipped, the run goes on
            put(7, 20, "eu", None), // a tombstone to an absent key: on its own
            put(8, 20, "eu", Some(8)),
            put(9, 20, "eu", Some(99)), // loses to the stored version
            put(10, 20, "eu", Some(10)),
            put(4, 20, "eu", Some(4)), // a smaller key: a new run
        ];
        let mut runs = start();
        let outcome = ok(receive_repair(&mut runs, "eu", &changes, None, 0));
        let mut one_by_one = start();
        let backfills: &[u64] = &[];
        let applied = changes
            .iter()
            .flatten()
            .filter(|c| ok(apply_change(&mut one_by_one, c, Path::Repair { backfills })) == Applied::Yes)
            .count();
        assert_eq!(outcome.applied, applied as u64);
        assert_eq!(outcome.no_replica, BTreeSet::from(["other".to_string()]));
        assert_eq!(runs.items, one_by_one.items);
        assert_eq!(
            runs.items[&vec![2]].1,
            Some(22),
            "the later version of a key given twice"
        );
        assert_eq!(runs.runs, vec![vec![1, 2], vec![3], vec![6], vec![8, 10], vec![4]]);
    }

    #[test]
    fn the_join_barrier_holds_back_log_changes_but_not_repairs() {
        let mut memory = Memory {
            joined_below: 50,
            ..Memory::default()
        };
        let old = put(1, 40, "eu", Some(1)).expect("change");
        assert_eq!(ok(apply_change(&mut memory, &old, Path::Log)), Applied::BeforeJoin);
        let other = Path::Repair { backfills: &[] };
        assert_eq!(
            ok(apply_change(&mut memory, &old, other)),
            Applied::BeforeJoin,
            "only the backfill brings an absent key's state at the barrier"
        );
        let backfill = Path::Repair { backfills: &[1] };
        assert_eq!(ok(apply_change(&mut memory, &old, backfill)), Applied::Yes);
        let older = put(1, 30, "us", Some(2)).expect("change");
        assert_eq!(
            ok(apply_change(&mut memory, &older, other)),
            Applied::Superseded,
            "a present key follows last writer wins"
        );
    }

    #[test]
    fn a_replayed_repair_does_not_resurrect_a_purged_delete_and_purging_waits_for_backfills() {
        let mut memory = Memory::default();
        ok(receive_repair(&mut memory, "eu", &[put(1, 10, "eu", Some(1))], None, 0));
        ok(receive_repair(&mut memory, "eu", &[put(1, 20, "eu", None)], None, 0));
        memory.awaited.push(Awaited {
            table_id: 1,
            source: "us".into(),
            barrier: 5,
        });
        assert_eq!(
            ok(purge_tombstones(&mut memory, 30, 100)),
            (0, 0),
            "a backfill is awaited"
        );
        let ended = ok(receive_repair(&mut memory, "eu", &[], Some(7), 5));
        assert_eq!(ended.backfilled, vec![1]);
        assert_eq!(ended.through, Some(7));
        assert_eq!(ok(purge_tombstones(&mut memory, 30, 100)), (1, 1));
        assert!(memory.items.is_empty());
        let replay = ok(receive_repair(&mut memory, "eu", &[put(1, 10, "eu", Some(1))], None, 0));
        assert_eq!(replay.applied, 0);
        assert!(memory.items.is_empty(), "the purged delete still holds");
        let newer = put(1, 31, "eu", Some(2)).expect("change");
        assert_eq!(ok(apply_change(&mut memory, &newer, Path::Log)), Applied::Yes);
    }

    #[test]
    fn definitions_are_refused_unless_newer_and_a_retry_hands_the_backfill_over() {
        let mut memory = Memory::default();
        assert_eq!(ok(check_definition(&mut memory, "eu", 3)), Ok(()));
        assert_eq!(ok(join_replica(&mut memory, 1, "eu", 70, 60)), 70);
        ok(record_definition(&mut memory, "eu", 3));
        assert_eq!(
            ok(check_definition(&mut memory, "eu", 3)),
            Err(Replayed { sequence: 3, last: 3 })
        );
        assert_eq!(ok(check_definition(&mut memory, "us", 1)), Ok(()), "per sender");
        assert_eq!(ok(hand_over_backfill(&mut memory, 1, "us")), Some(70));
        assert_eq!(memory.awaited.len(), 1);
        assert_eq!(memory.awaited[0].source, "us");
        assert_eq!(ok(complete_backfills(&mut memory, 69)), Vec::<u64>::new());
        assert_eq!(
            ok(complete_backfills(&mut memory, 70)),
            vec![1],
            "any backfill at the barrier"
        );
    }

    #[test]
    fn a_backfill_starts_once_received_and_clock_pass_the_barrier() {
        assert_eq!(backfill_ready(0, 0, 0), Ok(()));
        assert_eq!(
            backfill_ready(10, 9, 20),
            Err(BackfillWait::Received {
                barrier: 10,
                received: 9
            })
        );
        assert_eq!(
            backfill_ready(10, 10, 9),
            Err(BackfillWait::Clock { barrier: 10, clock: 9 })
        );
        assert_eq!(backfill_ready(10, 10, 10), Ok(()));
        assert!(backfill_cleared(10, 10));
        assert!(!backfill_cleared(12, 10), "a newer join needs another repair");
    }
}
