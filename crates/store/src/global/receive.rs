//! The replication endpoints peers call: each authenticates, decodes and checks the whole
//! request, then runs the rules of `replication::receive` in one write job over
//! `engine::ReplicaWriter`, and feeds the outcome to the watermarks.

use super::*;
use crate::catalog::TtlSpec;
use crate::streams::TableStream;

/// Decodes and checks every change of a batch before anything is applied.
/// An empty entry stands for a change left out because it originated at the receiver.
pub(super) fn decode_changes(source: &str, encoded: &[String]) -> Result<Vec<Option<ReceivedChange>>, ApiError> {
    encoded
        .iter()
        .enumerate()
        .map(|(index, text)| {
            if text.is_empty() {
                return Ok(None);
            }
            let bytes = BASE64
                .decode(text)
                .map_err(|e| format!("change {index} is not base64: {e}"))?;
            let change = replication_log::decode_change(&bytes).map_err(|e| format!("change {index}: {e}"))?;
            let record = record::decode(&change.record)
                .map_err(|e| format!("change {index} for table {}: {e}", change.table))?;
            Ok(Some(ReceivedChange { change, record }))
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|message| {
            tracing::warn!(%source, %message, "corrupt replication batch refused; nothing applied");
            ApiError::validation(format!("corrupt replication batch: {message}"))
        })
}

/// Received changes were skipped because this region holds no replica of their tables.
pub(super) fn warn_no_replica(source: &str, tables: &std::collections::BTreeSet<String>) {
    for table in tables {
        tracing::warn!(%source, %table, "replicated change for a table that does not exist here skipped");
    }
}

impl Replication {
    /// `POST /replication/v1/digest`: this region's digests of key ranges of a table.
    pub async fn receive_digest(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        self.authenticate(headers, "/replication/v1/digest", body)?;
        let request: DigestRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::serialization(format!("corrupt digest request: {e}")))?;
        if request.ranges.len() > DIGEST_RANGES_PER_REQUEST_MAX {
            return Err(ApiError::validation(format!(
                "digest request for {} ranges; at most {DIGEST_RANGES_PER_REQUEST_MAX}",
                request.ranges.len()
            )));
        }
        let ranges = request
            .ranges
            .iter()
            .map(|(depth, index)| {
                DigestRange::new(*depth, *index)
                    .ok_or_else(|| ApiError::validation(format!("digest range {depth}/{index:#x} does not exist")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let with_hashes = request.hashes;
        let (digests, hashes) = match self.engine.table(&request.table) {
            // No replica here: nothing held, so the peer pushes and the changes are skipped.
            None => (
                vec![Digest::default(); ranges.len()],
                with_hashes.then(|| vec![Some(Vec::new()); ranges.len()]),
            ),
            Some(table) => {
                let engine = self.engine.clone();
                tokio::task::spawn_blocking(move || {
                    let snapshot = engine.snapshot()?;
                    let digests = snapshot.digests(&table, &ranges)?;
                    let hashes = if with_hashes {
                        Some(snapshot.record_hashes(
                            &table,
                            &ranges,
                            REPAIR_HASHES_PER_RANGE_MAX,
                            REPAIR_HASHES_PER_RESPONSE_MAX,
                        )?)
                    } else {
                        None
                    };
                    Ok::<_, ApiError>((digests, hashes))
                })
                .await
                .map_err(|e| ApiError::internal(format!("digest task failed: {e}")))??
            }
        };
        let hashes = hashes.map(|ranges| {
            ranges
                .into_iter()
                .map(|range| {
                    range.map(|records| {
                        records
                            .into_iter()
                            .map(|(key, hash)| (BASE64.encode(key), format!("{hash:x}")))
                            .collect()
                    })
                })
                .collect()
        });
        Ok(serde_json::to_value(DigestResponse {
            digests: digests.iter().map(|d| (d.count, format!("{:x}", d.hash))).collect(),
            hashes,
        })
        .expect("a digest response serialises"))
    }

    /// `POST /replication/v1/batch`: applies a batch of changes from a peer.
    pub async fn receive_batch(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let source = self.authenticate(headers, "/replication/v1/batch", body)?;
        let request: BatchRequest = serde_json::from_slice(body).map_err(|e| {
            tracing::warn!(%source, error = %e, "corrupt replication batch refused; nothing applied");
            ApiError::serialization(format!("corrupt replication batch: {e}"))
        })?;
        let changes = decode_changes(&source, &request.changes)?;
        let span = request
            .to_seq
            .checked_sub(request.from_seq)
            .and_then(|d| d.checked_add(1));
        if request.from_seq == 0 || span != Some(changes.len() as u64) {
            tracing::warn!(%source, "replication batch whose sequence range does not match its changes refused; nothing applied");
            return Err(ApiError::validation(
                "replication batch sequence range does not match its changes",
            ));
        }
        let (from_seq, to_seq) = (request.from_seq, request.to_seq);
        let job_source = source.clone();
        let outcome = self
            .engine
            .write(move |context| {
                rules::receive_batch(&mut ReplicaWriter::new(context), &job_source, from_seq, &changes)
            })
            .await?;
        let response = match outcome {
            BatchOutcome::Duplicate { through } => {
                tracing::info!(%source, from_seq, to_seq, "replayed or repeated replication batch (already applied through {through}): nothing applied");
                BatchResponse {
                    through: Some(through),
                    ..BatchResponse::default()
                }
            }
            BatchOutcome::Gap { expected_from } => BatchResponse {
                expected_from: Some(expected_from),
                ..BatchResponse::default()
            },
            BatchOutcome::Applied {
                through,
                applied,
                no_replica,
            } => {
                warn_no_replica(&source, &no_replica);
                BatchResponse {
                    through: Some(through),
                    applied,
                    ..BatchResponse::default()
                }
            }
        };
        if let Some(through) = response.through {
            self.applied(&source, through);
        }
        Ok(serde_json::to_value(response).expect("a batch response serialises"))
    }

    /// `POST /replication/v1/repair`: applies records of an anti-entropy transfer.
    pub async fn receive_repair(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let source = self.authenticate(headers, "/replication/v1/repair", body)?;
        let request: RepairRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::serialization(format!("corrupt repair request: {e}")))?;
        let changes = decode_changes(&source, &request.records)?;
        let complete = request.complete_through;
        let backfill_barrier = request.backfill_barrier;
        let job_source = source.clone();
        let outcome = self
            .engine
            .write(move |context| {
                rules::receive_repair(
                    &mut ReplicaWriter::new(context),
                    &job_source,
                    &changes,
                    complete,
                    backfill_barrier,
                )
            })
            .await?;
        warn_no_replica(&source, &outcome.no_replica);
        if !outcome.backfilled.is_empty() {
            tracing::info!(%source, tables = ?outcome.backfilled, "backfill of joined replicas complete; tombstone purging may resume");
        }
        if let Some(through) = outcome.through {
            self.applied(&source, through);
        }
        Ok(serde_json::json!({"applied": outcome.applied}))
    }

    /// `POST /replication/v1/table`: creates, updates or deletes this region's replica.
    pub async fn receive_table(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let source = self.authenticate(headers, "/replication/v1/table", body)?;
        let request: TableRequest =
            serde_json::from_slice(body).map_err(|e| ApiError::serialization(format!("corrupt table request: {e}")))?;
        let TableRequest {
            table,
            delete,
            sequence,
            joining,
        } = request;
        let job_source = source.clone();
        let name = table.name.clone();
        // Everything this region may have vouched for so far (see `TableMeta::joined_below`).
        let vouched = self
            .watermarks
            .lock()
            .expect("watermark lock is never poisoned")
            .max_direct();
        let made_ms = self.engine.now_unix_ms();
        // The stream this region gives its replica, where it takes the global table's: a label
        // of its own (as DynamoDB makes each replica's stream in its region), never the peer's.
        // The peer's label names the stream it made there; here it may already name a stream
        // of an earlier replica of this table, disabled with that replica's delete and kept
        // for its retention, and the replica created again would write to that stream, so
        // record nothing.
        let local_stream = table.stream.as_ref().filter(|s| s.enabled).map(|stream| TableStream {
            label: self.engine.new_stream_label(),
            ..stream.clone()
        });
        let incoming_ttl = TtlSpec::version_of(table.ttl.as_ref());
        let taken_hlc = table.newest_setting_hlc();
        let (joined_below, ttl, index_versions, capacity) = self
            .engine
            .write_exclusive(move |context| {
                // Checked and recorded in the transaction that changes the replica: a request
                // seen before (replayed, even after restarts) changes nothing.
                if let Err(Replayed { last, .. }) =
                    rules::check_definition(&mut ReplicaWriter::new(context), &job_source, sequence)?
                {
                    tracing::warn!(source = %job_source, sequence, last, "replica-definition request older than the last one applied refused (replayed)");
                    return Err(unauthorized(format!(
                        "replica-definition request {sequence} from {job_source} is not newer than the last one applied ({last}): a replayed request, or a peer running an older build"
                    )));
                }
                // A refused request returns before its first mutation (a job's error does not
                // roll its transaction back); the sequence is recorded only with a change.
                let existing = context.table_named(&table.name);
                let changed = match (existing, delete) {
                    (Some(existing), true) => {
                        context.drop_table(&existing).map(|()| (None, None, BTreeMap::new(), None))
                    }
                    (None, true) => Ok((None, None, BTreeMap::new(), None)),
                    (Some(existing), false) => {
                        if existing.key != table.key {
                            return Err(ApiError::new(
                                ErrorKind::ResourceInUse,
                                format!(
                                    "Table {} exists here with a different key schema; delete it first",
                                    table.name
                                ),
                            ));
                        }
                        if existing.key_hash != table.key_hash {
                            // Stored keys travel between replicas as they are: the same hash
                            // on both sides, or changes would land under the wrong keys.
                            return Err(ApiError::new(
                                ErrorKind::ResourceInUse,
                                format!(
                                    "Table {} exists here with another key hash ({:?}, the peer's is {:?}); delete it here and let the peer backfill it",
                                    table.name, existing.key_hash, table.key_hash
                                ),
                            ));
                        }
                        // Still waiting for this replica's backfill (an UpdateTable retried):
                        // the requester backfills it now, up to the barrier set at the join.
                        let awaited = if joining {
                            rules::hand_over_backfill(&mut ReplicaWriter::new(context), existing.id, &job_source)?
                        } else {
                            None
                        };
                        // When a region gains its replica (`Replication::tables_missing_at`).
                        let gained: Vec<String> = table
                            .replicas
                            .iter()
                            .filter(|region| !existing.replicas.contains(region))
                            .cloned()
                            .collect();
                        let mut next = (*existing).clone();
                        next.replicas = table.replicas.clone();
                        // The replica gets the global table's stream where it has none.
                        if next.stream.as_ref().is_none_or(|s| !s.enabled) && local_stream.is_some() {
                            next.stream = local_stream;
                        }
                        // The global table's TTL, when the definition carries a newer one than
                        // this replica's (a previous build's carries none: its TTL is kept).
                        let held_ttl = TtlSpec::version_of(existing.ttl.as_ref());
                        if rules::setting_applies(incoming_ttl.as_ref(), held_ttl.as_ref(), false) {
                            next.ttl = table.ttl.clone();
                            context.align_ttl_index(existing.ttl.as_ref(), &next)?;
                        }
                        // The global table's indexes: each one whose last change (creation
                        // or deletion) the definition carries newer than this replica's,
                        // created (built from the items here, as a local create builds it),
                        // dropped or replaced; a previous build's (unversioned) changes none.
                        let aligned = existing.align_indexes(&table);
                        if !aligned.changes_nothing(&existing) {
                            tracing::info!(source = %job_source, table = %table.name, created = ?aligned.created, dropped = ?aligned.dropped, "global indexes changed by a peer");
                        }
                        for index in &aligned.dropped {
                            context.drop_index(&existing, index)?;
                        }
                        next.indexes = aligned.indexes;
                        next.deleted_indexes = aligned.deleted_indexes;
                        next.attribute_definitions = aligned.attribute_definitions;
                        // The global table's billing mode and write capacity (the table's and
                        // its global indexes', after their alignment above), when the
                        // definition carries a newer change of them than this replica's; read
                        // capacity stays its own. A previous build's (unversioned) changes none.
                        if next.align_capacity(&table) {
                            tracing::info!(source = %job_source, table = %table.name, throughput = ?next.throughput, "billing mode and write capacity changed by a peer");
                        }
                        // When this replica's throughput went up or down, as for a local change.
                        next.record_throughput_changes(&existing, made_ms as f64 / 1000.0);
                        let ttl = next.ttl.clone();
                        let index_versions = next.index_versions();
                        let capacity = next.capacity_version.clone();
                        context.put_table(next.clone())?;
                        for name in &aligned.created {
                            context.start_index_backfill(&next, name)?;
                        }
                        for region in &gained {
                            context.set_setting(&replica_made_setting(region, existing.id), made_ms)?;
                        }
                        Ok((awaited, ttl, index_versions, capacity))
                    }
                    (None, false) => {
                        let id = context.next_table_id()?;
                        let mut created = table.clone();
                        created.id = id;
                        // The global table's TTL (as a previous build sends it too: its own),
                        // with its index, empty until the backfill brings the items.
                        created.ttl = table.ttl.clone();
                        created.stream = local_stream;
                        // Point-in-time recovery is each replica's own setting, as in DynamoDB.
                        created.pitr = None;
                        // Purging waits until the requester's backfill of this replica completes.
                        let clock = context.tick_clock();
                        let joined_below =
                            rules::join_replica(&mut ReplicaWriter::new(context), id, &job_source, vouched, clock)?;
                        created.joined_below = joined_below;
                        context.align_ttl_index(None, &created)?;
                        // Its global indexes are the definition's, as its TTL (a previous
                        // build's too): empty until the backfill brings the items, which are
                        // indexed as they are applied.
                        for index in &mut created.indexes {
                            index.backfilling = false;
                        }
                        // Its capacity (billing mode, read and write capacity) is the
                        // definition's, as DynamoDB makes a replica with the source table's.
                        let ttl = created.ttl.clone();
                        let index_versions = created.index_versions();
                        let capacity = created.capacity_version.clone();
                        context
                            .put_table(created)
                            .map(|()| (Some(joined_below), ttl, index_versions, capacity))
                    }
                }?;
                rules::record_definition(&mut ReplicaWriter::new(context), &job_source, sequence)?;
                Ok(changed)
            })
            .await?;
        // An index created here by the definition is filled in the background.
        self.engine.wake_index_backfill();
        // Later TTL, index and capacity changes made here are newer than the ones taken (within
        // the clock's bound ahead of the wall clock; `catalog::next_setting_version` also stamps
        // past the one held).
        if let Some(hlc) = taken_hlc {
            self.engine.advance_clock_past(hlc);
        }
        tracing::info!(%source, table = %name, delete, ttl = ?ttl, indexes = ?index_versions, capacity = ?capacity, "replica definition changed by a peer");
        Ok(serde_json::to_value(DefinitionAnswer {
            joined_below,
            ttl: Some(ttl),
            index_versions: Some(index_versions),
            capacity: Some(capacity),
        })
        .expect("a definition answer serialises"))
    }
}
