//! Deterministic simulation of global-table replication between three regions under random
//! partitions, message loss and reordering, crashes with restarts, clock skew and log trimming
//! (repaired by range-digest anti-entropy).
//!
//! Every run is driven by one seed (`SWITCHYARD_SEED` sets the first, printed). A failing run
//! prints its seed; replay it with `SWITCHYARD_SEED=<seed> SIM_RUNS=1 cargo test -p replication
//! --test it`. After the faults heal, the test asserts
//! that every replica holds identical contents and that every acknowledged write is present or
//! superseded by a newer write to the same key.
//!
//! Two tables: one with a replica in every region, one that the last region joins (with a
//! durable backfill) in the middle of the run; a peer gets only the changes of tables it holds.
//!
//! Regions also exchange watermark marks and purge tombstones below their watermark while the
//! faults run. A purge that came too early would let an older write resurrect the item; the
//! check compares every key with the newest write ever made to it, so it would see that.
//!
//! An attacker on the network between regions replays captured messages (batches, repairs,
//! marks) at random times, also after the receiver restarted; replies to replays go nowhere.
//! The same invariants hold: a replayed repair must not resurrect an item whose delete was
//! purged (`replication::applies` with the durable per-table purge watermark), and a region
//! that joined a table purges nothing until that table's backfill completed.

use std::collections::BTreeMap;

use common::rng::Rng;
use replication::digest::{Digest, Range, Walk};
use replication::receive::{
    self, Awaited, BatchOutcome, DueTombstone, PurgeStorage, Received, Replica, ReplicaStorage,
};
use replication::{Command, Hlc, HlcClock, Mark, Shipper, ShipperConfig, Version, Watermarks, stamp_after};

const REGIONS: [&str; 3] = ["ap-south-1", "eu-west-1", "us-east-1"];
/// Steps of simulated time (1 ms each) with faults, then steps allowed for convergence.
const FAULT_STEPS: u64 = 4_000;
const HEAL_STEPS_MAX: u64 = 60_000;
/// Log entries kept beyond the slowest peer at most; older ones are trimmed (forcing repair).
const LOG_ENTRIES_MAX: usize = 60;
const KEYS: u64 = 24;
/// Two tables: keys of table `t` are `t * TABLE_KEYS_STRIDE + k`. Table 0 has a replica in
/// every region; table 1 starts without one in the last region, which joins it (with a
/// backfill) at `JOIN_STEP` while writes go on, as `UpdateTable` with `ReplicaUpdates` does.
const TABLES: usize = 2;
const TABLE_KEYS_STRIDE: u64 = 1_000;
const JOIN_STEP: u64 = 2_000;
const LATE_REGION: usize = 2;
/// A region retries the definition request that makes the late region join this often.
const JOIN_RETRY_MS: u64 = 50;

fn table_of(key: u64) -> usize {
    (key / TABLE_KEYS_STRIDE) as usize
}

const TABLE_NAMES: [&str; TABLES] = ["everywhere", "joined"];
/// Each region sends its mark to its peers and purges tombstones this often.
const MARK_INTERVAL_MS: u64 = 25;
/// How far ahead of its wall clock a region stamps local writes at most (regions are skewed by
/// up to ±3 s, so the bound is exercised).
const CLOCK_OFFSET_MAX_MS: u64 = 1_000;
/// Messages the attacker keeps to replay (the most recent ones).
const CAPTURED_MAX: usize = 400;
/// Steps after the faults heal during which the attacker keeps replaying.
const REPLAY_AFTER_HEAL_STEPS: u64 = 3_000;
/// Per-thousand chance per step that a captured message is replayed.
const REPLAY_PER_THOUSAND: u64 = 40;

#[derive(Clone, Debug)]
struct Change {
    seq: u64,
    key: u64,
    /// `key` as the stored key the receiving rules see.
    key_bytes: [u8; 8],
    version: Version,
    value: Option<u64>,
}

impl Change {
    fn new(seq: u64, key: u64, version: Version, value: Option<u64>) -> Change {
        Change {
            seq,
            key,
            key_bytes: key.to_be_bytes(),
            version,
            value,
        }
    }
}

impl Received for Change {
    fn table(&self) -> &str {
        TABLE_NAMES[table_of(self.key)]
    }

    fn key(&self) -> &[u8] {
        &self.key_bytes
    }

    fn version(&self) -> Version {
        self.version.clone()
    }

    fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

fn key_of(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("simulated keys are 8 bytes"))
}

