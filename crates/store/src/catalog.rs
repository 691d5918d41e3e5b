//! Table definitions: what CreateTable accepts, what DescribeTable shows, what storage needs.
//!
//! A `TableMeta` is immutable once published; schema operations build a new one and the engine
//! swaps it in after the change is durable.

use std::collections::{BTreeMap, BTreeSet};

use dynamo_protocol::{ApiError, AttributeValue, Item};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::keys::KeyHash;

/// DynamoDB's limits on table definitions.
pub const TABLE_NAME_LENGTH_MIN: usize = 3;
pub const TABLE_NAME_LENGTH_MAX: usize = 255;
pub const GLOBAL_INDEXES_MAX: usize = 20;
pub const LOCAL_INDEXES_MAX: usize = 5;
pub const PROJECTED_ATTRIBUTES_MAX: usize = 100;
/// Length of one name in an index's NonKeyAttributes (the API's NonKeyAttributeName).
pub const NON_KEY_ATTRIBUTE_NAME_BYTES_MAX: usize = 255;
pub const PARTITION_KEY_BYTES_MAX: usize = 2048;
pub const SORT_KEY_BYTES_MAX: usize = 1024;
/// Partition (HASH) attributes of a global index's multi-attribute key; a table's key and a
/// local index's have one.
pub const INDEX_PARTITION_ATTRIBUTES_MAX: usize = 4;
/// Sort (RANGE) attributes of a global index's multi-attribute key; a table's key and a local
/// index's have at most one.
pub const INDEX_SORT_ATTRIBUTES_MAX: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAttribute {
    pub name: String,
    pub value_type: KeyType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    S,
    N,
    B,
}

impl KeyType {
    pub fn descriptor(self) -> &'static str {
        match self {
            KeyType::S => "S",
            KeyType::N => "N",
            KeyType::B => "B",
        }
    }

    pub fn matches(self, value: &AttributeValue) -> bool {
        matches!(
            (self, value),
            (KeyType::S, AttributeValue::S(_))
                | (KeyType::N, AttributeValue::N(_))
                | (KeyType::B, AttributeValue::B(_))
        )
    }
}

/// A key schema: a table's or a local index's is one partition attribute and at most one sort
/// attribute; a global index's may have up to [`INDEX_PARTITION_ATTRIBUTES_MAX`] partition
/// attributes and up to [`INDEX_SORT_ATTRIBUTES_MAX`] sort attributes (DynamoDB's
/// multi-attribute keys). `partition` and `sort` are the first of each; `extra_partition` and
/// `extra_sort` the others, in KeySchema order (`extra_sort` is empty when `sort` is `None`).
/// Persisted in the catalog: the extra fields are left out when empty, so definitions without
/// multi-attribute keys keep the form they had before these existed, and that form still reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySchema {
    pub partition: KeyAttribute,
    pub sort: Option<KeyAttribute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_partition: Vec<KeyAttribute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_sort: Vec<KeyAttribute>,
}

impl KeySchema {
    /// One partition attribute and an optional sort attribute (every table's key).
    pub fn simple(partition: KeyAttribute, sort: Option<KeyAttribute>) -> KeySchema {
        KeySchema {
            partition,
            sort,
            extra_partition: Vec::new(),
            extra_sort: Vec::new(),
        }
    }

    /// The partition (HASH) attributes, in KeySchema order.
    pub fn partition_attributes(&self) -> impl Iterator<Item = &KeyAttribute> {
        std::iter::once(&self.partition).chain(&self.extra_partition)
    }

    /// The sort (RANGE) attributes, in KeySchema order.
    pub fn sort_attributes(&self) -> impl Iterator<Item = &KeyAttribute> {
        self.sort.iter().chain(&self.extra_sort)
    }

    /// More than one partition or sort attribute (only a global index's key can be).
    pub fn is_multi_attribute(&self) -> bool {
        !self.extra_partition.is_empty() || !self.extra_sort.is_empty()
    }

    pub fn attributes(&self) -> impl Iterator<Item = &KeyAttribute> {
        self.partition_attributes().chain(self.sort_attributes())
    }

    pub fn is_key_attribute(&self, name: &str) -> bool {
        self.attributes().any(|a| a.name == name)
    }

    /// The key attributes of `item` as an item, if it has all of them.
    pub fn extract(&self, item: &Item) -> Option<Item> {
        self.attributes()
            .map(|attribute| item.get(&attribute.name).map(|v| (attribute.name.clone(), v.clone())))
            .collect()
    }

