//! Table-level operations: create, delete, describe, list, update, tags, TTL.

use dynamo_protocol::{ApiError, ErrorKind};
use serde::Deserialize;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{LIST_TABLES_LIMIT_MAX, Store};
use crate::catalog::{
    self, CreateTableRequest, IndexKind, IndexRequest, TableMeta, TagRequest, ThroughputRequest, TtlSpec,
};
use crate::global::Followed;

/// A table being restored from a backup is CREATING: DynamoDB refuses to change or delete it.
fn refuse_restoring(meta: &TableMeta) -> Result<(), ApiError> {
    if meta.restoring() {
        return Err(ApiError::new(
            ErrorKind::ResourceInUse,
            format!(
                "Attempt to change a resource which is still in use: Table is being restored: {}",
                meta.name
            ),
        ));
    }
    Ok(())
}

/// The table a request's TableName names, checked to be a valid name first.
fn named_table(store: &Store, name: &str) -> Result<std::sync::Arc<TableMeta>, ApiError> {
    catalog::validate_table_name(name, "tableName")?;
    store.engine().table(name).ok_or_else(|| not_found(name))
}

fn not_found(name: &str) -> ApiError {
    ApiError::resource_not_found(format!("Requested resource not found: Table: {name} not found"))
}

/// The global indexes of a table description, to change as the answer needs (`get_mut`:
/// indexing a JSON object mutably would add a null member where none is).
fn global_indexes_mut(description: &mut Value) -> impl Iterator<Item = &mut Value> {
    description
        .get_mut("GlobalSecondaryIndexes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

pub(crate) fn describe(store: &Store, meta: &TableMeta, status: &str) -> Value {
    let engine = store.engine();
    // A global table whose billing mode or write capacity was changed here and some replica has
    // not confirmed yet is UPDATING, as DynamoDB shows a table while its capacity changes.
    let capacity_unconfirmed = meta.is_global()
        && catalog::unconfirmed(
            Followed::Capacity.version(meta),
            engine.setting_value(&Followed::Capacity.mark(meta.id)),
        );
    let status = if status == "ACTIVE" && capacity_unconfirmed {
        "UPDATING"
    } else {
        status
    };
    // A global index created or deleted here that some replica has not confirmed yet is
    // CREATING or DELETING (see `align`).
    let unconfirmed = |index: &catalog::IndexMeta| {
        meta.is_global()
            && index.version.is_some()
            && catalog::unconfirmed(
                index.version.as_ref(),
                engine.setting_value(&Followed::Index(&index.name).mark(meta.id)),
            )
    };
    let mut description = meta.describe(
        engine.region(),
        status,
        engine.stats(meta.id, None),
        &|index| engine.stats(meta.id, Some(index)),
        &unconfirmed,
    );
    // The dates of the last throughput changes, and today's decreases (by the store's clock).
    let now_seconds = engine.now_unix_ms() as f64 / 1000.0;
    // (`get_mut`: indexing a JSON object mutably would add a null member where none is.)
    if let Some(throughput) = description.get_mut("ProvisionedThroughput") {
        meta.throughput_changes.describe_into(throughput, now_seconds);
    }
    for index in global_indexes_mut(&mut description) {
        if let Some(held) = index["IndexName"].as_str().and_then(|name| meta.index(name)) {
            held.throughput_changes
                .describe_into(&mut index["ProvisionedThroughput"], now_seconds);
        }
    }
    if meta.is_global() {
        description["GlobalTableVersion"] = json!("2019.11.21");
        description["Replicas"] = match store.replication() {
            Some(replication) => replication.describe_replicas(meta),
            None => Value::Array(
                meta.replicas
                    .iter()
                    .map(|r| json!({"RegionName": r, "ReplicaStatus": "ACTIVE"}))
                    .collect(),
            ),
        };
    }
    description
}

/// The 2017.11.29 DescribeGlobalTable answers as DynamoDB does for tables of version 2019.11.21.
pub fn legacy_global_table_not_found(body: &[u8]) -> ApiError {
    let name = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("GlobalTableName").and_then(Value::as_str).map(String::from))
        .unwrap_or_default();
    ApiError::new(
        ErrorKind::GlobalTableNotFound,
        format!(
            "Global table not found: Global table with name: '{name}' does not exist. Tables of version 2019.11.21 are described by DescribeTable"
        ),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplicaRegion {
    region_name: String,
    /// Per-replica settings DynamoDB takes in a replica's Create or Update. None of them is
    /// carried to a replica here: a request with one is refused with the way to do it
    /// (`ReplicaRegion::refuse_overrides`), never taken and dropped.
    #[serde(rename = "KMSMasterKeyId")]
    kms_master_key_id: Option<Value>,
    provisioned_throughput_override: Option<Value>,
    on_demand_throughput_override: Option<Value>,
    global_secondary_indexes: Option<Value>,
    table_class_override: Option<Value>,
}

impl ReplicaRegion {
    /// Refuses the per-replica settings this store does not carry to a replica, naming how to
    /// set them: each replica's read capacity and table class are set in its own region.
    fn refuse_overrides(&self, action: &str) -> Result<(), ApiError> {
        let region = &self.region_name;
        let refuse = |member: &str, fix: &str| {
            Err(ApiError::validation(format!(
                "One or more parameter values were invalid: ReplicaUpdates {action} for {region}: {member} is not supported by this store; {fix}"
            )))
        };
        let in_its_region =
            format!("send UpdateTable to the store of {region} instead (each replica's capacity is its own there)");
        if self.provisioned_throughput_override.is_some() {
            return refuse("ProvisionedThroughputOverride", &in_its_region);
        }
        if self.on_demand_throughput_override.is_some() {
            return refuse("OnDemandThroughputOverride", &in_its_region);
        }
        if self.global_secondary_indexes.is_some() {
            return refuse("GlobalSecondaryIndexes (per-replica index capacity)", &in_its_region);
        }
        if self.table_class_override.is_some() {
            return refuse(
                "TableClassOverride",
                &format!("send UpdateTable with TableClass to the store of {region} instead"),
            );
        }
        if self.kms_master_key_id.is_some() {
            return refuse(
                "KMSMasterKeyId",
                "the store does not use KMS keys (encrypt the data directory's disk instead); leave it out",
            );
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplicaUpdate {
    create: Option<ReplicaRegion>,
    update: Option<ReplicaRegion>,
    delete: Option<ReplicaRegion>,
}

/// UpdateTable with ReplicaUpdates: makes a table global, adds or removes replicas. The peers
/// are told first, so a replica exists before any change is shipped to it; a new replica is
/// then backfilled by anti-entropy while writes continue.
async fn update_replicas(store: &Store, meta: Arc<TableMeta>, updates: Vec<ReplicaUpdate>) -> Result<Value, ApiError> {
    let replication = store.replication().ok_or_else(|| {
        ApiError::validation(
            "This store has no peers: start it with --peer REGION=URL and a replication key to make tables global",
        )
    })?;
    let region = store.engine().region().to_string();
    let mut replicas = if meta.replicas.is_empty() {
        vec![region.clone()]
    } else {
        meta.replicas.clone()
    };
    let mut created = Vec::new();
    let mut removed = Vec::new();
    for update in updates {
        match (update.create, update.update, update.delete) {
            (Some(create), None, None) => {
                create.refuse_overrides("Create")?;
                let name = create.region_name;
                if replicas.contains(&name) {
                    return Err(ApiError::new(
                        ErrorKind::ReplicaAlreadyExists,
                        format!("Replica already exists in region {name}"),
                    ));
                }
                replication.peer(&name).ok_or_else(|| {
                    ApiError::validation(format!(
                        "Region {name} is not a peer of this store; start it with --peer {name}=http://HOST:PORT"
                    ))
                })?;
                replicas.push(name.clone());
                created.push(name);
            }
            (None, Some(update), None) => {
                update.refuse_overrides("Update")?;
                if !replicas.contains(&update.region_name) {
                    return Err(ApiError::new(
                        ErrorKind::ReplicaNotFound,
                        format!("Replica not found in region {}", update.region_name),
                    ));
                }
            }
            (None, None, Some(delete)) => {
                let name = delete.region_name;
                if name == region {
                    return Err(ApiError::validation(
                        "Cannot delete the replica in the region the request was sent to: send it to another replica's region",
                    ));
                }
                let Some(position) = replicas.iter().position(|r| *r == name) else {
                    return Err(ApiError::new(
                        ErrorKind::ReplicaNotFound,
                        format!("Replica not found in region {name}"),
                    ));
                };
                replicas.remove(position);
                removed.push(name);
            }
            _ => {
                return Err(ApiError::validation(
                    "One of ReplicaUpdates' Create, Update or Delete must be set, and only one",
                ));
            }
        }
    }
    replicas.sort();
    let mut next = (*meta).clone();
    // As AWS does: a table becoming global gets a NEW_AND_OLD_IMAGES stream unless it has an
    // enabled stream already (which it keeps as it is).
    if replicas.len() > 1 && next.stream.as_ref().is_none_or(|s| !s.enabled) {
        next.stream = Some(crate::streams::TableStream {
            enabled: true,
            view_type: crate::streams::ViewType::NewAndOldImages,
            label: store.engine().new_stream_label(),
        });
    }
    next.replicas = if replicas.len() > 1 {
        replicas.clone()
    } else {
        Vec::new()
    };
    // A peer that creates its replica now answers with its join barrier; its backfill waits
    // for it (see `TableMeta::joined_below`).
    let mut barriers: Vec<(String, u64)> = Vec::new();
    for peer in replicas.iter().filter(|r| **r != region) {
        let joining = created.contains(peer);
        if let Some(barrier) = replication.send_table(peer, &next, false, joining).await? {
            barriers.push((peer.clone(), barrier));
        }
    }
    for peer in &removed {
        replication.send_table(peer, &next, true, false).await?;
    }
    let published = next.clone();
    let backfills: Vec<(String, u64)> = created
        .iter()
        .map(|peer| {
            let barrier = barriers.iter().find(|(p, _)| p == peer).map_or(1, |(_, b)| (*b).max(1));
            (crate::global::backfill_setting(peer), barrier)
        })
        .collect();
    let recreated = created.clone();
    let made_ms = store.engine().now_unix_ms();
    // For a stream disabled by an UpdateTable committed while the replicas were being told
    // (it judged a table that was not yet global): a new stream, not the disabled one again.
    let fresh_label = store.engine().new_stream_label();
    let committed = store
        .engine()
        .write_exclusive(move |context| {
            // The replica list (and the stream it needs) goes onto the definition as committed
            // now, so a change committed since this request read the table (tags, TTL, an
            // index) is kept.
            let mut latest = (*context.latest_table(&meta)?).clone();
            latest.replicas = published.replicas;
            // A global table has an enabled stream (the replicas were given this one): the
            // one made for this request, or, when the table's own stream was disabled since
            // this request read it, a new one of the view type the replicas got (re-enabling
            // the disabled stream's label would leave that stream disabled and record nothing).
            if latest.is_global() && latest.stream.as_ref().is_none_or(|s| !s.enabled) {
                let made_here = published.stream != meta.stream;
                latest.stream = match published.stream {
                    Some(stream) if stream.enabled && made_here => Some(stream),
                    stream => Some(crate::streams::TableStream {
                        enabled: true,
                        view_type: stream
                            .filter(|s| s.enabled)
                            .map_or(crate::streams::ViewType::NewAndOldImages, |s| s.view_type),
                        label: fresh_label,
                    }),
                };
            }
            context.put_table(latest.clone())?;
            // Durable with the new replica list: a restart before the backfill finishes
            // starts it again.
            for (setting, barrier) in &backfills {
                let pending = context.setting(setting)?;
                context.set_setting(setting, pending.max(*barrier))?;
            }
            // When each replica was created (a region whose database was found new needs its
            // replicas created again after that: `Replication::tables_missing_at`).
            for peer in &recreated {
                context.set_setting(&crate::global::replica_made_setting(peer, latest.id), made_ms)?;
            }
            Ok(latest)
        })
        .await?;
    // A TTL or global index changed here while the new replicas were being told (it judged a
    // table without them): they took this request's definition, so they get the one committed
    // (they take each change by its version).
    let followed_changed = committed.ttl != next.ttl
        || committed.indexes != next.indexes
        || committed.deleted_indexes != next.deleted_indexes
        || committed.capacity_version != next.capacity_version;
    if followed_changed {
        for peer in &created {
            if let Err(error) = replication.send_table(peer, &committed, false, false).await {
                tracing::warn!(table = %next.name, replica = %peer, %error, "the new replica did not get the TTL, index or capacity changed meanwhile; send that UpdateTimeToLive or UpdateTable again");
            }
        }
    }
    for peer in &created {
        tracing::info!(table = %next.name, replica = %peer, "replica created; backfilling it");
        replication.request_repair(peer);
    }
    // UPDATING, as DynamoDB answers UpdateTable (its replicas' own statuses say how far each is).
    Ok(json!({"TableDescription": describe(store, &committed, "UPDATING")}))
}

pub async fn create_table(store: &Store, request: CreateTableRequest) -> Result<Value, ApiError> {
    let now = store.engine().now_unix_ms() as f64 / 1000.0;
    // Validate before queueing so a bad request costs no write.
    catalog::table_from_request(&request, 0, now)?;
    let name = request.table_name.clone();
    let label = store.engine().new_stream_label();
    let meta = store
        .engine()
        .write_exclusive(move |context| {
            if context.current_table_named(&request.table_name) {
                return Err(ApiError::new(
                    ErrorKind::ResourceInUse,
                    format!("Table already exists: {}", request.table_name),
                ));
            }
            let id = context.next_table_id()?;
            let mut meta = catalog::table_from_request(&request, id, now)?;
            if let Some(stream) = meta.stream.as_mut() {
                stream.label = label;
            }
            context.put_table(meta.clone())?;
            Ok(meta)
        })
        .await?;
    tracing::info!(table = %name, id = meta.id, "table created");
    // DynamoDB answers CreateTable with the table and its global indexes CREATING (its API
    // reference: "immediately returns a response with a TableStatus of CREATING"); here they
    // are ACTIVE by the time the answer is read, as DescribeTable then says.
    let mut description = describe(store, &meta, "CREATING");
    for index in global_indexes_mut(&mut description) {
        index["IndexStatus"] = json!("CREATING");
    }
    Ok(json!({"TableDescription": description}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TableNameRequest {
    pub table_name: String,
}

/// What DescribeTable shows and DeleteTable's description leaves out.
const DELETE_TABLE_OMITS: &[&str] = &[
    "AttributeDefinitions",
    "CreationDateTime",
    "GlobalSecondaryIndexes",
    "KeySchema",
    "LocalSecondaryIndexes",
];

pub async fn delete_table(store: &Store, request: TableNameRequest) -> Result<Value, ApiError> {
    let meta = named_table(store, &request.table_name)?;
    refuse_restoring(&meta)?;
    if meta.deletion_protection {
        return Err(ApiError::validation(format!(
            "Resource cannot be deleted as it is currently protected against deletion. Disable deletion protection first. Table: {}",
            meta.name
        )));
    }
    let mut description = describe(store, &meta, "DELETING");
    // DeleteTable answers a shorter description than DescribeTable: no schema, indexes or
    // creation time, as DynamoDB's does.
    if let Some(fields) = description.as_object_mut() {
        for field in DELETE_TABLE_OMITS {
            fields.remove(*field);
        }
    }
    let target = meta.clone();
    store
        .engine()
        .write_exclusive(move |context| {
            context.current_table(&target)?;
            context.drop_table(&target)
        })
        .await?;
    tracing::info!(table = %meta.name, "table deleted");
    Ok(json!({"TableDescription": description}))
}

pub fn describe_table(store: &Store, request: TableNameRequest) -> Result<Value, ApiError> {
    let meta = named_table(store, &request.table_name)?;
    Ok(json!({"Table": describe(store, &meta, "ACTIVE")}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTablesRequest {
    exclusive_start_table_name: Option<String>,
    limit: Option<i64>,
}

pub fn list_tables(store: &Store, request: ListTablesRequest) -> Result<Value, ApiError> {
    // Every constraint the API model puts on the two members, reported together as DynamoDB
    // reports them.
    let mut problems = request
        .exclusive_start_table_name
        .as_deref()
        .map(|name| catalog::table_name_problems(name, "exclusiveStartTableName"))
        .unwrap_or_default();
    let limit = match request.limit {
        None => LIST_TABLES_LIMIT_MAX,
        Some(limit) if (1..=LIST_TABLES_LIMIT_MAX as i64).contains(&limit) => limit as usize,
        Some(limit) => {
            problems.push(if limit < 1 {
                format!(
                    "Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
                )
            } else {
                format!(
                    "Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value less than or equal to {LIST_TABLES_LIMIT_MAX}"
                )
            });
            LIST_TABLES_LIMIT_MAX
        }
    };
    catalog::constraint_errors(problems)?;
    let names: Vec<String> = store
        .engine()
        .table_names()
        .into_iter()
        .filter(|name| {
            request
                .exclusive_start_table_name
                .as_ref()
                .is_none_or(|start| name > start)
        })
        .collect();
    let page: Vec<&String> = names.iter().take(limit).collect();
    let mut response = json!({"TableNames": page});
    if names.len() > limit {
        response["LastEvaluatedTableName"] = json!(page.last());
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexUpdate {
    create: Option<IndexRequest>,
    delete: Option<IndexDelete>,
    update: Option<IndexThroughputUpdate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexDelete {
    index_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexThroughputUpdate {
    index_name: String,
    provisioned_throughput: Option<ThroughputRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateTableRequest {
    table_name: String,
    attribute_definitions: Option<Vec<catalog::AttributeDefinition>>,
    billing_mode: Option<String>,
    provisioned_throughput: Option<ThroughputRequest>,
    global_secondary_index_updates: Option<Vec<IndexUpdate>>,
    stream_specification: Option<Value>,
    table_class: Option<String>,
    deletion_protection_enabled: Option<bool>,
    replica_updates: Option<Vec<ReplicaUpdate>>,
}

/// The checks of an UpdateTable that do not need the table, made before it is looked up as
/// DynamoDB makes them (an invalid request names its problem whether or not the table exists).
fn check_update_request(request: &UpdateTableRequest) -> Result<(), ApiError> {
    catalog::validate_table_name(&request.table_name, "tableName")?;
    let mut problems = Vec::new();
    if let Some(asked) = request.provisioned_throughput {
        for (value, field) in [
            (asked.read_capacity_units, "readCapacityUnits"),
            (asked.write_capacity_units, "writeCapacityUnits"),
        ] {
            if value < 1 {
                problems.push(format!(
                    "Value '{value}' at 'provisionedThroughput.{field}' failed to satisfy constraint: Member must have value greater than or equal to 1"
                ));
            }
        }
    }
    catalog::constraint_errors(problems)?;
    let updates = request.global_secondary_index_updates.as_deref().unwrap_or_default();
    let asks_nothing = updates.is_empty()
        && request.billing_mode.is_none()
        && request.provisioned_throughput.is_none()
        && request.stream_specification.is_none()
        && request.replica_updates.as_ref().is_none_or(Vec::is_empty)
        && request.table_class.is_none()
        && request.deletion_protection_enabled.is_none()
        && request.attribute_definitions.is_none();
    if asks_nothing {
        return Err(ApiError::validation(
            "At least one of ProvisionedThroughput, BillingMode, UpdateStreamEnabled, GlobalSecondaryIndexUpdates or SSESpecification or ReplicaUpdates is required",
        ));
    }
    if let Some(asked) = request.provisioned_throughput {
        catalog::check_throughput_bounds(asked.read_capacity_units, asked.write_capacity_units)?;
    }
    let mut named = std::collections::HashSet::new();
    for update in updates {
        let name = match (&update.create, &update.delete, &update.update) {
            (None, None, None) => {
                return Err(ApiError::validation(
                    "One or more parameter values were invalid: One of GlobalSecondaryIndexUpdate.Update, GlobalSecondaryIndexUpdate.Create, GlobalSecondaryIndexUpdate.Delete must not be null",
                ));
            }
            (Some(create), _, _) => &create.index_name,
            (None, Some(delete), _) => &delete.index_name,
            (None, None, Some(update)) => &update.index_name,
        };
        if !named.insert(name.as_str()) {
            return Err(ApiError::validation(format!(
                "One or more parameter values were invalid: Only one global secondary index update per index is allowed simultaneously. Index: {name}"
            )));
        }
    }
    Ok(())
}

pub async fn update_table(store: &Store, request: UpdateTableRequest) -> Result<Value, ApiError> {
    check_update_request(&request)?;
    let meta = named_table(store, &request.table_name)?;
    refuse_restoring(&meta)?;
    if let Some(updates) = request.replica_updates {
        let others = request.billing_mode.is_some()
            || request.provisioned_throughput.is_some()
            || request.global_secondary_index_updates.is_some()
            || request.stream_specification.is_some();
        if others {
            return Err(ApiError::validation(
                "One or more parameter values were invalid: ReplicaUpdates cannot be combined with other table changes in one UpdateTable call",
            ));
        }
        return update_replicas(store, meta, updates).await;
    }
    // The change is worked out inside the write, on the definition as committed then: a
    // TagResource, UpdateTimeToLive or another UpdateTable committed after this request read
    // the table is kept, and the checks (an index that exists, a stream already enabled) judge
    // the table as it is.
    let engine = store.engine().clone();
    let region = engine.region().to_string();
    let (result, followed, created, deleted, capacity, before) = store
        .engine()
        .write_exclusive(move |context| {
            let current = context.latest_table(&meta)?;
            refuse_restoring(&current)?;
            let before = (*current).clone();
            // Which of the global indexes this request creates or deletes, and whether the
            // table's capacity, were changed here and are not yet confirmed by every replica
            // (read in this job, with the table).
            let mut unconfirmed_names = Vec::new();
            let mut capacity_unconfirmed = false;
            if current.is_global() {
                for name in online_index_names(&request) {
                    let mark = context.setting(&Followed::Index(name).mark(current.id))?;
                    if catalog::unconfirmed(current.index_version(name), mark) {
                        unconfirmed_names.push(name.to_string());
                    }
                }
                let mark = context.setting(&Followed::Capacity.mark(current.id))?;
                capacity_unconfirmed = catalog::unconfirmed(Followed::Capacity.version(&current), mark);
            }
            let planned = plan_update(
                &current,
                &request,
                engine.now_unix_ms() as f64 / 1000.0,
                || engine.new_stream_label(),
                &|followed| match followed {
                    Followed::Index(name) => unconfirmed_names.iter().any(|n| n == name),
                    Followed::Capacity => capacity_unconfirmed,
                    Followed::Ttl => false,
                },
                |held| catalog::next_setting_version(held, context.tick_clock(), &region),
            )?;
            let mut deleted = Vec::new();
            for name in &planned.deleted {
                context.drop_index(&current, name)?;
                deleted.extend(current.index(name).cloned());
            }
            let next = planned.next;
            // Only an index change sent again changes nothing here.
            if next != *current {
                context.put_table(next.clone())?;
            }
            for name in &planned.created {
                context.start_index_backfill(&next, name)?;
            }
            // A global table's index change is unconfirmed until every replica holds it,
            // recorded in the transaction that makes it.
            if let Some(name) = planned.followed.as_deref()
                && !planned.sent_again
                && next.is_global()
            {
                let hlc = next.index_version(name).map_or(0, |(hlc, _)| *hlc);
                context.set_setting(&Followed::Index(name).mark(next.id), hlc)?;
            }
            // So is a change of its billing mode or write capacity.
            if planned.capacity == Some(CapacityChange::Changed) && next.is_global() {
                let hlc = next.capacity_version.as_ref().map_or(0, |(hlc, _)| *hlc);
                context.set_setting(&Followed::Capacity.mark(next.id), hlc)?;
            }
            Ok((
                next,
                planned.followed,
                planned.created,
                deleted,
                planned.capacity.is_some(),
                before,
            ))
        })
        .await?;
    if result.indexes.iter().any(|i| i.backfilling) {
        store.engine().wake_index_backfill();
    }
    if result.is_global() {
        // Each change is sent to every replica, also when another failed (its mark is then
        // left for `align_unconfirmed`); the answer is the first failure.
        let followed = followed
            .as_deref()
            .map(Followed::Index)
            .into_iter()
            .chain(capacity.then_some(Followed::Capacity));
        let mut failed = None;
        for followed in followed {
            if let Err(error) = align(store, &result, followed).await {
                failed.get_or_insert(error);
            }
        }
        if let Some(error) = failed {
            return Err(error);
        }
    }
    // UPDATING, as DynamoDB answers UpdateTable (an asynchronous operation: "the table status
    // changes from ACTIVE to UPDATING"); the change is made, so DescribeTable says ACTIVE.
    let mut description = describe(store, &result, "UPDATING");
    answer_while_updating(
        &mut description,
        &before,
        &result,
        store.engine().now_unix_ms() as f64 / 1000.0,
    );
    // The index this call creates is answered as DynamoDB answers it: CREATING, in its first
    // phase (resources), Backfilling false; DescribeTable shows the copy under way after it.
    for index in global_indexes_mut(&mut description) {
        if created.iter().any(|name| index["IndexName"] == name.as_str()) && index.get("Backfilling").is_some() {
            index["Backfilling"] = json!(false);
        }
    }
    // The index this call deletes is answered DELETING, as DynamoDB answers (its storage is
    // already gone here: DescribeTable no longer lists it).
    let region = store.engine().region().to_string();
    for index in &deleted {
        let listed = description["GlobalSecondaryIndexes"]
            .as_array()
            .is_some_and(|all| all.iter().any(|i| i["IndexName"] == index.name.as_str()));
        if !listed {
            let entry = result.deleting_index_json(index, &region);
            match description
                .get_mut("GlobalSecondaryIndexes")
                .and_then(Value::as_array_mut)
            {
                Some(all) => all.push(entry),
                None => description["GlobalSecondaryIndexes"] = json!([entry]),
            }
        }
    }
    Ok(json!({"TableDescription": description}))
}

/// UpdateTable's answer as DynamoDB gives it while the change is under way (the store has made
/// it already, and DescribeTable shows it made): a provisioned table's or index's new capacity
/// shows the old units and today's decreases as they were (its date already set), and that
/// index is UPDATING; after a switch of billing mode every global index is UPDATING, with the
/// new mode's units and its own dates and decreases as before the switch.
fn answer_while_updating(description: &mut Value, before: &TableMeta, after: &TableMeta, now_seconds: f64) {
    let as_before = |out: &mut Value, was: catalog::Throughput, changes: &catalog::ThroughputChanges| {
        out["ReadCapacityUnits"] = json!(was.read);
        out["WriteCapacityUnits"] = json!(was.write);
        out["NumberOfDecreasesToday"] = json!(changes.decreases_today(now_seconds));
    };
    if let (Some(was), Some(now)) = (before.throughput, after.throughput)
        && was != now
        && let Some(out) = description.get_mut("ProvisionedThroughput")
    {
        as_before(out, was, &before.throughput_changes);
    }
    let switched = before.throughput.is_some() != after.throughput.is_some();
    for index in global_indexes_mut(description) {
        let name = index["IndexName"].as_str().unwrap_or_default().to_string();
        let (Some(was), Some(now)) = (before.index(&name), after.index(&name)) else {
            continue;
        };
        if index["IndexStatus"] != "ACTIVE" {
            continue;
        }
        if switched {
            index["IndexStatus"] = json!("UPDATING");
            let units = now.throughput.unwrap_or(catalog::Throughput { read: 0, write: 0 });
            let mut throughput = json!({"ReadCapacityUnits": units.read, "WriteCapacityUnits": units.write});
            was.throughput_changes.describe_into(&mut throughput, now_seconds);
            index["ProvisionedThroughput"] = throughput;
        } else if let (Some(old), Some(new)) = (was.throughput, now.throughput)
            && old != new
        {
            index["IndexStatus"] = json!("UPDATING");
            as_before(&mut index["ProvisionedThroughput"], old, &was.throughput_changes);
        }
    }
}

/// The global indexes an UpdateTable creates or deletes.
fn online_index_names(request: &UpdateTableRequest) -> Vec<&str> {
    let updates = request.global_secondary_index_updates.iter().flatten();
    updates
        .filter_map(|update| match (&update.create, &update.delete) {
            (Some(create), _) => Some(create.index_name.as_str()),
            (None, Some(delete)) => Some(delete.index_name.as_str()),
            (None, None) => None,
        })
        .collect()
}

/// The definition an UpdateTable makes of `base`, with the global indexes it creates and
/// deletes.
#[derive(Debug)]
struct PlannedUpdate {
    next: TableMeta,
    created: Vec<String>,
    deleted: Vec<String>,
    /// The global index created or deleted (at most one per call), whose change a global
    /// table's other replicas are sent.
    followed: Option<String>,
    /// That change is the one the table holds already, not yet confirmed by every replica:
    /// sent to them again, nothing changed here.
    sent_again: bool,
    /// What the call does to the table's capacity that follows a global table (billing mode,
    /// write capacity of the table or of a global index): `None` when nothing.
    capacity: Option<CapacityChange>,
}

/// What an UpdateTable does to the capacity that follows a global table
/// (`catalog::FollowedCapacity`).
#[derive(Debug, PartialEq, Eq)]
enum CapacityChange {
    /// Changed here, with a new version (`TableMeta::capacity_version`): sent to every replica.
    Changed,
    /// The capacity the table holds already, changed here and not yet confirmed by every
    /// replica: sent to them again, nothing changed here (DynamoDB's check would refuse it as
    /// changing nothing and leave the regions apart for good).
    SendAgain,
}

/// Applies UpdateTable's changes (all but ReplicaUpdates) to `base`, refusing what DynamoDB
/// refuses. A global index created or deleted gets a version (`new_version`, given the one
/// held for its name), and a deleted one of a global table is kept in `deleted_indexes` with
/// it; so does a change of the capacity that follows a global table (billing mode, write
/// capacity of the table or of a global index: `TableMeta::capacity_version`; a change of read
/// capacity alone is the replica's own). The same Create or Delete again while that change is
/// `unconfirmed` (made here, not yet in every replica) is sent again instead of refused as an
/// index that exists or does not, and so is the same capacity again.
fn plan_update(
    base: &TableMeta,
    request: &UpdateTableRequest,
    now_seconds: f64,
    new_stream_label: impl FnOnce() -> String,
    unconfirmed: &dyn Fn(Followed<'_>) -> bool,
    mut new_version: impl FnMut(Option<&catalog::SettingVersion>) -> catalog::SettingVersion,
) -> Result<PlannedUpdate, ApiError> {
    let mut next = base.clone();
    let mut changed = false;
    if request.billing_mode.is_some() || request.provisioned_throughput.is_some() {
        // Without BillingMode the table keeps its mode: throughput for an on-demand table is
        // refused (below), as DynamoDB refuses it, never a silent switch to PROVISIONED.
        let pay_per_request = match request.billing_mode.as_deref() {
            None => next.throughput.is_none(),
            mode => catalog::parse_billing_mode(mode)?,
        };
        // Only the throughput, and what the table has already: DynamoDB refuses the no-op.
        let only_throughput = request.stream_specification.is_none()
            && request.global_secondary_index_updates.is_none()
            && request.table_class.is_none()
            && request.deletion_protection_enabled.is_none()
            && request.attribute_definitions.is_none();
        if let (false, Some(asked), Some(current), true) = (
            pay_per_request,
            request.provisioned_throughput,
            next.throughput,
            only_throughput,
        ) && asked.read_capacity_units == current.read as i64
            && asked.write_capacity_units == current.write as i64
        {
            // Unless it is the capacity changed here and not yet in every replica, sent again
            // to finish it there.
            if !unconfirmed(Followed::Capacity) {
                return Err(ApiError::validation(format!(
                    "The provisioned throughput for the table will not change. The requested value equals the current value. Current ReadCapacityUnits provisioned for the table: {r}. Requested ReadCapacityUnits: {r}. Current WriteCapacityUnits provisioned for the table: {w}. Requested WriteCapacityUnits: {w}. Refer to the Amazon DynamoDB Developer Guide for current limits and how to request higher limits.",
                    r = current.read,
                    w = current.write
                )));
            }
        }
        next.throughput = match (pay_per_request, request.provisioned_throughput) {
            (true, None) => None,
            (true, Some(_)) => {
                return Err(ApiError::validation(
                    "One or more parameter values were invalid: Neither ReadCapacityUnits nor WriteCapacityUnits can be specified when BillingMode is PAY_PER_REQUEST",
                ));
            }
            (false, Some(t)) if t.read_capacity_units >= 1 && t.write_capacity_units >= 1 => {
                Some(catalog::Throughput {
                    read: t.read_capacity_units as u64,
                    write: t.write_capacity_units as u64,
                })
            }
            (false, Some(_)) => {
                return Err(ApiError::validation(
                    "One or more parameter values were invalid: capacity units must be at least 1",
                ));
            }
            (false, None) => {
                return Err(ApiError::validation(
                    "One or more parameter values were invalid: ProvisionedThroughput must be specified when BillingMode is PROVISIONED",
                ));
            }
        };
        // An on-demand table's global indexes have no provisioned throughput either (DynamoDB
        // describes them with 0 units; one made provisioned again is given its units).
        if next.throughput.is_none() {
            for index in next.indexes.iter_mut().filter(|i| i.kind == IndexKind::Global) {
                index.throughput = None;
            }
        }
        // BillingModeSummary's LastUpdateToPayPerRequestDateTime: when it became on demand (a
        // catalog written before the field held it knew only the creation time).
        next.pay_per_request_since_seconds = match (base.throughput, next.throughput) {
            (Some(_), None) => Some(now_seconds),
            (None, _) => base.pay_per_request_since_seconds.or(Some(base.created_at_seconds)),
            (Some(_), Some(_)) => base.pay_per_request_since_seconds,
        };
        changed = true;
    }
    if let Some(specification) = &request.stream_specification {
        let specification = crate::streams::parse_specification(specification)?;
        let stream = crate::streams::change_stream(
            &next.name,
            next.stream.as_ref(),
            next.is_global(),
            specification,
            new_stream_label,
        )?;
        next.stream = Some(stream);
        changed = true;
    }
    if let Some(class) = &request.table_class {
        next.table_class = Some(class.clone());
        changed = true;
    }
    if let Some(protection) = request.deletion_protection_enabled {
        next.deletion_protection = protection;
        changed = true;
    }
    let mut definitions = next.attribute_definitions.clone();
    // A new index's key attributes must be defined in this request, even those the table
    // already defines (DynamoDB refuses the Create otherwise).
    let requested = match &request.attribute_definitions {
        Some(extra) => catalog::parse_attribute_definitions(extra)?,
        None => Vec::new(),
    };
    for (name, value_type) in &requested {
        match definitions.iter().find(|(n, _)| n == name) {
            Some((_, existing)) if existing != value_type => {
                return Err(ApiError::validation(format!(
                    "One or more parameter values were invalid: Attributes cannot be redefined. Please check that your attribute has the same type as previously defined. Attribute: {name}, existing type: {}, new type: {}",
                    existing.descriptor(),
                    value_type.descriptor()
                )));
            }
            Some(_) => {}
            None => definitions.push((name.clone(), *value_type)),
        }
    }
    // DynamoDB creates or deletes one global index per UpdateTable call.
    let online_changes = request
        .global_secondary_index_updates
        .iter()
        .flatten()
        .filter(|update| update.create.is_some() || update.delete.is_some())
        .count();
    if online_changes > 1 {
        return Err(ApiError::new(
            ErrorKind::LimitExceeded,
            "Subscriber limit exceeded: Only 1 online index can be created or deleted simultaneously per table",
        ));
    }
    // Nor while another index of the table is still being backfilled (deleting one that is,
    // or sending its Create again, is allowed; a replica may fill several at once, those a
    // peer's definition brought).
    let backfilling = |name: &str| next.indexes.iter().any(|i| i.backfilling && i.name == name);
    if next.indexes.iter().any(|i| i.backfilling) {
        let other = request.global_secondary_index_updates.iter().flatten().any(|update| {
            let name = match (&update.create, &update.delete) {
                (Some(create), _) => &create.index_name,
                (None, Some(delete)) => &delete.index_name,
                (None, None) => return false,
            };
            !backfilling(name)
        });
        if other {
            return Err(ApiError::new(
                ErrorKind::LimitExceeded,
                "Subscriber limit exceeded: Only 1 online index can be created or deleted simultaneously per table",
            ));
        }
    }
    let mut created = Vec::new();
    let mut deleted = Vec::new();
    let mut followed = None;
    let mut sent_again = false;
    for (position, update) in request.global_secondary_index_updates.iter().flatten().enumerate() {
        match (&update.create, &update.delete, &update.update) {
            (Some(create), None, None) => {
                if let Some(existing) = next.index(&create.index_name) {
                    // DynamoDB's check, unless this is the Create the index came from, sent
                    // again to finish it in every replica (the same definition).
                    let again = existing.kind == IndexKind::Global
                        && unconfirmed(Followed::Index(&create.index_name))
                        && catalog::parse_global_index(create, &requested, next.throughput.is_none())
                            .is_ok_and(|index| index.same_definition(existing));
                    if !again {
                        // DynamoDB's words (the name is not in them).
                        return Err(ApiError::validation(
                            "Attempting to create an index which already exists",
                        ));
                    }
                    sent_again = true;
                } else {
                    let mut index = catalog::parse_global_index(create, &requested, next.throughput.is_none())?;
                    index.version = Some(new_version(base.index_version(&index.name)));
                    // Live for writes at once; the items already there are copied in the
                    // background (`engine::index_backfill`).
                    index.backfilling = true;
                    next.deleted_indexes.retain(|i| i.name != index.name);
                    created.push(index.name.clone());
                    next.indexes.push(index);
                }
                followed = Some(create.index_name.clone());
            }
            (None, Some(delete), None) => {
                let position = next
                    .indexes
                    .iter()
                    .position(|i| i.name == delete.index_name && i.kind == IndexKind::Global);
                match position {
                    Some(position) => {
                        let mut gone = next.indexes.remove(position);
                        deleted.push(delete.index_name.clone());
                        // A global table remembers the delete, so it reaches every replica and
                        // a stale definition does not bring the index back.
                        if base.is_global() {
                            gone.version = Some(new_version(base.index_version(&gone.name)));
                            next.deleted_indexes.retain(|i| i.name != gone.name);
                            next.deleted_indexes.push(gone);
                        }
                    }
                    // The Delete the index went by, sent again to finish it in every replica.
                    None if unconfirmed(Followed::Index(&delete.index_name))
                        && next.deleted_indexes.iter().any(|i| i.name == delete.index_name) =>
                    {
                        sent_again = true;
                    }
                    None => {
                        return Err(ApiError::resource_not_found(format!(
                            "Requested resource not found: Index: {} not found",
                            delete.index_name
                        )));
                    }
                }
                followed = Some(delete.index_name.clone());
            }
            (None, None, Some(update)) => {
                let Some(index) = next.indexes.iter_mut().find(|i| i.name == update.index_name) else {
                    return Err(ApiError::resource_not_found(format!(
                        "Requested resource not found: Index: {} not found",
                        update.index_name
                    )));
                };
                if let Some(t) = update.provisioned_throughput {
                    // DynamoDB's checks: the table's mode (as this call leaves it), the API's
                    // bound on each value, and no change that changes nothing.
                    if next.throughput.is_none() {
                        return Err(ApiError::validation(format!(
                            "One or more parameter values were invalid: ProvisionedThroughput should not be specified for index: {} when BillingMode is PAY_PER_REQUEST",
                            update.index_name
                        )));
                    }
                    for (value, field) in [
                        (t.read_capacity_units, "readCapacityUnits"),
                        (t.write_capacity_units, "writeCapacityUnits"),
                    ] {
                        if value < 1 {
                            return Err(ApiError::validation(format!(
                                "1 validation error detected: Value '{value}' at 'globalSecondaryIndexUpdates.{}.member.update.provisionedThroughput.{field}' failed to satisfy constraint: Member must have value greater than or equal to 1",
                                position + 1
                            )));
                        }
                    }
                    let asked = catalog::Throughput {
                        read: t.read_capacity_units as u64,
                        write: t.write_capacity_units as u64,
                    };
                    // Unless it is the capacity changed here and not yet in every replica,
                    // sent again to finish it there.
                    if index.throughput == Some(asked) && !unconfirmed(Followed::Capacity) {
                        return Err(ApiError::validation(format!(
                            "The provisioned throughput for the index {} will not change. The requested value equals the current value. Current ReadCapacityUnits provisioned for the index: {r}. Requested ReadCapacityUnits: {r}. Current WriteCapacityUnits provisioned for the index: {w}. Requested WriteCapacityUnits: {w}. Refer to the Amazon DynamoDB Developer Guide for current limits and how to request higher limits.",
                            update.index_name,
                            r = asked.read,
                            w = asked.write
                        )));
                    }
                    index.throughput = Some(asked);
                }
            }
            _ => {
                return Err(ApiError::validation(
                    "One or more parameter values were invalid: One of GlobalSecondaryIndexUpdate.Create, Update or Delete must be set, and only one",
                ));
            }
        }
        changed = true;
    }
    if !changed {
        return Err(ApiError::validation(
            "At least one of ProvisionedThroughput, BillingMode, UpdateStreamEnabled, GlobalSecondaryIndexUpdates or SSESpecification or ReplicaUpdates is required",
        ));
    }
    let used =
        |name: &str| next.key.is_key_attribute(name) || next.indexes.iter().any(|i| i.key.is_key_attribute(name));
    definitions.retain(|(name, _)| used(name));
    next.attribute_definitions = definitions;
    // When the throughput went up or down (DescribeTable's LastIncrease/LastDecreaseDateTime).
    next.record_throughput_changes(base, now_seconds);
    // The capacity that follows a global table: a new version when it changed (above the one
    // held, which may be a peer's), or sent again when the same one is asked for again while
    // it is unconfirmed.
    let capacity_asked = request.billing_mode.is_some()
        || request.provisioned_throughput.is_some()
        || request
            .global_secondary_index_updates
            .iter()
            .flatten()
            .any(|update| update.update.is_some());
    let capacity = if base.capacity_changed(&next) {
        next.capacity_version = Some(new_version(base.capacity_version.as_ref()));
        Some(CapacityChange::Changed)
    } else if capacity_asked && unconfirmed(Followed::Capacity) {
        Some(CapacityChange::SendAgain)
    } else {
        None
    };
    Ok(PlannedUpdate {
        next,
        created,
        deleted,
        followed,
        sent_again,
        capacity,
    })
}

pub fn describe_endpoints() -> Value {
    json!({"Endpoints": [{"Address": "localhost", "CachePeriodInMinutes": 1440}]})
}

pub fn describe_limits() -> Value {
    json!({"AccountMaxReadCapacityUnits": 80000, "AccountMaxWriteCapacityUnits": 80000,
           "TableMaxReadCapacityUnits": 40000, "TableMaxWriteCapacityUnits": 40000})
}

/// The table a tagging request's `ResourceArn` names: `arn:PARTITION:dynamodb:REGION:ACCOUNT:
/// table/NAME` with a valid name, else DynamoDB's "Invalid ResourceArn"; a table of another
/// region is not found here (this endpoint serves its own region's tables only).
fn table_from_arn(store: &Store, arn: &str) -> Result<std::sync::Arc<TableMeta>, ApiError> {
    if !arn.starts_with("arn:") {
        return Err(ApiError::validation(format!(
            "Invalid TableArn: ARNs must start with 'arn:': {arn}"
        )));
    }
    let invalid = || {
        ApiError::validation(format!(
            "Invalid TableArn: Invalid ResourceArn provided as input {arn}: expected arn:aws:dynamodb:REGION:ACCOUNT:table/NAME"
        ))
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [_, partition, service, region, account, resource] = parts[..] else {
        return Err(invalid());
    };
    let name = resource.strip_prefix("table/").ok_or_else(invalid)?;
    if partition.is_empty()
        || service != "dynamodb"
        || region.is_empty()
        || account.is_empty()
        || !catalog::table_name_problems(name, "tableName").is_empty()
    {
        return Err(invalid());
    }
    let not_found =
        || ApiError::resource_not_found(format!("Requested resource not found: ResourcArn: {arn} not found"));
    if region != store.engine().region() {
        return Err(not_found());
    }
    store.engine().table(name).ok_or_else(not_found)
}

/// Applies `change` to the table's definition as committed when the change runs (not as read
/// before), so concurrent changes compose.
async fn change_table(
    store: &Store,
    meta: std::sync::Arc<TableMeta>,
    change: impl FnOnce(&mut TableMeta) -> Result<(), ApiError> + Send + 'static,
) -> Result<TableMeta, ApiError> {
    refuse_restoring(&meta)?;
    store
        .engine()
        .write_exclusive(move |context| {
            let mut next = (*context.latest_table(&meta)?).clone();
            change(&mut next)?;
            context.put_table(next.clone())?;
            Ok(next)
        })
        .await
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagResourceRequest {
    resource_arn: String,
    #[serde(deserialize_with = "catalog::tags_within_limit")]
    tags: Vec<TagRequest>,
}

pub async fn tag_resource(store: &Store, request: TagResourceRequest) -> Result<Value, ApiError> {
    change_tags(store, &request.resource_arn, TagChange::Add(request.tags)).await
}

/// What TagResource and UntagResource do to a table's tags.
enum TagChange {
    Add(Vec<TagRequest>),
    Remove(Vec<String>),
}

async fn change_tags(store: &Store, arn: &str, change: TagChange) -> Result<Value, ApiError> {
    // Nothing to add or remove is refused before the table is looked for, in DynamoDB's words.
    match &change {
        TagChange::Add(tags) if tags.is_empty() => {
            return Err(ApiError::validation("Atleast one Tag needs to be provided as Input."));
        }
        TagChange::Remove(keys) if keys.is_empty() => {
            return Err(ApiError::validation(
                "Atleast one Tag Key needs to be provided as Input.",
            ));
        }
        _ => {}
    }
    let meta = table_from_arn(store, arn)?;
    if let TagChange::Add(tags) = &change {
        for tag in tags {
            catalog::validate_tag(&tag.key, &tag.value)?;
        }
    }
    change_table(store, meta, move |next| {
        match change {
            TagChange::Add(tags) => {
                let mut merged = next.tags.clone();
                for tag in tags {
                    merged.insert(tag.key, tag.value);
                }
                catalog::validate_tag_count(merged.len())?;
                next.tags = merged;
            }
            TagChange::Remove(keys) => {
                for key in &keys {
                    next.tags.remove(key);
                }
            }
        }
        Ok(())
    })
    .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UntagResourceRequest {
    resource_arn: String,
    tag_keys: Vec<String>,
}

pub async fn untag_resource(store: &Store, request: UntagResourceRequest) -> Result<Value, ApiError> {
    change_tags(store, &request.resource_arn, TagChange::Remove(request.tag_keys)).await
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTagsRequest {
    resource_arn: String,
}

pub fn list_tags(store: &Store, request: ListTagsRequest) -> Result<Value, ApiError> {
    let meta = table_from_arn(store, &request.resource_arn)?;
    let tags: Vec<Value> = meta.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect();
    Ok(json!({"Tags": tags}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TtlSpecification {
    enabled: bool,
    attribute_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateTtlRequest {
    table_name: String,
    time_to_live_specification: TtlSpecification,
}

/// The longest TTL attribute name UpdateTimeToLive takes (its API's bound).
const TTL_ATTRIBUTE_NAME_BYTES_MAX: usize = 255;

pub async fn update_ttl(store: &Store, request: UpdateTtlRequest) -> Result<Value, ApiError> {
    let meta = named_table(store, &request.table_name)?;
    refuse_restoring(&meta)?;
    let spec = request.time_to_live_specification;
    if spec.attribute_name.is_empty() || spec.attribute_name.len() > TTL_ATTRIBUTE_NAME_BYTES_MAX {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{}' at 'timeToLiveSpecification.attributeName' failed to satisfy constraint: Member must have length {}",
            spec.attribute_name,
            if spec.attribute_name.is_empty() {
                "greater than or equal to 1".to_string()
            } else {
                format!("less than or equal to {TTL_ATTRIBUTE_NAME_BYTES_MAX}")
            }
        )));
    }
    let enabled = spec.enabled;
    let attribute = spec.attribute_name.clone();
    let region = store.engine().region().to_string();
    let next = store
        .engine()
        .write_exclusive(move |context| {
            // Checked and changed on the definition as committed now, so a concurrent change
            // (tags, another TTL call) is neither lost nor misjudged.
            let mut next = (*context.latest_table(&meta)?).clone();
            let unaligned = Followed::Ttl.mark(next.id);
            let unconfirmed =
                next.is_global() && catalog::unconfirmed(Followed::Ttl.version(&next), context.setting(&unaligned)?);
            if ttl_change(next.ttl.as_ref(), unconfirmed, enabled, &attribute)? == TtlChange::SendAgain {
                return Ok(next);
            }
            // Newer than the TTL held (which may be a peer's, stamped by a clock ahead of this
            // one), so it replaces it in every replica.
            let version = catalog::next_setting_version(Followed::Ttl.version(&next), context.tick_clock(), &region);
            let hlc = version.0;
            let previous = next.ttl.take();
            next.ttl = Some(TtlSpec {
                attribute,
                enabled,
                version: Some(version),
            });
            context.align_ttl_index(previous.as_ref(), &next)?;
            if next.is_global() {
                context.set_setting(&unaligned, hlc)?;
            }
            context.put_table(next.clone())?;
            Ok(next)
        })
        .await?;
    // A TTL enabled on a table with items is filled in the background.
    store.engine().wake_index_backfill();
    if next.is_global() {
        align(store, &next, Followed::Ttl).await?;
    }
    Ok(json!({"TimeToLiveSpecification": {"Enabled": spec.enabled, "AttributeName": spec.attribute_name}}))
}

/// How often the store sends again the TTL and index changes made here that some replica has
/// not confirmed (`align_unconfirmed`): a region that was down during the change gets it soon
/// after it is back, without the request being sent again.
pub const ALIGN_RETRY_INTERVAL_MS: u64 = 10_000;
/// The variable that sets another interval (milliseconds, at least
/// [`ALIGN_RETRY_INTERVAL_MS_MIN`]).
pub const ALIGN_RETRY_INTERVAL_ENV: &str = "SWITCHYARD_ALIGN_RETRY_INTERVAL_MS";
/// The shortest interval [`ALIGN_RETRY_INTERVAL_ENV`] takes.
pub const ALIGN_RETRY_INTERVAL_MS_MIN: u64 = 100;

/// The interval from [`ALIGN_RETRY_INTERVAL_ENV`]'s value (`None`: unset, the default).
pub fn align_retry_interval_ms(value: Option<&str>) -> Result<u64, String> {
    let Some(value) = value else {
        return Ok(ALIGN_RETRY_INTERVAL_MS);
    };
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms >= ALIGN_RETRY_INTERVAL_MS_MIN)
        .ok_or_else(|| {
            format!(
                "{ALIGN_RETRY_INTERVAL_ENV}={value:?}: expected milliseconds, at least {ALIGN_RETRY_INTERVAL_MS_MIN} (unset: {ALIGN_RETRY_INTERVAL_MS})"
            )
        })
}

/// Sends again every TTL, index or capacity change of a global table made here (or found newer
/// here than in a peer, `Replication::compare_settings`) that some replica has not confirmed yet (its mark is set: `global::Followed::mark`), as the same
/// request sent again would; clears each mark once every replica holds the change. Returns the
/// changes still unconfirmed (a replica still down, or refusing).
pub async fn align_unconfirmed(store: &Store) -> usize {
    // First what some peer holds older than this region (`global::settings`): marked here, it
    // is sent below with the changes made here.
    if let Some(replication) = store.replication() {
        replication.compare_settings().await;
    }
    let mut left = 0;
    for table in store.engine().tables().iter().filter(|t| t.is_global()) {
        let names: Vec<String> = table
            .indexes
            .iter()
            .chain(&table.deleted_indexes)
            .filter(|i| i.kind == IndexKind::Global)
            .map(|i| i.name.clone())
            .collect();
        let followed = [Followed::Ttl, Followed::Capacity]
            .into_iter()
            .chain(names.iter().map(|n| Followed::Index(n)));
        for followed in followed {
            let mark = store.engine().setting_value(&followed.mark(table.id));
            let held = catalog::setting_version(followed.version(table)).map_or(0, |v| v.hlc.0);
            // Set, and for the change the table holds (a mark of a change since replaced is
            // cleared by that change's own alignment).
            if mark == 0 || mark != held {
                continue;
            }
            if let Err(error) = align(store, table, followed).await {
                left += 1;
                tracing::debug!(table = %table.name, %error, "a TTL, index or capacity change is still not in every replica; sending it again later");
            }
        }
    }
    left
}

/// Sends a global table's definition to every other replica after a change here of a setting
/// that follows it (`followed`: its TTL, one of its global indexes created or deleted, or its
/// billing mode and write capacity), and clears the mark that the change is unconfirmed
/// (`global::Followed::mark`) once every one holds it (or a newer one). A replica that cannot be
/// reached, or refuses, leaves the mark: this region then says the change is in transition
/// (DescribeTimeToLive ENABLING or DISABLING, the index CREATING or DELETING, the table
/// UPDATING in DescribeTable), and the answer is an error that names the region and says to
/// send the same request again, which then sends it again (definitions are idempotent: a
/// replica takes a setting only when its version is newer than its own).
async fn align(store: &Store, next: &TableMeta, followed: Followed<'_>) -> Result<(), ApiError> {
    let here = store.engine().region().to_string();
    let version = catalog::setting_version(followed.version(next));
    let mut confirmed = Vec::new();
    let mut failures = Vec::new();
    let mut unreachable = false;
    let (what, held_what) = match followed {
        Followed::Ttl => ("TTL".to_string(), "TTL"),
        Followed::Index(name) => (format!("index {name}"), "indexes"),
        Followed::Capacity => (
            "billing mode and write capacity".to_string(),
            "billing mode and write capacity",
        ),
    };
    match store.replication() {
        None => failures.push("this store has no peers configured (--peer REGION=URL)".to_string()),
        Some(replication) => {
            for peer in next.replicas.iter().filter(|r| **r != here) {
                match replication.send_definition(peer, next, false, false).await {
                    Ok(answer) => match followed.held_by(&answer) {
                        None => failures.push(format!(
                            "region {peer} runs a build that keeps each replica's {held_what} its own: upgrade it"
                        )),
                        Some(held) if held >= version => confirmed.push(peer.clone()),
                        Some(_) => failures.push(format!(
                            "region {peer} kept an older {what}{}",
                            match (followed, &answer.ttl) {
                                (Followed::Ttl, Some(Some(TtlSpec { attribute, enabled, .. }))) =>
                                    format!(" ({attribute}, {})", if *enabled { "enabled" } else { "disabled" }),
                                (Followed::Ttl, _) => " (none)".to_string(),
                                (Followed::Index(_) | Followed::Capacity, _) => String::new(),
                            }
                        )),
                    },
                    Err(error) => {
                        unreachable |= error.kind == ErrorKind::ServiceUnavailable;
                        failures.push(error.message);
                    }
                }
            }
        }
    }
    let (id, hlc) = (next.id, version.as_ref().map_or(0, |v| v.hlc.0));
    let mark = followed.mark(id);
    if failures.is_empty() {
        store
            .engine()
            .write(move |context| {
                // Only the mark of this change: a newer one made meanwhile keeps its own.
                if context.setting(&mark)? == hlc {
                    context.set_setting(&mark, 0)?;
                }
                Ok(())
            })
            .await?;
        return Ok(());
    }
    tracing::warn!(table = %next.name, setting = %what, ?confirmed, ?failures, "changed here and not yet in every replica");
    let kind = if unreachable {
        ErrorKind::ServiceUnavailable
    } else {
        ErrorKind::Validation
    };
    let (changed, status, request) = match followed {
        Followed::Ttl => (
            "TimeToLive".to_string(),
            format!(
                "DescribeTimeToLive in {here} says {}",
                if next.ttl.as_ref().is_some_and(|t| t.enabled) {
                    "ENABLING"
                } else {
                    "DISABLING"
                }
            ),
            "UpdateTimeToLive",
        ),
        Followed::Index(name) => (
            format!("Index {name}"),
            format!(
                "DescribeTable in {here} shows its IndexStatus as {}",
                if next.index(name).is_some() {
                    "CREATING"
                } else {
                    "DELETING"
                }
            ),
            "UpdateTable",
        ),
        Followed::Capacity => (
            "Billing mode and write capacity".to_string(),
            format!(
                "DescribeTable in {here} shows its TableStatus as UPDATING ({})",
                match next.throughput {
                    None => "PAY_PER_REQUEST".to_string(),
                    Some(t) => format!("PROVISIONED, {} write capacity units", t.write),
                }
            ),
            "UpdateTable",
        ),
    };
    Err(ApiError::new(
        kind,
        format!(
            "{changed} of {} changed in {here}{} but not in every replica: {}. Until it is, {status}; send the same {request} to {here} again when they are up",
            next.name,
            if confirmed.is_empty() {
                String::new()
            } else {
                format!(" and {}", confirmed.join(", "))
            },
            failures.join("; "),
        ),
    ))
}

/// What an UpdateTimeToLive does.
#[derive(Debug, PartialEq, Eq)]
enum TtlChange {
    /// Change the TTL (here, then in every replica).
    Change,
    /// The change the table holds, not yet confirmed by every replica: send it to them again.
    SendAgain,
}

/// Decides an UpdateTimeToLive on a table holding `current`: the same setting again while it is
/// `unconfirmed` is sent again (DynamoDB's check would refuse it as already enabled or disabled
/// and leave the regions apart for good); anything else is checked as DynamoDB checks it.
fn ttl_change(
    current: Option<&TtlSpec>,
    unconfirmed: bool,
    enabled: bool,
    attribute: &str,
) -> Result<TtlChange, ApiError> {
    if unconfirmed && current.is_some_and(|t| t.same_setting(enabled, attribute)) {
        return Ok(TtlChange::SendAgain);
    }
    check_ttl_change(current, enabled, attribute).map(|()| TtlChange::Change)
}

/// Refuses a TTL change DynamoDB refuses: any change naming another attribute than an active
/// TTL's (enabling or disabling; DynamoDB checks the name first), enabling an enabled TTL, and
/// disabling a disabled one.
fn check_ttl_change(current: Option<&TtlSpec>, enabled: bool, attribute: &str) -> Result<(), ApiError> {
    match current {
        Some(current) if current.enabled && current.attribute != attribute => Err(ApiError::validation(format!(
            "TimeToLive is active on a different AttributeName: current AttributeName is {}",
            current.attribute
        ))),
        Some(current) if current.enabled && enabled => Err(ApiError::validation("TimeToLive is already enabled")),
        Some(current) if !current.enabled && !enabled => Err(ApiError::validation("TimeToLive is already disabled")),
        None if !enabled => Err(ApiError::validation("TimeToLive is already disabled")),
        _ => Ok(()),
    }
}

pub fn describe_ttl(store: &Store, request: TableNameRequest) -> Result<Value, ApiError> {
    let meta = named_table(store, &request.table_name)?;
    // A global table's TTL changed here and not yet confirmed by every replica is in
    // transition (DynamoDB's ENABLING / DISABLING).
    let unconfirmed = meta.is_global()
        && catalog::unconfirmed(
            Followed::Ttl.version(&meta),
            store.engine().setting_value(&Followed::Ttl.mark(meta.id)),
        );
    let description = match &meta.ttl {
        Some(TtlSpec {
            attribute,
            enabled: true,
            ..
        }) => json!({"TimeToLiveStatus": if unconfirmed { "ENABLING" } else { "ENABLED" }, "AttributeName": attribute}),
        Some(TtlSpec {
            attribute,
            enabled: false,
            ..
        }) if unconfirmed => json!({"TimeToLiveStatus": "DISABLING", "AttributeName": attribute}),
        _ => json!({"TimeToLiveStatus": "DISABLED"}),
    };
    Ok(json!({"TimeToLiveDescription": description}))
}

#[cfg(test)]
mod ttl_tests {
    use super::*;

    fn ttl(attribute: &str, enabled: bool, hlc: Option<u64>) -> TtlSpec {
        TtlSpec {
            attribute: attribute.into(),
            enabled,
            version: hlc.map(|hlc| (hlc, "us-east-1".into())),
        }
    }

    fn unconfirmed_ttl(ttl: Option<&TtlSpec>, mark_hlc: u64) -> bool {
        catalog::unconfirmed(ttl.and_then(|t| t.version.as_ref()), mark_hlc)
    }

    #[test]
    fn an_unconfirmed_ttl_is_the_one_whose_version_the_mark_names() {
        assert!(unconfirmed_ttl(Some(&ttl("exp", true, Some(9))), 9));
        // Confirmed (mark cleared), replaced by a newer change (a peer's), or never versioned.
        assert!(!unconfirmed_ttl(Some(&ttl("exp", true, Some(9))), 0));
        assert!(!unconfirmed_ttl(Some(&ttl("exp", true, Some(10))), 9));
        assert!(!unconfirmed_ttl(Some(&ttl("exp", true, None)), 9));
        assert!(!unconfirmed_ttl(None, 9));
    }

    #[test]
    fn the_same_change_again_is_sent_again_only_while_unconfirmed() {
        let enabled = ttl("exp", true, Some(9));
        let disabled = ttl("exp", false, Some(9));
        assert_eq!(
            ttl_change(Some(&enabled), true, true, "exp").expect("valid"),
            TtlChange::SendAgain
        );
        assert_eq!(
            ttl_change(Some(&disabled), true, false, "exp").expect("valid"),
            TtlChange::SendAgain
        );
        // Confirmed everywhere: DynamoDB's check, in its words.
        let refused = ttl_change(Some(&enabled), false, true, "exp").expect_err("refused");
        assert_eq!(refused.message, "TimeToLive is already enabled");
        let refused = ttl_change(Some(&disabled), false, false, "exp").expect_err("refused");
        assert_eq!(refused.message, "TimeToLive is already disabled");
        // Unconfirmed, but another change: checked as any change is.
        assert_eq!(
            ttl_change(Some(&enabled), true, false, "exp").expect("valid"),
            TtlChange::Change
        );
        assert_eq!(
            ttl_change(Some(&disabled), true, true, "exp").expect("valid"),
            TtlChange::Change
        );
        let refused = ttl_change(Some(&enabled), true, true, "other").expect_err("refused");
        assert!(
            refused.message.contains("different AttributeName"),
            "{}",
            refused.message
        );
        assert_eq!(ttl_change(None, false, true, "exp").expect("valid"), TtlChange::Change);
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    pub(super) fn table(global: bool) -> TableMeta {
        let request: CreateTableRequest = serde_json::from_value(json!({
            "TableName": "orders",
            "AttributeDefinitions": [
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "day", "AttributeType": "S"}
            ],
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [{
                "IndexName": "by_day",
                "KeySchema": [{"AttributeName": "day", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"}
            }],
            "BillingMode": "PAY_PER_REQUEST"
        }))
        .expect("request");
        let mut table = catalog::table_from_request(&request, 7, 0.0).expect("valid table");
        if global {
            table.replicas = vec!["ap-south-1".into(), "us-east-1".into()];
        }
        table
    }

    fn create(name: &str, attribute: &str) -> UpdateTableRequest {
        serde_json::from_value(json!({
            "TableName": "orders",
            "AttributeDefinitions": [{"AttributeName": attribute, "AttributeType": "S"}],
            "GlobalSecondaryIndexUpdates": [{"Create": {
                "IndexName": name,
                "KeySchema": [{"AttributeName": attribute, "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"}
            }}]
        }))
        .expect("request")
    }

    fn delete(name: &str) -> UpdateTableRequest {
        serde_json::from_value(json!({
            "TableName": "orders",
            "GlobalSecondaryIndexUpdates": [{"Delete": {"IndexName": name}}]
        }))
        .expect("request")
    }

    /// Plans `request` on `base` with the clock at `tick` in us-east-1, `unconfirmed` naming
    /// the index changes made here that some replica has not confirmed.
    fn plan(
        base: &TableMeta,
        request: &UpdateTableRequest,
        tick: u64,
        unconfirmed: &[&str],
    ) -> Result<PlannedUpdate, ApiError> {
        plan_update(
            base,
            request,
            0.0,
            || "label".to_string(),
            &|followed| matches!(followed, Followed::Index(name) if unconfirmed.contains(&name)),
            |held| catalog::next_setting_version(held, tick, "us-east-1"),
        )
    }

    #[test]
    fn any_backfilling_index_can_be_deleted_while_others_fill_too() {
        // A replica fills every index a peer's definition brought, so two can be backfilling
        // here at once (`align_indexes`); DynamoDB lets either be deleted while it fills.
        let base = table(true);
        let mut filling = plan(&base, &create("by_shop", "shop"), 50, &[]).expect("valid").next;
        for index in &mut filling.indexes {
            index.backfilling = true;
        }
        for name in ["by_day", "by_shop"] {
            let deleted = plan(&filling, &delete(name), 60, &[]).expect("a backfilling index may be deleted");
            assert_eq!(deleted.deleted, [name]);
        }
        // Another index still waits for them.
        let refused = plan(&filling, &create("by_total", "total"), 70, &[]).expect_err("one at a time");
        assert_eq!(refused.kind, ErrorKind::LimitExceeded);
    }

    #[test]
    fn an_index_created_or_deleted_gets_a_version_above_the_one_held() {
        let base = table(true);
        let created = plan(&base, &create("by_shop", "shop"), 50, &[]).expect("valid");
        assert_eq!(
            (created.followed.as_deref(), created.sent_again),
            (Some("by_shop"), false)
        );
        assert_eq!(created.created, ["by_shop"]);
        assert_eq!(
            created.next.index_version("by_shop"),
            Some(&(50, "us-east-1".to_string()))
        );
        // Deleted: remembered with its version in a global table, so the delete follows it.
        let deleted = plan(&created.next, &delete("by_shop"), 60, &[]).expect("valid");
        assert_eq!(deleted.deleted, ["by_shop"]);
        assert!(deleted.next.index("by_shop").is_none());
        assert_eq!(
            deleted.next.index_version("by_shop"),
            Some(&(60, "us-east-1".to_string()))
        );
        // Created again with a clock behind a peer's delete: still above it, and not deleted.
        let mut peers = deleted.next.clone();
        peers.deleted_indexes[0].version = Some((900, "ap-south-1".into()));
        let again = plan(&peers, &create("by_shop", "shop"), 70, &[]).expect("valid");
        assert_eq!(
            again.next.index_version("by_shop"),
            Some(&(901, "us-east-1".to_string()))
        );
        assert!(again.next.deleted_indexes.is_empty());
        // A regional table keeps no deletes.
        let regional = plan(&table(false), &delete("by_day"), 10, &[]).expect("valid");
        assert!(regional.next.deleted_indexes.is_empty() && regional.next.indexes.is_empty());
    }

    #[test]
    fn the_same_index_change_again_is_sent_again_only_while_unconfirmed() {
        let base = plan(&table(true), &create("by_shop", "shop"), 50, &[])
            .expect("valid")
            .next;
        // Confirmed everywhere: DynamoDB's check.
        let refused = plan(&base, &create("by_shop", "shop"), 51, &[]).expect_err("exists");
        assert!(
            refused.message == "Attempting to create an index which already exists",
            "{}",
            refused.message
        );
        // Unconfirmed: the same Create is sent again, nothing changed here.
        let again = plan(&base, &create("by_shop", "shop"), 51, &["by_shop"]).expect("sent again");
        assert_eq!((again.followed.as_deref(), again.sent_again), (Some("by_shop"), true));
        assert!(again.created.is_empty());
        assert_eq!(again.next, base);
        // Unconfirmed, but another definition of the name: refused as DynamoDB refuses it.
        let other = plan(&base, &create("by_shop", "store"), 51, &["by_shop"]).expect_err("exists");
        assert!(other.message.contains("already exists"), "{}", other.message);

        let gone = plan(&base, &delete("by_shop"), 60, &[]).expect("valid").next;
        let refused = plan(&gone, &delete("by_shop"), 61, &[]).expect_err("not found");
        assert_eq!(refused.kind, ErrorKind::ResourceNotFound);
        let again = plan(&gone, &delete("by_shop"), 61, &["by_shop"]).expect("sent again");
        assert_eq!((again.followed.as_deref(), again.sent_again), (Some("by_shop"), true));
        assert!(again.deleted.is_empty());
        assert_eq!(again.next, gone);
        // An index that never existed is not found, unconfirmed or not.
        let never = plan(&gone, &delete("by_nothing"), 61, &["by_nothing"]).expect_err("not found");
        assert_eq!(never.kind, ErrorKind::ResourceNotFound);
    }
}

#[cfg(test)]
mod capacity_tests {
    use super::*;

    /// `index_tests`' table, global, provisioned (read 5, write 10; its index read 3, write 4).
    fn provisioned() -> TableMeta {
        let mut table = super::index_tests::table(true);
        table.throughput = Some(catalog::Throughput { read: 5, write: 10 });
        table.indexes[0].throughput = Some(catalog::Throughput { read: 3, write: 4 });
        table.pay_per_request_since_seconds = None;
        table
    }

    fn request(body: Value) -> UpdateTableRequest {
        let mut body = body;
        body["TableName"] = json!("orders");
        serde_json::from_value(body).expect("request")
    }

    fn throughput(read: i64, write: i64) -> Value {
        json!({"ReadCapacityUnits": read, "WriteCapacityUnits": write})
    }

    /// Plans `request` on `base` at `now` seconds with the clock at `tick` in us-east-1, the
    /// table's capacity change made here `unconfirmed` or not.
    fn plan(
        base: &TableMeta,
        request: &UpdateTableRequest,
        now: f64,
        tick: u64,
        unconfirmed: bool,
    ) -> Result<PlannedUpdate, ApiError> {
        plan_update(
            base,
            request,
            now,
            || "label".to_string(),
            &|followed| followed == Followed::Capacity && unconfirmed,
            |held| catalog::next_setting_version(held, tick, "us-east-1"),
        )
    }

    /// The table after `body` planned on `base` (valid, its capacity change confirmed).
    fn planned(base: &TableMeta, body: Value, now: f64, tick: u64) -> TableMeta {
        plan(base, &request(body), now, tick, false).expect("valid").next
    }

    #[test]
    fn throughput_changes_record_when_they_went_up_and_down() {
        let base = provisioned();
        let up = planned(&base, json!({"ProvisionedThroughput": throughput(8, 10)}), 100.0, 1);
        assert_eq!(up.throughput_changes.last_increase_seconds, Some(100.0));
        assert_eq!(up.throughput_changes.last_decrease_seconds, None);
        let down = planned(&up, json!({"ProvisionedThroughput": throughput(8, 2)}), 200.0, 2);
        assert_eq!(down.throughput_changes.last_increase_seconds, Some(100.0));
        assert_eq!(down.throughput_changes.last_decrease_seconds, Some(200.0));
        assert_eq!(down.throughput_changes.decreases_today(300.0), 1);
        // A decrease on another UTC day starts the count again; the day after, none today.
        let later = planned(&down, json!({"BillingMode": "PAY_PER_REQUEST"}), 86_400.0 + 5.0, 3);
        assert_eq!(later.throughput_changes.decreases_today(86_400.0 + 6.0), 1);
        assert_eq!(later.throughput_changes.decreases_today(2.0 * 86_400.0 + 1.0), 0);
        // An index's own, by its Update; the table's untouched then.
        let index = base.indexes[0].name.clone();
        let indexed = plan(
            &base,
            &request(json!({"GlobalSecondaryIndexUpdates": [{"Update": {
                "IndexName": index, "ProvisionedThroughput": throughput(9, 4)}}]})),
            50.0,
            4,
            false,
        )
        .expect("valid")
        .next;
        assert_eq!(indexed.indexes[0].throughput_changes.last_increase_seconds, Some(50.0));
        assert!(indexed.throughput_changes.is_empty());
    }

    #[test]
    fn an_index_throughput_update_is_checked_as_dynamodb_checks_it() {
        let index = provisioned().indexes[0].name.clone();
        let update = |read: i64, write: i64| {
            request(json!({"GlobalSecondaryIndexUpdates": [{"Update": {
                "IndexName": index, "ProvisionedThroughput": throughput(read, write)}}]}))
        };
        // A value below 1: the API's constraint, with the member's path.
        let refused = plan(&provisioned(), &update(0, 4), 1.0, 1, false).expect_err("0 units");
        assert_eq!(
            refused.message,
            "1 validation error detected: Value '0' at 'globalSecondaryIndexUpdates.1.member.update.provisionedThroughput.readCapacityUnits' failed to satisfy constraint: Member must have value greater than or equal to 1"
        );
        let refused = plan(&provisioned(), &update(3, -2), 1.0, 1, false).expect_err("negative");
        assert!(refused.message.contains("writeCapacityUnits"), "{}", refused.message);
        // The same values: nothing would change (sent again while unconfirmed: sent again).
        let refused = plan(&provisioned(), &update(3, 4), 1.0, 1, false).expect_err("no change");
        assert!(
            refused.message.contains("equals the current value"),
            "{}",
            refused.message
        );
        assert!(plan(&provisioned(), &update(3, 4), 1.0, 1, true).is_ok());
        // On an on-demand table: no throughput for an index.
        let mut on_demand = provisioned();
        on_demand.throughput = None;
        let refused = plan(&on_demand, &update(3, 4), 1.0, 1, false).expect_err("on demand");
        assert!(
            refused.message.contains("should not be specified for index")
                && refused.message.contains("PAY_PER_REQUEST"),
            "{}",
            refused.message
        );
        // A real change is taken as asked (no silent raise of a value).
        let planned = plan(&provisioned(), &update(7, 2), 1.0, 1, false).expect("valid");
        assert_eq!(
            planned.next.indexes[0].throughput,
            Some(catalog::Throughput { read: 7, write: 2 })
        );
    }

    #[test]
    fn a_billing_mode_or_write_capacity_change_gets_a_version_above_the_one_held() {
        let base = provisioned();
        // To on demand: versioned, and the date it became on demand kept.
        let on_demand = plan(
            &base,
            &request(json!({"BillingMode": "PAY_PER_REQUEST"})),
            900.0,
            50,
            false,
        )
        .expect("valid");
        assert_eq!(on_demand.capacity, Some(CapacityChange::Changed));
        assert_eq!(on_demand.next.capacity_version, Some((50, "us-east-1".to_string())));
        assert_eq!(on_demand.next.throughput, None);
        assert_eq!(on_demand.next.pay_per_request_since_seconds, Some(900.0));
        // Back to provisioned, from a held version a peer's clock stamped ahead: above it.
        let mut peers = on_demand.next.clone();
        peers.capacity_version = Some((900, "ap-south-1".into()));
        let back = plan(
            &peers,
            &request(json!({"BillingMode": "PROVISIONED", "ProvisionedThroughput": throughput(2, 3)})),
            950.0,
            60,
            false,
        )
        .expect("valid");
        assert_eq!(back.capacity, Some(CapacityChange::Changed));
        assert_eq!(back.next.capacity_version, Some((901, "us-east-1".to_string())));
        // The table's write capacity, and an index's.
        let write = plan(
            &base,
            &request(json!({"ProvisionedThroughput": throughput(5, 11)})),
            0.0,
            70,
            false,
        )
        .expect("valid");
        assert_eq!(write.capacity, Some(CapacityChange::Changed));
        let index = request(json!({"GlobalSecondaryIndexUpdates": [{"Update": {
            "IndexName": "by_day", "ProvisionedThroughput": throughput(3, 8)
        }}]}));
        let index = plan(&base, &index, 0.0, 80, false).expect("valid");
        assert_eq!(index.capacity, Some(CapacityChange::Changed));
        assert_eq!(index.next.capacity_version, Some((80, "us-east-1".to_string())));
    }

    /// A switch back to PROVISIONED that names no index units (accepted here) leaves the
    /// origin's global index without units, described with the table's; a peer taking the
    /// switch describes the same. Both hold one capacity version.
    #[test]
    fn a_switch_to_provisioned_without_index_units_describes_one_capacity_everywhere() {
        let base = provisioned();
        let on_demand = planned(&base, json!({"BillingMode": "PAY_PER_REQUEST"}), 900.0, 50);
        let back = planned(
            &on_demand,
            json!({"BillingMode": "PROVISIONED", "ProvisionedThroughput": throughput(2, 3)}),
            950.0,
            60,
        );
        let mut peer = on_demand.clone();
        assert!(peer.align_capacity(&back));
        assert_eq!(peer.capacity_version, back.capacity_version);
        assert_eq!(peer.follows_capacity(), back.follows_capacity(), "origin vs peer");
    }

    #[test]
    fn a_read_capacity_change_is_the_replicas_own() {
        let base = provisioned();
        let read = plan(
            &base,
            &request(json!({"ProvisionedThroughput": throughput(9, 10)})),
            0.0,
            50,
            false,
        )
        .expect("valid");
        assert_eq!(read.capacity, None);
        assert_eq!(read.next.capacity_version, None);
        assert_eq!(read.next.throughput, Some(catalog::Throughput { read: 9, write: 10 }));
        // Nor does anything else an UpdateTable changes version the capacity.
        let protection = plan(
            &base,
            &request(json!({"DeletionProtectionEnabled": true})),
            0.0,
            50,
            false,
        )
        .expect("valid");
        assert_eq!((protection.capacity, protection.next.capacity_version), (None, None));
    }

    #[test]
    fn the_same_capacity_again_is_sent_again_only_while_unconfirmed() {
        let base = planned(
            &provisioned(),
            json!({"ProvisionedThroughput": throughput(5, 20)}),
            0.0,
            50,
        );
        let same = request(json!({"ProvisionedThroughput": throughput(5, 20)}));
        // Confirmed everywhere: DynamoDB's check, in its words.
        let refused = plan(&base, &same, 0.0, 51, false).expect_err("no change");
        assert!(
            refused
                .message
                .contains("The provisioned throughput for the table will not change"),
            "{}",
            refused.message
        );
        // Unconfirmed: sent again, nothing changed here (the version kept).
        let again = plan(&base, &same, 0.0, 51, true).expect("sent again");
        assert_eq!(again.capacity, Some(CapacityChange::SendAgain));
        assert_eq!(again.next, base);
        // Unconfirmed, and another change: a change, with a newer version.
        let other = plan(
            &base,
            &request(json!({"ProvisionedThroughput": throughput(5, 30)})),
            0.0,
            52,
            true,
        )
        .expect("valid");
        assert_eq!(other.capacity, Some(CapacityChange::Changed));
        assert_eq!(other.next.capacity_version, Some((52, "us-east-1".to_string())));
        // On demand, asked again while unconfirmed: sent again.
        let on_demand = planned(&base, json!({"BillingMode": "PAY_PER_REQUEST"}), 0.0, 60);
        let again = plan(
            &on_demand,
            &request(json!({"BillingMode": "PAY_PER_REQUEST"})),
            0.0,
            61,
            true,
        )
        .expect("sent again");
        assert_eq!(again.capacity, Some(CapacityChange::SendAgain));
        assert_eq!(again.next.capacity_version, on_demand.capacity_version);
    }
}

#[cfg(test)]
mod align_interval_tests {
    use super::*;

    #[test]
    fn the_align_interval_is_milliseconds_with_a_floor() {
        assert_eq!(align_retry_interval_ms(None), Ok(ALIGN_RETRY_INTERVAL_MS));
        assert_eq!(align_retry_interval_ms(Some("250")), Ok(250));
        for bad in ["", "10", "ten", "-5", "1.5"] {
            let error = align_retry_interval_ms(Some(bad)).expect_err(bad);
            assert!(
                error.contains(ALIGN_RETRY_INTERVAL_ENV) && error.contains("at least 100"),
                "{error}"
            );
        }
    }
}