#[derive(Clone, Debug)]
enum Message {
    Batch {
        batch: u64,
        from_seq: u64,
        /// As the store sends them: `None` for a change left out (it keeps the numbering).
        changes: Vec<Option<Change>>,
    },
    Ack {
        batch: u64,
        through: u64,
    },
    Gap {
        batch: u64,
        expected_from: u64,
    },
    /// State transfer for anti-entropy: every key's version, as of the sender's log head.
    Repair {
        batch: u64,
        head: u64,
        state: Vec<Option<Change>>,
        /// The receiver's join barrier this repair backfills (0: anti-entropy only).
        backfill_barrier: u64,
    },
    Repaired {
        batch: u64,
        through: u64,
        /// The barrier of the backfill the repair was (0: anti-entropy only).
        backfill_barrier: u64,
    },
    Mark(Mark),
    /// A replica-definition request: the sender adds the receiver as a replica of table 1
    /// and will backfill it (`UpdateTable` with `ReplicaUpdates`, retried until answered).
    Definition {
        sequence: u64,
    },
    /// The answer: the receiver's join barrier when it awaits the sender's backfill.
    DefinitionDone {
        joined_below: Option<u64>,
    },
}

type Items = BTreeMap<u64, (Version, Option<u64>)>;

/// The stored key's 32-bit prefix (the store hashes partition keys the same way).
fn prefix(key: u64) -> u32 {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

fn range_digest(items: &Items, range: Range) -> Digest {
    let mut digest = Digest::default();
    for (key, (version, _)) in items.iter().filter(|(key, _)| range.contains(prefix(**key))) {
        let origin = version
            .origin
            .bytes()
            .fold(0u128, |h, b| h.wrapping_mul(31).wrapping_add(u128::from(b)));
        let mut x = (u128::from(*key) << 64 | u128::from(version.hlc.0)) ^ origin << 100;
        x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        digest.add(x ^ (x >> 61));
    }
    digest
}

/// Anti-entropy as the store runs it: walk the range digests of `local` against `remote` and
/// return this side's records in the ranges that differ.
fn differences(local: &Items, remote: &Items) -> Vec<Option<Change>> {
    let mut walk = Walk::new(2);
    let mut out = Vec::new();
    while !walk.is_done() {
        let ranges = walk.next_ranges(16);
        let ours: Vec<Digest> = ranges.iter().map(|r| range_digest(local, *r)).collect();
        let theirs: Vec<Digest> = ranges.iter().map(|r| range_digest(remote, *r)).collect();
        for range in walk.on_digests(&ranges, &ours, &theirs) {
            out.extend(
                local
                    .iter()
                    .filter(|(key, _)| range.contains(prefix(**key)))
                    .map(|(key, (version, value))| Some(Change::new(0, *key, version.clone(), *value))),
            );
        }
    }
    out
}

/// The items of the tables `region` holds a replica of.
fn holding(items: &Items, replicas: &[[bool; 3]; TABLES], region: usize) -> Items {
    items
        .iter()
        .filter(|(key, _)| replicas[table_of(**key)][region])
        .map(|(key, entry)| (*key, entry.clone()))
        .collect()
}

/// What survives a crash.
#[derive(Default)]
struct Durable {
    items: BTreeMap<u64, (Version, Option<u64>)>,
    log: Vec<Change>,
    head: u64,
    first_available: u64,
    applied_from: BTreeMap<String, u64>,
    acked: BTreeMap<usize, u64>,
    last_hlc: Hlc,
    /// Per peer, the join barrier of its backfill asked for and not finished (the store keeps
    /// this durable with the replica list, so a restart starts the backfill again).
    backfill_pending: BTreeMap<usize, u64>,
    /// Tables joined here waiting for their backfill. Nothing is purged while one waits.
    awaiting_backfill: Vec<Awaited>,
    /// Per table, the watermark below which its tombstones were purged here.
    purged_below: [u64; TABLES],
    /// Per source, the highest replica-definition sequence applied here.
    definition_received: BTreeMap<String, u64>,
    /// This region's counter of replica-definition requests sent.
    definition_sent: u64,
}

struct Region {
    name: &'static str,
    durable: Durable,
    up: bool,
    clock: HlcClock,
    skew_ms: i64,
    shippers: BTreeMap<usize, Shipper>,
    /// In memory only: lost on a crash, like the store's.
    watermarks: Watermarks,
    /// `received` as read at the previous mark (in memory only).
    received_before: u64,
    /// The purge point of the last round (in memory only, as the store's).
    purge_horizon: u64,
    purged: u64,
}

impl Region {
    fn physical(&self, now: u64) -> u64 {
        (now as i64 + self.skew_ms).max(0) as u64
    }

    fn restart(&mut self, me: usize) {
        self.up = true;
        self.clock = HlcClock::resume(self.durable.last_hlc);
        self.received_before = 0;
        self.purge_horizon = 0;
        self.watermarks = Watermarks::new((0..REGIONS.len()).filter(|peer| *peer != me).map(|peer| REGIONS[peer]));
        for (source, applied) in &self.durable.applied_from {
            self.watermarks.on_applied(source, *applied);
        }
        self.shippers = (0..REGIONS.len())
            .filter(|peer| *peer != me)
            .map(|peer| {
                let config = ShipperConfig {
                    batch_changes_max: 20,
                    request_timeout_ms: 200,
                    retry_initial_ms: 20,
                    retry_max_ms: 400,
                    repair_timeout_ms: 500,
                };
                let acked = self.durable.acked.get(&peer).copied().unwrap_or(0);
                let mut shipper = Shipper::new(config, acked, self.durable.head, self.durable.first_available);
                if self.durable.backfill_pending.contains_key(&peer) {
                    shipper.request_repair();
                }
                (peer, shipper)
            })
            .collect();
    }

    /// Stores a change and logs it for the peers (a local write, or a received change the
    /// rules of `replication::receive` let through).
    fn record(&mut self, key: u64, version: Version, value: Option<u64>) {
        self.durable.last_hlc = self.durable.last_hlc.max(version.hlc);
        self.durable.items.insert(key, (version.clone(), value));
        self.durable.head += 1;
        self.durable
            .log
            .push(Change::new(self.durable.head, key, version, value));
        for shipper in self.shippers.values_mut() {
            shipper.on_appended(self.durable.head);
        }
    }

    fn trim(&mut self) {
        let slowest = self
            .durable
            .acked
            .values()
            .copied()
            .min()
            .unwrap_or(0)
            .min(self.durable.head);
        let keep_from = (slowest + 1).max(self.durable.head.saturating_sub(LOG_ENTRIES_MAX as u64) + 1);
        if keep_from > self.durable.first_available {
            self.durable.log.retain(|c| c.seq >= keep_from);
            self.durable.first_available = keep_from;
            for shipper in self.shippers.values_mut() {
                shipper.on_trimmed(keep_from);
            }
        }
    }
}

/// A region's storage as `replication::receive` sees it: the store implements the same traits
/// over redb. Which tables the region holds and its join barriers are kept by the simulation
/// (the store keeps them in its table definitions).
struct Storage<'a> {
    region: &'a mut Region,
    holds: [bool; TABLES],
    joined_below: [u64; TABLES],
    physical: u64,
}