    /// The KeySchema as DynamoDB shows it: the HASH elements, then the RANGE elements.
    pub fn to_json(&self) -> Value {
        let hash = self
            .partition_attributes()
            .map(|a| json!({"AttributeName": a.name, "KeyType": "HASH"}));
        let range = self
            .sort_attributes()
            .map(|a| json!({"AttributeName": a.name, "KeyType": "RANGE"}));
        Value::Array(hash.chain(range).collect())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Projection {
    All,
    KeysOnly,
    Include(Vec<String>),
}

impl Projection {
    pub fn to_json(&self) -> Value {
        match self {
            Projection::All => json!({"ProjectionType": "ALL"}),
            Projection::KeysOnly => json!({"ProjectionType": "KEYS_ONLY"}),
            Projection::Include(names) => {
                json!({"ProjectionType": "INCLUDE", "NonKeyAttributes": names})
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexKind {
    Global,
    Local,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    pub name: String,
    pub kind: IndexKind,
    pub key: KeySchema,
    pub projection: Projection,
    pub throughput: Option<Throughput>,
    /// True while existing items are being copied into a GSI created by UpdateTable.
    pub backfilling: bool,
    /// A global index's: the change that created it (in `TableMeta::indexes`) or deleted it
    /// (in `TableMeta::deleted_indexes`), `(HLC, region)` of its UpdateTable. A global table's
    /// indexes follow it across the replicas: a replica takes a definition's index change only
    /// when it is newer (`TableMeta::align_indexes`). Absent in indexes made before versions,
    /// made with the table (CreateTable) and in what a previous build sends (left out of the
    /// stored JSON then, so catalog entries keep their form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<SettingVersion>,
    /// When a global index's provisioned throughput last changed here (DescribeTable's dates).
    #[serde(default, skip_serializing_if = "ThroughputChanges::is_empty")]
    pub throughput_changes: ThroughputChanges,
}

impl IndexMeta {
    /// The same index for its entries: kind, key schema and projection (throughput, which stays
    /// each replica's own, and versions aside).
    pub fn same_definition(&self, other: &IndexMeta) -> bool {
        self.kind == other.kind && self.key == other.key && self.projection == other.projection
    }

    /// The attributes an index entry carries: index keys, table keys, projected attributes.
    pub fn project(&self, table_key: &KeySchema, item: &Item) -> Item {
        match &self.projection {
            Projection::All => item.clone(),
            Projection::KeysOnly | Projection::Include(_) => item
                .iter()
                .filter(|(name, _)| {
                    self.key.is_key_attribute(name)
                        || table_key.is_key_attribute(name)
                        || matches!(&self.projection, Projection::Include(extra) if extra.contains(name))
                })
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        }
    }

    /// Whether a projection holds `name` (for ProjectionExpression on an index query).
    pub fn projects(&self, table_key: &KeySchema, name: &str) -> bool {
        match &self.projection {
            Projection::All => true,
            Projection::KeysOnly => self.key.is_key_attribute(name) || table_key.is_key_attribute(name),
            Projection::Include(extra) => {
                self.key.is_key_attribute(name) || table_key.is_key_attribute(name) || extra.iter().any(|e| e == name)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throughput {
    pub read: u64,
    pub write: u64,
}

/// When a table's (or a global index's) provisioned throughput last went up and last went
/// down here, and the decreases of the UTC day of the last one: DescribeTable's
/// `LastIncreaseDateTime`, `LastDecreaseDateTime` and `NumberOfDecreasesToday`. A switch to on
/// demand counts as a decrease, from it as an increase (on demand reads as 0 units), as DynamoDB
/// shows them. Empty (and left out of the stored JSON) until the first change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ThroughputChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_increase_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decrease_seconds: Option<f64>,
    /// The UTC day (days since the epoch) of the last decrease, and the decreases on it.
    #[serde(default)]
    pub decreases_day: u64,
    #[serde(default)]
    pub decreases: u64,
}

/// Seconds in a UTC day.
const DAY_SECONDS: f64 = 86_400.0;

impl ThroughputChanges {
    pub fn is_empty(&self) -> bool {
        *self == ThroughputChanges::default()
    }

    /// Records a change from `before` to `after` (`None`: on demand) at `now_seconds`.
    pub fn record(&mut self, before: Option<Throughput>, after: Option<Throughput>, now_seconds: f64) {
        let zero = Throughput { read: 0, write: 0 };
        let (before, after) = (before.unwrap_or(zero), after.unwrap_or(zero));
        if after.read > before.read || after.write > before.write {
            self.last_increase_seconds = Some(now_seconds);
        }
        if after.read < before.read || after.write < before.write {
            self.last_decrease_seconds = Some(now_seconds);
            let day = (now_seconds.max(0.0) / DAY_SECONDS) as u64;
            if day != self.decreases_day {
                self.decreases_day = day;
                self.decreases = 0;
            }
            self.decreases += 1;
        }
    }

    /// The decreases so far on the UTC day of `now_seconds`.
    pub fn decreases_today(&self, now_seconds: f64) -> u64 {
        let today = (now_seconds.max(0.0) / DAY_SECONDS) as u64;
        if today == self.decreases_day { self.decreases } else { 0 }
    }

    /// Adds the dates and today's decreases to a `ProvisionedThroughput` description.
    pub fn describe_into(&self, out: &mut Value, now_seconds: f64) {
        let Some(out) = out.as_object_mut() else {
            return;
        };
        if let Some(at) = self.last_increase_seconds {
            out.insert("LastIncreaseDateTime".into(), json!(at));
        }
        if let Some(at) = self.last_decrease_seconds {
            out.insert("LastDecreaseDateTime".into(), json!(at));
        }
        out.insert(
            "NumberOfDecreasesToday".into(),
            json!(self.decreases_today(now_seconds)),
        );
    }
}

/// The version of a change to a setting that follows a global table across its replicas (its
/// TTL, the creation or deletion of a global index): `(HLC, region)` of the request that made
/// it. A replica takes a peer's setting only when the peer's version wins by last writer wins
/// (`replication::receive::setting_applies`), as items do.
pub type SettingVersion = (u64, String);

/// `version` in last-writer-wins form.
pub fn setting_version(version: Option<&SettingVersion>) -> Option<replication::Version> {
    version.map(|(hlc, region)| replication::Version::new(replication::Hlc(*hlc), region.clone()))
}

/// A replica's throughput after a peer's capacity (`theirs`) is taken: on demand as the peer
/// is, else the peer's write units with this replica's own read units (the peer's where this
/// one had none), as DynamoDB global tables keep write capacity the same in every replica.
fn follow_write(theirs: Option<Throughput>, ours: Option<Throughput>) -> Option<Throughput> {
    match (theirs, ours) {
        (None, _) => None,
        (Some(theirs), None) => Some(theirs),
        (Some(theirs), Some(ours)) => Some(Throughput {
            read: ours.read,
            write: theirs.write,
        }),
    }
}

/// The version of a change made now in `region` (`tick`: a fresh stamp of its clock) to a
/// setting whose held version is `held`: above it, so it replaces it in every replica also when
/// `held` is a peer's, stamped by a clock ahead of this one.
pub fn next_setting_version(held: Option<&SettingVersion>, tick: u64, region: &str) -> SettingVersion {
    // Saturating: a peer's version is input from the network.
    (
        tick.max(held.map_or(0, |(hlc, _)| hlc.saturating_add(1))),
        region.to_string(),
    )
}

/// Whether a setting at `version` is a change made here that some replica has not confirmed:
/// its HLC is the one its durable mark (`global::Followed::mark`) holds (`mark_hlc`; 0 once
/// every replica confirmed it, another HLC once a newer change replaced it).
pub fn unconfirmed(version: Option<&SettingVersion>, mark_hlc: u64) -> bool {
    matches!(version, Some((hlc, _)) if mark_hlc != 0 && *hlc == mark_hlc)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlSpec {
    pub attribute: String,
    pub enabled: bool,
    /// The change that set it: `(HLC, region)` of its UpdateTimeToLive. A global table's TTL
    /// follows it across the replicas: a replica takes a definition's TTL only when its version
    /// is newer (`replication::receive::setting_applies`). Absent in TTLs set before versions
    /// (left out of the stored JSON then, so catalog entries keep their form) and in what a
    /// previous build sends, which replicas other than a new one therefore ignore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<SettingVersion>,
}

impl TtlSpec {
    /// The attribute whose TTL is active, if any.
    pub fn active(ttl: Option<&TtlSpec>) -> Option<&str> {
        ttl.filter(|t| t.enabled).map(|t| t.attribute.as_str())
    }

    /// The version of the change that set `ttl`, in last-writer-wins form.
    pub fn version_of(ttl: Option<&TtlSpec>) -> Option<replication::Version> {
        setting_version(ttl.and_then(|t| t.version.as_ref()))
    }

    /// The same attribute and state (versions aside).
    pub fn same_setting(&self, enabled: bool, attribute: &str) -> bool {
        self.enabled == enabled && self.attribute == attribute
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableMeta {
    /// Storage identity; a table deleted and created again under the same name gets a new id.
    pub id: u64,
    pub name: String,
    pub key: KeySchema,
    pub attribute_definitions: Vec<(String, KeyType)>,
    pub indexes: Vec<IndexMeta>,
    pub throughput: Option<Throughput>,
    pub created_at_seconds: f64,
    pub ttl: Option<TtlSpec>,
    pub tags: BTreeMap<String, String>,
    pub deletion_protection: bool,
    /// The table's latest stream (see `crate::streams::TableStream`).
    #[serde(default, deserialize_with = "crate::streams::lenient_table_stream")]
    pub stream: Option<crate::streams::TableStream>,
    pub table_class: Option<String>,
    /// Regions holding a replica of this table (this one included); empty for a regional table.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// How partition keys hash into stored keys; fixed at creation (absent in the metadata of
    /// tables created before it existed, which use plain FNV-1a). Every replica of a global
    /// table has the same, since stored keys travel between regions as they are.
    #[serde(default)]
    pub key_hash: KeyHash,
    /// In a region that joined this global table after its creation: replicated changes at or
    /// below this HLC arriving in batches are not applied. The region may have counted them as
    /// received (in its watermark marks) before it held the table; its backfill, which waits
    /// until the source has received everything up to here, brings them instead. 0 otherwise.
    #[serde(default)]
    pub joined_below: u64,
    /// Set on a table made by RestoreTableFromBackup: where it came from, and whether its items
    /// are still being copied in (then the table is CREATING and serves no item operation).
    #[serde(default)]
    pub restore: Option<RestoreSummary>,
    /// Point-in-time recovery, when enabled on this table (UpdateContinuousBackups): its
    /// writes then also keep their before-images in the undo log (`engine::pitr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr: Option<PitrSpec>,
    /// When the table last became on-demand (BillingModeSummary's
    /// LastUpdateToPayPerRequestDateTime): its creation as PAY_PER_REQUEST, or an UpdateTable
    /// to PAY_PER_REQUEST. `None` for a table that has only ever been provisioned (DynamoDB then
    /// leaves BillingModeSummary out), and in catalogs written before this field (an on-demand
    /// table then shows its creation time, as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_per_request_since_seconds: Option<f64>,
    /// When its provisioned throughput last changed here (DescribeTable's dates).
    #[serde(default, skip_serializing_if = "ThroughputChanges::is_empty")]
    pub throughput_changes: ThroughputChanges,
    /// Global indexes deleted from a global table, each with the version of its delete
    /// (`IndexMeta::version`), so the delete follows the table across its replicas and a stale
    /// definition that still holds the index does not bring it back (`align_indexes`). One per
    /// name at most; a name created again leaves this list. Left out of the stored JSON when
    /// empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_indexes: Vec<IndexMeta>,
    /// The change that last set the table's capacity as it follows a global table across its
    /// replicas (`TableMeta::follows_capacity`): its billing mode, its provisioned write
    /// capacity and each global index's, `(HLC, region)` of the UpdateTable that made it. A
    /// replica takes a definition's capacity only when this version is newer
    /// (`TableMeta::align_capacity`); read capacity stays each replica's own. Absent in tables
    /// whose capacity was never changed since versions existed and in what a previous build
    /// sends (left out of the stored JSON then, so catalog entries keep their form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_version: Option<SettingVersion>,
}

/// The part of a table's capacity that follows a global table across its replicas, as DynamoDB
/// global tables of version 2019.11.21 keep it the same in every replica: the billing mode
/// (`None`: PAY_PER_REQUEST), the table's provisioned write capacity, and the write capacity of
/// each global index (by name; `None`: none set). Read capacity is each replica's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowedCapacity {
    pub write: Option<u64>,
    pub index_writes: BTreeMap<String, Option<u64>>,
}

/// What a replica does to take a peer's global indexes (`TableMeta::align_indexes`).
#[derive(Debug, Default, PartialEq)]
pub struct IndexAlignment {
    /// The table's indexes after it.
    pub indexes: Vec<IndexMeta>,
    pub deleted_indexes: Vec<IndexMeta>,
    pub attribute_definitions: Vec<(String, KeyType)>,
    /// Indexes whose storage goes (deleted, or replaced by another definition of the name).
    pub dropped: Vec<String>,
    /// Indexes to build from the items (created, or the replacing definition).
    pub created: Vec<String>,
}

impl IndexAlignment {
    pub fn changes_nothing(&self, held: &TableMeta) -> bool {
        self.indexes == held.indexes && self.deleted_indexes == held.deleted_indexes
    }
}

/// A table's point-in-time recovery settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitrSpec {
    /// When it was enabled: the earliest time a restore can go back to.
    pub enabled_at_ms: u64,
    /// RecoveryPeriodInDays (1 to 35): older changes are forgotten.
    pub recovery_period_days: u32,
}

/// DynamoDB's RestoreSummary of a restored table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestoreSummary {
    /// Empty for a point-in-time restore (DescribeTable then shows no SourceBackupArn).
    pub source_backup_arn: String,
    pub source_table_arn: String,
    pub restore_date_time_seconds: f64,
    pub in_progress: bool,
    /// A point-in-time restore: the source table's storage id and the restore time (ms), so
    /// a restore a crash interrupted can be done again from the source's undo log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<(u64, u64)>,
}

/// Counters kept exactly, updated in the same transaction as the data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub item_count: u64,
    pub size_bytes: u64,
}

impl TableMeta {
    /// BillingModeSummary as DynamoDB describes it: an on-demand table's mode and when it became
    /// on demand; a provisioned table's only once it has been on demand (a table created
    /// provisioned and never switched has none).
    pub fn billing_mode_summary(&self) -> Option<Value> {
        match (self.throughput, self.pay_per_request_since_seconds) {
            (None, since) => Some(json!({
                "BillingMode": "PAY_PER_REQUEST",
                "LastUpdateToPayPerRequestDateTime": since.unwrap_or(self.created_at_seconds),
            })),
            (Some(_), Some(since)) => Some(json!({
                "BillingMode": "PROVISIONED",
                "LastUpdateToPayPerRequestDateTime": since,
            })),
            (Some(_), None) => None,
        }
    }

    /// A global table replicates its writes to the other replicas' regions.
    pub fn is_global(&self) -> bool {
        self.replicas.len() > 1
    }

    pub fn index(&self, name: &str) -> Option<&IndexMeta> {
        self.indexes.iter().find(|i| i.name == name)
    }

    /// The version of the last change of global index `name` held here: its creation when the
    /// table has it, else its deletion, if either is versioned.
    pub fn index_version(&self, name: &str) -> Option<&SettingVersion> {
        self.indexes
            .iter()
            .chain(&self.deleted_indexes)
            .find(|i| i.name == name && i.kind == IndexKind::Global)
            .and_then(|i| i.version.as_ref())
    }

    /// Every versioned global index change held here, by index name (what a replica answers
    /// a definition with).
    pub fn index_versions(&self) -> BTreeMap<String, SettingVersion> {
        self.indexes
            .iter()
            .chain(&self.deleted_indexes)
            .filter(|i| i.kind == IndexKind::Global)
            .filter_map(|i| i.version.clone().map(|v| (i.name.clone(), v)))
            .collect()
    }

    /// The highest HLC of the versioned settings this definition carries (TTL, index changes,
    /// capacity).
    pub fn newest_setting_hlc(&self) -> Option<u64> {
        let ttl = self.ttl.as_ref().and_then(|t| t.version.as_ref());
        let indexes = self
            .indexes
            .iter()
            .chain(&self.deleted_indexes)
            .filter_map(|i| i.version.as_ref());
        ttl.into_iter()
            .chain(indexes)
            .chain(self.capacity_version.as_ref())
            .map(|(hlc, _)| *hlc)
            .max()
    }

    /// The table's capacity as it follows a global table (`FollowedCapacity`).
    pub fn follows_capacity(&self) -> FollowedCapacity {
        FollowedCapacity {
            write: self.throughput.map(|t| t.write),
            index_writes: self
                .indexes
                .iter()
                .filter(|i| i.kind == IndexKind::Global)
                .map(|i| (i.name.clone(), self.index_throughput(i).map(|t| t.write)))
                .collect(),
        }
    }

    /// Whether `next` (this table changed by an UpdateTable) holds another capacity that
    /// follows a global table: another billing mode, another write capacity of the table or of
    /// a global index both hold. Read capacity alone, and an index created or deleted (its own
    /// change, `IndexMeta::version`), are not.
    pub fn capacity_changed(&self, next: &TableMeta) -> bool {
        let (before, after) = (self.follows_capacity(), next.follows_capacity());
        before.write != after.write
            || before
                .index_writes
                .iter()
                .any(|(name, write)| after.index_writes.get(name).is_some_and(|w| w != write))
    }

    /// Records in [`ThroughputChanges`] how the table's and each index's provisioned throughput
    /// went from `before` to this definition at `now_seconds` (DescribeTable's
    /// LastIncrease/LastDecreaseDateTime and NumberOfDecreasesToday): for a change asked for
    /// here and for one taken from a peer alike.
    pub fn record_throughput_changes(&mut self, before: &TableMeta, now_seconds: f64) {
        if self.throughput != before.throughput {
            self.throughput_changes
                .record(before.throughput, self.throughput, now_seconds);
        }
        for index in &mut self.indexes {
            if let Some(was) = before.index(&index.name)
                && was.version == index.version
                && was.throughput != index.throughput
            {
                index
                    .throughput_changes
                    .record(was.throughput, index.throughput, now_seconds);
            }
        }
    }

    /// Takes the capacity of a peer's definition (`incoming`) when its version is newer than
    /// the one held by `replication::receive::setting_applies` (last writer wins; a stale,
    /// repeated or unversioned definition, a previous build's, changes nothing). Returns whether
    /// it was taken. The billing mode and the write capacities become the peer's (of the table,
    /// and of each global index both hold; one only this replica holds keeps its own); read
    /// capacity stays this replica's own where it has one, and is the peer's where this replica
    /// had none (it was on demand), as DynamoDB uses the source table's read capacity unless a
    /// replica overrides it. BillingModeSummary's LastUpdateToPayPerRequestDateTime becomes the
    /// peer's. Whether taken or not, an on-demand table's global indexes have no provisioned
    /// throughput (an index a peer created while provisioned included), and a provisioned
    /// table's index without any is described with the table's ([`TableMeta::index_throughput`]),
    /// so replicas holding one capacity version describe the same capacity.
    pub fn align_capacity(&mut self, incoming: &TableMeta) -> bool {
        let held = setting_version(self.capacity_version.as_ref());
        let theirs = setting_version(incoming.capacity_version.as_ref());
        let taken = replication::receive::setting_applies(theirs.as_ref(), held.as_ref(), false);
        if taken {
            // The winner's date, whole: a losing switch to on demand leaves no date behind, and
            // every replica holding one version shows one date.
            self.pay_per_request_since_seconds = incoming
                .pay_per_request_since_seconds
                .or_else(|| incoming.throughput.is_none().then_some(incoming.created_at_seconds));
            self.throughput = follow_write(incoming.throughput, self.throughput);
        }
        let table = self.throughput;
        for index in self.indexes.iter_mut().filter(|i| i.kind == IndexKind::Global) {
            let peer = incoming
                .indexes
                .iter()
                .find(|i| i.name == index.name && i.kind == IndexKind::Global);
            index.throughput = match (table, peer) {
                // An on-demand table's indexes have no provisioned throughput, also one a
                // peer's definition brought with units while its table was provisioned there.
                (None, _) => None,
                // The peer's units for the index it holds under this name only when it is the
                // same index (the same creation): the units of an index deleted and made again
                // follow its creation, not a capacity change made to the one before it.
                (Some(_), Some(peer)) if taken && peer.version == index.version => {
                    follow_write(peer.throughput, index.throughput)
                }
                // None on a provisioned table (an index made while the table was on demand
                // elsewhere) is described as the table's units (`index_throughput`), so it
                // follows them wherever they are.
                (Some(_), _) => index.throughput,
            };
        }
        if taken {
            self.capacity_version = incoming.capacity_version.clone();
        }
        taken
    }

    /// The global indexes this replica holds after taking those of a peer's definition
    /// (`incoming`), index name by index name: a name whose last change there (its creation,
    /// or its deletion in `deleted_indexes`) is newer than here by
    /// `replication::receive::setting_applies` takes the peer's state: created (to be built
    /// from the items), deleted, or replaced when the definitions differ; any other name, and
    /// every local index, stays as it is. So concurrent changes to different indexes all
    /// land, changes to one index end the same everywhere (last writer wins), a stale or
    /// repeated definition changes nothing, and an unversioned one (a previous build's, which
    /// keeps each replica's indexes its own) never creates or drops an index here.
    pub fn align_indexes(&self, incoming: &TableMeta) -> IndexAlignment {
        let global_names = |meta: &TableMeta| -> Vec<String> {
            meta.indexes
                .iter()
                .chain(&meta.deleted_indexes)
                .filter(|i| i.kind == IndexKind::Global)
                .map(|i| i.name.clone())
                .collect()
        };
        let names: BTreeSet<String> = global_names(self).into_iter().chain(global_names(incoming)).collect();
        let mut out = IndexAlignment {
            indexes: self.indexes.clone(),
            deleted_indexes: self.deleted_indexes.clone(),
            ..IndexAlignment::default()
        };
        for name in names {
            // A local index of that name is this table's own (made with it); left alone.
            if self
                .indexes
                .iter()
                .any(|i| i.name == name && i.kind == IndexKind::Local)
            {
                continue;
            }
            let held = setting_version(self.index_version(&name));
            let theirs = setting_version(incoming.index_version(&name));
            if !replication::receive::setting_applies(theirs.as_ref(), held.as_ref(), false) {
                continue;
            }
            let live_there = incoming
                .indexes
                .iter()
                .find(|i| i.name == name && i.kind == IndexKind::Global);
            let live_here = out.indexes.iter().position(|i| i.name == name);
            out.deleted_indexes.retain(|i| i.name != name);
            match (live_here, live_there) {
                (Some(at), Some(index)) if out.indexes[at].same_definition(index) => {
                    // The same index created again there (deleted and created while this
                    // replica was away) sets its write units, unless a capacity change here is
                    // newer than that creation (then the peer takes this one's units with it).
                    let capacity_here = setting_version(self.capacity_version.as_ref());
                    if replication::receive::setting_applies(theirs.as_ref(), capacity_here.as_ref(), false) {
                        out.indexes[at].throughput = follow_write(index.throughput, out.indexes[at].throughput);
                    }
                    out.indexes[at].version = index.version.clone();
                }
                (Some(at), Some(index)) => {
                    out.dropped.push(name.clone());
                    out.created.push(name.clone());
                    out.indexes[at] = IndexMeta {
                        backfilling: true,
                        ..index.clone()
                    };
                }
                (None, Some(index)) => {
                    out.created.push(name.clone());
                    out.indexes.push(IndexMeta {
                        backfilling: true,
                        ..index.clone()
                    });
                }
                (live_here, None) => {
                    if let Some(at) = live_here {
                        out.dropped.push(name.clone());
                        out.indexes.remove(at);
                    }
                    // Its deletion there is the newer change: kept here too, so a stale
                    // definition does not bring the index back.
                    let deleted = incoming.deleted_indexes.iter().find(|i| i.name == name);
                    out.deleted_indexes.extend(deleted.cloned());
                }
            }
        }
        // The attributes the indexes' keys use are defined (a created index's as the peer
        // defines them), and only those.
        let mut definitions = self.attribute_definitions.clone();
        for (name, value_type) in &incoming.attribute_definitions {
            if !definitions.iter().any(|(n, _)| n == name) {
                definitions.push((name.clone(), *value_type));
            }
        }
        let used =
            |name: &str| self.key.is_key_attribute(name) || out.indexes.iter().any(|i| i.key.is_key_attribute(name));
        definitions.retain(|(name, _)| used(name));
        out.attribute_definitions = definitions;
        out
    }

    /// A restore is still copying items in: the table is CREATING.
    pub fn restoring(&self) -> bool {
        self.restore.as_ref().is_some_and(|r| r.in_progress)
    }

    pub fn arn(&self, region: &str) -> String {
        format!("arn:aws:dynamodb:{region}:000000000000:table/{}", self.name)
    }

    /// The DescribeTable shape. `unconfirmed`: whether a global index's change (its creation,
    /// or its deletion in `deleted_indexes`) was made here and some replica has not confirmed
    /// it: the index is then CREATING, or listed as DELETING.
    /// A global index being deleted, as DescribeTable lists it (its storage is gone: no items).
    pub fn deleting_index_json(&self, index: &IndexMeta, region: &str) -> Value {
        json!({
            "IndexName": index.name,
            "KeySchema": index.key.to_json(),
            "Projection": index.projection.to_json(),
            "IndexStatus": "DELETING",
            "IndexSizeBytes": 0,
            "ItemCount": 0,
            "IndexArn": format!("{}/index/{}", self.arn(region), index.name),
            "ProvisionedThroughput": throughput_json(self.index_throughput(index)),
        })
    }

    /// A global index's provisioned throughput as described: none on demand; on a provisioned
    /// table its own, or the table's when it has none (an index made while the table was on
    /// demand in the region that made it, before a switch to provisioned that named no units
    /// for it).
    pub fn index_throughput(&self, index: &IndexMeta) -> Option<Throughput> {
        self.throughput.and(index.throughput.or(self.throughput))
    }

    pub fn describe(
        &self,
        region: &str,
        status: &str,
        stats: TableStats,
        index_stats: &dyn Fn(&str) -> TableStats,
        unconfirmed: &dyn Fn(&IndexMeta) -> bool,
    ) -> Value {
        let mut table = serde_json::Map::new();
        table.insert("TableName".into(), json!(self.name));
        table.insert("TableId".into(), json!(table_uuid(self.id, &self.name)));
        table.insert("TableArn".into(), json!(self.arn(region)));
        table.insert(
            "TableStatus".into(),
            json!(if self.restoring() { "CREATING" } else { status }),
        );
        table.insert("CreationDateTime".into(), json!(self.created_at_seconds));
        table.insert("KeySchema".into(), self.key.to_json());
        table.insert(
            "AttributeDefinitions".into(),
            Value::Array(
                self.attribute_definitions
                    .iter()
                    .map(|(n, t)| json!({"AttributeName": n, "AttributeType": t.descriptor()}))
                    .collect(),
            ),
        );
        table.insert("ItemCount".into(), json!(stats.item_count));
        table.insert("TableSizeBytes".into(), json!(stats.size_bytes));
        table.insert("ProvisionedThroughput".into(), throughput_json(self.throughput));
        if let Some(summary) = self.billing_mode_summary() {
            table.insert("BillingModeSummary".into(), summary);
        }
        table.insert("DeletionProtectionEnabled".into(), json!(self.deletion_protection));
        crate::streams::describe_into(&mut table, self.stream.as_ref(), region, &self.name);
        if let Some(class) = &self.table_class {
            table.insert("TableClassSummary".into(), json!({"TableClass": class}));
        }
        if let Some(restore) = &self.restore {
            let mut summary = json!({
                "SourceTableArn": restore.source_table_arn,
                "RestoreDateTime": restore.restore_date_time_seconds,
                "RestoreInProgress": restore.in_progress,
            });
            if !restore.source_backup_arn.is_empty() {
                summary["SourceBackupArn"] = json!(restore.source_backup_arn);
            }
            table.insert("RestoreSummary".into(), summary);
        }
        let describe_index = |index: &IndexMeta| {
            let stats = index_stats(&index.name);
            let mut out = json!({
                "IndexName": index.name,
                "KeySchema": index.key.to_json(),
                "Projection": index.projection.to_json(),
                "IndexSizeBytes": stats.size_bytes,
                "ItemCount": stats.item_count,
                "IndexArn": format!("{}/index/{}", self.arn(region), index.name),
            });
            if index.kind == IndexKind::Global {
                let creating = index.backfilling || unconfirmed(index);
                out["IndexStatus"] = json!(if creating { "CREATING" } else { "ACTIVE" });
                if index.backfilling {
                    // DynamoDB shows the flag only while the index is being filled.
                    out["Backfilling"] = json!(true);
                }
                out["ProvisionedThroughput"] = throughput_json(self.index_throughput(index));
            }
            out
        };
        let mut globals: Vec<Value> = self
            .indexes
            .iter()
            .filter(|i| i.kind == IndexKind::Global)
            .map(describe_index)
            .collect();
        // A global index deleted here and not yet in every replica: DELETING until it is (its
        // storage here is gone: no items).
        for index in self.deleted_indexes.iter().filter(|i| unconfirmed(i)) {
            globals.push(self.deleting_index_json(index, region));
        }
        let locals: Vec<Value> = self
            .indexes
            .iter()
            .filter(|i| i.kind == IndexKind::Local)
            .map(describe_index)
            .collect();
        if !globals.is_empty() {
            table.insert("GlobalSecondaryIndexes".into(), Value::Array(globals));
        }
        if !locals.is_empty() {
            table.insert("LocalSecondaryIndexes".into(), Value::Array(locals));
        }
        Value::Object(table)
    }
}

fn throughput_json(throughput: Option<Throughput>) -> Value {
    let throughput = throughput.unwrap_or(Throughput { read: 0, write: 0 });
    json!({"ReadCapacityUnits": throughput.read, "WriteCapacityUnits": throughput.write, "NumberOfDecreasesToday": 0})
}

/// A stable UUID-shaped id derived from the storage id and name.
pub fn table_uuid(id: u64, name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (id >> 32) as u32 ^ (hash as u32),
        (id >> 16) as u16,
        id as u16 & 0xfff,
        (hash >> 52) as u16,
        hash & 0xffff_ffff_ffff
    )
}

// ---- CreateTable request ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttributeDefinition {
    pub attribute_name: String,
    pub attribute_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeySchemaElement {
    pub attribute_name: String,
    pub key_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProjectionRequest {
    pub projection_type: Option<String>,
    pub non_key_attributes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "PascalCase")]
pub struct ThroughputRequest {
    pub read_capacity_units: i64,
    pub write_capacity_units: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexRequest {
    pub index_name: String,
    pub key_schema: Vec<KeySchemaElement>,
    pub projection: ProjectionRequest,
    pub provisioned_throughput: Option<ThroughputRequest>,
}

/// Tags a request's list is read with: past these, the rest are counted, not built, and the
/// request refused (a resource holds at most [`TAGS_PER_RESOURCE_MAX`]), so a hostile body of
/// hundreds of thousands of tags is never built whole.
pub const TAGS_READ_MAX: usize = 1024;

/// A request's `Tags` list, read within [`TAGS_READ_MAX`]. Use with `#[serde(deserialize_with
/// = ...)]` (and `default` where the list is optional: [`optional_tags_within_limit`]).
pub fn tags_within_limit<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<TagRequest>, D::Error> {
    struct Within;
    impl<'de> serde::de::Visitor<'de> for Within {
        type Value = Vec<TagRequest>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of tags")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut kept = Vec::new();
            while kept.len() < TAGS_READ_MAX {
                match seq.next_element::<TagRequest>()? {
                    Some(tag) => kept.push(tag),
                    None => return Ok(kept),
                }
            }
            let mut count = kept.len();
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                count = count.saturating_add(1);
            }
            if count == kept.len() {
                return Ok(kept);
            }
            Err(serde::de::Error::custom(format!(
                "{}One or more parameter values were invalid: The number of tags exceeds the limit of {TAGS_PER_RESOURCE_MAX} per resource ({count} given)",
                dynamo_protocol::value::VALIDATION_MARKER
            )))
        }
    }
    deserializer.deserialize_seq(Within)
}

/// [`tags_within_limit`] of an optional list.
pub fn optional_tags_within_limit<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<TagRequest>>, D::Error> {
    struct Tags(Vec<TagRequest>);
    impl<'de> Deserialize<'de> for Tags {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            tags_within_limit(deserializer).map(Tags)
        }
    }
    Ok(Option::<Tags>::deserialize(deserializer)?.map(|tags| tags.0))
}

#[derive(Debug, Deserialize)]
pub struct TagRequest {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value")]
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateTableRequest {
    pub table_name: String,
    #[serde(default)]
    pub attribute_definitions: Vec<AttributeDefinition>,
    #[serde(default)]
    pub key_schema: Vec<KeySchemaElement>,
    pub local_secondary_indexes: Option<Vec<IndexRequest>>,
    pub global_secondary_indexes: Option<Vec<IndexRequest>>,
    pub billing_mode: Option<String>,
    pub provisioned_throughput: Option<ThroughputRequest>,
    pub stream_specification: Option<Value>,
    #[serde(default, deserialize_with = "optional_tags_within_limit")]
    pub tags: Option<Vec<TagRequest>>,
    pub table_class: Option<String>,
    pub deletion_protection_enabled: Option<bool>,
}

pub fn validate_table_name(name: &str, field: &str) -> Result<(), ApiError> {
    constraint_errors(table_name_problems(name, field))
}

/// What the API model's constraints on a table name say of `name` at `field`, one sentence each.
pub fn table_name_problems(name: &str, field: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if name.len() < TABLE_NAME_LENGTH_MIN {
        problems.push(format!(
            "Value '{name}' at '{field}' failed to satisfy constraint: Member must have length greater than or equal to {TABLE_NAME_LENGTH_MIN}"
        ));
    }
    if name.len() > TABLE_NAME_LENGTH_MAX {
        problems.push(format!(
            "Value '{name}' at '{field}' failed to satisfy constraint: Member must have length less than or equal to {TABLE_NAME_LENGTH_MAX}"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        problems.push(format!(
            "Value '{name}' at '{field}' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        ));
    }
    problems
}

/// DynamoDB's "N validation errors detected: a; b" format.
pub fn constraint_errors(problems: Vec<String>) -> Result<(), ApiError> {
    match problems.len() {
        0 => Ok(()),
        1 => Err(ApiError::validation(format!(
            "1 validation error detected: {}",
            problems[0]
        ))),
        n => Err(ApiError::validation(format!(
            "{n} validation errors detected: {}",
            problems.join("; ")
        ))),
    }
}

fn invalid(message: impl std::fmt::Display) -> ApiError {
    ApiError::validation(format!("One or more parameter values were invalid: {message}"))
}

fn key_type_of(definitions: &[(String, KeyType)], name: &str) -> Result<KeyType, ApiError> {
    definitions.iter().find(|(n, _)| n == name).map(|(_, t)| *t).ok_or_else(|| {
        invalid(format!(
            "Some index key attributes are not defined in AttributeDefinitions. Keys: [{name}], AttributeDefinitions: [{}]",
            definitions.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })
}

pub fn parse_key_schema(
    elements: &[KeySchemaElement],
    definitions: &[(String, KeyType)],
    what: &str,
) -> Result<KeySchema, ApiError> {
    if elements.is_empty() || elements.len() > 2 {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '[...]' at '{what}' failed to satisfy constraint: Member must have length less than or equal to 2 and greater than or equal to 1"
        )));
    }
    for (at, element) in elements.iter().enumerate() {
        check_key_name_length(
            &element.attribute_name,
            &format!("{what}.{}.member.attributeName", at + 1),
        )?;
    }
    if elements[0].key_type != "HASH" {
        return Err(invalid(
            "Invalid KeySchema: The first KeySchemaElement is not a HASH key type",
        ));
    }
    let partition = KeyAttribute {
        name: elements[0].attribute_name.clone(),
        value_type: key_type_of(definitions, &elements[0].attribute_name)?,
    };
    let sort = match elements.get(1) {
        None => None,
        Some(element) if element.key_type == "RANGE" => {
            if element.attribute_name == partition.name {
                return Err(invalid(
                    "Both the Hash Key and the Range Key element in the KeySchema have the same name",
                ));
            }
            Some(KeyAttribute {
                name: element.attribute_name.clone(),
                value_type: key_type_of(definitions, &element.attribute_name)?,
            })
        }
        Some(_) => {
            return Err(invalid(
                "Invalid KeySchema: The second KeySchemaElement is not a RANGE key type",
            ));
        }
    };
    Ok(KeySchema::simple(partition, sort))
}

/// A global index's KeySchema: one HASH and at most one RANGE element as for a table, or a
/// multi-attribute key: 1 to [`INDEX_PARTITION_ATTRIBUTES_MAX`] HASH elements, then up to
/// [`INDEX_SORT_ATTRIBUTES_MAX`] RANGE elements, each a distinct attribute declared in
/// AttributeDefinitions.
pub fn parse_global_key_schema(
    elements: &[KeySchemaElement],
    definitions: &[(String, KeyType)],
    what: &str,
) -> Result<KeySchema, ApiError> {
    let multi = elements.len() > 2 || elements.get(1).is_some_and(|e| e.key_type == "HASH");
    if !multi {
        return parse_key_schema(elements, definitions, what);
    }
    for (at, element) in elements.iter().enumerate() {
        check_key_name_length(
            &element.attribute_name,
            &format!("{what}.{}.member.attributeName", at + 1),
        )?;
        if element.key_type != "HASH" && element.key_type != "RANGE" {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{}' at '{what}.{}.member.keyType' failed to satisfy constraint: Member must satisfy enum value set: [HASH, RANGE]",
                element.key_type,
                at + 1
            )));
        }
    }
    let hashes = elements.iter().filter(|e| e.key_type == "HASH").count();
    let ranges = elements.len() - hashes;
    if hashes > INDEX_PARTITION_ATTRIBUTES_MAX {
        return Err(invalid(format!(
            "Too many partition keys. GSI can have at most {INDEX_PARTITION_ATTRIBUTES_MAX} partition keys (HASH key elements); the KeySchema has {hashes}"
        )));
    }
    if ranges > INDEX_SORT_ATTRIBUTES_MAX {
        return Err(invalid(format!(
            "Too many sort keys. GSI can have at most {INDEX_SORT_ATTRIBUTES_MAX} sort keys (RANGE key elements); the KeySchema has {ranges}"
        )));
    }
    if elements[0].key_type != "HASH" {
        return Err(invalid(
            "Invalid KeySchema: The first KeySchemaElement is not a HASH key type",
        ));
    }
    if elements[..hashes].iter().any(|e| e.key_type != "HASH") {
        return Err(invalid(
            "Invalid key order: in a KeySchema, every HASH key element must precede the RANGE key elements",
        ));
    }
    for (at, element) in elements.iter().enumerate() {
        if elements[..at]
            .iter()
            .any(|e| e.attribute_name == element.attribute_name)
        {
            return Err(invalid(format!(
                "Two keys can not have the same name: {}",
                element.attribute_name
            )));
        }
    }
    let attribute = |element: &KeySchemaElement| -> Result<KeyAttribute, ApiError> {
        Ok(KeyAttribute {
            name: element.attribute_name.clone(),
            value_type: key_type_of(definitions, &element.attribute_name)?,
        })
    };
    let mut partition = elements[..hashes]
        .iter()
        .map(attribute)
        .collect::<Result<Vec<_>, _>>()?;
    let mut sort = elements[hashes..]
        .iter()
        .map(attribute)
        .collect::<Result<Vec<_>, _>>()?;
    let first_partition = partition.remove(0);
    let first_sort = (!sort.is_empty()).then(|| sort.remove(0));
    Ok(KeySchema {
        partition: first_partition,
        sort: first_sort,
        extra_partition: partition,
        extra_sort: sort,
    })
}

fn parse_projection(request: &ProjectionRequest, index: &str) -> Result<Projection, ApiError> {
    match (request.projection_type.as_deref(), &request.non_key_attributes) {
        (Some("ALL"), None) => Ok(Projection::All),
        (Some("KEYS_ONLY"), None) => Ok(Projection::KeysOnly),
        (Some("INCLUDE"), Some(names)) if !names.is_empty() && names.len() <= PROJECTED_ATTRIBUTES_MAX => {
            let mut seen = std::collections::HashSet::new();
            if let Some(name) = names.iter().find(|n| !seen.insert(n.as_str())) {
                return Err(invalid(format!(
                    "Duplicate attribute name {name} in NonKeyAttributes for index: {index}"
                )));
            }
            if let Some(name) = names
                .iter()
                .find(|n| n.is_empty() || n.len() > NON_KEY_ATTRIBUTE_NAME_BYTES_MAX)
            {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{name}' at 'projection.nonKeyAttributes' failed to satisfy constraint: Member must have length less than or equal to {NON_KEY_ATTRIBUTE_NAME_BYTES_MAX} and greater than or equal to 1 (index: {index})"
                )));
            }
            Ok(Projection::Include(names.clone()))
        }
        (Some("INCLUDE"), _) => Err(invalid(format!(
            "ProjectionType is INCLUDE, but NonKeyAttributes is not specified or has more than {PROJECTED_ATTRIBUTES_MAX} entries for index: {index}"
        ))),
        (Some("ALL" | "KEYS_ONLY"), Some(_)) => Err(invalid(format!(
            "ProjectionType is not INCLUDE, but NonKeyAttributes is specified for index: {index}"
        ))),
        (None, _) => Err(invalid(format!("Unknown ProjectionType: null for index: {index}"))),
        (Some(other), _) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{other}' at 'projection.projectionType' failed to satisfy constraint: Member must satisfy enum value set: [ALL, INCLUDE, KEYS_ONLY]"
        ))),
    }
}