fn table_index(name: &str) -> usize {
    TABLE_NAMES.iter().position(|n| *n == name).expect("a simulated table")
}

impl ReplicaStorage for Storage<'_> {
    type Error = std::convert::Infallible;
    type Change = Change;

    fn replica(&mut self, table: &str) -> Result<Option<Replica>, Self::Error> {
        let table = table_index(table);
        Ok(self.holds[table].then_some(Replica {
            id: table as u64,
            joined_below: self.joined_below[table],
        }))
    }

    fn stored_version(&mut self, _replica: &Replica, key: &[u8]) -> Result<Option<Version>, Self::Error> {
        Ok(self.region.durable.items.get(&key_of(key)).map(|(v, _)| v.clone()))
    }

    fn purged_below(&mut self, table_id: u64) -> Result<u64, Self::Error> {
        Ok(self.region.durable.purged_below[table_id as usize])
    }

    fn set_purged_below(&mut self, table_id: u64, below: u64) -> Result<(), Self::Error> {
        self.region.durable.purged_below[table_id as usize] = below;
        Ok(())
    }

    fn purge_horizon(&self) -> u64 {
        self.region.purge_horizon
    }

    fn store(&mut self, _replica: &Replica, change: &Change) -> Result<(), Self::Error> {
        // As the store does: the clock observes an applied change (within the bound ahead).
        self.region
            .clock
            .observe(change.version.hlc, self.physical, CLOCK_OFFSET_MAX_MS);
        self.region.record(change.key, change.version.clone(), change.value);
        Ok(())
    }

    fn applied_from(&mut self, source: &str) -> Result<u64, Self::Error> {
        Ok(self.region.durable.applied_from.get(source).copied().unwrap_or(0))
    }

    fn set_applied_from(&mut self, source: &str, seq: u64) -> Result<(), Self::Error> {
        self.region.durable.applied_from.insert(source.to_string(), seq);
        Ok(())
    }

    fn awaited_backfills(&mut self) -> Result<Vec<Awaited>, Self::Error> {
        Ok(self.region.durable.awaiting_backfill.clone())
    }

    fn set_awaited_backfill(&mut self, table_id: u64, source: &str, barrier: u64) -> Result<(), Self::Error> {
        let waits = &mut self.region.durable.awaiting_backfill;
        waits.retain(|a| !(a.table_id == table_id && a.source == source));
        if barrier != 0 {
            waits.push(Awaited {
                table_id,
                source: source.to_string(),
                barrier,
            });
        }
        Ok(())
    }

    fn definition_received(&mut self, source: &str) -> Result<u64, Self::Error> {
        Ok(self
            .region
            .durable
            .definition_received
            .get(source)
            .copied()
            .unwrap_or(0))
    }

    fn set_definition_received(&mut self, source: &str, sequence: u64) -> Result<(), Self::Error> {
        self.region
            .durable
            .definition_received
            .insert(source.to_string(), sequence);
        Ok(())
    }
}