fn parse_throughput(
    request: Option<ThroughputRequest>,
    pay_per_request: bool,
    what: &str,
) -> Result<Option<Throughput>, ApiError> {
    match (request, pay_per_request) {
        (None, true) => Ok(None),
        (Some(_), true) => Err(invalid(format!(
            "Neither ReadCapacityUnits nor WriteCapacityUnits can be specified when BillingMode is PAY_PER_REQUEST{what}"
        ))),
        // The table's own: DynamoDB's words (as real DynamoDB answers a CreateTable that names
        // neither BillingMode nor ProvisionedThroughput).
        (None, false) if what.is_empty() => Err(ApiError::validation(
            "No provisioned throughput specified for the table",
        )),
        (None, false) => Err(invalid(format!(
            "ProvisionedThroughput must be specified when BillingMode is PROVISIONED{what}"
        ))),
        (Some(t), false) => {
            // Each member below 1 named with its value, as DynamoDB's constraint check does.
            let broken: Vec<String> = [
                (t.read_capacity_units, "readCapacityUnits"),
                (t.write_capacity_units, "writeCapacityUnits"),
            ]
            .into_iter()
            .filter(|(value, _)| *value < 1)
            .map(|(value, member)| {
                format!(
                    "Value '{value}' at 'provisionedThroughput.{member}' failed to satisfy constraint: Member must have value greater than or equal to 1"
                )
            })
            .collect();
            if !broken.is_empty() {
                let count = broken.len();
                let noun = if count == 1 { "error" } else { "errors" };
                return Err(ApiError::validation(format!(
                    "{count} validation {noun} detected: {}",
                    broken.join("; ")
                )));
            }
            check_throughput_bounds(t.read_capacity_units, t.write_capacity_units)?;
            Ok(Some(Throughput {
                read: t.read_capacity_units as u64,
                write: t.write_capacity_units as u64,
            }))
        }
    }
}

/// Most capacity units DynamoDB takes in a ProvisionedThroughput (its account quotas, 40,000
/// by default and adjustable, are not this store's to enforce).
pub const THROUGHPUT_UNITS_MAX: i64 = 1_000_000_000_000;

/// DynamoDB's bound on a ProvisionedThroughput's units, reads judged first.
pub fn check_throughput_bounds(read: i64, write: i64) -> Result<(), ApiError> {
    for (value, name) in [(read, "ReadCapacityUnits"), (write, "WriteCapacityUnits")] {
        if value > THROUGHPUT_UNITS_MAX {
            return Err(ApiError::validation(format!(
                "Given value {value} for {name} is out of bounds"
            )));
        }
    }
    Ok(())
}

pub fn parse_billing_mode(mode: Option<&str>) -> Result<bool, ApiError> {
    match mode {
        None | Some("PROVISIONED") => Ok(false),
        Some("PAY_PER_REQUEST") => Ok(true),
        Some(other) => Err(ApiError::validation(format!(
            "1 validation error detected: Value '{other}' at 'billingMode' failed to satisfy constraint: Member must satisfy enum value set: [PROVISIONED, PAY_PER_REQUEST]"
        ))),
    }
}

/// Longest name of a key attribute (tables and indexes), in bytes: DynamoDB's model bound.
pub const KEY_ATTRIBUTE_NAME_BYTES_MAX: usize = 255;

fn check_key_name_length(name: &str, field: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '' at '{field}' failed to satisfy constraint: Member must have length greater than or equal to 1"
        )));
    }
    if name.len() > KEY_ATTRIBUTE_NAME_BYTES_MAX {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{name}' at '{field}' failed to satisfy constraint: Member must have length less than or equal to {KEY_ATTRIBUTE_NAME_BYTES_MAX}"
        )));
    }
    Ok(())
}