impl PurgeStorage for Storage<'_> {
    fn table_exists(&mut self, table_id: u64) -> Result<bool, Self::Error> {
        Ok(self.holds[table_id as usize])
    }

    fn tombstones_below(&mut self, below: u64, limit: usize) -> Result<Vec<DueTombstone>, Self::Error> {
        Ok(self
            .region
            .durable
            .items
            .iter()
            .filter(|(_, (version, value))| value.is_none() && version.hlc.0 < below)
            .take(limit)
            .map(|(key, (version, _))| DueTombstone {
                table_id: table_of(*key) as u64,
                key: key.to_be_bytes().to_vec(),
                hlc: version.hlc.0,
            })
            .collect())
    }

    fn remove_tombstone(&mut self, due: &DueTombstone) -> Result<bool, Self::Error> {
        let key = key_of(&due.key);
        let items = &mut self.region.durable.items;
        let still = items
            .get(&key)
            .is_some_and(|(version, value)| value.is_none() && version.hlc.0 == due.hlc);
        if still {
            items.remove(&key);
            self.region.purged += 1;
        }
        Ok(still)
    }
}

/// What the receiving rules return when their storage cannot fail.
fn infallible<T>(result: Result<T, std::convert::Infallible>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

struct InFlight {
    deliver_at: u64,
    from: usize,
    to: usize,
    message: Message,
    /// Sent again by the attacker: the receiver's reply goes to the attacker, not the sender.
    replayed: bool,
}

struct Simulation {
    rng: Rng,
    now: u64,
    regions: Vec<Region>,
    network: Vec<InFlight>,
    /// Links cut in both directions.
    partitioned: Vec<(usize, usize)>,
    acknowledged: Vec<(u64, Version, Option<u64>)>,
    /// `replicas[table][region]`: whether the region holds a replica of the table.
    replicas: [[bool; 3]; TABLES],
    /// `joined_below[table][region]`: the region's join barrier for the table (durable in the
    /// store's table definition); logged changes at or below it are not applied.
    joined_below: [[u64; 3]; TABLES],
    /// Messages seen on the wire, for the attacker to replay: `(from, to, message)`.
    captured: Vec<(usize, usize, Message)>,
    replays: u64,
    /// A region holding table 1 has had an answer to its definition request for the late
    /// region (the client's `UpdateTable` succeeded).
    join_answered: bool,
    /// Definition requests refused as replayed (a replay of a captured one, or a retry that
    /// arrived after a newer one).
    refused_definitions: u64,
}

impl Simulation {
    /// Region `index`'s storage for the receiving rules.
    fn storage(&mut self, index: usize) -> Storage<'_> {
        let holds = self.replicas.map(|r| r[index]);
        let joined_below = self.joined_below.map(|b| b[index]);
        let region = &mut self.regions[index];
        let physical = region.physical(self.now);
        Storage {
            region,
            holds,
            joined_below,
            physical,
        }
    }

    fn new(seed: u64) -> Simulation {
        let mut rng = Rng::new(seed);
        let regions = REGIONS
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let mut region = Region {
                    name,
                    durable: Durable {
                        first_available: 1,
                        ..Durable::default()
                    },
                    up: true,
                    clock: HlcClock::new(),
                    skew_ms: rng.below(6_000) as i64 - 3_000,
                    shippers: BTreeMap::new(),
                    watermarks: Watermarks::default(),
                    received_before: 0,
                    purge_horizon: 0,
                    purged: 0,
                };
                region.restart(index);
                region
            })
            .collect();
        Simulation {
            rng,
            now: 1_000_000,
            regions,
            network: Vec::new(),
            partitioned: Vec::new(),
            acknowledged: Vec::new(),
            replicas: [[true; 3], [true, true, false]],
            joined_below: [[0; 3]; TABLES],
            captured: Vec::new(),
            replays: 0,
            join_answered: false,
            refused_definitions: 0,
        }
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        !self
            .partitioned
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    fn send(&mut self, from: usize, to: usize, message: Message, lossy: bool) {
        if lossy && self.rng.chance_per_mille(20) {
            return;
        }
        let delay = 1 + self.rng.below(30);
        if !matches!(
            message,
            Message::Ack { .. } | Message::Gap { .. } | Message::Repaired { .. } | Message::DefinitionDone { .. }
        ) {
            if self.captured.len() >= CAPTURED_MAX {
                let index = self.rng.below(CAPTURED_MAX as u64) as usize;
                self.captured.swap_remove(index);
            }
            self.captured.push((from, to, message.clone()));
        }
        self.network.push(InFlight {
            deliver_at: self.now + delay,
            from,
            to,
            message,
            replayed: false,
        });
    }

    /// The attacker sends a captured message again, to its original receiver.
    fn replay(&mut self) {
        if self.captured.is_empty() || !self.rng.chance_per_mille(REPLAY_PER_THOUSAND) {
            return;
        }
        let index = self.rng.below(self.captured.len() as u64) as usize;
        let (from, to, message) = self.captured[index].clone();
        self.replays += 1;
        self.network.push(InFlight {
            deliver_at: self.now + 1 + self.rng.below(30),
            from,
            to,
            message,
            replayed: true,
        });
    }

    fn client_write(&mut self, region: usize) {
        let table = if self.replicas[1][region] && self.rng.chance_per_mille(500) {
            1
        } else {
            0
        };
        let key = table * TABLE_KEYS_STRIDE + self.rng.below(KEYS);
        let value = if self.rng.chance_per_mille(150) {
            None
        } else {
            Some(self.rng.next_u64() % 1000)
        };
        let r = &mut self.regions[region];
        let physical = r.physical(self.now);
        // As the store does: the clock never follows a peer more than the bound ahead, and a
        // write replacing an item stamped further ahead still orders after it.
        // And, as the store does, a write to a table this region joined orders after its join
        // barrier (which counts writes it vouched for without holding them).
        let joined_below = Some(Hlc(self.joined_below[table as usize][region])).filter(|b| b.0 != 0);
        let existing = r.durable.items.get(&key).map(|(v, _)| v.hlc).max(joined_below);
        let hlc = stamp_after(r.clock.now(physical), existing);
        let version = Version::new(hlc, r.name);
        assert!(
            replication::wins(&version, r.durable.items.get(&key).map(|(v, _)| v)),
            "a local write always wins: its HLC is the newest seen"
        );
        r.record(key, version.clone(), value);
        self.acknowledged.push((key, version, value));
    }

    fn deliver(&mut self, lossy: bool) {
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|m| m.deliver_at <= now);
        self.network = rest;
        for InFlight {
            from,
            to,
            message,
            replayed,
            ..
        } in due
        {
            // The attacker sits on the links: a partition does not stop its replays.
            if !self.regions[to].up || (!replayed && !self.linked(from, to)) {
                continue;
            }
            self.handle(from, to, message, lossy, replayed);
        }
    }

    /// A reply to `from`, unless the message was a replay (its reply goes to the attacker).
    fn reply(&mut self, from: usize, to: usize, message: Message, lossy: bool, replayed: bool) {
        if !replayed {
            self.send(from, to, message, lossy);
        }
    }

    fn handle(&mut self, from: usize, to: usize, message: Message, lossy: bool, replayed: bool) {
        match message {
            Message::Batch {
                batch,
                from_seq,
                changes,
            } => {
                // The store's rules: sequence, join barrier, last writer wins, purge watermark.
                let outcome = infallible(receive::receive_batch(
                    &mut self.storage(to),
                    REGIONS[from],
                    from_seq,
                    &changes,
                ));
                let reply = match outcome {
                    BatchOutcome::Gap { expected_from } => Message::Gap { batch, expected_from },
                    BatchOutcome::Duplicate { through } | BatchOutcome::Applied { through, .. } => {
                        self.regions[to].watermarks.on_applied(REGIONS[from], through);
                        Message::Ack { batch, through }
                    }
                };
                self.reply(to, from, reply, lossy, replayed);
            }
            Message::Ack { batch, through } => {
                let region = &mut self.regions[to];
                if let Some(shipper) = region.shippers.get_mut(&from) {
                    shipper.on_acked(batch, through);
                    region.durable.acked.insert(from, shipper.acked());
                }
            }
            Message::Gap { batch, expected_from } => {
                if let Some(shipper) = self.regions[to].shippers.get_mut(&from) {
                    shipper.on_gap(batch, expected_from);
                }
            }
            Message::Repair {
                batch,
                head,
                state,
                backfill_barrier,
            } => {
                // The repair covers the sender's log up to `head`: later batches continue from there.
                let outcome = infallible(receive::receive_repair(
                    &mut self.storage(to),
                    REGIONS[from],
                    &state,
                    Some(head),
                    backfill_barrier,
                ));
                if let Some(through) = outcome.through {
                    self.regions[to].watermarks.on_applied(REGIONS[from], through);
                }
                let repaired = Message::Repaired {
                    batch,
                    through: head,
                    backfill_barrier,
                };
                self.reply(to, from, repaired, lossy, replayed);
            }
            Message::Repaired {
                batch,
                through,
                backfill_barrier,
            } => {
                let region = &mut self.regions[to];
                if let Some(shipper) = region.shippers.get_mut(&from) {
                    shipper.on_repaired(batch, through);
                    region.durable.acked.insert(from, shipper.acked());
                    // As the store does: a repair ends only the backfill whose barrier it read
                    // before it began; one asked for meanwhile needs another repair.
                    if let Some(&pending) = region.durable.backfill_pending.get(&from)
                        && backfill_barrier != 0
                        && receive::backfill_cleared(pending, backfill_barrier)
                    {
                        region.durable.backfill_pending.remove(&from);
                    }
                    if region.durable.backfill_pending.contains_key(&from) {
                        shipper.request_repair();
                    }
                }
            }
            Message::Mark(mark) => self.regions[to].watermarks.on_mark(REGIONS[from], mark),
            Message::Definition { sequence } => {
                // The store's rules: a sequence not newer than the last applied from the sender
                // is refused (durable: also after restarts); the first definition creates the
                // replica with its join barrier, a retried one hands the backfill wait over.
                let physical = self.regions[to].physical(self.now);
                let vouched = self.regions[to].watermarks.max_direct();
                let holds = self.replicas[1][to];
                let mut storage = self.storage(to);
                if infallible(receive::check_definition(&mut storage, REGIONS[from], sequence)).is_err() {
                    self.refused_definitions += 1;
                    return;
                }
                let joined_below = if holds {
                    infallible(receive::hand_over_backfill(&mut storage, 1, REGIONS[from]))
                } else {
                    let clock = storage.region.clock.now(physical).0;
                    storage.region.durable.last_hlc = storage.region.clock.last();
                    Some(infallible(receive::join_replica(
                        &mut storage,
                        1,
                        REGIONS[from],
                        vouched,
                        clock,
                    )))
                };
                infallible(receive::record_definition(&mut storage, REGIONS[from], sequence));
                if !holds {
                    self.joined_below[1][to] = joined_below.expect("a new replica has a barrier");
                    self.replicas[1][to] = true;
                }
                self.reply(to, from, Message::DefinitionDone { joined_below }, lossy, replayed);
            }
            Message::DefinitionDone { joined_below } => {
                self.join_answered = true;
                if let Some(barrier) = joined_below {
                    let region = &mut self.regions[to];
                    let pending = region.durable.backfill_pending.entry(from).or_insert(0);
                    *pending = (*pending).max(barrier);
                    if let Some(shipper) = region.shippers.get_mut(&from) {
                        shipper.request_repair();
                    }
                }
            } // Replies are never captured for replay.
        }
    }

    fn ship(&mut self, lossy: bool) {
        for index in 0..self.regions.len() {
            if !self.regions[index].up {
                continue;
            }
            let now = self.now;
            let peers: Vec<usize> = self.regions[index].shippers.keys().copied().collect();
            for peer in peers {
                let mut command = self.regions[index].shippers.get_mut(&peer).and_then(|s| s.poll(now));
                // As the store does, the pending backfill's barrier is read before the tables.
                let barrier = self.regions[index].durable.backfill_pending.get(&peer).copied();
                // A backfill waits until this region has received everything up to the joining
                // region's barrier and its own clock has passed it (the store's rule).
                if let Some(Command::Repair { batch }) = command {
                    let region = &mut self.regions[index];
                    let physical = region.physical(now);
                    if let Some(b) = barrier {
                        region.clock.observe(Hlc(b), physical, CLOCK_OFFSET_MAX_MS);
                        region.durable.last_hlc = region.clock.last();
                        let received = region.watermarks.received(u64::MAX);
                        if receive::backfill_ready(b, received, region.clock.last().0).is_err() {
                            if let Some(shipper) = region.shippers.get_mut(&peer) {
                                shipper.on_failed(batch, now);
                            }
                            command = None;
                        }
                    }
                }
                let region = &self.regions[index];
                let message = match command {
                    None => continue,
                    Some(Command::Send {
                        batch,
                        from_seq,
                        changes_max,
                    }) => {
                        let changes: Vec<Change> = region
                            .durable
                            .log
                            .iter()
                            .filter(|c| c.seq >= from_seq)
                            .take(changes_max)
                            .cloned()
                            .collect();
                        assert!(
                            changes.first().is_none_or(|c| c.seq == from_seq),
                            "the shipper never asks for trimmed changes"
                        );
                        // As the store does: a change that originated at the peer, or of a
                        // table the peer holds no replica of, is left out.
                        let changes = changes
                            .into_iter()
                            .map(|c| {
                                (c.version.origin != REGIONS[peer] && self.replicas[table_of(c.key)][peer]).then_some(c)
                            })
                            .collect();
                        Message::Batch {
                            batch,
                            from_seq,
                            changes,
                        }
                    }
                    Some(Command::Repair { batch }) => Message::Repair {
                        batch,
                        head: region.durable.head,
                        // Digests are compared now (the peer's answers are modelled as
                        // instant); the records of the differing ranges travel with delay.
                        state: differences(
                            &holding(&region.durable.items, &self.replicas, peer),
                            &self.regions[peer].durable.items,
                        ),
                        backfill_barrier: barrier.unwrap_or(0),
                    },
                };
                self.send(index, peer, message, lossy);
            }
            self.regions[index].trim();
        }
    }

    /// Every `MARK_INTERVAL_MS`, each region sends its mark and purges tombstones below its
    /// watermark, as the store's mark loop does.
    fn mark_and_purge(&mut self, lossy: bool) {
        for index in 0..self.regions.len() {
            if !self.regions[index].up || !(self.now + index as u64 * 7).is_multiple_of(MARK_INTERVAL_MS) {
                continue;
            }
            let region = &mut self.regions[index];
            let physical = region.physical(self.now);
            let clock = region.clock.now(physical).0;
            region.durable.last_hlc = region.clock.last();
            // As the store does, `received` is read before the clock and head are captured; here
            // a whole round earlier, so the simulation also checks that a stale value is safe.
            let mark = Mark {
                clock,
                received: region.received_before.min(clock),
                head: region.durable.head,
            };
            region.received_before = region.watermarks.received(u64::MAX);
            let below = region.watermarks.purge_below(clock);
            // As the store does: nothing is purged while a joined table awaits its backfill;
            // the purge itself is the store's (`replication::receive::purge_tombstones`).
            if region.durable.awaiting_backfill.is_empty() {
                region.purge_horizon = region.purge_horizon.max(below);
                infallible(receive::purge_tombstones(&mut self.storage(index), below, usize::MAX));
            }
            for peer in 0..REGIONS.len() {
                if peer != index {
                    self.send(index, peer, Message::Mark(mark), lossy);
                }
            }
        }
    }

    /// A region holding table 1 asks the late region to join it, as `UpdateTable` does, until
    /// one request is answered; each request carries the sender's next durable sequence.
    fn join_late_region(&mut self) {
        if self.join_answered || !(self.now).is_multiple_of(JOIN_RETRY_MS) {
            return;
        }
        let Some(source) = (0..REGIONS.len()).find(|r| *r != LATE_REGION && self.regions[*r].up) else {
            return;
        };
        let region = &mut self.regions[source];
        region.durable.definition_sent += 1;
        let sequence = region.durable.definition_sent;
        self.send(source, LATE_REGION, Message::Definition { sequence }, true);
    }

    fn inject_faults(&mut self) {
        if self.rng.chance_per_mille(3) {
            let a = self.rng.below(3) as usize;
            let b = (a + 1 + self.rng.below(2) as usize) % 3;
            self.partitioned.push((a, b));
        }
        if self.rng.chance_per_mille(4) && !self.partitioned.is_empty() {
            let index = self.rng.below(self.partitioned.len() as u64) as usize;
            self.partitioned.swap_remove(index);
        }
        if self.rng.chance_per_mille(2) {
            let victim = self.rng.below(3) as usize;
            if self.regions[victim].up {
                self.regions[victim].up = false;
                self.regions[victim].shippers.clear();
            }
        }
        for index in 0..self.regions.len() {
            if !self.regions[index].up && self.rng.chance_per_mille(5) {
                self.regions[index].restart(index);
            }
        }
    }

    fn quiescent(&self) -> bool {
        self.join_answered
            && self.network.is_empty()
            && self
                .regions
                .iter()
                .all(|r| r.up && r.shippers.values().all(|s| s.pending() == 0 && !s.needs_repair()))
    }

    fn run(&mut self) {
        for _ in 0..FAULT_STEPS {
            self.now += 1;
            self.inject_faults();
            for region in 0..self.regions.len() {
                if self.regions[region].up && self.rng.chance_per_mille(60) {
                    self.client_write(region);
                }
            }
            self.replay();
            self.deliver(true);
            self.ship(true);
            self.mark_and_purge(true);
            if self.now >= 1_000_000 + JOIN_STEP {
                self.join_late_region();
            }
        }
        self.partitioned.clear();
        for index in 0..self.regions.len() {
            if !self.regions[index].up {
                self.regions[index].restart(index);
            }
        }
        for step in 0..HEAL_STEPS_MAX {
            self.now += 1;
            self.join_late_region();
            // Replays go on for a while after the writes stopped: a resurrection then stays
            // (no newer write would hide it) and the final check sees it.
            if step < REPLAY_AFTER_HEAL_STEPS {
                self.replay();
            }
            self.deliver(false);
            self.ship(false);
            self.mark_and_purge(false);
            if step >= REPLAY_AFTER_HEAL_STEPS && self.quiescent() {
                return;
            }
        }
        let stuck: Vec<String> = self
            .regions
            .iter()
            .flat_map(|r| {
                r.shippers.iter().map(move |(peer, s)| {
                    format!(
                        "{}->{}: pending {} repair {} failures {}",
                        r.name,
                        REGIONS[*peer],
                        s.pending(),
                        s.needs_repair(),
                        s.consecutive_failures()
                    )
                })
            })
            .collect();
        panic!(
            "no convergence within {HEAL_STEPS_MAX} ms after healing; {} messages in flight; {stuck:?}",
            self.network.len()
        );
    }

    fn check(&self) {
        let live = |region: &Region| -> BTreeMap<u64, (Version, Option<u64>)> {
            region
                .durable
                .items
                .iter()
                .filter(|(_, (_, value))| value.is_some())
                .map(|(key, entry)| (*key, entry.clone()))
                .collect()
        };
        let reference = live(&self.regions[0]);
        for region in &self.regions[1..] {
            let theirs = live(region);
            let differing: Vec<String> = reference
                .keys()
                .chain(theirs.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|key| reference.get(key) != theirs.get(key))
                .map(|key| {
                    format!(
                        "key {key}: {} {:?} / {} {:?} (tombstone or nothing there: {:?})",
                        self.regions[0].name,
                        reference.get(key),
                        region.name,
                        theirs.get(key),
                        region.durable.items.get(key)
                    )
                })
                .collect();
            assert!(
                differing.is_empty(),
                "{} differs from {}: {differing:#?}",
                region.name,
                self.regions[0].name
            );
        }
        // A backfill wait that never ends would stop purging in that region for good.
        for region in &self.regions {
            assert!(
                region.durable.awaiting_backfill.is_empty(),
                "{} still awaits backfills {:?} after convergence",
                region.name,
                region.durable.awaiting_backfill
            );
        }
        // The newest write ever made to each key is what every replica must show: its value,
        // or for a delete its tombstone or nothing (purged). Anything else is a lost write or
        // an item a too-early purge resurrected.
        let mut newest: BTreeMap<u64, (&Version, &Option<u64>)> = BTreeMap::new();
        for (key, version, value) in &self.acknowledged {
            let entry = newest.entry(*key).or_insert((version, value));
            if version > entry.0 {
                *entry = (version, value);
            }
        }
        for region in &self.regions {
            for (key, (version, value)) in &newest {
                let held = region.durable.items.get(key);
                match value {
                    Some(_) => assert_eq!(
                        held,
                        Some(&((*version).clone(), **value)),
                        "{}: the newest write to key {key} ({version:?}) is not what it holds",
                        region.name
                    ),
                    None => assert!(
                        held.is_none_or(|(v, value)| v == *version && value.is_none()),
                        "{}: key {key} was deleted last ({version:?}) but holds {held:?}: a lost delete or a resurrection",
                        region.name
                    ),
                }
            }
        }
    }

    fn purged(&self) -> u64 {
        self.regions.iter().map(|r| r.purged).sum()
    }
}