pub fn parse_attribute_definitions(definitions: &[AttributeDefinition]) -> Result<Vec<(String, KeyType)>, ApiError> {
    let mut out: Vec<(String, KeyType)> = Vec::new();
    for (at, definition) in definitions.iter().enumerate() {
        check_key_name_length(
            &definition.attribute_name,
            &format!("attributeDefinitions.{}.member.attributeName", at + 1),
        )?;
        let value_type = match definition.attribute_type.as_str() {
            "S" => KeyType::S,
            "N" => KeyType::N,
            "B" => KeyType::B,
            other => {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{other}' at 'attributeDefinitions.1.member.attributeType' failed to satisfy constraint: Member must satisfy enum value set: [B, N, S]"
                )));
            }
        };
        if out.iter().any(|(n, _)| n == &definition.attribute_name) {
            return Err(invalid(format!(
                "Duplicate AttributeName in AttributeDefinitions: {}",
                definition.attribute_name
            )));
        }
        out.push((definition.attribute_name.clone(), value_type));
    }
    Ok(out)
}

pub fn parse_global_index(
    request: &IndexRequest,
    definitions: &[(String, KeyType)],
    pay_per_request: bool,
) -> Result<IndexMeta, ApiError> {
    validate_table_name(&request.index_name, "indexName")?;
    Ok(IndexMeta {
        name: request.index_name.clone(),
        kind: IndexKind::Global,
        key: parse_global_key_schema(
            &request.key_schema,
            definitions,
            "globalSecondaryIndexes.member.keySchema",
        )?,
        projection: parse_projection(&request.projection, &request.index_name)?,
        throughput: parse_throughput(
            request.provisioned_throughput,
            pay_per_request,
            &format!(" for index: {}", request.index_name),
        )?,
        backfilling: false,
        version: None,
        throughput_changes: ThroughputChanges::default(),
    })
}

/// Validates a CreateTable request into a table definition (storage id assigned by the engine).
pub fn table_from_request(request: &CreateTableRequest, id: u64, now_seconds: f64) -> Result<TableMeta, ApiError> {
    validate_table_name(&request.table_name, "tableName")?;
    // The billing mode and the throughput before the keys, as DynamoDB judges them.
    let pay_per_request = parse_billing_mode(request.billing_mode.as_deref())?;
    let throughput = parse_throughput(request.provisioned_throughput, pay_per_request, "")?;
    let definitions = parse_attribute_definitions(&request.attribute_definitions)?;
    let key = parse_key_schema(&request.key_schema, &definitions, "keySchema")?;
    let mut indexes = Vec::new();
    let globals = request.global_secondary_indexes.as_deref().unwrap_or_default();
    let locals = request.local_secondary_indexes.as_deref().unwrap_or_default();
    if request.global_secondary_indexes.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid("List of GlobalSecondaryIndexes is empty"));
    }
    if request.local_secondary_indexes.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid("List of LocalSecondaryIndexes is empty"));
    }
    if globals.len() > GLOBAL_INDEXES_MAX {
        return Err(invalid(format!(
            "GlobalSecondaryIndex count exceeds the per-table limit of {GLOBAL_INDEXES_MAX}"
        )));
    }
    if locals.len() > LOCAL_INDEXES_MAX {
        return Err(invalid(format!(
            "LocalSecondaryIndex count exceeds the per-table limit of {LOCAL_INDEXES_MAX}"
        )));
    }
    for request in globals {
        indexes.push(parse_global_index(request, &definitions, pay_per_request)?);
    }
    for request in locals {
        validate_table_name(&request.index_name, "indexName")?;
        let index_key = parse_key_schema(
            &request.key_schema,
            &definitions,
            "localSecondaryIndexes.member.keySchema",
        )?;
        if key.sort.is_none() {
            return Err(invalid(
                "Table KeySchema does not have a range key, which is required when specifying a LocalSecondaryIndex",
            ));
        }
        if index_key.partition != key.partition || index_key.sort.is_none() {
            return Err(invalid(format!(
                "Index KeySchema does not have the same leading hash key as table KeySchema for index: {}. index hash key: {}, table hash key: {}",
                request.index_name, index_key.partition.name, key.partition.name
            )));
        }
        indexes.push(IndexMeta {
            name: request.index_name.clone(),
            kind: IndexKind::Local,
            key: index_key,
            projection: parse_projection(&request.projection, &request.index_name)?,
            throughput: None,
            backfilling: false,
            version: None,
            throughput_changes: ThroughputChanges::default(),
        });
    }
    for (i, index) in indexes.iter().enumerate() {
        if indexes[..i].iter().any(|other| other.name == index.name) {
            return Err(invalid(format!("Duplicate index name: {}", index.name)));
        }
    }
    let used = |name: &str| key.is_key_attribute(name) || indexes.iter().any(|i| i.key.is_key_attribute(name));
    if let Some((unused, _)) = definitions.iter().find(|(name, _)| !used(name)) {
        let _ = unused;
        return Err(invalid(
            "Number of attributes in KeySchema does not exactly match number of attributes defined in AttributeDefinitions",
        ));
    }
    for tag in request.tags.iter().flatten() {
        validate_tag(&tag.key, &tag.value)?;
    }
    let tags: BTreeMap<String, String> = request
        .tags
        .iter()
        .flatten()
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect();
    validate_tag_count(tags.len())?;
    Ok(TableMeta {
        id,
        name: request.table_name.clone(),
        key,
        attribute_definitions: definitions,
        indexes,
        throughput,
        created_at_seconds: now_seconds,
        ttl: None,
        tags,
        deletion_protection: request.deletion_protection_enabled.unwrap_or(false),
        // The label is minted when the table is stored (`ops::tables::create_table`).
        stream: match request
            .stream_specification
            .as_ref()
            .map(crate::streams::parse_specification)
        {
            None | Some(Ok(crate::streams::Specification::Disable)) => None,
            Some(Ok(crate::streams::Specification::Enable(view_type))) => Some(crate::streams::TableStream {
                enabled: true,
                view_type,
                label: String::new(),
            }),
            Some(Err(error)) => return Err(error),
        },
        table_class: request.table_class.clone(),
        replicas: Vec::new(),
        key_hash: KeyHash::CURRENT,
        joined_below: 0,
        restore: None,
        pitr: None,
        pay_per_request_since_seconds: throughput.is_none().then_some(now_seconds),
        throughput_changes: ThroughputChanges::default(),
        deleted_indexes: Vec::new(),
        capacity_version: None,
    })
}

/// Tags a resource may carry (DynamoDB's tagging restrictions).
pub const TAGS_PER_RESOURCE_MAX: usize = 50;
/// Longest tag key, in Unicode characters.
pub const TAG_KEY_CHARS_MAX: usize = 128;
/// Longest tag value, in Unicode characters.
pub const TAG_VALUE_CHARS_MAX: usize = 256;

/// Checks a tag against DynamoDB's tagging restrictions: a key of 1 to 128 characters and a
/// value of at most 256, both of letters, digits, white space and `+ - = . _ : /` only, and
/// no key in the `aws:` prefix AWS reserves for itself.
pub fn validate_tag(key: &str, value: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_alphanumeric() || c.is_whitespace() || "+-=._:/".contains(c);
    let key_chars = key.chars().count();
    if key_chars == 0 || key_chars > TAG_KEY_CHARS_MAX {
        return Err(invalid(format!(
            "A tag key must be 1 to {TAG_KEY_CHARS_MAX} characters long; got {key_chars}"
        )));
    }
    if value.chars().count() > TAG_VALUE_CHARS_MAX {
        return Err(invalid(format!(
            "The value of tag '{key}' is longer than {TAG_VALUE_CHARS_MAX} characters"
        )));
    }
    if let Some(bad) = key.chars().chain(value.chars()).find(|&c| !allowed(c)) {
        return Err(invalid(format!(
            "Tag '{key}' holds the character '{}': tag keys and values may hold letters, digits, white space and + - = . _ : / only",
            bad.escape_default()
        )));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(invalid(format!(
            "Tag key '{key}' uses the prefix 'aws:', which is reserved for AWS"
        )));
    }
    Ok(())
}

/// Refuses more than [`TAGS_PER_RESOURCE_MAX`] tags on one resource.
pub fn validate_tag_count(count: usize) -> Result<(), ApiError> {
    if count > TAGS_PER_RESOURCE_MAX {
        return Err(invalid(format!(
            "The number of tags exceeds the limit of {TAGS_PER_RESOURCE_MAX} per resource ({count} given)"
        )));
    }
    Ok(())
}

/// Checks that an item carries the table's key attributes with the right types and sizes.
pub fn validate_key_attributes(schema: &KeySchema, item: &Item, missing_message: bool) -> Result<(), ApiError> {
    for (attribute, limit, role) in [(&schema.partition, PARTITION_KEY_BYTES_MAX, "partition")]
        .into_iter()
        .chain(schema.sort.as_ref().map(|s| (s, SORT_KEY_BYTES_MAX, "sort")))
    {
        let Some(value) = item.get(&attribute.name) else {
            return Err(if missing_message {
                invalid(format!("Missing the key {} in the item", attribute.name))
            } else {
                ApiError::validation("The provided key element does not match the schema")
            });
        };
        if !attribute.value_type.matches(value) {
            // An item names the attribute and both types; a Key parameter gets DynamoDB's
            // generic answer, as for a missing key attribute.
            return Err(if missing_message {
                invalid(format!(
                    "Type mismatch for key {} expected: {} actual: {}",
                    attribute.name,
                    attribute.value_type.descriptor(),
                    value.value_type().descriptor()
                ))
            } else {
                ApiError::validation("The provided key element does not match the schema")
            });
        }
        let size = value.size_bytes();
        if size == 0 {
            // DynamoDB's words, without the "were invalid:" prefix of its other key errors.
            return Err(ApiError::validation(format!(
                "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty {} value. Key: {}",
                if attribute.value_type == KeyType::S {
                    "string"
                } else {
                    "binary"
                },
                attribute.name
            )));
        }
        if size > limit {
            return Err(ApiError::validation(format!(
                "One or more parameter values were invalid: Size of {role} key attribute {} is {size} bytes, which exceeds the limit of {limit} bytes",
                attribute.name
            )));
        }
    }
    Ok(())
}

/// Checks a Key parameter: exactly the key attributes, nothing else.
pub fn validate_key(schema: &KeySchema, key: &Item) -> Result<(), ApiError> {
    let expected = 1 + usize::from(schema.sort.is_some());
    if key.len() != expected || !key.keys().all(|name| schema.is_key_attribute(name)) {
        return Err(ApiError::validation(
            "The provided key element does not match the schema",
        ));
    }
    validate_key_attributes(schema, key, false)
}