fn run_seed(seed: u64) -> u64 {
    let outcome = std::panic::catch_unwind(|| {
        let mut simulation = Simulation::new(seed);
        simulation.run();
        simulation.check();
        (simulation.acknowledged.len(), simulation.purged(), simulation.replays)
    });
    match outcome {
        Ok((writes, purged, replays)) => {
            assert!(writes > 100, "seed {seed}: the workload made only {writes} writes");
            assert!(
                replays > 10,
                "seed {seed}: the attacker replayed only {replays} messages"
            );
            purged
        }
        Err(panic) => {
            eprintln!(
                "simulation failed with seed {seed}; replay with SWITCHYARD_SEED={seed} SIM_RUNS=1 cargo test -p replication --test it"
            );
            std::panic::resume_unwind(panic);
        }
    }
}

/// `SWITCHYARD_SEED` (the workspace's one seed variable) sets the first seed; `SIM_RUNS` how
/// many consecutive seeds run (1 replays a failed one).
#[test]
fn three_regions_converge_under_partitions_crashes_and_skew() {
    let base = common::rng::seed_from_env_or("three_regions_converge_under_partitions_crashes_and_skew", 0x5eed);
    let runs: u64 = std::env::var("SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    eprintln!("simulating {runs} seeds from SWITCHYARD_SEED={base} (SIM_RUNS to change the count)");
    let purged: u64 = (base..base + runs).map(run_seed).sum();
    eprintln!("{purged} tombstones purged in all");
    if runs >= 10 {
        assert!(purged > 0, "the watermark never advanced: no tombstone was purged");
    }
}