/// Index key attributes present on an item must have the declared type, not be empty and be
/// within the key size bounds (DynamoDB rejects the write otherwise); absent ones leave the
/// item out of that (sparse) index. The bounds hold per attribute and, for a multi-attribute
/// key, for the partition attributes together and the sort attributes together. An index still
/// being backfilled does not refuse: as DynamoDB documents, such an item is left out of the
/// index, and writes that violate its key are refused once the backfill has completed.
pub fn validate_index_key_types(table: &TableMeta, item: &Item) -> Result<(), ApiError> {
    for index in table.indexes.iter().filter(|i| !i.backfilling) {
        let groups = [
            (
                index.key.partition_attributes().collect::<Vec<_>>(),
                PARTITION_KEY_BYTES_MAX,
                "partition",
                "HASH",
            ),
            (
                index.key.sort_attributes().collect::<Vec<_>>(),
                SORT_KEY_BYTES_MAX,
                "sort",
                "RANGE",
            ),
        ];
        for (attributes, limit_bytes, role, key_type) in groups {
            let mut present = Vec::new();
            let mut total_bytes = 0;
            for attribute in &attributes {
                let Some(value) = item.get(&attribute.name) else {
                    continue;
                };
                if !attribute.value_type.matches(value) {
                    return Err(invalid(format!(
                        "Type mismatch for Index Key {} Expected: {} Actual: {} IndexName: {}",
                        attribute.name,
                        attribute.value_type.descriptor(),
                        value.value_type().descriptor(),
                        index.name
                    )));
                }
                if value.size_bytes() == 0 {
                    // DynamoDB's sentence has a lead-in of its own ("are not valid"), not the
                    // usual "were invalid:" one, and names the kind of the empty value.
                    let kind = if matches!(value, AttributeValue::B(_)) {
                        "binary"
                    } else {
                        "string"
                    };
                    return Err(ApiError::validation(format!(
                        "One or more parameter values are not valid. A value specified for a secondary index key is not supported. The AttributeValue for a key attribute cannot contain an empty {kind} value. IndexName: {}, IndexKey: {}",
                        index.name, attribute.name
                    )));
                }
                // The same bounds as the table's keys: an index key over them is refused, not
                // silently left out of the index.
                let size = value.size_bytes();
                if size > limit_bytes {
                    return Err(invalid(format!(
                        "Size of {role} key attribute {} of index {} is {size} bytes, which exceeds the limit of {limit_bytes} bytes",
                        attribute.name, index.name
                    )));
                }
                present.push(attribute.name.as_str());
                total_bytes += size;
            }
            if total_bytes > limit_bytes {
                // DynamoDB's words.
                return Err(ApiError::validation(format!(
                    "Aggregate size for {key_type} key attributes {} of index {} has exceeded limit {limit_bytes} bytes, with actual size {total_bytes} bytes",
                    present.join(", "),
                    index.name
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_below_one_names_each_member_with_its_value() {
        let refused = |read, write| {
            let request = ThroughputRequest {
                read_capacity_units: read,
                write_capacity_units: write,
            };
            parse_throughput(Some(request), false, "").expect_err("below 1").message
        };
        let write = refused(5, -7);
        assert_eq!(
            write,
            "1 validation error detected: Value '-7' at 'provisionedThroughput.writeCapacityUnits' failed to satisfy constraint: Member must have value greater than or equal to 1"
        );
        let both = refused(0, -1);
        assert!(
            both.starts_with("2 validation errors detected: Value '0' at 'provisionedThroughput.readCapacityUnits'"),
            "{both}"
        );
        assert!(
            both.contains("; Value '-1' at 'provisionedThroughput.writeCapacityUnits'"),
            "{both}"
        );
    }

    fn created() -> TableMeta {
        let request: CreateTableRequest = serde_json::from_value(json!({
            "TableName": "orders",
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "BillingMode": "PAY_PER_REQUEST"
        }))
        .expect("request");
        table_from_request(&request, 7, 0.0).expect("valid table")
    }

    #[test]
    fn new_tables_use_the_current_key_hash_and_old_metadata_keeps_fnv1a() {
        let meta = created();
        assert_eq!(meta.key_hash, KeyHash::CURRENT);
        let mut stored = serde_json::to_value(&meta).expect("serialize");
        let again: TableMeta = serde_json::from_value(stored.clone()).expect("round trip");
        assert_eq!(again.key_hash, KeyHash::CURRENT);
        // Metadata written before the field existed: the table's stored keys use FNV-1a.
        stored.as_object_mut().expect("object").remove("key_hash");
        let old: TableMeta = serde_json::from_value(stored).expect("old metadata");
        assert_eq!(old.key_hash, KeyHash::Fnv1a);
    }

    fn elements(schema: &[(&str, &str)]) -> Vec<KeySchemaElement> {
        schema
            .iter()
            .map(|(name, key_type)| KeySchemaElement {
                attribute_name: (*name).to_string(),
                key_type: (*key_type).to_string(),
            })
            .collect()
    }

    fn definitions(names: &[&str]) -> Vec<(String, KeyType)> {
        names.iter().map(|n| ((*n).to_string(), KeyType::S)).collect()
    }

    fn global_key(schema: &[(&str, &str)], defined: &[&str]) -> Result<KeySchema, ApiError> {
        parse_global_key_schema(
            &elements(schema),
            &definitions(defined),
            "globalSecondaryIndexes.member.keySchema",
        )
    }

    #[test]
    fn a_global_index_key_has_up_to_four_hash_then_up_to_four_range_attributes() {
        let names = ["h1", "h2", "h3", "h4", "r1", "r2", "r3", "r4"];
        let schema: Vec<(&str, &str)> = names
            .iter()
            .map(|n| (*n, if n.starts_with('h') { "HASH" } else { "RANGE" }))
            .collect();
        let key = global_key(&schema, &names).expect("4 HASH + 4 RANGE");
        assert!(key.is_multi_attribute());
        let partition: Vec<&str> = key.partition_attributes().map(|a| a.name.as_str()).collect();
        let sort: Vec<&str> = key.sort_attributes().map(|a| a.name.as_str()).collect();
        assert_eq!(partition, ["h1", "h2", "h3", "h4"]);
        assert_eq!(sort, ["r1", "r2", "r3", "r4"]);
        // DescribeTable shows the KeySchema as given.
        let shown: Vec<(String, String)> = key
            .to_json()
            .as_array()
            .expect("array")
            .iter()
            .map(|e| {
                (
                    e["AttributeName"].as_str().unwrap_or_default().to_string(),
                    e["KeyType"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let given: Vec<(String, String)> = schema.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        assert_eq!(shown, given);
        // Two HASH attributes and none RANGE; one HASH and several RANGE.
        let two = global_key(&[("a", "HASH"), ("b", "HASH")], &["a", "b"]).expect("2 HASH");
        assert_eq!((two.extra_partition.len(), two.sort.is_none()), (1, true));
        let ranges = global_key(&[("a", "HASH"), ("b", "RANGE"), ("c", "RANGE")], &["a", "b", "c"]).expect("1 + 2");
        assert_eq!((ranges.extra_partition.len(), ranges.extra_sort.len()), (0, 1));
        // A plain key stays plain.
        let plain = global_key(&[("a", "HASH"), ("b", "RANGE")], &["a", "b"]).expect("plain");
        assert!(!plain.is_multi_attribute());
    }

    #[test]
    fn multi_attribute_key_schemas_are_validated_with_dynamodb_messages() {
        let message =
            |schema: &[(&str, &str)], defined: &[&str]| global_key(schema, defined).expect_err("invalid").message;
        let five_hash: Vec<(&str, &str)> = ["a", "b", "c", "d", "e"].iter().map(|n| (*n, "HASH")).collect();
        assert!(
            message(&five_hash, &["a", "b", "c", "d", "e"])
                .contains("Too many partition keys. GSI can have at most 4 partition keys")
        );
        let five_range: Vec<(&str, &str)> = std::iter::once(("h", "HASH"))
            .chain(["a", "b", "c", "d", "e"].iter().map(|n| (*n, "RANGE")))
            .collect();
        assert!(
            message(&five_range, &["h", "a", "b", "c", "d", "e"])
                .contains("Too many sort keys. GSI can have at most 4 sort keys")
        );
        assert!(
            message(&[("a", "HASH"), ("b", "RANGE"), ("c", "HASH")], &["a", "b", "c"])
                .contains("every HASH key element must precede the RANGE key elements")
        );
        assert!(
            message(&[("b", "RANGE"), ("a", "HASH")], &["a", "b"])
                .contains("The first KeySchemaElement is not a HASH key type")
        );
        assert!(message(&[("a", "HASH"), ("a", "HASH")], &["a"]).contains("Two keys can not have the same name: a"));
        assert!(
            message(&[("a", "HASH"), ("b", "HASH"), ("a", "RANGE")], &["a", "b"])
                .contains("Two keys can not have the same name: a")
        );
        assert!(
            message(&[("a", "HASH"), ("b", "HASH")], &["a"])
                .contains("Some index key attributes are not defined in AttributeDefinitions. Keys: [b]")
        );
        assert!(
            message(&[("a", "HASH"), ("b", "HASH"), ("c", "PARTITION")], &["a", "b", "c"])
                .contains("Member must satisfy enum value set: [HASH, RANGE]")
        );
        // Tables and local indexes keep one HASH and at most one RANGE attribute.
        let table = parse_key_schema(
            &elements(&[("a", "HASH"), ("b", "HASH")]),
            &definitions(&["a", "b"]),
            "keySchema",
        );
        assert!(
            table
                .expect_err("two HASH")
                .message
                .contains("The second KeySchemaElement is not a RANGE key type")
        );
        let table = parse_key_schema(
            &elements(&[("a", "HASH"), ("b", "RANGE"), ("c", "RANGE")]),
            &definitions(&["a", "b", "c"]),
            "keySchema",
        );
        assert!(
            table
                .expect_err("three")
                .message
                .contains("Member must have length less than or equal to 2")
        );
    }

    #[test]
    fn index_key_values_are_bounded_per_attribute_and_together() {
        let request: CreateTableRequest = serde_json::from_value(json!({
            "TableName": "matches",
            "AttributeDefinitions": [
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "h1", "AttributeType": "S"},
                {"AttributeName": "h2", "AttributeType": "N"},
                {"AttributeName": "r1", "AttributeType": "S"},
                {"AttributeName": "r2", "AttributeType": "S"}
            ],
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [{
                "IndexName": "by-round",
                "KeySchema": [
                    {"AttributeName": "h1", "KeyType": "HASH"}, {"AttributeName": "h2", "KeyType": "HASH"},
                    {"AttributeName": "r1", "KeyType": "RANGE"}, {"AttributeName": "r2", "KeyType": "RANGE"}
                ],
                "Projection": {"ProjectionType": "ALL"}
            }],
            "BillingMode": "PAY_PER_REQUEST"
        }))
        .expect("request");
        let table = table_from_request(&request, 9, 0.0).expect("valid table");
        let item = |pairs: &[(&str, AttributeValue)]| -> Item {
            pairs.iter().map(|(n, v)| ((*n).to_string(), v.clone())).collect()
        };
        let text = |len: usize| AttributeValue::S("x".repeat(len));
        // Missing attributes leave the item out of the index; they are no error.
        validate_index_key_types(&table, &item(&[("pk", text(1)), ("h1", text(3))])).expect("sparse");
        let wrong = validate_index_key_types(&table, &item(&[("h2", text(1))])).expect_err("h2 is N");
        assert!(
            wrong
                .message
                .contains("Type mismatch for Index Key h2 Expected: N Actual: S IndexName: by-round"),
            "{}",
            wrong.message
        );
        // Each sort value may have 1024 bytes, but the sort values together too.
        validate_index_key_types(&table, &item(&[("r1", text(SORT_KEY_BYTES_MAX))])).expect("one at the bound");
        let together = validate_index_key_types(&table, &item(&[("r1", text(600)), ("r2", text(600))]))
            .expect_err("1200 bytes of sort key");
        assert_eq!(
            together.message,
            "Aggregate size for RANGE key attributes r1, r2 of index by-round has exceeded limit 1024 bytes, with actual size 1200 bytes"
        );
        let one =
            validate_index_key_types(&table, &item(&[("h1", text(PARTITION_KEY_BYTES_MAX + 1))])).expect_err("over");
        assert!(
            one.message
                .contains("Size of partition key attribute h1 of index by-round is 2049 bytes"),
            "{}",
            one.message
        );
    }

    /// A global index on `attribute` (S), versioned `(hlc, region)` when `hlc` is given.
    fn global_index(name: &str, attribute: &str, version: Option<(u64, &str)>) -> IndexMeta {
        IndexMeta {
            name: name.into(),
            kind: IndexKind::Global,
            key: KeySchema::simple(
                KeyAttribute {
                    name: attribute.into(),
                    value_type: KeyType::S,
                },
                None,
            ),
            projection: Projection::All,
            throughput: None,
            backfilling: false,
            version: version.map(|(hlc, region)| (hlc, region.to_string())),
            throughput_changes: ThroughputChanges::default(),
        }
    }

    /// `created()` (key `pk`) with these global indexes and deleted ones, attributes defined.
    fn with_indexes(live: Vec<IndexMeta>, deleted: Vec<IndexMeta>) -> TableMeta {
        let mut table = created();
        for index in &live {
            table
                .attribute_definitions
                .push((index.key.partition.name.clone(), KeyType::S));
        }
        table.indexes = live;
        table.deleted_indexes = deleted;
        table
    }

    /// What a replica holding `held` holds after taking `incoming`'s indexes.
    fn take(held: &TableMeta, incoming: &TableMeta) -> (TableMeta, IndexAlignment) {
        let aligned = held.align_indexes(incoming);
        let mut next = held.clone();
        next.indexes = aligned.indexes.clone();
        next.deleted_indexes = aligned.deleted_indexes.clone();
        next.attribute_definitions = aligned.attribute_definitions.clone();
        (next, aligned)
    }

    fn names(table: &TableMeta) -> Vec<&str> {
        table.indexes.iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn a_newer_index_creation_or_deletion_is_taken_and_a_stale_one_changes_nothing() {
        let east = with_indexes(vec![global_index("by_day", "day", Some((10, "us-east-1")))], vec![]);
        let south = with_indexes(vec![], vec![]);
        // Created there: created here, to be built from the items, its key attribute defined.
        let (south, aligned) = take(&south, &east);
        assert_eq!(
            (aligned.created.as_slice(), aligned.dropped.is_empty()),
            (&["by_day".to_string()][..], true)
        );
        assert_eq!(names(&south), ["by_day"]);
        assert!(south.attribute_definitions.contains(&("day".to_string(), KeyType::S)));
        assert_eq!(south.index_version("by_day"), Some(&(10, "us-east-1".to_string())));
        // The same definition again (a replay, or sent again): nothing.
        let again = south.align_indexes(&east);
        assert!(again.changes_nothing(&south) && again.created.is_empty() && again.dropped.is_empty());

        // Deleted in south later: east drops it and keeps the delete.
        let deleted = global_index("by_day", "day", Some((20, "ap-south-1")));
        let south = with_indexes(vec![], vec![deleted]);
        let (east, aligned) = take(&east, &south);
        assert_eq!(
            (aligned.created.is_empty(), aligned.dropped.as_slice()),
            (true, &["by_day".to_string()][..])
        );
        assert!(east.indexes.is_empty());
        assert!(
            !east.attribute_definitions.iter().any(|(n, _)| n == "day"),
            "no index uses it"
        );
        assert_eq!(east.index_version("by_day"), Some(&(20, "ap-south-1".to_string())));
        // A stale definition that still holds the index (sent before the delete) does not
        // bring it back.
        let stale = with_indexes(vec![global_index("by_day", "day", Some((10, "us-east-1")))], vec![]);
        let after = east.align_indexes(&stale);
        assert!(after.changes_nothing(&east) && after.created.is_empty());
    }

    #[test]
    fn an_unversioned_definition_a_previous_builds_never_creates_or_drops_an_index() {
        let held = with_indexes(vec![global_index("by_day", "day", Some((10, "us-east-1")))], vec![]);
        // A previous build's definition: without the index, or with another one, unversioned.
        for incoming in [
            with_indexes(vec![], vec![]),
            with_indexes(vec![global_index("by_shop", "shop", None)], vec![]),
        ] {
            let aligned = held.align_indexes(&incoming);
            assert!(aligned.changes_nothing(&held), "{aligned:?}");
            assert!(aligned.created.is_empty() && aligned.dropped.is_empty());
        }
        // Nor an unversioned index of the replica (made with the table) is dropped by a
        // versioned definition that lacks it without a delete.
        let held = with_indexes(vec![global_index("by_day", "day", None)], vec![]);
        let incoming = with_indexes(vec![global_index("by_shop", "shop", Some((3, "us-east-1")))], vec![]);
        let (next, aligned) = take(&held, &incoming);
        assert_eq!(names(&next), ["by_day", "by_shop"]);
        assert_eq!(aligned.created, ["by_shop"]);
    }

    #[test]
    fn concurrent_index_changes_in_two_regions_converge() {
        // Different indexes created at once in two regions: both everywhere.
        let east = with_indexes(vec![global_index("by_day", "day", Some((10, "us-east-1")))], vec![]);
        let south = with_indexes(vec![global_index("by_shop", "shop", Some((10, "ap-south-1")))], vec![]);
        let (east_after, _) = take(&east, &south);
        let (south_after, _) = take(&south, &east);
        let sorted = |t: &TableMeta| {
            let mut n: Vec<String> = t.indexes.iter().map(|i| i.name.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(sorted(&east_after), ["by_day", "by_shop"]);
        assert_eq!(sorted(&south_after), sorted(&east_after));
        assert_eq!(east_after.index_versions(), south_after.index_versions());

        // One index created with two definitions at once: the later change wins everywhere
        // (here a tie of clocks, broken by region: us-east-1 > ap-south-1), the replaced one
        // rebuilt from the items.
        let east = with_indexes(vec![global_index("by_day", "day", Some((10, "us-east-1")))], vec![]);
        let south = with_indexes(vec![global_index("by_day", "date", Some((10, "ap-south-1")))], vec![]);
        let (east_after, aligned) = take(&east, &south);
        assert!(aligned.changes_nothing(&east) && aligned.created.is_empty() && aligned.dropped.is_empty());
        let (south_after, aligned) = take(&south, &east);
        let by_day = ["by_day".to_string()];
        assert_eq!(
            (aligned.dropped.as_slice(), aligned.created.as_slice()),
            (&by_day[..], &by_day[..])
        );
        // The same definitions; the replaced one is filled again from the items here.
        let settled = |t: &TableMeta| -> Vec<IndexMeta> {
            t.indexes
                .iter()
                .map(|i| IndexMeta {
                    backfilling: false,
                    ..i.clone()
                })
                .collect()
        };
        assert_eq!(settled(&east_after), settled(&south_after));
        assert!(south_after.index("by_day").is_some_and(|i| i.backfilling));
        assert!(east_after.index("by_day").is_some_and(|i| !i.backfilling));
        assert_eq!(
            south_after.index("by_day").map(|i| i.key.partition.name.as_str()),
            Some("day")
        );
        assert!(
            south_after
                .attribute_definitions
                .contains(&("day".to_string(), KeyType::S))
        );
        assert!(!south_after.attribute_definitions.iter().any(|(name, _)| name == "date"));

        // Created in one region, deleted in the other at once: the later change wins.
        let gone = global_index("by_day", "day", Some((12, "ap-south-1")));
        let south = with_indexes(vec![], vec![gone]);
        let east = with_indexes(vec![global_index("by_day", "day", Some((11, "us-east-1")))], vec![]);
        let (east_after, _) = take(&east, &south);
        let (south_after, _) = take(&south, &east);
        assert!(east_after.indexes.is_empty() && south_after.indexes.is_empty());
        assert_eq!(east_after.deleted_indexes, south_after.deleted_indexes);

        // The same definition made in two regions: kept, nothing rebuilt, one version.
        let east = with_indexes(vec![global_index("by_day", "day", Some((10, "us-east-1")))], vec![]);
        let south = with_indexes(vec![global_index("by_day", "day", Some((11, "ap-south-1")))], vec![]);
        let (east_after, aligned) = take(&east, &south);
        assert!(aligned.created.is_empty() && aligned.dropped.is_empty());
        assert_eq!(
            east_after.index_version("by_day"),
            Some(&(11, "ap-south-1".to_string()))
        );
    }

    #[test]
    fn an_index_change_not_yet_in_every_replica_is_described_in_transition() {
        let mut table = with_indexes(
            vec![global_index("by_day", "day", Some((10, "us-east-1")))],
            vec![global_index("by_shop", "shop", Some((11, "us-east-1")))],
        );
        table.replicas = vec!["ap-south-1".into(), "us-east-1".into()];
        let statuses = |unconfirmed: &dyn Fn(&IndexMeta) -> bool| -> Vec<(String, String)> {
            let description = table.describe(
                "us-east-1",
                "ACTIVE",
                TableStats::default(),
                &|_| TableStats::default(),
                unconfirmed,
            );
            description["GlobalSecondaryIndexes"]
                .as_array()
                .map(|indexes| {
                    indexes
                        .iter()
                        .map(|i| {
                            (
                                i["IndexName"].as_str().unwrap_or_default().to_string(),
                                i["IndexStatus"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let pair = |name: &str, status: &str| (name.to_string(), status.to_string());
        // Confirmed everywhere: the live index is ACTIVE, the deleted one is not shown.
        assert_eq!(statuses(&|_| false), [pair("by_day", "ACTIVE")]);
        // Not yet: CREATING, and the deleted one DELETING.
        assert_eq!(
            statuses(&|_| true),
            [pair("by_day", "CREATING"), pair("by_shop", "DELETING")]
        );
    }

    #[test]
    fn local_indexes_are_never_aligned() {
        let mut held = with_indexes(vec![], vec![]);
        let mut local = global_index("by_sort", "pk", None);
        local.kind = IndexKind::Local;
        held.indexes.push(local.clone());
        let mut incoming = with_indexes(vec![], vec![]);
        let mut deleted = local;
        deleted.kind = IndexKind::Global;
        deleted.version = Some((99, "us-east-1".into()));
        incoming.deleted_indexes.push(deleted);
        let aligned = held.align_indexes(&incoming);
        assert_eq!(aligned.indexes, held.indexes);
        assert!(aligned.dropped.is_empty());
    }

    /// `created()` provisioned at `read`/`write` (`None`: on demand) with a global index
    /// `by_day` provisioned at `index`, its capacity versioned `(hlc, region)` when given.
    fn with_capacity(
        throughput: Option<(u64, u64)>,
        index: Option<(u64, u64)>,
        version: Option<(u64, &str)>,
    ) -> TableMeta {
        let mut table = with_indexes(vec![global_index("by_day", "day", None)], vec![]);
        let throughput_of = |(read, write): (u64, u64)| Throughput { read, write };
        table.throughput = throughput.map(throughput_of);
        table.indexes[0].throughput = index.map(throughput_of);
        table.capacity_version = version.map(|(hlc, region)| (hlc, region.to_string()));
        table.pay_per_request_since_seconds = throughput.is_none().then_some(table.created_at_seconds);
        table
    }

    fn capacity(table: &TableMeta) -> (Option<Throughput>, Option<Throughput>) {
        (table.throughput, table.indexes[0].throughput)
    }

    fn units(read: u64, write: u64) -> Option<Throughput> {
        Some(Throughput { read, write })
    }

    /// What `global::receive` does with a peer's definition (indexes, then capacity).
    fn receive(held: &TableMeta, incoming: &TableMeta) -> TableMeta {
        let (mut next, _) = take(held, incoming);
        next.align_capacity(incoming);
        next
    }

    /// Two regions: east deletes by_day and creates it again with another
    /// projection at 5/10 (index version 40) while south raises by_day's write units to 7
    /// (capacity version 50); the two definitions cross.
    #[test]
    fn an_index_replaced_with_another_projection_keeps_its_creations_units_against_a_change_to_the_one_before() {
        let mut base = with_capacity(Some((5, 5)), Some((5, 5)), Some((10, "us-east-1")));
        base.indexes[0].version = Some((1, "us-east-1".into()));
        let mut east = base.clone();
        east.indexes[0].projection = Projection::KeysOnly;
        east.indexes[0].throughput = units(5, 10);
        east.indexes[0].version = Some((40, "us-east-1".into()));
        let mut south = base.clone();
        south.indexes[0].throughput = units(5, 7);
        south.capacity_version = Some((50, "ap-south-1".into()));
        let south_after = receive(&south, &east);
        let east_after = receive(&east, &south);
        assert_eq!(east_after.capacity_version, south_after.capacity_version);
        assert_eq!(east_after.indexes[0].version, south_after.indexes[0].version);
        assert_eq!(
            east_after.follows_capacity(),
            south_after.follows_capacity(),
            "same capacity version, same index incarnation"
        );
    }

    /// Two regions: as `an_index_created_again_with_the_same_key_brings_its_write_units`,
    /// but south receives east's delete (version 35) before its create again (version 40, same
    /// key and projection, 5/10); south's capacity change (by_day write 7, version 50) was made
    /// before either reached it and its definition reaches east after east's create.
    #[test]
    fn an_index_created_again_after_its_delete_reached_the_replica_separately_ends_the_same_in_both() {
        let mut base = with_capacity(Some((5, 5)), Some((5, 5)), Some((10, "us-east-1")));
        base.indexes[0].version = Some((1, "us-east-1".into()));
        let mut east_deleted = base.clone();
        let mut gone = east_deleted.indexes.remove(0);
        gone.version = Some((35, "us-east-1".into()));
        east_deleted.deleted_indexes.push(gone);
        let mut east = base.clone();
        east.indexes[0].throughput = units(5, 10);
        east.indexes[0].version = Some((40, "us-east-1".into()));
        let mut south = base.clone();
        south.indexes[0].throughput = units(5, 7);
        south.capacity_version = Some((50, "ap-south-1".into()));
        let south_after = receive(&receive(&south, &east_deleted), &east);
        let east_after = receive(&east, &south);
        assert_eq!(east_after.capacity_version, south_after.capacity_version);
        assert_eq!(east_after.indexes[0].version, south_after.indexes[0].version);
        assert_eq!(east_after.follows_capacity(), south_after.follows_capacity());
    }

    /// Three regions, all on demand at capacity version 10): south switches to
    /// provisioned 5/5 (version 25); east, still on demand, creates by_shop (version 30, no
    /// units); west takes south's switch, then raises the table's write to 9 (version 50)
    /// before by_shop reaches it. Each region ends with every definition.
    #[test]
    fn an_index_made_on_demand_elsewhere_is_described_with_the_tables_units_wherever_they_go() {
        let base = with_capacity(None, None, Some((10, "us-east-1")));
        let south = with_capacity(Some((5, 5)), Some((5, 5)), Some((25, "ap-south-1")));
        let mut east = base.clone();
        east.attribute_definitions.push(("shop".into(), KeyType::S));
        east.indexes
            .push(global_index("by_shop", "shop", Some((30, "us-east-1"))));
        let mut west = receive(&base, &south);
        west.throughput = units(5, 9);
        west.capacity_version = Some((50, "eu-west-1".into()));
        // South: east's index (given the table's units then), then west's raise.
        let south_after = receive(&receive(&south, &east), &west);
        // West: east's index.
        let west_after = receive(&west, &east);
        // East: south's switch, then west's raise.
        let east_after = receive(&receive(&east, &south), &west);
        let shop = |t: &TableMeta| t.index("by_shop").and_then(|i| t.index_throughput(i)).map(|t| t.write);
        assert_eq!(
            [&south_after, &west_after, &east_after].map(|t| t.capacity_version.clone()),
            [0, 1, 2].map(|_| Some((50, "eu-west-1".to_string())))
        );
        assert_eq!(
            [shop(&south_after), shop(&west_after), shop(&east_after)],
            [Some(9), Some(9), Some(9)],
            "by_shop's write units in south, west, east at one capacity version"
        );
    }

    #[test]
    fn a_newer_capacity_change_is_taken_and_read_capacity_stays_the_replicas_own() {
        let east = with_capacity(Some((5, 10)), Some((3, 4)), Some((10, "us-east-1")));
        let mut south = with_capacity(Some((7, 1)), Some((9, 1)), None);
        assert!(south.align_capacity(&east));
        // The peer's write capacity, of the table and of the index; this replica's reads.
        assert_eq!(capacity(&south), (units(7, 10), units(9, 4)));
        assert_eq!(south.capacity_version, Some((10, "us-east-1".to_string())));
        // The same definition again (a replay, or sent again): nothing.
        let before = south.clone();
        assert!(!south.align_capacity(&east));
        assert_eq!(south, before);
        // A stale definition (sent before the change it lost to) changes nothing.
        let stale = with_capacity(Some((5, 99)), Some((3, 99)), Some((9, "us-east-1")));
        assert!(!south.align_capacity(&stale));
        assert_eq!(south, before);
        // An index only this replica holds keeps its own.
        let mut lone = with_capacity(Some((7, 1)), Some((9, 1)), None);
        lone.indexes[0].name = "by_shop".into();
        assert!(lone.align_capacity(&east));
        assert_eq!(capacity(&lone), (units(7, 10), units(9, 1)));
    }

    #[test]
    fn an_unversioned_definition_a_previous_builds_never_changes_the_capacity() {
        // A previous build's definition carries no capacity version: on demand, or another
        // throughput, it changes neither a replica with a versioned capacity nor one without.
        for incoming in [
            with_capacity(None, None, None),
            with_capacity(Some((50, 50)), Some((50, 50)), None),
        ] {
            for held in [
                with_capacity(Some((5, 10)), Some((3, 4)), Some((10, "us-east-1"))),
                with_capacity(Some((5, 10)), Some((3, 4)), None),
            ] {
                let mut next = held.clone();
                assert!(!next.align_capacity(&incoming));
                assert_eq!(next, held);
            }
        }
    }

    #[test]
    fn a_billing_mode_switch_follows_with_when_the_table_became_on_demand() {
        // Created provisioned everywhere, never on demand: no BillingModeSummary.
        let mut south = with_capacity(Some((7, 2)), Some((9, 2)), None);
        assert_eq!(south.billing_mode_summary(), None);
        // Switched to on demand in east at 500.
        let mut east = with_capacity(None, None, Some((20, "us-east-1")));
        east.pay_per_request_since_seconds = Some(500.0);
        assert!(south.align_capacity(&east));
        assert_eq!(capacity(&south), (None, None));
        assert_eq!(
            south.billing_mode_summary(),
            Some(json!({"BillingMode": "PAY_PER_REQUEST", "LastUpdateToPayPerRequestDateTime": 500.0}))
        );
        // Back to provisioned in east: south, which had no read capacity of its own while on
        // demand, takes east's; it shows when it was last on demand, as east does.
        let mut east = with_capacity(Some((5, 6)), Some((3, 6)), Some((30, "us-east-1")));
        east.pay_per_request_since_seconds = Some(500.0);
        assert!(south.align_capacity(&east));
        assert_eq!(capacity(&south), (units(5, 6), units(3, 6)));
        assert_eq!(south.billing_mode_summary(), east.billing_mode_summary());
        assert_eq!(
            south.billing_mode_summary(),
            Some(json!({"BillingMode": "PROVISIONED", "LastUpdateToPayPerRequestDateTime": 500.0}))
        );
        // A replica on demand since its creation (an older catalog: no date kept) that takes
        // the capacity of a peer never on demand shows what the peer shows: no date. (A region
        // that switches to provisioned keeps its date, its creation's when it had none, so a
        // winner that was on demand carries one.)
        let mut old = with_capacity(None, None, None);
        old.pay_per_request_since_seconds = None;
        let never = with_capacity(Some((1, 1)), Some((1, 1)), Some((5, "us-east-1")));
        assert!(old.align_capacity(&never));
        assert_eq!(old.billing_mode_summary(), never.billing_mode_summary());
        assert_eq!(old.billing_mode_summary(), None);
    }

    /// East switched to on demand (capacity version 20) while south, which had not received
    /// it, created global index by_shop at 5/5: both end with the same capacity, the index
    /// without provisioned throughput in both (east took it with units, then left them out).
    #[test]
    fn a_peers_provisioned_index_taken_by_an_on_demand_replica_has_no_units_there_either() {
        let east = with_capacity(None, None, Some((20, "us-east-1")));
        let mut south = with_capacity(Some((5, 5)), Some((5, 5)), None);
        let mut shop = global_index("by_shop", "shop", Some((30, "ap-south-1")));
        shop.throughput = units(5, 5);
        south.attribute_definitions.push(("shop".into(), KeyType::S));
        south.indexes.push(shop);
        let (mut east_after, _) = take(&east, &south);
        assert!(!east_after.align_capacity(&south), "east's capacity is newer");
        let (mut south_after, _) = take(&south, &east);
        assert!(south_after.align_capacity(&east));
        let shop_of = |t: &TableMeta| t.index("by_shop").expect("by_shop").throughput;
        assert_eq!((shop_of(&east_after), shop_of(&south_after)), (None, None));
        assert_eq!(east_after.capacity_version, south_after.capacity_version);
        assert_eq!(east_after.follows_capacity(), south_after.follows_capacity());
    }

    /// East raised its write capacity (version 10, never on demand) while south switched to on
    /// demand at 500 (version 9): east wins in both, and south keeps no date of its lost switch.
    #[test]
    fn a_lost_switch_to_on_demand_leaves_no_date_behind() {
        let mut east = with_capacity(Some((5, 20)), Some((3, 20)), Some((10, "us-east-1")));
        east.pay_per_request_since_seconds = None;
        let mut south = with_capacity(None, None, Some((9, "ap-south-1")));
        south.pay_per_request_since_seconds = Some(500.0);
        let mut east_after = east.clone();
        assert!(!east_after.align_capacity(&south));
        assert!(south.align_capacity(&east));
        assert_eq!(east_after.follows_capacity(), south.follows_capacity());
        assert_eq!(east_after.billing_mode_summary(), south.billing_mode_summary());
        assert_eq!(south.billing_mode_summary(), None);
    }

    /// South holds by_day at 5/5 (created at version 1). East deleted it and created it again,
    /// same key and projection, at 5/10 (version 40) while south was away: south takes the new
    /// write units with the new creation; a capacity change in south newer than that creation
    /// keeps south's (east then takes them with south's capacity).
    #[test]
    fn an_index_created_again_with_the_same_key_brings_its_write_units() {
        let mut south = with_capacity(Some((5, 5)), Some((5, 5)), None);
        south.indexes[0].version = Some((1, "us-east-1".into()));
        let mut east = with_capacity(Some((5, 5)), Some((5, 10)), None);
        east.indexes[0].version = Some((40, "us-east-1".into()));
        let (mut south_after, _) = take(&south, &east);
        assert!(!south_after.align_capacity(&east));
        assert_eq!(south_after.indexes[0].version, east.indexes[0].version);
        assert_eq!(south_after.indexes[0].throughput, units(5, 10));
        assert_eq!(east.follows_capacity(), south_after.follows_capacity());

        let mut south = with_capacity(Some((5, 5)), Some((5, 7)), Some((50, "ap-south-1")));
        south.indexes[0].version = Some((1, "us-east-1".into()));
        let (mut south_after, _) = take(&south, &east);
        assert!(!south_after.align_capacity(&east));
        assert_eq!(
            south_after.indexes[0].throughput,
            units(5, 7),
            "south's newer capacity change"
        );
        let (mut east_after, _) = take(&east, &south_after);
        assert!(east_after.align_capacity(&south_after));
        assert_eq!(east_after.follows_capacity(), south_after.follows_capacity());
    }

    #[test]
    fn concurrent_capacity_changes_in_two_regions_converge() {
        // East raised its write capacity while south switched to on demand, at the same clock:
        // the tie is broken by region (us-east-1 > ap-south-1), the same way in both.
        let east = with_capacity(Some((5, 20)), Some((3, 20)), Some((10, "us-east-1")));
        let south = with_capacity(None, None, Some((10, "ap-south-1")));
        let (mut east_after, mut south_after) = (east.clone(), south.clone());
        assert!(!east_after.align_capacity(&south));
        assert!(south_after.align_capacity(&east));
        assert_eq!(east_after.follows_capacity(), south_after.follows_capacity());
        assert_eq!(east_after.capacity_version, south_after.capacity_version);
        // A later change in south wins in both.
        let south_later = with_capacity(None, None, Some((11, "ap-south-1")));
        assert!(east_after.align_capacity(&south_later));
        assert!(south_after.align_capacity(&south_later));
        assert_eq!(capacity(&east_after), (None, None));
        assert_eq!(east_after.follows_capacity(), south_after.follows_capacity());
    }

    #[test]
    fn only_the_billing_mode_and_write_capacities_are_a_capacity_change() {
        let base = with_capacity(Some((5, 10)), Some((3, 4)), None);
        let changed = |change: &dyn Fn(&mut TableMeta)| {
            let mut next = base.clone();
            change(&mut next);
            base.capacity_changed(&next)
        };
        assert!(!changed(&|_| {}));
        assert!(
            !changed(&|t| t.throughput = units(6, 10)),
            "read capacity is the replica's own"
        );
        assert!(!changed(&|t| t.indexes[0].throughput = units(8, 4)));
        assert!(changed(&|t| t.throughput = units(5, 11)));
        assert!(changed(&|t| t.throughput = None), "to on demand");
        assert!(changed(&|t| t.indexes[0].throughput = units(3, 5)));
        // An index created or deleted is its own change (`IndexMeta::version`).
        assert!(!changed(&|t| t.indexes.clear()));
        assert!(!changed(&|t| t.indexes.push(global_index(
            "by_shop",
            "shop",
            Some((1, "us-east-1"))
        ))));
        // And the capacity's version counts among the settings a definition carries.
        let versioned = with_capacity(None, None, Some((77, "us-east-1")));
        assert_eq!(versioned.newest_setting_hlc(), Some(77));
    }

    /// A table definition as the catalog held it before multi-attribute keys existed (a GSI
    /// with a HASH and a RANGE attribute): it still reads, and is written back unchanged.
    const OLD_CATALOG_ENTRY: &str = r#"{"id":3,"name":"orders","key":{"partition":{"name":"customer","value_type":"S"},"sort":{"name":"order","value_type":"N"}},"attribute_definitions":[["customer","S"],["order","N"],["status","S"]],"indexes":[{"name":"by-status","kind":"Global","key":{"partition":{"name":"status","value_type":"S"},"sort":{"name":"order","value_type":"N"}},"projection":"KeysOnly","throughput":null,"backfilling":false}],"throughput":null,"created_at_seconds":1700000000.0,"ttl":null,"tags":{},"deletion_protection":false,"stream":null,"table_class":null,"replicas":[],"key_hash":"fnv1a-fmix32","joined_below":0,"restore":null}"#;

    #[test]
    fn catalog_entries_from_before_multi_attribute_keys_still_read() {
        let old: TableMeta = serde_json::from_str(OLD_CATALOG_ENTRY).expect("old catalog entry");
        assert_eq!(old.capacity_version, None, "its capacity never changed since versions");
        let index = old.index("by-status").expect("index");
        assert!(!index.key.is_multi_attribute());
        assert_eq!(index.key.partition.name, "status");
        assert_eq!(index.key.sort.as_ref().map(|s| s.name.as_str()), Some("order"));
        // Written back in the same form: an older build can still read it.
        let again: Value = serde_json::to_value(&old).expect("serialize");
        let original: Value = serde_json::from_str(OLD_CATALOG_ENTRY).expect("json");
        assert_eq!(again, original);
        // An on-demand table from before LastUpdateToPayPerRequestDateTime was kept shows its
        // creation time there, as it did.
        assert_eq!(
            old.billing_mode_summary(),
            Some(json!({"BillingMode": "PAY_PER_REQUEST", "LastUpdateToPayPerRequestDateTime": 1700000000.0}))
        );
        // A multi-attribute key carries its other attributes, and round-trips.
        let mut multi = old.clone();
        multi.indexes[0].key = global_key(
            &[("status", "HASH"), ("customer", "HASH"), ("order", "RANGE")],
            &["status", "customer", "order"],
        )
        .expect("multi");
        let stored = serde_json::to_string(&multi).expect("serialize");
        assert!(stored.contains("extra_partition"), "{stored}");
        let read: TableMeta = serde_json::from_str(&stored).expect("read back");
        assert_eq!(read.indexes[0].key, multi.indexes[0].key);
    }
}
